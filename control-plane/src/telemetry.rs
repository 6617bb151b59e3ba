//! Control-plane metrics (prefix `sentinel_cp_`) and logging set-up.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sentinel_telemetry::logging::{self, LogSettings};
use sentinel_telemetry::metrics::Buckets;
use sentinel_telemetry::trace::{Pipeline, Propagation, Settings};

pub const METRICS: &[&str] = &[
    "sentinel_cp_connected_nodes",
    "sentinel_cp_pushes_total",
    "sentinel_cp_push_bytes_total",
    "sentinel_cp_push_encodes_total",
    "sentinel_cp_large_pushes_in_flight",
    "sentinel_cp_large_pushes_waiting",
    "sentinel_cp_admission_wait_seconds",
    "sentinel_cp_acks_total",
    "sentinel_cp_nacks_total",
    "sentinel_cp_convergence_seconds",
    "sentinel_cp_push_to_ack_seconds",
    "sentinel_cp_nodes_behind",
    "sentinel_cp_store_up",
    "sentinel_cp_stream_errors_total",
    "sentinel_cp_resyncs_total",
    "sentinel_cp_stale_answers_total",
    "sentinel_cp_applies_total",
    "sentinel_cp_rollbacks_total",
    "sentinel_cp_health_reports_total",
    "sentinel_cp_node_updates_queued",
    "sentinel_cp_node_updates_dropped_total",
    "sentinel_cp_stream_refusals_total",
    "sentinel_cp_effective_rebuilds_total",
    "sentinel_cp_discovery_leader",
    "sentinel_cp_discovery_sets_received_total",
    "sentinel_cp_discovery_store_queued",
    "sentinel_cp_discovery_store_writes_total",
    "sentinel_cp_fleet_health_marked_down",
    "sentinel_cp_rollout_stage",
    "sentinel_cp_rollout_gate_decisions_total",
    "sentinel_cp_rollout_stage_seconds",
    "sentinel_cp_rollouts_total",
    "sentinel_cp_rollout_leader",
    // Registered by the sentinel-discovery crate under `discovery::METRIC_PREFIX`.
    "sentinel_cp_discovery_targets",
    "sentinel_cp_discovery_refresh_total",
    "sentinel_cp_discovery_last_success_timestamp_seconds",
    "sentinel_cp_discovery_stale",
    // Registered by `sentinel_telemetry::trace` with the prefix `sentinel_cp`.
    "sentinel_cp_tracing_spans_exported_total",
    "sentinel_cp_tracing_spans_dropped_total",
];

/// Convergence and stage durations: five milliseconds to a minute.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A push is usually answered within milliseconds (a proxy applies off
/// its workers); a slow build or a big config takes seconds.
const PUSH_TO_ACK: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BUCKETS: &[Buckets<'static>] = &[
    ("sentinel_cp_convergence_seconds", SECONDS),
    ("sentinel_cp_rollout_stage_seconds", SECONDS),
    ("sentinel_cp_push_to_ack_seconds", PUSH_TO_ACK),
    ("sentinel_cp_admission_wait_seconds", PUSH_TO_ACK),
];

/// Installs the global Prometheus recorder once; later calls return it.
pub fn metrics() -> PrometheusHandle {
    sentinel_telemetry::metrics::install(BUCKETS, &[])
}

/// Aggregates histograms regularly (bounded memory without scrapes).
pub fn spawn_upkeep() {
    sentinel_telemetry::metrics::spawn_upkeep(metrics());
}

/// Publishes the number of connected nodes of `region`.
pub fn connected(region: &str, nodes: usize) {
    metrics::gauge!("sentinel_cp_connected_nodes", "region" => region.to_string())
        .set(nodes as f64);
}

/// Publishes the open rollout's current stage (1-based; 0: none open).
pub fn rollout_stage(stage: Option<i64>) {
    metrics::gauge!("sentinel_cp_rollout_stage").set(stage.map_or(0.0, |s| (s + 1) as f64));
}

/// Where the control plane's own spans go (`--otlp-endpoint`).
#[derive(Debug, Clone, Default)]
pub struct Tracing {
    /// OTLP/gRPC collector; empty: spans get ids (config changes still
    /// carry a trace context to proxies) but are not exported.
    pub endpoint: String,
    pub sampling_rate: f64,
    pub replica: String,
    pub region: String,
}

/// Installs logging and the trace pipeline whose `tracing` layer turns the
/// control plane's spans (an apply, its validation, store and activation)
/// into OpenTelemetry spans. Must run inside the runtime.
pub fn init(tracing: &Tracing) -> Result<Arc<Pipeline>, String> {
    let pipeline = Pipeline::start(Settings {
        endpoint: tracing.endpoint.clone(),
        sampling_rate: tracing.sampling_rate,
        service_name: "sentinel-cp".into(),
        propagation: Propagation::W3c,
        resource: vec![
            ("service.instance.id".into(), tracing.replica.clone()),
            ("sentinel.region".into(), tracing.region.clone()),
        ],
        metric_prefix: "sentinel_cp",
    })?;
    logging::init(LogSettings::default(), Some(pipeline.layer()));
    Ok(pipeline)
}

/// Parents `span` on the W3C `traceparent` header of a request (a config
/// change `sentinelctl` started). A missing or malformed header leaves the
/// span the root of a new trace; it is never an error.
pub fn parent_on_request(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(value) = headers.get("traceparent") else {
        return;
    };
    let parent = value
        .to_str()
        .map(sentinel_telemetry::trace::from_traceparent)
        .ok()
        .filter(|cx| sentinel_telemetry::trace::trace_id(cx).is_some());
    match parent {
        Some(cx) => {
            let _ = span.set_parent(cx);
        }
        None => tracing::debug!("ignoring a malformed traceparent header; starting a new trace"),
    }
}

/// `span` as a W3C traceparent (`None` when spans are not recorded, e.g.
/// no trace pipeline is installed or the span is disabled).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    sentinel_telemetry::trace::traceparent(&span.context())
}

/// The trace id of `span` (32 hex digits), when it is recorded.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    sentinel_telemetry::trace::trace_id(&span.context())
}
