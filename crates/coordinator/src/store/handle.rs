//! The database handle: a SurrealDB connection of either of the two kinds the store opens.
//!
//! A SurrealDB server is reached through the SDK's `any` engine. An embedded store (`surrealkv://`
//! or `mem://`) is built here and served through the SDK's local engine, for two reasons: the SDK
//! sizes surrealkv's memory from the machine's (on a 24 GiB machine a 1 GiB write buffer, up to
//! two more waiting for their flush, and an 11 GiB block cache, which its URL parameters cannot
//! change), so it is given [`KvMemory`] instead; and the datastore itself is kept, so that the
//! journal can be written as key-value pairs without SurrealQL ([`super::kvlog`]). [`Handle`]
//! lets the rest of the store run the same queries on either kind.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use surrealdb::IndexedResults;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use surrealdb::engine::local::Db;
use surrealdb::method::IntoVariables;
use surrealdb::types::Variables;
use surrealdb_core::kvs::Datastore;

/// How much memory an embedded surrealkv store may hold for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvMemory {
    /// The write buffer (surrealkv's memtable): writes collect here until it is flushed to a
    /// table file. Up to three may be alive at once (one filling, two flushing). A larger
    /// transaction gets a buffer of its own size (the patch in `third_party/`); its pages cost
    /// memory only as they are written.
    pub memtable_bytes: u64,
    /// The cache of table-file blocks that reads go through (a start reads every bucket once).
    pub block_cache_bytes: u64,
}

impl Default for KvMemory {
    /// A 16 MiB write buffer (a larger write gets one of its own size) and an 8 MiB cache: the
    /// coordinator reads each stored value about once (a start reads every bucket and the
    /// journal), so a larger cache only kept copies of values it would not read again
    /// (BENCHMARKS.md, "The store's write buffer and cache, and thin records"; the journal's
    /// deletion then read every record too, which the key-value journal's does not).
    fn default() -> Self {
        KvMemory {
            memtable_bytes: 16 << 20,
            block_cache_bytes: 8 << 20,
        }
    }
}

/// A datastore's error in the SDK's type, which the rest of the store handles.
pub(super) fn internal(e: impl std::fmt::Display) -> surrealdb::Error {
    surrealdb::Error::internal(format!("{e:#}"))
}

/// A connection, cheap to clone: clones share it, and its one session. The SDK's own clone of a
/// `Surreal` opens a new session on the engine (a fresh id and session maps, whose set-up costs
/// a `membarrier` call that interrupts every CPU); the store's handle was cloned for every
/// commit and query, which made that a good part of a small commit's cost.
#[derive(Clone)]
pub(super) enum Handle {
    /// Through the SDK's `any` engine: a server.
    Any(Arc<Surreal<Any>>),
    /// An embedded datastore built here (surrealkv or memory), and the datastore itself for
    /// key-value transactions. The datastore shuts down when the last `Surreal` handle is
    /// dropped, whoever else holds it.
    Kv(Arc<Surreal<Db>>, Arc<Datastore>),
}

/// A query being put together: statements and the variables they use, run on `.await`.
pub(super) struct Query {
    handle: Handle,
    statements: Vec<String>,
    vars: Result<Variables, surrealdb::Error>,
}

impl Handle {
    /// Opens the embedded store named by `url` (`surrealkv://PATH`, with URL parameters such as
    /// `sync` as the SDK reads them, or `mem://`) with `memory`.
    pub(super) async fn open_kv(url: &str, memory: KvMemory) -> Result<Handle, surrealdb::Error> {
        let config = surrealdb_cnf::ConfigMap::empty()
            .with_key_value(
                "surrealkv_max_memtable_size",
                memory.memtable_bytes.to_string(),
            )
            .with_key_value(
                "surrealkv_block_cache_capacity",
                memory.block_cache_bytes.to_string(),
            );
        // As the SDK's local engine opens a datastore: maintenance starts only after the
        // version key is checked (a write before it would make a new store look like an old one).
        // The surrealkv settings are ignored by the memory engine.
        let ds = surrealdb_core::kvs::Datastore::builder()
            .with_config(config)
            .with_capabilities(surrealdb::opt::capabilities::Capabilities::default().into())
            .without_maintenance_tasks()
            .build_with_path(url)
            .await
            .map_err(internal)?;
        ds.check_version().await.map_err(internal)?;
        ds.bootstrap().await.map_err(internal)?;
        ds.start_maintenance_tasks();
        // Dropping the last `Surreal` handle shuts the datastore down and lets its directory
        // lock go, as with a connection the SDK opened (the store reopens on that).
        let db = Surreal::<Db>::unstable_from_datastore(Arc::clone(&ds), None).await?;
        Ok(Handle::Kv(Arc::new(db), ds))
    }

    /// The embedded datastore, for key-value transactions; `None` for a server.
    pub(super) fn datastore(&self) -> Option<&Arc<Datastore>> {
        match self {
            Handle::Any(_) => None,
            Handle::Kv(_, ds) => Some(ds),
        }
    }

    /// Starts a query with its first statements.
    pub(super) fn query(&self, sql: impl Into<String>) -> Query {
        Query {
            handle: self.clone(),
            statements: vec![sql.into()],
            vars: Ok(Variables::new()),
        }
    }

    /// Signs in as a root user (a server).
    pub(super) async fn signin(
        &self,
        root: surrealdb::opt::auth::Root,
    ) -> Result<(), surrealdb::Error> {
        match self {
            Handle::Any(db) => db.signin(root).await.map(drop),
            Handle::Kv(db, _) => db.signin(root).await.map(drop),
        }
    }

    /// Selects the namespace and database every later query runs in.
    pub(super) async fn use_ns_db(&self, ns: &str, database: &str) -> Result<(), surrealdb::Error> {
        match self {
            Handle::Any(db) => db.use_ns(ns).use_db(database).await.map(drop),
            Handle::Kv(db, _) => db.use_ns(ns).use_db(database).await.map(drop),
        }
    }
}

impl Query {
    /// Adds statements.
    pub(super) fn query(mut self, sql: impl Into<String>) -> Query {
        self.statements.push(sql.into());
        self
    }

    /// Binds variables (`("name", value)` pairs and the like).
    pub(super) fn bind(mut self, vars: impl IntoVariables) -> Query {
        self.vars = match (self.vars, vars.into_variables()) {
            (Ok(mut all), Ok(more)) => {
                all.extend(more);
                Ok(all)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        self
    }
}

impl IntoFuture for Query {
    type Output = Result<IndexedResults, surrealdb::Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Query {
                handle,
                statements,
                vars,
            } = self;
            // An object binds its fields as variables without copying their values.
            let vars = surrealdb::types::Object::from(vars?);
            let mut statements = statements.into_iter();
            let first = statements.next().unwrap_or_default();
            match &handle {
                Handle::Any(db) => {
                    statements
                        .fold(db.query(first), |q, s| q.query(s))
                        .bind(vars)
                        .await
                }
                Handle::Kv(db, _) => {
                    statements
                        .fold(db.query(first), |q, s| q.query(s))
                        .bind(vars)
                        .await
                }
            }
        })
    }
}
