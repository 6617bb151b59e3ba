//! Kubernetes discovery with the real `kube` client against the Kubernetes
//! double (sentinel_tests::kube): EndpointSlices listed and watched,
//! aggregated per service, named and numbered ports, endpoint conditions,
//! and a forced 410 Gone that makes the client relist.

mod common;

use std::time::Duration;

use common::{assert_generations, start, upstream};
use sentinel_proto as pb;
use sentinel_tests::kube::{Ep, KubeDouble, endpoint_slice};

const T: Duration = Duration::from_secs(20);
const HEALTHY: i32 = pb::TargetHealth::Healthy as i32;
const UNHEALTHY: i32 = pb::TargetHealth::Unhealthy as i32;

fn kubernetes(double: &KubeDouble, port: &str) -> pb::Upstream {
    upstream(
        "web",
        pb::discovery::Source::Kubernetes(pb::KubernetesDiscovery {
            namespace: "shop".into(),
            service: "web".into(),
            port: port.into(),
            api_server: double.url(),
            empty_grace_ms: Some(0),
            ..Default::default()
        }),
    )
}

fn view(d: &sentinel_discovery::Discovered) -> Vec<(String, u32, i32)> {
    d.targets
        .iter()
        .map(|t| (t.address.clone(), t.weight, t.health))
        .collect()
}

const HTTP: &[(&str, u16)] = &[("http", 8080), ("metrics", 9090)];

#[tokio::test]
async fn slices_added_modified_and_deleted_are_aggregated_per_service() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    // Another service and another namespace are not ours.
    double.apply(
        "shop",
        endpoint_slice("api-a", "api", HTTP, &[Ep::ready("10.9.0.1")]),
    );
    double.apply(
        "other",
        endpoint_slice("web-x", "web", HTTP, &[Ep::ready("10.8.0.1")]),
    );
    let run = start(kubernetes(&double, "http"));
    run.until_addresses(&["10.0.0.1:8080"], T).await;
    // A second slice of the same service adds to the set.
    double.apply(
        "shop",
        endpoint_slice(
            "web-b",
            "web",
            HTTP,
            &[Ep::ready("10.0.0.2"), Ep::ready("10.0.0.3")],
        ),
    );
    run.until_addresses(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"], T)
        .await;
    // Modified: one endpoint leaves slice b.
    double.apply(
        "shop",
        endpoint_slice("web-b", "web", HTTP, &[Ep::ready("10.0.0.3")]),
    );
    run.until_addresses(&["10.0.0.1:8080", "10.0.0.3:8080"], T)
        .await;
    // Deleted: slice a goes.
    double.delete("shop", "web-a");
    run.until_addresses(&["10.0.0.3:8080"], T).await;
    assert_generations(&run);
}

#[tokio::test]
async fn numbered_port_is_used_as_is() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    let run = start(kubernetes(&double, "9090"));
    run.until_addresses(&["10.0.0.1:9090"], T).await;
}

#[tokio::test]
async fn conditions_ready_serving_terminating_set_health_and_weight() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice(
            "web-a",
            "web",
            HTTP,
            &[
                Ep::ready("10.0.0.1"),
                Ep::terminating("10.0.0.2"),
                Ep::not_ready("10.0.0.3"),
            ],
        ),
    );
    let run = start(kubernetes(&double, "http"));
    let d = run
        .until_addresses(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"], T)
        .await;
    assert_eq!(
        view(&d),
        [
            ("10.0.0.1:8080".to_string(), 1, HEALTHY),
            // Terminating but serving: drains (weight 0), does not vanish.
            ("10.0.0.2:8080".to_string(), 0, HEALTHY),
            ("10.0.0.3:8080".to_string(), 1, UNHEALTHY),
        ]
    );
    // The not-ready endpoint becomes ready: a health change is a change.
    double.apply(
        "shop",
        endpoint_slice(
            "web-a",
            "web",
            HTTP,
            &[
                Ep::ready("10.0.0.1"),
                Ep::terminating("10.0.0.2"),
                Ep::ready("10.0.0.3"),
            ],
        ),
    );
    run.until("10.0.0.3 healthy", T, |d| {
        d.targets.iter().all(|t| t.health == HEALTHY)
    })
    .await;
}

#[tokio::test]
async fn a_forced_410_gone_relists_and_yields_the_correct_set() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    double.apply(
        "shop",
        endpoint_slice("web-b", "web", HTTP, &[Ep::ready("10.0.0.2")]),
    );
    let run = start(kubernetes(&double, "http"));
    run.until_addresses(&["10.0.0.1:8080", "10.0.0.2:8080"], T)
        .await;
    let lists = double.lists();
    // Changes no watcher hears of, then the history is gone: only a relist
    // after the 410 can show them.
    double.delete_silently("shop", "web-a");
    double.apply_silently(
        "shop",
        endpoint_slice("web-c", "web", HTTP, &[Ep::ready("10.0.0.4")]),
    );
    double.expire_history();
    run.until_addresses(&["10.0.0.2:8080", "10.0.0.4:8080"], T)
        .await;
    assert!(double.gone_sent() >= 1, "the double answered 410 Gone");
    assert!(double.lists() > lists, "the client relisted");
    // The watch after the relist delivers events again.
    double.apply(
        "shop",
        endpoint_slice("web-d", "web", HTTP, &[Ep::ready("10.0.0.5")]),
    );
    run.until_addresses(&["10.0.0.2:8080", "10.0.0.4:8080", "10.0.0.5:8080"], T)
        .await;
    // The set never went empty on the way.
    assert!(run.all().iter().all(|d| !d.targets.is_empty()));
}

#[tokio::test]
async fn a_kubeconfig_file_selects_the_api_server() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: double\n    user: me\n\
             users:\n- name: me\n  user:\n    token: not-checked\n",
            double.url()
        ),
    )
    .unwrap();
    let run = start(upstream(
        "web",
        pb::discovery::Source::Kubernetes(pb::KubernetesDiscovery {
            namespace: "shop".into(),
            service: "web".into(),
            port: "http".into(),
            kubeconfig: path.display().to_string(),
            ..Default::default()
        }),
    ));
    run.until_addresses(&["10.0.0.1:8080"], T).await;
}

#[tokio::test]
async fn deleting_every_slice_is_believed_only_after_the_grace_period() {
    let double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    let mut u = kubernetes(&double, "http");
    if let Some(pb::discovery::Source::Kubernetes(k)) =
        u.discovery.as_mut().and_then(|d| d.source.as_mut())
    {
        k.empty_grace_ms = Some(2_000);
    }
    let run = start(u);
    run.until_addresses(&["10.0.0.1:8080"], T).await;
    let deleted_at = std::time::Instant::now();
    double.delete("shop", "web-a");
    // The watch goes quiet after the DELETED event: only the grace timer
    // can empty the set, and not before 2 s.
    let d = run.until("an empty set", T, |d| d.targets.is_empty()).await;
    assert!(deleted_at.elapsed() >= Duration::from_millis(1_900));
    assert!(!d.stale);
    assert_eq!(
        d.generation, 2,
        "nothing was sent while the empty answer was held"
    );
}

#[tokio::test]
async fn api_server_with_a_token_file_sends_the_token() {
    let double = KubeDouble::start_with_token(Some("sa-token")).await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let with_token = || {
        let mut u = kubernetes(&double, "http");
        if let Some(pb::discovery::Source::Kubernetes(k)) =
            u.discovery.as_mut().and_then(|d| d.source.as_mut())
        {
            k.token_file = token_file.display().to_string();
        }
        u
    };
    // A trailing newline is refused with a plain error (kube would send it).
    std::fs::write(&token_file, "sa-token\n").unwrap();
    let run = start(with_token());
    let refused = sentinel_tests::wait_for(T, || {
        let s = run.discovery.status();
        async move {
            s.first()
                .and_then(|s| s.last_error.clone())
                .is_some_and(|e| e.contains("trailing newline"))
        }
    })
    .await;
    assert!(refused, "{:?}", run.discovery.status());
    drop(run);
    std::fs::write(&token_file, "sa-token").unwrap();
    let run = start(with_token());
    run.until_addresses(&["10.0.0.1:8080"], T).await;
    drop(run);
    // Without the token the API server refuses: an error, nothing sent.
    let run = start(kubernetes(&double, "http"));
    let failed = sentinel_tests::wait_for(T, || {
        let s = run.discovery.status();
        async move { s.first().is_some_and(|s| s.refreshes_failed > 0) }
    })
    .await;
    assert!(failed, "{:?}", run.discovery.status());
    assert!(run.all().is_empty());
}

#[tokio::test]
async fn api_server_down_keeps_targets_marked_stale_and_back_is_fresh() {
    let mut double = KubeDouble::start().await;
    double.apply(
        "shop",
        endpoint_slice("web-a", "web", HTTP, &[Ep::ready("10.0.0.1")]),
    );
    let run = start(kubernetes(&double, "http"));
    run.until_addresses(&["10.0.0.1:8080"], T).await;
    double.stop();
    let d = run.until("a stale set", T, |d| d.stale).await;
    assert_eq!(common::addresses(&d), ["10.0.0.1:8080"]);
    // Changed while the client could not see it; it must catch up.
    double.apply(
        "shop",
        endpoint_slice("web-b", "web", HTTP, &[Ep::ready("10.0.0.2")]),
    );
    double.start_again().await;
    run.until_addresses(&["10.0.0.1:8080", "10.0.0.2:8080"], T)
        .await;
    assert!(run.all().iter().all(|d| !d.targets.is_empty()));
    assert_generations(&run);
}
