//! `sentinelctl validate` as a user runs it: the real binary.

use std::process::Command;

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

#[test]
fn valid_files_exit_zero_with_a_summary_each() {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("validate")
        .arg(examples().join("minimal.kdl"))
        .arg(examples().join("full.kdl"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("minimal.kdl: valid: 1 listeners, 1 routes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("full.kdl: valid: 2 listeners, 8 routes, 7 upstreams"),
        "{stdout}"
    );
}

#[test]
fn invalid_file_exits_one_with_every_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.kdl");
    std::fs::write(
        &bad,
        "sever {\n}\nroutes {\n  route \"r\" { upstream \"none\"; }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.kdl:1:1"), "{stderr}");
    assert!(stderr.contains("did you mean `server`?"), "{stderr}");
    assert!(stderr.contains("bad.kdl:4:24"), "{stderr}");
    assert!(stderr.contains("unknown upstream `none`"), "{stderr}");
    assert!(stderr.contains("2 errors"), "{stderr}");
}

#[test]
fn missing_file_is_reported_not_panicked() {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .args(["validate", "/nonexistent/sentinel.kdl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/sentinel.kdl"));
}

#[test]
fn no_file_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_output_carries_structured_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.kdl");
    std::fs::write(&bad, "sever {\n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .args(["validate", "-o", "json"])
        .arg(examples().join("minimal.kdl"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[1]["valid"], false);
    assert_eq!(v[1]["diagnostics"][0]["line"], 1);
    assert_eq!(v[1]["diagnostics"][0]["help"], "did you mean `server`?");
}

#[test]
fn the_seeds_tracing_and_agents_validate() {
    // Both were refused by `validate` until the proxy could run them
    // (agents: issue 14, OTLP tracing: issue 15).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traced.kdl");
    std::fs::write(
        &file,
        "upstreams {\n  upstream \"u\" { target \"127.0.0.1:9\"; }\n}\nagents {\n  agent \"a\" { unix-socket \"/run/a.sock\"; }\n}\nobservability {\n  tracing {\n    backend \"otlp\" { endpoint \"http://127.0.0.1:4317\"; }\n    sampling-rate 0.01\n    propagation \"w3c\"\n  }\n}\nroutes {\n  route \"r\" { upstream \"u\"; agents \"a\"; }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
