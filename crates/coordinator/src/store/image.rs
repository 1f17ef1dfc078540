//! The store's layout as plain data, with no database in sight: how a journal entry and a bucket
//! are framed, the in-memory image of what the store holds (so that a checkpoint never has to ask
//! the actor for anything), and the replay that rebuilds the tables at start.
//!
//! Layout (version 6):
//! - `journal:SEQ`: one record per committed batch (or part of one); `body` is an [`Entry`]. An
//!   embedded store keeps these as key-value pairs ([`super::kvlog`]) or, on surrealkv, in files
//!   of its own ([`super::filelog`]), with the same bodies; one written by version 3 may still
//!   hold some here, which are read and folded away.
//! - `bucket:B` (B in 0..256): every task whose id ends in byte B, as of the last checkpoint;
//!   `body` is a framed list of task records: bincode behind the tag byte of
//!   [`legacy::TASK_TAG`](super::legacy), or a layout-2 record without it.
//! - `meta:workers`: every worker as of the last checkpoint, a framed list of bincode workers.
//! - `meta:queues`: every queue whose settings were set, as of the last checkpoint, a framed
//!   list of bincode queue settings.
//! - `meta:checkpoint`: `upto`, the last journal sequence number the buckets include.
//! - `meta:counters`: the id, number and batch counters in bincode (`Counters`), written in the
//!   transaction of a batch that moved one of them past what the tables show (in an embedded
//!   store, a key-value pair beside its journal).
//!
//! The tables are the buckets with every journal entry after `upto` applied in sequence order.
//! Entries hold whole records, and dispatches as [`Assignment`]s, which set the fields they
//! change to values they carry. So applying an entry twice, or entries the buckets already
//! include, then the rest in order, ends at the same records: that is what lets a checkpoint
//! write its buckets and drop the journal in separate transactions. An assignment is a few dozen
//! bytes where the whole task was hundreds: a task is written whole when it is added and when
//! its attempt ends, and its dispatch in between as the change alone.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tatzelwurm_protocol::{BodyCodec, QueueSettings, TaskId, TaskInfo, WorkerId, WorkerInfo};

use super::StoreError;
use super::legacy::{TASK_TAG, TASK_TAG_V3, TaskV2, TaskV3};
use crate::task::Assignment;

/// The layout this code writes; a store with a higher number was written by a newer version.
/// Version 3 tags task records and adds queue settings; version 4 moves an embedded store's
/// journal and counters out of SurrealDB's tables (a version 3 coordinator would not see them);
/// version 5 moves a surrealkv store's journal into files of its own ([`super::filelog`]), which
/// a version 4 coordinator would not see either; version 6 writes dispatches as assignments
/// ([`Assignment`]) in a sixth part of a journal entry, which a version 5 coordinator would
/// refuse as damage. Each reads the versions before it as they are.
pub(crate) const LAYOUT_VERSION: i64 = 6;

/// Queue settings are identified by namespace and name.
pub(crate) type QueueKey = (String, String);
/// How many buckets the tasks are spread over.
pub(crate) const BUCKETS: usize = 256;
const CODEC: BodyCodec = BodyCodec::Bincode;

/// A hash of a task id's bytes within its bucket: its first eight bytes (a UUIDv7's time and
/// counter; the bucket is chosen by the last byte, which is random) mixed as FxHash does.
fn id_hash(id: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id[..8]);
    let mut rest = [0u8; 8];
    rest.copy_from_slice(&id[8..16]);
    (u64::from_le_bytes(first) ^ u64::from_le_bytes(rest).rotate_left(29))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The bucket a task lives in: the last byte of its id, which is random in a UUIDv7.
pub(crate) fn bucket_of(id: TaskId) -> usize {
    id.0.as_bytes()[15] as usize % BUCKETS
}

/// One record in bincode: the unit the journal, the buckets and the image all hold.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Bytes {
    encode_with(None, v, Bytes::copy_from_slice)
}

/// A record in bincode after an optional tag byte, copied by `make` out of a reused buffer.
fn encode_with<T: serde::Serialize, R>(tag: Option<u8>, v: &T, make: impl Fn(&[u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    // Encoded into a reused buffer, then copied into an allocation of exactly its size: the image
    // keeps one of these per task, and a buffer grown by doubling would keep up to twice that.
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        if let Some(tag) = tag {
            scratch.put_u8(tag);
        }
        CODEC
            .encode_into(v, &mut scratch)
            .expect("in-memory records always encode");
        let bytes = make(&scratch);
        // One huge record (user data of megabytes) must not stay resident in every thread.
        if scratch.capacity() > 1 << 20 {
            *scratch = BytesMut::new();
        }
        bytes
    })
}

pub use super::record::Record;

/// A task record: the tag byte, then the task in bincode.
pub fn encode_task(t: &TaskInfo) -> Record {
    encode_with(Some(TASK_TAG), t, |b: &[u8]| Record::from(b))
}

/// A task's record as the store writes it, and its id: what a batch carries, so that the actor
/// encodes a changed task once instead of cloning it for the writer.
pub trait TaskRecord {
    /// The task's id.
    fn id(&self) -> TaskId;
    /// The record ([`encode_task`]).
    fn record(&self) -> Record;
}

impl TaskRecord for TaskInfo {
    fn id(&self) -> TaskId {
        self.id
    }
    fn record(&self) -> Record {
        encode_task(self)
    }
}

impl TaskRecord for (TaskId, Record) {
    fn id(&self) -> TaskId {
        self.0
    }
    fn record(&self) -> Record {
        self.1.clone()
    }
}

/// Reads back a task record made by [`encode_task`].
#[cfg(test)]
pub(crate) fn decode_task_record(b: &[u8]) -> TaskInfo {
    decode_task("task", "test", b).expect("a record of this layout")
}

/// Reads a task record of this layout or of an earlier one (tasks read from the store at start
/// may still be in layout 2 or 3 until they change).
pub(crate) fn decode_task(table: &'static str, at: &str, b: &[u8]) -> Result<TaskInfo, StoreError> {
    match b.split_first() {
        Some((&TASK_TAG, rest)) => decode(table, at, rest),
        Some((&TASK_TAG_V3, rest)) => decode::<TaskV3>(table, at, rest).map(TaskInfo::from),
        _ => decode::<TaskV2>(table, at, b).map(TaskInfo::from),
    }
}

/// The 16 bytes of the id inside a task record whose id [`task_id_of`] has read: after the tag
/// and the length byte (16) in this layout and layout 3, after the length byte in layout 2.
fn id_bytes(record: &[u8]) -> &[u8] {
    match record.first() {
        Some(&(TASK_TAG | TASK_TAG_V3)) => &record[2..18],
        _ => &record[1..17],
    }
}

/// The id of a task record of any layout, read without decoding the rest: every layout begins
/// with the id.
fn task_id_of(table: &'static str, at: &str, b: &[u8]) -> Result<TaskId, StoreError> {
    #[derive(serde::Deserialize)]
    struct IdFirst {
        id: TaskId,
    }
    let body = match b.split_first() {
        Some((&(TASK_TAG | TASK_TAG_V3), rest)) => rest,
        _ => b,
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        table,
        id: at.to_string(),
        reason,
    };
    let id = CODEC
        .decode_prefix::<IdFirst>(body)
        .map(|r| r.id)
        .map_err(|e| corrupt(e.to_string()))?;
    // The image finds records by these bytes: they must be where `id_bytes` looks.
    if b.len() < 18 || id_bytes(b) != id.0.as_bytes() {
        return Err(corrupt("the id is not where its layout puts it".into()));
    }
    Ok(id)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    at: &str,
    b: &[u8],
) -> Result<T, StoreError> {
    CODEC.decode(b).map_err(|e| StoreError::Corrupt {
        table,
        id: at.to_string(),
        reason: e.to_string(),
    })
}

/// A list of byte strings: a u32 count, then each item as a u32 length and its bytes (little
/// endian).
pub(crate) fn frame<'a>(items: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + items.len() * 8);
    out.put_u32_le(items.len() as u32);
    for item in items {
        out.put_u32_le(item.len() as u32);
        out.put_slice(item);
    }
    out.freeze()
}

/// The items of a [`frame`], as slices of `buf` (no copy).
pub(crate) fn unframe(buf: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut rest = &buf[..];
    if rest.len() < 4 {
        return Err("shorter than its count".into());
    }
    let n = rest.get_u32_le() as usize;
    // Every item needs at least its length prefix: a count beyond that is corrupt, and checking
    // it first keeps a damaged count from reserving gigabytes.
    if n > rest.len() / 4 {
        return Err(format!("count {n} does not fit in {} bytes", rest.len()));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if rest.len() < 4 {
            return Err(format!("item {i} has no length"));
        }
        let len = rest.get_u32_le() as usize;
        if rest.len() < len {
            return Err(format!("item {i} claims {len} bytes, {} left", rest.len()));
        }
        let start = buf.len() - rest.len();
        out.push(buf.slice(start..start + len));
        rest.advance(len);
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last item", rest.len()));
    }
    Ok(out)
}

/// A journal entry read back: its tasks (ids and records, not decoded), workers (each with its
/// encoding), removed task ids, removed worker ids and queue settings.
type Decoded = (
    Vec<(TaskId, Record)>,
    Vec<TaskId>,
    Vec<(WorkerInfo, Bytes)>,
    Vec<u64>,
    Vec<(QueueSettings, Bytes)>,
    Vec<(TaskId, Bytes)>,
);

/// The items of one framed part of a record, each read by `read`.
fn read_items<T>(
    part: &Bytes,
    corrupt: &impl Fn(String) -> StoreError,
    read: impl Fn(&Bytes) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    unframe(part).map_err(corrupt)?.iter().map(read).collect()
}

/// One batch as the journal holds it: changed tasks and workers, whole, dispatches as changes,
/// and removed task ids.
#[derive(Debug, Default, PartialEq)]
pub struct Entry {
    /// Encoded tasks, each with its id.
    pub tasks: Vec<(TaskId, Record)>,
    /// Encoded [`Assignment`]s, each with its task's id: tasks whose latest whole record is in
    /// an earlier entry or a bucket. Never a task of `tasks` or `removed` of the same entry.
    pub assignments: Vec<(TaskId, Bytes)>,
    /// Tasks deleted by `remove`.
    pub removed: Vec<TaskId>,
    /// Encoded workers, each with its id.
    pub workers: Vec<(u64, Bytes)>,
    /// Workers forgotten.
    pub removed_workers: Vec<u64>,
    /// Encoded queue settings, each with its queue.
    pub queues: Vec<(QueueKey, Bytes)>,
}

impl Entry {
    /// Encodes the records of one batch.
    pub fn new<T: TaskRecord>(
        tasks: &[T],
        assignments: &[Assignment],
        removed: &[TaskId],
        workers: &[WorkerInfo],
        removed_workers: &[WorkerId],
        queues: &[QueueSettings],
    ) -> Entry {
        Entry {
            tasks: tasks.iter().map(|t| (t.id(), t.record())).collect(),
            assignments: assignments.iter().map(|a| (a.task, encode(a))).collect(),
            removed: removed.to_vec(),
            workers: workers.iter().map(|w| (w.id.0, encode(w))).collect(),
            removed_workers: removed_workers.iter().map(|w| w.0).collect(),
            queues: queues
                .iter()
                .map(|q| ((q.namespace.clone(), q.name.clone()), encode(q)))
                .collect(),
        }
    }

    /// An entry of whole tasks only.
    #[cfg(test)]
    pub(crate) fn of_tasks<T: TaskRecord>(tasks: &[T]) -> Entry {
        Entry::new(tasks, &[], &[], &[], &[], &[])
    }

    /// Cuts the entry into entries of at most about `max_bytes` of records each (a record larger
    /// than that goes alone), in order: the assignments, the removals, the workers and the
    /// queues in the first.
    pub fn split(self, max_bytes: usize) -> Vec<Entry> {
        let mut out = vec![Entry {
            tasks: Vec::new(),
            assignments: self.assignments,
            removed: self.removed,
            workers: self.workers,
            removed_workers: self.removed_workers,
            queues: self.queues,
        }];
        let mut size: usize = out[0].workers.iter().map(|(_, b)| b.len()).sum::<usize>()
            + out[0]
                .assignments
                .iter()
                .map(|(_, b)| b.len())
                .sum::<usize>();
        for (id, bytes) in self.tasks {
            let last = out.last_mut().expect("never empty");
            if size + bytes.len() > max_bytes && !(last.tasks.is_empty() && size == 0) {
                size = 0;
                out.push(Entry::default());
            }
            size += bytes.len();
            out.last_mut().expect("never empty").tasks.push((id, bytes));
        }
        out
    }

    /// The journal record's body: a frame of six frames (tasks, removed task ids, workers,
    /// removed worker ids as 8 bytes little endian, queue settings, assignments).
    pub fn to_body(&self) -> Bytes {
        let tasks = frame(self.tasks.iter().map(|(_, b)| &b[..]));
        let removed = frame(self.removed.iter().map(|id| &id.0.as_bytes()[..]));
        let workers = frame(self.workers.iter().map(|(_, b)| &b[..]));
        let ids: Vec<[u8; 8]> = self
            .removed_workers
            .iter()
            .map(|w| w.to_le_bytes())
            .collect();
        let removed_workers = frame(ids.iter().map(|b| &b[..]));
        let queues = frame(self.queues.iter().map(|(_, b)| &b[..]));
        let assignments = frame(self.assignments.iter().map(|(_, b)| &b[..]));
        frame(
            [
                &tasks[..],
                &removed[..],
                &workers[..],
                &removed_workers[..],
                &queues[..],
                &assignments[..],
            ]
            .into_iter(),
        )
    }

    /// Reads a journal body back. Tasks come as their ids and records (copied out of the body, to
    /// their size; decoded once, when the tables are built); workers and queue settings decoded,
    /// each with its encoding, so that the image needs no second encode.
    fn from_body(seq: i64, body: &Bytes) -> Result<Decoded, StoreError> {
        let at = format!("journal:{seq}");
        let corrupt = |reason: String| StoreError::Corrupt {
            table: "journal",
            id: at.clone(),
            reason,
        };
        let mut parts = unframe(body).map_err(corrupt)?;
        // Entries written before workers could be forgotten have three parts, those before
        // queues four, those before assignments five.
        while (3..6).contains(&parts.len()) {
            parts.push(frame(std::iter::empty()));
        }
        let [
            tasks,
            removed,
            workers,
            removed_workers,
            queues,
            assignments,
        ] = <[Bytes; 6]>::try_from(parts)
            .map_err(|p| corrupt(format!("{} parts instead of 6", p.len())))?;
        let tasks = read_items(&tasks, &corrupt, |b| {
            Ok((task_id_of("journal", &at, b)?, Record::from(&b[..])))
        })?;
        let removed = read_items(&removed, &corrupt, |b| {
            uuid::Uuid::from_slice(b)
                .map(TaskId)
                .map_err(|e| corrupt(e.to_string()))
        })?;
        let workers = read_items(&workers, &corrupt, |b| {
            Ok((decode("journal", &at, b)?, Bytes::copy_from_slice(b)))
        })?;
        let removed_workers = read_items(&removed_workers, &corrupt, |b| {
            <[u8; 8]>::try_from(&b[..])
                .map(u64::from_le_bytes)
                .map_err(|_| corrupt(format!("a worker id of {} bytes", b.len())))
        })?;
        let queues = read_items(&queues, &corrupt, |b| {
            Ok((decode("journal", &at, b)?, Bytes::copy_from_slice(b)))
        })?;
        let assignments = read_items(&assignments, &corrupt, |b| {
            let a: Assignment = decode("journal", &at, b)?;
            Ok((a.task, Bytes::copy_from_slice(b)))
        })?;
        Ok((
            tasks,
            removed,
            workers,
            removed_workers,
            queues,
            assignments,
        ))
    }
}

/// What one checkpoint writes: every worker and queue as of journal sequence `upto`, and the
/// buckets dirty then (read as they are written, so as of `upto` or later).
pub(crate) struct Snapshot {
    /// The last journal entry these contents include.
    pub upto: i64,
    /// The last journal entry the previous checkpoint included: this one's journal begins
    /// after it (late entries below it aside).
    pub after: i64,
    /// The dirty buckets. Their records are taken one bucket at a time as the checkpoint writes
    /// them ([`Image::bucket_records`]), so they may include journal entries after `upto`:
    /// harmless, since those entries stay in the journal and replay applies them again in order
    /// over the bucket, ending at the same latest records. Taking every dirty bucket's records
    /// up front held a pointer for every task (160 MB at ten million) for the whole checkpoint.
    pub buckets: Vec<usize>,
    /// Every worker's encoding.
    pub workers: Vec<Bytes>,
    /// Every set queue's encoding.
    pub queues: Vec<Bytes>,
    /// Journal bytes this checkpoint makes redundant.
    pub journal_bytes: u64,
}

/// What the store holds, as encoded records: the buckets' current contents (not only what was
/// checkpointed), which buckets changed since the last checkpoint, and how much journal there is.
#[derive(Debug)]
pub(crate) struct Image {
    /// Each bucket's records, found by the id inside them ([`id_bytes`]): a table of records
    /// rather than a map from id to record saves 16 bytes a task, 160 MB at ten million.
    buckets: Vec<hashbrown::HashTable<Record>>,
    /// Each bucket's assignments journalled after their task's record there, oldest first:
    /// folded into the record when a checkpoint writes the bucket or a start builds the tables
    /// ([`Image::resolve`]), or dropped when a whole record replaces it, as one usually does
    /// (the attempt's end) before either.
    assigned: Vec<rustc_hash::FxHashMap<TaskId, Vec<Bytes>>>,
    dirty: Vec<bool>,
    workers: BTreeMap<u64, Bytes>,
    queues: BTreeMap<QueueKey, Bytes>,
    table_bytes: u64,
    journal_bytes: u64,
    /// The last journal entry applied.
    last_seq: i64,
    /// The last journal entry the stored buckets include (the journal in the store begins
    /// after it, but for late entries below it).
    checkpoint_upto: i64,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            buckets: (0..BUCKETS).map(|_| hashbrown::HashTable::new()).collect(),
            assigned: (0..BUCKETS).map(|_| Default::default()).collect(),
            dirty: vec![false; BUCKETS],
            workers: BTreeMap::new(),
            queues: BTreeMap::new(),
            table_bytes: 0,
            journal_bytes: 0,
            last_seq: 0,
            checkpoint_upto: 0,
        }
    }
}

impl Image {
    /// Puts the record of task `id`, which must be the id inside it (records made here, or
    /// whose id `task_id_of` read).
    fn put_task(&mut self, id: TaskId, bytes: Record) {
        debug_assert_eq!(id_bytes(&bytes), id.0.as_bytes());
        let b = bucket_of(id);
        if !self.assigned[b].is_empty() {
            self.assigned[b].remove(&id);
        }
        self.table_bytes += bytes.len() as u64;
        let key = id.0.as_bytes();
        match self.buckets[b].entry(
            id_hash(key),
            |r| id_bytes(r) == key,
            |r| id_hash(id_bytes(r)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                self.table_bytes -= e.get().len() as u64;
                *e.get_mut() = bytes;
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(bytes);
            }
        }
        self.dirty[b] = true;
    }

    fn remove_task(&mut self, id: TaskId) {
        let b = bucket_of(id);
        if !self.assigned[b].is_empty() {
            self.assigned[b].remove(&id);
        }
        let key = id.0.as_bytes();
        if let Ok(e) = self.buckets[b].find_entry(id_hash(key), |r| id_bytes(r) == key) {
            let (old, _) = e.remove();
            self.table_bytes -= old.len() as u64;
            self.dirty[b] = true;
        }
    }

    /// Every task's record.
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// Folds in a batch that is now committed to the journal as entry `seq`.
    pub fn apply(&mut self, seq: i64, entry: Entry, body_len: usize) {
        // Never a task of the same entry's records or removals; were one, those would be the
        // later state, so they go after.
        for (id, bytes) in entry.assignments {
            let b = bucket_of(id);
            self.assigned[b].entry(id).or_default().push(bytes);
            self.dirty[b] = true;
        }
        for (id, bytes) in entry.tasks {
            self.put_task(id, bytes);
        }
        for id in entry.removed {
            self.remove_task(id);
        }
        for (id, bytes) in entry.workers {
            self.workers.insert(id, bytes);
        }
        for id in entry.removed_workers {
            self.workers.remove(&id);
        }
        self.queues.extend(entry.queues);
        self.journal_bytes += body_len as u64;
        self.last_seq = self.last_seq.max(seq);
    }

    /// Whether the journal has grown enough to be folded into the buckets: when it is at least
    /// as large as the tables (so a checkpoint at most doubles what is written) and at least
    /// `min_bytes` (so small tables are not rewritten all the time).
    pub fn wants_checkpoint(&self, min_bytes: u64) -> bool {
        self.journal_bytes > 0 && self.journal_bytes >= min_bytes.max(self.table_bytes)
    }

    /// Takes the dirty buckets for a checkpoint and marks them clean.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut buckets = Vec::new();
        for (b, dirty) in self.dirty.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                buckets.push(b);
            }
        }
        Snapshot {
            upto: self.last_seq,
            after: self.checkpoint_upto,
            buckets,
            workers: self.workers.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            journal_bytes: self.journal_bytes,
        }
    }

    /// A bucket's records as they are now, its assignments folded in, for a checkpoint to frame
    /// off the lock. Every one of them is durable: the image applies a journal entry only once
    /// it is written.
    pub fn bucket_records(&mut self, b: usize) -> Result<Vec<Record>, StoreError> {
        self.resolve(b)?;
        Ok(self.buckets[b].iter().cloned().collect())
    }

    /// Folds bucket `b`'s assignments into their tasks' records. An assignment is made only
    /// of a task the image has a record of, and a removal drops it, so one without a record is
    /// a damaged journal: refused, as any unreadable record, and kept.
    fn resolve(&mut self, b: usize) -> Result<(), StoreError> {
        if self.assigned[b].is_empty() {
            return Ok(());
        }
        // Folding changes no stored content, only its form: the bucket stays as dirty as it was.
        let dirty = self.dirty[b];
        let ids: Vec<TaskId> = self.assigned[b].keys().copied().collect();
        for id in ids {
            let at = format!("assignment of task {id}");
            let corrupt = |reason: String| StoreError::Corrupt {
                table: "journal",
                id: at.clone(),
                reason,
            };
            let key = id.0.as_bytes();
            let base = self.buckets[b]
                .find(id_hash(key), |r| id_bytes(r) == key)
                .ok_or_else(|| corrupt("no record of its task".into()))?;
            let mut info = decode_task("journal", &at, base)?;
            for bytes in &self.assigned[b][&id] {
                let a: Assignment = decode("journal", &at, bytes)?;
                a.apply(&mut info).map_err(corrupt)?;
            }
            self.put_task(id, encode_task(&info));
        }
        self.dirty[b] = dirty;
        Ok(())
    }

    /// A checkpoint is in the store: its journal bytes no longer count.
    pub fn checkpointed(&mut self, snap: &Snapshot) {
        self.journal_bytes -= snap.journal_bytes.min(self.journal_bytes);
        self.checkpoint_upto = self.checkpoint_upto.max(snap.upto);
    }

    /// A checkpoint failed: its buckets are dirty again, to be written by the next one.
    pub fn checkpoint_failed(&mut self, snap: &Snapshot) {
        for &b in &snap.buckets {
            self.dirty[b] = true;
        }
    }

    /// Marks every bucket dirty, so that the next checkpoint writes the whole table (after a
    /// migration from an older layout).
    pub fn all_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = true);
    }

    /// The last journal entry applied.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Encoded bytes of every task (for the checkpoint rule and the logs).
    pub fn table_bytes(&self) -> u64 {
        self.table_bytes
    }
}

/// What the store holds at start, as read from it.
#[derive(Default)]
pub(crate) struct Stored {
    /// Task records of the layout before journals (one record per task), if any are left.
    pub legacy_tasks: Vec<Bytes>,
    /// Worker records of that layout.
    pub legacy_workers: Vec<Bytes>,
    /// Bucket bodies, for the tests' stores: a start reads them apart, a few at a time, into the
    /// image it replays onto ([`load_bucket`], [`replay_onto`]).
    #[cfg(test)]
    pub buckets: Vec<Bytes>,
    /// The checkpointed workers' body.
    pub workers: Option<Bytes>,
    /// The checkpointed queues' body.
    pub queues: Option<Bytes>,
    /// The last journal entry the buckets include.
    pub upto: i64,
    /// Journal entries, in any order.
    pub journal: Vec<(i64, Bytes)>,
}

/// The tables as the store holds them, with the image to keep writing from.
pub(crate) struct Replayed {
    /// Every task's latest record (decoded when the tables are built, one at a time, so that a
    /// start never holds every task decoded at once). The image holds the same allocations.
    pub tasks: Vec<Record>,
    /// Every worker.
    pub workers: Vec<WorkerInfo>,
    /// Every queue whose settings were set.
    pub queues: Vec<QueueSettings>,
    /// The image of what is stored.
    pub image: Image,
    /// Journal entries at or below the checkpoint that were skipped (written late by a write
    /// that had timed out): the next checkpoint deletes them.
    pub stale_entries: usize,
}

/// Rebuilds the tables from a whole stored image: the buckets, then the rest as a start does.
#[cfg(test)]
pub(crate) fn replay(mut stored: Stored) -> Result<Replayed, StoreError> {
    let mut image = Image::default();
    for (i, body) in std::mem::take(&mut stored.buckets).iter().enumerate() {
        load_bucket(&mut image, i, body)?;
    }
    replay_onto(image, stored)
}

/// The items of a framed body read from the store (record `id` of `table`); a body that does
/// not unframe is a corrupt record, named.
fn unframe_stored(body: &Bytes, table: &'static str, id: &str) -> Result<Vec<Bytes>, StoreError> {
    unframe(body).map_err(|reason| StoreError::Corrupt {
        table,
        id: id.into(),
        reason,
    })
}

/// Puts the tasks of bucket body `body` (the `i`th read) into `image`: how a start reads the
/// buckets a few at a time, before the rest of the replay ([`replay_onto`]), instead of holding
/// every bucket body and the image at once.
pub(crate) fn load_bucket(image: &mut Image, i: usize, body: &Bytes) -> Result<(), StoreError> {
    let at = format!("#{i}");
    for b in unframe_stored(body, "bucket", &at)? {
        image.put_task(task_id_of("bucket", &at, &b)?, Record::from(&b[..]));
    }
    Ok(())
}

/// Rebuilds the tables onto an image that already holds the buckets, read apart
/// ([`load_bucket`]): legacy records, then every journal entry after the checkpoint in sequence
/// order. Legacy records go in after the buckets: the two are only found together after a
/// migration to buckets was cut short, and then hold the same tasks.
pub(crate) fn replay_onto(mut image: Image, stored: Stored) -> Result<Replayed, StoreError> {
    let mut workers: BTreeMap<u64, WorkerInfo> = BTreeMap::new();
    let mut queues: BTreeMap<QueueKey, QueueSettings> = BTreeMap::new();
    let mut journal = stored.journal;
    journal.sort_by_key(|(seq, _)| *seq);
    let stale_entries = journal
        .iter()
        .filter(|(seq, _)| *seq <= stored.upto)
        .count();
    journal.retain(|(seq, _)| *seq > stored.upto);
    for (i, b) in stored.legacy_tasks.iter().enumerate() {
        let id = task_id_of("task", &format!("#{i}"), b)?;
        image.put_task(id, Record::from(&b[..]));
    }
    for (i, b) in stored.legacy_workers.iter().enumerate() {
        let w: WorkerInfo = decode("worker", &format!("#{i}"), b)?;
        image.workers.insert(w.id.0, b.clone());
        workers.insert(w.id.0, w);
    }
    if let Some(body) = &stored.workers {
        for b in unframe_stored(body, "meta", "workers")? {
            let w: WorkerInfo = decode("meta", "workers", &b)?;
            image.workers.insert(w.id.0, b);
            workers.insert(w.id.0, w);
        }
    }
    if let Some(body) = &stored.queues {
        for b in unframe_stored(body, "meta", "queues")? {
            let q: QueueSettings = decode("meta", "queues", &b)?;
            let key = (q.namespace.clone(), q.name.clone());
            image.queues.insert(key.clone(), b);
            queues.insert(key, q);
        }
    }
    // What was loaded so far is what the store's buckets hold: nothing is dirty yet.
    image.dirty.iter_mut().for_each(|d| *d = false);
    image.last_seq = stored.upto;
    image.checkpoint_upto = stored.upto;

    for (seq, body) in journal {
        let (ts, removed, ws, removed_ws, qs, assignments) = Entry::from_body(seq, &body)?;
        let mut entry = Entry {
            tasks: ts,
            assignments,
            removed,
            ..Entry::default()
        };
        for (w, bytes) in ws {
            entry.workers.push((w.id.0, bytes));
            workers.insert(w.id.0, w);
        }
        for id in removed_ws {
            workers.remove(&id);
            entry.removed_workers.push(id);
        }
        for (q, bytes) in qs {
            let key = (q.namespace.clone(), q.name.clone());
            entry.queues.push((key.clone(), bytes));
            queues.insert(key, q);
        }
        image.apply(seq, entry, body.len());
    }
    // The image is the latest record of every task, once its assignments are folded in: the
    // tables are built from it.
    for b in 0..BUCKETS {
        image.resolve(b)?;
    }
    let tasks = image.records().cloned().collect();
    Ok(Replayed {
        tasks,
        workers: workers.into_values().collect(),
        queues: queues.into_values().collect(),
        image,
        stale_entries,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tatzelwurm_protocol::{Payload, TaskSpec, TaskState};

    /// A fresh ready noop task.
    pub(crate) fn task() -> TaskInfo {
        let spec = TaskSpec::new(Payload::Sleep { duration_ms: 0 });
        crate::task::Task::new(TaskId::new(), spec, "default".into(), 0, true).info
    }

    fn sorted(mut v: Vec<TaskInfo>) -> Vec<TaskInfo> {
        v.sort_by_key(|t| t.id);
        v
    }

    /// The tasks of a replay, decoded.
    fn decoded(r: &Replayed) -> Vec<TaskInfo> {
        sorted(r.tasks.iter().map(|b| decode_task_record(b)).collect())
    }

    #[test]
    fn a_task_id_is_read_from_a_record_of_any_layout_without_decoding_the_rest() {
        let t = task();
        let rec = encode_task(&t);
        assert_eq!(task_id_of("t", "", &rec).unwrap(), t.id);
        // Layout 3 and layout 2 records also begin with the id.
        let v3 = crate::store::legacy::tests::v3_record(&t);
        assert_eq!(task_id_of("t", "", &v3).unwrap(), t.id);
        let v2 = crate::store::legacy::tests::v2_record(&t);
        assert_eq!(task_id_of("t", "", &v2).unwrap(), t.id);
        assert!(matches!(
            task_id_of("journal", "journal:3", &rec[..5]),
            Err(StoreError::Corrupt {
                table: "journal",
                ..
            })
        ));
    }

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let items: Vec<&[u8]> = vec![b"", b"a", b"hello"];
        let f = frame(items.iter().copied());
        let back = unframe(&f).unwrap();
        assert_eq!(back.iter().map(|b| &b[..]).collect::<Vec<_>>(), items);
        assert_eq!(unframe(&frame(std::iter::empty())).unwrap().len(), 0);
        for cut in 0..f.len() {
            assert!(unframe(&f.slice(..cut)).is_err(), "cut at {cut} accepted");
        }
        let mut long = f.to_vec();
        long.push(0);
        assert!(unframe(&Bytes::from(long)).is_err(), "trailing bytes");
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
        assert!(unframe(&huge).is_err(), "a count that cannot fit");
    }

    #[test]
    fn a_large_entry_is_split_in_order_and_a_large_record_goes_alone() {
        let ts: Vec<TaskInfo> = (0..10).map(|_| task()).collect();
        let gone = TaskId::new();
        let whole = Entry::new(&ts, &[], &[gone], &[], &[], &[]);
        let one = whole.tasks[0].1.len();
        let parts = Entry::new(&ts, &[], &[gone], &[], &[], &[]).split(3 * one);
        assert_eq!(
            parts.iter().map(|p| p.tasks.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        assert_eq!(parts[0].removed, vec![gone], "removals go first");
        assert!(parts[1..].iter().all(|p| p.removed.is_empty()));
        let joined: Vec<_> = parts.into_iter().flat_map(|p| p.tasks).collect();
        assert_eq!(joined, whole.tasks, "every record once, in order");
        let alone = Entry::of_tasks(&ts).split(one / 2);
        assert_eq!(alone.len(), 10, "a record larger than the limit goes alone");
        assert_eq!(Entry::of_tasks(&ts).split(usize::MAX).len(), 1);
        assert_eq!(
            Entry::default().split(1).len(),
            1,
            "an empty batch is one record"
        );
    }

    #[test]
    fn an_entry_decodes_to_what_was_written() {
        let ts = vec![task(), task()];
        let gone = TaskId::new();
        let e = Entry::new(&ts, &[], &[gone], &[], &[], &[]);
        let (back, removed, workers, removed_workers, queues, assignments) =
            Entry::from_body(7, &e.to_body()).unwrap();
        let (back, bytes): (Vec<TaskId>, Vec<Record>) = back.into_iter().unzip();
        assert_eq!(back, ts.iter().map(|t| t.id).collect::<Vec<_>>());
        assert_eq!(
            bytes,
            ts.iter().map(encode_task).collect::<Vec<_>>(),
            "their encodings"
        );
        assert_eq!(removed, vec![gone]);
        assert!(workers.is_empty());
        assert!(removed_workers.is_empty());
        assert!(queues.is_empty());
        assert!(assignments.is_empty());
        let forgot =
            Entry::new::<TaskInfo>(&[], &[], &[], &[], &[WorkerId(3), WorkerId(u64::MAX)], &[]);
        let (.., removed_workers, _, _) = Entry::from_body(8, &forgot.to_body()).unwrap();
        assert_eq!(removed_workers, vec![3, u64::MAX]);
        // An entry from before workers could be forgotten: tasks, removed ids, workers.
        let parts = unframe(&e.to_body()).unwrap();
        let three = frame(parts[..3].iter().map(|b| &b[..]));
        let (back, removed, ..) = Entry::from_body(9, &three).unwrap();
        let back: Vec<TaskInfo> = back.iter().map(|(_, b)| decode_task_record(b)).collect();
        assert_eq!((back, removed), (ts.clone(), vec![gone]));
        let two = frame(parts[..2].iter().map(|b| &b[..]));
        assert!(Entry::from_body(9, &two).is_err(), "two parts is damage");
        let damaged = e.to_body().slice(..10);
        assert!(matches!(
            Entry::from_body(7, &damaged),
            Err(StoreError::Corrupt {
                table: "journal",
                ..
            })
        ));
    }

    /// A batch: tasks written whole, assignments, removals.
    type Batch = (Vec<TaskInfo>, Vec<Assignment>, Vec<TaskId>);

    /// Plays a sequence of batches into an image and a journal, checkpointing after `checkpoint_at`
    /// batches, and returns what a restart would find. The checkpoint reads its buckets only after
    /// `late` more batches were applied (or at the end), as a checkpoint that writes beside the
    /// journal does.
    fn run(batches: &[Batch], checkpoint_at: usize, late: usize) -> Replayed {
        let mut image = Image::default();
        let mut stored = Stored::default();
        let mut snap = None;
        for (i, (ts, assigned, removed)) in batches.iter().enumerate() {
            let seq = i as i64 + 1;
            let e = Entry::new(ts, assigned, removed, &[], &[], &[]);
            let body = e.to_body();
            stored.journal.push((seq, body.clone()));
            image.apply(seq, e, body.len());
            if seq as usize == checkpoint_at {
                snap = Some(image.snapshot());
            }
            if (seq as usize == checkpoint_at + late || seq as usize == batches.len())
                && let Some(snap) = snap.take()
            {
                write_checkpoint(&mut image, &mut stored, &snap);
            }
        }
        replay(stored).unwrap()
    }

    /// What `Store::write_checkpoint` does: the dirty buckets as they are now, then the mark and
    /// the journal up to it dropped.
    fn write_checkpoint(image: &mut Image, stored: &mut Stored, snap: &Snapshot) {
        for &b in &snap.buckets {
            let items = image.bucket_records(b).unwrap();
            let body = frame(items.iter().map(|b| &b[..]));
            stored.buckets.retain(|old| {
                unframe(old).unwrap().first().is_none_or(|first| {
                    let t = decode_task("bucket", "", first).unwrap();
                    bucket_of(t.id) != b
                })
            });
            if !items.is_empty() {
                stored.buckets.push(body);
            }
        }
        stored.upto = snap.upto;
        stored.journal.retain(|(s, _)| *s > snap.upto);
        image.checkpointed(snap);
    }

    #[test]
    fn replay_gives_the_latest_record_of_every_task_with_or_without_checkpoints() {
        let mut a = task();
        let b = task();
        let c = task();
        let batches = {
            let mut v = vec![(vec![a.clone(), b.clone()], vec![], vec![])];
            a.state = TaskState::Running;
            v.push((vec![a.clone(), c.clone()], vec![], vec![]));
            v.push((vec![], vec![], vec![b.id]));
            a.state = TaskState::Completed;
            v.push((vec![a.clone()], vec![], vec![]));
            v
        };
        every_checkpoint_replays_to(&batches, sorted(vec![a, c]));
    }

    /// Checks that a restart finds `want` whenever a checkpoint was taken: its buckets read right
    /// away, or after later batches changed and removed tasks in them (records newer than its
    /// mark, replayed again over them).
    fn every_checkpoint_replays_to(batches: &[Batch], want: Vec<TaskInfo>) {
        for checkpoint_at in 0..=batches.len() {
            for late in 0..=batches.len() - checkpoint_at {
                let r = run(batches, checkpoint_at, late);
                let at = format!("checkpoint after {checkpoint_at}, buckets read {late} later");
                assert_eq!(decoded(&r), want, "{at}");
                assert_eq!(r.image.last_seq(), batches.len() as i64, "{at}");
            }
        }
    }

    #[test]
    fn assignments_replay_onto_the_record_before_them_whatever_a_checkpoint_took() {
        use crate::task::Task;
        let new = || Task::new(TaskId::new(), task().spec, "default".into(), 0, true);
        // a: assigned, then ends; b: assigned and still held; c: assigned, then removed; d: its
        // first attempt is lost, its second still held.
        let (mut a, mut b, c, mut d) = (new(), new(), new(), new());
        let w = WorkerId(4);
        let batches = vec![
            (
                vec![
                    a.info.clone(),
                    b.info.clone(),
                    c.info.clone(),
                    d.info.clone(),
                ],
                vec![],
                vec![],
            ),
            (
                vec![],
                vec![
                    a.assign(w, "w", 10),
                    b.assign(w, "w", 11),
                    new_assigned(&c, w),
                ],
                vec![],
            ),
            (vec![], vec![d.assign(w, "w", 12)], vec![c.id()]),
            {
                a.info.state = TaskState::Completed;
                a.info.worker = None;
                d.lose("lost", false, 13);
                (vec![a.info.clone(), d.info.clone()], vec![], vec![])
            },
            (vec![], vec![d.assign(WorkerId(5), "v", 14)], vec![]),
        ];
        assert_eq!(d.info.attempts.len(), 2);
        assert_eq!(b.state(), TaskState::Assigned);
        let want = sorted(vec![a.info, b.info, d.info]);
        every_checkpoint_replays_to(&batches, want);
    }

    /// An assignment of a copy of `t` (its record stays ready).
    fn new_assigned(t: &crate::task::Task, w: WorkerId) -> Assignment {
        t.clone().assign(w, "w", 10)
    }

    #[test]
    fn an_assignment_without_its_task_is_refused_as_damage() {
        let mut t = crate::task::Task::new(TaskId::new(), task().spec, "default".into(), 0, true);
        let e = Entry::new::<TaskInfo>(&[], &[t.assign(WorkerId(1), "w", 5)], &[], &[], &[], &[]);
        let r = replay(Stored {
            journal: vec![(1, e.to_body())],
            ..Stored::default()
        });
        assert!(
            matches!(r, Err(StoreError::Corrupt { ref reason, .. }) if reason.contains("no record")),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn journal_entries_at_or_below_the_checkpoint_are_skipped() {
        let mut t = task();
        let old = Entry::of_tasks(std::slice::from_ref(&t)).to_body();
        t.state = TaskState::Completed;
        let bucket = frame([&encode_task(&t)[..]].into_iter());
        let r = replay(Stored {
            buckets: vec![bucket],
            upto: 5,
            // A write that timed out and landed after the checkpoint that covered its number.
            journal: vec![(3, old)],
            ..Stored::default()
        })
        .unwrap();
        assert_eq!(decoded(&r), vec![t]);
        assert_eq!(r.stale_entries, 1);
    }

    #[test]
    fn checkpoints_are_due_when_the_journal_outgrows_the_tables() {
        let mut image = Image::default();
        assert!(!image.wants_checkpoint(0), "no journal, nothing to do");
        let e = Entry::of_tasks(&[task()]);
        let len = e.to_body().len();
        image.apply(1, e, len);
        assert!(image.wants_checkpoint(0));
        assert!(!image.wants_checkpoint(1 << 20), "below the minimum");
        let snap = image.snapshot();
        assert_eq!(snap.buckets.len(), 1, "only the touched bucket");
        image.checkpoint_failed(&snap);
        assert_eq!(
            image.snapshot().buckets.len(),
            1,
            "dirty again after a failure"
        );
        image.checkpointed(&snap);
        assert!(!image.wants_checkpoint(0));
    }
}
