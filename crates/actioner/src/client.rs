//! An async client for the actioner side of the protocol: one connection, requests matched to
//! replies by request id, events of subscriptions buffered until asked for.

use std::collections::VecDeque;
use std::path::PathBuf;

use futures_util::{SinkExt, StreamExt};
use tatzelwurm_protocol::client::{HandshakeError, handshake};
use tatzelwurm_protocol::{
    ActionerRequest, ActionerToCoordinator, BodyCodec, CoordinatorToActioner, DEFAULT_MAX_FRAME,
    ErrorReply, EventFilter, FrameError, Hello, MAX_ADD_TASKS, MessageCodec, Reply, RequestId,
    Role, Selector, StateCount, Tag, TaskEvent, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
    TaskSummary, WorkerInfo,
};
use tokio::net::TcpStream;
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

/// A connection to the coordinator as an actioner.
pub struct Client {
    framed: Framed<TcpStream, MessageCodec<CoordinatorToActioner, ActionerToCoordinator>>,
    next_request: u64,
    /// Events that arrived while waiting for a reply, with their subscription.
    events: VecDeque<(RequestId, TaskEvent)>,
}

impl Client {
    /// Connects and shakes hands with the given token and body codec.
    pub async fn connect(addr: &str, token: &str, codec: BodyCodec) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let hello = Hello::new(
            Role::Actioner {
                client: format!("actionwurm {}", env!("CARGO_PKG_VERSION")),
            },
            codec,
            token,
        );
        let (framed, _welcome) =
            handshake(stream, &hello, DEFAULT_MAX_FRAME)
                .await
                .map_err(|source| ClientError::Handshake {
                    addr: addr.to_string(),
                    source,
                })?;
        tracing::debug!(addr, codec = codec.name(), "connected to the coordinator");
        Ok(Client {
            framed,
            next_request: 1,
            events: VecDeque::new(),
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
            }
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

    /// Adds tasks; returns their ids once they are durable. More than [`MAX_ADD_TASKS`] go in
    /// several requests, each all-or-nothing: if one fails, the error names the tasks the earlier
    /// ones added.
    pub async fn add(
        &mut self,
        tasks: Vec<TaskSpec>,
        play: bool,
    ) -> Result<Vec<TaskId>, ClientError> {
        let total = tasks.len();
        let mut added: Vec<TaskId> = Vec::with_capacity(total);
        let mut rest = tasks;
        loop {
            let tail = rest.split_off(rest.len().min(MAX_ADD_TASKS));
            let chunk = std::mem::replace(&mut rest, tail);
            let reply = self
                .request(ActionerRequest::Add { tasks: chunk, play })
                .await;
            match reply.and_then(|r| match r {
                Reply::Added { ids } => Ok(ids),
                other => Err(unexpected(other)),
            }) {
                Ok(ids) => added.extend(ids),
                Err(e) if added.is_empty() => return Err(e),
                Err(e) => {
                    return Err(ClientError::PartlyAdded {
                        added,
                        total,
                        source: Box::new(e),
                    });
                }
            }
            if rest.is_empty() {
                return Ok(added);
            }
        }
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
        self.change(ActionerRequest::Play { selector }).await
    }

    /// Lists tasks (newest first) with the counts per state.
    pub async fn list(
        &mut self,
        states: Vec<TaskState>,
        tags: Vec<Tag>,
        limit: Option<u32>,
    ) -> Result<(Vec<TaskSummary>, Vec<StateCount>), ClientError> {
        match self
            .request(ActionerRequest::List {
                states,
                tags,
                limit,
            })
            .await?
        {
            Reply::Tasks { tasks, counts } => Ok((tasks, counts)),
            other => Err(unexpected(other)),
        }
    }

    /// One task, whole.
    pub async fn show(&mut self, id: &str) -> Result<TaskInfo, ClientError> {
        match self
            .request(ActionerRequest::Show { id: id.to_string() })
            .await?
        {
            Reply::Task { task } => Ok(*task),
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
        match self.framed.next().await {
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
        }
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}
