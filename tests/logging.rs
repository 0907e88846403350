//! A log consumer that stops reading (a stalled log driver) never stops the proxy: the real
//! binary with its stdout a pipe that nobody reads for a while.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// How long one request may take while stdout is stuck; before the bounded writer, requests
/// stopped being answered at all once about 64 KiB of log waited.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn address_after(line: &str, text: &str) -> Option<String> {
    line.split(text)
        .nth(1)?
        .split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .map(str::to_string)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_drops_log_lines_instead_of_requests() {
    let blue = Backend::echo("blue").await;
    let mut child = Command::new(BIN)
        .env_clear()
        .env("BLUE", blue.url())
        .env("LISTEN", "127.0.0.1:0")
        .env("ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn colorproxy");
    let stdout = child.stdout.take().unwrap();
    /// Kills and reaps the proxy however the test ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Reap(child);
    let mut stdout = BufReader::new(stdout);
    // Read the startup lines for the addresses, then stop reading.
    let (addrs_tx, addrs) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let (mut listen, mut admin) = (None, None);
        let mut line = String::new();
        while listen.is_none() || admin.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            listen = listen.or_else(|| address_after(&line, "listening on "));
            admin = admin.or_else(|| address_after(&line, "admin endpoints on "));
        }
        let _ = addrs_tx.send((listen, admin));
        stdout
    });
    let (listen, admin) = addrs.recv_timeout(TIMEOUT).expect("startup lines");
    let (listen, admin) = (
        listen.expect("listen address"),
        admin.expect("admin address"),
    );
    let stdout = reader.join().unwrap();

    // Access log lines of about 1.2 KiB: the pipe (64 KiB) and the writer's queue and batch
    // (2 x 256 KiB) are full after about 500 requests; 2,000 overflow them for sure.
    let path = format!("/{}", "x".repeat(1000));
    let client = client();
    let started = Instant::now();
    for i in 0..2000 {
        let url = format!("http://{listen}{path}?{i}");
        let r = tokio::time::timeout(ANSWER_WITHIN, get(&client, &url))
            .await
            .unwrap_or_else(|_| panic!("request {i} not answered within {ANSWER_WITHIN:?}"));
        assert_eq!(r.status, 200);
    }
    let serving = started.elapsed();
    let metrics_url = format!("http://{admin}/metrics");
    let during = metric(
        &get(&client, &metrics_url).await.body,
        "colorproxy_log_lines_dropped_total",
    );
    assert!(
        during > 0,
        "nothing dropped: the stall was not reached ({serving:?})"
    );

    // The consumer comes back: the lines that fitted arrive, then one warning with the count.
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut access = 0;
    let warning = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the drop warning");
        if line.contains("colorproxy::access") {
            access += 1;
        }
        if line.contains("log lines were dropped") {
            break line;
        }
    };
    assert!(access > 0, "no access line came through before the warning");
    let reported: u64 = warning
        .split("dropped=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {warning:?}"));
    assert!(reported > 0 && reported <= during, "{warning} vs {during}");
    // Nothing is dropped any more, and the count in /metrics is the one the log gave.
    let r = get(&client, &format!("http://{listen}/after")).await;
    assert_eq!(r.status, 200);
    let after = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the access line of /after");
        if line.contains("/after") {
            break metric(
                &get(&client, &metrics_url).await.body,
                "colorproxy_log_lines_dropped_total",
            );
        }
    };
    assert_eq!(after, reported, "{warning}");
}
