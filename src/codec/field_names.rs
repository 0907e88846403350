//! Response field names as the codec reads them: the name, and what the field is to the codec
//! (framing, keep-alive, hop-by-hop, or passed on).
//!
//! `HeaderName::from_bytes` lowercases every name into a scratch buffer and looks it up: about
//! 120 instructions a name under callgrind, some 600 per response from nginx. The names
//! upstreams send most, spelled as nginx, Go's `net/http` and most frameworks spell them or in
//! lowercase, are matched here by length and bytes instead; any other spelling takes
//! `from_bytes`, with the same result.

use hyper::header::{self, HeaderName, InvalidHeaderName};

/// What a response field is to the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Passed on to the client as it came.
    Plain,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another field that concerns one connection only (RFC 9110 §7.6.1).
    HopByHop,
}

impl Role {
    /// The field concerns one connection only (RFC 9110 §7.6.1): a proxy never passes it on.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Role::TransferEncoding | Role::Connection | Role::HopByHop
        )
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The name of a response field and its role; an error for bytes that are no field name.
pub fn response_field(raw: &[u8]) -> Result<(HeaderName, Role), InvalidHeaderName> {
    if let Some(known) = common(raw) {
        return Ok(known);
    }
    let name = HeaderName::from_bytes(raw)?;
    let role = role_of(&name);
    Ok((name, role))
}

/// The role of any field name. Standard names compare as small integers; the two others by
/// their bytes.
pub fn role_of(name: &HeaderName) -> Role {
    if name == header::CONTENT_LENGTH {
        Role::ContentLength
    } else if name == header::TRANSFER_ENCODING {
        Role::TransferEncoding
    } else if name == header::CONNECTION {
        Role::Connection
    } else if name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
    {
        Role::HopByHop
    } else {
        Role::Plain
    }
}

/// The common names, by length first so that a name not among them costs one jump and a few
/// compares.
fn common(raw: &[u8]) -> Option<(HeaderName, Role)> {
    use Role::*;
    use header::*;
    Some(match raw.len() {
        3 => match raw {
            b"Age" | b"age" => (AGE, Plain),
            _ => return None,
        },
        4 => match raw {
            b"Date" | b"date" => (DATE, Plain),
            b"ETag" | b"Etag" | b"etag" => (ETAG, Plain),
            b"Vary" | b"vary" => (VARY, Plain),
            _ => return None,
        },
        6 => match raw {
            b"Server" | b"server" => (SERVER, Plain),
            _ => return None,
        },
        7 => match raw {
            b"Expires" | b"expires" => (EXPIRES, Plain),
            b"Upgrade" | b"upgrade" => (UPGRADE, HopByHop),
            _ => return None,
        },
        8 => match raw {
            b"Location" | b"location" => (LOCATION, Plain),
            _ => return None,
        },
        10 => match raw {
            b"Connection" | b"connection" => (CONNECTION, Connection),
            b"Set-Cookie" | b"set-cookie" => (SET_COOKIE, Plain),
            b"Keep-Alive" | b"keep-alive" => (KEEP_ALIVE, HopByHop),
            _ => return None,
        },
        12 => match raw {
            b"Content-Type" | b"content-type" => (CONTENT_TYPE, Plain),
            _ => return None,
        },
        13 => match raw {
            b"Cache-Control" | b"cache-control" => (CACHE_CONTROL, Plain),
            b"Last-Modified" | b"last-modified" => (LAST_MODIFIED, Plain),
            b"Accept-Ranges" | b"accept-ranges" => (ACCEPT_RANGES, Plain),
            _ => return None,
        },
        14 => match raw {
            b"Content-Length" | b"content-length" => (CONTENT_LENGTH, ContentLength),
            _ => return None,
        },
        15 => match raw {
            b"X-Frame-Options" | b"x-frame-options" => (X_FRAME_OPTIONS, Plain),
            _ => return None,
        },
        16 => match raw {
            b"Content-Encoding" | b"content-encoding" => (CONTENT_ENCODING, Plain),
            b"Proxy-Connection" | b"proxy-connection" => (PROXY_CONNECTION, HopByHop),
            _ => return None,
        },
        17 => match raw {
            b"Transfer-Encoding" | b"transfer-encoding" => (TRANSFER_ENCODING, TransferEncoding),
            _ => return None,
        },
        22 => match raw {
            b"X-Content-Type-Options" | b"x-content-type-options" => {
                (X_CONTENT_TYPE_OPTIONS, Plain)
            }
            _ => return None,
        },
        25 => match raw {
            b"Strict-Transport-Security" | b"strict-transport-security" => {
                (STRICT_TRANSPORT_SECURITY, Plain)
            }
            _ => return None,
        },
        27 => match raw {
            b"Access-Control-Allow-Origin" | b"access-control-allow-origin" => {
                (ACCESS_CONTROL_ALLOW_ORIGIN, Plain)
            }
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the table knows, and others of the same names, give what the general
    /// path gives.
    #[test]
    fn the_table_agrees_with_the_general_path() {
        let names = [
            "Age",
            "Date",
            "ETag",
            "Etag",
            "Vary",
            "Server",
            "Expires",
            "Upgrade",
            "Location",
            "Connection",
            "Set-Cookie",
            "Keep-Alive",
            "Content-Type",
            "Cache-Control",
            "Last-Modified",
            "Accept-Ranges",
            "Content-Length",
            "X-Frame-Options",
            "Content-Encoding",
            "Proxy-Connection",
            "Transfer-Encoding",
            "X-Content-Type-Options",
            "Strict-Transport-Security",
            "Access-Control-Allow-Origin",
        ];
        let mut known = 0;
        for name in names {
            for spelling in [
                name.to_string(),
                name.to_ascii_lowercase(),
                name.to_ascii_uppercase(),
                format!("{name}x"),
                name[1..].to_string(),
            ] {
                let raw = spelling.as_bytes();
                known += usize::from(common(raw).is_some());
                let general = HeaderName::from_bytes(raw).unwrap();
                let (name, role) = response_field(raw).unwrap();
                assert_eq!(name, general, "{spelling}");
                assert_eq!(role, role_of(&general), "{spelling}");
            }
        }
        // The given spelling and the lowercase one of each name come from the table.
        assert_eq!(known, 2 * names.len());
    }

    #[test]
    fn roles() {
        let role = |raw: &str| response_field(raw.as_bytes()).unwrap().1;
        assert_eq!(role("content-length"), Role::ContentLength);
        assert_eq!(role("Transfer-Encoding"), Role::TransferEncoding);
        assert_eq!(role("CONNECTION"), Role::Connection);
        for hop in [
            "te",
            "Trailer",
            "upgrade",
            "Proxy-Authenticate",
            "proxy-authorization",
        ] {
            assert_eq!(role(hop), Role::HopByHop, "{hop}");
        }
        assert_eq!(role("KEEP-ALIVE"), Role::HopByHop);
        assert_eq!(role("x-request-id"), Role::Plain);
    }

    #[test]
    fn bad_names_are_errors() {
        for bad in ["", "a b", "x:", "caf\u{e9}", "a\r"] {
            assert!(response_field(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
