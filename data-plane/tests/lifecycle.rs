//! Protocols and lifecycle: WebSocket, HTTP/2 over TLS, reloads, swaps
//! under load, graceful shutdown, connection limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, Sentinel, client, config, free_port};
use futures_util::{SinkExt, StreamExt};

/// A WebSocket echo server on a free port.
async fn ws_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let echo = ws_echo().await;
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[echo], "", "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/chat"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "hello {i}"
        )))
        .await
        .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_with_alpn() {
    common::init_tls();
    let backend = Backend::start("tls-backend").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        tls {{
            cert-file "{}"
            key-file "{}"
        }}
    }}
}}
upstreams {{ upstream "app" {{ target "{}"; }}; }}
routes {{ route "all" {{ upstream "app"; }}; }}
"#,
        cert_path.display(),
        key_path.display(),
        backend.addr
    );
    let proxy = Sentinel::start(&cfg).await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([root])
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("https://localhost:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "tls-backend");
    let h = backend.last_headers.lock().unwrap().clone();
    assert_eq!(h["x-forwarded-proto"], "https");
    let c1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .http1_only()
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = c1
        .get(format!("https://localhost:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_certificate_refuses_to_start() {
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{ listener "https" {{ address "127.0.0.1:{port}"; tls {{ cert-file "/nonexistent/c.pem"; key-file "/nonexistent/k.pem"; }}; }}; }}
upstreams {{ upstream "app" {{ target "127.0.0.1:1"; }}; }}
routes {{ route "all" {{ upstream "app"; }}; }}
"#
    );
    let mut proxy = Sentinel::spawn(&cfg);
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)).await, Some(1));
    assert!(
        proxy
            .logs()
            .contains("listener \"https\": cannot read certificate file /nonexistent/c.pem"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_keeps_serving_on_an_invalid_one() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[a.addr], "", "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "a");
    let before = proxy.admin_json("/admin/config").await["version"]["hash"].clone();

    proxy.reload(&config(port, &[b.addr], "", ""));
    let mut switched = false;
    for _ in 0..100 {
        if c.get(&url).send().await.unwrap().text().await.unwrap() == "b" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(switched, "valid reload not applied");
    let after = proxy.admin_json("/admin/config").await;
    assert_ne!(after["version"]["hash"], before);
    assert_eq!(after["version"]["origin"]["kind"], "file");

    proxy.reload("routes { route \"x\" { upstream \"missing\"; }; }\nlisteners { bogus; }\n");
    let mut failed = false;
    for _ in 0..100 {
        if proxy
            .metrics()
            .await
            .contains("sentinel_config_reloads_total{result=\"failure\"} 1")
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "reload failure not counted");
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "b",
        "old config keeps serving"
    );
    assert!(
        proxy.logs().contains("unknown upstream `missing`"),
        "diagnostics are logged"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_bound_and_drained_by_reload() {
    let a = Backend::start("a").await;
    let p1 = free_port();
    let p2 = free_port();
    let proxy = Sentinel::start(&config(p1, &[a.addr], "", "")).await;
    let two = config(p1, &[a.addr], "", "").replace(
        "listeners {\n",
        &format!("listeners {{\n    listener \"second\" {{ address \"127.0.0.1:{p2}\"; }}\n"),
    );
    proxy.reload(&two);
    let c = client();
    let mut up = false;
    for _ in 0..100 {
        if c.get(format!("http://127.0.0.1:{p2}/"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "added listener never bound");
    proxy.reload(&config(p2, &[a.addr], "", "").replace("\"http\"", "\"second\""));
    let mut gone = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", p1))
            .await
            .is_err()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "removed listener still accepts");
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{p2}/"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0),
        200
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_fails_the_reload_and_changes_nothing() {
    let a = Backend::start("a").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[a.addr], "", "")).await;
    let before = proxy.admin_json("/admin/config").await["version"]["hash"].clone();
    let bad = config(port, &[a.addr], "", "").replace(
        "listeners {\n",
        &format!("listeners {{\n    listener \"busy\" {{ address \"127.0.0.1:{taken_port}\"; }}\n"),
    );
    proxy.reload(&bad);
    let mut failed = false;
    for _ in 0..100 {
        if proxy
            .logs()
            .contains(&format!("cannot bind 127.0.0.1:{taken_port}"))
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "{}", proxy.logs());
    assert_eq!(
        proxy.admin_json("/admin/config").await["version"]["hash"],
        before
    );
    assert_eq!(
        client()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(taken);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_listener_at_the_same_address_keeps_its_socket() {
    let a = Backend::start("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[a.addr], "", "")).await;
    let before = proxy.admin_json("/admin/config").await["version"]["hash"].clone();
    proxy.reload(&config(port, &[a.addr], "", "").replace("\"http\"", "\"web\""));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = proxy.metrics().await;
        assert!(
            !metrics.contains("sentinel_config_reloads_total{result=\"failure\"}"),
            "rename refused:\n{}",
            proxy.logs()
        );
        if metrics.contains("sentinel_config_reloads_total{result=\"success\"}") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(
        proxy.admin_json("/admin/config").await["version"]["hash"],
        before
    );
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        proxy.logs().contains("listener renamed"),
        "{}",
        proxy.logs()
    );
    drop(proxy);
}

/// Runs `concurrency` clients until `stop`; counts results.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, concurrency: usize, max_requests: usize) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..concurrency)
            .map(|_| {
                let (url, ok, failed, refused, errors, stop) = (
                    url.clone(),
                    ok.clone(),
                    failed.clone(),
                    refused.clone(),
                    errors.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    for _ in 0..max_requests {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match c.get(&url).send().await {
                            Ok(r) => {
                                let status = r.status();
                                match r.bytes().await {
                                    Ok(_) if status == 200 => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    other => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        errors
                                            .lock()
                                            .unwrap()
                                            .push(format!("status {status}: {other:?}"));
                                    }
                                }
                            }
                            Err(e) if e.is_connect() => {
                                // Never accepted: the listener was closed.
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("{e:?}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            refused,
            errors,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> (usize, usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_request_while_the_config_is_swapped_ten_times_a_second() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let port = free_port();
    let configs = [
        config(
            port,
            &[a.addr, b.addr],
            "load-balancing \"round_robin\"",
            "",
        ),
        config(port, &[a.addr], "load-balancing \"least_connections\"", ""),
        config(port, &[b.addr, a.addr], "retry { attempts 3; }", ""),
    ];
    let proxy = Sentinel::start(&configs[0]).await;
    let load = Load::start(format!("http://127.0.0.1:{port}/"), 8, 100_000);
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.reload(&configs[(i + 1) % configs.len()]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed, refused, errors) = load.finish().await;
    let reloads = proxy.metrics().await;
    assert!(ok > 500, "too little load to mean anything: {ok}");
    assert_eq!((failed, refused), (0, 0), "errors: {errors:?}");
    assert!(
        reloads.contains("sentinel_config_reloads_total{result=\"success\"}"),
        "{reloads}"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_accepted_request_and_exits_zero() {
    let a = Backend::start("a").await;
    a.delay_ms.store(100, Ordering::SeqCst);
    let port = free_port();
    let cfg = config(
        port,
        &[a.addr],
        "",
        "server { graceful-shutdown-timeout-secs 5; }",
    );
    let mut proxy = Sentinel::start(&cfg).await;
    let load = Load::start(format!("http://127.0.0.1:{port}/"), 16, 1000);
    // Wait until the load really reaches the backend (a busy machine may
    // take a while), not for a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.hits() < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load never reached the backend: {} hits",
            a.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight_before = a.hits();
    proxy.signal("TERM");
    let code = proxy.wait_exit(Duration::from_secs(8)).await;
    let (ok, failed, refused, errors) = load.finish().await;
    assert_eq!(code, Some(0), "{}", proxy.logs());
    assert!(
        in_flight_before > 0 && ok >= in_flight_before,
        "ok={ok} before={in_flight_before}"
    );
    assert_eq!(failed, 0, "accepted requests failed: {errors:?}");
    assert!(refused > 0, "clients should see the listener close");
    assert!(
        proxy.logs().contains("drained; exiting"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_max_connections_is_honoured() {
    let a = Backend::start("a").await;
    a.delay_ms.store(300, Ordering::SeqCst);
    let port = free_port();
    let cfg = config(port, &[a.addr], "", "").replace(
        &format!("address \"127.0.0.1:{port}\";"),
        &format!("address \"127.0.0.1:{port}\"; max-connections 2;"),
    );
    let proxy = Sentinel::start(&cfg).await;
    // 6 clients on their own connections: at most 2 are served at a time,
    // so the whole batch takes at least 3 rounds of the backend's delay.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = format!("http://127.0.0.1:{port}/");
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            c.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "limit not applied: {:?}",
        started.elapsed()
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_upstream_keeps_health_and_limiter_state_across_swaps() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.set_status(500);
    let port = free_port();
    let upstream =
        "passive-health { consecutive-failures 1; ejection-secs 60; }\nretry { attempts 1; }";
    let filters = r#"filters { filter "limit" { type "rate-limit"; max-rps 0.01; burst 2; }; }"#;
    let base = config(port, &[a.addr, b.addr], upstream, filters).replace(
        "upstream \"app\"\n    }",
        "upstream \"app\"\n        filters \"limit\"\n    }",
    );
    let proxy = Sentinel::start(&base).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    // Eject b and spend the limiter's burst.
    let _ = c.get(&url).send().await.unwrap();
    let _ = c.get(&url).send().await.unwrap();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 429);
    // A swap that changes only an unrelated route.
    let changed = base.replace(
        "routes {\n",
        "routes {\n    route \"other\" { matches { path \"/other\"; }; upstream \"app\"; }\n",
    );
    proxy.reload(&changed);
    for _ in 0..100 {
        if proxy.admin_json("/admin/routes").await["routes"]
            .as_array()
            .unwrap()
            .len()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        429,
        "limiter state kept"
    );
    let view = proxy.admin_json("/admin/upstreams/app/health").await;
    let ejected: Vec<bool> = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ejected"].as_bool().unwrap())
        .collect();
    assert!(ejected.contains(&true), "health state kept: {view}");
    drop(proxy);
}

/// A config whose build is slow: thousands of regex routes.
fn slow_config(port: u16, backend: std::net::SocketAddr, routes: usize) -> String {
    let mut regex_routes = String::new();
    for i in 0..routes {
        regex_routes.push_str(&format!(
            "    route \"r{i}\" {{ matches {{ path-regex \"^/r{i}/[a-z]{{1,32}}/(alpha|beta|gamma|delta)[0-9]{{1,12}}$\"; }}; upstream \"app\"; }}\n"
        ));
    }
    config(port, &[backend], "", "server { worker-threads 1; }\n")
        .replace("routes {\n", &format!("routes {{\n{regex_routes}"))
}

/// Defect 9 of issue 10: with one worker, building a runtime on that
/// worker stalled every request until the swap. The build now runs off the
/// workers, so a request issued after the reload began is answered while the
/// old version is still live (impossible if the build held the only worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reload_does_not_stall_traffic_on_a_single_worker() {
    let backend = Backend::start("a").await;
    let port = free_port();
    let small = config(port, &[backend.addr], "", "server { worker-threads 1; }\n");
    let proxy = Sentinel::spawn_with_env(&small, &[("SENTINEL_WORKERS", "1")]);
    proxy.wait_ready().await;
    let before = proxy.admin_json("/admin/config").await["version"]["hash"].clone();

    proxy.reload(&slow_config(port, backend.addr, 1000));
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(20), || async {
            proxy.logs().contains("SIGHUP: reloading configuration")
        })
        .await,
        "the reload did not begin"
    );
    // Issued after the reload began: answered by the old version.
    let c = client();
    let status = c
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let during = proxy.admin_json("/admin/config").await["version"]["hash"].clone();
    assert_eq!(
        during, before,
        "a request issued during the build must be answered by the still-live old version"
    );
    // And the slow build does complete and go live.
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(120), || async {
            proxy.admin_json("/admin/config").await["version"]["hash"] != before
        })
        .await,
        "the slow config never went live"
    );
    assert_eq!(
        proxy.admin_json("/admin/routes").await["routes"]
            .as_array()
            .map(Vec::len),
        Some(1001)
    );
}

/// Defect 10 of issue 10, standalone side: a SIGHUP applies the new
/// logging format, and a changed `server.worker-threads` is reported as
/// pending (it needs a restart) instead of being silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_logging_and_reports_a_pending_worker_thread_count() {
    let backend = Backend::start("a").await;
    let port = free_port();
    let proxy = Sentinel::spawn_with_env(
        &config(port, &[backend.addr], "", "server { worker-threads 1; }\n"),
        &[("SENTINEL_WORKERS", "")],
    );
    proxy.wait_ready().await;
    let c = proxy.admin_json("/admin/config").await;
    assert_eq!(c["workers"]["running"], 1, "{c}");
    assert_eq!(c["workers"]["restart_required"], false, "{c}");
    assert_eq!(c["logging"]["format"], "text", "{c}");

    proxy.reload(
        &config(port, &[backend.addr], "", "server { worker-threads 3; }\n")
            .replace("access-log #false;", "access-log #false; format \"json\";"),
    );
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(20), || async {
            proxy.admin_json("/admin/config").await["workers"]["restart_required"] == true
        })
        .await,
        "the pending worker-thread count is not shown"
    );
    let c = proxy.admin_json("/admin/config").await;
    assert_eq!(c["workers"]["running"], 1, "{c}");
    assert_eq!(c["workers"]["configured"], 3, "{c}");
    assert_eq!(c["logging"]["format"], "json", "{c}");
    let logs = proxy.logs();
    assert!(
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["message"] == "Configuration reload completed"),
        "the reload's own lines are JSON:\n{logs}"
    );
    assert_eq!(
        logs.matches("server.worker-threads changed").count(),
        1,
        "{logs}"
    );
}

/// Issue 20, thread-per-core: with N workers every listener is bound once
/// per worker (`SO_REUSEPORT`), and the kernel spreads new connections over
/// all of them; each worker serves what it accepted. A port someone else
/// already holds still fails the bind, `SO_REUSEPORT` notwithstanding.
/// And the proxy runs without transparent huge pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_workers_and_a_held_port_still_fails() {
    let backend = Backend::start("a").await;
    let port = free_port();
    let proxy = Sentinel::spawn_with_env(
        &config(port, &[backend.addr], "", ""),
        &[("SENTINEL_WORKERS", "3")],
    );
    proxy.wait_ready().await;
    // 60 clients, each on a new connection (a new source port, so a new
    // hash for the kernel's choice).
    for _ in 0..60 {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let r = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The process opted out of transparent huge pages (its memory:
    // docs/benchmarks.md, "No transparent huge pages").
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "{status}"
    );
    let view = proxy.admin_json("/admin/config").await["workers"].clone();
    assert_eq!(view["running"], 3, "{view}");
    let accepted: Vec<u64> = serde_json::from_value(view["accepted_per_worker"].clone()).unwrap();
    assert_eq!(accepted.len(), 3, "{view}");
    assert_eq!(accepted.iter().sum::<u64>(), 60, "{view}");
    // Chance that a worker with a third of the hash space gets none of 60:
    // (2/3)^60, about 3e-11.
    assert!(
        accepted.iter().all(|n| *n > 0),
        "a worker got no connection: {view}"
    );

    // A listener moved to a port another process's listener holds with
    // `SO_REUSEPORT` (another sentinel, say) is refused instead of joining
    // it and taking half its traffic; the old listener keeps serving.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.set_reuse_port(true).unwrap();
    held.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    held.listen(16).unwrap();
    let held_port = held.local_addr().unwrap().as_socket().unwrap().port();
    proxy.reload(&config(port, &[backend.addr], "", "").replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{held_port}"),
    ));
    assert!(
        sentinel_tests::wait_for(Duration::from_secs(20), || async {
            proxy
                .logs()
                .contains(&format!("cannot bind 127.0.0.1:{held_port}"))
        })
        .await,
        "binding a held port was not refused:\n{}",
        proxy.logs()
    );
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
