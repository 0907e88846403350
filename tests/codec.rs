//! The upstream codec against hyper's client, and against arbitrary bytes.
//!
//! - Differential: for each response shape of a corpus, served by a raw socket on 127.0.0.1,
//!   the codec and hyper's client agree on status, headers, body, trailers, and whether the
//!   connection serves a second request. Where the codec is deliberately stricter than hyper,
//!   the shape is listed apart and the codec must refuse it.
//! - Properties: the response parser and body framing, fed arbitrary bytes split anywhere,
//!   never panic and always end (a result or an error); well-formed responses split anywhere
//!   decode to exactly their body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use colorproxy::codec::body::{Decoded, Decoder};
use colorproxy::codec::head::{connection_tokens, is_hop_by_hop, parse_response};
use colorproxy::codec::{Connection, Error, ResponseBody, SendError};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);
/// The codec's own deadline for a response head, longer than any test waits.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A server that answers every request head on a connection with `answer`, and closes after
/// the first answer when `close` is set. Counts the requests it answered.
async fn serve(answer: &'static [u8], close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        if close {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, served)
}

/// What a client made of one response.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Result<Vec<u8>, ()>,
    trailers: Vec<(String, Vec<u8>)>,
    /// The same connection served a second request.
    reused: bool,
}

fn fields(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

async fn collect<B>(body: &mut B) -> (Result<Vec<u8>, ()>, Vec<(String, Vec<u8>)>)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("no hang")
        {
            None => return (Ok(data), trailers),
            Some(Err(_)) => return (Err(()), trailers),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = fields(&t);
                    }
                }
            },
        }
    }
}

/// hyper's client keeps every field; the codec keeps only what a proxy passes on (all of a
/// 101's).
fn end_to_end(status: u16, headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    if status == 101 {
        return kept;
    }
    for value in headers.get_all(hyper::header::CONNECTION) {
        for token in connection_tokens(value.as_bytes()) {
            if let Ok(name) = hyper::header::HeaderName::from_bytes(token) {
                kept.remove(name);
            }
        }
    }
    let hop: Vec<_> = kept.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in hop {
        kept.remove(name);
    }
    kept
}

fn request(method: &Method) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "upstream")
        .body(Empty::new())
        .unwrap()
}

async fn with_hyper(addr: std::net::SocketAddr, method: &Method) -> Seen {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, sender.send_request(request(method)))
        .await
        .expect("no hang")
        .expect("a response head");
    let status = resp.status().as_u16();
    let headers = fields(&end_to_end(status, resp.headers()));
    let mut body = resp.into_body();
    let (body, trailers) = collect(&mut body).await;
    let reused = match tokio::time::timeout(WAIT, sender.ready()).await {
        Ok(Ok(())) => tokio::time::timeout(WAIT, sender.send_request(request(method)))
            .await
            .expect("no hang")
            .is_ok(),
        _ => false,
    };
    Seen {
        status,
        headers,
        body,
        trailers,
        reused,
    }
}

async fn with_codec(addr: std::net::SocketAddr, method: &Method) -> Seen {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", "upstream".parse().unwrap());
    let conn = Connection::new(stream);
    let resp = tokio::time::timeout(
        WAIT,
        conn.send(
            method,
            "/",
            &headers,
            &mut Empty::<Bytes>::new(),
            true,
            HEAD_TIMEOUT,
        ),
    )
    .await
    .expect("no hang")
    .expect("a response head");
    let status = resp.status().as_u16();
    let fields_seen = fields(resp.headers());
    let mut body = resp.into_body();
    let (data, trailers) = collect(&mut body).await;
    let reused = match body.take_reusable() {
        Some(conn) => tokio::time::timeout(
            WAIT,
            conn.send(
                method,
                "/",
                &headers,
                &mut Empty::<Bytes>::new(),
                true,
                HEAD_TIMEOUT,
            ),
        )
        .await
        .expect("no hang")
        .is_ok(),
        None => false,
    };
    Seen {
        status,
        headers: fields_seen,
        body: data,
        trailers,
        reused,
    }
}

/// Response shapes both clients must read the same way: (name, method, bytes, server closes
/// after answering).
const CORPUS: &[(&str, &str, &[u8], bool)] = &[
    ("length", "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
    ("length 0", "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
    ("repeated equal lengths", "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", false),
    (
        "chunked with extensions",
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6 ; c\r\n world\r\n0\r\n\r\n",
        false,
    ),
    (
        "chunked with trailers",
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n",
        false,
    ),
    (
        "many small chunks",
        "GET",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n2\r\ncd\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        false,
    ),
    ("no content", "GET", b"HTTP/1.1 204 No Content\r\n\r\n", false),
    ("not modified with a length", "GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n", false),
    ("head with a length", "HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false),
    ("connection close", "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", false),
    ("connection names fields", "GET", b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: x-hop, keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-End: 1\r\n\r\nok", false),
    ("http/1.0", "GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    ("http/1.0 keep-alive", "GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", false),
    ("close-delimited", "GET", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true),
    ("other coding, close-delimited", "GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", true),
    ("interim 100 then 200", "GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    (
        "103 early hints then 200",
        "GET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        false,
    ),
    (
        "odd fields",
        "GET",
        b"HTTP/1.1 404 Not Found\r\nX-Empty:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-UPPER: Mixed Case \t\r\nX-Obs: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nx",
        false,
    ),
    ("no reason phrase", "GET", b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx", false),
    ("truncated length", "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true),
    ("truncated chunked", "GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true),
    ("bad chunk size", "GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false),
    ("chunk without its CRLF", "GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhelloX\r\n0\r\n\r\n", false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_reads_every_response_shape_as_hyper_does() {
    let mut differences = Vec::new();
    let mut outcomes = std::collections::HashMap::new();
    for &(name, method, answer, close) in CORPUS {
        let method: Method = method.parse().unwrap();
        let (addr, _) = serve(answer, close).await;
        let theirs = with_hyper(addr, &method).await;
        let ours = with_codec(addr, &method).await;
        outcomes.insert(name, (ours.reused, ours.body.is_ok(), ours.trailers.len()));
        if theirs != ours {
            differences.push(format!("{name}:\n  hyper {theirs:?}\n  codec {ours:?}"));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // The corpus covers each outcome: reused, not reused, broken, with trailers.
    assert_eq!(outcomes["length"], (true, true, 0));
    assert_eq!(outcomes["connection close"], (false, true, 0));
    assert_eq!(outcomes["close-delimited"], (false, true, 0));
    assert!(!outcomes["truncated chunked"].1);
    assert_eq!(outcomes["chunked with trailers"], (true, true, 1));
}

/// Shapes hyper's client takes and the codec refuses: each is a framing ambiguity a proxy must
/// not pass on, or more than an answer can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_refuses_what_a_proxy_must_not_guess_at() {
    let big_head: &'static [u8] = {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        while h.len() <= 64 * 1024 {
            h.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        h.extend_from_slice(b"content-length: 0\r\n\r\n");
        Box::leak(h.into_boxed_slice())
    };
    for (name, answer) in [
        (
            "length and chunked",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        ),
        ("conflicting lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("a list of lengths that disagree", b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd"),
        ("a signed length", b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc"),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n"),
        ("a head over 64 KiB", big_head),
        ("not http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ] {
        let (addr, _) = serve(answer, false).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let got = tokio::time::timeout(
            WAIT,
            Connection::new(stream).send(
                &Method::GET,
                "/",
                &HeaderMap::new(),
                &mut Empty::<Bytes>::new(),
                true,
                HEAD_TIMEOUT,
            ),
        )
        .await
        .expect("no hang");
        match got {
            Err(e) => assert!(e.error.is_invalid(), "{name}: {e}"),
            Ok(resp) => panic!("{name}: taken as {}", resp.status()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_goes_with_its_framing_and_early_answers_are_read() {
    // The server reads the head and answers before reading the body: an early 413.
    let (addr, served) = serve(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        true,
    )
    .await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", "upstream".parse().unwrap());
    // Far more than the socket buffers hold: the write cannot finish before the answer.
    let body = Bytes::from(vec![b'x'; 32 << 20]);
    let mut body = http_body_util::Full::new(body);
    let resp = tokio::time::timeout(
        WAIT,
        Connection::new(stream).send(
            &Method::POST,
            "/upload",
            &headers,
            &mut body,
            true,
            HEAD_TIMEOUT,
        ),
    )
    .await
    .expect("no hang")
    .expect("the early answer");
    assert_eq!(resp.status(), 413);
    assert!(resp.into_body().take_reusable().is_none());
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

/// Feeds `pieces` to the parser and decoder as a connection would: what comes out, or the
/// error. Panics if the codec makes no progress (a hang, in a real connection).
fn drive(pieces: &[Vec<u8>], method: &Method) -> Result<(u16, Vec<u8>), Error> {
    let mut buf = BytesMut::new();
    let mut status = None;
    let mut decoder: Option<Decoder> = None;
    let mut body = Vec::new();
    let total: usize = pieces.iter().map(Vec::len).sum();
    let mut steps = 0usize;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            steps += 1;
            assert!(steps <= 4 * total + 16, "no progress");
            match decoder.as_mut() {
                None => match parse_response(&mut buf, method)? {
                    None => break,
                    Some(h) if h.status.is_informational() && h.status != 101 => continue,
                    Some(h) => {
                        status = Some(h.status.as_u16());
                        decoder = Some(Decoder::new(h.framing));
                    }
                },
                Some(d) => match d.decode(&mut buf)? {
                    Decoded::Data(b) => {
                        assert!(!b.is_empty(), "an empty data frame");
                        body.extend_from_slice(&b);
                    }
                    Decoded::Trailers(_) => {}
                    Decoded::End => return Ok((status.unwrap(), body)),
                    Decoded::NeedMore => break,
                },
            }
        }
    }
    match decoder.as_mut() {
        None => Err(Error::closed("no complete head")),
        Some(d) => {
            d.eof()?;
            Ok((status.unwrap(), body))
        }
    }
}

/// `bytes` cut at the given points (taken modulo its length).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return vec![Vec::new()];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Bytes that look like a response often enough to reach the body decoder.
fn responsish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        &b"HTTP/1.1 200 OK\r\n"[..],
        b"HTTP/1.0 204 No Content\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"Content-Length: 5\r\n",
        b"content-length: 0\r\n",
        b"Content-Length: 18446744073709551616\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"X-A: b\r\n",
        b" folded\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"fffffffffffffffff\r\n",
        b"0\r\n",
        b"3;ext=\"q\"\r\n",
        b"x-t: 1\r\n",
        b"\n",
        b"\r",
        b"hello",
    ]);
    prop_oneof![
        prop::collection::vec(piece, 0..16).prop_map(|p| p.concat()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A well-formed response: its bytes and its body.
fn well_formed() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(1usize..64, 1..8),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(body, chunk_sizes, framing, interim)| {
            let mut out = Vec::new();
            if interim {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nX-Test: yes\r\n");
            match framing {
                0 => {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    out.extend_from_slice(&body);
                }
                1 => {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    let mut sizes = chunk_sizes.iter().cycle();
                    while !rest.is_empty() {
                        let n = (*sizes.next().unwrap()).min(rest.len());
                        out.extend_from_slice(format!("{n:X}\r\n").as_bytes());
                        out.extend_from_slice(&rest[..n]);
                        out.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
                }
                _ => {
                    out.extend_from_slice(b"Connection: close\r\n\r\n");
                    out.extend_from_slice(&body);
                }
            }
            (out, body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_split_anywhere_end_cleanly(
        bytes in responsish(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        head in any::<bool>(),
    ) {
        let method = if head { Method::HEAD } else { Method::GET };
        // Whatever it is, it ends: a response or an error, never a panic or a loop.
        let _ = drive(&split(&bytes, &cuts), &method);
    }

    #[test]
    fn well_formed_responses_split_anywhere_give_their_body(
        (bytes, body) in well_formed(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = drive(std::slice::from_ref(&bytes), &Method::GET).map_err(|e| e.to_string());
        let pieces = drive(&split(&bytes, &cuts), &Method::GET).map_err(|e| e.to_string());
        prop_assert_eq!(&whole, &Ok((200, body)));
        prop_assert_eq!(whole, pieces);
    }
}

/// A one-connection upstream that answers the `n`th request head (from 0) after `delay(n)`,
/// or never, reading on, when that is `None`.
fn answer_heads(
    listener: TcpListener,
    delay: fn(usize) -> Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut heads = 0;
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let Some(wait) = delay(heads) else { break };
                buf.drain(..end + 4);
                tokio::time::sleep(wait).await;
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                heads += 1;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// A bodiless `GET /` on `conn` whose response head must come `within`.
async fn get_within(
    conn: Connection,
    within: Duration,
) -> Result<Response<ResponseBody>, SendError> {
    let (fields, mut body) = (HeaderMap::new(), Empty::<Bytes>::new());
    let send = conn.send(&Method::GET, "/", &fields, &mut body, true, within);
    tokio::time::timeout(WAIT, send).await.expect("no hang")
}

/// The response-head deadline is the connection's one timer, reset for each request: a
/// request after one that had a long deadline still gets its own, shorter one, and the
/// connection is not silently reused after it fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_gets_its_own_head_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = answer_heads(listener, |n| (n == 0).then_some(Duration::ZERO));
    let stream = TcpStream::connect(addr).await.unwrap();
    let first = get_within(Connection::new(stream), HEAD_TIMEOUT)
        .await
        .expect("the first answer");
    assert_eq!(first.status(), 200);
    let conn = first.into_body().take_reusable().expect("reusable");
    let started = std::time::Instant::now();
    let e = get_within(conn, Duration::from_millis(200))
        .await
        .err()
        .expect("no answer to the second request");
    assert!(e.error.is_timeout(), "{e}");
    assert!(!e.unsent, "{e}");
    assert!(
        e.to_string().contains("no response head within 200ms"),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    server.abort();
}

/// The other way round: a timer left set for an earlier request's shorter deadline goes off
/// while the next request, with a longer one, waits; that request still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_left_from_an_earlier_request_does_not_cut_the_next_one_short() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = answer_heads(listener, |n| {
        Some(Duration::from_millis(if n == 0 { 0 } else { 600 }))
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let first = get_within(Connection::new(stream), Duration::from_millis(200))
        .await
        .expect("the first answer");
    let conn = first.into_body().take_reusable().expect("reusable");
    let second = get_within(conn, Duration::from_secs(5))
        .await
        .expect("the second answer, after the first deadline passed");
    assert_eq!(second.status(), 200);
    server.abort();
}

mod common;

/// Through the proxy: an upstream that sends more than its response (the start of another one
/// nobody asked for) never has those bytes taken as the answer to the next request; its
/// connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_are_never_the_next_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let blue = common::Backend::adopt(addr, task);
    let proxy = common::ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = common::client();
    for i in 0..20 {
        let r = common::get(&client, &proxy.url(&format!("/{i}"))).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 20);
}

/// Through the proxy: an invalid response is the upstream's answer (it read the request), so
/// even a GET is not sent again elsewhere: each one the bad color got is one 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_response_is_a_502_and_not_sent_again() {
    let (bad, bad_served) = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    let (good, good_served) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let (bad, good) = (format!("http://{bad}"), format!("http://{good}"));
    let proxy = common::ProxyProcess::start(&[
        ("BLUE", &bad),
        ("GREEN", &good),
        ("BLUE_WEIGHT", "1"),
        ("GREEN_WEIGHT", "1"),
    ]);
    let client = common::client();
    let (mut ok, mut refused) = (0, 0);
    // Blue gets each with probability 1/2 until it is ejected: that it gets none of 40 has
    // probability 2^-40.
    for i in 0..40 {
        let r = common::get(&client, &proxy.url(&format!("/{i}"))).await;
        match r.status {
            200 => ok += 1,
            502 => {
                assert!(
                    r.body.contains("Content-Length and Transfer-Encoding"),
                    "{}",
                    r.body
                );
                refused += 1;
            }
            s => panic!("request {i}: {s} {}", r.body),
        }
    }
    assert!(refused >= 1);
    assert_eq!(bad_served.load(Ordering::SeqCst), refused);
    assert_eq!(good_served.load(Ordering::SeqCst), ok);
}

/// Through the proxy: what the upstream sends in the same breath as its `101` (a server that
/// speaks first) reaches the client as the tunnel's first bytes, and the tunnel then carries
/// both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_right_after_a_101_open_the_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let hello = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nHELLO";
                if s.write_all(hello).await.is_err() {
                    return;
                }
                // Then an echo.
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let backend = common::Backend::adopt(addr, task);
    let proxy = common::ProxyProcess::start(&[("BLUE", &backend.url())]);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /tunnel HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let read_until = async |client: &mut TcpStream, got: &mut Vec<u8>, want: &[u8]| {
        let mut chunk = [0u8; 4096];
        while !got.windows(want.len()).any(|w| w == want) {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, read_until(&mut client, &mut got, b"\r\n\r\nHELLO"))
        .await
        .expect("the 101 and the upstream's first bytes");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    client.write_all(b"ping").await.unwrap();
    tokio::time::timeout(WAIT, read_until(&mut client, &mut got, b"HELLOping"))
        .await
        .expect("the echo through the tunnel");
}

/// A connection the upstream reset before anything was written: the failure says nothing went
/// out, and a body the caller cannot take again was not touched (it can go elsewhere whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_before_the_request_leaves_the_body_untouched() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for coalesce in [false, true] {
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.unwrap();
        let (server, _) = accepted.unwrap();
        server.set_zero_linger().unwrap();
        drop(server);
        // The reset has arrived.
        tokio::time::timeout(WAIT, client.readable())
            .await
            .unwrap()
            .unwrap();
        let mut body = http_body_util::Full::new(Bytes::from_static(b"payload"));
        let got = tokio::time::timeout(
            WAIT,
            Connection::new(client).send(
                &Method::POST,
                "/",
                &HeaderMap::new(),
                &mut body,
                coalesce,
                HEAD_TIMEOUT,
            ),
        )
        .await
        .expect("no hang");
        let e = got.err().expect("a reset connection fails");
        assert!(e.unsent, "{e}");
        assert!(!e.error.is_invalid(), "{e}");
        // Taken for the head's write only when the caller may take it again.
        assert_eq!(e.body_intact, !coalesce, "{e}");
        assert_eq!(hyper::body::Body::is_end_stream(&body), coalesce);
    }
}
