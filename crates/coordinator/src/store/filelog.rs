//! The journal of a surrealkv store, in files of its own inside the store's directory.
//!
//! A commit is what a worker's next task and a client's acknowledgement wait for, so its cost
//! is the coordinator's cost per batch. Through surrealkv a journal record went through its
//! write-ahead log, its memtable, its value log, a sorted table at the next flush and a
//! compaction after the checkpoint deleted it, and every commit woke surrealkv's sync thread:
//! a durable noop run was a fifth to a third slower than `mem://` (BENCHMARKS.md, "The journal
//! in files of its own"). Here a record is written in place (its head, then its body) and synced
//! with one `fdatasync`. The checkpoints still go to SurrealDB; this journal only holds what came
//! after the last one.
//!
//! Layout: `<store>/tatzelwurm-journal/<namespace>.<database>/` (each name in hex, so any name
//! is a valid file name), holding segments named by the sequence number of their first record,
//! 20 decimal digits and `.journal`. A segment is a run of records, each
//!
//! ```text
//! u32 LE  payload length n
//! u32 LE  CRC-32 (IEEE) of the payload
//! payload: u64 LE sequence number, u32 LE counters length c (0: none),
//!          c bytes of counters, then the body (the rest)
//! ```
//!
//! A segment is filled with zeros a mebibyte ahead of its small records, so that a record's sync
//! is an `fdatasync` that need not write the file's size as well (one disk write fewer, a third
//! less CPU and latency per commit here); a record of 64 KiB or more grows the file itself. A
//! reader takes zeros where a record would begin for the end.
//!
//! A write that failed or was cut short (a crash, a full disk) leaves a torn record at the end
//! of its segment, and nothing is ever written after it there: a failed write closes the
//! segment, and the next write (the same batch again, under a new sequence number) starts a new
//! one, as every start does. A reader stops at the first record that does not check out, warns,
//! and goes on with the next segment. A segment is deleted once a checkpoint covers every
//! record in it, which is known from the next segment's name; the newest is never deleted, and a
//! checkpoint makes the next write start a new one so that the old one can go at the following
//! checkpoint.
//!
//! The store's `sync` mode (`--sync`) applies here as it does to surrealkv's log: every record
//! synced before it counts as written (the default), or written to the operating system at once
//! and synced by a thread of the journal's own at an interval, or never synced by the
//! coordinator.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, warn};

use super::StoreError;

/// A segment takes no more records once it is this large: segments are deleted whole, so this
/// bounds what a checkpoint leaves behind.
const SEGMENT_BYTES: u64 = 64 << 20;

/// How far ahead of its records a segment is filled with zeros.
const PREFILL: u64 = 1 << 20;

/// A record at least this large is not prefilled for: it grows the file itself, and the size
/// its sync then writes is shared by the many tasks such a record holds (writing zeros first
/// would double what a busy coordinator writes).
const GROWS_ITSELF: u64 = 64 * 1024;

/// What the prefill writes, a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Bytes before a record's payload: its length and checksum.
const HEADER: usize = 8;

/// Bytes of a payload before its counters: the sequence number and the counters' length.
const PAYLOAD_HEAD: usize = 12;

/// When records reach the disk: the store URL's `sync` parameter, which surrealkv reads for its
/// own log too. `--sync` writes it into the URL ([`SyncMode::applied_to`]) and the store reads it
/// back ([`SyncMode::of_url`]), so that the flag and a URL written by hand mean the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Each record before its write returns.
    Every,
    /// Each record goes to the operating system at once; a thread syncs this often.
    Interval(Duration),
    /// The operating system decides.
    Never,
}

impl SyncMode {
    /// Reads a mode as `--sync` and a store URL's `sync` parameter write it: `every`, `never`,
    /// or an interval longer than 100 ms (`200ms`, `2s`).
    pub fn parse(s: &str) -> Result<SyncMode, String> {
        match s {
            "every" => Ok(SyncMode::Every),
            "never" => Ok(SyncMode::Never),
            _ => match tatzelwurm_protocol::cli::parse_duration(s) {
                // surrealkv ignores an interval of 100 ms or less, and would sync every commit.
                Ok(d) if d > Duration::from_millis(100) => Ok(SyncMode::Interval(d)),
                Ok(_) => Err("an interval must be longer than 100ms".into()),
                Err(e) => Err(format!("{e} (or `every`, `never`)")),
            },
        }
    }

    /// The mode a store URL asks for: `every` unless its `sync` parameter says otherwise. A
    /// value that is none of the modes is an error, not the default: a URL written by hand
    /// with a typo must not quietly sync differently from what its writer meant.
    pub fn of_url(url: &str) -> Result<SyncMode, String> {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        match query.split('&').find_map(|kv| kv.strip_prefix("sync=")) {
            None => Ok(SyncMode::Every),
            Some(value) => SyncMode::parse(value).map_err(|e| format!("sync={value}: {e}")),
        }
    }

    /// The store URL with this mode in it; the default, `every`, leaves the URL as it is.
    pub fn applied_to(self, url: String) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        match self {
            SyncMode::Every => url,
            SyncMode::Never => format!("{url}{sep}sync=never"),
            SyncMode::Interval(d) => format!("{url}{sep}sync={}ms", d.as_millis()),
        }
    }
}

/// Where one database's journal files are, and the segment being written.
#[derive(Clone, Debug)]
pub(super) struct FileLog {
    dir: Arc<PathBuf>,
    active: Arc<Mutex<Active>>,
    sync: SyncMode,
}

/// The segment new records go to.
#[derive(Debug, Default)]
struct Active {
    /// Open for writing at `bytes`; `None` before the first write, after a failed one, and after a
    /// checkpoint (the next write starts a new segment).
    file: Option<File>,
    /// Bytes of records in it: where the next one goes.
    bytes: u64,
    /// Bytes filled with zeros (or records) from its start.
    filled: u64,
    /// Records written to it and not yet synced (with an interval, or never).
    unsynced: bool,
    /// The interval's syncing thread runs.
    syncing: bool,
}

impl Active {
    /// Fills the segment with zeros past where a record of `len` bytes will end, when it is not
    /// yet: the size changes here, once a mebibyte, rather than with every record.
    fn prefill(&mut self, len: u64) -> io::Result<()> {
        let end = self.bytes + len;
        if end <= self.filled {
            return Ok(());
        }
        if len >= GROWS_ITSELF {
            self.filled = end;
            return Ok(());
        }
        let file = self.file.as_ref().expect("an open segment");
        let target = end + PREFILL;
        let mut at = self.filled.max(self.bytes);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.filled = target;
        Ok(())
    }

    /// Takes no more records into this segment: the next write starts a new one. What an
    /// interval left unsynced is synced first (and stays to the system if that fails).
    fn close(&mut self) -> io::Result<()> {
        let file = self.file.take();
        if std::mem::take(&mut self.unsynced)
            && let Some(file) = file
        {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// What the journal files of one database hold, read at start.
#[derive(Debug, Default)]
pub(super) struct Read {
    /// Every readable record, by sequence number, in order.
    pub journal: Vec<(i64, Bytes)>,
    /// The counters of the newest record that carried them, with its sequence number.
    pub counters: Option<(i64, Bytes)>,
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn segment_name(first_seq: i64) -> String {
    format!("{:020}.journal", first_seq.max(0))
}

/// The segments in `dir` by first sequence number, in order (none when it does not exist).
fn segments(dir: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Makes the directory's entries (a new segment, deleted ones) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One record's bytes before its body (header, sequence number, counters): the body is
/// written after them as it is, not copied into one buffer with them (a record is up to 4 MiB).
fn record_head(seq: i64, body: &[u8], counters: Option<&[u8]>) -> Vec<u8> {
    let counters = counters.unwrap_or_default();
    let n = PAYLOAD_HEAD + counters.len() + body.len();
    let mut out = Vec::with_capacity(HEADER + PAYLOAD_HEAD + counters.len());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(seq as u64).to_le_bytes());
    out.extend_from_slice(&(counters.len() as u32).to_le_bytes());
    out.extend_from_slice(counters);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[HEADER..]);
    crc.update(body);
    out[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    out
}

/// The records of one segment's bytes, up to the first that does not check out; and whether
/// one did not (a torn end).
fn parse(data: &Bytes) -> (Vec<(i64, Option<Bytes>, Bytes)>, bool) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < data.len() {
        if data[at..].iter().all(|b| *b == 0) {
            // The prefill after the last record.
            return (records, false);
        }
        let Some(head) = data.get(at..at + HEADER) else {
            return (records, true);
        };
        let n = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let start = at + HEADER;
        let Some(payload) = data.get(start..start.saturating_add(n)) else {
            return (records, true);
        };
        if n < PAYLOAD_HEAD || crc32fast::hash(payload) != crc {
            return (records, true);
        }
        let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")) as i64;
        let c = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
        if c > n - PAYLOAD_HEAD {
            return (records, true);
        }
        let counters = (c > 0).then(|| data.slice(start + PAYLOAD_HEAD..start + PAYLOAD_HEAD + c));
        let body = data.slice(start + PAYLOAD_HEAD + c..start + n);
        records.push((seq, counters, body));
        at = start + n;
    }
    (records, false)
}

fn io_error(dir: &Path, e: io::Error) -> StoreError {
    StoreError::Journal {
        path: dir.display().to_string(),
        source: e,
    }
}

/// Runs `f` on a thread of the blocking pool: file writes and syncs must not hold up the
/// runtime's thread, which serves every connection.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| io_error(dir, e)),
        Err(e) => Err(io_error(dir, io::Error::other(e.to_string()))),
    }
}

impl FileLog {
    /// The journal of database `db` in namespace `ns` of the surrealkv store in `store_dir`.
    /// Nothing is created until the first write.
    pub(super) fn new(store_dir: &Path, ns: &str, db: &str, sync: SyncMode) -> FileLog {
        let dir = store_dir
            .join("tatzelwurm-journal")
            .join(format!("{}.{}", hex(ns), hex(db)));
        FileLog {
            dir: Arc::new(dir),
            active: Arc::default(),
            sync,
        }
    }

    /// With an interval, starts the thread that syncs what was written (once; it ends when the
    /// journal is dropped).
    fn start_syncing(&self, active: &mut Active) {
        let SyncMode::Interval(every) = self.sync else {
            return;
        };
        if active.syncing {
            return;
        }
        let weak: Weak<Mutex<Active>> = Arc::downgrade(&self.active);
        let dir = self.dir.clone();
        let started = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(active) = weak.upgrade() else { return };
                    let mut active = active.lock().unwrap_or_else(|e| e.into_inner());
                    if !active.unsynced {
                        continue;
                    }
                    let synced = active.file.as_ref().map(File::sync_data);
                    if let Some(Err(e)) = synced {
                        warn!(dir = %dir.display(), error = %e, "journal sync failed; the next write starts a new segment");
                        active.file = None;
                    }
                    active.unsynced = false;
                }
            });
        match started {
            Ok(_) => active.syncing = true,
            Err(e) => warn!(error = %e, "no thread to sync the journal; syncing every record"),
        }
    }

    /// Where the segments are.
    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends record `seq`, with the counters when they moved. Durable when it returns `Ok`.
    pub(super) async fn append(
        &self,
        seq: i64,
        body: Bytes,
        counters: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let log = self.clone();
        blocking(&self.dir, move || {
            log.append_now(seq, &body, counters.as_deref())
        })
        .await
    }

    fn append_now(&self, seq: i64, body: &[u8], counters: Option<&[u8]>) -> io::Result<()> {
        let head = record_head(seq, body, counters);
        let len = (head.len() + body.len()) as u64;
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.bytes >= SEGMENT_BYTES {
            active.close()?;
        }
        if active.file.is_none() {
            std::fs::create_dir_all(&*self.dir)?;
            // A segment named at or after this record can hold no readable record (one would
            // have moved the sequence numbers past it): what a failed write left before a
            // restart. It goes, or its name would claim that the segment before it ends there,
            // and a checkpoint would delete that one too soon.
            for (first, stale) in segments(&self.dir)? {
                if first >= seq {
                    std::fs::remove_file(stale)?;
                }
            }
            let path = self.dir.join(segment_name(seq));
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?;
            active.filled = 0;
            sync_dir(&self.dir)?;
            debug!(segment = %path.display(), "journal segment started");
            active.file = Some(file);
            active.bytes = 0;
            active.unsynced = false;
            self.start_syncing(&mut active);
        }
        // With an interval whose thread could not start, every record is synced.
        let sync_now =
            self.sync == SyncMode::Every || (!active.syncing && self.sync != SyncMode::Never);
        let written = active.prefill(len).and_then(|()| {
            let file = active.file.as_ref().expect("opened above");
            file.write_all_at(&head, active.bytes)?;
            file.write_all_at(body, active.bytes + head.len() as u64)?;
            if sync_now { file.sync_data() } else { Ok(()) }
        });
        match written {
            Ok(()) => {
                active.bytes += len;
                active.unsynced = !sync_now;
                Ok(())
            }
            Err(e) => {
                // What reached the file may end in a torn record; nothing goes after it. What
                // came before it is synced if it can be.
                let _ = active.close();
                Err(e)
            }
        }
    }

    /// Every readable record and the newest counters.
    pub(super) async fn read(&self) -> Result<Read, StoreError> {
        let dir = self.dir.clone();
        blocking(&self.dir, move || read_dir(&dir)).await
    }

    /// Deletes the segments whose every record is at or below `upto` (a checkpoint holds them
    /// now), and makes the next write start a new segment, so that this one can go next time.
    pub(super) async fn drop_upto(&self, upto: i64) -> Result<(), StoreError> {
        let log = self.clone();
        blocking(&self.dir, move || {
            let dir = &*log.dir;
            log.active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .close()?;
            let found = segments(dir)?;
            let mut deleted = 0;
            for pair in found.windows(2) {
                // Every record of a segment comes before the next segment's first.
                if pair[1].0 <= upto.saturating_add(1) {
                    std::fs::remove_file(&pair[0].1)?;
                    deleted += 1;
                }
            }
            if deleted > 0 {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }
}

fn read_dir(dir: &Path) -> io::Result<Read> {
    let mut read = Read::default();
    for (_, path) in segments(dir)? {
        let data = Bytes::from(std::fs::read(&path)?);
        let (records, torn) = parse(&data);
        if torn {
            warn!(segment = %path.display(), records = records.len(), "a journal segment ends in a torn record (a crash or a failed write cut it short; it was never acknowledged); reading on from the next segment");
        }
        for (seq, counters, body) in records {
            if let Some(c) = counters
                && read.counters.as_ref().is_none_or(|(s, _)| *s < seq)
            {
                read.counters = Some((seq, c));
            }
            read.journal.push((seq, body));
        }
    }
    read.journal.sort_by_key(|(seq, _)| *seq);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(read: &Read) -> Vec<(i64, &[u8])> {
        read.journal.iter().map(|(s, b)| (*s, &b[..])).collect()
    }

    #[tokio::test]
    async fn records_come_back_in_order_with_the_newest_counters() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "ns", "db", SyncMode::Every);
        assert!(log.read().await.unwrap().journal.is_empty(), "no files yet");
        log.append(
            1,
            Bytes::from_static(b"one"),
            Some(Bytes::from_static(b"c1")),
        )
        .await
        .unwrap();
        log.append(2, Bytes::from_static(b"two"), None)
            .await
            .unwrap();
        log.append(3, Bytes::new(), Some(Bytes::from_static(b"c3")))
            .await
            .unwrap();
        log.append(4, Bytes::from_static(b"four"), None)
            .await
            .unwrap();
        let read = FileLog::new(dir.path(), "ns", "db", SyncMode::Every)
            .read()
            .await
            .unwrap();
        assert_eq!(
            bodies(&read),
            vec![(1, &b"one"[..]), (2, b"two"), (3, b""), (4, b"four")]
        );
        assert_eq!(read.counters, Some((3, Bytes::from_static(b"c3"))));
        // Another database of the same store has a journal of its own.
        let other = FileLog::new(dir.path(), "ns", "db2", SyncMode::Every);
        assert!(other.read().await.unwrap().journal.is_empty());
    }

    #[tokio::test]
    async fn a_torn_end_is_skipped_and_the_next_segment_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        for seq in 1..=3 {
            log.append(seq, Bytes::from(vec![seq as u8; 100]), None)
                .await
                .unwrap();
        }
        // The segment is filled with zeros ahead of its records, and reads as ending cleanly.
        let first = log.dir().join(segment_name(1));
        let data = Bytes::from(std::fs::read(&first).unwrap());
        assert!(data.len() as u64 > PREFILL);
        let (records, torn) = parse(&data);
        assert_eq!((records.len(), torn), (3, false));
        // A crash in the middle of record 3's write (120 bytes a record): its last 30 bytes
        // never reached the disk.
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        f.write_all_at(&[0; 30], 3 * 120 - 30).unwrap();
        assert!(
            parse(&Bytes::from(std::fs::read(&first).unwrap())).1,
            "torn"
        );
        // The next start writes a new segment (record 3 again, as the next sequence number).
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(4, Bytes::from(vec![3; 100]), None)
            .await
            .unwrap();
        let read = log.read().await.unwrap();
        let seqs: Vec<i64> = read.journal.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 4]);

        // A flipped bit fails the checksum: the record and what follows it in its segment
        // are not taken.
        let second = log.dir().join(segment_name(4));
        let mut bytes = std::fs::read(&second).unwrap();
        bytes[HEADER + PAYLOAD_HEAD + 5] ^= 1;
        std::fs::write(&second, bytes).unwrap();
        let read = log.read().await.unwrap();
        let seqs: Vec<i64> = read.journal.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_failed_write_closes_its_segment_and_the_next_starts_another() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(1, Bytes::from_static(b"a"), None).await.unwrap();
        // The segment's file turns unwritable (as a disk error would make it).
        let path = log.dir().join(segment_name(1));
        log.active.lock().unwrap().file = Some(File::open(&path).unwrap());
        let err = log.append(2, Bytes::from_static(b"b"), None).await;
        assert!(
            matches!(&err, Err(StoreError::Journal { path, .. }) if path.contains("tatzelwurm-journal")),
            "{err:?}"
        );
        log.append(3, Bytes::from_static(b"b"), None).await.unwrap();
        assert!(log.dir().join(segment_name(3)).exists(), "a new segment");
        let read = log.read().await.unwrap();
        assert_eq!(bodies(&read), vec![(1, &b"a"[..]), (3, b"b")]);
    }

    #[tokio::test]
    async fn a_checkpoint_deletes_the_segments_it_covers_and_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(1, Bytes::from_static(b"1"), None).await.unwrap();
        log.append(2, Bytes::from_static(b"2"), None).await.unwrap();
        // A checkpoint up to 2: the only segment is the newest, so it stays, but the next
        // write starts another.
        log.drop_upto(2).await.unwrap();
        log.append(3, Bytes::from_static(b"3"), None).await.unwrap();
        log.append(4, Bytes::from_static(b"4"), None).await.unwrap();
        let names = |log: &FileLog| -> Vec<i64> {
            segments(log.dir())
                .unwrap()
                .iter()
                .map(|(s, _)| *s)
                .collect()
        };
        assert_eq!(names(&log), vec![1, 3]);
        // Up to 3 covers the first segment (1, 2) but not the second (3, 4).
        log.drop_upto(3).await.unwrap();
        assert_eq!(names(&log), vec![3]);
        log.append(5, Bytes::from_static(b"5"), None).await.unwrap();
        let read = log.read().await.unwrap();
        assert_eq!(bodies(&read), vec![(3, &b"3"[..]), (4, b"4"), (5, b"5")]);
        log.drop_upto(5).await.unwrap();
        assert_eq!(names(&log), vec![5], "the newest stays");
    }

    #[tokio::test]
    async fn what_a_failed_write_left_before_a_restart_cannot_end_a_segment_early() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(1, Bytes::from_static(b"1"), None).await.unwrap();
        // Record 2 failed in a segment of its own before a crash: a file of zeros.
        std::fs::write(log.dir().join(segment_name(2)), [0; 64]).unwrap();
        // After the restart, 2 is the next sequence number again; record 3 goes to the same
        // segment, and the stale file is gone.
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(2, Bytes::from_static(b"2"), None).await.unwrap();
        log.append(3, Bytes::from_static(b"3"), None).await.unwrap();
        std::fs::write(log.dir().join(segment_name(9)), [0; 64]).unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append(4, Bytes::from_static(b"4"), None).await.unwrap();
        let names: Vec<i64> = segments(log.dir())
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(names, vec![1, 2, 4], "the stale segment 9 went");
        // So a checkpoint up to 2 cannot take segment 2's record 3 with it.
        log.drop_upto(2).await.unwrap();
        let read = log.read().await.unwrap();
        assert_eq!(bodies(&read), vec![(2, &b"2"[..]), (3, b"3"), (4, b"4")]);
    }

    #[test]
    fn small_records_are_prefilled_for_and_a_large_one_grows_the_file_itself() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        let path = log.dir().join(segment_name(1));
        log.append_now(1, b"small", None).unwrap();
        let small = HEADER + PAYLOAD_HEAD + 5;
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            small as u64 + PREFILL
        );
        let large = vec![7; (PREFILL + GROWS_ITSELF) as usize];
        log.append_now(2, &large, None).unwrap();
        let end = (2 * (HEADER + PAYLOAD_HEAD) + 5 + large.len()) as u64;
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            end,
            "no zeros after"
        );
        log.append_now(3, b"small again", None).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > end + PREFILL - 100);
        let data = Bytes::from(std::fs::read(&path).unwrap());
        let (records, torn) = parse(&data);
        assert_eq!((records.len(), torn), (3, false));
        assert_eq!(&records[1].2[..], &large[..]);
    }

    #[test]
    fn a_full_segment_gives_way_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(dir.path(), "t", "t", SyncMode::Every);
        log.append_now(1, b"x", None).unwrap();
        log.active.lock().unwrap().bytes = SEGMENT_BYTES;
        log.append_now(2, b"y", None).unwrap();
        let names: Vec<i64> = segments(log.dir())
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(names, vec![1, 2]);
    }

    #[test]
    fn the_sync_mode_is_read_from_the_store_url() {
        assert_eq!(SyncMode::of_url("surrealkv:///d/s"), Ok(SyncMode::Every));
        assert_eq!(
            SyncMode::of_url("surrealkv:///d/s?sync=never"),
            Ok(SyncMode::Never)
        );
        assert_eq!(
            SyncMode::of_url("surrealkv:///d/s?versioned=false&sync=2000ms"),
            Ok(SyncMode::Interval(Duration::from_millis(2000)))
        );
        assert_eq!(
            SyncMode::of_url("surrealkv:///d/s?sync=2s"),
            Ok(SyncMode::Interval(Duration::from_secs(2)))
        );
        assert_eq!(
            SyncMode::of_url("surrealkv:///d/s?sync=every"),
            Ok(SyncMode::Every)
        );
        for bad in ["banana", "50ms", ""] {
            let e = SyncMode::of_url(&format!("surrealkv:///d/s?sync={bad}")).unwrap_err();
            assert!(e.starts_with(&format!("sync={bad}: ")), "{e}");
        }
    }

    #[tokio::test]
    async fn with_an_interval_records_are_written_at_once_and_synced_by_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::new(
            dir.path(),
            "t",
            "t",
            SyncMode::Interval(Duration::from_millis(20)),
        );
        log.append(1, Bytes::from_static(b"a"), None).await.unwrap();
        // Readable at once (the operating system has it), before any sync.
        let read = FileLog::new(dir.path(), "t", "t", SyncMode::Every)
            .read()
            .await
            .unwrap();
        assert_eq!(bodies(&read), vec![(1, &b"a"[..])]);
        assert!(log.active.lock().unwrap().syncing, "the thread runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.active.lock().unwrap().unsynced {
            assert!(std::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
