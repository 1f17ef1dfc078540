//! `queue` commands: their arguments, and the values `queue set` takes (`none` clears).

use super::*;

/// Queue commands.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// The queues of the namespace: settings, tasks per state, running now, finished per minute.
    List,
    /// One queue: its settings, counts and subscribers.
    Show {
        /// The queue's name.
        name: String,
    },
    /// Change a queue's settings (creating it when new); they are stored.
    Set(QueueSetArgs),
    /// Dispatch nothing new from a queue; what runs goes on.
    Pause {
        /// The queue's name.
        name: String,
    },
    /// Dispatch from a paused queue again.
    Play {
        /// The queue's name.
        name: String,
    },
}

/// `queue set` options; what is left out stays as it is.
#[derive(Args, Debug)]
pub struct QueueSetArgs {
    /// The queue's name.
    pub name: String,
    /// Queues of a higher priority dispatch first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Share of dispatches among queues of equal priority (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub weight: Option<u32>,
    /// Most of its tasks running at once across all workers; `none` removes the limit.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<u32>,
    /// Attempts for tasks added without --attempts; `none` goes back to 1.
    #[arg(long, value_parser = parse_limit)]
    pub attempts: Option<u32>,
    /// Timeout for tasks added without --timeout; `none` removes it.
    #[arg(long, value_parser = parse_optional_duration)]
    pub timeout: Option<u64>,
}

/// A positive number, or `none` (read as 0: no limit).
pub(super) fn parse_limit(s: &str) -> Result<u32, String> {
    match s {
        "none" => Ok(0),
        _ => match s.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("{s:?}: give a number of at least 1, or none")),
            Ok(n) => Ok(n),
        },
    }
}

/// A duration in milliseconds, or `none` (read as 0: no timeout).
pub(super) fn parse_optional_duration(s: &str) -> Result<u64, String> {
    match s {
        "none" => Ok(0),
        _ => match parse_duration(s).map(millis)? {
            0 => Err(format!("{s:?}: a timeout must be longer than 0 (or none)")),
            ms => Ok(ms),
        },
    }
}
