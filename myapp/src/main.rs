//! Process wiring for myapp: configuration from the environment, signals and
//! the startup line. Kept apart from the library because these are the parts
//! only the integration tests (which run this binary) can check.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use myapp::{Command, Drain, Responder, SHUTDOWN_GRACE, Stop, Style, USAGE};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let lossy = |s: OsString| s.to_string_lossy().into_owned();
    let args = std::env::args_os().skip(1).map(lossy);
    let addr = match myapp::parse_command(args, std::env::var_os("LISTEN").map(lossy)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Serve(addr)) => addr,
        Err(e) => {
            eprintln!("myapp: {e}\nTry 'myapp --help' for more information.");
            return ExitCode::from(2);
        }
    };

    let delay = match myapp::parse_shutdown_delay(std::env::var_os("SHUTDOWN_DELAY").map(lossy)) {
        Ok(delay) => delay,
        Err(e) => {
            eprintln!("myapp: {e}\nTry 'myapp --help' for more information.");
            return ExitCode::from(2);
        }
    };
    let style = match std::env::var_os("V2") {
        Some(v) if !v.is_empty() => Style::Html,
        _ => Style::Text,
    };
    let hostname = myapp::resolve_hostname(std::env::var_os("HOSTNAME").map(lossy), || {
        std::fs::read_to_string("/etc/hostname").ok()
    });
    let responder = Arc::new(Responder::new(style, &hostname));

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("myapp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(addr, responder, delay))
}

async fn run(addr: std::net::SocketAddr, responder: Arc<Responder>, delay: Duration) -> ExitCode {
    // Registered before announcing readiness, so a signal sent as soon as the
    // "listening" line appears is never lost to the default handler.
    let shutdown = match shutdown_signal() {
        Ok(fut) => fut,
        Err(e) => {
            eprintln!("myapp: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("myapp: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    // Scripts and tests wait for this line (with port 0 it is the only way to
    // learn the port), so it must not sit in a buffer.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "myapp listening on {bound}").and_then(|()| stdout.flush()) {
        eprintln!("myapp: cannot write to stdout: {e}");
    }
    drop(stdout);

    let stop = Stop {
        delay,
        grace: SHUTDOWN_GRACE,
    };
    let drain = myapp::serve(
        listener,
        responder,
        shutdown,
        stop,
        || {
            eprintln!(
                "myapp: stop signal: still serving for {} ms (answers say Connection: close) before the listener closes",
                delay.as_millis()
            );
        },
        || eprintln!("myapp: shutting down, no longer accepting connections"),
    )
    .await;
    if drain == Drain::TimedOut {
        eprintln!(
            "myapp: connections still open after {} s, closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    ExitCode::SUCCESS
}

#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("myapp: cannot wait for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    })
}
