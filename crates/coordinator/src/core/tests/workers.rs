//! Workers: dispatch, reports, leases, reconnects and reattachment, timeouts.

use super::*;

#[test]
fn a_coordinator_that_did_not_run_gives_workers_a_fresh_lease() {
    let mut c = Core::new(CoreConfig {
        lease_ms: 1000,
        stall_ms: Some(500),
        ..CoreConfig::default()
    });
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    let w = c.connect_worker(2, hello("w", 1), 10);
    c.schedule(10);
    c.take_batch();
    c.tick(100);
    // The coordinator was suspended for an hour: the worker's silence is not its fault.
    c.tick(3_600_000);
    assert_eq!(c.workers[&w].conn, Some(2), "not dropped");
    assert_eq!(c.task(ids[0]).unwrap().worker, Some(w), "its task stays");
    // From then on the lease counts again.
    c.tick(3_600_400);
    c.tick(3_600_800);
    c.tick(3_601_100);
    assert_eq!(
        c.workers[&w].conn, None,
        "silent for a lease after the wake-up"
    );
}

#[test]
fn dispatch_result_and_ack_flow() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 3, true);
    let w = c.connect_worker(2, hello("w", 2), 10);
    assert_eq!(c.schedule(11), 2, "only as many as slots");
    let batch = c.take_batch().unwrap();
    let sent = dispatches(&batch);
    assert_eq!(sent.len(), 2);
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: sent[0],
            at_ms: 12,
        },
        12,
    );
    assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Running);
    finish(&mut c, 2, sent[0], Outcome::Succeeded, 13);
    assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Completed);
    assert_eq!(c.schedule(14), 1, "the freed slot takes the third task");
    let batch = c.take_batch().unwrap();
    assert!(batch.sends.iter().any(|(_, o)| matches!(o, Out::Worker(CoordinatorToWorker::Ack { attempt }) if *attempt == sent[0])));
    assert_eq!(dispatches(&batch).len(), 1);
    assert_eq!(ids.len(), 3);
    assert_eq!(c.workers[&w].held.len(), 2);
}

#[test]
fn lease_expiry_requeues_and_records_the_lost_attempt() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    c.connect_worker(2, hello("a", 1), 10);
    c.schedule(10);
    c.disconnect(2, 100);
    c.tick(500);
    assert_eq!(
        c.task(ids[0]).unwrap().state,
        TaskState::Assigned,
        "still within the lease"
    );
    c.tick(1100);
    let t = c.task(ids[0]).unwrap();
    assert_eq!(t.state, TaskState::Ready);
    assert_eq!(t.attempts[0].outcome, Some(Outcome::Lost));
    c.connect_worker(3, hello("b", 1), 1200);
    assert_eq!(c.schedule(1200), 1);
    assert_eq!(c.task(ids[0]).unwrap().attempts.len(), 2);
}

#[test]
fn silent_worker_is_dropped_and_its_late_report_is_kept() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    let w = c.connect_worker(2, hello("frozen", 1), 10);
    c.schedule(10);
    c.tick(2000);
    assert!(
        c.take_immediate()
            .iter()
            .any(|(conn, o)| *conn == 2 && matches!(o, Out::Close(_)))
    );
    assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Ready);
    // It wakes up, reconnects, claims the task, and reports it.
    let mut h = hello("frozen", 1);
    h.previous_id = Some(w);
    assert_eq!(c.connect_worker(3, h, 2100), w);
    let claim = AttemptRef {
        task: ids[0],
        attempt: 1,
    };
    c.worker(
        3,
        WorkerToCoordinator::Reattach {
            running: vec![claim],
        },
        2100,
    );
    finish(&mut c, 3, claim, Outcome::Succeeded, 2101);
    let t = c.task(ids[0]).unwrap();
    assert_eq!(t.attempts[0].outcome, Some(Outcome::Lost));
    assert_eq!(t.attempts[0].late_reports.len(), 1);
    let batch = c.take_batch().unwrap();
    assert!(batch.sends.iter().any(|(_, o)| matches!(o, Out::Worker(CoordinatorToWorker::Reattached { keep, drop }) if keep.is_empty() && drop == &vec![claim])));
}

#[test]
fn a_reconnect_over_a_stale_connection_keeps_the_id_and_the_tasks() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    let w = c.connect_worker(2, hello("w", 1), 10);
    c.schedule(10);
    c.take_batch();
    // The coordinator has not seen connection 2 close when the worker comes back on 3.
    let mut h = hello("w", 1);
    h.previous_id = Some(w);
    assert_eq!(c.connect_worker(3, h, 20), w);
    assert!(
        c.take_immediate()
            .iter()
            .any(|(conn, o)| *conn == 2 && matches!(o, Out::Close(_)))
    );
    let claim = AttemptRef {
        task: ids[0],
        attempt: 1,
    };
    c.worker(
        3,
        WorkerToCoordinator::Reattach {
            running: vec![claim],
        },
        21,
    );
    let batch = c.take_batch().unwrap();
    assert!(batch.sends.iter().any(|(conn, o)| *conn == 3 && matches!(o, Out::Worker(CoordinatorToWorker::Reattached { keep, .. }) if keep == &vec![claim])));
    // The old connection's close, when it comes, changes nothing.
    c.disconnect(2, 22);
    assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Assigned);
    assert_eq!(
        c.workers[&w].info.state,
        WorkerState::Active,
        "the worker is still connected"
    );
    assert_eq!(c.workers[&w].conn, Some(3));
}

#[test]
fn workers_lost_past_the_forget_time_are_forgotten_and_their_ids_never_reused() {
    let mut c = Core::new(CoreConfig {
        lease_ms: 1000,
        forget_lost_ms: Some(5000),
        ..CoreConfig::default()
    });
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    // `stays` takes only sync tasks, so the async task goes to `gone`, the newer worker.
    let mut sync = hello("stays", 1);
    sync.block = BlockType::Sync;
    let stays = c.connect_worker(3, sync, 10);
    let gone = c.connect_worker(2, hello("gone", 1), 10);
    c.schedule(10);
    c.take_batch();
    let held_by = c.task(ids[0]).unwrap().worker.unwrap();
    assert_eq!(held_by, gone, "the first worker holds the task");
    c.disconnect(2, 100);
    // The lease ends at 1,100: the task goes back to the queue, the worker is kept.
    c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 1000);
    c.tick(1100);
    assert!(c.workers.contains_key(&gone));
    // The other worker stays connected and heartbeats; it is never forgotten.
    c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 5000);
    c.tick(5099);
    assert!(c.workers.contains_key(&gone), "lost for less than 5 s");
    c.take_batch();
    c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 5100);
    c.tick(5100);
    assert!(!c.workers.contains_key(&gone), "forgotten after 5 s");
    assert!(c.workers.contains_key(&stays));
    let batch = c.take_batch().unwrap();
    assert_eq!(batch.removed_workers, vec![gone]);
    // A restart from what is stored (the task's attempt still names the forgotten worker)
    // hands out a new id, not the forgotten one.
    let tasks = vec![c.task(ids[0]).unwrap()];
    let kept = vec![c.workers[&stays].info()];
    let mut r = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        kept,
        vec![],
        Default::default(),
        6000,
    );
    let new = r.connect_worker(4, hello("new", 1), 6000);
    assert!(gone.0 > stays.0);
    assert!(new.0 > gone.0, "{new} reuses the forgotten {gone}");
}

#[test]
fn a_drained_worker_that_leaves_is_removed_and_one_that_holds_tasks_is_lost() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    let busy = c.connect_worker(2, hello("busy", 1), 10);
    c.schedule(10);
    c.take_batch();
    let idle = c.connect_worker(3, hello("idle", 1), 11);
    c.take_batch();
    for conn in [2, 3] {
        c.worker(conn, WorkerToCoordinator::Draining, 12);
    }
    assert_eq!(c.workers[&idle].info.state, WorkerState::Draining);
    c.disconnect(3, 13);
    assert!(
        !c.workers.contains_key(&idle),
        "left on purpose, holding nothing"
    );
    assert_eq!(c.take_batch().unwrap().removed_workers, vec![idle]);
    // A draining worker that vanishes with a task is lost like any other: the lease runs.
    c.disconnect(2, 14);
    assert_eq!(c.workers[&busy].info.state, WorkerState::Lost);
    assert_eq!(c.task(ids[0]).unwrap().worker, Some(busy));
    let batch = c.take_batch().unwrap();
    assert!(batch.removed_workers.is_empty());
    assert_eq!(batch.workers.len(), 1);
    // A new worker does not get the removed worker's id.
    let next = c.connect_worker(4, hello("next", 1), 15);
    assert!(next.0 > idle.0);
}

#[test]
fn restart_keeps_claimed_tasks_and_requeues_unclaimed_ones() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, true);
    let w = c.connect_worker(2, hello("w", 2), 10);
    c.schedule(10);
    let batch = c.take_batch().unwrap();
    let tasks: Vec<TaskInfo> = ids.iter().map(|id| c.task(*id).unwrap().clone()).collect();
    let workers = batch.workers.clone();
    let mut r = Core::restore(
        CoreConfig {
            lease_ms: 1000,
            ..CoreConfig::default()
        },
        as_stored(tasks),
        workers,
        vec![],
        Default::default(),
        5000,
    );
    assert_eq!(r.counts()[idx(TaskState::Assigned)].count, 2);
    let mut h = hello("w", 2);
    h.previous_id = Some(w);
    assert_eq!(r.connect_worker(9, h, 5001), w);
    r.worker(
        9,
        WorkerToCoordinator::Reattach {
            running: vec![AttemptRef {
                task: ids[0],
                attempt: 1,
            }],
        },
        5002,
    );
    assert_eq!(r.task(ids[0]).unwrap().state, TaskState::Assigned);
    assert_eq!(
        r.task(ids[1]).unwrap().state,
        TaskState::Ready,
        "unclaimed goes back to ready"
    );
    assert_eq!(r.schedule(5003), 1, "and is run again, on the freed slot");
}

/// A worker that held nothing comes back under its old id while a task waits for it.
fn reconnect_with_a_task_waiting() -> (Core, WorkerId, TaskId) {
    let mut c = core();
    c.connect_actioner(1);
    let w = c.connect_worker(2, hello("w", 1), 10);
    c.disconnect(2, 20);
    let ids = add(&mut c, 1, true);
    c.schedule(30);
    assert!(c.take_batch().is_none(), "nobody to dispatch to");
    let mut h = hello("w", 1);
    h.previous_id = Some(w);
    assert_eq!(c.connect_worker(3, h, 40), w);
    (c, w, ids[0])
}

#[test]
fn a_reconnected_worker_gets_no_dispatch_before_its_reattach_and_runs_a_task_once() {
    let (mut c, w, id) = reconnect_with_a_task_waiting();
    c.schedule(40);
    let early = c.take_batch().map(|b| b.sends).unwrap_or_default();
    assert!(
        to_worker(&early, 3).is_empty(),
        "nothing before the reattach: {early:?}"
    );
    c.worker(3, WorkerToCoordinator::Reattach { running: vec![] }, 41);
    c.schedule(41);
    let sends = c.take_batch().unwrap().sends;
    let msgs = to_worker(&sends, 3);
    assert!(
        matches!(&msgs[..], [CoordinatorToWorker::Reattached { keep, drop }, CoordinatorToWorker::Dispatch(d)]
            if keep.is_empty() && drop.is_empty() && d.attempt.attempt == 1),
        "{msgs:?}"
    );
    finish(
        &mut c,
        3,
        AttemptRef {
            task: id,
            attempt: 1,
        },
        Outcome::Succeeded,
        50,
    );
    let t = c.task(id).unwrap();
    assert_eq!(t.state, TaskState::Completed);
    assert_eq!(t.attempts.len(), 1, "one attempt, never lost: {t:?}");
    assert_eq!(t.attempts[0].worker, w);
    // A second reattach on the same connection loses nothing dispatched on it.
    let again = add(&mut c, 1, true)[0];
    c.schedule(60);
    c.take_batch();
    c.worker(3, WorkerToCoordinator::Reattach { running: vec![] }, 61);
    assert_eq!(c.task(again).unwrap().state, TaskState::Assigned);
    assert_eq!(c.task(again).unwrap().attempts.len(), 1);
}

#[test]
fn a_reconnected_worker_that_sends_something_else_first_claims_nothing() {
    let (mut c, _, id) = reconnect_with_a_task_waiting();
    c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 41);
    c.schedule(41);
    let immediate = c.take_immediate();
    assert!(matches!(
        &to_worker(&immediate, 3)[..],
        [CoordinatorToWorker::HeartbeatAck]
    ));
    let msgs = to_worker(&c.take_batch().unwrap().sends, 3);
    assert!(
        matches!(&msgs[..], [CoordinatorToWorker::Reattached { keep, drop }, CoordinatorToWorker::Dispatch(_)]
            if keep.is_empty() && drop.is_empty()),
        "{msgs:?}"
    );
    assert_eq!(c.task(id).unwrap().attempts.len(), 1);
}

#[test]
fn a_worker_that_held_tasks_loses_only_those_it_does_not_claim() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, true);
    let w = c.connect_worker(2, hello("w", 3), 10);
    c.schedule(10);
    c.take_batch();
    c.disconnect(2, 20);
    let third = add(&mut c, 1, true)[0];
    let mut h = hello("w", 3);
    h.previous_id = Some(w);
    c.connect_worker(3, h, 30);
    c.schedule(30);
    assert!(c.take_batch().is_none_or(|b| dispatches(&b).is_empty()));
    let claim = AttemptRef {
        task: ids[0],
        attempt: 1,
    };
    c.worker(
        3,
        WorkerToCoordinator::Reattach {
            running: vec![claim],
        },
        31,
    );
    c.schedule(31);
    let sent = dispatches(&c.take_batch().unwrap());
    // The unclaimed one was lost and goes out again with the new one; the claimed one stays.
    assert_eq!(c.task(ids[0]).unwrap().attempts.len(), 1);
    assert_eq!(
        c.task(ids[1]).unwrap().attempts[0].outcome,
        Some(Outcome::Lost)
    );
    let mut got: Vec<TaskId> = sent.iter().map(|a| a.task).collect();
    got.sort();
    let mut want = vec![ids[1], third];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(c.sched.running(w), Some(3));
}

#[test]
fn reports_of_attempts_never_dispatched_to_the_worker_are_refused_and_acknowledged() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    c.connect_worker(2, hello("a", 1), 10);
    c.schedule(10);
    let sent = dispatches(&c.take_batch().unwrap());
    // Another worker names the first one's attempt, an attempt never made, and no task at all.
    c.connect_worker(3, hello("b", 1), 10);
    let other = 3;
    let bogus = AttemptRef {
        task: ids[0],
        attempt: 7,
    };
    let unknown_task = AttemptRef {
        task: TaskId::new(),
        attempt: 1,
    };
    for a in [sent[0], bogus, unknown_task] {
        c.worker(
            other,
            WorkerToCoordinator::Started {
                attempt: a,
                at_ms: 11,
            },
            11,
        );
        finish(&mut c, other, a, Outcome::Succeeded, 12);
    }
    let errors: Vec<_> = to_worker(&c.take_immediate(), other)
        .into_iter()
        .filter_map(|m| match m {
            CoordinatorToWorker::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert!(errors.iter().all(|e| e.kind == ErrorKind::UnknownId));
    let acks = to_worker(&c.take_batch().unwrap().sends, other)
        .into_iter()
        .filter(|m| matches!(m, CoordinatorToWorker::Ack { .. }))
        .count();
    assert_eq!(acks, 3, "every report is acknowledged all the same");
    let t = c.task(ids[0]).unwrap();
    assert_eq!(
        t.state,
        TaskState::Assigned,
        "the holder's attempt is untouched"
    );
    assert!(t.attempts[0].late_reports.is_empty());
}

#[test]
fn an_attempt_its_worker_does_not_stop_at_the_timeout_is_ended_by_the_coordinator() {
    let mut c = core(); // lease 1000 ms
    c.connect_actioner(1);
    let mut spec = TaskSpec::new(Payload::Sleep {
        duration_ms: 60_000,
    });
    spec.timeout_ms = Some(500);
    spec.max_attempts = 2;
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add {
            tasks: vec![spec],
            play: true,
        },
        10,
    );
    c.take_batch();
    let w = c.connect_worker(2, hello("stubborn", 1), 10);
    c.schedule(10);
    let a = dispatches(&c.take_batch().unwrap())[0];
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: a,
            at_ms: 11,
        },
        11,
    );
    // It heartbeats, so its lease holds; the timeout and a lease of grace pass.
    c.worker(2, WorkerToCoordinator::Heartbeat { running: 1 }, 1000);
    c.tick(1000);
    assert_eq!(c.task(a.task).unwrap().state, TaskState::Running);
    c.worker(2, WorkerToCoordinator::Heartbeat { running: 1 }, 1511);
    c.tick(1511);
    let t = c.task(a.task).unwrap();
    assert_eq!(t.attempts[0].outcome, Some(Outcome::TimedOut));
    assert!(
        t.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("coordinator")
    );
    assert_eq!(t.state, TaskState::Ready, "one attempt left");
    assert_eq!(c.sched.running(w), Some(0));
    let msgs = to_worker(&c.take_batch().unwrap().sends, 2);
    assert!(
        msgs.contains(&CoordinatorToWorker::Kill { attempt: a }),
        "{msgs:?}"
    );
    // Its report, when it comes, is a late one.
    finish(&mut c, 2, a, Outcome::Killed, 1600);
    assert_eq!(c.task(a.task).unwrap().attempts[0].late_reports.len(), 1);
}

#[test]
fn a_silent_worker_hears_why_before_its_connection_is_closed() {
    let mut c = core();
    c.connect_worker(2, hello("frozen", 1), 10);
    c.tick(2000);
    let sends = c.take_immediate();
    assert!(
        matches!(&sends[..], [(2, Out::Worker(CoordinatorToWorker::Shutdown { reason })), (2, Out::Close(_))] if reason.contains("no heartbeat")),
        "{sends:?}"
    );
}

/// Whether `sends` welcome `conn` with `id`.
fn welcomes(sends: &[(ConnId, Out)], conn: ConnId, id: WorkerId) -> bool {
    sends
        .iter()
        .any(|(c, o)| *c == conn && matches!(o, Out::Welcome(w) if *w == id))
}

#[test]
fn a_new_id_is_told_only_once_its_counter_is_durable_and_no_later_run_hands_it_out_again() {
    let mut c = core();
    let w = c.connect_worker(2, hello("a", 1), 10);
    assert!(
        !welcomes(&c.take_immediate(), 2, w),
        "not before the commit"
    );
    let batch = c.take_batch().unwrap();
    assert!(welcomes(&batch.sends, 2, w), "with the commit");
    let counters = batch.counters.expect("the batch writes the counter");
    assert_eq!(counters.next_worker, w.0 + 1);
    // A client's id is never in the worker table unless it serves: the counter alone keeps it.
    let client = c.connect_client(
        3,
        ClientHello {
            name: "kiwipy".into(),
            host: "h".into(),
            namespace: String::new(),
            previous_id: None,
        },
        11,
    );
    let batch = c.take_batch().unwrap();
    assert!(welcomes(&batch.sends, 3, client));
    let counters = batch.counters.expect("the client's id moved the counter");
    // The coordinator dies before the worker's record is written anywhere else: a new run from
    // the counters alone hands out neither id again.
    let mut r = Core::restore(CoreConfig::default(), vec![], vec![], vec![], counters, 20);
    let next = r.connect_worker(5, hello("b", 1), 21);
    assert!(next != w && next != client && next.0 > client.0, "{next}");
    // A failed commit keeps the welcome waiting, and the counter to write.
    let batch = r.take_batch().unwrap();
    r.requeue(batch);
    let batch = r.take_batch().unwrap();
    assert!(welcomes(&batch.sends, 5, next), "after the retried commit");
    assert!(batch.counters.is_some());
}

#[test]
fn a_worker_back_under_its_own_id_is_welcomed_at_once() {
    let mut c = core();
    let w = c.connect_worker(2, hello("a", 1), 10);
    c.take_batch();
    c.disconnect(2, 11);
    let mut h = hello("a", 1);
    h.previous_id = Some(w);
    assert_eq!(c.connect_worker(3, h, 12), w);
    assert!(welcomes(&c.take_immediate(), 3, w));
    let batch = c.take_batch();
    assert!(
        batch.is_none_or(|b| b.counters.is_none()),
        "no counter moved"
    );
}

#[test]
fn removing_the_newest_tasks_keeps_their_numbers_taken() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 3, false);
    c.take_batch();
    let newest = c.task(ids[2]).unwrap().number;
    c.actioner(
        1,
        RequestId(9),
        ActionerRequest::Remove {
            selector: Selector::Ids(vec![ids[2].to_string()]),
        },
        20,
    );
    let batch = c.take_batch().unwrap();
    let counters = batch.counters.expect("a removal writes the counters");
    assert_eq!(counters.next_number, newest + 1);
    let tasks: Vec<TaskInfo> = ids[..2]
        .iter()
        .map(|id| c.task(*id).unwrap().clone())
        .collect();
    let mut r = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        vec![],
        vec![],
        counters,
        20,
    );
    r.connect_actioner(1);
    let again = add(&mut r, 1, false);
    assert!(
        r.task(again[0]).unwrap().number > newest,
        "a removed number is not reused"
    );
}

#[test]
fn a_peer_of_another_name_cannot_take_a_held_id() {
    let mut c = core();
    c.connect_actioner(1);
    add(&mut c, 1, true);
    let w = c.connect_worker(2, hello("a", 1), 10);
    c.schedule(10);
    c.take_batch();
    assert_eq!(c.workers[&w].held.len(), 1);
    // Another process presents the same id (a store restored from a backup forgot it was
    // handed out): it gets its own, and the holder keeps its connection and its task.
    let mut h = hello("b", 1);
    h.previous_id = Some(w);
    let other = c.connect_worker(3, h, 11);
    assert_ne!(other, w);
    assert_eq!(c.workers[&w].conn, Some(2));
    assert_eq!(c.workers[&w].held.len(), 1);
    assert!(
        !c.take_immediate()
            .iter()
            .any(|(conn, o)| *conn == 2 && matches!(o, Out::Close(_))),
        "the holder is not closed"
    );
}
