//! The compiler: one KDL document in, a [`Snapshot`] of wire resources or
//! every diagnostic out.
//!
//! Each top-level block has its own module that reads its nodes and fills
//! defaults, so the resources it produces are complete and explicit (the data
//! plane applies no defaults of its own). This module walks the document,
//! detects duplicate names, and checks every reference (route → upstream,
//! filter, agent; listener → default route) once all blocks are read.
//! Features no proxy can run yet are refused by `unsupported`, the one list
//! a later issue edits to lift its own rejection.
//!
//! Invariant: pure. No I/O, no environment lookups, no clocks; the same text
//! always yields the same snapshot or the same diagnostics.

mod agents;
mod filters;
mod listeners;
mod routes;
mod settings;
mod unsupported;
pub(crate) mod upstreams;

use std::collections::BTreeMap;

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;
use sentinel_proto as pb;

use crate::Diagnostics;
use crate::diagnostic::SourceMap;
use crate::reader::{self, Ctx, Seen, name, name_span};
use crate::snapshot::Snapshot;
use crate::values;

/// Top-level blocks a document may contain.
pub const TOP_LEVEL: &[&str] = &[
    "server",
    "listeners",
    "routes",
    "upstreams",
    "filters",
    "agents",
    "observability",
    "limits",
];

/// Every block of the language and the child nodes it accepts; the tidy test
/// checks that each one is documented in docs/configuration.md.
pub fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&'static str, &'static [&'static str])> = vec![("(document)", TOP_LEVEL)];
    out.extend(settings::SCHEMA.iter().copied());
    out.extend(listeners::SCHEMA.iter().copied());
    out.extend(routes::SCHEMA.iter().copied());
    out.extend(upstreams::SCHEMA.iter().copied());
    out.extend(filters::SCHEMA.iter().copied());
    out.extend(agents::SCHEMA.iter().copied());
    out
}

/// A reference from one resource to another, checked after all blocks are read.
struct Reference {
    kind: &'static str,
    name: String,
    span: SourceSpan,
}

/// Named resources of one type, with where each was defined.
struct Named<T> {
    kind: &'static str,
    items: BTreeMap<String, (T, SourceSpan)>,
}

impl<T> Named<T> {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            items: BTreeMap::new(),
        }
    }

    fn insert(&mut self, ctx: &mut Ctx, name: String, span: SourceSpan, item: T) {
        if let Some((_, first)) = self.items.get(&name) {
            let line = ctx.line_of(*first);
            ctx.error_help(
                span,
                format!("duplicate {} name `{name}`", self.kind),
                format!("{} `{name}` is already defined on line {line}", self.kind),
            );
            return;
        }
        self.items.insert(name, (item, span));
    }

    fn values(self) -> impl Iterator<Item = T> {
        self.items.into_values().map(|(v, _)| v)
    }
}

/// What the block readers write into while the document is walked.
pub(crate) struct Builder {
    settings: pb::Settings,
    listeners: Named<pb::Listener>,
    routes: Named<pb::Route>,
    upstreams: Named<(pb::Upstream, pb::Endpoints)>,
    filters: Named<pb::Filter>,
    agents: Named<pb::Agent>,
    references: Vec<Reference>,
    /// Every listener's literal address and where it was written, for the
    /// duplicate-address check once all listeners are read.
    listener_addresses: Vec<listeners::AddressAt>,
}

impl Builder {
    fn new() -> Self {
        Self {
            settings: settings::defaults(),
            listeners: Named::new("listener"),
            routes: Named::new("route"),
            upstreams: Named::new("upstream"),
            filters: Named::new("filter"),
            agents: Named::new("agent"),
            references: Vec::new(),
            listener_addresses: Vec::new(),
        }
    }

    pub(crate) fn refer(&mut self, kind: &'static str, name: String, span: SourceSpan) {
        self.references.push(Reference { kind, name, span });
    }

    fn check_references(&self, ctx: &mut Ctx) {
        for r in &self.references {
            let known: Vec<&str> = match r.kind {
                "upstream" => self.upstreams.items.keys().map(String::as_str).collect(),
                "filter" => self.filters.items.keys().map(String::as_str).collect(),
                "agent" => self.agents.items.keys().map(String::as_str).collect(),
                "route" => self.routes.items.keys().map(String::as_str).collect(),
                _ => continue,
            };
            if known.contains(&r.name.as_str()) {
                continue;
            }
            let help = reader::suggest(&r.name, &known).unwrap_or_else(|| {
                if known.is_empty() {
                    format!("no {} is defined; add one in `{}s {{ … }}`", r.kind, r.kind)
                } else {
                    format!("defined {}s: {}", r.kind, known.join(", "))
                }
            });
            ctx.error_help(r.span, format!("unknown {} `{}`", r.kind, r.name), help);
        }
    }

    fn into_snapshot(self) -> Snapshot {
        let mut upstreams = Vec::new();
        let mut endpoints = Vec::new();
        for (u, e) in self.upstreams.values() {
            upstreams.push(u);
            endpoints.push(e);
        }
        Snapshot {
            settings: self.settings,
            listeners: self.listeners.values().collect(),
            routes: self.routes.values().collect(),
            upstreams,
            endpoints,
            filters: self.filters.values().collect(),
            agents: self.agents.values().collect(),
        }
        .normalized()
    }
}

/// Parses and compiles one document. `file` names it in diagnostics.
pub fn compile(file: &str, text: &str) -> Result<Snapshot, Diagnostics> {
    crate::bounds::check(file, text)?;
    let doc = parse(file, text)?;
    let mut ctx = Ctx::new(file, text);
    unsupported::check(&mut ctx, &doc);
    let mut builder = Builder::new();
    let mut seen = Seen::default();
    for node in doc.nodes() {
        if !seen.first(
            &mut ctx,
            node,
            &["listeners", "routes", "upstreams", "filters", "agents"],
        ) {
            continue;
        }
        ctx.check_props(node, &[]);
        ctx.no_args(node);
        match name(node) {
            "server" => settings::server(&mut ctx, node, &mut builder.settings),
            "observability" => settings::observability(&mut ctx, node, &mut builder.settings),
            "limits" => settings::limits(&mut ctx, node, &mut builder.settings),
            "listeners" => each(&mut ctx, node, "listener", |ctx, child| {
                if let Some((n, span, l)) = listeners::listener(ctx, child, &mut builder) {
                    builder.listeners.insert(ctx, n, span, l);
                }
            }),
            "routes" => each(&mut ctx, node, "route", |ctx, child| {
                if let Some((n, span, r)) = routes::route(ctx, child, &mut builder) {
                    builder.routes.insert(ctx, n, span, r);
                }
            }),
            "upstreams" => each(&mut ctx, node, "upstream", |ctx, child| {
                if let Some((n, span, u)) = upstreams::upstream(ctx, child) {
                    builder.upstreams.insert(ctx, n, span, u);
                }
            }),
            "filters" => each(&mut ctx, node, "filter", |ctx, child| {
                if let Some((n, span, f)) = filters::filter(ctx, child) {
                    builder.filters.insert(ctx, n, span, f);
                }
            }),
            "agents" => each(&mut ctx, node, "agent", |ctx, child| {
                if let Some((n, span, a)) = agents::agent(ctx, child) {
                    builder.agents.insert(ctx, n, span, a);
                }
            }),
            _ => ctx.unknown_node(node, "document", TOP_LEVEL),
        }
    }
    builder.check_references(&mut ctx);
    listeners::check_addresses(&mut ctx, &builder.listener_addresses);
    if ctx.has_errors() {
        return Err(ctx.finish());
    }
    Ok(builder.into_snapshot())
}

/// Stack reserved for the parser before counting the document's length.
const PARSER_STACK_BASE: usize = 16 * 1024 * 1024;

/// Stack reserved per byte of document. The `kdl` parser recovers from a
/// syntax error by skipping a character and *recursing* into the rest of the
/// document, so a document of stray characters (`} } } …`) recurses once per
/// error, each costing at most ~2.5 KiB unoptimised (~1 KiB optimised) per
/// byte of input (measured, config/src/bounds.rs tests). The reservation is
/// virtual: only the pages the parser touches are ever committed.
const PARSER_STACK_PER_BYTE: usize = if cfg!(debug_assertions) {
    3 * 1024
} else {
    1024
};

/// KDL 2.0 first, KDL 1.0 as fallback; syntax errors become diagnostics.
///
/// Parsing runs on its own thread with a stack sized to the document, because
/// the parser's recursion is not bounded by block depth alone (see
/// [`PARSER_STACK_PER_BYTE`]); `bounds::check` has already capped the length.
/// A panic inside the parser becomes a diagnostic too.
pub(crate) fn parse(file: &str, text: &str) -> Result<KdlDocument, Diagnostics> {
    let stack = PARSER_STACK_BASE.saturating_add(text.len().saturating_mul(PARSER_STACK_PER_BYTE));
    let parsed = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("kdl-parse".into())
            .stack_size(stack)
            .spawn_scoped(scope, || KdlDocument::parse(text))
            .map(|handle| handle.join())
    });
    let parsed = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(_panic)) => {
            return Err(Diagnostics::whole_file(
                file,
                "the KDL parser failed on this document (an internal error; please report it)",
            ));
        }
        Err(e) => {
            return Err(Diagnostics::whole_file(
                file,
                format!("cannot parse a document of {} bytes here: {e}", text.len()),
            ));
        }
    };
    parsed.map_err(|err| {
        let map = SourceMap::new(file, text);
        let mut out: Vec<_> = err
            .diagnostics
            .iter()
            // One more than is shown, so `finish` can say more were cut.
            .take(crate::diagnostic::MAX_DIAGNOSTICS + 1)
            .map(|d| {
                let message = d
                    .message
                    .clone()
                    .or_else(|| d.label.clone())
                    .unwrap_or_else(|| "invalid KDL syntax".to_string());
                map.diagnostic(
                    d.span,
                    format!("KDL syntax error: {message}"),
                    d.help.clone(),
                )
            })
            .collect();
        if out.is_empty() {
            out.push(map.diagnostic(SourceSpan::from(0..0), "invalid KDL document".into(), None));
        }
        map.finish(out)
    })
}

/// Runs `f` on every child of a collection block (`routes { route … }`),
/// rejecting children that are not `item`.
fn each(ctx: &mut Ctx, node: &KdlNode, item: &str, mut f: impl FnMut(&mut Ctx, &KdlNode)) {
    for child in reader::children(node) {
        if name(child) == item {
            f(ctx, child);
        } else {
            ctx.unknown_node(child, name(node), &[item]);
        }
    }
}

/// The name argument of a resource node (`upstream "api"`), checked.
pub(crate) fn resource_name(ctx: &mut Ctx, node: &KdlNode) -> Option<(String, SourceSpan)> {
    let entry = ctx.exactly_one_arg(node)?;
    let n = ctx.entry_str(entry, &format!("{} name", name(node)))?;
    if let Err(e) = values::check_name(&n) {
        ctx.error(entry.span(), e);
        return None;
    }
    Some((n, entry.span()))
}

/// A block that must be present on a node (`tls { … }`), or an error.
pub(crate) fn require_block(ctx: &mut Ctx, node: &KdlNode) -> bool {
    if node.children().is_none() {
        ctx.error_help(
            name_span(node),
            format!("`{}` needs a block", name(node)),
            format!("write `{} {{ … }}`", name(node)),
        );
        return false;
    }
    true
}

/// Reports a string value that failed a `values::check_*`.
pub(crate) fn checked(
    ctx: &mut Ctx,
    node: &KdlNode,
    check: impl Fn(&str) -> Result<(), String>,
) -> Option<String> {
    let value = ctx.string(node)?;
    if let Err(e) = check(&value) {
        let span = reader::args(node)
            .next()
            .map_or_else(|| name_span(node), |e| e.span());
        ctx.error(span, e);
        return None;
    }
    Some(value)
}

/// Named severity levels for `priority`.
pub(crate) const PRIORITIES: &[(&str, i32)] = &[
    ("low", 250),
    ("normal", 500),
    ("high", 750),
    ("critical", 1000),
];

/// Nodes that appear in the seeds but are not implemented: rejected clearly.
pub(crate) fn not_supported(ctx: &mut Ctx, node: &KdlNode, help: &str) {
    ctx.error_help(
        name_span(node),
        format!("`{}` is not supported yet", name(node)),
        help.to_string(),
    );
}
