//! `sentinelctl token create|list|revoke` against a real control plane:
//! the secret is printed once and works, listing never shows secrets,
//! revocation takes effect, and bad usage exits 2.

use std::process::Command;
use std::time::Duration;

use sentinel_tests::{ControlPlane, wait_for, workspace_bin};

fn ctl(cp: &ControlPlane, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("--server")
        .arg(cp.url())
        .arg("--token")
        .arg(token)
        .args(args)
        .env_remove("SENTINEL_TOKEN")
        .env("SENTINELCTL_CONFIG", "/nonexistent")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_list_revoke() {
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let admin = cp.token.clone();

    // Create: the secret alone on stdout, a note on stderr.
    let (code, out, err) = ctl(
        &cp,
        &admin,
        &[
            "token",
            "create",
            "ci",
            "--role",
            "read",
            "--expires",
            "30d",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let secret = out.trim().to_string();
    assert!(secret.starts_with("snt_"), "{out}");
    assert!(err.contains("shown only this once"), "{err}");
    // The new token reads, and may not write or administer.
    let (code, _, err) = ctl(&cp, &secret, &["status"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&cp, &secret, &["token", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("not allowed"), "{err}");

    // A join token bound to one node, and a fleet-wide one.
    let (code, join, err) = ctl(
        &cp,
        &admin,
        &["token", "create", "edge-1", "--join", "--node", "edge-1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("for node edge-1"), "{err}");
    let join = join.trim().to_string();
    // It is not an API token.
    let (code, _, err) = ctl(&cp, &join, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("join token"), "{err}");

    // List: names, kinds, roles, nodes; never a secret.
    let (code, table, err) = ctl(&cp, &admin, &["token", "list"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "NAME",
        "bootstrap",
        "ci",
        "read",
        "edge-1",
        "join",
        "(fleet)",
    ] {
        assert!(table.contains(needle), "`{needle}` missing:\n{table}");
    }
    assert!(
        !table.contains(&secret) && !table.contains(&join),
        "{table}"
    );
    let (code, json, _) = ctl(&cp, &admin, &["-o", "json", "token", "list"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ci = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap();
    assert_eq!(
        (ci["kind"].as_str(), ci["role"].as_str()),
        (Some("api"), Some("read"))
    );
    assert!(ci["expires_at_unix_ms"].is_i64(), "{ci}");
    assert!(ci["revoked_at_unix_ms"].is_null(), "{ci}");

    // Revoke: the secret stops working.
    let (code, out, err) = ctl(&cp, &admin, &["token", "revoke", "ci"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked api token `ci`"), "{out}");
    let refused = wait_for(Duration::from_secs(2), || {
        let (code, _, err) = ctl(&cp, &secret, &["status"]);
        async move { code == 1 && err.contains("revoked") }
    })
    .await;
    assert!(refused, "a revoked token still works");
    let (_, table, _) = ctl(&cp, &admin, &["token", "list"]);
    let ci_row = table
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_default();
    assert!(
        ci_row.matches('Z').count() >= 3,
        "created, expires and revoked times: {ci_row}"
    );

    // Errors: an unknown name, a taken name, usage.
    let (code, _, err) = ctl(&cp, &admin, &["token", "revoke", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no token named `nope`"), "{err}");
    let (code, _, err) = ctl(&cp, &admin, &["token", "create", "ci", "--role", "admin"]);
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
    let (code, _, _) = ctl(&cp, &admin, &["token", "create", "x"]);
    assert_eq!(code, 2, "an API token needs --role");
    let (code, _, _) = ctl(&cp, &admin, &["token", "create", "x", "--node", "n"]);
    assert_eq!(code, 2, "--node needs --join");
    let (code, _, _) = ctl(
        &cp,
        &admin,
        &[
            "token",
            "create",
            "x",
            "--role",
            "read",
            "--expires",
            "soon",
        ],
    );
    assert_eq!(code, 2);
}
