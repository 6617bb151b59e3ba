//! Fan-out benchmark: N simulated proxies on one `sentinel-cp`.
//!
//! Starts the control plane (SQLite in a temp dir, free loopback ports),
//! applies a config with R routes, connects N streams (spread over several
//! HTTP/2 connections), waits until all hold it, then applies a change of
//! one endpoint and measures, per simulated proxy, the time from the apply
//! request to its ACK. Prints p50/p99/max, the control plane's peak RSS, and
//! the bytes each proxy received for the one-endpoint change.
//!
//! Usage: sentinel-fanout [--nodes N] [--routes R] [--cp PATH]

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use tokio::sync::mpsc;

struct Args {
    nodes: usize,
    routes: usize,
    cp: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1000,
        routes: 10,
        cp: sentinel_tests::workspace_bin_in("release", "sentinel-cp"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--nodes" => a.nodes = value.parse().unwrap_or(a.nodes),
            "--routes" => a.routes = value.parse().unwrap_or(a.routes),
            "--cp" => a.cp = value.into(),
            _ => {
                eprintln!("usage: sentinel-fanout [--nodes N] [--routes R] [--cp PATH]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn config(routes: usize, target_port: u16) -> String {
    let mut doc = format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:8080\"; }}; }}\nupstreams {{\n    upstream \"edge\" {{ target \"127.0.0.1:{target_port}\"; }}\n    upstream \"u\" {{ target \"127.0.0.1:9\"; }}\n}}\nroutes {{\n"
    );
    for i in 0..routes {
        doc.push_str(&format!(
            "    route \"route-{i}\" {{ matches {{ path-prefix \"/service-{i}/\"; host \"t{i}.example.com\"; }}; upstream \"u\"; }}\n"
        ));
    }
    doc.push_str("}\n");
    doc
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One simulated proxy: holds what it received, ACKs everything, reports
/// (version, bytes, instant) for every response it applied.
async fn proxy(
    channel: tonic::transport::Channel,
    id: usize,
    report: mpsc::UnboundedSender<(u64, usize, Instant)>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::Hello {
        node: Some(pb::Node {
            id: format!("sim-{id}"),
            region: format!("r{}", id % 3),
            zone: "a".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = tx
        .send(pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Hello(hello)),
        })
        .await;
    let mut stream = ConfigStreamClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .delta(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut bytes = 0;
    while let Some(msg) = stream.message().await? {
        if msg.keepalive {
            continue;
        }
        bytes += msg.encoded_len();
        if msg.chunk + 1 < msg.chunk_count {
            continue;
        }
        let ack = pb::Ack {
            nonce: msg.nonce.clone(),
            config_version: msg.config_version.clone(),
        };
        let _ = tx
            .send(pb::DeltaRequest {
                kind: Some(pb::delta_request::Kind::Ack(ack)),
            })
            .await;
        let _ = report.send((msg.version_number, bytes, Instant::now()));
        bytes = 0;
    }
    Ok(())
}

async fn apply(http: &reqwest::Client, api: &str, source: String) -> Instant {
    let started = Instant::now();
    let r = http
        .post(format!("{api}/v1/configs"))
        .bearer_auth(sentinel_tests::BOOTSTRAP_TOKEN)
        .json(&serde_json::json!({ "source": source }))
        .send()
        .await
        .expect("apply");
    assert!(r.status().is_success(), "apply failed: {}", r.status());
    started
}

/// Set when measuring is over: streams closing afterwards are expected.
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args();
    let cp = sentinel_tests::ControlPlane::start(&a.cp, "", &["--keepalive-secs", "60"]).await;
    let pid = cp.pid().unwrap_or(0);
    let http = reqwest::Client::new();
    apply(&http, &cp.url(), config(a.routes, 9001)).await;

    // ~100 streams per HTTP/2 connection.
    let connections = a.nodes.div_ceil(100).max(1);
    let mut channels = Vec::new();
    for _ in 0..connections {
        let ch = tonic::transport::Endpoint::from_shared(cp.grpc_url())
            .expect("url")
            .http2_adaptive_window(true)
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let report_tx = Arc::new(report_tx);
    let connect_started = Instant::now();
    for id in 0..a.nodes {
        let ch = channels[id % connections].clone();
        let tx = (*report_tx).clone();
        tokio::spawn(async move {
            if let Err(e) = proxy(ch, id, tx).await
                && !DONE.load(std::sync::atomic::Ordering::Relaxed)
            {
                eprintln!("sim-{id}: {e}");
            }
        });
    }
    let mut initial = 0;
    let mut initial_bytes = 0;
    while initial < a.nodes {
        match tokio::time::timeout(Duration::from_secs(120), reports.recv()).await {
            Ok(Some((1, bytes, _))) => {
                initial += 1;
                initial_bytes += bytes;
            }
            Ok(Some(_)) => {}
            _ => panic!(
                "only {initial}/{} proxies received the first version",
                a.nodes
            ),
        }
    }
    println!(
        "{} proxies connected and on v1 in {:.2} s ({} bytes each for the full config)",
        a.nodes,
        connect_started.elapsed().as_secs_f64(),
        initial_bytes / a.nodes
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let applied = apply(&http, &cp.url(), config(a.routes, 9002)).await;
    let mut times = Vec::with_capacity(a.nodes);
    let mut bytes = 0usize;
    while times.len() < a.nodes {
        match tokio::time::timeout(Duration::from_secs(120), reports.recv()).await {
            Ok(Some((2, b, at))) => {
                times.push(at.duration_since(applied));
                bytes += b;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {}/{} proxies converged on v2", times.len(), a.nodes),
        }
    }
    times.sort();
    DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "one-endpoint change, {} proxies, {} routes: convergence p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         {} bytes per proxy; control plane peak RSS {:.0} MiB",
        a.nodes,
        a.routes,
        percentile(&times, 0.50).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        bytes / a.nodes,
        peak_rss_mib(pid),
    );
}
