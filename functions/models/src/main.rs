//! Lambda function `models`: `GET /v1/models`, the model catalog marked
//! accessible for the caller. Wiring only: configuration, state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let config = byok::config::Config::from_env()?;
    let state = byok::app::lambda_state(&config).await?;
    byok::lambda::run(byok::http::models_router(state)).await
}
