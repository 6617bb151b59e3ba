//! `discovery "consul"`: the instances of one service from Consul's health
//! endpoint, followed with blocking queries.
//!
//! Each refresh is `GET {address}/v1/health/service/{service}?index=I&wait=Ws`
//! (plus `&passing` with `healthy-only`, `&tag=T`, `&dc=D`). Consul holds the
//! request until the service's index moves past `I` or `wait` expires, so a
//! change arrives as soon as it happens and a quiet service costs one
//! request per `wait`. The rules from Consul's "Blocking Queries" docs:
//!
//! - `X-Consul-Index` of each answer is the next `index`;
//! - the index is reset to 0 when it goes backwards (a Consul restart or a
//!   snapshot restore) or is not greater than zero (then the next query does
//!   not block);
//! - consecutive queries are at least [`MIN_QUERY_GAP`] apart, so an index
//!   that changes all the time cannot make this loop spin;
//! - after a failed query the index is reset to 0 too: the first query to a
//!   Consul that is back must not block on an index it may never reach.
//!
//! `wait` is the block's `refresh-interval-secs` (default 15 s, Consul caps it
//! at 10 min); a request that is not answered within `wait` plus Consul's
//! jitter (wait/16) plus [`REQUEST_SLACK`] is a timeout (an error: stale).
//!
//! Target health comes from each instance's checks: any `critical` check →
//! unhealthy, otherwise healthy (`warning` counts as healthy, as in Consul's
//! DNS interface). With `healthy-only` Consul filters to instances whose
//! checks all pass.
//!
//! The ACL token (`token`, usually `${CONSUL_TOKEN}`, expanded here from the
//! process environment like every other `${VAR}` on the applying side) goes
//! in `X-Consul-Token`. An `https://` address is verified against the system
//! roots or the block's `ca-file`, with rustls on ring.
//!
//! Why the HTTP call is ours and not `rs_consul::Consul::get_service_nodes`:
//! rs-consul 0.15 does do blocking queries (its `QueryOptions` carry `index`
//! and `wait`, and it returns `X-Consul-Index`), but its answer type
//! `ServiceNode` has no `Checks`, so per-instance health cannot be derived
//! when `healthy-only` is off; its request has no `tag` parameter (only a
//! `filter` expression it does not URL-encode); and its client is built with
//! webpki roots only, so a private CA (`ca-file`) would mean assembling its
//! hyper-rustls connector by hand. We use its `Node` and `Service` types for
//! the parts of the answer they describe, and reqwest (already in the
//! workspace, rustls on ring) for the request.

use std::time::Duration;

use sentinel_proto as pb;
use serde::Deserialize;
use tokio::time::Instant;

use crate::runner::{Answer, Source, SourceError};

/// The shortest time between the starts of two consecutive queries.
pub const MIN_QUERY_GAP: Duration = Duration::from_secs(1);
/// `refresh-interval-secs` (the blocking `wait`) when the block has none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);
/// Consul's upper bound for `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Added to wait + wait/16 for the request timeout.
pub const REQUEST_SLACK: Duration = Duration::from_secs(5);

pub struct Consul {
    spec: pb::ConsulDiscovery,
    client: Option<reqwest::Client>,
    index: u64,
    wait: Duration,
    min_gap: Duration,
    last_start: Option<Instant>,
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: rs_consul::Node,
    service: rs_consul::Service,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(default)]
    status: String,
}

impl Consul {
    pub fn new(spec: pb::ConsulDiscovery) -> Consul {
        let wait = match spec.refresh_interval_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(ms).min(MAX_WAIT),
        };
        Consul {
            spec,
            client: None,
            index: 0,
            wait,
            min_gap: MIN_QUERY_GAP,
            last_start: None,
        }
    }

    /// The blocking index the next query will send (for tests and status).
    pub fn index(&self) -> u64 {
        self.index
    }

    fn client(&mut self) -> Result<reqwest::Client, SourceError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = build_client(&self.spec.ca_file)?;
        self.client = Some(c.clone());
        Ok(c)
    }

    fn url(&self) -> String {
        let base = if self.spec.address.contains("://") {
            self.spec.address.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", self.spec.address)
        };
        let mut url = format!(
            "{base}/v1/health/service/{}?index={}&wait={}s",
            encode(&self.spec.service),
            self.index,
            self.wait.as_secs().max(1)
        );
        if self.spec.healthy_only {
            url.push_str("&passing");
        }
        if !self.spec.tag.is_empty() {
            url.push_str("&tag=");
            url.push_str(&encode(&self.spec.tag));
        }
        if !self.spec.datacenter.is_empty() {
            url.push_str("&dc=");
            url.push_str(&encode(&self.spec.datacenter));
        }
        url
    }

    async fn query(&mut self) -> Result<Answer, SourceError> {
        let client = self.client()?;
        let token = if self.spec.token.is_empty() {
            String::new()
        } else {
            sentinel_config::env::expand_from_process(&self.spec.token)
                .map_err(|e| SourceError(format!("consul token: {e}")))?
        };
        let timeout = self.wait + self.wait / 16 + REQUEST_SLACK;
        let url = self.url();
        let mut req = client.get(&url).timeout(timeout);
        if !token.is_empty() {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(|e| {
            SourceError(format!("consul {}: {}", self.spec.address, error_chain(&e)))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(SourceError(format!(
                "consul {} answered {status}: {}",
                self.spec.address,
                body.trim()
            )));
        }
        let new_index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let entries: Vec<Entry> = resp.json().await.map_err(|e| {
            SourceError(format!(
                "consul {}: bad health answer: {}",
                self.spec.address,
                error_chain(&e)
            ))
        })?;
        self.index = next_index(self.index, new_index);
        let targets = entries.into_iter().map(to_target).collect();
        Ok(Answer {
            targets,
            next_in: Duration::ZERO,
        })
    }
}

impl Source for Consul {
    async fn next(&mut self) -> Result<Answer, SourceError> {
        // Rate limit: consecutive queries start at least `min_gap` apart.
        if let Some(last) = self.last_start {
            tokio::time::sleep_until(last + self.min_gap).await;
        }
        self.last_start = Some(Instant::now());
        let r = self.query().await;
        if r.is_err() {
            // After an error, start over with a non-blocking query.
            self.index = 0;
        }
        r
    }
}

/// The index for the next query, per Consul's reset rules.
pub fn next_index(previous: u64, answered: u64) -> u64 {
    if answered == 0 || answered < previous {
        0
    } else {
        answered
    }
}

fn to_target(e: Entry) -> pb::Target {
    let host = if e.service.address.is_empty() {
        e.node.address
    } else {
        e.service.address
    };
    let address = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, e.service.port).to_string(),
        Err(_) => format!("{host}:{}", e.service.port),
    };
    let critical = e
        .checks
        .iter()
        .any(|c| c.status == "critical" || c.status == "maintenance");
    pb::Target {
        address,
        weight: 1,
        health: if critical {
            pb::TargetHealth::Unhealthy as i32
        } else {
            pb::TargetHealth::Healthy as i32
        },
        zone: String::new(),
    }
}

fn build_client(ca_file: &str) -> Result<reqwest::Client, SourceError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    } else {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| SourceError(format!("consul ca-file `{ca_file}`: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| SourceError(format!("consul ca-file `{ca_file}`: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SourceError(format!("consul ca-file `{ca_file}`: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| SourceError(format!("HTTP client: {}", error_chain(&e))))
}

/// Percent-encodes a query or path component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_resets_when_it_goes_backwards_or_is_zero() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(9, 3), 0);
        assert_eq!(next_index(9, 0), 0);
    }

    #[test]
    fn url_carries_index_wait_and_filters() {
        let mut c = Consul::new(pb::ConsulDiscovery {
            address: "127.0.0.1:8500".into(),
            service: "web api".into(),
            datacenter: "dc1".into(),
            tag: "v1".into(),
            healthy_only: true,
            refresh_interval_ms: 20_000,
            ..Default::default()
        });
        c.index = 42;
        assert_eq!(
            c.url(),
            "http://127.0.0.1:8500/v1/health/service/web%20api?index=42&wait=20s&passing&tag=v1&dc=dc1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_queries_are_rate_limited() {
        // Nothing listens on port 9 of 127.0.0.1 (discard, not served): each
        // query fails fast; the starts must still be MIN_QUERY_GAP apart.
        let mut c = Consul::new(pb::ConsulDiscovery {
            address: "127.0.0.1:9".into(),
            service: "api".into(),
            ..Default::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            let _ = c.next().await;
        }
        assert!(Instant::now() - t0 >= MIN_QUERY_GAP * 2);
    }
}
