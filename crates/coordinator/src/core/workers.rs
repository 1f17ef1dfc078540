//! Workers: connections, heartbeats and leases, dispatch, results and reattachment.

use super::*;

impl Core {
    // ---- connections -------------------------------------------------------------------

    /// An actioner of the default namespace finished its handshake.
    pub fn connect_actioner(&mut self, conn: ConnId) {
        self.connect_actioner_in(conn, tatzelwurm_protocol::DEFAULT_NAMESPACE.to_string());
    }

    /// An actioner finished its handshake, naming its namespace.
    pub fn connect_actioner_in(&mut self, conn: ConnId, namespace: String) {
        self.conns.insert(conn, Conn::Actioner { namespace });
    }

    /// A client (every role at once) finished its handshake; returns the worker id it is given:
    /// its previous one when the table knows it (it held queue tasks and reattaches them), else
    /// a new one, entered in the worker table at its first `serve`.
    pub fn connect_client(&mut self, conn: ConnId, hello: ClientHello, now: u64) -> WorkerId {
        let namespace = tatzelwurm_protocol::namespace_of(&hello.namespace);
        let known = hello.previous_id.filter(|&id| {
            self.claims(id, &hello.name, &hello.host)
                && self.workers.get(&id).is_some_and(|w| w.client)
        });
        let worker = match known {
            // The entry stays a client's: `connect_worker` keeps what the old entry was (and
            // welcomes it).
            Some(_) => self.connect_worker(conn, client_hello(&hello, known), now),
            None => {
                let id = self.new_worker_id();
                self.durable.push((conn, Out::Welcome(id)));
                id
            }
        };
        info!(conn, worker = %worker, %namespace, name = %hello.name, "client connected");
        self.conns.insert(
            conn,
            Conn::Client {
                namespace,
                worker,
                name: hello.name,
                host: hello.host,
            },
        );
        worker
    }

    /// The worker entry of a client connection, made at its first `serve`.
    pub(super) fn client_worker(&mut self, conn: ConnId, now: u64) -> Result<WorkerId, ErrorReply> {
        let Some(Conn::Client {
            worker, name, host, ..
        }) = self.conns.get(&conn)
        else {
            return Err(err(
                ErrorKind::InvalidRequest,
                "only a client connection (role `client`) can serve a queue",
            ));
        };
        let (w, name, host) = (*worker, name.clone(), host.clone());
        if let std::collections::btree_map::Entry::Vacant(slot) = self.workers.entry(w) {
            let info = WorkerInfo {
                id: w,
                name,
                host,
                block: tatzelwurm_protocol::BlockType::Async,
                slots: 0,
                running: 0,
                tags: vec![],
                handlers: vec![],
                connected_ms: now,
                last_heartbeat_ms: now,
                state: WorkerState::Active,
            };
            slot.insert(Worker {
                info,
                conn: Some(conn),
                lost_since: None,
                held: TaskSet::default(),
                awaiting_reattach: None,
                client: true,
                held_back: false,
                streams_output: false,
                prefetch: 0,
            });
            self.dirty_workers.insert(w);
        }
        Ok(w)
    }

    /// `worker drain` (`drain`) or its undoing: a worker held back by a user gets no new task,
    /// what it runs goes on, and it stays connected (and held back across its reconnects, not
    /// across a restart of the coordinator).
    pub(super) fn drain_worker(&mut self, id: u64, drain: bool) -> Result<Reply, ErrorReply> {
        let w = WorkerId(id);
        let Some(worker) = self.workers.get_mut(&w) else {
            return Err(err(ErrorKind::UnknownId, format!("no worker {w}")));
        };
        if worker.client {
            return Err(err(
                ErrorKind::InvalidRequest,
                format!("worker {w} is a broker client: it serves queues, unserve them instead"),
            ));
        }
        worker.held_back = drain;
        if worker.conn.is_some() {
            worker.info.state = if drain {
                WorkerState::Draining
            } else {
                WorkerState::Active
            };
            // One that still has to reattach gets tasks after its reattach, not before.
            let accepting = !drain && worker.awaiting_reattach.is_none();
            self.sched.set_accepting(w, accepting);
        }
        info!(worker = %w, drain, "worker held back by a user");
        self.dirty_workers.insert(w);
        Ok(Reply::Workers {
            workers: vec![self.workers[&w].info()],
        })
    }

    /// Whether a peer named `name` on `host` that presents `id` as its previous one gets it
    /// back: the table knows the id, under the same name and host. A worker's name and host stay
    /// the same for its whole life, so another name means another process, which must not take
    /// the id (and the tasks with it) from its holder; it gets a new one. (Ids are never handed
    /// out twice, but a store that was lost or restored from a backup forgets what it handed
    /// out.)
    fn claims(&self, id: WorkerId, name: &str, host: &str) -> bool {
        match self.workers.get(&id) {
            None => false,
            Some(w) if w.info.name == name && w.info.host == host => true,
            Some(w) => {
                warn!(worker = %id, holder = %w.info.name, holder_host = %w.info.host, claimant = %name, claimant_host = %host, "a peer claims a worker id that another one holds; it gets a new id");
                false
            }
        }
    }

    /// A worker finished its handshake; returns the id it is given: its previous one when it
    /// presents one the table knows, else a new one. The welcome that tells the worker its id
    /// ([`Out::Welcome`]) leaves at once for a known id; a new one waits until the counter that
    /// handed it out is durable, so that no later run of the coordinator hands it out again (two
    /// workers on one id would take it from each other at every reconnect).
    pub fn connect_worker(&mut self, conn: ConnId, hello: WorkerHello, now: u64) -> WorkerId {
        let reuse = hello
            .previous_id
            .filter(|&id| self.claims(id, &hello.name, &hello.host));
        // A worker may notice a dead connection before the coordinator does: its new connection
        // takes over the id, and the old, half-open one is closed.
        if let Some(old) = reuse
            .and_then(|id| self.workers.get(&id))
            .and_then(|w| w.conn)
        {
            warn!(worker = %reuse.unwrap_or(WorkerId(0)), old_conn = old, "worker reconnected over a stale connection");
            self.conns.remove(&old);
            self.immediate.push((
                old,
                Out::Close("replaced by the worker's new connection".into()),
            ));
        }
        let id = match reuse {
            // Its own id back: nothing new to make durable.
            Some(id) => {
                self.immediate.push((conn, Out::Welcome(id)));
                id
            }
            None => {
                let id = self.new_worker_id();
                self.durable.push((conn, Out::Welcome(id)));
                id
            }
        };
        let (held, client, held_back) = self
            .workers
            .remove(&id)
            .map(|w| (w.held, w.client, w.held_back))
            .unwrap_or_default();
        let streams_output = hello.streams_output;
        // A client takes message tasks one by one as it asks: nothing to hold ahead.
        let prefetch = if client { 0 } else { hello.prefetch };
        let info = WorkerInfo {
            id,
            name: hello.name,
            host: hello.host,
            block: hello.block,
            slots: hello.slots,
            running: held.len() as u32,
            tags: hello.tags,
            handlers: hello.handlers,
            connected_ms: now,
            last_heartbeat_ms: now,
            // Drained by a user (`worker drain`): it stays so across its reconnects.
            state: if held_back {
                WorkerState::Draining
            } else {
                WorkerState::Active
            },
        };
        // A client takes message tasks only: the scheduler does not know it.
        if !client {
            self.sched.set_worker(
                id,
                WorkerSpec {
                    block: info.block,
                    slots: info.slots,
                    prefetch,
                    running: held.len() as u32,
                    handlers: info.handlers.clone(),
                    tags: info.tags.clone(),
                    custom_only: hello.custom_only,
                },
            );
        }
        // A worker back under its old id first says what it still runs; nothing is dispatched to
        // it before that, or its `reattach` could not tell a new dispatch from a forgotten task.
        if reuse.is_some() || held_back {
            self.sched.set_accepting(id, false);
        }
        info!(worker = %id, name = %info.name, block = %info.block, slots = info.slots, reattaching = held.len(), "worker connected");
        let awaiting_reattach = reuse.map(|_| held.clone());
        self.workers.insert(
            id,
            Worker {
                info,
                conn: Some(conn),
                lost_since: None,
                held,
                awaiting_reattach,
                client,
                held_back,
                streams_output,
                prefetch,
            },
        );
        self.conns.insert(conn, Conn::Worker(id));
        self.dirty_workers.insert(id);
        id
    }

    /// A connection closed (or was closed).
    pub fn disconnect(&mut self, conn: ConnId, now: u64) {
        let worker = match self.conns.remove(&conn) {
            Some(Conn::Actioner { .. }) => None,
            Some(Conn::Client { worker, .. }) => {
                self.msg.unserve_all(worker);
                Some(worker)
            }
            Some(Conn::Worker(id)) => Some(id),
            None => return,
        };
        self.subs.retain(|s| s.conn != conn);
        self.forget_connection(conn);
        self.unfollow_connection(conn);
        match worker {
            None => {}
            Some(id) => {
                if let Some(w) = self.workers.get_mut(&id)
                    && w.conn == Some(conn)
                {
                    let client_done = w.client && w.held.is_empty();
                    let left = w.info.state == WorkerState::Draining && !w.held_back;
                    if client_done || (left && w.held.is_empty()) {
                        // It said it would leave and has nothing left to report: it is gone, not
                        // lost.
                        info!(worker = %id, "worker drained and left");
                        self.forget_worker(id);
                        return;
                    }
                    w.conn = None;
                    w.info.state = WorkerState::Lost;
                    w.lost_since.get_or_insert(now);
                    info!(worker = %id, holding = w.held.len(), "worker disconnected; its lease runs");
                    self.sched.set_accepting(id, false);
                    self.dirty_workers.insert(id);
                }
            }
        }
    }

    /// Lets time pass: workers silent past their lease lose their connection, and workers gone
    /// past their lease lose their tasks.
    pub fn tick(&mut self, now: u64) {
        let lease = self.cfg.lease_ms;
        if let (Some(last), Some(stall)) = (self.last_tick, self.cfg.stall_ms)
            && now.saturating_sub(last) > stall
        {
            warn!(
                asleep_ms = now - last,
                "the coordinator did not run for a while; every worker gets a fresh lease"
            );
            for w in self.workers.values_mut() {
                if w.conn.is_some() {
                    w.info.last_heartbeat_ms = w.info.last_heartbeat_ms.max(now);
                }
                if let Some(since) = w.lost_since.as_mut() {
                    *since = now;
                }
            }
        }
        self.last_tick = Some(now);
        self.revoke_due = true;
        self.flush_lazy();
        self.remove_expired(now);
        self.end_overdue(now);
        let silent: Vec<(WorkerId, ConnId, u64)> = self
            .workers
            .values()
            .filter_map(|w| {
                let c = w.conn?;
                (now.saturating_sub(w.info.last_heartbeat_ms) > lease).then_some((
                    w.info.id,
                    c,
                    w.info.last_heartbeat_ms,
                ))
            })
            .collect();
        for (id, conn, last) in silent {
            warn!(worker = %id, silent_ms = now - last, "worker silent past its lease; dropping it");
            let reason = format!(
                "no heartbeat for {} ms (the lease is {lease} ms): this connection is closed and \
                 the worker's tasks go back to the queue; reconnect and reattach",
                now - last
            );
            // Said first, in case the worker is alive and reads it; then closed.
            self.immediate.push((
                conn,
                Out::Worker(CoordinatorToWorker::Shutdown {
                    reason: reason.clone(),
                }),
            ));
            self.immediate.push((conn, Out::Close(reason)));
            self.disconnect(conn, now);
            if let Some(w) = self.workers.get_mut(&id) {
                w.lost_since = Some(last);
            }
        }
        let expired: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.conn.is_none() && !w.held.is_empty())
            .filter(|w| w.lost_since.is_some_and(|t| now.saturating_sub(t) >= lease))
            .map(|w| w.info.id)
            .collect();
        for id in expired {
            let held: Vec<TaskId> = self
                .workers
                .get_mut(&id)
                .map(|w| w.held.drain().collect())
                .unwrap_or_default();
            warn!(worker = %id, tasks = held.len(), "lease expired; requeueing its tasks");
            for t in held {
                self.release_slot(id, t);
                self.lose_task(t, &format!("worker {id} lost: lease expired"), now);
            }
            self.dirty_workers.insert(id);
        }
        if let Some(keep) = self.cfg.forget_lost_ms {
            let forgotten: Vec<WorkerId> = self
                .workers
                .values()
                .filter(|w| w.conn.is_none() && w.held.is_empty())
                .filter(|w| w.lost_since.is_some_and(|t| now.saturating_sub(t) >= keep))
                .map(|w| w.info.id)
                .collect();
            for id in forgotten {
                info!(worker = %id, "worker lost for too long; forgotten");
                self.forget_worker(id);
            }
        }
    }

    /// Ends the attempts that ran past their task's timeout by more than a lease: their worker
    /// should have stopped them at the timeout (it enforces it) and did not, or could not. The
    /// attempt ends `timed_out` (the task retries or fails as for any timeout), the worker is told
    /// to kill it, and its own report, should it come, is kept as a late one.
    fn end_overdue(&mut self, now: u64) {
        let mut later = Vec::new();
        while let Some(&(at, id, number)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let Some(w) = task.holder().filter(|&w| task.is_current(w, number)) else {
                continue; // ended meanwhile
            };
            let prefetching = self.workers.get(&w).is_some_and(|x| x.prefetch > 0);
            // A suspended attempt's clock stops, and one held beyond its worker's slots has not
            // started: look again a whole timeout later.
            if task.state() == TaskState::Paused
                || (prefetching && task.state() == TaskState::Assigned)
            {
                later.extend(
                    overdue_at(task.info.spec.timeout_ms, now, self.cfg.lease_ms)
                        .map(|at| (at, id, number)),
                );
                continue;
            }
            // A held attempt's timeout runs from its start, not from its dispatch.
            if prefetching
                && let Some(due) = task.info.times.running_ms.and_then(|started| {
                    overdue_at(task.info.spec.timeout_ms, started, self.cfg.lease_ms)
                })
                && due > now
            {
                later.push((due, id, number));
                continue;
            }
            let timeout = task.info.spec.timeout_ms.unwrap_or(0);
            warn!(task = %id, attempt = number, worker = %w, timeout_ms = timeout, "attempt ran past its timeout and its worker did not stop it; ending it");
            let before = task.state();
            let report = AttemptReport {
                outcome: Some(tatzelwurm_protocol::Outcome::TimedOut),
                error: Some(format!(
                    "timed out: still running {} ms after its {timeout} ms timeout, and its \
                     worker did not stop it; ended by the coordinator",
                    self.cfg.lease_ms
                )),
                ended_ms: now,
                ..Default::default()
            };
            task.report(w, number, report, now);
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.held.remove(&id);
            }
            self.release_slot(w, id);
            self.changed(id, before, now);
            self.send_worker(
                w,
                CoordinatorToWorker::Kill {
                    attempt: AttemptRef {
                        task: id,
                        attempt: number,
                    },
                },
            );
        }
        self.deadlines.extend(later);
    }

    /// Removes a worker that holds nothing from the table and the store. Its id is not handed
    /// out again: attempts keep naming it.
    pub(super) fn forget_worker(&mut self, id: WorkerId) {
        self.workers.remove(&id);
        self.sched.remove_worker(id);
        self.dirty_workers.remove(&id);
        self.removed_workers.push(id);
    }

    pub(super) fn lose_task(&mut self, id: TaskId, reason: &str, now: u64) {
        let to_paused = self.cfg.lost_to_paused;
        if let Some(task) = self.tasks.get_mut(&id) {
            let before = task.state();
            task.lose(reason, to_paused, now);
            self.changed(id, before, now);
        }
    }

    // ---- scheduling --------------------------------------------------------------------

    /// Dispatches ready tasks while workers have room. Called after every batch of inputs.
    pub fn schedule(&mut self, now: u64) -> usize {
        let mut n = 0;
        loop {
            // Picks are gathered in chunks, then applied, so that `tasks` is borrowed by one at a time.
            let tasks = &self.tasks;
            let mut picks = Vec::new();
            while picks.len() < 1024 {
                // A current entry's task, with the tags it prefers.
                let look = |id: TaskId, ticket: u64| tasks.ready_prefer(&id, ticket);
                match self.sched.next(look) {
                    Some((id, w, _)) => picks.push((id, w)),
                    None => break,
                }
            }
            if picks.is_empty() {
                // Every free slot that is left found nothing ready: it may take a task that
                // another worker holds beyond its slots (once a tick).
                if std::mem::take(&mut self.revoke_due) {
                    self.revoke_held();
                }
                return n + self.dispatch_messages(now);
            }
            for (id, w) in picks {
                self.assign_to(id, w, now);
                n += 1;
            }
        }
    }

    /// Starts an attempt of a ready task on worker `w`, whose slot the caller took, and sends
    /// the dispatch once that is durable.
    pub(super) fn assign_to(&mut self, id: TaskId, w: WorkerId, now: u64) {
        let (Some(worker), Some(task)) = (self.workers.get_mut(&w), self.tasks.get_mut(&id)) else {
            return;
        };
        let before = task.state();
        let assignment = task.assign(w, &worker.info.name, now);
        let attempt = assignment.attempt();
        worker.held.insert(id);
        if let Some(at) = overdue_at(task.info.spec.timeout_ms, now, self.cfg.lease_ms) {
            self.deadlines.insert((at, id, attempt.attempt));
        }
        let spec = &task.info.spec;
        let dispatch = Dispatch {
            attempt,
            name: spec.name.clone(),
            payload: spec.payload.clone(),
            timeout_ms: spec.timeout_ms,
            user_key: spec.user_key.clone(),
            user_data: spec.user_data.clone(),
        };
        if let Some(conn) = worker.conn {
            self.durable.push((
                conn,
                Out::Worker(CoordinatorToWorker::Dispatch(Box::new(dispatch))),
            ));
        }
        self.assigned(id, before, now, assignment);
    }

    // ---- workers -----------------------------------------------------------------------

    /// Handles one message from a worker.
    pub fn worker(&mut self, conn: ConnId, msg: WorkerToCoordinator, now: u64) {
        let w = match self.conns.get(&conn) {
            Some(&Conn::Worker(w)) => w,
            Some(&Conn::Client { worker, .. }) if self.workers.contains_key(&worker) => worker,
            Some(Conn::Client { .. }) => {
                // Not serving anything yet: nothing to lease, but heartbeats are answered.
                let reply = match msg {
                    WorkerToCoordinator::Heartbeat { .. } => CoordinatorToWorker::HeartbeatAck,
                    _ => CoordinatorToWorker::Error(err(
                        ErrorKind::InvalidRequest,
                        "this client holds no queue task: serve a queue first",
                    )),
                };
                self.immediate.push((conn, Out::Worker(reply)));
                return;
            }
            _ => return,
        };
        let awaiting = self
            .workers
            .get(&w)
            .is_some_and(|x| x.awaiting_reattach.is_some());
        if awaiting && !matches!(msg, WorkerToCoordinator::Reattach { .. }) {
            // The protocol asks for `reattach` first after a reconnect: a worker that sends
            // something else first claims nothing, and hears so in an empty `reattached`.
            warn!(worker = %w, "reconnected worker sent another message before its reattach; it claims nothing");
            self.reattach(w, Vec::new(), now);
        }
        match msg {
            // Every message, heartbeats included, refreshes the heartbeat time below.
            WorkerToCoordinator::Heartbeat { .. } => {
                self.immediate
                    .push((conn, Out::Worker(CoordinatorToWorker::HeartbeatAck)));
            }
            WorkerToCoordinator::Reattach { running } => self.reattach(w, running, now),
            WorkerToCoordinator::Started { attempt, at_ms } => {
                match self.tasks.get_mut(&attempt.task) {
                    // Nobody waits on a start: it must not cost a commit of its own.
                    Some(task) => {
                        let before = task.state();
                        if task.started(w, attempt.attempt, at_ms, now) {
                            self.changed_lazily(attempt.task, before, now);
                        } else if !task.was_given(w, attempt.attempt) {
                            self.refuse_worker(conn, attempt, "started");
                        }
                        // An older attempt of this worker's (lost meanwhile) is ignored: its
                        // `reattach` drops it.
                    }
                    None => self.refuse_worker(conn, attempt, "started"),
                }
            }
            WorkerToCoordinator::Finished { attempt, report } => {
                self.finished(w, attempt, report, now)
            }
            WorkerToCoordinator::Reject { attempt } => self.reject(w, attempt, now),
            WorkerToCoordinator::Output {
                attempt,
                stream,
                offset,
                data,
            } => self.follow_output(w, attempt, stream, offset, data.0),
            WorkerToCoordinator::Draining => {
                if let Some(worker) = self.workers.get_mut(&w) {
                    worker.info.state = WorkerState::Draining;
                    self.sched.set_accepting(w, false);
                    self.dirty_workers.insert(w);
                    info!(worker = %w, "worker draining");
                }
            }
        }
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.info.last_heartbeat_ms = now;
        }
    }

    pub(super) fn finished(
        &mut self,
        w: WorkerId,
        attempt: AttemptRef,
        report: AttemptReport,
        now: u64,
    ) {
        if let Some(task) = self.tasks.get_mut(&attempt.task) {
            let before = task.state();
            match task.report(w, attempt.attempt, report, now) {
                ReportFate::Current => {
                    if let Some(worker) = self.workers.get_mut(&w) {
                        worker.held.remove(&attempt.task);
                    }
                    self.release_slot(w, attempt.task);
                    self.changed(attempt.task, before, now);
                }
                ReportFate::Late => {
                    info!(task = %attempt.task, attempt = attempt.attempt, worker = %w, "late report recorded");
                    self.dirty_tasks.insert(attempt.task);
                }
                ReportFate::Unknown => {
                    warn!(task = %attempt.task, attempt = attempt.attempt, worker = %w, "report of an attempt this worker was never given");
                    self.refuse_worker_id(w, attempt, "finished");
                }
            }
        } else {
            warn!(task = %attempt.task, attempt = attempt.attempt, worker = %w, "report of an unknown task");
            self.refuse_worker_id(w, attempt, "finished");
        }
        // Acknowledged once durable, whatever became of it, so the worker can forget it.
        self.send_worker(w, CoordinatorToWorker::Ack { attempt });
    }

    /// Tells a worker that a message of its names an attempt it was never given (a bug on its
    /// side, or a task removed meanwhile); nothing changes.
    fn refuse_worker(&mut self, conn: ConnId, attempt: AttemptRef, what: &str) {
        let e = err(
            ErrorKind::UnknownId,
            format!(
                "{what}: attempt {} of task {} was never dispatched to this worker (or the task \
                 was removed); nothing changed",
                attempt.attempt, attempt.task
            ),
        );
        self.immediate
            .push((conn, Out::Worker(CoordinatorToWorker::Error(e))));
    }

    fn refuse_worker_id(&mut self, w: WorkerId, attempt: AttemptRef, what: &str) {
        if let Some(conn) = self.workers.get(&w).and_then(|x| x.conn) {
            self.refuse_worker(conn, attempt, what);
        }
    }

    /// A subscriber will not take a message task: it goes back to its queue without counting
    /// as a failed attempt, to another subscriber first when there is one.
    fn reject(&mut self, w: WorkerId, attempt: AttemptRef, now: u64) {
        let report = AttemptReport {
            outcome: Some(tatzelwurm_protocol::Outcome::HandedBack),
            error: Some("rejected by its subscriber".into()),
            ended_ms: now,
            ..Default::default()
        };
        let current = self
            .tasks
            .get(&attempt.task)
            .is_some_and(|t| t.is_current(w, attempt.attempt));
        if current {
            self.msg.rejected_by(attempt.task, w);
        }
        self.finished(w, attempt, report, now);
    }

    pub(super) fn reattach(&mut self, w: WorkerId, claims: Vec<AttemptRef>, now: u64) {
        let mut keep = Vec::new();
        let mut drop = Vec::new();
        let mut pause = Vec::new();
        let mut ended = Vec::new();
        for claim in claims {
            match self.tasks.get_mut(&claim.task) {
                Some(task) if task.is_current(w, claim.attempt) => match task.state() {
                    TaskState::Killed => {
                        // Killed while the worker was away: stop it, record the attempt as killed.
                        let before = task.state();
                        let report = AttemptReport {
                            outcome: Some(tatzelwurm_protocol::Outcome::Killed),
                            error: Some("killed while its worker was disconnected".into()),
                            ended_ms: now,
                            ..Default::default()
                        };
                        task.report(w, claim.attempt, report, now);
                        self.changed(claim.task, before, now);
                        ended.push(claim.task);
                        drop.push(claim);
                    }
                    TaskState::Paused => {
                        pause.push(claim);
                        keep.push(claim);
                    }
                    _ => keep.push(claim),
                },
                _ => drop.push(claim),
            }
        }
        let kept: HashSet<TaskId> = keep.iter().map(|a| a.task).collect();
        // Only what the worker held before this connection can be unclaimed: a task dispatched
        // since (after an earlier reattach, or to a worker with a new id) is not in its claims.
        let unclaimed: Vec<TaskId> = match self.workers.get_mut(&w) {
            Some(worker) => {
                for t in &ended {
                    worker.held.remove(t);
                }
                let before = worker.awaiting_reattach.take().unwrap_or_default();
                let gone: Vec<TaskId> = before
                    .into_iter()
                    .filter(|t| !kept.contains(t) && worker.held.contains(t))
                    .collect();
                for t in &gone {
                    worker.held.remove(t);
                }
                if worker.info.state == WorkerState::Active && !worker.client {
                    self.sched.set_accepting(w, true);
                }
                gone
            }
            None => Vec::new(),
        };
        for t in ended {
            self.release_slot(w, t);
        }
        for t in unclaimed {
            self.release_slot(w, t);
            self.lose_task(t, &format!("worker {w} reconnected without it"), now);
        }
        info!(worker = %w, kept = keep.len(), dropped = drop.len(), "worker reattached");
        let kept = keep.clone();
        self.send_worker(w, CoordinatorToWorker::Reattached { keep, drop });
        self.follow_reattached(w, &kept);
        for attempt in pause {
            self.send_worker(w, CoordinatorToWorker::Pause { attempt });
        }
    }
}

/// The worker hello a client stands for when it reconnects under its old id.
fn client_hello(hello: &ClientHello, previous_id: Option<WorkerId>) -> WorkerHello {
    WorkerHello {
        block: tatzelwurm_protocol::BlockType::Async,
        slots: 0,
        name: hello.name.clone(),
        host: hello.host.clone(),
        tags: vec![],
        handlers: vec![],
        previous_id,
        streams_output: false,
        prefetch: 0,
        custom_only: false,
    }
}
