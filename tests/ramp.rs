//! Progressive delivery against the real binary: the ramp's schedule, the guard's trips and
//! holds, and trips spreading between peers. Steps last seconds here; every wait polls the
//! admin endpoints under a deadline.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use colorproxy::ramp::format_time;
use common::dns::DnsServer;
use common::*;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// A backend answering `status` after `delay`, counting its requests, named in `x-backend`.
async fn backend(name: &'static str, status: u16, delay: Duration) -> (Backend, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let b = Backend::start(move |_req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(Full::new(Bytes::from(name)))
                .unwrap()
        }
    })
    .await;
    (b, hits)
}

fn time(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    // Whole seconds, as an operator writes it.
    format_time(t)
        .split('.')
        .next()
        .unwrap()
        .trim_end_matches('Z')
        .to_string()
        + "Z"
}

async fn json(client: &HttpClient, url: &str) -> serde_json::Value {
    let r = get(client, url).await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

/// The ramped color's entry in `/config` (green, second on the only route).
async fn green(client: &HttpClient, config_url: &str) -> serde_json::Value {
    json(client, config_url).await["routes"][0]["colors"][1].clone()
}

/// Polls `/config` until `done` holds for green's entry; panics at the deadline.
async fn green_until(
    client: &HttpClient,
    config_url: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let g = green(client, config_url).await;
        if done(&g) {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {TIMEOUT:?}: {g:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Sends `n` requests one after another; returns how many green answered.
async fn greens(client: &HttpClient, url: &str, n: usize) -> usize {
    let mut green = 0;
    for _ in 0..n {
        let r = get(client, url).await;
        if r.headers.get("x-backend").is_some_and(|v| v == "green") {
            green += 1;
        }
    }
    green
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_the_same_environment_give_the_same_share() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let (green_b, _) = backend("green", 200, Duration::ZERO).await;
    // Step 2 (30%) began 100 s ago and lasts an hour: no boundary during the test.
    let start = time(-3700);
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green_b.url()),
        ("GREEN_RAMP", "5,30,100".to_string()),
        ("GREEN_RAMP_INTERVAL", "1h".to_string()),
        ("GREEN_RAMP_START", start),
        ("ACCESS_LOG", "off".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = ProxyProcess::start(&env);
    let mut b = ProxyProcess::start(&env);
    let client = client();
    for p in [&mut a, &mut b] {
        let g = green(&client, &p.admin_url("/config")).await;
        assert_eq!(
            (g["share"].as_f64(), g["ramp"]["step"].as_u64()),
            (Some(30.0), Some(2))
        );
    }
    const N: usize = 2000;
    let (ga, gb) = (
        greens(&client, &a.url("/"), N).await,
        greens(&client, &b.url("/"), N).await,
    );
    // 30% of 2000: sigma = sqrt(2000 * 0.3 * 0.7) ≈ 20.5; 5 sigma each, and for the difference.
    let sigma = (N as f64 * 0.3 * 0.7).sqrt();
    for g in [ga, gb] {
        assert!(
            (g as f64 - 600.0).abs() < 5.0 * sigma,
            "{ga} and {gb} of {N}"
        );
    }
    assert!(
        (ga as f64 - gb as f64).abs() < 5.0 * sigma * 2f64.sqrt(),
        "{ga} and {gb} of {N}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_ramps_10_50_100() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let (green_b, _) = backend("green", 200, Duration::ZERO).await;
    let start = time(2);
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green_b.url()),
        ("GREEN_RAMP", "10,50,100".to_string()),
        ("GREEN_RAMP_INTERVAL", "2s".to_string()),
        ("GREEN_RAMP_START", start.clone()),
        ("GUARD_MIN_REQUESTS", "5".to_string()),
        ("ACCESS_LOG", "off".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut p = ProxyProcess::start(&env);
    p.wait_for_log("ramp: green starts at 0% of /");
    let config = p.admin_url("/config");
    let metrics = p.admin_url("/metrics");
    let client = client();
    // Before START: none to green.
    let g = green(&client, &config).await;
    if g["ramp"]["step"] == 0 {
        assert_eq!(greens(&client, &p.url("/"), 50).await, 0, "before START");
    }
    // Keep traffic going and note the share of each step as /config reports it.
    let mut seen: Vec<u64> = Vec::new();
    let mut per_step = [(0usize, 0usize); 4];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let before = green(&client, &config).await["ramp"]["step"]
            .as_u64()
            .unwrap();
        let g = greens(&client, &p.url("/"), 20).await;
        let after = green(&client, &config).await;
        // (A loaded machine may hold a step briefly: evidence, not time, moves it then.)
        let step = after["ramp"]["step"].as_u64().unwrap();
        if before == step {
            per_step[step as usize].0 += g;
            per_step[step as usize].1 += 20;
        }
        if seen.last() != Some(&step) {
            seen.push(step);
        }
        if step == 3 && per_step[3].1 >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ramp did not finish: {seen:?} {after:#}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "steps in order: {seen:?}"
    );
    assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
    assert_eq!(per_step[0].0, 0, "{per_step:?}");
    assert_eq!(
        per_step[3].0, per_step[3].1,
        "all green at 100%: {per_step:?}"
    );
    let (g1, n1) = per_step[1];
    assert!(g1 < n1, "step 1 is 10%, not all: {per_step:?}");
    p.wait_for_log("ramp step: green now gets 10% of /");
    p.wait_for_log("ramp step: green now gets 50% of /");
    p.wait_for_log("ramp step: green now gets 100% of /");
    let m = get(&client, &metrics).await.body;
    assert_eq!(
        sample(&m, "colorproxy_backend_share{color=\"green\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "colorproxy_backend_share{color=\"blue\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "colorproxy_ramp_step{color=\"green\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "colorproxy_guard_tripped{color=\"green\"}"),
        Some(0.0),
        "{m}"
    );
}

fn ramped_env(blue: &Backend, green: &Backend, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("BLUE".to_string(), blue.url()),
        ("GREEN".to_string(), green.url()),
        ("GREEN_RAMP".to_string(), "50,100".to_string()),
        ("GREEN_RAMP_INTERVAL".to_string(), "1h".to_string()),
        ("GREEN_RAMP_START".to_string(), time(-1)),
        ("GUARD_MIN_REQUESTS".to_string(), "20".to_string()),
        ("ACCESS_LOG".to_string(), "off".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn start(env: &[(String, String)]) -> ProxyProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ProxyProcess::start(&env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_500_trips_within_min_requests_and_then_gets_nothing() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    // The error-rate rule alone (consecutive errors out of reach), then the consecutive rule.
    for (consecutive, limit, rule) in [("1000", 20, "error rate"), ("5", 5, "consecutive errors")] {
        let (green_b, green_hits) = backend("green", 500, Duration::ZERO).await;
        let env = ramped_env(
            &blue,
            &green_b,
            &[("GUARD_CONSECUTIVE_ERRORS", consecutive)],
        );
        let mut p = start(&env);
        let client = client();
        let config = p.admin_url("/config");
        let mut sent = 0;
        while green(&client, &config).await["guard"]["state"] != "tripped" {
            get(&client, &p.url("/")).await;
            sent += 1;
            assert!(sent < 1000, "no trip after {sent} requests");
        }
        // One request may have been chosen while the last outcome was being recorded.
        let hits = green_hits.load(Ordering::SeqCst);
        assert!(
            hits >= limit && hits <= limit + 1,
            "{rule}: {hits} canary requests"
        );
        let g = green(&client, &config).await;
        assert_eq!(g["guard"]["rule"], rule, "{g:#}");
        assert_eq!(g["share"], 0.0, "{g:#}");
        assert_eq!(greens(&client, &p.url("/"), 200).await, 0);
        assert_eq!(
            green_hits.load(Ordering::SeqCst),
            hits,
            "no canary traffic after the trip"
        );
        let line = p.wait_for_log("guard tripped: green gets no new traffic");
        assert!(line.contains("ERROR") && line.contains(rule), "{line}");
        let m = get(&client, &p.admin_url("/metrics")).await.body;
        assert_eq!(
            sample(&m, "colorproxy_guard_tripped{color=\"green\"}"),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            sample(&m, "colorproxy_backend_share{color=\"green\"}"),
            Some(0.0),
            "{m}"
        );
        assert_eq!(
            sample(&m, "colorproxy_backend_share{color=\"blue\"}"),
            Some(1.0),
            "{m}"
        );
        assert!(
            sample(&m, "colorproxy_guard_window_errors{color=\"green\"}").unwrap() >= limit as f64,
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_three_times_slower_trips() {
    // Slow enough that scheduling noise on a loaded machine does not hide the ratio.
    let (blue, _) = backend("blue", 200, Duration::from_millis(20)).await;
    let (green_b, _) = backend("green", 200, Duration::from_millis(60)).await;
    let p = start(&ramped_env(&blue, &green_b, &[]));
    let mut p = p;
    let client = client();
    let config = p.admin_url("/config");
    let deadline = Instant::now() + TIMEOUT;
    while green(&client, &config).await["guard"]["state"] != "tripped" {
        greens(&client, &p.url("/"), 10).await;
        assert!(Instant::now() < deadline, "no trip");
    }
    let g = green(&client, &config).await;
    assert_eq!(g["guard"]["rule"], "latency", "{g:#}");
    assert!(
        g["guard"]["reason"]
            .as_str()
            .unwrap()
            .contains("p90 latency"),
        "{g:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caused_failures_do_not_trip() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    // 404 and 400 for most, and a slow answer to /slow that the client does not wait for.
    let green_b = Backend::start(move |req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Response::builder()
                .status(if n % 2 == 0 { 404 } else { 400 })
                .header("x-backend", "green")
                .body(Full::new(Bytes::from("no")))
                .unwrap()
        }
    })
    .await;
    let mut p = start(&ramped_env(&blue, &green_b, &[]));
    let client = client();
    let config = p.admin_url("/config");
    for _ in 0..20 {
        // The client leaves: 499 for whichever color it was.
        let _ =
            tokio::time::timeout(Duration::from_millis(30), get(&client, &p.url("/slow"))).await;
    }
    let green_answers = greens(&client, &p.url("/"), 300).await;
    assert!(green_answers > 50, "{green_answers}");
    let g = green(&client, &config).await;
    assert_eq!(g["guard"]["state"], "watching", "{g:#}");
    assert_eq!(g["guard"]["window"]["green"]["errors"], 0, "{g:#}");
    assert_eq!(g["share"], 50.0, "{g:#}");
    assert!(!p.output().contains("guard tripped"), "{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_too_little_traffic_holds_its_step() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let (green_b, _) = backend("green", 200, Duration::ZERO).await;
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green_b.url()),
        ("GREEN_RAMP", "10,50".to_string()),
        ("GREEN_RAMP_INTERVAL", "1s".to_string()),
        ("GREEN_RAMP_START", time(3)),
        ("GUARD_MIN_REQUESTS", "1000".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut p = ProxyProcess::start(&env);
    let client = client();
    let config = p.admin_url("/config");
    greens(&client, &p.url("/"), 30).await;
    let g = green_until(&client, &config, "step 2 on the schedule", |g| {
        g["ramp"]["scheduled_step"] == 2
    })
    .await;
    // Either the hold is visible already, or the next tick makes it so.
    let g = if g["ramp"]["held"] == true {
        g
    } else {
        green_until(&client, &config, "a hold", |g| g["ramp"]["held"] == true).await
    };
    assert_eq!(g["ramp"]["step"], 1, "{g:#}");
    assert_eq!(g["share"], 10.0, "{g:#}");
    assert_eq!(g["guard"]["state"], "holding", "{g:#}");
    p.wait_for_log("ramp held: green stays at 10%");
    let m = get(&client, &p.admin_url("/metrics")).await.body;
    assert_eq!(
        sample(&m, "colorproxy_ramp_held{color=\"green\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "colorproxy_ramp_step{color=\"green\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(!p.output().contains("now gets 50%"), "{}", p.output());
}

/// Three replicas whose PEERS name resolves to their admin addresses: a trip on one reaches the
/// other two within two polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_on_one_peer_stops_the_canary_on_every_peer() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    // Fails only what the first replica sends (it alone adds x-fail), so only it trips by itself.
    let green_hits = Arc::new(AtomicUsize::new(0));
    let counter = green_hits.clone();
    let green_b = Backend::start(move |req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let status = if req.headers().contains_key("x-fail") {
                500
            } else {
                200
            };
            Response::builder()
                .status(status)
                .header("x-backend", "green")
                .body(Full::new(Bytes::from("green")))
                .unwrap()
        }
    })
    .await;
    let dns = DnsServer::start().await;
    let octets = [2u8, 3, 4];
    let port = common_port(&octets).await;
    dns.set("tasks.proxy", &octets.map(|o| Ipv4Addr::new(127, 0, 0, o)));
    let resolver = dns.addr.to_string();
    let peers = format!("tasks.proxy:{port}");
    let mut replicas = Vec::new();
    // One START for all: the same environment, the same config hash.
    let base = ramped_env(&blue, &green_b, &[]);
    let mut envs = Vec::new();
    for o in octets {
        let admin = format!("127.0.0.{o}:{port}");
        let mut env = base.clone();
        env.extend([
            ("ADMIN_LISTEN".to_string(), admin),
            ("RESOLVER".to_string(), resolver.clone()),
            ("PEERS".to_string(), peers.clone()),
        ]);
        replicas.push(start(&env));
        envs.push(env);
    }
    let client = client();
    let configs: Vec<String> = replicas
        .iter_mut()
        .map(|p| p.admin_url("/config"))
        .collect();
    for c in &configs {
        assert_eq!(green(&client, c).await["guard"]["state"], "watching");
    }
    // Trip the first replica.
    let mut sent = 0;
    while green(&client, &configs[0]).await["guard"]["state"] != "tripped" {
        let req = Request::get(replicas[0].url("/"))
            .header("x-fail", "1")
            .body(Full::default())
            .unwrap();
        send(&client, req).await;
        sent += 1;
        assert!(sent < 500, "the first replica did not trip");
    }
    let tripped_at = Instant::now();
    for c in &configs[1..] {
        let g = green_until(&client, c, "the peer's trip", |g| {
            g["guard"]["state"] == "tripped"
        })
        .await;
        assert_eq!(g["guard"]["rule"], "peer", "{g:#}");
        assert!(
            g["guard"]["reason"]
                .as_str()
                .unwrap()
                .contains("failures in a row"),
            "{g:#}"
        );
    }
    let took = tripped_at.elapsed();
    assert!(
        took <= 2 * colorproxy::peers::POLL + Duration::from_secs(1),
        "the trip took {took:?} to spread"
    );
    let hits = green_hits.load(Ordering::SeqCst);
    for p in &replicas[1..] {
        assert_eq!(greens(&client, &p.url("/"), 100).await, 0);
    }
    assert_eq!(green_hits.load(Ordering::SeqCst), hits);
    replicas[1].wait_for_log("guard tripped: green gets no new traffic");

    // A replica that restarts mid-ramp learns of the trip before its first request.
    let restarted = replicas.remove(1);
    drop(restarted);
    // Listeners bind with SO_REUSEPORT: the new process may bind while the old one dies.
    let mut again = start(&envs.remove(1));
    assert_eq!(greens(&client, &again.url("/"), 50).await, 0);
    assert_eq!(green_hits.load(Ordering::SeqCst), hits);
    let g = green(&client, &again.admin_url("/config")).await;
    assert_eq!(g["guard"]["rule"], "peer", "{g:#}");
}

/// A port free on 127.0.0.`o` for every octet.
async fn common_port(octets: &[u8]) -> u16 {
    'attempt: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, octets[0]), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut held = vec![first];
        for &o in &octets[1..] {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, o), port)).await {
                Ok(l) => held.push(l),
                Err(_) => continue 'attempt,
            }
        }
        return port;
    }
    panic!("no common free port on {octets:?}");
}

#[test]
fn check_prints_the_schedule_and_ramp_errors_name_their_variable() {
    let env = [
        ("BLUE", "http://myapp-v1:8080"),
        ("GREEN", "http://myapp-v2:8080"),
        ("GREEN_RAMP", "1,5,25,50,100"),
        ("GREEN_RAMP_INTERVAL", "5m"),
        ("GREEN_RAMP_START", "2026-01-01T00:00:00Z"),
    ];
    let (status, stdout, stderr) = run(&["check"], &env);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("ramp green on /: 5 steps every 5m"),
        "{stdout}"
    );
    assert!(
        stdout.contains("5/5     2026-01-01T00:20:00Z   100%  <- now"),
        "{stdout}"
    );
    assert!(stdout.contains("guard on: window 1m"), "{stdout}");
    assert!(
        stdout.contains("/      green  http://myapp-v2:8080    ramp  100.0%"),
        "{stdout}"
    );

    let (status, _, stderr) = run(
        &["check"],
        &[
            ("BLUE", "http://myapp-v1:8080"),
            ("GREEN", "http://myapp-v2:8080"),
            ("GREEN_RAMP", "1,5,5"),
            ("GREEN_RAMP_INTERVAL", "100ms"),
            ("GUARD_MAX_ERROR_RATE", "lots"),
        ],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    for var in [
        "GREEN_RAMP=\"1,5,5\"",
        "GREEN_RAMP_INTERVAL=\"100ms\"",
        "GREEN_RAMP_START=\"\"",
        "GUARD_MAX_ERROR_RATE=\"lots\"",
    ] {
        assert!(stderr.contains(var), "{var} missing: {stderr}");
    }
}

/// With sticky cookies, every bucket that reaches the canary stays there as the share rises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_only_move_to_the_canary_as_it_ramps() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let (green_b, _) = backend("green", 200, Duration::ZERO).await;
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green_b.url()),
        ("GREEN_RAMP", "10,50,100".to_string()),
        // Long enough for a sweep of 100 requests to fall within one step on a busy machine.
        ("GREEN_RAMP_INTERVAL", "6s".to_string()),
        ("GREEN_RAMP_START", time(1)),
        ("GUARD_MIN_REQUESTS", "5".to_string()),
        ("STICKY", "cookie".to_string()),
        ("ACCESS_LOG", "off".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut p = ProxyProcess::start(&env);
    let config = p.admin_url("/config");
    let client = client();
    // Green's buckets (of 100 sampled clients) at each step.
    let mut by_step: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    let deadline = Instant::now() + 2 * TIMEOUT;
    while !by_step.contains_key(&3) {
        let before = green(&client, &config).await["ramp"]["step"]
            .as_u64()
            .unwrap();
        let mut greens = Vec::new();
        for k in (0..10_000u32).step_by(100) {
            let req = Request::get(p.url("/"))
                .header("cookie", format!("colorproxy_bucket={k}"))
                .body(Full::default())
                .unwrap();
            if send(&client, req).await.headers["x-backend"] == "green" {
                greens.push(k);
            }
        }
        let after = green(&client, &config).await["ramp"]["step"]
            .as_u64()
            .unwrap();
        if before == after {
            if let Some(seen) = by_step.get(&after) {
                assert_eq!(
                    seen, &greens,
                    "step {after} maps buckets the same way each time"
                );
            }
            by_step.insert(after, greens);
        }
        assert!(
            Instant::now() < deadline,
            "ramp did not finish: {by_step:?}"
        );
    }
    assert!(
        by_step.contains_key(&1) && by_step.contains_key(&2),
        "{by_step:?}"
    );
    let sizes: Vec<(u64, usize)> = by_step.iter().map(|(s, g)| (*s, g.len())).collect();
    for (step, n) in &sizes {
        assert_eq!(*n, [0, 10, 50, 100][*step as usize], "{sizes:?}");
    }
    let steps: Vec<&Vec<u32>> = by_step.values().collect();
    for pair in steps.windows(2) {
        assert!(
            pair[0].iter().all(|k| pair[1].contains(k)),
            "a client left the canary: {by_step:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_refuses_every_connection_trips_though_retries_save_its_requests() {
    let (blue, _) = backend("blue", 200, Duration::ZERO).await;
    let dead = dead_address().await;
    let mut env = vec![("BLUE".to_string(), blue.url())];
    env.extend(
        ramped_env(&blue, &blue, &[])
            .into_iter()
            .filter(|(k, _)| k != "BLUE" && k != "GREEN"),
    );
    env.push(("GREEN".to_string(), dead));
    let mut p = start(&env);
    let client = client();
    let config = p.admin_url("/config");
    let mut sent = 0;
    while green(&client, &config).await["guard"]["state"] != "tripped" {
        // Every request is answered: the refused ones went on to blue.
        let r = get(&client, &p.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        sent += 1;
        assert!(sent < 1000, "no trip after {sent} requests");
    }
    let g = green(&client, &config).await;
    assert_eq!(g["guard"]["rule"], "consecutive errors", "{g:#}");
}
