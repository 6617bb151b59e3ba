//! `/v1/nodes`, `/v1/status`, `/v1/health`, `/v1/tokens`: the fleet as the
//! control plane knows it.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ADMIN, Api, ApiError, Caller, READ};
use crate::store::Role;

pub async fn nodes(State(api): State<Api>, _c: Caller<READ>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "nodes": api.fleet.store.nodes().await? })))
}

pub async fn status(State(api): State<Api>, _c: Caller<READ>) -> Result<Json<Value>, ApiError> {
    let active = api.fleet.store.active().await?;
    let activations = api.fleet.store.activations(1).await?;
    let nodes = api.fleet.store.nodes().await?;
    let active_number = active.as_ref().map(|a| a.record.number);
    let mut regions: BTreeMap<String, Value> = BTreeMap::new();
    for n in &nodes {
        let r = regions.entry(n.region.clone()).or_insert_with(
            || json!({ "nodes": 0, "connected": 0, "on_active": 0, "versions": {} }),
        );
        r["nodes"] = json!(r["nodes"].as_i64().unwrap_or(0) + 1);
        if n.connected {
            r["connected"] = json!(r["connected"].as_i64().unwrap_or(0) + 1);
        }
        if n.connected && n.acked_version.is_some() && n.acked_version == active_number {
            r["on_active"] = json!(r["on_active"].as_i64().unwrap_or(0) + 1);
        }
        let key = n
            .acked_version
            .map_or("none".to_string(), |v| v.to_string());
        let count = r["versions"][&key].as_i64().unwrap_or(0) + 1;
        r["versions"][key] = json!(count);
    }
    let nacks: Vec<Value> = nodes
        .iter()
        .filter(|n| {
            n.last_nack
                .as_ref()
                .is_some_and(|k| Some(k.version) == active_number)
        })
        .map(|n| json!({ "node": n.id, "region": n.region, "nack": n.last_nack }))
        .collect();
    let disconnected: Vec<Value> =
        nodes.iter().filter(|n| !n.connected).map(|n| json!({ "node": n.id, "region": n.region, "last_seen_unix_ms": n.last_seen_unix_ms })).collect();
    Ok(Json(json!({
        "active": active.map(|a| a.record),
        "last_activation": activations.first(),
        "replica": api.fleet.replica,
        "nodes": { "total": nodes.len(), "connected": nodes.iter().filter(|n| n.connected).count() },
        "regions": regions,
        "nacks": nacks,
        "disconnected": disconnected,
    })))
}

/// Health of every target aggregated over the proxies that report it. A
/// target is unhealthy fleet-wide only when at least `quorum` percent of
/// the reporting proxies say so.
pub async fn health(State(api): State<Api>, _c: Caller<READ>) -> Result<Json<Value>, ApiError> {
    #[derive(Default)]
    struct Agg {
        healthy: usize,
        unhealthy: usize,
        regions: BTreeMap<String, (usize, usize)>,
        errors: Vec<String>,
    }
    let mut by_target: BTreeMap<(String, String), Agg> = BTreeMap::new();
    for (node, report) in api.fleet.health_reports() {
        for t in report.targets {
            let agg = by_target
                .entry((t.upstream.clone(), t.target.clone()))
                .or_default();
            let region = agg.regions.entry(report.region.clone()).or_default();
            if t.healthy {
                agg.healthy += 1;
                region.0 += 1;
            } else {
                agg.unhealthy += 1;
                region.1 += 1;
                if !t.last_error.is_empty() && agg.errors.len() < 5 {
                    agg.errors.push(format!("{node}: {}", t.last_error));
                }
            }
        }
    }
    let quorum = api.health_quorum_percent.max(1) as usize;
    let mut upstreams: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ((upstream, target), agg) in by_target {
        let reporting = agg.healthy + agg.unhealthy;
        let fleet_healthy = agg.unhealthy * 100 < quorum * reporting;
        upstreams.entry(upstream).or_default().push(json!({
            "target": target,
            "healthy": fleet_healthy,
            "reporting": reporting,
            "healthy_reports": agg.healthy,
            "unhealthy_reports": agg.unhealthy,
            "regions": agg.regions.into_iter().map(|(r, (h, u))| (r, json!({ "healthy": h, "unhealthy": u }))).collect::<BTreeMap<_, _>>(),
            "errors": agg.errors,
        }));
    }
    Ok(Json(
        json!({ "quorum_percent": quorum, "upstreams": upstreams }),
    ))
}

#[derive(Deserialize)]
pub struct NewToken {
    name: String,
    role: Role,
}

pub async fn create_token(
    State(api): State<Api>,
    caller: Caller<ADMIN>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?;
    if body.name.is_empty() || body.name.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "token name must be 1-64 characters",
        ));
    }
    let bytes: [u8; 24] = rand::rng().random();
    let secret = format!(
        "snt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let created = api
        .fleet
        .store
        .ensure_token(
            &body.name,
            &sentinel_config::sha256_hex(secret.as_bytes()),
            body.role,
        )
        .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a token named `{}` exists", body.name),
        ));
    }
    api.fleet
        .store
        .record_audit(
            &caller.name,
            "create-token",
            &format!("{} ({})", body.name, body.role.as_str()),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": body.name, "role": body.role, "token": secret })),
    ))
}
