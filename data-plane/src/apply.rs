//! Applying a snapshot: build, bind, swap, commit — or fail cleanly.
//!
//! [`Proxy::apply`] is the one path by which configuration goes live, for
//! standalone files, SIGHUP reloads, control-plane responses and the
//! last-good cache. It is serialised; a failure at any step leaves the live
//! runtime and its listeners exactly as they were.
//!
//! Building a runtime is slow (regexes, certificate files, thousands of
//! routes) and must never occupy a tokio worker: with one worker that would
//! stall every request for the length of the build. Callers on the runtime
//! therefore go through [`off_workers`], which runs the build (and the
//! last-good cache write with its fsync) on tokio's blocking pool while the
//! workers keep serving the old runtime. The swap itself is one `ArcSwap`
//! store. After it, the settings that are process-wide rather than
//! per-runtime follow the new config: logging format and level, and the
//! worker-thread count's "restart required" flag.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use sentinel_config::Snapshot;

use crate::listeners::Listeners;
use crate::proxy::Shared;
use crate::runtime::{BuildError, ConfigVersion, Runtime};
use crate::workers::Workers;

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub listeners: Listeners,
    /// The worker threads this process runs, and what the live config asks.
    pub workers: Workers,
    apply_lock: Mutex<()>,
    /// The newest [`HISTORY`] configurations that went live, oldest first
    /// (`/admin/config` shows them: which versions this proxy ever ran).
    history: Mutex<std::collections::VecDeque<ConfigVersion>>,
}

/// How many applied configurations [`Proxy::history`] keeps.
pub const HISTORY: usize = 64;

/// Work that went to the blocking pool and never came back (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("configuration work on the blocking pool failed: {0}")]
pub struct OffWorkersError(String);

/// Runs `work` (a runtime build, a reload, a cache read or write) on
/// tokio's blocking pool, so the workers keep serving meanwhile.
pub async fn off_workers<T, F>(work: F) -> Result<T, OffWorkersError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OffWorkersError(e.to_string()))
}

impl Proxy {
    pub fn new(workers: Workers) -> Self {
        let shared = Arc::new(Shared::default());
        Self {
            listeners: Listeners::new(Arc::clone(&shared)),
            shared,
            workers,
            apply_lock: Mutex::new(()),
            history: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// [`Proxy::apply`] on the blocking pool: what async callers use.
    pub async fn apply_off_workers(
        self: &Arc<Self>,
        snapshot: Snapshot,
        version: ConfigVersion,
    ) -> Result<Arc<Runtime>, BuildError> {
        let proxy = Arc::clone(self);
        off_workers(move || proxy.apply(snapshot, version))
            .await
            .unwrap_or_else(|e| {
                Err(BuildError::new(
                    sentinel_proto::ResourceType::Settings,
                    sentinel_proto::SETTINGS_NAME,
                    e.to_string(),
                ))
            })
    }

    /// Builds and swaps in a runtime for `snapshot`. Blocks for the length
    /// of the build: call it on the blocking pool ([`off_workers`]), not on
    /// a tokio worker. Must run inside a tokio runtime context.
    pub fn apply(
        &self,
        snapshot: Snapshot,
        version: ConfigVersion,
    ) -> Result<Arc<Runtime>, BuildError> {
        self.apply_timed(snapshot, version, &mut None)
    }

    /// [`Proxy::apply`], noting in `built_unix_ms` when the build (runtime
    /// and listener plan) ended — also when it failed — so the caller can
    /// tell the build from the swap (the control plane's timeline, the
    /// `config.build` and `config.swap` spans).
    pub fn apply_timed(
        &self,
        snapshot: Snapshot,
        version: ConfigVersion,
        built_unix_ms: &mut Option<u64>,
    ) -> Result<Arc<Runtime>, BuildError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.shared.runtime.load_full();
        let result = Runtime::build(snapshot, version, previous.as_deref(), &|k| {
            std::env::var(k).ok()
        })
        .and_then(|rt| self.listeners.prepare(&rt).map(|plan| (rt, plan)));
        *built_unix_ms = Some(crate::clock::unix_ms());
        let (runtime, plan) = match result {
            Ok(pair) => pair,
            Err(e) => {
                metrics::counter!("sentinel_config_applies_total", "result" => "failure")
                    .increment(1);
                return Err(e);
            }
        };
        let runtime = Arc::new(runtime);
        self.shared.runtime.store(Some(Arc::clone(&runtime)));
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(runtime.version.clone());
        }
        self.listeners.commit(&runtime, plan);
        crate::telemetry::apply_logging(
            runtime
                .settings
                .observability
                .as_ref()
                .and_then(|o| o.logging.as_ref()),
        );
        crate::tracer::apply(
            runtime
                .settings
                .observability
                .as_ref()
                .and_then(|o| o.tracing.as_ref()),
        );
        self.workers
            .observe(runtime.settings.server.map_or(0, |s| s.worker_threads));
        metrics::counter!("sentinel_config_applies_total", "result" => "success").increment(1);
        crate::telemetry::build_info(
            &runtime.version.hash,
            previous.as_ref().map(|p| p.version.hash.as_str()),
        );
        tracing::info!(
            config = %&runtime.version.hash[..12.min(runtime.version.hash.len())],
            number = runtime.version.number,
            summary = %runtime.snapshot.summary(),
            "configuration applied"
        );
        Ok(runtime)
    }

    /// The configurations that went live, oldest first (at most [`HISTORY`]).
    pub fn history(&self) -> Vec<ConfigVersion> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.shared.runtime.load_full()
    }

    /// Ready: a config is live, its listeners are bound, not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shared.shutting_down.load(Ordering::Acquire)
            && self
                .runtime()
                .is_some_and(|rt| rt.listeners.len() == self.listeners.bound().len())
    }

    /// Stops accepting and begins draining; see `Listeners::shutdown`.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.listeners.shutdown();
    }
}
