//! Following a task's output: who hears what, when the worker is asked to stream, and the end.

use super::*;
use tatzelwurm_protocol::{Bytes, OutputStream};

fn command() -> TaskSpec {
    TaskSpec::new(Payload::Exec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![],
        cwd: None,
    })
}

fn streaming_hello(name: &str) -> WorkerHello {
    WorkerHello {
        streams_output: true,
        ..hello(name, 1)
    }
}

fn output(c: &mut Core, conn: ConnId, attempt: AttemptRef, offset: u64, data: &[u8]) {
    c.worker(
        conn,
        WorkerToCoordinator::Output {
            attempt,
            stream: OutputStream::Stdout,
            offset,
            data: Bytes(data.to_vec()),
        },
        30,
    );
}

/// The pieces of output a connection was sent, as (offset, text).
fn pieces(out: &[(ConnId, Out)], conn: ConnId) -> Vec<(u64, String)> {
    replies(out, conn)
        .into_iter()
        .filter_map(|r| match r {
            Reply::Output { offset, data, .. } => {
                Some((offset, String::from_utf8(data.0).unwrap()))
            }
            _ => None,
        })
        .collect()
}

/// Adds a played command task from actioner connection 1.
fn add_command(c: &mut Core) {
    c.connect_actioner(1);
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add {
            tasks: vec![command()],
            play: true,
        },
        10,
    );
}

/// Adds a played command task and dispatches it to a streaming worker on connection 2.
fn running_command(c: &mut Core) -> AttemptRef {
    add_command(c);
    c.connect_worker(2, streaming_hello("w"), 10);
    c.schedule(10);
    let sent = dispatches(&c.take_batch().unwrap());
    assert_eq!(sent.len(), 1);
    sent[0]
}

#[test]
fn a_follower_gets_the_state_then_the_output_pieces_then_the_end() {
    let mut c = core();
    let attempt = running_command(&mut c);
    c.connect_actioner(3);
    let out = ask(&mut c, 3, 7, ActionerRequest::Follow { id: "1".into() });
    match &replies(&out, 3)[..] {
        [
            Reply::Following {
                number: 1,
                state: TaskState::Assigned,
                attempt: 1,
                worker: Some(w),
                streamed: true,
                ..
            },
        ] => assert_eq!(w, "w"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        to_worker(&out, 2),
        vec![CoordinatorToWorker::Follow { attempt, on: true }],
        "the worker is asked to stream"
    );
    output(&mut c, 2, attempt, 0, b"one\n");
    output(&mut c, 2, attempt, 4, b"two\n");
    let out = c.take_immediate();
    assert_eq!(
        pieces(&out, 3),
        vec![(0, "one\n".to_string()), (4, "two\n".to_string())]
    );
    // The tails sent again (after a reconnect) are trimmed to what is new.
    output(&mut c, 2, attempt, 0, b"one\ntwo\nthree\n");
    assert_eq!(
        pieces(&c.take_immediate(), 3),
        vec![(8, "three\n".to_string())]
    );
    finish(&mut c, 2, attempt, Outcome::Succeeded, 40);
    assert!(
        replies(&c.take_immediate(), 3).is_empty(),
        "the end is told once it is durable"
    );
    let batch = c.take_batch().unwrap();
    assert!(matches!(
        &replies(&batch.sends, 3)[..],
        [Reply::Followed {
            state: TaskState::Completed,
            attempt: 1,
            ..
        }]
    ));
    output(&mut c, 2, attempt, 14, b"late\n");
    assert!(
        pieces(&c.take_immediate(), 3).is_empty(),
        "nobody follows any more"
    );
}

#[test]
fn a_second_follower_sees_the_recent_output_and_the_last_one_to_leave_stops_the_stream() {
    let mut c = core();
    let attempt = running_command(&mut c);
    c.connect_actioner(3);
    c.connect_actioner(4);
    ask(&mut c, 3, 7, ActionerRequest::Follow { id: "1".into() });
    output(&mut c, 2, attempt, 0, b"hello\n");
    c.take_immediate();
    let out = ask(&mut c, 4, 8, ActionerRequest::Follow { id: "1".into() });
    assert_eq!(pieces(&out, 4), vec![(0, "hello\n".to_string())]);
    assert!(to_worker(&out, 2).is_empty(), "the worker streams already");
    c.disconnect(3, 50);
    assert!(
        to_worker(&c.take_immediate(), 2).is_empty(),
        "one still follows"
    );
    c.disconnect(4, 50);
    assert_eq!(
        to_worker(&c.take_immediate(), 2),
        vec![CoordinatorToWorker::Follow { attempt, on: false }]
    );
}

#[test]
fn a_task_that_waits_is_streamed_from_its_first_attempt_and_a_lost_one_from_the_next() {
    let mut c = core();
    add_command(&mut c);
    c.take_batch();
    c.connect_actioner(3);
    let out = ask(&mut c, 3, 7, ActionerRequest::Follow { id: "1".into() });
    assert!(matches!(
        &replies(&out, 3)[..],
        [Reply::Following {
            state: TaskState::Ready,
            attempt: 0,
            streamed: false,
            ..
        }]
    ));
    c.connect_worker(2, streaming_hello("w"), 20);
    c.schedule(20);
    let batch = c.take_batch().unwrap();
    let orders = to_worker(&batch.sends, 2);
    let attempt = dispatches(&batch)[0];
    assert_eq!(
        orders.last(),
        Some(&CoordinatorToWorker::Follow { attempt, on: true }),
        "after the dispatch: {orders:?}"
    );
    assert!(matches!(
        &replies(&batch.sends, 3)[..],
        [Reply::Following {
            state: TaskState::Assigned,
            attempt: 1,
            streamed: true,
            ..
        }]
    ));
    // The worker goes for longer than its lease: the task waits again, then a new worker
    // runs attempt 2, which streams.
    c.disconnect(2, 30);
    c.tick(2000);
    c.take_immediate();
    c.take_batch();
    c.connect_worker(5, streaming_hello("v"), 2100);
    c.schedule(2100);
    let batch = c.take_batch().unwrap();
    let second = dispatches(&batch)[0];
    assert_eq!(second.attempt, 2);
    assert!(
        to_worker(&batch.sends, 5).contains(&CoordinatorToWorker::Follow {
            attempt: second,
            on: true
        })
    );
    output(&mut c, 2, attempt, 0, b"from the lost attempt\n");
    output(&mut c, 5, second, 0, b"from attempt 2\n");
    assert_eq!(
        pieces(&c.take_immediate(), 3),
        vec![(0, "from attempt 2\n".to_string())]
    );
}

#[test]
fn workers_that_do_not_stream_and_tasks_that_are_not_commands_are_never_asked() {
    let mut c = core();
    c.connect_actioner(1);
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::Add {
            tasks: vec![
                command(),
                TaskSpec::new(Payload::Sleep { duration_ms: 1000 }),
            ],
            play: true,
        },
        10,
    );
    c.connect_worker(2, hello("old", 1), 10);
    c.connect_worker(4, streaming_hello("new"), 10);
    c.schedule(10);
    let batch = c.take_batch().unwrap();
    assert_eq!(dispatches(&batch).len(), 2);
    c.connect_actioner(3);
    for (n, id) in ["1", "2"].into_iter().enumerate() {
        let out = ask(
            &mut c,
            3,
            7 + n as u64,
            ActionerRequest::Follow { id: id.into() },
        );
        assert!(
            matches!(
                &replies(&out, 3)[..],
                [Reply::Following {
                    streamed: false,
                    ..
                }]
            ),
            "{:?}",
            replies(&out, 3)
        );
        assert!(to_worker(&out, 2).is_empty() && to_worker(&out, 4).is_empty());
    }
}

#[test]
fn following_a_finished_task_ends_at_once_and_a_removed_one_says_so() {
    let mut c = core();
    let attempt = running_command(&mut c);
    finish(&mut c, 2, attempt, Outcome::Failed, 40);
    c.take_batch();
    c.connect_actioner(3);
    let out = ask(&mut c, 3, 7, ActionerRequest::Follow { id: "1".into() });
    assert!(matches!(
        &replies(&out, 3)[..],
        [
            Reply::Following {
                state: TaskState::Failed,
                ..
            },
            Reply::Followed {
                state: TaskState::Failed,
                attempt: 1,
                ..
            }
        ]
    ));
    let out = ask(&mut c, 3, 8, ActionerRequest::Follow { id: "9".into() });
    assert!(matches!(
        &replies(&out, 3)[..],
        [Reply::Error(e)] if e.kind == ErrorKind::UnknownId
    ));
    // Followed while it waits, then removed.
    c.actioner(
        1,
        RequestId(2),
        ActionerRequest::Add {
            tasks: vec![command()],
            play: false,
        },
        50,
    );
    c.take_batch();
    ask(&mut c, 3, 9, ActionerRequest::Follow { id: "2".into() });
    let out = ask(
        &mut c,
        1,
        3,
        ActionerRequest::Remove {
            selector: Selector::Ids(vec!["2".into()]),
        },
    );
    assert!(matches!(
        &replies(&out, 3)[..],
        [Reply::Error(e)] if e.kind == ErrorKind::UnknownId && e.message.contains("removed")
    ));
}

#[test]
fn a_worker_back_from_a_disconnect_is_asked_to_stream_again_after_its_reattach() {
    let mut c = core();
    let attempt = running_command(&mut c);
    let id = c.workers.keys().next().copied().unwrap();
    c.disconnect(2, 20);
    c.connect_actioner(3);
    let out = ask(&mut c, 3, 7, ActionerRequest::Follow { id: "1".into() });
    assert!(
        matches!(
            &replies(&out, 3)[..],
            [Reply::Following {
                streamed: false,
                ..
            }]
        ),
        "its worker is away"
    );
    let back = WorkerHello {
        previous_id: Some(id),
        ..streaming_hello("w")
    };
    c.connect_worker(6, back, 30);
    c.take_immediate();
    c.worker(
        6,
        WorkerToCoordinator::Reattach {
            running: vec![attempt],
        },
        30,
    );
    let batch = c.take_batch().unwrap();
    let orders = to_worker(&batch.sends, 6);
    assert!(
        matches!(
            &orders[..],
            [
                CoordinatorToWorker::Reattached { .. },
                CoordinatorToWorker::Follow { on: true, .. }
            ]
        ),
        "{orders:?}"
    );
    assert!(matches!(
        &replies(&batch.sends, 3)[..],
        [Reply::Following { streamed: true, .. }]
    ));
    output(&mut c, 6, attempt, 0, b"still here\n");
    assert_eq!(
        pieces(&c.take_immediate(), 3),
        vec![(0, "still here\n".to_string())]
    );
}
