//! Scheduler micro-benchmark: the cost of one dispatch (take the best ready task, pick the least
//! loaded worker) with 1k, 100k and 1M tasks queued. Each iteration dispatches one task and queues
//! a new one, so the queue length stays put. Run with `cargo bench --bench scheduler`.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use tatzelwurm_coordinator::scheduler::{QueueKey, Scheduler};
use tatzelwurm_protocol::{BlockType, TaskId, WorkerId};

fn dispatch_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for queued in [1_000usize, 100_000, 1_000_000] {
        let mut s = Scheduler::new();
        let key = QueueKey {
            block: BlockType::Async,
            handler: None,
        };
        for i in 0..queued {
            s.enqueue(key.clone(), (i % 8) as i32, TaskId::new());
        }
        for w in 0..16 {
            s.set_worker(WorkerId(w), BlockType::Async, u32::MAX, 0, vec![]);
        }
        let mut i = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(queued), &queued, |b, _| {
            b.iter(|| {
                let (_, w) = black_box(s.next(|_, _| true)).expect("a task");
                s.release(w);
                i += 1;
                s.enqueue(key.clone(), (i % 8) as i32, TaskId::new());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch_cost);
criterion_main!(benches);
