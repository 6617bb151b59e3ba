//! The proxy's metric names, histogram buckets and instance labels, and
//! the glue between its config and the shared set-up in
//! `sentinel-telemetry` (recorder, logging, trace export).
//!
//! Logging follows the live config: [`apply_logging`] runs whenever a
//! config goes live (standalone file, SIGHUP, control-plane response,
//! last-good cache), so `observability.logging` means the same in both
//! modes.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;
use sentinel_proto as pb;
use sentinel_telemetry::logging::{self, LogSettings};
use sentinel_telemetry::metrics::{Buckets, Info};

/// Every metric the proxy registers.
pub const METRICS: &[&str] = &[
    "sentinel_requests_total",
    "sentinel_request_duration_seconds",
    "sentinel_upstream_health",
    "sentinel_upstream_ejections_total",
    "sentinel_upstream_retries_total",
    "sentinel_upstream_requests_total",
    "sentinel_upstream_request_duration_seconds",
    "sentinel_circuit_breaker_state",
    "sentinel_circuit_breaker_trips_total",
    "sentinel_rate_limit_decisions_total",
    "sentinel_rate_limit_redis_decisions_total",
    "sentinel_rate_limit_backend_up",
    "sentinel_rate_limit_redis_latency_seconds",
    "sentinel_rate_limit_redis_errors_total",
    "sentinel_rate_limit_fallback_total",
    "sentinel_agent_health",
    "sentinel_agent_latency_seconds",
    "sentinel_agent_decisions_total",
    "sentinel_agent_errors_total",
    "sentinel_agent_retries_total",
    "sentinel_agent_circuit_breaker_state",
    "sentinel_open_connections",
    "sentinel_config_reloads_total",
    "sentinel_config_applies_total",
    "sentinel_config_nacks_total",
    "sentinel_build_info",
    // Registered by `sentinel_telemetry::trace` with the prefix `sentinel`.
    "sentinel_tracing_spans_exported_total",
    "sentinel_tracing_spans_dropped_total",
];

/// Request durations: half a millisecond to half a minute.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Agents answer in tens of microseconds to milliseconds.
const AGENT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const BUCKETS: &[Buckets<'static>] = &[
    ("sentinel_request_duration_seconds", REQUEST_BUCKETS),
    // A route's latency and its upstream's compare bucket by bucket.
    (
        "sentinel_upstream_request_duration_seconds",
        REQUEST_BUCKETS,
    ),
    ("sentinel_agent_latency_seconds", AGENT_BUCKETS),
];

/// Who this proxy is, for the instance labels of every series.
#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub node: String,
    pub region: String,
    pub zone: String,
}

static INSTANCE: OnceLock<Instance> = OnceLock::new();

/// Names this proxy in its metrics (`node`, `region`, `zone` on every
/// series) and in its trace resources; call before [`metrics`]. Only the
/// first call counts.
pub fn set_instance(instance: Instance) {
    let _ = INSTANCE.set(instance);
}

/// This proxy's identity as given to [`set_instance`] (empty when never).
pub fn instance() -> &'static Instance {
    static NONE: OnceLock<Instance> = OnceLock::new();
    INSTANCE
        .get()
        .unwrap_or_else(|| NONE.get_or_init(Instance::default))
}

/// Installs the global Prometheus recorder once; later calls return it.
pub fn metrics() -> PrometheusHandle {
    let i = instance();
    let labels: Vec<(&str, String)> = [("node", &i.node), ("region", &i.region), ("zone", &i.zone)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect();
    sentinel_telemetry::metrics::install(BUCKETS, &labels)
}

fn log_settings(logging: Option<&pb::Logging>) -> LogSettings<'_> {
    LogSettings {
        level: logging.map_or("info", |l| l.level.as_str()),
        json: logging.is_some_and(|l| l.format == pb::LogFormat::Json as i32),
    }
}

/// Installs logging with the config known at start (see
/// `sentinel_telemetry::logging::init`).
pub fn init_logging(logging: Option<&pb::Logging>) {
    logging::init(log_settings(logging), None);
}

/// Applies a live config's `observability.logging` (format and level) to
/// the running process, in standalone and control-plane mode alike. The
/// level is left to `RUST_LOG` when it was set at start.
pub fn apply_logging(logging: Option<&pb::Logging>) {
    logging::apply(log_settings(logging));
}

/// What `/admin/config` shows about logging.
pub fn logging_view() -> serde_json::Value {
    logging::view()
}

/// `sentinel_build_info{version,config_version}`: exactly one series, for
/// the live config (an [`Info`], so old config versions leave the scrape).
static BUILD_INFO: Info = Info::new("sentinel_build_info");

/// Records the live config version for `sentinel_build_info`. `previous` is
/// kept for callers; only the live version is ever exported.
pub fn build_info(config_version: &str, _previous: Option<&str>) {
    BUILD_INFO.set(vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("config_version", config_version.to_string()),
    ]);
}

/// The Prometheus text for `/metrics`: every registered metric, then the one
/// `sentinel_build_info` series (absent until a config is live).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    BUILD_INFO.render_into(&mut out);
    out
}

/// Aggregates histograms regularly (bounded memory without scrapes).
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    sentinel_telemetry::metrics::spawn_upkeep(metrics())
}
