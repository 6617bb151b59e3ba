//! More behaviour of the proxy: pooling, limits, h2c, all-unhealthy modes,
//! in-flight requests across swaps, JSON access logs, TCP health checks.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Backend, Sentinel, client, config, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let a = Backend::start("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[a.addr], "", "")).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(
            c.get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let conns = a.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "50 sequential requests opened {conns} upstream connections"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_uri_and_header_limits() {
    let a = Backend::start("a").await;
    let port = free_port();
    let limits = "limits { max-body-bytes 1024; max-uri-bytes 128; max-headers 20; }";
    let proxy = Sentinel::start(&config(port, &[a.addr], "", limits)).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        c.post(&url)
            .body(vec![b'x'; 1000])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(&url)
            .body(vec![b'x'; 2000])
            .send()
            .await
            .unwrap()
            .status(),
        413
    );
    // A streamed body without a length is cut at the limit too.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let r = c
        .put(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let long = format!("{url}{}", "p".repeat(200));
    assert_eq!(c.get(&long).send().await.unwrap().status(), 414);
    let mut req = c.get(&url);
    for i in 0..40 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    assert!(
        status == 431 || status == 400 || status == 0,
        "too many headers answered {status}"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http2_with_prior_knowledge() {
    let a = Backend::start("a").await;
    let port = free_port();
    let cfg = config(port, &[a.addr], "", "").replace(
        &format!("address \"127.0.0.1:{port}\";"),
        &format!("address \"127.0.0.1:{port}\"; http2 #true;"),
    );
    let proxy = Sentinel::start(&cfg).await;
    common::init_tls();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "a");
    // HTTP/1.1 still works on the same listener.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    drop(proxy);
}

async fn all_unhealthy(mode: &str) -> u16 {
    let a = Backend::start("a").await;
    a.set_health(500);
    let port = free_port();
    let extra = format!(
        "health-check {{ type \"tcp\"; interval-secs 1; timeout-secs 1; unhealthy-threshold 1; }}\n\
         health-check-placeholder\nall-unhealthy \"{mode}\""
    )
    .replace("health-check-placeholder\n", "");
    // A TCP check against a closed port marks the only target down.
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = config(port, &[dead.parse().unwrap()], &extra, "");
    let proxy = Sentinel::start(&cfg).await;
    for _ in 0..100 {
        let v = proxy.admin_json("/admin/upstreams/app/health").await;
        if v["targets"][0]["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    drop(proxy);
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unhealthy_fail_closed_answers_503_and_fail_open_still_tries() {
    // Closed: the proxy does not try the unhealthy target.
    assert_eq!(all_unhealthy("fail-closed").await, 503);
    // Open: it tries anyway (and the dead target gives 502).
    assert_eq!(all_unhealthy("fail-open").await, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_their_snapshot() {
    let slow = Backend::start("slow").await;
    slow.delay_ms.store(800, Ordering::SeqCst);
    let other = Backend::start("other").await;
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[slow.addr], "", "")).await;
    let url = format!("http://127.0.0.1:{port}/");
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    // Reload only once the request is at the backend.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slow.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.reload(&config(port, &[other.addr], "", ""));
    let mut switched = false;
    for _ in 0..50 {
        if client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            == "other"
        {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(switched);
    assert_eq!(
        in_flight.await.unwrap(),
        "slow",
        "the old snapshot served the in-flight request"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request() {
    let a = Backend::start("a").await;
    let port = free_port();
    let cfg = config(port, &[a.addr], "", "").replace(
        "logging { access-log #false; }",
        "logging { format \"json\"; access-log #true; }",
    );
    let proxy = Sentinel::start(&cfg).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/some/path"))
        .header("x-request-id", "abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut line = None;
    for _ in 0..50 {
        line = proxy
            .logs()
            .lines()
            .find(|l| l.contains("\"request_id\":\"abc-1\""))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.unwrap_or_else(|| panic!("no access log line:\n{}", proxy.logs()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "access");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["route"], "all");
    assert_eq!(v["upstream"], "app");
    assert_eq!(v["target"], a.addr.to_string());
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().is_some());
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_from_the_environment_and_admin_endpoints() {
    let a = Backend::start("a").await;
    let port = free_port();
    let cfg = config(port, &["127.0.0.1:1".parse().unwrap()], "", "")
        .replace("target \"127.0.0.1:1\"", "target \"${BACKEND_ADDR}\"")
        .replace(
            &format!("\"127.0.0.1:{port}\""),
            "\"${LISTEN_ADDR:-127.0.0.1:1}\"",
        );
    let listen = format!("127.0.0.1:{port}");
    let backend = a.addr.to_string();
    let proxy = Sentinel::spawn_with_env(
        &cfg,
        &[("BACKEND_ADDR", &backend), ("LISTEN_ADDR", &listen)],
    );
    proxy.wait_ready().await;
    assert_eq!(
        client()
            .get(format!("http://{listen}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a"
    );
    let c = client();
    let health = c
        .get(format!("http://{}/health", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let config = proxy.admin_json("/admin/config").await;
    assert_eq!(config["summary"]["routes"], 1);
    assert_eq!(config["listeners"][0]["address"], listen);
    let kdl = c
        .get(format!("http://{}/admin/config?format=kdl", proxy.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        kdl.contains("${BACKEND_ADDR}"),
        "the stored form keeps references: {kdl}"
    );
    let ups = proxy.admin_json("/admin/upstreams").await;
    assert_eq!(ups["upstreams"][0]["targets"][0]["address"], backend);
    let missing = c
        .get(format!(
            "http://{}/admin/upstreams/nope/health",
            proxy.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let no_check = c
        .post(format!("http://{}/admin/upstreams/app/check", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(no_check.status(), 409, "no active check configured");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_variable_without_default_refuses_to_start() {
    let port = free_port();
    let cfg = config(port, &["127.0.0.1:1".parse().unwrap()], "", "").replace(
        "target \"127.0.0.1:1\"",
        "target \"${SURELY_UNSET_VAR_42}\"",
    );
    let mut proxy = Sentinel::spawn(&cfg);
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)).await, Some(1));
    assert!(
        proxy.logs().contains("SURELY_UNSET_VAR_42"),
        "{}",
        proxy.logs()
    );
}
