//! The normalized KDL form of a [`Snapshot`] (`sentinel --print-config`).
//!
//! Every value is written explicitly (defaults included), blocks come in a
//! fixed order and resources sorted by name, in KDL 2.0 syntax. Compiling the
//! printed text gives back the same snapshot; the property tests hold this.

use std::fmt::Write;

use sentinel_proto as pb;

use crate::compile::PRIORITIES;
use crate::snapshot::Snapshot;

/// Quotes a string for KDL 2.0.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn b(v: bool) -> &'static str {
    if v { "#true" } else { "#false" }
}

fn f(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn enum_name<T: Copy + PartialEq>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("", |(k, _)| k)
}

struct Out {
    text: String,
    depth: usize,
}

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        for _ in 0..self.depth {
            self.text.push_str("    ");
        }
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    fn open(&mut self, s: impl AsRef<str>) {
        self.line(format!("{} {{", s.as_ref()));
        self.depth += 1;
    }

    fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }
}

/// Renders `snapshot` as a normalized KDL 2.0 document.
pub fn print(snapshot: &Snapshot) -> String {
    let mut o = Out {
        text: String::new(),
        depth: 0,
    };
    o.line("// Normalized by sentinel: every value explicit, resources sorted by name.");
    settings(&mut o, &snapshot.settings);
    if !snapshot.listeners.is_empty() {
        o.open("listeners");
        for l in &snapshot.listeners {
            listener(&mut o, l);
        }
        o.close();
    }
    if !snapshot.upstreams.is_empty() {
        o.open("upstreams");
        for u in &snapshot.upstreams {
            let targets = snapshot.endpoints.iter().find(|e| e.upstream == u.name);
            upstream(&mut o, u, targets);
        }
        o.close();
    }
    if !snapshot.filters.is_empty() {
        o.open("filters");
        for fl in &snapshot.filters {
            filter(&mut o, fl);
        }
        o.close();
    }
    if !snapshot.agents.is_empty() {
        o.open("agents");
        for a in &snapshot.agents {
            agent(&mut o, a);
        }
        o.close();
    }
    if !snapshot.routes.is_empty() {
        o.open("routes");
        for r in &snapshot.routes {
            route(&mut o, r);
        }
        o.close();
    }
    o.text
}

fn settings(o: &mut Out, s: &pb::Settings) {
    let server = s.server.unwrap_or_default();
    o.open("server");
    o.line(format!("worker-threads {}", server.worker_threads));
    o.line(format!("max-connections {}", server.max_connections));
    o.line(format!(
        "graceful-shutdown-timeout-secs {}",
        server.graceful_shutdown_timeout_ms / 1000
    ));
    o.close();
    let limits = s.limits.unwrap_or_default();
    o.open("limits");
    if limits.max_total_connections > 0 {
        o.line(format!(
            "max-total-connections {}",
            limits.max_total_connections
        ));
    }
    o.line(format!("max-header-bytes {}", limits.max_header_bytes));
    o.line(format!("max-headers {}", limits.max_headers));
    o.line(format!("max-body-bytes {}", limits.max_body_bytes));
    o.line(format!("max-uri-bytes {}", limits.max_uri_bytes));
    o.close();
    let obs = s.observability.clone().unwrap_or_default();
    o.open("observability");
    let m = obs.metrics.unwrap_or_default();
    o.open("metrics");
    o.line(format!("enabled {}", b(m.enabled)));
    o.line(format!("path {}", q(&m.path)));
    o.close();
    let t = obs.tracing.unwrap_or_default();
    o.open("tracing");
    o.line(format!("enabled {}", b(t.enabled)));
    if !t.otlp_endpoint.is_empty() {
        o.line(format!(
            "backend \"otlp\" {{ endpoint {}; }}",
            q(&t.otlp_endpoint)
        ));
    }
    o.line(format!("sampling-rate {}", f(t.sampling_rate)));
    o.line(format!("service-name {}", q(&t.service_name)));
    o.line(format!("propagation {}", q(&t.propagation)));
    o.close();
    let l = obs.logging.unwrap_or_default();
    o.open("logging");
    o.line(format!("level {}", q(&l.level)));
    let format = if l.format == pb::LogFormat::Json as i32 {
        "json"
    } else {
        "text"
    };
    o.line(format!("format {}", q(format)));
    o.line(format!("access-log {}", b(l.access_log)));
    o.close();
    o.close();
}

fn listener(o: &mut Out, l: &pb::Listener) {
    o.open(format!("listener {}", q(&l.name)));
    o.line(format!("address {}", q(&l.address)));
    let https = l.protocol == pb::ListenerProtocol::Https as i32;
    o.line(format!(
        "protocol {}",
        if https { "\"https\"" } else { "\"http\"" }
    ));
    if let (true, Some(t)) = (https, &l.tls) {
        o.open("tls");
        o.line(format!("cert-file {}", q(&t.cert_file)));
        o.line(format!("key-file {}", q(&t.key_file)));
        let v13 = t.min_version == pb::TlsVersion::TlsVersion13 as i32;
        o.line(format!(
            "min-version {}",
            if v13 { "\"1.3\"" } else { "\"1.2\"" }
        ));
        o.line(format!(
            "alpn {}",
            t.alpn.iter().map(|a| q(a)).collect::<Vec<_>>().join(" ")
        ));
        if !t.client_ca_file.is_empty() {
            o.line(format!("client-ca-file {}", q(&t.client_ca_file)));
        }
        o.close();
    }
    if l.max_connections > 0 {
        o.line(format!("max-connections {}", l.max_connections));
    }
    o.line(format!("http2 {}", b(l.http2)));
    o.line(format!(
        "keepalive-timeout-secs {}",
        l.keepalive_timeout_ms / 1000
    ));
    o.line(format!(
        "header-read-timeout-secs {}",
        l.header_read_timeout_ms / 1000
    ));
    if !l.default_route.is_empty() {
        o.line(format!("default-route {}", q(&l.default_route)));
    }
    o.close();
}

fn failure_mode(v: i32) -> &'static str {
    if v == pb::FailureMode::Open as i32 {
        "\"open\""
    } else {
        "\"closed\""
    }
}

fn route(o: &mut Out, r: &pb::Route) {
    o.open(format!("route {}", q(&r.name)));
    match PRIORITIES.iter().find(|(_, p)| *p == r.priority) {
        Some((name, _)) => o.line(format!("priority {}", q(name))),
        None => o.line(format!("priority {}", r.priority)),
    }
    let m = r.r#match.clone().unwrap_or_default();
    let has_match = !(m.path_prefix.is_empty()
        && m.path_exact.is_empty()
        && m.path_regex.is_empty()
        && m.hosts.is_empty()
        && m.methods.is_empty()
        && m.headers.is_empty()
        && m.query.is_empty());
    if has_match {
        o.open("matches");
        if !m.path_prefix.is_empty() {
            o.line(format!("path-prefix {}", q(&m.path_prefix)));
        }
        if !m.path_exact.is_empty() {
            o.line(format!("path {}", q(&m.path_exact)));
        }
        if !m.path_regex.is_empty() {
            o.line(format!("path-regex {}", q(&m.path_regex)));
        }
        if !m.hosts.is_empty() {
            o.line(format!(
                "host {}",
                m.hosts.iter().map(|h| q(h)).collect::<Vec<_>>().join(" ")
            ));
        }
        if !m.methods.is_empty() {
            o.line(format!(
                "method {}",
                m.methods.iter().map(|h| q(h)).collect::<Vec<_>>().join(" ")
            ));
        }
        for h in &m.headers {
            if h.present_only {
                o.line(format!("header {}", q(&h.name)));
            } else {
                o.line(format!("header {} {}", q(&h.name), q(&h.value)));
            }
        }
        for h in &m.query {
            if h.present_only {
                o.line(format!("query {}", q(&h.name)));
            } else {
                o.line(format!("query {} {}", q(&h.name), q(&h.value)));
            }
        }
        o.close();
    }
    o.line(format!("upstream {}", q(&r.upstream)));
    if !r.filters.is_empty() {
        o.line(format!(
            "filters {}",
            r.filters.iter().map(|x| q(x)).collect::<Vec<_>>().join(" ")
        ));
    }
    if !r.agents.is_empty() {
        o.line(format!(
            "agents {}",
            r.agents.iter().map(|x| q(x)).collect::<Vec<_>>().join(" ")
        ));
    }
    let p = r.policies.clone().unwrap_or_default();
    o.open("policies");
    o.line(format!("timeout-secs {}", p.timeout_ms / 1000));
    // On a route with agents a written `failure-mode` overrides theirs, so
    // it is printed only when it does.
    if r.agents.is_empty() || p.agent_failure_mode != 0 {
        o.line(format!("failure-mode {}", failure_mode(p.failure_mode)));
    }
    if p.agent_timeout_ms > 0 {
        o.line(format!("agent-timeout-ms {}", p.agent_timeout_ms));
    }
    o.line(format!("max-body-bytes {}", p.max_body_bytes));
    for (label, rw) in [
        ("request-headers", &p.request_headers),
        ("response-headers", &p.response_headers),
    ] {
        let Some(rw) = rw else { continue };
        if rw.set.is_empty() && rw.remove.is_empty() {
            continue;
        }
        o.open(label);
        for s in &rw.set {
            o.line(format!("set {} {}", q(&s.name), q(&s.value)));
        }
        if !rw.remove.is_empty() {
            o.line(format!(
                "remove {}",
                rw.remove.iter().map(|x| q(x)).collect::<Vec<_>>().join(" ")
            ));
        }
        o.close();
    }
    o.close();
    o.close();
}

fn grace(o: &mut Out, empty_grace_ms: Option<u64>) {
    if let Some(ms) = empty_grace_ms {
        o.line(format!("empty-grace-secs {}", ms / 1000));
    }
}

fn upstream(o: &mut Out, u: &pb::Upstream, endpoints: Option<&pb::Endpoints>) {
    use pb::discovery::Source;
    o.open(format!("upstream {}", q(&u.name)));
    match u.discovery.as_ref().and_then(|d| d.source.as_ref()) {
        None | Some(Source::Static(_)) => {
            for t in endpoints.map(|e| e.targets.as_slice()).unwrap_or_default() {
                let zone = if t.zone.is_empty() {
                    String::new()
                } else {
                    format!(" zone={}", q(&t.zone))
                };
                o.line(format!(
                    "target {} weight={}{zone}",
                    q(&t.address),
                    t.weight
                ));
            }
        }
        Some(Source::Dns(d)) => {
            o.open("discovery \"dns\"");
            o.line(format!("hostname {}", q(&d.hostname)));
            if d.port != 0 {
                o.line(format!("port {}", d.port));
            }
            let rt = match pb::DnsRecordType::try_from(d.record_type) {
                Ok(pb::DnsRecordType::Aaaa) => "AAAA",
                Ok(pb::DnsRecordType::Srv) => "SRV",
                _ => "A",
            };
            o.line(format!("record-type {}", q(rt)));
            o.line(format!(
                "refresh-interval-secs {}",
                d.refresh_interval_ms / 1000
            ));
            if !d.resolver.is_empty() {
                o.line(format!("resolver {}", q(&d.resolver)));
            }
            grace(o, d.empty_grace_ms);
            o.close();
        }
        Some(Source::Consul(c)) => {
            o.open("discovery \"consul\"");
            o.line(format!("address {}", q(&c.address)));
            o.line(format!("service {}", q(&c.service)));
            if !c.datacenter.is_empty() {
                o.line(format!("datacenter {}", q(&c.datacenter)));
            }
            if !c.tag.is_empty() {
                o.line(format!("tag {}", q(&c.tag)));
            }
            o.line(format!("healthy-only {}", b(c.healthy_only)));
            o.line(format!(
                "refresh-interval-secs {}",
                c.refresh_interval_ms / 1000
            ));
            if !c.token.is_empty() {
                o.line(format!("token {}", q(&c.token)));
            }
            if !c.ca_file.is_empty() {
                o.line(format!("ca-file {}", q(&c.ca_file)));
            }
            grace(o, c.empty_grace_ms);
            o.close();
        }
        Some(Source::Kubernetes(k)) => {
            o.open("discovery \"kubernetes\"");
            o.line(format!("namespace {}", q(&k.namespace)));
            o.line(format!("service {}", q(&k.service)));
            o.line(format!("port {}", q(&k.port)));
            o.line(format!(
                "refresh-interval-secs {}",
                k.refresh_interval_ms / 1000
            ));
            if !k.api_server.is_empty() {
                o.line(format!("api-server {}", q(&k.api_server)));
            }
            if !k.token_file.is_empty() {
                o.line(format!("token-file {}", q(&k.token_file)));
            }
            if !k.kubeconfig.is_empty() {
                o.line(format!("kubeconfig {}", q(&k.kubeconfig)));
            }
            if !k.ca_file.is_empty() {
                o.line(format!("ca-file {}", q(&k.ca_file)));
            }
            grace(o, k.empty_grace_ms);
            o.close();
        }
    }
    let lb = u.load_balancing.clone().unwrap_or_default();
    let algorithm = pb::LoadBalancingAlgorithm::try_from(lb.algorithm).unwrap_or_default();
    let alg = enum_name(crate::compile::upstreams::ALGORITHMS, algorithm);
    if algorithm == pb::LoadBalancingAlgorithm::ConsistentHash {
        o.open(format!("load-balancing {}", q(alg)));
        o.line(format!("key {}", q(&lb.hash_key)));
        o.line(format!("virtual-nodes {}", lb.virtual_nodes));
        o.close();
    } else {
        o.line(format!("load-balancing {}", q(alg)));
    }
    let hc = u.health_check.clone().unwrap_or_default();
    o.open("health-check");
    o.line(format!("enabled {}", b(hc.enabled)));
    if hc.kind == pb::HealthCheckKind::Tcp as i32 {
        o.line("type \"tcp\"");
    } else {
        o.open("type \"http\"");
        o.line(format!("path {}", q(&hc.path)));
        o.line(format!("expected-status {}", hc.expected_status));
        if !hc.host.is_empty() {
            o.line(format!("host {}", q(&hc.host)));
        }
        o.close();
    }
    o.line(format!("interval-secs {}", hc.interval_ms / 1000));
    o.line(format!("timeout-secs {}", hc.timeout_ms / 1000));
    o.line(format!("healthy-threshold {}", hc.healthy_threshold));
    o.line(format!("unhealthy-threshold {}", hc.unhealthy_threshold));
    o.close();
    let p = u.passive_health.unwrap_or_default();
    o.open("passive-health");
    o.line(format!("enabled {}", b(p.enabled)));
    o.line(format!("failure-rate-percent {}", p.failure_rate_percent));
    o.line(format!("min-requests {}", p.min_requests));
    o.line(format!("consecutive-failures {}", p.consecutive_failures));
    o.line(format!("ejection-secs {}", p.ejection_ms / 1000));
    o.close();
    breaker(o, &u.circuit_breaker.unwrap_or_default());
    let cp = u.connection_pool.unwrap_or_default();
    o.open("connection-pool");
    o.line(format!("max-connections {}", cp.max_connections));
    o.line(format!("max-idle {}", cp.max_idle));
    o.line(format!("idle-timeout-secs {}", cp.idle_timeout_ms / 1000));
    o.close();
    let t = u.timeouts.unwrap_or_default();
    o.open("timeouts");
    o.line(format!("connect-ms {}", t.connect_ms));
    o.line(format!("request-ms {}", t.request_ms));
    o.line(format!("read-ms {}", t.read_ms));
    o.line(format!("write-ms {}", t.write_ms));
    o.close();
    let r = u.retry.clone().unwrap_or_default();
    o.open("retry");
    o.line(format!("attempts {}", r.attempts));
    o.line(format!("backoff-ms {}", r.backoff_ms));
    if !r.on_status.is_empty() {
        o.line(format!(
            "on-status {}",
            r.on_status
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    o.line(format!("budget-percent {}", r.budget_percent));
    o.line(format!(
        "min-retries-per-second {}",
        r.min_retries_per_second
    ));
    o.close();
    let closed = u.all_unhealthy == pb::AllUnhealthy::FailClosed as i32;
    o.line(format!(
        "all-unhealthy {}",
        if closed {
            "\"fail-closed\""
        } else {
            "\"fail-open\""
        }
    ));
    if let Some(t) = &u.tls {
        upstream_tls(o, t);
    }
    if u.fleet_health {
        o.line(format!("fleet-health {}", b(u.fleet_health)));
    }
    o.close();
}

fn upstream_tls(o: &mut Out, t: &pb::UpstreamTls) {
    o.open("tls");
    if !t.sni.is_empty() {
        o.line(format!("sni {}", q(&t.sni)));
    }
    if !t.ca_file.is_empty() {
        o.line(format!("ca-file {}", q(&t.ca_file)));
    }
    if !t.client_cert_file.is_empty() {
        o.line(format!("client-cert {}", q(&t.client_cert_file)));
    }
    if !t.client_key_file.is_empty() {
        o.line(format!("client-key {}", q(&t.client_key_file)));
    }
    o.line(format!(
        "insecure-skip-verify {}",
        b(t.insecure_skip_verify)
    ));
    o.line(format!(
        "alpn {}",
        t.alpn.iter().map(|a| q(a)).collect::<Vec<_>>().join(" ")
    ));
    o.close();
}

fn breaker(o: &mut Out, cb: &pb::CircuitBreaker) {
    o.open("circuit-breaker");
    o.line(format!("enabled {}", b(cb.enabled)));
    o.line(format!("failure-threshold {}", cb.failure_threshold));
    o.line(format!("success-threshold {}", cb.success_threshold));
    o.line(format!("timeout-seconds {}", cb.open_ms / 1000));
    o.close();
}

fn filter(o: &mut Out, fl: &pb::Filter) {
    o.open(format!("filter {}", q(&fl.name)));
    let Some(pb::filter::Kind::RateLimit(rl)) = &fl.kind else {
        o.close();
        return;
    };
    o.line("type \"rate-limit\"");
    o.line(format!("max-rps {}", f(rl.max_rps)));
    o.line(format!("burst {}", rl.burst));
    let key: Vec<String> = rl
        .key
        .iter()
        .map(|k| match pb::RateLimitKeyKind::try_from(k.kind) {
            Ok(pb::RateLimitKeyKind::Header) => format!("header:{}", k.header),
            Ok(pb::RateLimitKeyKind::Path) => "path".to_string(),
            _ => "client-ip".to_string(),
        })
        .collect();
    o.line(format!("key {}", q(&key.join(","))));
    let log = rl.on_limit == pb::OnLimit::Log as i32;
    o.line(format!(
        "on-limit {}",
        if log { "\"log\"" } else { "\"reject\"" }
    ));
    o.line(format!("status-code {}", rl.status_code));
    let redis = rl.backend == pb::RateLimitBackend::Redis as i32;
    o.line(format!(
        "backend {}",
        if redis { "\"redis\"" } else { "\"local\"" }
    ));
    let sliding = rl.algorithm == pb::RateLimitAlgorithm::SlidingWindow as i32;
    o.line(format!(
        "algorithm {}",
        if sliding {
            "\"sliding-window\""
        } else {
            "\"token-bucket\""
        }
    ));
    if let (true, Some(r)) = (redis, &rl.redis) {
        o.line(format!("redis-url {}", q(&r.url)));
        o.line(format!("redis-prefix {}", q(&r.prefix)));
        o.line(format!("redis-timeout-ms {}", r.timeout_ms));
        o.line(format!("redis-pool-size {}", r.pool_size));
        o.line(format!("redis-pool-timeout-ms {}", r.pool_timeout_ms));
        o.line(format!("fallback-to-local {}", b(r.fallback_to_local)));
        o.line(format!("on-redis-failure {}", failure_mode(r.on_failure)));
    }
    o.close();
}

fn agent(o: &mut Out, a: &pb::Agent) {
    o.open(format!("agent {} type={}", q(&a.name), q(&a.agent_type)));
    match &a.transport {
        Some(pb::agent::Transport::UnixSocket(p)) => o.line(format!("unix-socket {}", q(p))),
        Some(pb::agent::Transport::Grpc(u)) => o.line(format!("grpc {}", q(u))),
        None => {}
    }
    o.line(format!("timeout-ms {}", a.timeout_ms));
    o.line(format!("connect-timeout-ms {}", a.connect_timeout_ms));
    o.line(format!("failure-mode {}", failure_mode(a.failure_mode)));
    let r = a.retry.unwrap_or_default();
    o.open("retry");
    o.line(format!("attempts {}", r.attempts));
    o.line(format!("backoff-ms {}", r.backoff_ms));
    o.close();
    let h = a.health_check.unwrap_or_default();
    o.open("health-check");
    o.line(format!("enabled {}", b(h.enabled)));
    o.line(format!("interval-ms {}", h.interval_ms));
    o.line(format!("timeout-ms {}", h.timeout_ms));
    o.line(format!("healthy-threshold {}", h.healthy_threshold));
    o.line(format!("unhealthy-threshold {}", h.unhealthy_threshold));
    o.close();
    breaker(o, &a.circuit_breaker.unwrap_or_default());
    let body = match pb::AgentBody::try_from(a.body) {
        Ok(pb::AgentBody::Buffered) => "buffered",
        Ok(pb::AgentBody::Streamed) => "streamed",
        _ => "none",
    };
    o.line(format!("body {}", q(body)));
    o.line(format!("max-body-bytes {}", a.max_body_bytes));
    o.close();
}
