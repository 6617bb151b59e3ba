//! `sentinel --validate` / `--print-config` as an operator runs them.

use std::process::Command;

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(name)
}

#[test]
fn validate_reports_summary_and_exit_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--validate", "--config"])
        .arg(example("full.kdl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid: 2 listeners"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.kdl");
    std::fs::write(
        &bad,
        "listeners {\n  listener \"l\" { address \"nowhere\"; }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.kdl:2:26"));
}

#[test]
fn print_config_output_validates_to_the_same_hash() {
    let printed = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--print-config", "--config"])
        .arg(example("full.kdl"))
        .output()
        .unwrap();
    assert_eq!(printed.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.kdl");
    std::fs::write(&path, &printed.stdout).unwrap();
    let a = sentinel_config::compile_file(&example("full.kdl")).unwrap();
    let b = sentinel_config::compile_file(&path).unwrap();
    assert_eq!(a.config_hash(), b.config_hash());
}

#[test]
fn validate_accepts_agents_and_rejects_what_is_not_built_yet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agents.kdl");
    let doc = "upstreams {\n  upstream \"u\" { target \"127.0.0.1:9\"; }\n}\nagents {\n  agent \"auth\" { unix-socket \"/run/auth.sock\"; }\n}\nroutes {\n  route \"r\" {\n    upstream \"u\"\n    agents \"auth\"\n  }\n}\n";
    std::fs::write(&file, doc).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 agents"));

    std::fs::write(
        &file,
        doc.replace(
            "unix-socket \"/run/auth.sock\";",
            "grpc \"https://127.0.0.1:9000\";",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agents.kdl:5:23"), "{stderr}");
    assert!(stderr.contains("is not supported yet"), "{stderr}");
}
