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

#[cfg(test)]
const fn node(path: &'static [&'static str]) -> Use {
    Use { path, args: &[] }
}

#[cfg(test)]
const fn node_with(path: &'static [&'static str], args: &'static [&'static str]) -> Use {
    Use { path, args }
}

/// The one list. Delete an entry when the proxy can run the feature; add
/// one (with the issue that builds it) for a feature the language gains
/// before the proxy does. Empty since OTLP trace export (issue 15).
pub(crate) const UNSUPPORTED: &[Unsupported] = &[];

/// Reports every use of an [`UNSUPPORTED`] feature in `doc`.
pub(crate) fn check(ctx: &mut Ctx, doc: &KdlDocument) {
    check_list(ctx, doc, UNSUPPORTED);
}

fn check_list(ctx: &mut Ctx, doc: &KdlDocument, list: &[Unsupported]) {
    let depth = max_depth(list);
    let mut path = Vec::new();
    for n in doc.nodes() {
        visit(ctx, n, &mut path, list, depth);
    }
}

/// Longest path in the list: nothing deeper can match.
fn max_depth(list: &[Unsupported]) -> usize {
    list.iter()
        .flat_map(|f| f.uses.iter().map(|u| u.path.len()))
        .max()
        .unwrap_or(0)
}

fn visit<'a>(
    ctx: &mut Ctx,
    n: &'a KdlNode,
    path: &mut Vec<&'a str>,
    list: &[Unsupported],
    depth: usize,
) {
    path.push(name(n));
    for feature in list {
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
    if path.len() < depth {
        for child in children(n) {
            visit(ctx, child, path, list, depth);
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

#[cfg(test)]
mod check_tests {
    use super::*;

    const LIST: &[Unsupported] = &[
        Unsupported {
            feature: "teleportation",
            issue: 99,
            instead: "walk",
            uses: &[node_with(&["travel", "mode"], &["teleport"])],
        },
        Unsupported {
            feature: "time travel",
            issue: 98,
            instead: "wait",
            uses: &[node(&["travel", "back"])],
        },
    ];

    #[test]
    fn every_use_of_a_listed_feature_gets_one_located_error_naming_its_issue() {
        let text = "travel {\n  mode \"walk\"\n  mode \"teleport\"\n  back\n}\nback\n";
        let doc = crate::compile::parse("t.kdl", text).expect("parses");
        let mut ctx = Ctx::new("t.kdl", text);
        check_list(&mut ctx, &doc, LIST);
        let found: Vec<(usize, usize, String, Option<String>)> = ctx
            .finish()
            .iter()
            .map(|d| (d.line, d.column, d.message.clone(), d.help.clone()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].0, found[0].1), (3, 3));
        assert!(
            found[0]
                .2
                .contains("`mode \"teleport\"` is not supported yet")
        );
        assert!(
            found[0]
                .3
                .as_deref()
                .is_some_and(|h| h.contains("issue 99"))
        );
        assert_eq!((found[1].0, found[1].1), (4, 3));
        assert!(found[1].2.contains("time travel (issue 98)"));
        // The real list is empty: nothing is refused.
        let mut ctx = Ctx::new("t.kdl", text);
        check(&mut ctx, &doc);
        assert!(!ctx.has_errors());
    }
}
