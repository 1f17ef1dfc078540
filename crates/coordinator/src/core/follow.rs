//! Following a task's output (`task follow`): who follows which task, which attempt streams its
//! output to them, and the latest output of each, so that a follower who joins late sees what the
//! others saw.
//!
//! A worker streams only when asked (`follow` on), and only while somebody follows: millions of
//! small tasks cost nothing here. Pieces carry their offset in the stream, so the tails a worker
//! sends again after a reconnect, or to a second `follow`, are trimmed to what is new.

use std::collections::HashMap;

use tatzelwurm_protocol::{
    AttemptRef, Bytes, CoordinatorToActioner, CoordinatorToWorker, ErrorKind, ErrorReply,
    OUTPUT_TAIL_LIMIT, OutputStream, Payload, Reply, RequestId, TaskId, TaskState, WorkerId,
    new_part,
};

use super::{ConnId, Core, Out, err};

/// Who follows what.
#[derive(Default)]
pub(super) struct Follows {
    /// The followers of each task: their connection and the request they follow with.
    followers: HashMap<TaskId, Vec<(ConnId, RequestId)>>,
    /// The attempt each followed task streams from now.
    streams: HashMap<TaskId, Stream>,
}

/// One attempt's output as it reaches the coordinator.
struct Stream {
    attempt: AttemptRef,
    worker: WorkerId,
    /// Where what was forwarded of each stream ends (stdout, stderr).
    upto: [u64; 2],
    /// The last [`OUTPUT_TAIL_LIMIT`] bytes forwarded of each stream, for late followers.
    recent: [Vec<u8>; 2],
}

impl Stream {
    /// Takes a piece from the worker: the part beyond what was forwarded, with its offset, or
    /// nothing when it is all old.
    fn take(&mut self, stream: OutputStream, offset: u64, data: Vec<u8>) -> Option<(u64, Vec<u8>)> {
        let i = stream.index();
        let (at, new) = new_part(self.upto[i], offset, &data)?;
        let new = new.to_vec();
        let end = at + new.len() as u64;
        let recent = &mut self.recent[i];
        // After a gap the recent bytes must end where the new ones start: keep none of before.
        if at > self.upto[i] {
            recent.clear();
        }
        self.upto[i] = end;
        recent.extend_from_slice(&new);
        if recent.len() > OUTPUT_TAIL_LIMIT {
            recent.drain(..recent.len() - OUTPUT_TAIL_LIMIT);
        }
        Some((at, new))
    }
}

impl Core {
    /// `follow`: answers at once with the task's state, then streams its output to `conn` until
    /// the task ends (right away when it has ended already).
    pub(super) fn follow(
        &mut self,
        conn: ConnId,
        request: RequestId,
        text: &str,
    ) -> Result<(), ErrorReply> {
        let id = self.resolve(text)?;
        let following = self.following(id);
        self.tell_follower(conn, request, following, true);
        let Some(task) = self.tasks.get(&id) else {
            return Ok(());
        };
        if task.state().is_final() {
            let ended = self.followed(id);
            self.tell_follower(conn, request, ended, true);
            return Ok(());
        }
        self.follows
            .followers
            .entry(id)
            .or_default()
            .push((conn, request));
        match self.follows.streams.get(&id) {
            // Streaming already: what the others saw last, then what comes.
            Some(s) => {
                let attempt = s.attempt.attempt;
                let replay: Vec<Reply> = OutputStream::BOTH
                    .iter()
                    .filter(|st| !s.recent[st.index()].is_empty())
                    .map(|&st| {
                        let recent = &s.recent[st.index()];
                        Reply::Output {
                            id,
                            attempt,
                            stream: st,
                            offset: s.upto[st.index()] - recent.len() as u64,
                            data: Bytes(recent.clone()),
                        }
                    })
                    .collect();
                for r in replay {
                    self.tell_follower(conn, request, r, true);
                }
            }
            None => self.start_stream(id),
        }
        Ok(())
    }

    /// What a follower hears of the task's state and attempt now.
    fn following(&self, id: TaskId) -> Reply {
        let task = self.tasks.get(&id).expect("resolved");
        let attempt = task.info.attempts.last();
        Reply::Following {
            id,
            number: task.info.number,
            state: task.state(),
            attempt: attempt.map_or(0, |a| a.number),
            worker: attempt.map(|a| a.worker_name.clone()),
            streamed: self.streamable(id).is_some(),
        }
    }

    fn followed(&self, id: TaskId) -> Reply {
        let task = self.tasks.get(&id).expect("resolved");
        Reply::Followed {
            id,
            state: task.state(),
            attempt: task.info.attempts.last().map_or(0, |a| a.number),
        }
    }

    /// The attempt and worker that can stream the task's output now: a command held by a
    /// connected worker that streams output.
    fn streamable(&self, id: TaskId) -> Option<(AttemptRef, WorkerId)> {
        let task = self.tasks.get(&id)?;
        if !matches!(task.info.spec.payload, Payload::Exec { .. }) {
            return None;
        }
        let w = task.holder()?;
        let worker = self.workers.get(&w)?;
        // A worker back under its id hears nothing of its tasks before its `reattach` is
        // answered; `follow_reattached` starts the stream then.
        if !worker.streams_output || worker.conn.is_none() || worker.awaiting_reattach.is_some() {
            return None;
        }
        Some((task.current_attempt()?, w))
    }

    /// Asks the worker that runs the task to stream its output, if it can. The order goes out
    /// with the durable messages, after the dispatch that may still wait for its commit.
    fn start_stream(&mut self, id: TaskId) {
        let Some((attempt, worker)) = self.streamable(id) else {
            self.follows.streams.remove(&id);
            return;
        };
        if self
            .follows
            .streams
            .get(&id)
            .is_some_and(|s| s.attempt == attempt && s.worker == worker)
        {
            return;
        }
        self.follows.streams.insert(
            id,
            Stream {
                attempt,
                worker,
                upto: [0; 2],
                recent: [Vec::new(), Vec::new()],
            },
        );
        self.send_worker(worker, CoordinatorToWorker::Follow { attempt, on: true });
    }

    /// A followed task changed state: its followers hear of it, and of its end; a new attempt
    /// starts streaming. `at_once`: the change is not waited on by a commit.
    pub(super) fn follow_transition(&mut self, id: TaskId, at_once: bool) {
        if !self.follows.followers.contains_key(&id) {
            return;
        }
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let state = task.state();
        if state.is_final() {
            self.follows.streams.remove(&id);
            let ended = self.followed(id);
            for (conn, request) in self.follows.followers.remove(&id).unwrap_or_default() {
                self.tell_follower(conn, request, ended.clone(), false);
            }
            return;
        }
        if matches!(
            state,
            TaskState::Assigned | TaskState::Running | TaskState::Paused
        ) {
            self.start_stream(id);
        } else {
            self.follows.streams.remove(&id);
        }
        let following = self.following(id);
        for (conn, request) in self.follows.followers[&id].clone() {
            self.tell_follower(conn, request, following.clone(), at_once);
        }
    }

    /// A piece of output from worker `w`: forwarded to the followers, if it is of the attempt
    /// they follow and new to them.
    pub(super) fn follow_output(
        &mut self,
        w: WorkerId,
        attempt: AttemptRef,
        stream: OutputStream,
        offset: u64,
        data: Vec<u8>,
    ) {
        let Some(s) = self.follows.streams.get_mut(&attempt.task) else {
            return;
        };
        if s.attempt != attempt || s.worker != w {
            return;
        }
        let Some((offset, data)) = s.take(stream, offset, data) else {
            return;
        };
        let piece = Reply::Output {
            id: attempt.task,
            attempt: attempt.attempt,
            stream,
            offset,
            data: Bytes(data),
        };
        let followers = self
            .follows
            .followers
            .get(&attempt.task)
            .cloned()
            .unwrap_or_default();
        for (conn, request) in followers {
            self.tell_follower(conn, request, piece.clone(), true);
        }
    }

    /// A worker reattached these attempts: followed ones stream again (the worker forgot who
    /// followed with the connection, and a follower who came meanwhile was told that nothing
    /// streams). What the worker sends again is trimmed by offset.
    pub(super) fn follow_reattached(&mut self, w: WorkerId, kept: &[AttemptRef]) {
        for a in kept {
            if !self.follows.followers.contains_key(&a.task) {
                continue;
            }
            // A stream of the same attempt is asked again; none, or another, is started.
            if let Some(s) = self.follows.streams.get(&a.task)
                && s.worker == w
                && s.attempt == *a
            {
                self.send_worker(
                    w,
                    CoordinatorToWorker::Follow {
                        attempt: *a,
                        on: true,
                    },
                );
            } else {
                self.start_stream(a.task);
            }
            let following = self.following(a.task);
            for (conn, request) in self.follows.followers[&a.task].clone() {
                self.tell_follower(conn, request, following.clone(), false);
            }
        }
    }

    /// A connection ended: it follows nothing any more, and a task nobody follows stops
    /// streaming.
    pub(super) fn unfollow_connection(&mut self, conn: ConnId) {
        let mut unwatched = Vec::new();
        self.follows.followers.retain(|id, fs| {
            fs.retain(|(c, _)| *c != conn);
            if fs.is_empty() {
                unwatched.push(*id);
            }
            !fs.is_empty()
        });
        for id in unwatched {
            // A worker back under its id that has not reattached yet hears nothing of its
            // tasks; it streams nothing either, since every follow ends with a connection.
            if let Some(s) = self.follows.streams.remove(&id)
                && let Some(c) = self
                    .workers
                    .get(&s.worker)
                    .filter(|w| w.awaiting_reattach.is_none())
                    .and_then(|w| w.conn)
            {
                self.immediate.push((
                    c,
                    Out::Worker(CoordinatorToWorker::Follow {
                        attempt: s.attempt,
                        on: false,
                    }),
                ));
            }
        }
    }

    /// A followed task left the table: its followers hear that nothing more comes.
    pub(super) fn unfollow_removed(&mut self, id: TaskId, number: u64) {
        self.follows.streams.remove(&id);
        for (conn, request) in self.follows.followers.remove(&id).unwrap_or_default() {
            let gone = Reply::Error(err(
                ErrorKind::UnknownId,
                format!("task {number} was removed while followed"),
            ));
            self.tell_follower(conn, request, gone, false);
        }
    }

    fn tell_follower(&mut self, conn: ConnId, request: RequestId, body: Reply, at_once: bool) {
        let msg = (
            conn,
            Out::Actioner(CoordinatorToActioner::Reply { request, body }),
        );
        if at_once {
            self.immediate.push(msg);
        } else {
            self.durable.push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream {
            attempt: AttemptRef {
                task: TaskId(uuid::Uuid::nil()),
                attempt: 1,
            },
            worker: WorkerId(1),
            upto: [0; 2],
            recent: [Vec::new(), Vec::new()],
        }
    }

    #[test]
    fn pieces_sent_again_are_trimmed_to_what_is_new() {
        let mut s = stream();
        assert_eq!(
            s.take(OutputStream::Stdout, 0, b"hello ".to_vec()),
            Some((0, b"hello ".to_vec()))
        );
        // The tails again after a reconnect: old bytes and new ones.
        assert_eq!(
            s.take(OutputStream::Stdout, 0, b"hello world".to_vec()),
            Some((6, b"world".to_vec()))
        );
        assert_eq!(s.take(OutputStream::Stdout, 3, b"lo wor".to_vec()), None);
        // The other stream counts on its own.
        assert_eq!(
            s.take(OutputStream::Stderr, 0, b"oops".to_vec()),
            Some((0, b"oops".to_vec()))
        );
        assert_eq!(s.recent[0], b"hello world");
        assert_eq!(s.recent[1], b"oops");
    }

    #[test]
    fn a_gap_keeps_its_offset_and_recent_output_stays_bounded() {
        let mut s = stream();
        s.take(OutputStream::Stdout, 0, b"abc".to_vec());
        assert_eq!(
            s.take(OutputStream::Stdout, 100, b"xyz".to_vec()),
            Some((100, b"xyz".to_vec()))
        );
        assert_eq!(s.upto[0], 103);
        assert_eq!(
            s.recent[0], b"xyz",
            "a late follower's replay starts after the gap"
        );
        let big = vec![b'z'; 3 * OUTPUT_TAIL_LIMIT];
        s.take(OutputStream::Stdout, 103, big);
        assert_eq!(s.recent[0].len(), OUTPUT_TAIL_LIMIT);
        assert_eq!(s.upto[0], 103 + 3 * OUTPUT_TAIL_LIMIT as u64);
    }
}
