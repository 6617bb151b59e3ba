//! `sentinelctl`: the operator's tool. Flags are parsed here; each
//! subcommand lives in its own module, every request goes through
//! `client`, and everything printed goes through `render`.
//!
//! Exit codes: 0 ok, 1 the operation failed (invalid config, refused,
//! NACK, timeout), 2 usage error, 3 the control plane cannot be reached.

mod apply;
mod client;
mod endpoints;
mod fleet;
mod render;
mod rollback;
mod rollout;
mod token;
mod trace;
mod validate;
mod wait;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use client::{CliError, Client};
use render::Format;

const EXAMPLES: &str = "\
Examples:
  sentinelctl validate sentinel.kdl
  sentinelctl apply sentinel.kdl -m 'add the payments route' --wait
  sentinelctl apply sentinel.kdl --dry-run
  sentinelctl apply sentinel.kdl --stages 'canary:1,eu-west,*' --bake 30s --wait=5m
  sentinelctl apply sentinel.kdl --canary 10% --wait=5m
  sentinelctl rollout status
  sentinelctl rollout abort
  sentinelctl status
  sentinelctl rollback --wait=2m
  sentinelctl trace 42
  sentinelctl diff 41 42
  sentinelctl get 41 > v41.kdl
  sentinelctl nodes -o json
  sentinelctl endpoints payments
  sentinelctl token create ci --role write --expires 90d
  sentinelctl token create edge-1 --join --node edge-1
  sentinelctl token revoke ci

Server and token: --server/--token, SENTINEL_SERVER/SENTINEL_TOKEN, or the
file $XDG_CONFIG_HOME/sentinel/sentinelctl.conf (lines `server = URL`,
`token = TOKEN`; SENTINELCTL_CONFIG names another file).";

/// Operate a Sentinel fleet.
#[derive(Parser)]
#[command(name = "sentinelctl", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Control-plane API URL [default: http://127.0.0.1:8700].
    #[arg(long, env = "SENTINEL_SERVER", global = true)]
    server: Option<String>,
    /// API token.
    #[arg(long, env = "SENTINEL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate locally, show the diff against the active version, apply.
    Apply(apply::Args),
    /// Re-activate the previous version (or --to N); during a rollout, abort it.
    Rollback(rollback::Args),
    /// Staged rollouts: status, promote, pause, resume, abort, list.
    #[command(subcommand)]
    Rollout(rollout::Command),
    /// Active version, nodes per region and version, NACKs, disconnected nodes.
    Status,
    /// Every proxy: region, zone, connection, version, last NACK.
    Nodes,
    /// Versions and activations (applies and rollbacks).
    History,
    /// Print the KDL source of version N (default: the active one).
    Get { version: Option<i64> },
    /// The per-node timeline of the change that delivered version N: pushed,
    /// received, built, swapped, ACKed or NACKed (no collector needed).
    Trace { version: i64 },
    /// Difference between two versions (default: the active one and the one before).
    Diff { from: Option<i64>, to: Option<i64> },
    /// Validate configuration files offline (no control plane needed).
    Validate(validate::Args),
    /// Upstream target health aggregated across the fleet.
    Health,
    /// Discovered endpoints: targets, source, health, generation, staleness,
    /// proxies on the current set.
    Endpoints { upstream: Option<String> },
    /// API tokens and proxy join tokens: create, list, revoke (admin).
    #[command(subcommand)]
    Token(token::Command),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

/// Exit codes of SPEC §7.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const UNREACHABLE: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.output;
    let command = match cli.command {
        Command::Validate(args) => return ExitCode::from(validate::run(&args, format)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sentinelctl",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let client = Client::new(cli.server, cli.token);
    let result = runtime.block_on(async {
        match command {
            Command::Apply(args) => apply::run(&client, format, &args).await,
            Command::Rollback(args) => rollback::run(&client, format, &args).await,
            Command::Rollout(command) => rollout::run(&client, format, &command).await,
            Command::Status => fleet::status(&client, format).await,
            Command::Nodes => fleet::nodes(&client, format).await,
            Command::History => fleet::history(&client, format).await,
            Command::Get { version } => fleet::get(&client, format, version).await,
            Command::Diff { from, to } => fleet::diff(&client, format, from, to).await,
            Command::Trace { version } => trace::show(&client, format, version).await,
            Command::Health => fleet::health(&client, format).await,
            Command::Endpoints { upstream } => {
                endpoints::run(&client, format, upstream.as_deref()).await
            }
            Command::Token(command) => token::run(&client, format, &command).await,
            Command::Validate(_) | Command::Completions { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(CliError::Invalid(rendered)) => {
            eprint!("{rendered}");
            ExitCode::from(exit::FAILED)
        }
        Err(e @ CliError::Unreachable { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::UNREACHABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}
