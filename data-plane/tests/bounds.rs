//! Bounds under hostile input, against the real `sentinel` binary (issue 11,
//! defects 1 and 6): deeply nested KDL is a diagnostic on `--validate` and a
//! failed reload on SIGHUP (never a crash); `sentinel_build_info` keeps one
//! series however many configs were applied; a flood of distinct rate-limit
//! keys does not reset an existing client's bucket.

mod common;

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Command;
use std::time::Duration;

use common::{Backend, Sentinel, client, config, free_port};
use futures_util::StreamExt;

fn nested(n: usize) -> String {
    format!("{}{}", "a {\n".repeat(n), "}\n".repeat(n))
}

#[test]
fn validate_refuses_two_thousand_nested_blocks_with_a_located_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.kdl");
    std::fs::write(&file, nested(2_000)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("blocks are nested more than 16 deep"),
        "{stderr}"
    );
    assert!(stderr.contains("deep.kdl:17:3"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_deeply_nested_kdl_keeps_serving_the_last_config() {
    let backend = Backend::start("b").await;
    let port = free_port();
    let mut proxy = Sentinel::start(&config(port, &[backend.addr], "", "")).await;
    proxy.reload(&nested(2_000));
    let failed = sentinel_tests::wait_for(Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .contains("sentinel_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert!(failed, "no failed reload recorded\n{}", proxy.logs());
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        proxy.logs().contains("nested more than"),
        "{}",
        proxy.logs()
    );
    let _ = proxy.wait_exit(Duration::from_millis(1)).await;
}

/// The `config_version` label of every `sentinel_build_info` series.
fn build_info_versions(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("sentinel_build_info{"))
        .filter_map(|l| {
            let at = l.find("config_version=\"")? + "config_version=\"".len();
            Some(l[at..].split('"').next()?.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_info_keeps_one_series_across_config_changes() {
    let backend = Backend::start("b").await;
    let port = free_port();
    let base = config(port, &[backend.addr], "", "");
    let proxy = Sentinel::start(&base).await;
    let mut seen = BTreeSet::new();
    for i in 1..=3 {
        // A different config each time: a different hash.
        let next = config(
            port,
            &[backend.addr],
            &format!("        retry {{ attempts {i}; }}\n"),
            "",
        );
        let expected = sentinel_config::compile("x.kdl", &next)
            .unwrap_or_else(|d| panic!("{d}"))
            .config_hash();
        proxy.reload(&next);
        let applied = sentinel_tests::wait_for(Duration::from_secs(10), || async {
            build_info_versions(&proxy.metrics().await) == vec![expected.clone()]
        })
        .await;
        let metrics = proxy.metrics().await;
        assert!(
            applied,
            "expected exactly one build_info series for {expected}, got {:?}\n{}",
            build_info_versions(&metrics),
            proxy.logs()
        );
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 3);
}

/// The shard the pre-fix limiter put `key` in (std's `DefaultHasher`, 64
/// shards): the flood below is aimed at the victim's old shard so that the
/// old "clear a full shard" behaviour is reproducible with 10k keys.
fn old_shard(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish() % 64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_key_flood_keeps_an_existing_clients_bucket() {
    let backend = Backend::start("b").await;
    let port = free_port();
    let cfg = config(port, &[backend.addr], "", "").replace(
        "upstream \"app\"\n    }",
        "upstream \"app\"\n        filters \"rl\"\n    }",
    ) + "filters {\n    filter \"rl\" {\n        type \"rate-limit\"\n        max-rps 0.001\n        burst 2\n        key \"header:x-key\"\n        backend \"local\"\n    }\n}\n";
    let proxy = Sentinel::start(&cfg).await;
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    let send = |key: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.get(&url)
                .header("x-key", key)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(send("victim".into()).await, 200);
    assert_eq!(send("victim".into()).await, 200);
    assert_eq!(send("victim".into()).await, 429, "{}", proxy.logs());

    let victim_shard = old_shard("victim");
    let flood: Vec<String> = (0u64..)
        .map(|i| format!("flood-{i}"))
        .filter(|k| old_shard(k) == victim_shard)
        .take(4_200)
        .chain((0..5_800).map(|i| format!("other-{i}")))
        .collect();
    assert_eq!(flood.len(), 10_000);
    let statuses: Vec<u16> = futures_util::stream::iter(flood.into_iter().map(send))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "flood requests failed: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        send("victim".into()).await,
        429,
        "the flood reset the victim's bucket"
    );
}

/// A SIGHUP that arrives while the proxy is still starting (admin port
/// open, first config not yet live) is a reload, not the signal's default
/// action: the signals are registered before anything can see the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_up_is_a_reload_not_an_exit() {
    let backend = Backend::start("b").await;
    let port = free_port();
    let mut proxy = Sentinel::spawn(&config(port, &[backend.addr], "", ""));
    // The earliest moment anything outside can see the process: its admin
    // port accepts connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(proxy.admin).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "admin port never opened"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.signal("HUP");
    proxy.wait_ready().await;
    let reloaded = sentinel_tests::wait_for(Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .contains("sentinel_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    assert!(
        reloaded,
        "the early SIGHUP was not a reload\n{}",
        proxy.logs()
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    let _ = proxy.wait_exit(Duration::from_millis(1)).await;
}
