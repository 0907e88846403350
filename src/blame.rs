//! Whose fault a failed exchange is. What the client did wrong (a malformed or truncated body,
//! a body slower than allowed, leaving early) is answered as the client's, with a 4xx, and is
//! never counted against an upstream or a color: one bad client must not eject the backends.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use hyper::StatusCode;

/// What the client did that ended its exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFault {
    /// The body broke the framing (a bad chunk size, bytes after the end): 400.
    Malformed(String),
    /// The client closed or reset its connection before its body ended (nginx's 499).
    Gone,
    /// The body did not arrive in time: 408.
    TooSlow { waited: Duration, received: u64 },
}

/// nginx's status for a client that closed its connection before the response.
pub const CLIENT_CLOSED: u16 = 499;

impl ClientFault {
    /// Sorts an error hyper reported while reading the client's body.
    pub fn from_body_error(err: &hyper::Error) -> ClientFault {
        if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
            return ClientFault::Gone;
        }
        let mut source = err.source();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => ClientFault::Gone,
                    _ => ClientFault::Malformed(io.to_string()),
                };
            }
            source = e.source();
        }
        ClientFault::Malformed(err.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ClientFault::Malformed(_) => StatusCode::BAD_REQUEST,
            ClientFault::Gone => {
                StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status code")
            }
            ClientFault::TooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The metric label and log field.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFault::Malformed(_) => "malformed_body",
            ClientFault::Gone => "client_gone",
            ClientFault::TooSlow { .. } => "body_timeout",
        }
    }
}

impl fmt::Display for ClientFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFault::Malformed(why) => write!(f, "the request body is malformed: {why}"),
            ClientFault::Gone => write!(f, "the client closed the connection mid-request"),
            ClientFault::TooSlow { waited, received } => write!(
                f,
                "the request body did not arrive within {} ({received} bytes received)",
                humantime::format_duration(*waited)
            ),
        }
    }
}
