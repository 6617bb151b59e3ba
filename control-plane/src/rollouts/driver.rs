//! The rollout driver: one per fleet, moving the open rollout along.
//!
//! Which replica drives is decided like discovery's leader
//! (`crate::leader`): SQLite — this process, always; PostgreSQL — the
//! replica holding the session advisory lock [`DRIVER_LOCK`] (tried every
//! second; when the holder dies PostgreSQL releases it and another replica
//! takes over). The driver keeps no state of its own between ticks: every
//! [`TICK`] it reads the open rollout, its admitted nodes and the fleet's
//! nodes from the store, asks the gates and the state machine
//! (`machine::step`) what happens next and writes that as one
//! compare-and-set transaction. So a restarted or new driver continues
//! exactly where the store says the rollout is. The only in-memory input
//! is the traffic samples of the proxies connected to this replica (a
//! fresh driver's baseline starts empty; the rest of the fleet is then
//! the only reference).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::gates::{self, Window};
use super::machine::{self, NodeView, Phase, Progress, Step};
use super::plan::Plan;
use crate::fleet::Fleet;
use crate::store::{NodeRecord, RolloutRow, StoreError, now_ms};

/// The advisory lock of rollout driving (7310 serialises applies, 7312
/// leads discovery).
pub const DRIVER_LOCK: i64 = 7313;

/// How often the open rollout is evaluated.
pub const TICK: Duration = Duration::from_millis(200);

/// How far before a stage's start its baseline reaches.
pub const BASELINE: Duration = Duration::from_secs(60);

/// Who acts in the audit trail when the driver moves a rollout.
pub const ACTOR: &str = "rollout-driver";

pub fn spawn(fleet: Arc<Fleet>) {
    let driving = Arc::clone(&fleet);
    crate::leader::spawn(fleet, DRIVER_LOCK, "rollouts", move |lost| {
        let fleet = Arc::clone(&driving);
        Box::pin(async move { drive_until(&fleet, lost).await })
    });
}

async fn drive_until(fleet: &Fleet, lost: impl Future<Output = ()>) {
    tracing::info!(replica = %fleet.replica, "driving rollouts");
    metrics::gauge!("sentinel_cp_rollout_leader").set(1.0);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(lost);
    loop {
        tokio::select! {
            _ = &mut lost => break,
            _ = tick.tick() => {
                if let Err(e) = drive_once(fleet).await {
                    tracing::debug!(error = %e, "rollout driver tick failed");
                }
            }
        }
    }
    metrics::gauge!("sentinel_cp_rollout_leader").set(0.0);
    tracing::warn!(replica = %fleet.replica, "no longer driving rollouts");
}

/// The health samples the gates of `r`'s current stage judge: the stage's
/// window, and up to [`BASELINE`] before it.
pub fn stage_samples(fleet: &Fleet, r: &RolloutRow) -> BTreeMap<String, Vec<gates::Sample>> {
    fleet.samples_since(r.stage_started_at - BASELINE.as_millis() as i64)
}

/// A node as the state machine sees it.
pub fn node_view(n: &NodeRecord) -> NodeView {
    NodeView {
        id: n.id.clone(),
        region: n.region.clone(),
        zone: n.zone.clone(),
        labels: n.labels.clone(),
        connected: n.connected,
        acked_version: n.acked_version,
        nack: n
            .last_nack
            .as_ref()
            .map(|k| (k.version, format!("{}: {}", k.resource, k.error))),
    }
}

/// A stored rollout as the state machine sees it.
pub fn progress(r: &RolloutRow, admitted: &BTreeMap<String, i64>) -> Progress {
    Progress {
        phase: Phase::parse(&r.summary.state).unwrap_or(Phase::Aborted),
        stage: usize::try_from(r.summary.stage).unwrap_or(0),
        stage_started_ms: r.stage_started_at,
        stage_acked_ms: r.stage_acked_at,
        admitted: admitted
            .iter()
            .map(|(k, v)| (k.clone(), usize::try_from(*v).unwrap_or(0)))
            .collect(),
    }
}

/// One evaluation of the open rollout; returns whether it moved.
pub async fn drive_once(fleet: &Fleet) -> Result<bool, StoreError> {
    let Some(r) = fleet.store.open_rollout().await? else {
        if fleet.rollout_view().id != 0 {
            fleet.load_rollout().await?;
        }
        return Ok(false);
    };
    let id = r.id();
    let stage = r.summary.stage;
    let plan = match super::stored_plan(&r) {
        Ok(p) => p,
        Err(e) => {
            let moved = fleet
                .store
                .rollout_end(
                    id,
                    Some(stage),
                    true,
                    format!("the stored plan is unreadable: {e}"),
                    None,
                    None,
                    ACTOR.into(),
                )
                .await?;
            fleet.load_rollout().await?;
            return Ok(moved);
        }
    };
    if fleet.rollout_view().id != id {
        // Another replica opened it (or this one restarted): serve it first.
        fleet.load_rollout().await?;
    }
    let admitted = fleet.store.rollout_nodes(id).await?;
    let nodes: Vec<NodeView> = fleet.store.nodes().await?.iter().map(node_view).collect();
    let p = progress(&r, &admitted);
    let admitted_set: HashSet<String> = admitted.keys().cloned().collect();
    // The stage's window, and up to a minute before it for the baseline.
    let samples = stage_samples(fleet, &r);
    let to = r.summary.to_version;
    let gate = gates::evaluate(
        &plan.gates,
        &Window {
            samples: &samples,
            admitted: &admitted_set,
            from_version: r.summary.from_version.unwrap_or(0),
            to_version: to,
            since_unix_ms: r.stage_started_at,
        },
    );
    let now = now_ms();
    let step = machine::step(&plan, to, &p, &nodes, gate, now);
    let moved = apply_step(fleet, &r, &plan, &p, step, now).await?;
    if moved {
        fleet.load_rollout().await?;
    }
    Ok(moved)
}

/// A stage passed: every gate decided "pass" for it.
fn record_passes() {
    for gate in [
        "ack",
        "error-rate",
        "latency",
        "upstream-health",
        "progress-deadline",
    ] {
        metrics::counter!("sentinel_cp_rollout_gate_decisions_total", "gate" => gate, "result" => "pass")
            .increment(1);
    }
}

async fn apply_step(
    fleet: &Fleet,
    r: &RolloutRow,
    plan: &Plan,
    p: &Progress,
    step: Step,
    now: i64,
) -> Result<bool, StoreError> {
    let id = r.id();
    let stage = r.summary.stage;
    let store = &fleet.store;
    let stage_secs = (now - r.stage_started_at).max(0) as f64 / 1000.0;
    match step {
        Step::Wait => Ok(false),
        Step::Acked => {
            let n = p.admitted.len();
            store
                .rollout_acked(
                    id,
                    stage,
                    format!(
                        "{n} admitted node(s) run version {} ({} ms after the stage started); baking {} ms",
                        r.summary.to_version,
                        now - r.stage_started_at,
                        plan.stages[p.stage.min(plan.stages.len() - 1)].bake.as_millis()
                    ),
                )
                .await
        }
        Step::Advance { stage: next, admit } => {
            record_passes();
            metrics::histogram!("sentinel_cp_rollout_stage_seconds").record(stage_secs);
            let why = format!(
                "stage {} passed after {stage_secs:.1} s: every gate held",
                stage + 1
            );
            tracing::info!(
                rollout = id,
                stage = next + 1,
                admit = admit.len(),
                "rollout stage started"
            );
            store
                .rollout_advance(id, stage, admit, ACTOR.into(), why)
                .await
        }
        Step::Complete => {
            record_passes();
            metrics::histogram!("sentinel_cp_rollout_stage_seconds").record(stage_secs);
            let moved = store
                .rollout_complete(
                    id,
                    stage,
                    ACTOR.into(),
                    format!(
                        "stage {} passed after {stage_secs:.1} s: every gate held",
                        stage + 1
                    ),
                )
                .await?;
            if moved {
                metrics::counter!("sentinel_cp_rollouts_total", "result" => "completed")
                    .increment(1);
                tracing::info!(
                    rollout = id,
                    version = r.summary.to_version,
                    "rollout completed"
                );
            }
            Ok(moved)
        }
        Step::Fail(f) => {
            metrics::counter!("sentinel_cp_rollout_gate_decisions_total", "gate" => f.gate, "result" => "fail")
                .increment(1);
            metrics::histogram!("sentinel_cp_rollout_stage_seconds").record(stage_secs);
            let reason = format!(
                "stage {} failed the {} gate{}: {}; its nodes return to version {}",
                stage + 1,
                f.gate,
                f.node
                    .as_ref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default(),
                f.detail,
                r.summary
                    .from_version
                    .map_or("(none)".to_string(), |v| v.to_string())
            );
            let moved = store
                .rollout_end(
                    id,
                    Some(stage),
                    true,
                    reason.clone(),
                    Some(f.gate.to_string()),
                    f.node.clone(),
                    ACTOR.into(),
                )
                .await?;
            if moved {
                metrics::counter!("sentinel_cp_rollouts_total", "result" => "failed").increment(1);
                tracing::warn!(rollout = id, gate = f.gate, node = ?f.node, %reason, "rollout failed; rolling its nodes back");
            }
            Ok(moved)
        }
    }
}
