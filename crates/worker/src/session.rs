//! The worker's life: connect, hand-shake, take dispatches, report, heartbeat; when the connection
//! drops, keep running, reconnect with backoff, reattach what still runs and resend every result
//! the coordinator has not acknowledged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tatzelwurm_protocol::client::{HandshakeError, handshake};
use tatzelwurm_protocol::transport::{Endpoint, Stream};
use tatzelwurm_protocol::{
    AttemptRef, AttemptReport, BlockType, CoordinatorToWorker, DEFAULT_MAX_FRAME, Dispatch, Hello,
    MessageCodec, Outcome, Role, WorkerHello, WorkerId, WorkerToCoordinator, now_ms,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::WorkerConfig;
use crate::handlers::Handlers;
use crate::runner::{Control, Runner};
use crate::touch::Touch;

/// Pieces of followed output waiting for the connection.
const OUTPUT_PIECES: usize = 256;

type Conn = Framed<Stream, MessageCodec<CoordinatorToWorker, WorkerToCoordinator>>;

/// How the worker is asked to stop.
#[derive(Clone, Default)]
pub struct Stop {
    /// Take nothing new, let running tasks finish (up to the drain grace), then exit.
    pub drain: CancellationToken,
    /// Hand back what runs and exit now.
    pub now: CancellationToken,
}

/// A dispatch taken beyond the slots (`prefetch`), waiting for one to free.
struct Held {
    dispatch: Box<Dispatch>,
    /// Paused before it started: it waits until resumed, slot or not.
    paused: bool,
    /// Somebody follows its output: streamed from its start.
    follow: bool,
}

struct State {
    cfg: WorkerConfig,
    handlers: Handlers,
    runner: Runner,
    id: Option<WorkerId>,
    running: HashMap<AttemptRef, mpsc::UnboundedSender<Control>>,
    /// Dispatches beyond the slots, started in this order as slots free.
    held: VecDeque<Held>,
    /// A `reattach` went out on this connection and its answer has not come: held tasks wait
    /// for it, since it may drop them (given to another worker while this one was away).
    reattach_pending: bool,
    /// Attempts the coordinator told us to drop: not reported when this worker stopped them, but
    /// reported late when they had ended on their own.
    dropped: HashSet<AttemptRef>,
    /// Finished attempts whose reports the coordinator has not acknowledged.
    unacked: HashMap<AttemptRef, AttemptReport>,
    /// Reports of held tasks given back, in `unacked`, not yet sent on this connection.
    unsent: Vec<AttemptRef>,
    /// Attempts started whose `started` is not sent yet: each with when it started and when
    /// its `started` is due (`WorkerConfig::started_after`), in start order.
    unstarted: VecDeque<(AttemptRef, u64, Instant)>,
    draining: bool,
    /// The heartbeat interval the coordinator asked for.
    heartbeat: Duration,
    /// When the coordinator was last heard, and the lease it grants (silent for longer, this
    /// worker's tasks are given away); the runner reads it too.
    touch: Arc<Touch>,
    drain_deadline: Option<Instant>,
    /// Set when stopping at once: exit by then even with undelivered reports.
    exit_deadline: Option<Instant>,
    /// Reports of finished attempts are fed and not yet written: written by then at the latest
    /// (`report_linger`), or as soon as [`State::reports_may_wait`] says no. Another write
    /// before it takes them along.
    reports_due: Option<Instant>,
}

/// Why a connection ended.
enum End {
    Lost(String),
    Done,
}

/// Runs a worker until it is stopped (see [`Stop`]) and everything it ran is acknowledged.
pub async fn run(cfg: WorkerConfig, handlers: Handlers, stop: Stop) -> Result<()> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    // Output of followed commands; bounded, so that a command that writes faster than the
    // connection carries loses pieces (the follower sees the gap) instead of filling memory.
    let (output_tx, mut output_rx) = mpsc::channel(OUTPUT_PIECES);
    let mut st = State::new(cfg, handlers, done_tx, output_tx);
    let mut backoff = Duration::from_millis(100);
    let mut failures: u64 = 0;
    loop {
        if st.finished() {
            info!("nothing left to run or report; exiting");
            return Ok(());
        }
        // A handshake that gets no answer (a service of another kind on that port) is given
        // up after a while, and signals are obeyed while it waits.
        let (draining, exiting) = (st.draining, st.exit_deadline.is_some());
        let within = st.cfg.connect_timeout;
        let attempt = tokio::select! {
            r = tokio::time::timeout(within, connect(&mut st)) => {
                r.unwrap_or_else(|_| Err(anyhow::anyhow!(
                    "no answer within {within:?}: is it a tatzelwurm coordinator (or the right port)?"
                )))
            }
            _ = stop.drain.cancelled(), if !draining => {
                st.start_drain();
                continue;
            }
            _ = stop.now.cancelled(), if !exiting => {
                st.stop_now();
                continue;
            }
        };
        match attempt {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                failures = 0;
                match session(&mut st, conn, &mut done_rx, &mut output_rx, &stop).await {
                    End::Done => return Ok(()),
                    End::Lost(why) => {
                        // Nobody follows through a dead connection; the coordinator asks again
                        // after the reattach, if somebody still does.
                        for ctl in st.running.values() {
                            let _ = ctl.send(Control::Follow(false));
                        }
                        while output_rx.try_recv().is_ok() {}
                        warn!(reason = %why, running = st.running.len(), unacked = st.unacked.len(), "connection lost; reconnecting")
                    }
                }
            }
            Err(e) => {
                if let Some(HandshakeError::Rejected { kind, message }) =
                    e.downcast_ref::<HandshakeError>()
                    && matches!(
                        kind,
                        tatzelwurm_protocol::RejectKind::BadToken
                            | tatzelwurm_protocol::RejectKind::VersionMismatch
                    )
                {
                    anyhow::bail!("the coordinator refused this worker: {message}");
                }
                failures += 1;
                // A coordinator down for a day must not fill the log: the 1st, 2nd, 4th, 8th…
                // failure in a row is a warning, the others are debug lines.
                if failures.is_power_of_two() {
                    warn!(coordinator = %st.cfg.coordinator, error = %format!("{e:#}"), failures, retry_in_ms = backoff.as_millis() as u64, "cannot connect");
                } else {
                    debug!(coordinator = %st.cfg.coordinator, error = %format!("{e:#}"), failures, "cannot connect");
                }
                // Keep collecting results and obeying signals while we wait.
                let until = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        _ = sleep_until(until) => break,
                        Some((a, r)) = done_rx.recv() => { st.finished_attempt(a, r); }
                        _ = stop.drain.cancelled(), if !st.draining => st.start_drain(),
                        _ = stop.now.cancelled(), if st.exit_deadline.is_none() => st.stop_now(),
                        _ = async { sleep_until(st.drain_deadline.expect("guarded")).await }, if st.drain_deadline.is_some() => st.hand_back_all("drain grace ended"),
                        _ = async { sleep_until(st.exit_deadline.expect("guarded")).await }, if st.exit_deadline.is_some() => {
                            warn!(unreported = st.unacked.len(), "exiting with reports the coordinator never acknowledged");
                            return Ok(());
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn connect(st: &mut State) -> Result<Conn> {
    if let Some(path) = &st.cfg.token_file
        && let Ok(t) = std::fs::read_to_string(path)
    {
        st.cfg.token = t.trim().to_string();
    }
    let stream = Endpoint::parse(&st.cfg.coordinator).connect().await?;
    // The coordinator's lease for this connection runs from the hello it reads: a welcome read
    // long after (this worker was frozen meanwhile) does not make the silence short.
    let hello_at = Instant::now();
    let hello = Hello::new(
        Role::Worker(WorkerHello {
            block: st.cfg.block,
            slots: st.cfg.slots,
            name: st.cfg.name.clone(),
            host: st.cfg.host.clone(),
            tags: st.cfg.tags.clone(),
            handlers: st.handlers.names(),
            previous_id: st.id,
            streams_output: true,
            prefetch: st.cfg.prefetch,
            custom_only: false,
        }),
        st.cfg.codec,
        st.cfg.token.clone(),
    );
    let (mut conn, welcome) =
        handshake::<_, CoordinatorToWorker, WorkerToCoordinator>(stream, &hello, DEFAULT_MAX_FRAME)
            .await?;
    let id = WorkerId(welcome.peer_id);
    if st.id.is_some_and(|old| old != id) {
        warn!(old = %st.id.unwrap_or(id), new = %id, "the coordinator gave a new id; running tasks will be dropped if it does not know them");
    }
    st.id = Some(id);
    if let Some(path) = &st.cfg.id_file {
        let _ = std::fs::write(path, format!("{}\n", id.0));
    }
    info!(worker = %id, coordinator = %st.cfg.coordinator, heartbeat_ms = welcome.heartbeat_ms, "connected");
    // Claim what runs and what finished unacknowledged, so that none of it is given to another.
    // Held tasks are claimed too: they were given to this worker and are still its own.
    let claims: Vec<AttemptRef> = st
        .running
        .keys()
        .chain(st.held.iter().map(|h| &h.dispatch.attempt))
        .chain(st.unacked.keys())
        .copied()
        .collect();
    st.reattach_pending = !claims.is_empty() || hello_had_id(&hello);
    if st.reattach_pending {
        conn.feed(WorkerToCoordinator::Reattach { running: claims })
            .await?;
    }
    for (&attempt, report) in &st.unacked {
        conn.feed(WorkerToCoordinator::Finished {
            attempt,
            report: report.clone(),
        })
        .await?;
    }
    st.unsent.clear();
    if st.draining {
        conn.feed(WorkerToCoordinator::Draining).await?;
    }
    conn.flush().await?;
    st.heartbeat = Duration::from_millis(welcome.heartbeat_ms.max(10));
    st.touch
        .set_lease(Duration::from_millis(welcome.lease_ms.max(10)));
    st.touch.restart_at(hello_at);
    Ok(conn)
}

fn hello_had_id(h: &Hello) -> bool {
    matches!(&h.role, Role::Worker(w) if w.previous_id.is_some())
}

impl State {
    /// A worker before its first connection; attempts report their ends on `done`.
    fn new(
        cfg: WorkerConfig,
        handlers: Handlers,
        done: mpsc::UnboundedSender<(AttemptRef, AttemptReport)>,
        output: mpsc::Sender<WorkerToCoordinator>,
    ) -> Self {
        let sync_slots = (cfg.block == BlockType::Sync).then_some(cfg.slots);
        let touch = Arc::new(Touch::new(Duration::from_secs(30)));
        let runner = Runner::new(
            handlers.clone(),
            sync_slots,
            cfg.kill_grace,
            cfg.spawn,
            touch.clone(),
            done,
            output,
        );
        State {
            cfg,
            handlers,
            runner,
            id: None,
            running: HashMap::new(),
            held: VecDeque::new(),
            reattach_pending: false,
            dropped: HashSet::new(),
            unacked: HashMap::new(),
            unsent: Vec::new(),
            unstarted: VecDeque::new(),
            draining: false,
            heartbeat: Duration::from_secs(5),
            touch,
            drain_deadline: None,
            exit_deadline: None,
            reports_due: None,
        }
    }

    /// Whether reports fed may wait for more to share their write: only while a held task can
    /// start in the slot a report freed, so that no slot waits for the coordinator's answer to
    /// it. With nothing startable held (no prefetch, all held paused, a reattach unanswered, the
    /// coordinator silent past the lease) the coordinator must hear at once to send the next
    /// task.
    fn reports_may_wait(&self) -> bool {
        !self.cfg.report_linger.is_zero()
            && !self.reattach_pending
            && !self.touch.out_of_touch()
            && self.held.iter().any(|h| !h.paused)
    }

    fn finished(&self) -> bool {
        (self.draining || self.exit_deadline.is_some())
            && self.running.is_empty()
            && self.held.is_empty()
            && self.unacked.is_empty()
    }

    /// Records an attempt's end; true when its report is to go to the coordinator (it waits in
    /// `unacked` until acknowledged, so a reconnect sends it again).
    fn finished_attempt(&mut self, attempt: AttemptRef, report: AttemptReport) -> bool {
        self.running.remove(&attempt);
        // A dropped attempt that this worker stopped is not reported. One that had ended on its
        // own before the drop reached it (its command finished while the worker was frozen, say)
        // is: the coordinator keeps it as a late report, as DESIGN.md promises.
        if self.dropped.remove(&attempt) && report.outcome == Some(Outcome::Killed) {
            debug!(task = %attempt.task, "dropped attempt stopped; not reported");
            return false;
        }
        // A success is the common case and the coordinator keeps its record: logging each one
        // at info costs a formatted line per task (a few per cent of a worker running small
        // commands). What went otherwise stays visible at the default level.
        if report.outcome == Some(Outcome::Succeeded) {
            debug!(task = %attempt.task, attempt = attempt.attempt, "attempt succeeded");
        } else {
            info!(task = %attempt.task, attempt = attempt.attempt, outcome = ?report.outcome, error = report.error.as_deref().unwrap_or(""), "attempt ended");
        }
        self.unacked.insert(attempt, report);
        true
    }

    /// The `started` messages due at `now`: of the attempts that started `started_after` ago
    /// or more, those that still run (an ended one's report said it started).
    fn due_started(&mut self, now: Instant) -> Vec<(AttemptRef, u64)> {
        let mut due = Vec::new();
        while let Some(&(attempt, at_ms, at)) = self.unstarted.front() {
            if at > now {
                break;
            }
            self.unstarted.pop_front();
            if self.running.contains_key(&attempt) {
                due.push((attempt, at_ms));
            }
        }
        due
    }

    /// Forgets the held-back `started` of attempts that ended, from the oldest on, up to the
    /// first that still runs: its due time is then the next the session wakes for (a command
    /// that ends before its `started` is due must not wake the worker at that time).
    fn drop_ended_started(&mut self) {
        while let Some((attempt, _, _)) = self.unstarted.front() {
            if self.running.contains_key(attempt) {
                break;
            }
            self.unstarted.pop_front();
        }
    }

    /// Takes the held-back `started` of a running attempt, to send it now (its output is about
    /// to follow): when it started, or `None` when its `started` went out already.
    fn take_started(&mut self, attempt: AttemptRef) -> Option<u64> {
        if !self.running.contains_key(&attempt) {
            return None;
        }
        let i = self.unstarted.iter().position(|(a, _, _)| *a == attempt)?;
        self.unstarted.remove(i).map(|(_, at_ms, _)| at_ms)
    }

    fn start_drain(&mut self) {
        info!(
            running = self.running.len(),
            held = self.held.len(),
            grace_s = self.cfg.drain_grace.as_secs(),
            "draining: taking no new tasks"
        );
        self.draining = true;
        self.drain_deadline = Some(Instant::now() + self.cfg.drain_grace);
        // Held tasks never started: another worker can have them now.
        self.hand_back_held("the worker is draining");
    }

    /// Gives back every held task: each gets a `handed_back` report, sent with the others that
    /// wait in `unacked` (at once by [`send_unsent`], or after the next connect).
    fn hand_back_held(&mut self, why: &str) {
        while let Some(h) = self.held.pop_front() {
            self.end_unstarted(h.dispatch.attempt, Outcome::HandedBack, why);
        }
    }

    /// Records the report of a held attempt that ends without having started (given back or
    /// killed), to be sent with the others in `unacked`.
    fn end_unstarted(&mut self, attempt: AttemptRef, outcome: Outcome, why: &str) {
        info!(task = %attempt.task, attempt = attempt.attempt, ?outcome, reason = why, "a held task ends unstarted");
        let report = AttemptReport {
            outcome: Some(outcome),
            error: Some(why.into()),
            ended_ms: now_ms(),
            ..Default::default()
        };
        self.unacked.insert(attempt, report);
        self.unsent.push(attempt);
    }

    /// Where `attempt` waits among the held dispatches.
    fn held_index(&self, attempt: AttemptRef) -> Option<usize> {
        self.held.iter().position(|h| h.dispatch.attempt == attempt)
    }

    /// A held dispatch, to mark.
    fn held_mut(&mut self, attempt: AttemptRef) -> Option<&mut Held> {
        let i = self.held_index(attempt)?;
        self.held.get_mut(i)
    }

    /// Takes a held dispatch out of the queue.
    fn take_held(&mut self, attempt: AttemptRef) -> Option<Held> {
        let i = self.held_index(attempt)?;
        self.held.remove(i)
    }

    fn hand_back_all(&mut self, why: &str) {
        self.drain_deadline = None;
        for ctl in self.running.values() {
            let _ = ctl.send(Control::Stop(Outcome::HandedBack, why.to_string()));
        }
    }

    fn stop_now(&mut self) {
        info!(
            running = self.running.len(),
            "stopping now: handing back what runs"
        );
        self.draining = true;
        self.hand_back_all("the worker stopped");
        self.hand_back_held("the worker stopped");
        self.exit_deadline = Some(Instant::now() + Duration::from_secs(3) + self.cfg.kill_grace);
    }
}

async fn session(
    st: &mut State,
    mut conn: Conn,
    done_rx: &mut mpsc::UnboundedReceiver<(AttemptRef, AttemptReport)>,
    output_rx: &mut mpsc::Receiver<WorkerToCoordinator>,
    stop: &Stop,
) -> End {
    // Reports left waiting on the last connection went with it; the reattach carries them.
    st.reports_due = None;
    let hb = st.heartbeat;
    let mut ticker = tokio::time::interval(hb);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if st.finished() {
            let _ = conn.close().await;
            info!("all reports acknowledged; exiting");
            return End::Done;
        }
        let res: Result<(), String> = tokio::select! {
            frame = conn.next() => match frame {
                None => Err("the coordinator closed the connection".into()),
                Some(Err(e)) => Err(format!("bad frame from the coordinator: {e}")),
                Some(Ok(msg)) => {
                    // Heard of nothing for longer than the lease before this frame (frozen,
                    // cut off): the coordinator has given this worker's tasks away, so a
                    // dispatch read now was sent before that and is no longer its own.
                    let out_of_touch = st.touch.out_of_touch();
                    st.touch.heard();
                    // What else has already arrived: a worker that wakes from a freeze finds
                    // the coordinator's goodbye (its lease ended) behind the old dispatches,
                    // perhaps after a heartbeat answer that makes the silence look short.
                    let mut batch = vec![msg];
                    let mut ended = false;
                    while let Some(next) = conn.next().now_or_never() {
                        match next {
                            Some(Ok(m)) => batch.push(m),
                            _ => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    let given_away = out_of_touch
                        || ended
                        || batch
                            .iter()
                            .any(|m| matches!(m, CoordinatorToWorker::Shutdown { .. }));
                    let mut res = Ok(());
                    for m in batch {
                        res = handle(st, &mut conn, m, given_away).await;
                        if res.is_err() {
                            break;
                        }
                    }
                    // What the handling fed (the `started` of each dispatch), in one write.
                    if res.is_ok() {
                        res = conn.flush().await.map_err(|e| e.to_string());
                    }
                    if res.is_ok() && ended {
                        res = Err("the coordinator closed the connection".into());
                    }
                    res
                }
            },
            Some(first) = done_rx.recv() => {
                // Every report that is ready, in one write. A dropped attempt whose command had
                // already ended is reported too (a late report): deciding from `dropped` alone
                // left it unsent until a reconnect.
                let mut next = Some(first);
                let mut res = Ok(());
                while let Some((a, r)) = next {
                    // The last pieces of its output were read before it ended: they go first.
                    while let Ok(p) = output_rx.try_recv() {
                        if let Err(e) = conn.feed(p).await {
                            return End::Lost(e.to_string());
                        }
                    }
                    if st.finished_attempt(a, r.clone())
                        && let Err(e) = conn.feed(WorkerToCoordinator::Finished { attempt: a, report: r }).await
                    {
                        res = Err(e.to_string());
                        break;
                    }
                    next = done_rx.try_recv().ok();
                }
                st.drop_ended_started();
                // Written below at once, or after the linger with the reports that follow.
                if res.is_ok() && st.reports_due.is_none() {
                    st.reports_due = Some(Instant::now() + st.cfg.report_linger);
                }
                res
            }
            _ = async { sleep_until(st.reports_due.expect("guarded")).await }, if st.reports_due.is_some() => {
                write_reports(st, &mut conn).await
            }
            Some(p) = output_rx.recv() => {
                conn.send(p).await.map_err(|e| e.to_string())
            }
            _ = async { sleep_until(st.unstarted.front().expect("guarded").2).await }, if !st.unstarted.is_empty() => {
                match feed_due_started(st, &mut conn, Instant::now()).await {
                    Ok(()) => conn.flush().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
            _ = ticker.tick() => {
                let silence = st.touch.silence();
                if silence > hb * 4 + Duration::from_secs(2) {
                    Err(format!("no word from the coordinator for {} ms", silence.as_millis()))
                } else {
                    conn.send(WorkerToCoordinator::Heartbeat { running: st.running.len() as u32 }).await.map_err(|e| e.to_string())
                }
            }
            _ = stop.drain.cancelled(), if !st.draining => {
                st.start_drain();
                conn.send(WorkerToCoordinator::Draining).await.map_err(|e| e.to_string())
            }
            _ = stop.now.cancelled(), if st.exit_deadline.is_none() => {
                st.stop_now();
                conn.send(WorkerToCoordinator::Draining).await.map_err(|e| e.to_string())
            }
            _ = async { sleep_until(st.drain_deadline.expect("guarded")).await }, if st.drain_deadline.is_some() => {
                st.hand_back_all("drain grace ended");
                Ok(())
            }
            _ = async { sleep_until(st.exit_deadline.expect("guarded")).await }, if st.exit_deadline.is_some() => {
                warn!(unreported = st.unacked.len(), "exiting with reports the coordinator never acknowledged");
                return End::Done;
            }
        };
        // Slots freed by the reports above (or a held task resumed) start what is held, unless
        // the coordinator was silent for longer than the lease: it may have given those away.
        let res = match res {
            Ok(()) if !st.touch.out_of_touch() => start_held(st, &mut conn).await,
            other => other,
        };
        let res = match res {
            Ok(()) => send_unsent(st, &mut conn).await,
            other => other,
        };
        // Reports fed above go now unless a held task took each freed slot.
        let res = match res {
            Ok(()) if st.reports_due.is_some() && !st.reports_may_wait() => {
                write_reports(st, &mut conn).await
            }
            other => other,
        };
        if let Err(why) = res {
            return End::Lost(why);
        }
    }
}

/// Starts held tasks while slots are free (a paused one waits for its resume).
/// Writes the reports fed and left waiting for company.
async fn write_reports(st: &mut State, conn: &mut Conn) -> Result<(), String> {
    st.reports_due = None;
    conn.flush().await.map_err(|e| e.to_string())
}

async fn start_held(st: &mut State, conn: &mut Conn) -> Result<(), String> {
    if st.reattach_pending {
        return Ok(());
    }
    // Only a followed task's `started` is fed at its start: written at once. Reports waiting
    // for their linger are not written by a start that fed nothing.
    let mut fed = false;
    while st.running.len() < st.cfg.slots as usize {
        let Some(i) = st.held.iter().position(|h| !h.paused) else {
            break;
        };
        let h = st.held.remove(i).expect("found");
        fed |= h.follow;
        start(st, conn, h.dispatch, h.follow).await?;
    }
    if fed {
        conn.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sends the reports of held tasks given back since the last call.
async fn send_unsent(st: &mut State, conn: &mut Conn) -> Result<(), String> {
    if st.unsent.is_empty() {
        return Ok(());
    }
    for attempt in std::mem::take(&mut st.unsent) {
        if let Some(report) = st.unacked.get(&attempt) {
            conn.feed(WorkerToCoordinator::Finished {
                attempt,
                report: report.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    conn.flush().await.map_err(|e| e.to_string())
}

/// Starts an attempt now. Its `started` is held back (`started_after`), unless somebody
/// follows its output: then it is fed at once, ahead of that output, for the caller to flush.
async fn start(
    st: &mut State,
    conn: &mut Conn,
    d: Box<Dispatch>,
    follow: bool,
) -> Result<(), String> {
    let attempt = d.attempt;
    debug!(task = %attempt.task, attempt = attempt.attempt, payload = %d.payload.describe(), "starting");
    let ctl = st.runner.start(*d);
    if follow {
        let _ = ctl.send(Control::Follow(true));
    }
    st.running.insert(attempt, ctl);
    if follow {
        feed_started(conn, attempt, now_ms()).await
    } else {
        st.unstarted
            .push_back((attempt, now_ms(), Instant::now() + st.cfg.started_after));
        Ok(())
    }
}

/// Feeds one `started`, for the caller to flush.
async fn feed_started(conn: &mut Conn, attempt: AttemptRef, at_ms: u64) -> Result<(), String> {
    conn.feed(WorkerToCoordinator::Started { attempt, at_ms })
        .await
        .map_err(|e| e.to_string())
}

/// Feeds the `started` of the attempts that have run for `started_after` and still run, for
/// the caller to flush.
async fn feed_due_started(st: &mut State, conn: &mut Conn, now: Instant) -> Result<(), String> {
    for (attempt, at_ms) in st.due_started(now) {
        feed_started(conn, attempt, at_ms).await?;
    }
    Ok(())
}

/// Handles one message. `out_of_touch`: nothing came from the coordinator for longer than the
/// lease before it, or the coordinator's goodbye came with it; a dispatch is then handed back
/// instead of started (it was given away meanwhile, and starting it would run the task twice).
/// What it feeds without sending, the caller flushes.
async fn handle(
    st: &mut State,
    conn: &mut Conn,
    msg: CoordinatorToWorker,
    out_of_touch: bool,
) -> Result<(), String> {
    match msg {
        CoordinatorToWorker::Dispatch(d) => {
            let attempt = d.attempt;
            if st.running.contains_key(&attempt)
                || st.unacked.contains_key(&attempt)
                || st.held_index(attempt).is_some()
            {
                debug!(task = %attempt.task, "duplicate dispatch ignored");
                return Ok(());
            }
            let refuse = if st.draining {
                Some("the worker is draining")
            } else if out_of_touch {
                warn!(task = %attempt.task, attempt = attempt.attempt, "a dispatch read after a silence longer than the lease; handed back, not started");
                Some(
                    "the worker heard nothing from the coordinator for longer than the lease before this dispatch",
                )
            } else {
                None
            };
            if let Some(why) = refuse {
                let report = AttemptReport {
                    outcome: Some(Outcome::HandedBack),
                    error: Some(why.into()),
                    ended_ms: now_ms(),
                    ..Default::default()
                };
                st.unacked.insert(attempt, report.clone());
                return conn
                    .send(WorkerToCoordinator::Finished { attempt, report })
                    .await
                    .map_err(|e| e.to_string());
            }
            // Beyond the slots (the coordinator used this worker's prefetch room): held until
            // one frees. A worker without prefetch starts whatever it is sent, as it always did.
            if st.cfg.prefetch > 0 && st.running.len() >= st.cfg.slots as usize {
                debug!(task = %attempt.task, attempt = attempt.attempt, held = st.held.len() + 1, "holding until a slot frees");
                st.held.push_back(Held {
                    dispatch: d,
                    paused: false,
                    follow: false,
                });
                return Ok(());
            }
            // What it feeds, the caller flushes once the messages that came with it are handled.
            start(st, conn, d, false).await?;
        }
        CoordinatorToWorker::Kill { attempt } => {
            if let Some(ctl) = st.running.get(&attempt) {
                info!(task = %attempt.task, "killing");
                let _ = ctl.send(Control::Stop(Outcome::Killed, "killed on request".into()));
            } else if st.take_held(attempt).is_some() {
                st.end_unstarted(
                    attempt,
                    Outcome::Killed,
                    "killed on request before it started",
                );
            }
        }
        CoordinatorToWorker::Pause { attempt } => {
            if let Some(ctl) = st.running.get(&attempt) {
                let _ = ctl.send(Control::Pause);
            } else if let Some(h) = st.held_mut(attempt) {
                h.paused = true;
            }
        }
        CoordinatorToWorker::Resume { attempt } => {
            if let Some(ctl) = st.running.get(&attempt) {
                let _ = ctl.send(Control::Resume);
            } else if let Some(h) = st.held_mut(attempt) {
                h.paused = false;
            }
        }
        CoordinatorToWorker::Follow { attempt, on } => {
            // Its output follows its `started`.
            if on && let Some(at_ms) = st.take_started(attempt) {
                feed_started(conn, attempt, at_ms).await?;
            }
            if let Some(ctl) = st.running.get(&attempt) {
                let _ = ctl.send(Control::Follow(on));
            } else if let Some(h) = st.held_mut(attempt) {
                h.follow = on;
            }
        }
        CoordinatorToWorker::Revoke { attempt } => {
            // Started meanwhile (its `started` may still be held back) or unknown: nothing to
            // give back.
            if st.take_held(attempt).is_some() {
                st.end_unstarted(
                    attempt,
                    Outcome::HandedBack,
                    "given back before it started: another worker has a free slot",
                );
            }
        }
        CoordinatorToWorker::Ack { attempt } => {
            st.unacked.remove(&attempt);
        }
        CoordinatorToWorker::Reattached { keep, drop } => {
            st.reattach_pending = false;
            info!(kept = keep.len(), dropped = drop.len(), "reattached");
            for a in drop {
                // A held task given to another meanwhile: forgotten, it never started.
                if st.take_held(a).is_some() {
                    continue;
                }
                if let Some(ctl) = st.running.get(&a) {
                    st.dropped.insert(a);
                    let _ = ctl.send(Control::Stop(
                        Outcome::Killed,
                        "the coordinator gave this task to another worker".into(),
                    ));
                }
            }
        }
        CoordinatorToWorker::HeartbeatAck => {}
        CoordinatorToWorker::Error(e) => {
            warn!(kind = e.kind.as_str(), message = %e.message, "the coordinator refused a message")
        }
        CoordinatorToWorker::Shutdown { reason } => {
            return Err(format!("the coordinator is shutting down ({reason})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::ids::TaskId;

    fn state() -> State {
        let (done, _) = mpsc::unbounded_channel();
        let (output, _) = mpsc::channel(1);
        let cfg = WorkerConfig::new("127.0.0.1:1", BlockType::Async);
        State::new(cfg, Handlers::new(), done, output)
    }

    fn attempt() -> AttemptRef {
        AttemptRef {
            task: TaskId::new(),
            attempt: 1,
        }
    }

    fn report(outcome: Outcome) -> AttemptReport {
        AttemptReport {
            outcome: Some(outcome),
            ..AttemptReport::default()
        }
    }

    fn held(a: AttemptRef) -> Held {
        Held {
            dispatch: Box::new(Dispatch {
                attempt: a,
                name: None,
                payload: tatzelwurm_protocol::Payload::Sleep { duration_ms: 1 },
                timeout_ms: None,
                user_key: None,
                user_data: Default::default(),
            }),
            paused: false,
            follow: false,
        }
    }

    /// A worker holding two attempts, in this order.
    fn holding_two() -> (State, AttemptRef, AttemptRef) {
        let mut st = state();
        let (a, b) = (attempt(), attempt());
        st.held.push_back(held(a));
        st.held.push_back(held(b));
        (st, a, b)
    }

    #[test]
    fn a_started_goes_out_once_due_and_only_for_an_attempt_that_still_runs() {
        let mut st = state();
        let (ended, runs, followed) = (attempt(), attempt(), attempt());
        let t0 = Instant::now();
        for (i, a) in [ended, runs, followed].into_iter().enumerate() {
            let (ctl, _) = mpsc::unbounded_channel();
            st.running.insert(a, ctl);
            st.unstarted
                .push_back((a, 100 + i as u64, t0 + st.cfg.started_after));
        }
        // `ended` reports before its `started` is due: its report says it ran, and the session
        // no longer wakes for it.
        st.running.remove(&ended);
        st.drop_ended_started();
        assert_eq!(st.unstarted.front().map(|u| u.0), Some(runs));
        assert_eq!(st.due_started(t0), vec![], "none due yet");
        // A follow wants the output of `followed` now: its `started` goes first.
        assert_eq!(st.take_started(followed), Some(102));
        assert_eq!(st.take_started(followed), None, "taken once");
        assert_eq!(st.due_started(t0 + st.cfg.started_after), vec![(runs, 101)]);
        assert!(st.unstarted.is_empty());
    }

    #[test]
    fn reports_wait_for_company_only_while_a_held_task_can_take_the_freed_slot() {
        let mut st = state();
        assert!(
            !st.reports_may_wait(),
            "nothing held: the next task must be asked for"
        );
        st.held.push_back(held(attempt()));
        assert!(st.reports_may_wait());
        st.held[0].paused = true;
        assert!(!st.reports_may_wait(), "a paused held task does not start");
        st.held[0].paused = false;
        st.reattach_pending = true;
        assert!(
            !st.reports_may_wait(),
            "held tasks wait for the reattach's answer"
        );
        st.reattach_pending = false;
        st.touch.set_lease(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            !st.reports_may_wait(),
            "out of touch: held tasks do not start"
        );
        st.touch.set_lease(Duration::from_secs(30));
        st.cfg.report_linger = Duration::ZERO;
        assert!(
            !st.reports_may_wait(),
            "a linger of zero sends each at once"
        );
    }

    #[test]
    fn a_draining_worker_gives_back_what_it_holds_and_waits_for_the_acks() {
        let (mut st, a, b) = holding_two();
        st.start_drain();
        assert!(st.held.is_empty());
        assert_eq!(st.unsent, vec![a, b], "to be sent, in order");
        for x in [a, b] {
            assert_eq!(st.unacked[&x].outcome, Some(Outcome::HandedBack));
        }
        assert!(!st.finished(), "not before the coordinator has the reports");
        st.unacked.clear();
        assert!(st.finished());
    }

    #[test]
    fn a_held_task_is_taken_out_by_its_attempt_only() {
        let (mut st, a, b) = holding_two();
        assert!(st.take_held(attempt()).is_none(), "not held here");
        assert_eq!(st.take_held(b).map(|h| h.dispatch.attempt), Some(b));
        assert_eq!(st.held.len(), 1);
        assert_eq!(st.held[0].dispatch.attempt, a);
    }

    #[test]
    fn an_attempt_that_ended_on_its_own_after_its_drop_is_reported_late() {
        // The command finished while the worker was frozen; the coordinator's drop reached the
        // worker before the command's end did. The result is a late report, sent now.
        let mut st = state();
        let a = attempt();
        st.dropped.insert(a);
        assert!(st.finished_attempt(a, report(Outcome::Succeeded)));
        assert!(st.unacked.contains_key(&a), "kept until acknowledged");
        assert!(!st.dropped.contains(&a));
    }

    #[test]
    fn a_dropped_attempt_the_worker_stopped_is_not_reported() {
        let mut st = state();
        let a = attempt();
        st.dropped.insert(a);
        assert!(!st.finished_attempt(a, report(Outcome::Killed)));
        assert!(st.unacked.is_empty());
    }

    #[test]
    fn an_attempt_of_this_worker_is_reported_and_waits_for_its_ack() {
        let mut st = state();
        let a = attempt();
        assert!(st.finished_attempt(a, report(Outcome::Failed)));
        assert_eq!(st.unacked[&a].outcome, Some(Outcome::Failed));
    }
}
