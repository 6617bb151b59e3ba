//! Rate-limit filters: a token bucket per key, local to this proxy, or one
//! limit shared by the fleet in Redis ([`redis`]).
//!
//! A [`RateLimiter`] is built from a rate-limit `Filter` resource and reused
//! across swaps while that resource is unchanged, so buckets (and the Redis
//! connections) survive reloads. With `backend "redis"` the local buckets
//! are the fallback while Redis fails (`fallback-to-local`); otherwise the
//! filter fails open or closed (`on-redis-failure`).
//!
//! Memory is bounded by bytes, whatever clients send:
//! - a key (header values, paths: up to 64 KiB each) is never stored; the
//!   limiter keeps a 128-bit digest of it (xxh3-128 with a per-limiter random
//!   seed, so nobody can aim a key at another client's bucket), so every
//!   bucket costs the same [`BYTES_PER_BUCKET`];
//! - buckets live in sharded LRU maps (a short critical section per
//!   decision) holding at most [`MAX_BUCKET_BYTES`] in all. A full shard
//!   evicts its *least recently used* bucket, one per new key: a client
//!   churning through fresh keys evicts idle keys, never a client that keeps
//!   sending (whose bucket is the most recently used), and never a whole
//!   shard at once.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use sentinel_proto as pb;

use crate::clock::now_ms;

pub mod redis;

const SHARDS: usize = 64;

/// Most memory one limiter spends on buckets.
pub const MAX_BUCKET_BYTES: usize = 16 * 1024 * 1024;

/// What one bucket costs, counted generously: the digest and the bucket in a
/// heap-allocated LRU list node (two list pointers, allocator header), plus
/// the hash-map slot pointing at it (key pointer, node pointer, control byte
/// and load-factor slack).
pub const BYTES_PER_BUCKET: usize = 96;

/// A key as stored: its digest.
type KeyDigest = u128;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub name: String,
    pub cfg: pb::RateLimit,
    seed: u64,
    per_shard: NonZeroUsize,
    shards: Vec<Mutex<LruCache<KeyDigest, Bucket>>>,
    /// The shared backend, with `backend "redis"`.
    redis: Option<std::sync::Arc<redis::RedisLimiter>>,
}

/// One decision, with what the `X-RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until one request would be admitted (when rejected).
    pub retry_after_secs: u64,
    /// The shared backend failed and the filter fails closed: answer 503.
    pub unavailable: bool,
}

impl RateLimiter {
    pub fn new(name: &str, cfg: &pb::RateLimit) -> Self {
        Self::with_budget(name, cfg, MAX_BUCKET_BYTES)
    }

    /// A limiter whose buckets may use at most `max_bytes` (at least one
    /// bucket per shard).
    pub fn with_budget(name: &str, cfg: &pb::RateLimit, max_bytes: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(max_bytes / BYTES_PER_BUCKET / SHARDS).unwrap_or(NonZeroUsize::MIN);
        Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            seed: rand::random(),
            per_shard,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::unbounded()))
                .collect(),
            redis: None,
        }
    }

    /// A limiter for any backend; `redis_url` is the filter's `redis-url`
    /// with its `${VAR}` references resolved (unused for `backend "local"`).
    pub fn build(name: &str, cfg: &pb::RateLimit, redis_url: &str) -> Result<Self, String> {
        let mut limiter = Self::new(name, cfg);
        if cfg.backend == pb::RateLimitBackend::Redis as i32 {
            let shared = std::sync::Arc::new(
                redis::RedisLimiter::new(name, cfg, redis_url).map_err(|e| e.to_string())?,
            );
            shared.prewarm();
            limiter.redis = Some(shared);
        }
        Ok(limiter)
    }

    /// Whether decisions come from a shared backend (Redis).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// The decision for `key`: from Redis for a Redis-backed filter (at most
    /// `redis-timeout-ms`, never while its breaker is open), else — or when
    /// Redis fails — from the fallback the filter names.
    pub async fn decide(&self, key: &str) -> Decision {
        let Some(shared) = &self.redis else {
            return self.check(key);
        };
        let err = match shared.check(key).await {
            Ok(a) => {
                metrics::counter!("sentinel_rate_limit_redis_decisions_total", "filter" => self.name.clone())
                    .increment(1);
                return Decision {
                    allowed: a.allowed,
                    limit: self.cfg.burst,
                    remaining: a.remaining,
                    reset_secs: a.reset_ms.div_ceil(1000),
                    retry_after_secs: if a.allowed {
                        0
                    } else {
                        a.retry_after_ms.div_ceil(1000).max(1)
                    },
                    unavailable: false,
                };
            }
            Err(e) => e,
        };
        let backend = self.cfg.redis.clone().unwrap_or_default();
        let mode = if backend.fallback_to_local {
            "local"
        } else if backend.on_failure == pb::FailureMode::Closed as i32 {
            "closed"
        } else {
            "open"
        };
        metrics::counter!("sentinel_rate_limit_fallback_total", "filter" => self.name.clone(), "mode" => mode)
            .increment(1);
        tracing::debug!(filter = %self.name, error = %err, mode, "rate-limit fallback");
        match mode {
            "local" => self.check_share(key, fleet_peers()),
            "closed" => Decision {
                allowed: false,
                limit: self.cfg.burst,
                remaining: 0,
                reset_secs: 0,
                retry_after_secs: redis::PROBE_INTERVAL.as_secs().max(1),
                unavailable: true,
            },
            _ => Decision {
                allowed: true,
                limit: self.cfg.burst,
                remaining: self.cfg.burst,
                reset_secs: 0,
                retry_after_secs: 0,
                unavailable: false,
            },
        }
    }

    /// Buckets held now.
    pub fn buckets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Bytes the buckets account for now (never above the budget).
    pub fn memory_bytes(&self) -> usize {
        self.buckets() * BYTES_PER_BUCKET
    }

    /// Whether the response should be rejected when not allowed
    /// (`on-limit "log"` only counts).
    pub fn enforces(&self) -> bool {
        self.cfg.on_limit != pb::OnLimit::Log as i32
    }

    pub fn check(&self, key: &str) -> Decision {
        self.check_share(key, 1)
    }

    /// [`check`](Self::check) with the limit divided among `peers` proxies
    /// (the fallback of a fleet-wide filter: each proxy takes its fair share).
    fn check_share(&self, key: &str, peers: u32) -> Decision {
        let share = f64::from(peers.max(1));
        let rate = (self.cfg.max_rps / share).max(1e-9);
        let capacity = (f64::from(self.cfg.burst.max(1)) / share).max(1.0);
        let now = now_ms();
        let digest = xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), self.seed);
        let shard = &self.shards[(digest as usize) % SHARDS];
        let Ok(mut map) = shard.lock() else {
            // A poisoned shard only means another thread panicked mid-update;
            // admit rather than fail every request for these keys.
            return Decision {
                allowed: true,
                limit: capacity as u32,
                remaining: 0,
                reset_secs: 0,
                retry_after_secs: 0,
                unavailable: false,
            };
        };
        if map.len() >= self.per_shard.get() && !map.contains(&digest) {
            // Make room for this key by forgetting the least recently used.
            map.pop_lru();
        }
        let bucket = map.get_or_insert_mut(digest, || Bucket {
            tokens: capacity,
            last_ms: now,
        });
        let elapsed = now.saturating_sub(bucket.last_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.last_ms = now;
        // Refills add up in small fractions; allow for float rounding.
        let allowed = bucket.tokens >= 1.0 - 1e-9;
        if allowed {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
        let tokens = bucket.tokens;
        Decision {
            allowed,
            limit: capacity as u32,
            remaining: tokens.floor().max(0.0) as u32,
            reset_secs: ((capacity - tokens) / rate).ceil() as u64,
            retry_after_secs: if allowed {
                0
            } else {
                ((1.0 - tokens) / rate).ceil().max(1.0) as u64
            },
            unavailable: false,
        }
    }
}

/// Proxies in the fleet as the control plane last said (0 = not told: a
/// standalone proxy, or before the first response).
static FLEET_PEERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Records what the control plane said about the fleet's size.
pub fn set_fleet_peers(peers: u32) {
    FLEET_PEERS.store(peers, std::sync::atomic::Ordering::Relaxed);
}

/// The share a Redis filter's local fallback divides its limit by.
pub fn fleet_peers() -> u32 {
    FLEET_PEERS
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1)
}

/// Builds the bucket key for a request from the filter's key parts.
pub fn key_for(
    cfg: &pb::RateLimit,
    client_ip: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> String {
    let mut key = String::with_capacity(64);
    for (i, part) in cfg.key.iter().enumerate() {
        if i > 0 {
            key.push('|');
        }
        match pb::RateLimitKeyKind::try_from(part.kind) {
            Ok(pb::RateLimitKeyKind::Header) => key.push_str(
                headers
                    .get(part.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            ),
            Ok(pb::RateLimitKeyKind::Path) => key.push_str(path),
            _ => key.push_str(client_ip),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_costs_at_least_its_parts() {
        let parts = size_of::<KeyDigest>() + size_of::<Bucket>() + 4 * size_of::<usize>();
        assert!(BYTES_PER_BUCKET >= parts, "{BYTES_PER_BUCKET} < {parts}");
    }

    #[test]
    fn memory_stays_within_the_budget_whatever_the_keys() {
        let budget = 256 * 1024;
        let l = RateLimiter::with_budget(
            "t",
            &pb::RateLimit {
                max_rps: 1.0,
                burst: 1,
                ..Default::default()
            },
            budget,
        );
        // Long keys (64 KiB each) cost what short ones do: a digest.
        let long = "x".repeat(64 * 1024);
        for i in 0..2_000 {
            l.check(&format!("{long}{i}"));
        }
        for i in 0..100_000 {
            l.check(&i.to_string());
        }
        assert!(
            l.memory_bytes() <= budget,
            "{} > {budget}",
            l.memory_bytes()
        );
        assert!(
            l.buckets() >= budget / BYTES_PER_BUCKET / 2,
            "{}",
            l.buckets()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn churning_keys_evict_the_idle_not_the_active_client() {
        // Room for 8 buckets per shard: the flood overflows every shard.
        let l = RateLimiter::with_budget(
            "t",
            &pb::RateLimit {
                max_rps: 0.001,
                burst: 2,
                ..Default::default()
            },
            8 * BYTES_PER_BUCKET * SHARDS,
        );
        assert!(l.check("victim").allowed);
        assert!(l.check("victim").allowed);
        assert!(!l.check("victim").allowed, "the victim is limited");
        for i in 0..10_000 {
            l.check(&format!("churn-{i}"));
            // The victim keeps sending, so its bucket stays recently used.
            // Between two of its requests fewer than 8 new keys can reach
            // its shard, so LRU always has an older bucket to evict.
            if i % 4 == 0 {
                assert!(
                    !l.check("victim").allowed,
                    "the victim's bucket was reset at {i}"
                );
            }
        }
        assert!(l.buckets() <= 8 * SHARDS);
    }

    fn limiter(rps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(
            "t",
            &pb::RateLimit {
                max_rps: rps,
                burst,
                ..Default::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_at_rate() {
        let l = limiter(10.0, 5);
        for i in 0..5 {
            let d = l.check("k");
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = l.check("k");
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 1);
        assert_eq!(d.limit, 5);
        // 1.5 tokens' worth of time: one request, not two.
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(l.check("k").allowed, "one token after 1/rate");
        assert!(!l.check("k").allowed);
        // Other keys have their own bucket.
        assert!(l.check("other").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fair_share_divides_burst_and_rate_among_peers() {
        let l = limiter(100.0, 100);
        let admitted = (0..200).filter(|_| l.check_share("k", 4).allowed).count();
        assert_eq!(admitted, 25, "a quarter of the burst");
        assert_eq!(l.check_share("k", 4).limit, 25);
        tokio::time::advance(Duration::from_secs(1)).await;
        let admitted = (0..200).filter(|_| l.check_share("k", 4).allowed).count();
        assert_eq!(admitted, 25, "a quarter of the rate refilled it");
        // No fleet size known: the whole limit.
        assert!(fleet_peers() >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn admits_the_configured_rate_over_time() {
        let l = limiter(20.0, 1);
        let mut admitted = 0;
        for _ in 0..1000 {
            if l.check("k").allowed {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        // 5 s at 20 rps.
        assert!((99..=101).contains(&admitted), "{admitted}");
    }

    #[test]
    fn keys_combine_parts() {
        let cfg = pb::RateLimit {
            key: vec![
                pb::RateLimitKeyPart {
                    kind: pb::RateLimitKeyKind::Header as i32,
                    header: "x-api-key".into(),
                },
                pb::RateLimitKeyPart {
                    kind: pb::RateLimitKeyKind::ClientIp as i32,
                    header: String::new(),
                },
                pb::RateLimitKeyPart {
                    kind: pb::RateLimitKeyKind::Path as i32,
                    header: String::new(),
                },
            ],
            ..Default::default()
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(key_for(&cfg, "1.2.3.4", "/p", &headers), "abc|1.2.3.4|/p");
        assert_eq!(
            key_for(&cfg, "1.2.3.4", "/p", &http::HeaderMap::new()),
            "-|1.2.3.4|/p"
        );
    }
}
