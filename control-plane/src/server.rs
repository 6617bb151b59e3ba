//! Wiring: open the store, bootstrap (or rotate) the admin token and the
//! fleet join token, choose how proxies prove their node id (client
//! certificate, join token, or — explicitly — nothing), load the active
//! configuration, serve gRPC (optionally TLS / mTLS) and the REST API
//! (optionally TLS), and shut down cleanly on SIGTERM: sessions end so
//! proxies reconnect elsewhere, in-flight API requests finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::identity::{StreamAuth, StreamAuthMode};
use crate::store::{Ensured, Role, Store, TokenKind};
use crate::stream::{DeltaServer, StreamService};

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub grpc_tls: Option<(PathBuf, PathBuf)>,
    pub grpc_client_ca: Option<PathBuf>,
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// How long a client of the TLS API may take to finish its handshake.
    pub api_tls_handshake_timeout: Duration,
    pub region: String,
    pub replica: String,
    pub bootstrap_token: Option<String>,
    /// A fleet-wide join token ensured (created or rotated) at start.
    pub join_token: Option<String>,
    /// Accept streams without any proof of node identity (no mTLS, no join
    /// token): an explicit opt-out, logged loudly.
    pub insecure_streams: bool,
    /// Under mTLS, the SPIFFE trust domain a `spiffe://…/node/ID` SAN must
    /// carry (default: any; the client CA decides trust).
    pub grpc_trust_domain: Option<String>,
    pub keepalive: Duration,
    pub poll: Duration,
    pub health_quorum_percent: u32,
    pub node_expiry: Duration,
    /// Large pushes (the full configuration, any response of 64 KiB or
    /// more) in flight at once; more wait for a permit.
    pub max_large_pushes: usize,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact(&settings.database_url)
            )
        })?;
    if let Some(secret) = &settings.bootstrap_token {
        ensure_token(
            &store,
            "bootstrap",
            secret,
            TokenKind::Api,
            Some(Role::Admin),
        )
        .await?;
    }
    if let Some(secret) = &settings.join_token {
        ensure_token(&store, JOIN_TOKEN_NAME, secret, TokenKind::Join, None).await?;
    }
    let auth = Arc::new(StreamAuth::new(stream_auth_mode(&settings), store.clone()));
    let fleet = Fleet::new(store, settings.replica.clone(), settings.region.clone());
    if let Err(e) = fleet.refresh().await {
        tracing::warn!(error = %e, "cannot load the active configuration yet");
    }
    crate::telemetry::metrics();
    crate::telemetry::spawn_upkeep();
    if let Err(e) = crate::discovery::load(&fleet).await {
        tracing::warn!(error = %e, "cannot load the discovered endpoints yet");
    }
    if let Err(e) = fleet.load_rollout().await {
        tracing::warn!(error = %e, "cannot load the open rollout yet");
    }
    crate::notify::spawn(Arc::clone(&fleet), settings.poll);
    crate::rollouts::driver::spawn(Arc::clone(&fleet));
    let discovered = crate::discovery::intake(Arc::clone(&fleet));
    crate::discovery::leader::spawn(Arc::clone(&fleet), discovered);
    crate::health::spawn(Arc::clone(&fleet), settings.health_quorum_percent);
    crate::sampled::spawn(Arc::clone(&fleet));

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: closing streams");
        let _ = shutdown_tx.send(true);
    });

    let grpc = grpc_server(&settings, Arc::clone(&fleet), auth, shutdown.clone()).await?;
    let api = api_server(&settings, Arc::clone(&fleet), shutdown.clone()).await?;
    let (g, a) = tokio::join!(grpc, api);
    g??;
    a??;
    Ok(())
}

/// The name of the fleet-wide join token given by `--join-token`.
pub const JOIN_TOKEN_NAME: &str = "bootstrap-join";

/// Creates or rotates a token given on the command line, and says so.
async fn ensure_token(
    store: &Store,
    name: &str,
    secret: &str,
    kind: TokenKind,
    role: Option<Role>,
) -> anyhow::Result<()> {
    let hash = sentinel_config::sha256_hex(secret.as_bytes());
    match store
        .ensure_token(name, &hash, kind, role)
        .await
        .with_context(|| format!("cannot store the `{name}` token"))?
    {
        Ensured::Created => tracing::info!(token = name, "created the token"),
        Ensured::Unchanged => {}
        Ensured::Rotated => tracing::warn!(
            token = name,
            "rotated the token: a new secret was given; the old secret no longer works"
        ),
        Ensured::Revoked => tracing::warn!(
            token = name,
            "the token given at start was revoked; it stays revoked (give a new secret to rotate it)"
        ),
    }
    Ok(())
}

/// How proxies prove their node id: mTLS when a client CA is given, else
/// join tokens unless streams were explicitly left open.
fn stream_auth_mode(settings: &Settings) -> StreamAuthMode {
    if settings.grpc_client_ca.is_some() {
        if settings.insecure_streams {
            tracing::warn!(
                "--insecure-streams is ignored: --grpc-client-ca is set, node ids are checked against client certificates"
            );
        }
        StreamAuthMode::ClientCertificate {
            trust_domain: settings.grpc_trust_domain.clone(),
        }
    } else if settings.insecure_streams {
        tracing::warn!(
            "INSECURE STREAMS: --insecure-streams is set; any client that reaches the gRPC address can \
             claim any node id, ACK or NACK in its name and report health for it. Use mTLS \
             (--grpc-client-ca) or join tokens (--join-token / sentinelctl token create --join) instead"
        );
        StreamAuthMode::Insecure
    } else {
        if settings.join_token.is_none() {
            tracing::info!(
                "proxy streams need a join token (create one with `sentinelctl token create NAME --join`, or start with --join-token)"
            );
        }
        StreamAuthMode::JoinToken
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

async fn wait(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

async fn grpc_server(
    settings: &Settings,
    fleet: Arc<Fleet>,
    auth: Arc<StreamAuth>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot bind the gRPC address {}", settings.grpc_addr))?;
    tracing::info!(addr = %listener.local_addr()?, tls = settings.grpc_tls.is_some(), mtls = settings.grpc_client_ca.is_some(), "gRPC listening");
    let service = StreamService::new(
        fleet,
        settings.keepalive,
        shutdown.clone(),
        auth,
        settings.max_large_pushes,
    );
    let svc = DeltaServer::new(service);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true);
    if let Some((cert, key)) = &settings.grpc_tls {
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &settings.grpc_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls).context("gRPC TLS")?;
    } else if settings.grpc_client_ca.is_some() {
        anyhow::bail!("--grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = builder.add_service(svc);
    Ok(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, wait(shutdown))
            .await
            .context("gRPC server")
    }))
}

async fn api_server(
    settings: &Settings,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(settings.api_addr)
        .await
        .with_context(|| format!("cannot bind the API address {}", settings.api_addr))?;
    tracing::info!(addr = %listener.local_addr()?, tls = settings.api_tls.is_some(), "REST API listening");
    let app = crate::api::router(fleet, settings.health_quorum_percent, settings.node_expiry);
    let Some((cert, key)) = &settings.api_tls else {
        return Ok(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(wait(shutdown))
                .await
                .context("API server")
        }));
    };
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .context("API TLS certificate")?;
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(&read(key)?).context("API TLS key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("API TLS certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let handshake_timeout = settings.api_tls_handshake_timeout;
    Ok(tokio::spawn(serve_tls(
        listener,
        acceptor,
        app,
        handshake_timeout,
        shutdown,
    )))
}

// === the TLS API server ===

/// First pause after a failed `accept()`; doubled per failure up to
/// [`ACCEPT_BACKOFF_MAX`], reset by the next success.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long in-flight API requests may take to finish on shutdown.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the REST API over TLS until `shutdown`, then drains.
///
/// - A failed `accept()` (EMFILE, ENFILE, ECONNABORTED, …) never ends the
///   loop: it is logged, and the loop backs off (10 ms doubling to 1 s) so a
///   process out of file descriptors does not spin; connections already open
///   keep being served meanwhile.
/// - Every connection gets `handshake_timeout` to finish its TLS handshake,
///   or it is closed: a client that connects and says nothing holds no task
///   and no descriptor for long.
/// - On shutdown the listener closes, every connection is told to finish its
///   in-flight requests (hyper-util's `GracefulShutdown`), and the server
///   waits up to [`API_DRAIN_TIMEOUT`] for them.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF_MIN;
                pair
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "REST API accept failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "REST API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout_ms = handshake_timeout.as_millis() as u64, "REST API TLS handshake timed out; closing");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "REST API connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(API_DRAIN_TIMEOUT) => {
            tracing::warn!("REST API connections still open after the drain timeout; closing them");
        }
    }
    Ok(())
}
