//! The broker's types: what a message task, an RPC or a broadcast carries, and the outcome that
//! goes back to whoever asked. The requests and replies that use them are in [`crate::messages`].

use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::ids::TaskId;

/// How a message task or an RPC ended, as its sender hears it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageOutcome {
    /// Accepted; the result comes later (kiwipy: the subscriber returned a future).
    Pending,
    /// The value the subscriber returned.
    Value(Data),
    /// The subscriber raised: the error in words (kiwipy's `RemoteException`).
    Failed(String),
    /// Nobody will answer: the task was killed or removed (kiwipy: a cancelled future).
    Cancelled(String),
}

impl MessageOutcome {
    /// Whether more outcomes of the same message may follow.
    pub fn is_final(&self) -> bool {
        !matches!(self, MessageOutcome::Pending)
    }
}

/// A broadcast: a body with kiwipy's sender, subject and correlation id. Not stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastMessage {
    /// The body: opaque to the coordinator.
    #[serde(default)]
    pub body: Data,
    /// Who sends it (AiiDA: the process id).
    #[serde(default)]
    pub sender: Option<String>,
    /// What it is about (AiiDA: `state_changed.running.waiting`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Ties it to a conversation, for the listeners.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// A message task that waits in a queue, for inspection (`verdi process repair`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The task's id: `remove` takes it.
    pub id: TaskId,
    /// Its body.
    pub body: Data,
    /// Whether its sender waits for an outcome.
    pub no_reply: bool,
    /// When it was sent.
    pub created_ms: u64,
}

/// Whether `text` matches a listener's pattern: exact, or with `*` standing for any run of
/// characters (`state_changed.*`).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = parts.split_first().expect("split yields one part at least");
    let Some(mut left) = text.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = rest.split_last().expect("a `*` yields two parts");
    for part in middle {
        match left.find(part) {
            Some(i) => left = &left[i + part.len()..],
            None => return false,
        }
    }
    left.len() >= last.len() && left.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_with_wildcards() {
        assert!(pattern_matches("state_changed", "state_changed"));
        assert!(!pattern_matches("state_changed", "state_changed.x"));
        assert!(pattern_matches(
            "state_changed.*",
            "state_changed.running.waiting"
        ));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("a*b*c", "aXbYc"));
        assert!(pattern_matches("a*b*c", "abc"));
        assert!(!pattern_matches("a*b*c", "acb"));
        assert!(
            !pattern_matches("ab*ba", "aba"),
            "the two ends may not overlap"
        );
        assert!(pattern_matches(
            "*.waiting",
            "state_changed.running.waiting"
        ));
        assert!(!pattern_matches(
            "*.waiting",
            "state_changed.waiting.running"
        ));
    }
}
