//! Standalone discovery: `sentinel --config FILE` with a `discovery "dns"`
//! block resolves its targets in process (against a real dnsmasq), traffic
//! follows a DNS change, and a DNS outage keeps traffic on the last targets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, Sentinel, client};
use sentinel_tests::dnsmasq::Dnsmasq;
use sentinel_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(20);

fn config(listen: u16, dns: SocketAddr, backend_port: u16) -> String {
    format!(
        r#"
observability {{
    logging {{ access-log #false; }}
}}
listeners {{
    listener "http" {{ address "127.0.0.1:{listen}"; }}
}}
upstreams {{
    upstream "app" {{
        discovery "dns" {{
            hostname "app.test"
            port {backend_port}
            resolver "{dns}"
            refresh-interval-secs 1
        }}
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/"; }}
        upstream "app"
    }}
}}
"#
    )
}

/// True when the next `n` answers all come from backend `name`.
async fn all_from(url: &str, name: &str, n: usize) -> bool {
    let c = client();
    for _ in 0..n {
        let Ok(r) = c.get(url).send().await else {
            return false;
        };
        if r.status() != 200 || r.text().await.unwrap_or_default() != name {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn traffic_follows_a_dns_change_and_survives_a_dns_outage() {
    let port = free_port();
    let a = Backend::start_on("a", format!("127.0.0.2:{port}").parse().unwrap()).await;
    let b = Backend::start_on("b", format!("127.0.0.3:{port}").parse().unwrap()).await;
    let mut dns = Dnsmasq::start(1);
    dns.set_hosts(&[("127.0.0.2", "app.test")]);
    let listen = free_port();
    let proxy = Sentinel::start(&config(listen, dns.addr(), port)).await;
    let url = format!("http://127.0.0.1:{listen}/");
    assert!(
        wait_for(T, || all_from(&url, "a", 3)).await,
        "traffic reaches the discovered target a; log:\n{}",
        proxy.logs()
    );
    dns.set_hosts(&[("127.0.0.3", "app.test")]);
    assert!(
        wait_for(T, || all_from(&url, "b", 5)).await,
        "traffic follows the DNS change to b; log:\n{}",
        proxy.logs()
    );
    // A reload starts from the discovered targets, not from none: traffic
    // goes on to b without a 503 in between.
    let log_len = proxy.logs().len();
    proxy.reload(&config(listen, dns.addr(), port));
    let reloaded = wait_for(T, || async {
        proxy.logs()[log_len..].contains("Configuration reload completed")
    })
    .await;
    assert!(reloaded, "reload; log:\n{}", proxy.logs());
    assert!(
        all_from(&url, "b", 5).await,
        "traffic after the reload; log:\n{}",
        proxy.logs()
    );
    let hits_a = a.hits();
    // DNS down: the last targets stay, marked stale, and keep serving.
    dns.stop();
    let stale = wait_for(T, || async {
        proxy
            .metrics()
            .await
            .lines()
            .any(|l| l.starts_with("sentinel_discovery_stale{") && l.ends_with(" 1"))
    })
    .await;
    assert!(stale, "stale metric; log:\n{}", proxy.logs());
    assert!(
        all_from(&url, "b", 10).await,
        "traffic keeps flowing to the last targets"
    );
    assert_eq!(a.hits(), hits_a);
    assert!(b.hits() >= 15);
}
