//! The control plane's side of a config change's trace, per node: the
//! `config.push` span of each response (a child of the activation's
//! traceparent, like the proxy's own spans), ended by the answer — an ACK,
//! or a NACK as an error span with the proxy's reason — and the node's
//! timeline row (pushed, the proxy's received/built/swapped, answered)
//! recorded through the node writer, so the stream never waits for the
//! database. Nothing here decides what is sent or believed; the session
//! calls [`pushed`] when it sends a response and [`answered`] when the
//! answer to it arrives.

use sentinel_proto as pb;
use sentinel_telemetry::trace::{Status, from_traceparent};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::changes::{ActiveConfig, Epoch, NodeUpdate, Push, proxy_time};
use crate::fleet::Fleet;
use crate::store::now_ms;

/// A response on its way: when it was pushed, and its span.
pub(super) struct Pushed {
    pub at_unix_ms: i64,
    /// The same moment on the monotonic clock (push → ACK latency).
    pub sent_at: tokio::time::Instant,
    span: tracing::Span,
}

/// Starts the `config.push` span of a response carrying `target` (none
/// when the change has no trace).
pub(super) fn pushed(node: &pb::Node, target: &ActiveConfig) -> Pushed {
    let span = if target.trace_parent.is_empty() {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!(
            parent: None,
            "config.push",
            sentinel.node = %node.id,
            sentinel.region = %node.region,
            sentinel.config.version = target.number,
        );
        let _ = span.set_parent(from_traceparent(&target.trace_parent));
        span
    };
    Pushed {
        at_unix_ms: now_ms(),
        sent_at: tokio::time::Instant::now(),
        span,
    }
}

/// The proxy's answer: what it said about its own timing.
pub(super) struct Answer<'a> {
    pub received_unix_ms: u64,
    pub built_unix_ms: u64,
    pub swapped_unix_ms: u64,
    /// A NACK's resource and reason (already cleaned).
    pub refused: Option<&'a str>,
}

/// The stream ended before the answer: the push's span ends as an error
/// (no timeline row: the proxy said nothing about it).
pub(super) fn unanswered(pushed: Pushed) {
    pushed.span.set_status(Status::error(
        "the stream ended before the proxy answered".to_string(),
    ));
}

/// Ends the push's span and records the node's timeline row.
pub(super) fn answered(
    fleet: &Fleet,
    node: &pb::Node,
    epoch: Epoch,
    target: &ActiveConfig,
    pushed: Pushed,
    answer: Answer<'_>,
) {
    let now = now_ms();
    let at = pushed.at_unix_ms;
    let time = |t: u64| proxy_time(t, at, now);
    if let Some(reason) = answer.refused {
        pushed.span.set_status(Status::error(reason.to_string()));
        pushed
            .span
            .set_attribute("sentinel.nack.error", reason.to_string());
    }
    drop(pushed.span);
    fleet.record(NodeUpdate::Pushed {
        id: node.id.clone(),
        epoch,
        push: Push {
            region: node.region.clone(),
            version: target.number,
            hash: target.hash.clone(),
            pushed_at_unix_ms: at,
            received_unix_ms: time(answer.received_unix_ms),
            built_unix_ms: time(answer.built_unix_ms),
            swapped_unix_ms: if answer.refused.is_some() {
                None
            } else {
                time(answer.swapped_unix_ms)
            },
            answered_at_unix_ms: now,
            outcome: if answer.refused.is_some() {
                "nack"
            } else {
                "ack"
            },
            error: answer.refused.map(str::to_string),
        },
    });
}
