//! Logging and metrics set-up, and the names of every metric the proxy
//! exports (docs/operations.md lists them; a tidy test keeps them in sync).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sentinel_proto as pb;
use tracing_subscriber::EnvFilter;

/// Every metric the proxy registers.
pub const METRICS: &[&str] = &[
    "sentinel_requests_total",
    "sentinel_request_duration_seconds",
    "sentinel_upstream_health",
    "sentinel_upstream_ejections_total",
    "sentinel_upstream_retries_total",
    "sentinel_circuit_breaker_state",
    "sentinel_circuit_breaker_trips_total",
    "sentinel_rate_limit_decisions_total",
    "sentinel_open_connections",
    "sentinel_config_reloads_total",
    "sentinel_config_applies_total",
    "sentinel_config_nacks_total",
    "sentinel_build_info",
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once; later calls return it.
pub fn metrics() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("sentinel_request_duration_seconds".into()),
                    &buckets,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (tests): render an empty one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Logging from `RUST_LOG` (wins) or the config's level, JSON or text.
/// In JSON the event's own `target` field (the access log's upstream
/// target) wins over the tracing target; access lines carry `kind=access`.
pub fn init_logging(logging: Option<&pb::Logging>) {
    let level = logging
        .map(|l| l.level.as_str())
        .filter(|l| !l.is_empty())
        .unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = logging.is_some_and(|l| l.format == pb::LogFormat::Json as i32);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

pub fn build_info(config_version: &str, previous: Option<&str>) {
    let version = env!("CARGO_PKG_VERSION");
    if let Some(prev) = previous.filter(|p| *p != config_version) {
        metrics::gauge!("sentinel_build_info", "version" => version, "config_version" => prev.to_string()).set(0.0);
    }
    metrics::gauge!("sentinel_build_info", "version" => version, "config_version" => config_version.to_string())
        .set(1.0);
}

/// Histograms keep raw samples until aggregated; aggregate them regularly
/// so memory stays bounded when nobody scrapes `/metrics`.
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    let handle = metrics();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}
