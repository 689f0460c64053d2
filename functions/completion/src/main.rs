//! Lambda function `completion`: `POST /v1/chat/completions`, streamed to the
//! client through Lambda response streaming. Wiring only: configuration,
//! state, router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    byok::telemetry::init(byok::telemetry::Runtime::Lambda);
    let (_, state) = byok::lambda::init(byok::app::Function::Completion).await?;
    byok::lambda::run_streaming(byok::http::completion_router(state)).await
}
