//! Bad request framing on raw sockets, against the real binary in front of a raw TCP backend
//! that records every byte it gets: each case checks what the client is answered and what
//! reached the backend. Nothing is smuggled: the backend never sees a request the client hid
//! inside another one, because the proxy either refuses the request or re-frames it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection may stay open before the test decides it will not close.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// One request as the backend read it off the wire.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
    /// The connection ended before the request did.
    complete: bool,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// An HTTP/1.1 backend written against the bytes: it parses the (well-formed) framing the
/// proxy sends, records each request and answers `200 ok`.
struct RawBackend {
    backend: Backend,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(record(stream, log.clone()));
            }
        });
        RawBackend {
            backend: Backend::adopt(addr, task),
            received,
        }
    }

    fn url(&self) -> String {
        self.backend.url()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads until `buf` holds at least `n` bytes; false at EOF.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut chunk = [0u8; 8192];
    while buf.len() < n {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Reads until `buf` contains `needle`; its end offset, or None at EOF.
async fn fill_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i + needle.len());
        }
        let want = buf.len() + 1;
        if !fill(stream, buf, want).await {
            return None;
        }
    }
}

async fn record(mut stream: TcpStream, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = fill_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            if !buf.is_empty() {
                log.lock().unwrap().push(Received {
                    head: String::from_utf8_lossy(&buf).into_owned(),
                    body: Vec::new(),
                    complete: false,
                });
            }
            return;
        };
        let mut req = Received {
            head: String::from_utf8_lossy(&buf[..end]).into_owned(),
            body: Vec::new(),
            complete: false,
        };
        buf.drain(..end);
        let chunked = req
            .headers("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length: usize = req
            .headers("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let complete = if chunked {
            loop {
                let Some(line_end) = fill_until(&mut stream, &mut buf, b"\r\n").await else {
                    break false;
                };
                let line = String::from_utf8_lossy(&buf[..line_end - 2]).into_owned();
                buf.drain(..line_end);
                let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                else {
                    break false;
                };
                if size == 0 {
                    // No trailers from the proxy: the empty line ends the body.
                    break fill_until(&mut stream, &mut buf, b"\r\n")
                        .await
                        .is_some_and(|e| {
                            buf.drain(..e);
                            true
                        });
                }
                if !fill(&mut stream, &mut buf, size + 2).await {
                    req.body.extend_from_slice(&buf);
                    break false;
                }
                req.body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else if fill(&mut stream, &mut buf, length).await {
            req.body = buf.drain(..length).collect();
            true
        } else {
            req.body = std::mem::take(&mut buf);
            false
        };
        req.complete = complete;
        log.lock().unwrap().push(req);
        if !complete {
            return;
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if stream.write_all(ok).await.is_err() {
            return;
        }
    }
}

/// What the client got back on its connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    /// Bytes after the first response (a second response would be a request the proxy
    /// found in what the client sent as one).
    after: Vec<u8>,
    /// The proxy closed the connection after the first response.
    closed: bool,
}

/// Sends `raw` on a new connection and reads the first response; then, if `wait_close`, waits
/// (bounded) for the proxy to close, collecting anything else it sends meanwhile.
async fn raw_exchange(proxy: &ProxyProcess, raw: &[u8], wait_close: bool) -> Answer {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(TIMEOUT, fill_until(&mut stream, &mut buf, b"\r\n\r\n"))
        .await
        .expect("a response head within the timeout")
        .unwrap_or_else(|| panic!("closed without a response: {buf:?}"));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    tokio::time::timeout(TIMEOUT, fill(&mut stream, &mut buf, length))
        .await
        .expect("a response body within the timeout");
    let body = String::from_utf8_lossy(&buf[..length.min(buf.len())]).into_owned();
    buf.drain(..length.min(buf.len()));
    let mut closed = false;
    if wait_close {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(CLOSE_WITHIN, stream.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
    }
    Answer {
        status,
        head,
        body,
        after: buf,
        closed,
    }
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| k.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value))
}

/// The backend's requests once a marker request sent after the case has arrived: whatever
/// the case made the proxy send upstream was sent before it. The marker is left out.
async fn received_before_marker(proxy: &ProxyProcess, backend: &RawBackend) -> Vec<Received> {
    let client = client();
    let r = get(&client, &proxy.url("/marker")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut got = backend.received();
    let marker = got
        .iter()
        .position(|r| r.request_line().starts_with("GET /marker "))
        .expect("the marker reached the backend");
    got.remove(marker);
    got
}

/// A request hidden in the body of another: if it ever reaches the backend, it was smuggled.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn assert_nothing_smuggled(got: &[Received]) {
    for r in got {
        assert!(
            !r.request_line().contains("/smuggled"),
            "smuggled through: {got:?}"
        );
    }
}

async fn setup() -> (RawBackend, ProxyProcess) {
    let backend = RawBackend::start().await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    (backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_transfer_encoding_is_read_chunked_and_the_connection_closes() {
    let (backend, proxy) = setup().await;
    for (name, head) in [
        (
            "CL+TE",
            "POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "TE+CL",
            "POST /both HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n",
        ),
    ] {
        let raw = format!("{head}3\r\nabc\r\n0\r\n\r\n{HIDDEN}");
        let answer = raw_exchange(&proxy, raw.as_bytes(), true).await;
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert!(
            has_header(&answer.head, "connection", "close"),
            "{name}: {answer:?}"
        );
        assert!(
            answer.closed && answer.after.is_empty(),
            "{name}: {answer:?}"
        );
        let got = received_before_marker(&proxy, &backend).await;
        assert_nothing_smuggled(&got);
        let both: Vec<_> = got
            .iter()
            .filter(|r| r.request_line() == "POST /both HTTP/1.1")
            .collect();
        assert_eq!(both.len(), 1, "{name}: {got:?}");
        assert!(both[0].complete, "{name}: {got:?}");
        assert_eq!(both[0].body, b"abc", "{name}");
        // Forwarded with one framing only: the body was read whole (REQUEST_BUFFER), so it
        // goes with the length the proxy counted, never the client's conflicting one.
        assert!(
            both[0].headers("transfer-encoding").is_empty(),
            "{name}: {got:?}"
        );
        assert_eq!(both[0].headers("content-length"), ["3"], "{name}");
        backend.received.lock().unwrap().clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_of_rfc_9112() {
    let (backend, proxy) = setup().await;
    for (raw, status, closes) in [
        ("GET /h HTTP/1.1\r\n\r\n", 400, true),
        ("GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, true),
        ("GET /h HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, true),
        ("GET /h HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, true),
        ("GET http://a/h HTTP/1.1\r\n\r\n", 400, true),
        ("GET /h HTTP/1.0\r\n\r\n", 200, true),
        ("GET /h HTTP/1.1\r\nHost: a\r\n\r\n", 200, false),
        ("GET /h HTTP/1.1\r\nHost:\r\n\r\n", 200, false),
    ] {
        let answer = raw_exchange(&proxy, raw.as_bytes(), closes).await;
        assert_eq!(answer.status, status, "{raw:?}: {answer:?}");
        if status == 400 {
            assert!(answer.body.contains("Host"), "{raw:?}: {answer:?}");
            assert!(has_header(&answer.head, "connection", "close"), "{raw:?}");
        }
        assert_eq!(answer.closed, closes, "{raw:?}: {answer:?}");
        let got = received_before_marker(&proxy, &backend).await;
        assert_eq!(got.len(), usize::from(status == 200), "{raw:?}: {got:?}");
        backend.received.lock().unwrap().clear();
    }
    // A 400 is the client's: counted against no color.
    let mut proxy = proxy;
    let metrics = get(&client(), &proxy.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains(r#"colorproxy_requests_total{color="none",code="400"} 5"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("colorproxy_upstream_errors_total{"),
        "{metrics}"
    );
}

/// What the backend must have received for a case.
#[derive(Debug)]
enum Upstream {
    /// Nothing at all: the proxy refused the request before choosing an upstream.
    Nothing,
    /// Exactly one complete request, with this body, framed one way only.
    One(&'static [u8]),
}

struct Case {
    name: &'static str,
    raw: &'static str,
    /// The client's status; `None`: any error status (see the table in README).
    status: Option<u16>,
    upstream: Upstream,
}

const fn case(
    name: &'static str,
    raw: &'static str,
    status: Option<u16>,
    upstream: Upstream,
) -> Case {
    Case {
        name,
        raw,
        status,
        upstream,
    }
}

/// The shapes of request smuggling (RFC 9112 §6, §11.2) and of malformed heads. The hidden
/// `GET /smuggled` follows where a proxy that framed the request differently from its
/// upstream would let it through.
const CASES: &[Case] = &[
    case(
        "duplicate Content-Length, same value",
        "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        Some(200),
        Upstream::One(b"abc"),
    ),
    case(
        "duplicate Content-Length, different values",
        "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Content-Length as a list",
        "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Content-Length with a sign",
        "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Transfer-Encoding: xchunked",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Transfer-Encoding: chunked, identity",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Transfer-Encoding twice, identity last",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Transfer-Encoding with a space before the colon",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "Transfer-Encoding:  chunked (spaces before the value)",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:   chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Some(200),
        Upstream::One(b"abc"),
    ),
    case(
        "Transfer-Encoding:<tab>chunked",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Some(200),
        Upstream::One(b"abc"),
    ),
    case(
        "Transfer-Encoding on HTTP/1.0",
        "POST /t HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "obs-fold of Transfer-Encoding",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "obs-fold of another header",
        "GET /f HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "chunk size not hex",
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "chunk size overflowing 64 bits",
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "negative chunk size",
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "chunk shorter than its size",
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "bare CR in a header value",
        "GET /r HTTP/1.1\r\nHost: x\r\nX-A: a\rGET /smuggled HTTP/1.1\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "bare CR ending the request line",
        "GET /r HTTP/1.1\rHost: x\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "NUL in a header value",
        "GET /n HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
    case(
        "NUL in a header name",
        "GET /n HTTP/1.1\r\nHost: x\r\nX-\0A: b\r\n\r\n",
        Some(400),
        Upstream::Nothing,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_or_reframed() {
    let (backend, proxy) = setup().await;
    let mut failures = Vec::new();
    for c in CASES {
        let answer = raw_exchange(&proxy, c.raw.as_bytes(), c.status != Some(200)).await;
        let got = received_before_marker(&proxy, &backend).await;
        backend.received.lock().unwrap().clear();
        assert_nothing_smuggled(&got);
        let status_ok = match c.status {
            Some(s) => answer.status == s,
            None => answer.status >= 400,
        };
        let complete: Vec<_> = got.iter().filter(|r| r.complete).collect();
        let upstream_ok = match c.upstream {
            Upstream::Nothing => got.is_empty(),
            Upstream::One(body) => {
                complete.len() == 1
                    && got.len() == 1
                    && complete[0].body == body
                    && (complete[0].headers("transfer-encoding").len()
                        + complete[0].headers("content-length").len()
                        == 1)
            }
        };
        // After an error the connection is out of step: it must be closed, and nothing else
        // sent on it may be answered.
        let closed_ok = c.status == Some(200) || (answer.closed && answer.after.is_empty());
        println!(
            "{:<50} client {} {}, upstream got {:?}",
            c.name,
            answer.status,
            if answer.closed { "closed" } else { "open" },
            got.iter()
                .map(|r| (r.request_line().to_string(), r.complete, r.body.len()))
                .collect::<Vec<_>>()
        );
        if !(status_ok && upstream_ok && closed_ok) {
            failures.push(format!(
                "{}: expected {:?} / {:?}, got {answer:?} and upstream {got:?}",
                c.name, c.status, c.upstream
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
