//! Service discovery: turns an upstream's `discovery` block (DNS, Consul,
//! Kubernetes EndpointSlices) into the upstream's targets, over time.
//!
//! Used by the control plane (one runner for the fleet, on the leader
//! replica) and by the standalone proxy (in-process). Both own a
//! [`Discovery`], call [`Discovery::reconcile`] with the upstreams of every
//! configuration they activate, and receive [`Discovered`] sets on the
//! channel they gave it.
//!
//! The crate is split by concern: [`runner`] owns the semantics every
//! source shares (stale on error, grace period for empty answers, sending
//! only changes, backoff, status, metrics); [`dns`], [`consul`] and
//! [`kubernetes`] only answer "what are the targets now?" through the
//! [`runner::Source`] trait. Configuration never enters here as KDL: the
//! sources read the compiled `pb::Discovery`.

pub mod consul;
pub mod dns;
pub mod kubernetes;
pub mod runner;

use sentinel_proto as pb;

/// The metric prefix the control plane passes to [`Discovery::new`].
pub const CONTROL_PLANE_METRIC_PREFIX: &str = "sentinel_cp_discovery";
/// The metric prefix a standalone proxy passes to [`Discovery::new`].
pub const STANDALONE_METRIC_PREFIX: &str = "sentinel_discovery";

/// Where a set of targets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Dns,
    Consul,
    Kubernetes,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Dns => "dns",
            SourceKind::Consul => "consul",
            SourceKind::Kubernetes => "kubernetes",
        }
    }
}

/// One upstream's discovered targets, sent whenever the set, a target's
/// health, or the stale flag changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    pub upstream: String,
    pub source: SourceKind,
    /// Sorted by address; `health` from the source (Consul checks,
    /// EndpointSlice conditions), `UNKNOWN` where the source says nothing.
    /// Terminating Kubernetes endpoints are present with weight 0 (drain).
    pub targets: Vec<pb::Target>,
    /// The source failed its last refresh; `targets` are the last known.
    pub stale: bool,
    /// Increases by one with every set sent for this upstream, also across
    /// a restart of its source by the same [`Discovery`] (changed block).
    pub generation: u64,
    /// Unix ms of the last successful refresh (0 = never).
    pub last_success_unix_ms: i64,
    /// The last refresh error, if the last refresh failed.
    pub error: Option<String>,
}

/// What `/v1/discovery` shows for one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub upstream: String,
    pub source: SourceKind,
    pub targets: usize,
    pub stale: bool,
    pub generation: u64,
    pub last_success_unix_ms: i64,
    pub last_error: Option<String>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
}

/// The discovery runner: one task per upstream whose `discovery` block is
/// dns, consul or kubernetes. Dropping it stops every task.
///
/// Public surface (kept stable for the control plane and the proxy):
/// `new`, `reconcile`, `status`, `stop_all`.
pub struct Discovery {
    updates: tokio::sync::mpsc::Sender<Discovered>,
    metric_prefix: &'static str,
    running: std::sync::Mutex<std::collections::HashMap<String, Running>>,
    /// The last generation sent per upstream, kept across restarts and
    /// removals so that generations only ever increase for a name.
    generations: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Seeds for sources not started yet (see [`Discovery::seed`]).
    known: std::sync::Mutex<std::collections::HashMap<String, Known>>,
}

/// The set receivers already hold for an upstream, handed to a runner that
/// takes over (a control-plane replica that becomes the discovery leader
/// reads it from the store): the new source starts from it instead of from
/// nothing, so an empty first answer is held for the grace period, an error
/// keeps these targets, and generations continue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Known {
    pub targets: Vec<pb::Target>,
    pub generation: u64,
    pub stale: bool,
    pub error: Option<String>,
    pub last_success_unix_ms: i64,
}

struct Running {
    spec: pb::Discovery,
    task: tokio::task::JoinHandle<()>,
    status: runner::SharedStatus,
}

impl Discovery {
    /// `metric_prefix` is `sentinel_cp_discovery` in the control plane and
    /// `sentinel_discovery` in a standalone proxy.
    pub fn new(
        updates: tokio::sync::mpsc::Sender<Discovered>,
        metric_prefix: &'static str,
    ) -> Discovery {
        Discovery {
            updates,
            metric_prefix,
            running: std::sync::Mutex::new(std::collections::HashMap::new()),
            generations: std::sync::Mutex::new(std::collections::HashMap::new()),
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Records what receivers already hold for `upstream`; the next source
    /// started for it begins from `known` (see [`Known`]).
    pub fn seed(&self, upstream: &str, known: Known) {
        if let Ok(mut k) = self.known.lock() {
            k.insert(upstream.to_string(), known);
        }
    }

    /// Runs a source for every upstream of `upstreams` with a dns, consul or
    /// kubernetes discovery block; stops the sources of upstreams that are
    /// gone or no longer discovered; restarts a source whose block changed.
    /// A source whose block did not change keeps running and keeps its
    /// targets (a rollback does not reset discovered endpoints).
    pub fn reconcile(&self, upstreams: &[pb::Upstream]) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let wanted: std::collections::HashMap<&str, &pb::Discovery> = upstreams
            .iter()
            .filter_map(|u| {
                let d = u.discovery.as_ref()?;
                match d.source {
                    Some(pb::discovery::Source::Dns(_))
                    | Some(pb::discovery::Source::Consul(_))
                    | Some(pb::discovery::Source::Kubernetes(_)) => Some((u.name.as_str(), d)),
                    _ => None,
                }
            })
            .collect();
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|name, r| {
            let keep = wanted.get(name.as_str()).is_some_and(|d| **d == r.spec);
            if !keep {
                r.task.abort();
                if let Ok(s) = r.status.lock() {
                    generations.insert(name.clone(), s.generation);
                }
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(name) {
                continue;
            }
            let Some(kind) = source_kind(spec) else {
                continue;
            };
            let status = runner::new_status(name, kind);
            if let (Some(g), Ok(mut s)) = (generations.get(name), status.lock()) {
                s.generation = *g;
            }
            let known = self.known.lock().ok().and_then(|mut k| k.remove(name));
            let task = tokio::spawn(run_source(
                name.to_string(),
                spec.clone(),
                self.updates.clone(),
                self.metric_prefix,
                status.clone(),
                known,
            ));
            running.insert(
                name.to_string(),
                Running {
                    spec: spec.clone(),
                    task,
                    status,
                },
            );
        }
    }

    /// One entry per running source, sorted by upstream.
    pub fn status(&self) -> Vec<SourceStatus> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut out: Vec<SourceStatus> = running
            .values()
            .filter_map(|r| r.status.lock().ok().map(|s| s.clone()))
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }

    /// Stops every source (the control plane calls this when it loses
    /// leadership). Generations continue where they were if the sources are
    /// started again by this `Discovery`; a new `Discovery` (another
    /// replica) starts at 1.
    pub fn stop_all(&self) {
        if let Ok(mut running) = self.running.lock() {
            let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
            for (name, r) in running.drain() {
                r.task.abort();
                if let Ok(s) = r.status.lock() {
                    generations.insert(name, s.generation);
                }
            }
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn source_kind(spec: &pb::Discovery) -> Option<SourceKind> {
    match spec.source.as_ref()? {
        pb::discovery::Source::Dns(_) => Some(SourceKind::Dns),
        pb::discovery::Source::Consul(_) => Some(SourceKind::Consul),
        pb::discovery::Source::Kubernetes(_) => Some(SourceKind::Kubernetes),
        pb::discovery::Source::Static(_) => None,
    }
}

/// The grace period of a discovery block: unset = the default.
fn timing(empty_grace_ms: Option<u64>) -> runner::Timing {
    runner::Timing {
        empty_grace: empty_grace_ms.map_or(
            runner::DEFAULT_EMPTY_GRACE,
            std::time::Duration::from_millis,
        ),
        ..runner::Timing::default()
    }
}

/// One upstream's task: builds the source for its block and runs it.
async fn run_source(
    upstream: String,
    spec: pb::Discovery,
    updates: tokio::sync::mpsc::Sender<Discovered>,
    metric_prefix: &'static str,
    status: runner::SharedStatus,
    known: Option<Known>,
) {
    match spec.source {
        Some(pb::discovery::Source::Dns(d)) => {
            let timing = timing(d.empty_grace_ms);
            let source = dns::Dns::new(d);
            runner::run(
                upstream,
                SourceKind::Dns,
                source,
                timing,
                updates,
                metric_prefix,
                runner::Start { status, known },
            )
            .await
        }
        Some(pb::discovery::Source::Consul(c)) => {
            let timing = timing(c.empty_grace_ms);
            let source = consul::Consul::new(c);
            runner::run(
                upstream,
                SourceKind::Consul,
                source,
                timing,
                updates,
                metric_prefix,
                runner::Start { status, known },
            )
            .await
        }
        Some(pb::discovery::Source::Kubernetes(k)) => {
            let timing = timing(k.empty_grace_ms);
            let source = kubernetes::Kubernetes::new(k);
            runner::run(
                upstream,
                SourceKind::Kubernetes,
                source,
                timing,
                updates,
                metric_prefix,
                runner::Start { status, known },
            )
            .await
        }
        Some(pb::discovery::Source::Static(_)) | None => {}
    }
}
