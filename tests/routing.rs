//! Requests through the real binary: the weighted split, the Color header, path joining and
//! proxy headers.

mod common;

use common::*;
use http_body_util::Full;
use hyper::Request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_over_thousands_of_requests() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &green.url()),
        ("BLUE_WEIGHT", "4"),
        ("GREEN_WEIGHT", "1"),
    ]);
    let client = client();
    let n = 4000;
    let mut green_count = 0;
    for _ in 0..n {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!(r.status, 200);
        let backend = r.headers["x-backend"].to_str().unwrap();
        let (_, headers) = parse_echo(&r.body);
        // The Color header always names the backend the request reached.
        assert_eq!(header_values(&headers, "color"), [backend]);
        if backend == "green" {
            green_count += 1;
        }
    }
    // Expected 800; sigma = sqrt(4000 * 0.2 * 0.8) ≈ 25.3, so ±7 sigma cannot flake.
    assert!(
        (800 - 177..=800 + 177).contains(&green_count),
        "green got {green_count} of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_weight_color_gets_no_traffic() {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let proxy = ProxyProcess::start(&[
        ("BLUE", &blue.url()),
        ("GREEN", &green.url()),
        ("GREEN_WEIGHT", "0"),
    ]);
    let client = client();
    for _ in 0..300 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!(r.headers["x-backend"], "blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_color_header_is_replaced() {
    let blue = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &blue.url())]);
    let req = Request::get(proxy.url("/"))
        .header("Color", "green")
        .header("color", "red")
        .body(Full::default())
        .unwrap();
    let r = send(&client(), req).await;
    let (_, headers) = parse_echo(&r.body);
    assert_eq!(header_values(&headers, "color"), ["blue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_colors_and_names_are_lowercase() {
    let canary = Backend::echo("canary").await;
    let proxy = ProxyProcess::start(&[("COLORS", "Stable,CANARY"), ("CANARY", &canary.url())]);
    let r = get(&client(), &proxy.url("/")).await;
    let (_, headers) = parse_echo(&r.body);
    assert_eq!(header_values(&headers, "color"), ["canary"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_queries_are_joined_with_one_slash() {
    let backend = Backend::echo("b").await;
    let client = client();
    for (base, path, expected) in [
        ("", "/", "/"),
        ("", "/films/1?sort=asc&x=%20y", "/films/1?sort=asc&x=%20y"),
        ("/", "/a/b", "/a/b"),
        ("/api", "/", "/api/"),
        ("/api", "/v1/users?id=7", "/api/v1/users?id=7"),
        ("/api/", "/v1?", "/api/v1?"),
        ("/api//", "//double", "/api//double"),
    ] {
        let upstream = format!("{}{}", backend.url(), base);
        let proxy = ProxyProcess::start(&[("BLUE", &upstream)]);
        let r = get(&client, &proxy.url(path)).await;
        let (line, _) = parse_echo(&r.body);
        assert_eq!(
            line,
            format!("GET {expected}"),
            "BLUE={upstream} path {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_body_and_headers_pass_unchanged() {
    let backend = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let method = req.method().to_string();
        let custom = req.headers()["x-custom"].to_str().unwrap().to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = format!("{method} {custom} {}", String::from_utf8_lossy(&body));
        hyper::Response::builder()
            .status(201)
            .header("x-from-backend", "yes")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(Full::from(text))
            .unwrap()
    })
    .await;
    let proxy = ProxyProcess::start(&[("GREEN", &backend.url())]);
    let req = Request::put(proxy.url("/x"))
        .header("x-custom", "kept")
        .body(Full::from("payload"))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "PUT kept payload");
    assert_eq!(r.headers["x-from-backend"], "yes");
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let backend = Backend::start(|req: Request<hyper::body::Incoming>| async move {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap()));
        }
        hyper::Response::builder()
            .header("connection", "x-backend-private")
            .header("x-backend-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-public", "1")
            .body(Full::from(format!("GET /\n{text}")))
            .unwrap()
    })
    .await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let req = Request::get(proxy.url("/"))
        .header("host", "shop.example:8080")
        .header("connection", "keep-alive, X-Client-Private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    let (_, headers) = parse_echo(&r.body);
    for gone in [
        "connection",
        "x-client-private",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(
            header_values(&headers, gone).is_empty(),
            "{gone} reached the backend: {headers:?}"
        );
    }
    assert_eq!(header_values(&headers, "x-end-to-end"), ["kept"]);
    assert_eq!(header_values(&headers, "host"), ["shop.example:8080"]);
    assert_eq!(
        header_values(&headers, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(header_values(&headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header_values(&headers, "x-forwarded-host"),
        ["shop.example:8080"]
    );

    for gone in ["x-backend-private", "keep-alive", "proxy-authenticate"] {
        assert!(r.headers.get(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(r.headers["x-public"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_from_a_tls_terminator_is_kept() {
    let backend = Backend::echo("b").await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let req = Request::get(proxy.url("/"))
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .unwrap();
    let (_, headers) = parse_echo(&send(&client(), req).await.body);
    assert_eq!(header_values(&headers, "x-forwarded-proto"), ["https"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_clients_are_served() {
    let backend = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let h2: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let r = get(&h2, &proxy.url("/h2?x=1")).await;
    assert_eq!(r.status, 200);
    let (line, headers) = parse_echo(&r.body);
    assert_eq!(line, "GET /h2?x=1");
    assert_eq!(header_values(&headers, "color"), ["blue"]);
    // The authority of an HTTP/2 request becomes the upstream's Host.
    assert_eq!(
        header_values(&headers, "host"),
        [proxy.addr.to_string().as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_refused() {
    let backend = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let req = Request::get(proxy.url("/"))
        .header("x-huge", "a".repeat(100 * 1024))
        .body(Full::default())
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_absolute_targets_go_to_the_color() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::echo("blue").await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let ask = |raw: &'static str| {
        let addr = proxy.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(raw.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let r = ask(
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    // An absolute-form target names another host: it still goes to the color's upstream.
    let r = ask("GET http://elsewhere.example/x?y=1 HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("GET /x?y=1"),
        "{r}"
    );
    assert!(r.contains("x-backend: blue"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_no_complete_head_are_cut_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers `/slow` after 11 s: longer than the header read timeout, which must not cut a
    // request in flight.
    let backend = Backend::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        }
        hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from("ok")))
    })
    .await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let started = std::time::Instant::now();
    let silent = tokio::net::TcpStream::connect(proxy.addr);
    let partial = async {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        s
    };
    // One request answered on a keep-alive connection, then half of the next head.
    let second = async {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).ends_with("\r\n\r\nok") {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        s
    };
    let slow_url = proxy.url("/slow");
    let slow = tokio::spawn(async move { get(&client(), &slow_url).await });
    let (silent, partial, second) = tokio::join!(silent, partial, second);
    for mut conn in [silent.unwrap(), partial, second] {
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.read_to_end(&mut rest),
        )
        .await
        .expect("closed by the proxy within 30 s")
        .ok();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    // The timeout is 10 s; no connection was closed before it.
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
    let slow = slow.await.unwrap();
    assert_eq!((slow.status, slow.body.as_str()), (200, "ok"));
    // The proxy still serves.
    assert_eq!(get(&client(), &proxy.url("/")).await.status, 200);
}
