//! Rollouts in the store, on SQLite and on a throwaway PostgreSQL: a staged
//! apply stores without activating, one rollout at a time (409 naming it),
//! compare-and-set transitions, completion activates, a rollback aborts.

use sentinel_cp::store::{ApplyOutcome, NewRollout, NewVersion, Store, StoreError};
use sentinel_tests::Postgres;

fn version(port: u16, message: &str) -> NewVersion {
    let doc = format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:{port}\"; }}; }}\nupstreams {{ upstream \"u\" {{ target \"127.0.0.1:9\"; }}; }}\nroutes {{ route \"r\" {{ upstream \"u\"; }}; }}"
    );
    let snapshot = sentinel_config::compile("t.kdl", &doc).unwrap();
    NewVersion {
        hash: snapshot.config_hash(),
        source: doc,
        file_name: "t.kdl".into(),
        resources: snapshot.resources(),
        actor: "alice".into(),
        author: "alice".into(),
        message: message.into(),
        expect_version: None,
        trace: Default::default(),
    }
}

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn plan(admit: &[&str]) -> NewRollout {
    NewRollout {
        plan_json: r#"{"stages":[{"select":"canary:1"},{"select":"*"}],"bake_ms":1000}"#.into(),
        stages: 2,
        admit: admit.iter().map(|s| s.to_string()).collect(),
    }
}

async fn both(test: impl AsyncFn(Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("t.db").display()
    ))
    .await
    .unwrap();
    test(sqlite).await;
    let pg = Postgres::start();
    let store = Store::connect(&pg.url())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    test(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_apply_stores_without_activating_and_completion_activates() {
    both(async |store: Store| {
        store.apply(version(1, "first")).await.unwrap();
        let mut staged = version(2, "staged");
        staged.trace.parent = Some(TRACE.into());
        let (outcome, id) = store.apply_staged(staged, plan(&["eu-1"])).await.unwrap();
        assert_eq!(
            outcome,
            ApplyOutcome::Created {
                version: 2,
                previous: Some(1)
            }
        );
        let id = id.unwrap();
        assert_eq!(store.active().await.unwrap().unwrap().record.number, 1);
        // The stages deliver version 2 in the trace of the apply that
        // started the rollout.
        assert_eq!(
            store.rollout_trace(id).await.unwrap().as_deref(),
            Some(TRACE)
        );
        let t = store.version_trace(2).await.unwrap().unwrap();
        assert_eq!(
            (t.kind.as_str(), t.trace.parent.as_deref()),
            ("rollout", Some(TRACE))
        );
        let open = store.open_rollout().await.unwrap().unwrap();
        assert_eq!((open.id(), open.summary.state.as_str()), (id, "running"));
        assert_eq!(open.summary.stages, 2);
        assert_eq!(
            store
                .rollout_nodes(id)
                .await
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![("eu-1".to_string(), 0)]
        );
        // One rollout at a time; a plain apply is refused too, naming it.
        for attempt in [
            store
                .apply_staged(version(3, "second"), plan(&[]))
                .await
                .map(|_| ()),
            store.apply(version(3, "plain")).await.map(|_| ()),
        ] {
            match attempt {
                Err(StoreError::Conflict(m)) => {
                    assert!(m.contains(&format!("rollout {id} is running")), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Compare-and-set: a stale stage changes nothing.
        assert!(!store.rollout_acked(id, 1, "x".into()).await.unwrap());
        assert!(store.rollout_acked(id, 0, "acked".into()).await.unwrap());
        assert!(
            store
                .open_rollout()
                .await
                .unwrap()
                .unwrap()
                .stage_acked_at
                .is_some()
        );
        assert!(
            store
                .rollout_advance(id, 0, vec!["us-1".into()], "driver".into(), "passed".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .rollout_advance(id, 0, vec![], "driver".into(), "again".into())
                .await
                .unwrap(),
            "the same stage cannot pass twice"
        );
        let nodes = store.rollout_nodes(id).await.unwrap();
        assert_eq!(nodes.get("us-1"), Some(&1));
        assert!(store.rollout_pause(id, true, "bob".into()).await.unwrap());
        assert!(!store.rollout_pause(id, true, "bob".into()).await.unwrap());
        assert!(store.rollout_pause(id, false, "bob".into()).await.unwrap());
        assert!(
            store
                .rollout_complete(id, 1, "driver".into(), "passed".into())
                .await
                .unwrap()
        );
        assert!(store.open_rollout().await.unwrap().is_none());
        let active = store.active().await.unwrap().unwrap();
        assert_eq!(active.record.number, 2);
        assert_eq!(
            active.trace_parent.as_deref(),
            Some(TRACE),
            "the activation that completes the rollout keeps its trace"
        );
        let r = store.rollout(id).await.unwrap();
        assert_eq!(r.summary.state, "completed");
        let kinds: Vec<String> = store
            .rollout_events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "created",
                "stage-started",
                "stage-acked",
                "stage-passed",
                "stage-started",
                "paused",
                "resumed",
                "stage-passed",
                "completed"
            ]
        );
        let audit: Vec<String> = store
            .audit_log(50)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert!(audit.contains(&"rollout".to_string()), "{audit:?}");
        assert!(
            audit.contains(&"rollout-completed".to_string()),
            "{audit:?}"
        );
        // Ended rollouts do not move.
        assert!(
            !store
                .rollout_end(id, None, true, "late".into(), None, None, "x".into())
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_records_the_gate_and_a_rollback_aborts_an_open_one() {
    both(async |store: Store| {
        store.apply(version(1, "first")).await.unwrap();
        let (_, id) = store
            .apply_staged(version(2, "bad"), plan(&["eu-1"]))
            .await
            .unwrap();
        let id = id.unwrap();
        assert!(
            store
                .rollout_end(
                    id,
                    Some(0),
                    true,
                    "stage 1 failed the ack gate on eu-1".into(),
                    Some("ack".into()),
                    Some("eu-1".into()),
                    "driver".into()
                )
                .await
                .unwrap()
        );
        let r = store.rollout(id).await.unwrap().summary;
        assert_eq!(r.state, "failed");
        assert_eq!(r.failed_gate.as_deref(), Some("ack"));
        assert_eq!(r.failed_node.as_deref(), Some("eu-1"));
        assert_eq!(store.active().await.unwrap().unwrap().record.number, 1);
        // The fleet is free again.
        let (_, second) = store
            .apply_staged(version(3, "next"), plan(&[]))
            .await
            .unwrap();
        let second = second.unwrap();
        // A rollback during a rollout aborts it and activates nothing new.
        let (from, to) = store.rollback(None, "carol", "stop").await.unwrap();
        assert_eq!((from, to), (3, 1));
        assert_eq!(
            store.rollout(second).await.unwrap().summary.state,
            "aborted"
        );
        assert_eq!(store.active().await.unwrap().unwrap().record.number, 1);
        let list = store.rollouts_before(10, None).await.unwrap();
        assert_eq!(
            list.iter().map(|r| r.id()).collect::<Vec<_>>(),
            vec![second, id]
        );
    })
    .await;
}

/// What each replica serves comes from the store: an admitted node gets
/// the rollout's version, every other node the active one; when the
/// rollout fails its nodes get the active one again, and when one
/// completes everyone gets its version (never the old one in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_serves_each_node_what_the_stored_rollout_says() {
    both(async |store: Store| {
        use sentinel_cp::fleet::Fleet;
        let fleet = Fleet::new(store.clone(), "r1".into(), "eu".into());
        store.apply(version(1, "first")).await.unwrap();
        fleet.refresh().await.unwrap();
        let served = |node: &str| fleet.desired(node, &fleet.current()).number;
        let (_, id) = store
            .apply_staged(version(2, "staged"), plan(&["a"]))
            .await
            .unwrap();
        let id = id.unwrap();
        // Another replica learns of it from the store alone.
        fleet.load_rollout().await.unwrap();
        assert_eq!((served("a"), served("b")), (2, 1));
        assert_eq!(fleet.rollout_view().id, id);
        assert!(
            store
                .rollout_end(
                    id,
                    Some(0),
                    true,
                    "gate".into(),
                    Some("ack".into()),
                    Some("a".into()),
                    "d".into()
                )
                .await
                .unwrap()
        );
        fleet.load_rollout().await.unwrap();
        assert_eq!((served("a"), served("b")), (1, 1));
        assert_eq!(fleet.rollout_view().id, 0);

        let (_, id) = store
            .apply_staged(version(3, "good"), plan(&["a"]))
            .await
            .unwrap();
        let id = id.unwrap();
        fleet.load_rollout().await.unwrap();
        assert_eq!((served("a"), served("b")), (3, 1));
        assert!(
            store
                .rollout_advance(id, 0, vec!["b".into()], "d".into(), "passed".into())
                .await
                .unwrap()
        );
        fleet.load_rollout().await.unwrap();
        assert_eq!((served("a"), served("b"), served("c")), (3, 3, 1));
        let mut rx = fleet.subscribe_rollout();
        rx.borrow_and_update();
        assert!(
            store
                .rollout_complete(id, 1, "d".into(), "passed".into())
                .await
                .unwrap()
        );
        // Only the rollout's reload: it reloads the active version first.
        fleet.load_rollout().await.unwrap();
        assert_eq!(fleet.current().number, 3);
        assert_eq!((served("a"), served("b"), served("c")), (3, 3, 3));
        assert_eq!(fleet.rollout_view().id, 0);
    })
    .await;
}
