//! The effective configuration, read once from the environment at startup.
//!
//! Parsing works on any list of `(name, value)` pairs rather than on the process environment,
//! so tests describe an environment as data and never call `set_var`. Validation collects every
//! problem instead of stopping at the first: an operator whose `docker service update` was
//! rejected should be able to fix it in one go.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper::http::uri::{Authority, Uri};
use serde::Deserialize;

use crate::guard;
use crate::ramp::{self, Ramp};
use crate::typos;

/// Colors used when `COLORS` is unset: the blue/green pair of the classic walkthrough.
pub const DEFAULT_COLORS: &[&str] = &["blue", "green"];
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9901";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Docker waits 10 s (`stop_grace_period`) before SIGKILL; 8 s of drain leaves time to exit.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(8);
/// Docker's embedded DNS answers with a 600 s TTL; Swarm tasks come and go much faster.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// nginx's `client_body_buffer_size` keeps 16 KiB in memory and spills to disk; with no disk
/// here, 1 MiB covers the form posts and JSON bodies that a slow client would otherwise feed to
/// the upstream byte by byte.
pub const DEFAULT_REQUEST_BUFFER: u64 = 1 << 20;
pub const DEFAULT_RESPONSE_BUFFER: u64 = 1 << 20;
/// nginx's `client_body_timeout` is 60 s between reads; a whole buffered body in 30 s is
/// 35 KB/s for 1 MiB, slower than any real client.
/// nginx's `proxy_max_temp_file_size` per response; here for all responses at once.
pub const DEFAULT_RESPONSE_SPILL: u64 = 1 << 30;
pub const DEFAULT_SPILL_DIR: &str = "/tmp";
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-color variables are the color's name plus one of these.
const COLOR_SUFFIXES: &[&str] = &["_WEIGHT", "_DISCOVERY", "_PREFIX"];
pub const DEFAULT_STICKY_COOKIE: &str = "colorproxy_bucket";
/// Sticky clients are spread over this many buckets; each color owns a slice of them.
pub const BUCKETS: u32 = 10_000;
const DEFAULT_LOG_FILTER: &str = "info";

/// Variables with a fixed meaning; a color whose variable would collide with one is rejected.
const RESERVED: &[&str] = &[
    "COLORS",
    "LISTEN",
    "CONNECT_TIMEOUT",
    "REQUEST_TIMEOUT",
    "DRAIN_TIMEOUT",
    "REQUEST_BUFFER",
    "RESPONSE_BUFFER",
    "RESPONSE_SPILL",
    "TMPDIR",
    "BODY_TIMEOUT",
    "LOG_FORMAT",
    "RUST_LOG",
    "ADMIN_LISTEN",
    "ACCESS_LOG",
    "RESPONSE_HEADERS",
    "DNS_REFRESH",
    "RESOLVER",
    "STICKY",
    "STICKY_COOKIE",
    "OVERRIDE_HEADER",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    /// Bytes of a request body read before an upstream is picked; 0 streams at once.
    pub request_buffer: u64,
    /// Bytes of a response body read from the upstream ahead of the client; 0 streams.
    pub response_buffer: u64,
    /// Bytes of response bodies kept on disk for slow clients, all responses together; 0 off.
    pub response_spill: u64,
    /// Where those bytes go (`TMPDIR`).
    pub spill_dir: PathBuf,
    /// Time for the buffered part of a request body to arrive.
    pub body_timeout: Duration,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// `None` when ADMIN_LISTEN=off.
    pub admin_listen: Option<SocketAddr>,
    pub access_log: bool,
    /// Adds `Color` and `Colorproxy-Config` to responses.
    pub response_headers: bool,
    pub dns_refresh: Duration,
    /// A nameserver to ask instead of the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    pub sticky: Sticky,
    pub sticky_cookie: String,
    /// A request header that may force a color (lowercase), e.g. `x-color`.
    pub override_header: Option<String>,
    /// Configured colors in `COLORS` order; colors whose URL variable is unset are absent.
    pub colors: Vec<Color>,
    /// The canary guard of ramped colors, and the peers it tells of a trip.
    pub guard: guard::Settings,
    /// Variables that look like a mistake (see [`typos`]): a typo (`GREN_WEIGHT`) would
    /// otherwise silently leave the default weight in place.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Color {
    /// Lowercase name, as sent in the `Color` header.
    pub name: String,
    pub upstream: Upstream,
    pub weight: u32,
    pub discovery: Discovery,
    /// The path prefix this color serves (`/` for every path), without a trailing slash.
    pub prefix: String,
    /// The color's share of its route over time; its weight is then not used.
    pub ramp: Option<Ramp>,
}

/// How a client keeps its color across requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A new pick for every request.
    Off,
    /// A random bucket stored in a cookie.
    Cookie,
    /// A bucket from a hash of this request header (lowercase name).
    Header(String),
}

impl Sticky {
    pub fn describe(&self) -> String {
        match self {
            Sticky::Off => "off".into(),
            Sticky::Cookie => "cookie".into(),
            Sticky::Header(h) => format!("header:{h}"),
        }
    }
}

/// How a color's host becomes endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// An IP address is used as it is; a name is tried as a Swarm service (`tasks.<name>`, one
    /// address per task), then as a plain DNS name.
    Auto,
    /// `tasks.<name>` only.
    Tasks,
    /// The name's own addresses only (docker compose, plain DNS).
    Dns,
    /// No discovery: each new connection resolves the name, e.g. to a Swarm virtual IP.
    Off,
}

impl Discovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Discovery::Auto => "auto",
            Discovery::Tasks => "tasks",
            Discovery::Dns => "dns",
            Discovery::Off => "off",
        }
    }
}

/// Where a color's traffic goes: `http://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as the operator wrote it, for tables and logs.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `host:port`, ready for request URIs.
    pub authority: Authority,
    /// Path prefix without a trailing slash; empty when the URL has no path.
    pub base_path: String,
}

/// One thing wrong with the environment, naming the variable, its value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub var: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.var, self.value, self.expected)
    }
}

/// Every problem found in the environment, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The fixed-name settings; envy maps `CONNECT_TIMEOUT` to `connect_timeout`. Values stay
/// strings here so that each can be validated on its own and reported with its name.
#[derive(Debug, Default, Deserialize)]
struct Settings {
    colors: Option<String>,
    listen: Option<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    drain_timeout: Option<String>,
    request_buffer: Option<String>,
    response_buffer: Option<String>,
    response_spill: Option<String>,
    tmpdir: Option<String>,
    body_timeout: Option<String>,
    log_format: Option<String>,
    rust_log: Option<String>,
    admin_listen: Option<String>,
    access_log: Option<String>,
    response_headers: Option<String>,
    dns_refresh: Option<String>,
    resolver: Option<String>,
    sticky: Option<String>,
    sticky_cookie: Option<String>,
    override_header: Option<String>,
}

impl Upstream {
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl Config {
    /// Reads the process environment. Variables that are not valid Unicode are reported by
    /// name rather than skipped.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        let mut problems = Vec::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(n), Ok(v)) => vars.push((n, v)),
                (Ok(n), Err(v)) if is_relevant(&n) => problems.push(Problem {
                    var: n,
                    value: v.to_string_lossy().into_owned(),
                    expected: "expected valid UTF-8".into(),
                }),
                _ => {}
            }
        }
        let parsed = Config::from_vars(vars);
        if problems.is_empty() {
            return parsed;
        }
        if let Err(ConfigError(more)) = parsed {
            problems.extend(more);
        }
        Err(ConfigError(problems))
    }

    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Every field is an optional string, so deserialising cannot fail on values.
        let settings: Settings =
            envy::from_iter(env.iter().map(|(k, v)| (k.clone(), v.clone()))).unwrap_or_default();
        let mut problems = Vec::new();

        let listen = address("LISTEN", &settings.listen, DEFAULT_LISTEN, &mut problems);
        let admin_listen = match settings.admin_listen.as_deref().map(str::trim) {
            Some("off") => None,
            _ => Some(address(
                "ADMIN_LISTEN",
                &settings.admin_listen,
                DEFAULT_ADMIN_LISTEN,
                &mut problems,
            )),
        };
        if admin_listen == Some(listen) && listen.port() != 0 {
            problems.push(problem(
                "ADMIN_LISTEN",
                &listen.to_string(),
                "expected an address other than LISTEN: the admin endpoints never share the proxy port",
            ));
        }
        let access_log = switch("ACCESS_LOG", &settings.access_log, true, &mut problems);
        let response_headers = switch(
            "RESPONSE_HEADERS",
            &settings.response_headers,
            false,
            &mut problems,
        );
        let connect_timeout = duration(
            "CONNECT_TIMEOUT",
            &settings.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            false,
            &mut problems,
        );
        let request_timeout = duration(
            "REQUEST_TIMEOUT",
            &settings.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
            false,
            &mut problems,
        );
        let drain_timeout = duration(
            "DRAIN_TIMEOUT",
            &settings.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
            true,
            &mut problems,
        );
        let request_buffer = size(
            "REQUEST_BUFFER",
            &settings.request_buffer,
            DEFAULT_REQUEST_BUFFER,
            &mut problems,
        );
        let response_buffer = size(
            "RESPONSE_BUFFER",
            &settings.response_buffer,
            DEFAULT_RESPONSE_BUFFER,
            &mut problems,
        );
        let response_spill = size_up_to(
            "RESPONSE_SPILL",
            &settings.response_spill,
            DEFAULT_RESPONSE_SPILL,
            (MAX_SPILL, "1TiB"),
            &mut problems,
        );
        let spill_dir = match settings.tmpdir.as_deref().map(str::trim) {
            None | Some("") => PathBuf::from(DEFAULT_SPILL_DIR),
            Some(dir) if Path::new(dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => {
                problems.push(problem(
                    "TMPDIR",
                    dir,
                    "expected an absolute path such as /tmp",
                ));
                PathBuf::from(DEFAULT_SPILL_DIR)
            }
        };
        let body_timeout = duration(
            "BODY_TIMEOUT",
            &settings.body_timeout,
            DEFAULT_BODY_TIMEOUT,
            false,
            &mut problems,
        );
        let dns_refresh = duration(
            "DNS_REFRESH",
            &settings.dns_refresh,
            DEFAULT_DNS_REFRESH,
            false,
            &mut problems,
        );
        let resolver = settings.resolver.as_ref().and_then(|v| {
            let v = v.trim();
            // A bare IP means the standard DNS port.
            let parsed = v.parse::<SocketAddr>().or_else(|_| {
                v.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(problem(
                        "RESOLVER",
                        v,
                        "expected a nameserver address ip[:port], e.g. 127.0.0.11:53",
                    ));
                    None
                }
            }
        });
        let sticky = match settings.sticky.as_deref().map(str::trim) {
            None | Some("off") => Sticky::Off,
            Some("cookie") => Sticky::Cookie,
            Some(v) => match v.strip_prefix("header:").map(str::trim) {
                Some(name) if is_header_name(name) => Sticky::Header(name.to_ascii_lowercase()),
                _ => {
                    problems.push(problem(
                        "STICKY",
                        v,
                        "expected off, cookie or header:<Name> (e.g. header:X-User-Id)",
                    ));
                    Sticky::Off
                }
            },
        };
        let sticky_cookie = match settings.sticky_cookie.as_deref().map(str::trim) {
            None => DEFAULT_STICKY_COOKIE.to_string(),
            Some(v) if !v.is_empty() && v.bytes().all(is_cookie_name_byte) => v.to_string(),
            Some(v) => {
                problems.push(problem(
                    "STICKY_COOKIE",
                    v,
                    "expected a cookie name of letters, digits and !#$%&'*+-.^_`|~",
                ));
                DEFAULT_STICKY_COOKIE.to_string()
            }
        };
        let override_header = match settings.override_header.as_deref().map(str::trim) {
            None | Some("off") => None,
            Some(v) if is_header_name(v) => Some(v.to_ascii_lowercase()),
            Some(v) => {
                problems.push(problem(
                    "OVERRIDE_HEADER",
                    v,
                    "expected a header name such as X-Color, or off",
                ));
                None
            }
        };
        let log_format = match settings.log_format.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                let v = settings.log_format.as_deref().unwrap_or_default();
                problems.push(problem("LOG_FORMAT", v, "expected text or json"));
                LogFormat::Text
            }
        };
        let log_filter = match &settings.rust_log {
            None => DEFAULT_LOG_FILTER.to_string(),
            Some(v) => {
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(v) {
                    problems.push(problem(
                        "RUST_LOG",
                        v,
                        &format!("expected a log filter such as info or colorproxy=debug ({e})"),
                    ));
                }
                v.clone()
            }
        };

        let names = color_names(settings.colors.as_deref(), &mut problems);
        let guard = guard::Settings::parse(&env, &mut |var, value, expected| {
            problems.push(problem(var, value, expected))
        });
        if guard.peers.is_some() && admin_listen.is_none() {
            problems.push(problem(
                "PEERS",
                env.get("PEERS").map_or("", |v| v.as_str()),
                "expected ADMIN_LISTEN to be on: replicas tell each other of a trip on their admin port",
            ));
        }
        let mut ramp_warnings = Vec::new();
        let mut colors = Vec::new();
        for name in &names {
            let var = name.to_uppercase();
            let weight_var = format!("{var}_WEIGHT");
            let weight = match env.get(&weight_var) {
                None => 1,
                Some(v) => v.trim().parse::<u32>().unwrap_or_else(|_| {
                    problems.push(problem(
                        &weight_var,
                        v,
                        "expected a non-negative integer weight, e.g. 4",
                    ));
                    1
                }),
            };
            let discovery_var = format!("{var}_DISCOVERY");
            let discovery = match env.get(&discovery_var).map(|v| v.trim()) {
                None | Some("auto") => Discovery::Auto,
                Some("tasks") => Discovery::Tasks,
                Some("dns") => Discovery::Dns,
                Some("off") => Discovery::Off,
                Some(v) => {
                    problems.push(problem(
                        &discovery_var,
                        v,
                        "expected auto, tasks, dns or off",
                    ));
                    Discovery::Auto
                }
            };
            let prefix_var = format!("{var}_PREFIX");
            let prefix = match env.get(&prefix_var).map(|v| v.trim()) {
                None => "/".to_string(),
                Some(v) if v.starts_with('/') && !v.contains(['?', '#', ' ']) => {
                    let trimmed = v.trim_end_matches('/');
                    if trimmed.is_empty() {
                        "/".to_string()
                    } else {
                        trimmed.to_string()
                    }
                }
                Some(v) => {
                    problems.push(problem(
                        &prefix_var,
                        v,
                        "expected a path prefix starting with /, e.g. /films",
                    ));
                    "/".to_string()
                }
            };
            let Some(url) = env.get(&var) else { continue };
            let ramp = ramp::parse(
                &env,
                &var,
                &mut |var, value, expected| problems.push(problem(var, value, expected)),
                &mut ramp_warnings,
            );
            match parse_upstream(url) {
                Ok(upstream) => {
                    if upstream.is_ip() && matches!(discovery, Discovery::Tasks | Discovery::Dns) {
                        problems.push(problem(
                            &discovery_var,
                            discovery.as_str(),
                            &format!("expected auto or off: {var} names an IP address, there is nothing to discover"),
                        ));
                    }
                    colors.push(Color {
                        name: name.clone(),
                        upstream,
                        weight,
                        discovery,
                        prefix,
                        ramp,
                    })
                }
                Err(expected) => problems.push(problem(&var, url, &expected)),
            }
        }
        check_ramps(&colors, &env, &mut problems, &mut ramp_warnings);
        for (prefix, group) in routes(&colors) {
            // A ramped route's shares come from its ramp (checked above).
            if group.iter().any(|&i| colors[i].ramp.is_some()) {
                continue;
            }
            if group.iter().all(|&i| colors[i].weight == 0) {
                let vars: Vec<String> = group
                    .iter()
                    .map(|&i| format!("{}_WEIGHT", colors[i].name.to_uppercase()))
                    .collect();
                let scope = if prefix == "/" {
                    "expected at least one configured color with a weight above 0".to_string()
                } else {
                    format!(
                        "expected at least one color with a weight above 0 on the route {prefix}"
                    )
                };
                problems.push(problem(&vars.join(","), "0", &scope));
            }
        }

        let configured: HashSet<&str> = colors.iter().map(|c| c.name.as_str()).collect();
        let mut warnings = ramp_warnings;
        if colors.iter().all(|c| c.ramp.is_none()) {
            for var in guard::VARIABLES.iter().filter(|v| env.contains_key(**v)) {
                warnings.push(format!(
                    "{var} is set but no color is ramped (<COLOR>_RAMP); it is ignored"
                ));
            }
        }
        let settings: Vec<&str> = RESERVED.iter().chain(guard::VARIABLES).copied().collect();
        let suffixes: Vec<&str> = color_suffixes().collect();
        warnings.extend(typos::warnings(
            &env,
            &typos::Known {
                colors: &names,
                configured: &configured,
                settings: &settings,
                suffixes: &suffixes,
            },
        ));

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            listen,
            connect_timeout,
            request_timeout,
            drain_timeout,
            request_buffer,
            response_buffer,
            response_spill,
            spill_dir,
            body_timeout,
            log_format,
            log_filter,
            admin_listen,
            access_log,
            response_headers,
            dns_refresh,
            resolver,
            sticky,
            sticky_cookie,
            override_header,
            colors,
            guard,
            warnings,
        })
    }

    /// The routes: each distinct prefix with the positions of its colors, in COLORS order.
    pub fn routes(&self) -> Vec<(&str, Vec<usize>)> {
        routes(&self.colors)
    }

    /// The effective routing table, as `colorproxy check` prints it and startup logs it:
    /// grouped by route, shares within each route.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if self.colors.is_empty() {
            out.push_str("no color is configured: every request will get 503\n");
            return out;
        }
        let width =
            |f: fn(&Color) -> usize, min| self.colors.iter().map(f).max().unwrap_or(0).max(min);
        let wr = width(|c| c.prefix.len(), 5);
        let wn = width(|c| c.name.len(), 5);
        let wu = width(|c| c.upstream.url.len(), 8);
        let _ = writeln!(
            out,
            "{:wr$}  {:wn$}  {:wu$}  {:>6}  {:>6}",
            "ROUTE", "COLOR", "UPSTREAM", "WEIGHT", "SHARE"
        );
        for (_, group) in self.routes() {
            for i in group {
                let c = &self.colors[i];
                let weight = match c.ramp {
                    Some(_) => "ramp".to_string(),
                    None => c.weight.to_string(),
                };
                let _ = writeln!(
                    out,
                    "{:wr$}  {:wn$}  {:wu$}  {:>6}  {:>5.1}%",
                    c.prefix,
                    c.name,
                    c.upstream.url,
                    weight,
                    self.share(c)
                );
            }
        }
        out
    }

    /// A short, stable hash of what decides where requests go (colors, upstreams, weights).
    /// Replicas started from the same routing environment show the same hash, so an operator
    /// can see when a rolling update has converged.
    pub fn config_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for c in &self.colors {
            let u = &c.upstream;
            hasher.update(format!(
                "{}\t{}\t{}\t{}\t{}\n",
                c.name, u.authority, u.base_path, c.weight, c.prefix
            ));
            // Only with a ramp, so that the hash of a configuration without one is unchanged.
            if let Some(r) = &c.ramp {
                hasher.update(format!("ramp {}\t{}\n", c.name, r.describe()));
            }
        }
        // A new ramp or new guard settings make a new hash, which is what ends a trip's latch.
        if self.colors.iter().any(|c| c.ramp.is_some()) {
            hasher.update(format!("{}\n", self.guard.describe()));
        }
        hasher.update(format!(
            "sticky {}\noverride {:?}\n",
            self.sticky.describe(),
            self.override_header
        ));
        hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The effective configuration as JSON: what `/config` serves and `check --json` prints.
    pub fn view(&self) -> serde_json::Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let routes: Vec<_> = self
            .routes()
            .into_iter()
            .map(|(prefix, group)| {
                let colors: Vec<_> = group
                    .iter()
                    .map(|&i| {
                        let c = &self.colors[i];
                        let mut color = serde_json::json!({
                            "name": c.name,
                            "upstream": c.upstream.url,
                            "weight": c.weight,
                            "share": (self.share(c) * 10.0).round() / 10.0,
                            "discovery": c.discovery.as_str(),
                        });
                        if let Some(r) = &c.ramp {
                            color["ramp"] = r.view();
                        }
                        color
                    })
                    .collect();
                serde_json::json!({ "prefix": prefix, "colors": colors })
            })
            .collect();
        serde_json::json!({
            "config_hash": self.config_hash(),
            "routes": routes,
            "sticky": self.sticky.describe(),
            "sticky_cookie": self.sticky_cookie,
            "override_header": self.override_header,
            "dns_refresh": d(self.dns_refresh),
            "resolver": self.resolver.map(|a| a.to_string()),
            "listen": self.listen.to_string(),
            "admin_listen": self.admin_listen.map(|a| a.to_string()),
            "connect_timeout": d(self.connect_timeout),
            "request_timeout": d(self.request_timeout),
            "drain_timeout": d(self.drain_timeout),
            "request_buffer": self.request_buffer,
            "response_buffer": self.response_buffer,
            "response_spill": self.response_spill,
            "spill_dir": self.spill_dir.display().to_string(),
            "body_timeout": d(self.body_timeout),
            "access_log": self.access_log,
            "response_headers": self.response_headers,
            "guard": self.guard.view(),
        })
    }

    /// The percentage of its route's new requests a color receives now, by weight or by the
    /// ramp schedule.
    pub fn share(&self, color: &Color) -> f64 {
        self.share_at(color, SystemTime::now())
    }

    /// The percentage of its route's new requests a color receives at `now`: a ramped color's
    /// share by its schedule, the rest of the route split among its other colors by weight.
    pub fn share_at(&self, color: &Color, now: SystemTime) -> f64 {
        let route = || self.colors.iter().filter(|c| c.prefix == color.prefix);
        if let Some(ramp) = &color.ramp {
            return f64::from(ramp.share_at(now));
        }
        let rest = route()
            .find_map(|c| c.ramp.as_ref())
            .map_or(100.0, |r| 100.0 - f64::from(r.share_at(now)));
        let total: u64 = route()
            .filter(|c| c.ramp.is_none())
            .map(|c| u64::from(c.weight))
            .sum();
        if total == 0 {
            return 0.0;
        }
        rest * f64::from(color.weight) / total as f64
    }

    /// Each ramp's schedule and the guard, as `colorproxy check` prints them below the table;
    /// empty without a ramp.
    pub fn schedules(&self, now: SystemTime) -> String {
        let mut out = String::new();
        for c in &self.colors {
            if let Some(r) = &c.ramp {
                out.push_str(&format!(
                    "ramp {} on {}: {} steps every {}\n",
                    c.name,
                    c.prefix,
                    r.steps.len(),
                    humantime::format_duration(r.interval)
                ));
                out.push_str(&r.schedule(now));
            }
        }
        if !out.is_empty() {
            out.push_str(&self.guard.describe());
            out.push('\n');
        }
        out
    }
}

/// The per-color variable suffixes: `_WEIGHT`, `_PREFIX`..., and the ramp's.
fn color_suffixes() -> impl Iterator<Item = &'static str> {
    COLOR_SUFFIXES.iter().chain(ramp::SUFFIXES).copied()
}

/// A ramped color shares its route with stable colors, alone: one ramped color per route,
/// and at least one other color with a weight above 0 to take the rest.
fn check_ramps(
    colors: &[Color],
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    for (prefix, group) in routes(colors) {
        let ramped: Vec<&Color> = group
            .iter()
            .map(|&i| &colors[i])
            .filter(|c| c.ramp.is_some())
            .collect();
        let Some(canary) = ramped.first() else {
            continue;
        };
        let var = |c: &Color, suffix: &str| format!("{}{suffix}", c.name.to_uppercase());
        if ramped.len() > 1 {
            let vars: Vec<String> = ramped.iter().map(|c| var(c, "_RAMP")).collect();
            problems.push(problem(
                &vars.join(","),
                &ramped
                    .iter()
                    .map(|c| env[&var(c, "_RAMP")].as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                &format!(
                    "expected one ramped color on the route {prefix}: the others share what it leaves"
                ),
            ));
            continue;
        }
        let stable: Vec<&Color> = group
            .iter()
            .map(|&i| &colors[i])
            .filter(|c| c.ramp.is_none())
            .collect();
        let ramp_var = var(canary, "_RAMP");
        if stable.is_empty() {
            problems.push(problem(
                &ramp_var,
                &env[&ramp_var],
                &format!(
                    "expected another color on the route {prefix} to take the rest of the traffic (e.g. BLUE=http://myapp-v1:8080)"
                ),
            ));
        } else if stable.iter().all(|c| c.weight == 0) {
            let vars: Vec<String> = stable.iter().map(|c| var(c, "_WEIGHT")).collect();
            problems.push(problem(
                &vars.join(","),
                "0",
                &format!(
                    "expected a color other than the ramped {} with a weight above 0 on the route {prefix}, to take the rest of the traffic",
                    canary.name
                ),
            ));
        }
        for c in ramped {
            let weight_var = var(c, "_WEIGHT");
            if env.contains_key(&weight_var) {
                warnings.push(format!(
                    "{weight_var} is not used: {} is ramped by {}, which sets its share",
                    c.name,
                    var(c, "_RAMP")
                ));
            }
        }
    }
}

/// Groups colors by prefix: (prefix, positions), prefixes in order of first appearance.
fn routes(colors: &[Color]) -> Vec<(&str, Vec<usize>)> {
    let mut routes: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, c) in colors.iter().enumerate() {
        match routes.iter_mut().find(|(p, _)| *p == c.prefix) {
            Some((_, group)) => group.push(i),
            None => routes.push((&c.prefix, vec![i])),
        }
    }
    routes
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// RFC 6265 cookie-name: an RFC 9110 token.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn problem(var: &str, value: &str, expected: &str) -> Problem {
    Problem {
        var: var.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Variables whose unreadable value must be reported rather than ignored.
/// (Color variables are upper-case names, so all such names count.)
fn is_relevant(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn address(
    var: &str,
    value: &Option<String>,
    default: &str,
    problems: &mut Vec<Problem>,
) -> SocketAddr {
    let default = default.parse().expect("default address");
    let Some(v) = value else { return default };
    v.trim().parse().unwrap_or_else(|_| {
        problems.push(problem(
            var,
            v,
            "expected ip:port, e.g. 0.0.0.0:8080 or [::]:8080",
        ));
        default
    })
}

fn switch(var: &str, value: &Option<String>, default: bool, problems: &mut Vec<Problem>) -> bool {
    match value
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None => default,
        Some("on" | "true" | "1" | "yes") => true,
        Some("off" | "false" | "0" | "no") => false,
        Some(_) => {
            problems.push(problem(
                var,
                value.as_deref().unwrap_or_default(),
                "expected on or off",
            ));
            default
        }
    }
}

fn duration(
    var: &str,
    value: &Option<String>,
    default: Duration,
    zero_ok: bool,
    problems: &mut Vec<Problem>,
) -> Duration {
    let Some(v) = value else { return default };
    match humantime::parse_duration(v.trim()) {
        Ok(d) if zero_ok || !d.is_zero() => d,
        Ok(_) => {
            problems.push(problem(
                var,
                v,
                "expected a duration above zero, e.g. 250ms or 5s",
            ));
            default
        }
        Err(e) => {
            problems.push(problem(
                var,
                v,
                &format!("expected a duration such as 250ms, 5s or 1m ({e})"),
            ));
            default
        }
    }
}

/// Beyond this, one body alone could hold a large part of the process-wide buffer budget.
const MAX_BUFFER: u64 = 64 << 20;

/// Disk is cheaper than memory, but a proxy should not fill it unasked.
const MAX_SPILL: u64 = 1 << 40;

fn size(var: &str, value: &Option<String>, default: u64, problems: &mut Vec<Problem>) -> u64 {
    size_up_to(var, value, default, (MAX_BUFFER, "64MiB"), problems)
}

fn size_up_to(
    var: &str,
    value: &Option<String>,
    default: u64,
    max: (u64, &str),
    problems: &mut Vec<Problem>,
) -> u64 {
    let Some(v) = value else { return default };
    match v.trim().parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() <= max.0 => b.as_u64(),
        Ok(_) => {
            problems.push(problem(var, v, &format!("expected at most {}", max.1)));
            default
        }
        Err(e) => {
            problems.push(problem(
                var,
                v,
                &format!("expected a size such as 0, 64KiB or 1MiB ({e})"),
            ));
            default
        }
    }
}

fn color_names(colors: Option<&str>, problems: &mut Vec<Problem>) -> Vec<String> {
    let Some(raw) = colors else {
        return DEFAULT_COLORS.iter().map(|s| s.to_string()).collect();
    };
    let mut names: Vec<String> = Vec::new();
    let mut bad = Vec::new();
    for part in raw.split(',') {
        let name = part.trim().to_lowercase();
        let why = if name.is_empty() {
            Some("an empty name".to_string())
        } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Some(format!("{name:?} (only letters, digits and _)"))
        } else if names.contains(&name) {
            Some(format!("{name:?} twice"))
        } else if RESERVED.contains(&name.to_uppercase().as_str())
            || guard::VARIABLES.contains(&name.to_uppercase().as_str())
        {
            Some(format!(
                "{name:?} (its variable {} is a setting)",
                name.to_uppercase()
            ))
        } else {
            None
        };
        match why {
            Some(w) => bad.push(w),
            None => names.push(name),
        }
    }
    // A color named `x_weight` would read the same variable as the weight of color `x`.
    for n in &names {
        for suffix in color_suffixes() {
            if let Some(base) = n.strip_suffix(&suffix.to_lowercase())
                && names.iter().any(|m| m == base)
            {
                bad.push(format!(
                    "{n:?} (its variable is {} of {base})",
                    &suffix[1..]
                ));
            }
        }
    }
    if !bad.is_empty() {
        problems.push(problem(
            "COLORS",
            raw,
            &format!(
                "expected comma-separated color names of letters, digits and _; got {}",
                bad.join(", ")
            ),
        ));
    }
    names
}

/// Parses `http://host[:port][/base]`; on failure returns what was expected.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    const SHAPE: &str = "http://host[:port][/base/path]";
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "expected an upstream URL {SHAPE}, got an empty value"
        ));
    }
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| format!("expected an upstream URL {SHAPE} ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "expected {SHAPE}: https upstreams are not supported (colorproxy talks plain HTTP inside the Swarm network)"
            ));
        }
        Some(other) => return Err(format!("expected {SHAPE}, got scheme {other:?}")),
        None => return Err(format!("expected {SHAPE}: the scheme http:// is missing")),
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("expected {SHAPE}: the host is missing"));
    };
    if auth.as_str().contains('@') {
        return Err(format!("expected {SHAPE}: user:password@ is not supported"));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("expected {SHAPE}: the host is missing"));
    }
    let after_host = &auth.as_str()[auth.as_str().rfind(']').unwrap_or(0)..];
    if after_host.contains(':') && auth.port_u16().is_none() {
        return Err(format!(
            "expected {SHAPE}: the port must be a number from 1 to 65535"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("expected {SHAPE}: a query string is not allowed"));
    }
    let port = auth.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(format!("expected {SHAPE}: port 0 is not a valid port"));
    }
    let authority: Authority = format!("{}:{port}", auth.host())
        .parse()
        .map_err(|e| format!("expected {SHAPE} ({e})"))?;
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Upstream {
        url: trimmed.to_string(),
        host: host.to_string(),
        port,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn problems(vars: &[(&str, &str)]) -> Vec<Problem> {
        parse(vars).expect_err("configuration should be rejected").0
    }

    #[test]
    fn defaults_with_no_variables() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_secs(60));
        assert!(c.drain_timeout < Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.colors.is_empty());
    }

    #[test]
    fn blue_and_green_with_weights() {
        let c = parse(&[
            ("BLUE", "http://myapp-v1:8080"),
            ("GREEN", "http://myapp-v2:8080/"),
            ("GREEN_WEIGHT", "1"),
            ("BLUE_WEIGHT", "4"),
        ])
        .unwrap();
        let names: Vec<_> = c
            .colors
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect();
        assert_eq!(names, [("blue", 4), ("green", 1)]);
        assert_eq!(c.colors[0].upstream.authority.as_str(), "myapp-v1:8080");
        assert_eq!(c.colors[1].upstream.base_path, "");
        assert_eq!(c.share(&c.colors[0]), 80.0);
        assert!(c.table().contains("80.0%"), "{}", c.table());
    }

    #[test]
    fn unset_color_is_absent_and_weight_defaults_to_one() {
        let c = parse(&[("GREEN", "http://v2")]).unwrap();
        assert_eq!(c.colors.len(), 1);
        assert_eq!(c.colors[0].name, "green");
        assert_eq!(c.colors[0].weight, 1);
        assert_eq!(c.colors[0].upstream.port, 80);
    }

    #[test]
    fn colors_declares_order_case_insensitively() {
        let c = parse(&[
            ("COLORS", " Canary, blue "),
            ("BLUE", "http://a:1"),
            ("CANARY", "http://b:2/api/"),
        ])
        .unwrap();
        let names: Vec<_> = c.colors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["canary", "blue"]);
        assert_eq!(c.colors[0].upstream.base_path, "/api");
    }

    #[test]
    fn durations_and_listen() {
        let c = parse(&[
            ("LISTEN", "127.0.0.1:0"),
            ("CONNECT_TIMEOUT", "250ms"),
            ("REQUEST_TIMEOUT", "2m"),
            ("DRAIN_TIMEOUT", "0s"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.request_timeout, Duration::from_secs(120));
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn buffer_sizes() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.request_buffer, 1 << 20);
        assert_eq!(c.response_buffer, 1 << 20);
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        let c = parse(&[
            ("REQUEST_BUFFER", "0"),
            ("RESPONSE_BUFFER", "64KiB"),
            ("BODY_TIMEOUT", "5s"),
        ])
        .unwrap();
        assert_eq!((c.request_buffer, c.response_buffer), (0, 64 << 10));
        assert_eq!(c.body_timeout, Duration::from_secs(5));
        let p = problems(&[
            ("REQUEST_BUFFER", "lots"),
            ("RESPONSE_BUFFER", "1GiB"),
            ("BODY_TIMEOUT", "0s"),
        ]);
        let vars: Vec<&str> = p.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(vars, ["REQUEST_BUFFER", "RESPONSE_BUFFER", "BODY_TIMEOUT"]);
    }

    #[test]
    fn the_disk_for_slow_clients_defaults_to_1gib_in_tmp() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.response_spill, 1 << 30);
        assert_eq!(c.spill_dir, PathBuf::from("/tmp"));
        let c = parse(&[("RESPONSE_SPILL", "0"), ("TMPDIR", "/var/cache/proxy")]).unwrap();
        assert_eq!(c.response_spill, 0);
        assert_eq!(c.spill_dir, PathBuf::from("/var/cache/proxy"));
        let c = parse(&[("RESPONSE_SPILL", "20GiB")]).unwrap();
        assert_eq!(c.response_spill, 20 << 30);
        let p = problems(&[("RESPONSE_SPILL", "2TiB"), ("TMPDIR", "tmp")]);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.var.as_str(), p.expected.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("RESPONSE_SPILL", "expected at most 1TiB"),
                ("TMPDIR", "expected an absolute path such as /tmp")
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = problems(&[
            ("BLUE", "ftp://x"),
            ("BLUE_WEIGHT", "-1"),
            ("GREEN", "myapp-v2:8080"),
            ("GREEN_WEIGHT", "1.5"),
            ("CONNECT_TIMEOUT", "5"),
            ("REQUEST_TIMEOUT", "soon"),
            ("DRAIN_TIMEOUT", "-3s"),
            ("LISTEN", "8080"),
            ("LOG_FORMAT", "xml"),
        ]);
        let vars: Vec<_> = p.iter().map(|p| p.var.as_str()).collect();
        for v in [
            "BLUE",
            "BLUE_WEIGHT",
            "GREEN",
            "GREEN_WEIGHT",
            "CONNECT_TIMEOUT",
            "REQUEST_TIMEOUT",
            "DRAIN_TIMEOUT",
            "LISTEN",
            "LOG_FORMAT",
        ] {
            assert!(vars.contains(&v), "{v} missing from {vars:?}");
        }
        let weight = p.iter().find(|p| p.var == "GREEN_WEIGHT").unwrap();
        assert_eq!(weight.value, "1.5");
        assert!(weight.to_string().contains("non-negative integer"));
    }

    #[test]
    fn bad_urls_say_what_was_expected() {
        for (url, needle) in [
            ("", "empty"),
            ("http://", "host"),
            ("https://x", "https"),
            ("x:80", "http://"),
            ("http://x:notaport", "port must be a number"),
            ("http://x:", "port must be a number"),
            ("http://x:70000", "http://host"),
            ("http://u:p@x", "user"),
            ("http://x/?a=1", "query"),
            ("http://x:0", "port 0"),
        ] {
            let err = parse_upstream(url).expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn upstream_forms() {
        let u = parse_upstream("http://10.0.0.7").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.7", 80));
        let u = parse_upstream("http://[::1]:9000/base//").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority.as_str(), "[::1]:9000");
        assert_eq!(u.base_path, "/base");
    }

    #[test]
    fn all_weights_zero_is_rejected() {
        let p = problems(&[
            ("BLUE", "http://a"),
            ("BLUE_WEIGHT", "0"),
            ("GREEN", "http://b"),
            ("GREEN_WEIGHT", "0"),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].var, "BLUE_WEIGHT,GREEN_WEIGHT");
        // One zero weight is fine: the color stays configured without new traffic.
        let c = parse(&[
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("GREEN_WEIGHT", "0"),
        ])
        .unwrap();
        assert_eq!(c.share(&c.colors[1]), 0.0);
    }

    #[test]
    fn bad_color_names() {
        for colors in [
            "blue,,green",
            "blue,gr-een",
            "blue,BLUE",
            "listen",
            "x,x_weight",
            "é",
        ] {
            let p = problems(&[("COLORS", colors)]);
            assert_eq!(p[0].var, "COLORS", "{colors}");
            assert_eq!(p[0].value, colors);
        }
    }

    #[test]
    fn stray_weights_warn() {
        let c = parse(&[
            ("BLUE", "http://a"),
            ("GREN_WEIGHT", "3"),
            ("GREEN_WEIGHT", "2"),
        ])
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let gren = c.warnings.iter().find(|w| w.starts_with("GREN_WEIGHT"));
        assert!(
            gren.is_some_and(|w| w.ends_with("Did you mean GREEN_WEIGHT?")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("GREEN_WEIGHT is set but GREEN is not")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn likely_mistakes_warn() {
        let c = parse(&[
            ("COLORS", "blue,green,canary"),
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("BLEU_PREFIX", "/x"),
            ("GREEN_WIEGHT", "3"),
            ("CONECT_TIMEOUT", "2s"),
            // A color's URL and weight, but the color is not in COLORS.
            ("EXTRA", "http://c"),
            ("EXTRA_WEIGHT", "2"),
        ])
        .unwrap();
        let w = &c.warnings;
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.starts_with("BLEU_PREFIX") && w.ends_with("Did you mean BLUE_PREFIX?")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.starts_with("GREEN_WIEGHT") && w.ends_with("Did you mean GREEN_WEIGHT?")), "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.starts_with("CONECT_TIMEOUT")
                    && w.ends_with("Did you mean CONNECT_TIMEOUT?")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.starts_with("EXTRA_WEIGHT and EXTRA are set but extra is not in COLORS")), "{w:?}");
    }

    /// Other software's variables, as found in real environments (a developer's shell, a
    /// container), are none of colorproxy's business.
    #[test]
    fn other_software_s_variables_do_not_warn() {
        let c = parse(&[
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("_PYENV_INSTALL_PREFIX", "/root/.pyenv"),
            ("NPM_CONFIG_PREFIX", "/usr/local"),
            ("PYTHON_PREFIX", "/usr"),
            ("CONDA_PREFIX", "/opt/conda"),
            ("MESON_PREFIX", "/usr"),
            ("GPU_WEIGHT", "1"),
            ("NODE_DISCOVERY", "on"),
            ("HOME", "/root"),
            ("PATH", "/usr/bin"),
            ("HOSTNAME", "3f2a9c1d7e4b"),
            ("TERM", "xterm"),
            ("COLORTERM", "truecolor"),
            ("LS_COLORS", "di=01;34"),
            ("NO_COLOR", "1"),
            ("LANG", "C.UTF-8"),
            ("SHELL", "/bin/bash"),
            ("USER", "root"),
            ("PWD", "/"),
            ("OLDPWD", "/"),
            ("SHLVL", "1"),
            ("CARGO_HOME", "/usr/local/cargo"),
            ("RUSTUP_HOME", "/usr/local/rustup"),
            ("RUST_VERSION", "1.85"),
            ("RUST_BACKTRACE", "1"),
            ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            ("TZ", "UTC"),
            ("LC_ALL", "C"),
            ("JAVA_HOME", "/usr/lib/jvm"),
            ("GOPATH", "/go"),
            ("http_proxy", "http://proxy:3128"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost"),
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca.pem"),
        ])
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn config_hash_follows_routing_only() {
        let base = [
            ("BLUE", "http://a:8080"),
            ("GREEN", "http://b"),
            ("GREEN_WEIGHT", "1"),
        ];
        let h = parse(&base).unwrap().config_hash();
        assert_eq!(h.len(), 12);
        // Same routing, spelled differently or with other settings: same hash.
        let same = parse(&[
            ("BLUE", "http://a:8080/"),
            ("GREEN", "http://b:80"),
            ("LISTEN", "127.0.0.1:1"),
        ]);
        assert_eq!(same.unwrap().config_hash(), h);
        let reweighted = parse(&[
            ("BLUE", "http://a:8080"),
            ("GREEN", "http://b"),
            ("GREEN_WEIGHT", "2"),
        ]);
        assert_ne!(reweighted.unwrap().config_hash(), h);
        let moved = parse(&[("BLUE", "http://a:8081"), ("GREEN", "http://b")]);
        assert_ne!(moved.unwrap().config_hash(), h);
    }

    #[test]
    fn admin_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.admin_listen, Some("0.0.0.0:9901".parse().unwrap()));
        assert!(c.access_log && !c.response_headers);
        let c = parse(&[
            ("ADMIN_LISTEN", "off"),
            ("ACCESS_LOG", "off"),
            ("RESPONSE_HEADERS", "on"),
        ])
        .unwrap();
        assert_eq!(c.admin_listen, None);
        assert!(!c.access_log && c.response_headers);
        let p = problems(&[("ADMIN_LISTEN", "9901"), ("ACCESS_LOG", "maybe")]);
        assert_eq!(p.len(), 2);
        let p = problems(&[
            ("LISTEN", "127.0.0.1:9000"),
            ("ADMIN_LISTEN", "127.0.0.1:9000"),
        ]);
        assert_eq!(p[0].var, "ADMIN_LISTEN");
    }

    #[test]
    fn discovery_settings() {
        let c = parse(&[
            ("BLUE", "http://myapp-v1:8080"),
            ("GREEN", "http://10.0.0.7:8080"),
            ("BLUE_DISCOVERY", "tasks"),
            ("DNS_REFRESH", "2s"),
            ("RESOLVER", "127.0.0.11"),
        ])
        .unwrap();
        assert_eq!(c.colors[0].discovery, Discovery::Tasks);
        assert_eq!(c.colors[1].discovery, Discovery::Auto);
        assert_eq!(c.dns_refresh, Duration::from_secs(2));
        assert_eq!(c.resolver, Some("127.0.0.11:53".parse().unwrap()));
        assert_eq!(parse(&[]).unwrap().dns_refresh, DEFAULT_DNS_REFRESH);
        let p = problems(&[
            ("BLUE", "http://10.0.0.7"),
            ("BLUE_DISCOVERY", "tasks"),
            ("GREEN", "http://x"),
            ("GREEN_DISCOVERY", "consul"),
            ("RESOLVER", "dns.example"),
            ("DNS_REFRESH", "0s"),
        ]);
        let vars: Vec<_> = p.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "DNS_REFRESH",
                "RESOLVER",
                "BLUE_DISCOVERY",
                "GREEN_DISCOVERY"
            ]
        );
    }

    /// The README's environment reference names every variable colorproxy reads.
    #[test]
    fn readme_documents_every_variable() {
        let readme = include_str!("../README.md");
        let reference = &readme[readme
            .find("### Environment reference")
            .expect("the section")..];
        for var in RESERVED.iter().chain(guard::VARIABLES) {
            assert!(
                reference.contains(&format!("| `{var}` |")),
                "{var} is not in README"
            );
        }
        assert!(reference.contains("| `<COLOR>` |"));
        for suffix in color_suffixes() {
            let row = format!("| `<COLOR>{suffix}` |");
            assert!(reference.contains(&row), "{row} is not in README");
        }
    }

    const START: &str = "2026-12-01T20:00:00Z";

    #[test]
    fn a_ramp_takes_its_share_from_the_schedule() {
        let c = parse(&[
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("RED", "http://c"),
            ("COLORS", "blue,green,red"),
            ("BLUE_WEIGHT", "3"),
            ("GREEN_RAMP", "20,60"),
            ("GREEN_RAMP_INTERVAL", "1m"),
            ("GREEN_RAMP_START", START),
        ])
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let t0 = ramp::parse_rfc3339(START).unwrap();
        let shares = |t| -> Vec<f64> { c.colors.iter().map(|k| c.share_at(k, t)).collect() };
        assert_eq!(shares(t0 - Duration::from_secs(1)), [75.0, 0.0, 25.0]);
        assert_eq!(shares(t0), [60.0, 20.0, 20.0]);
        assert_eq!(shares(t0 + Duration::from_secs(3600)), [30.0, 60.0, 10.0]);
        assert_eq!(c.colors[1].ramp.as_ref().unwrap().steps, [20, 60]);
        assert!(c.table().contains("  ramp  "), "{}", c.table());
        let s = c.schedules(t0);
        assert!(s.starts_with("ramp green on /: 2 steps every 1m\n"), "{s}");
        assert!(
            s.contains("guard on: window 1m, at least 50 canary requests"),
            "{s}"
        );
        assert_eq!(c.view()["routes"][0]["colors"][1]["ramp"]["steps"][1], 60);
    }

    #[test]
    fn ramps_are_validated_per_route() {
        let start = ("GREEN_RAMP_START", START);
        // Two ramped colors on one route.
        let p = problems(&[
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("BLUE_RAMP", "1,2"),
            ("BLUE_RAMP_START", START),
            ("GREEN_RAMP", "5"),
            start,
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].var, "BLUE_RAMP,GREEN_RAMP");
        assert!(p[0].expected.contains("one ramped color"), "{p:?}");
        // Alone on its route: nobody takes the rest.
        let p = problems(&[("GREEN", "http://b"), ("GREEN_RAMP", "5,100"), start]);
        assert_eq!(p[0].var, "GREEN_RAMP");
        assert!(p[0].expected.contains("another color"), "{p:?}");
        // The others at weight 0.
        let p = problems(&[
            ("BLUE", "http://a"),
            ("BLUE_WEIGHT", "0"),
            ("GREEN", "http://b"),
            ("GREEN_RAMP", "5"),
            start,
        ]);
        assert_eq!(p[0].var, "BLUE_WEIGHT");
        // Ramps on different routes are fine, and a ramped color's weight is not used.
        let c = parse(&[
            ("COLORS", "a,b,c,d"),
            ("A", "http://a"),
            ("B", "http://b"),
            ("B_RAMP", "50"),
            ("B_RAMP_START", START),
            ("B_WEIGHT", "0"),
            ("C", "http://c"),
            ("C_PREFIX", "/c"),
            ("D", "http://d"),
            ("D_PREFIX", "/c"),
            ("D_RAMP", "1"),
            ("D_RAMP_START", START),
        ])
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("B_WEIGHT is not used"));
        // Ramp variables of a color that is not one warn like weights.
        let c = parse(&[("BLUE", "http://a"), ("GREN_RAMP", "1")]).unwrap();
        assert!(c.warnings[0].starts_with("GREN_RAMP is set but gren is not a color"));
        let c = parse(&[("BLUE", "http://a"), ("GUARD_WINDOW", "2m")]).unwrap();
        assert_eq!(
            c.warnings,
            ["GUARD_WINDOW is set but no color is ramped (<COLOR>_RAMP); it is ignored"]
        );
        // Guard and peers.
        let p = problems(&[
            ("GUARD_WINDOW", "0s"),
            ("PEERS", "tasks.proxy"),
            ("ADMIN_LISTEN", "off"),
        ]);
        let vars: Vec<_> = p.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(vars, ["GUARD_WINDOW", "PEERS"]);
        assert_eq!(problems(&[("COLORS", "guard")])[0].var, "COLORS");
    }

    #[test]
    fn a_new_ramp_is_a_new_config_hash() {
        let base = [
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("GREEN_RAMP", "5,50"),
            ("GREEN_RAMP_START", START),
        ];
        let h = parse(&base).unwrap().config_hash();
        let later = parse(&[
            ("BLUE", "http://a"),
            ("GREEN", "http://b"),
            ("GREEN_RAMP", "5,50"),
            ("GREEN_RAMP_START", "2026-12-01T21:00:00Z"),
        ]);
        assert_ne!(later.unwrap().config_hash(), h);
        let mut guarded = base.to_vec();
        guarded.push(("GUARD_MIN_REQUESTS", "10"));
        assert_ne!(parse(&guarded).unwrap().config_hash(), h);
        // Without a ramp, guard settings do not matter to routing.
        let plain = parse(&[("BLUE", "http://a")]).unwrap().config_hash();
        let guard = parse(&[("BLUE", "http://a"), ("GUARD", "off")]).unwrap();
        assert_eq!(guard.config_hash(), plain);
    }

    #[test]
    fn bad_rust_log() {
        let p = problems(&[("RUST_LOG", "info,[")]);
        assert_eq!(p[0].var, "RUST_LOG");
    }
}
