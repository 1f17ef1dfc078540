//! `task follow`: a task's output as its command writes it, attempt after attempt, until the task
//! ends (`tail -f` for one task). stdout goes to stdout and stderr to stderr, byte for byte; what
//! happens to the task (waiting, a new attempt, the end) is told on stderr.

use std::io::Write;

use tatzelwurm_protocol::{OutputStream, new_part};

use super::*;

/// What has been printed of the attempt followed now.
#[derive(Default)]
struct Printed {
    attempt: u32,
    /// The attempt's output comes as it is written (its worker streams it).
    streamed: bool,
    /// Where what was printed of each stream ends (stdout, stderr).
    upto: [u64; 2],
    /// The last byte printed was not a newline: a status line starts on a line of its own.
    mid_line: bool,
}

impl Printed {
    /// Prints the part of a piece that is new, telling of a gap before it.
    fn piece(&mut self, stream: OutputStream, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let i = stream.index();
        let Some((at, new)) = new_part(self.upto[i], offset, data) else {
            return Ok(());
        };
        if at > self.upto[i] {
            let gap = at - self.upto[i];
            self.status(&format!(
                "[{} of {} left out: it came faster than it could be sent]",
                plural(gap, "byte"),
                if i == 0 { "stdout" } else { "stderr" }
            ));
        }
        self.upto[i] = at + new.len() as u64;
        self.write(stream, new)
    }

    fn write(&mut self, stream: OutputStream, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match stream {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()?;
            }
            OutputStream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(bytes)?;
                err.flush()?;
            }
        }
        self.mid_line = !bytes.ends_with(b"\n");
        Ok(())
    }

    /// A line about the task, on stderr.
    fn status(&mut self, line: &str) {
        if std::mem::take(&mut self.mid_line) {
            eprintln!();
        }
        eprintln!("{line}");
    }
}

/// Follows task `id` to its end; the exit code is 0 when it succeeded, 1 when it did not. A
/// coordinator that goes away is waited for (`reconnect_for`), and what it streams again is
/// printed once.
pub(super) async fn follow(
    client: Client,
    reach: &Reach,
    id: &str,
    reconnect_for: Duration,
) -> Result<i32> {
    let mut p = Printed::default();
    let mut conn = Some(client);
    let mut last_status = String::new();
    loop {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                reach
                    .reconnect(Instant::now() + reconnect_for, reconnect_for)
                    .await?
            }
        };
        let request = c.send(ActionerRequest::Follow { id: id.to_string() }).await;
        let mut lost = request.as_ref().err().is_some_and(is_lost);
        let request = match request {
            Ok(r) => Some(r),
            Err(e) if is_lost(&e) => None,
            Err(e) => return Err(e.into()),
        };
        while let Some(request) = request.filter(|_| !lost) {
            let reply = match c.next_reply().await {
                Ok((r, reply)) if r == request => reply,
                Ok(_) => continue,
                Err(e) if is_lost(&e) => {
                    lost = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match reply {
                Reply::Following {
                    number,
                    state,
                    attempt,
                    worker,
                    streamed,
                    ..
                } => {
                    if attempt != p.attempt {
                        p = Printed {
                            attempt,
                            mid_line: p.mid_line,
                            ..Printed::default()
                        };
                    }
                    p.streamed = streamed;
                    let line = following_line(number, state, attempt, worker.as_deref(), streamed);
                    if line != last_status {
                        p.status(&line);
                        last_status = line;
                    }
                }
                Reply::Output {
                    attempt,
                    stream,
                    offset,
                    data,
                    ..
                } if attempt == p.attempt => p.piece(stream, offset, &data.0)?,
                Reply::Output { .. } => {}
                Reply::Followed { state, .. } => {
                    let (task, _) = c.show(id).await?;
                    let last = task.attempts.last();
                    // Nothing came while it ran: what was kept of it is all there is.
                    if !p.streamed
                        && let Some(a) = last
                    {
                        p.write(OutputStream::Stdout, a.stdout_tail.as_bytes())?;
                        p.write(OutputStream::Stderr, a.stderr_tail.as_bytes())?;
                    }
                    let how = match last.and_then(|a| a.error.as_deref()) {
                        Some(e) if state != TaskState::Completed => format!(" ({e})"),
                        _ => String::new(),
                    };
                    p.status(&format!("task {} {}{how}", task.number, state.as_str()));
                    return Ok(if state == TaskState::Completed { 0 } else { 1 });
                }
                Reply::Error(e) => return Err(ClientError::Server(e).into()),
                other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
            }
        }
        p.status("lost the coordinator; waiting for it to come back");
    }
}

/// What `task follow` says of the task's state.
fn following_line(
    number: u64,
    state: TaskState,
    attempt: u32,
    worker: Option<&str>,
    streamed: bool,
) -> String {
    match state {
        TaskState::Assigned | TaskState::Running | TaskState::Paused => {
            let on = worker.map(|w| format!(" on {w}")).unwrap_or_default();
            let paused = if state == TaskState::Paused {
                " (paused)"
            } else {
                ""
            };
            let note = if streamed {
                ""
            } else {
                ": its output is not streamed (not a command, its worker is away or does not stream \
                 output); what is kept of it shows at the end"
            };
            format!("task {number}: attempt {attempt}{on}{paused}{note}")
        }
        s if s.is_final() => format!(
            "task {number} has ended ({}); its output as kept:",
            s.as_str()
        ),
        s => format!("task {number} is {}: waiting for it to run", s.as_str()),
    }
}
