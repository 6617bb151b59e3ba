//! The fleet's record of each node against the real `sentinel-cp` binary
//! and a scripted proxy speaking the real gRPC stream: only the newest
//! session of a node changes its row, a killed replica's nodes stop being
//! reported connected, an ACK clears the NACK it supersedes (the NACK stays
//! in the node's events), a row the database refuses does not stall the
//! writer, and nodes not seen for `--node-expiry-secs` are listed but not
//! counted. The writer's bound is tested in-process with PostgreSQL stopped.

use std::time::Duration;

use sentinel_cp::fleet::{Epoch, NodeUpdate};
use sentinel_cp::store::writer::NodeWriter;
use sentinel_cp::store::{NodeChange, Store, StoreError};
use sentinel_proto as pb;
use sentinel_tests::{ControlPlane, Postgres, wait_for};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(target_port: u16) -> String {
    format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:8080\"; }}; }}\n\
         upstreams {{ upstream \"u\" {{ target \"127.0.0.1:{target_port}\"; }}; }}\n\
         routes {{ route \"r\" {{ upstream \"u\"; }}; }}\n"
    )
}

async fn apply(cp: &ControlPlane, source: &str) {
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": source }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    let r = http()
        .get(format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

async fn node(cp: &ControlPlane, id: &str) -> Value {
    let nodes = get(cp, "/v1/nodes").await;
    nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// A raw delta stream (the harness's), one gRPC connection each.
type Session = sentinel_tests::raw::RawStream;
use sentinel_tests::raw::RawStream;

async fn connect(url: String, id: &str, build: &str, held: Vec<pb::ResourceVersion>) -> Session {
    try_connect(url, id, build, held)
        .await
        .expect("the control plane accepts the stream")
}

async fn try_connect(
    url: String,
    id: &str,
    build: &str,
    held: Vec<pb::ResourceVersion>,
) -> Result<Session, tonic::Status> {
    Session::connect(url, id, build, held).await
}

/// The listener every NACK here names.
fn listener_l() -> Option<pb::ResourceRef> {
    Some(pb::ResourceRef {
        r#type: pb::ResourceType::Listener as i32,
        name: "l".into(),
    })
}

fn held(source: &str) -> Vec<pb::ResourceVersion> {
    sentinel_config::compile("x", source)
        .unwrap()
        .resources()
        .iter()
        .map(|r| pb::ResourceVersion {
            r#type: r.r#type,
            name: r.name.clone(),
            version: r.version.clone(),
        })
        .collect()
}

/// Connects and closes a throwaway node and waits until its end is
/// recorded: the writer keeps per-node order and flushes everything queued
/// before it, so every update recorded earlier is then in the database.
async fn barrier(cp: &ControlPlane, name: &str) {
    let s = connect(cp.grpc_url(), name, "test", vec![]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(cp, name).await["connected"] == true
        })
        .await,
        "{name} never recorded connected: {}",
        get(cp, "/v1/nodes").await
    );
    drop(s);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(cp, name).await["connected"] == false
        })
        .await,
        "{name} never recorded disconnected: {}",
        get(cp, "/v1/nodes").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_after_its_node_reconnected_changes_nothing() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp, &config(9001)).await;
    let mut first = connect(cp.grpc_url(), "n1", "test", vec![]).await;
    let r = first
        .next(Duration::from_secs(5))
        .await
        .expect("a snapshot");
    first.ack(&r).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "n1").await["acked_version"] == 1
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
    // The node reconnects (a new stream, same id) before its old stream ends.
    let _second = connect(cp.grpc_url(), "n1", "test", held(&config(9001))).await;
    drop(first);
    // Let the control plane see the first stream's end, then make sure the
    // writer has written everything queued until now.
    wait_for(Duration::from_secs(5), || async {
        cp.logs()
            .lines()
            .any(|l| l.contains("disconnected") && l.contains("n1"))
    })
    .await;
    barrier(&cp, "marker").await;
    let n = node(&cp, "n1").await;
    assert_eq!(
        n["connected"], true,
        "the live session was overwritten: {n}"
    );
    assert_eq!(n["acked_version"], 1, "{n}");
}

/// A proxy's hello names what it runs; that is recorded for the new
/// session like an ACK. (Its previous session's ACK can be lost: when the
/// new session's hello reaches the store first, the old session's rows are
/// no longer written — found by the truth model, seed 1795551304431341176.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_hello_says_the_node_runs_is_recorded() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp, &config(9001)).await;
    apply(&cp, &config(9002)).await;
    let v1 = sentinel_config::compile("x", &config(9001)).unwrap();
    // The node runs v1 (from its cache, or its last session) and does not
    // answer the push of v2.
    let _s = RawStream::connect_holding(
        cp.grpc_url(),
        "n1",
        "test",
        held(&config(9001)),
        (1, v1.config_hash()),
    )
    .await
    .unwrap();
    let recorded = wait_for(Duration::from_secs(10), || async {
        node(&cp, "n1").await["acked_version"] == 1
    })
    .await;
    let n = node(&cp, "n1").await;
    assert!(recorded, "{n}");
    assert_eq!(n["acked_hash"], v1.config_hash().as_str(), "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_clears_the_nack_it_supersedes_and_the_nack_stays_in_the_events() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp, &config(9001)).await;
    let mut s = connect(cp.grpc_url(), "n1", "test", vec![]).await;
    let r = s.next(Duration::from_secs(5)).await.expect("v1");
    s.ack(&r).await;
    apply(&cp, &config(9002)).await;
    let r = s.next(Duration::from_secs(5)).await.expect("v2");
    assert_eq!(r.version_number, 2);
    s.nack(
        &r,
        listener_l(),
        "cannot bind 127.0.0.1:8080: address in use",
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "n1").await["last_nack"]["version"] == 2
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
    assert_eq!(get(&cp, "/v1/status").await["nacks"][0]["node"], "n1");

    // The node reconnects (new session) holding v1 and accepts v2.
    drop(s);
    let mut again = connect(cp.grpc_url(), "n1", "test", held(&config(9001))).await;
    let r = again.next(Duration::from_secs(5)).await.expect("v2 again");
    assert_eq!(r.version_number, 2);
    again.ack(&r).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "n1").await["acked_version"] == 2
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
    let n = node(&cp, "n1").await;
    assert!(n["last_nack"].is_null(), "stale NACK shown: {n}");
    let status = get(&cp, "/v1/status").await;
    assert_eq!(status["nacks"], json!([]), "{status}");
    assert_eq!(status["regions"]["eu"]["on_active"], 1, "{status}");

    // The history keeps it.
    let events = get(&cp, "/v1/nodes/n1/events").await;
    let list = events["events"].as_array().expect("events");
    assert_eq!(list.len(), 1, "{events}");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["resource"], "listener \"l\"");
    assert_eq!(
        list[0]["error"],
        "cannot bind 127.0.0.1:8080: address in use"
    );
    assert_eq!(
        get(&cp, "/v1/nodes/nobody/events").await["events"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_does_not_stall_node_state() {
    let pg = Postgres::start();
    let cp = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    apply(&cp, &config(9001)).await;
    // NUL bytes: PostgreSQL refuses them in TEXT. A hello carrying them is
    // refused at the stream edge, with the reason ...
    let refused = try_connect(cp.grpc_url(), "poison", "0.1\0evil", vec![]).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    // ... and a NACK's error text is cleaned there before it is queued.
    let mut poison = connect(cp.grpc_url(), "poison", "0.1", vec![]).await;
    let good = connect(cp.grpc_url(), "good-1", "0.1", vec![]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "good-1").await["connected"] == true
        })
        .await,
        "node state stalled: {}\n{}",
        get(&cp, "/v1/nodes").await,
        cp.logs()
    );
    let r = poison.next(Duration::from_secs(5)).await.expect("v1");
    poison.nack(&r, listener_l(), "bad \0 byte\u{7}").await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "poison").await["last_nack"]["version"] == 1
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
    let p = node(&cp, "poison").await;
    assert!(
        !p["build_version"].as_str().unwrap_or("\0").contains('\0')
            && !p["last_nack"]["error"]
                .as_str()
                .unwrap_or("\0")
                .contains('\0'),
        "{p}"
    );
    // And the writer goes on.
    drop(good);
    let _later = connect(cp.grpc_url(), "good-2", "0.1", vec![]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "good-2").await["connected"] == true
                && node(&cp, "good-1").await["connected"] == false
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_nodes_are_reported_disconnected() {
    let pg = Postgres::start();
    let mut a =
        ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &["--replica", "a"]).await;
    let b = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &["--replica", "b"]).await;
    let _s = connect(a.grpc_url(), "n1", "test", vec![]).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&b, "n1").await["connected"] == true
        })
        .await,
        "{}",
        get(&b, "/v1/nodes").await
    );
    assert_eq!(node(&b, "n1").await["replica"], "a");
    a.kill();
    // Replica a never writes the end of the stream; its heartbeat stops.
    assert!(
        wait_for(Duration::from_secs(25), || async {
            node(&b, "n1").await["connected"] == false
        })
        .await,
        "a dead replica's node is still reported connected: {}",
        get(&b, "/v1/nodes").await
    );
    let status = get(&b, "/v1/status").await;
    assert_eq!(status["nodes"]["connected"], 0, "{status}");
    assert_eq!(status["disconnected"][0]["node"], "n1", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_not_seen_within_the_expiry_are_listed_but_not_counted() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &["--node-expiry-secs", "1"]).await;
    apply(&cp, &config(9001)).await;
    let mut live = connect(cp.grpc_url(), "live", "test", vec![]).await;
    let r = live.next(Duration::from_secs(5)).await.expect("v1");
    live.ack(&r).await;
    barrier(&cp, "gone").await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            node(&cp, "gone").await["expired"] == true
        })
        .await,
        "{}",
        get(&cp, "/v1/nodes").await
    );
    // A connected node never expires, however long ago its last message.
    let status = get(&cp, "/v1/status").await;
    assert_eq!(node(&cp, "live").await["expired"], false);
    assert_eq!(status["nodes"]["total"], 1, "{status}");
    assert_eq!(status["nodes"]["expired"], 1, "{status}");
    assert_eq!(status["regions"]["eu"]["nodes"], 1, "{status}");
    assert_eq!(status["disconnected"], json!([]), "{status}");
}

/// 100k updates over 100 nodes while PostgreSQL is down: the queue holds
/// one entry per node, and the last state of every node is written once
/// the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_node_state_is_bounded_by_nodes_while_the_database_is_down() {
    let mut pg = Postgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    let writer = NodeWriter::spawn(store.clone(), "r1".to_string());
    pg.stop();
    const NODES: usize = 100;
    let epochs: Vec<Epoch> = (0..NODES).map(|_| Epoch::next()).collect();
    for (i, epoch) in epochs.iter().enumerate() {
        writer.record(NodeUpdate::Connected {
            node: pb::Node {
                id: format!("n{i}"),
                region: "eu".into(),
                zone: "a".into(),
                build_version: "0.1".into(),
                labels: vec![],
            },
            epoch: *epoch,
        });
    }
    let mut max_queued = 0;
    for round in 0..1000i64 {
        for (i, epoch) in epochs.iter().enumerate() {
            let id = format!("n{i}");
            if round % 100 == 7 {
                writer.record(NodeUpdate::Nack {
                    id,
                    epoch: *epoch,
                    version: round,
                    hash: format!("h{round}"),
                    resource: "listener \"l\"".into(),
                    error: "cannot bind".into(),
                });
            } else {
                writer.record(NodeUpdate::Ack {
                    id,
                    epoch: *epoch,
                    version: round,
                    hash: format!("h{round}"),
                });
            }
        }
        max_queued = max_queued.max(writer.queued());
    }
    assert!(
        max_queued <= NODES,
        "{max_queued} entries queued for {NODES} nodes"
    );
    pg.restart();
    let written = wait_for(Duration::from_secs(30), || async {
        store.heartbeat("r1").await.is_ok()
            && store.nodes().await.is_ok_and(|nodes| {
                nodes.len() == NODES
                    && nodes
                        .iter()
                        .all(|n| n.connected && n.acked_version == Some(999))
            })
    })
    .await;
    assert!(written, "{:?}", store.nodes().await.map(|n| n.len()));
    let n = &store.nodes().await.unwrap()[0];
    assert_eq!(n.acked_hash.as_deref(), Some("h999"));
    assert!(n.last_nack.is_none(), "v907's NACK was superseded: {n:?}");
    let events = store.node_events(&n.id, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![907, 807, 707, 607, 507, 407, 307, 207, 107, 7],
        "every NACK is in the history, newest first"
    );
    assert_eq!(writer.queued(), 0);
}

/// What the writer's poison-row handling relies on: PostgreSQL refusing a
/// NUL byte is a refused row (`Other`), not an outage (`Unavailable`), so
/// the writer retries it alone and drops it instead of retrying forever.
/// (The writer sanitises text first; this is the raw store underneath.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_a_nul_byte_is_a_bad_row_not_an_outage() {
    let pg = Postgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    let hello = |id: &str, build: &str| {
        let mut c = NodeChange::from_update(
            NodeUpdate::Connected {
                node: pb::Node {
                    id: id.into(),
                    region: "eu".into(),
                    ..Default::default()
                },
                epoch: Epoch::next(),
            },
            0,
        );
        if let Some(h) = c.hello.as_mut() {
            h.build_version = build.into();
        }
        c
    };
    let poison = hello("poison", "0.1\0evil");
    let good = hello("good", "0.1");
    let refused = store
        .write_node_changes(&[good.clone(), poison.clone()], "r1")
        .await;
    assert!(matches!(refused, Err(StoreError::Other(_))), "{refused:?}");
    assert!(store.nodes().await.unwrap().is_empty(), "all or nothing");
    store.write_node_changes(&[good], "r1").await.unwrap();
    assert_eq!(store.nodes().await.unwrap().len(), 1);
}
