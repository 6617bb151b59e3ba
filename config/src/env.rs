//! `${NAME}` and `${NAME:-default}` references in string values.
//!
//! A configuration is authored once for the whole fleet, but some values are
//! node-local (a listener address when several proxies share a host) or
//! secret (a Redis password). Such strings keep their references through
//! compilation, storage and the wire; only the proxy that applies a resource
//! resolves them, with [`expand`], against its own environment. `$${` writes
//! a literal `${`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    #[error("unterminated `${{` reference (missing `}}`)")]
    Unterminated,
    #[error("invalid variable name `{0}` (use letters, digits and `_`, not starting with a digit)")]
    InvalidName(String),
    #[error("environment variable `{0}` is not set and has no default (`${{{0}:-default}}`)")]
    Missing(String),
}

/// One `${…}` reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub default: Option<String>,
}

enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, EnvError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push(Piece::Text(&rest[..i + 1]));
            out.push(Piece::Text("{"));
            rest = literal;
            continue;
        }
        if !after.starts_with('{') {
            out.push(Piece::Text(&rest[..i + 1]));
            rest = after;
            continue;
        }
        out.push(Piece::Text(&rest[..i]));
        let body_end = after.find('}').ok_or(EnvError::Unterminated)?;
        let body = &after[1..body_end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (body, None),
        };
        if !valid_name(name) {
            return Err(EnvError::InvalidName(name.to_string()));
        }
        out.push(Piece::Ref(Reference {
            name: name.to_string(),
            default,
        }));
        rest = &after[body_end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The references in `s`, or why its syntax is wrong.
pub fn references(s: &str) -> Result<Vec<Reference>, EnvError> {
    Ok(pieces(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Resolves every reference in `s` with `lookup` (usually `std::env::var`).
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(s.len());
    for piece in pieces(s)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => match (lookup(&r.name), r.default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(&d),
                (None, None) => return Err(EnvError::Missing(r.name)),
            },
        }
    }
    Ok(out)
}

/// Resolves against the process environment.
pub fn expand_from_process(s: &str) -> Result<String, EnvError> {
    expand(s, |name| std::env::var(name).ok())
}

/// The value `s` takes when every reference falls back to its default, or
/// `None` if some reference has no default (then it can only be checked on
/// the proxy that resolves it).
pub fn with_defaults(s: &str) -> Option<String> {
    expand(s, |_| None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "9000".to_string())
    }

    #[test]
    fn expands_set_and_default_references() {
        assert_eq!(expand("127.0.0.1:${PORT}", env).unwrap(), "127.0.0.1:9000");
        assert_eq!(
            expand("${HOST:-0.0.0.0}:${PORT}", env).unwrap(),
            "0.0.0.0:9000"
        );
        assert_eq!(expand("plain", env).unwrap(), "plain");
        assert_eq!(
            expand("cost $5 and $${LITERAL}", env).unwrap(),
            "cost $5 and ${LITERAL}"
        );
    }

    #[test]
    fn reports_syntax_and_missing_variables() {
        assert_eq!(expand("${OOPS", env), Err(EnvError::Unterminated));
        assert_eq!(
            expand("${1X}", env),
            Err(EnvError::InvalidName("1X".into()))
        );
        assert_eq!(
            expand("${NOPE}", env),
            Err(EnvError::Missing("NOPE".into()))
        );
        assert_eq!(with_defaults("${A:-x}${B}"), None);
        assert_eq!(
            references("a${B:-c}").unwrap(),
            vec![Reference {
                name: "B".into(),
                default: Some("c".into())
            }]
        );
    }
}
