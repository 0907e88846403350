//! Message heads: the request head as it goes on the wire, and the response head as it comes
//! back, parsed with `httparse` and judged for framing and keep-alive (RFC 9112 §6, §9.3).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Version};

use super::Error;
use super::body::{Framing, MAX_FIELDS};
use super::field_names::{Role, response_field, role_of};

/// The largest response head taken from an upstream, as for a request head.
pub const MAX_HEAD: usize = 64 * 1024;

/// The fields of a request head, as the caller has them: a map, or fields computed on the way
/// (the proxy's own, chained to the client's) without building one.
pub trait Fields {
    fn each(&self, f: impl FnMut(&HeaderName, &HeaderValue));
}

impl Fields for HeaderMap {
    fn each(&self, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        for (name, value) in self {
            f(name, value);
        }
    }
}

/// How the request body goes after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// Writes `METHOD target HTTP/1.1`, the fields, and the framing field the body needs, into
/// `out` (cleared first: one buffer serves every request of a connection).
///
/// A `Content-Length` already among the fields is the client's, checked by the server side:
/// it stays and frames the body. Otherwise a body of known length gets one, and a body of
/// unknown length goes chunked. A request without a body gets neither.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    fields: &impl Fields,
    body_len: Option<Option<u64>>,
) -> RequestFraming {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared = None;
    fields.each(|name, value| {
        if name == header::TRANSFER_ENCODING {
            // Hop-by-hop: the proxy frames its own body.
            return;
        }
        if name == header::CONTENT_LENGTH && body_len.is_some() {
            // The first valid one frames the body; others, and an invalid one, go.
            if declared.is_some() {
                return;
            }
            declared = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_none() {
                return;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
    let framing = match (body_len, declared) {
        (None, _) => RequestFraming::None,
        (Some(_), Some(n)) => RequestFraming::Length(n),
        (Some(Some(n)), None) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            RequestFraming::Length(n)
        }
        (Some(None), None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            RequestFraming::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// A response head as read.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`, splitting it off when complete. `None`:
/// more bytes are needed. Interim (1xx other than 101) heads are for the caller to skip.
///
/// Field values share the head's memory: one allocation for the whole head instead of one
/// per field. Hop-by-hop fields, and those `Connection` names, are read for framing and
/// keep-alive and not kept: they were for this connection only. A 101 keeps them.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Error> {
    // Positions instead of slices, so that the head can be split off and shared afterwards.
    // A head is at most 64 KiB: offsets fit in 16 bits.
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_FIELDS];
    let (len, code, minor, count) = {
        // Left uninitialised: httparse writes only the fields it finds.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(Error::invalid("the response head is over 64 KiB"));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::invalid(format!(
                    "the response head has over {MAX_FIELDS} fields"
                )));
            }
            Err(e) => return Err(Error::invalid(format!("bad response head: {e}"))),
        };
        if len >= MAX_HEAD {
            return Err(Error::invalid("the response head is over 64 KiB"));
        }
        let base = buf.as_ptr() as usize;
        let count = resp.headers.len();
        for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = f.name.as_ptr() as usize - base;
            let value = f.value.as_ptr() as usize - base;
            // All below `len`, so below 64 KiB.
            *span = (
                name as u16,
                f.name.len() as u16,
                value as u16,
                f.value.len() as u16,
            );
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            count,
        )
    };
    let head: Bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::invalid(format!("bad response status {code}")))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // A 101 keeps `Connection` and `Upgrade`: the client must see what it switches to.
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = HeaderMap::with_capacity(count);
    let mut frame = Frame::default();
    for &(n, nl, v, vl) in &spans[..count] {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let name = &head[n..n + nl];
        let (name, role) = response_field(name).map_err(|_| {
            Error::invalid(format!(
                "bad response field name {:?}",
                String::from_utf8_lossy(name)
            ))
        })?;
        let raw = &head[v..v + vl];
        match role {
            Role::ContentLength => frame.content_length(raw)?,
            Role::TransferEncoding => frame.transfer_encoding(raw),
            Role::Connection => frame.connection(raw),
            Role::Plain | Role::HopByHop => {}
        }
        if !upgrade && role.is_hop_by_hop() {
            continue;
        }
        // SAFETY: httparse let through only what a field value may hold (HTAB, SP, VCHAR and
        // obs-text, RFC 9110 §5.5), the bytes `HeaderValue` checks for, so checking each byte
        // again is waste; hyper does the same with the request heads it parses. Debug builds
        // (the tests, the fuzzing) check anyway, and panic on a disagreement.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(v..v + vl)) };
        headers.append(name, value);
    }
    if frame.names_others && !upgrade {
        // Rare: `Connection` names fields of its own (RFC 9110 §7.6.1), wherever they came.
        for &(_, _, v, vl) in &spans[..count] {
            let (v, vl) = (v as usize, vl as usize);
            for token in connection_tokens(&head[v..v + vl]) {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    headers.remove(name);
                }
            }
        }
    }
    let framing = frame.framing(method, status)?;
    let keep_alive = frame.keep_alive(version) && framing != Framing::Close;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Fields that concern one connection only (RFC 9110 §7.6.1), never passed on by a proxy.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    role_of(name).is_hop_by_hop()
}

/// The tokens of a `Connection` value, trimmed, empty ones skipped.
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the framing fields of a response head say, gathered as its fields go by.
#[derive(Default)]
struct Frame {
    /// The one length all `Content-Length` fields (and list members) agree on.
    length: Option<u64>,
    transfer_encoding: bool,
    /// The last coding of the last `Transfer-Encoding` is `chunked`.
    chunked: bool,
    close: bool,
    keep: bool,
    /// `Connection` lists something besides `close` and `keep-alive`.
    names_others: bool,
}

impl Frame {
    fn content_length(&mut self, value: &[u8]) -> Result<(), Error> {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(Error::invalid(format!(
                    "the response has an invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                )));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::invalid("the response's Content-Length is too large"))?;
            match self.length {
                Some(m) if m != n => {
                    return Err(Error::invalid(
                        "the response has conflicting Content-Length values",
                    ));
                }
                _ => self.length = Some(n),
            }
        }
        Ok(())
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encoding = true;
        // Chunked must come last; any other final coding is read until the close.
        if let Some(last) = value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty())
        {
            self.chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    }

    fn connection(&mut self, value: &[u8]) {
        for token in connection_tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep = true;
            } else {
                self.names_others = true;
            }
        }
    }

    /// RFC 9112 §6.3, strictly: a response with both `Content-Length` and
    /// `Transfer-Encoding`, or an invalid or conflicting `Content-Length`, is refused rather
    /// than guessed at.
    fn framing(&self, method: &Method, status: StatusCode) -> Result<Framing, Error> {
        if self.transfer_encoding && self.length.is_some() {
            return Err(Error::invalid(
                "the response has both Content-Length and Transfer-Encoding",
            ));
        }
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if self.transfer_encoding {
            return Ok(if self.chunked {
                Framing::Chunked
            } else {
                Framing::Close
            });
        }
        Ok(match self.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        })
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told
    /// `keep-alive`.
    fn keep_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<ResponseHead>, Error> {
        parse_response(&mut BytesMut::from(raw.as_bytes()), &method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &str, m: Method| parse(raw, m).unwrap().unwrap().framing;
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET),
            Framing::Length(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD),
            Framing::Empty
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            Framing::Empty
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET
            ),
            Framing::Empty
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Method::GET
            ),
            Framing::Chunked
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Method::GET
            ),
            Framing::Close
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", Method::GET), Framing::Close);
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                Method::GET
            ),
            Framing::Length(5)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse(bad, Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let k = |raw: &str| parse(raw, Method::GET).unwrap().unwrap().keep_alive;
        assert!(k("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!k(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!k("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(k(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!k("HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nx-secret: 1\r\n\
                   keep-alive: timeout=5\r\nte: trailers\r\nTrailer: x-t\r\n\
                   transfer-encoding: chunked\r\nupgrade: websocket\r\n\
                   proxy-connection: keep-alive\r\nproxy-authenticate: Basic\r\n\
                   x-kept: 1\r\nconnection: x-later\r\nx-later: 2\r\n\r\n";
        let head = parse(raw, Method::GET).unwrap().unwrap();
        let names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        // Still read for framing and keep-alive.
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        // A 101 keeps them: the client must see what the connection switches to.
        let raw = "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n\
                   upgrade: websocket\r\n\r\n";
        let head = parse(raw, Method::GET).unwrap().unwrap();
        assert_eq!(head.headers.len(), 2);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        while raw.len() <= MAX_HEAD {
            raw.push_str("x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(parse(&raw, Method::GET).is_err());
    }

    /// What `parse_response` relies on to skip `HeaderValue`'s own check: every byte httparse
    /// lets into a value, short (byte by byte) or long (its SIMD path), is one `HeaderValue`
    /// takes too, and every other byte fails the head.
    #[test]
    fn field_values_hold_only_what_header_value_takes() {
        for b in 0..=255u8 {
            for len in [1, 3, 40, 70] {
                let mut value = vec![b'v'; len];
                value[len / 2] = b;
                let mut raw = b"HTTP/1.1 200 OK\r\nx-v: ".to_vec();
                raw.extend_from_slice(&value);
                raw.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                let checked = HeaderValue::from_bytes(&value).is_ok();
                match parse_response(&mut BytesMut::from(&raw[..]), &Method::GET) {
                    Ok(Some(head)) => {
                        let got = head
                            .headers
                            .get("x-v")
                            .expect("the field is kept")
                            .as_bytes();
                        assert!(HeaderValue::from_bytes(got).is_ok(), "byte {b:#04x}");
                        // A bare LF ends the line, and so the value, early.
                        if b != b'\n' {
                            assert!(checked, "byte {b:#04x} taken, refused by HeaderValue");
                            // Blanks at either end are not the value's (RFC 9110 §5.5).
                            assert_eq!(got, value.trim_ascii(), "byte {b:#04x}");
                        }
                    }
                    Ok(None) => panic!("byte {b:#04x}: the whole head was given"),
                    Err(_) => assert!(
                        !checked || matches!(b, b'\r' | b'\n'),
                        "byte {b:#04x} refused, taken by HeaderValue"
                    ),
                }
            }
        }
    }

    #[test]
    fn request_heads() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        let f = encode_request(&mut out, &Method::GET, "/x?y", &h, None);
        assert_eq!(
            (f, out.as_slice()),
            (
                RequestFraming::None,
                &b"GET /x?y HTTP/1.1\r\nhost: a\r\n\r\n"[..]
            )
        );
        let f = encode_request(&mut out, &Method::POST, "/", &h, Some(Some(12)));
        assert_eq!(f, RequestFraming::Length(12));
        assert!(out.ends_with(b"content-length: 12\r\n\r\n"));
        let f = encode_request(&mut out, &Method::POST, "/", &h, Some(None));
        assert_eq!(f, RequestFraming::Chunked);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        let f = encode_request(&mut out, &Method::POST, "/", &h, Some(None));
        assert_eq!(f, RequestFraming::Length(7));
        assert_eq!(
            out.windows(14).filter(|w| w == b"content-length").count(),
            1
        );
    }
}
