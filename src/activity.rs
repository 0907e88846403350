//! Whether a client connection has a request in flight, and since when it has had none: what
//! closes an idle or slowloris connection. And whether hyper still reads a request body on
//! it: until then, a client that leaves is for hyper's read to see (a broken body); after, for
//! the connection's watch (`crate::client_socket`).
//!
//! hyper's own `header_read_timeout` arms a timer (a boxed sleep, registered and dropped) for
//! every request a connection reads. Here each exchange only counts itself in and out, and one
//! timer per connection looks now and then (see `crate::server`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Activity {
    /// Idle times are kept as microseconds since this instant (the connection's start).
    epoch: Instant,
    in_flight: AtomicU32,
    /// Requests whose body hyper still reads.
    bodies: AtomicU32,
    idle_since_us: AtomicU64,
}

/// A request body that hyper still reads, until dropped: kept with the body's unread rest.
pub struct BodyReading(Arc<Activity>);

impl Drop for BodyReading {
    fn drop(&mut self) {
        self.0.bodies.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            bodies: AtomicU32::new(0),
            idle_since_us: AtomicU64::new(0),
        }
    }

    /// When the connection was accepted.
    pub fn since(&self) -> Instant {
        self.epoch
    }

    /// A request's head has been read; it is in flight until [`Activity::end`].
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's exchange ended at `now` (its response sent, or abandoned).
    pub fn end(&self, now: Instant) {
        let us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.idle_since_us.fetch_max(us, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request's body is on its way from the client.
    pub fn body_reading(self: &Arc<Self>) -> BodyReading {
        self.bodies.fetch_add(1, Ordering::Relaxed);
        BodyReading(self.clone())
    }

    /// Whether a request is in flight and hyper reads no body: a client that leaves now is
    /// only seen by looking (hyper reads nothing until the response is out).
    pub fn awaits_response(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0 && self.bodies.load(Ordering::Relaxed) == 0
    }

    /// When the connection will have been idle for `limit`: `None` while a request is in
    /// flight. Idle means no complete request head since the last exchange ended, or since
    /// the connection was accepted.
    pub fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_micros(self.idle_since_us.load(Ordering::Relaxed));
        Some(self.epoch + since + limit)
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_awaited_once_no_body_is_read() {
        let a = Arc::new(Activity::new());
        assert!(!a.awaits_response());
        a.begin();
        let reading = a.body_reading();
        assert!(!a.awaits_response());
        drop(reading);
        assert!(a.awaits_response());
        a.end(Instant::now());
        assert!(!a.awaits_response());
    }

    #[test]
    fn idle_from_the_start_and_from_the_last_exchange() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        assert_eq!(a.idle_deadline(limit), Some(a.epoch + limit));
        a.begin();
        a.begin();
        assert_eq!(a.idle_deadline(limit), None);
        let t = a.epoch + Duration::from_secs(3);
        a.end(t);
        // Another request (pipelined) is still in flight.
        assert_eq!(a.idle_deadline(limit), None);
        a.end(t + Duration::from_secs(1));
        assert_eq!(
            a.idle_deadline(limit),
            Some(a.epoch + Duration::from_secs(4) + limit)
        );
        // An end reported late never moves the idle time back.
        a.begin();
        a.end(t);
        assert_eq!(
            a.idle_deadline(limit),
            Some(a.epoch + Duration::from_secs(4) + limit)
        );
    }
}
