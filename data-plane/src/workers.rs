//! Worker threads: how many, and the threads themselves.
//!
//! The count is the one setting a running proxy cannot change. It is fixed
//! before any config is live: [`Workers::at_start`] picks it from
//! `SENTINEL_WORKERS`, else the config known at start (the file in
//! standalone mode, the last-good cache in control-plane mode), else one per
//! core. When a config that goes live later asks for another count,
//! [`Workers::observe`] says so — one warning per new value, and
//! `restart_required` with the pending count in `/admin/config` — the same
//! rule for SIGHUP reloads and control-plane responses.
//!
//! Thread-per-core ([`start`]): with N workers the proxy runs N
//! current-thread tokio runtimes, the main thread's (which also runs the
//! control tasks: admin, control-plane stream, health checks, discovery)
//! and N−1 more on threads of their own. Every listener is bound once per
//! worker with `SO_REUSEPORT` (see `listeners`), so the kernel spreads
//! connections over the workers, and each upstream keeps one connection
//! pool per worker ([`index`]). A connection, its requests and the upstream
//! connections they use stay on the worker that accepted it: no request is
//! handed across threads. What the workers share is lock-free: the live
//! runtime (one `ArcSwap`), target state and metrics.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
            "accepted_per_worker": accepted_view(),
        })
    }
}

/// The runtimes of the workers, by index; 0 is the main thread's.
static POOL: OnceLock<Vec<tokio::runtime::Handle>> = OnceLock::new();

/// Connections each worker accepted (`/admin/config`: how evenly the
/// kernel spreads them).
static ACCEPTED: OnceLock<Vec<AtomicU64>> = OnceLock::new();

thread_local! {
    /// The worker this thread is; 0 on every thread that is not a worker.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts workers 1..count, each a current-thread runtime on its own
/// thread; the calling runtime (which must be a current-thread runtime,
/// the main thread's) is worker 0. Called once, at start-up.
pub fn start(count: usize) -> std::io::Result<()> {
    let mut handles = vec![tokio::runtime::Handle::current()];
    for i in 1..count.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("sentinel-worker-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        INDEX.set(i);
                        let _ = tx.send(Ok(runtime.handle().clone()));
                        // Runs the tasks spawned onto it until the process exits.
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread exited at start"))??;
        handles.push(handle);
    }
    let _ = ACCEPTED.set(handles.iter().map(|_| AtomicU64::new(0)).collect());
    POOL.set(handles)
        .map_err(|_| std::io::Error::other("workers started twice"))
}

/// Counts a connection accepted by the calling worker.
pub fn accepted() {
    if let Some(slot) = ACCEPTED.get().and_then(|a| a.get(index())) {
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

fn accepted_view() -> Vec<u64> {
    ACCEPTED
        .get()
        .map(|a| a.iter().map(|n| n.load(Ordering::Relaxed)).collect())
        .unwrap_or_default()
}

/// The workers' runtimes; without [`start`] (tests, tools), just the
/// current runtime.
pub fn handles() -> Vec<tokio::runtime::Handle> {
    match POOL.get() {
        Some(pool) => pool.clone(),
        None => vec![tokio::runtime::Handle::current()],
    }
}

/// How many workers run requests (1 until [`start`]).
pub fn count() -> usize {
    POOL.get().map_or(1, Vec::len)
}

/// The worker the calling thread is (0 off the workers).
pub fn index() -> usize {
    INDEX.get()
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
