//! Who is calling: API callers and proxies on the gRPC streams.
//!
//! Two things live here, both about proving an identity before anything
//! is believed:
//!
//! - [`TokenCache`] — secret → stored [`TokenRecord`], shared by the REST
//!   API's `Caller` extractor and by [`StreamAuth`]. An entry is trusted for
//!   at most [`TOKEN_CACHE_TTL`]; after that the database is asked again, so
//!   a revocation or an expiry written by *any* replica takes effect on
//!   every replica within that bound. A stale entry is used only while the
//!   database is unavailable (reads keep working for known tokens during an
//!   outage, and proxies this replica has seen can reconnect; nothing new
//!   can be revoked then anyway). Once the database failed to answer, it is
//!   not asked again for one TTL, so an outage costs one acquire timeout,
//!   not one per request. Only secrets that
//!   exist in the database are ever cached, so its size is bounded by the
//!   tokens table.
//! - [`StreamAuth`] — decides which node ids a gRPC peer may speak for, in
//!   one of three modes chosen at start:
//!   * client certificate (mTLS, `--grpc-client-ca`): the node id must be
//!     named by the leaf certificate, as a SAN URI
//!     `spiffe://<trust-domain>/node/<ID>` or as a DNS SAN equal to the id
//!     (see [`certificate_node_ids`]); the trust domain is checked when
//!     `--grpc-trust-domain` is given;
//!   * join token (the default without mTLS): gRPC metadata
//!     `authorization: Bearer <secret>` naming a join token. A per-node
//!     token speaks only for its node; a fleet-wide token's holder is
//!     trusted with any node id;
//!   * insecure (`--insecure-streams`): anyone may claim any node id — an
//!     explicit opt-out that the server logs loudly at start.
//!
//! This module does not open streams or record anything about nodes; the
//! stream service calls [`StreamAuth::authenticate`] on each new stream
//! and [`Peer::permits`] on each node id the peer claims (the hello's, and
//! every health report's).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::store::{Store, StoreError, TokenKind, TokenRecord, Unusable, now_ms};

/// How long a cached token lookup is trusted without asking the database:
/// the bound on how long a revoked token keeps working on any replica.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_millis(500);

/// The metadata key (and HTTP header) that carries a secret.
pub const AUTHORIZATION: &str = "authorization";

/// Why a secret was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token")]
    Unknown,
    #[error("token `{name}` is {why}")]
    Unusable { name: String, why: Unusable },
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Entry {
    record: TokenRecord,
    fetched: Instant,
}

/// Secret → token, with a short, bounded lifetime per entry.
pub struct TokenCache {
    store: Store,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// After the database was found unavailable, lookups skip it until this
    /// instant instead of each waiting for the pool's acquire timeout (a
    /// fleet reconnecting during an outage would otherwise queue on it).
    skip_database_until: Mutex<Option<Instant>>,
}

impl TokenCache {
    pub fn new(store: Store) -> TokenCache {
        TokenCache {
            store,
            ttl: TOKEN_CACHE_TTL,
            entries: Mutex::default(),
            skip_database_until: Mutex::default(),
        }
    }

    /// The token `secret` belongs to, if it may be used now (not revoked,
    /// not expired). The kind is the caller's to check.
    pub async fn lookup(&self, secret: &str) -> Result<TokenRecord, TokenError> {
        let hash = sentinel_config::sha256_hex(secret.as_bytes());
        let cached = self.entries.lock().ok().and_then(|e| {
            e.get(&hash)
                .map(|entry| (entry.record.clone(), entry.fetched.elapsed() < self.ttl))
        });
        let database_down = self
            .skip_database_until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| Instant::now() < until);
        let record = match cached {
            Some((record, true)) => record,
            Some((record, false)) if database_down => record,
            None if database_down => {
                return Err(StoreError::Unavailable(
                    "the database did not answer a moment ago".into(),
                )
                .into());
            }
            _ => match self.store.token(&hash).await {
                Ok(Some(record)) => {
                    if let Ok(mut e) = self.entries.lock() {
                        e.insert(
                            hash,
                            Entry {
                                record: record.clone(),
                                fetched: Instant::now(),
                            },
                        );
                    }
                    record
                }
                Ok(None) => {
                    if let Ok(mut e) = self.entries.lock() {
                        e.remove(&hash);
                    }
                    return Err(TokenError::Unknown);
                }
                Err(StoreError::Unavailable(reason)) => {
                    if let Ok(mut until) = self.skip_database_until.lock() {
                        *until = Some(Instant::now() + self.ttl);
                    }
                    match cached {
                        Some((record, _)) => {
                            tracing::debug!(token = %record.name, %reason, "database unavailable; using the last known state of the token");
                            record
                        }
                        None => return Err(StoreError::Unavailable(reason).into()),
                    }
                }
                Err(e) => return Err(e.into()),
            },
        };
        record
            .usable(now_ms())
            .map_err(|why| TokenError::Unusable {
                name: record.name.clone(),
                why,
            })?;
        Ok(record)
    }
}

/// The secret of an `Authorization: Bearer SECRET` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

/// How proxies prove who they are on the gRPC streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAuthMode {
    /// mTLS: the node id must be named by the client certificate.
    ClientCertificate { trust_domain: Option<String> },
    /// A join token in the `authorization` metadata.
    JoinToken,
    /// Nothing is checked (`--insecure-streams`).
    Insecure,
}

/// Authenticates gRPC peers; shared by every stream of one server.
pub struct StreamAuth {
    pub mode: StreamAuthMode,
    tokens: TokenCache,
}

/// An authenticated gRPC peer: the node ids it may speak for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Exactly these node ids (a certificate's names, or a per-node token's
    /// node); `proof` says which, for errors and logs.
    Nodes { ids: Vec<String>, proof: String },
    /// A fleet-wide join token: its holder is trusted with any node id.
    Fleet { token: String },
    /// `--insecure-streams`.
    Anyone,
}

impl Peer {
    /// Whether this peer may speak for `node_id`; PERMISSION_DENIED if not.
    pub fn permits(&self, node_id: &str) -> Result<(), Status> {
        self.check(node_id).map_err(refused)
    }

    fn check(&self, node_id: &str) -> Result<(), Status> {
        match self {
            Peer::Nodes { ids, proof } if !ids.iter().any(|id| id == node_id) => {
                Err(Status::permission_denied(format!(
                    "{proof} does not identify node `{node_id}` (it identifies: {})",
                    if ids.is_empty() {
                        "no node".to_string()
                    } else {
                        ids.join(", ")
                    }
                )))
            }
            _ => Ok(()),
        }
    }
}

impl StreamAuth {
    pub fn new(mode: StreamAuthMode, store: Store) -> StreamAuth {
        StreamAuth {
            mode,
            tokens: TokenCache::new(store),
        }
    }

    /// Who sent `request`: UNAUTHENTICATED without a usable proof,
    /// UNAVAILABLE when a token cannot be checked because the database is
    /// down and the token was never seen.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        self.peer(request).await.map_err(refused)
    }

    async fn peer<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        match &self.mode {
            StreamAuthMode::Insecure => Ok(Peer::Anyone),
            StreamAuthMode::ClientCertificate { trust_domain } => {
                let certs = request.peer_certs().ok_or_else(|| {
                    Status::unauthenticated("a client certificate is required (mTLS)")
                })?;
                let leaf = certs.first().ok_or_else(|| {
                    Status::unauthenticated("a client certificate is required (mTLS)")
                })?;
                let ids = certificate_node_ids(leaf.as_ref(), trust_domain.as_deref())
                    .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
                Ok(Peer::Nodes {
                    ids,
                    proof: "the client certificate".into(),
                })
            }
            StreamAuthMode::JoinToken => {
                let value = request.metadata().get(AUTHORIZATION).ok_or_else(|| {
                    Status::unauthenticated(
                        "missing join token: send gRPC metadata `authorization: Bearer TOKEN` \
                         (sentinel --join-token / SENTINEL_JOIN_TOKEN)",
                    )
                })?;
                let secret = value.to_str().ok().and_then(bearer).ok_or_else(|| {
                    Status::unauthenticated("malformed authorization metadata: want `Bearer TOKEN`")
                })?;
                let record = self.tokens.lookup(secret).await.map_err(|e| match e {
                    TokenError::Unknown => Status::unauthenticated("unknown join token"),
                    TokenError::Unusable { .. } => Status::unauthenticated(format!("join {e}")),
                    TokenError::Store(StoreError::Unavailable(_)) => {
                        Status::unavailable(format!("cannot check the join token: {e}"))
                    }
                    TokenError::Store(e) => Status::internal(e.to_string()),
                })?;
                if record.kind != TokenKind::Join {
                    return Err(Status::unauthenticated(format!(
                        "token `{}` is an API token, not a join token",
                        record.name
                    )));
                }
                Ok(match record.node_id {
                    Some(node) => Peer::Nodes {
                        ids: vec![node],
                        proof: format!("join token `{}`", record.name),
                    },
                    None => Peer::Fleet { token: record.name },
                })
            }
        }
    }
}

/// Counts a refusal by its reason (`sentinel_cp_stream_refusals_total`)
/// and logs it: repeated refusals are a misconfigured proxy or an attempt
/// to impersonate one.
fn refused(status: Status) -> Status {
    let reason = match status.code() {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unavailable => "unavailable",
        _ => "other",
    };
    metrics::counter!("sentinel_cp_stream_refusals_total", "reason" => reason).increment(1);
    tracing::warn!(reason, error = %status.message(), "refused a proxy stream");
    status
}

/// Why a certificate names no node.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot parse it: {0}")]
    Parse(String),
}

/// The node ids a client certificate (DER) names — the naming rule of the
/// gRPC streams under mTLS:
///
/// - every SAN URI `spiffe://<trust-domain>/node/<ID>` names `<ID>` (the
///   trust domain must equal `trust_domain` when one is given, compared
///   case-insensitively as SPIFFE says);
/// - every DNS SAN names the node id equal to it.
///
/// The subject's common name is not used (deprecated for names, and easy
/// to confuse with a display name).
pub fn certificate_node_ids(
    der: &[u8],
    trust_domain: Option<&str>,
) -> Result<Vec<String>, CertificateError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertificateError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError::Parse(e.to_string()))?;
    let mut ids = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::URI(uri) => {
                if let Some(id) = spiffe_node_id(uri, trust_domain) {
                    ids.push(id.to_string());
                }
            }
            GeneralName::DNSName(dns) => ids.push(dns.to_string()),
            _ => {}
        }
    }
    Ok(ids)
}

/// `<ID>` of `spiffe://<trust-domain>/node/<ID>`.
fn spiffe_node_id<'a>(uri: &'a str, trust_domain: Option<&str>) -> Option<&'a str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if trust_domain.is_some_and(|want| !want.eq_ignore_ascii_case(domain)) {
        return None;
    }
    let id = path.strip_prefix("node/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_uris_and_dns_names_name_nodes() {
        let der = cert(vec![
            rcgen::SanType::URI("spiffe://prod.example/node/edge-1".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://prod.example/workload/x".try_into().unwrap()),
            rcgen::SanType::URI("https://example/node/nope".try_into().unwrap()),
            rcgen::SanType::DnsName("edge-2.internal".try_into().unwrap()),
        ]);
        assert_eq!(
            certificate_node_ids(&der, None).unwrap(),
            vec!["edge-1".to_string(), "edge-2.internal".to_string()]
        );
        assert_eq!(
            certificate_node_ids(&der, Some("PROD.example")).unwrap(),
            vec!["edge-1".to_string(), "edge-2.internal".to_string()]
        );
        assert_eq!(
            certificate_node_ids(&der, Some("staging.example")).unwrap(),
            vec!["edge-2.internal".to_string()]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(certificate_node_ids(b"not a certificate", None).is_err());
        assert_eq!(spiffe_node_id("spiffe://td/node/", None), None);
        assert_eq!(spiffe_node_id("spiffe://td/node/a/b", None), None);
        assert_eq!(spiffe_node_id("spiffe://td", None), None);
    }

    #[test]
    fn peers_speak_only_for_their_nodes() {
        let a = Peer::Nodes {
            ids: vec!["a".into()],
            proof: "the client certificate".into(),
        };
        assert!(a.permits("a").is_ok());
        let denied = a.permits("b").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(Peer::Fleet { token: "f".into() }.permits("b").is_ok());
        assert!(Peer::Anyone.permits("b").is_ok());
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
