//! Named queues: every task is in one, `(namespace, name)`, the broker's queues included.
//!
//! [`QueueTable`] gives each queue a dense number ([`QueueIdx`]) at its first naming and keeps,
//! per queue, its settings (stored once set), its counts per state (kept as tasks change, never
//! by walking the table) and its finish rate. Dispatch reads the settings through the routers:
//! the scheduler for commands (priority, weight, limit, pause), the broker for message tasks
//! (limit, pause). The `impl Core` below answers the queue requests and moves tasks.

use tatzelwurm_protocol::{QueueChange, QueueInfo, QueueSettings, check_queue_name};

use super::*;
use crate::scheduler::QueueIdx;

/// One queue's settings and counts.
pub(super) struct QueueEntry {
    /// What is stored and shown.
    pub settings: QueueSettings,
    /// Tasks per state.
    pub counts: [u64; 8],
    /// Its tasks that ended in the last minute.
    pub rate: FinishRate,
    /// Its settings were set by somebody (and are therefore stored).
    pub set: bool,
}

/// Every queue named since the start, by namespace and name.
#[derive(Default)]
pub(super) struct QueueTable {
    index: HashMap<String, HashMap<String, QueueIdx>>,
    entries: Vec<QueueEntry>,
}

impl QueueTable {
    /// The number of a queue, entered with the default settings when new.
    pub fn intern(&mut self, namespace: &str, name: &str) -> QueueIdx {
        if let Some(&q) = self.index.get(namespace).and_then(|m| m.get(name)) {
            return q;
        }
        let q = self.entries.len() as QueueIdx;
        self.entries.push(QueueEntry {
            settings: QueueSettings::new(namespace, name),
            counts: [0; 8],
            rate: FinishRate::default(),
            set: false,
        });
        self.index
            .entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), q);
        q
    }

    /// Every queue named since the start.
    pub fn all(&self) -> impl Iterator<Item = &QueueEntry> {
        self.entries.iter()
    }

    /// The number of a queue named before.
    pub fn find(&self, namespace: &str, name: &str) -> Option<QueueIdx> {
        self.index.get(namespace)?.get(name).copied()
    }

    /// A queue by number.
    pub fn get(&self, q: QueueIdx) -> &QueueEntry {
        &self.entries[q as usize]
    }

    /// A queue by number, to change.
    pub fn get_mut(&mut self, q: QueueIdx) -> &mut QueueEntry {
        &mut self.entries[q as usize]
    }

    /// The queues of a namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<QueueIdx> {
        let mut qs: Vec<(&String, QueueIdx)> = self
            .index
            .get(namespace)
            .map(|m| m.iter().map(|(n, q)| (n, *q)).collect())
            .unwrap_or_default();
        qs.sort();
        qs.into_iter().map(|(_, q)| q).collect()
    }

    /// A task in `state` entered (`+1`) or left (`-1`) queue `q`.
    pub fn count(&mut self, q: QueueIdx, state: TaskState, entered: bool) {
        let c = &mut self.entries[q as usize].counts[idx(state)];
        if entered {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
        }
    }
}

impl Core {
    /// The queue a task belongs in: its payload's for a message task, else the one its spec
    /// names in `namespace`.
    pub(super) fn queue_for(&mut self, namespace: &str, spec: &TaskSpec) -> QueueIdx {
        let namespace = match &spec.payload {
            tatzelwurm_protocol::Payload::Message { namespace, .. } => namespace,
            _ => namespace,
        };
        self.queues.intern(namespace, spec.queue_name())
    }

    /// The number of a queue a filter names, in the connection's namespace; a queue never
    /// named has no tasks, and gets an impossible number that matches none.
    pub(super) fn queue_to_match(&self, conn: ConnId, name: &str) -> QueueIdx {
        self.queues
            .find(&self.namespace(conn), name)
            .unwrap_or(QueueIdx::MAX)
    }

    /// Fills in what a spec leaves to its queue: attempts (1 unless the queue says otherwise)
    /// and the timeout.
    pub(super) fn queue_defaults(&self, q: QueueIdx, spec: &mut TaskSpec) {
        let s = &self.queues.get(q).settings;
        if spec.max_attempts == 0 {
            spec.max_attempts = s.max_attempts.unwrap_or(1);
        }
        if spec.timeout_ms.is_none() {
            spec.timeout_ms = s.timeout_ms;
        }
    }

    /// Hands a queue's dispatch settings to the scheduler.
    pub(super) fn sync_queue(&mut self, q: QueueIdx) {
        let s = &self.queues.get(q).settings;
        self.sched
            .set_queue(q, s.priority, s.weight, s.limit, s.paused);
    }

    /// A queue's settings from the store, at start.
    pub(super) fn restore_queue(&mut self, settings: QueueSettings) {
        let q = self.queues.intern(&settings.namespace, &settings.name);
        let entry = self.queues.get_mut(q);
        entry.settings = settings;
        entry.set = true;
        self.sync_queue(q);
    }

    /// What `queue list` and `queue show` print of queue `q`.
    pub(super) fn queue_info(&self, q: QueueIdx, now: u64) -> QueueInfo {
        let e = self.queues.get(q);
        let name = (e.settings.namespace.clone(), e.settings.name.clone());
        let (subscribers, capacity, msg_held) = self.msg.serving(&name);
        QueueInfo {
            name: e.settings.name.clone(),
            depth: e.counts[idx(TaskState::Ready)],
            held: self.sched.held(q) as u64 + msg_held,
            subscribers,
            capacity,
            settings: e.settings.clone(),
            counts: TaskState::ALL
                .iter()
                .map(|&state| StateCount {
                    state,
                    count: e.counts[idx(state)],
                })
                .collect(),
            finished_last_minute: e.rate.last_minute(now),
        }
    }

    /// Whether a queue is worth listing: set by somebody, or with tasks or subscribers.
    fn listed(&self, q: QueueIdx) -> bool {
        let e = self.queues.get(q);
        let name = (e.settings.namespace.clone(), e.settings.name.clone());
        e.set || e.counts.iter().any(|&c| c > 0) || self.msg.serving(&name).0 > 0
    }

    /// `queues`: every queue of the connection's namespace that is set, has tasks or is served.
    pub(super) fn queues(&self, conn: ConnId, now: u64) -> Reply {
        let queues = self
            .queues
            .in_namespace(&self.namespace(conn))
            .into_iter()
            .filter(|&q| self.listed(q))
            .map(|q| self.queue_info(q, now))
            .collect();
        Reply::Queues { queues }
    }

    /// `queue_show`: a queue never named shows its defaults, and nothing in it.
    pub(super) fn queue_show(
        &mut self,
        conn: ConnId,
        queue: &str,
        now: u64,
    ) -> Result<Reply, ErrorReply> {
        check_queue_name(queue).map_err(|e| err(ErrorKind::InvalidRequest, e))?;
        let ns = self.namespace(conn);
        let q = self.queues.intern(&ns, queue);
        Ok(Reply::Queue {
            queue: Box::new(self.queue_info(q, now)),
        })
    }

    /// `queue_set`: changes settings, durable before the reply; dispatch follows them at once.
    pub(super) fn queue_set(
        &mut self,
        conn: ConnId,
        queue: &str,
        change: &QueueChange,
        now: u64,
    ) -> Result<Reply, ErrorReply> {
        check_queue_name(queue).map_err(|e| err(ErrorKind::InvalidRequest, e))?;
        let ns = self.namespace(conn);
        let q = self.queues.intern(&ns, queue);
        let entry = self.queues.get_mut(q);
        let mut settings = entry.settings.clone();
        settings
            .apply(change)
            .map_err(|e| err(ErrorKind::InvalidRequest, format!("queue {queue}: {e}")))?;
        entry.settings = settings;
        entry.set = true;
        self.dirty_queues.insert(q);
        self.sync_queue(q);
        info!(namespace = %ns, queue, ?change, "queue settings changed");
        Ok(Reply::Queue {
            queue: Box::new(self.queue_info(q, now)),
        })
    }

    /// `move`: tasks that no worker holds go to another queue of the connection's namespace.
    /// A ready task joins the new queue's line at its end.
    pub(super) fn move_tasks(
        &mut self,
        conn: ConnId,
        selector: Selector,
        queue: &str,
        now: u64,
    ) -> Result<Reply, ErrorReply> {
        check_queue_name(queue).map_err(|e| err(ErrorKind::InvalidRequest, e))?;
        fn check(t: &Head) -> Result<(), ErrorReply> {
            if let Some(w) = t.holder() {
                return Err(err(
                    ErrorKind::InvalidState,
                    format!(
                        "cannot move task {}: worker {w} holds it (it is {}); move it once it \
                         ended or was handed back",
                        t.id(),
                        t.state()
                    ),
                ));
            }
            if t.state().is_final() {
                return Err(err(
                    ErrorKind::InvalidState,
                    format!("cannot move task {}: it is {}", t.id(), t.state()),
                ));
            }
            Ok(())
        }
        let ids = self.select(conn, &selector, "move", check)?;
        // Checked before anything moves (it reads the whole task).
        if let Some(id) = ids.iter().find(|id| {
            self.tasks
                .get(id)
                .is_some_and(|t| messaging::queue_of(&t.info.spec).is_some())
        }) {
            return Err(err(
                ErrorKind::InvalidRequest,
                format!("cannot move task {id}: a message task stays in its queue"),
            ));
        }
        let ns = self.namespace(conn);
        let to = self.queues.intern(&ns, queue);
        let mut moved = Vec::with_capacity(ids.len());
        for id in ids {
            let task = self.tasks.get_mut(&id).expect("selected tasks exist");
            // Only within the task's own namespace: a task of another one keeps its queue.
            if task.info.namespace != ns || task.queue == to {
                continue;
            }
            let state = task.state();
            let from = task.queue;
            task.queue = to;
            task.info.spec.queue = Some(queue.to_string());
            self.queues.count(from, state, false);
            self.queues.count(to, state, true);
            if state == TaskState::Ready {
                self.enqueue_ready(id);
            }
            self.dirty_tasks.insert(id);
            self.lazy_tasks.remove(&id);
            self.emit(id, now, false);
            moved.push(id);
        }
        Ok(Reply::Changed {
            ids: moved,
            more: false,
        })
    }

    /// Why a ready task does not run, when the coordinator can tell.
    pub(super) fn waiting_reason(&self, task: &Task) -> Option<String> {
        if task.state() != TaskState::Ready {
            return None;
        }
        let e = self.queues.get(task.queue);
        let name = &e.settings.name;
        if e.settings.paused {
            return Some(format!("queue {name} is paused (`queue play {name}`)"));
        }
        if let Some(q) = messaging::queue_of(&task.info.spec) {
            let (subscribers, ..) = self.msg.serving(&q);
            return Some(if subscribers == 0 {
                format!("no connection serves queue {name}")
            } else {
                format!("the connections that serve queue {name} are at their limits")
            });
        }
        if let Some(limit) = e.settings.limit
            && self.sched.held(task.queue) >= limit
        {
            return Some(format!(
                "queue {name} runs {limit} tasks, its limit (`queue set {name} --limit`)"
            ));
        }
        if !self.sched.can_serve(&kind_of(&task.info.spec)) {
            return Some(format!(
                "no connected worker takes {}",
                task.info.spec.worker_needs()
            ));
        }
        Some("every worker that can run it is busy".into())
    }
}
