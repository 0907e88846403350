//! Reading bodies ahead of the slower side, so that a slow client never holds an upstream.
//!
//! - A request body up to REQUEST_BUFFER is read whole before an upstream is picked (nginx's
//!   `proxy_request_buffering`): a one-worker app never waits on an uploader's bytes, and a
//!   complete body can go again after any connect failure, POST included.
//! - A response body up to RESPONSE_BUFFER is read from the upstream ahead of the client
//!   (nginx's `proxy_buffering`), so the upstream connection is free as soon as its response is.
//!
//! Every buffered byte is reserved from one process-wide [`Budget`], so a flood of uploads
//! cannot exhaust memory: past it, request bodies stream as they come (and are counted), and
//! response bodies go to disk ([`crate::spill`]) while that has room.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;
use tokio::sync::{Semaphore, mpsc};

use crate::activity::{Activity, BodyReading};
use crate::blame::ClientFault;
use crate::budget::{Budget, Reservation};
use crate::spill::{Spill, Spilled};

/// A request body read whole: sent again as it is for every attempt.
pub struct Buffered {
    pub chunks: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub len: u64,
    _held: Reservation,
}

/// The part of a request body read ahead, and the rest still to come from the client.
pub struct Partial {
    pub prefix: VecDeque<Bytes>,
    pub rest: Incoming,
    _held: Reservation,
    /// Dropped with the rest: once the body ended (or failed), or was abandoned.
    _reading: BodyReading,
}

/// A request body as it stands once read ahead.
pub enum RequestAhead {
    Empty,
    Complete(Arc<Buffered>),
    Partial(Box<Partial>),
}

/// What reading ahead found.
pub struct Ahead<T> {
    pub body: T,
    /// The budget had no room: the body streams beyond what it could hold.
    pub overflowed: bool,
}

/// Reads up to `limit` bytes of a request body within `timeout`. A body that ends within the
/// limit is complete; a longer one (or one the budget has no room for) streams after its
/// first bytes. `limit` 0 streams at once. `activity`: the client connection's, told while
/// the body is still read (see [`Activity::body_reading`]).
pub async fn read_request(
    mut body: Incoming,
    limit: u64,
    timeout: Duration,
    budget: &Arc<Budget>,
    activity: &Arc<Activity>,
) -> Result<Ahead<RequestAhead>, ClientFault> {
    if body.is_end_stream() {
        return Ok(Ahead {
            body: RequestAhead::Empty,
            overflowed: false,
        });
    }
    let reading = activity.body_reading();
    let mut held = Reservation::new(budget);
    let mut chunks = Vec::new();
    let mut len = 0u64;
    let mut trailers = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut overflowed = false;
    while len < limit {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ClientFault::TooSlow {
                    waited: timeout,
                    received: len,
                });
            }
            Ok(None) => {
                let body = Buffered {
                    chunks,
                    trailers,
                    len,
                    _held: held,
                };
                return Ok(Ahead {
                    body: RequestAhead::Complete(Arc::new(body)),
                    overflowed: false,
                });
            }
            Ok(Some(Err(e))) => return Err(ClientFault::from_body_error(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let n = data.len() as u64;
                len += n;
                chunks.push(data);
                if !held.grow(n) {
                    overflowed = true;
                    break;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    // Trailers come last, so a body still going has none yet.
    Ok(Ahead {
        body: RequestAhead::Partial(Box::new(Partial {
            prefix: chunks.into(),
            rest: body,
            _held: held,
            _reading: reading,
        })),
        overflowed,
    })
}

/// A response body read ahead of the client: frames at hand, and for a body that was not
/// complete yet, a pump task that keeps reading up to the window ahead.
pub struct ResponseAhead<E> {
    /// A body read whole is most often one data frame: it waits here, without a queue to
    /// allocate. Data only, as a frame (which may be trailers) is three times the size, and
    /// the body is moved with every response.
    first: Option<Bytes>,
    /// The frames after the first, in order.
    frames: VecDeque<Frame<Bytes>>,
    /// Boxed for the same reason: a pump comes with a task of its own.
    pump: Option<Box<Pump<E>>>,
    _held: Reservation,
}

struct Pump<E> {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, E>>,
    /// Bytes the pump may read before the client has taken them.
    window: Arc<Semaphore>,
    window_size: u32,
}

/// How a response body goes to the client.
pub enum ResponseRead<B: Body> {
    /// As the upstream sends it (nothing to read ahead, buffering off, or no budget left).
    Stream {
        body: B,
        overflowed: bool,
    },
    Ahead(ResponseAhead<B::Error>),
    /// Read ahead to disk (see [`crate::spill`]).
    Spilled(Spilled),
}

/// Reads a response body ahead of the client. A body of known size within `limit` is read
/// whole here, before the client sees the head, so the upstream connection is free at once
/// and a body that breaks becomes a clean error instead of a truncated response. Any other
/// body, and one the memory budget has no room for, is read by a task of its own: to disk
/// when `spill` is there and has room, else up to `limit` bytes ahead in memory. Either way
/// it still streams (server-sent events, long downloads).
pub async fn read_response<B>(
    mut body: B,
    limit: u64,
    budget: &Arc<Budget>,
    spill: Option<&Arc<Spill>>,
) -> Result<ResponseRead<B>, B::Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    if limit == 0 || body.is_end_stream() {
        return Ok(ResponseRead::Stream {
            body,
            overflowed: false,
        });
    }
    let exact = body.size_hint().exact();
    let mut held = Reservation::new(budget);
    if let Some(n) = exact
        && n <= limit
        && held.grow(n)
    {
        let mut first = None;
        let mut frames = VecDeque::new();
        // A body that stops coming is the body's to end (see `crate::upstream::UpstreamBody`).
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if first.is_none() && frames.is_empty() {
                match frame.into_data() {
                    Ok(data) => first = Some(data),
                    Err(frame) => frames.push_back(frame),
                }
            } else {
                frames.push_back(frame);
            }
        }
        return Ok(ResponseRead::Ahead(ResponseAhead {
            first,
            frames,
            pump: None,
            _held: held,
        }));
    }
    if let Some(spill) = spill {
        // A small body takes its room on disk at once, or goes on as if there were none; a
        // larger one only the room it needs while its client is behind.
        match spill.start(body, exact.filter(|&n| n <= limit)) {
            Ok(spilled) => return Ok(ResponseRead::Spilled(spilled)),
            Err(given_back) => body = given_back,
        }
    }
    if exact.is_some_and(|n| n <= limit) || !held.grow(limit) {
        return Ok(ResponseRead::Stream {
            body,
            overflowed: true,
        });
    }
    let window_size = u32::try_from(limit).unwrap_or(u32::MAX);
    let window = Arc::new(Semaphore::new(window_size as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(body, tx, window.clone(), window_size));
    Ok(ResponseRead::Ahead(ResponseAhead {
        first: None,
        frames: VecDeque::new(),
        pump: Some(Box::new(Pump {
            rx,
            window,
            window_size,
        })),
        _held: held,
    }))
}

/// Reads the upstream body while the window has room; ends when the body does, or when the
/// client's side is gone (the receiver dropped).
async fn pump<B>(
    mut body: B,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, B::Error>>,
    window: Arc<Semaphore>,
    window_size: u32,
) where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tx.closed() => return,
        };
        let Some(frame) = frame else { return };
        let n = frame
            .as_ref()
            .ok()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len());
        let permits = u32::try_from(n).unwrap_or(u32::MAX).min(window_size);
        if permits > 0 {
            let acquired = tokio::select! {
                permit = window.acquire_many(permits) => permit,
                () = tx.closed() => return,
            };
            match acquired {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
        }
        let end = frame.is_err();
        if tx.send(frame).is_err() || end {
            return;
        }
    }
}

impl<E> Body for ResponseAhead<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = self.get_mut();
        if let Some(frame) = this
            .first
            .take()
            .map(Frame::data)
            .or_else(|| this.frames.pop_front())
        {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(pump) = this.pump.as_mut() else {
            return Poll::Ready(None);
        };
        match pump.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    pump.window.add_permits(n.min(pump.window_size) as usize);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.pump = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.pump = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.frames.is_empty() && self.pump.is_none()
    }

    /// The frames at hand; a pumped body's length is in the upstream's `Content-Length`,
    /// which goes to the client as it is.
    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, Bytes::len);
        let n: u64 = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .fold(first as u64, |n, d| n + d.len() as u64);
        if self.pump.is_some() {
            let mut hint = SizeHint::new();
            hint.set_lower(n);
            hint
        } else {
            SizeHint::with_exact(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A body of known length in several frames, trailers last, as an upstream body read in
    /// several reads.
    struct Frames(VecDeque<Frame<Bytes>>, u64);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }

    #[tokio::test]
    async fn a_body_read_whole_keeps_its_frames_in_order() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-done", "1".parse().unwrap());
        for parts in [vec![], vec!["one"], vec!["one", "two", "three"]] {
            let mut frames: VecDeque<_> = parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
                .collect();
            frames.push_back(Frame::trailers(trailers.clone()));
            let len = parts.iter().map(|p| p.len() as u64).sum();
            let read = read_response(Frames(frames, len), 1024, &Budget::new(1 << 20), None)
                .await
                .unwrap();
            let ResponseRead::Ahead(mut ahead) = read else {
                panic!("a body within the limit is read ahead");
            };
            assert_eq!(ahead.size_hint().exact(), Some(len));
            let mut got = Vec::new();
            while let Some(frame) = ahead.frame().await {
                let frame = frame.unwrap();
                match frame.into_data() {
                    Ok(data) => got.push(String::from_utf8(data.to_vec()).unwrap()),
                    Err(frame) => {
                        assert_eq!(frame.into_trailers().unwrap(), trailers);
                        got.push("trailers".into());
                    }
                }
            }
            let mut want: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            want.push("trailers".into());
            assert_eq!(got, want);
            assert!(ahead.is_end_stream());
        }
    }
}
