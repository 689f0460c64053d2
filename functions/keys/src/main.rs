//! Lambda function `keys`: the keys routes of the BYOK gateway under
//! lambda_http. Wiring only: configuration, state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let config = byok::config::Config::from_env()?;
    let state = byok::app::lambda_state(&config).await?;
    byok::lambda::run(byok::http::keys_router(state)).await
}
