//! Every message variant survives both body codecs, and every malformed input gives a typed error.

use bytes::{BufMut, BytesMut};
use tatzelwurm_protocol::codec::encode_frame;
use tatzelwurm_protocol::handshake::check_hello;
use tatzelwurm_protocol::*;
use tokio_util::codec::Decoder;

const CODECS: [BodyCodec; 2] = [BodyCodec::Msgpack, BodyCodec::Bincode];

fn data() -> Data {
    Data::encode(&serde_json::json!({"step": 3, "inputs": ["a.dat", "b.dat"], "ok": true})).unwrap()
}

fn spec(payload: Payload) -> TaskSpec {
    TaskSpec {
        name: Some("sim-1".into()),
        block: BlockType::Sync,
        priority: -4,
        tags: vec!["project=apollo".parse().unwrap(), "empty=".parse().unwrap()],
        payload,
        max_attempts: 3,
        timeout_ms: Some(90_000),
        user_key: Some("step-3".into()),
        user_data: data(),
        queue: Some("gpu".into()),
        prefer: vec!["curve=USD".parse().unwrap()],
        require: vec!["gpu=yes".parse().unwrap()],
    }
}

fn payloads() -> Vec<Payload> {
    vec![
        Payload::Exec {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![EnvVar {
                name: "A".into(),
                value: "1".into(),
            }],
            cwd: Some("/tmp".into()),
        },
        Payload::Sleep { duration_ms: 250 },
        Payload::Custom {
            handler: "render".into(),
            data: data(),
        },
        Payload::Message {
            namespace: "profile-1".into(),
            queue: "aiida.tasks".into(),
            body: data(),
            no_reply: true,
        },
    ]
}

fn outcomes() -> Vec<MessageOutcome> {
    vec![
        MessageOutcome::Pending,
        MessageOutcome::Value(data()),
        MessageOutcome::Failed("ValueError: no".into()),
        MessageOutcome::Cancelled("killed".into()),
    ]
}

fn broadcast() -> BroadcastMessage {
    BroadcastMessage {
        body: data(),
        sender: Some("42".into()),
        subject: Some("state_changed.running.waiting".into()),
        correlation_id: None,
    }
}

fn report() -> AttemptReport {
    AttemptReport {
        outcome: Some(Outcome::Failed),
        exit_code: Some(2),
        error: Some("exit status 2".into()),
        stdout_tail: "out\n".into(),
        stderr_tail: "ünïcode err\n".into(),
        output: data(),
        user_data: Some(data()),
        started_ms: Some(1_700_000_000_000),
        ended_ms: 1_700_000_000_500,
    }
}

fn task_info() -> TaskInfo {
    TaskInfo {
        id: TaskId::new(),
        spec: spec(payloads()[0].clone()),
        state: TaskState::Failed,
        times: StageTimes {
            created_ms: 1,
            ready_ms: Some(2),
            assigned_ms: Some(3),
            running_ms: Some(4),
            paused_ms: None,
            ended_ms: Some(5),
        },
        attempts: vec![Attempt {
            number: 1,
            worker: WorkerId(7),
            worker_name: "w".into(),
            assigned_ms: 3,
            started_ms: Some(4),
            ended_ms: Some(5),
            outcome: Some(Outcome::Lost),
            exit_code: None,
            error: Some("lease expired".into()),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            output: Data::empty(),
            late_reports: vec![report()],
        }],
        worker: None,
        namespace: "aiida-x".into(),
        number: 42,
        batch: 7,
    }
}

fn summary() -> TaskSummary {
    TaskSummary {
        id: TaskId::new(),
        name: None,
        state: TaskState::Running,
        block: BlockType::Async,
        priority: 10,
        tags: vec![],
        command: "sleep 1s".into(),
        attempts: 1,
        max_attempts: 1,
        worker: Some(WorkerId(1)),
        created_ms: 9,
        changed_ms: 10,
        queue: "gpu".into(),
        worker_name: Some("box".into()),
        number: 43,
        batch: 7,
    }
}

fn queue_info() -> QueueInfo {
    let mut settings = QueueSettings::new("ns", "q");
    settings.limit = Some(4);
    settings.timeout_ms = Some(5);
    QueueInfo {
        name: "q".into(),
        depth: 5,
        held: 2,
        subscribers: 1,
        capacity: 200,
        settings,
        counts: counts(),
        finished_last_minute: 17,
    }
}

fn counts() -> Vec<StateCount> {
    TaskState::ALL
        .iter()
        .map(|&state| StateCount { state, count: 3 })
        .collect()
}

fn attempt() -> AttemptRef {
    AttemptRef {
        task: TaskId::new(),
        attempt: 2,
    }
}

fn selector_ids() -> Selector {
    Selector::Ids(vec!["0190".into(), "0191abcd".into()])
}

fn actioner_requests() -> Vec<ActionerRequest> {
    let mut v = vec![ActionerRequest::Add {
        tasks: payloads().into_iter().map(spec).collect(),
        play: true,
    }];
    v.push(ActionerRequest::Play {
        selector: selector_ids(),
        created: true,
    });
    v.push(ActionerRequest::Pause {
        selector: Selector::All,
    });
    v.push(ActionerRequest::Kill {
        selector: selector_ids(),
    });
    v.push(ActionerRequest::Remove {
        selector: Selector::All,
    });
    v.push(ActionerRequest::Kill {
        selector: Selector::Where(TaskFilter {
            states: vec![TaskState::Ready],
            tags: vec!["a=b".parse().unwrap()],
            queue: Some("q".into()),
            name: Some("n".into()),
            batch: Some(3),
        }),
    });
    v.push(ActionerRequest::List {
        states: vec![TaskState::Ready, TaskState::Paused],
        tags: vec!["a=b".parse().unwrap()],
        limit: Some(20),
        queue: Some("gpu".into()),
    });
    v.push(ActionerRequest::Show {
        id: "0190ab".into(),
    });
    v.push(ActionerRequest::Workers);
    v.push(ActionerRequest::Summary);
    v.push(ActionerRequest::Breakdown {
        key: "project".into(),
    });
    v.push(ActionerRequest::Subscribe {
        filter: EventFilter {
            ids: vec!["01".into()],
            tags: vec![],
            all: false,
            queue: None,
            batch: None,
        },
    });
    v.push(ActionerRequest::Retry {
        selector: selector_ids(),
        attempts: 2,
    });
    v.push(ActionerRequest::Unsubscribe {
        subscription: RequestId(7),
    });
    v.push(ActionerRequest::Send {
        queue: "q".into(),
        body: data(),
        no_reply: false,
    });
    v.push(ActionerRequest::Watch {
        ids: vec!["01a2".into()],
    });
    v.push(ActionerRequest::Serve {
        queue: "q".into(),
        limit: 200,
    });
    v.push(ActionerRequest::Unserve { queue: "q".into() });
    v.push(ActionerRequest::Register {
        identifier: "42".into(),
    });
    v.push(ActionerRequest::Unregister {
        identifier: "42".into(),
    });
    v.push(ActionerRequest::Call {
        identifier: "42".into(),
        body: data(),
    });
    v.extend(
        outcomes()
            .into_iter()
            .map(|outcome| ActionerRequest::Respond { call: 3, outcome }),
    );
    v.push(ActionerRequest::Broadcast {
        message: broadcast(),
    });
    v.push(ActionerRequest::Listen {
        subjects: vec!["state_changed.*".into()],
        senders: vec![],
    });
    v.push(ActionerRequest::Unlisten {
        listener: RequestId(4),
    });
    v.push(ActionerRequest::Queues);
    v.push(ActionerRequest::WorkerDrain {
        worker: 7,
        drain: true,
    });
    v.push(ActionerRequest::QueueShow {
        queue: "gpu".into(),
    });
    v.push(ActionerRequest::QueueSet {
        queue: "gpu".into(),
        change: QueueChange {
            priority: Some(-2),
            weight: Some(3),
            limit: Some(0),
            paused: Some(true),
            max_attempts: None,
            timeout_ms: Some(60_000),
        },
    });
    v.push(ActionerRequest::Move {
        selector: Selector::Ids(vec!["0190".into()]),
        queue: "cpu".into(),
    });
    v.push(ActionerRequest::QueueTasks {
        queue: "q".into(),
        limit: Some(10),
    });
    v.push(ActionerRequest::ListPage {
        filter: TaskFilter {
            states: vec![TaskState::Failed],
            tags: vec![],
            queue: Some("q".into()),
            name: None,
            batch: Some(3),
        },
        limit: 100,
        before: Some(TaskId::new()),
    });
    v.push(ActionerRequest::Follow { id: "42".into() });
    // Fails to compile when a variant is added and not listed above.
    for r in &v {
        match r {
            ActionerRequest::Add { .. }
            | ActionerRequest::Play { .. }
            | ActionerRequest::Pause { .. }
            | ActionerRequest::Kill { .. }
            | ActionerRequest::Remove { .. }
            | ActionerRequest::List { .. }
            | ActionerRequest::Show { .. }
            | ActionerRequest::Workers
            | ActionerRequest::Summary
            | ActionerRequest::Breakdown { .. }
            | ActionerRequest::Subscribe { .. }
            | ActionerRequest::Retry { .. }
            | ActionerRequest::Unsubscribe { .. }
            | ActionerRequest::Send { .. }
            | ActionerRequest::Watch { .. }
            | ActionerRequest::Serve { .. }
            | ActionerRequest::Unserve { .. }
            | ActionerRequest::Register { .. }
            | ActionerRequest::Unregister { .. }
            | ActionerRequest::Call { .. }
            | ActionerRequest::Respond { .. }
            | ActionerRequest::Broadcast { .. }
            | ActionerRequest::Listen { .. }
            | ActionerRequest::Unlisten { .. }
            | ActionerRequest::Queues
            | ActionerRequest::WorkerDrain { .. }
            | ActionerRequest::QueueShow { .. }
            | ActionerRequest::QueueSet { .. }
            | ActionerRequest::Move { .. }
            | ActionerRequest::QueueTasks { .. }
            | ActionerRequest::ListPage { .. }
            | ActionerRequest::Follow { .. } => {}
        }
    }
    v
}

fn replies() -> Vec<Reply> {
    let v = vec![
        Reply::Added {
            ids: vec![TaskId::new(), TaskId::new()],
            numbers: vec![41, 42],
            batch: 7,
        },
        Reply::Changed {
            ids: vec![TaskId::new()],
            more: false,
        },
        Reply::Tasks {
            tasks: vec![summary(), summary()],
            counts: counts(),
        },
        Reply::Task {
            task: Box::new(task_info()),
            waiting: Some("queue gpu is paused".into()),
        },
        Reply::Workers {
            workers: vec![WorkerInfo {
                id: WorkerId(3),
                name: "gpu-box".into(),
                host: "node7".into(),
                block: BlockType::Sync,
                slots: 8,
                running: 2,
                tags: vec!["gpu=a100".parse().unwrap()],
                handlers: vec!["render".into()],
                connected_ms: 5,
                last_heartbeat_ms: 6,
                state: WorkerState::Draining,
            }],
        },
        Reply::Summary {
            counts: counts(),
            workers_connected: 4,
            finished_last_minute: 1200,
        },
        Reply::Breakdown {
            key: "project".into(),
            values: vec![TagCounts {
                value: "apollo".into(),
                counts: counts(),
            }],
        },
        Reply::Subscribed {
            tasks: vec![TaskStatus {
                id: TaskId::new(),
                state: TaskState::Ready,
            }],
            more: true,
        },
        Reply::Error(ErrorReply::new(
            ErrorKind::AmbiguousId,
            "prefix 01 matches 2 tasks",
        )),
        Reply::Unsubscribed {
            subscription: RequestId(7),
        },
        Reply::Sent { id: TaskId::new() },
        Reply::Watching {
            ids: vec![TaskId::new()],
        },
        Reply::TaskOutcome {
            id: TaskId::new(),
            outcome: MessageOutcome::Value(data()),
        },
        Reply::CallOutcome {
            outcome: MessageOutcome::Pending,
        },
        Reply::Done,
        Reply::Broadcasted { listeners: 3 },
        Reply::Queues {
            queues: vec![queue_info()],
        },
        Reply::Queue {
            queue: Box::new(queue_info()),
        },
        Reply::QueueTasks {
            tasks: vec![QueuedMessage {
                id: TaskId::new(),
                body: data(),
                no_reply: false,
                created_ms: 5,
            }],
        },
        Reply::Following {
            id: TaskId::new(),
            number: 42,
            state: TaskState::Running,
            attempt: 2,
            worker: Some("w".into()),
            streamed: true,
        },
        Reply::Output {
            id: TaskId::new(),
            attempt: 2,
            stream: OutputStream::Stdout,
            offset: 12,
            data: Bytes(b"line\n".to_vec()),
        },
        Reply::Followed {
            id: TaskId::new(),
            state: TaskState::Failed,
            attempt: 2,
        },
    ];
    for r in &v {
        match r {
            Reply::Added { .. }
            | Reply::Changed { .. }
            | Reply::Tasks { .. }
            | Reply::Task { .. }
            | Reply::Workers { .. }
            | Reply::Summary { .. }
            | Reply::Subscribed { .. }
            | Reply::Breakdown { .. }
            | Reply::Error(_)
            | Reply::Unsubscribed { .. }
            | Reply::Sent { .. }
            | Reply::Watching { .. }
            | Reply::TaskOutcome { .. }
            | Reply::CallOutcome { .. }
            | Reply::Done
            | Reply::Broadcasted { .. }
            | Reply::Queues { .. }
            | Reply::Queue { .. }
            | Reply::QueueTasks { .. }
            | Reply::Following { .. }
            | Reply::Output { .. }
            | Reply::Followed { .. } => {}
        }
    }
    v
}

fn to_actioner() -> Vec<CoordinatorToActioner> {
    let mut v: Vec<_> = replies()
        .into_iter()
        .map(|body| CoordinatorToActioner::Reply {
            request: RequestId(42),
            body,
        })
        .collect();
    v.push(CoordinatorToActioner::Event {
        subscription: RequestId(1),
        event: TaskEvent {
            id: TaskId::new(),
            state: TaskState::Completed,
            at_ms: 77,
            attempt: 1,
        },
    });
    v.push(CoordinatorToActioner::Shutdown {
        reason: "SIGTERM".into(),
    });
    v.push(CoordinatorToActioner::Broadcast {
        listener: RequestId(4),
        message: broadcast(),
    });
    v.push(CoordinatorToActioner::Call {
        call: 3,
        identifier: "42".into(),
        body: data(),
    });
    for m in &v {
        match m {
            CoordinatorToActioner::Reply { .. }
            | CoordinatorToActioner::Event { .. }
            | CoordinatorToActioner::Shutdown { .. }
            | CoordinatorToActioner::Broadcast { .. }
            | CoordinatorToActioner::Call { .. } => {}
        }
    }
    v
}

fn from_worker() -> Vec<WorkerToCoordinator> {
    let v = vec![
        WorkerToCoordinator::Heartbeat { running: 3 },
        WorkerToCoordinator::Reattach {
            running: vec![attempt(), attempt()],
        },
        WorkerToCoordinator::Started {
            attempt: attempt(),
            at_ms: 12,
        },
        WorkerToCoordinator::Finished {
            attempt: attempt(),
            report: report(),
        },
        WorkerToCoordinator::Draining,
        WorkerToCoordinator::Reject { attempt: attempt() },
        WorkerToCoordinator::Output {
            attempt: attempt(),
            stream: OutputStream::Stderr,
            offset: 70_000,
            data: Bytes(b"half a line \xff".to_vec()),
        },
    ];
    for m in &v {
        match m {
            WorkerToCoordinator::Heartbeat { .. }
            | WorkerToCoordinator::Reattach { .. }
            | WorkerToCoordinator::Started { .. }
            | WorkerToCoordinator::Finished { .. }
            | WorkerToCoordinator::Draining
            | WorkerToCoordinator::Reject { .. }
            | WorkerToCoordinator::Output { .. } => {}
        }
    }
    v
}

fn to_worker() -> Vec<CoordinatorToWorker> {
    let mut v: Vec<_> = payloads()
        .into_iter()
        .map(|payload| {
            CoordinatorToWorker::Dispatch(Box::new(Dispatch {
                attempt: attempt(),
                name: Some("n".into()),
                payload,
                timeout_ms: Some(5),
                user_key: None,
                user_data: data(),
            }))
        })
        .collect();
    v.extend([
        CoordinatorToWorker::Kill { attempt: attempt() },
        CoordinatorToWorker::Pause { attempt: attempt() },
        CoordinatorToWorker::Resume { attempt: attempt() },
        CoordinatorToWorker::Ack { attempt: attempt() },
        CoordinatorToWorker::Reattached {
            keep: vec![attempt()],
            drop: vec![attempt()],
        },
        CoordinatorToWorker::HeartbeatAck,
        CoordinatorToWorker::Follow {
            attempt: attempt(),
            on: true,
        },
        CoordinatorToWorker::Revoke { attempt: attempt() },
        CoordinatorToWorker::Error(ErrorReply::new(ErrorKind::InvalidRequest, "no")),
        CoordinatorToWorker::Shutdown {
            reason: "bye".into(),
        },
    ]);
    for m in &v {
        match m {
            CoordinatorToWorker::Dispatch(_)
            | CoordinatorToWorker::Kill { .. }
            | CoordinatorToWorker::Pause { .. }
            | CoordinatorToWorker::Resume { .. }
            | CoordinatorToWorker::Ack { .. }
            | CoordinatorToWorker::Reattached { .. }
            | CoordinatorToWorker::HeartbeatAck
            | CoordinatorToWorker::Error(_)
            | CoordinatorToWorker::Shutdown { .. }
            | CoordinatorToWorker::Follow { .. }
            | CoordinatorToWorker::Revoke { .. } => {}
        }
    }
    v
}

fn hellos() -> Vec<Hello> {
    vec![
        Hello::new(
            Role::Worker(WorkerHello {
                block: BlockType::Async,
                slots: 200,
                name: "w1".into(),
                host: "h".into(),
                tags: vec!["zone=a".parse().unwrap()],
                handlers: vec!["render".into()],
                previous_id: Some(WorkerId(9)),
                streams_output: true,
                prefetch: 2,
                custom_only: true,
            }),
            BodyCodec::Bincode,
            "secret",
        ),
        Hello::new(
            Role::Actioner {
                client: "test".into(),
                namespace: String::new(),
            },
            BodyCodec::Msgpack,
            "",
        ),
        Hello::new(
            Role::Client(ClientHello {
                name: "daemon-1".into(),
                host: "h".into(),
                namespace: "profile-1".into(),
                previous_id: Some(WorkerId(3)),
            }),
            BodyCodec::Msgpack,
            "t",
        ),
    ]
}

fn hello_replies() -> Vec<HelloReply> {
    vec![
        HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            peer_id: 5,
            heartbeat_ms: 1000,
            lease_ms: 30_000,
        },
        HelloReply::Rejected {
            kind: RejectKind::BadToken,
            message: "bad token".into(),
            version: 1,
        },
        HelloReply::Rejected {
            kind: RejectKind::VersionMismatch,
            message: "v".into(),
            version: 1,
        },
        HelloReply::Rejected {
            kind: RejectKind::MalformedHello,
            message: "m".into(),
            version: 1,
        },
        HelloReply::Rejected {
            kind: RejectKind::Busy,
            message: "b".into(),
            version: 1,
        },
        HelloReply::Rejected {
            kind: RejectKind::ShuttingDown,
            message: "s".into(),
            version: 1,
        },
    ]
}

/// Encodes each value as a frame, decodes it back through the codec, and compares.
fn round_trip<T>(values: Vec<T>)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert!(!values.is_empty());
    for codec in CODECS {
        let mut buf = BytesMut::new();
        for v in &values {
            encode_frame(codec, DEFAULT_MAX_FRAME, v, &mut buf).unwrap();
        }
        let mut dec = MessageCodec::<T, T>::new(codec, DEFAULT_MAX_FRAME);
        for v in &values {
            let got = dec.decode(&mut buf).unwrap().expect("a whole frame");
            assert_eq!(&got, v, "codec {codec}");
        }
        assert!(buf.is_empty());
        assert!(dec.decode_eof(&mut buf).unwrap().is_none());
    }
}

#[test]
fn every_message_round_trips_in_both_codecs() {
    round_trip(
        actioner_requests()
            .into_iter()
            .map(|body| ActionerToCoordinator {
                request: RequestId(7),
                body,
            })
            .collect(),
    );
    round_trip(to_actioner());
    round_trip(from_worker());
    round_trip(to_worker());
    round_trip(hellos());
    round_trip(hello_replies());
    let client_side: Vec<ClientToCoordinator> = actioner_requests()
        .into_iter()
        .map(|body| {
            ClientToCoordinator::Request(ActionerToCoordinator {
                request: RequestId(8),
                body,
            })
        })
        .chain(from_worker().into_iter().map(ClientToCoordinator::Worker))
        .collect();
    round_trip(client_side);
    let to_client: Vec<CoordinatorToClient> = to_actioner()
        .into_iter()
        .map(CoordinatorToClient::Actioner)
        .chain(to_worker().into_iter().map(CoordinatorToClient::Worker))
        .collect();
    round_trip(to_client);
}

#[test]
fn version_2_peers_are_still_accepted() {
    let mut hello = hellos().remove(1);
    hello.codec = BodyCodec::Msgpack;
    for v in [2, 3, 4] {
        hello.version = v;
        assert!(check_hello(&hello).is_ok(), "msgpack version {v}");
    }
    // bincode is positional: a peer built before tasks grew their version-4 fields would
    // misread every task, so it is refused with a reason.
    hello.codec = BodyCodec::Bincode;
    assert!(check_hello(&hello).is_ok());
    hello.version = 3;
    let (kind, why) = check_hello(&hello).unwrap_err();
    assert_eq!(kind, RejectKind::VersionMismatch);
    assert!(why.contains("use msgpack"), "{why}");
    hello.version = 2;
    hello.version = 1;
    assert_eq!(
        check_hello(&hello).unwrap_err().0,
        RejectKind::VersionMismatch
    );
}

#[test]
fn msgpack_uses_field_and_variant_names() {
    let body = BodyCodec::Msgpack
        .encode(&WorkerToCoordinator::Heartbeat { running: 3 })
        .unwrap();
    // fixmap(1) "heartbeat" fixmap(1) "running" 3
    let mut expected = vec![0x81, 0xa9];
    expected.extend_from_slice(b"heartbeat");
    expected.extend_from_slice(&[0x81, 0xa7]);
    expected.extend_from_slice(b"running");
    expected.push(0x03);
    assert_eq!(&body[..], &expected[..]);
    let unit = BodyCodec::Msgpack
        .encode(&WorkerToCoordinator::Draining)
        .unwrap();
    assert_eq!(&unit[..], b"\xa8draining");
}

#[test]
fn truncated_frame_is_a_typed_error_at_eof() {
    for codec in CODECS {
        let mut whole = BytesMut::new();
        encode_frame(codec, DEFAULT_MAX_FRAME, &to_worker()[0], &mut whole).unwrap();
        for cut in 1..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let mut dec = MessageCodec::<CoordinatorToWorker, ()>::new(codec, DEFAULT_MAX_FRAME);
            assert!(dec.decode(&mut part).unwrap().is_none(), "cut {cut}");
            match dec.decode_eof(&mut part) {
                Err(FrameError::Truncated { buffered }) => assert_eq!(buffered, cut),
                other => panic!("cut {cut}: expected Truncated, got {other:?}"),
            }
        }
    }
}

#[test]
fn oversize_length_is_refused_before_allocation() {
    let mut dec = MessageCodec::<Hello, ()>::new(BodyCodec::Msgpack, 1024);
    let mut buf = BytesMut::new();
    buf.put_u32(0xffff_fff0);
    buf.put_slice(b"abc");
    match dec.decode(&mut buf) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, 0xffff_fff0);
            assert_eq!(max, 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        buf.capacity() < 4096,
        "the decoder grew the buffer to {}",
        buf.capacity()
    );
}

#[test]
fn oversize_message_is_refused_on_encode() {
    let big = WorkerToCoordinator::Finished {
        attempt: attempt(),
        report: AttemptReport {
            stdout_tail: "x".repeat(2000),
            ..report()
        },
    };
    for codec in CODECS {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode_frame(codec, 1000, &big, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Encode { .. }), "{err:?}");
        assert_eq!(
            &buf[..],
            b"keep",
            "a failed encode must leave the buffer as it was"
        );
    }
}

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic_and_give_typed_errors() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut decode_errors = 0;
    for round in 0..3000 {
        let len = (rng.next() % 200) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let codec = CODECS[round % 2];
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        let mut a = MessageCodec::<ActionerToCoordinator, ()>::new(codec, DEFAULT_MAX_FRAME);
        let mut w = MessageCodec::<WorkerToCoordinator, ()>::new(codec, DEFAULT_MAX_FRAME);
        let mut h = MessageCodec::<Hello, ()>::new(BodyCodec::Msgpack, DEFAULT_MAX_FRAME);
        for res in [
            a.decode(&mut buf.clone()).map(|_| ()),
            w.decode(&mut buf.clone()).map(|_| ()),
            h.decode(&mut buf.clone()).map(|_| ()),
        ] {
            if let Err(e) = res {
                assert!(matches!(e, FrameError::Decode { .. }), "{e:?}");
                decode_errors += 1;
            }
        }
        // Raw random bytes, length prefix included.
        let mut raw = BytesMut::from(&body[..]);
        let mut raw_dec = MessageCodec::<WorkerToCoordinator, ()>::new(codec, 4096);
        let _ = raw_dec.decode(&mut raw);
        let _ = raw_dec.decode_eof(&mut raw);
    }
    assert!(
        decode_errors > 8000,
        "random bodies should almost never decode ({decode_errors})"
    );
}

#[test]
fn unknown_variant_is_a_decode_error() {
    // {"teleport": {}} is not a WorkerToCoordinator.
    let mut body = vec![0x81, 0xa8];
    body.extend_from_slice(b"teleport");
    body.push(0x80);
    let err = BodyCodec::Msgpack
        .decode::<WorkerToCoordinator>(&body)
        .unwrap_err();
    match err {
        FrameError::Decode { codec, reason, .. } => {
            assert_eq!(codec, "msgpack");
            assert!(reason.contains("teleport"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // bincode: variant index 200 does not exist.
    let err = BodyCodec::Bincode
        .decode::<WorkerToCoordinator>(&[200])
        .unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::Decode {
                codec: "bincode",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn trailing_bytes_are_refused() {
    for codec in CODECS {
        let mut body = codec
            .encode(&WorkerToCoordinator::Draining)
            .unwrap()
            .to_vec();
        body.push(0);
        assert!(matches!(
            codec.decode::<WorkerToCoordinator>(&body),
            Err(FrameError::Decode { .. })
        ));
    }
}

#[test]
fn hello_with_wrong_version_or_magic_is_rejected_with_both_versions() {
    let mut hello = hellos().remove(1);
    hello.version = PROTOCOL_VERSION + 1;
    let (kind, message) = check_hello(&hello).unwrap_err();
    assert_eq!(kind, RejectKind::VersionMismatch);
    assert!(message.contains(&(PROTOCOL_VERSION + 1).to_string()));
    assert!(message.contains(&PROTOCOL_VERSION.to_string()));

    let mut hello = hellos().remove(1);
    hello.magic = "GET / HTTP/1.1".into();
    assert_eq!(
        check_hello(&hello).unwrap_err().0,
        RejectKind::MalformedHello
    );

    let mut hello = hellos().remove(0);
    if let Role::Worker(w) = &mut hello.role {
        w.slots = 0;
    }
    assert_eq!(
        check_hello(&hello).unwrap_err().0,
        RejectKind::MalformedHello
    );
    assert!(check_hello(&hellos()[0]).is_ok());
}

#[test]
fn minimal_python_style_hello_decodes_with_defaults() {
    // A hand-written hello with only the required fields, as a client in another language writes it.
    #[derive(serde::Serialize)]
    struct MinimalHello<'a> {
        magic: &'a str,
        version: u32,
        role: std::collections::BTreeMap<&'a str, std::collections::BTreeMap<&'a str, &'a str>>,
        codec: &'a str,
    }
    let mut role = std::collections::BTreeMap::new();
    role.insert("actioner", std::collections::BTreeMap::new());
    let bytes = rmp_serde_named(&MinimalHello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role,
        codec: "msgpack",
    });
    let hello: Hello = BodyCodec::Msgpack.decode(&bytes).unwrap();
    assert_eq!(hello.token, "");
    assert_eq!(
        hello.role,
        Role::Actioner {
            client: String::new(),
            namespace: String::new(),
        }
    );
}

fn rmp_serde_named<T: serde::Serialize>(v: &T) -> Vec<u8> {
    BodyCodec::Msgpack.encode(v).unwrap().to_vec()
}

#[test]
fn huge_length_claims_fail_without_allocating() {
    // Found by the fuzz target: a bincode body claiming a petabyte-long byte string.
    let crash: &[u8] = &[
        0x90, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0xfd,
        0x00, 0xfd, 0xff, 0x00, 0x00, 0x70, 0xff, 0x00, 0x00, 0x70,
    ];
    for codec in CODECS {
        let _ = codec.decode::<ActionerToCoordinator>(crash);
        let _ = codec.decode::<CoordinatorToWorker>(crash);
        let _ = codec.decode::<WorkerToCoordinator>(crash);
    }
    // A string that claims 2^60 bytes, in both codecs.
    let mut bin = vec![0xfd_u8]; // bincode varint marker: a u64 follows
    bin.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(BodyCodec::Bincode.decode::<String>(&bin).is_err());
    let mut mp = vec![0xdb]; // msgpack str32
    mp.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(BodyCodec::Msgpack.decode::<String>(&mp).is_err());
    let mut mp = vec![0xc6]; // msgpack bin32
    mp.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(BodyCodec::Msgpack.decode::<Data>(&mp).is_err());
}
