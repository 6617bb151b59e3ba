//! End-to-end fleet scenarios: the real control plane, proxies and backends
//! as processes, a throwaway PostgreSQL, and a relay that cuts a region off.
//! Convergence times are printed (`cargo test -- --nocapture` shows them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sentinel_tests::{
    ControlPlane, DemoBackend, Postgres, Proxy, Relay, http, wait_for, workspace_bin,
};
use serde_json::{Value, json};

fn bins() -> (PathBuf, PathBuf, PathBuf) {
    (
        workspace_bin("sentinel-cp"),
        workspace_bin("sentinel"),
        workspace_bin("sentinel-bench-backend"),
    )
}

fn config(version: u32, backend: SocketAddr, extra: &str) -> String {
    sentinel_tests::versioned_config(version, backend, extra)
}

async fn apply(cp: &ControlPlane, source: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": source, "message": "scenario" }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn api(cp: &ControlPlane, method: &str, path: &str) -> Value {
    http()
        .request(method.parse().unwrap(), format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn served(p: &Proxy) -> Option<String> {
    let r = http()
        .get(format!("http://{}/", p.http))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.headers()
        .get("x-config")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Waits until every proxy serves `version`; returns how long it took.
async fn converge(proxies: &[&Proxy], version: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    for p in proxies {
        let ok = wait_for(timeout, || async {
            served(p).await.as_deref() == Some(version)
        })
        .await;
        assert!(
            ok,
            "{} never served {version} (serves {:?})\n{}",
            p.name,
            served(p).await,
            p.logs()
        );
    }
    started.elapsed()
}

async fn admin_config(p: &Proxy) -> Value {
    http()
        .get(format!("http://{}/admin/config", p.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_rollback_reach_every_proxy_in_every_region() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let urls = [cp.grpc_url()];
    let p1 = Proxy::start(&proxy_bin, "eu-1", "eu", &urls, &[]);
    let p2 = Proxy::start(&proxy_bin, "eu-2", "eu", &urls, &[]);
    let p3 = Proxy::start(&proxy_bin, "us-1", "us", &urls, &[]);
    let all = [&p1, &p2, &p3];
    assert_eq!(apply(&cp, &config(1, backend.addr, "")).await.0, 201);
    let t1 = converge(&all, "v1", Duration::from_secs(15)).await;
    assert_eq!(admin_config(&p3).await["version"]["number"], 1);
    assert_eq!(
        admin_config(&p3).await["version"]["origin"]["kind"],
        "control_plane"
    );
    assert_eq!(apply(&cp, &config(2, backend.addr, "")).await.0, 201);
    let t2 = converge(&all, "v2", Duration::from_secs(10)).await;
    let rolled = api(&cp, "POST", "/v1/rollback").await;
    assert_eq!(
        (rolled["from"].clone(), rolled["to"].clone()),
        (json!(2), json!(1))
    );
    let t3 = converge(&all, "v1", Duration::from_secs(10)).await;
    assert_eq!(admin_config(&p1).await["version"]["number"], 1);
    println!(
        "convergence, 3 proxies in 2 regions: first apply {t1:?}, apply {t2:?}, rollback {t3:?}"
    );
    let nodes = api(&cp, "GET", "/v1/nodes").await;
    let acked: Vec<i64> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["acked_version"].as_i64().unwrap_or(0))
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || async {
            let n = api(&cp, "GET", "/v1/status").await;
            n["regions"]["eu"]["on_active"] == 2 && n["regions"]["us"]["on_active"] == 1
        })
        .await,
        "status does not show the fleet on the active version: {acked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cannot_apply_nacks_and_keeps_serving() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let urls = [cp.grpc_url()];
    let good = Proxy::start(&proxy_bin, "good", "eu", &urls, &[]);
    let bad = Proxy::start(
        &proxy_bin,
        "bad",
        "eu",
        &urls,
        &[("EXTRA_ADDR", taken_addr.as_str())],
    );
    apply(&cp, &config(1, backend.addr, "")).await;
    converge(&[&good, &bad], "v1", Duration::from_secs(15)).await;
    let extra = "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }";
    apply(&cp, &config(2, backend.addr, extra)).await;
    converge(&[&good], "v2", Duration::from_secs(10)).await;
    let nacked = wait_for(Duration::from_secs(10), || async {
        let nodes = api(&cp, "GET", "/v1/nodes").await;
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "bad" && n["last_nack"]["version"] == 2)
    })
    .await;
    assert!(nacked, "{}", bad.logs());
    let nodes = api(&cp, "GET", "/v1/nodes").await;
    let n = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "bad")
        .unwrap()
        .clone();
    assert_eq!(n["last_nack"]["resource"], "listener \"extra\"");
    assert!(
        n["last_nack"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot bind"),
        "{n}"
    );
    assert_eq!(n["acked_version"], 1);
    assert_eq!(
        served(&bad).await.as_deref(),
        Some("v1"),
        "the NACKing proxy keeps its last good config"
    );
    let status = api(&cp, "GET", "/v1/status").await;
    assert_eq!(status["nacks"][0]["node"], "bad");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_traffic_continues_and_the_fleet_reconverges() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let mut cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let urls = [cp.grpc_url()];
    let p1 = Proxy::start(&proxy_bin, "p1", "eu", &urls, &[]);
    let p2 = Proxy::start(&proxy_bin, "p2", "us", &urls, &[]);
    apply(&cp, &config(1, backend.addr, "")).await;
    converge(&[&p1, &p2], "v1", Duration::from_secs(15)).await;
    cp.kill();
    for _ in 0..20 {
        assert_eq!(served(&p1).await.as_deref(), Some("v1"));
        assert_eq!(served(&p2).await.as_deref(), Some("v1"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cp.restart().await;
    apply(&cp, &config(2, backend.addr, "")).await;
    let t = converge(&[&p1, &p2], "v2", Duration::from_secs(20)).await;
    println!("reconvergence after a control-plane restart: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_from_its_cache() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let mut cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let mut p = Proxy::start(&proxy_bin, "cached", "eu", &[cp.grpc_url()], &[]);
    apply(&cp, &config(1, backend.addr, "")).await;
    converge(&[&p], "v1", Duration::from_secs(15)).await;
    // Serving v1 means swapped; the proxy writes the cache after the swap
    // and ACKs after the cache: wait for the ACK before pulling the plug.
    let acked = wait_for(Duration::from_secs(10), || async {
        api(&cp, "GET", "/v1/nodes").await["nodes"][0]["acked_version"] == 1
    })
    .await;
    assert!(acked, "v1 never ACKed\n{}", p.logs());
    cp.kill();
    p.restart();
    converge(&[&p], "v1", Duration::from_secs(10)).await;
    let c = admin_config(&p).await;
    assert_eq!(c["version"]["origin"]["kind"], "cache", "{c}");
    let ready = http()
        .get(format!("http://{}/ready", p.admin))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200);
    assert!(
        p.logs()
            .contains("serving the last-good configuration from the cache")
    );

    // A corrupt cache is detected and never applied.
    let file = p.cache_dir.join("last-good.snapshot");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    p.restart();
    let refused = wait_for(Duration::from_secs(10), || async {
        p.logs().contains("checksum mismatch")
    })
    .await;
    assert!(refused, "{}", p.logs());
    assert!(
        served(&p).await.is_none(),
        "a corrupt cache must not be served"
    );
    let ready = http()
        .get(format!("http://{}/ready", p.admin))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503);
    // The control plane comes back: the proxy converges.
    cp.restart().await;
    converge(&[&p], "v1", Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_apply_answers_503_and_traffic_continues() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let mut pg = Postgres::start();
    let cp = ControlPlane::start(&cp_bin, &pg.url(), &[]).await;
    let p = Proxy::start(&proxy_bin, "p", "eu", &[cp.grpc_url()], &[]);
    apply(&cp, &config(1, backend.addr, "")).await;
    converge(&[&p], "v1", Duration::from_secs(15)).await;
    pg.stop();
    let (status, body) = apply(&cp, &config(2, backend.addr, "")).await;
    assert_eq!(status, 503, "{body}");
    for _ in 0..10 {
        assert_eq!(served(&p).await.as_deref(), Some("v1"));
    }
    pg.restart();
    let ok = wait_for(Duration::from_secs(15), || async {
        apply(&cp, &config(2, backend.addr, "")).await.0 == 201
    })
    .await;
    assert!(ok, "{}", cp.logs());
    converge(&[&p], "v2", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_keeps_serving_and_converges_when_healed() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &["--keepalive-secs", "1"]).await;
    let relay = Relay::start(cp.grpc).await;
    let eu = Proxy::start(&proxy_bin, "eu-1", "eu", &[cp.grpc_url()], &[]);
    let us = Proxy::start(&proxy_bin, "us-1", "us", &[relay.url()], &[]);
    relay.set_latency(20);
    apply(&cp, &config(1, backend.addr, "")).await;
    converge(&[&eu, &us], "v1", Duration::from_secs(15)).await;
    relay.cut();
    apply(&cp, &config(2, backend.addr, "")).await;
    converge(&[&eu], "v2", Duration::from_secs(10)).await;
    for _ in 0..10 {
        assert_eq!(
            served(&us).await.as_deref(),
            Some("v1"),
            "the cut-off region keeps its last config"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.heal();
    let t = converge(&[&us], "v2", Duration::from_secs(30)).await;
    println!("convergence of a region after the partition healed: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_proxies_split_across_them_converge_on_one_apply() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let pg = Postgres::start();
    let a = ControlPlane::start(&cp_bin, &pg.url(), &["--replica", "a"]).await;
    let b = ControlPlane::start(&cp_bin, &pg.url(), &["--replica", "b"]).await;
    let pa = Proxy::start(&proxy_bin, "on-a", "eu", &[a.grpc_url()], &[]);
    let pb = Proxy::start(&proxy_bin, "on-b", "us", &[b.grpc_url()], &[]);
    apply(&a, &config(1, backend.addr, "")).await;
    converge(&[&pa, &pb], "v1", Duration::from_secs(15)).await;
    apply(&b, &config(2, backend.addr, "")).await;
    let t = converge(&[&pa, &pb], "v2", Duration::from_secs(10)).await;
    println!("two replicas, one apply: converged in {t:?}");
    let history = api(&a, "GET", "/v1/activations").await;
    assert_eq!(
        history["activations"].as_array().unwrap().len(),
        2,
        "one activation per apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_applies_under_load_fail_no_request() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let urls = [cp.grpc_url()];
    let p1 = Proxy::start(&proxy_bin, "p1", "eu", &urls, &[]);
    let p2 = Proxy::start(&proxy_bin, "p2", "us", &urls, &[]);
    apply(&cp, &config(0, backend.addr, "")).await;
    converge(&[&p1, &p2], "v0", Duration::from_secs(15)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for addr in [p1.http, p2.http, p1.http, p2.http] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = http();
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match c.get(format!("http://{addr}/")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    for v in 1..=200 {
        assert_eq!(apply(&cp, &config(v, backend.addr, "")).await.0, 201);
    }
    let t = converge(&[&p1, &p2], "v200", Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    println!(
        "200 applies in {:?}, last converged {t:?} after; {} requests served, {} failed",
        started.elapsed(),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 200);
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_fail_over_across_control_plane_urls_and_report_health() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &["--health-quorum-percent", "50"]).await;
    let dead = format!("http://127.0.0.1:{}", sentinel_tests::free_port());
    let urls = [dead, cp.grpc_url()];
    let p1 = Proxy::start(&proxy_bin, "p1", "eu", &urls, &[]);
    let p2 = Proxy::start(&proxy_bin, "p2", "us", &urls, &[]);
    let dead_target = format!("127.0.0.1:{}", sentinel_tests::free_port());
    let checked = config(1, backend.addr, "").replace(
        &format!("upstream \"web\" {{ target \"{}\"; }};", backend.addr),
        &format!(
            "upstream \"web\" {{ target \"{}\"; target \"{dead_target}\"; health-check {{ type \"tcp\"; interval-secs 1; timeout-secs 1; unhealthy-threshold 1; }}; }};",
            backend.addr
        ),
    );
    assert_eq!(apply(&cp, &checked).await.0, 201, "{checked}");
    converge(&[&p1, &p2], "v1", Duration::from_secs(20)).await;
    let aggregated = wait_for(Duration::from_secs(15), || async {
        let h = api(&cp, "GET", "/v1/health").await;
        let targets = h["upstreams"]["web"].as_array().cloned().unwrap_or_default();
        let dead = targets.iter().find(|t| t["target"] == dead_target.as_str());
        let live = targets.iter().find(|t| t["target"] == backend.addr.to_string().as_str());
        matches!((dead, live), (Some(d), Some(l))
            if d["healthy"] == false && d["unhealthy_reports"] == 2 && l["healthy"] == true && l["reporting"] == 2)
    })
    .await;
    assert!(aggregated, "{}", api(&cp, "GET", "/v1/health").await);
}
