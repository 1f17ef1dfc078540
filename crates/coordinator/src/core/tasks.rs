//! Requests about tasks from actioners (clients): add, play, pause, kill, retry, remove,
//! list, show, summaries; id resolution and selectors.

use super::*;

impl Core {
    /// Enters a new task in the table (ready when `play`), to be written with the next batch.
    /// Its queue fills in what the spec leaves out (attempts, timeout).
    /// It gets the next number; `batch` is the add request it came with (0 for message tasks).
    pub(super) fn insert_task(
        &mut self,
        mut spec: TaskSpec,
        namespace: &str,
        play: bool,
        batch: u64,
        now: u64,
    ) -> TaskId {
        let id = TaskId::new();
        let queue = self.queue_for(namespace, &spec);
        self.queue_defaults(queue, &mut spec);
        let mut task = Task::new(id, spec, namespace.to_string(), now, play);
        task.queue = queue;
        task.info.number = self.take_number(id);
        task.info.batch = batch;
        self.counts[idx(task.state())] += 1;
        self.entered[idx(task.state())] += 1;
        self.queues.count(queue, task.state(), true);
        self.tasks.insert(task);
        if play {
            self.enqueue_ready(id);
        }
        self.dirty_tasks.insert(id);
        self.emit(id, now, false);
        id
    }

    // ---- actioners ---------------------------------------------------------------------

    /// Handles one actioner request; the reply is queued (after the commit for changes).
    pub fn actioner(&mut self, conn: ConnId, request: RequestId, body: ActionerRequest, now: u64) {
        let mutating = matches!(
            body,
            ActionerRequest::Add { .. }
                | ActionerRequest::Play { .. }
                | ActionerRequest::Pause { .. }
                | ActionerRequest::Kill { .. }
                | ActionerRequest::Remove { .. }
                | ActionerRequest::Retry { .. }
                | ActionerRequest::Send { .. }
                | ActionerRequest::QueueSet { .. }
                | ActionerRequest::Move { .. }
                | ActionerRequest::WorkerDrain { .. }
        );
        let refusal = if !mutating {
            None
        } else if self.shutting_down {
            Some(err(
                ErrorKind::ShuttingDown,
                "the coordinator is shutting down; nothing was changed",
            ))
        } else if !self.store_ok {
            Some(err(
                ErrorKind::StoreUnavailable,
                "the store cannot write right now; nothing was accepted, retry later",
            ))
        } else {
            None
        };
        // Calls, answers to calls and watches are answered later, or in several parts, by the
        // broker; only a refusal is answered here.
        let later = match (refusal.is_some(), body) {
            (false, ActionerRequest::Call { identifier, body }) => {
                self.call(conn, request, identifier, body)
            }
            (false, ActionerRequest::Respond { call, outcome }) => {
                self.respond(conn, call, outcome)
            }
            (false, ActionerRequest::Watch { ids }) => self.watch(conn, request, &ids),
            (false, ActionerRequest::Follow { id }) => self.follow(conn, request, &id),
            (_, body) => {
                let result = match refusal {
                    Some(e) => Err(e),
                    None => self.answer(conn, request, body, now),
                };
                self.reply(conn, request, result);
                return;
            }
        };
        if let Err(e) = later {
            self.reply(conn, request, Err(e));
        }
    }

    /// Queues the reply to a request: after the commit when it acknowledges a change.
    fn reply(
        &mut self,
        conn: ConnId,
        request: RequestId,
        result: Result<(Reply, bool), ErrorReply>,
    ) {
        let (reply, durable) = match result {
            Ok((reply, durable)) => (reply, durable),
            Err(e) => (Reply::Error(e), false),
        };
        // Every part leaves in order, the parts of a snapshot before any event they precede.
        let queue = if durable {
            &mut self.durable
        } else {
            &mut self.immediate
        };
        for body in split_reply(reply, self.cfg.reply_chunk) {
            queue.push((
                conn,
                Out::Actioner(CoordinatorToActioner::Reply { request, body }),
            ));
        }
    }

    /// The reply, and whether it must wait for the commit.
    pub(super) fn answer(
        &mut self,
        conn: ConnId,
        request: RequestId,
        body: ActionerRequest,
        now: u64,
    ) -> Result<(Reply, bool), ErrorReply> {
        match body {
            ActionerRequest::Add { tasks, play } => {
                if tasks.len() > MAX_ADD_TASKS {
                    return Err(err(
                        ErrorKind::LimitExceeded,
                        format!(
                            "an add of {} tasks; at most {MAX_ADD_TASKS} per request, so split \
                             it (nothing was added)",
                            tasks.len()
                        ),
                    ));
                }
                for (i, spec) in tasks.iter().enumerate() {
                    spec.validate()
                        .map_err(|e| err(ErrorKind::InvalidRequest, format!("task {i}: {e}")))?;
                    if messaging::queue_of(spec).is_some() {
                        return Err(err(
                            ErrorKind::InvalidRequest,
                            format!("task {i}: a message task is sent with `send`, not added"),
                        ));
                    }
                }
                let namespace = self.namespace(conn);
                let batch = self.next_batch;
                self.next_batch += 1;
                let ids: Vec<TaskId> = tasks
                    .into_iter()
                    .map(|spec| self.insert_task(spec, &namespace, play, batch, now))
                    .collect();
                let numbers = ids
                    .iter()
                    .filter_map(|id| self.tasks.get(id).map(|t| t.info.number))
                    .collect();
                Ok((
                    Reply::Added {
                        ids,
                        numbers,
                        batch,
                    },
                    true,
                ))
            }
            ActionerRequest::Play { selector, created } => {
                // `all` without `created` wakes what was paused, not what was never played.
                let check = match (selector.is_bulk(), created) {
                    (true, false) => |t: &Head| match t.state() {
                        TaskState::Paused => t.check_play(),
                        s => Err(err(ErrorKind::InvalidState, s.to_string())),
                    },
                    _ => Head::check_play,
                };
                self.apply(conn, selector, "play", check, Task::play, now)
            }
            ActionerRequest::Pause { selector } => {
                self.apply(conn, selector, "pause", Head::check_pause, Task::pause, now)
            }
            ActionerRequest::Kill { selector } => {
                self.apply(conn, selector, "kill", Head::check_kill, Task::kill, now)
            }
            ActionerRequest::Retry { selector, attempts } => {
                if attempts == 0 {
                    return Err(err(
                        ErrorKind::InvalidRequest,
                        "retry: attempts must be at least 1",
                    ));
                }
                // `all` retries what failed; a killed task comes back only when named.
                let check = match selector.is_bulk() {
                    true => |t: &Head| match t.state() {
                        TaskState::Failed => t.check_retry(),
                        s => Err(err(ErrorKind::InvalidState, s.to_string())),
                    },
                    false => Head::check_retry,
                };
                self.apply(
                    conn,
                    selector,
                    "retry",
                    check,
                    |t, now| t.retry(attempts, now),
                    now,
                )
            }
            ActionerRequest::Remove { selector } => {
                // `all` removes finished tasks only, never one that waits.
                let check = match selector.is_bulk() {
                    true => |t: &Head| match t.state().is_final() {
                        true => t.check_remove(),
                        false => Err(err(ErrorKind::InvalidState, t.state().to_string())),
                    },
                    false => Head::check_remove,
                };
                let ids = self.select(conn, &selector, "remove", check)?;
                for id in &ids {
                    self.remove_task(*id);
                }
                Ok((Reply::Changed { ids, more: false }, true))
            }
            ActionerRequest::List {
                states,
                tags,
                limit,
                queue,
            } => {
                let filter = tatzelwurm_protocol::TaskFilter {
                    states,
                    tags,
                    queue,
                    ..Default::default()
                };
                let limit = limit.map_or(usize::MAX, |l| l as usize);
                Ok((self.page(conn, &filter, limit, None), false))
            }
            ActionerRequest::ListPage {
                filter,
                limit,
                before,
            } => {
                if limit == 0 {
                    return Err(err(
                        ErrorKind::InvalidRequest,
                        "a page holds at least 1 task",
                    ));
                }
                Ok((self.page(conn, &filter, limit as usize, before), false))
            }
            ActionerRequest::Show { id } => {
                let id = self.resolve(&id)?;
                let task = self.tasks.get(&id).expect("resolved");
                Ok((
                    Reply::Task {
                        waiting: self.waiting_reason(&task),
                        task: Box::new(task.into_owned().info),
                    },
                    false,
                ))
            }
            ActionerRequest::Workers => {
                let workers = self.workers.values().map(Worker::info).collect();
                Ok((Reply::Workers { workers }, false))
            }
            ActionerRequest::Summary => {
                let workers_connected =
                    self.workers.values().filter(|w| w.conn.is_some()).count() as u32;
                Ok((
                    Reply::Summary {
                        counts: self.counts(),
                        workers_connected,
                        finished_last_minute: self.rate.last_minute(now),
                    },
                    false,
                ))
            }
            ActionerRequest::Breakdown { key } => {
                let mut by_value: BTreeMap<String, [u64; 8]> = BTreeMap::new();
                for t in self.tasks.iter() {
                    let t = t.task();
                    for tag in t.info.spec.tags.iter().filter(|tag| tag.key == key) {
                        match by_value.get_mut(tag.value.as_str()) {
                            Some(counts) => counts[idx(t.state())] += 1,
                            None => {
                                let mut counts = [0; 8];
                                counts[idx(t.state())] += 1;
                                by_value.insert(tag.value.clone(), counts);
                            }
                        }
                    }
                }
                let values = by_value
                    .into_iter()
                    .map(|(value, counts)| TagCounts {
                        value,
                        counts: TaskState::ALL
                            .iter()
                            .filter(|s| counts[idx(**s)] > 0)
                            .map(|&state| StateCount {
                                state,
                                count: counts[idx(state)],
                            })
                            .collect(),
                    })
                    .collect();
                Ok((Reply::Breakdown { key, values }, false))
            }
            ActionerRequest::Subscribe { filter } => {
                self.subscribe(conn, request, filter).map(|r| (r, false))
            }
            // Durable, so that it leaves after every event queued before it.
            ActionerRequest::Unsubscribe { subscription } => {
                self.unsubscribe(conn, subscription).map(|r| (r, true))
            }
            ActionerRequest::Send {
                queue,
                body,
                no_reply,
            } => self
                .send_message(conn, request, queue, body, no_reply, now)
                .map(|r| (r, true)),
            ActionerRequest::Serve { queue, limit } => {
                self.serve(conn, queue, limit, now).map(|r| (r, false))
            }
            ActionerRequest::Unserve { queue } => self.unserve(conn, queue).map(|r| (r, false)),
            ActionerRequest::Register { identifier } => {
                self.register(conn, identifier).map(|r| (r, false))
            }
            ActionerRequest::Unregister { identifier } => {
                self.unregister(conn, identifier).map(|r| (r, false))
            }
            ActionerRequest::Broadcast { message } => Ok((self.broadcast(conn, message), false)),
            ActionerRequest::Listen { subjects, senders } => {
                Ok((self.listen(conn, request, subjects, senders), false))
            }
            ActionerRequest::Unlisten { listener } => {
                self.unlisten(conn, listener).map(|r| (r, false))
            }
            ActionerRequest::WorkerDrain { worker, drain } => {
                self.drain_worker(worker, drain).map(|r| (r, true))
            }
            ActionerRequest::Queues => Ok((self.queues(conn, now), false)),
            ActionerRequest::QueueShow { queue } => {
                self.queue_show(conn, &queue, now).map(|r| (r, false))
            }
            ActionerRequest::QueueSet { queue, change } => self
                .queue_set(conn, &queue, &change, now)
                .map(|r| (r, true)),
            ActionerRequest::Move { selector, queue } => self
                .move_tasks(conn, selector, &queue, now)
                .map(|r| (r, true)),
            ActionerRequest::QueueTasks { queue, limit } => {
                Ok((self.queue_tasks(conn, queue, limit), false))
            }
            // Handled before `answer`.
            ActionerRequest::Call { .. }
            | ActionerRequest::Respond { .. }
            | ActionerRequest::Watch { .. }
            | ActionerRequest::Follow { .. } => Err(err(
                ErrorKind::Internal,
                "a call, respond or watch reached answer",
            )),
        }
    }

    /// Resolves a task's number (decimal digits), its id, or a unique prefix of its id (hex
    /// digits, hyphens ignored; a prefix of decimal digits alone is read as a number).
    pub fn resolve(&self, text: &str) -> Result<TaskId, ErrorReply> {
        if let Some(n) = number_of(text) {
            return self
                .numbered(n)
                .ok_or_else(|| err(ErrorKind::UnknownId, format!("no task number {n}")));
        }
        let hex: String = text
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err(
                ErrorKind::UnknownId,
                format!("{text:?} is not a task id or a prefix of one"),
            ));
        }
        let pad = |c: char| format!("{hex}{}", c.to_string().repeat(32 - hex.len()));
        let lo = TaskId(Uuid::parse_str(&pad('0')).expect("32 hex digits"));
        let hi = TaskId(Uuid::parse_str(&pad('f')).expect("32 hex digits"));
        let mut found = self.tasks.range(lo..=hi).map(|t| t.id());
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(err(ErrorKind::UnknownId, format!("no task with id {text}"))),
            (Some(a), Some(b)) => Err(err(
                ErrorKind::AmbiguousId,
                format!("id prefix {text} is ambiguous: it matches {a}, {b} and maybe more"),
            )),
        }
    }

    /// At most `limit` tasks that match `filter`, newest first, older than `before` if given,
    /// with the counts per state.
    fn page(
        &self,
        conn: ConnId,
        filter: &tatzelwurm_protocol::TaskFilter,
        limit: usize,
        before: Option<TaskId>,
    ) -> Reply {
        let matches = self.filter_matcher(conn, filter);
        let upto = match before {
            Some(b) => std::ops::Bound::Excluded(b),
            None => std::ops::Bound::Unbounded,
        };
        let tasks = self
            .tasks
            .range((std::ops::Bound::Unbounded, upto))
            .rev()
            .filter(|t| matches(t))
            .take(limit)
            .map(|t| t.task().summary())
            .collect();
        Reply::Tasks {
            tasks,
            counts: self.counts(),
        }
    }

    /// Whether a task matches `f` (a queue named in it is one of `conn`'s namespace). States
    /// and queues are read without decoding a packed task; tags, names and batches decode it.
    fn filter_matcher<'a>(
        &self,
        conn: ConnId,
        f: &'a tatzelwurm_protocol::TaskFilter,
    ) -> impl Fn(&table::TaskRef<'_>) -> bool + 'a {
        let queue = f.queue.as_ref().map(|name| self.queue_to_match(conn, name));
        let whole = !f.tags.is_empty() || f.name.is_some() || f.batch.is_some();
        move |t: &table::TaskRef<'_>| {
            (f.states.is_empty() || f.states.contains(&t.state()))
                && queue.is_none_or(|q| t.queue() == q)
                && (!whole || {
                    let t = t.task();
                    has_tags(&t, &f.tags)
                        && (f.name.is_none() || t.info.spec.name == f.name)
                        && f.batch.is_none_or(|b| t.info.batch == b)
                })
        }
    }

    /// The tasks a selector names, all valid for the operation, or the first refusal.
    pub(super) fn select(
        &self,
        conn: ConnId,
        selector: &Selector,
        op: &str,
        check: fn(&Head) -> Result<(), ErrorReply>,
    ) -> Result<Vec<TaskId>, ErrorReply> {
        match selector {
            Selector::All => Ok(self
                .tasks
                .iter()
                .filter(|t| check(&t.head()).is_ok())
                .map(|t| t.id())
                .collect()),
            Selector::Where(f) => {
                let matches = self.filter_matcher(conn, f);
                Ok(self
                    .tasks
                    .iter()
                    .filter(|t| check(&t.head()).is_ok())
                    .filter(|t| matches(t))
                    .map(|t| t.id())
                    .collect())
            }
            Selector::Ids(texts) if texts.is_empty() => Err(err(
                ErrorKind::InvalidRequest,
                format!("{op}: name some task ids, or all"),
            )),
            Selector::Ids(texts) => {
                let mut ids = Vec::with_capacity(texts.len());
                let mut seen = HashSet::new();
                for text in texts {
                    // A range of numbers, `100-200`: the tasks of it that exist.
                    let named: Vec<TaskId> = match range_of(text) {
                        Some((a, b)) => {
                            let found: Vec<TaskId> =
                                (a..=b).filter_map(|n| self.numbered(n)).collect();
                            if found.is_empty() {
                                return Err(err(
                                    ErrorKind::UnknownId,
                                    format!("no task numbered {a} to {b}"),
                                ));
                            }
                            found
                        }
                        None => vec![self.resolve(text)?],
                    };
                    for id in named {
                        let t = self.tasks.look(&id).expect("resolved");
                        check(&t.head())?;
                        if seen.insert(id) {
                            ids.push(id);
                        }
                    }
                }
                Ok(ids)
            }
        }
    }

    pub(super) fn apply(
        &mut self,
        conn: ConnId,
        selector: Selector,
        op: &str,
        check: fn(&Head) -> Result<(), ErrorReply>,
        action: impl Fn(&mut Task, u64) -> Result<WorkerOrder, ErrorReply>,
        now: u64,
    ) -> Result<(Reply, bool), ErrorReply> {
        let ids = self.select(conn, &selector, op, check)?;
        for &id in &ids {
            let task = self.tasks.get_mut(&id).expect("selected tasks exist");
            let before = task.state();
            let order = action(task, now)?;
            self.changed(id, before, now);
            match order {
                WorkerOrder::None => {}
                WorkerOrder::Pause(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Pause { attempt })
                }
                WorkerOrder::Resume(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Resume { attempt })
                }
                WorkerOrder::Kill(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Kill { attempt })
                }
            }
        }
        debug!(op, tasks = ids.len(), "applied");
        Ok((Reply::Changed { ids, more: false }, true))
    }
}

/// A task number as people type it: decimal digits, `42` or `#42`.
fn number_of(text: &str) -> Option<u64> {
    let t = text.strip_prefix('#').unwrap_or(text);
    (!t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

/// A range of task numbers, `100-200`, in order.
fn range_of(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once('-')?;
    let (a, b) = (number_of(a)?, number_of(b)?);
    (a <= b).then_some((a, b))
}
