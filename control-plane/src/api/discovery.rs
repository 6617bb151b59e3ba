//! `GET /v1/discovery`: the discovered upstreams of the active
//! configuration, their current endpoint sets (from this replica's
//! overlay, the same on every replica), the sources' refresh counts (on
//! the leader) and how many proxies connected to this replica hold each
//! set.

use axum::extract::State;
use sentinel_proto as pb;

use super::{Api, ApiError, Caller, ErrorBody, READ};
pub use sentinel_api::{DiscoveredTarget, DiscoveredUpstream, DiscoveryStatus};

fn health_name(h: i32) -> &'static str {
    match pb::TargetHealth::try_from(h) {
        Ok(pb::TargetHealth::Healthy) => "healthy",
        Ok(pb::TargetHealth::Unhealthy) => "unhealthy",
        _ => "unknown",
    }
}

/// Discovered upstreams, their targets with health, generation, hash,
/// staleness, and the proxies on each set.
#[utoipa::path(operation_id = "get_discovery", get, path = "/v1/discovery", tag = "fleet",
    responses(
        (status = 200, description = "discovery status", body = DiscoveryStatus),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn discovery(
    State(api): State<Api>,
    _c: Caller<READ>,
) -> Result<axum::Json<DiscoveryStatus>, ApiError> {
    let fleet = &api.fleet;
    let base = fleet.base();
    let sets = fleet.endpoint_sets();
    let status = fleet.discovery.status();
    let upstreams = base
        .discovered
        .iter()
        .map(|u| {
            let source = match u.discovery.as_ref().and_then(|d| d.source.as_ref()) {
                Some(pb::discovery::Source::Dns(_)) => "dns",
                Some(pb::discovery::Source::Consul(_)) => "consul",
                Some(pb::discovery::Source::Kubernetes(_)) => "kubernetes",
                _ => "static",
            };
            let set = sets.iter().find(|s| s.upstream == u.name);
            let running = status.iter().find(|s| s.upstream == u.name);
            let hash = set.map(|s| s.hash().to_string()).unwrap_or_default();
            let (on, connected) = fleet
                .sessions
                .lock()
                .map(|s| s.holding(&u.name, &hash))
                .unwrap_or_default();
            DiscoveredUpstream {
                upstream: u.name.clone(),
                // What produced the targets shown; the configured kind
                // until the source sent its first set.
                source: set.map_or(source, |s| s.source.as_str()).to_string(),
                targets: set
                    .map(|s| {
                        s.targets
                            .iter()
                            .map(|t| DiscoveredTarget {
                                address: t.address.clone(),
                                weight: t.weight,
                                health: health_name(t.health).to_string(),
                                zone: t.zone.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                generation: set.map_or(0, |s| s.generation),
                hash,
                stale: set.is_some_and(|s| s.stale),
                last_success_unix_ms: set.map_or(0, |s| s.last_success_unix_ms),
                last_error: set.and_then(|s| s.error.clone()),
                updated_at_unix_ms: set.map_or(0, |s| s.updated_at_unix_ms),
                refreshes_ok: running.map_or(0, |r| r.refreshes_ok),
                refreshes_failed: running.map_or(0, |r| r.refreshes_failed),
                nodes_current: if set.is_some() { on as u64 } else { 0 },
                nodes_connected: connected as u64,
            }
        })
        .collect();
    Ok(axum::Json(DiscoveryStatus {
        replica: fleet.replica.clone(),
        leader: fleet.discovery.is_leader(),
        upstreams,
    }))
}
