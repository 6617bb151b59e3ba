//! Rollouts: a version on its way to the fleet stage by stage
//! (`rollouts`), the nodes each stage admitted (`rollout_nodes`) and what
//! happened (`rollout_events`).
//!
//! Every change is one transaction that checks the state it starts from
//! (compare-and-set on state and stage), so the driver, an operator's
//! promote/pause/abort and another replica's driver cannot both move a
//! rollout: the loser changes nothing and reads again. At most one rollout
//! is open (running or paused): a partial unique index says so, and apply
//! (serialised like every activation) refuses a second one with a
//! conflict naming the first. Every change writes an event and an audit
//! entry and, on PostgreSQL, notifies `sentinel_rollout`; completing also
//! inserts the activation of the new version in the same transaction.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{ApplyOutcome, Dialect, NewVersion, Result, Store, StoreError, now_ms};
use sentinel_api::{RolloutEvent, RolloutSummary};

/// A rollout row with its plan (as stored JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub summary: RolloutSummary,
    pub plan_json: String,
    pub stage_started_at: i64,
    pub stage_acked_at: Option<i64>,
}

impl RolloutRow {
    pub fn id(&self) -> i64 {
        self.summary.id
    }

    /// What a refused apply says: which rollout holds the fleet.
    pub fn busy(&self) -> String {
        let r = &self.summary;
        format!(
            "rollout {} is {} (version {}, stage {} of {}): wait for it to finish, or `sentinelctl rollout abort {}`",
            r.id,
            r.state,
            r.to_version,
            r.stage + 1,
            r.stages,
            r.id
        )
    }
}

/// What a staged apply stores besides the version.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// The plan as JSON (`sentinel_api::RolloutPlan`).
    pub plan_json: String,
    pub stages: i64,
    /// The nodes the first stage admits.
    pub admit: Vec<String>,
}

/// The columns of a [`RolloutRow`], as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, state, from_version, to_version, plan, stage, stage_started_at, \
         stage_acked_at, actor, message, reason, failed_gate, failed_node, created_at, updated_at"
    };
}

fn row(r: &AnyRow) -> Result<RolloutRow> {
    let plan_json: String = r.try_get("plan")?;
    let stages = serde_json::from_str::<serde_json::Value>(&plan_json)
        .ok()
        .and_then(|v| v["stages"].as_array().map(|a| a.len() as i64))
        .unwrap_or(0);
    Ok(RolloutRow {
        summary: RolloutSummary {
            id: r.try_get("id")?,
            state: r.try_get("state")?,
            from_version: r.try_get("from_version")?,
            to_version: r.try_get("to_version")?,
            stage: r.try_get("stage")?,
            stages,
            actor: r.try_get("actor")?,
            message: r.try_get("message")?,
            reason: r.try_get("reason")?,
            failed_gate: r.try_get("failed_gate")?,
            failed_node: r.try_get("failed_node")?,
            created_at_unix_ms: r.try_get("created_at")?,
            updated_at_unix_ms: r.try_get("updated_at")?,
        },
        plan_json,
        stage_started_at: r.try_get("stage_started_at")?,
        stage_acked_at: r.try_get("stage_acked_at")?,
    })
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

impl Store {
    pub(super) async fn open_rollout_in(tx: &mut Tx<'_>) -> Result<Option<RolloutRow>> {
        let q = concat!(
            "SELECT ",
            columns!(),
            " FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id DESC LIMIT 1"
        );
        let r = sqlx::query(q).fetch_optional(&mut **tx).await?;
        r.as_ref().map(row).transpose()
    }

    async fn event_in(
        tx: &mut Tx<'_>,
        id: i64,
        stage: Option<i64>,
        kind: &str,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_events (rollout_id, at, stage, kind, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(now_ms())
        .bind(stage)
        .bind(kind)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn notify_rollout(&self, tx: &mut Tx<'_>, id: i64) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify('sentinel_rollout', $1)")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn admit_in(tx: &mut Tx<'_>, id: i64, stage: i64, nodes: &[String]) -> Result<()> {
        let now = now_ms();
        for n in nodes {
            sqlx::query(
                "INSERT INTO rollout_nodes (rollout_id, node_id, stage, admitted_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (rollout_id, node_id) DO NOTHING",
            )
            .bind(id)
            .bind(n)
            .bind(stage)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Stores `new` without activating it and opens a rollout of it whose
    /// first stage admits `rollout.admit`. Content equal to the active
    /// version stores nothing (`Unchanged`, no rollout); an open rollout
    /// is a conflict naming it.
    pub async fn apply_staged(
        &self,
        new: NewVersion,
        rollout: NewRollout,
    ) -> Result<(ApplyOutcome, Option<i64>)> {
        let _serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let result = self.apply_staged_in(&mut tx, new, rollout).await;
        Self::finish(tx, result, |(o, _)| {
            matches!(o, ApplyOutcome::Created { .. })
        })
        .await
    }

    async fn apply_staged_in(
        &self,
        tx: &mut Tx<'_>,
        new: NewVersion,
        rollout: NewRollout,
    ) -> Result<(ApplyOutcome, Option<i64>)> {
        self.lock_writers(tx).await?;
        let active = self.active_in(tx).await?;
        let active_number = active.as_ref().map(|a| a.number);
        if let Some(expected) = new.expect_version
            && active_number != Some(expected)
        {
            return Err(StoreError::Conflict(format!(
                "the active version is {}, not {expected}; fetch it and retry",
                active_number.map_or("none".to_string(), |n| n.to_string())
            )));
        }
        if let Some(a) = &active
            && a.hash == new.hash
        {
            return Ok((ApplyOutcome::Unchanged { version: a.number }, None));
        }
        if let Some(open) = Self::open_rollout_in(tx).await? {
            return Err(StoreError::Conflict(open.busy()));
        }
        let number = Self::insert_version_in(tx, &new).await?;
        let now = now_ms();
        let mut trace = new.trace.clone();
        trace.steps.push(super::TraceStep {
            name: "config.store".into(),
            start_unix_ms: now,
            end_unix_ms: now,
        });
        let q = "INSERT INTO rollouts (state, from_version, to_version, plan, stage, stage_started_at, \
                 actor, message, created_at, updated_at, trace_parent, trace_steps) \
                 VALUES ('running', $1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10) RETURNING id";
        let id: i64 = sqlx::query(q)
            .bind(active_number)
            .bind(number)
            .bind(&rollout.plan_json)
            .bind(now)
            .bind(&new.actor)
            .bind(&new.message)
            .bind(now)
            .bind(now)
            .bind(trace.parent.as_deref())
            .bind(trace.steps_json())
            .fetch_one(&mut **tx)
            .await?
            .try_get("id")?;
        Self::admit_in(tx, id, 0, &rollout.admit).await?;
        Self::event_in(
            tx,
            id,
            None,
            "created",
            &format!(
                "version {number} from {} in {} stages, by {}",
                active_number.map_or("nothing".into(), |n| n.to_string()),
                rollout.stages,
                new.actor
            ),
        )
        .await?;
        Self::event_in(
            tx,
            id,
            Some(0),
            "stage-started",
            &format!(
                "stage 1 admits {} node(s): {}",
                rollout.admit.len(),
                rollout.admit.join(", ")
            ),
        )
        .await?;
        Self::audit(
            tx,
            &new.actor,
            "rollout",
            &format!("rollout {id}: version {number} ({})", new.hash),
        )
        .await?;
        self.notify_rollout(tx, id).await?;
        Ok((
            ApplyOutcome::Created {
                version: number,
                previous: active_number,
            },
            Some(id),
        ))
    }

    /// The traceparent stored with rollout `id` (that of the apply that
    /// started it): what its stages deliver.
    pub async fn rollout_trace(&self, id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT trace_parent FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<String>, _>("trace_parent")?
                .filter(|p| !p.is_empty()),
            None => None,
        })
    }

    /// The open (running or paused) rollout, if any.
    pub async fn open_rollout(&self) -> Result<Option<RolloutRow>> {
        let q = concat!(
            "SELECT ",
            columns!(),
            " FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id DESC LIMIT 1"
        );
        let r = sqlx::query(q).fetch_optional(&self.pool).await?;
        r.as_ref().map(row).transpose()
    }

    pub async fn rollout(&self, id: i64) -> Result<RolloutRow> {
        let q = concat!("SELECT ", columns!(), " FROM rollouts WHERE id = $1");
        let r = sqlx::query(q)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("rollout {id} does not exist")))?;
        row(&r)
    }

    /// Newest first, only ids below `before`.
    pub async fn rollouts_before(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<RolloutRow>> {
        let q = concat!(
            "SELECT ",
            columns!(),
            " FROM rollouts WHERE id < $1 ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(q)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// Admitted node → the stage that admitted it.
    pub async fn rollout_nodes(&self, id: i64) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT node_id, stage FROM rollout_nodes WHERE rollout_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("node_id")?, r.try_get("stage")?)))
            .collect()
    }

    /// Oldest first.
    pub async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEvent>> {
        let rows = sqlx::query(
            "SELECT at, stage, kind, detail FROM rollout_events WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutEvent {
                    at_unix_ms: r.try_get("at")?,
                    stage: r.try_get("stage")?,
                    kind: r.try_get("kind")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Runs `change` in a transaction that first checks that rollout `id`
    /// is in one of `states` at `stage` (when given). `Ok(false)`: it was
    /// not (someone else moved it); nothing changed.
    async fn rollout_cas<F>(
        &self,
        id: i64,
        states: &[&str],
        stage: Option<i64>,
        change: F,
    ) -> Result<bool>
    where
        F: for<'t> FnOnce(
            &'t mut Tx<'static>,
            RolloutRow,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<()>> + Send + 't>,
        >,
    {
        let _serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let result: Result<bool> = async {
            self.lock_writers(&mut tx).await?;
            let q = concat!("SELECT ", columns!(), " FROM rollouts WHERE id = $1");
            let Some(current) = sqlx::query(q).bind(id).fetch_optional(&mut *tx).await? else {
                return Err(StoreError::NotFound(format!("rollout {id} does not exist")));
            };
            let current = row(&current)?;
            if !states.contains(&current.summary.state.as_str())
                || stage.is_some_and(|s| s != current.summary.stage)
            {
                return Ok(false);
            }
            change(&mut tx, current).await?;
            sqlx::query("UPDATE rollouts SET updated_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            self.notify_rollout(&mut tx, id).await?;
            Ok(true)
        }
        .await;
        Self::finish(tx, result, |changed| *changed).await
    }

    /// Every connected admitted node ACKed stage `stage`: its bake starts.
    pub async fn rollout_acked(&self, id: i64, stage: i64, detail: String) -> Result<bool> {
        self.rollout_cas(id, &["running"], Some(stage), move |tx, _| {
            Box::pin(async move {
                sqlx::query("UPDATE rollouts SET stage_acked_at = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Self::event_in(tx, id, Some(stage), "stage-acked", &detail).await
            })
        })
        .await
    }

    /// Stage `from_stage` passed (or was promoted by `actor`): stage
    /// `from_stage + 1` starts and admits `admit`.
    pub async fn rollout_advance(
        &self,
        id: i64,
        from_stage: i64,
        admit: Vec<String>,
        actor: String,
        why: String,
    ) -> Result<bool> {
        self.rollout_cas(id, &["running", "paused"], Some(from_stage), move |tx, _| {
            Box::pin(async move {
                let stage = from_stage + 1;
                sqlx::query(
                    "UPDATE rollouts SET stage = $1, stage_started_at = $2, stage_acked_at = NULL WHERE id = $3",
                )
                .bind(stage)
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?;
                Self::admit_in(tx, id, stage, &admit).await?;
                Self::event_in(tx, id, Some(from_stage), "stage-passed", &why).await?;
                Self::event_in(
                    tx,
                    id,
                    Some(stage),
                    "stage-started",
                    &format!(
                        "stage {} admits {} node(s): {}",
                        stage + 1,
                        admit.len(),
                        admit.join(", ")
                    ),
                )
                .await?;
                Self::audit(
                    tx,
                    &actor,
                    "rollout-stage",
                    &format!("rollout {id}: stage {} started", stage + 1),
                )
                .await
            })
        })
        .await
    }

    /// The last stage passed: the rollout completes and its version is
    /// activated for the whole fleet, in one transaction.
    pub async fn rollout_complete(
        &self,
        id: i64,
        stage: i64,
        actor: String,
        why: String,
    ) -> Result<bool> {
        let dialect = self.dialect;
        self.rollout_cas(id, &["running", "paused"], Some(stage), move |tx, r| {
            Box::pin(async move {
                let to = r.summary.to_version;
                sqlx::query("UPDATE rollouts SET state = 'completed' WHERE id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                // The version active now (an operator may have rolled back
                // meanwhile; the rollout then aborted and we never get here).
                let last: Option<i64> = sqlx::query(
                    "SELECT to_version FROM activations ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.try_get("to_version"))
                .transpose()?;
                // The activation belongs to the trace of the apply that
                // started the rollout.
                sqlx::query(
                    "INSERT INTO activations (kind, from_version, to_version, actor, message, at, trace_parent, trace_steps) \
                     SELECT $1, $2, $3, $4, $5, $6, trace_parent, trace_steps FROM rollouts WHERE id = $7",
                )
                .bind("apply")
                .bind(last)
                .bind(to)
                .bind(&actor)
                .bind(format!("rollout {id} completed: {}", r.summary.message))
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?;
                Self::event_in(tx, id, Some(stage), "stage-passed", &why).await?;
                Self::event_in(
                    tx,
                    id,
                    Some(stage),
                    "completed",
                    &format!("version {to} is active for the whole fleet"),
                )
                .await?;
                Self::audit(
                    tx,
                    &actor,
                    "rollout-completed",
                    &format!("rollout {id}: version {to} activated"),
                )
                .await?;
                if dialect == Dialect::Postgres {
                    sqlx::query("SELECT pg_notify('sentinel_activation', $1)")
                        .bind(to.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Ends an open rollout as `failed` (a gate: `gate`, `node`) or
    /// `aborted`; its admitted nodes return to the active version.
    #[allow(clippy::too_many_arguments)]
    pub async fn rollout_end(
        &self,
        id: i64,
        stage: Option<i64>,
        failed: bool,
        reason: String,
        gate: Option<String>,
        node: Option<String>,
        actor: String,
    ) -> Result<bool> {
        self.rollout_cas(id, &["running", "paused"], stage, move |tx, r| {
            Box::pin(async move {
                Self::end_in(
                    tx,
                    &r,
                    failed,
                    &reason,
                    gate.as_deref(),
                    node.as_deref(),
                    &actor,
                )
                .await
            })
        })
        .await
    }

    async fn end_in(
        tx: &mut Tx<'_>,
        r: &RolloutRow,
        failed: bool,
        reason: &str,
        gate: Option<&str>,
        node: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let id = r.id();
        let state = if failed { "failed" } else { "aborted" };
        sqlx::query(
            "UPDATE rollouts SET state = $1, reason = $2, failed_gate = $3, failed_node = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(reason)
        .bind(gate)
        .bind(node)
        .bind(now_ms())
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Self::event_in(tx, id, Some(r.summary.stage), state, reason).await?;
        Self::audit(
            tx,
            actor,
            &format!("rollout-{state}"),
            &format!("rollout {id}: {reason}"),
        )
        .await
    }

    /// Aborts the open rollout inside a rollback's transaction; returns it.
    pub(super) async fn abort_open_in(
        &self,
        tx: &mut Tx<'_>,
        actor: &str,
    ) -> Result<Option<RolloutRow>> {
        let Some(open) = Self::open_rollout_in(tx).await? else {
            return Ok(None);
        };
        Self::end_in(
            tx,
            &open,
            false,
            &format!("aborted by a manual rollback ({actor})"),
            None,
            None,
            actor,
        )
        .await?;
        self.notify_rollout(tx, open.id()).await?;
        Ok(Some(open))
    }

    /// Pauses a running rollout (`pause = true`) or resumes a paused one;
    /// resuming restarts the current stage's clocks (deadline and bake).
    pub async fn rollout_pause(&self, id: i64, pause: bool, actor: String) -> Result<bool> {
        let from = if pause { "running" } else { "paused" };
        self.rollout_cas(id, &[from], None, move |tx, r| {
            Box::pin(async move {
                let to = if pause { "paused" } else { "running" };
                sqlx::query(
                    "UPDATE rollouts SET state = $1, stage_started_at = $2, stage_acked_at = NULL WHERE id = $3",
                )
                .bind(to)
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?;
                let kind = if pause { "paused" } else { "resumed" };
                Self::event_in(tx, id, Some(r.summary.stage), kind, &format!("{kind} by {actor}"))
                    .await?;
                Self::audit(tx, &actor, &format!("rollout-{kind}"), &format!("rollout {id}"))
                    .await
            })
        })
        .await
    }

    /// Records a gate decision or another note on a rollout.
    pub async fn rollout_note(&self, id: i64, stage: i64, kind: &str, detail: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::event_in(&mut tx, id, Some(stage), kind, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
