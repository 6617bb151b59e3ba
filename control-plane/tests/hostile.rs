//! Hostile configuration text posted to a real `sentinel-cp` (issue 11,
//! defect 1): 2,000 nested blocks once killed the process with a stack
//! overflow on an API worker. Now it is a 422 with a located diagnostic and
//! the control plane keeps serving. And the REST API over TLS (defect 8):
//! a client that never finishes its handshake is closed after the timeout,
//! and running out of file descriptors pauses accepting instead of ending it.

use std::time::Duration;

use reqwest::StatusCode;
use sentinel_tests::ControlPlane;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn nested(n: usize) -> String {
    format!("{}{}", "a {\n".repeat(n), "}\n".repeat(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_kdl_is_a_422_and_the_control_plane_survives() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let client = reqwest::Client::new();
    for (source, dry_run) in [
        (nested(2_000), false),
        (nested(2_000), true),
        ("} ".repeat(5_000), false),
        ("/*".repeat(5_000), false),
    ] {
        let resp = client
            .post(format!("{}/v1/configs", cp.url()))
            .bearer_auth(&cp.token)
            .json(&json!({ "source": source, "dry_run": dry_run }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the control plane died: {e}\n{}", cp.logs()));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}\n{}",
            cp.logs()
        );
        assert!(
            body["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let resp = client
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": nested(2_000) }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let first = &body["diagnostics"][0];
    assert!(
        first["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested more than"),
        "{body}"
    );
    assert_eq!(first["line"], 17, "{body}");
    // Still alive and still serving.
    let health = client
        .get(format!("{}/healthz", cp.url()))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let list = client
        .get(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}

// === the REST API over TLS under hostile clients (issue 11, defect 8) ===

struct TlsControlPlane {
    cp: ControlPlane,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn tls_control_plane(handshake_timeout_ms: &str) -> TlsControlPlane {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("api.pem");
    let key_path = dir.path().join("api.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &[
            "--api-tls-cert",
            cert_path.to_str().unwrap(),
            "--api-tls-key",
            key_path.to_str().unwrap(),
            "--api-tls-handshake-timeout-ms",
            handshake_timeout_ms,
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", cp.api)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    TlsControlPlane {
        cp,
        client,
        _dir: dir,
    }
}

impl TlsControlPlane {
    async fn status(&self) -> Option<StatusCode> {
        self.client
            .get(format!(
                "https://localhost:{}/v1/status",
                self.cp.api.port()
            ))
            .bearer_auth(&self.cp.token)
            .send()
            .await
            .ok()
            .map(|r| r.status())
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_closed_while_others_are_served() {
    let tls = tls_control_plane("500").await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(tls.cp.api).await.unwrap());
    }
    // Others are served meanwhile.
    assert_eq!(
        tls.status().await,
        Some(StatusCode::OK),
        "{}",
        tls.cp.logs()
    );
    // Each silent connection is closed once the handshake timeout passes
    // (500 ms; 5 s is the deadline for the whole crowd).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (i, s) in silent.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            closed_within(s, left).await,
            "silent connection {i} still open after 5 s\n{}",
            tls.cp.logs()
        );
    }
    assert_eq!(tls.status().await, Some(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_end_the_api() {
    let tls = tls_control_plane("300").await;
    assert_eq!(tls.status().await, Some(StatusCode::OK));
    let pid = tls.cp.pid().expect("control plane pid");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for a few more descriptors only: the crowd below exhausts them,
    // so accept() fails with EMFILE.
    let limit = open + 8;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut crowd = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = tokio::net::TcpStream::connect(tls.cp.api).await {
            crowd.push(s);
        }
    }
    let failed_accept = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if tls.cp.logs().contains("accept failed") {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    drop(crowd);
    assert!(failed_accept, "accept never failed\n{}", tls.cp.logs());
    // Descriptors free up as the silent crowd times out; the API answers again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if tls.status().await == Some(StatusCode::OK) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never answered again after EMFILE\n{}",
            tls.cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
