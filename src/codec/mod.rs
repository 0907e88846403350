//! colorproxy's own HTTP/1.1 client codec: one upstream connection, driven by the task of the
//! request that uses it.
//!
//! hyper's client runs each connection as a task of its own behind a channel, which costs two
//! cross-task wake-ups and a queue per request. Here the request's task writes the head (and
//! the body) and reads the response itself; the response body reads its connection as it is
//! polled, and when it has ended cleanly the connection is handed back for reuse. What it
//! owns:
//! - [`head`]: the request head written into one reusable buffer, and the response head
//!   parsed with `httparse`, judged strictly for framing and keep-alive;
//! - [`field_names`]: response field names and what each is to the codec, the common ones
//!   by a table;
//! - [`body`]: response body framing (length, chunked with trailers, close-delimited), sans
//!   I/O;
//! - [`conn`]: the connection itself: one exchange at a time, the liveness check of an idle
//!   one, and the socket handed over after a `101 Switching Protocols`.
//!
//! It knows nothing of endpoints or pools: what to do with a reusable connection is the
//! caller's.

pub mod body;
pub mod conn;
pub mod field_names;
pub mod head;

use std::borrow::Cow;
use std::fmt;
use std::io;

pub use conn::{Connection, ResponseBody, SendError, Upgraded};

/// Why an exchange on a connection failed. The connection is not reused after any of these.
#[derive(Debug)]
pub enum Error {
    /// The upstream's bytes are not valid HTTP/1.1 (framing, head, chunk line).
    Invalid(Cow<'static, str>),
    /// The connection closed before the message was complete.
    Closed(Cow<'static, str>),
    /// Reading or writing the socket failed.
    Io(&'static str, io::Error),
    /// The request body failed on the client's side (the exchange has the client's fault).
    RequestBody(String),
}

impl Error {
    pub fn invalid(why: impl Into<Cow<'static, str>>) -> Error {
        Error::Invalid(why.into())
    }

    pub fn closed(why: impl Into<Cow<'static, str>>) -> Error {
        Error::Closed(why.into())
    }

    /// Waiting on the socket took too long (a caller's deadline, see
    /// [`crate::upstream::UpstreamBody`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Io(_, e) if e.kind() == io::ErrorKind::TimedOut)
    }

    /// The upstream sent something that is not HTTP/1.1 as it must be.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid response: {why}"),
            Error::Closed(why) => f.write_str(why),
            Error::Io(during, e) => write!(f, "{during}: {e}"),
            Error::RequestBody(why) => write!(f, "the request body failed: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}
