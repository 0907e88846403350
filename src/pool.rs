//! Keep-alive connections to one endpoint that wait for the next request.
//!
//! Each endpoint owns its idle connections, so a request finds them without a lookup, and an
//! endpoint that discovery removes takes its idle connections with it once its last request
//! ends. The most recently used connection goes first: the busy ones stay warm and the surplus
//! of a past burst ages out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use crate::exchange::RequestBody;

/// Idle upstream connections are closed well before IPVS forgets them (900 s) and before
/// typical app servers' own keep-alive timeouts reap them under our feet.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A burst's surplus beyond this many idle connections per endpoint closes at once instead of
/// waiting out IDLE_TIMEOUT: memory after a spike stays bounded.
pub const MAX_IDLE: usize = 1024;

pub type Sender = SendRequest<RequestBody>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    /// The most recently returned connection that is still open, if any.
    pub fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed, for the next request.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since });
        }
    }

    /// Closes connections idle since before `now - IDLE_TIMEOUT`, and forgets closed ones.
    pub fn expire(&self, now: Instant) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;

    /// A sender over an in-memory pipe, and the task that drives its connection.
    async fn conn() -> (Sender, tokio::task::JoinHandle<()>) {
        let (io, _peer) = tokio::io::duplex(64);
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
        let task = tokio::spawn(async move {
            let _peer = _peer;
            let _ = conn.await;
        });
        (sender, task)
    }

    #[tokio::test]
    async fn closed_connections_are_skipped() {
        let pool = Pool::default();
        let (a, _ta) = conn().await;
        let (b, tb) = conn().await;
        let (c, _tc) = conn().await;
        pool.checkin(a);
        pool.checkin(c);
        pool.checkin(b);
        // b's connection ends while b waits in the pool.
        tb.abort();
        let _ = tb.await;
        assert_eq!(pool.idle(), 3);
        let first = pool.checkout().expect("c is open");
        let second = pool.checkout().expect("a is open");
        assert!(pool.checkout().is_none());
        assert!(!first.is_closed() && !second.is_closed());
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let pool = Pool::default();
        let mut tasks = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (sender, task) = conn().await;
            pool.checkin(sender);
            tasks.push(task);
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let pool = Pool::default();
        let (a, _ta) = conn().await;
        pool.checkin(a);
        let now = Instant::now();
        pool.expire(now);
        assert_eq!(pool.idle(), 1);
        pool.expire(now + IDLE_TIMEOUT);
        assert_eq!(pool.idle(), 0);
    }
}
