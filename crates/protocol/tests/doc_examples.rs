//! The byte dumps in docs/PROTOCOL.md, checked against the real encoder so the doc stays true.

use tatzelwurm_protocol::*;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn framed<T: serde::Serialize>(v: &T) -> String {
    let mut buf = bytes::BytesMut::new();
    codec::encode_frame(BodyCodec::Msgpack, DEFAULT_MAX_FRAME, v, &mut buf).unwrap();
    hex(&buf)
}

fn example_task() -> TaskId {
    "01a20dea-0442-7287-976b-79d4ab68162a".parse().unwrap()
}

fn worker_hello() -> Hello {
    Hello::new(
        Role::Worker(WorkerHello {
            block: BlockType::Async,
            slots: 4,
            name: "py-1".into(),
            host: "node7".into(),
            tags: vec![],
            handlers: vec!["render".into()],
            previous_id: None,
            streams_output: false,
            prefetch: 0,
            custom_only: false,
        }),
        BodyCodec::Msgpack,
        "c0ffee",
    )
}

fn welcome() -> HelloReply {
    HelloReply::Welcome {
        version: PROTOCOL_VERSION,
        peer_id: 3,
        heartbeat_ms: 5000,
        lease_ms: 30000,
    }
}

#[derive(serde::Serialize)]
struct Frame {
    frame: u32,
}

fn dispatch() -> CoordinatorToWorker {
    CoordinatorToWorker::Dispatch(Box::new(Dispatch {
        attempt: AttemptRef {
            task: example_task(),
            attempt: 1,
        },
        name: None,
        payload: Payload::Custom {
            handler: "render".into(),
            data: Data::encode(&Frame { frame: 7 }).unwrap(),
        },
        timeout_ms: None,
        user_key: None,
        user_data: Data::empty(),
    }))
}

fn finished() -> WorkerToCoordinator {
    WorkerToCoordinator::Finished {
        attempt: AttemptRef {
            task: example_task(),
            attempt: 1,
        },
        report: AttemptReport {
            outcome: Some(Outcome::Succeeded),
            output: Data::encode(&Frame { frame: 7 }).unwrap(),
            ended_ms: 1_700_000_000_000,
            ..Default::default()
        },
    }
}

/// A client sends a message task to the queue `aiida` with the body "hi" (a MessagePack string).
fn client_send() -> ClientToCoordinator {
    ClientToCoordinator::Request(ActionerToCoordinator {
        request: RequestId(1),
        body: ActionerRequest::Send {
            queue: "aiida".into(),
            body: Data::encode("hi").unwrap(),
            no_reply: false,
        },
    })
}

/// The coordinator's answer once the task is durable.
fn client_sent() -> CoordinatorToClient {
    CoordinatorToClient::Actioner(CoordinatorToActioner::Reply {
        request: RequestId(1),
        body: Reply::Sent { id: example_task() },
    })
}

/// Prints the dumps (run with `--nocapture` when the protocol changes and the doc needs them).
#[test]
fn print_dumps() {
    println!("hello:\n{}", framed(&worker_hello()));
    println!("welcome:\n{}", framed(&welcome()));
    println!("dispatch:\n{}", framed(&dispatch()));
    println!("finished:\n{}", framed(&finished()));
    println!("send:\n{}", framed(&client_send()));
    println!("sent:\n{}", framed(&client_sent()));
}

#[test]
fn doc_dumps_match_the_encoder() {
    // Cargo sets the variable at run time too; prefer that, so a test binary reused from a build
    // of another checkout still reads this checkout's document.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The doc shows each dump as lines of hex bytes, 16 to a line, each line followed by a comment.
    let dumps: Vec<String> = doc
        .split("```hexdump")
        .skip(1)
        .map(|block| {
            let body = block.split("```").next().unwrap();
            body.lines()
                .map(|l| l.split('#').next().unwrap().trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let expected = [
        framed(&worker_hello()),
        framed(&welcome()),
        framed(&dispatch()),
        framed(&finished()),
        framed(&client_send()),
        framed(&client_sent()),
    ];
    assert_eq!(
        dumps.len(),
        expected.len(),
        "docs/PROTOCOL.md should hold {} hexdump blocks",
        expected.len()
    );
    for (i, (d, e)) in dumps.iter().zip(expected.iter()).enumerate() {
        assert_eq!(
            d, e,
            "hexdump block {i} of docs/PROTOCOL.md differs from the encoder"
        );
    }
}
