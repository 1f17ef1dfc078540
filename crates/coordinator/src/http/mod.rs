//! The HTTP edge: the JSON API under `/api/`, the event stream, `/metrics` and the status page.
//!
//! Every request becomes a short actioner session with the actor ([`ActorLink`]), so that HTTP
//! and TCP clients see one state through one owner; nothing here keeps tables of its own. The
//! same token as on TCP authenticates (a bearer header, or `token=` in the query for the
//! browser's event stream), and the same connection limit holds: each request in flight, and
//! each open event stream, takes one of the coordinator's connection slots.

mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tatzelwurm_protocol::{ErrorKind, ErrorReply};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::server::ActorLink;

/// What the HTTP edge needs from the coordinator.
pub(crate) struct Ctx {
    /// The way into the actor.
    pub link: ActorLink,
    /// The token clients must present; `None` with `--insecure-no-auth`.
    pub token: Option<Arc<String>>,
    /// The connection slots shared with TCP.
    pub limit: Arc<Semaphore>,
    /// The largest request body, as the largest frame on TCP.
    pub max_body: usize,
    /// Cancelled when the coordinator closes its connections: event streams end then.
    pub closing: CancellationToken,
}

/// The status page, served from the binary.
const PAGE: &str = include_str!("page.html");

/// The OpenAPI description of the routes below (kept in the repository as `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// Every route, as `METHOD path` in the OpenAPI spelling: the router is built from the same
/// handlers, and a test checks this list against `docs/openapi.json`.
pub const ROUTES: &[&str] = &[
    "GET /",
    "GET /metrics",
    "GET /api/openapi.json",
    "GET /api/summary",
    "GET /api/breakdown/{key}",
    "GET /api/tasks",
    "POST /api/tasks",
    "GET /api/tasks/{id}",
    "DELETE /api/tasks/{id}",
    "POST /api/tasks/{id}/{action}",
    "GET /api/workers",
    "GET /api/queues",
    "GET /api/events",
];

/// Serves until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Ctx,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(Arc::new(ctx));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn router(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/api/summary", get(api::summary))
        .route("/api/breakdown/{key}", get(api::breakdown))
        .route("/api/tasks", get(api::list).post(api::add))
        .route("/api/tasks/{id}", get(api::show).delete(api::remove))
        .route("/api/tasks/{id}/{action}", post(api::act))
        .route("/api/workers", get(api::workers))
        .route("/api/queues", get(api::queues))
        .route("/api/events", get(api::events))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), guard));
    Router::new()
        .route("/", get(page))
        .route("/api/openapi.json", get(openapi))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(ctx.max_body))
        .with_state(ctx)
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: see /api/openapi.json",
    )
}

/// The token (a bearer header, or `token=` in the query) and a connection slot, held until the
/// response is done (for an event stream: until it ends, see [`api::events`]).
async fn guard(State(ctx): State<Arc<Ctx>>, mut req: Request, next: Next) -> Response {
    if let Some(secret) = &ctx.token {
        let presented = bearer(req.headers().get(header::AUTHORIZATION))
            .or_else(|| query_token(req.uri()))
            .unwrap_or_default();
        if !auth::token_matches(secret, &presented) {
            let why = if presented.is_empty() {
                "a token is required: send `Authorization: Bearer TOKEN` (the coordinator's token file)"
            } else {
                "wrong token"
            };
            let mut r = failure(StatusCode::UNAUTHORIZED, "bad_token", why);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
        return error(ErrorReply::new(
            ErrorKind::LimitExceeded,
            "too many connections and requests at once; retry later",
        ));
    };
    req.extensions_mut().insert(Arc::new(permit));
    next.run(req).await
}

fn bearer(h: Option<&HeaderValue>) -> Option<String> {
    let v = h?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// `token=` of the query, decoded.
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// An error as JSON, with the status its kind calls for: the caller's mistakes are 4xx, never a
/// 500.
pub(crate) fn error(e: ErrorReply) -> Response {
    let status = match e.kind {
        ErrorKind::UnknownId | ErrorKind::Unroutable => StatusCode::NOT_FOUND,
        ErrorKind::AmbiguousId | ErrorKind::InvalidState | ErrorKind::DuplicateIdentifier => {
            StatusCode::CONFLICT
        }
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::StoreUnavailable | ErrorKind::ShuttingDown | ErrorKind::DeliveryFailed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, e.kind.as_str(), &e.message)
}

fn failure(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "kind": kind, "message": message } })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_are_those_the_openapi_description_lists() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let mut described: Vec<String> = spec["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .expect("methods")
                    .keys()
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        let mut served: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
        described.sort();
        served.sort();
        assert_eq!(described, served);
    }

    #[test]
    fn tokens_are_read_from_a_bearer_header_or_the_query() {
        let h = HeaderValue::from_static("Bearer abc ");
        assert_eq!(bearer(Some(&h)).as_deref(), Some("abc"));
        let h = HeaderValue::from_static("Basic abc");
        assert_eq!(bearer(Some(&h)), None);
        let uri = |u: &str| u.parse::<axum::http::Uri>().unwrap();
        assert_eq!(
            query_token(&uri("/api/events?a=1&token=x%2By")).as_deref(),
            Some("x+y")
        );
        assert_eq!(query_token(&uri("/api/events?a=1")), None);
        assert_eq!(query_token(&uri("/api/events")), None);
    }
}
