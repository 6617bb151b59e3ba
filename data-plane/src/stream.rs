//! Control-plane mode: the delta-stream client.
//!
//! Connects to one of the control-plane URLs with this proxy's identity and
//! the versions it holds; applies each complete response (all chunks) as one
//! swap through [`Proxy::apply`] — the same path as standalone mode — and
//! answers each response once:
//!
//! - ACK: applied; it is now what the proxy holds;
//! - NACK: it fits what the proxy holds but cannot run here (the resource
//!   and the reason are named); the last good configuration keeps serving;
//! - Resync: it does not fit — applied to what the proxy holds, the
//!   resources do not hash to the announced config version, so the control
//!   plane computed it from another base. Nothing is applied; the answer
//!   names everything the proxy holds (as `Hello.held` does) and its config
//!   version, and the control plane sends the difference from that.
//!
//! Every answer carries this proxy's own timing of the response (first
//! chunk received, build ended, swapped: [`Timing`]), and with tracing on
//! the response's `trace_parent` parents this proxy's spans of the config
//! change (`config.receive`, `config.build`, `config.swap`, `config.ack`
//! or the error span `config.nack`; see `record_spans`).
//!
//! Every applied configuration is written to the last-good cache. Building
//! and the cache write (fsync) run on the blocking pool, never on a worker. On a lost stream it reconnects with jittered
//! exponential backoff, moving to the next URL each time; traffic is never
//! interrupted by the control plane going away. A second stream reports the
//! active health checks' view of every target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sentinel_config::Snapshot;
use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;

use crate::apply::{Proxy, off_workers};
use crate::clock::unix_ms;
use crate::runtime::{ConfigVersion, Origin};

type Held = BTreeMap<(i32, String), pb::Resource>;

pub struct Client {
    pub urls: Vec<String>,
    pub node: pb::Node,
    pub cache_dir: Option<PathBuf>,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub proxy: Arc<Proxy>,
    /// How often health reports are sent.
    pub health_interval: Duration,
    /// Join token, sent as `authorization: Bearer …` metadata on both
    /// streams (control planes without mTLS require one).
    pub join_token: Option<String>,
}

/// `message` as a request carrying the join token, if there is one.
fn with_join_token<T>(message: T, join_token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = join_token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// What the proxy holds, as the control plane will be told on (re)connect.
#[derive(Default, Clone)]
struct State {
    held: Held,
    config_version: String,
    /// The control plane's number of `config_version` (0: none).
    version_number: u64,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(7))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

impl Client {
    /// Serves from the cache if there is one, then keeps a stream to the
    /// control plane until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut state = State::default();
        self.load_cache(&mut state).await;
        let mut attempt = 0u32;
        let mut index = 0usize;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let url = self.urls[index % self.urls.len()].clone();
            let result = tokio::select! {
                r = self.session(&url, &mut state) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(()) => {
                    tracing::info!(%url, "control-plane stream ended; reconnecting");
                    attempt = 0;
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "control plane unreachable; serving the last good configuration");
                    attempt += 1;
                }
            }
            index += 1;
            let wait = backoff(attempt);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Applies the last-good cache, if there is one, before the control
    /// plane answers. Reading, decoding and building run off the workers.
    async fn load_cache(&self, state: &mut State) {
        let Some(dir) = self.cache_dir.clone() else {
            return;
        };
        let proxy = Arc::clone(&self.proxy);
        let loaded = off_workers(move || load_cache(&proxy, &dir)).await;
        match loaded {
            Ok(Some(cached)) => *state = cached,
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot apply the cached configuration"),
        }
    }

    async fn session(
        &self,
        url: &str,
        state: &mut State,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint.connect().await?;
        let mut client = ConfigStreamClient::new(channel.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            node: Some(self.node.clone()),
            held: state
                .held
                .values()
                .map(|r| pb::ResourceVersion {
                    r#type: r.r#type,
                    name: r.name.clone(),
                    version: r.version.clone(),
                })
                .collect(),
            config_version: state.config_version.clone(),
            version_number: state.version_number,
        };
        tx.send(pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Hello(hello)),
        })
        .await?;
        let mut inbound = client
            .delta(with_join_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                self.join_token.as_deref(),
            ))
            .await?
            .into_inner();
        tracing::info!(%url, node = %self.node.id, "connected to the control plane");
        let reporter = tokio::spawn(report_health(
            channel,
            self.node.id.clone(),
            Arc::clone(&self.proxy),
            self.health_interval,
            self.join_token.clone(),
        ));
        let _stop_reporter = AbortOnDrop(reporter.abort_handle());
        let mut chunks: Vec<pb::DeltaResponse> = Vec::new();
        let mut first_chunk_at = SystemTime::now();
        while let Some(msg) = inbound.message().await? {
            crate::ratelimit::set_fleet_peers(msg.peers);
            if msg.keepalive {
                continue;
            }
            if chunks.first().is_some_and(|c| c.nonce != msg.nonce) {
                // A newer response replaced an incomplete one.
                chunks.clear();
            }
            if chunks.is_empty() {
                first_chunk_at = SystemTime::now();
            }
            let complete = msg.chunk + 1 >= msg.chunk_count;
            chunks.push(msg);
            if !complete {
                continue;
            }
            let timing = Timing {
                first_chunk: first_chunk_at,
                last_chunk: SystemTime::now(),
                ..Timing::default()
            };
            let answer = self
                .apply(url, state, std::mem::take(&mut chunks), timing)
                .await;
            tx.send(answer).await?;
        }
        Ok(())
    }

    /// Applies one complete response off the workers; returns the answer
    /// to send (ACK, NACK or Resync) and updates `state` on an ACK.
    async fn apply(
        &self,
        url: &str,
        state: &mut State,
        chunks: Vec<pb::DeltaResponse>,
        timing: Timing,
    ) -> pb::DeltaRequest {
        let proxy = Arc::clone(&self.proxy);
        let cache_dir = self.cache_dir.clone();
        let url = url.to_string();
        let held = state.clone();
        let nonce = chunks.first().map(|c| c.nonce.clone()).unwrap_or_default();
        let (announced, number, trace_parent) = chunks
            .last()
            .map(|c| {
                (
                    c.config_version.clone(),
                    c.version_number,
                    c.trace_parent.clone(),
                )
            })
            .unwrap_or_default();
        let outcome = off_workers(move || {
            let mut timing = timing;
            let (answer, next) = respond(
                &proxy,
                cache_dir.as_deref(),
                &url,
                held,
                chunks,
                &mut timing,
            );
            (answer, next, timing)
        })
        .await;
        let (mut answer, timing) = match outcome {
            Ok((answer, next, timing)) => {
                if let Some(next) = next {
                    *state = next;
                }
                (answer, timing)
            }
            // The build panicked: nothing was swapped in.
            Err(e) => (nack(&nonce, &announced, 0, None, e.to_string()), timing),
        };
        timing.stamp(&mut answer);
        record_spans(&trace_parent, number, &answer, &timing);
        answer
    }
}

/// Reads, checks and applies the cache; what the proxy then holds.
fn load_cache(proxy: &Proxy, dir: &Path) -> Option<State> {
    let set = match crate::cache::load(dir) {
        Ok(set) => set,
        Err(crate::cache::CacheError::Missing(_)) => return None,
        Err(e) => {
            tracing::error!(error = %e, "ignoring the last-good cache");
            return None;
        }
    };
    let snapshot = match Snapshot::from_resources(&set.resources) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the cached configuration is inconsistent; ignoring it");
            return None;
        }
    };
    let version = ConfigVersion {
        hash: set.config_version.clone(),
        number: set.version_number,
        origin: Origin::Cache {
            path: crate::cache::path(dir).display().to_string(),
        },
        applied_unix_ms: unix_ms(),
    };
    match proxy.apply(snapshot, version) {
        Ok(_) => {
            tracing::warn!(
                version = set.version_number,
                "serving the last-good configuration from the cache until the control plane answers"
            );
            Some(State {
                held: set
                    .resources
                    .into_iter()
                    .map(|r| ((r.r#type, r.name.clone()), r))
                    .collect(),
                config_version: set.config_version,
                version_number: set.version_number,
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot apply the cached configuration");
            None
        }
    }
}

/// The `server` and `observability` settings of the last-good cache in
/// `dir`, read before the async runtime starts so that control-plane mode
/// starts with the worker threads and logging of the config it will serve.
pub fn cached_settings(dir: &Path) -> Option<pb::Settings> {
    let set = crate::cache::load(dir).ok()?;
    Snapshot::from_resources(&set.resources)
        .ok()
        .map(|s| s.settings)
}

fn nack(
    nonce: &str,
    config_version: &str,
    number: u64,
    resource: Option<pb::ResourceRef>,
    error: String,
) -> pb::DeltaRequest {
    metrics::counter!("sentinel_config_nacks_total").increment(1);
    tracing::error!(version = number, %error, "refusing the configuration from the control plane; keeping the last good one");
    pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Nack(pb::Nack {
            nonce: nonce.to_string(),
            config_version: config_version.to_string(),
            resource,
            error,
            ..Default::default()
        })),
    }
}

/// The answer to one complete response, and the new state after an ACK.
/// Blocking (build, cache fsync): runs on the blocking pool.
///
/// - The response applied to what the proxy holds does not hash to the
///   announced version: it was computed from another base. Apply nothing
///   and answer `Resync` naming what is held, so the control plane can send
///   the difference from there. This is not the config's fault: no NACK.
/// - It fits, but the proxy cannot run it (undecodable resource, a build
///   or bind error): NACK naming the resource; the old runtime keeps serving.
/// - Otherwise: swap, write the last-good cache, ACK.
fn respond(
    proxy: &Proxy,
    cache_dir: Option<&Path>,
    url: &str,
    held: State,
    chunks: Vec<pb::DeltaResponse>,
    timing: &mut Timing,
) -> (pb::DeltaRequest, Option<State>) {
    timing.build_start = Some(SystemTime::now());
    let nonce = chunks.first().map(|c| c.nonce.clone()).unwrap_or_default();
    let config_version = chunks
        .last()
        .map(|c| c.config_version.clone())
        .unwrap_or_default();
    let number = chunks.last().map_or(0, |c| c.version_number);
    tracing::info!(
        version = number,
        %nonce,
        "applying a response from the control plane"
    );
    let mut next = held.held.clone();
    for c in chunks {
        for r in c.resources {
            next.insert((r.r#type, r.name.clone()), r);
        }
        for gone in c.removed {
            next.remove(&(gone.r#type, gone.name));
        }
    }
    let fits = sentinel_config::config_hash(
        next.values()
            .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
    );
    if fits != config_version {
        let reason = format!("the resources hash to {fits}, not the announced {config_version}");
        tracing::warn!(
            version = number,
            %reason,
            "the response does not fit the configuration this proxy holds; asking the control plane to resync"
        );
        let answer = pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Resync(pb::Resync {
                nonce,
                held: held
                    .held
                    .values()
                    .map(|r| pb::ResourceVersion {
                        r#type: r.r#type,
                        name: r.name.clone(),
                        version: r.version.clone(),
                    })
                    .collect(),
                config_version: held.config_version,
                reason,
            })),
        };
        return (answer, None);
    }
    let resources: Vec<pb::Resource> = next.values().cloned().collect();
    let snapshot = match Snapshot::from_resources(&resources) {
        Ok(s) => s,
        Err(e) => {
            let answer = nack(
                &nonce,
                &config_version,
                number,
                e.resource().cloned(),
                e.to_string(),
            );
            return (answer, None);
        }
    };
    let hash = snapshot.config_hash();
    if hash != config_version {
        // The announced versions fit, but a body does not match its version.
        let error =
            format!("the resources' content hashes to {hash}, not the announced {config_version}");
        return (nack(&nonce, &config_version, number, None, error), None);
    }
    let version = ConfigVersion {
        hash: hash.clone(),
        number,
        origin: Origin::ControlPlane {
            url: url.to_string(),
        },
        applied_unix_ms: unix_ms(),
    };
    let mut built = None;
    let applied = proxy.apply_timed(snapshot, version, &mut built);
    timing.built = built.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    if let Err(e) = applied {
        let answer = nack(
            &nonce,
            &config_version,
            number,
            Some(e.resource.clone()),
            e.message.clone(),
        );
        return (answer, None);
    }
    timing.swapped = Some(SystemTime::now());
    if let Some(dir) = cache_dir {
        let set = pb::ResourceSet {
            resources,
            config_version: hash.clone(),
            version_number: number,
        };
        if let Err(e) = crate::cache::store(dir, &set) {
            tracing::error!(error = %e, "cannot write the last-good cache");
        }
    }
    let answer = pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Ack(pb::Ack {
            nonce,
            config_version: hash.clone(),
            ..Default::default()
        })),
    };
    let state = State {
        held: next,
        config_version: hash,
        version_number: number,
    };
    (answer, Some(state))
}

/// This proxy's own clock for one response: the ACK/NACK's timing fields
/// (always sent) and the times of its spans (when tracing is on).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub first_chunk: SystemTime,
    pub last_chunk: SystemTime,
    /// When building began (after the response was found to fit).
    pub build_start: Option<SystemTime>,
    /// When the build ended (failed or not); `None` if it never ran.
    pub built: Option<SystemTime>,
    /// When the new runtime was live; `None` unless applied.
    pub swapped: Option<SystemTime>,
}

impl Default for Timing {
    fn default() -> Self {
        let now = SystemTime::now();
        Timing {
            first_chunk: now,
            last_chunk: now,
            build_start: None,
            built: None,
            swapped: None,
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Timing {
    /// Writes the timing fields of an ACK or NACK (a NACK's swap is 0).
    pub fn stamp(&self, answer: &mut pb::DeltaRequest) {
        let received = ms(self.first_chunk);
        let built = self.built.map_or(0, ms);
        match &mut answer.kind {
            Some(pb::delta_request::Kind::Ack(a)) => {
                a.received_unix_ms = received;
                a.built_unix_ms = built;
                a.swapped_unix_ms = self.swapped.map_or(0, ms);
            }
            Some(pb::delta_request::Kind::Nack(n)) => {
                n.received_unix_ms = received;
                n.built_unix_ms = built;
                n.swapped_unix_ms = 0;
            }
            _ => {}
        }
    }
}

/// Records this proxy's part of a config change's trace: `config.receive`
/// (first chunk → last), `config.build`, `config.swap` and `config.ack` —
/// or `config.nack`, an error span with the reason — as children of the
/// response's `trace_parent`, with the node, region, zone and version.
///
/// The pipeline is the one current *after* the swap: a config that turns
/// tracing on (or moves the collector) has the spans of its own arrival
/// exported under its settings, and one that turns it off exports none.
/// A NACKed config never went live, so its spans go through the pipeline
/// of the config still serving. Nothing is recorded without a pipeline or
/// without a valid `trace_parent` (a Resync is not recorded either: the
/// response applied to nothing).
fn record_spans(trace_parent: &str, version: u64, answer: &pb::DeltaRequest, t: &Timing) {
    use sentinel_telemetry::trace::{
        KeyValue, Span, SpanKind, Status, Tracer, from_traceparent, trace_id,
    };
    let outcome = match &answer.kind {
        Some(pb::delta_request::Kind::Ack(_)) => Ok(()),
        Some(pb::delta_request::Kind::Nack(n)) => Err(match &n.resource {
            Some(r) => format!("{r}: {}", n.error),
            None => n.error.clone(),
        }),
        _ => return,
    };
    if trace_parent.is_empty() {
        return;
    }
    let pipeline = crate::tracer::current();
    let Some(pipeline) = pipeline.as_ref() else {
        return;
    };
    let parent = from_traceparent(trace_parent);
    if trace_id(&parent).is_none() {
        tracing::debug!(%trace_parent, "ignoring a malformed trace_parent from the control plane");
        return;
    }
    let instance = crate::telemetry::instance();
    let attributes = || {
        vec![
            KeyValue::new("sentinel.node", instance.node.clone()),
            KeyValue::new("sentinel.region", instance.region.clone()),
            KeyValue::new("sentinel.zone", instance.zone.clone()),
            KeyValue::new(
                "sentinel.config.version",
                i64::try_from(version).unwrap_or(i64::MAX),
            ),
        ]
    };
    let tracer = pipeline.tracer();
    let span = |name: &'static str, start: SystemTime, end: SystemTime, error: Option<&str>| {
        let mut attrs = attributes();
        if let Some(e) = error {
            attrs.push(KeyValue::new("sentinel.nack.error", e.to_string()));
        }
        let mut s = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .with_start_time(start)
            .start_with_context(tracer, &parent);
        if let Some(e) = error {
            s.set_status(Status::error(e.to_string()));
        }
        s.end_with_timestamp(end.max(start));
    };
    let now = SystemTime::now();
    span("config.receive", t.first_chunk, t.last_chunk, None);
    let build_start = t.build_start.unwrap_or(t.last_chunk);
    let built = t.built.unwrap_or(build_start);
    if t.built.is_some() {
        span("config.build", build_start, built, None);
    }
    match outcome {
        Ok(()) => {
            let swapped = t.swapped.unwrap_or(built);
            span("config.swap", built, swapped, None);
            span("config.ack", swapped, now, None);
        }
        Err(reason) => span("config.nack", built, now, Some(&reason)),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the health of every target now and then, while the stream lives.
async fn report_health(
    channel: tonic::transport::Channel,
    node_id: String,
    proxy: Arc<Proxy>,
    every: Duration,
    join_token: Option<String>,
) {
    let (tx, rx) = mpsc::channel(2);
    // The request stream is driven by the connection; the sender runs on its
    // own so that it keeps going while the answers are read.
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(rt) = proxy.runtime() else { continue };
            let interval_ms = last.elapsed().as_millis() as u64;
            last = tokio::time::Instant::now();
            let routes: Vec<pb::RouteStats> = rt
                .router
                .iter()
                .filter_map(|r| {
                    let s = r.metrics.traffic.take();
                    (s.requests > 0).then(|| pb::RouteStats {
                        route: r.name.to_string(),
                        requests: s.requests,
                        errors_5xx: s.errors_5xx,
                        p99_ms: s.p99_ms,
                    })
                })
                .collect();
            let mut targets = Vec::new();
            for u in rt.upstreams.values() {
                if !u.health_cfg.enabled {
                    continue;
                }
                for t in &u.targets {
                    let v = t.state.health.view();
                    targets.push(pb::TargetHealthReport {
                        upstream: u.name.clone(),
                        target: t.address.clone(),
                        healthy: v.healthy && !v.ejected,
                        since_unix_ms: v.since_unix_ms,
                        last_error: v.last_error,
                    });
                }
            }
            if tx
                .send(pb::HealthReport {
                    node_id: node_id.clone(),
                    targets,
                    routes,
                    interval_ms,
                    version_number: rt.version.number,
                    config_version: rt.version.hash.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let _stop = AbortOnDrop(sender.abort_handle());
    let mut client = ConfigStreamClient::new(channel);
    if let Ok(resp) = client
        .report_health(with_join_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            join_token.as_deref(),
        ))
        .await
    {
        let mut acks = resp.into_inner();
        while let Ok(Some(_)) = acks.message().await {}
    }
}
