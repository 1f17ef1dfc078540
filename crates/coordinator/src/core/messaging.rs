//! The broker: message tasks in named queues with replies to their senders, RPC to one live
//! connection, and broadcasts, each within the namespace of the connection that uses it.
//!
//! A message task is a task like any other (stored, leased, reattached, its outcome kept with
//! its attempts); what differs is where it goes. It waits in the FIFO of its queue, not in the
//! scheduler's, and goes to a connection that serves that queue, with room under the limit that
//! connection set, least loaded first, and one that has not rejected the task before the others.
//! Its sender watches it: the outcome (pending, then a value, an error or a cancellation) is
//! sent to the watching connections once it is durable. RPC registrations, calls in flight,
//! listeners and watchers live with their connections and are never stored.
//!
//! [`Messaging`] holds that state and the routing decisions as plain code; the `impl Core` below
//! connects it to the tables.

use std::collections::VecDeque;

use tatzelwurm_protocol::{
    BroadcastMessage, Data, MessageOutcome, Payload, QueuedMessage, pattern_matches,
};

use super::*;

/// A queue of the broker: its namespace and its name.
pub(super) type QueueName = (String, String);

/// The queue of a message task.
pub(super) fn queue_of(spec: &TaskSpec) -> Option<QueueName> {
    match &spec.payload {
        Payload::Message {
            namespace, queue, ..
        } => Some((namespace.clone(), queue.clone())),
        _ => None,
    }
}

/// Whether a task is a message task whose sender does not want its outcome.
fn no_reply(spec: &TaskSpec) -> bool {
    matches!(spec.payload, Payload::Message { no_reply: true, .. })
}

/// One connection's subscription to a queue.
#[derive(Clone, Copy, Debug, Default)]
struct Serving {
    /// Most tasks of the queue it may hold at once.
    limit: u32,
    /// Tasks of the queue it holds now.
    held: u32,
}

/// A queue: its waiting tasks and who serves it.
#[derive(Default)]
struct MsgQueue {
    /// Ready tasks, oldest first, each with the ticket it had when queued (a task whose ticket
    /// changed since left the queue by another path and is skipped).
    ready: VecDeque<(TaskId, u64)>,
    /// Ready tasks that every current subscriber rejected: they wait here, out of the way of
    /// the others, until a connection serves the queue (again).
    parked: Vec<(TaskId, u64)>,
    /// Ready tasks, counted exactly (`ready` may hold stale entries).
    depth: u64,
    /// Tasks of the queue that some connection holds.
    held: u64,
    /// The workers (connections with an id) that serve it.
    subs: BTreeMap<WorkerId, Serving>,
}

/// An RPC on its way: who asked, and who answers.
struct Call {
    caller: ConnId,
    request: RequestId,
    holder: ConnId,
}

/// A connection that listens to broadcasts.
struct Listener {
    conn: ConnId,
    request: RequestId,
    namespace: String,
    subjects: Vec<String>,
    senders: Vec<String>,
}

impl Listener {
    /// kiwipy's rule: a broadcast without a subject (sender) passes any subject (sender) filter.
    fn takes(&self, m: &BroadcastMessage) -> bool {
        let ok = |patterns: &[String], value: &Option<String>| match value {
            Some(v) if !patterns.is_empty() => patterns.iter().any(|p| pattern_matches(p, v)),
            _ => true,
        };
        ok(&self.subjects, &m.subject) && ok(&self.senders, &m.sender)
    }
}

/// The broker's state, all of it in memory and rebuilt from the task table at start.
#[derive(Default)]
pub(super) struct Messaging {
    queues: BTreeMap<QueueName, MsgQueue>,
    next_ticket: u64,
    /// Which connection holds each RPC identifier of each namespace.
    rpc: HashMap<(String, String), ConnId>,
    calls: HashMap<u64, Call>,
    next_call: u64,
    listeners: Vec<Listener>,
    /// Who waits for each message task's outcome: (connection, request to answer).
    watchers: HashMap<TaskId, Vec<(ConnId, RequestId)>>,
    /// Who rejected a waiting task: they get it only when no other subscriber has room.
    rejected: HashMap<TaskId, HashSet<WorkerId>>,
}

impl Messaging {
    /// Queues a ready task; returns its ticket.
    pub(super) fn enqueue(&mut self, q: QueueName, id: TaskId) -> u64 {
        self.next_ticket += 1;
        let queue = self.queues.entry(q).or_default();
        queue.ready.push_back((id, self.next_ticket));
        queue.depth += 1;
        self.next_ticket
    }

    /// A ready task of `q` left `ready` (dispatched, paused, killed, removed).
    pub(super) fn left_ready(&mut self, q: &QueueName) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.depth = queue.depth.saturating_sub(1);
        }
    }

    /// `w` serves `q`, holding `held` of its tasks already (after a reconnect). Tasks that
    /// every subscriber had rejected are offered again, to `w` too.
    pub(super) fn serve(&mut self, w: WorkerId, q: QueueName, limit: u32, held: u32) {
        let queue = self.queues.entry(q).or_default();
        queue.subs.insert(w, Serving { limit, held });
        for entry in queue.parked.drain(..).rev() {
            queue.ready.push_front(entry);
        }
        // A new subscription is offered what the connection rejected before.
        if !self.rejected.is_empty() {
            for (id, _) in &queue.ready {
                if let Some(r) = self.rejected.get_mut(id) {
                    r.remove(&w);
                }
            }
        }
    }

    /// `w` stops serving `q`; false when it did not.
    pub(super) fn unserve(&mut self, w: WorkerId, q: &QueueName) -> bool {
        self.queues
            .get_mut(q)
            .is_some_and(|queue| queue.subs.remove(&w).is_some())
    }

    /// `w` stops serving every queue (its connection ended).
    pub(super) fn unserve_all(&mut self, w: WorkerId) {
        for queue in self.queues.values_mut() {
            queue.subs.remove(&w);
        }
    }

    /// A task of `q` that `w` held is no longer held.
    pub(super) fn release(&mut self, w: WorkerId, q: &QueueName) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.held = queue.held.saturating_sub(1);
            if let Some(s) = queue.subs.get_mut(&w) {
                s.held = s.held.saturating_sub(1);
            }
        }
    }

    /// `w` rejected `id`: others get it first from now on.
    pub(super) fn rejected_by(&mut self, id: TaskId, w: WorkerId) {
        self.rejected.entry(id).or_default().insert(w);
    }

    /// The next delivery: the oldest live task of a queue that some subscriber has room for,
    /// and the subscriber (the least loaded one that has not rejected it). A task that every
    /// subscriber rejected is parked, so that it neither blocks the queue nor goes round the
    /// same subscribers for ever. The slot is taken. `live(task, ticket)` says whether a queue
    /// entry is current; `open(queue, held)` whether the queue's settings let it deliver now
    /// (not paused, under its limit).
    pub(super) fn next(
        &mut self,
        mut live: impl FnMut(TaskId, u64) -> bool,
        open: impl Fn(&QueueName, u64) -> bool,
    ) -> Option<(TaskId, WorkerId)> {
        for (name, queue) in self.queues.iter_mut() {
            if queue.depth == 0
                || !queue.subs.values().any(|s| s.held < s.limit)
                || !open(name, queue.held)
            {
                continue;
            }
            while let Some(&(id, ticket)) = queue.ready.front() {
                if !live(id, ticket) {
                    queue.ready.pop_front();
                    continue;
                }
                let refused = self.rejected.get(&id);
                let willing = |w: &WorkerId| !refused.is_some_and(|r| r.contains(w));
                if !queue.subs.keys().any(willing) {
                    queue.ready.pop_front();
                    queue.parked.push((id, ticket));
                    continue;
                }
                let load = |s: &Serving| ((s.held as u64) << 32) / s.limit.max(1) as u64;
                let Some(pick) = queue
                    .subs
                    .iter()
                    .filter(|(w, s)| s.held < s.limit && willing(w))
                    .min_by_key(|(w, s)| (load(s), **w))
                    .map(|(w, _)| *w)
                else {
                    break; // whoever would take it is full: the queue waits
                };
                queue.ready.pop_front();
                queue.held += 1;
                if let Some(s) = queue.subs.get_mut(&pick) {
                    s.held += 1;
                }
                return Some((id, pick));
            }
        }
        None
    }

    /// A restored task of `q` is held by a worker.
    pub(super) fn note_held(&mut self, q: QueueName) {
        self.queues.entry(q).or_default().held += 1;
    }

    /// Forgets what is kept per task once the task left its queue for good.
    pub(super) fn forget_task(&mut self, id: TaskId) {
        self.rejected.remove(&id);
    }

    /// Who serves a queue: connections, the sum of their limits, and the queue's tasks they
    /// hold.
    pub(super) fn serving(&self, q: &QueueName) -> (u32, u64, u64) {
        self.queues.get(q).map_or((0, 0, 0), |queue| {
            (
                queue.subs.len() as u32,
                queue.subs.values().map(|s| s.limit as u64).sum(),
                queue.held,
            )
        })
    }

    /// The live waiting entries of a queue, oldest first.
    fn waiting(&self, q: &QueueName) -> impl Iterator<Item = (TaskId, u64)> + '_ {
        self.queues.get(q).into_iter().flat_map(|queue| {
            let mut all: Vec<(TaskId, u64)> = queue
                .parked
                .iter()
                .chain(queue.ready.iter())
                .copied()
                .collect();
            all.sort_by_key(|&(_, ticket)| ticket);
            all
        })
    }
}

/// The outcome a sender hears for a message task in its state now, if any.
fn outcome_of(task: &Task) -> Option<MessageOutcome> {
    let last = task.info.attempts.last();
    match task.state() {
        TaskState::Running => Some(MessageOutcome::Pending),
        TaskState::Completed => Some(MessageOutcome::Value(
            last.map(|a| a.output.clone()).unwrap_or_default(),
        )),
        TaskState::Failed => Some(MessageOutcome::Failed(
            last.and_then(|a| a.error.clone())
                .unwrap_or_else(|| "the task failed".into()),
        )),
        TaskState::Killed => Some(MessageOutcome::Cancelled("the task was killed".into())),
        _ => None,
    }
}

impl Core {
    /// The namespace of a connection (the default one for workers).
    pub(super) fn namespace(&self, conn: ConnId) -> String {
        match self.conns.get(&conn) {
            Some(Conn::Actioner { namespace }) | Some(Conn::Client { namespace, .. }) => {
                namespace.clone()
            }
            _ => tatzelwurm_protocol::DEFAULT_NAMESPACE.to_string(),
        }
    }

    /// Frees the slot a task held on `w`: in the scheduler, or in its queue of the broker.
    pub(super) fn release_slot(&mut self, w: WorkerId, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        match queue_of(&task.info.spec) {
            Some(q) => self.msg.release(w, &q),
            None => self.sched.release(w, task.queue),
        }
    }

    /// Broker bookkeeping of a message task's move from `before` to its state now: its queue's
    /// depth, and the outcome for whoever watches it (pending at once, a final one durable).
    pub(super) fn message_transition(&mut self, id: TaskId, before: TaskState) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let Some(q) = queue_of(&task.info.spec) else {
            return;
        };
        let after = task.state();
        if before == TaskState::Ready {
            self.msg.left_ready(&q);
        }
        if after.is_final() {
            self.msg.forget_task(id);
        }
        let Some(outcome) = outcome_of(&task) else {
            return;
        };
        let watchers = if after.is_final() {
            self.msg.watchers.remove(&id).unwrap_or_default()
        } else {
            self.msg.watchers.get(&id).cloned().unwrap_or_default()
        };
        for (conn, request) in watchers {
            let msg = Out::Actioner(CoordinatorToActioner::Reply {
                request,
                body: Reply::TaskOutcome {
                    id,
                    outcome: outcome.clone(),
                },
            });
            if after.is_final() {
                self.durable.push((conn, msg));
            } else {
                self.immediate.push((conn, msg));
            }
        }
    }

    /// Broker bookkeeping of a task leaving the table: its queue's depth, and whoever waits
    /// for it hears that nobody will answer.
    pub(super) fn message_removed(&mut self, t: &Task) {
        let Some(q) = queue_of(&t.info.spec) else {
            return;
        };
        let id = t.id();
        if t.state() == TaskState::Ready {
            self.msg.left_ready(&q);
        }
        self.msg.forget_task(id);
        for (conn, request) in self.msg.watchers.remove(&id).unwrap_or_default() {
            self.durable.push((
                conn,
                Out::Actioner(CoordinatorToActioner::Reply {
                    request,
                    body: Reply::TaskOutcome {
                        id,
                        outcome: MessageOutcome::Cancelled("the task was removed".into()),
                    },
                }),
            ));
        }
    }

    /// A message task nobody waits for is removed once it ended and no worker holds it.
    pub(super) fn remove_if_unwanted(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.get(&id)
            && t.state().is_final()
            && t.holder().is_none()
            && no_reply(&t.info.spec)
        {
            self.remove_task(id);
        }
    }

    /// Hands the ready message tasks to the connections that serve their queues.
    pub(super) fn dispatch_messages(&mut self, now: u64) -> usize {
        let mut n = 0;
        loop {
            let tasks = &self.tasks;
            let live = |id: TaskId, ticket: u64| {
                tasks
                    .look(&id)
                    .is_some_and(|t| t.state() == TaskState::Ready && t.ticket() == ticket)
            };
            let queues = &self.queues;
            let open = |(ns, name): &QueueName, held: u64| {
                queues.find(ns, name).is_none_or(|q| {
                    let s = &queues.get(q).settings;
                    !s.paused && s.limit.is_none_or(|l| held < l as u64)
                })
            };
            let Some((id, w)) = self.msg.next(live, open) else {
                return n;
            };
            self.assign_to(id, w, now);
            n += 1;
        }
    }

    /// `send`: a message task into a queue of the connection's namespace.
    pub(super) fn send_message(
        &mut self,
        conn: ConnId,
        request: RequestId,
        queue: String,
        body: Data,
        no_reply: bool,
        now: u64,
    ) -> Result<Reply, ErrorReply> {
        if queue.is_empty() {
            return Err(err(ErrorKind::InvalidRequest, "send: name a queue"));
        }
        let namespace = self.namespace(conn);
        let spec = TaskSpec::new(Payload::Message {
            namespace: namespace.clone(),
            queue,
            body,
            no_reply,
        });
        let id = self.insert_task(spec, &namespace, true, 0, now);
        if !no_reply {
            self.msg
                .watchers
                .entry(id)
                .or_default()
                .push((conn, request));
        }
        Ok(Reply::Sent { id })
    }

    /// `watch`: the outcomes of message tasks, again (after a reconnect).
    pub(super) fn watch(
        &mut self,
        conn: ConnId,
        request: RequestId,
        texts: &[String],
    ) -> Result<(), ErrorReply> {
        let ids: Vec<TaskId> = texts
            .iter()
            .map(|t| self.resolve(t))
            .collect::<Result<_, _>>()?;
        if let Some(id) = ids.iter().find(|id| {
            self.tasks
                .get(id)
                .is_none_or(|t| queue_of(&t.info.spec).is_none())
        }) {
            return Err(err(
                ErrorKind::InvalidRequest,
                format!("watch: task {id} is not a message task"),
            ));
        }
        let mut now_known = Vec::new();
        for &id in &ids {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if let Some(outcome) = outcome_of(&task) {
                now_known.push((id, outcome.clone()));
                if outcome.is_final() {
                    continue;
                }
            }
            let w = self.msg.watchers.entry(id).or_default();
            if !w.contains(&(conn, request)) {
                w.push((conn, request));
            }
        }
        // The reply first, then what is known already, in order on the same queue.
        self.immediate.push((
            conn,
            Out::Actioner(CoordinatorToActioner::Reply {
                request,
                body: Reply::Watching { ids },
            }),
        ));
        for (id, outcome) in now_known {
            self.immediate.push((
                conn,
                Out::Actioner(CoordinatorToActioner::Reply {
                    request,
                    body: Reply::TaskOutcome { id, outcome },
                }),
            ));
        }
        Ok(())
    }

    /// `serve`: this client connection takes tasks of a queue.
    pub(super) fn serve(
        &mut self,
        conn: ConnId,
        queue: String,
        limit: u32,
        now: u64,
    ) -> Result<Reply, ErrorReply> {
        if queue.is_empty() || limit == 0 {
            return Err(err(
                ErrorKind::InvalidRequest,
                "serve: name a queue and a limit of at least 1",
            ));
        }
        let w = self.client_worker(conn, now)?;
        let q = (self.namespace(conn), queue);
        let tasks = &self.tasks;
        let held = self.workers[&w]
            .held
            .iter()
            .filter(|t| tasks.get(t).and_then(|t| queue_of(&t.info.spec)).as_ref() == Some(&q))
            .count() as u32;
        let label = format!("queue {}/{}", q.0, q.1);
        self.msg.serve(w, q, limit, held);
        if let Some(worker) = self.workers.get_mut(&w)
            && !worker.info.handlers.contains(&label)
        {
            worker.info.handlers.push(label);
            worker.info.slots = worker.info.slots.saturating_add(limit);
            self.dirty_workers.insert(w);
        }
        Ok(Reply::Done)
    }

    /// `unserve`: the queue keeps its tasks; those this connection holds stay held.
    pub(super) fn unserve(&mut self, conn: ConnId, queue: String) -> Result<Reply, ErrorReply> {
        let q = (self.namespace(conn), queue);
        let w = match self.conns.get(&conn) {
            Some(Conn::Client { worker, .. }) => *worker,
            _ => return Err(err(ErrorKind::InvalidRequest, "unserve: not a client")),
        };
        if !self.msg.unserve(w, &q) {
            return Err(err(
                ErrorKind::UnknownId,
                format!("this connection does not serve queue {}", q.1),
            ));
        }
        let label = format!("queue {}/{}", q.0, q.1);
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.info.handlers.retain(|h| *h != label);
            self.dirty_workers.insert(w);
        }
        Ok(Reply::Done)
    }

    /// `register`: an RPC identifier for this connection, unique in the namespace.
    pub(super) fn register(
        &mut self,
        conn: ConnId,
        identifier: String,
    ) -> Result<Reply, ErrorReply> {
        if identifier.is_empty() {
            return Err(err(
                ErrorKind::InvalidRequest,
                "register: name an identifier",
            ));
        }
        let key = (self.namespace(conn), identifier);
        match self.msg.rpc.get(&key) {
            // Again from its holder (a retry over a reconnect): nothing changes.
            Some(&holder) if holder == conn => Ok(Reply::Done),
            Some(_) => Err(err(
                ErrorKind::DuplicateIdentifier,
                format!("RPC identifier {:?} is held by another connection", key.1),
            )),
            None => {
                self.msg.rpc.insert(key, conn);
                Ok(Reply::Done)
            }
        }
    }

    /// `unregister`.
    pub(super) fn unregister(
        &mut self,
        conn: ConnId,
        identifier: String,
    ) -> Result<Reply, ErrorReply> {
        let key = (self.namespace(conn), identifier);
        if self.msg.rpc.get(&key) != Some(&conn) {
            return Err(err(
                ErrorKind::UnknownId,
                format!("this connection holds no RPC identifier {:?}", key.1),
            ));
        }
        self.msg.rpc.remove(&key);
        Ok(Reply::Done)
    }

    /// `call`: forwards an RPC to the identifier's holder; the answers come with `respond`.
    pub(super) fn call(
        &mut self,
        conn: ConnId,
        request: RequestId,
        identifier: String,
        body: Data,
    ) -> Result<(), ErrorReply> {
        let key = (self.namespace(conn), identifier);
        let Some(&holder) = self.msg.rpc.get(&key) else {
            return Err(err(
                ErrorKind::Unroutable,
                format!("no connection holds RPC identifier {:?}", key.1),
            ));
        };
        self.msg.next_call += 1;
        let call = self.msg.next_call;
        self.msg.calls.insert(
            call,
            Call {
                caller: conn,
                request,
                holder,
            },
        );
        self.immediate.push((
            holder,
            Out::Actioner(CoordinatorToActioner::Call {
                call,
                identifier: key.1,
                body,
            }),
        ));
        // Routed: the caller knows at once that somebody holds the identifier (kiwipy raises
        // `UnroutableError` from `rpc_send` itself, not from its future).
        self.immediate.push((
            conn,
            Out::Actioner(CoordinatorToActioner::Reply {
                request,
                body: Reply::Done,
            }),
        ));
        Ok(())
    }

    /// `respond`: an answer to a call this connection received, forwarded to the caller.
    pub(super) fn respond(
        &mut self,
        conn: ConnId,
        call: u64,
        outcome: MessageOutcome,
    ) -> Result<(), ErrorReply> {
        let Some(c) = self.msg.calls.get(&call).filter(|c| c.holder == conn) else {
            return Err(err(
                ErrorKind::UnknownId,
                format!(
                    "no call {call} waits for this connection's answer (its caller may have gone)"
                ),
            ));
        };
        let (caller, request) = (c.caller, c.request);
        if outcome.is_final() {
            self.msg.calls.remove(&call);
        }
        self.immediate.push((
            caller,
            Out::Actioner(CoordinatorToActioner::Reply {
                request,
                body: Reply::CallOutcome { outcome },
            }),
        ));
        Ok(())
    }

    /// `broadcast`: to every listener of the namespace whose filters take it.
    pub(super) fn broadcast(&mut self, conn: ConnId, message: BroadcastMessage) -> Reply {
        let namespace = self.namespace(conn);
        let mut n = 0;
        for l in &self.msg.listeners {
            if l.namespace == namespace && l.takes(&message) {
                self.immediate.push((
                    l.conn,
                    Out::Actioner(CoordinatorToActioner::Broadcast {
                        listener: l.request,
                        message: message.clone(),
                    }),
                ));
                n += 1;
            }
        }
        Reply::Broadcasted { listeners: n }
    }

    /// `listen`.
    pub(super) fn listen(
        &mut self,
        conn: ConnId,
        request: RequestId,
        subjects: Vec<String>,
        senders: Vec<String>,
    ) -> Reply {
        let namespace = self.namespace(conn);
        self.msg.listeners.push(Listener {
            conn,
            request,
            namespace,
            subjects,
            senders,
        });
        Reply::Done
    }

    /// `unlisten`.
    pub(super) fn unlisten(
        &mut self,
        conn: ConnId,
        listener: RequestId,
    ) -> Result<Reply, ErrorReply> {
        let before = self.msg.listeners.len();
        self.msg
            .listeners
            .retain(|l| !(l.conn == conn && l.request == listener));
        if self.msg.listeners.len() == before {
            return Err(err(
                ErrorKind::UnknownId,
                format!("this connection has no listener {}", listener.0),
            ));
        }
        Ok(Reply::Done)
    }

    /// `queue_tasks`: the waiting message tasks of a queue, oldest first.
    pub(super) fn queue_tasks(&self, conn: ConnId, queue: String, limit: Option<u32>) -> Reply {
        let q = (self.namespace(conn), queue);
        let tasks = self
            .msg
            .waiting(&q)
            .filter_map(|(id, ticket)| {
                let t = self.tasks.look(&id)?;
                (t.state() == TaskState::Ready && t.ticket() == ticket).then(|| t.task())
            })
            .take(limit.map_or(usize::MAX, |l| l as usize))
            .filter_map(|t| match &t.info.spec.payload {
                Payload::Message { body, no_reply, .. } => Some(QueuedMessage {
                    id: t.id(),
                    body: body.clone(),
                    no_reply: *no_reply,
                    created_ms: t.info.times.created_ms,
                }),
                _ => None,
            })
            .collect();
        Reply::QueueTasks { tasks }
    }

    /// What a connection leaves behind when it ends: its RPC identifiers, listeners, watches
    /// and subscriptions go; calls it was to answer fail for their callers.
    pub(super) fn forget_connection(&mut self, conn: ConnId) {
        self.msg.rpc.retain(|_, c| *c != conn);
        self.msg.listeners.retain(|l| l.conn != conn);
        for w in self.msg.watchers.values_mut() {
            w.retain(|(c, _)| *c != conn);
        }
        self.msg.watchers.retain(|_, w| !w.is_empty());
        let failed: Vec<u64> = self
            .msg
            .calls
            .iter()
            .filter(|(_, c)| c.holder == conn || c.caller == conn)
            .map(|(&n, _)| n)
            .collect();
        for n in failed {
            let c = self.msg.calls.remove(&n).expect("listed");
            if c.holder == conn && c.caller != conn {
                self.immediate.push((
                    c.caller,
                    Out::Actioner(CoordinatorToActioner::Reply {
                        request: c.request,
                        body: Reply::Error(err(
                            ErrorKind::DeliveryFailed,
                            "the connection that held the RPC identifier went away before it answered",
                        )),
                    }),
                ));
            }
        }
    }
}
