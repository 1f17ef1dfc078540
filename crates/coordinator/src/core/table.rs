//! The task table, and the compact form of a task.
//!
//! A task that only waits (created, ready, paused off any worker) or has finished is kept
//! *packed*: its stored record, the very allocation that the batch carried to the writer and
//! that the store's image keeps for checkpoints, plus the few fields the hot paths read without
//! decoding it (state, queue, ticket). Ten million queued tasks then cost their encodings once,
//! not a decoded task of about 470 bytes each on top of them.
//!
//! A task is *opened* (decoded) when it is changed or dispatched, and stays open while a worker
//! holds it, since every report changes it. When the next batch takes its new record for the
//! store, [`TaskTable::record`] packs it again with that record if it may be packed. A task
//! opened and then not changed (a refused request) is packed again with its old record by
//! [`TaskTable::settle`]. Reading a packed task ([`TaskTable::get`]) decodes a copy and leaves
//! the table as it is.
//!
//! A ready task that prefers tags stays open: the scheduler reads its preferences at the head
//! of its queue, by reference.

use std::borrow::Cow;
use std::ops::RangeBounds;

use tatzelwurm_protocol::{Tag, TaskId, TaskState};

use super::idmap::IdMap;
use crate::scheduler::QueueIdx;
use crate::store::{Record, decode_record, encode_task};
use crate::task::{Head, Task};

/// Every task by id, packed or open.
#[derive(Default)]
pub(crate) struct TaskTable {
    /// Ordered by id, which is the order tasks were made in (listings page through it).
    map: IdMap<Slot>,
    /// Tasks opened since they were last packed and not yet looked at by `record` or `settle`.
    opened: Vec<TaskId>,
}

enum Slot {
    Packed {
        record: Record,
        ticket: u64,
        queue: QueueIdx,
        state: TaskState,
    },
    Open {
        task: Box<Task>,
        /// Its latest record, if it had one (packed with, or taken for the store): packed again
        /// with it when unchanged.
        was: Option<Record>,
    },
}

/// Decodes a packed task. Every record in the table was decoded once when the tables were built
/// or was encoded by this process, so a failure here is a bug, not bad input.
fn unpack(record: &[u8], ticket: u64, queue: QueueIdx) -> Task {
    let info = decode_record(record).expect("a record that decoded before decodes again");
    Task {
        info,
        ticket,
        queue,
    }
}

impl Slot {
    fn state(&self) -> TaskState {
        match self {
            Slot::Packed { state, .. } => *state,
            Slot::Open { task, .. } => task.state(),
        }
    }

    fn queue(&self) -> QueueIdx {
        match self {
            Slot::Packed { queue, .. } => *queue,
            Slot::Open { task, .. } => task.queue,
        }
    }

    fn ticket(&self) -> u64 {
        match self {
            Slot::Packed { ticket, .. } => *ticket,
            Slot::Open { task, .. } => task.ticket,
        }
    }

    fn task(&self) -> Cow<'_, Task> {
        match self {
            Slot::Packed {
                record,
                ticket,
                queue,
                ..
            } => Cow::Owned(unpack(record, *ticket, *queue)),
            Slot::Open { task, .. } => Cow::Borrowed(task),
        }
    }

    /// `task` packed as `record` (its current encoding).
    fn packed(task: &Task, record: Record) -> Slot {
        Slot::Packed {
            record,
            ticket: task.ticket,
            queue: task.queue,
            state: task.state(),
        }
    }

    /// Packs an open task with `record` (its current encoding) if it may be packed.
    fn pack_with(&mut self, record: Record) {
        if let Slot::Open { task, .. } = self
            && task.packable()
        {
            *self = Slot::packed(task, record);
        }
    }

    fn set_ticket(&mut self, new: u64) {
        match self {
            Slot::Packed { ticket, .. } => *ticket = new,
            Slot::Open { task, .. } => task.ticket = new,
        }
    }
}

/// A task in the table, read without decoding it until its whole content is asked for.
#[derive(Clone, Copy)]
pub(crate) struct TaskRef<'a> {
    id: TaskId,
    slot: &'a Slot,
}

impl<'a> TaskRef<'a> {
    /// Its id.
    pub(crate) fn id(&self) -> TaskId {
        self.id
    }

    /// Its state.
    pub(crate) fn state(&self) -> TaskState {
        self.slot.state()
    }

    /// Its queue.
    pub(crate) fn queue(&self) -> QueueIdx {
        self.slot.queue()
    }

    /// The ticket of its latest enqueue.
    pub(crate) fn ticket(&self) -> u64 {
        self.slot.ticket()
    }

    /// Its id, state and holder (a packed task has none).
    pub(crate) fn head(&self) -> Head {
        match self.slot {
            Slot::Packed { state, .. } => Head {
                id: self.id,
                state: *state,
                holder: None,
            },
            Slot::Open { task, .. } => task.head(),
        }
    }

    /// The whole task: borrowed when open, decoded when packed.
    pub(crate) fn task(&self) -> Cow<'a, Task> {
        self.slot.task()
    }
}

impl TaskTable {
    /// How many are packed (for tests and diagnostics).
    pub(crate) fn packed(&self) -> usize {
        self.map
            .values()
            .filter(|s| matches!(s, Slot::Packed { .. }))
            .count()
    }

    /// The record a packed task is kept as; `None` when it is open or unknown.
    #[cfg(test)]
    pub(crate) fn packed_record(&self, id: &TaskId) -> Option<Record> {
        match self.map.get(id)? {
            Slot::Packed { record, .. } => Some(record.clone()),
            Slot::Open { .. } => None,
        }
    }

    /// Whether task `id` exists.
    pub(crate) fn contains_key(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }

    /// A task to read; a packed one is decoded into a copy.
    pub(crate) fn get(&self, id: &TaskId) -> Option<Cow<'_, Task>> {
        self.map.get(id).map(Slot::task)
    }

    /// A task's entry, to read its state and queue without decoding it.
    pub(crate) fn look(&self, id: &TaskId) -> Option<TaskRef<'_>> {
        self.map.get(id).map(|slot| TaskRef { id: *id, slot })
    }

    /// A task to change: a packed one is opened (decoded in place) first.
    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        let slot = self.map.get_mut(id)?;
        if let Slot::Packed { record, .. } = slot {
            let was = Some(record.clone());
            let task = Box::new(slot.task().into_owned());
            *slot = Slot::Open { task, was };
            self.opened.push(*id);
        }
        match slot {
            Slot::Open { task, .. } => Some(task),
            Slot::Packed { .. } => unreachable!("opened above"),
        }
    }

    /// Enters a new task, open until its first record is taken.
    pub(crate) fn insert(&mut self, task: Task) {
        let id = task.id();
        self.map.insert(
            id,
            Slot::Open {
                task: Box::new(task),
                was: None,
            },
        );
        self.opened.push(id);
    }

    /// Sets the ticket of a task's latest enqueue, packed or open.
    pub(crate) fn set_ticket(&mut self, id: &TaskId, new: u64) {
        if let Some(slot) = self.map.get_mut(id) {
            slot.set_ticket(new);
        }
    }

    /// Takes a task out of the table.
    pub(crate) fn remove(&mut self, id: &TaskId) -> Option<Task> {
        self.map.remove(id).map(|slot| match slot {
            Slot::Open { task, .. } => *task,
            packed => packed.task().into_owned(),
        })
    }

    /// The tasks whose ids fall in `range`, in id order.
    pub(crate) fn range(
        &self,
        range: impl RangeBounds<TaskId>,
    ) -> impl DoubleEndedIterator<Item = TaskRef<'_>> {
        self.map.range(range).map(|(id, slot)| TaskRef { id, slot })
    }

    /// Every task, in id order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = TaskRef<'_>> {
        self.range(..)
    }

    /// The preferred tags of a task if it is ready under `ticket` (what the scheduler asks of
    /// the head of a queue); `None` for a stale entry. A packed ready task prefers nothing.
    pub(crate) fn ready_prefer(&self, id: &TaskId, ticket: u64) -> Option<&[Tag]> {
        let slot = self.map.get(id)?;
        if slot.state() != TaskState::Ready || slot.ticket() != ticket {
            return None;
        }
        Some(match slot {
            Slot::Packed { .. } => &[],
            Slot::Open { task, .. } => &task.info.spec.prefer,
        })
    }

    /// A changed task's record for the store; the task is packed with it when it may be.
    pub(crate) fn record(&mut self, id: &TaskId) -> Option<Record> {
        let slot = self.map.get_mut(id)?;
        let record = match slot {
            // Already packed: a batch that failed to commit is written again.
            Slot::Packed { record, .. } => return Some(record.clone()),
            Slot::Open { task, was } => {
                let record = encode_task(&task.info);
                *was = Some(record.clone());
                record
            }
        };
        slot.pack_with(record.clone());
        Some(record)
    }

    /// Packs again the tasks opened since the last call that may be packed, except those for
    /// which `changing` holds (changes not yet taken for the store). One that is unchanged gets
    /// its old record back, so it shares it with the image again.
    pub(crate) fn settle(&mut self, changing: impl Fn(&TaskId) -> bool) {
        let opened = std::mem::take(&mut self.opened);
        for id in opened {
            if changing(&id) {
                self.opened.push(id);
                continue;
            }
            let Some(slot) = self.map.get_mut(&id) else {
                continue;
            };
            let Slot::Open { task, was } = slot else {
                continue;
            };
            if !task.packable() {
                continue;
            }
            let now = encode_task(&task.info);
            let record = match was.take() {
                Some(old) if old[..] == now[..] => old,
                _ => now,
            };
            slot.pack_with(record);
        }
    }
}

/// The table as it is built at start: tasks in the store's order, sorted once at the end and
/// built in one pass rather than inserted one by one.
#[derive(Default)]
pub(crate) struct Loading(Vec<(TaskId, Slot)>);

impl Loading {
    /// Adds a task read from the store with the record it was read from: packed when it may
    /// be; `None` for a task changed while the tables were built, which the next batch encodes
    /// (and packs).
    pub(crate) fn push(&mut self, task: Task, record: Option<Record>) {
        let id = task.id();
        let slot = match record {
            Some(record) if task.packable() => Slot::packed(&task, record),
            was => Slot::Open {
                task: Box::new(task),
                was,
            },
        };
        self.0.push((id, slot));
    }

    /// How many tasks were added.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets the ticket of the `at`th task added (its enqueue at start).
    pub(crate) fn set_ticket(&mut self, at: usize, new: u64) {
        self.0[at].1.set_ticket(new);
    }

    /// The table.
    pub(crate) fn finish(mut self) -> TaskTable {
        self.0.sort_unstable_by_key(|(id, _)| *id);
        TaskTable {
            map: IdMap::from_sorted(self.0),
            opened: Vec::new(),
        }
    }
}
