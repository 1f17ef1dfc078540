//! A supervised pool of worker processes (`workwurm --processes N`): N copies of this worker,
//! each a process of its own named `NAME-1` … `NAME-N`, restarted with backoff when one dies,
//! and all drained on SIGTERM or SIGINT (a second signal stops them at once), as one `workwurm`
//! does alone.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// The arguments of one pool member: the pool's own, without `--processes`, with its name.
pub fn member_args(args: &[OsString], name: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--processes" || s == "--name" {
            it.next();
            continue;
        }
        if s.starts_with("--processes=") || s.starts_with("--name=") {
            continue;
        }
        out.push(a.clone());
    }
    out.push("--name".into());
    out.push(name.into());
    out
}

/// One member: its name, its process, and when it last started.
struct Member {
    name: String,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<tokio::time::Instant>,
}

fn spawn(args: &[OsString], name: &str) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find this program to start its copies")?;
    Command::new(exe)
        .args(member_args(args, name))
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start pool member {name}"))
}

/// Runs `n` members until a signal stops them; `args` are this process's arguments (without the
/// program name) and `name` the pool's name.
pub async fn supervise(n: u32, args: Vec<OsString>, name: String) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut members: Vec<Member> = (1..=n)
        .map(|i| Member {
            name: format!("{name}-{i}"),
            child: None,
            started: Instant::now(),
            backoff: Duration::from_secs(1),
            restart_at: Some(tokio::time::Instant::now()),
        })
        .collect();
    let mut signals = 0;
    loop {
        // Start what is due.
        let now = tokio::time::Instant::now();
        for m in members.iter_mut() {
            if signals == 0 && m.child.is_none() && m.restart_at.is_some_and(|t| t <= now) {
                m.restart_at = None;
                m.started = Instant::now();
                match spawn(&args, &m.name) {
                    Ok(c) => {
                        info!(member = %m.name, pid = c.id(), "pool member started");
                        m.child = Some(c);
                    }
                    Err(e) => {
                        warn!(member = %m.name, error = %format!("{e:#}"), "cannot start; retrying");
                        m.restart_at = Some(now + m.backoff);
                    }
                }
            }
        }
        if signals > 0 && members.iter().all(|m| m.child.is_none()) {
            info!("every pool member stopped");
            return Ok(());
        }
        let next_restart = members.iter().filter_map(|m| m.restart_at).min();
        // Wait for a member to exit, a signal, or the next restart.
        let exited = async {
            loop {
                for (i, m) in members.iter_mut().enumerate() {
                    if let Some(c) = m.child.as_mut()
                        && let Ok(Some(status)) = c.try_wait()
                    {
                        return (i, status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            (i, status) = exited => {
                let m = &mut members[i];
                m.child = None;
                if signals > 0 {
                    info!(member = %m.name, %status, "pool member stopped");
                    continue;
                }
                // One that ran a while starts again at once; one that keeps dying, ever slower.
                if m.started.elapsed() > Duration::from_secs(60) {
                    m.backoff = Duration::from_secs(1);
                }
                warn!(member = %m.name, %status, restart_in_ms = m.backoff.as_millis() as u64, "pool member exited; restarting it");
                m.restart_at = Some(tokio::time::Instant::now() + m.backoff);
                m.backoff = (m.backoff * 2).min(Duration::from_secs(30));
            }
            _ = async { tokio::time::sleep_until(next_restart.expect("guarded")).await }, if next_restart.is_some() && signals == 0 => {}
            _ = term.recv() => { signals += 1; forward(&members, signals) }
            _ = int.recv() => { signals += 1; forward(&members, signals) }
        }
    }
}

/// Passes a stop on to every member: the first drains, the second stops at once.
fn forward(members: &[Member], signals: u32) {
    info!(
        signals,
        "stopping the pool ({})",
        if signals == 1 { "draining" } else { "at once" }
    );
    for m in members {
        if let Some(pid) = m.child.as_ref().and_then(Child::id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_get_the_pools_arguments_with_their_own_name() {
        let args: Vec<OsString> = [
            "--processes",
            "3",
            "--name",
            "gpu",
            "--slots",
            "4",
            "--processes=3",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let got: Vec<String> = member_args(&args, "gpu-2")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["--slots", "4", "--name", "gpu-2"]);
    }
}
