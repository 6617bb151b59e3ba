//! Control-plane metrics (prefix `sentinel_cp_`) and logging set-up.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const METRICS: &[&str] = &[
    "sentinel_cp_connected_nodes",
    "sentinel_cp_pushes_total",
    "sentinel_cp_push_bytes_total",
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
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sentinel_cp_rollout_stage_seconds".into()),
                        &buckets,
                    )
                })
                .and_then(push_to_ack_buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => h,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Buckets of `sentinel_cp_push_to_ack_seconds`: a push is usually
/// answered within milliseconds (a proxy applies off its workers), a slow
/// build or a big config takes seconds.
fn push_to_ack_buckets(
    builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    builder.set_buckets_for_metric(
        Matcher::Full("sentinel_cp_push_to_ack_seconds".into()),
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    )
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

/// Publishes the number of connected nodes of `region`.
pub fn connected(region: &str, nodes: usize) {
    metrics::gauge!("sentinel_cp_connected_nodes", "region" => region.to_string())
        .set(nodes as f64);
}

/// Publishes the open rollout's current stage (1-based; 0: none open).
pub fn rollout_stage(stage: Option<i64>) {
    metrics::gauge!("sentinel_cp_rollout_stage").set(stage.map_or(0.0, |s| (s + 1) as f64));
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
