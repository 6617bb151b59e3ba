//! Applying a snapshot: build, bind, swap, commit — or fail cleanly.
//!
//! [`Proxy::apply`] is the one path by which configuration goes live, for
//! standalone files, SIGHUP reloads and (later) control-plane responses. It
//! is serialised; a failure at any step leaves the live runtime and its
//! listeners exactly as they were.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use sentinel_config::Snapshot;

use crate::listeners::Listeners;
use crate::proxy::Shared;
use crate::runtime::{BuildError, ConfigVersion, Runtime};

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub listeners: Listeners,
    apply_lock: Mutex<()>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    pub fn new() -> Self {
        let shared = Arc::new(Shared::default());
        Self {
            listeners: Listeners::new(Arc::clone(&shared)),
            shared,
            apply_lock: Mutex::new(()),
        }
    }

    /// Builds and swaps in a runtime for `snapshot`. Must run inside tokio.
    pub fn apply(
        &self,
        snapshot: Snapshot,
        version: ConfigVersion,
    ) -> Result<Arc<Runtime>, BuildError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.shared.runtime.load_full();
        let result = Runtime::build(snapshot, version, previous.as_deref(), &|k| {
            std::env::var(k).ok()
        })
        .and_then(|rt| self.listeners.prepare(&rt).map(|plan| (rt, plan)));
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
        self.listeners.commit(&runtime, plan);
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
