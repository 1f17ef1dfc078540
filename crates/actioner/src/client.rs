//! An async client for the actioner side of the protocol: one connection, requests matched to
//! replies by request id, events of subscriptions buffered until asked for.

use std::collections::VecDeque;
use std::path::PathBuf;

use futures_util::{SinkExt, StreamExt};
use tatzelwurm_protocol::client::{HandshakeError, handshake};
use tatzelwurm_protocol::transport::{Endpoint, Stream};
use tatzelwurm_protocol::{
    ActionerRequest, ActionerToCoordinator, BodyCodec, BroadcastMessage, CoordinatorToActioner,
    DEFAULT_MAX_FRAME, Data, ErrorReply, EventFilter, FrameError, Hello, MAX_ADD_TASKS,
    MessageCodec, MessageOutcome, QueueChange, QueueInfo, Reply, RequestId, Role, Selector,
    StateCount, Tag, TaskEvent, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus, TaskSummary,
    WorkerInfo,
};
use tokio_util::codec::Framed;

/// The default coordinator address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5677";

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection.
    #[error("cannot reach the coordinator at {addr}")]
    Connect {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The coordinator refused or broke the handshake.
    #[error("handshake with the coordinator at {addr} failed")]
    Handshake {
        /// Where.
        addr: String,
        /// Why.
        source: HandshakeError,
    },
    /// Nothing answered the hello in time: not a tatzelwurm coordinator, or one stuck.
    #[error(
        "no answer from {addr} within {within:?}: is it a tatzelwurm coordinator (or the right port)?"
    )]
    NoAnswer {
        /// Where.
        addr: String,
        /// How long it had.
        within: std::time::Duration,
    },
    /// The connection broke.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The coordinator closed the connection.
    #[error("the coordinator closed the connection{0}")]
    Closed(String),
    /// The coordinator answered with an error.
    #[error("{}", .0.message)]
    Server(ErrorReply),
    /// An add split over several requests failed after some of them were added.
    #[error("added {} of {total} tasks, then: {source}", added.len())]
    PartlyAdded {
        /// The tasks that were added (durable).
        added: Vec<TaskId>,
        /// How many were to be added.
        total: usize,
        /// Why the next request failed.
        source: Box<ClientError>,
    },
    /// The coordinator answered with something this client did not expect.
    #[error("unexpected reply from the coordinator: {0}")]
    Unexpected(String),
}

/// The token file of a coordinator on this machine (`TATZELWURM_DATA_DIR`, else its default data
/// dir).
pub fn default_token_file() -> Option<PathBuf> {
    tatzelwurm_protocol::client::default_token_file(dirs::data_dir())
}

/// Splits an add into requests of at most [`MAX_ADD_TASKS`] tasks and about half a frame each,
/// in order; never none, so that an empty add still gets its answer. A task too large for a
/// frame on its own goes alone, and its request fails with the reason.
fn add_chunks(tasks: Vec<TaskSpec>, codec: BodyCodec) -> Vec<Vec<TaskSpec>> {
    let budget = DEFAULT_MAX_FRAME / 2;
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for task in tasks {
        let len = codec.encode(&task).map_or(0, |b| b.len());
        if !current.is_empty() && (current.len() == MAX_ADD_TASKS || size + len > budget) {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(task);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// A connection to the coordinator as an actioner.
pub struct Client {
    framed: Framed<Stream, MessageCodec<CoordinatorToActioner, ActionerToCoordinator>>,
    next_request: u64,
    /// Events that arrived while waiting for a reply, with their subscription.
    events: VecDeque<(RequestId, TaskEvent)>,
    /// Broadcasts that arrived while waiting for a reply, with their listener.
    broadcasts: VecDeque<(RequestId, BroadcastMessage)>,
}

/// A task an add made: its id, its number and its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddedTask {
    /// The stable id.
    pub id: TaskId,
    /// The number people type.
    pub number: u64,
    /// The add request it came with.
    pub batch: u64,
}

/// How long a coordinator has to answer a hello, unless told otherwise.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Client {
    /// Connects and shakes hands with the given token and body codec, in the default namespace.
    pub async fn connect(addr: &str, token: &str, codec: BodyCodec) -> Result<Client, ClientError> {
        Self::connect_in(addr, token, codec, "").await
    }

    /// Connects in a namespace: where its queues, RPC identifiers and broadcasts live (the
    /// default one when empty).
    pub async fn connect_in(
        addr: &str,
        token: &str,
        codec: BodyCodec,
        namespace: &str,
    ) -> Result<Client, ClientError> {
        Self::connect_within(addr, token, codec, namespace, HANDSHAKE_TIMEOUT).await
    }

    /// Connects in a namespace, giving the coordinator `within` to answer the hello.
    pub async fn connect_within(
        addr: &str,
        token: &str,
        codec: BodyCodec,
        namespace: &str,
        within: std::time::Duration,
    ) -> Result<Client, ClientError> {
        let endpoint = Endpoint::parse(addr);
        let stream = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: endpoint.to_string(),
                source,
            })?;
        let hello = Hello::new(
            Role::Actioner {
                client: format!("actionwurm {}", env!("CARGO_PKG_VERSION")),
                namespace: namespace.to_string(),
            },
            codec,
            token,
        );
        // A peer that never answers (a service that waits for its own kind of request) must not
        // hold the client for ever.
        let (framed, _welcome) =
            tokio::time::timeout(within, handshake(stream, &hello, DEFAULT_MAX_FRAME))
                .await
                .map_err(|_| ClientError::NoAnswer {
                    addr: addr.to_string(),
                    within,
                })?
                .map_err(|source| ClientError::Handshake {
                    addr: addr.to_string(),
                    source,
                })?;
        tracing::debug!(addr, codec = codec.name(), "connected to the coordinator");
        Ok(Client {
            framed,
            next_request: 1,
            events: VecDeque::new(),
            broadcasts: VecDeque::new(),
        })
    }

    /// Sends a request without waiting; returns its id (for pipelining many requests).
    pub async fn send(&mut self, body: ActionerRequest) -> Result<RequestId, ClientError> {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.framed
            .send(ActionerToCoordinator { request, body })
            .await?;
        Ok(request)
    }

    /// The next message of any kind (buffered events first), for clients that pipeline requests
    /// and read replies and events as they come.
    pub async fn next_message(&mut self) -> Result<CoordinatorToActioner, ClientError> {
        if let Some((subscription, event)) = self.events.pop_front() {
            return Ok(CoordinatorToActioner::Event {
                subscription,
                event,
            });
        }
        match self.framed.next().await {
            None => Err(ClientError::Closed(String::new())),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(m)) => Ok(m),
        }
    }

    /// Waits for the next reply (to any request), buffering events that arrive first.
    pub async fn next_reply(&mut self) -> Result<(RequestId, Reply), ClientError> {
        loop {
            match self.framed.next().await {
                None => return Err(ClientError::Closed(String::new())),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(CoordinatorToActioner::Reply { request, body })) => {
                    return Ok((request, body));
                }
                Some(Ok(CoordinatorToActioner::Event {
                    subscription,
                    event,
                })) => self.events.push_back((subscription, event)),
                Some(Ok(CoordinatorToActioner::Shutdown { reason })) => {
                    return Err(ClientError::Closed(format!(": {reason}")));
                }
                Some(Ok(CoordinatorToActioner::Broadcast { listener, message })) => {
                    self.broadcasts.push_back((listener, message))
                }
                // This client holds no RPC identifier: a call cannot be for it.
                Some(Ok(CoordinatorToActioner::Call { .. })) => {}
            }
        }
    }

    /// An RPC to `identifier` in this connection's namespace; waits for its final outcome
    /// (a pending answer is skipped).
    pub async fn call(
        &mut self,
        identifier: &str,
        body: Data,
    ) -> Result<MessageOutcome, ClientError> {
        let id = self
            .send(ActionerRequest::Call {
                identifier: identifier.to_string(),
                body,
            })
            .await?;
        loop {
            match self.reply_to(id).await? {
                Reply::CallOutcome { outcome } if outcome.is_final() => return Ok(outcome),
                // Routed, or accepted with the result to come.
                Reply::Done | Reply::CallOutcome { .. } => continue,
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Sends a broadcast to the namespace; returns how many listeners took it.
    pub async fn broadcast(&mut self, message: BroadcastMessage) -> Result<u32, ClientError> {
        match self.request(ActionerRequest::Broadcast { message }).await? {
            Reply::Broadcasted { listeners } => Ok(listeners),
            other => Err(unexpected(other)),
        }
    }

    /// Starts listening to the namespace's broadcasts (those matching the patterns).
    pub async fn listen(
        &mut self,
        subjects: Vec<String>,
        senders: Vec<String>,
    ) -> Result<RequestId, ClientError> {
        let id = self
            .send(ActionerRequest::Listen { subjects, senders })
            .await?;
        match self.reply_to(id).await? {
            Reply::Done => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// The next broadcast for a listener of this connection.
    pub async fn next_broadcast(&mut self) -> Result<BroadcastMessage, ClientError> {
        if let Some((_, m)) = self.broadcasts.pop_front() {
            return Ok(m);
        }
        loop {
            match self.next_message().await? {
                CoordinatorToActioner::Broadcast { message, .. } => return Ok(message),
                CoordinatorToActioner::Shutdown { reason } => {
                    return Err(ClientError::Closed(format!(": {reason}")));
                }
                CoordinatorToActioner::Reply {
                    body: Reply::Error(e),
                    ..
                } => return Err(ClientError::Server(e)),
                _ => {}
            }
        }
    }

    /// The queues of this connection's namespace.
    pub async fn queues(&mut self) -> Result<Vec<QueueInfo>, ClientError> {
        match self.request(ActionerRequest::Queues).await? {
            Reply::Queues { queues } => Ok(queues),
            other => Err(unexpected(other)),
        }
    }

    /// One queue of the namespace, or a change to its settings (when `change` is given).
    pub async fn queue(
        &mut self,
        queue: &str,
        change: Option<QueueChange>,
    ) -> Result<QueueInfo, ClientError> {
        let queue = queue.to_string();
        let body = match change {
            Some(change) => ActionerRequest::QueueSet { queue, change },
            None => ActionerRequest::QueueShow { queue },
        };
        match self.request(body).await? {
            Reply::Queue { queue } => Ok(*queue),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a request and waits for its reply; an error reply becomes [`ClientError::Server`].
    pub async fn request(&mut self, body: ActionerRequest) -> Result<Reply, ClientError> {
        let id = self.send(body).await?;
        self.reply_to(id).await
    }

    /// Sends a request whose answer is a list that may come in parts, and joins them; `part`
    /// takes a reply apart into its items and its `more` flag.
    async fn request_parts<T>(
        &mut self,
        body: ActionerRequest,
        part: impl Fn(Reply) -> Result<(Vec<T>, bool), Reply>,
    ) -> Result<Vec<T>, ClientError> {
        let id = self.send(body).await?;
        let mut all = Vec::new();
        loop {
            let (mut items, more) = part(self.reply_to(id).await?).map_err(unexpected)?;
            all.append(&mut items);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Waits for the next reply to request `id`, dropping replies to others.
    async fn reply_to(&mut self, id: RequestId) -> Result<Reply, ClientError> {
        loop {
            let (got, reply) = self.next_reply().await?;
            if got != id {
                continue;
            }
            return match reply {
                Reply::Error(e) => Err(ClientError::Server(e)),
                other => Ok(other),
            };
        }
    }

    /// Adds tasks; returns their ids once they are durable. More than [`MAX_ADD_TASKS`] (or more
    /// than half a frame of them) go in several requests, each all-or-nothing: if one fails, the
    /// error names the tasks the earlier ones added.
    pub async fn add(
        &mut self,
        tasks: Vec<TaskSpec>,
        play: bool,
    ) -> Result<Vec<TaskId>, ClientError> {
        Ok(self
            .add_numbered(tasks, play)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect())
    }

    /// Adds tasks as [`Client::add`] does, and returns each one's id, number and batch.
    pub async fn add_numbered(
        &mut self,
        tasks: Vec<TaskSpec>,
        play: bool,
    ) -> Result<Vec<AddedTask>, ClientError> {
        let total = tasks.len();
        let mut added: Vec<AddedTask> = Vec::with_capacity(total);
        let codec = self.framed.codec().body_codec();
        for chunk in add_chunks(tasks, codec) {
            let reply = self
                .request(ActionerRequest::Add { tasks: chunk, play })
                .await;
            match reply.and_then(|r| match r {
                Reply::Added {
                    ids,
                    numbers,
                    batch,
                } => Ok(ids
                    .into_iter()
                    .zip(numbers.into_iter().chain(std::iter::repeat(0)))
                    .map(|(id, number)| AddedTask { id, number, batch })
                    .collect::<Vec<_>>()),
                other => Err(unexpected(other)),
            }) {
                Ok(ids) => added.extend(ids),
                Err(e) if added.is_empty() => return Err(e),
                Err(e) => {
                    return Err(ClientError::PartlyAdded {
                        added: added.into_iter().map(|a| a.id).collect(),
                        total,
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(added)
    }

    /// Plays, pauses, kills or removes; returns the tasks that changed (every part of the list).
    pub async fn change(&mut self, body: ActionerRequest) -> Result<Vec<TaskId>, ClientError> {
        self.request_parts(body, |reply| match reply {
            Reply::Changed { ids, more } => Ok((ids, more)),
            other => Err(other),
        })
        .await
    }

    /// Makes tasks ready.
    pub async fn play(&mut self, selector: Selector) -> Result<Vec<TaskId>, ClientError> {
        self.change(ActionerRequest::Play {
            selector,
            created: true,
        })
        .await
    }

    /// Lists tasks (newest first) with the counts per state.
    pub async fn list(
        &mut self,
        states: Vec<TaskState>,
        tags: Vec<Tag>,
        limit: Option<u32>,
        queue: Option<String>,
    ) -> Result<(Vec<TaskSummary>, Vec<StateCount>), ClientError> {
        match self
            .request(ActionerRequest::List {
                states,
                tags,
                limit,
                queue,
            })
            .await?
        {
            Reply::Tasks { tasks, counts } => Ok((tasks, counts)),
            other => Err(unexpected(other)),
        }
    }

    /// One task, whole, and why it waits when the coordinator can tell.
    pub async fn show(&mut self, id: &str) -> Result<(TaskInfo, Option<String>), ClientError> {
        match self
            .request(ActionerRequest::Show { id: id.to_string() })
            .await?
        {
            Reply::Task { task, waiting } => Ok((*task, waiting)),
            other => Err(unexpected(other)),
        }
    }

    /// The worker table.
    pub async fn workers(&mut self) -> Result<Vec<WorkerInfo>, ClientError> {
        match self.request(ActionerRequest::Workers).await? {
            Reply::Workers { workers } => Ok(workers),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to events; returns the matching tasks' current states (every part of the
    /// snapshot, however many replies it took).
    pub async fn subscribe(&mut self, filter: EventFilter) -> Result<Vec<TaskStatus>, ClientError> {
        self.request_parts(ActionerRequest::Subscribe { filter }, |reply| match reply {
            Reply::Subscribed { tasks, more } => Ok((tasks, more)),
            other => Err(other),
        })
        .await
    }

    /// The next event of this connection's subscriptions.
    pub async fn next_event(&mut self) -> Result<TaskEvent, ClientError> {
        if let Some((_, e)) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            return match self.framed.next().await {
                None => Err(ClientError::Closed(String::new())),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(CoordinatorToActioner::Event { event, .. })) => Ok(event),
                Some(Ok(CoordinatorToActioner::Shutdown { reason })) => {
                    Err(ClientError::Closed(format!(": {reason}")))
                }
                Some(Ok(CoordinatorToActioner::Reply { request, body })) => {
                    Err(ClientError::Unexpected(format!(
                        "reply to {request} while waiting for events: {body:?}"
                    )))
                }
                Some(Ok(CoordinatorToActioner::Broadcast { listener, message })) => {
                    self.broadcasts.push_back((listener, message));
                    continue;
                }
                Some(Ok(CoordinatorToActioner::Call { .. })) => continue,
            };
        }
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::{Data, Payload};

    fn sleep() -> TaskSpec {
        TaskSpec::new(Payload::Sleep { duration_ms: 1 })
    }

    #[test]
    fn adds_are_split_by_count_and_by_size_in_order() {
        let n = MAX_ADD_TASKS * 2 + 1;
        let mut tasks: Vec<TaskSpec> = (0..n).map(|_| sleep()).collect();
        for (i, t) in tasks.iter_mut().enumerate() {
            t.priority = i as i32;
        }
        let chunks = add_chunks(tasks, BodyCodec::Bincode);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_ADD_TASKS, MAX_ADD_TASKS, 1]);
        let order: Vec<i32> = chunks.iter().flatten().map(|t| t.priority).collect();
        assert_eq!(order, (0..n as i32).collect::<Vec<_>>());

        // 40 tasks of 1 MiB each: a frame holds 16 MiB, so at most 8 go in each request.
        let mut big = sleep();
        big.user_data = Data(vec![7; 1 << 20]);
        let chunks = add_chunks(vec![big; 40], BodyCodec::Msgpack);
        assert!(chunks.len() >= 5, "{} requests", chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 8));
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 40);

        assert_eq!(
            add_chunks(vec![], BodyCodec::Bincode).len(),
            1,
            "an empty add is asked"
        );
    }
}
