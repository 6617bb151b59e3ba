//! `sentinelctl validate FILE…`: offline validation with the same compiler
//! (and so the same diagnostics) as the control plane.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// KDL files to validate.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: &Args) -> u8 {
    let color = std::io::stderr().is_terminal();
    let mut code = exit::OK;
    for file in &args.files {
        match sentinel_config::validate_file(file, color) {
            Ok(summary) => println!("{summary}"),
            Err(rendered) => {
                eprint!("{rendered}");
                code = exit::FAILED;
            }
        }
    }
    code
}
