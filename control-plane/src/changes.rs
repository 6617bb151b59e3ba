//! The values that flow between `fleet`, `store`, `stream` and
//! `discovery`: the active configuration ([`ActiveConfig`]), a proxy
//! session's [`Epoch`], a change of a node's state ([`NodeUpdate`]), what
//! one response changes for a proxy ([`Delta`], computed by [`delta`]) and
//! one discovered upstream's endpoint set ([`EndpointSet`]).
//!
//! A leaf: it depends on the wire types and the config crate's hash, never
//! on `fleet`, `store` or `stream`, so those three can use each other's
//! vocabulary without importing each other in a circle (`fleet` owns the
//! live state, `store` writes node updates, `stream` turns deltas into
//! responses). Pure data and pure functions: no I/O, no locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sentinel_proto as pb;

/// The active configuration, ready to stream.
#[derive(Debug)]
pub struct ActiveConfig {
    /// 0 before the first apply.
    pub number: i64,
    pub hash: String,
    /// Sorted by (type, name); bodies are shared `Bytes`.
    pub resources: Vec<pb::Resource>,
    /// (type, name) → position in `resources`; shared between a stored
    /// version and every configuration overlaid on it (same names).
    pub index: Arc<HashMap<(i32, String), usize>>,
    /// When this replica learnt about it (convergence is measured from here).
    pub activated: Instant,
    /// The W3C traceparent of the activation (or rollout) that made it the
    /// configuration to run, as stored: every replica sends the same in
    /// `DeltaResponse.trace_parent`. Empty when unknown.
    pub trace_parent: String,
}

impl ActiveConfig {
    pub fn empty() -> Self {
        Self {
            number: 0,
            hash: String::new(),
            resources: Vec::new(),
            index: Arc::default(),
            activated: Instant::now(),
            trace_parent: String::new(),
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
            index: Arc::new(index),
            activated: Instant::now(),
            trace_parent: String::new(),
        }
    }

    /// The same configuration, delivered as part of the trace `trace_parent`.
    pub fn with_trace(mut self, trace_parent: Option<String>) -> Self {
        self.trace_parent = trace_parent.unwrap_or_default();
        self
    }

    /// `base` with some resources replaced (by position; the names stay):
    /// bodies stay shared `Bytes`, the index is shared, only the hash is
    /// computed again. The number stays the stored version's.
    pub fn overlaid(base: &ActiveConfig, replaced: Vec<(usize, pb::Resource)>) -> Self {
        let mut resources = base.resources.clone();
        for (i, r) in replaced {
            if let Some(slot) = resources.get_mut(i) {
                *slot = r;
            }
        }
        let hash = sentinel_config::config_hash(
            resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
        );
        Self {
            number: base.number,
            hash,
            resources,
            index: Arc::clone(&base.index),
            activated: Instant::now(),
            // Discovered endpoints and health marks change what is sent,
            // not which config change it belongs to.
            trace_parent: base.trace_parent.clone(),
        }
    }

    /// The resource `(kind, name)`, if the configuration has it.
    pub fn get(&self, kind: i32, name: &str) -> Option<&pb::Resource> {
        self.index
            .get(&(kind, name.to_string()))
            .and_then(|i| self.resources.get(*i))
    }

    pub fn version_of(&self, kind: i32, name: &str) -> Option<&str> {
        self.index
            .get(&(kind, name.to_string()))
            .map(|i| self.resources[*i].version.as_str())
    }
}

/// Unix epoch when the session started, strictly increasing within a
/// replica. Only the newest session of a node may change its record, so a
/// stream that ends after the node reconnected elsewhere changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

impl Epoch {
    /// A new epoch, later than every epoch this process handed out before.
    pub fn next() -> Epoch {
        static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut prev = LAST.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match LAST.compare_exchange_weak(
                prev,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => return Epoch(next),
                Err(p) => prev = p,
            }
        }
    }
}

/// A change of a node's state, written to the store in the background so
/// that streams never wait for the database (and keep working without it).
/// Every update names the session (`epoch`) it comes from.
#[derive(Debug, Clone)]
pub enum NodeUpdate {
    Connected {
        node: pb::Node,
        epoch: Epoch,
    },
    Disconnected {
        id: String,
        epoch: Epoch,
    },
    Ack {
        id: String,
        epoch: Epoch,
        version: i64,
        hash: String,
    },
    Nack {
        id: String,
        epoch: Epoch,
        version: i64,
        hash: String,
        resource: String,
        error: String,
    },
    /// The timeline of one answered response (the node's `config.push`):
    /// recorded beside the `Ack`/`Nack` it ends with.
    Pushed {
        id: String,
        epoch: Epoch,
        push: Push,
    },
}

/// One response pushed to a node and answered: the control plane's times
/// and the proxy's own (from its ACK/NACK; `None` where it said 0 or
/// something implausible). Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub region: String,
    pub version: i64,
    pub hash: String,
    pub pushed_at_unix_ms: i64,
    pub received_unix_ms: Option<i64>,
    pub built_unix_ms: Option<i64>,
    pub swapped_unix_ms: Option<i64>,
    pub answered_at_unix_ms: i64,
    /// `ack` or `nack`.
    pub outcome: &'static str,
    /// The NACK's resource and reason.
    pub error: Option<String>,
}

/// How far a proxy's reported time may be from the control plane's view of
/// the push and still be believed (clocks drift; a day is not drift).
pub const PROXY_CLOCK_SLACK_MS: i64 = 24 * 3600 * 1000;

/// A time a proxy reported (Unix ms; 0 = unknown), kept only when it is
/// plausible: within [`PROXY_CLOCK_SLACK_MS`] of `[pushed, answered]`.
/// Hostile values (0, `u64::MAX`, the distant past) become `None`.
pub fn proxy_time(reported: u64, pushed_ms: i64, answered_ms: i64) -> Option<i64> {
    let t = i64::try_from(reported).ok().filter(|t| *t > 0)?;
    let lo = pushed_ms.saturating_sub(PROXY_CLOCK_SLACK_MS);
    let hi = answered_ms.saturating_add(PROXY_CLOCK_SLACK_MS);
    (lo..=hi).contains(&t).then_some(t)
}

/// What one response changes relative to what the proxy holds.
#[derive(Debug, Default)]
pub struct Delta {
    pub resources: Vec<pb::Resource>,
    pub removed: Vec<pb::ResourceRef>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// Resources of `active` the proxy does not hold at that version, and names
/// it holds that are gone. Both sides are sorted by (type, name), so this is
/// one merge pass without allocation per lookup.
pub fn delta<'a>(
    held: impl Iterator<Item = (i32, &'a str, &'a str)>,
    active: &ActiveConfig,
) -> Delta {
    let mut out = Delta::default();
    let mut held = held.peekable();
    for r in &active.resources {
        let key = (r.r#type, r.name.as_str());
        loop {
            match held.peek() {
                Some(h) if (h.0, h.1) < key => {
                    out.removed.push(pb::ResourceRef {
                        r#type: h.0,
                        name: h.1.to_string(),
                    });
                    held.next();
                }
                _ => break,
            }
        }
        match held.peek() {
            Some(h) if (h.0, h.1) == key => {
                if h.2 != r.version {
                    out.resources.push(r.clone());
                }
                held.next();
            }
            _ => out.resources.push(r.clone()),
        }
    }
    out.removed.extend(held.map(|h| pb::ResourceRef {
        r#type: h.0,
        name: h.1.to_string(),
    }));
    out
}

/// One discovered upstream's current endpoint set, as the control plane
/// overlays it, stores it and shows it. `resource` is the encoded
/// `Endpoints` resource (encoded once; its version is computed by the
/// config crate exactly like every other resource's).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSet {
    pub upstream: String,
    /// `dns`, `consul` or `kubernetes`.
    pub source: String,
    pub generation: i64,
    pub targets: Vec<pb::Target>,
    pub resource: pb::Resource,
    pub stale: bool,
    pub error: Option<String>,
    pub last_success_unix_ms: i64,
    pub updated_at_unix_ms: i64,
}

impl EndpointSet {
    /// The `Endpoints` resource version: what a proxy holding this set has.
    pub fn hash(&self) -> &str {
        &self.resource.version
    }
}

/// `targets` (sorted by address here) encoded as `upstream`'s `Endpoints`
/// resource, versioned by the config crate's own function.
pub fn endpoints_resource(upstream: &str, targets: &mut [pb::Target]) -> pb::Resource {
    targets.sort_by(|a, b| a.address.cmp(&b.address));
    sentinel_config::resource(
        pb::ResourceType::Endpoints,
        upstream,
        &pb::Endpoints {
            upstream: upstream.to_string(),
            targets: targets.to_vec(),
        },
    )
}

/// `endpoints` (an `Endpoints` resource) with the targets in `down` marked
/// `TARGET_HEALTH_UNHEALTHY`; `None` when nothing changes (or the body
/// does not decode).
pub fn mark_unhealthy(
    endpoints: &pb::Resource,
    down: &std::collections::BTreeSet<String>,
) -> Option<pb::Resource> {
    use prost::Message;
    let mut e = pb::Endpoints::decode(endpoints.body.clone()).ok()?;
    let unhealthy = pb::TargetHealth::Unhealthy as i32;
    let mut changed = false;
    for t in &mut e.targets {
        if t.health != unhealthy && down.contains(&t.address) {
            t.health = unhealthy;
            changed = true;
        }
    }
    changed.then(|| endpoints_resource(&endpoints.name, &mut e.targets))
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn hostile_proxy_times_are_dropped_and_plausible_ones_kept() {
        let (pushed, answered) = (1_700_000_000_000, 1_700_000_000_500);
        assert_eq!(proxy_time(0, pushed, answered), None);
        assert_eq!(proxy_time(u64::MAX, pushed, answered), None);
        assert_eq!(proxy_time(i64::MAX as u64, pushed, answered), None);
        assert_eq!(proxy_time(1, pushed, answered), None, "the distant past");
        assert_eq!(
            proxy_time(1_700_000_000_100, pushed, answered),
            Some(1_700_000_000_100)
        );
        // Clock drift within a day is believed.
        assert!(proxy_time((pushed - 60_000) as u64, pushed, answered).is_some());
        assert_eq!(proxy_time(0, i64::MIN, i64::MAX), None);
        assert_eq!(proxy_time(5, i64::MIN, i64::MAX), Some(5));
    }
}
