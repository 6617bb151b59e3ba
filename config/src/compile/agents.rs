//! `agents { agent "name" type="auth" { … } }`: external processes called on
//! the request path over a Unix socket or gRPC (the proxy side is
//! `data-plane/src/agents`; the protocol `proto/…/agent/v1/agent.proto`).
//!
//! Defaults follow the seed: `timeout-ms 100`, `connect-timeout-ms 1000`,
//! `failure-mode "closed"`, one attempt, health checks every 5 s,
//! the circuit breaker of upstreams, `body "none"`.

use kdl::KdlNode;
use miette::SourceSpan;
use sentinel_proto as pb;

use super::{checked, resource_name};
use crate::reader::{Ctx, Seen, children, name, name_span};
use crate::values;

const AGENT: &[&str] = &[
    "unix-socket",
    "grpc",
    "timeout-ms",
    "connect-timeout-ms",
    "failure-mode",
    "retry",
    "health-check",
    "circuit-breaker",
    "body",
    "max-body-bytes",
];
const BODY_MODES: &[(&str, pb::AgentBody)] = &[
    ("none", pb::AgentBody::None),
    ("buffered", pb::AgentBody::Buffered),
    ("streamed", pb::AgentBody::Streamed),
];
const RETRY: &[&str] = &["attempts", "backoff-ms"];
const HEALTH: &[&str] = &[
    "enabled",
    "interval-ms",
    "timeout-ms",
    "healthy-threshold",
    "unhealthy-threshold",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("agents", &["agent"]),
    ("agent", AGENT),
    ("agent retry", RETRY),
    ("agent health-check", HEALTH),
];

pub(super) fn agent(ctx: &mut Ctx, node: &KdlNode) -> Option<(String, SourceSpan, pb::Agent)> {
    ctx.check_props(node, &["type"]);
    let (agent_name, span) = resource_name(ctx, node)?;
    let mut a = pb::Agent {
        name: agent_name.clone(),
        agent_type: "custom".into(),
        transport: None,
        timeout_ms: 100,
        connect_timeout_ms: 1000,
        failure_mode: pb::FailureMode::Closed as i32,
        retry: Some(pb::AgentRetry {
            attempts: 1,
            backoff_ms: 10,
        }),
        health_check: Some(pb::AgentHealthCheck {
            enabled: true,
            interval_ms: 5000,
            timeout_ms: 100,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }),
        circuit_breaker: Some(super::upstreams::breaker_defaults(true)),
        body: pb::AgentBody::None as i32,
        max_body_bytes: 1024 * 1024,
    };
    if let Some(t) = ctx.prop(node, "type")
        && let Some(v) = ctx.entry_str(t, "agent type")
    {
        match values::check_name(&v) {
            Ok(()) => a.agent_type = v,
            Err(e) => ctx.error(t.span(), e),
        }
    }
    let mut transport_span: Option<SourceSpan> = None;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        let n = name(child);
        if matches!(n, "unix-socket" | "grpc") {
            if let Some(first) = transport_span {
                let line = ctx.line_of(first);
                ctx.error_help(
                    name_span(child),
                    format!("agent `{agent_name}` has two transports"),
                    format!("keep either `unix-socket` or `grpc` (the other is on line {line})"),
                );
                continue;
            }
            transport_span = Some(name_span(child));
        }
        match n {
            "unix-socket" => {
                let path = checked(ctx, child, |s| {
                    if s.starts_with('/') || s.starts_with("${") {
                        Ok(())
                    } else {
                        Err(format!("socket path `{s}` must be absolute"))
                    }
                });
                a.transport = path.map(pb::agent::Transport::UnixSocket);
            }
            "grpc" => {
                // Plaintext HTTP/2 only: agents run beside the proxy (same
                // host, pod or private network); TLS to agents is not built.
                let url = checked(ctx, child, |s| {
                    if s.starts_with("https://") {
                        return Err(format!(
                            "`{s}`: TLS to agents is not supported yet; use `http://` (HTTP/2 without TLS) or `unix-socket`"
                        ));
                    }
                    values::check_url(s, &["http"])
                });
                a.transport = url.map(pb::agent::Transport::Grpc);
            }
            "timeout-ms" => a.timeout_ms = ctx.uint(child, 1, 60_000).unwrap_or(a.timeout_ms),
            "connect-timeout-ms" => {
                a.connect_timeout_ms = ctx.uint(child, 1, 60_000).unwrap_or(a.connect_timeout_ms)
            }
            "failure-mode" => {
                if let Some(v) = ctx.choice(child, super::routes::FAILURE_MODES) {
                    a.failure_mode = v as i32;
                }
            }
            "retry" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                let r = a.retry.get_or_insert_with(Default::default);
                let mut inner = Seen::default();
                for opt in children(child) {
                    if !inner.first(ctx, opt, &[]) {
                        continue;
                    }
                    match name(opt) {
                        "attempts" => r.attempts = ctx.u32(opt, 1, 10).unwrap_or(r.attempts),
                        "backoff-ms" => {
                            r.backoff_ms = ctx.uint(opt, 0, 60_000).unwrap_or(r.backoff_ms)
                        }
                        _ => ctx.unknown_node(opt, "retry", RETRY),
                    }
                }
            }
            "health-check" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                let h = a.health_check.get_or_insert_with(Default::default);
                let mut inner = Seen::default();
                for opt in children(child) {
                    if !inner.first(ctx, opt, &[]) {
                        continue;
                    }
                    match name(opt) {
                        "enabled" => h.enabled = ctx.boolean(opt).unwrap_or(h.enabled),
                        "interval-ms" => {
                            h.interval_ms = ctx.uint(opt, 10, 3_600_000).unwrap_or(h.interval_ms)
                        }
                        "timeout-ms" => {
                            h.timeout_ms = ctx.uint(opt, 1, 600_000).unwrap_or(h.timeout_ms)
                        }
                        "healthy-threshold" => {
                            h.healthy_threshold =
                                ctx.u32(opt, 1, 100).unwrap_or(h.healthy_threshold)
                        }
                        "unhealthy-threshold" => {
                            h.unhealthy_threshold =
                                ctx.u32(opt, 1, 100).unwrap_or(h.unhealthy_threshold)
                        }
                        _ => ctx.unknown_node(opt, "health-check", HEALTH),
                    }
                }
            }
            "circuit-breaker" => super::upstreams::circuit_breaker(
                ctx,
                child,
                a.circuit_breaker.get_or_insert_with(Default::default),
            ),
            "body" => {
                if let Some(v) = ctx.choice(child, BODY_MODES) {
                    a.body = v as i32;
                }
            }
            "max-body-bytes" => {
                a.max_body_bytes = ctx.uint(child, 0, 1 << 30).unwrap_or(a.max_body_bytes)
            }
            _ => ctx.unknown_node(child, "agent", AGENT),
        }
    }
    if transport_span.is_none() {
        ctx.error_help(
            name_span(node),
            format!("agent `{agent_name}` has no transport"),
            "add `unix-socket \"/run/sentinel/agent.sock\"` or `grpc \"http://host:50051\"`",
        );
    }
    Some((agent_name, span, a))
}
