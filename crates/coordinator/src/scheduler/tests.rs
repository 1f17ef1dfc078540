//! Scheduler tests: order within a queue, workers and kinds, and the rules across queues
//! (priority, weights, limits, pause, affinity), without sockets or a core.

use super::*;
use std::collections::HashSet;

const Q: QueueIdx = 0;

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn worker(block: BlockType, slots: u32, running: u32) -> WorkerSpec {
    WorkerSpec {
        block,
        slots,
        prefetch: 0,
        running,
        handlers: vec![],
        tags: vec![],
        custom_only: false,
    }
}

fn tagged(slots: u32, tags: &[&str]) -> WorkerSpec {
    WorkerSpec {
        tags: tags.iter().map(|t| tag(t)).collect(),
        ..worker(BlockType::Async, slots, 0)
    }
}

/// Every entry is live and prefers nothing.
fn any(_: TaskId, _: u64) -> Option<&'static [Tag]> {
    Some(&[])
}

fn drain(s: &mut Scheduler) -> Vec<(TaskId, WorkerId)> {
    std::iter::from_fn(|| s.next(any))
        .map(|(t, w, _)| (t, w))
        .collect()
}

#[test]
fn highest_priority_first_then_fifo() {
    let mut s = Scheduler::new();
    let ids: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
    let prios = [0, 5, 0, 5, -1, 9];
    for (id, p) in ids.iter().zip(prios) {
        s.enqueue(Q, Kind::of(BlockType::Async), p, *id);
    }
    s.set_worker(WorkerId(1), worker(BlockType::Async, 100, 0));
    let order: Vec<TaskId> = drain(&mut s).into_iter().map(|(t, _)| t).collect();
    assert_eq!(order, vec![ids[5], ids[1], ids[3], ids[0], ids[2], ids[4]]);
}

#[test]
fn tasks_only_go_to_workers_of_their_type_and_handler() {
    let mut s = Scheduler::new();
    let sync_task = TaskId::new();
    let async_task = TaskId::new();
    let custom = TaskId::new();
    s.enqueue(Q, Kind::of(BlockType::Sync), 0, sync_task);
    s.enqueue(Q, Kind::of(BlockType::Async), 0, async_task);
    let render = Kind {
        handler: Some("render".into()),
        ..Kind::of(BlockType::Async)
    };
    s.enqueue(Q, render, 10, custom);
    s.set_worker(WorkerId(1), worker(BlockType::Async, 10, 0));
    assert_eq!(
        drain(&mut s),
        vec![(async_task, WorkerId(1))],
        "no sync task and no unserved handler"
    );
    s.set_worker(WorkerId(2), worker(BlockType::Sync, 10, 0));
    assert_eq!(drain(&mut s), vec![(sync_task, WorkerId(2))]);
    let mut w = worker(BlockType::Async, 10, 0);
    w.handlers = vec!["render".into()];
    s.set_worker(WorkerId(3), w);
    assert_eq!(drain(&mut s), vec![(custom, WorkerId(3))]);
}

#[test]
fn a_worker_of_custom_handlers_only_gets_no_command_or_sleep() {
    // The Python package's worker serves its handlers and runs no commands: chaos with a Python
    // worker saw it given `exec` tasks, which it could only fail.
    let mut s = Scheduler::new();
    let command = TaskId::new();
    let custom = TaskId::new();
    s.enqueue(Q, Kind::of(BlockType::Async), 0, command);
    let render = Kind {
        handler: Some("render".into()),
        ..Kind::of(BlockType::Async)
    };
    s.enqueue(Q, render, 10, custom);
    s.set_worker(
        WorkerId(1),
        WorkerSpec {
            handlers: vec!["render".into()],
            custom_only: true,
            ..worker(BlockType::Async, 10, 0)
        },
    );
    assert_eq!(drain(&mut s), vec![(custom, WorkerId(1))]);
    s.set_worker(WorkerId(2), worker(BlockType::Async, 10, 0));
    assert_eq!(drain(&mut s), vec![(command, WorkerId(2))]);
}

#[test]
fn least_loaded_worker_wins() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Sync, 4, 3)); // 75 %
    s.set_worker(WorkerId(2), worker(BlockType::Sync, 10, 5)); // 50 %
    s.set_worker(WorkerId(3), worker(BlockType::Sync, 2, 2)); // full
    let t = TaskId::new();
    s.enqueue(Q, Kind::of(BlockType::Sync), 0, t);
    assert_eq!(s.next(any), Some((t, WorkerId(2), Q)));
    assert_eq!(s.running(WorkerId(2)), Some(6));
}

#[test]
fn never_dispatches_past_slots() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Sync, 2, 0));
    s.set_worker(WorkerId(2), worker(BlockType::Sync, 3, 0));
    for _ in 0..20 {
        s.enqueue(Q, Kind::of(BlockType::Sync), 0, TaskId::new());
    }
    let got = drain(&mut s);
    assert_eq!(got.len(), 5);
    assert_eq!(got.iter().filter(|(_, w)| *w == WorkerId(1)).count(), 2);
    assert_eq!(got.iter().filter(|(_, w)| *w == WorkerId(2)).count(), 3);
    s.release(WorkerId(1), Q);
    assert_eq!(
        drain(&mut s).len(),
        1,
        "a freed slot takes exactly one more"
    );
}

#[test]
fn draining_worker_gets_nothing() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Async, 2, 0));
    s.set_accepting(WorkerId(1), false);
    s.enqueue(Q, Kind::of(BlockType::Async), 0, TaskId::new());
    assert!(s.next(any).is_none());
    s.set_accepting(WorkerId(1), true);
    assert!(s.next(any).is_some());
}

#[test]
fn stale_entries_are_skipped() {
    let mut s = Scheduler::new();
    let a = TaskId::new();
    let b = TaskId::new();
    let ta = s.enqueue(Q, Kind::of(BlockType::Async), 0, a);
    s.enqueue(Q, Kind::of(BlockType::Async), 0, b);
    s.set_worker(WorkerId(1), worker(BlockType::Async, 5, 0));
    let dead: HashSet<u64> = [ta].into();
    let look = |_: TaskId, t: u64| (!dead.contains(&t)).then_some(&[][..]);
    assert_eq!(s.next(look), Some((b, WorkerId(1), Q)));
    assert!(s.next(look).is_none());
    assert_eq!(s.queued_entries(), 0, "the stale entry was dropped");
}

#[test]
fn blocked_queue_does_not_hide_a_runnable_one() {
    let mut s = Scheduler::new();
    let hi = TaskId::new();
    let lo = TaskId::new();
    let gpu = Kind {
        handler: Some("gpu".into()),
        ..Kind::of(BlockType::Async)
    };
    s.enqueue(Q, gpu, 100, hi);
    s.enqueue(Q, Kind::of(BlockType::Async), 0, lo);
    // The same across queues: a high-priority queue nobody can serve does not block a low one.
    let other = TaskId::new();
    s.set_queue(1, 10, 1, None, false);
    s.enqueue(
        1,
        Kind {
            require: vec![tag("gpu=yes")],
            ..Kind::of(BlockType::Async)
        },
        0,
        other,
    );
    s.set_worker(WorkerId(1), worker(BlockType::Async, 5, 0));
    assert_eq!(drain(&mut s), vec![(lo, WorkerId(1))]);
}

#[test]
fn compact_drops_stale_entries() {
    let mut s = Scheduler::new();
    for q in 0..2 {
        for _ in 0..10 {
            s.enqueue(q, Kind::of(BlockType::Async), 0, TaskId::new());
        }
    }
    s.compact(|_, t| t % 2 == 0);
    assert_eq!(s.queued_entries(), 10);
    s.compact(|_, _| false);
    assert_eq!(s.queued_entries(), 0);
    assert!(s.active.is_empty(), "queues without entries are not active");
}

/// Keeps `queues` full of work and one big worker busy, releasing every dispatch at once;
/// returns the queue of each dispatch in order.
fn run_shares(s: &mut Scheduler, queues: &[QueueIdx], dispatches: usize) -> Vec<QueueIdx> {
    s.set_worker(WorkerId(1), worker(BlockType::Async, 4, 0));
    for &q in queues {
        for _ in 0..4 {
            s.enqueue(q, Kind::of(BlockType::Async), 0, TaskId::new());
        }
    }
    let mut order = Vec::with_capacity(dispatches);
    for _ in 0..dispatches {
        let (_, w, q) = s.next(any).expect("work and room are always there");
        order.push(q);
        s.release(w, q);
        s.enqueue(q, Kind::of(BlockType::Async), 0, TaskId::new());
    }
    order
}

fn share(order: &[QueueIdx], q: QueueIdx) -> f64 {
    order.iter().filter(|&&x| x == q).count() as f64 / order.len() as f64
}

#[test]
fn equal_priorities_share_by_weight_3_to_2_in_every_window() {
    let mut s = Scheduler::new();
    s.set_queue(0, 0, 3, None, false);
    s.set_queue(1, 0, 2, None, false);
    let order = run_shares(&mut s, &[0, 1], 100_000);
    assert!(
        (share(&order, 0) - 0.6).abs() < 0.001,
        "{}",
        share(&order, 0)
    );
    for window in order.chunks(300) {
        let got = share(window, 0);
        assert!((got - 0.6).abs() <= 0.02, "window share {got}");
    }
}

#[test]
fn equal_priorities_share_by_weight_1000_to_1() {
    let mut s = Scheduler::new();
    s.set_queue(0, 0, 1000, None, false);
    s.set_queue(1, 0, 1, None, false);
    let order = run_shares(&mut s, &[0, 1], 100_000);
    let small = order.iter().filter(|&&q| q == 1).count() as f64;
    let expected = 100_000.0 / 1001.0;
    assert!(
        (small - expected).abs() / expected < 0.03,
        "{small} dispatches of the light queue, {expected:.1} expected"
    );
}

#[test]
fn higher_queue_priority_takes_everything_it_can() {
    let mut s = Scheduler::new();
    s.set_queue(0, 5, 1, None, false);
    s.set_queue(1, 0, 1000, None, false);
    let order = run_shares(&mut s, &[0, 1], 1000);
    assert!(order.iter().all(|&q| q == 0));
}

#[test]
fn a_queue_without_work_does_not_hoard_its_share() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Async, 1, 0));
    // Queue 0 runs alone for a thousand dispatches while queue 1 has nothing.
    for _ in 0..1000 {
        s.enqueue(0, Kind::of(BlockType::Async), 0, TaskId::new());
        let (_, w, q) = s.next(any).unwrap();
        assert_eq!(q, 0);
        s.release(w, q);
    }
    // Now both have work and equal weights: they alternate, queue 1 does not take 1000 in a row.
    for _ in 0..100 {
        s.enqueue(0, Kind::of(BlockType::Async), 0, TaskId::new());
        s.enqueue(1, Kind::of(BlockType::Async), 0, TaskId::new());
    }
    let mut order = Vec::new();
    for _ in 0..20 {
        let (_, w, q) = s.next(any).unwrap();
        order.push(q);
        s.release(w, q);
    }
    assert_eq!(share(&order, 1), 0.5, "{order:?}");
}

#[test]
fn a_paused_queue_dispatches_nothing_until_resumed() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Async, 10, 0));
    s.set_queue(0, 0, 1, None, true);
    let t = TaskId::new();
    s.enqueue(0, Kind::of(BlockType::Async), 0, t);
    let other = TaskId::new();
    s.enqueue(1, Kind::of(BlockType::Async), 0, other);
    assert_eq!(drain(&mut s), vec![(other, WorkerId(1))]);
    s.set_queue(0, 0, 1, None, false);
    assert_eq!(drain(&mut s), vec![(t, WorkerId(1))]);
}

/// A small deterministic generator, so that the churn test replays the same way.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn limits_hold_under_churn() {
    let mut s = Scheduler::new();
    let mut limits = [Some(3), Some(1), None, Some(7)];
    for (q, l) in limits.iter().enumerate() {
        s.set_queue(q as QueueIdx, 0, 1 + q as u32, *l, false);
    }
    for w in 1..=4 {
        s.set_worker(WorkerId(w), worker(BlockType::Async, 5, 0));
    }
    let mut rng = Lcg(7);
    let mut held: Vec<(WorkerId, QueueIdx)> = Vec::new();
    let mut per_queue = [0u32; 4];
    let mut dispatched = [0u32; 4];
    for round in 0..20_000 {
        match rng.below(3) {
            0 => {
                let q = rng.below(4) as QueueIdx;
                s.enqueue(q, Kind::of(BlockType::Async), 0, TaskId::new());
            }
            1 if !held.is_empty() => {
                let (w, q) = held.swap_remove(rng.below(held.len() as u64) as usize);
                per_queue[q as usize] -= 1;
                s.release(w, q);
            }
            _ => {
                if let Some((_, w, q)) = s.next(any) {
                    let q = q as usize;
                    if let Some(l) = limits[q] {
                        assert!(per_queue[q] < l, "queue {q} holds {} of {l}", per_queue[q]);
                    }
                    held.push((w, q as QueueIdx));
                    per_queue[q] += 1;
                    dispatched[q] += 1;
                }
            }
        }
        if round == 10_000 {
            // A limit lowered below what may run: nothing new until the queue is under it.
            limits[3] = Some(2);
            s.set_queue(3, 0, 4, Some(2), false);
        }
        for (q, &n) in per_queue.iter().enumerate() {
            assert_eq!(s.held(q as QueueIdx), n);
        }
    }
    assert!(
        dispatched.iter().all(|&d| d > 100),
        "every queue dispatched: {dispatched:?}"
    );
}

#[test]
fn after_a_lowered_limit_the_queue_waits_until_under_it() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), worker(BlockType::Async, 10, 0));
    for _ in 0..10 {
        s.enqueue(0, Kind::of(BlockType::Async), 0, TaskId::new());
    }
    s.set_queue(0, 0, 1, Some(4), false);
    assert_eq!(drain(&mut s).len(), 4);
    s.set_queue(0, 0, 1, Some(2), false);
    s.release(WorkerId(1), 0);
    assert!(s.next(any).is_none(), "3 held, limit 2");
    s.release(WorkerId(1), 0);
    s.release(WorkerId(1), 0);
    assert_eq!(drain(&mut s).len(), 1, "1 held: one more");
}

#[test]
fn restored_holds_count_against_the_limit() {
    let mut s = Scheduler::new();
    s.set_queue(0, 0, 1, Some(2), false);
    s.hold(0);
    s.hold(0);
    s.set_worker(WorkerId(1), worker(BlockType::Async, 10, 2));
    s.enqueue(0, Kind::of(BlockType::Async), 0, TaskId::new());
    assert!(s.next(any).is_none());
    s.release(WorkerId(1), 0);
    assert!(s.next(any).is_some());
}

#[test]
fn hard_affinity_only_goes_to_workers_with_the_tags() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), tagged(10, &["gpu=no"]));
    let gpu = Kind {
        require: vec![tag("gpu=yes")],
        ..Kind::of(BlockType::Async)
    };
    let t = TaskId::new();
    s.enqueue(Q, gpu.clone(), 0, t);
    assert!(s.next(any).is_none());
    assert!(!s.can_serve(&gpu));
    s.set_worker(WorkerId(2), tagged(1, &["gpu=yes", "site=a"]));
    assert!(s.can_serve(&gpu));
    assert_eq!(s.next(any), Some((t, WorkerId(2), Q)));
}

#[test]
fn soft_affinity_prefers_a_matching_worker_but_never_waits_for_one() {
    let mut s = Scheduler::new();
    // Worker 1 is the least loaded, worker 2 has the state the tasks want.
    s.set_worker(WorkerId(1), tagged(10, &["curve=EUR"]));
    s.set_worker(WorkerId(2), tagged(2, &["curve=USD"]));
    let usd = [tag("curve=USD")];
    let look = |_: TaskId, _: u64| Some(&usd[..]);
    let mut got = Vec::new();
    for _ in 0..5 {
        s.enqueue(Q, Kind::of(BlockType::Async), 0, TaskId::new());
        got.push(s.next(look).unwrap().1);
    }
    assert_eq!(
        got,
        [
            WorkerId(2),
            WorkerId(2),
            WorkerId(1),
            WorkerId(1),
            WorkerId(1)
        ],
        "the matching worker while it has room, then any other"
    );
    // A freed slot on the matching worker goes to the next preferring task again.
    s.release(WorkerId(2), Q);
    s.enqueue(Q, Kind::of(BlockType::Async), 0, TaskId::new());
    assert_eq!(s.next(look).unwrap().1, WorkerId(2));
}

#[test]
fn soft_affinity_ranks_by_how_many_preferred_tags_match() {
    let mut s = Scheduler::new();
    s.set_worker(WorkerId(1), tagged(10, &["a=1"]));
    s.set_worker(WorkerId(2), tagged(10, &["a=1", "b=2"]));
    s.set_worker(WorkerId(3), tagged(10, &[]));
    let pref = [tag("a=1"), tag("b=2")];
    s.enqueue(Q, Kind::of(BlockType::Async), 0, TaskId::new());
    assert_eq!(s.next(|_, _| Some(&pref[..])).unwrap().1, WorkerId(2));
}

#[test]
fn prefetch_room_comes_after_every_free_slot_even_a_less_preferred_one() {
    let mut s = Scheduler::new();
    // Worker 1 has the tag the tasks prefer and one slot with one task held beyond it; worker
    // 2 lacks the tag but has free slots.
    s.set_worker(
        WorkerId(1),
        WorkerSpec {
            prefetch: 2,
            ..tagged(1, &["curve=USD"])
        },
    );
    s.set_worker(WorkerId(2), tagged(2, &[]));
    let usd = [tag("curve=USD")];
    let look = |_: TaskId, _: u64| Some(&usd[..]);
    let mut got = Vec::new();
    for _ in 0..6 {
        s.enqueue(Q, Kind::of(BlockType::Async), 0, TaskId::new());
        got.push(s.next(look).map(|(_, w, _)| w));
    }
    assert_eq!(
        got,
        [
            Some(WorkerId(1)),
            Some(WorkerId(2)),
            Some(WorkerId(2)),
            Some(WorkerId(1)),
            Some(WorkerId(1)),
            None,
        ],
        "the preferred slot, the other worker's slots, then the prefetch room, then nothing"
    );
    assert!(!s.free_slot_for(WorkerId(1), &Kind::of(BlockType::Async)));
    s.release(WorkerId(2), Q);
    assert!(s.free_slot_for(WorkerId(2), &Kind::of(BlockType::Async)));
    assert_eq!(s.free_slots(WorkerId(2)), 1);
}
