//! The client-facing listener: accepts connections, serves HTTP/1.1 and HTTP/2 cleartext on
//! them, and drains them on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::activity::Activity;
use crate::client_socket::{ClientSocket, Watch};
use crate::clock::PollClock;
use crate::proxy::{Peer, Proxy};

/// A client gets this long to send a request head; slow-loris connections are cut after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on a request head (HTTP/1 read buffer, HTTP/2 header list); larger gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const LISTEN_BACKLOG: u32 = 1024;
/// What an HTTP/2 prior-knowledge client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a connection whose first bytes are only the start of the preface is looked at
/// again. Real clients send the whole preface in one segment, so this wait is rare.
const PREFACE_RECHECK: Duration = Duration::from_millis(5);

/// Binds with SO_REUSEPORT, so a new process can take over the port while this one drains.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` resolves, then stops accepting and gives open connections up to
/// `drain_timeout` to finish their in-flight requests, and upgraded connections (WebSocket)
/// up to the same deadline to close. Idle keep-alive connections are closed at once.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new());
    // Every connection task holds a receiver: the drain announces itself by sending, and it
    // is over when the last receiver is gone.
    let (draining, _) = watch::channel(());
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connections = proxy.metrics().connections_open.clone();
        connections.inc();
        let proxy = proxy.clone();
        let protocols = protocols.clone();
        let draining = draining.subscribe();
        tokio::spawn(async move {
            if let Err(e) = protocols.serve(stream, peer, proxy, draining).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            connections.dec();
        });
    }

    drop(listener);
    info!(
        open_connections = draining.receiver_count(),
        open_tunnels = proxy.open_tunnels(),
        drain_timeout = %humantime::format_duration(drain_timeout),
        "listener closed, draining"
    );
    let _ = draining.send(());
    let drained = async {
        draining.closed().await;
        proxy.tunnels_closed().await;
    };
    match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => info!("drained, exiting"),
        Err(_) => warn!("drain timeout reached, closing the remaining connections"),
    }
}

/// hyper's HTTP/1 and HTTP/2 connection builders, chosen per connection by its first bytes.
///
/// This replaces hyper-util's `auto` builder, which reads the first 24 bytes itself and
/// replays them through a wrapper around every later read. That replay costs a second read on
/// each new connection and grows hyper's read buffer of every HTTP/1 connection from 8 to 16
/// KiB. Peeking leaves the bytes in the socket, so hyper reads the stream directly.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new() -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            // The connection's own idle timer does this job (see `until_drained`), without a
            // timer per request.
            .header_read_timeout(None)
            // No read-ahead while a request is in flight: the connection's driver watches for
            // the client leaving instead (see `crate::client_socket`).
            .half_close(true)
            // The size check of the buffer alone misses a head that arrives whole.
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(MAX_HEADER_BYTES);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        Protocols { http1, http2 }
    }

    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        proxy: Arc<Proxy>,
        mut draining: watch::Receiver<()>,
    ) -> Result<(), hyper::Error> {
        let protocol = tokio::select! {
            sniffed = tokio::time::timeout(HEADER_READ_TIMEOUT, sniff(&stream)) => match sniffed {
                Ok(Ok(Some(protocol))) => protocol,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "connection failed before its first request");
                    return Ok(());
                }
                Err(_) => {
                    debug!(%peer, "no request within the header read timeout, closing");
                    return Ok(());
                }
            },
            // Nothing was asked yet, so nothing is lost by closing now.
            _ = draining.changed() => return Ok(()),
        };
        let client = Peer::new(peer, proxy.logs_access());
        let activity = client.activity.clone();
        // Behind one reference count: a request clones one `Arc`, not the proxy and each part
        // of the peer.
        let shared = Arc::new((proxy, client));
        let service = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let (mut parts, body) = req.into_parts();
            async move {
                let (proxy, client) = &*shared;
                Ok::<_, Infallible>(proxy.handle(&mut parts, body, client).await)
            }
        });
        match protocol {
            Protocol::Http1 => {
                let socket = ClientSocket::new(stream);
                let io = TokioIo::new(socket.clone());
                let conn = self.http1.serve_connection(io, service).with_upgrades();
                let watched = Some((&*activity, &socket));
                until_drained(conn, draining, watched, |c| c.graceful_shutdown()).await
            }
            // Boxed: HTTP/2 is the rare case here, and its state would double every task.
            // A client's stream resets and `GOAWAY` tell hyper when its requests are gone.
            Protocol::Http2 => {
                let io = TokioIo::new(stream);
                let conn = Box::pin(self.http2.serve_connection(io, service));
                until_drained(conn, draining, None, |c| {
                    c.get_mut().as_mut().graceful_shutdown()
                })
                .await
            }
        }
    }
}

enum Protocol {
    Http1,
    Http2,
}

/// Which protocol the client speaks, from its first bytes, read without consuming them.
/// `None`: the client closed before sending anything.
async fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        if first[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        // "PRI " starts no valid HTTP/1 request; hyper checks the rest of the preface.
        if n >= 4 {
            return Ok(Some(Protocol::Http2));
        }
        // A peek returns at once while any byte is unread, so waiting for readiness would
        // spin: look again shortly.
        tokio::time::sleep(PREFACE_RECHECK).await;
    }
}

/// Drives a connection to its end, asking it to finish gracefully once the drain starts:
/// in-flight requests complete, idle keep-alive connections close at once.
/// With `http1` (its activity and socket): an HTTP/1 connection with no request in flight and
/// no complete request head for HEADER_READ_TIMEOUT is closed (a slowloris client, or a
/// keep-alive connection nobody uses). Its one timer is looked at when it fires: no
/// per-request timer. And while a request is in flight, a client that leaves (closes, resets,
/// or half-closes as nginx counts it) ends the connection and drops the request, whose
/// exchange then logs 499.
///
/// The connection is polled at every wake-up (twice per request: the request, then the
/// upstream's answer); the drain signal and the timer only when one of them woke the task:
/// they are polled with a waker of their own ([`Raised`]) that notes it.
async fn until_drained<C>(
    conn: C,
    mut draining: watch::Receiver<()>,
    http1: Option<(&Activity, &ClientSocket)>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    let changed = draining.changed();
    tokio::pin!(changed);
    let raised = Arc::new(Raised::default());
    let side = Waker::from(raised.clone());
    let mut known: Option<Waker> = None;
    let mut seen = None;
    let ended = std::future::poll_fn(|cx| {
        // Every timestamp the poll's requests take is this one (see `crate::clock`).
        let _clock = PollClock::start();
        if let Poll::Ready(done) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        // With the task's own waker, as hyper's reads of the same socket (one waker slot).
        if let Some((activity, socket)) = http1
            && activity.awaits_response()
        {
            match socket.poll_left(cx, seen) {
                Poll::Ready(Watch::Left) => {
                    debug!("the client left while its request was in flight");
                    return Poll::Ready(Some(Ok(())));
                }
                Poll::Ready(Watch::Sent(reads)) => seen = Some(reads),
                Poll::Pending => {}
            }
        }
        // The task's waker is always the same one in practice: compared here without a lock.
        let fresh = !known.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if fresh {
            known = Some(cx.waker().clone());
            raised.wake_instead(cx.waker());
        } else if !raised.take() {
            return Poll::Pending;
        }
        let mut side_cx = Context::from_waker(&side);
        if changed.as_mut().poll(&mut side_cx).is_ready() {
            return Poll::Ready(None);
        }
        let Some((activity, _)) = http1 else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(&mut side_cx).is_ready() {
            let now = tokio::time::Instant::now();
            match activity.idle_deadline(HEADER_READ_TIMEOUT) {
                // A request in flight may take as long as it takes.
                None => timer.as_mut().reset(now + HEADER_READ_TIMEOUT),
                Some(deadline) if deadline <= now.into_std() => {
                    debug!("no request within the header read timeout, closing");
                    return Poll::Ready(Some(Ok(())));
                }
                Some(deadline) => timer.as_mut().reset(deadline.into()),
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(done) = ended {
        return done;
    }
    graceful_shutdown(conn.as_mut());
    conn.await
}

/// A waker that notes it was woken, then wakes the task: what tells [`until_drained`] that
/// its signal or timer needs polling.
#[derive(Default)]
struct Raised {
    raised: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Raised {
    /// From now on, a wake-up goes to `task`.
    fn wake_instead(&self, task: &Waker) {
        *self.task.lock().expect("waker lock") = Some(task.clone());
        self.raised.store(false, Ordering::Release);
    }

    /// Whether it was woken since the last call.
    fn take(&self) -> bool {
        self.raised.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Raised {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().expect("waker lock").as_ref() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair on loopback: (what the client writes to, what the server peeks at).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    async fn sniffed(chunks: &[&[u8]]) -> Option<&'static str> {
        let (mut client, server) = pair().await;
        let sniffing = tokio::spawn(async move {
            let protocol = sniff(&server).await.unwrap();
            // Nothing was consumed: hyper reads the same bytes.
            let mut first = [0u8; 3];
            let n = server.peek(&mut first).await.unwrap();
            (protocol, first[..n].to_vec())
        });
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        client.shutdown().await.unwrap();
        let (protocol, first) = tokio::time::timeout(Duration::from_secs(10), sniffing)
            .await
            .expect("sniffed within the timeout")
            .unwrap();
        if let Some(byte) = chunks.iter().flat_map(|c| c.iter()).next() {
            assert_eq!(first[0], *byte);
        }
        protocol.map(|p| match p {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        })
    }

    #[tokio::test]
    async fn the_first_bytes_tell_the_protocol_and_stay_unread() {
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\n\r\n"]).await, Some("http1"));
        assert_eq!(sniffed(&[H2_PREFACE]).await, Some("http2"));
        // Split inside the shared start of POST and PRI: decided once a byte differs.
        assert_eq!(sniffed(&[b"P", b"OST / HTTP/1.1\r\n"]).await, Some("http1"));
        assert_eq!(sniffed(&[b"PR", &H2_PREFACE[2..]]).await, Some("http2"));
        assert_eq!(sniffed(&[]).await, None);
    }
}
