//! The HTTP API: routes, the key check, JSON bodies, handlers. Cell work runs through
//! [`blocking`], never holding up the async workers' other tasks.

use crate::error::ApiError;
use crate::idempotency::Claim;
use crate::node::{CreateRequest, Entry, Node};
use crate::tenants::Tenant;
use crate::{metrics_export, stream};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map as JMap, Value as J, json};
use std::sync::Arc;
use std::time::Instant;
use supervisor::json as cj;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{Instrument, Span};

/// Every route as (method, path), the list the OpenAPI document is checked against.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/cells"),
    ("get", "/v1/cells"),
    ("get", "/v1/cells/{id}"),
    ("delete", "/v1/cells/{id}"),
    ("post", "/v1/cells/{id}/exec"),
    ("post", "/v1/cells/{id}/call"),
    ("post", "/v1/cells/{id}/ttl"),
    ("get", "/v1/cells/{id}/events"),
    ("get", "/v1/node"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// The OpenAPI document, kept in the repository as `service/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What every handler gets: the node.
pub type AppState = Arc<Node>;

/// The router with every route and layer; `extra` routes (tests) get the same layers.
pub fn app(node: Arc<Node>, extra: Router<AppState>) -> Router {
    let limits = node.config.limits.clone();
    Router::new()
        .route("/v1/cells", post(create).get(list))
        .route("/v1/cells/{id}", get(show).delete(delete))
        .route("/v1/cells/{id}/exec", post(exec))
        .route("/v1/cells/{id}/call", post(call))
        .route("/v1/cells/{id}/ttl", post(ttl))
        .route("/v1/cells/{id}/events", get(stream::events))
        .route("/v1/node", get(node_info))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_export::render))
        .merge(extra)
        // After every route: it applies to the routes registered before it. `Allow` is kept.
        .method_not_allowed_fallback(|| async {
            ApiError::new("method_not_allowed", "the route does not serve this method")
        })
        .route_layer(middleware::from_fn(request_context))
        .fallback(|| async { ApiError::new("no_route", "no such route") })
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            metrics::counter!("cell_service_panics_total").increment(1);
            ApiError::new("internal", "the request failed inside the server").into_response()
        }))
        .with_state(node)
}

/// A request id (kept from `x-request-id` when sane), a span carrying it and the tenant into the
/// cell's spans, the audit line, request metrics.
async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route, tenant = tracing::field::Empty);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(target: "cell_service::audit", status, took_us = started.elapsed().as_micros() as u64, "request");
    });
    metrics::counter!("cell_service_requests_total", "route" => route.clone(), "method" => method_label(&method), "status" => status.to_string()).increment(1);
    metrics::histogram!("cell_service_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// 16 hex digits, unique within the process and different across processes and nodes: a
/// counter, offset by a random start drawn once (one `getrandom` per process, not per request),
/// through a bijective mixer. Ids correlate log lines; they are no secret.
/// The method as a metric label: a client may send any token as a method, and each would be a
/// series kept for the life of the process, so methods HTTP does not define are `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ]
    .iter()
    .find(|m| *m == method)
    .map_or("other", |m| m.as_str())
}

fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source works");
        u64::from_ne_bytes(b)
    });
    format!(
        "{:016x}",
        mix(key.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)))
    )
}

/// SplitMix64's finalizer: a bijection on u64, so distinct inputs give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The tenant whose `Authorization: Bearer KEY` this is.
pub struct Auth(pub Arc<Tenant>);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, node: &AppState) -> Result<Auth, ApiError> {
        let tenants = node.tenants();
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 9110, 11.1): `bearer KEY` is a bearer key too.
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key);
        let tenant = match key {
            Some(k) => tenants.authenticate(k.trim()),
            None => tenants.anonymous(),
        };
        match tenant {
            Some(t) => {
                Span::current().record("tenant", t.name.as_str());
                Ok(Auth(t))
            }
            None => {
                metrics::counter!("cell_service_auth_failures_total").increment(1);
                Err(ApiError::new(
                    "unauthorized",
                    "a valid `Authorization: Bearer KEY` is required",
                ))
            }
        }
    }
}

/// The `{id}` of a cell route, percent-decoded: one that does not decode to UTF-8 (`%FF`) is a
/// typed `bad_request`, not axum's plain-text rejection.
pub struct CellId(pub String);

impl FromRequestParts<AppState> for CellId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, node: &AppState) -> Result<CellId, ApiError> {
        Path::<String>::from_request_parts(parts, node)
            .await
            .map(|Path(id)| CellId(id))
            .map_err(|e| ApiError::bad_request(format!("invalid cell id: {}", e.body_text())))
    }
}

/// A JSON body: over the cap → 413 before it is buffered, malformed or unknown fields → 400.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, node: &AppState) -> Result<JsonBody<T>, ApiError> {
        let too_large = || {
            ApiError::new(
                "payload_too_large",
                "the request body is larger than allowed",
            )
        };
        // Refused by its Content-Length before a byte of it is read.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > node.config.limits.body_bytes as u64) {
            return Err(too_large());
        }
        // The whole body within the limit: the body layer's timeout restarts at every chunk, so
        // a client sending a byte now and then would hold the connection for ever.
        let limit = node.config.limits.body_timeout;
        let bytes = tokio::time::timeout(limit, Bytes::from_request(req, node))
            .await
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "cannot read the request body: it took over {} ms",
                    limit.as_millis()
                ))
            })?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::bad_request(format!(
                        "cannot read the request body: {}",
                        e.body_text()
                    ))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Blocking work run in place at once, at most (the rest goes to the blocking pool).
pub const MAX_IN_PLACE: usize = 32;

/// Runs blocking `f` (a spawn, an exec, a kill) inside the request's span, never holding up the
/// async workers' other tasks. On a multi-thread runtime, while fewer than [`MAX_IN_PLACE`] do,
/// it runs on this thread with `block_in_place`, which first hands the worker's other tasks to
/// another thread (it does not wait for it): no hop to a blocking thread and no wake back to
/// the worker for the answer, the two thread switches that made most of an exec's cost over
/// HTTP. Past the bound, or on another runtime, `f` runs on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let span = Span::current();
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
        && let Some(_permit) = node.in_place(MAX_IN_PLACE)
    {
        return tokio::task::block_in_place(|| span.in_scope(f));
    }
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::new("internal", format!("the request's worker failed: {e}")))?
}

/// [`blocking`] holding `held` (an exec place) inside the work until it ends: on the blocking
/// pool the work runs on after its client hangs up and the handler is dropped, and a place held
/// by the handler would come back while the script still runs, letting a tenant pass its bound.
async fn blocking_holding<T: Send + 'static, H: Send + 'static>(
    node: &Node,
    held: H,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(node, move || {
        let _held = held;
        f()
    })
    .await
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string())
}

async fn create(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    node.admit(&req)?;
    // A create with a key some other create runs with now waits for it here, on no thread,
    // and answers as it did.
    let lead = match req.idempotency_key.as_deref() {
        None => None,
        Some(key) => match node.claim_key(&tenant, &req, key).await? {
            Claim::Made(entry) => return Ok(created(&node, &entry, StatusCode::OK)),
            Claim::Lead(lead) => Some(lead),
        },
    };
    // A create's `source` runs as an exec does, on a thread until it ends: it takes one of the
    // tenant's places for execs, else creates would run any number of scripts at once.
    let running = match req.source.is_some().then(|| node.start_exec(&tenant)) {
        Some(Err(e)) => {
            if let Some(lead) = lead {
                lead.finish(Err(&e), |_| false);
            }
            return Err(e);
        }
        other => other.transpose()?,
    };
    let n = node.clone();
    let entry = blocking_holding(&node, running, move || n.create(&tenant, req, lead)).await?;
    Ok(created(&node, &entry, StatusCode::CREATED))
}

/// A create's answer: `201` for a new cell, `200` for the one an idempotency key named.
fn created(node: &Node, entry: &Entry, status: StatusCode) -> Response {
    let body = json!({
        "id": entry.id, "node": node.config.node, "backend": entry.backend,
        "expires_at": entry.expires_at_ms(),
    });
    (status, Json(body)).into_response()
}

/// Cells in a page of `GET /v1/cells` when the request names no `limit`.
pub const LIST_LIMIT: usize = 100;
/// The largest `limit` a page of `GET /v1/cells` may ask.
pub const MAX_LIST_LIMIT: usize = 1000;
/// A page of `GET /v1/cells` ends before the cell that would take it past this many bytes of
/// JSON (a page holds one cell at least): each cell may carry 64 KiB of labels.
pub const LIST_PAGE_BYTES: usize = 1 << 20;

/// `?after=ID&limit=N` of the cell list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only cells whose id sorts after this one (the previous page's `next`).
    after: Option<String>,
    /// Most cells in the page.
    limit: Option<usize>,
}

async fn list(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<J>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` is {limit}, it must be 1 to {MAX_LIST_LIMIT}"
        )));
    }
    let all = node.list(&tenant.name);
    let after = q.after.as_deref();
    let mut rest = all
        .iter()
        .filter(|e| after.is_none_or(|a| e.id.as_str() > a))
        .peekable();
    let (mut cells, mut bytes) = (Vec::new(), 0);
    while let Some(e) = rest.peek() {
        let cell = e.to_json(&node.config.node);
        // Its JSON and the comma after it.
        let size = cell.to_string().len() + 1;
        if cells.len() == limit || (!cells.is_empty() && bytes + size > LIST_PAGE_BYTES) {
            break;
        }
        bytes += size;
        cells.push(cell);
        rest.next();
    }
    // The last id listed when more follow: the next page starts after it.
    let next = rest
        .peek()
        .and_then(|_| cells.last())
        .map(|c| c["id"].clone());
    Ok(Json(
        json!({ "node": node.config.node, "cells": cells, "next": next }),
    ))
}

async fn show(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
) -> Result<Json<J>, ApiError> {
    let entry = node.find(&tenant, &id, &path_of(&uri))?;
    Ok(Json(entry.to_json(&node.config.node)))
}

async fn delete(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
) -> Result<Json<J>, ApiError> {
    let entry = node.find(&tenant, &id, &path_of(&uri))?;
    let n = node.clone();
    blocking(&node, move || {
        n.remove(&entry, "cancelled", "the cell was deleted");
        Ok(())
    })
    .await?;
    tracing::info!(target: "cell_service::audit", cell = %id, "delete");
    Ok(Json(json!({ "id": id, "deleted": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRequest {
    source: String,
}

async fn exec(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Result<Json<J>, ApiError> {
    let entry = node.find(&tenant, &id, &path_of(&uri))?;
    let running = node.start_exec(&tenant)?;
    let n = node.clone();
    let value = blocking_holding(&node, running, move || {
        n.run(&entry, |c| c.exec(&req.source))
    })
    .await?;
    Ok(Json(json!({ "result": cj::value(&value) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    function: String,
    #[serde(default)]
    args: Vec<J>,
    #[serde(default)]
    kwargs: JMap<String, J>,
}

async fn call(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
    JsonBody(req): JsonBody<CallRequest>,
) -> Result<Json<J>, ApiError> {
    let entry = node.find(&tenant, &id, &path_of(&uri))?;
    let running = node.start_exec(&tenant)?;
    let args = req.args.iter().map(cj::parse_value).collect();
    let kwargs = req
        .kwargs
        .iter()
        .map(|(k, v)| (k.clone(), cj::parse_value(v)))
        .collect();
    let n = node.clone();
    let value = blocking_holding(&node, running, move || {
        n.run(&entry, |c| c.call(&req.function, args, kwargs))
    })
    .await?;
    Ok(Json(json!({ "result": cj::value(&value) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlRequest {
    ttl_ms: u64,
}

async fn ttl(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
    JsonBody(req): JsonBody<TtlRequest>,
) -> Result<Json<J>, ApiError> {
    let entry = node.find(&tenant, &id, &path_of(&uri))?;
    if !node.extend(&entry, req.ttl_ms) {
        return Err(ApiError::cell_not_found(&id));
    }
    Ok(Json(
        json!({ "id": entry.id, "expires_at": entry.expires_at_ms() }),
    ))
}

async fn node_info(State(node): State<AppState>, Auth(_): Auth) -> Result<Json<J>, ApiError> {
    let n = node.clone();
    // Backend doctor checks may touch the host (KVM, cgroups): off the runtime.
    blocking(&node, move || Ok(Json(n.node_json()))).await
}

async fn readyz(State(node): State<AppState>) -> Response {
    if node.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `?after=SEQ` of the events stream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a sequence number above this (resume after a reconnect).
    pub after: Option<u64>,
}

/// The extractor for [`EventsQuery`].
pub type EventsParams = Query<EventsQuery>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_hex_digits_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
