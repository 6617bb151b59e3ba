//! The fleet as this replica sees it: the active configuration (encoded
//! once, shared by every stream), change notification to sessions, and the
//! latest health report of each connected proxy.
//!
//! The active configuration is loaded from the store at start, after every
//! apply or rollback on this replica, on a PostgreSQL notification from
//! another replica, and by a periodic poll that catches a missed
//! notification. Sessions watch it; a change wakes every session once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sentinel_proto as pb;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// The active configuration, ready to stream.
#[derive(Debug)]
pub struct ActiveConfig {
    /// 0 before the first apply.
    pub number: i64,
    pub hash: String,
    /// Sorted by (type, name); bodies are shared `Bytes`.
    pub resources: Vec<pb::Resource>,
    pub index: HashMap<(i32, String), usize>,
    /// When this replica learnt about it (convergence is measured from here).
    pub activated: Instant,
}

impl ActiveConfig {
    pub fn empty() -> Self {
        Self {
            number: 0,
            hash: String::new(),
            resources: Vec::new(),
            index: HashMap::new(),
            activated: Instant::now(),
        }
    }

    pub fn new(number: i64, resources: Vec<pb::Resource>) -> Self {
        let hash = sentinel_config::config_hash(
            resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
        );
        let index = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.r#type, r.name.clone()), i))
            .collect();
        Self {
            number,
            hash,
            resources,
            index,
            activated: Instant::now(),
        }
    }

    pub fn version_of(&self, kind: i32, name: &str) -> Option<&str> {
        self.index
            .get(&(kind, name.to_string()))
            .map(|i| self.resources[*i].version.as_str())
    }
}

/// One proxy's last health report.
#[derive(Debug, Clone)]
pub struct Reported {
    pub region: String,
    pub targets: Vec<pb::TargetHealthReport>,
    pub at_unix_ms: i64,
}

/// A change of a node's state, written to the store in the background so
/// that streams never wait for the database (and keep working without it).
#[derive(Debug, Clone)]
pub enum NodeUpdate {
    Connected(pb::Node),
    Disconnected(String),
    Ack {
        id: String,
        version: i64,
        hash: String,
    },
    Nack {
        id: String,
        version: i64,
        resource: String,
        error: String,
    },
}

pub struct Fleet {
    updates: tokio::sync::mpsc::UnboundedSender<NodeUpdate>,
    /// Deltas between two configurations, computed once for every session
    /// that holds the first and needs the second.
    deltas: Mutex<HashMap<(String, String), Arc<crate::stream::Delta>>>,
    pub store: Store,
    pub replica: String,
    pub region: String,
    active: watch::Sender<Arc<ActiveConfig>>,
    refresh_lock: tokio::sync::Mutex<()>,
    health: Mutex<HashMap<String, Reported>>,
    /// Sessions by node id, with the region (for metrics and status).
    pub sessions: Mutex<HashMap<String, String>>,
}

impl Fleet {
    pub fn new(store: Store, replica: String, region: String) -> Arc<Fleet> {
        let (active, _) = watch::channel(Arc::new(ActiveConfig::empty()));
        let (updates, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_updates(store.clone(), replica.clone(), rx));
        Arc::new(Fleet {
            updates,
            deltas: Mutex::new(HashMap::new()),
            store,
            replica,
            region,
            active,
            refresh_lock: tokio::sync::Mutex::new(()),
            health: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn current(&self) -> Arc<ActiveConfig> {
        self.active.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveConfig>> {
        self.active.subscribe()
    }

    /// Reloads the active version from the store; returns whether it changed.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let _one = self.refresh_lock.lock().await;
        let Some(stored) = self.store.active().await? else {
            return Ok(false);
        };
        let current = self.current();
        let mut resources = stored.resources;
        resources.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
        let next = ActiveConfig::new(stored.record.number, resources);
        if next.number == current.number && next.hash == current.hash {
            return Ok(false);
        }
        tracing::info!(version = next.number, hash = %&next.hash[..12.min(next.hash.len())], "active configuration changed");
        self.active.send_replace(Arc::new(next));
        Ok(true)
    }

    /// Queues a node-state change for the store.
    pub fn record(&self, update: NodeUpdate) {
        let _ = self.updates.send(update);
    }

    /// The delta from `from` to `to`, computed once (under the lock, so a
    /// thousand sessions waking together do not all compute it) and shared.
    pub fn delta_between(
        &self,
        from: &ActiveConfig,
        to: &ActiveConfig,
    ) -> Arc<crate::stream::Delta> {
        let key = (from.hash.clone(), to.hash.clone());
        let compute = || {
            let held = from
                .resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str()));
            Arc::new(crate::stream::delta(held, to))
        };
        let Ok(mut cache) = self.deltas.lock() else {
            return compute();
        };
        if let Some(d) = cache.get(&key) {
            return Arc::clone(d);
        }
        if cache.len() >= 64 {
            cache.clear();
        }
        let d = compute();
        cache.insert(key, Arc::clone(&d));
        d
    }

    pub fn report_health(&self, node: &str, region: &str, targets: Vec<pb::TargetHealthReport>) {
        if let Ok(mut h) = self.health.lock() {
            h.insert(
                node.to_string(),
                Reported {
                    region: region.to_string(),
                    targets,
                    at_unix_ms: crate::store::now_ms(),
                },
            );
        }
    }

    pub fn forget_health(&self, node: &str) {
        if let Ok(mut h) = self.health.lock() {
            h.remove(node);
        }
    }

    pub fn health_reports(&self) -> HashMap<String, Reported> {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn session_started(&self, node: &str, region: &str) -> bool {
        let Ok(mut s) = self.sessions.lock() else {
            return false;
        };
        let fresh = s.insert(node.to_string(), region.to_string()).is_none();
        crate::telemetry::connected(&s);
        fresh
    }

    pub fn session_ended(&self, node: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(node);
            crate::telemetry::connected(&s);
        }
        self.forget_health(node);
    }
}

/// Writes queued node updates in batches (one transaction each). A batch
/// that fails (database down) is retried until it is written.
async fn write_updates(
    store: Store,
    replica: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<NodeUpdate>,
) {
    let mut batch: Vec<NodeUpdate> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(u) => batch.push(u),
                None => return,
            }
        }
        while batch.len() < 2000 {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        match store.write_node_updates(&batch, &replica).await {
            Ok(()) => batch.clear(),
            Err(e) => {
                tracing::warn!(error = %e, pending = batch.len(), "cannot record node state; will retry");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
