//! The `colorproxy` command: serve (no argument), `check` the environment, or `healthcheck` a
//! running instance.

use std::process::ExitCode;
use std::time::Duration;

use colorproxy::config::{Config, ConfigError};

const USAGE: &str = "usage: colorproxy [check [--json] | healthcheck | version | help]

  (no argument)  run the proxy, configured by environment variables
  check          validate the environment, print the routing table, exit 0 if valid
  check --json   the same, printed as the JSON that the admin endpoint /config serves
  healthcheck    ask the running proxy's admin endpoint /healthz; exit 0 if healthy
  version        print the version
  help           print this help

See README.md for the environment variables (BLUE, GREEN, BLUE_WEIGHT, COLORS, LISTEN ...).";

/// Docker's default HEALTHCHECK timeout is 30 s; answering well before it keeps the result ours.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => serve(),
        ["check"] => check(false),
        ["check", "--json"] => check(true),
        ["healthcheck"] => healthcheck(),
        ["version" | "--version" | "-V"] => {
            println!("colorproxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("colorproxy: unknown arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn load() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|e| {
        report(&e);
        ExitCode::FAILURE
    })
}

/// Prints configuration problems to stderr: one line each, as JSON objects when
/// LOG_FORMAT=json so that log pipelines parse them like every other line.
fn report(e: &ConfigError) {
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.trim() == "json") {
        for p in &e.0 {
            let line = serde_json::json!({
                "level": "ERROR",
                "message": "invalid configuration",
                "var": p.var,
                "value": p.value,
                "expected": p.expected,
            });
            eprintln!("{line}");
        }
    } else {
        eprintln!("colorproxy: {e}");
    }
}

fn check(json: bool) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if json {
        println!("{:#}", config.view());
    } else {
        print!("{}", config.table());
        print!("{}", config.schedules(std::time::SystemTime::now()));
        println!(
            "listen {}, admin {}, connect timeout {}, request timeout {}, drain timeout {}",
            config.listen,
            config
                .admin_listen
                .map_or("off".to_string(), |a| a.to_string()),
            humantime::format_duration(config.connect_timeout),
            humantime::format_duration(config.request_timeout),
            humantime::format_duration(config.drain_timeout),
        );
        println!("config hash {}", config.config_hash());
    }
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

fn healthcheck() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(addr) = config.admin_listen else {
        eprintln!(
            "colorproxy healthcheck: the admin listener is off (ADMIN_LISTEN=off), so there is no /healthz to ask"
        );
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colorproxy healthcheck: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(colorproxy::admin::probe(addr, HEALTHCHECK_TIMEOUT)) {
        Ok(url) => {
            println!("healthy: {url} answered 200");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("colorproxy healthcheck: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let logs = colorproxy::logging::init(&config);
    colorproxy::fd_limit::raise_open_files();
    colorproxy::log_config(&config);
    // One CPU (a cpuset, `taskset`): one thread serves everything without work-stealing
    // hand-offs. More: one worker per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colorproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(colorproxy::run(config));
    // A blocking DNS lookup still in progress must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    drop(logs);
    code
}
