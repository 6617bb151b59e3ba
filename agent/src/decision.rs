//! Constructors for decisions, so an agent reads as what it decides.

use std::collections::HashMap;

use sentinel_proto::agent_protocol::{
    Allow, BodyDecision, Deny, Header, HeaderMutation, Redirect, RequestDecision, body_decision,
    request_decision::Action,
};

/// Let the request through unchanged.
pub fn allow() -> RequestDecision {
    RequestDecision {
        action: Some(Action::Allow(Allow {})),
        ..Default::default()
    }
}

/// Answer the client with `status` and a plain-text `body`; the request
/// goes no further.
pub fn deny(status: u16, body: impl Into<String>) -> RequestDecision {
    deny_with(
        status,
        vec![header("content-type", "text/plain; charset=utf-8")],
        body.into().into_bytes(),
    )
}

/// [`deny`] with the response headers and body given.
pub fn deny_with(status: u16, headers: Vec<Header>, body: Vec<u8>) -> RequestDecision {
    RequestDecision {
        action: Some(Action::Deny(Deny {
            status: u32::from(status),
            headers,
            body,
        })),
        ..Default::default()
    }
}

/// Stop a streamed body here and answer the client with `status` and a
/// plain-text `body` (`Agent::on_request_body`).
pub fn deny_body(status: u16, body: impl Into<String>) -> BodyDecision {
    BodyDecision {
        action: Some(body_decision::Action::Deny(Deny {
            status: u32::from(status),
            headers: vec![header("content-type", "text/plain; charset=utf-8")],
            body: body.into().into_bytes(),
        })),
    }
}

/// Send the client elsewhere (`status` 301, 302, 303, 307 or 308).
pub fn redirect(status: u16, location: impl Into<String>) -> RequestDecision {
    RequestDecision {
        action: Some(Action::Redirect(Redirect {
            status: u32::from(status),
            location: location.into(),
        })),
        ..Default::default()
    }
}

/// A header field.
pub fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

/// Builder-style additions to a decision.
pub trait DecisionExt: Sized {
    /// Sets (replaces) a header on the request sent upstream.
    fn set_request_header(self, name: &str, value: &str) -> Self;
    /// Removes a header from the request sent upstream.
    fn remove_request_header(self, name: &str) -> Self;
    /// Sets (replaces) a header on the response the client gets.
    fn set_response_header(self, name: &str, value: &str) -> Self;
    /// Adds dynamic metadata for later agents and the access log.
    fn metadata(self, key: &str, value: &str) -> Self;
    /// Asks for `on_response` with the upstream's response head.
    fn inspect_response(self) -> Self;
}

fn mutation(m: &mut Option<HeaderMutation>) -> &mut HeaderMutation {
    m.get_or_insert_with(HeaderMutation::default)
}

impl DecisionExt for RequestDecision {
    fn set_request_header(mut self, name: &str, value: &str) -> Self {
        mutation(&mut self.request_headers)
            .set
            .push(header(name, value));
        self
    }

    fn remove_request_header(mut self, name: &str) -> Self {
        mutation(&mut self.request_headers)
            .remove
            .push(name.to_string());
        self
    }

    fn set_response_header(mut self, name: &str, value: &str) -> Self {
        mutation(&mut self.response_headers)
            .set
            .push(header(name, value));
        self
    }

    fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    fn inspect_response(mut self) -> Self {
        self.inspect_response = true;
        self
    }
}

/// Metadata as a map, for agents that build it up.
pub type Metadata = HashMap<String, String>;
