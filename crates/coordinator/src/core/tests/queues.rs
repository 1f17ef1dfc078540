//! Named queues in the core: settings that are stored and steer dispatch, counts kept per queue,
//! defaults, moves, the reasons a task waits, and the broker's queues under the same settings.

use super::*;
use tatzelwurm_protocol::{Data, QueueChange, QueueInfo, QueueSettings};

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

/// The replies to one request on `conn`, immediate and durable; nothing is scheduled, so
/// that [`dispatched`] sees every dispatch.
fn req(c: &mut Core, conn: ConnId, body: ActionerRequest) -> Vec<Reply> {
    c.actioner(conn, RequestId(1), body, 20);
    let mut out = c.take_immediate();
    if let Some(b) = c.take_batch() {
        out.extend(b.sends);
    }
    replies(&out, conn)
}

/// Adds `n` sleep tasks to `queue` made by `f`, played; returns their ids.
fn add_to(c: &mut Core, queue: &str, n: usize, f: impl Fn(&mut TaskSpec)) -> Vec<TaskId> {
    let tasks = (0..n)
        .map(|_| {
            let mut s = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
            s.queue = Some(queue.into());
            f(&mut s);
            s
        })
        .collect();
    match &req(c, 1, ActionerRequest::Add { tasks, play: true })[..] {
        [Reply::Added { ids, .. }] => ids.clone(),
        other => panic!("{other:?}"),
    }
}

/// The reply to a queue request: the queue, or the error.
fn queue_req(c: &mut Core, body: ActionerRequest) -> Result<QueueInfo, ErrorReply> {
    match &req(c, 1, body)[..] {
        [Reply::Queue { queue }] => Ok(*queue.clone()),
        [Reply::Error(e)] => Err(e.clone()),
        other => panic!("{other:?}"),
    }
}

fn set(c: &mut Core, queue: &str, change: QueueChange) -> QueueInfo {
    queue_req(
        c,
        ActionerRequest::QueueSet {
            queue: queue.into(),
            change,
        },
    )
    .unwrap()
}

fn show(c: &mut Core, queue: &str) -> QueueInfo {
    queue_req(
        c,
        ActionerRequest::QueueShow {
            queue: queue.into(),
        },
    )
    .unwrap()
}

fn count(q: &QueueInfo, state: TaskState) -> u64 {
    q.counts.iter().find(|c| c.state == state).unwrap().count
}

fn limit(n: u32) -> QueueChange {
    QueueChange {
        limit: Some(n),
        ..Default::default()
    }
}

/// The tasks dispatched since the last look, by id.
fn dispatched(c: &mut Core) -> Vec<TaskId> {
    c.schedule(30);
    let mut out = c.take_immediate();
    if let Some(b) = c.take_batch() {
        out.extend(b.sends);
    }
    out.iter()
        .filter_map(|(_, o)| match o {
            Out::Worker(CoordinatorToWorker::Dispatch(d)) => Some(d.attempt.task),
            _ => None,
        })
        .collect()
}

/// Why a task waits, as `task show` says.
fn waiting(c: &mut Core, id: TaskId) -> Option<String> {
    match &req(c, 1, ActionerRequest::Show { id: id.to_string() })[..] {
        [Reply::Task { waiting, .. }] => waiting.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_limit_is_stored_and_caps_what_runs_of_its_queue() {
    let mut c = core();
    c.connect_actioner(1);
    c.actioner(
        1,
        RequestId(1),
        ActionerRequest::QueueSet {
            queue: "q".into(),
            change: limit(1),
        },
        10,
    );
    let batch = c.take_batch().unwrap();
    let mut want = QueueSettings::new("default", "q");
    want.limit = Some(1);
    assert_eq!(batch.queues, vec![want], "the settings are written");
    assert!(
        matches!(
            &batch.sends[..],
            [(
                1,
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Queue { .. },
                    ..
                })
            )]
        ),
        "and acknowledged once durable: {:?}",
        batch.sends
    );
    let ids = add_to(&mut c, "q", 3, |_| {});
    let other = add_to(&mut c, "other", 2, |_| {});
    c.connect_worker(2, hello("w", 10), 20);
    let got = dispatched(&mut c);
    assert_eq!(got.len(), 3, "one of q, both of the other queue: {got:?}");
    assert_eq!(got.iter().filter(|t| ids.contains(t)).count(), 1);
    assert!(other.iter().all(|t| got.contains(t)));
    let q = show(&mut c, "q");
    assert_eq!((q.held, q.depth), (1, 2));
    assert_eq!(count(&q, TaskState::Ready), 2);
    assert_eq!(count(&q, TaskState::Assigned), 1);
    let waits = ids.iter().find(|t| !got.contains(t)).unwrap();
    let why = waiting(&mut c, *waits).unwrap();
    assert!(why.contains("its limit"), "{why}");
    // Raised, the queue runs more at once.
    set(&mut c, "q", limit(3));
    assert_eq!(dispatched(&mut c).len(), 2);
}

#[test]
fn a_restart_keeps_settings_and_counts_and_still_honours_the_limit() {
    let mut c = core();
    c.connect_actioner(1);
    set(&mut c, "q", limit(2));
    add_to(&mut c, "q", 5, |_| {});
    c.connect_worker(2, hello("w", 10), 20);
    assert_eq!(dispatched(&mut c).len(), 2);
    let before = show(&mut c, "q");
    let tasks: Vec<TaskInfo> = all_tasks(&c);
    let workers: Vec<WorkerInfo> = c.workers.values().map(Worker::info).collect();
    let queues = vec![before.settings.clone()];
    let mut r = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        workers,
        queues,
        Default::default(),
        100,
    );
    r.connect_actioner(1);
    let after = show(&mut r, "q");
    assert_eq!(after.settings, before.settings);
    assert_eq!(after.counts, before.counts);
    assert_eq!(after.held, 2, "the tasks its lost worker holds count");
    // A new worker with room gets nothing of q: the two held ones fill the limit.
    r.connect_worker(5, hello("new", 10), 100);
    assert!(dispatched(&mut r).is_empty());
}

#[test]
fn a_queue_fills_in_attempts_and_timeout_a_task_leaves_out() {
    let mut c = core();
    c.connect_actioner(1);
    set(
        &mut c,
        "slow",
        QueueChange {
            max_attempts: Some(3),
            timeout_ms: Some(5000),
            ..Default::default()
        },
    );
    let plain = add_to(&mut c, "slow", 1, |s| s.max_attempts = 0)[0];
    let own = add_to(&mut c, "slow", 1, |s| {
        s.max_attempts = 2;
        s.timeout_ms = Some(10);
    })[0];
    let elsewhere = add_to(&mut c, "default", 1, |s| s.max_attempts = 0)[0];
    let spec = |c: &Core, id| c.task(id).unwrap().spec.clone();
    assert_eq!(
        (spec(&c, plain).max_attempts, spec(&c, plain).timeout_ms),
        (3, Some(5000))
    );
    assert_eq!(
        (spec(&c, own).max_attempts, spec(&c, own).timeout_ms),
        (2, Some(10))
    );
    assert_eq!(
        (
            spec(&c, elsewhere).max_attempts,
            spec(&c, elsewhere).timeout_ms
        ),
        (1, None)
    );
}

#[test]
fn a_paused_queue_dispatches_nothing_new_and_play_releases_it() {
    let mut c = core();
    c.connect_actioner(1);
    c.connect_worker(2, hello("w", 10), 20);
    let running = add_to(&mut c, "q", 1, |_| {});
    assert_eq!(dispatched(&mut c), running);
    let paused = set(
        &mut c,
        "q",
        QueueChange {
            paused: Some(true),
            ..Default::default()
        },
    );
    assert!(paused.settings.paused);
    let waits = add_to(&mut c, "q", 2, |_| {});
    assert!(dispatched(&mut c).is_empty());
    assert!(waiting(&mut c, waits[0]).unwrap().contains("paused"));
    assert_eq!(
        c.task(running[0]).unwrap().state,
        TaskState::Assigned,
        "what runs goes on"
    );
    set(
        &mut c,
        "q",
        QueueChange {
            paused: Some(false),
            ..Default::default()
        },
    );
    assert_eq!(dispatched(&mut c).len(), 2);
}

#[test]
fn tasks_move_between_queues_with_their_counts() {
    let mut c = core();
    c.connect_actioner(1);
    set(
        &mut c,
        "b",
        QueueChange {
            paused: Some(true),
            ..Default::default()
        },
    );
    let ids = add_to(&mut c, "a", 3, |_| {});
    let out = req(
        &mut c,
        1,
        ActionerRequest::Move {
            selector: Selector::Ids(vec![ids[0].to_string(), ids[1].to_string()]),
            queue: "b".into(),
        },
    );
    assert_eq!(
        out,
        vec![Reply::Changed {
            ids: ids[..2].to_vec(),
            more: false
        }]
    );
    assert_eq!(count(&show(&mut c, "a"), TaskState::Ready), 1);
    assert_eq!(count(&show(&mut c, "b"), TaskState::Ready), 2);
    let listed = match &req(
        &mut c,
        1,
        ActionerRequest::List {
            states: vec![],
            tags: vec![],
            limit: None,
            queue: Some("b".into()),
        },
    )[..]
    {
        [Reply::Tasks { tasks, .. }] => tasks.clone(),
        other => panic!("{other:?}"),
    };
    let mut got: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
    got.sort();
    assert_eq!(got, ids[..2].to_vec());
    assert!(listed.iter().all(|t| t.queue == "b"));
    // Moved into a paused queue, they wait; the one left in `a` runs.
    c.connect_worker(2, hello("w", 10), 20);
    assert_eq!(dispatched(&mut c), vec![ids[2]]);
    // A task its worker holds does not move.
    let e = match &req(
        &mut c,
        1,
        ActionerRequest::Move {
            selector: Selector::Ids(vec![ids[2].to_string()]),
            queue: "b".into(),
        },
    )[..]
    {
        [Reply::Error(e)] => e.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(e.kind, ErrorKind::InvalidState);
    assert!(e.message.contains("holds it"), "{e}");
    assert_eq!(c.tasks.get(&ids[2]).unwrap().info.spec.queue_name(), "a");
}

#[test]
fn show_says_why_a_task_no_worker_can_take_waits_and_hard_affinity_holds() {
    let mut c = core();
    c.connect_actioner(1);
    let gpu = add_to(&mut c, "default", 1, |s| s.require = vec![tag("gpu=yes")])[0];
    let why = waiting(&mut c, gpu).unwrap();
    assert_eq!(
        why,
        "no connected worker takes async tasks with tags gpu=yes"
    );
    let mut cpu = hello("cpu", 10);
    cpu.tags = vec![tag("gpu=no")];
    c.connect_worker(2, cpu, 20);
    assert!(dispatched(&mut c).is_empty(), "not on the gpu=no worker");
    let mut g = hello("gpu", 1);
    g.tags = vec![tag("gpu=yes")];
    c.connect_worker(3, g, 20);
    assert_eq!(dispatched(&mut c), vec![gpu]);
    assert_eq!(c.task(gpu).unwrap().worker, Some(WorkerId(2)));
    // Busy, not impossible: the reason says so.
    let next = add_to(&mut c, "default", 1, |s| s.require = vec![tag("gpu=yes")])[0];
    assert!(dispatched(&mut c).is_empty());
    assert_eq!(
        waiting(&mut c, next).unwrap(),
        "every worker that can run it is busy"
    );
}

#[test]
fn soft_affinity_picks_the_matching_worker_and_falls_back_when_it_is_full() {
    let mut c = core();
    c.connect_actioner(1);
    let mut eur = hello("eur", 10);
    eur.tags = vec![tag("curve=EUR")];
    c.connect_worker(2, eur, 20);
    let mut usd = hello("usd", 1);
    usd.tags = vec![tag("curve=USD")];
    c.connect_worker(3, usd, 20);
    let ids = add_to(&mut c, "default", 2, |s| s.prefer = vec![tag("curve=USD")]);
    assert_eq!(dispatched(&mut c).len(), 2);
    let on = |c: &Core, id| c.task(id).unwrap().worker.unwrap();
    let usd_id = c
        .workers
        .values()
        .find(|w| w.info.name == "usd")
        .unwrap()
        .info
        .id;
    assert_eq!(on(&c, ids[0]), usd_id, "the matching worker first");
    assert_ne!(on(&c, ids[1]), usd_id, "then another rather than wait");
}

#[test]
fn queues_are_listed_per_namespace_and_bad_settings_are_refused() {
    let mut c = core();
    c.connect_actioner(1);
    c.connect_actioner_in(9, "other".into());
    set(&mut c, "mine", limit(4));
    add_to(&mut c, "busy", 1, |_| {});
    let listed = match &req(&mut c, 1, ActionerRequest::Queues)[..] {
        [Reply::Queues { queues }] => queues.iter().map(|q| q.name.clone()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, vec!["busy", "mine"]);
    match &req(&mut c, 9, ActionerRequest::Queues)[..] {
        [Reply::Queues { queues }] => assert!(queues.is_empty(), "{queues:?}"),
        other => panic!("{other:?}"),
    }
    let e = queue_req(
        &mut c,
        ActionerRequest::QueueSet {
            queue: "mine".into(),
            change: QueueChange {
                weight: Some(0),
                ..Default::default()
            },
        },
    )
    .unwrap_err();
    assert!(e.message.contains("weight"), "{e}");
    assert_eq!(show(&mut c, "mine").settings.weight, 1, "nothing changed");
    let e = queue_req(&mut c, ActionerRequest::QueueShow { queue: "".into() }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
}

#[test]
fn the_brokers_queues_obey_pause_and_limit_too() {
    let mut c = core();
    let hello = ClientHello {
        name: "daemon".into(),
        host: "h".into(),
        namespace: "p".into(),
        previous_id: None,
    };
    c.connect_client(4, hello, 10);
    req(
        &mut c,
        4,
        ActionerRequest::QueueSet {
            queue: "jobs".into(),
            change: limit(1),
        },
    );
    for _ in 0..3 {
        req(
            &mut c,
            4,
            ActionerRequest::Send {
                queue: "jobs".into(),
                body: Data::encode("x").unwrap(),
                no_reply: true,
            },
        );
    }
    req(
        &mut c,
        4,
        ActionerRequest::Serve {
            queue: "jobs".into(),
            limit: 10,
        },
    );
    assert_eq!(
        dispatched(&mut c).len(),
        1,
        "the queue's limit, below the subscriber's"
    );
    let q = match &req(&mut c, 4, ActionerRequest::Queues)[..] {
        [Reply::Queues { queues }] => queues[0].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((q.name.as_str(), q.held, q.depth), ("jobs", 1, 2));
    req(
        &mut c,
        4,
        ActionerRequest::QueueSet {
            queue: "jobs".into(),
            change: QueueChange {
                limit: Some(0),
                paused: Some(true),
                ..Default::default()
            },
        },
    );
    assert!(dispatched(&mut c).is_empty(), "paused");
    req(
        &mut c,
        4,
        ActionerRequest::QueueSet {
            queue: "jobs".into(),
            change: QueueChange {
                paused: Some(false),
                ..Default::default()
            },
        },
    );
    assert_eq!(dispatched(&mut c).len(), 2, "no limit, playing");
}

#[test]
fn a_subscription_by_queue_and_tags_follows_the_tasks_that_have_both() {
    let mut c = core();
    c.connect_actioner(1);
    let tagged = |s: &mut TaskSpec| s.tags = vec![tag("run=1")];
    let both = add_to(&mut c, "q", 1, tagged)[0];
    add_to(&mut c, "q", 1, |_| {});
    add_to(&mut c, "other", 1, tagged);
    let snapshot = match &req(
        &mut c,
        1,
        ActionerRequest::Subscribe {
            filter: EventFilter {
                ids: vec![],
                tags: vec![tag("run=1")],
                all: false,
                queue: Some("q".into()),
                batch: None,
            },
        },
    )[..]
    {
        [Reply::Subscribed { tasks, .. }] => tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(snapshot, vec![both]);
    // A later task of the queue with the tag is followed; others are not.
    c.actioner(
        1,
        RequestId(9),
        ActionerRequest::Add {
            tasks: vec![{
                let mut s = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
                s.queue = Some("q".into());
                s.tags = vec![tag("run=1")];
                s
            }],
            play: true,
        },
        30,
    );
    let events: Vec<TaskId> = c
        .take_batch()
        .unwrap()
        .sends
        .iter()
        .filter_map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Event { event, .. }) => Some(event.id),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!snapshot.contains(&events[0]));
}

#[test]
fn a_queue_keeps_its_line_across_a_restart_whatever_order_the_store_gives() {
    // Made ready one after the other, in two queues and at two priorities; the store hands
    // them back in any order (here: reversed).
    let mut c = core();
    c.connect_actioner(1);
    let mut ids = Vec::new();
    for n in 0..6 {
        let q = if n % 2 == 0 { "a" } else { "b" };
        ids.extend(add_to(&mut c, q, 1, |s| s.priority = n / 4));
    }
    // Each became ready a millisecond after the one before; the store gives them back newest
    // first.
    let mut tasks: Vec<TaskInfo> = ids
        .iter()
        .zip(10..)
        .map(|(id, at)| {
            let mut t = c.task(*id).unwrap();
            t.times.ready_ms = Some(at);
            t
        })
        .collect();
    tasks.reverse();
    let mut r = Core::restore(
        CoreConfig::default(),
        as_stored(tasks),
        vec![],
        vec![],
        Default::default(),
        100,
    );
    r.connect_worker(2, hello("w", 1), 100);
    let mut order = Vec::new();
    for now in 101..107 {
        r.schedule(now);
        let sent = dispatched(&mut r);
        assert_eq!(sent.len(), 1);
        order.push(sent[0]);
        let attempt = AttemptRef {
            task: sent[0],
            attempt: 1,
        };
        finish(&mut r, 2, attempt, Outcome::Succeeded, now);
    }
    // The higher priority first (tasks 4 and 5), then each queue in the order its tasks became
    // ready, the two queues taking turns.
    let first: HashSet<TaskId> = order[..2].iter().copied().collect();
    assert_eq!(first, HashSet::from([ids[4], ids[5]]), "{order:?}");
    let rest: Vec<TaskId> = order[2..].to_vec();
    let pos = |id: TaskId| rest.iter().position(|x| *x == id).unwrap();
    assert!(pos(ids[0]) < pos(ids[2]), "queue a: {order:?}");
    assert!(pos(ids[1]) < pos(ids[3]), "queue b: {order:?}");
}
