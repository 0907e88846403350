//! A color's endpoints (one per Swarm task, or the name itself without discovery), the choice
//! of one per request, and passive health: endpoints that keep failing are ejected for a while.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hyper::http::uri::Authority;
use rand::{Rng, RngExt};

use crate::pool::Pool;

/// Connection failures in a row that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// The first ejection lasts this long; each further ejection without a success doubles it.
pub const EJECTION_BASE: Duration = Duration::from_secs(5);
pub const EJECTION_MAX: Duration = Duration::from_secs(60);

pub struct Endpoint {
    /// `ip:port`, or `name:port` when each new connection resolves the name (discovery off).
    pub authority: Authority,
    /// Keep-alive connections waiting for the next request.
    pub pool: Pool,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since [`epoch`]; 0 when not ejected.
    ejected_until: AtomicU64,
}

impl Endpoint {
    pub fn new(authority: Authority) -> Endpoint {
        Endpoint {
            authority,
            pool: Pool::default(),
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_live(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// [`Self::is_live`], reading the clock only for an endpoint that was ejected once (most
    /// never are), and then once for all the endpoints `now` is asked about.
    fn is_live_lazy(&self, now: &LazyNow) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= now.get()
    }

    /// A response arrived: the endpoint is healthy again. Returns whether it had been failing.
    pub fn record_success(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) == 0 && self.ejections.load(Ordering::Relaxed) == 0
        {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        true
    }

    /// A connection failed (refused, reset before a response, connect timeout). Returns the
    /// ejection time when this failure ejects the endpoint. After an ejection the endpoint gets
    /// traffic again; one more failure before a success ejects it again, for twice as long.
    pub fn record_failure(&self) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let ejections = self.ejections.load(Ordering::Relaxed);
        if failures < EJECT_AFTER_FAILURES && ejections == 0 {
            return None;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = EJECTION_BASE
            .saturating_mul(1 << (ejections - 1).min(16))
            .min(EJECTION_MAX);
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        Some(backoff)
    }
}

/// Counts a request in flight on an endpoint for as long as it lives.
pub struct InFlight(pub Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the first call: a cheap clock for ejection deadlines.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that "not ejected" (0) is always in the past.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// [`now_ms`], read at the first call of [`LazyNow::get`] only.
#[derive(Default)]
struct LazyNow(std::cell::Cell<u64>);

impl LazyNow {
    fn get(&self) -> u64 {
        // `now_ms` is never 0.
        if self.0.get() == 0 {
            self.0.set(now_ms());
        }
        self.0.get()
    }
}

/// The current endpoints of one color. Discovery replaces the list; requests read it.
#[derive(Default)]
pub struct EndpointSet {
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    /// Why the set is empty or stale, for error responses.
    last_error: Mutex<Option<String>>,
}

/// What a replacement changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<Authority>,
    pub removed: Vec<Authority>,
}

impl EndpointSet {
    pub fn new(authorities: impl IntoIterator<Item = Authority>) -> EndpointSet {
        let set = EndpointSet::default();
        set.replace(authorities);
        set
    }

    pub fn snapshot(&self) -> Arc<[Arc<Endpoint>]> {
        self.endpoints.read().expect("endpoint lock").clone()
    }

    /// Installs a new list. Endpoints that stay keep their health and in-flight counts;
    /// removed ones get no new requests, and their idle pooled connections expire.
    pub fn replace(&self, authorities: impl IntoIterator<Item = Authority>) -> Change {
        let old = self.snapshot();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        for authority in authorities {
            if next.iter().any(|e| e.authority == authority) {
                continue;
            }
            next.push(match old.iter().find(|e| e.authority == authority) {
                Some(kept) => kept.clone(),
                None => Arc::new(Endpoint::new(authority)),
            });
        }
        let change = Change {
            added: next
                .iter()
                .filter(|e| !old.iter().any(|o| o.authority == e.authority))
                .map(|e| e.authority.clone())
                .collect(),
            removed: old
                .iter()
                .filter(|o| !next.iter().any(|e| e.authority == o.authority))
                .map(|o| o.authority.clone())
                .collect(),
        };
        *self.endpoints.write().expect("endpoint lock") = next.into();
        change
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Whether any endpoint can take a request now.
    pub fn has_live(&self) -> bool {
        let now = LazyNow::default();
        self.endpoints
            .read()
            .expect("endpoint lock")
            .iter()
            .any(|e| e.is_live_lazy(&now))
    }

    /// (live, ejected) counts.
    pub fn counts(&self) -> (usize, usize) {
        let now = now_ms();
        let list = self.snapshot();
        let live = list.iter().filter(|e| e.is_live(now)).count();
        (live, list.len() - live)
    }

    /// Power of two choices: of two random eligible endpoints, the one with fewer requests in
    /// flight. Eligible means live and not in `exclude`; with `ignore_health` ejected endpoints are
    /// eligible too (when nothing is live anywhere, trying beats refusing).
    pub fn pick<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        exclude: &[Authority],
        ignore_health: bool,
    ) -> Option<Arc<Endpoint>> {
        let now = LazyNow::default();
        let list = self.endpoints.read().expect("endpoint lock");
        let eligible = |e: &Endpoint| {
            (ignore_health || e.is_live_lazy(&now)) && !exclude.contains(&e.authority)
        };
        let n = list.len();
        if n == 0 {
            return None;
        }
        let i = rng.random_range(0..n);
        let chosen = if n == 1 {
            eligible(&list[i]).then_some(i)
        } else {
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            match (eligible(&list[i]), eligible(&list[j])) {
                (true, true) if list[j].in_flight() < list[i].in_flight() => Some(j),
                (true, _) => Some(i),
                (false, true) => Some(j),
                // Both drawn ineligible: take the first eligible one after i.
                (false, false) => (1..n).map(|k| (i + k) % n).find(|&k| eligible(&list[k])),
            }
        };
        chosen.map(|k| list[k].clone())
    }
}

/// `ip:port` as an authority.
pub fn authority(addr: SocketAddr) -> Authority {
    addr.to_string()
        .parse()
        .expect("a socket address is an authority")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn auth(s: &str) -> Authority {
        s.parse().unwrap()
    }

    fn set(n: usize) -> EndpointSet {
        EndpointSet::new((0..n).map(|i| auth(&format!("10.0.0.{i}:80"))))
    }

    #[test]
    fn replace_keeps_state_and_reports_changes() {
        let s = set(3);
        let kept = s.snapshot()[1].clone();
        let _busy = InFlight::new(kept.clone());
        let change = s.replace([
            auth("10.0.0.1:80"),
            auth("10.0.0.9:80"),
            auth("10.0.0.9:80"),
        ]);
        assert_eq!(change.added, [auth("10.0.0.9:80")]);
        assert_eq!(change.removed, [auth("10.0.0.0:80"), auth("10.0.0.2:80")]);
        let now = s.snapshot();
        assert_eq!(now.len(), 2);
        assert!(Arc::ptr_eq(&now[0], &kept));
        assert_eq!(now[0].in_flight(), 1);
        assert_eq!(
            s.replace([auth("10.0.0.1:80"), auth("10.0.0.9:80")]),
            Change::default()
        );
    }

    #[test]
    fn p2c_prefers_the_less_busy_endpoint() {
        let s = set(2);
        let list = s.snapshot();
        let _busy: Vec<_> = (0..5).map(|_| InFlight::new(list[0].clone())).collect();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let e = s.pick(&mut rng, &[], false).unwrap();
            assert_eq!(e.authority, list[1].authority);
        }
    }

    #[test]
    fn p2c_spreads_evenly_when_idle() {
        let s = set(4);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            let e = s.pick(&mut rng, &[], false).unwrap();
            let i = s
                .snapshot()
                .iter()
                .position(|x| Arc::ptr_eq(x, &e))
                .unwrap();
            counts[i] += 1;
        }
        // 10,000 each; sigma ≈ 87, so ±5 sigma.
        for c in counts {
            assert!((10_000 - 433..=10_000 + 433).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ejected_and_excluded_endpoints_are_skipped() {
        let s = set(3);
        let list = s.snapshot();
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            assert_eq!(list[0].record_failure(), None);
        }
        assert_eq!(list[0].record_failure(), Some(EJECTION_BASE));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let e = s
                .pick(&mut rng, std::slice::from_ref(&list[1].authority), false)
                .unwrap();
            assert_eq!(e.authority, list[2].authority);
        }
        assert_eq!(s.counts(), (2, 1));
        // With every eligible endpoint gone, only ignore_health still finds one.
        let only0 = EndpointSet::new([list[0].authority.clone()]);
        only0.snapshot()[0]
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        assert!(only0.pick(&mut rng, &[], false).is_none());
        assert!(!only0.has_live());
        assert!(only0.pick(&mut rng, &[], true).is_some());
    }

    #[test]
    fn ejection_backs_off_and_success_resets() {
        let e = Endpoint::new(auth("10.0.0.1:80"));
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            e.record_failure();
        }
        assert_eq!(e.record_failure(), Some(EJECTION_BASE));
        assert!(!e.is_live(now_ms()));
        // Retried after the back-off, it fails once more: ejected again, for twice as long.
        assert_eq!(e.record_failure(), Some(EJECTION_BASE * 2));
        assert_eq!(e.record_failure(), Some(EJECTION_BASE * 4));
        for _ in 0..10 {
            e.record_failure();
        }
        assert_eq!(e.record_failure(), Some(EJECTION_MAX));
        assert!(e.record_success());
        assert!(e.is_live(now_ms()));
        assert!(!e.record_success());
        assert_eq!(e.record_failure(), None);
    }
}
