//! The fleet's truth: what the control plane records about a proxy is what
//! that proxy holds, at any rate of change, across reconnects and replicas.
//!
//! - `overtaken_push_*`: the defect that started this (a response overtaken
//!   by the next activation before its ACK was forgotten);
//! - `model_*`: a seeded random schedule against two real `sentinel-cp`
//!   replicas on one PostgreSQL, with scripted proxies that delay, refuse,
//!   replay and drop; after every quiet point the invariant is checked.
//!   `TRUTH_SEED=N` replays a run, `TRUTH_STEPS=N` changes its length; the
//!   seed is printed at the start and in every failure;
//! - `real_proxies_*`: the same truth with real `sentinel` proxies under
//!   load and bursts of activations.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sentinel_proto as pb;
use sentinel_tests::scripted::{Answer, Holding, ScriptedProxy, Sent};
use sentinel_tests::{ControlPlane, JOIN_TOKEN, Postgres, workspace_bin};
use serde_json::{Value, json};
use tokio::sync::Mutex;

thread_local! {
    /// One client per thread (so per test runtime: a client's pooled
    /// connections belong to the runtime that opened them). Building one
    /// loads the TLS roots, which would cost more than the activations
    /// being timed.
    static CLIENT: reqwest::Client = {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client")
    };
}

fn http() -> reqwest::Client {
    CLIENT.with(Clone::clone)
}

async fn call(cp: &ControlPlane, method: &str, path: &str, body: Value) -> (u16, Value) {
    let method: reqwest::Method = method.parse().expect("method");
    let r = http()
        .request(method, format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token)
        .json(&body)
        .send()
        .await
        .expect("the control plane answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn apply(cp: &ControlPlane, source: &str) -> (u16, Value) {
    call(cp, "POST", "/v1/configs", json!({ "source": source })).await
}

async fn active_hash(cp: &ControlPlane) -> Option<String> {
    let (status, v) = call(cp, "GET", "/v1/configs/active", Value::Null).await;
    (status == 200).then(|| {
        v["version"]["hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

async fn node_records(cp: &ControlPlane) -> Vec<Value> {
    let (_, v) = call(cp, "GET", "/v1/nodes", Value::Null).await;
    v["nodes"].as_array().cloned().unwrap_or_default()
}

fn record<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["id"] == id)
}

/// A member of a family of configurations that add and remove routes and
/// upstreams: routes `r0..r5` on upstreams `u0..u3` whose targets move, and
/// now and then a route `nack-me` the scripted proxies refuse.
fn family(rng: &mut SmallRng, poison: bool) -> String {
    let mut upstreams = String::new();
    let mut routes = String::new();
    let mut used = [false; 4];
    for r in 0..6 {
        if rng.random_bool(0.5) || r == 0 {
            let u = rng.random_range(0..4);
            used[u] = true;
            routes.push_str(&format!(
                "    route \"r{r}\" {{ matches {{ path-prefix \"/r{r}\"; }}; upstream \"u{u}\"; }}\n"
            ));
        }
    }
    if poison {
        used[0] = true;
        routes.push_str(
            "    route \"nack-me\" { matches { path-prefix \"/nack\"; }; upstream \"u0\"; }\n",
        );
    }
    for (u, used) in used.iter().enumerate() {
        if *used || rng.random_bool(0.3) {
            let port = 9100 + rng.random_range(0..3);
            upstreams.push_str(&format!(
                "    upstream \"u{u}\" {{ target \"127.0.0.1:{port}\"; }}\n"
            ));
        }
    }
    format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:18080\"; }}; }}\n\
         upstreams {{\n{upstreams}}}\nroutes {{\n{routes}}}\n"
    )
}

/// How the script answers: refuse the poisoned config, otherwise apply.
fn policy(p: &ScriptedProxy) -> Answer {
    if p.next_holds(pb::ResourceType::Route, "nack-me") {
        Answer::Refuse
    } else {
        Answer::Apply
    }
}

struct Client {
    id: String,
    region: &'static str,
    stream: Option<ScriptedProxy>,
    /// What it holds while disconnected (a proxy's last-good cache).
    holding: Holding,
    refused: Vec<String>,
}

impl Client {
    fn holding(&self) -> &Holding {
        self.stream.as_ref().map_or(&self.holding, |s| &s.holding)
    }

    fn refused(&self, hash: &str) -> bool {
        self.refused.iter().any(|h| h == hash)
            || self
                .stream
                .as_ref()
                .is_some_and(|s| s.refused.iter().any(|h| h == hash))
    }
}

struct World {
    seed: u64,
    rng: SmallRng,
    cps: Vec<ControlPlane>,
    clients: Vec<Client>,
    log: VecDeque<String>,
    step: usize,
}

impl World {
    fn note(&mut self, line: String) {
        if self.log.len() >= 60 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {line}", self.step));
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\nseed = {} (replay with TRUTH_SEED={}), step {}\nlast steps:\n  {}",
            self.seed,
            self.seed,
            self.step,
            self.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
        )
    }

    async fn connect(&mut self, i: usize, keep: bool) {
        let replica = self.rng.random_range(0..self.cps.len());
        let holding = if keep {
            self.clients[i].holding.clone()
        } else {
            Holding::default()
        };
        let c = &self.clients[i];
        let url = self.cps[replica].grpc_url();
        match ScriptedProxy::connect(&url, &c.id, c.region, holding, Some(JOIN_TOKEN)).await {
            Ok(s) => {
                self.clients[i].stream = Some(s);
                self.note(format!(
                    "{} connects to replica {replica} (keeps holding: {keep})",
                    self.clients[i].id
                ));
            }
            Err(e) => panic!("{}", self.failure(&format!("connect failed: {e}"))),
        }
    }

    fn disconnect(&mut self, i: usize) {
        if let Some(s) = self.clients[i].stream.take() {
            self.clients[i].holding = s.holding.clone();
            self.clients[i].refused.extend(s.refused.iter().cloned());
            let pending = s.unanswered.len();
            self.note(format!(
                "{} disconnects ({pending} unanswered)",
                self.clients[i].id
            ));
        }
    }

    async fn answer(&mut self, i: usize, how: Option<Answer>) {
        let Some(s) = self.clients[i].stream.as_mut() else {
            return;
        };
        s.receive(Duration::from_millis(2)).await;
        let how = how.unwrap_or_else(|| policy(s));
        if let Some(sent) = s.answer(how).await {
            let id = self.clients[i].id.clone();
            self.note(format!("{id} answers {sent:?}"));
        }
    }

    async fn apply_random(&mut self) {
        let poison = self.rng.random_bool(0.08);
        let source = family(&mut self.rng, poison);
        let replica = self.rng.random_range(0..self.cps.len());
        let (status, v) = apply(&self.cps[replica], &source).await;
        assert!(
            status == 200 || status == 201,
            "{}",
            self.failure(&format!("apply answered {status}: {v}"))
        );
        self.note(format!(
            "apply on replica {replica} -> {} (poison {poison})",
            v["version"]
        ));
    }

    async fn rollback(&mut self) {
        let replica = self.rng.random_range(0..self.cps.len());
        let (status, v) = call(&self.cps[replica], "POST", "/v1/rollback", json!({})).await;
        self.note(format!("rollback on replica {replica} -> {status} {v}"));
    }

    /// Lets the streams go quiet (every response answered by policy), then
    /// checks: each proxy holds the active config unless it refused it, and
    /// the control plane's record of each proxy is what it holds.
    async fn quiesce_and_check(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let last = loop {
            for i in 0..self.clients.len() {
                if let Some(s) = self.clients[i].stream.as_mut() {
                    s.receive(Duration::from_millis(5)).await;
                    if s.closed() {
                        panic!(
                            "{}",
                            self.failure(&format!(
                                "the control plane closed {}'s stream",
                                self.clients[i].id
                            ))
                        );
                    }
                }
                while self.clients[i]
                    .stream
                    .as_ref()
                    .is_some_and(|s| !s.unanswered.is_empty())
                {
                    self.answer(i, None).await;
                }
            }
            let active = active_hash(&self.cps[0]).await.unwrap_or_default();
            let records = node_records(&self.cps[0]).await;
            let mut wrong = Vec::new();
            for c in &self.clients {
                let held = c.holding();
                if c.stream.is_some() && held.hash != active && !c.refused(&active) {
                    wrong.push(format!(
                        "{} holds {} (v{}), not the active {active}",
                        c.id, held.hash, held.number
                    ));
                }
                if held.hash.is_empty() {
                    continue;
                }
                let recorded = record(&records, &c.id)
                    .and_then(|r| r["acked_hash"].as_str())
                    .unwrap_or_default();
                if recorded != held.hash {
                    wrong.push(format!(
                        "{}: the control plane records {recorded}, the proxy holds {} (v{})",
                        c.id, held.hash, held.number
                    ));
                }
            }
            if wrong.is_empty() {
                self.note("quiet: every record is true".to_string());
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break wrong.join("\n");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        panic!("{}", self.failure(&format!("not true once quiet:\n{last}")));
    }
}

fn seed() -> u64 {
    std::env::var("TRUTH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

async fn two_replicas(pg: &Postgres) -> Vec<ControlPlane> {
    let bin = workspace_bin("sentinel-cp");
    let url = pg.url();
    vec![
        ControlPlane::start(&bin, &url, &["--replica", "one"]).await,
        ControlPlane::start(&bin, &url, &["--replica", "two"]).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overtaken_push_is_not_recorded_as_converged() {
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let with_api = "listeners { listener \"l\" { address \"127.0.0.1:18080\"; }; }\n\
        upstreams { upstream \"web\" { target \"127.0.0.1:9100\"; }; upstream \"api\" { target \"127.0.0.1:9101\"; }; }\n\
        routes { route \"all\" { upstream \"web\"; }; route \"api\" { matches { path-prefix \"/api\"; }; upstream \"api\"; }; }\n";
    let without_api = "listeners { listener \"l\" { address \"127.0.0.1:18080\"; }; }\n\
        upstreams { upstream \"web\" { target \"127.0.0.1:9100\"; }; }\n\
        routes { route \"all\" { upstream \"web\"; }; }\n";
    assert_eq!(apply(&cp, with_api).await.0, 201);
    let mut p = ScriptedProxy::connect(
        &cp.grpc_url(),
        "p1",
        "eu",
        Holding::default(),
        Some(JOIN_TOKEN),
    )
    .await
    .expect("connect");
    assert!(
        p.response(Duration::from_secs(5)).await,
        "no first response"
    );
    assert!(matches!(
        p.answer(Answer::Apply).await,
        Some(Sent::Ack { .. })
    ));
    let v1 = p.holding.hash.clone();

    // v2 drops `api`; the proxy receives it but has not answered when v1
    // is rolled back to.
    assert_eq!(apply(&cp, without_api).await.0, 201);
    assert!(
        p.response(Duration::from_secs(5)).await,
        "v2 was not pushed"
    );
    let (status, _) = call(&cp, "POST", "/v1/rollback", json!({})).await;
    assert_eq!(status, 200);
    // The proxy now ACKs v2: it holds v2, whatever the control plane did
    // meanwhile.
    let sent = p.answer(Answer::Apply).await;
    assert!(matches!(sent, Some(Sent::Ack { .. })), "{sent:?}");
    let v2 = p.holding.hash.clone();
    assert_ne!(v1, v2);

    // The truth, once quiet: the proxy is brought back to v1 and the record
    // says so; at no point may the record claim v1 while the proxy holds v2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        p.receive(Duration::from_millis(20)).await;
        while !p.unanswered.is_empty() {
            p.answer(Answer::Apply).await;
        }
        let records = node_records(&cp).await;
        let recorded = record(&records, "p1")
            .and_then(|r| r["acked_hash"].as_str())
            .unwrap_or_default()
            .to_string();
        if p.holding.hash == v1 && recorded == v1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after the rollback the proxy holds {} (v1 = {v1}, v2 = {v2}) and the control plane records {recorded}",
            p.holding.hash
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_random_schedules_keep_the_record_true() {
    let seed = seed();
    let steps: usize = std::env::var("TRUTH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    eprintln!("model: seed = {seed} (TRUTH_SEED={seed} replays), {steps} steps");
    let pg = Postgres::start();
    let cps = two_replicas(&pg).await;
    let mut w = World {
        seed,
        rng: SmallRng::seed_from_u64(seed),
        cps,
        clients: (0..4)
            .map(|i| Client {
                id: format!("node-{i}"),
                region: if i % 2 == 0 { "eu" } else { "us" },
                stream: None,
                holding: Holding::default(),
                refused: Vec::new(),
            })
            .collect(),
        log: VecDeque::new(),
        step: 0,
    };
    w.apply_random().await;
    for i in 0..w.clients.len() {
        w.connect(i, false).await;
    }
    for step in 0..steps {
        w.step = step;
        let i = w.rng.random_range(0..w.clients.len());
        let roll = w.rng.random_range(0..100);
        match roll {
            0..=21 => w.apply_random().await,
            22..=25 => {
                // A burst: several activations with no answer in between.
                let n = w.rng.random_range(2..6);
                for _ in 0..n {
                    w.apply_random().await;
                }
            }
            26..=31 => w.rollback().await,
            32..=61 => w.answer(i, None).await,
            62..=65 => w.answer(i, Some(Answer::Refuse)).await,
            66..=73 => {
                if let Some(s) = w.clients[i].stream.as_mut() {
                    s.receive(Duration::from_millis(2)).await;
                }
            }
            74..=77 => {
                let replayed = match w.clients[i].stream.as_mut() {
                    Some(s) => s.replay_stale_ack().await,
                    None => false,
                };
                if replayed {
                    let id = w.clients[i].id.clone();
                    w.note(format!("{id} replays a stale ACK"));
                }
            }
            78..=87 => {
                if w.clients[i].stream.is_some() {
                    w.disconnect(i);
                } else {
                    let keep = w.rng.random_bool(0.7);
                    w.connect(i, keep).await;
                }
            }
            88..=90 => {
                // Reconnect while the old stream is still open: the old one
                // ends after the new one began.
                let keep = w.rng.random_bool(0.7);
                if let Some(old) = w.clients[i].stream.take() {
                    w.clients[i].holding = old.holding.clone();
                    w.clients[i].refused.extend(old.refused.iter().cloned());
                    w.connect(i, keep).await;
                    drop(old);
                    let id = w.clients[i].id.clone();
                    w.note(format!("{id}'s old stream closed after the new one opened"));
                }
            }
            _ => {
                for c in 0..w.clients.len() {
                    if w.clients[c].stream.is_none() {
                        w.connect(c, true).await;
                    }
                }
                w.quiesce_and_check().await;
            }
        }
    }
    for c in 0..w.clients.len() {
        if w.clients[c].stream.is_none() {
            w.connect(c, true).await;
        }
    }
    w.quiesce_and_check().await;
    // Every connected node is recorded as connected.
    let records = node_records(&w.cps[0]).await;
    for c in &w.clients {
        let r = record(&records, &c.id);
        assert!(
            r.is_some_and(|r| r["connected"] == true),
            "{}",
            w.failure(&format!("{} is streaming but recorded as {r:?}", c.id))
        );
    }
}

/// A fleet config whose route `all` (the one under load) never changes
/// meaning, while routes `c0..c5` and upstreams `x0..x3` come and go.
fn churn(rng: &mut SmallRng, backend: std::net::SocketAddr) -> String {
    let mut upstreams = format!("    upstream \"web\" {{ target \"{backend}\"; }}\n");
    let mut routes = String::from("    route \"all\" { upstream \"web\"; }\n");
    let mut used = [false; 4];
    for r in 0..6 {
        if rng.random_bool(0.5) {
            let u = rng.random_range(0..4);
            used[u] = true;
            routes.push_str(&format!(
                "    route \"c{r}\" {{ matches {{ path-prefix \"/c{r}\"; }}; upstream \"x{u}\"; }}\n"
            ));
        }
    }
    for (u, used) in used.iter().enumerate() {
        if *used || rng.random_bool(0.3) {
            let port = 9200 + rng.random_range(0..3);
            upstreams.push_str(&format!(
                "    upstream \"x{u}\" {{ target \"127.0.0.1:{port}\"; }}\n"
            ));
        }
    }
    format!(
        "observability {{ logging {{ access-log #false; }}; }}\n\
         listeners {{ listener \"http\" {{ address \"${{SENTINEL_HTTP_ADDR}}\"; }}; }}\n\
         upstreams {{\n{upstreams}}}\nroutes {{\n{routes}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_proxies_converge_after_bursts_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let seed = seed();
    eprintln!("real proxies: seed = {seed} (TRUTH_SEED={seed} replays)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let backend =
        sentinel_tests::DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let pg = Postgres::start();
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), &pg.url(), &[]).await;
    let (status, _) = apply(&cp, &churn(&mut rng, backend.addr)).await;
    assert_eq!(status, 201);
    let bin = workspace_bin("sentinel");
    let proxies: Vec<sentinel_tests::Proxy> =
        [("p-eu-1", "eu"), ("p-eu-2", "eu"), ("p-us-1", "us")]
            .iter()
            .map(|(name, region)| {
                sentinel_tests::Proxy::start(&bin, name, region, &[cp.grpc_url()], &[])
            })
            .collect();
    for p in &proxies {
        let up = sentinel_tests::wait_for(Duration::from_secs(15), || async {
            http()
                .get(format!("http://{}/", p.http))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "{} never served", p.name);
    }

    // Load on the route that every version keeps: bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for p in &proxies {
        let (stop, sent, failed) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        let url = format!("http://{}/", p.http);
        load.push(tokio::spawn(async move {
            let client = http();
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // A steady load, not a CPU hog: the control plane shares
                // the machine's two cores with it.
                tokio::time::sleep(Duration::from_millis(2)).await;
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failed.lock().await.push(format!("{url}: {}", r.status())),
                    Err(e) => failed.lock().await.push(format!("{url}: {e}")),
                }
            }
        }));
    }

    // 100 activations: 60 paced applies of new versions (a rollback every
    // tenth), then 2 bursts of 20 re-activations of stored versions sent
    // back to back (no compile, so they land within ~100-200 ms even on a
    // debug build under load), the last burst ending the run.
    let mut versions: Vec<i64> = Vec::new();
    let mut burst_spans = Vec::new();
    let mut activations = 0;
    while activations < 100 {
        let burst = activations == 30 || activations == 80;
        if burst {
            let started = std::time::Instant::now();
            let targets: Vec<i64> = (0..20)
                .map(|_| versions[rng.random_range(0..versions.len())])
                .collect();
            let results = futures_util::future::join_all(
                targets
                    .iter()
                    .map(|to| call(&cp, "POST", "/v1/rollback", json!({ "to": to }))),
            )
            .await;
            for (status, v) in results {
                assert!(matches!(status, 200 | 409), "rollback: {status} {v}");
            }
            burst_spans.push(started.elapsed());
            activations += 20;
            continue;
        }
        let (status, v) = if activations % 10 == 9 {
            call(&cp, "POST", "/v1/rollback", json!({})).await
        } else {
            apply(&cp, &churn(&mut rng, backend.addr)).await
        };
        assert!(
            matches!(status, 200 | 201 | 409),
            "activation: {status} {v}"
        );
        if let Some(n) = v["version"].as_i64() {
            versions.push(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        activations += 1;
    }
    eprintln!("bursts of 20 took {burst_spans:?}");

    // Once quiet: every proxy runs the active config and the record says so.
    let active = active_hash(&cp).await.expect("an active version");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (converged, last) = loop {
        let records = node_records(&cp).await;
        let mut wrong = Vec::new();
        for p in &proxies {
            let running = http()
                .get(format!("http://{}/admin/config", p.admin))
                .send()
                .await
                .ok();
            let running = match running {
                Some(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                None => Value::Null,
            };
            let hash = running["version"]["hash"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let recorded = record(&records, &p.name)
                .and_then(|r| r["acked_hash"].as_str())
                .unwrap_or_default()
                .to_string();
            if hash != active || recorded != active {
                wrong.push(format!("{}: runs {hash}, recorded {recorded}", p.name));
            }
        }
        if wrong.is_empty() {
            break (true, String::new());
        }
        if tokio::time::Instant::now() >= deadline {
            break (false, wrong.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    assert!(converged, "active {active}: {last}");
    let failed = failed.lock().await;
    let total = sent.load(Ordering::Relaxed);
    eprintln!(
        "{total} requests under 100 activations, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    for p in &proxies {
        assert!(
            !p.logs().contains("not the announced"),
            "{} saw a response that did not fit what it held:\n{}",
            p.name,
            p.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_stream_ending_after_a_reconnect_leaves_the_node_connected() {
    let pg = Postgres::start();
    let cps = two_replicas(&pg).await;
    let mut rng = SmallRng::seed_from_u64(7);
    assert_eq!(apply(&cps[0], &family(&mut rng, false)).await.0, 201);
    for (first, second) in [(0, 0), (0, 1)] {
        let id = format!("racer-{first}{second}");
        let connected = |cp: &ControlPlane| {
            let id = id.clone();
            let cp_url = cp.url();
            let token = cp.token.clone();
            async move {
                let v: Value = http()
                    .get(format!("{cp_url}/v1/nodes"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let nodes = v["nodes"].as_array()?.clone();
                record(&nodes, &id).map(|r| r["connected"] == true)
            }
        };
        let mut old = ScriptedProxy::connect(
            &cps[first].grpc_url(),
            &id,
            "eu",
            Holding::default(),
            Some(JOIN_TOKEN),
        )
        .await
        .expect("first stream");
        assert!(old.response(Duration::from_secs(5)).await);
        old.answer(Answer::Apply).await;
        let mut new = ScriptedProxy::connect(
            &cps[second].grpc_url(),
            &id,
            "eu",
            old.holding.clone(),
            Some(JOIN_TOKEN),
        )
        .await
        .expect("second stream");
        // The new session is recorded; then the old stream ends.
        assert!(
            sentinel_tests::wait_for(Duration::from_secs(10), || async {
                let records = node_records(&cps[0]).await;
                record(&records, &id).is_some_and(|r| {
                    r["connected"] == true
                        && r["replica"] == if second == 0 { "one" } else { "two" }
                })
            })
            .await
        );
        drop(old);
        // Give the old stream's end every chance to be written, then check
        // the node is still connected on both replicas' view.
        new.receive(Duration::from_millis(500)).await;
        let poll_until = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < poll_until {
            assert_eq!(
                connected(&cps[0]).await,
                Some(true),
                "{id}: the old stream's end marked the streaming node disconnected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!new.closed());
    }
}
