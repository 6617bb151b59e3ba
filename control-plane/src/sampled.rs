//! Gauges sampled once a second rather than updated where things happen:
//! `sentinel_cp_nodes_behind{region}` (from the sessions open on this
//! replica, [`Fleet::nodes_behind`]) and `sentinel_cp_store_up` (the
//! database answers `SELECT 1` — the query `/readyz` runs — within
//! [`STORE_CHECK_TIMEOUT`]). It also registers `sentinel_cp_nacks_total`
//! at 0 when the replica starts, for the alert rule that takes its
//! `increase`.
//!
//! Sampling keeps both true without touching the paths that change them:
//! "behind" depends on the active version, the open rollout and every
//! session's last answer, and a store error can come from any of dozens of
//! queries (and is retried by the writers, which would otherwise flap the
//! gauge). A replica reports only its own sessions; a node streams to one
//! replica at a time, so summing over replicas counts each node once.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;

/// How often both gauges are sampled.
pub const EVERY: Duration = Duration::from_secs(1);
/// Longest a store check may take before the store counts as down.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub fn spawn(fleet: Arc<Fleet>) {
    // The NACK counter exists from the start: Prometheus's `increase` sees
    // the first NACK only as a step from a scraped 0 (the alert rule
    // SentinelConfigNacks depends on it).
    metrics::counter!("sentinel_cp_nacks_total").increment(0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (region, n) in fleet.nodes_behind() {
                metrics::gauge!("sentinel_cp_nodes_behind", "region" => region).set(n as f64);
            }
            let up = matches!(
                tokio::time::timeout(STORE_CHECK_TIMEOUT, fleet.store.ping()).await,
                Ok(Ok(()))
            );
            metrics::gauge!("sentinel_cp_store_up").set(if up { 1.0 } else { 0.0 });
        }
    });
}
