//! The backends are shielded from bad and slow clients, and blame lands where it belongs:
//! against the real binary, with raw sockets where a well-behaved client library cannot send
//! what a bad client does, and app servers that handle one connection at a time (gunicorn's
//! sync worker, Python's `HTTPServer`), which a slow client can freeze for everybody.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the one-worker app answers `GET /big`.
#[derive(Clone, Copy)]
enum Big {
    Length(usize),
    Chunked(usize),
}

/// An app server with one worker: it accepts a connection, reads one request (head and
/// `Content-Length` body), writes the whole answer, closes, and only then accepts the next.
/// `/big` gets a large body; anything else `ok` and what it read of the body.
struct OneWorker {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for OneWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OneWorker {
    async fn start(big: Big) -> OneWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let Some((head, body)) = read_request(&mut s).await else {
                    continue;
                };
                let answer = if head.starts_with("GET /big ") {
                    match big {
                        Big::Length(n) => {
                            let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n").into_bytes();
                            a.resize(a.len() + n, b'x');
                            a
                        }
                        Big::Chunked(n) => {
                            let mut a =
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                    .to_vec();
                            for _ in 0..n / 16384 {
                                a.extend_from_slice(b"4000\r\n");
                                a.resize(a.len() + 16384, b'x');
                                a.extend_from_slice(b"\r\n");
                            }
                            a.extend_from_slice(b"0\r\n\r\n");
                            a
                        }
                    }
                } else {
                    let text = format!("ok {}", String::from_utf8_lossy(&body));
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    )
                    .into_bytes()
                };
                if s.write_all(&answer).await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        OneWorker { addr, served, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One request head and its `Content-Length` body, or `None` if the connection ends first.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// Sends raw bytes and reads until the proxy closes the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn metrics(proxy: &mut ProxyProcess) -> String {
    get(&client(), &proxy.admin_url("/metrics")).await.body
}

/// The value of a metric line starting with `prefix`, 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const MALFORMED_CHUNKED: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n";

async fn malformed_bodies_are_the_clients_fault(extra: &[(&str, &str)]) -> Vec<String> {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let mut env = vec![("BLUE", blue.url()), ("GREEN", green.url())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = ProxyProcess::start(&env);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let answer = raw(proxy.addr, MALFORMED_CHUNKED).await;
        statuses.push(answer.lines().next().unwrap_or_default().to_string());
    }
    let m = metrics(&mut proxy).await;
    assert_eq!(
        metric(&m, "colorproxy_upstream_errors_total"),
        0.0,
        "a client's broken body was counted against an upstream:\n{m}"
    );
    assert_eq!(
        metric(&m, "colorproxy_endpoints{color=\"blue\",state=\"ejected\"}")
            + metric(
                &m,
                "colorproxy_endpoints{color=\"green\",state=\"ejected\"}"
            ),
        0.0,
        "{m}"
    );
    assert!(!proxy.output().contains("endpoint ejected"));
    // The proxy still serves well-formed requests.
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 200);
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_gets_400_and_blames_no_upstream() {
    let statuses = malformed_bodies_are_the_clients_fault(&[]).await;
    for s in statuses {
        assert!(s.starts_with("HTTP/1.1 400 "), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_streamed_body_blames_no_upstream_either() {
    // Unbuffered, the head reaches the upstream before the body breaks.
    let statuses = malformed_bodies_are_the_clients_fault(&[("REQUEST_BUFFER", "0")]).await;
    for s in statuses {
        assert!(!s.contains(" 502 ") && !s.contains(" 504 "), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_uploader_does_not_freeze_a_one_worker_app() {
    let app = OneWorker::start(Big::Length(10)).await;
    let proxy = ProxyProcess::start(&[("BLUE", &app.url())]);
    // 10 of 100 bytes, then nothing (slowhttptest -B sends one byte every few seconds).
    let mut uploader = TcpStream::connect(proxy.addr).await.unwrap();
    uploader
        .write_all(b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = get(&client(), &proxy.url("/page")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok "));
    // The upload goes through whole once it is complete.
    uploader.write_all(&[b'a'; 90]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, uploader.read_to_end(&mut answer))
        .await
        .expect("the upload is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with(&format!("ok 0123456789{}", "a".repeat(90))),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_body_timeout_gets_408_and_no_upstream_sees_it() {
    let app = OneWorker::start(Big::Length(10)).await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &app.url()), ("BODY_TIMEOUT", "300ms")]);
    let answer = raw(
        proxy.addr,
        b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("300ms"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    let m = metrics(&mut proxy).await;
    assert_eq!(
        metric(&m, "colorproxy_client_errors_total{kind=\"body_timeout\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "colorproxy_upstream_errors_total"), 0.0, "{m}");
    assert_eq!(app.served.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_logged_499_and_blames_no_upstream() {
    let app = OneWorker::start(Big::Length(10)).await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &app.url())]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    drop(s);
    let line = proxy.wait_for_log("status=499");
    assert!(line.contains("color=\"none\""), "{line}");
    let m = metrics(&mut proxy).await;
    assert_eq!(
        metric(&m, "colorproxy_client_errors_total{kind=\"client_gone\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "colorproxy_upstream_errors_total"), 0.0, "{m}");
}

/// `/big` answered to a client that never reads it: with the body read ahead, the one worker
/// is free at once and the next client is served. Returns the proxy's metrics once it holds
/// `settled` bytes (or after 5 s).
async fn a_client_that_does_not_read_does_not_hold_the_app(
    big: Big,
    env: &[(&str, &str)],
    settled: u64,
) -> String {
    let app = OneWorker::start(big).await;
    let url = app.url();
    let mut vars = vec![("BLUE", url.as_str())];
    vars.extend_from_slice(env);
    let mut proxy = ProxyProcess::start(&vars);
    let mut reader = asks_for_big(proxy.addr).await;
    let r = get(&client(), &proxy.url("/next")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok "));
    // The app is done; the proxy may still be reading what the sockets hold of it.
    let mut m = String::new();
    for _ in 0..100 {
        m = metrics(&mut proxy).await;
        if metric(&m, "colorproxy_buffered_bytes") >= settled as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The slow reader still gets all of it.
    let expected = match big {
        Big::Length(n) | Big::Chunked(n) => n,
    };
    let mut chunk = vec![0u8; 1 << 16];
    let counted = tokio::time::timeout(TIMEOUT, async {
        let mut xs = 0;
        while xs < expected {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {xs} of {expected} body bytes");
            xs += chunk[..n].iter().filter(|&&b| b == b'x').count();
        }
        xs
    })
    .await
    .expect("the whole body arrives");
    assert_eq!(counted, expected);
    m
}

/// A client that asks for `/big` and does not read the answer (yet).
async fn asks_for_big(proxy: SocketAddr) -> TcpStream {
    let mut reader = TcpStream::connect(proxy).await.unwrap();
    reader
        .write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    reader
}

/// More than the proxy's RESPONSE_BUFFER and the sockets to the client hold, so that a part of
/// it has to go to disk (tcp_rmem's maximum is 32 MiB on Debian).
const BIGGER: Big = Big::Length(48 << 20);

/// A body within RESPONSE_BUFFER is held in memory, a larger one on disk; either way the one
/// worker is free.
fn held_in(m: &str, store: &str) -> f64 {
    metric(
        m,
        &format!("colorproxy_buffered_bytes{{store=\"{store}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_of_known_length_is_read_ahead_of_a_client_that_does_not_read() {
    // 8 MB: far more than the socket buffers between the proxy and the client hold.
    let env = [("RESPONSE_BUFFER", "16MiB")];
    let m = a_client_that_does_not_read_does_not_hold_the_app(Big::Length(8 << 20), &env, 8 << 20)
        .await;
    assert_eq!(held_in(&m, "memory"), (8 << 20) as f64, "{m}");
    assert_eq!(held_in(&m, "disk"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_is_read_ahead_of_a_client_that_does_not_read() {
    let env = [("RESPONSE_BUFFER", "16MiB")];
    a_client_that_does_not_read_does_not_hold_the_app(Big::Chunked(8 << 20), &env, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_buffer_goes_to_disk_for_a_client_that_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", dir.path().to_str().unwrap())];
    let m = a_client_that_does_not_read_does_not_hold_the_app(BIGGER, &env, 32 << 20).await;
    // All but what the sockets took before the client stopped reading.
    let disk = held_in(&m, "disk");
    assert!(
        disk >= (32 << 20) as f64 && disk <= (48 << 20) as f64,
        "{m}"
    );
    assert_eq!(held_in(&m, "memory"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_larger_than_the_buffer_goes_to_disk_for_a_client_that_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", dir.path().to_str().unwrap())];
    let m =
        a_client_that_does_not_read_does_not_hold_the_app(Big::Chunked(48 << 20), &env, 32 << 20)
            .await;
    assert!(held_in(&m, "disk") >= (32 << 20) as f64, "{m}");
}

/// More than the four sockets between app, proxy and client hold with each at its autotuning
/// ceiling (the third field of tcp_rmem or tcp_wmem), plus RESPONSE_BUFFER and a margin. Read off
/// this kernel rather than assumed: at Debian's ceilings (32 MiB and 4 MiB) the four can hold
/// 72 MiB, and one CI machine took all of a 48 MiB body.
fn more_than_the_sockets_hold() -> usize {
    let ceiling = |knob: &str| -> usize {
        let path = format!("/proc/sys/net/ipv4/{knob}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let field = text.split_whitespace().nth(2);
        field
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {text:?}"))
    };
    2 * (ceiling("tcp_rmem") + ceiling("tcp_wmem")) + (8 << 20)
}

/// Without the disk, a body larger than RESPONSE_BUFFER waits for its client, and so does the
/// one worker: what RESPONSE_SPILL is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_disk_a_client_that_does_not_read_holds_a_larger_response() {
    let app = OneWorker::start(Big::Length(more_than_the_sockets_hold())).await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &app.url()),
        ("RESPONSE_SPILL", "0"),
        ("REQUEST_TIMEOUT", "2s"),
    ]);
    let _reader = asks_for_big(proxy.addr).await;
    let r = get(&client(), &proxy.url("/next")).await;
    assert_eq!(r.status, 504, "{}", r.body);
}

#[tokio::test]
async fn a_directory_that_takes_no_files_is_told_at_startup_and_responses_still_flow() {
    let app = OneWorker::start(Big::Length(1 << 20)).await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &app.url()), ("TMPDIR", "/nonexistent/dir")]);
    let line = proxy.wait_for_log("RESPONSE_SPILL");
    assert!(line.contains("/nonexistent/dir"), "{line}");
    let r = get(&client(), &proxy.url("/next")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok "));
}

/// A backend that answers one request per connection with `answer`, then closes (without
/// saying so); counts connections.
async fn answering(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    let _ = s.write_all(answer).await;
                }
            });
        }
    });
    (addr, conns, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_body_gives_a_visibly_incomplete_response() {
    let (addr, _, task) =
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a part of it").await;
    let url = format!("http://{addr}");
    // Read ahead (the default): the body broke before the client got anything: 502.
    let mut proxy = ProxyProcess::start(&[("BLUE", &url)]);
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("broke off"), "{}", r.body);
    proxy.wait_for_log("upstream response failed");
    // Streamed: the client gets the head, then a connection closed short of the length.
    let proxy = ProxyProcess::start(&[("BLUE", &url), ("RESPONSE_BUFFER", "0")]);
    let resp = tokio::time::timeout(
        TIMEOUT,
        client().request(Request::get(proxy.url("/")).body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .expect("no hang");
    assert!(body.is_err(), "a truncated body must not look complete");
    // And the proxy keeps serving: the next request gets its head again.
    let resp = tokio::time::timeout(
        TIMEOUT,
        client().request(Request::get(proxy.url("/")).body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    task.abort();
}

async fn bad_answers_get_502_and_the_connection_is_not_reused(answer: &'static [u8]) {
    let (addr, conns, task) = answering(answer).await;
    let proxy = ProxyProcess::start(&[("BLUE", &format!("http://{addr}"))]);
    let client = client();
    for i in 1..=3 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            i,
            "a bad connection was reused"
        );
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_garbage_gets_502() {
    bad_answers_get_502_and_the_connection_is_not_reused(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_head_over_64_kib_gets_502() {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let head = HEAD.get_or_init(|| {
        let mut h = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        h.resize(h.len() + 70_000, b'a');
        h.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
        h
    });
    bad_answers_get_502_and_the_connection_is_not_reused(head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_goes_to_another_endpoint_after_refused_connects() {
    // Two colors' worth of dead endpoints before the live one: the buffered body goes again.
    let dead1 = dead_address().await;
    let dead2 = dead_address().await;
    let live = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(Full::new(body))
    })
    .await;
    let proxy = ProxyProcess::start(&[
        ("COLORS", "a,b,c"),
        ("A", &dead1),
        ("B", &dead2),
        ("C", &live.url()),
    ]);
    let client = client();
    for i in 0..50 {
        let body = format!("order {i}");
        let r = send(
            &client,
            Request::post(proxy.url("/orders"))
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!((r.status, r.body), (200, body));
    }
    assert!(live.accepted() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_with_both_length_and_chunked_gets_502() {
    bad_answers_get_502_and_the_connection_is_not_reused(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
}

/// An upstream that takes one request and never answers it. Reports when it has the request,
/// then whether the proxy let go of the connection (EOF) within TIMEOUT.
async fn thinking_upstream() -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<bool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heard, heard_rx) = tokio::sync::oneshot::channel();
    let (dropped, dropped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await.expect("a request");
        let _ = heard.send(());
        let mut rest = [0u8; 64];
        let eof = tokio::time::timeout(TIMEOUT, s.read(&mut rest)).await;
        let _ = dropped.send(matches!(eof, Ok(Ok(0)) | Ok(Err(_))));
    });
    (addr, heard_rx, dropped_rx)
}

/// A client gone while the upstream is still thinking: the upstream request is dropped at
/// once (nginx's 499), and neither the upstream nor the color is blamed. `half_close`: the
/// client only shuts down its sending side (a FIN, the socket kept open for reading).
async fn a_client_that_leaves_while_the_upstream_thinks(half_close: bool) {
    let request: &[u8] = b"GET /think HTTP/1.1\r\nHost: app\r\n\r\n";
    a_client_that_leaves_after(request, &[], half_close).await;
}

/// The same after `request`, with the proxy's `env` besides BLUE.
async fn a_client_that_leaves_after(request: &[u8], env: &[(&str, &str)], half_close: bool) {
    let (upstream, heard, dropped) = thinking_upstream().await;
    let url = format!("http://{upstream}");
    let mut vars = vec![("BLUE", url.as_str())];
    vars.extend_from_slice(env);
    let mut proxy = ProxyProcess::start(&vars);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    tokio::time::timeout(TIMEOUT, heard)
        .await
        .expect("the upstream gets the request")
        .unwrap();
    let _open = if half_close {
        s.shutdown().await.unwrap();
        Some(s)
    } else {
        drop(s);
        None
    };
    let dropped = tokio::time::timeout(TIMEOUT * 2, dropped).await;
    assert!(
        matches!(dropped, Ok(Ok(true))),
        "the upstream connection stayed open after the client left: {dropped:?}"
    );
    let line = proxy.wait_for_log("status=499");
    assert!(line.contains("color=\"blue\""), "{line}");
    let m = metrics(&mut proxy).await;
    assert_eq!(metric(&m, "colorproxy_upstream_errors_total"), 0.0, "{m}");
    assert_eq!(
        metric(&m, "colorproxy_requests_total{color=\"blue\",code=\"499\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_the_upstream_thinks_is_logged_499_and_its_request_dropped() {
    a_client_that_leaves_while_the_upstream_thinks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_while_the_upstream_thinks_counts_as_gone_too() {
    // As nginx has it: a FIN in the middle of an exchange is a client that left.
    a_client_that_leaves_while_the_upstream_thinks(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_streaming_its_whole_body_is_seen_leaving_too() {
    // REQUEST_BUFFER=0: the body streams to the upstream as it comes; once it has all gone,
    // the client leaving is watched for as after a bodiless request.
    let request = b"POST /think HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n0123456789";
    a_client_that_leaves_after(request, &[("REQUEST_BUFFER", "0")], false).await;
}

/// A client gone while its response still streams (the upstream sent a first chunk, then
/// thinks): the upstream's connection is let go at once, as when the client leaves before the
/// head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_response_streams_lets_the_upstream_go() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (dropped, dropped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await.expect("a request");
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        let mut rest = [0u8; 64];
        let eof = tokio::time::timeout(TIMEOUT, s.read(&mut rest)).await;
        let _ = dropped.send(matches!(eof, Ok(Ok(0)) | Ok(Err(_))));
    });
    let url = format!("http://{upstream}");
    let proxy = ProxyProcess::start(&[("BLUE", &url)]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(TIMEOUT, async {
        while !String::from_utf8_lossy(&got).contains("first") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the first chunk: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first chunk arrives");
    drop(s);
    let dropped = tokio::time::timeout(TIMEOUT * 2, dropped_rx).await;
    assert!(
        matches!(dropped, Ok(Ok(true))),
        "the upstream connection stayed open after the client left: {dropped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_one_in_flight_is_answered_after_it() {
    let app = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &app.url())]);
    let out = raw(
        proxy.addr,
        b"GET /one HTTP/1.1\r\nHost: app\r\n\r\nGET /two HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    let (one, two) = (out.find("/one").unwrap(), out.find("/two").unwrap());
    assert!(one < two, "{out}");
}
