//! The request path under real clients (issue 11): HTTP/2 uploads without
//! Content-Length, breaker probes that are cancelled, in-flight counts of
//! streamed responses, error bodies, the metrics path, zone preference.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, Sentinel, client, config, free_port, streaming_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ensure_curl() {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "curl is required (scripts/ensure-deps installs it): apt-get install curl"
    );
}

/// Uploads 100 KB from stdin with curl (so no Content-Length) and returns
/// curl's stdout.
fn curl_upload(args: &[&str], url: &str) -> String {
    ensure_curl();
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-T", "-"])
        .args(args)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let payload = vec![b'x'; 100 * 1024];
    child.stdin.take().unwrap().write_all(&payload).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upload_without_content_length_reaches_the_upstream_intact() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let cfg = config(port, &[backend], "", "").replace(
        &format!("address \"127.0.0.1:{port}\";"),
        &format!("address \"127.0.0.1:{port}\"; http2 #true;"),
    );
    let proxy = Sentinel::start(&cfg).await;
    let url = format!("http://127.0.0.1:{port}/len");
    let out = tokio::task::spawn_blocking(move || {
        curl_upload(&["--http2-prior-knowledge", "-X", "POST"], &url)
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "len=102400", "h2c upload lost its body");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_upload_without_content_length_reaches_the_upstream_intact() {
    let backend = streaming_backend("a").await;
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
        tls {{ cert-file "{}"; key-file "{}"; }}
    }}
}}
upstreams {{ upstream "app" {{ target "{backend}"; }}; }}
routes {{ route "all" {{ upstream "app"; }}; }}
"#,
        cert_path.display(),
        key_path.display(),
    );
    let proxy = Sentinel::start(&cfg).await;
    let url = format!("https://127.0.0.1:{port}/len");
    let out =
        tokio::task::spawn_blocking(move || curl_upload(&["--http2", "-k", "-X", "POST"], &url))
            .await
            .unwrap();
    assert_eq!(out.trim(), "len=102400", "h2 upload lost its body");
    drop(proxy);
}

async fn breaker_state(proxy: &Sentinel) -> String {
    proxy.admin_json("/admin/upstreams/app/health").await["targets"][0]["circuit_breaker"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A chunked POST of `len` bytes on a raw connection; returns the status.
async fn chunked_post(port: u16, len: usize) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head =
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    req.extend(std::iter::repeat_n(b'y', len));
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let _ = s.write_all(&req).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_whose_probe_is_cancelled_recovers() {
    let a = Backend::start("a").await;
    a.set_status(503);
    let port = free_port();
    let extra = r#"
        circuit-breaker { failure-threshold 1; success-threshold 1; timeout-seconds 1; }
        passive-health { enabled #false; }
        retry { attempts 1; }
        all-unhealthy "fail-closed"
    "#;
    let cfg = config(port, &[a.addr], extra, "").replace(
        "        upstream \"app\"\n    }\n}",
        "        upstream \"app\"\n        policies { max-body-bytes 1000; }\n    }\n}",
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 503);
    assert_eq!(breaker_state(&proxy).await, "open");
    a.set_status(200);
    // Once the open period ends, the next request is the probe. Make it one
    // the proxy refuses on the client side: a chunked body over the limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = chunked_post(port, 4000).await;
        if status == 413 {
            break;
        }
        assert_eq!(status, 503, "unexpected answer while open");
        assert!(tokio::time::Instant::now() < deadline, "never got to probe");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(breaker_state(&proxy).await, "half-open");
    // The refused probe must not hold the breaker: the next request probes
    // and closes it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = c.get(&url).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker stuck half-open: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(breaker_state(&proxy).await, "closed");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_whose_probe_client_went_away_recovers() {
    let a = Backend::start("a").await;
    a.set_status(503);
    let port = free_port();
    let extra = r#"
        circuit-breaker { failure-threshold 1; success-threshold 1; timeout-seconds 1; }
        passive-health { enabled #false; }
        retry { attempts 1; }
        all-unhealthy "fail-closed"
    "#;
    let proxy = Sentinel::start(&config(port, &[a.addr], extra, "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 503);
    assert_eq!(breaker_state(&proxy).await, "open");
    // The backend would answer the probe only after 30 s; its client gives
    // up after 300 ms and closes the connection.
    a.set_status(200);
    a.delay_ms
        .store(30_000, std::sync::atomic::Ordering::SeqCst);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match impatient.get(&url).send().await {
            Err(e) if e.is_timeout() => break,
            Ok(r) => assert_eq!(r.status(), 503, "unexpected answer while open"),
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never got to probe");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = c.get(&url).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker stuck half-open after the probe's client left: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_counts_a_streamed_response_until_its_body_ends() {
    let a = streaming_backend("a").await;
    let b = streaming_backend("b").await;
    let port = free_port();
    let proxy = Sentinel::start(&config(
        port,
        &[a, b],
        "load-balancing \"least_connections\"",
        "",
    ))
    .await;
    let c = client();
    // The head of a 4-second stream arrives at once; its body keeps going.
    let stream = c
        .get(format!("http://127.0.0.1:{port}/stream"))
        .send()
        .await
        .unwrap();
    let busy = stream.headers()["x-backend"].to_str().unwrap().to_string();
    let mut others = Vec::new();
    for _ in 0..10 {
        let r = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        others.push(r.text().await.unwrap());
    }
    assert!(
        others.iter().all(|name| *name != busy),
        "requests went to the target still streaming ({busy}): {others:?}"
    );
    let body = stream.text().await.unwrap();
    assert_eq!(body.lines().count(), 40);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_no_upstream_and_carry_the_request_id() {
    let dead = free_port();
    let dead_addr: SocketAddr = format!("127.0.0.1:{dead}").parse().unwrap();
    let port = free_port();
    let proxy = Sentinel::start(&config(port, &[dead_addr], "retry { attempts 1; }", "")).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("x-request-id", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(!body.contains(&dead.to_string()), "address leaked: {body}");
    assert!(!body.contains("127.0.0.1"), "address leaked: {body}");
    assert!(
        !body.to_lowercase().contains("refused"),
        "error chain leaked: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["request_id"], "req-7");
    assert_eq!(v["status"], 502);
    // The detail is in the log, with the request id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = proxy.logs();
        if logs.contains("req-7") && logs.contains(&format!("127.0.0.1:{dead}")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "detail not logged:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);

    // With the access log on, the detail rides on the access-log line.
    let port = free_port();
    let cfg = config(port, &[dead_addr], "retry { attempts 1; }", "")
        .replace("access-log #false", "access-log #true");
    let proxy = Sentinel::start(&cfg).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("x-request-id", "req-8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = proxy.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("req-8") && l.contains("access"));
        if line.is_some_and(|l| l.contains(&format!("127.0.0.1:{dead}"))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "detail not on the access line:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_at_the_configured_path() {
    let a = Backend::start("a").await;
    let port = free_port();
    let cfg = config(port, &[a.addr], "", "").replace(
        "logging { access-log #false; }",
        "logging { access-log #false; }\n    metrics { path \"/internal/prom\"; }",
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let r = c
        .get(format!("http://{}/internal/prom", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sentinel_build_info"));
    let r = c
        .get(format!("http://{}/metrics", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the default path must not serve metrics");
    drop(proxy);
}

fn zone_config(port: u16, near: SocketAddr, far: SocketAddr) -> String {
    format!(
        r#"
listeners {{ listener "http" {{ address "127.0.0.1:{port}"; }}; }}
upstreams {{
    upstream "app" {{
        target "{far}" zone="eu-west-1b"
        target "{near}" zone="eu-west-1a"
        load-balancing "round_robin"
        health-check {{ interval-secs 1; timeout-secs 1; unhealthy-threshold 1; healthy-threshold 1; }}
    }}
}}
routes {{ route "all" {{ upstream "app"; }}; }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_in_the_proxys_zone_are_preferred_with_fall_over() {
    let near = Backend::start("near").await;
    let far = Backend::start("far").await;
    let port = free_port();
    let proxy = Sentinel::spawn_with_env(
        &zone_config(port, near.addr, far.addr),
        &[("SENTINEL_ZONE", "eu-west-1a")],
    );
    proxy.wait_ready().await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..10 {
        assert_eq!(
            c.get(&url).send().await.unwrap().text().await.unwrap(),
            "near"
        );
    }
    // The zone has no healthy target: traffic falls over to the other zone.
    near.set_health(500);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = c.get(&url).send().await.unwrap().text().await.unwrap();
        if body == "far" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never fell over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(proxy);
}
