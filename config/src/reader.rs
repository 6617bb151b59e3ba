//! Typed reading of KDL nodes, with every mistake recorded as a diagnostic.
//!
//! The compiler walks the document once. Each getter here either returns the
//! value or records *why not* (wrong type, out of range, missing, unknown name
//! with a "did you mean") and returns `None`, so the walk continues and one
//! pass reports every error. Nothing here knows the Sentinel schema; the
//! blocks in `compile/` say which names exist.

use std::collections::HashMap;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::diagnostic::{Diagnostic, SourceMap};

/// Accumulates diagnostics for one document.
pub(crate) struct Ctx {
    map: SourceMap,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

/// The name of a node (`max-rps` in `max-rps 100`).
pub(crate) fn name(node: &KdlNode) -> &str {
    node.name().value()
}

pub(crate) fn name_span(node: &KdlNode) -> SourceSpan {
    node.name().span()
}

/// Positional arguments of a node (entries without `key=`).
pub(crate) fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

/// Properties of a node (entries written `key=value`).
pub(crate) fn props(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_some())
}

pub(crate) fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map(|d| d.nodes()).unwrap_or(&[])
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "null",
    }
}

/// "did you mean `x`?" for the closest known name, if one is close enough.
pub(crate) fn suggest(unknown: &str, known: &[&str]) -> Option<String> {
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)?;
    Some(format!("did you mean `{}`?", best.1))
}

fn list(known: &[&str]) -> String {
    known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

// === impl Ctx ===

impl Ctx {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        Self {
            map: SourceMap::new(file, text),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn finish(self) -> crate::Diagnostics {
        self.map.finish(self.diagnostics)
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    pub(crate) fn line_of(&self, span: SourceSpan) -> usize {
        self.map.diagnostic(span, String::new(), None).line
    }

    pub(crate) fn error(&mut self, span: SourceSpan, message: impl Into<String>) {
        let d = self.map.diagnostic(span, message.into(), None);
        self.diagnostics.push(d);
    }

    pub(crate) fn error_help(
        &mut self,
        span: SourceSpan,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let d = self.map.diagnostic(span, message.into(), Some(help.into()));
        self.diagnostics.push(d);
    }

    /// Reports a child node that does not belong in `block`.
    pub(crate) fn unknown_node(&mut self, node: &KdlNode, block: &str, known: &[&str]) {
        let n = name(node);
        let help =
            suggest(n, known).unwrap_or_else(|| format!("`{block}` accepts {}", list(known)));
        self.error_help(
            name_span(node),
            format!("unknown node `{n}` in `{block}`"),
            help,
        );
    }

    /// Reports every property of `node` whose key is not in `known`.
    pub(crate) fn check_props(&mut self, node: &KdlNode, known: &[&str]) {
        for entry in props(node) {
            let key = entry.name().map(|k| k.value()).unwrap_or_default();
            if known.contains(&key) {
                continue;
            }
            let help = if known.is_empty() {
                format!("`{}` takes no properties", name(node))
            } else {
                suggest(key, known)
                    .unwrap_or_else(|| format!("`{}` accepts {}", name(node), list(known)))
            };
            self.error_help(
                entry.span(),
                format!("unknown property `{key}` on `{}`", name(node)),
                help,
            );
        }
    }

    pub(crate) fn no_children(&mut self, node: &KdlNode) {
        if node.children().is_some() {
            self.error_help(
                name_span(node),
                format!("`{}` does not take a block", name(node)),
                "remove the `{ … }` block",
            );
        }
    }

    /// Checks that a node has no positional arguments.
    pub(crate) fn no_args(&mut self, node: &KdlNode) {
        if let Some(extra) = args(node).next() {
            self.error_help(
                extra.span(),
                format!("`{}` takes no arguments", name(node)),
                "remove the value",
            );
        }
    }

    /// The single positional argument of a value node like `max-rps 100`.
    /// The node must have no properties and no block.
    pub(crate) fn one_arg<'n>(&mut self, node: &'n KdlNode) -> Option<&'n KdlEntry> {
        self.check_props(node, &[]);
        self.no_children(node);
        self.exactly_one_arg(node)
    }

    /// Like [`Ctx::one_arg`] but leaves properties and children to the caller.
    pub(crate) fn exactly_one_arg<'n>(&mut self, node: &'n KdlNode) -> Option<&'n KdlEntry> {
        let mut positional = args(node);
        let Some(first) = positional.next() else {
            self.error(name_span(node), format!("`{}` needs a value", name(node)));
            return None;
        };
        if let Some(extra) = positional.next() {
            self.error_help(
                extra.span(),
                format!("`{}` takes one value", name(node)),
                "remove the extra values",
            );
        }
        Some(first)
    }

    pub(crate) fn entry_str(&mut self, entry: &KdlEntry, what: &str) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            other => {
                self.error_help(
                    entry.span(),
                    format!("`{what}` must be a string, found {}", type_name(other)),
                    "write the value in double quotes",
                );
                None
            }
        }
    }

    pub(crate) fn entry_uint(
        &mut self,
        entry: &KdlEntry,
        what: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match entry.value() {
            KdlValue::Integer(i) if *i >= i128::from(min) && *i <= i128::from(max) => {
                u64::try_from(*i).ok()
            }
            KdlValue::Integer(i) => {
                self.error(
                    entry.span(),
                    format!("`{what}` must be between {min} and {max}, found {i}"),
                );
                None
            }
            other => {
                self.error_help(
                    entry.span(),
                    format!("`{what}` must be an integer, found {}", type_name(other)),
                    format!("write a whole number between {min} and {max}, without quotes"),
                );
                None
            }
        }
    }

    pub(crate) fn entry_float(
        &mut self,
        entry: &KdlEntry,
        what: &str,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        let value = match entry.value() {
            KdlValue::Integer(i) => *i as f64,
            KdlValue::Float(f) => *f,
            other => {
                self.error_help(
                    entry.span(),
                    format!("`{what}` must be a number, found {}", type_name(other)),
                    "write a number without quotes",
                );
                return None;
            }
        };
        if !value.is_finite() || value < min || value > max {
            self.error(
                entry.span(),
                format!("`{what}` must be between {min} and {max}, found {value}"),
            );
            return None;
        }
        Some(value)
    }

    pub(crate) fn entry_bool(&mut self, entry: &KdlEntry, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.error_help(
                    entry.span(),
                    format!("`{what}` must be a boolean, found {}", type_name(other)),
                    "write #true or #false (true or false in KDL 1.0)",
                );
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub(crate) fn entry_choice<T: Copy>(
        &mut self,
        entry: &KdlEntry,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let s = self.entry_str(entry, what)?;
        if let Some((_, v)) = choices.iter().find(|(k, _)| *k == s) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(k, _)| *k).collect();
        let help =
            suggest(&s, &names).unwrap_or_else(|| format!("expected one of {}", list(&names)));
        self.error_help(entry.span(), format!("unknown {what} `{s}`"), help);
        None
    }

    pub(crate) fn string(&mut self, node: &KdlNode) -> Option<String> {
        let entry = self.one_arg(node)?;
        self.entry_str(entry, name(node))
    }

    pub(crate) fn uint(&mut self, node: &KdlNode, min: u64, max: u64) -> Option<u64> {
        let entry = self.one_arg(node)?;
        self.entry_uint(entry, name(node), min, max)
    }

    pub(crate) fn u32(&mut self, node: &KdlNode, min: u32, max: u32) -> Option<u32> {
        self.uint(node, u64::from(min), u64::from(max))
            .and_then(|v| u32::try_from(v).ok())
    }

    pub(crate) fn float(&mut self, node: &KdlNode, min: f64, max: f64) -> Option<f64> {
        let entry = self.one_arg(node)?;
        self.entry_float(entry, name(node), min, max)
    }

    pub(crate) fn boolean(&mut self, node: &KdlNode) -> Option<bool> {
        let entry = self.one_arg(node)?;
        self.entry_bool(entry, name(node))
    }

    pub(crate) fn choice<T: Copy>(&mut self, node: &KdlNode, choices: &[(&str, T)]) -> Option<T> {
        let entry = self.one_arg(node)?;
        self.entry_choice(entry, name(node), choices)
    }

    /// A duration node whose unit is in its name (`timeout-secs`, `interval-ms`),
    /// converted to milliseconds.
    pub(crate) fn duration_ms(&mut self, node: &KdlNode, max_secs: u64) -> Option<u64> {
        let n = name(node);
        let per_unit = if n.ends_with("-ms") { 1 } else { 1000 };
        let max = max_secs * 1000 / per_unit;
        self.uint(node, 0, max).map(|v| v * per_unit)
    }

    /// One or more positional string arguments (`methods "GET" "POST"`).
    pub(crate) fn strings(&mut self, node: &KdlNode) -> Vec<(String, SourceSpan)> {
        self.check_props(node, &[]);
        self.no_children(node);
        let mut out = Vec::new();
        for entry in args(node) {
            if let Some(s) = self.entry_str(entry, name(node)) {
                out.push((s, entry.span()));
            }
        }
        if out.is_empty() && args(node).next().is_none() {
            self.error(
                name_span(node),
                format!("`{}` needs at least one value", name(node)),
            );
        }
        out
    }

    /// The value of property `key` on `node`, if present.
    pub(crate) fn prop<'n>(&self, node: &'n KdlNode, key: &str) -> Option<&'n KdlEntry> {
        props(node)
            .filter(|e| e.name().is_some_and(|k| k.value() == key))
            .last()
    }
}

/// Detects repeated single-valued children in one block.
#[derive(Default)]
pub(crate) struct Seen {
    first: HashMap<String, SourceSpan>,
}

impl Seen {
    /// Returns false (and reports) when `node` repeats a name already seen in
    /// this block, unless that name is listed in `repeatable`.
    pub(crate) fn first(&mut self, ctx: &mut Ctx, node: &KdlNode, repeatable: &[&str]) -> bool {
        let n = name(node);
        if repeatable.contains(&n) {
            return true;
        }
        match self.first.get(n) {
            Some(prev) => {
                let line = ctx.line_of(*prev);
                ctx.error_help(
                    name_span(node),
                    format!("duplicate `{n}`"),
                    format!("`{n}` is already set on line {line}; keep one"),
                );
                false
            }
            None => {
                self.first.insert(n.to_string(), name_span(node));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            suggest("path-prefx", &["path-prefix", "path"]).as_deref(),
            Some("did you mean `path-prefix`?")
        );
        assert_eq!(suggest("zzzzzz", &["path-prefix", "host"]), None);
    }
}
