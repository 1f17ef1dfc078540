//! `tatzelwurm`, the coordinator daemon: flags, logging, signals; the work is in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use tatzelwurm_coordinator::config::{Config, default_data_dir, default_listen};
use tatzelwurm_coordinator::store::{self, SyncMode};
use tatzelwurm_protocol::cli::{parse_duration, with_default_port};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of the system's malloc: glibc keeps freed memory in per-thread arenas and
/// took a sixth more CPU per task (BENCHMARKS.md, "The allocator"). Off with
/// `--no-default-features`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, which it reads at its first allocation (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them): freed pages go back to the system after a second, not ten,
/// and a background thread returns them, not the next allocation on the actor's thread. A
/// million-task start peaked 80 MB lower and a drain 70 MB lower with the same rate; returning
/// them at once cost a third of the drain's rate (BENCHMARKS.md, "The allocator").
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 85] =
    b"background_thread:true,max_background_threads:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The tatzelwurm coordinator: a task queue and broker with persistent storage.
/// The HTTP port when `--http` names none.
const HTTP_PORT: u16 = 5678;

#[derive(Parser, Debug)]
#[command(name = "tatzelwurm", version, about)]
struct Args {
    /// Address to listen on (loopback by default; other addresses are reachable from the network).
    /// A host name or address, with a port or without (then 5677): `localhost`, `0.0.0.0:7000`;
    /// or `none` for no port at all, with --socket.
    #[arg(long, default_value_t = default_listen().to_string(), env = "TATZELWURM_LISTEN")]
    listen: String,
    /// Also listen on a Unix socket file at this path, for workers and clients on this machine
    /// (they connect to `unix:PATH`; the token is asked there too). A leftover socket file is
    /// replaced; one a running coordinator answers on is not (PATH.lock, beside it, says whose it
    /// is).
    #[arg(long, env = "TATZELWURM_SOCKET")]
    socket: Option<PathBuf>,
    /// Where to serve the HTTP API, the status page and /metrics (same token as TCP), or `none`.
    /// A host name or address, with a port or without (then 5678). By default on loopback,
    /// 127.0.0.1:5678, and left off with a warning when that port is taken.
    #[arg(long, env = "TATZELWURM_HTTP")]
    http: Option<String>,
    /// Where the token and the embedded store live [default: the user's data dir]/tatzelwurm.
    #[arg(long, env = "TATZELWURM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store: surrealkv://PATH (default, inside the data dir), mem:// (nothing kept), or
    /// ws://HOST:PORT for a SurrealDB server.
    #[arg(long, env = "TATZELWURM_DB")]
    db: Option<String>,
    /// SurrealDB root user, for a server.
    #[arg(long, env = "TATZELWURM_DB_USER", requires = "db_pass")]
    db_user: Option<String>,
    /// SurrealDB root password, for a server.
    #[arg(
        long,
        env = "TATZELWURM_DB_PASS",
        hide_env_values = true,
        requires = "db_user"
    )]
    db_pass: Option<String>,
    /// SurrealDB namespace.
    #[arg(long, default_value = "tatzelwurm")]
    db_namespace: String,
    /// SurrealDB database.
    #[arg(long, default_value = "main")]
    db_database: String,
    /// When an embedded surrealkv store's writes reach the disk: `every` commit before anything
    /// waiting on it is sent (survives a power loss); or a duration, e.g. `200ms` (more than
    /// 100 ms): each commit goes to the operating system at once, so a crash or `kill -9` of
    /// the coordinator loses nothing acknowledged, and to the disk that often, so a power loss or
    /// a crash of the machine may lose what was acknowledged in the last interval; or `never`
    /// (the operating system decides).
    #[arg(long, default_value = "every", value_parser = SyncMode::parse, env = "TATZELWURM_SYNC")]
    sync: SyncMode,
    /// A store write with no answer within this counts as failed and is retried (e.g. a SurrealDB
    /// server that vanished).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    db_timeout: Duration,
    /// Fold the journal into the task buckets once it holds this many bytes and as many as the
    /// tables (a larger value writes less and replays more at start).
    #[arg(long, default_value_t = 64 << 20, env = "TATZELWURM_CHECKPOINT_BYTES")]
    checkpoint_bytes: u64,
    /// An embedded surrealkv store's write buffer (memtable), in MiB: writes gather there until
    /// it is flushed to a table file, and up to three are alive at once. A larger write (a
    /// journal record holds up to 4 MiB and one task of up to --max-frame) gets a buffer of its
    /// own size.
    #[arg(long, default_value_t = store::KvMemory::default().memtable_bytes >> 20, value_parser = clap::value_parser!(u64).range(4..=1 << 20), env = "TATZELWURM_KV_MEMTABLE_MIB")]
    kv_memtable_mib: u64,
    /// An embedded surrealkv store's block cache, in MiB: reads of its table files go through
    /// it (a start reads every stored task and the journal once; little reads it later).
    #[arg(long, default_value_t = store::KvMemory::default().block_cache_bytes >> 20, value_parser = clap::value_parser!(u64).range(1..=1 << 20), env = "TATZELWURM_KV_CACHE_MIB")]
    kv_cache_mib: u64,
    /// How long a silent or disconnected worker keeps its tasks (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// How often workers heartbeat [default: a sixth of the lease].
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Send the tasks of a lost worker to `paused` instead of `ready`.
    #[arg(long)]
    lost_to_paused: bool,
    /// Forget a worker that has been lost this long (its tasks went back to the queue when its
    /// lease ended); `never` keeps every worker in `worker list`.
    #[arg(long, default_value = "24h", value_parser = parse_or_never)]
    forget_lost_after: OrNever,
    /// Remove a finished task (completed, failed, killed) this long after it ended, with its
    /// attempts and output, so that a queue that runs for months does not grow without end;
    /// `never` keeps every task until `task remove`.
    #[arg(long, default_value = "never", value_parser = parse_or_never)]
    remove_finished_after: OrNever,
    /// Accept clients without the token. For trials only.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Largest frame accepted or sent, in bytes.
    #[arg(long, default_value_t = tatzelwurm_protocol::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Connections beyond this are refused.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// A client must send its hello within this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Threads that run the connections and the tables' owner. One is fastest where it was
    /// measured (2 cores: a sixth to a fifth less CPU a task, no hand-offs between threads); more may help
    /// a host with many cores and many busy connections. The store and the start's decoding
    /// have threads of their own.
    #[arg(long, default_value_t = 1, env = "TATZELWURM_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// A duration, or never.
#[derive(Clone, Debug)]
struct OrNever(Option<Duration>);

fn parse_or_never(s: &str) -> Result<OrNever, String> {
    if s == "never" {
        return Ok(OrNever(None));
    }
    parse_duration(s)
        .map(|d| OrNever(Some(d)))
        .map_err(|e| format!("{e} (or `never`)"))
}

/// The shortest lease that leaves room for heartbeats on a busy machine.
const MIN_LEASE: Duration = Duration::from_millis(100);

/// Refuses flag values that parse but cannot work, before anything is bound or opened.
fn check(args: &Args) -> Result<(), String> {
    if args.lease < MIN_LEASE {
        return Err(format!(
            "--lease {} is too short: workers would be lost between heartbeats (at least {})",
            humantime::format_duration(args.lease),
            humantime::format_duration(MIN_LEASE)
        ));
    }
    if let Some(h) = args.heartbeat
        && h >= args.lease
    {
        return Err(format!(
            "--heartbeat {} must be shorter than --lease {}, or every worker is lost",
            humantime::format_duration(h),
            humantime::format_duration(args.lease)
        ));
    }
    if args.sync != SyncMode::Every
        && let Some(db) = &args.db
        && !db.starts_with("surrealkv://")
    {
        return Err(format!(
            "--sync applies to an embedded surrealkv store, not to --db {db:?} (a SurrealDB \
             server syncs as it was started to)"
        ));
    }
    if matches!(args.listen.as_str(), "none" | "off") && args.socket.is_none() {
        return Err("--listen none leaves nothing to connect to: give --socket PATH".into());
    }
    if args.sync != SyncMode::Every
        && let Some(db) = &args.db
        && db.contains("sync=")
    {
        return Err(format!(
            "--db {db:?} names a sync mode already: give it once, there or with --sync"
        ));
    }
    if let Some(db) = &args.db
        && store::kind(db).is_none()
    {
        return Err(format!(
            "--db {db:?} is not a store URL this coordinator knows: use surrealkv://PATH, \
             mem:// or ws://HOST:PORT"
        ));
    }
    Ok(())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            // The embedded engine's background tasks end with the runtime, and it reports that
            // as errors on every clean exit: silence that one target unless RUST_LOG asks.
            "{default},surrealdb=warn,surrealdb_core=warn,surrealdb_core::kvs::tasks=off,surrealkv=warn"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Err(msg) = check(&args) {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    init_logging(args.verbose);
    // Every connection hands its messages to the one task that owns the tables: with a second
    // runtime thread, most of those hand-offs woke a parked thread (a futex call and a context
    // switch each), which cost more than the parallel decoding gained (BENCHMARKS.md, "One
    // runtime thread").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.into())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

/// The coordinator, from its flags: binds, opens the store, serves until a signal.
async fn run(args: Args) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let db = args.sync.applied_to(
        args.db
            .unwrap_or_else(|| format!("surrealkv://{}", data_dir.join("store").display())),
    );
    let mut cfg = Config::new(data_dir.clone(), db);
    cfg.store.user = args.db_user;
    cfg.store.pass = args.db_pass;
    cfg.store.namespace = args.db_namespace;
    cfg.store.database = args.db_database;
    cfg.store.write_timeout = args.db_timeout;
    cfg.store.checkpoint_min_bytes = args.checkpoint_bytes;
    cfg.store.kv_memory = store::KvMemory {
        memtable_bytes: args.kv_memtable_mib << 20,
        block_cache_bytes: args.kv_cache_mib << 20,
    };
    cfg.lease = args.lease;
    cfg.heartbeat = args
        .heartbeat
        .unwrap_or(args.lease / 6)
        .max(Duration::from_millis(10));
    cfg.lost_to_paused = args.lost_to_paused;
    cfg.forget_lost = args.forget_lost_after.0;
    cfg.remove_finished = args.remove_finished_after.0;
    cfg.insecure_no_auth = args.insecure_no_auth;
    cfg.max_frame = args.max_frame;
    cfg.max_connections = args.max_connections;
    cfg.handshake_timeout = args.handshake_timeout;

    let listener = match args.listen.as_str() {
        "none" | "off" => None,
        addr => {
            let listen = with_default_port(addr);
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            Some(l)
        }
    };

    let unix = match &args.socket {
        Some(path) => Some(tatzelwurm_coordinator::listen::UnixSocket::bind(path).await?),
        None => None,
    };

    let http = match args.http.as_deref() {
        Some("none" | "off") => None,
        Some(addr) => {
            let addr = tatzelwurm_protocol::cli::with_port(addr, HTTP_PORT);
            Some(
                tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot serve http on {addr}"))?,
            )
        }
        None => match tokio::net::TcpListener::bind(("127.0.0.1", HTTP_PORT)).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(port = HTTP_PORT, error = %e, "the default http port is taken; no http (choose one with --http)");
                None
            }
        },
    };

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        signals.cancel();
    });
    let listeners = tatzelwurm_coordinator::Listeners {
        tcp: listener,
        unix,
        http,
    };
    tatzelwurm_coordinator::run(cfg, listeners, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`check`] says of these flags.
    fn checked(flags: &[&str]) -> Result<(), String> {
        let args = Args::try_parse_from([&["tatzelwurm"], flags].concat()).unwrap();
        check(&args)
    }

    #[test]
    fn a_sync_mode_given_twice_or_to_a_server_is_refused() {
        let twice = checked(&["--db", "surrealkv:///d/s?sync=never", "--sync", "2s"]);
        assert!(twice.unwrap_err().contains("give it once"));
        let server = checked(&["--db", "ws://127.0.0.1:8000", "--sync", "2s"]);
        assert!(server.unwrap_err().contains("embedded surrealkv store"));
        assert_eq!(checked(&["--db", "surrealkv:///d/s?sync=never"]), Ok(()));
        assert_eq!(
            checked(&["--db", "surrealkv:///d/s", "--sync", "2s"]),
            Ok(())
        );
    }

    #[test]
    fn no_port_needs_a_socket() {
        assert!(
            checked(&["--listen", "none"])
                .unwrap_err()
                .contains("--socket")
        );
        assert_eq!(
            checked(&["--listen", "none", "--socket", "/tmp/tw.sock"]),
            Ok(())
        );
    }

    #[test]
    fn sync_modes_parse_and_go_into_the_store_url() {
        assert_eq!(SyncMode::parse("every"), Ok(SyncMode::Every));
        assert_eq!(
            SyncMode::parse("250ms"),
            Ok(SyncMode::Interval(Duration::from_millis(250)))
        );
        assert!(
            SyncMode::parse("100ms")
                .unwrap_err()
                .contains("longer than 100ms")
        );
        assert!(SyncMode::parse("often").is_err());
        let url = "surrealkv:///d/store".to_string();
        assert_eq!(SyncMode::Every.applied_to(url.clone()), url);
        assert_eq!(
            SyncMode::parse("2s").unwrap().applied_to(url.clone()),
            "surrealkv:///d/store?sync=2000ms"
        );
        assert_eq!(
            SyncMode::Never.applied_to(format!("{url}?versioned=false")),
            "surrealkv:///d/store?versioned=false&sync=never"
        );
        // What the flag writes is what the store reads back.
        for flag in ["every", "never", "250ms", "3s"] {
            let mode = SyncMode::parse(flag).unwrap();
            assert_eq!(
                SyncMode::of_url(&mode.applied_to(format!("{url}?versioned=false"))),
                Ok(mode),
                "--sync {flag}"
            );
        }
    }
}
