//! Responses encoded once and shared by every stream, and the gRPC codec
//! and route that send them.
//!
//! A response to a proxy is mostly the same for every proxy in the same
//! position: the resources of the delta from what it holds to what it
//! should run. Only two small fields differ per stream: the `nonce` and
//! `peers`. Protobuf lets a message be the concatenation of its encoded
//! fields in any order, so a [`Frame`] is a shared prefix (the encoded
//! `DeltaResponse` without those two fields; one `Bytes` for every stream)
//! followed by a tail of a few bytes with them. The proxy decodes the
//! concatenation with the ordinary generated `DeltaResponse` type: the wire
//! contract is unchanged.
//!
//! [`Frames`] caches the encoded chunks of a response per (held, target)
//! pair, keyed by the identity of the `ActiveConfig`s (the `Arc`s every
//! session shares), so a push to 1,000 proxies encodes the 10,000-route
//! configuration once instead of holding 1,000 copies of it.
//!
//! [`DeltaServer`] is the tonic service for `sentinel.v1.ConfigStream`:
//! `Delta` is served here (requests decoded by tonic's `Streaming`,
//! responses written as gRPC messages whose bytes are the shared `Bytes`
//! themselves, handed to HTTP/2 without a copy), `ReportHealth` by the
//! generated server. What it does not do: compress. A proxy that accepts
//! gzip gets `Delta` messages uncompressed (allowed by gRPC: each message
//! says whether it is compressed); compressing per stream would need a
//! per-stream copy again.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use sentinel_proto as pb;
use sentinel_proto::config_stream_server::ConfigStreamServer;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, CompressionEncoding, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use crate::changes::{ActiveConfig, Delta};

/// One encoded `DeltaResponse`: `shared` (the same `Bytes` on every
/// stream) followed by `tail` (this stream's own fields).
#[derive(Debug, Clone)]
pub struct Frame {
    pub shared: Bytes,
    pub tail: Bytes,
}

impl Frame {
    /// A message of this stream alone (keepalives, errors).
    pub fn message(msg: &pb::DeltaResponse) -> Frame {
        Frame {
            shared: Bytes::new(),
            tail: Bytes::from(msg.encode_to_vec()),
        }
    }

    /// `shared` with this stream's nonce and peer count appended.
    pub fn with_tail(shared: &Bytes, nonce: &str, peers: u32) -> Frame {
        let tail = pb::DeltaResponse {
            nonce: nonce.to_string(),
            peers,
            ..Default::default()
        };
        Frame {
            shared: shared.clone(),
            tail: Bytes::from(tail.encode_to_vec()),
        }
    }

    pub fn len(&self) -> usize {
        self.shared.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The chunks of one response, encoded without nonce and peers.
#[derive(Debug)]
pub struct Encoded {
    pub chunks: Vec<Bytes>,
    /// Resource body bytes (`sentinel_cp_push_bytes_total`).
    pub resource_bytes: usize,
}

impl Encoded {
    /// Splits `delta` (to `target`) into chunks of at most `limit` bytes of
    /// resources and encodes each.
    pub fn new(delta: &Delta, target: &ActiveConfig, limit: usize) -> Encoded {
        let chunks = super::chunk(delta, "", target, limit);
        let resource_bytes = chunks
            .iter()
            .map(|c| c.resources.iter().map(|r| r.body.len()).sum::<usize>())
            .sum();
        Encoded {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from(c.encode_to_vec()))
                .collect(),
            resource_bytes,
        }
    }

    /// Encoded bytes of all chunks.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// How many (held, target) pairs are kept: the active configuration, the
/// one before, a rollout's, and the first pushes from nothing to each.
const CACHED: usize = 16;

type Entry = (
    Option<Arc<ActiveConfig>>,
    Arc<ActiveConfig>,
    Arc<tokio::sync::OnceCell<Arc<Encoded>>>,
);

/// Encoded responses per (held, target), shared by every session.
#[derive(Default)]
pub struct Frames {
    /// `None` as held: a proxy that holds nothing (its first push).
    entries: Mutex<VecDeque<Entry>>,
    encodes: AtomicU64,
}

impl Frames {
    /// The encoded response that takes a proxy holding `from` (`None`:
    /// nothing) to `to`; `compute` gives the delta when it is not cached.
    /// Concurrent callers for the same pair wait for one encoding.
    pub async fn get(
        &self,
        from: Option<&Arc<ActiveConfig>>,
        to: &Arc<ActiveConfig>,
        compute: impl FnOnce() -> Arc<Delta>,
    ) -> Arc<Encoded> {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let found = entries.iter().find(|(f, t, _)| {
                Arc::ptr_eq(t, to)
                    && match (f, from) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    }
            });
            match found {
                Some((_, _, cell)) => Arc::clone(cell),
                None => {
                    if entries.len() >= CACHED {
                        entries.pop_front();
                    }
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    entries.push_back((from.cloned(), Arc::clone(to), Arc::clone(&cell)));
                    cell
                }
            }
        };
        let encoded = cell
            .get_or_init(|| async {
                self.encodes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentinel_cp_push_encodes_total").increment(1);
                Arc::new(Encoded::new(&compute(), to, super::CHUNK_BYTES))
            })
            .await;
        Arc::clone(encoded)
    }

    /// Responses encoded so far (each pair once while it stays cached).
    pub fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }
}

// === impl RequestDecoder ===

/// Decodes a proxy's `DeltaRequest`s (prost), with a small initial buffer:
/// a session's inbound side is a hello and then a few short answers, and a
/// replica holds 100,000 of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = pb::DeltaRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::DeltaRequest>, Status> {
        pb::DeltaRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(256, 32 * 1024)
    }
}

// === impl FrameBody ===

/// A `Delta` response body: each frame as a gRPC message (5-byte header,
/// then the shared bytes and the tail as they are — no copy, no per-stream
/// buffer), then the trailers with the session's status. Messages are sent
/// uncompressed: the shared bytes cannot be compressed per stream without
/// copying them.
struct FrameBody {
    frames: mpsc::Receiver<Result<Frame, Status>>,
    /// Pieces of the current message not yet handed to HTTP/2.
    pieces: VecDeque<Bytes>,
    done: bool,
}

/// Below this, a message is copied into one piece (fewer HTTP/2 frames).
const COPY_BELOW: usize = 4 * 1024;

impl FrameBody {
    fn trailers(status: &Status) -> http_body::Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        if status.add_header(&mut map).is_err() {
            map.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        http_body::Frame::trailers(map)
    }
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(piece) = self.pieces.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                let mut header = BytesMut::with_capacity(5 + COPY_BELOW.min(frame.len()));
                header.put_u8(0);
                header.put_u32(len);
                if frame.len() < COPY_BELOW {
                    header.put_slice(&frame.shared);
                    header.put_slice(&frame.tail);
                } else {
                    self.pieces.push_back(frame.shared);
                    self.pieces.push_back(frame.tail);
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(header.freeze()))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&status))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pieces.is_empty()
    }
}

// === impl DeltaServer ===

const DELTA_PATH: &str = "/sentinel.v1.ConfigStream/Delta";

/// The most a proxy's message may take (hello and resync list what it holds).
pub const MAX_DECODING_BYTES: usize = 16 * 1024 * 1024;

/// `sentinel.v1.ConfigStream`: `Delta` served from shared frames by hand
/// (tonic's encoder would copy every message into a per-stream buffer and
/// keep that buffer's high-water mark for the stream's life), everything
/// else by the generated server.
#[derive(Clone)]
pub struct DeltaServer {
    service: super::StreamService,
    rest: ConfigStreamServer<super::StreamService>,
}

impl DeltaServer {
    pub fn new(service: super::StreamService) -> DeltaServer {
        let rest = ConfigStreamServer::new(service.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_DECODING_BYTES);
        DeltaServer { service, rest }
    }

    async fn delta<B>(
        service: super::StreamService,
        req: http::Request<B>,
    ) -> http::Response<tonic::body::Body>
    where
        B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError> + Send,
    {
        let encoding = match req.headers().get("grpc-encoding").map(|v| v.as_bytes()) {
            None | Some(b"identity") => None,
            Some(b"gzip") => Some(CompressionEncoding::Gzip),
            Some(_) => {
                return Status::unimplemented("grpc-encoding: only gzip and identity are accepted")
                    .into_http();
            }
        };
        let request = tonic::Request::from_http(req.map(|body| {
            Streaming::new_request(RequestDecoder, body, encoding, Some(MAX_DECODING_BYTES))
        }));
        let (metadata, frames, extensions) = match service.open(request).await {
            Ok(response) => response.into_parts(),
            Err(status) => return status.into_http(),
        };
        let body = FrameBody {
            frames,
            pieces: VecDeque::new(),
            done: false,
        };
        let mut response = http::Response::new(tonic::body::Body::new(body));
        *response.extensions_mut() = extensions;
        let headers = response.headers_mut();
        headers.extend(metadata.into_headers());
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

impl NamedService for DeltaServer {
    const NAME: &'static str = "sentinel.v1.ConfigStream";
}

impl<B> Service<http::Request<B>> for DeltaServer
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != DELTA_PATH {
            return Box::pin(self.rest.call(req));
        }
        let service = self.service.clone();
        Box::pin(async move { Ok(Self::delta(service, req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(number: i64, port: u16) -> Arc<ActiveConfig> {
        let doc = format!(
            "listeners {{ listener \"l\" {{ address \"127.0.0.1:1\"; }}; }}\nupstreams {{ upstream \"u\" {{ target \"127.0.0.1:{port}\"; }}; }}\nroutes {{ route \"r\" {{ upstream \"u\"; }}; }}"
        );
        let s = sentinel_config::compile("t.kdl", &doc).unwrap();
        Arc::new(ActiveConfig::new(number, s.resources()).with_trace(Some("tp".into())))
    }

    fn full(to: &ActiveConfig) -> Arc<Delta> {
        Arc::new(crate::changes::delta(std::iter::empty(), to))
    }

    #[tokio::test]
    async fn two_streams_at_the_same_pair_share_one_encoding() {
        let frames = Frames::default();
        let to = config(1, 2);
        let a = frames.get(None, &to, || full(&to)).await;
        let b = frames
            .get(None, &to, || panic!("encoded a second time"))
            .await;
        assert_eq!(frames.encodes(), 1);
        assert!(Arc::ptr_eq(&a, &b));
        // The frames two streams send point at the same bytes.
        let fa = Frame::with_tail(&a.chunks[0], "1-1", 3);
        let fb = Frame::with_tail(&b.chunks[0], "1-2", 3);
        assert_eq!(fa.shared.as_ptr(), fb.shared.as_ptr());

        // Another pair is another encoding.
        let next = config(2, 3);
        let d = Arc::new(crate::changes::delta(
            to.resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
            &next,
        ));
        let c = frames.get(Some(&to), &next, || d).await;
        assert_eq!(frames.encodes(), 2);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn a_frame_decodes_as_the_response_it_stands_for() {
        let to = config(4, 2);
        let d = full(&to);
        let encoded = Encoded::new(&d, &to, super::super::CHUNK_BYTES);
        let frame = Frame::with_tail(&encoded.chunks[0], "4-9", 17);
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame.shared);
        wire.extend_from_slice(&frame.tail);
        let got = pb::DeltaResponse::decode(&wire[..]).unwrap();
        let mut want = super::super::chunk(&d, "4-9", &to, super::super::CHUNK_BYTES).remove(0);
        want.peers = 17;
        assert_eq!(got, want);
        assert_eq!(
            encoded.resource_bytes,
            to.resources.iter().map(|r| r.body.len()).sum::<usize>()
        );
    }
}
