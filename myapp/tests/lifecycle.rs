//! Process-level behaviour that orchestrators rely on: usage errors exit 2
//! with a message saying what to fix, and SIGTERM/SIGINT drain and exit 0 so
//! rolling updates drop no requests.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Conn, EXIT_TIMEOUT, Server, fetch, request, run_to_exit};

/// Mirrors `myapp::SHUTDOWN_GRACE`; duplicated because these tests treat the
/// binary as a black box.
const GRACE: Duration = Duration::from_secs(4);
/// Stopping at once, for the tests of what follows the delay.
const NO_DELAY: (&str, &str) = ("SHUTDOWN_DELAY", "0");

#[test]
fn bad_listen_env_exits_2_naming_listen_and_value() {
    let (status, _, stderr) = run_to_exit(&[], &[("LISTEN", "not-an-address")]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("LISTEN"), "stderr: {stderr}");
    assert!(stderr.contains("not-an-address"), "stderr: {stderr}");
}

#[test]
fn bad_argument_exits_2_naming_argument_and_value() {
    // The argument wins over LISTEN, so the message must blame the argument.
    let (status, _, stderr) = run_to_exit(&["localhost:http"], &[("LISTEN", "127.0.0.1:0")]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("argument"), "stderr: {stderr}");
    assert!(stderr.contains("localhost:http"), "stderr: {stderr}");
    assert!(!stderr.contains("LISTEN environment"), "stderr: {stderr}");
}

#[test]
fn help_prints_usage_and_exits_0() {
    let (status, stdout, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(status.code(), Some(0));
    assert!(stdout.starts_with("Usage: myapp"), "stdout: {stdout}");
    assert!(
        stdout.contains("LISTEN") && stdout.contains("V2"),
        "stdout: {stdout}"
    );
}

#[test]
fn listen_env_is_used_without_argument() {
    let mut proc = common::Proc::spawn(&[], &[("LISTEN", "127.0.0.1:0")]);
    let line = proc.stdout.wait_for(common::STARTUP_TIMEOUT, |l| {
        l.starts_with("myapp listening on 127.0.0.1:")
    });
    assert!(line.is_some(), "stderr: {}", proc.stderr.text());
    proc.signal("TERM");
    assert_eq!(proc.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

/// Idle keep-alive connections must not hold shutdown for the whole grace
/// period; they are closed straight away.
fn signal_exits_0_promptly(signal: &str) {
    let mut server = Server::start(&[NO_DELAY]);
    let mut idle = Conn::open(server.addr);
    idle.send(&request("GET", "/", &[]));
    assert_eq!(idle.read_reply(false).status, 200);

    let sent = Instant::now();
    server.proc.signal(signal);
    let status = server.proc.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {}",
        server.proc.stderr.text()
    );
    assert!(
        sent.elapsed() < GRACE,
        "shutdown waited {:?} for an idle connection",
        sent.elapsed()
    );
    assert!(idle.is_closed());
}

#[test]
fn sigterm_exits_0() {
    signal_exits_0_promptly("TERM");
}

#[test]
fn sigint_exits_0() {
    signal_exits_0_promptly("INT");
}

/// Opens a connection with a request that is provably being handled: the
/// server only answers `100 Continue` once it has parsed the head and started
/// reading the body, which never fully arrives until the test sends it.
/// (A half-sent head would not do: whether the server has read it before the
/// signal lands is a race.)
fn start_in_flight_request(server: &Server) -> Conn {
    let mut conn = Conn::open(server.addr);
    conn.send(&request(
        "GET",
        "/",
        &["Color: green", "Expect: 100-continue", "Content-Length: 4"],
    ));
    assert_eq!(conn.read_reply(true).status, 100);
    conn
}

#[test]
fn shutdown_stops_accepting_but_finishes_in_flight_request() {
    let mut server = Server::start(&[("HOSTNAME", "web-1"), NO_DELAY]);
    let mut conn = start_in_flight_request(&server);

    server.proc.signal("TERM");
    let notice = server
        .proc
        .stderr
        .wait_for(EXIT_TIMEOUT, |l| l.contains("no longer accepting"));
    assert!(notice.is_some(), "no shutdown notice on stderr");

    match TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted after shutdown began"),
    }

    conn.send("body");
    let reply = conn.read_reply(false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), "green web-1\n");
    assert_eq!(server.proc.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn shutdown_gives_up_on_stuck_requests_after_grace() {
    let mut server = Server::start(&[NO_DELAY]);
    let mut stuck = start_in_flight_request(&server);

    let sent = Instant::now();
    server.proc.signal("TERM");
    let status = server.proc.wait_exit(GRACE + EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    let waited = sent.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(500),
        "exited after {waited:?}, before the grace period"
    );
    assert!(stuck.is_closed());
}

/// After the signal and for SHUTDOWN_DELAY, a task that Swarm has just taken out of DNS still
/// gets requests from proxies that have not refreshed yet: it answers them all, new
/// connections included, and ends each keep-alive connection after its answer, so that no
/// client has a request in the air on a connection the server closes.
#[test]
fn during_the_shutdown_delay_it_serves_and_ends_keep_alive_connections() {
    let mut server = Server::start(&[("HOSTNAME", "web-1"), ("SHUTDOWN_DELAY", "3s")]);
    let mut idle = Conn::open(server.addr);
    idle.send(&request("GET", "/", &[]));
    assert_eq!(idle.read_reply(false).header("connection"), None);

    let sent = Instant::now();
    server.proc.signal("TERM");
    let notice = server
        .proc
        .stderr
        .wait_for(EXIT_TIMEOUT, |l| l.contains("still serving"));
    assert!(notice.is_some(), "no stop notice on stderr");

    // The connection that was idle at the signal is still open and answered.
    idle.send(&request("GET", "/", &["Color: blue"]));
    let reply = idle.read_reply(false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), "blue web-1\n");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(idle.is_closed());
    // New connections are still accepted.
    let reply = fetch(server.addr, "GET", "/", &["Color: green"]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "too slow to test inside the delay: {:?}",
        sent.elapsed()
    );

    let stopped = server.proc.stderr.wait_for(EXIT_TIMEOUT, |l| {
        l.contains("no longer accepting connections")
    });
    assert!(stopped.is_some(), "no notice that accepting stopped");
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "stopped accepting after {:?}",
        sent.elapsed()
    );
    assert_eq!(server.proc.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn bad_shutdown_delay_exits_2_naming_it() {
    let (status, _, stderr) = run_to_exit(&["127.0.0.1:0"], &[("SHUTDOWN_DELAY", "soon")]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("SHUTDOWN_DELAY") && stderr.contains("soon"),
        "stderr: {stderr}"
    );
}
