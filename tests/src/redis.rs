//! Real Redis for the tests: a single `redis-server`, a three-master Redis
//! Cluster (`redis-cli --cluster create`), and Redis Sentinels watching a
//! master. Each server runs in the foreground as a child process on a free
//! loopback port with nothing saved to disk, and is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// A server with extra `redis-server` arguments (e.g. cluster mode).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        let up = crate::wait_for(Duration::from_secs(10), || async move {
            // A server with a password answers NOAUTH: up all the same.
            cli(port, &["PING"]).is_some_and(|o| o.trim() == "PONG" || o.contains("NOAUTH"))
        })
        .await;
        assert!(
            up,
            "redis-server on port {port} did not answer PING; its log:\n{}",
            self.log()
        );
    }

    /// Kills the server (SIGKILL): the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS…`, `None` when it fails.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Redis Cluster of three masters (no replicas), slots spread evenly.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The bus port defaults to port + 10000, which is out of range
            // for high free ports: name a free one.
            let bus = free_port().to_string();
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .await,
            );
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = cli(nodes[0].port, &args);
        assert!(created.is_some(), "redis-cli --cluster create failed");
        // Every node must agree, not only the one that ran the create.
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let ok = crate::wait_for(Duration::from_secs(20), || {
            let ports = ports.clone();
            async move {
                ports.iter().all(|p| {
                    cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| {
                        i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:3")
                    })
                })
            }
        })
        .await;
        assert!(
            ok,
            "the cluster did not reach cluster_state:ok on every node"
        );
        RedisCluster { nodes }
    }

    /// The index of the node that owns `key`'s slot (the others answer
    /// `MOVED`).
    pub fn owner(&self, key: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.cli(&["EXISTS", key])
                .is_some_and(|o| !o.contains("MOVED"))
        })
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", seeds.join(","))
    }
}

/// `redis-sentinel` processes watching one master under `name`.
pub struct RedisSentinels {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    pub async fn start(master: &RedisServer, name: &str, count: usize) -> RedisSentinels {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..count {
            let port = free_port();
            let conf: PathBuf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {name} 1000\n",
                    dir.path().display(),
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            children.push(child);
            let up = crate::wait_for(Duration::from_secs(10), || async move {
                cli(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
                    .is_some_and(|o| o.contains("127.0.0.1"))
            })
            .await;
            assert!(up, "sentinel on {port} does not know master {name}");
            ports.push(port);
        }
        RedisSentinels {
            ports,
            children,
            _dir: dir,
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,…/name`.
    pub fn url(&self, name: &str) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{name}", hosts.join(","))
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
