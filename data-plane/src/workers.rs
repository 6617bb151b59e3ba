//! Worker threads: the one setting a running proxy cannot change.
//!
//! The tokio runtime is built before any config is live and its thread
//! count is fixed for the life of the process. [`Workers::at_start`] picks
//! the count: `SENTINEL_WORKERS`, else the config known at start (the file
//! in standalone mode, the last-good cache in control-plane mode), else one
//! per core. When a config that goes live later asks for another count,
//! [`Workers::observe`] says so — one warning per new value, and
//! `restart_required` with the pending count in `/admin/config` — the same
//! rule for SIGHUP reloads and control-plane responses.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Where the running count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkersSource {
    /// `SENTINEL_WORKERS`: it keeps deciding; configs do not.
    Env,
    /// `server.worker-threads` of the config known at start.
    Config,
    /// Nothing said: one per core.
    Cores,
}

pub struct Workers {
    running: usize,
    source: WorkersSource,
    /// What the live config resolves to (0: no config seen yet).
    wanted: AtomicUsize,
}

/// `server.worker-threads`: 0 means one per core.
pub fn resolve(configured: u32) -> usize {
    match configured {
        0 => cores(),
        n => n as usize,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Workers {
    /// The count to start the runtime with: `env` (`SENTINEL_WORKERS`),
    /// else `configured` (the config known at start), else one per core.
    pub fn at_start(env: Option<&str>, configured: Option<u32>) -> Workers {
        let from_env = env
            .and_then(|w| w.trim().parse::<usize>().ok())
            .filter(|w| *w > 0);
        let (running, source) = match (from_env, configured) {
            (Some(n), _) => (n, WorkersSource::Env),
            (None, Some(c)) => (resolve(c), WorkersSource::Config),
            (None, None) => (cores(), WorkersSource::Cores),
        };
        Workers {
            running,
            source,
            wanted: AtomicUsize::new(0),
        }
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Records what a config that just went live asks for; warns once per
    /// new value that differs from the running count.
    pub fn observe(&self, configured: u32) {
        let wanted = resolve(configured);
        let before = self.wanted.swap(wanted, Ordering::AcqRel);
        if self.source == WorkersSource::Env {
            return;
        }
        if wanted != self.running && wanted != before {
            tracing::warn!(
                running = self.running,
                configured = wanted,
                "server.worker-threads changed to {wanted}; it takes effect when the proxy restarts \
                 (running with {} worker threads until then)",
                self.running
            );
        }
    }

    /// The live config asks for a count this process cannot run without a
    /// restart.
    pub fn restart_required(&self) -> bool {
        let wanted = self.wanted.load(Ordering::Acquire);
        self.source != WorkersSource::Env && wanted != 0 && wanted != self.running
    }

    /// What `/admin/config` shows.
    pub fn view(&self) -> serde_json::Value {
        let wanted = self.wanted.load(Ordering::Acquire);
        serde_json::json!({
            "running": self.running,
            "source": self.source,
            "configured": (wanted != 0).then_some(wanted),
            "restart_required": self.restart_required(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_then_config_then_cores() {
        assert_eq!(Workers::at_start(Some("3"), Some(5)).running(), 3);
        assert_eq!(Workers::at_start(Some("zero"), Some(5)).running(), 5);
        assert_eq!(Workers::at_start(None, Some(0)).running(), cores());
        assert_eq!(Workers::at_start(None, None).running(), cores());
    }

    #[test]
    fn a_different_count_requires_a_restart_unless_the_env_decides() {
        let w = Workers::at_start(None, Some(2));
        w.observe(2);
        assert!(!w.restart_required());
        w.observe(4);
        assert!(w.restart_required());
        assert_eq!(w.view()["configured"], 4);
        w.observe(2);
        assert!(!w.restart_required());

        let pinned = Workers::at_start(Some("2"), None);
        pinned.observe(4);
        assert!(!pinned.restart_required());
    }
}
