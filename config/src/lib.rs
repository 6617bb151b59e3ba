//! `sentinel-config`: the Sentinel configuration language.
//!
//! KDL text goes in; either a [`Snapshot`] of wire resources or every
//! [`Diagnostic`] the document deserves comes out. The CLI, the control plane
//! and the proxy's standalone mode all call the same [`compile`], so the three
//! binaries understand a file identically.
//!
//! - `compile/` reads each block, applies defaults and checks references;
//! - `snapshot` encodes resources deterministically and hashes them;
//! - `print` writes the normalized KDL form back out;
//! - `bounds` refuses documents too deep or too large for the parser, before it runs;
//! - `env` resolves `${VAR}` references (only ever called on a proxy).
//!
//! Invariant: this crate performs no I/O except [`compile_file`] reading the
//! file it is given, and holds no global state.

pub mod bounds;
mod compile;
mod diagnostic;
pub mod env;
mod print;
mod reader;
mod snapshot;
pub mod values;

pub use compile::{TOP_LEVEL, compile, schema};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use print::print;
pub use snapshot::{Snapshot, SnapshotError, Summary, config_hash, resource, sha256_hex};

pub use sentinel_proto as proto;

/// Reads and compiles a file; an unreadable file is a diagnostic too.
pub fn compile_file(path: &std::path::Path) -> Result<Snapshot, Diagnostics> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => compile(&file, &text),
        Err(e) => Err(Diagnostics::whole_file(
            &file,
            format!("cannot read {file}: {e}"),
        )),
    }
}

/// The `validate` command shared by `sentinelctl validate` and
/// `sentinel --validate`: `Ok(summary line)` or `Err(rendered diagnostics)`.
pub fn validate_file(path: &std::path::Path, color: bool) -> Result<String, String> {
    match compile_file(path) {
        Ok(snapshot) => Ok(format!(
            "{}: valid: {} (config {})",
            path.display(),
            snapshot.summary(),
            &snapshot.config_hash()[..12]
        )),
        Err(diagnostics) => Err(diagnostics.render(color)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) const MINIMAL: &str = r#"
listeners {
    listener "http" { address "127.0.0.1:8080"; }
}
upstreams {
    upstream "backend" { target "127.0.0.1:9000"; }
}
routes {
    route "all" {
        matches { path-prefix "/"; }
        upstream "backend"
    }
}
"#;

    #[test]
    fn minimal_compiles_with_defaults() {
        let s = crate::compile("m.kdl", MINIMAL).unwrap();
        assert_eq!(
            s.summary().to_string(),
            "1 listeners, 1 routes, 1 upstreams (1 static targets), 0 filters, 0 agents"
        );
        assert_eq!(s.routes[0].priority, 500);
        assert_eq!(s.upstreams[0].timeouts.as_ref().unwrap().connect_ms, 5000);
    }

    #[test]
    fn printed_form_compiles_to_the_same_snapshot() {
        let s = crate::compile("m.kdl", MINIMAL).unwrap();
        let printed = crate::print(&s);
        let back = crate::compile("printed.kdl", &printed)
            .unwrap_or_else(|d| panic!("{}\n{printed}", d.render(false)));
        assert_eq!(back, s);
    }
}
