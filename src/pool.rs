//! Keep-alive connections to one endpoint that wait for the next request.
//!
//! Each endpoint owns its idle connections, so a request finds them without a lookup, and an
//! endpoint that discovery removes takes its idle connections with it once its last request
//! ends. The most recently used connection goes first: the busy ones stay warm and the surplus
//! of a past burst ages out. A connection is checked as it leaves: one the upstream closed
//! while it waited (or that has bytes nobody asked for) is dropped, and the next is tried.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::codec::Connection;

/// Idle upstream connections are closed well before IPVS forgets them (900 s) and before
/// typical app servers' own keep-alive timeouts reap them under our feet.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A burst's surplus beyond this many idle connections per endpoint closes at once instead of
/// waiting out IDLE_TIMEOUT: memory after a spike stays bounded.
pub const MAX_IDLE: usize = 1024;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Pool {
    /// The most recently returned connection that is still usable, if any.
    pub fn checkout(&self) -> Option<Connection> {
        loop {
            let idle = self.idle.lock().expect("pool lock").pop()?;
            // Checked (and, if closed, dropped) outside the lock.
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
    }

    /// Returns a connection whose exchange completed, for the next request.
    pub fn checkin(&self, conn: Connection) {
        let since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since });
        }
    }

    /// Closes connections idle since before `now - IDLE_TIMEOUT`, and those the upstream
    /// closed.
    pub fn expire(&self, now: Instant) {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().expect("pool lock");
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| now.duration_since(c.since) < IDLE_TIMEOUT && c.conn.is_usable());
            *idle = keep;
            expired
        };
        drop(expired);
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection to a local listener, and the listener's end of it.
    async fn conn(listener: &TcpListener) -> (Connection, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Connection::new(client.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn closed_and_chatty_connections_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (a, _pa) = conn(&listener).await;
        let (b, pb) = conn(&listener).await;
        let (c, mut pc) = conn(&listener).await;
        let (d, _pd) = conn(&listener).await;
        // b's upstream closes it and c's sends bytes nobody asked for, before they wait.
        drop(pb);
        pc.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, b.readable())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(wait, c.readable())
            .await
            .unwrap()
            .unwrap();
        for conn in [a, b, c, d] {
            pool.checkin(conn);
        }
        assert_eq!(pool.idle(), 4);
        // d, then a: b and c are dropped on the way.
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let mut peers = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (conn, peer) = conn(&listener).await;
            pool.checkin(conn);
            peers.push(peer);
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (a, _pa) = conn(&listener).await;
        pool.checkin(a);
        let now = Instant::now();
        pool.expire(now);
        assert_eq!(pool.idle(), 1);
        pool.expire(now + IDLE_TIMEOUT);
        assert_eq!(pool.idle(), 0);
    }
}
