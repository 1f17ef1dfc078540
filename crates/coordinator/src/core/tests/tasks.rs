//! Requests about tasks: add, play, pause, kill, retry, remove, ids, breakdowns, expiry.

use super::*;

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
    assert!(c.tasks.iter().next().is_none());
    assert_eq!(
        add(&mut c, MAX_ADD_TASKS, false).len(),
        MAX_ADD_TASKS,
        "the limit itself is fine"
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
    c.actioner(
        1,
        RequestId(3),
        ActionerRequest::Play {
            selector: sel,
            created: true,
        },
        21,
    );
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

#[test]
fn pages_walk_the_matching_tasks_newest_first_from_a_cursor() {
    let mut c = core();
    c.connect_actioner(1);
    let ids = add(&mut c, 7, false);
    let page = |c: &mut Core, before: Option<TaskId>, states: Vec<TaskState>| -> Vec<TaskId> {
        let out = ask(
            c,
            1,
            9,
            ActionerRequest::ListPage {
                filter: tatzelwurm_protocol::TaskFilter {
                    states,
                    ..Default::default()
                },
                limit: 3,
                before,
            },
        );
        match replies(&out, 1).pop() {
            Some(Reply::Tasks { tasks, .. }) => tasks.iter().map(|t| t.id).collect(),
            other => panic!("{other:?}"),
        }
    };
    let first = page(&mut c, None, vec![]);
    assert_eq!(first, vec![ids[6], ids[5], ids[4]]);
    let second = page(&mut c, Some(ids[4]), vec![]);
    assert_eq!(second, vec![ids[3], ids[2], ids[1]]);
    assert_eq!(page(&mut c, Some(ids[1]), vec![]), vec![ids[0]]);
    assert!(page(&mut c, None, vec![TaskState::Ready]).is_empty());
    // A page of nothing is refused, not answered with everything.
    let out = ask(
        &mut c,
        1,
        10,
        ActionerRequest::ListPage {
            filter: Default::default(),
            limit: 0,
            before: None,
        },
    );
    assert!(
        matches!(&replies(&out, 1)[..], [Reply::Error(e)] if e.kind == ErrorKind::InvalidRequest)
    );
}
