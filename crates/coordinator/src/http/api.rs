//! The handlers of `/api/` and `/metrics`: each turns its query or body into a protocol
//! request, asks the actor, and answers in the JSON shapes of `actionwurm --json`
//! ([`tatzelwurm_protocol::json`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tatzelwurm_protocol::input::{Common, JsonTask};
use tatzelwurm_protocol::json::{
    counts_json, event_json, queue_json, summary_json, task_json, worker_json,
};
use tatzelwurm_protocol::{
    ActionerRequest, CoordinatorToActioner, DEFAULT_NAMESPACE, ErrorKind, ErrorReply, EventFilter,
    MAX_ADD_TASKS, Reply, Selector, Tag, TaskFilter, TaskId, TaskState,
};
use tokio::sync::OwnedSemaphorePermit;

use super::{Ctx, error};
use crate::server::Session;

type Pairs = Query<Vec<(String, String)>>;

/// What a handler's steps fail with; it becomes the response at the end ([`error`]).
type Fallible<T> = Result<T, ErrorReply>;

fn bad(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::InvalidRequest, message)
}

fn stopping() -> ErrorReply {
    ErrorReply::new(ErrorKind::ShuttingDown, "the coordinator is shutting down")
}

async fn session(ctx: &Ctx) -> Fallible<Session> {
    ctx.link
        .session(DEFAULT_NAMESPACE.to_string())
        .await
        .ok_or_else(stopping)
}

/// Asks one request; its replies, or the error response.
async fn ask(ctx: &Ctx, body: ActionerRequest) -> Fallible<Vec<Reply>> {
    let mut s = session(ctx).await?;
    let replies = s.ask(body).await.ok_or_else(stopping)?;
    match replies.iter().find(|r| matches!(r, Reply::Error(_))) {
        Some(Reply::Error(e)) => Err(e.clone()),
        _ => Ok(replies),
    }
}

fn unexpected(r: &Reply) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Internal,
        format!("unexpected reply from the core: {r:?}"),
    )
}

/// The values of `key` in a query, each of them split at commas (`state=ready,running` and
/// `state=ready&state=running` mean the same).
fn values<'a>(q: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    q.iter()
        .filter(move |(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn one<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn states(q: &[(String, String)]) -> Fallible<Vec<TaskState>> {
    values(q, "state")
        .map(|s| s.parse::<TaskState>().map_err(bad))
        .collect()
}

fn tags(q: &[(String, String)]) -> Fallible<Vec<Tag>> {
    q.iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.parse::<Tag>().map_err(bad))
        .collect()
}

fn number<T: std::str::FromStr>(q: &[(String, String)], key: &str) -> Fallible<Option<T>> {
    one(q, key)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| bad(format!("{key}={v:?} is not a number")))
        })
        .transpose()
}

/// Only the listed keys may appear: a misspelt filter must not silently match everything.
fn known(q: &[(String, String)], keys: &[&str]) -> Fallible<()> {
    match q
        .iter()
        .find(|(k, _)| !keys.contains(&k.as_str()) && k != "token")
    {
        Some((k, _)) => Err(bad(format!(
            "unknown query parameter {k:?}; known: {}",
            keys.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The one reply a request gets, or an error.
fn single(mut r: Vec<Reply>) -> Fallible<Reply> {
    match r.len() {
        1 => Ok(r.pop().expect("one")),
        0 => Err(stopping()),
        _ => Err(unexpected(&r[0])),
    }
}

/// A handler's outcome as a response: its JSON, or its error.
fn respond(r: Fallible<Response>) -> Response {
    r.unwrap_or_else(error)
}

/// Asks `request` and answers with the JSON `shape` makes of its one reply; a reply `shape`
/// does not expect (it hands it back) is an internal error.
async fn answer(
    ctx: &Ctx,
    request: ActionerRequest,
    shape: impl FnOnce(Reply) -> Result<Value, Reply>,
) -> Response {
    respond(
        async {
            let reply = single(ask(ctx, request).await?)?;
            shape(reply)
                .map(|v| Json(v).into_response())
                .map_err(|other| unexpected(&other))
        }
        .await,
    )
}

pub(super) async fn summary(State(ctx): State<Arc<Ctx>>) -> Response {
    answer(&ctx, ActionerRequest::Summary, |r| match r {
        Reply::Summary {
            counts,
            workers_connected,
            finished_last_minute,
        } => Ok(json!({
            "counts": counts_json(&counts),
            "workers_connected": workers_connected,
            "finished_last_minute": finished_last_minute,
        })),
        other => Err(other),
    })
    .await
}

pub(super) async fn breakdown(State(ctx): State<Arc<Ctx>>, Path(key): Path<String>) -> Response {
    answer(&ctx, ActionerRequest::Breakdown { key }, |r| match r {
        Reply::Breakdown { key, values } => {
            let v: serde_json::Map<String, Value> = values
                .iter()
                .map(|v| (v.value.clone(), counts_json(&v.counts)))
                .collect();
            Ok(json!({ "key": key, "values": v }))
        }
        other => Err(other),
    })
    .await
}

/// The most tasks one page holds.
const MAX_PAGE: u32 = 10_000;

/// The page a query asks for, and its limit.
fn page_request(q: &[(String, String)]) -> Fallible<(ActionerRequest, u32)> {
    known(
        q,
        &["state", "tag", "queue", "name", "batch", "limit", "before"],
    )?;
    let limit = number::<u32>(q, "limit")?.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let before = one(q, "before")
        .map(|b| {
            b.parse::<uuid::Uuid>()
                .map(TaskId)
                .map_err(|_| bad(format!("before={b:?} is not a task id")))
        })
        .transpose()?;
    let filter = TaskFilter {
        states: states(q)?,
        tags: tags(q)?,
        queue: one(q, "queue").map(str::to_string),
        name: one(q, "name").map(str::to_string),
        batch: number(q, "batch")?,
    };
    let request = ActionerRequest::ListPage {
        filter,
        limit,
        before,
    };
    Ok((request, limit))
}

pub(super) async fn list(State(ctx): State<Arc<Ctx>>, Query(q): Pairs) -> Response {
    let (request, limit) = match page_request(&q) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    answer(&ctx, request, |r| match r {
        Reply::Tasks { tasks, counts } => {
            // The cursor of the next page, when this one is full.
            let next = (tasks.len() == limit as usize)
                .then(|| tasks.last().map(|t| t.id.to_string()))
                .flatten();
            Ok(json!({
                "tasks": tasks.iter().map(summary_json).collect::<Vec<_>>(),
                "counts": counts_json(&counts),
                "next": next,
            }))
        }
        other => Err(other),
    })
    .await
}

pub(super) async fn show(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    answer(&ctx, ActionerRequest::Show { id }, |r| match r {
        Reply::Task { task, waiting } => {
            let mut v = task_json(&task);
            v["waiting"] = json!(waiting);
            Ok(v)
        }
        other => Err(other),
    })
    .await
}

/// The ids a change touched, gathered from its parts.
fn changed(replies: &[Reply]) -> Fallible<Vec<String>> {
    let mut ids = Vec::new();
    for r in replies {
        match r {
            Reply::Changed { ids: part, .. } => ids.extend(part.iter().map(|i| i.to_string())),
            other => return Err(unexpected(other)),
        }
    }
    Ok(ids)
}

pub(super) async fn act(
    State(ctx): State<Arc<Ctx>>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    respond(
        async {
            let selector = Selector::Ids(vec![id]);
            let body = match action.as_str() {
                "play" => ActionerRequest::Play {
                    selector,
                    created: true,
                },
                "pause" => ActionerRequest::Pause { selector },
                "kill" => ActionerRequest::Kill { selector },
                "retry" => ActionerRequest::Retry {
                    selector,
                    attempts: 1,
                },
                "remove" => ActionerRequest::Remove { selector },
                other => {
                    return Err(bad(format!(
                        "unknown action {other:?}: play, pause, kill, retry or remove"
                    )));
                }
            };
            let ids = changed(&ask(&ctx, body).await?)?;
            Ok(Json(json!({ "changed": ids })).into_response())
        }
        .await,
    )
}

pub(super) async fn remove(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    act(State(ctx), Path((id, "remove".to_string()))).await
}

pub(super) async fn workers(State(ctx): State<Arc<Ctx>>) -> Response {
    answer(&ctx, ActionerRequest::Workers, |r| match r {
        Reply::Workers { workers } => {
            Ok(json!(workers.iter().map(worker_json).collect::<Vec<_>>()))
        }
        other => Err(other),
    })
    .await
}

pub(super) async fn queues(State(ctx): State<Arc<Ctx>>) -> Response {
    answer(&ctx, ActionerRequest::Queues, |r| match r {
        Reply::Queues { queues } => Ok(json!(queues.iter().map(queue_json).collect::<Vec<_>>())),
        other => Err(other),
    })
    .await
}

/// The body of `POST /api/tasks`: tasks in the JSON form of `task add --from-file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTasks {
    tasks: Vec<JsonTask>,
    /// Ready at once (default), or left `created`.
    #[serde(default = "yes")]
    play: bool,
}

fn yes() -> bool {
    true
}

pub(super) async fn add(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<NewTasks>, JsonRejection>,
) -> Response {
    respond(
        async {
            let Json(body) =
                body.map_err(|e| bad(format!("the body is not a task list: {}", e.body_text())))?;
            if body.tasks.is_empty() || body.tasks.len() > MAX_ADD_TASKS {
                return Err(bad(format!(
                    "one request adds 1 to {MAX_ADD_TASKS} tasks; split larger adds"
                )));
            }
            let tasks = body
                .tasks
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    t.spec(&Common::default())
                        .and_then(|s| s.validate().map(|()| s).map_err(|e| e.to_string()))
                        .map_err(|e| bad(format!("task {i}: {e}")))
                })
                .collect::<Fallible<Vec<_>>>()?;
            let request = ActionerRequest::Add {
                tasks,
                play: body.play,
            };
            match single(ask(&ctx, request).await?)? {
                Reply::Added {
                    ids,
                    numbers,
                    batch,
                } => {
                    let added: Vec<Value> = ids
                        .iter()
                        .zip(&numbers)
                        .map(|(id, n)| json!({ "id": id.to_string(), "number": n, "batch": batch }))
                        .collect();
                    Ok((StatusCode::CREATED, Json(json!(added))).into_response())
                }
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

pub(super) async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    match ctx.link.metrics().await {
        Some(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::metrics::render(&s),
        )
            .into_response(),
        None => error(stopping()),
    }
}

/// An open subscription: the session, the states to keep, and its first events (the snapshot).
type Opened = (Session, Vec<TaskState>, Vec<Event>);

/// Subscribes with the query's filters and reads the snapshot.
async fn subscribe(ctx: &Ctx, q: &[(String, String)]) -> Fallible<Opened> {
    known(q, &["id", "tag", "queue", "batch", "state", "snapshot"])?;
    let ids: Vec<String> = values(q, "id").map(str::to_string).collect();
    let filter_tags = tags(q)?;
    let queue = one(q, "queue").map(str::to_string);
    let batch = number(q, "batch")?;
    let all = ids.is_empty() && filter_tags.is_empty() && queue.is_none() && batch.is_none();
    let keep = states(q)?;
    let snapshot = matches!(one(q, "snapshot"), Some("true" | "1" | "yes"));
    let mut s = session(ctx).await?;
    let filter = EventFilter {
        ids,
        tags: filter_tags,
        all,
        queue,
        batch,
    };
    let id = s
        .send(ActionerRequest::Subscribe { filter })
        .await
        .ok_or_else(stopping)?;
    let mut first: Vec<Event> = Vec::new();
    loop {
        match s.recv().await.ok_or_else(stopping)? {
            CoordinatorToActioner::Reply {
                request,
                body: Reply::Subscribed { tasks, more },
            } if request == id => {
                if snapshot {
                    first.extend(tasks.iter().map(|t| {
                        Event::default().event("snapshot").data(
                            json!({ "id": t.id.to_string(), "state": t.state.as_str() })
                                .to_string(),
                        )
                    }));
                }
                if !more {
                    return Ok((s, keep, first));
                }
            }
            CoordinatorToActioner::Reply {
                request,
                body: Reply::Error(e),
            } if request == id => return Err(e),
            _ => {}
        }
    }
}

/// `GET /api/events`: server-sent events of task state changes, with `subscribe`'s filters
/// (`id`, `tag`, `queue`, `batch`; every task when none is given) and `state` to keep only
/// some states. With `snapshot=true`, the current state of every matching task comes first
/// (`snapshot` events); the status page leaves it out, since it may be millions of tasks.
pub(super) async fn events(
    State(ctx): State<Arc<Ctx>>,
    Extension(slot): Extension<Arc<OwnedSemaphorePermit>>,
    Query(q): Pairs,
) -> Response {
    let (s, keep, first) = match subscribe(&ctx, &q).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let closing = ctx.closing.clone();
    // The connection slot stays taken while the stream is open.
    let live = stream::unfold(
        (s, keep, closing, slot),
        |(mut s, keep, closing, slot)| async move {
            loop {
                let m = tokio::select! {
                    _ = closing.cancelled() => return None,
                    m = s.recv() => m?,
                };
                if let CoordinatorToActioner::Event { event, .. } = m
                    && (keep.is_empty() || keep.contains(&event.state))
                {
                    let e = Event::default()
                        .event("task")
                        .data(event_json(&event).to_string());
                    return Some((e, (s, keep, closing, slot)));
                }
            }
        },
    );
    let stream = stream::iter(first).chain(live).map(Ok::<_, Infallible>);
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
