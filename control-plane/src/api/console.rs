//! The console (`/ui/`) and the two API calls made for it: live events
//! (`/v1/events`, Server-Sent Events) and per-activation convergence
//! (`/v1/activations/{id}/convergence`).
//!
//! The console is three static files compiled into the binary (no CDN, no
//! build step; see docs/console.md). They are served without a token: the
//! page asks for one and sends it as `Authorization: Bearer` on every API
//! call, so the console can do exactly what the token's role allows. Every
//! asset carries a strict Content-Security-Policy: scripts and styles only
//! from this origin, no inline code, no frames.
//!
//! Events: the stream sends `fleet` (the status and every node), `health`
//! (the fleet-aggregated health) and `rollout` (the newest rollout's
//! summary, `null` before the first) when they differ from what this
//! stream sent last, checked at once when this replica learns of an
//! activation and otherwise every [`CHECK_EVERY`] (ACKs and other
//! replicas' nodes reach the store in the background). The browser never
//! polls. At most [`MAX_STREAMS`] streams are open per replica (503 past
//! that), so the work stays bounded whatever the number of open consoles.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::extract::Path;
use super::fleet::{health_of, status_of};
use super::{Api, ApiError, Caller, ErrorBody, READ};
pub use sentinel_api::{Convergence, ConvergenceNode, FleetEvent, Identity};

/// How often a stream compares the fleet with what it sent last.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Open event streams per replica.
pub const MAX_STREAMS: usize = 64;

static STREAMS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_STREAMS)));

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (path under `/ui/`, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../console/favicon.svg"),
    ),
];

/// `/ui`, `/ui/` and the assets (no token: see the module docs).
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
}

fn asset(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let mut r = (*body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary; revalidate, never guess.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Live updates for the console: `fleet` events ([`FleetEvent`]: the
/// status and every node), `health` events (`Health`) and `rollout` events
/// (the newest `RolloutSummary`, or `null`), each sent when it changed; `error` events (text) while the database is unavailable. The
/// first of each comes at once. Comments keep idle connections open.
#[utoipa::path(operation_id = "stream_events", get, path = "/v1/events", tag = "fleet",
    responses(
        (status = 200, description = "an endless `text/event-stream`: `fleet` events carry a FleetEvent, `health` events a Health, `rollout` events the newest RolloutSummary or null (JSON)", body = String, content_type = "text/event-stream"),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 503, description = "too many event streams open on this replica", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn events(State(api): State<Api>, _c: Caller<READ>) -> Result<Response, ApiError> {
    let permit = STREAMS.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open on this replica; try another or later"),
        )
    })?;
    let state = Watch {
        active: api.fleet.subscribe(),
        api,
        sent_fleet: String::new(),
        sent_health: String::new(),
        sent_rollout: String::new(),
        sent_error: String::new(),
        queued: VecDeque::new(),
        first: true,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(state, |mut w| async move {
        let event = w.next().await;
        Some((Ok::<_, Infallible>(event), w))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One event stream's state: what it sent last.
struct Watch {
    api: Api,
    active: tokio::sync::watch::Receiver<Arc<crate::changes::ActiveConfig>>,
    sent_fleet: String,
    sent_health: String,
    sent_rollout: String,
    sent_error: String,
    queued: VecDeque<Event>,
    first: bool,
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    async fn next(&mut self) -> Event {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return e;
            }
            if !std::mem::take(&mut self.first) {
                tokio::select! {
                    _ = self.active.changed() => {}
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
            }
            self.check().await;
        }
    }

    /// Queues what changed since it was last sent.
    async fn check(&mut self) {
        let fleet = match self.fleet().await {
            Ok(f) => f,
            Err(e) => {
                let text = e.1.message;
                if text != self.sent_error {
                    self.queued
                        .push_back(Event::default().event("error").data(&text));
                    self.sent_error = text;
                }
                return;
            }
        };
        self.sent_error.clear();
        if fleet != self.sent_fleet {
            self.queued
                .push_back(Event::default().event("fleet").data(&fleet));
            self.sent_fleet = fleet;
        }
        // The newest rollout's summary: a stage moving, a pause or an end.
        if let Ok(rows) = self.api.fleet.store.rollouts_before(1, None).await {
            let latest = rows.into_iter().next().map(|r| r.summary);
            let rollout = serde_json::to_string(&latest).unwrap_or_default();
            if rollout != self.sent_rollout {
                self.queued
                    .push_back(Event::default().event("rollout").data(&rollout));
                self.sent_rollout = rollout;
            }
        }
        let health = serde_json::to_string(&health_of(&self.api)).unwrap_or_default();
        if health != self.sent_health {
            self.queued
                .push_back(Event::default().event("health").data(&health));
            self.sent_health = health;
        }
    }

    async fn fleet(&self) -> Result<String, ApiError> {
        let nodes = self
            .api
            .fleet
            .store
            .nodes_seen_within(self.api.node_expiry)
            .await?;
        let status = status_of(&self.api, &nodes).await?;
        Ok(serde_json::to_string(&FleetEvent { status, nodes }).unwrap_or_default())
    }
}

/// The caller: the token's name and role (the console shows what the role
/// allows).
#[utoipa::path(operation_id = "whoami", get, path = "/v1/whoami", tag = "tokens",
    responses(
        (status = 200, description = "the caller", body = Identity),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn whoami(c: Caller<READ>) -> axum::Json<Identity> {
    axum::Json(Identity {
        name: c.name,
        role: c.role,
    })
}

/// How an activation reached the fleet: when each known node first held
/// its version (the control plane's receipt of the ACK).
#[utoipa::path(operation_id = "get_convergence", get, path = "/v1/activations/{id}/convergence", tag = "fleet",
    params(("id" = i64, Path, description = "activation id (`GET /v1/activations`)")),
    responses(
        (status = 200, description = "convergence", body = Convergence),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "no or unknown token", body = ErrorBody),
        (status = 403, description = "the token lacks the `read` role", body = ErrorBody),
        (status = 404, description = "no such activation", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
pub async fn convergence(
    State(api): State<Api>,
    _c: Caller<READ>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Convergence>, ApiError> {
    let store = &api.fleet.store;
    let Some(activation) = store.activation(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no activation {id}"),
        ));
    };
    let acks: std::collections::HashMap<String, i64> = store
        .first_acks(activation.to_version, activation.at_unix_ms)
        .await?
        .into_iter()
        .collect();
    let mut nodes: Vec<ConvergenceNode> = store
        .nodes_seen_within(api.node_expiry)
        .await?
        .into_iter()
        .filter(|n| !n.expired)
        .map(|n| ConvergenceNode {
            acked_at_unix_ms: acks.get(&n.id).copied(),
            node: n.id,
            region: n.region,
            zone: n.zone,
            connected: n.connected,
            acked_version: n.acked_version,
        })
        .collect();
    nodes.sort_by(|a, b| {
        (a.acked_at_unix_ms.is_none(), a.acked_at_unix_ms, &a.node).cmp(&(
            b.acked_at_unix_ms.is_none(),
            b.acked_at_unix_ms,
            &b.node,
        ))
    });
    Ok(axum::Json(Convergence { activation, nodes }))
}
