//! Features the language reads but no proxy can run yet, refused in one place.
//!
//! The language describes the whole product (SPEC §2 and §6): Redis rate
//! limiting, external agents, OTLP tracing, service discovery. Until a
//! proxy can run a feature, a document that uses it must fail `compile` —
//! and so `sentinel --validate`, `sentinelctl validate` and the control
//! plane's apply — instead of being stored and then NACKed by every proxy
//! of the fleet.
//!
//! [`UNSUPPORTED`] is the whole list. Each entry names the feature, the issue
//! that builds it, and the node paths (from the document root) that use it.
//! The issue that makes a feature run deletes its entry here, and nothing
//! else needs to change in the compiler: the block readers keep reading and
//! checking these nodes, so their other diagnostics stay in place.
//!
//! The check walks the parsed KDL tree and only reports; it never changes
//! what the block readers see. Each use gets one located error diagnostic at
//! the node's name with a help line naming the issue.

use kdl::{KdlDocument, KdlNode, KdlValue};

use crate::reader::{Ctx, args, children, name, name_span};

/// One feature proxies cannot run yet.
pub(crate) struct Unsupported {
    /// What the feature is, for the message (`Redis rate limiting`).
    pub feature: &'static str,
    /// The issue that builds it, for the help line.
    pub issue: u32,
    /// What to do meanwhile.
    pub instead: &'static str,
    /// Every way a document can use it.
    pub uses: &'static [Use],
}

/// A node path from the document root; the last element is the node that
/// uses the feature. With `args`, only when its first argument is one of them.
pub(crate) struct Use {
    pub path: &'static [&'static str],
    pub args: &'static [&'static str],
}

#[allow(dead_code)] // for the next feature listed by node path alone
const fn node(path: &'static [&'static str]) -> Use {
    Use { path, args: &[] }
}

const fn node_with(path: &'static [&'static str], args: &'static [&'static str]) -> Use {
    Use { path, args }
}

/// The one list. Delete an entry when the proxy can run the feature.
pub(crate) const UNSUPPORTED: &[Unsupported] = &[Unsupported {
    feature: "OTLP trace export",
    issue: 15,
    instead: "remove the `backend \"otlp\"` block and write `enabled #false` in `tracing`",
    uses: &[node_with(
        &["observability", "tracing", "backend"],
        &["otlp"],
    )],
}];

/// Reports every use of an [`UNSUPPORTED`] feature in `doc`.
pub(crate) fn check(ctx: &mut Ctx, doc: &KdlDocument) {
    let mut path = Vec::new();
    for n in doc.nodes() {
        visit(ctx, n, &mut path);
    }
}

/// Longest path in the list: nothing deeper can match.
fn max_depth() -> usize {
    UNSUPPORTED
        .iter()
        .flat_map(|f| f.uses.iter().map(|u| u.path.len()))
        .max()
        .unwrap_or(0)
}

fn visit<'a>(ctx: &mut Ctx, n: &'a KdlNode, path: &mut Vec<&'a str>) {
    path.push(name(n));
    for feature in UNSUPPORTED {
        if feature.uses.iter().any(|u| matches(u, path, n)) {
            let shown = match first_arg(n) {
                Some(a) => format!("{} \"{a}\"", name(n)),
                None => name(n).to_string(),
            };
            ctx.error_help(
                name_span(n),
                format!(
                    "`{shown}` is not supported yet: proxies cannot run {} (issue {})",
                    feature.feature, feature.issue
                ),
                format!(
                    "{}; issue {} lifts this restriction",
                    feature.instead, feature.issue
                ),
            );
        }
    }
    if path.len() < max_depth() {
        for child in children(n) {
            visit(ctx, child, path);
        }
    }
    path.pop();
}

fn matches(u: &Use, path: &[&str], n: &KdlNode) -> bool {
    if u.path != path {
        return false;
    }
    u.args.is_empty() || first_arg(n).is_some_and(|a| u.args.contains(&a))
}

fn first_arg(n: &KdlNode) -> Option<&str> {
    match args(n).next()?.value() {
        KdlValue::String(s) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_names_an_issue_and_a_use() {
        for f in UNSUPPORTED {
            assert!(f.issue > 10, "{}", f.feature);
            assert!(!f.uses.is_empty(), "{}", f.feature);
            for u in f.uses {
                assert!(
                    crate::TOP_LEVEL.contains(&u.path[0]),
                    "{}: {:?} does not start at a top-level block",
                    f.feature,
                    u.path
                );
            }
        }
    }
}
