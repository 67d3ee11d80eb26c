//! `lockstep-coordinator`: parse arguments, set up logging, run until
//! SIGTERM or Ctrl-C.

use clap::Parser;
use lockstep_coordinator::config::Args;
use tokio_util::sync::CancellationToken;

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
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    if let Err(e) = lockstep_coordinator::server::run(config, shutdown).await {
        tracing::error!(error = %e, "coordinator failed");
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
