//! Service discovery end to end: the real control plane runs DNS (a real
//! dnsmasq), Consul and Kubernetes (API doubles speaking their HTTP APIs)
//! sources; three real proxies in two regions receive the discovered
//! targets as endpoints-only deltas and traffic follows every change; a
//! source outage keeps traffic on the last known targets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sentinel_proto as pb;
use sentinel_tests::consul::{ConsulDouble, Instance};
use sentinel_tests::dnsmasq::Dnsmasq;
use sentinel_tests::kube::{Ep, KubeDouble, endpoint_slice};
use sentinel_tests::raw::RawStream;
use sentinel_tests::{ControlPlane, DemoBackend, Proxy, free_port, http, wait_for, workspace_bin};
use serde_json::{Value, json};

fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Which backends answer `path` on `proxy` over 12 requests.
async fn answering(proxy: &Proxy, path: &str) -> Vec<String> {
    let c = http();
    let mut seen = Vec::new();
    for _ in 0..12 {
        if let Ok(r) = c.get(format!("http://{}{path}", proxy.http)).send().await
            && r.status() == 200
            && let Ok(body) = r.text().await
        {
            let name = body.trim().trim_start_matches("hello from ").to_string();
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
    }
    seen.sort();
    seen
}

/// Waits until every proxy's `path` is answered by exactly `names`.
async fn follows(proxies: &[&Proxy], path: &str, names: &[&str]) {
    for p in proxies {
        let ok = wait_for(Duration::from_secs(20), || async {
            answering(p, path).await == names
        })
        .await;
        assert!(
            ok,
            "{} serves {path} from {:?}, not {names:?}\n{}",
            p.name,
            answering(p, path).await,
            p.logs()
        );
    }
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    http()
        .get(format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

fn bin(name: &str) -> PathBuf {
    workspace_bin(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_targets_reach_every_proxy_and_traffic_follows() {
    let backend_bin = bin("sentinel-bench-backend");
    // DNS A records differ by IP and share a port; Kubernetes endpoints too.
    let dns_port = free_port();
    let _dns_a = DemoBackend::start_at(&backend_bin, at("127.0.0.2", dns_port), "dns-a");
    let _dns_b = DemoBackend::start_at(&backend_bin, at("127.0.0.3", dns_port), "dns-b");
    let consul_a = DemoBackend::start(&backend_bin, "consul-a");
    let consul_b = DemoBackend::start(&backend_bin, "consul-b");
    let kube_port = free_port();
    let _kube_a = DemoBackend::start_at(&backend_bin, at("127.0.0.4", kube_port), "kube-a");
    let _kube_b = DemoBackend::start_at(&backend_bin, at("127.0.0.5", kube_port), "kube-b");

    let mut dns = Dnsmasq::start(1);
    dns.set_hosts(&[("127.0.0.2", "web.test")]);
    let mut consul = ConsulDouble::start(None).await;
    consul.register(Instance::new(
        "api-1",
        "api",
        "127.0.0.1",
        consul_a.addr.port(),
    ));
    let kube = KubeDouble::start().await;
    let slice = |name: &str, ip: &str| {
        endpoint_slice(name, "web", &[("http", kube_port)], &[Ep::ready(ip)])
    };
    kube.apply("default", slice("web-1", "127.0.0.4"));

    let cp = ControlPlane::start(&bin("sentinel-cp"), "", &[]).await;
    let urls = [cp.grpc_url()];
    let proxy_bin = bin("sentinel");
    let p1 = Proxy::start(&proxy_bin, "eu-1", "eu", &urls, &[]);
    let p2 = Proxy::start(&proxy_bin, "eu-2", "eu", &urls, &[]);
    let p3 = Proxy::start(&proxy_bin, "us-1", "us", &urls, &[]);
    let all = [&p1, &p2, &p3];
    let config = format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{ listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}; }}
upstreams {{
    upstream "dns" {{
        discovery "dns" {{ hostname "web.test"; port {dns_port}; resolver "127.0.0.1:{}"; refresh-interval-secs 1; }}
    }}
    upstream "consul" {{
        discovery "consul" {{ address "{}"; service "api"; refresh-interval-secs 2; }}
    }}
    upstream "kube" {{
        discovery "kubernetes" {{ namespace "default"; service "web"; port "http"; api-server "{}"; }}
    }}
}}
routes {{
    route "dns" {{ matches {{ path-prefix "/dns"; }}; upstream "dns"; }}
    route "consul" {{ matches {{ path-prefix "/consul"; }}; upstream "consul"; }}
    route "kube" {{ matches {{ path-prefix "/kube"; }}; upstream "kube"; }}
}}
"#,
        dns.port,
        consul.url(),
        kube.url()
    );
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": config, "message": "discovery" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());

    // Every source's first set reaches every proxy.
    follows(&all, "/dns", &["dns-a"]).await;
    follows(&all, "/consul", &["consul-a"]).await;
    follows(&all, "/kube", &["kube-a"]).await;

    // A raw proxy beside the real ones sees what a discovery change costs on
    // the wire: the changed upstream's Endpoints, nothing else, same version.
    let mut raw = RawStream::connect(cp.grpc_url(), "raw-1", "eu", vec![])
        .await
        .unwrap();
    let full = raw.next(Duration::from_secs(10)).await.unwrap();
    raw.ack(&full).await;

    // Targets added and removed in each source.
    dns.set_hosts(&[("127.0.0.2", "web.test"), ("127.0.0.3", "web.test")]);
    follows(&all, "/dns", &["dns-a", "dns-b"]).await;
    let delta = loop {
        let d = raw.next(Duration::from_secs(10)).await.expect("a delta");
        raw.ack(&d).await;
        if !d.keepalive {
            break d;
        }
    };
    assert_eq!(delta.version_number, full.version_number, "no new version");
    assert!(
        delta
            .resources
            .iter()
            .all(|r| r.r#type == pb::ResourceType::Endpoints as i32),
        "only Endpoints change: {:?}",
        delta.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    assert!(delta.removed.is_empty());
    dns.set_hosts(&[("127.0.0.3", "web.test")]);
    follows(&all, "/dns", &["dns-b"]).await;

    consul.register(Instance::new(
        "api-2",
        "api",
        "127.0.0.1",
        consul_b.addr.port(),
    ));
    follows(&all, "/consul", &["consul-a", "consul-b"]).await;
    consul.deregister("api-1");
    follows(&all, "/consul", &["consul-b"]).await;

    kube.apply("default", slice("web-2", "127.0.0.5"));
    follows(&all, "/kube", &["kube-a", "kube-b"]).await;
    kube.delete("default", "web-1");
    follows(&all, "/kube", &["kube-b"]).await;

    // Discovery made no stored versions: history is the operator's apply.
    let history = get(&cp, "/v1/configs").await;
    assert_eq!(
        history["versions"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    // Outage: the sources fail; the last targets keep serving, marked stale.
    dns.stop();
    consul.stop();
    let stale = wait_for(Duration::from_secs(20), || async {
        let d = get(&cp, "/v1/discovery").await;
        let stale = |name: &str| {
            d["upstreams"].as_array().is_some_and(|u| {
                u.iter()
                    .any(|x| x["upstream"] == name && x["stale"] == true)
            })
        };
        stale("dns") && stale("consul")
    })
    .await;
    assert!(stale, "{}", get(&cp, "/v1/discovery").await);
    for p in all {
        assert_eq!(answering(p, "/dns").await, ["dns-b"], "{}", p.name);
        assert_eq!(answering(p, "/consul").await, ["consul-b"], "{}", p.name);
    }
}
