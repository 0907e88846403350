//! The signals that stop colorproxy: SIGTERM (docker stop, a rolling update) and SIGINT
//! (Ctrl-C). As PID 1 in a container, nothing else would deliver them to us.

use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Registers the handlers up front, so a signal that arrives during startup is not lost.
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next stop signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
