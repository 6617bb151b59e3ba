//! Test support: in-process backends and the real `sentinel` binary as a
//! child process, on free loopback ports. Logs of the proxy are kept in a
//! file and printed when a test fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use sentinel_tests::free_port;

/// An in-process HTTP/1.1 backend whose behaviour tests can change.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Status for ordinary requests.
    pub status: Arc<AtomicU16>,
    /// Status for `/health`.
    pub health: Arc<AtomicU16>,
    /// Delay before answering, in ms.
    pub delay_ms: Arc<AtomicU64>,
    /// Requests seen, by method.
    pub methods: Arc<Mutex<HashMap<String, usize>>>,
    /// Headers of the last request.
    pub last_headers: Arc<Mutex<http::HeaderMap>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let health = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let methods = Arc::new(Mutex::new(HashMap::new()));
        let last_headers = Arc::new(Mutex::new(http::HeaderMap::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let _accepted = Arc::clone(&connections);
        let state = (
            name.to_string(),
            Arc::clone(&hits),
            Arc::clone(&status),
            Arc::clone(&health),
            Arc::clone(&delay_ms),
            Arc::clone(&methods),
            Arc::clone(&last_headers),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            connections,
            status,
            health,
            delay_ms,
            methods,
            last_headers,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

type State = (
    String,
    Arc<AtomicUsize>,
    Arc<AtomicU16>,
    Arc<AtomicU16>,
    Arc<AtomicU64>,
    Arc<Mutex<HashMap<String, usize>>>,
    Arc<Mutex<http::HeaderMap>>,
);

async fn respond(state: State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (name, hits, status, health, delay, methods, last_headers) = state;
    if req.uri().path() == "/health" {
        let s = health.load(Ordering::SeqCst);
        return Response::builder()
            .status(s)
            .body(Full::new(Bytes::from("health")))
            .unwrap();
    }
    hits.fetch_add(1, Ordering::SeqCst);
    *methods
        .lock()
        .unwrap()
        .entry(req.method().to_string())
        .or_insert(0) += 1;
    *last_headers.lock().unwrap() = req.headers().clone();
    // Like a real application, read the whole request body before answering.
    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
    let d = delay.load(Ordering::SeqCst);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    let s = status.load(Ordering::SeqCst);
    Response::builder()
        .status(s)
        .header("x-backend", &name)
        .body(Full::new(Bytes::from(name.clone())))
        .unwrap()
}

/// The real `sentinel` binary serving a config file.
pub struct Sentinel {
    pub child: Child,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts sentinel with `config` and waits until `/ready`.
    pub async fn start(config: &str) -> Sentinel {
        let s = Self::spawn(config);
        s.wait_ready().await;
        s
    }

    pub fn spawn(config: &str) -> Sentinel {
        Self::spawn_with_env(config, &[])
    }

    pub fn spawn_with_env(config: &str, env: &[(&str, &str)]) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sentinel.kdl");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("sentinel.log");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("--config")
            .arg(&path)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .env("RUST_LOG", "info")
            .env("SENTINEL_WORKERS", "2")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sentinel {
            child,
            admin,
            config: path,
            log,
            _dir: dir,
        }
    }

    pub async fn wait_ready(&self) {
        let client = client();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("http://{}/ready", self.admin))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sentinel did not become ready; log:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(format!("http://{}{}", self.admin, path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| sentinel_tests::without_instance_labels(&t))
            .unwrap()
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        self.signal("HUP");
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sentinel log ----\n{}\n---- end ----", self.logs());
        }
    }
}

/// A config with one listener and one upstream over `targets`, plus
/// `extra_upstream` lines inside the upstream block and `extra` top-level.
pub fn config(port: u16, targets: &[SocketAddr], extra_upstream: &str, extra: &str) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("        target \"{t}\"\n"))
        .collect();
    format!(
        r#"
observability {{
    logging {{ access-log #false; }}
}}
listeners {{
    listener "http" {{ address "127.0.0.1:{port}"; }}
}}
upstreams {{
    upstream "app" {{
{targets}{extra_upstream}
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/"; }}
        upstream "app"
    }}
}}
{extra}
"#
    )
}

pub fn client() -> reqwest::Client {
    init_tls();
    reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap()
}

/// Body type of [`streaming_backend`]'s answers.
type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A backend that answers `/len` with the byte count of the request body,
/// `/stream` with 40 chunks 100 ms apart, `/stall` with one chunk and
/// another 5 s later, anything else with its name.
pub async fn streaming_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body: TestBody = match path.as_str() {
                        "/len" => {
                            let n = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(usize::MAX);
                            http_body_util::Full::new(Bytes::from(format!("len={n}"))).boxed()
                        }
                        "/stall" => {
                            let (tx, rx) = tokio::sync::mpsc::channel::<
                                Result<hyper::body::Frame<Bytes>, Infallible>,
                            >(1);
                            tokio::spawn(async move {
                                let chunk =
                                    || Ok(hyper::body::Frame::data(Bytes::from_static(b"chunk\n")));
                                let _ = tx.send(chunk()).await;
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                let _ = tx.send(chunk()).await;
                            });
                            http_body_util::StreamBody::new(
                                tokio_stream::wrappers::ReceiverStream::new(rx),
                            )
                            .boxed()
                        }
                        "/stream" => {
                            let (tx, rx) = tokio::sync::mpsc::channel::<
                                Result<hyper::body::Frame<Bytes>, Infallible>,
                            >(1);
                            tokio::spawn(async move {
                                for _ in 0..40 {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    if tx
                                        .send(Ok(hyper::body::Frame::data(Bytes::from_static(
                                            b"chunk\n",
                                        ))))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            });
                            http_body_util::StreamBody::new(
                                tokio_stream::wrappers::ReceiverStream::new(rx),
                            )
                            .boxed()
                        }
                        _ => http_body_util::Full::new(Bytes::from(name)).boxed(),
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-backend", name)
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

// === test PKI ===

/// A CA that issues leaf certificates.
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for these subject alternative names (IPs become IP SANs).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
