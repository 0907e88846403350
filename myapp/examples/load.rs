//! The load client of `scripts/swarm-e2e.sh`: a steady rate of `GET /` over keep-alive
//! connections to one address, counting every answer.
//!
//!     load ADDR [--connections N] [--rate PER_SECOND] [--requests N] [--seconds S] [--tally FILE]
//!
//! It runs until SIGINT/SIGTERM, `--requests` answers or `--seconds`, then finishes the requests
//! in flight and prints one line on stdout:
//!
//!     sent=12000 ok=12000 failed=0 retried=3 codes=200:12000
//!
//! A request failed on any status outside 2xx and on any transport error (refused, reset,
//! timeout, a malformed answer). Like a browser, and only then, a request that met a reused
//! keep-alive connection closed before any byte of its response goes again once on a new
//! connection (the server may close an idle connection just as the request leaves): such
//! requests are counted in `retried`, and failed only if the new attempt fails. Each failure is
//! described on stderr (the first 50). `--tally FILE` writes the first line of every 2xx body
//! with its count ("count<TAB>line"): which task and color answered.
//!
//! Written on plain sockets rather than with hyper's client, because telling "closed before
//! any byte" from "broke mid-response" needs the byte count, which hyper does not expose.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Far above any answer of a healthy setup, so a stuck request is a failure, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const FAILURES_SHOWN: u64 = 50;
const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: colorproxy-e2e-load\r\n\r\n";

struct Options {
    addr: SocketAddr,
    connections: u32,
    rate: f64,
    requests: Option<u64>,
    seconds: Option<f64>,
    tally: Option<String>,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut it = args.into_iter();
    let mut opts = Options {
        addr: "127.0.0.1:8080".parse().expect("valid"),
        connections: 8,
        rate: 200.0,
        requests: None,
        seconds: None,
        tally: None,
    };
    let mut addr = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--connections" => {
                opts.connections = number(&value("--connections")?, "--connections")?;
            }
            "--rate" => opts.rate = number(&value("--rate")?, "--rate")?,
            "--requests" => opts.requests = Some(number(&value("--requests")?, "--requests")?),
            "--seconds" => opts.seconds = Some(number(&value("--seconds")?, "--seconds")?),
            "--tally" => opts.tally = Some(value("--tally")?),
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            a if addr.is_none() => {
                addr = Some(
                    a.parse::<SocketAddr>()
                        .map_err(|e| format!("bad ADDR {a:?}: {e} (expected ip:port)"))?,
                );
            }
            a => return Err(format!("unexpected argument {a:?}")),
        }
    }
    opts.addr = addr.ok_or("missing ADDR (ip:port)")?;
    if opts.connections == 0 || opts.rate <= 0.0 {
        return Err("--connections and --rate must be above 0".into());
    }
    Ok(opts)
}

fn number<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: {s:?} is not a valid number"))
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    codes: Mutex<BTreeMap<u16, u64>>,
    tally: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn fail(&self, what: &str) {
        let n = self.failed.fetch_add(1, Ordering::Relaxed);
        if n < FAILURES_SHOWN {
            eprintln!("load: request failed: {what}");
        }
    }
}

struct Answer {
    status: u16,
    first_line: String,
    close: bool,
}

/// Why an attempt gave no answer, and how many response bytes had arrived.
struct Failure {
    cause: String,
    received: usize,
}

fn failure(cause: impl Into<String>, received: usize) -> Failure {
    Failure {
        cause: cause.into(),
        received,
    }
}

/// One request on `conn`, else on a new connection; `conn` is left open only if it may be
/// used again.
async fn exchange(addr: SocketAddr, conn: &mut Option<TcpStream>) -> Result<Answer, Failure> {
    let mut stream = match conn.take() {
        Some(stream) => stream,
        None => match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                stream
            }
            Ok(Err(e)) => return Err(failure(format!("connect: {e}"), 0)),
            Err(_) => return Err(failure("connect timeout", 0)),
        },
    };
    let mut received = 0;
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream
            .write_all(REQUEST)
            .await
            .map_err(|e| failure(format!("write: {e}"), 0))?;
        read_answer(&mut stream, &mut received).await
    })
    .await
    .unwrap_or_else(|_| Err(failure("no complete answer within 15s", received)))?;
    if !answer.close {
        *conn = Some(stream);
    }
    Ok(answer)
}

async fn read_answer(stream: &mut TcpStream, received: &mut usize) -> Result<Answer, Failure> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(failure("response head over 64 KiB", *received));
        }
        read_more(stream, &mut buf, received).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| failure(format!("bad status line {status_line:?}"), *received))?;
    let (mut length, mut chunked, mut close) = (None, false, status_line.starts_with("HTTP/1.0"));
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length =
                    Some(value.parse::<usize>().map_err(|_| {
                        failure(format!("bad Content-Length {value:?}"), *received)
                    })?);
            }
            "transfer-encoding" => chunked = value.ends_with("chunked"),
            "connection" => close = value.split(',').any(|t| t.trim() == "close"),
            _ => {}
        }
    }
    let mut body = buf.split_off(head_end);
    if chunked {
        body = read_chunked(stream, body, received).await?;
    } else if let Some(length) = length {
        if length > MAX_BODY {
            return Err(failure(format!("body of {length} bytes"), *received));
        }
        while body.len() < length {
            read_more(stream, &mut body, received).await?;
        }
        body.truncate(length);
    } else {
        // Delimited by the end of the connection.
        close = true;
        loop {
            match stream.read_buf(&mut body).await {
                Ok(0) => break,
                Ok(n) => *received += n,
                Err(e) => return Err(failure(format!("read: {e}"), *received)),
            }
            if body.len() > MAX_BODY {
                return Err(failure("body over 1 MiB", *received));
            }
        }
    }
    let text = String::from_utf8_lossy(&body);
    let first_line = text.lines().next().unwrap_or_default().to_owned();
    Ok(Answer {
        status,
        first_line,
        close,
    })
}

async fn read_chunked(
    stream: &mut TcpStream,
    mut raw: Vec<u8>,
    received: &mut usize,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&raw, b"\r\n") {
                break i;
            }
            read_more(stream, &mut raw, received).await?;
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| failure(format!("bad chunk size {size_text:?}"), *received))?;
        raw.drain(..line_end + 2);
        if size == 0 {
            // No trailers from these servers: the empty line ends the body.
            while raw.len() < 2 {
                read_more(stream, &mut raw, received).await?;
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(failure("body over 1 MiB", *received));
        }
        while raw.len() < size + 2 {
            read_more(stream, &mut raw, received).await?;
        }
        body.extend_from_slice(&raw[..size]);
        raw.drain(..size + 2);
    }
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    received: &mut usize,
) -> Result<(), Failure> {
    match stream.read_buf(buf).await {
        Ok(0) if *received == 0 => Err(failure("connection closed before any response byte", 0)),
        Ok(0) => Err(failure(
            format!("connection closed after {received} response bytes"),
            *received,
        )),
        Ok(n) => {
            *received += n;
            Ok(())
        }
        Err(e) => Err(failure(format!("read: {e}"), *received)),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Claims the next request number, unless the run is over.
fn claim(counters: &Counters, stop: &AtomicBool, limit: Option<u64>) -> Option<u64> {
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    let n = counters.sent.fetch_add(1, Ordering::Relaxed);
    if limit.is_some_and(|limit| n >= limit) {
        counters.sent.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(n)
}

async fn worker(
    addr: SocketAddr,
    period: Duration,
    offset: Duration,
    limit: Option<u64>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<TcpStream> = None;
    loop {
        ticks.tick().await;
        let Some(n) = claim(&counters, &stop, limit) else {
            break;
        };
        let reused = conn.is_some();
        let mut result = exchange(addr, &mut conn).await;
        if let Err(f) = &result
            && reused
            && f.received == 0
        {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "load: request #{n}: {} on a reused connection: retried on a new one",
                f.cause
            );
            result = exchange(addr, &mut conn).await;
        }
        match result {
            Ok(answer) => {
                *counters
                    .codes
                    .lock()
                    .expect("lock")
                    .entry(answer.status)
                    .or_default() += 1;
                if (200..300).contains(&answer.status) {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                    *counters
                        .tally
                        .lock()
                        .expect("lock")
                        .entry(answer.first_line)
                        .or_default() += 1;
                } else {
                    counters.fail(&format!(
                        "request #{n}: status {}: {}",
                        answer.status, answer.first_line
                    ));
                }
            }
            Err(f) => {
                conn = None;
                counters.fail(&format!("request #{n}: {}", f.cause));
            }
        }
    }
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1).collect()) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!(
                "load: {e}\nusage: load ADDR [--connections N] [--rate PER_SECOND] [--requests N] [--seconds S] [--tally FILE]"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(opts))
}

async fn run(opts: Options) -> ExitCode {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("load: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let period = Duration::from_secs_f64(f64::from(opts.connections) / opts.rate);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..opts.connections {
        let offset = period.mul_f64(f64::from(i) / f64::from(opts.connections));
        workers.spawn(worker(
            opts.addr,
            period,
            offset,
            opts.requests,
            counters.clone(),
            stop.clone(),
        ));
    }
    let deadline = async {
        match opts.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    {
        let all_done = async { while workers.join_next().await.is_some() {} };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = deadline => {}
            () = all_done => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The requests in flight finish (each is bounded by its timeouts).
    while workers.join_next().await.is_some() {}

    let codes: Vec<String> = counters
        .codes
        .lock()
        .expect("lock")
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect();
    println!(
        "sent={} ok={} failed={} retried={} codes={}",
        counters.sent.load(Ordering::Relaxed),
        counters.ok.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.retried.load(Ordering::Relaxed),
        if codes.is_empty() {
            "-".into()
        } else {
            codes.join(",")
        }
    );
    if let Some(path) = &opts.tally {
        let lines: String = counters
            .tally
            .lock()
            .expect("lock")
            .iter()
            .map(|(line, n)| format!("{n}\t{line}\n"))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("load: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
