//! Unit tests of the core, without sockets.

use super::*;
use tatzelwurm_protocol::{BlockType, Outcome, Payload};

fn core() -> Core {
    Core::new(CoreConfig {
        lease_ms: 1000,
        ..CoreConfig::default()
    })
}

fn hello(name: &str, slots: u32) -> WorkerHello {
    WorkerHello {
        block: BlockType::Async,
        slots,
        name: name.into(),
        host: "h".into(),
        tags: vec![],
        handlers: vec![],
        previous_id: None,
    }
}

fn add(c: &mut Core, n: usize, play: bool) -> Vec<TaskId> {
    let tasks = (0..n)
        .map(|_| TaskSpec::new(Payload::Sleep { duration_ms: 1 }))
        .collect();
    c.actioner(1, RequestId(1), ActionerRequest::Add { tasks, play }, 10);
    let batch = c.take_batch().unwrap();
    match &batch.sends[..] {
        [
            ..,
            (
                _,
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Added { ids },
                    ..
                }),
            ),
        ] => ids.clone(),
        other => panic!("{other:?}"),
    }
}

/// The worker on `conn` reports that `attempt` ended with `outcome` at `now`.
fn finish(c: &mut Core, conn: ConnId, attempt: AttemptRef, outcome: Outcome, now: u64) {
    let report = AttemptReport {
        outcome: Some(outcome),
        ended_ms: now,
        ..Default::default()
    };
    c.worker(conn, WorkerToCoordinator::Finished { attempt, report }, now);
}

fn dispatches(batch: &Batch) -> Vec<AttemptRef> {
    batch
        .sends
        .iter()
        .filter_map(|(_, o)| match o {
            Out::Worker(CoordinatorToWorker::Dispatch(d)) => Some(d.attempt),
            _ => None,
        })
        .collect()
}

#[test]
fn an_add_beyond_the_request_limit_is_refused_whole() {
    let mut c = core();
    c.connect_actioner(1);
    let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 }); MAX_ADD_TASKS + 1];
    c.actioner(
        1,
        RequestId(5),
        ActionerRequest::Add { tasks, play: true },
        10,
    );
    match &c.take_immediate()[..] {
        [
            (
                1,
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Error(e),
                    ..
                }),
            ),
        ] => {
            assert_eq!(e.kind, ErrorKind::LimitExceeded);
            assert!(e.message.contains("nothing was added"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(c.tasks.is_empty());
    assert_eq!(
        add(&mut c, MAX_ADD_TASKS, false).len(),
        MAX_ADD_TASKS,
        "the limit itself is fine"
    );
}

#[test]
fn a_start_costs_no_commit_of_its_own_but_is_written_with_the_next() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, true);
    c.actioner(
        1,
        RequestId(7),
        ActionerRequest::Subscribe {
            filter: EventFilter {
                ids: vec![],
                tags: vec![],
                all: true,
            },
        },
        10,
    );
    c.take_immediate();
    c.connect_worker(2, hello("w", 2), 10);
    c.schedule(10);
    let sent = dispatches(&c.take_batch().unwrap());
    let started = |c: &mut Core, a: AttemptRef, now| {
        c.worker(
            2,
            WorkerToCoordinator::Started {
                attempt: a,
                at_ms: now,
            },
            now,
        )
    };
    started(&mut c, sent[0], 11);
    assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Running);
    let events = c.take_immediate();
    assert!(
        matches!(&events[..], [(1, Out::Actioner(CoordinatorToActioner::Event { event, .. }))] if event.state == TaskState::Running),
        "the running event leaves at once: {events:?}"
    );
    assert!(c.take_batch().is_none(), "no commit for a start alone");
    assert_eq!(c.pending_writes(), 1);
    // The next change that needs a commit takes it along.
    c.actioner(
        1,
        RequestId(8),
        ActionerRequest::Pause {
            selector: Selector::Ids(vec![sent[1].task.to_string()]),
        },
        12,
    );
    let batch = c.take_batch().unwrap();
    let mut written: Vec<TaskId> = batch.tasks.iter().map(|t| t.id).collect();
    written.sort();
    let mut both = ids.clone();
    both.sort();
    assert_eq!(written, both);
    let running = batch.tasks.iter().find(|t| t.id == sent[0].task).unwrap();
    assert_eq!(running.state, TaskState::Running);
    assert_eq!(running.attempts[0].started_ms, Some(11));
    // Alone, a start is written at the next tick, and before a shutdown.
    started(&mut c, sent[1], 13);
    assert!(c.take_batch().is_none());
    c.tick(14);
    assert_eq!(c.take_batch().unwrap().tasks.len(), 1);
    let mut d = core();
    d.connect_actioner(1);
    add(&mut d, 1, true);
    d.connect_worker(2, hello("w", 1), 10);
    d.schedule(10);
    let sent = dispatches(&d.take_batch().unwrap());
    started(&mut d, sent[0], 11);
    d.begin_shutdown();
    assert_eq!(
        d.take_batch().unwrap().tasks.len(),
        1,
        "flushed on the way out"
    );
}

#[test]
fn finished_tasks_expire_when_asked_and_only_then() {
    let mut c = Core::new(CoreConfig {
        lease_ms: 1000,
        remove_finished_ms: Some(500),
        ..CoreConfig::default()
    });
    c.connect_actioner(1);
    let ids = add(&mut c, 3, true);
    c.connect_worker(2, hello("w", 2), 10);
    c.schedule(10);
    let sent = dispatches(&c.take_batch().unwrap());
    finish(&mut c, 2, sent[0], Outcome::Succeeded, 20);
    finish(&mut c, 2, sent[1], Outcome::Failed, 30);
    c.take_batch();
    let queued = *ids
        .iter()
        .find(|id| **id != sent[0].task && **id != sent[1].task)
        .unwrap();
    c.tick(519);
    assert!(c.task(sent[0].task).is_some(), "ended 499 ms ago: kept");
    c.tick(520);
    assert!(c.task(sent[0].task).is_none(), "ended 500 ms ago: removed");
    assert!(c.task(sent[1].task).is_some(), "the failed one ended later");
    assert_eq!(c.take_batch().unwrap().removed, vec![sent[0].task]);
    // A task retried before it expires is not removed for its old end.
    c.actioner(
        1,
        RequestId(9),
        ActionerRequest::Retry {
            selector: Selector::Ids(vec![sent[1].task.to_string()]),
            attempts: 1,
        },
        40,
    );
    c.take_batch();
    c.tick(10_000);
    assert!(c.task(sent[1].task).is_some(), "retried: it runs again");
    assert!(c.task(queued).is_some(), "unfinished tasks never expire");
    // Without the option, nothing is removed however old.
    let mut keep = core();
    keep.connect_actioner(1);
    let ids = add(&mut keep, 1, true);
    keep.connect_worker(2, hello("w", 1), 10);
    keep.schedule(10);
    let sent = dispatches(&keep.take_batch().unwrap());
    finish(&mut keep, 2, sent[0], Outcome::Succeeded, 20);
    keep.tick(u64::MAX / 2);
    assert!(keep.task(ids[0]).is_some());
}

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
fn add_is_acknowledged_only_with_its_batch() {
    let mut c = core();
    c.connect_actioner(1);
    let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
    c.actioner(
        1,
        RequestId(5),
        ActionerRequest::Add { tasks, play: false },
        10,
    );
    assert!(c.take_immediate().is_empty(), "no reply before the commit");
    let batch = c.take_batch().unwrap();
    assert_eq!(batch.tasks.len(), 1);
    assert_eq!(batch.sends.len(), 1);
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
    let tasks = vec![c.task(ids[0]).unwrap().clone()];
    let kept = vec![c.workers[&stays].info()];
    let mut r = Core::restore(CoreConfig::default(), tasks, kept, 6000);
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
        tasks,
        workers,
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

#[test]
fn invalid_operations_change_nothing() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, false);
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Kill {
            selector: Selector::Ids(vec![ids[0].to_string()]),
        },
        20,
    );
    c.take_batch();
    let sel = Selector::Ids(vec![ids[1].to_string(), ids[0].to_string()]);
    c.actioner(1, RequestId(3), ActionerRequest::Play { selector: sel }, 21);
    let imm = c.take_immediate();
    match &imm[..] {
        [
            (
                _,
                Out::Actioner(CoordinatorToActioner::Reply {
                    request,
                    body: Reply::Error(e),
                }),
            ),
        ] => {
            assert_eq!(*request, RequestId(3));
            assert_eq!(e.kind, ErrorKind::InvalidState);
            assert!(
                e.message.contains(&ids[0].to_string()) && e.message.contains("killed"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.task(ids[1]).unwrap().state,
        TaskState::Created,
        "the valid one was not played either"
    );
    c.actioner(
        1,
        RequestId(4),
        ActionerRequest::Show { id: "zz".into() },
        22,
    );
    c.actioner(
        1,
        RequestId(5),
        ActionerRequest::Show { id: "ffff".into() },
        22,
    );
    let kinds: Vec<ErrorKind> = c
        .take_immediate()
        .into_iter()
        .filter_map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Reply {
                body: Reply::Error(e),
                ..
            }) => Some(e.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![ErrorKind::UnknownId, ErrorKind::UnknownId]);
}

#[test]
fn prefixes_resolve_uniquely_or_are_refused() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, false);
    let full = ids[0].simple();
    assert_eq!(c.resolve(&full[..31]).unwrap(), ids[0]);
    assert_eq!(
        c.resolve(&ids[0].to_string().to_uppercase()).unwrap(),
        ids[0]
    );
    // Both ids were made in the same millisecond range: their first 6 digits are shared.
    let e = c.resolve(&full[..6]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AmbiguousId);
    assert!(e.message.contains(&full[..6]));
}

#[test]
fn store_outage_refuses_changes_but_serves_reads() {
    let mut c = core();
    c.connect_actioner(1);
    c.set_store_ok(false);
    let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add { tasks, play: true },
        1,
    );
    c.actioner(1, RequestId(2), ActionerRequest::Summary, 1);
    let imm = c.take_immediate();
    assert!(
        matches!(&imm[0].1, Out::Actioner(CoordinatorToActioner::Reply { body: Reply::Error(e), .. }) if e.kind == ErrorKind::StoreUnavailable)
    );
    assert!(matches!(
        &imm[1].1,
        Out::Actioner(CoordinatorToActioner::Reply {
            body: Reply::Summary { .. },
            ..
        })
    ));
    assert!(c.take_batch().is_none(), "nothing to write");
    assert_eq!(c.counts().iter().map(|s| s.count).sum::<u64>(), 0);
}

#[test]
fn a_failed_commit_turns_held_acknowledgements_into_errors() {
    let mut c = core();
    c.connect_actioner(1);
    let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
    c.actioner(
        1,
        RequestId(3),
        ActionerRequest::Add { tasks, play: true },
        1,
    );
    c.connect_worker(2, hello("w", 1), 1);
    c.schedule(1);
    let batch = c.take_batch().unwrap();
    c.requeue(batch);
    let imm = c.take_immediate();
    assert!(
        matches!(&imm[..], [(1, Out::Actioner(CoordinatorToActioner::Reply { request: RequestId(3), body: Reply::Error(e) }))] if e.kind == ErrorKind::StoreUnavailable)
    );
    let retry = c.take_batch().unwrap();
    assert_eq!(retry.tasks.len(), 1, "the change is written again");
    assert_eq!(
        dispatches(&retry).len(),
        1,
        "the dispatch still waits for a commit"
    );
}

#[test]
fn a_failed_commit_of_a_reply_in_parts_is_refused_once() {
    let mut c = Core::new(CoreConfig {
        reply_chunk: 2,
        ..CoreConfig::default()
    });
    c.connect_actioner(1);
    add(&mut c, 5, false);
    c.actioner(
        1,
        RequestId(4),
        ActionerRequest::Play {
            selector: Selector::All,
        },
        2,
    );
    let batch = c.take_batch().unwrap();
    assert_eq!(batch.sends.len(), 3, "the ids go in three parts");
    c.requeue(batch);
    let imm = c.take_immediate();
    assert!(
        matches!(&imm[..], [(1, Out::Actioner(CoordinatorToActioner::Reply { request: RequestId(4), body: Reply::Error(e) }))] if e.kind == ErrorKind::StoreUnavailable),
        "{imm:?}"
    );
}

/// The ids of the one `changed` reply in a batch, or the error it carries.
fn changed_reply(sends: &[(ConnId, Out)]) -> Result<Vec<TaskId>, ErrorReply> {
    let replies: Vec<&Reply> = sends
        .iter()
        .filter_map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Reply { body, .. }) => Some(body),
            _ => None,
        })
        .collect();
    match &replies[..] {
        [Reply::Changed { ids, more: false }] => Ok(ids.clone()),
        [Reply::Error(e)] => Err(e.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn retry_all_takes_failed_tasks_and_a_named_killed_one_runs_again() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 3, true);
    c.connect_worker(2, hello("w", 2), 10);
    c.schedule(10);
    let sent = dispatches(&c.take_batch().unwrap());
    assert_eq!(sent.len(), 2);
    finish(&mut c, 2, sent[0], Outcome::Failed, 12);
    let (failed, queued) = (sent[0].task, sent[1].task);
    let other = *ids
        .iter()
        .find(|id| **id != failed && **id != queued)
        .unwrap();
    let retry = |c: &mut Core, selector: Selector, attempts: u32| {
        c.actioner(
            1,
            RequestId(9),
            ActionerRequest::Retry { selector, attempts },
            13,
        );
        let sends = c.take_immediate();
        let sends = if sends.is_empty() {
            c.take_batch().unwrap().sends
        } else {
            sends
        };
        changed_reply(&sends)
    };
    // The third task, never dispatched, is killed; the second is still held by the worker.
    c.actioner(
        1,
        RequestId(8),
        ActionerRequest::Kill {
            selector: Selector::Ids(vec![other.to_string()]),
        },
        13,
    );
    c.take_batch();
    assert_eq!(c.task(failed).unwrap().state, TaskState::Failed);
    assert_eq!(
        retry(&mut c, Selector::All, 1),
        Ok(vec![failed]),
        "only the failed one"
    );
    assert_eq!(c.task(failed).unwrap().state, TaskState::Ready);
    let e = retry(&mut c, Selector::Ids(vec![queued.to_string()]), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidState, "{e}");
    let e = retry(&mut c, Selector::Ids(vec![other.to_string()]), 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
    assert_eq!(
        retry(&mut c, Selector::Ids(vec![other.to_string()]), 3),
        Ok(vec![other])
    );
    assert_eq!(c.task(other).unwrap().spec.max_attempts, 3);
    // Both go to the worker again as it frees its slot.
    finish(&mut c, 2, sent[1], Outcome::Succeeded, 14);
    c.schedule(15);
    let again = dispatches(&c.take_batch().unwrap());
    let mut tasks: Vec<TaskId> = again.iter().map(|a| a.task).collect();
    tasks.sort();
    let mut want = vec![failed, other];
    want.sort();
    assert_eq!(tasks, want);
    let failed_again = again.iter().find(|a| a.task == failed).unwrap();
    assert_eq!(failed_again.attempt, 2, "a new attempt; the first is kept");
}

#[test]
fn long_lists_are_split_into_parts_and_other_replies_pass_whole() {
    let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
    let parts = split_reply(
        Reply::Changed {
            ids: ids.clone(),
            more: false,
        },
        2,
    );
    let shapes: Vec<(usize, bool)> = parts
        .iter()
        .map(|p| match p {
            Reply::Changed { ids, more } => (ids.len(), *more),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(shapes, vec![(2, true), (2, true), (1, false)]);
    let joined: Vec<TaskId> = parts
        .into_iter()
        .flat_map(|p| match p {
            Reply::Changed { ids, .. } => ids,
            _ => vec![],
        })
        .collect();
    assert_eq!(joined, ids, "in order, each once");
    for n in [0, 1, 2, 4] {
        let parts = split_reply(
            Reply::Changed {
                ids: ids[..n].to_vec(),
                more: false,
            },
            2,
        );
        assert_eq!(parts.len(), n.div_ceil(2).max(1), "{n} ids");
    }
    assert_eq!(split_reply(Reply::Added { ids: ids.clone() }, 2).len(), 1);
}

#[test]
fn a_large_snapshot_is_sent_in_parts_before_the_reply() {
    let mut c = Core::new(CoreConfig {
        reply_chunk: 2,
        ..CoreConfig::default()
    });
    c.connect_actioner(1);
    let mut ids = add(&mut c, 5, false);
    c.take_immediate();
    let all = EventFilter {
        ids: vec![],
        tags: vec![],
        all: true,
    };
    c.actioner(
        1,
        RequestId(9),
        ActionerRequest::Subscribe { filter: all },
        20,
    );
    let mut seen = Vec::new();
    let mut flags = Vec::new();
    for (conn, out) in c.take_immediate() {
        assert_eq!(conn, 1);
        let Out::Actioner(CoordinatorToActioner::Reply {
            request: RequestId(9),
            body: Reply::Subscribed { tasks, more },
        }) = out
        else {
            panic!("not a part of the snapshot: {out:?}");
        };
        assert!(tasks.len() <= 2, "a part holds at most the chunk");
        seen.extend(tasks.iter().map(|t| t.id));
        flags.push(more);
    }
    assert_eq!(flags, vec![true, true, false], "the last part says so");
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every task once");
}

#[test]
fn subscribers_get_every_state_change_after_the_commit() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, false);
    c.connect_actioner(7);
    c.actioner(
        7,
        RequestId(9),
        ActionerRequest::Subscribe {
            filter: EventFilter {
                ids: vec![ids[0].to_string()],
                tags: vec![],
                all: false,
            },
        },
        20,
    );
    assert!(
        matches!(&c.take_immediate()[0].1, Out::Actioner(CoordinatorToActioner::Reply { body: Reply::Subscribed { tasks, more: false }, .. }) if tasks[0].state == TaskState::Created)
    );
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Play {
            selector: Selector::All,
        },
        21,
    );
    c.connect_worker(2, hello("w", 1), 22);
    c.schedule(22);
    let batch = c.take_batch().unwrap();
    let states: Vec<TaskState> = batch
        .sends
        .iter()
        .filter_map(|(conn, o)| match o {
            Out::Actioner(CoordinatorToActioner::Event {
                subscription,
                event,
            }) if *conn == 7 => {
                assert_eq!(*subscription, RequestId(9));
                Some(event.state)
            }
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![TaskState::Ready, TaskState::Assigned]);
}

#[test]
fn breakdown_counts_states_per_tag_value() {
    let mut c = core();
    c.connect_actioner(1);
    let tagged = |v: &str| {
        let mut s = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
        s.tags = vec![
            format!("project={v}").parse().unwrap(),
            "other=x".parse().unwrap(),
        ];
        s
    };
    let tasks = vec![
        tagged("b"),
        tagged("a"),
        tagged("a"),
        TaskSpec::new(Payload::Sleep { duration_ms: 1 }),
    ];
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add { tasks, play: false },
        1,
    );
    c.take_batch();
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Kill {
            selector: Selector::All,
        },
        2,
    );
    c.actioner(
        1,
        RequestId(3),
        ActionerRequest::Breakdown {
            key: "project".into(),
        },
        3,
    );
    let imm = c.take_immediate();
    let Some((
        _,
        Out::Actioner(CoordinatorToActioner::Reply {
            body: Reply::Breakdown { key, values },
            ..
        }),
    )) = imm.last()
    else {
        panic!("{imm:?}")
    };
    assert_eq!(key, "project");
    let got: Vec<(String, Vec<(TaskState, u64)>)> = values
        .iter()
        .map(|v| {
            (
                v.value.clone(),
                v.counts.iter().map(|c| (c.state, c.count)).collect(),
            )
        })
        .collect();
    // Counted as the table is now (the kill is not durable yet, but the table has it).
    assert_eq!(
        got,
        vec![
            ("a".into(), vec![(TaskState::Killed, 2)]),
            ("b".into(), vec![(TaskState::Killed, 1)])
        ]
    );
}

#[test]
fn kill_of_a_running_task_is_sent_to_its_worker() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    c.connect_worker(2, hello("w", 1), 1);
    c.schedule(1);
    c.take_batch();
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Kill {
            selector: Selector::Ids(vec![ids[0].simple()[..30].to_string()]),
        },
        2,
    );
    let batch = c.take_batch().unwrap();
    assert!(
        batch
            .sends
            .iter()
            .any(|(conn, o)| *conn == 2
                && matches!(o, Out::Worker(CoordinatorToWorker::Kill { .. })))
    );
    assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Killed);
}

/// The orders a batch or an immediate list holds for connection `conn`, in order.
fn to_worker(sends: &[(ConnId, Out)], conn: ConnId) -> Vec<CoordinatorToWorker> {
    sends
        .iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, o)| match o {
            Out::Worker(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
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
fn an_unsubscribed_connection_gets_no_more_events() {
    let mut c = core();
    c.connect_actioner(1);
    let sub = ActionerRequest::Subscribe {
        filter: EventFilter {
            ids: vec![],
            tags: vec![],
            all: true,
        },
    };
    c.actioner(1, RequestId(4), sub, 10);
    c.take_immediate();
    let ids = add(&mut c, 1, false);
    c.actioner(
        1,
        RequestId(5),
        ActionerRequest::Play {
            selector: Selector::Ids(vec![ids[0].to_string()]),
        },
        11,
    );
    c.actioner(
        1,
        RequestId(6),
        ActionerRequest::Unsubscribe {
            subscription: RequestId(4),
        },
        12,
    );
    let sends = c.take_batch().unwrap().sends;
    let kinds: Vec<&str> = sends
        .iter()
        .map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Event { .. }) => "event",
            Out::Actioner(CoordinatorToActioner::Reply {
                body: Reply::Unsubscribed { .. },
                ..
            }) => "unsubscribed",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["event", "other", "unsubscribed"], "{sends:?}");
    c.actioner(
        1,
        RequestId(7),
        ActionerRequest::Kill {
            selector: Selector::All,
        },
        13,
    );
    let sends = c.take_batch().unwrap().sends;
    assert!(
        !sends
            .iter()
            .any(|(_, o)| matches!(o, Out::Actioner(CoordinatorToActioner::Event { .. }))),
        "{sends:?}"
    );
    // Unsubscribing again names a subscription that no longer exists.
    c.actioner(
        1,
        RequestId(8),
        ActionerRequest::Unsubscribe {
            subscription: RequestId(4),
        },
        14,
    );
    assert!(matches!(
        &c.take_immediate()[..],
        [(_, Out::Actioner(CoordinatorToActioner::Reply { body: Reply::Error(e), .. }))] if e.kind == ErrorKind::UnknownId
    ));
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
