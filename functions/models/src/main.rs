//! Lambda function `models`: `GET /v1/models`, the model catalog marked
//! accessible for the caller. Wiring only: configuration, state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let (_, state) = byok::lambda::init(byok::app::Function::Models).await?;
    byok::lambda::run(byok::http::models_router(state)).await
}
