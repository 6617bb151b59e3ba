//! The delta configuration stream and the health-report stream (tonic).
//!
//! One session per proxy connection. The proxy's `Hello` names it and lists
//! the resource versions it holds; the session then sends exactly what
//! differs from the active configuration — nothing when equal — and after
//! every change of the active configuration (debounced) again only the
//! difference. Each response has a nonce; ACKs and NACKs are recorded per
//! node in the store. After a NACK the session sends nothing until the
//! active configuration changes. Large responses are split into chunks
//! below the gRPC message limit; resource bodies are the shared encoded
//! bytes of the active configuration, never re-encoded per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use sentinel_proto as pb;
use sentinel_proto::config_stream_server::ConfigStream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{ActiveConfig, Fleet, NodeUpdate};

/// Encoded resource bytes per response chunk (gRPC's default limit is 4 MiB).
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// How long a burst of activations is coalesced before pushing.
const DEBOUNCE: Duration = Duration::from_millis(20);

static NONCES: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub struct StreamService {
    pub fleet: Arc<Fleet>,
    pub keepalive: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// What a proxy holds.
#[derive(Debug, Clone)]
pub enum Held {
    /// Exactly a configuration this replica activated (after an ACK, or a
    /// hello naming the active hash): deltas from it are computed once and
    /// shared by every session in the same position.
    Config(Arc<ActiveConfig>),
    /// An arbitrary set from a hello, sorted by (type, name).
    Versions(Vec<pb::ResourceVersion>),
}

/// What one response changes relative to what the proxy holds.
#[derive(Debug, Default)]
pub struct Delta {
    pub resources: Vec<pb::Resource>,
    pub removed: Vec<pb::ResourceRef>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// Resources of `active` the proxy does not hold at that version, and names
/// it holds that are gone. Both sides are sorted by (type, name), so this is
/// one merge pass without allocation per lookup.
pub fn delta<'a>(
    held: impl Iterator<Item = (i32, &'a str, &'a str)>,
    active: &ActiveConfig,
) -> Delta {
    let mut out = Delta::default();
    let mut held = held.peekable();
    for r in &active.resources {
        let key = (r.r#type, r.name.as_str());
        loop {
            match held.peek() {
                Some(h) if (h.0, h.1) < key => {
                    out.removed.push(pb::ResourceRef {
                        r#type: h.0,
                        name: h.1.to_string(),
                    });
                    held.next();
                }
                _ => break,
            }
        }
        match held.peek() {
            Some(h) if (h.0, h.1) == key => {
                if h.2 != r.version {
                    out.resources.push(r.clone());
                }
                held.next();
            }
            _ => out.resources.push(r.clone()),
        }
    }
    out.removed.extend(held.map(|h| pb::ResourceRef {
        r#type: h.0,
        name: h.1.to_string(),
    }));
    out
}

fn held_iter(held: &Held) -> Box<dyn Iterator<Item = (i32, &str, &str)> + '_> {
    match held {
        Held::Config(c) => Box::new(
            c.resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
        ),
        Held::Versions(v) => Box::new(
            v.iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
        ),
    }
}

/// Splits a delta into responses sharing one nonce, each under `limit`
/// bytes of resource bodies; removals ride on the last chunk.
pub fn chunk(
    delta: &Delta,
    nonce: &str,
    active: &ActiveConfig,
    limit: usize,
) -> Vec<pb::DeltaResponse> {
    let mut chunks: Vec<Vec<pb::Resource>> = vec![Vec::new()];
    let mut size = 0;
    for r in &delta.resources {
        let len = r.body.len() + r.name.len() + r.version.len() + 16;
        if size + len > limit && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.push(r.clone());
        }
    }
    let count = chunks.len() as u32;
    let mut removed = Some(delta.removed.clone());
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, resources)| pb::DeltaResponse {
            nonce: nonce.to_string(),
            config_version: active.hash.clone(),
            version_number: active.number as u64,
            resources,
            removed: if i as u32 + 1 == count {
                removed.take().unwrap_or_default()
            } else {
                Vec::new()
            },
            chunk: i as u32,
            chunk_count: count,
            keepalive: false,
        })
        .collect()
}

/// Response awaiting the proxy's answer.
struct Pending {
    nonce: String,
    active: Arc<ActiveConfig>,
}

fn check_hello(hello: &pb::Hello) -> Result<pb::Node, Status> {
    let node = hello
        .node
        .clone()
        .ok_or_else(|| Status::invalid_argument("hello: missing node"))?;
    let ok = |s: &str, max: usize| s.len() <= max && s.chars().all(|c| c.is_ascii_graphic());
    if node.id.is_empty() || !ok(&node.id, 128) {
        return Err(Status::invalid_argument(
            "hello: node id must be 1-128 printable ASCII characters",
        ));
    }
    if !ok(&node.region, 64) || !ok(&node.zone, 64) || node.build_version.len() > 64 {
        return Err(Status::invalid_argument(
            "hello: region/zone must be at most 64 printable ASCII characters",
        ));
    }
    if hello.held.len() > 1_000_000 {
        return Err(Status::invalid_argument("hello: too many held resources"));
    }
    Ok(node)
}

impl StreamService {
    async fn session(
        self,
        node: pb::Node,
        hello: pb::Hello,
        mut inbound: Streaming<pb::DeltaRequest>,
        out: mpsc::Sender<Result<pb::DeltaResponse, Status>>,
    ) {
        let fleet = &self.fleet;
        let held_count = hello.held.len();
        let mut held = {
            let current = fleet.current();
            if !hello.config_version.is_empty() && hello.config_version == current.hash {
                Held::Config(current)
            } else {
                let mut v = hello.held;
                v.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
                v.dedup_by(|a, b| a.r#type == b.r#type && a.name == b.name);
                Held::Versions(v)
            }
        };
        fleet.session_started(&node.id, &node.region);
        fleet.record(NodeUpdate::Connected(node.clone()));
        tracing::info!(node = %node.id, region = %node.region, zone = %node.zone, held = held_count, "proxy connected");
        let mut active_rx = fleet.subscribe();
        let mut shutdown = self.shutdown.clone();
        let mut pending: Option<Pending> = None;
        // The config hash the proxy refused; nothing is resent until it changes.
        let mut refused: Option<String> = None;
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.reset();
        let mut push_needed = true;
        loop {
            if push_needed && pending.is_none() {
                push_needed = false;
                let active = active_rx.borrow_and_update().clone();
                if active.number > 0 && refused.as_deref() != Some(active.hash.as_str()) {
                    let d = match &held {
                        Held::Config(from) => fleet.delta_between(from, &active),
                        Held::Versions(_) => Arc::new(delta(held_iter(&held), &active)),
                    };
                    if d.is_empty() {
                        // The proxy already holds exactly this: say nothing,
                        // but it counts as converged.
                        held = Held::Config(Arc::clone(&active));
                        self.acked(&node, &active);
                    } else {
                        let nonce = format!(
                            "{}-{}",
                            active.number,
                            NONCES.fetch_add(1, Ordering::Relaxed)
                        );
                        let chunks = chunk(&d, &nonce, &active, CHUNK_BYTES);
                        let bytes: usize = chunks
                            .iter()
                            .map(|c| c.resources.iter().map(|r| r.body.len()).sum::<usize>())
                            .sum();
                        metrics::counter!("sentinel_cp_pushes_total").increment(1);
                        metrics::counter!("sentinel_cp_push_bytes_total").increment(bytes as u64);
                        for c in chunks {
                            if out.send(Ok(c)).await.is_err() {
                                return self.ended(&node);
                            }
                        }
                        pending = Some(Pending { nonce, active });
                    }
                }
            }
            tokio::select! {
                msg = inbound.message() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            metrics::counter!("sentinel_cp_stream_errors_total").increment(1);
                            tracing::debug!(node = %node.id, error = %e, "stream error");
                            break;
                        }
                    };
                    match msg.kind {
                        Some(pb::delta_request::Kind::Ack(ack)) => {
                            if let Some(p) = pending.take_if(|p| p.nonce == ack.nonce) {
                                refused = None;
                                self.acked(&node, &p.active);
                                held = Held::Config(p.active);
                                push_needed = true;
                            }
                        }
                        Some(pb::delta_request::Kind::Nack(nack)) => {
                            if let Some(p) = pending.take_if(|p| p.nonce == nack.nonce) {
                                let resource = nack.resource.map(|r| r.to_string()).unwrap_or_default();
                                tracing::warn!(node = %node.id, version = p.active.number, %resource, error = %nack.error, "proxy refused the configuration");
                                metrics::counter!("sentinel_cp_nacks_total").increment(1);
                                let error: String = nack.error.chars().take(4096).collect();
                                fleet.record(NodeUpdate::Nack { id: node.id.clone(), version: p.active.number, resource, error });
                                refused = Some(p.active.hash.clone());
                                push_needed = true;
                            }
                        }
                        Some(pb::delta_request::Kind::Hello(_)) => {
                            let _ = out.send(Err(Status::invalid_argument("hello may only be sent once"))).await;
                            break;
                        }
                        None => {}
                    }
                }
                changed = active_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    // A newer version supersedes the one in flight; an ACK
                    // for the old nonce is then ignored.
                    pending = None;
                    push_needed = true;
                }
                _ = keepalive.tick() => {
                    let ka = pb::DeltaResponse { keepalive: true, ..Default::default() };
                    if out.send(Ok(ka)).await.is_err() {
                        break;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.ended(&node);
    }

    fn acked(&self, node: &pb::Node, active: &ActiveConfig) {
        metrics::counter!("sentinel_cp_acks_total").increment(1);
        metrics::histogram!("sentinel_cp_convergence_seconds")
            .record(active.activated.elapsed().as_secs_f64());
        self.fleet.record(NodeUpdate::Ack {
            id: node.id.clone(),
            version: active.number,
            hash: active.hash.clone(),
        });
    }

    fn ended(&self, node: &pb::Node) {
        self.fleet.session_ended(&node.id);
        self.fleet.record(NodeUpdate::Disconnected(node.id.clone()));
        tracing::info!(node = %node.id, "proxy disconnected");
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigStream for StreamService {
    type DeltaStream = ResponseStream<pb::DeltaResponse>;
    type ReportHealthStream = ResponseStream<pb::HealthReportAck>;

    async fn delta(
        &self,
        request: Request<Streaming<pb::DeltaRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        let node = check_hello(&hello)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().session(node, hello, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_health(
        &self,
        request: Request<Streaming<pb::HealthReport>>,
    ) -> Result<Response<Self::ReportHealthStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let fleet = Arc::clone(&self.fleet);
        tokio::spawn(async move {
            let mut received = 0u64;
            let mut node_id = String::new();
            while let Ok(Some(report)) = inbound.message().await {
                received += 1;
                if report.node_id.is_empty()
                    || report.node_id.len() > 128
                    || report.targets.len() > 100_000
                {
                    let _ = tx
                        .send(Err(Status::invalid_argument("bad health report")))
                        .await;
                    break;
                }
                let region = fleet
                    .sessions
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&report.node_id).cloned())
                    .unwrap_or_default();
                node_id = report.node_id.clone();
                metrics::counter!("sentinel_cp_health_reports_total").increment(1);
                fleet.report_health(&report.node_id, &region, report.targets);
                if tx.send(Ok(pb::HealthReportAck { received })).await.is_err() {
                    break;
                }
            }
            if !node_id.is_empty() {
                fleet.forget_health(&node_id);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> ActiveConfig {
        let doc = "listeners { listener \"l\" { address \"127.0.0.1:1\"; }; }\nupstreams { upstream \"u\" { target \"127.0.0.1:2\"; }; }\nroutes { route \"r\" { upstream \"u\"; }; }";
        let s = sentinel_config::compile("t.kdl", doc).unwrap();
        ActiveConfig::new(1, s.resources())
    }

    fn versions(a: &ActiveConfig) -> Vec<(i32, String, String)> {
        a.resources
            .iter()
            .map(|r| (r.r#type, r.name.clone(), r.version.clone()))
            .collect()
    }

    fn iter(v: &[(i32, String, String)]) -> impl Iterator<Item = (i32, &str, &str)> {
        v.iter().map(|(t, n, ver)| (*t, n.as_str(), ver.as_str()))
    }

    #[test]
    fn delta_sends_only_what_differs_and_names_removals() {
        let a = active();
        let all = delta(std::iter::empty(), &a);
        assert_eq!(all.resources.len(), a.resources.len());
        let mut held = versions(&a);
        assert!(delta(iter(&held), &a).is_empty());
        held.push((pb::ResourceType::Route as i32, "gone".into(), "x".into()));
        for h in held.iter_mut() {
            if h.0 == pb::ResourceType::Upstream as i32 && h.1 == "u" {
                h.2 = "old".into();
            }
        }
        held.push((pb::ResourceType::Agent as i32, "zz-last".into(), "x".into()));
        held.sort();
        let d = delta(iter(&held), &a);
        assert_eq!(d.resources.len(), 1);
        assert_eq!(d.resources[0].name, "u");
        let removed: Vec<&str> = d.removed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(removed, vec!["gone", "zz-last"]);
    }

    #[test]
    fn chunks_stay_under_the_limit_and_share_the_nonce() {
        let a = active();
        let d = delta(std::iter::empty(), &a);
        let chunks = chunk(&d, "n1", &a, 64);
        assert!(chunks.len() > 1);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.nonce, "n1");
            assert_eq!(c.chunk, i as u32);
            assert_eq!(c.chunk_count, chunks.len() as u32);
        }
        let total: usize = chunks.iter().map(|c| c.resources.len()).sum();
        assert_eq!(total, a.resources.len());
    }
}
