//! Storage: immutable config versions, activations, nodes, API tokens and
//! the audit trail, in PostgreSQL (production, several replicas) or an
//! embedded SQLite file (the zero-set-up default).
//!
//! One [`Store`] serves both through sqlx's `Any` driver with plain runtime
//! queries; the few differences (serialising writers, migrations,
//! LISTEN/NOTIFY) are decided by [`Dialect`]. Apply and rollback each run in
//! one transaction, so a version is stored and activated together or not at
//! all, and nothing is ever updated or deleted in `config_versions` or
//! `activations`.

use std::time::Duration;

use prost::Message;
use sentinel_proto as pb;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored configuration version (without its resources).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VersionRecord {
    pub number: i64,
    pub hash: String,
    pub file_name: String,
    pub author: String,
    pub message: String,
    pub created_at_unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub record: VersionRecord,
    pub source: String,
    pub resources: Vec<pb::Resource>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Activation {
    pub id: i64,
    /// `apply` or `rollback`.
    pub kind: String,
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub actor: String,
    pub message: String,
    pub at_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nack {
    pub version: i64,
    pub resource: String,
    pub error: String,
    pub at_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub build_version: String,
    /// The control-plane replica the node is (or was last) connected to.
    pub replica: String,
    pub connected: bool,
    pub acked_version: Option<i64>,
    pub acked_hash: Option<String>,
    pub last_nack: Option<Nack>,
    pub last_seen_unix_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// What an apply asks for.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub hash: String,
    pub source: String,
    pub file_name: String,
    pub resources: Vec<pb::Resource>,
    pub author: String,
    pub message: String,
    /// Optimistic concurrency: the version the caller believes is active.
    pub expect_version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    Created { version: i64, previous: Option<i64> },
    Unchanged { version: i64 },
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn encode_resources(resources: &[pb::Resource]) -> Vec<u8> {
    pb::ResourceSet {
        resources: resources.to_vec(),
        config_version: String::new(),
        version_number: 0,
    }
    .encode_to_vec()
}

fn decode_resources(bytes: &[u8]) -> Result<Vec<pb::Resource>> {
    pb::ResourceSet::decode(bytes)
        .map(|s| s.resources)
        .map_err(|e| StoreError::Other(format!("stored resources are corrupt: {e}")))
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    pub dialect: Dialect,
    pub url: String,
    /// Serialises applies and rollbacks within this replica; across replicas
    /// PostgreSQL's advisory lock does.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The columns of a `VersionRecord`, as a literal for `concat!`.
macro_rules! version_columns {
    () => {
        "number, hash, file_name, author, message, created_at"
    };
}

fn version_record(row: &AnyRow) -> Result<VersionRecord> {
    Ok(VersionRecord {
        number: row.try_get("number")?,
        hash: row.try_get("hash")?,
        file_name: row.try_get("file_name")?,
        author: row.try_get("author")?,
        message: row.try_get("message")?,
        created_at_unix_ms: row.try_get("created_at")?,
    })
}

fn activation(row: &AnyRow) -> Result<Activation> {
    Ok(Activation {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        from_version: row.try_get("from_version")?,
        to_version: row.try_get("to_version")?,
        actor: row.try_get("actor")?,
        message: row.try_get("message")?,
        at_unix_ms: row.try_get("at")?,
    })
}

fn node(row: &AnyRow) -> Result<NodeRecord> {
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
    Ok(NodeRecord {
        id: row.try_get("id")?,
        region: row.try_get("region")?,
        zone: row.try_get("zone")?,
        build_version: row.try_get("build_version")?,
        replica: row.try_get("replica")?,
        connected: row.try_get::<i64, _>("connected")? != 0,
        acked_version: row.try_get("acked_version")?,
        acked_hash: row.try_get("acked_hash")?,
        last_nack,
        last_seen_unix_ms: row.try_get("last_seen")?,
    })
}

impl Store {
    /// Connects (an empty URL means `sentinel-cp.db` in the working
    /// directory) and runs the migrations of the dialect.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let url = if url.is_empty() {
            "sqlite://sentinel-cp.db?mode=rwc".to_string()
        } else {
            url.to_string()
        };
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            anyhow::bail!("unsupported database URL `{url}`: use postgres://… or sqlite://…");
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(3));
        let pool = match dialect {
            // One connection: SQLite has one writer anyway, and this keeps
            // "database is locked" out of the picture.
            Dialect::Sqlite => {
                options
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA synchronous = FULL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Dialect::Postgres => options.max_connections(16).connect(&url).await?,
        };
        match dialect {
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
        }
        Ok(Store {
            pool,
            dialect,
            url,
            writer: Default::default(),
        })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn lock_writers(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7310)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn active_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<Option<VersionRecord>> {
        let q = concat!(
            "SELECT ",
            version_columns!(),
            " FROM config_versions WHERE number = (SELECT to_version FROM activations ORDER BY id DESC LIMIT 1)"
        );
        let row = sqlx::query(q).fetch_optional(&mut **tx).await?;
        row.as_ref().map(version_record).transpose()
    }

    async fn audit(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO audit (at, actor, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(now_ms())
            .bind(actor)
            .bind(action)
            .bind(detail)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn notify(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, version: i64) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            // Delivered to every replica's listener when the transaction commits.
            sqlx::query("SELECT pg_notify('sentinel_activation', $1)")
                .bind(version.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Stores and activates a new version in one transaction, or reports
    /// that the content equals the active version.
    pub async fn apply(&self, new: NewVersion) -> Result<ApplyOutcome> {
        let _serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let result = self.apply_in(&mut tx, new).await;
        Self::finish(tx, result, |o| matches!(o, ApplyOutcome::Created { .. })).await
    }

    /// Commits when `commit(result)` says so, otherwise rolls back at once:
    /// a transaction left to roll back "on drop" would hold PostgreSQL's
    /// advisory lock until its connection happens to be reused.
    async fn finish<T>(
        tx: sqlx::Transaction<'_, sqlx::Any>,
        result: Result<T>,
        commit: impl Fn(&T) -> bool,
    ) -> Result<T> {
        match result {
            Ok(v) if commit(&v) => {
                tx.commit().await?;
                Ok(v)
            }
            Ok(v) => {
                tx.rollback().await?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn apply_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        new: NewVersion,
    ) -> Result<ApplyOutcome> {
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
            return Ok(ApplyOutcome::Unchanged { version: a.number });
        }
        let max: Option<i64> = sqlx::query("SELECT MAX(number) AS n FROM config_versions")
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
        let number = max.unwrap_or(0) + 1;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO config_versions (number, hash, source, file_name, resources, author, message, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(number)
        .bind(&new.hash)
        .bind(&new.source)
        .bind(&new.file_name)
        .bind(encode_resources(&new.resources))
        .bind(&new.author)
        .bind(&new.message)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO activations (kind, from_version, to_version, actor, message, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind("apply")
        .bind(active_number)
        .bind(number)
        .bind(&new.author)
        .bind(&new.message)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Self::audit(
            tx,
            &new.author,
            "apply",
            &format!("version {number} ({})", new.hash),
        )
        .await?;
        self.notify(tx, number).await?;
        Ok(ApplyOutcome::Created {
            version: number,
            previous: active_number,
        })
    }

    /// Re-activates `to`, or the version active before the last activation.
    /// Returns (from, to).
    pub async fn rollback(
        &self,
        to: Option<i64>,
        actor: &str,
        message: &str,
    ) -> Result<(i64, i64)> {
        let _serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let result = self.rollback_in(&mut tx, to, actor, message).await;
        Self::finish(tx, result, |_| true).await
    }

    async fn rollback_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        to: Option<i64>,
        actor: &str,
        message: &str,
    ) -> Result<(i64, i64)> {
        self.lock_writers(tx).await?;
        let last = sqlx::query(
            "SELECT id, kind, from_version, to_version, actor, message, at FROM activations ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&mut **tx)
        .await?;
        let Some(last) = last.as_ref().map(activation).transpose()? else {
            return Err(StoreError::Conflict(
                "nothing to roll back: no version was ever applied".into(),
            ));
        };
        let from = last.to_version;
        let target = match to {
            Some(n) => n,
            None => last.from_version.ok_or_else(|| {
                StoreError::Conflict(format!(
                    "version {from} is the first version; there is nothing before it"
                ))
            })?,
        };
        let exists = sqlx::query("SELECT number FROM config_versions WHERE number = $1")
            .bind(target)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!(
                "version {target} does not exist"
            )));
        }
        if target == from {
            return Err(StoreError::Conflict(format!(
                "version {target} is already active"
            )));
        }
        sqlx::query(
            "INSERT INTO activations (kind, from_version, to_version, actor, message, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind("rollback")
        .bind(from)
        .bind(target)
        .bind(actor)
        .bind(message)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Self::audit(tx, actor, "rollback", &format!("{from} -> {target}")).await?;
        self.notify(tx, target).await?;
        Ok((from, target))
    }

    /// The active version with its source and resources.
    pub async fn active(&self) -> Result<Option<StoredVersion>> {
        let row = sqlx::query("SELECT to_version FROM activations ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => self.version(row.try_get("to_version")?).await.map(Some),
            None => Ok(None),
        }
    }

    pub async fn version(&self, number: i64) -> Result<StoredVersion> {
        let q = concat!(
            "SELECT ",
            version_columns!(),
            ", source, resources FROM config_versions WHERE number = $1"
        );
        let row = sqlx::query(q)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("version {number} does not exist")))?;
        let resources: Vec<u8> = row.try_get("resources")?;
        Ok(StoredVersion {
            record: version_record(&row)?,
            source: row.try_get("source")?,
            resources: decode_resources(&resources)?,
        })
    }

    /// Newest first.
    pub async fn versions(&self, limit: i64) -> Result<Vec<VersionRecord>> {
        let q = concat!(
            "SELECT ",
            version_columns!(),
            " FROM config_versions ORDER BY number DESC LIMIT $1"
        );
        let rows = sqlx::query(q).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(version_record).collect()
    }

    /// Newest first.
    pub async fn activations(&self, limit: i64) -> Result<Vec<Activation>> {
        let rows = sqlx::query(
            "SELECT id, kind, from_version, to_version, actor, message, at FROM activations ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(activation).collect()
    }

    /// Applies node updates in order, in one transaction.
    pub async fn write_node_updates(
        &self,
        updates: &[crate::fleet::NodeUpdate],
        replica: &str,
    ) -> Result<()> {
        use crate::fleet::NodeUpdate as U;
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        for u in updates {
            match u {
                U::Connected(node) => {
                    let updated = sqlx::query(
                        "UPDATE nodes SET region = $1, zone = $2, build_version = $3, replica = $4, connected = 1, last_seen = $5 WHERE id = $6",
                    )
                    .bind(&node.region)
                    .bind(&node.zone)
                    .bind(&node.build_version)
                    .bind(replica)
                    .bind(now)
                    .bind(&node.id)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() == 0 {
                        sqlx::query(
                            "INSERT INTO nodes (id, region, zone, build_version, replica, connected, last_seen) VALUES ($1, $2, $3, $4, $5, 1, $6)",
                        )
                        .bind(&node.id)
                        .bind(&node.region)
                        .bind(&node.zone)
                        .bind(&node.build_version)
                        .bind(replica)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                U::Disconnected(id) => {
                    sqlx::query("UPDATE nodes SET connected = 0, last_seen = $1 WHERE id = $2 AND replica = $3")
                        .bind(now)
                        .bind(id)
                        .bind(replica)
                        .execute(&mut *tx)
                        .await?;
                }
                U::Ack { id, version, hash } => {
                    sqlx::query("UPDATE nodes SET acked_version = $1, acked_hash = $2, last_seen = $3 WHERE id = $4")
                        .bind(*version)
                        .bind(hash)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                U::Nack {
                    id,
                    version,
                    resource,
                    error,
                } => {
                    sqlx::query(
                        "UPDATE nodes SET nack_version = $1, nack_resource = $2, nack_error = $3, nack_at = $4, last_seen = $5 WHERE id = $6",
                    )
                    .bind(*version)
                    .bind(resource)
                    .bind(error)
                    .bind(now)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn node_connected(&self, node: &pb::Node, replica: &str) -> Result<()> {
        self.write_node_updates(
            &[crate::fleet::NodeUpdate::Connected(node.clone())],
            replica,
        )
        .await
    }

    /// Only the replica holding the session may mark it gone: the node may
    /// already have reconnected to another replica.
    pub async fn node_disconnected(&self, id: &str, replica: &str) -> Result<()> {
        self.write_node_updates(
            &[crate::fleet::NodeUpdate::Disconnected(id.to_string())],
            replica,
        )
        .await
    }

    pub async fn record_ack(&self, id: &str, version: i64, hash: &str) -> Result<()> {
        let u = crate::fleet::NodeUpdate::Ack {
            id: id.to_string(),
            version,
            hash: hash.to_string(),
        };
        self.write_node_updates(&[u], "").await
    }

    pub async fn record_nack(
        &self,
        id: &str,
        version: i64,
        resource: &str,
        error: &str,
    ) -> Result<()> {
        let u = crate::fleet::NodeUpdate::Nack {
            id: id.to_string(),
            version,
            resource: resource.to_string(),
            error: error.to_string(),
        };
        self.write_node_updates(&[u], "").await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query(
            "SELECT id, region, zone, build_version, replica, connected, acked_version, acked_hash, nack_version, \
             nack_resource, nack_error, nack_at, last_seen FROM nodes ORDER BY region, zone, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(node).collect()
    }

    /// Creates a token unless one with that name exists. Only the hash of
    /// the secret is stored.
    pub async fn ensure_token(&self, name: &str, secret_hash: &str, role: Role) -> Result<bool> {
        let exists = sqlx::query("SELECT id FROM api_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(secret_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// (name, role) of the token whose secret hashes to `secret_hash`.
    pub async fn token(&self, secret_hash: &str) -> Result<Option<(String, Role)>> {
        let row = sqlx::query("SELECT name, role FROM api_tokens WHERE token_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let role: String = r.try_get("role")?;
                Ok(Role::parse(&role)
                    .map(|role| (r.try_get::<String, _>("name").unwrap_or_default(), role)))
            }
            None => Ok(None),
        }
    }

    pub async fn audit_log(&self, limit: i64) -> Result<Vec<serde_json::Value>> {
        let rows =
            sqlx::query("SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "at_unix_ms": r.try_get::<i64, _>("at")?,
                    "actor": r.try_get::<String, _>("actor")?,
                    "action": r.try_get::<String, _>("action")?,
                    "detail": r.try_get::<String, _>("detail")?,
                }))
            })
            .collect()
    }

    pub async fn record_audit(&self, actor: &str, action: &str, detail: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::audit(&mut tx, actor, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
