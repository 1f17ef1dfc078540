//! `tatzelwurm-chaos`: a randomized fault campaign with an independent checker.
//!
//! It starts a real coordinator on surrealkv, real workers (each behind a proxy it can cut) and
//! in-process clients, and for `--seconds` injects faults at random from a printed seed: `kill -9`
//! and restart of the coordinator; `kill -9`, SIGSTOP/SIGCONT and restart of workers (every other
//! one holding tasks beyond its slots, `--prefetch 2`); cuts, heals and resets of a worker's network; a full disk under the store (when it can mount a tmpfs,
//! i.e. as root); pauses, kills and cut-off requests from the clients. Every task is this binary's
//! `run-task`, which appends its start and end (with the machine's monotonic clock) to a history
//! file outside the system. At the end it heals everything, lets the queue drain, restarts the
//! coordinator once more, reads the tables and hands the histories to [`checker`]; it exits 1
//! when the checker finds a broken promise, printing the seed to replay.

mod checker;
mod proxy;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tatzelwurm_actioner::client::{Client, ClientError};
use tatzelwurm_protocol::{
    ActionerRequest, BodyCodec, Data, Payload, Reply, Selector, TaskSpec, TaskState,
};
use tatzelwurm_tests::{Coordinator, Db, Worker, checkout};

use checker::{Event, FinalAttempt, FinalTask, Ns, Told};
use proxy::Proxy;

/// A randomized fault campaign against real processes, judged by an independent checker.
#[derive(Parser, Debug)]
#[command(name = "tatzelwurm-chaos", version)]
struct Args {
    /// How long faults are injected.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The seed of the fault schedule [default: a fresh one, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Python worker processes beside them (`tests/chaos/py_worker.py`, the Python package's
    /// `Worker`), under the same faults; a third of the tasks are then custom tasks only they run.
    #[arg(long, default_value_t = 0)]
    python_workers: usize,
    /// kiwipy subscriber processes beside them (`tests/chaos/kiwipy_subscriber.py`, the Python
    /// package's `TatzelwurmCommunicator`, as an AiiDA daemon worker uses it), under the same
    /// faults; a share of the tasks are then message tasks of their queue, sent as kiwipy sends.
    #[arg(long, default_value_t = 0)]
    kiwipy_subscribers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Clients adding, pausing and killing tasks.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// The coordinator's lease, in milliseconds (short, so that silences outlive it, and longer
    /// than a worker's longest reconnect backoff, 2 s).
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    /// Keep the run's directory (histories, logs) even when the checker is satisfied.
    #[arg(long)]
    keep: bool,
}

/// The machine's monotonic clock, the one clock of every history.
fn mono() -> Ns {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("the monotonic clock is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// SplitMix64: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `lo` and `hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// `run-task HISTORY MS`: the command every task runs. Appends its start, sleeps, appends its
/// end, prints its nonce (the result the checker compares with what the coordinator stored).
fn run_task(history: &Path, ms: u64) -> Result<()> {
    let task = std::env::var("TATZELWURM_TASK_ID").context("TATZELWURM_TASK_ID")?;
    let attempt = std::env::var("TATZELWURM_ATTEMPT").context("TATZELWURM_ATTEMPT")?;
    let pid = nix::unistd::getppid();
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).context("random nonce")?;
    let nonce = u64::from_le_bytes(nonce) >> 1;
    let append = |kind: &str| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(history)?;
        // One write of a short line: appends of several processes never interleave within it.
        f.write_all(format!("{kind} {task} {attempt} {pid} {nonce} {}\n", mono()).as_bytes())?;
        Ok(())
    };
    append("start")?;
    std::thread::sleep(Duration::from_millis(ms));
    append("end")?;
    println!("nonce {nonce}");
    Ok(())
}

/// The fault log: every event with its time, kept in memory for the checker and written to a
/// file for whoever reads the run afterwards.
#[derive(Clone)]
struct Log {
    events: Arc<Mutex<Vec<(Ns, Event)>>>,
    file: Arc<Mutex<std::fs::File>>,
}

impl Log {
    fn new(path: &Path) -> Result<Log> {
        Ok(Log {
            events: Arc::default(),
            file: Arc::new(Mutex::new(std::fs::File::create(path)?)),
        })
    }

    fn note(&self, e: Event) {
        let at = mono();
        let _ = writeln!(self.file.lock().expect("log"), "{at} {e:?}");
        self.events.lock().expect("log").push((at, e));
    }
}

/// A tmpfs under the data dir, to fill and free; unmounted on drop.
struct Disk {
    dir: PathBuf,
    ballast: PathBuf,
}

impl Disk {
    /// Mounts a tmpfs of `mb` MiB on `dir`; `None` when that is not allowed (not root).
    fn mount(dir: &Path, mb: u32) -> Option<Disk> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Disk {
            dir: dir.to_path_buf(),
            ballast: dir.join("ballast"),
        })
    }

    fn fill(&self) {
        if let Ok(mut f) = std::fs::File::create(&self.ballast) {
            let chunk = vec![0u8; 1 << 20];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
    }

    fn free(&self) {
        let _ = std::fs::remove_file(&self.ballast);
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// One worker's place: its name, its proxy, its current process.
struct Slot {
    name: String,
    /// What runs there.
    kind: Kind,
    proxy: Proxy,
    worker: Option<Worker>,
    stopped: bool,
    cut: bool,
    /// No new stop or cut before this: one silence at a time per worker, with room after it
    /// to be heard again, so that the checker can tell which silence outlived the lease.
    quiet_until: Instant,
    /// A silence well inside the lease is on. No coordinator kill meanwhile: a worker cut off
    /// or stopped for less than a lease, whose coordinator restarts, is silent as the new
    /// coordinator sees it for the silence plus its reconnect backoff, which may pass the lease
    /// where the checker, seeing only the silence, could not tell.
    short: bool,
}

/// What a worker's place runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `workwurm`.
    Workwurm,
    /// The Python package's `Worker` (`py_worker.py`): custom `chaos-run` tasks only.
    Python,
    /// A kiwipy communicator serving the message queue `chaos.tasks` (`kiwipy_subscriber.py`).
    Kiwipy,
}

impl Kind {
    /// The Python script this kind runs, in the checkout; `None` for `workwurm`.
    fn script(self) -> Option<PathBuf> {
        let name = match self {
            Kind::Workwurm => return None,
            Kind::Python => "py_worker.py",
            Kind::Kiwipy => "kiwipy_subscriber.py",
        };
        Some(checkout().join("tests/chaos").join(name))
    }
}

/// What undoes a fault, due at a time.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Undo {
    Continue(usize),
    Heal(usize),
    RestartWorker(usize),
    RestartCoordinator,
    FreeDisk,
}

/// Everything the fault loop drives.
struct Campaign {
    coord: Coordinator,
    coord_up: bool,
    /// Before this, a worker may still be in its reconnect backoff after the coordinator's last
    /// start, so a silence begun now would add to that backoff unseen: only long silences.
    settled_at: Instant,
    slots: Vec<Slot>,
    disk: Option<Disk>,
    disk_full: bool,
    log: Log,
    worker_args: Vec<String>,
    /// Each worker's slots (the Python ones are told it on their command line).
    slots_each: u32,
    pending: Vec<(Instant, Undo)>,
    lease: Duration,
    /// The directory of the workers' logs.
    logs: PathBuf,
}

impl Campaign {
    /// Where worker `i`'s processes write their logs, one after another: in the run directory,
    /// kept with the history when the checker fails.
    fn worker_log(&self, i: usize) -> PathBuf {
        self.logs.join(format!("{}.log", self.slots[i].name))
    }

    fn start_worker(&mut self, i: usize) {
        let log = self.worker_log(i);
        let slot = &mut self.slots[i];
        let w = if let Some(script) = slot.kind.script() {
            let mut cmd = python();
            cmd.arg(script)
                .arg(slot.proxy.addr.to_string())
                .arg(self.coord.token_file())
                .arg(&slot.name)
                .arg(self.slots_each.to_string());
            Worker::spawn_logging_to(cmd, &log)
        } else {
            let mut args = vec!["--name".to_string(), slot.name.clone()];
            args.extend(self.worker_args.iter().cloned());
            // Every other worker holds tasks beyond its slots, so that held tasks meet every
            // fault too (revoked, claimed at a reattach, lost with their worker).
            if i % 2 == 1 {
                args.extend(["--prefetch".to_string(), "2".to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let cmd = Worker::command(
                &slot.proxy.addr.to_string(),
                &self.coord.token_file(),
                &args,
            );
            Worker::spawn_logging_to(cmd, &log)
        };
        self.log.note(Event::WorkerStarted {
            name: slot.name.clone(),
            pid: w.pid(),
        });
        slot.worker = Some(w);
        slot.stopped = false;
    }

    fn undo(&mut self, u: Undo) -> Result<()> {
        match u {
            Undo::Continue(i) => {
                if let Some(w) = &self.slots[i].worker
                    && self.slots[i].stopped
                {
                    w.signal("CONT");
                    self.log.note(Event::WorkerContinued { pid: w.pid() });
                    self.slots[i].stopped = false;
                    self.slots[i].short = false;
                    self.slots[i].quiet_until = Instant::now() + self.lease * 2;
                }
            }
            Undo::Heal(i) => {
                let quiet = Instant::now() + self.lease * 2;
                let slot = &mut self.slots[i];
                slot.proxy.heal();
                slot.cut = false;
                slot.short = false;
                slot.quiet_until = quiet;
                self.log.note(Event::Healed {
                    name: slot.name.clone(),
                });
            }
            Undo::RestartWorker(i) => self.start_worker(i),
            Undo::RestartCoordinator => {
                if self.disk_full {
                    self.undo(Undo::FreeDisk)?;
                }
                self.coord.restart().context("restarting the coordinator")?;
                self.coord_up = true;
                self.settled_at = Instant::now() + self.lease * 2;
                self.log.note(Event::CoordinatorStarted);
            }
            Undo::FreeDisk => {
                if let Some(d) = self.disk.as_ref().filter(|_| self.disk_full) {
                    d.free();
                    self.disk_full = false;
                    self.log.note(Event::DiskFreed);
                }
            }
        }
        Ok(())
    }

    fn later(&mut self, after: Duration, u: Undo) {
        self.pending.push((Instant::now() + after, u));
    }

    /// Undoes what is due now.
    fn settle(&mut self) -> Result<()> {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(t, _)| *t <= now);
        self.pending = rest;
        for (_, u) in due {
            self.undo(u)?;
        }
        Ok(())
    }

    /// Undoes everything now: the disk first, the coordinator, then the workers.
    fn heal_all(&mut self) -> Result<()> {
        let mut all: Vec<Undo> = self.pending.drain(..).map(|(_, u)| u).collect();
        let rank = |u: &Undo| match u {
            Undo::FreeDisk => 0,
            Undo::RestartCoordinator => 1,
            _ => 2,
        };
        all.sort_by_key(rank);
        for u in all {
            self.undo(u)?;
        }
        if self.disk_full {
            self.undo(Undo::FreeDisk)?;
        }
        Ok(())
    }

    /// Whether worker `i` may be silenced now: not stopped, not cut, and heard for a while.
    fn quiet(&self, i: usize) -> bool {
        let s = &self.slots[i];
        !s.stopped && !s.cut && Instant::now() >= s.quiet_until
    }

    /// Whether every worker has surely reconnected since the coordinator's last start (its
    /// longest backoff, 2 s, is less than the campaign's lease).
    fn settled(&self) -> bool {
        self.coord_up && Instant::now() >= self.settled_at
    }

    /// One fault, chosen at random.
    fn inject(&mut self, rng: &mut Rng, lease: Duration) {
        let n = self.slots.len();
        let i = rng.below(n as u64) as usize;
        match rng.below(10) {
            0 if self.coord_up && !self.slots.iter().any(|s| s.short) => {
                self.coord.kill9();
                self.coord_up = false;
                self.log.note(Event::CoordinatorKilled);
                let after = rng.ms(0, 1500);
                self.later(after, Undo::RestartCoordinator);
            }
            1 | 2 if self.slots[i].worker.is_some() => {
                let mut w = self.slots[i].worker.take().expect("checked");
                let pid = w.pid();
                w.kill9();
                self.log.note(Event::WorkerKilled { pid });
                self.pending
                    .retain(|(_, u)| *u != Undo::Continue(i) && *u != Undo::RestartWorker(i));
                if self.slots[i].stopped {
                    self.slots[i].short = false;
                }
                self.slots[i].stopped = false;
                let after = rng.ms(0, 800);
                self.later(after, Undo::RestartWorker(i));
            }
            3 | 4 if self.slots[i].worker.is_some() && self.quiet(i) => {
                let w = self.slots[i].worker.as_ref().expect("checked");
                w.signal("STOP");
                self.log.note(Event::WorkerStopped { pid: w.pid() });
                self.slots[i].stopped = true;
                let after = silence(rng, lease, self.settled());
                self.slots[i].short = after < lease;
                self.later(after, Undo::Continue(i));
            }
            5 | 6 if self.quiet(i) => {
                self.slots[i].proxy.cut();
                self.slots[i].cut = true;
                self.log.note(Event::Cut {
                    name: self.slots[i].name.clone(),
                });
                let after = silence(rng, lease, self.settled());
                self.slots[i].short = after < lease;
                self.later(after, Undo::Heal(i));
            }
            7 => {
                self.slots[i].proxy.reset();
                self.log.note(Event::Reset {
                    name: self.slots[i].name.clone(),
                });
            }
            8 if self.disk.is_some() && !self.disk_full && self.coord_up => {
                self.disk.as_ref().expect("checked").fill();
                self.disk_full = true;
                self.log.note(Event::DiskFull);
                let after = rng.ms(300, 2000);
                self.later(after, Undo::FreeDisk);
            }
            _ => {}
        }
    }
}

/// How long a stop or a cut lasts: either well inside the lease (0.2–0.45 of it: the worker
/// keeps its tasks) or well past it (1.3–2.5 leases: it loses them), never near it, where
/// heartbeat timing and a busy machine decide and the checker could not tell which happened.
/// Only long ones unless `short_ok` (see `Campaign::settled`).
fn silence(rng: &mut Rng, lease: Duration, short_ok: bool) -> Duration {
    let fraction = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    if rng.below(2) == 0 && short_ok {
        lease.mul_f64(0.2 + fraction * 0.25)
    } else {
        lease.mul_f64(1.3 + fraction * 1.2)
    }
}

/// What the clients share: the coordinator's address, its token, what they were told (also
/// written, a line per answer, to the clients' log).
struct Shared {
    addr: String,
    token: String,
    told: Mutex<Told>,
    log: Mutex<std::fs::File>,
    stop: AtomicBool,
    exe: PathBuf,
    history: PathBuf,
    /// Python workers run: a third of the tasks are theirs (custom `chaos-run`).
    custom: bool,
    /// kiwipy subscribers run: a fifth of the clients' actions send a message task to their
    /// queue.
    messages: bool,
}

/// Counts an add that failed, refused by the coordinator or left unanswered; returns its error.
fn add_failed(shared: &Shared, e: ClientError) -> ClientError {
    let mut told = shared.told.lock().expect("told");
    match e {
        ClientError::Server(_) => told.refused += 1,
        _ => told.unanswered += 1,
    }
    e
}

/// One client: adds small batches of tasks, and now and then pauses or kills one of its own, or
/// drops its connection in the middle of an add (a client restarted mid-request).
async fn client_loop(shared: Arc<Shared>, k: usize, mut rng: Rng) {
    let note = |what: &str, ids: &[tatzelwurm_protocol::TaskId]| {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(
            shared.log.lock().expect("client log"),
            "{} client {k} {what} {}",
            mono(),
            ids.join(" ")
        );
    };
    let mut conn: Option<Client> = None;
    let mut mine: Vec<String> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.ms(80, 300)).await;
        if conn.is_none() {
            match Client::connect(&shared.addr, &shared.token, BodyCodec::Bincode).await {
                Ok(c) => conn = Some(c),
                Err(_) => continue,
            }
        }
        let c = conn.as_mut().expect("connected above");
        let roll = rng.below(100);
        let pick =
            |rng: &mut Rng, mine: &[String]| mine[rng.below(mine.len() as u64) as usize].clone();
        let result: Result<(), ClientError> = if roll < 4 && !mine.is_empty() {
            let id = pick(&mut rng, &mine);
            match c
                .change(ActionerRequest::Kill {
                    selector: Selector::Ids(vec![id]),
                })
                .await
            {
                Ok(ids) => {
                    note("killed", &ids);
                    let mut told = shared.told.lock().expect("told");
                    told.killed.extend(ids.iter().map(|i| i.to_string()));
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else if roll < 10 && !mine.is_empty() {
            let id = pick(&mut rng, &mine);
            let sel = || Selector::Ids(vec![id.clone()]);
            match c.change(ActionerRequest::Pause { selector: sel() }).await {
                Ok(_) => {
                    tokio::time::sleep(rng.ms(20, 600)).await;
                    c.change(ActionerRequest::Play {
                        selector: sel(),
                        created: false,
                    })
                    .await
                    .map(|_| ())
                }
                Err(e) => Err(e),
            }
        } else if shared.messages && roll < 30 {
            // A message task, sent as kiwipy's `task_send` sends it (its outcome is kept for the
            // sender, whose replies this connection reads past). Its body: the history, how long
            // the work takes, and a key by which a subscriber tells its works apart.
            let ms = 50 + rng.below(900);
            let key = rng.below(u64::MAX >> 1);
            let body = Data::encode(&(shared.history.display().to_string(), ms, key))
                .expect("a string and numbers encode");
            match c
                .request(ActionerRequest::Send {
                    queue: "chaos.tasks".into(),
                    body,
                    no_reply: false,
                })
                .await
            {
                Ok(Reply::Sent { id }) => {
                    note("added", &[id]);
                    shared
                        .told
                        .lock()
                        .expect("told")
                        .added
                        .insert(id.to_string());
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(add_failed(&shared, e)),
            }
        } else {
            let n = 1 + rng.below(3) as usize;
            let specs: Vec<TaskSpec> = (0..n)
                .map(|_| {
                    let ms = 50 + rng.below(900);
                    let payload = if shared.custom && rng.below(3) == 0 {
                        Payload::Custom {
                            handler: "chaos-run".into(),
                            data: Data::encode(&(shared.history.display().to_string(), ms))
                                .expect("a string and a number encode"),
                        }
                    } else {
                        Payload::Exec {
                            argv: vec![
                                shared.exe.display().to_string(),
                                "run-task".into(),
                                shared.history.display().to_string(),
                                ms.to_string(),
                            ],
                            env: vec![],
                            cwd: None,
                        }
                    };
                    let mut s = TaskSpec::new(payload);
                    s.max_attempts = 3;
                    s
                })
                .collect();
            if roll >= 96 {
                // Cut off mid-request: the add may or may not have landed; nobody was told.
                let cut = tokio::time::timeout(rng.ms(0, 3), c.add(specs, true)).await;
                match cut {
                    Ok(Ok(ids)) => {
                        note("added", &ids);
                        let mut told = shared.told.lock().expect("told");
                        told.added.extend(ids.iter().map(|i| i.to_string()));
                    }
                    _ => {
                        note("add cut off", &[]);
                        shared.told.lock().expect("told").unanswered += 1;
                    }
                }
                conn = None;
                continue;
            }
            match c.add(specs, true).await {
                Ok(ids) => {
                    note("added", &ids);
                    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                    mine.extend(ids.iter().cloned());
                    shared.told.lock().expect("told").added.extend(ids);
                    Ok(())
                }
                Err(e) => Err(add_failed(&shared, e)),
            }
        };
        match result {
            // Refused (a full disk, a task already ended): the connection is fine.
            Ok(()) | Err(ClientError::Server(_)) => {}
            Err(_) => conn = None,
        }
    }
}

/// Reads every task with its attempts.
async fn read_tables(addr: &str, token: &str) -> Result<HashMap<String, FinalTask>> {
    let mut c = Client::connect(addr, token, BodyCodec::Bincode).await?;
    let (tasks, _) = c.list(vec![], vec![], None, None).await?;
    let mut out = HashMap::new();
    for t in tasks {
        let (info, _) = c.show(&t.id.to_string()).await?;
        out.insert(
            t.id.to_string(),
            FinalTask {
                state: info.state.as_str().to_string(),
                attempts: info
                    .attempts
                    .iter()
                    .map(|a| FinalAttempt {
                        number: a.number,
                        outcome: a.outcome.map(|o| o.as_str().to_string()),
                        // A command's answer is its stdout; a Python handler's, its output
                        // (MessagePack: the text of a string stands in it as it is).
                        stdout: format!(
                            "{}{}",
                            a.stdout_tail,
                            String::from_utf8_lossy(&a.output.0)
                        ),
                    })
                    .collect(),
            },
        );
    }
    Ok(out)
}

/// Plays what was left paused and waits until nothing is queued or running, up to `within`.
async fn drain(addr: &str, token: &str, within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::connect(addr, token, BodyCodec::Bincode).await {
            let _ = c
                .change(ActionerRequest::Play {
                    selector: Selector::All,
                    created: false,
                })
                .await;
            if let Ok((_, counts)) = c.list(vec![], vec![], Some(0), None).await {
                let open: u64 = counts
                    .iter()
                    .filter(|s| !s.state.is_final() && s.state != TaskState::Created)
                    .map(|s| s.count)
                    .sum();
                if open == 0 {
                    return Ok(true);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(false)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("run-task") {
        let (Some(history), Some(ms)) = (argv.get(2), argv.get(3)) else {
            bail!("usage: tatzelwurm-chaos run-task HISTORY MS");
        };
        return run_task(Path::new(history), ms.parse().context("MS")?);
    }
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random seed");
        u64::from_le_bytes(b) >> 1
    });
    println!(
        "tatzelwurm-chaos: seed {seed}, {} s, {} workers, {} clients, lease {} ms (replay: --seed {seed})",
        args.seconds, args.workers, args.clients, args.lease_ms
    );
    let verdict = campaign(&args, seed);
    match verdict {
        Ok(true) => Ok(()),
        Ok(false) => {
            println!("tatzelwurm-chaos: FAILED with seed {seed}");
            std::process::exit(1)
        }
        Err(e) => {
            println!("tatzelwurm-chaos: the campaign itself failed (seed {seed}): {e:#}");
            std::process::exit(2)
        }
    }
}

/// This checkout's Python package (the directory that holds `tatzelwurm/`).
fn python_package() -> PathBuf {
    checkout().join("clients/python")
}

/// python3 importing this checkout's Python package first: the campaign tests the code beside
/// it, whatever copy of the package is installed (or none, on a fresh machine).
fn python() -> std::process::Command {
    let mut path = std::ffi::OsString::from(python_package());
    if let Some(more) = std::env::var_os("PYTHONPATH") {
        path.push(":");
        path.push(more);
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.env("PYTHONPATH", path);
    cmd
}

/// Fails clearly, before the campaign, when the workers of `kind` (asked for by `flag`) could
/// not start: a worker that cannot start would only show as tasks that never drain. Its script
/// must be in the checkout, and python3 must import `modules` and this checkout's package (not
/// another copy that happens to be installed).
fn need_python(flag: &str, kind: Kind, modules: &[&str]) -> Result<()> {
    let script = kind.script().expect("a Python kind");
    if !script.is_file() {
        bail!(
            "{flag}: no {} (run it from a checkout, through cargo)",
            script.display()
        );
    }
    let out = python()
        .args([
            "-c",
            &format!(
                "import os, tatzelwurm, {}; print(os.path.realpath(tatzelwurm.__file__))",
                modules.join(", ")
            ),
        ])
        .output();
    let imported = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => {
            let list = modules.join(" ");
            bail!(
                "{flag} needs python3 with {list} (pip install {list}), and the package in clients/python to import"
            );
        }
    };
    let package = python_package();
    let ours = package.canonicalize().unwrap_or(package);
    if !Path::new(&imported).starts_with(&ours) {
        bail!(
            "{flag}: python3 imports tatzelwurm from {imported}, not from this checkout's {}",
            ours.display()
        );
    }
    Ok(())
}

/// Runs the campaign; true when the checker finds nothing.
fn campaign(args: &Args, seed: u64) -> Result<bool> {
    let rt = tokio::runtime::Runtime::new()?;
    let run = tempfile::Builder::new()
        .prefix("tatzelwurm-chaos-")
        .tempdir()?;
    let data = run.path().join("data");
    std::fs::create_dir_all(&data)?;
    let disk = Disk::mount(&data, 256);
    if disk.is_none() {
        println!("tatzelwurm-chaos: cannot mount a tmpfs (not root?): no full-disk faults");
    }
    let lease = Duration::from_millis(args.lease_ms);
    let coord = Coordinator::start_with(
        Db::Kv,
        &[
            "--lease",
            &format!("{}ms", args.lease_ms),
            "--heartbeat",
            &format!("{}ms", args.lease_ms / 8),
            "--data-dir",
            &data.display().to_string(),
        ],
    )?;
    let log = Log::new(&run.path().join("faults.log"))?;
    log.note(Event::CoordinatorStarted);
    let history = run.path().join("history");
    let token = std::fs::read_to_string(coord.token_file())?
        .trim()
        .to_string();
    if args.python_workers > 0 {
        need_python("--python-workers", Kind::Python, &["msgpack"])?;
    }
    if args.kiwipy_subscribers > 0 {
        need_python("--kiwipy-subscribers", Kind::Kiwipy, &["msgpack", "kiwipy"])?;
    }
    let kinds = std::iter::repeat_n(Kind::Workwurm, args.workers)
        .chain(std::iter::repeat_n(Kind::Python, args.python_workers))
        .chain(std::iter::repeat_n(Kind::Kiwipy, args.kiwipy_subscribers));
    let mut slots = Vec::new();
    for (i, kind) in kinds.enumerate() {
        slots.push(Slot {
            name: match kind {
                Kind::Workwurm => format!("w{i}"),
                Kind::Python => format!("py{}", i - args.workers),
                Kind::Kiwipy => format!("kiwipy{}", i - args.workers - args.python_workers),
            },
            kind,
            proxy: rt.block_on(Proxy::start(coord.addr.clone()))?,
            worker: None,
            stopped: false,
            cut: false,
            quiet_until: Instant::now(),
            short: false,
        });
    }
    let mut c = Campaign {
        coord,
        coord_up: true,
        settled_at: Instant::now(),
        slots,
        disk,
        disk_full: false,
        log: log.clone(),
        worker_args: vec![
            "--slots".into(),
            args.slots.to_string(),
            "--kill-grace".into(),
            "500ms".into(),
        ],
        slots_each: args.slots,
        pending: Vec::new(),
        lease,
        logs: run.path().join("workers"),
    };
    std::fs::create_dir_all(&c.logs)?;
    for i in 0..c.slots.len() {
        c.start_worker(i);
    }
    let shared = Arc::new(Shared {
        addr: c.coord.addr.clone(),
        token: token.clone(),
        told: Mutex::new(Told::default()),
        log: Mutex::new(std::fs::File::create(run.path().join("clients.log"))?),
        stop: AtomicBool::new(false),
        exe: std::env::current_exe()?,
        history: history.clone(),
        custom: args.python_workers > 0,
        messages: args.kiwipy_subscribers > 0,
    });
    let mut rng = Rng(seed);
    let clients: Vec<_> = (0..args.clients)
        .map(|k| {
            rt.spawn(client_loop(
                shared.clone(),
                k,
                Rng(seed ^ ((k as u64 + 1) << 32)),
            ))
        })
        .collect();

    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        std::thread::sleep(rng.ms(200, 900));
        c.settle()?;
        c.inject(&mut rng, lease);
    }
    // Quiet: every fault undone, the clients stopped, the queue drained.
    c.heal_all()?;
    shared.stop.store(true, Ordering::Relaxed);
    for h in clients {
        let _ = rt.block_on(h);
    }
    let drained = rt.block_on(drain(&shared.addr, &token, Duration::from_secs(120)))?;
    // One more crash, so that the tables read are what the store kept.
    c.coord.kill9();
    log.note(Event::CoordinatorKilled);
    c.coord.restart()?;
    log.note(Event::CoordinatorStarted);
    let tables = rt.block_on(read_tables(&shared.addr, &token))?;
    for s in &mut c.slots {
        if let Some(mut w) = s.worker.take() {
            w.kill9();
        }
    }
    c.coord.kill9();

    let runs = checker::parse_runs(&std::fs::read_to_string(&history).unwrap_or_default());
    let events = log.events.lock().expect("log").clone();
    let told = shared.told.lock().expect("told").clone();
    // The coordinator gives a task away after a lease of silence; heartbeats every eighth of
    // it blur when the silence began by that much, twice.
    let silent_enough = (lease.as_nanos() as u64) * 3 / 4;
    // The longest reconnect backoff of the workers here (`workwurm` and the Python package's
    // worker: 2 s; its kiwipy communicator: 1 s).
    let reconnect_lag = 2_000_000_000;
    let mut v = checker::check(&runs, &events, &tables, &told, silent_enough, reconnect_lag);
    if !drained {
        v.violations
            .push("the queue did not drain within 120 s of the last fault".into());
    }

    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, e) in &events {
        *kinds.entry(e.kind()).or_default() += 1;
    }
    println!(
        "tasks: {} acknowledged ({} adds refused, {} cut off unanswered), {} in the table; runs: {}",
        told.added.len(),
        told.refused,
        told.unanswered,
        tables.len(),
        v.runs
    );
    println!("final states of acknowledged tasks: {:?}", v.states);
    println!("events: {kinds:?}");
    // How often the prefetching worker's held tasks were moved to a free one.
    println!(
        "held tasks asked back: {}",
        c.coord
            .log_text()
            .matches("a held task is asked back")
            .count()
    );
    println!(
        "tasks that ran to the end twice, by cause: {:?}",
        v.double_runs
    );
    let ok = v.violations.is_empty();
    if ok {
        println!("checker: no violation");
    } else {
        println!("checker: {} violations", v.violations.len());
        for m in v.violations.iter().take(50) {
            println!("  {m}");
        }
    }
    if !ok || args.keep {
        let _ = std::fs::write(run.path().join("coordinator.log"), c.coord.log_text());
        drop(c);
        let kept = run.keep();
        println!("run directory kept: {}", kept.display());
    }
    Ok(ok)
}
