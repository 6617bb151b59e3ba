//! Storage: immutable config versions, activations, nodes (`nodes.rs`, and
//! the background writer that feeds them, `writer.rs`), API tokens and the
//! audit trail, in PostgreSQL (production, several replicas) or an
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

/// The records are the API's models (one crate with `sentinelctl`).
pub use sentinel_api::{Activation, AuditEntry, Role, TraceStep, VersionRecord};

mod endpoints;
mod nodes;
mod rollouts;
pub use rollouts::{NewRollout, RolloutRow};
pub mod writer;

pub use endpoints::{EndpointHistory, HISTORY_PER_UPSTREAM};

pub use nodes::{
    ACKS_KEPT, Nack, NodeChange, NodeEvent, NodeRecord, PUSHES_KEPT, PushRow, REPLICA_TIMEOUT,
    sanitise,
};

mod tokens;
pub use tokens::{Ensured, NewToken, TokenKind, TokenRecord, Unusable};

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

#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub record: VersionRecord,
    pub source: String,
    pub resources: Vec<pb::Resource>,
    /// From [`Store::active`]: the traceparent stored with the activation
    /// (every replica streams the same one). `None` from [`Store::version`].
    pub trace_parent: Option<String>,
}

/// The trace of one config change, stored with its activation (or
/// rollout): the W3C traceparent of the span that activated it, which
/// proxies' spans become children of, and the control plane's steps so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeTrace {
    pub parent: Option<String>,
    pub steps: Vec<TraceStep>,
}

impl ChangeTrace {
    fn steps_json(&self) -> Option<String> {
        (!self.steps.is_empty())
            .then(|| serde_json::to_string(&self.steps).ok())
            .flatten()
    }
}

/// The stored trace of the newest change that delivered a version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionTrace {
    /// `apply`, `rollback` or `rollout`.
    pub kind: String,
    pub trace: ChangeTrace,
    /// When it was activated (or the rollout created).
    pub at_unix_ms: i64,
}

fn trace_of(row: &AnyRow) -> Result<ChangeTrace> {
    let parent: Option<String> = row.try_get("trace_parent")?;
    let steps: Option<String> = row.try_get("trace_steps")?;
    Ok(ChangeTrace {
        parent: parent.filter(|p| !p.is_empty()),
        // Written by this code only; unreadable steps are shown as none.
        steps: steps
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    })
}

/// What an apply asks for.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub hash: String,
    pub source: String,
    pub file_name: String,
    pub resources: Vec<pb::Resource>,
    /// Who activates it (the authenticated caller): the activation's and
    /// the audit entry's actor.
    pub actor: String,
    /// Free text, stored with the version (`config_versions.author`).
    pub author: String,
    pub message: String,
    /// Optimistic concurrency: the version the caller believes is active.
    pub expect_version: Option<i64>,
    /// Stored with the activation (or the rollout).
    pub trace: ChangeTrace,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    Created { version: i64, previous: Option<i64> },
    Unchanged { version: i64 },
}

/// Wall-clock Unix milliseconds, as the store's columns hold them.
pub fn now_ms() -> i64 {
    i64::try_from(sentinel_telemetry::clock::unix_ms()).unwrap_or(i64::MAX)
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

/// A SQLite URL that does what it says: the file is created when missing
/// (`mode=rwc` unless the URL names a `mode`), and a directory that does
/// not exist is an error that says so, instead of SQLite's "unable to open
/// database file".
///
/// Accepted forms: `sqlite:///var/lib/sentinel/cp.db` (absolute),
/// `sqlite://cp.db`, `sqlite:cp.db`, `sqlite:data/cp.db` (relative to the
/// working directory), each optionally with `?query` options, and
/// `sqlite::memory:`.
pub fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("not a SQLite URL: `{url}`"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    if path.is_empty() {
        anyhow::bail!(
            "the SQLite URL `{url}` names no file: use sqlite:///absolute/path.db or sqlite:relative.db"
        );
    }
    if path == ":memory:" {
        return Ok(url.to_string());
    }
    let file = std::path::Path::new(path);
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "the directory `{}` of the SQLite database `{path}` does not exist: create it first \
             (sentinel-cp creates the database file, not its directory)",
            dir.display()
        );
    }
    if file.is_dir() {
        anyhow::bail!("the SQLite database `{path}` is a directory; name a file in it");
    }
    let has_mode = query.split('&').any(|kv| kv.starts_with("mode="));
    let query = match (query.is_empty(), has_mode) {
        (true, _) => "mode=rwc".to_string(),
        (false, false) => format!("{query}&mode=rwc"),
        (false, true) => query.to_string(),
    };
    Ok(format!("sqlite://{path}?{query}"))
}

impl Store {
    /// Connects (an empty URL means `sentinel-cp.db` in the working
    /// directory) and runs the migrations of the dialect.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let url = if url.is_empty() {
            sqlite_url("sqlite:sentinel-cp.db")?
        } else if url.starts_with("sqlite:") {
            sqlite_url(url)?
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

    /// `postgres` or `sqlite`.
    pub fn dialect_name(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
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
        if let Some(open) = Self::open_rollout_in(tx).await? {
            return Err(StoreError::Conflict(open.busy()));
        }
        let number = Self::insert_version_in(tx, &new).await?;
        let now = now_ms();
        let mut trace = new.trace.clone();
        trace.steps.push(TraceStep {
            name: "config.store".into(),
            start_unix_ms: now,
            end_unix_ms: now,
        });
        sqlx::query(
            "INSERT INTO activations (kind, from_version, to_version, actor, message, at, trace_parent, trace_steps) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind("apply")
        .bind(active_number)
        .bind(number)
        .bind(&new.actor)
        .bind(&new.message)
        .bind(now)
        .bind(trace.parent.as_deref())
        .bind(trace.steps_json())
        .execute(&mut **tx)
        .await?;
        Self::audit(
            tx,
            &new.actor,
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

    /// Stores a new version (not activated); returns its number.
    async fn insert_version_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        new: &NewVersion,
    ) -> Result<i64> {
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
        Ok(number)
    }

    /// Re-activates `to`, or the version active before the last activation.
    /// Returns (from, to).
    pub async fn rollback(
        &self,
        to: Option<i64>,
        actor: &str,
        message: &str,
    ) -> Result<(i64, i64)> {
        self.rollback_expecting(to, None, actor, message).await
    }

    /// [`Store::rollback`], refused with `Conflict` unless `expect` (when
    /// given) is the active version: `If-Match` on `POST /v1/rollback`.
    pub async fn rollback_expecting(
        &self,
        to: Option<i64>,
        expect: Option<i64>,
        actor: &str,
        message: &str,
    ) -> Result<(i64, i64)> {
        self.rollback_traced(to, expect, actor, message, &ChangeTrace::default())
            .await
    }

    /// [`Store::rollback_expecting`] whose activation carries `trace` (a
    /// rollback is its own config change, with its own trace).
    pub async fn rollback_traced(
        &self,
        to: Option<i64>,
        expect: Option<i64>,
        actor: &str,
        message: &str,
        trace: &ChangeTrace,
    ) -> Result<(i64, i64)> {
        let _serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let result = self
            .rollback_in(&mut tx, to, expect, actor, message, trace)
            .await;
        Self::finish(tx, result, |_| true).await
    }

    async fn rollback_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        to: Option<i64>,
        expect: Option<i64>,
        actor: &str,
        message: &str,
        trace: &ChangeTrace,
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
        if let Some(expected) = expect.filter(|e| *e != from) {
            return Err(StoreError::Conflict(format!(
                "version {from} is active, not {expected} (If-Match); nothing was changed"
            )));
        }
        // A rollback during a rollout aborts it: its admitted nodes return
        // to the active version. Without an explicit other target that is
        // the whole rollback (the new version was never active).
        if let Some(open) = self.abort_open_in(tx, actor).await?
            && to.is_none_or(|t| t == from)
        {
            Self::audit(
                tx,
                actor,
                "rollback",
                &format!(
                    "rollout {} aborted: version {} -> {from}",
                    open.id(),
                    open.summary.to_version
                ),
            )
            .await?;
            return Ok((open.summary.to_version, from));
        }
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
        let now = now_ms();
        let mut trace = trace.clone();
        trace.steps.push(TraceStep {
            name: "config.store".into(),
            start_unix_ms: now,
            end_unix_ms: now,
        });
        sqlx::query(
            "INSERT INTO activations (kind, from_version, to_version, actor, message, at, trace_parent, trace_steps) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind("rollback")
        .bind(from)
        .bind(target)
        .bind(actor)
        .bind(message)
        .bind(now)
        .bind(trace.parent.as_deref())
        .bind(trace.steps_json())
        .execute(&mut **tx)
        .await?;
        Self::audit(tx, actor, "rollback", &format!("{from} -> {target}")).await?;
        self.notify(tx, target).await?;
        Ok((from, target))
    }

    /// The active version with its source and resources.
    pub async fn active(&self) -> Result<Option<StoredVersion>> {
        let row = sqlx::query(
            "SELECT to_version, trace_parent FROM activations ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                let mut v = self.version(row.try_get("to_version")?).await?;
                v.trace_parent = row
                    .try_get::<Option<String>, _>("trace_parent")?
                    .filter(|p| !p.is_empty());
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// The trace of the newest change that delivered `number`: its newest
    /// activation, or — while it is only being rolled out, or if a rollout
    /// of it started later — its newest rollout. `None` when it never was.
    pub async fn version_trace(&self, number: i64) -> Result<Option<VersionTrace>> {
        let activation = sqlx::query(
            "SELECT kind, at, trace_parent, trace_steps FROM activations WHERE to_version = $1 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        let rollout = sqlx::query(
            "SELECT created_at, trace_parent, trace_steps FROM rollouts WHERE to_version = $1 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        let activation = activation
            .map(|r| {
                Ok::<_, StoreError>(VersionTrace {
                    kind: r.try_get("kind")?,
                    at_unix_ms: r.try_get("at")?,
                    trace: trace_of(&r)?,
                })
            })
            .transpose()?;
        let rollout = rollout
            .map(|r| {
                Ok::<_, StoreError>(VersionTrace {
                    kind: "rollout".into(),
                    at_unix_ms: r.try_get("created_at")?,
                    trace: trace_of(&r)?,
                })
            })
            .transpose()?;
        Ok(match (activation, rollout) {
            // A completed rollout's activation carries the rollout's trace.
            (Some(a), Some(r)) if r.at_unix_ms > a.at_unix_ms => Some(r),
            (Some(a), _) => Some(a),
            (None, r) => r,
        })
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
            trace_parent: None,
        })
    }

    /// Newest first.
    pub async fn versions(&self, limit: i64) -> Result<Vec<VersionRecord>> {
        self.versions_before(limit, None).await
    }

    /// Newest first, only numbers below `before` (a page of a list whose
    /// cursor is the last number seen).
    pub async fn versions_before(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<VersionRecord>> {
        let q = concat!(
            "SELECT ",
            version_columns!(),
            " FROM config_versions WHERE number < $1 ORDER BY number DESC LIMIT $2"
        );
        let rows = sqlx::query(q)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_record).collect()
    }

    /// Newest first.
    pub async fn activations(&self, limit: i64) -> Result<Vec<Activation>> {
        self.activations_before(limit, None).await
    }

    /// Newest first, only ids below `before`.
    pub async fn activations_before(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Activation>> {
        let rows = sqlx::query(
            "SELECT id, kind, from_version, to_version, actor, message, at FROM activations \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(activation).collect()
    }

    /// One activation by id.
    pub async fn activation(&self, id: i64) -> Result<Option<Activation>> {
        let row = sqlx::query(
            "SELECT id, kind, from_version, to_version, actor, message, at FROM activations \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(activation).transpose()
    }

    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        Ok(self
            .audit_before(limit, None)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Newest first, only ids below `before`; each entry with its id (the
    /// cursor of the next page).
    pub async fn audit_before(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<(i64, AuditEntry)>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, detail FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id")?,
                    AuditEntry {
                        at_unix_ms: r.try_get::<i64, _>("at")?,
                        actor: r.try_get::<String, _>("actor")?,
                        action: r.try_get::<String, _>("action")?,
                        detail: r.try_get::<String, _>("detail")?,
                    },
                ))
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
