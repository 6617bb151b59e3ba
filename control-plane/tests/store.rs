//! The store against both backends: a throwaway PostgreSQL cluster and an
//! SQLite file. Every test body runs on each.

use sentinel_cp::store::{ApplyOutcome, NewVersion, Role, Store, StoreError};
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
        author: author.into(),
        message: message.into(),
        expect_version: None,
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
        store.node_connected(&node, "r1").await.unwrap();
        assert_eq!(store.nodes().await.unwrap()[0].id, node.id);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_acks_nacks_and_tokens() {
    both(async |store: Store| {
        let node = pb::Node {
            id: "p1".into(),
            region: "eu".into(),
            zone: "a".into(),
            build_version: "0.1".into(),
            labels: vec![],
        };
        store.node_connected(&node, "replica-a").await.unwrap();
        store.record_ack("p1", 4, "hash4").await.unwrap();
        store
            .record_nack("p1", 5, "listener \"l\"", "cannot bind")
            .await
            .unwrap();
        let n = &store.nodes().await.unwrap()[0];
        assert!(n.connected);
        assert_eq!(
            (n.acked_version, n.acked_hash.as_deref()),
            (Some(4), Some("hash4"))
        );
        let nack = n.last_nack.clone().unwrap();
        assert_eq!(
            (nack.version, nack.resource.as_str(), nack.error.as_str()),
            (5, "listener \"l\"", "cannot bind")
        );
        // Another replica's disconnect does not clear this session.
        store.node_disconnected("p1", "replica-b").await.unwrap();
        assert!(store.nodes().await.unwrap()[0].connected);
        store.node_disconnected("p1", "replica-a").await.unwrap();
        assert!(!store.nodes().await.unwrap()[0].connected);

        assert!(store.ensure_token("ci", "h1", Role::Write).await.unwrap());
        assert!(!store.ensure_token("ci", "h2", Role::Admin).await.unwrap());
        assert_eq!(
            store.token("h1").await.unwrap(),
            Some(("ci".to_string(), Role::Write))
        );
        assert_eq!(store.token("nope").await.unwrap(), None);
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
