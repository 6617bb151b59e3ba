//! Standalone mode: serve a KDL file. SIGHUP reloads it with the same
//! validation as start-up (an invalid file is logged and the old config keeps
//! serving); SIGTERM/SIGINT stop accepting and drain in-flight requests for
//! up to `graceful-shutdown-timeout-secs`, then return.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sentinel_config::Snapshot;
use sentinel_proto as pb;
use tokio::signal::unix::{SignalKind, signal};

use crate::apply::Proxy;
use crate::clock::unix_ms;
use crate::runtime::{ConfigVersion, Origin};

/// Compiles the file and checks what standalone mode cannot do.
pub fn load(path: &Path, color: bool) -> Result<Snapshot, String> {
    let snapshot = sentinel_config::compile_file(path).map_err(|d| d.render(color))?;
    for u in &snapshot.upstreams {
        let source = u.discovery.as_ref().and_then(|d| d.source.as_ref());
        if !matches!(source, None | Some(pb::discovery::Source::Static(_))) {
            return Err(format!(
                "{}: upstream `{}` uses service discovery, which runs in the control plane; \
                 standalone mode needs static targets\n",
                path.display(),
                u.name
            ));
        }
    }
    Ok(snapshot)
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

fn reload(proxy: &Proxy, path: &Path) {
    tracing::info!(path = %path.display(), "SIGHUP: reloading configuration");
    let snapshot = match load(path, false) {
        Ok(s) => s,
        Err(rendered) => {
            metrics::counter!("sentinel_config_reloads_total", "result" => "failure").increment(1);
            tracing::error!(path = %path.display(), "configuration reload failed; keeping the running config\n{rendered}");
            return;
        }
    };
    let version = version(path, &snapshot);
    match proxy.apply(snapshot, version) {
        Ok(_) => {
            metrics::counter!("sentinel_config_reloads_total", "result" => "success").increment(1);
            tracing::info!("Configuration reload completed");
        }
        Err(e) => {
            metrics::counter!("sentinel_config_reloads_total", "result" => "failure").increment(1);
            tracing::error!(error = %e, "configuration reload failed; keeping the running config");
        }
    }
}

/// Serves until SIGTERM/SIGINT, then drains. SIGHUP reloads `reload_from`
/// (standalone mode) or is logged and ignored (control-plane mode). Returns
/// the number of connections still open when the drain deadline passed.
pub async fn run(proxy: Arc<Proxy>, reload_from: Option<PathBuf>) -> anyhow::Result<usize> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match &reload_from {
                Some(path) => reload(&proxy, path),
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
