//! The end-to-end harness: real servers as child processes on free loopback
//! ports, with their logs kept in files and printed when a test fails.
//!
//! - [`Postgres`]: a throwaway PostgreSQL cluster (initdb in a temp dir,
//!   started from the system's binaries, stoppable and restartable for
//!   fault tests);
//! - [`ControlPlane`]: a `sentinel-cp` process, started with the admin
//!   token [`BOOTSTRAP_TOKEN`] and the fleet join token [`JOIN_TOKEN`];
//! - [`Proxy`]: a `sentinel` proxy that joins with [`JOIN_TOKEN`];
//! - [`join_request`], [`authorize`]: the join token on a raw tonic request,
//!   for tests that speak the gRPC stream themselves;
//! - [`scripted::ScriptedProxy`]: a proxy speaking the real delta stream
//!   whose answers a test scripts (model-based protocol tests);
//! - [`free_port`], [`wait_for`]: small helpers.
//!
//! Binaries are passed in by path (`env!("CARGO_BIN_EXE_…")` in the crate
//! that owns them, or [`workspace_bin`] for the top-level scenarios).

pub mod agent;
pub mod browser;
pub mod consul;
pub mod dnsmasq;
pub mod kube;
pub mod otlp;
pub mod raw;
pub mod redis;
pub mod scripted;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port that was free a moment ago, chosen *below* the kernel's
/// ephemeral range: a listener that is restarted during a test must find its
/// port free again, and ports from `bind(0)` are also handed out as the
/// local ports of outgoing connections (of every test running in parallel).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (start, end) = (10_000u16, low.saturating_sub(1).max(10_001));
    for attempt in 0..200u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let port = start + (h.finish() % u64::from(end - start)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 20 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (the test command does that first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/test-binary → target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A binary of this workspace in `target/PROFILE` (for tools that run from
/// `target/PROFILE/` themselves, like the benchmarks).
pub fn workspace_bin_in(profile: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf);
    target
        .unwrap_or_else(|| PathBuf::from("target"))
        .join(profile)
        .join(name)
}

fn find_pg_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|p| p.join("initdb").exists())
        .expect("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (scripts/test installs them)")
}

/// Runs a PostgreSQL binary as an unprivileged user when we are root.
fn pg_command(bin: &Path, as_user: Option<&str>) -> Command {
    match as_user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(user).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// A throwaway PostgreSQL cluster on a free loopback port.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = find_pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("sentinel-pg-")
            .tempdir()
            .expect("temp dir");
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let user = root.then(|| "postgres".to_string());
        if let Some(u) = &user {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(u)
                .arg(dir.path())
                .status()
                .map(|s| s.success());
            assert_eq!(
                ok.ok(),
                Some(true),
                "cannot chown the PostgreSQL data dir to {u}"
            );
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin.join("initdb"), user.as_deref())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            user,
            child: None,
        };
        pg.start_server();
        pg
    }

    // Synchronous on purpose: tests call it before their async work starts,
    // and fault tests need the server up when it returns.
    #[allow(clippy::disallowed_methods)]
    fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("postgres log");
        let child = pg_command(&self.bin.join("postgres"), self.user.as_deref())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        for _ in 0..300 {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("PostgreSQL did not start:\n{}", self.logs());
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown): clients see it as unavailable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Signal the postmaster itself (runuser does not forward signals).
            let _ = pg_command(&self.bin.join("pg_ctl"), self.user.as_deref())
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "-t", "20", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `sentinel-cp` process with its API and gRPC addresses.
pub struct ControlPlane {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub token: String,
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

pub const BOOTSTRAP_TOKEN: &str = "test-bootstrap-token";

/// The fleet-wide join token every [`ControlPlane`] is started with
/// (`--join-token`) and every [`Proxy`] joins with (`SENTINEL_JOIN_TOKEN`).
pub const JOIN_TOKEN: &str = "test-join-token";

/// Adds `authorization: Bearer SECRET` — how a proxy presents a join token
/// on the gRPC streams — to a raw tonic request.
pub fn authorize<T>(request: &mut tonic::Request<T>, secret: &str) {
    if let Ok(value) = format!("Bearer {secret}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
}

/// `message` as a tonic request carrying the harness's [`JOIN_TOKEN`].
pub fn join_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    authorize(&mut request, JOIN_TOKEN);
    request
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p
}

impl ControlPlane {
    /// Runs `sentinelctl` against this control plane with its admin token,
    /// reading no config file and neither a token nor an OTLP endpoint from
    /// the environment: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(workspace_bin("sentinelctl"))
            .arg("--server")
            .arg(self.url())
            .arg("--token")
            .arg(&self.token)
            .args(args)
            .env("SENTINELCTL_CONFIG", "/nonexistent")
            .env_remove("SENTINEL_TOKEN")
            .env_remove("SENTINEL_OTLP_ENDPOINT")
            .output()
            .expect("run sentinelctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Starts `bin` on `database_url` (empty: SQLite in a temp dir) and
    /// waits for `/healthz`.
    pub async fn start(bin: &Path, database_url: &str, extra: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sentinel-cp-")
            .tempdir()
            .expect("temp dir");
        let db = if database_url.is_empty() {
            format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display())
        } else {
            database_url.to_string()
        };
        let api = loopback(free_port());
        let grpc = loopback(free_port());
        let mut args = vec![
            "--database-url".to_string(),
            db,
            "--api-addr".to_string(),
            api.to_string(),
            "--grpc-addr".to_string(),
            grpc.to_string(),
            "--bootstrap-token".to_string(),
            BOOTSTRAP_TOKEN.to_string(),
            "--join-token".to_string(),
            JOIN_TOKEN.to_string(),
            "--poll-secs".to_string(),
            "1".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // A test may give its own tokens: the last occurrence would win in
        // clap, but a flag given twice is an error, so drop the default.
        for (flag, default) in [
            ("--bootstrap-token", BOOTSTRAP_TOKEN),
            ("--join-token", JOIN_TOKEN),
        ] {
            if extra.contains(&flag)
                && let Some(i) = args.iter().position(|a| a == flag)
                && args.get(i + 1).is_some_and(|v| v == default)
            {
                args.drain(i..i + 2);
            }
        }
        let token = args
            .iter()
            .position(|a| a == "--bootstrap-token")
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| BOOTSTRAP_TOKEN.to_string());
        let log = dir.path().join("cp.log");
        let mut cp = ControlPlane {
            api,
            grpc,
            token,
            child: None,
            bin: bin.to_path_buf(),
            args,
            dir,
            log,
        };
        cp.spawn().await;
        cp
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cp log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sentinel-cp");
        self.child = Some(child);
        // Started means: this process logged that its API listens (a random
        // port another process holds would otherwise pass the connect), and
        // the port answers.
        let listening = |log: &str| log.matches("REST API listening").count();
        let before = listening(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let addr = self.api;
        let log = self.log.clone();
        let up = wait_for(Duration::from_secs(15), || {
            let log = log.clone();
            async move {
                listening(&std::fs::read_to_string(&log).unwrap_or_default()) > before
                    && tokio::net::TcpStream::connect(addr).await.is_ok()
            }
        })
        .await;
        assert!(up, "sentinel-cp did not start:\n{}", self.logs());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the control plane dies without closing anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Starts the same process again (same ports, same database).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Restarts with `flag` set to `value` (added, or replacing its value):
    /// e.g. a new `--bootstrap-token` to rotate it.
    pub async fn restart_with(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
        if flag == "--bootstrap-token" {
            self.token = value.to_string();
        }
        self.restart().await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- sentinel-cp log ({}) ----\n{}\n---- end ----",
                self.api,
                self.logs()
            );
        }
    }
}

/// A `sentinel` proxy in control-plane mode.
pub struct Proxy {
    pub name: String,
    pub admin: SocketAddr,
    pub http: SocketAddr,
    pub cache_dir: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// The `X-Config` response header of `GET /` through this proxy (the
    /// version the test configs' routes set), whatever the status; `None`
    /// when it does not answer or sets none.
    pub async fn served(&self) -> Option<String> {
        let r = http()
            .get(format!("http://{}/", self.http))
            .send()
            .await
            .ok()?;
        r.headers()
            .get("x-config")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Starts a proxy connected to `control_planes` (comma-joined URLs).
    /// Its listener address is given to the config as `SENTINEL_HTTP_ADDR`;
    /// it joins with [`JOIN_TOKEN`] unless `env` sets `SENTINEL_JOIN_TOKEN`.
    pub fn start(
        bin: &Path,
        name: &str,
        region: &str,
        control_planes: &[String],
        env_in: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("sentinel-proxy-")
            .tempdir()
            .expect("temp dir");
        let admin = loopback(free_port());
        let http = loopback(free_port());
        let cache_dir = dir.path().join("cache");
        let args = vec![
            "--control-plane".to_string(),
            control_planes.join(","),
            "--node-id".to_string(),
            name.to_string(),
            "--region".to_string(),
            region.to_string(),
            "--zone".to_string(),
            format!("{region}-a"),
            "--cache-dir".to_string(),
            cache_dir.display().to_string(),
            "--admin-addr".to_string(),
            admin.to_string(),
            "--health-report-secs".to_string(),
            "1".to_string(),
        ];
        let mut env: Vec<(String, String)> =
            vec![("SENTINEL_JOIN_TOKEN".into(), JOIN_TOKEN.into())];
        env.extend(env_in.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.push(("SENTINEL_HTTP_ADDR".into(), http.to_string()));
        let log = dir.path().join("proxy.log");
        let mut p = Proxy {
            name: name.into(),
            admin,
            http,
            cache_dir,
            child: None,
            bin: bin.into(),
            args,
            env,
            log,
            _dir: dir,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("proxy log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .env("SENTINEL_WORKERS", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sentinel");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a signal (`STOP` freezes the process with its connections
    /// open: a proxy that is connected but never answers).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- proxy {} log ----\n{}\n---- end ----",
                self.name,
                self.logs()
            );
        }
    }
}

/// A TCP relay between a region and the control plane: forwards bytes,
/// optionally adds latency, and can cut every connection (a partition) and
/// heal again. The kernel here has no netem; this is how tests shape links.
pub struct Relay {
    pub addr: SocketAddr,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    latency_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let latency_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, l) = (
            std::sync::Arc::clone(&cut),
            std::sync::Arc::clone(&latency_ms),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *c.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                let latency = std::sync::Arc::clone(&l);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let pipe = |mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, latency: std::sync::Arc<std::sync::atomic::AtomicU64>| async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let delay = latency.load(std::sync::atomic::Ordering::Relaxed);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let _ = (&mut ri, &mut wi, &mut ro, &mut wo);
                    tokio::select! {
                        _ = pipe(ri, wo, std::sync::Arc::clone(&latency)) => {}
                        _ = pipe(ro, wi, latency) => {}
                        _ = async { while !*cut_rx.borrow_and_update() { if cut_rx.changed().await.is_err() { return; } } } => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            latency_ms,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn set_latency(&self, ms: u64) {
        self.latency_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP client for the scenarios: rustls on ring (the workspace's one
/// provider), and a 5 s timeout so a hung server fails a test instead of
/// stalling it.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// A demo backend process (`sentinel-bench-backend`) answering
/// `hello from NAME`.
pub struct DemoBackend {
    pub addr: SocketAddr,
    child: Child,
}

impl DemoBackend {
    pub fn start(bin: &Path, name: &str) -> DemoBackend {
        Self::start_at(bin, loopback(free_port()), name)
    }

    /// A backend on `addr` (another loopback address such as 127.0.0.2,
    /// for targets that differ by IP and share a port, as DNS A records do).
    pub fn start_at(bin: &Path, addr: SocketAddr, name: &str) -> DemoBackend {
        let child = Command::new(bin)
            .arg(addr.to_string())
            .arg(name)
            .arg("1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backend");
        DemoBackend { addr, child }
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every string literal in the Rust sources under `src` that looks like a
/// metric name starting with `prefix`: what the tidy tests of each crate
/// compare with its list of metrics and with docs/operations.md.
pub fn metric_names(src: &Path, prefix: &str) -> std::collections::BTreeSet<String> {
    fn read_all(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                read_all(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut code = String::new();
    read_all(src, &mut code);
    code.split('"')
        .filter(|s| s.starts_with(prefix) && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// A fleet configuration whose responses carry `X-Config: v{version}`, so a
/// test can tell which version a proxy serves. The listener address comes
/// from each proxy's `SENTINEL_HTTP_ADDR`; `extra_listeners` is inserted in
/// the `listeners` block.
pub fn versioned_config(version: u32, backend: SocketAddr, extra_listeners: &str) -> String {
    format!(
        r#"
observability {{ logging {{ access-log #false; }}; }}
listeners {{
    listener "http" {{ address "${{SENTINEL_HTTP_ADDR}}"; }}
{extra_listeners}
}}
upstreams {{ upstream "web" {{ target "{backend}"; }}; }}
routes {{
    route "all" {{
        upstream "web"
        policies {{ response-headers {{ set "X-Config" "v{version}"; }}; }}
    }}
}}
"#
    )
}

/// A configuration whose upstream `svc` discovers its targets by DNS
/// (`svc.test:8080`), with `routes` routes (half to `svc`, half to a static
/// upstream `web` at 127.0.0.1:2): its KDL stand-in source, its resources
/// and its hash, ready for `Store::apply`. Built from a static config with
/// `svc`'s `Upstream` given a `discovery "dns"` block and an empty
/// `Endpoints` — what the compiler emits for a discovered upstream — so the
/// control plane's discovery path can be tested before (and independently
/// of) the sources.
pub fn discovered_config(routes: usize) -> (String, Vec<sentinel_proto::Resource>, String) {
    use prost::Message;
    use sentinel_proto as pb;
    let mut doc = String::from(
        "listeners { listener \"l\" { address \"127.0.0.1:8080\"; }; }\n\
         upstreams {\n  upstream \"svc\" { target \"127.0.0.1:1\"; }\n  upstream \"web\" { target \"127.0.0.1:2\"; }\n}\nroutes {\n",
    );
    for i in 0..routes {
        doc.push_str(&format!(
            "  route \"r{i}\" {{ matches {{ path-prefix \"/p{i}\"; }}; upstream \"{}\"; }}\n",
            if i % 2 == 0 { "svc" } else { "web" }
        ));
    }
    doc.push_str("}\n");
    let snapshot = sentinel_config::compile("t.kdl", &doc).expect("the test config compiles");
    let mut resources = snapshot.resources();
    for r in resources.iter_mut().filter(|r| r.name == "svc") {
        if r.r#type == pb::ResourceType::Upstream as i32 {
            let mut u = pb::Upstream::decode(r.body.clone()).expect("an upstream");
            u.discovery = Some(pb::Discovery {
                source: Some(pb::discovery::Source::Dns(pb::DnsDiscovery {
                    hostname: "svc.test".into(),
                    port: 8080,
                    record_type: pb::DnsRecordType::A as i32,
                    refresh_interval_ms: 30_000,
                    // Tests talk to loopback only: a resolver that is not
                    // there (the source errs and keeps what the store holds).
                    resolver: "127.0.0.1:9".into(),
                    ..Default::default()
                })),
            });
            *r = sentinel_config::resource(pb::ResourceType::Upstream, "svc", &u);
        } else if r.r#type == pb::ResourceType::Endpoints as i32 {
            let e = pb::Endpoints {
                upstream: "svc".into(),
                targets: vec![],
            };
            *r = sentinel_config::resource(pb::ResourceType::Endpoints, "svc", &e);
        }
    }
    let hash = sentinel_config::config_hash(
        resources
            .iter()
            .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
    );
    (doc, resources, hash)
}

/// A proxy's `/metrics` text without the instance labels (`node`, `region`,
/// `zone`, first on every series), so a test can match a series by its own
/// labels: `sentinel_agent_health{agent="auth"} 1`.
pub fn without_instance_labels(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(&strip_instance_labels(line));
        out.push('\n');
    }
    out
}

fn strip_instance_labels(line: &str) -> String {
    let Some(open) = line.find('{') else {
        return line.to_string();
    };
    let mut rest = &line[open + 1..];
    let mut stripped = false;
    for label in ["node=\"", "region=\"", "zone=\""] {
        let Some(value) = rest.strip_prefix(label) else {
            continue;
        };
        // The value ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let Some(end) = value.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        }) else {
            return line.to_string();
        };
        rest = &value[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
        stripped = true;
    }
    if !stripped {
        return line.to_string();
    }
    match rest.strip_prefix('}') {
        Some(after) => format!("{}{after}", &line[..open]),
        None => format!("{}{rest}", &line[..=open]),
    }
}

#[cfg(test)]
mod instance_label_tests {
    #[test]
    fn instance_labels_are_stripped_and_nothing_else() {
        let text = "# TYPE a counter\n\
            a{node=\"n\\\"1\",region=\"eu\",zone=\"z\",route=\"r\"} 1\n\
            b{node=\"n\",region=\"eu\",zone=\"z\"} 2\n\
            c{route=\"x\"} 3\n\
            d 4\n";
        assert_eq!(
            super::without_instance_labels(text),
            "# TYPE a counter\na{route=\"r\"} 1\nb 2\nc{route=\"x\"} 3\nd 4\n"
        );
    }
}
