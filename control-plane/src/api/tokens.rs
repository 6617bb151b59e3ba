//! `/v1/tokens`: create, list and revoke tokens (admin role).
//!
//! A secret is generated here, returned once in the create response and
//! stored only as its SHA-256. Listing never shows secrets. Revocation is
//! written to the database; every replica's token cache re-reads an entry
//! after at most [`crate::identity::TOKEN_CACHE_TTL`], so the secret stops
//! working everywhere within that bound — on the REST API and, for join
//! tokens, for every new proxy stream.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use rand::Rng;
use serde::Deserialize;

use super::extract::{Json, Path, Query};
use super::fleet::{NamePage, page_by_name};
use super::{ADMIN, Api, ApiError, Caller, ErrorBody};
pub use sentinel_api::{CreateTokenRequest, TokenCreated, TokenList};

use crate::store::{NewToken, Role, TokenKind, TokenRecord, now_ms};

/// The body of `POST /v1/tokens`, as the server reads it. The document
/// shows the stricter [`CreateTokenRequest`]: the same fields, split into
/// the two kinds so a client sees which combinations are valid.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    /// API tokens: the role (required).
    #[serde(default)]
    role: Option<Role>,
    /// `api` (default) or `join`.
    #[serde(default)]
    kind: Option<TokenKind>,
    /// Join tokens: bind the token to this node id (default: fleet-wide).
    #[serde(default)]
    node_id: Option<String>,
    /// Lifetime in seconds (default: no expiry).
    #[serde(default, deserialize_with = "super::extract::integral")]
    expires_in_secs: Option<u64>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_graphic())
}

/// Create an API token (`role`) or a join token (`kind: join`, optional `node_id`).
#[utoipa::path(operation_id = "create_token", post, path = "/v1/tokens", tag = "tokens",
    request_body(content = CreateTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "the token with its secret, shown only this once", body = TokenCreated),
        (status = 400, description = "malformed body or an invalid combination", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `admin` role", body = ErrorBody),
        (status = 409, description = "the name is taken (names are never reused)", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
pub async fn create(
    State(api): State<Api>,
    caller: Caller<ADMIN>,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, axum::Json<TokenCreated>), ApiError> {
    if !printable(&body.name, 64) {
        return Err(bad("token name must be 1-64 printable ASCII characters"));
    }
    let kind = body.kind.unwrap_or(TokenKind::Api);
    let role = match (kind, body.role) {
        (TokenKind::Api, Some(role)) => Some(role),
        (TokenKind::Api, None) => {
            return Err(bad("an API token needs a role: read, write or admin"));
        }
        (TokenKind::Join, Some(_)) => {
            return Err(bad(
                "a join token has no role: it opens proxy streams, not the API",
            ));
        }
        (TokenKind::Join, None) => None,
    };
    if let Some(node) = &body.node_id {
        if kind != TokenKind::Join {
            return Err(bad("node_id scopes join tokens only"));
        }
        if !printable(node, 128) {
            return Err(bad("node_id must be 1-128 printable ASCII characters"));
        }
    }
    let expires_at_unix_ms = match body.expires_in_secs {
        None => None,
        Some(0) => return Err(bad("expires_in_secs must be positive")),
        Some(secs) => {
            let ms = Duration::from_secs(secs).as_millis();
            Some(now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
        }
    };
    let bytes: [u8; 24] = rand::rng().random();
    let secret = format!(
        "snt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let record = api
        .fleet
        .store
        .create_token(
            &NewToken {
                name: body.name,
                secret_hash: sentinel_config::sha256_hex(secret.as_bytes()),
                kind,
                role,
                node_id: body.node_id,
                expires_at_unix_ms,
            },
            &caller.name,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated {
            record,
            token: secret,
        }),
    ))
}

/// Every token: name, kind, role, node, created, expires, revoked — never secrets.
#[utoipa::path(operation_id = "list_tokens", get, path = "/v1/tokens", tag = "tokens",
    params(NamePage),
    responses(
        (status = 200, description = "tokens", body = TokenList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `admin` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
pub async fn list(
    State(api): State<Api>,
    _c: Caller<ADMIN>,
    Query(q): Query<NamePage>,
) -> Result<axum::Json<TokenList>, ApiError> {
    let tokens = api.fleet.store.tokens().await?;
    let (tokens, next_cursor) = page_by_name(tokens, &q, |t| &t.name)?;
    Ok(axum::Json(TokenList {
        tokens,
        next_cursor,
    }))
}

/// Revoke a token; effective on every replica within a second.
#[utoipa::path(operation_id = "revoke_token", delete, path = "/v1/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "token name")),
    responses(
        (status = 200, description = "the revoked token", body = TokenRecord),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `admin` role", body = ErrorBody),
        (status = 404, description = "no such token", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
pub async fn revoke(
    State(api): State<Api>,
    caller: Caller<ADMIN>,
    Path(name): Path<String>,
) -> Result<axum::Json<TokenRecord>, ApiError> {
    // Names are printable ASCII; anything else (NUL, which PostgreSQL
    // refuses in a parameter, included) names no token.
    if !printable(&name, 64) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no token named `{}`", name.escape_debug()),
        ));
    }
    let record = api.fleet.store.revoke_token(&name, &caller.name).await?;
    Ok(axum::Json(record))
}
