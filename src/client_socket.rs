//! A client's TCP socket, shared by hyper, which reads and writes it, and by the connection's
//! driver (`crate::server`), which watches it for the client leaving while a request is in
//! flight (nginx's 499: the upstream's work is dropped at once).
//!
//! hyper can watch for that itself: it reads ahead while a request is in flight. But each such
//! read first makes room in hyper's read buffer, which the request's fields still share, so
//! hyper allocated a new 8 KiB buffer for every request, and the read-ahead cost about 0.75k
//! instructions per request on top. With hyper's `half_close` on it does not read ahead, and the
//! driver asks the socket instead: a readiness check that costs nothing until the client sends
//! or closes something.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct ClientSocket(Arc<Shared>);

struct Shared {
    stream: TcpStream,
    /// Reads that returned bytes: the watch looks again once hyper has taken what it saw.
    reads: AtomicU64,
}

/// What [`ClientSocket::poll_left`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// The client closed or reset its side.
    Left,
    /// The client sent bytes (its body, or a pipelined request) that hyper has not read yet;
    /// not looked at again until hyper reads.
    Sent(u64),
}

impl ClientSocket {
    pub fn new(stream: TcpStream) -> ClientSocket {
        ClientSocket(Arc::new(Shared {
            stream,
            reads: AtomicU64::new(0),
        }))
    }

    /// Whether the client left. `Pending` (the task woken when that changes) while it neither
    /// sends nor closes. `seen`: the [`Watch::Sent`] of the last look, if any; while hyper
    /// has not read since, the bytes are still those and the socket is not asked again (no
    /// system call per wake-up for a pipelined request that waits its turn).
    ///
    /// For a request whose body hyper has read whole (until then, the client leaving is for
    /// hyper's read to see, as a broken body): bytes hyper holds unread are not in the socket.
    pub fn poll_left(&self, cx: &mut Context<'_>, seen: Option<u64>) -> Poll<Watch> {
        let reads = self.0.reads.load(Ordering::Relaxed);
        if seen == Some(reads) {
            return Poll::Pending;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match ready!(self.0.stream.poll_peek(cx, &mut buf)) {
            Ok(0) | Err(_) => Poll::Ready(Watch::Left),
            Ok(_) => Poll::Ready(Watch::Sent(reads)),
        }
    }
}

/// Reads and writes as tokio's own `TcpStream` does, through its `&self` methods: an
/// operation that moves fewer bytes than the `asked` shows the socket drained (or full), so its
/// readiness is cleared at once rather than by a system call that would block. The readiness
/// cleared is the one seen before the operation (the outer `try_io`), so bytes that arrive in
/// between still wake the task.
fn partial(
    stream: &TcpStream,
    interest: Interest,
    asked: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = None;
    let tried = stream.try_io(interest, || {
        let n = op()?;
        done = Some(n);
        if n > 0 && n < asked {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match done {
        Some(n) => Ok(n),
        // `tried` is the operation's error (an `Ok` here would only mean: try again).
        None => tried.and(Err(io::ErrorKind::WouldBlock.into())),
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        loop {
            ready!(shared.stream.poll_read_ready(cx))?;
            let asked = buf.remaining();
            let read = partial(&shared.stream, Interest::READABLE, asked, || {
                shared.stream.try_read_buf(buf)
            });
            match read {
                Ok(n) => {
                    if n > 0 {
                        shared.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        let asked = bufs.iter().map(|b| b.len()).sum();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match partial(stream, Interest::WRITABLE, asked, || {
                stream.try_write_vectored(bufs)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0.stream).shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// (the client's end, the proxy's socket)
    async fn pair() -> (TcpStream, ClientSocket) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), ClientSocket::new(accepted.unwrap().0))
    }

    /// The first look that is not `Pending`, within WAIT.
    async fn look(socket: &ClientSocket, seen: Option<u64>) -> Watch {
        let polled = std::future::poll_fn(|cx| socket.poll_left(cx, seen));
        tokio::time::timeout(WAIT, polled)
            .await
            .expect("a look within WAIT")
    }

    /// Whether a look is `Pending` now.
    fn pending(socket: &ClientSocket, seen: Option<u64>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        socket.poll_left(&mut cx, seen).is_pending()
    }

    #[tokio::test]
    async fn a_quiet_client_is_pending_and_a_closed_one_left() {
        let (client, socket) = pair().await;
        assert!(pending(&socket, None));
        drop(client);
        assert_eq!(look(&socket, None).await, Watch::Left);
    }

    #[tokio::test]
    async fn bytes_sent_are_seen_once_until_read_then_a_half_close_is_leaving() {
        let (mut client, mut socket) = pair().await;
        client.write_all(b"body").await.unwrap();
        let Watch::Sent(reads) = look(&socket, None).await else {
            panic!("bytes sent are not a client leaving");
        };
        // Not asked again while nobody read them.
        assert!(pending(&socket, Some(reads)));
        let mut got = [0u8; 16];
        let n = tokio::time::timeout(WAIT, socket.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..n], b"body");
        client.shutdown().await.unwrap();
        assert_eq!(look(&socket, Some(reads)).await, Watch::Left);
        // What hyper reads after that is the end of the stream.
        let n = tokio::time::timeout(WAIT, socket.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn reads_and_writes_go_through_whole() {
        let (mut client, mut socket) = pair().await;
        // More than a socket buffer takes at once: writes come back partial and wait.
        let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            socket.write_all(&sent).await.unwrap();
            socket.shutdown().await.unwrap();
            socket
        });
        let mut received = Vec::new();
        tokio::time::timeout(WAIT, client.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert!(
            received == expected,
            "{} bytes of {}",
            received.len(),
            expected.len()
        );
        let mut socket = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(WAIT, socket.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping");
    }
}
