//! The status page on the admin listener: `GET /` serves one self-contained HTML page
//! (embedded in the binary, no external asset, so it works in a Swarm without internet), which
//! reads `GET /status` every few seconds. This module owns both, and the sampling of the
//! counters into [`crate::history`] that lets a freshly opened page show the last minutes.
//!
//! Everything the page shows that comes from the environment or from requests is written into
//! the page as text (`textContent`), never as markup, and the page is served with a
//! Content-Security-Policy that allows only its own inline script and style (by hash) and
//! requests to its own origin.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::history::{self, History, Sample};
use crate::metrics::ColorLabels;
use crate::peers::Roster;
use crate::proxy::Proxy;
use crate::ramp::format_time;

const PAGE: &str = include_str!("status.html");

/// The PEERS the status page reports on.
pub struct PeerList {
    /// `tasks.proxy:9901`, as polled.
    pub name: String,
    pub roster: Arc<Roster>,
}

pub struct Status {
    started: SystemTime,
    started_at: Instant,
    /// Tells this replica apart in the PEERS answers (it asks itself too).
    instance: String,
    history: Mutex<History>,
    peers: Option<PeerList>,
}

impl Status {
    pub fn new(peers: Option<PeerList>) -> Status {
        Status {
            started: SystemTime::now(),
            started_at: Instant::now(),
            instance: format!("{:016x}", rand::random::<u64>()),
            history: Mutex::new(History::new(history::CAPACITY)),
            peers,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// Adds the counters of every color at `at` to the history.
    pub fn sample(&self, proxy: &Proxy, at: SystemTime) {
        let samples = colors(proxy)
            .into_iter()
            .map(|(_, totals, share)| Sample { totals, share })
            .collect();
        self.history().record(unix_ms(at), samples);
    }

    /// What `/guard` answers: the config hash and tripped colors peers act on, and what the
    /// status page shows of a peer.
    pub fn guard_answer(&self, proxy: &Proxy) -> Value {
        let delivery = proxy.delivery();
        let mut view = delivery.peer_view();
        view["instance"] = json!(self.instance);
        view["version"] = json!(env!("CARGO_PKG_VERSION"));
        view["uptime_seconds"] = json!(self.uptime().as_secs());
        view["guard"] = delivery.guard_states();
        view
    }

    /// The document `/status` answers. `config_view`: `/config` as it is now.
    pub fn view(
        &self,
        proxy: &Proxy,
        config_view: &Value,
        draining: bool,
        now: SystemTime,
    ) -> Value {
        let metrics = proxy.metrics();
        let colors: Vec<Value> = colors(proxy)
            .into_iter()
            .map(|(name, t, share)| {
                json!({
                    "name": name,
                    "requests": t.requests,
                    "errors": t.errors,
                    "share": share,
                    "live": t.live,
                    "ejected": t.ejected,
                })
            })
            .collect();
        let config_hash = proxy.delivery().config_hash();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "instance": self.instance,
            "now": format_time(now),
            "started_at": format_time(self.started),
            "uptime_seconds": self.uptime().as_secs(),
            "config_hash": config_hash,
            "draining": draining,
            "connections_open": metrics.connections_open.get(),
            "in_flight": metrics.in_flight.get(),
            "websockets_open": proxy.open_tunnels(),
            "routes": config_view["routes"],
            "guard": config_view["guard"],
            "colors": colors,
            "history": self.history().view(metrics.color_names()),
            "peers": self.peers.as_ref().map(|p| {
                let mut v = p.roster.view(config_hash, &self.instance);
                v["name"] = json!(p.name);
                v
            }),
        })
    }
}

/// Per color: its name, counters and share in force, as `/metrics` shows them.
fn colors(proxy: &Proxy) -> Vec<(&'static str, crate::metrics::ColorTotals, f64)> {
    proxy.update_endpoint_metrics();
    let metrics = proxy.metrics();
    proxy.delivery().update_metrics(&metrics.delivery);
    metrics
        .color_names()
        .iter()
        .enumerate()
        .map(|(i, &color)| {
            let share = metrics
                .delivery
                .share
                .get(&ColorLabels { color })
                .map_or(0.0, |g| g.get());
            (color, metrics.totals(i), share)
        })
        .collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Samples the counters every [`history::INTERVAL_MS`] until the process exits.
pub async fn run(status: Arc<Status>, proxy: Arc<Proxy>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(history::INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        status.sample(&proxy, SystemTime::now());
    }
}

/// The page, with the headers that keep it to itself: its inline script and style are allowed
/// by their hashes, it may only fetch from its own origin, and it may not be framed.
pub fn page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(csp()).expect("the policy is ASCII"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    private(resp)
}

/// `/status`.
pub fn json_response(view: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{view}\n"))));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    private(resp)
}

fn private(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The Content-Security-Policy of the page, computed once from the embedded page.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes(PAGE, "script"),
            hashes(PAGE, "style")
        )
    })
}

/// `'sha256-…'` of the content of every `<tag>` element of `html`, as CSP wants it.
fn hashes(html: &str, tag: &str) -> String {
    use sha2::{Digest, Sha256};
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let body = &rest[i + open.len()..];
        let Some(j) = body.find(&close) else { break };
        out.push(format!(
            "'sha256-{}'",
            base64(&Sha256::digest(&body.as_bytes()[..j]))
        ));
        rest = &body[j + close.len()..];
    }
    if out.is_empty() {
        "'none'".into()
    } else {
        out.join(" ")
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_policy_allows_exactly_the_page_s_own_script_and_style() {
        // sha256("alert(1)"), as browsers compute it for <script>alert(1)</script>.
        assert_eq!(
            hashes("<p><script>alert(1)</script></p>", "script"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(hashes("<p>no script</p>", "script"), "'none'");
        let policy = csp();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'sha256-"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
        // One script and one style, each inline: nothing else for a hash to miss.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(PAGE.contains("<script>") && PAGE.contains("<style>"));
    }

    #[test]
    fn the_page_never_writes_data_as_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(sink), "the page uses {sink}");
        }
        // Nothing to load from elsewhere: no URL but the SVG namespace, no src, no import.
        for external in [
            "https://",
            " src=",
            "@import",
            "url(",
            "<link rel=\"stylesheet",
        ] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
        assert_eq!(
            PAGE.matches("http://").count(),
            PAGE.matches("http://www.w3.org/2000/svg").count()
        );
    }
}
