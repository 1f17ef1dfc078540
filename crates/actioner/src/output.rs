//! What the CLI prints: tables for people (via `tabled`), stable JSON for scripts.
//!
//! The JSON shapes are part of the CLI's interface and documented in README.md; they live in
//! [`tatzelwurm_protocol::json`], shared with the coordinator's HTTP API.

use std::time::Duration;

use tabled::builder::Builder;
use tabled::settings::Style;
use tatzelwurm_protocol::json::tags;
pub use tatzelwurm_protocol::json::{
    broadcast_json, counts_json, data_json, queue_json, rfc3339, summary_json, task_json,
    worker_json,
};
use tatzelwurm_protocol::{
    Payload, QueueInfo, StateCount, TagCounts, TaskId, TaskInfo, TaskState, TaskSummary,
    WorkerInfo, now_ms,
};

/// A time as people read it: the local date and time to the second (`2026-11-26 14:02:11`), in
/// the zone of `TZ` or the system's. Scripts get RFC 3339 in UTC from `--json`.
pub fn local(ms: u64) -> String {
    let zone = jiff::tz::TimeZone::system();
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(t) => t.to_zoned(zone).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => rfc3339(ms),
    }
}

/// `local`, without the date when it is the day of `base`: `14:02:14`.
fn local_on(ms: u64, base: u64) -> String {
    let (full, day) = (local(ms), local(base));
    match (full.split_once(' '), day.split_once(' ')) {
        (Some((d, time)), Some((b, _))) if d == b => time.to_string(),
        _ => full,
    }
}

/// `local` with the time since `from` when there is one: `2026-11-26 14:02:14 (+3.2s)`.
fn local_after(ms: u64, from: Option<u64>) -> String {
    match from {
        Some(f) if ms >= f => format!(
            "{} (+{})",
            local(ms),
            tatzelwurm_protocol::cli::format_duration(Duration::from_millis(ms - f))
        ),
        _ => local(ms),
    }
}

/// "12s ago", "3m ago": how people read recent times in a table.
pub fn ago(ms: u64) -> String {
    let now = now_ms();
    if ms == 0 {
        return "-".into();
    }
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h{}m ago", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The counts line under a task table.
pub fn counts_line(counts: &[StateCount]) -> String {
    let total: u64 = counts.iter().map(|c| c.count).sum();
    // The states that have tasks: a line that fits, whatever the terminal.
    let parts: Vec<String> = counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| format!("{} {}", c.count, c.state))
        .collect();
    match total {
        0 => "0 tasks".to_string(),
        1 => format!("1 task: {}", parts.join(", ")),
        n => format!("{n} tasks: {}", parts.join(", ")),
    }
}

/// The width tables must fit in: `COLUMNS` when set, else the terminal's when standard output
/// is one; none when output goes to a file or a pipe (where nothing is cut).
pub fn screen_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(n);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return None;
    }
    terminal_size::terminal_size().map(|(w, _)| w.0 as usize)
}

/// A table of rows, cut to the screen: the widest columns give up their width first and end in
/// `…`, so a row never wraps (`show` and `--json` have the full values).
fn fit(b: Builder) -> String {
    let mut t = b.build();
    t.with(Style::sharp());
    if let Some(w) = screen_width() {
        t.with(
            tabled::settings::Width::truncate(w)
                .priority(tabled::settings::peaker::Priority::max(true))
                .suffix("…"),
        );
    }
    t.to_string()
}

/// A table of fields and values (`show`), fit to the screen: the long values wrap inside their
/// cell, whole, rather than cut (here they are the point) or wrapped by the terminal.
fn fit_whole(b: Builder) -> String {
    let mut t = b.build();
    t.with(Style::sharp());
    if let Some(w) = screen_width() {
        t.with(
            tabled::settings::Width::wrap(w)
                .priority(tabled::settings::peaker::Priority::max(true)),
        );
    }
    t.to_string()
}

/// The `task list` table.
pub fn tasks_table(tasks: &[TaskSummary]) -> String {
    let mut b = Builder::new();
    b.push_record([
        "#", "id", "name", "state", "queue", "block", "prio", "tags", "command", "tries", "worker",
        "changed",
    ]);
    let ids = short_ids(tasks.iter().map(|t| t.id));
    for (t, id) in tasks.iter().zip(ids) {
        b.push_record([
            t.number.to_string(),
            id,
            t.name.clone().unwrap_or_default(),
            t.state.to_string(),
            t.queue.clone(),
            t.block.to_string(),
            t.priority.to_string(),
            tags(&t.tags).join(","),
            t.command.clone(),
            format!("{}/{}", t.attempts, t.max_attempts),
            // The holder now, else who ran its latest attempt.
            match (t.worker, &t.worker_name) {
                (Some(w), Some(n)) => format!("{w} {n}"),
                (Some(w), None) => w.to_string(),
                (None, Some(n)) => n.clone(),
                (None, None) => String::new(),
            },
            ago(t.changed_ms),
        ]);
    }
    fit(b)
}

/// The ids as hex prefixes, all of one length (at least 12) and long enough that no two shown
/// are alike, so that any of them can be pasted back as a prefix. Ids created in the same
/// millisecond share their first 12 digits (the time) and more, as a UUIDv7 counts within a
/// millisecond.
pub fn short_ids(ids: impl Iterator<Item = TaskId>) -> Vec<String> {
    let hex: Vec<String> = ids.map(|id| id.simple()).collect();
    let mut sorted: Vec<&str> = hex.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let len = sorted
        .windows(2)
        .map(|w| common_prefix(w[0], w[1]) + 1)
        .fold(12, usize::max);
    hex.iter()
        .map(|h| h[..len.min(h.len())].to_string())
        .collect()
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// `task show` for people, with why it waits when the coordinator said.
pub fn task_text(t: &TaskInfo, waiting: Option<&str>) -> String {
    let s = &t.spec;
    let mut b = Builder::new();
    let mut row = |k: &str, v: String| b.push_record([k.to_string(), v]);
    row("number", format!("{} (batch {})", t.number, t.batch));
    row("id", t.id.to_string());
    row("name", s.name.clone().unwrap_or_default());
    row("state", t.state.to_string());
    if let Some(w) = waiting {
        row("waiting", w.to_string());
    }
    row("queue", s.queue_name().to_string());
    if !s.prefer.is_empty() {
        row("prefers", tags(&s.prefer).join(", "));
    }
    if !s.require.is_empty() {
        row("requires", tags(&s.require).join(", "));
    }
    row("block", s.block.to_string());
    row("priority", s.priority.to_string());
    row("tags", tags(&s.tags).join(", "));
    row("payload", s.payload.describe());
    if let Payload::Exec { env, cwd, .. } = &s.payload {
        if !env.is_empty() {
            row(
                "env",
                env.iter()
                    .map(|e| format!("{}={}", e.name, e.value))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        if let Some(c) = cwd {
            row("cwd", c.clone());
        }
    }
    if let Payload::Custom { data, .. } = &s.payload {
        row("data", data_json(data).to_string());
    }
    row(
        "attempts",
        format!("{} of at most {}", t.attempts.len(), s.max_attempts),
    );
    row(
        "timeout",
        s.timeout_ms
            .map(|m| humantime::format_duration(Duration::from_millis(m)).to_string())
            .unwrap_or_else(|| "none".into()),
    );
    if let Some(k) = &s.user_key {
        row("user key", k.clone());
    }
    if !s.user_data.is_empty() {
        row("user data", data_json(&s.user_data).to_string());
    }
    row(
        "worker",
        t.worker.map(|w| w.to_string()).unwrap_or_default(),
    );
    let stages = [
        ("created", Some(t.times.created_ms)),
        ("ready", t.times.ready_ms),
        ("assigned", t.times.assigned_ms),
        ("running", t.times.running_ms),
        ("paused", t.times.paused_ms),
        ("ended", t.times.ended_ms),
    ];
    // Each stage with the time since the one before it.
    let mut previous = None;
    for (name, at) in stages {
        if let Some(ms) = at {
            row(name, local_after(ms, previous));
            previous = Some(ms);
        }
    }
    let mut out = fit_whole(b) + "\n";
    for a in &t.attempts {
        let ran = match (a.started_ms, a.ended_ms) {
            (Some(s), Some(e)) => format!(
                ", ran {}",
                tatzelwurm_protocol::cli::format_duration(Duration::from_millis(
                    e.saturating_sub(s)
                ))
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "\nattempt {} on {} ({}): {}{}{}{ran}\n  assigned {}  started {}  ended {}\n",
            a.number,
            a.worker,
            a.worker_name,
            a.outcome.map_or("running", |o| o.as_str()),
            a.exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default(),
            a.error
                .as_ref()
                // An exec worker's error for a non-zero exit repeats the exit code.
                .filter(|e| a.exit_code.is_none_or(|c| **e != format!("exit code {c}")))
                .map(|e| format!(", {e}"))
                .unwrap_or_default(),
            local(a.assigned_ms),
            a.started_ms
                .map(|t| local_on(t, a.assigned_ms))
                .unwrap_or_else(|| "-".into()),
            a.ended_ms
                .map(|t| local_on(t, a.assigned_ms))
                .unwrap_or_else(|| "-".into()),
        ));
        if !a.output.is_empty() {
            out.push_str(&format!("  output: {}\n", data_json(&a.output)));
        }
        for (label, tail) in [("stdout", &a.stdout_tail), ("stderr", &a.stderr_tail)] {
            if !tail.is_empty() {
                // The worker keeps the end of each stream; what came before it is not kept.
                let kept = if tail.len() >= tatzelwurm_protocol::OUTPUT_TAIL_LIMIT - 4 {
                    "its last 64 KiB; what came before is not kept"
                } else {
                    "all of it"
                };
                out.push_str(&format!("  --- {label} ({kept}) ---\n"));
                for line in tail.lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
        }
        for r in &a.late_reports {
            out.push_str(&format!(
                "  late report (ignored): {}{}\n",
                r.outcome.map_or("?", |o| o.as_str()),
                r.exit_code
                    .map(|c| format!(", exit code {c}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// `worker show` for people.
pub fn worker_text(w: &WorkerInfo) -> String {
    let mut b = Builder::new();
    let mut row = |k: &str, v: String| b.push_record([k.to_string(), v]);
    row("id", w.id.to_string());
    row("name", w.name.clone());
    row("host", w.host.clone());
    row("state", w.state.as_str().to_string());
    row("type", w.block.to_string());
    row("slots", w.slots.to_string());
    row("running", w.running.to_string());
    row("tags", tags(&w.tags).join(", "));
    row("handlers", w.handlers.join(", "));
    row("connected", local(w.connected_ms));
    row(
        "last heartbeat",
        format!(
            "{} ({})",
            local(w.last_heartbeat_ms),
            ago(w.last_heartbeat_ms)
        ),
    );
    fit_whole(b) + "\n"
}

/// The `worker list` table.
pub fn workers_table(workers: &[WorkerInfo]) -> String {
    let mut b = Builder::new();
    b.push_record([
        "id",
        "name",
        "host",
        "type",
        "slots",
        "running",
        "tags",
        "heartbeat",
        "state",
    ]);
    for w in workers {
        b.push_record([
            w.id.to_string(),
            w.name.clone(),
            w.host.clone(),
            w.block.to_string(),
            w.slots.to_string(),
            w.running.to_string(),
            tags(&w.tags).join(","),
            ago(w.last_heartbeat_ms),
            w.state.as_str().to_string(),
        ]);
    }
    fit(b)
}

/// `summary --by-tag KEY`: one row per tag value, one column per state.
pub fn breakdown_table(key: &str, values: &[TagCounts]) -> String {
    if values.is_empty() {
        return format!("no task has a tag {key}=…");
    }
    let mut b = Builder::new();
    let mut header = vec![key.to_string()];
    header.extend(TaskState::ALL.iter().map(|s| s.to_string()));
    b.push_record(header);
    for v in values {
        let mut row = vec![v.value.clone()];
        row.extend(TaskState::ALL.iter().map(|s| {
            v.counts
                .iter()
                .find(|c| c.state == *s)
                .map_or(0, |c| c.count)
                .to_string()
        }));
        b.push_record(row);
    }
    fit(b)
}

/// A queue's counts in words, nonzero states only.
fn queue_counts(q: &QueueInfo) -> String {
    let parts: Vec<String> = q
        .counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| format!("{} {}", c.count, c.state))
        .collect();
    if parts.is_empty() {
        "no tasks".into()
    } else {
        parts.join(", ")
    }
}

fn limit_text(limit: Option<u32>) -> String {
    limit.map_or_else(|| "none".into(), |l| l.to_string())
}

/// The queues of a namespace as a table.
pub fn queues_table(queues: &[QueueInfo]) -> String {
    if queues.is_empty() {
        return "no queues".into();
    }
    let mut b = Builder::new();
    b.push_record([
        "queue", "prio", "weight", "limit", "paused", "running", "fin/min", "subs", "tasks",
    ]);
    for q in queues {
        let s = &q.settings;
        b.push_record([
            q.name.clone(),
            s.priority.to_string(),
            s.weight.to_string(),
            limit_text(s.limit),
            if s.paused { "yes" } else { "no" }.to_string(),
            q.held.to_string(),
            q.finished_last_minute.to_string(),
            q.subscribers.to_string(),
            queue_counts(q),
        ]);
    }
    fit(b)
}

/// `queue show` for people.
pub fn queue_text(q: &QueueInfo) -> String {
    let s = &q.settings;
    let mut b = Builder::new();
    let mut row = |k: &str, v: String| b.push_record([k.to_string(), v]);
    row("queue", q.name.clone());
    row("namespace", s.namespace.clone());
    row("priority", s.priority.to_string());
    row("weight", s.weight.to_string());
    row("limit", limit_text(s.limit));
    row("paused", if s.paused { "yes" } else { "no" }.into());
    row("default attempts", s.max_attempts.unwrap_or(1).to_string());
    row(
        "default timeout",
        s.timeout_ms
            .map(|m| humantime::format_duration(Duration::from_millis(m)).to_string())
            .unwrap_or_else(|| "none".into()),
    );
    row("running now", q.held.to_string());
    row(
        "finished",
        format!("{} in the last minute", q.finished_last_minute),
    );
    row(
        "subscribers",
        format!("{} (capacity {})", q.subscribers, q.capacity),
    );
    for c in &q.counts {
        row(c.state.as_str(), c.count.to_string());
    }
    fit_whole(b) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_read_local_times_with_the_time_since_the_stage_before() {
        // 2026-11-26 14:02:11.500 UTC.
        let t = 1_795_701_731_500;
        let shown = local(t);
        assert_eq!(shown.len(), "2026-11-26 14:02:11".len(), "{shown}");
        assert!(shown.starts_with("2026-11-2"), "{shown}");
        assert!(local_after(t + 3_200, Some(t)).ends_with(" (+3.2s)"));
        assert_eq!(local_after(t, None), shown);
        assert_eq!(local_on(t + 1000, t), shown[11..].replace(":11", ":12"));
    }

    #[test]
    fn short_ids_are_unique_among_those_shown_and_at_least_twelve_digits() {
        // A thousand ids made at once share their time prefix and most of their counter.
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        let short = short_ids(ids.iter().copied());
        let len = short[0].len();
        assert!(
            len > 12,
            "ids made in one millisecond need more than the time: {len}"
        );
        assert!(short.iter().all(|s| s.len() == len));
        let distinct: std::collections::HashSet<&String> = short.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for (id, s) in ids.iter().zip(&short) {
            assert!(id.simple().starts_with(s.as_str()));
        }
        // One id, or ids far apart, show 12 digits.
        assert_eq!(short_ids(ids[..1].iter().copied())[0].len(), 12);
        assert!(short_ids(std::iter::empty()).is_empty());
    }
}
