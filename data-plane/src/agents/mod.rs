//! External agents: the proxy's client side of `sentinel.agent.v1`.
//!
//! An [`Agent`] is built from one `pb::Agent` resource when a runtime is
//! built, and owns everything about calling that agent: one gRPC channel
//! (HTTP/2 over TCP or a Unix socket, connected lazily, reconnected by
//! tonic, all calls multiplexed on it), the circuit breaker (the same
//! closed → open → half-open machine upstream targets use,
//! `upstream::breaker`), the health checker (a task sending
//! `grpc.health.v1.Health/Check` every `interval-ms`), and its metrics.
//! Agents whose resource (and resolved socket path or URL) did not change
//! are handed from the old runtime to the new one as they are, so their
//! connection, breaker and health survive swaps.
//!
//! What it deliberately does not do: start, stop or supervise agent
//! processes (seed "Why Sentinel Doesn't Manage Agents"), or decide what a
//! failure means for the request — [`Agent::on_request`] reports an
//! [`AgentFailure`] and the request path applies the route's or agent's
//! failure mode (`proxy.rs`, phase "agents").
//!
//! Every call is bounded by its timeout, whatever the agent does:
//! the deadline covers connecting, retries and their backoff. Only
//! transport failures (no connection, connection lost) are retried; a slow
//! agent, an error status or an unusable decision is not.
//!
//! Data in: a [`RequestEvent`](pb::RequestEvent) built by `verdict::request_event`.
//! Data out: a checked [`Verdict`] or an [`AgentFailure`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge, Histogram};
use sentinel_proto as pbc;
use sentinel_proto::agent_protocol as pb;
use sentinel_proto::agent_protocol::agent_client::AgentClient;
use sentinel_proto::health::health_client::HealthClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::upstream::breaker::{Breaker, Transition};

pub mod streamed;
pub mod verdict;

pub use verdict::{ResponseVerdict, Verdict};

/// Why an agent could not decide. The request path turns it into the
/// failure mode; the kind is the `kind` label of
/// `sentinel_agent_errors_total`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentFailure {
    #[error("the agent's circuit breaker is open")]
    CircuitOpen,
    #[error("the agent failed its health checks")]
    Unhealthy,
    #[error("the agent did not answer within {0} ms")]
    Timeout(u64),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("the agent answered with an error status: {0}")]
    Status(String),
    #[error("the agent's decision is unusable: {0}")]
    Invalid(String),
}

impl AgentFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            AgentFailure::CircuitOpen => "circuit_open",
            AgentFailure::Unhealthy => "unhealthy",
            AgentFailure::Timeout(_) => "timeout",
            AgentFailure::Transport(_) => "transport",
            AgentFailure::Status(_) => "status",
            AgentFailure::Invalid(_) => "invalid",
        }
    }
}

/// Where the agent listens, resolved against this proxy's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Grpc(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Grpc(u) => f.write_str(u),
        }
    }
}

/// Counters and histograms of one agent, registered once at build.
struct Metrics {
    latency: Histogram,
    health: Gauge,
    circuit: Gauge,
    retries: Counter,
}

/// What `sentinel_agent_decisions_total{result}` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionResult {
    Allow,
    Deny,
    Redirect,
    FailedOpen,
    FailedClosed,
}

impl DecisionResult {
    const ALL: [DecisionResult; 5] = [
        DecisionResult::Allow,
        DecisionResult::Deny,
        DecisionResult::Redirect,
        DecisionResult::FailedOpen,
        DecisionResult::FailedClosed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DecisionResult::Allow => "allow",
            DecisionResult::Deny => "deny",
            DecisionResult::Redirect => "redirect",
            DecisionResult::FailedOpen => "failed_open",
            DecisionResult::FailedClosed => "failed_closed",
        }
    }
}

const FAILURE_KINDS: [&str; 6] = [
    "circuit_open",
    "unhealthy",
    "timeout",
    "transport",
    "status",
    "invalid",
];

/// One configured agent and everything that survives swaps with it.
pub struct Agent {
    pub name: String,
    pub resource: pbc::Agent,
    pub address: Address,
    /// Resource version + resolved address: equal keys are reused on swaps.
    pub key: String,
    channel: Channel,
    breaker: Breaker,
    breaker_cfg: pbc::CircuitBreaker,
    /// Health-check verdict (true until checks say otherwise).
    healthy: Arc<AtomicBool>,
    pub timeout: Duration,
    pub failure_open: bool,
    attempts: u32,
    backoff: Duration,
    /// `body "buffered"`: how much of the body the request event carries.
    pub body_bytes: Option<u64>,
    /// `body "streamed"`: how much of the body goes to `OnRequestBody`.
    pub streamed_bytes: Option<u64>,
    metrics: Metrics,
    decisions: [Counter; 5],
    failures: [Counter; 6],
    checker: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = self.checker.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish()
    }
}

impl Agent {
    /// Builds the client for `resource` (the channel connects on first use)
    /// and starts its health checker. Must run inside a tokio runtime.
    pub fn build(
        resource: &pbc::Agent,
        address: Address,
        key: String,
    ) -> Result<Arc<Agent>, String> {
        let connect_timeout = Duration::from_millis(resource.connect_timeout_ms.max(1));
        let channel = match &address {
            Address::Grpc(url) => Endpoint::from_shared(url.clone())
                .map_err(|e| format!("grpc `{url}`: {e}"))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
                .connect_lazy(),
            Address::Unix(path) => Endpoint::from_static("http://agent.invalid")
                .connect_timeout(connect_timeout)
                .connect_with_connector_lazy(UnixConnector {
                    path: Arc::new(path.clone()),
                    timeout: connect_timeout,
                }),
        };
        let name = resource.name.clone();
        let label = || name.clone();
        let metrics = Metrics {
            latency: metrics::histogram!("sentinel_agent_latency_seconds", "agent" => label()),
            health: metrics::gauge!("sentinel_agent_health", "agent" => label()),
            circuit: metrics::gauge!("sentinel_agent_circuit_breaker_state", "agent" => label()),
            retries: metrics::counter!("sentinel_agent_retries_total", "agent" => label()),
        };
        let decisions = DecisionResult::ALL.map(|r| {
            metrics::counter!("sentinel_agent_decisions_total", "agent" => label(), "result" => r.label())
        });
        let failures = FAILURE_KINDS.map(
            |k| metrics::counter!("sentinel_agent_errors_total", "agent" => label(), "kind" => k),
        );
        metrics.health.set(1.0);
        metrics.circuit.set(0.0);
        let retry = resource.retry.unwrap_or_default();
        let body_bytes =
            (resource.body == pbc::AgentBody::Buffered as i32).then_some(resource.max_body_bytes);
        let streamed_bytes =
            (resource.body == pbc::AgentBody::Streamed as i32).then_some(resource.max_body_bytes);
        let agent = Arc::new(Agent {
            name: resource.name.clone(),
            resource: resource.clone(),
            address,
            key,
            channel,
            breaker: Breaker::default(),
            breaker_cfg: resource.circuit_breaker.unwrap_or_default(),
            healthy: Arc::new(AtomicBool::new(true)),
            timeout: Duration::from_millis(resource.timeout_ms.max(1)),
            failure_open: resource.failure_mode == pbc::FailureMode::Open as i32,
            attempts: retry.attempts.max(1),
            backoff: Duration::from_millis(retry.backoff_ms),
            body_bytes,
            streamed_bytes,
            metrics,
            decisions,
            failures,
            checker: std::sync::OnceLock::new(),
        });
        let health = resource.health_check.unwrap_or_default();
        if health.enabled {
            let task = tokio::spawn(check_loop(
                agent.channel.clone(),
                Arc::clone(&agent.healthy),
                agent.metrics.health.clone(),
                agent.name.clone(),
                health,
            ));
            let _ = agent.checker.set(task.abort_handle());
        }
        Ok(agent)
    }

    /// Whether health checks pass (always true with checks disabled).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// `closed`, `open` or `half-open`.
    pub fn circuit(&self) -> &'static str {
        self.breaker.state_name()
    }

    /// Counts one decision of this agent for `sentinel_agent_decisions_total`.
    pub fn count(&self, result: DecisionResult) {
        self.decisions[result as usize].increment(1);
    }

    /// Sends the request event and checks the decision, within `timeout`.
    pub async fn on_request(
        &self,
        event: pb::RequestEvent,
        timeout: Duration,
    ) -> Result<Verdict, AgentFailure> {
        // The event is copied only when a retry may need it again.
        let spare = (self.attempts > 1).then(|| event.clone());
        let mut first = Some(event);
        self.call(
            timeout,
            move |mut c| {
                let event = first.take().or_else(|| spare.clone()).unwrap_or_default();
                async move { c.on_request(event).await }
            },
            Verdict::check,
        )
        .await
    }

    /// Sends the response event and checks the decision, within `timeout`.
    pub async fn on_response(
        &self,
        event: pb::ResponseEvent,
        timeout: Duration,
    ) -> Result<ResponseVerdict, AgentFailure> {
        self.call(
            timeout,
            |mut c| {
                let event = event.clone();
                async move { c.on_response(event).await }
            },
            ResponseVerdict::check,
        )
        .await
    }

    /// Sends one piece of a streamed body and checks the decision (allow
    /// or deny), within `timeout`.
    pub async fn on_request_body(
        &self,
        event: pb::BodyEvent,
        timeout: Duration,
    ) -> Result<verdict::Action, AgentFailure> {
        self.call(
            timeout,
            |mut c| {
                let event = event.clone();
                async move { c.on_request_body(event).await }
            },
            verdict::check_body,
        )
        .await
    }

    async fn call<T, V, F, Fut>(
        &self,
        timeout: Duration,
        mut send: F,
        check: fn(T) -> Result<V, String>,
    ) -> Result<V, AgentFailure>
    where
        F: FnMut(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let result = self.call_inner(timeout, &mut send, check).await;
        if let Err(e) = &result {
            self.failures[FAILURE_KINDS
                .iter()
                .position(|k| *k == e.kind())
                .unwrap_or(0)]
            .increment(1);
        }
        result
    }

    async fn call_inner<T, V, F, Fut>(
        &self,
        timeout: Duration,
        send: &mut F,
        check: fn(T) -> Result<V, String>,
    ) -> Result<V, AgentFailure>
    where
        F: FnMut(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if !self.healthy() {
            return Err(AgentFailure::Unhealthy);
        }
        // A half-open probe whose call is dropped (the client went away)
        // is handed back by the guard, so the breaker never waits on a
        // probe nobody has.
        let Some(claim) = self.breaker.attempt(&self.breaker_cfg) else {
            return Err(AgentFailure::CircuitOpen);
        };
        self.show_circuit();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let client = AgentClient::new(self.channel.clone())
                .max_decoding_message_size(MAX_DECISION_BYTES);
            match tokio::time::timeout_at(deadline, send(client)).await {
                Err(_) => break Err(AgentFailure::Timeout(timeout.as_millis() as u64)),
                Ok(Ok(resp)) => break check(resp.into_inner()).map_err(AgentFailure::Invalid),
                Ok(Err(status)) if is_transport(&status) => {
                    let retry_at = tokio::time::Instant::now() + self.backoff;
                    if attempt < self.attempts && retry_at < deadline {
                        self.metrics.retries.increment(1);
                        tokio::time::sleep_until(retry_at).await;
                        continue;
                    }
                    break Err(AgentFailure::Transport(status_text(&status)));
                }
                Ok(Err(status)) if is_undecodable(&status) => {
                    break Err(AgentFailure::Invalid(status_text(&status)));
                }
                Ok(Err(status)) => break Err(AgentFailure::Status(status_text(&status))),
            }
        };
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        let transition = claim.finish(result.is_ok());
        match transition {
            Transition::Opened => {
                tracing::warn!(agent = %self.name, "agent circuit breaker opened")
            }
            Transition::Closed => {
                tracing::info!(agent = %self.name, "agent circuit breaker closed")
            }
            Transition::None => {}
        }
        self.show_circuit();
        result
    }

    fn show_circuit(&self) {
        self.metrics.circuit.set(f64::from(self.breaker.state()));
    }
}

/// Largest decision accepted from an agent (a deny body, headers,
/// metadata): bounded memory whatever the agent sends.
const MAX_DECISION_BYTES: usize = 1 << 20;

/// A failure of the connection rather than an answer of the agent: the
/// agent's own statuses carry its response headers as metadata; a status
/// made on this side (no connection, connection lost, stream reset) does
/// not. A body that does not decode is the agent's answer, not transport.
fn is_transport(status: &tonic::Status) -> bool {
    status.metadata().is_empty() && !is_undecodable(status)
}

/// The agent answered bytes that are not a message of the protocol.
fn is_undecodable(status: &tonic::Status) -> bool {
    status.message().starts_with("failed to decode")
}

fn status_text(status: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Health checks: `Check` every `interval_ms`, each bounded by
/// `timeout_ms`; `unhealthy_threshold` failures in a row mark the agent
/// unhealthy (requests get the failure mode at once), `healthy_threshold`
/// successes in a row mark it healthy again.
async fn check_loop(
    channel: Channel,
    healthy: Arc<AtomicBool>,
    gauge: Gauge,
    name: String,
    cfg: pbc::AgentHealthCheck,
) {
    let interval = Duration::from_millis(cfg.interval_ms.max(10));
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let (passes, fails) = (AtomicU32::new(0), AtomicU32::new(0));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut client = HealthClient::new(channel.clone());
        let ok = matches!(
            tokio::time::timeout(timeout, client.check(sentinel_proto::health::HealthCheckRequest::default())).await,
            Ok(Ok(r)) if r.get_ref().status
                == sentinel_proto::health::health_check_response::ServingStatus::Serving as i32
        );
        let was = healthy.load(Ordering::Acquire);
        if ok {
            fails.store(0, Ordering::Relaxed);
            let n = passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !was && n >= cfg.healthy_threshold.max(1) {
                healthy.store(true, Ordering::Release);
                gauge.set(1.0);
                tracing::info!(agent = %name, "agent is healthy");
            }
        } else {
            passes.store(0, Ordering::Relaxed);
            let n = fails.fetch_add(1, Ordering::Relaxed) + 1;
            if was && n >= cfg.unhealthy_threshold.max(1) {
                healthy.store(false, Ordering::Release);
                gauge.set(0.0);
                tracing::warn!(agent = %name, "agent failed its health checks");
            }
        }
    }
}

/// Connects the agent's channel to its Unix socket.
#[derive(Clone)]
struct UnixConnector {
    path: Arc<PathBuf>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = Arc::clone(&self.path);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path.as_path()))
                .await
            {
                Ok(r) => r.map(TokioIo::new),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {} timed out", path.display()),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &std::path::Path) -> pbc::Agent {
        pbc::Agent {
            name: "a".into(),
            agent_type: "custom".into(),
            transport: Some(pbc::agent::Transport::UnixSocket(
                path.display().to_string(),
            )),
            timeout_ms: 100,
            connect_timeout_ms: 50,
            failure_mode: pbc::FailureMode::Closed as i32,
            retry: Some(pbc::AgentRetry {
                attempts: 3,
                backoff_ms: 10,
            }),
            health_check: Some(pbc::AgentHealthCheck::default()),
            circuit_breaker: Some(pbc::CircuitBreaker {
                enabled: true,
                failure_threshold: 2,
                success_threshold: 1,
                open_ms: 1000,
            }),
            max_body_bytes: 0,
            body: pbc::AgentBody::None as i32,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transport_failures_are_retried_within_the_deadline_then_open_the_circuit() {
        // The process-wide clock starts before this test moves its paused
        // time forward (other tests in this binary read the same clock).
        crate::clock::now_ms();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let a = Agent::build(&resource(&path), Address::Unix(path.clone()), "k".into()).unwrap();
        let timeout = Duration::from_millis(100);

        let started = tokio::time::Instant::now();
        let e = a
            .on_request(pb::RequestEvent::default(), timeout)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFailure::Transport(_)), "{e}");
        // Three attempts: two backoffs of 10 ms, well inside the deadline.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < timeout,
            "{took:?}"
        );
        assert_eq!(a.circuit(), "closed");

        let e = a
            .on_request(pb::RequestEvent::default(), timeout)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFailure::Transport(_)));
        assert_eq!(a.circuit(), "open", "failure-threshold 2");
        let started = tokio::time::Instant::now();
        let e = a
            .on_request(pb::RequestEvent::default(), timeout)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFailure::CircuitOpen));
        assert_eq!(started.elapsed(), Duration::ZERO, "no call while open");

        // After open_ms one probe goes; it fails, and the circuit opens again.
        tokio::time::advance(Duration::from_millis(1000)).await;
        let e = a
            .on_request(pb::RequestEvent::default(), timeout)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFailure::Transport(_)));
        assert_eq!(a.circuit(), "open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_that_would_pass_the_deadline_is_not_taken() {
        crate::clock::now_ms();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let mut r = resource(&path);
        r.retry = Some(pbc::AgentRetry {
            attempts: 10,
            backoff_ms: 60,
        });
        let a = Agent::build(&r, Address::Unix(path), "k".into()).unwrap();
        let started = tokio::time::Instant::now();
        let e = a
            .on_request(pb::RequestEvent::default(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFailure::Transport(_)));
        // One backoff of 60 ms fits in 100 ms; a second would not.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(60) && took < Duration::from_millis(100),
            "{took:?}"
        );
    }

    #[test]
    fn server_statuses_are_not_transport_errors() {
        let local = tonic::Status::unavailable("error trying to connect");
        assert!(is_transport(&local));
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert("content-type", "application/grpc".parse().unwrap());
        let remote = tonic::Status::with_metadata(tonic::Code::Unavailable, "busy", meta);
        assert!(!is_transport(&remote));
        let garbage =
            tonic::Status::internal("failed to decode Protobuf message: invalid wire type");
        assert!(!is_transport(&garbage));
    }
}
