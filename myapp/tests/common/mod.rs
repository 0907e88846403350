//! Helpers for driving the real `myapp` binary.
//!
//! The tests go through a process and a socket rather than calling the library
//! because the contract that matters (startup line, exit codes, signals, bytes
//! on the wire) only exists at that level. Every wait is bounded so a broken
//! server fails a test instead of hanging the suite, and `Server` kills its
//! child on drop so a failed assertion leaves no stray process behind.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

const READY_PREFIX: &str = "myapp listening on ";

/// A command for the binary with the variables it reads cleared, so the
/// developer's or CI's environment cannot change what a test sees.
pub fn myapp_command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_myapp"));
    cmd.args(args)
        .env_remove("LISTEN")
        .env_remove("V2")
        .env_remove("HOSTNAME")
        .env_remove("SHUTDOWN_DELAY")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Forwards each line of a pipe to a channel. The thread keeps reading until
/// EOF so the child can never block on a full pipe.
fn pump_lines<R: Read + Send + 'static>(pipe: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines seen on one of the child's outputs so far, plus the live channel.
pub struct Output {
    rx: Receiver<String>,
    pub lines: Vec<String>,
}

impl Output {
    fn new(rx: Receiver<String>) -> Self {
        Output {
            rx,
            lines: Vec::new(),
        }
    }

    /// Waits for a line satisfying `pred`; `None` on timeout or EOF.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(line) = self.lines.iter().find(|l| pred(l)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.lines.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Collects lines until EOF (the child closed the pipe) or the timeout.
    pub fn read_to_end(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => break,
            }
        }
        self.text()
    }

    /// Picks up whatever has arrived without waiting.
    pub fn text(&mut self) -> String {
        while let Ok(line) = self.rx.try_recv() {
            self.lines.push(line);
        }
        self.lines.join("\n")
    }
}

/// A child `myapp` process that is killed if still running when dropped.
pub struct Proc {
    child: Child,
    pub stdout: Output,
    pub stderr: Output,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = myapp_command(args, envs).spawn().expect("spawn myapp");
        let out: ChildStdout = child.stdout.take().expect("piped stdout");
        let err: ChildStderr = child.stderr.take().expect("piped stderr");
        Proc {
            child,
            stdout: Output::new(pump_lines(out)),
            stderr: Output::new(pump_lines(err)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with kill(1), as an operator or Docker would.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// std has no timed wait; polling `try_wait` is the portable way to
    /// bound it.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "myapp did not exit within {timeout:?}; stderr: {:?}",
                    self.stderr.text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `myapp` serving on an ephemeral loopback port.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts the binary and waits for its readiness line, which also tells
    /// the port the kernel picked.
    pub fn start(envs: &[(&str, &str)]) -> Server {
        let mut proc = Proc::spawn(&["127.0.0.1:0"], envs);
        let line = proc
            .stdout
            .wait_for(STARTUP_TIMEOUT, |l| l.starts_with(READY_PREFIX));
        let Some(line) = line else {
            panic!(
                "myapp did not report that it was listening; stdout: {:?}; stderr: {:?}",
                proc.stdout.text(),
                proc.stderr.text()
            );
        };
        let addr = line[READY_PREFIX.len()..]
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        Server { proc, addr }
    }
}

/// Runs the binary to completion (killing it if it outlives `EXIT_TIMEOUT`)
/// and returns its status, stdout and stderr.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(args, envs);
    let status = proc.wait_exit(EXIT_TIMEOUT);
    let out = proc.stdout.read_to_end(IO_TIMEOUT);
    let err = proc.stderr.read_to_end(IO_TIMEOUT);
    (status, out, err)
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

/// A client connection speaking just enough HTTP/1.1 for these tests. Raw
/// bytes, not a client library, so tests see exactly what went over the wire
/// (e.g. that HEAD sends no body).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, raw: &str) {
        self.reader
            .get_mut()
            .write_all(raw.as_bytes())
            .expect("write request");
    }

    /// Reads one response; `head` says whether it answers a HEAD request and
    /// so carries no body whatever its Content-Length says.
    pub fn read_reply(&mut self, head: bool) -> Reply {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("read status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read header");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if !head {
            let len: usize = reply
                .header("content-length")
                .expect("responses carry Content-Length")
                .parse()
                .expect("numeric Content-Length");
            reply.body = vec![0; len];
            self.reader.read_exact(&mut reply.body).expect("read body");
        }
        reply
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("reading from server: {e}"),
        }
    }
}

/// Builds a request; `extra` lines are added verbatim (each without CRLF).
pub fn request(method: &str, path: &str, extra: &[&str]) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for line in extra {
        raw.push_str(line);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    raw
}

/// Sends one request on a fresh connection and reads the reply.
pub fn fetch(addr: SocketAddr, method: &str, path: &str, extra: &[&str]) -> Reply {
    let mut conn = Conn::open(addr);
    conn.send(&request(method, path, extra));
    conn.read_reply(method == "HEAD")
}
