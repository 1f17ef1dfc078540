//! An ordered map from task id to a value, laid out for how tasks arrive: ids are UUIDv7, made
//! in time order, so nearly every insert is past the last key.
//!
//! A `BTreeMap` splits a full leaf in the middle, so under ascending inserts every leaf stays
//! half empty: for ten million tasks of 48-byte entries that is about 400 MB of empty slots.
//! Here entries sit in sorted chunks of up to [`CHUNK`]; an insert past the last key fills the
//! last chunk and then starts a new one, so chunks are full. An insert elsewhere (a clock that
//! went back) goes into its chunk, which is split in two when it doubles. A removal leaves a
//! hole that is squeezed out when half of a chunk is holes, and a chunk with no entry left is
//! dropped. Lookups are two binary searches over keys kept apart from the values, as `u128`s
//! (a UUID's bytes read big-endian order the same way): one over each chunk's first key, one
//! over the chunk's 4 KiB of keys.

use std::ops::{Bound, RangeBounds};

use tatzelwurm_protocol::TaskId;
use uuid::Uuid;

/// Entries a chunk takes before an insert at the end starts a new one.
const CHUNK: usize = 256;

fn key(id: &TaskId) -> u128 {
    id.0.as_u128()
}

fn id(key: u128) -> TaskId {
    TaskId(Uuid::from_u128(key))
}

/// A sorted chunk: keys ascending, values beside them, `None` where an entry was removed.
struct Chunk<V> {
    keys: Vec<u128>,
    vals: Vec<Option<V>>,
    live: usize,
}

impl<V> Chunk<V> {
    fn with(k: u128, v: V) -> Self {
        let mut keys = Vec::with_capacity(CHUNK);
        let mut vals = Vec::with_capacity(CHUNK);
        keys.push(k);
        vals.push(Some(v));
        Chunk {
            keys,
            vals,
            live: 1,
        }
    }

    /// Squeezes out the holes once they are half of the chunk.
    fn squeeze(&mut self) {
        if self.live * 2 < self.keys.len() {
            let mut at = 0;
            for i in 0..self.keys.len() {
                if self.vals[i].is_some() {
                    self.keys.swap(at, i);
                    self.vals.swap(at, i);
                    at += 1;
                }
            }
            self.keys.truncate(at);
            self.vals.truncate(at);
        }
    }
}

/// Tasks by id, in order (see the module documentation).
pub(crate) struct IdMap<V> {
    chunks: Vec<Chunk<V>>,
    /// Each chunk's first key, side by side: the search for a chunk reads this one array
    /// instead of one cache line in each chunk it passes.
    firsts: Vec<u128>,
    len: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            chunks: Vec::new(),
            firsts: Vec::new(),
            len: 0,
        }
    }
}

impl<V> IdMap<V> {
    /// How many entries there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `k` if anything does: the last one starting at or before it.
    fn chunk_of(&self, k: u128) -> Option<usize> {
        self.firsts.partition_point(|f| *f <= k).checked_sub(1)
    }

    fn position(&self, id: &TaskId) -> Option<(usize, usize)> {
        let k = key(id);
        let c = self.chunk_of(k)?;
        let chunk = &self.chunks[c];
        let i = chunk.keys.binary_search(&k).ok()?;
        chunk.vals[i].is_some().then_some((c, i))
    }

    /// The value of `id`.
    pub(crate) fn get(&self, id: &TaskId) -> Option<&V> {
        let (c, i) = self.position(id)?;
        self.chunks[c].vals[i].as_ref()
    }

    /// The value of `id`, to change.
    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut V> {
        let (c, i) = self.position(id)?;
        self.chunks[c].vals[i].as_mut()
    }

    /// Whether `id` has a value.
    pub(crate) fn contains_key(&self, id: &TaskId) -> bool {
        self.position(id).is_some()
    }

    /// Sets the value of `id`; the value it had, if any.
    pub(crate) fn insert(&mut self, id: TaskId, value: V) -> Option<V> {
        let k = key(&id);
        let Some(c) = self.chunk_of(k).or((!self.chunks.is_empty()).then_some(0)) else {
            self.chunks.push(Chunk::with(k, value));
            self.firsts.push(k);
            self.len += 1;
            return None;
        };
        let last = c + 1 == self.chunks.len();
        let chunk = &mut self.chunks[c];
        match chunk.keys.binary_search(&k) {
            Ok(i) => {
                let old = chunk.vals[i].replace(value);
                if old.is_none() {
                    chunk.live += 1;
                    self.len += 1;
                }
                old
            }
            // Past the last key of a full last chunk: a new chunk, so that chunks stay full.
            Err(i) if last && i == chunk.keys.len() && chunk.keys.len() >= CHUNK => {
                self.chunks.push(Chunk::with(k, value));
                self.firsts.push(k);
                self.len += 1;
                None
            }
            Err(i) => {
                chunk.keys.insert(i, k);
                chunk.vals.insert(i, Some(value));
                chunk.live += 1;
                self.len += 1;
                self.firsts[c] = chunk.keys[0];
                if chunk.keys.len() >= 2 * CHUNK {
                    let keys = chunk.keys.split_off(CHUNK);
                    let vals = chunk.vals.split_off(CHUNK);
                    chunk.keys.shrink_to_fit();
                    chunk.vals.shrink_to_fit();
                    let live = vals.iter().filter(|v| v.is_some()).count();
                    chunk.live -= live;
                    self.firsts.insert(c + 1, keys[0]);
                    self.chunks.insert(c + 1, Chunk { keys, vals, live });
                }
                None
            }
        }
    }

    /// Takes the value of `id` out.
    pub(crate) fn remove(&mut self, id: &TaskId) -> Option<V> {
        let (c, i) = self.position(id)?;
        let chunk = &mut self.chunks[c];
        let old = chunk.vals[i].take();
        chunk.live -= 1;
        self.len -= 1;
        if chunk.live == 0 {
            self.chunks.remove(c);
            self.firsts.remove(c);
        } else {
            chunk.squeeze();
            self.firsts[c] = chunk.keys[0];
        }
        old
    }

    /// Where the first key at or after `bound` is, as (chunk, index).
    fn lower(&self, bound: Bound<&TaskId>) -> (usize, usize) {
        let (k, strict) = match bound {
            Bound::Unbounded => return (0, 0),
            Bound::Included(id) => (key(id), false),
            Bound::Excluded(id) => (key(id), true),
        };
        let c = self.chunk_of(k).unwrap_or(0);
        let i = self.chunks.get(c).map_or(0, |ch| {
            ch.keys
                .partition_point(|x| if strict { *x <= k } else { *x < k })
        });
        (c, i)
    }

    /// Where the entries up to `bound` end, as (chunk, index one past the last).
    fn upper(&self, bound: Bound<&TaskId>) -> Option<(usize, usize)> {
        let (k, strict) = match bound {
            Bound::Unbounded => {
                let c = self.chunks.len().checked_sub(1)?;
                return Some((c, self.chunks[c].keys.len()));
            }
            Bound::Included(id) => (key(id), false),
            Bound::Excluded(id) => (key(id), true),
        };
        let c = self.chunk_of(k)?;
        let i = self.chunks[c]
            .keys
            .partition_point(|x| if strict { *x < k } else { *x <= k });
        Some((c, i))
    }

    /// The entries whose keys fall in `range`, in order.
    pub(crate) fn range(
        &self,
        range: impl RangeBounds<TaskId>,
    ) -> impl DoubleEndedIterator<Item = (TaskId, &V)> {
        let (c0, i0) = self.lower(range.start_bound());
        // An end before every key: nothing (chunk 0 up to index 0).
        let (c1, i1) = self.upper(range.end_bound()).unwrap_or((0, 0));
        let chunks = &self.chunks;
        let last = if chunks.is_empty() { 0 } else { c1 + 1 };
        (c0..last)
            .flat_map(move |c| {
                let chunk = &chunks[c];
                let lo = if c == c0 { i0 } else { 0 };
                let hi = if c == c1 { i1 } else { chunk.keys.len() };
                let lo = lo.min(hi);
                chunk.keys[lo..hi].iter().zip(&chunk.vals[lo..hi])
            })
            .filter_map(|(k, v)| v.as_ref().map(|v| (id(*k), v)))
    }

    /// Every value.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.range(..).map(|(_, v)| v)
    }

    /// Builds the map from entries sorted by key (at start, from what the store held), taking
    /// them from the back so that the sorted vector shrinks as the chunks grow.
    pub(crate) fn from_sorted(mut sorted: Vec<(TaskId, V)>) -> Self {
        debug_assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        let len = sorted.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let take = |part: Vec<(TaskId, V)>| {
            let mut keys = Vec::with_capacity(part.len());
            let mut vals = Vec::with_capacity(part.len());
            for (k, v) in part {
                keys.push(key(&k));
                vals.push(Some(v));
            }
            let live = keys.len();
            Chunk { keys, vals, live }
        };
        // The first chunk takes the remainder, so that every later one is full.
        let mut at = len - len.saturating_sub(1) / CHUNK * CHUNK;
        let mut cuts = Vec::new();
        while at < len {
            cuts.push(at);
            at += CHUNK;
        }
        for (n, cut) in cuts.into_iter().rev().enumerate() {
            chunks.push(take(sorted.split_off(cut)));
            if n % 256 == 255 {
                sorted.shrink_to_fit();
            }
        }
        if !sorted.is_empty() {
            chunks.push(take(sorted));
        }
        chunks.reverse();
        let firsts = chunks.iter().map(|c| c.keys[0]).collect();
        IdMap {
            chunks,
            firsts,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use uuid::Uuid;

    fn id(n: u64) -> TaskId {
        TaskId(Uuid::from_u64_pair(n, 0))
    }

    /// Pseudo-random numbers, reproducible.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn same(m: &IdMap<u64>, want: &BTreeMap<TaskId, u64>) {
        assert_eq!(m.len(), want.len());
        let firsts: Vec<u128> = m.chunks.iter().map(|c| c.keys[0]).collect();
        assert_eq!(
            m.firsts, firsts,
            "the first keys side by side match the chunks"
        );
        let got: Vec<(TaskId, u64)> = m.range(..).map(|(k, v)| (k, *v)).collect();
        let expected: Vec<(TaskId, u64)> = want.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(got, expected);
        let back: Vec<TaskId> = m.range(..).rev().map(|(k, _)| k).collect();
        let mut fwd: Vec<TaskId> = want.keys().copied().collect();
        fwd.reverse();
        assert_eq!(back, fwd, "backwards too");
    }

    #[test]
    fn ascending_inserts_fill_chunks_and_lookups_find_every_key() {
        let mut m = IdMap::default();
        for n in 0..(3 * CHUNK as u64 + 7) {
            assert_eq!(m.insert(id(n * 2), n), None);
        }
        assert_eq!(m.chunks.len(), 4);
        assert!(m.chunks[..3].iter().all(|c| c.keys.len() == CHUNK), "full");
        for n in 0..(3 * CHUNK as u64 + 7) {
            assert_eq!(m.get(&id(n * 2)), Some(&n));
            assert!(!m.contains_key(&id(n * 2 + 1)));
        }
        assert_eq!(m.insert(id(4), 99), Some(2), "a second insert replaces");
        assert_eq!(m.get(&id(4)), Some(&99));
    }

    #[test]
    fn inserts_before_the_last_key_split_chunks_that_double() {
        let mut m = IdMap::default();
        let mut want = BTreeMap::new();
        // Descending: every insert lands at the front of the first chunk.
        for n in (0..(5 * CHUNK as u64)).rev() {
            assert_eq!(m.insert(id(n), n), want.insert(id(n), n));
        }
        assert!(m.chunks.len() >= 4, "{} chunks", m.chunks.len());
        assert!(m.chunks.iter().all(|c| c.keys.len() < 2 * CHUNK));
        same(&m, &want);
    }

    #[test]
    fn it_behaves_as_a_btreemap_under_any_mix_of_inserts_removals_and_ranges() {
        let mut state = 0x2545_f491_4f6c_dd1d;
        let mut m = IdMap::default();
        let mut want = BTreeMap::new();
        for step in 0..40_000u64 {
            let r = next(&mut state);
            // Mostly ascending keys, some anywhere, removals of anything.
            let key = match r % 10 {
                0..=4 => id(step * 4),
                5..=6 => id(next(&mut state) % (step * 4 + 1)),
                _ => id((next(&mut state) % (step * 4 + 1)) & !3),
            };
            if r % 10 >= 7 {
                assert_eq!(m.remove(&key), want.remove(&key));
            } else {
                assert_eq!(m.insert(key, step), want.insert(key, step));
            }
            if step % 4000 == 0 {
                same(&m, &want);
            }
        }
        same(&m, &want);
        let mut state = 7;
        for _ in 0..500 {
            let a = id(next(&mut state) % 170_000);
            let b = id(next(&mut state) % 170_000);
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            let got: Vec<TaskId> = m.range(a..b).map(|(k, _)| k).collect();
            let exp: Vec<TaskId> = want.range(a..b).map(|(k, _)| *k).collect();
            assert_eq!(got, exp, "{a}..{b}");
            let got: Vec<TaskId> = m.range(a..=b).rev().map(|(k, _)| k).collect();
            let exp: Vec<TaskId> = want.range(a..=b).rev().map(|(k, _)| *k).collect();
            assert_eq!(got, exp, "{a}..={b} backwards");
            let got: Vec<TaskId> = m.range(..b).rev().take(3).map(|(k, _)| k).collect();
            let exp: Vec<TaskId> = want.range(..b).rev().take(3).map(|(k, _)| *k).collect();
            assert_eq!(got, exp, "..{b}");
            let got = m.range((Bound::Excluded(a), Bound::Unbounded)).count();
            let exp = want.range((Bound::Excluded(a), Bound::Unbounded)).count();
            assert_eq!(got, exp);
        }
        for k in want.keys().copied().collect::<Vec<_>>() {
            assert_eq!(m.remove(&k), want.remove(&k));
        }
        assert_eq!(m.len(), 0);
        assert!(m.chunks.is_empty(), "empty chunks are dropped");
        assert_eq!(m.range(..).count(), 0);
    }

    #[test]
    fn built_from_sorted_entries_it_holds_them_all_in_full_chunks() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3] {
            let sorted: Vec<(TaskId, u64)> = (0..n as u64).map(|i| (id(i), i)).collect();
            let want: BTreeMap<TaskId, u64> = sorted.iter().copied().collect();
            let m = IdMap::from_sorted(sorted);
            same(&m, &want);
            assert!(
                m.chunks.iter().skip(1).all(|c| c.keys.len() == CHUNK),
                "{n}: all but the first chunk full"
            );
            if n > 0 {
                assert_eq!(m.get(&id(n as u64 - 1)), Some(&(n as u64 - 1)));
            }
        }
    }
}
