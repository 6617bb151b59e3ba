//! Rate-limit filters: a token bucket per key, local to this proxy.
//!
//! A [`RateLimiter`] is built from a rate-limit `Filter` resource and reused
//! across swaps while that resource is unchanged, so buckets survive reloads.
//! Buckets live in sharded maps (a short critical section per decision), and
//! each shard is bounded: idle full buckets are dropped first when it fills.
//! The Redis backend plugs in here as another [`Backend`] later; until then a
//! filter asking for it is rejected when the runtime is built.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use sentinel_proto as pb;

use crate::clock::now_ms;

const SHARDS: usize = 64;
const MAX_KEYS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub name: String,
    pub cfg: pb::RateLimit,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
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
}

impl RateLimiter {
    pub fn new(name: &str, cfg: &pb::RateLimit) -> Self {
        Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Whether the response should be rejected when not allowed
    /// (`on-limit "log"` only counts).
    pub fn enforces(&self) -> bool {
        self.cfg.on_limit != pb::OnLimit::Log as i32
    }

    pub fn check(&self, key: &str) -> Decision {
        let rate = self.cfg.max_rps.max(1e-9);
        let capacity = f64::from(self.cfg.burst.max(1));
        let now = now_ms();
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let Ok(mut map) = shard.lock() else {
            // A poisoned shard only means another thread panicked mid-update;
            // admit rather than fail every request for these keys.
            return Decision {
                allowed: true,
                limit: self.cfg.burst,
                remaining: 0,
                reset_secs: 0,
                retry_after_secs: 0,
            };
        };
        if map.len() >= MAX_KEYS_PER_SHARD && !map.contains_key(key) {
            let full_after_ms = (capacity / rate * 1000.0) as u64;
            map.retain(|_, b| now.saturating_sub(b.last_ms) < full_after_ms);
            if map.len() >= MAX_KEYS_PER_SHARD {
                map.clear();
            }
        }
        let bucket = map.entry(key.to_string()).or_insert(Bucket {
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
            limit: self.cfg.burst,
            remaining: tokens.floor().max(0.0) as u32,
            reset_secs: ((capacity - tokens) / rate).ceil() as u64,
            retry_after_secs: if allowed {
                0
            } else {
                ((1.0 - tokens) / rate).ceil().max(1.0) as u64
            },
        }
    }
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

    #[test]
    fn many_keys_stay_bounded() {
        let l = limiter(1.0, 1);
        for i in 0..(SHARDS * MAX_KEYS_PER_SHARD * 2) {
            l.check(&format!("key-{i}"));
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * MAX_KEYS_PER_SHARD, "{total}");
    }
}
