//! OpenTelemetry traces of proxied requests, end to end: the real binary
//! exports over OTLP/gRPC to a real receiver (`sentinel_tests::otlp`), and
//! the backend shows what context it received.
//!
//! Asserted: one server span per request (HTTP semantic conventions),
//! parented on the client's context; one client span per upstream attempt
//! (retries visible); agent and Redis calls as children; the context
//! injected upstream is the attempt's span (W3C, or B3 when configured);
//! the ratio sampler for new traces and the parent's decision otherwise;
//! the trace id in the JSON access log; and a collector that is down costs
//! dropped spans (counted), never failed requests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, Sentinel, client};
use sentinel_agent::decision;
use sentinel_tests::agent::TestAgent;
use sentinel_tests::otlp::{Collector, Span};
use sentinel_tests::redis::RedisServer;
use sentinel_tests::{free_port, wait_for};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

/// A proxy config tracing to `endpoint` with `tracing_extra` lines, over
/// `targets`, with optional agent and filter blocks on route `all`.
fn doc(
    port: u16,
    targets: &[SocketAddr],
    endpoint: &str,
    tracing_extra: &str,
    agents: &str,
    filters: &str,
) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("        target \"{t}\"\n"))
        .collect();
    let agent_names = if agents.is_empty() {
        ""
    } else {
        "        agents \"auth\"\n"
    };
    let filter_names = if filters.is_empty() {
        ""
    } else {
        "        filters \"shared\"\n"
    };
    format!(
        r#"
observability {{
    logging {{ access-log #true; format "json"; }}
    tracing {{
        backend "otlp" {{ endpoint "{endpoint}"; }}
        service-name "edge"
{tracing_extra}
    }}
}}
listeners {{
    listener "http" {{ address "127.0.0.1:{port}"; }}
}}
upstreams {{
    upstream "app" {{
{targets}        load-balancing "round_robin"
        retry {{ attempts 2; backoff-ms 0; min-retries-per-second 100; }}
        health-check {{ enabled #false; }}
    }}
}}
{agents}
{filters}
routes {{
    route "all" {{
        matches {{ path-prefix "/"; }}
        upstream "app"
{agent_names}{filter_names}    }}
}}
"#
    )
}

fn traceparent(trace: &str, span: &str, sampled: bool) -> String {
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// A random 32-hex trace id.
fn trace_id() -> String {
    format!("{:032x}", rand::random::<u128>() | 1)
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

fn server_span<'a>(spans: &'a [Span], trace: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == SERVER)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_server_spans_with_agent_redis_and_one_client_span_per_attempt() {
    let collector = Collector::start().await;
    let backend = Backend::start("ok").await;
    // Nothing listens here: the attempt that picks it fails to connect.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let auth = TestAgent::unix().await;
    auth.agent.decide(decision::allow());
    let redis = RedisServer::start().await;
    let agents = format!(
        "agents {{\n    agent \"auth\" {{\n        {}\n        health-check {{ enabled #false; }}\n    }}\n}}\n",
        auth.transport()
    );
    let filters = format!(
        "filters {{\n    filter \"shared\" {{\n        type \"rate-limit\"\n        max-rps 10000\n        burst 10000\n        key \"header:x-client\"\n        backend \"redis\"\n        redis-url \"{}\"\n        redis-timeout-ms 500\n    }}\n}}\n",
        redis.url()
    );
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        &[dead, backend.addr],
        &collector.endpoint(),
        "        sampling-rate 1.0",
        &agents,
        &filters,
    ))
    .await;

    // Round robin over a dead and a live target: every other request
    // fails its first attempt and is retried on the live one.
    let c = client();
    let mut sent = Vec::new();
    for _ in 0..4 {
        let (trace, parent) = (trace_id(), format!("{:016x}", rand::random::<u64>() | 1));
        let r = c
            .get(format!("http://127.0.0.1:{port}/orders?id=7"))
            .header("traceparent", traceparent(&trace, &parent, true))
            .header("tracestate", "vendor=kept")
            .header("x-client", "c1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", proxy.logs());
        sent.push((trace, parent));
    }
    let spans = collector
        .wait_for(Duration::from_secs(30), "4 server spans", |spans| {
            sent.iter().all(|(t, _)| server_span(spans, t).is_some())
        })
        .await;

    let mut retried = 0;
    for (trace, parent) in &sent {
        let server = server_span(&spans, trace).unwrap();
        assert_eq!(&server.parent_span_id, parent, "parented on the client");
        assert_eq!(server.name, "GET all");
        assert_eq!(server.service(), "edge");
        assert_eq!(
            server.resource.get("sentinel.region").map(String::as_str),
            Some("default")
        );
        assert_eq!(server.attr("http.request.method"), Some("GET"));
        assert_eq!(server.attr("http.route"), Some("all"));
        assert_eq!(server.attr("url.path"), Some("/orders"));
        assert_eq!(server.attr("url.query"), Some("id=7"));
        assert_eq!(server.attr("http.response.status_code"), Some("200"));
        assert_eq!(server.attr("client.address"), Some("127.0.0.1"));
        assert_eq!(server.attr("sentinel.upstream"), Some("app"));
        assert_eq!(
            server.attr("sentinel.target"),
            Some(backend.addr.to_string().as_str())
        );
        assert_ne!(server.status_code, ERROR);

        let kids = children(&spans, server);
        let agent = kids
            .iter()
            .find(|s| s.name == "agent auth request")
            .unwrap_or_else(|| panic!("no agent span under {server:?}: {kids:?}"));
        assert_eq!(agent.kind, CLIENT);
        assert_eq!(agent.attr("sentinel.agent.decision"), Some("allow"));
        let limit = kids
            .iter()
            .find(|s| s.name == "rate-limit shared")
            .unwrap_or_else(|| panic!("no rate-limit span: {kids:?}"));
        assert_eq!(limit.attr("db.system.name"), Some("redis"));
        assert_eq!(limit.attr("sentinel.rate_limit.decision"), Some("allowed"));

        let mut attempts: Vec<&&Span> = kids.iter().filter(|s| s.name == "GET").collect();
        attempts.sort_by_key(|s| s.start_unix_nanos);
        assert!(!attempts.is_empty(), "{kids:?}");
        let last = attempts.last().unwrap();
        assert_eq!(last.kind, CLIENT);
        assert_eq!(last.attr("http.response.status_code"), Some("200"));
        assert_eq!(last.attr("server.address"), Some("127.0.0.1"));
        assert_eq!(
            last.attr("server.port"),
            Some(backend.addr.port().to_string().as_str())
        );
        if attempts.len() == 2 {
            retried += 1;
            let first = attempts[0];
            assert_eq!(first.attr("error.type"), Some("connect"), "{first:?}");
            assert_eq!(first.status_code, ERROR);
            assert_eq!(
                first.attr("server.port"),
                Some(dead.port().to_string().as_str())
            );
            assert_eq!(last.attr("http.request.resend_count"), Some("1"));
            assert_eq!(server.attr("sentinel.attempts"), Some("2"));
        }
    }
    assert!(
        retried >= 1,
        "round robin put no first attempt on the dead target"
    );

    // What the backend and the agent received is the context of their
    // own call: the last request's successful attempt and agent span.
    let (trace, _) = sent.last().unwrap();
    let server = server_span(&spans, trace).unwrap();
    let kids = children(&spans, server);
    let attempt = kids
        .iter()
        .filter(|s| s.name == "GET")
        .max_by_key(|s| s.start_unix_nanos)
        .unwrap();
    let headers = backend.last_headers.lock().unwrap().clone();
    assert_eq!(
        headers["traceparent"].to_str().unwrap(),
        traceparent(trace, &attempt.span_id, true)
    );
    assert_eq!(headers["tracestate"], "vendor=kept");
    let agent = kids
        .iter()
        .find(|s| s.name == "agent auth request")
        .unwrap();
    let event = auth.agent.last_event().unwrap();
    assert_eq!(
        event.trace.map(|t| t.traceparent),
        Some(traceparent(trace, &agent.span_id, true))
    );

    // The JSON access log names the trace.
    let logs = proxy.logs();
    assert!(
        logs.contains(&format!("\"trace_id\":\"{trace}\"")),
        "no trace id in the access log:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_propagation_reads_the_single_header_and_writes_the_multi_headers() {
    let collector = Collector::start().await;
    let backend = Backend::start("ok").await;
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        &[backend.addr],
        &collector.endpoint(),
        "        sampling-rate 1.0\n        propagation \"b3\"",
        "",
        "",
    ))
    .await;
    let trace = trace_id();
    let r = client()
        .get(format!("http://127.0.0.1:{port}/b3"))
        .header("b3", format!("{trace}-e457b5a2e4d86bd1-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.logs());
    let spans = collector
        .wait_for(Duration::from_secs(30), "the b3 request", |s| {
            server_span(s, &trace).is_some()
        })
        .await;
    let server = server_span(&spans, &trace).unwrap();
    assert_eq!(server.parent_span_id, "e457b5a2e4d86bd1");
    let attempt = children(&spans, server)
        .into_iter()
        .find(|s| s.kind == CLIENT)
        .expect("a client span");
    let headers = backend.last_headers.lock().unwrap().clone();
    assert_eq!(headers["x-b3-traceid"], trace.as_str());
    assert_eq!(headers["x-b3-spanid"], attempt.span_id.as_str());
    assert_eq!(headers["x-b3-sampled"], "1");
    assert!(
        headers.get("b3").is_none(),
        "the client's single header is replaced"
    );
    assert!(headers.get("traceparent").is_none(), "b3 only: {headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_rate_decides_new_traces_and_a_parent_decides_its_own() {
    let collector = Collector::start().await;
    let backend = Backend::start("ok").await;
    let port = free_port();
    let proxy = Sentinel::start(&doc(
        port,
        &[backend.addr],
        &collector.endpoint(),
        "        sampling-rate 0.0",
        "",
        "",
    ))
    .await;
    let c = client();

    // No parent, rate 0: not sampled, but the context still goes upstream
    // (flags 00) so the backend's spans join the same unsampled trace.
    let r = c
        .get(format!("http://127.0.0.1:{port}/new"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.logs());
    let unsampled = backend.last_headers.lock().unwrap()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    let unsampled_trace = unsampled.split('-').nth(1).unwrap().to_string();

    // An unsampled parent: its trace and decision go on upstream, with
    // this proxy's span id, and nothing is exported.
    let quiet = trace_id();
    let r = c
        .get(format!("http://127.0.0.1:{port}/quiet"))
        .header(
            "traceparent",
            traceparent(&quiet, "00f067aa0ba902b7", false),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let passed = backend.last_headers.lock().unwrap()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(passed.starts_with(&format!("00-{quiet}-")), "{passed}");
    assert!(passed.ends_with("-00"), "{passed}");
    assert!(
        !passed.contains("00f067aa0ba902b7"),
        "a new span id: {passed}"
    );

    // A sampled parent: sampled, whatever the rate.
    let trace = trace_id();
    let r = c
        .get(format!("http://127.0.0.1:{port}/parent"))
        .header("traceparent", traceparent(&trace, "00f067aa0ba902b7", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = collector
        .wait_for(Duration::from_secs(30), "the sampled request", |s| {
            server_span(s, &trace).is_some()
        })
        .await;
    // Unsampled spans never enter the export queue: by the time a later
    // sampled one arrived, an exported unsampled one would be here.
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id != unsampled_trace && s.trace_id != quiet),
        "an unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_counted_drops_not_requests_and_a_reload_starts_export() {
    let backend = Backend::start("ok").await;
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let proxy = Sentinel::start(&doc(
        port,
        &[backend.addr],
        &dead,
        "        sampling-rate 1.0",
        "",
        "",
    ))
    .await;
    let c = client();
    for i in 0..50 {
        let r = c
            .get(format!("http://127.0.0.1:{port}/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", proxy.logs());
    }
    let dropped = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("sentinel_tracing_spans_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        wait_for(Duration::from_secs(30), || async {
            dropped(&proxy.metrics().await) >= 50.0
        })
        .await,
        "the lost spans are counted:\n{}",
        proxy.metrics().await
    );

    // A reload that names a live collector starts exporting.
    let collector = Collector::start().await;
    proxy.reload(&doc(
        port,
        &[backend.addr],
        &collector.endpoint(),
        "        sampling-rate 1.0",
        "",
        "",
    ));
    let trace = trace_id();
    assert!(
        wait_for(Duration::from_secs(30), || async {
            let _ = c
                .get(format!("http://127.0.0.1:{port}/after"))
                .header("traceparent", traceparent(&trace, "00f067aa0ba902b7", true))
                .send()
                .await;
            server_span(&collector.spans(), &trace).is_some()
        })
        .await,
        "no span after the reload:\n{}",
        proxy.logs()
    );
}
