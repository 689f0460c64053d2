//! Lambda function `validate`: the validate routes of the BYOK gateway under
//! lambda_http. Wiring only: configuration, state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let (_, state) = byok::lambda::init(byok::app::Function::Validate).await?;
    byok::lambda::run(byok::http::validate_router(state)).await
}
