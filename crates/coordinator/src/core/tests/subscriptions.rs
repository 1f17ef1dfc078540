//! Subscriptions: snapshots, events, unsubscribing.

use super::*;

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
        queue: None,
        batch: None,
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
                queue: None,
                batch: None,
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
            created: true,
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
fn an_unsubscribed_connection_gets_no_more_events() {
    let mut c = core();
    c.connect_actioner(1);
    let sub = ActionerRequest::Subscribe {
        filter: EventFilter {
            ids: vec![],
            tags: vec![],
            all: true,
            queue: None,
            batch: None,
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
            created: true,
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
