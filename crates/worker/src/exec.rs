//! Running a command: its own process group (so that signals reach the whole tree), bounded tails
//! of stdout and stderr, a timeout, and kill, pause and resume by signals.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tatzelwurm_protocol::{
    AttemptRef, AttemptReport, Bytes, EnvVar, OUTPUT_TAIL_LIMIT, Outcome, OutputStream,
    WorkerToCoordinator, now_ms,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::debug;

use crate::runner::Control;

/// A command's output as the worker holds it: the tail of each stream, how much was written
/// to it, and whether somebody follows it (then every piece also goes to `sink`).
struct Tap {
    attempt: AttemptRef,
    sink: mpsc::Sender<WorkerToCoordinator>,
    following: bool,
    /// The last bytes of stdout and stderr: at least [`OUTPUT_TAIL_LIMIT`] of each when there
    /// were as many, at most twice that.
    tails: [Vec<u8>; 2],
    /// Bytes written to each stream since the start.
    written: [u64; 2],
}

impl Tap {
    /// Passes a piece on to the follower. A full channel (the connection cannot keep up) drops
    /// it: the offsets of the next pieces show the gap.
    fn send(&self, i: usize, offset: u64, data: Vec<u8>) {
        let piece = WorkerToCoordinator::Output {
            attempt: self.attempt,
            stream: OutputStream::BOTH[i],
            offset,
            data: Bytes(data),
        };
        let _ = self.sink.try_send(piece);
    }

    fn read(&mut self, i: usize, chunk: &[u8]) {
        if self.following {
            self.send(i, self.written[i], chunk.to_vec());
        }
        self.written[i] += chunk.len() as u64;
        let tail = &mut self.tails[i];
        tail.extend_from_slice(chunk);
        if tail.len() > 2 * OUTPUT_TAIL_LIMIT {
            tail.drain(..tail.len() - OUTPUT_TAIL_LIMIT);
        }
    }

    /// Somebody follows now (or nobody does): what the tails hold goes first.
    fn follow(&mut self, on: bool) {
        self.following = on;
        if on {
            for i in 0..2 {
                if !self.tails[i].is_empty() {
                    let offset = self.written[i] - self.tails[i].len() as u64;
                    self.send(i, offset, self.tails[i].clone());
                }
            }
        }
    }

    /// The stored tail of stream `i`: its last [`OUTPUT_TAIL_LIMIT`] bytes, lossy UTF-8.
    fn tail(&self, i: usize) -> String {
        let t = &self.tails[i];
        String::from_utf8_lossy(&t[t.len().saturating_sub(OUTPUT_TAIL_LIMIT)..]).into_owned()
    }
}

/// Reads both streams of a command to their ends into the tap. One future for both, polled
/// in the attempt's own: two tasks a command cost a spawn each, and each carried its read
/// buffer in its state; here the buffer lives on the stack only while a poll reads.
async fn read_both(streams: [Output; 2], tap: &Mutex<Tap>) {
    let mut open = streams.map(Some);
    std::future::poll_fn(|cx| {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        for (i, stream) in open.iter_mut().enumerate() {
            while let Some(r) = stream {
                let mut chunk = ReadBuf::uninit(&mut buf);
                match Pin::new(r).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(())) if !chunk.filled().is_empty() => {
                        tap.lock().expect("never poisoned").read(i, chunk.filled())
                    }
                    // The end of the stream (or an error, which ends it as well).
                    Poll::Ready(_) => *stream = None,
                    Poll::Pending => break,
                }
            }
        }
        if open.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

fn signal_group(pid: u32, sig: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pid as i32), sig) {
        debug!(pid, ?sig, error = %e, "signal not delivered");
    }
}

/// Makes the command die with the worker (Linux: the parent-death signal). A worker killed with
/// `kill -9` cannot stop its commands, and its tasks go to other workers when its lease ends: a
/// command that outlived it would run twice at once. The signal is sent when the thread that
/// started the command ends; commands are started on the runtime's worker threads, which live as
/// long as the worker. It survives `exec`, so `sh -c 'CMD'` (which execs a lone command) is covered.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_the_worker(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec. It only calls prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The worker may have died between the fork and the prctl (an OS error, so that
            // nothing is allocated here).
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_the_worker(_cmd: &mut Command) {}

/// How commands are started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Spawn {
    /// A vfork-style clone ([`crate::spawn`]): the worker's memory is not copied.
    #[default]
    Clone,
    /// The standard library's fork and exec: the whole worker is copied for every command
    /// (several times slower; kept for comparison, and as a way out should clone fail).
    Fork,
}

/// A started command, however it was started.
enum Proc {
    Cloned(crate::spawn::Child),
    Forked(tokio::process::Child),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Cloned(c) => c.id(),
            Proc::Forked(c) => c.id().unwrap_or(0),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Cloned(c) => c.wait().await,
            Proc::Forked(c) => c.wait().await,
        }
    }
}

type Output = Box<dyn AsyncRead + Unpin + Send>;

/// Starts a command in its own process group, dying with the worker, its stdout and stderr
/// piped.
fn start(
    spawn: Spawn,
    argv: &[String],
    vars: &[(String, String)],
    cwd: Option<&str>,
) -> std::io::Result<(Proc, Output, Output)> {
    if spawn == Spawn::Clone {
        let s = crate::spawn::spawn(argv, vars, cwd)?;
        return Ok((
            Proc::Cloned(s.child),
            Box::new(s.stdout),
            Box::new(s.stderr),
        ));
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    die_with_the_worker(&mut cmd);
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    Ok((Proc::Forked(child), Box::new(out), Box::new(err)))
}

/// Runs `argv` to its end, a timeout, or a kill, and reports how it ended. Its output goes to
/// `output` while somebody follows it.
#[allow(clippy::too_many_arguments)]
pub async fn run_exec(
    attempt: AttemptRef,
    output: mpsc::Sender<WorkerToCoordinator>,
    argv: &[String],
    env: &[EnvVar],
    cwd: Option<&str>,
    extra_env: &[(String, String)],
    timeout: Option<Duration>,
    kill_grace: Duration,
    spawn: Spawn,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> AttemptReport {
    let started = now_ms();
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    vars.extend(extra_env.iter().cloned());
    let (mut child, stdout, stderr) = match start(spawn, argv, &vars, cwd) {
        Ok(started) => started,
        Err(e) => {
            let where_ = cwd.map(|d| format!(" in {d}")).unwrap_or_default();
            return AttemptReport {
                outcome: Some(Outcome::Failed),
                error: Some(format!("cannot start {:?}{where_}: {e}", argv[0])),
                started_ms: Some(started),
                ended_ms: now_ms(),
                ..Default::default()
            };
        }
    };
    let pid = child.id();
    let tap = Mutex::new(Tap {
        attempt,
        sink: output,
        following: false,
        tails: [Vec::new(), Vec::new()],
        written: [0; 2],
    });
    let reading = read_both([stdout, stderr], &tap);
    tokio::pin!(reading);
    let mut read_all = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stop: Option<(Outcome, String)> = None;
    let mut term_sent_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let grace_end = term_sent_at.map(|t| t + kill_grace);
        tokio::select! {
            st = child.wait() => break st,
            () = &mut reading, if !read_all => read_all = true,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && stop.is_none() => {
                stop = Some((Outcome::TimedOut, format!("timed out after {}", humantime_ms(timeout.unwrap_or_default()))));
                signal_group(pid, Signal::SIGCONT);
                signal_group(pid, Signal::SIGTERM);
                term_sent_at = Some(tokio::time::Instant::now());
            }
            _ = async { tokio::time::sleep_until(grace_end.expect("guarded")).await }, if grace_end.is_some() => {
                signal_group(pid, Signal::SIGKILL);
                term_sent_at = None;
            }
            c = control.recv() => match c {
                Some(Control::Pause) => signal_group(pid, Signal::SIGSTOP),
                Some(Control::Resume) => signal_group(pid, Signal::SIGCONT),
                Some(Control::Stop(outcome, why)) if stop.is_none() => {
                    stop = Some((outcome, why));
                    signal_group(pid, Signal::SIGCONT);
                    signal_group(pid, Signal::SIGTERM);
                    term_sent_at = Some(tokio::time::Instant::now());
                }
                Some(Control::Stop(..)) => {}
                Some(Control::Follow(on)) => tap.lock().expect("never poisoned").follow(on),
                // The runner is gone (the worker stops at once): kill the group now.
                None => {
                    signal_group(pid, Signal::SIGKILL);
                    break child.wait().await;
                }
            },
        }
    };
    // The whole group, in case the leader left children behind.
    signal_group(pid, Signal::SIGKILL);
    if !read_all {
        reading.await;
    }
    let (stdout_tail, stderr_tail) = {
        let tap = tap.lock().expect("never poisoned");
        (tap.tail(0), tap.tail(1))
    };
    let mut report = AttemptReport {
        stdout_tail,
        stderr_tail,
        started_ms: Some(started),
        ended_ms: now_ms(),
        ..Default::default()
    };
    match status {
        Err(e) => {
            report.outcome = Some(Outcome::Failed);
            report.error = Some(format!("cannot wait for the process: {e}"));
        }
        Ok(st) => {
            report.exit_code = st.code();
            use std::os::unix::process::ExitStatusExt;
            if let Some((outcome, why)) = stop {
                report.outcome = Some(outcome);
                report.error = Some(why);
            } else if st.success() {
                report.outcome = Some(Outcome::Succeeded);
            } else {
                report.outcome = Some(Outcome::Failed);
                report.error = Some(match (st.code(), st.signal()) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(s)) => format!("killed by signal {s}"),
                    _ => "ended abnormally".into(),
                });
            }
        }
    }
    report
}

fn humantime_ms(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
