//! What the store knows about each node (proxy), and the rules that keep it
//! true across reconnects, replicas and crashes.
//!
//! Data enters as [`NodeChange`]s — the merged, sanitised state of one
//! node's newest session, built by the background writer
//! ([`super::writer`]) from the stream's `NodeUpdate`s — and leaves as
//! [`NodeRecord`]s and [`NodeEvent`]s for the API. The rules:
//!
//! - **Sessions.** Every row carries the `session_epoch` of the session that
//!   owns it. A hello writes (insert or update) only when its epoch is newer
//!   than the stored one; a disconnect, ACK or NACK changes the row only
//!   where `id` *and* `session_epoch` match. So a stream that ends after its
//!   node reconnected — to this replica or another — changes nothing.
//! - **Replica liveness.** Each replica writes a heartbeat to `replicas`
//!   every ~2 s and, with it, `last_seen` of the nodes it holds (at most
//!   once a minute per node). A node is
//!   reported connected only if its row says so *and* its replica's
//!   heartbeat is younger than [`REPLICA_TIMEOUT`]: the nodes of a
//!   SIGKILLed replica read as disconnected within seconds.
//! - **NACKs.** A NACK is current until the node ACKs that or a later
//!   version; the ACK clears it. Every NACK is also appended to
//!   `node_events`, of which the newest [`EVENTS_KEPT`] per node are kept.
//! - **Expiry.** A node that is not connected and was not seen within the
//!   caller's expiry window is `expired`: still listed, never counted.
//!
//! This module does not decide *when* to write (the writer batches,
//! coalesces and retries) and never sees the stream itself.

use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, now_ms};
use crate::changes::{Epoch, Push};
pub use sentinel_api::{Nack, NodeEvent, NodeRecord};

/// A replica whose heartbeat is older than this is taken for dead, and so
/// are the sessions its rows claim.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// How stale `last_seen` of a node held by a live replica may get.
pub const LAST_SEEN_REFRESH: Duration = Duration::from_secs(60);

/// NACK events kept per node.
pub const EVENTS_KEPT: i64 = 100;

/// Version changes (`node_acks`, the console's convergence charts) kept
/// per node.
pub const ACKS_KEPT: i64 = 100;

/// Answered pushes (`node_pushes`, the config-change timeline) kept per node.
pub const PUSHES_KEPT: i64 = 100;

/// One row of a version's per-node timeline (`node_pushes`).
#[derive(Debug, Clone, PartialEq)]
pub struct PushRow {
    pub node: String,
    pub epoch: i64,
    pub push: Push,
}

/// The hello part of a session: what the node says it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub region: String,
    pub zone: String,
    pub build_version: String,
    /// `key=value` lines, sorted by key.
    pub labels: String,
}

/// The pending change of one node: the merged state of its newest session
/// (hello, latest ACK, current NACK, end) plus the NACK events not written
/// yet. Written with the session rules of this module.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeChange {
    pub id: String,
    pub epoch: Epoch,
    /// Set when the session's hello is not written yet.
    pub hello: Option<Hello>,
    /// The latest ACK: (version, hash).
    pub ack: Option<(i64, String)>,
    /// The highest version ACKed: a stored NACK of that or an older version
    /// is cleared (before `nack` is written).
    pub clears_nacks_upto: Option<i64>,
    /// A NACK still current after every ACK merged here.
    pub nack: Option<Nack>,
    pub disconnected: bool,
    /// When the node was last heard from in this session.
    pub seen_at_unix_ms: i64,
    pub events: Vec<NodeEvent>,
    /// Answered pushes not written yet (the per-node timeline), each with
    /// the epoch of the session that pushed it: written only while that
    /// session owns the row.
    pub pushes: Vec<(Epoch, Push)>,
}

/// Text from the network, made storable: control characters (NUL, which
/// PostgreSQL refuses in TEXT, among them) removed and the length capped
/// at `max_chars`.
pub fn sanitise(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

fn node_record(row: &AnyRow, now: i64, expiry: Duration) -> Result<NodeRecord> {
    let nack_version: Option<i64> = row.try_get("nack_version")?;
    let last_nack = match nack_version {
        Some(version) => Some(Nack {
            version,
            resource: row
                .try_get::<Option<String>, _>("nack_resource")?
                .unwrap_or_default(),
            error: row
                .try_get::<Option<String>, _>("nack_error")?
                .unwrap_or_default(),
            at_unix_ms: row
                .try_get::<Option<i64>, _>("nack_at")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    let heartbeat: Option<i64> = row.try_get("heartbeat")?;
    let replica_alive = heartbeat.is_some_and(|h| now - h <= REPLICA_TIMEOUT.as_millis() as i64);
    let connected = row.try_get::<i64, _>("connected")? != 0 && replica_alive;
    let last_seen: i64 = row.try_get("last_seen")?;
    Ok(NodeRecord {
        id: row.try_get("id")?,
        region: row.try_get("region")?,
        zone: row.try_get("zone")?,
        labels: row
            .try_get::<Option<String>, _>("labels")?
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        build_version: row.try_get("build_version")?,
        replica: row.try_get("replica")?,
        connected,
        expired: !connected && now - last_seen > expiry.as_millis() as i64,
        acked_version: row.try_get("acked_version")?,
        acked_hash: row.try_get("acked_hash")?,
        last_nack,
        last_seen_unix_ms: last_seen,
    })
}

// === impl Store ===

impl Store {
    /// Every node, with `connected` decided by replica liveness and
    /// `expired` by `expiry`.
    pub async fn nodes_seen_within(&self, expiry: Duration) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query(
            "SELECT n.id, n.region, n.zone, n.labels, n.build_version, n.replica, n.connected, n.acked_version, \
             n.acked_hash, n.nack_version, n.nack_resource, n.nack_error, n.nack_at, n.last_seen, \
             r.heartbeat FROM nodes n LEFT JOIN replicas r ON r.name = n.replica \
             ORDER BY n.region, n.zone, n.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        rows.iter().map(|r| node_record(r, now, expiry)).collect()
    }

    /// How many nodes are connected to a live replica (the fleet's size,
    /// for proxies that enforce a fleet-wide limit alone).
    pub async fn connected_nodes(&self) -> Result<u32> {
        let alive_since = now_ms() - REPLICA_TIMEOUT.as_millis() as i64;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM nodes n JOIN replicas r ON r.name = n.replica \
             WHERE n.connected <> 0 AND r.heartbeat >= $1",
        )
        .bind(alive_since)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Every node, expiring after the default hour.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.nodes_seen_within(Duration::from_secs(3600)).await
    }

    /// The newest `limit` NACK events of a node, newest first.
    pub async fn node_events(&self, id: &str, limit: i64) -> Result<Vec<NodeEvent>> {
        Ok(self
            .node_events_before(id, limit, None)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Per node, the first time it moved to `version` at or after
    /// `since_unix_ms` (from `node_acks`; see [`ACKS_KEPT`]).
    pub async fn first_acks(&self, version: i64, since_unix_ms: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT node_id, MIN(at) AS first FROM node_acks WHERE version = $1 AND at >= $2 \
             GROUP BY node_id",
        )
        .bind(version)
        .bind(since_unix_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("node_id")?, r.try_get("first")?)))
            .collect()
    }

    /// The per-node timeline of `version`: every answered push of it still
    /// kept (see [`PUSHES_KEPT`]), oldest first.
    pub async fn pushes_of(&self, version: i64) -> Result<Vec<PushRow>> {
        let rows = sqlx::query(
            "SELECT node_id, region, epoch, version, hash, pushed_at, received_at, built_at, swapped_at, \
             answered_at, outcome, error FROM node_pushes WHERE version = $1 ORDER BY id",
        )
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                Ok(PushRow {
                    node: r.try_get("node_id")?,
                    epoch: r.try_get("epoch")?,
                    push: Push {
                        region: r.try_get("region")?,
                        version: r.try_get("version")?,
                        hash: r.try_get("hash")?,
                        pushed_at_unix_ms: r.try_get("pushed_at")?,
                        received_unix_ms: r.try_get("received_at")?,
                        built_unix_ms: r.try_get("built_at")?,
                        swapped_unix_ms: r.try_get("swapped_at")?,
                        answered_at_unix_ms: r.try_get("answered_at")?,
                        outcome: if outcome == "ack" { "ack" } else { "nack" },
                        error: r.try_get("error")?,
                    },
                })
            })
            .collect()
    }

    /// Newest first, only event ids below `before`; each with its id (the
    /// cursor of the next page).
    pub async fn node_events_before(
        &self,
        id: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<(i64, NodeEvent)>> {
        let rows = sqlx::query(
            "SELECT id, node_id, epoch, version, hash, resource, error, at FROM node_events \
             WHERE node_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id")?,
                    NodeEvent {
                        node: r.try_get("node_id")?,
                        epoch: r.try_get("epoch")?,
                        version: r.try_get("version")?,
                        hash: r.try_get("hash")?,
                        resource: r.try_get("resource")?,
                        error: r.try_get("error")?,
                        at_unix_ms: r.try_get("at")?,
                    },
                ))
            })
            .collect()
    }

    /// This replica is alive: its heartbeat, and `last_seen` of the nodes
    /// whose session it holds (so a connected node never expires).
    pub async fn heartbeat(&self, replica: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (name, heartbeat, started_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET heartbeat = excluded.heartbeat",
        )
        .bind(replica)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // At most one write per node and minute: enough for expiry (a
        // connected node never expires), cheap for a large fleet.
        sqlx::query(
            "UPDATE nodes SET last_seen = $1 WHERE replica = $2 AND connected = 1 AND last_seen < $3",
        )
        .bind(now)
        .bind(replica)
        .bind(now - LAST_SEEN_REFRESH.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A replica (re)starting under a name: sessions its rows still claim
    /// belong to a previous process of that name and are over. Replicas
    /// silent for a week are forgotten (their nodes read as disconnected
    /// either way).
    pub async fn replica_started(&self, replica: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET connected = 0 WHERE replica = $1 AND connected = 1")
            .bind(replica)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat < $1")
            .bind(now_ms() - 7 * 24 * 3600 * 1000)
            .execute(&self.pool)
            .await?;
        self.heartbeat(replica).await
    }

    /// Writes node changes in one transaction, each with the session rules
    /// of this module. Either all are written or none.
    pub async fn write_node_changes(&self, changes: &[NodeChange], replica: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for c in changes {
            Self::write_node_change(&mut tx, c, replica).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Merges `updates` in order, as the writer does (so at most
    /// [`MAX_QUEUED_EVENTS`] NACK events per node survive), and writes them.
    pub async fn write_node_updates(
        &self,
        updates: &[crate::changes::NodeUpdate],
        replica: &str,
    ) -> Result<()> {
        let mut merged: Vec<NodeChange> = Vec::new();
        for u in updates {
            let change = NodeChange::from_update(u.clone(), now_ms());
            match merged.iter_mut().find(|c| c.id == change.id) {
                Some(c) => {
                    c.absorb(change);
                }
                None => merged.push(change),
            }
        }
        self.write_node_changes(&merged, replica).await
    }

    async fn write_node_change(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        c: &NodeChange,
        replica: &str,
    ) -> Result<()> {
        let epoch = c.epoch.0;
        let seen = c.seen_at_unix_ms;
        if let Some(h) = &c.hello {
            sqlx::query(
                "INSERT INTO nodes (id, region, zone, build_version, replica, connected, last_seen, session_epoch, labels) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET region = excluded.region, zone = excluded.zone, \
                 build_version = excluded.build_version, replica = excluded.replica, connected = 1, \
                 last_seen = excluded.last_seen, session_epoch = excluded.session_epoch, labels = excluded.labels \
                 WHERE nodes.session_epoch IS NULL OR nodes.session_epoch < excluded.session_epoch",
            )
            .bind(&c.id)
            .bind(&h.region)
            .bind(&h.zone)
            .bind(&h.build_version)
            .bind(replica)
            .bind(seen)
            .bind(epoch)
            .bind(&h.labels)
            .execute(&mut **tx)
            .await?;
        }
        // A move to another version is recorded for convergence, before the
        // row is updated (a reconnect that ACKs what the row holds is not a
        // move), with the session rule of every other write.
        if let Some((version, _)) = &c.ack {
            let moved = sqlx::query(
                "INSERT INTO node_acks (node_id, version, at) SELECT $1, $2, $3 \
                 WHERE EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND session_epoch = $4 \
                 AND (acked_version IS NULL OR acked_version <> $2))",
            )
            .bind(&c.id)
            .bind(*version)
            .bind(seen)
            .bind(epoch)
            .execute(&mut **tx)
            .await?;
            if moved.rows_affected() > 0 {
                sqlx::query(
                    "DELETE FROM node_acks WHERE node_id = $1 AND id < \
                     (SELECT id FROM node_acks WHERE node_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                )
                .bind(&c.id)
                .bind(ACKS_KEPT - 1)
                .execute(&mut **tx)
                .await?;
            }
        }
        // An ACK and the NACKs it clears in one statement (the right-hand
        // sides all see the row as it was).
        if let Some((version, hash)) = &c.ack {
            sqlx::query(
                "UPDATE nodes SET acked_version = $1, acked_hash = $2, last_seen = $3, \
                 nack_resource = CASE WHEN nack_version <= $4 THEN NULL ELSE nack_resource END, \
                 nack_error = CASE WHEN nack_version <= $4 THEN NULL ELSE nack_error END, \
                 nack_at = CASE WHEN nack_version <= $4 THEN NULL ELSE nack_at END, \
                 nack_version = CASE WHEN nack_version <= $4 THEN NULL ELSE nack_version END \
                 WHERE id = $5 AND session_epoch = $6",
            )
            .bind(*version)
            .bind(hash)
            .bind(seen)
            .bind(c.clears_nacks_upto.unwrap_or(*version))
            .bind(&c.id)
            .bind(epoch)
            .execute(&mut **tx)
            .await?;
        } else if let Some(upto) = c.clears_nacks_upto {
            sqlx::query(
                "UPDATE nodes SET nack_version = NULL, nack_resource = NULL, nack_error = NULL, nack_at = NULL \
                 WHERE id = $1 AND session_epoch = $2 AND nack_version <= $3",
            )
            .bind(&c.id)
            .bind(epoch)
            .bind(upto)
            .execute(&mut **tx)
            .await?;
        }
        if let Some(n) = &c.nack {
            sqlx::query(
                "UPDATE nodes SET nack_version = $1, nack_resource = $2, nack_error = $3, nack_at = $4, \
                 last_seen = $5 WHERE id = $6 AND session_epoch = $7",
            )
            .bind(n.version)
            .bind(&n.resource)
            .bind(&n.error)
            .bind(n.at_unix_ms)
            .bind(seen)
            .bind(&c.id)
            .bind(epoch)
            .execute(&mut **tx)
            .await?;
        }
        if c.disconnected {
            sqlx::query(
                "UPDATE nodes SET connected = 0, last_seen = $1 WHERE id = $2 AND session_epoch = $3",
            )
            .bind(seen)
            .bind(&c.id)
            .bind(epoch)
            .execute(&mut **tx)
            .await?;
        }
        for e in &c.events {
            sqlx::query(
                "INSERT INTO node_events (node_id, epoch, version, hash, resource, error, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&e.node)
            .bind(e.epoch)
            .bind(e.version)
            .bind(&e.hash)
            .bind(&e.resource)
            .bind(&e.error)
            .bind(e.at_unix_ms)
            .execute(&mut **tx)
            .await?;
        }
        for (push_epoch, p) in &c.pushes {
            let written = sqlx::query(
                "INSERT INTO node_pushes (node_id, region, epoch, version, hash, pushed_at, received_at, \
                 built_at, swapped_at, answered_at, outcome, error) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
                 WHERE EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND session_epoch = $3)",
            )
            .bind(&c.id)
            .bind(&p.region)
            .bind(push_epoch.0)
            .bind(p.version)
            .bind(&p.hash)
            .bind(p.pushed_at_unix_ms)
            .bind(p.received_unix_ms)
            .bind(p.built_unix_ms)
            .bind(p.swapped_unix_ms)
            .bind(p.answered_at_unix_ms)
            .bind(p.outcome)
            .bind(p.error.as_deref())
            .execute(&mut **tx)
            .await?;
            if written.rows_affected() > 0 {
                sqlx::query(
                    "DELETE FROM node_pushes WHERE node_id = $1 AND id < \
                     (SELECT id FROM node_pushes WHERE node_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                )
                .bind(&c.id)
                .bind(PUSHES_KEPT - 1)
                .execute(&mut **tx)
                .await?;
            }
        }
        if !c.events.is_empty() {
            sqlx::query(
                "DELETE FROM node_events WHERE node_id = $1 AND id <= \
                 (SELECT id FROM node_events WHERE node_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
            .bind(&c.id)
            .bind(EVENTS_KEPT)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// NACK events one node may have queued while the database is away; older
/// ones are dropped first (and counted).
pub const MAX_QUEUED_EVENTS: usize = 20;

// Length caps for text that comes from proxies.
const MAX_NAME: usize = 256;
const MAX_HASH: usize = 128;
const MAX_RESOURCE: usize = 512;
const MAX_ERROR: usize = 4096;

// === impl NodeChange ===

impl NodeChange {
    /// The change one update asks for, its text sanitised.
    pub fn from_update(update: crate::changes::NodeUpdate, now: i64) -> NodeChange {
        use crate::changes::NodeUpdate as U;
        let (id, epoch) = match &update {
            U::Connected { node, epoch } => (node.id.as_str(), *epoch),
            U::Disconnected { id, epoch }
            | U::Ack { id, epoch, .. }
            | U::Nack { id, epoch, .. }
            | U::Pushed { id, epoch, .. } => (id.as_str(), *epoch),
        };
        let mut change = NodeChange {
            id: sanitise(id, MAX_NAME),
            epoch,
            hello: None,
            ack: None,
            clears_nacks_upto: None,
            nack: None,
            disconnected: false,
            seen_at_unix_ms: now,
            events: Vec::new(),
            pushes: Vec::new(),
        };
        match update {
            U::Connected { node, .. } => {
                change.hello = Some(Hello {
                    region: sanitise(&node.region, MAX_NAME),
                    zone: sanitise(&node.zone, MAX_NAME),
                    build_version: sanitise(&node.build_version, MAX_NAME),
                    labels: node
                        .labels
                        .iter()
                        .map(|l| {
                            format!(
                                "{}={}",
                                sanitise(&l.key, MAX_NAME),
                                sanitise(&l.value, MAX_NAME)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
            }
            U::Disconnected { .. } => change.disconnected = true,
            U::Pushed { mut push, .. } => {
                push.region = sanitise(&push.region, MAX_NAME);
                push.hash = sanitise(&push.hash, MAX_HASH);
                push.error = push.error.map(|e| sanitise(&e, MAX_ERROR));
                change.pushes.push((epoch, push));
            }
            U::Ack { version, hash, .. } => {
                change.ack = Some((version, sanitise(&hash, MAX_HASH)));
                change.clears_nacks_upto = Some(version);
            }
            U::Nack {
                version,
                hash,
                resource,
                error,
                ..
            } => {
                let nack = Nack {
                    version,
                    resource: sanitise(&resource, MAX_RESOURCE),
                    error: sanitise(&error, MAX_ERROR),
                    at_unix_ms: now,
                };
                change.events.push(NodeEvent {
                    node: change.id.clone(),
                    epoch: epoch.0,
                    version,
                    hash: sanitise(&hash, MAX_HASH),
                    resource: nack.resource.clone(),
                    error: nack.error.clone(),
                    at_unix_ms: now,
                });
                change.nack = Some(nack);
            }
        }
        change
    }

    /// Folds a later change of the same node into this one, so that writing
    /// the result leaves the row as writing both in order would. A newer
    /// session replaces the state of an older one (whose writes would be
    /// refused by the epoch check anyway); a later change of an older
    /// session contributes only its NACK events. Returns how many queued
    /// events had to be dropped to stay within [`MAX_QUEUED_EVENTS`].
    pub fn absorb(&mut self, later: NodeChange) -> usize {
        let mut events = std::mem::take(&mut self.events);
        events.extend(later.events.iter().cloned());
        // Pushes carry their own epoch (checked when written): all kept,
        // the oldest dropped first beyond the cap.
        let mut pushes = std::mem::take(&mut self.pushes);
        pushes.extend(later.pushes.iter().cloned());
        let dropped_pushes = pushes.len().saturating_sub(MAX_QUEUED_EVENTS);
        pushes.drain(..dropped_pushes);
        if later.epoch > self.epoch {
            *self = NodeChange {
                events: Vec::new(),
                pushes: Vec::new(),
                ..later
            };
        } else if later.epoch == self.epoch {
            if later.hello.is_some() {
                self.hello = later.hello;
            }
            if let Some(upto) = later.clears_nacks_upto {
                self.clears_nacks_upto = Some(self.clears_nacks_upto.map_or(upto, |u| u.max(upto)));
                if self.nack.as_ref().is_some_and(|n| n.version <= upto) {
                    self.nack = None;
                }
            }
            if later.ack.is_some() {
                self.ack = later.ack;
            }
            if later.nack.is_some() {
                self.nack = later.nack;
            }
            self.disconnected |= later.disconnected;
            self.seen_at_unix_ms = self.seen_at_unix_ms.max(later.seen_at_unix_ms);
        }
        let dropped = events.len().saturating_sub(MAX_QUEUED_EVENTS);
        events.drain(..dropped);
        self.events = events;
        self.pushes = pushes;
        dropped + dropped_pushes
    }

    /// Whether writing this would change nothing.
    pub fn is_empty(&self) -> bool {
        self.hello.is_none()
            && self.ack.is_none()
            && self.clears_nacks_upto.is_none()
            && self.nack.is_none()
            && !self.disconnected
            && self.events.is_empty()
            && self.pushes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::NodeUpdate;

    fn ack(epoch: i64, version: i64) -> NodeChange {
        NodeChange::from_update(
            NodeUpdate::Ack {
                id: "n".into(),
                epoch: Epoch(epoch),
                version,
                hash: format!("h{version}"),
            },
            0,
        )
    }

    fn nack(epoch: i64, version: i64) -> NodeChange {
        NodeChange::from_update(
            NodeUpdate::Nack {
                id: "n".into(),
                epoch: Epoch(epoch),
                version,
                hash: String::new(),
                resource: "r".into(),
                error: "e\0rr\u{1b}or".into(),
            },
            0,
        )
    }

    #[test]
    fn an_ack_of_that_or_a_later_version_clears_a_queued_nack() {
        let mut c = nack(1, 2);
        assert_eq!(c.nack.as_ref().map(|n| n.error.as_str()), Some("error"));
        c.absorb(ack(1, 1));
        assert_eq!(c.nack.as_ref().map(|n| n.version), Some(2), "older ACK");
        c.absorb(ack(1, 3));
        c.absorb(ack(1, 1));
        assert!(c.nack.is_none());
        assert_eq!(
            (c.ack.clone(), c.clears_nacks_upto),
            (Some((1, "h1".into())), Some(3))
        );
        c.absorb(nack(1, 4));
        assert_eq!(
            c.nack.as_ref().map(|n| n.version),
            Some(4),
            "NACK after the ACKs"
        );
        assert_eq!(c.events.len(), 2, "both NACKs stay in the history");
    }

    #[test]
    fn a_newer_session_replaces_an_older_one_and_keeps_the_events() {
        let mut c = nack(1, 2);
        c.absorb(ack(2, 5));
        assert_eq!(c.epoch, Epoch(2));
        assert!(c.nack.is_none());
        c.absorb(ack(1, 9));
        assert_eq!(
            c.ack,
            Some((5, "h5".into())),
            "an older session's ACK is ignored"
        );
        c.absorb(nack(1, 9));
        assert!(c.nack.is_none());
        assert_eq!(c.events.len(), 2);
        for _ in 0..MAX_QUEUED_EVENTS {
            c.absorb(nack(2, 7));
        }
        assert_eq!(c.events.len(), MAX_QUEUED_EVENTS);
    }

    fn pushed(epoch: i64, version: i64) -> NodeChange {
        NodeChange::from_update(
            NodeUpdate::Pushed {
                id: "n".into(),
                epoch: Epoch(epoch),
                push: Push {
                    region: "eu\0".into(),
                    version,
                    hash: String::new(),
                    pushed_at_unix_ms: 1,
                    received_unix_ms: None,
                    built_unix_ms: None,
                    swapped_unix_ms: None,
                    answered_at_unix_ms: 2,
                    outcome: "nack",
                    error: Some("bad\u{1b}".into()),
                },
            },
            0,
        )
    }

    #[test]
    fn queued_pushes_keep_their_own_session_and_are_capped() {
        let mut c = pushed(1, 1);
        assert!(!c.is_empty());
        assert_eq!(c.pushes[0].1.region, "eu");
        assert_eq!(c.pushes[0].1.error.as_deref(), Some("bad"));
        c.absorb(ack(2, 5));
        c.absorb(pushed(2, 5));
        let epochs: Vec<i64> = c.pushes.iter().map(|(e, _)| e.0).collect();
        assert_eq!(epochs, [1, 2], "each is written with its own epoch check");
        for v in 0..MAX_QUEUED_EVENTS as i64 {
            c.absorb(pushed(2, 10 + v));
        }
        assert_eq!(c.pushes.len(), MAX_QUEUED_EVENTS);
        assert_eq!(c.pushes[0].1.version, 10, "the two oldest dropped first");
    }

    #[test]
    fn text_from_proxies_is_made_storable() {
        assert_eq!(sanitise("a\0b\u{7}c\nd", 10), "abcd");
        assert_eq!(sanitise("ééé", 2), "éé");
    }
}
