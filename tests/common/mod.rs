//! Test harness: the real `colorproxy` binary as a child process, and small HTTP backends
//! served from the test process. Everything listens on 127.0.0.1 with ports from 0; every
//! wait has a deadline.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub mod dns;

pub const BIN: &str = env!("CARGO_BIN_EXE_colorproxy");
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running colorproxy process. Killed on drop if still running.
pub struct ProxyProcess {
    pub addr: SocketAddr,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<String>,
    exited: mpsc::Receiver<ExitStatus>,
    /// One message per output stream read to its end.
    eof: mpsc::Receiver<()>,
    status: Option<ExitStatus>,
}

impl ProxyProcess {
    /// Starts the binary with exactly `env` (plus LISTEN and ADMIN_LISTEN on 127.0.0.1:0 unless
    /// given) and waits
    /// for it to report its listening address.
    pub fn start(env: &[(&str, &str)]) -> ProxyProcess {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("LISTEN", "127.0.0.1:0")
            .env("ADMIN_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn colorproxy");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (line_tx, new_line) = mpsc::channel();
        let (eof_tx, eof) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            let tx = line_tx.clone();
            let eof_tx = eof_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
                let _ = eof_tx.send(());
            });
        }
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child: Child = child;
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let mut proxy = ProxyProcess {
            addr: "0.0.0.0:0".parse().unwrap(),
            pid,
            lines,
            new_line,
            exited,
            eof,
            status: None,
        };
        let line = proxy.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c == '"' || c.is_whitespace()).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        proxy.addr = addr;
        proxy
    }

    /// The admin listener's URL for `path` (the harness binds it on 127.0.0.1:0).
    pub fn admin_url(&mut self, path: &str) -> String {
        let line = self.wait_for_log("admin endpoints on ");
        let addr = line
            .split("admin endpoints on ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c == '"' || c.is_whitespace()).next())
            .unwrap_or_else(|| panic!("no admin address in {line:?}"));
        format!("http://{addr}{path}")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until a log line containing `needle` has been printed, and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        if let Some(l) = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.new_line.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {TIMEOUT:?}; output so far:\n{}",
                    self.output()
                ),
            }
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let status = self.exited.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "colorproxy did not exit within {TIMEOUT:?}:\n{}",
                self.output()
            )
        });
        // The last lines may still be on their way from the pipes: the output is complete
        // once both streams have ended.
        for _ in 0..2 {
            let _ = self.eof.recv_timeout(TIMEOUT);
        }
        self.status = Some(status);
        status
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.status.is_none() && self.exited.try_recv().is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Runs the binary to completion (it must exit by itself within the timeout).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn colorproxy");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => {
            let out = out.expect("wait for colorproxy");
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("colorproxy {args:?} did not exit within {TIMEOUT:?}");
        }
    }
}

/// The URL of an address on which nothing listens: bound, then released.
pub async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A backend served from the test process until dropped.
pub struct Backend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A backend the test serves itself, stopped when dropped like the others.
    pub fn adopt(addr: SocketAddr, task: tokio::task::JoinHandle<()>) -> Backend {
        Backend {
            addr,
            task,
            accepted: Arc::default(),
        }
    }

    /// Connections this backend accepted so far (not counted for adopted backends).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Serves `handler` for every request, HTTP/1.1 with keep-alive and upgrades.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(listener, handler)
    }

    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            task,
            accepted,
        }
    }

    /// Answers with a description of the request it got: first line `METHOD path?query`, then
    /// one `name: value` line per header, and the `x-backend` response header set to `name`.
    pub async fn echo(name: &'static str) -> Backend {
        Backend::start(move |req: Request<Incoming>| async move {
            let mut text = format!("{} {}\n", req.method(), req.uri());
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
            }
            Response::builder()
                .header("x-backend", name)
                .body(Full::new(Bytes::from(text)))
                .unwrap()
        })
        .await
    }
}

/// Parses an echo backend's body into (request line, headers).
pub fn parse_echo(body: &str) -> (String, Vec<(String, String)>) {
    let mut lines = body.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (first, headers)
}

pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client, as a browser or load balancer in front of the proxy would be.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .expect("response within the timeout")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .expect("body within the timeout")
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}
