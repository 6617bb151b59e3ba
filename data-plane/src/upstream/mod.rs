//! Upstreams: targets, selection, connection pool, retry budget, health.
//!
//! An [`Upstream`] is built from an `Upstream` resource plus its `Endpoints`
//! (with `${VAR}` references resolved). Per-target dynamic state —
//! in-flight count, health, breaker — lives in [`TargetState`], shared by
//! address with the upstream this one replaces, so a swap never resets it.
//! An upstream whose resources did not change is reused whole by the
//! runtime builder, keeping its pool and its health-check task.
//!
//! [`Upstream::select`] hands out an [`InFlight`]: the attempt's claim on a
//! target (its in-flight count, and the breaker's half-open probe when the
//! attempt is the probe). The proxy keeps it until the response body ends
//! or is dropped, so least-connections, P2C and `max-connections` see
//! streamed responses; dropping it without an outcome hands the probe back.
//!
//! Zones: when the proxy runs with `--zone` and an upstream has targets in
//! that zone, selection prefers them and falls over to the other zones only
//! when no target in the proxy's zone is available.

pub mod balance;
pub mod breaker;
pub mod health;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sentinel_proto as pb;
use tokio::sync::Notify;

use crate::body::Body;
use crate::clock::now_ms;
use crate::error::ProxyError;
use balance::{Balancer, PickContext};
use breaker::{Breaker, Claim, Transition};
use health::TargetHealth;

/// Dynamic state of one target; survives swaps (keyed by upstream + address).
#[derive(Debug, Default)]
pub struct TargetState {
    pub active: AtomicUsize,
    pub requests: AtomicU64,
    pub health: TargetHealth,
    pub breaker: Breaker,
}

#[derive(Debug)]
pub struct Target {
    /// Resolved `host:port`.
    pub address: String,
    /// `address` parsed once, for building upstream URIs.
    pub authority: Option<http::uri::Authority>,
    pub weight: u32,
    pub zone: String,
    /// The control plane pushed this target as unhealthy (fleet health
    /// quorum, or the discovery source's own health): skipped like a
    /// target this proxy's checks mark down. Fixed for the runtime's life.
    pub marked_unhealthy: bool,
    pub state: Arc<TargetState>,
    /// Label values for metrics, built once.
    labels: [(&'static str, String); 2],
}

/// The zone this proxy runs in (`--zone`), set once at start-up.
static LOCAL_ZONE: OnceLock<String> = OnceLock::new();

/// Records the proxy's own zone; targets in it are preferred. Later calls
/// are ignored.
pub fn set_local_zone(zone: &str) {
    let _ = LOCAL_ZONE.set(zone.to_string());
}

fn local_zone() -> &'static str {
    LOCAL_ZONE.get().map_or("", String::as_str)
}

/// One attempt's claim on a target: counts it in flight until dropped and,
/// when the attempt is the breaker's half-open probe, hands the probe back
/// if no outcome was recorded.
#[derive(Debug)]
pub struct InFlight {
    pub index: usize,
    state: Arc<TargetState>,
    probe: bool,
}

impl InFlight {
    fn new(index: usize, state: &Arc<TargetState>, probe: bool) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            index,
            state: Arc::clone(state),
            probe,
        }
    }

    /// Whether this attempt carries the breaker's half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            self.state.breaker.cancel_probe();
        }
    }
}

/// Metric handles of one upstream's attempts (RED: rate, errors,
/// duration), registered when the upstream is built so that recording an
/// attempt costs no registry lookup and, for the common statuses, no label
/// allocation. One attempt is one request sent to a target: a retry is a
/// second attempt.
#[derive(Debug)]
pub struct UpstreamMetrics {
    name: String,
    duration: metrics::Histogram,
    /// `sentinel_upstream_requests_total{status="error"}`: no response.
    error: metrics::Counter,
    statuses: [OnceLock<metrics::Counter>; COMMON_STATUSES.len()],
}

/// Statuses whose counters are cached; any other is looked up per attempt.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504,
];

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> Self {
        Self {
            name: upstream.to_string(),
            duration: metrics::histogram!("sentinel_upstream_request_duration_seconds", "upstream" => upstream.to_string()),
            error: metrics::counter!("sentinel_upstream_requests_total", "upstream" => upstream.to_string(), "status" => "error"),
            statuses: Default::default(),
        }
    }

    /// Records one finished attempt: the target's status, or `None` when
    /// there was no response (connect error, timeout, reset), and the time
    /// from sending the request to the response head (or the failure).
    pub fn attempt(&self, status: Option<u16>, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let Some(status) = status else {
            self.error.increment(1);
            return;
        };
        let counter = |status: u16| metrics::counter!("sentinel_upstream_requests_total", "upstream" => self.name.clone(), "status" => status.to_string());
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.statuses[i]
                .get_or_init(|| counter(status))
                .increment(1),
            None => counter(status).increment(1),
        }
    }
}

/// Retries may add at most `budget_percent` of requests per second, but
/// `min_retries_per_second` are always allowed.
#[derive(Debug, Default)]
struct RetryBudget {
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

pub type UpstreamClient = Client<tls::Connector, Body>;

pub struct Upstream {
    pub name: String,
    pub resource: pb::Upstream,
    pub endpoints: pb::Endpoints,
    /// (upstream version, endpoints version, resolved addresses): equal keys
    /// mean the runtime builder may reuse this upstream as is.
    pub key: String,
    pub targets: Vec<Target>,
    balancer: Balancer,
    /// One pooled client per worker (see `workers`): a worker's requests
    /// use only connections that worker opened and drives.
    clients: Arc<[UpstreamClient]>,
    /// TLS to the targets (`tls` block), shared with the client's connector.
    pub tls: Option<Arc<tls::TlsClient>>,
    budget: RetryBudget,
    breaker_cfg: pb::CircuitBreaker,
    passive_cfg: pb::PassiveHealth,
    pub health_cfg: pb::HealthCheck,
    pub max_connections: usize,
    pub retry: pb::Retry,
    pub timeouts: pb::Timeouts,
    /// Some targets are in the proxy's zone and some are not.
    zone_aware: bool,
    retries_counter: metrics::Counter,
    /// RED metrics of the attempts sent to this upstream.
    pub metrics: UpstreamMetrics,
    check_now: Arc<Notify>,
    checked: Arc<Notify>,
    checker: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.checker.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish()
    }
}

/// The outcome of one attempt, as health and breakers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

pub fn client(resource: &pb::Upstream, tls: Option<Arc<tls::TlsClient>>) -> UpstreamClient {
    let pool = resource.connection_pool.unwrap_or_default();
    let timeouts = resource.timeouts.unwrap_or_default();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(timeouts.connect_ms.max(1))));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        // Requests to upstreams are mostly a head and a small body: copying
        // them into one buffer and writing it beats a `writev` of several
        // slices (+2 % req/s, docs/benchmarks.md). Responses to clients stay
        // vectored: flattening those cost 10 % with 64 KiB bodies.
        .http1_writev(false)
        .pool_idle_timeout(Duration::from_millis(pool.idle_timeout_ms.max(1)))
        .pool_max_idle_per_host(pool.max_idle as usize)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .build(tls::Connector::new(
            connector,
            tls,
            Duration::from_millis(timeouts.connect_ms.max(1)),
        ))
}

impl Upstream {
    /// Builds an upstream. `previous` supplies target state to carry over and
    /// a pool to reuse when pool, timeouts and TLS did not change. `tls` is
    /// built by the caller from `resource.tls` (it reads files and may fail).
    pub fn build(
        resource: &pb::Upstream,
        endpoints: &pb::Endpoints,
        resolved: Vec<String>,
        key: String,
        previous: Option<&Upstream>,
        tls: Option<Arc<tls::TlsClient>>,
    ) -> Arc<Upstream> {
        let old: HashMap<&str, &Arc<TargetState>> = previous
            .map(|p| {
                p.targets
                    .iter()
                    .map(|t| (t.address.as_str(), &t.state))
                    .collect()
            })
            .unwrap_or_default();
        let targets: Vec<Target> = endpoints
            .targets
            .iter()
            .zip(resolved)
            .map(|(t, address)| Target {
                state: old
                    .get(address.as_str())
                    .map(|s| Arc::clone(s))
                    .unwrap_or_default(),
                labels: [
                    ("upstream", resource.name.clone()),
                    ("target", address.clone()),
                ],
                authority: address.parse().ok(),
                address,
                weight: t.weight,
                zone: t.zone.clone(),
                marked_unhealthy: t.health == pb::TargetHealth::Unhealthy as i32,
            })
            .collect();
        let addresses: Vec<String> = targets.iter().map(|t| t.address.clone()).collect();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let lb = resource.load_balancing.clone().unwrap_or_default();
        let same_pool = previous.is_some_and(|p| {
            p.resource.connection_pool == resource.connection_pool
                && p.resource.timeouts == resource.timeouts
                && p.tls.as_ref().map(|t| t.fingerprint()) == tls.as_ref().map(|t| t.fingerprint())
        });
        let (clients, tls) = match previous {
            Some(p) if same_pool => (Arc::clone(&p.clients), p.tls.clone()),
            _ => (
                (0..crate::workers::count())
                    .map(|_| client(resource, tls.clone()))
                    .collect(),
                tls,
            ),
        };
        let health_cfg = resource.health_check.clone().unwrap_or_default();
        let zone = local_zone();
        let zone_aware = !zone.is_empty()
            && targets.iter().any(|t| t.zone == zone)
            && targets.iter().any(|t| t.zone != zone);
        let upstream = Upstream {
            zone_aware,
            name: resource.name.clone(),
            resource: resource.clone(),
            endpoints: endpoints.clone(),
            key,
            balancer: Balancer::new(&lb, &addresses, &weights),
            targets,
            clients,
            tls,
            budget: RetryBudget::default(),
            breaker_cfg: resource.circuit_breaker.unwrap_or_default(),
            passive_cfg: resource.passive_health.unwrap_or_default(),
            max_connections: resource.connection_pool.unwrap_or_default().max_connections as usize,
            retry: resource.retry.clone().unwrap_or_default(),
            timeouts: resource.timeouts.unwrap_or_default(),
            retries_counter: metrics::counter!("sentinel_upstream_retries_total", "upstream" => resource.name.clone()),
            metrics: UpstreamMetrics::new(&resource.name),
            health_cfg,
            check_now: Arc::new(Notify::new()),
            checked: Arc::new(Notify::new()),
            checker: std::sync::OnceLock::new(),
        };
        for t in &upstream.targets {
            t.publish_health();
        }
        let upstream = Arc::new(upstream);
        if upstream.health_cfg.enabled && !upstream.targets.is_empty() {
            let task = tokio::spawn(check_loop(
                Arc::downgrade(&upstream),
                upstream.health_cfg.clone(),
                Arc::clone(&upstream.check_now),
                Arc::clone(&upstream.checked),
            ));
            let _ = upstream.checker.set(task.abort_handle());
        }
        upstream
    }

    /// The calling worker's pooled client.
    pub fn client(&self) -> &UpstreamClient {
        &self.clients[crate::workers::index() % self.clients.len()]
    }

    /// Whether target `i` may take a request (ignoring health when `any`).
    fn eligible(&self, i: usize, exclude: &[usize], any: bool) -> bool {
        let t = &self.targets[i];
        if t.weight == 0 || exclude.contains(&i) {
            return false;
        }
        if self.max_connections > 0
            && t.state.active.load(Ordering::Relaxed) >= self.max_connections
        {
            return false;
        }
        any || (!t.marked_unhealthy
            && t.state.health.is_available()
            && t.state.breaker.is_available(&self.breaker_cfg))
    }

    /// Picks a target and claims it (in-flight count, breaker probe):
    /// targets in the proxy's zone first, then any zone.
    pub fn select(&self, ctx: &PickContext<'_>, exclude: &[usize]) -> Result<InFlight, ProxyError> {
        if self.zone_aware {
            let zone = local_zone();
            if let Some(claim) = self.claim(ctx, &|i| {
                self.targets[i].zone == zone && self.eligible(i, exclude, false)
            }) {
                return Ok(claim);
            }
        }
        if let Some(claim) = self.claim(ctx, &|i| self.eligible(i, exclude, false)) {
            return Ok(claim);
        }
        // Nothing healthy. Retries still avoid targets already tried.
        if self.resource.all_unhealthy == pb::AllUnhealthy::FailOpen as i32 {
            let active = |i: usize| self.targets[i].state.active.load(Ordering::Relaxed);
            let i = self
                .balancer
                .pick(ctx, &|i| self.eligible(i, exclude, true), &active);
            if let Some(i) = i {
                return Ok(InFlight::new(i, &self.targets[i].state, false));
            }
        }
        Err(ProxyError::NoTarget(self.name.clone()))
    }

    fn claim(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<InFlight> {
        let active = |i: usize| self.targets[i].state.active.load(Ordering::Relaxed);
        for _ in 0..self.targets.len().max(1) {
            let i = self.balancer.pick(ctx, eligible, &active)?;
            let state = &self.targets[i].state;
            match state.breaker.acquire(&self.breaker_cfg) {
                Claim::Denied => continue,
                Claim::Pass => return Some(InFlight::new(i, state, false)),
                Claim::Probe => return Some(InFlight::new(i, state, true)),
            }
        }
        None
    }

    /// Records the outcome of the attempt `claim` made; its probe, if it
    /// carried one, is settled by the outcome.
    pub fn record_attempt(&self, claim: &mut InFlight, outcome: Outcome) {
        claim.probe = false;
        self.record(claim.index, outcome);
    }

    /// Records an attempt's outcome for passive health and the breaker.
    pub fn record(&self, i: usize, outcome: Outcome) {
        let t = &self.targets[i];
        let failed = outcome == Outcome::Failure;
        if t.state.health.record_outcome(&self.passive_cfg, failed) {
            tracing::warn!(upstream = %self.name, target = %t.address, "target ejected by passive health");
            metrics::counter!("sentinel_upstream_ejections_total", &t.labels).increment(1);
        }
        let transition = if failed {
            t.state.breaker.on_failure(&self.breaker_cfg)
        } else {
            t.state.breaker.on_success(&self.breaker_cfg)
        };
        if transition != Transition::None {
            if transition == Transition::Opened {
                metrics::counter!("sentinel_circuit_breaker_trips_total", &t.labels).increment(1);
                tracing::warn!(upstream = %self.name, target = %t.address, "circuit breaker opened");
            } else {
                tracing::info!(upstream = %self.name, target = %t.address, "circuit breaker closed");
            }
            metrics::gauge!("sentinel_circuit_breaker_state", &t.labels)
                .set(f64::from(t.state.breaker.state()));
        }
    }

    /// Counts a first attempt towards the retry budget's window.
    pub fn count_request(&self) {
        self.roll_budget();
        self.budget.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims a retry from the budget.
    pub fn try_retry(&self) -> bool {
        let retry = &self.retry;
        self.roll_budget();
        let requests = self.budget.requests.load(Ordering::Relaxed);
        let allowed = (requests * u64::from(retry.budget_percent) / 100)
            .max(u64::from(retry.min_retries_per_second));
        let used = self.budget.retries.fetch_add(1, Ordering::Relaxed);
        if used < allowed {
            self.retries_counter.increment(1);
            return true;
        }
        self.budget.retries.fetch_sub(1, Ordering::Relaxed);
        false
    }

    fn roll_budget(&self) {
        let now = now_ms();
        let start = self.budget.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= 1000
            && self
                .budget
                .window_start_ms
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.budget.requests.store(0, Ordering::Relaxed);
            self.budget.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Runs one round of active checks now and waits for it (admin API).
    pub async fn check_now(&self) -> bool {
        if self.checker.get().is_none() {
            return false;
        }
        let done = self.checked.notified();
        self.check_now.notify_one();
        tokio::time::timeout(
            Duration::from_millis(self.health_cfg.timeout_ms + 1000),
            done,
        )
        .await
        .is_ok()
    }

    pub fn breaker_config(&self) -> &pb::CircuitBreaker {
        &self.breaker_cfg
    }
}

impl Target {
    pub fn labels(&self) -> &[(&'static str, String); 2] {
        &self.labels
    }

    fn publish_health(&self) {
        let v = if self.state.health.is_healthy() {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("sentinel_upstream_health", &self.labels).set(v);
    }
}

/// The active health-check task of one upstream. Holds only a weak
/// reference, so it ends when the upstream is dropped (and is aborted then).
async fn check_loop(
    upstream: std::sync::Weak<Upstream>,
    cfg: pb::HealthCheck,
    check_now: Arc<Notify>,
    checked: Arc<Notify>,
) {
    let tls = upstream.upgrade().and_then(|u| u.tls.clone());
    let client = health::check_client(cfg.timeout_ms, tls);
    let interval = Duration::from_millis(cfg.interval_ms.max(100));
    loop {
        let Some(u) = upstream.upgrade() else { return };
        let probes = u.targets.iter().map(|t| {
            let client = &client;
            let cfg = &cfg;
            async move { (t, health::probe(client, cfg, &t.address).await) }
        });
        let results = futures_util::future::join_all(probes).await;
        for (t, result) in results {
            let error = result.as_ref().err().cloned();
            if let Some(now_healthy) = t.state.health.record_check(&cfg, result) {
                t.publish_health();
                if now_healthy {
                    tracing::info!(upstream = %u.name, target = %t.address, "target healthy again");
                } else {
                    tracing::warn!(upstream = %u.name, target = %t.address, error = ?error, "target unhealthy");
                }
            }
        }
        checked.notify_waiters();
        drop(u);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = check_now.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upstream(extra: &str) -> Arc<Upstream> {
        let doc = format!(
            "upstreams {{ upstream \"u\" {{ target \"127.0.0.1:1\"; target \"127.0.0.1:2\"; {extra} }}; }}"
        );
        let s = sentinel_config::compile("t.kdl", &doc).unwrap_or_else(|d| panic!("{d}"));
        let resolved = s.endpoints[0]
            .targets
            .iter()
            .map(|t| t.address.clone())
            .collect();
        Upstream::build(
            &s.upstreams[0],
            &s.endpoints[0],
            resolved,
            String::new(),
            None,
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_caps_retries_per_second() {
        let u = upstream("retry { attempts 3; budget-percent 10; min-retries-per-second 2; }");
        for _ in 0..100 {
            u.count_request();
        }
        // 10% of 100 requests.
        let allowed = (0..50).filter(|_| u.try_retry()).count();
        assert_eq!(allowed, 10);
        // A new one-second window starts over at the floor.
        tokio::time::advance(Duration::from_millis(1000)).await;
        let allowed = (0..50).filter(|_| u.try_retry()).count();
        assert_eq!(allowed, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn target_state_survives_a_rebuild_by_address() {
        let old = upstream("");
        old.targets[0].state.requests.store(7, Ordering::Relaxed);
        let doc =
            "upstreams { upstream \"u\" { target \"127.0.0.1:1\"; target \"127.0.0.1:3\"; }; }";
        let s = sentinel_config::compile("t.kdl", doc).unwrap();
        let resolved = s.endpoints[0]
            .targets
            .iter()
            .map(|t| t.address.clone())
            .collect();
        let new = Upstream::build(
            &s.upstreams[0],
            &s.endpoints[0],
            resolved,
            String::new(),
            Some(&old),
            None,
        );
        assert_eq!(new.targets[0].state.requests.load(Ordering::Relaxed), 7);
        assert_eq!(new.targets[1].state.requests.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn select_skips_open_breakers_and_fails_closed() {
        let u = upstream("circuit-breaker { failure-threshold 1; }\nall-unhealthy \"fail-closed\"");
        let ctx = PickContext {
            client_ip: "127.0.0.1".parse().unwrap(),
            hash_key: None,
        };
        u.record(0, Outcome::Failure);
        for _ in 0..5 {
            assert_eq!(u.select(&ctx, &[]).unwrap().index, 1);
        }
        u.record(1, Outcome::Failure);
        assert!(matches!(u.select(&ctx, &[]), Err(ProxyError::NoTarget(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn select_skips_targets_the_control_plane_marks_unhealthy() {
        let doc = "upstreams { upstream \"u\" { target \"127.0.0.1:1\"; target \"127.0.0.1:2\"; all-unhealthy \"fail-closed\"; }; }";
        let s = sentinel_config::compile("t.kdl", doc).unwrap();
        let mut endpoints = s.endpoints[0].clone();
        endpoints.targets[0].health = pb::TargetHealth::Unhealthy as i32;
        let resolved = endpoints
            .targets
            .iter()
            .map(|t| t.address.clone())
            .collect();
        let u = Upstream::build(
            &s.upstreams[0],
            &endpoints,
            resolved,
            String::new(),
            None,
            None,
        );
        let ctx = PickContext {
            client_ip: "127.0.0.1".parse().unwrap(),
            hash_key: None,
        };
        for _ in 0..10 {
            assert_eq!(u.select(&ctx, &[]).unwrap().index, 1);
        }
        // With nothing else left, the all-unhealthy mode decides.
        assert!(matches!(u.select(&ctx, &[1]), Err(ProxyError::NoTarget(_))));
    }

    #[test]
    fn attempts_are_counted_per_upstream_and_status_with_their_duration() {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("sentinel_upstream_request_duration_seconds".into()),
                &[0.1, 1.0],
            )
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = UpstreamMetrics::new("api");
            m.attempt(Some(200), Duration::from_millis(20));
            m.attempt(Some(200), Duration::from_millis(30));
            m.attempt(Some(503), Duration::from_millis(500));
            m.attempt(Some(418), Duration::from_millis(5));
            m.attempt(None, Duration::from_secs(2));
        });
        let text = handle.render();
        for line in [
            r#"sentinel_upstream_requests_total{upstream="api",status="200"} 2"#,
            r#"sentinel_upstream_requests_total{upstream="api",status="503"} 1"#,
            r#"sentinel_upstream_requests_total{upstream="api",status="418"} 1"#,
            r#"sentinel_upstream_requests_total{upstream="api",status="error"} 1"#,
            r#"sentinel_upstream_request_duration_seconds_bucket{upstream="api",le="0.1"} 3"#,
            r#"sentinel_upstream_request_duration_seconds_bucket{upstream="api",le="1"} 4"#,
            r#"sentinel_upstream_request_duration_seconds_count{upstream="api"} 5"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
