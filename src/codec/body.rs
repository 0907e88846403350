//! Response body framing (RFC 9112 §6.3, §7.1), without I/O: bytes in, frames out.
//!
//! The decoder takes what the connection has read and hands out data frames that share the
//! read buffer's memory (no copy), the trailer section of a chunked body, and its end. It is
//! strict: a malformed chunk line, an oversized one, or a body cut short is an error, and the
//! connection it came from is never reused.

use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::Error;

/// The longest chunk-size line taken, extensions included (hyper and nginx allow a few KiB).
const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section taken: like a head.
pub const MAX_TRAILERS: usize = 64 * 1024;
/// Fields in a head or a trailer section.
pub const MAX_FIELDS: usize = 100;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HEAD, 1xx, 204, 304 or `Content-Length: 0`: nothing follows the head.
    Empty,
    Length(u64),
    Chunked,
    /// No framing: the body ends when the upstream closes the connection.
    Close,
}

/// What the buffer gave.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkDataEnd,
    Trailers,
    Close,
    Done,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes still to come, when that is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Whether the end of the body is the end of the connection.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// Takes the next frame out of `buf`. Data frames are split off the buffer; the bytes of
    /// chunk framing are consumed. Bytes past the end of the body stay in `buf`.
    pub fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let rest = n - take as u64;
                    self.state = if rest == 0 {
                        State::Done
                    } else {
                        State::Length(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => match chunk_size_line(buf)? {
                    None => return Ok(Decoded::NeedMore),
                    Some((line, 0)) => {
                        let _ = buf.split_to(line);
                        self.state = State::Trailers;
                    }
                    Some((line, size)) => {
                        let _ = buf.split_to(line);
                        self.state = State::ChunkData(size);
                    }
                },
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let rest = n - take as u64;
                    self.state = if rest == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(Error::invalid("a chunk's data is not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::invalid("a chunk's data is not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // The common case: no trailer section, just the empty line.
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let trailers = trailer_map(fields)?;
                            let _ = buf.split_to(len);
                            self.state = State::Done;
                            if trailers.is_empty() {
                                return Ok(Decoded::End);
                            }
                            return Ok(Decoded::Trailers(trailers));
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > MAX_TRAILERS {
                                return Err(Error::invalid("the trailer section is over 64 KiB"));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                        Err(e) => {
                            return Err(Error::invalid(format!("bad trailer section: {e}")));
                        }
                    }
                }
            }
        }
    }

    /// The connection closed: the end of a close-delimited body, and an error for any other
    /// body not complete yet.
    pub fn eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(n) => Err(Error::closed(format!(
                "the upstream closed the connection {n} bytes before the end of the body"
            ))),
            _ => Err(Error::closed(
                "the upstream closed the connection before the end of the chunked body",
            )),
        }
    }
}

/// A complete chunk-size line at the start of `buf`: its length with the CRLF, and the size.
/// `chunk-size [BWS] [; chunk-ext] CRLF`, the size in at most 16 hex digits.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err(Error::invalid("a chunk size is too large"));
        }
        size = (size << 4) | u64::from(d);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(Error::invalid("a chunk size is not hexadecimal"));
    }
    // Bad whitespace before an extension or the line's end (as hyper takes it).
    while i < buf.len() && matches!(buf[i], b' ' | b'\t') {
        i += 1;
    }
    if i == buf.len() {
        return too_long(buf, None);
    }
    match buf[i] {
        b';' => {
            // Extensions are ignored, but only printable bytes and tabs are taken.
            while i < buf.len() && buf[i] != b'\r' {
                let b = buf[i];
                if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                    return Err(Error::invalid("a chunk extension has a control byte"));
                }
                i += 1;
            }
        }
        b'\r' => {}
        _ => return Err(Error::invalid("a chunk size line is malformed")),
    }
    if i + 1 >= buf.len() {
        return too_long(buf, None);
    }
    if buf[i + 1] != b'\n' {
        return Err(Error::invalid("a chunk size line does not end in CRLF"));
    }
    Ok(Some((i + 2, size)))
}

fn too_long(buf: &[u8], r: Option<(usize, u64)>) -> Result<Option<(usize, u64)>, Error> {
    if r.is_none() && buf.len() > MAX_CHUNK_LINE {
        return Err(Error::invalid("a chunk size line is too long"));
    }
    Ok(r)
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Error::invalid(format!("bad trailer name {:?}", f.name)))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| Error::invalid(format!("bad value for trailer {:?}", f.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Everything the decoder makes of `input` fed at once: the body and whether it ended.
    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, bool, BytesMut), Error> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(_) => {}
                Decoded::End => return Ok((body, true, buf)),
                Decoded::NeedMore => return Ok((body, false, buf)),
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let (b, end, rest) = decode_all(
            Framing::Chunked,
            b"3\r\nabc\r\nA;x=y\r\n0123456789\r\n0\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(
            (b.as_slice(), end, &rest[..]),
            (&b"abc0123456789"[..], true, &b"NEXT"[..])
        );
        let (b, end, _) = decode_all(Framing::Chunked, b"3\r\nab").unwrap();
        assert_eq!((b.as_slice(), end), (&b"ab"[..], false));
        for bad in [
            &b"x\r\n"[..],
            b"3\nabc\r\n",
            b"3\r\nabcX\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b"\r\n",
            b"3;a\nb\r\n",
        ] {
            assert!(decode_all(Framing::Chunked, bad).is_err(), "{bad:?}");
        }
        let long = [b'1'; 10]
            .iter()
            .chain([b';'; 5000].iter())
            .copied()
            .collect::<Vec<_>>();
        assert!(decode_all(Framing::Chunked, &long).is_err());
    }

    #[test]
    fn trailers_come_as_a_frame() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\nx-sum: 7\r\n\r\n"[..]);
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Data(_)));
        match d.decode(&mut buf).unwrap() {
            Decoded::Trailers(t) => assert_eq!(t["x-sum"], "7"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::End));
        assert!(buf.is_empty());
    }

    #[test]
    fn lengths_and_eof() {
        let (b, end, rest) = decode_all(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!(
            (b.as_slice(), end, &rest[..]),
            (&b"abc"[..], true, &b"def"[..])
        );
        let mut d = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Data(_)));
        assert!(d.eof().is_err());
        let mut d = Decoder::new(Framing::Close);
        assert!(d.eof().is_ok() && d.is_done());
    }
}
