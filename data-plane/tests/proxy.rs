//! The proxy end to end: the real binary, real sockets, real backends.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, Sentinel, client, config, free_port};

async fn get(c: &reqwest::Client, url: &str) -> reqwest::Response {
    c.get(url).send().await.unwrap()
}

/// Sends `n` GETs, returns hits per backend name (from the body).
async fn distribution(
    c: &reqwest::Client,
    url: &str,
    n: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for i in 0..n {
        let mut req = c.get(url);
        if let Some((h, v)) = &header {
            req = req.header(*h, format!("{v}{i}"));
        }
        let body = req.send().await.unwrap().text().await.unwrap();
        *out.entry(body).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_distributes_within_tolerance() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let c = client();
    for (alg, block) in [
        ("round_robin", ""),
        ("least_connections", ""),
        ("random", ""),
        ("p2c", ""),
        ("weighted", ""),
        ("consistent_hash", "{ key \"header:X-User\"; }"),
        ("ip_hash", ""),
    ] {
        let port = free_port();
        let cfg = config(
            port,
            &addrs,
            &format!("        load-balancing \"{alg}\" {block}\n"),
            "",
        );
        let proxy = Sentinel::start(&cfg).await;
        let url = format!("http://127.0.0.1:{port}/");
        match alg {
            "ip_hash" => {
                let d = distribution(&c, &url, 30, None).await;
                assert_eq!(d.len(), 1, "ip_hash sends one client to one target: {d:?}");
            }
            "consistent_hash" => {
                let d = distribution(&c, &url, 300, Some(("x-user", "user-".into()))).await;
                assert_eq!(d.len(), 3, "{d:?}");
                assert!(d.values().all(|v| *v > 50), "{alg}: {d:?}");
            }
            _ => {
                let d = distribution(&c, &url, 300, None).await;
                assert_eq!(d.len(), 3, "{alg}: {d:?}");
                let (lo, hi) = if matches!(alg, "random" | "p2c") {
                    (60, 140)
                } else {
                    (90, 110)
                };
                assert!(d.values().all(|v| *v >= lo && *v <= hi), "{alg}: {d:?}");
            }
        }
        drop(proxy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_per_key() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let port = free_port();
    let proxy = Sentinel::start(&config(
        port,
        &addrs,
        "load-balancing \"consistent_hash\" { key \"cookie:sid\"; }",
        "",
    ))
    .await;
    let c = client();
    for user in 0..20 {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let r = c
                .get(format!("http://127.0.0.1:{port}/"))
                .header("cookie", format!("a=1; sid=user{user}"))
                .send()
                .await
                .unwrap();
            seen.push(r.text().await.unwrap());
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "user{user} moved between targets");
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_weights() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let port = free_port();
    let cfg = format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{ listener "http" {{ address "127.0.0.1:{port}"; }}; }}
upstreams {{
    upstream "app" {{
        target "{}" weight=3
        target "{}" weight=1
        load-balancing "weighted"
    }}
}}
routes {{ route "all" {{ upstream "app"; }}; }}
"#,
        a.addr, b.addr
    );
    let proxy = Sentinel::start(&cfg).await;
    let d = distribution(&client(), &format!("http://127.0.0.1:{port}/"), 400, None).await;
    assert_eq!((d["a"], d["b"]), (300, 100));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_ejects_and_restores_within_thresholds() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let port = free_port();
    let hc = r#"
        health-check {
            type "http" { path "/health"; expected-status 200; }
            interval-secs 1
            timeout-secs 1
            healthy-threshold 2
            unhealthy-threshold 2
        }
        passive-health { enabled #false; }
    "#;
    let proxy = Sentinel::start(&config(port, &[a.addr, b.addr], hc, "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");

    b.set_health(500);
    let started = tokio::time::Instant::now();
    // Unhealthy after 2 failed checks: about 1-2 intervals.
    loop {
        let view = proxy.admin_json("/admin/upstreams/app/health").await;
        let healthy = view["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == b.addr.to_string())
            .unwrap()["healthy"]
            .as_bool()
            .unwrap();
        if !healthy {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "b never left rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left_after = started.elapsed();
    assert!(
        left_after >= Duration::from_millis(900),
        "left too early: {left_after:?} (threshold is 2 checks)"
    );
    let d = distribution(&c, &url, 20, None).await;
    assert_eq!(d.get("b"), None, "unhealthy target still served: {d:?}");
    assert!(proxy.metrics().await.contains(&format!(
        "sentinel_upstream_health{{upstream=\"app\",target=\"{}\"}} 0",
        b.addr
    )));

    b.set_health(200);
    let back = tokio::time::Instant::now();
    loop {
        let d = distribution(&c, &url, 4, None).await;
        if d.contains_key("b") {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(4), "b never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back.elapsed() >= Duration::from_millis(900),
        "rejoined before 2 good checks"
    );

    // POST /admin/upstreams/{name}/check runs a round now.
    let r = client()
        .post(format!("http://{}/admin/upstreams/app/check", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_ejects_a_failing_target() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.set_status(500);
    let port = free_port();
    let passive =
        "passive-health { consecutive-failures 3; ejection-secs 60; }\nretry { attempts 1; }";
    let proxy = Sentinel::start(&config(port, &[a.addr, b.addr], passive, "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let first = distribution(&c, &url, 10, None).await;
    assert!(first.get("b").copied().unwrap_or(0) >= 3, "{first:?}");
    let after = distribution(&c, &url, 20, None).await;
    assert_eq!(
        after.get("b"),
        None,
        "ejected target still served: {after:?}"
    );
    let view = proxy.admin_json("/admin/upstreams/app/health").await;
    let t = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == b.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(t["ejected"], true);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_half_opens_and_closes() {
    let a = Backend::start("a").await;
    a.set_status(503);
    let port = free_port();
    let extra = r#"
        circuit-breaker { failure-threshold 3; success-threshold 2; timeout-seconds 1; }
        passive-health { enabled #false; }
        retry { attempts 1; }
        all-unhealthy "fail-closed"
    "#;
    let proxy = Sentinel::start(&config(port, &[a.addr], extra, "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.status(), 503);
    }
    let state = |v: serde_json::Value| {
        v["targets"][0]["circuit_breaker"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        state(proxy.admin_json("/admin/upstreams/app/health").await),
        "open"
    );
    // Open: the proxy answers itself without touching the target.
    let hits = a.hits();
    let r = get(&c, &url).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no available target"));
    assert_eq!(a.hits(), hits);
    assert!(
        proxy
            .metrics()
            .await
            .contains("sentinel_circuit_breaker_trips_total")
    );

    a.set_status(200);
    // Poll until the open period is over: the first request let through
    // is the half-open probe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&c, &url).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "answers while open");
        assert!(tokio::time::Instant::now() < deadline, "never half-opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        state(proxy.admin_json("/admin/upstreams/app/health").await),
        "half-open"
    );
    assert_eq!(get(&c, &url).await.status(), 200);
    assert_eq!(
        state(proxy.admin_json("/admin/upstreams/app/health").await),
        "closed"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_idempotent_requests() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_status(503);
    let port = free_port();
    let extra = r#"
        retry { attempts 2; on-status 503; budget-percent 100; min-retries-per-second 1000; }
        passive-health { enabled #false; }
        load-balancing "round_robin"
    "#;
    let proxy = Sentinel::start(&config(port, &[a.addr, b.addr], extra, "")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..10 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET is retried on the other target");
    }
    let mut statuses = HashMap::new();
    for _ in 0..10 {
        let r = c.post(&url).body("payload").send().await.unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&503),
        Some(&5),
        "POST is never retried: {statuses:?}"
    );
    assert_eq!(a.methods.lock().unwrap().get("POST"), Some(&5));
    assert!(
        proxy
            .metrics()
            .await
            .contains("sentinel_upstream_retries_total{upstream=\"app\"}")
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_and_timeout_is_504() {
    let dead = format!("127.0.0.1:{}", free_port());
    let slow = Backend::start("slow").await;
    slow.delay_ms
        .store(2000, std::sync::atomic::Ordering::SeqCst);
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{ listener "http" {{ address "127.0.0.1:{port}"; }}; }}
upstreams {{
    upstream "dead" {{ target "{dead}"; }}
    upstream "slow" {{
        target "{}"
        timeouts {{ read-ms 300; }}
    }}
}}
routes {{
    route "dead" {{
        matches {{ path-prefix "/dead"; }}
        upstream "dead"
    }}
    route "slow" {{
        matches {{ path-prefix "/slow"; }}
        upstream "slow"
    }}
}}
"#,
        slow.addr
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let r = get(&c, &format!("http://127.0.0.1:{port}/dead")).await;
    assert_eq!(r.status(), 502);
    assert!(r.headers().contains_key("x-request-id"));
    let started = std::time::Instant::now();
    let r = get(&c, &format!("http://127.0.0.1:{port}/slow")).await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    let r = get(&c, &format!("http://127.0.0.1:{port}/nothing")).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no route matches"));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_priority_then_specificity() {
    let api = Backend::start("api").await;
    let users = Backend::start("users").await;
    let admin = Backend::start("admin").await;
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{ listener "http" {{ address "127.0.0.1:{port}"; }}; }}
upstreams {{
    upstream "api" {{ target "{}"; }}
    upstream "users" {{ target "{}"; }}
    upstream "admin" {{ target "{}"; }}
}}
routes {{
    route "api" {{
        matches {{ path-prefix "/api/"; }}
        upstream "api"
    }}
    route "users" {{
        matches {{ path-prefix "/api/users"; }}
        upstream "users"
    }}
    route "admin" {{
        priority "critical"
        matches {{ path-regex "^/api/.*/admin$"; }}
        upstream "admin"
    }}
    route "post-only" {{
        matches {{
            path-prefix "/api/"
            method "POST"
            header "X-Env" "canary"
        }}
        upstream "admin"
    }}
}}
"#,
        api.addr, users.addr, admin.addr
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let body = |p: &str| {
        let c = c.clone();
        let url = format!("http://127.0.0.1:{port}{p}");
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(body("/api/x").await, "api");
    assert_eq!(body("/api/users/1").await, "users");
    assert_eq!(body("/api/users/admin").await, "admin");
    let r = c
        .post(format!("http://127.0.0.1:{port}/api/x"))
        .header("x-env", "canary")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "admin");
    let routes = proxy.admin_json("/admin/routes").await;
    assert_eq!(routes["routes"][0]["name"], "admin");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let a = Backend::start("a").await;
    let port = free_port();
    let extra = "";
    let mut cfg = config(port, &[a.addr], extra, "");
    cfg = cfg.replace(
        "upstream \"app\"\n    }",
        "upstream \"app\"\n        policies { request-headers { set \"X-Env\" \"prod\"; remove \"X-Debug\"; }; response-headers { set \"X-Served-By\" \"sentinel\"; }; }\n    }",
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .header("x-request-id", "req-123")
        .header("x-debug", "1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");
    assert_eq!(r.headers()["x-served-by"], "sentinel");
    let h = a.last_headers.lock().unwrap().clone();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{port}"));
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["x-env"], "prod");
    assert!(!h.contains_key("x-debug"));
    assert!(
        !h.contains_key("x-hop"),
        "headers named in Connection are hop-by-hop"
    );
    // Generated when absent.
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_answers_429_with_headers() {
    let a = Backend::start("a").await;
    let port = free_port();
    let filters = r#"
filters {
    filter "limit" {
        type "rate-limit"
        max-rps 1
        burst 3
        key "header:X-Key"
    }
}
"#;
    let cfg = config(port, &[a.addr], "", filters).replace(
        "upstream \"app\"\n    }",
        "upstream \"app\"\n        filters \"limit\"\n    }",
    );
    let proxy = Sentinel::start(&cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for i in 0..3 {
        let r = c.get(&url).header("x-key", "k1").send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let r = c.get(&url).header("x-key", "k1").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert!(r.headers().contains_key("x-ratelimit-reset"));
    // Another key has its own bucket.
    assert_eq!(
        c.get(&url)
            .header("x-key", "k2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        proxy.metrics().await.contains(
            "sentinel_rate_limit_decisions_total{filter=\"limit\",decision=\"rejected\"} 1"
        )
    );
    drop(proxy);
}
