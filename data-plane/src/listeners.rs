//! Listeners: binding, accepting, TLS, connection limits, draining.
//!
//! Applying a runtime is two-phase so a bind failure never half-applies:
//! [`Listeners::prepare`] binds every listener that is new (or moved to a new
//! address) and fails without side effects if one cannot bind; after the
//! runtime is swapped in, [`Listeners::commit`] starts accepting on the new
//! sockets, hands changed settings to kept listeners, and drains the ones
//! that were removed (they stop accepting; their open connections finish
//! their in-flight requests and close). Listeners are matched by address:
//! renaming a listener keeps its socket.
//!
//! Connection timeouts enforced here: `header-read-timeout-secs` (hyper's
//! HTTP/1 header timer, and the TLS handshake), `keepalive-timeout-secs`
//! (a connection with no request for that long is closed gracefully, on
//! HTTP/1 and HTTP/2 alike), and HTTP/2 keep-alive pings (every half the
//! keep-alive timeout; a peer that does not answer within
//! [`H2_PING_TIMEOUT`] is dropped).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sentinel_proto as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::proxy::{self, ConnInfo, Shared};
use crate::runtime::{BuildError, ListenerSpec, Runtime};
use crate::workers;

struct Running {
    name: String,
    addr: SocketAddr,
    spec: Arc<ArcSwap<ListenerSpec>>,
    stop: watch::Sender<bool>,
}

/// Connection accounting shared by all listeners (server-wide limit and
/// the drain on shutdown).
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    changed: Notify,
    limit: AtomicUsize,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until every connection closed or `timeout` passed; returns the
    /// number still open.
    pub async fn drained(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let open = self.open();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open();
            }
        }
    }
}

struct ConnGuard {
    conns: Arc<Connections>,
    listener: Arc<ListenerOpen>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        self.conns.changed.notify_waiters();
        self.listener.count.fetch_sub(1, Ordering::AcqRel);
        self.listener.changed.notify_waiters();
        metrics::gauge!("sentinel_open_connections").decrement(1.0);
    }
}

/// Sockets bound by `prepare`, waiting for `commit`: one per worker for
/// each new listener.
pub struct Plan {
    bound: Vec<(ListenerSpec, Vec<std::net::TcpListener>)>,
}

pub struct Listeners {
    shared: Arc<Shared>,
    running: Mutex<Vec<Running>>,
    pub connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
}

/// Binds `addr` once per worker. With more than one worker the sockets
/// share the port with `SO_REUSEPORT` and the kernel spreads connections
/// over them; port 0 resolves once and the others bind the same port.
/// Registered with a reactor only by the worker that accepts on it.
///
/// `SO_REUSEPORT` would also let this group join a port another process
/// of the same user already listens on with the option, and split its
/// traffic. So the first bind is a probe without the option: a port held
/// by anyone fails here, as it did before there were several workers.
fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let workers = workers.max(1);
    let mut addr = addr;
    if workers > 1 {
        let probe = socket(addr, false)?;
        addr = probe.local_addr()?;
    }
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = socket(addr, workers > 1)?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One bound, listening, non-blocking socket.
fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Listeners {
    pub fn new(shared: Arc<Shared>) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            shared,
            running: Mutex::new(Vec::new()),
            connections: Arc::default(),
            shutdown,
        }
    }

    /// Binds what `runtime` needs that is not bound yet.
    pub fn prepare(&self, runtime: &Runtime) -> Result<Plan, BuildError> {
        let running = self.running.lock().map_err(|_| poisoned())?;
        let mut bound = Vec::new();
        for spec in &runtime.listeners {
            // Matched by address: a renamed listener keeps its socket.
            if running.iter().any(|r| r.addr == spec.addr) {
                continue;
            }
            // A listener moving to an address another listener holds now
            // reuses nothing: the old one is drained only after commit.
            let listener = bind(spec.addr, workers::count()).map_err(|e| {
                BuildError::new(
                    pb::ResourceType::Listener,
                    &spec.name,
                    format!("cannot bind {}: {e}", spec.addr),
                )
            })?;
            bound.push((spec.clone(), listener));
        }
        Ok(Plan { bound })
    }

    /// Starts the new listeners, updates kept ones, drains removed ones.
    pub fn commit(&self, runtime: &Runtime, plan: Plan) {
        let settings = runtime.settings.server.unwrap_or_default();
        let limits = runtime.limits();
        let total = match (settings.max_connections, limits.max_total_connections) {
            (0, 0) => usize::MAX,
            (0, l) | (l, 0) => l as usize,
            (a, b) => a.min(b) as usize,
        };
        self.connections.limit.store(total, Ordering::Release);
        self.connections.changed.notify_waiters();
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        running.retain_mut(|r| {
            let keep = runtime.listeners.iter().find(|s| s.addr == r.addr);
            match keep {
                Some(spec) => {
                    if r.name != spec.name {
                        tracing::info!(from = %r.name, to = %spec.name, addr = %r.addr, "listener renamed");
                        r.name = spec.name.clone();
                    }
                    r.spec.store(Arc::new(spec.clone()));
                    true
                }
                None => {
                    tracing::info!(listener = %r.name, addr = %r.addr, "listener removed; draining");
                    let _ = r.stop.send(true);
                    false
                }
            }
        });
        let workers = workers::handles();
        for (spec, sockets) in plan.bound {
            let (stop, stop_rx) = watch::channel(false);
            let cell = Arc::new(ArcSwap::from_pointee(spec.clone()));
            tracing::info!(listener = %spec.name, addr = %spec.addr, tls = spec.tls.is_some(), workers = sockets.len(), "listening");
            // The listener's own connection count, shared by its workers.
            let open = Arc::new(ListenerOpen::default());
            for (socket, worker) in sockets.into_iter().zip(workers.iter().cycle()) {
                worker.spawn(accept_loop(
                    socket,
                    Arc::clone(&cell),
                    Arc::clone(&self.shared),
                    Arc::clone(&self.connections),
                    Arc::clone(&open),
                    stop_rx.clone(),
                    self.shutdown.subscribe(),
                ));
            }
            running.push(Running {
                name: spec.name.clone(),
                addr: spec.addr,
                spec: cell,
                stop,
            });
        }
    }

    /// Local addresses actually bound (port 0 resolved), by listener name.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .lock()
            .map(|r| r.iter().map(|r| (r.name.clone(), r.addr)).collect())
            .unwrap_or_default()
    }

    /// Stops accepting everywhere and asks every connection to finish its
    /// in-flight requests and close.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Ok(running) = self.running.lock() {
            for r in running.iter() {
                let _ = r.stop.send(true);
            }
        }
    }
}

fn poisoned() -> BuildError {
    BuildError::new(
        pb::ResourceType::Listener,
        "",
        "internal error: listener registry poisoned",
    )
}

/// The connections open on one listener (all its workers), for its
/// `max-connections`.
#[derive(Default)]
struct ListenerOpen {
    count: AtomicUsize,
    changed: Notify,
}

/// Accepts on one worker's socket of a listener; runs on that worker, and
/// so do the connections it accepts.
async fn accept_loop(
    socket: std::net::TcpListener,
    spec: Arc<ArcSwap<ListenerSpec>>,
    shared: Arc<Shared>,
    conns: Arc<Connections>,
    open: Arc<ListenerOpen>,
    mut stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let addr = spec.load().addr;
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot accept on a bound listener socket");
            return;
        }
    };
    loop {
        // Connection limits: wait (leaving clients in the backlog) rather
        // than accept and drop.
        loop {
            let local_limit = spec.load().resource.max_connections as usize;
            let notified_global = conns.changed.notified();
            let notified_local = open.changed.notified();
            let over_global = conns.open() >= conns.limit.load(Ordering::Acquire);
            let over_local = local_limit > 0 && open.count.load(Ordering::Acquire) >= local_limit;
            if !over_global && !over_local {
                break;
            }
            tokio::select! {
                _ = notified_global => {}
                _ = notified_local => {}
                _ = stop.changed() => return,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        workers::accepted();
        conns.open.fetch_add(1, Ordering::AcqRel);
        open.count.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("sentinel_open_connections").increment(1.0);
        let guard = ConnGuard {
            conns: Arc::clone(&conns),
            listener: Arc::clone(&open),
        };
        let spec = spec.load_full();
        tokio::spawn(serve_connection(
            stream,
            client,
            spec,
            Arc::clone(&shared),
            stop.clone(),
            shutdown.clone(),
            guard,
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    spec: Arc<ListenerSpec>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let l = &spec.resource;
    let conn = Arc::new(ConnInfo {
        client,
        client_ip: client.ip().to_string(),
        listener: Arc::from(spec.name.as_str()),
        tls: spec.tls.is_some(),
        tls_facts: Default::default(),
        stop: Some(stop.clone()),
        activity: proxy::Activity::default(),
    });
    let header_timeout = Duration::from_millis(l.header_read_timeout_ms.max(1000));
    let keepalive = Duration::from_millis(if l.keepalive_timeout_ms > 0 {
        l.keepalive_timeout_ms
    } else {
        DEFAULT_KEEPALIVE_MS
    });
    let idle = Idle {
        conn: Arc::clone(&conn),
        timeout: keepalive,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = shared
        .runtime
        .load()
        .as_ref()
        .map(|r| r.limits())
        .unwrap_or_default();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size((limits.max_header_bytes as usize).max(8192))
        .max_headers((limits.max_headers as usize).max(1));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some((keepalive / 2).max(Duration::from_secs(1))))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_header_list_size(limits.max_header_bytes.max(8192));
    let facts_of = Arc::clone(&conn);
    let service = hyper::service::service_fn(move |req| {
        proxy::serve(Arc::clone(&shared), Arc::clone(&conn), req)
    });
    match &spec.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
            let tls_stream =
                match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let session = tls_stream.get_ref().1;
            let _ = facts_of.tls_facts.set(proxy::TlsFacts {
                sni: session.server_name().unwrap_or("").to_string(),
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
                version: match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
                    Some(v) => format!("{v:?}"),
                    None => String::new(),
                },
            });
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            drive(
                builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service),
                stop,
                shutdown,
                idle,
            )
            .await;
        }
        None => {
            let builder = if l.http2 {
                builder
            } else {
                builder.http1_only()
            };
            drive(
                builder.serve_connection_with_upgrades(TokioIo::new(stream), service),
                stop,
                shutdown,
                idle,
            )
            .await;
        }
    }
}

/// Runs a connection until it ends; on stop or shutdown, lets in-flight
/// requests finish and closes it.
async fn drive<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    idle: Idle,
) where
    C: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
        + GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    if *stop.borrow() || *shutdown.borrow() {
        conn.as_mut().begin_graceful();
        let _ = conn.await;
        return;
    }
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => {}
        _ = shutdown.changed() => {}
        _ = idle.expired() => {
            // No request for the keep-alive timeout: close. A request
            // racing in still gets its answer from the graceful close; an
            // HTTP/2 peer that never answers the closing ping does not
            // hold the connection past the grace.
            conn.as_mut().begin_graceful();
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await;
            return;
        }
    }
    // Closing an idle keep-alive connection races with a request the client
    // may be sending on it right now. Keep serving a little while (responses
    // now carry `Connection: close`, so clients move off), then close.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(DRAIN_LINGER) => {}
    }
    conn.as_mut().begin_graceful();
    let _ = conn.await;
}

/// `keepalive-timeout-secs` when a listener resource carries none.
const DEFAULT_KEEPALIVE_MS: u64 = 60_000;

/// How long an idle connection being closed may take to say goodbye.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long an HTTP/2 keep-alive ping may go unanswered.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection's idle timer: fires once the connection has had no request
/// in progress for `timeout`.
struct Idle {
    conn: Arc<ConnInfo>,
    timeout: Duration,
}

impl Idle {
    async fn expired(&self) {
        let timeout_ms = self.timeout.as_millis() as u64;
        let opened_ms = crate::clock::now_ms();
        loop {
            let activity = &self.conn.activity;
            let last = activity.last_ms().max(opened_ms);
            let now = crate::clock::now_ms();
            let wait_ms = if activity.in_flight() > 0 {
                timeout_ms
            } else if now >= last + timeout_ms {
                return;
            } else {
                last + timeout_ms - now
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// How long a draining connection keeps answering before it is closed.
const DRAIN_LINGER: Duration = Duration::from_millis(500);

/// hyper-util's connections expose `graceful_shutdown` on a pinned self.
pub trait GracefulConnection {
    fn begin_graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn begin_graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(timeout_ms: u64) -> Idle {
        let conn = Arc::new(ConnInfo {
            client: "127.0.0.1:1".parse().unwrap(),
            client_ip: "127.0.0.1".into(),
            listener: Arc::from("l"),
            tls: false,
            tls_facts: Default::default(),
            stop: None,
            activity: proxy::Activity::default(),
        });
        Idle {
            conn,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_after_the_timeout_without_requests() {
        let idle = idle(1000);
        let started = tokio::time::Instant::now();
        idle.expired().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1000), "{waited:?}");
        assert!(waited < Duration::from_millis(1100), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_the_connection() {
        let idle = idle(1000);
        let guard = proxy::Activity::begin_for_test(&idle.conn);
        let fired = tokio::time::timeout(Duration::from_secs(10), idle.expired()).await;
        assert!(fired.is_err(), "closed under a request in progress");
        drop(guard);
        let started = tokio::time::Instant::now();
        idle.expired().await;
        assert!(started.elapsed() >= Duration::from_millis(1000));
    }
}
