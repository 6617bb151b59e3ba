//! Control-plane mode against a scripted control plane: the real `sentinel`
//! binary connects to a small tonic `ConfigStream` server written here,
//! which lets each test choose exactly what the proxy is sent and read
//! exactly what it answers (Hello, ACK, NACK, Resync).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Backend, client, free_port};
use sentinel_config::Snapshot;
use sentinel_proto as pb;
use sentinel_proto::config_stream_server::{ConfigStream, ConfigStreamServer};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the scripted control plane hands the test for each proxy stream.
struct Session {
    /// Everything the proxy sends, Hello first.
    inbound: mpsc::UnboundedReceiver<pb::DeltaRequest>,
    /// Responses to send to the proxy.
    outbound: mpsc::Sender<Result<pb::DeltaResponse, Status>>,
}

struct Scripted {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl ConfigStream for Scripted {
    type DeltaStream = Out<pb::DeltaResponse>;
    type ReportHealthStream = Out<pb::HealthReportAck>;

    async fn delta(
        &self,
        request: Request<Streaming<pb::DeltaRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let mut stream = request.into_inner();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                if in_tx.send(m).is_err() {
                    return;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel(8);
        let _ = self.sessions.send(Session {
            inbound: in_rx,
            outbound: out_tx,
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn report_health(
        &self,
        request: Request<Streaming<pb::HealthReport>>,
    ) -> Result<Response<Self::ReportHealthStream>, Status> {
        let mut stream = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }
}

/// Starts the scripted control plane on a free loopback port.
async fn scripted_cp() -> (SocketAddr, Mutex<mpsc::UnboundedReceiver<Session>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigStreamServer::new(Scripted { sessions: tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, Mutex::new(rx))
}

/// The real proxy in control-plane mode.
struct Proxy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn start(cp: &str, cache: &Path, dir: &Path, env: &[(&str, &str)]) -> Proxy {
        let log = dir.join(format!("sentinel-{}.log", free_port()));
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args(["--control-plane", cp, "--node-id", "p1", "--admin-addr"])
            .arg(admin.to_string())
            .arg("--cache-dir")
            .arg(cache)
            .env_remove("RUST_LOG")
            .env_remove("SENTINEL_WORKERS")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proxy { child, admin, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn admin_config(&self) -> serde_json::Value {
        let Ok(r) = client()
            .get(format!("http://{}/admin/config", self.admin))
            .send()
            .await
        else {
            return serde_json::Value::Null;
        };
        r.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// Polls `/admin/config` until `check` holds or 20 s pass.
    async fn wait_config(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.admin_config().await;
            if check(&c) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; /admin/config: {c}\nlog:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sentinel log ----\n{}\n---- end ----", self.logs());
        }
    }
}

/// A config serving `backend` on `port`, with `extra` routes/blocks.
fn config(port: u16, backend: SocketAddr, extra_routes: &str, extra: &str) -> Snapshot {
    let text = format!(
        "listeners {{\n  listener \"http\" {{ address \"127.0.0.1:{port}\"; }}\n}}\nupstreams {{\n  upstream \"app\" {{ target \"{backend}\"; }}\n}}\nroutes {{\n  route \"all\" {{ upstream \"app\"; }}\n{extra_routes}}}\n{extra}"
    );
    sentinel_config::compile("test.kdl", &text).unwrap_or_else(|d| panic!("{}", d.render(false)))
}

fn full(nonce: &str, number: u64, s: &Snapshot) -> pb::DeltaResponse {
    pb::DeltaResponse {
        nonce: nonce.into(),
        config_version: s.config_hash(),
        version_number: number,
        resources: s.resources(),
        removed: vec![],
        chunk: 0,
        chunk_count: 1,
        keepalive: false,
        peers: 0,
        trace_parent: String::new(),
    }
}

fn versions(s: &Snapshot) -> Vec<(i32, String, String)> {
    let mut v: Vec<_> = s
        .resources()
        .into_iter()
        .map(|r| (r.r#type, r.name, r.version))
        .collect();
    v.sort();
    v
}

async fn next(session: &mut Session) -> pb::delta_request::Kind {
    let m = tokio::time::timeout(Duration::from_secs(20), session.inbound.recv())
        .await
        .expect("the proxy answers within 20 s")
        .expect("the stream stays open");
    m.kind.expect("a message kind")
}

async fn accept(sessions: &Mutex<mpsc::UnboundedReceiver<Session>>) -> Session {
    let mut s = tokio::time::timeout(Duration::from_secs(20), sessions.lock().await.recv())
        .await
        .expect("the proxy connects within 20 s")
        .expect("server running");
    match next(&mut s).await {
        pb::delta_request::Kind::Hello(_) => s,
        other => panic!("expected a hello, got {other:?}"),
    }
}

async fn get_status(port: u16) -> Option<u16> {
    client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_does_not_fit_what_the_proxy_holds_gets_a_resync_not_a_nack() {
    let backend = Backend::start("b").await;
    let other = Backend::start("c").await;
    let (cp, sessions) = scripted_cp().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &format!("http://{cp}"),
        &dir.path().join("cache"),
        dir.path(),
        &[],
    );
    let mut s = accept(&sessions).await;

    let port = free_port();
    let v1 = config(port, backend.addr, "", "");
    s.outbound.send(Ok(full("n1", 1, &v1))).await.unwrap();
    match next(&mut s).await {
        pb::delta_request::Kind::Ack(a) => assert_eq!(a.config_version, v1.config_hash()),
        other => panic!("expected an ACK of v1, got {other:?}"),
    }

    // v2 adds a route and moves the upstream to another target; the delta
    // carries only the route (as if computed from a base the proxy does not
    // hold) but announces v2's hash.
    let v2 = config(
        port,
        other.addr,
        "  route \"extra\" { matches { path-prefix \"/extra\"; }; upstream \"app\"; }\n",
        "",
    );
    let v2_routes: Vec<pb::Resource> = v2
        .resources()
        .into_iter()
        .filter(|r| r.r#type == pb::ResourceType::Route as i32 && r.name == "extra")
        .collect();
    let misfit = pb::DeltaResponse {
        resources: v2_routes,
        ..full("n2", 2, &v2)
    };
    s.outbound.send(Ok(misfit)).await.unwrap();
    match next(&mut s).await {
        pb::delta_request::Kind::Resync(r) => {
            assert_eq!(r.nonce, "n2");
            assert_eq!(
                r.config_version,
                v1.config_hash(),
                "names the config it holds"
            );
            let mut held: Vec<_> = r
                .held
                .into_iter()
                .map(|h| (h.r#type, h.name, h.version))
                .collect();
            held.sort();
            assert_eq!(held, versions(&v1), "names every resource it holds");
            assert!(r.reason.contains("not the announced"), "{}", r.reason);
        }
        other => panic!("expected a Resync, got {other:?}"),
    }
    // Nothing was applied: v1 keeps serving.
    let c = proxy.admin_config().await;
    assert_eq!(c["version"]["hash"], v1.config_hash(), "{c}");
    assert_eq!(get_status(port).await, Some(200));

    // The control plane answers the Resync with the difference from v1
    // (here: everything of v2) and the proxy ACKs it.
    s.outbound.send(Ok(full("n3", 2, &v2))).await.unwrap();
    match next(&mut s).await {
        pb::delta_request::Kind::Ack(a) => {
            assert_eq!(
                (a.nonce.as_str(), a.config_version),
                ("n3", v2.config_hash())
            )
        }
        other => panic!("expected an ACK of v2, got {other:?}"),
    }
    proxy
        .wait_config("v2 live", |c| c["version"]["hash"] == v2.config_hash())
        .await;
}

/// The log lines of `log` that are JSON objects.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// Defect 10 of issue 10: in control-plane mode `observability.logging`
/// and `server.worker-threads` were ignored. The same config now means the
/// same in both modes: logging follows the live config; a worker-thread
/// count that differs from the running one is reported as pending, and the
/// next start (from the last-good cache) runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_and_worker_threads_from_the_control_plane_take_effect() {
    let backend = Backend::start("b").await;
    let (cp, sessions) = scripted_cp().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = cores + 1;
    let proxy = Proxy::start(&format!("http://{cp}"), &cache, dir.path(), &[]);
    let mut s = accept(&sessions).await;

    let port = free_port();
    let v1 = config(
        port,
        backend.addr,
        "",
        &format!(
            "server {{ worker-threads {wanted}; }}\nobservability {{ logging {{ format \"json\"; level \"info\"; }}; }}\n"
        ),
    );
    s.outbound.send(Ok(full("n1", 1, &v1))).await.unwrap();
    match next(&mut s).await {
        pb::delta_request::Kind::Ack(a) => assert_eq!(a.config_version, v1.config_hash()),
        other => panic!("expected an ACK, got {other:?}"),
    }
    proxy
        .wait_config("the pending worker-thread count", |c| {
            c["workers"]["restart_required"] == true && c["workers"]["configured"] == wanted
        })
        .await;
    let c = proxy.admin_config().await;
    assert_eq!(c["workers"]["running"], cores, "{c}");
    assert_eq!(c["logging"]["format"], "json", "{c}");
    let logs = proxy.logs();
    assert!(
        json_lines(&logs)
            .iter()
            .any(|l| l["message"] == "configuration applied"),
        "logs turn to JSON when the config goes live:\n{logs}"
    );
    assert_eq!(
        logs.matches("server.worker-threads changed").count(),
        1,
        "one warning:\n{logs}"
    );

    // The level follows too: at `debug`, the proxy's upstream client logs
    // its new connection to the new target.
    let other = Backend::start("c").await;
    let v2 = config(
        port,
        other.addr,
        "",
        &format!(
            "server {{ worker-threads {wanted}; }}\nobservability {{ logging {{ format \"json\"; level \"debug\"; }}; }}\n"
        ),
    );
    s.outbound.send(Ok(full("n2", 2, &v2))).await.unwrap();
    assert!(matches!(
        next(&mut s).await,
        pb::delta_request::Kind::Ack(_)
    ));
    proxy
        .wait_config("v2 live", |c| c["version"]["hash"] == v2.config_hash())
        .await;
    assert_eq!(proxy.admin_config().await["logging"]["level"], "debug");
    assert_eq!(get_status(port).await, Some(200));
    let connecting = format!("connecting to {}", other.addr);
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(20), || async {
            proxy.logs().contains(&connecting)
        })
        .await,
        "no debug line after the level changed:\n{}",
        proxy.logs()
    );
    drop(s);
    drop(proxy);

    // Restart with the control plane away: the last-good cache decides the
    // worker threads and the logging from the first line on.
    let away = format!("http://127.0.0.1:{}", free_port());
    let restarted = Proxy::start(&away, &cache, dir.path(), &[]);
    restarted
        .wait_config("the cached config", |c| {
            c["version"]["hash"] == v2.config_hash()
        })
        .await;
    let c = restarted.admin_config().await;
    assert_eq!(c["workers"]["running"], wanted, "{c}");
    assert_eq!(c["workers"]["restart_required"], false, "{c}");
    let logs = restarted.logs();
    let first = logs.lines().next().unwrap_or_default();
    let first: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|_| panic!("the first line is JSON:\n{logs}"));
    assert_eq!(first["message"], "admin listener up", "{logs}");
    assert_eq!(first["workers"], wanted, "{logs}");
    assert_eq!(get_status(port).await, Some(200));
}

/// Defect 9 of issue 10, control-plane side: a response whose build is slow
/// (thousands of regex routes) is built off the only worker, so a request
/// issued after the build began is answered by the still-live old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_does_not_stall_traffic_on_a_single_worker() {
    let backend = Backend::start("b").await;
    let (cp, sessions) = scripted_cp().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &format!("http://{cp}"),
        &dir.path().join("cache"),
        dir.path(),
        &[("SENTINEL_WORKERS", "1")],
    );
    let mut s = accept(&sessions).await;
    let port = free_port();
    let v1 = config(port, backend.addr, "", "");
    s.outbound.send(Ok(full("n1", 1, &v1))).await.unwrap();
    assert!(matches!(
        next(&mut s).await,
        pb::delta_request::Kind::Ack(_)
    ));
    proxy
        .wait_config("v1 live", |c| c["version"]["hash"] == v1.config_hash())
        .await;
    assert_eq!(proxy.admin_config().await["workers"]["running"], 1);

    let mut routes = String::new();
    for i in 0..2000 {
        routes.push_str(&format!(
            "  route \"r{i}\" {{ matches {{ path-regex \"^/r{i}/[a-z]{{1,32}}/(alpha|beta|gamma|delta)[0-9]{{1,12}}$\"; }}; upstream \"app\"; }}\n"
        ));
    }
    let slow = config(port, backend.addr, &routes, "");
    s.outbound.send(Ok(full("n2", 2, &slow))).await.unwrap();
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(20), || async {
            proxy
                .logs()
                .matches("applying a response from the control plane")
                .count()
                >= 2
        })
        .await,
        "the build did not begin:\n{}",
        proxy.logs()
    );
    // Issued after the build began: answered, by the old version.
    assert_eq!(get_status(port).await, Some(200));
    let during = proxy.admin_config().await;
    assert_eq!(during["version"]["hash"], v1.config_hash(), "{during}");
    match next(&mut s).await {
        pb::delta_request::Kind::Ack(a) => assert_eq!(a.config_version, slow.config_hash()),
        other => panic!("expected an ACK, got {other:?}"),
    }
    proxy
        .wait_config("the slow config live", |c| {
            c["version"]["hash"] == slow.config_hash()
        })
        .await;
}
