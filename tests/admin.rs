//! The admin listener, metrics, the healthcheck command, JSON and access logs, against the
//! real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Scrapes until `done` holds: the exchange is counted when the server lets go of the response
/// body, which may be a moment after the client has read it.
async fn scrape_until(client: &HttpClient, url: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = get(client, url).await;
        assert_eq!(r.status, 200);
        if done(&r.body) || Instant::now() > deadline {
            return r.body;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_actually_sent() {
    let blue = Backend::echo("blue").await;
    // Green's app answers 502 itself: a canary that is up but broken.
    let green = Backend::start(|_req: Request<Incoming>| async {
        hyper::Response::builder()
            .status(502)
            .body(Full::new(Bytes::from("broken")))
            .unwrap()
    })
    .await;
    let env = [
        ("BLUE", blue.url()),
        ("GREEN", green.url()),
        ("BLUE_WEIGHT", "3".to_string()),
        ("GREEN_WEIGHT", "1".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = ProxyProcess::start(&env);
    let client = client();
    let (mut ok, mut bad) = (0u32, 0u32);
    for _ in 0..400 {
        match get(&client, &proxy.url("/")).await.status {
            200 => ok += 1,
            502 => bad += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(ok > 0 && bad > 0);
    let url = proxy.admin_url("/metrics");
    let blue_200 = r#"colorproxy_requests_total{color="blue",code="200"}"#;
    let green_502 = r#"colorproxy_requests_total{color="green",code="502"}"#;
    let m = scrape_until(&client, &url, |m| {
        sample(m, blue_200).unwrap_or(0.0) + sample(m, green_502).unwrap_or(0.0) >= 400.0
    })
    .await;
    assert_eq!(sample(&m, blue_200), Some(f64::from(ok)), "{m}");
    assert_eq!(sample(&m, green_502), Some(f64::from(bad)), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"colorproxy_request_duration_seconds_count{color="blue"}"#
        ),
        Some(f64::from(ok))
    );
    // An app's own 502 is not an upstream error.
    assert!(!m.contains("colorproxy_upstream_errors_total{"), "{m}");
    assert_eq!(
        sample(&m, r#"colorproxy_backend_weight{color="blue"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, r#"colorproxy_backend_share{color="green"}"#),
        Some(0.25)
    );
    assert_eq!(sample(&m, "colorproxy_in_flight_requests"), Some(0.0));
    assert_eq!(
        sample(&m, r#"colorproxy_endpoints{color="green",state="live"}"#),
        Some(1.0)
    );
    // The keep-alive client holds one connection open.
    assert!(
        sample(&m, "colorproxy_connections_open").unwrap() >= 1.0,
        "{m}"
    );
    let hash = parse_check_json(&env)["config_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let build = format!(
        r#"colorproxy_build_info{{version="{}",config_hash="{hash}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&m, &build), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind() {
    let dead = dead_address().await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &dead)]);
    let client = client();
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy.url("/")).await.status, 502);
    }
    let url = proxy.admin_url("/metrics");
    let code_502 = r#"colorproxy_requests_total{color="blue",code="502"}"#;
    let m = scrape_until(&client, &url, |m| sample(m, code_502) == Some(10.0)).await;
    assert_eq!(sample(&m, code_502), Some(10.0), "{m}");
    // One attempt per request: there is no other endpoint or color to retry on.
    assert_eq!(
        sample(
            &m,
            r#"colorproxy_upstream_errors_total{color="blue",kind="connect"}"#
        ),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"colorproxy_endpoints{color="blue",state="ejected"}"#),
        Some(1.0)
    );
}

fn parse_check_json(env: &[(&str, &str)]) -> serde_json::Value {
    let mut env = env.to_vec();
    env.push(("LISTEN", "127.0.0.1:0"));
    env.push(("ADMIN_LISTEN", "127.0.0.1:0"));
    let (status, stdout, stderr) = run(&["check", "--json"], &env);
    assert!(status.success(), "{stderr}");
    serde_json::from_str(&stdout).expect("check --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_endpoint_matches_check() {
    let env = [
        ("BLUE", "http://myapp-v1:8080"),
        ("GREEN", "http://myapp-v2:8080/base"),
        ("BLUE_WEIGHT", "4"),
        ("CONNECT_TIMEOUT", "250ms"),
    ];
    let mut proxy = ProxyProcess::start(&env);
    let r = get(&client(), &proxy.admin_url("/config")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let served: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(served, parse_check_json(&env));
    let colors = &served["routes"][0]["colors"];
    assert_eq!(served["routes"][0]["prefix"], "/");
    assert_eq!(colors[0]["share"], 80.0);
    assert_eq!(colors[1]["upstream"], "http://myapp-v2:8080/base");
    assert_eq!(served["connect_timeout"], "250ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_paths_live_on_their_own_port_only() {
    let backend = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let client = client();
    // On the proxy port, /metrics and /healthz belong to the app.
    for path in ["/metrics", "/healthz", "/ready", "/config"] {
        let r = get(&client, &proxy.url(path)).await;
        assert_eq!(r.headers["x-backend"], "blue", "{path}");
    }
    assert_eq!(
        get(&client, &proxy.admin_url("/healthz")).await.body,
        "ok\n"
    );
    assert_eq!(get(&client, &proxy.admin_url("/ready")).await.status, 200);
    assert_eq!(get(&client, &proxy.admin_url("/nope")).await.status, 404);
    let post = Request::post(proxy.admin_url("/healthz"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, post).await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_during_drain_while_in_flight_request_completes() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(1);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let backend = {
        let release = release.clone();
        Backend::start(move |_req: Request<Incoming>| {
            let arrived = arrived_tx.clone();
            let release = release.clone();
            async move {
                let _ = arrived.send(()).await;
                release.notified().await;
                hyper::Response::new(Full::new(Bytes::from("done")))
            }
        })
        .await
    };
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url()), ("DRAIN_TIMEOUT", "20s")]);
    let ready_url = proxy.admin_url("/ready");
    let client = client();
    assert_eq!(get(&client, &ready_url).await.status, 200);

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = proxy.url("/slow");
        async move { get(&client, &url).await }
    });
    tokio::time::timeout(TIMEOUT, arrived.recv()).await.unwrap();
    proxy.signal("TERM");
    proxy.wait_for_log("stop signal received");
    let admin = common::client();
    let r = get(&admin, &ready_url).await;
    assert_eq!((r.status, r.body.as_str()), (503, "draining\n"));
    assert_eq!(
        get(&admin, &ready_url.replace("/ready", "/healthz"))
            .await
            .status,
        200
    );

    release.notify_one();
    let r = tokio::time::timeout(TIMEOUT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "done"));
    drop(client);
    assert!(proxy.wait_exit().success(), "{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes() {
    let mut proxy = ProxyProcess::start(&[]);
    let admin = proxy
        .admin_url("")
        .trim_start_matches("http://")
        .to_string();
    let (status, stdout, stderr) = run(&["healthcheck"], &[("ADMIN_LISTEN", &admin)]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("/healthz answered 200"), "{stdout}");

    let dead = dead_address()
        .await
        .trim_start_matches("http://")
        .to_string();
    let (status, _, stderr) = run(&["healthcheck"], &[("ADMIN_LISTEN", &dead)]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("unhealthy") && stderr.contains(&dead),
        "{stderr}"
    );

    let (status, _, stderr) = run(&["healthcheck"], &[("ADMIN_LISTEN", "off")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("ADMIN_LISTEN=off"), "{stderr}");

    // A wildcard admin address is asked on loopback, as in a container.
    let port = admin.rsplit(':').next().unwrap();
    let wildcard = format!("0.0.0.0:{port}");
    let (status, _, stderr) = run(&["healthcheck"], &[("ADMIN_LISTEN", &wildcard)]);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_against_a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || run(&["healthcheck"], &[("ADMIN_LISTEN", &addr)]))
            .await
            .unwrap();
    drop(listener);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A proxy with `env` in front of an echo backend, after one `POST /orders?id=7` of 5 bytes:
/// the backend, the proxy, the response, and the first log line containing `marker`.
async fn access_line(env: &[(&str, &str)], marker: &str) -> (Backend, ProxyProcess, Reply, String) {
    let blue = Backend::echo("blue").await;
    let mut vars = vec![("BLUE", blue.url())];
    vars.extend(env.iter().map(|&(k, v)| (k, v.to_string())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = ProxyProcess::start(&vars);
    let req = Request::post(proxy.url("/orders?id=7"))
        .body(Full::from("12345"))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    let line = proxy.wait_for_log(marker);
    (blue, proxy, r, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_carry_the_access_log() {
    let (blue, mut proxy, r, line) =
        access_line(&[("LOG_FORMAT", "json")], r#""message":"request""#).await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["method"], "POST");
    assert_eq!(event["path"], "/orders?id=7");
    assert_eq!(event["status"], 200);
    assert_eq!(event["color"], "blue");
    assert_eq!(event["upstream"], blue.addr.to_string());
    assert_eq!(event["bytes_in"], 5);
    assert_eq!(event["bytes_out"], r.body.len());
    assert!(event["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(event["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success());
    let output = proxy.output();
    for line in output.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(output.contains(r#""message":"route""#), "{output}");

    // Configuration errors are JSON lines too.
    let (status, _, stderr) = run(
        &[],
        &[
            ("LOG_FORMAT", "json"),
            ("BLUE", "nope"),
            ("BLUE_WEIGHT", "x"),
        ],
    );
    assert_eq!(status.code(), Some(1));
    let vars: Vec<String> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["var"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(vars, ["BLUE_WEIGHT", "BLUE"]);
}

/// The text line is the one users have always seen (`src/access_log.rs` checks it byte for
/// byte against tracing-subscriber's; this checks the binary writes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_lines_carry_every_field() {
    let (blue, _proxy, r, line) = access_line(&[], "colorproxy::access: request").await;
    let (time, fields) = line
        .split_once("  INFO colorproxy::access: request ")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        time.len() == 27 && humantime::parse_rfc3339(time).is_ok(),
        "{line}"
    );
    let fields: Vec<&str> = fields.split(' ').collect();
    let upstream = format!("upstream=\"{}\"", blue.addr);
    let bytes_out = format!("bytes_out={}", r.body.len());
    assert_eq!(
        fields[..5],
        [
            "method=POST",
            "path=/orders?id=7",
            "status=200",
            "color=\"blue\"",
            &upstream
        ],
        "{line}"
    );
    let ms = fields[5].strip_prefix("duration_ms=").unwrap_or("x");
    assert!(ms.parse::<f64>().is_ok_and(|ms| ms > 0.0), "{line}");
    assert_eq!(fields[6..8], ["bytes_in=5", &bytes_out], "{line}");
    assert!(
        fields[8].starts_with("client=127.0.0.1:") && fields.len() == 9,
        "{line}"
    );
}

/// The clock is read once per wake-up of a connection's task (`src/clock.rs`): a request
/// whose upstream thinks is still timed from its start to its end, on every request of a
/// keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_time_the_upstream_s_wait_on_every_request_of_a_connection() {
    let think = Duration::from_millis(150);
    let slow = Backend::start(move |_req: Request<Incoming>| async move {
        tokio::time::sleep(think).await;
        hyper::Response::new(Full::new(Bytes::from("done")))
    })
    .await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &slow.url())]);
    let client = client();
    let mut peers = Vec::new();
    for path in ["/first", "/second"] {
        let started = Instant::now();
        assert_eq!(get(&client, &proxy.url(path)).await.status, 200);
        let took = started.elapsed().as_secs_f64() * 1000.0;
        let line = proxy.wait_for_log(&format!("path={path} "));
        let ms = line
            .split(' ')
            .find_map(|f| f.strip_prefix("duration_ms="))
            .and_then(|ms| ms.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            ms >= 150.0 && ms <= took,
            "{ms} ms, the client saw {took} ms: {line}"
        );
        peers.push(
            line.split(' ')
                .find(|f| f.starts_with("client="))
                .map(str::to_owned),
        );
    }
    assert_eq!(
        peers[0], peers[1],
        "both requests came on one client connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_can_silence_access_lines() {
    let blue = Backend::echo("blue").await;
    let mut proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("RUST_LOG", "info,colorproxy::access=off"),
    ]);
    let client = client();
    assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    drop(client);
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success());
    let output = proxy.output();
    assert!(output.contains("colorproxy starting"), "{output}");
    assert!(!output.contains("colorproxy::access"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_silences_only_access_events() {
    let dead = dead_address().await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &dead), ("ACCESS_LOG", "off")]);
    let client = client();
    assert_eq!(get(&client, &proxy.url("/")).await.status, 502);
    proxy.wait_for_log("upstream request failed");
    drop(client);
    proxy.signal("TERM");
    assert!(proxy.wait_exit().success());
    assert!(
        !proxy.output().contains("colorproxy::access"),
        "{}",
        proxy.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_show_color_and_config_hash_when_on() {
    let blue = Backend::echo("blue").await;
    let client = client();
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let r = get(&client, &proxy.url("/")).await;
    assert!(r.headers.get("color").is_none() && r.headers.get("colorproxy-config").is_none());

    let env = [("BLUE", blue.url()), ("RESPONSE_HEADERS", "on".to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = ProxyProcess::start(&env);
    let r = get(&client, &proxy.url("/")).await;
    assert_eq!(r.headers["color"], "blue");
    let hash = parse_check_json(&env)["config_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r.headers["colorproxy-config"], hash.as_str());
}
