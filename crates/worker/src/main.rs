//! `workwurm`: a long-lived worker that runs exec, sleep and the built-in custom tasks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tatzelwurm_protocol::client::{default_token_file, read_token};
use tatzelwurm_protocol::{BlockType, BodyCodec, Tag};
use tatzelwurm_worker::session::Stop;
use tatzelwurm_worker::{Handlers, WorkerConfig};

/// A tatzelwurm worker: takes tasks of its type from the coordinator and runs them.
#[derive(Parser, Debug)]
#[command(name = "workwurm", version, about)]
struct Args {
    /// Coordinator address: a host name or address, with a port or without (then 5677), or
    /// `unix:PATH` for the Unix socket of a coordinator on this machine (`tatzelwurm --socket`).
    #[arg(long, env = "TATZELWURM_ADDR", default_value = "127.0.0.1:5677")]
    coordinator: String,
    /// Which tasks to take: sync (each blocks a thread) or async (many share the runtime).
    #[arg(long = "type", default_value = "async")]
    block: BlockType,
    /// How many tasks at once [default: CPUs for sync, 256 for async].
    #[arg(long)]
    slots: Option<u32>,
    /// Tasks to take beyond the slots, each started the moment a slot frees (for many short
    /// tasks: no slot waits for the next dispatch). The coordinator fills this room only when no
    /// other worker has a free slot, and takes a held task back when one gets free.
    #[arg(long, default_value_t = 0)]
    prefetch: u32,
    /// With held tasks (`--prefetch`): how long a finished task's report may wait for others,
    /// to go to the coordinator in one write (0: each at once). A slot that frees starts a held
    /// task meanwhile; with nothing held a report goes at once.
    #[arg(long, default_value = "2ms", value_parser = tatzelwurm_protocol::cli::parse_duration)]
    report_linger: Duration,
    /// Name shown in `worker list` [default: host-pid].
    #[arg(long)]
    name: Option<String>,
    /// A key=value label (repeatable).
    #[arg(long)]
    tag: Vec<Tag>,
    /// File holding the coordinator's token [default: the token of a coordinator on this machine:
    /// in $TATZELWURM_DATA_DIR, else in its default data dir].
    #[arg(long, env = "TATZELWURM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Body codec: bincode (compact) or msgpack.
    #[arg(long, default_value = "bincode")]
    codec: BodyCodec,
    /// After SIGTERM, how long running tasks may finish before they are handed back.
    #[arg(long, default_value = "60s", value_parser = tatzelwurm_protocol::cli::parse_duration)]
    drain_grace: Duration,
    /// Between SIGTERM and SIGKILL when an exec task is killed or times out.
    #[arg(long, default_value = "5s", value_parser = tatzelwurm_protocol::cli::parse_duration)]
    kill_grace: Duration,
    /// How commands are started: clone (a vfork-style clone: cheap) or fork (the whole worker
    /// is copied for each command: slower; for comparison, or should clone fail here).
    #[arg(long, default_value = "clone")]
    spawn: tatzelwurm_worker::Spawn,
    /// Do not serve the built-in `echo` and `fail` custom handlers.
    #[arg(long)]
    no_builtin_handlers: bool,
    /// How long the coordinator has to answer the handshake before the worker tries again.
    #[arg(long, default_value = "10s", value_parser = tatzelwurm_protocol::cli::parse_duration)]
    connect_timeout: Duration,
    /// Keep N worker processes alive, named NAME-1 … NAME-N, restarting one that dies (with
    /// backoff); SIGTERM drains them all.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    processes: Option<u32>,
    /// Write the worker id here once connected.
    #[arg(long)]
    id_file: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if let Some(n) = args.processes {
        anyhow::ensure!(
            args.id_file.is_none(),
            "--id-file names one worker's id; a pool of --processes has several"
        );
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", tatzelwurm_worker::hostname(), std::process::id()));
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return tatzelwurm_worker::pool::supervise(n, argv, name).await;
    }
    let default_token = default_token_file(dirs::data_dir());
    let mut cfg = WorkerConfig::new(args.coordinator, args.block);
    cfg.token = read_token(args.token_file.as_deref(), default_token.as_deref())
        .context("cannot read the token")?;
    cfg.token_file = args.token_file.clone().or(default_token);
    if let Some(s) = args.slots {
        anyhow::ensure!(s > 0, "--slots must be at least 1");
        cfg.slots = s;
    }
    cfg.prefetch = args.prefetch;
    cfg.report_linger = args.report_linger;
    if let Some(n) = args.name {
        cfg.name = n;
    }
    cfg.tags = args.tag;
    cfg.codec = args.codec;
    cfg.drain_grace = args.drain_grace;
    cfg.kill_grace = args.kill_grace;
    cfg.spawn = args.spawn;
    cfg.id_file = args.id_file;
    cfg.connect_timeout = args.connect_timeout;
    let handlers = if args.no_builtin_handlers {
        Handlers::new()
    } else {
        Handlers::builtin()
    };

    let stop = Stop::default();
    let signals = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal: draining (send another to stop at once)");
        signals.drain.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("second signal: stopping at once");
        signals.now.cancel();
    });
    tatzelwurm_worker::run(cfg, handlers, stop).await
}
