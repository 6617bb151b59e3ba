//! Standalone mode: serve a KDL file. SIGHUP reloads it with the same
//! validation as start-up (an invalid file is logged and the old config keeps
//! serving); SIGTERM/SIGINT stop accepting and drain in-flight requests for
//! up to `graceful-shutdown-timeout-secs`, then return.
//!
//! A reload (read, compile, build) runs on the blocking pool, never on a
//! tokio worker: traffic keeps flowing on the old config until the one-store
//! swap. Signals that arrive meanwhile wait their turn; reloads never overlap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sentinel_config::Snapshot;
use tokio::signal::unix::{SignalKind, signal};

use crate::apply::{Proxy, off_workers};
use crate::clock::unix_ms;
use crate::discovered::StandaloneDiscovery;
use crate::runtime::{ConfigVersion, Origin};

/// Compiles the file. Upstreams with a `discovery` block come out with no
/// targets; [`StandaloneDiscovery`] fills them in.
pub fn load(path: &Path, color: bool) -> Result<Snapshot, String> {
    sentinel_config::compile_file(path).map_err(|d| d.render(color))
}

pub fn version(path: &Path, snapshot: &Snapshot) -> ConfigVersion {
    ConfigVersion {
        hash: snapshot.config_hash(),
        number: 0,
        origin: Origin::File {
            path: path.display().to_string(),
        },
        applied_unix_ms: unix_ms(),
    }
}

/// Reads, compiles and applies the file; blocks, so it runs off the workers.
/// With discovery running, the new snapshot starts from the last discovered
/// targets and the sources follow the new file.
fn reload(proxy: &Proxy, path: &Path, discovery: Option<&StandaloneDiscovery>) {
    let _serial = discovery.map(|d| d.serial.lock().unwrap_or_else(|p| p.into_inner()));
    let mut snapshot = match load(path, false) {
        Ok(s) => s,
        Err(rendered) => {
            metrics::counter!("sentinel_config_reloads_total", "result" => "failure").increment(1);
            tracing::error!(path = %path.display(), "configuration reload failed; keeping the running config\n{rendered}");
            return;
        }
    };
    if let Some(d) = discovery {
        d.overlay(&mut snapshot);
    }
    let upstreams = snapshot.upstreams.clone();
    let version = version(path, &snapshot);
    match proxy.apply(snapshot, version) {
        Ok(_) => {
            if let Some(d) = discovery {
                d.reconcile(&upstreams);
            }
            metrics::counter!("sentinel_config_reloads_total", "result" => "success").increment(1);
            tracing::info!("Configuration reload completed");
        }
        Err(e) => {
            metrics::counter!("sentinel_config_reloads_total", "result" => "failure").increment(1);
            tracing::error!(error = %e, "configuration reload failed; keeping the running config");
        }
    }
}

/// The signals the proxy handles, registered before it can report ready:
/// from registration on, a SIGHUP waits for [`run`] instead of taking the
/// default action (terminating the process), however early it arrives.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Serves until SIGTERM/SIGINT, then drains. SIGHUP reloads `reload_from`
/// (standalone mode) or is logged and ignored (control-plane mode). Returns
/// the number of connections still open when the drain deadline passed.
/// `discovery` runs the live config's discovery blocks (standalone mode).
pub async fn run(
    proxy: Arc<Proxy>,
    reload_from: Option<PathBuf>,
    discovery: Option<Arc<StandaloneDiscovery>>,
    signals: Signals,
) -> anyhow::Result<usize> {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    loop {
        tokio::select! {
            _ = hup.recv() => match &reload_from {
                Some(path) => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading configuration");
                    let (proxy, path, discovery) = (Arc::clone(&proxy), path.clone(), discovery.clone());
                    if let Err(e) = off_workers(move || reload(&proxy, &path, discovery.as_deref())).await {
                        metrics::counter!("sentinel_config_reloads_total", "result" => "failure").increment(1);
                        tracing::error!(error = %e, "configuration reload failed; keeping the running config");
                    }
                }
                None => tracing::info!("SIGHUP ignored: the configuration comes from the control plane"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = proxy
        .runtime()
        .and_then(|rt| rt.settings.server.map(|s| s.graceful_shutdown_timeout_ms))
        .unwrap_or(30_000);
    tracing::info!(
        grace_ms = grace,
        open = proxy.listeners.connections.open(),
        "shutting down: draining connections"
    );
    proxy.begin_shutdown();
    let left = proxy
        .listeners
        .connections
        .drained(Duration::from_millis(grace))
        .await;
    if left > 0 {
        tracing::warn!(open = left, "drain deadline passed with connections open");
    } else {
        tracing::info!("drained; exiting");
    }
    Ok(left)
}
