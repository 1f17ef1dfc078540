//! Unit tests of the core, without sockets, by concern; the helpers they share.

use super::*;
use tatzelwurm_protocol::{BlockType, Outcome, Payload};

mod commits;
mod follow;
mod messaging;
mod prefetch;
mod queues;
mod subscriptions;
mod table;
mod tasks;
mod workers;

/// Tasks as a restart reads them from the store: each with its record.
pub(super) fn as_stored(tasks: Vec<TaskInfo>) -> Vec<(TaskInfo, Record)> {
    tasks
        .into_iter()
        .map(|t| {
            let r = crate::store::encode_task(&t);
            (t, r)
        })
        .collect()
}

/// Every task of the table, decoded.
pub(super) fn all_tasks(c: &Core) -> Vec<TaskInfo> {
    c.tasks.iter().map(|t| t.task().into_owned().info).collect()
}

pub(super) fn core() -> Core {
    Core::new(CoreConfig {
        lease_ms: 1000,
        ..CoreConfig::default()
    })
}

pub(super) fn hello(name: &str, slots: u32) -> WorkerHello {
    WorkerHello {
        block: BlockType::Async,
        slots,
        name: name.into(),
        host: "h".into(),
        tags: vec![],
        handlers: vec![],
        previous_id: None,
        streams_output: false,
        prefetch: 0,
        custom_only: false,
    }
}

pub(super) fn add(c: &mut Core, n: usize, play: bool) -> Vec<TaskId> {
    let tasks = (0..n)
        .map(|_| TaskSpec::new(Payload::Sleep { duration_ms: 1 }))
        .collect();
    c.actioner(1, RequestId(1), ActionerRequest::Add { tasks, play }, 10);
    let batch = c.take_batch().unwrap();
    match &batch.sends[..] {
        [
            ..,
            (
                _,
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Added { ids, .. },
                    ..
                }),
            ),
        ] => ids.clone(),
        other => panic!("{other:?}"),
    }
}

/// The worker on `conn` reports that `attempt` ended with `outcome` at `now`.
pub(super) fn finish(c: &mut Core, conn: ConnId, attempt: AttemptRef, outcome: Outcome, now: u64) {
    let report = AttemptReport {
        outcome: Some(outcome),
        ended_ms: now,
        ..Default::default()
    };
    c.worker(conn, WorkerToCoordinator::Finished { attempt, report }, now);
}

pub(super) fn dispatches(batch: &Batch) -> Vec<AttemptRef> {
    batch
        .sends
        .iter()
        .filter_map(|(_, o)| match o {
            Out::Worker(CoordinatorToWorker::Dispatch(d)) => Some(d.attempt),
            _ => None,
        })
        .collect()
}

/// The ids of the one `changed` reply in a batch, or the error it carries.
pub(super) fn changed_reply(sends: &[(ConnId, Out)]) -> Result<Vec<TaskId>, ErrorReply> {
    let replies: Vec<&Reply> = sends
        .iter()
        .filter_map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Reply { body, .. }) => Some(body),
            _ => None,
        })
        .collect();
    match &replies[..] {
        [Reply::Changed { ids, more: false }] => Ok(ids.clone()),
        [Reply::Error(e)] => Err(e.clone()),
        other => panic!("{other:?}"),
    }
}

/// The orders a batch or an immediate list holds for connection `conn`, in order.
pub(super) fn to_worker(sends: &[(ConnId, Out)], conn: ConnId) -> Vec<CoordinatorToWorker> {
    sends
        .iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, o)| match o {
            Out::Worker(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// Sends a request and returns every reply and message it caused, immediate and durable.
pub(super) fn ask(
    c: &mut Core,
    conn: ConnId,
    request: u64,
    body: ActionerRequest,
) -> Vec<(ConnId, Out)> {
    c.actioner(conn, RequestId(request), body, 20);
    c.schedule(20);
    let mut out = c.take_immediate();
    if let Some(b) = c.take_batch() {
        out.extend(b.sends);
    }
    out
}

pub(super) fn replies(out: &[(ConnId, Out)], conn: ConnId) -> Vec<Reply> {
    out.iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, o)| match o {
            Out::Actioner(CoordinatorToActioner::Reply { body, .. }) => Some(body.clone()),
            _ => None,
        })
        .collect()
}
