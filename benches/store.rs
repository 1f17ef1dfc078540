//! What SurrealDB charges for the coordinator's writes: the same 20,000 tasks written four times
//! (as a task's states change), in batches of 1,000, once as one record per task (the layout the
//! store had before its journal) and once through the store's own journal, on `mem://` and on
//! `surrealkv://`. Prints tasks written per second.
//!
//! `cargo bench --workspace --bench store`

use std::time::Instant;

use bytes::Bytes;
use surrealdb::types::{RecordId, SurrealValue};
use tatzelwurm_coordinator::store::{Entry, Store, StoreOptions};
use tatzelwurm_coordinator::task::Task;
use tatzelwurm_protocol::{BodyCodec, Payload, TaskId, TaskInfo, TaskSpec};

const TASKS: usize = 20_000;
const ROUNDS: usize = 4;
const BATCH: usize = 1_000;

#[derive(SurrealValue)]
struct Row {
    id: RecordId,
    body: Bytes,
}

fn tasks() -> Vec<TaskInfo> {
    (0..TASKS)
        .map(|_| {
            Task::new(
                TaskId::new(),
                TaskSpec::new(Payload::Sleep { duration_ms: 0 }),
                "default".into(),
                0,
                true,
            )
            .info
        })
        .collect()
}

/// One upserted record per task, one transaction per batch.
async fn per_task_records(url: &str) -> f64 {
    let db = surrealdb::engine::any::connect(url).await.unwrap();
    db.use_ns("bench").use_db("bench").await.unwrap();
    let tasks = tasks();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for chunk in tasks.chunks(BATCH) {
            let rows: Vec<Row> = chunk
                .iter()
                .map(|t| Row {
                    id: RecordId::new("task", t.id.simple()),
                    body: BodyCodec::Bincode.encode(t).unwrap().freeze(),
                })
                .collect();
            db.query(
                "BEGIN; INSERT INTO task $rows ON DUPLICATE KEY UPDATE body = $input.body; COMMIT;",
            )
            .bind(("rows", rows))
            .await
            .unwrap()
            .check()
            .unwrap();
        }
    }
    (TASKS * ROUNDS) as f64 / start.elapsed().as_secs_f64()
}

/// The store as the coordinator uses it: one journal record per batch, checkpoints as they come.
async fn journal(url: &str) -> f64 {
    let mut opts = StoreOptions::new(url.into());
    // Small enough that checkpoints run during the measurement.
    opts.checkpoint_min_bytes = 1 << 20;
    let store = Store::open(&opts).await.unwrap();
    store.load().await.unwrap();
    let tasks = tasks();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for chunk in tasks.chunks(BATCH) {
            store
                .write(Entry::new(chunk, &[], &[], &[], &[], &[]), None)
                .await
                .unwrap();
        }
    }
    (TASKS * ROUNDS) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kv = |name: &str| format!("surrealkv://{}", dir.path().join(name).display());
    println!(
        "{TASKS} tasks written {ROUNDS} times in batches of {BATCH}: tasks written per second"
    );
    println!("{:<28} {:>12} {:>12}", "layout", "mem://", "surrealkv://");
    let (a, b) = (
        per_task_records("mem://").await,
        per_task_records(&kv("rows")).await,
    );
    println!("{:<28} {a:>12.0} {b:>12.0}", "one record per task");
    let (a, b) = (journal("mem://").await, journal(&kv("journal")).await);
    println!("{:<28} {a:>12.0} {b:>12.0}", "journal (the store)");
}
