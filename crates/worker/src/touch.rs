//! When the worker last heard from its coordinator, shared by the session (which hears) and the
//! runner (which starts attempts).
//!
//! A coordinator that hears nothing from a worker for longer than the lease gives the worker's
//! tasks to others. A worker cannot see that happen while it is frozen (SIGSTOP, a suspended VM)
//! or cut off, but it can see the silence afterwards: nothing came from the coordinator, which
//! answers every heartbeat, for longer than the lease. Whatever it was about to start then may
//! already run elsewhere, so it hands it back instead. The session checks a dispatch as it reads
//! it; the runner checks again right before an attempt starts, because a freeze can also fall
//! between the two (the dispatch read and accepted, its start waiting for a runtime thread).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The last word from the coordinator and the lease it grants.
#[derive(Debug)]
pub struct Touch {
    heard: Mutex<Instant>,
    /// The lease in nanoseconds.
    lease: AtomicU64,
}

impl Touch {
    /// Heard just now, with this lease until a coordinator grants another.
    pub fn new(lease: Duration) -> Self {
        let touch = Touch {
            heard: Mutex::new(Instant::now()),
            lease: AtomicU64::new(0),
        };
        touch.set_lease(lease);
        touch
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Nothing panics while holding it; a poisoned lock still holds an instant.
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The coordinator was heard at `at` (never moves the last word back).
    pub fn heard_at(&self, at: Instant) {
        let mut last = self.last();
        *last = (*last).max(at);
    }

    /// The coordinator was heard just now.
    pub fn heard(&self) {
        self.heard_at(Instant::now());
    }

    /// Restarts the count from `at`, earlier than the last word if need be: a new connection's
    /// silence counts from its hello, whenever its answer is read.
    pub fn restart_at(&self, at: Instant) {
        *self.last() = at;
    }

    /// The lease a coordinator granted.
    pub fn set_lease(&self, lease: Duration) {
        let ns = u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX);
        self.lease.store(ns, Ordering::Relaxed);
    }

    /// The lease in force.
    pub fn lease(&self) -> Duration {
        Duration::from_nanos(self.lease.load(Ordering::Relaxed))
    }

    /// How long since the coordinator was last heard.
    pub fn silence(&self) -> Duration {
        let last = *self.last();
        last.elapsed()
    }

    /// Silent for longer than the lease: the coordinator may have given this worker's tasks away.
    pub fn out_of_touch(&self) -> bool {
        self.silence() > self.lease()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(40);

    #[test]
    fn silence_past_the_lease_is_out_of_touch_until_the_coordinator_is_heard_again() {
        let touch = Touch::new(LEASE);
        assert!(!touch.out_of_touch());
        let hello = Instant::now();
        std::thread::sleep(LEASE + Duration::from_millis(10));
        assert!(touch.out_of_touch(), "{:?} of silence", touch.silence());
        touch.heard();
        assert!(!touch.out_of_touch());
        // A word heard earlier than the last one does not count backwards ...
        touch.heard_at(hello);
        assert!(!touch.out_of_touch());
        // ... but a new connection counts from its hello, however late its answer came.
        touch.restart_at(hello);
        assert!(touch.out_of_touch());
        touch.set_lease(Duration::from_secs(60));
        assert!(!touch.out_of_touch(), "a longer lease granted");
        assert_eq!(touch.lease(), Duration::from_secs(60));
    }
}
