//! The proxy's OpenTelemetry pipeline, following the live config's
//! `observability.tracing` in standalone and control-plane mode alike.
//!
//! [`apply`] runs whenever a config goes live; it starts a new pipeline
//! only when the tracing settings changed (the old one exports what it
//! queued and ends). The request path reads [`current`]: one atomic load,
//! and nothing more when tracing is off.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sentinel_proto as pb;
use sentinel_telemetry::trace::{Pipeline, Propagation, Settings};

static CURRENT: ArcSwapOption<Pipeline> = ArcSwapOption::const_empty();

/// The live pipeline; `None` while tracing is off.
pub fn current() -> arc_swap::Guard<Option<Arc<Pipeline>>> {
    CURRENT.load()
}

/// What a config's tracing block asks for (`None`: tracing off).
fn settings(tracing: Option<&pb::Tracing>) -> Option<Settings> {
    let t = tracing.filter(|t| t.enabled && !t.otlp_endpoint.is_empty())?;
    let instance = crate::telemetry::instance();
    Some(Settings {
        endpoint: t.otlp_endpoint.clone(),
        sampling_rate: t.sampling_rate.clamp(0.0, 1.0),
        service_name: if t.service_name.is_empty() {
            "sentinel".into()
        } else {
            t.service_name.clone()
        },
        propagation: Propagation::parse(&t.propagation).unwrap_or_default(),
        resource: vec![
            ("service.instance.id".into(), instance.node.clone()),
            ("sentinel.node".into(), instance.node.clone()),
            ("sentinel.region".into(), instance.region.clone()),
            ("sentinel.zone".into(), instance.zone.clone()),
        ],
        metric_prefix: "sentinel",
    })
}

/// Applies a live config's tracing settings. Must run on the runtime.
pub fn apply(tracing: Option<&pb::Tracing>) {
    let wanted = settings(tracing);
    if CURRENT.load().as_ref().map(|p| p.settings()) == wanted.as_ref() {
        return;
    }
    let Some(wanted) = wanted else {
        CURRENT.store(None);
        tracing::info!("trace export off");
        return;
    };
    match Pipeline::start(wanted) {
        Ok(p) => {
            let s = p.settings();
            tracing::info!(endpoint = %s.endpoint, sampling_rate = s.sampling_rate, propagation = ?s.propagation, "trace export on");
            CURRENT.store(Some(p));
        }
        // The config validated the endpoint; what is left is a transport
        // set-up failure. Serving goes on without traces.
        Err(e) => {
            CURRENT.store(None);
            tracing::warn!(error = %e, "cannot start trace export; tracing is off");
        }
    }
}
