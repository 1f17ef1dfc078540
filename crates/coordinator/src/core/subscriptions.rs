//! Subscriptions: who hears about which task changes, and the events they get.

use super::*;

/// One `subscribe` request: the connection it came on, the request id its events carry, and
/// which tasks it follows (a task matches by id or by tags: the union).
pub(super) struct Subscription {
    pub(super) conn: ConnId,
    pub(super) request: RequestId,
    pub(super) ids: HashSet<TaskId>,
    pub(super) tags: Vec<Tag>,
    pub(super) all: bool,
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
            if s.all || s.ids.contains(&id) || (!s.tags.is_empty() && has_tags(task, &s.tags)) {
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
        if !filter.all && ids.is_empty() && filter.tags.is_empty() {
            return Err(err(
                ErrorKind::InvalidRequest,
                "subscribe to some ids, some tags, or all",
            ));
        }
        let tasks: Vec<TaskStatus> = self
            .tasks
            .values()
            .filter(|t| {
                filter.all
                    || ids.contains(&t.id())
                    || (!filter.tags.is_empty() && has_tags(t, &filter.tags))
            })
            .map(|t| TaskStatus {
                id: t.id(),
                state: t.state(),
            })
            .collect();
        self.subs.push(Subscription {
            conn,
            request,
            ids,
            tags: filter.tags,
            all: filter.all,
        });
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
