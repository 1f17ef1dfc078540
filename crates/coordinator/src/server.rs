//! The network edge: accepts connections, runs handshakes, and runs the actor that owns the
//! [`Core`], feeding it inputs and carrying out its store writes and messages.
//!
//! Write-ahead rule: a message that reflects a change (an acknowledgement, a dispatch, an event)
//! leaves only after the batch holding that change is committed. Batches are pipelined: while one
//! commits, the next one gathers, so one commit covers everything that arrived during the last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tatzelwurm_protocol::handshake::check_hello;
use tatzelwurm_protocol::transport::Stream;
use tatzelwurm_protocol::{
    ActionerRequest, ActionerToCoordinator, BodyCodec, ClientHello, ClientToCoordinator,
    CoordinatorToActioner, CoordinatorToClient, CoordinatorToWorker, ErrorKind, ErrorReply,
    FrameError, Hello, HelloReply, MessageCodec, PROTOCOL_VERSION, RejectKind, Reply, RequestId,
    Role, WorkerHello, WorkerId, WorkerToCoordinator, namespace_of, now_ms,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::auth;
use crate::config::Config;
use crate::core::{Batch, ConnId, Core, CoreConfig, Out};
use crate::http;
use crate::listen::{self, UnixSocket};
use crate::metrics::{Histogram, Snapshot};
use crate::store::{Store, StoreError};

/// Inputs of the actor, in arrival order.
enum Input {
    Actioner(ConnId, ActionerToCoordinator),
    Worker(ConnId, WorkerToCoordinator),
    ConnectActioner(ConnId, ConnHandle, String),
    ConnectClient(
        ConnId,
        ConnHandle,
        Box<ClientHello>,
        oneshot::Sender<WorkerId>,
    ),
    ConnectWorker(
        ConnId,
        ConnHandle,
        Box<WorkerHello>,
        oneshot::Sender<WorkerId>,
    ),
    Disconnected(ConnId),
    /// A snapshot for `/metrics`.
    Metrics(oneshot::Sender<Box<Snapshot>>),
}

/// How the actor reaches one connection.
struct ConnHandle {
    tx: mpsc::Sender<Out>,
    close: CancellationToken,
    /// Where the id of a joining worker or client goes ([`Out::Welcome`]): the connection
    /// answers the hello with it.
    join: Option<oneshot::Sender<WorkerId>>,
}

/// The way into the actor for the coordinator's other front end, HTTP: sessions that act as
/// actioner connections (so both front ends see one state, through one owner), and metrics.
#[derive(Clone)]
pub(crate) struct ActorLink {
    tx: mpsc::Sender<Input>,
    next_conn: Arc<AtomicU64>,
    conn_queue: usize,
}

/// An actioner connection without a socket: requests in, replies and events out. Dropping it
/// disconnects it (its subscriptions end).
pub(crate) struct Session {
    conn: ConnId,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Out>,
    close: CancellationToken,
    next_request: u64,
}

impl ActorLink {
    /// A new session in `namespace`; `None` when the coordinator is stopping.
    pub(crate) async fn session(&self, namespace: String) -> Option<Session> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.conn_queue);
        let close = CancellationToken::new();
        let handle = ConnHandle {
            tx,
            close: close.clone(),
            join: None,
        };
        self.tx
            .send(Input::ConnectActioner(conn, handle, namespace))
            .await
            .ok()?;
        Some(Session {
            conn,
            tx: self.tx.clone(),
            rx,
            close,
            next_request: 1,
        })
    }

    /// What `/metrics` shows now; `None` when the coordinator is stopping.
    pub(crate) async fn metrics(&self) -> Option<Box<Snapshot>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Input::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }
}

impl Session {
    /// Sends a request; its id, or `None` when the coordinator is stopping.
    pub(crate) async fn send(&mut self, body: ActionerRequest) -> Option<RequestId> {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.tx
            .send(Input::Actioner(
                self.conn,
                ActionerToCoordinator { request, body },
            ))
            .await
            .ok()?;
        Some(request)
    }

    /// The next reply or event; `None` once the coordinator closed the session.
    pub(crate) async fn recv(&mut self) -> Option<CoordinatorToActioner> {
        loop {
            tokio::select! {
                _ = self.close.cancelled() => return None,
                m = self.rx.recv() => match m? {
                    Out::Actioner(CoordinatorToActioner::Shutdown { .. }) | Out::Close(_) => return None,
                    Out::Actioner(m) => return Some(m),
                    Out::Worker(_) | Out::Welcome(_) => {}
                },
            }
        }
    }

    /// Sends a request and gathers its replies (all parts of one in parts).
    pub(crate) async fn ask(&mut self, body: ActionerRequest) -> Option<Vec<Reply>> {
        let id = self.send(body).await?;
        let mut replies = Vec::new();
        loop {
            if let CoordinatorToActioner::Reply { request, body } = self.recv().await?
                && request == id
            {
                let more = matches!(
                    body,
                    Reply::Changed { more: true, .. } | Reply::Subscribed { more: true, .. }
                );
                replies.push(body);
                if !more {
                    return Some(replies);
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (tx, conn) = (self.tx.clone(), self.conn);
        if tx.try_send(Input::Disconnected(conn)).is_err() {
            // A full inbox: the disconnect waits its turn (a closed one needs none).
            tokio::spawn(async move { tx.send(Input::Disconnected(conn)).await });
        }
    }
}

/// Task writes gathered while a commit runs before the actor stops taking inputs and waits.
const MAX_PENDING_WRITES: usize = 100_000;

/// What the coordinator listens on, bound before it starts (so that a taken port fails early).
pub struct Listeners {
    /// The protocol's TCP port (none with `--listen none`: the socket alone).
    pub tcp: Option<TcpListener>,
    /// The same protocol on a Unix socket file, for peers on this machine.
    pub unix: Option<UnixSocket>,
    /// The HTTP API, status page and metrics.
    pub http: Option<TcpListener>,
}

/// Runs the coordinator on `listeners` until `shutdown` is cancelled, then stops accepting,
/// flushes the store, tells every peer, and returns.
pub async fn run(cfg: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<()> {
    let Listeners {
        tcp: listener,
        unix,
        http,
    } = listeners;
    anyhow::ensure!(
        listener.is_some() || unix.is_some(),
        "nothing to listen on: neither a TCP port nor a socket"
    );
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let token = if cfg.insecure_no_auth {
        warn!(
            "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches the port controls the queue"
        );
        None
    } else {
        let (token, path) = auth::load_or_create_token(&cfg.data_dir)?;
        info!(path = %path.display(), "clients authenticate with the token in this file");
        Some(Arc::new(token))
    };
    let store = Store::open(&cfg.store)
        .await
        .with_context(|| format!("cannot open store {}", cfg.store.url))?;
    let loaded = store
        .load()
        .await
        .context("cannot load the tables from the store")?;
    info!(
        tasks = loaded.tasks.len(),
        workers = loaded.workers.len(),
        queues = loaded.queues.len(),
        "tables loaded"
    );
    let core_cfg = CoreConfig {
        lease_ms: cfg.lease.as_millis() as u64,
        lost_to_paused: cfg.lost_to_paused,
        forget_lost_ms: cfg.forget_lost.map(|d| d.as_millis() as u64),
        remove_finished_ms: cfg.remove_finished.map(|d| d.as_millis() as u64),
        // Ticks come every `tick_every` (at most a second); a gap of half a lease, and at least
        // three ticks, is the coordinator's own absence.
        stall_ms: Some((cfg.lease / 2).max(tick_every(&cfg) * 3).as_millis() as u64),
        // An id or a task's state takes at most about 40 bytes in either codec: keep each part
        // well inside the frame.
        reply_chunk: (cfg.max_frame / 64).max(1),
    };
    let building = std::time::Instant::now();
    // Each record is decoded as the tables take it, so that a start never holds every task
    // decoded at once: a thread decodes a few thousand ahead while this one builds the tables
    // (the two halves of a start's work, on two cores). The first unreadable one stops the start.
    let mut unreadable = None;
    let tasks =
        decode_ahead(loaded.tasks)
            .into_iter()
            .flatten()
            .map_while(|decoded| match decoded {
                Ok(task) => Some(task),
                Err(e) => {
                    unreadable = Some(e);
                    None
                }
            });
    let core = Core::restore(
        core_cfg,
        tasks,
        loaded.workers,
        loaded.queues,
        loaded.counters,
        now_ms(),
    );
    if let Some(e) = unreadable {
        return Err(e).context("cannot load the tables from the store");
    }
    info!(
        took_ms = building.elapsed().as_millis() as u64,
        "tables built"
    );

    if let Some(l) = &listener {
        let addr = l.local_addr()?;
        if !addr.ip().is_loopback() {
            warn!(%addr, "listening on a non-loopback address: reachable from other machines");
        }
        info!(%addr, "listening");
    }
    if let Some(u) = &unix {
        info!(path = %u.path().display(), "listening on a unix socket");
    }
    // Stable lines on stdout, for people and for scripts that start the coordinator on port 0:
    // printed once the store is open, so that a coordinator that cannot start never claims to
    // listen. The first says where to reach it: its TCP address, or its socket when it has no
    // port; a socket beside a port comes last.
    let socket_line = unix
        .as_ref()
        .map(|u| format!("tatzelwurm listening on unix:{}", u.path().display()));
    match &listener {
        Some(l) => println!("tatzelwurm listening on {}", l.local_addr()?),
        None => println!("{}", socket_line.as_deref().unwrap_or_default()),
    }
    println!(
        "data dir {} (store {})",
        cfg.data_dir.display(),
        cfg.store.url
    );

    let http_addr = match &http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    if let Some(a) = http_addr {
        info!(addr = %a, "http on");
        println!("tatzelwurm http on http://{a}/");
    }
    if let (Some(_), Some(line)) = (&listener, &socket_line) {
        println!("{line}");
    }
    let (in_tx, in_rx) = mpsc::channel::<Input>(8192);
    let tracker = TaskTracker::new();
    let conns_closed = CancellationToken::new();
    let closer = store.clone();
    let actor = tokio::spawn(actor(
        core,
        store,
        in_rx,
        shutdown.clone(),
        conns_closed.clone(),
        cfg.clone(),
    ));

    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let next_conn = Arc::new(AtomicU64::new(1));
    if let Some(listener) = http {
        let ctx = http::Ctx {
            link: ActorLink {
                tx: in_tx.clone(),
                next_conn: next_conn.clone(),
                conn_queue: cfg.conn_queue,
            },
            token: token.clone(),
            limit: limit.clone(),
            max_body: cfg.max_frame,
            closing: conns_closed.clone(),
        };
        let stop = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = http::serve(listener, ctx, stop).await {
                error!(error = %e, "http server failed");
            }
        });
    }
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listen::accept(listener.as_ref(), unix.as_ref()) => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let permit = limit.clone().try_acquire_owned();
        let ctx = ConnCtx {
            conn,
            peer,
            cfg: cfg.clone(),
            token: token.clone(),
            actor: in_tx.clone(),
            close: conns_closed.child_token(),
        };
        tracker.spawn(async move {
            match permit {
                Ok(_permit) => ctx.serve(stream).await,
                Err(_) => reject_busy(stream, &ctx).await,
            }
        });
    }
    info!("shutting down: no longer accepting");
    // Its file goes now: a peer that looks for this coordinator finds none.
    drop(unix);
    drop(in_tx);
    let actor = actor.await;
    closer.close();
    let outcome = match actor {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("the actor panicked: {e}")),
    };
    tracker.close();
    conns_closed.cancel();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close within 5 s");
    }
    info!("stopped");
    outcome
}

async fn reject_busy(stream: Stream, ctx: &ConnCtx) {
    warn!(peer = %ctx.peer, "connection refused: too many connections");
    let mut framed = Framed::new(
        stream,
        MessageCodec::<Hello, HelloReply>::new(BodyCodec::Msgpack, ctx.cfg.max_frame),
    );
    let reply = HelloReply::Rejected {
        kind: RejectKind::Busy,
        message: format!("too many connections (limit {})", ctx.cfg.max_connections),
        version: PROTOCOL_VERSION,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(reply)).await;
}

/// What a connection task needs.
struct ConnCtx {
    conn: ConnId,
    /// Who connected, for the logs: an address, or a Unix peer's process.
    peer: String,
    cfg: Config,
    token: Option<Arc<String>>,
    actor: mpsc::Sender<Input>,
    close: CancellationToken,
}

impl ConnCtx {
    async fn serve(self, stream: Stream) {
        let codec = MessageCodec::<Hello, HelloReply>::new(BodyCodec::Msgpack, self.cfg.max_frame);
        let mut framed = Framed::new(stream, codec);
        let hello = match tokio::time::timeout(self.cfg.handshake_timeout, framed.next()).await {
            Err(_) => {
                warn!(peer = %self.peer, "closing: no hello within the handshake timeout");
                return;
            }
            Ok(None) => {
                debug!(peer = %self.peer, "closed before the hello");
                return;
            }
            Ok(Some(Err(e))) => {
                warn!(peer = %self.peer, error = %e, "closing: bad hello frame");
                if matches!(e, FrameError::Decode { .. }) {
                    let _ = send_reject(
                        &mut framed,
                        RejectKind::MalformedHello,
                        format!("malformed hello: {e}"),
                    )
                    .await;
                }
                return;
            }
            Ok(Some(Ok(hello))) => hello,
        };
        if let Err((kind, message)) = check_hello(&hello) {
            warn!(peer = %self.peer, ?kind, %message, "closing: hello refused");
            let _ = send_reject(&mut framed, kind, message).await;
            return;
        }
        if let Some(secret) = &self.token
            && !auth::token_matches(secret, &hello.token)
        {
            warn!(peer = %self.peer, "closing: bad token");
            tokio::time::sleep(self.cfg.auth_failure_delay).await;
            let msg = if hello.token.is_empty() {
                "a token is required"
            } else {
                "wrong token"
            };
            let _ = send_reject(
                &mut framed,
                RejectKind::BadToken,
                format!("{msg}: pass --token-file with the coordinator's token file"),
            )
            .await;
            return;
        }
        let (tx, rx) = mpsc::channel::<Out>(self.cfg.conn_queue);
        let handle = ConnHandle {
            tx,
            close: self.close.clone(),
            join: None,
        };
        let body = hello.codec;
        match hello.role {
            Role::Actioner { client, namespace } => {
                if self
                    .actor
                    .send(Input::ConnectActioner(
                        self.conn,
                        handle,
                        namespace_of(&namespace),
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
                info!(conn = self.conn, peer = %self.peer, %client, codec = %body, "actioner connected");
                if self.welcome(&mut framed, self.conn).await.is_ok() {
                    let framed = framed.map_codec(|c| {
                        c.retype::<ActionerToCoordinator, CoordinatorToActioner>(body)
                    });
                    self.pump(framed, rx, Input::Actioner).await;
                }
            }
            Role::Worker(w) => {
                let conn = self.conn;
                let hello = Box::new(w);
                let Some(id) = self
                    .join(|tx| Input::ConnectWorker(conn, handle, hello, tx))
                    .await
                else {
                    return;
                };
                if self.welcome(&mut framed, id.0).await.is_ok() {
                    let framed = framed
                        .map_codec(|c| c.retype::<WorkerToCoordinator, CoordinatorToWorker>(body));
                    self.pump(framed, rx, Input::Worker).await;
                }
            }
            Role::Client(c) => {
                info!(conn = self.conn, peer = %self.peer, name = %c.name, namespace = %namespace_of(&c.namespace), codec = %body, "client connected");
                let conn = self.conn;
                let hello = Box::new(c);
                let Some(id) = self
                    .join(|tx| Input::ConnectClient(conn, handle, hello, tx))
                    .await
                else {
                    return;
                };
                if self.welcome(&mut framed, id.0).await.is_ok() {
                    let framed = framed
                        .map_codec(|c| c.retype::<ClientToCoordinator, CoordinatorToClient>(body));
                    self.pump(framed, rx, |conn, m| match m {
                        ClientToCoordinator::Request(r) => Input::Actioner(conn, r),
                        ClientToCoordinator::Worker(w) => Input::Worker(conn, w),
                    })
                    .await;
                }
            }
        }
        let _ = self.actor.send(Input::Disconnected(self.conn)).await;
    }

    /// Tells the actor that a worker or client joined; the id it was given, or `None` when the
    /// actor is gone.
    async fn join(
        &self,
        input: impl FnOnce(oneshot::Sender<WorkerId>) -> Input,
    ) -> Option<WorkerId> {
        let (id_tx, id_rx) = oneshot::channel();
        self.actor.send(input(id_tx)).await.ok()?;
        id_rx.await.ok()
    }

    async fn welcome(
        &self,
        framed: &mut Framed<Stream, MessageCodec<Hello, HelloReply>>,
        peer_id: u64,
    ) -> Result<(), FrameError> {
        framed
            .send(HelloReply::Welcome {
                version: PROTOCOL_VERSION,
                peer_id,
                heartbeat_ms: self.cfg.heartbeat.as_millis() as u64,
                lease_ms: self.cfg.lease.as_millis() as u64,
            })
            .await
    }

    /// Moves frames in both directions until either side ends or the actor closes the connection.
    async fn pump<In, Outgoing>(
        &self,
        mut framed: Framed<Stream, MessageCodec<In, Outgoing>>,
        mut rx: mpsc::Receiver<Out>,
        wrap: impl Fn(ConnId, In) -> Input,
    ) where
        In: serde::de::DeserializeOwned,
        Outgoing: serde::Serialize + OutFilter,
    {
        loop {
            tokio::select! {
                _ = self.close.cancelled() => {
                    // What was queued before the close (a `shutdown` saying why) still goes out,
                    // unless the peer does not read.
                    let goodbye = async {
                        while let Ok(m) = rx.try_recv() {
                            let Ok(msg) = Outgoing::pick(m) else { break };
                            if framed.feed(msg).await.is_err() {
                                break;
                            }
                        }
                        let _ = framed.flush().await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
                    debug!(conn = self.conn, "closed by the coordinator");
                    break;
                }
                frame = framed.next() => match frame {
                    None => { debug!(conn = self.conn, "peer closed"); break; }
                    Some(Err(e)) => {
                        warn!(conn = self.conn, peer = %self.peer, error = %e, "closing connection: bad frame");
                        // A peer that sent something unreadable hears why before the close (an
                        // i/o error has nobody left to tell).
                        if matches!(e, FrameError::TooLarge { .. } | FrameError::Decode { .. }) {
                            let bye = Outgoing::closing(&format!("a frame from this peer could not be read: {e}"));
                            let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(bye)).await;
                        }
                        break;
                    }
                    Some(Ok(msg)) => if self.actor.send(wrap(self.conn, msg)).await.is_err() { break; },
                },
                out = rx.recv() => {
                    let Some(first) = out else { break };
                    let mut batch = vec![first];
                    while batch.len() < 256 {
                        match rx.try_recv() { Ok(m) => batch.push(m), Err(_) => break }
                    }
                    let mut failed = false;
                    let mut closing = None;
                    for m in batch {
                        match Outgoing::pick(m) {
                            Ok(msg) => {
                                let request = msg.request();
                                let Err(e) = framed.feed(msg).await else { continue };
                                // A reply too large for a frame becomes an error reply to the same
                                // request; the encoder left nothing of it behind.
                                let instead = match &e {
                                    FrameError::Encode { .. } => {
                                        Outgoing::instead_of_unsendable(request, &e.to_string())
                                    }
                                    _ => None,
                                };
                                let sent = match instead {
                                    Some(err) => framed.feed(err).await.is_ok(),
                                    None => false,
                                };
                                if !sent {
                                    warn!(conn = self.conn, error = %e, "cannot send; closing");
                                    failed = true;
                                    break;
                                }
                                warn!(conn = self.conn, error = %e, "reply too large; sent an error");
                            }
                            Err(reason) => { closing = Some(reason); break; }
                        }
                    }
                    if !failed && framed.flush().await.is_err() { failed = true; }
                    if let Some(reason) = closing {
                        info!(conn = self.conn, %reason, "closing connection");
                        break;
                    }
                    if failed { break; }
                }
            }
        }
    }
}

/// Picks the message type of one connection side out of an [`Out`].
trait OutFilter: Sized {
    /// The message, or the reason to close.
    fn pick(out: Out) -> Result<Self, String>;
    /// The request this message answers, if it is a reply.
    fn request(&self) -> Option<RequestId> {
        None
    }
    /// What to send instead of a reply that could not be encoded (too large for a frame), so
    /// that the client hears why; `None` closes the connection.
    fn instead_of_unsendable(_request: Option<RequestId>, _why: &str) -> Option<Self> {
        None
    }
    /// The last message before the coordinator closes the connection.
    fn closing(reason: &str) -> Self;
}

impl OutFilter for CoordinatorToActioner {
    fn closing(reason: &str) -> Self {
        CoordinatorToActioner::Shutdown {
            reason: reason.to_string(),
        }
    }

    fn pick(out: Out) -> Result<Self, String> {
        match out {
            Out::Actioner(m) => Ok(m),
            Out::Close(r) => Err(r),
            Out::Worker(_) => Err("internal: worker message for an actioner".into()),
            Out::Welcome(_) => Err("internal: a welcome after the handshake".into()),
        }
    }

    fn request(&self) -> Option<RequestId> {
        match self {
            CoordinatorToActioner::Reply { request, .. } => Some(*request),
            _ => None,
        }
    }

    fn instead_of_unsendable(request: Option<RequestId>, why: &str) -> Option<Self> {
        Some(CoordinatorToActioner::Reply {
            request: request?,
            body: Reply::Error(ErrorReply::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the reply does not fit in a frame ({why}): ask for less (a filter, --limit)"
                ),
            )),
        })
    }
}

/// A client gets the actioner's messages and the worker's, each wrapped in its side.
impl OutFilter for CoordinatorToClient {
    fn closing(reason: &str) -> Self {
        CoordinatorToClient::Actioner(CoordinatorToActioner::closing(reason))
    }

    fn pick(out: Out) -> Result<Self, String> {
        match out {
            Out::Actioner(m) => Ok(CoordinatorToClient::Actioner(m)),
            Out::Worker(m) => Ok(CoordinatorToClient::Worker(m)),
            Out::Close(r) => Err(r),
            Out::Welcome(_) => Err("internal: a welcome after the handshake".into()),
        }
    }

    fn request(&self) -> Option<RequestId> {
        match self {
            CoordinatorToClient::Actioner(m) => m.request(),
            CoordinatorToClient::Worker(_) => None,
        }
    }

    fn instead_of_unsendable(request: Option<RequestId>, why: &str) -> Option<Self> {
        CoordinatorToActioner::instead_of_unsendable(request, why)
            .map(CoordinatorToClient::Actioner)
    }
}

impl OutFilter for CoordinatorToWorker {
    fn closing(reason: &str) -> Self {
        CoordinatorToWorker::Shutdown {
            reason: reason.to_string(),
        }
    }

    fn pick(out: Out) -> Result<Self, String> {
        match out {
            Out::Worker(m) => Ok(m),
            Out::Close(r) => Err(r),
            Out::Actioner(_) => Err("internal: actioner message for a worker".into()),
            Out::Welcome(_) => Err("internal: a welcome after the handshake".into()),
        }
    }
}

async fn send_reject(
    framed: &mut Framed<Stream, MessageCodec<Hello, HelloReply>>,
    kind: RejectKind,
    message: String,
) -> Result<(), FrameError> {
    framed
        .send(HelloReply::Rejected {
            kind,
            message,
            version: PROTOCOL_VERSION,
        })
        .await
}

/// A task read at start, decoded, with its record; or why it could not be read.
type Decoded =
    Result<(tatzelwurm_protocol::TaskInfo, crate::store::Record), crate::store::StoreError>;

/// Task records decoded on a thread of their own, in order, a few thousand at a time, at most
/// four such parts ahead of the reader.
fn decode_ahead(records: Vec<crate::store::Record>) -> std::sync::mpsc::Receiver<Vec<Decoded>> {
    const PART: usize = 4096;
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::spawn(move || {
        for part in records.chunks(PART) {
            let decoded = part
                .iter()
                .map(|r| crate::store::decode_record(r).map(|info| (info, r.clone())))
                .collect();
            if tx.send(decoded).is_err() {
                return;
            }
        }
    });
    rx
}

/// How often the core's tick runs: a quarter of the lease, between 50 ms and a second.
fn tick_every(cfg: &Config) -> Duration {
    (cfg.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The actor: the only code that touches the [`Core`].
async fn actor(
    mut core: Core,
    store: Store,
    mut rx: mpsc::Receiver<Input>,
    shutdown: CancellationToken,
    conns_closed: CancellationToken,
    cfg: Config,
) -> Result<()> {
    let mut conns = Peers::default();
    // One writer for the actor's whole life, one batch at a time: a task spawned per commit cost
    // the actor a spawn and a copy of the write's future each time (small batches commit often).
    let (to_writer, mut written) = writer(store.clone());
    let mut committing = false;
    let mut commit_started = tokio::time::Instant::now();
    let mut commit_seconds = Histogram::new(crate::metrics::SECONDS);
    let mut batch_records = Histogram::new(crate::metrics::SIZES);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failures: u32 = 0;
    let mut failures_total: u64 = 0;
    let tick_every = tick_every(&cfg);
    let mut tick = tokio::time::interval(tick_every);
    let mut last_tick = tokio::time::Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut inputs_open = true;
    // The first tick marks the start: a coordinator stopped before its first timer tick (a
    // SIGSTOP right after it started) must still see its own absence as one.
    core.tick(now_ms());

    loop {
        let can_take = inputs_open && core.pending_writes() < MAX_PENDING_WRITES;
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                core.begin_shutdown();
            }
            done = written.recv(), if committing => {
                committing = false;
                commit_seconds.observe(commit_started.elapsed().as_secs_f64());
                let Some(done) = done else {
                    return Err(anyhow::anyhow!(WRITER_GONE));
                };
                match done {
                    (batch, Ok(())) => {
                        if failures > 0 {
                            info!(after_failures = failures, "store writes again; accepting changes");
                            failures = 0;
                            core.set_store_ok(true);
                        }
                        deliver(&mut conns, batch.sends);
                    }
                    (_, Err(StoreError::Superseded)) => {
                        // Nothing of the batch was written, nor acknowledged; the other
                        // coordinator now owns the tables and the clients must go there.
                        let reason = StoreError::Superseded.to_string();
                        error!("{reason}");
                        deliver(&mut conns, core.shutdown_messages(&reason));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        conns_closed.cancel();
                        shutdown.cancel();
                        return Err(anyhow::anyhow!(reason));
                    }
                    (batch, Err(e)) => {
                        failures += 1;
                        failures_total += 1;
                        error!(error = %e, failures, "store write failed; refusing changes until it works again");
                        core.set_store_ok(false);
                        core.requeue(batch);
                        let wait = Duration::from_millis(100u64 << failures.min(6));
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
            }
            _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {
                retry_at = None;
            }
            input = rx.recv(), if can_take => match input {
                None => inputs_open = false,
                Some(first) => {
                    let now = now_ms();
                    let mut inputs = vec![first];
                    while inputs.len() < 4096 {
                        match rx.try_recv() {
                            Ok(i) => inputs.push(i),
                            Err(_) => break,
                        }
                    }
                    for input in inputs {
                        match input {
                            Input::Metrics(reply) => {
                                let mut snap = Snapshot {
                                    tasks: [0; 8],
                                    entered: [0; 8],
                                    queues: Vec::new(),
                                    workers_connected: 0,
                                    workers_known: 0,
                                    connections: [0; 3],
                                    slow_peers_closed: conns.slow_closed,
                                    commit_seconds: commit_seconds.clone(),
                                    batch_records: batch_records.clone(),
                                    commit_failures: failures_total,
                                    checkpoint_seconds: store.checkpoint_seconds(),
                                    resident_bytes: crate::metrics::resident_bytes(),
                                };
                                core.metrics(&mut snap);
                                let _ = reply.send(Box::new(snap));
                            }
                            other => apply(&mut core, &mut conns, other, now),
                        }
                    }
                }
            },
            // Only wakes the loop: the tick itself runs below.
            _ = tick.tick() => {}
        }
        // Here rather than in the timer branch, which a steady stream of inputs may never let
        // win the select.
        if last_tick.elapsed() >= tick_every {
            core.tick(now_ms());
            last_tick = tokio::time::Instant::now();
            tick.reset();
        }
        core.schedule(now_ms());
        deliver(&mut conns, core.take_immediate());
        if !committing
            && retry_at.is_none()
            && let Some(batch) = core.take_batch()
        {
            if batch.has_writes() {
                batch_records.observe(
                    (batch.tasks.len()
                        + batch.assignments.len()
                        + batch.removed.len()
                        + batch.workers.len()
                        + batch.removed_workers.len()
                        + batch.queues.len()) as f64,
                );
                commit_started = tokio::time::Instant::now();
                if to_writer.try_send(batch).is_err() {
                    return Err(anyhow::anyhow!(WRITER_GONE));
                }
                committing = true;
            } else {
                deliver(&mut conns, batch.sends);
            }
        }
        if stopping && !committing {
            if failures > 0 {
                error!(
                    "shutting down with writes the store did not take; they were never acknowledged"
                );
            }
            let goodbye = core.shutdown_messages("the coordinator is shutting down");
            deliver(&mut conns, goodbye);
            // Let connection tasks write the goodbyes before they are cancelled.
            tokio::time::sleep(Duration::from_millis(50)).await;
            conns_closed.cancel();
            return Ok(());
        }
    }
}

/// Why the actor stops when its store writer is gone: only a panic in a write ends it early.
const WRITER_GONE: &str = "the store writer stopped (it panicked)";

/// A batch back from the store's writer, with the outcome of its write.
type Written = (Batch, Result<(), StoreError>);

/// Starts the task that writes the actor's batches to the store, one at a time, and hands each
/// back with the outcome. Both channels hold one: the actor sends a batch only when the last
/// one came back.
fn writer(store: Store) -> (mpsc::Sender<Batch>, mpsc::Receiver<Written>) {
    let (to_writer, mut batches) = mpsc::channel::<Batch>(1);
    let (done, written) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(batch) = batches.recv().await {
            let r = store
                .write(
                    crate::store::Entry::new(
                        &batch.tasks,
                        &batch.assignments,
                        &batch.removed,
                        &batch.workers,
                        &batch.removed_workers,
                        &batch.queues,
                    ),
                    batch.counters,
                )
                .await;
            if done.send((batch, r)).await.is_err() {
                break;
            }
        }
    });
    (to_writer, written)
}

/// The connections the actor reaches, and how many it closed for reading too slowly.
#[derive(Default)]
struct Peers {
    /// Looked up for every message sent (coordinator-made keys: a fast hash is safe).
    handles: rustc_hash::FxHashMap<ConnId, ConnHandle>,
    slow_closed: u64,
}

fn apply(core: &mut Core, conns: &mut Peers, input: Input, now: u64) {
    match input {
        Input::Actioner(conn, msg) => core.actioner(conn, msg.request, msg.body, now),
        Input::Worker(conn, msg) => core.worker(conn, msg, now),
        Input::ConnectActioner(conn, handle, namespace) => {
            conns.handles.insert(conn, handle);
            core.connect_actioner_in(conn, namespace);
        }
        // The id reaches the connection with the core's welcome, which may wait for a commit.
        Input::ConnectClient(conn, mut handle, hello, reply) => {
            handle.join = Some(reply);
            conns.handles.insert(conn, handle);
            core.connect_client(conn, *hello, now);
        }
        Input::ConnectWorker(conn, mut handle, hello, reply) => {
            handle.join = Some(reply);
            conns.handles.insert(conn, handle);
            core.connect_worker(conn, *hello, now);
        }
        Input::Disconnected(conn) => {
            conns.handles.remove(&conn);
            core.disconnect(conn, now);
        }
        // Answered by the actor, which has the statistics.
        Input::Metrics(_) => {}
    }
}

fn deliver(conns: &mut Peers, sends: Vec<(ConnId, Out)>) {
    for (conn, out) in sends {
        let Some(h) = conns.handles.get_mut(&conn) else {
            continue;
        };
        match &out {
            Out::Close(reason) => {
                info!(conn, %reason, "closing connection");
                h.close.cancel();
                continue;
            }
            Out::Welcome(id) => {
                if let Some(join) = h.join.take() {
                    let _ = join.send(*id);
                }
                continue;
            }
            _ => {}
        }
        match h.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !h.close.is_cancelled() {
                    warn!(
                        conn,
                        "peer too slow to read its messages; closing its connection"
                    );
                    conns.slow_closed += 1;
                    h.close.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, encode_task};
    use tatzelwurm_protocol::{Payload, TaskId, TaskSpec};

    #[test]
    fn records_are_decoded_ahead_in_order_and_an_unreadable_one_is_reported_in_its_place() {
        let tasks: Vec<tatzelwurm_protocol::TaskInfo> = (0..10_000)
            .map(|_| {
                let spec = TaskSpec::new(Payload::Sleep { duration_ms: 0 });
                crate::task::Task::new(TaskId::new(), spec, "default".into(), 0, true).info
            })
            .collect();
        let mut records: Vec<Record> = tasks.iter().map(encode_task).collect();
        // A record cut short, past the first part the thread decodes.
        let cut = 9_000;
        records[cut] = Record::from(&records[cut][..20]);
        let got: Vec<Decoded> = decode_ahead(records.clone())
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(got.len(), records.len(), "every record, once");
        for (i, d) in got.iter().enumerate() {
            match d {
                Ok((info, record)) => {
                    assert_ne!(i, cut);
                    assert_eq!(info, &tasks[i], "in order");
                    assert!(Record::ptr_eq(record, &records[i]), "with its own record");
                }
                Err(e) => {
                    assert_eq!(i, cut);
                    assert!(e.to_string().contains("unreadable"), "{e}");
                }
            }
        }
    }
}
