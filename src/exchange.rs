//! One request/response exchange, from arrival to the last byte of the response: what it is
//! counted and logged as.
//!
//! The record is shared by the handler, the request body on its way upstream and the response
//! body on its way back; whichever lets go last finishes it (in `Drop`), so a request is counted
//! exactly once whether it completed, failed, or the client went away mid-body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::http::request::Parts;
use hyper::{Method, Uri};
use tokio::sync::Notify;

use crate::access_log;
use crate::activity::Activity;
use crate::blame::{CLIENT_CLOSED, ClientFault};
use crate::buffering::{Buffered, Partial};
use crate::clock;
use crate::endpoints::{Endpoint, InFlight};
use crate::metrics::{Metrics, NO_COLOR};

pub struct Exchange {
    metrics: Arc<Metrics>,
    /// Method, target and the client's `ip:port`, kept only for the access log.
    logged: Option<(Method, Uri, Arc<str>)>,
    start: Instant,
    /// The client connection's: in flight from here to the end of the response.
    activity: Arc<Activity>,
    /// Index of the color in the configuration; `usize::MAX` for none. A retry may change it.
    color: AtomicUsize,
    /// The endpoint of the current attempt, counted as in flight until the exchange ends.
    endpoint: Mutex<Option<InFlight>>,
    /// The streamed request body, back from an attempt whose connection failed before
    /// sending it.
    unsent_body: Mutex<Option<Box<Partial>>>,
    /// What the client did wrong while its body was on the way, if anything.
    client_fault: Mutex<Option<ClientFault>>,
    /// The streamed body is waiting for the client's next bytes (not for the upstream to
    /// read): a stall now is the client's.
    waiting_for_client: AtomicBool,
    status: AtomicU16,
    /// Microseconds from the start to the response headers; 0 until they are ready.
    headers_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Signalled when the request body has been sent upstream, or abandoned.
    body_sent: Notify,
}

impl Exchange {
    /// `logged_as`: the client as the access line names it, for a logged request.
    pub fn begin(
        metrics: &Arc<Metrics>,
        req: &Parts,
        logged_as: Option<&Arc<str>>,
        activity: &Arc<Activity>,
    ) -> Arc<Exchange> {
        metrics.in_flight.inc();
        activity.begin();
        Arc::new(Exchange {
            metrics: metrics.clone(),
            logged: logged_as.map(|client| (req.method.clone(), req.uri.clone(), client.clone())),
            start: clock::now(),
            activity: activity.clone(),
            color: AtomicUsize::new(usize::MAX),
            endpoint: Mutex::new(None),
            unsent_body: Mutex::new(None),
            client_fault: Mutex::new(None),
            waiting_for_client: AtomicBool::new(false),
            status: AtomicU16::new(0),
            headers_us: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            body_sent: Notify::new(),
        })
    }

    /// Records the color and endpoint of an attempt; the endpoint counts it as in flight.
    pub fn attempt(&self, color: usize, endpoint: Option<Arc<Endpoint>>) {
        self.color.store(color, Ordering::Relaxed);
        *self.endpoint.lock().expect("endpoint lock") = endpoint.map(InFlight::new);
    }

    /// The color of the last attempt (`usize::MAX` for none).
    pub fn color_index(&self) -> usize {
        self.color.load(Ordering::Relaxed)
    }

    /// The body of a request whose connection failed before anything was sent, for a retry.
    pub fn take_unsent_body(&self) -> Option<Box<Partial>> {
        self.unsent_body.lock().expect("body lock").take()
    }

    /// Blames the client for how its exchange ended (the first fault found is kept).
    pub fn client_failed(&self, fault: ClientFault) {
        self.client_fault
            .lock()
            .expect("fault lock")
            .get_or_insert(fault);
    }

    pub fn client_fault(&self) -> Option<ClientFault> {
        self.client_fault.lock().expect("fault lock").clone()
    }

    pub fn waiting_for_client(&self) -> bool {
        self.waiting_for_client.load(Ordering::Relaxed)
    }

    fn color_name(&self) -> &'static str {
        let i = self.color.load(Ordering::Relaxed);
        self.metrics
            .color_names()
            .get(i)
            .copied()
            .unwrap_or(NO_COLOR)
    }

    /// Request body bytes sent upstream so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Waits until the request body has been sent (or abandoned).
    pub async fn body_sent(&self) {
        self.body_sent.notified().await
    }

    /// Wraps the response for the client; the status is what the exchange is counted as.
    pub fn respond<B>(
        self: Arc<Self>,
        resp: hyper::Response<B>,
    ) -> hyper::Response<ResponseBody<B>> {
        self.status.store(resp.status().as_u16(), Ordering::Relaxed);
        let headers = clock::now()
            .saturating_duration_since(self.start)
            .as_micros()
            .max(1) as u64;
        self.headers_us.store(headers, Ordering::Relaxed);
        resp.map(|inner| ResponseBody {
            inner,
            exchange: self,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let now = clock::now();
        self.activity.end(now);
        let elapsed = now.saturating_duration_since(self.start);
        let status = match self.status.load(Ordering::Relaxed) {
            0 => CLIENT_CLOSED,
            s => s,
        };
        let m = &self.metrics;
        m.in_flight.dec();
        m.record(
            self.color.load(Ordering::Relaxed),
            status,
            elapsed.as_secs_f64(),
        );
        let headers = match self.headers_us.load(Ordering::Relaxed) {
            0 => elapsed,
            us => std::time::Duration::from_micros(us),
        };
        m.outcome(self.color.load(Ordering::Relaxed), status, headers);
        if let Some((method, uri, client)) = &self.logged {
            let color = self.color_name();
            let endpoint = self.endpoint.lock().expect("endpoint lock");
            let upstream = endpoint.as_ref().map_or("-", |e| e.0.authority.as_str());
            access_log::log(&access_log::Entry {
                method: method.as_str(),
                path: uri.path_and_query().map_or("/", |p| p.as_str()),
                status,
                color,
                upstream,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.bytes_out.load(Ordering::Relaxed),
                client,
            });
        }
    }
}

/// The client's request body on its way upstream: counted, and reported when sent. A streamed
/// body dropped unsent (the connection failed first) goes back to the exchange for a retry; a
/// buffered one is simply sent again.
pub struct RequestBody {
    /// Boxed: hyper keeps this type in a per-connection queue of 32 slots, so each byte here
    /// costs 32 on every upstream connection, and most requests have no body.
    inner: Option<Box<Source>>,
    exchange: Arc<Exchange>,
    started: bool,
}

enum Source {
    Buffered { body: Arc<Buffered>, next: usize },
    Streamed(Box<Partial>),
}

impl RequestBody {
    pub fn empty(exchange: Arc<Exchange>) -> RequestBody {
        RequestBody {
            inner: None,
            exchange,
            started: false,
        }
    }

    pub fn buffered(body: Arc<Buffered>, exchange: Arc<Exchange>) -> RequestBody {
        RequestBody {
            inner: (body.len > 0 || body.trailers.is_some())
                .then(|| Box::new(Source::Buffered { body, next: 0 })),
            exchange,
            started: false,
        }
    }

    pub fn streamed(body: Box<Partial>, exchange: Arc<Exchange>) -> RequestBody {
        RequestBody {
            inner: Some(Box::new(Source::Streamed(body))),
            exchange,
            started: false,
        }
    }

    /// Whether the body is held whole, so that a frame taken from it can be taken again.
    pub fn is_buffered(&self) -> bool {
        matches!(self.inner.as_deref(), None | Some(Source::Buffered { .. }))
    }

    /// Back to the start of a body held whole, for another connection when nothing of it
    /// was sent; false for a streamed body once a frame was taken.
    pub fn rewind(&mut self) -> bool {
        match self.inner.as_deref_mut() {
            None => true,
            Some(Source::Buffered { next, .. }) => {
                *next = 0;
                self.started = false;
                true
            }
            Some(Source::Streamed(_)) => !self.started,
        }
    }

    fn finish(&mut self) {
        if self.inner.take().is_some() {
            // notify_one keeps a permit if nobody waits yet.
            self.exchange.body_sent.notify_one();
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.started {
            self.finish();
        } else if let Some(source) = self.inner.take()
            && let Source::Streamed(body) = *source
        {
            *self.exchange.unsent_body.lock().expect("body lock") = Some(body);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        this.started = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match &mut **inner {
            Source::Buffered { body, next } => {
                let frame = match body.chunks.get(*next) {
                    Some(chunk) => Some(Frame::data(chunk.clone())),
                    None if *next == body.chunks.len() => {
                        body.trailers.clone().map(Frame::trailers)
                    }
                    None => None,
                };
                *next += 1;
                Poll::Ready(frame.map(Ok))
            }
            Source::Streamed(partial) => match partial.prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => {
                    let polled = Pin::new(&mut partial.rest).poll_frame(cx);
                    this.exchange
                        .waiting_for_client
                        .store(polled.is_pending(), Ordering::Relaxed);
                    if let Poll::Ready(Some(Err(e))) = &polled {
                        this.exchange.client_failed(ClientFault::from_body_error(e));
                    }
                    polled
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.exchange.bytes_in.fetch_add(n, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.inner.as_deref() {
            None => true,
            Some(Source::Buffered { body, next }) => {
                *next >= body.chunks.len() + usize::from(body.trailers.is_some())
            }
            Some(Source::Streamed(p)) => p.prefix.is_empty() && p.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.inner.as_deref() {
            None => SizeHint::with_exact(0),
            Some(Source::Buffered { body, next }) => {
                SizeHint::with_exact(body.chunks.iter().skip(*next).map(|c| c.len() as u64).sum())
            }
            Some(Source::Streamed(p)) => {
                let ahead: u64 = p.prefix.iter().map(|c| c.len() as u64).sum();
                let rest = p.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(ahead + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(ahead + upper);
                }
                hint
            }
        }
    }
}

/// The response on its way to the client: counted; its end (or abandonment) ends the exchange.
pub struct ResponseBody<B> {
    inner: B,
    exchange: Arc<Exchange>,
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            this.exchange.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
