//! `sentinel`: parse flags, then validate, print, or serve.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sentinel_proxy::{admin, apply::Proxy, standalone, telemetry, workers::Workers};

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
    /// A label announced to the control plane, `KEY=VALUE` (repeatable;
    /// staged rollouts select by them: `label:KEY=VALUE`).
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        env = "SENTINEL_LABELS",
        value_delimiter = ','
    )]
    labels: Vec<String>,
    /// Directory of the last-good config cache.
    #[arg(long, env = "SENTINEL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// CA certificate (PEM) to verify the control plane (https:// URLs).
    #[arg(long, env = "SENTINEL_CP_CA_FILE")]
    cp_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS to the control plane.
    #[arg(long, env = "SENTINEL_CP_CERT_FILE")]
    cp_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mTLS to the control plane.
    #[arg(long, env = "SENTINEL_CP_KEY_FILE")]
    cp_key_file: Option<PathBuf>,
    /// Join token for control planes that do not use mTLS (sent as gRPC
    /// metadata `authorization: Bearer TOKEN`).
    #[arg(long, env = "SENTINEL_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Seconds between health reports to the control plane.
    #[arg(long, env = "SENTINEL_HEALTH_REPORT_SECS", default_value_t = 5)]
    health_report_secs: u64,
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
    no_huge_pages();
    if let Some(zone) = &flags.zone {
        sentinel_proxy::upstream::set_local_zone(zone);
    }
    // Who this proxy is: its hello to the control plane, and the instance
    // labels of its metrics and traces, in both modes.
    telemetry::set_instance(telemetry::Instance {
        node: flags.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "sentinel".into())
        }),
        region: flags.region.clone().unwrap_or_else(|| "default".into()),
        zone: flags.zone.clone().unwrap_or_else(|| "default".into()),
    });
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
        return control_plane_mode(flags);
    }
    let Some(path) = flags.config.clone() else {
        eprintln!(
            "error: nothing to serve: give --config FILE (or SENTINEL_CONFIG), or --control-plane URL"
        );
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
    let workers = workers(snapshot.settings.server.map(|s| s.worker_threads));
    serve(
        workers,
        flags.admin_addr,
        move |proxy, signals| async move {
            let version = standalone::version(&path, &snapshot);
            proxy
                .apply_off_workers(snapshot, version)
                .await
                .map_err(|e| anyhow::anyhow!("cannot apply {}: {e}", path.display()))?;
            // Discovery blocks run in process and swap endpoints through the
            // same apply path.
            let discovery =
                sentinel_proxy::discovered::StandaloneDiscovery::start(Arc::clone(&proxy));
            standalone::run(proxy, Some(path), Some(discovery), signals).await
        },
    )
}

/// Opts the process out of transparent huge pages, before any thread or
/// heap exists. A proxy's heap is many small, short-lived buffers; with
/// THP, mimalloc's segments were backed by 2 MiB pages: 8 MiB of an idle
/// proxy's 21 MiB resident set held a few KiB of data (docs/benchmarks.md,
/// "Proxy memory").
fn no_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: cannot opt out of transparent huge pages: {e}");
    }
}

/// Worker threads: `SENTINEL_WORKERS`, else the config known at start,
/// else one per core (see `workers`).
fn workers(configured: Option<u32>) -> Workers {
    Workers::at_start(
        std::env::var("SENTINEL_WORKERS").ok().as_deref(),
        configured,
    )
}

/// Starts the runtime, registers the signals, starts metrics and the admin
/// listener, then runs `body`. The signals come first: from the moment
/// anything can see the process up, a SIGHUP is a reload, never the
/// default action (exit).
fn serve<F, Fut>(workers: Workers, admin_addr: SocketAddr, body: F) -> ExitCode
where
    F: FnOnce(Arc<Proxy>, standalone::Signals) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    // Thread-per-core: this thread's current-thread runtime is worker 0;
    // `workers::start` adds the others (see `workers`).
    let count = workers.running();
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
        let signals = standalone::Signals::install()?;
        sentinel_proxy::workers::start(count)
            .map_err(|e| anyhow::anyhow!("cannot start {count} worker threads: {e}"))?;
        telemetry::metrics();
        telemetry::spawn_upkeep();
        let proxy = Arc::new(Proxy::new(workers));
        let (bound, _admin) = admin::serve(Arc::clone(&proxy), admin_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind admin listener {admin_addr}: {e}"))?;
        tracing::info!(admin_addr = %bound, workers = count, "admin listener up");
        body(proxy, signals).await
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

fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

fn control_plane_mode(flags: Flags) -> ExitCode {
    // Start with the logging and worker threads of the config this proxy
    // will serve first: its last-good cache.
    let cached = flags
        .cache_dir
        .as_deref()
        .and_then(sentinel_proxy::stream::cached_settings);
    telemetry::init_logging(
        cached
            .as_ref()
            .and_then(|s| s.observability.as_ref())
            .and_then(|o| o.logging.as_ref()),
    );
    let workers = workers(cached.and_then(|s| s.server).map(|s| s.worker_threads));
    let instance = telemetry::instance();
    let tls = match (&flags.cp_ca_file, &flags.cp_cert_file, &flags.cp_key_file) {
        (None, None, None) => None,
        (ca, cert, key) => {
            let build = || -> anyhow::Result<tonic::transport::ClientTlsConfig> {
                let mut t = tonic::transport::ClientTlsConfig::new();
                if let Some(ca) = ca {
                    t = t.ca_certificate(tonic::transport::Certificate::from_pem(read_file(ca)?));
                }
                match (cert, key) {
                    (Some(c), Some(k)) => {
                        t = t.identity(tonic::transport::Identity::from_pem(
                            read_file(c)?,
                            read_file(k)?,
                        ));
                    }
                    (None, None) => {}
                    _ => anyhow::bail!("--cp-cert-file and --cp-key-file go together"),
                }
                Ok(t)
            };
            match build() {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let node = sentinel_proto::Node {
        id: instance.node.clone(),
        region: instance.region.clone(),
        zone: instance.zone.clone(),
        build_version: env!("CARGO_PKG_VERSION").into(),
        labels: flags
            .labels
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| sentinel_proto::Label {
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            })
            .collect(),
    };
    let urls = flags.control_plane.clone();
    serve(
        workers,
        flags.admin_addr,
        move |proxy, signals| async move {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let client = sentinel_proxy::stream::Client {
                urls,
                node,
                cache_dir: flags.cache_dir.clone(),
                tls,
                proxy: Arc::clone(&proxy),
                health_interval: std::time::Duration::from_secs(flags.health_report_secs.max(1)),
                join_token: flags.join_token.clone(),
            };
            let task = tokio::spawn(client.run(stopped));
            let left = standalone::run(proxy, None, None, signals).await;
            let _ = stop.send(true);
            task.abort();
            left
        },
    )
}
