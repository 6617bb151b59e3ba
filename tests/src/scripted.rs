//! A scripted proxy: speaks the real delta stream (`sentinel.v1`) to a
//! control plane, but answers when and how a test tells it to.
//!
//! It models what a proxy holds exactly as `sentinel` does — resources by
//! (type, name) with their versions, and the config hash of that set — and
//! applies a response the same way: all chunks, then the delta onto what it
//! holds, then the hash check against the announced version. A response
//! that does not fit what it holds is answered with `Resync` (what it really
//! holds), a config it is told to refuse with `Nack`, anything else with
//! `Ack`. Between responses and answers the test decides the timing, which
//! is how the model-based tests delay answers across activations,
//! disconnect mid-flight, replay stale answers and reconnect with or
//! without what they held.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use tokio::sync::mpsc;
use tonic::Streaming;

/// What a proxy holds: (type, name) → version, and the hash of that set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holding {
    pub resources: BTreeMap<(i32, String), String>,
    pub hash: String,
    pub number: u64,
}

impl Holding {
    fn hash_of(resources: &BTreeMap<(i32, String), String>) -> String {
        sentinel_config::config_hash(
            resources
                .iter()
                .map(|((t, n), v)| (*t, n.as_str(), v.as_str())),
        )
    }

    fn versions(&self) -> Vec<pb::ResourceVersion> {
        self.resources
            .iter()
            .map(|((t, n), v)| pb::ResourceVersion {
                r#type: *t,
                name: n.clone(),
                version: v.clone(),
            })
            .collect()
    }
}

/// How the scripted proxy answers a complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Apply it (or resync if it does not fit) and ACK.
    Apply,
    /// Refuse it: NACK, keep what it holds.
    Refuse,
}

/// What the proxy sent back for a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Ack { nonce: String, hash: String },
    Nack { nonce: String, hash: String },
    Resync { nonce: String },
}

pub struct ScriptedProxy {
    pub id: String,
    pub holding: Holding,
    /// Hashes this proxy NACKed, newest last.
    pub refused: Vec<String>,
    /// Complete responses not answered yet, oldest first.
    pub unanswered: VecDeque<pb::DeltaResponse>,
    /// Nonces it answered (for replaying a stale answer).
    pub answered: Vec<String>,
    tx: mpsc::Sender<pb::DeltaRequest>,
    rx: Streaming<pb::DeltaResponse>,
    partial: Option<pb::DeltaResponse>,
    closed: bool,
}

impl ScriptedProxy {
    /// Opens a stream as node `id`, announcing `holding` (empty: a proxy
    /// that starts without a cache), with a join token if given.
    pub async fn connect(
        url: &str,
        id: &str,
        region: &str,
        holding: Holding,
        token: Option<&str>,
    ) -> Result<ScriptedProxy, tonic::Status> {
        let mut client = ConfigStreamClient::connect(url.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            node: Some(pb::Node {
                id: id.to_string(),
                region: region.to_string(),
                zone: format!("{region}-a"),
                build_version: "scripted".to_string(),
                labels: vec![],
            }),
            held: holding.versions(),
            config_version: holding.hash.clone(),
            version_number: holding.number,
        };
        tx.send(pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Hello(hello)),
        })
        .await
        .map_err(|_| tonic::Status::unavailable("request channel closed"))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(token) = token {
            crate::authorize(&mut request, token);
        }
        let rx = client.delta(request).await?.into_inner();
        Ok(ScriptedProxy {
            id: id.to_string(),
            holding,
            refused: Vec::new(),
            unanswered: VecDeque::new(),
            answered: Vec::new(),
            tx,
            rx,
            partial: None,
            closed: false,
        })
    }

    /// Whether the control plane ended the stream.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Waits up to `timeout` until a complete response is unanswered.
    pub async fn response(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.unanswered.is_empty() && !self.closed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.receive_until(left, true).await;
        }
        !self.unanswered.is_empty()
    }

    /// Reads what arrives within `wait` into `unanswered`; returns how many
    /// complete responses arrived.
    pub async fn receive(&mut self, wait: Duration) -> usize {
        self.receive_until(wait, false).await
    }

    async fn receive_until(&mut self, wait: Duration, first: bool) -> usize {
        let mut complete = 0;
        let deadline = tokio::time::Instant::now() + wait;
        while !self.closed {
            let msg = match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => break,
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None) | Err(_)) => {
                    self.closed = true;
                    break;
                }
            };
            if msg.keepalive {
                continue;
            }
            let last = msg.chunk + 1 >= msg.chunk_count;
            let merged = match self.partial.take() {
                Some(mut p) if p.nonce == msg.nonce => {
                    p.resources.extend(msg.resources);
                    p.removed.extend(msg.removed);
                    p.chunk = msg.chunk;
                    p.config_version = msg.config_version;
                    p
                }
                _ => msg,
            };
            if last {
                self.unanswered.push_back(merged);
                complete += 1;
                if first {
                    break;
                }
            } else {
                self.partial = Some(merged);
            }
        }
        complete
    }

    /// Whether the proxy would hold resource (`kind`, `name`) after the
    /// oldest unanswered response (how a script decides to refuse a config
    /// by its content).
    pub fn next_holds(&self, kind: pb::ResourceType, name: &str) -> bool {
        let key = (kind as i32, name.to_string());
        let Some(r) = self.unanswered.front() else {
            return self.holding.resources.contains_key(&key);
        };
        if r.removed
            .iter()
            .any(|g| g.r#type == key.0 && g.name == key.1)
        {
            return false;
        }
        r.resources
            .iter()
            .any(|x| x.r#type == key.0 && x.name == key.1)
            || self.holding.resources.contains_key(&key)
    }

    /// Answers the oldest unanswered response; `None` if there is none.
    pub async fn answer(&mut self, how: Answer) -> Option<Sent> {
        let response = self.unanswered.pop_front()?;
        let nonce = response.nonce.clone();
        let mut next = self.holding.resources.clone();
        for r in &response.resources {
            next.insert((r.r#type, r.name.clone()), r.version.clone());
        }
        for gone in &response.removed {
            next.remove(&(gone.r#type, gone.name.clone()));
        }
        let hash = Holding::hash_of(&next);
        let (kind, sent) = if hash != response.config_version {
            let reason = format!(
                "the resources hash to {hash}, not the announced {}",
                response.config_version
            );
            (
                pb::delta_request::Kind::Resync(pb::Resync {
                    nonce: nonce.clone(),
                    held: self.holding.versions(),
                    config_version: self.holding.hash.clone(),
                    reason,
                }),
                Sent::Resync {
                    nonce: nonce.clone(),
                },
            )
        } else if how == Answer::Refuse {
            self.refused.push(hash.clone());
            (
                pb::delta_request::Kind::Nack(pb::Nack {
                    nonce: nonce.clone(),
                    config_version: hash.clone(),
                    resource: None,
                    error: "refused by the script".to_string(),
                    ..Default::default()
                }),
                Sent::Nack {
                    nonce: nonce.clone(),
                    hash,
                },
            )
        } else {
            self.holding = Holding {
                resources: next,
                hash: hash.clone(),
                number: response.version_number,
            };
            (
                pb::delta_request::Kind::Ack(pb::Ack {
                    nonce: nonce.clone(),
                    config_version: hash.clone(),
                    ..Default::default()
                }),
                Sent::Ack {
                    nonce: nonce.clone(),
                    hash,
                },
            )
        };
        self.answered.push(nonce);
        self.send(kind).await;
        Some(sent)
    }

    /// Sends an ACK for a nonce answered long ago (a stale, duplicated
    /// answer), claiming the hash it holds now.
    pub async fn replay_stale_ack(&mut self) -> bool {
        let Some(nonce) = self.answered.first().cloned() else {
            return false;
        };
        let ack = pb::Ack {
            nonce,
            config_version: self.holding.hash.clone(),
            ..Default::default()
        };
        self.send(pb::delta_request::Kind::Ack(ack)).await;
        true
    }

    async fn send(&mut self, kind: pb::delta_request::Kind) {
        if self
            .tx
            .send(pb::DeltaRequest { kind: Some(kind) })
            .await
            .is_err()
        {
            self.closed = true;
        }
    }
}
