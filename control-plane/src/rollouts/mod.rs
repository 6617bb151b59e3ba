//! Staged rollouts: a new version reaches the fleet stage by stage, behind
//! health gates, and is activated only when the last stage passed; a failed
//! gate sends the stage's nodes back to the previous version at once.
//!
//! (`rollout.rs` is the older, one-step path — apply and rollback; an apply
//! without stages still goes there.)
//!
//! - `plan` — stages and selectors (`*`, `N%`, `canary:N`, region, zone,
//!   node ids), the stable rank a percentage selects by, gate thresholds
//!   and their defaults;
//! - `gates` — the error-rate, latency and upstream-health gates over the
//!   samples proxies send on the health stream (pure);
//! - `machine` — the state machine: ACKs, NACKs, the progress deadline,
//!   bake, advance, complete, fail (pure, model-tested);
//! - `driver` — one replica (the advisory-lock holder on PostgreSQL) runs
//!   the machine against the store every 200 ms.
//!
//! Where the state lives: the store (`rollouts`, `rollout_nodes`,
//! `rollout_events`) — the driver keeps nothing between ticks, so a
//! restarted control plane or another replica continues from the row.
//! Every replica serves what the row says: `Fleet::load_rollout` (on
//! start, on a `sentinel_rollout` notification, on every poll, and after
//! each change made here) publishes the rollout's version and admitted
//! nodes, and each stream offers a node `Fleet::desired` — the new version
//! only if the rollout admitted it. A node is admitted only after the row
//! that admits it is committed, so no proxy ever runs a version its stage
//! does not allow.
//!
//! This module is also what the API calls: [`apply_staged`], [`promote`],
//! [`pause`], [`abort`] and [`detail`].

pub mod driver;
pub mod gates;
pub mod machine;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use sentinel_api::{
    GateTotals, RolloutDetail, RolloutLive, RolloutNode, RolloutPlan, RolloutStageStatus,
    RolloutSummary,
};

use crate::fleet::Fleet;
use crate::rollout::{ApplyRequest, RolloutError};
use crate::store::{ApplyOutcome, NewRollout, NewVersion, RolloutRow, StoreError};
use machine::{NodeView, Phase, Step};
use plan::Plan;

/// The plan of a stored rollout.
pub fn stored_plan(r: &RolloutRow) -> Result<Plan, String> {
    let api: RolloutPlan = serde_json::from_str(&r.plan_json).map_err(|e| e.to_string())?;
    Plan::from_api(&api).map_err(|e| e.0)
}

async fn node_views(fleet: &Fleet) -> Result<Vec<NodeView>, StoreError> {
    Ok(fleet
        .store
        .nodes()
        .await?
        .iter()
        .map(driver::node_view)
        .collect())
}

/// Apply with stages: compile, store the version without activating it,
/// open a rollout whose first stage admits the nodes it selects now.
pub async fn apply_staged(
    fleet: &Arc<Fleet>,
    req: ApplyRequest,
    api_plan: RolloutPlan,
) -> Result<(ApplyOutcome, Option<i64>), RolloutError> {
    let plan = Plan::from_api(&api_plan).map_err(|e| RolloutError::Plan(e.0))?;
    let (snapshot, compiled) = crate::rollout::compile_traced(&req.file_name, &req.source).await?;
    // The rollout's stages (and the activation that completes it) deliver
    // the version as part of this span's trace.
    let activate = tracing::info_span!("config.activate", sentinel.config.hash = %snapshot.config_hash(), sentinel.rollout = true);
    let trace = crate::rollout::change_trace(&activate, vec![compiled]);
    let nodes = node_views(fleet).await?;
    let admit = machine::admit(&plan, 0, &BTreeMap::new(), &nodes);
    let plan_json =
        serde_json::to_string(&api_plan).map_err(|e| RolloutError::CompileFailed(e.to_string()))?;
    let outcome = fleet
        .store
        .apply_staged(
            NewVersion {
                hash: snapshot.config_hash(),
                source: req.source,
                file_name: req.file_name,
                resources: snapshot.resources(),
                actor: req.actor,
                author: req.author,
                message: req.message,
                expect_version: req.expect_version,
                trace,
            },
            NewRollout {
                plan_json,
                stages: plan.stages.len() as i64,
                admit,
            },
        )
        .await;
    let result = match &outcome {
        Ok((ApplyOutcome::Created { .. }, _)) => "created",
        Ok((ApplyOutcome::Unchanged { .. }, _)) => "unchanged",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("sentinel_cp_applies_total", "result" => result).increment(1);
    let outcome = outcome?;
    if outcome.1.is_some() {
        metrics::counter!("sentinel_cp_rollouts_total", "result" => "started").increment(1);
        if let Err(e) = fleet.load_rollout().await {
            tracing::warn!(error = %e, "cannot load the new rollout; the poll will");
        }
    }
    Ok(outcome)
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Promote,
    Pause,
    Resume,
    Abort,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
        }
    }
}

/// Carries out `command` on rollout `id` for `actor`. A rollout not in a
/// state that allows it is a conflict saying which state it is in.
pub async fn command(
    fleet: &Arc<Fleet>,
    id: i64,
    command: Command,
    actor: &str,
) -> Result<RolloutSummary, StoreError> {
    let r = fleet.store.rollout(id).await?;
    let phase = Phase::parse(&r.summary.state).unwrap_or(Phase::Aborted);
    let refuse = || {
        StoreError::Conflict(format!(
            "rollout {id} is {}; it cannot {}",
            r.summary.state,
            command.as_str()
        ))
    };
    let moved = match command {
        Command::Pause if phase == Phase::Running => {
            fleet.store.rollout_pause(id, true, actor.into()).await?
        }
        Command::Resume if phase == Phase::Paused => {
            fleet.store.rollout_pause(id, false, actor.into()).await?
        }
        Command::Abort if phase.is_open() => {
            let moved = fleet
                .store
                .rollout_end(
                    id,
                    None,
                    false,
                    format!("aborted by {actor}; admitted nodes return to the active version"),
                    None,
                    None,
                    actor.into(),
                )
                .await?;
            if moved {
                metrics::counter!("sentinel_cp_rollouts_total", "result" => "aborted").increment(1);
            }
            moved
        }
        Command::Promote if phase.is_open() => {
            let plan = stored_plan(&r).map_err(StoreError::Other)?;
            let admitted = fleet.store.rollout_nodes(id).await?;
            let p = driver::progress(&r, &admitted);
            let nodes = node_views(fleet).await?;
            let why = format!(
                "promoted by {actor}: stage {} skipped the rest of its bake and gates",
                r.summary.stage + 1
            );
            match machine::next(&plan, &p, &nodes) {
                Step::Advance { admit, .. } => {
                    fleet
                        .store
                        .rollout_advance(id, r.summary.stage, admit, actor.into(), why)
                        .await?
                }
                _ => {
                    let moved = fleet
                        .store
                        .rollout_complete(id, r.summary.stage, actor.into(), why)
                        .await?;
                    if moved {
                        metrics::counter!("sentinel_cp_rollouts_total", "result" => "completed")
                            .increment(1);
                    }
                    moved
                }
            }
        }
        _ => return Err(refuse()),
    };
    if !moved {
        // The driver moved it between our read and our write.
        return Err(StoreError::Conflict(format!(
            "rollout {id} changed meanwhile; look at it again and retry"
        )));
    }
    fleet.load_rollout().await?;
    Ok(fleet.store.rollout(id).await?.summary)
}

/// A rollout with its stages, nodes and events.
pub async fn detail(fleet: &Fleet, id: i64) -> Result<RolloutDetail, StoreError> {
    let r = fleet.store.rollout(id).await?;
    let api: RolloutPlan = serde_json::from_str(&r.plan_json)
        .map_err(|e| StoreError::Other(format!("rollout {id}: unreadable plan: {e}")))?;
    let plan = Plan::from_api(&api).map_err(|e| StoreError::Other(e.0))?;
    let admitted = fleet.store.rollout_nodes(id).await?;
    let records = fleet.store.nodes().await?;
    let events = fleet.store.rollout_events(id).await?;
    let phase = Phase::parse(&r.summary.state).unwrap_or(Phase::Aborted);
    let to = r.summary.to_version;
    let mut nodes: Vec<RolloutNode> = admitted
        .iter()
        .map(|(id, stage)| {
            let rec = records.iter().find(|n| &n.id == id);
            let nacked = rec
                .and_then(|n| n.last_nack.as_ref())
                .is_some_and(|k| k.version == to);
            let acked = rec.and_then(|n| n.acked_version);
            let state = if nacked {
                "nacked"
            } else if matches!(phase, Phase::Failed | Phase::Aborted) {
                "returned"
            } else if acked == Some(to) {
                "acked"
            } else {
                "waiting"
            };
            RolloutNode {
                node: id.clone(),
                stage: *stage,
                region: rec.map(|n| n.region.clone()).unwrap_or_default(),
                zone: rec.map(|n| n.zone.clone()).unwrap_or_default(),
                state: state.into(),
                acked_version: acked,
            }
        })
        .collect();
    nodes.sort_by(|a, b| (a.stage, &a.node).cmp(&(b.stage, &b.node)));
    let current = r.summary.stage;
    let stages = plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let i = i as i64;
            let mine: Vec<&RolloutNode> = nodes.iter().filter(|n| n.stage == i).collect();
            let state = match (phase, i.cmp(&current)) {
                (Phase::Completed, _) => "passed",
                (_, std::cmp::Ordering::Less) => "passed",
                (_, std::cmp::Ordering::Greater) => "pending",
                (Phase::Failed, _) => "failed",
                (Phase::Aborted, _) => "aborted",
                (Phase::Paused, _) => "paused",
                (Phase::Running, _) if r.stage_acked_at.is_some() => "baking",
                (Phase::Running, _) => "rolling",
            };
            RolloutStageStatus {
                index: i,
                select: s.select.clone(),
                bake_ms: s.bake.as_millis() as u64,
                state: state.into(),
                nodes: mine.len() as i64,
                acked: mine
                    .iter()
                    .filter(|n| n.acked_version == Some(to) || phase == Phase::Completed)
                    .count() as i64,
            }
        })
        .collect();
    let live = phase.is_open().then(|| {
        let samples = driver::stage_samples(fleet, &r);
        let admitted: std::collections::HashSet<String> = admitted.keys().cloned().collect();
        let (traffic, health) = gates::observed(&gates::Window {
            samples: &samples,
            admitted: &admitted,
            from_version: r.summary.from_version.unwrap_or(0),
            to_version: to,
            since_unix_ms: r.stage_started_at,
        });
        let totals = |i: usize| GateTotals {
            requests: traffic[i].requests,
            errors_5xx: traffic[i].errors_5xx,
            p99_ms: traffic[i].p99_ms,
            targets: health[i].targets,
            unhealthy: health[i].unhealthy,
        };
        RolloutLive {
            stage: totals(0),
            rest: totals(1),
            baseline: totals(2),
            gates: plan.gates.to_api(),
        }
    });
    Ok(RolloutDetail {
        rollout: r.summary,
        plan: api,
        stages,
        nodes,
        events,
        live,
    })
}
