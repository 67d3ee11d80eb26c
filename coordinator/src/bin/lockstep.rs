//! `lockstep`: the operator's CLI. Parse arguments, set up logging, run.

use clap::Parser;
use lockstep_coordinator::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::process::exit(cli::run(cli).await);
}
