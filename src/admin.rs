//! The admin listener: the status page, health, readiness, metrics and the effective
//! configuration, on a port of its own so that no path of the proxied app is ever shadowed.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::proxy::Proxy;
use crate::status::{self, Status};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on.
pub struct AdminState {
    proxy: Arc<Proxy>,
    /// `/config` as made at startup; the parts a ramp moves are brought up to date per request.
    config_view: serde_json::Value,
    /// `/config`, rendered once when nothing in it moves.
    config_json: String,
    draining: AtomicBool,
    status: Arc<Status>,
}

impl AdminState {
    pub fn new(
        proxy: Arc<Proxy>,
        config_view: &serde_json::Value,
        status: Arc<Status>,
    ) -> AdminState {
        AdminState {
            proxy,
            config_view: config_view.clone(),
            config_json: format!("{config_view:#}\n"),
            draining: AtomicBool::new(false),
            status,
        }
    }

    /// `/config` as it is now.
    fn config_now(&self, now: std::time::SystemTime) -> serde_json::Value {
        let mut view = self.config_view.clone();
        self.proxy.delivery().patch_view(&mut view, now);
        view
    }

    /// From now on `/ready` answers 503, so load balancers stop sending new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match req.uri().path() {
            "/" => status::page(),
            "/status" => {
                let now = std::time::SystemTime::now();
                let draining = self.draining.load(Ordering::SeqCst);
                let view = self
                    .status
                    .view(&self.proxy, &self.config_now(now), draining, now);
                status::json_response(&view)
            }
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/ready" if self.draining.load(Ordering::SeqCst) => {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/ready" => plain(StatusCode::OK, "ready\n"),
            "/metrics" => {
                self.proxy.update_endpoint_metrics();
                let metrics = self.proxy.metrics();
                self.proxy.delivery().update_metrics(&metrics.delivery);
                with_type(StatusCode::OK, metrics.encode(), OPENMETRICS)
            }
            "/config" if self.proxy.delivery().is_empty() => {
                with_type(StatusCode::OK, self.config_json.clone(), "application/json")
            }
            "/config" => {
                let view = self.config_now(std::time::SystemTime::now());
                with_type(StatusCode::OK, format!("{view:#}\n"), "application/json")
            }
            // What peers ask each other (PEERS): the config hash and the tripped colors.
            "/guard" => with_type(
                StatusCode::OK,
                format!("{}\n", self.status.guard_answer(&self.proxy)),
                "application/json",
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: try /, /status, /healthz, /ready, /metrics, /config or /guard\n",
            ),
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body.to_string(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves the admin endpoints until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = state.respond(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Asks `/healthz` at the admin address, as `colorproxy healthcheck` does for Docker's
/// HEALTHCHECK (a scratch image has no curl). A wildcard address is asked on loopback.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, addr.port());
    let url = format!("http://{target}/healthz");
    let ask = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get("/healthz")
            .header(header::HOST, target.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        match resp.status() {
            StatusCode::OK => Ok(url.clone()),
            status => Err(format!("{url} answered {status}")),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{url} did not answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}
