//! Scheduler micro-benchmark: the cost of one dispatch (take the best ready task of the queue
//! whose turn it is, pick the least loaded worker) with 1k, 100k and 1M tasks queued, in one
//! queue and spread over 1,000 queues of mixed priorities and weights. Each iteration
//! dispatches one task, releases its slot and queues a new task in the same queue, so the
//! lengths stay put. Run with `cargo bench --bench scheduler`.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use tatzelwurm_coordinator::scheduler::{Kind, QueueIdx, Scheduler, WorkerSpec};
use tatzelwurm_protocol::{BlockType, Tag, TaskId, WorkerId};

fn scheduler(queued: usize, queues: u32) -> Scheduler {
    let mut s = Scheduler::new();
    for q in 0..queues {
        // Two priority classes; weights 1 to 10 within each.
        s.set_queue(q, (q % 2) as i32, 1 + q % 10, None, false);
    }
    for i in 0..queued {
        s.enqueue(
            i as QueueIdx % queues,
            Kind::of(BlockType::Async),
            (i % 8) as i32,
            TaskId::new(),
        );
    }
    for w in 0..16 {
        s.set_worker(
            WorkerId(w),
            WorkerSpec {
                block: BlockType::Async,
                slots: u32::MAX,
                prefetch: 0,
                running: 0,
                handlers: vec![],
                tags: vec![],
                custom_only: false,
            },
        );
    }
    s
}

fn dispatch_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for (queues, queued) in [
        (1u32, 1_000usize),
        (1, 100_000),
        (1, 1_000_000),
        (1_000, 100_000),
        (1_000, 1_000_000),
    ] {
        let mut s = scheduler(queued, queues);
        let mut i = 0u64;
        let label = format!("{queues}q/{queued}");
        group.bench_with_input(BenchmarkId::from_parameter(label), &queued, |b, _| {
            b.iter(|| {
                let none: &[Tag] = &[];
                let (_, w, q) = black_box(s.next(|_, _| Some(none))).expect("a task");
                s.release(w, q);
                i += 1;
                s.enqueue(q, Kind::of(BlockType::Async), (i % 8) as i32, TaskId::new());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch_cost);
criterion_main!(benches);
