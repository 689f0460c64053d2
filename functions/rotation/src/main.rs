//! Lambda function `rotation`: the Secrets Manager rotation steps
//! (createSecret, setSecret, testSecret, finishSecret) for stored keys, and
//! the scheduled key-health sweep. Wiring only: configuration, state, handler.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let (config, state) = byok::lambda::init(byok::app::Function::Rotation).await?;
    byok::lambda::run_rotation(state.rotation.clone(), config.rotation.sweep).await
}
