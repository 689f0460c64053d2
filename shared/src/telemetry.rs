//! Tracing setup: `RUST_LOG` filters (default `info`); logs go to stderr so
//! stdout stays free for what a command prints. Nothing logged anywhere in
//! the crate carries a secret: keys are [`crate::domain::ApiKey`] values
//! that print as `*****`.

use tracing_subscriber::EnvFilter;

/// Where the process runs, which decides the log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// A terminal: colours when stderr is one, timestamps.
    Local,
    /// Lambda: CloudWatch adds timestamps; no colours.
    Lambda,
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(runtime: Runtime) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = match runtime {
        Runtime::Local => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        Runtime::Lambda => builder.with_ansi(false).without_time().try_init(),
    };
    // A subscriber installed earlier (tests) stays in place.
    drop(installed);
}
