//! Large bodies stream through the real binary in both directions without being buffered:
//! the proxy's peak memory stays far below the size of what went through it.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{self, Stream};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How much goes each way. 256 MiB takes a few seconds each way with debug builds.
const TOTAL: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// The proxy's peak resident set must stay below this after both transfers.
const MAX_RSS_KIB: u64 = 64 * 1024;
/// Deadline for one whole transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Byte count and a Fletcher-style checksum: `s1` sums the bytes, `s2` sums the running `s1`,
/// so lost, duplicated, altered and reordered bytes all change it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sum {
    len: u64,
    s1: u64,
    s2: u64,
}

impl Sum {
    fn update(&mut self, data: &[u8]) {
        let (mut s1, mut s2) = (self.s1, self.s2);
        for &b in data {
            s1 = s1.wrapping_add(u64::from(b));
            s2 = s2.wrapping_add(s1);
        }
        self.s1 = s1;
        self.s2 = s2;
        self.len += data.len() as u64;
    }

    fn to_text(self) -> String {
        format!("{} {} {}", self.len, self.s1, self.s2)
    }
}

/// Chunk `index` of a pseudo-random payload, generated when asked for.
fn chunk(index: u64, len: usize) -> Bytes {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        let n = word.len().min(len - out.len());
        out.extend_from_slice(&word[..n]);
    }
    out.into()
}

/// A body of `total` bytes made chunk by chunk as the receiver pulls; what was produced is
/// summed into `sent`, complete once the stream has ended.
fn generated(
    total: u64,
    sent: Arc<Mutex<Sum>>,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    stream::unfold(0u64, move |index| {
        let sent = sent.clone();
        async move {
            let offset = index * CHUNK as u64;
            if offset >= total {
                return None;
            }
            let data = chunk(index, CHUNK.min((total - offset) as usize));
            sent.lock().unwrap().update(&data);
            Some((Ok(Frame::data(data)), index + 1))
        }
    })
}

/// Reads a body frame by frame, summing it, never holding more than one frame.
async fn sum_body(mut body: Incoming) -> Result<Sum, hyper::Error> {
    let mut sum = Sum::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            sum.update(&data);
        }
    }
    Ok(sum)
}

/// Peak resident set size of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"))
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
}

type BackendBody = Either<StreamBody<GeneratedStream>, Full<Bytes>>;
type GeneratedStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// One upstream for both directions: `/upload` sums the request body as it streams in
/// and answers with the sum; `GET /download` answers with a generated body of `total` bytes
/// (with a Content-Length), summing what it produced into `generated_sum`.
fn streaming_backend(
    listener: TcpListener,
    total: u64,
    generated_sum: Arc<Mutex<Sum>>,
) -> StreamBackend {
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let generated_sum = generated_sum.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let generated_sum = generated_sum.clone();
                    async move { Ok::<_, Infallible>(answer(req, total, generated_sum).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    StreamBackend { task }
}

async fn answer(
    req: Request<Incoming>,
    total: u64,
    generated_sum: Arc<Mutex<Sum>>,
) -> Response<BackendBody> {
    if req.uri().path() == "/download" {
        *generated_sum.lock().unwrap() = Sum::default();
        let body: GeneratedStream = Box::pin(generated(total, generated_sum));
        return Response::builder()
            .header("content-length", total)
            .body(Either::Left(StreamBody::new(body)))
            .unwrap();
    }
    match sum_body(req.into_body()).await {
        Ok(sum) => Response::new(Either::Right(Full::from(sum.to_text()))),
        Err(e) => Response::builder()
            .status(500)
            .body(Either::Right(Full::from(format!("body error: {e}"))))
            .unwrap(),
    }
}

struct StreamBackend {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Uploads `total` generated bytes as a chunked body over one HTTP/1.1 connection; returns
/// the status, the response body and what was sent.
async fn upload(proxy: SocketAddr, path: &str, total: u64) -> (u16, String, Sum) {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("client handshake");
    let conn = tokio::spawn(conn);
    let sent = Arc::new(Mutex::new(Sum::default()));
    let req = Request::post(path)
        .header("host", proxy.to_string())
        .body(StreamBody::new(generated(total, sent.clone())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("upload response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    conn.abort();
    let sent = *sent.lock().unwrap();
    (status, String::from_utf8_lossy(&body).into_owned(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_constant_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let generated_sum = Arc::new(Mutex::new(Sum::default()));
    let _backend = streaming_backend(listener, TOTAL, generated_sum.clone());
    let proxy = ProxyProcess::start(&[("BLUE", &format!("http://{backend_addr}"))]);
    let rss_at_start = peak_rss_kib(proxy.pid);

    // (a) Upload through the proxy.
    let started = Instant::now();
    let (status, answer, sent) = timeout(TRANSFER_TIMEOUT, upload(proxy.addr, "/upload", TOTAL))
        .await
        .expect("upload within the timeout");
    let upload_took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sent.len, TOTAL);
    assert_eq!(answer, sent.to_text(), "backend got other bytes than sent");

    // (b) Download through the proxy.
    let started = Instant::now();
    let (status, length, received) = timeout(TRANSFER_TIMEOUT, async {
        let resp = client()
            .request(
                Request::get(proxy.url("/download"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .expect("download response");
        let length = resp.headers().get("content-length").cloned();
        (resp.status(), length, sum_body(resp.into_body()).await)
    })
    .await
    .expect("download within the timeout");
    let download_took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        length.as_ref().map(|v| v.to_str().unwrap()),
        Some(TOTAL.to_string().as_str())
    );
    let received = received.expect("download body");
    assert_eq!(received.len, TOTAL);
    assert_eq!(received, *generated_sum.lock().unwrap());

    // (c) The proxy never came anywhere near holding a body.
    let peak = peak_rss_kib(proxy.pid);
    eprintln!(
        "upload {} MiB in {upload_took:.2?} ({:.0} MiB/s), download in {download_took:.2?} \
         ({:.0} MiB/s); proxy peak RSS {rss_at_start} KiB at start, {peak} KiB after",
        TOTAL >> 20,
        mib_per_s(TOTAL, upload_took),
        mib_per_s(TOTAL, download_took),
    );
    assert!(
        peak < MAX_RSS_KIB,
        "the proxy peaked at {peak} KiB after moving {} MiB each way",
        TOTAL >> 20
    );
}
