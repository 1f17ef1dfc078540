//! Codec micro-benchmarks: encode + decode of a dispatch and of a result, in both body codecs.
//! Run with `cargo bench --bench codec`.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use bytes::BytesMut;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use tatzelwurm_protocol::codec::encode_frame;
use tatzelwurm_protocol::{
    AttemptRef, AttemptReport, BodyCodec, CoordinatorToWorker, DEFAULT_MAX_FRAME, Data, Dispatch,
    MessageCodec, Outcome, Payload, TaskId, WorkerToCoordinator,
};
use tokio_util::codec::Decoder;

fn dispatch() -> CoordinatorToWorker {
    CoordinatorToWorker::Dispatch(Box::new(Dispatch {
        attempt: AttemptRef {
            task: TaskId::new(),
            attempt: 1,
        },
        name: Some("sim-42".into()),
        payload: Payload::Exec {
            argv: vec!["./simulate".into(), "--seed".into(), "42".into()],
            env: vec![],
            cwd: None,
        },
        timeout_ms: Some(60_000),
        user_key: None,
        user_data: Data::encode(&serde_json::json!({"step": 1})).unwrap(),
    }))
}

fn result() -> WorkerToCoordinator {
    WorkerToCoordinator::Finished {
        attempt: AttemptRef {
            task: TaskId::new(),
            attempt: 1,
        },
        report: AttemptReport {
            outcome: Some(Outcome::Succeeded),
            exit_code: Some(0),
            stdout_tail: "done in 1.2s\n".into(),
            ended_ms: 1_700_000_000_000,
            started_ms: Some(1_699_999_999_000),
            ..Default::default()
        },
    }
}

fn bench<T>(c: &mut Criterion, name: &str, msg: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    for codec in [BodyCodec::Msgpack, BodyCodec::Bincode] {
        let mut buf = BytesMut::with_capacity(1024);
        let mut dec = MessageCodec::<T, T>::new(codec, DEFAULT_MAX_FRAME);
        c.bench_function(&format!("{name}/{codec}"), |b| {
            b.iter(|| {
                encode_frame(codec, DEFAULT_MAX_FRAME, black_box(&msg), &mut buf).unwrap();
                black_box(dec.decode(&mut buf).unwrap().unwrap())
            })
        });
    }
}

fn codecs(c: &mut Criterion) {
    bench(c, "dispatch", dispatch());
    bench(c, "result", result());
}

criterion_group!(benches, codecs);
criterion_main!(benches);
