//! Target health: active checks (HTTP or TCP, with thresholds) and passive
//! outlier detection from live traffic.
//!
//! [`TargetHealth`] lives on a target's shared state and survives swaps.
//! The active checker is a task owned by its `Upstream` (aborted when that
//! upstream is dropped); it probes every target each interval and flips the
//! target after `unhealthy_threshold` consecutive failures or
//! `healthy_threshold` consecutive successes. Passive detection ejects a
//! target after `consecutive_failures` failures in a row, or when
//! `failure_rate_percent` of a window of `min_requests` failed, for
//! `ejection_ms`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sentinel_proto as pb;

use crate::clock::{now_ms, unix_ms};

#[derive(Debug)]
pub struct TargetHealth {
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
    since_unix_ms: AtomicU64,
    last_error: Mutex<String>,
    // passive
    ejected_until_ms: AtomicU64,
    consecutive: AtomicU32,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    ejections: AtomicU64,
}

impl Default for TargetHealth {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            since_unix_ms: AtomicU64::new(unix_ms()),
            last_error: Mutex::new(String::new()),
            ejected_until_ms: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
        }
    }
}

/// A point-in-time view for the admin API and health reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    pub healthy: bool,
    pub ejected: bool,
    pub since_unix_ms: u64,
    pub last_error: String,
    pub ejections: u64,
}

impl TargetHealth {
    /// Active-check verdict (true until checks say otherwise).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn is_ejected(&self) -> bool {
        now_ms() < self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// Eligible for traffic as far as health goes.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    pub fn view(&self) -> HealthView {
        HealthView {
            healthy: self.is_healthy(),
            ejected: self.is_ejected(),
            since_unix_ms: self.since_unix_ms.load(Ordering::Acquire),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }

    /// Records one active check; returns `Some(new state)` on a flip.
    pub fn record_check(&self, cfg: &pb::HealthCheck, result: Result<(), String>) -> Option<bool> {
        match result {
            Ok(()) => {
                self.failures.store(0, Ordering::Release);
                let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
                if !self.is_healthy() && n >= cfg.healthy_threshold.max(1) {
                    self.healthy.store(true, Ordering::Release);
                    self.since_unix_ms.store(unix_ms(), Ordering::Release);
                    return Some(true);
                }
            }
            Err(e) => {
                self.successes.store(0, Ordering::Release);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = e;
                }
                let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if self.is_healthy() && n >= cfg.unhealthy_threshold.max(1) {
                    self.healthy.store(false, Ordering::Release);
                    self.since_unix_ms.store(unix_ms(), Ordering::Release);
                    return Some(false);
                }
            }
        }
        None
    }

    /// Records the outcome of a live request; returns true when it ejected
    /// the target.
    pub fn record_outcome(&self, cfg: &pb::PassiveHealth, failed: bool) -> bool {
        if !cfg.enabled {
            return false;
        }
        let requests = self.window_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let failures = if failed {
            self.window_failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.window_failures.load(Ordering::Acquire)
        };
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive.store(0, Ordering::Release);
            0
        };
        let mut eject = cfg.consecutive_failures > 0 && consecutive >= cfg.consecutive_failures;
        if requests >= cfg.min_requests.max(1) {
            eject |= u64::from(failures) * 100
                >= u64::from(cfg.failure_rate_percent) * u64::from(requests);
            self.window_requests.store(0, Ordering::Release);
            self.window_failures.store(0, Ordering::Release);
        }
        if eject && !self.is_ejected() {
            self.ejected_until_ms
                .store(now_ms() + cfg.ejection_ms, Ordering::Release);
            self.consecutive.store(0, Ordering::Release);
            self.ejections.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = "ejected by passive health (failures on live traffic)".into();
            }
            return true;
        }
        false
    }
}

/// One probe of one target, bounded by the check's timeout.
pub async fn probe(
    client: &Client<super::tls::Connector, Empty<Bytes>>,
    cfg: &pb::HealthCheck,
    address: &str,
) -> Result<(), String> {
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    if cfg.kind == pb::HealthCheckKind::Tcp as i32 {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err(format!("connect timed out after {} ms", cfg.timeout_ms)),
        };
    }
    let host = if cfg.host.is_empty() {
        address
    } else {
        cfg.host.as_str()
    };
    let req = http::Request::get(format!("http://{address}{}", cfg.path))
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "sentinel-health-check")
        .body(Empty::new())
        .map_err(|e| format!("bad check request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) if u32::from(resp.status().as_u16()) == cfg.expected_status => Ok(()),
        Ok(Ok(resp)) => Err(format!(
            "status {} (expected {})",
            resp.status().as_u16(),
            cfg.expected_status
        )),
        Ok(Err(e)) => {
            let mut reason = format!("request: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason.push_str(&format!(": {s}"));
                source = s.source();
            }
            Err(reason)
        }
        Err(_) => Err(format!("timed out after {} ms", cfg.timeout_ms)),
    }
}

/// A client for health checks: no pooling, so every check opens a connection
/// (over TLS when the upstream has `tls`, so the handshake is checked too).
pub fn check_client(
    connect_timeout_ms: u64,
    tls: Option<std::sync::Arc<super::tls::TlsClient>>,
) -> Client<super::tls::Connector, Empty<Bytes>> {
    let timeout = Duration::from_millis(connect_timeout_ms.max(1));
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(super::tls::Connector::new(connector, tls, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc() -> pb::HealthCheck {
        pb::HealthCheck {
            enabled: true,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..Default::default()
        }
    }

    #[test]
    fn active_thresholds_flip_state() {
        let h = TargetHealth::default();
        let cfg = hc();
        assert_eq!(h.record_check(&cfg, Err("x".into())), None);
        assert_eq!(h.record_check(&cfg, Err("x".into())), None);
        assert_eq!(h.record_check(&cfg, Err("boom".into())), Some(false));
        assert!(!h.is_available());
        assert_eq!(h.view().last_error, "boom");
        assert_eq!(h.record_check(&cfg, Ok(())), None);
        assert_eq!(h.record_check(&cfg, Ok(())), Some(true));
        assert!(h.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejects_on_consecutive_failures_and_recovers() {
        let h = TargetHealth::default();
        let cfg = pb::PassiveHealth {
            enabled: true,
            failure_rate_percent: 50,
            min_requests: 100,
            consecutive_failures: 3,
            ejection_ms: 5000,
        };
        assert!(!h.record_outcome(&cfg, true));
        assert!(!h.record_outcome(&cfg, true));
        assert!(h.record_outcome(&cfg, true));
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_millis(5000)).await;
        assert!(!h.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejects_on_failure_rate_over_the_window() {
        let h = TargetHealth::default();
        let cfg = pb::PassiveHealth {
            enabled: true,
            failure_rate_percent: 50,
            min_requests: 10,
            consecutive_failures: 0,
            ejection_ms: 1000,
        };
        let mut ejected = false;
        for i in 0..10 {
            ejected |= h.record_outcome(&cfg, i % 2 == 0);
        }
        assert!(ejected, "5 of 10 failed = 50%");
        let h = TargetHealth::default();
        let mut ejected = false;
        for i in 0..10 {
            ejected |= h.record_outcome(&cfg, i % 3 == 0);
        }
        assert!(!ejected, "4 of 10 failed < 50%");
    }
}
