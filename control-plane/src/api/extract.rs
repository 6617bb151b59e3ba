//! Extractors whose every rejection is an [`ApiError`] (JSON).
//!
//! axum's own `Json`, `Path` and `Query` answer a malformed request in
//! plain text with statuses of their choosing (415, 422, 400). These
//! wrappers keep axum's parsing and map each rejection into the one error
//! schema: a missing or wrong `Content-Type` is 415 `unsupported_media_type`,
//! everything else the client got wrong is 400 `bad_request`, and a body
//! over the limit is 413. Handlers use these, never axum's directly.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON request body (`Content-Type: application/json`). Every body of
/// this API is a JSON object: anything else (an array, which serde would
/// happily read into a struct field by field, a string, `null`) is a 400.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => object(v).map(Json),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

/// Reads `T` from a JSON value that must be an object.
pub fn object<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "bad request body: expected a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

/// Reads `T` from bytes holding one JSON object.
pub fn object_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?;
    object(v)
}

pub(super) fn json_rejection(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, b.body_text())
        }
        other => ApiError::bad_request(format!("bad request body: {}", other.body_text())),
    }
}

/// Path parameters (`/v1/configs/{number}`).
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(path_rejection(e)),
        }
    }
}

fn path_rejection(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path parameter: {}", e.body_text()))
}

/// The query string (`?limit=10`).
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", e.body_text()))
}

/// `limit` of a list: 1..=`max`, `default` when absent. Out of range is a
/// 400, not a silent clamp, so a client learns the bounds.
pub fn limit(value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

/// Text stored or compared in the database must not hold NUL (PostgreSQL
/// refuses it in `text`) or other control characters except tab/newline.
pub fn plain_text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// `#[serde(deserialize_with = "integral")]` for optional integer fields:
/// JSON Schema counts `5.0` as an integer, serde does not. A number with no
/// fractional part within `T`'s range is accepted; anything else is an error.
pub fn integral<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let wide: i128 = if let Some(i) = n.as_i64() {
        i128::from(i)
    } else if let Some(u) = n.as_u64() {
        i128::from(u)
    } else {
        match n.as_f64() {
            // Beyond 2^63 a float no longer tells integers apart; refuse.
            Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => f as i128,
            _ => return Err(D::Error::custom(format!("expected an integer, got {n}"))),
        }
    };
    T::try_from(wide)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("integer {n} out of range")))
}
