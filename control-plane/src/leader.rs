//! One replica does a job for the whole fleet (runs the discovery sources,
//! drives rollouts): the one holding a PostgreSQL session advisory lock.
//!
//! - SQLite: this process is the only replica; it always leads.
//! - PostgreSQL: the replica holding the lock on a dedicated connection
//!   leads. The others try again every [`ELECTION_RETRY`]. The leader pings
//!   its connection every [`ELECTION_RETRY`]; when the ping fails (or the
//!   connection breaks) its `lost` future completes, the job stops, and it
//!   competes again. When a leader dies, PostgreSQL ends its session and
//!   releases the lock, so another replica leads within about one retry
//!   interval.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Connection;

use crate::fleet::Fleet;
use crate::store::Dialect;

/// How often a follower tries to lead, and a leader checks its connection.
pub const ELECTION_RETRY: Duration = Duration::from_secs(1);

/// Competes for (SQLite: takes) the leadership `lock` of `job` (named in
/// the logs); while leading runs `lead(lost)`, which must return soon after
/// `lost` completes.
pub fn spawn<F>(fleet: Arc<Fleet>, lock: i64, job: &'static str, lead: F)
where
    F: for<'a> Fn(BoxFuture<'a, ()>) -> BoxFuture<'a, ()> + Send + Sync + 'static,
{
    match fleet.store.dialect {
        Dialect::Sqlite => {
            tokio::spawn(lead(Box::pin(std::future::pending::<()>())));
        }
        Dialect::Postgres => {
            tokio::spawn(elect(fleet, lock, job, lead));
        }
    }
}

async fn elect<F>(fleet: Arc<Fleet>, lock: i64, job: &'static str, lead: F)
where
    F: for<'a> Fn(BoxFuture<'a, ()>) -> BoxFuture<'a, ()>,
{
    loop {
        match sqlx::postgres::PgConnection::connect(&fleet.store.url).await {
            Ok(mut conn) => loop {
                let got: Result<bool, sqlx::Error> =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(lock)
                        .fetch_one(&mut conn)
                        .await;
                match got {
                    Ok(true) => {
                        let lost = async {
                            loop {
                                tokio::time::sleep(ELECTION_RETRY).await;
                                if let Err(e) = conn.ping().await {
                                    tracing::warn!(error = %e, job, "the leader's connection broke");
                                    break;
                                }
                            }
                        };
                        lead(Box::pin(lost)).await;
                        // A new connection: the old session (and its lock,
                        // if it still exists) ends when `conn` is dropped.
                        break;
                    }
                    Ok(false) => tokio::time::sleep(ELECTION_RETRY).await,
                    Err(e) => {
                        tracing::debug!(error = %e, job, "election query failed");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, job, "cannot connect for the election"),
        }
        tokio::time::sleep(ELECTION_RETRY).await;
    }
}
