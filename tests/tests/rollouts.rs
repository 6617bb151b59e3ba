//! Staged rollouts end to end: the real control plane, six real proxies in
//! three regions (eu, us, ap), a real backend, and `sentinelctl`.
//!
//! What is proved: a config that NACKs in the canary fails at the `ack`
//! gate and never reaches a proxy outside the canary (every proxy's
//! `/admin/config` history says so); a config that routes to a dead
//! upstream fails the `error-rate` gate within seconds and its canary
//! returns to the previous version; a good config passes three stages with
//! a 1 s bake (`apply --wait` prints each stage); a control plane killed
//! mid-rollout (SQLite) or a driving replica killed (PostgreSQL) resumes
//! from the store, and no proxy ever runs a version its stage does not
//! allow; pause, resume, promote, abort and rollback from the CLI; a
//! second apply during a rollout is a 409 naming it. Figures are printed
//! (`-- --nocapture`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sentinel_tests::{
    ControlPlane, DemoBackend, Postgres, Proxy, free_port, http, wait_for, workspace_bin,
    write_file,
};
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

struct Fleet {
    proxies: Vec<Proxy>,
}

impl Fleet {
    /// Two proxies per region; `env(name)` adds environment to a proxy.
    fn start(urls: &[String], env: impl Fn(&str) -> Vec<(String, String)>) -> Fleet {
        let bin = workspace_bin("sentinel");
        let mut proxies = Vec::new();
        for region in REGIONS {
            for i in 1..=2 {
                let name = format!("{region}-{i}");
                let e = env(&name);
                let e: Vec<(&str, &str)> =
                    e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                proxies.push(Proxy::start(&bin, &name, region, urls, &e));
            }
        }
        Fleet { proxies }
    }

    fn get(&self, name: &str) -> &Proxy {
        self.proxies.iter().find(|p| p.name == name).unwrap()
    }
}

async fn admin_config(p: &Proxy) -> Value {
    match http()
        .get(format!("http://{}/admin/config", p.admin))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The version numbers a proxy ever went live with, oldest first.
async fn history(p: &Proxy) -> Vec<i64> {
    admin_config(p).await["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|v| v["number"].as_i64()).collect())
        .unwrap_or_default()
}

async fn running(p: &Proxy) -> Option<i64> {
    admin_config(p).await["version"]["number"].as_i64()
}

async fn converge(proxies: &[&Proxy], number: i64, timeout: Duration) {
    for p in proxies {
        let ok = wait_for(timeout, || async { running(p).await == Some(number) }).await;
        assert!(
            ok,
            "{} never ran v{number} (runs {:?})\n{}",
            p.name,
            running(p).await,
            p.logs()
        );
    }
}

async fn api(cp: &ControlPlane, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http()
        .request(method.parse().unwrap(), format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn apply(cp: &ControlPlane, source: &str, rollout: Option<Value>) -> (u16, Value) {
    let mut body = json!({ "source": source, "message": "scenario" });
    if let Some(r) = rollout {
        body["rollout"] = r;
    }
    api(cp, "POST", "/v1/configs", Some(body)).await
}

async fn rollout(cp: &ControlPlane, id: i64) -> Value {
    api(cp, "GET", &format!("/v1/rollouts/{id}"), None).await.1
}

async fn wait_state(cp: &ControlPlane, id: i64, state: &str, timeout: Duration) -> Value {
    let ok = wait_for(timeout, || async {
        rollout(cp, id).await["rollout"]["state"] == state
    })
    .await;
    let last = rollout(cp, id).await;
    assert!(
        ok,
        "rollout {id} never became {state}: {last:#}\n{}",
        cp.logs()
    );
    last
}

fn config(version: u32, backend: SocketAddr, extra: &str) -> String {
    sentinel_tests::versioned_config(version, backend, extra)
}

/// A config whose only route goes to an upstream nobody listens on.
fn dead_config(version: u32) -> String {
    let dead = format!("127.0.0.1:{}", free_port());
    config(version, dead.parse().unwrap(), "")
}

/// Sends requests to every proxy until dropped (the gates judge traffic).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Traffic {
    fn start(addrs: Vec<SocketAddr>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        for addr in addrs {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            tokio::spawn(async move {
                let client = http();
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.get(format!("http://{addr}/")).send().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        Traffic { stop, sent }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn admitted(detail: &Value) -> BTreeSet<String> {
    detail["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_in_the_canary_fails_the_rollout_and_nobody_else_receives_it() {
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    // eu-1 cannot bind the extra listener; eu-2 can (port 0).
    let fleet = Fleet::start(&[cp.grpc_url()], |name| {
        if name == "eu-1" {
            vec![("EXTRA_ADDR".into(), taken_addr.clone())]
        } else {
            vec![]
        }
    });
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&cp, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let extra = "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }";
    let started = Instant::now();
    let (status, created) = apply(
        &cp,
        &config(2, backend.addr, extra),
        Some(json!({"stages": [{"select": "eu"}, {"select": "*"}], "bake_ms": 1000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"].as_i64().unwrap();
    let failed = wait_state(&cp, id, "failed", Duration::from_secs(20)).await;
    let detected = started.elapsed();
    assert_eq!(failed["rollout"]["failed_gate"], "ack", "{failed:#}");
    assert_eq!(failed["rollout"]["failed_node"], "eu-1", "{failed:#}");
    let reason = failed["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("eu-1") && reason.contains("cannot bind"),
        "{reason}"
    );
    assert_eq!(
        admitted(&failed),
        BTreeSet::from(["eu-1".to_string(), "eu-2".to_string()])
    );
    // The canary returns to v1; the version never became active.
    converge(&all, 1, Duration::from_secs(10)).await;
    let back = started.elapsed();
    let (_, active) = api(&cp, "GET", "/v1/configs/active", None).await;
    assert_eq!(active["version"]["number"], 1);
    for p in &fleet.proxies {
        let h = history(p).await;
        if p.name.starts_with("eu-") {
            assert!(!h.contains(&2) || p.name == "eu-2", "{}: {h:?}", p.name);
        } else {
            assert!(
                !h.contains(&2),
                "{} outside the canary ran v2: {h:?}",
                p.name
            );
        }
        assert_eq!(h.last(), Some(&1), "{}: {h:?}", p.name);
    }
    // No proxy outside the canary ever NACKed (nor was offered) v2.
    let (_, nodes) = api(&cp, "GET", "/v1/nodes", None).await;
    for n in nodes["nodes"].as_array().unwrap() {
        if !n["id"].as_str().unwrap().starts_with("eu-") {
            assert!(n["last_nack"].is_null(), "{n}");
        }
    }
    println!(
        "NACK in the canary: rollout failed after {detected:?}, canary back on v1 after {back:?}"
    );

    // `apply --wait` exits 1 naming the gate (and the node).
    let dir = tempfile::tempdir().unwrap();
    let v3 = write_file(dir.path(), "v3.kdl", &config(3, backend.addr, extra));
    let (code, out, err) = cp.ctl(&[
        "apply",
        v3.to_str().unwrap(),
        "--canary",
        "eu",
        "--bake",
        "1s",
        "--wait=30s",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("failed at the `ack` gate (node eu-1)") && err.contains("cannot bind"),
        "{err}"
    );
    let (code, out, _) = cp.ctl(&["rollout", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("failed") && out.contains("eu-1"), "{out}");
    converge(&all, 1, Duration::from_secs(10)).await;
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_surge_fails_the_error_rate_gate_and_the_canary_rolls_back() {
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let fleet = Fleet::start(&[cp.grpc_url()], |_| vec![]);
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&cp, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let traffic = Traffic::start(fleet.proxies.iter().map(|p| p.http).collect());
    // A baseline: let a couple of health reports with traffic arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let (status, created) = apply(
        &cp,
        &dead_config(2),
        Some(
            json!({"stages": [{"select": "canary:1"}, {"select": "*"}], "bake_ms": 30000,
                    "gates": {"min_requests": 10}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"].as_i64().unwrap();
    let failed = wait_state(&cp, id, "failed", Duration::from_secs(20)).await;
    let detected = started.elapsed();
    assert_eq!(failed["rollout"]["failed_gate"], "error-rate", "{failed:#}");
    let canary: Vec<String> = admitted(&failed).into_iter().collect();
    assert_eq!(canary.len(), 1);
    assert_eq!(failed["rollout"]["failed_node"], canary[0].as_str());
    converge(&all, 1, Duration::from_secs(10)).await;
    let rolled_back = started.elapsed();
    for p in &fleet.proxies {
        let h = history(p).await;
        if p.name == canary[0] {
            assert!(h.contains(&2), "the canary ran v2: {h:?}");
        } else {
            assert!(
                !h.contains(&2),
                "{} outside the canary ran v2: {h:?}",
                p.name
            );
        }
        assert_eq!(h.last(), Some(&1));
    }
    assert_eq!(fleet.get(&canary[0]).served().await.as_deref(), Some("v1"));
    assert!(
        detected < Duration::from_secs(10),
        "the error-rate gate took {detected:?}"
    );
    println!(
        "5xx surge in the canary: error-rate gate failed after {detected:?}, canary back on v1 after {rolled_back:?} \
         ({} requests sent)\n  reason: {}",
        traffic.sent.load(Ordering::Relaxed),
        failed["rollout"]["reason"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_config_reaches_the_fleet_in_three_stages_with_wait_showing_each() {
    let dir = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let fleet = Fleet::start(&[cp.grpc_url()], |_| vec![]);
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&cp, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let v2 = write_file(dir.path(), "v2.kdl", &config(2, backend.addr, ""));
    let started = Instant::now();
    // Measures when the whole fleet runs v2, beside the CLI.
    let admins: Vec<SocketAddr> = fleet.proxies.iter().map(|p| p.admin).collect();
    let whole_fleet = tokio::spawn(async move {
        let client = http();
        loop {
            let mut all_on = true;
            for a in &admins {
                let v: Value = match client.get(format!("http://{a}/admin/config")).send().await {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                all_on &= v["version"]["number"] == 2;
            }
            if all_on || started.elapsed() > Duration::from_secs(60) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (url, token, file) = (cp.url(), cp.token.clone(), v2.display().to_string());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let out = Command::new(workspace_bin("sentinelctl"))
            .args(["--server", &url, "--token", &token])
            .args([
                "apply",
                &file,
                "--stages",
                "canary:1,eu,*",
                "--bake",
                "1s",
                "--wait=60s",
            ])
            .env("SENTINELCTL_CONFIG", "/nonexistent")
            .env_remove("SENTINEL_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let reached = whole_fleet.await.unwrap();
    assert_eq!(code, 0, "{out}\n{err}\n{}", cp.logs());
    for stage in [
        "stage 1/3 (canary:1)",
        "stage 2/3 (eu)",
        "stage 3/3 (*)",
        "completed",
    ] {
        assert!(err.contains(stage), "`{stage}` missing from:\n{err}");
    }
    converge(&all, 2, Duration::from_secs(5)).await;
    let (_, list) = api(&cp, "GET", "/v1/rollouts", None).await;
    let id = list["rollouts"][0]["id"].as_i64().unwrap();
    let d = rollout(&cp, id).await;
    let took = d["rollout"]["updated_at_unix_ms"].as_i64().unwrap()
        - d["rollout"]["created_at_unix_ms"].as_i64().unwrap();
    assert_eq!(admitted(&d).len(), 6);
    let (_, active) = api(&cp, "GET", "/v1/configs/active", None).await;
    assert_eq!(active["version"]["number"], 2);
    println!(
        "good config, 3 stages (canary:1, eu, *), 1 s bake, 6 proxies: whole fleet on v2 after {reached:?}, \
         rollout completed (v2 active) in {took} ms, apply --wait returned after {elapsed:?}\n{err}"
    );
    // Stage metrics are exported.
    let metrics = http()
        .get(format!("{}/metrics", cp.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "sentinel_cp_rollout_stage",
        "sentinel_cp_rollout_gate_decisions_total",
        "sentinel_cp_rollout_stage_seconds",
    ] {
        assert!(metrics.contains(m), "{m} missing");
    }
}

/// Polls every proxy and the rollout: a proxy running v2 must be admitted.
async fn watch_admission(
    cp_url: String,
    token: String,
    id: i64,
    proxies: Vec<(String, SocketAddr)>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let client = http();
    while !stop.load(Ordering::Relaxed) {
        let mut on_v2 = Vec::new();
        for (name, admin) in &proxies {
            let v: Value = match client
                .get(format!("http://{admin}/admin/config"))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if v["version"]["number"] == 2 {
                on_v2.push(name.clone());
            }
        }
        // Read the admission after the proxies: it can only have grown.
        let d: Value = match client
            .get(format!("{cp_url}/v1/rollouts/{id}"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if d.is_null() || d["rollout"]["state"] == "completed" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let ok = admitted(&d);
        for n in on_v2 {
            if !ok.contains(&n) {
                violations.push(format!("{n} ran v2 while admitted were {ok:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_resumes_the_rollout_from_the_store() {
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let mut cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let fleet = Fleet::start(&[cp.grpc_url()], |_| vec![]);
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&cp, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let (status, created) = apply(
        &cp,
        &config(2, backend.addr, ""),
        Some(json!({"stages": [{"select": "canary:1"}, {"select": "eu"}, {"select": "*"}], "bake_ms": 2000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"].as_i64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_admission(
        cp.url(),
        cp.token.clone(),
        id,
        fleet
            .proxies
            .iter()
            .map(|p| (p.name.clone(), p.admin))
            .collect(),
        Arc::clone(&stop),
    ));
    let in_stage_two = wait_for(Duration::from_secs(20), || async {
        rollout(&cp, id).await["rollout"]["stage"] == 1
    })
    .await;
    assert!(in_stage_two, "{:#}", rollout(&cp, id).await);
    let before = admitted(&rollout(&cp, id).await);
    cp.kill();
    // While it is down, nobody outside the admitted nodes runs v2.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for p in &fleet.proxies {
        if !before.contains(&p.name) {
            assert_eq!(running(p).await, Some(1), "{}", p.name);
        }
    }
    cp.restart().await;
    wait_state(&cp, id, "completed", Duration::from_secs(60)).await;
    converge(&all, 2, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    let kinds: Vec<String> = rollout(&cp, id).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("completed"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fail_over_on_postgres_continues_the_rollout() {
    let pg = Postgres::start();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let bin = workspace_bin("sentinel-cp");
    let mut a = ControlPlane::start(&bin, &pg.url(), &["--replica", "cp-a"]).await;
    // `a` takes the driver lock first.
    let driving = wait_for(Duration::from_secs(10), || async {
        a.logs().contains("driving rollouts")
    })
    .await;
    assert!(driving, "{}", a.logs());
    let b = ControlPlane::start(&bin, &pg.url(), &["--replica", "cp-b"]).await;
    let fleet = Fleet::start(&[a.grpc_url(), b.grpc_url()], |_| vec![]);
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&a, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let (status, created) = apply(
        &b,
        &config(2, backend.addr, ""),
        Some(json!({"stages": [{"select": "canary:1"}, {"select": "us"}, {"select": "*"}], "bake_ms": 2000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"].as_i64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_admission(
        b.url(),
        b.token.clone(),
        id,
        fleet
            .proxies
            .iter()
            .map(|p| (p.name.clone(), p.admin))
            .collect(),
        Arc::clone(&stop),
    ));
    let moving = wait_for(Duration::from_secs(20), || async {
        rollout(&b, id).await["rollout"]["stage"] == 1
    })
    .await;
    assert!(moving, "{:#}\n{}", rollout(&b, id).await, a.logs());
    // Kill the replica that drives; the other takes over from the store.
    let driver_was_a = a.logs().contains("driving rollouts");
    assert!(driver_was_a, "{}", a.logs());
    a.kill();
    wait_state(&b, id, "completed", Duration::from_secs(60)).await;
    converge(&all, 2, Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(b.logs().contains("driving rollouts"), "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_promote_abort_and_roll_back_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let fleet = Fleet::start(&[cp.grpc_url()], |name| {
        if name == "ap-2" {
            vec![("SENTINEL_LABELS".into(), "tier=canary,rack=r7".into())]
        } else {
            vec![]
        }
    });
    let all: Vec<&Proxy> = fleet.proxies.iter().collect();
    assert_eq!(apply(&cp, &config(1, backend.addr, ""), None).await.0, 201);
    converge(&all, 1, Duration::from_secs(20)).await;
    let v2 = write_file(dir.path(), "v2.kdl", &config(2, backend.addr, ""));
    let v3 = write_file(dir.path(), "v3.kdl", &config(3, backend.addr, ""));
    let (code, out, err) = cp.ctl(&[
        "apply",
        v2.to_str().unwrap(),
        "--canary",
        "eu",
        "--bake",
        "10m",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollout 1 started"), "{out}");
    converge(
        &[fleet.get("eu-1"), fleet.get("eu-2")],
        2,
        Duration::from_secs(10),
    )
    .await;

    // A second apply is refused, naming the rollout.
    let (code, _, err) = cp.ctl(&["apply", v3.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("rollout 1 is running"), "{err}");
    let (status, body) = apply(&cp, &config(3, backend.addr, ""), None).await;
    assert_eq!(status, 409);
    assert!(
        body["message"].as_str().unwrap().contains("rollout 1"),
        "{body}"
    );

    let (code, out, _) = cp.ctl(&["rollout", "pause"]);
    assert_eq!(code, 0);
    assert!(out.contains("paused"), "{out}");
    let (code, _, err) = cp.ctl(&["rollout", "pause", "1"]);
    assert_eq!(code, 1, "pausing twice is refused");
    assert!(err.contains("is paused"), "{err}");
    let (code, out, _) = cp.ctl(&["rollout", "resume", "1"]);
    assert_eq!((code, out.contains("running")), (0, true), "{out}");
    // Promote skips the 10-minute bake: stage 2 (`*`) admits everyone.
    let (code, out, _) = cp.ctl(&["rollout", "promote"]);
    assert_eq!(code, 0, "{out}");
    converge(&all, 2, Duration::from_secs(10)).await;
    let (code, out, _) = cp.ctl(&["rollout", "status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("rollout 1: running") && out.contains("eu-1"),
        "{out}"
    );
    // Abort: everyone returns to v1, v2 never became active.
    let (code, out, _) = cp.ctl(&["rollout", "abort"]);
    assert_eq!((code, out.contains("aborted")), (0, true), "{out}");
    converge(&all, 1, Duration::from_secs(10)).await;
    let (_, active) = api(&cp, "GET", "/v1/configs/active", None).await;
    assert_eq!(active["version"]["number"], 1);

    // A manual rollback during a rollout aborts it cleanly.
    let (code, out, err) = cp.ctl(&[
        "apply",
        v3.to_str().unwrap(),
        "--canary",
        "us",
        "--bake",
        "10m",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    converge(
        &[fleet.get("us-1"), fleet.get("us-2")],
        3,
        Duration::from_secs(10),
    )
    .await;
    let (code, out, err) = cp.ctl(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("from v3 to v1"), "{out}");
    converge(&all, 1, Duration::from_secs(10)).await;
    let (_, list) = api(&cp, "GET", "/v1/rollouts", None).await;
    assert_eq!(list["rollouts"][0]["state"], "aborted", "{list}");
    assert!(
        list["rollouts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("manual rollback"),
        "{list}"
    );
    let (code, out, _) = cp.ctl(&["rollout", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("aborted"), "{out}");

    // Stages select by label too.
    let (_, nodes) = api(&cp, "GET", "/v1/nodes", None).await;
    let ap2 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "ap-2")
        .unwrap()
        .clone();
    assert_eq!(ap2["labels"], json!({"tier": "canary", "rack": "r7"}));
    let v4 = write_file(dir.path(), "v4.kdl", &config(4, backend.addr, ""));
    let (code, out, err) = cp.ctl(&[
        "apply",
        v4.to_str().unwrap(),
        "--stages",
        "label:tier=canary,*",
        "--bake",
        "10m",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    converge(&[fleet.get("ap-2")], 4, Duration::from_secs(10)).await;
    let (_, list) = api(&cp, "GET", "/v1/rollouts", None).await;
    let id = list["rollouts"][0]["id"].as_i64().unwrap();
    assert_eq!(
        admitted(&rollout(&cp, id).await),
        BTreeSet::from(["ap-2".to_string()])
    );
    for p in &fleet.proxies {
        if p.name != "ap-2" {
            assert_eq!(running(p).await, Some(1), "{}", p.name);
        }
    }
    let (code, _, _) = cp.ctl(&["rollout", "abort", &id.to_string()]);
    assert_eq!(code, 0);
    converge(&all, 1, Duration::from_secs(10)).await;
}
