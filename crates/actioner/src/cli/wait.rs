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
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut conn = Some(client);
    while done(&states) < total {
        if let Some(b) = &bar {
            b.set_position(done(&states));
            b.set_message(count_states(&states));
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
                    if Instant::now() > deadline {
                        return Err(ClientError::Closed(format!(
                            " and did not come back within {:?}",
                            a.reconnect_for
                        ))
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(mut c) = reach.connect().await
                        && let Ok(now) = watch(&mut c, &a, Some(&left)).await
                    {
                        states.extend(now);
                        conn = Some(c);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(b) = &bar {
        b.set_position(total);
        b.finish_with_message(count_states(&states));
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
