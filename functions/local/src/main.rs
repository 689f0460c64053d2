//! byok-local: every route of the gateway in one process on an embedded,
//! encrypted store. Wiring only; the work lives in `byok::local`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    byok::telemetry::init(byok::telemetry::Runtime::Local);
    let outcome = async {
        let command = byok::local::parse_args(std::env::args().skip(1))?;
        let config = byok::config::Config::from_env().map_err(byok::app::InitError::from)?;
        byok::local::run(command, config, &mut std::io::stdout()).await
    };
    match outcome.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            #[expect(clippy::print_stderr, reason = "the process's last word to its user")]
            {
                eprintln!("byok-local: {err}");
            }
            ExitCode::FAILURE
        }
    }
}
