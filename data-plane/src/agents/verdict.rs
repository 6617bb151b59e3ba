//! Events out, decisions in: the translation between HTTP and the agent
//! protocol, and the checks that make an agent's answer safe to apply.
//!
//! An agent's decision is untrusted input. [`Verdict::check`] turns it into
//! HTTP values (statuses, header names and values, a `Location`) or refuses
//! it as a whole; a refused decision is an agent failure, never a panic and
//! never half applied.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use sentinel_proto::agent_protocol as pb;

/// Most metadata entries kept per request (the rest is an invalid decision).
const MAX_METADATA: usize = 64;
/// Longest metadata key or value.
const MAX_METADATA_BYTES: usize = 4096;

/// Header changes an agent asked for, parsed.
#[derive(Debug, Default, Clone)]
pub struct Mutation {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Mutation {
    fn check(m: Option<pb::HeaderMutation>) -> Result<Mutation, String> {
        let Some(m) = m else {
            return Ok(Mutation::default());
        };
        Ok(Mutation {
            set: headers(m.set)?,
            add: headers(m.add)?,
            remove: m
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Removes, then sets (replacing), then appends.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

fn header_name(n: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("`{n}` is not a header name"))
}

fn headers(list: Vec<pb::Header>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    list.into_iter()
        .map(|h| {
            let name = header_name(&h.name)?;
            let value = HeaderValue::from_bytes(&h.value)
                .map_err(|_| format!("the value of `{}` is not a header value", h.name))?;
            Ok((name, value))
        })
        .collect()
}

fn metadata(m: std::collections::HashMap<String, String>) -> Result<Vec<(String, String)>, String> {
    if m.len() > MAX_METADATA {
        return Err(format!(
            "{} metadata entries (at most {MAX_METADATA})",
            m.len()
        ));
    }
    let mut out: Vec<(String, String)> = m.into_iter().collect();
    if let Some((k, _)) = out
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES)
    {
        return Err(format!(
            "metadata key `{}` is empty or too long",
            k.chars().take(40).collect::<String>()
        ));
    }
    out.sort();
    Ok(out)
}

/// What the request should become.
#[derive(Debug, Clone)]
pub enum Action {
    Allow,
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
}

impl Action {
    /// `allow`, `deny` or `redirect` (traces and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny { .. } => "deny",
            Action::Redirect { .. } => "redirect",
        }
    }
}

/// A checked request decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: Action,
    pub request_headers: Mutation,
    pub response_headers: Mutation,
    pub metadata: Vec<(String, String)>,
    pub inspect_response: bool,
}

impl Verdict {
    pub fn check(d: pb::RequestDecision) -> Result<Verdict, String> {
        use pb::request_decision::Action as A;
        let action = match d.action {
            None | Some(A::Allow(_)) => Action::Allow,
            Some(A::Deny(deny)) => deny_action(deny)?,
            Some(A::Redirect(r)) => {
                let status = if r.status == 0 { 302 } else { r.status };
                let status = match status {
                    301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(status as u16)
                        .map_err(|_| format!("redirect status {status}"))?,
                    other => {
                        return Err(format!(
                            "redirect status {other} is not 301, 302, 303, 307 or 308"
                        ));
                    }
                };
                if r.location.is_empty() {
                    return Err("redirect without a location".into());
                }
                let location = HeaderValue::from_str(&r.location)
                    .map_err(|_| "the redirect location is not a header value".to_string())?;
                Action::Redirect { status, location }
            }
        };
        Ok(Verdict {
            action,
            request_headers: Mutation::check(d.request_headers)?,
            response_headers: Mutation::check(d.response_headers)?,
            metadata: metadata(d.metadata)?,
            inspect_response: d.inspect_response,
        })
    }
}

/// A checked deny (status 403 when 0).
fn deny_action(deny: pb::Deny) -> Result<Action, String> {
    let status = if deny.status == 0 { 403 } else { deny.status };
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("deny status {} is not 200..=599", deny.status))?;
    Ok(Action::Deny {
        status,
        headers: headers(deny.headers)?,
        body: Bytes::from(deny.body),
    })
}

/// A checked body decision (`body "streamed"`): allow or deny.
pub fn check_body(d: pb::BodyDecision) -> Result<Action, String> {
    use pb::body_decision::Action as A;
    match d.action {
        None | Some(A::Allow(_)) => Ok(Action::Allow),
        Some(A::Deny(deny)) => deny_action(deny),
    }
}

/// A checked response decision.
#[derive(Debug, Clone)]
pub struct ResponseVerdict {
    pub response_headers: Mutation,
    pub metadata: Vec<(String, String)>,
}

impl ResponseVerdict {
    pub fn check(d: pb::ResponseDecision) -> Result<ResponseVerdict, String> {
        Ok(ResponseVerdict {
            response_headers: Mutation::check(d.response_headers)?,
            metadata: metadata(d.metadata)?,
        })
    }
}

/// Header fields of a message, in order, as the protocol carries them.
pub fn wire_headers(headers: &HeaderMap) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|(n, v)| pb::Header {
            name: n.as_str().to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

/// `HTTP/1.1`, `HTTP/2`...
pub fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The W3C trace context of a request, when it has one.
pub fn trace_context(headers: &HeaderMap) -> Option<pb::TraceContext> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let traceparent = get("traceparent");
    if traceparent.is_empty() {
        return None;
    }
    Some(pb::TraceContext {
        traceparent,
        tracestate: get("tracestate"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_decision::Action as A;

    fn h(n: &str, v: &[u8]) -> pb::Header {
        pb::Header {
            name: n.into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn no_action_is_allow_and_mutations_apply_in_order() {
        let v = Verdict::check(pb::RequestDecision {
            request_headers: Some(pb::HeaderMutation {
                set: vec![h("x-user", b"alice")],
                add: vec![h("x-tag", b"2")],
                remove: vec!["x-drop".into()],
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(v.action, Action::Allow));
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("mallory"));
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("x-tag", HeaderValue::from_static("1"));
        v.request_headers.apply(&mut headers);
        assert_eq!(headers["x-user"], "alice");
        assert!(!headers.contains_key("x-drop"));
        assert_eq!(headers.get_all("x-tag").iter().count(), 2);
    }

    #[test]
    fn garbage_decisions_are_refused_whole() {
        let bad = [
            pb::RequestDecision {
                action: Some(A::Deny(pb::Deny {
                    status: 1000,
                    ..Default::default()
                })),
                ..Default::default()
            },
            pb::RequestDecision {
                action: Some(A::Deny(pb::Deny {
                    status: 403,
                    headers: vec![h("bad name", b"x")],
                    body: vec![],
                })),
                ..Default::default()
            },
            pb::RequestDecision {
                action: Some(A::Redirect(pb::Redirect {
                    status: 200,
                    location: "/x".into(),
                })),
                ..Default::default()
            },
            pb::RequestDecision {
                action: Some(A::Redirect(pb::Redirect {
                    status: 302,
                    location: "\n".into(),
                })),
                ..Default::default()
            },
            pb::RequestDecision {
                request_headers: Some(pb::HeaderMutation {
                    set: vec![h("x-ok", b"line\nbreak")],
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::RequestDecision {
                metadata: (0..100).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..Default::default()
            },
        ];
        for d in bad {
            assert!(Verdict::check(d.clone()).is_err(), "{d:?}");
        }
    }

    /// Bad input never panics: random statuses, names, values and
    /// metadata are either usable or refused.
    #[test]
    fn random_decisions_are_checked_without_panicking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
        let bytes = |rng: &mut rand::rngs::SmallRng, max: usize| -> Vec<u8> {
            let n = rng.random_range(0..max);
            (0..n).map(|_| rng.random()).collect()
        };
        for _ in 0..5000 {
            let name = String::from_utf8_lossy(&bytes(&mut rng, 12)).into_owned();
            let value = bytes(&mut rng, 12);
            let header = pb::Header {
                name: name.clone(),
                value: value.clone(),
            };
            let action = match rng.random_range(0..4) {
                0 => None,
                1 => Some(A::Allow(pb::Allow {})),
                2 => Some(A::Deny(pb::Deny {
                    status: rng.random(),
                    headers: vec![header.clone()],
                    body: value.clone(),
                })),
                _ => Some(A::Redirect(pb::Redirect {
                    status: rng.random_range(0..1000),
                    location: name.clone(),
                })),
            };
            let d = pb::RequestDecision {
                action,
                request_headers: Some(pb::HeaderMutation {
                    set: vec![header.clone()],
                    add: vec![header.clone()],
                    remove: vec![name.clone()],
                }),
                response_headers: None,
                metadata: [(name.clone(), String::from_utf8_lossy(&value).into_owned())]
                    .into_iter()
                    .collect(),
                inspect_response: rng.random(),
            };
            if let Ok(v) = Verdict::check(d) {
                let mut h = HeaderMap::new();
                v.request_headers.apply(&mut h);
                v.response_headers.apply(&mut h);
            }
        }
    }

    #[test]
    fn deny_and_redirect_defaults() {
        let v = Verdict::check(pb::RequestDecision {
            action: Some(A::Deny(pb::Deny::default())),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(v.action, Action::Deny { status, .. } if status == 403));
        let v = Verdict::check(pb::RequestDecision {
            action: Some(A::Redirect(pb::Redirect {
                status: 0,
                location: "https://example.com/login".into(),
            })),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(v.action, Action::Redirect { status, .. } if status == 302));
    }
}
