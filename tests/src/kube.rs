//! [`KubeDouble`]: an HTTP server on 127.0.0.1 that speaks the Kubernetes
//! API for `discovery.k8s.io/v1` EndpointSlices, faithfully enough for the
//! real `kube` client (list + watch) to be tested against it.
//!
//! `GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`:
//!
//! - **list** (no `watch`): an `EndpointSliceList` whose
//!   `metadata.resourceVersion` is the store's current version, with the
//!   slices of `<ns>` matching `labelSelector` (`k=v` terms, comma-joined);
//! - **watch** (`watch=true&resourceVersion=R`): newline-delimited JSON
//!   events `{"type":"ADDED"|"MODIFIED"|"DELETED","object":…}` — first the
//!   retained events after R, then live ones. When R is older than the
//!   oldest version the double still keeps, the stream is a single
//!   `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired",…}}`
//!   event, as the real API server sends, and the client must relist.
//!
//! Every object carries `metadata.resourceVersion`; versions are one
//! counter for the whole store. A test changes slices with
//! [`KubeDouble::apply`] / [`KubeDouble::delete`] (events to watchers), or
//! with the `_silently` variants followed by [`KubeDouble::expire_history`]
//! (closes every watch and forgets the event history, so the change can only
//! be seen by relisting — the forced-410 scenario). [`endpoint_slice`] builds
//! slice objects.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One endpoint of a slice, with its conditions.
#[derive(Debug, Clone)]
pub struct Ep {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
}

impl Ep {
    pub fn ready(ip: &str) -> Ep {
        Ep {
            ip: ip.into(),
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
        }
    }

    /// Shutting down but still serving (drains).
    pub fn terminating(ip: &str) -> Ep {
        Ep {
            ip: ip.into(),
            ready: false,
            serving: true,
            terminating: true,
            zone: None,
        }
    }

    /// Not ready, not serving (failing its readiness probe).
    pub fn not_ready(ip: &str) -> Ep {
        Ep {
            ip: ip.into(),
            ready: false,
            serving: false,
            terminating: false,
            zone: None,
        }
    }
}

/// An EndpointSlice object of `service` with `ports` (`(name, port)`).
pub fn endpoint_slice(name: &str, service: &str, ports: &[(&str, u16)], eps: &[Ep]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": eps.iter().map(|e| {
            let mut v = json!({
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            });
            if let Some(z) = &e.zone {
                v["zone"] = json!(z);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

struct Watcher {
    namespace: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Store {
    version: u64,
    slices: BTreeMap<(String, String), Value>,
    /// (version, type, namespace, object) of retained events.
    log: Vec<(u64, &'static str, String, Value)>,
    /// Watches from a version below this get 410 Gone.
    floor: u64,
    watchers: Vec<Watcher>,
    lists: u64,
    gone_sent: u64,
    token: Option<String>,
}

pub struct KubeDouble {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl KubeDouble {
    pub async fn start() -> KubeDouble {
        Self::start_with_token(None).await
    }

    /// With `token`, every request must carry `Authorization: Bearer TOKEN`
    /// (401 otherwise), as the API server checks a service account's token.
    pub async fn start_with_token(token: Option<&str>) -> KubeDouble {
        let store = Arc::new(Mutex::new(Store {
            version: 1,
            token: token.map(str::to_string),
            ..Store::default()
        }));
        let mut d = KubeDouble {
            addr: crate::loopback(crate::free_port()),
            store,
            server: None,
        };
        d.start_again().await;
        d
    }

    /// Serves again on the same port (after [`KubeDouble::stop`]), with the
    /// same store.
    pub async fn start_again(&mut self) {
        self.stop();
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("bind the kubernetes double's port");
        let app = axum::Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                axum::routing::get(endpointslices),
            )
            .with_state(self.store.clone());
        self.server = Some(tokio::spawn(crate::consul::serve_until_dropped(
            listener, app, None,
        )));
    }

    /// Stops serving: connections are refused and open watches are cut.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        self.with(|s| s.watchers.clear());
    }

    /// `http://127.0.0.1:PORT`, the `api-server` to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut s = self.store.lock().expect("store");
        f(&mut s)
    }

    /// Creates or replaces a slice (ADDED or MODIFIED to watchers).
    pub fn apply(&self, namespace: &str, slice: Value) {
        self.with(|s| s.apply(namespace, slice, true));
    }

    /// Deletes a slice (DELETED to watchers).
    pub fn delete(&self, namespace: &str, name: &str) {
        self.with(|s| s.delete(namespace, name, true));
    }

    /// Like [`KubeDouble::apply`] but no watcher hears of it and no event is
    /// kept: only a relist shows it.
    pub fn apply_silently(&self, namespace: &str, slice: Value) {
        self.with(|s| s.apply(namespace, slice, false));
    }

    pub fn delete_silently(&self, namespace: &str, name: &str) {
        self.with(|s| s.delete(namespace, name, false));
    }

    /// Forgets the event history (any watch from an older version gets 410
    /// Gone) and closes every open watch, so clients reconnect, get 410 and
    /// relist.
    pub fn expire_history(&self) {
        self.with(|s| {
            s.floor = s.version;
            s.log.clear();
            s.watchers.clear();
        });
    }

    /// How many list requests were served.
    pub fn lists(&self) -> u64 {
        self.with(|s| s.lists)
    }

    /// How many watches were answered with 410 Gone.
    pub fn gone_sent(&self) -> u64 {
        self.with(|s| s.gone_sent)
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

fn labels_match(obj: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(k, v)| {
        obj["metadata"]["labels"]
            .get(k)
            .and_then(Value::as_str)
            .is_some_and(|l| l == v)
    })
}

fn parse_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

// === impl Store ===

impl Store {
    fn apply(&mut self, namespace: &str, mut slice: Value, notify: bool) {
        self.version += 1;
        slice["metadata"]["namespace"] = json!(namespace);
        slice["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = slice["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (namespace.to_string(), name);
        let kind = if self.slices.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.slices.insert(key, slice.clone());
        if notify {
            self.event(kind, namespace, slice);
        }
    }

    fn delete(&mut self, namespace: &str, name: &str, notify: bool) {
        let Some(mut slice) = self
            .slices
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        self.version += 1;
        slice["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if notify {
            self.event("DELETED", namespace, slice);
        }
    }

    fn event(&mut self, kind: &'static str, namespace: &str, obj: Value) {
        self.watchers.retain(|w| {
            if w.namespace != namespace || !labels_match(&obj, &w.selector) {
                return !w.tx.is_closed();
            }
            w.tx.send(event_line(kind, &obj)).is_ok()
        });
        self.log
            .push((self.version, kind, namespace.to_string(), obj));
    }
}

async fn endpointslices(
    State(store): State<Arc<Mutex<Store>>>,
    Path(namespace): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let selector = parse_selector(q.get("labelSelector").map_or("", String::as_str));
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let Ok(mut s) = store.lock() else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Some(token) = &s.token {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
            });
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [("Content-Type", "application/json")],
                status.to_string(),
            )
                .into_response();
        }
    }
    if !watch {
        s.lists += 1;
        let items: Vec<Value> = s
            .slices
            .iter()
            .filter(|((ns, _), obj)| *ns == namespace && labels_match(obj, &selector))
            .map(|(_, obj)| obj.clone())
            .collect();
        let body = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": s.version.to_string()},
            "items": items,
        });
        return ([("Content-Type", "application/json")], body.to_string()).into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < s.floor {
        s.gone_sent += 1;
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {from} ({})", s.floor),
            "reason": "Expired",
            "code": 410,
        });
        let _ = tx.send(event_line("ERROR", &status));
        drop(tx);
    } else {
        if from == 0 {
            // No version: the current state as synthetic ADDED events.
            for ((ns, _), obj) in &s.slices {
                if *ns == namespace && labels_match(obj, &selector) {
                    let _ = tx.send(event_line("ADDED", obj));
                }
            }
        } else {
            for (v, kind, ns, obj) in &s.log {
                if *v > from && *ns == namespace && labels_match(obj, &selector) {
                    let _ = tx.send(event_line(kind, obj));
                }
            }
        }
        s.watchers.push(Watcher {
            namespace,
            selector,
            tx,
        });
    }
    drop(s);
    let stream = futures_util::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        Ok::<Bytes, std::io::Error>,
    );
    (
        [("Content-Type", "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
