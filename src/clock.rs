//! The clock of a client connection's task: the time read once when the task's poll begins,
//! for every timestamp its requests take during that poll (start, time to the response head,
//! end, the response head's deadline, a connection's return to its pool, the retry window).
//!
//! A poll runs for microseconds without waiting, so its start is as good a time for each of
//! them: a request that takes two wake-ups reads the clock twice instead of six times
//! (`perf`: `clock_gettime` was 1.2% of the proxy's time; nginx, which reads the clock once
//! per event loop turn, 0.07%). Outside such a poll (other tasks, tests) [`now`] reads the
//! clock itself.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// Set only while a connection task's poll runs on this thread: a task runs on one thread
    /// for the whole of a poll, so no other task's poll sees it.
    static POLL_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time, as of the current connection poll's start when there is one.
pub fn now() -> Instant {
    POLL_STARTED.get().unwrap_or_else(Instant::now)
}

/// Keeps the time of one poll for [`now`]; dropped when the poll ends, however it ends.
pub struct PollClock {
    /// What was there before: nothing, unless polls nest.
    outer: Option<Instant>,
}

impl PollClock {
    pub fn start() -> PollClock {
        PollClock {
            outer: POLL_STARTED.replace(Some(Instant::now())),
        }
    }
}

impl Drop for PollClock {
    fn drop(&mut self) {
        POLL_STARTED.set(self.outer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_reads_the_clock_once_and_gives_it_back_when_it_ends() {
        let before = now();
        let poll = PollClock::start();
        let during = now();
        assert!(during >= before);
        // However long the poll takes, its time stays the one it started with.
        while Instant::now() == during {}
        assert_eq!(now(), during);
        drop(poll);
        assert!(now() > during, "outside a poll the clock is read again");
    }

    #[test]
    fn a_nested_poll_leaves_the_outer_one_its_time() {
        let outer = PollClock::start();
        let outer_time = now();
        while Instant::now() == outer_time {}
        let inner = PollClock::start();
        assert!(now() > outer_time);
        drop(inner);
        assert_eq!(now(), outer_time);
        drop(outer);
    }
}
