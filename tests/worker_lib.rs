//! A worker of one's own, built on the `tatzelwurm-worker` library with a blocking and an async
//! handler, running in this test process against the real coordinator binary.

use std::time::Duration;

use tatzelwurm_protocol::{BlockType, Data};
use tatzelwurm_tests::{Coordinator, Db};
use tatzelwurm_worker::session::Stop;
use tatzelwurm_worker::{Handlers, TaskOutput, WorkerConfig};

/// An async worker's configuration for coordinator `c`, with its token.
fn config(c: &Coordinator) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(c.addr.clone(), BlockType::Async);
    cfg.token = std::fs::read_to_string(c.token_file())
        .unwrap()
        .trim()
        .to_string();
    cfg
}

#[test]
fn library_worker_serves_its_own_handlers() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut cfg = config(&c);
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

/// A finished attempt's report that waits for company (`report_linger`) while a held task took
/// its slot is written by its own timer when nothing else goes out. Here nothing else would: the
/// next attempt's `started` is held back for an hour, heartbeats are minutes apart, and the
/// other held tasks stay held behind the one that runs.
#[test]
fn a_report_left_waiting_for_company_goes_when_its_linger_ends() {
    const LONG: Duration = Duration::from_secs(60);
    const LINGER: Duration = Duration::from_secs(2);
    let c = Coordinator::start_with(Db::Mem, &["--lease", "10m", "--heartbeat", "5m"]).unwrap();
    let mut cfg = config(&c);
    cfg.slots = 1;
    cfg.prefetch = 3;
    cfg.report_linger = LINGER;
    cfg.started_after = Duration::from_secs(3600);
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
    let opened = gate.clone();
    let handlers = Handlers::new()
        .asynchronous("gate", move |_| {
            let gate = opened.clone();
            async move {
                gate.notified().await;
                Ok(TaskOutput {
                    output: Data::encode(&"through").unwrap(),
                    user_data: None,
                })
            }
        })
        .asynchronous("park", move |_| {
            let _ = parked_tx.send(());
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(TaskOutput {
                    output: Data::encode(&"woke").unwrap(),
                    user_data: None,
                })
            }
        });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(tatzelwurm_worker::run(cfg, handlers, Stop::default()));

    let first = c.add(&["--play", "--custom", "gate"]);
    c.wait_state(&first[0], "assigned", LONG);
    // Held in this order: `park` takes the slot `gate` frees, the other two stay held.
    let parked = c.add(&["--play", "--custom", "park"]);
    c.wait_state(&parked[0], "assigned", LONG);
    let behind = c.add(&["--play", "--count", "2", "--custom", "park"]);
    for id in &behind {
        c.wait_state(id, "assigned", LONG);
    }
    gate.notify_one();
    // `park` starts in the turn that fed the report of `gate`.
    parked_rx.recv_timeout(LONG).expect("the held task started");
    assert_eq!(
        c.state(&first[0]),
        "assigned",
        "the report waits for company while held tasks could start"
    );
    c.wait_state(&first[0], "completed", LONG);
    assert_eq!(c.show(&first[0])["attempts"][0]["output"], "through");
    for id in &behind {
        assert_eq!(
            c.state(id),
            "assigned",
            "still held behind the one that runs"
        );
    }
    rt.shutdown_background();
}
