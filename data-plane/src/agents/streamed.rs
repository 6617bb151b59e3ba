//! `body "streamed"`: the request body passes through the route's streamed
//! agents piece by piece on its way upstream.
//!
//! Each data frame is sent to every streamed agent (in the route's order)
//! before it is forwarded, up to the agent's `max-body-bytes`; past that the
//! agent gets one last piece marked `truncated` and the rest flows unseen.
//! A body whose end is known only after its last frame (chunked, HTTP/2)
//! gets a final empty event with `end_of_stream`, before that end is
//! forwarded. So an agent always decides on a piece before the upstream
//! has it, and on the end before the upstream has a complete request.
//!
//! A deny stops the body: the deny is put in the request's [`DeniedSlot`]
//! and the body ends with [`BodyDenied`], which aborts the upstream request;
//! the proxy then answers the client with the deny. A failing agent gets
//! its failure mode: open — it is not called again for this request;
//! closed — the body ends with [`crate::error::ProxyError::AgentFailed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use sentinel_proto::agent_protocol as ap;

use super::verdict::Action;
use super::{Agent, DecisionResult};
use crate::body::{Body, BoxError};
use crate::error::ProxyError;

/// Where a body deny waits for the proxy to answer the client with it.
pub type DeniedSlot = Arc<Mutex<Option<Action>>>;

/// The error a denied body ends with.
#[derive(Debug, thiserror::Error)]
#[error("agent `{0}` stopped the request body")]
pub struct BodyDenied(pub String);

/// What every body event of one request shares.
pub struct Request {
    pub request_id: String,
    pub route: String,
    pub metadata: HashMap<String, String>,
    /// The route's `agent-timeout-ms`, else each agent's own.
    pub timeout: Option<Duration>,
    /// The route's failure mode, else each agent's own.
    pub failure_open: Option<bool>,
    pub denied: DeniedSlot,
}

struct Tapped {
    agent: Arc<Agent>,
    /// Bytes this agent may still see.
    left: u64,
    offset: u64,
    /// Saw its last event (end, truncation, or it failed open).
    done: bool,
}

struct Tap {
    body: Body,
    agents: Vec<Tapped>,
    req: Request,
    finished: bool,
}

/// `body` with `agents` (each `body "streamed"`) deciding on every piece.
pub fn tap(body: Body, agents: Vec<Arc<Agent>>, req: Request) -> Body {
    let agents = agents
        .into_iter()
        .map(|agent| Tapped {
            left: agent.streamed_bytes.unwrap_or(0),
            done: agent.streamed_bytes.unwrap_or(0) == 0,
            offset: 0,
            agent,
        })
        .collect();
    let tap = Tap {
        body,
        agents,
        req,
        finished: false,
    };
    let frames = futures_util::stream::unfold(tap, |mut t| async move {
        if t.finished {
            return None;
        }
        match t.body.frame().await {
            None => match t.inspect(Bytes::new(), true).await {
                Ok(()) => None,
                Err(e) => {
                    t.finished = true;
                    Some((Err(e), t))
                }
            },
            Some(Err(e)) => {
                t.finished = true;
                Some((Err(e), t))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let end = t.body.is_end_stream();
                    if let Err(e) = t.inspect(data.clone(), end).await {
                        t.finished = true;
                        return Some((Err(e), t));
                    }
                }
                Some((Ok::<Frame<Bytes>, BoxError>(frame), t))
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

impl Tap {
    /// Sends `chunk` to every agent still listening; `Err` ends the body.
    async fn inspect(&mut self, chunk: Bytes, end: bool) -> Result<(), BoxError> {
        for t in self.agents.iter_mut().filter(|t| !t.done) {
            let n = (chunk.len() as u64).min(t.left);
            let truncated = n < chunk.len() as u64 || (n == t.left && !end);
            let event = ap::BodyEvent {
                protocol_version: ap::PROTOCOL_VERSION,
                request_id: self.req.request_id.clone(),
                route: self.req.route.clone(),
                agent: t.agent.name.clone(),
                chunk: chunk.slice(..n as usize).to_vec(),
                offset: t.offset,
                end_of_stream: end,
                truncated,
                metadata: self.req.metadata.clone(),
            };
            t.left -= n;
            t.offset += n;
            t.done = end || truncated;
            let timeout = self.req.timeout.unwrap_or(t.agent.timeout);
            match t.agent.on_request_body(event, timeout).await {
                Ok(Action::Allow) => {}
                Ok(deny) => {
                    t.agent.count(DecisionResult::Deny);
                    if let Ok(mut slot) = self.req.denied.lock() {
                        *slot = Some(deny);
                    }
                    return Err(Box::new(BodyDenied(t.agent.name.clone())));
                }
                Err(failure) => {
                    if self.req.failure_open.unwrap_or(t.agent.failure_open) {
                        t.agent.count(DecisionResult::FailedOpen);
                        t.done = true;
                        continue;
                    }
                    t.agent.count(DecisionResult::FailedClosed);
                    return Err(Box::new(ProxyError::AgentFailed {
                        agent: t.agent.name.clone(),
                        reason: failure.to_string(),
                    }));
                }
            }
        }
        Ok(())
    }
}
