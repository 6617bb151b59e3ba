//! Route matching: priority first, then specificity, then name.
//!
//! A [`Router`] is built once per snapshot from the route resources; matching
//! a request is a scan over routes pre-sorted by precedence and returns the
//! first whose every condition holds. Building compiles regexes and parses
//! header names, so the request path allocates nothing.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request};
use regex::Regex;
use sentinel_proto as pb;

/// How the path is matched.
#[derive(Debug)]
enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
enum HostPattern {
    /// `api.example.com`, or `api.example.com:8443` (then the port counts).
    Exact(String),
    /// `*.example.com`: any subdomain, stored as `.example.com`.
    Suffix(String),
}

/// Metric handles of one route, created on first use so that recording a
/// request costs no registry lookup and no label allocation.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    duration: std::sync::OnceLock<metrics::Histogram>,
    statuses: [std::sync::OnceLock<metrics::Counter>; COMMON_STATUSES.len()],
    /// Counters since the last health report (what the control plane's
    /// rollout gates compare): three relaxed atomic adds per request.
    pub traffic: RouteTraffic,
}

/// Upper bounds (milliseconds) of the latency buckets behind a reported
/// p99; the last bucket is open.
pub const LATENCY_BUCKETS_MS: [u64; 15] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    30_000,
    u64::MAX,
];

/// One route's requests, 5xx answers and latency histogram since they were
/// last taken ([`RouteTraffic::take`], by the health reporter).
#[derive(Debug, Default)]
pub struct RouteTraffic {
    requests: std::sync::atomic::AtomicU64,
    errors_5xx: std::sync::atomic::AtomicU64,
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS_MS.len()],
}

/// What [`RouteTraffic::take`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrafficSample {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Upper bound of the bucket holding the 99th percentile (0: no requests).
    pub p99_ms: u64,
}

impl RouteTraffic {
    pub fn record(&self, status: u16, seconds: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Relaxed);
        }
        let ms = (seconds * 1000.0) as u64;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms < *b || *b == u64::MAX)
            .unwrap_or(LATENCY_BUCKETS_MS.len() - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// Takes the counters and starts again from zero.
    pub fn take(&self) -> TrafficSample {
        use std::sync::atomic::Ordering::Relaxed;
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect();
        let requests = self.requests.swap(0, Relaxed);
        let errors_5xx = self.errors_5xx.swap(0, Relaxed);
        let total: u64 = counts.iter().sum();
        let mut p99_ms = 0;
        if total > 0 {
            // The smallest bucket holding at least 99% of the requests.
            let need = total - total / 100;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= need {
                    p99_ms = LATENCY_BUCKETS_MS[i].min(60_000);
                    break;
                }
            }
        }
        TrafficSample {
            requests,
            errors_5xx,
            p99_ms,
        }
    }
}

const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504,
];

impl RouteMetrics {
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        let counter = match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.statuses[i]
                .get_or_init(|| {
                    metrics::counter!("sentinel_requests_total", "route" => route.to_string(), "status" => status.to_string())
                })
                .clone(),
            None => metrics::counter!("sentinel_requests_total", "route" => route.to_string(), "status" => status.to_string()),
        };
        counter.increment(1);
        self.traffic.record(status, seconds);
        self.duration
            .get_or_init(|| metrics::histogram!("sentinel_request_duration_seconds", "route" => route.to_string()))
            .record(seconds);
    }
}

/// One route, ready to match.
#[derive(Debug)]
pub struct RouteEntry {
    pub name: Arc<str>,
    pub resource: pb::Route,
    /// Policies with defaults filled, borrowed by every request.
    pub policies: pb::RoutePolicies,
    pub metrics: RouteMetrics,
    path: PathMatch,
    hosts: Vec<HostPattern>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    query: Vec<(String, Option<String>)>,
    precedence: (i32, u32, u32, u32),
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<RouteEntry>>,
}

#[derive(Debug, thiserror::Error)]
#[error("route `{route}`: {reason}")]
pub struct RouteError {
    pub route: String,
    pub reason: String,
}

// === impl RouteEntry ===

impl RouteEntry {
    pub fn new(route: &pb::Route) -> Result<Self, RouteError> {
        let err = |reason: String| RouteError {
            route: route.name.clone(),
            reason,
        };
        let m = route.r#match.clone().unwrap_or_default();
        let (path, path_score) = if !m.path_exact.is_empty() {
            (
                PathMatch::Exact(m.path_exact.clone()),
                3_000_000 + m.path_exact.len() as u32,
            )
        } else if !m.path_prefix.is_empty() {
            (
                PathMatch::Prefix(m.path_prefix.clone()),
                2_000_000 + m.path_prefix.len() as u32,
            )
        } else if !m.path_regex.is_empty() {
            let re = Regex::new(&m.path_regex).map_err(|e| err(format!("invalid regex: {e}")))?;
            (PathMatch::Regex(re), 1_000_000 + m.path_regex.len() as u32)
        } else {
            (PathMatch::Any, 0)
        };
        let mut host_score = 0;
        let hosts = m
            .hosts
            .iter()
            .map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => {
                        host_score = host_score.max(1000 + suffix.len() as u32);
                        HostPattern::Suffix(suffix.to_string())
                    }
                    None => {
                        host_score = host_score.max(2000 + h.len() as u32);
                        HostPattern::Exact(h)
                    }
                }
            })
            .collect();
        let methods = m
            .methods
            .iter()
            .map(|v| {
                Method::from_bytes(v.as_bytes()).map_err(|_| err(format!("invalid method `{v}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| err(format!("invalid header name `{}`", h.name)))?;
                let value = if h.present_only {
                    None
                } else {
                    Some(
                        HeaderValue::from_str(&h.value)
                            .map_err(|_| err(format!("invalid header value for `{}`", h.name)))?,
                    )
                };
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        let query = m
            .query
            .iter()
            .map(|q| (q.name.clone(), (!q.present_only).then(|| q.value.clone())))
            .collect::<Vec<_>>();
        let others =
            u32::from(!methods.is_empty()) * 100 + (headers.len() + query.len()) as u32 * 10;
        Ok(Self {
            name: Arc::from(route.name.as_str()),
            resource: route.clone(),
            policies: route.policies.clone().unwrap_or_default(),
            metrics: RouteMetrics::default(),
            path,
            hosts,
            methods,
            headers,
            query,
            precedence: (route.priority, path_score, host_score, others),
        })
    }

    fn matches<B>(&self, req: &Request<B>, host: &str) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => re.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|p| host_matches(p, host)) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        for (name, value) in &self.headers {
            let ok = match value {
                None => req.headers().contains_key(name),
                Some(v) => req.headers().get_all(name).iter().any(|h| h == v),
            };
            if !ok {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or("");
            for (name, value) in &self.query {
                let found = query.split('&').any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    k == name && value.as_deref().is_none_or(|want| v == want)
                });
                if !found {
                    return false;
                }
            }
        }
        true
    }
}

fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(p) if p.contains(':') => host == p,
        HostPattern::Exact(p) => strip_port(host) == p,
        HostPattern::Suffix(s) => {
            let h = strip_port(host);
            h.len() > s.len() && h.ends_with(s.as_str())
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

// === impl Router ===

impl Router {
    pub fn new(routes: &[pb::Route]) -> Result<Self, RouteError> {
        let mut entries = routes
            .iter()
            .map(RouteEntry::new)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| {
            b.precedence
                .cmp(&a.precedence)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(Self {
            routes: entries.into_iter().map(Arc::new).collect(),
        })
    }

    /// The route for a request; `host` is the lower-cased Host / authority.
    pub fn route<B>(&self, req: &Request<B>, host: &str) -> Option<&Arc<RouteEntry>> {
        self.routes.iter().find(|r| r.matches(req, host))
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<RouteEntry>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Routes in the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn route_traffic_counts_5xx_and_takes_the_p99_bucket() {
        let t = RouteTraffic::default();
        assert_eq!(t.take(), TrafficSample::default());
        for _ in 0..98 {
            t.record(200, 0.003);
        }
        t.record(502, 0.150);
        t.record(503, 0.150);
        let s = t.take();
        assert_eq!((s.requests, s.errors_5xx), (100, 2));
        // 99 of 100 requests are needed: the 99th is in the 100-200 ms bucket.
        assert_eq!(s.p99_ms, 200);
        assert_eq!(
            t.take(),
            TrafficSample::default(),
            "take starts again from zero"
        );
        t.record(200, 0.0001);
        assert_eq!(t.take().p99_ms, 1);
    }

    use super::*;

    fn router(doc: &str) -> Router {
        let full = format!(
            "upstreams {{ upstream \"u\" {{ target \"127.0.0.1:1\"; }} }}\nroutes {{\n{doc}\n}}"
        );
        let snapshot = sentinel_config::compile("t.kdl", &full).unwrap_or_else(|d| panic!("{d}"));
        Router::new(&snapshot.routes).unwrap()
    }

    fn pick(r: &Router, method: &str, uri: &str, host: &str) -> Option<String> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap();
        r.route(&req, host).map(|e| e.name.to_string())
    }

    #[test]
    fn priority_beats_specificity_and_specificity_beats_name() {
        let r = router(
            r#"
            route "a-broad" { matches { path-prefix "/"; }; upstream "u"; }
            route "b-api" { matches { path-prefix "/api/"; }; upstream "u"; }
            route "c-exact" { matches { path "/api/users"; }; upstream "u"; }
            route "d-regex" { matches { path-regex "^/api/[0-9]+$"; }; upstream "u"; }
            route "e-urgent" { priority "critical"; matches { path-prefix "/api/admin"; }; upstream "u"; }
            "#,
        );
        assert_eq!(pick(&r, "GET", "/other", "h").as_deref(), Some("a-broad"));
        assert_eq!(pick(&r, "GET", "/api/x", "h").as_deref(), Some("b-api"));
        assert_eq!(
            pick(&r, "GET", "/api/users", "h").as_deref(),
            Some("c-exact")
        );
        // The prefix `/api/` is more specific than the regex.
        assert_eq!(pick(&r, "GET", "/api/42", "h").as_deref(), Some("b-api"));
        assert_eq!(
            pick(&r, "GET", "/api/admin/x", "h").as_deref(),
            Some("e-urgent")
        );
    }

    #[test]
    fn host_method_header_and_query_conditions() {
        let r = router(
            r#"
            route "wild" { matches { host "*.example.com"; }; upstream "u"; }
            route "exact" { matches { host "api.example.com"; }; upstream "u"; }
            route "post" { matches { path-prefix "/p"; method "POST"; }; upstream "u"; }
            route "canary" { matches { path-prefix "/c"; header "X-Canary" "1"; query "debug"; }; upstream "u"; }
            "#,
        );
        assert_eq!(
            pick(&r, "GET", "/", "api.example.com:8080").as_deref(),
            Some("exact")
        );
        assert_eq!(
            pick(&r, "GET", "/", "www.example.com").as_deref(),
            Some("wild")
        );
        assert_eq!(pick(&r, "GET", "/", "example.com"), None);
        assert_eq!(pick(&r, "POST", "/p", "x").as_deref(), Some("post"));
        assert_eq!(pick(&r, "GET", "/p", "x"), None);
        let req = Request::builder()
            .uri("/c?debug&x=1")
            .header("x-canary", "1")
            .body(())
            .unwrap();
        assert_eq!(
            r.route(&req, "x").map(|e| e.name.to_string()).as_deref(),
            Some("canary")
        );
        let req = Request::builder()
            .uri("/c?x=1")
            .header("x-canary", "1")
            .body(())
            .unwrap();
        assert!(r.route(&req, "x").is_none());
    }
}
