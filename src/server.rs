//! The client-facing listener: accepts connections, serves HTTP/1.1 and HTTP/2 cleartext on
//! them, and drains them on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{debug, info, warn};

use crate::proxy::{Peer, Proxy};

/// A client gets this long to send a request head; slow-loris connections are cut after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on a request head (HTTP/1 read buffer, HTTP/2 header list); larger gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const LISTEN_BACKLOG: u32 = 1024;

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
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
        let client = Peer::new(peer);
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &client).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            connections.dec();
        });
    }

    drop(listener);
    info!(
        open_connections = graceful.count(),
        open_tunnels = proxy.open_tunnels(),
        drain_timeout = %humantime::format_duration(drain_timeout),
        "listener closed, draining"
    );
    let drained = async {
        graceful.shutdown().await;
        proxy.tunnels_closed().await;
    };
    match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => info!("drained, exiting"),
        Err(_) => warn!("drain timeout reached, closing the remaining connections"),
    }
}
