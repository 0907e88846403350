//! Response bodies kept on disk for a client that reads slower than its upstream sends, once
//! the memory budget has no room (nginx's `proxy_temp_path`, `proxy_max_temp_file_size`).
//!
//! Without it, a few thousand slow readers (slowhttptest's slow-read mode) hold one upstream
//! connection each, and a one-worker app is blocked for everybody. With it, the upstream sends
//! at its own pace into an unlinked file, is free once its response is, and the client is fed
//! from the file at its pace.
//!
//! A client that keeps up never touches the disk: a frame goes straight through whenever the
//! client has taken everything before it. Every byte on disk is reserved from one
//! process-wide [`Budget`] (`RESPONSE_SPILL`); past it, the body waits for the client as a
//! streamed body does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::mpsc;
use tracing::warn;

use crate::budget::{Budget, Reservation};

/// Bytes read back from the file per frame: small, so that thousands of slow readers hold
/// little memory between the file and their sockets.
const CHUNK: u64 = 16 << 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where spilled bodies go, and how much of the disk they may take.
pub struct Spill {
    dir: PathBuf,
    budget: Arc<Budget>,
    /// Set after a file could not be made or written: warned about once.
    warned: AtomicBool,
}

impl Spill {
    /// Checks that `dir` takes files, so that a read-only or missing directory is told at
    /// startup instead of at the first slow reader.
    pub fn new(dir: &Path, cap: u64) -> io::Result<Arc<Spill>> {
        tempfile::tempfile_in(dir)?;
        Ok(Arc::new(Spill {
            dir: dir.to_path_buf(),
            budget: Budget::new(cap),
            warned: AtomicBool::new(false),
        }))
    }

    /// Bytes on disk now.
    pub fn used(&self) -> u64 {
        self.budget.used()
    }

    /// Reads `body` ahead of the client from a task of its own. With `prepaid`, the body's
    /// whole length is reserved at once, and the body is given back when the disk has no room
    /// for it; without, it takes room as it comes and waits for the client once there is none.
    pub fn start<B>(self: &Arc<Self>, body: B, prepaid: Option<u64>) -> Result<Spilled, B>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let mut held = Reservation::new(&self.budget);
        let prepaid = prepaid.unwrap_or(0);
        if !held.grow(prepaid) {
            return Err(body);
        }
        let (tx, rx) = mpsc::channel(1);
        let task = Task {
            spill: self.clone(),
            held,
            prepaid,
            broken: false,
            file: None,
            written: 0,
            sent: 0,
        };
        tokio::spawn(task.run(body, tx));
        Ok(Spilled { rx, done: false })
    }

    fn warn_once(&self, what: &str, e: &io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                dir = %self.dir.display(),
                "cannot {what} for a slow client's response ({e}): such responses wait for their client (shown once)"
            );
        }
    }
}

struct Task {
    spill: Arc<Spill>,
    held: Reservation,
    /// Room reserved up front (for a body of known length) and not yet used.
    prepaid: u64,
    /// A write failed: nothing more goes to the file, what is on it is still read back.
    broken: bool,
    /// Made at the first byte that has to wait for the client.
    file: Option<Arc<File>>,
    written: u64,
    sent: u64,
}

impl Task {
    async fn run<B>(mut self, mut body: B, tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>)
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError> + Send,
    {
        // A frame waiting for the client: the end of the body (trailers or an error) behind
        // data still on disk, or data the disk had no room for.
        let mut waiting: Option<Result<Frame<Bytes>, BoxError>> = None;
        let mut upstream_done = false;
        loop {
            let behind = self.sent < self.written;
            if upstream_done && !behind && waiting.is_none() {
                return;
            }
            tokio::select! {
                biased;
                () = tx.closed() => return,
                permit = tx.reserve(), if behind || waiting.is_some() => {
                    let Ok(permit) = permit else { return };
                    if behind {
                        match self.read_back().await {
                            Ok(data) => permit.send(Ok(Frame::data(data))),
                            Err(e) => {
                                permit.send(Err(format!("the response kept on disk could not be read back: {e}").into()));
                                return;
                            }
                        }
                    } else if let Some(frame) = waiting.take() {
                        permit.send(frame);
                    }
                }
                frame = body.frame(), if !upstream_done && waiting.is_none() => match frame {
                    None => upstream_done = true,
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            if !behind && let Ok(permit) = tx.try_reserve() {
                                permit.send(Ok(Frame::data(data)));
                            } else if let Err(data) = self.keep(data).await {
                                waiting = Some(Ok(Frame::data(data)));
                            }
                        }
                        // Trailers come last.
                        Err(frame) => {
                            upstream_done = true;
                            waiting = Some(Ok(frame));
                        }
                    },
                    Some(Err(e)) => {
                        upstream_done = true;
                        waiting = Some(Err(e.into()));
                    }
                },
            }
        }
    }

    /// Appends `data` to the file; gives it back when the disk has no room or cannot take it.
    async fn keep(&mut self, data: Bytes) -> Result<(), Bytes> {
        let n = data.len() as u64;
        if self.broken {
            return Err(data);
        }
        if n <= self.prepaid {
            self.prepaid -= n;
        } else if !self.held.grow(n) {
            return Err(data);
        }
        let file = match &self.file {
            Some(file) => file.clone(),
            None => match tempfile::tempfile_in(&self.spill.dir) {
                Ok(file) => self.file.insert(Arc::new(file)).clone(),
                Err(e) => {
                    self.spill.warn_once("make a file", &e);
                    self.broken = true;
                    return Err(data);
                }
            },
        };
        let at = self.written;
        let chunk = data.clone();
        match tokio::task::spawn_blocking(move || file.write_all_at(&chunk, at)).await {
            Ok(Ok(())) => {
                self.written += n;
                Ok(())
            }
            Ok(Err(e)) => {
                self.spill.warn_once("write a file", &e);
                self.broken = true;
                Err(data)
            }
            Err(_) => Err(data),
        }
    }

    async fn read_back(&mut self) -> io::Result<Bytes> {
        let file = self
            .file
            .clone()
            .expect("bytes were written, so there is a file");
        let at = self.sent;
        let n = CHUNK.min(self.written - at) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .map_err(io::Error::other)??;
        self.sent += n as u64;
        Ok(Bytes::from(read))
    }
}

/// The client's side of a spilled body.
pub struct Spilled {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    done: bool,
}

impl Body for Spilled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            this.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    /// The length, if known, is in the upstream's `Content-Length`, which reaches the client
    /// as it is.
    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::header::{HeaderMap, HeaderValue};

    use super::*;

    /// An upstream body fed by the test, one frame at a time.
    struct Fed(mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            self.get_mut().0.poll_recv(cx)
        }
    }

    type Feed = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

    fn spill(cap: u64) -> (tempfile::TempDir, Arc<Spill>) {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), cap).unwrap();
        (dir, spill)
    }

    fn fed(spill: &Arc<Spill>, exact: Option<u64>) -> (Feed, Spilled) {
        let (tx, rx) = mpsc::channel(1);
        let body = spill.start(Fed(rx), exact).ok().expect("room for it");
        (tx, body)
    }

    fn chunk(i: usize, n: usize) -> Bytes {
        Bytes::from(vec![b'a' + (i % 26) as u8; n])
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("within 10 s")
    }

    async fn until(spill: &Spill, used: u64) {
        within(async {
            while spill.used() != used {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Everything the client gets: data joined, then trailers or an error.
    async fn drain(mut body: Spilled) -> (Vec<u8>, Option<HeaderMap>, Option<String>) {
        let mut data = Vec::new();
        loop {
            match within(body.frame()).await {
                None => return (data, None, None),
                Some(Err(e)) => return (data, None, Some(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        assert!(within(body.frame()).await.is_none(), "trailers come last");
                        return (data, trailers, None);
                    }
                },
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_keeps_up_never_touches_the_disk() {
        let (_dir, spill) = spill(1 << 20);
        let (feed, mut body) = fed(&spill, None);
        for i in 0..50 {
            feed.send(Ok(Frame::data(chunk(i, 1000)))).await.unwrap();
            let got = within(body.frame()).await.unwrap().unwrap();
            assert_eq!(got.into_data().unwrap(), chunk(i, 1000));
            assert_eq!(spill.used(), 0);
        }
        drop(feed);
        assert!(within(body.frame()).await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_late_reader_gets_every_byte_in_order_after_the_upstream_is_done() {
        let (_dir, spill) = spill(1 << 20);
        let (feed, body) = fed(&spill, None);
        let mut sent = Vec::new();
        for i in 0..100 {
            let c = chunk(i, 100 + i * 37);
            sent.extend_from_slice(&c);
            within(feed.send(Ok(Frame::data(c)))).await.unwrap();
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", HeaderValue::from_static("abc"));
        within(feed.send(Ok(Frame::trailers(trailers.clone()))))
            .await
            .unwrap();
        // The upstream sent all of it before the client read a byte: all but the frame in
        // the channel waits on disk.
        let first = chunk(0, 100).len() as u64;
        until(&spill, sent.len() as u64 - first).await;
        drop(feed);
        let (data, got_trailers, error) = drain(body).await;
        assert_eq!(data, sent);
        assert_eq!(got_trailers, Some(trailers));
        assert_eq!(error, None);
    }

    #[tokio::test]
    async fn an_upstream_error_reaches_the_client_after_the_data_before_it() {
        let (_dir, spill) = spill(1 << 20);
        let (feed, body) = fed(&spill, None);
        for i in 0..10 {
            within(feed.send(Ok(Frame::data(chunk(i, 5000)))))
                .await
                .unwrap();
        }
        within(feed.send(Err(io::Error::other("reset by peer"))))
            .await
            .unwrap();
        let (data, trailers, error) = drain(body).await;
        assert_eq!(data.len(), 50_000);
        assert_eq!(trailers, None);
        assert!(error.unwrap().contains("reset by peer"));
    }

    #[tokio::test]
    async fn past_its_cap_the_disk_takes_nothing_and_the_upstream_waits_for_the_client() {
        let (_dir, spill) = spill(1000);
        let (feed, body) = fed(&spill, None);
        // The first frame goes to the channel, the next two (800 bytes) to disk, the fourth
        // has no room and waits, the fifth waits in the feed: the sixth cannot be sent.
        for i in 0..5 {
            within(feed.send(Ok(Frame::data(chunk(i, 400)))))
                .await
                .unwrap();
        }
        until(&spill, 800).await;
        let sixth = feed.send(Ok(Frame::data(chunk(5, 400))));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sixth)
                .await
                .is_err(),
            "the upstream is not read past the cap"
        );
        let reader = tokio::spawn(drain(body));
        within(feed.send(Ok(Frame::data(chunk(5, 400)))))
            .await
            .unwrap();
        drop(feed);
        let (data, _, error) = within(reader).await.unwrap();
        let expected: Vec<u8> = (0..6).flat_map(|i| chunk(i, 400)).collect();
        assert_eq!((data, error), (expected, None));
        until(&spill, 0).await; // the room is given back
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_given_back_when_the_disk_has_no_room_for_all_of_it() {
        let (_dir, spill) = spill(1000);
        let (_feed, rx) = mpsc::channel(1);
        assert!(spill.start(Fed(rx), Some(1001)).is_err());
        assert_eq!(spill.used(), 0);
        let (_feed, rx) = mpsc::channel(1);
        let body = spill.start(Fed(rx), Some(1000));
        assert!(body.is_ok());
        assert_eq!(spill.used(), 1000, "reserved up front");
    }

    #[test]
    fn a_directory_that_takes_no_files_is_refused() {
        assert!(Spill::new(Path::new("/nonexistent/colorproxy"), 1 << 20).is_err());
    }
}
