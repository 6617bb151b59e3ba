//! Wiring: open the store, bootstrap the admin token, load the active
//! configuration, serve gRPC (optionally TLS / mTLS) and the REST API
//! (optionally TLS), and shut down cleanly on SIGTERM: sessions end so
//! proxies reconnect elsewhere, in-flight API requests finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sentinel_proto::config_stream_server::ConfigStreamServer;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

use crate::fleet::Fleet;
use crate::store::{Role, Store};
use crate::stream::StreamService;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub grpc_tls: Option<(PathBuf, PathBuf)>,
    pub grpc_client_ca: Option<PathBuf>,
    pub api_tls: Option<(PathBuf, PathBuf)>,
    pub region: String,
    pub replica: String,
    pub bootstrap_token: Option<String>,
    pub keepalive: Duration,
    pub poll: Duration,
    pub health_quorum_percent: u32,
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
        let hash = sentinel_config::sha256_hex(secret.as_bytes());
        if store.ensure_token("bootstrap", &hash, Role::Admin).await? {
            tracing::info!("created the bootstrap admin token");
        }
    }
    let fleet = Fleet::new(store, settings.replica.clone(), settings.region.clone());
    if let Err(e) = fleet.refresh().await {
        tracing::warn!(error = %e, "cannot load the active configuration yet");
    }
    crate::telemetry::metrics();
    crate::telemetry::spawn_upkeep();
    crate::notify::spawn(Arc::clone(&fleet), settings.poll);

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

    let grpc = grpc_server(&settings, Arc::clone(&fleet), shutdown.clone()).await?;
    let api = api_server(&settings, Arc::clone(&fleet), shutdown.clone()).await?;
    let (g, a) = tokio::join!(grpc, api);
    g??;
    a??;
    Ok(())
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
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot bind the gRPC address {}", settings.grpc_addr))?;
    tracing::info!(addr = %listener.local_addr()?, tls = settings.grpc_tls.is_some(), mtls = settings.grpc_client_ca.is_some(), "gRPC listening");
    let service = StreamService {
        fleet,
        keepalive: settings.keepalive,
        shutdown: shutdown.clone(),
    };
    let svc = ConfigStreamServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(16 * 1024 * 1024);
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
    let app = crate::api::router(fleet, settings.health_quorum_percent);
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
    Ok(tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = shutdown.changed() => return Ok(()),
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    }))
}
