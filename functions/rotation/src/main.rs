//! Lambda function `rotation`: the Secrets Manager rotation steps
//! (createSecret, setSecret, testSecret, finishSecret) for stored keys, and
//! the scheduled key-health sweep. Wiring only: configuration, state, handler.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let config = byok::config::Config::from_env()?;
    let state = byok::app::lambda_state(&config).await?;
    byok::lambda::run_rotation(state.rotation, config.rotation.sweep).await
}
