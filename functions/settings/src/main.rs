//! Lambda function `settings`: the settings routes of the BYOK gateway under
//! lambda_http. Wiring only: configuration, state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let (_, state) = byok::lambda::init(byok::app::Function::Settings).await?;
    byok::lambda::run(byok::http::settings_router(state)).await
}
