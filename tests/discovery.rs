//! Swarm task discovery, per-request balancing, passive health and failover, against the real
//! binary: "tasks" are HTTP servers on 127.0.0.2, 127.0.0.3 ... (all local on Linux) sharing
//! one port, and a DNS server in the test process answers `tasks.<service>` for them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::dns::DnsServer;
use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One task of a service: answers its own IP and counts what it served. `kill` stops it the
/// way a dying container does: listener and every connection gone at once.
struct Task {
    ip: Ipv4Addr,
    hits: Arc<AtomicUsize>,
    /// False once killed; a request is counted only under this lock, so that nothing is
    /// counted after `kill` returns (another worker thread may be mid-request).
    alive: Arc<Mutex<bool>>,
    /// Connections open now, and a signal each time one closes.
    open: Arc<(AtomicUsize, Notify)>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Task {
    fn serve(listener: TcpListener, total: Arc<Counter>) -> Task {
        let ip = match listener.local_addr().unwrap().ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("{other}"),
        };
        let hits = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(Mutex::new(true));
        let open: Arc<(AtomicUsize, Notify)> = Arc::default();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let hits = hits.clone();
            let alive = alive.clone();
            let conns = conns.clone();
            let open = open.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let hits = hits.clone();
                    let alive = alive.clone();
                    let total = total.clone();
                    let service = hyper::service::service_fn(move |_req| {
                        let served = {
                            let alive = alive.lock().unwrap();
                            if *alive {
                                hits.fetch_add(1, Ordering::SeqCst);
                            }
                            *alive
                        };
                        if served {
                            total.add();
                        }
                        async move {
                            if !served {
                                // Dead: the connection breaks, as with a killed container.
                                return Err("task killed");
                            }
                            Ok(hyper::Response::new(Full::new(Bytes::from(ip.to_string()))))
                        }
                    });
                    open.0.fetch_add(1, Ordering::SeqCst);
                    let open = open.clone();
                    conns.lock().unwrap().push(tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        open.0.fetch_sub(1, Ordering::SeqCst);
                        open.1.notify_waiters();
                    }));
                }
            }
        });
        Task {
            ip,
            hits,
            alive,
            open,
            accept,
            conns,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until no connection to this task is open.
    async fn wait_no_connections(&self) {
        let open = &self.open;
        let closed = async {
            loop {
                let notified = open.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if open.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(TIMEOUT, closed)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} connections to {} still open",
                    open.0.load(Ordering::SeqCst),
                    self.ip
                )
            });
    }

    fn kill(&self) {
        *self.alive.lock().unwrap() = false;
        self.accept.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Requests served by all tasks; wakes a waiter when a threshold is reached.
#[derive(Default)]
struct Counter {
    n: AtomicUsize,
    reached: Notify,
    threshold: AtomicUsize,
}

impl Counter {
    fn add(&self) {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.threshold.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }
}

/// Starts tasks on 127.0.0.`octet` for each octet, all on one port.
async fn start_tasks(octets: &[u8], total: &Arc<Counter>) -> (Vec<Task>, u16) {
    'attempt: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, octets[0]), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for &o in &octets[1..] {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, o), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'attempt,
            }
        }
        let tasks = listeners
            .into_iter()
            .map(|l| Task::serve(l, total.clone()))
            .collect();
        return (tasks, port);
    }
    panic!("no common free port for tasks {octets:?}");
}

fn ips(tasks: &[Task]) -> Vec<Ipv4Addr> {
    tasks.iter().map(|t| t.ip).collect()
}

fn proxy_env<'a>(dns: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("RESOLVER", dns), ("DNS_REFRESH", "200ms")];
    env.extend_from_slice(extra);
    env
}

async fn get_ok(client: &HttpClient, url: &str) -> String {
    let r = get(client, url).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_every_task_on_one_keep_alive_client() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[2, 3, 4], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.myapp", &ips(&tasks));
    // The service's virtual IP: nothing listens there, so using it would fail.
    dns.set("myapp", &[Ipv4Addr::new(127, 0, 0, 99)]);
    let upstream = format!("http://myapp:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));
    let line = proxy.wait_for_log("endpoints updated");
    assert!(
        line.contains("source=\"tasks\"") && line.contains("added=3"),
        "{line}"
    );

    let client = client();
    for _ in 0..600 {
        get_ok(&client, &proxy.url("/")).await;
    }
    // 200 each expected; sigma = sqrt(600 * 1/3 * 2/3) ≈ 11.5, so ±5 sigma.
    for t in &tasks {
        assert!((142..=258).contains(&t.hits()), "{}: {}", t.ip, t.hits());
    }
}

/// A stack's services are named `<stack>_<service>`: the underscore is no obstacle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_service_name_with_an_underscore_is_discovered() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[2, 3], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.demo_proxy", &ips(&tasks));
    let upstream = format!("http://demo_proxy:{port}");
    let dns_addr = dns.addr.to_string();
    let proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));
    let client = client();
    for _ in 0..20 {
        get_ok(&client, &proxy.url("/")).await;
    }
    assert!(tasks.iter().all(|t| t.hits() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down_is_followed_within_a_refresh() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[5, 6, 7], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.web", &ips(&tasks[..2]));
    let upstream = format!("http://web:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("GREEN", &upstream)]));
    let client = client();
    for _ in 0..100 {
        get_ok(&client, &proxy.url("/")).await;
    }
    assert_eq!(tasks[2].hits(), 0);

    // Scale up: the new task gets traffic after the next refresh.
    dns.set("tasks.web", &ips(&tasks));
    proxy.wait_for_log("added=1");
    for _ in 0..300 {
        get_ok(&client, &proxy.url("/")).await;
    }
    // 100 expected; sigma ≈ 8.2.
    assert!(tasks[2].hits() >= 59, "new task got {}", tasks[2].hits());

    // Scale down: the removed task gets nothing once the refresh saw it go, and its idle
    // pooled connection is closed at once (a task shutting down is not kept busy).
    dns.set("tasks.web", &ips(&tasks[1..]));
    proxy.wait_for_log("removed=1");
    tasks[0].wait_no_connections().await;
    let before = tasks[0].hits();
    for _ in 0..300 {
        get_ok(&client, &proxy.url("/")).await;
    }
    assert_eq!(tasks[0].hits(), before, "a removed task still got requests");
}

/// Runs `clients` keep-alive clients sending `each` GETs; returns the statuses and bodies.
fn load(proxy: &ProxyProcess, clients: usize, each: usize) -> Vec<JoinHandle<Vec<(u16, String)>>> {
    (0..clients)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move {
                let client = client();
                let mut out = Vec::with_capacity(each);
                for _ in 0..each {
                    let r = get(&client, &url).await;
                    out.push((r.status, r.body));
                }
                out
            })
        })
        .collect()
}

async fn all_ok(load: Vec<JoinHandle<Vec<(u16, String)>>>) -> Vec<String> {
    let mut bodies = Vec::new();
    for handle in load {
        for (status, body) in tokio::time::timeout(TIMEOUT * 3, handle)
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(status, 200, "a client request failed: {body}");
            bodies.push(body);
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_task_mid_load_fails_no_client_request() {
    let total = Arc::new(Counter::default());
    total.threshold.store(300, Ordering::SeqCst);
    let (tasks, port) = start_tasks(&[8, 9, 10], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.api", &ips(&tasks));
    let upstream = format!("http://api:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));

    let running = load(&proxy, 8, 150);
    tokio::time::timeout(TIMEOUT, total.reached.notified())
        .await
        .expect("load started");
    // The task dies; DNS still lists it (Swarm has not noticed yet).
    tasks[0].kill();
    let killed_at = tasks[0].hits();
    let bodies = all_ok(running).await;
    assert_eq!(bodies.len(), 1200);
    assert_eq!(tasks[0].hits(), killed_at);
    assert!(tasks[1].hits() > 0 && tasks[2].hits() > 0);
    proxy.wait_for_log("endpoint ejected after failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_with_two_of_three_tasks_fails_no_client_request() {
    let total = Arc::new(Counter::default());
    total.threshold.store(300, Ordering::SeqCst);
    let (tasks, port) = start_tasks(&[21, 22, 23], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.api", &ips(&tasks));
    let upstream = format!("http://api:{port}");
    let dns_addr = dns.addr.to_string();
    let proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));

    let running = load(&proxy, 8, 200);
    tokio::time::timeout(TIMEOUT, total.reached.notified())
        .await
        .expect("load started");
    // Both at once, and DNS still lists them: a retry may well meet the other dead task.
    tasks[0].kill();
    tasks[1].kill();
    let bodies = all_ok(running).await;
    assert_eq!(bodies.len(), 1600);
    assert!(tasks[2].hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_whole_color_fails_over_to_the_other() {
    let total = Arc::new(Counter::default());
    total.threshold.store(200, Ordering::SeqCst);
    let (blue, port) = start_tasks(&[11, 12], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.v1", &ips(&blue));
    let (green, green_port) = start_tasks(&[13], &total).await;
    dns.set("tasks.v2", &ips(&green));
    let blue_url = format!("http://v1:{port}");
    let green_url = format!("http://v2:{green_port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(
        &dns_addr,
        &[("BLUE", &blue_url), ("GREEN", &green_url)],
    ));

    let running = load(&proxy, 6, 150);
    tokio::time::timeout(TIMEOUT, total.reached.notified())
        .await
        .expect("load started");
    green[0].kill();
    let killed_at = green[0].hits();
    let bodies = all_ok(running).await;
    assert_eq!(bodies.len(), 900);
    assert!(killed_at > 0, "green got traffic before it died");
    let line = proxy.wait_for_log("its share goes to the other colors");
    assert!(line.contains("green"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_answers_502_with_the_reason() {
    let dns = DnsServer::start().await;
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(
        &dns_addr,
        &[("BLUE", "http://no-such-service:8080")],
    ));
    proxy.wait_for_log("DNS refresh failed");
    let r = get(&client(), &proxy.url("/")).await;
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("upstream blue")
            && r.body
                .contains("neither tasks.no-such-service nor no-such-service resolves"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_dns_names_are_used_when_there_is_no_tasks_record() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[14, 15], &total).await;
    let dns = DnsServer::start().await;
    // docker compose --scale: the service name itself has one address per container.
    dns.set("compose-app", &ips(&tasks));
    let upstream = format!("http://compose-app:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));
    let line = proxy.wait_for_log("endpoints updated");
    assert!(line.contains("source=\"dns\""), "{line}");
    let client = client();
    for _ in 0..100 {
        get_ok(&client, &proxy.url("/")).await;
    }
    assert!(tasks.iter().all(|t| t.hits() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_keeps_the_last_endpoints_and_warns_once() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[16], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.svc", &ips(&tasks));
    let upstream = format!("http://svc:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(
        &dns_addr,
        &[
            ("BLUE", &upstream),
            ("RUST_LOG", "info,colorproxy::discovery=debug"),
        ],
    ));
    proxy.wait_for_log("endpoints updated");
    dns.stop();
    proxy.wait_for_log("DNS refresh failed; keeping the last endpoints");
    proxy.wait_for_log("DNS refresh still failing");
    let client = client();
    for _ in 0..20 {
        get_ok(&client, &proxy.url("/")).await;
    }
    let warnings = proxy
        .output()
        .lines()
        .filter(|l| l.contains("DNS refresh failed"))
        .count();
    assert_eq!(warnings, 1, "{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_off_resolves_the_name_per_connection() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[17, 18], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.vip", &ips(&tasks));
    // The "virtual IP" is task 17 alone: with discovery off, only it is used.
    dns.set("vip", &ips(&tasks[..1]));
    let upstream = format!("http://vip:{port}");
    let dns_addr = dns.addr.to_string();
    let proxy = ProxyProcess::start(&proxy_env(
        &dns_addr,
        &[("BLUE", &upstream), ("BLUE_DISCOVERY", "off")],
    ));
    let client = client();
    for _ in 0..50 {
        assert_eq!(get_ok(&client, &proxy.url("/")).await, "127.0.0.17");
    }
    assert_eq!(tasks[1].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_metrics_follow_health() {
    let total = Arc::new(Counter::default());
    let (tasks, port) = start_tasks(&[19, 20], &total).await;
    let dns = DnsServer::start().await;
    dns.set("tasks.m", &ips(&tasks));
    let upstream = format!("http://m:{port}");
    let dns_addr = dns.addr.to_string();
    let mut proxy = ProxyProcess::start(&proxy_env(&dns_addr, &[("BLUE", &upstream)]));
    tasks[0].kill();
    let client = client();
    for _ in 0..60 {
        get_ok(&client, &proxy.url("/")).await;
    }
    proxy.wait_for_log("endpoint ejected after failing");
    let m = get(&client, &proxy.admin_url("/metrics")).await.body;
    assert!(
        m.contains(r#"colorproxy_endpoints{color="blue",state="live"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"colorproxy_endpoints{color="blue",state="ejected"} 1"#),
        "{m}"
    );
    let _: SocketAddr = proxy.addr;
}
