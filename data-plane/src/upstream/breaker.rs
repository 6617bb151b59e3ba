//! Per-target circuit breaker: closed → open → half-open → closed.
//!
//! Closed: requests flow; `failure_threshold` consecutive failures open it.
//! Open: the target is skipped for `open_ms`. Half-open: one probe request
//! at a time is let through; `success_threshold` consecutive successes close
//! it, any failure opens it again. State is atomics only (no lock on the
//! request path); the thresholds come from the upstream's config so that a
//! swap that only changes thresholds keeps the state.
//!
//! A half-open probe is owned by whoever claimed it: [`Breaker::acquire`]
//! says whether the claim is the probe, and the claim's owner (the proxy's
//! in-flight guard) either records an outcome or, if the attempt ends
//! without one — a client-side error, a client that went away and dropped
//! the request — hands the probe back with [`Breaker::cancel_probe`], so
//! the breaker can never stay half-open with a probe nobody holds.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use sentinel_proto as pb;

use crate::clock::now_ms;

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    successes: AtomicU32,
    opened_at_ms: AtomicU64,
    probing: AtomicBool,
    trips: AtomicU64,
}

/// The answer of [`Breaker::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The breaker refuses traffic now.
    Denied,
    /// An ordinary request (closed, or the breaker is disabled).
    Pass,
    /// The one half-open probe: its owner must record an outcome or cancel it.
    Probe,
}

impl Claim {
    pub fn granted(self) -> bool {
        self != Claim::Denied
    }
}

/// What happened to the breaker's state because of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    pub fn state_name(&self) -> &'static str {
        match self.state() {
            OPEN => "open",
            HALF_OPEN => "half-open",
            _ => "closed",
        }
    }

    /// Whether a request could be sent now (no side effect).
    pub fn is_available(&self, cfg: &pb::CircuitBreaker) -> bool {
        if !cfg.enabled {
            return true;
        }
        match self.state() {
            CLOSED => true,
            OPEN => now_ms() >= self.opened_at_ms.load(Ordering::Acquire) + cfg.open_ms,
            _ => !self.probing.load(Ordering::Acquire),
        }
    }

    /// Claims the right to send a request; in half-open this is the probe.
    pub fn acquire(&self, cfg: &pb::CircuitBreaker) -> Claim {
        if !cfg.enabled {
            return Claim::Pass;
        }
        match self.state() {
            CLOSED => Claim::Pass,
            OPEN => {
                if now_ms() < self.opened_at_ms.load(Ordering::Acquire) + cfg.open_ms {
                    return Claim::Denied;
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.successes.store(0, Ordering::Release);
                    self.probing.store(false, Ordering::Release);
                }
                self.claim_probe()
            }
            _ => self.claim_probe(),
        }
    }

    fn claim_probe(&self) -> Claim {
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Claim::Probe
        } else {
            Claim::Denied
        }
    }

    /// [`Self::acquire`] with a guard: `None` when the breaker refuses. The
    /// guard records the outcome ([`Attempt::finish`]); dropped without
    /// one — the caller's future was cancelled — it hands a probe back.
    pub fn attempt<'a>(&'a self, cfg: &'a pb::CircuitBreaker) -> Option<Attempt<'a>> {
        match self.acquire(cfg) {
            Claim::Denied => None,
            claim => Some(Attempt {
                breaker: self,
                cfg,
                probe: claim == Claim::Probe,
            }),
        }
    }

    /// Records an outcome of a call made without a claim of its own (one
    /// that serves requests whose claims were dropped meanwhile).
    pub fn record(&self, cfg: &pb::CircuitBreaker, ok: bool) -> Transition {
        if ok {
            self.on_success(cfg)
        } else {
            self.on_failure(cfg)
        }
    }

    /// Hands back a probe whose attempt ended without an outcome (the
    /// request was refused on the client side or dropped).
    pub fn cancel_probe(&self) {
        if self.state() == HALF_OPEN {
            self.probing.store(false, Ordering::Release);
        }
    }

    pub fn on_success(&self, cfg: &pb::CircuitBreaker) -> Transition {
        if !cfg.enabled {
            return Transition::None;
        }
        self.failures.store(0, Ordering::Release);
        if self.state() != HALF_OPEN {
            return Transition::None;
        }
        self.probing.store(false, Ordering::Release);
        let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= cfg.success_threshold
            && self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Transition::Closed;
        }
        Transition::None
    }

    pub fn on_failure(&self, cfg: &pb::CircuitBreaker) -> Transition {
        if !cfg.enabled {
            return Transition::None;
        }
        match self.state() {
            HALF_OPEN => {
                self.probing.store(false, Ordering::Release);
                self.open()
            }
            CLOSED => {
                let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= cfg.failure_threshold {
                    self.open()
                } else {
                    Transition::None
                }
            }
            _ => Transition::None,
        }
    }

    fn open(&self) -> Transition {
        self.opened_at_ms.store(now_ms(), Ordering::Release);
        self.failures.store(0, Ordering::Release);
        let prev = self.state.swap(OPEN, Ordering::AcqRel);
        if prev == OPEN {
            return Transition::None;
        }
        self.trips.fetch_add(1, Ordering::Relaxed);
        Transition::Opened
    }
}

/// A call the breaker let through (see [`Breaker::attempt`]).
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    cfg: &'a pb::CircuitBreaker,
    probe: bool,
}

impl Attempt<'_> {
    /// Records the call's outcome.
    pub fn finish(mut self, ok: bool) -> Transition {
        self.probe = false;
        self.breaker.record(self.cfg, ok)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.cancel_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> pb::CircuitBreaker {
        pb::CircuitBreaker {
            enabled: true,
            failure_threshold: 3,
            success_threshold: 2,
            open_ms: 1000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_closed() {
        let cfg = cfg();
        let b = Breaker::default();
        assert!(b.acquire(&cfg).granted());
        assert_eq!(b.on_failure(&cfg), Transition::None);
        assert_eq!(b.on_failure(&cfg), Transition::None);
        assert_eq!(b.on_failure(&cfg), Transition::Opened);
        assert_eq!(b.state(), OPEN);
        assert!(!b.is_available(&cfg));
        assert!(!b.acquire(&cfg).granted());

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.acquire(&cfg).granted(), "still open before the timeout");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            b.acquire(&cfg),
            Claim::Probe,
            "first probe after the timeout"
        );
        assert_eq!(b.state(), HALF_OPEN);
        assert!(!b.acquire(&cfg).granted(), "only one probe at a time");
        assert_eq!(b.on_success(&cfg), Transition::None);
        assert!(b.acquire(&cfg).granted());
        assert_eq!(b.on_success(&cfg), Transition::Closed);
        assert_eq!(b.state(), CLOSED);
        assert_eq!(b.trips(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let cfg = cfg();
        let b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(&cfg);
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(b.acquire(&cfg).granted());
        assert_eq!(b.on_failure(&cfg), Transition::Opened);
        assert_eq!(b.state(), OPEN);
        assert!(!b.acquire(&cfg).granted());
        assert_eq!(b.trips(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_request_probe() {
        let cfg = cfg();
        let b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(&cfg);
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(b.acquire(&cfg), Claim::Probe);
        assert_eq!(b.acquire(&cfg), Claim::Denied);
        // The probe's request ended without an outcome (413, client gone).
        b.cancel_probe();
        assert!(b.is_available(&cfg));
        assert_eq!(b.acquire(&cfg), Claim::Probe, "a new probe may go");
        assert_eq!(b.on_success(&cfg), Transition::None);
        assert_eq!(b.acquire(&cfg), Claim::Probe);
        assert_eq!(b.on_success(&cfg), Transition::Closed);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let cfg = cfg();
        let b = Breaker::default();
        b.on_failure(&cfg);
        b.on_failure(&cfg);
        b.on_success(&cfg);
        b.on_failure(&cfg);
        b.on_failure(&cfg);
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let cfg = pb::CircuitBreaker {
            enabled: false,
            ..cfg()
        };
        let b = Breaker::default();
        for _ in 0..10 {
            b.on_failure(&cfg);
        }
        assert!(b.acquire(&cfg).granted());
    }

    #[test]
    fn a_dropped_attempt_hands_its_probe_back_and_a_finished_one_counts() {
        let cfg = pb::CircuitBreaker {
            open_ms: 0,
            success_threshold: 1,
            ..cfg()
        };
        let b = Breaker::default();
        for _ in 0..3 {
            b.attempt(&cfg).expect("closed").finish(false);
        }
        assert_eq!(b.state(), OPEN);
        let probe = b.attempt(&cfg).expect("the half-open probe");
        assert!(b.attempt(&cfg).is_none(), "one probe at a time");
        drop(probe); // cancelled: no outcome
        let probe = b.attempt(&cfg).expect("the probe was handed back");
        assert_eq!(probe.finish(true), Transition::Closed);
        assert!(b.attempt(&cfg).is_some() && b.attempt(&cfg).is_some());
    }
}
