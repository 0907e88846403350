//! One HTTP/1.1 connection to an upstream, one exchange at a time, driven by its caller.
//!
//! [`Connection::send`] writes the request head and body and reads the response head; the
//! returned [`ResponseBody`] reads the rest as it is polled. While the body goes out, the
//! response is read too: an upstream may answer early (a 413 before the upload is over), or
//! send `100 Continue` first. The connection may be reused only when the request went out
//! whole, the response body ended exactly where its framing says, and keep-alive allows:
//! [`ResponseBody::take_reusable`] gives it back then, and never otherwise.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::WriteHalf;
use tokio::time::{Instant, Sleep};

use super::Error;
use super::body::{Decoded, Decoder, Framing};
use super::head::{self, Fields, RequestFraming};
use crate::clock;

/// Reads start at this size and double, up to [`MAX_READ`], while they fill what they get.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// A request head buffer grown past this by one large head is not kept for the next.
const KEPT_HEAD_BUFFER: usize = 4 * 1024;

/// An open connection to an upstream, between exchanges or during one. Its state sits in one
/// allocation made at connect: the connection goes from the pool to a request, into its
/// response body and back several times per request, and each hand-over moves a pointer
/// instead of the state (112 bytes, which also made every response that carries it too
/// large to move without a call to `memcpy`).
pub struct Connection(Box<Open>);

struct Open {
    stream: TcpStream,
    /// Bytes read and not consumed yet. Between exchanges: empty.
    buf: BytesMut,
    /// The request head being written; kept for the next request.
    head: Vec<u8>,
    next_read: usize,
    /// The one timer of the connection's waits, made at its first and reset for each after:
    /// resetting a tokio timer to a later deadline is an atomic store, while a timer per
    /// request costs an insertion into and a removal from the runtime's timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Why [`Connection::send`] failed.
#[derive(Debug)]
pub struct SendError {
    pub error: Error,
    /// Nothing at all was written.
    pub unsent: bool,
    /// Not a frame of the body was taken either: the request can go on another connection
    /// as it is.
    pub body_intact: bool,
    /// The request went out and no byte of a response came back before the connection
    /// broke: on a reused connection, most likely the upstream closing it as idle.
    pub no_response: bool,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// The socket of a connection that switched protocols, with the bytes the upstream sent
/// after its `101` head.
pub struct Upgraded {
    pub stream: TcpStream,
    pub read_ahead: Bytes,
}

/// The request body's side of an exchange.
enum BodyFail {
    Client(String),
    Io(io::Error),
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        Connection(Box::new(Open {
            stream,
            buf: BytesMut::new(),
            head: Vec::new(),
            next_read: FIRST_READ,
            timer: None,
        }))
    }

    /// Whether an idle connection is still usable: not closed by the upstream, and nothing
    /// arrived that nobody asked for. Never blocks.
    pub fn is_usable(&self) -> bool {
        if !self.0.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.0.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Resolves once the upstream has sent something (or closed).
    #[cfg(test)]
    pub async fn readable(&self) -> io::Result<()> {
        self.0.stream.readable().await
    }

    /// Sends one request and reads its response head; the body follows through the returned
    /// response. `target` is the origin form (`/path?query`); `fields` are sent as they are,
    /// but for the framing fields, which follow what the body is.
    ///
    /// `coalesce`: the body's first frame, when at hand, goes out in the head's write. Only
    /// for a body that can be taken again (held whole): a frame taken for a write that then
    /// fails is otherwise lost to a retry on another connection.
    ///
    /// `head_timeout`: how long the response head may take once the request has gone out
    /// whole; past it, the send fails with a timeout ([`Error::is_timeout`]). While the body
    /// is still going out, no time limit applies here (the caller watches its progress).
    pub async fn send<B>(
        mut self,
        method: &Method,
        target: &str,
        fields: &impl Fields,
        body: &mut B,
        coalesce: bool,
        head_timeout: Duration,
    ) -> Result<Response<ResponseBody>, SendError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: fmt::Display,
    {
        let body_len = (!body.is_end_stream()).then(|| body.size_hint().exact());
        let framing = head::encode_request(&mut self.0.head, method, target, fields, body_len);
        // A first frame at hand goes out with the head, in one write.
        let first = match framing {
            RequestFraming::None => None,
            _ if !coalesce => None,
            _ => match poll_now(body) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            },
        };
        // Atomic only to keep the future `Send`: one task reads and writes it.
        let wrote = AtomicBool::new(false);
        let body_intact = first.is_none();
        let (head, sent) = {
            let Open {
                stream,
                buf,
                head: head_buf,
                next_read,
                timer,
            } = &mut *self.0;
            let (mut rd, mut wr) = stream.split();
            let sending = send_body(&mut wr, head_buf, body, framing, first, &wrote);
            tokio::pin!(sending);
            let mut sent = false;
            let mut write_failed: Option<io::Error> = None;
            let mut received = false;
            // When the request went out whole: the response head is due `head_timeout` later.
            let mut due: Option<Instant> = None;
            let fail = |error: Error, received: bool| SendError {
                error,
                unsent: !wrote.load(Ordering::Relaxed),
                body_intact: body_intact && !wrote.load(Ordering::Relaxed),
                no_response: !received,
            };
            let head = loop {
                if !buf.is_empty() {
                    match head::parse_response(buf, method) {
                        Err(e) => return Err(fail(e, true)),
                        Ok(Some(h)) if h.status.is_informational() && h.status != 101 => continue,
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                    }
                }
                reserve(buf, next_read);
                let read = if sent || write_failed.is_some() {
                    let deadline =
                        *due.get_or_insert_with(|| Instant::from_std(clock::now()) + head_timeout);
                    let mut timer = arm(timer, deadline);
                    tokio::select! {
                        biased;
                        r = tokio::io::AsyncReadExt::read_buf(&mut rd, buf) => r,
                        () = timer.as_mut() => {
                            // Set for an earlier request, and left as it was (see `arm`).
                            if Instant::now() < deadline {
                                timer.reset(deadline);
                                continue;
                            }
                            let why = format!(
                                "no response head within {}",
                                humantime::format_duration(head_timeout)
                            );
                            let e = io::Error::new(io::ErrorKind::TimedOut, why);
                            return Err(fail(Error::Io("waiting for the response head", e), received));
                        }
                    }
                } else {
                    tokio::select! {
                        biased;
                        r = &mut sending => {
                            match r {
                                Ok(()) => sent = true,
                                Err(BodyFail::Client(why)) => {
                                    return Err(fail(Error::RequestBody(why), received));
                                }
                                Err(BodyFail::Io(e)) => write_failed = Some(e),
                            }
                            continue;
                        }
                        r = tokio::io::AsyncReadExt::read_buf(&mut rd, buf) => r,
                    }
                };
                match read {
                    Ok(0) => {
                        let error = match write_failed.take() {
                            _ if !buf.is_empty() => Error::closed(
                                "the upstream closed the connection in the middle of the response head",
                            ),
                            Some(e) => Error::Io("writing the request", e),
                            None => Error::closed(
                                "the upstream closed the connection before sending a response",
                            ),
                        };
                        return Err(fail(error, received));
                    }
                    Ok(_) => received = true,
                    Err(e) => {
                        return Err(fail(Error::Io("reading the response head", e), received));
                    }
                }
            };
            (head, sent)
        };
        let upgrade = head.status == StatusCode::SWITCHING_PROTOCOLS;
        let decoder = Decoder::new(if upgrade {
            Framing::Empty
        } else {
            head.framing
        });
        let body = ResponseBody {
            reusable: head.keep_alive && sent && !upgrade,
            upgrade,
            decoder,
            conn: Some(self),
            failed: None,
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// The connection's timer, to go off no later than `deadline`. A timer made for an earlier
/// wait is left as it is when it goes off sooner: the wait sets it anew then, if it is not
/// over (once per REQUEST_TIMEOUT rather than once per request).
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) -> Pin<&mut Sleep> {
    match timer {
        Some(t) => {
            if t.deadline() > deadline {
                t.as_mut().reset(deadline);
            }
            t.as_mut()
        }
        None => timer
            .insert(Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut(),
    }
}

/// Room for the next read, growing while reads fill what they are given.
fn reserve(buf: &mut BytesMut, next_read: &mut usize) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(*next_read);
    }
}

/// What polling a request body gives.
type Polled<B> = Option<Result<Frame<Bytes>, <B as Body>::Error>>;

/// Polls the body once, without waiting: what it has at hand.
fn poll_now<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Poll<Polled<B>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

/// Writes the head, then the body as `framing` says.
///
/// The body's writer is boxed: its frames and slices would otherwise make every request's
/// future 0.5 KB larger, bodiless ones too, and that future is moved with each request.
async fn send_body<B>(
    w: &mut WriteHalf<'_>,
    head: &mut Vec<u8>,
    body: &mut B,
    framing: RequestFraming,
    first: Option<Polled<B>>,
    wrote: &AtomicBool,
) -> Result<(), BodyFail>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    if framing == RequestFraming::None {
        return write_all(w, &mut [IoSlice::new(head)], wrote).await;
    }
    // Each data frame in one vectored write (the first one with the head), trailers after
    // the last chunk of a chunked body.
    Box::pin(async move {
        let mut head_pending = true;
        let mut next = first;
        let mut len = 0u64;
        let mut trailers_sent = false;
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => {
                    if head_pending {
                        // The body is not at hand: the head goes first, alone.
                        write_all(w, &mut [IoSlice::new(head)], wrote).await?;
                        head.clear();
                        head_pending = false;
                    }
                    body.frame().await
                }
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(BodyFail::Client(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    len += data.len() as u64;
                    if let RequestFraming::Length(n) = framing
                        && len > n
                    {
                        return Err(BodyFail::Client(format!(
                            "the request body is longer than its Content-Length ({n})"
                        )));
                    }
                    if !head_pending {
                        head.clear();
                    }
                    let suffix: &[u8] = if framing == RequestFraming::Chunked {
                        push_hex(head, data.len());
                        head.extend_from_slice(b"\r\n");
                        b"\r\n"
                    } else {
                        b""
                    };
                    let mut slices = [
                        IoSlice::new(head),
                        IoSlice::new(&data),
                        IoSlice::new(suffix),
                    ];
                    write_all(w, &mut slices, wrote).await?;
                    head_pending = false;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers()
                        && framing == RequestFraming::Chunked
                    {
                        if !head_pending {
                            head.clear();
                        }
                        head.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            head.extend_from_slice(name.as_str().as_bytes());
                            head.extend_from_slice(b": ");
                            head.extend_from_slice(value.as_bytes());
                            head.extend_from_slice(b"\r\n");
                        }
                        head.extend_from_slice(b"\r\n");
                        write_all(w, &mut [IoSlice::new(head)], wrote).await?;
                        head_pending = false;
                        trailers_sent = true;
                    }
                    // A body framed by length has no place for trailers: they go (as with hyper).
                }
            }
        }
        if let RequestFraming::Length(n) = framing
            && len < n
        {
            return Err(BodyFail::Client(format!(
                "the request body ended {} bytes short of its Content-Length",
                n - len
            )));
        }
        if !head_pending {
            head.clear();
        }
        if framing == RequestFraming::Chunked && !trailers_sent {
            head.extend_from_slice(b"0\r\n\r\n");
        }
        if !head.is_empty() {
            write_all(w, &mut [IoSlice::new(head)], wrote).await?;
        }
        Ok(())
    })
    .await
}

/// `n` in hexadecimal, as a chunk size line has it.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

async fn write_all(
    w: &mut WriteHalf<'_>,
    mut slices: &mut [IoSlice<'_>],
    wrote: &AtomicBool,
) -> Result<(), BodyFail> {
    while slices.iter().any(|s| !s.is_empty()) {
        let n = w.write_vectored(slices).await.map_err(BodyFail::Io)?;
        if n == 0 {
            return Err(BodyFail::Io(io::ErrorKind::WriteZero.into()));
        }
        wrote.store(true, Ordering::Relaxed);
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// A response body read from its connection as it is polled.
pub struct ResponseBody {
    /// `None` once the body failed, or its connection was taken back.
    conn: Option<Connection>,
    decoder: Decoder,
    /// Keep-alive allows reuse and the request went out whole.
    reusable: bool,
    upgrade: bool,
    /// An error found while frames read before it may still be on their way out: it is
    /// reported on the next poll, after the poller had a chance to flush them. Boxed: it is
    /// rare, and the body is moved with every response.
    failed: Option<Box<Error>>,
}

impl ResponseBody {
    /// The connection, for the next request, once the body has ended cleanly: all of it
    /// read, nothing after it, and keep-alive allowing it.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        let conn = self.conn.as_ref()?;
        if !(self.reusable && self.decoder.is_done() && conn.0.buf.is_empty()) {
            return None;
        }
        let mut taken = self.conn.take()?;
        let conn = &mut *taken.0;
        // The read buffer is reused in place once this response's frames are gone; one that
        // grew for a large body is let go, so that an idle connection holds little.
        if conn.next_read > FIRST_READ {
            conn.buf = BytesMut::new();
            conn.next_read = FIRST_READ;
        }
        if conn.head.capacity() > KEPT_HEAD_BUFFER {
            conn.head = Vec::new();
        }
        Some(taken)
    }

    /// The socket after a `101 Switching Protocols`, with what the upstream sent after it.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        if !self.upgrade {
            return None;
        }
        let conn = *self.conn.take()?.0;
        Some(Upgraded {
            stream: conn.stream,
            read_ahead: conn.buf.freeze(),
        })
    }

    /// Drops the connection; the error comes on the next poll, so that a server writing
    /// this body sends out what it has (the head, the data so far) before it sees the error,
    /// and its client gets a visibly truncated response rather than none.
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.reusable = false;
        self.failed = Some(Box::new(e));
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(*e)));
        }
        loop {
            if this.decoder.is_done() {
                return Poll::Ready(None);
            }
            let Some(Connection(conn)) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Err(e) => return this.fail(e, cx),
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
            }
            reserve(&mut conn.buf, &mut conn.next_read);
            let room = conn.buf.capacity() - conn.buf.len();
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(0) => {
                    this.reusable = false;
                    if let Err(e) = this.decoder.eof() {
                        return this.fail(e, cx);
                    }
                }
                Ok(n) => {
                    if n == room && conn.next_read < MAX_READ {
                        conn.next_read *= 2;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match conn.stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            return this.fail(Error::Io("reading the response body", e), cx);
                        }
                    }
                }
                Err(e) => return this.fail(Error::Io("reading the response body", e), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_in_hex() {
        for n in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4096,
            0xdead_beef,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            super::push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }
}
