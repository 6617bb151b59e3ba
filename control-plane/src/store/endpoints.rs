//! Discovered endpoint sets: the current set per upstream
//! (`discovered_endpoints`) and a compact, bounded history of every set
//! pushed (`endpoint_history`, pruned to the newest [`HISTORY_PER_UPSTREAM`]
//! per upstream). Written only by the replica that leads discovery (through
//! `discovery::writer`, coalesced and retried); read by every replica to
//! overlay the active configuration. Never touches config versions.

use prost::Message;
use sentinel_proto as pb;
use sqlx::Row;

use super::{Dialect, Result, Store, StoreError};
use crate::changes::EndpointSet;

/// History rows kept per upstream.
pub const HISTORY_PER_UPSTREAM: i64 = 100;

/// One row of `endpoint_history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHistory {
    pub upstream: String,
    pub generation: i64,
    pub hash: String,
    pub source: String,
    pub at_unix_ms: i64,
}

impl Store {
    /// Writes the sets (upsert + one history row each, history pruned to
    /// `keep` per upstream) in one transaction, then tells every replica
    /// (PostgreSQL NOTIFY `sentinel_endpoints`).
    pub async fn write_endpoint_sets(&self, sets: &[EndpointSet], keep: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for s in sets {
            sqlx::query(
                "INSERT INTO discovered_endpoints \
                 (upstream, source, generation, hash, targets, stale, error, last_success_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (upstream) DO UPDATE SET source = excluded.source, \
                 generation = excluded.generation, hash = excluded.hash, targets = excluded.targets, \
                 stale = excluded.stale, error = excluded.error, \
                 last_success_at = excluded.last_success_at, updated_at = excluded.updated_at",
            )
            .bind(&s.upstream)
            .bind(&s.source)
            .bind(s.generation)
            .bind(s.hash())
            .bind(s.resource.body.to_vec())
            .bind(i64::from(s.stale))
            .bind(s.error.clone())
            .bind(s.last_success_unix_ms)
            .bind(s.updated_at_unix_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO endpoint_history (upstream, generation, hash, source, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&s.upstream)
            .bind(s.generation)
            .bind(s.hash())
            .bind(&s.source)
            .bind(s.updated_at_unix_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM endpoint_history WHERE upstream = $1 AND id NOT IN \
                 (SELECT id FROM endpoint_history WHERE upstream = $2 ORDER BY id DESC LIMIT $3)",
            )
            .bind(&s.upstream)
            .bind(&s.upstream)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        }
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify('sentinel_endpoints', '')")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every stored current set, sorted by upstream.
    pub async fn endpoint_sets(&self) -> Result<Vec<EndpointSet>> {
        let rows = sqlx::query(
            "SELECT upstream, source, generation, hash, targets, stale, error, last_success_at, updated_at \
             FROM discovered_endpoints ORDER BY upstream",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let upstream: String = row.try_get("upstream")?;
            let body: Vec<u8> = row.try_get("targets")?;
            let endpoints = pb::Endpoints::decode(body.as_slice()).map_err(|e| {
                StoreError::Other(format!("stored endpoints of `{upstream}` are corrupt: {e}"))
            })?;
            let hash: String = row.try_get("hash")?;
            let resource = pb::Resource {
                r#type: pb::ResourceType::Endpoints as i32,
                name: upstream.clone(),
                version: hash,
                body: body.into(),
            };
            let stale: i64 = row.try_get("stale")?;
            out.push(EndpointSet {
                upstream,
                source: row.try_get("source")?,
                generation: row.try_get("generation")?,
                targets: endpoints.targets,
                resource,
                stale: stale != 0,
                error: row.try_get("error")?,
                last_success_unix_ms: row.try_get("last_success_at")?,
                updated_at_unix_ms: row.try_get("updated_at")?,
            });
        }
        Ok(out)
    }

    /// The newest `limit` history rows of `upstream`, newest first.
    pub async fn endpoint_history(
        &self,
        upstream: &str,
        limit: i64,
    ) -> Result<Vec<EndpointHistory>> {
        let rows = sqlx::query(
            "SELECT upstream, generation, hash, source, at FROM endpoint_history \
             WHERE upstream = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(upstream)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EndpointHistory {
                    upstream: r.try_get("upstream")?,
                    generation: r.try_get("generation")?,
                    hash: r.try_get("hash")?,
                    source: r.try_get("source")?,
                    at_unix_ms: r.try_get("at")?,
                })
            })
            .collect()
    }
}
