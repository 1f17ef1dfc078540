//! Test support: starts the real `tatzelwurm`, `workwurm` and `actionwurm` binaries on loopback
//! ports and temporary data dirs, and cleans them up. Used by the integration tests in `tests/`
//! and by the load tool in `benches/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the workspace's binaries are: next to the running test executable's `deps` folder.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TATZELWURM_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The checkout the tests belong to, for its files (scripts, golden files, README).
///
/// Read at run time first: `cargo run` and `cargo test` set `CARGO_MANIFEST_DIR` for what they
/// start. The value compiled in is only the fallback, because Cargo does not rebuild a binary
/// when the same sources move to another checkout. A build reused from another clone's
/// directory (CI may reuse one) would otherwise point at that clone, which may be gone or
/// hold other code.
pub fn checkout() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The path of one of the binaries; fails clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Which store a test coordinator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// `mem://`: fast, nothing kept.
    Mem,
    /// `surrealkv://` in the data dir: persistent.
    Kv,
}

/// A running coordinator process.
pub struct Coordinator {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its data dir (kept across restarts).
    pub dir: PathBuf,
    /// Keeps the temporary dir alive.
    _tmp: Option<tempfile::TempDir>,
    db: Db,
    extra: Vec<String>,
    /// Its stderr log file.
    pub log: PathBuf,
    /// `http://HOST:PORT` of its HTTP edge, when the extra flags ask for one with `--http`.
    pub http: Option<String>,
    /// How the CLI and the workers these helpers start reach it, when not through `addr`
    /// (`unix:PATH` for its `--socket`).
    pub reach: Option<String>,
}

impl Coordinator {
    /// Starts a coordinator on a fresh temporary data dir with a 3 s lease: short enough for
    /// quick tests, long enough that a busy test machine does not lose its workers.
    pub fn start(db: Db) -> Result<Coordinator> {
        Self::start_with(db, &["--lease", "3s"])
    }

    /// Starts one with extra flags.
    pub fn start_with(db: Db, extra: &[&str]) -> Result<Coordinator> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut c = Coordinator {
            child: None,
            addr: String::new(),
            log: dir.join("coordinator.log"),
            dir,
            _tmp: Some(tmp),
            db,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: None,
            reach: None,
        };
        c.spawn("127.0.0.1:0")?;
        Ok(c)
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        // An explicit --data-dir in the extra flags wins; the store goes inside it.
        let explicit_dir = self.extra.iter().position(|a| a == "--data-dir");
        if let Some(i) = explicit_dir {
            self.dir = PathBuf::from(&self.extra[i + 1]);
        }
        let db = match self.db {
            Db::Mem => "mem://".to_string(),
            Db::Kv => format!("surrealkv://{}", self.dir.join("store").display()),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin("tatzelwurm"));
        // An explicit --listen in the extra flags wins (the address found is then read back).
        if !self.extra.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", listen]);
        }
        if explicit_dir.is_none() {
            cmd.arg("--data-dir").arg(&self.dir);
        }
        if !self.extra.iter().any(|a| a == "--db") {
            cmd.args(["--db", &db]);
        }
        let mut child = cmd
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot start tatzelwurm")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let Some(addr) = first.strip_prefix("tatzelwurm listening on ") else {
            let _ = child.kill();
            bail!(
                "coordinator did not start: {first:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        };
        // A wildcard listener is reached through loopback.
        self.addr = addr.trim().replace("0.0.0.0:", "127.0.0.1:");
        // With --http: the data dir line, then the HTTP address.
        if self.extra.iter().any(|a| a == "--http") {
            let _data_dir = lines.next();
            let line = lines.next().transpose()?.unwrap_or_default();
            self.http = line
                .strip_prefix("tatzelwurm http on ")
                .map(|u| u.trim().trim_end_matches('/').to_string());
        }
        // Drain the rest of stdout in the background so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        // The port is bound before the store opens: wait until it answers requests, or exits.
        let mut exited = None;
        wait_for(Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.try_action(&["summary"])
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("coordinator never answered; log:\n{}", self.log_text()))?;
        if let Some(status) = exited {
            bail!(
                "coordinator exited ({status}) before answering; log:\n{}",
                self.log_text()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// The token file clients must present.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// The coordinator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself, up to `within`; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let status = c.wait().ok()?;
        status.code()
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let addr = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(&addr) {
                Ok(()) => return Ok(()),
                // The old process's port may take a moment to be free again.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address peers started here use: [`Coordinator::reach`] when set, else `addr`.
    pub fn peer_addr(&self) -> &str {
        self.reach.as_deref().unwrap_or(&self.addr)
    }

    /// Runs `actionwurm` against this coordinator.
    pub fn try_action(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(bin("actionwurm"));
        cmd.args(["--coordinator", self.peer_addr()]);
        // A coordinator with --insecure-no-auth has no token file.
        if self.token_file().exists() {
            cmd.arg("--token-file").arg(self.token_file());
        }
        cmd.args(args)
            .env_remove("RUST_LOG")
            .output()
            .context("cannot run actionwurm")
    }

    /// Runs `actionwurm` and requires success; returns stdout.
    pub fn action(&self, args: &[&str]) -> String {
        let out = self.try_action(args).expect("actionwurm runs");
        assert!(
            out.status.success(),
            "actionwurm {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `actionwurm --json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.action(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// The ids of every task, sorted.
    pub fn all_ids(&self) -> Vec<String> {
        let list = self.json(&["task", "list", "-f", "all"]);
        let mut ids: Vec<String> = list
            .as_array()
            .expect("an array of tasks")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Adds tasks with `actionwurm task add ARGS` and returns their ids.
    pub fn add(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["task", "add"];
        all.extend_from_slice(args);
        let v = self.json(&all);
        v.as_array()
            .expect("an array of tasks")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// `task show --json`.
    pub fn show(&self, id: &str) -> Value {
        self.json(&["task", "show", id])
    }

    /// The state of a task.
    pub fn state(&self, id: &str) -> String {
        self.show(id)["state"].as_str().expect("state").to_string()
    }

    /// Waits until the task reaches `state` (polling `task show`; tests may poll, the product does not).
    pub fn wait_state(&self, id: &str, state: &str, within: Duration) {
        let mut last = String::new();
        let ok = wait_for(within, || {
            last = self.state(id);
            last == state
        });
        assert!(
            ok.is_ok(),
            "task {id} is {last}, not {state}, after {within:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Starts a worker against this coordinator.
    pub fn worker(&self, args: &[&str]) -> Worker {
        Worker::start(self.peer_addr(), &self.token_file(), args)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running worker process.
pub struct Worker {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
    /// The directory of its log, unless the caller gave the log a place of its own.
    _tmp: Option<tempfile::TempDir>,
}

impl Worker {
    /// Starts `workwurm ARGS` against `addr`.
    pub fn start(addr: &str, token_file: &Path, args: &[&str]) -> Worker {
        Worker::spawn(Worker::command(addr, token_file, args))
    }

    /// `workwurm ARGS` against `addr`, to start with [`Worker::spawn`] or
    /// [`Worker::spawn_logging_to`].
    pub fn command(addr: &str, token_file: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("workwurm"));
        cmd.args(["--coordinator", addr, "--token-file"])
            .arg(token_file)
            .args(args)
            .env("RUST_LOG", "info");
        cmd
    }

    /// Starts a worker of another kind (the Python one), its stderr to the log.
    pub fn spawn(cmd: Command) -> Worker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("worker.log");
        let mut w = Worker::spawn_logging_to(cmd, &log);
        w._tmp = Some(tmp);
        w
    }

    /// Starts a worker with its stderr appended to `log`, which outlives it (the fault campaign
    /// keeps every worker's log beside its history).
    pub fn spawn_logging_to(mut cmd: Command, log: &Path) -> Worker {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        Worker {
            child: Some(child),
            log: log.to_path_buf(),
            _tmp: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal by name (TERM, STOP, CONT, KILL).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit, up to `within`; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            signal(c.id(), "CONT");
        }
        self.kill9();
    }
}

/// The SurrealDB server binary for the `ws://` store tests: `TATZELWURM_SURREAL_BIN`, which
/// `scripts/test` sets after building `tools/surreal-server`.
pub fn surreal_bin() -> PathBuf {
    let p = std::env::var_os("TATZELWURM_SURREAL_BIN")
        .map(PathBuf::from)
        .expect("TATZELWURM_SURREAL_BIN is not set: run scripts/test, which builds the server");
    assert!(p.exists(), "no SurrealDB server at {}", p.display());
    p
}

/// A real SurrealDB server on a loopback port, with a root user, storing in `surrealkv` under a
/// directory that outlives restarts of the server.
pub struct SurrealServer {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Root user name.
    pub user: String,
    /// Root password.
    pub pass: String,
    dir: tempfile::TempDir,
}

impl SurrealServer {
    /// Starts one on a free port.
    pub fn start() -> Result<SurrealServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut s = SurrealServer {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            user: "root".into(),
            pass: "tatzelwurm-test-secret".into(),
            dir: tempfile::tempdir()?,
        };
        s.spawn()?;
        Ok(s)
    }

    /// The URL the coordinator's `--db` takes.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The coordinator flags that log in to this server in `namespace` / `database`.
    pub fn flags(&self, namespace: &str, database: &str) -> Vec<String> {
        [
            "--db",
            &self.url(),
            "--db-user",
            &self.user,
            "--db-pass",
            &self.pass,
            "--db-namespace",
            namespace,
            "--db-database",
            database,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("surreal.log"))?;
        let child = Command::new(surreal_bin())
            .args([
                "start",
                "--no-banner",
                "--log",
                "warn",
                "--bind",
                &self.addr,
            ])
            .args(["--user", &self.user, "--pass", &self.pass])
            .arg(format!(
                "surrealkv://{}",
                self.dir.path().join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the SurrealDB server")?;
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for(Duration::from_secs(60), || {
            std::net::TcpStream::connect(&addr).is_ok()
        })
        .with_context(|| {
            format!(
                "SurrealDB server never listened; log:\n{}",
                std::fs::read_to_string(self.dir.path().join("surreal.log")).unwrap_or_default()
            )
        })
    }

    /// `kill -9`: the server vanishes mid-conversation.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for SurrealServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for a child to exit, up to `within`; returns its exit code and forgets it.
fn wait_exit(child: &mut Option<Child>, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(c) = child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            *child = None;
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Sends a signal with `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The largest number of attempts that ran at the same time, from their start and end times.
pub fn max_overlap(intervals: &[(String, String)]) -> usize {
    let mut points: Vec<(String, i32)> = Vec::new();
    for (s, e) in intervals {
        points.push((s.clone(), 1));
        points.push((e.clone(), -1));
    }
    // RFC 3339 in UTC with fixed millisecond precision sorts as text; ends before starts on ties.
    points.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}
