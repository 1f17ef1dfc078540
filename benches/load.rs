//! `tatzelwurm-bench`: the end-to-end load tool. It starts a real coordinator and real workers,
//! adds tasks through the real protocol, and reports throughput, latencies and the coordinator's
//! peak memory. `--smoke` runs a few hundred tasks so that CI keeps it working.
//!
//! Build it in release mode for figures: `cargo run --release --bin tatzelwurm-bench -- --help`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tatzelwurm_actioner::Client;
use tatzelwurm_protocol::{
    ActionerRequest, BlockType, BodyCodec, CoordinatorToActioner, Data, EventFilter, Payload,
    Reply, RequestId, TaskId, TaskSpec, TaskState,
};
use tatzelwurm_tests::{Coordinator, Db, Worker};

/// End-to-end load on a real coordinator and real workers.
#[derive(Parser, Debug)]
struct Args {
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 2000)]
    slots: u32,
    /// Tasks each worker takes beyond its slots (`workwurm --prefetch`).
    #[arg(long, default_value_t = 0)]
    prefetch: u32,
    /// How long a worker's report may wait for others while it holds tasks
    /// (`workwurm --report-linger`, e.g. 0 or 2ms) [default: the worker's].
    #[arg(long)]
    report_linger: Option<String>,
    /// Store: mem or kv (surrealkv on disk).
    #[arg(long, default_value = "mem")]
    db: String,
    /// noop (sleep 0 on async workers) or exec (`true`, compared with the raw spawn rate).
    #[arg(long, default_value = "noop")]
    kind: String,
    /// The workers' type, and the tasks': async or sync.
    #[arg(long, default_value = "async")]
    block: String,
    /// How the workers start commands (`workwurm --spawn`): clone or fork.
    #[arg(long, default_value = "clone")]
    spawn: String,
    /// User data (MessagePack bytes) every task of the throughput run carries, as a task with
    /// a body of that size would (a workflow engine's message, a simulation's input).
    #[arg(long, default_value_t = 0)]
    data_bytes: usize,
    /// Tasks per add request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Add requests in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Single tasks timed one after another for the add→result latency (0 to skip).
    #[arg(long, default_value_t = 500)]
    latency_samples: usize,
    /// Only queue this many ready tasks with no worker and report the coordinator's memory.
    #[arg(long)]
    queue_only: Option<usize>,
    /// With --queue-only: then kill -9 the coordinator and start it again on the same store;
    /// report how long it takes until it serves, and its peak memory meanwhile.
    #[arg(long, requires = "queue_only")]
    restart: bool,
    /// With --queue-only: then start --workers async workers of --slots slots and time how
    /// long they take to run every queued task; report the rate and the coordinator's peak
    /// memory.
    #[arg(long, requires = "queue_only")]
    drain: bool,
    /// Also connect this many in-process workers (real TCP, the worker library), report the
    /// coordinator's CPU while they only heartbeat, then run the throughput test with them.
    #[arg(long, default_value_t = 0)]
    idle_workers: usize,
    /// Heartbeat interval the coordinator asks for (e.g. 1s), to load it with heartbeats.
    #[arg(long, default_value = "5s")]
    heartbeat: String,
    /// Run the throughput test twice in one run, the second time with this many HTTP clients
    /// polling `/api/summary` and `/api/tasks?limit=100` as fast as they are answered; report
    /// both rates and the HTTP latencies.
    #[arg(long, default_value_t = 0)]
    http_load: usize,
    /// A few hundred tasks, quickly: for CI.
    #[arg(long)]
    smoke: bool,
    /// The workers and the load client reach the coordinator through its Unix socket
    /// (`tatzelwurm --socket`) instead of loopback TCP.
    #[arg(long)]
    unix: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Peak resident memory of a process, from /proc (kB → MB).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn spec(kind: &str, block: BlockType) -> TaskSpec {
    let payload = match kind {
        "exec" => Payload::Exec {
            argv: vec!["true".into()],
            env: vec![],
            cwd: None,
        },
        _ => Payload::Sleep { duration_ms: 0 },
    };
    let mut s = TaskSpec::new(payload);
    s.block = block;
    s
}

async fn connect(c: &Coordinator) -> Result<Client> {
    let token = std::fs::read_to_string(c.token_file())?;
    Ok(Client::connect(c.peer_addr(), token.trim(), BodyCodec::Bincode).await?)
}

/// A client subscribed to the events of every task.
async fn subscribed(c: &Coordinator) -> Result<Client> {
    let mut client = connect(c).await?;
    client
        .subscribe(EventFilter {
            ids: vec![],
            tags: vec![],
            all: true,
            queue: None,
            batch: None,
        })
        .await?;
    Ok(client)
}

struct Throughput {
    tasks: usize,
    wall: Duration,
    add_latency: Vec<Duration>,
    end_to_end: Vec<Duration>,
    failed: usize,
}

/// Adds `n` tasks in pipelined batches and waits for every one to end.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    c: &Coordinator,
    n: usize,
    template: &TaskSpec,
    batch: usize,
    in_flight: usize,
) -> Result<Throughput> {
    let mut client = subscribed(c).await?;
    let mut sent_at: HashMap<RequestId, (Instant, usize)> = HashMap::new();
    let mut added_at: HashMap<TaskId, Instant> = HashMap::new();
    let mut ended_early: HashMap<TaskId, Instant> = HashMap::new();
    let (mut remaining, mut outstanding, mut done, mut failed) = (n, 0usize, 0usize, 0usize);
    let mut add_latency = Vec::new();
    let mut end_to_end = Vec::with_capacity(n);
    let start = Instant::now();
    while done < n {
        while outstanding < in_flight && remaining > 0 {
            let k = remaining.min(batch);
            let id = client
                .send(ActionerRequest::Add {
                    tasks: vec![template.clone(); k],
                    play: true,
                })
                .await?;
            sent_at.insert(id, (Instant::now(), k));
            remaining -= k;
            outstanding += 1;
        }
        match client.next_message().await? {
            CoordinatorToActioner::Reply {
                request,
                body: Reply::Added { ids, .. },
            } => {
                let (t, _) = sent_at
                    .remove(&request)
                    .context("reply to an unknown request")?;
                add_latency.push(t.elapsed());
                for id in ids {
                    if let Some(end) = ended_early.remove(&id) {
                        end_to_end.push(end - t);
                    } else {
                        added_at.insert(id, t);
                    }
                }
                outstanding -= 1;
            }
            CoordinatorToActioner::Reply {
                body: Reply::Error(e),
                ..
            } => bail!("add refused: {e}"),
            CoordinatorToActioner::Event { event, .. } if event.state.is_final() => {
                if event.state != TaskState::Completed {
                    failed += 1;
                }
                match added_at.remove(&event.id) {
                    Some(t) => end_to_end.push(t.elapsed()),
                    None => {
                        ended_early.insert(event.id, Instant::now());
                    }
                }
                done += 1;
            }
            _ => {}
        }
    }
    let wall = start.elapsed();
    add_latency.sort();
    end_to_end.sort();
    Ok(Throughput {
        tasks: n,
        wall,
        add_latency,
        end_to_end,
        failed,
    })
}

/// One task at a time: add (played), wait for its end.
async fn latency(c: &Coordinator, samples: usize) -> Result<Vec<Duration>> {
    let mut client = subscribed(c).await?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let ids = client
            .add(vec![spec("noop", BlockType::Async)], true)
            .await?;
        loop {
            let ev = client.next_event().await?;
            if ev.id == ids[0] && ev.state.is_final() {
                break;
            }
        }
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// How fast this machine spawns `true` with the given parallelism, per second.
fn raw_spawn_rate(n: usize, parallel: usize) -> f64 {
    let start = Instant::now();
    let per = n.div_ceil(parallel);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                for _ in 0..per {
                    let _ = Command::new("true").status();
                }
            });
        }
    });
    (per * parallel) as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, r: &Throughput) {
    let rate = r.tasks as f64 / r.wall.as_secs_f64();
    println!(
        "{name}: {} tasks in {:.2} s = {rate:.0} tasks/s ({} failed)",
        r.tasks,
        r.wall.as_secs_f64(),
        r.failed
    );
    println!(
        "  add latency per request: p50 {} p99 {}; add→result per task: p50 {} p99 {}",
        ms(pct(&r.add_latency, 0.5)),
        ms(pct(&r.add_latency, 0.99)),
        ms(pct(&r.end_to_end, 0.5)),
        ms(pct(&r.end_to_end, 0.99))
    );
}

/// One HTTP/1.1 GET on a fresh connection; the status code and the body.
async fn http_get(base: &str, path: &str, token: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let head = &text[..text.len().min(16)];
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

/// The store's commits so far and the records they carried, from the coordinator's `/metrics`.
async fn store_commits(base: &str, token: &str) -> Result<(f64, f64)> {
    let (code, body) = http_get(base, "/metrics", token).await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .with_context(|| format!("/metrics has no {name}"))
    };
    Ok((
        value("tatzelwurm_store_batch_records_count ")?,
        value("tatzelwurm_store_batch_records_sum ")?,
    ))
}

/// `n` clients polling the summary and a page of tasks until `stop`; every request's latency.
async fn poll_http(
    base: String,
    token: String,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(bool, Duration)>> {
    let mut handles = Vec::new();
    for i in 0..n {
        let (base, token, stop) = (base.clone(), token.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut summary = i % 2 == 0;
            while !stop.load(Ordering::Relaxed) {
                let path = if summary {
                    "/api/summary"
                } else {
                    "/api/tasks?limit=100"
                };
                let t = Instant::now();
                let (code, _) = http_get(&base, path, &token).await?;
                anyhow::ensure!(code == 200, "{path} answered {code}");
                out.push((summary, t.elapsed()));
                summary = !summary;
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut a = Args::parse();
    if a.smoke {
        a.tasks = 400;
        a.batch = 50;
        a.latency_samples = 20;
        a.workers = 1;
        a.slots = 100;
    }
    let db = match a.db.as_str() {
        "mem" => Db::Mem,
        "kv" => Db::Kv,
        other => bail!("--db must be mem or kv, not {other}"),
    };
    println!(
        "machine: {} CPUs; store {}; kind {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        a.db,
        a.kind
    );

    if let Some(n) = a.queue_only {
        let mut c = Coordinator::start_with(db, &["--lease", "30s"])?;
        let mut client = connect(&c).await?;
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(10_000);
            client
                .add(
                    (0..k).map(|_| spec("noop", BlockType::Async)).collect(),
                    true,
                )
                .await?;
            left -= k;
        }
        println!(
            "queued {n} ready tasks in {:.1} s; coordinator peak RSS {:.0} MB",
            start.elapsed().as_secs_f64(),
            peak_rss_mb(c.pid())
        );
        if a.restart {
            drop(client);
            let start = Instant::now();
            c.restart()?;
            println!(
                "after kill -9: serving again over {n} tasks in {:.2} s; peak RSS {:.0} MB",
                start.elapsed().as_secs_f64(),
                peak_rss_mb(c.pid())
            );
            // Every acknowledged task must be there again: a start that served fewer lost some.
            let ready = c.json(&["summary"])["counts"]["ready"].as_u64();
            if ready != Some(n as u64) {
                bail!(
                    "after kill -9 the coordinator holds {ready:?} ready tasks, not {n}: tasks were lost"
                );
            }
        }
        if a.drain {
            let slots = a.slots.to_string();
            let start = Instant::now();
            let workers: Vec<Worker> = (0..a.workers)
                .map(|_| c.worker(&["--type", "async", "--slots", &slots]))
                .collect();
            let completed = || c.json(&["summary"])["counts"]["completed"].as_u64();
            tatzelwurm_tests::wait_for(Duration::from_secs(3600), || {
                std::thread::sleep(Duration::from_millis(500));
                completed() == Some(n as u64)
            })?;
            let took = start.elapsed().as_secs_f64();
            println!(
                "drained by {} workers of {} slots in {took:.1} s ({:.0} tasks/s); coordinator \
                 peak RSS {:.0} MB",
                workers.len(),
                a.slots,
                n as f64 / took,
                peak_rss_mb(c.pid())
            );
        }
        return Ok(());
    }

    let sock_dir = tempfile::tempdir()?;
    let sock = sock_dir.path().join("tw.sock");
    let sock = sock
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    let mut flags = vec![
        "--lease",
        "30s",
        "--heartbeat",
        &a.heartbeat,
        "--http",
        "127.0.0.1:0",
    ];
    if a.unix {
        flags.extend(["--socket", sock]);
    }
    let mut c = Coordinator::start_with(db, &flags)?;
    if a.unix {
        c.reach = Some(format!("unix:{sock}"));
    }
    let stop = tatzelwurm_worker::session::Stop::default();
    if a.idle_workers > 0 {
        let token = std::fs::read_to_string(c.token_file())?.trim().to_string();
        for i in 0..a.idle_workers {
            let mut cfg = tatzelwurm_worker::WorkerConfig::new(c.peer_addr(), BlockType::Async);
            cfg.token = token.clone();
            cfg.slots = 4;
            cfg.name = format!("bench-{i}");
            tokio::spawn(tatzelwurm_worker::run(
                cfg,
                tatzelwurm_worker::Handlers::new(),
                stop.clone(),
            ));
        }
        tatzelwurm_tests::wait_for(Duration::from_secs(60), || {
            c.json(&["summary"])["workers_connected"].as_u64() == Some(a.idle_workers as u64)
        })?;
        let window = Duration::from_secs(if a.smoke { 2 } else { 10 });
        let cpu0 = cpu_seconds(c.pid());
        tokio::time::sleep(window).await;
        let cpu = cpu_seconds(c.pid()) - cpu0;
        println!(
            "{} connected workers heartbeating every {}: coordinator CPU {:.1}% of one core over {} s",
            a.idle_workers,
            a.heartbeat,
            100.0 * cpu / window.as_secs_f64(),
            window.as_secs()
        );
    }
    let slots = a.slots.to_string();
    let prefetch = a.prefetch.to_string();
    let block = match a.block.as_str() {
        "sync" => BlockType::Sync,
        "async" => BlockType::Async,
        other => anyhow::bail!("--block {other:?}: use async or sync"),
    };
    let mut worker_args = vec![
        "--type",
        &a.block,
        "--slots",
        &slots,
        "--prefetch",
        &prefetch,
        "--spawn",
        &a.spawn,
    ];
    if let Some(linger) = &a.report_linger {
        worker_args.extend(["--report-linger", linger]);
    }
    let workers: Vec<Worker> = (0..a.workers).map(|_| c.worker(&worker_args)).collect();
    tatzelwurm_tests::wait_for(Duration::from_secs(30), || {
        c.json(&["summary"])["workers_connected"].as_u64()
            == Some((a.workers + a.idle_workers) as u64)
    })?;
    let base = c
        .http
        .clone()
        .context("the coordinator printed no http address")?;
    let token = std::fs::read_to_string(c.token_file())?.trim().to_string();
    let commits0 = store_commits(&base, &token).await?;
    let workers_cpu = || workers.iter().map(|w| cpu_seconds(w.pid())).sum::<f64>();
    // The raw rate is taken on either side of the run, half the tasks each, and averaged: this
    // machine's spawn rate drifts by a fifth within minutes, and one measurement after the run
    // put that drift into the ratio.
    // The same parallelism as the workers' slots, capped at 64 spawning threads.
    let parallel = (a.workers * a.slots as usize).clamp(1, 64);
    let raw_spawns = (a.tasks / 2).max(parallel);
    let raw_before = (a.kind == "exec").then(|| raw_spawn_rate(raw_spawns, parallel));
    let wcpu0 = workers_cpu();
    let cpu0 = cpu_seconds(c.pid());
    let own0 = cpu_seconds(std::process::id());
    let mut template = spec(&a.kind, block);
    if a.data_bytes > 0 {
        template.user_data = Data::encode("x".repeat(a.data_bytes).as_str())?;
    }
    let r = throughput(&c, a.tasks, &template, a.batch, a.in_flight).await?;
    let cpu = cpu_seconds(c.pid()) - cpu0;
    let wcpu = workers_cpu() - wcpu0;
    let own = cpu_seconds(std::process::id()) - own0;
    let commits1 = store_commits(&base, &token).await?;
    report(&format!("throughput ({}, {})", a.kind, a.db), &r);
    println!(
        "  coordinator CPU {:.2} s ({:.0}% of one core, {:.1} µs a task)",
        cpu,
        100.0 * cpu / r.wall.as_secs_f64(),
        1e6 * cpu / r.tasks as f64
    );
    // Their own threads: a command's time, from its start on, is its own process's.
    println!(
        "  workers' CPU {:.2} s ({:.1} µs a task)",
        wcpu,
        1e6 * wcpu / r.tasks as f64
    );
    // The client's side of the same run (adds, replies, one event per task change), on the same
    // cores.
    println!(
        "  load tool's CPU {:.2} s ({:.1} µs a task)",
        own,
        1e6 * own / r.tasks as f64
    );
    let commits = commits1.0 - commits0.0;
    println!(
        "  store commits {commits:.0} ({:.2} a task, {:.1} records each)",
        commits / r.tasks as f64,
        (commits1.1 - commits0.1) / commits.max(1.0)
    );
    if let Some(before) = raw_before {
        let after = raw_spawn_rate(raw_spawns, parallel);
        let raw = (before + after) / 2.0;
        let rate = r.tasks as f64 / r.wall.as_secs_f64();
        println!(
            "  raw spawn rate of `true`: {before:.0}/s before, {after:.0}/s after, {raw:.0}/s mean; ratio {:.2}",
            rate / raw
        );
    }
    if a.http_load > 0 {
        let stop_http = Arc::new(AtomicBool::new(false));
        let pollers = tokio::spawn(poll_http(base, token, a.http_load, stop_http.clone()));
        let cpu0 = cpu_seconds(c.pid());
        let loaded = throughput(&c, a.tasks, &template, a.batch, a.in_flight).await?;
        let cpu = cpu_seconds(c.pid()) - cpu0;
        stop_http.store(true, Ordering::Relaxed);
        let polls = pollers.await??;
        report(
            &format!(
                "throughput ({}, {}) with {} HTTP clients polling",
                a.kind, a.db, a.http_load
            ),
            &loaded,
        );
        println!(
            "  coordinator CPU {:.2} s ({:.0}% of one core)",
            cpu,
            100.0 * cpu / loaded.wall.as_secs_f64()
        );
        for (which, name) in [(true, "/api/summary"), (false, "/api/tasks?limit=100")] {
            let mut l: Vec<Duration> = polls
                .iter()
                .filter(|(s, _)| *s == which)
                .map(|(_, d)| *d)
                .collect();
            l.sort();
            println!(
                "  {name}: {} requests, {:.0}/s, p50 {} p99 {}",
                l.len(),
                l.len() as f64 / loaded.wall.as_secs_f64(),
                ms(pct(&l, 0.5)),
                ms(pct(&l, 0.99))
            );
        }
        let plain = r.tasks as f64 / r.wall.as_secs_f64();
        let with = loaded.tasks as f64 / loaded.wall.as_secs_f64();
        println!(
            "  throughput with HTTP polling / without, same run: {:.2}",
            with / plain
        );
    }
    if a.latency_samples > 0 {
        let l = latency(&c, a.latency_samples).await?;
        println!(
            "single task add→result ({} samples): p50 {} p99 {}",
            l.len(),
            ms(pct(&l, 0.5)),
            ms(pct(&l, 0.99))
        );
    }
    println!("coordinator peak RSS {:.0} MB", peak_rss_mb(c.pid()));
    drop(workers);
    stop.now.cancel();
    if r.failed > 0 {
        bail!("{} tasks failed", r.failed);
    }
    Ok(())
}
