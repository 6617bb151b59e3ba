//! A raw delta stream for tests that drive the protocol message by message:
//! the hello, then `next` (one response, chunks merged), `ack` and `nack`.
//! The channels are public so a test can send what no proxy would (a second
//! hello) or read the stream's end itself. For a proxy that models what it
//! holds, see [`crate::scripted::ScriptedProxy`].

use std::time::Duration;

use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use tokio::sync::mpsc;
use tonic::Streaming;

pub struct RawStream {
    pub tx: mpsc::Sender<pb::DeltaRequest>,
    pub rx: Streaming<pb::DeltaResponse>,
}

impl RawStream {
    /// Opens a stream as node `id` (region `eu`, zone `a`) with the
    /// harness's join token, announcing `held`.
    pub async fn connect(
        url: String,
        id: &str,
        build_version: &str,
        held: Vec<pb::ResourceVersion>,
    ) -> Result<RawStream, tonic::Status> {
        Self::connect_holding(url, id, build_version, held, (0, String::new())).await
    }

    /// As [`Self::connect`], also naming what it runs in the hello:
    /// (`version_number`, `config_version`).
    pub async fn connect_holding(
        url: String,
        id: &str,
        build_version: &str,
        held: Vec<pb::ResourceVersion>,
        (version_number, config_version): (u64, String),
    ) -> Result<RawStream, tonic::Status> {
        let mut client = ConfigStreamClient::connect(url)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            node: Some(pb::Node {
                id: id.into(),
                region: "eu".into(),
                zone: "a".into(),
                build_version: build_version.into(),
                labels: vec![],
            }),
            held,
            config_version,
            version_number,
        };
        tx.send(pb::DeltaRequest {
            kind: Some(pb::delta_request::Kind::Hello(hello)),
        })
        .await
        .map_err(|_| tonic::Status::unavailable("request channel closed"))?;
        let rx = client
            .delta(crate::join_request(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await?
            .into_inner();
        Ok(RawStream { tx, rx })
    }

    /// The next non-keepalive response, with all its chunks merged (they
    /// must share a nonce).
    pub async fn next(&mut self, timeout: Duration) -> Option<pb::DeltaResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut merged: Option<pb::DeltaResponse> = None;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.message())
                .await
                .ok()?
                .ok()??;
            if msg.keepalive {
                continue;
            }
            let last = msg.chunk + 1 == msg.chunk_count;
            match &mut merged {
                None => merged = Some(msg),
                Some(m) => {
                    assert_eq!(m.nonce, msg.nonce, "chunks share a nonce");
                    m.resources.extend(msg.resources);
                    m.removed.extend(msg.removed);
                    m.chunk = msg.chunk;
                }
            }
            if last {
                return merged;
            }
        }
    }

    pub async fn ack(&self, r: &pb::DeltaResponse) {
        let ack = pb::Ack {
            nonce: r.nonce.clone(),
            config_version: r.config_version.clone(),
            ..Default::default()
        };
        self.send(pb::delta_request::Kind::Ack(ack)).await;
    }

    /// Refuses `r`, naming `resource` as the one that failed.
    pub async fn nack(
        &self,
        r: &pb::DeltaResponse,
        resource: Option<pb::ResourceRef>,
        error: &str,
    ) {
        let nack = pb::Nack {
            nonce: r.nonce.clone(),
            config_version: r.config_version.clone(),
            resource,
            error: error.to_string(),
            ..Default::default()
        };
        self.send(pb::delta_request::Kind::Nack(nack)).await;
    }

    async fn send(&self, kind: pb::delta_request::Kind) {
        self.tx
            .send(pb::DeltaRequest { kind: Some(kind) })
            .await
            .expect("the stream's request channel is open");
    }
}
