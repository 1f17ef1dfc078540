//! The compact form of tasks: which tasks are packed, that a packed task shares its record with
//! the batch that wrote it, and that packing changes nothing anybody sees.

use super::*;

/// The record the table keeps for a packed task, or `None` when the task is open.
fn packed_record(c: &Core, id: TaskId) -> Option<Record> {
    c.tasks.packed_record(&id)
}

#[test]
fn queued_tasks_are_packed_with_the_very_record_their_batch_wrote() {
    let mut c = core();
    c.connect_actioner(1);
    let tasks = (0..3)
        .map(|_| TaskSpec::new(Payload::Sleep { duration_ms: 1 }))
        .collect();
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add { tasks, play: true },
        10,
    );
    let batch = c.take_batch().unwrap();
    assert_eq!(batch.tasks.len(), 3);
    assert_eq!(c.packed_tasks(), 3, "every queued task is packed");
    for (id, record) in &batch.tasks {
        let kept = packed_record(&c, *id).expect("packed");
        assert!(
            Record::ptr_eq(&kept, record),
            "the table keeps the batch's allocation, not a copy"
        );
        assert_eq!(
            crate::store::decode_record(&kept).unwrap(),
            c.task(*id).unwrap(),
            "and it reads back as the task"
        );
    }
}

#[test]
fn a_task_is_open_while_a_worker_holds_it_and_packed_again_when_it_ends() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 2, true);
    c.connect_worker(2, hello("w", 1), 11);
    c.schedule(11);
    let batch = c.take_batch().unwrap();
    let attempt = dispatches(&batch)[0];
    assert_eq!(c.packed_tasks(), 1, "the dispatched task is open");
    assert!(packed_record(&c, attempt.task).is_none());
    let waiting = *ids.iter().find(|id| **id != attempt.task).unwrap();
    assert!(
        packed_record(&c, waiting).is_some(),
        "the other still waits packed"
    );

    finish(&mut c, 2, attempt, Outcome::Succeeded, 12);
    let batch = c.take_batch().unwrap();
    let (_, written) = batch
        .tasks
        .iter()
        .find(|(id, _)| *id == attempt.task)
        .expect("the finished task is written");
    let kept = packed_record(&c, attempt.task).expect("packed once finished");
    assert!(Record::ptr_eq(&kept, written));
    let done = c.task(attempt.task).unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.attempts.len(), 1, "its history is in the record");
}

#[test]
fn a_task_opened_and_left_unchanged_gets_its_old_record_back() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 1, true);
    let before = packed_record(&c, ids[0]).unwrap();
    // A move to the queue it is already in opens the task and changes nothing.
    let out = ask(
        &mut c,
        1,
        2,
        ActionerRequest::Move {
            selector: Selector::Ids(vec![ids[0].to_string()]),
            queue: "default".into(),
        },
    );
    assert_eq!(changed_reply(&out), Ok(vec![]));
    let after = packed_record(&c, ids[0]).expect("packed again");
    assert!(
        Record::ptr_eq(&before, &after),
        "the same allocation the image holds, not a new encoding"
    );
}

#[test]
fn a_ready_task_that_prefers_tags_stays_open_and_is_dispatched_by_its_preference() {
    let mut c = core();
    c.connect_actioner(1);
    let mut spec = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
    spec.prefer = vec![Tag {
        key: "gpu".into(),
        value: "a100".into(),
    }];
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add {
            tasks: vec![spec],
            play: true,
        },
        10,
    );
    let id = c.take_batch().unwrap().tasks[0].0;
    assert!(
        packed_record(&c, id).is_none(),
        "open: its preference is read in place"
    );
    let mut plain = hello("plain", 1);
    plain.tags = vec![];
    c.connect_worker(2, plain, 11);
    let mut gpu = hello("gpu", 1);
    gpu.tags = vec![Tag {
        key: "gpu".into(),
        value: "a100".into(),
    }];
    c.connect_worker(3, gpu, 11);
    c.schedule(11);
    let batch = c.take_batch().unwrap();
    assert_eq!(
        to_worker(&batch.sends, 3).len(),
        1,
        "the preferred worker got it"
    );
    assert!(to_worker(&batch.sends, 2).is_empty());
}

#[test]
fn a_restart_packs_what_waits_or_ended_and_keeps_held_tasks_open() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 3, true);
    c.connect_worker(2, hello("w", 1), 11);
    c.schedule(11);
    let held = dispatches(&c.take_batch().unwrap())[0].task;
    let tasks = all_tasks(&c);
    let workers: Vec<WorkerInfo> = c.workers.values().map(Worker::info).collect();
    let mut r = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        workers,
        vec![],
        Default::default(),
        20,
    );
    assert_eq!(r.packed_tasks(), 2);
    assert!(packed_record(&r, held).is_none());
    // The packed ready tasks are in line under their tickets: a new worker gets both.
    r.connect_worker(5, hello("v", 5), 21);
    r.schedule(21);
    let got: HashSet<TaskId> = dispatches(&r.take_batch().unwrap())
        .iter()
        .map(|a| a.task)
        .collect();
    let waiting: HashSet<TaskId> = ids.iter().copied().filter(|id| *id != held).collect();
    assert_eq!(got, waiting);
}

#[test]
fn listings_and_bulk_requests_read_packed_tasks_as_they_are() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 4, false);
    assert_eq!(c.packed_tasks(), 4);
    // Play two of them by a filter on the batch (which reads the whole task), kill all.
    let out = ask(
        &mut c,
        1,
        2,
        ActionerRequest::Play {
            selector: Selector::Ids(vec![ids[0].to_string(), ids[1].to_string()]),
            created: true,
        },
    );
    assert_eq!(changed_reply(&out).unwrap().len(), 2);
    let out = ask(
        &mut c,
        1,
        3,
        ActionerRequest::List {
            states: vec![TaskState::Ready],
            tags: vec![],
            limit: None,
            queue: None,
        },
    );
    let listed: Vec<TaskId> = match &replies(&out, 1)[..] {
        [Reply::Tasks { tasks, .. }] => tasks.iter().map(|t| t.id).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, vec![ids[1], ids[0]], "newest first, packed or not");
    let out = ask(
        &mut c,
        1,
        4,
        ActionerRequest::Kill {
            selector: Selector::All,
        },
    );
    assert_eq!(changed_reply(&out).unwrap().len(), 4);
    assert_eq!(c.packed_tasks(), 4, "killed tasks are packed again");
    for id in &ids {
        assert_eq!(c.task(*id).unwrap().state, TaskState::Killed);
    }
}
