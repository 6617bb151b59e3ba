//! The delta configuration stream and the health-report stream (tonic).
//!
//! One session per proxy connection. The proxy's `Hello` names it and lists
//! the resource versions it holds; the session then sends exactly what
//! differs from the active configuration — nothing when equal — and after
//! every change of the active configuration (debounced) again only the
//! difference. Each response has a nonce; ACKs and NACKs are recorded per
//! node in the store. After a NACK the session sends nothing until the
//! active configuration changes. Large responses are split into chunks
//! below the gRPC message limit; each response is encoded once per
//! (held, target) pair and the same bytes are sent on every stream
//! (`frames`: only the nonce and peer count are per stream).
//!
//! Admission control: a large push (the full configuration to a proxy
//! that holds nothing, or any response of at least [`LARGE_PUSH_BYTES`])
//! waits for one of a bounded number of permits and holds it until the
//! proxy answers (or [`PERMIT_HOLD`] passes), so a whole fleet connecting
//! at once is served a bounded number at a time instead of holding a copy
//! of the configuration per stream in flight. Smaller pushes never wait.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use sentinel_proto as pb;
use sentinel_proto::config_stream_server::ConfigStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::changes::{ActiveConfig, Epoch, NodeUpdate};
pub use crate::changes::{Delta, delta};
use crate::fleet::Fleet;
use crate::identity::StreamAuth;

mod frames;
mod timeline;

pub use frames::{DeltaServer, Encoded, Frame, Frames};

/// Encoded resource bytes per response chunk (gRPC's default limit is 4 MiB).
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// How long a burst of activations is coalesced before pushing.
const DEBOUNCE: Duration = Duration::from_millis(20);

static NONCES: AtomicU64 = AtomicU64::new(1);

/// Encoded size from which a push needs an admission permit.
pub const LARGE_PUSH_BYTES: usize = 64 * 1024;

/// Large pushes in flight at once by default (`--max-large-pushes`).
pub const MAX_LARGE_PUSHES: usize = 32;

/// The longest a push holds its permit without an answer: a proxy that
/// never answers slows admission down, it cannot stop it.
pub const PERMIT_HOLD: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct StreamService {
    pub fleet: Arc<Fleet>,
    pub keepalive: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Who may speak for which node id (certificate, join token, or anyone).
    pub auth: Arc<StreamAuth>,
    /// Responses encoded once per (held, target), shared by every session.
    pub frames: Arc<Frames>,
    /// Permits for large pushes in flight (admission control).
    pub admission: Arc<Admission>,
}

/// The bound on large pushes in flight, and how many are.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    bound: usize,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Admission {
    pub fn new(bound: usize) -> Admission {
        let bound = bound.max(1);
        Admission {
            permits: Arc::new(Semaphore::new(bound)),
            bound,
            waiting: Default::default(),
        }
    }

    /// Waits for a permit; the push holds it until answered.
    async fn admit(self: &Arc<Self>) -> Option<Permit> {
        let waited = std::time::Instant::now();
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("sentinel_cp_large_pushes_waiting").set(waiting as f64);
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        let waiting = self.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("sentinel_cp_large_pushes_waiting").set(waiting as f64);
        let permit = permit.ok()?;
        metrics::histogram!("sentinel_cp_admission_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        self.publish();
        Some(Permit {
            permit: Some(permit),
            admission: Arc::clone(self),
        })
    }

    /// Large pushes holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.bound - self.permits.available_permits()
    }

    fn publish(&self) {
        metrics::gauge!("sentinel_cp_large_pushes_in_flight").set(self.in_flight() as f64);
    }
}

/// A large push's admission permit; dropping it admits the next.
#[derive(Debug)]
struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.admission.publish();
    }
}

impl StreamService {
    pub fn new(
        fleet: Arc<Fleet>,
        keepalive: Duration,
        shutdown: watch::Receiver<bool>,
        auth: Arc<StreamAuth>,
        max_large_pushes: usize,
    ) -> StreamService {
        StreamService {
            fleet,
            keepalive,
            shutdown,
            auth,
            frames: Arc::default(),
            admission: Arc::new(Admission::new(max_large_pushes)),
        }
    }
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
            peers: 0,
            trace_parent: active.trace_parent.clone(),
        })
        .collect()
}

/// The response in flight: sent, its answer not yet received. At most one
/// per session.
struct InFlight {
    nonce: String,
    /// The configuration the proxy holds once it applies the response.
    target: Arc<ActiveConfig>,
    /// When it was pushed (`sentinel_cp_push_to_ack_seconds`, the node's
    /// timeline), and its `config.push` span.
    pushed: timeline::Pushed,
    /// A large push's admission permit, released on the answer or at the
    /// deadline, whichever comes first.
    permit: Option<(Permit, tokio::time::Instant)>,
}

/// Sleeps until `deadline`; never wakes without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Text a proxy sends that ends up in logs and in the store: control
/// characters (NUL among them, which PostgreSQL refuses) become spaces, and
/// the length is capped (in characters, never splitting one).
pub fn clean_text(text: &str, max_chars: usize) -> String {
    text.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn check_hello(hello: &pb::Hello) -> Result<pb::Node, Status> {
    let mut node = hello
        .node
        .clone()
        .ok_or_else(|| Status::invalid_argument("hello: missing node"))?;
    let ok = |s: &str, max: usize| s.len() <= max && s.chars().all(|c| c.is_ascii_graphic());
    if node.id.is_empty() || !ok(&node.id, 128) {
        return Err(Status::invalid_argument(
            "hello: node id must be 1-128 printable ASCII characters",
        ));
    }
    if !ok(&node.region, 64) || !ok(&node.zone, 64) {
        return Err(Status::invalid_argument(
            "hello: region/zone must be at most 64 printable ASCII characters",
        ));
    }
    if node.build_version.len() > 64 || node.build_version.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "hello: build version must be at most 64 bytes without control characters",
        ));
    }
    if node.labels.len() > 64
        || node.labels.iter().any(|l| {
            !ok(&l.key, 128) || l.value.len() > 256 || l.value.chars().any(char::is_control)
        })
    {
        return Err(Status::invalid_argument(
            "hello: at most 64 labels, keys printable ASCII (128), values without control characters (256 bytes)",
        ));
    }
    if hello.held.len() > MAX_HELD {
        return Err(Status::invalid_argument("hello: too many held resources"));
    }
    node.labels.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(node)
}

/// The most resources a proxy may claim to hold (hello or resync).
const MAX_HELD: usize = 1_000_000;

/// A proxy's own list of what it holds, as the session keeps it.
fn held_versions(mut v: Vec<pb::ResourceVersion>) -> Held {
    v.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
    v.dedup_by(|a, b| a.r#type == b.r#type && a.name == b.name);
    Held::Versions(v)
}

/// Why a session ended.
enum End {
    /// The proxy closed its side, the connection broke or the replica is
    /// shutting down.
    Closed,
    /// The proxy broke the protocol; it is told why.
    Refused(Status),
}

impl StreamService {
    /// One proxy's delta session: the state machine of docs/protocol.md.
    ///
    /// The session's belief about the proxy, `held`, only ever changes on
    /// the proxy's own word: the hello, an ACK (it now holds the target of
    /// the response in flight), a NACK (it still holds `held`) or a resync
    /// (it holds what it lists). With one response in flight at a time and
    /// every delta computed from `held`, the belief is what the proxy holds
    /// whenever the stream is quiet, at any rate of activations.
    async fn session(
        self,
        node: pb::Node,
        hello: pb::Hello,
        mut inbound: Streaming<pb::DeltaRequest>,
        out: mpsc::Sender<Result<Frame, Status>>,
    ) {
        let fleet = &self.fleet;
        let epoch = Epoch::next();
        let held_count = hello.held.len();
        let claimed = (!hello.config_version.is_empty() && hello.version_number > 0)
            .then(|| (hello.version_number, hello.config_version.clone()));
        let mut held = {
            let current = fleet.desired(&node.id, &fleet.current());
            if !hello.config_version.is_empty() && hello.config_version == current.hash {
                Held::Config(current)
            } else {
                held_versions(hello.held)
            }
        };
        fleet.session_started(&node.id, &node.region, epoch);
        fleet.record(NodeUpdate::Connected {
            node: node.clone(),
            epoch,
        });
        tracing::info!(node = %node.id, region = %node.region, zone = %node.zone, held = held_count, epoch = epoch.0, "proxy connected");
        // What the proxy says it runs is recorded like an ACK for this
        // session: an ACK its previous session sent may never be recorded
        // (its replica died first, or this session's hello reached the
        // store first and the old session's rows are no longer written).
        if let Held::Config(c) = &held {
            self.acked(&node, epoch, c);
        } else if let Some((number, hash)) = claimed {
            fleet.record(NodeUpdate::Ack {
                id: node.id.clone(),
                epoch,
                version: i64::try_from(number).unwrap_or(i64::MAX),
                hash,
            });
        }
        let mut active_rx = fleet.subscribe();
        // A rollout admitting this node (or ending) changes what it should
        // run without changing the active configuration.
        let mut rollout_rx = fleet.subscribe_rollout();
        let mut shutdown = self.shutdown.clone();
        let mut in_flight: Option<InFlight> = None;
        // The config hash the proxy refused (from what it holds now); not
        // offered again until the active configuration changes.
        let mut refused: Option<String> = None;
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.reset();
        let mut push_needed = true;
        // Registered once per session: the ACK path records without a lookup.
        let push_to_ack =
            metrics::histogram!("sentinel_cp_push_to_ack_seconds", "region" => node.region.clone());
        let end = loop {
            if push_needed && in_flight.is_none() {
                push_needed = false;
                rollout_rx.borrow_and_update();
                let active = fleet.desired(&node.id, &active_rx.borrow_and_update().clone());
                match self
                    .push(&node, epoch, &mut held, &active, &refused, &out)
                    .await
                {
                    Ok(sent) => in_flight = sent,
                    Err(()) => break End::Closed,
                }
            }
            let permit_deadline = in_flight
                .as_ref()
                .and_then(|f| f.permit.as_ref().map(|p| p.1));
            tokio::select! {
                msg = inbound.message() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => break End::Closed,
                        Err(e) => {
                            metrics::counter!("sentinel_cp_stream_errors_total").increment(1);
                            tracing::debug!(node = %node.id, error = %e, "stream error");
                            break End::Closed;
                        }
                    };
                    let answered = |nonce: &str| in_flight.as_ref().is_some_and(|f| f.nonce == nonce);
                    match msg.kind {
                        Some(pb::delta_request::Kind::Ack(ack)) if answered(&ack.nonce) => {
                            let Some(f) = in_flight.take() else { continue };
                            push_to_ack.record(f.pushed.sent_at.elapsed().as_secs_f64());
                            refused = None;
                            timeline::answered(fleet, &node, epoch, &f.target, f.pushed, timeline::Answer {
                                received_unix_ms: ack.received_unix_ms,
                                built_unix_ms: ack.built_unix_ms,
                                swapped_unix_ms: ack.swapped_unix_ms,
                                refused: None,
                            });
                            self.acked(&node, epoch, &f.target);
                            held = Held::Config(f.target);
                            push_needed = true;
                        }
                        Some(pb::delta_request::Kind::Nack(nack)) if answered(&nack.nonce) => {
                            let Some(f) = in_flight.take() else { continue };
                            // The proxy kept what it held: `held` stays.
                            let resource = clean_text(&nack.resource.map(|r| r.to_string()).unwrap_or_default(), 256);
                            let error = clean_text(&nack.error, 4096);
                            let reason = if resource.is_empty() { error.clone() } else { format!("{resource}: {error}") };
                            timeline::answered(fleet, &node, epoch, &f.target, f.pushed, timeline::Answer {
                                received_unix_ms: nack.received_unix_ms,
                                built_unix_ms: nack.built_unix_ms,
                                swapped_unix_ms: nack.swapped_unix_ms,
                                refused: Some(&reason),
                            });
                            tracing::warn!(node = %node.id, version = f.target.number, %resource, %error, "proxy refused the configuration");
                            metrics::counter!("sentinel_cp_nacks_total").increment(1);
                            fleet.record(NodeUpdate::Nack {
                                id: node.id.clone(),
                                epoch,
                                version: f.target.number,
                                hash: f.target.hash.clone(),
                                resource,
                                error,
                            });
                            refused = Some(f.target.hash.clone());
                            push_needed = true;
                        }
                        Some(pb::delta_request::Kind::Resync(resync)) if answered(&resync.nonce) => {
                            if resync.held.len() > MAX_HELD {
                                break End::Refused(Status::invalid_argument("resync: too many held resources"));
                            }
                            in_flight = None;
                            metrics::counter!("sentinel_cp_resyncs_total").increment(1);
                            tracing::warn!(node = %node.id, held = resync.held.len(), reason = %clean_text(&resync.reason, 512), "proxy asked for a resync; sending the difference from what it holds");
                            held = match fleet.desired(&node.id, &fleet.current()) {
                                c if !resync.config_version.is_empty() && c.hash == resync.config_version => Held::Config(c),
                                _ => held_versions(resync.held),
                            };
                            refused = None;
                            push_needed = true;
                        }
                        Some(pb::delta_request::Kind::Ack(_) | pb::delta_request::Kind::Nack(_) | pb::delta_request::Kind::Resync(_)) => {
                            // No response with that nonce is in flight: a
                            // confused or hostile peer. Its word changes nothing.
                            metrics::counter!("sentinel_cp_stale_answers_total").increment(1);
                            tracing::debug!(node = %node.id, "answer to no response in flight; ignored");
                        }
                        Some(pb::delta_request::Kind::Hello(_)) => {
                            break End::Refused(Status::invalid_argument("hello may only be sent once"));
                        }
                        None => {}
                    }
                }
                changed = active_rx.changed() => {
                    if changed.is_err() {
                        break End::Closed;
                    }
                    // Coalesce a burst; the response in flight (if any)
                    // stays in flight: the next one is computed from the
                    // state its answer leaves the proxy in.
                    tokio::time::sleep(DEBOUNCE).await;
                    push_needed = true;
                }
                changed = rollout_rx.changed() => {
                    if changed.is_err() {
                        break End::Closed;
                    }
                    push_needed = true;
                }
                _ = until(permit_deadline) => {
                    // Unanswered for too long: the push stays in flight, its
                    // permit goes to the next session waiting.
                    if let Some(f) = in_flight.as_mut() {
                        f.permit = None;
                    }
                }
                _ = keepalive.tick() => {
                    let ka = pb::DeltaResponse {
                        keepalive: true,
                        peers: self.fleet.peers(),
                        ..Default::default()
                    };
                    if out.send(Ok(Frame::message(&ka))).await.is_err() {
                        break End::Closed;
                    }
                }
                _ = shutdown.changed() => break End::Closed,
            }
        };
        if let End::Refused(status) = end {
            let _ = out.send(Err(status)).await;
        }
        if let Some(f) = in_flight.take() {
            timeline::unanswered(f.pushed);
        }
        self.ended(&node, epoch);
    }

    /// Offers `active` to a proxy that holds `held` and has nothing in
    /// flight: sends the delta and returns it as in flight, or — when the
    /// proxy already holds it — records it as converged without a message.
    /// `Err` when the stream is gone.
    async fn push(
        &self,
        node: &pb::Node,
        epoch: Epoch,
        held: &mut Held,
        active: &Arc<ActiveConfig>,
        refused: &Option<String>,
        out: &mpsc::Sender<Result<Frame, Status>>,
    ) -> Result<Option<InFlight>, ()> {
        if active.number == 0 || refused.as_deref() == Some(active.hash.as_str()) {
            return Ok(None);
        }
        if let Held::Config(c) = held
            && c.hash == active.hash
        {
            if c.number != active.number {
                // Same content under another number (a rollback to an
                // identical version): the proxy runs it already.
                *held = Held::Config(Arc::clone(active));
                self.acked(node, epoch, active);
            }
            return Ok(None);
        }
        // Shared by every session in the same position: one that holds a
        // configuration this replica activated, or one that holds nothing
        // (its delta is computed only when the pair is not cached: a fleet
        // connecting at once must not build a copy of the resource list
        // per session). Any other set from a hello is this session's own.
        let encoded = match &*held {
            Held::Config(from) => {
                let d = self.fleet.delta_between(from, active);
                if d.is_empty() {
                    None
                } else {
                    Some(self.frames.get(Some(from), active, || d).await)
                }
            }
            Held::Versions(v) if v.is_empty() => {
                if active.resources.is_empty() {
                    None
                } else {
                    let full = || Arc::new(delta(std::iter::empty(), active));
                    Some(self.frames.get(None, active, full).await)
                }
            }
            Held::Versions(_) => {
                let d = delta(held_iter(held), active);
                (!d.is_empty()).then(|| Arc::new(Encoded::new(&d, active, CHUNK_BYTES)))
            }
        };
        let Some(encoded) = encoded else {
            // The proxy already holds exactly this: say nothing, but it
            // counts as converged.
            *held = Held::Config(Arc::clone(active));
            self.acked(node, epoch, active);
            return Ok(None);
        };
        let permit = if encoded.len() >= LARGE_PUSH_BYTES {
            self.admission
                .admit()
                .await
                .map(|p| (p, tokio::time::Instant::now() + PERMIT_HOLD))
        } else {
            None
        };
        let nonce = format!(
            "{}-{}",
            active.number,
            NONCES.fetch_add(1, Ordering::Relaxed)
        );
        metrics::counter!("sentinel_cp_pushes_total").increment(1);
        metrics::counter!("sentinel_cp_push_bytes_total").increment(encoded.resource_bytes as u64);
        let peers = self.fleet.peers();
        let pushed = timeline::pushed(node, active);
        for c in &encoded.chunks {
            if out
                .send(Ok(Frame::with_tail(c, &nonce, peers)))
                .await
                .is_err()
            {
                return Err(());
            }
        }
        Ok(Some(InFlight {
            nonce,
            target: Arc::clone(active),
            pushed,
            permit,
        }))
    }

    fn acked(&self, node: &pb::Node, epoch: Epoch, active: &Arc<ActiveConfig>) {
        metrics::counter!("sentinel_cp_acks_total").increment(1);
        self.fleet.session_holds(&node.id, epoch, active);
        metrics::histogram!("sentinel_cp_convergence_seconds")
            .record(active.activated.elapsed().as_secs_f64());
        self.fleet.record(NodeUpdate::Ack {
            id: node.id.clone(),
            epoch,
            version: active.number,
            hash: active.hash.clone(),
        });
    }

    fn ended(&self, node: &pb::Node, epoch: Epoch) {
        // Only the node's current session may say it is gone; the store
        // applies the same rule across replicas by epoch.
        let current = self.fleet.session_ended(&node.id, epoch);
        self.fleet.record(NodeUpdate::Disconnected {
            id: node.id.clone(),
            epoch,
        });
        tracing::info!(node = %node.id, epoch = epoch.0, current, "proxy disconnected");
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl StreamService {
    /// A `Delta` call: authenticates the peer, reads and checks the hello,
    /// and starts the session; its frames are the response stream.
    async fn open(
        &self,
        request: Request<Streaming<pb::DeltaRequest>>,
    ) -> Result<Response<mpsc::Receiver<Result<Frame, Status>>>, Status> {
        let peer = self.auth.authenticate(&request).await?;
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
        peer.permits(&node.id)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().session(node, hello, inbound, tx));
        Ok(Response::new(rx))
    }
}

#[tonic::async_trait]
impl ConfigStream for StreamService {
    type DeltaStream = ResponseStream<pb::DeltaResponse>;
    type ReportHealthStream = ResponseStream<pb::HealthReportAck>;

    /// Never called: [`DeltaServer`] serves `Delta` with shared frames
    /// ([`StreamService::open`]).
    async fn delta(
        &self,
        _request: Request<Streaming<pb::DeltaRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        Err(Status::unimplemented(
            "Delta is served by stream::DeltaServer",
        ))
    }

    async fn report_health(
        &self,
        request: Request<Streaming<pb::HealthReport>>,
    ) -> Result<Response<Self::ReportHealthStream>, Status> {
        let peer = self.auth.authenticate(&request).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let fleet = Arc::clone(&self.fleet);
        tokio::spawn(async move {
            let epoch = Epoch::next();
            let mut received = 0u64;
            let mut node_id = String::new();
            while let Ok(Some(report)) = inbound.message().await {
                received += 1;
                let valid = !report.node_id.is_empty()
                    && report.node_id.len() <= 128
                    && report.targets.len() <= 100_000
                    && report.routes.len() <= 100_000
                    && (node_id.is_empty() || node_id == report.node_id);
                if !valid {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "bad health report (one node per stream, id 1-128 bytes, at most 100000 targets)",
                        )))
                        .await;
                    break;
                }
                // Only on behalf of the authenticated node.
                if let Err(denied) = peer.permits(&report.node_id) {
                    let _ = tx.send(Err(denied)).await;
                    break;
                }
                node_id = report.node_id.clone();
                metrics::counter!("sentinel_cp_health_reports_total").increment(1);
                let id = report.node_id.clone();
                fleet.report_health(&id, epoch, report);
                if tx.send(Ok(pb::HealthReportAck { received })).await.is_err() {
                    break;
                }
            }
            if !node_id.is_empty() {
                fleet.forget_health(&node_id, epoch);
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
