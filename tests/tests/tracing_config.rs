//! A config change is one trace (issue 15): `sentinelctl apply` starts it,
//! the control plane's apply, compile, activation and per-node pushes are
//! spans of it, and every proxy's receive → build → swap → ACK (or NACK)
//! joins it through `DeltaResponse.trace_parent`. Without any collector
//! the control plane's own per-node timeline (`sentinelctl trace VERSION`)
//! still shows each node's way to the version.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sentinel_tests::otlp::{Collector, Span};
use sentinel_tests::{ControlPlane, DemoBackend, Proxy, http, wait_for, workspace_bin, write_file};
use serde_json::Value;

fn bins() -> (PathBuf, PathBuf, PathBuf) {
    (
        workspace_bin("sentinel-cp"),
        workspace_bin("sentinel"),
        workspace_bin("sentinel-bench-backend"),
    )
}

/// A fleet config serving `X-Config: v{version}`, exporting traces to
/// `collector` (when given) with every trace sampled.
fn config(version: u32, backend: SocketAddr, collector: Option<&str>, extra: &str) -> String {
    let tracing = collector
        .map(|c| {
            format!(r#"tracing {{ backend "otlp" {{ endpoint "{c}"; }}; sampling-rate 1.0; }}"#)
        })
        .unwrap_or_default();
    format!(
        r#"
observability {{ logging {{ access-log #false; }}; {tracing} }}
listeners {{
    listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}
{extra}
}}
upstreams {{ upstream "web" {{ target "{backend}"; }}; }}
routes {{
    route "all" {{
        upstream "web"
        policies {{ response-headers {{ set "X-Config" "v{version}"; }}; }}
    }}
}}
"#
    )
}

/// The id `sentinelctl apply --wait` printed (`trace <32 hex>`).
fn printed_trace_id(stdout: &str) -> String {
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .unwrap_or_else(|| panic!("no `trace` line in:\n{stdout}"))
        .trim()
        .to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn proxy_span<'a>(spans: &'a [Span], name: &str, node: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.name == name && s.attr("sentinel.node") == Some(node))
}

const NODES: [(&str, &str); 3] = [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apply_is_one_trace_with_every_proxy_and_a_nack_is_an_error_span() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &["--otlp-endpoint", &endpoint]).await;
    let urls = [cp.grpc_url()];
    // us-1 cannot bind the listener version 2 adds: it NACKs version 2.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let proxies: Vec<Proxy> = NODES
        .iter()
        .map(|(node, region)| {
            let env: &[(&str, &str)] = if *node == "us-1" {
                &[("EXTRA_ADDR", taken_addr.as_str())]
            } else {
                &[]
            };
            Proxy::start(&proxy_bin, node, region, &urls, env)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();

    // Version 1 turns tracing on: its own arrival is traced (the pipeline
    // current after the swap records the spans).
    let v1 = write_file(
        dir.path(),
        "v1.kdl",
        &config(1, backend.addr, Some(&endpoint), ""),
    );
    let (code, out, err) = cp.ctl(&[
        "apply",
        v1.to_str().unwrap(),
        "--wait=30s",
        "--otlp-endpoint",
        &endpoint,
    ]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", cp.logs());
    let trace_id = printed_trace_id(&out);
    let want = |spans: &[Span]| {
        let t: Vec<Span> = spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        [
            "config.receive",
            "config.build",
            "config.swap",
            "config.ack",
        ]
        .iter()
        .all(|name| NODES.iter().all(|(n, _)| proxy_span(&t, name, n).is_some()))
            && named(&t, "config.push").len() >= 3
            && named(&t, "sentinelctl apply").len() == 1
            && named(&t, "config.activate").len() == 1
    };
    let all = collector
        .wait_for(
            Duration::from_secs(30),
            "the CP's, sentinelctl's and every proxy's spans of the apply",
            want,
        )
        .await;
    let spans = collector.trace(&trace_id);
    let root = named(&spans, "sentinelctl apply")[0];
    assert_eq!(root.service(), "sentinelctl");
    assert_eq!(root.parent_span_id, "", "sentinelctl starts the trace");
    let apply = named(&spans, "config.apply");
    assert_eq!(apply.len(), 1, "{spans:#?}");
    assert_eq!(
        apply[0].parent_span_id, root.span_id,
        "the CP's apply span is a child of sentinelctl's"
    );
    assert_eq!(apply[0].service(), "sentinel-cp");
    assert_eq!(apply[0].attr("sentinel.config.version"), Some("1"));
    let activate = named(&spans, "config.activate")[0];
    assert_eq!(activate.parent_span_id, apply[0].span_id);
    assert_eq!(activate.attr("sentinel.config.version"), Some("1"));
    let compile = named(&spans, "config.compile");
    assert_eq!(compile.len(), 1);
    assert_eq!(compile[0].parent_span_id, apply[0].span_id);
    let store = named(&spans, "config.store");
    assert_eq!(store.len(), 1);
    assert_eq!(store[0].parent_span_id, activate.span_id);
    let pushes = named(&spans, "config.push");
    for p in &pushes {
        assert_eq!(p.parent_span_id, activate.span_id);
        assert_eq!(p.status_code, 0, "{p:?}");
    }
    for (node, region) in NODES {
        assert!(
            pushes.iter().any(|p| p.attr("sentinel.node") == Some(node)
                && p.attr("sentinel.region") == Some(region)),
            "a config.push span for {node}: {pushes:#?}"
        );
        for name in [
            "config.receive",
            "config.build",
            "config.swap",
            "config.ack",
        ] {
            let s = proxy_span(&spans, name, node).unwrap();
            assert_eq!(s.service(), "sentinel", "{s:?}");
            assert_eq!(s.attr("sentinel.region"), Some(region), "{s:?}");
            assert_eq!(
                s.attr("sentinel.zone"),
                Some(format!("{region}-a").as_str())
            );
            assert_eq!(s.attr("sentinel.config.version"), Some("1"), "{s:?}");
            assert_eq!(
                s.parent_span_id, activate.span_id,
                "{name} of {node} is a child of the activation"
            );
            assert!(s.start_unix_nanos <= s.end_unix_nanos);
        }
    }
    // One trace: no proxy span of version 1 went anywhere else.
    let stray: Vec<&Span> = all
        .iter()
        .filter(|s| s.name.starts_with("config.") && s.attr("sentinel.config.version") == Some("1"))
        .filter(|s| s.trace_id != trace_id)
        .collect();
    assert!(
        stray.is_empty(),
        "spans of version 1 outside its trace: {stray:#?}"
    );

    // Version 2 adds a listener us-1 cannot bind: its NACK is an error span
    // with the reason, and so is the CP's push to it.
    let extra = "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }";
    let v2 = write_file(
        dir.path(),
        "v2.kdl",
        &config(2, backend.addr, Some(&endpoint), extra),
    );
    let (code, out, err) = cp.ctl(&["apply", v2.to_str().unwrap(), "--wait=3s"]);
    assert_ne!(code, 0, "us-1 refuses version 2: {out}\n{err}");
    let trace2 = printed_trace_id(&out);
    assert_ne!(trace2, trace_id, "each change is its own trace");
    let spans = collector
        .wait_for(
            Duration::from_secs(30),
            "us-1's config.nack and the CP's failed push",
            |spans| {
                let t: Vec<Span> = spans
                    .iter()
                    .filter(|s| s.trace_id == trace2)
                    .cloned()
                    .collect();
                proxy_span(&t, "config.nack", "us-1").is_some()
                    && proxy_span(&t, "config.push", "us-1").is_some_and(|p| p.status_code == 2)
                    && proxy_span(&t, "config.ack", "eu-1").is_some()
            },
        )
        .await;
    let nack = spans
        .iter()
        .find(|s| s.trace_id == trace2 && s.name == "config.nack")
        .unwrap();
    assert_eq!(nack.status_code, 2, "an error span: {nack:?}");
    assert!(nack.status_message.contains("cannot bind"), "{nack:?}");
    assert!(nack.status_message.contains("extra"), "{nack:?}");
    assert_eq!(nack.attr("sentinel.region"), Some("us"));
    assert!(
        proxy_span(&spans, "config.swap", "us-1").is_none_or(|s| s.trace_id != trace2),
        "nothing was swapped on us-1"
    );
    let push = spans
        .iter()
        .find(|s| {
            s.trace_id == trace2
                && s.name == "config.push"
                && s.attr("sentinel.node") == Some("us-1")
        })
        .unwrap();
    assert!(push.status_message.contains("cannot bind"), "{push:?}");
    assert_eq!(proxies[2].served().await.as_deref(), Some("v1"));

    // The same pipeline traces proxied requests in control-plane mode: a
    // request with a parent is a server span of that trace, from its proxy.
    let request_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let r = http()
        .get(format!("http://{}/", proxies[0].http))
        .header(
            "traceparent",
            format!("00-{request_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .expect("the proxy answers");
    assert!(r.status().is_success(), "{}", r.status());
    let spans = collector
        .wait_for(Duration::from_secs(30), "the request's server span", |s| {
            s.iter().any(|s| s.trace_id == request_trace && s.kind == 2)
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s.trace_id == request_trace && s.kind == 2)
        .unwrap();
    assert_eq!(server.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(
        server.resource.get("sentinel.node").map(String::as_str),
        Some("eu-1")
    );
    assert_eq!(server.service(), "sentinel");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinelctl_trace_shows_every_node_without_any_collector() {
    let (cp_bin, proxy_bin, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &[]).await;
    let urls = [cp.grpc_url()];
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let proxies: Vec<Proxy> = NODES
        .iter()
        .map(|(node, region)| {
            let env: &[(&str, &str)] = if *node == "us-1" {
                &[("EXTRA_ADDR", taken_addr.as_str())]
            } else {
                &[]
            };
            Proxy::start(&proxy_bin, node, region, &urls, env)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_file(dir.path(), "v1.kdl", &config(1, backend.addr, None, ""));
    let (code, out, err) = cp.ctl(&["apply", v1.to_str().unwrap(), "--wait=30s"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let trace_id = printed_trace_id(&out);

    // The timeline is written in the background: poll until every node
    // has its row.
    let rows = |v: &Value| v["nodes"].as_array().map_or(0, Vec::len);
    let mut json = Value::Null;
    let complete = wait_for(Duration::from_secs(10), || {
        let (code, out, _) = cp.ctl(&["trace", "1", "-o", "json"]);
        json = serde_json::from_str(&out).unwrap_or(Value::Null);
        let done = code == 0 && rows(&json) == 3;
        async move { done }
    })
    .await;
    assert!(complete, "{json:#}\n{}", cp.logs());
    assert_eq!(json["trace_id"], trace_id.as_str(), "{json:#}");
    assert_eq!(json["kind"], "apply");
    let steps: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(steps, ["config.compile", "config.store", "config.activate"]);
    for (node, region) in NODES {
        let row = json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("no row for {node}: {json:#}"));
        assert_eq!(row["region"], region);
        assert_eq!(row["outcome"], "ack");
        let pushed = row["pushed_at_unix_ms"].as_i64().unwrap();
        let answered = row["answered_at_unix_ms"].as_i64().unwrap();
        for key in ["received_unix_ms", "built_unix_ms", "swapped_unix_ms"] {
            let t = row[key].as_i64().unwrap_or_else(|| panic!("{key}: {row}"));
            // Same host, same clock: the proxy's times fall in between.
            assert!(pushed <= t && t <= answered, "{key}: {row}");
        }
        assert!(
            row["received_unix_ms"].as_i64() <= row["built_unix_ms"].as_i64()
                && row["built_unix_ms"].as_i64() <= row["swapped_unix_ms"].as_i64(),
            "{row}"
        );
        assert_eq!(row["total_ms"].as_i64().unwrap(), answered - pushed);
    }
    let (code, table, _) = cp.ctl(&["trace", "1"]);
    assert_eq!(code, 0);
    assert!(table.contains(&trace_id), "{table}");
    for (node, _) in NODES {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(node) && l.contains("ACK")),
            "{table}"
        );
    }

    // A NACK is a row with its reason; nothing swapped.
    let extra = "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }";
    let v2 = write_file(dir.path(), "v2.kdl", &config(2, backend.addr, None, extra));
    cp.ctl(&["apply", v2.to_str().unwrap()]);
    let mut json = Value::Null;
    let nacked = wait_for(Duration::from_secs(15), || {
        let (_, out, _) = cp.ctl(&["trace", "2", "-o", "json"]);
        json = serde_json::from_str(&out).unwrap_or(Value::Null);
        let done = json["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|r| r["node"] == "us-1"));
        async move { done }
    })
    .await;
    assert!(nacked, "{json:#}\n{}", proxies[2].logs());
    let row = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "us-1")
        .unwrap();
    assert_eq!(row["outcome"], "nack", "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("cannot bind"),
        "{row}"
    );
    assert!(row["swapped_unix_ms"].is_null(), "{row}");
    assert!(row["received_unix_ms"].is_i64(), "{row}");
    // An unknown version is a clear 404, not an empty timeline.
    let (code, _, err) = cp.ctl(&["trace", "99"]);
    assert_eq!(code, 1);
    assert!(err.contains("version 99 does not exist"), "{err}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_header_starts_a_new_trace() {
    let (cp_bin, _, backend_bin) = bins();
    let backend = DemoBackend::start(&backend_bin, "web");
    let cp = ControlPlane::start(&cp_bin, "", &[]).await;
    for (i, bad) in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzzzzzzzzzzzzzz-01",
    ]
    .iter()
    .enumerate()
    {
        let r = http()
            .post(format!("{}/v1/configs", cp.url()))
            .bearer_auth(&cp.token)
            .header("traceparent", *bad)
            .json(&serde_json::json!({ "source": config(i as u32 + 1, backend.addr, None, "") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{bad}");
        let body: Value = r.json().await.unwrap();
        let id = body["trace_id"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 32, "a new trace for {bad}: {body}");
        assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("traceparent", good)
        .json(&serde_json::json!({ "source": config(9, backend.addr, None, "") }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}
