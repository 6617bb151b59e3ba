//! `sentinelctl validate FILE…`: offline validation with the same compiler
//! (and so the same diagnostics) as the control plane.

use std::io::IsTerminal;
use std::path::PathBuf;

use serde_json::json;

use crate::exit;
use crate::render::Format;

#[derive(clap::Args)]
pub struct Args {
    /// KDL files to validate.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: &Args, format: Format) -> u8 {
    let color = std::io::stderr().is_terminal();
    let mut code = exit::OK;
    let mut results = Vec::new();
    for file in &args.files {
        if format == Format::Json {
            let result = match sentinel_config::compile_file(file) {
                Ok(s) => {
                    json!({ "file": file, "valid": true, "hash": s.config_hash(), "summary": s.summary() })
                }
                Err(d) => {
                    code = exit::FAILED;
                    json!({ "file": file, "valid": false, "diagnostics": d.diagnostics })
                }
            };
            results.push(result);
            continue;
        }
        match sentinel_config::validate_file(file, color) {
            Ok(summary) => println!("{summary}"),
            Err(rendered) => {
                eprint!("{rendered}");
                code = exit::FAILED;
            }
        }
    }
    if format == Format::Json {
        crate::render::json(&serde_json::Value::Array(results));
    }
    code
}
