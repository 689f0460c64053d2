//! Handler of `POST /v1/chat/completions`: reads the body (up to 20 MiB, any
//! fields), runs [`crate::completion::CompletionService`], and answers JSON or
//! `text/event-stream` with the `x-byok-path` / `x-byok-provider` /
//! `x-byok-paid-by` headers, where a request limit applies OpenAI's
//! `x-ratelimit-*-requests` headers, and on a team path with a budget
//! `x-byok-budget-remaining` / `x-byok-budget-type`.

use super::extract::{ApiCaller, RequestId};
use super::{ApiError, AppState, ErrorCode};
use crate::budget::BudgetStatus;
use crate::completion::{CompletionBody, RateStatus, RequestContext, Route};
use crate::store::PaidBy;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::{HeaderName, HeaderValue, header};
use std::convert::Infallible;

const PATH_HEADER: HeaderName = HeaderName::from_static("x-byok-path");
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-byok-provider");
const MODEL_HEADER: HeaderName = HeaderName::from_static("x-byok-model");
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-byok-fallback");
const PAID_BY_HEADER: HeaderName = HeaderName::from_static("x-byok-paid-by");
const KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-byok-key-id");
const VIA_HEADER: HeaderName = HeaderName::from_static("x-byok-via");
const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const BUDGET_REMAINING_HEADER: HeaderName = HeaderName::from_static("x-byok-budget-remaining");
const BUDGET_TYPE_HEADER: HeaderName = HeaderName::from_static("x-byok-budget-type");

enum BodyError {
    TooLarge,
    Unreadable,
}

/// The request body in one buffer sized from `Content-Length` up front:
/// one copy of a large body, never the frames and their concatenation side
/// by side (a 20 MiB body costs 20 MiB, not 40).
async fn read_body(req: Request, limit: usize) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt as _;
    let announced = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut frames = req.into_body().into_data_stream();
    if announced.is_some_and(|n| n > limit) {
        drain(&mut frames, announced.unwrap_or(0)).await;
        return Err(BodyError::TooLarge);
    }
    let mut buffer = bytes::BytesMut::with_capacity(announced.unwrap_or(0));
    while let Some(frame) = frames.next().await {
        let data = frame.map_err(|_| BodyError::Unreadable)?;
        if buffer.len() + data.len() > limit {
            drop(buffer);
            drain(&mut frames, 0).await;
            return Err(BodyError::TooLarge);
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

/// Most bytes of a refused body read and thrown away.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and discards the rest of a refused body (up to [`DRAIN_LIMIT`],
/// and only when its announced length is within it), so a client still
/// sending it reads the 413 instead of a broken pipe. A slow sender is cut
/// off by the server's body timeout.
async fn drain(frames: &mut axum::body::BodyDataStream, announced: usize) {
    use futures_util::StreamExt as _;
    if announced > DRAIN_LIMIT {
        return;
    }
    let mut drained = 0usize;
    while let Some(Ok(data)) = frames.next().await {
        drained += data.len();
        if drained > DRAIN_LIMIT {
            return;
        }
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn complete(
    state: State<AppState>,
    caller: ApiCaller,
    request_id: RequestId,
    req: Request,
) -> Response {
    answer(state, caller, request_id, req, Operation::Chat).await
}

/// `POST /v1/embeddings`.
pub(super) async fn embeddings(
    state: State<AppState>,
    caller: ApiCaller,
    request_id: RequestId,
    req: Request,
) -> Response {
    answer(state, caller, request_id, req, Operation::Embeddings).await
}

/// `POST /v1/messages` (Anthropic's Messages API).
pub(super) async fn messages(
    state: State<AppState>,
    caller: ApiCaller,
    request_id: RequestId,
    req: Request,
) -> Response {
    answer(state, caller, request_id, req, Operation::Messages).await
}

#[derive(Clone, Copy)]
enum Operation {
    Chat,
    Embeddings,
    Messages,
}

async fn answer(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    request_id: RequestId,
    req: Request,
    operation: Operation,
) -> Response {
    let body = match read_body(req, crate::completion::BODY_LIMIT).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than 20 MiB",
            )
            .into_response();
        }
        Err(BodyError::Unreadable) => {
            return ApiError::new(ErrorCode::InvalidRequest, "request body could not be read")
                .into_response();
        }
    };
    let ctx = RequestContext {
        user: caller.user,
        tenant: caller.tenant,
        request_id: request_id.as_str().to_owned(),
    };
    let result = match operation {
        Operation::Chat => state.completions.complete_bytes(&ctx, body).await,
        Operation::Embeddings => state.completions.embed_bytes(&ctx, body).await,
        Operation::Messages => state.completions.messages_bytes(&ctx, body).await,
    };
    match result {
        Ok(completion) => {
            let mut response = match completion.body {
                CompletionBody::Json { json, recorded } => {
                    // The whole document goes out at once (its length is
                    // known); the response ends once its usage is recorded.
                    let length = json.len();
                    let ledger = futures_util::stream::once(async move {
                        if let Some(Err(err)) = match recorded {
                            Some(task) => Some(task.await),
                            None => None,
                        } {
                            tracing::error!(error = %err, "usage recording task failed");
                        }
                    })
                    .filter_map(|()| std::future::ready(None::<Bytes>));
                    let body = futures_util::stream::once(std::future::ready(json)).chain(ledger);
                    (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            ),
                            (header::CONTENT_LENGTH, HeaderValue::from(length)),
                        ],
                        Body::from_stream(body.map(Ok::<_, Infallible>)),
                    )
                        .into_response()
                }
                CompletionBody::Stream(stream) => {
                    let body = Body::from_stream(stream.map(Ok::<_, Infallible>));
                    (
                        [
                            (header::CONTENT_TYPE, "text/event-stream"),
                            (header::CACHE_CONTROL, "no-cache"),
                            (HeaderName::from_static("x-accel-buffering"), "no"),
                        ],
                        body,
                    )
                        .into_response()
                }
            };
            route_headers(&mut response, &completion.route);
            rate_headers(&mut response, completion.rate);
            budget_headers(&mut response, completion.budget);
            response
        }
        Err(failure) => {
            let mut response = ApiError::from(failure.error).into_response();
            if let Some(route) = &failure.route {
                route_headers(&mut response, route);
            }
            rate_headers(&mut response, failure.rate);
            response
        }
    }
}

/// Where the budget that binds first stands, in its unit.
fn budget_headers(response: &mut Response, budget: Option<BudgetStatus>) {
    let Some(budget) = budget else { return };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&budget.remaining_text()) {
        headers.insert(BUDGET_REMAINING_HEADER, value);
    }
    headers.insert(
        BUDGET_TYPE_HEADER,
        HeaderValue::from_static(budget.unit.as_str()),
    );
}

/// OpenAI's request-limit headers, for the limit that binds first.
fn rate_headers(response: &mut Response, rate: Option<RateStatus>) {
    let Some(rate) = rate else { return };
    let headers = response.headers_mut();
    headers.insert(LIMIT_HEADER, HeaderValue::from(rate.limit));
    headers.insert(REMAINING_HEADER, HeaderValue::from(rate.remaining));
    let reset = format!("{}s", rate.reset_after.as_millis().div_ceil(1000));
    if let Ok(value) = HeaderValue::from_str(&reset) {
        headers.insert(RESET_HEADER, value);
    }
}

fn route_headers(response: &mut Response, route: &Route) {
    let headers = response.headers_mut();
    headers.insert(PATH_HEADER, HeaderValue::from_static(route.path.as_str()));
    headers.insert(
        PAID_BY_HEADER,
        HeaderValue::from_static(PaidBy::of(route.path).as_str()),
    );
    headers.insert(
        PROVIDER_HEADER,
        HeaderValue::from_static(route.provider.as_str()),
    );
    if let Ok(model) = HeaderValue::from_str(&route.model) {
        headers.insert(MODEL_HEADER, model);
    }
    if route.fallback {
        headers.insert(FALLBACK_HEADER, HeaderValue::from_static("true"));
    }
    if let Some(id) = route
        .key_id
        .as_ref()
        .and_then(|id| HeaderValue::from_str(id.as_str()).ok())
    {
        headers.insert(KEY_ID_HEADER, id);
    }
    if route.via_gateway {
        headers.insert(VIA_HEADER, HeaderValue::from_static("gateway"));
    }
}
