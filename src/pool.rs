//! Keep-alive connections to one endpoint that wait for the next request, and the requests
//! that wait for a connection.
//!
//! Each endpoint owns its idle connections, so a request finds them without a lookup, and an
//! endpoint that discovery removes takes its idle connections with it once its last request
//! ends. The most recently used connection goes first: the busy ones stay warm and the surplus
//! of a past burst ages out. A connection is checked as it leaves: one the upstream closed
//! while it waited (or that has bytes nobody asked for) is dropped, and the next is tried.
//!
//! A request that finds no idle connection opens one, and meanwhile waits for one to come back
//! (as hyper-util's pool does): whichever comes first serves it, and a new connection that lost
//! the race joins the pool. Connections that come back go to the requests waiting for one,
//! before the idle list. An app server that serves one connection at a time (Python's
//! `HTTPServer`, a sync worker) never reads a new connection while it holds another: in a
//! burst, requests are served on the connection it holds instead of failing on connects that
//! time out in its full accept queue, or waiting on one it never reads.
//!
//! Waiters are served oldest first while the queue drains. Once the oldest has waited past its
//! `overdue_at` (CONNECT_TIMEOUT), the queue is not draining, and the newest goes first
//! (adaptive LIFO, as in Facebook's "Fail at Scale"): behind a backlog of thousands (a flood of
//! slow readers), a request that just came is served while its client still waits, instead of
//! every request waiting its turn until its client gives up. The old ones wait on, within
//! their own bounds.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::clock;
use crate::codec::Connection;

/// Idle upstream connections are closed well before IPVS forgets them (900 s) and before
/// typical app servers' own keep-alive timeouts reap them under our feet.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A burst's surplus beyond this many idle connections per endpoint closes at once instead of
/// waiting out IDLE_TIMEOUT: memory after a spike stays bounded.
pub const MAX_IDLE: usize = 1024;

/// Waiters that gave up stay queued until a connection comes back or the queue grows past
/// twice its size at the last sweep (and at least this): a dead endpoint with no connection
/// coming back does not collect them.
const SWEEP_AT_LEAST: usize = 64;

#[derive(Default)]
pub struct Pool {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    idle: Vec<Idle>,
    /// Requests waiting for a connection, oldest first.
    waiters: VecDeque<Queued>,
    /// The queue length at which gone waiters are swept out next.
    sweep_at: usize,
    /// When a connection last came back: the endpoint is answering.
    last_checkin: Option<Instant>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

struct Queued {
    tx: oneshot::Sender<Connection>,
    /// Past this, the wait is long: the queue is not draining.
    overdue_at: Instant,
    /// When the request's client connection was accepted.
    client_since: Instant,
}

impl Pool {
    /// The most recently returned connection that is still usable, if any.
    pub fn checkout(&self) -> Option<Connection> {
        loop {
            let idle = self.inner.lock().expect("pool lock").idle.pop()?;
            // Checked (and, if closed, dropped) outside the lock.
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
    }

    /// Returns a connection whose exchange completed: to the oldest request waiting for one,
    /// else to the idle list for the next request.
    pub fn checkin(&self, conn: Connection) {
        self.give(conn, true);
    }

    /// Adds a new connection whose request was served by another one meanwhile.
    pub fn checkin_new(&self, conn: Connection) {
        self.give(conn, false);
    }

    fn give(&self, mut conn: Connection, answered: bool) {
        let since = clock::now();
        let mut inner = self.inner.lock().expect("pool lock");
        if answered {
            inner.last_checkin = Some(since);
        }
        loop {
            // Those that gave up first: an abandoned waiter is no sign of a backlog.
            while inner.waiters.front().is_some_and(|w| w.tx.is_closed()) {
                inner.waiters.pop_front();
            }
            let overloaded = match inner.waiters.front() {
                None => break,
                Some(oldest) => oldest.overdue_at <= since,
            };
            let waiter = if overloaded {
                // The newest client connection's, the latest queued of those.
                let newest = (0..inner.waiters.len())
                    .max_by_key(|&i| (inner.waiters[i].client_since, i))
                    .expect("a waiter");
                inner.waiters.remove(newest)
            } else {
                inner.waiters.pop_front()
            };
            match waiter.expect("a waiter").tx.send(conn) {
                Ok(()) => return,
                // That request is gone (served by its own connect, or cancelled).
                Err(back) => conn = back,
            }
        }
        if inner.idle.len() < MAX_IDLE {
            inner.idle.push(Idle { conn, since });
        }
    }

    /// Whether a connection came back from an exchange at or after `since`: the endpoint is
    /// answering.
    pub fn checked_in_since(&self, since: Instant) -> bool {
        self.inner
            .lock()
            .expect("pool lock")
            .last_checkin
            .is_some_and(|at| at >= since)
    }

    /// Whether the oldest request waiting for a connection has waited past its `overdue_at`:
    /// the queue is not draining.
    pub fn backlogged(&self, now: Instant) -> bool {
        let inner = self.inner.lock().expect("pool lock");
        let oldest = inner.waiters.iter().find(|w| !w.tx.is_closed());
        oldest.is_some_and(|w| w.overdue_at <= now)
    }

    /// Queues the caller for a connection that comes back; see [`Waiter`]. `overdue_at`:
    /// once the oldest waiter is waiting past it, the queue is not draining. `client_since`:
    /// when the request's client connection was accepted.
    pub fn wait(&self, overdue_at: Instant, client_since: Instant) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().expect("pool lock");
        if inner.waiters.len() >= inner.sweep_at {
            inner.waiters.retain(|w| !w.tx.is_closed());
            inner.sweep_at = (inner.waiters.len() * 2).max(SWEEP_AT_LEAST);
        }
        inner.waiters.push_back(Queued {
            tx,
            overdue_at,
            client_since,
        });
        Waiter { pool: self, rx }
    }

    /// Closes connections idle since before `now - IDLE_TIMEOUT`, and those the upstream
    /// closed.
    pub fn expire(&self, now: Instant) {
        let expired: Vec<Idle> = {
            let mut inner = self.inner.lock().expect("pool lock");
            inner.waiters.retain(|w| !w.tx.is_closed());
            let (keep, expired) = std::mem::take(&mut inner.idle)
                .into_iter()
                .partition(|c| now.duration_since(c.since) < IDLE_TIMEOUT && c.conn.is_usable());
            inner.idle = keep;
            expired
        };
        drop(expired);
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.inner.lock().expect("pool lock").idle.len()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.inner.lock().expect("pool lock").waiters.len()
    }
}

/// A request's place in the queue for a connection: resolves to the connection it was given,
/// or to `None` if none can come (the pool is gone). Dropped (served otherwise, or cancelled),
/// it hands a connection that reached it meanwhile on, so none is lost in the race.
pub struct Waiter<'a> {
    pool: &'a Pool,
    rx: oneshot::Receiver<Connection>,
}

impl Future for Waiter<'_> {
    type Output = Option<Connection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Connection>> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(conn) = self.rx.try_recv() {
            self.pool.give(conn, false);
        }
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

    /// Which of `waiters` holds a connection now (polled once, not awaited).
    fn given(waiters: &mut [Waiter<'_>]) -> Vec<usize> {
        use futures_util::FutureExt;
        let mut given = Vec::new();
        for (i, w) in waiters.iter_mut().enumerate() {
            if let Some(Some(_)) = w.now_or_never() {
                given.push(i);
            }
        }
        given
    }

    #[tokio::test]
    async fn returned_connections_go_to_the_oldest_waiter_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let later = Instant::now() + Duration::from_secs(60);
        let now = Instant::now();
        let mut waiters = vec![
            pool.wait(later, now),
            pool.wait(later, now),
            pool.wait(later, now),
        ];
        let (a, _pa) = conn(&listener).await;
        pool.checkin(a);
        assert_eq!(given(&mut waiters), [0]);
        let (b, _pb) = conn(&listener).await;
        pool.checkin(b);
        assert_eq!(given(&mut waiters[1..]), [0]);
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn a_queue_that_does_not_drain_serves_the_newest_client_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let (old, new) = (now - Duration::from_secs(5), now);
        // The oldest is overdue: the backlog is not draining. The newest client connection's
        // request goes first, ahead of one queued later on an older connection (the next
        // request of a client already served); then the latest queued.
        let mut waiters = vec![
            pool.wait(now, old),
            pool.wait(later, new),
            pool.wait(later, old),
            pool.wait(later, old),
        ];
        let (a, _pa) = conn(&listener).await;
        pool.checkin(a);
        assert_eq!(given(&mut waiters), [1]);
        let (b, _pb) = conn(&listener).await;
        pool.checkin(b);
        assert_eq!(given(&mut waiters[2..]), [1]);
    }

    #[tokio::test]
    async fn a_connection_that_reaches_a_waiter_that_left_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let later = Instant::now() + Duration::from_secs(60);
        // Gone before a connection came: skipped.
        let now = Instant::now();
        drop(pool.wait(later, now));
        let first = pool.wait(later, now);
        let mut second = vec![pool.wait(later, now)];
        let (a, _pa) = conn(&listener).await;
        pool.checkin(a);
        assert!(given(&mut second).is_empty());
        // Served by its own connect as the connection reached it: the next one gets it.
        drop(first);
        assert_eq!(given(&mut second), [0]);
        drop(second);
        // With nobody waiting, a connection, new or returned, waits for the next request.
        let (b, _pb) = conn(&listener).await;
        pool.checkin_new(b);
        assert_eq!(pool.idle(), 1);
        assert!(pool.checkout().is_some());
    }

    #[test]
    fn waiters_that_left_do_not_pile_up() {
        let pool = Pool::default();
        let later = Instant::now() + Duration::from_secs(60);
        for _ in 0..10_000 {
            drop(pool.wait(later, Instant::now()));
        }
        assert!(pool.queued() <= SWEEP_AT_LEAST, "{}", pool.queued());
        pool.expire(Instant::now());
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test]
    async fn only_returned_connections_tell_that_the_endpoint_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let start = Instant::now();
        let (a, _pa) = conn(&listener).await;
        pool.checkin_new(a);
        assert!(!pool.checked_in_since(start));
        let (b, _pb) = conn(&listener).await;
        pool.checkin(b);
        assert!(pool.checked_in_since(start));
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
