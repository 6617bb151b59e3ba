//! A Redis rate-limit filter across a fleet: when Redis fails, each proxy's
//! local fallback takes a fair share of the limit, because the control
//! plane tells every proxy how many proxies the fleet has
//! (`DeltaResponse.peers`).

use std::time::Duration;

use sentinel_tests::{ControlPlane, DemoBackend, Proxy, free_port, http, wait_for, workspace_bin};
use serde_json::json;

/// How many of `n` requests with one client key `proxy` admits.
async fn admitted(proxy: &Proxy, n: usize) -> usize {
    let c = http();
    let mut ok = 0;
    for _ in 0..n {
        let r = c
            .get(format!("http://{}/", proxy.http))
            .header("x-client", "one-client")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_takes_a_fair_share_of_the_fleet_limit() {
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let urls = [cp.grpc_url()];
    let bin = workspace_bin("sentinel");
    let p1 = Proxy::start(&bin, "eu-1", "eu", &urls, &[]);
    let p2 = Proxy::start(&bin, "eu-2", "eu", &urls, &[]);
    // Both connected before the config goes out, so its push tells both
    // that the fleet has two proxies.
    let both = wait_for(Duration::from_secs(15), || async {
        let v: serde_json::Value = http()
            .get(format!("{}/v1/nodes", cp.url()))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().filter(|n| n["connected"] == true).count() == 2)
    })
    .await;
    assert!(both, "two connected proxies");
    // Redis is not there (a closed loopback port): every decision falls back
    // to the local bucket. burst 10 over a fleet of two: 5 per proxy.
    let config = format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{ listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}; }}
upstreams {{ upstream "web" {{ target "{}"; }}; }}
filters {{
    filter "shared" {{
        type "rate-limit"; max-rps 0.001; burst 10; key "header:x-client"
        backend "redis"; redis-url "redis://127.0.0.1:{}"; redis-timeout-ms 50
        fallback-to-local #true
    }}
}}
routes {{ route "all" {{ upstream "web"; filters "shared"; }}; }}
"#,
        backend.addr,
        free_port()
    );
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": config }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for p in [&p1, &p2] {
        let up = wait_for(Duration::from_secs(15), || async {
            http()
                .get(format!("http://{}/admin/config", p.admin))
                .send()
                .await
                .ok()
                .map(|r| r.status() == 200)
                .unwrap_or(false)
                && admitted_probe(p).await
        })
        .await;
        assert!(up, "{} runs the config\n{}", p.name, p.logs());
    }
    let a1 = admitted(&p1, 10).await;
    let a2 = admitted(&p2, 10).await;
    assert_eq!((a1, a2), (5, 5), "each proxy admits its share of burst 10");
}

/// Whether `proxy` already answers through the filter (a request with a
/// key of its own reaches the backend).
async fn admitted_probe(proxy: &Proxy) -> bool {
    http()
        .get(format!("http://{}/", proxy.http))
        .header("x-client", format!("probe-{}", proxy.name))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}
