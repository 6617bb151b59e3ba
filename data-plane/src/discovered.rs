//! Service discovery in a standalone proxy (`sentinel --config FILE` with a
//! `discovery "dns"|"consul"|"kubernetes"` block).
//!
//! The same [`sentinel_discovery::Discovery`] the control plane runs, in
//! process, with the metric prefix `sentinel_discovery`. Each set it sends
//! goes live through the one apply path of every configuration change: the
//! live runtime's snapshot with that upstream's `Endpoints` replaced, built
//! and swapped by [`Proxy::apply`] on the blocking pool. So health state,
//! pools and breakers are handed over exactly as on a config swap.
//!
//! The sets are also kept here, so that a SIGHUP reload (whose freshly
//! compiled snapshot has empty endpoints for discovered upstreams) starts
//! from the last known targets instead of from none ([`Self::overlay`]).
//! Discovery updates and reloads are serialised by [`Self::serial`], so a
//! reload is never overwritten by an update built from the snapshot before
//! it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sentinel_config::Snapshot;
use sentinel_discovery::{Discovered, Discovery};
use sentinel_proto as pb;

use crate::apply::{Proxy, off_workers};
use crate::clock::unix_ms;

pub struct StandaloneDiscovery {
    discovery: Discovery,
    sets: Mutex<HashMap<String, Vec<pb::Target>>>,
    /// Held while a reload or a discovery update reads the live snapshot
    /// and applies a new one.
    pub serial: Mutex<()>,
}

impl StandaloneDiscovery {
    /// Starts the sources of the live config's discovered upstreams and the
    /// task that applies what they find.
    pub fn start(proxy: Arc<Proxy>) -> Arc<StandaloneDiscovery> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let this = Arc::new(StandaloneDiscovery {
            discovery: Discovery::new(tx, sentinel_discovery::STANDALONE_METRIC_PREFIX),
            sets: Mutex::new(HashMap::new()),
            serial: Mutex::new(()),
        });
        if let Some(rt) = proxy.runtime() {
            this.discovery.reconcile(&rt.snapshot.upstreams);
        }
        tokio::spawn(apply_updates(Arc::downgrade(&this), proxy, rx));
        this
    }

    /// Follows a reloaded configuration: starts, stops or restarts sources.
    pub fn reconcile(&self, upstreams: &[pb::Upstream]) {
        self.discovery.reconcile(upstreams);
        if let Ok(mut sets) = self.sets.lock() {
            sets.retain(|name, _| upstreams.iter().any(|u| &u.name == name && discovered(u)));
        }
    }

    /// Puts the last discovered targets into a freshly compiled snapshot.
    pub fn overlay(&self, snapshot: &mut Snapshot) {
        let Ok(sets) = self.sets.lock() else {
            return;
        };
        overlay(snapshot, &sets);
    }

    pub fn status(&self) -> Vec<sentinel_discovery::SourceStatus> {
        self.discovery.status()
    }
}

fn discovered(u: &pb::Upstream) -> bool {
    !matches!(
        u.discovery.as_ref().and_then(|d| d.source.as_ref()),
        None | Some(pb::discovery::Source::Static(_))
    )
}

fn overlay(snapshot: &mut Snapshot, sets: &HashMap<String, Vec<pb::Target>>) {
    for u in snapshot.upstreams.iter().filter(|u| discovered(u)) {
        let Some(targets) = sets.get(&u.name) else {
            continue;
        };
        match snapshot.endpoints.iter_mut().find(|e| e.upstream == u.name) {
            Some(e) => e.targets = targets.clone(),
            None => snapshot.endpoints.push(pb::Endpoints {
                upstream: u.name.clone(),
                targets: targets.clone(),
            }),
        }
    }
}

async fn apply_updates(
    this: std::sync::Weak<StandaloneDiscovery>,
    proxy: Arc<Proxy>,
    mut rx: tokio::sync::mpsc::Receiver<Discovered>,
) {
    while let Some(first) = rx.recv().await {
        let Some(this) = this.upgrade() else {
            return;
        };
        // Coalesce what is already queued into one apply.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if let Ok(mut sets) = this.sets.lock() {
            for d in &batch {
                if d.stale {
                    tracing::warn!(
                        upstream = %d.upstream,
                        source = d.source.as_str(),
                        error = d.error.as_deref().unwrap_or(""),
                        targets = d.targets.len(),
                        "discovery source failing; serving its last known targets"
                    );
                }
                sets.insert(d.upstream.clone(), d.targets.clone());
            }
        }
        let proxy = Arc::clone(&proxy);
        let worker = Arc::clone(&this);
        let result = off_workers(move || {
            let _serial = worker.serial.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = proxy.runtime() else {
                return Ok(());
            };
            let mut snapshot = rt.snapshot.clone();
            if let Ok(sets) = worker.sets.lock() {
                overlay(&mut snapshot, &sets);
            }
            if snapshot.endpoints == rt.snapshot.endpoints {
                return Ok(());
            }
            let mut version = rt.version.clone();
            version.applied_unix_ms = unix_ms();
            proxy.apply(snapshot, version).map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => {
                for d in &batch {
                    tracing::info!(
                        upstream = %d.upstream,
                        source = d.source.as_str(),
                        targets = d.targets.len(),
                        generation = d.generation,
                        stale = d.stale,
                        "discovered endpoints applied"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "discovered endpoints could not be applied; keeping the running config")
            }
            Err(e) => {
                tracing::error!(error = %e, "discovered endpoints could not be applied; keeping the running config")
            }
        }
    }
}
