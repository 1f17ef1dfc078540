//! Unit tests of the broker (message tasks, RPC, broadcasts), without sockets.

use super::*;
use tatzelwurm_protocol::{BroadcastMessage, Data, MessageOutcome, Outcome};

fn client(c: &mut Core, conn: ConnId, namespace: &str) -> WorkerId {
    c.connect_client(
        conn,
        ClientHello {
            name: format!("client-{conn}"),
            host: "h".into(),
            namespace: namespace.into(),
            previous_id: None,
        },
        10,
    )
}

fn body(text: &str) -> Data {
    Data::encode(text).unwrap()
}

fn deliveries(out: &[(ConnId, Out)], conn: ConnId) -> Vec<AttemptRef> {
    out.iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, o)| match o {
            Out::Worker(CoordinatorToWorker::Dispatch(d)) => Some(d.attempt),
            _ => None,
        })
        .collect()
}

fn send(c: &mut Core, conn: ConnId, request: u64, queue: &str, no_reply: bool) -> TaskId {
    let out = ask(
        c,
        conn,
        request,
        ActionerRequest::Send {
            queue: queue.into(),
            body: body("task"),
            no_reply,
        },
    );
    match replies(&out, conn).first() {
        Some(Reply::Sent { id }) => *id,
        other => panic!("{other:?}"),
    }
}

fn serve(c: &mut Core, conn: ConnId, queue: &str, limit: u32) -> Vec<(ConnId, Out)> {
    let out = ask(
        c,
        conn,
        900,
        ActionerRequest::Serve {
            queue: queue.into(),
            limit,
        },
    );
    assert!(replies(&out, conn).contains(&Reply::Done), "{out:?}");
    out
}

fn answer(c: &mut Core, conn: ConnId, a: AttemptRef, value: &str) -> Vec<(ConnId, Out)> {
    let report = AttemptReport {
        outcome: Some(Outcome::Succeeded),
        output: body(value),
        ended_ms: 30,
        ..Default::default()
    };
    c.worker(
        conn,
        WorkerToCoordinator::Finished { attempt: a, report },
        30,
    );
    let mut out = c.take_immediate();
    if let Some(b) = c.take_batch() {
        out.extend(b.sends);
    }
    out
}

#[test]
fn a_sent_task_reaches_a_subscriber_and_its_value_returns_to_the_sender() {
    let mut c = core();
    client(&mut c, 1, "p");
    client(&mut c, 2, "p");
    let id = send(&mut c, 1, 5, "tasks", false);
    assert_eq!(c.task(id).unwrap().state, TaskState::Ready);
    let out = serve(&mut c, 2, "tasks", 10);
    let got = deliveries(&out, 2);
    assert_eq!(got.len(), 1);
    // "Accepted, result later": the sender sees pending, then the value.
    c.worker(
        2,
        WorkerToCoordinator::Started {
            attempt: got[0],
            at_ms: 21,
        },
        21,
    );
    let pending = replies(&c.take_immediate(), 1);
    assert_eq!(
        pending,
        [Reply::TaskOutcome {
            id,
            outcome: MessageOutcome::Pending
        }]
    );
    let out = answer(&mut c, 2, got[0], "done");
    assert_eq!(
        replies(&out, 1),
        [Reply::TaskOutcome {
            id,
            outcome: MessageOutcome::Value(body("done"))
        }]
    );
    // The outcome is stored with the task; the sender removes it once it has it.
    assert_eq!(c.task(id).unwrap().state, TaskState::Completed);
    let out = ask(
        &mut c,
        1,
        6,
        ActionerRequest::Remove {
            selector: Selector::Ids(vec![id.to_string()]),
        },
    );
    assert!(matches!(&replies(&out, 1)[..], [Reply::Changed { .. }]));
    assert!(c.task(id).is_none());
}

#[test]
fn a_no_reply_task_delivers_nothing_and_leaves_when_done() {
    let mut c = core();
    client(&mut c, 1, "p");
    client(&mut c, 2, "p");
    let id = send(&mut c, 1, 5, "tasks", true);
    let got = deliveries(&serve(&mut c, 2, "tasks", 1), 2);
    let out = answer(&mut c, 2, got[0], "ignored");
    assert!(replies(&out, 1).is_empty(), "{out:?}");
    assert!(c.task(id).is_none(), "removed once ended");
}

#[test]
fn limits_hold_and_the_least_loaded_subscriber_gets_the_next_task() {
    let mut c = core();
    client(&mut c, 1, "p");
    let w2 = client(&mut c, 2, "p");
    let w3 = client(&mut c, 3, "p");
    serve(&mut c, 2, "q", 2);
    serve(&mut c, 3, "q", 1);
    let ids: Vec<TaskId> = (0..5)
        .map(|i| send(&mut c, 1, 10 + i, "q", false))
        .collect();
    let held = |c: &Core, w| c.workers[&w].held.len();
    assert_eq!((held(&c, w2), held(&c, w3)), (2, 1), "limits 2 and 1");
    // The least loaded went first: the third task went to the subscriber of limit 1.
    assert!(
        c.workers[&w3].held.contains(&ids[1]),
        "{:?}",
        c.workers[&w3].held
    );
    let waiting = ask(&mut c, 1, 30, ActionerRequest::Queues);
    match &replies(&waiting, 1)[..] {
        [Reply::Queues { queues }] => {
            assert_eq!(queues.len(), 1);
            let q = &queues[0];
            assert_eq!((q.depth, q.held, q.subscribers, q.capacity), (2, 3, 2, 3));
        }
        other => panic!("{other:?}"),
    }
    // An answer frees a slot: the next task goes out at once.
    let a = c.tasks.get(&ids[1]).unwrap().current_attempt().unwrap();
    answer(&mut c, 3, a, "x");
    c.schedule(50);
    let out = c.take_batch().map(|b| b.sends).unwrap_or_default();
    assert_eq!(
        deliveries(&out, 3),
        [AttemptRef {
            task: ids[3],
            attempt: 1
        }]
    );
}

#[test]
fn a_rejected_task_goes_to_another_subscriber_first_and_counts_no_attempt() {
    let mut c = core();
    client(&mut c, 1, "p");
    client(&mut c, 2, "p");
    client(&mut c, 3, "p");
    serve(&mut c, 2, "q", 5);
    let id = send(&mut c, 1, 5, "q", false);
    c.schedule(20);
    c.take_batch();
    let first = c.task(id).unwrap().attempts[0].worker;
    assert_eq!(c.task(id).unwrap().worker, Some(first));
    serve(&mut c, 3, "q", 5);
    c.worker(
        2,
        WorkerToCoordinator::Reject {
            attempt: AttemptRef {
                task: id,
                attempt: 1,
            },
        },
        25,
    );
    c.schedule(25);
    let out = c.take_batch().unwrap().sends;
    let again = deliveries(&out, 3);
    assert_eq!(again.len(), 1, "the other subscriber gets it: {out:?}");
    let t = c.task(id).unwrap();
    assert_eq!(t.attempts[0].outcome, Some(Outcome::HandedBack));
    assert_eq!(
        c.tasks.get(&id).unwrap().counted_attempts(),
        1,
        "the rejection did not count"
    );
}

#[test]
fn rpc_identifiers_are_unique_per_namespace_and_unknown_ones_are_unroutable() {
    let mut c = core();
    client(&mut c, 1, "a");
    client(&mut c, 2, "a");
    client(&mut c, 3, "b");
    let reg = |id: &str| ActionerRequest::Register {
        identifier: id.into(),
    };
    assert_eq!(replies(&ask(&mut c, 1, 1, reg("42")), 1), [Reply::Done]);
    assert_eq!(
        replies(&ask(&mut c, 1, 2, reg("42")), 1),
        [Reply::Done],
        "again by its holder: a no-op"
    );
    match &replies(&ask(&mut c, 2, 1, reg("42")), 2)[..] {
        [Reply::Error(e)] => assert_eq!(e.kind, ErrorKind::DuplicateIdentifier),
        other => panic!("{other:?}"),
    }
    // Another namespace has identifiers of its own.
    assert_eq!(replies(&ask(&mut c, 3, 1, reg("42")), 3), [Reply::Done]);
    // A call goes to the holder; its answers go back to the caller.
    let call = ActionerRequest::Call {
        identifier: "42".into(),
        body: body("status"),
    };
    let out = ask(&mut c, 2, 7, call.clone());
    let n = match &out[..] {
        [
            (
                1,
                Out::Actioner(CoordinatorToActioner::Call {
                    call, identifier, ..
                }),
            ),
            (
                2,
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Done, ..
                }),
            ),
        ] if identifier == "42" => *call,
        other => panic!("{other:?}"),
    };
    for outcome in [MessageOutcome::Pending, MessageOutcome::Value(body("ok"))] {
        let out = ask(
            &mut c,
            1,
            8,
            ActionerRequest::Respond {
                call: n,
                outcome: outcome.clone(),
            },
        );
        assert_eq!(replies(&out, 2), [Reply::CallOutcome { outcome }]);
        assert!(replies(&out, 1).is_empty(), "a respond has no reply");
    }
    // Finished: a late answer is refused.
    let out = ask(
        &mut c,
        1,
        9,
        ActionerRequest::Respond {
            call: n,
            outcome: MessageOutcome::Value(body("late")),
        },
    );
    assert!(matches!(&replies(&out, 1)[..], [Reply::Error(e)] if e.kind == ErrorKind::UnknownId));
    let nobody = ActionerRequest::Call {
        identifier: "7".into(),
        body: body("x"),
    };
    match &replies(&ask(&mut c, 2, 10, nobody), 2)[..] {
        [Reply::Error(e)] => assert_eq!(e.kind, ErrorKind::Unroutable),
        other => panic!("{other:?}"),
    }
    // The holder goes away mid-call: the caller hears it.
    assert_eq!(replies(&ask(&mut c, 2, 11, call), 2), [Reply::Done]);
    c.disconnect(1, 30);
    match &replies(&c.take_immediate(), 2)[..] {
        [Reply::Error(e)] => assert_eq!(e.kind, ErrorKind::DeliveryFailed),
        other => panic!("{other:?}"),
    }
    // Its identifier is free again.
    assert_eq!(replies(&ask(&mut c, 2, 12, reg("42")), 2), [Reply::Done]);
}

#[test]
fn broadcasts_reach_every_listener_of_the_namespace_once_filtered_as_asked() {
    let mut c = core();
    client(&mut c, 1, "a");
    client(&mut c, 2, "a");
    client(&mut c, 3, "b");
    let listen = |subjects: Vec<&str>| ActionerRequest::Listen {
        subjects: subjects.into_iter().map(String::from).collect(),
        senders: vec![],
    };
    ask(&mut c, 1, 1, listen(vec![]));
    ask(&mut c, 2, 1, listen(vec!["state_changed.*"]));
    ask(&mut c, 3, 1, listen(vec![]));
    let message = |subject: Option<&str>| BroadcastMessage {
        body: body("b"),
        sender: Some("9".into()),
        subject: subject.map(String::from),
        correlation_id: None,
    };
    let heard = |out: &[(ConnId, Out)]| -> Vec<ConnId> {
        out.iter()
            .filter(|(_, o)| matches!(o, Out::Actioner(CoordinatorToActioner::Broadcast { .. })))
            .map(|(c, _)| *c)
            .collect()
    };
    let out = ask(
        &mut c,
        1,
        2,
        ActionerRequest::Broadcast {
            message: message(Some("state_changed.running.waiting")),
        },
    );
    assert_eq!(heard(&out), [1, 2], "the sender too, never namespace b");
    assert!(replies(&out, 1).contains(&Reply::Broadcasted { listeners: 2 }));
    let out = ask(
        &mut c,
        1,
        3,
        ActionerRequest::Broadcast {
            message: message(Some("other")),
        },
    );
    assert_eq!(heard(&out), [1]);
    // A broadcast without a subject passes a subject filter (kiwipy's rule).
    let out = ask(
        &mut c,
        1,
        4,
        ActionerRequest::Broadcast {
            message: message(None),
        },
    );
    assert_eq!(heard(&out), [1, 2]);
    let out = ask(
        &mut c,
        2,
        5,
        ActionerRequest::Unlisten {
            listener: RequestId(1),
        },
    );
    assert_eq!(replies(&out, 2), [Reply::Done]);
    let out = ask(
        &mut c,
        3,
        6,
        ActionerRequest::Broadcast {
            message: message(None),
        },
    );
    assert_eq!(
        heard(&out),
        [3],
        "nobody else in b; sending to nobody is fine"
    );
}

#[test]
fn a_restarted_coordinator_serves_the_stored_outcome_to_a_returning_sender() {
    let mut c = core();
    client(&mut c, 1, "p");
    client(&mut c, 2, "p");
    let id = send(&mut c, 1, 5, "q", false);
    let got = deliveries(&serve(&mut c, 2, "q", 1), 2);
    let batch_out = answer(&mut c, 2, got[0], "forty-two");
    assert!(!replies(&batch_out, 1).is_empty());
    // The tables as stored, loaded by a new coordinator; the sender comes back and watches.
    let tasks: Vec<TaskInfo> = all_tasks(&c);
    let workers: Vec<WorkerInfo> = c.workers.values().map(Worker::info).collect();
    let mut d = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        workers,
        vec![],
        Default::default(),
        100,
    );
    client(&mut d, 7, "p");
    d.actioner(
        7,
        RequestId(1),
        ActionerRequest::Watch {
            ids: vec![id.to_string()],
        },
        101,
    );
    let r = replies(&d.take_immediate(), 7);
    assert_eq!(
        r,
        [
            Reply::Watching { ids: vec![id] },
            Reply::TaskOutcome {
                id,
                outcome: MessageOutcome::Value(body("forty-two"))
            }
        ]
    );
}

#[test]
fn waiting_tasks_can_be_listed_and_removed_and_their_sender_hears_so() {
    let mut c = core();
    client(&mut c, 1, "p");
    let a = send(&mut c, 1, 5, "q", false);
    let b = send(&mut c, 1, 6, "q", false);
    let out = ask(
        &mut c,
        1,
        7,
        ActionerRequest::QueueTasks {
            queue: "q".into(),
            limit: None,
        },
    );
    match &replies(&out, 1)[..] {
        [Reply::QueueTasks { tasks }] => {
            assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [a, b]);
            assert_eq!(tasks[0].body, body("task"));
        }
        other => panic!("{other:?}"),
    }
    let out = ask(
        &mut c,
        1,
        8,
        ActionerRequest::Remove {
            selector: Selector::Ids(vec![a.to_string()]),
        },
    );
    let r = replies(&out, 1);
    assert!(r.contains(&Reply::TaskOutcome {
        id: a,
        outcome: MessageOutcome::Cancelled("the task was removed".into())
    }));
    assert!(
        r.iter()
            .any(|x| matches!(x, Reply::Changed { ids, .. } if ids == &vec![a]))
    );
    // `remove --all` never takes a waiting task.
    ask(
        &mut c,
        1,
        9,
        ActionerRequest::Remove {
            selector: Selector::All,
        },
    );
    assert_eq!(c.task(b).unwrap().state, TaskState::Ready);
    match &replies(&ask(&mut c, 1, 10, ActionerRequest::Queues), 1)[..] {
        [Reply::Queues { queues }] => assert_eq!(queues[0].depth, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_subscriber_that_dies_loses_its_tasks_to_the_queue_after_the_lease_only() {
    let mut c = core();
    client(&mut c, 1, "p");
    let w = client(&mut c, 2, "p");
    let id = send(&mut c, 1, 5, "q", false);
    let got = deliveries(&serve(&mut c, 2, "q", 1), 2);
    c.disconnect(2, 100);
    assert_eq!(c.workers[&w].info.state, WorkerState::Lost);
    c.tick(600);
    assert_eq!(
        c.task(id).unwrap().state,
        TaskState::Assigned,
        "within the lease"
    );
    // It comes back under its id (and its name), reattaches, and answers.
    c.connect_client(
        3,
        ClientHello {
            name: "client-2".into(),
            host: "h".into(),
            namespace: "p".into(),
            previous_id: Some(w),
        },
        700,
    );
    c.worker(
        3,
        WorkerToCoordinator::Reattach {
            running: got.clone(),
        },
        701,
    );
    let out = answer(&mut c, 3, got[0], "v");
    assert_eq!(
        replies(&out, 1),
        [Reply::TaskOutcome {
            id,
            outcome: MessageOutcome::Value(body("v"))
        }]
    );
    // Another one that never comes back: its task is requeued at the lease.
    let id2 = send(&mut c, 1, 6, "q", false);
    serve(&mut c, 3, "q", 1);
    c.disconnect(3, 800);
    c.tick(1900);
    assert_eq!(c.task(id2).unwrap().state, TaskState::Ready);
    assert_eq!(
        c.task(id2).unwrap().attempts[0].outcome,
        Some(Outcome::Lost)
    );
}

#[test]
fn plain_actioners_cannot_serve_and_message_tasks_cannot_be_added() {
    let mut c = core();
    c.connect_actioner(1);
    let out = ask(
        &mut c,
        1,
        1,
        ActionerRequest::Serve {
            queue: "q".into(),
            limit: 1,
        },
    );
    assert!(
        matches!(&replies(&out, 1)[..], [Reply::Error(e)] if e.kind == ErrorKind::InvalidRequest)
    );
    let spec = TaskSpec::new(tatzelwurm_protocol::Payload::Message {
        namespace: "other".into(),
        queue: "q".into(),
        body: Data::empty(),
        no_reply: true,
    });
    let out = ask(
        &mut c,
        1,
        2,
        ActionerRequest::Add {
            tasks: vec![spec],
            play: true,
        },
    );
    assert!(
        matches!(&replies(&out, 1)[..], [Reply::Error(e)] if e.kind == ErrorKind::InvalidRequest)
    );
}
