//! The Sentinel agent SDK: write an external agent as one trait.
//!
//! An agent is a process the proxy calls on the request path over gRPC
//! (`sentinel.agent.v1`, docs/protocol.md), on a Unix socket or on TCP. This
//! crate owns the server side of that protocol and nothing else: implement
//! [`Agent`] (one required method, [`Agent::on_request`]) and hand it to
//! [`serve`]. The server also answers the standard gRPC health protocol
//! (`grpc.health.v1.Health/Check`), which the proxy uses for its health
//! checks, from [`Agent::serving`].
//!
//! ```no_run
//! use sentinel_agent::{Agent, Listen, RequestDecision, RequestEvent, decision};
//!
//! struct NoAdmin;
//!
//! impl Agent for NoAdmin {
//!     async fn on_request(&self, event: RequestEvent) -> RequestDecision {
//!         if event.path.starts_with("/admin") {
//!             decision::deny(403, "no admin here")
//!         } else {
//!             decision::allow()
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = sentinel_agent::serve(Listen::Unix("/run/sentinel/noadmin.sock".into()), NoAdmin).await?;
//! server.wait().await;
//! # Ok(()) }
//! ```
//!
//! Connections are HTTP/2 (what gRPC runs on); the proxy keeps one open
//! and multiplexes its calls over it. [`Server::kill`] drops every
//! connection at once, as a crashed process would (tests use it).
//!
//! The reference agents built on it live in [`reference`] and run as
//! `sentinel-agent token-auth|denylist|echo|allow`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use sentinel_proto::agent_protocol::agent_server::{self, AgentServer};
use sentinel_proto::health::health_server::{self, HealthServer};
use sentinel_proto::health::{HealthCheckRequest, HealthCheckResponse, health_check_response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

pub mod decision;
pub mod reference;

pub use sentinel_proto::agent_protocol::{
    BodyDecision, BodyEvent, Header, HeaderMutation, PROTOCOL_VERSION, RequestDecision,
    RequestEvent, ResponseDecision, ResponseEvent,
};

/// An external agent. Only [`Agent::on_request`] is required.
///
/// Methods take `&self` and may run concurrently for many requests: keep
/// per-request state in the event, shared state behind atomics or locks.
pub trait Agent: Send + Sync + 'static {
    /// The request head (and the buffered body, with `body "buffered"`).
    /// Answer allow, deny or redirect, with header mutations and metadata
    /// as needed (see [`decision`] for constructors).
    fn on_request(&self, event: RequestEvent) -> impl Future<Output = RequestDecision> + Send;

    /// The upstream's response head, for requests whose decision set
    /// `inspect_response`. The default changes nothing.
    fn on_response(&self, event: ResponseEvent) -> impl Future<Output = ResponseDecision> + Send {
        let _ = event;
        async { ResponseDecision::default() }
    }

    /// A piece of the request body, with `body "streamed"`, before it goes
    /// upstream. A deny stops the body there. The default allows.
    fn on_request_body(&self, event: BodyEvent) -> impl Future<Output = BodyDecision> + Send {
        let _ = event;
        async { BodyDecision::default() }
    }

    /// What the health service answers: `SERVING` when true. An agent that
    /// lost what it depends on (a rules file, a key server) says false and
    /// the proxy stops calling it after its unhealthy threshold.
    fn serving(&self) -> bool {
        true
    }
}

/// Where an agent listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A Unix socket path (`unix-socket` in the proxy's config). A stale
    /// socket file left by an earlier run is replaced.
    Unix(PathBuf),
    /// A TCP address (`grpc "http://ADDR"` in the proxy's config).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A running agent server.
pub struct Server {
    /// Where it listens; for `Listen::Tcp` with port 0, the bound port.
    pub listen: Listen,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops accepting and drops every open connection at once (in-flight
    /// calls fail on the proxy's side with a transport error).
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Connections accepted so far (a proxy reuses one).
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs until the server stops (it only stops when killed).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves `agent` (and the health service) on it.
pub async fn serve<A: Agent>(listen: Listen, agent: A) -> std::io::Result<Server> {
    serve_shared(listen, Arc::new(agent)).await
}

/// [`serve`] for an agent the caller keeps a handle to (tests change its
/// behaviour while it runs).
pub async fn serve_shared<A: Agent>(listen: Listen, agent: Arc<A>) -> std::io::Result<Server> {
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let routes = tonic::service::Routes::new(AgentServer::new(AgentService(Arc::clone(&agent))))
        .add_service(HealthServer::new(HealthService(agent)));
    match listen {
        Listen::Unix(path) => {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = tokio::net::UnixListener::bind(&path)?;
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                conns.spawn(connection(stream, routes.clone()));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        },
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
            });
            Ok(Server {
                listen: Listen::Unix(path),
                accepted,
                task,
            })
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                conns.spawn(connection(stream, routes.clone()));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        },
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
            });
            Ok(Server {
                listen: Listen::Tcp(bound),
                accepted,
                task,
            })
        }
    }
}

/// Cancelled calls tolerated before a connection is closed (see `connection`).
const MAX_PENDING_RESETS: usize = 100_000;
/// Calls in progress per connection (a proxy multiplexes every call on one).
const MAX_CONCURRENT_CALLS: u32 = 10_000;

/// One HTTP/2 connection from a proxy. Aborting its task (via the
/// `JoinSet` of the accept loop) closes it.
async fn connection<S>(stream: S, routes: tonic::service::Routes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(routes);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // The proxy cancels a call (RST_STREAM) whenever its client goes away.
    // h2's default of 20 such resets pending accept is a defence against
    // hostile clients (CVE-2023-44487) that would close this one shared
    // connection, failing every other request's call, when many clients
    // of the proxy disconnect at once.
    builder
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_concurrent_streams(MAX_CONCURRENT_CALLS);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

// === impl AgentService ===

struct AgentService<A>(Arc<A>);

#[tonic::async_trait]
impl<A: Agent> agent_server::Agent for AgentService<A> {
    async fn on_request(
        &self,
        request: tonic::Request<RequestEvent>,
    ) -> Result<tonic::Response<RequestDecision>, tonic::Status> {
        let d = self.0.on_request(request.into_inner()).await;
        Ok(tonic::Response::new(d))
    }

    async fn on_response(
        &self,
        request: tonic::Request<ResponseEvent>,
    ) -> Result<tonic::Response<ResponseDecision>, tonic::Status> {
        let d = self.0.on_response(request.into_inner()).await;
        Ok(tonic::Response::new(d))
    }

    async fn on_request_body(
        &self,
        request: tonic::Request<BodyEvent>,
    ) -> Result<tonic::Response<BodyDecision>, tonic::Status> {
        let d = self.0.on_request_body(request.into_inner()).await;
        Ok(tonic::Response::new(d))
    }
}

// === impl HealthService ===

struct HealthService<A>(Arc<A>);

#[tonic::async_trait]
impl<A: Agent> health_server::Health for HealthService<A> {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let status = if self.0.serving() {
            health_check_response::ServingStatus::Serving
        } else {
            health_check_response::ServingStatus::NotServing
        };
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

/// The value of header `name` (case-insensitive) in an event, as text.
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}
