//! What waits for a commit, what does not, and what a failed commit does to the replies.

use super::*;

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
                queue: None,
                batch: None,
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
    let mut written: Vec<TaskId> = batch.tasks.iter().map(|(id, _)| *id).collect();
    written.sort();
    let mut both = ids.clone();
    both.sort();
    assert_eq!(written, both);
    let running = batch
        .tasks
        .iter()
        .map(|(_, record)| crate::store::decode_task_record(record))
        .find(|t| t.id == sent[0].task)
        .unwrap();
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
            created: true,
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
    assert_eq!(
        split_reply(
            Reply::Added {
                ids: ids.clone(),
                numbers: vec![],
                batch: 1
            },
            2
        )
        .len(),
        1
    );
}

#[test]
fn a_dispatch_of_a_stored_task_is_written_as_its_assignment_and_any_other_whole() {
    let mut c = core();
    c.connect_actioner(1);
    // Added in a batch of their own: their records are stored.
    let stored = add(&mut c, 3, true);
    let w = c.connect_worker(2, hello("w", 4), 10);
    assert_eq!(c.schedule(11), 3);
    let batch = c.take_batch().unwrap();
    let mut assigned: Vec<_> = batch.assignments.iter().map(|a| a.task).collect();
    assigned.sort();
    assert_eq!(assigned, stored, "written as assignments");
    assert!(batch.tasks.is_empty(), "not whole: {:?}", batch.tasks);
    let a = &batch.assignments[0];
    assert_eq!((a.worker, a.number, a.at_ms), (w, 1, 11));
    assert_eq!(dispatches(&batch).len(), 3, "sent once it is durable");
    let sent = dispatches(&batch);

    // Added and dispatched before a batch was taken: its first record is whole.
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Add {
            tasks: vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })],
            play: true,
        },
        12,
    );
    assert_eq!(c.schedule(12), 1);
    let batch = c.take_batch().unwrap();
    assert!(batch.assignments.is_empty(), "{:?}", batch.assignments);
    let fresh = batch.tasks[0].0;
    assert_eq!(c.task(fresh).unwrap().state, TaskState::Assigned);
    assert_eq!(batch.tasks.len(), 1);

    // A stored task dispatched, then changed again before the batch: whole, with both changes.
    finish(&mut c, 2, sent[0], Outcome::Succeeded, 13);
    c.take_batch();
    add(&mut c, 1, true);
    assert_eq!(c.schedule(14), 1);
    let again = dispatches(&c.take_batch().unwrap())[0];
    finish(&mut c, 2, again, Outcome::Succeeded, 15);
    let extra = add(&mut c, 1, true)[0];
    assert_eq!(c.schedule(16), 1);
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: AttemptRef {
                task: extra,
                attempt: 1,
            },
            at_ms: 17,
        },
        17,
    );
    let batch = c.take_batch().unwrap();
    assert!(batch.assignments.is_empty(), "{:?}", batch.assignments);
    assert!(batch.tasks.iter().any(|(id, _)| *id == extra));
}

#[test]
fn the_assignments_of_a_failed_commit_are_written_whole_with_the_next() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, true);
    c.connect_worker(2, hello("w", 2), 10);
    c.schedule(11);
    let failed = c.take_batch().unwrap();
    assert_eq!(failed.assignments.len(), 2);
    c.requeue(failed);
    let batch = c.take_batch().unwrap();
    assert!(batch.assignments.is_empty(), "{:?}", batch.assignments);
    let mut whole: Vec<_> = batch.tasks.iter().map(|(id, _)| *id).collect();
    whole.sort();
    assert_eq!(
        whole, ids,
        "what part of the failed write landed is unknown"
    );
    for (id, record) in &batch.tasks {
        let t = crate::store::decode_record(record).unwrap();
        assert_eq!(
            (t.id, t.state),
            (*id, TaskState::Assigned),
            "the assignment is in it"
        );
    }
}
