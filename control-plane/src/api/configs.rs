//! `/v1/configs`, `/v1/diff`, `/v1/rollback`, `/v1/activations`,
//! `/v1/audit`: versions, their source, their differences, and changing
//! which one is active.
//!
//! Apply takes the KDL either wrapped in JSON ([`ApplyBody`],
//! `Content-Type: application/json`) or raw (`text/plain` or
//! `application/kdl`, with `message`, `author`, `file` and `dry_run` in the
//! query string). Every response and request type here derives `ToSchema`,
//! and every handler carries its `#[utoipa::path]`: that is the OpenAPI
//! document.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sentinel_proto as pb;
use serde::Deserialize;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use utoipa::IntoParams;

use super::extract::{Path, Query, limit, object_from_slice};
use super::{ADMIN, Api, ApiError, Caller, ErrorBody, READ, WRITE};
use crate::rollout::{self, ApplyRequest};
use crate::store::ApplyOutcome;
pub use sentinel_api::{
    ActivationList, ApplyBody, ApplyCreated, ApplyNothingStored, ApplyUnchanged, AuditList,
    ConfigTrace, Diff, DryRun, EXAMPLE_KDL, EXAMPLE_KDL_TWO, ResourceName, ResourceRef,
    RollbackBody, RollbackResult, TraceNode, TraceStep, VersionDetail, VersionList,
};

/// Longest `message` kept (characters); longer ones are cut.
const MESSAGE_MAX_CHARS: usize = 4096;
/// Longest `author` and `file` kept (characters).
const NAME_MAX_CHARS: usize = 256;

/// Text from a client made storable: control characters other than
/// newline and tab removed (PostgreSQL refuses NUL in TEXT), length capped.
fn storable(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .take(max_chars)
        .collect()
}

/// Query parameters of apply; they carry the metadata of a raw KDL body
/// (`text/plain`, `application/kdl`). With a JSON body, the body's fields
/// win where both are given.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// File name used in diagnostics.
    #[param(nullable = false)]
    file: Option<String>,
    /// Why: stored with the version.
    #[param(nullable = false)]
    message: Option<String>,
    /// Free text stored with the version.
    #[param(nullable = false)]
    author: Option<String>,
    /// Validate and diff only.
    #[param(nullable = false)]
    dry_run: Option<bool>,
}

/// The `If-Match` header: the version the client believes is active.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// `12` or `"12"`: change nothing unless version 12 is active (409 otherwise).
    #[param(
        rename = "If-Match",
        pattern = r#"^"?[0-9]{1,18}"?$"#,
        nullable = false
    )]
    #[allow(dead_code)]
    if_match: Option<String>,
}

/// `If-Match: 12` or `If-Match: "12"`.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!("If-Match must be a version number, got `{text}`"))
    })
}

/// Where the apply's fields come from, whatever the content type.
struct ApplyInput {
    source: String,
    file: Option<String>,
    message: Option<String>,
    author: Option<String>,
    expect_version: Option<i64>,
    dry_run: bool,
    rollout: Option<sentinel_api::RolloutPlan>,
}

fn apply_input(headers: &HeaderMap, q: ApplyQuery, body: Bytes) -> Result<ApplyInput, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => {
            let b: ApplyBody = object_from_slice(&body)?;
            Ok(ApplyInput {
                source: b.source,
                file: b.file.or(q.file),
                message: b.message.or(q.message),
                author: b.author.or(q.author),
                expect_version: b.expect_version,
                dry_run: b.dry_run || q.dry_run.unwrap_or(false),
                rollout: b.rollout,
            })
        }
        "text/plain" | "application/kdl" => {
            let source = String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::bad_request("a raw KDL body must be UTF-8 text"))?;
            Ok(ApplyInput {
                source,
                file: q.file,
                message: q.message,
                author: q.author,
                expect_version: None,
                dry_run: q.dry_run.unwrap_or(false),
                rollout: None,
            })
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "apply takes `Content-Type: application/json` ({\"source\": …}) or raw KDL as `text/plain` or `application/kdl`",
        )),
    }
}

/// Apply a configuration: validate, compile, store and activate it as one step.
#[utoipa::path(operation_id = "apply_config", post, path = "/v1/configs", tag = "configs",
    params(ApplyQuery, IfMatch),
    request_body(description = "The KDL document: JSON-wrapped with metadata, or raw", content(
        (ApplyBody = "application/json", examples(
            ("minimal" = (summary = "one listener, one upstream, one route", value = json!({"source": EXAMPLE_KDL, "message": "first version"}))),
            ("two-upstreams" = (summary = "weighted targets and a path match", value = json!({"source": EXAMPLE_KDL_TWO, "message": "split api and web", "author": "ops"}))),
            ("dry-run" = (summary = "validate and diff only", value = json!({"source": EXAMPLE_KDL, "dry_run": true}))),
        )),
        (String = "text/plain", example = json!(EXAMPLE_KDL)),
        (String = "application/kdl", example = json!(EXAMPLE_KDL_TWO)),
    )),
    responses(
        (status = 201, description = "stored and activated; with a `rollout` plan: stored, and a rollout started that activates it when its last stage passed", body = ApplyCreated),
        (status = 200, description = "identical to the active version (nothing stored), or a dry run", body = ApplyNothingStored),
        (status = 400, description = "malformed body, If-Match or query, or an invalid rollout plan", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 409, description = "`If-Match`/`expect_version` is not the active version (or they disagree), or a rollout is open (the message names it)", body = ErrorBody),
        (status = 413, description = "body above 64 MiB", body = ErrorBody),
        (status = 415, description = "neither JSON nor raw KDL", body = ErrorBody),
        (status = 422, description = "invalid KDL: `diagnostics` and `rendered`", body = ErrorBody),
        (status = 503, description = "database unavailable; nothing stored", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn apply(
    State(api): State<Api>,
    caller: Caller<WRITE>,
    headers: HeaderMap,
    Query(q): Query<ApplyQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body above 64 MiB")
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    let input = apply_input(&headers, q, body)?;
    if input.source.contains('\0') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid configuration: the source contains a NUL character",
        ));
    }
    let expect_version = match (if_match(&headers)?, input.expect_version) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("If-Match ({a}) and expect_version ({b}) disagree"),
            ));
        }
        (a, b) => a.or(b),
    };
    let file_name = input
        .file
        .map(|f| storable(&f, NAME_MAX_CHARS))
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "sentinel.kdl".to_string());
    if let Some(plan) = &input.rollout {
        // Checked before anything else, dry runs included.
        crate::rollouts::plan::Plan::from_api(plan)
            .map_err(|e| ApiError::bad_request(format!("invalid rollout plan: {e}")))?;
    }
    if input.dry_run {
        let snapshot = rollout::compile(&file_name, &input.source).await?;
        let active = api.fleet.store.active().await?;
        let (from_source, from_resources) =
            active.map(|a| (a.source, a.resources)).unwrap_or_default();
        let dry = DryRun {
            valid: true,
            hash: snapshot.config_hash(),
            summary: snapshot.summary().into(),
            diff: diff_of(
                &from_source,
                &from_resources,
                &input.source,
                &snapshot.resources(),
            ),
        };
        return Ok(axum::Json(ApplyNothingStored::DryRun(dry)).into_response());
    }
    // The actor is who authenticated; `author` is free text stored beside it.
    let author = input
        .author
        .map(|a| storable(&a, NAME_MAX_CHARS))
        .unwrap_or_else(|| caller.name.clone());
    let request = ApplyRequest {
        source: input.source,
        file_name,
        actor: caller.name,
        author,
        message: storable(&input.message.unwrap_or_default(), MESSAGE_MAX_CHARS),
        expect_version,
    };
    // The config change's root span here (sentinelctl's span is its
    // parent when the request carries a valid `traceparent`).
    let span = tracing::info_span!("config.apply", sentinel.token = %request.actor);
    crate::telemetry::parent_on_request(&span, &headers);
    let trace_id = crate::telemetry::trace_id_of(&span);
    let applied = async {
        match input.rollout {
            Some(plan) => crate::rollouts::apply_staged(&api.fleet, request, plan).await,
            None => Ok((rollout::apply(&api.fleet, request).await?, None)),
        }
    }
    .instrument(span.clone())
    .await;
    let (outcome, rollout_id) = match applied {
        Ok(pair) => pair,
        Err(e) => {
            span.set_status(sentinel_telemetry::trace::Status::error(e.to_string()));
            return Err(e.into());
        }
    };
    let (ApplyOutcome::Created { version, .. } | ApplyOutcome::Unchanged { version }) = &outcome;
    span.set_attribute("sentinel.config.version", *version);
    Ok(match outcome {
        ApplyOutcome::Created { version, previous } => {
            let hash = api.fleet.current().hash.clone();
            (
                StatusCode::CREATED,
                axum::Json(ApplyCreated {
                    created: true,
                    version,
                    previous,
                    hash,
                    rollout: rollout_id,
                    trace_id,
                }),
            )
                .into_response()
        }
        ApplyOutcome::Unchanged { version } => {
            axum::Json(ApplyNothingStored::Unchanged(ApplyUnchanged {
                created: false,
                version,
                message: format!("identical to the active version {version}; nothing was stored"),
            }))
            .into_response()
        }
    })
}

/// `?limit=N&cursor=C` of a list, newest first.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// How many entries, newest first (1-10000, default 100).
    #[param(minimum = 1, maximum = 10000, nullable = false)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page: entries older than it.
    #[param(nullable = false)]
    cursor: Option<i64>,
}

/// Fetches one more than `limit` to learn whether a next page exists;
/// returns the page and the cursor of the next one.
pub(super) fn page_of<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> i64,
) -> (Vec<T>, Option<i64>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(key);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// List stored versions, newest first.
#[utoipa::path(operation_id = "list_configs", get, path = "/v1/configs", tag = "configs", params(Page),
    responses(
        (status = 200, description = "versions and the active number", body = VersionList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<Page>,
) -> Result<axum::Json<VersionList>, ApiError> {
    let n = limit(q.limit, 100, 10_000)?;
    let rows = api.fleet.store.versions_before(n + 1, q.cursor).await?;
    let (versions, next_cursor) = page_of(rows, n, |v| v.number);
    let active = api.fleet.store.active().await?.map(|a| a.record.number);
    Ok(axum::Json(VersionList {
        active,
        versions,
        next_cursor,
    }))
}

fn type_label(kind: i32) -> &'static str {
    pb::ResourceType::try_from(kind)
        .map(|t| t.label())
        .unwrap_or("unknown")
}

async fn version_detail(api: &Api, number: i64) -> Result<VersionDetail, ApiError> {
    let v = api.fleet.store.version(number).await?;
    Ok(VersionDetail {
        version: v.record,
        source: v.source,
        resources: v
            .resources
            .iter()
            .map(|r| ResourceRef {
                kind: type_label(r.r#type).to_string(),
                name: r.name.clone(),
                version: r.version.clone(),
            })
            .collect(),
    })
}

/// One version with its KDL source and resource versions.
#[utoipa::path(operation_id = "get_config", get, path = "/v1/configs/{number}", tag = "configs",
    params(("number" = i64, Path, description = "version number")),
    responses(
        (status = 200, description = "the version", body = VersionDetail),
        (status = 400, description = "the number is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "no such version", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(number): Path<i64>,
) -> Result<axum::Json<VersionDetail>, ApiError> {
    Ok(axum::Json(version_detail(&api, number).await?))
}

/// Pushes answered this long before the change's activation still count
/// as its own (replicas' clocks differ a little).
const TRACE_CLOCK_SLACK_MS: i64 = 1000;

/// The newest config change that delivered a version, as one trace: its
/// trace id, the control plane's steps, and each node's timeline (pushed,
/// received, built, swapped, answered) from the control plane's own
/// records — no collector needed.
#[utoipa::path(operation_id = "get_config_trace", get, path = "/v1/configs/{number}/trace", tag = "configs",
    params(("number" = i64, Path, description = "version number")),
    responses(
        (status = 200, description = "the trace of the newest change that delivered the version", body = ConfigTrace),
        (status = 400, description = "the number is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "no such version, or it was never activated or rolled out", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn trace(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(number): Path<i64>,
) -> Result<axum::Json<ConfigTrace>, ApiError> {
    // 404 for a version that does not exist.
    api.fleet.store.version(number).await?;
    let Some(change) = api.fleet.store.version_trace(number).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("version {number} was never activated or rolled out"),
        ));
    };
    let mut steps = change.trace.steps.clone();
    steps.push(TraceStep {
        name: "config.activate".into(),
        start_unix_ms: change.at_unix_ms,
        end_unix_ms: change.at_unix_ms,
    });
    let since = change.at_unix_ms - TRACE_CLOCK_SLACK_MS;
    let nodes = api
        .fleet
        .store
        .pushes_of(number)
        .await?
        .into_iter()
        .filter(|row| row.push.pushed_at_unix_ms >= since)
        .map(|row| {
            let p = row.push;
            TraceNode {
                node: row.node,
                region: p.region,
                pushed_at_unix_ms: p.pushed_at_unix_ms,
                received_unix_ms: p.received_unix_ms,
                built_unix_ms: p.built_unix_ms,
                swapped_unix_ms: p.swapped_unix_ms,
                answered_at_unix_ms: p.answered_at_unix_ms,
                outcome: p.outcome.to_string(),
                error: p.error,
                total_ms: p.answered_at_unix_ms.saturating_sub(p.pushed_at_unix_ms),
            }
        })
        .collect();
    let trace_id = change
        .trace
        .parent
        .as_deref()
        .map(sentinel_telemetry::trace::from_traceparent)
        .and_then(|cx| sentinel_telemetry::trace::trace_id(&cx));
    Ok(axum::Json(ConfigTrace {
        version: number,
        trace_id,
        trace_parent: change.trace.parent,
        kind: change.kind,
        steps,
        nodes,
    }))
}

/// The active version with its KDL source.
#[utoipa::path(operation_id = "get_active_config", get, path = "/v1/configs/active", tag = "configs",
    responses(
        (status = 200, description = "the active version", body = VersionDetail),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "nothing applied yet", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn active(
    State(api): State<Api>,
    _c: Caller<READ>,
) -> Result<axum::Json<VersionDetail>, ApiError> {
    let Some(active) = api.fleet.store.active().await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no configuration was applied yet",
        ));
    };
    Ok(axum::Json(
        version_detail(&api, active.record.number).await?,
    ))
}

fn resource_map(resources: &[pb::Resource]) -> BTreeMap<(String, String), String> {
    resources
        .iter()
        .map(|r| {
            (
                (type_label(r.r#type).to_string(), r.name.clone()),
                r.version.clone(),
            )
        })
        .collect()
}

/// Resource-level changes, then the unified text diff of the sources.
pub fn diff_of(
    from_source: &str,
    from: &[pb::Resource],
    to_source: &str,
    to: &[pb::Resource],
) -> Diff {
    let a = resource_map(from);
    let b = resource_map(to);
    let entry = |(kind, name): &(String, String)| ResourceName {
        kind: kind.clone(),
        name: name.clone(),
    };
    let added = b
        .keys()
        .filter(|k| !a.contains_key(*k))
        .map(entry)
        .collect();
    let removed = a
        .keys()
        .filter(|k| !b.contains_key(*k))
        .map(entry)
        .collect();
    let changed = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| entry(k))
        .collect();
    let text = similar::TextDiff::from_lines(from_source, to_source)
        .unified_diff()
        .context_radius(3)
        .header("active", "new")
        .to_string();
    Diff {
        added,
        changed,
        removed,
        text,
        from: None,
        to: None,
    }
}

/// `?from=A&to=B` of a diff.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// Older version (default: the one before `to`; 0 or less = empty).
    #[param(nullable = false)]
    from: Option<i64>,
    /// Newer version (default: the active one).
    #[param(nullable = false)]
    to: Option<i64>,
}

/// Difference between two versions: resources added/changed/removed and the text diff.
#[utoipa::path(operation_id = "diff_configs", get, path = "/v1/diff", tag = "configs", params(DiffQuery),
    responses(
        (status = 200, description = "the difference", body = Diff),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "no such version, or nothing applied yet", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn diff(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<DiffQuery>,
) -> Result<axum::Json<Diff>, ApiError> {
    let active = api.fleet.store.active().await?.map(|a| a.record.number);
    let to = q
        .to
        .or(active)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no configuration was applied yet"))?;
    let from = q.from.unwrap_or(to.saturating_sub(1));
    let b = api.fleet.store.version(to).await?;
    let (a_source, a_resources) = if from >= 1 {
        let a = api.fleet.store.version(from).await?;
        (a.source, a.resources)
    } else {
        (String::new(), Vec::new())
    };
    let mut d = diff_of(&a_source, &a_resources, &b.source, &b.resources);
    d.from = Some(from);
    d.to = Some(to);
    Ok(axum::Json(d))
}

/// Re-activate the previous version, or `to`; itself recorded (undo = roll back again). During a rollout it aborts the rollout (its nodes return to the active version) and, given another `to`, then re-activates that.
#[utoipa::path(operation_id = "rollback", post, path = "/v1/rollback", tag = "configs",
    params(IfMatch),
    request_body(content = Option<RollbackBody>, content_type = "application/json",
        description = "optional; an empty body rolls back to the previous version"),
    responses(
        (status = 200, description = "rolled back", body = RollbackResult),
        (status = 400, description = "malformed body", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 404, description = "no such version", body = ErrorBody),
        (status = 409, description = "nothing to roll back to, already active, or `If-Match` is not the active version", body = ErrorBody),
        (status = 415, description = "a body that is not JSON", body = ErrorBody),
        (status = 503, description = "database unavailable; nothing changed", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn rollback(
    State(api): State<Api>,
    caller: Caller<WRITE>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<RollbackResult>, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            // `null` is the documented "no body" in JSON.
            Ok(serde_json::Value::Null) => RollbackBody::default(),
            _ => object_from_slice::<RollbackBody>(&body)?,
        }
    };
    let message = storable(body.message.as_deref().unwrap_or(""), MESSAGE_MAX_CHARS);
    let expect = if_match(&headers)?;
    // A rollback is its own config change: its own trace (or the
    // caller's, from `traceparent`).
    let span = tracing::info_span!("config.rollback", sentinel.token = %caller.name);
    crate::telemetry::parent_on_request(&span, &headers);
    let trace_id = crate::telemetry::trace_id_of(&span);
    let rolled = rollout::rollback_if_match(&api.fleet, body.to, expect, &caller.name, &message)
        .instrument(span.clone())
        .await;
    let (from, to) = match rolled {
        Ok(pair) => pair,
        Err(e) => {
            span.set_status(sentinel_telemetry::trace::Status::error(e.to_string()));
            return Err(e.into());
        }
    };
    span.set_attribute("sentinel.config.version", to);
    Ok(axum::Json(RollbackResult {
        from,
        to,
        hash: api.fleet.current().hash.clone(),
        trace_id,
    }))
}

/// Deployment history: every apply and rollback, newest first.
#[utoipa::path(operation_id = "list_activations", get, path = "/v1/activations", tag = "configs", params(Page),
    responses(
        (status = 200, description = "activations", body = ActivationList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn activations(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<Page>,
) -> Result<axum::Json<ActivationList>, ApiError> {
    let n = limit(q.limit, 100, 10_000)?;
    let rows = api.fleet.store.activations_before(n + 1, q.cursor).await?;
    let (activations, next_cursor) = page_of(rows, n, |a| a.id);
    Ok(axum::Json(ActivationList {
        activations,
        next_cursor,
    }))
}

/// Audit trail, newest first (token creation, rotation and revocation included).
#[utoipa::path(operation_id = "list_audit", get, path = "/v1/audit", tag = "tokens", params(Page),
    responses(
        (status = 200, description = "entries", body = AuditList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `admin` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
pub async fn audit(
    State(api): State<Api>,
    _c: Caller<ADMIN>,
    Query(q): Query<Page>,
) -> Result<axum::Json<AuditList>, ApiError> {
    let n = limit(q.limit, 100, 10_000)?;
    let rows = api.fleet.store.audit_before(n + 1, q.cursor).await?;
    let (rows, next_cursor) = page_of(rows, n, |(id, _)| *id);
    Ok(axum::Json(AuditList {
        audit: rows.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
    }))
}
