//! OpenTelemetry traces: export over OTLP/gRPC through a bounded queue, and
//! trace-context propagation (W3C Trace Context, or B3) in HTTP headers and
//! in the control plane's stream.
//!
//! A [`Pipeline`] is one exporter set-up: a tracer provider with a
//! parent-based ratio sampler, whose finished spans go through a bounded
//! queue to one export task. The request path only ever does a `try_send`
//! into that queue: when the collector is slow or down the queue fills and
//! further spans are dropped and counted (`<prefix>_tracing_spans_dropped_total`
//! by reason), never waited for. The SDK's own batch processor is not used
//! because it neither reports its drops nor runs on the tokio runtime the
//! tonic exporter needs.
//!
//! A pipeline with no endpoint exports nothing but still creates spans with
//! real ids, so the control plane can hand out trace contexts (and
//! `sentinelctl trace` can name a trace) when no collector is configured.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
pub use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
pub use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;

/// Spans waiting for export; more are dropped (and counted).
pub const QUEUE: usize = 2048;
/// Spans per export call at most.
const MAX_BATCH: usize = 512;
/// How long a span may wait for more to share its export call.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// One export call may take this long before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How trace context travels in HTTP headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `traceparent` / `tracestate` (W3C Trace Context).
    #[default]
    W3c,
    /// Zipkin's B3: reads the single `b3` header and the `X-B3-*` headers,
    /// writes the `X-B3-*` headers.
    B3,
}

impl Propagation {
    /// `w3c` or `b3` (the config language's names).
    pub fn parse(name: &str) -> Option<Propagation> {
        match name {
            "" | "w3c" => Some(Propagation::W3c),
            "b3" => Some(Propagation::B3),
            _ => None,
        }
    }
}

/// What a [`Pipeline`] exports, where, and how often it samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// OTLP/gRPC collector (`http://host:4317`); empty: export nothing.
    pub endpoint: String,
    /// Share of new traces sampled, 0.0–1.0. A request that arrives with
    /// a sampled (or unsampled) parent follows its parent's decision.
    pub sampling_rate: f64,
    /// `service.name` of every span.
    pub service_name: String,
    pub propagation: Propagation,
    /// More resource attributes (`service.instance.id`, `sentinel.region`…).
    pub resource: Vec<(String, String)>,
    /// Prefix of the pipeline's own metrics (`sentinel`, `sentinel_cp`).
    pub metric_prefix: &'static str,
}

/// One exporter set-up. Cheap to share; dropping the last handle ends the
/// export task once the queue is drained.
pub struct Pipeline {
    settings: Settings,
    tracer: SdkTracer,
    /// Asks the export task to export everything queued now.
    flush: Option<mpsc::Sender<oneshot::Sender<()>>>,
    _provider: SdkTracerProvider,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds the pipeline. Must run inside a tokio runtime (the export
    /// task and the exporter's gRPC channel live on it). The collector is
    /// connected lazily: an unreachable one is not an error here, only
    /// dropped spans later.
    pub fn start(settings: Settings) -> Result<Arc<Pipeline>, String> {
        if !(0.0..=1.0).contains(&settings.sampling_rate) {
            return Err(format!(
                "sampling rate {} is outside 0.0–1.0",
                settings.sampling_rate
            ));
        }
        let mut resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attribute(KeyValue::new("service.name", settings.service_name.clone()))
            .with_attribute(KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION").to_string(),
            ));
        for (k, v) in &settings.resource {
            resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
        }
        let resource = resource.build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sampling_rate)));
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource.clone());
        let mut flush = None;
        if !settings.endpoint.is_empty() {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("OTLP exporter for {}: {e}", settings.endpoint))?;
            exporter.set_resource(&resource);
            let (processor, flusher) = QueueProcessor::start(exporter, settings.metric_prefix);
            flush = Some(flusher);
            builder = builder.with_span_processor(processor);
        }
        let provider = builder.build();
        let tracer = provider.tracer("sentinel");
        Ok(Arc::new(Pipeline {
            settings,
            tracer,
            flush,
            _provider: provider,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The trace context a request carries in its headers (an empty
    /// context when it carries none or a malformed one).
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        let carrier = HeaderExtractor(headers);
        match self.settings.propagation {
            Propagation::W3c => TraceContextPropagator::new().extract(&carrier),
            Propagation::B3 => B3.extract(&carrier),
        }
    }

    /// Writes `cx` into outgoing headers, replacing whatever trace headers
    /// of the configured propagation they carried.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        match self.settings.propagation {
            Propagation::W3c => inject_w3c(cx, headers),
            Propagation::B3 => {
                headers.remove("b3");
                inject_with(&B3, cx, headers);
            }
        }
    }

    /// A `tracing` layer exporting the spans of Sentinel's own code (targets
    /// starting with `sentinel`) through this pipeline.
    pub fn layer(&self) -> crate::logging::Extra {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(filter_fn(|m| m.target().starts_with("sentinel")))
            .boxed()
    }

    /// Exports every span ended so far, waiting at most `timeout` (for a
    /// process about to exit; the collector may be gone).
    pub async fn flush(&self, timeout: Duration) {
        let Some(flush) = &self.flush else { return };
        let (done, wait) = oneshot::channel();
        if flush.send(done).await.is_ok() {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }
}

fn inject_with(p: &dyn TextMapPropagator, cx: &Context, headers: &mut HeaderMap) {
    for field in p.fields() {
        headers.remove(field);
    }
    p.inject_context(cx, &mut HeaderInjector(headers));
}

/// W3C Trace Context without the propagator's string formatting (this
/// runs once per proxied request): `traceparent` from a stack buffer, and
/// `tracestate` when there is one.
fn inject_w3c(cx: &Context, headers: &mut HeaderMap) {
    headers.remove("tracestate");
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        headers.remove("traceparent");
        return;
    }
    let buf = traceparent_bytes(sc);
    if let Ok(v) = HeaderValue::from_bytes(&buf) {
        headers.insert(http::header::HeaderName::from_static("traceparent"), v);
    }
    let state = sc.trace_state().header();
    if !state.is_empty()
        && let Ok(v) = HeaderValue::from_str(&state)
    {
        headers.insert(http::header::HeaderName::from_static("tracestate"), v);
    }
}

/// `00-{trace id}-{span id}-{flags}` (55 bytes).
fn traceparent_bytes(sc: &SpanContext) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
    };
    put(3, &sc.trace_id().to_bytes());
    put(36, &sc.span_id().to_bytes());
    put(53, &[sc.trace_flags().to_u8()]);
    out
}

/// `cx` as a W3C `traceparent` value (the form the control plane's stream
/// carries), `None` when it holds no valid span.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| String::from_utf8_lossy(&traceparent_bytes(sc)).into_owned())
}

/// The remote parent a `traceparent` value names (an empty context when it
/// is malformed).
pub fn from_traceparent(value: &str) -> Context {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert("traceparent", v);
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(&headers))
}

/// The trace id of `cx`'s span, as 32 hex digits, when it has one.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Zipkin B3 propagation. Hand-written (about 60 lines) because the
/// maintained one lives in `opentelemetry-zipkin`, which brings a whole
/// Zipkin exporter and an HTTP client with it.
#[derive(Debug)]
struct B3;

static B3_FIELDS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    [
        "x-b3-traceid".into(),
        "x-b3-spanid".into(),
        "x-b3-sampled".into(),
        "x-b3-flags".into(),
    ]
});

impl TextMapPropagator for B3 {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set("x-b3-traceid", sc.trace_id().to_string());
        injector.set("x-b3-spanid", sc.span_id().to_string());
        injector.set(
            "x-b3-sampled",
            if sc.is_sampled() { "1" } else { "0" }.into(),
        );
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let parsed = match extractor.get("b3") {
            Some(single) => b3_single(single),
            None => b3_multi(extractor),
        };
        match parsed {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(B3_FIELDS.as_slice())
    }
}

/// A B3 trace id: 16 or 32 hex digits (64-bit ids are zero-extended).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    if (s.len() != 16 && s.len() != 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = TraceId::from_hex(s).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn b3_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = SpanId::from_hex(s).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn b3_context(trace: &str, span: &str, sampled: Option<&str>) -> Option<SpanContext> {
    let flags = match sampled {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        Some("0" | "false") => TraceFlags::default(),
        // Deferred: let the sampler decide as for a new trace.
        None => TraceFlags::default(),
        Some(_) => return None,
    };
    Some(SpanContext::new(
        b3_trace_id(trace)?,
        b3_span_id(span)?,
        flags,
        true,
        TraceState::default(),
    ))
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
fn b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    b3_context(trace, span, parts.next())
}

fn b3_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let sampled = if extractor.get("x-b3-flags") == Some("1") {
        Some("1")
    } else {
        extractor.get("x-b3-sampled")
    };
    b3_context(
        extractor.get("x-b3-traceid")?.trim(),
        extractor.get("x-b3-spanid")?.trim(),
        sampled.map(str::trim),
    )
}

/// Hands finished, sampled spans to the export task through a bounded
/// queue; never blocks.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    dropped_full: metrics::Counter,
}

impl QueueProcessor {
    fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        prefix: &'static str,
    ) -> (QueueProcessor, mpsc::Sender<oneshot::Sender<()>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let dropped = format!("{prefix}_tracing_spans_dropped_total");
        let exported = metrics::counter!(format!("{prefix}_tracing_spans_exported_total"));
        let dropped_export = metrics::counter!(dropped.clone(), "reason" => "export");
        tokio::spawn(export_loop(
            rx,
            flush_rx,
            exporter,
            exported,
            dropped_export,
        ));
        let processor = QueueProcessor {
            tx,
            dropped_full: metrics::counter!(dropped, "reason" => "queue_full"),
        };
        (processor, flush_tx)
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.dropped_full.increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Batches queued spans (up to [`MAX_BATCH`], or what arrived within
/// [`BATCH_DELAY`] of the first) into one export call each, and exports
/// everything queued when asked to flush; ends when the processor is gone
/// and the queue is empty.
async fn export_loop(
    mut rx: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    exporter: opentelemetry_otlp::SpanExporter,
    exported: metrics::Counter,
    dropped: metrics::Counter,
) {
    let export = |spans: Vec<SpanData>| {
        let n = spans.len() as u64;
        let call = exporter.export(spans);
        let (exported, dropped) = (&exported, &dropped);
        async move {
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(Ok(())) => exported.increment(n),
                Ok(Err(e)) => {
                    dropped.increment(n);
                    tracing::debug!(target: "telemetry", error = %e, spans = n, "trace export failed");
                }
                Err(_) => {
                    dropped.increment(n);
                    tracing::debug!(target: "telemetry", spans = n, "trace export timed out");
                }
            }
        }
    };
    loop {
        let first = tokio::select! {
            span = rx.recv() => match span {
                Some(span) => span,
                None => break,
            },
            Some(done) = flushes.recv() => {
                while let Ok(span) = rx.try_recv() {
                    let mut batch = vec![span];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(span) => batch.push(span),
                            Err(_) => break,
                        }
                    }
                    export(batch).await;
                }
                let _ = done.send(());
                continue;
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        export(batch).await;
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(propagation: Propagation) -> Arc<Pipeline> {
        Pipeline::start(Settings {
            endpoint: String::new(),
            sampling_rate: 1.0,
            service_name: "test".into(),
            propagation,
            resource: Vec::new(),
            metric_prefix: "test",
        })
        .expect("pipeline")
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn w3c_context_is_extracted_and_injected_with_a_new_span() {
        let p = pipeline(Propagation::W3c);
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(PARENT));
        headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let parent = p.extract(&headers);
        assert_eq!(
            trace_id(&parent).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let span = p.tracer().start_with_context("child", &parent);
        let cx = parent.with_span(span);
        let mut out = HeaderMap::new();
        p.inject(&cx, &mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
        assert!(tp.ends_with("-01"), "sampled, as the parent: {tp}");
        assert_eq!(out["tracestate"], "vendor=x");
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
    }

    #[test]
    fn the_traceparent_writer_matches_the_format() {
        for (t, sp, f) in [
            (1u128, 1u64, 0u8),
            (u128::MAX, u64::MAX, 1),
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1),
        ] {
            let sc = SpanContext::new(
                TraceId::from(t),
                SpanId::from(sp),
                TraceFlags::new(f),
                true,
                TraceState::default(),
            );
            let cx = Context::new().with_remote_span_context(sc);
            assert_eq!(
                traceparent(&cx).unwrap(),
                format!("00-{t:032x}-{sp:016x}-{f:02x}")
            );
        }
    }

    #[tokio::test]
    async fn malformed_w3c_headers_start_a_new_trace() {
        let p = pipeline(Propagation::W3c);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_static(bad));
            assert_eq!(trace_id(&p.extract(&headers)), None, "{bad}");
        }
        assert_eq!(trace_id(&from_traceparent("nonsense")), None);
    }

    #[tokio::test]
    async fn b3_single_and_multi_headers_are_read_and_multi_is_written() {
        let p = pipeline(Propagation::B3);
        let mut single = HeaderMap::new();
        single.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let cx = p.extract(&single);
        assert_eq!(
            trace_id(&cx).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert!(cx.span().span_context().is_sampled());

        let mut multi = HeaderMap::new();
        multi.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        multi.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        multi.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let cx = p.extract(&multi);
        assert_eq!(
            trace_id(&cx).as_deref(),
            Some("000000000000000064fe8b2a57d3eff7")
        );
        assert!(!cx.span().span_context().is_sampled());

        let span = p.tracer().start_with_context("child", &cx);
        let child = cx.with_span(span);
        let mut out = single.clone();
        p.inject(&child, &mut out);
        assert!(
            out.get("b3").is_none(),
            "the stale single header is replaced"
        );
        assert_eq!(out["x-b3-traceid"], "000000000000000064fe8b2a57d3eff7");
        assert_eq!(out["x-b3-sampled"], "0", "the parent's decision is kept");
        assert_ne!(out["x-b3-spanid"], "e457b5a2e4d86bd1");

        let mut bad = HeaderMap::new();
        bad.insert("b3", HeaderValue::from_static("xyz-e457b5a2e4d86bd1-1"));
        assert_eq!(trace_id(&p.extract(&bad)), None);
    }

    #[tokio::test]
    async fn the_ratio_sampler_decides_new_traces_and_parents_decide_theirs() {
        let p = Pipeline::start(Settings {
            sampling_rate: 0.0,
            ..pipeline(Propagation::W3c).settings().clone()
        })
        .unwrap();
        let root = p.tracer().start("root");
        assert!(!root.span_context().is_sampled());
        let parent = from_traceparent(PARENT);
        let child = p.tracer().start_with_context("child", &parent);
        assert!(child.span_context().is_sampled());
        assert!(
            Pipeline::start(Settings {
                sampling_rate: 1.5,
                ..p.settings().clone()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn an_unreachable_collector_costs_drops_not_waits() {
        let handle = crate::metrics::install(&[], &[]);
        // A port nobody listens on: every export fails fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Pipeline::start(Settings {
            endpoint: format!("http://127.0.0.1:{port}"),
            metric_prefix: "unreachable",
            ..pipeline(Propagation::W3c).settings().clone()
        })
        .unwrap();
        // Twice what the queue holds: the rest is dropped at once.
        for i in 0..(QUEUE * 2) {
            let mut s = p.tracer().start(format!("span {i}"));
            s.end();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = handle.render();
            let dropped: f64 = text
                .lines()
                .filter(|l| l.starts_with("unreachable_tracing_spans_dropped_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if dropped >= (QUEUE * 2) as f64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "every span is counted as dropped: {dropped}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
