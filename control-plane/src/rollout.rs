//! Apply and rollback: the two ways the active configuration changes.
//!
//! Apply = validate + compile with the shared config crate, then store and
//! activate in one transaction; identical content stores nothing. Rollback
//! re-activates an earlier version and is itself an activation, so it can be
//! undone by rolling back again. After either, this replica reloads its
//! active configuration at once (other replicas hear about it through
//! PostgreSQL NOTIFY or their poll).

use std::sync::Arc;

use sentinel_config::Diagnostics;

use crate::fleet::Fleet;
use crate::store::{ApplyOutcome, NewVersion, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid configuration: {}", .0.summary())]
    Invalid(Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ApplyRequest {
    pub source: String,
    pub file_name: String,
    pub author: String,
    pub message: String,
    pub expect_version: Option<i64>,
}

pub async fn apply(fleet: &Arc<Fleet>, req: ApplyRequest) -> Result<ApplyOutcome, RolloutError> {
    let snapshot =
        sentinel_config::compile(&req.file_name, &req.source).map_err(RolloutError::Invalid)?;
    let resources = snapshot.resources();
    let hash = snapshot.config_hash();
    let outcome = fleet
        .store
        .apply(NewVersion {
            hash,
            source: req.source,
            file_name: req.file_name,
            resources,
            author: req.author,
            message: req.message,
            expect_version: req.expect_version,
        })
        .await;
    let result = match &outcome {
        Ok(ApplyOutcome::Created { .. }) => "created",
        Ok(ApplyOutcome::Unchanged { .. }) => "unchanged",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("sentinel_cp_applies_total", "result" => result).increment(1);
    let outcome = outcome?;
    if let ApplyOutcome::Created { .. } = outcome {
        refresh(fleet).await;
    }
    Ok(outcome)
}

pub async fn rollback(
    fleet: &Arc<Fleet>,
    to: Option<i64>,
    actor: &str,
    message: &str,
) -> Result<(i64, i64), RolloutError> {
    let result = fleet.store.rollback(to, actor, message).await;
    metrics::counter!("sentinel_cp_rollbacks_total", "result" => if result.is_ok() { "ok" } else { "error" })
        .increment(1);
    let pair = result?;
    refresh(fleet).await;
    Ok(pair)
}

async fn refresh(fleet: &Arc<Fleet>) {
    if let Err(e) = fleet.refresh().await {
        // Stored and committed; the poll will pick it up.
        tracing::warn!(error = %e, "cannot reload the active configuration after a change");
    }
}
