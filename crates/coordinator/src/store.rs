//! The SurrealDB edge: the only module that knows the store exists.
//!
//! Each task and worker is one record. The record carries a few plain fields for people who query
//! the database directly (state, priority, block, name) and `body`: the whole record in bincode,
//! which is what the coordinator reads back. Writes come in batches, one transaction each, so one
//! commit (one fsync on surrealkv) covers many changes.

use bytes::Bytes;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use surrealdb::opt::auth::Root;
use surrealdb::types::{RecordId, SurrealValue};
use tatzelwurm_protocol::{BodyCodec, TaskId, TaskInfo, WorkerInfo};
use tracing::info;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("store error: {0}")]
    Db(#[from] surrealdb::Error),
    /// A stored record could not be decoded (written by an incompatible version?).
    #[error("stored {table} record {id} is unreadable: {reason}")]
    Corrupt {
        /// Which table.
        table: &'static str,
        /// Which record.
        id: String,
        /// The decoder's words.
        reason: String,
    },
}

/// Where the store is and how to log in.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `surrealkv://PATH`, `mem://`, `ws://HOST:PORT`, …
    pub url: String,
    /// Root user for a remote server.
    pub user: Option<String>,
    /// Root password for a remote server.
    pub pass: Option<String>,
    /// SurrealDB namespace.
    pub namespace: String,
    /// SurrealDB database.
    pub database: String,
}

#[derive(SurrealValue)]
struct TaskRow {
    id: RecordId,
    state: String,
    priority: i64,
    block: String,
    name: Option<String>,
    created_ms: i64,
    body: Bytes,
}

#[derive(SurrealValue)]
struct WorkerRow {
    id: RecordId,
    name: String,
    host: String,
    state: String,
    body: Bytes,
}

#[derive(SurrealValue)]
struct BodyOnly {
    body: Bytes,
}

/// A connection to the store.
#[derive(Clone)]
pub struct Store {
    db: Surreal<Any>,
}

const CODEC: BodyCodec = BodyCodec::Bincode;

fn encode<T: serde::Serialize>(v: &T) -> Bytes {
    CODEC
        .encode(v)
        .expect("in-memory records always encode")
        .freeze()
}

fn task_key(id: TaskId) -> RecordId {
    RecordId::new("task", id.simple())
}

impl Store {
    /// Connects (creating an embedded database when the URL names one) and selects the namespace.
    pub async fn open(opts: &StoreOptions) -> Result<Store, StoreError> {
        let db = surrealdb::engine::any::connect(opts.url.as_str()).await?;
        if let (Some(user), Some(pass)) = (&opts.user, &opts.pass) {
            db.signin(Root {
                username: user.clone(),
                password: pass.clone(),
            })
            .await?;
        }
        db.use_ns(opts.namespace.as_str())
            .use_db(opts.database.as_str())
            .await?;
        db.query("DEFINE TABLE IF NOT EXISTS task SCHEMALESS; DEFINE TABLE IF NOT EXISTS worker SCHEMALESS;")
            .await?
            .check()?;
        info!(url = %opts.url, ns = %opts.namespace, db = %opts.database, "store open");
        Ok(Store { db })
    }

    /// Every task and worker the store holds.
    pub async fn load(&self) -> Result<(Vec<TaskInfo>, Vec<WorkerInfo>), StoreError> {
        let mut res = self
            .db
            .query("SELECT body FROM task; SELECT body FROM worker;")
            .await?
            .check()?;
        let task_rows: Vec<BodyOnly> = res.take(0)?;
        let worker_rows: Vec<BodyOnly> = res.take(1)?;
        let mut tasks = Vec::with_capacity(task_rows.len());
        for (i, row) in task_rows.into_iter().enumerate() {
            let t: TaskInfo = CODEC.decode(&row.body).map_err(|e| StoreError::Corrupt {
                table: "task",
                id: format!("#{i}"),
                reason: e.to_string(),
            })?;
            tasks.push(t);
        }
        let mut workers = Vec::with_capacity(worker_rows.len());
        for (i, row) in worker_rows.into_iter().enumerate() {
            let w: WorkerInfo = CODEC.decode(&row.body).map_err(|e| StoreError::Corrupt {
                table: "worker",
                id: format!("#{i}"),
                reason: e.to_string(),
            })?;
            workers.push(w);
        }
        Ok((tasks, workers))
    }

    /// Writes a batch in one transaction: all of it is durable when this returns `Ok`, none of it
    /// when it returns `Err`.
    pub async fn write(
        &self,
        tasks: &[TaskInfo],
        removed: &[TaskId],
        workers: &[WorkerInfo],
    ) -> Result<(), StoreError> {
        let mut sql = String::from("BEGIN TRANSACTION;\n");
        if !tasks.is_empty() {
            sql.push_str(
                "INSERT INTO task $tasks ON DUPLICATE KEY UPDATE state = $input.state, \
                 priority = $input.priority, name = $input.name, body = $input.body;\n",
            );
        }
        if !workers.is_empty() {
            sql.push_str(
                "INSERT INTO worker $workers ON DUPLICATE KEY UPDATE name = $input.name, \
                 host = $input.host, state = $input.state, body = $input.body;\n",
            );
        }
        if !removed.is_empty() {
            sql.push_str("DELETE $removed;\n");
        }
        sql.push_str("COMMIT TRANSACTION;");
        let task_rows: Vec<TaskRow> = tasks
            .iter()
            .map(|t| TaskRow {
                id: task_key(t.id),
                state: t.state.as_str().to_string(),
                priority: t.spec.priority as i64,
                block: t.spec.block.as_str().to_string(),
                name: t.spec.name.clone(),
                created_ms: t.times.created_ms as i64,
                body: encode(t),
            })
            .collect();
        let worker_rows: Vec<WorkerRow> = workers
            .iter()
            .map(|w| WorkerRow {
                id: RecordId::new("worker", w.id.0 as i64),
                name: w.name.clone(),
                host: w.host.clone(),
                state: w.state.as_str().to_string(),
                body: encode(w),
            })
            .collect();
        let removed: Vec<RecordId> = removed.iter().map(|id| task_key(*id)).collect();
        self.db
            .query(sql)
            .bind(("tasks", task_rows))
            .bind(("workers", worker_rows))
            .bind(("removed", removed))
            .await?
            .check()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::{Payload, StageTimes, TaskSpec, TaskState};

    fn task() -> TaskInfo {
        TaskInfo {
            id: TaskId::new(),
            spec: TaskSpec::new(Payload::Sleep { duration_ms: 0 }),
            state: TaskState::Ready,
            times: StageTimes::default(),
            attempts: vec![],
            worker: None,
        }
    }

    fn opts(url: String) -> StoreOptions {
        StoreOptions {
            url,
            user: None,
            pass: None,
            namespace: "t".into(),
            database: "t".into(),
        }
    }

    #[tokio::test]
    async fn writes_round_trip_and_removes_delete() {
        let store = Store::open(&opts("mem://".into())).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..10).map(|_| task()).collect();
        store.write(&tasks, &[], &[]).await.unwrap();
        tasks[0].state = TaskState::Completed;
        store.write(&tasks[..1], &[tasks[9].id], &[]).await.unwrap();
        let (mut loaded, workers) = store.load().await.unwrap();
        loaded.sort_by_key(|t| t.id);
        assert_eq!(loaded, tasks[..9].to_vec());
        assert!(workers.is_empty());
    }
}
