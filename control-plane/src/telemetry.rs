//! Control-plane metrics (prefix `sentinel_cp_`) and logging set-up.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const METRICS: &[&str] = &[
    "sentinel_cp_connected_nodes",
    "sentinel_cp_pushes_total",
    "sentinel_cp_push_bytes_total",
    "sentinel_cp_acks_total",
    "sentinel_cp_nacks_total",
    "sentinel_cp_convergence_seconds",
    "sentinel_cp_stream_errors_total",
    "sentinel_cp_applies_total",
    "sentinel_cp_rollbacks_total",
    "sentinel_cp_health_reports_total",
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

pub fn metrics() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("sentinel_cp_convergence_seconds".into()),
                    &buckets,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => h,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

pub fn spawn_upkeep() {
    let handle = metrics();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

static REGIONS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Publishes connected nodes per region (0 for regions that emptied).
pub fn connected(sessions: &HashMap<String, String>) {
    let mut by_region: HashMap<&str, usize> = HashMap::new();
    for region in sessions.values() {
        *by_region.entry(region.as_str()).or_default() += 1;
    }
    let Ok(mut seen) = REGIONS.lock() else { return };
    for region in by_region.keys() {
        if !seen.iter().any(|r| r == region) {
            seen.push(region.to_string());
        }
    }
    for region in seen.iter() {
        let n = by_region.get(region.as_str()).copied().unwrap_or(0);
        metrics::gauge!("sentinel_cp_connected_nodes", "region" => region.clone()).set(n as f64);
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
