//! Newtype identifiers, so that a task id can never be passed where a worker id is meant.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's identity for its whole life, across attempts, workers and coordinator restarts.
///
/// A UUIDv7: its first bits are the creation time, so ids sort roughly by age and a short prefix
/// of a recent id is usually unique. On the wire it is 16 raw bytes (MessagePack `bin 8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A fresh, time-ordered id: later calls in one process give larger ids (this module's
    /// `IdClock` says how, and why not `uuid`'s `now_v7`).
    pub fn new() -> Self {
        static CLOCK: Mutex<Option<IdClock>> = Mutex::new(None);
        let now = crate::now_ms();
        let mut clock = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
        TaskId(clock.get_or_insert_with(IdClock::new).next(now))
    }

    /// The hyphen-less lowercase hex form that the CLI matches prefixes against.
    pub fn simple(&self) -> String {
        self.0.simple().to_string()
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// Makes UUIDv7 task ids without asking the operating system for randomness each time: the
/// `uuid` crate's `now_v7` fills its random bits from `getrandom(2)` on every call, a system call
/// for every task added (the coordinator makes the ids). Here the 48-bit millisecond time is
/// followed by a 42-bit counter, started at a random value each millisecond so that it can count
/// 2^41 ids before it overflows into the next millisecond (ids stay increasing), then 32 bits from
/// a xorshift generator seeded once from a v4 UUID (ids of two processes differ by the random
/// start of the counter and these bits; nothing needs them to be unguessable: any client with
/// the token can list every task).
struct IdClock {
    /// The millisecond of the last id; the clock going back does not move it back.
    ms: u64,
    /// Within `ms`.
    counter: u64,
    /// xorshift64 state, never zero.
    rng: u64,
}

/// Counter values are below this.
const COUNTER_END: u64 = 1 << 42;

impl IdClock {
    fn new() -> IdClock {
        let seed = Uuid::new_v4().as_u128();
        IdClock {
            ms: 0,
            counter: 0,
            rng: (seed as u64 ^ (seed >> 64) as u64) | 1,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next id at wall-clock time `now_ms`.
    fn next(&mut self, now_ms: u64) -> Uuid {
        if now_ms > self.ms {
            self.ms = now_ms;
            self.counter = self.random() >> 23;
        } else {
            self.counter += 1;
            if self.counter == COUNTER_END {
                self.ms += 1;
                self.counter = self.random() >> 23;
            }
        }
        // The ten bytes after the time: 4 bits the version replaces, the counter's top 12 bits,
        // 2 bits the variant replaces, its other 30 bits, 32 random bits.
        let rest = (u128::from(self.counter >> 30) << 64)
            | (u128::from(self.counter & ((1 << 30) - 1)) << 32)
            | u128::from(self.random() as u32);
        let bytes: [u8; 10] = rest.to_be_bytes()[6..].try_into().expect("ten bytes");
        uuid::Builder::from_unix_timestamp_millis(self.ms, &bytes).into_uuid()
    }
}

/// A worker's identity, given by the coordinator at the handshake and kept across reconnects.
///
/// A worker that reconnects presents its previous id so that the tasks it still runs stay its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// Chosen by the client for each request; the reply (or the error) carries it back.
///
/// The coordinator never interprets it, so a client may reuse values once their replies arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(id: Uuid) -> u64 {
        let (secs, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
        secs * 1000 + u64::from(nanos) / 1_000_000
    }

    #[test]
    fn ids_are_version_7_increasing_and_carry_the_time() {
        let before = crate::now_ms();
        let ids: Vec<TaskId> = (0..100_000).map(|_| TaskId::new()).collect();
        let after = crate::now_ms();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} then {}", w[0], w[1]);
        }
        for id in [ids[0], ids[ids.len() - 1]] {
            assert_eq!(id.0.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
            assert!((before..=after).contains(&millis(id.0)), "{id}");
        }
    }

    #[test]
    fn a_clock_that_goes_back_or_a_full_counter_keeps_ids_increasing() {
        let mut clock = IdClock::new();
        let a = clock.next(5_000);
        // The wall clock went back a second: the id still sorts after the last one.
        let b = clock.next(4_000);
        assert!(a < b);
        assert_eq!(millis(b), 5_000);
        // The counter runs out within a millisecond: the next id borrows the next one.
        clock.counter = COUNTER_END - 1;
        let c = clock.next(5_000);
        assert!(b < c);
        assert_eq!(millis(c), 5_001);
        assert!(
            clock.counter < COUNTER_END / 2,
            "started again from a random half-range value"
        );
    }

    #[test]
    fn two_processes_make_different_ids_in_the_same_millisecond() {
        let (mut one, mut two) = (IdClock::new(), IdClock::new());
        let ours: Vec<Uuid> = (0..1000).map(|_| one.next(7_000)).collect();
        let theirs: Vec<Uuid> = (0..1000).map(|_| two.next(7_000)).collect();
        assert!(ours.iter().all(|id| !theirs.contains(id)));
    }
}
