//! Keeps `infra/openapi.json` in step with the code: the same routes as
//! `byok::http::ROUTES`, the same error codes as `byok::http::ErrorCode`, and
//! a document whose references, operation ids, security and request bodies
//! are sound.

use std::collections::BTreeSet;

use byok::http::{ErrorCode, ROUTES};
use serde_json::Value;

const SPEC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../infra/openapi.json"
));

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Result<Value, String> {
    serde_json::from_str(SPEC).map_err(|e| format!("infra/openapi.json is not JSON: {e}"))
}

/// Every operation as (METHOD, path, operation object).
fn operations(spec: &Value) -> Result<Vec<(String, String, &Value)>, String> {
    let paths = spec["paths"]
        .as_object()
        .ok_or("`paths` is not an object")?;
    let mut ops = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .ok_or_else(|| format!("path item {path} is not an object"))?;
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    Ok(ops)
}

/// Follows `$ref`s (local only) until reaching an object without one.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..32 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return Ok(value);
        };
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| format!("non-local $ref {reference}"))?;
        value = spec
            .pointer(pointer)
            .ok_or_else(|| format!("unresolved $ref {reference}"))?;
    }
    Err("$ref chain too long".to_owned())
}

/// Every `$ref` string anywhere in `value`.
fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn is_openapi_3_1() {
    let spec = spec().unwrap();
    let version = spec["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3.1"), "openapi = {version}");
}

#[test]
fn operations_match_routes() {
    let spec = spec().unwrap();
    let documented: BTreeSet<(String, String)> = operations(&spec)
        .unwrap()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_uppercase(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(served.len(), ROUTES.len(), "ROUTES has duplicates");
}

#[test]
fn error_codes_match() {
    let spec = spec().unwrap();
    let mut documented: Vec<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode has an enum")
        .iter()
        .map(|v| v.as_str().expect("ErrorCode values are strings"))
        .collect();
    let mut served: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    documented.sort_unstable();
    served.sort_unstable();
    assert_eq!(documented, served);

    // The envelope uses that enum.
    let error = resolve(&spec, &spec["components"]["schemas"]["Error"]).unwrap();
    assert_eq!(
        error["properties"]["error"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
}

/// The documented services are the registered providers, in their order.
#[test]
fn services_match_the_providers() {
    let spec = spec().unwrap();
    let documented: Vec<&str> = spec["components"]["schemas"]["Service"]["enum"]
        .as_array()
        .expect("Service has an enum")
        .iter()
        .map(|v| v.as_str().expect("Service values are strings"))
        .collect();
    let served: Vec<&str> = byok::domain::Service::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn every_ref_resolves() {
    let spec = spec().unwrap();
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        assert!(
            reference.starts_with("#/components/"),
            "$ref outside #/components: {reference}"
        );
        let pointer = &reference[1..];
        assert!(
            spec.pointer(pointer).is_some(),
            "unresolved $ref {reference}"
        );
    }
}

#[test]
fn operation_ids_are_unique() {
    let spec = spec().unwrap();
    let mut seen = BTreeSet::new();
    for (method, path, op) in operations(&spec).unwrap() {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(!id.is_empty(), "{method} {path} has an empty operationId");
        assert!(seen.insert(id), "operationId {id} is used twice");
    }
}

#[test]
fn only_healthz_is_public() {
    let spec = spec().unwrap();
    assert!(
        spec["components"]["securitySchemes"]["bearerAuth"].is_object(),
        "bearerAuth scheme is defined"
    );
    let global = spec["security"]
        .as_array()
        .expect("global `security` is set");
    assert!(
        global.iter().any(|req| req.get("bearerAuth").is_some()),
        "global security requires bearerAuth"
    );

    let public = Value::Array(Vec::new());
    for (method, path, op) in operations(&spec).unwrap() {
        let overrides_to_public = op.get("security") == Some(&public);
        if (method.as_str(), path.as_str()) == ("GET", "/healthz") {
            assert!(overrides_to_public, "GET /healthz must have `security: []`");
        } else {
            assert!(
                !overrides_to_public,
                "{method} {path} must not have `security: []`"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents no 401"
            );
        }
    }
}

#[test]
fn api_request_bodies_refuse_unknown_fields() {
    let spec = spec().unwrap();
    let mut bodies = 0;
    for (method, path, op) in operations(&spec).unwrap() {
        if !path.starts_with("/api/") {
            continue;
        }
        let Some(body) = op.get("requestBody") else {
            continue;
        };
        let body = resolve(&spec, body).unwrap();
        let content = body["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: request body has no content"));
        for (media_type, media) in content {
            let schema = resolve(&spec, &media["schema"]).unwrap();
            assert_eq!(
                schema.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{method} {path} ({media_type}): request schema must set additionalProperties: false"
            );
            bodies += 1;
        }
    }
    assert!(bodies > 0, "no request bodies found under /api/");
}
