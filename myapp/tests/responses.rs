//! What myapp answers over real HTTP/1.1 connections: the body format is
//! what colorproxy's users look at to see which side served them, so it is
//! pinned byte for byte.

mod common;

use common::{Conn, Server, fetch, request};

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

#[test]
fn get_echoes_trimmed_color_and_hostname() {
    let server = Server::start(&[("HOSTNAME", "web-1")]);
    let reply = fetch(server.addr, "GET", "/", &["Color:   blue  "]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(TEXT));
    assert_eq!(reply.body_text(), "blue web-1\n");

    // Any path, and colors beyond the prebuilt ones.
    let reply = fetch(
        server.addr,
        "GET",
        "/some/deep/path?q=1",
        &["Color: canary"],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), "canary web-1\n");
}

#[test]
fn missing_or_empty_color_is_unknown() {
    let server = Server::start(&[("HOSTNAME", "web-1")]);
    let reply = fetch(server.addr, "GET", "/", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), "unknown web-1\n");

    let reply = fetch(server.addr, "GET", "/", &["Color:  "]);
    assert_eq!(reply.body_text(), "unknown web-1\n");
}

#[test]
fn keep_alive_serves_several_requests_per_connection() {
    let server = Server::start(&[("HOSTNAME", "web-1")]);
    let mut conn = Conn::open(server.addr);
    for color in ["green", "blue", "magenta"] {
        conn.send(&request("GET", "/", &[&format!("Color: {color}")]));
        let reply = conn.read_reply(false);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body_text(), format!("{color} web-1\n"));
    }
}

#[test]
fn head_has_headers_but_no_body() {
    let server = Server::start(&[("HOSTNAME", "web-1")]);
    let mut conn = Conn::open(server.addr);
    conn.send(&request("HEAD", "/", &["Color: green"]));
    let reply = conn.read_reply(true);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(TEXT));
    assert_eq!(reply.header("content-length"), Some("12"), "{reply:?}");

    // Had the HEAD reply carried a body, it would be read as this reply's
    // status line.
    conn.send(&request("GET", "/", &["Color: green"]));
    let reply = conn.read_reply(false);
    assert_eq!(reply.body_text(), "green web-1\n");
}

#[test]
fn v2_answers_escaped_html() {
    let server = Server::start(&[("V2", "1"), ("HOSTNAME", "h<1>&co")]);
    let reply = fetch(server.addr, "GET", "/", &["Color: <script>\"x'&"]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(HTML));
    assert_eq!(
        reply.body_text(),
        "<h1>h&lt;1&gt;&amp;co (&lt;script&gt;&quot;x&#39;&amp;)</h1>\n"
    );

    let reply = fetch(server.addr, "GET", "/", &["Color: blue"]);
    assert_eq!(reply.body_text(), "<h1>h&lt;1&gt;&amp;co (blue)</h1>\n");
    let reply = fetch(server.addr, "GET", "/", &[]);
    assert_eq!(reply.body_text(), "<h1>h&lt;1&gt;&amp;co (unknown)</h1>\n");
}

#[test]
fn empty_v2_keeps_plain_text() {
    let server = Server::start(&[("V2", ""), ("HOSTNAME", "web-1")]);
    let reply = fetch(server.addr, "GET", "/", &["Color: blue"]);
    assert_eq!(reply.header("content-type"), Some(TEXT));
    assert_eq!(reply.body_text(), "blue web-1\n");
}

#[test]
fn empty_hostname_falls_back_to_etc_hostname() {
    let expected = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let server = Server::start(&[("HOSTNAME", "")]);
    let reply = fetch(server.addr, "GET", "/", &["Color: blue"]);
    assert_eq!(reply.body_text(), format!("blue {expected}\n"));
}

#[test]
fn healthz_answers_ok_in_both_styles() {
    for envs in [&[][..], &[("V2", "yes")][..]] {
        let server = Server::start(envs);
        for path in ["/healthz", "/healthz?probe=1"] {
            let reply = fetch(server.addr, "GET", path, &["Color: blue"]);
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("content-type"), Some(TEXT));
            assert_eq!(reply.body_text(), "ok\n");
        }
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = Server::start(&[]);
    let mut conn = Conn::open(server.addr);
    for method in ["POST", "PUT", "DELETE"] {
        conn.send(&request(method, "/", &["Content-Length: 3"]));
        conn.send("abc");
        let reply = conn.read_reply(false);
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method}");
    }
    // The unread request bodies must not corrupt the next request.
    conn.send(&request("GET", "/healthz", &[]));
    assert_eq!(conn.read_reply(false).body_text(), "ok\n");
}
