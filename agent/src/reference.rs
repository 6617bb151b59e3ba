//! The reference agents: small, complete, and the examples of docs/agents.md.
//!
//! - [`TokenAuth`]: bearer tokens or HMAC-signed headers → allow (with
//!   `X-User` set for the upstream) or 401.
//! - [`Denylist`]: client IPs/CIDRs and path patterns → 403.
//! - [`Echo`]: logs every event it gets and allows (for debugging).
//! - [`AllowAll`]: allows everything and does nothing else (benchmarks).
//!
//! None of them keeps per-request state; configuration is fixed at start.

use std::collections::HashMap;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::decision::{self, DecisionExt};
use crate::{Agent, RequestDecision, RequestEvent, ResponseDecision, ResponseEvent, header};

// === impl TokenAuth ===

/// Bearer tokens and HMAC-signed requests.
///
/// A request is allowed when it carries `Authorization: Bearer TOKEN` with a
/// known token, or the three signature headers: `X-Sentinel-User`,
/// `X-Sentinel-Timestamp` (Unix seconds, within `max_skew_secs` of now) and
/// `X-Sentinel-Signature`, the lower-case hex HMAC-SHA256 under the shared
/// secret of `"{user}\n{timestamp}\n{METHOD}\n{path}"` (path with its
/// `?query` when there is one). The upstream gets `X-User: USER` (whatever
/// the client sent in `X-User` is replaced); anything else is answered 401.
#[derive(Debug, Default, Clone)]
pub struct TokenAuth {
    /// token → user.
    pub tokens: HashMap<String, String>,
    pub hmac_secret: Option<Vec<u8>>,
    pub max_skew_secs: u64,
}

impl TokenAuth {
    /// Parses `USER=TOKEN` (or `USER:TOKEN`) pairs, one per flag or line.
    pub fn add_token(&mut self, pair: &str) -> Result<(), String> {
        let (user, token) = pair
            .split_once('=')
            .or_else(|| pair.split_once(':'))
            .ok_or_else(|| format!("`{pair}` is not USER=TOKEN"))?;
        let (user, token) = (user.trim(), token.trim());
        if user.is_empty() || token.is_empty() {
            return Err(format!("`{pair}` has an empty user or token"));
        }
        self.tokens.insert(token.to_string(), user.to_string());
        Ok(())
    }

    fn user(&self, event: &RequestEvent, now_secs: u64) -> Option<String> {
        if let Some(auth) = header(&event.headers, "authorization")
            && let Some(token) = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
        {
            // Every known token is compared, in constant time each.
            let mut found = None;
            for (known, user) in &self.tokens {
                if constant_time_eq(known.as_bytes(), token.trim().as_bytes()) {
                    found = Some(user.clone());
                }
            }
            return found;
        }
        let secret = self.hmac_secret.as_ref()?;
        let user = header(&event.headers, "x-sentinel-user")?;
        let ts = header(&event.headers, "x-sentinel-timestamp")?;
        let sig = header(&event.headers, "x-sentinel-signature")?;
        let ts_secs: u64 = ts.trim().parse().ok()?;
        if ts_secs.abs_diff(now_secs) > self.max_skew_secs {
            return None;
        }
        let expected = hex::encode(hmac_sha256(
            secret,
            signing_string(user, ts, &event.method, &event.path, &event.query).as_bytes(),
        ));
        constant_time_eq(
            expected.as_bytes(),
            sig.trim().to_ascii_lowercase().as_bytes(),
        )
        .then(|| user.to_string())
    }
}

/// What a client signs for [`TokenAuth`].
pub fn signing_string(
    user: &str,
    timestamp: &str,
    method: &str,
    path: &str,
    query: &str,
) -> String {
    if query.is_empty() {
        format!("{user}\n{timestamp}\n{method}\n{path}")
    } else {
        format!("{user}\n{timestamp}\n{method}\n{path}?{query}")
    }
}

impl Agent for TokenAuth {
    async fn on_request(&self, event: RequestEvent) -> RequestDecision {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.user(&event, now) {
            Some(user) => decision::allow()
                .set_request_header("x-user", &user)
                .metadata("user", &user),
            None => decision::deny_with(
                401,
                vec![
                    decision::header("www-authenticate", "Bearer realm=\"sentinel\""),
                    decision::header("content-type", "text/plain; charset=utf-8"),
                ],
                b"unauthorized\n".to_vec(),
            ),
        }
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// === impl Denylist ===

/// Refuses clients by address and requests by path, with 403.
#[derive(Debug, Default, Clone)]
pub struct Denylist {
    pub networks: Vec<Cidr>,
    /// Path patterns: `*` matches any run of characters (`/admin*`,
    /// `*.php`); without `*` the path must be equal.
    pub paths: Vec<String>,
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

impl Denylist {
    fn denied(&self, event: &RequestEvent) -> Option<&'static str> {
        if let Ok(ip) = event.client_ip.parse::<IpAddr>()
            && self.networks.iter().any(|n| n.contains(ip))
        {
            return Some("client address denied");
        }
        if self.paths.iter().any(|p| glob_match(p, &event.path)) {
            return Some("path denied");
        }
        None
    }
}

impl Agent for Denylist {
    async fn on_request(&self, event: RequestEvent) -> RequestDecision {
        match self.denied(&event) {
            Some(why) => {
                decision::deny(403, format!("forbidden: {why}\n")).metadata("denylist", why)
            }
            None => decision::allow(),
        }
    }
}

// === impl Echo ===

/// Logs every event (one line each, at info) and allows.
#[derive(Debug, Default, Clone)]
pub struct Echo {
    /// Also ask for, and log, the response head.
    pub inspect_response: bool,
}

impl Agent for Echo {
    async fn on_request(&self, event: RequestEvent) -> RequestDecision {
        let headers: Vec<String> = event
            .headers
            .iter()
            .map(|h| format!("{}: {}", h.name, String::from_utf8_lossy(&h.value)))
            .collect();
        tracing::info!(
            event = "request",
            request_id = %event.request_id,
            route = %event.route,
            agent = %event.agent,
            method = %event.method,
            authority = %event.authority,
            path = %event.path,
            query = %event.query,
            client = %format!("{}:{}", event.client_ip, event.client_port),
            tls = event.tls.is_some_and(|t| t.secure),
            traceparent = %event.trace.as_ref().map_or("", |t| t.traceparent.as_str()),
            body_bytes = event.body.len(),
            body_truncated = event.body_truncated,
            metadata = ?event.metadata,
            headers = ?headers,
            "event"
        );
        let d = decision::allow();
        if self.inspect_response {
            d.inspect_response()
        } else {
            d
        }
    }

    async fn on_response(&self, event: ResponseEvent) -> ResponseDecision {
        tracing::info!(
            event = "response",
            request_id = %event.request_id,
            route = %event.route,
            status = event.status,
            headers = event.headers.len(),
            metadata = ?event.metadata,
            "event"
        );
        ResponseDecision::default()
    }
}

// === impl AllowAll ===

/// Allows every request and does nothing else: the no-op agent the
/// benchmark measures.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Agent for AllowAll {
    async fn on_request(&self, _event: RequestEvent) -> RequestDecision {
        decision::allow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;
    use sentinel_proto::agent_protocol::request_decision::Action;

    fn event(path: &str, headers: &[(&str, &str)]) -> RequestEvent {
        RequestEvent {
            method: "GET".into(),
            path: path.into(),
            client_ip: "10.1.2.3".into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.to_string(),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn token_auth_accepts_known_bearer_tokens_and_signatures() {
        let mut a = TokenAuth {
            hmac_secret: Some(b"s3cret".to_vec()),
            max_skew_secs: 300,
            ..Default::default()
        };
        a.add_token("alice=t0k").unwrap();
        assert!(a.add_token("nobody").is_err());
        let ok = event("/x", &[("Authorization", "Bearer t0k")]);
        assert_eq!(a.user(&ok, 1000).as_deref(), Some("alice"));
        let bad = event("/x", &[("authorization", "Bearer nope")]);
        assert_eq!(a.user(&bad, 1000), None);
        let sig = hex::encode(hmac_sha256(
            b"s3cret",
            signing_string("bob", "1000", "GET", "/x", "").as_bytes(),
        ));
        let signed = event(
            "/x",
            &[
                ("x-sentinel-user", "bob"),
                ("x-sentinel-timestamp", "1000"),
                ("x-sentinel-signature", &sig),
            ],
        );
        assert_eq!(a.user(&signed, 1100).as_deref(), Some("bob"));
        assert_eq!(a.user(&signed, 2000), None, "outside the skew");
        let forged = event(
            "/y",
            &[
                ("x-sentinel-user", "bob"),
                ("x-sentinel-timestamp", "1000"),
                ("x-sentinel-signature", &sig),
            ],
        );
        assert_eq!(a.user(&forged, 1000), None, "signature is for another path");
    }

    #[test]
    fn cidrs_and_globs() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "2001:db8::1".parse().unwrap();
        assert!(one.contains("2001:db8::1".parse().unwrap()));
        assert!(!one.contains("2001:db8::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!(glob_match("/admin*", "/admin/users"));
        assert!(glob_match("*.php", "/index.php"));
        assert!(glob_match("/a*b*c", "/a-x-b-y-c"));
        assert!(!glob_match("/a*b*c", "/a-x-c"));
        assert!(glob_match("/exact", "/exact"));
        assert!(!glob_match("/exact", "/exact/more"));
        assert!(!glob_match("/ab*ba", "/aba"));
    }

    #[tokio::test]
    async fn denylist_denies_with_403() {
        let d = Denylist {
            networks: vec!["10.1.0.0/16".parse().unwrap()],
            paths: vec!["/admin*".into()],
        };
        let denied = d.on_request(event("/ok", &[])).await;
        assert!(matches!(denied.action, Some(Action::Deny(ref x)) if x.status == 403));
        let mut other = event("/admin/x", &[]);
        other.client_ip = "192.168.1.1".into();
        assert!(matches!(
            d.on_request(other).await.action,
            Some(Action::Deny(_))
        ));
        let mut fine = event("/public", &[]);
        fine.client_ip = "192.168.1.1".into();
        assert!(matches!(
            d.on_request(fine).await.action,
            Some(Action::Allow(_))
        ));
    }
}
