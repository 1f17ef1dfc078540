//! Task records as earlier layouts wrote them: layout 2, before tasks had a queue, affinity and
//! a namespace, and the first records of layout 3, before they had a number and a batch.
//!
//! bincode is positional, so a record of an old shape cannot be read as the new one. Records
//! carry a leading tag byte ([`TASK_TAG`] now, [`TASK_TAG_V3`] before numbers); a layout-2 record
//! starts with the length of its id's bytes (16), so each record says by itself how to read it,
//! whatever mix of old and new the buckets and the journal hold. Old records stay as they are
//! until their task changes.

use serde::Deserialize;
use tatzelwurm_protocol::{
    Attempt, BlockType, DEFAULT_NAMESPACE, Data, Payload, StageTimes, Tag, TaskId, TaskInfo,
    TaskSpec, TaskState, WorkerId,
};

/// The first byte of a task record with a number and a batch.
pub(crate) const TASK_TAG: u8 = 0xA4;

/// The first byte of a task record of layout 3 before numbers: read as [`TaskV3`].
pub(crate) const TASK_TAG_V3: u8 = 0xA3;

/// A task as the first records of layout 3 held it: today's without `number` and `batch` (which
/// the coordinator hands out at start).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct TaskV3 {
    id: TaskId,
    spec: TaskSpec,
    state: TaskState,
    times: StageTimes,
    attempts: Vec<Attempt>,
    worker: Option<WorkerId>,
    namespace: String,
}

impl From<TaskV3> for TaskInfo {
    fn from(t: TaskV3) -> TaskInfo {
        TaskInfo {
            id: t.id,
            spec: t.spec,
            state: t.state,
            times: t.times,
            attempts: t.attempts,
            worker: t.worker,
            namespace: t.namespace,
            number: 0,
            batch: 0,
        }
    }
}

/// A spec of layout 2: today's without `queue`, `prefer` and `require`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct SpecV2 {
    name: Option<String>,
    block: BlockType,
    priority: i32,
    tags: Vec<Tag>,
    payload: Payload,
    max_attempts: u32,
    timeout_ms: Option<u64>,
    user_key: Option<String>,
    user_data: Data,
}

/// A task of layout 2: today's without `namespace`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct TaskV2 {
    id: TaskId,
    spec: SpecV2,
    state: TaskState,
    times: StageTimes,
    attempts: Vec<Attempt>,
    worker: Option<WorkerId>,
}

impl From<TaskV2> for TaskInfo {
    fn from(t: TaskV2) -> TaskInfo {
        let s = t.spec;
        // A message task lived in its payload's namespace; every other task in the default one.
        let namespace = match &s.payload {
            Payload::Message { namespace, .. } => namespace.clone(),
            _ => DEFAULT_NAMESPACE.to_string(),
        };
        TaskInfo {
            id: t.id,
            spec: TaskSpec {
                name: s.name,
                block: s.block,
                priority: s.priority,
                tags: s.tags,
                payload: s.payload,
                max_attempts: s.max_attempts,
                timeout_ms: s.timeout_ms,
                user_key: s.user_key,
                user_data: s.user_data,
                queue: None,
                prefer: Vec::new(),
                require: Vec::new(),
            },
            state: t.state,
            times: t.times,
            attempts: t.attempts,
            worker: t.worker,
            namespace,
            number: 0,
            batch: 0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::image::{decode_task_record, encode, tests::task};
    use super::*;

    /// The record layout 2 wrote for `t` (which must have no queue, affinity or namespace).
    fn v2(t: &TaskInfo) -> TaskV2 {
        let s = t.spec.clone();
        TaskV2 {
            id: t.id,
            spec: SpecV2 {
                name: s.name,
                block: s.block,
                priority: s.priority,
                tags: s.tags,
                payload: s.payload,
                max_attempts: s.max_attempts,
                timeout_ms: s.timeout_ms,
                user_key: s.user_key,
                user_data: s.user_data,
            },
            state: t.state,
            times: t.times.clone(),
            attempts: t.attempts.clone(),
            worker: t.worker,
        }
    }

    /// The record layout 2 wrote for `t`.
    pub(crate) fn v2_record(t: &TaskInfo) -> Vec<u8> {
        encode(&v2(t)).to_vec()
    }

    /// The record layout 3 wrote for `t` before tasks had numbers.
    pub(crate) fn v3_record(t: &TaskInfo) -> Vec<u8> {
        let v3 = TaskV3 {
            id: t.id,
            spec: t.spec.clone(),
            state: t.state,
            times: t.times.clone(),
            attempts: t.attempts.clone(),
            worker: t.worker,
            namespace: t.namespace.clone(),
        };
        let mut rec = vec![TASK_TAG_V3];
        rec.extend_from_slice(&encode(&v3));
        rec
    }

    #[test]
    fn a_record_of_layout_2_starts_with_the_id_length_and_reads_as_today() {
        let t = task();
        let old = v2_record(&t);
        assert_eq!(old[0], 16, "an id's 16 bytes, never the tag");
        assert_ne!(old[0], TASK_TAG);
        let bucket = super::super::image::frame([&old[..]].into_iter());
        let r = super::super::image::replay(super::super::image::Stored {
            buckets: vec![bucket],
            ..Default::default()
        })
        .unwrap();
        let back: Vec<TaskInfo> = r.tasks.iter().map(|b| decode_task_record(b)).collect();
        assert_eq!(back, vec![t]);
        assert_eq!(back[0].namespace, DEFAULT_NAMESPACE);
    }

    #[test]
    fn a_record_of_layout_3_before_numbers_reads_with_number_0() {
        let t = task();
        let rec = v3_record(&t);
        let bucket = super::super::image::frame([&rec[..]].into_iter());
        let r = super::super::image::replay(super::super::image::Stored {
            buckets: vec![bucket],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            r.tasks
                .iter()
                .map(|b| decode_task_record(b))
                .collect::<Vec<_>>(),
            vec![t],
            "today's task with number 0, to be numbered at start"
        );
    }
}
