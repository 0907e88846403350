//! The one HTTP client shared by all requests, and what its failures mean to a client.
//!
//! Connections to upstreams are pooled and kept alive; failures are sorted into the few kinds
//! an operator acts on (nothing listening, no such name, too slow, connection dropped), each
//! with the status the client gets.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::discovery::{ConnectorResolve, Resolver};
use crate::exchange::{Exchange, RequestBody};

/// Idle upstream connections are closed well before IPVS forgets them (900 s) and before
/// typical app servers' own keep-alive timeouts reap them under our feet.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector<ConnectorResolve>, RequestBody>,
    request_timeout: Duration,
}

/// Why an upstream gave no response.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// The cause chain, e.g. `tcp connect error: Connection refused (os error 111)`.
    pub cause: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The name did not resolve.
    Dns,
    /// Nothing accepted the connection: refused, unreachable, or connect timeout.
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
        let mut connector =
            HttpConnector::new_with_resolver(ConnectorResolve(std::sync::Arc::new(resolver)));
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        UpstreamClient {
            client,
            request_timeout,
        }
    }

    /// Sends a request whose URI already names the upstream; resolves when the response head
    /// has arrived (the body streams afterwards).
    ///
    /// REQUEST_TIMEOUT counts from the end of the request body, not from its start: a
    /// multi-GB upload may take longer than any sensible wait for a response head. While the
    /// body is being sent, the same time without any progress ends the exchange too (an
    /// upstream that stopped reading, or a client that stopped sending).
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        exchange: &Exchange,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let body_pending = !req.body().is_end_stream();
        let response = self.client.request(req);
        tokio::pin!(response);
        if body_pending {
            let mut sent = exchange.bytes_in();
            loop {
                tokio::select! {
                    res = &mut response => return res.map_err(|e| classify(&e)),
                    () = exchange.body_sent() => break,
                    () = tokio::time::sleep(self.request_timeout) => {
                        if exchange.bytes_in() == sent {
                            return Err(UpstreamError {
                                kind: ErrorKind::Timeout,
                                cause: format!(
                                    "the request body made no progress for {} ({sent} bytes sent)",
                                    humantime::format_duration(self.request_timeout)
                                ),
                            });
                        }
                        sent = exchange.bytes_in();
                    }
                }
            }
        }
        match tokio::time::timeout(self.request_timeout, response).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(UpstreamError {
                kind: ErrorKind::Timeout,
                cause: format!(
                    "no response headers within {}",
                    humantime::format_duration(self.request_timeout)
                ),
            }),
        }
    }
}

fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut chain = Vec::new();
    let mut kind = if err.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Reset
    };
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if text == "dns error" {
            kind = ErrorKind::Dns;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
            && kind == ErrorKind::Connect
        {
            chain.push("connect timeout".to_string());
        } else if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    if chain.is_empty() {
        chain.push(err.to_string());
    }
    UpstreamError {
        kind,
        cause: chain.join(": "),
    }
}
