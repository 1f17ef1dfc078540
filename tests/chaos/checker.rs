//! The checker of a chaos run: plain code over three histories written outside the system under
//! test (the runs the task commands appended, the faults the campaign injected, what the clients
//! were told) and the final tables. It judges DESIGN.md's delivery guarantee:
//!
//! - every acknowledged task is in the final table, ended or still queued;
//! - no task completed twice, and no attempt ran twice;
//! - a task ran again after a run only when that run's worker was silent (stopped or cut off)
//!   for about a lease, or was killed after the command ended (before its report got through), or
//!   the run failed; runs overlap only in the first case;
//! - the stored result is the output of the run of the succeeded attempt;
//! - a task whose kill was acknowledged is killed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Nanoseconds of the machine's monotonic clock, the one clock of every history.
pub type Ns = u64;

/// One run of a task command, from the history it appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Task id.
    pub task: String,
    /// Attempt number (TATZELWURM_ATTEMPT).
    pub attempt: u32,
    /// The worker process that started it (the command's parent).
    pub pid: u32,
    /// A random number the run prints as its result.
    pub nonce: u64,
    /// When it started.
    pub start: Ns,
    /// When it ended, if it did.
    pub end: Option<Ns>,
}

/// A fault or a process change, as the campaign logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker process started under a name.
    WorkerStarted { name: String, pid: u32 },
    /// `kill -9` of a worker process.
    WorkerKilled { pid: u32 },
    /// SIGSTOP of a worker process.
    WorkerStopped { pid: u32 },
    /// SIGCONT of a worker process.
    WorkerContinued { pid: u32 },
    /// The network between a worker (by name) and the coordinator black-holed.
    Cut { name: String },
    /// And healed.
    Healed { name: String },
    /// The worker's connections reset (it reconnects at once).
    Reset { name: String },
    /// `kill -9` of the coordinator.
    CoordinatorKilled,
    /// The coordinator (re)started and answers.
    CoordinatorStarted,
    /// The disk under the store filled.
    DiskFull,
    /// And freed.
    DiskFreed,
}

impl Event {
    /// A short name for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkerStarted { .. } => "worker start",
            Event::WorkerKilled { .. } => "worker kill -9",
            Event::WorkerStopped { .. } => "worker SIGSTOP",
            Event::WorkerContinued { .. } => "worker SIGCONT",
            Event::Cut { .. } => "network cut",
            Event::Healed { .. } => "network heal",
            Event::Reset { .. } => "connection reset",
            Event::CoordinatorKilled => "coordinator kill -9",
            Event::CoordinatorStarted => "coordinator start",
            Event::DiskFull => "disk full",
            Event::DiskFreed => "disk freed",
        }
    }
}

/// An attempt as the final table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalAttempt {
    /// Its number.
    pub number: u32,
    /// How it ended (`succeeded`, `lost`, …), `None` while open.
    pub outcome: Option<String>,
    /// The stored tail of its stdout.
    pub stdout: String,
}

/// A task as the final table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalTask {
    /// Its state.
    pub state: String,
    /// Its attempts.
    pub attempts: Vec<FinalAttempt>,
}

/// What the clients were told.
#[derive(Clone, Debug, Default)]
pub struct Told {
    /// Tasks whose add was acknowledged.
    pub added: BTreeSet<String>,
    /// Tasks whose kill was acknowledged.
    pub killed: BTreeSet<String>,
    /// Adds that were cut off before their answer (the tasks may or may not exist).
    pub unanswered: usize,
    /// Adds the coordinator refused (a full disk): nothing was acknowledged.
    pub refused: usize,
}

/// The checker's findings.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Broken promises, each in words.
    pub violations: Vec<String>,
    /// Runs in all.
    pub runs: usize,
    /// Tasks that ran to the end more than once, by the cause found.
    pub double_runs: BTreeMap<&'static str, usize>,
    /// Final states of the acknowledged tasks.
    pub states: BTreeMap<String, usize>,
}

/// Intervals during which a worker process could not be heard: stopped, or cut off; and when
/// coordinators started.
struct Silence {
    by_pid: HashMap<u32, Vec<(Ns, Ns)>>,
    starts: Vec<Ns>,
}

impl Silence {
    fn from(events: &[(Ns, Event)], horizon: Ns) -> Silence {
        // Which pids carried a name when.
        let mut lives: Vec<(String, u32, Ns, Ns)> = Vec::new();
        let mut by_pid: HashMap<u32, Vec<(Ns, Ns)>> = HashMap::new();
        let mut stopped: HashMap<u32, Ns> = HashMap::new();
        let mut cut: HashMap<String, Ns> = HashMap::new();
        let mut cuts: Vec<(String, Ns, Ns)> = Vec::new();
        let mut starts = Vec::new();
        for (at, e) in events {
            match e {
                Event::CoordinatorStarted => starts.push(*at),
                Event::WorkerStarted { name, pid } => {
                    lives.push((name.clone(), *pid, *at, horizon))
                }
                Event::WorkerKilled { pid } => {
                    if let Some(l) = lives.iter_mut().find(|l| l.1 == *pid && l.3 == horizon) {
                        l.3 = *at;
                    }
                    if let Some(s) = stopped.remove(pid) {
                        by_pid.entry(*pid).or_default().push((s, *at));
                    }
                }
                Event::WorkerStopped { pid } => {
                    stopped.insert(*pid, *at);
                }
                Event::WorkerContinued { pid } => {
                    if let Some(s) = stopped.remove(pid) {
                        by_pid.entry(*pid).or_default().push((s, *at));
                    }
                }
                Event::Cut { name } => {
                    cut.insert(name.clone(), *at);
                }
                Event::Healed { name } => {
                    if let Some(s) = cut.remove(name) {
                        cuts.push((name.clone(), s, *at));
                    }
                }
                _ => {}
            }
        }
        for (pid, s) in stopped {
            by_pid.entry(pid).or_default().push((s, horizon));
        }
        for (name, s) in cut {
            cuts.push((name, s, horizon));
        }
        // A cut silences every process that carried the name during it.
        for (name, s, e) in cuts {
            for (n, pid, born, died) in &lives {
                if *n == name && *born < e && s < *died {
                    by_pid
                        .entry(*pid)
                        .or_default()
                        .push((s.max(*born), e.min(*died)));
                }
            }
        }
        starts.sort();
        Silence { by_pid, starts }
    }

    /// `pid`'s silences that overlap `[from, to]`, cut to it, in order.
    fn spans(&self, pid: u32, from: Ns, to: Ns) -> Vec<(Ns, Ns)> {
        let mut spans: Vec<(Ns, Ns)> = self
            .by_pid
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|(s, e)| *s < to && *e > from)
            .map(|&(s, e)| (s.max(from), e.min(to)))
            .collect();
        spans.sort();
        spans
    }

    /// How long `pid` went unheard by the last coordinator to start within `[from, to]`, counted
    /// from its start (its lease runs from there): a worker reconnects within its backoff, up to
    /// `lag`, unless it is stopped or cut off before it does, and then only after that silence
    /// (silences less than `join` apart joined, as in [`Silence::longest`]).
    fn unheard_after_restart(&self, pid: u32, from: Ns, to: Ns, join: Ns, lag: Ns) -> Ns {
        let Some(&start) = self.starts.iter().rev().find(|&&s| s >= from && s <= to) else {
            return 0;
        };
        let mut end = (start + lag).min(to);
        let mut in_backoff = true;
        for (s, e) in self.spans(pid, start, to) {
            let reach = if in_backoff { end } else { end + join };
            if s > reach {
                break;
            }
            end = end.max(e);
            in_backoff = false;
        }
        if in_backoff {
            // Heard again within its backoff: the backoff alone is no silence past the lease.
            return 0;
        }
        end - start
    }

    /// The longest stretch within `[from, to]` during which `pid` was silent, silences less
    /// than `join` apart joined (a worker that was just stopped or cut off needs a moment to be
    /// heard again: its reconnect backoff, its next heartbeat).
    fn longest(&self, pid: u32, from: Ns, to: Ns, join: Ns) -> Ns {
        let spans = self.spans(pid, from, to);
        let mut best = 0;
        let mut cur: Option<(Ns, Ns)> = None;
        for (s, e) in spans {
            cur = match cur {
                Some((cs, ce)) if s <= ce + join => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    best = best.max(ce - cs);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            best = best.max(ce - cs);
        }
        best
    }
}

/// Judges a run. `silent_enough` is how long a worker must have been silent for the coordinator
/// to have given its task away (the lease, less what heartbeats leave uncertain);
/// `reconnect_lag` how long a worker may take to reach a coordinator that just started (its
/// longest reconnect backoff), which must be less.
pub fn check(
    runs: &[Run],
    events: &[(Ns, Event)],
    tables: &HashMap<String, FinalTask>,
    told: &Told,
    silent_enough: Ns,
    reconnect_lag: Ns,
) -> Verdict {
    assert!(
        reconnect_lag < silent_enough,
        "a backoff as long as the lease would excuse every rerun after a restart"
    );
    let horizon = runs
        .iter()
        .flat_map(|r| [Some(r.start), r.end])
        .flatten()
        .chain(events.iter().map(|(t, _)| *t))
        .max()
        .unwrap_or(0)
        + 1;
    let silence = Silence::from(events, horizon);
    let deaths: HashMap<u32, Ns> = events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::WorkerKilled { pid } => Some((*pid, *t)),
            _ => None,
        })
        .collect();
    let mut v = Verdict {
        runs: runs.len(),
        ..Verdict::default()
    };

    // Acknowledged tasks: present, and killed when a kill was acknowledged.
    for id in &told.added {
        match tables.get(id) {
            None => v.violations.push(format!(
                "task {id}: acknowledged, missing from the final table"
            )),
            Some(t) => {
                *v.states.entry(t.state.clone()).or_default() += 1;
                if matches!(t.state.as_str(), "assigned" | "running") {
                    v.violations.push(format!(
                        "task {id}: still {} after every fault healed and the queue drained",
                        t.state
                    ));
                }
            }
        }
    }
    for id in &told.killed {
        if let Some(t) = tables.get(id)
            && t.state != "killed"
        {
            v.violations.push(format!(
                "task {id}: its kill was acknowledged, but it is {}",
                t.state
            ));
        }
    }

    let mut by_task: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by_task.entry(&r.task).or_default().push(r);
    }
    for (id, t) in tables {
        let succeeded: Vec<&FinalAttempt> = t
            .attempts
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("succeeded"))
            .collect();
        if succeeded.len() > 1 {
            v.violations
                .push(format!("task {id}: {} attempts succeeded", succeeded.len()));
        }
        if t.state == "completed" {
            let Some(a) = succeeded.last() else {
                v.violations
                    .push(format!("task {id}: completed without a succeeded attempt"));
                continue;
            };
            let of_attempt: Vec<&&Run> = by_task
                .get(id.as_str())
                .into_iter()
                .flatten()
                .filter(|r| r.attempt == a.number && r.end.is_some())
                .collect();
            match of_attempt.as_slice() {
                [r] if a.stdout.contains(&format!("nonce {}", r.nonce)) => {}
                [r] => v.violations.push(format!(
                    "task {id}: the stored result {:?} is not the output of attempt {}'s run (nonce {})",
                    a.stdout.trim(),
                    a.number,
                    r.nonce
                )),
                [] => v.violations.push(format!(
                    "task {id}: attempt {} succeeded, but no run of it ended",
                    a.number
                )),
                more => v.violations.push(format!(
                    "task {id}: attempt {} ran to its end {} times",
                    a.number,
                    more.len()
                )),
            }
        }
    }

    for (id, mut rs) in by_task {
        rs.sort_by_key(|r| r.start);
        let mut seen: HashMap<u32, u64> = HashMap::new();
        for r in &rs {
            if let Some(other) = seen.insert(r.attempt, r.nonce)
                && other != r.nonce
            {
                v.violations.push(format!(
                    "task {id}: attempt {} was dispatched twice",
                    r.attempt
                ));
            }
        }
        let failed = |attempt: u32| {
            tables.get(id).is_some_and(|t| {
                t.attempts.iter().any(|a| {
                    a.number == attempt
                        && matches!(a.outcome.as_deref(), Some("failed" | "timed_out"))
                })
            })
        };
        // Each run against the run before it, leaving out stale runs (judged on their own).
        let mut prev: Option<&Run> = None;
        for &b in &rs {
            let Some(a) = prev else {
                prev = Some(b);
                continue;
            };
            // An older attempt that starts after a newer one: its dispatch reached a worker that
            // then fell silent (stopped, cut off) before it could start it; the coordinator gave
            // the task to another worker, and the first started the stale attempt when it woke.
            // That is the lease's double run, caused by the silence of the stale run's worker
            // before it started (from well before the newer run, which came after the dispatch).
            if b.attempt < a.attempt {
                let from = a.start.saturating_sub(silent_enough * 10);
                let stale =
                    silence.longest(b.pid, from, b.start, silent_enough / 3) >= silent_enough;
                if stale {
                    *v.double_runs
                        .entry("its worker was silent past the lease")
                        .or_default() += 1;
                } else {
                    v.violations.push(format!(
                        "task {id}: attempt {} started after attempt {} though its worker (pid {}) \
                         was not silent past the lease before it",
                        b.attempt, a.attempt, b.pid
                    ));
                }
                continue;
            }
            prev = Some(b);
            // Silent past the lease: in one stretch, or, as the coordinator that gave the task
            // away saw it, from its start through the worker's backoff into a stop or a cut.
            let join = silent_enough / 3;
            let silent = silence.longest(a.pid, a.start, b.start, join) >= silent_enough
                || silence.unheard_after_restart(a.pid, a.start, b.start, join, reconnect_lag)
                    >= silent_enough;
            let died = deaths.get(&a.pid).copied();
            match a.end {
                // The first run ended before the second began: a double run.
                Some(end) if end <= b.start => {
                    let cause = if silent {
                        "its worker was silent past the lease"
                    } else if died.is_some_and(|d| d >= end && d <= b.start) {
                        "its worker was killed after the command ended"
                    } else if failed(a.attempt) {
                        "the first attempt failed"
                    } else {
                        // A silence that ended just before the first run began points at a
                        // dispatch its worker accepted, then started only when it woke.
                        let from = a.start.saturating_sub(silent_enough * 10);
                        let before = silence.longest(a.pid, from, a.start, silent_enough / 3);
                        let hint = if before >= silent_enough {
                            format!(
                                "; it had been silent for {} ms just before attempt {} started \
                                 (a start after a freeze?)",
                                before / 1_000_000,
                                a.attempt
                            )
                        } else {
                            String::new()
                        };
                        v.violations.push(format!(
                            "task {id}: ran again (attempt {} after {}) though attempt {}'s worker \
                             (pid {}) was neither silent past the lease nor killed after the run{hint}",
                            b.attempt, a.attempt, a.attempt, a.pid
                        ));
                        "no cause found"
                    };
                    *v.double_runs.entry(cause).or_default() += 1;
                }
                // The first run was cut short by its worker's death before the second began.
                _ if died.is_some_and(|d| d <= b.start && a.end.is_none_or(|e| e > d)) => {}
                // Still running (or its fate unknown) when the second began.
                _ => {
                    if !silent {
                        v.violations.push(format!(
                            "task {id}: attempt {} started while attempt {} (pid {}) {} and its \
                             worker was not silent past the lease",
                            b.attempt,
                            a.attempt,
                            a.pid,
                            if a.end.is_some() {
                                "still ran"
                            } else {
                                "had not ended"
                            }
                        ));
                    }
                }
            }
        }
    }
    v
}

/// Parses the history the task commands appended: `start|end TASK ATTEMPT PID NONCE NS` lines.
/// A run whose `start` line is missing (cut mid-write) is left out; a torn line is skipped.
pub fn parse_runs(text: &str) -> Vec<Run> {
    let mut runs: BTreeMap<u64, Run> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, task, attempt, pid, nonce, ns] = f.as_slice() else {
            continue;
        };
        let (Ok(attempt), Ok(pid), Ok(nonce), Ok(ns)) = (
            attempt.parse::<u32>(),
            pid.parse::<u32>(),
            nonce.parse::<u64>(),
            ns.parse::<u64>(),
        ) else {
            continue;
        };
        match *kind {
            "start" => {
                runs.insert(
                    nonce,
                    Run {
                        task: task.to_string(),
                        attempt,
                        pid,
                        nonce,
                        start: ns,
                        end: None,
                    },
                );
            }
            "end" => {
                if let Some(r) = runs.get_mut(&nonce) {
                    r.end = Some(ns);
                }
            }
            _ => {}
        }
    }
    runs.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Ns = 1_000;
    /// The workers' longest reconnect backoff, shorter than the lease as in the campaign.
    const LAG: Ns = 600;

    fn run(task: &str, attempt: u32, pid: u32, nonce: u64, start: Ns, end: Option<Ns>) -> Run {
        Run {
            task: task.into(),
            attempt,
            pid,
            nonce,
            start,
            end,
        }
    }

    fn done(attempts: &[(u32, &str, u64)]) -> FinalTask {
        FinalTask {
            state: "completed".into(),
            attempts: attempts
                .iter()
                .map(|&(number, outcome, nonce)| FinalAttempt {
                    number,
                    outcome: Some(outcome.into()),
                    stdout: format!("nonce {nonce}\n"),
                })
                .collect(),
        }
    }

    fn told(ids: &[&str]) -> Told {
        Told {
            added: ids.iter().map(|s| s.to_string()).collect(),
            ..Told::default()
        }
    }

    fn started(name: &str, pid: u32) -> Event {
        Event::WorkerStarted {
            name: name.into(),
            pid,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let runs = vec![run("t", 1, 10, 7, 100, Some(200))];
        let tables = HashMap::from([("t".to_string(), done(&[(1, "succeeded", 7)]))]);
        let v = check(
            &runs,
            &[(0, started("w", 10))],
            &tables,
            &told(&["t"]),
            LEASE,
            LAG,
        );
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.states["completed"], 1);
    }

    #[test]
    fn a_lost_acknowledged_task_and_an_ignored_kill_are_found() {
        let mut t = told(&["gone", "k"]);
        t.killed.insert("k".into());
        let tables = HashMap::from([("k".to_string(), done(&[(1, "succeeded", 1)]))]);
        let runs = vec![run("k", 1, 10, 1, 0, Some(5))];
        let v = check(&runs, &[], &tables, &t, LEASE, LAG);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        assert!(v.violations[0].contains("missing"));
        assert!(v.violations[1].contains("kill was acknowledged"));
    }

    #[test]
    fn a_second_run_without_cause_is_a_violation_and_each_cause_is_told_apart() {
        let tables = HashMap::from([(
            "t".to_string(),
            done(&[(1, "lost", 0), (2, "succeeded", 2)]),
        )]);
        let runs = vec![
            run("t", 1, 10, 1, 100, Some(200)),
            run("t", 2, 11, 2, 5_000, Some(5_100)),
        ];
        let events = vec![(0, started("a", 10)), (0, started("b", 11))];
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.double_runs["no cause found"], 1);
        // Killed between its end and the rerun: the report never got through.
        let mut killed = events.clone();
        killed.push((300, Event::WorkerKilled { pid: 10 }));
        let v = check(&runs, &killed, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(
            v.double_runs["its worker was killed after the command ended"],
            1
        );
        // Stopped for longer than the lease.
        let mut stopped = events.clone();
        stopped.push((150, Event::WorkerStopped { pid: 10 }));
        stopped.push((1_400, Event::WorkerContinued { pid: 10 }));
        let v = check(&runs, &stopped, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // Stopped for less: not enough.
        let mut short = events.clone();
        short.push((150, Event::WorkerStopped { pid: 10 }));
        short.push((600, Event::WorkerContinued { pid: 10 }));
        assert_eq!(
            check(&runs, &short, &tables, &told(&["t"]), LEASE, LAG)
                .violations
                .len(),
            1
        );
        // A cut of the worker's name silences the process that had the name then.
        let mut cut = events.clone();
        cut.push((120, Event::Cut { name: "a".into() }));
        cut.push((1_300, Event::Healed { name: "a".into() }));
        let v = check(&runs, &cut, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_stale_attempt_started_late_needs_its_worker_silent_before_it() {
        let tables = HashMap::from([(
            "t".to_string(),
            done(&[(1, "lost", 0), (2, "succeeded", 2)]),
        )]);
        // Attempt 1 was dispatched to pid 10, which froze; attempt 2 ran on pid 11; pid 10 woke
        // and started attempt 1.
        let runs = vec![
            run("t", 2, 11, 2, 2_000, Some(2_100)),
            run("t", 1, 10, 1, 2_200, Some(2_300)),
        ];
        let events = vec![(0, started("a", 10)), (0, started("b", 11))];
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("was not silent"),
            "{:?}",
            v.violations
        );
        let mut frozen = events.clone();
        frozen.push((500, Event::WorkerStopped { pid: 10 }));
        frozen.push((2_150, Event::WorkerContinued { pid: 10 }));
        let v = check(&runs, &frozen, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.double_runs["its worker was silent past the lease"], 1);
        // A third attempt is judged against the second (the newer run), not the stale one.
        let mut more = runs.clone();
        more.push(run("t", 3, 12, 3, 5_000, Some(5_100)));
        let mut third = frozen.clone();
        third.push((0, started("c", 12)));
        let v = check(&more, &third, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("attempt 2's worker (pid 11)"),
            "{:?}",
            v.violations
        );
        third.push((2_500, Event::WorkerKilled { pid: 11 }));
        let v = check(&more, &third, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_worker_stopped_in_its_backoff_after_a_restart_is_silent_from_the_restart() {
        // Session 20's campaign: attempt 1 ended while the coordinator was down, so its report
        // waited; the next coordinator started at 10,000 and pid 10, still in its reconnect
        // backoff, was stopped at 10,400 (for longer than the lease); that coordinator's lease
        // for it, counted from its start, ran out at 11,000 and attempt 2 ran elsewhere. The stop
        // alone, until the rerun, is shorter than the lease.
        let tables = HashMap::from([(
            "t".to_string(),
            done(&[(1, "lost", 0), (2, "succeeded", 2)]),
        )]);
        let runs = vec![
            run("t", 1, 10, 1, 2_000, Some(2_100)),
            run("t", 2, 11, 2, 11_050, Some(11_100)),
        ];
        let mut events = vec![
            (0, started("a", 10)),
            (0, started("b", 11)),
            (2_050, Event::CoordinatorKilled),
            (10_000, Event::CoordinatorStarted),
        ];
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "no silence: {:?}", v.violations);
        // Stopped after its backoff would have brought it back: heard before the stop.
        let mut late = events.clone();
        late.push((10_700, Event::WorkerStopped { pid: 10 }));
        late.push((15_000, Event::WorkerContinued { pid: 10 }));
        let v = check(&runs, &late, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(
            v.violations.len(),
            1,
            "heard in between: {:?}",
            v.violations
        );
        events.push((10_400, Event::WorkerStopped { pid: 10 }));
        events.push((15_000, Event::WorkerContinued { pid: 10 }));
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.double_runs["its worker was silent past the lease"], 1);
    }

    #[test]
    fn a_rerun_after_a_start_that_followed_a_freeze_is_a_violation_that_names_the_freeze() {
        // Session 18's campaign: pid 10 was stopped with attempt 1 accepted but not started, woke
        // past the lease and started it; the coordinator had given the task away (attempt 2).
        let tables = HashMap::from([(
            "t".to_string(),
            done(&[(1, "lost", 0), (2, "succeeded", 2)]),
        )]);
        let runs = vec![
            run("t", 1, 10, 1, 2_000, Some(2_100)),
            run("t", 2, 11, 2, 9_000, Some(9_100)),
        ];
        let mut events = vec![(0, started("a", 10)), (0, started("b", 11))];
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(!v.violations[0].contains("freeze"), "{:?}", v.violations);
        events.push((100, Event::WorkerStopped { pid: 10 }));
        events.push((1_990, Event::WorkerContinued { pid: 10 }));
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(
            v.violations.len(),
            1,
            "still a double run: {:?}",
            v.violations
        );
        assert!(
            v.violations[0].contains("silent for") && v.violations[0].contains("freeze"),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn overlapping_runs_need_silence_and_a_run_cut_by_its_worker_death_needs_nothing() {
        let tables = HashMap::from([(
            "t".to_string(),
            done(&[(1, "lost", 0), (2, "succeeded", 2)]),
        )]);
        let runs = vec![
            run("t", 1, 10, 1, 100, None),
            run("t", 2, 11, 2, 2_000, Some(2_100)),
        ];
        let events = vec![(0, started("a", 10)), (0, started("b", 11))];
        let v = check(&runs, &events, &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("had not ended"));
        let mut died = events.clone();
        died.push((500, Event::WorkerKilled { pid: 10 }));
        assert!(
            check(&runs, &died, &tables, &told(&["t"]), LEASE, LAG)
                .violations
                .is_empty()
        );
        // Killed only after the second run began: the two overlapped.
        let mut late = events.clone();
        late.push((2_050, Event::WorkerKilled { pid: 10 }));
        assert_eq!(
            check(&runs, &late, &tables, &told(&["t"]), LEASE, LAG)
                .violations
                .len(),
            1
        );
    }

    #[test]
    fn the_stored_result_must_be_the_succeeded_attempts_output() {
        let runs = vec![run("t", 1, 10, 7, 100, Some(200))];
        let tables = HashMap::from([("t".to_string(), done(&[(1, "succeeded", 8)]))]);
        let v = check(&runs, &[], &tables, &told(&["t"]), LEASE, LAG);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("not the output"));
        let twice = HashMap::from([(
            "t".to_string(),
            done(&[(1, "succeeded", 7), (2, "succeeded", 9)]),
        )]);
        let v = check(&runs, &[], &twice, &told(&["t"]), LEASE, LAG);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("2 attempts succeeded"))
        );
    }

    #[test]
    fn histories_parse_and_torn_lines_are_skipped() {
        let text = "start t 1 10 7 100\nstart u 1 10 8 110\nend t 1 10 7 200\nend u 1 1\nstart v 1";
        let runs = parse_runs(text);
        assert_eq!(
            runs,
            vec![
                run("t", 1, 10, 7, 100, Some(200)),
                run("u", 1, 10, 8, 110, None)
            ]
        );
    }
}
