//! TLS termination: a rustls `ServerConfig` from a listener's `tls` block.
//! Files are read when the runtime is built, so a missing or bad certificate
//! fails the build (and NACKs) instead of failing handshakes later.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sentinel_proto as pb;

/// The one crypto provider of the tree.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn server_config(
    tls: &pb::ListenerTls,
    resolve: &dyn Fn(&str) -> Result<String, String>,
) -> Result<rustls::ServerConfig, String> {
    let cert_file = resolve(&tls.cert_file)?;
    let key_file = resolve(&tls.key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .map_err(|e| format!("cannot read certificate file {cert_file}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert_file}"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("cannot read private key {key_file}: {e}"))?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls.min_version == pb::TlsVersion::TlsVersion13 as i32 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if tls.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let ca_file = resolve(&tls.client_ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca_file)
            .map_err(|e| format!("cannot read client CA {ca_file}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("bad client CA in {ca_file}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad client CA in {ca_file}: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("client CA {ca_file}: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}
