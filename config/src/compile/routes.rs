//! `routes { route "name" { … } }`: matchers, priority, policies, and the
//! references to an upstream, filters and agents.

use kdl::KdlNode;
use miette::SourceSpan;
use sentinel_proto as pb;

use super::{Builder, PRIORITIES, checked, not_supported, require_block, resource_name};
use crate::reader::{Ctx, Seen, args, children, name, name_span};
use crate::values;

const ROUTE: &[&str] = &[
    "priority", "matches", "upstream", "filters", "agents", "policies",
];
const MATCHES: &[&str] = &[
    "path-prefix",
    "path",
    "path-regex",
    "host",
    "method",
    "header",
    "query",
];
const POLICIES: &[&str] = &[
    "timeout-secs",
    "failure-mode",
    "agent-timeout-ms",
    "max-body-bytes",
    "request-headers",
    "response-headers",
    "rate-limit",
];
const HEADER_REWRITE: &[&str] = &["set", "remove"];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("routes", &["route"]),
    ("route", ROUTE),
    ("matches", MATCHES),
    ("policies", POLICIES),
    ("request-headers", HEADER_REWRITE),
    ("response-headers", HEADER_REWRITE),
];

pub(crate) const FAILURE_MODES: &[(&str, pb::FailureMode)] = &[
    ("open", pb::FailureMode::Open),
    ("closed", pb::FailureMode::Closed),
];

pub(super) fn route(
    ctx: &mut Ctx,
    node: &KdlNode,
    builder: &mut Builder,
) -> Option<(String, SourceSpan, pb::Route)> {
    ctx.check_props(node, &[]);
    let (route_name, span) = resource_name(ctx, node)?;
    let mut r = pb::Route {
        name: route_name.clone(),
        priority: 500,
        r#match: Some(pb::RouteMatch::default()),
        upstream: String::new(),
        filters: Vec::new(),
        agents: Vec::new(),
        policies: Some(pb::RoutePolicies {
            timeout_ms: 0,
            failure_mode: pb::FailureMode::Closed as i32,
            max_body_bytes: 0,
            request_headers: Some(pb::HeaderRewrite::default()),
            response_headers: Some(pb::HeaderRewrite::default()),
            agent_failure_mode: 0,
            agent_timeout_ms: 0,
        }),
    };
    let mut seen = Seen::default();
    let mut written = Written::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "priority" => {
                if let Some(entry) = ctx.one_arg(child) {
                    if let kdl::KdlValue::Integer(_) = entry.value() {
                        if let Some(v) = ctx.entry_uint(entry, "priority", 0, 10_000) {
                            r.priority = v as i32;
                        }
                    } else if let Some(v) = ctx.entry_choice(entry, "priority", PRIORITIES) {
                        r.priority = v;
                    }
                }
            }
            "matches" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                if require_block(ctx, child) {
                    r.r#match = Some(matches(ctx, child));
                }
            }
            "upstream" => {
                if let Some(v) = ctx.string(child) {
                    builder.refer("upstream", v.clone(), value_span(child));
                    r.upstream = v;
                }
            }
            "filters" | "agents" => {
                let kind = if name(child) == "filters" {
                    "filter"
                } else {
                    "agent"
                };
                let mut list = Vec::new();
                for (v, span) in ctx.strings(child) {
                    if list.contains(&v) {
                        ctx.error(span, format!("{kind} `{v}` is listed twice"));
                        continue;
                    }
                    builder.refer(kind, v.clone(), span);
                    list.push(v);
                }
                if kind == "filter" {
                    r.filters = list;
                } else {
                    r.agents = list;
                }
            }
            "policies" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                if require_block(ctx, child) {
                    written = policies(ctx, child, r.policies.get_or_insert_with(Default::default));
                }
            }
            _ => ctx.unknown_node(child, "route", ROUTE),
        }
    }
    agent_overrides(ctx, &mut r, written);
    if r.upstream.is_empty() && !seen_upstream(node) {
        ctx.error_help(
            name_span(node),
            format!("route `{route_name}` has no `upstream`"),
            "add `upstream \"name-of-an-upstream\"`",
        );
    }
    Some((route_name, span, r))
}

fn seen_upstream(node: &KdlNode) -> bool {
    children(node).iter().any(|c| name(c) == "upstream")
}

fn value_span(node: &KdlNode) -> SourceSpan {
    args(node)
        .next()
        .map_or_else(|| name_span(node), |e| e.span())
}

fn matches(ctx: &mut Ctx, node: &KdlNode) -> pb::RouteMatch {
    let mut m = pb::RouteMatch::default();
    let mut path_kind: Option<(&str, SourceSpan)> = None;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &["header", "query"]) {
            continue;
        }
        let n = name(child);
        if matches!(n, "path-prefix" | "path" | "path-regex") {
            if let Some((first, span)) = path_kind {
                let line = ctx.line_of(span);
                ctx.error_help(
                    name_span(child),
                    format!("`{n}` conflicts with `{first}` on line {line}"),
                    "a route matches on one of `path-prefix`, `path` or `path-regex`",
                );
                continue;
            }
            path_kind = Some((n, name_span(child)));
        }
        match n {
            "path-prefix" => {
                m.path_prefix = checked(ctx, child, values::check_path).unwrap_or_default()
            }
            "path" => m.path_exact = checked(ctx, child, values::check_path).unwrap_or_default(),
            "path-regex" => {
                m.path_regex = checked(ctx, child, values::check_regex).unwrap_or_default()
            }
            "host" => {
                for (h, span) in ctx.strings(child) {
                    match values::check_host_pattern(&h) {
                        Ok(()) => m.hosts.push(h.to_ascii_lowercase()),
                        Err(e) => ctx.error(span, e),
                    }
                }
            }
            "method" => {
                for (v, span) in ctx.strings(child) {
                    let upper = v.to_ascii_uppercase();
                    if METHODS.contains(&upper.as_str()) {
                        m.methods.push(upper);
                    } else {
                        let help = crate::reader::suggest(&upper, METHODS)
                            .unwrap_or_else(|| format!("expected one of {}", METHODS.join(", ")));
                        ctx.error_help(span, format!("unknown HTTP method `{v}`"), help);
                    }
                }
            }
            "header" | "query" => {
                ctx.check_props(child, &[]);
                ctx.no_children(child);
                let values: Vec<_> = args(child).collect();
                let what = if n == "header" {
                    "header name"
                } else {
                    "query parameter"
                };
                let (Some(first), rest) = (values.first(), values.get(1..).unwrap_or(&[])) else {
                    ctx.error_help(
                        name_span(child),
                        format!("`{n}` needs a name"),
                        format!(
                            "write `{n} \"name\"` (present) or `{n} \"name\" \"value\"` (equal)"
                        ),
                    );
                    continue;
                };
                let Some(field) = ctx.entry_str(first, what) else {
                    continue;
                };
                if n == "header" {
                    if let Err(e) = values::check_header_name(&field) {
                        ctx.error(first.span(), e);
                        continue;
                    }
                } else if field.is_empty() {
                    ctx.error(first.span(), "query parameter name cannot be empty");
                    continue;
                }
                if rest.len() > 1 {
                    ctx.error(
                        rest[1].span(),
                        format!("`{n}` takes a name and at most one value"),
                    );
                }
                let value = match rest.first() {
                    Some(e) => match ctx.entry_str(e, &format!("{n} value")) {
                        Some(v) => Some(v),
                        None => continue,
                    },
                    None => None,
                };
                let present_only = value.is_none();
                let value = value.unwrap_or_default();
                if n == "header" {
                    m.headers.push(pb::HeaderMatch {
                        name: field.to_ascii_lowercase(),
                        value,
                        present_only,
                    });
                } else {
                    m.query.push(pb::QueryMatch {
                        name: field,
                        value,
                        present_only,
                    });
                }
            }
            _ => ctx.unknown_node(child, "matches", MATCHES),
        }
    }
    m
}

/// Policies written explicitly in a route's `policies` block that concern
/// its agents (applied once the whole route is read: `agents` may follow).
#[derive(Default, Clone, Copy)]
struct Written {
    failure_mode: Option<(pb::FailureMode, SourceSpan)>,
    agent_timeout: Option<(u64, SourceSpan)>,
}

/// A route's `failure-mode` (when written) and `agent-timeout-ms` override
/// its agents' own. Without agents, nothing a route runs can fail open
/// (local rate limits never fail, Redis filters carry their own
/// `on-redis-failure`): `open` there would be a promise the proxy cannot
/// keep, and an agent timeout would mean nothing.
fn agent_overrides(ctx: &mut Ctx, r: &mut pb::Route, written: Written) {
    let p = r.policies.get_or_insert_with(Default::default);
    if r.agents.is_empty() {
        if let Some((pb::FailureMode::Open, span)) = written.failure_mode {
            ctx.error_help(
                span,
                "route `failure-mode \"open\"` needs agents: no filter a route can run fails open",
                "list the route's `agents`, or remove it (routes fail closed), or set `on-redis-failure \"open\"` on a Redis rate-limit filter",
            );
        }
        if let Some((_, span)) = written.agent_timeout {
            ctx.error_help(
                span,
                "`agent-timeout-ms` on a route without agents",
                "list the route's `agents`, or remove it",
            );
        }
        return;
    }
    if let Some((mode, _)) = written.failure_mode {
        p.agent_failure_mode = mode as i32;
    }
    if let Some((ms, _)) = written.agent_timeout {
        p.agent_timeout_ms = ms;
    }
}

fn policies(ctx: &mut Ctx, node: &KdlNode, p: &mut pb::RoutePolicies) -> Written {
    let mut written = Written::default();
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "timeout-secs" => {
                if let Some(v) = ctx.duration_ms(child, 86_400) {
                    p.timeout_ms = v;
                }
            }
            "failure-mode" => {
                if let Some(v) = ctx.choice(child, FAILURE_MODES) {
                    p.failure_mode = v as i32;
                    written.failure_mode = Some((v, name_span(child)));
                }
            }
            "agent-timeout-ms" => {
                if let Some(v) = ctx.uint(child, 1, 60_000) {
                    written.agent_timeout = Some((v, name_span(child)));
                }
            }
            "max-body-bytes" => {
                if let Some(v) = ctx.uint(child, 0, 1 << 40) {
                    p.max_body_bytes = v;
                }
            }
            "request-headers" | "response-headers" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                if !require_block(ctx, child) {
                    continue;
                }
                let rewrite = header_rewrite(ctx, child);
                if name(child) == "request-headers" {
                    p.request_headers = Some(rewrite);
                } else {
                    p.response_headers = Some(rewrite);
                }
            }
            "rate-limit" => not_supported(
                ctx,
                child,
                "declare `filters { filter \"name\" { type \"rate-limit\" … } }` and list it in the route's `filters`",
            ),
            _ => ctx.unknown_node(child, "policies", POLICIES),
        }
    }
    written
}

fn header_rewrite(ctx: &mut Ctx, node: &KdlNode) -> pb::HeaderRewrite {
    let mut rw = pb::HeaderRewrite::default();
    for child in children(node) {
        match name(child) {
            "set" => {
                ctx.check_props(child, &[]);
                ctx.no_children(child);
                let values: Vec<_> = args(child).collect();
                if values.len() != 2 {
                    ctx.error_help(
                        name_span(child),
                        "`set` takes a header name and a value",
                        "write `set \"X-Name\" \"value\"`",
                    );
                    continue;
                }
                let (Some(n), Some(v)) = (
                    ctx.entry_str(values[0], "header name"),
                    ctx.entry_str(values[1], "header value"),
                ) else {
                    continue;
                };
                if let Err(e) = values::check_header_name(&n) {
                    ctx.error(values[0].span(), e);
                    continue;
                }
                if v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                    ctx.error(
                        values[1].span(),
                        "header value contains a line break or NUL",
                    );
                    continue;
                }
                let n = n.to_ascii_lowercase();
                if rw.set.iter().any(|h| h.name == n) {
                    ctx.error(values[0].span(), format!("header `{n}` is set twice"));
                    continue;
                }
                rw.set.push(pb::HeaderValue { name: n, value: v });
            }
            "remove" => {
                for (n, span) in ctx.strings(child) {
                    match values::check_header_name(&n) {
                        Ok(()) => rw.remove.push(n.to_ascii_lowercase()),
                        Err(e) => ctx.error(span, e),
                    }
                }
            }
            _ => ctx.unknown_node(child, name(node), HEADER_REWRITE),
        }
    }
    rw
}
