//! One request/response exchange, from arrival to the last byte of the response: what it is
//! counted and logged as.
//!
//! The record is shared by the handler, the request body on its way upstream and the response
//! body on its way back; whichever lets go last finishes it (in `Drop`), so a request is counted
//! exactly once whether it completed, failed, or the client went away mid-body.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Uri};
use tokio::sync::Notify;

use crate::endpoints::{Endpoint, InFlight};
use crate::metrics::{Metrics, NO_COLOR};
use crate::upstream::UpstreamBody;

/// Status recorded for a client that went away before its response began (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

pub struct Exchange {
    metrics: Arc<Metrics>,
    /// Method and target, kept only for the access log.
    logged: Option<(Method, Uri)>,
    start: Instant,
    client: SocketAddr,
    /// Index of the color in the configuration; `usize::MAX` for none. A retry may change it.
    color: AtomicUsize,
    /// The endpoint of the current attempt, counted as in flight until the exchange ends.
    endpoint: Mutex<Option<InFlight>>,
    /// The request body, back from an attempt whose connection failed before sending it.
    unsent_body: Mutex<Option<Incoming>>,
    status: AtomicU16,
    /// Microseconds from the start to the response headers; 0 until they are ready.
    headers_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Signalled when the request body has been sent upstream, or abandoned.
    body_sent: Notify,
}

impl Exchange {
    pub fn begin(
        metrics: &Arc<Metrics>,
        access_log: bool,
        req: &Request<Incoming>,
        client: SocketAddr,
    ) -> Arc<Exchange> {
        metrics.in_flight.inc();
        Arc::new(Exchange {
            metrics: metrics.clone(),
            logged: access_log.then(|| (req.method().clone(), req.uri().clone())),
            start: Instant::now(),
            client,
            color: AtomicUsize::new(usize::MAX),
            endpoint: Mutex::new(None),
            unsent_body: Mutex::new(None),
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
    pub fn take_unsent_body(&self) -> Option<Incoming> {
        self.unsent_body.lock().expect("body lock").take()
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
    pub fn respond(
        self: Arc<Self>,
        resp: hyper::Response<Either<UpstreamBody, Full<Bytes>>>,
    ) -> hyper::Response<ResponseBody> {
        self.status.store(resp.status().as_u16(), Ordering::Relaxed);
        let headers = self.start.elapsed().as_micros().max(1) as u64;
        self.headers_us.store(headers, Ordering::Relaxed);
        resp.map(|inner| ResponseBody {
            inner,
            exchange: self,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
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
        if let Some((method, uri)) = &self.logged {
            let color = self.color_name();
            let endpoint = self.endpoint.lock().expect("endpoint lock");
            let upstream = endpoint.as_ref().map_or("-", |e| e.0.authority.as_str());
            tracing::info!(
                target: "colorproxy::access",
                method = %method,
                path = %uri.path_and_query().map_or("/", |p| p.as_str()),
                status,
                color,
                upstream,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes_in = self.bytes_in.load(Ordering::Relaxed),
                bytes_out = self.bytes_out.load(Ordering::Relaxed),
                client = %self.client,
                "request"
            );
        }
    }
}

/// The client's request body on its way upstream: counted, and reported when sent. Dropped
/// unsent (the connection failed first), it goes back to the exchange for a retry.
pub struct RequestBody {
    /// Boxed: hyper keeps this type in a per-connection queue of 32 slots, so each byte here
    /// costs 32 on every upstream connection, and most requests have no body.
    inner: Option<Box<Incoming>>,
    exchange: Arc<Exchange>,
    started: bool,
}

impl RequestBody {
    pub fn new(inner: Option<Incoming>, exchange: Arc<Exchange>) -> RequestBody {
        RequestBody {
            // An empty body needs neither a box nor keeping for a retry: a retry sends none.
            inner: inner.filter(|b| !b.is_end_stream()).map(Box::new),
            exchange,
            started: false,
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
        } else if let Some(body) = self.inner.take() {
            *self.exchange.unsent_body.lock().expect("body lock") = Some(*body);
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
        let polled = Pin::new(&mut **inner).poll_frame(cx);
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
        self.inner.as_deref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_deref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The response on its way to the client: counted; its end (or abandonment) ends the exchange.
pub struct ResponseBody {
    inner: Either<UpstreamBody, Full<Bytes>>,
    exchange: Arc<Exchange>,
}

impl Body for ResponseBody {
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
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
