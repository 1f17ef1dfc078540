//! Tasks held beyond a worker's slots (`prefetch`): where they go, taking them back, timeouts.

use super::*;

fn prefetching(name: &str, slots: u32, prefetch: u32) -> WorkerHello {
    WorkerHello {
        prefetch,
        ..hello(name, slots)
    }
}

fn revokes(sends: &[(ConnId, Out)], conn: ConnId) -> Vec<AttemptRef> {
    to_worker(sends, conn)
        .into_iter()
        .filter_map(|m| match m {
            CoordinatorToWorker::Revoke { attempt } => Some(attempt),
            _ => None,
        })
        .collect()
}

fn dispatched_to(batch: &Batch, conn: ConnId) -> Vec<AttemptRef> {
    to_worker(&batch.sends, conn)
        .into_iter()
        .filter_map(|m| match m {
            CoordinatorToWorker::Dispatch(d) => Some(d.attempt),
            _ => None,
        })
        .collect()
}

#[test]
fn prefetch_room_is_used_only_when_no_worker_has_a_free_slot() {
    let mut c = core();
    c.connect_actioner(1);
    let a = c.connect_worker(2, prefetching("a", 1, 2), 10);
    c.connect_worker(3, hello("b", 1), 10);
    add(&mut c, 2, true);
    assert_eq!(c.schedule(11), 2);
    let batch = c.take_batch().unwrap();
    assert_eq!(dispatched_to(&batch, 2).len(), 1, "a free slot each first");
    assert_eq!(dispatched_to(&batch, 3).len(), 1);
    add(&mut c, 3, true);
    assert_eq!(c.schedule(12), 2, "then a's prefetch room, two deep");
    let batch = c.take_batch().unwrap();
    assert_eq!(dispatched_to(&batch, 2).len(), 2);
    assert_eq!(c.sched.running(a), Some(3));
    assert_eq!(c.schedule(13), 0, "the fifth waits: no room left");
}

#[test]
fn a_held_task_is_asked_back_once_for_a_free_slot_and_goes_there() {
    let mut c = core();
    c.connect_actioner(1);
    let a = c.connect_worker(2, prefetching("a", 1, 1), 10);
    add(&mut c, 2, true);
    c.schedule(11);
    let sent = dispatched_to(&c.take_batch().unwrap(), 2);
    assert_eq!(sent.len(), 2, "one in the slot, one held");
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: sent[0],
            at_ms: 12,
        },
        12,
    );
    // b comes while a's slot is taken by a long task: the held one should run on b.
    let b = c.connect_worker(3, hello("b", 1), 100);
    c.schedule(100);
    c.take_batch();
    c.tick(200);
    c.schedule(200);
    let batch = c.take_batch().unwrap();
    assert_eq!(revokes(&batch.sends, 2), vec![sent[1]]);
    c.tick(300);
    c.schedule(300);
    assert!(
        c.take_batch()
            .is_none_or(|b| revokes(&b.sends, 2).is_empty()),
        "asked once"
    );
    // a gives it back; it was never started, so the attempt does not count.
    finish(&mut c, 2, sent[1], Outcome::HandedBack, 310);
    c.schedule(310);
    let batch = c.take_batch().unwrap();
    let again = dispatched_to(&batch, 3);
    assert_eq!(again.len(), 1, "dispatched to b's free slot");
    assert_eq!(again[0].task, sent[1].task);
    let task = c.task(sent[1].task).unwrap();
    assert_eq!(task.worker, Some(b));
    assert_eq!(task.attempts[0].outcome, Some(Outcome::HandedBack));
    assert_eq!(
        c.tasks.get(&sent[1].task).unwrap().counted_attempts(),
        1,
        "only b's attempt counts"
    );
    assert_eq!(c.task(sent[0].task).unwrap().worker, Some(a));
}

#[test]
fn a_held_task_that_started_is_not_asked_back() {
    let mut c = core();
    c.connect_actioner(1);
    c.connect_worker(2, prefetching("a", 1, 1), 10);
    add(&mut c, 2, true);
    c.schedule(11);
    let sent = dispatched_to(&c.take_batch().unwrap(), 2);
    finish(&mut c, 2, sent[0], Outcome::Succeeded, 20);
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: sent[1],
            at_ms: 20,
        },
        20,
    );
    c.connect_worker(3, hello("b", 1), 30);
    c.tick(200);
    c.schedule(200);
    let sends = c.take_batch().map(|b| b.sends).unwrap_or_default();
    assert!(revokes(&sends, 2).is_empty(), "it runs where it is");
}

#[test]
fn a_held_task_times_out_from_its_start_not_from_its_dispatch() {
    let mut c = core(); // lease 1000 ms
    c.connect_actioner(1);
    c.connect_worker(2, prefetching("a", 1, 1), 10);
    let mut long = TaskSpec::new(Payload::Sleep {
        duration_ms: 60_000,
    });
    long.timeout_ms = None;
    let mut held = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
    held.timeout_ms = Some(500);
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add {
            tasks: vec![long, held],
            play: true,
        },
        10,
    );
    c.schedule(10);
    let sent = dispatched_to(&c.take_batch().unwrap(), 2);
    assert_eq!(sent.len(), 2);
    let beat = |c: &mut Core, now| c.worker(2, WorkerToCoordinator::Heartbeat { running: 1 }, now);
    // Held past its timeout and the lease of grace after it: it has not started, so it waits.
    for now in [600, 1200, 1800, 2000] {
        beat(&mut c, now);
        c.tick(now);
    }
    assert_eq!(c.task(sent[1].task).unwrap().state, TaskState::Assigned);
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: sent[1],
            at_ms: 2000,
        },
        2000,
    );
    for now in [2600, 3200, 3400] {
        beat(&mut c, now);
        c.tick(now);
    }
    assert_eq!(
        c.task(sent[1].task).unwrap().state,
        TaskState::Running,
        "500 ms + a lease from its start is 3500"
    );
    beat(&mut c, 3600);
    c.tick(3600);
    let task = c.task(sent[1].task).unwrap();
    assert_eq!(task.attempts[0].outcome, Some(Outcome::TimedOut));
}
