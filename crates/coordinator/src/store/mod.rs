//! The SurrealDB edge: the only module that knows the store exists.
//!
//! Every committed batch is one journal record, so a commit costs one write however many tasks
//! changed (a per-task upsert costs SurrealDB about 100 µs; the journal brings that to about a
//! microsecond a task). A surrealkv store keeps its journal in files of its own beside
//! surrealkv's ([`filelog`]: a write in place and an `fdatasync` a record); `mem://` writes the record
//! as a key-value pair, without SurrealQL ([`kvlog`]); a server, as a `journal` table record.
//! When the journal has grown as large as the tables, a checkpoint in the background folds it
//! into 256 bucket records in SurrealDB and drops it. [`image`] holds the layout as plain code;
//! this module does the reading and writing.

mod filelog;
mod handle;
mod image;
mod kvlog;
mod legacy;
mod record;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use surrealdb::opt::auth::Root;
use surrealdb::types::{RecordId, SurrealValue};
use tatzelwurm_protocol::{QueueSettings, TaskInfo, WorkerInfo};
use tracing::{debug, info, warn};

use crate::core::Counters;
use filelog::FileLog;
pub use filelog::SyncMode;
use handle::Handle;
pub use handle::KvMemory;
#[cfg(test)]
pub(crate) use image::decode_task_record;
pub use image::{Entry, Record, encode_task};
use image::{Image, LAYOUT_VERSION, Snapshot, Stored, frame};
use kvlog::KvLog;

/// Decodes a task record as the store or the table holds it (of any layout): once per task when
/// the tables are built, then whenever a packed task is read or changed.
pub fn decode_record(record: &[u8]) -> Result<TaskInfo, StoreError> {
    image::decode_task("task", "record", record)
}

/// What the store holds, read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every task's record, not yet decoded ([`decode_record`]): the store's image holds the
    /// same allocations, which the task table keeps for tasks that wait or have finished.
    pub tasks: Vec<Record>,
    /// Every worker.
    pub workers: Vec<WorkerInfo>,
    /// Every queue whose settings were set.
    pub queues: Vec<QueueSettings>,
    /// The counters as last written (zero when never).
    pub counters: Counters,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation (its words are the message).
    #[error(transparent)]
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
    /// The store was written by a newer tatzelwurm whose layout this one cannot read.
    #[error(
        "the store has layout version {found}; this tatzelwurm reads up to {LAYOUT_VERSION}: upgrade it"
    )]
    NewerLayout {
        /// The version found.
        found: i64,
    },
    /// Another coordinator opened this store after this one: this one must stop writing, or the
    /// two would overwrite each other's journal and checkpoints.
    #[error(
        "another coordinator took over this store (same namespace and database); this one stops"
    )]
    Superseded,
    /// An embedded store's directory is locked by another process: surrealkv lets one process
    /// open it at a time.
    #[error(
        "another coordinator is using this data dir; stop it, or give this one its own --data-dir ({0})"
    )]
    InUse(String),
    /// The embedded store is being reopened after a failed write, or a checkpoint still runs
    /// on the old handle; the write is tried again later.
    #[error("the store is being reopened after a failed write ({0})")]
    Reopening(&'static str),
    /// A journal file could not be written, synced or read (a full disk, a failing disk, no
    /// permission). A failed write is tried again later, in a new segment.
    #[error("journal files in {path}: {source}")]
    Journal {
        /// The journal directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The store URL asks for something this coordinator cannot do.
    #[error("store URL {url}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A write got no answer in time (a remote server that vanished, a network that dropped
    /// packets). Whether it was applied is unknown; the batch is written again, which is safe
    /// because every write carries whole records and replay follows sequence numbers.
    #[error("store write got no answer within {0:?}")]
    Timeout(Duration),
}

/// What a store URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A database inside this process (`surrealkv://PATH`, `mem://`).
    Embedded,
    /// A SurrealDB server (`ws://HOST:PORT`, …), which other coordinators may reach too.
    Server,
}

/// What `url` names, or `None` when this build cannot open it (an unknown scheme, or an engine
/// it was built without), so that a bad `--db` is refused before anything starts.
pub fn kind(url: &str) -> Option<Kind> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    match scheme {
        "surrealkv" | "mem" | "memory" => Some(Kind::Embedded),
        "ws" | "wss" | "http" | "https" => Some(Kind::Server),
        _ => None,
    }
}

/// The directory of an embedded surrealkv store (its URL may carry parameters after `?`, such
/// as `sync`).
fn store_dir(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("surrealkv://").map(|rest| {
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        std::path::PathBuf::from(path)
    })
}

/// The journal's sync mode a store URL asks for (see [`SyncMode::of_url`]).
fn sync_mode(url: &str) -> Result<SyncMode, StoreError> {
    SyncMode::of_url(url).map_err(|why| StoreError::Url {
        url: url.to_string(),
        why,
    })
}

/// The write-ahead log directory of an embedded surrealkv store.
fn wal_dir(url: &str) -> Option<std::path::PathBuf> {
    store_dir(url).map(|dir| dir.join("wal"))
}

/// The files of a write-ahead log directory, by name, with their inode numbers.
fn wal_segments(dir: &std::path::Path) -> std::collections::HashMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.ino())))
        .collect()
}

/// Connects to the store named by `url`: an embedded store (surrealkv, memory) is built here,
/// with `memory`; a server is reached through the SDK.
async fn connect(url: &str, memory: KvMemory) -> Result<Handle, StoreError> {
    let opened = if kind(url) == Some(Kind::Embedded) {
        Handle::open_kv(url, memory).await
    } else {
        surrealdb::engine::any::connect(url)
            .await
            .map(|db| Handle::Any(Arc::new(db)))
    };
    opened.map_err(|e| match e.to_string() {
        words if words.contains("already locked") => StoreError::InUse(words),
        _ => StoreError::Db(e),
    })
}

/// Connects again to an embedded store this process just let go of: its engine closes in the
/// background, so its lock may outlive the handle for a moment.
async fn reconnect(url: &str, memory: KvMemory) -> Result<Handle, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match connect(url, memory).await {
            Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// Finishes opening the store named by `url` from the first connection to it: a surrealkv
/// store that already has a write-ahead log is closed and opened again, so that new writes go
/// to a fresh log segment. A crash or a full disk can leave the last record of surrealkv's
/// (0.21) log torn; read back, such a tail is either repaired (a new file in the old one's
/// place, while the writer still holds the old file) or taken for the end of the log (and new
/// records are appended after it, where the next start stops reading). Either way what is
/// written next would be lost at the next start. Closing flushes what was read into the tables
/// and retires that log.
/// `just_released`: this process let go of the store a moment ago (its lock may linger).
async fn connect_on_a_fresh_log(
    url: &str,
    memory: KvMemory,
    just_released: bool,
) -> Result<Handle, StoreError> {
    let wal = wal_dir(url);
    let before = wal.as_deref().map(wal_segments).unwrap_or_default();
    let db = if just_released {
        reconnect(url, memory).await?
    } else {
        connect(url, memory).await?
    };
    let Some(dir) = wal.filter(|_| !before.is_empty()) else {
        return Ok(db);
    };
    if wal_segments(&dir)
        .iter()
        .any(|(name, ino)| before.get(name).is_some_and(|b| b != ino))
    {
        warn!(wal = %dir.display(), "the store's write-ahead log ended in a torn record (a crash or a full disk cut a write short); it was repaired");
    }
    drop(db);
    let db = reconnect(url, memory).await?;
    debug!(wal = %dir.display(), "store reopened on a fresh write-ahead log segment");
    Ok(db)
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
    /// How long one batch write may take before it counts as failed.
    pub write_timeout: Duration,
    /// The journal is folded into the buckets once it is this large (and as large as the
    /// tables): small enough that a start replays little, large enough that a small queue is not
    /// rewritten all the time.
    pub checkpoint_min_bytes: u64,
    /// The memory an embedded surrealkv store may keep for itself.
    pub kv_memory: KvMemory,
}

impl StoreOptions {
    /// The defaults for a store URL.
    pub fn new(url: String) -> StoreOptions {
        StoreOptions {
            url,
            user: None,
            pass: None,
            namespace: "tatzelwurm".into(),
            database: "main".into(),
            write_timeout: Duration::from_secs(30),
            checkpoint_min_bytes: 64 << 20,
            kv_memory: KvMemory::default(),
        }
    }
}

#[derive(SurrealValue)]
struct JournalRow {
    id: RecordId,
    seq: i64,
    body: Bytes,
}

#[derive(SurrealValue)]
struct SeqBody {
    seq: i64,
    body: Bytes,
}

#[derive(SurrealValue)]
struct BodyRow {
    id: RecordId,
    body: Bytes,
}

#[derive(SurrealValue)]
struct BodyOnly {
    body: Bytes,
}

#[derive(SurrealValue)]
struct Upto {
    upto: i64,
}

#[derive(SurrealValue)]
struct Layout {
    version: i64,
}

/// The writer's side of the store: what is stored, and whether a checkpoint is under way.
struct State {
    image: Image,
    next_seq: i64,
    checkpointing: bool,
    /// A write failed on a surrealkv store: its write-ahead log may hold part of that write,
    /// and what surrealkv (0.21) appends after such a part is lost at the next start. The next
    /// write first reopens the store (see [`Store::reopen`]).
    must_reopen: bool,
    /// How long the checkpoints took.
    checkpoint_seconds: crate::metrics::Histogram,
    /// Records of the layout before journals are still stored; the next checkpoint deletes them.
    legacy: bool,
    /// The newest counters written, with the sequence number of the record that carried them:
    /// a checkpoint stores them beside its mark before it deletes journal files that hold them.
    counters_at: Option<(i64, Bytes)>,
}

impl Default for State {
    fn default() -> Self {
        State {
            image: Image::default(),
            // Sequence numbers start at 1: a store without a checkpoint has `upto` 0.
            next_seq: 1,
            checkpointing: false,
            must_reopen: false,
            checkpoint_seconds: crate::metrics::Histogram::new(crate::metrics::SECONDS),
            legacy: false,
            counters_at: None,
        }
    }
}

/// A connection to the store. Clones share it; writes must come one at a time (the actor's
/// single commit in flight), checkpoints run beside them.
#[derive(Clone)]
pub struct Store {
    /// The database handle; `None` only while an embedded store is reopened.
    conn: Arc<Mutex<Option<Handle>>>,
    /// The URL, SurrealDB namespace and database, to reopen an embedded store with.
    url: String,
    kv_memory: KvMemory,
    ns: String,
    database: String,
    /// Where an embedded store keeps its journal and counters; `None` when writes are fenced
    /// (a server, which has no key-value access: its journal is the `journal` table).
    log: Option<KvLog>,
    /// A surrealkv store's journal files; its key-value journal above is then only read (what
    /// a version before layout 5 wrote) and holds the counters a checkpoint stores.
    files: Option<FileLog>,
    /// This coordinator's mark in `meta:owner`.
    owner: String,
    /// Whether writes check the mark (a server that other coordinators can reach).
    fenced: bool,
    write_timeout: Duration,
    checkpoint_min_bytes: u64,
    state: Arc<Mutex<State>>,
    /// Cancelled by [`Store::close`]: a checkpoint still running stops at its next step (the
    /// journal keeps what it would have folded), so nothing holds the store past shutdown.
    closing: tokio_util::sync::CancellationToken,
}

/// The largest journal record a batch is written as (a single larger task gets a record of its
/// own). A SurrealDB server refuses WebSocket messages over 128 MiB by default, and large records
/// cost it memory; clients may send a 16 MiB task each, and a batch gathers many clients.
pub(crate) const ENTRY_BYTES: usize = 4 << 20;

/// What the ownership check throws, to tell it from other failures.
const SUPERSEDED: &str = "tatzelwurm: superseded by another coordinator";

const SCHEMA: &str = "DEFINE TABLE IF NOT EXISTS journal SCHEMALESS;
DEFINE TABLE IF NOT EXISTS bucket SCHEMALESS;
DEFINE TABLE IF NOT EXISTS meta SCHEMALESS;
DEFINE TABLE IF NOT EXISTS task SCHEMALESS;
DEFINE TABLE IF NOT EXISTS worker SCHEMALESS;";

/// Refuses a store written in a newer layout, and marks a new or older one with this layout.
async fn check_layout(db: &Handle) -> Result<(), StoreError> {
    let found: Vec<Layout> = db
        .query("SELECT version FROM meta:layout")
        .await?
        .check()?
        .take(0)?;
    match found.first() {
        Some(l) if l.version > LAYOUT_VERSION => Err(StoreError::NewerLayout { found: l.version }),
        Some(l) if l.version == LAYOUT_VERSION => Ok(()),
        // An older layout is read as it is; the mark moves up at once, since what this version
        // writes from now on an older one could not read (it refuses with a clear error).
        _ => {
            db.query("UPSERT meta:layout CONTENT { version: $v }")
                .bind(("v", LAYOUT_VERSION))
                .await?
                .check()?;
            Ok(())
        }
    }
}

impl Store {
    /// Connects (creating an embedded database when the URL names one), selects the namespace
    /// and database, and checks that this version can read what is there.
    pub async fn open(opts: &StoreOptions) -> Result<Store, StoreError> {
        // Before anything is opened: the journal's sync mode is read again by `attach`.
        sync_mode(&opts.url)?;
        let db = connect_on_a_fresh_log(&opts.url, opts.kv_memory, false).await?;
        if let (Some(user), Some(pass)) = (&opts.user, &opts.pass) {
            db.signin(Root {
                username: user.clone(),
                password: pass.clone(),
            })
            .await?;
        }
        db.use_ns_db(&opts.namespace, &opts.database).await?;
        // An embedded store belongs to this process alone (surrealkv locks its directory, and
        // mem:// is private), so only a server needs the ownership check in every write.
        let server = kind(&opts.url) == Some(Kind::Server);
        let store = Store::attach(db, opts, server).await?;
        info!(url = %opts.url, ns = %opts.namespace, db = %opts.database, "store open");
        Ok(store)
    }

    /// How long the checkpoints written so far took.
    pub fn checkpoint_seconds(&self) -> crate::metrics::Histogram {
        self.state().checkpoint_seconds.clone()
    }

    /// The database handle, unless the store is being reopened.
    fn db(&self) -> Result<Handle, StoreError> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening("the old handle is closing"))
    }

    /// Closes a surrealkv store whose write failed and opens it again, then reads back what it
    /// holds. surrealkv (0.21) does not undo a write-ahead-log append that an i/o error (a full
    /// disk) cut short: the part already in the file stays, the writer's position does not
    /// move, and every record appended after it is unreadable at the next start, so a crash
    /// would lose writes acknowledged long after the disk had room again. Closing flushes what
    /// was committed into its tables; opening on a fresh log (as at start) leaves the torn part
    /// behind. What the store holds is read back because a checkpoint that ran beside the failed
    /// write may have landed after the torn part and been lost with it.
    async fn reopen(&self) -> Result<(), StoreError> {
        if self.state().checkpointing {
            return Err(StoreError::Reopening(
                "a checkpoint still runs on the old handle",
            ));
        }
        let old = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
        let db = connect_on_a_fresh_log(&self.url, self.kv_memory, true).await?;
        db.use_ns_db(&self.ns, &self.database).await?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(db);
        let (buckets, stored, _) = self.read_stored().await?;
        let replayed = image::replay_onto(buckets, stored)?;
        let mut st = self.state();
        st.next_seq = st.next_seq.max(replayed.image.last_seq() + 1);
        st.image = replayed.image;
        if st.legacy {
            st.image.all_dirty();
        }
        st.must_reopen = false;
        warn!(url = %self.url, "store reopened after a failed write; it writes again");
        Ok(())
    }

    /// Takes a connected database over: checks its layout and makes this coordinator its owner,
    /// so that a coordinator that had it before stops at its next write.
    async fn attach(db: Handle, opts: &StoreOptions, fenced: bool) -> Result<Store, StoreError> {
        db.query(SCHEMA).await?.check()?;
        check_layout(&db).await?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let previous: Option<String> = db
            .query("SELECT VALUE coordinator FROM ONLY meta:owner")
            .query("UPSERT meta:owner CONTENT { coordinator: $me }")
            .bind(("me", owner.clone()))
            .await?
            .check()?
            .take(0)?;
        if let Some(previous) = previous {
            info!(%previous, now = %owner, "took the store over from the coordinator that had it");
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(Some(db))),
            url: opts.url.clone(),
            kv_memory: opts.kv_memory,
            ns: opts.namespace.clone(),
            database: opts.database.clone(),
            log: (!fenced).then(|| KvLog::new(&opts.namespace, &opts.database)),
            files: match store_dir(&opts.url).filter(|_| !fenced) {
                Some(dir) => Some(FileLog::new(
                    &dir,
                    &opts.namespace,
                    &opts.database,
                    sync_mode(&opts.url)?,
                )),
                None => None,
            },
            owner,
            fenced,
            write_timeout: opts.write_timeout,
            checkpoint_min_bytes: opts.checkpoint_min_bytes,
            state: Arc::default(),
            closing: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Runs `sql` (statements without BEGIN/COMMIT) in one transaction that first checks this
    /// coordinator still owns the store; `$me` is bound here. With `claim`, the check writes the
    /// owner record, so that a takeover racing this transaction conflicts with it instead of
    /// slipping past; journal writes claim, checkpoints only read (they run beside journal writes
    /// and must not conflict with them).
    async fn owned(
        &self,
        claim: bool,
        sql: &str,
        bind: impl FnOnce(handle::Query) -> handle::Query,
    ) -> Result<(), StoreError> {
        let check = if !self.fenced {
            "false"
        } else if claim {
            "array::len(UPDATE meta:owner SET writes += 1 WHERE coordinator = $me) = 0"
        } else {
            "(SELECT VALUE coordinator FROM ONLY meta:owner) != $me"
        };
        let guarded = format!(
            "BEGIN;
             IF {check} {{ THROW '{SUPERSEDED}'; }};
             {sql}
             COMMIT;"
        );
        let db = self.db()?;
        let query = bind(db.query(guarded).bind(("me", self.owner.clone())));
        match self.timed(query).await?.check() {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains(SUPERSEDED) => Err(StoreError::Superseded),
            Err(e) => Err(e.into()),
        }
    }

    /// The key-value journal and the datastore it is in, for an embedded store.
    fn kv_log<'a>(
        &'a self,
        db: &'a Handle,
    ) -> Option<(&'a KvLog, &'a surrealdb_core::kvs::Datastore)> {
        Some((self.log.as_ref()?, db.datastore()?))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data updated in a few lines; a panic there is a bug, not a reason
        // to stop writing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every task, worker and set queue the store holds. Records of the layout before
    /// journals are read too, and rewritten in the current layout before this returns.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let started = std::time::Instant::now();
        let (buckets, stored, counters_at) = self.read_stored().await?;
        self.state().counters_at = counters_at.clone();
        let counters = self.read_counters(counters_at.map(|(_, c)| c)).await?;
        let read_ms = started.elapsed().as_millis() as u64;
        let legacy = !stored.legacy_tasks.is_empty() || !stored.legacy_workers.is_empty();
        let replayed = image::replay_onto(buckets, stored)?;
        info!(
            tasks = replayed.tasks.len(),
            table_bytes = replayed.image.table_bytes(),
            last_seq = replayed.image.last_seq(),
            stale_entries = replayed.stale_entries,
            read_ms,
            replay_ms = started.elapsed().as_millis() as u64 - read_ms,
            "store replayed"
        );
        {
            let mut st = self.state();
            st.next_seq = replayed.image.last_seq() + 1;
            st.image = replayed.image;
            st.legacy = legacy;
            if legacy {
                st.image.all_dirty();
            }
        }
        if legacy {
            info!("rewriting the store from one record per task to the journal layout");
            self.checkpoint().await?;
        }
        Ok(Loaded {
            tasks: replayed.tasks,
            workers: replayed.workers,
            queues: replayed.queues,
            counters,
        })
    }

    /// The counters last written with a batch, zero when none were: an embedded store's (from
    /// its journal files or key-value pairs), else (a server, or a store of layout 3)
    /// `meta:counters`.
    async fn read_counters(&self, kv: Option<Bytes>) -> Result<Counters, StoreError> {
        let body = match kv {
            Some(body) => Some(body),
            None => {
                let rows: Vec<BodyOnly> = self
                    .db()?
                    .query("SELECT body FROM meta:counters")
                    .await?
                    .check()?
                    .take(0)?;
                rows.into_iter().next().map(|r| r.body)
            }
        };
        match body {
            None => Ok(Counters::default()),
            Some(body) => image::decode("meta", "counters", &body),
        }
    }

    /// What the store holds: the buckets' tasks already in an image (read a few at a time),
    /// the rest as read, and an embedded store's newest counters with the sequence number of
    /// the record that carried them. The journal is the `journal` table's records (a server's,
    /// or an embedded store's from before layout 4), an embedded store's key-value ones (`mem://`,
    /// or surrealkv before layout 5) and a surrealkv store's journal files.
    async fn read_stored(&self) -> Result<(Image, Stored, Option<(i64, Bytes)>), StoreError> {
        let mut res = self
            .db()?
            .query("SELECT upto FROM meta:checkpoint")
            .query("SELECT body FROM meta:workers")
            .query("SELECT seq, body FROM journal")
            .query("SELECT body FROM task")
            .query("SELECT body FROM worker")
            .query("SELECT body FROM meta:queues")
            .await?
            .check()?;
        let upto: Vec<Upto> = res.take(0)?;
        let workers: Vec<BodyOnly> = res.take(1)?;
        let journal: Vec<SeqBody> = res.take(2)?;
        let legacy_tasks: Vec<BodyOnly> = res.take(3)?;
        let legacy_workers: Vec<BodyOnly> = res.take(4)?;
        let queues: Vec<BodyOnly> = res.take(5)?;
        let body = |r: BodyOnly| r.body;
        let mut journal: Vec<(i64, Bytes)> = journal.into_iter().map(|r| (r.seq, r.body)).collect();
        // The newest counters by the sequence number of the record that carried them: a
        // checkpoint's copy, or a journal file's record after it. The key-value ones of a
        // version before layout 5 are older than both.
        let mut counters_at: Option<(i64, Bytes)> = None;
        if let Some((log, ds)) = self.kv_log(&self.db()?) {
            let read = log.read(ds).await?;
            journal.extend(read.journal);
            counters_at = read.counters_at.or(read.counters.map(|c| (0, c)));
        }
        if let Some(files) = &self.files {
            let read = files.read().await?;
            journal.extend(read.journal);
            if let Some((seq, c)) = read.counters
                && counters_at.as_ref().is_none_or(|(at, _)| *at < seq)
            {
                counters_at = Some((seq, c));
            }
        }
        let mut buckets = Image::default();
        self.read_buckets(&mut buckets).await?;
        // `Stored` has one more field in tests (their buckets), which the update fills here.
        #[cfg_attr(not(test), allow(clippy::needless_update))]
        let stored = Stored {
            legacy_tasks: legacy_tasks.into_iter().map(body).collect(),
            legacy_workers: legacy_workers.into_iter().map(body).collect(),
            workers: workers.into_iter().next().map(body),
            queues: queues.into_iter().next().map(body),
            upto: upto.first().map_or(0, |u| u.upto),
            journal,
            // The buckets are read apart, a few at a time, by `read_buckets`.
            ..Stored::default()
        };
        Ok((buckets, stored, counters_at))
    }

    /// Reads the buckets a sixteenth at a time into `image`, each group's bodies dropped once
    /// their records are in it: at ten million tasks the bodies are about a gigabyte.
    async fn read_buckets(&self, image: &mut Image) -> Result<(), StoreError> {
        const GROUP: usize = image::BUCKETS / 16;
        let mut read = 0;
        for first in (0..image::BUCKETS).step_by(GROUP) {
            let rows: Vec<BodyOnly> = self
                .db()?
                .query(format!(
                    "SELECT body FROM bucket:{first}..{}",
                    first + GROUP
                ))
                .await?
                .check()?
                .take(0)?;
            for row in rows {
                image::load_bucket(image, read, &row.body)?;
                read += 1;
            }
        }
        Ok(())
    }

    async fn timed<T, E>(
        &self,
        f: impl std::future::IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, StoreError>
    where
        StoreError: From<E>,
    {
        tokio::time::timeout(self.write_timeout, f.into_future())
            .await
            .map_err(|_| StoreError::Timeout(self.write_timeout))?
            .map_err(StoreError::from)
    }

    /// Writes a batch ([`Entry::new`]) as journal records: one, unless the batch is larger than
    /// [`ENTRY_BYTES`]. All of it is durable when this returns `Ok`; when it returns `Err`, a
    /// prefix of its parts may be, each part whole (the caller writes the batch again, which is
    /// safe: replay follows sequence numbers, and what an entry holds may be applied again).
    /// Starts a checkpoint in the background when one is due.
    pub async fn write(&self, entry: Entry, counters: Option<Counters>) -> Result<(), StoreError> {
        if self.state().must_reopen {
            self.reopen().await?;
        }
        let result = self.write_journal(entry, counters).await;
        if result.is_err() {
            self.failed_write();
        }
        result?;
        let due = {
            let st = self.state();
            !st.checkpointing && st.image.wants_checkpoint(self.checkpoint_min_bytes)
        };
        if due {
            // On a thread of the blocking pool, not on a runtime thread: a checkpoint rewrites
            // the whole table (seconds of CPU at millions of tasks), and on the coordinator's
            // runtime of one thread that held the actor back as long (a million-task drain went
            // a tenth slower). The runtime's drivers still serve its I/O and timers.
            let store = self.clone();
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let result =
                    runtime.block_on(store.closing.run_until_cancelled(store.checkpoint()));
                if let Some(Err(e)) = result {
                    warn!(error = %e, "checkpoint failed; the journal keeps everything, retrying later");
                }
            });
        }
        Ok(())
    }

    /// Stops a checkpoint that is running in the background (and any started later), before
    /// the coordinator exits: it would otherwise hold the store open on its thread after the
    /// runtime is gone. What it had not folded stays in the journal.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Notes that a write failed: a surrealkv store is reopened before the next one.
    fn failed_write(&self) {
        if wal_dir(&self.url).is_some() {
            self.state().must_reopen = true;
        }
    }

    /// The journal records of one batch, in order; the image follows each one written.
    async fn write_journal(
        &self,
        entry: Entry,
        counters: Option<Counters>,
    ) -> Result<(), StoreError> {
        // The counters go with the first part: whatever a later part holds, its ids and numbers
        // were handed out before the batch was taken.
        let mut counters = counters.map(|c| image::encode(&c));
        for entry in entry.split(ENTRY_BYTES) {
            let body = entry.to_body();
            let body_len = body.len();
            let seq = {
                let mut st = self.state();
                let seq = st.next_seq;
                // A failed write burns its number; replay only needs the order.
                st.next_seq += 1;
                seq
            };
            let carried = counters.take();
            let db = self.db()?;
            match (&self.files, self.kv_log(&db)) {
                (Some(files), _) => self.timed(files.append(seq, body, carried.clone())).await?,
                (None, Some((log, ds))) => {
                    self.timed(log.append(ds, seq, body, carried.clone()))
                        .await?
                }
                (None, None) => self.create_journal(seq, body, carried.clone()).await?,
            }
            // The image follows the journal part by part, so that it never lacks a committed one.
            let mut st = self.state();
            st.image.apply(seq, entry, body_len);
            if let Some(c) = carried {
                st.counters_at = Some((seq, c));
            }
        }
        Ok(())
    }

    /// Writes journal record `seq` as a `journal` table record (a server's journal), and the
    /// counters with it when they moved, in one transaction that checks this coordinator still
    /// owns the store.
    async fn create_journal(
        &self,
        seq: i64,
        body: Bytes,
        counters: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let row = JournalRow {
            id: RecordId::new("journal", seq),
            seq,
            body,
        };
        match counters {
            None => {
                self.owned(true, "CREATE journal CONTENT $row RETURN NONE;", |q| {
                    q.bind(("row", row))
                })
                .await
            }
            Some(body) => {
                self.owned(
                    true,
                    "CREATE journal CONTENT $row RETURN NONE; \
                     UPSERT meta:counters CONTENT { body: $counters } RETURN NONE;",
                    |q| q.bind(("row", row)).bind(("counters", body)),
                )
                .await
            }
        }
    }

    /// Folds the journal into the buckets now: writes every bucket that changed, then, in one
    /// transaction, the workers, the new checkpoint mark and the deletion of the journal it
    /// covers. Returns without doing anything when a checkpoint is already running.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (snap, legacy) = {
            let mut st = self.state();
            // One at a time; none on a store that waits to be reopened (the next write does).
            if st.checkpointing || st.must_reopen {
                return Ok(());
            }
            st.checkpointing = true;
            (st.image.snapshot(), st.legacy)
        };
        let started = std::time::Instant::now();
        let result = self.write_checkpoint(&snap, legacy).await;
        let mut st = self.state();
        st.checkpointing = false;
        match &result {
            Ok(()) => {
                st.checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                st.image.checkpointed(&snap);
                st.legacy &= !legacy;
                info!(
                    upto = snap.upto,
                    buckets = snap.buckets.len(),
                    journal_bytes = snap.journal_bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(_) => st.image.checkpoint_failed(&snap),
        }
        drop(st);
        if result.is_err() {
            self.failed_write();
        }
        result
    }

    async fn write_checkpoint(&self, snap: &Snapshot, legacy: bool) -> Result<(), StoreError> {
        // Buckets go in transactions of 2 MiB each; any of them may land without the rest
        // (a crash between them), which replay tolerates because the journal is still there.
        // Each is held three times while it is written (framed, as SurrealDB values, in
        // surrealkv's batch): 8 MiB transactions added 20 MB to the peak of a million queued.
        // A quarter of the write buffer at most, so that a few fill one before it is flushed.
        let txn_bytes = (2 << 20).min(self.kv_memory.memtable_bytes as usize / 4);
        // Every write here says RETURN NONE: nothing reads what they wrote back, and a bucket
        // transaction returned its 2 MiB of bodies as SurrealDB values to be dropped (half a
        // microsecond of coordinator CPU a task in a noop run that checkpoints).
        let mut rows: Vec<BodyRow> = Vec::new();
        let mut size = 0;
        let mut buckets = snap.buckets.iter().peekable();
        while let Some(b) = buckets.next() {
            let items = self.state().image.bucket_records(*b)?;
            let body = frame(items.iter().map(|i| &i[..]));
            drop(items);
            size += body.len();
            rows.push(BodyRow {
                id: RecordId::new("bucket", *b as i64),
                body,
            });
            if size >= txn_bytes || buckets.peek().is_none() {
                size = 0;
                self.timed(
                    self.db()?
                        .query(
                            "BEGIN; INSERT INTO bucket $rows ON DUPLICATE KEY UPDATE \
                             body = $input.body RETURN NONE; COMMIT;",
                        )
                        .bind(("rows", std::mem::take(&mut rows))),
                )
                .await?
                .check()?;
            }
        }
        // Ranges of record ids rather than `WHERE seq <= $upto`, which reads every journal
        // record (the later ones too) to test its `seq`. A DELETE still reads the records it
        // deletes and holds them until the statement ends, so the journal goes in up to 64
        // statements of a 64th each (one statement over all of it held the whole journal, a
        // quarter of the peak memory of a coordinator queueing a million tasks). The first range
        // takes stale late entries, below the previous checkpoint.
        let after = snap.after.min(snap.upto);
        let mut sql = format!(
            "UPSERT meta:workers CONTENT {{ body: $workers }} RETURN NONE;
             UPSERT meta:queues CONTENT {{ body: $queues }} RETURN NONE;
             UPSERT meta:checkpoint CONTENT {{ upto: $upto }} RETURN NONE;
             DELETE journal:..={after};"
        );
        let mut from = after + 1;
        let per_statement = ((snap.upto - from + 1 + 63) / 64).max(1);
        while from <= snap.upto {
            let to = (from + per_statement - 1).min(snap.upto);
            sql.push_str(&format!("DELETE journal:{from}..={to};"));
            from = to + 1;
        }
        if legacy {
            sql.push_str("DELETE task; DELETE worker;");
        }
        let workers = frame(snap.workers.iter().map(|w| &w[..]));
        let queues = frame(snap.queues.iter().map(|q| &q[..]));
        self.owned(false, &sql, |q| {
            q.bind(("workers", workers))
                .bind(("queues", queues))
                .bind(("upto", snap.upto))
        })
        .await?;
        // An embedded store's journal goes once the mark is in: a crash between the two leaves
        // records at or below the mark, which replay skips and the next checkpoint deletes
        // (this deletes everything up to the mark, not from the previous one). Journal files
        // may hold the newest counters, which go beside the mark first.
        let db = self.db()?;
        if let Some((log, ds)) = self.kv_log(&db) {
            if let Some(files) = &self.files {
                let counters_at = self.state().counters_at.clone();
                if let Some((seq, c)) = counters_at {
                    self.timed(log.set_counters_at(ds, seq, &c)).await?;
                }
                self.timed(files.drop_upto(snap.upto)).await?;
            }
            self.timed(log.drop_upto(ds, snap.upto)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::image::tests::task;
    use super::*;
    use tatzelwurm_protocol::{TaskId, TaskState, WorkerId};

    fn opts(url: &str, checkpoint_min_bytes: u64) -> StoreOptions {
        StoreOptions {
            namespace: "t".into(),
            database: "t".into(),
            checkpoint_min_bytes,
            ..StoreOptions::new(url.into())
        }
    }

    #[tokio::test]
    async fn a_store_url_with_an_unknown_sync_mode_is_refused_before_anything_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let url = format!("surrealkv://{}?sync=banana", path.display());
        let e = Store::open(&opts(&url, u64::MAX))
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, StoreError::Url { .. }), "{e}");
        assert!(e.to_string().contains("sync=banana"), "{e}");
        assert!(!path.exists(), "nothing was opened");
    }

    async fn count(store: &Store, table: &str) -> usize {
        let mut res = store
            .db()
            .unwrap()
            .query(format!("SELECT count() AS n FROM {table} GROUP ALL"))
            .await
            .unwrap();
        let n: Option<i64> = res.take((0, "n")).unwrap();
        n.unwrap_or(0) as usize
    }

    /// The sequence numbers of the journal records the store holds: the `journal` table's and
    /// the key-value ones.
    async fn journal_seqs(store: &Store) -> Vec<i64> {
        let db = store.db().unwrap();
        let rows: Vec<Upto> = db
            .query("SELECT seq AS upto FROM journal")
            .await
            .unwrap()
            .take(0)
            .unwrap();
        let mut seqs: Vec<i64> = rows.iter().map(|u| u.upto).collect();
        if let Some((log, ds)) = store.kv_log(&db) {
            seqs.extend(log.read(ds).await.unwrap().journal.iter().map(|(s, _)| *s));
        }
        if let Some(files) = &store.files {
            seqs.extend(files.read().await.unwrap().journal.iter().map(|(s, _)| *s));
        }
        seqs.sort();
        seqs
    }

    async fn loaded(store: &Store) -> Vec<TaskInfo> {
        decoded(store.load().await.unwrap().tasks)
    }

    fn decoded(records: Vec<Record>) -> Vec<TaskInfo> {
        let mut tasks: Vec<TaskInfo> = records.iter().map(|r| decode_record(r).unwrap()).collect();
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    #[test]
    fn store_urls_are_told_apart_and_unknown_ones_refused() {
        assert_eq!(kind("surrealkv:///var/lib/t/store"), Some(Kind::Embedded));
        assert_eq!(kind("mem://"), Some(Kind::Embedded));
        assert_eq!(kind("ws://db:8000"), Some(Kind::Server));
        assert_eq!(kind("wss://db:443"), Some(Kind::Server));
        for bad in ["foo://bar", "rocksdb:///x", "relative/path", ""] {
            assert_eq!(kind(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn writes_round_trip_and_removes_delete() {
        let store = Store::open(&opts("mem://", 64 << 20)).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..10).map(|_| task()).collect();
        store.write(Entry::of_tasks(&tasks), None).await.unwrap();
        tasks[0].state = TaskState::Completed;
        store
            .write(
                Entry::new(&tasks[..1], &[], &[tasks[9].id], &[], &[], &[]),
                None,
            )
            .await
            .unwrap();
        let Loaded {
            tasks: records,
            workers,
            ..
        } = store.load().await.unwrap();
        let got = decoded(records);
        tasks.sort_by_key(|t| t.id);
        tasks.retain(|t| got.iter().any(|g| g.id == t.id));
        assert_eq!(got.len(), 9);
        assert_eq!(got, tasks);
        assert!(workers.is_empty());
        assert_eq!(journal_seqs(&store).await.len(), 2, "one record per batch");
    }

    fn worker(id: u64) -> WorkerInfo {
        WorkerInfo {
            id: WorkerId(id),
            name: format!("w{id}"),
            host: "h".into(),
            block: tatzelwurm_protocol::BlockType::Async,
            slots: 1,
            running: 0,
            tags: vec![],
            handlers: vec![],
            connected_ms: 0,
            last_heartbeat_ms: 0,
            state: tatzelwurm_protocol::WorkerState::Lost,
        }
    }

    #[tokio::test]
    async fn counters_written_with_a_batch_are_read_back_and_survive_a_checkpoint() {
        let store = Store::open(&opts("mem://", u64::MAX)).await.unwrap();
        assert_eq!(store.load().await.unwrap().counters, Counters::default());
        let c = Counters {
            next_worker: 7,
            next_number: 42,
            next_batch: 3,
        };
        store
            .write(Entry::of_tasks(&[task()]), Some(c))
            .await
            .unwrap();
        // A batch without counters leaves them as they were.
        store.write(Entry::of_tasks(&[task()]), None).await.unwrap();
        store.checkpoint().await.unwrap();
        assert_eq!(store.load().await.unwrap().counters, c);
    }

    /// A surrealkv store in a directory of its own that checkpoints only when a test asks.
    async fn surrealkv_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("surrealkv://{}", dir.path().join("s").display());
        let store = Store::open(&opts(&url, u64::MAX)).await.unwrap();
        (dir, store)
    }

    fn counters(n: u64) -> Counters {
        Counters {
            next_worker: n,
            next_number: n,
            next_batch: n,
        }
    }

    #[tokio::test]
    async fn counters_in_journal_files_survive_the_checkpoint_that_deletes_the_files() {
        let (_dir, store) = surrealkv_store().await;
        assert!(store.files.is_some(), "a surrealkv store journals in files");
        store
            .write(Entry::of_tasks(&[task()]), Some(counters(5)))
            .await
            .unwrap();
        store.checkpoint().await.unwrap();
        // A batch without counters, then a checkpoint that deletes the file with record 1.
        store.write(Entry::of_tasks(&[task()]), None).await.unwrap();
        store.checkpoint().await.unwrap();
        assert_eq!(journal_seqs(&store).await, vec![2]);
        assert_eq!(store.load().await.unwrap().counters, counters(5));
        // Newer counters in a journal file win over the checkpoint's copy.
        store
            .write(Entry::of_tasks(&[task()]), Some(counters(6)))
            .await
            .unwrap();
        let loaded_now = store.load().await.unwrap();
        assert_eq!(loaded_now.counters, counters(6));
        assert_eq!(loaded_now.tasks.len(), 3);
    }

    #[tokio::test]
    async fn a_surrealkv_store_of_layout_4_is_read_and_its_key_value_journal_folded_away() {
        let (_dir, store) = surrealkv_store().await;
        // What version 4 wrote: key-value journal records, the counters with them.
        let mut tasks: Vec<TaskInfo> = (0..3).map(|_| task()).collect();
        let db = store.db().unwrap();
        let (log, ds) = store.kv_log(&db).unwrap();
        let body = Entry::of_tasks(&tasks[..2]).to_body();
        log.append(ds, 1, body, Some(image::encode(&counters(4))))
            .await
            .unwrap();
        let loaded_now = store.load().await.unwrap();
        assert_eq!(loaded_now.counters, counters(4));
        assert_eq!(loaded_now.tasks.len(), 2);
        // This version goes on in files.
        tasks[0].state = TaskState::Completed;
        store
            .write(
                Entry::of_tasks(&[tasks[0].clone(), tasks[2].clone()]),
                Some(counters(5)),
            )
            .await
            .unwrap();
        assert_eq!(journal_seqs(&store).await, vec![1, 2]);
        assert_eq!(
            log.read(ds).await.unwrap().journal.len(),
            1,
            "1 in key-value"
        );
        tasks.sort_by_key(|t| t.id);
        let loaded_now = store.load().await.unwrap();
        assert_eq!(loaded_now.counters, counters(5), "the file's are newer");
        assert_eq!(decoded(loaded_now.tasks), tasks);
        store.checkpoint().await.unwrap();
        assert!(log.read(ds).await.unwrap().journal.is_empty(), "folded");
        let loaded_now = store.load().await.unwrap();
        assert_eq!(loaded_now.counters, counters(5));
        assert_eq!(decoded(loaded_now.tasks), tasks);
    }

    #[tokio::test]
    async fn an_embedded_store_of_layout_3_is_read_and_its_journal_table_folded_away() {
        let o = opts("mem://", u64::MAX);
        let open = Store::open(&o).await.unwrap();
        // What version 3 wrote: journal records and counters in SurrealDB tables (a fenced
        // store writes them so today), and its layout mark.
        let old = Store::attach(open.db().unwrap(), &o, true).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..3).map(|_| task()).collect();
        let c3 = Counters {
            next_worker: 3,
            next_number: 3,
            next_batch: 3,
        };
        old.write(Entry::of_tasks(&tasks[..2]), Some(c3))
            .await
            .unwrap();
        old.db()
            .unwrap()
            .query("UPSERT meta:layout CONTENT { version: 3 }")
            .await
            .unwrap()
            .check()
            .unwrap();
        // This version opens it: it reads both journals, then writes key-value records.
        let new = Store::attach(open.db().unwrap(), &o, false).await.unwrap();
        let loaded_now = new.load().await.unwrap();
        assert_eq!(loaded_now.counters, c3);
        let mut two = tasks[..2].to_vec();
        two.sort_by_key(|t| t.id);
        assert_eq!(decoded(loaded_now.tasks), two);
        let c4 = Counters {
            next_worker: 4,
            next_number: 4,
            next_batch: 4,
        };
        tasks[0].state = TaskState::Completed;
        new.write(
            Entry::of_tasks(&[tasks[0].clone(), tasks[2].clone()]),
            Some(c4),
        )
        .await
        .unwrap();
        assert_eq!(
            journal_seqs(&new).await,
            vec![1, 2],
            "one record in each journal"
        );
        tasks.sort_by_key(|t| t.id);
        let loaded_now = new.load().await.unwrap();
        assert_eq!(
            loaded_now.counters, c4,
            "the key-value counters are the newer"
        );
        assert_eq!(decoded(loaded_now.tasks), tasks);
        new.checkpoint().await.unwrap();
        assert!(journal_seqs(&new).await.is_empty(), "both journals folded");
        let loaded_now = new.load().await.unwrap();
        assert_eq!(loaded_now.counters, c4);
        assert_eq!(decoded(loaded_now.tasks), tasks);
    }

    #[tokio::test]
    async fn forgotten_workers_stay_forgotten_with_and_without_a_checkpoint() {
        let store = Store::open(&opts("mem://", 64 << 20)).await.unwrap();
        store
            .write(
                Entry::new::<TaskInfo>(&[], &[], &[], &[worker(1), worker(2)], &[], &[]),
                None,
            )
            .await
            .unwrap();
        store
            .write(
                Entry::new::<TaskInfo>(&[], &[], &[], &[], &[WorkerId(1)], &[]),
                None,
            )
            .await
            .unwrap();
        let workers = store.load().await.unwrap().workers;
        assert_eq!(workers, vec![worker(2)], "replayed from the journal");
        store.checkpoint().await.unwrap();
        let workers = store.load().await.unwrap().workers;
        assert_eq!(workers, vec![worker(2)], "read from the checkpoint");
    }

    #[tokio::test]
    async fn a_coordinator_that_was_taken_over_cannot_write() {
        // Checkpoints only when the test asks: a background one started by a write would make
        // the first store's own `checkpoint()` return at once, before it could be refused.
        let o = opts("mem://", u64::MAX);
        // Two coordinators on one database, as two would share a server.
        let first = Store::open(&o).await.unwrap();
        let first = Store::attach(first.db().unwrap(), &o, true).await.unwrap();
        let mut tasks = vec![task()];
        first.write(Entry::of_tasks(&tasks), None).await.unwrap();
        // A second coordinator opens the same database.
        let second = Store::attach(first.db().unwrap(), &o, true).await.unwrap();
        assert_eq!(
            loaded(&second).await,
            tasks,
            "it finds what the first wrote"
        );
        tasks[0].state = TaskState::Completed;
        assert!(matches!(
            first.write(Entry::of_tasks(&tasks), None).await,
            Err(StoreError::Superseded)
        ));
        assert!(matches!(
            first.checkpoint().await,
            Err(StoreError::Superseded)
        ));
        second.write(Entry::of_tasks(&tasks), None).await.unwrap();
        second.checkpoint().await.unwrap();
        assert_eq!(loaded(&second).await, tasks);
    }

    #[tokio::test]
    async fn a_batch_larger_than_a_record_is_written_in_parts() {
        let store = Store::open(&opts("mem://", 64 << 20)).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..5).map(|_| task()).collect();
        for t in &mut tasks {
            t.spec.user_data = tatzelwurm_protocol::Data(vec![7; 1 << 20]);
        }
        store.write(Entry::of_tasks(&tasks), None).await.unwrap();
        assert_eq!(
            journal_seqs(&store).await.len(),
            2,
            "records of at most 4 MiB: 3 + 2 tasks of 1 MiB"
        );
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks);
    }

    #[tokio::test]
    async fn a_checkpoint_deletes_the_journal_up_to_its_mark_and_keeps_what_came_after() {
        // No checkpoint of its own: this test writes one by hand.
        let store = Store::open(&opts("mem://", u64::MAX)).await.unwrap();
        assert!(store.log.is_some(), "an embedded store's key-value journal");
        checkpoint_deletes_the_journal_up_to_its_mark(store).await;
    }

    #[tokio::test]
    async fn a_checkpoint_deletes_the_journal_table_up_to_its_mark_and_keeps_what_came_after() {
        let o = opts("mem://", u64::MAX);
        // Fenced, as a server's: the journal is the `journal` table.
        let open = Store::open(&o).await.unwrap();
        let store = Store::attach(open.db().unwrap(), &o, true).await.unwrap();
        assert!(store.log.is_none());
        checkpoint_deletes_the_journal_up_to_its_mark(store).await;
    }

    async fn checkpoint_deletes_the_journal_up_to_its_mark(store: Store) {
        let mut tasks: Vec<TaskInfo> = (0..4).map(|_| task()).collect();
        for t in &tasks {
            store
                .write(Entry::of_tasks(std::slice::from_ref(t)), None)
                .await
                .unwrap();
        }
        assert_eq!(journal_seqs(&store).await.len(), 4);
        // Entries past the mark stay (here: written by hand, as a write that lands while a
        // checkpoint runs would be), entries at or below it go, late ones included.
        let snap = store.state().image.snapshot();
        assert_eq!(snap.upto, 4);
        tasks[0].state = TaskState::Completed;
        store
            .write(Entry::of_tasks(&tasks[..1]), None)
            .await
            .unwrap();
        store.write_checkpoint(&snap, false).await.unwrap();
        assert_eq!(
            journal_seqs(&store).await,
            vec![5],
            "only the entry after the mark"
        );
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks, "and nothing is lost");

        // The next checkpoint deletes from its predecessor's mark on, in statements of a few
        // records each (here 150 entries, three a statement); all of them go.
        for _ in 0..150 {
            let t = task();
            store
                .write(Entry::of_tasks(std::slice::from_ref(&t)), None)
                .await
                .unwrap();
            tasks.push(t);
        }
        let snap = store.state().image.snapshot();
        assert_eq!((snap.after, snap.upto), (4, 155));
        store.write_checkpoint(&snap, false).await.unwrap();
        store.state().image.checkpointed(&snap);
        assert_eq!(
            journal_seqs(&store).await.len(),
            0,
            "the whole journal went"
        );
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks, "and nothing is lost");
        assert_eq!(
            store.state().image.snapshot().after,
            155,
            "the next one starts there"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_folds_the_journal_into_buckets_and_loses_nothing() {
        // Only the checkpoints written here, none in the background.
        let (_dir, store) = surrealkv_store().await;
        let mut tasks: Vec<TaskInfo> = (0..300).map(|_| task()).collect();
        store.write(Entry::of_tasks(&tasks), None).await.unwrap();
        store.checkpoint().await.unwrap();
        for t in tasks.iter_mut().take(100) {
            t.state = TaskState::Completed;
        }
        store
            .write(
                Entry::new(&tasks[..100], &[], &[tasks[299].id], &[], &[], &[]),
                None,
            )
            .await
            .unwrap();
        store.checkpoint().await.unwrap();
        // Journal files go whole once a later one starts after the mark: the newest stays
        // for a checkpoint more (replay skips its records, which are at the mark).
        assert_eq!(journal_seqs(&store).await, vec![2], "the journal is folded");
        assert!(
            count(&store, "bucket").await > 100,
            "tasks spread over buckets"
        );
        tasks.pop();
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks);
        // And after the checkpoint, the journal carries on from where it was.
        tasks[0].state = TaskState::Failed;
        store
            .write(Entry::of_tasks(&tasks[..1]), None)
            .await
            .unwrap();
        assert_eq!(loaded(&store).await, tasks);
    }

    #[tokio::test]
    async fn assignments_are_read_back_and_folded_into_the_buckets_by_a_checkpoint() {
        let (_dir, store) = surrealkv_store().await;
        let mut tasks: Vec<crate::task::Task> = (0..3)
            .map(|_| crate::task::Task::new(TaskId::new(), task().spec, "default".into(), 0, true))
            .collect();
        let infos = |ts: &[crate::task::Task]| {
            let mut v: Vec<TaskInfo> = ts.iter().map(|t| t.info.clone()).collect();
            v.sort_by_key(|t| t.id);
            v
        };
        store
            .write(Entry::of_tasks(&infos(&tasks)), None)
            .await
            .unwrap();
        let assigned = [
            tasks[0].assign(WorkerId(7), "w", 20),
            tasks[1].assign(WorkerId(8), "v", 21),
        ];
        store
            .write(
                Entry::new::<TaskInfo>(&[], &assigned, &[], &[], &[], &[]),
                None,
            )
            .await
            .unwrap();
        let want = infos(&tasks);
        assert_eq!(
            want.iter()
                .filter(|t| t.state == TaskState::Assigned)
                .count(),
            2
        );
        assert_eq!(loaded(&store).await, want, "from the journal");
        store.checkpoint().await.unwrap();
        assert_eq!(loaded(&store).await, want, "from the buckets");
        // One more after the checkpoint, over the bucket that holds its task.
        let third = tasks[2].assign(WorkerId(7), "w", 22);
        store
            .write(
                Entry::new::<TaskInfo>(&[], &[third], &[], &[], &[], &[]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(loaded(&store).await, infos(&tasks), "over the buckets");
    }

    #[tokio::test]
    async fn a_checkpoint_cut_short_after_its_buckets_loses_nothing() {
        let store = Store::open(&opts("mem://", u64::MAX)).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..50).map(|_| task()).collect();
        store.write(Entry::of_tasks(&tasks), None).await.unwrap();
        // Write the buckets of a checkpoint but not its mark and journal deletion, as a crash
        // between the two would leave it.
        let mut partial = store.state().image.snapshot();
        partial.buckets.truncate(20);
        for &b in &partial.buckets {
            let items = store.state().image.bucket_records(b).unwrap();
            let row = BodyRow {
                id: RecordId::new("bucket", b as i64),
                body: frame(items.iter().map(|i| &i[..])),
            };
            store
                .db()
                .unwrap()
                .query("INSERT INTO bucket $row")
                .bind(("row", row))
                .await
                .unwrap()
                .check()
                .unwrap();
        }
        tasks[3].state = TaskState::Running;
        store
            .write(
                Entry::new(&tasks[3..4], &[], &[tasks[4].id], &[], &[], &[]),
                None,
            )
            .await
            .unwrap();
        tasks.remove(4);
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks);
    }

    #[tokio::test]
    async fn records_of_the_old_layout_are_read_and_rewritten() {
        let store = Store::open(&opts("mem://", 64 << 20)).await.unwrap();
        let mut tasks: Vec<TaskInfo> = (0..5).map(|_| task()).collect();
        for t in &tasks {
            store
                .db()
                .unwrap()
                .query("CREATE type::record('task', $id) CONTENT { state: 'ready', body: $body }")
                .bind(("id", t.id.simple()))
                .bind(("body", Bytes::copy_from_slice(&image::encode_task(t))))
                .await
                .unwrap()
                .check()
                .unwrap();
        }
        tasks.sort_by_key(|t| t.id);
        assert_eq!(loaded(&store).await, tasks);
        assert_eq!(count(&store, "task").await, 0, "old records are gone");
        assert_eq!(loaded(&store).await, tasks, "and live on in the buckets");
    }

    #[tokio::test]
    async fn queue_settings_survive_the_journal_and_the_checkpoint() {
        let store = Store::open(&opts("mem://", 64 << 20)).await.unwrap();
        let mut a = QueueSettings::new("default", "gpu");
        a.limit = Some(4);
        let b = QueueSettings::new("aiida-x", "gpu");
        store
            .write(
                Entry::new::<TaskInfo>(&[], &[], &[], &[], &[], &[a.clone(), b.clone()]),
                None,
            )
            .await
            .unwrap();
        a.paused = true;
        store
            .write(
                Entry::new::<TaskInfo>(&[], &[], &[], &[], &[], &[a.clone()]),
                None,
            )
            .await
            .unwrap();
        let got = store.load().await.unwrap().queues;
        assert_eq!(got, vec![b.clone(), a.clone()], "replayed, latest wins");
        store.checkpoint().await.unwrap();
        assert_eq!(journal_seqs(&store).await.len(), 0);
        let got = store.load().await.unwrap().queues;
        assert_eq!(got, vec![b, a], "read from the checkpoint");
    }

    #[tokio::test]
    async fn a_store_from_a_newer_version_is_refused() {
        let store = Store::open(&opts("mem://", 0)).await.unwrap();
        check_layout(&store.db().unwrap()).await.unwrap();
        store
            .db()
            .unwrap()
            .query("UPSERT meta:layout CONTENT { version: 99 }")
            .await
            .unwrap()
            .check()
            .unwrap();
        let err = check_layout(&store.db().unwrap()).await.err().unwrap();
        assert!(
            matches!(err, StoreError::NewerLayout { found: 99 }),
            "{err}"
        );
        // An older one is taken, and marked as this layout from then on.
        store
            .db()
            .unwrap()
            .query("UPSERT meta:layout CONTENT { version: 2 }")
            .await
            .unwrap()
            .check()
            .unwrap();
        check_layout(&store.db().unwrap()).await.unwrap();
        let found: Vec<Layout> = store
            .db()
            .unwrap()
            .query("SELECT version FROM meta:layout")
            .await
            .unwrap()
            .take(0)
            .unwrap();
        assert_eq!(found[0].version, LAYOUT_VERSION);
    }
}
