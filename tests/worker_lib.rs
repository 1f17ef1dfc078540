//! A worker of one's own, built on the `tatzelwurm-worker` library with a blocking and an async
//! handler, running in this test process against the real coordinator binary.

use std::time::Duration;

use tatzelwurm_protocol::{BlockType, Data};
use tatzelwurm_tests::{Coordinator, Db};
use tatzelwurm_worker::session::Stop;
use tatzelwurm_worker::{Handlers, TaskOutput, WorkerConfig};

#[test]
fn library_worker_serves_its_own_handlers() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut cfg = WorkerConfig::new(c.addr.clone(), BlockType::Async);
    cfg.token = std::fs::read_to_string(c.token_file())
        .unwrap()
        .trim()
        .to_string();
    cfg.name = "library-worker".into();
    let handlers = Handlers::new()
        .blocking("count_words", |input| {
            let text: String = input.data.decode().map_err(|e| e.to_string())?;
            let n = text.split_whitespace().count() as u64;
            Ok(TaskOutput {
                output: Data::encode(&n).unwrap(),
                user_data: None,
            })
        })
        .asynchronous("delayed_square", |input| async move {
            let x: i64 = input.data.decode().map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(TaskOutput {
                output: Data::encode(&(x * x)).unwrap(),
                user_data: Some(Data::encode(&"squared").unwrap()),
            })
        });
    let stop = Stop::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let worker = rt.spawn(tatzelwurm_worker::run(cfg, handlers, stop.clone()));

    let words = c.add(&[
        "--play",
        "--custom",
        "count_words",
        "--data",
        "\"one two three\"",
    ]);
    let square = c.add(&["--play", "--custom", "delayed_square", "--data", "12"]);
    let bad = c.add(&[
        "--play",
        "--custom",
        "delayed_square",
        "--data",
        "\"twelve\"",
    ]);
    let out = c
        .try_action(&["task", "wait", &words[0], &square[0], &bad[0]])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the bad input fails");
    assert_eq!(c.show(&words[0])["attempts"][0]["output"], 3);
    let sq = c.show(&square[0]);
    assert_eq!(sq["attempts"][0]["output"], 144);
    assert_eq!(sq["user_data"], "squared");
    assert_eq!(c.state(&bad[0]), "failed");
    let workers = c.json(&["worker", "list"]);
    assert_eq!(
        workers[0]["handlers"],
        serde_json::json!(["count_words", "delayed_square"])
    );

    stop.drain.cancel();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), worker).await })
        .expect("the worker drains and returns")
        .unwrap()
        .unwrap();
}
