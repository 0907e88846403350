//! Hand-off under load: a new process takes the port over (`SO_REUSEPORT`) and the old one
//! drains and exits, five times in a row, while keep-alive clients keep sending. Like browsers,
//! the clients send a request again once when it failed on a reused keep-alive connection
//! before any response byte (the server closed it as the request went out); any other failure
//! counts. The bound is zero failed requests.
//!
//! `HANDOFF_REQUESTS` sets the number of requests (default 12,000; `scripts/reliability.sh`
//! runs 100,000).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use tokio::sync::Notify;

const HANDOFFS: usize = 5;
const CLIENTS: usize = 8;

#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    failed: AtomicUsize,
    retried: AtomicUsize,
    progress: Notify,
    stop: AtomicBool,
    /// The first few failures, for the assertion message.
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(why);
        }
    }
}

/// One GET; `Err(true)` when it failed before any response byte on a reused connection.
async fn attempt(client: &HttpClient, url: &str) -> Result<(), (bool, String)> {
    let req = Request::get(url).body(Full::<Bytes>::default()).unwrap();
    let resp = match tokio::time::timeout(TIMEOUT, client.request(req)).await {
        Err(_) => return Err((false, "no response within the timeout".into())),
        Ok(Err(e)) => {
            let retryable = !e.is_connect()
                && std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<hyper::Error>())
                    .is_some_and(|h| h.is_incomplete_message() || h.is_canceled());
            return Err((retryable, format!("{e:?}")));
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    match tokio::time::timeout(TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(_)) if status == 200 => Ok(()),
        Ok(Ok(_)) => Err((false, format!("status {status}"))),
        Ok(Err(e)) => Err((false, format!("body: {e}"))),
        Err(_) => Err((false, "body within the timeout".into())),
    }
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handoffs_under_load_lose_no_request() {
    let total: usize = std::env::var("HANDOFF_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let backend = Backend::echo("app").await;
    let mut old = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let listen = old.addr.to_string();
    let url = old.url("/");
    let tally = Arc::new(Tally::default());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let tally = tally.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let client = client();
                while !tally.stop.load(Ordering::SeqCst) {
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    match attempt(&client, &url).await {
                        Ok(()) => {}
                        Err((true, _)) => {
                            tally.retried.fetch_add(1, Ordering::SeqCst);
                            if let Err((_, why)) = attempt(&client, &url).await {
                                tally.fail(format!("after a retry: {why}"));
                            }
                        }
                        Err((false, why)) => tally.fail(why),
                    }
                    tally.progress.notify_waiters();
                }
            })
        })
        .collect();

    let wait_for = |n: usize| {
        let tally = tally.clone();
        async move {
            tokio::time::timeout(TIMEOUT * 3, async {
                loop {
                    let progressed = tally.progress.notified();
                    tokio::pin!(progressed);
                    progressed.as_mut().enable();
                    if tally.sent.load(Ordering::SeqCst) >= n {
                        return;
                    }
                    progressed.await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} requests sent in time"));
        }
    };

    for i in 1..=HANDOFFS {
        wait_for(total * i / (HANDOFFS + 1)).await;
        let new =
            blocking(|| ProxyProcess::start(&[("BLUE", &backend.url()), ("LISTEN", &listen)]));
        assert_eq!(new.addr, old.addr);
        old.signal("TERM");
        let status = blocking(|| old.wait_exit());
        assert!(
            status.success(),
            "hand-off {i}: the old process exited {status}"
        );
        old = new;
    }
    wait_for(total).await;
    tally.stop.store(true, Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(TIMEOUT, c).await.unwrap().unwrap();
    }
    let (sent, failed, retried) = (
        tally.sent.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.retried.load(Ordering::SeqCst),
    );
    println!(
        "hand-off: {HANDOFFS} hand-offs, {sent} requests sent, {failed} failed, {retried} retried"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed: {:?}",
        tally.errors.lock().unwrap()
    );
    old.signal("TERM");
    assert!(blocking(|| old.wait_exit()).success());
}
