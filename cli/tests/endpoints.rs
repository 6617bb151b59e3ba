//! `sentinelctl endpoints` against a real control plane on PostgreSQL whose
//! store holds a discovered upstream and its endpoint set (what the
//! discovery leader writes), with one proxy on that set.

use std::process::Command;
use std::time::Duration;

use sentinel_cp::discovery::endpoint_set;
use sentinel_cp::store::{NewVersion, Store};
use sentinel_discovery::{Discovered, SourceKind};
use sentinel_proto as pb;
use sentinel_tests::raw::RawStream;
use sentinel_tests::{ControlPlane, Postgres, wait_for, workspace_bin};

fn ctl(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("--server")
        .arg(cp.url())
        .arg("--token")
        .arg(&cp.token)
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
async fn endpoints_shows_targets_source_health_generation_and_nodes() {
    let pg = Postgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    let (source, resources, hash) = sentinel_tests::discovered_config(4);
    store
        .apply(NewVersion {
            hash,
            source,
            file_name: "t.kdl".into(),
            resources,
            actor: "test".into(),
            author: "test".into(),
            message: "discovered".into(),
            expect_version: None,
            trace: Default::default(),
        })
        .await
        .unwrap();
    let target = |address: &str, health: pb::TargetHealth| pb::Target {
        address: address.into(),
        weight: 1,
        health: health as i32,
        zone: "eu-a".into(),
    };
    let set = endpoint_set(
        Discovered {
            upstream: "svc".into(),
            source: SourceKind::Dns,
            targets: vec![
                target("10.0.0.1:8080", pb::TargetHealth::Healthy),
                target("10.0.0.2:8080", pb::TargetHealth::Unhealthy),
            ],
            stale: true,
            generation: 7,
            last_success_unix_ms: 1_700_000_000_000,
            error: Some("dns: SERVFAIL from 127.0.0.1:53".into()),
        },
        sentinel_cp::store::now_ms(),
    );
    store.write_endpoint_sets(&[set], 100).await.unwrap();

    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), &pg.url(), &[]).await;
    let mut proxy = RawStream::connect(cp.grpc_url(), "edge-1", "test", vec![])
        .await
        .unwrap();
    let full = proxy.next(Duration::from_secs(10)).await.unwrap();
    proxy.ack(&full).await;

    let on_it = wait_for(Duration::from_secs(10), || async {
        ctl(&cp, &["endpoints"]).1.contains("1/1")
    })
    .await;
    let (code, out, err) = ctl(&cp, &["endpoints"]);
    assert!(on_it, "{out}{err}");
    assert_eq!(code, 0, "{err}");
    for expected in [
        "leads discovery",
        "svc",
        "dns",
        "stale",
        "dns: SERVFAIL from 127.0.0.1:53",
        "10.0.0.1:8080",
        "healthy",
        "10.0.0.2:8080",
        "unhealthy",
        "eu-a",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in\n{out}");
    }
    assert!(
        !out.contains("web"),
        "static upstreams are not listed\n{out}"
    );

    let (code, out, err) = ctl(&cp, &["endpoints", "svc", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let u = &v["upstreams"][0];
    assert_eq!(u["upstream"], "svc");
    assert_eq!(u["source"], "dns");
    assert_eq!(u["generation"], 7);
    assert_eq!(u["stale"], true);
    assert_eq!(u["nodes_current"], 1);
    assert_eq!(u["targets"][1]["health"], "unhealthy");
    assert_eq!(v["leader"], true);

    let (code, _, err) = ctl(&cp, &["endpoints", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a discovered upstream"), "{err}");
}
