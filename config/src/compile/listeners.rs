//! `listeners { listener "name" { … } }`.
//!
//! Besides reading each listener, this module refuses two listeners that
//! would bind the same socket ([`check_addresses`]): every proxy would fail to
//! bind the second one and NACK the whole snapshot, so the mistake belongs at
//! validation, where it can point at both places.

use kdl::KdlNode;
use miette::SourceSpan;
use sentinel_proto as pb;

use std::net::SocketAddr;

use super::{Builder, checked, require_block, resource_name};
use crate::reader::{Ctx, Seen, args, children, name, name_span};
use crate::values;

const LISTENER: &[&str] = &[
    "address",
    "protocol",
    "tls",
    "max-connections",
    "http2",
    "keepalive-timeout-secs",
    "header-read-timeout-secs",
    "default-route",
];
const TLS: &[&str] = &[
    "cert-file",
    "key-file",
    "min-version",
    "alpn",
    "client-ca-file",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("listeners", &["listener"]),
    ("listener", LISTENER),
    ("tls", TLS),
];

pub(super) fn listener(
    ctx: &mut Ctx,
    node: &KdlNode,
    builder: &mut Builder,
) -> Option<(String, SourceSpan, pb::Listener)> {
    ctx.check_props(node, &[]);
    let (listener_name, span) = resource_name(ctx, node)?;
    let mut l = pb::Listener {
        name: listener_name.clone(),
        address: String::new(),
        protocol: pb::ListenerProtocol::Unspecified as i32,
        tls: None,
        max_connections: 0,
        http2: false,
        keepalive_timeout_ms: 60_000,
        header_read_timeout_ms: 10_000,
        default_route: String::new(),
    };
    let mut protocol_span = None;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "address" => {
                if let Some(v) = checked(ctx, child, |s| values::check_address(s, true)) {
                    let span = args(child)
                        .next()
                        .map_or_else(|| name_span(child), |e| e.span());
                    builder.listener_addresses.push(AddressAt {
                        listener: listener_name.clone(),
                        address: v.clone(),
                        span,
                    });
                    l.address = v;
                }
            }
            "protocol" => {
                let choices = [
                    ("http", pb::ListenerProtocol::Http),
                    ("https", pb::ListenerProtocol::Https),
                ];
                if let Some(v) = ctx.choice(child, &choices) {
                    l.protocol = v as i32;
                    protocol_span = Some(name_span(child));
                }
            }
            "tls" => {
                ctx.check_props(child, &[]);
                ctx.no_args(child);
                if require_block(ctx, child) {
                    l.tls = Some(tls(ctx, child));
                }
            }
            "max-connections" => {
                if let Some(v) = ctx.u32(child, 1, 10_000_000) {
                    l.max_connections = v;
                }
            }
            "http2" => {
                if let Some(v) = ctx.boolean(child) {
                    l.http2 = v;
                }
            }
            "keepalive-timeout-secs" => {
                if let Some(v) = ctx.uint(child, 1, 3600) {
                    l.keepalive_timeout_ms = v * 1000;
                }
            }
            "header-read-timeout-secs" => {
                if let Some(v) = ctx.uint(child, 1, 600) {
                    l.header_read_timeout_ms = v * 1000;
                }
            }
            "default-route" => {
                if let Some(v) = ctx.string(child) {
                    let span = args(child)
                        .next()
                        .map_or_else(|| name_span(child), |e| e.span());
                    builder.refer("route", v.clone(), span);
                    l.default_route = v;
                }
            }
            _ => ctx.unknown_node(child, "listener", LISTENER),
        }
    }
    if l.address.is_empty() && !children(node).iter().any(|c| name(c) == "address") {
        ctx.error_help(
            name_span(node),
            format!("listener `{listener_name}` has no `address`"),
            "add `address \"0.0.0.0:8080\"`",
        );
    }
    let https = pb::ListenerProtocol::Https as i32;
    match (l.protocol, &l.tls) {
        (p, None) if p == https => {
            ctx.error_help(
                protocol_span.unwrap_or_else(|| name_span(node)),
                format!("listener `{listener_name}` uses https but has no `tls` block"),
                "add `tls { cert-file \"…\" key-file \"…\" }`",
            );
        }
        (p, Some(_)) if p == pb::ListenerProtocol::Http as i32 => {
            ctx.error_help(
                protocol_span.unwrap_or_else(|| name_span(node)),
                format!("listener `{listener_name}` has a `tls` block but protocol \"http\""),
                "use `protocol \"https\"` or remove the `tls` block",
            );
        }
        (p, tls) if p == pb::ListenerProtocol::Unspecified as i32 => {
            l.protocol = if tls.is_some() {
                https
            } else {
                pb::ListenerProtocol::Http as i32
            };
        }
        _ => {}
    }
    Some((listener_name, span, l))
}

fn tls(ctx: &mut Ctx, node: &KdlNode) -> pb::ListenerTls {
    let mut t = pb::ListenerTls {
        cert_file: String::new(),
        key_file: String::new(),
        min_version: pb::TlsVersion::TlsVersion12 as i32,
        alpn: vec!["h2".into(), "http/1.1".into()],
        client_ca_file: String::new(),
    };
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "cert-file" => t.cert_file = ctx.string(child).unwrap_or_default(),
            "key-file" => t.key_file = ctx.string(child).unwrap_or_default(),
            "client-ca-file" => t.client_ca_file = ctx.string(child).unwrap_or_default(),
            "min-version" => {
                let versions = [
                    ("1.2", pb::TlsVersion::TlsVersion12),
                    ("1.3", pb::TlsVersion::TlsVersion13),
                ];
                if let Some(v) = ctx.choice(child, &versions) {
                    t.min_version = v as i32;
                }
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
            _ => ctx.unknown_node(child, "tls", TLS),
        }
    }
    for (field, value) in [("cert-file", &t.cert_file), ("key-file", &t.key_file)] {
        if value.is_empty() {
            ctx.error_help(
                name_span(node),
                format!("`tls` needs `{field}`"),
                format!("add `{field} \"/path/to/file.pem\"`"),
            );
        }
    }
    t
}

/// A listener's address as written, and where.
pub(super) struct AddressAt {
    listener: String,
    address: String,
    span: SourceSpan,
}

/// Whether two listener addresses would compete for the same socket.
///
/// The rule (docs/configuration.md, "Listener addresses"):
/// - an address holding a `${VAR}` reference is resolved on each proxy and is
///   never compared at validation;
/// - port 0 asks the OS for a free port and never conflicts;
/// - two IP addresses conflict when their ports are equal and either the IPs
///   are equal or one of them is the wildcard of the same family
///   (`0.0.0.0:80` overlaps `127.0.0.1:80`; Linux refuses the second bind
///   while the first listens). `[::]` does not overlap IPv4: the proxy binds
///   IPv6 sockets with `IPV6_V6ONLY`;
/// - two host names conflict when they are equal ignoring case, with equal
///   ports (what a name resolves to is the proxy's business).
pub(crate) fn addresses_conflict(a: &str, b: &str) -> bool {
    if a.contains("${") || b.contains("${") {
        return false;
    }
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => {
            if x.port() == 0 || x.port() != y.port() || x.is_ipv4() != y.is_ipv4() {
                return false;
            }
            x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified()
        }
        (Err(_), Err(_)) => {
            let split = |s: &str| {
                s.rsplit_once(':')
                    .map(|(h, p)| (h.to_ascii_lowercase(), p.to_string()))
            };
            match (split(a), split(b)) {
                (Some((ha, pa)), Some((hb, pb))) => pa != "0" && pa == pb && ha == hb,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Reports every listener whose address overlaps an earlier one's; the
/// diagnostic points at the later address and its help names the first.
pub(super) fn check_addresses(ctx: &mut Ctx, all: &[AddressAt]) {
    for (i, later) in all.iter().enumerate() {
        let Some(first) = all[..i]
            .iter()
            .find(|earlier| addresses_conflict(&earlier.address, &later.address))
        else {
            continue;
        };
        let line = ctx.line_of(first.span);
        let same = if first.address == later.address {
            "the same address".to_string()
        } else {
            format!("an overlapping address (`{}`)", first.address)
        };
        ctx.error_help(
            later.span,
            format!(
                "listener `{}` uses address `{}`, which listener `{}` already uses",
                later.listener, later.address, first.listener
            ),
            format!(
                "listener `{}` binds {same} on line {line}; give each listener its own address",
                first.listener
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::addresses_conflict;

    #[test]
    fn the_conflict_rule() {
        for (a, b, conflict) in [
            ("127.0.0.1:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "127.0.0.1:81", false),
            ("127.0.0.1:80", "127.0.0.2:80", false),
            ("0.0.0.0:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "0.0.0.0:80", true),
            ("[::]:80", "[::1]:80", true),
            ("[::]:80", "0.0.0.0:80", false),
            ("[::1]:80", "[0:0:0:0:0:0:0:1]:80", true),
            ("127.0.0.1:0", "127.0.0.1:0", false),
            ("${ADDR}", "${ADDR}", false),
            ("${HOST}:80", "127.0.0.1:80", false),
            ("localhost:80", "LOCALHOST:80", true),
            ("localhost:80", "localhost:81", false),
            ("localhost:80", "127.0.0.1:80", false),
        ] {
            assert_eq!(addresses_conflict(a, b), conflict, "{a} vs {b}");
        }
    }
}
