//! `sentinelctl`: the operator's tool. Flags are parsed here; each
//! subcommand lives in its own module.

mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate a Sentinel fleet.
#[derive(Parser)]
#[command(name = "sentinelctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate configuration files offline (no control plane needed).
    ///
    /// Exit 0 when every file is valid; 1 with every diagnostic otherwise.
    ///
    /// Example: sentinelctl validate sentinel.kdl staging.kdl
    Validate(validate::Args),
}

/// Exit codes of SPEC §7.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate(args) => validate::run(&args),
    };
    ExitCode::from(code)
}
