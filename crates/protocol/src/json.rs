//! The JSON shapes of tasks, workers, queues, counts and events, shared by `actionwurm --json`
//! and the coordinator's HTTP API so that a script reads the same fields from either.
//!
//! Timestamps are RFC 3339 strings (UTC, milliseconds), ids are hyphenated UUIDs, worker ids are
//! `w<N>`, tags are `key=value` strings, user data is decoded from MessagePack into plain JSON.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::{
    Attempt, Data, Payload, QueueInfo, StateCount, Tag, TaskEvent, TaskInfo, TaskSummary,
    WorkerInfo,
};

/// RFC 3339 (UTC, milliseconds) for a timestamp in ms.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An optional timestamp: RFC 3339, or null.
pub fn opt_time(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(rfc3339(m)))
}

/// Tags as `key=value` strings.
pub fn tags(t: &[Tag]) -> Vec<String> {
    t.iter().map(Tag::to_string).collect()
}

/// User data as JSON: decoded MessagePack, null when empty, hex when undecodable.
pub fn data_json(d: &Data) -> Value {
    if d.is_empty() {
        return Value::Null;
    }
    d.decode::<Value>().unwrap_or_else(|_| {
        json!({ "undecodable_msgpack_hex": d.0.iter().map(|b| format!("{b:02x}")).collect::<String>() })
    })
}

/// The JSON object of one `task list` line.
pub fn summary_json(t: &TaskSummary) -> Value {
    json!({
        "id": t.id.to_string(),
        "number": t.number,
        "batch": t.batch,
        "name": t.name,
        "state": t.state.as_str(),
        "block": t.block.as_str(),
        "priority": t.priority,
        "tags": tags(&t.tags),
        "command": t.command,
        "attempts": t.attempts,
        "max_attempts": t.max_attempts,
        "worker": t.worker.map(|w| w.to_string()),
        "created": rfc3339(t.created_ms),
        "changed": rfc3339(t.changed_ms),
        "queue": t.queue,
        "worker_name": t.worker_name,
    })
}

/// Counts as a JSON object `{state: count}`.
pub fn counts_json(counts: &[StateCount]) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|c| (c.state.as_str().to_string(), json!(c.count)))
            .collect(),
    )
}

/// What a task runs.
pub fn payload_json(p: &Payload) -> Value {
    match p {
        Payload::Exec { argv, env, cwd } => json!({
            "kind": "exec",
            "argv": argv,
            "env": env.iter().map(|e| (e.name.clone(), Value::String(e.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "cwd": cwd,
        }),
        Payload::Sleep { duration_ms } => json!({"kind": "sleep", "duration_ms": duration_ms}),
        Payload::Custom { handler, data } => {
            json!({"kind": "custom", "handler": handler, "data": data_json(data)})
        }
        Payload::Message {
            namespace,
            queue,
            body,
            no_reply,
        } => json!({
            "kind": "message",
            "namespace": namespace,
            "queue": queue,
            "body": data_json(body),
            "no_reply": no_reply,
        }),
    }
}

/// One attempt, with its outcome, output tails and late reports.
pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "worker": a.worker.to_string(),
        "worker_name": a.worker_name,
        "assigned": rfc3339(a.assigned_ms),
        "started": opt_time(a.started_ms),
        "ended": opt_time(a.ended_ms),
        "outcome": a.outcome.map(|o| o.as_str()),
        "exit_code": a.exit_code,
        "error": a.error,
        "stdout_tail": a.stdout_tail,
        "stderr_tail": a.stderr_tail,
        "output": data_json(&a.output),
        "late_reports": a.late_reports.iter().map(|r| json!({
            "outcome": r.outcome.map(|o| o.as_str()),
            "exit_code": r.exit_code,
            "error": r.error,
            "ended": rfc3339(r.ended_ms),
        })).collect::<Vec<_>>(),
    })
}

/// The JSON object of `task show`.
pub fn task_json(t: &TaskInfo) -> Value {
    let s = &t.spec;
    json!({
        "id": t.id.to_string(),
        "number": t.number,
        "batch": t.batch,
        "name": s.name,
        "state": t.state.as_str(),
        "block": s.block.as_str(),
        "priority": s.priority,
        "tags": tags(&s.tags),
        "queue": s.queue_name(),
        "namespace": t.namespace,
        "prefer": tags(&s.prefer),
        "require": tags(&s.require),
        "payload": payload_json(&s.payload),
        "max_attempts": s.max_attempts,
        "timeout_ms": s.timeout_ms,
        "user_key": s.user_key,
        "user_data": data_json(&s.user_data),
        "worker": t.worker.map(|w| w.to_string()),
        "times": {
            "created": rfc3339(t.times.created_ms),
            "ready": opt_time(t.times.ready_ms),
            "assigned": opt_time(t.times.assigned_ms),
            "running": opt_time(t.times.running_ms),
            "paused": opt_time(t.times.paused_ms),
            "ended": opt_time(t.times.ended_ms),
        },
        "attempts": t.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    })
}

/// The JSON object of one worker.
pub fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "id": w.id.to_string(),
        "name": w.name,
        "host": w.host,
        "block": w.block.as_str(),
        "slots": w.slots,
        "running": w.running,
        "tags": tags(&w.tags),
        "handlers": w.handlers,
        "connected": rfc3339(w.connected_ms),
        "last_heartbeat": rfc3339(w.last_heartbeat_ms),
        "state": w.state.as_str(),
    })
}

/// A queue as JSON.
pub fn queue_json(q: &QueueInfo) -> Value {
    let s = &q.settings;
    json!({
        "name": q.name,
        "namespace": s.namespace,
        "priority": s.priority,
        "weight": s.weight,
        "limit": s.limit,
        "paused": s.paused,
        "default_attempts": s.max_attempts,
        "default_timeout_ms": s.timeout_ms,
        "counts": counts_json(&q.counts),
        "waiting": q.depth,
        "running": q.held,
        "held": q.held,
        "finished_last_minute": q.finished_last_minute,
        "subscribers": q.subscribers,
        "capacity": q.capacity,
    })
}

/// A broadcast as JSON, one line of `listen --json`.
pub fn broadcast_json(m: &crate::BroadcastMessage) -> Value {
    json!({
        "body": data_json(&m.body),
        "sender": m.sender,
        "subject": m.subject,
        "correlation_id": m.correlation_id,
    })
}

/// One task event, a line of the HTTP event stream.
pub fn event_json(e: &TaskEvent) -> Value {
    json!({
        "id": e.id.to_string(),
        "state": e.state.as_str(),
        "at": rfc3339(e.at_ms),
        "attempt": e.attempt,
    })
}
