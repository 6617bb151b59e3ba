//! `sentinelctl` against a real control plane and real proxies: outputs,
//! exit codes, and `apply --wait` across two regions.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sentinel_tests::{ControlPlane, DemoBackend, Proxy, wait_for, workspace_bin};

fn ctl(cp: &ControlPlane, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinelctl"));
    c.arg("--server")
        .arg(cp.url())
        .args(args)
        .env_remove("SENTINEL_TOKEN")
        .env("SENTINELCTL_CONFIG", "/nonexistent");
    if let Some(t) = token {
        c.arg("--token").arg(t);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Writes the harness's versioned fleet config to a file for `apply`.
fn config(dir: &Path, version: u32, backend: std::net::SocketAddr, extra_listener: &str) -> String {
    let path = dir.join(format!(
        "v{version}{}.kdl",
        if extra_listener.is_empty() { "" } else { "-x" }
    ));
    std::fs::write(
        &path,
        sentinel_tests::versioned_config(version, backend, extra_listener),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_outputs_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let t = Some(cp.token.as_str());
    let v1 = config(dir.path(), 1, backend.addr, "");
    let v2 = config(dir.path(), 2, backend.addr, "");

    // Invalid file: local diagnostics, exit 1, even with no server at all.
    let bad = dir.path().join("bad.kdl");
    std::fs::write(&bad, "routes {\n  route \"r\" { upstream \"nope\"; }\n}\n").unwrap();
    let (code, _, err) = ctl(&cp, t, &["apply", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.kdl:2:24") && err.contains("unknown upstream `nope`"),
        "{err}"
    );

    // Unreachable server: exit 3 naming the URL.
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .args(["--server", "http://127.0.0.1:9", "status"])
        .env("SENTINELCTL_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach the control plane at http://127.0.0.1:9")
    );

    // Auth: no token, then a read-only token.
    let (code, _, err) = ctl(&cp, None, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("not authenticated"), "{err}");

    // Dry run shows the diff and stores nothing.
    let (code, out, _) = ctl(&cp, t, &["apply", &v1, "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("+ listener http") && out.contains("+ route all"),
        "{out}"
    );
    let (_, out, _) = ctl(&cp, t, &["history", "-o", "json"]);
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["versions"].as_array().unwrap().len(), 0);

    // Apply, identical apply, expect-version conflict.
    let (code, out, err) = ctl(&cp, t, &["apply", &v1, "-m", "first"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied as v1"), "{out}");
    let (code, out, _) = ctl(&cp, t, &["apply", &v1]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing was stored"), "{out}");
    let (code, _, err) = ctl(&cp, t, &["apply", &v2, "--expect-version", "7"]);
    assert_eq!(code, 1);
    assert!(err.contains("the active version is 1"), "{err}");
    let (code, out, _) = ctl(
        &cp,
        t,
        &["apply", &v2, "--expect-version", "1", "-o", "json"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"version\": 2"), "{out}");

    // Read-only views, table and JSON.
    let (code, out, _) = ctl(&cp, t, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("active: v2"), "{out}");
    let (_, out, _) = ctl(&cp, t, &["status", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["active"]["number"],
        2
    );
    let (_, out, _) = ctl(&cp, t, &["history"]);
    assert!(
        out.contains("v2*") && out.contains("KIND") && out.contains("first"),
        "{out}"
    );
    let (_, out, _) = ctl(&cp, t, &["get", "1"]);
    assert!(out.contains("X-Config\" \"v1\""), "{out}");
    let (_, out, _) = ctl(&cp, t, &["diff", "1", "2"]);
    assert!(
        out.contains("v1 → v2") && out.contains("~ route all") && out.contains("+        policies"),
        "{out}"
    );
    let (_, out, _) = ctl(&cp, t, &["diff", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["to"],
        2
    );
    let (code, out, _) = ctl(&cp, t, &["nodes"]);
    assert_eq!(code, 0);
    assert!(out.contains("NODE"), "{out}");
    let (code, out, _) = ctl(&cp, t, &["health", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains("quorum_percent"), "{out}");

    // Rollback and its refusal.
    let (code, out, _) = ctl(&cp, t, &["rollback"]);
    assert_eq!(code, 0);
    assert!(out.contains("rolled back from v2 to v1"), "{out}");
    let (code, _, err) = ctl(&cp, t, &["rollback", "--to", "99"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    // A read token is refused writes, and says which role is needed.
    let reader = reqwest::Client::new()
        .post(format!("{}/v1/tokens", cp.url()))
        .bearer_auth(&cp.token)
        .json(&serde_json::json!({"name": "reader", "role": "read"}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = ctl(&cp, Some(&reader), &["apply", &v2]);
    assert_eq!(code, 1);
    assert!(err.contains("needs `write`"), "{err}");

    // Usage errors are exit 2; completions work.
    let (code, _, _) = ctl(&cp, t, &["apply"]);
    assert_eq!(code, 2);
    let (code, out, _) = ctl(&cp, t, &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("sentinelctl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_follows_real_proxies_in_two_regions() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let t = Some(cp.token.as_str());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let urls = [cp.grpc_url()];
    let proxy = workspace_bin("sentinel");
    let eu = Proxy::start(&proxy, "eu-1", "eu", &urls, &[]);
    let us = Proxy::start(
        &proxy,
        "us-1",
        "us",
        &urls,
        &[("EXTRA_ADDR", taken_addr.as_str())],
    );
    let connected = wait_for(Duration::from_secs(15), || async {
        let (_, out, _) = ctl(&cp, t, &["nodes", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| {
                v["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count())
                    == 2
            })
            .unwrap_or(false)
    })
    .await;
    assert!(connected, "{}\n{}", eu.logs(), us.logs());

    let v1 = config(dir.path(), 1, backend.addr, "");
    let (code, out, err) = ctl(&cp, t, &["apply", &v1, "--wait=20s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("2/2 nodes on v1") && err.contains("eu 1/1") && err.contains("us 1/1"),
        "{err}"
    );
    assert!(err.contains("all 2 connected nodes run v1"), "{err}");

    // One proxy cannot bind the extra listener: NACK → exit 1 naming it.
    let v2 = config(
        dir.path(),
        2,
        backend.addr,
        "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }",
    );
    let (code, _, err) = ctl(&cp, t, &["apply", &v2, "--wait=20s"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused v2") && err.contains("us-1 (us)") && err.contains("cannot bind"),
        "{err}"
    );

    // A connected proxy that never answers (frozen): the deadline passes,
    // exit 1 listing who is behind.
    us.signal("STOP");
    let v3 = config(dir.path(), 3, backend.addr, "");
    let (code, _, err) = ctl(&cp, t, &["apply", &v3, "--wait=2s"]);
    us.signal("CONT");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("timed out") && err.contains("not on v3") && err.contains("us-1 (us)"),
        "{err}"
    );
    assert!(!err.contains("eu-1 (eu): on"), "eu-1 converged: {err}");

    // Rollback --wait converges back.
    let (code, _, err) = ctl(&cp, t, &["rollback", "--to", "1", "--wait=20s"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("all 2 connected nodes run v1"), "{err}");
    let (_, out, _) = ctl(&cp, t, &["status"]);
    assert!(out.contains("eu") && out.contains("1/1"), "{out}");
    drop(taken);
}

/// Right after a control-plane restart no proxy is connected yet, but the
/// control plane knows three: `--wait` counts them and fails naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_counts_known_nodes_that_are_not_connected() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let mut cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let t = Some(cp.token.as_str().to_string());
    let t = t.as_deref();
    let urls = [cp.grpc_url()];
    let proxy = workspace_bin("sentinel");
    let mut proxies: Vec<Proxy> = ["p1", "p2", "p3"]
        .iter()
        .map(|name| Proxy::start(&proxy, name, "eu", &urls, &[]))
        .collect();
    let v1 = config(dir.path(), 1, backend.addr, "");
    let connected = wait_for(Duration::from_secs(15), || async {
        let (_, out, _) = ctl(&cp, t, &["nodes", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| {
                v["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count())
                    == 3
            })
            .unwrap_or(false)
    })
    .await;
    assert!(connected, "proxies did not connect");
    let (code, _, err) = ctl(&cp, t, &["apply", &v1, "--wait=20s"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3/3 nodes on v1"), "{err}");

    // The proxies stop, then the control plane is SIGKILLed and restarted.
    for p in &mut proxies {
        p.kill();
    }
    let gone = wait_for(Duration::from_secs(15), || async {
        let (_, out, _) = ctl(&cp, t, &["nodes", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| {
                v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["connected"] == false))
            })
            .unwrap_or(false)
    })
    .await;
    assert!(gone, "{}", ctl(&cp, t, &["nodes"]).1);
    cp.restart().await;

    let v2 = config(dir.path(), 2, backend.addr, "");
    let (code, _, err) = ctl(&cp, t, &["apply", &v2, "--wait=3s"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("0/3 nodes on v2"), "{err}");
    assert!(err.contains("not on v2"), "{err}");
    for name in ["p1", "p2", "p3"] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{name} (eu)")) && l.contains("disconnected")),
            "{name} not reported as disconnected: {err}"
        );
    }
    let (_, out, _) = ctl(&cp, t, &["status"]);
    assert!(out.contains("0/3"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("disconnected")).count(),
        3,
        "{out}"
    );
}
