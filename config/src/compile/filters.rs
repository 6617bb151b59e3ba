//! `filters { filter "name" { type "rate-limit" … } }`.
//!
//! Only the rate-limit filter exists today; any other `type` is rejected as
//! not supported yet rather than ignored.

use kdl::KdlNode;
use miette::SourceSpan;
use sentinel_proto as pb;

use super::{checked, resource_name};
use crate::reader::{Ctx, Seen, args, children, name, name_span};
use crate::values;

const FILTER: &[&str] = &[
    "type",
    "max-rps",
    "burst",
    "key",
    "on-limit",
    "status-code",
    "backend",
    "algorithm",
    "redis-url",
    "redis-prefix",
    "redis-timeout-ms",
    "redis-pool-size",
    "redis-pool-timeout-ms",
    "fallback-to-local",
    "on-redis-failure",
];
const REDIS_ONLY: &[&str] = &[
    "redis-url",
    "redis-prefix",
    "redis-timeout-ms",
    "redis-pool-size",
    "redis-pool-timeout-ms",
    "fallback-to-local",
    "on-redis-failure",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[("filters", &["filter"]), ("filter", FILTER)];

/// Filter types the language knows; all but rate-limit are planned.
const TYPES: &[&str] = &["rate-limit", "headers", "cors", "compress", "auth"];

pub(super) fn filter(ctx: &mut Ctx, node: &KdlNode) -> Option<(String, SourceSpan, pb::Filter)> {
    ctx.check_props(node, &[]);
    let (filter_name, span) = resource_name(ctx, node)?;
    let type_node = children(node).iter().find(|c| name(c) == "type");
    let Some(type_node) = type_node else {
        ctx.error_help(
            name_span(node),
            format!("filter `{filter_name}` has no `type`"),
            "add `type \"rate-limit\"`",
        );
        return None;
    };
    let kind = ctx.string(type_node)?;
    if kind != "rate-limit" {
        let span = args(type_node)
            .next()
            .map_or_else(|| name_span(type_node), |e| e.span());
        if TYPES.contains(&kind.as_str()) {
            ctx.error_help(
                span,
                format!("filter type `{kind}` is not supported yet"),
                "supported: \"rate-limit\"",
            );
        } else {
            let help = crate::reader::suggest(&kind, &["rate-limit"])
                .unwrap_or_else(|| "supported: \"rate-limit\"".into());
            ctx.error_help(span, format!("unknown filter type `{kind}`"), help);
        }
        return None;
    }
    let rl = rate_limit(ctx, node)?;
    Some((
        filter_name.clone(),
        span,
        pb::Filter {
            name: filter_name,
            kind: Some(pb::filter::Kind::RateLimit(rl)),
        },
    ))
}

fn rate_limit(ctx: &mut Ctx, node: &KdlNode) -> Option<pb::RateLimit> {
    let mut rl = pb::RateLimit {
        max_rps: 0.0,
        burst: 0,
        key: vec![pb::RateLimitKeyPart {
            kind: pb::RateLimitKeyKind::ClientIp as i32,
            header: String::new(),
        }],
        on_limit: pb::OnLimit::Reject as i32,
        backend: pb::RateLimitBackend::Local as i32,
        algorithm: pb::RateLimitAlgorithm::Unspecified as i32,
        redis: None,
        status_code: 429,
    };
    let mut redis = pb::RedisBackend {
        url: String::new(),
        prefix: "sentinel:ratelimit:".into(),
        timeout_ms: 50,
        pool_size: 10,
        pool_timeout_ms: 1000,
        fallback_to_local: true,
        on_failure: pb::FailureMode::Open as i32,
    };
    let mut redis_options: Vec<SourceSpan> = Vec::new();
    let mut backend_span = None;
    let mut seen = Seen::default();
    let mut has_rps = false;
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        let n = name(child);
        if REDIS_ONLY.contains(&n) {
            redis_options.push(name_span(child));
        }
        match n {
            "type" => {}
            "max-rps" => {
                has_rps = true;
                if let Some(v) = ctx.float(child, 0.001, 10_000_000.0) {
                    rl.max_rps = v;
                }
            }
            "burst" => rl.burst = ctx.u32(child, 1, 100_000_000).unwrap_or(rl.burst),
            "key" => {
                if let Some(v) = ctx.string(child) {
                    let span = args(child)
                        .next()
                        .map_or_else(|| name_span(child), |e| e.span());
                    match parse_key(&v) {
                        Ok(parts) => rl.key = parts,
                        Err((msg, help)) => ctx.error_help(span, msg, help),
                    }
                }
            }
            "on-limit" => {
                let modes = [("reject", pb::OnLimit::Reject), ("log", pb::OnLimit::Log)];
                if let Some(v) = ctx.choice(child, &modes) {
                    rl.on_limit = v as i32;
                }
            }
            "status-code" => rl.status_code = ctx.u32(child, 400, 599).unwrap_or(rl.status_code),
            "backend" => {
                let backends = [
                    ("local", pb::RateLimitBackend::Local),
                    ("redis", pb::RateLimitBackend::Redis),
                ];
                if let Some(v) = ctx.choice(child, &backends) {
                    rl.backend = v as i32;
                    backend_span = Some(name_span(child));
                }
            }
            "algorithm" => {
                let algorithms = [
                    ("token-bucket", pb::RateLimitAlgorithm::TokenBucket),
                    ("sliding-window", pb::RateLimitAlgorithm::SlidingWindow),
                ];
                if let Some(v) = ctx.choice(child, &algorithms) {
                    rl.algorithm = v as i32;
                }
            }
            "redis-url" => {
                redis.url = checked(ctx, child, values::check_redis_url).unwrap_or_default()
            }
            "redis-prefix" => redis.prefix = ctx.string(child).unwrap_or(redis.prefix),
            "redis-timeout-ms" => {
                redis.timeout_ms = ctx.uint(child, 1, 60_000).unwrap_or(redis.timeout_ms)
            }
            "redis-pool-size" => {
                redis.pool_size = ctx.u32(child, 1, 10_000).unwrap_or(redis.pool_size)
            }
            "redis-pool-timeout-ms" => {
                redis.pool_timeout_ms = ctx.uint(child, 1, 600_000).unwrap_or(redis.pool_timeout_ms)
            }
            "fallback-to-local" => {
                redis.fallback_to_local = ctx.boolean(child).unwrap_or(redis.fallback_to_local)
            }
            "on-redis-failure" => {
                if let Some(v) = ctx.choice(child, super::routes::FAILURE_MODES) {
                    redis.on_failure = v as i32;
                }
            }
            _ => ctx.unknown_node(child, "filter", FILTER),
        }
    }
    if !has_rps {
        ctx.error_help(
            name_span(node),
            "rate-limit filter has no `max-rps`",
            "add `max-rps 100`",
        );
    }
    if rl.burst == 0 {
        rl.burst = (rl.max_rps.ceil() as u32).max(1);
    }
    if rl.backend == pb::RateLimitBackend::Redis as i32 {
        if redis.url.is_empty() && !children(node).iter().any(|c| name(c) == "redis-url") {
            ctx.error_help(
                backend_span.unwrap_or_else(|| name_span(node)),
                "backend \"redis\" needs `redis-url`",
                "add `redis-url \"redis://host:6379\"`",
            );
        }
        if rl.algorithm == pb::RateLimitAlgorithm::Unspecified as i32 {
            rl.algorithm = pb::RateLimitAlgorithm::SlidingWindow as i32;
        }
        rl.redis = Some(redis);
    } else {
        for span in redis_options {
            ctx.error_help(
                span,
                "Redis options need `backend \"redis\"`",
                "add `backend \"redis\"` or remove this option",
            );
        }
        if rl.algorithm == pb::RateLimitAlgorithm::SlidingWindow as i32 {
            ctx.error_help(
                name_span(node),
                "the local backend uses a token bucket",
                "remove `algorithm \"sliding-window\"` or use `backend \"redis\"`",
            );
        }
        rl.algorithm = pb::RateLimitAlgorithm::TokenBucket as i32;
    }
    Some(rl)
}

/// `client-ip`, `path`, `header:NAME`, or a comma-separated combination.
pub(crate) fn parse_key(key: &str) -> Result<Vec<pb::RateLimitKeyPart>, (String, String)> {
    let mut parts = Vec::new();
    for part in key.split(',') {
        let part = part.trim();
        let (kind, header) = match part.split_once(':') {
            None if part == "client-ip" => (pb::RateLimitKeyKind::ClientIp, String::new()),
            None if part == "path" => (pb::RateLimitKeyKind::Path, String::new()),
            Some(("header", h)) if values::check_header_name(h).is_ok() => {
                (pb::RateLimitKeyKind::Header, h.to_ascii_lowercase())
            }
            _ => {
                let help =
                    crate::reader::suggest(part, &["client-ip", "path"]).unwrap_or_else(|| {
                        "use `client-ip`, `path`, `header:NAME` or a comma-separated combination"
                            .into()
                    });
                return Err((format!("invalid rate-limit key `{part}`"), help));
            }
        };
        parts.push(pb::RateLimitKeyPart {
            kind: kind as i32,
            header,
        });
    }
    Ok(parts)
}
