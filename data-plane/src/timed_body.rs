//! A body wrapper that enforces deadlines on a streamed body and holds a
//! claim until the body ends.
//!
//! The proxy streams bodies both ways, so timeouts that only cover the
//! response head are not timeouts: [`TimedBody`] cuts a body that runs past
//! an overall deadline (the route's or upstream's `request` timeout) or
//! that stalls longer than an idle gap between frames (`read` for
//! responses, `write` for uploads). It also owns whatever must live as long
//! as the body — the upstream [`InFlight`] claim and the connection's
//! request-activity guard — and drops them when the body ends, fails or is
//! dropped by the client.
//!
//! One timer per body; it is re-armed after each frame, never reallocated.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::proxy::ActivityGuard;
use crate::upstream::InFlight;

/// Which side a cut body belongs to, for the error it ends with.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The upstream's response: a cut is an upstream timeout.
    Response,
    /// The client's upload: a cut is the client being too slow.
    Request,
}

/// Wraps any body; responses wrap hyper's `Incoming` directly so that a
/// proxied body is boxed once.
pub struct TimedBody<B = Body> {
    inner: B,
    /// Overall deadline, if any.
    deadline: Option<Instant>,
    /// Longest gap between two frames, if any.
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    hold: Option<InFlight>,
    activity: Option<ActivityGuard>,
    side: Side,
    done: bool,
}

impl<B> TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(
        inner: B,
        deadline: Option<Instant>,
        idle: Option<Duration>,
        hold: Option<InFlight>,
        activity: Option<ActivityGuard>,
        side: Side,
    ) -> Self {
        let mut body = Self {
            inner,
            deadline,
            idle,
            timer: None,
            hold,
            activity,
            side,
            done: false,
        };
        if let Some(at) = body.next_wake() {
            body.timer = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        body
    }

    pub fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

impl<B> TimedBody<B> {
    fn next_wake(&self) -> Option<Instant> {
        let idle = self.idle.map(|d| Instant::now() + d);
        match (self.deadline, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn cut(&mut self) -> BoxError {
        self.done = true;
        self.hold = None;
        self.activity = None;
        let overall = self.deadline.is_some_and(|d| Instant::now() >= d);
        let e = match (self.side, overall) {
            (Side::Response, true) => ProxyError::BodyDeadline,
            (Side::Response, false) => ProxyError::BodyStalled {
                idle_ms: self.idle.map_or(0, |d| d.as_millis() as u64),
            },
            (Side::Request, _) => ProxyError::RequestBodyTimeout {
                timeout_ms: self.idle.map_or(0, |d| d.as_millis() as u64),
            },
        };
        Box::new(e)
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(at), Some(timer)) = (this.next_wake(), this.timer.as_mut()) {
                    timer.as_mut().reset(at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.done = true;
                this.hold = None;
                this.activity = None;
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let fired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    Poll::Ready(Some(Err(this.cut())))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn trickle(every: Duration, chunks: usize) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(every).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
            .boxed_unsync()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_streams_past_the_deadline_is_cut() {
        let deadline = Instant::now() + Duration::from_millis(1000);
        let body = TimedBody::new(
            trickle(Duration::from_millis(300), 10),
            Some(deadline),
            Some(Duration::from_millis(500)),
            None,
            None,
            Side::Response,
        );
        let err = body.collect().await.expect_err("cut");
        assert!(err.to_string().contains("deadline"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_the_idle_gap() {
        let body = TimedBody::new(
            trickle(Duration::from_millis(800), 3),
            None,
            Some(Duration::from_millis(500)),
            None,
            None,
            Side::Response,
        );
        let err = body.collect().await.expect_err("cut");
        assert!(err.to_string().contains("stalled"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_within_its_bounds_is_untouched() {
        let body = TimedBody::new(
            trickle(Duration::from_millis(300), 3),
            Some(Instant::now() + Duration::from_secs(5)),
            Some(Duration::from_millis(500)),
            None,
            None,
            Side::Response,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
    }
}
