//! Bytes held in memory or on disk ahead of the slower side, against a process-wide cap, so
//! that a flood of uploads or of slow readers cannot exhaust either.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The process-wide cap on buffered body bytes: 128 full 1 MiB bodies at once.
pub const BUDGET: u64 = 128 << 20;

/// Buffered bytes in use, against a cap.
pub struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(cap: u64) -> Arc<Budget> {
        Arc::new(Budget {
            cap,
            used: AtomicU64::new(0),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&u| u <= self.cap)
            })
            .is_ok()
    }
}

/// Bytes held from the budget until dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    pub fn new(budget: &Arc<Budget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Holds `n` more bytes; false (and nothing held) when the budget has no room.
    pub fn grow(&mut self, n: u64) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_cap_and_frees_on_drop() {
        let budget = Budget::new(100);
        let mut a = Reservation::new(&budget);
        assert!(a.grow(60));
        let mut b = Reservation::new(&budget);
        assert!(!b.grow(41));
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
