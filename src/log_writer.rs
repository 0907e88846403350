//! The log sink that never blocks serving: every formatted line is copied into a bounded queue
//! of bytes, and one dedicated thread writes that queue to stdout in batches. When stdout does
//! not keep up (a log driver that stalls, a pipe nobody reads), lines that do not fit are
//! dropped and counted, and one warning saying how many follows once writing resumes.
//!
//! The access line ([`crate::access_log`]) and tracing-subscriber (every other line) each
//! format a line once, into a per-thread buffer they reuse, and hand it over whole; this module
//! only adds a copy into the queue under a short lock. The writer thread then writes what
//! gathered, up to the whole queue, with one `write`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines that may wait for stdout. The queue and the batch being written swap
/// roles, so at most twice this is ever resident, and only while stdout lags. 256 KiB is
/// about 1,300 access lines, a second of them at 1,300 requests/s: a longer stall of the log
/// consumer drops lines rather than growing memory.
pub const CAPACITY: usize = 256 * 1024;

/// How long the writer lets lines gather after the first one arrives, so that a busy proxy
/// writes about a hundred batches a second instead of one line per syscall.
const LINGER: Duration = Duration::from_millis(10);

/// Lines dropped since the process started, whichever writer dropped them: the metrics
/// registry is created after logging starts, and registers a handle to this same counter.
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter behind `colorproxy_log_lines_dropped_total`.
pub fn dropped_lines() -> Counter {
    DROPPED.clone()
}

/// What to say when lines were dropped, called on the writer thread (not holding the queue)
/// with the number dropped since the last call.
pub type OnDropped = Box<dyn Fn(u64) + Send>;

struct Queue {
    pending: Vec<u8>,
    /// Lines dropped since the writer last reported.
    dropped: u64,
    /// The writer waits for a first line: the next one must wake it.
    idle: bool,
    /// A batch is being written.
    writing: bool,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    /// The writer waits here for lines.
    wake: Condvar,
    /// A flush waits here for the queue to empty.
    written: Condvar,
    /// Reported once: a stdout that fails (closed) fails for good.
    failed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while copying bytes leaves the queue consistent: keep logging.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one whole line, or drops it whole: a line is never cut.
    fn push(&self, line: &[u8]) {
        let mut q = self.lock();
        if q.pending.len() + line.len() > self.capacity {
            q.dropped += 1;
            drop(q);
            DROPPED.inc();
            return;
        }
        q.pending.extend_from_slice(line);
        if q.idle {
            q.idle = false;
            drop(q);
            self.wake.notify_one();
        }
    }
}

/// The writer for tracing-subscriber: cheap to clone, never blocks on output.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Flushes what is queued when dropped (at exit), waiting at most [`FlushGuard::TIMEOUT`] for
/// a stdout that does not drain.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread over `out` with a queue of `capacity` bytes.
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
        on_dropped: OnDropped,
    ) -> io::Result<(LogWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                // Reserved whole, so that it never grows past the capacity (doubling would);
                // untouched pages cost no memory.
                pending: Vec::with_capacity(capacity),
                dropped: 0,
                idle: false,
                writing: false,
                closing: false,
            }),
            capacity,
            wake: Condvar::new(),
            written: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        // Allocated here, not on the writer thread: a first allocation there would give the
        // thread an allocator arena of its own.
        let batch = Vec::with_capacity(capacity);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(&shared, out, batch, &on_dropped)
            })?;
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

fn write_loop<W: Write>(shared: &Shared, mut out: W, mut batch: Vec<u8>, on_dropped: &OnDropped) {
    loop {
        let mut q = shared.lock();
        while q.pending.is_empty() && !q.closing {
            q.idle = true;
            q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.idle = false;
        if q.pending.is_empty() {
            // Closing, and everything is written.
            return;
        }
        if !q.closing && q.pending.len() < shared.capacity / 2 {
            drop(q);
            std::thread::sleep(LINGER);
            q = shared.lock();
        }
        std::mem::swap(&mut batch, &mut q.pending);
        q.writing = true;
        let dropped = std::mem::take(&mut q.dropped);
        drop(q);
        // The lines dropped were refused while the lines of this batch waited, so the warning
        // queued now is written right after them, once stdout takes them.
        if dropped > 0 {
            on_dropped(dropped);
        }
        let result = out.write_all(&batch).and_then(|()| out.flush());
        if let Err(e) = result {
            let lost = batch.iter().filter(|&&b| b == b'\n').count() as u64;
            DROPPED.inc_by(lost);
            if !shared.failed.swap(true, Ordering::Relaxed) {
                eprintln!("colorproxy: cannot write logs to stdout ({e}); log lines are dropped");
            }
        }
        batch.clear();
        shared.lock().writing = false;
        shared.written.notify_all();
    }
}

impl FlushGuard {
    pub const TIMEOUT: Duration = Duration::from_secs(2);
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + FlushGuard::TIMEOUT;
        let mut q = self.shared.lock();
        q.closing = true;
        self.shared.wake.notify_one();
        while !q.pending.is_empty() || q.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // stdout is stuck: exiting matters more than the last lines.
                return;
            }
            q = self
                .shared
                .written
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(q);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogWriter {
    /// Queues whole lines (each ending in a newline), or drops them whole, without blocking.
    pub fn push(&self, lines: &[u8]) {
        self.shared.push(lines);
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.push(buf);
        // A dropped line is reported as written: the caller must not retry or fail.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that takes bytes only when the test lets it: the stuck log consumer.
    struct Gated {
        open: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
        blocked: mpsc::Sender<()>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.blocked.send(());
            self.open
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| io::Error::other("gate never opened"))?;
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_whole_lines_counts_them_and_says_so_once_it_resumes() {
        let (open, gate) = mpsc::channel();
        let (blocked_tx, blocked) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Gated {
            open: gate,
            got: got.clone(),
            blocked: blocked_tx,
        };
        let reports = Arc::new(Mutex::new(Vec::new()));
        let (writer, guard) = LogWriter::spawn(out, 100, {
            let reports = reports.clone();
            Box::new(move |n| reports.lock().unwrap().push(n))
        })
        .unwrap();
        let before = DROPPED.get();
        let mut w = writer.make_writer();
        w.write_all(b"first line\n").unwrap();
        // The writer is now stuck writing the first line.
        blocked.recv_timeout(Duration::from_secs(10)).unwrap();
        // 20 bytes each: 5 fit in 100 bytes, the other 5 are dropped, all without blocking.
        for i in 0..10 {
            w.write_all(format!("line {i:02} ...........\n").as_bytes())
                .unwrap();
        }
        assert!(DROPPED.get() - before >= 5);
        open.send(()).unwrap();
        blocked.recv_timeout(Duration::from_secs(10)).unwrap();
        open.send(()).unwrap();
        drop(guard);
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let expected: String = std::iter::once("first line\n".to_string())
            .chain((0..5).map(|i| format!("line {i:02} ...........\n")))
            .collect();
        assert_eq!(text, expected);
        assert_eq!(*reports.lock().unwrap(), [5]);
    }

    #[test]
    fn a_line_longer_than_the_queue_is_dropped_not_cut() {
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = LogWriter::spawn(Shared(out.clone()), 16, Box::new(|_| {})).unwrap();
        let mut w = writer.make_writer();
        w.write_all(b"this line is longer than sixteen bytes\n")
            .unwrap();
        w.write_all(b"short\n").unwrap();
        drop(guard);
        assert_eq!(*out.lock().unwrap(), b"short\n");
    }
}
