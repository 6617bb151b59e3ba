//! The observability kit against the real thing: a control plane, three
//! proxies in two regions, a backend and Redis as processes, scraped by the
//! real Prometheus (`/usr/bin/prometheus`, Debian's `prometheus` package)
//! with `deploy/observability/prometheus/alerts.yml` loaded. Every
//! expression of the Grafana dashboard must return data (no empty panel),
//! every alert rule must evaluate, and the metrics the dashboard and the
//! alerts are built on must carry the values the fleet's state implies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sentinel_tests::redis::RedisServer;
use sentinel_tests::{
    ControlPlane, DemoBackend, Postgres, Proxy, free_port, http, loopback, wait_for, workspace_bin,
};
use serde_json::{Value, json};

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A Prometheus server on a loopback port with its own temporary storage;
/// killed on drop (its log printed when the test failed).
struct Prometheus {
    addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(config: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("sentinel-prometheus-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let addr = loopback(free_port());
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`; scripts/ensure-deps)");
        let p = Prometheus {
            addr,
            child: Some(child),
            dir,
        };
        let ready = wait_for(Duration::from_secs(30), || async {
            http()
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "prometheus did not start:\n{}", p.logs());
        p
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Value {
        match http()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// `/api/v1/query`: the result vector (empty on any error).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let v = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}\n---- end ----", self.logs());
        }
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables as a dashboard user with "All" regions sees them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${region}", ".*")
        .replace("$region", ".*")
}

/// Every (panel title, expr) of the dashboard.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = repo().join("deploy/observability/grafana/sentinel-fleet.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    let mut panels: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    out
}

fn config(backend: SocketAddr, redis: &str, dead: u16, extra: &str) -> String {
    format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{
    listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}
{extra}
}}
upstreams {{
    upstream "web" {{ target "{backend}"; }}
    upstream "dead" {{ target "127.0.0.1:{dead}"; }}
}}
filters {{
    filter "limited" {{
        type "rate-limit"; max-rps 1000; burst 1000; key "header:x-client"
        backend "redis"; redis-url "{redis}"; redis-timeout-ms 500
        fallback-to-local #true
    }}
}}
routes {{
    route "dead" {{ matches {{ path-prefix "/dead"; }}; upstream "dead"; }}
    route "all" {{ upstream "web"; filters "limited"; }}
}}
"#
    )
}

async fn apply(cp: &ControlPlane, source: &str) -> u16 {
    http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": source, "message": "observability" }))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn version_of(p: &Proxy) -> i64 {
    let v: Value = match http()
        .get(format!("http://{}/admin/config", p.admin))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    v["version"]["number"].as_i64().unwrap_or(0)
}

async fn scrape(url: &str) -> String {
    match http().get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series `name{labels}` (labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_fleet_and_every_dashboard_panel_and_alert_has_data() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: scripts/ensure-deps installs the Debian package `prometheus`"
    );
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let redis = RedisServer::start().await;
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let urls = [cp.grpc_url()];
    let proxy_bin = workspace_bin("sentinel");
    // eu-2 cannot bind the second version's extra listener: it NACKs it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let taken_addr = taken.local_addr().expect("its address").to_string();
    let eu1 = Proxy::start(&proxy_bin, "eu-1", "eu", &urls, &[]);
    let eu2 = Proxy::start(
        &proxy_bin,
        "eu-2",
        "eu",
        &urls,
        &[("EXTRA_ADDR", taken_addr.as_str())],
    );
    let us1 = Proxy::start(&proxy_bin, "us-1", "us", &urls, &[]);
    let all = [&eu1, &eu2, &us1];
    let dead = free_port();

    assert_eq!(
        apply(&cp, &config(backend.addr, &redis.url(), dead, "")).await,
        201
    );
    for p in all {
        let on = wait_for(Duration::from_secs(20), || async {
            version_of(p).await == 1
        })
        .await;
        assert!(on, "{} never ran version 1\n{}", p.name, p.logs());
    }
    // Prometheus, configured as an operator would (deploy/observability/
    // prometheus/prometheus.yml): the proxies' region as a target label
    // until they report it themselves (honor_labels keeps theirs then).
    let admin = |p: &Proxy| format!("\"{}\"", p.admin);
    let rules = repo().join("deploy/observability/prometheus/alerts.yml");
    let prom_config = format!(
        r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - "{rules}"
scrape_configs:
  - job_name: sentinel-cp
    static_configs:
      - targets: ["{cp}"]
  - job_name: sentinel
    honor_labels: true
    static_configs:
      - targets: [{eu1}, {eu2}]
        labels:
          region: eu
      - targets: [{us1}]
        labels:
          region: us
"#,
        rules = rules.display(),
        cp = cp.api,
        eu1 = admin(&eu1),
        eu2 = admin(&eu2),
        us1 = admin(&us1),
    );
    let prom = Prometheus::start(&prom_config).await;

    let up = wait_for(Duration::from_secs(30), || async {
        prom.query("up == 1").await.len() == 4
    })
    .await;
    assert!(
        up,
        "not every target is up: {:?}",
        prom.get("/api/v1/targets").await
    );
    // The NACK counter exists (at 0) before the NACK, so `increase` sees it.
    let zero = wait_for(Duration::from_secs(30), || async {
        prom.query("sentinel_cp_nacks_total == 0").await.len() == 1
    })
    .await;
    assert!(zero, "sentinel_cp_nacks_total is not scraped at 0");

    let extra = "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }";
    assert_eq!(
        apply(&cp, &config(backend.addr, &redis.url(), dead, extra)).await,
        201
    );
    for p in [&eu1, &us1] {
        let on = wait_for(Duration::from_secs(20), || async {
            version_of(p).await == 2
        })
        .await;
        assert!(on, "{} never ran version 2\n{}", p.name, p.logs());
    }

    // Traffic: through the Redis filter to the backend, and to an upstream
    // whose only target refuses connections.
    let client = http();
    for p in all {
        for i in 0..20 {
            let r = client
                .get(format!("http://{}/item/{i}", p.http))
                .header("x-client", format!("client-{i}"))
                .send()
                .await
                .expect("the proxy answers");
            assert_eq!(r.status(), 200, "{}", p.logs());
        }
        for i in 0..3 {
            let r = client
                .get(format!("http://{}/dead/{i}", p.http))
                .send()
                .await
                .expect("the proxy answers");
            assert!(r.status().is_server_error(), "{}", r.status());
        }
    }

    // The metrics themselves, before Prometheus: per-upstream RED on a
    // proxy, push → ACK per region and nodes behind on the control plane.
    let raw = scrape(&format!("http://{}/metrics", us1.admin)).await;
    // Every proxy series, and the one build-info series, names its proxy.
    for line in raw.lines().filter(|l| l.starts_with("sentinel_")) {
        assert!(
            line.contains(r#"node="us-1",region="us",zone="us-a""#),
            "{line}"
        );
    }
    assert_eq!(
        raw.lines()
            .filter(|l| l.starts_with("sentinel_build_info{"))
            .count(),
        1,
        "{raw}"
    );
    let m = sentinel_tests::without_instance_labels(&raw);
    assert_eq!(
        sample(
            &m,
            r#"sentinel_upstream_requests_total{upstream="web",status="200"}"#
        ),
        Some(20.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            r#"sentinel_upstream_requests_total{upstream="dead",status="error"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            r#"sentinel_upstream_request_duration_seconds_count{upstream="web"}"#
        ) == Some(20.0),
        "{m}"
    );
    let cp_metrics = format!("{}/metrics", cp.url());
    let behind_ok = wait_for(Duration::from_secs(20), || async {
        let m = scrape(&cp_metrics).await;
        sample(&m, r#"sentinel_cp_nodes_behind{region="eu"}"#) == Some(1.0)
            && sample(&m, r#"sentinel_cp_nodes_behind{region="us"}"#) == Some(0.0)
            && sample(&m, "sentinel_cp_store_up") == Some(1.0)
    })
    .await;
    let m = scrape(&cp_metrics).await;
    assert!(
        behind_ok,
        "eu-2 NACKed: one node behind in eu, none in us\n{m}"
    );
    // Version 1 was pushed to and ACKed by all three; version 2 by eu-1 and us-1.
    assert_eq!(
        sample(&m, r#"sentinel_cp_push_to_ack_seconds_count{region="eu"}"#),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"sentinel_cp_push_to_ack_seconds_count{region="us"}"#),
        Some(2.0),
        "{m}"
    );

    // The dashboard's region variable lists both regions.
    let regions_ok = wait_for(Duration::from_secs(30), || async {
        let v = prom
            .get(&format!(
                "/api/v1/label/region/values?match%5B%5D={}",
                encode("sentinel_build_info")
            ))
            .await;
        v["data"] == json!(["eu", "us"])
    })
    .await;
    assert!(regions_ok, "label_values(sentinel_build_info, region)");

    // Every panel's every expression returns data.
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "only {} expressions found", exprs.len());
    let mut empty: Vec<(String, String)> = exprs
        .iter()
        .map(|(t, e)| (t.clone(), substitute(e)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !empty.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for (title, expr) in empty {
            if prom.query(&expr).await.is_empty() {
                still.push((title, expr));
            }
        }
        empty = still;
        if !empty.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard panels without data:\n{}",
        empty
            .iter()
            .map(|(t, e)| format!("  {t}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A few panels' values, as the fleet's state implies them.
    let versions = prom
        .query("count by (region, config_version) (sentinel_build_info)")
        .await;
    assert_eq!(
        versions.len(),
        3,
        "eu runs two versions, us one: {versions:?}"
    );
    let behind = prom
        .query(r#"sum by (region) (sentinel_cp_nodes_behind{region="eu"})"#)
        .await;
    assert_eq!(
        behind.first().map(|b| b["value"][1].clone()),
        Some(json!("1")),
        "{behind:?}"
    );

    // The alert rules load and evaluate; the NACK alert fires (it has no
    // `for`), the instance-down alert does not.
    let expected = [
        "SentinelInstanceDown",
        "SentinelHigh5xxRate",
        "SentinelHighP95Latency",
        "SentinelConfigNacks",
        "SentinelNodesBehind",
        "SentinelCpDatabaseUnavailable",
        "SentinelRateLimitBackendDown",
    ];
    let rules_ok = |v: &Value| {
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        expected.iter().all(|n| names.contains(n))
            && rules.len() == expected.len()
            && rules.iter().all(|r| r["health"] == "ok")
    };
    let healthy = wait_for(Duration::from_secs(30), || async {
        rules_ok(&prom.get("/api/v1/rules").await)
    })
    .await;
    let last = prom.get("/api/v1/rules").await;
    assert!(healthy, "alert rules not all loaded and healthy: {last}");
    let firing = wait_for(Duration::from_secs(30), || async {
        let v = prom.get("/api/v1/alerts").await;
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["labels"]["alertname"] == "SentinelConfigNacks" && a["state"] == "firing"
            })
        })
    })
    .await;
    assert!(
        firing,
        "SentinelConfigNacks: {}",
        prom.get("/api/v1/alerts").await
    );
    let alerts = prom.get("/api/v1/alerts").await;
    assert!(
        !alerts.to_string().contains("SentinelInstanceDown"),
        "every instance is up: {alerts}"
    );

    // A proxy that reconnects already running the active version is
    // current at its hello: an ACK, but no push, so no push → ACK sample.
    let acks = |m: &str| sample(m, "sentinel_cp_acks_total");
    let before = acks(&scrape(&cp_metrics).await).unwrap_or(0.0);
    let mut us1 = us1;
    us1.restart();
    let reacked = wait_for(Duration::from_secs(20), || async {
        acks(&scrape(&cp_metrics).await) == Some(before + 1.0)
    })
    .await;
    let m = scrape(&cp_metrics).await;
    assert!(
        reacked,
        "us-1's hello counts as an ACK\n{m}\n{}",
        us1.logs()
    );
    assert_eq!(
        sample(&m, r#"sentinel_cp_push_to_ack_seconds_count{region="us"}"#),
        Some(2.0),
        "{m}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_up_follows_the_database() {
    let mut pg = Postgres::start();
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), &pg.url(), &[]).await;
    let url = format!("{}/metrics", cp.url());
    let store_up = || async { sample(&scrape(&url).await, "sentinel_cp_store_up") };
    assert!(
        wait_for(Duration::from_secs(10), || async {
            store_up().await == Some(1.0)
        })
        .await,
        "{}",
        scrape(&url).await
    );
    pg.stop();
    assert!(
        wait_for(Duration::from_secs(15), || async {
            store_up().await == Some(0.0)
        })
        .await,
        "the database is down: {}",
        scrape(&url).await
    );
    pg.restart();
    assert!(
        wait_for(Duration::from_secs(20), || async {
            store_up().await == Some(1.0)
        })
        .await,
        "the database is back: {}",
        scrape(&url).await
    );
}
