//! The status page (`GET /` on the admin listener) and `/status`, against the real binary: the
//! figures agree with `/metrics`, the history fills, hostile text from the environment and from
//! peers stays text. `status_page_in_chromium` opens the page in headless Chromium (Debian's
//! `chromium`); `.ci/run` runs it with `--ignored`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tokio::net::TcpListener;

/// A route prefix is the operator's text, shown on the page: it must stay text.
const HOSTILE_PREFIX: &str = "/<img/src=x/onerror=alert(1)>";
/// What a hostile "peer" answers on the admin network.
const HOSTILE_HASH: &str = "<script>alert(2)</script>";
const HOSTILE_VERSION: &str = "<img src=x onerror=alert(3)>";

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        // An empty sum of floats is -0.
        .fold(0.0, |a, b| a + b)
}

fn config_hash_of(metrics: &str) -> String {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("colorproxy_build_info{"))
        .expect("colorproxy_build_info");
    line.split("config_hash=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

struct Setup {
    proxy: ProxyProcess,
    _blue: Backend,
    _green: Backend,
    _peer: Backend,
    _dns: dns::DnsServer,
    /// Requests sent through the proxy, per route.
    sent: u64,
}

/// Blue and green on `/`, green ramped (10, 25, 50, 100 every minute, started 5 s ago), a
/// third color on a route with a hostile prefix; PEERS resolves to this replica and to a hostile
/// fake peer on 127.0.0.2. Traffic is sent until the history holds `points` points.
async fn setup(points: usize) -> Setup {
    // Blue is the stable color: 1 in 40 of its answers is a 503, which the canary is
    // compared against; green answers a little slower.
    let blue = Backend::start(|req: Request<Incoming>| async move {
        let n: u64 = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(1);
        let status = if n % 40 == 0 { 503 } else { 200 };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from("blue")))
            .unwrap()
    })
    .await;
    let green = Backend::start(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Response::new(Full::new(Bytes::from("green")))
    })
    .await;
    let red = Backend::echo("red").await;
    // The fake peer listens on 127.0.0.2 on the port this replica's admin listener will use.
    let peer_listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = peer_listener.local_addr().unwrap().port();
    let peer = Backend::serve(peer_listener, |_req: Request<Incoming>| async move {
        let answer = serde_json::json!({
            "config_hash": HOSTILE_HASH,
            "tripped": [{ "color": "green", "reason": "<b>peer reason</b>" }],
            "instance": "x",
            "version": HOSTILE_VERSION,
            "uptime_seconds": 7,
            "guard": [{ "color": "<u>green</u>", "state": "<s>tripped</s>", "step": 1, "steps": 4, "share": 0 }],
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    });
    let dns = dns::DnsServer::start().await;
    dns.set(
        "tasks.proxy",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
    );
    let start = colorproxy::ramp::format_time(SystemTime::now() - Duration::from_secs(5));
    let (admin, resolver) = (format!("127.0.0.1:{port}"), dns.addr.to_string());
    let env = [
        ("COLORS", "blue,green,red".to_string()),
        ("BLUE", blue.url()),
        ("GREEN", green.url()),
        ("RED", red.url()),
        ("RED_PREFIX", HOSTILE_PREFIX.to_string()),
        ("GREEN_RAMP", "10,25,50,100".to_string()),
        ("GREEN_RAMP_INTERVAL", "1m".to_string()),
        ("GREEN_RAMP_START", start),
        ("ADMIN_LISTEN", admin),
        ("RESOLVER", resolver),
        ("PEERS", "proxy".to_string()),
        // Green is a little slower by design; a busy CI machine must not make that a trip.
        ("GUARD_MAX_LATENCY_RATIO", "50".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = ProxyProcess::start(&env);
    let client = client();
    let status_url = proxy.admin_url("/status");
    let deadline = Instant::now() + TIMEOUT;
    let mut sent = 0u64;
    loop {
        for _ in 0..40 {
            sent += 1;
            let r = get(&client, &proxy.url(&format!("/?{sent}"))).await;
            assert!(r.status == 200 || r.status == 503, "{}", r.status);
        }
        let s: Value = serde_json::from_str(&get(&client, &status_url).await.body).unwrap();
        let have = s["history"]["times"].as_array().unwrap().len();
        let peers_seen = s["peers"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2);
        if have >= points && peers_seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history has {have} points: {s:#}"
        );
    }
    Setup {
        proxy,
        _blue: blue,
        _green: green,
        _peer: peer,
        _dns: dns,
        sent,
    }
}

/// `/metrics` once every request sent is counted (a request is counted when the server lets
/// go of its response body, a moment after the client has read it).
async fn settled_metrics(setup: &mut Setup) -> String {
    let client = client();
    let url = setup.proxy.admin_url("/metrics");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = get(&client, &url).await.body;
        let counted = metric_sum(&m, "colorproxy_requests_total", &[r#"color="blue""#])
            + metric_sum(&m, "colorproxy_requests_total", &[r#"color="green""#]);
        if counted as u64 >= setup.sent {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} of {} counted",
            setup.sent
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_agrees_with_metrics_and_keeps_history() {
    let mut setup = setup(3).await;
    let m = settled_metrics(&mut setup).await;
    let client = client();
    let r = get(&client, &setup.proxy.admin_url("/status")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["cache-control"], "no-store");
    let s: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config_hash"], config_hash_of(&m));
    assert_eq!(s["draining"], false);
    for c in s["colors"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let color = format!("color=\"{name}\"");
        let requests = metric_sum(&m, "colorproxy_requests_total", &[&color]);
        assert_eq!(c["requests"].as_f64(), Some(requests), "{name}: {m}");
        let errors: f64 = (500..600)
            .map(|code| {
                metric_sum(
                    &m,
                    "colorproxy_requests_total",
                    &[&color, &format!("code=\"{code}\"")],
                )
            })
            .sum();
        assert_eq!(c["errors"].as_f64(), Some(errors), "{name}");
        let share = metric_sum(&m, "colorproxy_backend_share", &[&color]);
        assert_eq!(c["share"].as_f64(), Some(share), "{name}");
        assert_eq!(c["live"], 1, "{name}");
    }
    assert!(
        s["colors"][0]["errors"].as_u64().unwrap() > 0,
        "blue's 503s"
    );
    // The ramp as /config shows it, with its step and guard.
    let green = &s["routes"][0]["colors"][1];
    assert_eq!(green["name"], "green");
    assert_eq!(green["ramp"]["step"], 1);
    assert_eq!(green["guard"]["state"], "watching");
    assert_eq!(s["routes"][1]["prefix"], HOSTILE_PREFIX);
    // The history: one series per color, as many values as times, rates that add up.
    let h = &s["history"];
    let times = h["times"].as_array().unwrap();
    assert!(times.len() >= 3, "{h}");
    assert!(times.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()));
    for c in h["colors"].as_array().unwrap() {
        for key in [
            "requests_per_second",
            "error_rate",
            "p50_ms",
            "p90_ms",
            "live",
            "share",
        ] {
            assert_eq!(c[key].as_array().unwrap().len(), times.len(), "{key}");
        }
    }
    let rps: f64 = h["colors"][0]["requests_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(rps > 0.0, "{h}");
    let share = h["colors"][1]["share"].as_array().unwrap();
    assert_eq!(share.last().unwrap().as_f64(), Some(0.1), "{h}");
    // PEERS: this replica, and a peer with another hash: not converged; its trip is ignored.
    let peers = &s["peers"];
    assert_eq!(peers["converged"], false, "{peers}");
    let replicas = peers["replicas"].as_array().unwrap();
    let this: Vec<&Value> = replicas.iter().filter(|r| r["this"] == true).collect();
    assert_eq!(this.len(), 1, "{peers}");
    assert_eq!(this[0]["same_config"], true);
    assert_eq!(this[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(this[0]["guard"][0]["color"], "green");
    assert_eq!(this[0]["guard"][0]["state"], "watching");
    assert_eq!(this[0]["guard"][0]["share"], 10);
    assert!(replicas.iter().any(|r| r["config_hash"] == HOSTILE_HASH));
    assert_eq!(
        green["guard"]["state"], "watching",
        "a peer with another hash trips nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_self_contained_and_locked_down() {
    let blue = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let client = client();
    let r = get(&client, &proxy.admin_url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(
        csp.contains("connect-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(r.body.contains("<script>") && r.body.contains("fetch(\"status\""));
    // Without a ramp or PEERS: no ramp, no peers.
    let s: Value =
        serde_json::from_str(&get(&client, &proxy.admin_url("/status")).await.body).unwrap();
    assert_eq!(s["peers"], Value::Null);
    assert_eq!(s["routes"][0]["colors"][0]["share"], 100.0);
    // Anything else is still a 404 that names the endpoints, and only GET and HEAD are allowed.
    let r = get(&client, &proxy.admin_url("/statuz")).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/status"), "{}", r.body);
    let post = Request::post(proxy.admin_url("/status"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, post).await.status, 405);
}

/// Runs chromium with `args` and the flags a fresh CI machine needs, killed (by its PID) if it
/// takes longer than a minute; returns its stdout.
fn chromium(args: &[&str]) -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = std::env::temp_dir().join(format!(
        "colorproxy-chromium-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} (apt-get install chromium, or set CHROMIUM): {e}")
        });
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&profile);
            panic!("{bin} {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "{bin} {args:?}: {status}");
    out
}

/// The text of the first element after `from` in `dom` that has `data-field="<field>"`.
fn field<'a>(dom: &'a str, from: &str, field: &str) -> Option<&'a str> {
    let start = dom.find(from)?;
    let rest = &dom[start..];
    let at = rest.find(&format!("data-field=\"{field}\""))?;
    let rest = &rest[at..];
    let text = &rest[rest.find('>')? + 1..];
    Some(&text[..text.find('<')?])
}

/// The opening tag of the chart `id`, and the chart up to its end.
fn chart<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-chart=\"{id}\""))?;
    let start = dom[..at].rfind("<svg")?;
    let end = start + dom[start..].find("</svg>")?;
    Some(&dom[start..end])
}

fn points_of(svg: &str) -> usize {
    svg.split("data-points=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether every chart is drawn with at least `min` points, with a line for blue and green.
fn charts_rendered(dom: &str, min: usize) -> Result<(), String> {
    for id in ["rps", "errors", "p50", "p90", "share", "endpoints"] {
        let svg = chart(dom, id).ok_or(format!("no chart {id}"))?;
        if points_of(svg) < min {
            return Err(format!("chart {id} has {} points", points_of(svg)));
        }
        for color in ["blue", "green"] {
            let line = svg
                .split("<path")
                .skip(1)
                .find(|p| p.contains(&format!("data-color=\"{color}\"")))
                .ok_or(format!("chart {id} has no {color} line"))?;
            // A line of at least `min` points: a move and `min` - 1 lines.
            let segments = line
                .split(" d=\"")
                .nth(1)
                .unwrap_or("")
                .split('"')
                .next()
                .unwrap_or("");
            if segments.matches('L').count() + 1 < min.min(3) {
                return Err(format!("chart {id}: {color}'s line is {segments:?}"));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (Debian's package): .ci/run runs it with --ignored"]
async fn status_page_in_chromium() {
    let mut setup = setup(4).await;
    let m = settled_metrics(&mut setup).await;
    let page = setup.proxy.admin_url("/");
    let admin: SocketAddr = page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert!(admin.ip().is_loopback());
    // The page fetches /status on load and every 3 s; each try is a fresh browser that runs
    // the page for 5 s of virtual time and prints the DOM it ends with.
    let deadline = Instant::now() + Duration::from_secs(90);
    let dom = loop {
        let page = page.clone();
        let dom = tokio::task::spawn_blocking(move || {
            chromium(&["--virtual-time-budget=5000", "--dump-dom", &page])
        })
        .await
        .unwrap();
        let updated = dom.contains("data-updates=\"") && !dom.contains("data-updates=\"0\"");
        match charts_rendered(&dom, 3) {
            Ok(()) if updated => break dom,
            result => assert!(
                Instant::now() < deadline,
                "the page did not render in time ({result:?}, updated: {updated}):\n{dom}"
            ),
        }
    };
    // What the page shows is what /metrics says (no request was sent since).
    let hash = config_hash_of(&m);
    assert!(
        dom.contains(&format!("id=\"config-hash\">{hash}<")),
        "config hash {hash} not shown"
    );
    for color in ["blue", "green", "red"] {
        let row = format!("<tr data-color=\"{color}\">");
        let label = format!("color=\"{color}\"");
        let share = metric_sum(&m, "colorproxy_backend_share", &[&label]);
        assert_eq!(
            field(&dom, &row, "share"),
            Some(format!("{:.1}%", share * 100.0).as_str()),
            "{color}'s share"
        );
        let requests = metric_sum(&m, "colorproxy_requests_total", &[&label]);
        assert_eq!(
            field(&dom, &row, "requests"),
            Some((requests as u64).to_string().as_str()),
            "{color}'s requests"
        );
    }
    let step = metric_sum(&m, "colorproxy_ramp_step", &[r#"color="green""#]);
    assert_eq!(
        field(&dom, "data-ramp=\"green\"", "step"),
        Some((step as u64).to_string().as_str())
    );
    assert_eq!(
        field(&dom, "data-ramp=\"green\"", "guard-state"),
        Some("watching")
    );
    assert_eq!(
        field(&dom, "id=\"peers\"", "converged"),
        Some("not converged")
    );
    assert!(dom.contains("(this one)"));
    // Hostile text is shown as text: escaped in the DOM, and no element came of it.
    for hostile in [
        HOSTILE_PREFIX,
        HOSTILE_HASH,
        HOSTILE_VERSION,
        "<u>green</u>",
    ] {
        let escaped = hostile
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(dom.contains(&escaped), "{hostile} not shown as text");
    }
    for tag in ["<img", "<u>", "<s>"] {
        assert!(!dom.contains(tag), "{tag} made it into the DOM");
    }
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    // A screenshot, for the README (docs/status.png) and for whoever looks at a CI run, with
    // traffic flowing again for two more points of history.
    let url = setup.proxy.url("/");
    let traffic = tokio::spawn(async move {
        let client = client();
        for n in 1u64.. {
            let _ = get(&client, &format!("{url}?{n}")).await;
        }
    });
    let client = client();
    let status_url = setup.proxy.admin_url("/status");
    let points = |body: &str| {
        serde_json::from_str::<Value>(body).unwrap()["history"]["times"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = points(&get(&client, &status_url).await.body);
    let deadline = Instant::now() + TIMEOUT;
    while points(&get(&client, &status_url).await.body) < (before + 2).min(150) {
        assert!(
            Instant::now() < deadline,
            "the history stopped at {before} points"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = std::env::var("STATUS_SCREENSHOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/status.png").to_string());
    let _ = std::fs::remove_file(&shot);
    let page = page.clone();
    let arg = format!("--screenshot={shot}");
    tokio::task::spawn_blocking(move || {
        chromium(&[
            "--virtual-time-budget=5000",
            "--window-size=1280,1400",
            &arg,
            &page,
        ])
    })
    .await
    .unwrap();
    traffic.abort();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{shot}");
    println!("screenshot: {shot}");
}
