//! TLS from the proxy to an upstream's targets (`upstream { tls { … } }`).
//!
//! Owns two things:
//!
//! - [`TlsClient`]: one rustls `ClientConfig` per upstream, built when the
//!   runtime is built (every apply, every SIGHUP) from the resolved file
//!   paths: trusted roots (`ca-file`, or the host's system roots through
//!   `rustls-native-certs`), an optional client certificate (mTLS), ALPN, and
//!   the server name to present. A bad file fails the runtime build, so the
//!   proxy NACKs and keeps its last good config. Once a client is in use, a
//!   small task polls the files' modification times every [`RELOAD_POLL`]
//!   and swaps in a fresh `ClientConfig` when they change, so a rotated
//!   certificate is used by new connections without an apply; [`TlsClient::fingerprint`] (a hash of the file contents) is part
//!   of the upstream's reuse key, so an apply after a rotation also rebuilds.
//! - [`Connector`]: the hyper-util connector of every upstream client. It
//!   opens TCP with `HttpConnector` and, for TLS upstreams, wraps the stream
//!   with tokio-rustls (bounded by the connect timeout). The negotiated ALPN
//!   decides the HTTP version: [`UpstreamStream`] reports `h2` to hyper-util,
//!   which then speaks HTTP/2 on that connection, else HTTP/1.1.
//!
//! System roots come from `rustls-native-certs` (the OS trust store, kept by
//! the rustls project) rather than `webpki-roots` (Mozilla's list compiled
//! into the binary): internal backends are usually signed by a private CA
//! that operators add to the host's store, and the store is updated by the
//! OS without rebuilding the proxy.
//!
//! It does not pick targets, pool connections (hyper-util does), or map
//! errors to statuses (a handshake failure is a connect error, which
//! `error.rs` turns into 502). Handshake failures are logged here at warn —
//! upstream, target and a reason an operator can act on (unknown CA, name
//! mismatch, client certificate refused) — at most once a second per
//! upstream, so a broken backend cannot flood the log.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sentinel_proto as pb;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::clock::now_ms;
use crate::tls::provider;

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(10);

/// The TLS side of one upstream: its current `ClientConfig` and what it was
/// built from.
pub struct TlsClient {
    upstream: String,
    /// Resolved file paths and options.
    settings: pb::UpstreamTls,
    /// `sni` when set; else the target's host is used per connection.
    server_name: Option<ServerName<'static>>,
    config: ArcSwap<rustls::ClientConfig>,
    fingerprint: u64,
    /// Files and the modification times the current config was read at.
    stamps: std::sync::Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
    throttle: Arc<Throttle>,
    reloads: AtomicU64,
    watching: AtomicBool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("upstream", &self.upstream)
            .field("sni", &self.settings.sni)
            .finish()
    }
}

/// Rate limit for warnings on the connect path.
#[derive(Debug, Default)]
struct Throttle {
    last_ms: AtomicU64,
}

impl Throttle {
    /// True at most once a second.
    fn allow(&self) -> bool {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// What one read of the files produced.
struct Material {
    config: rustls::ClientConfig,
    fingerprint: u64,
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
}

impl TlsClient {
    /// Reads the files of `tls` (paths resolved with `resolve`) and builds
    /// the client config. Errors name the file and what is wrong with it.
    pub fn build(
        upstream: &str,
        tls: &pb::UpstreamTls,
        resolve: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Arc<TlsClient>, String> {
        let settings = pb::UpstreamTls {
            sni: resolve(&tls.sni)?,
            ca_file: resolve(&tls.ca_file)?,
            client_cert_file: resolve(&tls.client_cert_file)?,
            client_key_file: resolve(&tls.client_key_file)?,
            insecure_skip_verify: tls.insecure_skip_verify,
            alpn: tls.alpn.clone(),
        };
        let server_name = if settings.sni.is_empty() {
            None
        } else {
            Some(
                ServerName::try_from(settings.sni.clone())
                    .map_err(|e| format!("tls.sni `{}`: {e}", settings.sni))?,
            )
        };
        let throttle = Arc::new(Throttle::default());
        let material = load(upstream, &settings, &throttle)?;
        if settings.insecure_skip_verify {
            tracing::warn!(
                upstream = %upstream,
                "INSECURE: tls.insecure-skip-verify is on: the certificates of this upstream's \
                 targets are NOT verified; traffic is encrypted but anyone on the path can \
                 impersonate them"
            );
        }
        let client = Arc::new(TlsClient {
            upstream: upstream.to_string(),
            settings,
            server_name,
            config: ArcSwap::from_pointee(material.config),
            fingerprint: material.fingerprint,
            stamps: std::sync::Mutex::new(material.stamps),
            throttle,
            reloads: AtomicU64::new(0),
            watching: AtomicBool::new(false),
        });
        Ok(client)
    }

    /// Starts the file poll (once; the first connector using this client
    /// calls it). Clients built only to compare fingerprints never poll.
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(watch(Arc::downgrade(self)));
        }
    }

    /// A hash of the settings and file contents this client was built from:
    /// equal fingerprints mean the same certificates.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// How many times a file change swapped the config in place.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the files if their modification times changed; on success
    /// new connections use the new config. Returns whether it reloaded.
    fn reload_if_changed(&self) -> bool {
        let changed = match self.stamps.lock() {
            Ok(stamps) => stamps.iter().any(|(path, at)| modified(path) != *at),
            Err(_) => false,
        };
        if !changed {
            return false;
        }
        match load(&self.upstream, &self.settings, &self.throttle) {
            Ok(m) => {
                self.config.store(Arc::new(m.config));
                if let Ok(mut stamps) = self.stamps.lock() {
                    *stamps = m.stamps;
                }
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(upstream = %self.upstream, "upstream TLS files changed; new connections use them");
                true
            }
            Err(e) => {
                // Keep the old config; try again when the files change again.
                if let Ok(mut stamps) = self.stamps.lock() {
                    for (path, at) in stamps.iter_mut() {
                        *at = modified(path);
                    }
                }
                tracing::warn!(upstream = %self.upstream, error = %e, "upstream TLS files changed but cannot be used; keeping the previous ones");
                false
            }
        }
    }

    /// The name presented and verified for a connection to `uri`.
    fn server_name(&self, uri: &Uri) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("target host `{host}` is not a valid TLS server name: {e}"))
    }
}

/// Polls the files of a client until the client is dropped.
async fn watch(client: Weak<TlsClient>) {
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let Some(c) = client.upgrade() else { return };
        // File reads are small, but still keep them off the async workers.
        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed()).await;
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read tls.{what} {path}: {e}"))
}

fn certs(pem: &[u8], path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in tls.{what} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in tls.{what} {path}"));
    }
    Ok(certs)
}

/// The host's trust store, read once per process.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system root certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system root certificates found; set tls.ca-file on the upstream".into(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Reads every file and builds the `ClientConfig`.
fn load(upstream: &str, s: &pb::UpstreamTls, throttle: &Arc<Throttle>) -> Result<Material, String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut hasher);
    let mut stamps = Vec::new();
    let mut stamp = |path: &str| stamps.push((PathBuf::from(path), modified(&PathBuf::from(path))));

    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(Arc::clone(&provider))))
    } else {
        let roots = if s.ca_file.is_empty() {
            system_roots()?
        } else {
            stamp(&s.ca_file);
            let pem = read(&s.ca_file, "ca-file")?;
            pem.hash(&mut hasher);
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(&pem, &s.ca_file, "ca-file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in tls.ca-file {}: {e}", s.ca_file))?;
            }
            Arc::new(roots)
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| format!("tls.ca-file {}: {e}", s.ca_file))?;
        builder.with_webpki_verifier(verifier)
    };
    let mut config = if s.client_cert_file.is_empty() {
        builder.with_client_cert_resolver(Arc::new(NoClientCert {
            upstream: upstream.to_string(),
            throttle: Arc::clone(throttle),
        }))
    } else {
        stamp(&s.client_cert_file);
        stamp(&s.client_key_file);
        let pem = read(&s.client_cert_file, "client-cert")?;
        pem.hash(&mut hasher);
        let chain = certs(&pem, &s.client_cert_file, "client-cert")?;
        let key_pem = read(&s.client_key_file, "client-key")?;
        key_pem.hash(&mut hasher);
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "no usable private key in tls.client-key {}: {e}",
                s.client_key_file
            )
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            format!(
                "tls.client-cert {} and tls.client-key {} do not match: {e}",
                s.client_cert_file, s.client_key_file
            )
        })?
    };
    config.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Material {
        config,
        fingerprint: hasher.finish(),
        stamps,
    })
}

// === impl NoClientCert ===

/// The client-certificate "resolver" of upstreams without `client-cert`:
/// presents none, and says so in the log when a target asks for one — with
/// TLS 1.3 the target's refusal only arrives after the handshake, as a
/// failed request, so this line is where the operator learns why.
#[derive(Debug)]
struct NoClientCert {
    upstream: String,
    throttle: Arc<Throttle>,
}

impl ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if self.throttle.allow() {
            tracing::warn!(
                upstream = %self.upstream,
                reason = "the target requested a client certificate but none is configured (tls.client-cert / tls.client-key)",
                "upstream TLS: no client certificate to present"
            );
        }
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

// === impl SkipVerify ===

/// `insecure-skip-verify`: any certificate is accepted, but handshake
/// signatures are still checked (the connection is encrypted to whoever
/// holds the presented key).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// === impl Connector ===

/// Connects to a target: TCP, then TLS when the upstream has a `tls` block.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<TlsClient>>,
    handshake_timeout: Duration,
}

impl Connector {
    pub fn new(
        http: HttpConnector,
        tls: Option<Arc<TlsClient>>,
        handshake_timeout: Duration,
    ) -> Self {
        let mut http = http;
        // The scheme says nothing here: TLS is the upstream's setting.
        http.enforce_http(false);
        if let Some(tls) = &tls {
            tls.watch();
        }
        Self {
            http,
            tls,
            handshake_timeout,
        }
    }
}

/// Why a TLS connection to a target failed, in words an operator can act
/// on. This is the connect error's text, so it also reaches the debug log
/// of the failed request.
#[derive(Debug, thiserror::Error)]
#[error("TLS to {target} (upstream `{upstream}`) failed: {reason}")]
pub struct TlsConnectError {
    pub upstream: String,
    pub target: String,
    pub reason: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.http.call(uri.clone());
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = tcp.await.map_err(BoxError::from)?;
            let Some(tls) = tls else {
                return Ok(UpstreamStream::Plain(tcp));
            };
            let target = uri.authority().map_or_else(String::new, |a| a.to_string());
            let fail = |reason: String| {
                if tls.throttle.allow() {
                    tracing::warn!(upstream = %tls.upstream, target = %target, reason = %reason, "upstream TLS handshake failed");
                }
                BoxError::from(TlsConnectError {
                    upstream: tls.upstream.clone(),
                    target: target.clone(),
                    reason,
                })
            };
            let name = tls.server_name(&uri).map_err(fail)?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.load_full());
            let shown = name.to_str().into_owned();
            let handshake = connector.connect(name, tcp.into_inner());
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(TokioIo::new(stream)))),
                Ok(Err(e)) => Err(fail(describe(&e, &shown))),
                Err(_) => Err(fail(format!(
                    "handshake did not finish within {} ms",
                    timeout.as_millis()
                ))),
            }
        })
    }
}

/// Turns a handshake error into a reason an operator can act on.
fn describe(e: &io::Error, server_name: &str) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return format!("handshake: {e}");
    };
    match tls {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown CA: the target's certificate is not signed \
                by a trusted CA (tls.ca-file, or the system roots)"
                    .to_string()
            }
            CertificateError::NotValidForName => format!(
                "name mismatch: the target's certificate is not valid for `{server_name}` \
                 (set tls.sni to a name it holds)"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "name mismatch: the target's certificate is not valid for `{server_name}`; \
                 it holds {} (set tls.sni to one of them)",
                presented
                    .iter()
                    .map(|n| plain_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the target's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the target's certificate is not valid yet".to_string()
            }
            other => format!("invalid certificate: {other:?}"),
        },
        TlsError::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            let hint = match alert {
                A::CertificateRequired | A::HandshakeFailure | A::BadCertificate => {
                    "; it may require a client certificate (tls.client-cert / tls.client-key)"
                }
                A::UnknownCA => "; it does not trust our client certificate",
                A::NoApplicationProtocol => "; no protocol in tls.alpn is acceptable to it",
                _ => "",
            };
            format!("the target refused the handshake (alert {alert:?}){hint}")
        }
        TlsError::InvalidMessage(_) => {
            format!("{tls}: is the target speaking TLS on this port?")
        }
        other => other.to_string(),
    }
}

/// `DnsName("api.internal")` (how rustls lists presented names) as
/// `api.internal`.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once("(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .unwrap_or(presented)
}

// === impl UpstreamStream ===

/// A connection to a target, plaintext or TLS.
pub enum UpstreamStream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for UpstreamStream {
    /// The one place the HTTP version to a target is chosen: HTTP/2 when
    /// ALPN negotiated `h2`, else HTTP/1.1.
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(s) => s.connected(),
            UpstreamStream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_files(dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    fn settings(ca: &str) -> pb::UpstreamTls {
        pb::UpstreamTls {
            ca_file: ca.to_string(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn presented_names_are_shown_plainly() {
        assert_eq!(plain_name("DnsName(\"api.internal\")"), "api.internal");
        assert_eq!(plain_name("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn missing_and_empty_files_are_build_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = |s: &str| Ok(s.to_string());
        let e = TlsClient::build("api", &settings("/nonexistent/ca.pem"), &ok).unwrap_err();
        assert!(e.contains("tls.ca-file /nonexistent/ca.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = TlsClient::build("api", &settings(&empty.display().to_string()), &ok).unwrap_err();
        assert!(e.contains("no certificate found"), "{e}");
        let (cert, _) = pem_files(dir.path(), "a.test");
        let (_, other_key) = pem_files(dir.path(), "b.test");
        let mut mtls = settings(&cert);
        mtls.client_cert_file = cert.clone();
        mtls.client_key_file = other_key;
        let e = TlsClient::build("api", &mtls, &ok).unwrap_err();
        assert!(e.contains("do not match"), "{e}");
    }

    #[test]
    fn a_changed_ca_file_is_picked_up_by_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = pem_files(dir.path(), "a.test");
        let client = TlsClient::build("api", &settings(&ca), &|s| Ok(s.to_string())).unwrap();
        let before = client.config.load_full();
        assert!(!client.reload_if_changed(), "nothing changed yet");
        // A new file with a different modification time.
        let (other, _) = pem_files(dir.path(), "b.test");
        std::fs::rename(&other, &ca).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&ca)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert!(client.reload_if_changed());
        assert_eq!(client.reloads(), 1);
        assert!(!Arc::ptr_eq(&before, &client.config.load_full()));
        // A broken file keeps the last good config.
        std::fs::write(&ca, "not a certificate").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&ca)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        let good = client.config.load_full();
        assert!(!client.reload_if_changed());
        assert!(Arc::ptr_eq(&good, &client.config.load_full()));
    }
}
