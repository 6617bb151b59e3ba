//! `/v1/configs`, `/v1/diff`, `/v1/rollback`, `/v1/activations`,
//! `/v1/audit`: versions, their source, their differences, and changing
//! which one is active.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sentinel_proto as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ADMIN, Api, ApiError, Caller, READ, WRITE};
use crate::rollout::{self, ApplyRequest};
use crate::store::ApplyOutcome;

#[derive(Deserialize)]
pub struct ApplyBody {
    source: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    expect_version: Option<i64>,
    #[serde(default)]
    dry_run: bool,
}

/// `If-Match: 12` or `If-Match: "12"`.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("If-Match must be a version number, got `{text}`"),
        )
    })
}

pub async fn apply(
    State(api): State<Api>,
    caller: Caller<WRITE>,
    headers: HeaderMap,
    body: Result<Json<ApplyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?;
    if body.source.len() > 64 * 1024 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "configuration source above 64 MiB",
        ));
    }
    let expect_version = match (if_match(&headers)?, body.expect_version) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match and expect_version disagree",
            ));
        }
        (a, b) => a.or(b),
    };
    let file_name = body.file.unwrap_or_else(|| "sentinel.kdl".to_string());
    if body.dry_run {
        let snapshot = sentinel_config::compile(&file_name, &body.source)
            .map_err(rollout::RolloutError::Invalid)?;
        let active = api.fleet.store.active().await?;
        let (from_source, from_resources) =
            active.map(|a| (a.source, a.resources)).unwrap_or_default();
        return Ok(Json(json!({
            "valid": true,
            "hash": snapshot.config_hash(),
            "summary": snapshot.summary(),
            "diff": diff_value(&from_source, &from_resources, &body.source, &snapshot.resources()),
        }))
        .into_response());
    }
    let author = body.author.unwrap_or(caller.name);
    let outcome = rollout::apply(
        &api.fleet,
        ApplyRequest {
            source: body.source,
            file_name,
            author,
            message: body.message.unwrap_or_default(),
            expect_version,
        },
    )
    .await?;
    Ok(match outcome {
        ApplyOutcome::Created { version, previous } => {
            let hash = api.fleet.current().hash.clone();
            (StatusCode::CREATED, Json(json!({ "created": true, "version": version, "previous": previous, "hash": hash })))
                .into_response()
        }
        ApplyOutcome::Unchanged { version } => Json(json!({
            "created": false,
            "version": version,
            "message": format!("identical to the active version {version}; nothing was stored"),
        }))
        .into_response(),
    })
}

#[derive(Deserialize)]
pub struct Limit {
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn list(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let versions = api
        .fleet
        .store
        .versions(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    let active = api.fleet.store.active().await?.map(|a| a.record.number);
    Ok(Json(json!({ "active": active, "versions": versions })))
}

async fn version_json(api: &Api, number: i64) -> Result<Value, ApiError> {
    let v = api.fleet.store.version(number).await?;
    Ok(json!({
        "version": v.record,
        "source": v.source,
        "resources": v.resources.iter().map(|r| json!({
            "type": pb::ResourceType::try_from(r.r#type).map(|t| t.label()).unwrap_or("unknown"),
            "name": r.name,
            "version": r.version,
        })).collect::<Vec<_>>(),
    }))
}

pub async fn get(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(number): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(version_json(&api, number).await?))
}

pub async fn active(State(api): State<Api>, _c: Caller<READ>) -> Result<Json<Value>, ApiError> {
    let Some(active) = api.fleet.store.active().await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no configuration was applied yet",
        ));
    };
    Ok(Json(version_json(&api, active.record.number).await?))
}

fn resource_map(resources: &[pb::Resource]) -> BTreeMap<(String, String), String> {
    resources
        .iter()
        .map(|r| {
            let kind = pb::ResourceType::try_from(r.r#type)
                .map(|t| t.label())
                .unwrap_or("unknown")
                .to_string();
            ((kind, r.name.clone()), r.version.clone())
        })
        .collect()
}

/// Resource-level changes, then the unified text diff of the sources.
pub fn diff_value(
    from_source: &str,
    from: &[pb::Resource],
    to_source: &str,
    to: &[pb::Resource],
) -> Value {
    let a = resource_map(from);
    let b = resource_map(to);
    let entry = |(kind, name): &(String, String)| json!({ "type": kind, "name": name });
    let added: Vec<Value> = b
        .keys()
        .filter(|k| !a.contains_key(*k))
        .map(entry)
        .collect();
    let removed: Vec<Value> = a
        .keys()
        .filter(|k| !b.contains_key(*k))
        .map(entry)
        .collect();
    let changed: Vec<Value> = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| entry(k))
        .collect();
    let text = similar::TextDiff::from_lines(from_source, to_source)
        .unified_diff()
        .context_radius(3)
        .header("active", "new")
        .to_string();
    json!({ "added": added, "changed": changed, "removed": removed, "text": text })
}

#[derive(Deserialize)]
pub struct DiffQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /v1/diff?from=A&to=B`: defaults compare the active version with the
/// one before it.
pub async fn diff(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<Value>, ApiError> {
    let active = api.fleet.store.active().await?.map(|a| a.record.number);
    let to = q
        .to
        .or(active)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no configuration was applied yet"))?;
    let from = q.from.unwrap_or(to - 1);
    let b = api.fleet.store.version(to).await?;
    let (a_source, a_resources) = if from >= 1 {
        let a = api.fleet.store.version(from).await?;
        (a.source, a.resources)
    } else {
        (String::new(), Vec::new())
    };
    let mut v = diff_value(&a_source, &a_resources, &b.source, &b.resources);
    v["from"] = json!(from);
    v["to"] = json!(to);
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
pub struct RollbackBody {
    #[serde(default)]
    to: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

pub async fn rollback(
    State(api): State<Api>,
    caller: Caller<WRITE>,
    body: Option<Json<RollbackBody>>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let (from, to) = rollout::rollback(
        &api.fleet,
        body.to,
        &caller.name,
        body.message.as_deref().unwrap_or(""),
    )
    .await?;
    Ok(Json(
        json!({ "from": from, "to": to, "hash": api.fleet.current().hash }),
    ))
}

pub async fn activations(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let a = api
        .fleet
        .store
        .activations(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(json!({ "activations": a })))
}

pub async fn audit(
    State(api): State<Api>,
    _c: Caller<ADMIN>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let a = api
        .fleet
        .store
        .audit_log(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(json!({ "audit": a })))
}
