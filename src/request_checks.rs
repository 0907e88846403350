//! What a request must satisfy before it is routed anywhere: the `Host` rules of RFC 9112
//! §3.2. A request that fails them is the client's fault: it gets 400, is counted against no
//! color, and never reaches an upstream (which might read the host differently from us).
//!
//! Framing is hyper's: it answers 400 to a malformed `Content-Length` or a `Transfer-Encoding`
//! whose last coding is not `chunked`, and a request with both `Content-Length` and
//! `Transfer-Encoding` is read (and forwarded) as chunked, with its connection closed after the
//! response (RFC 9112 §6.1), hyper saying `Connection: close`.

use std::fmt;

use hyper::Version;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// More than one `Host` line: an upstream might pick another one than we did.
    DuplicateHost,
    /// A `Host` that is not `host[:port]`.
    InvalidHost,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::MissingHost => "an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)",
            Rejection::DuplicateHost => "a request may have only one Host header (RFC 9112 §3.2)",
            Rejection::InvalidHost => "the Host header is not a valid host[:port] (RFC 9112 §3.2)",
        })
    }
}

/// Checks the request head. HTTP/2 names the host in `:authority`, and HTTP/1.0 predates
/// `Host`: both may come without one.
pub fn check(req: &Parts) -> Result<(), Rejection> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version == Version::HTTP_11 => Err(Rejection::MissingHost),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(Rejection::DuplicateHost),
        (Some(host), None) if valid_host(host) => Ok(()),
        (Some(_), None) => Err(Rejection::InvalidHost),
    }
}

/// `uri-host [":" port]` as RFC 3986 §3.2.2 and §3.2.3 write them, or empty (a target
/// without authority, RFC 9112 §3.2); no userinfo. Checked byte by byte: it runs on every
/// request, and parsing an `Authority` would copy the value first.
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let (host_ok, port) = match bytes.first() {
        None => return true,
        // IP-literal: an IPv6 address (IPv4 in its last part allowed).
        Some(b'[') => match bytes.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &bytes[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                (ok, &bytes[end + 1..])
            }
            None => return false,
        },
        Some(_) => {
            let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
            (end > 0 && reg_name(&bytes[..end]), &bytes[end..])
        }
    };
    host_ok
        && match port {
            [] => true,
            [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// `*( unreserved / pct-encoded / sub-delims )`: an IPv4 address or a DNS name among them.
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if !REG_NAME[b as usize] {
            let escaped = b == b'%'
                && name.len() > i + 2
                && name[i + 1].is_ascii_hexdigit()
                && name[i + 2].is_ascii_hexdigit();
            if !escaped {
                return false;
            }
            i += 2;
        }
        i += 1;
    }
    true
}

/// The unreserved and sub-delims bytes of RFC 3986, by value: one load per byte of a host
/// that every request carries, instead of a chain of ranges.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether the connection of a rejected request should be closed after the 400: HTTP/1 only
/// (HTTP/2 has no `Connection` header, and its other streams are not at fault).
pub fn closes_connection(version: Version) -> bool {
    version < Version::HTTP_2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, hosts: &[&'static str]) -> Parts {
        let (mut r, ()) = hyper::Request::new(()).into_parts();
        r.version = version;
        for h in hosts {
            r.headers.append(header::HOST, HeaderValue::from_static(h));
        }
        r
    }

    #[test]
    fn host_rules() {
        use Version as V;
        assert_eq!(check(&req(V::HTTP_11, &["shop.example"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["shop.example:8080"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["[::1]:8080"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &[""])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["10.0.0.7:80"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["[::ffff:10.0.0.7]"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["my_app-v2.local:"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &["caf%C3%A9.example"])), Ok(()));
        assert_eq!(check(&req(V::HTTP_11, &[])), Err(Rejection::MissingHost));
        assert_eq!(check(&req(V::HTTP_10, &[])), Ok(()));
        assert_eq!(check(&req(V::HTTP_2, &[])), Ok(()));
        for v in [V::HTTP_10, V::HTTP_11, V::HTTP_2] {
            assert_eq!(
                check(&req(v, &["a.example", "b.example"])),
                Err(Rejection::DuplicateHost)
            );
            assert_eq!(
                check(&req(v, &["a.example", "a.example"])),
                Err(Rejection::DuplicateHost)
            );
        }
        for bad in [
            "a b",
            "user@shop.example",
            "shop.example/x",
            "a:b:c",
            "x:port",
            "[::1]x",
            "x:123456",
            ":80",
            "[]:80",
            "[::1",
            "a%2",
            "a%zz",
            "shop\"x",
            "a\\b",
        ] {
            assert_eq!(
                check(&req(V::HTTP_11, &[bad])),
                Err(Rejection::InvalidHost),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_http1_connections_close_after_a_rejection() {
        assert!(closes_connection(Version::HTTP_10));
        assert!(closes_connection(Version::HTTP_11));
        assert!(!closes_connection(Version::HTTP_2));
    }
}
