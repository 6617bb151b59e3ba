//! `sentinel`: the proxy. Parses flags, then validates, prints, or serves.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Sentinel reverse proxy.
#[derive(Parser, Debug)]
#[command(name = "sentinel", version, about, long_about = None)]
struct Flags {
    /// Configuration file (standalone mode).
    #[arg(long, env = "SENTINEL_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration file and exit (0 valid, 1 invalid).
    #[arg(long)]
    validate: bool,
    /// Validate a configuration file and exit (same as `--validate --config FILE`).
    #[arg(long, value_name = "FILE")]
    test_config: Option<PathBuf>,
    /// Print the normalized configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let color = std::io::stderr().is_terminal();
    let validate_path = flags.test_config.clone().or(if flags.validate {
        flags.config.clone()
    } else {
        None
    });
    if flags.validate || flags.test_config.is_some() {
        let Some(path) = validate_path else {
            eprintln!("error: --validate needs --config FILE (or SENTINEL_CONFIG)");
            return ExitCode::from(2);
        };
        return match sentinel_config::validate_file(&path, color) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(rendered) => {
                eprint!("{rendered}");
                ExitCode::from(1)
            }
        };
    }
    if flags.print_config {
        let Some(path) = flags.config else {
            eprintln!("error: --print-config needs --config FILE (or SENTINEL_CONFIG)");
            return ExitCode::from(2);
        };
        return match sentinel_config::compile_file(&path) {
            Ok(snapshot) => {
                print!("{}", sentinel_config::print(&snapshot));
                ExitCode::SUCCESS
            }
            Err(d) => {
                eprint!("{}", d.render(color));
                ExitCode::from(1)
            }
        };
    }
    eprintln!("error: serving traffic is not built yet; use --validate or --print-config");
    ExitCode::from(2)
}
