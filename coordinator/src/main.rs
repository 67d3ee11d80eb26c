//! `lockstep-coordinator`: parse arguments, set up logging, run until
//! SIGTERM or Ctrl-C. Exits 1 when the coordinator fails (its raft node
//! included), 2 on bad configuration; a second SIGTERM or Ctrl-C, or a
//! shutdown that takes longer than [`FORCED_EXIT_AFTER`], exits at once.

use std::time::Duration;

use clap::Parser;
use lockstep_coordinator::client::error_chain;
use lockstep_coordinator::config::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How long a shutdown may take after the first SIGTERM or Ctrl-C before
/// the process exits without waiting further.
const FORCED_EXIT_AFTER: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Fault injection (only with the `failpoints` feature): FAILPOINTS.
    let _failpoints = fail::FailScenario::setup();
    #[cfg(feature = "failpoints")]
    for (name, action) in fail::list() {
        tracing::warn!(name, action, "fail point configured");
    }
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::exit(2);
        }
    };
    let shutdown = CancellationToken::new();
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot watch SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        on_signal.cancel();
        // Whatever the shutdown waits for, a second signal or the deadline
        // ends the process.
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = tokio::time::sleep(FORCED_EXIT_AFTER) => {
                eprintln!("error: shutdown did not finish within {FORCED_EXIT_AFTER:?}; exiting");
            }
        }
        std::process::exit(1);
    });
    let code = match lockstep_coordinator::server::run(config, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            let e = error_chain(&e);
            tracing::error!(error = %e, "coordinator failed");
            eprintln!("error: {e}");
            1
        }
    };
    // Exit here rather than by returning: dropping the runtime would wait
    // for blocking work that may never end (a hung disk).
    std::process::exit(code);
}
