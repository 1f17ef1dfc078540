//! The journal of an embedded store, kept as plain key-value pairs beside SurrealDB's tables.
//!
//! A batch's journal record is the hot write: one per commit, and a commit of a few tasks is what
//! a worker running commands waits for. Written as a SurrealQL `CREATE`, each cost the
//! coordinator about 200 µs of parsing, planning and document handling for what is one key and
//! one value; written here, through the same datastore's key-value transactions, it costs the
//! transaction and its commit (BENCHMARKS.md, "The journal as key-value pairs"). The same
//! transaction carries the counters when they moved, as `meta:counters` did.
//!
//! Keys live under a prefix of their own, which sorts before everything SurrealDB writes (its
//! keys begin with `/`): `0x00 "tatzelwurm" 0x00`, then the namespace and the database, each as a
//! 2-byte big-endian length and its UTF-8 bytes (so two databases in one store never share a
//! journal), then `j` and the sequence number as 8 big-endian bytes for a journal record (so keys
//! sort in sequence order), or `c` for the counters. Values are the record's body as
//! [`super::image`] frames it. A server store has no such access and keeps the `journal` table.
//!
//! A surrealkv store keeps its journal in files instead ([`super::filelog`]); here it only
//! reads what a version before that wrote, and keeps, under `C`, the counters a checkpoint
//! stores before it deletes the journal files that held them: the sequence number of the record
//! that carried them (8 bytes big-endian), then the counters.

use std::sync::Arc;

use bytes::Bytes;
use surrealdb_core::kvs::Datastore;
use surrealdb_kvs::key::RawRange;
use surrealdb_kvs::{Key, TransactionType};

use super::StoreError;
use super::handle::internal;

/// How many pairs a read takes from the engine at a time.
const READ_BATCH: u32 = 1000;

/// Where one database's journal and counters are kept in an embedded datastore.
#[derive(Clone, Debug)]
pub(super) struct KvLog {
    /// Every key of this database starts with these bytes.
    prefix: Arc<[u8]>,
}

/// What the journal of one database holds, read at start.
#[derive(Debug, Default)]
pub(super) struct Read {
    /// Every journal record, by sequence number, in order.
    pub journal: Vec<(i64, Bytes)>,
    /// The counters as last written with a journal record, if they ever were.
    pub counters: Option<Bytes>,
    /// The counters a checkpoint stored, with the sequence number of the record that carried
    /// them.
    pub counters_at: Option<(i64, Bytes)>,
}

impl KvLog {
    /// The journal of database `db` in namespace `ns`.
    pub(super) fn new(ns: &str, db: &str) -> KvLog {
        let mut prefix = b"\0tatzelwurm\0".to_vec();
        for name in [ns, db] {
            // SurrealDB names are far shorter; a longer one is cut, which only risks two such
            // databases sharing a journal.
            let bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            prefix.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            prefix.extend_from_slice(bytes);
        }
        KvLog {
            prefix: prefix.into(),
        }
    }

    fn key(&self, kind: u8, seq: Option<u64>) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 9);
        key.extend_from_slice(&self.prefix);
        key.push(kind);
        if let Some(seq) = seq {
            key.extend_from_slice(&seq.to_be_bytes());
        }
        key
    }

    /// The key of journal record `seq` (sequence numbers start at 1).
    fn record_key(&self, seq: i64) -> Vec<u8> {
        self.key(b'j', Some(seq.max(0) as u64))
    }

    /// Journal records `from..to`, as a range of keys.
    fn records(&self, from: i64, to: i64) -> RawRange {
        RawRange::of_bytes(&self.record_key(from), &self.record_key(to))
    }

    /// Writes journal record `seq`, and the counters with it when they moved, in one
    /// transaction. Durable when it returns `Ok` (as durable as the engine's commits are).
    pub(super) async fn append(
        &self,
        ds: &Datastore,
        seq: i64,
        body: Bytes,
        counters: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let tx = ds
            .transaction(TransactionType::Write)
            .await
            .map_err(internal)?;
        let mut written = tx.set(Key::from(self.record_key(seq)), body).await;
        if let (Ok(()), Some(counters)) = (&written, counters) {
            written = tx.set(Key::from(self.key(b'c', None)), counters).await;
        }
        commit_unless_failed(tx, written).await
    }

    /// Stores the counters that record `seq` carried (a checkpoint's), durable when it returns.
    pub(super) async fn set_counters_at(
        &self,
        ds: &Datastore,
        seq: i64,
        counters: &[u8],
    ) -> Result<(), StoreError> {
        let tx = ds
            .transaction(TransactionType::Write)
            .await
            .map_err(internal)?;
        let mut value = (seq.max(0) as u64).to_be_bytes().to_vec();
        value.extend_from_slice(counters);
        let written = tx.set(Key::from(self.key(b'C', None)), value).await;
        commit_unless_failed(tx, written).await
    }

    /// Every journal record and the counters.
    pub(super) async fn read(&self, ds: &Datastore) -> Result<Read, StoreError> {
        let tx = ds
            .transaction(TransactionType::Read)
            .await
            .map_err(internal)?;
        let mut read = Read::default();
        let mut next = Some(self.records(0, i64::MAX));
        let mut result = Ok(());
        while let Some(range) = next.take() {
            let batch = match tx.batch_keys_vals_raw(range, READ_BATCH, None).await {
                Ok(batch) => batch,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            next = batch
                .next
                .map(|r| RawRange::of_bytes(r.start.as_slice(), r.end.as_slice()));
            for (key, value) in batch.result {
                let seq = key
                    .len()
                    .checked_sub(8)
                    .and_then(|at| key[at..].try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "journal",
                        id: format!("{key:?}"),
                        reason: "a journal key without its sequence number".into(),
                    })?;
                read.journal.push((seq as i64, Bytes::from(value)));
            }
        }
        if result.is_ok() {
            match tx.get(Key::from(self.key(b'c', None)), None).await {
                Ok(counters) => read.counters = counters.map(Bytes::from),
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() {
            match tx.get(Key::from(self.key(b'C', None)), None).await {
                Ok(Some(value)) if value.len() >= 8 => {
                    let seq = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                    read.counters_at = Some((seq as i64, Bytes::from(value).slice(8..)));
                }
                Ok(_) => {}
                Err(e) => result = Err(e),
            }
        }
        let _ = tx.cancel().await;
        result.map_err(internal)?;
        Ok(read)
    }

    /// Deletes every journal record up to and including `upto` (a checkpoint holds them now).
    /// Reads only keys, not the records.
    pub(super) async fn drop_upto(&self, ds: &Datastore, upto: i64) -> Result<(), StoreError> {
        let tx = ds
            .transaction(TransactionType::Write)
            .await
            .map_err(internal)?;
        let deleted = tx.delr(self.records(0, upto.saturating_add(1))).await;
        commit_unless_failed(tx, deleted).await
    }
}

/// Commits `tx` when what it did (`done`) worked, else cancels it: nothing of a transaction
/// lands before its commit, so the cancel only frees it, and its own failure adds nothing to
/// the first.
async fn commit_unless_failed(
    tx: surrealdb_datastore::tx::Transaction,
    done: anyhow::Result<()>,
) -> Result<(), StoreError> {
    match done {
        Ok(()) => tx.commit().await.map_err(|e| internal(e).into()),
        Err(e) => {
            let _ = tx.cancel().await;
            Err(internal(e).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sequence_and_databases_do_not_share_a_prefix() {
        let log = KvLog::new("ns", "db");
        let keys: Vec<Vec<u8>> = [1, 2, 255, 256, 70_000, i64::MAX]
            .iter()
            .map(|s| log.record_key(*s))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // "n"+"sdb" and "ns"+"db" would share a prefix if the names were only concatenated.
        let other = KvLog::new("n", "sdb");
        assert!(!log.record_key(1).starts_with(&other.prefix));
        assert!(!other.record_key(1).starts_with(&log.prefix));
        // Below SurrealDB's own keys, which begin with '/'.
        assert!(log.record_key(1)[0] < b'/');
    }

    #[tokio::test]
    async fn records_come_back_in_order_with_the_counters_and_go_up_to_a_mark() {
        let ds = Datastore::new("memory").await.unwrap();
        let log = KvLog::new("t", "t");
        let other = KvLog::new("t", "u");
        // More records than one read batch, written out of order.
        for seq in (1..=2500).rev() {
            let counters = (seq == 7).then(|| Bytes::from_static(b"counters"));
            log.append(&ds, seq, Bytes::from(seq.to_string()), counters)
                .await
                .unwrap();
        }
        other
            .append(&ds, 1, Bytes::from_static(b"elsewhere"), None)
            .await
            .unwrap();
        let read = log.read(&ds).await.unwrap();
        assert_eq!(read.journal.len(), 2500);
        assert!(read.journal.iter().enumerate().all(
            |(i, (seq, body))| *seq == i as i64 + 1 && body[..] == *seq.to_string().as_bytes()
        ));
        assert_eq!(read.counters.as_deref(), Some(&b"counters"[..]));

        log.drop_upto(&ds, 2000).await.unwrap();
        let read = log.read(&ds).await.unwrap();
        let seqs: Vec<i64> = read.journal.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (2001..=2500).collect::<Vec<_>>());
        assert_eq!(read.counters.as_deref(), Some(&b"counters"[..]));
        let elsewhere = other.read(&ds).await.unwrap();
        assert_eq!(elsewhere.journal.len(), 1);
        assert_eq!(elsewhere.counters, None);
    }
}
