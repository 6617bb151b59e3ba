//! External agents end to end: the real `sentinel` binary calling scripted
//! agents (built on the agent SDK) over Unix sockets and loopback gRPC.
//!
//! Every failure mode is its own test: agent missing at start (open vs
//! closed), killed mid-load and restarted, slower than `timeout-ms`,
//! answering garbage, circuit opening and recovering half-open, retries
//! only after transport errors, health checks; and the decisions: deny,
//! redirect, header rewrites, metadata, body inspection within limits.
//! Tests wait for conditions with a deadline (`wait_for`), never a fixed
//! sleep followed by an assertion.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Sentinel, client, streaming_backend};
use sentinel_agent::decision::{self, DecisionExt};
use sentinel_agent::{Header, HeaderMutation, Listen, ResponseDecision};
use sentinel_tests::agent::{Script, TestAgent};
use sentinel_tests::{free_port, wait_for};

/// A document with one listener, upstream `app` over `backend`, the given
/// `agents` block content and `routes` block content.
fn doc(port: u16, backend: SocketAddr, agents: &str, routes: &str) -> String {
    format!(
        r#"
observability {{
    logging {{ access-log #true; }}
}}
listeners {{
    listener "http" {{ address "127.0.0.1:{port}"; }}
}}
upstreams {{
    upstream "app" {{
        target "{backend}"
    }}
}}
agents {{
{agents}
}}
routes {{
{routes}
}}
"#
    )
}

/// An agent block with health checks off (tests that want them say so)
/// and `extra` nodes.
fn agent(name: &str, a: &TestAgent, extra: &str) -> String {
    format!(
        "    agent \"{name}\" {{\n        {}\n        health-check {{ enabled #false; }}\n        {extra}\n    }}\n",
        a.transport()
    )
}

fn route(name: &str, prefix: &str, agents: &[&str], policies: &str) -> String {
    let list: Vec<String> = agents.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "    route \"{name}\" {{\n        matches {{ path-prefix \"{prefix}\"; }}\n        upstream \"app\"\n        agents {}\n        policies {{ {policies} }}\n    }}\n",
        list.join(" ")
    )
}

/// The value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn get(port: u16, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
}

async fn status(port: u16, path: &str) -> u16 {
    get(port, path).await.status().as_u16()
}

#[tokio::test]
async fn uds_and_grpc_agents_rewrite_headers_and_pass_metadata() {
    let backend = Backend::start("app").await;
    let auth = TestAgent::unix().await;
    let waf = TestAgent::tcp().await;
    auth.agent.decide(
        decision::allow()
            .set_request_header("x-user", "alice")
            .remove_request_header("x-secret")
            .set_response_header("x-checked-by", "auth")
            .metadata("user", "alice"),
    );
    let mut add = decision::allow().inspect_response();
    add.request_headers = Some(HeaderMutation {
        add: vec![decision::header("x-waf", "ok")],
        ..Default::default()
    });
    waf.agent.decide(add);
    *waf.agent.on_response.lock().unwrap() = ResponseDecision {
        response_headers: Some(HeaderMutation {
            set: vec![decision::header("x-waf-response", "seen")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &(agent("auth", &auth, "") + &agent("waf", &waf, "")),
        &route("all", "/", &["auth", "waf"], ""),
    ))
    .await;

    let resp = client()
        .get(format!("http://127.0.0.1:{port}/items?id=7"))
        .header("x-secret", "1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", proxy.logs());
    assert_eq!(resp.headers()["x-checked-by"], "auth");
    assert_eq!(resp.headers()["x-waf-response"], "seen");
    {
        let seen = backend.last_headers.lock().unwrap();
        assert_eq!(seen["x-user"], "alice");
        assert_eq!(seen["x-waf"], "ok");
        assert!(!seen.contains_key("x-secret"), "removed by the agent");
    }
    let first = auth.agent.last_event().unwrap();
    assert_eq!(first.protocol_version, 1);
    assert_eq!(
        (first.route.as_str(), first.agent.as_str()),
        ("all", "auth")
    );
    assert_eq!(
        (
            first.method.as_str(),
            first.path.as_str(),
            first.query.as_str()
        ),
        ("GET", "/items", "id=7")
    );
    assert_eq!(first.client_ip, "127.0.0.1");
    assert!(!first.tls.unwrap().secure);
    assert!(first.headers.iter().any(|h| h.name == "x-secret"));
    assert_eq!(
        first.trace.unwrap().traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(first.request_id.len(), 32);
    let second = waf.agent.last_event().unwrap();
    assert_eq!(
        second.metadata.get("user").map(String::as_str),
        Some("alice")
    );
    assert!(
        second
            .headers
            .iter()
            .any(|h| h.name == "x-user" && h.value == b"alice"),
        "later agents see earlier mutations"
    );
    assert_eq!(second.request_id, first.request_id);
    assert_eq!(waf.agent.response_calls.load(Ordering::SeqCst), 1);

    // One connection per agent, reused by every call.
    for _ in 0..20 {
        assert_eq!(status(port, "/").await, 200);
    }
    assert_eq!((auth.connections(), waf.connections()), (1, 1));
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_decisions_total{agent=\"auth\",result=\"allow\"}"
        ),
        21.0
    );
    assert!(
        m.contains("sentinel_agent_latency_seconds_bucket{agent=\"waf\""),
        "{m}"
    );
    let logged = wait_for(Duration::from_secs(5), || async {
        let logs = proxy.logs();
        logs.contains("agent_metadata") && logs.contains("user=alice")
    })
    .await;
    assert!(logged, "metadata in the access log:\n{}", proxy.logs());
}

#[tokio::test]
async fn deny_and_redirect_decisions_answer_the_client() {
    let backend = Backend::start("app").await;
    let a = TestAgent::unix().await;
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &agent("gate", &a, ""),
        &route("all", "/", &["gate"], ""),
    ))
    .await;

    a.agent.decide(decision::deny_with(
        401,
        vec![decision::header("www-authenticate", "Bearer")],
        b"no token\n".to_vec(),
    ));
    let resp = get(port, "/private").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "no token\n");

    a.agent.decide(decision::redirect(
        307,
        "https://login.example/?next=/private",
    ));
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/private"))
        .send()
        .await;
    // reqwest follows redirects by default; the login host does not exist,
    // so look at the raw answer with a client that does not.
    drop(resp);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow
        .get(format!("http://127.0.0.1:{port}/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "https://login.example/?next=/private"
    );

    assert_eq!(
        backend.hits(),
        0,
        "denied requests never reach the upstream"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_decisions_total{agent=\"gate\",result=\"deny\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "sentinel_agent_decisions_total{agent=\"gate\",result=\"redirect\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&m, "sentinel_requests_total{route=\"all\",status=\"401\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_missing_agent_fails_closed_or_open_as_configured() {
    let backend = Backend::start("app").await;
    // Neither agent listens yet.
    let (dir_s, strict_path) = TestAgent::unix_path();
    let (dir_l, lenient_path) = TestAgent::unix_path();
    let mut strict = TestAgent::at(Listen::Unix(strict_path));
    strict.keep_dir(dir_s);
    let mut lenient = TestAgent::at(Listen::Unix(lenient_path));
    lenient.keep_dir(dir_l);
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &(agent("strict", &strict, "failure-mode \"closed\"")
            + &agent("lenient", &lenient, "failure-mode \"open\"")),
        &(route("strict", "/strict", &["strict"], "")
            + &route("lenient", "/lenient", &["lenient"], "")),
    ))
    .await;

    let started = Instant::now();
    let resp = get(port, "/strict").await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("an agent could not check the request"),
        "the public reason names no socket path"
    );
    assert_eq!(status(port, "/lenient").await, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failures are fast"
    );
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "sentinel_agent_errors_total{agent=\"strict\",kind=\"transport\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_decisions_total{agent=\"strict\",result=\"failed_closed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_decisions_total{agent=\"lenient\",result=\"failed_open\"}"
        ),
        1.0
    );

    // The agent arrives: the proxy connects without a restart or reload.
    strict.start().await;
    let ok = wait_for(Duration::from_secs(10), || async {
        status(port, "/strict").await == 200
    })
    .await;
    assert!(ok, "{}", proxy.logs());
    assert!(strict.agent.calls() >= 1);
}

#[tokio::test]
async fn an_agent_slower_than_its_timeout_gets_the_failure_mode() {
    let backend = Backend::start("app").await;
    let slow = TestAgent::tcp().await;
    slow.agent.set_delay(1500);
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &agent(
            "slow",
            &slow,
            "timeout-ms 100\n        circuit-breaker { enabled #false; }",
        ),
        &(route("closed", "/closed", &["slow"], "")
            + &route("open", "/open", &["slow"], "failure-mode \"open\"")
            + &route("patient", "/patient", &["slow"], "agent-timeout-ms 5000")),
    ))
    .await;

    let t = Instant::now();
    assert_eq!(status(port, "/closed").await, 503);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(status(port, "/open").await, 200, "route override: open");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(
        status(port, "/patient").await,
        200,
        "route override: timeout"
    );
    assert!(t.elapsed() >= Duration::from_millis(1400));
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_errors_total{agent=\"slow\",kind=\"timeout\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "sentinel_agent_retries_total{agent=\"slow\"}"),
        0.0
    );
}

#[tokio::test]
async fn an_agent_returning_garbage_gets_the_failure_mode() {
    let backend = Backend::start("app").await;
    let bad = TestAgent::unix().await;
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &agent("bad", &bad, "circuit-breaker { enabled #false; }"),
        &(route("closed", "/closed", &["bad"], "")
            + &route("open", "/open", &["bad"], "failure-mode \"open\"")),
    ))
    .await;
    let garbage = [
        decision::deny(1000, "status out of range"),
        decision::redirect(200, "/not-a-redirect-status"),
        decision::allow().set_request_header("bad header name", "x"),
        {
            let mut d = decision::allow();
            d.response_headers = Some(HeaderMutation {
                set: vec![Header {
                    name: "x-ok".into(),
                    value: b"line\r\nbreak".to_vec(),
                }],
                ..Default::default()
            });
            d
        },
    ];
    for (i, g) in garbage.iter().enumerate() {
        bad.agent.decide(g.clone());
        let resp = get(port, "/closed").await;
        assert_eq!(resp.status(), 503, "case {i}");
        assert!(!resp.headers().contains_key("x-ok"), "never half applied");
        assert_eq!(status(port, "/open").await, 200, "case {i}");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_errors_total{agent=\"bad\",kind=\"invalid\"}"
        ),
        8.0
    );
    assert_eq!(bad.agent.calls(), 8, "an unusable answer is not retried");
    assert!(proxy.child.id() > 0);
    assert_eq!(
        status(port, "/open").await,
        200,
        "the proxy is still serving"
    );
}

#[tokio::test]
async fn the_circuit_opens_after_the_failure_threshold_and_recovers_half_open() {
    let backend = Backend::start("app").await;
    let (dir, path) = TestAgent::unix_path();
    let mut a = TestAgent::at(Listen::Unix(path));
    a.keep_dir(dir);
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &agent(
            "auth",
            &a,
            "circuit-breaker {\n            failure-threshold 3\n            success-threshold 2\n            timeout-seconds 1\n        }",
        ),
        &route("all", "/", &["auth"], ""),
    ))
    .await;
    let errors = |m: &str, kind: &str| {
        metric(
            m,
            &format!("sentinel_agent_errors_total{{agent=\"auth\",kind=\"{kind}\"}}"),
        )
    };

    for _ in 0..3 {
        assert_eq!(status(port, "/").await, 503);
    }
    let m = proxy.metrics().await;
    assert_eq!(errors(&m, "transport"), 3.0);
    assert_eq!(
        metric(&m, "sentinel_agent_circuit_breaker_state{agent=\"auth\"}"),
        1.0,
        "open"
    );
    // Open: requests fail at once without trying the agent.
    assert_eq!(status(port, "/").await, 503);
    let m = proxy.metrics().await;
    assert_eq!(errors(&m, "transport"), 3.0);
    assert!(errors(&m, "circuit_open") >= 1.0);

    // The agent comes back; after `timeout-seconds` a probe goes through,
    // and `success-threshold` successes close the circuit.
    a.start().await;
    let recovered = wait_for(Duration::from_secs(10), || async {
        status(port, "/").await == 200
    })
    .await;
    assert!(recovered, "{}", proxy.logs());
    assert_eq!(status(port, "/").await, 200);
    let closed = wait_for(Duration::from_secs(5), || async {
        metric(
            &proxy.metrics().await,
            "sentinel_agent_circuit_breaker_state{agent=\"auth\"}",
        ) == 0.0
    })
    .await;
    assert!(closed);
    assert!(proxy.logs().contains("agent circuit breaker opened"));
    assert!(proxy.logs().contains("agent circuit breaker closed"));
}

#[tokio::test]
async fn retries_happen_only_after_transport_errors() {
    let backend = Backend::start("app").await;
    let (dir, path) = TestAgent::unix_path();
    let mut gone = TestAgent::at(Listen::Unix(path));
    gone.keep_dir(dir);
    let slow = TestAgent::unix().await;
    slow.agent.set_delay(1000);
    let refusing = TestAgent::unix().await;
    refusing
        .agent
        .decide(decision::deny(0, "").tap_status(1_000_000));
    let port = free_port();
    let retry = "timeout-ms 2000\n        retry { attempts 3; backoff-ms 5; }\n        circuit-breaker { enabled #false; }";
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &(agent("gone", &gone, retry)
            + &agent(
                "slow",
                &slow,
                &retry.replace("timeout-ms 2000", "timeout-ms 200"),
            )
            + &agent("refusing", &refusing, retry)),
        &(route("gone", "/gone", &["gone"], "")
            + &route("slow", "/slow", &["slow"], "")
            + &route("refusing", "/refusing", &["refusing"], "")),
    ))
    .await;

    assert_eq!(status(port, "/gone").await, 503);
    assert_eq!(status(port, "/slow").await, 503);
    assert_eq!(status(port, "/refusing").await, 503);
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "sentinel_agent_retries_total{agent=\"gone\"}"),
        2.0,
        "3 attempts"
    );
    assert_eq!(
        metric(&m, "sentinel_agent_retries_total{agent=\"slow\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "sentinel_agent_retries_total{agent=\"refusing\"}"),
        0.0
    );
    assert_eq!(slow.agent.calls(), 1, "a timeout is not retried");
    assert_eq!(refusing.agent.calls(), 1, "an answer is not retried");

    // A retry finds the agent once it is back within the timeout.
    gone.start().await;
    assert_eq!(status(port, "/gone").await, 200);
}

/// Test-only: a deny with any status, even one the proxy must refuse.
trait TapStatus {
    fn tap_status(self, status: u32) -> Self;
}

impl TapStatus for sentinel_agent::RequestDecision {
    fn tap_status(mut self, status: u32) -> Self {
        if let Some(sentinel_proto::agent_protocol::request_decision::Action::Deny(d)) =
            &mut self.action
        {
            d.status = status;
        }
        self
    }
}

#[tokio::test]
async fn body_inspection_sends_at_most_max_body_bytes() {
    let backend = streaming_backend("app").await;
    let a = TestAgent::unix().await;
    a.agent.set(Script::ReportBody);
    let port = free_port();
    let _proxy = Sentinel::start(&doc(
        port,
        backend,
        &agent("waf", &a, "body \"buffered\"\n        max-body-bytes 10"),
        &route("all", "/", &["waf"], ""),
    ))
    .await;
    let post = |body: Vec<u8>| async move {
        client()
            .post(format!("http://127.0.0.1:{port}/len"))
            .body(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    assert_eq!(post(b"hello".to_vec()).await, "len=5");
    let e = a.agent.last_event().unwrap();
    assert_eq!(
        (e.body.as_slice(), e.body_truncated),
        (&b"hello"[..], false)
    );

    let big = vec![b'x'; 100_000];
    assert_eq!(
        post(big).await,
        "len=100000",
        "the upstream gets the whole body"
    );
    let e = a.agent.last_event().unwrap();
    assert!(e.body_truncated);
    assert!(e.body.len() >= 10 && e.body.len() <= 100_000);
    assert!(e.body.iter().all(|b| *b == b'x'));

    assert_eq!(status(port, "/len").await, 200);
    let e = a.agent.last_event().unwrap();
    assert!(e.body.is_empty() && !e.body_truncated);
}

/// `body "streamed"`: every piece goes to the agent before it goes
/// upstream, up to `max-body-bytes`; a deny stops the body and the client
/// gets the deny, not the upstream's answer.
#[tokio::test]
async fn a_streamed_body_is_inspected_piece_by_piece_and_a_deny_stops_it() {
    let backend = streaming_backend("app").await;
    let a = TestAgent::unix().await;
    *a.agent.body_marker.lock().unwrap() = Some(b"EVIL".to_vec());
    let port = free_port();
    let _proxy = Sentinel::start(&doc(
        port,
        backend,
        &agent("waf", &a, "body \"streamed\"\n        max-body-bytes 64"),
        &route("all", "/", &["waf"], ""),
    ))
    .await;
    let events = || a.agent.body_events.lock().unwrap().clone();
    let post = |body: reqwest::Body| async move {
        let r = client()
            .post(format!("http://127.0.0.1:{port}/len"))
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    // A clean body: forwarded whole, seen whole, its end marked.
    assert_eq!(
        post("hello world".into()).await,
        (200, "len=11".to_string())
    );
    let seen = events();
    let text: Vec<u8> = seen.iter().flat_map(|e| e.chunk.clone()).collect();
    assert_eq!(text, b"hello world");
    assert!(
        seen.last().is_some_and(|e| e.end_of_stream && !e.truncated),
        "{seen:?}"
    );
    a.agent.body_events.lock().unwrap().clear();

    // A streamed upload whose second piece carries the marker: the agent
    // denies that piece, the upstream request is aborted before it, and the
    // client gets the agent's deny.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let watcher = Arc::clone(&a.agent);
    let sender = tokio::spawn(async move {
        // Each piece is sent once the agent saw the one before, so pieces
        // are separate frames whatever the machine's load.
        for piece in [&b"aaaa"[..], b"EVIL", b"bbbb"] {
            if tx.send(Ok(bytes::Bytes::from_static(piece))).await.is_err() {
                break;
            }
            let seen = wait_for(Duration::from_secs(10), || async {
                watcher
                    .body_events
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.chunk.windows(4).any(|w| w == piece))
            })
            .await;
            if !seen {
                break;
            }
        }
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (code, text) = post(body).await;
    sender.abort();
    assert_eq!((code, text.as_str()), (403, "the body carries the marker"));
    let seen = events();
    assert!(
        seen.iter()
            .any(|e| e.chunk.windows(4).any(|w| w == b"EVIL")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e.chunk.windows(4).any(|w| w == b"bbbb")),
        "nothing after the deny reaches the agent: {seen:?}"
    );
    a.agent.body_events.lock().unwrap().clear();

    // Past max-body-bytes the rest flows unseen: the agent's last piece
    // says so, the upstream still gets the whole body.
    assert_eq!(
        post(vec![b'x'; 10_000].into()).await,
        (200, "len=10000".to_string())
    );
    let seen = events();
    let total: usize = seen.iter().map(|e| e.chunk.len()).sum();
    assert!(total <= 64, "{total} bytes sent to the agent");
    assert!(seen.last().is_some_and(|e| e.truncated), "{seen:?}");

    // A request without a body costs no body event.
    a.agent.body_events.lock().unwrap().clear();
    assert_eq!(status(port, "/len").await, 200);
    assert!(events().is_empty());
}

/// A streamed-body agent that cannot decide on a piece in time gets its
/// failure mode: closed stops the body (503), open lets the rest through.
#[tokio::test]
async fn a_streamed_body_agent_that_times_out_gets_the_failure_mode() {
    let backend = streaming_backend("app").await;
    let a = TestAgent::unix().await;
    a.agent.body_delay_ms.store(5_000, Ordering::SeqCst);
    let port = free_port();
    let _proxy = Sentinel::start(&doc(
        port,
        backend,
        &agent(
            "waf",
            &a,
            "body \"streamed\"\n        timeout-ms 100\n        failure-mode \"closed\"\n        circuit-breaker { enabled #false; }",
        ),
        &(route("closed", "/len", &["waf"], "")
            + &route("open", "/open/len", &["waf"], "failure-mode \"open\"")),
    ))
    .await;
    let post = |path: &'static str| async move {
        let started = Instant::now();
        let r = client()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(10))
            .body("hello")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), started.elapsed())
    };
    let (code, took) = post("/len").await;
    assert_eq!(code, 503, "fail closed stops the body");
    assert!(
        took < Duration::from_secs(4),
        "bounded by timeout-ms, not the 5 s agent: {took:?}"
    );
    let (code, _) = post("/open/len").await;
    assert_eq!(code, 200, "fail open lets the body through");
}

#[tokio::test]
async fn an_agent_killed_mid_load_and_restarted_sees_only_the_failure_mode() {
    let backend = Backend::start("app").await;
    let mut closed = TestAgent::unix().await;
    let mut open = TestAgent::tcp().await;
    let breaker = "timeout-ms 200\n        circuit-breaker { failure-threshold 5; success-threshold 1; timeout-seconds 1; }";
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &(agent("closed", &closed, breaker)
            + &agent(
                "open",
                &open,
                &format!("{breaker}\n        failure-mode \"open\""),
            )),
        &(route("c", "/c", &["closed"], "") + &route("o", "/o", &["open"], "")),
    ))
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<BTreeMap<(String, u16), usize>>> = Arc::default();
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let mut load = Vec::new();
    for i in 0..6 {
        let (stop, done, seen, slowest) =
            (stop.clone(), done.clone(), seen.clone(), slowest.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let path = if i % 2 == 0 { "/c" } else { "/o" };
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = c
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let code = match r {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                let took = t.elapsed();
                let mut s = slowest.lock().unwrap();
                *s = (*s).max(took);
                drop(s);
                *seen
                    .lock()
                    .unwrap()
                    .entry((path.to_string(), code))
                    .or_default() += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let count = |path: &'static str, code: u16| {
        let seen = seen.clone();
        move || {
            let n = seen
                .lock()
                .unwrap()
                .get(&(path.to_string(), code))
                .copied()
                .unwrap_or(0);
            async move { n }
        }
    };
    assert!(
        wait_for(Duration::from_secs(10), || async {
            done.load(Ordering::SeqCst) >= 200
        })
        .await
    );

    closed.kill();
    open.kill();
    let c503 = count("/c", 503);
    assert!(
        wait_for(Duration::from_secs(10), || async { c503().await >= 20 }).await,
        "the closed agent's route answers 503 while it is down"
    );
    let before = done.load(Ordering::SeqCst);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            done.load(Ordering::SeqCst) >= before + 100
        })
        .await
    );

    closed.start().await;
    open.start().await;
    let ok_again = closed.agent.calls();
    assert!(
        wait_for(Duration::from_secs(10), || async {
            closed.agent.calls() > ok_again + 20
        })
        .await,
        "the restarted agent is called again"
    );
    let c200 = count("/c", 200);
    let after_restart = c200().await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            c200().await >= after_restart + 20
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    for ((path, code), n) in &seen {
        match (path.as_str(), code) {
            ("/c", 200 | 503) | ("/o", 200) => {}
            _ => panic!(
                "{n} requests to {path} got {code}: {seen:?}\n{}",
                proxy.logs()
            ),
        }
    }
    let slowest = *slowest.lock().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "every request bounded, slowest {slowest:?}"
    );
    assert!(!proxy.logs().contains("panicked"));
}

#[tokio::test]
async fn health_checks_mark_a_dead_agent_unhealthy_and_recover() {
    let backend = Backend::start("app").await;
    let a = TestAgent::tcp().await;
    let port = free_port();
    let block = format!(
        "    agent \"auth\" {{\n        {}\n        health-check {{\n            interval-ms 50\n            timeout-ms 100\n            healthy-threshold 2\n            unhealthy-threshold 2\n        }}\n    }}\n",
        a.transport()
    );
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &block,
        &route("all", "/", &["auth"], ""),
    ))
    .await;
    let health = || async {
        metric(
            &proxy.metrics().await,
            "sentinel_agent_health{agent=\"auth\"}",
        )
    };
    assert_eq!(status(port, "/").await, 200);
    assert_eq!(health().await, 1.0);

    a.agent.serving.store(false, Ordering::SeqCst);
    assert!(wait_for(Duration::from_secs(5), || async { health().await == 0.0 }).await);
    let calls = a.agent.calls();
    assert_eq!(
        status(port, "/").await,
        503,
        "an unhealthy agent fails closed"
    );
    assert_eq!(a.agent.calls(), calls, "an unhealthy agent is not called");
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "sentinel_agent_errors_total{agent=\"auth\",kind=\"unhealthy\"}"
        ) >= 1.0
    );

    a.agent.serving.store(true, Ordering::SeqCst);
    assert!(wait_for(Duration::from_secs(5), || async { health().await == 1.0 }).await);
    assert_eq!(status(port, "/").await, 200);
}

#[tokio::test]
async fn agent_state_that_did_not_change_survives_config_swaps() {
    let backend = Backend::start("app").await;
    let a = TestAgent::unix().await;
    let port = free_port();
    let one = doc(
        port,
        backend.addr,
        &agent("auth", &a, ""),
        &route("all", "/", &["auth"], ""),
    );
    let proxy = Sentinel::start(&one).await;
    for _ in 0..5 {
        assert_eq!(status(port, "/").await, 200);
    }
    assert_eq!(a.connections(), 1);
    let hash = proxy.admin_json("/admin/config").await["version"]["hash"].clone();

    // Another route: the agent resource is unchanged, so is its connection.
    let two = doc(
        port,
        backend.addr,
        &agent("auth", &a, ""),
        &(route("all", "/", &["auth"], "") + &route("more", "/more", &["auth"], "")),
    );
    proxy.reload(&two);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            proxy.admin_json("/admin/config").await["version"]["hash"] != hash
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(status(port, "/more").await, 200);
    }
    assert_eq!(
        a.connections(),
        1,
        "the agent's connection survived the swap"
    );

    // A changed agent gets a new client (and connection).
    let hash = proxy.admin_json("/admin/config").await["version"]["hash"].clone();
    proxy.reload(&doc(
        port,
        backend.addr,
        &agent("auth", &a, "timeout-ms 500"),
        &route("all", "/", &["auth"], ""),
    ));
    assert!(
        wait_for(Duration::from_secs(10), || async {
            proxy.admin_json("/admin/config").await["version"]["hash"] != hash
        })
        .await
    );
    assert_eq!(status(port, "/").await, 200);
    assert_eq!(a.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_see_the_client_connections_tls_facts() {
    common::init_tls();
    let backend = Backend::start("app").await;
    let a = TestAgent::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        tls {{
            cert-file "{}"
            key-file "{}"
        }}
    }}
}}
upstreams {{ upstream "app" {{ target "{}"; }}; }}
agents {{
{}
}}
routes {{ route "all" {{ upstream "app"; agents "auth"; }}; }}
"#,
        cert_path.display(),
        key_path.display(),
        backend.addr,
        agent("auth", &a, "")
    );
    let _proxy = Sentinel::start(&cfg).await;
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("https://localhost:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = a.agent.last_event().unwrap();
    let tls = e.tls.unwrap();
    assert!(tls.secure);
    assert_eq!(tls.sni, "localhost");
    assert_eq!(tls.alpn, "h2");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(
        (e.scheme.as_str(), e.http_version.as_str()),
        ("https", "HTTP/2")
    );
}

/// A "gRPC server" on a Unix socket that answers every call with a frame
/// of bytes that are not a protobuf message, and status OK. Counts calls.
async fn garbage_agent(path: std::path::PathBuf) -> Arc<AtomicUsize> {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            // Compressed flag 0, length 8, then 8 bytes of
                            // wire-type garbage; trailers say OK.
                            let mut frame = vec![0u8, 0, 0, 0, 8];
                            frame.extend_from_slice(&[0xff; 8]);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(Bytes::from(frame))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    calls
}

#[tokio::test]
async fn an_agent_answering_bytes_that_are_not_protobuf_gets_the_failure_mode() {
    let backend = Backend::start("app").await;
    let (dir, path) = TestAgent::unix_path();
    let calls = garbage_agent(path.clone()).await;
    let port = free_port();
    let block = format!(
        "    agent \"junk\" {{\n        unix-socket \"{}\"\n        retry {{ attempts 3; backoff-ms 1; }}\n        health-check {{ enabled #false; }}\n        circuit-breaker {{ enabled #false; }}\n    }}\n",
        path.display()
    );
    let proxy = Sentinel::start(&doc(
        port,
        backend.addr,
        &block,
        &(route("closed", "/closed", &["junk"], "")
            + &route("open", "/open", &["junk"], "failure-mode \"open\"")),
    ))
    .await;
    assert_eq!(status(port, "/closed").await, 503);
    assert_eq!(status(port, "/open").await, 200);
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sentinel_agent_errors_total{agent=\"junk\",kind=\"invalid\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "sentinel_agent_retries_total{agent=\"junk\"}"),
        0.0,
        "an answer is not retried"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        proxy.logs().contains("failed to decode"),
        "{}",
        proxy.logs()
    );
    drop(dir);
}
