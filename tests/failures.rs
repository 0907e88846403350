//! Upstream failures and missing configuration become clear responses, never hangs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_configured_answers_503() {
    let mut proxy = ProxyProcess::start(&[]);
    proxy.wait_for_log("no color is configured");
    let r = get(&client(), &proxy.url("/anything")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "colorproxy: no backend is configured\n");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_answers_502_naming_the_color() {
    let dead = dead_address().await;
    let mut proxy = ProxyProcess::start(&[("GREEN", &dead)]);
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("upstream green"), "{}", r.body);
    assert!(r.body.contains("connect"), "{}", r.body);
    let log = proxy.wait_for_log("upstream request failed");
    assert!(log.contains("green") && log.contains("refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_answers_504_after_request_timeout() {
    // Accepts the request and never answers.
    let slow = Backend::start(|_req| async {
        std::future::pending::<()>().await;
        Response::new(Full::new(Bytes::new()))
    })
    .await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &slow.url()), ("REQUEST_TIMEOUT", "300ms")]);
    let started = Instant::now();
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(r.body.contains("upstream blue"), "{}", r.body);
    assert!(r.body.contains("300ms"), "{}", r.body);
    proxy.wait_for_log("kind=timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_answers_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Read the request, then hang up without a response.
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            drop(s);
        }
    });
    let proxy = ProxyProcess::start(&[("BLUE", &format!("http://{addr}"))]);
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("reset"), "{}", r.body);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_color_fails_over_to_the_healthy_one() {
    let blue = Backend::echo("blue").await;
    let dead = dead_address().await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &blue.url()), ("GREEN", &dead)]);
    let client = client();
    for _ in 0..200 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // The request went to blue, and says so.
        let (_, headers) = parse_echo(&r.body);
        assert_eq!(header_values(&headers, "color"), ["blue"]);
    }
    proxy.wait_for_log("color has no live endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_connection_failed_is_retried_with_its_body() {
    let blue = Backend::echo("blue").await;
    let dead = dead_address().await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url()), ("GREEN", &dead)]);
    let client = client();
    for i in 0..50 {
        let req = hyper::Request::post(proxy.url("/orders"))
            .body(Full::from(format!("order {i}")))
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.starts_with("POST /orders"), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_gets_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Accepts, reads the request head, then neither reads nor answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            held.push(s);
        }
    });
    let proxy = ProxyProcess::start(&[
        ("BLUE", &format!("http://{addr}")),
        ("REQUEST_TIMEOUT", "500ms"),
    ]);
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let total: u64 = 1 << 30;
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        // Stops when the proxy gives up and closes; the upstream never drains 1 GiB.
        while wr.write_all(&chunk).await.is_ok() {}
    });
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(TIMEOUT, rd.read(&mut head))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    writer.abort();
    stalled.abort();
}

/// An upstream that stops in the middle of its body is cut off after REQUEST_TIMEOUT without a
/// byte (nginx's `proxy_read_timeout`), whichever way the body goes: read ahead whole (504),
/// to disk (a chunked body: the client has the head and the first chunk, then the connection
/// closes before the last chunk), or streamed (`RESPONSE_BUFFER=0`: the same). Before, the last
/// two waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_mid_body_is_cut_off_after_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers the head and a first part of the body, then holds the connection, silent.
    async fn stopping(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                held.push(s);
            }
        });
        format!("http://{addr}")
    }
    let length = stopping(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst ").await;
    let chunked =
        stopping(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n").await;
    for (upstream, buffer, expect) in [
        (&length, "1MiB", "HTTP/1.1 504"),
        (&chunked, "1MiB", "first "),
        (&chunked, "0", "first "),
        (&length, "0", "first "),
    ] {
        let mut proxy = ProxyProcess::start(&[
            ("BLUE", upstream),
            ("REQUEST_TIMEOUT", "500ms"),
            ("RESPONSE_BUFFER", buffer),
        ]);
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        tokio::time::timeout(TIMEOUT, s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{upstream} RESPONSE_BUFFER={buffer}: the connection hangs"))
            .ok();
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains(expect),
            "{upstream} RESPONSE_BUFFER={buffer}: {got}"
        );
        // Cut short: never the whole body, never the last chunk.
        assert!(!got.contains("0\r\n\r\n"), "{got}");
        assert!(started.elapsed() >= Duration::from_millis(400), "{got}");
        if expect.starts_with("HTTP/1.1 504") {
            assert!(got.contains("stalled"), "{got}");
        }
        proxy.wait_for_log("stalled");
    }
}

/// A one-worker app busy with a burst: its accept queue is full, and the kernel drops new SYNs
/// (it would resend one only after 1 s). Once the app catches up, a new attempt gets in: with
/// no other endpoint to go to, the proxy tries the same one again within its retry window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_timed_out_goes_again_to_the_only_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    // Fill the accept queue until a connect hangs: its SYN was dropped.
    let mut queued = Vec::new();
    while let Ok(conn) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        queued.push(conn.unwrap());
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    let proxy = ProxyProcess::start(&[
        ("BLUE", &format!("http://{addr}")),
        ("CONNECT_TIMEOUT", "500ms"),
    ]);
    let url = proxy.url("/");
    let request = tokio::spawn(async move { get(&client(), &url).await });
    // The app is busy for a quarter of a second more, then serves everyone.
    tokio::time::sleep(Duration::from_millis(250)).await;
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await
                    && n > 0
                {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    let r = tokio::time::timeout(TIMEOUT, request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "{}",
        proxy.output()
    );
    drop(queued);
}
