//! Apply and rollback: the two ways the active configuration changes.
//!
//! Apply = validate + compile with the shared config crate, then store and
//! activate in one transaction; identical content stores nothing. Rollback
//! re-activates an earlier version and is itself an activation, so it can be
//! undone by rolling back again. After either, this replica reloads its
//! active configuration at once (other replicas hear about it through
//! PostgreSQL NOTIFY or their poll).
//!
//! Compilation ([`compile`]) never runs on an async worker: a document is
//! CPU work of unknown size from an untrusted caller, so it runs on the
//! blocking pool, at most [`MAX_CONCURRENT_COMPILES`] at a time, and the
//! caller waits at most [`COMPILE_TIMEOUT`] (`--compile-timeout-secs`);
//! past that the API answers 503
//! and keeps serving (the compile finishes in the background and is dropped).

use std::sync::Arc;
use std::time::Duration;

use sentinel_config::{Diagnostics, Snapshot};
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::fleet::Fleet;
use crate::store::{ApplyOutcome, ChangeTrace, NewVersion, StoreError, TraceStep, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid configuration: {}", .0.summary())]
    Invalid(Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Compiling took longer than allowed (or waited too long for a turn).
    #[error("compiling the configuration took longer than {} s; nothing was changed", .0.as_secs())]
    CompileTimeout(Duration),
    /// The compiler itself failed (a bug, never the document's fault).
    #[error("the configuration compiler failed: {0}")]
    CompileFailed(String),
    /// The rollout plan of a staged apply is not valid.
    #[error("invalid rollout plan: {0}")]
    Plan(String),
}

/// Longest the API waits for one compilation (including its turn), unless
/// `--compile-timeout-secs` says otherwise.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(20);

/// The limit in force, in milliseconds (set once at start).
static COMPILE_LIMIT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(COMPILE_TIMEOUT.as_millis() as u64);

/// Sets the longest the API waits for one compilation.
pub fn set_compile_timeout(limit: Duration) {
    COMPILE_LIMIT_MS.store(
        (limit.as_millis() as u64).max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn compile_timeout() -> Duration {
    Duration::from_millis(COMPILE_LIMIT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Compilations running at once; the rest wait for a turn.
pub const MAX_CONCURRENT_COMPILES: usize = 2;

static COMPILES: Semaphore = Semaphore::const_new(MAX_CONCURRENT_COMPILES);

/// Compiles `source` off the async workers, bounded in time and concurrency.
pub async fn compile(file_name: &str, source: &str) -> Result<Snapshot, RolloutError> {
    let (file_name, source) = (file_name.to_string(), source.to_string());
    compile_with(compile_timeout(), move || {
        sentinel_config::compile(&file_name, &source)
    })
    .await
}

async fn compile_with(
    limit: Duration,
    f: impl FnOnce() -> Result<Snapshot, Diagnostics> + Send + 'static,
) -> Result<Snapshot, RolloutError> {
    let work = async {
        let permit = COMPILES
            .acquire()
            .await
            .map_err(|e| RolloutError::CompileFailed(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the work, even past a timeout.
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| RolloutError::CompileFailed(e.to_string()))
    };
    match tokio::time::timeout(limit, work).await {
        Err(_) => {
            tracing::warn!(
                limit_secs = limit.as_secs(),
                "configuration compile timed out"
            );
            Err(RolloutError::CompileTimeout(limit))
        }
        Ok(result) => result?.map_err(RolloutError::Invalid),
    }
}

pub struct ApplyRequest {
    pub source: String,
    pub file_name: String,
    /// The authenticated caller (the API token's name): recorded as the
    /// activation's and the audit entry's actor.
    pub actor: String,
    /// Free text stored with the version.
    pub author: String,
    pub message: String,
    pub expect_version: Option<i64>,
}

/// [`compile`] in a `config.compile` span (a child of the caller's), and
/// its times as a step of the change's trace.
pub async fn compile_traced(
    file_name: &str,
    source: &str,
) -> Result<(Snapshot, TraceStep), RolloutError> {
    let start = now_ms();
    let span = tracing::info_span!(
        "config.compile",
        sentinel.config.hash = tracing::field::Empty
    );
    let snapshot = compile(file_name, source).instrument(span.clone()).await;
    match &snapshot {
        Ok(s) => span.set_attribute("sentinel.config.hash", s.config_hash()),
        Err(e) => span.set_status(sentinel_telemetry::trace::Status::error(e.to_string())),
    }
    let step = TraceStep {
        name: "config.compile".into(),
        start_unix_ms: start,
        end_unix_ms: now_ms(),
    };
    Ok((snapshot?, step))
}

/// The span of an activation (apply, rollback, or a staged apply's
/// rollout): a child of the caller's span, and the parent of every proxy's
/// spans for the change, through the traceparent stored with it.
fn activation_span() -> tracing::Span {
    tracing::info_span!(
        "config.activate",
        sentinel.config.hash = tracing::field::Empty,
        sentinel.config.version = tracing::field::Empty
    )
}

/// What the store keeps of `span` and the steps so far.
pub fn change_trace(span: &tracing::Span, steps: Vec<TraceStep>) -> ChangeTrace {
    ChangeTrace {
        parent: crate::telemetry::traceparent_of(span),
        steps,
    }
}

pub async fn apply(fleet: &Arc<Fleet>, req: ApplyRequest) -> Result<ApplyOutcome, RolloutError> {
    let (snapshot, compiled) = compile_traced(&req.file_name, &req.source).await?;
    let resources = snapshot.resources();
    let hash = snapshot.config_hash();
    let activate = activation_span();
    activate.set_attribute("sentinel.config.hash", hash.clone());
    let trace = change_trace(&activate, vec![compiled]);
    let store = tracing::info_span!(parent: &activate, "config.store");
    let outcome = fleet
        .store
        .apply(NewVersion {
            hash,
            source: req.source,
            file_name: req.file_name,
            resources,
            actor: req.actor,
            author: req.author,
            message: req.message,
            expect_version: req.expect_version,
            trace,
        })
        .instrument(store)
        .await;
    if let Ok(ApplyOutcome::Created { version, .. } | ApplyOutcome::Unchanged { version }) =
        &outcome
    {
        activate.set_attribute("sentinel.config.version", *version);
    }
    let result = match &outcome {
        Ok(ApplyOutcome::Created { .. }) => "created",
        Ok(ApplyOutcome::Unchanged { .. }) => "unchanged",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("sentinel_cp_applies_total", "result" => result).increment(1);
    let outcome = outcome?;
    if let ApplyOutcome::Created { .. } = outcome {
        refresh(fleet).instrument(activate).await;
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
    // A rollback may have aborted the open rollout.
    if let Err(e) = fleet.load_rollout().await {
        tracing::warn!(error = %e, "cannot reload the open rollout after a change");
    }
}

/// [`rollback`] with optimistic concurrency: refused (409) unless
/// `expect` is the active version (`If-Match` on `POST /v1/rollback`).
pub async fn rollback_if_match(
    fleet: &Arc<Fleet>,
    to: Option<i64>,
    expect: Option<i64>,
    actor: &str,
    message: &str,
) -> Result<(i64, i64), RolloutError> {
    let activate = activation_span();
    let trace = change_trace(&activate, Vec::new());
    let store = tracing::info_span!(parent: &activate, "config.store");
    let result = fleet
        .store
        .rollback_traced(to, expect, actor, message, &trace)
        .instrument(store)
        .await;
    if let Ok((_, to)) = &result {
        activate.set_attribute("sentinel.config.version", *to);
        if let Some(hash) = fleet.store.version(*to).await.ok().map(|v| v.record.hash) {
            activate.set_attribute("sentinel.config.hash", hash);
        }
    }
    metrics::counter!("sentinel_cp_rollbacks_total", "result" => if result.is_ok() { "ok" } else { "error" })
        .increment(1);
    let pair = result?;
    refresh(fleet).instrument(activate).await;
    Ok(pair)
}

#[cfg(test)]
mod compile_tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_compile_times_out_and_frees_the_caller() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let slow = compile_with(Duration::from_millis(50), move || {
            // Blocks until the test lets it go: longer than the limit.
            let _ = rx.recv();
            sentinel_config::compile("x.kdl", "")
        });
        let result = slow.await;
        assert!(
            matches!(result, Err(RolloutError::CompileTimeout(_))),
            "{result:?}"
        );
        let _ = tx.send(());
        // The other permit still serves compiles meanwhile.
        let ok = compile("y.kdl", "a {").await;
        assert!(matches!(ok, Err(RolloutError::Invalid(_))), "{ok:?}");
    }
}
