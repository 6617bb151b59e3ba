//! Config-change traces: `sentinelctl apply` and `rollback` start the
//! trace of the change they make ([`Started`]: a sampled W3C
//! `traceparent` sent as a header, and — with `--otlp-endpoint` — a root
//! span exported to a collector), and `sentinelctl trace VERSION` shows the
//! per-node timeline the control plane keeps of a version's newest change
//! (no collector needed).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use sentinel_api::ConfigTrace;
use sentinel_telemetry::trace::{Pipeline, Propagation, Settings, trace_id, traceparent};
use serde_json::json;

use crate::client::{CliError, Client, typed};
use crate::render::{self, Format, bold, table, time};

/// Longest wait for the collector before `sentinelctl` exits.
const FLUSH: Duration = Duration::from_secs(5);

/// The root span of one command's config change.
pub struct Started {
    pipeline: Arc<Pipeline>,
    cx: Context,
    /// Sent as the `traceparent` header.
    pub traceparent: String,
    /// 32 hex digits.
    pub trace_id: String,
}

impl Started {
    /// Starts the root span `name` with new random ids (16-byte trace id,
    /// 8-byte span id, sampled). With an empty `endpoint` nothing is
    /// exported; the ids still travel to the control plane. Must run
    /// inside the tokio runtime.
    pub fn start(name: &'static str, endpoint: Option<&str>) -> Result<Started, CliError> {
        let pipeline = Pipeline::start(Settings {
            endpoint: endpoint.unwrap_or_default().to_string(),
            sampling_rate: 1.0,
            service_name: "sentinelctl".into(),
            propagation: Propagation::W3c,
            resource: Vec::new(),
            metric_prefix: "sentinelctl",
        })
        .map_err(|e| CliError::Failed(format!("cannot start trace export: {e}")))?;
        let span = pipeline.tracer().start(name);
        let cx = Context::current_with_span(span);
        let (Some(traceparent), Some(trace_id)) = (traceparent(&cx), trace_id(&cx)) else {
            return Err(CliError::Failed("cannot create a trace context".into()));
        };
        Ok(Started {
            pipeline,
            cx,
            traceparent,
            trace_id,
        })
    }

    /// The header that makes the control plane's spans children of this one.
    pub fn header(&self) -> (&'static str, String) {
        ("traceparent", self.traceparent.clone())
    }

    pub fn version(&self, version: i64) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("sentinel.config.version", version));
    }

    /// Ends the span (an error status when the command failed) and exports
    /// it, waiting at most a few seconds for the collector.
    pub async fn finish(self, result: &Result<(), CliError>) {
        let span = self.cx.span();
        if let Err(e) = result {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
        self.pipeline.flush(FLUSH).await;
    }
}

/// `sentinelctl trace VERSION`: the per-node timeline of the version's
/// newest change, from the control plane's records.
pub async fn show(client: &Client, format: Format, version: i64) -> Result<(), CliError> {
    let raw = client.get(&format!("/v1/configs/{version}/trace")).await?;
    if format == Format::Json {
        render::json(&raw);
        return Ok(());
    }
    let t: ConfigTrace = typed(&raw)?;
    println!(
        "{} {} (v{}, {})",
        bold("trace"),
        t.trace_id.as_deref().unwrap_or("-"),
        t.version,
        t.kind
    );
    for s in &t.steps {
        println!(
            "  {:<16} {}  {} ms",
            s.name,
            time(&json!(s.start_unix_ms)),
            s.end_unix_ms.saturating_sub(s.start_unix_ms)
        );
    }
    let after = |pushed: i64, t: Option<i64>| {
        t.map_or("-".to_string(), |t| {
            format!("+{} ms", t.saturating_sub(pushed))
        })
    };
    let rows: Vec<Vec<String>> = t
        .nodes
        .iter()
        .map(|n| {
            let p = n.pushed_at_unix_ms;
            vec![
                n.node.clone(),
                n.region.clone(),
                time(&json!(p)),
                after(p, n.received_unix_ms),
                after(p, n.built_unix_ms),
                after(p, n.swapped_unix_ms),
                after(p, Some(n.answered_at_unix_ms)),
                n.outcome.to_uppercase(),
                format!("{} ms", n.total_ms),
                n.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "NODE", "REGION", "PUSHED", "RECEIVED", "BUILT", "SWAPPED", "ANSWERED", "OUTCOME",
            "TOTAL", "ERROR",
        ],
        &rows,
    );
    Ok(())
}
