//! WebSocket through the real binary: the upgrade handshake reaches the upstream with the
//! `Color` header, and messages flow both ways over the tunnel afterwards.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, accept_hdr_async, client_async};

/// What a WebSocket backend saw in an opening handshake.
#[derive(Debug)]
struct Handshake {
    path: String,
    color: Vec<String>,
}

impl Handshake {
    fn of(req: &WsRequest) -> Handshake {
        Handshake {
            path: req.uri().to_string(),
            color: req
                .headers()
                .get_all("color")
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>").to_string())
                .collect(),
        }
    }
}

/// A plain TCP listener whose connections go to tungstenite's server handshake and then echo
/// every text and binary message. Reports each handshake it accepts.
struct WsEchoBackend {
    addr: SocketAddr,
    handshakes: mpsc::UnboundedReceiver<Handshake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsEchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsEchoBackend {
    async fn start() -> WsEchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, handshakes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, as its callback trait requires.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &WsRequest, resp: WsResponse| {
                        let _ = tx.send(Handshake::of(req));
                        Ok::<_, ErrorResponse>(resp)
                    };
                    if let Ok(ws) = accept_hdr_async(stream, callback).await {
                        echo(ws).await;
                    }
                });
            }
        });
        WsEchoBackend {
            addr,
            handshakes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next_handshake(&mut self) -> Handshake {
        timeout(TIMEOUT, self.handshakes.recv())
            .await
            .expect("handshake within the timeout")
            .expect("backend still running")
    }
}

/// Sends every text and binary message back; tungstenite answers pings and close frames itself.
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

type ClientWs = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://<proxy>/<path>` over a plain TCP connection to the proxy.
async fn connect(proxy: SocketAddr, path: &str) -> ClientWs {
    let stream = timeout(TIMEOUT, TcpStream::connect(proxy))
        .await
        .expect("connect within the timeout")
        .expect("connect to the proxy");
    let (ws, resp) = timeout(TIMEOUT, client_async(format!("ws://{proxy}{path}"), stream))
        .await
        .expect("handshake within the timeout")
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn next_message(ws: &mut ClientWs) -> Message {
    timeout(TIMEOUT, ws.next())
        .await
        .expect("message within the timeout")
        .expect("stream still open")
        .expect("message")
}

/// Sends `msg` and asserts that the same message comes back.
async fn round_trip(ws: &mut ClientWs, msg: Message) {
    timeout(TIMEOUT, ws.send(msg.clone()))
        .await
        .expect("send within the timeout")
        .expect("send");
    let back = next_message(ws).await;
    assert!(back == msg, "echo differs from {} sent bytes", msg.len());
}

/// Closes from the client side and waits for the close handshake to complete.
async fn close(mut ws: ClientWs) {
    timeout(TIMEOUT, ws.close(None))
        .await
        .expect("close within the timeout")
        .expect("close");
    loop {
        match timeout(TIMEOUT, ws.next())
            .await
            .expect("close reply within the timeout")
        {
            None => break,
            Some(Ok(Message::Close(_))) => {}
            Some(other) => panic!("unexpected after close: {other:?}"),
        }
    }
}

/// A megabyte that is not one repeated byte, so a shifted or truncated echo cannot pass.
fn big_payload() -> Bytes {
    (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let mut backend = WsEchoBackend::start().await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let mut ws = connect(proxy.addr, "/chat").await;

    let handshake = backend.next_handshake().await;
    assert_eq!(handshake.path, "/chat");
    assert_eq!(handshake.color, ["blue"]);

    round_trip(&mut ws, Message::text("hello")).await;
    round_trip(&mut ws, Message::text("")).await;
    round_trip(&mut ws, Message::text("héllo wörld ✓ 🟦🟩")).await;
    round_trip(&mut ws, Message::binary(vec![0u8, 1, 2, 255, 254])).await;
    round_trip(&mut ws, Message::binary(big_payload())).await;
    round_trip(&mut ws, Message::text("after the big one")).await;

    // Several messages in flight at once come back in order.
    let burst: Vec<Message> = (0..50)
        .map(|i| {
            if i % 2 == 0 {
                Message::Text(Utf8Bytes::from(format!("msg {i}")))
            } else {
                Message::binary(vec![i as u8; i * 100])
            }
        })
        .collect();
    for msg in &burst {
        timeout(TIMEOUT, ws.feed(msg.clone()))
            .await
            .expect("feed within the timeout")
            .expect("feed");
    }
    timeout(TIMEOUT, ws.flush())
        .await
        .expect("flush within the timeout")
        .expect("flush");
    for msg in &burst {
        assert_eq!(&next_message(&mut ws).await, msg);
    }

    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshake_names_the_color_and_joins_the_base_path() {
    let mut backend = WsEchoBackend::start().await;
    let proxy = ProxyProcess::start(&[("GREEN", &format!("{}/ws", backend.url()))]);
    let mut ws = connect(proxy.addr, "/chat?room=1").await;
    let handshake = backend.next_handshake().await;
    assert_eq!(handshake.path, "/ws/chat?room=1");
    assert_eq!(handshake.color, ["green"]);
    round_trip(&mut ws, Message::text("green")).await;
    close(ws).await;
}

/// A hyper backend that answers plain requests with `plain <path>` and upgrades WebSocket
/// handshakes itself, then echoes; one upstream serving both, as a real app would.
async fn mixed_backend() -> Backend {
    Backend::start(|mut req: Request<Incoming>| async move {
        let key = req.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return hyper::Response::new(Full::from(format!("plain {}", req.uri())));
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws).await;
            }
        });
        hyper::Response::builder()
            .status(101)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                "sec-websocket-accept",
                HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
            )
            .body(Full::default())
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_work_alongside_websockets() {
    let backend = mixed_backend().await;
    let proxy = ProxyProcess::start(&[("BLUE", &backend.url())]);
    let client = client();

    let r = get(&client, &proxy.url("/before")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "plain /before"));

    let mut ws = connect(proxy.addr, "/chat").await;
    round_trip(&mut ws, Message::text("open")).await;

    // While the tunnel is open, plain requests on the same proxy (and on the client's
    // keep-alive connection from before) are unaffected.
    for i in 0..20 {
        let r = get(&client, &proxy.url(&format!("/during/{i}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("plain /during/{i}"));
    }
    round_trip(&mut ws, Message::binary(big_payload())).await;
    close(ws).await;

    let r = get(&client, &proxy.url("/after")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "plain /after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_keeps_working_during_drain_and_its_close_ends_it() {
    let mut backend = WsEchoBackend::start().await;
    let mut proxy = ProxyProcess::start(&[("BLUE", &backend.url()), ("DRAIN_TIMEOUT", "20s")]);
    let mut ws = connect(proxy.addr, "/chat").await;
    backend.next_handshake().await;
    round_trip(&mut ws, Message::text("before")).await;

    proxy.signal("TERM");
    let line = proxy.wait_for_log("draining");
    assert!(line.contains("open_tunnels=1"), "{line}");
    // The tunnel gets the drain period: messages still flow.
    round_trip(&mut ws, Message::text("during the drain")).await;
    close(ws).await;
    assert!(proxy.wait_exit().success());
    let out = proxy.output();
    assert!(
        out.contains("drained") && !out.contains("drain timeout"),
        "{out}"
    );
}
