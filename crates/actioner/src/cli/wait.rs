//! `task wait`: which tasks it waits for (named, or what can still end in a scope), the
//! subscription behind it, and waiting out a coordinator that went away.

use super::*;

/// Which tasks to wait for.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Which tasks: ids, or -a for every task that can still end.
    #[command(flatten)]
    pub select: WaitSelect,
    /// Only tasks with this tag (repeatable; all must match) that can still end.
    #[arg(long, short = 't')]
    pub tag: Vec<Tag>,
    /// Only tasks of this queue that can still end.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only tasks of this batch that can still end.
    #[arg(long)]
    pub batch: Option<u64>,
    /// How long to wait for a coordinator that went away before giving up (exit 3).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub reconnect_for: Duration,
}

/// The tasks of a wait: like [`Select`], but a filter may stand in for ids.
#[derive(Args, Debug)]
pub struct WaitSelect {
    /// Task ids or unique prefixes.
    #[arg(required_unless_present_any = ["all", "tag", "queue", "batch"], conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every task that can still end (not created, not ended yet).
    #[arg(short, long)]
    pub all: bool,
}

/// How to reach the coordinator again (`task wait` after it went away).
pub(super) struct Reach {
    pub(super) addr: String,
    pub(super) token: String,
    pub(super) namespace: String,
    pub(super) timeout: Duration,
}

impl Reach {
    pub(super) async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_within(
            &self.addr,
            &self.token,
            BodyCodec::Bincode,
            &self.namespace,
            self.timeout,
        )
        .await
    }

    /// Connects again, every half second until `deadline`; past it the coordinator is lost
    /// (`waited`: how long it had, for the message).
    pub(super) async fn reconnect(
        &self,
        deadline: Instant,
        waited: Duration,
    ) -> Result<Client, ClientError> {
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Closed(format!(
                    " and did not come back within {waited:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(c) = self.connect().await {
                return Ok(c);
            }
        }
    }
}

/// Subscribes to the tasks of a wait (named, by tag and queue, or all); returns their states
/// now, cut down to `only` when given (after a reconnect: what was left).
pub(super) async fn watch(
    client: &mut Client,
    a: &WaitArgs,
    only: Option<&HashSet<TaskId>>,
) -> Result<HashMap<TaskId, TaskState>, ClientError> {
    let by_filter = !a.tag.is_empty() || a.queue.is_some() || a.batch.is_some();
    let filter = EventFilter {
        ids: a.select.ids.clone(),
        tags: a.tag.clone(),
        all: a.select.ids.is_empty() && !by_filter,
        queue: a.queue.clone(),
        batch: a.batch,
    };
    let snapshot = client.subscribe(filter).await?;
    Ok(snapshot
        .iter()
        .filter(|t| only.is_none_or(|ids| ids.contains(&t.id)))
        .map(|t| (t.id, t.state))
        .collect())
}

/// Waits for tasks to reach a final state, using the event stream (no polling). Named tasks are
/// waited for whatever their state; `--all` and the filters take the tasks that can still end
/// (not created, not ended), so that neither last week's failures nor tasks nobody will play
/// decide the outcome. A coordinator that goes away is waited for (`--reconnect-for`).
pub(super) async fn wait(
    mut client: Client,
    reach: &Reach,
    a: WaitArgs,
    json: bool,
) -> Result<i32> {
    let snapshot = watch(&mut client, &a, None).await?;
    let named = !a.select.ids.is_empty();
    let mut states: HashMap<TaskId, TaskState> = snapshot
        .into_iter()
        .filter(|(_, s)| named || (!s.is_final() && *s != TaskState::Created))
        .collect();
    let watched: HashSet<TaskId> = states.keys().copied().collect();
    let total = watched.len() as u64;
    let done =
        |st: &HashMap<TaskId, TaskState>| st.values().filter(|s| s.is_final()).count() as u64;
    let bar = if std::io::stderr().is_terminal() && !json {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            // `wide_msg`: the message is cut to the terminal, never wrapped.
            indicatif::ProgressStyle::with_template("{bar:20} {pos}/{len} {wide_msg}")
                .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut rate = Rate::default();
    let mut conn = Some(client);
    while done(&states) < total {
        if let Some(b) = &bar {
            let now_done = done(&states);
            rate.note(started.elapsed(), now_done);
            b.set_position(now_done);
            b.set_message(format!(
                "{} · {}",
                rate.describe(total - now_done),
                count_states(&states)
            ));
        }
        let ev = match conn.as_mut() {
            Some(c) => c.next_event().await,
            None => Err(ClientError::Closed(String::new())),
        };
        match ev {
            Ok(ev) => {
                if watched.contains(&ev.id) {
                    states.insert(ev.id, ev.state);
                }
            }
            Err(e) if is_lost(&e) => {
                // Back when the coordinator is: subscribe again to what is left.
                eprintln!("lost the coordinator; waiting for it to come back");
                let left: HashSet<TaskId> = states
                    .iter()
                    .filter(|(_, s)| !s.is_final())
                    .map(|(id, _)| *id)
                    .collect();
                let deadline = Instant::now() + a.reconnect_for;
                conn = None;
                while conn.is_none() {
                    let mut c = reach.reconnect(deadline, a.reconnect_for).await?;
                    if let Ok(now) = watch(&mut c, &a, Some(&left)).await {
                        states.extend(now);
                        conn = Some(c);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The bar goes; the line below says how it ended (printed after the bar, not on its line).
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let failed = states
        .values()
        .filter(|s| matches!(s, TaskState::Failed | TaskState::Killed))
        .count();
    if json {
        let v: BTreeMap<String, &str> = states
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_str()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if total == 0 {
        eprintln!("no task to wait for");
    } else {
        eprintln!(
            "{} ended in {:.1}s: {}",
            plural(total, "task"),
            started.elapsed().as_secs_f64(),
            count_states(&states)
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// How fast tasks end, over the last ten seconds: the rate and ETA of `task wait`'s bar. Tasks
/// that had ended before the wait began count for neither (the first sample is the start).
#[derive(Default)]
pub(super) struct Rate {
    /// (time since the wait began, tasks ended by then), oldest first.
    samples: std::collections::VecDeque<(Duration, u64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(10);

    /// Notes that `done` tasks had ended at `at`.
    pub(super) fn note(&mut self, at: Duration, done: u64) {
        self.samples.push_back((at, done));
        // Keep one sample older than the window, so that the window is always spanned.
        while self.samples.len() > 2 && at.saturating_sub(self.samples[1].0) >= Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Tasks per second, once the samples span half a second and something ended.
    pub(super) fn per_sec(&self) -> Option<f64> {
        let (&(t0, d0), &(t1, d1)) = (self.samples.front()?, self.samples.back()?);
        let span = (t1 - t0).as_secs_f64();
        (span >= 0.5 && d1 > d0).then(|| (d1 - d0) as f64 / span)
    }

    /// "12.3/s, about 41s left"; before there is a rate, "waiting for the first to end" or
    /// "measuring the rate".
    pub(super) fn describe(&self, remaining: u64) -> String {
        let ended = match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => b.1 > a.1,
            _ => false,
        };
        match self.per_sec() {
            None if ended => "measuring the rate".to_string(),
            None => "waiting for the first to end".to_string(),
            Some(r) => {
                let eta = Duration::from_secs_f64((remaining as f64 / r).ceil());
                format!(
                    "{}/s, about {} left",
                    three_digits(r),
                    tatzelwurm_protocol::cli::format_duration(eta)
                )
            }
        }
    }
}

/// A rate to three significant digits: 0.123, 1.23, 12.3, 123, 1234.
pub(super) fn three_digits(r: f64) -> String {
    match r {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r if r >= 1.0 => format!("{r:.2}"),
        r => format!("{r:.3}"),
    }
}

pub(super) fn count_states(states: &HashMap<TaskId, TaskState>) -> String {
    let mut counts: BTreeMap<TaskState, usize> = BTreeMap::new();
    for s in states.values() {
        *counts.entry(*s).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_last_seconds_and_the_eta_follows_it() {
        let mut r = Rate::default();
        let s = Duration::from_secs;
        r.note(s(0), 0);
        assert_eq!(r.describe(100), "waiting for the first to end");
        r.note(Duration::from_millis(100), 1);
        assert_eq!(r.describe(99), "measuring the rate");
        // A fast start, then 2 tasks a second for a long while: the rate forgets the start.
        r.note(s(1), 50);
        for t in 2..=30 {
            r.note(s(t), 50 + 2 * (t - 1));
        }
        assert!(
            (r.per_sec().unwrap() - 2.0).abs() < 0.01,
            "{:?}",
            r.per_sec()
        );
        assert_eq!(r.describe(10), "2.00/s, about 5s left");
        assert_eq!(three_digits(1234.5), "1234");
        assert_eq!(three_digits(12.345), "12.3");
        assert_eq!(three_digits(0.1234), "0.123");
    }
}
