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
        self.idle
            .lock()
            .expect("pool lock")
            .push(Idle { sender, since });
    }

    /// Closes connections idle since before `now - IDLE_TIMEOUT`, and forgets closed ones.
    pub fn expire(&self, now: Instant) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
    }

    pub fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}
