//! The task state machine: every transition a task can make, and the refusals, as plain code.
//!
//! ```text
//! created ──play──▶ ready ──dispatch──▶ assigned ──started──▶ running ──report──▶ completed
//!    │                ▲                    │                     │        ╲──────▶ failed
//!    │                └──── failed attempt with attempts left, lost, handed back ◀┘
//!    └─pause─▶ paused ◀──pause── ready / assigned / running;   play: paused ──▶ ready or resumed
//! any non-final state ──kill──▶ killed;   failed / killed ──retry──▶ ready
//! ```
//! A task held by a worker (assigned, running, or paused on its worker) has a `holder`; a kill or a
//! pause of such a task is also sent to the worker, and the holder is cleared by the worker's
//! report or by the lease.

use tatzelwurm_protocol::{
    Attempt, AttemptRef, AttemptReport, Data, ErrorKind, ErrorReply, Outcome, StageTimes, TaskId,
    TaskInfo, TaskSpec, TaskState, TaskSummary, WorkerId,
};

/// A task in the coordinator's table: what is stored, plus its place in the ready queue.
#[derive(Clone, Debug)]
pub struct Task {
    /// Everything that is stored and shown.
    pub info: TaskInfo,
    /// The ticket of its latest enqueue; a queue entry with another ticket is stale.
    pub ticket: u64,
    /// Its queue's number in the coordinator's queue table.
    pub queue: crate::scheduler::QueueIdx,
}

/// A task's dispatch to a worker, as a change to the task rather than the task itself: the
/// journal records an assignment this way (a few dozen bytes instead of the whole task, which was
/// written when it was added), and replay applies it onto the task's previous record.
///
/// Applying it sets fields to values it carries (the attempt numbered `number`, the holder, the
/// state and its time) and drops any attempt after it, so applying it again, or onto a record
/// that already includes it and what followed, leaves what a replay in order ends with: the
/// checkpoint relies on that (see `store::image`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// The task.
    pub task: TaskId,
    /// The attempt it starts (1-based).
    pub number: u32,
    /// The worker it went to.
    pub worker: WorkerId,
    /// That worker's name then.
    pub worker_name: String,
    /// When (coordinator clock, ms).
    pub at_ms: u64,
}

impl Assignment {
    /// The attempt it starts.
    pub fn attempt(&self) -> AttemptRef {
        AttemptRef {
            task: self.task,
            attempt: self.number,
        }
    }

    /// Makes `info` assigned to the worker in attempt `number`. An error when `info` lacks the
    /// attempt before it (a record older than the one the assignment was made on).
    pub fn apply(&self, info: &mut TaskInfo) -> Result<(), String> {
        info.attempts.retain(|a| a.number < self.number);
        let last = info.attempts.last().map_or(0, |a| a.number);
        if last.checked_add(1) != Some(self.number) {
            return Err(format!(
                "assignment of attempt {} to a task whose last attempt is {last}",
                self.number
            ));
        }
        info.attempts.push(Attempt {
            number: self.number,
            worker: self.worker,
            worker_name: self.worker_name.clone(),
            assigned_ms: self.at_ms,
            started_ms: None,
            ended_ms: None,
            outcome: None,
            exit_code: None,
            error: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            output: Data::empty(),
            late_reports: Vec::new(),
        });
        info.worker = Some(self.worker);
        info.state = TaskState::Assigned;
        info.times.assigned_ms = Some(self.at_ms);
        Ok(())
    }
}

/// What the coordinator must tell a worker as the result of a user's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerOrder {
    /// Nothing: the task was not on a worker.
    None,
    /// Send `Pause` for this attempt to this worker.
    Pause(WorkerId, AttemptRef),
    /// Send `Resume` for this attempt to this worker.
    Resume(WorkerId, AttemptRef),
    /// Send `Kill` for this attempt to this worker.
    Kill(WorkerId, AttemptRef),
}

/// How a worker's report was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFate {
    /// It ended the current attempt; the holder is released.
    Current,
    /// The attempt was no longer current: recorded in its history, nothing else changed.
    Late,
    /// No such attempt: ignored.
    Unknown,
}

fn refuse(id: TaskId, state: TaskState, op: &str) -> ErrorReply {
    let hint = match (op, state) {
        ("play", TaskState::Failed | TaskState::Killed) => " (a retry runs it again)",
        _ => "",
    };
    ErrorReply::new(
        ErrorKind::InvalidState,
        format!("cannot {op} task {id}: it is {state}{hint}"),
    )
}

/// What the checks of a request read of a task: its id, state and holder, known without
/// decoding a packed task (`core::table`), so that `kill --all` over a million queued tasks
/// decodes none of them.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// The task's id.
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
    /// The worker holding it, if any.
    pub holder: Option<WorkerId>,
}

impl Head {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Its state.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// The worker holding it, if any.
    pub fn holder(&self) -> Option<WorkerId> {
        self.holder
    }

    /// Checks `play` without changing anything.
    pub fn check_play(&self) -> Result<(), ErrorReply> {
        match self.state() {
            TaskState::Created | TaskState::Paused => Ok(()),
            s => Err(refuse(self.id(), s, "play")),
        }
    }

    /// Checks `pause` without changing anything.
    pub fn check_pause(&self) -> Result<(), ErrorReply> {
        match self.state() {
            TaskState::Created | TaskState::Ready | TaskState::Assigned | TaskState::Running => {
                Ok(())
            }
            s => Err(refuse(self.id(), s, "pause")),
        }
    }

    /// Checks `kill` without changing anything.
    pub fn check_kill(&self) -> Result<(), ErrorReply> {
        if self.state().is_final() {
            return Err(refuse(self.id(), self.state(), "kill"));
        }
        Ok(())
    }

    /// Checks `remove`: a task that no worker holds, finished or still waiting (created, ready,
    /// paused), may be forgotten; one that runs must be killed first.
    pub fn check_remove(&self) -> Result<(), ErrorReply> {
        let waiting = matches!(
            self.state(),
            TaskState::Created | TaskState::Ready | TaskState::Paused
        );
        if (self.state().is_final() || waiting) && self.holder().is_none() {
            Ok(())
        } else {
            let hint = if self.holder().is_some() {
                " on a worker (kill it first)"
            } else {
                ""
            };
            Err(ErrorReply::new(
                ErrorKind::InvalidState,
                format!(
                    "cannot remove task {}: it is {}{hint}",
                    self.id(),
                    self.state()
                ),
            ))
        }
    }

    /// Checks `retry`: a failed or killed task that no worker holds any more.
    pub fn check_retry(&self) -> Result<(), ErrorReply> {
        match self.state() {
            TaskState::Failed | TaskState::Killed if self.holder().is_none() => Ok(()),
            s => Err(refuse(self.id(), s, "retry")),
        }
    }
}

impl Task {
    /// A new task, created (or ready when `play`).
    pub fn new(id: TaskId, spec: TaskSpec, namespace: String, now: u64, play: bool) -> Task {
        let info = TaskInfo {
            id,
            spec,
            state: if play {
                TaskState::Ready
            } else {
                TaskState::Created
            },
            times: StageTimes {
                created_ms: now,
                ready_ms: play.then_some(now),
                ..Default::default()
            },
            attempts: Vec::new(),
            worker: None,
            namespace,
            number: 0,
            batch: 0,
        };
        Task {
            info,
            ticket: 0,
            queue: 0,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.info.id
    }

    /// Its id, state and holder: what the checks read.
    pub fn head(&self) -> Head {
        Head {
            id: self.id(),
            state: self.state(),
            holder: self.holder(),
        }
    }

    /// Its state.
    pub fn state(&self) -> TaskState {
        self.info.state
    }

    /// The worker holding it, if any.
    pub fn holder(&self) -> Option<WorkerId> {
        self.info.worker
    }

    /// The latest attempt, which is the current one while a worker holds the task.
    pub fn current_attempt(&self) -> Option<AttemptRef> {
        self.info.attempts.last().map(|a| AttemptRef {
            task: self.info.id,
            attempt: a.number,
        })
    }

    /// Whether the table may keep it packed (`core::table`): no worker holds it, and it is not a
    /// ready task whose preferences the scheduler reads by reference.
    pub fn packable(&self) -> bool {
        self.holder().is_none()
            && (self.state() != TaskState::Ready || self.info.spec.prefer.is_empty())
    }

    /// Attempts that count against `max_attempts`: lost and handed-back ones do not, since the
    /// task itself did not fail.
    pub fn counted_attempts(&self) -> u32 {
        self.info
            .attempts
            .iter()
            .filter(|a| !matches!(a.outcome, Some(Outcome::Lost | Outcome::HandedBack)))
            .count() as u32
    }

    fn enter(&mut self, state: TaskState, now: u64) {
        self.info.state = state;
        let t = &mut self.info.times;
        match state {
            TaskState::Created => t.created_ms = now,
            TaskState::Ready => t.ready_ms = Some(now),
            TaskState::Assigned => t.assigned_ms = Some(now),
            TaskState::Running => t.running_ms = Some(now),
            TaskState::Paused => t.paused_ms = Some(now),
            TaskState::Completed | TaskState::Failed | TaskState::Killed => t.ended_ms = Some(now),
        }
    }

    /// Checks `play` without changing anything.
    pub fn check_play(&self) -> Result<(), ErrorReply> {
        self.head().check_play()
    }

    /// Created → ready; paused → ready, or back to assigned/running on its worker.
    pub fn play(&mut self, now: u64) -> Result<WorkerOrder, ErrorReply> {
        self.check_play()?;
        match (self.holder(), self.current_attempt()) {
            (Some(w), Some(attempt)) => {
                let started = self
                    .info
                    .attempts
                    .last()
                    .is_some_and(|a| a.started_ms.is_some());
                self.enter(
                    if started {
                        TaskState::Running
                    } else {
                        TaskState::Assigned
                    },
                    now,
                );
                Ok(WorkerOrder::Resume(w, attempt))
            }
            _ => {
                self.enter(TaskState::Ready, now);
                Ok(WorkerOrder::None)
            }
        }
    }

    /// Checks `pause` without changing anything.
    pub fn check_pause(&self) -> Result<(), ErrorReply> {
        self.head().check_pause()
    }

    /// Holds the task; one on a worker stays there, suspended.
    pub fn pause(&mut self, now: u64) -> Result<WorkerOrder, ErrorReply> {
        self.check_pause()?;
        self.enter(TaskState::Paused, now);
        Ok(match (self.holder(), self.current_attempt()) {
            (Some(w), Some(attempt)) => WorkerOrder::Pause(w, attempt),
            _ => WorkerOrder::None,
        })
    }

    /// Checks `kill` without changing anything.
    pub fn check_kill(&self) -> Result<(), ErrorReply> {
        self.head().check_kill()
    }

    /// Ends the task as killed; its worker, if any, is told to stop the attempt.
    pub fn kill(&mut self, now: u64) -> Result<WorkerOrder, ErrorReply> {
        self.check_kill()?;
        self.enter(TaskState::Killed, now);
        Ok(match (self.holder(), self.current_attempt()) {
            (Some(w), Some(attempt)) => WorkerOrder::Kill(w, attempt),
            _ => WorkerOrder::None,
        })
    }

    /// Checks `remove`: a task that no worker holds, finished or still waiting (created, ready,
    /// paused), may be forgotten; one that runs must be killed first.
    pub fn check_remove(&self) -> Result<(), ErrorReply> {
        self.head().check_remove()
    }

    /// Checks `retry`: a failed or killed task that no worker holds any more.
    pub fn check_retry(&self) -> Result<(), ErrorReply> {
        self.head().check_retry()
    }

    /// Failed or killed → ready, allowed `more` attempts beyond those it has used (its earlier
    /// attempts stay in the history).
    pub fn retry(&mut self, more: u32, now: u64) -> Result<WorkerOrder, ErrorReply> {
        self.check_retry()?;
        self.info.spec.max_attempts = self.counted_attempts().saturating_add(more.max(1));
        self.info.times.ended_ms = None;
        self.enter(TaskState::Ready, now);
        Ok(WorkerOrder::None)
    }

    /// Ready → assigned to `worker`: a new attempt begins.
    pub fn assign(&mut self, worker: WorkerId, worker_name: &str, now: u64) -> Assignment {
        debug_assert_eq!(self.state(), TaskState::Ready);
        let a = Assignment {
            task: self.id(),
            number: self.info.attempts.last().map_or(1, |a| a.number + 1),
            worker,
            worker_name: worker_name.to_string(),
            at_ms: now,
        };
        a.apply(&mut self.info)
            .expect("the next attempt follows the last one");
        a
    }

    /// Whether `attempt` by `worker` is the one the task is waiting on.
    pub fn is_current(&self, worker: WorkerId, attempt: u32) -> bool {
        self.holder() == Some(worker)
            && self.current_attempt().is_some_and(|a| a.attempt == attempt)
    }

    /// Whether `attempt` was ever dispatched to `worker` (current or not).
    pub fn was_given(&self, worker: WorkerId, attempt: u32) -> bool {
        self.info
            .attempts
            .iter()
            .any(|a| a.number == attempt && a.worker == worker)
    }

    /// The worker says the attempt started: assigned → running (a paused task stays paused).
    pub fn started(&mut self, worker: WorkerId, attempt: u32, at_ms: u64, now: u64) -> bool {
        if !self.is_current(worker, attempt) {
            return false;
        }
        if let Some(a) = self.info.attempts.last_mut() {
            a.started_ms.get_or_insert(at_ms);
        }
        if self.state() == TaskState::Assigned {
            self.enter(TaskState::Running, now);
        }
        true
    }

    /// Takes a worker's report of an attempt's end.
    pub fn report(
        &mut self,
        worker: WorkerId,
        attempt: u32,
        report: AttemptReport,
        now: u64,
    ) -> ReportFate {
        if !self.is_current(worker, attempt) {
            // Another worker's attempt is not this worker's to report on.
            return match self
                .info
                .attempts
                .iter_mut()
                .find(|a| a.number == attempt && a.worker == worker)
            {
                Some(a) => {
                    if !a.late_reports.contains(&report) {
                        a.late_reports.push(report);
                    }
                    ReportFate::Late
                }
                None => ReportFate::Unknown,
            };
        }
        let outcome = match report.outcome {
            Some(Outcome::Lost) | None => Outcome::Failed,
            Some(o) => o,
        };
        let a = self
            .info
            .attempts
            .last_mut()
            .expect("a current attempt exists");
        a.started_ms = a.started_ms.or(report.started_ms);
        a.ended_ms = Some(report.ended_ms.max(a.started_ms.unwrap_or(0)));
        // An attempt that ended soon after it began may come without a `started` (the worker
        // leaves it out): its report says it ran, and when, on the worker's clock (kept
        // between the assignment and now, so that the times stay in order).
        if self.info.state == TaskState::Assigned
            && let Some(started) = report.started_ms
        {
            let assigned = self.info.times.assigned_ms.unwrap_or(0);
            self.info.times.running_ms = Some(started.clamp(assigned, now.max(assigned)));
        }
        a.outcome = Some(outcome);
        a.exit_code = report.exit_code;
        a.error = report.error;
        a.stdout_tail = report.stdout_tail;
        a.stderr_tail = report.stderr_tail;
        a.output = report.output;
        if let Some(data) = report.user_data {
            self.info.spec.user_data = data;
        }
        self.info.worker = None;
        self.settle(outcome, now);
        ReportFate::Current
    }

    /// The holder is gone (lease expired, or it reconnected without the task): the attempt is
    /// lost and the task goes back to the queue, or to paused when `to_paused`.
    pub fn lose(&mut self, reason: &str, to_paused: bool, now: u64) {
        if self.holder().is_none() {
            return;
        }
        if let Some(a) = self.info.attempts.last_mut() {
            a.ended_ms = Some(now);
            a.outcome = Some(Outcome::Lost);
            a.error = Some(reason.to_string());
        }
        self.info.worker = None;
        match self.state() {
            TaskState::Assigned | TaskState::Running if to_paused => {
                self.enter(TaskState::Paused, now)
            }
            TaskState::Assigned | TaskState::Running => self.enter(TaskState::Ready, now),
            // Paused stays paused (now held by the coordinator); killed stays killed.
            _ => {}
        }
    }

    /// Where an attempt's outcome leaves the task.
    fn settle(&mut self, outcome: Outcome, now: u64) {
        let state = self.state();
        if state == TaskState::Killed {
            return;
        }
        let retry = self.counted_attempts() < self.info.spec.max_attempts;
        let next = match outcome {
            Outcome::Succeeded => TaskState::Completed,
            Outcome::Killed => TaskState::Killed,
            Outcome::HandedBack | Outcome::Lost if state == TaskState::Paused => TaskState::Paused,
            Outcome::HandedBack | Outcome::Lost => TaskState::Ready,
            Outcome::Failed | Outcome::TimedOut if !retry => TaskState::Failed,
            Outcome::Failed | Outcome::TimedOut if state == TaskState::Paused => TaskState::Paused,
            Outcome::Failed | Outcome::TimedOut => TaskState::Ready,
        };
        if next != state || next == TaskState::Ready {
            self.enter(next, now);
        }
    }

    /// The line shown by `task list`.
    pub fn summary(&self) -> TaskSummary {
        let i = &self.info;
        let t = &i.times;
        let changed_ms = match i.state {
            TaskState::Created => t.created_ms,
            TaskState::Ready => t.ready_ms.unwrap_or(t.created_ms),
            TaskState::Assigned => t.assigned_ms.unwrap_or(t.created_ms),
            TaskState::Running => t.running_ms.unwrap_or(t.created_ms),
            TaskState::Paused => t.paused_ms.unwrap_or(t.created_ms),
            _ => t.ended_ms.unwrap_or(t.created_ms),
        };
        TaskSummary {
            id: i.id,
            name: i.spec.name.clone(),
            state: i.state,
            block: i.spec.block,
            priority: i.spec.priority,
            tags: i.spec.tags.clone(),
            command: i.spec.payload.describe(),
            attempts: i.attempts.len() as u32,
            max_attempts: i.spec.max_attempts,
            worker: i.worker,
            created_ms: t.created_ms,
            changed_ms,
            queue: i.spec.queue_name().to_string(),
            worker_name: i.attempts.last().map(|a| a.worker_name.clone()),
            number: i.number,
            batch: i.batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::Payload;

    const W: WorkerId = WorkerId(1);

    fn task(state: TaskState, max_attempts: u32) -> Task {
        let mut spec = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
        spec.max_attempts = max_attempts;
        let mut t = Task::new(TaskId::new(), spec, "default".into(), 1, false);
        match state {
            TaskState::Created => {}
            TaskState::Ready => {
                t.play(2).unwrap();
            }
            TaskState::Assigned => {
                t.play(2).unwrap();
                t.assign(W, "w", 3);
            }
            TaskState::Running => {
                t.play(2).unwrap();
                t.assign(W, "w", 3);
                assert!(t.started(W, 1, 4, 4));
            }
            TaskState::Paused => {
                t.pause(2).unwrap();
            }
            TaskState::Completed | TaskState::Failed | TaskState::Killed => {
                t.play(2).unwrap();
                t.assign(W, "w", 3);
                let outcome = match state {
                    TaskState::Completed => Outcome::Succeeded,
                    TaskState::Failed => Outcome::Failed,
                    _ => Outcome::Killed,
                };
                let rep = AttemptReport {
                    outcome: Some(outcome),
                    ended_ms: 5,
                    ..Default::default()
                };
                assert_eq!(t.report(W, 1, rep, 5), ReportFate::Current);
            }
        }
        assert_eq!(t.state(), state);
        t
    }

    fn report(outcome: Outcome) -> AttemptReport {
        AttemptReport {
            outcome: Some(outcome),
            ended_ms: 9,
            ..Default::default()
        }
    }

    #[test]
    fn play_is_allowed_from_created_and_paused_only() {
        for s in TaskState::ALL {
            let mut t = task(s, 1);
            let res = t.play(10);
            match s {
                TaskState::Created | TaskState::Paused => {
                    assert_eq!(res.unwrap(), WorkerOrder::None);
                    assert_eq!(t.state(), TaskState::Ready);
                    assert_eq!(t.info.times.ready_ms, Some(10));
                }
                _ => {
                    let e = res.unwrap_err();
                    assert_eq!(e.kind, ErrorKind::InvalidState);
                    assert!(
                        e.message.contains(&t.id().to_string()) && e.message.contains(s.as_str()),
                        "{e}"
                    );
                    assert_eq!(
                        e.message.contains("retry"),
                        matches!(s, TaskState::Failed | TaskState::Killed),
                        "{e}"
                    );
                    assert_eq!(t.state(), s, "a refused play changes nothing");
                }
            }
        }
    }

    #[test]
    fn pause_is_allowed_from_created_ready_assigned_running() {
        for s in TaskState::ALL {
            let mut t = task(s, 1);
            let res = t.pause(10);
            match s {
                TaskState::Created | TaskState::Ready => {
                    assert_eq!(res.unwrap(), WorkerOrder::None);
                    assert_eq!(t.state(), TaskState::Paused);
                }
                TaskState::Assigned | TaskState::Running => {
                    assert_eq!(
                        res.unwrap(),
                        WorkerOrder::Pause(
                            W,
                            AttemptRef {
                                task: t.id(),
                                attempt: 1
                            }
                        )
                    );
                    assert_eq!(t.state(), TaskState::Paused);
                    assert_eq!(t.holder(), Some(W), "a paused task stays on its worker");
                }
                _ => {
                    assert!(res.is_err());
                    assert_eq!(t.state(), s);
                }
            }
        }
    }

    #[test]
    fn kill_is_allowed_from_every_non_final_state() {
        for s in TaskState::ALL {
            let mut t = task(s, 1);
            let res = t.kill(10);
            if s.is_final() {
                assert!(res.is_err());
                assert_eq!(t.state(), s);
            } else {
                let order = res.unwrap();
                assert_eq!(t.state(), TaskState::Killed);
                assert_eq!(matches!(order, WorkerOrder::Kill(..)), s.on_worker());
            }
        }
    }

    #[test]
    fn retry_is_allowed_from_failed_and_killed_once_no_worker_holds_them() {
        for s in TaskState::ALL {
            let mut t = task(s, 1);
            let used = t.counted_attempts();
            let res = t.retry(2, 10);
            match s {
                TaskState::Failed | TaskState::Killed => {
                    assert_eq!(res.unwrap(), WorkerOrder::None);
                    assert_eq!(t.state(), TaskState::Ready);
                    assert_eq!(t.info.spec.max_attempts, used + 2, "{s}: two more attempts");
                    assert_eq!(t.info.times.ready_ms, Some(10));
                    assert_eq!(t.info.times.ended_ms, None, "it has not ended now");
                    assert_eq!(t.info.attempts.len() as u32, used, "history kept");
                }
                _ => {
                    let e = res.unwrap_err();
                    assert_eq!(e.kind, ErrorKind::InvalidState);
                    assert!(e.message.contains(s.as_str()), "{e}");
                    assert_eq!(t.state(), s, "a refused retry changes nothing");
                }
            }
        }
        // A task killed while on a worker waits for the worker's report before it can run again.
        let mut t = task(TaskState::Running, 1);
        t.kill(10).unwrap();
        assert!(t.retry(1, 11).is_err());
        assert_eq!(t.state(), TaskState::Killed);
        assert_eq!(
            t.report(W, 1, report(Outcome::Killed), 12),
            ReportFate::Current
        );
        t.retry(1, 13).unwrap();
        assert_eq!(t.state(), TaskState::Ready);
        // The retried attempt runs and fails: with no attempts left, the task fails again.
        t.assign(W, "w", 14);
        t.report(W, 2, report(Outcome::Failed), 15);
        assert_eq!(t.state(), TaskState::Failed);
        assert_eq!(t.info.attempts.len(), 2);
    }

    #[test]
    fn paused_on_worker_resumes_where_it_was() {
        let mut t = task(TaskState::Running, 1);
        t.pause(5).unwrap();
        assert!(matches!(t.play(6).unwrap(), WorkerOrder::Resume(W, _)));
        assert_eq!(t.state(), TaskState::Running);
        let mut t = task(TaskState::Assigned, 1);
        t.pause(5).unwrap();
        t.play(6).unwrap();
        assert_eq!(t.state(), TaskState::Assigned);
    }

    #[test]
    fn a_short_attempt_reported_without_started_ran_when_its_report_says() {
        // Assigned at 3; the report says it ran from 5 (the worker's clock).
        let mut t = task(TaskState::Assigned, 1);
        let mut r = report(Outcome::Succeeded);
        r.started_ms = Some(5);
        r.ended_ms = 6;
        assert_eq!(t.report(W, 1, r, 9), ReportFate::Current);
        assert_eq!(t.state(), TaskState::Completed);
        assert_eq!(t.info.times.running_ms, Some(5));
        assert_eq!(t.info.attempts[0].started_ms, Some(5));
        // A worker clock behind the coordinator's still leaves the times in order.
        let mut t = task(TaskState::Assigned, 1);
        let mut r = report(Outcome::Failed);
        r.started_ms = Some(1);
        t.report(W, 1, r, 9);
        assert_eq!(t.info.times.running_ms, Some(3));
        // Given back unstarted: it never ran.
        let mut t = task(TaskState::Assigned, 1);
        let mut r = report(Outcome::HandedBack);
        r.started_ms = None;
        t.report(W, 1, r, 9);
        assert_eq!(t.info.times.running_ms, None);
    }

    #[test]
    fn failed_attempt_retries_until_attempts_run_out() {
        let mut t = task(TaskState::Running, 2);
        assert_eq!(
            t.report(W, 1, report(Outcome::Failed), 9),
            ReportFate::Current
        );
        assert_eq!(t.state(), TaskState::Ready);
        assert_eq!(t.holder(), None);
        t.assign(W, "w", 10);
        assert_eq!(
            t.report(W, 2, report(Outcome::TimedOut), 11),
            ReportFate::Current
        );
        assert_eq!(t.state(), TaskState::Failed);
        assert_eq!(t.info.attempts.len(), 2, "every attempt is kept");
        assert_eq!(t.info.attempts[1].outcome, Some(Outcome::TimedOut));
        assert_eq!(t.info.times.ended_ms, Some(11));
    }

    #[test]
    fn success_completes_and_user_data_is_replaced() {
        let mut t = task(TaskState::Running, 1);
        let mut r = report(Outcome::Succeeded);
        r.user_data = Some(Data(vec![0x80]));
        r.stdout_tail = "out".into();
        t.report(W, 1, r, 9);
        assert_eq!(t.state(), TaskState::Completed);
        assert_eq!(t.info.spec.user_data, Data(vec![0x80]));
        assert_eq!(t.info.attempts[0].stdout_tail, "out");
    }

    #[test]
    fn lost_attempt_requeues_without_using_an_attempt() {
        let mut t = task(TaskState::Running, 1);
        t.lose("lease expired", false, 20);
        assert_eq!(t.state(), TaskState::Ready);
        assert_eq!(t.info.attempts[0].outcome, Some(Outcome::Lost));
        assert_eq!(t.counted_attempts(), 0);
        let mut t = task(TaskState::Assigned, 1);
        t.lose("gone", true, 20);
        assert_eq!(t.state(), TaskState::Paused);
        assert_eq!(t.holder(), None);
    }

    #[test]
    fn late_report_is_recorded_and_changes_nothing() {
        let mut t = task(TaskState::Running, 1);
        t.lose("lease expired", false, 20);
        t.assign(WorkerId(2), "other", 21);
        let late = report(Outcome::Succeeded);
        assert_eq!(t.report(W, 1, late.clone(), 22), ReportFate::Late);
        assert_eq!(t.report(W, 1, late.clone(), 22), ReportFate::Late);
        assert_eq!(t.state(), TaskState::Assigned);
        assert_eq!(t.holder(), Some(WorkerId(2)));
        assert_eq!(t.info.attempts[0].outcome, Some(Outcome::Lost));
        assert_eq!(
            t.info.attempts[0].late_reports,
            vec![late],
            "a resent report is kept once"
        );
        assert_eq!(
            t.report(W, 7, report(Outcome::Failed), 22),
            ReportFate::Unknown
        );
        assert!(!t.started(W, 1, 5, 23), "a stale start changes nothing");
    }

    #[test]
    fn killed_task_keeps_its_state_when_the_worker_reports() {
        let mut t = task(TaskState::Running, 3);
        t.kill(10).unwrap();
        assert_eq!(t.holder(), Some(W));
        assert_eq!(
            t.report(W, 1, report(Outcome::Killed), 11),
            ReportFate::Current
        );
        assert_eq!(t.state(), TaskState::Killed);
        assert_eq!(t.holder(), None);
        assert!(t.check_remove().is_ok());
    }

    #[test]
    fn handed_back_task_returns_to_ready_or_stays_paused() {
        let mut t = task(TaskState::Running, 1);
        t.report(W, 1, report(Outcome::HandedBack), 9);
        assert_eq!(t.state(), TaskState::Ready);
        assert_eq!(t.counted_attempts(), 0);
        let mut t = task(TaskState::Running, 1);
        t.pause(5).unwrap();
        t.report(W, 1, report(Outcome::HandedBack), 9);
        assert_eq!(t.state(), TaskState::Paused);
        assert_eq!(t.holder(), None);
        t.play(10).unwrap();
        assert_eq!(t.state(), TaskState::Ready);
    }

    #[test]
    fn remove_takes_finished_and_waiting_tasks_no_worker_holds() {
        for s in TaskState::ALL {
            let removable = !matches!(s, TaskState::Assigned | TaskState::Running);
            assert_eq!(task(s, 1).check_remove().is_ok(), removable, "{s}");
        }
        // Paused or killed on its worker: held, so not yet.
        let mut held = task(TaskState::Paused, 1);
        held.info.worker = Some(WorkerId(1));
        let e = held.check_remove().unwrap_err();
        assert!(e.message.contains("kill it first"), "{e}");
        held.info.state = TaskState::Killed;
        assert!(held.check_remove().is_err());
    }
}
