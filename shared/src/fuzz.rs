//! Property tests over everything that reads untrusted input: model ids,
//! base URLs, tokens, request bodies, SSE streams, Anthropic stream
//! translation and DynamoDB items. Each property says the reader never
//! panics and holds its contract on arbitrary input; proptest shrinks any
//! failure to a minimal case, which then becomes a regression test. The
//! case counts (2,048 per property) keep the whole set to a few seconds.

use crate::auth::{JwtSecret, TokenVerifier};
use crate::domain::{ModelId, UserBaseUrl};
use crate::providers::anthropic::StreamTranslator;
use crate::providers::raw_object::{JsonStats, RawObject};
use crate::providers::sse::EventSplitter;
use bytes::Bytes;
use proptest::prelude::*;

/// Arbitrary JSON text of bounded size and depth.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn model_ids_parse_without_panicking_and_round_trip(raw in "\\PC{0,80}") {
        if let Ok(id) = ModelId::parse(&raw) {
            let canonical = id.canonical();
            prop_assert_eq!(ModelId::parse(&canonical).map(|again| again.canonical()), Ok(canonical));
        }
    }

    #[test]
    fn accepted_base_urls_are_https_on_a_public_host(raw in "(https?://)?[a-z0-9.:\\[\\]@/%-]{0,60}") {
        if let Ok(accepted) = UserBaseUrl::parse(&raw) {
            let url = url::Url::parse(accepted.as_str())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(url.scheme(), "https");
            prop_assert!(url.username().is_empty() && url.password().is_none(), "{}", accepted.as_str());
            prop_assert!(url.query().is_none() && url.fragment().is_none());
            prop_assert!(url.host().is_some());
        }
    }

    #[test]
    fn arbitrary_tokens_are_refused_without_panicking(raw in "[A-Za-z0-9_.=-]{0,300}") {
        let secret = JwtSecret::from_text("fuzz-secret-long-enough-0123456789abcdef")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verifier = TokenVerifier::new(secret, None, None);
        prop_assert!(verifier.verify(&raw, 1_750_000_000).is_err());
    }

    #[test]
    fn forged_payloads_under_a_real_header_are_refused(payload in json_value()) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let secret = JwtSecret::from_text("fuzz-secret-long-enough-0123456789abcdef")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let token = format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"HS256"}"#),
            b64.encode(payload.to_string()),
            b64.encode([7u8; 32])
        );
        prop_assert!(TokenVerifier::new(secret, None, None).verify(&token, 1_750_000_000).is_err());
    }

    #[test]
    fn request_bodies_round_trip_through_the_raw_object(body in json_value()) {
        let text = body.to_string();
        // What a direct parse of the same text gives (serde_json's float
        // parsing may differ from `body` in the last bit).
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match RawObject::parse(Bytes::from(text.clone())) {
            Ok(object) => {
                let again: serde_json::Value = serde_json::from_slice(&object.to_bytes())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&again, &body);
                let tree = object.to_value().ok();
                prop_assert_eq!(tree.as_ref(), Some(&body));
                prop_assert!(object.stats().is_ok());
            }
            Err(_) => prop_assert!(!body.is_object()),
        }
        prop_assert!(JsonStats::of(&text).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_body_readers(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = RawObject::parse(Bytes::from(bytes.clone()));
        let _ = JsonStats::of(&String::from_utf8_lossy(&bytes));
        let mut split = EventSplitter::new();
        let _ = split.push(&bytes);
        let _ = split.finish();
    }

    #[test]
    fn anthropic_stream_translation_never_panics(
        events in prop::collection::vec(
            (
                prop_oneof![
                    Just("message_start"), Just("content_block_start"), Just("content_block_delta"),
                    Just("content_block_stop"), Just("message_delta"), Just("message_stop"),
                    Just("ping"), Just("error"), Just("unknown"),
                ],
                json_value(),
            ),
            0..12,
        )
    ) {
        let mut translator = StreamTranslator::new("anthropic/claude-sonnet-4.5", 1_750_000_000, true);
        for (name, data) in events {
            match translator.push(name, &data.to_string()) {
                Ok(chunks) => {
                    for chunk in chunks {
                        prop_assert!(serde_json::from_str::<serde_json::Value>(&chunk).is_ok(), "{}", chunk);
                    }
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn dynamodb_items_of_any_shape_decode_without_panicking(
        fields in prop::collection::btree_map(
            prop_oneof![
                Just("pk".to_owned()), Just("sk".to_owned()), Just("label".to_owned()),
                Just("maskedKey".to_owned()), Just("secretRef".to_owned()), Just("enabled".to_owned()),
                Just("createdAt".to_owned()), Just("updatedAt".to_owned()), Just("revision".to_owned()),
                Just("service".to_owned()), Just("lastValidation".to_owned()), "[a-zA-Z]{1,12}",
            ],
            prop_oneof![
                ".{0,24}".prop_map(aws_sdk_dynamodb::types::AttributeValue::S),
                "-?[0-9]{1,20}".prop_map(aws_sdk_dynamodb::types::AttributeValue::N),
                any::<bool>().prop_map(aws_sdk_dynamodb::types::AttributeValue::Bool),
                Just(aws_sdk_dynamodb::types::AttributeValue::Null(true)),
            ],
            0..12,
        )
    ) {
        let item: std::collections::HashMap<_, _> = fields.into_iter().collect();
        crate::store::dynamo::decode_any(&item);
    }
}
