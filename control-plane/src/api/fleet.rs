//! `/v1/nodes`, `/v1/nodes/{id}/events`, `/v1/status`, `/v1/health`:
//! the fleet as the control plane knows it.
//!
//! Node state comes from the store, where the session rules keep it true
//! (see `store/nodes.rs`): `connected` needs a live replica, a NACK shows
//! only while current, and nodes not seen within `--node-expiry-secs` are
//! listed as `expired` but never counted.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query, limit};
use super::{Api, ApiError, Caller, ErrorBody, READ};
pub use sentinel_api::{
    Disconnected, DownReport, Health, NodeCounts, NodeEvents, NodeList, NodeNack, RegionHealth,
    RegionStatus, Status, TargetHealth,
};

use crate::store::NodeRecord;

/// `?limit=N&cursor=ID` of a list ordered by name.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NamePage {
    /// How many entries (1-10000; default: all).
    #[param(minimum = 1, maximum = 10000, nullable = false)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page: entries named after it.
    #[param(nullable = false)]
    pub cursor: Option<String>,
}

/// One page of `items` ordered by `key`: those after `cursor`, at most
/// `limit`, and the cursor of the next page.
pub(super) fn page_by_name<T>(
    mut items: Vec<T>,
    q: &NamePage,
    key: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    // No limit means all: `sentinelctl nodes` and `--wait` count the whole fleet.
    let n = match q.limit {
        None => usize::MAX,
        Some(_) => usize::try_from(limit(q.limit, 10_000, 10_000)?).unwrap_or(usize::MAX),
    };
    items.sort_by(|a, b| key(a).cmp(key(b)));
    if let Some(c) = &q.cursor {
        items.retain(|i| key(i) > c.as_str());
    }
    if items.len() > n {
        items.truncate(n);
        let next = items.last().map(|i| key(i).to_string());
        Ok((items, next))
    } else {
        Ok((items, None))
    }
}

/// Every node the control plane knows, expired ones included (marked).
#[utoipa::path(operation_id = "list_nodes", get, path = "/v1/nodes", tag = "fleet",
    params(NamePage),
    responses(
        (status = 200, description = "nodes", body = NodeList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn nodes(
    State(api): State<Api>,
    _c: Caller<READ>,
    Query(q): Query<NamePage>,
) -> Result<axum::Json<NodeList>, ApiError> {
    let nodes = api.fleet.store.nodes_seen_within(api.node_expiry).await?;
    let (nodes, next_cursor) = page_by_name(nodes, &q, |n| &n.id)?;
    Ok(axum::Json(NodeList { nodes, next_cursor }))
}

/// `?limit=N` of a node's events.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// How many events, newest first (1-100, default 100).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page: events older than it.
    #[param(nullable = false)]
    cursor: Option<i64>,
}

/// The node's NACK history, newest first (the newest 100 are kept).
#[utoipa::path(operation_id = "list_node_events", get, path = "/v1/nodes/{id}/events", tag = "fleet",
    params(("id" = String, Path, description = "node id"), EventsQuery),
    responses(
        (status = 200, description = "events (empty for a node never seen)", body = NodeEvents),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn node_events(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<axum::Json<NodeEvents>, ApiError> {
    let n = limit(q.limit, 100, 100)?;
    // Stored node ids never hold control characters (they are sanitised on
    // the way in), and PostgreSQL refuses NUL in a query parameter.
    let rows = if id.chars().any(char::is_control) {
        Vec::new()
    } else {
        api.fleet
            .store
            .node_events_before(&id, n + 1, q.cursor)
            .await?
    };
    let (rows, next_cursor) = super::configs::page_of(rows, n, |(id, _)| *id);
    Ok(axum::Json(NodeEvents {
        node: id,
        events: rows.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
    }))
}

/// The fleet at a glance. Only known nodes count: those connected or seen
/// within `--node-expiry-secs`; a node is on the active version only while
/// connected, so a disconnected one shows as not converged.
#[utoipa::path(operation_id = "get_status", get, path = "/v1/status", tag = "fleet",
    responses(
        (status = 200, description = "status", body = Status),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn status(
    State(api): State<Api>,
    _c: Caller<READ>,
) -> Result<axum::Json<Status>, ApiError> {
    let all = api.fleet.store.nodes_seen_within(api.node_expiry).await?;
    Ok(axum::Json(status_of(&api, &all).await?))
}

/// The status of the fleet made of `all` (every node seen within the expiry
/// window, expired ones marked): for `/v1/status` and the console's events.
pub(super) async fn status_of(api: &Api, all: &[NodeRecord]) -> Result<Status, ApiError> {
    let active = api.fleet.store.active().await?;
    let activations = api.fleet.store.activations(1).await?;
    let expired = all.iter().filter(|n| n.expired).count() as u64;
    let nodes: Vec<&NodeRecord> = all.iter().filter(|n| !n.expired).collect();
    let active_number = active.as_ref().map(|a| a.record.number);
    let mut regions: BTreeMap<String, RegionStatus> = BTreeMap::new();
    for n in &nodes {
        let r = regions.entry(n.region.clone()).or_default();
        r.nodes += 1;
        if n.connected {
            r.connected += 1;
        }
        if n.connected && n.acked_version.is_some() && n.acked_version == active_number {
            r.on_active += 1;
        }
        let key = n
            .acked_version
            .map_or("none".to_string(), |v| v.to_string());
        *r.versions.entry(key).or_default() += 1;
    }
    let nacks = nodes
        .iter()
        .filter(|n| {
            n.last_nack
                .as_ref()
                .is_some_and(|k| Some(k.version) == active_number)
        })
        .map(|n| NodeNack {
            node: n.id.clone(),
            region: n.region.clone(),
            nack: n.last_nack.clone(),
        })
        .collect();
    let disconnected = nodes
        .iter()
        .filter(|n| !n.connected)
        .map(|n| Disconnected {
            node: n.id.clone(),
            region: n.region.clone(),
            acked_version: n.acked_version,
            last_seen_unix_ms: n.last_seen_unix_ms,
        })
        .collect();
    Ok(Status {
        active: active.map(|a| a.record),
        last_activation: activations.into_iter().next(),
        replica: api.fleet.replica.clone(),
        nodes: NodeCounts {
            total: nodes.len() as u64,
            connected: nodes.iter().filter(|n| n.connected).count() as u64,
            expired,
            expiry_secs: api.node_expiry.as_secs(),
        },
        regions,
        nacks,
        disconnected,
    })
}

/// Health of every target aggregated over the proxies that report it. A
/// target is unhealthy fleet-wide only when at least `quorum` percent of
/// the reporting proxies say so.
#[utoipa::path(operation_id = "get_health", get, path = "/v1/health", tag = "fleet",
    responses(
        (status = 200, description = "health", body = Health),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn health(
    State(api): State<Api>,
    _c: Caller<READ>,
) -> Result<axum::Json<Health>, ApiError> {
    Ok(axum::Json(health_of(&api)))
}

/// Fleet-aggregated health as this replica knows it now.
pub(super) fn health_of(api: &Api) -> Health {
    let quorum = u64::from(api.health_quorum_percent.max(1));
    let verdicts = crate::health::aggregate(&api.fleet.health_reports(), api.health_quorum_percent);
    let mut upstreams: BTreeMap<String, Vec<TargetHealth>> = BTreeMap::new();
    for ((upstream, target), v) in verdicts {
        upstreams.entry(upstream).or_default().push(TargetHealth {
            target,
            healthy: v.healthy,
            reporting: v.reporting(),
            healthy_reports: v.healthy_reports,
            unhealthy_reports: v.unhealthy_reports,
            regions: v
                .regions
                .into_iter()
                .map(|(r, (healthy, unhealthy))| (r, RegionHealth { healthy, unhealthy }))
                .collect(),
            errors: v.errors,
            down_on: v
                .down_on
                .into_iter()
                .map(|(node, region, since_unix_ms, last_error)| DownReport {
                    node,
                    region,
                    since_unix_ms,
                    last_error,
                })
                .collect(),
        });
    }
    Health {
        quorum_percent: quorum,
        upstreams,
    }
}
