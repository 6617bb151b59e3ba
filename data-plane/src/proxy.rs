//! The request path: a fixed sequence of phases.
//!
//! 1. **limits** — URI and declared body size;
//! 2. **route** — match on the runtime's router (404 otherwise);
//! 3. **filters** — rate limits, in the route's order;
//! 4. **agents** — external agents, in the route's order: each may allow
//!    (rewriting request and response headers, adding metadata), deny or
//!    redirect; one that cannot decide gets the route's or its own failure
//!    mode (`agents` owns the calls; this file applies the outcome);
//! 5. **pick + forward** — choose a target, send with timeouts, retry
//!    idempotent requests on connect errors and configured statuses within
//!    the retry budget; WebSocket upgrades are spliced through;
//! 6. **response** — agents that asked see the response head; header
//!    rewrites (agents' too), request id, rate-limit headers;
//! 7. **log** — one access-log line and the request metrics.
//!
//! The runtime is read with one `ArcSwap` load at the start; the request
//! finishes on that snapshot whatever swaps happen meanwhile. Errors are
//! [`ProxyError`]s; their statuses come from `error.rs` only, and clients
//! see only their public reason and the request id (the detail is logged).
//!
//! Timeouts on the way through: the response head must come within the
//! smaller of the `request` (or route `timeout-secs`) and `read` timeouts;
//! the response body must end by the `request` deadline and never stall
//! longer than `read`; the client's upload may not stall longer than
//! `write`. The target's in-flight claim is held until the response body
//! ends or is dropped (see `timed_body`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;
use sentinel_proto as pb;
use sentinel_telemetry::trace::{KeyValue, SpanKind};

use crate::agents::verdict::{self, Action, Mutation};
use crate::agents::{Agent, DecisionResult, streamed};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::ratelimit::{self, Decision};
use crate::routing::RouteEntry;
use crate::runtime::Runtime;
use crate::timed_body::{Side, TimedBody};
use crate::tracer::{ChildSpan, RequestSpan};
use crate::upstream::balance::PickContext;
use crate::upstream::{Outcome, Upstream};

/// State shared by every connection of every listener.
#[derive(Default)]
pub struct Shared {
    pub runtime: ArcSwapOption<Runtime>,
    pub shutting_down: AtomicBool,
}

/// What a connection knows about itself.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// `client.ip()` as text, formatted once per connection.
    pub client_ip: String,
    pub listener: Arc<str>,
    pub tls: bool,
    /// What the TLS handshake settled (set once it completed; agents see it).
    pub tls_facts: std::sync::OnceLock<TlsFacts>,
    /// Set when its listener was removed: answer with `Connection: close`.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Requests in progress and when the last one started or ended, for
    /// the listener's idle (keep-alive) timeout.
    pub activity: Activity,
}

/// The TLS parameters of a client connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// The server name the client asked for (SNI), empty when none.
    pub sni: String,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`), empty when none.
    pub alpn: String,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
}

/// Request activity of one connection (atomics; no lock).
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    /// Marks a request of `conn` as started; the returned guard marks it
    /// ended (it travels with a proxied response body until that ends).
    fn begin(conn: &Arc<ConnInfo>) -> ActivityGuard {
        let a = &conn.activity;
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.last_ms.store(crate::clock::now_ms(), Ordering::Release);
        ActivityGuard(Arc::clone(conn))
    }

    /// [`Activity::begin`] for tests outside this module.
    #[cfg(test)]
    pub(crate) fn begin_for_test(conn: &Arc<ConnInfo>) -> ActivityGuard {
        Self::begin(conn)
    }

    /// Requests whose response is not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When a request last started or finished (`clock::now_ms`), 0 if never.
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Acquire)
    }
}

/// One request in progress on a connection.
pub struct ActivityGuard(Arc<ConnInfo>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0.activity;
        a.last_ms.store(crate::clock::now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnInfo {
    fn draining(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }
}

/// Largest request body buffered so that an idempotent request can be
/// retried; larger bodies are streamed once.
const REPLAYABLE_BODY_BYTES: u64 = 64 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Facts gathered along the phases for the access log and metrics.
#[derive(Default)]
struct Trace {
    route: Option<Arc<RouteEntry>>,
    upstream: Option<Arc<Upstream>>,
    target: Option<usize>,
    attempts: u32,
    limits: Option<Decision>,
    /// What the route's agents said about the response and the log.
    agents: Option<Box<AgentTrace>>,
    /// The request's server span, while tracing is on.
    span: Option<RequestSpan>,
}

/// The agents' contributions to a request (boxed: most routes have none).
#[derive(Default)]
struct AgentTrace {
    /// Response header mutations, in the agents' order.
    response_headers: Vec<Mutation>,
    /// Agents that asked for the response head.
    inspect: Vec<Arc<Agent>>,
    metadata: std::collections::HashMap<String, String>,
    /// A `body "streamed"` agent's deny, answered instead of whatever the
    /// aborted upstream request ended with.
    body_denied: streamed::DeniedSlot,
}

/// Entry point of the hyper service.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut active = Some(Activity::begin(&conn));
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut trace = Trace {
        span: RequestSpan::start(&req, conn.client, conn.tls),
        ..Trace::default()
    };
    let Some(rt) = shared.runtime.load_full() else {
        let resp = error_response(&ProxyError::ShuttingDown, &request_id);
        return Ok(resp);
    };
    let access_log = rt
        .access_log()
        .then(|| (req.method().clone(), req.uri().path().to_string()));
    let result = handle(&rt, &conn, req, &request_id, &mut trace, &mut active).await;
    let mut failure = None;
    let body_denied = trace
        .agents
        .as_ref()
        .and_then(|a| a.body_denied.lock().ok()?.take());
    let mut resp = match (result, body_denied) {
        (Ok(resp), _) => resp,
        (Err(_), Some(deny)) => agent_answer(deny, &request_id),
        (Err(e), None) => {
            let resp = error_response(&e, &request_id);
            failure = Some(e);
            resp
        }
    };
    if let Some(agents) = trace.agents.as_deref_mut() {
        if failure.is_none()
            && !agents.inspect.is_empty()
            && let Some(route) = trace.route.as_ref()
            && let Err(e) =
                response_agents(route, agents, &mut resp, &request_id, trace.span.as_ref()).await
        {
            resp = error_response(&e, &request_id);
            failure = Some(e);
        }
        for m in &agents.response_headers {
            m.apply(resp.headers_mut());
        }
    }
    if let Some(d) = trace.limits {
        rate_limit_headers(resp.headers_mut(), &d);
    }
    if shared.shutting_down.load(Ordering::Relaxed) || conn.draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    let status = resp.status();
    match &trace.route {
        Some(route) => route
            .metrics
            .record(&route.name, status.as_u16(), elapsed.as_secs_f64()),
        None => {
            metrics::counter!("sentinel_requests_total", "route" => "", "status" => status.as_u16().to_string())
                .increment(1);
            metrics::histogram!("sentinel_request_duration_seconds", "route" => "")
                .record(elapsed.as_secs_f64());
        }
    }
    let upstream = trace.upstream.as_ref();
    let target = upstream
        .zip(trace.target)
        .map(|(u, i)| u.targets[i].address.as_str());
    if let Some(span) = &trace.span {
        span.finish(
            status.as_u16(),
            upstream.map(|u| u.name.as_str()),
            target,
            trace.attempts,
            failure.as_ref().map(ToString::to_string),
        );
    }
    if let Some((method, path)) = access_log {
        let trace_id = trace.span.as_ref().and_then(RequestSpan::trace_id);
        tracing::info!(
            target: "sentinel::access",
            kind = "access",
            request_id = request_id.to_str().unwrap_or("-"),
            trace_id = trace_id.as_deref().unwrap_or("-"),
            client = %conn.client.ip(),
            listener = %conn.listener,
            method = %method,
            path = %path,
            route = trace.route.as_ref().map_or("-", |r| &*r.name),
            upstream = upstream.map_or("-", |u| u.name.as_str()),
            target = target.unwrap_or("-"),
            attempts = trace.attempts,
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            agent_metadata = %MetadataDetail(trace.agents.as_deref()),
            error = %ErrorDetail(failure.as_ref()),
            "request"
        );
    } else if let Some(e) = &failure {
        // Without an access log, the detail the client did not get is
        // logged on its own line (client-side refusals only at debug).
        let id = request_id.to_str().unwrap_or("-");
        if e.source() == crate::error::Source::Downstream {
            tracing::debug!(request_id = id, error = %e, "request refused");
        } else {
            tracing::warn!(request_id = id, error = %e, "request failed");
        }
    }
    Ok(resp)
}

/// The agents' dynamic metadata for the access log (`k=v k=v`, sorted),
/// `-` when there was none.
struct MetadataDetail<'a>(Option<&'a AgentTrace>);

impl std::fmt::Display for MetadataDetail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(a) = self.0.filter(|a| !a.metadata.is_empty()) else {
            return f.write_str("-");
        };
        let mut pairs: Vec<_> = a.metadata.iter().collect();
        pairs.sort();
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// An error's full detail for the access log, `-` when there was none.
struct ErrorDetail<'a>(Option<&'a ProxyError>);

impl std::fmt::Display for ErrorDetail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("-"),
        }
    }
}

async fn handle(
    rt: &Runtime,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &mut Trace,
    active: &mut Option<ActivityGuard>,
) -> Result<Response<Body>, ProxyError> {
    // --- limits
    let limits = rt.limits();
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if limits.max_uri_bytes > 0 && uri_len > limits.max_uri_bytes as usize {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let host = request_host(&req);

    // --- route
    let route = match rt.router.route(&req, &host) {
        Some(r) => Arc::clone(r),
        None => {
            let fallback = rt
                .listeners
                .iter()
                .find(|l| *l.name == *conn.listener)
                .map(|l| l.resource.default_route.as_str())
                .filter(|r| !r.is_empty())
                .and_then(|r| rt.router.by_name(r));
            match fallback {
                Some(r) => Arc::clone(r),
                None => {
                    return Err(ProxyError::NoRoute {
                        method: req.method().to_string(),
                        host,
                        path: req.uri().path().to_string(),
                    });
                }
            }
        }
    };
    if let Some(span) = &trace.span {
        span.routed(req.method(), &route.name);
    }
    trace.route = Some(Arc::clone(&route));
    let policies = &route.policies;
    let max_body = if policies.max_body_bytes > 0 {
        policies.max_body_bytes
    } else {
        limits.max_body_bytes
    };
    let declared_len = content_length(req.headers());
    if let Some(len) = declared_len
        && max_body > 0
        && len > max_body
    {
        return Err(ProxyError::BodyTooLarge { limit: max_body });
    }

    // --- filters
    let client_ip = conn.client.ip();
    let client_ip_text = conn.client_ip.as_str();
    for name in &route.resource.filters {
        let Some(limiter) = rt.limiters.get(name) else {
            continue;
        };
        let key = ratelimit::key_for(
            &limiter.cfg,
            client_ip_text,
            req.uri().path(),
            req.headers(),
        );
        // A Redis-backed decision is a call worth a span; a local one is not.
        let span = trace
            .span
            .as_ref()
            .filter(|_| limiter.is_shared())
            .map(|s| {
                s.child(SpanKind::Client, || {
                    (
                        format!("rate-limit {name}"),
                        vec![
                            KeyValue::new("db.system.name", "redis"),
                            KeyValue::new("sentinel.filter", name.clone()),
                        ],
                    )
                })
            });
        let d = limiter.decide(&key).await;
        if d.unavailable {
            if let Some(span) = span {
                span.failed("unavailable", || {
                    "the rate-limit backend is unavailable".into()
                });
            }
            metrics::counter!("sentinel_rate_limit_decisions_total", "filter" => name.clone(), "decision" => "unavailable")
                .increment(1);
            return Err(ProxyError::FilterFailed {
                filter: name.clone(),
                reason: "the rate-limit backend is unavailable and the filter fails closed"
                    .to_string(),
            });
        }
        let decision = if d.allowed {
            "allowed"
        } else if limiter.enforces() {
            "rejected"
        } else {
            "logged"
        };
        metrics::counter!("sentinel_rate_limit_decisions_total", "filter" => name.clone(), "decision" => decision)
            .increment(1);
        if let Some(span) = span {
            span.set(|| KeyValue::new("sentinel.rate_limit.decision", decision));
            span.ok();
        }
        trace.limits = Some(d);
        if !d.allowed && limiter.enforces() {
            return Err(ProxyError::RateLimited {
                filter: name.clone(),
                retry_after_secs: d.retry_after_secs,
                status: limiter.cfg.status_code as u16,
            });
        }
    }

    // --- pick + forward
    let upstream = rt
        .upstreams
        .get(&route.resource.upstream)
        .ok_or_else(|| ProxyError::NoTarget(route.resource.upstream.clone()))?;
    trace.upstream = Some(Arc::clone(upstream));
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let mut incoming = body::incoming(incoming);

    // --- agents
    if !route.resource.agents.is_empty()
        && let Some(answer) = agents_phase(
            rt,
            conn,
            &route,
            &mut parts,
            &mut incoming,
            &host,
            request_id,
            upstream,
            trace,
        )
        .await?
    {
        return Ok(answer);
    }

    let hash_key = hash_key_value(upstream, &parts, client_ip_text);
    // Decided from the body itself: an HTTP/2 upload has neither
    // Content-Length nor Transfer-Encoding.
    let has_body = !incoming.is_end_stream();
    let request_headers = std::mem::take(&mut parts.headers);
    let mut headers = Some(upstream_headers(
        request_headers,
        conn,
        &host,
        request_id,
        policies,
        upgrade,
    ));
    let ctx = PickContext {
        client_ip,
        hash_key: hash_key.as_deref(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let timeouts = &upstream.timeouts;
    let request_ms = if policies.timeout_ms > 0 {
        policies.timeout_ms
    } else {
        timeouts.request_ms
    };
    let head_timeout = Duration::from_millis(request_ms.min(timeouts.read_ms).max(1));
    let read_idle = Duration::from_millis(timeouts.read_ms.max(1));
    let write_idle = (timeouts.write_ms > 0).then(|| Duration::from_millis(timeouts.write_ms));
    let retry = &upstream.retry;

    let idempotent = is_idempotent(&parts.method) && !upgrade;
    let replayable =
        idempotent && retry.attempts > 1 && declared_len.is_none_or(|l| l <= REPLAYABLE_BODY_BYTES);
    let mut body_once = None;
    let buffered: Option<Bytes> = if !has_body {
        Some(Bytes::new())
    } else if replayable && declared_len.is_some() {
        // Buffered for retries; the client gets `write` between chunks here
        // as it does when streamed.
        let body = incoming;
        let body = match write_idle {
            Some(_) => TimedBody::new(body, None, write_idle, None, None, Side::Request).boxed(),
            None => body,
        };
        let collected = body
            .collect()
            .await
            .map_err(|e| match e.downcast::<ProxyError>() {
                Ok(timeout) => *timeout,
                Err(e) => ProxyError::BadRequest(format!("reading body: {e}")),
            })?;
        Some(collected.to_bytes())
    } else {
        let body = incoming;
        let body = if max_body > 0 {
            http_body_util::Limited::new(body, max_body as usize).boxed_unsync()
        } else {
            body
        };
        body_once = Some(if write_idle.is_some() {
            TimedBody::new(body, None, write_idle, None, None, Side::Request).boxed()
        } else {
            body
        });
        None
    };
    let attempts = if buffered.is_some() && idempotent {
        retry.attempts.max(1)
    } else {
        1
    };

    upstream.count_request();
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt = 0;
    let mut last_error: Option<ProxyError> = None;
    // The last attempt's response kept for a retry, with its deadline.
    let mut last_response: Option<(Response<Incoming>, tokio::time::Instant)> = None;
    loop {
        attempt += 1;
        trace.attempts = attempt;
        let mut claim = match upstream.select(&ctx, &tried) {
            Ok(c) => c,
            // A retry that finds no other target reports what the last
            // attempt got.
            Err(e) => {
                if let Some((resp, deadline)) = last_response.take() {
                    let activity = active.take();
                    return Ok(finish_response(
                        resp,
                        policies,
                        request_id,
                        client_upgrade,
                        parts.version,
                        |b| {
                            TimedBody::new(
                                b,
                                Some(deadline),
                                Some(read_idle),
                                None,
                                activity,
                                Side::Response,
                            )
                            .boxed()
                        },
                    ));
                }
                return Err(last_error.take().unwrap_or(e));
            }
        };
        let index = claim.index;
        last_error = None;
        last_response = None;
        let target = &upstream.targets[index];
        trace.target = Some(index);
        tried.push(index);
        let uri = upstream_uri(target, upstream.tls.is_some(), &path_and_query)?;
        let mut out = Request::new(match (&buffered, body_once.take()) {
            (Some(bytes), _) => body::full(bytes.clone()),
            (None, Some(b)) => b,
            (None, None) => body::empty(),
        });
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = if attempt < attempts {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        let attempt_span = trace.span.as_ref().map(|s| {
            let child = s.attempt(&parts.method, &upstream.name, &target.address, attempt);
            child.inject(out.headers_mut());
            child
        });

        let sent_at = tokio::time::Instant::now();
        let result = tokio::time::timeout(head_timeout, upstream.client().request(out)).await;
        let result = match result {
            Err(_) => Err(ProxyError::Timeout {
                target: target.address.clone(),
                timeout_ms: head_timeout.as_millis() as u64,
            }),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect {
                target: target.address.clone(),
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(classify_send_error(&target.address, &e, max_body)),
            Ok(Ok(resp)) => Ok(resp),
        };
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        upstream.metrics.attempt(status, sent_at.elapsed());
        if let Some(span) = attempt_span {
            match (&result, status) {
                (_, Some(status)) => span.answered(status),
                (Err(e), None) => span.failed(e.kind(), || e.to_string()),
                (Ok(_), None) => span.ok(),
            }
        }
        let can_retry = attempt < attempts;
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let failed = status >= 500;
                upstream.record_attempt(
                    &mut claim,
                    if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                );
                let deadline = sent_at + Duration::from_millis(request_ms.max(1));
                if can_retry && retry.on_status.contains(&u32::from(status)) && upstream.try_retry()
                {
                    backoff(retry.backoff_ms).await;
                    last_response = Some((resp, deadline));
                    continue;
                }
                // The claim stays with the body: the target counts this
                // request in flight until the body ends or is dropped.
                let activity = active.take();
                return Ok(finish_response(
                    resp,
                    policies,
                    request_id,
                    client_upgrade,
                    parts.version,
                    |b| {
                        TimedBody::new(
                            b,
                            Some(deadline),
                            Some(read_idle),
                            Some(claim),
                            activity,
                            Side::Response,
                        )
                        .boxed()
                    },
                ));
            }
            Err(e) => {
                if e.is_target_failure() {
                    upstream.record_attempt(&mut claim, Outcome::Failure);
                }
                if can_retry && e.retryable() && upstream.try_retry() {
                    backoff(retry.backoff_ms).await;
                    last_error = Some(e);
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// Phase 4: the route's agents, in order. `Ok(Some)` is a deny or a
/// redirect (the request goes no further); `Ok(None)` lets it through with
/// the agents' request header mutations applied to `parts`.
#[allow(clippy::too_many_arguments)]
async fn agents_phase(
    rt: &Runtime,
    conn: &ConnInfo,
    route: &RouteEntry,
    parts: &mut http::request::Parts,
    body: &mut Body,
    host: &str,
    request_id: &HeaderValue,
    upstream: &Upstream,
    trace: &mut Trace,
) -> Result<Option<Response<Body>>, ProxyError> {
    use sentinel_proto::agent_protocol as ap;

    let policies = &route.policies;
    let agents: Vec<&Arc<Agent>> = route
        .resource
        .agents
        .iter()
        .filter_map(|n| rt.agents.get(n))
        .collect();
    // The body's beginning, read once for every agent that wants it.
    let want = agents.iter().filter_map(|a| a.body_bytes).max();
    let (prefix, more) = match want {
        Some(limit) if !body.is_end_stream() => {
            let request_ms = if policies.timeout_ms > 0 {
                policies.timeout_ms
            } else {
                upstream.timeouts.request_ms
            };
            read_prefix(body, limit, Duration::from_millis(request_ms.max(1))).await?
        }
        _ => (Bytes::new(), false),
    };
    let (failure_open, timeout_override) = agent_overrides(policies);
    let request_id_text = request_id.to_str().unwrap_or("-");
    let at = trace.agents.get_or_insert_with(Default::default);
    let mut streamed: Vec<Arc<Agent>> = Vec::new();
    for agent in agents {
        let body_part = match agent.body_bytes {
            Some(limit) => {
                let n = prefix.len().min(limit as usize);
                (prefix.slice(..n).to_vec(), more || n < prefix.len())
            }
            None => (Vec::new(), false),
        };
        let mut event = ap::RequestEvent {
            protocol_version: ap::PROTOCOL_VERSION,
            request_id: request_id_text.to_string(),
            route: route.name.to_string(),
            agent: agent.name.clone(),
            method: parts.method.as_str().to_string(),
            scheme: if conn.tls { "https" } else { "http" }.to_string(),
            authority: host.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            http_version: verdict::version_text(parts.version).to_string(),
            headers: verdict::wire_headers(&parts.headers),
            client_ip: conn.client_ip.clone(),
            client_port: u32::from(conn.client.port()),
            tls: Some({
                let facts = conn.tls_facts.get();
                ap::Tls {
                    secure: conn.tls,
                    sni: facts.map(|f| f.sni.clone()).unwrap_or_default(),
                    alpn: facts.map(|f| f.alpn.clone()).unwrap_or_default(),
                    version: facts.map(|f| f.version.clone()).unwrap_or_default(),
                }
            }),
            trace: verdict::trace_context(&parts.headers),
            metadata: at.metadata.clone(),
            body: body_part.0,
            body_truncated: body_part.1,
        };
        let span = trace.span.as_ref().map(|s| agent_span(s, agent, "request"));
        if let Some(tp) = span.as_ref().and_then(ChildSpan::traceparent) {
            // The agent's own spans become children of its call.
            event.trace = Some(ap::TraceContext {
                traceparent: tp,
                tracestate: event.trace.take().map(|t| t.tracestate).unwrap_or_default(),
            });
        }
        let timeout = timeout_override.unwrap_or(agent.timeout);
        let v = match agent.on_request(event, timeout).await {
            Ok(v) => {
                if let Some(span) = span {
                    span.set(|| KeyValue::new("sentinel.agent.decision", v.action.name()));
                    span.ok();
                }
                v
            }
            Err(failure) => {
                if let Some(span) = span {
                    span.failed("agent", || failure.to_string());
                }
                if failure_open.unwrap_or(agent.failure_open) {
                    agent.count(DecisionResult::FailedOpen);
                    tracing::debug!(agent = %agent.name, request_id = request_id_text, error = %failure, "agent failed; failing open");
                    continue;
                }
                agent.count(DecisionResult::FailedClosed);
                return Err(ProxyError::AgentFailed {
                    agent: agent.name.clone(),
                    reason: failure.to_string(),
                });
            }
        };
        at.metadata.extend(v.metadata);
        if !v.response_headers.is_empty() {
            at.response_headers.push(v.response_headers);
        }
        let answer = match v.action {
            Action::Allow => {
                agent.count(DecisionResult::Allow);
                v.request_headers.apply(&mut parts.headers);
                if v.inspect_response {
                    at.inspect.push(Arc::clone(agent));
                }
                if agent.streamed_bytes.is_some() {
                    streamed.push(Arc::clone(agent));
                }
                continue;
            }
            deny_or_redirect => {
                agent.count(match deny_or_redirect {
                    Action::Redirect { .. } => DecisionResult::Redirect,
                    _ => DecisionResult::Deny,
                });
                agent_answer(deny_or_redirect, request_id)
            }
        };
        return Ok(Some(answer));
    }
    if want.is_some() && !prefix.is_empty() {
        let rest = std::mem::replace(body, body::empty());
        *body = body::prefixed(prefix, rest);
    }
    if !streamed.is_empty() && !body.is_end_stream() {
        let whole = std::mem::replace(body, body::empty());
        *body = streamed::tap(
            whole,
            streamed,
            streamed::Request {
                request_id: request_id_text.to_string(),
                route: route.name.to_string(),
                metadata: at.metadata.clone(),
                timeout: timeout_override,
                failure_open,
                denied: Arc::clone(&at.body_denied),
            },
        );
    }
    Ok(None)
}

/// A client span for one agent call (`phase`: `request` or `response`).
fn agent_span(parent: &RequestSpan, agent: &Agent, phase: &'static str) -> ChildSpan {
    parent.child(SpanKind::Client, || {
        (
            format!("agent {} {phase}", agent.name),
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("sentinel.agent", agent.name.clone()),
            ],
        )
    })
}

/// The route's overrides of its agents' failure mode (`Some(true)`: open)
/// and timeout.
fn agent_overrides(policies: &pb::RoutePolicies) -> (Option<bool>, Option<Duration>) {
    let failure_open = match pb::FailureMode::try_from(policies.agent_failure_mode) {
        Ok(pb::FailureMode::Open) => Some(true),
        Ok(pb::FailureMode::Closed) => Some(false),
        _ => None,
    };
    let timeout =
        (policies.agent_timeout_ms > 0).then(|| Duration::from_millis(policies.agent_timeout_ms));
    (failure_open, timeout)
}

/// The client's answer to an agent's deny or redirect.
fn agent_answer(action: Action, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = match action {
        Action::Deny {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(body::full(body));
            *resp.status_mut() = status;
            for (n, v) in headers {
                resp.headers_mut().append(n, v);
            }
            resp
        }
        Action::Redirect { status, location } => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        Action::Allow => Response::new(body::empty()),
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

/// Reads at most `limit` bytes of `body` (whole frames; one frame may pass
/// the limit). Returns what was read and whether more remains in `body`.
async fn read_prefix(
    body: &mut Body,
    limit: u64,
    timeout: Duration,
) -> Result<(Bytes, bool), ProxyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = bytes::BytesMut::new();
    while (buf.len() as u64) < limit {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::RequestBodyTimeout {
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::BadRequest(format!("reading body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    let more = !body.is_end_stream();
    Ok((buf.freeze(), more))
}

/// Phase 6 for agents that asked: each sees the response head and may
/// rewrite its headers. A failure under `failure-mode "closed"` turns the
/// response into a 503.
async fn response_agents(
    route: &RouteEntry,
    agents: &mut AgentTrace,
    resp: &mut Response<Body>,
    request_id: &HeaderValue,
    request_span: Option<&RequestSpan>,
) -> Result<(), ProxyError> {
    use sentinel_proto::agent_protocol as ap;
    let policies = &route.policies;
    let (failure_open, timeout_override) = agent_overrides(policies);
    for agent in std::mem::take(&mut agents.inspect) {
        let event = ap::ResponseEvent {
            protocol_version: ap::PROTOCOL_VERSION,
            request_id: request_id.to_str().unwrap_or("-").to_string(),
            route: route.name.to_string(),
            agent: agent.name.clone(),
            status: u32::from(resp.status().as_u16()),
            headers: verdict::wire_headers(resp.headers()),
            metadata: agents.metadata.clone(),
        };
        let span = request_span.map(|s| agent_span(s, &agent, "response"));
        match agent
            .on_response(event, timeout_override.unwrap_or(agent.timeout))
            .await
        {
            Ok(v) => {
                if let Some(span) = span {
                    span.ok();
                }
                v.response_headers.apply(resp.headers_mut());
                agents.metadata.extend(v.metadata);
            }
            Err(failure) => {
                if let Some(span) = span {
                    span.failed("agent", || failure.to_string());
                }
                if failure_open.unwrap_or(agent.failure_open) {
                    agent.count(DecisionResult::FailedOpen);
                    continue;
                }
                agent.count(DecisionResult::FailedClosed);
                return Err(ProxyError::AgentFailed {
                    agent: agent.name.clone(),
                    reason: failure.to_string(),
                });
            }
        }
    }
    Ok(())
}

async fn backoff(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn classify_send_error(
    target: &str,
    e: &hyper_util::client::legacy::Error,
    max_body: u64,
) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return ProxyError::BodyTooLarge { limit: max_body };
        }
        match s.downcast_ref::<ProxyError>() {
            Some(ProxyError::RequestBodyTimeout { timeout_ms }) => {
                return ProxyError::RequestBodyTimeout {
                    timeout_ms: *timeout_ms,
                };
            }
            // A `body "streamed"` agent failed closed mid-body.
            Some(ProxyError::AgentFailed { agent, reason }) => {
                return ProxyError::AgentFailed {
                    agent: agent.clone(),
                    reason: reason.clone(),
                };
            }
            _ => {}
        }
        source = s.source();
    }
    ProxyError::Upstream {
        target: target.to_string(),
        reason: error_chain(e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The client's response from the upstream's: headers rewritten, the
/// upgrade spliced, the body wrapped by `body` (deadlines, claims).
fn finish_response(
    mut resp: Response<Incoming>,
    policies: &pb::RoutePolicies,
    request_id: &HeaderValue,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    downstream_version: Version,
    body: impl FnOnce(Incoming) -> Body,
) -> Response<Body> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, client_upgrade) {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(client, upstream_side));
    }
    let (mut parts, incoming) = resp.into_parts();
    // The client's protocol version, not the upstream's (an HTTP/1.0
    // upstream must not turn the client's connection into HTTP/1.0).
    parts.version = downstream_version;
    if !switching {
        strip_hop_by_hop(&mut parts.headers);
    }
    if let Some(rw) = &policies.response_headers {
        rewrite(&mut parts.headers, rw);
    }
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let body = if switching {
        body::empty()
    } else {
        body(incoming)
    };
    Response::from_parts(parts, body)
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The lower-cased host the client asked for (Host header, or the HTTP/2
/// authority).
fn request_host<B>(req: &Request<B>) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    raw.to_ascii_lowercase()
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn upstream_headers(
    mut headers: HeaderMap,
    conn: &ConnInfo,
    host: &str,
    request_id: &HeaderValue,
    policies: &pb::RoutePolicies,
    upgrade: bool,
) -> HeaderMap {
    let upgrade_proto = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if let (true, Some(proto)) = (upgrade, upgrade_proto) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    if !headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, v);
    }
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.client_ip)).ok(),
        None => HeaderValue::from_str(&conn.client_ip).ok(),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(rw) = &policies.request_headers {
        rewrite(&mut headers, rw);
    }
    headers
}

fn rewrite(headers: &mut HeaderMap, rw: &pb::HeaderRewrite) {
    for name in &rw.remove {
        headers.remove(name.as_str());
    }
    for h in &rw.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.insert(n, v);
        }
    }
}

/// The consistent-hash key of a request, when the upstream uses one.
fn hash_key_value(
    upstream: &Upstream,
    parts: &http::request::Parts,
    client_ip: &str,
) -> Option<Vec<u8>> {
    let lb = upstream.resource.load_balancing.as_ref()?;
    if lb.algorithm != pb::LoadBalancingAlgorithm::ConsistentHash as i32 {
        return None;
    }
    let key = lb.hash_key.as_str();
    if key == "client-ip" {
        return Some(client_ip.as_bytes().to_vec());
    }
    if key == "path" {
        return Some(parts.uri.path().as_bytes().to_vec());
    }
    if let Some(h) = key.strip_prefix("header:") {
        return parts.headers.get(h).map(|v| v.as_bytes().to_vec());
    }
    let cookie = key.strip_prefix("cookie:")?;
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == cookie).then(|| v.as_bytes().to_vec())
        })
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::rng().random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `http://{target}{path?query}` without re-parsing either part.
fn upstream_uri(
    target: &crate::upstream::Target,
    tls: bool,
    pq: &http::uri::PathAndQuery,
) -> Result<Uri, ProxyError> {
    let Some(authority) = target.authority.clone() else {
        return Err(ProxyError::Connect {
            target: target.address.clone(),
            reason: "not a valid host:port".into(),
        });
    };
    let mut parts = http::uri::Parts::default();
    // `https` for TLS upstreams: the `:scheme` an HTTP/2 target sees.
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq.clone());
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))
}

fn rate_limit_headers(headers: &mut HeaderMap, d: &Decision) {
    let set = |headers: &mut HeaderMap, name: &'static str, v: u64| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(v));
    };
    set(headers, "x-ratelimit-limit", u64::from(d.limit));
    set(headers, "x-ratelimit-remaining", u64::from(d.remaining));
    set(headers, "x-ratelimit-reset", d.reset_secs);
}

/// The response for a request that failed before an upstream answered.
pub fn error_response(e: &ProxyError, request_id: &HeaderValue) -> Response<Body> {
    let status = e.status();
    let text = format!(
        "{{\"status\":{},\"error\":{},\"request_id\":{}}}\n",
        status.as_u16(),
        serde_json::Value::String(e.public_reason().to_string()),
        serde_json::Value::String(request_id.to_str().unwrap_or("-").to_string())
    );
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let ProxyError::RateLimited {
        retry_after_secs, ..
    } = e
    {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_are_added_and_appended() {
        let conn = ConnInfo {
            client: "10.1.2.3:5555".parse().unwrap(),
            client_ip: "10.1.2.3".into(),
            listener: Arc::from("l"),
            tls: true,
            tls_facts: Default::default(),
            stop: None,
            activity: Activity::default(),
        };
        let mut incoming = HeaderMap::new();
        incoming.insert(X_FORWARDED_FOR.clone(), "1.1.1.1".parse().unwrap());
        incoming.insert(header::HOST, "example.com".parse().unwrap());
        let id = HeaderValue::from_static("abc");
        let h = upstream_headers(
            incoming,
            &conn,
            "example.com",
            &id,
            &pb::RoutePolicies::default(),
            false,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
        assert_eq!(h[&X_REQUEST_ID], "abc");
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
