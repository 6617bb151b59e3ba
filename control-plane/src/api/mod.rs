//! The REST API (`/v1/...`, JSON), with token auth and one error mapping.
//!
//! Roles: `read` for every GET, `write` for apply and rollback, `admin` for
//! tokens. No token → 401, a token without the role → 403, storage down →
//! 503 with the reason, invalid KDL → 422 with structured diagnostics and
//! the rendered text. `/healthz`, `/readyz`, `/metrics` and
//! `/v1/openapi.json` need no token.

mod configs;
mod fleet;
mod openapi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::fleet::Fleet;
use crate::rollout::RolloutError;
use crate::store::{Role, StoreError};

#[derive(Clone)]
pub struct Api {
    pub fleet: Arc<Fleet>,
    /// token hash → (name, role), filled on successful lookups so reads keep
    /// working for known tokens while the database is away.
    tokens: Arc<Mutex<HashMap<String, (String, Role)>>>,
    pub health_quorum_percent: u32,
}

pub fn router(fleet: Arc<Fleet>, health_quorum_percent: u32) -> Router {
    let api = Api {
        fleet,
        tokens: Arc::default(),
        health_quorum_percent,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async { crate::telemetry::metrics().render() }),
        )
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/configs", get(configs::list).post(configs::apply))
        .route("/v1/configs/active", get(configs::active))
        .route("/v1/configs/{number}", get(configs::get))
        .route("/v1/diff", get(configs::diff))
        .route("/v1/rollback", post(configs::rollback))
        .route("/v1/activations", get(configs::activations))
        .route("/v1/audit", get(configs::audit))
        .route("/v1/nodes", get(fleet::nodes))
        .route("/v1/status", get(fleet::status))
        .route("/v1/health", get(fleet::health))
        .route("/v1/tokens", post(fleet::create_token))
        // Large fleets have large configs (a 10k-route file is several MiB).
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(api)
}

async fn readyz(State(api): State<Api>) -> Response {
    match api.fleet.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// An API error: a status and a JSON body.
pub struct ApiError(StatusCode, serde_json::Value);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, json!({ "error": message.into() }))
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
            RolloutError::Invalid(d) => ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": format!("invalid configuration: {}", d.summary()),
                    "diagnostics": d.diagnostics,
                    "rendered": d.render(false),
                }),
            ),
        }
    }
}

/// The caller, authenticated; `R` is the role the handler needs.
pub struct Caller<const R: u8> {
    pub name: String,
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
        let hash = sentinel_config::sha256_hex(secret.as_bytes());
        let cached = api.tokens.lock().ok().and_then(|t| t.get(&hash).cloned());
        let (name, role) = match cached {
            Some(found) => found,
            None => {
                let found =
                    api.fleet.store.token(&hash).await?.ok_or_else(|| {
                        ApiError::new(StatusCode::UNAUTHORIZED, "unknown API token")
                    })?;
                if let Ok(mut t) = api.tokens.lock() {
                    t.insert(hash, found.clone());
                }
                found
            }
        };
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
        Ok(Caller { name })
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
