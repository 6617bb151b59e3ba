//! The admin listener: liveness, readiness, metrics and read-only views of
//! the live runtime, plus an on-demand health check.
//!
//! Routes: `/health`, `/ready`, `/metrics` (or `observability.metrics.path`), `/admin/config`,
//! `/admin/routes`, `/admin/upstreams`, `/admin/upstreams/{name}/health`,
//! `POST /admin/upstreams/{name}/check`. Everything here reads the runtime
//! through the same `ArcSwap` as the proxy; nothing here can change it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::apply::Proxy;
use crate::upstream::Upstream;

#[derive(Clone)]
struct Admin {
    proxy: Arc<Proxy>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn router(proxy: Arc<Proxy>) -> Router {
    let state = Admin {
        proxy,
        metrics: crate::telemetry::metrics(),
    };
    Router::new()
        .route("/health", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/config", get(config))
        .route("/admin/routes", get(routes))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/upstreams/{name}/health", get(upstream_health))
        .route("/admin/upstreams/{name}/check", post(check))
        .route("/admin/agents", get(agents))
        // `observability { metrics { path "…" } }` may move the metrics
        // elsewhere; the handler serves them only at the configured path.
        .fallback(get(metrics))
        .with_state(state)
}

/// Binds the admin listener; returns the bound address and the serving task.
pub async fn serve(
    proxy: Arc<Proxy>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(proxy);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((local, task))
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "error": what }))).into_response()
}

async fn ready(State(a): State<Admin>) -> Response {
    if a.proxy.is_ready() {
        let from_cache = a
            .proxy
            .runtime()
            .is_some_and(|rt| matches!(rt.version.origin, crate::runtime::Origin::Cache { .. }));
        let body = if from_cache {
            "ready (serving the last-good cache; the control plane has not answered yet)\n"
        } else {
            "ready\n"
        };
        return (StatusCode::OK, body).into_response();
    }
    let why = if a.proxy.shared.shutting_down.load(Ordering::Acquire) {
        "shutting down"
    } else if a.proxy.runtime().is_none() {
        "no configuration applied yet"
    } else {
        "listeners not bound"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {why}\n"),
    )
        .into_response()
}

async fn metrics(State(a): State<Admin>, uri: axum::http::Uri) -> Response {
    let cfg = a.proxy.runtime().and_then(|rt| {
        rt.settings
            .observability
            .as_ref()
            .and_then(|o| o.metrics.clone())
    });
    let (enabled, path) = match &cfg {
        Some(m) if !m.path.is_empty() => (m.enabled, m.path.as_str()),
        Some(m) => (m.enabled, "/metrics"),
        None => (true, "/metrics"),
    };
    if uri.path() != path {
        return not_found("no such admin endpoint");
    }
    if !enabled {
        return not_found("metrics are disabled by observability.metrics.enabled");
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::telemetry::render(&a.metrics),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ConfigQuery {
    format: Option<String>,
}

async fn config(State(a): State<Admin>, Query(q): Query<ConfigQuery>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    if q.format.as_deref() == Some("kdl") {
        return (
            [("content-type", "text/plain")],
            sentinel_config::print(&rt.snapshot),
        )
            .into_response();
    }
    axum::Json(json!({
        "version": rt.version,
        "history": a.proxy.history(),
        "summary": rt.snapshot.summary(),
        "workers": a.proxy.workers.view(),
        "logging": crate::telemetry::logging_view(),
        "listeners": a.proxy.listeners.bound().iter().map(|(n, addr)| json!({"name": n, "address": addr.to_string()})).collect::<Vec<_>>(),
        "resources": rt.versions.iter().map(|v| json!({
            "type": sentinel_proto::ResourceType::try_from(v.r#type).map(|t| t.label()).unwrap_or("unknown"),
            "name": v.name,
            "version": v.version,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn routes(State(a): State<Admin>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    let routes: Vec<Value> = rt
        .router
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "priority": r.resource.priority,
                "match": r.resource.r#match,
                "upstream": r.resource.upstream,
                "filters": r.resource.filters,
            })
        })
        .collect();
    axum::Json(json!({ "routes": routes })).into_response()
}

fn upstream_view(u: &Upstream) -> Value {
    let targets: Vec<Value> = u
        .targets
        .iter()
        .map(|t| {
            let h = t.state.health.view();
            json!({
                "address": t.address,
                "weight": t.weight,
                "zone": t.zone,
                "healthy": h.healthy,
                "ejected": h.ejected,
                "available": h.healthy && !h.ejected && t.state.breaker.is_available(u.breaker_config()),
                "since_unix_ms": h.since_unix_ms,
                "last_error": h.last_error,
                "ejections": h.ejections,
                "circuit_breaker": t.state.breaker.state_name(),
                "circuit_breaker_trips": t.state.breaker.trips(),
                "active_requests": t.state.active.load(Ordering::Relaxed),
                "requests": t.state.requests.load(Ordering::Relaxed),
            })
        })
        .collect();
    let lb = u.resource.load_balancing.clone().unwrap_or_default();
    json!({
        "name": u.name,
        "load_balancing": sentinel_proto::LoadBalancingAlgorithm::try_from(lb.algorithm).map(|a| a.as_str_name()).unwrap_or("?"),
        "health_check": u.health_cfg.enabled,
        "targets": targets,
    })
}

async fn upstreams(State(a): State<Admin>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    let mut list: Vec<&Arc<Upstream>> = rt.upstreams.values().collect();
    list.sort_by(|x, y| x.name.cmp(&y.name));
    axum::Json(
        json!({ "upstreams": list.into_iter().map(|u| upstream_view(u)).collect::<Vec<_>>() }),
    )
    .into_response()
}

/// Each agent: where it is, its failure mode and timeout, whether its
/// health checks pass and its circuit state.
async fn agents(State(a): State<Admin>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    let mut list: Vec<_> = rt.agents.values().collect();
    list.sort_by(|x, y| x.name.cmp(&y.name));
    let views: Vec<_> = list
        .into_iter()
        .map(|g| {
            json!({
                "name": g.name,
                "type": g.resource.agent_type,
                "address": g.address.to_string(),
                "timeout_ms": g.timeout.as_millis() as u64,
                "failure_mode": if g.failure_open { "open" } else { "closed" },
                "healthy": g.healthy(),
                "circuit": g.circuit(),
            })
        })
        .collect();
    axum::Json(json!({ "agents": views })).into_response()
}

async fn upstream_health(State(a): State<Admin>, Path(name): Path<String>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    match rt.upstreams.get(&name) {
        Some(u) => axum::Json(upstream_view(u)).into_response(),
        None => not_found(&format!("no upstream named `{name}`")),
    }
}

async fn check(State(a): State<Admin>, Path(name): Path<String>) -> Response {
    let Some(rt) = a.proxy.runtime() else {
        return not_found("no configuration applied yet");
    };
    let Some(u) = rt.upstreams.get(&name) else {
        return not_found(&format!("no upstream named `{name}`"));
    };
    if !u.check_now().await {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({ "error": format!("upstream `{name}` has no active health check configured") })),
        )
            .into_response();
    }
    axum::Json(upstream_view(u)).into_response()
}
