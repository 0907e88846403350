//! Spreads a guard's trip between replicas: with `PEERS=tasks.<proxy service>`, each replica
//! asks every other one's admin port for `/guard` every few seconds, and trips the colors a
//! peer with the same configuration hash has tripped. One replica's verdict is then the
//! fleet's within seconds, and a replica that restarts mid-ramp learns it before it sends the
//! bad canary much traffic again.
//!
//! The last answers are kept in a [`Roster`] for the status page: which replicas answered, with
//! which config hash, so that an operator sees whether a rolling update has converged.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::config::Discovery;
use crate::delivery::Delivery;
use crate::discovery::{Resolver, discover};

/// How often the peers are asked.
pub const POLL: Duration = Duration::from_secs(2);
/// A peer that does not answer within this is skipped until the next poll.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// `/guard` is a few hundred bytes; anything much larger is not a colorproxy answering.
const MAX_ANSWER: usize = 64 * 1024;

/// Asks the peers every POLL until the process ends. `host` is resolved like an upstream
/// (`tasks.<host>` first, then the name itself), every round, so replicas that come and go
/// are followed.
pub async fn run(
    delivery: Arc<Delivery>,
    roster: Arc<Roster>,
    resolver: Resolver,
    host: String,
    port: u16,
) {
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut failing = false;
    loop {
        ticks.tick().await;
        failing = !poll(&delivery, &roster, &resolver, &host, port, failing).await;
    }
}

/// Asks every peer once and trips what they tripped; returns whether `host` resolved.
/// Startup runs one round before serving, so a replica that restarts mid-ramp knows of a
/// trip before its first request.
pub async fn poll(
    delivery: &Arc<Delivery>,
    roster: &Roster,
    resolver: &Resolver,
    host: &str,
    port: u16,
    was_failing: bool,
) -> bool {
    let ips = match discover(resolver, host, Discovery::Auto).await {
        Ok((ips, _)) => ips,
        Err(error) => {
            roster.failed(&error, SystemTime::now());
            if !was_failing {
                warn!(peers = %host, %error, "cannot resolve PEERS: this replica judges alone until it can");
            }
            return false;
        }
    };
    let asks = ips.into_iter().map(|ip| {
        let addr = SocketAddr::new(ip, port);
        async move { (addr, ask(addr).await) }
    });
    let answers = futures_join_all(asks).await;
    for (addr, answer) in &answers {
        match answer {
            Ok(view) => learn(delivery, view, *addr),
            Err(e) => debug!(peer = %addr, error = %e, "peer did not tell its guard state"),
        }
    }
    roster.answered(answers, SystemTime::now());
    true
}

/// The peers' answers of the last round, for the status page.
#[derive(Default)]
pub struct Roster {
    last: Mutex<Round>,
}

#[derive(Default)]
struct Round {
    at: Option<SystemTime>,
    /// Why the name did not resolve, when it did not.
    error: Option<String>,
    answers: Vec<(SocketAddr, Result<Value, String>)>,
}

impl Roster {
    fn round(&self) -> std::sync::MutexGuard<'_, Round> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replicas of the last round that resolved stay listed while the name does not.
    fn failed(&self, error: &str, at: SystemTime) {
        let mut r = self.round();
        r.at = Some(at);
        r.error = Some(error.to_string());
    }

    fn answered(&self, answers: Vec<(SocketAddr, Result<Value, String>)>, at: SystemTime) {
        *self.round() = Round {
            at: Some(at),
            error: None,
            answers,
        };
    }

    /// Each replica of the last round, whether it runs `config_hash`, and whether every one
    /// answered with it (the rollout has converged). `instance` picks out this replica.
    pub fn view(&self, config_hash: &str, instance: &str) -> Value {
        let r = self.round();
        let replicas: Vec<Value> = r
            .answers
            .iter()
            .map(|(addr, answer)| match answer {
                Ok(v) => json!({
                    "address": addr.to_string(),
                    "this": v["instance"] == instance,
                    "config_hash": v["config_hash"],
                    "same_config": v["config_hash"] == config_hash,
                    "version": v["version"],
                    "uptime_seconds": v["uptime_seconds"],
                    "guard": v["guard"],
                    "tripped": v["tripped"],
                    "error": null,
                }),
                Err(e) => json!({
                    "address": addr.to_string(),
                    "this": false,
                    "config_hash": null,
                    "same_config": false,
                    "error": e,
                }),
            })
            .collect();
        let converged = r.error.is_none()
            && !replicas.is_empty()
            && replicas.iter().all(|v| v["same_config"] == true);
        json!({
            "polled_at": r.at.map(crate::ramp::format_time),
            "error": r.error,
            "replicas": replicas,
            "converged": converged,
        })
    }
}

/// Trips what a peer with the same configuration tripped.
fn learn(delivery: &Delivery, view: &serde_json::Value, peer: SocketAddr) {
    if view["config_hash"] != delivery.config_hash() {
        return;
    }
    for t in view["tripped"].as_array().into_iter().flatten() {
        if let (Some(color), Some(reason)) = (t["color"].as_str(), t["reason"].as_str()) {
            delivery.trip_from_peer(color, reason, &peer.to_string());
        }
    }
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// GET `/guard` on a peer's admin port.
async fn ask(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let get = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get("/guard")
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a guard state: {e}"))
    };
    tokio::time::timeout(ASK_TIMEOUT, get)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(hash: &str, instance: &str) -> Result<Value, String> {
        Ok(json!({ "config_hash": hash, "instance": instance, "tripped": [], "version": "1" }))
    }

    #[test]
    fn the_roster_tells_whether_every_replica_runs_this_configuration() {
        let roster = Roster::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let view = roster.view("aaa", "me");
        assert_eq!(view["converged"], false, "nobody asked yet: {view}");
        let a: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:9901".parse().unwrap();
        roster.answered(
            vec![(a, answer("aaa", "me")), (b, answer("aaa", "other"))],
            at,
        );
        let view = roster.view("aaa", "me");
        assert_eq!(view["converged"], true, "{view}");
        assert_eq!(view["replicas"][0]["this"], true);
        assert_eq!(view["replicas"][1]["this"], false);
        assert_eq!(view["polled_at"], "2023-11-14T22:13:20Z");
        // One replica on another configuration, one that did not answer: not converged.
        roster.answered(
            vec![(a, answer("aaa", "me")), (b, answer("bbb", "other"))],
            at,
        );
        let view = roster.view("aaa", "me");
        assert_eq!(view["converged"], false);
        assert_eq!(view["replicas"][1]["same_config"], false);
        roster.answered(
            vec![(a, answer("aaa", "me")), (b, Err("timeout".into()))],
            at,
        );
        let view = roster.view("aaa", "me");
        assert_eq!(view["converged"], false);
        assert_eq!(view["replicas"][1]["error"], "timeout");
        // A name that stops resolving keeps the last replicas, with the error.
        roster.failed("neither tasks.proxy nor proxy resolves", at);
        let view = roster.view("aaa", "me");
        assert_eq!(view["converged"], false);
        assert_eq!(view["replicas"].as_array().unwrap().len(), 2);
        assert_eq!(view["error"], "neither tasks.proxy nor proxy resolves");
    }
}
