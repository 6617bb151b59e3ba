//! The one proxy error type, and the one place it becomes a status code.
//!
//! Every failure on the request path is a [`ProxyError`] that knows where it
//! came from (the client, the upstream, or the proxy itself) and whether the
//! request may be retried on another target. [`ProxyError::status`] maps it
//! to 4xx/502/503/504; nothing else in the proxy picks error statuses.
//!
//! The `Display` text is the detail for logs (it may name upstream
//! addresses and error chains); clients only ever see
//! [`ProxyError::public_reason`], a fixed phrase per kind.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        method: String,
        host: String,
        path: String,
    },
    #[error("upstream `{0}` has no available target")]
    NoTarget(String),
    #[error("connecting to {target} failed: {reason}")]
    Connect { target: String, reason: String },
    #[error("{target} did not answer within {timeout_ms} ms")]
    Timeout { target: String, timeout_ms: u64 },
    #[error("forwarding to {target} failed: {reason}")]
    Upstream { target: String, reason: String },
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request URI exceeds {limit} bytes")]
    UriTooLong { limit: u32 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("rejected by filter `{filter}`")]
    RateLimited {
        filter: String,
        retry_after_secs: u64,
        status: u16,
    },
    #[error("filter `{filter}` failed and the route fails closed: {reason}")]
    FilterFailed { filter: String, reason: String },
    #[error("agent `{agent}` could not decide and fails closed: {reason}")]
    AgentFailed { agent: String, reason: String },
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("the response body ran past the request deadline")]
    BodyDeadline,
    #[error("the response body stalled for more than {idle_ms} ms")]
    BodyStalled { idle_ms: u64 },
    #[error("the request body stalled for more than {timeout_ms} ms")]
    RequestBodyTimeout { timeout_ms: u64 },
}

impl ProxyError {
    pub fn source(&self) -> Source {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::RequestBodyTimeout { .. } => Source::Downstream,
            ProxyError::Connect { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BodyDeadline
            | ProxyError::BodyStalled { .. } => Source::Upstream,
            ProxyError::NoTarget(_)
            | ProxyError::FilterFailed { .. }
            | ProxyError::AgentFailed { .. }
            | ProxyError::ShuttingDown => Source::Internal,
        }
    }

    /// Whether another target may be tried (for idempotent requests): the
    /// request certainly did not reach an upstream application.
    pub fn retryable(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }

    /// Whether this counts against the target's health and breaker.
    pub fn is_target_failure(&self) -> bool {
        self.source() == Source::Upstream
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RateLimited { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. }
            | ProxyError::BodyDeadline
            | ProxyError::BodyStalled { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoTarget(_)
            | ProxyError::FilterFailed { .. }
            | ProxyError::AgentFailed { .. }
            | ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short stable name of the failure (`error.type` in traces).
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoTarget(_) => "no_target",
            ProxyError::Connect { .. } => "connect",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BodyDeadline => "body_deadline",
            ProxyError::BodyStalled { .. } => "body_stalled",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::FilterFailed { .. } => "filter_failed",
            ProxyError::AgentFailed { .. } => "agent_failed",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::RequestBodyTimeout { .. } => "request_body_timeout",
        }
    }

    /// What the client is told: a fixed phrase that names no address,
    /// no upstream error and no internal state (those go to the log).
    pub fn public_reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no route matches the request",
            ProxyError::NoTarget(_) => "no available target",
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => {
                "the upstream could not be reached"
            }
            ProxyError::Timeout { .. }
            | ProxyError::BodyDeadline
            | ProxyError::BodyStalled { .. } => "the upstream did not answer in time",
            ProxyError::BodyTooLarge { .. } => "request body too large",
            ProxyError::UriTooLong { .. } => "request URI too long",
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::RateLimited { .. } => "too many requests",
            ProxyError::FilterFailed { .. } => "a filter failed",
            ProxyError::AgentFailed { .. } => "an agent could not check the request",
            ProxyError::ShuttingDown => "the proxy is shutting down",
            ProxyError::RequestBodyTimeout { .. } => "the request body was not sent in time",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_one_place() {
        let connect = ProxyError::Connect {
            target: "t".into(),
            reason: "refused".into(),
        };
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        assert!(connect.retryable());
        let timeout = ProxyError::Timeout {
            target: "t".into(),
            timeout_ms: 5,
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!timeout.retryable());
        assert_eq!(
            ProxyError::NoTarget("u".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let no_route = ProxyError::NoRoute {
            method: "GET".into(),
            host: "h".into(),
            path: "/".into(),
        };
        assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
        assert_eq!(no_route.source(), Source::Downstream);
    }

    #[test]
    fn public_reasons_name_no_address() {
        let e = ProxyError::Connect {
            target: "10.9.8.7:8080".into(),
            reason: "tcp connect error: Connection refused (os error 111)".into(),
        };
        assert!(!e.public_reason().contains("10.9.8.7"));
        assert!(!e.public_reason().contains("refused"));
    }
}
