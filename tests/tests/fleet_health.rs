//! Fleet health that acts: with `fleet-health #true`, a target the quorum
//! of reporting proxies marks down is pushed as unhealthy in the upstream's
//! `Endpoints` to every proxy — a raw stream sees the push, and a real
//! `sentinel` whose own checks are off stops sending traffic to it; when the
//! reports recover, it is pushed healthy again and traffic returns.

use std::time::Duration;

use prost::Message;
use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use sentinel_tests::raw::RawStream;
use sentinel_tests::{ControlPlane, DemoBackend, Proxy, http, wait_for, workspace_bin};
use serde_json::json;
use tokio::sync::mpsc;

fn config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{ listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}; }}
upstreams {{
    upstream "api" {{
        target "{a}"
        target "{b}"
        fleet-health #true
        passive-health {{ enabled #false; }}
    }}
}}
routes {{ route "all" {{ upstream "api"; }}; }}
"#
    )
}

/// Who answered the proxy's request (`hello from NAME`).
async fn answered(p: &Proxy) -> Option<String> {
    let r = http()
        .get(format!("http://{}/", p.http))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok().map(|t| t.trim().to_string())
}

/// Health of `target` in `api`'s Endpoints of a response, if it carries them.
fn pushed_health(r: &pb::DeltaResponse, target: &str) -> Option<i32> {
    let e = r
        .resources
        .iter()
        .find(|r| r.r#type == pb::ResourceType::Endpoints as i32 && r.name == "api")?;
    let e = pb::Endpoints::decode(e.body.clone()).ok()?;
    e.targets
        .iter()
        .find(|t| t.address == target)
        .map(|t| t.health)
}

/// Opens a health-report stream as `node` and returns its sender.
async fn reporter(cp: &ControlPlane) -> mpsc::Sender<pb::HealthReport> {
    let mut client = ConfigStreamClient::connect(cp.grpc_url()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut acks = client
        .report_health(sentinel_tests::join_request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} });
    tx
}

fn report(node: &str, target: &str, healthy: bool) -> pb::HealthReport {
    pb::HealthReport {
        node_id: node.into(),
        targets: vec![pb::TargetHealthReport {
            upstream: "api".into(),
            target: target.into(),
            healthy,
            since_unix_ms: 0,
            last_error: if healthy {
                String::new()
            } else {
                "connection refused".into()
            },
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_the_quorum_marks_down_is_skipped_by_a_proxy_whose_checks_are_off() {
    let backend_bin = workspace_bin("sentinel-bench-backend");
    let a = DemoBackend::start(&backend_bin, "a");
    let b = DemoBackend::start(&backend_bin, "b");
    let cp = ControlPlane::start(
        &workspace_bin("sentinel-cp"),
        "",
        &["--keepalive-secs", "1", "--health-quorum-percent", "50"],
    )
    .await;
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": config(a.addr, b.addr), "message": "fleet health" }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );

    let proxy = Proxy::start(
        &workspace_bin("sentinel"),
        "p1",
        "eu",
        &[cp.grpc_url()],
        &[],
    );
    let both = wait_for(Duration::from_secs(20), || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            if let Some(who) = answered(&proxy).await {
                seen.insert(who);
            }
        }
        seen.len() == 2
    })
    .await;
    assert!(both, "both targets serve at first\n{}", proxy.logs());

    // A proxy on the raw protocol, holding the full configuration.
    let mut watcher = RawStream::connect(cp.grpc_url(), "watcher", "test", vec![])
        .await
        .unwrap();
    let full = watcher.next(Duration::from_secs(10)).await.unwrap();
    let b_addr = b.addr.to_string();
    assert_eq!(
        pushed_health(&full, &b_addr),
        Some(pb::TargetHealth::Unknown as i32)
    );
    watcher.ack(&full).await;

    // Two nodes report b down (the real proxy reports nothing: checks off).
    let r1 = reporter(&cp).await;
    let r2 = reporter(&cp).await;
    let down = b_addr.clone();
    let reports = tokio::spawn(async move {
        for _ in 0..600 {
            let _ = r1.send(report("watcher", &down, false)).await;
            let _ = r2.send(report("reporter-2", &down, false)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (r1, r2)
    });

    let pushed = watcher
        .next(Duration::from_secs(15))
        .await
        .expect("a push after the quorum marks b down");
    assert_eq!(pushed.version_number, full.version_number, "no new version");
    assert_eq!(pushed.resources.len(), 1, "an endpoints-only delta");
    assert_eq!(
        pushed_health(&pushed, &b_addr),
        Some(pb::TargetHealth::Unhealthy as i32)
    );
    assert_eq!(
        pushed_health(&pushed, &a.addr.to_string()),
        Some(pb::TargetHealth::Unknown as i32)
    );
    watcher.ack(&pushed).await;

    // The real proxy, whose own checks never saw b fail, stops using it.
    let only_a = wait_for(Duration::from_secs(10), || async {
        for _ in 0..10 {
            if answered(&proxy).await.as_deref() != Some("hello from a") {
                return false;
            }
        }
        true
    })
    .await;
    assert!(only_a, "b is skipped\n{}", proxy.logs());

    // /v1/health shows the verdict that acted.
    let health: serde_json::Value = http()
        .get(format!("{}/v1/health", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = &health["upstreams"]["api"][0];
    assert_eq!(t["target"], b_addr);
    assert_eq!(t["healthy"], false);

    // Reports recover → after the hold, b is pushed healthy and serves again.
    reports.abort();
    let r1 = reporter(&cp).await;
    let up = b_addr.clone();
    let healthy_again = tokio::spawn(async move {
        loop {
            let _ = r1.send(report("watcher", &up, true)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let back = watcher
        .next(Duration::from_secs(30))
        .await
        .expect("a push after the quorum recovers");
    assert_eq!(back.resources.len(), 1);
    assert_ne!(
        pushed_health(&back, &b_addr),
        Some(pb::TargetHealth::Unhealthy as i32)
    );
    watcher.ack(&back).await;
    let b_serves = wait_for(Duration::from_secs(15), || async {
        for _ in 0..8 {
            if answered(&proxy).await.as_deref() == Some("hello from b") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(b_serves, "b serves again\n{}", proxy.logs());
    healthy_again.abort();
}
