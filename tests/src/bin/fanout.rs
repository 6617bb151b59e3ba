//! Fan-out benchmark: N simulated proxies on one `sentinel-cp`.
//!
//! Starts the control plane (SQLite in a temp dir, free loopback ports),
//! applies a config with R routes, connects N streams (spread over several
//! HTTP/2 connections), waits until all hold it, then applies a change of
//! one endpoint and measures, per simulated proxy, the time from the apply
//! request to its ACK. Prints p50/p99/max, the control plane's peak RSS, and
//! the bytes each proxy received for the one-endpoint change.
//!
//! With `--churn`, measures endpoint churn instead: a Consul double (in this
//! process) serves services `s0..sU`; the config has U upstreams `u0..uU`,
//! each discovering `s<i>` from it, and R routes spread over them. Once every
//! simulated proxy holds the first discovered set of every upstream, a driver
//! re-registers one instance per change (round-robin over the services) at
//! `--rate` changes per second for `--secs` seconds; the new port encodes the
//! change's sequence number within its upstream. Each simulated proxy decodes
//! the `Endpoints` resources it receives and logs when it first held each
//! sequence number; a change counts as reached by a proxy when the proxy
//! holds it or a later one of the same upstream (the control plane coalesces,
//! so intermediate sets may be skipped). Prints p50/p99/max of the time from
//! a source change until every proxy held it, bytes per proxy per change, the
//! control plane's CPU over the churn (share of one core: mean and the
//! busiest second) and its peak RSS.
//!
//! The simulated proxies share HTTP/2 connections (`--per-conn`, default
//! 100 streams each) and keep nothing of a response but its header fields
//! and size, so 100,000 of them fit in this process. Also printed: the time
//! until every proxy holds the first version (connect + initial push), the
//! control plane's CPU seconds for the connect and for the change, and this
//! tool's own peak RSS.
//!
//! With `--restart`, the control plane is then killed (SIGKILL) and started
//! again on the same ports and database; every simulated proxy reconnects
//! (0–1 s of jitter, retries every 100–300 ms) naming the version it holds,
//! and the tool prints the time until every hello was accepted, with the
//! new process's CPU and peak RSS.
//!
//! Usage: sentinel-fanout [--nodes N] [--routes R] [--per-conn P] [--restart] [--cp PATH]
//!        sentinel-fanout --churn [--nodes N] [--upstreams U] [--rate C] [--secs S]
//!                        [--routes R] [--cp PATH]

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sentinel_proto as pb;
use tokio::sync::mpsc;

struct Args {
    nodes: usize,
    routes: usize,
    cp: std::path::PathBuf,
    churn: bool,
    upstreams: usize,
    rate: usize,
    secs: u64,
    /// Simulated proxies per HTTP/2 connection.
    per_conn: usize,
    /// After the change, kill the control plane and time the fleet's reconnect.
    restart: bool,
}

const USAGE: &str = "usage: sentinel-fanout [--nodes N] [--routes R] [--per-conn P] [--restart] [--cp PATH]\n       \
                     sentinel-fanout --churn [--nodes N] [--upstreams U] [--rate C] [--secs S] [--routes R] [--cp PATH]";

fn args() -> Args {
    let mut a = Args {
        nodes: 1000,
        routes: 10,
        cp: sentinel_tests::workspace_bin_in("release", "sentinel-cp"),
        churn: false,
        upstreams: 100,
        rate: 1000,
        secs: 60,
        per_conn: 100,
        restart: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--churn" {
            a.churn = true;
            continue;
        }
        if flag == "--restart" {
            a.restart = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        let ok = match flag.as_str() {
            "--nodes" => value.parse().map(|v| a.nodes = v).is_ok(),
            "--routes" => value.parse().map(|v| a.routes = v).is_ok(),
            "--upstreams" => value.parse().map(|v| a.upstreams = v).is_ok(),
            "--rate" => value.parse().map(|v| a.rate = v).is_ok(),
            "--secs" => value.parse().map(|v| a.secs = v).is_ok(),
            "--per-conn" => value.parse().map(|v: usize| a.per_conn = v.max(1)).is_ok(),
            "--cp" => {
                a.cp = value.into();
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("{USAGE}");
            std::process::exit(2);
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

/// What the fan-out measurement keeps of a response: the decoder skips
/// resources and removals (prost skips unknown fields), so a simulated
/// proxy never allocates the configuration it is sent — only counts it.
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(string, tag = "1")]
    nonce: String,
    #[prost(string, tag = "2")]
    config_version: String,
    #[prost(uint64, tag = "3")]
    version_number: u64,
    #[prost(uint32, tag = "6")]
    chunk: u32,
    #[prost(uint32, tag = "7")]
    chunk_count: u32,
    #[prost(bool, tag = "8")]
    keepalive: bool,
}

/// The fields of a response a simulated proxy acts on.
trait Response: Message + Default + Send + 'static {
    fn nonce(&self) -> &str;
    fn config_version(&self) -> &str;
    fn keepalive(&self) -> bool;
    /// (chunk, chunk_count)
    fn chunk(&self) -> (u32, u32);
}

impl Response for Head {
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn config_version(&self) -> &str {
        &self.config_version
    }
    fn keepalive(&self) -> bool {
        self.keepalive
    }
    fn chunk(&self) -> (u32, u32) {
        (self.chunk, self.chunk_count)
    }
}

impl Response for pb::DeltaResponse {
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn config_version(&self) -> &str {
        &self.config_version
    }
    fn keepalive(&self) -> bool {
        self.keepalive
    }
    fn chunk(&self) -> (u32, u32) {
        (self.chunk, self.chunk_count)
    }
}

/// A decoded response and its encoded size.
struct Sized<M> {
    msg: M,
    len: usize,
}

/// The simulated proxy's codec: `DeltaRequest` out, `M` in, with small
/// buffers (100,000 streams share this process).
struct SimCodec<M>(std::marker::PhantomData<M>);

fn sim_buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(256, 32 * 1024)
}

impl<M: Response> tonic::codec::Codec for SimCodec<M> {
    type Encode = pb::DeltaRequest;
    type Decode = Sized<M>;
    type Encoder = SimCodec<M>;
    type Decoder = SimCodec<M>;

    fn encoder(&mut self) -> Self::Encoder {
        SimCodec(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SimCodec(std::marker::PhantomData)
    }
}

impl<M: Response> tonic::codec::Encoder for SimCodec<M> {
    type Item = pb::DeltaRequest;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: pb::DeltaRequest,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        sim_buffers()
    }
}

impl<M: Response> tonic::codec::Decoder for SimCodec<M> {
    type Item = Sized<M>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Sized<M>>, tonic::Status> {
        use bytes::Buf;
        let len = src.remaining();
        M::decode(src)
            .map(|msg| Some(Sized { msg, len }))
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        sim_buffers()
    }
}

/// A simulated proxy's stream: hello sent, responses read (keepalives
/// skipped, bytes counted), the last chunk of each response ACKed.
struct SimStream<M> {
    tx: mpsc::Sender<pb::DeltaRequest>,
    stream: tonic::Streaming<Sized<M>>,
    /// Encoded bytes received since the last ACK.
    bytes: usize,
}

impl<M: Response> SimStream<M> {
    async fn open(channel: tonic::transport::Channel, id: usize) -> Result<Self, tonic::Status> {
        Self::open_holding(channel, id, None).await
    }

    /// As `open`, naming in the hello the configuration it runs
    /// (`version_number`, `config_version`), as a proxy reconnecting does.
    async fn open_holding(
        channel: tonic::transport::Channel,
        id: usize,
        holds: Option<(u64, String)>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(2);
        let (version_number, config_version) = holds.unwrap_or_default();
        let hello = pb::Hello {
            node: Some(pb::Node {
                id: format!("sim-{id}"),
                region: format!("r{}", id % 3),
                zone: "a".into(),
                ..Default::default()
            }),
            version_number,
            config_version,
            ..Default::default()
        };
        let _ = tx
            .send(pb::DeltaRequest {
                kind: Some(pb::delta_request::Kind::Hello(hello)),
            })
            .await;
        let mut grpc =
            tonic::client::Grpc::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let stream = grpc
            .streaming(
                sentinel_tests::join_request(tokio_stream::wrappers::ReceiverStream::new(rx)),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/sentinel.v1.ConfigStream/Delta",
                ),
                SimCodec::<M>(std::marker::PhantomData),
            )
            .await?
            .into_inner();
        Ok(Self {
            tx,
            stream,
            bytes: 0,
        })
    }

    /// The next non-keepalive message (one chunk), `None` when the stream
    /// ends. Cancel-safe: the byte count lives in `self`.
    async fn message(&mut self) -> Result<Option<M>, tonic::Status> {
        while let Some(Sized { msg, len }) = self.stream.message().await? {
            if !msg.keepalive() {
                self.bytes += len;
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    fn is_last_chunk(msg: &M) -> bool {
        let (chunk, count) = msg.chunk();
        chunk + 1 >= count
    }

    /// ACKs `msg` (the last chunk of a response) and returns the bytes the
    /// whole response took.
    async fn ack(&mut self, msg: &M) -> usize {
        let ack = pb::Ack {
            nonce: msg.nonce().to_string(),
            config_version: msg.config_version().to_string(),
            ..Default::default()
        };
        let _ = self
            .tx
            .send(pb::DeltaRequest {
                kind: Some(pb::delta_request::Kind::Ack(ack)),
            })
            .await;
        std::mem::take(&mut self.bytes)
    }
}

/// utime + stime of `pid`, in seconds.
pub(crate) fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After "pid (comm)": state is field 3; utime 14, stime 15.
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks_per_sec)
        })
        .unwrap_or(0.0)
}

pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One simulated proxy: holds what it received, ACKs everything, reports
/// (version, bytes, instant) for every response it applied.
/// Reported by a simulated proxy whose hello a restarted control plane
/// accepted (in place of a version number).
const RECONNECTED: u64 = u64::MAX;

/// Set while the control plane restarts (`--restart`): a stream that ends
/// is opened again, naming what the proxy holds.
static RESTARTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One simulated proxy: holds what it received, ACKs everything, reports
/// (version, bytes, instant) for every response it applied. With
/// `RESTARTING` set, reconnects after a broken stream (0–1 s of jitter,
/// then every 100–300 ms until accepted) with the version it holds.
async fn proxy(
    channel: tonic::transport::Channel,
    id: usize,
    report: mpsc::UnboundedSender<(u64, usize, Instant)>,
) -> Result<(), tonic::Status> {
    use rand::Rng;
    let mut holds: Option<(u64, String)> = None;
    let mut sim = SimStream::<Head>::open(channel.clone(), id).await?;
    loop {
        let ended = loop {
            match sim.message().await {
                Ok(Some(msg)) => {
                    if !SimStream::is_last_chunk(&msg) {
                        continue;
                    }
                    let bytes = sim.ack(&msg).await;
                    holds = Some((msg.version_number, msg.config_version.clone()));
                    let _ = report.send((msg.version_number, bytes, Instant::now()));
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if !RESTARTING.load(std::sync::atomic::Ordering::Relaxed) {
            return ended;
        }
        let jitter = rand::rng().random_range(0..1000);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        sim = loop {
            match SimStream::<Head>::open_holding(channel.clone(), id, holds.clone()).await {
                Ok(s) => break s,
                Err(_) => {
                    let retry = rand::rng().random_range(100..300);
                    tokio::time::sleep(Duration::from_millis(retry)).await;
                }
            }
        };
        let _ = report.send((RECONNECTED, 0, Instant::now()));
    }
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
    if a.churn {
        churn::run(&a).await;
        return;
    }
    let mut cp = sentinel_tests::ControlPlane::start(&a.cp, "", &["--keepalive-secs", "60"]).await;
    let pid = cp.pid().unwrap_or(0);
    let http = reqwest::Client::new();
    apply(&http, &cp.url(), config(a.routes, 9001)).await;

    let ticks = clock_ticks();
    let connections = a.nodes.div_ceil(a.per_conn).max(1);
    let connect_started = Instant::now();
    let cpu_before = cpu_secs(pid, ticks);
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
    let cpu_connect = cpu_secs(pid, ticks) - cpu_before;
    println!(
        "{} proxies over {connections} connections connected and on v1 in {:.2} s ({} bytes each for the full config); \
         control plane CPU {:.1} s, peak RSS {:.0} MiB so far",
        a.nodes,
        connect_started.elapsed().as_secs_f64(),
        initial_bytes / a.nodes,
        cpu_connect,
        peak_rss_mib(pid),
    );
    // The change is measured on a settled control plane: the node state of
    // the connect (hello, ACK and push timeline of every proxy) written to
    // the database first, as it would be long before the next apply.
    let settle = Instant::now();
    let settled = sentinel_tests::wait_for(Duration::from_secs(300), || {
        let (http, url) = (http.clone(), cp.url());
        async move {
            let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            text.lines()
                .any(|l| l == "sentinel_cp_node_updates_queued 0")
        }
    })
    .await;
    println!(
        "node state of the connect written to the database after {:.2} s more{}",
        settle.elapsed().as_secs_f64(),
        if settled {
            ""
        } else {
            " (not drained: gave up)"
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu_before = cpu_secs(pid, ticks);
    let own_before = cpu_secs(std::process::id(), ticks);
    let applied = apply(&http, &cp.url(), config(a.routes, 9002)).await;
    let answered = applied.elapsed();
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
    if !a.restart {
        DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    println!(
        "one-endpoint change, {} proxies, {} routes: convergence p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         the apply was answered after {:.0} ms; {} bytes per proxy; control plane CPU {:.2} s for the change, peak RSS {:.0} MiB; this tool's CPU {:.2} s, peak RSS {:.0} MiB",
        a.nodes,
        a.routes,
        percentile(&times, 0.50).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        answered.as_secs_f64() * 1000.0,
        bytes / a.nodes,
        cpu_secs(pid, ticks) - cpu_before,
        peak_rss_mib(pid),
        cpu_secs(std::process::id(), ticks) - own_before,
        peak_rss_mib(std::process::id()),
    );
    if !a.restart {
        return;
    }
    RESTARTING.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = Instant::now();
    cp.restart().await;
    let pid = cp.pid().unwrap_or(0);
    let mut back = 0;
    while back < a.nodes {
        match tokio::time::timeout(Duration::from_secs(120), reports.recv()).await {
            Ok(Some((RECONNECTED, _, _))) => back += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {back}/{} proxies reconnected", a.nodes),
        }
    }
    DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "restart: {} proxies reconnected {:.2} s after the control plane was killed; \
         the new control plane's CPU {:.1} s, peak RSS {:.0} MiB",
        a.nodes,
        killed.elapsed().as_secs_f64(),
        cpu_secs(pid, ticks),
        peak_rss_mib(pid),
    );
}

/// `--churn`: endpoint churn from a Consul double (see the module docs).
mod churn {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use prost::Message;
    use sentinel_proto as pb;
    use sentinel_tests::consul::{ConsulDouble, Instance};
    use tokio::sync::{mpsc, watch};

    use super::{Args, apply, clock_ticks, cpu_secs, peak_rss_mib, percentile};

    /// Port of sequence number 0; sequence `n` of an upstream is `BASE + n`.
    const BASE_PORT: u32 = 1024;
    /// Upper bounds: the port range, and what the tool will wait for.
    const MAX_SEQ: u64 = 65535 - BASE_PORT as u64;
    const READY_TIMEOUT: Duration = Duration::from_secs(300);
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    const MAX_SECS: u64 = 600;

    /// State shared by the simulated proxies and the driver.
    struct Shared {
        base: Instant,
        upstreams: usize,
        /// Set while bytes are counted (from the first change on).
        churning: AtomicBool,
        /// Last sequence number of every upstream, once the churn is over.
        last: std::sync::OnceLock<Vec<u32>>,
        /// Proxies holding the last sequence number of every upstream.
        caught_up: AtomicUsize,
    }

    #[derive(Default)]
    struct ProxyLog {
        /// Per upstream: (sequence number, µs since `base`) of every set this
        /// proxy held for the first time, in increasing sequence order.
        held: Vec<Vec<(u32, u64)>>,
        /// Bytes and complete non-keepalive responses received while churning.
        bytes: usize,
        responses: usize,
    }

    fn config(upstreams: usize, routes: usize, consul: &str) -> String {
        let mut doc = String::from(
            "listeners { listener \"l\" { address \"127.0.0.1:8080\"; }; }\nupstreams {\n",
        );
        for i in 0..upstreams {
            doc.push_str(&format!(
                "    upstream \"u{i}\" {{ discovery \"consul\" {{ address \"{consul}\"; service \"s{i}\"; empty-grace-secs 0; }}; }}\n"
            ));
        }
        doc.push_str("}\nroutes {\n");
        for j in 0..routes.max(1) {
            doc.push_str(&format!(
                "    route \"route-{j}\" {{ matches {{ path-prefix \"/service-{j}/\"; host \"t{j}.example.com\"; }}; upstream \"u{}\"; }}\n",
                j % upstreams
            ));
        }
        doc.push_str("}\n");
        doc
    }

    /// The highest sequence number among an `Endpoints`' targets.
    fn sequence(e: &pb::Endpoints) -> Option<u32> {
        e.targets
            .iter()
            .filter_map(|t| t.address.rsplit(':').next()?.parse::<u32>().ok())
            .filter_map(|port| port.checked_sub(BASE_PORT))
            .max()
    }

    async fn proxy(
        channel: tonic::transport::Channel,
        id: usize,
        shared: Arc<Shared>,
        ready: mpsc::UnboundedSender<usize>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<ProxyLog, tonic::Status> {
        let mut log = ProxyLog {
            held: vec![Vec::new(); shared.upstreams],
            ..Default::default()
        };
        let mut current: Vec<Option<u32>> = vec![None; shared.upstreams];
        let mut missing = shared.upstreams;
        let mut caught_up = false;
        let mut sim = super::SimStream::<pb::DeltaResponse>::open(channel, id).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut pending: Vec<(usize, u32)> = Vec::new();
        loop {
            let msg = tokio::select! {
                m = sim.message() => m?,
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    check_caught_up(&shared, &current, &mut caught_up);
                    continue;
                }
            };
            let Some(msg) = msg else {
                break;
            };
            for r in &msg.resources {
                if r.r#type != pb::ResourceType::Endpoints as i32 {
                    continue;
                }
                let Ok(e) = pb::Endpoints::decode(&r.body[..]) else {
                    continue;
                };
                let Some(u) = e
                    .upstream
                    .strip_prefix('u')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&u| u < shared.upstreams)
                else {
                    continue;
                };
                if let Some(seq) = sequence(&e) {
                    pending.push((u, seq));
                }
            }
            if !super::SimStream::<pb::DeltaResponse>::is_last_chunk(&msg) {
                continue;
            }
            let bytes = sim.ack(&msg).await;
            let at = shared.base.elapsed().as_micros() as u64;
            for (u, seq) in pending.drain(..) {
                if current[u].is_none_or(|c| seq > c) {
                    if current[u].is_none() {
                        missing -= 1;
                        if missing == 0 {
                            let _ = ready.send(id);
                        }
                    }
                    current[u] = Some(seq);
                    log.held[u].push((seq, at));
                }
            }
            if shared.churning.load(Ordering::Relaxed) {
                log.bytes += bytes;
                log.responses += 1;
            }
            check_caught_up(&shared, &current, &mut caught_up);
        }
        Ok(log)
    }

    fn check_caught_up(shared: &Shared, current: &[Option<u32>], done: &mut bool) {
        if *done {
            return;
        }
        if let Some(last) = shared.last.get()
            && current
                .iter()
                .zip(last)
                .all(|(c, l)| c.is_some_and(|c| c >= *l))
        {
            *done = true;
            shared.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub async fn run(a: &Args) {
        let upstreams = a.upstreams.max(1);
        let secs = a.secs.clamp(1, MAX_SECS);
        let total_changes = a.rate as u64 * secs;
        if total_changes.div_ceil(upstreams as u64) > MAX_SEQ {
            eprintln!(
                "--rate × --secs / --upstreams must stay under {MAX_SEQ} (ports encode sequence numbers)"
            );
            std::process::exit(2);
        }
        let ticks = clock_ticks();
        let consul = ConsulDouble::start(None).await;
        for u in 0..upstreams {
            consul.register(Instance::new(
                &format!("i{u}"),
                &format!("s{u}"),
                "127.0.0.1",
                BASE_PORT as u16,
            ));
        }
        let cp = sentinel_tests::ControlPlane::start(&a.cp, "", &["--keepalive-secs", "60"]).await;
        let pid = cp.pid().unwrap_or(0);
        let http = reqwest::Client::new();
        let source = config(upstreams, a.routes, &consul.url());
        let config_bytes = source.len();
        apply(&http, &cp.url(), source).await;

        let shared = Arc::new(Shared {
            base: Instant::now(),
            upstreams,
            churning: AtomicBool::new(false),
            last: std::sync::OnceLock::new(),
            caught_up: AtomicUsize::new(0),
        });
        let connections = a.nodes.div_ceil(a.per_conn).max(1);
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
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let connect_started = Instant::now();
        let mut tasks = Vec::with_capacity(a.nodes);
        for id in 0..a.nodes {
            let ch = channels[id % connections].clone();
            let (shared, ready_tx, stop_rx) = (shared.clone(), ready_tx.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                let r = proxy(ch, id, shared, ready_tx, stop_rx).await;
                if let Err(e) = &r
                    && !super::DONE.load(Ordering::Relaxed)
                {
                    eprintln!("sim-{id}: {e}");
                }
                r.ok()
            }));
        }
        let mut on = 0;
        while on < a.nodes {
            match tokio::time::timeout(READY_TIMEOUT, ready.recv()).await {
                Ok(Some(_)) => on += 1,
                _ => panic!(
                    "only {on}/{} proxies received the endpoints of all {upstreams} upstreams",
                    a.nodes
                ),
            }
        }
        println!(
            "{} proxies hold all {upstreams} discovered upstreams ({} routes, {config_bytes} bytes of KDL) after {:.2} s",
            a.nodes,
            a.routes,
            connect_started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The churn driver: change n goes to upstream n % U, as the next
        // sequence number of that upstream.
        let mut seq = vec![0u32; upstreams];
        let mut changed_at: Vec<Vec<u64>> = vec![vec![0]; upstreams];
        let mut issued: u64 = 0;
        let mut cpu_samples = Vec::new();
        shared.churning.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let cpu_start = cpu_secs(pid, ticks);
        let own_start = cpu_secs(std::process::id(), ticks);
        let (mut last_sample, mut last_cpu) = (started, cpu_start);
        let until = started + Duration::from_secs(secs);
        let mut lag_max = Duration::ZERO;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let due = ((now - started).as_secs_f64() * a.rate as f64) as u64;
            let due = due.min(total_changes);
            if due > issued + 1 {
                // How far the driver falls behind its schedule.
                let behind = Duration::from_secs_f64((due - issued) as f64 / a.rate as f64);
                lag_max = lag_max.max(behind);
            }
            while issued < due {
                let u = (issued % upstreams as u64) as usize;
                seq[u] += 1;
                changed_at[u].push(shared.base.elapsed().as_micros() as u64);
                consul.register(Instance::new(
                    &format!("i{u}"),
                    &format!("s{u}"),
                    "127.0.0.1",
                    (BASE_PORT + seq[u]) as u16,
                ));
                issued += 1;
            }
            if now - last_sample >= Duration::from_secs(1) {
                let c = cpu_secs(pid, ticks);
                cpu_samples.push((c - last_cpu) / (now - last_sample).as_secs_f64());
                (last_sample, last_cpu) = (now, c);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let churn_secs = started.elapsed().as_secs_f64();
        let cpu_churn = cpu_secs(pid, ticks) - cpu_start;
        let own_cpu = cpu_secs(std::process::id(), ticks) - own_start;
        let _ = shared.last.set(seq.clone());
        let drain_started = Instant::now();
        while shared.caught_up.load(Ordering::Relaxed) < a.nodes
            && drain_started.elapsed() < DRAIN_TIMEOUT
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained = shared.caught_up.load(Ordering::Relaxed);
        super::DONE.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let mut logs = Vec::with_capacity(a.nodes);
        for t in tasks {
            if let Ok(Some(log)) = t.await {
                logs.push(log);
            }
        }

        // Per change: when the last proxy first held it or a later set.
        let mut latencies = Vec::with_capacity(issued as usize);
        let mut uncovered = 0usize;
        for (u, at_source) in changed_at.iter().enumerate() {
            let n = at_source.len();
            let mut worst = vec![0u64; n];
            let mut missed = vec![logs.len() < a.nodes; n];
            for log in &logs {
                let held = &log.held[u];
                let mut i = 0;
                for k in 1..n {
                    while i < held.len() && (held[i].0 as usize) < k {
                        i += 1;
                    }
                    match held.get(i) {
                        Some(&(_, at)) => worst[k] = worst[k].max(at),
                        None => missed[k] = true,
                    }
                }
            }
            for ((source, reached), missed) in at_source.iter().zip(&worst).zip(&missed).skip(1) {
                if *missed {
                    uncovered += 1;
                } else {
                    latencies.push(Duration::from_micros(reached.saturating_sub(*source)));
                }
            }
        }
        latencies.sort();
        let bytes: usize = logs.iter().map(|l| l.bytes).sum();
        let responses: usize = logs.iter().map(|l| l.responses).sum();
        let proxies = logs.len().max(1);
        let cpu_mean = cpu_churn / churn_secs;
        let cpu_peak = cpu_samples.iter().copied().fold(0.0, f64::max);
        println!(
            "endpoint churn, {} proxies, {upstreams} upstreams, {} routes, {issued} changes in {churn_secs:.1} s \
             ({:.0}/s, driver lag max {:.0} ms): source change → every proxy p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
             ({uncovered} changes not reached by every proxy; {drained}/{} proxies caught up); \
             {:.1} bytes per proxy per change ({:.1} responses per proxy, {:.0} bytes each); \
             control plane CPU {:.0} % of a core (busiest second {:.0} %), peak RSS {:.0} MiB; \
             this tool {:.0} % of a core",
            a.nodes,
            a.routes,
            issued as f64 / churn_secs,
            lag_max.as_secs_f64() * 1000.0,
            percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            a.nodes,
            bytes as f64 / proxies as f64 / issued.max(1) as f64,
            responses as f64 / proxies as f64,
            bytes as f64 / responses.max(1) as f64,
            cpu_mean * 100.0,
            cpu_peak * 100.0,
            peak_rss_mib(pid),
            own_cpu / churn_secs * 100.0,
        );
    }
}
