//! Load-balancing algorithms: choose one target index among the eligible.
//!
//! Everything that can be computed ahead of a request is computed when the
//! upstream is built: the smooth weighted round-robin schedule and the
//! consistent-hash ring. A pick then costs one atomic increment and a short
//! probe for an eligible target (eligibility = weight > 0, healthy, not
//! ejected, breaker available, under its connection limit).
//!
//! Hashing (`ip_hash`, `consistent_hash`) uses xxHash64 ([`hash_bytes`]): a
//! published function, so every proxy in the fleet maps a key identically.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use sentinel_proto as pb;

use pb::LoadBalancingAlgorithm as Alg;

/// What a pick may look at from the request.
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    /// The consistent-hash key value, when the algorithm needs one and the
    /// request has it.
    pub hash_key: Option<&'a [u8]>,
}

#[derive(Debug)]
pub struct Balancer {
    algorithm: Alg,
    next: AtomicUsize,
    weights: Vec<u32>,
    total_weight: u64,
    /// Smooth weighted round-robin order of target indices.
    schedule: Vec<usize>,
    /// (point, target index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// The hash behind `ip_hash` and the consistent-hash ring: xxHash64 with
/// seed 0. It is specified (unlike `std`'s `DefaultHasher`, whose output may
/// change between Rust releases), so proxies built by different toolchains
/// send the same key to the same target. Changing it remaps every key: the
/// golden test below pins it.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer {
    pub fn new(lb: &pb::LoadBalancing, addresses: &[String], weights: &[u32]) -> Self {
        let algorithm = Alg::try_from(lb.algorithm).unwrap_or(Alg::RoundRobin);
        let divisor = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let normalized: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
        let schedule = if algorithm == Alg::Weighted {
            smooth_schedule(&normalized)
        } else {
            Vec::new()
        };
        let ring = if algorithm == Alg::ConsistentHash {
            build_ring(addresses, &normalized, lb.virtual_nodes.max(1))
        } else {
            Vec::new()
        };
        Self {
            algorithm,
            next: AtomicUsize::new(0),
            weights: weights.to_vec(),
            total_weight: weights.iter().map(|w| u64::from(*w)).sum(),
            schedule,
            ring,
        }
    }

    pub fn algorithm(&self) -> Alg {
        self.algorithm
    }

    /// Picks an eligible target, or `None` when there is none.
    pub fn pick(
        &self,
        ctx: &PickContext<'_>,
        eligible: &dyn Fn(usize) -> bool,
        active: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        match self.algorithm {
            Alg::Weighted if !self.schedule.is_empty() => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|i| self.schedule[(start + i) % len])
                    .find(|t| eligible(*t))
            }
            Alg::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| (start + i) % n)
                    .filter(|t| eligible(*t))
                    .min_by_key(|t| active(*t))
            }
            Alg::IpHash => {
                let start = match ctx.client_ip {
                    IpAddr::V4(v4) => hash_bytes(&v4.octets()),
                    IpAddr::V6(v6) => hash_bytes(&v6.octets()),
                } as usize;
                probe(start, n, eligible)
            }
            Alg::ConsistentHash if !self.ring.is_empty() => match ctx.hash_key {
                Some(key) => {
                    let h = hash_bytes(key);
                    let at = self.ring.partition_point(|(p, _)| *p < h);
                    let len = self.ring.len();
                    (0..len)
                        .map(|i| self.ring[(at + i) % len].1)
                        .find(|t| eligible(*t))
                }
                None => probe(self.next.fetch_add(1, Ordering::Relaxed), n, eligible),
            },
            Alg::Random => {
                if self.total_weight == 0 {
                    return None;
                }
                let mut r = rand::rng().random_range(0..self.total_weight);
                let mut start = 0;
                for (i, w) in self.weights.iter().enumerate() {
                    if r < u64::from(*w) {
                        start = i;
                        break;
                    }
                    r -= u64::from(*w);
                }
                probe(start, n, eligible)
            }
            Alg::P2c => {
                let mut rng = rand::rng();
                let a = probe(rng.random_range(0..n), n, eligible)?;
                let b = probe(rng.random_range(0..n), n, eligible)?;
                Some(if active(b) < active(a) { b } else { a })
            }
            _ => probe(self.next.fetch_add(1, Ordering::Relaxed), n, eligible),
        }
    }
}

/// The first eligible index at or after `start`, wrapping.
fn probe(start: usize, n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|i| (start + i) % n).find(|t| eligible(*t))
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let period = total.min(100_000) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(period);
    for _ in 0..period {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

/// Ring points are derived from target addresses, not indices, so a target
/// leaving moves only the keys that mapped to it.
fn build_ring(addresses: &[String], weights: &[u32], virtual_nodes: u32) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, (address, w)) in addresses.iter().zip(weights).enumerate() {
        let points = (u64::from(*w) * u64::from(virtual_nodes)).min(100_000);
        for v in 0..points {
            ring.push((hash_bytes(format!("{address}#{v}").as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lb(alg: Alg) -> pb::LoadBalancing {
        pb::LoadBalancing {
            algorithm: alg as i32,
            hash_key: "path".into(),
            virtual_nodes: 160,
        }
    }

    /// The hash is part of the fleet's contract: every proxy, whatever
    /// toolchain built it, must send a key to the same target. This pins the
    /// function (xxHash64, seed 0: the published test vectors) and the ring
    /// built on it; if either changes, this test must fail.
    #[test]
    fn consistent_hash_mapping_is_golden() {
        assert_eq!(hash_bytes(b""), 0xef46_db37_51d8_e999);
        assert_eq!(hash_bytes(b"a"), 0xd24e_c4f1_a98c_6e5b);
        let b = Balancer::new(&lb(Alg::ConsistentHash), &addrs(4), &[1; 4]);
        let picks: Vec<usize> = ["/", "/users/1", "/users/2", "/api", "session-42", "x"]
            .iter()
            .map(|k| b.pick(&ctx(Some(k.as_bytes())), &|_| true, &|_| 0).unwrap())
            .collect();
        assert_eq!(picks, GOLDEN_PICKS);
        let ip = Balancer::new(&lb(Alg::IpHash), &addrs(4), &[1; 4]);
        assert_eq!(ip.pick(&ctx(None), &|_| true, &|_| 0), Some(GOLDEN_IP_PICK));
    }

    const GOLDEN_PICKS: [usize; 6] = [1, 3, 2, 0, 2, 1];
    const GOLDEN_IP_PICK: usize = 3;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn ctx(key: Option<&[u8]>) -> PickContext<'_> {
        PickContext {
            client_ip: "192.0.2.1".parse().unwrap(),
            hash_key: key,
        }
    }

    fn counts(b: &Balancer, picks: usize) -> HashMap<usize, usize> {
        let mut c = HashMap::new();
        for _ in 0..picks {
            *c.entry(b.pick(&ctx(None), &|_| true, &|_| 0).unwrap())
                .or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even() {
        let b = Balancer::new(&lb(Alg::RoundRobin), &addrs(3), &[1, 1, 1]);
        let c = counts(&b, 300);
        assert!(c.values().all(|v| *v == 100), "{c:?}");
    }

    #[test]
    fn weighted_follows_weights_and_interleaves() {
        let b = Balancer::new(&lb(Alg::Weighted), &addrs(3), &[5, 1, 1]);
        let c = counts(&b, 700);
        assert_eq!((c[&0], c[&1], c[&2]), (500, 100, 100));
        // Smooth: the heavy target never gets more than 3 in a row here.
        let seq: Vec<_> = (0..7)
            .map(|_| b.pick(&ctx(None), &|_| true, &|_| 0).unwrap())
            .collect();
        assert!(
            !seq.windows(4).any(|w| w.iter().all(|t| *t == 0)),
            "{seq:?}"
        );
    }

    #[test]
    fn weight_zero_drains() {
        let b = Balancer::new(&lb(Alg::RoundRobin), &addrs(2), &[1, 0]);
        let weights = [1u32, 0];
        for _ in 0..10 {
            assert_eq!(b.pick(&ctx(None), &|i| weights[i] > 0, &|_| 0), Some(0));
        }
    }

    #[test]
    fn least_connections_prefers_idle_target() {
        let b = Balancer::new(&lb(Alg::LeastConnections), &addrs(3), &[1, 1, 1]);
        let active = [5usize, 0, 3];
        for _ in 0..10 {
            assert_eq!(b.pick(&ctx(None), &|_| true, &|i| active[i]), Some(1));
        }
    }

    #[test]
    fn ip_hash_is_sticky_and_skips_ineligible() {
        let b = Balancer::new(&lb(Alg::IpHash), &addrs(4), &[1, 1, 1, 1]);
        let first = b.pick(&ctx(None), &|_| true, &|_| 0).unwrap();
        for _ in 0..10 {
            assert_eq!(b.pick(&ctx(None), &|_| true, &|_| 0), Some(first));
        }
        let other = b.pick(&ctx(None), &|i| i != first, &|_| 0).unwrap();
        assert_ne!(other, first);
    }

    #[test]
    fn consistent_hash_remaps_only_the_departed_targets_keys() {
        let four = Balancer::new(&lb(Alg::ConsistentHash), &addrs(4), &[1, 1, 1, 1]);
        let keys: Vec<String> = (0..2000).map(|i| format!("/user/{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                four.pick(&ctx(Some(k.as_bytes())), &|_| true, &|_| 0)
                    .unwrap()
            })
            .collect();
        let spread = (0..4)
            .map(|t| before.iter().filter(|x| **x == t).count())
            .collect::<Vec<_>>();
        assert!(
            spread.iter().all(|c| *c > 300 && *c < 700),
            "uneven ring: {spread:?}"
        );
        // Target 3 leaves: rebuild the ring from the remaining three.
        let three = Balancer::new(&lb(Alg::ConsistentHash), &addrs(3), &[1, 1, 1]);
        let mut moved = 0;
        for (k, was) in keys.iter().zip(&before) {
            let now = three
                .pick(&ctx(Some(k.as_bytes())), &|_| true, &|_| 0)
                .unwrap();
            if *was != 3 {
                assert_eq!(now, *was, "key {k} moved although its target stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, spread[3]);
    }

    #[test]
    fn random_and_p2c_spread_over_all_targets() {
        for alg in [Alg::Random, Alg::P2c] {
            let b = Balancer::new(&lb(alg), &addrs(3), &[1, 1, 1]);
            let c = counts(&b, 3000);
            assert!(c.values().all(|v| *v > 700 && *v < 1300), "{alg:?}: {c:?}");
        }
    }

    #[test]
    fn random_respects_weights() {
        let b = Balancer::new(&lb(Alg::Random), &addrs(2), &[3, 1]);
        let c = counts(&b, 4000);
        assert!(c[&0] > 2700 && c[&0] < 3300, "{c:?}");
    }
}
