//! The OpenAPI 3 document of the REST API (`GET /v1/openapi.json`).

use axum::Json;
use serde_json::{Value, json};

fn op(summary: &str, role: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, text) in responses {
        r.insert((*code).to_string(), json!({ "description": text }));
    }
    json!({
        "summary": summary,
        "security": if role.is_empty() { json!([]) } else { json!([{ "bearer": [] }]) },
        "x-sentinel-role": role,
        "responses": r,
    })
}

pub async fn document() -> Json<Value> {
    let common = [
        ("401", "no or unknown token"),
        ("403", "token lacks the role"),
        ("503", "database unavailable"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut v = extra.to_vec();
        v.extend_from_slice(&common);
        v
    };
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "Sentinel control plane", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": {
            "/v1/configs": {
                "get": op("List versions, newest first (?limit=N)", "read", &with(&[("200", "versions and the active number")])),
                "post": op(
                    "Apply a configuration: {source, file?, message?, author?, expect_version?, dry_run?}; If-Match: N for optimistic concurrency",
                    "write",
                    &with(&[("201", "stored and activated"), ("200", "identical to the active version, or dry run"), ("400", "bad body"), ("409", "If-Match does not match the active version"), ("422", "invalid KDL: diagnostics and rendered text")]),
                ),
            },
            "/v1/configs/active": { "get": op("The active version with its KDL source", "read", &with(&[("200", "version"), ("404", "nothing applied yet")])) },
            "/v1/configs/{number}": { "get": op("One version with its KDL source and resource versions", "read", &with(&[("200", "version"), ("404", "no such version")])) },
            "/v1/diff": { "get": op("Difference between versions (?from=A&to=B): resources added/changed/removed and the text diff", "read", &with(&[("200", "diff"), ("404", "no such version")])) },
            "/v1/rollback": { "post": op("Re-activate the previous version, or {to: N}", "write", &with(&[("200", "{from, to}"), ("404", "no such version"), ("409", "nothing to roll back to, or already active")])) },
            "/v1/activations": { "get": op("Deployment history: every apply and rollback", "read", &with(&[("200", "activations")])) },
            "/v1/audit": { "get": op("Audit trail", "admin", &with(&[("200", "entries")])) },
            "/v1/nodes": { "get": op("Proxies: id, region, zone, connected, acked version, last NACK, last seen", "read", &with(&[("200", "nodes")])) },
            "/v1/status": { "get": op("Active version, nodes per region and version, NACKs, disconnected nodes", "read", &with(&[("200", "status")])) },
            "/v1/health": { "get": op("Upstream target health aggregated across proxies, with quorum", "read", &with(&[("200", "health")])) },
            "/v1/tokens": { "post": op("Create an API token {name, role}; the secret is shown once", "admin", &with(&[("201", "token"), ("409", "name taken")])) },
            "/healthz": { "get": op("Liveness", "", &[("200", "alive")]) },
            "/readyz": { "get": op("Readiness: the database answers", "", &[("200", "ready"), ("503", "database unavailable")]) },
            "/metrics": { "get": op("Prometheus metrics", "", &[("200", "metrics")]) },
        }
    }))
}
