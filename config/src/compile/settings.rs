//! `server`, `observability` and `limits`: the one `Settings` resource.

use kdl::KdlNode;
use sentinel_proto as pb;

use super::{checked, require_block};
use crate::reader::{Ctx, Seen, children, name};
use crate::values;

const SERVER: &[&str] = &[
    "worker-threads",
    "max-connections",
    "graceful-shutdown-timeout-secs",
];
const OBSERVABILITY: &[&str] = &["metrics", "tracing", "logging"];
const METRICS: &[&str] = &["enabled", "path"];
const TRACING: &[&str] = &[
    "enabled",
    "backend",
    "sampling-rate",
    "service-name",
    "propagation",
];
const OTLP: &[&str] = &["endpoint"];
const LOGGING: &[&str] = &["level", "format", "access-log"];
const LIMITS: &[&str] = &[
    "max-total-connections",
    "max-header-bytes",
    "max-headers",
    "max-body-bytes",
    "max-uri-bytes",
];

pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    ("server", SERVER),
    ("observability", OBSERVABILITY),
    ("metrics", METRICS),
    ("tracing", TRACING),
    ("backend \"otlp\"", OTLP),
    ("logging", LOGGING),
    ("limits", LIMITS),
];

pub(super) fn defaults() -> pb::Settings {
    pb::Settings {
        server: Some(pb::Server {
            worker_threads: 0,
            max_connections: 10_000,
            graceful_shutdown_timeout_ms: 30_000,
        }),
        observability: Some(pb::Observability {
            metrics: Some(pb::Metrics {
                enabled: true,
                path: "/metrics".into(),
            }),
            tracing: Some(pb::Tracing {
                enabled: false,
                otlp_endpoint: String::new(),
                sampling_rate: 0.01,
                service_name: "sentinel".into(),
                propagation: "w3c".into(),
            }),
            logging: Some(pb::Logging {
                level: "info".into(),
                format: pb::LogFormat::Text as i32,
                access_log: true,
            }),
        }),
        limits: Some(pb::Limits {
            max_total_connections: 0,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_uri_bytes: 8 * 1024,
        }),
    }
}

pub(super) fn server(ctx: &mut Ctx, node: &KdlNode, settings: &mut pb::Settings) {
    let server = settings.server.get_or_insert_with(Default::default);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "worker-threads" => {
                if let Some(v) = ctx.u32(child, 0, 1024) {
                    server.worker_threads = v;
                }
            }
            "max-connections" => {
                if let Some(v) = ctx.u32(child, 1, 10_000_000) {
                    server.max_connections = v;
                }
            }
            "graceful-shutdown-timeout-secs" => {
                if let Some(v) = ctx.duration_ms(child, 3600) {
                    server.graceful_shutdown_timeout_ms = v;
                }
            }
            _ => ctx.unknown_node(child, "server", SERVER),
        }
    }
}

pub(super) fn observability(ctx: &mut Ctx, node: &KdlNode, settings: &mut pb::Settings) {
    let obs = settings.observability.get_or_insert_with(Default::default);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        ctx.check_props(child, &[]);
        ctx.no_args(child);
        match name(child) {
            "metrics" => metrics(ctx, child, obs.metrics.get_or_insert_with(Default::default)),
            "tracing" => tracing(ctx, child, obs.tracing.get_or_insert_with(Default::default)),
            "logging" => logging(ctx, child, obs.logging.get_or_insert_with(Default::default)),
            _ => ctx.unknown_node(child, "observability", OBSERVABILITY),
        }
    }
}

fn metrics(ctx: &mut Ctx, node: &KdlNode, metrics: &mut pb::Metrics) {
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "enabled" => {
                if let Some(v) = ctx.boolean(child) {
                    metrics.enabled = v;
                }
            }
            "path" => {
                if let Some(v) = checked(ctx, child, values::check_path) {
                    metrics.path = v;
                }
            }
            _ => ctx.unknown_node(child, "metrics", METRICS),
        }
    }
}

fn tracing(ctx: &mut Ctx, node: &KdlNode, tracing: &mut pb::Tracing) {
    // A `tracing` block turns tracing on unless it says `enabled #false`.
    tracing.enabled = true;
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "enabled" => {
                if let Some(v) = ctx.boolean(child) {
                    tracing.enabled = v;
                }
            }
            "backend" => {
                ctx.check_props(child, &[]);
                let Some(entry) = ctx.exactly_one_arg(child) else {
                    continue;
                };
                if ctx
                    .entry_choice(entry, "tracing backend", &[("otlp", ())])
                    .is_none()
                {
                    continue;
                }
                if !require_block(ctx, child) {
                    continue;
                }
                let mut inner = Seen::default();
                for opt in children(child) {
                    if !inner.first(ctx, opt, &[]) {
                        continue;
                    }
                    match name(opt) {
                        "endpoint" => {
                            if let Some(v) =
                                checked(ctx, opt, |s| values::check_url(s, &["http", "https"]))
                            {
                                tracing.otlp_endpoint = v;
                            }
                        }
                        _ => ctx.unknown_node(opt, "backend \"otlp\"", OTLP),
                    }
                }
            }
            "sampling-rate" => {
                if let Some(v) = ctx.float(child, 0.0, 1.0) {
                    tracing.sampling_rate = v;
                }
            }
            "service-name" => {
                if let Some(v) = checked(ctx, child, values::check_name) {
                    tracing.service_name = v;
                }
            }
            "propagation" => {
                if let Some(v) = ctx.choice(child, &[("w3c", "w3c"), ("b3", "b3")]) {
                    tracing.propagation = v.to_string();
                }
            }
            _ => ctx.unknown_node(child, "tracing", TRACING),
        }
    }
    if tracing.enabled && tracing.otlp_endpoint.is_empty() {
        ctx.error_help(
            crate::reader::name_span(node),
            "tracing is enabled but has no collector endpoint",
            "add `backend \"otlp\" { endpoint \"http://collector:4317\" }` or `enabled #false`",
        );
    }
}

fn logging(ctx: &mut Ctx, node: &KdlNode, logging: &mut pb::Logging) {
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "level" => {
                let levels = [
                    ("trace", "trace"),
                    ("debug", "debug"),
                    ("info", "info"),
                    ("warn", "warn"),
                    ("error", "error"),
                ];
                if let Some(v) = ctx.choice(child, &levels) {
                    logging.level = v.to_string();
                }
            }
            "format" => {
                let formats = [("text", pb::LogFormat::Text), ("json", pb::LogFormat::Json)];
                if let Some(v) = ctx.choice(child, &formats) {
                    logging.format = v as i32;
                }
            }
            "access-log" => {
                if let Some(v) = ctx.boolean(child) {
                    logging.access_log = v;
                }
            }
            _ => ctx.unknown_node(child, "logging", LOGGING),
        }
    }
}

pub(super) fn limits(ctx: &mut Ctx, node: &KdlNode, settings: &mut pb::Settings) {
    let limits = settings.limits.get_or_insert_with(Default::default);
    let mut seen = Seen::default();
    for child in children(node) {
        if !seen.first(ctx, child, &[]) {
            continue;
        }
        match name(child) {
            "max-total-connections" => {
                if let Some(v) = ctx.u32(child, 1, 10_000_000) {
                    limits.max_total_connections = v;
                }
            }
            "max-header-bytes" => {
                if let Some(v) = ctx.u32(child, 1024, 1024 * 1024) {
                    limits.max_header_bytes = v;
                }
            }
            "max-headers" => {
                if let Some(v) = ctx.u32(child, 1, 10_000) {
                    limits.max_headers = v;
                }
            }
            "max-body-bytes" => {
                if let Some(v) = ctx.uint(child, 0, 1 << 40) {
                    limits.max_body_bytes = v;
                }
            }
            "max-uri-bytes" => {
                if let Some(v) = ctx.u32(child, 64, 1024 * 1024) {
                    limits.max_uri_bytes = v;
                }
            }
            _ => ctx.unknown_node(child, "limits", LIMITS),
        }
    }
}
