//! The `colorproxy` command: serve (no argument) or `check` the environment.

use std::process::ExitCode;

use colorproxy::config::Config;

const USAGE: &str = "usage: colorproxy [check | version | help]

  (no argument)  run the proxy, configured by environment variables
  check          validate the environment, print the routing table, exit 0 if valid
  version        print the version
  help           print this help

See README.md for the environment variables (BLUE, GREEN, BLUE_WEIGHT, COLORS, LISTEN ...).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(),
        ["check"] => check(),
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
        eprintln!("colorproxy: {e}");
        ExitCode::FAILURE
    })
}

fn check() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    print!("{}", config.table());
    println!(
        "listen {}, connect timeout {}, request timeout {}, drain timeout {}",
        config.listen,
        humantime::format_duration(config.connect_timeout),
        humantime::format_duration(config.request_timeout),
        humantime::format_duration(config.drain_timeout),
    );
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

fn serve() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    colorproxy::logging::init(&config);
    colorproxy::log_config(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colorproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(colorproxy::run(config));
    // A blocking DNS lookup still in progress must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
