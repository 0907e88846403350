//! Turns a color's host into endpoints and keeps them fresh.
//!
//! A Swarm service name resolves to one virtual IP, and IPVS balances connections, not requests:
//! a proxy that keeps connections to the VIP pins its traffic to a few tasks. So colorproxy asks
//! Docker's DNS for `tasks.<name>` (one address per task) every DNS_REFRESH, whatever the TTL
//! says, and balances requests over the tasks itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;
use tracing::{debug, info, warn};

use crate::config::Discovery;
use crate::endpoints::{EndpointSet, authority};

/// Why a name gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist, or has no address records.
    NotFound,
    /// The question could not be answered (timeout, server failure...).
    Failed(String),
}

/// The DNS client: the system's configuration (`/etc/resolv.conf`, `/etc/hosts`), or RESOLVER.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn new(nameserver: Option<SocketAddr>) -> Result<Resolver, String> {
        let mut builder = match nameserver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                format!("cannot read the system DNS configuration (/etc/resolv.conf): {e}; set RESOLVER=ip:port")
            })?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // Answers are re-asked every refresh; a cache would hide scaling for up to a TTL.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let inner = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// A resolver for a process that resolves no names (every upstream is an IP address),
    /// when the system configuration cannot be read.
    pub fn none() -> Resolver {
        let builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![]),
            TokioRuntimeProvider::default(),
        );
        Resolver {
            inner: builder.build().expect("a resolver without nameservers"),
        }
    }

    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        // A name given as text goes through IDNA, which refuses `_`; a stack's services are
        // all named `<stack>_<service>` (tasks.demo_proxy). Docker's DNS answers such names,
        // so an ASCII name is taken as it is.
        let found = match Name::from_ascii(name) {
            Ok(ascii) => self.inner.lookup_ip(ascii).await,
            Err(_) => self.inner.lookup_ip(name).await,
        };
        match found {
            Ok(found) => {
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    Err(LookupError::NotFound)
                } else {
                    Ok(ips)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(LookupError::NotFound),
            Err(e) => Err(LookupError::Failed(e.to_string())),
        }
    }
}

/// Where endpoints came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Tasks,
    Dns,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Tasks => "tasks",
            Source::Dns => "dns",
        }
    }
}

/// Resolves `host` the way `mode` says: `tasks.<host>` first when allowed, the name itself
/// when that name does not exist.
pub async fn discover(
    resolver: &Resolver,
    host: &str,
    mode: Discovery,
) -> Result<(Vec<IpAddr>, Source), String> {
    let tasks = format!("tasks.{host}");
    let by_name = |e: LookupError| match e {
        LookupError::NotFound => format!("{host} does not resolve"),
        LookupError::Failed(why) => format!("cannot resolve {host}: {why}"),
    };
    match mode {
        Discovery::Tasks => resolver
            .lookup(&tasks)
            .await
            .map(|ips| (ips, Source::Tasks))
            .map_err(|e| by_name(e).replace(host, &tasks)),
        Discovery::Dns | Discovery::Off => resolver
            .lookup(host)
            .await
            .map(|ips| (ips, Source::Dns))
            .map_err(by_name),
        Discovery::Auto => match resolver.lookup(&tasks).await {
            Ok(ips) => Ok((ips, Source::Tasks)),
            Err(LookupError::NotFound) => match resolver.lookup(host).await {
                Ok(ips) => Ok((ips, Source::Dns)),
                Err(LookupError::NotFound) => Err(format!("neither {tasks} nor {host} resolves")),
                Err(e) => Err(by_name(e)),
            },
            // Not "no such name": falling back now could replace tasks with a VIP.
            Err(LookupError::Failed(why)) => Err(format!("cannot resolve {tasks}: {why}")),
        },
    }
}

/// One color's discovery: the host to resolve and the set to keep up to date.
pub struct Watch {
    pub color: &'static str,
    pub host: String,
    pub port: u16,
    pub mode: Discovery,
    pub endpoints: Arc<EndpointSet>,
}

impl Watch {
    /// Resolves once and installs the result; logs what changed. Returns whether it worked.
    pub async fn refresh(&self, resolver: &Resolver, was_failing: bool) -> bool {
        match discover(resolver, &self.host, self.mode).await {
            Ok((ips, source)) => {
                let change = self.endpoints.replace(
                    ips.iter()
                        .map(|ip| authority(SocketAddr::new(*ip, self.port))),
                );
                self.endpoints.set_error(None);
                if was_failing || !change.added.is_empty() || !change.removed.is_empty() {
                    let list: Vec<String> = self
                        .endpoints
                        .snapshot()
                        .iter()
                        .map(|e| e.authority.to_string())
                        .collect();
                    info!(
                        color = self.color,
                        source = source.as_str(),
                        added = change.added.len(),
                        removed = change.removed.len(),
                        endpoints = %list.join(","),
                        "endpoints updated"
                    );
                }
                true
            }
            Err(error) => {
                let kept = self.endpoints.snapshot().len();
                if was_failing {
                    debug!(color = self.color, %error, "DNS refresh still failing");
                } else {
                    warn!(
                        color = self.color,
                        %error,
                        kept_endpoints = kept,
                        "DNS refresh failed; keeping the last endpoints"
                    );
                }
                self.endpoints.set_error(Some(error));
                false
            }
        }
    }

    /// Refreshes every `interval` until the task is dropped. Failures keep the last good set
    /// and are logged once per change of state.
    pub async fn run(self, resolver: Resolver, interval: Duration, mut failing: bool) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            failing = !self.refresh(&resolver, failing).await;
        }
    }
}
