//! Tasks a worker holds beyond its slots (its hello's `prefetch`), and taking them back.
//!
//! A worker that announces prefetch room is given tasks beyond its slots, but only once no
//! worker with a free slot can take them (the scheduler orders workers by load, and a full
//! worker is behind every one with a free slot). It starts a held task the moment a slot frees,
//! without waiting for a dispatch's round trip and commit. Held tasks stay `assigned` until they
//! start; their timeout runs from their start (`end_overdue`).
//!
//! A held task waits for its holder's slots, which may be taken by tasks that run for weeks.
//! Once a tick, after a scheduling pass (so that a free slot seen here found nothing ready), a
//! worker with a free slot takes such a task: the holder is sent `revoke`, gives the task back
//! as `handed_back` if it has not started (the attempt does not count), and the task is
//! dispatched again, to a free slot first. One that started meanwhile stays where it runs.

use super::*;

impl Core {
    /// Asks workers to give back held tasks that a free slot elsewhere could start now.
    pub(super) fn revoke_held(&mut self) {
        let tasks = &self.tasks;
        self.revoking.retain(|a| {
            tasks.get(&a.task).is_some_and(|t| {
                t.state() == TaskState::Assigned && t.current_attempt() == Some(*a)
            })
        });
        if !self.workers.values().any(|w| w.prefetch > 0) {
            return;
        }
        let mut free: Vec<(WorkerId, u32)> = self
            .workers
            .values()
            .filter(|w| w.conn.is_some() && !w.client && w.awaiting_reattach.is_none())
            .map(|w| (w.info.id, self.sched.free_slots(w.info.id)))
            .filter(|&(_, n)| n > 0)
            .collect();
        if free.is_empty() {
            return;
        }
        let mut revoke = Vec::new();
        for holder in self.workers.values() {
            // Only a worker whose slots are all taken holds tasks beyond them.
            let full = self
                .sched
                .running(holder.info.id)
                .is_some_and(|r| r >= holder.info.slots);
            if holder.prefetch == 0 || holder.conn.is_none() || !full {
                continue;
            }
            for id in holder.held.iter() {
                let Some(task) = self.tasks.get(id) else {
                    continue;
                };
                let Some(attempt) = task.current_attempt() else {
                    continue;
                };
                if task.state() != TaskState::Assigned || self.revoking.contains(&attempt) {
                    continue;
                }
                let kind = kind_of(&task.info.spec);
                let taker = free.iter_mut().find(|(w, n)| {
                    *n > 0 && *w != holder.info.id && self.sched.free_slot_for(*w, &kind)
                });
                if let Some((_, n)) = taker {
                    *n -= 1;
                    revoke.push((holder.info.id, attempt));
                }
            }
            if free.iter().all(|&(_, n)| n == 0) {
                break;
            }
        }
        for (w, attempt) in revoke {
            info!(task = %attempt.task, attempt = attempt.attempt, worker = %w, "a held task is asked back: another worker has a free slot for it");
            self.revoking.insert(attempt);
            self.send_worker(w, CoordinatorToWorker::Revoke { attempt });
        }
    }
}
