//! DNS discovery against a real dnsmasq (sentinel_tests::dnsmasq): A, AAAA
//! and SRV records, the record TTL bounding the refresh interval, and an
//! outage keeping the last targets (stale) until dnsmasq is back.

mod common;

use std::time::Duration;

use common::{addresses, assert_generations, start, upstream};
use sentinel_proto as pb;
use sentinel_tests::dnsmasq::{Dnsmasq, Srv};

const T: Duration = Duration::from_secs(15);

fn dns(
    dnsmasq: &Dnsmasq,
    hostname: &str,
    kind: pb::DnsRecordType,
    refresh_secs: u64,
) -> pb::Upstream {
    upstream(
        "api",
        pb::discovery::Source::Dns(pb::DnsDiscovery {
            hostname: hostname.into(),
            port: 8080,
            record_type: kind as i32,
            refresh_interval_ms: refresh_secs * 1000,
            resolver: dnsmasq.addr().to_string(),
            empty_grace_ms: Some(0),
        }),
    )
}

#[tokio::test]
async fn a_records_become_targets_and_a_short_ttl_refreshes_before_the_interval() {
    let dnsmasq = Dnsmasq::start(1);
    dnsmasq.set_hosts(&[("127.0.0.2", "api.test"), ("127.0.0.3", "api.test")]);
    // The refresh interval is 10 minutes: only the 1 s TTL can explain a
    // change seen within seconds.
    let run = start(dns(&dnsmasq, "api.test", pb::DnsRecordType::A, 600));
    let d = run
        .until_addresses(&["127.0.0.2:8080", "127.0.0.3:8080"], T)
        .await;
    assert!(d.targets.iter().all(|t| t.weight == 1));
    dnsmasq.set_hosts(&[("127.0.0.4", "api.test")]);
    run.until_addresses(&["127.0.0.4:8080"], T).await;
    assert_generations(&run);
    let status = run.discovery.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].targets, 1);
    assert!(status[0].refreshes_ok >= 2);
    assert!(status[0].last_success_unix_ms > 0);
}

#[tokio::test]
async fn a_long_ttl_is_capped_by_the_refresh_interval() {
    let dnsmasq = Dnsmasq::start(3600);
    dnsmasq.set_hosts(&[("127.0.0.2", "api.test")]);
    let run = start(dns(&dnsmasq, "api.test", pb::DnsRecordType::A, 1));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    dnsmasq.set_hosts(&[("127.0.0.5", "api.test")]);
    run.until_addresses(&["127.0.0.5:8080"], T).await;
}

#[tokio::test]
async fn aaaa_records_become_bracketed_targets() {
    let dnsmasq = Dnsmasq::start(1);
    dnsmasq.set_hosts(&[
        ("fd00::1", "api6.test"),
        ("fd00::2", "api6.test"),
        ("127.0.0.9", "api6.test"),
    ]);
    let run = start(dns(&dnsmasq, "api6.test", pb::DnsRecordType::Aaaa, 30));
    run.until_addresses(&["[fd00::1]:8080", "[fd00::2]:8080"], T)
        .await;
}

#[tokio::test]
async fn srv_records_give_port_and_weight_of_the_lowest_priority() {
    let mut dnsmasq = Dnsmasq::start(1);
    dnsmasq.set_hosts(&[
        ("127.0.0.5", "b1.test"),
        ("127.0.0.6", "b2.test"),
        ("127.0.0.7", "b3.test"),
    ]);
    let srv = |target: &str, port, priority, weight| Srv {
        name: "_http._tcp.api.test".into(),
        target: target.into(),
        port,
        priority,
        weight,
    };
    dnsmasq.set_srv(&[
        srv("b1.test", 8081, 1, 10),
        srv("b2.test", 8082, 1, 20),
        srv("b3.test", 8083, 2, 50),
    ]);
    let run = start(dns(
        &dnsmasq,
        "_http._tcp.api.test",
        pb::DnsRecordType::Srv,
        30,
    ));
    let d = run
        .until_addresses(&["127.0.0.5:8081", "127.0.0.6:8082"], T)
        .await;
    let weights: Vec<u32> = d.targets.iter().map(|t| t.weight).collect();
    assert_eq!(weights, [10, 20]);
    // The backup priority takes over when the first group is gone.
    dnsmasq.set_srv(&[srv("b3.test", 8083, 2, 50)]);
    let d = run.until_addresses(&["127.0.0.7:8083"], T).await;
    assert_eq!(d.targets[0].weight, 50);
}

#[tokio::test]
async fn dnsmasq_down_keeps_targets_marked_stale_and_back_is_fresh() {
    let mut dnsmasq = Dnsmasq::start(1);
    dnsmasq.set_hosts(&[("127.0.0.2", "api.test")]);
    let run = start(dns(&dnsmasq, "api.test", pb::DnsRecordType::A, 1));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    dnsmasq.stop();
    let d = run.until("a stale set", T, |d| d.stale).await;
    assert_eq!(
        addresses(&d),
        ["127.0.0.2:8080"],
        "an outage never empties the set"
    );
    assert!(d.error.is_some());
    let status = run.discovery.status();
    assert!(status[0].stale && status[0].last_error.is_some() && status[0].refreshes_failed >= 1);
    dnsmasq.restart();
    let d = run.until_addresses(&["127.0.0.2:8080"], T).await;
    assert!(d.error.is_none());
    assert!(run.all().iter().all(|d| !d.targets.is_empty()));
    assert_generations(&run);
}
