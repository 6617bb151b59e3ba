//! `discovery "dns"`: A, AAAA or SRV records of one name, asked with
//! `hickory-resolver`.
//!
//! Each refresh asks the resolver (the system's from `/etc/resolv.conf`, or
//! the block's `resolver "host:port"`) directly: the resolver's own cache is
//! off, because the runner already keeps the last answer and the TTL must
//! come from the server. The next refresh is due after the smallest TTL of
//! the answer, clamped to [`TTL_FLOOR`] below and the block's
//! `refresh-interval-secs` above.
//!
//! - A / AAAA: one target per address, `ip:port` with the block's `port`.
//! - SRV: the records of the lowest priority value (the ones RFC 2782 says a
//!   client must try first); each record's target name is resolved to its
//!   addresses (A and AAAA), the record gives the port and the weight (a
//!   weight of 0 becomes 1: SRV weight 0 means "no preference", not "drain").
//!
//! "No such name" and "no records" are answers (an empty set, held by the
//! runner's grace period); timeouts and server failures are errors (stale).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use sentinel_proto as pb;

use crate::runner::{Answer, Source, SourceError};

/// The shortest delay between two refreshes, whatever the TTL says (a TTL of
/// 0 must not turn into a busy loop).
pub const TTL_FLOOR: Duration = Duration::from_secs(1);
/// `refresh-interval-secs` when the block has none.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// How long one refresh (all its queries) may take before it is an error.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Dns {
    spec: pb::DnsDiscovery,
    resolver: Option<TokioResolver>,
}

impl Dns {
    pub fn new(spec: pb::DnsDiscovery) -> Dns {
        Dns {
            spec,
            resolver: None,
        }
    }

    fn refresh_interval(&self) -> Duration {
        match self.spec.refresh_interval_ms {
            0 => DEFAULT_REFRESH,
            ms => Duration::from_millis(ms),
        }
    }

    fn resolver(&mut self) -> Result<&TokioResolver, SourceError> {
        if self.resolver.is_none() {
            self.resolver = Some(build_resolver(&self.spec.resolver)?);
        }
        self.resolver
            .as_ref()
            .ok_or_else(|| SourceError::new("no resolver"))
    }

    async fn ask(&mut self) -> Result<Answer, SourceError> {
        let ceiling = self.refresh_interval();
        let hostname = self.spec.hostname.clone();
        let port = u16::try_from(self.spec.port).unwrap_or(0);
        let kind =
            pb::DnsRecordType::try_from(self.spec.record_type).unwrap_or(pb::DnsRecordType::A);
        let resolver = self.resolver()?.clone();
        let (targets, ttl) = match kind {
            pb::DnsRecordType::Srv => srv(&resolver, &hostname).await?,
            pb::DnsRecordType::Aaaa => {
                address(&resolver, &hostname, RecordType::AAAA, port).await?
            }
            pb::DnsRecordType::A | pb::DnsRecordType::Unspecified => {
                address(&resolver, &hostname, RecordType::A, port).await?
            }
        };
        Ok(Answer {
            targets,
            next_in: next_refresh(ttl, ceiling),
        })
    }
}

impl Source for Dns {
    async fn next(&mut self) -> Result<Answer, SourceError> {
        match tokio::time::timeout(QUERY_TIMEOUT, self.ask()).await {
            Ok(r) => r,
            Err(_) => Err(SourceError(format!(
                "DNS query for `{}` timed out after {} s",
                self.spec.hostname,
                QUERY_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// min(TTL, ceiling), never below [`TTL_FLOOR`]; no TTL (no records) = the
/// ceiling.
pub fn next_refresh(ttl: Option<Duration>, ceiling: Duration) -> Duration {
    let ceiling = ceiling.max(TTL_FLOOR);
    ttl.map_or(ceiling, |t| t.clamp(TTL_FLOOR, ceiling))
}

fn build_resolver(explicit: &str) -> Result<TokioResolver, SourceError> {
    let mut builder = if explicit.is_empty() {
        Resolver::builder_tokio()
            .map_err(|e| SourceError(format!("cannot read the system resolver config: {e}")))?
    } else {
        let addr: SocketAddr = explicit.parse().map_err(|_| {
            SourceError(format!(
                "resolver `{explicit}` is not an IP address and port"
            ))
        })?;
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in &mut ns.connections {
            c.port = addr.port();
        }
        let builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        builder.with_options(opts)
    };
    let opts = builder.options_mut();
    // The runner is the cache; TTLs must come from the server.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder
        .build()
        .map_err(|e| SourceError(format!("cannot build the DNS resolver: {e}")))
}

fn no_records(e: &NetError) -> bool {
    e.is_no_records_found()
}

fn target(addr: SocketAddr, weight: u32) -> pb::Target {
    pb::Target {
        address: addr.to_string(),
        weight,
        health: pb::TargetHealth::Unknown as i32,
        zone: String::new(),
    }
}

fn min_ttl(acc: Option<Duration>, ttl: u32) -> Option<Duration> {
    let t = Duration::from_secs(u64::from(ttl));
    Some(acc.map_or(t, |a| a.min(t)))
}

/// A or AAAA records of `name` as `ip:port` targets, and their smallest TTL.
async fn address(
    resolver: &TokioResolver,
    name: &str,
    kind: RecordType,
    port: u16,
) -> Result<(Vec<pb::Target>, Option<Duration>), SourceError> {
    let (ips, ttl) = ips(resolver, name, kind).await?;
    let targets = ips
        .into_iter()
        .map(|ip| target(SocketAddr::new(ip, port), 1))
        .collect();
    Ok((targets, ttl))
}

async fn ips(
    resolver: &TokioResolver,
    name: &str,
    kind: RecordType,
) -> Result<(Vec<IpAddr>, Option<Duration>), SourceError> {
    let lookup = match resolver.lookup(name, kind).await {
        Ok(l) => l,
        Err(e) if no_records(&e) => return Ok((Vec::new(), None)),
        Err(e) => return Err(SourceError(format!("DNS {kind} `{name}`: {e}"))),
    };
    let mut ttl = None;
    let mut out = Vec::new();
    for r in lookup.answers() {
        let ip = match &r.data {
            RData::A(a) if kind == RecordType::A => IpAddr::V4(a.0),
            RData::AAAA(a) if kind == RecordType::AAAA => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = min_ttl(ttl, r.ttl);
        out.push(ip);
    }
    Ok((out, ttl))
}

/// SRV records of `name`: the lowest priority group, each target name
/// resolved to its addresses.
async fn srv(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<pb::Target>, Option<Duration>), SourceError> {
    let lookup = match resolver.lookup(name, RecordType::SRV).await {
        Ok(l) => l,
        Err(e) if no_records(&e) => return Ok((Vec::new(), None)),
        Err(e) => return Err(SourceError(format!("DNS SRV `{name}`: {e}"))),
    };
    let mut ttl = None;
    let mut records = Vec::new();
    for r in lookup.answers() {
        if let RData::SRV(s) = &r.data {
            ttl = min_ttl(ttl, r.ttl);
            records.push(s.clone());
        }
    }
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok((Vec::new(), ttl));
    };
    let mut targets = Vec::new();
    for s in records.iter().filter(|s| s.priority == best) {
        let host = s.target.to_ascii();
        let weight = u32::from(s.weight.max(1));
        // An SRV target may itself be an address literal (some servers
        // answer that way); otherwise resolve it.
        if let Ok(ip) = host.trim_end_matches('.').parse::<IpAddr>() {
            targets.push(target(SocketAddr::new(ip, s.port), weight));
            continue;
        }
        // A target name usually has addresses of one family only, and some
        // servers refuse (rather than answer empty) the other: one family
        // answering is enough; both failing is an error.
        let v4 = ips(resolver, &host, RecordType::A).await;
        let v6 = ips(resolver, &host, RecordType::AAAA).await;
        let found = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (Ok(a), Err(_)) | (Err(_), Ok(a)) => vec![a],
            (Ok(a), Ok(b)) => vec![a, b],
        };
        for (addrs, t) in found {
            if let Some(t) = t {
                ttl = min_ttl(ttl, t.as_secs() as u32);
            }
            targets.extend(
                addrs
                    .into_iter()
                    .map(|ip| target(SocketAddr::new(ip, s.port), weight)),
            );
        }
    }
    Ok((targets, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_between_floor_and_interval() {
        let interval = Duration::from_secs(30);
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(next_refresh(s(5), interval), Duration::from_secs(5));
        assert_eq!(next_refresh(s(300), interval), interval);
        assert_eq!(next_refresh(s(0), interval), TTL_FLOOR);
        assert_eq!(next_refresh(None, interval), interval);
    }
}
