//! The reference agents (`sentinel-agent token-auth`, `denylist`) as real
//! child processes in front of real proxies, in both modes: a config with
//! the seed's agent examples applied through the control plane, and the
//! same document served standalone from a file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sentinel_agent::reference::{hmac_sha256, signing_string};
use sentinel_tests::{ControlPlane, Proxy, free_port, http, loopback, wait_for, workspace_bin};
use serde_json::json;

/// A backend that answers with the `X-User` header it received (`-` when
/// none).
async fn who_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let user = req
                        .headers()
                        .get("x-user")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(user))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A reference agent as a child process, killed on drop.
struct AgentProcess(Child);

impl AgentProcess {
    fn start(args: &[&str]) -> AgentProcess {
        let child = Command::new(workspace_bin("sentinel-agent"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sentinel-agent");
        AgentProcess(child)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The seed's agent examples ("Why Sentinel Doesn't Manage Agents") with
/// this test's socket path and port, in front of `backend`.
fn document(listen: &str, socket: &Path, waf: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{ listener "http" {{ address "{listen}"; }}; }}
upstreams {{ upstream "api" {{ target "{backend}"; }}; }}
agents {{
    // Unix socket (local)
    agent "auth" type="auth" {{
        unix-socket "{socket}"
        timeout-ms 100
        failure-mode "closed"
        health-check {{
            enabled #true
            interval-ms 5000
            timeout-ms 100
            healthy-threshold 2
            unhealthy-threshold 3
        }}
        circuit-breaker {{
            failure-threshold 5
            success-threshold 3
            timeout-seconds 30
        }}
        connect-timeout-ms 1000
        retry {{
            attempts 2
            backoff-ms 10
        }}
    }}
    // gRPC (local or remote)
    agent "waf" type="waf" {{
        grpc "http://{waf}"
        timeout-ms 200
        failure-mode "open"
    }}
}}
routes {{
    route "api" {{
        upstream "api"
        agents "auth" "waf"
    }}
}}
"#,
        socket = socket.display()
    )
}

/// The checks both modes must pass against a proxy on `addr`.
async fn reference_agents_decide(addr: SocketAddr) {
    let c = http();
    let url = |p: &str| format!("http://{addr}{p}");
    let ok = wait_for(Duration::from_secs(20), || async {
        c.get(url("/items"))
            .bearer_auth("alice-token")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "the proxy serves with its agents");

    let r = c.get(url("/items")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = c
        .get(url("/items"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "unknown token");

    let r = c
        .get(url("/items"))
        .bearer_auth("alice-token")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "alice", "X-User set by token-auth");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = hex::encode(hmac_sha256(
        b"hmac-secret",
        signing_string("bob", &now, "GET", "/items", "page=2").as_bytes(),
    ));
    let signed = |sig: String| {
        c.get(url("/items?page=2"))
            .header("x-sentinel-user", "bob")
            .header("x-sentinel-timestamp", now.clone())
            .header("x-sentinel-signature", sig)
            .send()
    };
    let r = signed(sig.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "bob");
    let mut forged = sig.into_bytes();
    forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
    let r = signed(String::from_utf8(forged).unwrap()).await.unwrap();
    assert_eq!(r.status(), 401, "a forged signature");

    let r = c
        .get(url("/admin/users"))
        .bearer_auth("alice-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "denylist path");
}

struct Agents {
    _auth: AgentProcess,
    _waf: AgentProcess,
    socket: PathBuf,
    waf: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_agents() -> Agents {
    let dir = tempfile::Builder::new()
        .prefix("sentinel-agents-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("auth.sock");
    let waf = loopback(free_port());
    let auth = AgentProcess::start(&[
        "token-auth",
        "--unix-socket",
        socket.to_str().unwrap(),
        "--token",
        "alice=alice-token",
        "--hmac-secret",
        "hmac-secret",
    ]);
    let waf_agent = AgentProcess::start(&[
        "denylist",
        "--grpc",
        &waf.to_string(),
        "--path",
        "/admin*",
        "--ip",
        "203.0.113.0/24",
    ]);
    Agents {
        _auth: auth,
        _waf: waf_agent,
        socket,
        waf,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_agent_examples_apply_through_the_control_plane_and_decide() {
    let backend = who_backend().await;
    let agents = start_agents();
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let proxy = Proxy::start(
        &workspace_bin("sentinel"),
        "eu-1",
        "eu",
        &[cp.grpc_url()],
        &[],
    );
    let config = document("${SENTINEL_HTTP_ADDR}", &agents.socket, agents.waf, backend);
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": config }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
    reference_agents_decide(proxy.http).await;
    let m = http()
        .get(format!("http://{}/metrics", proxy.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = sentinel_tests::without_instance_labels(&m);
    assert!(m.contains("sentinel_agent_health{agent=\"auth\"} 1"), "{m}");
    assert!(
        m.contains("sentinel_agent_decisions_total{agent=\"waf\",result=\"deny\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_agent_examples_work_standalone() {
    let backend = who_backend().await;
    let agents = start_agents();
    let dir = tempfile::tempdir().unwrap();
    let listen = loopback(free_port());
    let path = dir.path().join("sentinel.kdl");
    std::fs::write(
        &path,
        document(&listen.to_string(), &agents.socket, agents.waf, backend),
    )
    .unwrap();
    let validate = Command::new(workspace_bin("sentinel"))
        .arg("--validate")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let mut proxy = Command::new(workspace_bin("sentinel"))
        .arg("--config")
        .arg(&path)
        .arg("--admin-addr")
        .arg(loopback(free_port()).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    reference_agents_decide(listen).await;
    let _ = proxy.kill();
    let _ = proxy.wait();
}
