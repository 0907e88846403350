//! A connection flood: 10,000 idle client connections to the real binary, started with the
//! common soft limit of 1,024 open files, and a new request is still served. It is, because
//! the proxy raises its soft limit to the hard one at startup.

mod common;

use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

const FLOOD: usize = 10_000;
/// Below the proxy's 10 s header read timeout, which closes idle connections.
const PROBE_WITHIN: Duration = Duration::from_secs(5);

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_and_new_requests_are_still_served() {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        hard >= FLOOD as u64 + 500,
        "the hard open-file limit ({hard}) is too low for {FLOOD} connections: raise it (ulimit -Hn)"
    );
    // The proxy inherits the usual default soft limit: raising it is its own job.
    rlimit::setrlimit(rlimit::Resource::NOFILE, 1024.min(soft), hard).unwrap();
    let blue = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &blue.url()), ("ACCESS_LOG", "off")]);
    let line = proxy.wait_for_log("open file limit");
    assert!(line.contains("raised"), "{line}");
    // This process holds the flood's client ends.
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).unwrap();

    let addr = proxy.addr;
    let connecting: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(async move { TcpStream::connect(addr).await }))
        .collect();
    let mut flood = Vec::with_capacity(FLOOD);
    for c in connecting {
        let stream = tokio::time::timeout(TIMEOUT, c)
            .await
            .expect("connected within the timeout")
            .unwrap()
            .expect("connect");
        // Closed with a reset at the end: no 10,000 TIME_WAIT ports left for later tests.
        stream.set_zero_linger().unwrap();
        flood.push(stream);
    }

    // Accepted in order: once the probe is answered, the flood before it was accepted too.
    let client = client();
    let r = tokio::time::timeout(PROBE_WITHIN, get(&client, &proxy.url("/probe")))
        .await
        .expect("a new request answered during the flood");
    assert_eq!(r.status, 200);
    let metrics = get(&client, &proxy.admin_url("/metrics")).await.body;
    let open = metric(&metrics, "colorproxy_connections_open");
    assert!(open > FLOOD as u64, "{open} connections open");
    assert!(
        !proxy.output().contains("accept failed"),
        "{}",
        proxy.output()
    );
    drop(flood);
}
