//! The REST API (`/v1/...`, JSON), with token auth and one error mapping.
//!
//! Roles: `read` for every GET, `write` for apply and rollback, `admin` for
//! tokens. No token, an unknown, revoked or expired one, or a join token →
//! 401; a token without the role → 403; storage down → 503 with the
//! reason; invalid KDL → 422 with structured diagnostics and the rendered
//! text. `/healthz`, `/readyz`, `/metrics` and `/v1/openapi.json` need no
//! token. Token lookups go through `identity::TokenCache` (shared rules
//! with the proxy streams: revocation and expiry hold within a second).
//!
//! **Every error is one JSON shape**, [`ErrorBody`] (`code`, `message`,
//! and for invalid KDL `diagnostics` + `rendered`): the handlers' own
//! errors, and also what axum would otherwise answer in plain text — a
//! body that is not JSON, a path or query parameter of the wrong type, an
//! unknown path (404) or method (405). That is why handlers take
//! [`extract::Json`], [`extract::Path`] and [`extract::Query`] (thin
//! wrappers that turn axum's rejections into [`ApiError`]) and never
//! axum's extractors directly.
//!
//! The OpenAPI document (`openapi.rs`) is generated from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` types
//! they take and return, so it cannot drift from what is served.

mod configs;
mod console;
mod discovery;
pub mod extract;
mod fleet;
pub mod openapi;
mod rollouts;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

pub use sentinel_api::{DiagnosticBody, ErrorBody};

use crate::fleet::Fleet;
use crate::identity::{TokenCache, TokenError};
use crate::rollout::RolloutError;
use crate::store::{Role, StoreError, TokenKind};

#[derive(Clone)]
pub struct Api {
    pub fleet: Arc<Fleet>,
    /// Secret → token; entries live at most `identity::TOKEN_CACHE_TTL`
    /// (revocation on any replica takes effect within it), stale ones are
    /// used only while the database is away.
    tokens: Arc<TokenCache>,
    pub health_quorum_percent: u32,
    /// Nodes not connected and not seen for this long are listed as
    /// expired and not counted (`--node-expiry-secs`).
    pub node_expiry: std::time::Duration,
}

pub fn router(
    fleet: Arc<Fleet>,
    health_quorum_percent: u32,
    node_expiry: std::time::Duration,
) -> Router {
    let api = Api {
        tokens: Arc::new(TokenCache::new(fleet.store.clone())),
        fleet,
        health_quorum_percent,
        node_expiry,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/configs", get(configs::list).post(configs::apply))
        .route("/v1/configs/active", get(configs::active))
        .route("/v1/configs/{number}", get(configs::get))
        .route("/v1/configs/{number}/trace", get(configs::trace))
        .route("/v1/diff", get(configs::diff))
        .route("/v1/rollback", post(configs::rollback))
        .route("/v1/activations", get(configs::activations))
        .route(
            "/v1/activations/{id}/convergence",
            get(console::convergence),
        )
        .route("/v1/events", get(console::events))
        .route("/v1/whoami", get(console::whoami))
        .route("/v1/rollouts", get(rollouts::list))
        .route("/v1/rollouts/{id}", get(rollouts::get))
        .route("/v1/rollouts/{id}/promote", post(rollouts::promote))
        .route("/v1/rollouts/{id}/pause", post(rollouts::pause))
        .route("/v1/rollouts/{id}/resume", post(rollouts::resume))
        .route("/v1/rollouts/{id}/abort", post(rollouts::abort))
        .route("/v1/audit", get(configs::audit))
        .route("/v1/nodes", get(fleet::nodes))
        .route("/v1/nodes/{id}/events", get(fleet::node_events))
        .route("/v1/status", get(fleet::status))
        .route("/v1/health", get(fleet::health))
        .route("/v1/discovery", get(discovery::discovery))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", delete(tokens::revoke))
        .route_layer(axum::middleware::from_fn(etag))
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Large fleets have large configs (a 10k-route file is several MiB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// The largest request body accepted (a 10k-route config is several MiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such path under this API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not answer this method",
    )
}

/// Liveness: the process answers.
#[utoipa::path(operation_id = "healthz", get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(operation_id = "readyz", get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "the database is unreachable", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz(State(api): State<Api>) -> Response {
    match api.fleet.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// Prometheus metrics of this replica (text exposition format).
#[utoipa::path(operation_id = "metrics", get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub async fn metrics() -> String {
    crate::telemetry::metrics().render()
}

// === impl ApiError ===

/// An API error: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PRECONDITION_FAILED => "precondition_failed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_config",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        ApiError(
            status,
            ErrorBody {
                code: code.to_string(),
                message: message.into(),
                diagnostics: None,
                rendered: None,
            },
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn status(&self) -> StatusCode {
        self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            StoreError::Unavailable(_) => {
                format!("{e}; nothing was changed, retry when the database is back")
            }
            _ => e.to_string(),
        };
        ApiError::new(status, message)
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Store(s) => s.into(),
            RolloutError::CompileTimeout(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            RolloutError::CompileFailed(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            RolloutError::Plan(_) => ApiError::bad_request(e.to_string()),
            RolloutError::Invalid(d) => {
                let mut err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid configuration: {}", d.summary()),
                );
                err.1.diagnostics = Some(d.diagnostics.iter().map(DiagnosticBody::from).collect());
                err.1.rendered = Some(d.render(false));
                err
            }
        }
    }
}

// === impl Caller ===
/// The caller, authenticated; `R` is the role the handler needs.
pub struct Caller<const R: u8> {
    pub name: String,
    /// The token's role (at least `R`).
    pub role: Role,
}

pub const READ: u8 = 0;
pub const WRITE: u8 = 1;
pub const ADMIN: u8 = 2;

fn needed(r: u8) -> Role {
    match r {
        READ => Role::Read,
        WRITE => Role::Write,
        _ => Role::Admin,
    }
}

impl<const R: u8> FromRequestParts<Api> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let secret = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing API token: send `Authorization: Bearer TOKEN`",
            )
        })?;
        let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let token = api.tokens.lookup(&secret).await.map_err(|e| match e {
            TokenError::Unknown => unauthorized("unknown API token".into()),
            TokenError::Unusable { .. } => unauthorized(e.to_string()),
            TokenError::Store(s) => s.into(),
        })?;
        let role = match (token.kind, token.role) {
            (TokenKind::Api, Some(role)) => role,
            _ => {
                return Err(unauthorized(format!(
                    "token `{}` is a join token: it opens proxy streams, not the API",
                    token.name
                )));
            }
        };
        let name = token.name;
        let need = needed(R);
        if role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token `{name}` has role `{}`; this needs `{}`",
                    role.as_str(),
                    need.as_str()
                ),
            ));
        }
        Ok(Caller { name, role })
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then(|| token.to_string())
}

// === ETag ===

/// Conditional reads: every successful `GET` under `/v1` carries a strong
/// `ETag` (a hash of the body), and a request whose `If-None-Match` names
/// it (or `*`) gets `304 Not Modified` with no body. The tag is computed
/// from the bytes sent, so it changes exactly when the answer does.
async fn etag(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_get = req.method() == axum::http::Method::GET;
    let if_none_match = req
        .headers()
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = next.run(req).await;
    // An event stream never ends: it cannot be buffered to be hashed.
    let streaming = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_get || resp.status() != StatusCode::OK || streaming {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot buffer the response: {e}"),
            )
            .into_response();
        }
    };
    let hash = sentinel_config::sha256_hex(&bytes);
    let tag = format!("\"{}\"", &hash[..hash.len().min(32)]);
    let matches = if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag)
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&tag) {
        parts.headers.insert(axum::http::header::ETAG, value);
    }
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(axum::http::header::CONTENT_TYPE);
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}
