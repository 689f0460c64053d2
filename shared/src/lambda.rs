//! Running the gateway's axum routers as AWS Lambda functions behind API
//! Gateway: claims an API Gateway authorizer already verified are lifted into
//! [`AuthorizerClaims`] request extensions, so the HTTP layer never needs to
//! know about `lambda_http`.
//!
//! Note: for stages other than `$default`, `lambda_http` prefixes the request
//! path with `/{stage}` unless the function's environment sets
//! `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH`; deploy with that variable (or the
//! `$default` stage) so the routers' paths match.

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use lambda_http::request::RequestContext;
use lambda_http::{Error, RequestExt as _};
use serde_json::{Map, Value};

use crate::app::{Function, InitError};
use crate::auth::AuthorizerClaims;
use crate::config::Config;
use crate::http::AppState;

/// A function's configuration and state, built once at cold start with the
/// parts `function` uses. A failure is reported to the Runtime API's
/// init-error endpoint, so Lambda shows why the function could not start
/// (the message names the setting, never its value), and then returned.
pub async fn init(function: Function) -> Result<(Config, AppState), Error> {
    let started = async {
        let config = Config::from_env()?;
        let state = crate::app::lambda_state(&config, function).await?;
        Ok::<_, InitError>((config, state))
    }
    .await;
    match started {
        Ok(started) => Ok(started),
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            report_init_error(&err).await;
            Err(err.into())
        }
    }
}

/// Posts `err` to `/runtime/init/error`; a failure to report is logged.
async fn report_init_error(err: &InitError) {
    if let Err(e) = post_init_error(err).await {
        tracing::error!(error = %e, "could not report the failed start to the Runtime API");
    }
}

async fn post_init_error(err: &InitError) -> Result<(), Error> {
    let body = serde_json::to_vec(&serde_json::json!({
        "errorType": "byok.InitError",
        "errorMessage": err.to_string(),
    }))?;
    let request = lambda_runtime_api_client::build_request()
        .method(http::Method::POST)
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", "Runtime.InitError")
        .body(lambda_runtime_api_client::body::Body::from(body))?;
    let client = lambda_runtime_api_client::Client::builder().build()?;
    client.call(request).await?;
    Ok(())
}

/// The authorizer claims of a Lambda request, if API Gateway attached any:
/// `authorizer.jwt.claims` for an HTTP API JWT authorizer (every value a
/// string), `authorizer.claims` for a REST API Cognito authorizer.
pub fn authorizer_claims(req: &lambda_http::Request) -> Option<AuthorizerClaims> {
    req.request_context_ref().and_then(claims_from_context)
}

fn claims_from_context(context: &RequestContext) -> Option<AuthorizerClaims> {
    let claims: Map<String, Value> = match context {
        RequestContext::ApiGatewayV2(ctx) => ctx
            .authorizer
            .as_ref()?
            .jwt
            .as_ref()?
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        // The REST API authorizer object is flattened into `fields`.
        RequestContext::ApiGatewayV1(ctx) => match ctx.authorizer.fields.get("claims")? {
            Value::Object(claims) => claims.clone(),
            _ => return None,
        },
        _ => return None,
    };
    (!claims.is_empty()).then_some(AuthorizerClaims(claims))
}

/// Middleware (for [`axum::middleware::from_fn`]) that inserts the request's
/// [`AuthorizerClaims`], if its Lambda request context carries any, and the
/// Lambda request id as the request's [`crate::http::RequestId`].
pub async fn insert_authorizer_claims(mut req: Request, next: Next) -> Response {
    let claims = req
        .extensions()
        .get::<RequestContext>()
        .and_then(claims_from_context);
    if let Some(claims) = claims {
        req.extensions_mut().insert(claims);
    }
    let request_id = req
        .extensions()
        .get::<lambda_http::Context>()
        .map(|ctx| crate::http::RequestId::from_platform(&ctx.request_id))
        .filter(|id| !id.as_str().is_empty());
    if let Some(id) = request_id {
        req.extensions_mut().insert(id);
    }
    next.run(req).await
}

/// Serves `router` as a Lambda function (buffered responses).
pub async fn run(router: axum::Router) -> Result<(), Error> {
    lambda_http::run(with_claims(router)).await
}

/// Serves `router` as a Lambda function with streamed responses (requires
/// the function to be invoked with response streaming enabled).
pub async fn run_streaming(router: axum::Router) -> Result<(), Error> {
    lambda_http::run_with_streaming_response(with_claims(router)).await
}

/// Serves the rotation function: Secrets Manager rotation events run one
/// protocol step; an EventBridge scheduled event (or `{"action":"sweep"}`)
/// runs the sweep and answers its report.
pub async fn run_rotation(
    rotation: std::sync::Arc<crate::rotation::RotationService>,
    policy: crate::rotation::SweepPolicy,
) -> Result<(), Error> {
    let rotation = &rotation;
    lambda_http::lambda_runtime::run(lambda_http::service_fn(
        move |event: lambda_http::LambdaEvent<Value>| async move {
            handle_rotation_event(rotation, policy, event.payload).await
        },
    ))
    .await
}

/// One invocation of the rotation function (see [`run_rotation`]). A
/// failed step is an error, so Secrets Manager marks the rotation failed
/// (and retries it); the message says whether a retry can help.
pub async fn handle_rotation_event(
    rotation: &crate::rotation::RotationService,
    policy: crate::rotation::SweepPolicy,
    event: Value,
) -> Result<Value, Error> {
    use crate::rotation::Step;
    use lambda_http::aws_lambda_events::secretsmanager::SecretsManagerSecretRotationEvent;
    if event.get("Step").is_some() {
        let event: SecretsManagerSecretRotationEvent = serde_json::from_value(event)?;
        let step = Step::parse(&event.step)
            .ok_or_else(|| format!("unknown rotation step {:?}", event.step))?;
        return match rotation
            .step(step, &event.secret_id, &event.client_request_token)
            .await
        {
            Ok(()) => Ok(serde_json::json!({ "step": step.as_str(), "done": true })),
            Err(err) => {
                let kind = if err.retryable() {
                    "retryable"
                } else {
                    "final"
                };
                Err(format!("{} failed ({kind}): {err}", step.as_str()).into())
            }
        };
    }
    let scheduled = event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event");
    let asked = event.get("action").and_then(Value::as_str) == Some("sweep");
    if scheduled || asked {
        let report = rotation.sweep(policy).await?;
        return Ok(serde_json::to_value(report)?);
    }
    Err("unrecognised event: expected a Secrets Manager rotation step or a scheduled event".into())
}

fn with_claims(router: axum::Router) -> axum::Router {
    router.layer(middleware::from_fn(insert_authorizer_claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Extension;
    use axum::routing::get;
    use serde_json::json;
    use tower::ServiceExt as _;

    use crate::auth::Principal;
    use crate::domain::UserId;

    async fn whoami(claims: Option<Extension<AuthorizerClaims>>) -> String {
        match claims {
            Some(Extension(claims)) => match claims.principal() {
                Ok(p) => format!("{} admin={}", p.user, p.admin),
                Err(e) => format!("error: {e}"),
            },
            None => "none".to_owned(),
        }
    }

    fn app() -> axum::Router {
        with_claims(
            axum::Router::new()
                .route("/whoami", get(whoami))
                .route("/prod/whoami", get(whoami)),
        )
    }

    async fn call(req: lambda_http::Request) -> String {
        let resp = app().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    /// An HTTP API (payload 2.0) event with a JWT authorizer; claim values
    /// are stringified by API Gateway.
    fn http_api_event(claims: Value) -> String {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/whoami",
            "rawQueryString": "",
            "headers": {"accept": "text/plain"},
            "requestContext": {
                "routeKey": "$default",
                "accountId": "123456789012",
                "stage": "$default",
                "requestId": "id",
                "authorizer": {"jwt": {"claims": claims, "scopes": null}},
                "apiId": "api-id",
                "domainName": "id.execute-api.eu-west-1.amazonaws.com",
                "domainPrefix": "id",
                "time": "12/Mar/2020:19:03:58 +0000",
                "timeEpoch": 1583348638390u64,
                "http": {
                    "method": "GET",
                    "path": "/whoami",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "192.0.2.1",
                    "userAgent": "test"
                }
            },
            "isBase64Encoded": false
        })
        .to_string()
    }

    /// A REST API (payload 1.0) event with a Cognito user pool authorizer.
    fn rest_api_event(authorizer: Value) -> String {
        json!({
            "resource": "/whoami",
            "path": "/whoami",
            "httpMethod": "GET",
            "headers": {"Accept": "text/plain"},
            "multiValueHeaders": {"Accept": ["text/plain"]},
            "queryStringParameters": null,
            "multiValueQueryStringParameters": null,
            "pathParameters": null,
            "stageVariables": null,
            "requestContext": {
                "resourceId": "abc",
                "resourcePath": "/whoami",
                "httpMethod": "GET",
                "extendedRequestId": "x",
                "requestTime": "12/Mar/2020:19:03:58 +0000",
                "path": "/prod/whoami",
                "accountId": "123456789012",
                "protocol": "HTTP/1.1",
                "stage": "prod",
                "domainPrefix": "id",
                "requestTimeEpoch": 1583348638390u64,
                "requestId": "id",
                "identity": {"sourceIp": "192.0.2.1", "userAgent": "test"},
                "domainName": "id.execute-api.eu-west-1.amazonaws.com",
                "apiId": "api-id",
                "authorizer": authorizer
            },
            "body": null,
            "isBase64Encoded": false
        })
        .to_string()
    }

    fn lambda_request(event: &str) -> lambda_http::Request {
        lambda_http::request::from_str(event).expect("API Gateway event")
    }

    #[tokio::test]
    async fn http_api_jwt_claims_reach_the_handler() {
        let req = lambda_request(&http_api_event(json!({
            "sub": "user-1",
            "cognito:groups": "[admin]",
            "exp": "1750000000"
        })));
        assert!(matches!(
            req.request_context_ref(),
            Some(RequestContext::ApiGatewayV2(_))
        ));
        let claims = authorizer_claims(&req).expect("claims");
        assert_eq!(claims.0.get("exp"), Some(&json!("1750000000")));
        assert_eq!(
            claims.principal().expect("principal"),
            Principal {
                user: UserId::new("user-1").expect("id"),
                admin: true,
                tenant: None,
            }
        );
        assert_eq!(call(req).await, "user-1 admin=true");
    }

    #[tokio::test]
    async fn http_api_stringified_group_lists() {
        for (groups, admin) in [("[x admin]", true), ("[x, y]", false), ("admin,x", true)] {
            let req = lambda_request(&http_api_event(
                json!({"sub": "u2", "cognito:groups": groups}),
            ));
            assert_eq!(call(req).await, format!("u2 admin={admin}"), "{groups}");
        }
    }

    #[tokio::test]
    async fn rest_api_cognito_claims_reach_the_handler() {
        let req = lambda_request(&rest_api_event(json!({
            "claims": {
                "sub": "user-2",
                "cognito:groups": "admin,ops",
                "email": "u@example.com"
            },
            "principalId": "ignored"
        })));
        assert!(matches!(
            req.request_context_ref(),
            Some(RequestContext::ApiGatewayV1(_))
        ));
        // lambda_http prefixes the stage unless AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH is set.
        assert_eq!(req.uri().path(), "/prod/whoami");
        let claims = authorizer_claims(&req).expect("claims");
        assert_eq!(claims.0.get("email"), Some(&json!("u@example.com")));
        assert_eq!(call(req).await, "user-2 admin=true");
    }

    #[tokio::test]
    async fn no_authorizer_means_no_claims() {
        let rest = lambda_request(&rest_api_event(Value::Null));
        assert!(authorizer_claims(&rest).is_none());
        assert_eq!(call(rest).await, "none");

        let http_event = http_api_event(json!({}));
        let http_req = lambda_request(&http_event);
        assert!(authorizer_claims(&http_req).is_none());
        assert_eq!(call(http_req).await, "none");

        // A plain request (local server, tests): no context at all.
        let plain = http::Request::builder()
            .uri("/whoami")
            .body(lambda_http::Body::Empty)
            .expect("request");
        assert!(authorizer_claims(&plain).is_none());
        assert_eq!(call(plain).await, "none");
    }

    #[tokio::test]
    async fn context_built_directly_in_extensions() {
        // The V2 context structs are #[non_exhaustive]: build them from JSON.
        let ctx: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext =
            serde_json::from_value(json!({
                "http": {"method": "GET"},
                "authorizer": {"jwt": {"claims": {"sub": "user-3", "cognito:groups": "[admin]"}}}
            }))
            .expect("context");
        let req = http::Request::builder()
            .uri("/whoami")
            .extension(RequestContext::ApiGatewayV2(ctx))
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app().oneshot(req).await.expect("infallible");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(&body[..], b"user-3 admin=true");
    }
}
