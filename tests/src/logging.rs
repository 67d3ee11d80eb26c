//! Test logging: a tracing subscriber writing through the test harness's
//! capture, and the `step!` macro marking the steps of a test.

use std::sync::Once;

/// Installs a `tracing` subscriber (once per process) that writes through
/// libtest's output capture. `RUST_LOG` overrides the default `info` filter.
/// The harness calls this itself when it starts servers and agents.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Fails only if another subscriber is installed already; keep that one.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

/// Prints a `--- step: ...` line (use through [`step!`](crate::step)).
pub fn print_step(args: std::fmt::Arguments<'_>) {
    println!("--- step: {args}");
}

/// Marks a step of a test: `step!("kill agent {}", name)` prints
/// `--- step: kill agent a1`.
#[macro_export]
macro_rules! step {
    ($($arg:tt)*) => {
        $crate::logging::print_step(::std::format_args!($($arg)*))
    };
}
