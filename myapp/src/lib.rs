//! Demo backend for colorproxy.
//!
//! It exists so a person (or a benchmark) can see which side of a blue/green
//! split served a request: it echoes the `Color` header the proxy injected and
//! names the replica that answered. The logic lives in a library, with `main`
//! kept thin, so the parsing and rendering rules can be unit-tested without
//! spawning processes.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Matches the port most container examples expose, so the image works
/// without any configuration.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// How long a stop signal leaves the server answering as before (new connections
/// included) so that clients stop sending here before anything is refused.
///
/// Swarm removes a stopping task from its DNS (`tasks.<service>`) and from the
/// routing mesh only 2 s before it sends SIGTERM, and a proxy that discovers
/// tasks (colorproxy: every `DNS_REFRESH`, 5 s by default) can still send to
/// it for up to 3 s after the signal. A task that closed its listener at the
/// signal refused those requests: 5 s outlasts that window with room to spare.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// Upper bound on draining in-flight requests once the listener is closed.
/// With the default delay, 9 s in all: inside Docker's 10 s stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Pause after a failed `accept` so that persistent errors such as EMFILE
/// don't turn the accept loop into a busy spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub const USAGE: &str = "\
Usage: myapp [LISTEN_ADDR]

Demo backend for colorproxy. Every GET or HEAD, on any path, is answered with
the request's Color header and this host's name; GET /healthz answers \"ok\".

Arguments:
  LISTEN_ADDR  socket address to listen on, e.g. 127.0.0.1:8080 or [::]:80
               (default: $LISTEN, else 0.0.0.0:8080)

Options:
  -h, --help   print this help and exit

Environment:
  LISTEN       listen address used when no argument is given
  SHUTDOWN_DELAY  how long a stop signal leaves it serving, e.g. 5s, 500ms or
               0 (default: 5s)
  V2           when non-empty, answer with an HTML page instead of plain text
  HOSTNAME     name to report (default: /etc/hostname, else unknown-host)

SIGTERM or SIGINT: it keeps serving for SHUTDOWN_DELAY (every answer then
says Connection: close, so keep-alive clients move on), then stops accepting
connections, lets in-flight requests finish (for at most 4 s) and exits 0.
";

/// The header colorproxy sets on every request it forwards.
pub const COLOR_HEADER: HeaderName = HeaderName::from_static("color");

const UNKNOWN_COLOR: &str = "unknown";
const UNKNOWN_HOST: &str = "unknown-host";
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Serve(SocketAddr),
}

/// A usage error; `main` turns it into exit code 2, the conventional code for
/// bad invocations, so supervisors can tell it apart from runtime failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Decides what to do from the arguments (without the program name) and the
/// value of `LISTEN`. Errors name the source of a bad address because with
/// three possible sources "invalid address" alone sends people hunting.
pub fn parse_command<I>(args: I, listen_env: Option<String>) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = String>,
{
    let args: Vec<String> = args.into_iter().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match args.as_slice() {
        [] => {}
        [arg] if arg.starts_with('-') => {
            return Err(UsageError(format!("unknown option {arg:?}")));
        }
        [arg] => {
            return parse_addr(arg, "argument").map(Command::Serve);
        }
        [_, extra, ..] => {
            return Err(UsageError(format!("unexpected extra argument {extra:?}")));
        }
    }
    match listen_env {
        // An empty LISTEN is how compose files usually "unset" a variable.
        Some(value) if !value.is_empty() => {
            parse_addr(&value, "LISTEN environment variable").map(Command::Serve)
        }
        _ => Ok(Command::Serve(
            DEFAULT_LISTEN.parse().expect("default address is valid"),
        )),
    }
}

fn parse_addr(value: &str, source: &str) -> Result<SocketAddr, UsageError> {
    value.parse().map_err(|e| {
        UsageError(format!(
            "invalid listen address {value:?} from {source}: {e} (expected HOST:PORT, e.g. 0.0.0.0:8080)"
        ))
    })
}

/// Reads `SHUTDOWN_DELAY`: whole seconds or milliseconds with their unit
/// (`5s`, `500ms`), or `0`; unset or empty means the default.
pub fn parse_shutdown_delay(value: Option<String>) -> Result<Duration, UsageError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_SHUTDOWN_DELAY);
    };
    let (digits, unit): (&str, fn(u64) -> Duration) = if let Some(n) = value.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, Duration::from_secs)
    } else if value == "0" {
        ("0", Duration::from_secs)
    } else {
        ("", Duration::from_secs)
    };
    match digits.parse::<u64>() {
        Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(unit(n)),
        _ => Err(UsageError(format!(
            "invalid SHUTDOWN_DELAY {value:?} from the environment (expected a duration such as 5s, 500ms or 0)"
        ))),
    }
}

/// Picks the name to report. `HOSTNAME` wins because Swarm templates can set
/// it per task; `/etc/hostname` is read only when needed since it is the
/// container ID, which is still useful to tell replicas apart.
pub fn resolve_hostname(env: Option<String>, read_file: impl FnOnce() -> Option<String>) -> String {
    let non_empty = |s: String| {
        let trimmed = s.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    };
    env.and_then(non_empty)
        .or_else(|| read_file().and_then(non_empty))
        .unwrap_or_else(|| UNKNOWN_HOST.to_owned())
}

/// Response style, fixed at startup from `V2` so a rollout from v1 to v2 is
/// visible in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Text,
    Html,
}

/// Builds responses with as little per-request work as possible, because this
/// service is the upstream in proxy benchmarks and must not be the bottleneck.
///
/// Everything except the color is fixed at startup, so each body is
/// `prefix + color + suffix`, and the bodies for the colors colorproxy
/// actually uses are prebuilt and shared (cloning `Bytes` is a refcount bump).
#[derive(Debug)]
pub struct Responder {
    style: Style,
    prefix: Box<[u8]>,
    suffix: Box<[u8]>,
    prebuilt: Vec<(&'static str, Bytes)>,
}

impl Responder {
    pub fn new(style: Style, hostname: &str) -> Self {
        let (prefix, suffix) = match style {
            Style::Text => (Vec::new(), format!(" {hostname}\n").into_bytes()),
            Style::Html => {
                let mut prefix = b"<h1>".to_vec();
                push_html_escaped(&mut prefix, hostname);
                prefix.extend_from_slice(b" (");
                (prefix, b")</h1>\n".to_vec())
            }
        };
        let mut responder = Responder {
            style,
            prefix: prefix.into_boxed_slice(),
            suffix: suffix.into_boxed_slice(),
            prebuilt: Vec::new(),
        };
        responder.prebuilt = [UNKNOWN_COLOR, "blue", "green"]
            .into_iter()
            .map(|color| (color, Bytes::from(responder.render(color))))
            .collect();
        responder
    }

    fn render(&self, color: &str) -> Vec<u8> {
        // Escaping can grow the color, so this is only a good first guess.
        let mut body = Vec::with_capacity(self.prefix.len() + color.len() + self.suffix.len());
        body.extend_from_slice(&self.prefix);
        match self.style {
            Style::Text => body.extend_from_slice(color.as_bytes()),
            Style::Html => push_html_escaped(&mut body, color),
        }
        body.extend_from_slice(&self.suffix);
        body
    }

    /// The body for one color (already trimmed, non-empty).
    pub fn body(&self, color: &str) -> Bytes {
        match self.prebuilt.iter().find(|(known, _)| *known == color) {
            Some((_, body)) => body.clone(),
            None => Bytes::from(self.render(color)),
        }
    }

    /// Answers one request. No route looks at the request body; `serve`
    /// takes care of consuming it.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut resp = simple(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT_PLAIN,
                Bytes::from_static(b"method not allowed\n"),
            );
            resp.headers_mut().insert(header::ALLOW, ALLOWED_METHODS);
            return resp;
        }
        if req.uri().path() == "/healthz" {
            return simple(StatusCode::OK, TEXT_PLAIN, Bytes::from_static(b"ok\n"));
        }
        let color = request_color(req);
        let content_type = match self.style {
            Style::Text => TEXT_PLAIN,
            Style::Html => TEXT_HTML,
        };
        simple(StatusCode::OK, content_type, self.body(&color))
    }
}

/// The trimmed `Color` header, or `unknown`. Bytes that are not UTF-8 are
/// replaced rather than rejected so the body always matches its charset; the
/// common valid case borrows and does not allocate.
pub fn request_color<B>(req: &Request<B>) -> Cow<'_, str> {
    let Some(value) = req.headers().get(COLOR_HEADER) else {
        return Cow::Borrowed(UNKNOWN_COLOR);
    };
    match String::from_utf8_lossy(value.as_bytes()) {
        Cow::Borrowed(s) => match s.trim() {
            "" => Cow::Borrowed(UNKNOWN_COLOR),
            t => Cow::Borrowed(t),
        },
        Cow::Owned(s) => match s.trim() {
            "" => Cow::Borrowed(UNKNOWN_COLOR),
            t => Cow::Owned(t.to_owned()),
        },
    }
}

fn simple(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    resp
}

/// Escapes the five characters that matter in HTML text and attributes; the
/// color comes straight from the client, so this is what stops reflected XSS.
pub fn push_html_escaped(out: &mut Vec<u8>, s: &str) {
    let mut rest = s.as_bytes();
    while let Some(pos) = rest
        .iter()
        .position(|b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
    {
        out.extend_from_slice(&rest[..pos]);
        out.extend_from_slice(match rest[pos] {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            _ => b"&#39;",
        });
        rest = &rest[pos + 1..];
    }
    out.extend_from_slice(rest);
}

/// Most request bodies this service sees are tiny (a stray POST); larger
/// ones are not worth reading just to keep one connection open.
const DISCARD_LIMIT: usize = 64 * 1024;

/// Reads and drops a request body before the response goes out. Otherwise
/// hyper keeps the connection only if the whole body happened to be buffered
/// already, so whether a keep-alive client has to reconnect after, say, a 405
/// would depend on packet timing.
async fn discard_body(mut body: Incoming) {
    let mut left = DISCARD_LIMIT;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            match left.checked_sub(data.len()) {
                Some(rest) => left = rest,
                // Too much: stop, and hyper will close the connection.
                None => return,
            }
        }
    }
}

/// How `serve` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within the grace period.
    Complete,
    /// The grace period ran out; remaining connections are dropped.
    TimedOut,
}

/// What happens after the stop signal.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// Serving as before, new connections included, but every HTTP/1 answer
    /// carries `Connection: close` (see `DEFAULT_SHUTDOWN_DELAY`).
    pub delay: Duration,
    /// Then, with the listener closed, the most in-flight requests may take.
    pub grace: Duration,
}

/// Serves until `shutdown` resolves and for `stop.delay` after, then stops
/// accepting and drains connections for at most `stop.grace`.
///
/// Closing an idle keep-alive connection races a client that is sending on it
/// at that moment, so during the delay connections are ended by the server's
/// own `Connection: close` after an answer instead; only those still idle at
/// the end of the delay (clients that had already moved on) are closed.
/// `on_signal` runs when the signal arrives and `on_stop_accepting` once the
/// listener is closed, so the caller can report both moments.
pub async fn serve(
    listener: TcpListener,
    responder: Arc<Responder>,
    shutdown: impl Future<Output = ()>,
    stop: Stop,
    on_signal: impl FnOnce(),
    on_stop_accepting: impl FnOnce(),
) -> Drain {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer enables hyper's header read timeout, which keeps slow or
    // stalled clients from pinning connections forever.
    builder.http1().keep_alive(true).timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let closing = Arc::new(AtomicBool::new(false));
    let mut on_signal = Some(on_signal);
    let mut stop_at: Option<tokio::time::Instant> = None;

    loop {
        let (stream, peer) = tokio::select! {
            // Checked first so a busy listener cannot starve the signal.
            biased;
            () = &mut shutdown, if stop_at.is_none() => {
                closing.store(true, Ordering::Relaxed);
                stop_at = Some(tokio::time::Instant::now() + stop.delay);
                if let Some(report) = on_signal.take() {
                    report();
                }
                continue;
            }
            () = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)),
                if stop_at.is_some() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("myapp: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Responses are tiny and written in one go; Nagle would only add
        // latency when they interleave with delayed ACKs.
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("myapp: {peer}: cannot set TCP_NODELAY: {e}");
        }
        let responder = Arc::clone(&responder);
        let closing = Arc::clone(&closing);
        let service = service_fn(move |req: Request<Incoming>| {
            let mut resp = responder.respond(&req);
            // HTTP/2 has no Connection header; its clients reconnect on GOAWAY.
            if closing.load(Ordering::Relaxed) && req.version() <= Version::HTTP_11 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            async move {
                if !req.body().is_end_stream() {
                    discard_body(req.into_body()).await;
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("myapp: connection from {peer}: {e}");
            }
        });
    }

    drop(listener);
    on_stop_accepting();
    match tokio::time::timeout(stop.grace, graceful.shutdown()).await {
        Ok(()) => Drain::Complete,
        Err(_) => Drain::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str], env: Option<&str>) -> Result<Command, UsageError> {
        parse_command(args.iter().map(|s| s.to_string()), env.map(str::to_owned))
    }

    fn addr(s: &str) -> Command {
        Command::Serve(s.parse().unwrap())
    }

    #[test]
    fn listen_address_precedence() {
        assert_eq!(cmd(&[], None), Ok(addr("0.0.0.0:8080")));
        assert_eq!(cmd(&[], Some("")), Ok(addr("0.0.0.0:8080")));
        assert_eq!(cmd(&[], Some("127.0.0.1:9")), Ok(addr("127.0.0.1:9")));
        assert_eq!(cmd(&["[::1]:7"], Some("127.0.0.1:9")), Ok(addr("[::1]:7")));
    }

    #[test]
    fn bad_addresses_name_their_source() {
        let err = cmd(&["nope"], None).unwrap_err().to_string();
        assert!(
            err.contains("argument") && err.contains("\"nope\""),
            "{err}"
        );
        let err = cmd(&[], Some("host:x")).unwrap_err().to_string();
        assert!(
            err.contains("LISTEN") && err.contains("\"host:x\""),
            "{err}"
        );
    }

    #[test]
    fn help_and_bad_invocations() {
        assert_eq!(cmd(&["--help"], Some("bad")), Ok(Command::Help));
        assert_eq!(cmd(&["127.0.0.1:1", "-h"], None), Ok(Command::Help));
        assert!(cmd(&["--verbose"], None).is_err());
        assert!(cmd(&["127.0.0.1:1", "127.0.0.1:2"], None).is_err());
    }

    #[test]
    fn shutdown_delay() {
        let parse = |v: Option<&str>| parse_shutdown_delay(v.map(str::to_owned));
        assert_eq!(parse(None), Ok(DEFAULT_SHUTDOWN_DELAY));
        assert_eq!(parse(Some("")), Ok(DEFAULT_SHUTDOWN_DELAY));
        assert_eq!(parse(Some("0")), Ok(Duration::ZERO));
        assert_eq!(parse(Some("7s")), Ok(Duration::from_secs(7)));
        assert_eq!(parse(Some("250ms")), Ok(Duration::from_millis(250)));
        for bad in ["5", "s", "-1s", "+1s", "1.5s", "1m", "ms"] {
            let err = parse(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("SHUTDOWN_DELAY") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn hostname_fallbacks() {
        let file = |s: &'static str| move || Some(s.to_owned());
        assert_eq!(resolve_hostname(Some(" web-1 ".into()), file("x")), "web-1");
        assert_eq!(resolve_hostname(Some("".into()), file("abc\n")), "abc");
        assert_eq!(resolve_hostname(None, file(" \n")), "unknown-host");
        assert_eq!(resolve_hostname(None, || None), "unknown-host");
    }

    #[test]
    fn escaping() {
        let mut out = Vec::new();
        push_html_escaped(&mut out, r#"a<b>&"c'd"#);
        assert_eq!(out, b"a&lt;b&gt;&amp;&quot;c&#39;d");
    }

    #[test]
    fn prebuilt_and_rendered_bodies_agree() {
        for style in [Style::Text, Style::Html] {
            let r = Responder::new(style, "h<1>");
            for (color, body) in &r.prebuilt {
                assert_eq!(body.as_ref(), r.render(color).as_slice());
            }
        }
        let text = Responder::new(Style::Text, "h");
        assert_eq!(text.body("blue").as_ref(), b"blue h\n");
        assert_eq!(text.body("red").as_ref(), b"red h\n");
        let html = Responder::new(Style::Html, "h&");
        assert_eq!(html.body("<x>").as_ref(), b"<h1>h&amp; (&lt;x&gt;)</h1>\n");
    }

    #[test]
    fn color_header_is_trimmed_and_defaulted() {
        let req = |v: Option<&[u8]>| {
            let mut b = Request::builder();
            if let Some(v) = v {
                b = b.header(COLOR_HEADER, HeaderValue::from_bytes(v).unwrap());
            }
            b.body(()).unwrap()
        };
        assert_eq!(request_color(&req(None)), "unknown");
        assert_eq!(request_color(&req(Some(b""))), "unknown");
        assert_eq!(request_color(&req(Some(b" \t "))), "unknown");
        assert_eq!(request_color(&req(Some(b" blue\t"))), "blue");
        assert_eq!(request_color(&req(Some(b"gr\xffen"))), "gr\u{fffd}en");
    }

    #[test]
    fn methods_and_health() {
        let r = Responder::new(Style::Html, "h");
        let req = |m: Method, path: &str| Request::builder().method(m).uri(path).body(()).unwrap();

        let resp = r.respond(&req(Method::POST, "/"));
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD");

        let resp = r.respond(&req(Method::GET, "/healthz?probe=1"));
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );

        let resp = r.respond(&req(Method::HEAD, "/any/path"));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
