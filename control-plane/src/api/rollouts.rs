//! `/v1/rollouts`: staged rollouts as resources — list, one with its
//! stages, nodes and events, and the operator's commands (promote, pause,
//! resume, abort). A rollout is started by `POST /v1/configs` with a
//! `rollout` plan; the logic is `crate::rollouts`.

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query, limit};
use super::{Api, ApiError, Caller, ErrorBody, READ, WRITE};
use crate::rollouts::{self, Command};
pub use sentinel_api::{RolloutDetail, RolloutList, RolloutSummary};

/// `?limit=N&cursor=C` of the rollout list, newest first.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RolloutPage {
    /// How many rollouts, newest first (1-1000, default 50).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page: rollouts older than it.
    #[param(nullable = false)]
    cursor: Option<i64>,
}

/// Rollouts, newest first.
#[utoipa::path(operation_id = "list_rollouts", get, path = "/v1/rollouts", tag = "rollouts", params(RolloutPage),
    responses(
        (status = 200, description = "rollouts", body = RolloutList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<RolloutPage>,
) -> Result<axum::Json<RolloutList>, ApiError> {
    let n = limit(q.limit, 50, 1000)?;
    let mut rows = api.fleet.store.rollouts_before(n + 1, q.cursor).await?;
    let next_cursor = if rows.len() as i64 > n {
        rows.truncate(n as usize);
        rows.last().map(|r| r.id())
    } else {
        None
    };
    Ok(axum::Json(RolloutList {
        rollouts: rows.into_iter().map(|r| r.summary).collect(),
        next_cursor,
    }))
}

/// One rollout: its plan, each stage's progress, the nodes it admitted and what happened.
#[utoipa::path(operation_id = "get_rollout", get, path = "/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "rollout id")),
    responses(
        (status = 200, description = "the rollout", body = RolloutDetail),
        (status = 400, description = "the id is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "no such rollout", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(id): Path<i64>,
) -> Result<axum::Json<RolloutDetail>, ApiError> {
    Ok(axum::Json(rollouts::detail(&api.fleet, id).await?))
}

async fn run(
    api: &Api,
    id: i64,
    c: Command,
    actor: String,
) -> Result<axum::Json<RolloutSummary>, ApiError> {
    Ok(axum::Json(
        rollouts::command(&api.fleet, id, c, &actor).await?,
    ))
}

/// Ends the current stage now (skipping the rest of its bake and gates) and starts the next; after the last stage, completes.
#[utoipa::path(operation_id = "promote_rollout", post, path = "/v1/rollouts/{id}/promote", tag = "rollouts",
    params(("id" = i64, Path, description = "rollout id")),
    responses(
        (status = 200, description = "promoted", body = RolloutSummary),
        (status = 400, description = "the id is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 404, description = "no such rollout", body = ErrorBody),
        (status = 409, description = "the rollout has ended, or changed meanwhile", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn promote(
    State(api): State<Api>,
    c: Caller<WRITE>,
    Path(id): Path<i64>,
) -> Result<axum::Json<RolloutSummary>, ApiError> {
    run(&api, id, Command::Promote, c.name).await
}

/// Stops a running rollout where it is: admitted nodes keep the new version, nothing advances or fails.
#[utoipa::path(operation_id = "pause_rollout", post, path = "/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = i64, Path, description = "rollout id")),
    responses(
        (status = 200, description = "paused", body = RolloutSummary),
        (status = 400, description = "the id is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 404, description = "no such rollout", body = ErrorBody),
        (status = 409, description = "the rollout is not running", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn pause(
    State(api): State<Api>,
    c: Caller<WRITE>,
    Path(id): Path<i64>,
) -> Result<axum::Json<RolloutSummary>, ApiError> {
    run(&api, id, Command::Pause, c.name).await
}

/// Resumes a paused rollout; the current stage's deadline and bake start again.
#[utoipa::path(operation_id = "resume_rollout", post, path = "/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = i64, Path, description = "rollout id")),
    responses(
        (status = 200, description = "resumed", body = RolloutSummary),
        (status = 400, description = "the id is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 404, description = "no such rollout", body = ErrorBody),
        (status = 409, description = "the rollout is not paused", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn resume(
    State(api): State<Api>,
    c: Caller<WRITE>,
    Path(id): Path<i64>,
) -> Result<axum::Json<RolloutSummary>, ApiError> {
    run(&api, id, Command::Resume, c.name).await
}

/// Ends a rollout without activating its version: admitted nodes return to the active version.
#[utoipa::path(operation_id = "abort_rollout", post, path = "/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = i64, Path, description = "rollout id")),
    responses(
        (status = 200, description = "aborted", body = RolloutSummary),
        (status = 400, description = "the id is not an integer", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `write` role", body = ErrorBody),
        (status = 404, description = "no such rollout", body = ErrorBody),
        (status = 409, description = "the rollout has ended already", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
pub async fn abort(
    State(api): State<Api>,
    c: Caller<WRITE>,
    Path(id): Path<i64>,
) -> Result<axum::Json<RolloutSummary>, ApiError> {
    run(&api, id, Command::Abort, c.name).await
}
