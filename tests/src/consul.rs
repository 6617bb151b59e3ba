//! [`ConsulDouble`]: an HTTP server on 127.0.0.1 that speaks the part of
//! Consul's API that service discovery uses, faithfully enough for a real
//! client to be tested against it.
//!
//! `GET /v1/health/service/<name>` answers a JSON array of
//! `{Node, Service, Checks}` entries with `X-Consul-Index`, and implements:
//!
//! - **blocking queries**: with `index=I` (I > 0) the request is held while
//!   the catalog index is ≤ I, until it moves past I or `wait` (`10s`, `1m`,
//!   `500ms`; default 5 min) expires, then answers the current state;
//!   `index=0` or no index answers at once;
//! - `passing`: only instances whose checks all pass;
//! - `tag=T`: only instances carrying tag T; `dc=D`: only instances of
//!   datacenter D (the double's own datacenter when absent, `dc1`);
//! - ACL: with a token configured, a request without the matching
//!   `X-Consul-Token` gets `403 Permission denied`.
//!
//! A test changes the catalog with [`ConsulDouble::register`],
//! [`ConsulDouble::deregister`], [`ConsulDouble::set_check`] (each bumps the
//! index), can force the index backwards with [`ConsulDouble::set_index`]
//! (as after a Consul snapshot restore), reads the `index` every query
//! carried with [`ConsulDouble::queries`], and takes it down and back up on
//! the same port with [`ConsulDouble::stop`] / [`ConsulDouble::start_again`]
//! (stopping closes every open connection, as a dead agent does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One service instance in the double's catalog.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Service ID, unique in the double.
    pub id: String,
    pub service: String,
    /// Service address; may be empty (then the node address is used).
    pub address: String,
    pub node_address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub datacenter: String,
    /// Check statuses: `passing`, `warning`, `critical`.
    pub checks: Vec<String>,
}

impl Instance {
    /// A passing instance of `service` in `dc1` at `address:port`.
    pub fn new(id: &str, service: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: address.into(),
            node_address: "127.0.0.1".into(),
            port,
            tags: Vec::new(),
            datacenter: "dc1".into(),
            checks: vec!["passing".into()],
        }
    }

    pub fn tag(mut self, tag: &str) -> Instance {
        self.tags.push(tag.into());
        self
    }

    pub fn datacenter(mut self, dc: &str) -> Instance {
        self.datacenter = dc.into();
        self
    }
}

struct Catalog {
    index: u64,
    instances: Vec<Instance>,
}

struct Shared {
    catalog: Mutex<Catalog>,
    changed: tokio::sync::watch::Sender<u64>,
    token: Option<String>,
    /// The `index` parameter of every query, in arrival order.
    queries: Mutex<Vec<u64>>,
}

pub struct ConsulDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ConsulDouble {
    /// Starts the double on a free loopback port; `token` = the ACL token
    /// every request must carry (None: no ACLs).
    pub async fn start(token: Option<&str>) -> ConsulDouble {
        Self::start_with(token, None).await
    }

    /// Like [`ConsulDouble::start`], serving HTTPS with `tls`.
    pub async fn start_tls(token: Option<&str>, tls: rustls::ServerConfig) -> ConsulDouble {
        Self::start_with(token, Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn start_with(
        token: Option<&str>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> ConsulDouble {
        let (changed, _) = tokio::sync::watch::channel(1);
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                index: 1,
                instances: Vec::new(),
            }),
            changed,
            token: token.map(str::to_string),
            queries: Mutex::new(Vec::new()),
        });
        let mut d = ConsulDouble {
            addr: crate::loopback(crate::free_port()),
            shared,
            server: None,
            tls,
        };
        d.start_again().await;
        d
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves again on the same port (after [`ConsulDouble::stop`]).
    pub async fn start_again(&mut self) {
        self.stop();
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("bind the consul double's port");
        let app = axum::Router::new()
            .route("/v1/health/service/{name}", axum::routing::get(health))
            .with_state(self.shared.clone());
        self.server = Some(tokio::spawn(serve_until_dropped(
            listener,
            app,
            self.tls.clone(),
        )));
    }

    /// Stops serving: the port refuses connections and every open
    /// connection (including held blocking queries) is closed.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    fn change(&self, f: impl FnOnce(&mut Catalog)) {
        let index = {
            let mut c = self.shared.catalog.lock().expect("catalog");
            f(&mut c);
            c.index
        };
        self.shared.changed.send_replace(index);
    }

    /// Adds or replaces (by id) an instance.
    pub fn register(&self, instance: Instance) {
        self.change(|c| {
            c.instances.retain(|i| i.id != instance.id);
            c.instances.push(instance);
            c.index += 1;
        });
    }

    pub fn deregister(&self, id: &str) {
        self.change(|c| {
            c.instances.retain(|i| i.id != id);
            c.index += 1;
        });
    }

    /// Sets every check of instance `id` to `status`.
    pub fn set_check(&self, id: &str, status: &str) {
        self.change(|c| {
            for i in c.instances.iter_mut().filter(|i| i.id == id) {
                for s in &mut i.checks {
                    *s = status.to_string();
                }
            }
            c.index += 1;
        });
    }

    /// Sets the catalog index (e.g. backwards, as after a snapshot restore).
    pub fn set_index(&self, index: u64) {
        self.change(|c| c.index = index);
    }

    pub fn index(&self) -> u64 {
        self.shared.catalog.lock().map(|c| c.index).unwrap_or(0)
    }

    /// The `index` parameter of every query so far.
    pub fn queries(&self) -> Vec<u64> {
        self.shared
            .queries
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Consul durations: `10s`, `1m`, `500ms`, `1h`.
fn parse_wait(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = &shared.token {
        let given = headers.get("x-consul-token").and_then(|v| v.to_str().ok());
        if given != Some(token.as_str()) {
            return (StatusCode::FORBIDDEN, "Permission denied").into_response();
        }
    }
    let min_index: u64 = q.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
    if let Ok(mut qs) = shared.queries.lock() {
        qs.push(min_index);
    }
    let wait = q
        .get("wait")
        .and_then(|w| parse_wait(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    if min_index > 0 {
        let mut rx = shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = shared.catalog.lock().map(|c| c.index).unwrap_or(0);
            if current > min_index {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
    }
    let passing = flag(&q, "passing");
    let tag = q.get("tag");
    let dc = q.get("dc").map_or("dc1", String::as_str);
    let (index, body) = {
        let Ok(c) = shared.catalog.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let entries: Vec<serde_json::Value> = c
            .instances
            .iter()
            .filter(|i| i.service == name && i.datacenter == dc)
            .filter(|i| tag.is_none_or(|t| i.tags.contains(t)))
            .filter(|i| !passing || i.checks.iter().all(|s| s == "passing"))
            .map(|i| {
                let mut checks: Vec<serde_json::Value> = vec![json!({
                    "Node": format!("node-{}", i.id),
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "ServiceID": "",
                    "ServiceName": "",
                })];
                checks.extend(i.checks.iter().enumerate().map(|(n, s)| {
                    json!({
                        "Node": format!("node-{}", i.id),
                        "CheckID": format!("service:{}:{n}", i.id),
                        "Name": format!("check {n}"),
                        "Status": s,
                        "ServiceID": i.id,
                        "ServiceName": i.service,
                    })
                }));
                json!({
                    "Node": {
                        "ID": format!("node-id-{}", i.id),
                        "Node": format!("node-{}", i.id),
                        "Address": i.node_address,
                        "Datacenter": i.datacenter,
                    },
                    "Service": {
                        "ID": i.id,
                        "Service": i.service,
                        "Tags": i.tags,
                        "Address": i.address,
                        "Port": i.port,
                        "Weights": {"Passing": 1, "Warning": 1},
                    },
                    "Checks": checks,
                })
            })
            .collect();
        (c.index, serde_json::Value::Array(entries))
    };
    (
        [
            ("X-Consul-Index", index.to_string()),
            ("X-Consul-KnownLeader", "true".to_string()),
            ("Content-Type", "application/json".to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Serves `app` on `listener` until this future is dropped or aborted; then
/// every connection it accepted is closed too (they live in its `JoinSet`),
/// which is how the doubles of this harness "die" (shared with
/// [`crate::kube`]).
pub(crate) async fn serve_until_dropped(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        conns.spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                }
                None => {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}
