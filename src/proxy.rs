//! What happens to one request: pick a color, rewrite the request for that color's upstream,
//! forward it, and hand back the upstream's response (or a clear error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Uri};
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::activity::Activity;
use crate::balancer::{Balancer, RouteBalancer};
use crate::blame::ClientFault;
use crate::budget::{self, Budget};
use crate::buffering::{self, RequestAhead, ResponseAhead, ResponseRead};
use crate::clock;
use crate::codec::head::{Fields, is_hop_by_hop};
use crate::codec::{self, Upgraded};
use crate::config::{BUCKETS, Color, Config, Discovery, Sticky};
use crate::delivery::Delivery;
use crate::discovery::{Resolver, Watch};
use crate::endpoints::{Endpoint, EndpointSet};
use crate::exchange::{Exchange, RequestBody, ResponseBody};
use crate::metrics::{ErrorLabels, Metrics};
use crate::request_checks;
use crate::spill::{Spill, Spilled};
use crate::upstream::{
    Detail, ErrorKind, Queueing, RequestHead, UpstreamBody, UpstreamClient, UpstreamError,
};

/// The body the proxy answers with: the upstream's, streamed, or a short message of its own.
pub type ProxyBody = ResponseBody<Outgoing>;
type Body = Outgoing;

/// A response on its way to the client: the upstream's as it streams, read ahead, or a short
/// message of the proxy's own.
pub type Outgoing =
    Either<Either<UpstreamBody, ResponseAhead<codec::Error>>, Either<Spilled, Full<Bytes>>>;

/// Attempts for a request whose earlier attempts never reached an upstream (refused,
/// unreachable, connect timeout, DNS): enough to get past a Swarm node's worth of dead tasks.
const MAX_ATTEMPTS: usize = 5;

pub static COLOR: HeaderName = HeaderName::from_static("color");
static COLORPROXY_CONFIG: HeaderName = HeaderName::from_static("colorproxy-config");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client end of a connection, with its address formatted once per connection rather
/// than once per request: for `X-Forwarded-For`, and as the access log writes it.
pub struct Peer {
    ip: HeaderValue,
    /// `ip:port`, when this connection's requests are logged.
    pub logged_as: Option<Arc<str>>,
    /// Whether the connection has a request in flight, and since when it was accepted (see
    /// [`crate::activity`]).
    pub activity: Arc<Activity>,
}

impl Peer {
    /// `logged`: the connection's requests go to the access log.
    pub fn new(addr: SocketAddr, logged: bool) -> Peer {
        let ip = addr.ip().to_canonical().to_string();
        Peer {
            ip: HeaderValue::from_str(&ip).expect("an IP address is a header value"),
            logged_as: logged.then(|| addr.to_string().into()),
            activity: Arc::new(Activity::new()),
        }
    }
}

/// A color ready to receive requests.
struct Target {
    color: Color,
    /// The `Color` header value, built once.
    header: HeaderValue,
    /// The upstream's `host:port`, for a request that names no host.
    host: HeaderValue,
    /// Metric label and log field value, interned once.
    name: &'static str,
    endpoints: Arc<EndpointSet>,
    /// Set while the color has no live endpoint, so that failover is logged once per change.
    down: AtomicBool,
}

impl Target {
    /// Whether the color can take requests; logs when that changes.
    fn is_up(&self) -> bool {
        let up = self.endpoints.has_live();
        if self.down.swap(!up, Ordering::Relaxed) == up {
            if up {
                info!(
                    color = self.name,
                    "color has live endpoints again: back to its configured share"
                );
            } else {
                warn!(
                    color = self.name,
                    reason = %self.endpoints.last_error().unwrap_or_else(|| "every endpoint is ejected".into()),
                    "color has no live endpoint: its share goes to the other colors"
                );
            }
        }
        up
    }
}

pub struct Proxy {
    /// Upgraded connections (WebSocket) outlive their HTTP connection; drain waits for them.
    tunnels: Arc<Tunnels>,
    targets: Vec<Target>,
    /// Longest prefix first.
    routes: Vec<Route>,
    sticky: Sticky,
    sticky_cookie: String,
    override_header: Option<HeaderName>,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    /// The shares of ramped colors, and their guards.
    delivery: Arc<Delivery>,
    access_log: bool,
    /// The config hash for `Colorproxy-Config`, when RESPONSE_HEADERS=on.
    config_header: Option<HeaderValue>,
    budget: Arc<Budget>,
    /// Responses that memory has no room for, on disk; `None` with RESPONSE_SPILL=0, or when
    /// its directory takes no files.
    spill: Option<Arc<Spill>>,
    request_buffer: u64,
    response_buffer: u64,
    body_timeout: Duration,
    request_timeout: Duration,
    /// Attempts that never reached an upstream go on elsewhere within this time.
    retry_window: Duration,
}

impl Proxy {
    /// Colors whose upstream is an IP address, or without discovery, have their one endpoint
    /// from the start; the others start empty until [`Proxy::watches`] are refreshed.
    pub fn new(config: &Config, metrics: Arc<Metrics>, resolver: Resolver) -> Proxy {
        let targets = config
            .colors
            .iter()
            .zip(metrics.color_names())
            .map(|(color, &name)| {
                let endpoints = if needs_discovery(color) {
                    EndpointSet::default()
                } else {
                    EndpointSet::new([color.upstream.authority.clone()])
                };
                Target {
                    header: HeaderValue::from_str(&color.name).expect("color names are validated"),
                    host: HeaderValue::from_str(color.upstream.authority.as_str())
                        .expect("an authority is a header value"),
                    name,
                    endpoints: Arc::new(endpoints),
                    down: AtomicBool::new(false),
                    color: color.clone(),
                }
            })
            .collect();
        let delivery = Arc::new(Delivery::new(
            config,
            metrics.color_names(),
            std::time::SystemTime::now(),
        ));
        if !delivery.is_empty() {
            metrics.observe(delivery.clone());
        }
        let mut routes: Vec<Route> = config
            .routes()
            .into_iter()
            .map(|(prefix, colors)| Route {
                prefix: prefix.to_string(),
                balancer: match delivery.balancer(prefix) {
                    Some(moving) => RouteBalancer::Moving(moving),
                    None => RouteBalancer::Fixed(Balancer::new(
                        colors.iter().map(|&i| config.colors[i].weight),
                    )),
                },
                colors,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Proxy {
            tunnels: Arc::default(),
            targets,
            routes,
            sticky: config.sticky.clone(),
            sticky_cookie: config.sticky_cookie.clone(),
            override_header: config
                .override_header
                .as_deref()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("header names are validated")),
            client: UpstreamClient::new(config.connect_timeout, config.request_timeout, resolver),
            metrics,
            delivery,
            access_log: config.access_log,
            config_header: config
                .response_headers
                .then(|| HeaderValue::from_str(&config.config_hash()).expect("the hash is hex")),
            budget: Budget::new(budget::BUDGET),
            spill: open_spill(config),
            request_buffer: config.request_buffer,
            response_buffer: config.response_buffer,
            body_timeout: config.body_timeout,
            request_timeout: config.request_timeout,
            retry_window: config.connect_timeout * 2,
        }
    }

    /// The discovery work of the colors that need it.
    pub fn watches(&self) -> Vec<Watch> {
        self.targets
            .iter()
            .filter(|t| needs_discovery(&t.color))
            .map(|t| Watch {
                color: t.name,
                host: t.color.upstream.host.clone(),
                port: t.color.upstream.port,
                mode: t.color.discovery,
                endpoints: t.endpoints.clone(),
            })
            .collect()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// Brings the per-color endpoint gauges up to date.
    pub fn update_endpoint_metrics(&self) {
        for t in &self.targets {
            let (live, ejected) = t.endpoints.counts();
            self.metrics.set_endpoints(t.name, live, ejected);
        }
        let disk = self.spill.as_ref().map_or(0, |s| s.used());
        self.metrics.set_buffered(self.budget.used(), disk);
    }

    /// Closes upstream connections idle for longer than [`crate::pool::IDLE_TIMEOUT`].
    pub fn expire_idle_connections(&self) {
        let now = std::time::Instant::now();
        for t in &self.targets {
            for e in t.endpoints.snapshot().iter() {
                e.pool.expire(now);
            }
        }
    }

    /// Whether requests get an access line: ACCESS_LOG, and the log filter letting the line
    /// through.
    pub fn logs_access(&self) -> bool {
        self.access_log && crate::access_log::enabled()
    }

    pub fn open_tunnels(&self) -> usize {
        self.tunnels.open.load(Ordering::SeqCst)
    }

    /// Resolves once no upgraded connection is open.
    pub async fn tunnels_closed(&self) {
        loop {
            let closed = self.tunnels.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open_tunnels() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// The request comes in parts, borrowed from the caller's future: this future then holds
    /// no copy of the head (a `Request` taken apart inside held it twice, and an owned `Parts`
    /// is moved once more as the future starts).
    pub async fn handle(
        &self,
        parts: &mut Parts,
        body: Incoming,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let exchange = Exchange::begin(
            &self.metrics,
            parts,
            peer.logged_as.as_ref(),
            &peer.activity,
        );
        // Before anything else: the client's fault, so no color is chosen or blamed.
        if let Err(why) = request_checks::check(parts) {
            return exchange.respond(rejection(why, parts.version));
        }
        let route = self.route_for(parts.uri.path());
        let mut resp = match route {
            _ if self.targets.is_empty() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "colorproxy: no backend is configured\n".into(),
            ),
            // Not an open proxy: nothing is tunnelled to a host the client names.
            _ if parts.method == hyper::Method::CONNECT => {
                let mut resp = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "colorproxy: CONNECT is not supported\n".into(),
                );
                resp.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
                resp
            }
            None => text(
                StatusCode::NOT_FOUND,
                format!("colorproxy: no route for {}\n", parts.uri.path()),
            ),
            Some(route) => {
                let upgrade = upgrade_protocol(parts);
                // What `hyper::upgrade::on` takes from a request, taken from its parts.
                let client_upgrade = upgrade
                    .is_some()
                    .then(|| parts.extensions.remove::<OnUpgrade>())
                    .flatten();
                // Before any upstream is picked: a slow or broken body is the client's alone.
                match buffering::read_request(
                    body,
                    self.request_buffer,
                    self.body_timeout,
                    &self.budget,
                    &peer.activity,
                )
                .await
                {
                    Err(fault) => self.client_fault(&fault, parts),
                    Ok(ahead) => {
                        if ahead.overflowed {
                            self.metrics.buffer_overflow("request");
                        }
                        let choice = self.choose(route, &parts.headers);
                        let sent = Sent {
                            parts,
                            upgrade: upgrade.as_ref(),
                            client_upgrade,
                            peer,
                        };
                        let mut resp = self
                            .forward(sent, ahead.body, route, &choice, &exchange)
                            .await;
                        if let Some(cookie) = choice.set_cookie {
                            resp.headers_mut().append(header::SET_COOKIE, cookie);
                        }
                        resp
                    }
                }
            }
        };
        if let Some(config) = &self.config_header {
            if let Some(target) = self.targets.get(exchange.color_index()) {
                resp.headers_mut()
                    .insert(COLOR.clone(), target.header.clone());
            }
            resp.headers_mut()
                .insert(COLORPROXY_CONFIG.clone(), config.clone());
        }
        exchange.respond(resp)
    }

    /// The route of the longest prefix that matches `path` on a segment boundary.
    fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| prefix_matches(&r.prefix, path))
    }

    /// The color of a new request: forced by the override header, from the sticky bucket, or
    /// by weight; a color without a live endpoint gives its share to the route's other colors.
    fn choose(&self, route: &Route, headers: &HeaderMap) -> Choice {
        if let Some(forced) = self.forced_color(route, headers) {
            return Choice {
                color: forced,
                forced: true,
                up: self.targets[forced].is_up(),
                set_cookie: None,
            };
        }
        let mut rng = rand::rng();
        let mut set_cookie = None;
        // Read once and let go before failover reads it again.
        let balancer = route.balancer.read();
        let position = match &self.sticky {
            Sticky::Off => balancer.pick(&mut rng),
            Sticky::Cookie => {
                let bucket = cookie_bucket(headers, &self.sticky_cookie).unwrap_or_else(|| {
                    let bucket = rng.random_range(0..BUCKETS);
                    set_cookie = Some(self.bucket_cookie(bucket, headers));
                    bucket
                });
                balancer.for_bucket(bucket)
            }
            Sticky::Header(name) => match headers.get(name.as_str()) {
                Some(value) => balancer.for_bucket(hash_bucket(value.as_bytes())),
                None => balancer.pick(&mut rng),
            },
        };
        drop(balancer);
        // Config guarantees every route a weight above zero.
        let picked = route.colors[position.unwrap_or(0)];
        let (color, up) = if self.targets[picked].is_up() {
            (picked, true)
        } else {
            // Failover only ever picks a color that is up. The color still failed this
            // request: the canary guard must see a canary whose every endpoint is ejected.
            match self.failover(route, picked) {
                Some(other) => {
                    self.metrics
                        .outcome(picked, StatusCode::BAD_GATEWAY.as_u16(), Duration::ZERO);
                    (other, true)
                }
                None => (picked, false),
            }
        };
        Choice {
            color,
            forced: false,
            up,
            set_cookie,
        }
    }

    /// A configured color of this route named by the override header; unknown names are
    /// ignored (a normal pick follows), never an error.
    fn forced_color(&self, route: &Route, headers: &HeaderMap) -> Option<usize> {
        let name = headers
            .get(self.override_header.as_ref()?)?
            .to_str()
            .ok()?
            .trim();
        route
            .colors
            .iter()
            .copied()
            .find(|&i| self.targets[i].color.name.eq_ignore_ascii_case(name))
    }

    fn bucket_cookie(&self, bucket: u32, headers: &HeaderMap) -> HeaderValue {
        let secure = headers
            .get(&X_FORWARDED_PROTO)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        let cookie = format!(
            "{}={bucket}; Path=/; Max-Age={STICKY_MAX_AGE_SECS}; HttpOnly; SameSite=Lax{}",
            self.sticky_cookie,
            if secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&cookie).expect("cookie names are validated")
    }

    /// Another color of the route that is up, by the weights in force (a ramped color's
    /// share); `None` when no other color is.
    fn failover(&self, route: &Route, from: usize) -> Option<usize> {
        let balancer = route.balancer.read();
        let weights: Vec<u32> = route
            .colors
            .iter()
            .enumerate()
            .map(|(k, &j)| {
                let w = balancer.weight(k);
                if j != from && w > 0 && self.targets[j].is_up() {
                    w
                } else {
                    0
                }
            })
            .collect();
        drop(balancer);
        Balancer::new(weights)
            .pick(&mut rand::rng())
            .map(|k| route.colors[k])
    }

    /// The endpoint for the first attempt. The color's last live endpoint may have been ejected
    /// by another request since the color was chosen: then another color (unless forced), or
    /// this color's ejected endpoints. `None` only when the color has no endpoint at all.
    fn first_target(&self, route: &Route, choice: &Choice) -> Option<(usize, Arc<Endpoint>)> {
        let mut rng = rand::rng();
        let endpoints = &self.targets[choice.color].endpoints;
        if let Some(e) = endpoints.pick(&mut rng, &[], !choice.up) {
            return Some((choice.color, e));
        }
        if !choice.forced
            && let Some(j) = self.failover(route, choice.color)
            && let Some(e) = self.targets[j].endpoints.pick(&mut rng, &[], false)
        {
            return Some((j, e));
        }
        endpoints
            .pick(&mut rng, &[], true)
            .map(|e| (choice.color, e))
    }

    /// The endpoint for a retry: another live one of the same color, else (unless the color
    /// was forced) one of another color of the route; never one in `failed`.
    fn retry_target(
        &self,
        route: &Route,
        i: usize,
        failed: &[Authority],
        forced: bool,
    ) -> Option<(usize, Arc<Endpoint>)> {
        let mut rng = rand::rng();
        if let Some(e) = self.targets[i].endpoints.pick(&mut rng, failed, false) {
            return Some((i, e));
        }
        if forced {
            return None;
        }
        // Every other up color, by the weights in force, until one has an endpoint not yet
        // tried.
        let balancer = route.balancer.read();
        let mut others: Vec<(usize, u32)> = route
            .colors
            .iter()
            .enumerate()
            .filter(|&(_, &j)| j != i)
            .map(|(k, &j)| (j, balancer.weight(k)))
            .collect();
        drop(balancer);
        while !others.is_empty() {
            let weights = others.iter().map(|&(j, w)| {
                if w > 0 && self.targets[j].is_up() {
                    w
                } else {
                    0
                }
            });
            let k = Balancer::new(weights).pick(&mut rng)?;
            let (j, _) = others.swap_remove(k);
            if let Some(e) = self.targets[j].endpoints.pick(&mut rng, failed, false) {
                return Some((j, e));
            }
        }
        None
    }

    async fn forward(
        &self,
        mut sent: Sent<'_>,
        body: RequestAhead,
        route: &Route,
        choice: &Choice,
        exchange: &Arc<Exchange>,
    ) -> Response<Body> {
        let (color, forced) = (choice.color, choice.forced);
        let parts = sent.parts;
        let body_empty = matches!(body, RequestAhead::Empty);
        // A body read whole goes again as it is; a streamed one only if it comes back unsent.
        let (complete, mut streamed) = match body {
            RequestAhead::Empty => (None, None),
            RequestAhead::Complete(b) => (Some(b), None),
            RequestAhead::Partial(p) => (None, Some(p)),
        };

        let Some(mut attempt) = self.first_target(route, choice) else {
            exchange.attempt(color, None);
            return self.no_endpoint(&self.targets[color]);
        };
        let started = clock::now();
        let mut attempts = 0;
        // Endpoints that failed this request: never tried for it again.
        let mut failed: Vec<Authority> = Vec::new();
        let mut reset_retried = false;
        let mut pooled = true;
        loop {
            attempts += 1;
            let (i, endpoint) = attempt;
            let target = &self.targets[i];
            let upstream_body = match (&complete, streamed.take()) {
                (Some(b), _) => RequestBody::buffered(b.clone(), exchange.clone()),
                (None, Some(p)) => RequestBody::streamed(p, exchange.clone()),
                (None, None) => RequestBody::empty(exchange.clone()),
            };
            let uri = match upstream_uri(&target.color.upstream.base_path, &parts.uri) {
                Ok(uri) => uri,
                Err(msg) => return text(StatusCode::BAD_REQUEST, format!("colorproxy: {msg}\n")),
            };
            let fields = UpstreamFields::new(
                &parts.headers,
                parts.uri.authority(),
                sent.peer,
                sent.upgrade,
                &target.header,
                &target.host,
            );
            // Upstreams are spoken to in HTTP/1.1 whatever the client spoke.
            let head = RequestHead {
                method: &parts.method,
                target: uri.path_and_query().map_or("/", |p| p.as_str()),
                fields: &fields,
            };
            exchange.attempt(i, Some(endpoint.clone()));
            // Asked only after a connect timed out: is there another endpoint to retry on?
            let alone = || {
                let mut tried = failed.clone();
                tried.push(endpoint.authority.clone());
                self.retry_target(route, i, &tried, forced).is_none()
            };
            let queueing = Queueing {
                client_since: sent.peer.activity.since(),
                alone: &alone,
            };
            // A request without a body skips `send`'s watch over the body's progress, and
            // the copy of its future that one more layer costs.
            let client = &self.client;
            let sent_upstream = if hyper::body::Body::is_end_stream(&upstream_body) {
                client
                    .exchange(&endpoint, &head, upstream_body, pooled, &queueing)
                    .await
            } else {
                // Boxed: its body watch would otherwise grow every request's future by 0.35 KB.
                Box::pin(client.send(&endpoint, &head, upstream_body, exchange, pooled, &queueing))
                    .await
            };
            let e = match sent_upstream {
                Ok(resp) => {
                    if endpoint.record_success() {
                        info!(color = target.name, endpoint = %endpoint.authority, "endpoint answers again");
                    }
                    return self
                        .upstream_response(resp, sent.client_upgrade.take(), target, &endpoint)
                        .await;
                }
                Err(e) => e,
            };
            // The client broke its own request: nothing to hold against the upstream.
            if let Some(fault) = exchange.client_fault() {
                return self.client_fault(&fault, parts);
            }
            self.count_upstream_error(target, &e);
            // A keep-alive connection the upstream closed as it was reused: the endpoint is
            // fine, and a request that may go again goes on a new connection to it, once.
            if e.detail == Detail::StaleConnection
                && pooled
                && body_empty
                && parts.method.is_idempotent()
            {
                debug!(
                    color = target.name,
                    endpoint = %endpoint.authority,
                    cause = %e.cause,
                    "pooled connection closed by the upstream, retrying on a new one"
                );
                pooled = false;
                attempt = (i, endpoint);
                continue;
            }
            if e.kind != ErrorKind::Timeout
                && let Some(ejected_for) = endpoint.record_failure()
            {
                warn!(
                    color = target.name,
                    endpoint = %endpoint.authority,
                    ejected_for = %humantime::format_duration(ejected_for),
                    "endpoint ejected after failing"
                );
            }
            streamed = exchange.take_unsent_body();
            let resendable = body_empty || complete.is_some() || streamed.is_some();
            // Nothing reached the upstream after a failed connect: any request may go
            // elsewhere, to every other endpoint in turn within the bounds. After a reset it
            // may have been processed: only a bodiless idempotent request may, once.
            let retry = match e.kind {
                ErrorKind::Connect | ErrorKind::Dns => {
                    resendable && attempts < MAX_ATTEMPTS && started.elapsed() < self.retry_window
                }
                // An invalid response was still an answer: the request was heard.
                ErrorKind::Reset => {
                    !reset_retried
                        && e.detail != Detail::InvalidResponse
                        && body_empty
                        && parts.method.is_idempotent()
                }
                ErrorKind::Timeout => false,
            };
            failed.push(endpoint.authority.clone());
            // With nothing else to try, a connect that timed out goes again to the same
            // endpoint (HAProxy's `retries`): a SYN dropped by a full accept queue or on the
            // way would otherwise cost the request, as the kernel resends it only after 1 s.
            let next = if retry {
                self.retry_target(route, i, &failed, forced).or_else(|| {
                    (e.detail == Detail::ConnectTimedOut).then(|| (i, endpoint.clone()))
                })
            } else {
                None
            };
            let Some(next) = next else {
                warn!(
                    color = target.name,
                    upstream = %target.color.upstream.url,
                    endpoint = %endpoint.authority,
                    kind = %e.kind.as_str(),
                    cause = %e.cause,
                    attempts,
                    "upstream request failed"
                );
                return text(
                    e.kind.status(),
                    format!(
                        "colorproxy: upstream {} ({}) failed: {e}\n",
                        target.name, target.color.upstream.url
                    ),
                );
            };
            // The request leaves this color: its failure still counts against the color (the
            // canary guard must see a canary that refuses everything).
            if next.0 != i {
                self.metrics
                    .outcome(i, e.kind.status().as_u16(), started.elapsed());
            }
            debug!(
                color = target.name,
                endpoint = %endpoint.authority,
                kind = %e.kind.as_str(),
                retry_color = self.targets[next.0].name,
                retry_endpoint = %next.1.authority,
                "retrying on another endpoint"
            );
            reset_retried |= e.kind == ErrorKind::Reset;
            pooled = true;
            attempt = next;
        }
    }

    fn count_upstream_error(&self, target: &Target, e: &UpstreamError) {
        self.metrics
            .upstream_errors
            .get_or_create(&ErrorLabels {
                color: target.name,
                kind: e.kind.as_str(),
            })
            .inc();
    }

    /// The answer when the upstream's response failed after its head arrived.
    fn failed_response(
        &self,
        target: &Target,
        endpoint: &Endpoint,
        e: UpstreamError,
    ) -> Response<Body> {
        self.count_upstream_error(target, &e);
        if e.kind == ErrorKind::Reset {
            endpoint.record_failure();
        }
        warn!(
            color = target.name,
            endpoint = %endpoint.authority,
            kind = %e.kind.as_str(),
            cause = %e.cause,
            "upstream response failed"
        );
        text(
            e.kind.status(),
            format!(
                "colorproxy: upstream {} ({}) failed: {e}\n",
                target.name, target.color.upstream.url
            ),
        )
    }

    /// The answer to a client that broke its own request. `Connection: close`, since after a
    /// broken or abandoned body the connection's framing cannot be trusted.
    fn client_fault(&self, fault: &ClientFault, parts: &Parts) -> Response<Body> {
        self.metrics.client_error(fault.kind());
        debug!(
            method = %parts.method,
            path = %parts.uri.path(),
            kind = fault.kind(),
            "{fault}"
        );
        let mut resp = text(fault.status(), format!("colorproxy: {fault}\n"));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    fn no_endpoint(&self, target: &Target) -> Response<Body> {
        let why = target
            .endpoints
            .last_error()
            .unwrap_or_else(|| "not resolved yet".into());
        self.metrics
            .upstream_errors
            .get_or_create(&ErrorLabels {
                color: target.name,
                kind: ErrorKind::Dns.as_str(),
            })
            .inc();
        warn!(color = target.name, upstream = %target.color.upstream.url, reason = %why, "no endpoint to send to");
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "colorproxy: upstream {} ({}) has no endpoint: {why}\n",
                target.name, target.color.upstream.url
            ),
        )
    }

    async fn upstream_response(
        &self,
        mut resp: Response<UpstreamBody>,
        client_upgrade: Option<OnUpgrade>,
        target: &Target,
        endpoint: &Endpoint,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                warn!(
                    color = target.name,
                    "upstream switched protocols without being asked"
                );
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "colorproxy: upstream {} sent an unrequested 101\n",
                        target.name
                    ),
                );
            };
            let Some(upstream_upgrade) = resp.body_mut().take_upgraded() else {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "colorproxy: upstream {} gave no connection to switch\n",
                        target.name
                    ),
                );
            };
            let guard = TunnelGuard::new(&self.tunnels);
            let color = target.name;
            tokio::spawn(async move {
                tunnel(client_upgrade, upstream_upgrade, color).await;
                drop(guard);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Either::Right(Either::Right(Full::default())));
        }
        // The codec kept no hop-by-hop field of a response but a 101's.
        let (parts, body) = resp.into_parts();
        let read = buffering::read_response(
            body,
            self.response_buffer,
            &self.budget,
            self.spill.as_ref(),
        )
        .await;
        let body = match read {
            Ok(ResponseRead::Stream { body, overflowed }) => {
                if overflowed {
                    self.metrics.buffer_overflow("response");
                }
                Either::Left(body)
            }
            Ok(ResponseRead::Ahead(ahead)) => Either::Right(ahead),
            Ok(ResponseRead::Spilled(spilled)) => {
                return Response::from_parts(parts, Either::Right(Either::Left(spilled)));
            }
            Err(e) => {
                let e = if e.is_timeout() {
                    UpstreamError::new(
                        ErrorKind::Timeout,
                        format!(
                            "the response body stalled for {}",
                            humantime::format_duration(self.request_timeout)
                        ),
                    )
                } else {
                    UpstreamError::new(
                        ErrorKind::Reset,
                        format!(
                            "the response body broke off: {}",
                            crate::upstream::cause_chain(&e)
                        ),
                    )
                };
                return self.failed_response(target, endpoint, e);
            }
        };
        Response::from_parts(parts, Either::Left(body))
    }
}

fn open_spill(config: &Config) -> Option<Arc<Spill>> {
    if config.response_spill == 0 {
        return None;
    }
    match Spill::new(&config.spill_dir, config.response_spill) {
        Ok(spill) => Some(spill),
        Err(e) => {
            warn!(
                dir = %config.spill_dir.display(),
                "RESPONSE_SPILL: TMPDIR takes no files ({e}): responses that memory has no room for wait for their slow clients (set TMPDIR to a writable directory, or RESPONSE_SPILL=0 to say so)"
            );
            None
        }
    }
}

/// The client's request as every attempt sends it.
struct Sent<'a> {
    parts: &'a Parts,
    upgrade: Option<&'a HeaderValue>,
    /// Taken by the attempt whose response is the upstream's 101.
    client_upgrade: Option<OnUpgrade>,
    peer: &'a Peer,
}

/// The colors that serve one path prefix, and the weighted choice among them.
struct Route {
    prefix: String,
    /// Positions in `Proxy::targets`, in COLORS order.
    colors: Vec<usize>,
    /// Replaced as a ramp moves (see [`crate::delivery`]); fixed otherwise.
    balancer: RouteBalancer,
}

struct Choice {
    color: usize,
    /// Chosen by the override header: no failover to another color.
    forced: bool,
    /// Whether the color has a live endpoint; when not, ejected endpoints are tried anyway.
    up: bool,
    set_cookie: Option<HeaderValue>,
}

/// How long a sticky client keeps its bucket: 30 days.
const STICKY_MAX_AGE_SECS: u32 = 30 * 24 * 3600;

/// `/films` matches `/films` and `/films/1`, not `/filmsx`; `/` matches everything.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The bucket in the sticky cookie, if there is a valid one; anything else is ignored (and
/// replaced by a new bucket).
fn cookie_bucket(headers: &HeaderMap, name: &str) -> Option<u32> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| {
            let v = v.trim().trim_matches('"');
            if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse().ok().filter(|b| *b < BUCKETS)
        })
}

/// A bucket from a stable hash: the same value gives the same bucket on every replica and
/// every version.
fn hash_bucket(value: &[u8]) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value);
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % u64::from(BUCKETS)) as u32
}

fn needs_discovery(color: &Color) -> bool {
    color.discovery != Discovery::Off && !color.upstream.is_ip()
}

/// The protocol of an HTTP/1.1 upgrade request (WebSocket), the one case where `Upgrade` and
/// `Connection` must reach the upstream.
fn upgrade_protocol(req: &Parts) -> Option<HeaderValue> {
    if req.version != Version::HTTP_11 {
        return None;
    }
    // `Upgrade` first: most requests have none, and then `Connection` is not read.
    let protocol = req.headers.get(header::UPGRADE)?;
    connection_has(&req.headers, "upgrade").then(|| protocol.clone())
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// What a request header is to the proxy.
enum Role {
    HopByHop,
    Connection,
    Host,
    Color,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    Other,
}

fn role(name: &HeaderName) -> Role {
    // Standard names compare as small integers, the custom ones by bytes (length first).
    if name == header::HOST {
        Role::Host
    } else if name == header::CONNECTION {
        Role::Connection
    } else if is_hop_by_hop(name) {
        Role::HopByHop
    } else if name == COLOR {
        Role::Color
    } else if name == X_FORWARDED_FOR {
        Role::ForwardedFor
    } else if name == X_FORWARDED_PROTO {
        Role::ForwardedProto
    } else if name == X_FORWARDED_HOST {
        Role::ForwardedHost
    } else {
        Role::Other
    }
}

/// The fields sent upstream, from the client's as they are (no map is built: they are written
/// straight into the request head):
/// - hop-by-hop headers go, and so does every header `Connection` names; a WebSocket upgrade
///   gets `Connection: upgrade` and its `Upgrade` back;
/// - the client's `Color` is replaced by the chosen one: it cannot be spoofed;
/// - one `Host` is kept (HTTP/2 clients name it in the URI; a client that names none gets
///   the upstream's `host:port`);
/// - `X-Forwarded-For` gets the client's address appended; `X-Forwarded-Proto` and
///   `X-Forwarded-Host` are set unless a proxy in front (a TLS terminator) set them.
struct UpstreamFields<'a> {
    client: &'a HeaderMap,
    /// Names the client's `Connection` lists (rarely any).
    named: Vec<HeaderName>,
    /// The proxy's own fields, after the client's: borrowed from the request, the peer and
    /// the target, so that none is copied for a request.
    own: [(&'static HeaderName, Own<'a>); 7],
    /// The values made for this request, which `own` points at (rare: a `Host` from an
    /// HTTP/2 authority, an `X-Forwarded-For` that adds to the client's).
    made_host: Option<HeaderValue>,
    made_for: Option<HeaderValue>,
}

/// One of the proxy's own fields.
#[derive(Clone, Copy)]
enum Own<'a> {
    Absent,
    Is(&'a HeaderValue),
    MadeHost,
    MadeFor,
}

static HOST: HeaderName = header::HOST;
static CONNECTION: HeaderName = header::CONNECTION;
static UPGRADE: HeaderName = header::UPGRADE;
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

impl<'a> UpstreamFields<'a> {
    fn new(
        client: &'a HeaderMap,
        authority: Option<&Authority>,
        peer: &'a Peer,
        upgrade: Option<&'a HeaderValue>,
        color: &'a HeaderValue,
        upstream_host: &'a HeaderValue,
    ) -> UpstreamFields<'a> {
        let mut host = None;
        let mut forwarded_host = None;
        let mut forwarded_for: Vec<&str> = Vec::new();
        let mut proto = None;
        let mut connection = false;
        for (name, value) in client {
            match role(name) {
                Role::HopByHop | Role::Color | Role::Other => {}
                Role::Connection => connection = true,
                Role::Host => {
                    host.get_or_insert(value);
                }
                Role::ForwardedFor => {
                    if let Ok(v) = value.to_str().map(str::trim)
                        && !v.is_empty()
                    {
                        forwarded_for.push(v);
                    }
                }
                Role::ForwardedProto => {
                    proto.get_or_insert(value);
                }
                Role::ForwardedHost => {
                    forwarded_host.get_or_insert(value);
                }
            }
        }
        let mut named = Vec::new();
        if connection {
            for name in connection_named(client) {
                match role(&name) {
                    Role::ForwardedFor => forwarded_for.clear(),
                    Role::ForwardedProto => proto = None,
                    Role::ForwardedHost => forwarded_host = None,
                    Role::Other => named.push(name),
                    _ => {}
                }
            }
        }
        let made_host = match host {
            None => authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            Some(_) => None,
        };
        let host = match (host, &made_host) {
            (Some(h), _) => Own::Is(h),
            (None, Some(_)) => Own::MadeHost,
            (None, None) => Own::Absent,
        };
        let forwarded_host = match forwarded_host {
            Some(v) => Own::Is(v),
            None => host,
        };
        let host = match host {
            Own::Absent => Own::Is(upstream_host),
            h => h,
        };
        let made_for = if forwarded_for.is_empty() {
            None
        } else {
            forwarded_for.push(peer.ip.to_str().expect("an IP address is visible ASCII"));
            HeaderValue::from_str(&forwarded_for.join(", ")).ok()
        };
        let for_ = match made_for {
            Some(_) => Own::MadeFor,
            None => Own::Is(&peer.ip),
        };
        // A TLS terminator in front of colorproxy says https; keep its word, else it is http.
        let proto = proto
            .filter(|p| matches!(p.as_bytes(), b"http" | b"https"))
            .unwrap_or(&HTTP);
        let (connection, upgrade) = match upgrade {
            Some(protocol) => (Own::Is(&UPGRADE_TOKEN), Own::Is(protocol)),
            None => (Own::Absent, Own::Absent),
        };
        UpstreamFields {
            client,
            named,
            own: [
                (&X_FORWARDED_HOST, forwarded_host),
                (&HOST, host),
                (&X_FORWARDED_FOR, for_),
                (&X_FORWARDED_PROTO, Own::Is(proto)),
                (&CONNECTION, connection),
                (&UPGRADE, upgrade),
                (&COLOR, Own::Is(color)),
            ],
            made_host,
            made_for,
        }
    }
}

impl Fields for UpstreamFields<'_> {
    fn each(&self, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        for (name, value) in self.client {
            if matches!(role(name), Role::Other) && !self.named.contains(name) {
                f(name, value);
            }
        }
        for &(name, value) in &self.own {
            let value = match value {
                Own::Absent => None,
                Own::Is(v) => Some(v),
                Own::MadeHost => self.made_host.as_ref(),
                Own::MadeFor => self.made_for.as_ref(),
            };
            if let Some(value) = value {
                f(name, value);
            }
        }
    }
}

/// The upstream fields as a map, for the tests.
#[cfg(test)]
fn upstream_headers(
    client: &HeaderMap,
    authority: Option<&Authority>,
    peer: &Peer,
    upgrade: Option<&HeaderValue>,
    color: &HeaderValue,
    upstream_host: &HeaderValue,
) -> HeaderMap {
    let fields = UpstreamFields::new(client, authority, peer, upgrade, color, upstream_host);
    let mut out = HeaderMap::new();
    fields.each(|name, value| {
        out.append(name.clone(), value.clone());
    });
    out
}

/// The tokens of the `Connection` header(s).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The header names `Connection` lists (hop-by-hop for this connection only).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// The origin-form target upstream: base path + request path, with exactly one slash between
/// the two, and the query string unchanged.
fn upstream_uri(base: &str, original: &Uri) -> Result<Uri, String> {
    let path = original.path();
    let joined = match (base.is_empty(), path.starts_with('/')) {
        (true, true) => None,
        (false, true) => Some(format!("{base}{path}")),
        // `OPTIONS *`: upstreams get the base path itself.
        (_, false) => Some(format!("{base}/")),
    };
    let path_and_query = match (joined, original.query()) {
        (None, _) => original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        (Some(p), None) => {
            PathAndQuery::try_from(p).map_err(|e| format!("bad request path: {e}"))?
        }
        (Some(p), Some(q)) => PathAndQuery::try_from(format!("{p}?{q}"))
            .map_err(|e| format!("bad request path: {e}"))?,
    };
    Ok(Uri::from(path_and_query))
}

#[derive(Default)]
struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

/// Counts one open tunnel for as long as it lives.
struct TunnelGuard(Arc<Tunnels>);

impl TunnelGuard {
    fn new(tunnels: &Arc<Tunnels>) -> TunnelGuard {
        tunnels.open.fetch_add(1, Ordering::SeqCst);
        TunnelGuard(tunnels.clone())
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

/// Copies bytes both ways between client and upstream once both sides have switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Upgraded, color: &'static str) {
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            warn!(%color, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let Upgraded {
        stream: mut upstream,
        read_ahead,
    } = upstream;
    // What the upstream sent right after its 101 is the tunnel's first bytes.
    if !read_ahead.is_empty()
        && let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &read_ahead).await
    {
        debug!(%color, error = %e, "upgraded connection ended with an error");
        return;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            debug!(%color, bytes_up = up, bytes_down = down, "upgraded connection closed")
        }
        Err(e) => debug!(%color, error = %e, "upgraded connection ended with an error"),
    }
}

/// The 400 of a request that failed [`request_checks::check`]; an HTTP/1 connection closes after it.
fn rejection(why: request_checks::Rejection, version: Version) -> Response<Body> {
    let mut resp = text(StatusCode::BAD_REQUEST, format!("colorproxy: {why}\n"));
    if request_checks::closes_connection(version) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Either::Right(Full::new(Bytes::from(body)))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, target: &str) -> String {
        upstream_uri(base, &target.parse().unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn path_joining() {
        assert_eq!(join("", "/"), "/");
        assert_eq!(join("", "/a/b?x=1&y"), "/a/b?x=1&y");
        assert_eq!(join("/api", "/"), "/api/");
        assert_eq!(join("/api", "/v1/users?id=7"), "/api/v1/users?id=7");
        assert_eq!(join("/api", "http://client.example/x?q"), "/api/x?q");
        assert_eq!(join("", "*"), "/");
        assert_eq!(join("/api", "*"), "/api/");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/films", "/films"));
        assert!(prefix_matches("/films", "/films/1"));
        assert!(!prefix_matches("/films", "/filmsx"));
        assert!(!prefix_matches("/films", "/"));
        assert!(prefix_matches("/api/v1", "/api/v1/users"));
    }

    #[test]
    fn cookie_buckets() {
        let mut h = HeaderMap::new();
        let get = |h: &HeaderMap| cookie_bucket(h, "colorproxy_bucket");
        assert_eq!(get(&h), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; colorproxy_bucket=42"),
        );
        assert_eq!(get(&h), Some(42));
        for bad in ["10000", "-1", "+5", "4x", "", "99999999999", "1.5"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("colorproxy_bucket={bad}")).unwrap(),
            );
            assert_eq!(get(&h), None, "{bad}");
        }
        // HTTP/2 may split cookies over several fields.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("colorproxy_bucket=9999"),
        );
        assert_eq!(get(&h), Some(9999));
    }

    #[test]
    fn header_buckets_are_stable_and_spread() {
        assert_eq!(hash_bucket(b"user-42"), hash_bucket(b"user-42"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let b = hash_bucket(format!("user-{i}").as_bytes());
            assert!(b < BUCKETS);
            seen.insert(b / 1000);
        }
        assert_eq!(seen.len(), 10, "buckets cluster: {seen:?}");
    }

    fn upstream_head(client: &HeaderMap, addr: &str) -> HeaderMap {
        upstream_headers(
            client,
            None,
            &Peer::new(addr.parse().unwrap(), false),
            None,
            &HeaderValue::from_static("green"),
            &HeaderValue::from_static("myapp-v2:8080"),
        )
    }

    #[test]
    fn forwarded_for_appends() {
        let h = upstream_head(&HeaderMap::new(), "127.0.0.1:1");
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1");
        let mut client = HeaderMap::new();
        client.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("127.0.0.1"),
        );
        client.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static(" 10.0.0.9"),
        );
        client.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static(""));
        let h = upstream_head(&client, "[::ffff:192.0.2.1]:1");
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1, 10.0.0.9, 192.0.2.1");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_sets_the_proxy_headers() {
        let mut client = HeaderMap::new();
        client.insert(header::HOST, HeaderValue::from_static("shop.example"));
        client.append(header::HOST, HeaderValue::from_static("evil.example"));
        client.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret, X-Forwarded-Proto"),
        );
        client.insert("x-secret", HeaderValue::from_static("1"));
        client.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        client.insert(header::TE, HeaderValue::from_static("trailers"));
        client.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        client.insert(COLOR.clone(), HeaderValue::from_static("blue"));
        client.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        client.insert("x-kept", HeaderValue::from_static("1"));
        let h = upstream_head(&client, "10.1.2.3:5");
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "color",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-kept"
            ]
        );
        assert_eq!(h.get_all(header::HOST).iter().count(), 1);
        assert_eq!(h[header::HOST], "shop.example");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(h[&COLOR], "green");
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        // Named by Connection, the client's value is not trusted.
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn a_request_naming_no_host_gets_the_upstream_s() {
        let h = upstream_head(&HeaderMap::new(), "10.1.2.3:5");
        assert_eq!(h[header::HOST], "myapp-v2:8080");
        assert!(!h.contains_key(&X_FORWARDED_HOST));
        let h = upstream_headers(
            &HeaderMap::new(),
            Some(&Authority::from_static("shop.example:443")),
            &Peer::new("10.1.2.3:5".parse().unwrap(), false),
            Some(&HeaderValue::from_static("websocket")),
            &HeaderValue::from_static("blue"),
            &HeaderValue::from_static("myapp-v1:8080"),
        );
        assert_eq!(h[header::HOST], "shop.example:443");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example:443");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
