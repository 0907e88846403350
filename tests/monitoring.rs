//! swarm/monitoring/: the Grafana dashboard asks only for metrics and labels colorproxy really
//! exports (checked against the real binary's `/metrics`), names the provisioned data source,
//! and the files the stack mounts are where Grafana and Prometheus look for them.
//! `dashboard_queries_parse_with_promtool` (run by `.ci/run` with `--ignored`) has Prometheus's
//! own parser check every query.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use common::*;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/swarm/monitoring");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/colorproxy.json")).expect("dashboard JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// (panel title, expr) of every query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// The `colorproxy_…` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("colorproxy_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

/// Label names an expression groups or matches by: `by (a, b)`, `{a="…", b=~"…"}`.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let list = part.split(')').next().unwrap_or("");
        out.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    for part in expr.split('{').skip(1) {
        let matchers = part.split('}').next().unwrap_or("");
        for m in matchers.split(',') {
            let name: String = m
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// `/metrics` of a colorproxy with every kind of series present: two colors on a ramped
/// route that answered, and a color whose upstream refuses connections.
async fn real_metrics() -> String {
    let blue = Backend::echo("blue").await;
    let green = Backend::echo("green").await;
    let dead = dead_address().await;
    let start = colorproxy::ramp::format_time(std::time::SystemTime::now());
    let env = [
        ("COLORS", "blue,green,red".to_string()),
        ("BLUE", blue.url()),
        ("GREEN", green.url()),
        ("GREEN_RAMP", "50,100".to_string()),
        ("GREEN_RAMP_START", start),
        ("RED", dead),
        ("RED_PREFIX", "/dead".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = ProxyProcess::start(&env);
    let client = client();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while seen.len() < 2 {
        let r = get(&client, &proxy.url("/")).await;
        seen.insert(r.headers["x-backend"].to_str().unwrap().to_string());
        assert!(Instant::now() < deadline, "only {seen:?} answered");
    }
    assert_eq!(get(&client, &proxy.url("/dead")).await.status, 502);
    let url = proxy.admin_url("/metrics");
    loop {
        let m = get(&client, &url).await.body;
        if m.contains("colorproxy_upstream_errors_total{")
            && m.contains("color=\"red\",code=\"502\"")
        {
            return m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_what_colorproxy_exports() {
    let metrics = real_metrics().await;
    let mut exported = BTreeSet::new();
    let mut labels: BTreeSet<String> = ["le", "instance", "job"].map(String::from).into();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(' ').next().unwrap();
        let (name, rest) = series.split_once('{').unwrap_or((series, ""));
        exported.insert(name.to_string());
        for pair in rest.trim_end_matches('}').split(',') {
            if let Some((label, _)) = pair.split_once('=') {
                labels.insert(label.to_string());
            }
        }
    }
    let d = dashboard();
    let queries = queries(&d);
    assert!(queries.len() >= 12, "{queries:?}");
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{title}: {expr} asks for no colorproxy metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{title}: {name} is not in /metrics:\n{metrics}"
            );
            used.insert(name);
        }
        for label in label_names(expr) {
            assert!(
                labels.contains(&label),
                "{title}: no metric has the label {label}"
            );
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "colorproxy_requests_total",
        "colorproxy_request_duration_seconds_bucket",
        "colorproxy_backend_share",
        "colorproxy_guard_tripped",
        "colorproxy_ramp_held",
        "colorproxy_build_info",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn the_dashboard_is_well_formed_and_provisioned() {
    let d = dashboard();
    assert_eq!(d["uid"], "colorproxy");
    let datasource = read("grafana/provisioning/datasources/prometheus.yml");
    let uid = datasource
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid: "))
        .expect("a data source uid");
    assert!(datasource.contains("url: http://prometheus:9090"));
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = p["title"].as_str().expect("a panel title");
        assert!(titles.insert(title.to_string()), "title {title} twice");
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], uid, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], uid, "{title}");
            assert!(
                refs.insert(t["refId"].as_str().unwrap().to_string()),
                "{title}"
            );
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        assert_eq!(v["datasource"]["uid"], uid);
    }
    // The stack mounts each file where the provisioning says it is.
    let stack = read("stack.yml");
    let provider = read("grafana/provisioning/dashboards/colorproxy.yml");
    let dir = provider
        .lines()
        .find_map(|l| l.trim().strip_prefix("path: "))
        .expect("the dashboards path");
    for (file, target) in [
        (
            "./prometheus.yml",
            "/etc/prometheus/prometheus.yml".to_string(),
        ),
        (
            "./grafana/dashboards/colorproxy.json",
            format!("{dir}/colorproxy.json"),
        ),
        (
            "./grafana/provisioning/datasources/prometheus.yml",
            "/etc/grafana/provisioning/datasources/prometheus.yml".to_string(),
        ),
        (
            "./grafana/provisioning/dashboards/colorproxy.yml",
            "/etc/grafana/provisioning/dashboards/colorproxy.yml".to_string(),
        ),
    ] {
        assert!(
            stack.contains(&format!("file: {file}")),
            "{file} is not a config"
        );
        assert!(
            stack.contains(&format!("target: {target}")),
            "{target} is not mounted"
        );
    }
    // Prometheus finds the demo stack's proxy tasks on the default admin port.
    let prometheus = read("prometheus.yml");
    assert!(prometheus.contains("names: [tasks.demo_proxy]"));
    assert!(prometheus.contains("type: A") && prometheus.contains("port: 9901"));
    assert!(stack.contains("name: demo_backend"));
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/swarm/stack.yml")).unwrap();
    assert!(demo.contains("\n  proxy:\n") && demo.contains("\n  backend:\n"));
}

/// Prometheus's own parser on every query: each becomes a recording rule, and `promtool check
/// rules` must accept the file (Grafana's `$__rate_interval` and `$color` as Grafana would
/// fill them in).
#[test]
#[ignore = "needs promtool (Debian's prometheus package): .ci/run runs it with --ignored"]
fn dashboard_queries_parse_with_promtool() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$color", ".+");
        rules.push_str(&format!(
            "      - record: colorproxy:dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard-rules.yml");
    std::fs::write(path, rules).unwrap();
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&bin)
        .args(["check", "rules", path])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install prometheus): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}
