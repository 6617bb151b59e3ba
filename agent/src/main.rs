//! `sentinel-agent`: the reference agents as one binary.
//!
//! ```text
//! sentinel-agent token-auth --unix-socket /run/sentinel/auth.sock --token alice=s3cret
//! sentinel-agent denylist   --grpc 127.0.0.1:50061 --ip 10.0.0.0/8 --path '/admin*'
//! sentinel-agent echo       --unix-socket /tmp/echo.sock
//! sentinel-agent allow      --unix-socket /tmp/allow.sock
//! ```
//!
//! The proxy connects to the agent; nothing here starts or supervises a
//! proxy. Run it under systemd, a container runtime or Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sentinel_agent::reference::{AllowAll, Denylist, Echo, TokenAuth};
use sentinel_agent::{Agent, Listen};

#[derive(Parser)]
#[command(
    name = "sentinel-agent",
    version,
    about = "Sentinel's reference external agents"
)]
struct Cli {
    #[command(subcommand)]
    agent: Command,
}

#[derive(Args, Clone)]
struct ListenArgs {
    /// Serve on this Unix socket (the proxy's `unix-socket "PATH"`).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "grpc",
        required_unless_present = "grpc"
    )]
    unix_socket: Option<PathBuf>,
    /// Serve gRPC on this TCP address (the proxy's `grpc "http://ADDR"`).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Bearer tokens or HMAC-signed headers: allow (sets X-User) or 401.
    TokenAuth {
        #[command(flatten)]
        listen: ListenArgs,
        /// A user and their bearer token, `USER=TOKEN` (repeatable).
        #[arg(
            long = "token",
            value_name = "USER=TOKEN",
            env = "SENTINEL_AGENT_TOKENS",
            value_delimiter = ','
        )]
        tokens: Vec<String>,
        /// A file of `USER=TOKEN` lines (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        tokens_file: Option<PathBuf>,
        /// Shared secret for HMAC-signed requests (X-Sentinel-Signature).
        #[arg(long, env = "SENTINEL_AGENT_HMAC_SECRET", value_name = "SECRET")]
        hmac_secret: Option<String>,
        /// Largest accepted distance between X-Sentinel-Timestamp and now.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        max_skew_secs: u64,
    },
    /// Client IPs/CIDRs and path patterns: 403.
    Denylist {
        #[command(flatten)]
        listen: ListenArgs,
        /// A denied address or network, `10.0.0.0/8` (repeatable).
        #[arg(long = "ip", value_name = "CIDR")]
        ips: Vec<String>,
        /// A denied path pattern, `*` matches anything (repeatable).
        #[arg(long = "path", value_name = "PATTERN")]
        paths: Vec<String>,
    },
    /// Logs every event it receives and allows the request.
    Echo {
        #[command(flatten)]
        listen: ListenArgs,
        /// Also ask for and log response heads.
        #[arg(long)]
        inspect_response: bool,
    },
    /// Allows every request and does nothing else (benchmarks, smoke tests).
    Allow {
        #[command(flatten)]
        listen: ListenArgs,
    },
}

fn listen(args: &ListenArgs) -> anyhow::Result<Listen> {
    match (&args.unix_socket, args.grpc) {
        (Some(p), None) => Ok(Listen::Unix(p.clone())),
        (None, Some(a)) => Ok(Listen::Tcp(a)),
        _ => bail!("give exactly one of --unix-socket or --grpc"),
    }
}

async fn run<A: Agent>(name: &str, listen: Listen, agent: A) -> anyhow::Result<()> {
    let server = sentinel_agent::serve(listen.clone(), agent)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(agent = name, listen = %server.listen, "agent listening");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    tracing::info!(agent = name, "stopping");
    server.kill();
    if let Listen::Unix(p) = &listen {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    sentinel_telemetry::logging::init(Default::default(), None);
    let cli = Cli::parse();
    match cli.agent {
        Command::TokenAuth {
            listen: l,
            tokens,
            tokens_file,
            hmac_secret,
            max_skew_secs,
        } => {
            let mut agent = TokenAuth {
                hmac_secret: hmac_secret.map(String::into_bytes),
                max_skew_secs,
                ..Default::default()
            };
            for t in &tokens {
                agent.add_token(t).map_err(anyhow::Error::msg)?;
            }
            if let Some(path) = tokens_file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                for (i, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    agent
                        .add_token(line)
                        .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
                }
            }
            if agent.tokens.is_empty() && agent.hmac_secret.is_none() {
                bail!("token-auth needs --token, --tokens-file or --hmac-secret");
            }
            run("token-auth", listen(&l)?, agent).await
        }
        Command::Denylist {
            listen: l,
            ips,
            paths,
        } => {
            let mut agent = Denylist {
                paths,
                ..Default::default()
            };
            for ip in &ips {
                agent.networks.push(ip.parse().map_err(anyhow::Error::msg)?);
            }
            run("denylist", listen(&l)?, agent).await
        }
        Command::Echo {
            listen: l,
            inspect_response,
        } => run("echo", listen(&l)?, Echo { inspect_response }).await,
        Command::Allow { listen: l } => run("allow", listen(&l)?, AllowAll).await,
    }
}
