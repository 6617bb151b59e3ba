//! `upstreams { upstream "name" { … } }`: targets (both forms), discovery,
//! load balancing, health checks, circuit breaker, pool, timeouts, retry,
//! `fleet-health` (act on the fleet's health quorum).
//! Produces an `Upstream` and its `Endpoints` (empty for discovered ones,
//! which the control plane fills).

use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;
use sentinel_proto as pb;

use super::{checked, require_block, resource_name};
use crate::reader::{Ctx, Seen, args, children, name, name_span};
use crate::values;

const UPSTREAM: &[&str] = &[
    "target",
    "targets",
    "discovery",
    "load-balancing",
    "health-check",
    "passive-health",
    "circuit-breaker",
    "connection-pool",
    "timeouts",
    "retry",
    "all-unhealthy",
    "tls",
    "fleet-health",
];
const TARGET: &[&str] = &["address", "weight", "zone"];
const LOAD_BALANCING: &[&str] = &["key", "virtual-nodes"];
const HEALTH_CHECK: &[&str] = &[
    "enabled",
    "type",
    "interval-secs",
    "timeout-secs",
    "healthy-threshold",
    "unhealthy-threshold",
];
const HTTP_CHECK: &[&str] = &["path", "expected-status", "host"];
const PASSIVE: &[&str] = &[
    "enabled",
    "failure-rate-percent",
    "min-requests",
    "consecutive-failures",
    "ejection-secs",
];
pub(super) const BREAKER: &[&str] = &[
    "enabled",
    "failure-threshold",
    "success-threshold",
    "timeout-seconds",
];
const POOL: &[&str] = &["max-connections", "max-idle", "idle-timeout-secs"];
const TIMEOUTS: &[&str] = &[
    "connect-secs",
    "request-secs",
    "read-secs",
    "write-secs",
    "connect-ms",
    "request-ms",
    "read-ms",
    "write-ms",
];
const RETRY: &[&str] = &[
    "attempts",
    "backoff-ms",
    "on-status",
    "budget-percent",
    "min-retries-per-second",
];
const DNS: &[&str] = &[
    "hostname",
    "port",
    "record-type",
    "refresh-interval-secs",
    "resolver",
    "nameserver",
    "empty-grace-secs",
];
const CONSUL: &[&str] = &[
    "address",
    "service",
    "datacenter",
    "tag",
    "healthy-only",
    "refresh-interval-secs",
    "token",
    "ca-file",
    "empty-grace-secs",
];
const KUBERNETES: &[&str] = &[
    "namespace",
    "service",
    "port",
    "refresh-interval-secs",
    "api-server",
    "token-file",
    "kubeconfig",
    "ca-file",
    "empty-grace-secs",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("upstreams", &["upstream"]),
    ("upstream", UPSTREAM),
    ("targets", &["target"]),
    ("target", TARGET),
    ("load-balancing", LOAD_BALANCING),
    ("health-check", HEALTH_CHECK),
    ("type \"http\"", HTTP_CHECK),
    ("passive-health", PASSIVE),
    ("circuit-breaker", BREAKER),
    ("connection-pool", POOL),
    ("timeouts", TIMEOUTS),
    ("retry", RETRY),
    ("discovery \"dns\"", DNS),
    ("discovery \"consul\"", CONSUL),
    ("discovery \"kubernetes\"", KUBERNETES),
    ("upstream tls", UPSTREAM_TLS),
];

pub(crate) const ALGORITHMS: &[(&str, pb::LoadBalancingAlgorithm)] = &[
    ("round_robin", pb::LoadBalancingAlgorithm::RoundRobin),
    ("weighted", pb::LoadBalancingAlgorithm::Weighted),
    (
        "least_connections",
        pb::LoadBalancingAlgorithm::LeastConnections,
    ),
    ("ip_hash", pb::LoadBalancingAlgorithm::IpHash),
    (
        "consistent_hash",
        pb::LoadBalancingAlgorithm::ConsistentHash,
    ),
    ("random", pb::LoadBalancingAlgorithm::Random),
    ("p2c", pb::LoadBalancingAlgorithm::P2c),
];

fn defaults(name: String) -> pb::Upstream {
    pb::Upstream {
        name,
        load_balancing: Some(pb::LoadBalancing {
            algorithm: pb::LoadBalancingAlgorithm::RoundRobin as i32,
            hash_key: String::new(),
            virtual_nodes: 0,
        }),
        discovery: Some(pb::Discovery {
            source: Some(pb::discovery::Source::Static(pb::StaticDiscovery {})),
        }),
        health_check: Some(pb::HealthCheck {
            enabled: false,
            kind: pb::HealthCheckKind::Http as i32,
            path: "/health".into(),
            expected_status: 200,
            host: String::new(),
            interval_ms: 10_000,
            timeout_ms: 5_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }),
        passive_health: Some(pb::PassiveHealth {
            enabled: true,
            failure_rate_percent: 50,
            min_requests: 100,
            consecutive_failures: 5,
            ejection_ms: 30_000,
        }),
        circuit_breaker: Some(breaker_defaults(false)),
        connection_pool: Some(pb::ConnectionPool {
            max_connections: 1024,
            max_idle: 64,
            idle_timeout_ms: 90_000,
        }),
        timeouts: Some(pb::Timeouts {
            connect_ms: 5_000,
            request_ms: 30_000,
            read_ms: 15_000,
            write_ms: 15_000,
        }),
        retry: Some(pb::Retry {
            attempts: 2,
            backoff_ms: 25,
            on_status: Vec::new(),
            budget_percent: 20,
            min_retries_per_second: 3,
        }),
        all_unhealthy: pb::AllUnhealthy::FailOpen as i32,
        tls: None,
        fleet_health: false,
    }
}

pub(super) fn breaker_defaults(enabled: bool) -> pb::CircuitBreaker {
    pb::CircuitBreaker {
        enabled,
        failure_threshold: 5,
        success_threshold: 3,
        open_ms: 30_000,
    }
}

pub(super) fn upstream(
    ctx: &mut Ctx,
    node: &KdlNode,
) -> Option<(String, SourceSpan, (pb::Upstream, pb::Endpoints))> {
    ctx.check_props(node, &[]);
    let (upstream_name, span) = resource_name(ctx, node)?;
    let mut u = defaults(upstream_name.clone());
    let mut targets: Vec<(pb::Target, SourceSpan)> = Vec::new();
    let mut discovery_span: Option<(String, SourceSpan)> = None;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &["target", "targets"]) {
            continue;
        }
        match name(child) {
            "target" => {
                if let Some(t) = target(ctx, child) {
                    targets.push(t);
                }
            }
            "targets" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                for t in children(child) {
                    if name(t) != "target" {
                        ctx.unknown_node(t, "targets", &["target"]);
                    } else if let Some(t) = target(ctx, t) {
                        targets.push(t);
                    }
                }
            }
            "discovery" => {
                if let Some(d) = discovery(ctx, child) {
                    let kind = match &d {
                        pb::discovery::Source::Static(_) => "static",
                        pb::discovery::Source::Dns(_) => "dns",
                        pb::discovery::Source::Consul(_) => "consul",
                        pb::discovery::Source::Kubernetes(_) => "kubernetes",
                    };
                    discovery_span = Some((kind.to_string(), name_span(child)));
                    u.discovery = Some(pb::Discovery { source: Some(d) });
                }
            }
            "load-balancing" => load_balancing(
                ctx,
                child,
                u.load_balancing.get_or_insert_with(Default::default),
            ),
            "health-check" => health_check(
                ctx,
                child,
                u.health_check.get_or_insert_with(Default::default),
            ),
            "passive-health" => passive(
                ctx,
                child,
                u.passive_health.get_or_insert_with(Default::default),
            ),
            "circuit-breaker" => {
                let b = u.circuit_breaker.get_or_insert_with(Default::default);
                circuit_breaker(ctx, child, b);
            }
            "connection-pool" => pool(
                ctx,
                child,
                u.connection_pool.get_or_insert_with(Default::default),
            ),
            "timeouts" => timeouts(ctx, child, u.timeouts.get_or_insert_with(Default::default)),
            "retry" => retry(ctx, child, u.retry.get_or_insert_with(Default::default)),
            "all-unhealthy" => {
                let modes = [
                    ("fail-open", pb::AllUnhealthy::FailOpen),
                    ("fail-closed", pb::AllUnhealthy::FailClosed),
                ];
                if let Some(v) = ctx.choice(child, &modes) {
                    u.all_unhealthy = v as i32;
                }
            }
            "tls" => u.tls = Some(upstream_tls(ctx, child)),
            "fleet-health" => u.fleet_health = ctx.boolean(child).unwrap_or_default(),
            _ => ctx.unknown_node(child, "upstream", UPSTREAM),
        }
    }
    // Duplicate target addresses would double a target's share silently.
    let mut addresses: Vec<(&str, SourceSpan)> = Vec::new();
    for (t, span) in &targets {
        if let Some((_, first)) = addresses.iter().find(|(a, _)| *a == t.address) {
            let line = ctx.line_of(*first);
            ctx.error_help(
                *span,
                format!("duplicate target `{}`", t.address),
                format!("already listed on line {line}"),
            );
        } else {
            addresses.push((&t.address, *span));
        }
    }
    match &discovery_span {
        Some((kind, span)) if kind != "static" && !targets.is_empty() => {
            ctx.error_help(
                *span,
                format!("upstream `{upstream_name}` has both targets and discovery \"{kind}\""),
                "targets come from discovery; remove the `target` entries or use discovery \"static\"",
            );
        }
        Some((kind, _)) if kind != "static" => {}
        _ if targets.is_empty() && !wrote_targets(node) => ctx.error_help(
            name_span(node),
            format!("upstream `{upstream_name}` has no targets"),
            "add `target \"10.0.0.1:8080\"` or a `discovery` block",
        ),
        _ => {}
    }
    let endpoints = pb::Endpoints {
        upstream: upstream_name.clone(),
        targets: targets.into_iter().map(|(t, _)| t).collect(),
    };
    Some((upstream_name, span, (u, endpoints)))
}

/// Whether the block has any `target` (valid or not), directly or in `targets`.
fn wrote_targets(node: &KdlNode) -> bool {
    children(node).iter().any(|c| {
        name(c) == "target"
            || (name(c) == "targets" && children(c).iter().any(|t| name(t) == "target"))
    })
}

/// `target "addr" weight=1` or `target { address "…" weight 1 }`.
fn target(ctx: &mut Ctx, node: &KdlNode) -> Option<(pb::Target, SourceSpan)> {
    let mut t = pb::Target {
        address: String::new(),
        weight: 1,
        health: pb::TargetHealth::Unknown as i32,
        zone: String::new(),
    };
    let span = name_span(node);
    if node.children().is_some() {
        ctx.check_props(node, &[]);
        ctx.no_args(node);
        let mut seen = Seen::default();
        for child in children(node) {
            if !seen.first(ctx, child, &[]) {
                continue;
            }
            match name(child) {
                "address" => {
                    t.address =
                        checked(ctx, child, |s| values::check_address(s, false)).unwrap_or_default()
                }
                "weight" => t.weight = ctx.u32(child, 0, 10_000).unwrap_or(t.weight),
                "zone" => t.zone = ctx.string(child).unwrap_or_default(),
                _ => ctx.unknown_node(child, "target", TARGET),
            }
        }
        if t.address.is_empty() {
            if !children(node).iter().any(|c| name(c) == "address") {
                ctx.error_help(
                    span,
                    "`target` has no `address`",
                    "add `address \"10.0.0.1:8080\"`",
                );
            }
            return None;
        }
        return Some((t, span));
    }
    ctx.check_props(node, &["weight", "zone"]);
    let entry = ctx.exactly_one_arg(node)?;
    let address = ctx.entry_str(entry, "target address")?;
    if let Err(e) = values::check_address(&address, false) {
        ctx.error(entry.span(), e);
        return None;
    }
    t.address = address;
    if let Some(w) = ctx.prop(node, "weight") {
        t.weight = u32::try_from(ctx.entry_uint(w, "weight", 0, 10_000)?).ok()?;
    }
    if let Some(z) = ctx.prop(node, "zone") {
        t.zone = ctx.entry_str(z, "zone")?;
    }
    Some((t, span))
}

fn discovery(ctx: &mut Ctx, node: &KdlNode) -> Option<pb::discovery::Source> {
    ctx.check_props(node, &[]);
    #[derive(Clone, Copy)]
    enum Kind {
        Static,
        Dns,
        Consul,
        Kubernetes,
    }
    let kinds = [
        ("static", Kind::Static),
        ("dns", Kind::Dns),
        ("consul", Kind::Consul),
        ("kubernetes", Kind::Kubernetes),
    ];
    let entry = ctx.exactly_one_arg(node)?;
    let kind = ctx.entry_choice(entry, "discovery", &kinds)?;
    if let Kind::Static = kind {
        ctx.no_children(node);
        return Some(pb::discovery::Source::Static(pb::StaticDiscovery {}));
    }
    if !require_block(ctx, node) {
        return None;
    }
    let mut seen = Seen::default();
    match kind {
        Kind::Static => None,
        Kind::Dns => {
            let mut d = pb::DnsDiscovery {
                hostname: String::new(),
                port: 0,
                record_type: pb::DnsRecordType::A as i32,
                refresh_interval_ms: 30_000,
                resolver: String::new(),
                empty_grace_ms: None,
            };
            for child in children(node) {
                if !seen.first(ctx, child, &[]) {
                    continue;
                }
                match name(child) {
                    "hostname" => {
                        d.hostname = checked(ctx, child, values::check_hostname).unwrap_or_default()
                    }
                    "port" => d.port = ctx.u32(child, 1, 65_535).unwrap_or_default(),
                    "record-type" => {
                        let types = [
                            ("A", pb::DnsRecordType::A),
                            ("AAAA", pb::DnsRecordType::Aaaa),
                            ("SRV", pb::DnsRecordType::Srv),
                        ];
                        if let Some(v) = ctx.choice(child, &types) {
                            d.record_type = v as i32;
                        }
                    }
                    "refresh-interval-secs" => {
                        d.refresh_interval_ms = refresh(ctx, child).unwrap_or(d.refresh_interval_ms)
                    }
                    // `nameserver` is the seed's name for the same option.
                    "resolver" | "nameserver" => {
                        d.resolver = checked(ctx, child, check_resolver).unwrap_or_default()
                    }
                    "empty-grace-secs" => d.empty_grace_ms = empty_grace(ctx, child),
                    _ => ctx.unknown_node(child, "discovery \"dns\"", DNS),
                }
            }
            require(
                ctx,
                node,
                "discovery \"dns\"",
                "hostname",
                !d.hostname.is_empty(),
            );
            let aliases: Vec<&KdlNode> = children(node)
                .iter()
                .filter(|c| name(c) == "nameserver")
                .collect();
            if let Some(alias) = aliases.first()
                && children(node).iter().any(|c| name(c) == "resolver")
            {
                ctx.error_help(
                    name_span(alias),
                    "`nameserver` and `resolver` are the same option",
                    "keep one of them",
                );
            }
            let srv = d.record_type == pb::DnsRecordType::Srv as i32;
            if !srv {
                require(ctx, node, "discovery \"dns\"", "port", d.port != 0);
            }
            Some(pb::discovery::Source::Dns(d))
        }
        Kind::Consul => {
            let mut c = pb::ConsulDiscovery {
                address: String::new(),
                service: String::new(),
                datacenter: String::new(),
                tag: String::new(),
                healthy_only: true,
                refresh_interval_ms: 15_000,
                token: String::new(),
                empty_grace_ms: None,
                ca_file: String::new(),
            };
            for child in children(node) {
                if !seen.first(ctx, child, &[]) {
                    continue;
                }
                match name(child) {
                    "address" => {
                        c.address = checked(ctx, child, consul_address).unwrap_or_default();
                    }
                    "service" => c.service = ctx.string(child).unwrap_or_default(),
                    "datacenter" => c.datacenter = ctx.string(child).unwrap_or_default(),
                    "tag" => c.tag = ctx.string(child).unwrap_or_default(),
                    "healthy-only" => c.healthy_only = ctx.boolean(child).unwrap_or(c.healthy_only),
                    "refresh-interval-secs" => {
                        c.refresh_interval_ms = refresh(ctx, child).unwrap_or(c.refresh_interval_ms)
                    }
                    "token" => c.token = ctx.string(child).unwrap_or_default(),
                    "ca-file" => c.ca_file = ctx.string(child).unwrap_or_default(),
                    "empty-grace-secs" => c.empty_grace_ms = empty_grace(ctx, child),
                    _ => ctx.unknown_node(child, "discovery \"consul\"", CONSUL),
                }
            }
            require(
                ctx,
                node,
                "discovery \"consul\"",
                "address",
                !c.address.is_empty(),
            );
            require(
                ctx,
                node,
                "discovery \"consul\"",
                "service",
                !c.service.is_empty(),
            );
            Some(pb::discovery::Source::Consul(c))
        }
        Kind::Kubernetes => {
            let mut k = pb::KubernetesDiscovery {
                namespace: "default".into(),
                service: String::new(),
                port: String::new(),
                refresh_interval_ms: 30_000,
                api_server: String::new(),
                token_file: String::new(),
                empty_grace_ms: None,
                kubeconfig: String::new(),
                ca_file: String::new(),
            };
            for child in children(node) {
                if !seen.first(ctx, child, &[]) {
                    continue;
                }
                match name(child) {
                    "namespace" => {
                        k.namespace = checked(ctx, child, values::check_name).unwrap_or_default()
                    }
                    "service" => {
                        k.service = checked(ctx, child, values::check_name).unwrap_or_default()
                    }
                    "port" => {
                        let Some(entry) = ctx.one_arg(child) else {
                            continue;
                        };
                        k.port = match entry.value() {
                            KdlValue::Integer(_) => ctx
                                .entry_uint(entry, "port", 1, 65_535)
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            _ => ctx.entry_str(entry, "port").unwrap_or_default(),
                        };
                    }
                    "refresh-interval-secs" => {
                        k.refresh_interval_ms = refresh(ctx, child).unwrap_or(k.refresh_interval_ms)
                    }
                    "api-server" => {
                        k.api_server =
                            checked(ctx, child, |s| values::check_url(s, &["http", "https"]))
                                .unwrap_or_default()
                    }
                    "token-file" => k.token_file = ctx.string(child).unwrap_or_default(),
                    "kubeconfig" => k.kubeconfig = ctx.string(child).unwrap_or_default(),
                    "ca-file" => k.ca_file = ctx.string(child).unwrap_or_default(),
                    "empty-grace-secs" => k.empty_grace_ms = empty_grace(ctx, child),
                    _ => ctx.unknown_node(child, "discovery \"kubernetes\"", KUBERNETES),
                }
            }
            require(
                ctx,
                node,
                "discovery \"kubernetes\"",
                "service",
                !k.service.is_empty(),
            );
            require(
                ctx,
                node,
                "discovery \"kubernetes\"",
                "port",
                !k.port.is_empty(),
            );
            Some(pb::discovery::Source::Kubernetes(k))
        }
    }
}

fn consul_address(s: &str) -> Result<(), String> {
    if s.contains("://") {
        values::check_url(s, &["http", "https"])
    } else {
        values::check_address(s, false)
    }
}

/// `empty-grace-secs N`: 0 believes an empty answer at once; unset = the
/// runner's default (30 s).
fn empty_grace(ctx: &mut Ctx, node: &KdlNode) -> Option<u64> {
    ctx.uint(node, 0, 86_400).map(|s| s * 1000)
}

/// A resolver is asked by IP: `host:port` with a name would need a resolver
/// to find the resolver.
fn check_resolver(s: &str) -> Result<(), String> {
    s.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
        format!("invalid resolver `{s}`: expected an IP address and port, e.g. \"10.0.0.2:53\" or \"[fd00::2]:53\"")
    })
}

fn refresh(ctx: &mut Ctx, node: &KdlNode) -> Option<u64> {
    ctx.uint(node, 1, 86_400).map(|s| s * 1000)
}

fn require(ctx: &mut Ctx, node: &KdlNode, block: &str, field: &str, present: bool) {
    // A field that is present with a bad value was reported already.
    let written = children(node).iter().any(|c| name(c) == field);
    if !present && !written {
        let span = name_span(node);
        ctx.error_help(
            span,
            format!("`{block}` needs `{field}`"),
            format!("add `{field} …` inside the block"),
        );
    }
}

fn load_balancing(ctx: &mut Ctx, node: &KdlNode, lb: &mut pb::LoadBalancing) {
    ctx.check_props(node, &[]);
    let Some(entry) = ctx.exactly_one_arg(node) else {
        return;
    };
    let Some(algorithm) = ctx.entry_choice(entry, "load-balancing algorithm", ALGORITHMS) else {
        return;
    };
    lb.algorithm = algorithm as i32;
    let consistent = algorithm == pb::LoadBalancingAlgorithm::ConsistentHash;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "key" if consistent => {
                if let Some(v) = checked(ctx, child, check_hash_key) {
                    lb.hash_key = v;
                }
            }
            "virtual-nodes" if consistent => {
                if let Some(v) = ctx.u32(child, 1, 1000) {
                    lb.virtual_nodes = v;
                }
            }
            "key" | "virtual-nodes" => ctx.error_help(
                name_span(child),
                format!("`{}` only applies to consistent_hash", name(child)),
                "use `load-balancing \"consistent_hash\" { key \"…\" }` or remove it",
            ),
            _ => ctx.unknown_node(child, "load-balancing", LOAD_BALANCING),
        }
    }
    if consistent {
        if lb.hash_key.is_empty() && !children(node).iter().any(|c| name(c) == "key") {
            ctx.error_help(
                entry.span(),
                "consistent_hash needs a `key`",
                "add `{ key \"header:X-Session-ID\" }` (or cookie:NAME, client-ip, path)",
            );
        }
        if lb.virtual_nodes == 0 {
            lb.virtual_nodes = 160;
        }
    }
}

pub(crate) fn check_hash_key(key: &str) -> Result<(), String> {
    match key.split_once(':') {
        _ if key == "client-ip" || key == "path" => Ok(()),
        Some(("header", h)) => values::check_header_name(h),
        Some(("cookie", c)) if !c.is_empty() => Ok(()),
        _ => Err(format!(
            "invalid hash key `{key}`: expected `header:NAME`, `cookie:NAME`, `client-ip` or `path`"
        )),
    }
}

fn health_check(ctx: &mut Ctx, node: &KdlNode, hc: &mut pb::HealthCheck) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    hc.enabled = true;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "enabled" => hc.enabled = ctx.boolean(child).unwrap_or(hc.enabled),
            "type" => {
                ctx.check_props(child, &[]);
                let Some(entry) = ctx.exactly_one_arg(child) else {
                    continue;
                };
                let kinds = [
                    ("http", pb::HealthCheckKind::Http),
                    ("tcp", pb::HealthCheckKind::Tcp),
                ];
                let Some(kind) = ctx.entry_choice(entry, "health-check type", &kinds) else {
                    continue;
                };
                hc.kind = kind as i32;
                if kind == pb::HealthCheckKind::Tcp {
                    ctx.no_children(child);
                    continue;
                }
                let mut inner = Seen::default();
                for opt in children(child) {
                    if !inner.first(ctx, opt, &[]) {
                        continue;
                    }
                    match name(opt) {
                        "path" => {
                            hc.path = checked(ctx, opt, values::check_path).unwrap_or_default()
                        }
                        "expected-status" => {
                            hc.expected_status = ctx.u32(opt, 100, 599).unwrap_or(200)
                        }
                        "host" => {
                            hc.host =
                                checked(ctx, opt, values::check_host_pattern).unwrap_or_default()
                        }
                        _ => ctx.unknown_node(opt, "type \"http\"", HTTP_CHECK),
                    }
                }
            }
            "interval-secs" => {
                hc.interval_ms = ctx
                    .uint(child, 1, 3600)
                    .map_or(hc.interval_ms, |s| s * 1000)
            }
            "timeout-secs" => {
                hc.timeout_ms = ctx.uint(child, 1, 600).map_or(hc.timeout_ms, |s| s * 1000)
            }
            "healthy-threshold" => {
                hc.healthy_threshold = ctx.u32(child, 1, 100).unwrap_or(hc.healthy_threshold)
            }
            "unhealthy-threshold" => {
                hc.unhealthy_threshold = ctx.u32(child, 1, 100).unwrap_or(hc.unhealthy_threshold)
            }
            _ => ctx.unknown_node(child, "health-check", HEALTH_CHECK),
        }
    }
    if hc.timeout_ms > hc.interval_ms {
        ctx.error_help(
            name_span(node),
            "health-check `timeout-secs` is longer than `interval-secs`",
            "a check must finish before the next one starts",
        );
    }
}

fn passive(ctx: &mut Ctx, node: &KdlNode, p: &mut pb::PassiveHealth) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "enabled" => p.enabled = ctx.boolean(child).unwrap_or(p.enabled),
            "failure-rate-percent" => {
                p.failure_rate_percent = ctx.u32(child, 1, 100).unwrap_or(p.failure_rate_percent)
            }
            "min-requests" => {
                p.min_requests = ctx.u32(child, 1, 1_000_000).unwrap_or(p.min_requests)
            }
            "consecutive-failures" => {
                p.consecutive_failures = ctx.u32(child, 0, 10_000).unwrap_or(p.consecutive_failures)
            }
            "ejection-secs" => {
                p.ejection_ms = ctx.uint(child, 1, 3600).map_or(p.ejection_ms, |s| s * 1000)
            }
            _ => ctx.unknown_node(child, "passive-health", PASSIVE),
        }
    }
}

pub(super) fn circuit_breaker(ctx: &mut Ctx, node: &KdlNode, b: &mut pb::CircuitBreaker) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    b.enabled = true;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "enabled" => b.enabled = ctx.boolean(child).unwrap_or(b.enabled),
            "failure-threshold" => {
                b.failure_threshold = ctx.u32(child, 1, 10_000).unwrap_or(b.failure_threshold)
            }
            "success-threshold" => {
                b.success_threshold = ctx.u32(child, 1, 10_000).unwrap_or(b.success_threshold)
            }
            "timeout-seconds" => {
                b.open_ms = ctx.uint(child, 1, 3600).map_or(b.open_ms, |s| s * 1000)
            }
            _ => ctx.unknown_node(child, "circuit-breaker", BREAKER),
        }
    }
}

fn pool(ctx: &mut Ctx, node: &KdlNode, p: &mut pb::ConnectionPool) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "max-connections" => {
                p.max_connections = ctx.u32(child, 1, 1_000_000).unwrap_or(p.max_connections)
            }
            "max-idle" => p.max_idle = ctx.u32(child, 0, 1_000_000).unwrap_or(p.max_idle),
            "idle-timeout-secs" => {
                p.idle_timeout_ms = ctx
                    .uint(child, 1, 86_400)
                    .map_or(p.idle_timeout_ms, |s| s * 1000)
            }
            _ => ctx.unknown_node(child, "connection-pool", POOL),
        }
    }
    if p.max_idle > p.max_connections {
        ctx.error_help(
            name_span(node),
            "`max-idle` is larger than `max-connections`",
            "idle connections count towards `max-connections`",
        );
    }
}

fn timeouts(ctx: &mut Ctx, node: &KdlNode, t: &mut pb::Timeouts) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    let mut set: Vec<(&str, SourceSpan)> = Vec::new();
    for child in children(node) {
        let n = name(child);
        let Some((field, _unit)) = n.rsplit_once('-') else {
            ctx.unknown_node(child, "timeouts", TIMEOUTS);
            continue;
        };
        if !TIMEOUTS.contains(&n) {
            ctx.unknown_node(child, "timeouts", TIMEOUTS);
            continue;
        }
        if let Some((_, first)) = set.iter().find(|(f, _)| *f == field) {
            let line = ctx.line_of(*first);
            ctx.error_help(
                name_span(child),
                format!("`{field}` timeout is set twice"),
                format!("already set on line {line}"),
            );
            continue;
        }
        set.push((field, name_span(child)));
        let Some(ms) = ctx.duration_ms(child, 86_400) else {
            continue;
        };
        if ms == 0 {
            ctx.error(name_span(child), format!("`{n}` must be greater than zero"));
            continue;
        }
        match field {
            "connect" => t.connect_ms = ms,
            "request" => t.request_ms = ms,
            "read" => t.read_ms = ms,
            _ => t.write_ms = ms,
        }
    }
}

fn retry(ctx: &mut Ctx, node: &KdlNode, r: &mut pb::Retry) {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "attempts" => r.attempts = ctx.u32(child, 1, 10).unwrap_or(r.attempts),
            "backoff-ms" => r.backoff_ms = ctx.uint(child, 0, 60_000).unwrap_or(r.backoff_ms),
            "on-status" => {
                ctx.check_props(child, &[]);
                ctx.no_children(child);
                r.on_status.clear();
                for entry in args(child) {
                    if let Some(s) = ctx.entry_uint(entry, "on-status", 500, 599) {
                        r.on_status.push(s as u32);
                    }
                }
                if args(child).next().is_none() {
                    ctx.error(
                        name_span(child),
                        "`on-status` needs at least one status (500-599)",
                    );
                }
            }
            "budget-percent" => {
                r.budget_percent = ctx.u32(child, 0, 100).unwrap_or(r.budget_percent)
            }
            "min-retries-per-second" => {
                r.min_retries_per_second = ctx
                    .u32(child, 0, 100_000)
                    .unwrap_or(r.min_retries_per_second)
            }
            _ => ctx.unknown_node(child, "retry", RETRY),
        }
    }
}

// === upstream tls ===

const UPSTREAM_TLS: &[&str] = &[
    "sni",
    "ca-file",
    "client-cert",
    "client-key",
    "insecure-skip-verify",
    "alpn",
];

/// `tls { … }` on an upstream: TLS from the proxy to the targets. The block
/// alone (even empty) turns TLS on with system roots and the target's host
/// as server name. Paths stay unresolved (`${VAR}`); the proxy reads them.
fn upstream_tls(ctx: &mut Ctx, node: &KdlNode) -> pb::UpstreamTls {
    ctx.check_props(node, &[]);
    ctx.no_args(node);
    let mut t = pb::UpstreamTls {
        sni: String::new(),
        ca_file: String::new(),
        client_cert_file: String::new(),
        client_key_file: String::new(),
        insecure_skip_verify: false,
        alpn: vec!["http/1.1".into()],
    };
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "sni" => t.sni = checked(ctx, child, check_sni).unwrap_or_default(),
            "ca-file" => t.ca_file = checked(ctx, child, check_file).unwrap_or_default(),
            "client-cert" => {
                t.client_cert_file = checked(ctx, child, check_file).unwrap_or_default()
            }
            "client-key" => t.client_key_file = checked(ctx, child, check_file).unwrap_or_default(),
            "insecure-skip-verify" => {
                t.insecure_skip_verify = ctx.boolean(child).unwrap_or(t.insecure_skip_verify)
            }
            "alpn" => {
                let mut alpn = Vec::new();
                for (v, span) in ctx.strings(child) {
                    if v == "h2" || v == "http/1.1" {
                        if !alpn.contains(&v) {
                            alpn.push(v);
                        }
                    } else {
                        ctx.error_help(
                            span,
                            format!("unknown ALPN protocol `{v}`"),
                            "use \"h2\" and/or \"http/1.1\"",
                        );
                    }
                }
                if !alpn.is_empty() {
                    t.alpn = alpn;
                }
            }
            _ => ctx.unknown_node(child, "tls", UPSTREAM_TLS),
        }
    }
    let find = |n: &str| children(node).iter().find(|c| name(c) == n);
    match (find("client-cert"), find("client-key")) {
        (Some(c), None) => ctx.error_help(
            name_span(c),
            "`client-cert` without `client-key`",
            "mTLS needs both: add `client-key \"/path/to/client.key\"`",
        ),
        (None, Some(k)) => ctx.error_help(
            name_span(k),
            "`client-key` without `client-cert`",
            "mTLS needs both: add `client-cert \"/path/to/client.pem\"`",
        ),
        _ => {}
    }
    if t.insecure_skip_verify
        && let Some(ca) = find("ca-file")
    {
        ctx.error_help(
            name_span(ca),
            "`ca-file` has no effect with `insecure-skip-verify #true`",
            "remove one of them: either verify against the CA or skip verification",
        );
    }
    t
}

/// A server name for SNI: a DNS name (IP addresses are sent as no SNI, so
/// they are refused here). `${VAR}` references are checked with defaults.
fn check_sni(value: &str) -> Result<(), String> {
    let Some(v) = env_default(value)? else {
        return Ok(());
    };
    if v.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "`sni` must be a DNS name, not the IP address `{v}`; leave it out to verify the target's IP"
        ));
    }
    values::check_hostname(&v).map_err(|e| format!("invalid `sni`: {e}"))
}

/// A file path: non-empty, no NUL.
fn check_file(value: &str) -> Result<(), String> {
    let v = env_default(value)?.unwrap_or_else(|| value.to_string());
    if value.is_empty() || v.contains('\0') {
        return Err("expected a file path".into());
    }
    Ok(())
}

/// The value with `${VAR:-default}` defaults applied; `None` when a
/// reference has no default (only its syntax can be checked then).
fn env_default(value: &str) -> Result<Option<String>, String> {
    crate::env::references(value).map_err(|e| e.to_string())?;
    Ok(crate::env::with_defaults(value))
}
