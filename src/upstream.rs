//! The one HTTP client shared by all requests, and what its failures mean to a client.
//!
//! Connections to upstreams are pooled per endpoint and kept alive; each exchange runs on
//! [`crate::codec`] in the request's own task. Failures are sorted into the few kinds an
//! operator acts on (nothing listening, no such name, too slow, connection dropped), each with
//! the status the client gets.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpStream;
use tracing::warn;

use crate::blame::ClientFault;
use crate::codec::head::Fields;
use crate::codec::{self, Connection, SendError, Upgraded};
use crate::config::Discovery;
use crate::discovery::{Resolver, discover};
use crate::endpoints::Endpoint;
use crate::exchange::{Exchange, RequestBody};
use crate::pool::Waiter;

/// A request as it goes upstream: HTTP/1.1 to the origin-form `target`, with `fields` as
/// they are (the codec adds the framing).
pub struct RequestHead<'a, F> {
    pub method: &'a Method,
    pub target: &'a str,
    pub fields: &'a F,
}

/// What a request that finds no idle connection goes by as it waits for one.
pub struct Queueing<'a> {
    /// When its client's connection was accepted: under overload, the newest go first.
    pub client_since: Instant,
    /// Asked once a connect timed out: whether no other endpoint is left to retry on.
    pub alone: &'a (dyn Fn() -> bool + Sync),
}

/// Connects to endpoints and exchanges requests over their pooled keep-alive connections.
pub struct UpstreamClient {
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Resolves the endpoints that are names (discovery off), once per new connection.
    resolver: Resolver,
}

/// Why an upstream gave no response.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// The cause chain, e.g. `tcp connect error: Connection refused (os error 111)`.
    pub cause: String,
    /// What the retry rules need to know beyond the kind.
    pub detail: Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    None,
    /// The request went out on a pooled keep-alive connection that broke before any
    /// response. Most likely the upstream closed it as it was reused (its idle timeout raced
    /// ours), which says nothing about the endpoint: a new connection will do.
    StaleConnection,
    /// The upstream answered, but not in valid HTTP/1.1 (framing, head): it was heard, so the
    /// request is not sent again.
    InvalidResponse,
    /// The connect timed out: its SYN may have been dropped (a full accept queue, a lost
    /// packet), which a new attempt on the same endpoint can get past.
    ConnectTimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The name did not resolve (nothing was sent).
    Dns,
    /// Nothing accepted the connection: refused, unreachable, or connect timeout (nothing was
    /// sent).
    Connect,
    /// No response headers within REQUEST_TIMEOUT.
    Timeout,
    /// The connection closed or broke before a complete response head.
    Reset,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl UpstreamError {
    pub fn new(kind: ErrorKind, cause: String) -> UpstreamError {
        UpstreamError {
            kind,
            cause,
            detail: Detail::None,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.cause)
    }
}

impl UpstreamClient {
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        resolver: Resolver,
    ) -> UpstreamClient {
        UpstreamClient {
            connect_timeout,
            request_timeout,
            resolver,
        }
    }

    /// Sends a request in origin form to `endpoint`; resolves when the response head has
    /// arrived (the body streams afterwards, and its end returns the connection to the pool).
    ///
    /// REQUEST_TIMEOUT counts from the end of the request body, not from its start: a
    /// multi-GB upload may take longer than any sensible wait for a response head. While the
    /// body is being sent, the same time without any progress ends the exchange too (an
    /// upstream that stopped reading, or a client that stopped sending).
    ///
    /// `pooled: false` asks for a new connection, for a retry after a stale pooled one.
    /// `queueing`: how it waits for a connection when none is idle (see
    /// [`Self::connect_or_wait`]).
    ///
    /// The proxy sends a request without a body through [`Self::exchange`] directly: this
    /// future would only add a layer to copy.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        head: &RequestHead<'_, impl Fields + Sync>,
        body: RequestBody,
        exchange: &Exchange,
        pooled: bool,
        queueing: &Queueing<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // One future, awaited at one place or the other: two awaits of `exchange` would each
        // get their own space in this future (the size of `exchange`'s again).
        let body_pending = !body.is_end_stream();
        let response = self.exchange(endpoint, head, body, pooled, queueing);
        tokio::pin!(response);
        // A bodiless request's `body_sent` is never signalled: only a body is watched.
        if body_pending {
            let mut sent = exchange.bytes_in();
            loop {
                tokio::select! {
                    res = &mut response => return res,
                    () = exchange.body_sent() => break,
                    () = tokio::time::sleep(self.request_timeout) => {
                        if exchange.bytes_in() == sent {
                            if exchange.waiting_for_client() {
                                exchange.client_failed(ClientFault::TooSlow {
                                    waited: self.request_timeout,
                                    received: sent,
                                });
                            }
                            return Err(UpstreamError::new(
                                ErrorKind::Timeout,
                                format!(
                                    "the request body made no progress for {} ({sent} bytes sent)",
                                    humantime::format_duration(self.request_timeout)
                                ),
                            ));
                        }
                        sent = exchange.bytes_in();
                    }
                }
            }
        }
        // The response head's own deadline is the connection's ([`Connection::send`]).
        response.await
    }

    /// One exchange on a pooled connection, else on a new one. A pooled connection that the
    /// upstream closed while it was idle is found out before anything is written on it, and
    /// one that fails before a byte went out gives the request to the next.
    ///
    /// [`Self::send`] without its watch over the request body: for a request that has none.
    pub async fn exchange(
        &self,
        endpoint: &Arc<Endpoint>,
        head: &RequestHead<'_, impl Fields + Sync>,
        mut body: RequestBody,
        pooled: bool,
        queueing: &Queueing<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let idle = if pooled {
                endpoint.pool.checkout()
            } else {
                None
            };
            let (conn, reused) = match idle {
                Some(conn) => (conn, true),
                // Boxed: a rare path whose future would otherwise be moved along with every
                // request's.
                None if pooled => {
                    Box::pin(self.bounded(self.connect_or_wait(endpoint, queueing))).await?
                }
                None => (Box::pin(self.bounded(self.connect(endpoint))).await?, false),
            };
            let coalesce = body.is_buffered();
            match conn
                .send(
                    head.method,
                    head.target,
                    head.fields,
                    &mut body,
                    coalesce,
                    self.request_timeout,
                )
                .await
            {
                Ok(resp) => {
                    let mut resp = resp.map(|inner| UpstreamBody {
                        inner,
                        endpoint: endpoint.clone(),
                        stall: self.request_timeout,
                        timer: None,
                        waiting: false,
                        stalled: false,
                    });
                    // A body that is already over (HEAD, 204, `Content-Length: 0`): the
                    // connection is free now.
                    if resp.body().inner.is_end_stream() {
                        resp.body_mut().checkin();
                    }
                    return Ok(resp);
                }
                // Nothing went out: the next connection gets the request as it is.
                Err(e) if reused && e.unsent && (e.body_intact || body.rewind()) => continue,
                Err(e) if e.error.is_timeout() => return Err(self.no_head()),
                Err(e) => return Err(send_error(e, reused)),
            }
        }
    }

    /// Waiting for a connection, bounded by REQUEST_TIMEOUT as the response head is.
    async fn bounded<T>(
        &self,
        getting: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.request_timeout, getting).await {
            Ok(got) => got,
            Err(_) => Err(self.no_head()),
        }
    }

    fn no_head(&self) -> UpstreamError {
        UpstreamError::new(
            ErrorKind::Timeout,
            format!(
                "no response headers within {}",
                humantime::format_duration(self.request_timeout)
            ),
        )
    }

    /// A new connection, or one that another request gives back first (`true`): see
    /// [`crate::pool`]. A connect that times out while connections to the endpoint come back
    /// is its full accept queue: the endpoint is busy with others, not gone. With no other
    /// endpoint to go to ([`Queueing::alone`]), the request keeps its place in the queue for as long as a
    /// connection comes back every CONNECT_TIMEOUT (REQUEST_TIMEOUT bounds it all); once none
    /// did, or with another endpoint to retry on, the connect's timeout is the answer, as
    /// without the queue.
    async fn connect_or_wait(
        &self,
        endpoint: &Arc<Endpoint>,
        queueing: &Queueing<'_>,
    ) -> Result<(Connection, bool), UpstreamError> {
        let started = Instant::now();
        let mut waiter = endpoint
            .pool
            .wait(started + self.connect_timeout, queueing.client_since);
        // A backlog that is not draining, with nowhere else to go: a new connection would at
        // best join the app's own backlog, accepted by the kernel and left unread while the app
        // serves the connections it holds. Wait for one of those instead.
        if endpoint.pool.backlogged(started) && (queueing.alone)() {
            let since = started.checked_sub(self.connect_timeout).unwrap_or(started);
            if let Some(conn) = self.wait_while_answered(endpoint, &mut waiter, since).await {
                return Ok((conn, true));
            }
            // Nothing came back for a whole CONNECT_TIMEOUT: try a connection after all.
        }
        let (timeout, resolver, ep) = (
            self.connect_timeout,
            self.resolver.clone(),
            endpoint.clone(),
        );
        let mut connecting = Box::pin(async move { connect(timeout, &resolver, &ep).await });
        let timed_out = tokio::select! {
            Some(conn) = &mut waiter => {
                // The connect goes on (within CONNECT_TIMEOUT), for the next request.
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = connecting.await {
                        endpoint.pool.checkin_new(conn);
                    }
                });
                return Ok((conn, true));
            }
            connected = &mut connecting => match connected {
                Ok(conn) => return Ok((conn, false)),
                Err(e) if e.detail == Detail::ConnectTimedOut => e,
                Err(e) => return Err(e),
            },
        };
        if !(queueing.alone)() {
            return Err(timed_out);
        }
        match self
            .wait_while_answered(endpoint, &mut waiter, started)
            .await
        {
            Some(conn) => Ok((conn, true)),
            None => Err(timed_out),
        }
    }

    /// The connection `waiter` gets, if one comes back while connections to the endpoint keep
    /// coming back (one since `since`, then one every CONNECT_TIMEOUT).
    async fn wait_while_answered(
        &self,
        endpoint: &Endpoint,
        waiter: &mut Waiter<'_>,
        mut since: Instant,
    ) -> Option<Connection> {
        while endpoint.pool.checked_in_since(since) {
            since = Instant::now();
            match tokio::time::timeout(self.connect_timeout, &mut *waiter).await {
                Ok(conn) => return conn,
                Err(_) => continue,
            }
        }
        None
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Connection, UpstreamError> {
        connect(self.connect_timeout, &self.resolver, endpoint).await
    }
}

async fn connect(
    connect_timeout: Duration,
    resolver: &Resolver,
    endpoint: &Endpoint,
) -> Result<Connection, UpstreamError> {
    // An `ip:port` endpoint is connected to as it is; a name is resolved first.
    let addrs = match endpoint.authority.as_str().parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => resolve(resolver, endpoint).await?,
    };
    let mut failure = String::new();
    let mut timed_out = false;
    for addr in addrs {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                failure = format!("tcp connect error: {e}");
                timed_out = false;
                continue;
            }
            Err(_) => {
                failure = format!(
                    "connect timeout ({})",
                    humantime::format_duration(connect_timeout)
                );
                timed_out = true;
                continue;
            }
        };
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        return Ok(Connection::new(stream));
    }
    let mut e = UpstreamError::new(ErrorKind::Connect, failure);
    if timed_out {
        e.detail = Detail::ConnectTimedOut;
    }
    Err(e)
}

/// The addresses of an endpoint that is a name (discovery off), asked anew for every
/// connection: the VIP behaviour an operator chose.
async fn resolve(
    resolver: &Resolver,
    endpoint: &Endpoint,
) -> Result<Vec<SocketAddr>, UpstreamError> {
    let port = endpoint.authority.port_u16().unwrap_or(80);
    let (ips, _) = discover(resolver, endpoint.authority.host(), Discovery::Off)
        .await
        .map_err(|cause| UpstreamError::new(ErrorKind::Dns, cause))?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// What a failed exchange means to the proxy.
fn send_error(e: SendError, reused: bool) -> UpstreamError {
    let cause = cause_chain(&e.error);
    // A new connection that closed before the request went out: nothing reached the
    // upstream, as with a refused connect.
    if e.unsent && !reused && !matches!(e.error, codec::Error::RequestBody(_)) {
        return UpstreamError::new(
            ErrorKind::Connect,
            format!("the connection closed before the request was sent: {cause}"),
        );
    }
    let mut err = UpstreamError::new(ErrorKind::Reset, cause);
    err.detail = if e.error.is_invalid() {
        Detail::InvalidResponse
    } else if reused && e.no_response {
        Detail::StaleConnection
    } else {
        Detail::None
    };
    err
}

/// An upstream response body. Read to its end, it gives its connection back to the endpoint's
/// pool; dropped before that, the connection closes (the rest of the body is unread).
///
/// An upstream that stops sending in the middle of a body would otherwise hold the client and
/// the connection for ever (nginx's `proxy_read_timeout`): when a read has waited for the
/// upstream for `stall` (REQUEST_TIMEOUT) without a byte, the body fails with a timeout. Only
/// time spent waiting for the upstream counts, not time the reader took (a slow client).
pub struct UpstreamBody {
    inner: codec::ResponseBody,
    endpoint: Arc<Endpoint>,
    stall: Duration,
    /// Made at the first read that has to wait, then reset for each wait: most bodies never
    /// wait (they came with their head).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current wait.
    waiting: bool,
    stalled: bool,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = codec::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, codec::Error>>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => this.checkin(),
            Poll::Ready(Some(_)) => {}
            Poll::Pending => return this.poll_stall(cx),
        }
        this.waiting = false;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// Pending, unless this wait has lasted `stall`.
    fn poll_stall(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, codec::Error>>> {
        let stall = self.stall;
        let timer = match &mut self.timer {
            Some(timer) => {
                if !self.waiting {
                    timer.as_mut().reset(tokio::time::Instant::now() + stall);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(stall))),
        };
        self.waiting = true;
        if Future::poll(timer.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = true;
        let waited = humantime::format_duration(self.stall);
        warn!(endpoint = %self.endpoint.authority, %waited, "upstream response body stalled, cut off");
        let why = format!("no byte for {waited}");
        Poll::Ready(Some(Err(codec::Error::Io(
            "waiting for the response body",
            std::io::Error::new(std::io::ErrorKind::TimedOut, why),
        ))))
    }

    fn checkin(&mut self) {
        if let Some(conn) = self.inner.take_reusable() {
            self.endpoint.pool.checkin(conn);
        }
    }

    /// The upstream's socket after its `101 Switching Protocols`.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        self.inner.take_upgraded()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body whose length is known ends without a last empty poll.
        if self.inner.is_end_stream() {
            self.checkin();
        }
    }
}

/// `error: cause: cause`, without the repeats hyper's layers add.
pub fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut chain: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !chain.iter().any(|c| c.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    chain.join(": ")
}
