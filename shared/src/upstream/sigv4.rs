//! AWS Signature Version 4 for calls to Amazon Bedrock with a user's
//! access key: the headers that authenticate one request (`authorization`,
//! `x-amz-date`, and `x-amz-security-token` for temporary credentials),
//! computed over its method, URL, signed headers and body by `aws-sigv4`,
//! the AWS SDK's own signer (already in the build through the SDK), so a
//! per-request static credential needs no SDK client per user.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// A signing failure (a URL or header the signer cannot read); never
/// carries the secret.
#[derive(Debug, thiserror::Error)]
#[error("the request could not be signed: {0}")]
pub struct SigningError(String);

/// The access key a request is signed with.
pub struct SigningKey<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// The request to sign: its `headers` (`host` among them) are signed.
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers to add to `request` for AWS `service` in `region` at `time`.
pub fn signature_headers(
    key: &SigningKey<'_>,
    service: &str,
    region: &str,
    time: SystemTime,
    request: &Unsigned<'_>,
) -> Result<Vec<(&'static str, String)>, SigningError> {
    let identity = aws_credential_types::Credentials::new(
        key.access_key_id,
        key.secret_access_key,
        key.session_token.map(str::to_owned),
        None,
        "byok",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SigningError(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| SigningError(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SigningError(e.to_string()))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .filter_map(|header| {
            let name = match header.name() {
                "authorization" => "authorization",
                "x-amz-date" => "x-amz-date",
                "x-amz-security-token" => "x-amz-security-token",
                "x-amz-content-sha256" => "x-amz-content-sha256",
                _ => return None,
            };
            Some((name, header.value().to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// AWS's own test vector `get-vanilla` (SigV4 test suite): GET / on
    /// example.amazonaws.com, service `service`, 2015-08-30T12:36:00Z.
    #[test]
    fn signs_the_aws_test_vector() {
        let key = SigningKey {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
        };
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let headers = signature_headers(
            &key,
            "service",
            "us-east-1",
            time,
            &Unsigned {
                method: "GET",
                url: "https://example.amazonaws.com/",
                headers: &[("host", "example.amazonaws.com")],
                body: b"",
            },
        )
        .unwrap();
        let get = |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert!(!format!("{headers:?}").contains("wJalr"));
    }

    #[test]
    fn temporary_credentials_send_their_token_and_bodies_change_the_signature() {
        let key = SigningKey {
            access_key_id: "ASIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session_token: Some("IQoJb3JpZ2luX2VjEXAMPLE"),
        };
        let sign_body = |body: &[u8]| {
            signature_headers(
                &key,
                "bedrock",
                "us-east-1",
                UNIX_EPOCH + Duration::from_secs(1_750_000_000),
                &Unsigned {
                    method: "POST",
                    url: "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse",
                    headers: &[
                        ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
                        ("content-type", "application/json"),
                    ],
                    body,
                },
            )
            .unwrap()
        };
        let a = sign_body(b"{}");
        let b = sign_body(b"{\"x\":1}");
        assert_ne!(a, b);
        assert_eq!(a, sign_body(b"{}"), "deterministic");
        assert!(
            a.iter()
                .any(|(n, v)| *n == "x-amz-security-token" && v == "IQoJb3JpZ2luX2VjEXAMPLE")
        );
    }
}
