//! Tokens: API tokens (REST API, with a role) and join tokens (the proxies'
//! gRPC streams, optionally scoped to one node id), in one table.
//!
//! Only the SHA-256 of a secret is stored; the secret itself is shown once,
//! by whoever created it. Rows are never deleted: revocation sets
//! `revoked_at`, so a revoked token stays listed and its name stays taken.
//! Whether a token may be used *now* (not revoked, not expired) is decided by
//! [`TokenRecord::usable`], at every use — this module only reads and writes
//! rows. Every change (create, rotate, revoke) writes an audit entry in the
//! same transaction.

use sqlx::Row;
use sqlx::any::AnyRow;

pub use sentinel_api::{TokenKind, TokenRecord, Unusable};

use super::{Result, Role, Store, StoreError, now_ms};

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub secret_hash: String,
    pub kind: TokenKind,
    pub role: Option<Role>,
    pub node_id: Option<String>,
    pub expires_at_unix_ms: Option<i64>,
}

/// What [`Store::ensure_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    /// The token existed with this secret already.
    Unchanged,
    /// The token existed with another secret; the old one no longer works.
    Rotated,
    /// The token exists with this secret but was revoked; it stays revoked.
    Revoked,
}

/// The columns of a `TokenRecord`, as a literal for `concat!` (sqlx takes
/// only static SQL).
macro_rules! token_columns {
    () => {
        "name, kind, role, node_id, created_at, expires_at, revoked_at"
    };
}

fn record(row: &AnyRow) -> Result<TokenRecord> {
    let kind: String = row.try_get("kind")?;
    let kind = TokenKind::parse(&kind)
        .ok_or_else(|| StoreError::Other(format!("stored token has an unknown kind `{kind}`")))?;
    let role: String = row.try_get("role")?;
    Ok(TokenRecord {
        name: row.try_get("name")?,
        kind,
        role: match kind {
            TokenKind::Api => Some(Role::parse(&role).ok_or_else(|| {
                StoreError::Other(format!("stored token has an unknown role `{role}`"))
            })?),
            TokenKind::Join => None,
        },
        node_id: row.try_get("node_id")?,
        created_at_unix_ms: row.try_get("created_at")?,
        expires_at_unix_ms: row.try_get("expires_at")?,
        revoked_at_unix_ms: row.try_get("revoked_at")?,
    })
}

/// The `role` column of a new row (NOT NULL since 0001; join tokens have
/// no role and store `join`, which no lookup parses as one).
fn role_column(kind: TokenKind, role: Option<Role>) -> &'static str {
    match (kind, role) {
        (TokenKind::Api, Some(r)) => r.as_str(),
        (TokenKind::Api, None) => Role::Read.as_str(),
        (TokenKind::Join, _) => "join",
    }
}

impl Store {
    /// Makes the token `name` exist with exactly this secret, for tokens
    /// given on the command line (`--bootstrap-token`, `--join-token`): a
    /// missing one is created, one with another secret is rotated (the old
    /// secret stops working at once, and the rotation is audited). A token
    /// the operator revoked stays revoked even when started with the same
    /// secret again.
    pub async fn ensure_token(
        &self,
        name: &str,
        secret_hash: &str,
        kind: TokenKind,
        role: Option<Role>,
    ) -> Result<Ensured> {
        let mut tx = self.pool.begin().await?;
        // Insert first: replicas starting together must not race between a
        // SELECT and an INSERT.
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, role, created_at, kind) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(secret_hash)
        .bind(role_column(kind, role))
        .bind(now_ms())
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            Self::audit(
                &mut tx,
                "sentinel-cp",
                "create-token",
                &format!("{name} ({})", kind.as_str()),
            )
            .await?;
            tx.commit().await?;
            return Ok(Ensured::Created);
        }
        let row = sqlx::query("SELECT token_hash, revoked_at FROM api_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let outcome = match row {
            None => {
                let _ = tx.rollback().await;
                return Err(StoreError::Conflict(format!(
                    "the secret given for `{name}` is already another token's secret; give each token its own"
                )));
            }
            Some(row) => {
                let hash: String = row.try_get("token_hash")?;
                let revoked: Option<i64> = row.try_get("revoked_at")?;
                if hash == secret_hash {
                    if revoked.is_some() {
                        Ensured::Revoked
                    } else {
                        Ensured::Unchanged
                    }
                } else {
                    sqlx::query(
                        "UPDATE api_tokens SET token_hash = $1, role = $2, kind = $3, node_id = NULL, \
                         expires_at = NULL, revoked_at = NULL, created_at = $4 WHERE name = $5",
                    )
                    .bind(secret_hash)
                    .bind(role_column(kind, role))
                    .bind(kind.as_str())
                    .bind(now_ms())
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    Self::audit(
                        &mut tx,
                        "sentinel-cp",
                        "rotate-token",
                        &format!("{name} ({}): a new secret was given at start; the old one no longer works", kind.as_str()),
                    )
                    .await?;
                    Ensured::Rotated
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Creates a token; `Conflict` when the name is taken (also by a
    /// revoked token: names are never reused, so the audit trail stays
    /// unambiguous).
    pub async fn create_token(&self, new: &NewToken, actor: &str) -> Result<TokenRecord> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, role, created_at, kind, node_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&new.name)
        .bind(&new.secret_hash)
        .bind(role_column(new.kind, new.role))
        .bind(now)
        .bind(new.kind.as_str())
        .bind(&new.node_id)
        .bind(new.expires_at_unix_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let _ = tx.rollback().await;
            return Err(StoreError::Conflict(format!(
                "a token named `{}` exists (names of revoked tokens are not reused)",
                new.name
            )));
        }
        let detail = match (new.kind, new.role, &new.node_id) {
            (TokenKind::Api, Some(r), _) => format!("{} (api, {})", new.name, r.as_str()),
            (_, _, Some(node)) => format!("{} (join, node {node})", new.name),
            _ => format!("{} ({})", new.name, new.kind.as_str()),
        };
        Self::audit(&mut tx, actor, "create-token", &detail).await?;
        tx.commit().await?;
        Ok(TokenRecord {
            name: new.name.clone(),
            kind: new.kind,
            role: match new.kind {
                TokenKind::Api => Some(new.role.unwrap_or(Role::Read)),
                TokenKind::Join => None,
            },
            node_id: new.node_id.clone(),
            created_at_unix_ms: now,
            expires_at_unix_ms: new.expires_at_unix_ms,
            revoked_at_unix_ms: None,
        })
    }

    /// The token whose secret hashes to `secret_hash`, revoked or expired
    /// ones included (the caller decides with [`TokenRecord::usable`]).
    pub async fn token(&self, secret_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Revokes `name`: its secret stops working on every replica within the
    /// token cache's lifetime. Revoking a revoked token is a no-op that
    /// returns the record as it is.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenRecord> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() > 0 {
            Self::audit(&mut tx, actor, "revoke-token", name).await?;
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let _ = tx.rollback().await;
            return Err(StoreError::NotFound(format!("no token named `{name}`")));
        };
        let found = record(&row)?;
        tx.commit().await?;
        Ok(found)
    }
}
