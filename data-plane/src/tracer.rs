//! The proxy's OpenTelemetry pipeline, following the live config's
//! `observability.tracing` in standalone and control-plane mode alike.
//!
//! [`apply`] runs whenever a config goes live; it starts a new pipeline
//! only when the tracing settings changed (the old one exports what it
//! queued and ends). The request path reads [`current`]: one atomic load,
//! and nothing more when tracing is off.
//!
//! Sampling is decided here before the SDK is involved: a request whose
//! parent is sampled, or a new trace drawn at `sampling-rate`, gets SDK
//! spans (the pipeline's own sampler is parent-based with every root
//! sampled, so it agrees); any other request only gets span ids for the
//! context it passes on — no SDK span, no lock, no clock read, nothing
//! formatted but the header it sends upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use sentinel_proto as pb;
use sentinel_telemetry::trace::TraceContextExt as _;
use sentinel_telemetry::trace::{
    Context, KeyValue, Pipeline, Propagation, Settings, SpanContext, SpanId, SpanKind, Status,
    TraceFlags, TraceId, TraceState, Tracer,
};

static CURRENT: ArcSwapOption<Pipeline> = ArcSwapOption::const_empty();
/// `sampling-rate` of the live config (an `f64`'s bits): the share of new
/// traces this proxy samples.
static ROOT_RATE: AtomicU64 = AtomicU64::new(0);

/// The live pipeline; `None` while tracing is off.
pub fn current() -> arc_swap::Guard<Option<Arc<Pipeline>>> {
    CURRENT.load()
}

/// What a config's tracing block asks for (`None`: tracing off).
fn settings(tracing: Option<&pb::Tracing>) -> Option<Settings> {
    let t = tracing.filter(|t| t.enabled && !t.otlp_endpoint.is_empty())?;
    let instance = crate::telemetry::instance();
    Some(Settings {
        endpoint: t.otlp_endpoint.clone(),
        // New traces are drawn at `sampling-rate` by `RequestSpan::start`;
        // what reaches the SDK is sampled.
        sampling_rate: 1.0,
        service_name: if t.service_name.is_empty() {
            "sentinel".into()
        } else {
            t.service_name.clone()
        },
        propagation: Propagation::parse(&t.propagation).unwrap_or_default(),
        resource: vec![
            ("service.instance.id".into(), instance.node.clone()),
            ("sentinel.node".into(), instance.node.clone()),
            ("sentinel.region".into(), instance.region.clone()),
            ("sentinel.zone".into(), instance.zone.clone()),
        ],
        metric_prefix: "sentinel",
    })
}

/// Applies a live config's tracing settings. Must run on the runtime.
pub fn apply(tracing: Option<&pb::Tracing>) {
    let rate = tracing.map_or(0.0, |t| t.sampling_rate.clamp(0.0, 1.0));
    ROOT_RATE.store(rate.to_bits(), Ordering::Relaxed);
    let wanted = settings(tracing);
    if CURRENT.load().as_ref().map(|p| p.settings()) == wanted.as_ref() {
        return;
    }
    let Some(wanted) = wanted else {
        CURRENT.store(None);
        tracing::info!("trace export off");
        return;
    };
    match Pipeline::start(wanted) {
        Ok(p) => {
            let s = p.settings();
            tracing::info!(endpoint = %s.endpoint, sampling_rate = rate, propagation = ?s.propagation, "trace export on");
            CURRENT.store(Some(p));
        }
        // The config validated the endpoint; what is left is a transport
        // set-up failure. Serving goes on without traces.
        Err(e) => {
            CURRENT.store(None);
            tracing::warn!(error = %e, "cannot start trace export; tracing is off");
        }
    }
}

/// A proxied request's server span (HTTP semantic conventions) and the
/// children its phases start: rate-limit decisions, agent calls and one
/// client span per upstream attempt, so retries show as siblings.
///
/// Started only while tracing is on; the parent comes from the request's
/// headers (the configured propagation), and the sampler follows a parent's
/// decision or samples new traces at the configured rate. An unsampled span
/// records nothing, but its context still travels upstream; it costs no
/// name or attribute (nothing is formatted for it).
pub struct RequestSpan {
    pipeline: Arc<Pipeline>,
    cx: Context,
    /// Sampled: worth naming and describing.
    recording: bool,
}

/// A child of a [`RequestSpan`]; ends when dropped if not ended before.
pub struct ChildSpan {
    pipeline: Arc<Pipeline>,
    cx: Context,
    recording: bool,
}

impl RequestSpan {
    /// The server span of `req`, when tracing is on.
    pub fn start<B>(
        req: &http::Request<B>,
        client: std::net::SocketAddr,
        tls: bool,
    ) -> Option<Self> {
        let guard = current();
        let pipeline = guard.as_ref()?;
        let parent = pipeline.extract(req.headers());
        let from = parent.span().span_context().clone();
        let sampled = if from.is_valid() {
            from.is_sampled()
        } else {
            rand::random::<f64>() < f64::from_bits(ROOT_RATE.load(Ordering::Relaxed))
        };
        if !sampled {
            let trace_id = if from.is_valid() {
                from.trace_id()
            } else {
                TraceId::from(rand::random::<u128>() | 1)
            };
            return Some(RequestSpan {
                pipeline: Arc::clone(pipeline),
                cx: unsampled(&parent, trace_id, from.trace_state()),
                recording: false,
            });
        }
        let tracer = pipeline.tracer();
        let cx = parent.with_span(
            tracer
                .span_builder(req.method().as_str().to_string())
                .with_kind(SpanKind::Server)
                .with_attributes(request_attributes(req, client, tls))
                .start_with_context(tracer, &parent),
        );
        Some(RequestSpan {
            pipeline: Arc::clone(pipeline),
            cx,
            recording: true,
        })
    }

    /// The trace id, for the access log.
    pub fn trace_id(&self) -> Option<String> {
        sentinel_telemetry::trace::trace_id(&self.cx)
    }

    /// Names the span after its route (`GET orders`), as the conventions
    /// name server spans after the route template.
    pub fn routed(&self, method: &http::Method, route: &str) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
    }

    /// Starts a child span; `describe` (its name and attributes) runs only
    /// when the request is sampled.
    pub fn child(
        &self,
        kind: SpanKind,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> ChildSpan {
        let cx = if self.recording {
            let tracer = self.pipeline.tracer();
            let (name, attributes) = describe();
            self.cx.with_span(
                tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(tracer, &self.cx),
            )
        } else {
            let span = self.cx.span();
            let sc = span.span_context();
            unsampled(&self.cx, sc.trace_id(), sc.trace_state())
        };
        ChildSpan {
            pipeline: Arc::clone(&self.pipeline),
            cx,
            recording: self.recording,
        }
    }

    /// A client span for one upstream attempt (`attempt` counts from 1).
    pub fn attempt(
        &self,
        method: &http::Method,
        upstream: &str,
        target: &str,
        attempt: u32,
    ) -> ChildSpan {
        self.child(SpanKind::Client, || {
            attempt_description(method, upstream, target, attempt)
        })
    }

    /// Ends the server span with the response the client got. A 5xx (or a
    /// failure the client got as one) is an error, as the conventions say
    /// for server spans.
    pub fn finish(
        &self,
        status: u16,
        upstream: Option<&str>,
        target: Option<&str>,
        attempts: u32,
        error: Option<String>,
    ) {
        let span = self.cx.span();
        if !self.recording {
            span.end();
            return;
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(u) = upstream {
            span.set_attribute(KeyValue::new("sentinel.upstream", u.to_string()));
        }
        if let Some(t) = target {
            span.set_attribute(KeyValue::new("sentinel.target", t.to_string()));
        }
        if attempts > 1 {
            span.set_attribute(KeyValue::new("sentinel.attempts", i64::from(attempts)));
        }
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(error.unwrap_or_default()));
        }
        span.end();
    }
}

impl ChildSpan {
    /// Writes this span's context into outgoing headers (the configured
    /// propagation), replacing what the client sent.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        self.pipeline.inject(&self.cx, headers);
    }

    /// This span's context as a W3C `traceparent` (for agents).
    pub fn traceparent(&self) -> Option<String> {
        sentinel_telemetry::trace::traceparent(&self.cx)
    }

    /// Adds an attribute (made only when the span is sampled).
    pub fn set(&self, attribute: impl FnOnce() -> KeyValue) {
        if self.recording {
            self.cx.span().set_attribute(attribute());
        }
    }

    /// Ends the span as a success.
    pub fn ok(self) {
        self.cx.span().end();
    }

    /// Ends the span as a failure of `kind` (`error.type`).
    pub fn failed(self, kind: &str, message: impl FnOnce() -> String) {
        let span = self.cx.span();
        if !self.recording {
            span.end();
            return;
        }
        span.set_status(Status::error(message()));
        span.set_attribute(KeyValue::new("error.type", kind.to_string()));
        span.end();
    }

    /// Ends an HTTP client span with the status the upstream answered
    /// (4xx and 5xx are errors for a client span).
    pub fn answered(self, status: u16) {
        let span = self.cx.span();
        if !self.recording {
            span.end();
            return;
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(String::new()));
        }
        span.end();
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The context of an unsampled span: a new span id in `trace_id`, not
/// sampled, the trace state kept; nothing is recorded for it.
fn unsampled(parent: &Context, trace_id: TraceId, state: &TraceState) -> Context {
    parent.with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from(rand::random::<u64>() | 1),
        TraceFlags::default(),
        false,
        state.clone(),
    ))
}

fn request_attributes<B>(
    req: &http::Request<B>,
    client: std::net::SocketAddr,
    tls: bool,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_string()),
        KeyValue::new("url.path", req.uri().path().to_string()),
        KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
        KeyValue::new("client.address", client.ip().to_string()),
        KeyValue::new("client.port", i64::from(client.port())),
        KeyValue::new("network.protocol.version", protocol_version(req.version())),
    ];
    if let Some(query) = req.uri().query() {
        attributes.push(KeyValue::new("url.query", query.to_string()));
    }
    attributes
}

fn attempt_description(
    method: &http::Method,
    upstream: &str,
    target: &str,
    attempt: u32,
) -> (String, Vec<KeyValue>) {
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.as_str().to_string()),
        KeyValue::new("sentinel.upstream", upstream.to_string()),
    ];
    match target.rsplit_once(':') {
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            attributes.push(KeyValue::new("server.address", host.to_string()));
            if let Ok(port) = port.parse::<i64>() {
                attributes.push(KeyValue::new("server.port", port));
            }
        }
        None => attributes.push(KeyValue::new("server.address", target.to_string())),
    }
    if attempt > 1 {
        attributes.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(attempt - 1),
        ));
    }
    (method.as_str().to_string(), attributes)
}
