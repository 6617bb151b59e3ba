//! TLS from the proxy to upstreams, against the real `sentinel` binary.
//!
//! Each test makes its own CAs and certificates with rcgen, starts TLS
//! backends written here (tokio-rustls + hyper, HTTP/1.1 and HTTP/2 chosen
//! by ALPN) on loopback, and checks what a client of the proxy sees: the
//! status, which HTTP version reached the backend, whether the backend saw a
//! client certificate — and the proxy's log line when TLS is refused. Waits
//! poll a condition with a deadline.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Ca, Leaf, Sentinel, client, free_port, write};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === TLS backend ===

/// Server TLS settings for a backend: its certificate, the ALPN it accepts,
/// and optionally a CA its clients must present certificates from.
fn server_config(leaf: &Leaf, alpn: &[&str], client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    config
}

/// A TLS backend answering every request with the HTTP version it arrived
/// in (`HTTP/1.1`, `HTTP/2.0`), `x-client-cert: yes|no`, and the request
/// body's length in `x-body-bytes`. HTTP/1.1 answers close the connection,
/// so every request makes a new handshake (certificate changes show at once).
struct TlsBackend {
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start(config: rustls::ServerConfig) -> TlsBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(Arc::new(config)));
        let current = Arc::clone(&config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(current.lock().unwrap().clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    let client_cert = session.peer_certificates().is_some();
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let version = format!("{:?}", req.version());
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let len = body.map(|b| b.len()).unwrap_or(0);
                            let mut resp = Response::builder()
                                .header("x-client-cert", if client_cert { "yes" } else { "no" })
                                .header("x-body-bytes", len.to_string());
                            if !h2 {
                                resp = resp.header("connection", "close");
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(version))).unwrap())
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsBackend { addr, config, task }
    }

    /// Serves new connections with `config` from now on.
    fn set_config(&self, config: rustls::ServerConfig) {
        *self.config.lock().unwrap() = Arc::new(config);
    }
}

// === proxy ===

/// One listener; per `(prefix, upstream, target, tls block)` an upstream
/// and a route on that path prefix.
fn proxy_config(port: u16, upstreams: &[(&str, &str, SocketAddr, String)]) -> String {
    let mut ups = String::new();
    let mut routes = String::new();
    for (prefix, name, target, tls) in upstreams {
        ups.push_str(&format!(
            "    upstream \"{name}\" {{\n        target \"{target}\"\n        {tls}\n    }}\n"
        ));
        routes.push_str(&format!(
            "    route \"{name}\" {{\n        matches {{ path-prefix \"{prefix}\"; }}\n        upstream \"{name}\"\n    }}\n"
        ));
    }
    format!(
        "observability {{\n    logging {{ access-log #false; }}\n}}\nlisteners {{\n    listener \"http\" {{ address \"127.0.0.1:{port}\"; }}\n}}\nupstreams {{\n{ups}}}\nroutes {{\n{routes}}}\n"
    )
}

struct Answer {
    status: u16,
    body: String,
    client_cert: String,
    body_bytes: String,
}

async fn get(port: u16, path: &str) -> Answer {
    send(client().get(format!("http://127.0.0.1:{port}{path}"))).await
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.unwrap();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let client_cert = header("x-client-cert");
    let body_bytes = header("x-body-bytes");
    let status = r.status().as_u16();
    Answer {
        status,
        body: r.text().await.unwrap_or_default(),
        client_cert,
        body_bytes,
    }
}

/// Polls `check` until it holds or `secs` pass.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_contains(sentinel: &Sentinel, parts: &[&str]) -> bool {
    eventually(10, || async {
        let logs = sentinel.logs();
        logs.lines().any(|l| parts.iter().all(|p| l.contains(p)))
    })
    .await
}

// === tests ===

#[tokio::test]
async fn verified_tls_over_http1_checks_the_target_ip_without_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let backend = TlsBackend::start(server_config(
        &ca.issue(&["localhost", "127.0.0.1"]),
        &["h2", "http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[(
            "/",
            "api",
            backend.addr,
            format!("tls {{ ca-file \"{ca_file}\"; }}"),
        )],
    ))
    .await;
    let a = get(port, "/x").await;
    assert_eq!(a.status, 200, "{}", sentinel.logs());
    // Default ALPN offers only http/1.1, even to a backend that speaks h2.
    assert_eq!(a.body, "HTTP/1.1");
    assert_eq!(a.client_cert, "no");
}

#[tokio::test]
async fn http2_is_used_when_alpn_negotiates_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let h2_backend = TlsBackend::start(server_config(
        &ca.issue(&["api.internal"]),
        &["h2", "http/1.1"],
        None,
    ))
    .await;
    let h1_backend = TlsBackend::start(server_config(
        &ca.issue(&["api.internal"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let tls =
        format!("tls {{ sni \"api.internal\"; ca-file \"{ca_file}\"; alpn \"h2\" \"http/1.1\"; }}");
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[
            ("/h2", "h2", h2_backend.addr, tls.clone()),
            ("/h1", "h1", h1_backend.addr, tls),
        ],
    ))
    .await;
    let a = get(port, "/h2/x").await;
    assert_eq!(a.status, 200, "{}", sentinel.logs());
    assert_eq!(a.body, "HTTP/2.0");
    // A request body travels over the h2 connection too.
    let upload = send(
        client()
            .post(format!("http://127.0.0.1:{port}/h2/upload"))
            .body(vec![7u8; 100_000]),
    )
    .await;
    assert_eq!(upload.status, 200);
    assert_eq!(upload.body_bytes, "100000");
    // The same offer to a backend without h2 falls back to HTTP/1.1.
    let a = get(port, "/h1/x").await;
    assert_eq!(a.status, 200, "{}", sentinel.logs());
    assert_eq!(a.body, "HTTP/1.1");
}

#[tokio::test]
async fn unknown_ca_is_refused_with_502_and_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("trusted CA");
    let other = Ca::new("other CA");
    let backend = TlsBackend::start(server_config(
        &other.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &trusted.pem);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[(
            "/",
            "api",
            backend.addr,
            format!("tls {{ ca-file \"{ca_file}\"; }}"),
        )],
    ))
    .await;
    let a = get(port, "/x").await;
    assert_eq!(a.status, 502);
    let target = backend.addr.to_string();
    assert!(
        log_contains(
            &sentinel,
            &[
                "upstream TLS handshake failed",
                "api",
                &target,
                "unknown CA"
            ]
        )
        .await,
        "no log line naming the upstream and the reason:\n{}",
        sentinel.logs()
    );
}

#[tokio::test]
async fn name_mismatch_is_refused_with_502_and_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let backend = TlsBackend::start(server_config(
        &ca.issue(&["api.internal"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[
            (
                "/wrong",
                "wrong",
                backend.addr,
                format!("tls {{ sni \"other.internal\"; ca-file \"{ca_file}\"; }}"),
            ),
            (
                "/right",
                "right",
                backend.addr,
                format!("tls {{ sni \"api.internal\"; ca-file \"{ca_file}\"; }}"),
            ),
        ],
    ))
    .await;
    assert_eq!(get(port, "/right").await.status, 200, "{}", sentinel.logs());
    assert_eq!(get(port, "/wrong").await.status, 502);
    assert!(
        log_contains(
            &sentinel,
            &[
                "upstream TLS handshake failed",
                "wrong",
                "name mismatch",
                "other.internal"
            ]
        )
        .await,
        "no name-mismatch log line:\n{}",
        sentinel.logs()
    );
}

#[tokio::test]
async fn mtls_backend_accepts_the_client_certificate_and_refuses_without() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let backend = TlsBackend::start(server_config(
        &server_ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        Some(&client_ca),
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &server_ca.pem);
    let client_leaf = client_ca.issue(&["sentinel.proxy"]);
    let cert = write(dir.path(), "client.pem", &client_leaf.cert);
    let key = write(dir.path(), "client.key", &client_leaf.key);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[
            (
                "/with",
                "with-cert",
                backend.addr,
                format!(
                    "tls {{ ca-file \"{ca_file}\"; client-cert \"{cert}\"; client-key \"{key}\"; }}"
                ),
            ),
            (
                "/without",
                "without-cert",
                backend.addr,
                format!("tls {{ ca-file \"{ca_file}\"; }}"),
            ),
        ],
    ))
    .await;
    let a = get(port, "/with").await;
    assert_eq!(a.status, 200, "{}", sentinel.logs());
    assert_eq!(a.client_cert, "yes");
    assert_eq!(get(port, "/without").await.status, 502);
    assert!(
        log_contains(&sentinel, &["without-cert", "client certificate"]).await,
        "no log line about the missing client certificate:\n{}",
        sentinel.logs()
    );
}

#[tokio::test]
async fn insecure_skip_verify_connects_to_an_untrusted_backend_and_warns() {
    let unknown = Ca::new("nobody trusts me");
    let backend = TlsBackend::start(server_config(
        &unknown.issue(&["somewhere.else"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[(
            "/",
            "legacy",
            backend.addr,
            "tls { insecure-skip-verify #true; }".into(),
        )],
    ))
    .await;
    let a = get(port, "/x").await;
    assert_eq!(a.status, 200, "{}", sentinel.logs());
    assert!(
        log_contains(
            &sentinel,
            &["WARN", "legacy", "insecure-skip-verify", "NOT verified"]
        )
        .await,
        "no warning:\n{}",
        sentinel.logs()
    );
}

/// The backend moves to a certificate from a new CA; the proxy refuses it
/// until the new CA is on disk, then picks it up with `reload`.
async fn rotate(reload: impl Fn(&Sentinel), secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("CA 2025");
    let new_ca = Ca::new("CA 2026");
    let backend = TlsBackend::start(server_config(
        &old_ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &old_ca.pem);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[(
            "/",
            "api",
            backend.addr,
            format!("tls {{ ca-file \"{ca_file}\"; }}"),
        )],
    ))
    .await;
    assert_eq!(get(port, "/x").await.status, 200, "{}", sentinel.logs());

    backend.set_config(server_config(
        &new_ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ));
    assert!(
        eventually(10, || async { get(port, "/x").await.status == 502 }).await,
        "a certificate from an untrusted CA was accepted"
    );

    write(dir.path(), "ca.pem", &new_ca.pem);
    reload(&sentinel);
    assert!(
        eventually(secs, || async { get(port, "/x").await.status == 200 }).await,
        "the rotated CA was not picked up:\n{}",
        sentinel.logs()
    );
}

#[tokio::test]
async fn rotated_ca_file_is_picked_up_after_sighup() {
    rotate(|s| s.signal("HUP"), 8).await;
}

#[tokio::test]
async fn rotated_ca_file_is_picked_up_without_a_reload() {
    // The proxy polls the files every 10 s.
    rotate(|_| {}, 30).await;
}

#[tokio::test]
async fn active_health_checks_speak_tls_and_report_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    let good = TlsBackend::start(server_config(
        &ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let bad = TlsBackend::start(server_config(
        &other.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ))
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let check = "health-check { interval-secs 1; timeout-secs 1; unhealthy-threshold 1; }";
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[
            (
                "/good",
                "good",
                good.addr,
                format!("tls {{ ca-file \"{ca_file}\"; }}\n{check}"),
            ),
            (
                "/bad",
                "bad",
                bad.addr,
                format!("tls {{ ca-file \"{ca_file}\"; }}\n{check}"),
            ),
        ],
    ))
    .await;
    let down = eventually(10, || async {
        let v = sentinel.admin_json("/admin/upstreams/bad/health").await;
        v["targets"][0]["healthy"] == false
            && v["targets"][0]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("unknown CA")
    })
    .await;
    assert!(
        down,
        "{}",
        sentinel.admin_json("/admin/upstreams/bad/health").await
    );
    // Several rounds later the TLS target is still healthy.
    let checked = client()
        .post(format!(
            "http://{}/admin/upstreams/good/check",
            sentinel.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    let v = sentinel.admin_json("/admin/upstreams/good/health").await;
    assert_eq!(v["targets"][0]["healthy"], true, "{v}");
}

#[tokio::test]
async fn unreadable_ca_file_fails_the_reload_and_the_old_config_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let backend = TlsBackend::start(server_config(
        &ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    ))
    .await;
    write(dir.path(), "ca.pem", &ca.pem);
    let port = free_port();
    let tls = "tls { ca-file \"${CERT_DIR}/ca.pem\"; }".to_string();
    let cfg = proxy_config(port, &[("/", "api", backend.addr, tls)]);
    let certs = dir.path().display().to_string();
    let sentinel = Sentinel::spawn_with_env(&cfg, &[("CERT_DIR", &certs)]);
    sentinel.wait_ready().await;
    assert_eq!(get(port, "/x").await.status, 200, "{}", sentinel.logs());

    sentinel.reload(&cfg.replace("/ca.pem", "/missing.pem"));
    assert!(
        log_contains(&sentinel, &["cannot read tls.ca-file", "missing.pem"]).await,
        "{}",
        sentinel.logs()
    );
    assert_eq!(get(port, "/x").await.status, 200);
}

#[tokio::test]
async fn a_plaintext_target_behind_tls_is_a_502_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let plain = common::Backend::start("plain").await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let port = free_port();
    let sentinel = Sentinel::start(&proxy_config(
        port,
        &[(
            "/",
            "api",
            plain.addr,
            format!("tls {{ ca-file \"{ca_file}\"; }}"),
        )],
    ))
    .await;
    assert_eq!(get(port, "/x").await.status, 502);
    assert!(
        log_contains(
            &sentinel,
            &["upstream TLS handshake failed", "speaking TLS"]
        )
        .await,
        "{}",
        sentinel.logs()
    );
}
