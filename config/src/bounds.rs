//! Size limits checked on the raw text *before* the KDL parser sees it.
//!
//! The `kdl` crate parses recursively: every `{` block (and every nested
//! `/* … */` comment) costs stack frames, so a few kilobytes of `a { a { a {`
//! overflow a thread's stack and abort the whole process — `sentinelctl`, the
//! control plane's API worker, the proxy's SIGHUP reload. A stack overflow is
//! not a panic and cannot be caught, so the only defence is to refuse such a
//! document before parsing it.
//!
//! [`check`] is a single linear pass that understands just enough of KDL to
//! not be fooled: it skips strings (quoted, multi-line `"""`, raw `#"…"#`),
//! line comments and (nested) block comments, and counts block depth, node
//! starts and bytes. Because the parser falls back to KDL 1.0, whose raw
//! strings are spelled `r#"…"#` and whose quoted strings treat `\` as an
//! escape even after `#`, the pass runs once per dialect and a document must
//! be within bounds under both readings. A run of `/-` (slashdash) comments
//! recurses in the parser like a block, so it counts as depth too. The counts are conservative (an
//! approximate node count, block comments counted as depth): they only need
//! to stay far from any real configuration and far from the stack.
//!
//! What it does not do: validate syntax. Anything it lets through still goes
//! to the parser, which reports syntax errors with its own diagnostics.
//!
//! Data enters as `&str`; what leaves is `Ok(())` or one located
//! [`Diagnostic`](crate::Diagnostic) per exceeded bound.

use miette::SourceSpan;

use crate::Diagnostics;
use crate::diagnostic::SourceMap;

/// Largest document accepted, in bytes. A 10,000-route configuration is about
/// 2 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Deepest nesting of `{ … }` blocks (and of nested block comments). The
/// language itself nests at most five deep. The parser needs up to ~60 KiB
/// of stack per level in an unoptimised build (a few KiB optimised), so 16
/// levels fit in a 2 MiB thread stack (a tokio worker's, a blocking-pool
/// thread's) with room to spare.
pub const MAX_DEPTH: usize = 16;

/// Most nodes in one document (a 10,000-route configuration has ~60,000).
pub const MAX_NODES: usize = 250_000;

/// Most stray structural characters (an unmatched `}` or `)`, a second `=`
/// in one token, type annotations in a row, `\` not ending a line, `[`,
/// `]`, `,`, `<`, `>` outside strings). Each is a syntax error the parser
/// recovers from by recursing, so a document of thousands of them is
/// refused before parsing; a real mistake has a handful.
pub const MAX_STRAY_CHARACTERS: usize = 256;

/// Which spelling of strings a pass assumes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// KDL 2.0: `"…"`, `"""…"""`, `#"…"#` (raw, any number of `#`).
    V2,
    /// KDL 1.0: `"…"`, `r"…"`, `r#"…"#` (raw).
    V1,
}

/// Checks `text` against every bound; `Err` holds one diagnostic per bound
/// exceeded, each pointing at where it was first exceeded.
pub(crate) fn check(file: &str, text: &str) -> Result<(), Diagnostics> {
    let map = SourceMap::new(file, text);
    if text.len() > MAX_DOCUMENT_BYTES {
        let d = map.diagnostic(
            SourceSpan::from(
                MAX_DOCUMENT_BYTES.min(text.len())..MAX_DOCUMENT_BYTES.min(text.len()),
            ),
            format!(
                "document is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes",
                text.len()
            ),
            Some("split the configuration or remove unused blocks".into()),
        );
        return Err(map.finish(vec![d]));
    }
    let mut out = Vec::new();
    for dialect in [Dialect::V2, Dialect::V1] {
        let found = scan(text.as_bytes(), dialect);
        if let Some(at) = found.too_deep {
            out.push(map.diagnostic(
                SourceSpan::from(at..at + 1),
                format!("blocks are nested more than {MAX_DEPTH} deep"),
                Some(format!(
                    "Sentinel configurations nest at most a few levels; \
                     the limit of {MAX_DEPTH} protects the parser's stack"
                )),
            ));
        }
        if let Some(at) = found.too_many_strays {
            out.push(map.diagnostic(
                SourceSpan::from(at..at + 1),
                format!(
                    "more than {MAX_STRAY_CHARACTERS} syntax errors; the first is this stray character"
                ),
                Some(
                    "an unmatched `}` or `)`, `=` twice in one value, or `[ ] , < >` \
                     outside a string; fix this one and validate again"
                        .into(),
                ),
            ));
        }
        if let Some(at) = found.too_many_nodes {
            out.push(map.diagnostic(
                SourceSpan::from(at..at + 1),
                format!("document has more than {MAX_NODES} nodes"),
                Some("split the configuration or remove unused blocks".into()),
            ));
        }
        if !out.is_empty() {
            // One dialect's findings are enough; the other would repeat them.
            return Err(map.finish(out));
        }
    }
    Ok(())
}

/// Where a pass first crossed each bound (byte offsets).
#[derive(Default)]
struct Found {
    too_deep: Option<usize>,
    too_many_nodes: Option<usize>,
    /// Offset of the first stray character, once there are too many.
    too_many_strays: Option<usize>,
}

fn scan(b: &[u8], dialect: Dialect) -> Found {
    let mut found = Found::default();
    let mut depth = 0usize;
    let mut nodes = 0usize;
    // True where the next token would begin a new node.
    let mut at_node_start = true;
    // `/-` (slashdash) in a row: the parser recurses on each one.
    let mut slashdashes = 0usize;
    // Stray characters (see MAX_STRAY_CHARACTERS) and the first one's offset.
    let mut strays = 0usize;
    let mut first_stray = 0usize;
    let mut parens = 0usize;
    let mut eq_in_token = false;
    let mut after_type = false;
    // The last token (ignoring spaces) was `=`.
    let mut after_eq = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let stray = match c {
            b'}' => depth == 0,
            b')' => parens == 0,
            b'(' => parens > 0 || after_type,
            b'=' => eq_in_token || after_eq || at_node_start,
            b'[' | b']' | b',' | b'<' | b'>' => true,
            b'\\' => {
                let rest = b[i + 1..].iter().find(|c| !matches!(c, b' ' | b'\t'));
                !matches!(rest, None | Some(b'\n' | b'\r' | b'/'))
            }
            _ => false,
        };
        if stray {
            if strays == 0 {
                first_stray = i;
            }
            strays += 1;
            if strays > MAX_STRAY_CHARACTERS && found.too_many_strays.is_none() {
                found.too_many_strays = Some(first_stray);
            }
        }
        match c {
            b'(' => parens += 1,
            b')' => {
                parens = parens.saturating_sub(1);
                after_type = true;
            }
            b'=' => {
                eq_in_token = true;
                after_eq = true;
                after_type = false;
            }
            b' ' | b'\t' | b'\r' => {}
            _ => {
                after_type = false;
                after_eq = false;
            }
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}') {
            eq_in_token = false;
        }
        match c {
            b'\n' | b';' => {
                at_node_start = true;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'{' => {
                slashdashes = 0;
                depth += 1;
                if depth > MAX_DEPTH && found.too_deep.is_none() {
                    found.too_deep = Some(i);
                }
                at_node_start = true;
                i += 1;
            }
            b'}' => {
                slashdashes = 0;
                depth = depth.saturating_sub(1);
                at_node_start = true;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = memchr_newline(b, i);
            }
            b'/' if b.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if depth + slashdashes > MAX_DEPTH && found.too_deep.is_none() {
                    found.too_deep = Some(i);
                }
                i += 2;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Nested block comments recurse in the parser too.
                let mut level = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        if depth + level > MAX_DEPTH && found.too_deep.is_none() {
                            found.too_deep = Some(i);
                        }
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                        if level == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => {
                slashdashes = 0;
                if at_node_start {
                    nodes += 1;
                    if nodes > MAX_NODES && found.too_many_nodes.is_none() {
                        found.too_many_nodes = Some(i);
                    }
                    at_node_start = false;
                }
                i = match string_at(b, i, dialect) {
                    Some(end) => end,
                    None => i + 1,
                };
            }
        }
        if found.too_deep.is_some()
            && found.too_many_nodes.is_some()
            && found.too_many_strays.is_some()
        {
            break;
        }
    }
    found
}

/// Offset of the next `\n` at or after `i` (or the end).
fn memchr_newline(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

/// If a string starts at `i`, the offset just past its end (or the end of
/// the text for an unterminated one); otherwise `None`.
fn string_at(b: &[u8], i: usize, dialect: Dialect) -> Option<usize> {
    let raw_start = match dialect {
        Dialect::V2 if b[i] == b'#' => Some(i),
        Dialect::V1 if b[i] == b'r' && matches!(b.get(i + 1), Some(b'#' | b'"')) => Some(i + 1),
        _ => None,
    };
    if let Some(start) = raw_start {
        let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
        let quote = start + hashes;
        if b.get(quote) != Some(&b'"') {
            return None;
        }
        // Closing: `"` followed by the same number of `#`.
        let mut j = quote + 1;
        while j < b.len() {
            if b[j] == b'"'
                && b[j + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&c| c == b'#')
                    .count()
                    == hashes
            {
                return Some(j + 1 + hashes);
            }
            j += 1;
        }
        return Some(b.len());
    }
    if b[i] != b'"' {
        return None;
    }
    if dialect == Dialect::V2 && b[i..].starts_with(b"\"\"\"") {
        let mut j = i + 3;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' if b[j..].starts_with(b"\"\"\"") => return Some(j + 3),
                _ => j += 1,
            }
        }
        return Some(b.len());
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    Some(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        let mut s = String::new();
        for _ in 0..n {
            s.push_str("a {\n");
        }
        for _ in 0..n {
            s.push_str("}\n");
        }
        s
    }

    #[test]
    fn two_thousand_nested_blocks_are_refused_with_a_location() {
        let err = check("deep.kdl", &nested(2000)).unwrap_err();
        let d = &err.diagnostics[0];
        assert!(d.message.contains("nested more than 16 deep"), "{d}");
        assert_eq!((d.line, d.column), (MAX_DEPTH + 1, 3));
        assert!(d.help.is_some());
        assert!(err.render(false).contains("deep.kdl:17:3"));
    }

    #[test]
    fn the_limit_itself_is_accepted() {
        check("ok.kdl", &nested(MAX_DEPTH)).unwrap();
        assert!(check("deep.kdl", &nested(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn braces_inside_strings_and_comments_do_not_count() {
        let braces = "{".repeat(100);
        for text in [
            format!("a \"{braces}\"\n"),
            format!("a #\"{braces}\"#\n"),
            format!("a \"\"\"\n{braces}\n\"\"\"\n"),
            format!("a \"\\\"{braces}\"\n"),
            format!("// {braces}\na 1\n"),
            format!("/* {braces} */ a 1\n"),
            format!("a r#\"{braces}\"#\n"),
        ] {
            check("s.kdl", &text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn a_string_one_dialect_hides_braces_in_does_not_fool_the_other() {
        // KDL 1.0 reads `r"\"` as a raw string ending at the second quote, so
        // the braces after it are real blocks there; KDL 2.0 reads one long
        // quoted string. Both readings are bounded.
        let text = format!("a r\"\\\" {} \"\n", "b {".repeat(100));
        assert!(check("s.kdl", &text).is_err());
    }

    #[test]
    fn syntax_error_storms_are_refused_at_their_first_stray_character() {
        for storm in ["} ", "= ", "a=", "\\ x ", ") ", "( ", "(t)", "[", ",", "<>"] {
            let text = format!("a 1\n{}", storm.repeat(MAX_STRAY_CHARACTERS + 2));
            let Err(err) = check("s.kdl", &text) else {
                panic!("storm {storm:?} was not refused");
            };
            let d = &err.diagnostics[0];
            assert!(d.message.contains("syntax errors"), "{storm}: {err}");
            assert_eq!(d.line, 2, "{storm}: {err}");
        }
    }

    #[test]
    fn valid_syntax_has_no_stray_characters() {
        let text = "(t)a (u)1 key=\"v\" k2=(x)2 \\ // continued\n  3\nb { c (d)#true; }\n";
        let many = text.repeat(MAX_STRAY_CHARACTERS * 2);
        check("ok.kdl", &many).unwrap_or_else(|e| panic!("{e}"));
        for f in ["minimal.kdl", "full.kdl", "fleet.kdl"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docs/examples")
                .join(f);
            let text = std::fs::read_to_string(path).unwrap();
            let found = scan(text.as_bytes(), Dialect::V2);
            assert!(
                found.too_many_strays.is_none() && found.too_deep.is_none(),
                "{f}"
            );
        }
    }

    #[test]
    fn nested_block_comments_count_as_depth() {
        let text = format!("{}{}", "/*".repeat(100), "*/".repeat(100));
        assert!(check("c.kdl", &text).is_err());
    }

    #[test]
    fn too_many_nodes_and_too_many_bytes_are_refused() {
        let many = "a\n".repeat(MAX_NODES + 1);
        let err = check("many.kdl", &many).unwrap_err();
        assert!(err.diagnostics[0].message.contains("nodes"), "{err}");
        let big = format!("a \"{}\"", "x".repeat(MAX_DOCUMENT_BYTES));
        let err = check("big.kdl", &big).unwrap_err();
        assert!(err.diagnostics[0].message.contains("bytes"), "{err}");
    }

    #[test]
    fn unterminated_constructs_end_the_scan_without_panicking() {
        for text in [
            "a \"abc",
            "a #\"abc",
            "a \"\"\"abc",
            "/* abc",
            "a r##\"",
            "a \"\\",
            "#",
            "r",
        ] {
            check("u.kdl", text).unwrap();
        }
    }

    #[test]
    fn the_parser_survives_the_deepest_accepted_document_on_a_small_stack() {
        // 2 MiB is the stack of a tokio worker and of a blocking-pool thread.
        let text = nested(MAX_DEPTH);
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || crate::compile("ok.kdl", &text).is_err())
            .unwrap();
        assert!(handle.join().unwrap());
    }
}
