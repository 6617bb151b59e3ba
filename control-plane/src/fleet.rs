//! The fleet as this replica sees it: the active configuration (encoded
//! once, shared by every stream), change notification to sessions, and the
//! latest health report of each connected proxy.
//!
//! The active configuration is loaded from the store at start, after every
//! apply or rollback on this replica, on a PostgreSQL notification from
//! another replica, and by a periodic poll that catches a missed
//! notification. Sessions watch it; a change wakes every session once.
//!
//! What sessions stream is the *effective* configuration: the stored
//! active version with the `Endpoints` resource of every upstream it
//! discovers (dns, consul, kubernetes) replaced by the latest discovered
//! set ([`Fleet::overlay_endpoints`] + [`Fleet::rebuild`], fed by
//! `discovery`). Its `number` is the stored version's, its `hash` the
//! effective one, so a discovery change is a new hash under the same
//! number and reaches proxies as an endpoints-only delta. The overlay is
//! kept across activations: a rollback keeps the discovered endpoints.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use sentinel_proto as pb;
use tokio::sync::watch;

pub use crate::changes::{ActiveConfig, EndpointSet, Epoch, NodeUpdate};
use crate::rollouts::gates::Sample;
use crate::store::{Store, StoreError};

/// One proxy's last health report.
#[derive(Debug, Clone)]
pub struct Reported {
    pub region: String,
    pub targets: Vec<pb::TargetHealthReport>,
    pub at_unix_ms: i64,
    /// The health stream that sent it (only that stream's end forgets it).
    pub epoch: Epoch,
}

/// The delta sessions open on this replica: node id → (region, epoch).
/// A node has at most one; a newer session of the same node replaces the
/// older one, and the older one's end then changes nothing.
#[derive(Debug, Default)]
pub struct Sessions {
    by_node: HashMap<String, (String, Epoch)>,
    by_region: HashMap<String, usize>,
    /// What each node's current session last converged on (ACK, or nothing
    /// to send): `/v1/discovery` counts the nodes on each endpoint set.
    holds: HashMap<String, Arc<ActiveConfig>>,
}

impl Sessions {
    /// Registers `epoch` as the node's current session.
    fn start(&mut self, node: &str, region: &str, epoch: Epoch) {
        if let Some((old_region, _)) = self
            .by_node
            .insert(node.to_string(), (region.to_string(), epoch))
        {
            self.count(&old_region, -1);
        }
        self.count(region, 1);
    }

    /// Ends the session `epoch` of `node` if it is still the current one;
    /// returns whether it was.
    fn end(&mut self, node: &str, epoch: Epoch) -> bool {
        match self.by_node.get(node) {
            Some((_, current)) if *current == epoch => {}
            _ => return false,
        }
        if let Some((region, _)) = self.by_node.remove(node) {
            self.count(&region, -1);
        }
        self.holds.remove(node);
        true
    }

    fn count(&mut self, region: &str, by: i64) {
        let n = self.by_region.entry(region.to_string()).or_default();
        *n = (*n as i64 + by).max(0) as usize;
        crate::telemetry::connected(region, *n);
    }

    /// Nodes whose current session holds `upstream`'s endpoints at
    /// `version`, and the number of sessions that hold anything.
    pub fn holding(&self, upstream: &str, version: &str) -> (usize, usize) {
        let kind = pb::ResourceType::Endpoints as i32;
        let on = self
            .holds
            .values()
            .filter(|c| c.version_of(kind, upstream) == Some(version))
            .count();
        (on, self.holds.len())
    }

    /// Sessions open on this replica.
    pub fn open(&self) -> usize {
        self.by_node.len()
    }

    /// The region of the node's current session.
    pub fn region(&self, node: &str) -> Option<&str> {
        self.by_node.get(node).map(|(r, _)| r.as_str())
    }
}

/// Orders the sessions of one node, across replicas: microseconds since the
pub struct Fleet {
    /// Node state on its way to the store (coalesced, bounded, retried).
    updates: crate::store::writer::NodeWriter,
    /// Deltas between two configurations, computed once for every session
    /// that holds the first and needs the second.
    deltas: Mutex<HashMap<(String, String), Arc<crate::changes::Delta>>>,
    pub store: Store,
    pub replica: String,
    pub region: String,
    active: watch::Sender<Arc<ActiveConfig>>,
    /// The stored active version (before the overlay) and its discovered
    /// upstreams; the discovery leader watches it to reconcile its sources.
    base: watch::Sender<Arc<Base>>,
    /// The latest endpoint set of every discovered upstream (kept across
    /// activations).
    endpoints: Mutex<HashMap<String, Arc<EndpointSet>>>,
    /// Upstream → targets the fleet's health quorum marks down (`health.rs`);
    /// applied to upstreams with `fleet-health #true`.
    marks: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// Serialises rebuilds of the effective configuration.
    rebuild_lock: Mutex<()>,
    /// Whether this replica leads discovery, and its runner while it does.
    pub discovery: crate::discovery::State,
    refresh_lock: tokio::sync::Mutex<()>,
    health: Mutex<HashMap<String, Reported>>,
    /// The delta sessions open on this replica.
    pub sessions: Mutex<Sessions>,
    /// Proxies connected fleet-wide, as the poll last counted them.
    fleet_size: std::sync::atomic::AtomicU32,
    /// What the open rollout serves, and to whom (`rollouts/`).
    rollout: watch::Sender<Arc<RolloutView>>,
    /// The open rollout's stored version (before the overlay) and its
    /// admitted nodes, as last loaded from the store.
    rollout_base: Mutex<Option<LoadedRollout>>,
    /// Serialises loads of the open rollout.
    rollout_lock: tokio::sync::Mutex<()>,
    /// Each node's recent traffic and health samples (the rollout gates').
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

/// The open rollout as loaded: its id, its stored version, its admitted nodes.
type LoadedRollout = (i64, Arc<Base>, HashSet<String>);

/// Samples kept per node (about two minutes at one report a second).
pub const SAMPLES_PER_NODE: usize = 120;

/// What the open rollout serves: its version's effective configuration to
/// the admitted nodes; every other node gets the active configuration.
#[derive(Debug, Default)]
pub struct RolloutView {
    /// The rollout (0: none open).
    pub id: i64,
    /// The effective configuration of the rollout's version.
    pub target: Option<Arc<ActiveConfig>>,
    pub admitted: HashSet<String>,
}

impl Fleet {
    pub fn new(store: Store, replica: String, region: String) -> Arc<Fleet> {
        let (active, _) = watch::channel(Arc::new(ActiveConfig::empty()));
        let (base, _) = watch::channel(Arc::new(Base::default()));
        let updates = crate::store::writer::NodeWriter::spawn(store.clone(), replica.clone());
        Arc::new(Fleet {
            updates,
            deltas: Mutex::new(HashMap::new()),
            store,
            replica,
            region,
            active,
            base,
            endpoints: Mutex::new(HashMap::new()),
            marks: Mutex::new(HashMap::new()),
            rebuild_lock: Mutex::new(()),
            discovery: crate::discovery::State::default(),
            refresh_lock: tokio::sync::Mutex::new(()),
            health: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Sessions::default()),
            fleet_size: std::sync::atomic::AtomicU32::new(0),
            rollout: watch::channel(Arc::new(RolloutView::default())).0,
            rollout_base: Mutex::new(None),
            rollout_lock: tokio::sync::Mutex::new(()),
            samples: Mutex::new(HashMap::new()),
        })
    }

    /// The fleet's size for `DeltaResponse.peers`: proxies connected to any
    /// live replica as the store last counted them, and never fewer than
    /// the sessions open here.
    pub fn peers(&self) -> u32 {
        let local = self.sessions.lock().map_or(0, |s| s.open());
        self.fleet_size
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(u32::try_from(local).unwrap_or(u32::MAX))
    }

    /// Records the fleet-wide count of connected proxies (the poll).
    pub fn set_fleet_size(&self, n: u32) {
        self.fleet_size
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn current(&self) -> Arc<ActiveConfig> {
        self.active.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveConfig>> {
        self.active.subscribe()
    }

    /// Reloads the active version from the store; returns whether the
    /// effective configuration changed.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let _one = self.refresh_lock.lock().await;
        let Some(stored) = self.store.active().await? else {
            return Ok(false);
        };
        let known = self.base();
        // A later activation of the same version (a rollback to what this
        // replica still serves) is a new change: its trace is the one to send.
        if known.config.number == stored.record.number
            && known.stored_hash == stored.record.hash
            && known.config.trace_parent == stored.trace_parent.as_deref().unwrap_or_default()
        {
            return Ok(false);
        }
        let mut resources = stored.resources;
        resources.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
        let config =
            ActiveConfig::new(stored.record.number, resources).with_trace(stored.trace_parent);
        tracing::info!(version = config.number, hash = %&config.hash[..12.min(config.hash.len())], "active configuration changed");
        self.base
            .send_replace(Arc::new(Base::new(Arc::new(config), stored.record.hash)));
        Ok(self.rebuild())
    }

    /// The stored active version and its discovered upstreams.
    pub fn base(&self) -> Arc<Base> {
        self.base.borrow().clone()
    }

    pub fn subscribe_base(&self) -> watch::Receiver<Arc<Base>> {
        self.base.subscribe()
    }

    /// Keeps the sets that differ from what the overlay holds for their
    /// upstream (targets, health, stale flag, error or generation); returns
    /// those. The intake's path: this replica's own sources. Does not
    /// rebuild: call [`Fleet::rebuild`] after a batch.
    pub fn overlay_endpoints(
        &self,
        sets: impl IntoIterator<Item = EndpointSet>,
    ) -> Vec<Arc<EndpointSet>> {
        self.overlay(sets, |_, _| true)
    }

    /// Like [`Fleet::overlay_endpoints`] for sets loaded from the store.
    /// On a replica that does not lead, the store is the truth: any set
    /// that differs is taken. On the leader, a stored set is taken only
    /// when it was written after the one held, so a load never replaces a
    /// newer set its own sources produced (and clock skew between replicas
    /// never holds a follower back).
    pub fn overlay_stored(
        &self,
        sets: impl IntoIterator<Item = EndpointSet>,
        leader: bool,
    ) -> Vec<Arc<EndpointSet>> {
        self.overlay(sets, |held, new| {
            !leader || new.updated_at_unix_ms > held.updated_at_unix_ms
        })
    }

    fn overlay(
        &self,
        sets: impl IntoIterator<Item = EndpointSet>,
        newer: impl Fn(&EndpointSet, &EndpointSet) -> bool,
    ) -> Vec<Arc<EndpointSet>> {
        let Ok(mut held) = self.endpoints.lock() else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        for set in sets {
            let keep_held = held.get(&set.upstream).is_some_and(|h| {
                !newer(h, &set)
                    || (h.resource.version == set.resource.version
                        && h.stale == set.stale
                        && h.error == set.error
                        && h.generation == set.generation
                        && h.source == set.source)
            });
            if !keep_held {
                let set = Arc::new(set);
                held.insert(set.upstream.clone(), Arc::clone(&set));
                changed.push(set);
            }
        }
        changed
    }

    /// The overlay's current set of every upstream, sorted by upstream.
    pub fn endpoint_sets(&self) -> Vec<Arc<EndpointSet>> {
        let mut v: Vec<_> = self
            .endpoints
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        v
    }

    /// Recomputes the effective configuration from the stored version and
    /// the overlay, and publishes it when its hash changed; returns whether
    /// it did. Cost: one clone of the resource list (shared bodies), one
    /// configuration hash; the index is shared with the stored version.
    pub fn rebuild(&self) -> bool {
        let Ok(_one) = self.rebuild_lock.lock() else {
            return false;
        };
        let next = self.effective(&self.base());
        self.publish_rollout();
        let current = self.current();
        if next.number == current.number
            && next.hash == current.hash
            && next.trace_parent == current.trace_parent
        {
            return false;
        }
        tracing::debug!(version = next.number, hash = %&next.hash[..12.min(next.hash.len())], "effective configuration changed");
        metrics::counter!("sentinel_cp_effective_rebuilds_total").increment(1);
        self.active.send_replace(next);
        true
    }

    /// `base` with the overlay applied: discovered endpoints and fleet-health marks.
    fn effective(&self, base: &Base) -> Arc<ActiveConfig> {
        let kind = pb::ResourceType::Endpoints as i32;
        let mut replaced: Vec<(usize, pb::Resource)> = match self.endpoints.lock() {
            Ok(held) => base
                .discovered
                .iter()
                .filter_map(|u| {
                    let set = held.get(&u.name)?;
                    let i = *base.config.index.get(&(kind, u.name.clone()))?;
                    (base.config.resources[i].version != set.resource.version)
                        .then(|| (i, set.resource.clone()))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // Fleet health: only upstreams that ask for it and have marked
        // targets are decoded and encoded again.
        if let Ok(marks) = self.marks.lock() {
            for upstream in &base.fleet_health {
                let Some(down) = marks.get(upstream).filter(|d| !d.is_empty()) else {
                    continue;
                };
                let Some(&i) = base.config.index.get(&(kind, upstream.clone())) else {
                    continue;
                };
                let current = replaced
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map_or(&base.config.resources[i], |(_, r)| r);
                let Some(marked) = crate::changes::mark_unhealthy(current, down) else {
                    continue;
                };
                replaced.retain(|(j, _)| *j != i);
                replaced.push((i, marked));
            }
        }
        if replaced.is_empty() {
            Arc::clone(&base.config)
        } else {
            Arc::new(ActiveConfig::overlaid(&base.config, replaced))
        }
    }

    /// Recomputes the open rollout's view from its base and the overlay;
    /// publishes it when the target, the admitted nodes or the rollout
    /// changed. Called under the rebuild lock.
    fn publish_rollout(&self) {
        let loaded = self.rollout_base.lock().ok().and_then(|b| b.clone());
        let next = match loaded {
            None => RolloutView::default(),
            Some((id, base, admitted)) => RolloutView {
                id,
                target: Some(self.effective(&base)),
                admitted,
            },
        };
        let current = self.rollout.borrow().clone();
        let same = current.id == next.id
            && current.admitted == next.admitted
            && current.target.as_ref().map(|t| (t.number, &t.hash))
                == next.target.as_ref().map(|t| (t.number, &t.hash));
        if !same {
            self.rollout.send_replace(Arc::new(next));
        }
    }

    pub fn rollout_view(&self) -> Arc<RolloutView> {
        self.rollout.borrow().clone()
    }

    pub fn subscribe_rollout(&self) -> watch::Receiver<Arc<RolloutView>> {
        self.rollout.subscribe()
    }

    /// What `node` should run: the open rollout's version when the rollout
    /// admitted it (and it is not the active one already), else `active`.
    pub fn desired(&self, node: &str, active: &Arc<ActiveConfig>) -> Arc<ActiveConfig> {
        let view = self.rollout.borrow();
        match &view.target {
            Some(t) if t.number != active.number && view.admitted.contains(node) => Arc::clone(t),
            _ => Arc::clone(active),
        }
    }

    /// Loads the open rollout (its version and admitted nodes) from the
    /// store and publishes what it serves. When none is open any more, the
    /// active version is reloaded *first* (a completed rollout activated
    /// its version), so an admitted node is never offered the old version
    /// in between.
    pub async fn load_rollout(&self) -> Result<(), StoreError> {
        let _one = self.rollout_lock.lock().await;
        let open = self.store.open_rollout().await?;
        let Some(open) = open else {
            let had = self.rollout_base.lock().is_ok_and(|b| b.is_some());
            if had {
                self.refresh().await?;
                if let Ok(mut b) = self.rollout_base.lock() {
                    *b = None;
                }
                if let Ok(_one) = self.rebuild_lock.lock() {
                    self.publish_rollout();
                }
            }
            crate::telemetry::rollout_stage(None);
            return Ok(());
        };
        let admitted: HashSet<String> = self
            .store
            .rollout_nodes(open.id())
            .await?
            .into_keys()
            .collect();
        let to = open.summary.to_version;
        let known = self
            .rollout_base
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(|(_, base, _)| Arc::clone(base)))
            .filter(|b| b.config.number == to);
        let base = match known {
            Some(b) => b,
            None => {
                let stored = self.store.version(to).await?;
                let trace = self.store.rollout_trace(open.id()).await?;
                let mut resources = stored.resources;
                resources.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
                Arc::new(Base::new(
                    Arc::new(ActiveConfig::new(to, resources).with_trace(trace)),
                    stored.record.hash,
                ))
            }
        };
        if let Ok(mut b) = self.rollout_base.lock() {
            *b = Some((open.id(), base, admitted));
        }
        if let Ok(_one) = self.rebuild_lock.lock() {
            self.publish_rollout();
        }
        crate::telemetry::rollout_stage(Some(open.summary.stage));
        Ok(())
    }

    /// Every node's samples taken at or after `since_unix_ms`, oldest first.
    pub fn samples_since(&self, since_unix_ms: i64) -> BTreeMap<String, Vec<Sample>> {
        self.samples
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let recent = v
                            .iter()
                            .filter(|s| s.at_unix_ms >= since_unix_ms)
                            .cloned()
                            .collect();
                        (k.clone(), recent)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces the fleet-health marks (call [`Fleet::rebuild`] after).
    pub fn set_marks(&self, marks: HashMap<String, std::collections::BTreeSet<String>>) {
        if let Ok(mut m) = self.marks.lock() {
            *m = marks;
        }
    }

    /// Records that `node`'s session `epoch` converged on `config`.
    pub fn session_holds(&self, node: &str, epoch: Epoch, config: &Arc<ActiveConfig>) {
        if let Ok(mut s) = self.sessions.lock()
            && s.by_node.get(node).is_some_and(|(_, e)| *e == epoch)
        {
            s.holds.insert(node.to_string(), Arc::clone(config));
        }
    }

    /// Queues a node-state change for the store.
    pub fn record(&self, update: NodeUpdate) {
        self.updates.record(update);
    }

    /// The delta from `from` to `to`, computed once (under the lock, so a
    /// thousand sessions waking together do not all compute it) and shared.
    pub fn delta_between(
        &self,
        from: &ActiveConfig,
        to: &ActiveConfig,
    ) -> Arc<crate::changes::Delta> {
        let key = (from.hash.clone(), to.hash.clone());
        let compute = || {
            let held = from
                .resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str()));
            Arc::new(crate::changes::delta(held, to))
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

    /// Keeps the latest report of `node`'s health stream `epoch`.
    pub fn report_health(&self, node: &str, epoch: Epoch, report: pb::HealthReport) {
        let (requests, errors_5xx, weighted) =
            report.routes.iter().fold((0u64, 0u64, 0u128), |acc, r| {
                (
                    acc.0.saturating_add(r.requests),
                    acc.1.saturating_add(r.errors_5xx.min(r.requests)),
                    acc.2 + u128::from(r.p99_ms.min(3_600_000)) * u128::from(r.requests),
                )
            });
        let sample = Sample {
            at_unix_ms: crate::store::now_ms(),
            version: i64::try_from(report.version_number).unwrap_or(0),
            requests,
            errors_5xx,
            p99_ms: if requests == 0 {
                0
            } else {
                (weighted / u128::from(requests)) as u64
            },
            targets: report.targets.len() as u64,
            unhealthy: report.targets.iter().filter(|t| !t.healthy).count() as u64,
        };
        if let Ok(mut m) = self.samples.lock() {
            let ring = m.entry(node.to_string()).or_default();
            if ring.len() == SAMPLES_PER_NODE {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
        let targets = report.targets;
        let region = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.region(node).map(str::to_string))
            .unwrap_or_default();
        if let Ok(mut h) = self.health.lock() {
            h.insert(
                node.to_string(),
                Reported {
                    region,
                    targets,
                    at_unix_ms: crate::store::now_ms(),
                    epoch,
                },
            );
        }
    }

    /// Forgets `node`'s health when the stream `epoch` that reported it ends
    /// (a newer stream of the same node keeps its report).
    pub fn forget_health(&self, node: &str, epoch: Epoch) {
        if let Ok(mut h) = self.health.lock()
            && h.get(node).is_some_and(|r| r.epoch == epoch)
        {
            h.remove(node);
        }
    }

    pub fn health_reports(&self) -> HashMap<String, Reported> {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Per region of the sessions open on this replica (every region seen
    /// since start, so a region that caught up reads 0): how many connected
    /// nodes do not run what they should — their session has not converged
    /// on [`Fleet::desired`] (by effective hash: a NACKed version, a push
    /// still in flight, discovered endpoints not yet taken). Nothing is
    /// behind while no version is active.
    pub fn nodes_behind(&self) -> BTreeMap<String, usize> {
        let current = self.current();
        let mut regions = BTreeMap::new();
        // (node, region, hash its session converged on), taken under the lock.
        let mut sessions = Vec::new();
        if let Ok(s) = self.sessions.lock() {
            regions.extend(s.by_region.keys().map(|r| (r.clone(), 0)));
            for (node, (region, _)) in &s.by_node {
                let held = s.holds.get(node).map(|c| c.hash.clone());
                sessions.push((node.clone(), region.clone(), held));
            }
        }
        for (node, region, held) in sessions {
            let desired = self.desired(&node, &current);
            if desired.number != 0 && held.as_deref() != Some(desired.hash.as_str()) {
                *regions.entry(region).or_default() += 1;
            }
        }
        regions
    }

    /// Registers the delta session `epoch` as `node`'s current one.
    pub fn session_started(&self, node: &str, region: &str, epoch: Epoch) {
        if let Ok(mut s) = self.sessions.lock() {
            s.start(node, region, epoch);
        }
    }

    /// Ends the delta session `epoch`; returns whether it was the node's
    /// current session (only then is its health forgotten and its record
    /// marked disconnected).
    pub fn session_ended(&self, node: &str, epoch: Epoch) -> bool {
        let current = self.sessions.lock().is_ok_and(|mut s| s.end(node, epoch));
        if current && let Ok(mut h) = self.health.lock() {
            h.remove(node);
        }
        current
    }
}

/// The stored active version, before the endpoints overlay.
#[derive(Debug)]
pub struct Base {
    pub config: Arc<ActiveConfig>,
    /// The hash the store records for the version.
    pub stored_hash: String,
    /// Its upstreams whose targets come from dns, consul or kubernetes
    /// discovery (what the discovery leader reconciles its sources with).
    pub discovered: Vec<pb::Upstream>,
    /// Its upstreams with `fleet-health #true`.
    pub fleet_health: Vec<String>,
}

impl Default for Base {
    fn default() -> Self {
        Base {
            config: Arc::new(ActiveConfig::empty()),
            stored_hash: String::new(),
            discovered: Vec::new(),
            fleet_health: Vec::new(),
        }
    }
}

impl Base {
    /// Decodes the upstreams once per stored version.
    pub fn new(config: Arc<ActiveConfig>, stored_hash: String) -> Base {
        use prost::Message;
        let kind = pb::ResourceType::Upstream as i32;
        let upstreams: Vec<pb::Upstream> = config
            .resources
            .iter()
            .filter(|r| r.r#type == kind)
            .filter_map(|r| pb::Upstream::decode(r.body.clone()).ok())
            .collect();
        let fleet_health = upstreams
            .iter()
            .filter(|u| u.fleet_health)
            .map(|u| u.name.clone())
            .collect();
        let discovered = upstreams
            .into_iter()
            .filter(crate::discovery::is_discovered)
            .collect();
        Base {
            config,
            stored_hash,
            discovered,
            fleet_health,
        }
    }
}
