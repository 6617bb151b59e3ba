//! [`Dnsmasq`]: a real dnsmasq on a free 127.0.0.1 port, answering only from
//! files this harness writes (no system configuration, no upstream
//! resolvers), for DNS discovery tests.
//!
//! - A and AAAA records live in an `--addn-hosts` file: [`Dnsmasq::set_hosts`]
//!   rewrites it and sends SIGHUP (dnsmasq rereads it and clears its cache);
//! - SRV records are `srv-host` lines of its `--conf-file`, which dnsmasq
//!   reads only at start: [`Dnsmasq::set_srv`] rewrites it and restarts the
//!   process on the same port;
//! - every answer carries the TTL given to [`Dnsmasq::start`]
//!   (`--local-ttl`);
//! - [`Dnsmasq::stop`] / [`Dnsmasq::restart`] for outage tests; dropping it
//!   kills the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One SRV record: `name` → `target:port` with `priority` and `weight`.
#[derive(Debug, Clone)]
pub struct Srv {
    pub name: String,
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

pub struct Dnsmasq {
    pub port: u16,
    ttl_secs: u32,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("dnsmasq not found (scripts/ensure-deps installs it: apt-get install dnsmasq)");
}

impl Dnsmasq {
    /// Starts dnsmasq with no records; every answer has TTL `ttl_secs`.
    pub fn start(ttl_secs: u32) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Dnsmasq {
            port: crate::free_port(),
            ttl_secs,
            dir,
            child: None,
        };
        std::fs::write(d.hosts_path(), "").expect("write hosts");
        std::fs::write(d.conf_path(), "").expect("write conf");
        d.spawn();
        d
    }

    pub fn addr(&self) -> SocketAddr {
        crate::loopback(self.port)
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.conf")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("dnsmasq.log")).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", self.conf_path().display()))
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg(format!("--local-ttl={}", self.ttl_secs))
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--pid-file")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // As root dnsmasq would drop to `nobody`, which cannot read the
        // files in our private temp dir when it rereads them on SIGHUP.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            cmd.arg("--user=root");
        }
        let child = cmd.spawn().expect("spawn dnsmasq");
        self.child = Some(child);
        // Ready when it accepts TCP on its port (it serves TCP and UDP).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("dnsmasq exited at start ({status}): {}", self.log());
            }
            // Synchronous harness code (not async): a short real wait.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dnsmasq did not listen on {}: {}", self.addr(), self.log());
    }

    /// dnsmasq's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Replaces every A/AAAA record: `(ip, name)` pairs, several per name
    /// allowed. dnsmasq rereads the file on SIGHUP.
    pub fn set_hosts(&self, entries: &[(&str, &str)]) {
        let text: String = entries
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(self.hosts_path(), text).expect("write hosts");
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "SIGHUP to dnsmasq failed");
        }
    }

    /// Replaces every SRV record (restarts dnsmasq: it reads `srv-host`
    /// lines only at start).
    pub fn set_srv(&mut self, records: &[Srv]) {
        let text: String = records
            .iter()
            .map(|r| {
                format!(
                    "srv-host={},{},{},{},{}\n",
                    r.name, r.target, r.port, r.priority, r.weight
                )
            })
            .collect();
        std::fs::write(self.conf_path(), text).expect("write conf");
        self.restart();
    }

    /// Kills dnsmasq (queries then fail: nothing listens on the port).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same files.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
