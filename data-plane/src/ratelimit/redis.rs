//! The Redis rate-limit backend: one shared limit for every proxy that holds
//! the filter.
//!
//! Each decision is one round trip: a Lua script, loaded once and called by
//! its SHA (`EVALSHA`; the `redis` crate reloads it on `NOSCRIPT`), that
//! reads the time from Redis (`TIME`), so clock skew between proxies cannot
//! change the limit. Two algorithms:
//! - **sliding window log** (the seeds' design): a sorted set per key, score
//!   = milliseconds, one unique member per admitted request; trim, count,
//!   add and `PEXPIRE` in one script. `burst` requests per window of
//!   `burst / max-rps` seconds, so the long-run rate is `max-rps`. Memory per
//!   key is bounded by `burst` members.
//! - **GCRA** (a token bucket as one timestamp): one string per key, the
//!   theoretical arrival time in microseconds; O(1) memory per key.
//!
//! Keys are `{prefix}{filter}:{<hash>}`: the client's key is never stored,
//! only a SHA-256 prefix of it (the same on every proxy, unlike the local
//! limiter's seeded digest), and the braces make it the key's Cluster hash
//! tag. Keys expire by themselves (`PEXPIRE` / `SET … PX`).
//!
//! Failure is bounded: a call never holds a request longer than
//! `redis-timeout-ms`; consecutive failures open a breaker, and while it is
//! open no request waits for Redis at all (one probe per
//! [`PROBE_INTERVAL`]). The caller then applies the filter's fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sentinel_proto as pb;
use sha2::{Digest, Sha256};

use crate::upstream::breaker::{Attempt, Breaker, CLOSED, Transition};

/// Failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// While open, one request per interval probes Redis.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The backend's circuit breaker: the proxy's own (`upstream::breaker`),
/// opened by [`FAILURES_TO_OPEN`] failures in a row, probing once per
/// [`PROBE_INTERVAL`], closed by one successful probe.
const BREAKER: pb::CircuitBreaker = pb::CircuitBreaker {
    enabled: true,
    failure_threshold: FAILURES_TO_OPEN,
    success_threshold: 1,
    open_ms: PROBE_INTERVAL.as_millis() as u64,
};

const SLIDING_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local k = math.max(0, math.min(n, limit - count))
for i = 1, k do
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. '-' .. i)
end
count = count + k
redis.call('PEXPIRE', KEYS[1], window)
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {k, limit - count, reset, reset}
";

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local k = math.max(0, math.min(n, math.floor((now + tolerance - tat) / interval)))
if k > 0 then
  tat = tat + k * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
local remaining = math.max(0, math.floor((now + tolerance - tat) / interval))
local retry = 0
if k < n then retry = math.max(1, math.ceil((tat + interval - tolerance - now) / 1000)) end
return {k, remaining, math.ceil((tat - now) / 1000), retry}
";

/// Most requests one script call decides (a batch of concurrent requests
/// for the same key).
pub const MAX_BATCH: usize = 256;

/// What the script answered for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub remaining: u32,
    /// Milliseconds until the limit is fully available again.
    pub reset_ms: u64,
    /// Milliseconds until one more request would be admitted.
    pub retry_after_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("circuit open after repeated redis failures")]
    Open,
    #[error("invalid redis url: {0}")]
    Url(String),
    /// The call that decided this request's batch failed (its kind).
    #[error("the batch's redis call failed ({0})")]
    Batch(&'static str),
}

impl RedisError {
    pub fn kind(&self) -> &'static str {
        match self {
            RedisError::Timeout(_) => "timeout",
            RedisError::Redis(e) if e.is_timeout() => "timeout",
            RedisError::Redis(e) if e.is_connection_refusal() || e.is_connection_dropped() => {
                "connection"
            }
            RedisError::Redis(_) => "error",
            RedisError::Open => "open",
            RedisError::Url(_) => "config",
            RedisError::Batch(kind) => kind,
        }
    }
}

/// Where the limiter's state lives.
enum Target {
    /// One server; `redis-pool-size` multiplexed connections that reconnect
    /// by themselves, made on first use (they need a running runtime, and a
    /// runtime may be built outside one, e.g. by `sentinel --validate`).
    Single(SinglePool),
    /// A Redis Cluster, from comma-separated seed nodes; connected lazily.
    Cluster(redis::cluster::ClusterClient),
    /// The master a set of Sentinels names; resolved again after a failure.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

struct SinglePool {
    client: redis::Client,
    config: ConnectionManagerConfig,
    size: usize,
    connections: std::sync::OnceLock<Vec<ConnectionManager>>,
}

impl SinglePool {
    /// The pool's connections (made now if this is the first use).
    fn connections(&self) -> &[ConnectionManager] {
        self.connections.get_or_init(|| {
            (0..self.size)
                .filter_map(|_| {
                    ConnectionManager::new_lazy_with_config(
                        self.client.clone(),
                        self.config.clone(),
                    )
                    .ok()
                })
                .collect()
        })
    }
}

/// A lazily made connection for Cluster and Sentinel targets.
#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Multiplexed(redis::aio::MultiplexedConnection),
}

/// The shared state of one Redis-backed filter.
pub struct RedisLimiter {
    filter: String,
    target: Target,
    connected: ArcSwapOption<Conn>,
    next: AtomicUsize,
    script: redis::Script,
    sliding: bool,
    key_prefix: String,
    timeout: Duration,
    /// Member suffix unique to this process (sliding window members).
    instance: u64,
    sequence: AtomicU64,
    breaker: Breaker,
    cfg: pb::RateLimit,
    /// Keys with a call in flight → the requests waiting to go in the next
    /// call for that key (see [`RedisLimiter::check`]).
    batches: std::sync::Mutex<HashMap<String, Vec<Waiter>>>,
}

type Waiter = tokio::sync::oneshot::Sender<Result<Answer, &'static str>>;

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("filter", &self.filter)
            .field("sliding", &self.sliding)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Builds the limiter; connects on first use, never here (a proxy starts
    /// and serves while Redis is down). `url` has `${VAR}`s resolved.
    pub fn new(filter: &str, cfg: &pb::RateLimit, url: &str) -> Result<RedisLimiter, RedisError> {
        let redis = cfg.redis.clone().unwrap_or_default();
        let timeout = Duration::from_millis(if redis.timeout_ms == 0 {
            50
        } else {
            redis.timeout_ms
        });
        let connect_timeout = Duration::from_millis(if redis.pool_timeout_ms == 0 {
            1000
        } else {
            redis.pool_timeout_ms
        });
        let target = target(
            url,
            redis.pool_size.max(1) as usize,
            timeout,
            connect_timeout,
        )?;
        // The seeds' algorithm is the default for Redis.
        let sliding = cfg.algorithm != pb::RateLimitAlgorithm::TokenBucket as i32;
        let prefix = if redis.prefix.is_empty() {
            "sentinel:ratelimit:"
        } else {
            redis.prefix.as_str()
        };
        Ok(RedisLimiter {
            filter: filter.to_string(),
            target,
            connected: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            script: redis::Script::new(if sliding { SLIDING_WINDOW } else { GCRA }),
            sliding,
            key_prefix: format!("{prefix}{filter}:"),
            timeout,
            instance: rand::random(),
            sequence: AtomicU64::new(0),
            breaker: Breaker::default(),
            cfg: cfg.clone(),
            batches: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Connects (and loads the script) in the background, so the first
    /// requests after a config swap do not spend their timeout on the TCP,
    /// TLS and AUTH handshakes. Outside a runtime, or on failure, the first
    /// call connects as usual.
    pub fn prewarm(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(self);
        runtime.spawn(async move {
            let connections = match &me.target {
                Target::Single(pool) => pool
                    .connections()
                    .iter()
                    .cloned()
                    .map(Conn::Manager)
                    .collect(),
                _ => me.connection().await.into_iter().collect::<Vec<_>>(),
            };
            for conn in connections {
                let load = me.script.prepare_invoke();
                let _ = match conn {
                    Conn::Manager(mut c) => load.load_async(&mut c).await,
                    Conn::Cluster(mut c) => load.load_async(&mut c).await,
                    Conn::Multiplexed(mut c) => load.load_async(&mut c).await,
                };
            }
        });
    }

    /// The Redis key for a client key: the filter's prefix and a hash tag
    /// made of the first 128 bits of the key's SHA-256.
    pub fn redis_key(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        format!("{}{{{}}}", self.key_prefix, hex::encode(&digest[..16]))
    }

    /// Whether the last calls succeeded (for `sentinel_rate_limit_backend_up`).
    pub fn up(&self) -> bool {
        self.breaker.state() == CLOSED
    }

    /// One decision against the shared state, within the timeout.
    ///
    /// Concurrent requests for the same key share calls: while a call for a
    /// key is in flight, later requests for it wait, and the next call
    /// decides all of them at once (the script admits the first k of n), so
    /// a hot key costs Redis one call per round trip, not one per request.
    /// A waiter's wait counts against its own `redis-timeout-ms`.
    pub async fn check(self: &Arc<Self>, key: &str) -> Result<Answer, RedisError> {
        // Dropped unused when this request joins a batch (or is cancelled):
        // a half-open probe is then handed back.
        let Some(claim) = self.breaker.attempt(&BREAKER) else {
            return Err(RedisError::Open);
        };
        let redis_key = self.redis_key(key);
        let waiting = match self.batches.lock() {
            Ok(mut batches) => match batches.get_mut(&redis_key) {
                Some(waiting) if waiting.len() < MAX_BATCH => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    waiting.push(tx);
                    Some(rx)
                }
                // A full batch: this request goes on its own.
                Some(_) => None,
                None => {
                    batches.insert(redis_key.clone(), Vec::new());
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(rx) = waiting {
            return match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(Ok(answer))) => Ok(answer),
                Ok(Ok(Err(kind))) => Err(RedisError::Batch(kind)),
                Ok(Err(_)) => Err(RedisError::Batch("error")),
                Err(_) => Err(RedisError::Timeout(self.timeout)),
            };
        }
        let mine = self
            .send(&redis_key, 1, Some(claim))
            .await
            .map(|(answer, _)| answer);
        // Whoever arrived meanwhile goes in the next call, sent by a task
        // so that this request's answer does not wait for it.
        if let Some(batch) = self.next_batch(&redis_key) {
            tokio::spawn(Arc::clone(self).drive(redis_key, batch));
        }
        mine
    }

    /// Takes the requests waiting for `key`; forgets the key when none are.
    fn next_batch(&self, key: &str) -> Option<Vec<Waiter>> {
        let mut batches = self.batches.lock().ok()?;
        match batches.get_mut(key) {
            Some(waiting) if !waiting.is_empty() => Some(std::mem::take(waiting)),
            _ => {
                batches.remove(key);
                None
            }
        }
    }

    /// Sends batches for `key` until nobody waits.
    async fn drive(self: Arc<Self>, key: String, mut batch: Vec<Waiter>) {
        loop {
            let n = batch.len();
            match self.send(&key, n as u32, None).await {
                Ok((first, admitted)) => {
                    for (i, waiter) in batch.into_iter().enumerate() {
                        let allowed = i < admitted;
                        let _ = waiter.send(Ok(Answer {
                            allowed,
                            remaining: if allowed {
                                first.remaining.saturating_sub(i as u32)
                            } else {
                                0
                            },
                            ..first
                        }));
                    }
                }
                Err(e) => {
                    let kind = e.kind();
                    for waiter in batch {
                        let _ = waiter.send(Err(kind));
                    }
                }
            }
            match self.next_batch(&key) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// One script call deciding `n` requests for `redis_key`, within the
    /// timeout, counted in the metrics and the breaker (through `claim`,
    /// the sender's own, or directly for a batch whose claims were dropped).
    /// Returns the answer for the first request and how many of the `n`
    /// were admitted.
    async fn send(
        &self,
        redis_key: &str,
        n: u32,
        claim: Option<Attempt<'_>>,
    ) -> Result<(Answer, usize), RedisError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.call(redis_key, n)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(RedisError::Redis(e)),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        };
        metrics::histogram!("sentinel_rate_limit_redis_latency_seconds", "filter" => self.filter.clone())
            .record(started.elapsed().as_secs_f64());
        let transition = match claim {
            Some(c) => c.finish(result.is_ok()),
            None => self.breaker.record(&BREAKER, result.is_ok()),
        };
        match &result {
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("sentinel_rate_limit_redis_errors_total", "filter" => self.filter.clone(), "kind" => e.kind())
                    .increment(1);
                if transition == Transition::Opened {
                    tracing::warn!(filter = %self.filter, error = %e, "redis rate-limit backend failing; circuit open, using the fallback");
                }
                // A Sentinel or Cluster connection is made again next time
                // (the master may have moved).
                self.connected.store(None);
            }
        }
        metrics::gauge!("sentinel_rate_limit_backend_up", "filter" => self.filter.clone())
            .set(if self.up() { 1.0 } else { 0.0 });
        result
    }

    async fn call(&self, redis_key: &str, n: u32) -> redis::RedisResult<(Answer, usize)> {
        let burst = self.cfg.burst.max(1);
        let rate = self.cfg.max_rps.max(1e-9);
        let mut invocation = self.script.key(redis_key);
        if self.sliding {
            let window_ms = ((f64::from(burst) / rate) * 1000.0).ceil().max(1.0) as u64;
            let member = format!(
                "{:x}-{:x}",
                self.instance,
                self.sequence.fetch_add(1, Ordering::Relaxed)
            );
            invocation.arg(burst).arg(window_ms).arg(member).arg(n);
        } else {
            let interval_us = (1_000_000.0 / rate).max(1.0);
            invocation.arg(interval_us).arg(burst).arg(n);
        }
        let reply: (i64, i64, i64, i64) = match &mut self.connection().await? {
            Conn::Manager(c) => invocation.invoke_async(c).await?,
            Conn::Cluster(c) => invocation.invoke_async(c).await?,
            Conn::Multiplexed(c) => invocation.invoke_async(c).await?,
        };
        let admitted = reply.0.clamp(0, i64::from(n)) as usize;
        let remaining = reply.1.clamp(0, i64::from(u32::MAX)) as u32;
        Ok((
            Answer {
                allowed: admitted > 0,
                // The first request sees what the later ones of its batch
                // will take.
                remaining: remaining.saturating_add(admitted.saturating_sub(1) as u32),
                reset_ms: reply.2.max(0) as u64,
                retry_after_ms: reply.3.max(0) as u64,
            },
            admitted,
        ))
    }

    /// A connection to send the next call on: the next of the pool for a
    /// single server, else the one made before (or a new one).
    async fn connection(&self) -> redis::RedisResult<Conn> {
        if !matches!(self.target, Target::Single(_))
            && let Some(c) = self.connected.load_full()
        {
            return Ok((*c).clone());
        }
        let made = match &self.target {
            Target::Single(pool) => {
                let connections = pool.connections();
                if connections.is_empty() {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "no connection could be set up",
                    )));
                }
                let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len();
                return Ok(Conn::Manager(connections[i].clone()));
            }
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Target::Sentinel(client) => {
                Conn::Multiplexed(client.lock().await.get_async_connection().await?)
            }
        };
        self.connected.store(Some(Arc::new(made.clone())));
        Ok(made)
    }
}

/// Parses `redis-url`: one `redis://` / `rediss://` URL, comma-separated
/// Cluster seeds, or `redis+sentinel://[:password@]h1:p1,h2:p2/master`.
fn target(
    url: &str,
    pool: usize,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<Target, RedisError> {
    let url = url.trim();
    if let Some(rest) = url
        .strip_prefix("redis+sentinel://")
        .or_else(|| url.strip_prefix("rediss+sentinel://"))
    {
        let tls = url.starts_with("rediss+");
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, master) = rest.split_once('/').ok_or_else(|| {
            RedisError::Url(
                "a sentinel URL names the master: redis+sentinel://host:26379/mymaster".into(),
            )
        })?;
        let master = master.trim_matches('/');
        if master.is_empty() {
            return Err(RedisError::Url("the sentinel URL names no master".into()));
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|h| format!("redis://{}", h.trim()))
            .collect();
        let mut info = redis::RedisConnectionInfo::default();
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or(("", auth));
            if !user.is_empty() {
                info = info.set_username(user);
            }
            if !password.is_empty() {
                info = info.set_password(password);
            }
        }
        let mut node =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        let client = redis::sentinel::SentinelClient::build(
            sentinels,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )?;
        return Ok(Target::Sentinel(tokio::sync::Mutex::new(client)));
    }
    let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
    if nodes.len() > 1 {
        let first = nodes[0];
        let scheme = first.split_once("://").map_or("redis", |(s, _)| s);
        let seeds: Vec<String> = nodes
            .iter()
            .map(|n| {
                if n.contains("://") {
                    n.to_string()
                } else {
                    format!("{scheme}://{n}")
                }
            })
            .collect();
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .build()?;
        return Ok(Target::Cluster(client));
    }
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    Ok(Target::Single(SinglePool {
        client,
        config,
        size: pool,
        connections: std::sync::OnceLock::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_bounded_and_tagged() {
        let cfg = pb::RateLimit {
            max_rps: 10.0,
            burst: 10,
            ..Default::default()
        };
        let l = RedisLimiter::new("api", &cfg, "redis://127.0.0.1:1").expect("limiter");
        let long = "x".repeat(64 * 1024);
        let k = l.redis_key(&long);
        assert!(k.starts_with("sentinel:ratelimit:api:{"), "{k}");
        assert!(k.ends_with('}'));
        assert_eq!(k.len(), "sentinel:ratelimit:api:{}".len() + 32);
        assert_eq!(k, l.redis_key(&long), "the same on every call and proxy");
        assert_ne!(k, l.redis_key("y"));
    }

    #[test]
    fn urls_choose_the_target() {
        let t = |u: &str| target(u, 2, Duration::from_millis(50), Duration::from_secs(1));
        assert!(matches!(t("redis://127.0.0.1:6379"), Ok(Target::Single(p)) if p.size == 2));
        assert!(matches!(
            t("redis://127.0.0.1:7000,127.0.0.1:7001,redis://127.0.0.1:7002"),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            t("redis+sentinel://:secret@127.0.0.1:26379,127.0.0.1:26380/mymaster"),
            Ok(Target::Sentinel(_))
        ));
        assert!(matches!(
            t("redis+sentinel://127.0.0.1:26379"),
            Err(RedisError::Url(_))
        ));
    }
}
