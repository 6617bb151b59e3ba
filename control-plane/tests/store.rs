//! The store against both backends: a throwaway PostgreSQL cluster and an
//! SQLite file. Every test body runs on each.

use sentinel_cp::fleet::{Epoch, NodeUpdate};
use sentinel_cp::store::{ApplyOutcome, NewVersion, Store, StoreError};
use sentinel_proto as pb;
use sentinel_tests::Postgres;

fn version(port: u16, author: &str, message: &str) -> NewVersion {
    let doc = format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:{port}\"; }}; }}\nupstreams {{ upstream \"u\" {{ target \"127.0.0.1:9\"; }}; }}\nroutes {{ route \"r\" {{ upstream \"u\"; }}; }}"
    );
    let snapshot = sentinel_config::compile("t.kdl", &doc).unwrap();
    NewVersion {
        hash: snapshot.config_hash(),
        source: doc,
        file_name: "t.kdl".into(),
        resources: snapshot.resources(),
        actor: author.into(),
        author: author.into(),
        message: message.into(),
        expect_version: None,
        trace: Default::default(),
    }
}

async fn both(test: impl AsyncFn(Store)) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("connecting sqlite");
    let sqlite = Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("t.db").display()
    ))
    .await
    .unwrap();
    eprintln!("connected sqlite");
    test(sqlite).await;
    let pg = Postgres::start();
    let store = Store::connect(&pg.url())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    test(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_versioned_idempotent_and_optimistic() {
    both(async |store: Store| {
        eprintln!("a");
        assert!(store.active().await.unwrap().is_none());
        eprintln!("b");
        let first = store.apply(version(1, "alice", "first")).await.unwrap();
        assert_eq!(
            first,
            ApplyOutcome::Created {
                version: 1,
                previous: None
            }
        );
        eprintln!("c");
        let same = store.apply(version(1, "bob", "again")).await.unwrap();
        eprintln!("d");
        assert_eq!(same, ApplyOutcome::Unchanged { version: 1 });
        let mut v2 = version(2, "alice", "second");
        v2.expect_version = Some(1);
        assert_eq!(
            store.apply(v2).await.unwrap(),
            ApplyOutcome::Created {
                version: 2,
                previous: Some(1)
            }
        );
        let mut stale = version(3, "carol", "stale");
        stale.expect_version = Some(1);
        assert!(matches!(
            store.apply(stale).await,
            Err(StoreError::Conflict(_))
        ));
        let active = store.active().await.unwrap().unwrap();
        assert_eq!(active.record.number, 2);
        assert_eq!(active.resources, version(2, "", "").resources);
        assert_eq!(store.versions(10).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_recorded_undoable_and_deletes_nothing() {
    both(async |store: Store| {
        for p in 1..=3 {
            store.apply(version(p, "alice", "v")).await.unwrap();
        }
        assert_eq!(
            store.rollback(None, "ops", "bad deploy").await.unwrap(),
            (3, 2)
        );
        // Undo: the previous of a rollback is what it rolled back from.
        assert_eq!(store.rollback(None, "ops", "undo").await.unwrap(), (2, 3));
        assert_eq!(
            store.rollback(Some(1), "ops", "to one").await.unwrap(),
            (3, 1)
        );
        assert!(matches!(
            store.rollback(Some(1), "ops", "").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.rollback(Some(99), "ops", "").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.active().await.unwrap().unwrap().record.number, 1);
        let history = store.activations(100).await.unwrap();
        let kinds: Vec<&str> = history.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "rollback", "rollback", "rollback", "apply", "apply", "apply"
            ]
        );
        assert_eq!(
            store.versions(100).await.unwrap().len(),
            3,
            "nothing deleted"
        );
        assert!(!store.audit_log(100).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_shaped_strings_are_stored_verbatim() {
    both(async |store: Store| {
        let author = "Robert'); DROP TABLE config_versions;--";
        let message = "x' OR '1'='1\"; DELETE FROM nodes; -- \\ $1 ?";
        store.apply(version(1, author, message)).await.unwrap();
        let v = store.version(1).await.unwrap();
        assert_eq!(v.record.author, author);
        assert_eq!(v.record.message, message);
        assert_eq!(store.versions(10).await.unwrap().len(), 1);
        let node = pb::Node {
            id: "n'; DROP TABLE nodes;--".into(),
            region: "eu".into(),
            ..Default::default()
        };
        let epoch = Epoch::next();
        store
            .write_node_updates(
                &[NodeUpdate::Connected {
                    node: node.clone(),
                    epoch,
                }],
                "r1",
            )
            .await
            .unwrap();
        assert_eq!(store.nodes().await.unwrap()[0].id, node.id);
    })
    .await;
}

fn hello(id: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        region: "eu".into(),
        zone: "a".into(),
        build_version: "0.1".into(),
        labels: vec![],
    }
}

fn ack(id: &str, epoch: Epoch, version: i64) -> NodeUpdate {
    NodeUpdate::Ack {
        id: id.into(),
        epoch,
        version,
        hash: format!("hash{version}"),
    }
}

fn nack(id: &str, epoch: Epoch, version: i64) -> NodeUpdate {
    NodeUpdate::Nack {
        id: id.into(),
        epoch,
        version,
        hash: format!("hash{version}"),
        resource: "listener \"l\"".into(),
        error: "cannot bind".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_acks_nacks_and_tokens() {
    both(async |store: Store| {
        store.heartbeat("replica-a").await.unwrap();
        let e1 = Epoch::next();
        let updates = [
            NodeUpdate::Connected {
                node: hello("p1"),
                epoch: e1,
            },
            ack("p1", e1, 4),
            nack("p1", e1, 5),
        ];
        store
            .write_node_updates(&updates, "replica-a")
            .await
            .unwrap();
        let n = &store.nodes().await.unwrap()[0];
        assert!(n.connected);
        assert_eq!(
            (n.acked_version, n.acked_hash.as_deref()),
            (Some(4), Some("hash4"))
        );
        let last = n.last_nack.clone().unwrap();
        assert_eq!(
            (last.version, last.resource.as_str(), last.error.as_str()),
            (5, "listener \"l\"", "cannot bind")
        );
        store
            .write_node_updates(
                &[NodeUpdate::Disconnected {
                    id: "p1".into(),
                    epoch: e1,
                }],
                "replica-a",
            )
            .await
            .unwrap();
        assert!(!store.nodes().await.unwrap()[0].connected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_session_changes_a_node() {
    both(async |store: Store| {
        store.heartbeat("a").await.unwrap();
        store.heartbeat("b").await.unwrap();
        let (old, new) = (Epoch::next(), Epoch::next());
        let connected = |epoch| NodeUpdate::Connected {
            node: hello("p1"),
            epoch,
        };
        store
            .write_node_updates(&[connected(old), ack("p1", old, 1)], "a")
            .await
            .unwrap();
        // Reconnected on replica b; then a's old stream ends and a late ACK
        // and NACK of it arrive.
        store
            .write_node_updates(&[connected(new)], "b")
            .await
            .unwrap();
        store
            .write_node_updates(
                &[
                    ack("p1", old, 7),
                    nack("p1", old, 8),
                    NodeUpdate::Disconnected {
                        id: "p1".into(),
                        epoch: old,
                    },
                ],
                "a",
            )
            .await
            .unwrap();
        let n = &store.nodes().await.unwrap()[0];
        assert!(n.connected, "{n:?}");
        assert_eq!((n.replica.as_str(), n.acked_version), ("b", Some(1)));
        assert!(n.last_nack.is_none(), "{n:?}");
        // A hello of the older session written late changes nothing either.
        store
            .write_node_updates(&[connected(old)], "a")
            .await
            .unwrap();
        assert_eq!(store.nodes().await.unwrap()[0].replica, "b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_that_or_a_later_version_clears_the_nack() {
    both(async |store: Store| {
        store.heartbeat("a").await.unwrap();
        let (e1, e2) = (Epoch::next(), Epoch::next());
        let connected = |epoch| NodeUpdate::Connected {
            node: hello("p1"),
            epoch,
        };
        store
            .write_node_updates(&[connected(e1), ack("p1", e1, 1), nack("p1", e1, 2)], "a")
            .await
            .unwrap();
        // An ACK of an older version leaves the NACK current.
        store
            .write_node_updates(&[connected(e2), ack("p1", e2, 1)], "a")
            .await
            .unwrap();
        assert_eq!(
            store.nodes().await.unwrap()[0]
                .last_nack
                .as_ref()
                .map(|n| n.version),
            Some(2)
        );
        store
            .write_node_updates(&[ack("p1", e2, 2)], "a")
            .await
            .unwrap();
        let n = &store.nodes().await.unwrap()[0];
        assert_eq!(n.acked_version, Some(2));
        assert!(n.last_nack.is_none(), "{n:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_history_keeps_the_newest_hundred_per_node() {
    both(async |store: Store| {
        store.heartbeat("a").await.unwrap();
        let epoch = Epoch::next();
        let connected = NodeUpdate::Connected {
            node: hello("p1"),
            epoch,
        };
        store.write_node_updates(&[connected], "a").await.unwrap();
        // In batches below the writer's 20 queued events per node.
        for chunk in (1..=120).collect::<Vec<i64>>().chunks(7) {
            let batch: Vec<NodeUpdate> = chunk.iter().map(|v| nack("p1", epoch, *v)).collect();
            store.write_node_updates(&batch, "a").await.unwrap();
        }
        store
            .write_node_updates(&[nack("other", epoch, 1)], "a")
            .await
            .unwrap();
        let events = store.node_events("p1", 1000).await.unwrap();
        let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (21..=120).rev().collect::<Vec<_>>());
        assert_eq!(events[0].error, "cannot bind");
        assert_eq!(store.node_events("other", 10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_are_serialised() {
    both(async |store: Store| {
        let mut tasks = Vec::new();
        for p in 1..=8u16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.apply(version(p, "racer", "")).await
            }));
        }
        let mut numbers = Vec::new();
        for t in tasks {
            if let ApplyOutcome::Created { version, .. } = t.await.unwrap().unwrap() {
                numbers.push(version);
            }
        }
        numbers.sort();
        assert_eq!(
            numbers,
            (1..=8).collect::<Vec<_>>(),
            "every apply got its own number"
        );
        let activations = store.activations(100).await.unwrap();
        assert_eq!(activations.len(), 8);
        // Each activation starts from the one before it: no lost update.
        for w in activations.windows(2) {
            assert_eq!(w[0].from_version, Some(w[1].to_version));
        }
    })
    .await;
}

/// Convergence records (`node_acks`): one row per move of a node to another
/// version, none for a reconnect that ACKs what it holds, none from a
/// stale session, the newest `ACKS_KEPT` per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_moves_are_recorded_once_and_bounded() {
    both(async |store: Store| {
        let hello = |id: &str, epoch| NodeUpdate::Connected {
            node: sentinel_proto::Node {
                id: id.into(),
                region: "eu".into(),
                zone: "a".into(),
                build_version: "t".into(),
                labels: vec![],
            },
            epoch,
        };
        let ack = |id: &str, epoch, version: i64| NodeUpdate::Ack {
            id: id.into(),
            epoch,
            version,
            hash: format!("h{version}"),
        };
        let (e1, e2) = (Epoch::next(), Epoch::next());
        store
            .write_node_updates(&[hello("n1", e1)], "r")
            .await
            .unwrap();
        store
            .write_node_updates(&[ack("n1", e1, 1)], "r")
            .await
            .unwrap();
        store
            .write_node_updates(&[ack("n1", e1, 2)], "r")
            .await
            .unwrap();
        // The same version again (an endpoint delta), then a reconnect that
        // ACKs what the row holds: no move.
        store
            .write_node_updates(&[ack("n1", e1, 2)], "r")
            .await
            .unwrap();
        store
            .write_node_updates(&[hello("n1", e2)], "r")
            .await
            .unwrap();
        store
            .write_node_updates(&[ack("n1", e2, 2)], "r")
            .await
            .unwrap();
        // The old session's late ACK changes nothing.
        store
            .write_node_updates(&[ack("n1", e1, 3)], "r")
            .await
            .unwrap();
        let v2 = store.first_acks(2, 0).await.unwrap();
        assert_eq!(v2.len(), 1, "{v2:?}");
        assert_eq!(v2[0].0, "n1");
        assert_eq!(store.first_acks(1, 0).await.unwrap().len(), 1);
        assert!(
            store.first_acks(3, 0).await.unwrap().is_empty(),
            "a stale session's ACK"
        );
        assert!(
            store.first_acks(2, v2[0].1 + 1).await.unwrap().is_empty(),
            "moves before `since` are not counted"
        );
        // Bounded: after ACKS_KEPT more moves, v1's record is gone.
        for v in 10..(10 + sentinel_cp::store::ACKS_KEPT) {
            store
                .write_node_updates(&[ack("n1", e2, v)], "r")
                .await
                .unwrap();
        }
        assert!(store.first_acks(1, 0).await.unwrap().is_empty());
        assert_eq!(store.first_acks(10, 0).await.unwrap().len(), 1);
    })
    .await;
}

const TRACE_A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_B: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_sends_the_trace_parent_stored_with_the_activation() {
    use sentinel_cp::store::{ChangeTrace, TraceStep};
    both(async |store: Store| {
        let mut v1 = version(1, "alice", "traced");
        v1.trace = ChangeTrace {
            parent: Some(TRACE_A.into()),
            steps: vec![TraceStep {
                name: "config.compile".into(),
                start_unix_ms: 1,
                end_unix_ms: 2,
            }],
        };
        store.apply(v1).await.unwrap();
        // A second replica (or this one restarted): its own connection,
        // its own fleet, the same trace context on every chunk it sends.
        let replica = Store::connect(&store.url).await.unwrap();
        assert_eq!(
            replica
                .active()
                .await
                .unwrap()
                .unwrap()
                .trace_parent
                .as_deref(),
            Some(TRACE_A)
        );
        // SQLite has one writer: the restarted replica is the only one
        // (its node writer's heartbeats would lock out this store).
        let replica = match replica.dialect {
            sentinel_cp::store::Dialect::Sqlite => {
                drop(replica);
                store.clone()
            }
            sentinel_cp::store::Dialect::Postgres => replica,
        };
        let fleet = sentinel_cp::fleet::Fleet::new(replica, "r2".into(), "eu".into());
        fleet.refresh().await.unwrap();
        let active = fleet.current();
        assert_eq!(active.trace_parent, TRACE_A);
        let d = sentinel_cp::stream::delta(std::iter::empty(), &active);
        let chunks = sentinel_cp::stream::chunk(&d, "n", &active, 64);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.trace_parent == TRACE_A));
        let t = store.version_trace(1).await.unwrap().unwrap();
        assert_eq!(t.kind, "apply");
        let steps: Vec<&str> = t.trace.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(steps, ["config.compile", "config.store"]);

        // A rollback is its own change with its own trace; one without a
        // trace stores none (proxies then get an empty trace_parent).
        store.apply(version(2, "alice", "untraced")).await.unwrap();
        assert_eq!(store.active().await.unwrap().unwrap().trace_parent, None);
        let rollback = ChangeTrace {
            parent: Some(TRACE_B.into()),
            steps: Vec::new(),
        };
        store
            .rollback_traced(None, None, "bob", "back", &rollback)
            .await
            .unwrap();
        assert_eq!(
            store
                .active()
                .await
                .unwrap()
                .unwrap()
                .trace_parent
                .as_deref(),
            Some(TRACE_B)
        );
        fleet.refresh().await.unwrap();
        assert_eq!(fleet.current().trace_parent, TRACE_B);
        let t = store.version_trace(1).await.unwrap().unwrap();
        assert_eq!(
            (t.kind.as_str(), t.trace.parent.as_deref()),
            ("rollback", Some(TRACE_B))
        );
        assert!(store.version_trace(99).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_timelines_follow_the_session_rule_and_are_bounded() {
    use sentinel_cp::changes::Push;
    both(async |store: Store| {
        let push = |version: i64, outcome: &'static str| Push {
            region: "eu".into(),
            version,
            hash: format!("h{version}"),
            pushed_at_unix_ms: 1_000,
            received_unix_ms: Some(1_001),
            built_unix_ms: Some(1_002),
            swapped_unix_ms: (outcome == "ack").then_some(1_003),
            answered_at_unix_ms: 1_004,
            outcome,
            error: (outcome == "nack").then(|| "listener \"l\": cannot\0 bind".to_string()),
        };
        let pushed = |epoch, push| NodeUpdate::Pushed {
            id: "p1".into(),
            epoch,
            push,
        };
        let (e1, e2) = (Epoch::next(), Epoch::next());
        store
            .write_node_updates(
                &[
                    NodeUpdate::Connected {
                        node: hello("p1"),
                        epoch: e1,
                    },
                    pushed(e1, push(1, "ack")),
                    pushed(e1, push(2, "nack")),
                ],
                "r",
            )
            .await
            .unwrap();
        let rows = store.pushes_of(1).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].push, push(1, "ack"));
        let nacked = &store.pushes_of(2).await.unwrap()[0].push;
        assert_eq!(nacked.outcome, "nack");
        assert_eq!(nacked.swapped_unix_ms, None);
        assert_eq!(nacked.error.as_deref(), Some("listener \"l\": cannot bind"));
        // The node reconnected: the old session's late answer is not written.
        store
            .write_node_updates(
                &[NodeUpdate::Connected {
                    node: hello("p1"),
                    epoch: e2,
                }],
                "r",
            )
            .await
            .unwrap();
        store
            .write_node_updates(&[pushed(e1, push(3, "ack"))], "r")
            .await
            .unwrap();
        assert!(store.pushes_of(3).await.unwrap().is_empty());
        // Bounded per node.
        for v in 10..(10 + sentinel_cp::store::PUSHES_KEPT) {
            store
                .write_node_updates(&[pushed(e2, push(v, "ack"))], "r")
                .await
                .unwrap();
        }
        assert!(store.pushes_of(1).await.unwrap().is_empty());
        assert_eq!(store.pushes_of(10).await.unwrap().len(), 1);
    })
    .await;
}
