//! Stopping the real binary: on SIGTERM or SIGINT it closes its listener at once, lets
//! in-flight requests finish within DRAIN_TIMEOUT, closes idle connections, and exits 0; a
//! second process on the same address (SO_REUSEPORT) takes over without a gap.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// Runs a blocking harness call (waiting for a log line or for the exit) without stalling the
/// runtime that serves the backends and the in-flight requests.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// A backend whose `/slow` requests report their arrival and are answered `done` only once
/// the test releases them; any other path is answered `fast` at once.
struct SlowBackend {
    backend: Backend,
    arrived: mpsc::UnboundedReceiver<()>,
    release: Option<oneshot::Sender<()>>,
}

impl SlowBackend {
    async fn start() -> SlowBackend {
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(Mutex::new(Some(release_rx)));
        let backend = Backend::start(move |req: Request<Incoming>| {
            let arrived_tx = arrived_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                if req.uri().path() != "/slow" {
                    return Response::new(Full::from("fast"));
                }
                let release = release_rx.lock().unwrap().take();
                let _ = arrived_tx.send(());
                if let Some(release) = release {
                    // Also ends if the test drops the sender.
                    let _ = release.await;
                }
                Response::new(Full::from("done"))
            }
        })
        .await;
        SlowBackend {
            backend,
            arrived,
            release: Some(release),
        }
    }

    async fn wait_arrived(&mut self) {
        timeout(TIMEOUT, self.arrived.recv())
            .await
            .expect("the slow request reached the backend within the timeout")
            .expect("backend still running");
    }

    fn release(&mut self) {
        let _ = self.release.take().expect("released once").send(());
    }
}

/// A client that opens a new connection for every request, so that each request goes
/// through `accept` again.
fn fresh_connection_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// The number in the `open_connections=N` field of the draining log line.
fn open_connections(line: &str) -> usize {
    line.split("open_connections=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no open_connections in {line:?}"))
}

/// How long a connection to a closed listener may stay open before it counts as queued on a
/// listener that is still open but no longer accepting.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Asserts that nothing serves `addr` any more: a connection is refused, or closed at once
/// without a response. One that just hangs sits in the backlog of a listener that was not
/// closed, which would hold new clients until the process exits instead of sending them to
/// another replica.
async fn assert_not_served(addr: SocketAddr) {
    let connected = timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect attempt within the timeout");
    let mut stream = match connected {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            return;
        }
        Ok(stream) => stream,
    };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = timeout(CLOSED_WITHIN, stream.read(&mut buf))
        .await
        .expect("a new connection was neither refused nor closed: the listener is still open");
    if let Ok(n) = read {
        assert_eq!(
            n,
            0,
            "a closed listener answered: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

fn assert_exit_0(proxy: &mut ProxyProcess) {
    let status = blocking(|| proxy.wait_exit());
    assert_eq!(status.code(), Some(0), "{status}:\n{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_listener_and_finishes_the_request_in_flight() {
    let mut slow = SlowBackend::start().await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &slow.backend.url()), ("DRAIN_TIMEOUT", "10s")]);
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    slow.wait_arrived().await;

    proxy.signal("TERM");
    let line = blocking(|| proxy.wait_for_log("draining"));
    assert_eq!(open_connections(&line), 1, "{line}");
    assert_not_served(proxy.addr).await;

    slow.release();
    let reply = timeout(TIMEOUT, in_flight)
        .await
        .expect("the request in flight completed within the timeout")
        .expect("request task");
    assert_eq!((reply.status, reply.body.as_str()), (200, "done"));
    assert_exit_0(&mut proxy);
    let output = proxy.output();
    assert!(output.contains("SIGTERM"), "{output}");
    assert!(output.contains("drained"), "{output}");
    assert!(!output.contains("drain timeout"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_keep_alive_connection_exits_at_once() {
    let backend = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url()), ("DRAIN_TIMEOUT", "30s")]);
    // The client keeps its connection open in its pool after the response.
    let client = client();
    assert_eq!(get(&client, &proxy.url("/")).await.status, 200);

    let signalled = Instant::now();
    proxy.signal("TERM");
    let line = blocking(|| proxy.wait_for_log("draining"));
    assert_eq!(open_connections(&line), 1, "{line}");
    assert_exit_0(&mut proxy);
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} with an idle connection"
    );
    let output = proxy.output();
    assert!(output.contains("drained"), "{output}");
    assert!(!output.contains("drain timeout"), "{output}");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_silent_connection_exits_at_once() {
    let backend = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url()), ("DRAIN_TIMEOUT", "30s")]);
    // A connection that never sends a byte, then one request: connections are accepted in
    // order, so once the request is answered the silent one has been accepted too.
    let silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let client = client();
    assert_eq!(get(&client, &proxy.url("/")).await.status, 200);

    let signalled = Instant::now();
    proxy.signal("TERM");
    let line = blocking(|| proxy.wait_for_log("draining"));
    assert_eq!(open_connections(&line), 2, "{line}");
    assert_exit_0(&mut proxy);
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} with a silent connection"
    );
    assert!(proxy.output().contains("drained"), "{}", proxy.output());
    drop((silent, client));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outliving_the_drain_timeout_does_not_hold_the_exit() {
    let mut slow = SlowBackend::start().await;
    let mut proxy =
        ProxyProcess::start(&[("BLUE", &slow.backend.url()), ("DRAIN_TIMEOUT", "300ms")]);
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        client()
            .request(Request::get(url).body(Full::default()).unwrap())
            .await
    });
    slow.wait_arrived().await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    assert_exit_0(&mut proxy);
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(300), "exited after {took:?}");
    let output = proxy.output();
    assert!(output.contains("drain timeout"), "{output}");
    assert!(!output.contains("drained"), "{output}");

    // The cut request fails rather than hanging or getting a made-up answer.
    let result = timeout(TIMEOUT, in_flight)
        .await
        .expect("the cut request ended within the timeout")
        .expect("request task");
    assert!(result.is_err(), "got {:?}", result.map(|r| r.status()));
    slow.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_address_takes_over() {
    let old_backend = Backend::echo("old").await;
    let new_backend = Backend::echo("new").await;
    let mut old = ProxyProcess::start(&[("BLUE", &old_backend.url())]);
    let listen = old.addr.to_string();
    let mut new = ProxyProcess::start(&[("BLUE", &new_backend.url()), ("LISTEN", &listen)]);
    assert_eq!(new.addr, old.addr);
    let url = old.url("/");

    // Both processes accept: the kernel spreads new connections over the two sockets.
    let client = fresh_connection_client();
    let mut served = BTreeSet::new();
    for _ in 0..64 {
        let r = get(&client, &url).await;
        assert_eq!(r.status, 200);
        served.insert(r.headers["x-backend"].to_str().unwrap().to_string());
    }
    assert_eq!(served, BTreeSet::from(["new".into(), "old".into()]));

    // Once the old process has closed its listener, every connection goes to the new one,
    // while the old one drains and exits, and after it has gone.
    old.signal("TERM");
    blocking(|| old.wait_for_log("draining"));
    for _ in 0..64 {
        let r = get(&client, &url).await;
        assert_eq!(
            (r.status, r.headers["x-backend"].to_str().unwrap()),
            (200, "new")
        );
    }
    assert_exit_0(&mut old);
    for _ in 0..16 {
        let r = get(&client, &url).await;
        assert_eq!(
            (r.status, r.headers["x-backend"].to_str().unwrap()),
            (200, "new")
        );
    }

    new.signal("TERM");
    assert_exit_0(&mut new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let backend = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let client = client();
    assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    proxy.signal("INT");
    assert_exit_0(&mut proxy);
    let output = proxy.output();
    assert!(output.contains("SIGINT"), "{output}");
    assert!(output.contains("drained"), "{output}");
}
