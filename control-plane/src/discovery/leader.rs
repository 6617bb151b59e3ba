//! Which replica runs the discovery sources: the holder of the advisory
//! lock [`LEADER_LOCK`] (`crate::leader`: SQLite always leads). When
//! leadership is lost it stops every source (`Discovery::stop_all`).
//!
//! While leading, the replica reconciles the sources with the discovered
//! upstreams of every stored version that becomes active.

use std::future::Future;
use std::sync::Arc;

use sentinel_discovery::{Discovered, Discovery, Known};
use tokio::sync::mpsc;

use crate::fleet::Fleet;

/// The advisory lock key of discovery leadership (7310 serialises applies).
pub const LEADER_LOCK: i64 = 7312;

/// Starts competing for (SQLite: takes) discovery leadership; sources send
/// their sets to `updates` (the intake's channel).
pub fn spawn(fleet: Arc<Fleet>, updates: mpsc::Sender<Discovered>) {
    let leading = Arc::clone(&fleet);
    crate::leader::spawn(fleet, LEADER_LOCK, "discovery", move |lost| {
        let (fleet, updates) = (Arc::clone(&leading), updates.clone());
        Box::pin(async move { lead_until(&fleet, &updates, lost).await })
    });
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
