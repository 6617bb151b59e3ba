//! `sentinel-cp`: parse flags, then run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// mimalloc, as the proxy: with 100,000 sessions glibc's allocator spent a
/// sixth of the control plane's CPU in malloc/free and chunk consolidation
/// during a fleet-wide push (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sentinel control plane.
#[derive(Parser, Debug)]
#[command(name = "sentinel-cp", version, about, long_about = None)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// postgres://…, sqlite:///abs/path.db or sqlite:relative.db (the file is
    /// created, its directory must exist); default: sentinel-cp.db (SQLite) in
    /// the working directory.
    #[arg(long, env = "DATABASE_URL", default_value = "", global = true)]
    database_url: String,
    /// Address of the gRPC stream proxies connect to.
    #[arg(long, env = "SENTINEL_CP_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    grpc_addr: SocketAddr,
    /// Address of the REST API.
    #[arg(long, env = "SENTINEL_CP_API_ADDR", default_value = "0.0.0.0:8700")]
    api_addr: SocketAddr,
    /// PEM certificate for gRPC TLS.
    #[arg(long, env = "SENTINEL_CP_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM key for gRPC TLS.
    #[arg(long, env = "SENTINEL_CP_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// Require proxies to present a client certificate signed by this CA (mTLS).
    #[arg(long, env = "SENTINEL_CP_GRPC_CLIENT_CA")]
    grpc_client_ca: Option<PathBuf>,
    /// PEM certificate for the REST API.
    #[arg(long, env = "SENTINEL_CP_API_TLS_CERT", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// PEM key for the REST API.
    #[arg(long, env = "SENTINEL_CP_API_TLS_KEY", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Milliseconds a REST API client may take to finish its TLS handshake.
    #[arg(
        long,
        env = "SENTINEL_CP_API_TLS_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    api_tls_handshake_timeout_ms: u64,
    /// Region of this replica.
    #[arg(long, env = "SENTINEL_CP_REGION", default_value = "default")]
    region: String,
    /// Name of this replica (default: host name and process id).
    #[arg(long, env = "SENTINEL_CP_REPLICA")]
    replica: Option<String>,
    /// Admin API token created on start if absent.
    #[arg(long, env = "SENTINEL_CP_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    /// A fleet-wide join token for proxies (created on start, rotated when
    /// the secret changes).
    #[arg(long, env = "SENTINEL_CP_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Accept proxy streams without mTLS or a join token: any client may
    /// claim any node id. Logged loudly.
    #[arg(long, env = "SENTINEL_CP_INSECURE_STREAMS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    insecure_streams: bool,
    /// With --grpc-client-ca: the SPIFFE trust domain of `spiffe://TD/node/ID` SANs.
    #[arg(long, env = "SENTINEL_CP_GRPC_TRUST_DOMAIN")]
    grpc_trust_domain: Option<String>,
    /// Seconds between keepalive messages on idle streams.
    #[arg(long, env = "SENTINEL_CP_KEEPALIVE_SECS", default_value_t = 15)]
    keepalive_secs: u64,
    /// Large pushes (a full configuration, any response of 64 KiB or more) in flight at once; more wait.
    #[arg(long, env = "SENTINEL_CP_MAX_LARGE_PUSHES", default_value_t = sentinel_cp::stream::MAX_LARGE_PUSHES as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_large_pushes: u64,
    /// Longest an apply waits for its compilation (including its turn); past it the API answers 503.
    #[arg(long, env = "SENTINEL_CP_COMPILE_TIMEOUT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    compile_timeout_secs: u64,
    /// Seconds between polls of the active version (catches missed notifications).
    #[arg(long, env = "SENTINEL_CP_POLL_SECS", default_value_t = 2)]
    poll_secs: u64,
    /// A target is unhealthy fleet-wide when at least this percent of reporting proxies say so.
    #[arg(long, env = "SENTINEL_CP_HEALTH_QUORUM_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    health_quorum_percent: u32,
    /// Nodes not seen for this long are listed as expired and not counted by status or --wait.
    #[arg(long, env = "SENTINEL_CP_NODE_EXPIRY_SECS", default_value_t = 3600)]
    node_expiry_secs: u64,
    /// OTLP/gRPC collector for the control plane's own spans (each config
    /// change is one trace: API request, validation, store, activation;
    /// proxies add theirs). Without it, traces get ids and per-node
    /// timelines (`sentinelctl trace`) but nothing is exported.
    #[arg(long, env = "SENTINEL_CP_OTLP_ENDPOINT", default_value = "")]
    otlp_endpoint: String,
    /// Share of traces the control plane starts that are sampled (a request
    /// with a `traceparent` follows its caller's decision).
    #[arg(long, env = "SENTINEL_CP_TRACE_SAMPLING_RATE", default_value_t = 1.0)]
    trace_sampling_rate: f64,
}

/// One-shot commands; without one, `sentinel-cp` runs the control plane.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the OpenAPI 3.1 document of the REST API (what
    /// `GET /v1/openapi.json` serves) and exit.
    Openapi,
    /// Run the database migrations of `--database-url` and exit (for
    /// operators who migrate as a separate step; `sentinel-cp` also
    /// migrates on start).
    Migrate,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(Command::Openapi) = flags.command {
        print!("{}", sentinel_cp::api::openapi::json());
        return ExitCode::SUCCESS;
    }
    let replica = flags.replica.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{}-{}",
            if host.is_empty() { "cp" } else { &host },
            std::process::id()
        )
    });
    sentinel_cp::rollout::set_compile_timeout(Duration::from_secs(flags.compile_timeout_secs));
    let settings = sentinel_cp::server::Settings {
        database_url: flags.database_url,
        grpc_addr: flags.grpc_addr,
        api_addr: flags.api_addr,
        grpc_tls: flags.grpc_tls_cert.zip(flags.grpc_tls_key),
        grpc_client_ca: flags.grpc_client_ca,
        api_tls: flags.api_tls_cert.zip(flags.api_tls_key),
        api_tls_handshake_timeout: Duration::from_millis(flags.api_tls_handshake_timeout_ms.max(1)),
        region: flags.region.clone(),
        replica: replica.clone(),
        bootstrap_token: flags.bootstrap_token,
        join_token: flags.join_token,
        insecure_streams: flags.insecure_streams,
        grpc_trust_domain: flags.grpc_trust_domain,
        keepalive: Duration::from_secs(flags.keepalive_secs.max(1)),
        poll: Duration::from_secs(flags.poll_secs.max(1)),
        health_quorum_percent: flags.health_quorum_percent,
        node_expiry: Duration::from_secs(flags.node_expiry_secs),
        max_large_pushes: usize::try_from(flags.max_large_pushes).unwrap_or(usize::MAX),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let tracing = sentinel_cp::telemetry::Tracing {
        endpoint: flags.otlp_endpoint,
        sampling_rate: flags.trace_sampling_rate,
        replica,
        region: flags.region,
    };
    let pipeline = {
        let _in_runtime = runtime.enter();
        match sentinel_cp::telemetry::init(&tracing) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: tracing: {e}");
                return ExitCode::from(2);
            }
        }
    };
    if let Some(Command::Migrate) = flags.command {
        return match runtime.block_on(sentinel_cp::store::Store::connect(&settings.database_url)) {
            Ok(store) => {
                println!("migrations applied ({})", store.dialect_name());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot migrate the database: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let result = runtime.block_on(sentinel_cp::server::run(settings));
    // Export what the last moments traced (bounded: the collector may be gone).
    runtime.block_on(pipeline.flush(Duration::from_secs(2)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
