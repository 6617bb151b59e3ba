//! Discovery inside the control plane, driven through its seam: the
//! `Sender<Discovered>` that `sentinel_cp::discovery::intake` returns (what
//! the discovery leader hands to `sentinel_discovery::Discovery::new`), and
//! the `discovered_endpoints` table every replica loads.
//!
//! The configurations come from `sentinel_tests::discovered_config`: KDL
//! with static targets, then a `discovery "dns"` block on upstream `svc`
//! (and an empty `Endpoints` resource), exactly what the compiler emits for
//! a discovered upstream; once the sources land, real KDL works the same.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sentinel_cp::changes::ActiveConfig;
use sentinel_cp::discovery::{self, endpoint_set};
use sentinel_cp::fleet::Fleet;
use sentinel_cp::store::{NewVersion, Store};
use sentinel_discovery::{Discovered, SourceKind};
use sentinel_proto as pb;
use sentinel_tests::{ControlPlane, Postgres, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");
const ENDPOINTS: i32 = pb::ResourceType::Endpoints as i32;

/// A configuration with `routes` routes, a static upstream `web` and an
/// upstream `svc` whose targets come from DNS discovery.
fn discovered_version(routes: usize, message: &str) -> NewVersion {
    let (source, resources, hash) = sentinel_tests::discovered_config(routes);
    NewVersion {
        hash,
        source,
        file_name: "t.kdl".into(),
        resources,
        actor: "test".into(),
        author: "test".into(),
        message: message.into(),
        expect_version: None,
        trace: Default::default(),
    }
}

fn target(address: &str) -> pb::Target {
    pb::Target {
        address: address.into(),
        weight: 1,
        health: pb::TargetHealth::Healthy as i32,
        zone: String::new(),
    }
}

fn discovered(upstream: &str, generation: u64, addresses: &[&str]) -> Discovered {
    Discovered {
        upstream: upstream.into(),
        source: SourceKind::Dns,
        targets: addresses.iter().map(|a| target(a)).collect(),
        stale: false,
        generation,
        last_success_unix_ms: 1_700_000_000_000,
        error: None,
    }
}

async fn sqlite(dir: &tempfile::TempDir) -> Store {
    Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("cp.db").display()
    ))
    .await
    .unwrap()
}

/// The addresses in `config`'s `Endpoints` resource of `upstream`.
fn addresses(config: &ActiveConfig, upstream: &str) -> Vec<String> {
    let r = config.get(ENDPOINTS, upstream).expect("endpoints resource");
    pb::Endpoints::decode(r.body.clone())
        .unwrap()
        .targets
        .into_iter()
        .map(|t| t.address)
        .collect()
}

/// A fleet on a fresh SQLite store with `routes` routes applied and its
/// discovery intake started.
async fn fleet_with(
    dir: &tempfile::TempDir,
    routes: usize,
) -> (Arc<Fleet>, tokio::sync::mpsc::Sender<Discovered>) {
    let store = sqlite(dir).await;
    store.apply(discovered_version(routes, "v1")).await.unwrap();
    let fleet = Fleet::new(store, "r1".into(), "eu".into());
    fleet.refresh().await.unwrap();
    let tx = discovery::intake(Arc::clone(&fleet));
    (fleet, tx)
}

async fn wait_for_hash_change(fleet: &Fleet, from: &str) -> Arc<ActiveConfig> {
    assert!(
        wait_for(Duration::from_secs(10), || async {
            fleet.current().hash != from
        })
        .await,
        "the effective configuration did not change"
    );
    fleet.current()
}

/// The encoded size of the response a proxy on `from` gets for `to`.
fn response_bytes(fleet: &Fleet, from: &ActiveConfig, to: &ActiveConfig) -> usize {
    let d = fleet.delta_between(from, to);
    sentinel_cp::stream::chunk(&d, "n-1", to, sentinel_cp::stream::CHUNK_BYTES)
        .iter()
        .map(|c| c.encoded_len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_targets_reach_proxies_as_an_endpoints_only_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, tx) = fleet_with(&dir, 10).await;
    let before = fleet.current();
    assert!(addresses(&before, "svc").is_empty());

    tx.send(discovered("svc", 1, &["10.0.0.2:8080", "10.0.0.1:8080"]))
        .await
        .unwrap();
    let after = wait_for_hash_change(&fleet, &before.hash).await;

    // Same stored version, new effective hash that the proxy can verify.
    assert_eq!(after.number, before.number);
    let recomputed = sentinel_config::config_hash(
        after
            .resources
            .iter()
            .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
    );
    assert_eq!(after.hash, recomputed);
    assert_eq!(
        addresses(&after, "svc"),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"],
        "sorted by address"
    );
    // The version is the config crate's resource version of that body.
    let r = after.get(ENDPOINTS, "svc").unwrap();
    assert_eq!(r.version, sentinel_config::sha256_hex(&r.body));

    // The delta a proxy on the stored version gets: the one Endpoints resource.
    let d = fleet.delta_between(&before, &after);
    assert!(d.removed.is_empty());
    let names: Vec<(i32, &str)> = d
        .resources
        .iter()
        .map(|r| (r.r#type, r.name.as_str()))
        .collect();
    assert_eq!(names, vec![(ENDPOINTS, "svc")]);
    // The static upstream's endpoints are untouched.
    assert_eq!(addresses(&after, "web"), vec!["127.0.0.1:2"]);

    // No config version was created; the set was stored.
    assert_eq!(fleet.store.versions(10).await.unwrap().len(), 1);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            fleet
                .store
                .endpoint_sets()
                .await
                .unwrap()
                .iter()
                .any(|s| s.upstream == "svc" && s.generation == 1)
        })
        .await,
        "the set reaches the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_delta_bytes_do_not_grow_with_the_config() {
    let mut sizes = Vec::new();
    for routes in [10, 2_000] {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, tx) = fleet_with(&dir, routes).await;
        let before = fleet.current();
        tx.send(discovered("svc", 1, &["10.0.0.1:8080"]))
            .await
            .unwrap();
        let one = wait_for_hash_change(&fleet, &before.hash).await;
        tx.send(discovered("svc", 2, &["10.0.0.1:8080", "10.0.0.9:8080"]))
            .await
            .unwrap();
        let two = wait_for_hash_change(&fleet, &one.hash).await;
        let full = response_bytes(&fleet, &ActiveConfig::empty(), &two);
        let change = response_bytes(&fleet, &one, &two);
        eprintln!("{routes} routes: full config {full} bytes, one-target change {change} bytes");
        sizes.push((full, change));
    }
    assert!(sizes[1].0 > 50 * sizes[0].0 / 10, "the big config is big");
    assert_eq!(
        sizes[0].1, sizes[1].1,
        "the bytes of an endpoint change are independent of the number of routes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_keeps_the_discovered_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, tx) = fleet_with(&dir, 10).await;
    let v1 = fleet.current();
    tx.send(discovered("svc", 1, &["10.0.0.1:8080"]))
        .await
        .unwrap();
    wait_for_hash_change(&fleet, &v1.hash).await;

    fleet
        .store
        .apply(discovered_version(20, "v2"))
        .await
        .unwrap();
    assert!(fleet.refresh().await.unwrap());
    let v2 = fleet.current();
    assert_eq!(v2.number, 2);
    assert_eq!(addresses(&v2, "svc"), vec!["10.0.0.1:8080"]);

    fleet.store.rollback(None, "test", "back").await.unwrap();
    assert!(fleet.refresh().await.unwrap());
    let back = fleet.current();
    assert_eq!(back.number, 1);
    assert_eq!(
        addresses(&back, "svc"),
        vec!["10.0.0.1:8080"],
        "the rollback did not roll back discovered endpoints"
    );
    // From v2 to v1 the proxy gets route changes, but not the endpoints.
    let d = fleet.delta_between(&v2, &back);
    assert!(!d.resources.iter().any(|r| r.r#type == ENDPOINTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_coalesced_into_few_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, tx) = fleet_with(&dir, 10).await;
    let mut rx = fleet.subscribe();
    rx.borrow_and_update();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let start = std::time::Instant::now();
    for g in 1..=1_000u64 {
        let addr = format!("10.0.{}.{}:8080", g / 250, g % 250);
        tx.send(discovered("svc", g, &[addr.as_str()]))
            .await
            .unwrap();
    }
    let sent_in = start.elapsed();
    assert!(
        wait_for(Duration::from_secs(10), || async {
            addresses(&fleet.current(), "svc") == vec!["10.0.4.0:8080".to_string()]
        })
        .await,
        "the last set wins"
    );
    // One rebuild per 50 ms at most while the burst lasts, plus the last.
    let bound = (sent_in.as_millis() / 50) as usize + 3;
    let rebuilds = seen.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("1000 sets in {sent_in:?} → {rebuilds} publications (bound {bound})");
    assert!(rebuilds <= bound, "{rebuilds} publications for 1000 sets");
    assert!(rebuilds < 100);
}

/// Store round trip and history pruning on both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_sets_round_trip_and_history_is_pruned() {
    async fn check(store: Store) {
        assert!(store.endpoint_sets().await.unwrap().is_empty());
        for g in 1..=130u64 {
            let mut d = discovered("svc", g, &["10.0.0.1:8080", "10.0.0.2:8080"]);
            d.stale = g == 130;
            d.error = (g == 130).then(|| "SERVFAIL".to_string());
            store
                .write_endpoint_sets(&[endpoint_set(d, 1_000 + g as i64)], 100)
                .await
                .unwrap();
        }
        store
            .write_endpoint_sets(&[endpoint_set(discovered("other", 7, &[]), 5)], 100)
            .await
            .unwrap();
        let sets = store.endpoint_sets().await.unwrap();
        assert_eq!(sets.len(), 2);
        let svc = &sets[1];
        let mut expected = discovered("svc", 130, &["10.0.0.1:8080", "10.0.0.2:8080"]);
        expected.stale = true;
        expected.error = Some("SERVFAIL".into());
        assert_eq!(*svc, endpoint_set(expected, 1_130), "round trip");
        assert_eq!(svc.resource.body, Bytes::from(svc.resource.body.to_vec()));
        let history = store.endpoint_history("svc", 1_000).await.unwrap();
        assert_eq!(history.len(), 100, "pruned to the newest 100");
        assert_eq!(history[0].generation, 130);
        assert_eq!(history[99].generation, 31);
        assert_eq!(history[0].source, "dns");
        assert_eq!(history[0].hash, svc.hash());
        assert_eq!(store.endpoint_history("other", 10).await.unwrap().len(), 1);
    }
    let dir = tempfile::tempdir().unwrap();
    check(sqlite(&dir).await).await;
    let pg = Postgres::start();
    let store = Store::connect(&pg.url())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    check(store).await;
}

// === real binaries ===

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn discovery_status(cp: &ControlPlane) -> Option<sentinel_api::DiscoveryStatus> {
    let r = http()
        .get(format!("{}/v1/discovery", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn is_leader(cp: &ControlPlane) -> Option<bool> {
    discovery_status(cp).await.map(|s| s.leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_discovery_and_another_takes_over_when_it_dies() {
    let pg = Postgres::start();
    let mut a = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    let b = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            matches!(
                (is_leader(&a).await, is_leader(&b).await),
                (Some(true), Some(false)) | (Some(false), Some(true))
            )
        })
        .await,
        "exactly one replica leads\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );
    // Stays exactly one for a while (no flapping, no second leader).
    for _ in 0..10 {
        let (x, y) = (is_leader(&a).await, is_leader(&b).await);
        assert_ne!(x, y, "exactly one leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut leader, follower) = if is_leader(&a).await == Some(true) {
        (a, b)
    } else {
        (b, a)
    };
    leader.kill();
    let killed = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || async {
            is_leader(&follower).await == Some(true)
        })
        .await,
        "the other replica leads within 5 s of the leader's death\n{}",
        follower.logs()
    );
    eprintln!("fail-over took {:?}", killed.elapsed());
    // With SQLite the one process always leads.
    a = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            is_leader(&a).await == Some(true)
        })
        .await
    );
}

/// A set stored by the leader reaches a proxy on any replica as an
/// endpoints-only delta: the replica loads it (NOTIFY) and overlays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_endpoint_set_reaches_a_proxy_as_an_endpoints_only_delta() {
    let pg = Postgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    store.apply(discovered_version(50, "v1")).await.unwrap();
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        &pg.url(),
        &["--keepalive-secs", "1"],
    )
    .await;
    let mut proxy = sentinel_tests::raw::RawStream::connect(cp.grpc_url(), "p1", "test", vec![])
        .await
        .unwrap();
    let full = proxy
        .next(Duration::from_secs(10))
        .await
        .expect("the full config");
    assert_eq!(full.version_number, 1);
    proxy.ack(&full).await;

    let set = endpoint_set(
        discovered("svc", 1, &["10.0.0.1:8080", "10.0.0.2:8080"]),
        sentinel_cp::store::now_ms(),
    );
    store
        .write_endpoint_sets(std::slice::from_ref(&set), 100)
        .await
        .unwrap();
    let delta = proxy
        .next(Duration::from_secs(10))
        .await
        .expect("an endpoints delta");
    assert_eq!(delta.version_number, 1, "no new config version");
    assert_ne!(delta.config_version, full.config_version);
    assert!(delta.removed.is_empty());
    assert_eq!(delta.resources.len(), 1);
    assert_eq!(delta.resources[0].r#type, ENDPOINTS);
    assert_eq!(delta.resources[0].name, "svc");
    assert_eq!(delta.resources[0].version, set.hash());
    proxy.ack(&delta).await;

    // /v1/discovery needs a token with the read role.
    let anonymous = http()
        .get(format!("{}/v1/discovery", cp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // /v1/discovery shows the set and the proxy on it.
    assert!(
        wait_for(Duration::from_secs(10), || async {
            discovery_status(&cp).await.is_some_and(|s| {
                s.upstreams.iter().any(|u| {
                    u.upstream == "svc"
                        && u.generation == 1
                        && u.targets.len() == 2
                        && u.targets[0].health == "healthy"
                        && u.hash == set.hash()
                        && u.nodes_current == 1
                })
            })
        })
        .await,
        "{:?}",
        discovery_status(&cp).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_never_replaces_the_leaders_newer_set_but_followers_take_the_stored_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _tx) = fleet_with(&dir, 2).await;
    let own = endpoint_set(discovered("svc", 5, &["10.0.0.5:8080"]), 2_000);
    assert_eq!(fleet.overlay_endpoints([own.clone()]).len(), 1);
    // Written earlier (or by a replica whose clock is behind).
    let stored = endpoint_set(discovered("svc", 4, &["10.0.0.4:8080"]), 1_000);
    assert!(
        fleet.overlay_stored([stored.clone()], true).is_empty(),
        "the leader keeps its own newer set"
    );
    assert_eq!(fleet.endpoint_sets()[0].generation, 5);
    assert_eq!(
        fleet.overlay_stored([stored.clone()], false).len(),
        1,
        "a follower takes what the store says"
    );
    assert_eq!(fleet.endpoint_sets()[0].generation, 4);
    // The same set again changes nothing.
    assert!(fleet.overlay_stored([stored], false).is_empty());
}
