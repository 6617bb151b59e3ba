//! The Redis rate-limit backend against real Redis: a `redis-server`, a
//! three-master Redis Cluster and Redis Sentinels, started by the tests
//! (`sentinel_tests::redis`), and real `sentinel` processes.
//!
//! Accuracy: several proxies share one filter; the requests they admit
//! together stay within ±5 % of what the algorithm allows for the measured
//! time. Failure: a frozen (SIGSTOP) or dead Redis costs at most
//! `redis-timeout-ms` per request, then the breaker answers from the
//! filter's fallback at once; Redis back → shared limiting resumes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Sentinel, client, config};
use sentinel_tests::redis::{RedisCluster, RedisSentinels, RedisServer};
use sentinel_tests::{free_port, wait_for};

/// The tests of this file measure rates and latencies: one at a time, so
/// they do not load the machine for each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A filter block named `name` on `url`, plus `extra` lines.
fn filter(name: &str, url: &str, rps: u32, burst: u32, extra: &str) -> String {
    format!(
        r#"
    filter "{name}" {{
        type "rate-limit"
        max-rps {rps}
        burst {burst}
        key "header:x-client"
        backend "redis"
        redis-url "{url}"
        redis-timeout-ms 50
{extra}
    }}"#
    )
}

/// One proxy config whose route `all` uses `filter_name`.
fn proxy_config(port: u16, backend: &Backend, filters: &str, filter_name: &str) -> String {
    config(
        port,
        &[backend.addr],
        "",
        &format!("filters {{{filters}\n}}\n"),
    )
    .replace(
        "upstream \"app\"\n    }",
        &format!("upstream \"app\"\n        filters \"{filter_name}\"\n    }}"),
    )
}

/// Sends requests with one client key over `ports` from `workers` tasks
/// until `duration` passed (at most `max` requests); returns (admitted,
/// other answers, seconds from the first request sent to the last one sent:
/// the time the limit was under pressure).
async fn load(
    ports: &[u16],
    workers: usize,
    duration: Duration,
    max: usize,
) -> (usize, usize, f64) {
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (admitted, refused, sent) = (admitted.clone(), refused.clone(), sent.clone());
        let (first, last) = (first.clone(), last.clone());
        let ports = ports.to_vec();
        tasks.push(tokio::spawn(async move {
            let c = client();
            // Warm up first: connections to every proxy and from the
            // proxies to Redis, with keys of their own, so the measured
            // time starts when the shared key's first decision does.
            for port in &ports {
                let _ = c
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("x-client", format!("warm-up-{w}"))
                    .send()
                    .await;
            }
            let mut i = w;
            while first.get().is_none_or(|f| f.elapsed() < duration)
                && started.elapsed() < duration * 3
                && sent.fetch_add(1, Ordering::Relaxed) < max
            {
                let port = ports[i % ports.len()];
                i += 1;
                first.get_or_init(Instant::now);
                *last.lock().unwrap() = Instant::now();
                match c
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("x-client", "shared-client")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => admitted.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        first.get().map_or(0.0, |f| {
            last.lock().unwrap().duration_since(*f).as_secs_f64()
        }),
    )
}

fn within(admitted: usize, expected: f64, what: &str) {
    let low = expected * 0.95;
    let high = expected * 1.05;
    println!("{what}: admitted {admitted}, expected {expected:.0} (±5 %)");
    assert!(
        (low..=high).contains(&(admitted as f64)),
        "{what}: admitted {admitted}, expected {expected:.0} ± 5 %"
    );
}

/// Waits until `proxy` decides for `filter` from Redis (requests with a key
/// of their own).
async fn wait_for_redis(proxy: &Sentinel, port: u16, filter: &str) {
    let c = client();
    let series = format!("sentinel_rate_limit_redis_decisions_total{{filter=\"{filter}\"}}");
    let up = format!("sentinel_rate_limit_backend_up{{filter=\"{filter}\"}} 1");
    let from_redis = wait_for(Duration::from_secs(20), || {
        let (c, series, up) = (c.clone(), series.clone(), up.clone());
        async move {
            let _ = c
                .get(format!("http://127.0.0.1:{port}/"))
                .header("x-client", "readiness-probe")
                .send()
                .await;
            let m = proxy.metrics().await;
            m.contains(&series) && m.contains(&up)
        }
    })
    .await;
    assert!(
        from_redis,
        "proxy on {port} never reached Redis:\n{}",
        proxy.logs()
    );
}

async fn fleet(
    url: &str,
    algorithm: &str,
    rps: u32,
    burst: u32,
) -> (Backend, Vec<Sentinel>, Vec<u16>) {
    let backend = Backend::start("app").await;
    let mut proxies = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let filters = filter(
            "shared",
            url,
            rps,
            burst,
            &format!("        algorithm \"{algorithm}\""),
        );
        proxies.push(Sentinel::start(&proxy_config(port, &backend, &filters, "shared")).await);
        ports.push(port);
    }
    // Measure only once every proxy gets its decisions from Redis.
    for (proxy, port) in proxies.iter().zip(&ports) {
        wait_for_redis(proxy, *port, "shared").await;
    }
    (backend, proxies, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_limit_holds_across_three_proxies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().await;
    let (_backend, proxies, ports) = fleet(&redis.url(), "token-bucket", 100, 100).await;
    let (admitted, refused, secs) = load(&ports, 12, Duration::from_secs(10), 100_000).await;
    assert!(refused > 0, "the load must exceed the limit");
    within(admitted, 100.0 + 100.0 * secs, "token bucket, 3 proxies");
    // Concurrent requests for one key share script calls.
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap();
    let calls: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!("{} requests, {calls} EVALSHA calls", admitted + refused);
    assert!(
        calls > 0 && calls < admitted + refused,
        "{calls} script calls for {} requests: no batching",
        admitted + refused
    );
    // One key in Redis for the one client, named by a hash, expiring.
    let keys = redis
        .cli(&["--scan", "--pattern", "sentinel:ratelimit:shared:*"])
        .unwrap();
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(
        !keys.contains("shared-client"),
        "raw client keys never reach Redis"
    );
    let ttl = redis.cli(&["PTTL", keys.trim()]).unwrap();
    assert!(
        ttl.trim().parse::<i64>().unwrap() > 0,
        "the key expires: {ttl}"
    );
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_limit_holds_across_three_proxies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().await;
    // burst 100 per window of burst / max-rps = 1 s.
    let (_backend, proxies, ports) = fleet(&redis.url(), "sliding-window", 100, 100).await;
    let (admitted, refused, secs) = load(&ports, 12, Duration::from_millis(3500), 40_000).await;
    assert!(refused > 0, "the load must exceed the limit");
    // A full window's worth at the start of every window that began.
    within(
        admitted,
        100.0 * (secs.floor() + 1.0),
        "sliding window, 3 proxies",
    );
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_on_a_redis_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start().await;
    let (_backend, proxies, ports) = fleet(&cluster.url(), "token-bucket", 100, 100).await;
    let (admitted, refused, secs) = load(&ports, 12, Duration::from_secs(3), 30_000).await;
    assert!(refused > 0, "the load must exceed the limit");
    within(
        admitted,
        100.0 + 100.0 * secs,
        "token bucket, Redis Cluster",
    );
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_urls_reach_the_master() {
    let _one = ONE_AT_A_TIME.lock().await;
    let master = RedisServer::start().await;
    let sentinels = RedisSentinels::start(&master, "mymaster", 1).await;
    let backend = Backend::start("app").await;
    let port = free_port();
    let filters = filter("s", &sentinels.url("mymaster"), 1, 3, "");
    let proxy = Sentinel::start(&proxy_config(port, &backend, &filters, "s")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = c.get(&url).header("x-client", "k").send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "{}", proxy.logs());
    let keys = master
        .cli(&["--scan", "--pattern", "sentinel:ratelimit:s:*"])
        .unwrap();
    assert_eq!(
        keys.lines().count(),
        1,
        "the state lives on the master: {keys}"
    );
}

/// p99 of `n` sequential requests to `url` (milliseconds) and their statuses.
async fn timed(url: &str, n: usize) -> (f64, Vec<u16>) {
    let c = client();
    let mut times = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let r = c
            .get(url)
            .header("x-client", format!("client-{i}"))
            .send()
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        statuses.push(r.status().as_u16());
    }
    times.sort_by(f64::total_cmp);
    (times[(n * 99).div_ceil(100) - 1], statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_redis_costs_at_most_the_timeout_then_the_fallback_answers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisServer::start().await;
    let backend = Backend::start("app").await;
    let url = redis.url();
    let filters = [
        filter(
            "open",
            &url,
            1000,
            1000,
            "        fallback-to-local #false\n        on-redis-failure \"open\"",
        ),
        filter(
            "closed",
            &url,
            1000,
            1000,
            "        fallback-to-local #false\n        on-redis-failure \"closed\"",
        ),
        filter("local", &url, 1, 2, "        fallback-to-local #true"),
    ]
    .concat();
    let port = free_port();
    let cfg = config(port, &[backend.addr], "", &format!("filters {{{filters}\n}}\n")).replace(
        "    route \"all\" {",
        "    route \"open\" { matches { path-prefix \"/open\"; }; upstream \"app\"; filters \"open\"; }\n    route \"closed\" { matches { path-prefix \"/closed\"; }; upstream \"app\"; filters \"closed\"; }\n    route \"local\" { matches { path-prefix \"/local\"; }; upstream \"app\"; filters \"local\"; }\n    route \"all\" {",
    );
    let proxy = Sentinel::start(&cfg).await;
    let base = format!("http://127.0.0.1:{port}");
    let (baseline, statuses) = timed(&format!("{base}/"), 50).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let (_, statuses) = timed(&format!("{base}/open"), 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Frozen: calls hang, so each waits the timeout until the breaker opens.
    let pid = redis_pid(redis.port);
    signal(pid, "STOP");
    let frozen_at = Instant::now();
    let (p99, statuses) = timed(&format!("{base}/open"), 100).await;
    let frozen_secs = frozen_at.elapsed().as_secs_f64();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "fail open admits: {statuses:?}"
    );
    println!(
        "Redis frozen: end-to-end p99 {p99:.1} ms (baseline p99 {baseline:.1} ms) over 100 requests in {frozen_secs:.1} s"
    );
    let metrics = proxy.metrics().await;
    // No request waited for Redis longer than redis-timeout-ms + 10 %
    // (the proxy's own measure of each wait: the summary's maximum).
    let longest = metric(
        &metrics,
        "sentinel_rate_limit_redis_latency_seconds{filter=\"open\",quantile=\"1\"}",
    );
    assert!(longest <= 0.055, "a request waited {longest} s for Redis");
    // ...and only a few waited at all: three failures open the breaker,
    // then one probe per second.
    let timeouts = metric(
        &metrics,
        "sentinel_rate_limit_redis_errors_total{filter=\"open\",kind=\"timeout\"}",
    );
    assert!(
        timeouts <= 3.0 + frozen_secs.ceil() + 1.0,
        "{timeouts} requests waited for a frozen Redis in {frozen_secs:.1} s"
    );
    let (_, statuses) = timed(&format!("{base}/closed"), 10).await;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "fail closed answers 503: {statuses:?}"
    );
    let c = client();
    let local: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let r = c
                .get(format!("{base}/local"))
                .header("x-client", "one")
                .send()
                .await
                .unwrap();
            v.push(r.status().as_u16());
        }
        v
    };
    assert_eq!(
        local,
        [200, 200, 429, 429],
        "the local fallback limits (burst 2)"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("sentinel_rate_limit_backend_up{filter=\"open\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sentinel_rate_limit_fallback_total{filter=\"closed\",mode=\"closed\"}")
    );
    assert!(
        metrics
            .contains("sentinel_rate_limit_redis_errors_total{filter=\"open\",kind=\"timeout\"}")
    );

    // Dead: connections refused.
    signal(pid, "CONT");
    redis.kill();
    let (p99, statuses) = timed(&format!("{base}/open"), 50).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    println!("Redis dead: end-to-end p99 {p99:.1} ms");

    // Back: shared limiting resumes without touching the proxy.
    redis.restart().await;
    let resumed = wait_for(Duration::from_secs(15), || {
        let c = c.clone();
        let base = base.clone();
        let redis = &redis;
        async move {
            let _ = c
                .get(format!("{base}/open"))
                .header("x-client", "again")
                .send()
                .await;
            redis
                .cli(&["--scan", "--pattern", "sentinel:ratelimit:open:*"])
                .is_some_and(|k| k.lines().count() > 0)
        }
    })
    .await;
    assert!(resumed, "decisions reach Redis again after it restarted");
    let up = wait_for(Duration::from_secs(5), || async {
        proxy
            .metrics()
            .await
            .contains("sentinel_rate_limit_backend_up{filter=\"open\"} 1")
    })
    .await;
    assert!(up, "the backend reports up again");
}

/// The value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn redis_pid(port: u16) -> u32 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "server"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("redis process_id")
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_the_environment_and_tls_to_redis() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A server that wants a password, on TLS only; its certificate is
    // issued by a CA the proxy trusts through SSL_CERT_FILE.
    let dir = tempfile::tempdir().unwrap();
    let ca = common::Ca::new("redis CA");
    let leaf = ca.issue(&["127.0.0.1"]);
    let ca_file = common::write(dir.path(), "ca.pem", &ca.pem);
    let cert = common::write(dir.path(), "redis.pem", &leaf.cert);
    let key = common::write(dir.path(), "redis.key", &leaf.key);
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let backend = Backend::start("app").await;
    let port = free_port();
    let url = format!("rediss://:${{REDIS_PASSWORD}}@127.0.0.1:{tls_port}");
    let filters = filter("tls", &url, 1, 2, "");
    let proxy = Sentinel::spawn_with_env(
        &proxy_config(port, &backend, &filters, "tls"),
        &[("REDIS_PASSWORD", "s3cret"), ("SSL_CERT_FILE", &ca_file)],
    );
    proxy.wait_ready().await;
    wait_for_redis(&proxy, port, "tls").await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = c
            .get(format!("http://127.0.0.1:{port}/"))
            .header("x-client", "k")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let metrics = proxy.metrics().await;
    assert_eq!(statuses, [200, 200, 429], "{metrics}\n{}", proxy.logs());
    assert!(
        metric(
            &metrics,
            "sentinel_rate_limit_redis_decisions_total{filter=\"tls\"}"
        ) >= 4.0,
        "the decisions came from Redis over TLS:\n{metrics}\n{}",
        proxy.logs()
    );
    // The password never reaches the stored config or the logs.
    let keys = redis.cli(&["-a", "s3cret", "--no-auth-warning", "--scan"]);
    assert!(keys.is_none_or(|k| k.contains("sentinel:ratelimit:tls:")));
    assert!(!proxy.logs().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_mid_load_falls_back_and_recovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = RedisCluster::start().await;
    let (_backend, proxies, ports) = fleet(&cluster.url(), "token-bucket", 100, 100).await;
    // The node that holds the load's key: `{prefix}{filter}:{<hash>}`.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(b"shared-client");
    let key = format!(
        "sentinel:ratelimit:shared:{{{}}}",
        hex::encode(&digest[..16])
    );
    let owner = cluster.owner(&key).expect("a node owns the key's slot");
    let killer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.nodes[owner].kill();
    };
    let ((admitted, refused, _), ()) =
        tokio::join!(load(&ports, 6, Duration::from_secs(3), 20_000), killer);
    // Every request got an answer (admitted by Redis or the local
    // fallback, or limited); nothing hung, nothing crashed.
    assert!(admitted + refused > 0);
    for p in &proxies {
        let m = p.metrics().await;
        assert!(
            metric(
                &m,
                "sentinel_rate_limit_fallback_total{filter=\"shared\",mode=\"local\"}"
            ) > 0.0,
            "the fallback served while a master was down:\n{m}"
        );
    }
    // The node comes back with its nodes.conf and rejoins; shared limiting
    // resumes without touching the proxies.
    cluster.nodes[owner].restart().await;
    let port = cluster.nodes[(owner + 1) % 3].port;
    let healed = wait_for(Duration::from_secs(30), || async move {
        sentinel_tests::redis::cli(port, &["CLUSTER", "INFO"])
            .is_some_and(|i| i.contains("cluster_state:ok"))
    })
    .await;
    assert!(healed, "the cluster did not heal");
    let c = client();
    for (p, port) in proxies.iter().zip(&ports) {
        let before = metric(
            &p.metrics().await,
            "sentinel_rate_limit_redis_decisions_total{filter=\"shared\"}",
        );
        let resumed = wait_for(Duration::from_secs(20), || {
            let c = c.clone();
            async move {
                let _ = c
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("x-client", "after-heal")
                    .send()
                    .await;
                metric(
                    &p.metrics().await,
                    "sentinel_rate_limit_redis_decisions_total{filter=\"shared\"}",
                ) > before
            }
        })
        .await;
        assert!(
            resumed,
            "proxy on {port} did not return to Redis:\n{}",
            p.logs()
        );
    }
}
