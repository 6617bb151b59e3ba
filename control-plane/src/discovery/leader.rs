//! Which replica runs the discovery sources.
//!
//! - SQLite: this process is the only replica; it always leads.
//! - PostgreSQL: the replica holding the session advisory lock
//!   [`LEADER_LOCK`] on a dedicated connection leads. The others try again
//!   every [`ELECTION_RETRY`]. The leader pings its connection every
//!   [`ELECTION_RETRY`]; when the ping fails (or the connection breaks) it
//!   stops every source (`Discovery::stop_all`) and competes again. When a
//!   leader dies, PostgreSQL ends its session and releases the lock, so
//!   another replica leads within about one retry interval.
//!
//! While leading, the replica reconciles the sources with the discovered
//! upstreams of every stored version that becomes active.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sentinel_discovery::{Discovered, Discovery, Known};
use sqlx::Connection;
use tokio::sync::mpsc;

use crate::fleet::Fleet;
use crate::store::Dialect;

/// The advisory lock key of discovery leadership (7310 serialises applies).
pub const LEADER_LOCK: i64 = 7312;

/// How often a follower tries to lead, and a leader checks its connection.
pub const ELECTION_RETRY: Duration = Duration::from_secs(1);

/// Starts competing for (SQLite: takes) discovery leadership; sources send
/// their sets to `updates` (the intake's channel).
pub fn spawn(fleet: Arc<Fleet>, updates: mpsc::Sender<Discovered>) {
    match fleet.store.dialect {
        Dialect::Sqlite => {
            tokio::spawn(async move {
                lead_until(&fleet, &updates, std::future::pending::<()>()).await;
            });
        }
        Dialect::Postgres => {
            tokio::spawn(elect(fleet, updates));
        }
    }
}

/// Leads until `lost` completes: runs the sources for the active stored
/// version's discovered upstreams, and again whenever it changes.
async fn lead_until(
    fleet: &Fleet,
    updates: &mpsc::Sender<Discovered>,
    lost: impl Future<Output = ()>,
) {
    let runner = Arc::new(Discovery::new(updates.clone(), super::METRIC_PREFIX));
    // Start from what the fleet holds (the previous leader's sets, loaded
    // from the store): a new leader's first empty answer is held for the
    // grace period, its errors keep those targets, generations continue.
    if let Err(e) = super::load(fleet).await {
        tracing::warn!(error = %e, "could not load the stored endpoint sets before leading");
    }
    for set in fleet.endpoint_sets() {
        runner.seed(
            &set.upstream,
            Known {
                targets: set.targets.clone(),
                generation: u64::try_from(set.generation).unwrap_or(0),
                stale: set.stale,
                error: set.error.clone(),
                last_success_unix_ms: set.last_success_unix_ms,
            },
        );
    }
    fleet.discovery.set_runner(Some(Arc::clone(&runner)));
    tracing::info!(replica = %fleet.replica, "leading service discovery");
    let mut base = fleet.subscribe_base();
    runner.reconcile(&base.borrow_and_update().discovered);
    tokio::pin!(lost);
    loop {
        tokio::select! {
            _ = &mut lost => break,
            changed = base.changed() => {
                if changed.is_err() {
                    break;
                }
                let upstreams = base.borrow_and_update().discovered.clone();
                runner.reconcile(&upstreams);
            }
        }
    }
    runner.stop_all();
    fleet.discovery.set_runner(None);
    tracing::warn!(replica = %fleet.replica, "no longer leading service discovery; sources stopped");
}

async fn elect(fleet: Arc<Fleet>, updates: mpsc::Sender<Discovered>) {
    loop {
        match sqlx::postgres::PgConnection::connect(&fleet.store.url).await {
            Ok(mut conn) => loop {
                let got: Result<bool, sqlx::Error> =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(LEADER_LOCK)
                        .fetch_one(&mut conn)
                        .await;
                match got {
                    Ok(true) => {
                        let lost = async {
                            loop {
                                tokio::time::sleep(ELECTION_RETRY).await;
                                if let Err(e) = conn.ping().await {
                                    tracing::warn!(error = %e, "the discovery leader's connection broke");
                                    break;
                                }
                            }
                        };
                        lead_until(&fleet, &updates, lost).await;
                        // A new connection: the old session (and its lock,
                        // if it still exists) ends when `conn` is dropped.
                        break;
                    }
                    Ok(false) => tokio::time::sleep(ELECTION_RETRY).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "discovery election query failed");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "cannot connect for the discovery election"),
        }
        tokio::time::sleep(ELECTION_RETRY).await;
    }
}
