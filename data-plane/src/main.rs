//! `sentinel`: parse flags, then validate, print, or serve.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sentinel_proxy::{admin, apply::Proxy, standalone, telemetry};

/// Sentinel reverse proxy.
#[derive(Parser, Debug)]
#[command(name = "sentinel", version, about, long_about = None)]
struct Flags {
    /// Configuration file (standalone mode).
    #[arg(long, env = "SENTINEL_CONFIG")]
    config: Option<PathBuf>,
    /// Control-plane URLs, comma-separated (control-plane mode).
    #[arg(long, env = "SENTINEL_CONTROL_PLANE", value_delimiter = ',')]
    control_plane: Vec<String>,
    /// This proxy's node id.
    #[arg(long, env = "SENTINEL_INSTANCE_ID")]
    node_id: Option<String>,
    /// Region of this proxy.
    #[arg(long, env = "SENTINEL_REGION")]
    region: Option<String>,
    /// Zone of this proxy.
    #[arg(long, env = "SENTINEL_ZONE")]
    zone: Option<String>,
    /// Directory of the last-good config cache.
    #[arg(long, env = "SENTINEL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Admin listener: /health, /ready, /metrics, /admin/*.
    #[arg(long, env = "SENTINEL_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Validate the configuration file and exit (0 valid, 1 invalid).
    #[arg(long)]
    validate: bool,
    /// Validate FILE and exit (same as `--validate --config FILE`).
    #[arg(long, value_name = "FILE")]
    test_config: Option<PathBuf>,
    /// Print the normalized configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let color = std::io::stderr().is_terminal();
    if flags.validate || flags.test_config.is_some() {
        let Some(path) = flags.test_config.clone().or(flags.config.clone()) else {
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
    if !flags.control_plane.is_empty() {
        eprintln!(
            "error: control-plane mode (--control-plane) is not built yet; run standalone with --config FILE"
        );
        return ExitCode::from(2);
    }
    let Some(path) = flags.config else {
        eprintln!("error: nothing to serve: give --config FILE (or SENTINEL_CONFIG)");
        return ExitCode::from(2);
    };
    let snapshot = match standalone::load(&path, color) {
        Ok(s) => s,
        Err(rendered) => {
            eprint!("{rendered}");
            return ExitCode::from(1);
        }
    };
    telemetry::init_logging(
        snapshot
            .settings
            .observability
            .as_ref()
            .and_then(|o| o.logging.as_ref()),
    );
    let workers = std::env::var("SENTINEL_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|w| *w > 0)
        .or_else(|| {
            snapshot
                .settings
                .server
                .map(|s| s.worker_threads as usize)
                .filter(|w| *w > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        telemetry::metrics();
        telemetry::spawn_upkeep();
        let proxy = Arc::new(Proxy::new());
        let (admin_addr, _admin) = admin::serve(Arc::clone(&proxy), flags.admin_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind admin listener {}: {e}", flags.admin_addr))?;
        tracing::info!(%admin_addr, workers, "admin listener up");
        let version = standalone::version(&path, &snapshot);
        proxy
            .apply(snapshot, version)
            .map_err(|e| anyhow::anyhow!("cannot apply {}: {e}", path.display()))?;
        standalone::run(proxy, path).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
