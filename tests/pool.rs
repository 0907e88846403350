//! Upstream connections through the real binary: kept alive and reused, never more than the
//! concurrency needs, and a connection the upstream closed costs no request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    let blue = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = client();
    for _ in 0..200 {
        assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    }
    // A fresh client per request: the client side changes, the upstream side does not.
    for _ in 0..50 {
        assert_eq!(get(&common::client(), &proxy.url("/")).await.status, 200);
    }
    assert_eq!(blue.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_no_more_connections_than_they_need() {
    let blue = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let url = proxy.url("/");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..100 {
                assert_eq!(get(&client, &url).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = blue.accepted();
    assert!(
        (1..=8).contains(&n),
        "{n} upstream connections for 8 clients"
    );
}

/// A backend that answers the first request on each connection with `ok` and then closes the
/// connection without saying so (no `Connection: close`), as an app server whose keep-alive
/// timeout fired would: at once, or (`await_second`) only on reading the next request, which
/// it leaves unanswered: the race with a proxy reusing the connection, made certain.
/// Counts the connections it accepted and the request heads it read.
async fn one_answer_backend(await_second: bool) -> (Backend, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counts = (conns.clone(), heads.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let heads = heads.clone();
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                heads.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                if await_second && read_head(&mut stream).await {
                    heads.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: closed without a word.
            });
        }
    });
    (Backend::adopt(addr, task), counts.0, counts.1)
}

/// Reads up to the end of one request head; false if the connection ended first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_cost_no_request() {
    let (blue, _, served) = one_answer_backend(false).await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = client();
    for i in 0..300 {
        let r = get(&client, &proxy.url(&format!("/{i}"))).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "request {i}");
    }
    // A request sent on a connection the backend had already closed was never read there:
    // each was served exactly once.
    assert_eq!(served.load(Ordering::SeqCst), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_pooled_connection_the_upstream_closed_goes_again_on_a_new_one() {
    let (blue, conns, heads) = one_answer_backend(true).await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = client();
    let first = get(&client, &proxy.url("/first")).await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok\n"));
    // Sent on the pooled connection, which breaks; then sent on a new one.
    let second = get(&client, &proxy.url("/second")).await;
    assert_eq!((second.status, second.body.as_str()), (200, "ok\n"));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(heads.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_pooled_connection_the_upstream_closed_is_not_sent_twice() {
    let (blue, conns, heads) = one_answer_backend(true).await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = client();
    assert_eq!(get(&client, &proxy.url("/first")).await.status, 200);
    let post = hyper::Request::post(proxy.url("/order"))
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            "one order",
        )))
        .unwrap();
    let reply = send(&client, post).await;
    // The upstream read it and may have acted on it: the client decides, not the proxy.
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("reset"), "{}", reply.body);
    assert_eq!(heads.load(Ordering::SeqCst), 2);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

/// An app server that serves one keep-alive connection at a time, as Python's `HTTPServer`
/// does: it accepts a connection, answers its requests in turn (each takes `work`), and
/// accepts the next connection only once that one closed or sat idle for `idle` (its
/// keep-alive timeout). Its listen backlog is 1: while it is busy with one connection, the
/// kernel completes the handshakes of two more, which wait unanswered, and drops the SYNs of
/// the rest. Reports each request head it read.
async fn one_connection_backend(
    work: std::time::Duration,
    idle: std::time::Duration,
) -> (Backend, tokio::sync::watch::Receiver<usize>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    let (heads_tx, heads) = tokio::sync::watch::channel(0);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            while let Ok(true) = tokio::time::timeout(idle, read_head(&mut stream)).await {
                heads_tx.send_modify(|n| *n += 1);
                tokio::time::sleep(work).await;
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    (Backend::adopt(addr, task), heads)
}

/// A burst at a backend that serves one connection at a time: new connections get nowhere
/// (their SYNs dropped, or accepted by the kernel and left waiting), so requests wait for the
/// connection the backend is serving as it comes back to the pool, in turn. A request that
/// arrives mid-burst is answered once those ahead of it are, not failed with 502 after
/// `CONNECT_TIMEOUT` nor left on a connection nobody will read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_a_one_connection_backend_waits_for_its_connection() {
    use std::time::Duration;
    let (blue, mut heads) =
        one_connection_backend(Duration::from_millis(20), Duration::from_secs(1)).await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url()), ("CONNECT_TIMEOUT", "200ms")]);
    // The backend now holds the proxy's first connection.
    assert_eq!(get(&client(), &proxy.url("/first")).await.status, 200);
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let url = proxy.url(&format!("/burst/{i}"));
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect();
    // Mid-burst: the backend is busy with the burst's first request on that connection (the
    // 40 take 0.8 s there), and the kernel holds two more connections it has not accepted.
    tokio::time::timeout(TIMEOUT, heads.wait_for(|n| *n >= 2))
        .await
        .expect("the burst reaches the backend")
        .unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(5), get(&client(), &proxy.url("/probe")))
        .await
        .expect("the probe is answered within 5 s");
    assert_eq!(
        (probe.status, probe.body.as_str()),
        (200, "ok\n"),
        "{}",
        proxy.output()
    );
    for (i, b) in burst.into_iter().enumerate() {
        let r = b.await.unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "ok\n"),
            "burst request {i}"
        );
    }
}
