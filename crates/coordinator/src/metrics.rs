//! What `/metrics` reports, and its rendering in Prometheus' text format (version 0.0.4).
//!
//! Plain data and a plain function: the actor fills a [`Snapshot`] from the tables, its own
//! commit statistics and the store's; the HTTP edge renders it. Nothing here touches I/O.

use std::fmt::Write;

use tatzelwurm_protocol::TaskState;

/// A histogram with fixed upper bounds, as Prometheus counts them: each bucket holds the
/// observations up to its bound (cumulative when rendered), plus a sum and a count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bounds for durations in seconds: 100 µs to 10 s.
pub const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bounds for sizes (records in a batch): 1 to 100,000.
pub const SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0, 100000.0,
];

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// One queue's counts.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueCounts {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Tasks per state, indexed like [`TaskState::ALL`].
    pub counts: [u64; 8],
}

/// Everything `/metrics` shows, taken at one moment by the actor.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Tasks per state, indexed like [`TaskState::ALL`].
    pub tasks: [u64; 8],
    /// Tasks that entered each state since the start, indexed like [`TaskState::ALL`].
    pub entered: [u64; 8],
    /// Per queue.
    pub queues: Vec<QueueCounts>,
    /// Workers connected now, and known (connected or lost).
    pub workers_connected: u64,
    /// Workers in the table, connected or lost.
    pub workers_known: u64,
    /// Open connections by kind: actioners, workers, clients.
    pub connections: [u64; 3],
    /// Connections closed because they read their messages too slowly (their undelivered
    /// messages, events among them, were dropped with them).
    pub slow_peers_closed: u64,
    /// Store commits: how long each took.
    pub commit_seconds: Histogram,
    /// Store commits: how many records each wrote.
    pub batch_records: Histogram,
    /// Store commits that failed.
    pub commit_failures: u64,
    /// Checkpoints: how long each took.
    pub checkpoint_seconds: Histogram,
    /// The process's resident memory, in bytes (0 where unknown).
    pub resident_bytes: u64,
}

/// The process's resident set size, from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // The page size of every Linux machine tatzelwurm runs on; statm counts in pages.
    pages * 4096
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    head(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(&h.counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// The snapshot in Prometheus' text format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096 + s.queues.len() * 512);
    head(
        &mut out,
        "tatzelwurm_tasks",
        "gauge",
        "Tasks in the table, by state.",
    );
    for (state, n) in TaskState::ALL.iter().zip(s.tasks) {
        let _ = writeln!(out, "tatzelwurm_tasks{{state=\"{}\"}} {n}", state.as_str());
    }
    head(
        &mut out,
        "tatzelwurm_queue_tasks",
        "gauge",
        "Tasks in the table, by queue and state.",
    );
    for q in &s.queues {
        for (state, n) in TaskState::ALL.iter().zip(q.counts) {
            let _ = writeln!(
                out,
                "tatzelwurm_queue_tasks{{namespace=\"{}\",queue=\"{}\",state=\"{}\"}} {n}",
                label(&q.namespace),
                label(&q.name),
                state.as_str()
            );
        }
    }
    head(
        &mut out,
        "tatzelwurm_task_transitions_total",
        "counter",
        "Tasks that entered each state since the coordinator started.",
    );
    for (state, n) in TaskState::ALL.iter().zip(s.entered) {
        let _ = writeln!(
            out,
            "tatzelwurm_task_transitions_total{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    let assigned = s.entered[TaskState::Assigned as usize];
    let finished: u64 = TaskState::ALL
        .iter()
        .filter(|st| st.is_final())
        .map(|st| s.entered[*st as usize])
        .sum();
    let failed = s.entered[TaskState::Failed as usize];
    for (name, help, v) in [
        (
            "tatzelwurm_tasks_dispatched_total",
            "Attempts dispatched to workers since the start.",
            assigned,
        ),
        (
            "tatzelwurm_tasks_finished_total",
            "Tasks that reached a final state (completed, failed, killed) since the start.",
            finished,
        ),
        (
            "tatzelwurm_tasks_failed_total",
            "Tasks that failed (every attempt used) since the start.",
            failed,
        ),
        (
            "tatzelwurm_slow_peers_closed_total",
            "Connections closed for reading too slowly; their undelivered messages and events were dropped.",
            s.slow_peers_closed,
        ),
        (
            "tatzelwurm_store_commit_failures_total",
            "Store commits that failed (the batch is retried).",
            s.commit_failures,
        ),
    ] {
        head(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    head(
        &mut out,
        "tatzelwurm_workers",
        "gauge",
        "Workers: connected now, and known (connected or lost).",
    );
    let _ = writeln!(
        out,
        "tatzelwurm_workers{{state=\"connected\"}} {}",
        s.workers_connected
    );
    let _ = writeln!(
        out,
        "tatzelwurm_workers{{state=\"known\"}} {}",
        s.workers_known
    );
    head(
        &mut out,
        "tatzelwurm_connections",
        "gauge",
        "Open protocol connections, by role.",
    );
    for (role, n) in ["actioner", "worker", "client"].iter().zip(s.connections) {
        let _ = writeln!(out, "tatzelwurm_connections{{role=\"{role}\"}} {n}");
    }
    histogram(
        &mut out,
        "tatzelwurm_store_commit_seconds",
        "How long each store commit took.",
        &s.commit_seconds,
    );
    histogram(
        &mut out,
        "tatzelwurm_store_batch_records",
        "Records (tasks, workers, queues, removals) per store commit.",
        &s.batch_records,
    );
    histogram(
        &mut out,
        "tatzelwurm_store_checkpoint_seconds",
        "How long each checkpoint (journal folded into the task buckets) took.",
        &s.checkpoint_seconds,
    );
    head(
        &mut out,
        "tatzelwurm_resident_memory_bytes",
        "gauge",
        "The coordinator's resident memory.",
    );
    let _ = writeln!(out, "tatzelwurm_resident_memory_bytes {}", s.resident_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        histogram(&mut out, "x", "help", &h);
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(
            out.contains("x_sum 12.7\n") && out.contains("x_count 4\n"),
            "{out}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
