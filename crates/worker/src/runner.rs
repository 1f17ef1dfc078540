//! Runs one attempt of a task on its own tokio task and reports how it ended. A sync worker also
//! holds one of its `slots` permits for the whole attempt, so it never runs more at once.

use std::sync::Arc;
use std::time::Duration;

use tatzelwurm_protocol::{
    AttemptRef, AttemptReport, Dispatch, Outcome, Payload, WorkerToCoordinator, now_ms,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::warn;

use crate::exec::{Spawn, run_exec};
use crate::handlers::{Handler, Handlers, TaskInput, TaskOutput};
use crate::touch::Touch;

/// Orders for a running attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Suspend (SIGSTOP for exec; a sleep stops its clock).
    Pause,
    /// Continue.
    Resume,
    /// End it now with this outcome and reason (killed, handed back).
    Stop(Outcome, String),
    /// Send the command's output as it is read (after what the tails hold), or stop sending.
    Follow(bool),
}

/// Starts attempts and sends their reports to one channel.
#[derive(Clone)]
pub struct Runner {
    handlers: Handlers,
    /// Present on sync workers: one permit per slot.
    blocking_slots: Option<Arc<Semaphore>>,
    kill_grace: Duration,
    spawn: Spawn,
    /// When the coordinator was last heard: an attempt whose start comes after a silence past
    /// the lease is handed back instead.
    touch: Arc<Touch>,
    done: mpsc::UnboundedSender<(AttemptRef, AttemptReport)>,
    /// Where followed commands send their output (`output` messages, ready for the connection).
    output: mpsc::Sender<WorkerToCoordinator>,
}

impl Runner {
    /// A runner whose reports go to `done`, and the output of followed commands to `output`.
    pub fn new(
        handlers: Handlers,
        sync_slots: Option<u32>,
        kill_grace: Duration,
        spawn: Spawn,
        touch: Arc<Touch>,
        done: mpsc::UnboundedSender<(AttemptRef, AttemptReport)>,
        output: mpsc::Sender<WorkerToCoordinator>,
    ) -> Self {
        Runner {
            handlers,
            blocking_slots: sync_slots.map(|n| Arc::new(Semaphore::new(n as usize))),
            kill_grace,
            spawn,
            touch,
            done,
            output,
        }
    }

    /// Starts an attempt; returns the channel that controls it.
    pub fn start(&self, d: Dispatch) -> mpsc::UnboundedSender<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = match &me.blocking_slots {
                Some(s) => Some(s.clone().acquire_owned().await.expect("never closed")),
                None => None,
            };
            let attempt = d.attempt;
            // The worker was frozen or cut off between accepting the dispatch and now, for longer
            // than the lease: the task may run elsewhere already (CI's fault campaign saw a
            // worker stopped right after it read its dispatches start them when it woke).
            let report = if me.touch.out_of_touch() {
                warn!(task = %attempt.task, attempt = attempt.attempt, silence_ms = me.touch.silence().as_millis() as u64, "the coordinator was silent for longer than the lease before this attempt could start; handed back, not started");
                AttemptReport {
                    outcome: Some(Outcome::HandedBack),
                    error: Some(format!(
                        "the worker heard nothing from the coordinator for longer than the lease \
                         ({} ms) before the attempt could start",
                        me.touch.lease().as_millis()
                    )),
                    ended_ms: now_ms(),
                    ..Default::default()
                }
            } else {
                me.run(d, rx).await
            };
            let _ = me.done.send((attempt, report));
        });
        tx
    }

    async fn run(&self, d: Dispatch, control: mpsc::UnboundedReceiver<Control>) -> AttemptReport {
        let timeout = d.timeout_ms.map(Duration::from_millis);
        match &d.payload {
            Payload::Exec { argv, env, cwd } => {
                let extra = [
                    ("TATZELWURM_TASK_ID".to_string(), d.attempt.task.to_string()),
                    (
                        "TATZELWURM_ATTEMPT".to_string(),
                        d.attempt.attempt.to_string(),
                    ),
                ];
                run_exec(
                    d.attempt,
                    self.output.clone(),
                    argv,
                    env,
                    cwd.as_deref(),
                    &extra,
                    timeout,
                    self.kill_grace,
                    self.spawn,
                    control,
                )
                .await
            }
            Payload::Sleep { duration_ms } => {
                let total = Duration::from_millis(*duration_ms);
                if self.blocking_slots.is_some() {
                    sleep_blocking(total, timeout, control).await
                } else {
                    sleep_async(total, timeout, control).await
                }
            }
            Payload::Custom { handler, data } => {
                let input = TaskInput {
                    attempt: d.attempt,
                    name: d.name.clone(),
                    data: data.clone(),
                    user_key: d.user_key.clone(),
                    user_data: d.user_data.clone(),
                };
                match self.handlers.get(handler) {
                    Some(h) => run_custom(h.clone(), input, timeout, control).await,
                    None => failed(
                        now_ms(),
                        format!("this worker does not serve handler {handler:?}"),
                    ),
                }
            }
            // The coordinator gives message tasks to clients that serve their queue only.
            Payload::Message { queue, .. } => failed(
                now_ms(),
                format!("a message task of queue {queue:?} reached a worker; it serves no queue"),
            ),
        }
    }
}

fn failed(started: u64, error: String) -> AttemptReport {
    AttemptReport {
        outcome: Some(Outcome::Failed),
        error: Some(error),
        started_ms: Some(started),
        ended_ms: now_ms(),
        ..Default::default()
    }
}

fn ended(started: u64, outcome: Outcome, error: Option<String>) -> AttemptReport {
    AttemptReport {
        outcome: Some(outcome),
        error,
        started_ms: Some(started),
        ended_ms: now_ms(),
        ..Default::default()
    }
}

fn timed_out(started: u64, t: Duration) -> AttemptReport {
    ended(
        started,
        Outcome::TimedOut,
        Some(format!("timed out after {} ms", t.as_millis())),
    )
}

/// The mock task on an async worker: a timer whose clock stops while paused.
async fn sleep_async(
    total: Duration,
    timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> AttemptReport {
    let started = now_ms();
    let begin = Instant::now();
    let mut remaining = total;
    let mut paused = false;
    let mut resumed_at = begin;
    let timeout_at = timeout.map(|t| begin + t);
    loop {
        let wake = (!paused).then(|| resumed_at + remaining);
        // Tokio's timer rounds a deadline up to its next millisecond tick: a sleep that is already
        // over must not wait for one (a `sleep 0ms` would take a millisecond).
        if wake.is_some_and(|w| w <= Instant::now()) {
            return ended(started, Outcome::Succeeded, None);
        }
        tokio::select! {
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {
                return ended(started, Outcome::Succeeded, None);
            }
            _ = async { tokio::time::sleep_until(timeout_at.expect("guarded")).await }, if timeout_at.is_some() => {
                return timed_out(started, timeout.unwrap_or_default());
            }
            c = control.recv() => match c {
                Some(Control::Pause) if !paused => {
                    remaining = remaining.saturating_sub(resumed_at.elapsed());
                    paused = true;
                }
                Some(Control::Resume) if paused => {
                    paused = false;
                    resumed_at = Instant::now();
                }
                Some(Control::Stop(outcome, why)) => return ended(started, outcome, Some(why)),
                Some(_) => {}
                None => return ended(started, Outcome::HandedBack, Some("worker stopped".into())),
            },
        }
    }
}

/// The mock task on a sync worker: it blocks a thread (`recv_timeout` is a blocking sleep that a
/// control message can interrupt).
async fn sleep_blocking(
    total: Duration,
    timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> AttemptReport {
    let (tx, rx) = std::sync::mpsc::channel::<Control>();
    let forward = tokio::spawn(async move {
        while let Some(c) = control.recv().await {
            if tx.send(c).is_err() {
                break;
            }
        }
    });
    let report = tokio::task::spawn_blocking(move || {
        let started = now_ms();
        let begin = std::time::Instant::now();
        let timeout_at = timeout.map(|t| begin + t);
        let mut remaining = total;
        let mut resumed_at = begin;
        let mut paused = false;
        loop {
            let now = std::time::Instant::now();
            if timeout_at.is_some_and(|t| now >= t) {
                return timed_out(started, timeout.unwrap_or_default());
            }
            let until_done = if paused {
                Duration::MAX
            } else {
                (resumed_at + remaining).saturating_duration_since(now)
            };
            if until_done.is_zero() {
                return ended(started, Outcome::Succeeded, None);
            }
            let until_timeout =
                timeout_at.map_or(Duration::MAX, |t| t.saturating_duration_since(now));
            let wait = until_done.min(until_timeout).min(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // No controller any more: finish the sleep as asked.
                    std::thread::sleep(
                        until_done.min(until_timeout).min(Duration::from_secs(3600)),
                    );
                }
                Ok(Control::Pause) if !paused => {
                    remaining = remaining.saturating_sub(resumed_at.elapsed());
                    paused = true;
                }
                Ok(Control::Resume) if paused => {
                    paused = false;
                    resumed_at = std::time::Instant::now();
                }
                Ok(Control::Stop(outcome, why)) => return ended(started, outcome, Some(why)),
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|e| failed(now_ms(), format!("the sleeping thread failed: {e}")));
    forward.abort();
    report
}

async fn run_custom(
    h: Handler,
    input: TaskInput,
    timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> AttemptReport {
    let started = now_ms();
    let work = async move {
        match h {
            Handler::Blocking(f) => tokio::task::spawn_blocking(move || f(input))
                .await
                .unwrap_or_else(|e| Err(format!("the handler panicked: {e}"))),
            Handler::Async(f) => match tokio::spawn(f(input)).await {
                Ok(r) => r,
                Err(e) => Err(format!("the handler panicked: {e}")),
            },
        }
    };
    tokio::pin!(work);
    let timeout_at = timeout.map(|t| Instant::now() + t);
    loop {
        tokio::select! {
            r = &mut work => {
                return match r {
                    Ok(TaskOutput { output, user_data }) => AttemptReport {
                        output,
                        user_data,
                        ..ended(started, Outcome::Succeeded, None)
                    },
                    Err(e) => failed(started, e),
                };
            }
            _ = async { tokio::time::sleep_until(timeout_at.expect("guarded")).await }, if timeout_at.is_some() => {
                return timed_out(started, timeout.unwrap_or_default());
            }
            c = control.recv() => match c {
                Some(Control::Stop(outcome, why)) => return ended(started, outcome, Some(why)),
                // Handlers cannot be suspended: pause is recorded by the coordinator only.
                Some(_) => {}
                None => return ended(started, Outcome::HandedBack, Some("worker stopped".into())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::TaskId;

    /// Runs `sh -c 'echo ran > FILE'` through a runner whose coordinator was last heard
    /// `silent` ago under a 200 ms lease; the report, and whether the command ran.
    async fn start_after(silent: Duration) -> (AttemptReport, bool) {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        let touch = Arc::new(Touch::new(Duration::from_millis(200)));
        touch.restart_at(Instant::now() - silent);
        let (done, mut reports) = mpsc::unbounded_channel();
        let (output, _pieces) = mpsc::channel(4);
        let runner = Runner::new(
            Handlers::new(),
            None,
            Duration::from_secs(1),
            Spawn::Clone,
            touch,
            done,
            output,
        );
        let attempt = AttemptRef {
            task: TaskId::new(),
            attempt: 1,
        };
        let _control = runner.start(Dispatch {
            attempt,
            name: None,
            payload: Payload::Exec {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo ran > {}", ran.display()),
                ],
                env: vec![],
                cwd: None,
            },
            timeout_ms: None,
            user_key: None,
            user_data: Default::default(),
        });
        let (of, report) = reports.recv().await.unwrap();
        assert_eq!(of, attempt);
        (report, ran.exists())
    }

    #[tokio::test]
    async fn an_attempt_whose_start_comes_after_a_silence_past_the_lease_is_handed_back() {
        let (report, ran) = start_after(Duration::from_millis(300)).await;
        assert_eq!(report.outcome, Some(Outcome::HandedBack), "{report:?}");
        assert_eq!(report.started_ms, None, "it never started");
        assert!(report.error.unwrap().contains("longer than the lease"));
        assert!(!ran, "the command did not run");

        let (report, ran) = start_after(Duration::from_millis(50)).await;
        assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
        assert!(ran, "within the lease it runs");
    }

    #[test]
    fn a_sleep_that_is_already_over_ends_without_a_timer() {
        // A runtime without a time driver panics on any timer: a zero sleep must not need one.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_control, rx) = mpsc::unbounded_channel();
        let report = rt.block_on(sleep_async(Duration::ZERO, None, rx));
        assert_eq!(report.outcome, Some(Outcome::Succeeded));
    }
}
