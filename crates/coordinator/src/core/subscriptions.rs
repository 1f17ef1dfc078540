//! Subscriptions: who hears about which task changes, and the events they get.

use super::*;

/// One `subscribe` request: the connection it came on, the request id its events carry, and
/// which tasks it follows (a task matches by id, or by its tags and queue: the union).
pub(super) struct Subscription {
    pub(super) conn: ConnId,
    pub(super) request: RequestId,
    pub(super) ids: HashSet<TaskId>,
    pub(super) tags: Vec<Tag>,
    pub(super) queue: Option<crate::scheduler::QueueIdx>,
    pub(super) batch: Option<u64>,
    pub(super) all: bool,
}

impl Subscription {
    /// Whether the subscription follows a task: by its id or queue, or else by its tags and
    /// batch, for which `task` gives the whole task (decoded only then, when it is packed).
    fn takes<'t>(
        &self,
        id: TaskId,
        queue: crate::scheduler::QueueIdx,
        task: impl FnOnce() -> std::borrow::Cow<'t, Task>,
    ) -> bool {
        if self.all || self.ids.contains(&id) {
            return true;
        }
        if (self.tags.is_empty() && self.queue.is_none() && self.batch.is_none())
            || self.queue.is_some_and(|q| q != queue)
        {
            return false;
        }
        if self.tags.is_empty() && self.batch.is_none() {
            return true;
        }
        let task = task();
        has_tags(&task, &self.tags) && self.batch.is_none_or(|b| task.info.batch == b)
    }
}

impl Core {
    /// Sends the task's event to its subscribers: with the next commit, or `at_once`.
    pub(super) fn emit(&mut self, id: TaskId, now: u64, at_once: bool) {
        if self.subs.is_empty() {
            return;
        }
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let event = TaskEvent {
            id,
            state: task.state(),
            at_ms: now,
            attempt: task.info.attempts.len() as u32,
        };
        for s in &self.subs {
            if s.takes(id, task.queue, || std::borrow::Cow::Borrowed(&*task)) {
                let msg = CoordinatorToActioner::Event {
                    subscription: s.request,
                    event: event.clone(),
                };
                let queue = if at_once {
                    &mut self.immediate
                } else {
                    &mut self.durable
                };
                queue.push((s.conn, Out::Actioner(msg)));
            }
        }
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        request: RequestId,
        filter: EventFilter,
    ) -> Result<Reply, ErrorReply> {
        let ids: HashSet<TaskId> = filter
            .ids
            .iter()
            .map(|p| self.resolve(p))
            .collect::<Result<_, _>>()?;
        if !filter.all
            && ids.is_empty()
            && filter.tags.is_empty()
            && filter.queue.is_none()
            && filter.batch.is_none()
        {
            return Err(err(
                ErrorKind::InvalidRequest,
                "subscribe to some ids, some tags, a queue, a batch, or all",
            ));
        }
        // A queue never named yet is entered, so that its first tasks are followed too.
        let queue = match &filter.queue {
            Some(name) => {
                tatzelwurm_protocol::check_queue_name(name)
                    .map_err(|e| err(ErrorKind::InvalidRequest, e))?;
                let ns = self.namespace(conn);
                Some(self.queues.intern(&ns, name))
            }
            None => None,
        };
        let sub = Subscription {
            conn,
            request,
            ids,
            tags: filter.tags,
            queue,
            batch: filter.batch,
            all: filter.all,
        };
        let tasks: Vec<TaskStatus> = self
            .tasks
            .iter()
            .filter(|t| sub.takes(t.id(), t.queue(), || t.task()))
            .map(|t| TaskStatus {
                id: t.id(),
                state: t.state(),
            })
            .collect();
        self.subs.push(sub);
        Ok(Reply::Subscribed { tasks, more: false })
    }

    /// Ends one subscription of this connection.
    pub(super) fn unsubscribe(
        &mut self,
        conn: ConnId,
        subscription: RequestId,
    ) -> Result<Reply, ErrorReply> {
        let before = self.subs.len();
        self.subs
            .retain(|s| !(s.conn == conn && s.request == subscription));
        if self.subs.len() == before {
            return Err(err(
                ErrorKind::UnknownId,
                format!("this connection has no subscription {}", subscription.0),
            ));
        }
        Ok(Reply::Unsubscribed { subscription })
    }
}
