//! Consul discovery with the real client code against the Consul double
//! (sentinel_tests::consul): blocking queries, index rules, health from
//! checks, `passing`, tag, datacenter, ACL token, outage and recovery.

mod common;

use std::time::Duration;

use common::{addresses, assert_generations, start, upstream};
use sentinel_proto as pb;
use sentinel_tests::consul::{ConsulDouble, Instance};

const T: Duration = Duration::from_secs(15);
const HEALTHY: i32 = pb::TargetHealth::Healthy as i32;
const UNHEALTHY: i32 = pb::TargetHealth::Unhealthy as i32;

fn consul(
    double: &ConsulDouble,
    wait_secs: u64,
    edit: impl FnOnce(&mut pb::ConsulDiscovery),
) -> pb::Upstream {
    let mut c = pb::ConsulDiscovery {
        address: double.addr.to_string(),
        service: "web".into(),
        healthy_only: false,
        refresh_interval_ms: wait_secs * 1000,
        empty_grace_ms: Some(0),
        ..Default::default()
    };
    edit(&mut c);
    upstream("web", pb::discovery::Source::Consul(c))
}

fn health(d: &sentinel_discovery::Discovered) -> Vec<(String, i32)> {
    d.targets
        .iter()
        .map(|t| (t.address.clone(), t.health))
        .collect()
}

#[tokio::test]
async fn instances_added_removed_and_health_from_checks() {
    let double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    double.register(Instance::new("b", "web", "", 8081));
    double.register(Instance::new("x", "other", "127.0.0.9", 9000));
    let run = start(consul(&double, 30, |_| {}));
    // An empty service address means the node's address.
    let d = run
        .until_addresses(&["127.0.0.1:8081", "127.0.0.2:8080"], T)
        .await;
    assert!(d.targets.iter().all(|t| t.health == HEALTHY));
    double.set_check("a", "critical");
    let d = run
        .until("a unhealthy", T, |d| {
            d.targets.iter().any(|t| t.health == UNHEALTHY)
        })
        .await;
    assert_eq!(
        health(&d),
        [
            ("127.0.0.1:8081".to_string(), HEALTHY),
            ("127.0.0.2:8080".to_string(), UNHEALTHY)
        ]
    );
    double.deregister("b");
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    double.register(Instance::new("c", "web", "127.0.0.3", 8082));
    run.until_addresses(&["127.0.0.2:8080", "127.0.0.3:8082"], T)
        .await;
    assert_generations(&run);
}

#[tokio::test]
async fn healthy_only_asks_for_passing_instances() {
    let double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    double.register(Instance::new("b", "web", "127.0.0.3", 8080));
    double.set_check("b", "warning");
    let run = start(consul(&double, 30, |c| c.healthy_only = true));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    double.set_check("b", "passing");
    run.until_addresses(&["127.0.0.2:8080", "127.0.0.3:8080"], T)
        .await;
}

#[tokio::test]
async fn tag_and_datacenter_filter_instances() {
    let double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080).tag("v1"));
    double.register(Instance::new("b", "web", "127.0.0.3", 8080).tag("v2"));
    double.register(
        Instance::new("c", "web", "127.0.0.4", 8080)
            .tag("v1")
            .datacenter("dc2"),
    );
    let run = start(consul(&double, 30, |c| c.tag = "v1".into()));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    drop(run);
    let run = start(consul(&double, 30, |c| {
        c.tag = "v1".into();
        c.datacenter = "dc2".into();
    }));
    run.until_addresses(&["127.0.0.4:8080"], T).await;
}

#[tokio::test]
async fn a_blocking_query_returns_promptly_on_change() {
    let double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    // wait = 5 minutes: only a held query answering at the change explains
    // a set within seconds.
    let run = start(consul(&double, 300, |_| {}));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    let held = double.index();
    let blocked = sentinel_tests::wait_for(T, || {
        let q = double.queries();
        async move { q.last() == Some(&held) }
    })
    .await;
    assert!(
        blocked,
        "the client holds a query at index {held}: {:?}",
        double.queries()
    );
    double.register(Instance::new("b", "web", "127.0.0.3", 8080));
    run.until_addresses(
        &["127.0.0.2:8080", "127.0.0.3:8080"],
        Duration::from_secs(5),
    )
    .await;
    let q = double.queries();
    assert_eq!(q[0], 0, "the first query does not block");
    assert!(q.len() <= 4, "no polling while held: {q:?}");
}

#[tokio::test]
async fn the_index_is_reset_when_it_goes_backwards() {
    let double = ConsulDouble::start(None).await;
    for n in 0..5 {
        double.register(Instance::new(
            &format!("i{n}"),
            "web",
            "127.0.0.2",
            8080 + n,
        ));
    }
    let run = start(consul(&double, 1, |_| {}));
    run.until("5 targets", T, |d| d.targets.len() == 5).await;
    let before = double.index();
    // A snapshot restore: the index goes back, and the catalog changes.
    double.set_index(2);
    double.deregister("i0");
    run.until("4 targets", T, |d| d.targets.len() == 4).await;
    let reset = sentinel_tests::wait_for(T, || {
        let q = double.queries();
        async move {
            let seen_high = q.iter().position(|&i| i == before);
            seen_high.is_some_and(|p| q[p..].contains(&0))
        }
    })
    .await;
    assert!(
        reset,
        "a query with index 0 after the index went back: {:?}",
        double.queries()
    );
    // And blocking resumes from the new, lower index.
    double.register(Instance::new("z", "web", "127.0.0.3", 9999));
    run.until("5 targets again", T, |d| d.targets.len() == 5)
        .await;
}

#[tokio::test]
async fn the_acl_token_is_sent_and_a_missing_one_is_an_error() {
    let double = ConsulDouble::start(Some("s3cret")).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    // `${VAR:-default}` expands like every other `${VAR}` (the variable is
    // unset here, so the default is the token).
    let run = start(consul(&double, 30, |c| {
        c.token = "${SENTINEL_TEST_UNSET_CONSUL_TOKEN:-s3cret}".into()
    }));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    drop(run);
    let run = start(consul(&double, 30, |_| {}));
    let failed = sentinel_tests::wait_for(T, || {
        let s = run.discovery.status();
        async move {
            s.first()
                .is_some_and(|s| s.last_error.as_deref().is_some_and(|e| e.contains("403")))
        }
    })
    .await;
    assert!(failed, "{:?}", run.discovery.status());
    assert!(
        run.all().is_empty(),
        "nothing is sent before a first success"
    );
}

#[tokio::test]
async fn consul_down_keeps_targets_marked_stale_and_back_is_fresh() {
    let mut double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    let run = start(consul(&double, 30, |_| {}));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    double.stop();
    let d = run.until("a stale set", T, |d| d.stale).await;
    assert_eq!(addresses(&d), ["127.0.0.2:8080"]);
    assert!(run.discovery.status()[0].stale);
    double.register(Instance::new("b", "web", "127.0.0.3", 8080));
    double.start_again().await;
    let d = run
        .until_addresses(&["127.0.0.2:8080", "127.0.0.3:8080"], T)
        .await;
    assert!(d.error.is_none());
    assert!(run.all().iter().all(|d| !d.targets.is_empty()));
    assert_generations(&run);
}

#[tokio::test]
async fn reconcile_keeps_unchanged_sources_restarts_changed_ones_and_stops_removed_ones() {
    let double = ConsulDouble::start(None).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080).tag("v1"));
    double.register(Instance::new("b", "web", "127.0.0.3", 8080).tag("v2"));
    let spec = consul(&double, 30, |_| {});
    let run = start(spec.clone());
    run.until_addresses(&["127.0.0.2:8080", "127.0.0.3:8080"], T)
        .await;
    let queries = double.queries().len();
    // The same block again (a config apply or rollback that keeps it): the
    // source keeps running; no new non-blocking query, no new set.
    run.discovery.reconcile(std::slice::from_ref(&spec));
    assert_eq!(run.discovery.status()[0].generation, 1);
    assert_eq!(
        double.queries()[queries..]
            .iter()
            .filter(|&&i| i == 0)
            .count(),
        0
    );
    // A changed block restarts the source with the new filter.
    let tagged = consul(&double, 30, |c| c.tag = "v2".into());
    run.discovery.reconcile(&[tagged]);
    let d = run.until_addresses(&["127.0.0.3:8080"], T).await;
    // The restarted source continues the upstream's generations.
    assert_eq!(d.generation, 2);
    assert_generations(&run);
    // An upstream without discovery: the source stops, its status goes.
    run.discovery.reconcile(&[pb::Upstream {
        name: "web".into(),
        ..Default::default()
    }]);
    assert!(run.discovery.status().is_empty());
}

/// A CA and a server certificate for 127.0.0.1 it signed: (CA PEM, server
/// TLS config).
fn pki() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test consul ca");
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.pem().as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    (ca_pem, config)
}

#[tokio::test]
async fn https_address_is_verified_against_the_ca_file() {
    let (ca_pem, tls) = pki();
    let double = ConsulDouble::start_tls(None, tls).await;
    double.register(Instance::new("a", "web", "127.0.0.2", 8080));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let run = start(consul(&double, 30, |c| {
        c.address = double.url();
        c.ca_file = ca_file.display().to_string();
    }));
    run.until_addresses(&["127.0.0.2:8080"], T).await;
    drop(run);
    // Without the CA the certificate is not trusted: an error, no set.
    let run = start(consul(&double, 30, |c| c.address = double.url()));
    let failed = sentinel_tests::wait_for(T, || {
        let s = run.discovery.status();
        async move { s.first().is_some_and(|s| s.refreshes_failed > 0) }
    })
    .await;
    assert!(failed, "{:?}", run.discovery.status());
    assert!(run.all().is_empty());
}
