//! Named queues: every task waits in one. A queue's settings (priority, weight, limit, pause,
//! defaults for its tasks) are stored by the coordinator; its counts are kept as tasks change.
//! The broker's queues (kiwipy's task queues) are the same queues.

use serde::{Deserialize, Serialize};

use crate::task::StateCount;

/// A queue's settings, as stored and shown. A queue that was never set has the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// The namespace it belongs to.
    pub namespace: String,
    /// Its name in that namespace.
    pub name: String,
    /// Queues of a higher priority dispatch first whenever a free worker can take their work.
    #[serde(default)]
    pub priority: i32,
    /// Among queues of equal priority, dispatches are shared in proportion to the weights
    /// (at least 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// At most this many of its tasks held by workers at once, across all workers; no limit when
    /// absent.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Dispatches nothing new while set; what runs goes on.
    #[serde(default)]
    pub paused: bool,
    /// Attempts for a task added without its own.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Timeout for a task added without its own.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl QueueSettings {
    /// A queue with the default settings: priority 0, weight 1, no limit, not paused.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        QueueSettings {
            namespace: namespace.into(),
            name: name.into(),
            priority: 0,
            weight: 1,
            limit: None,
            paused: false,
            max_attempts: None,
            timeout_ms: None,
        }
    }

    /// Applies a change; refuses a weight of 0.
    pub fn apply(&mut self, c: &QueueChange) -> Result<(), String> {
        if c.weight == Some(0) {
            return Err("a queue's weight must be at least 1".into());
        }
        if let Some(p) = c.priority {
            self.priority = p;
        }
        if let Some(w) = c.weight {
            self.weight = w;
        }
        if let Some(l) = c.limit {
            self.limit = (l > 0).then_some(l);
        }
        if let Some(p) = c.paused {
            self.paused = p;
        }
        if let Some(a) = c.max_attempts {
            self.max_attempts = (a > 0).then_some(a);
        }
        if let Some(t) = c.timeout_ms {
            self.timeout_ms = (t > 0).then_some(t);
        }
        Ok(())
    }
}

/// What a `queue_set` changes; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueChange {
    /// New priority.
    #[serde(default)]
    pub priority: Option<i32>,
    /// New weight (at least 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// New limit; 0 removes the limit.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Pause (true) or play (false) the queue.
    #[serde(default)]
    pub paused: Option<bool>,
    /// New default attempts; 0 removes the default (1).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// New default timeout; 0 removes it.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A queue as `queue list` and `queue show` print it: settings, counts and who serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Its name in the namespace.
    pub name: String,
    /// Tasks waiting in it (ready).
    pub depth: u64,
    /// Tasks of it that workers or subscribers hold now (what its limit caps).
    pub held: u64,
    /// Broker connections that serve it now.
    pub subscribers: u32,
    /// The sum of their limits: how many message tasks they may hold at once.
    pub capacity: u64,
    /// Its settings.
    #[serde(default = "unnamed")]
    pub settings: QueueSettings,
    /// Tasks per state, every state listed.
    #[serde(default)]
    pub counts: Vec<StateCount>,
    /// Tasks of it that reached a final state in the last 60 s.
    #[serde(default)]
    pub finished_last_minute: u64,
}

fn unnamed() -> QueueSettings {
    QueueSettings::new(crate::DEFAULT_NAMESPACE, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_field_by_field_and_zero_clears() {
        let mut s = QueueSettings::new("ns", "q");
        s.apply(&QueueChange {
            priority: Some(5),
            limit: Some(3),
            timeout_ms: Some(1000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((s.priority, s.weight, s.limit), (5, 1, Some(3)));
        assert_eq!(s.timeout_ms, Some(1000));
        s.apply(&QueueChange {
            limit: Some(0),
            weight: Some(7),
            paused: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (s.priority, s.weight, s.limit, s.paused),
            (5, 7, None, true)
        );
        assert!(
            s.apply(&QueueChange {
                weight: Some(0),
                priority: Some(1),
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!(s.priority, 5, "a refused change changes nothing");
    }
}
