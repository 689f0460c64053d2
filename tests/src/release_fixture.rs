//! Data written by a release, kept to test that later releases read it: a
//! scenario that stores keys of several shapes through byok-local's API
//! ([`populate`]), a dump of what that left in DynamoDB and Secrets Manager
//! ([`dump_aws`]) and its reload into a fresh table and secret prefix
//! ([`load_aws`]). The embedded store's fixture is its data directory,
//! copied as is. `tests/examples/release_fixtures.rs` writes a fixture;
//! `tests/fixtures/releases/` holds the ones written by earlier releases.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed step should stop the test loudly"
)]

use crate::http::Api;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// One key the scenario stored, as a reader should find it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpectedKey {
    pub user: String,
    pub service: String,
    /// The key in use (after any replacement).
    pub api_key: String,
    pub label: String,
    pub enabled: bool,
    /// A replacement staged for rotation, if any.
    pub pending: Option<String>,
}

/// Stores the scenario's keys through `base` (byok-local), minting tokens
/// with `token(user)`; returns what was stored. The upstream must accept
/// every key (staging checks the staged key with its provider).
pub async fn populate(base: &str, token: impl Fn(&str) -> String) -> Vec<ExpectedKey> {
    let ada = Api::new(base, Some(&token("ada")));
    let bo = Api::new(base, Some(&token("bo@example.com")));
    let save = |api: &Api, body: Value| {
        let api = api.clone();
        async move {
            let answer = api.post("/api/keys", body).await;
            assert!(answer.status.is_success(), "{}", answer.text);
        }
    };
    // Replaced once: the secret has a previous version.
    let first = "sk-proj-RELEASEFIXTUREada0000000001";
    let openai = "sk-proj-RELEASEFIXTUREada0000000002";
    save(
        &ada,
        json!({"service": "openai", "apiKey": first, "label": "Work"}),
    )
    .await;
    save(&ada, json!({"service": "openai", "apiKey": openai})).await;
    let staged = "sk-proj-RELEASEFIXTUREada0000000003";
    let answer = ada
        .put("/api/keys/openai/pending", json!({"apiKey": staged}))
        .await;
    assert!(answer.status.is_success(), "{}", answer.text);
    let anthropic = "sk-ant-api03-RELEASEFIXTUREada000000000004";
    save(
        &ada,
        json!({"service": "anthropic", "apiKey": anthropic, "label": "Old"}),
    )
    .await;
    let answer = ada
        .patch("/api/keys/anthropic", json!({"enabled": false}))
        .await;
    assert!(answer.status.is_success(), "{}", answer.text);
    let groq = "gsk_RELEASEFIXTUREbo00000000000000000005";
    save(&bo, json!({"service": "groq", "apiKey": groq})).await;
    let answer = bo
        .post("/api/user-settings", json!({"allowGatewayFallback": true}))
        .await;
    assert!(answer.status.is_success(), "{}", answer.text);
    vec![
        ExpectedKey {
            user: "ada".into(),
            service: "openai".into(),
            api_key: openai.into(),
            label: "Work".into(),
            enabled: true,
            pending: Some(staged.into()),
        },
        ExpectedKey {
            user: "ada".into(),
            service: "anthropic".into(),
            api_key: anthropic.into(),
            label: "Old".into(),
            enabled: false,
            pending: None,
        },
        ExpectedKey {
            user: "bo@example.com".into(),
            service: "groq".into(),
            api_key: groq.into(),
            label: "Groq".into(),
            enabled: true,
            pending: None,
        },
    ]
}

/// One secret as dumped: its name without the prefix, description, tags
/// and every labelled version with its value.
#[derive(Debug, Serialize, Deserialize)]
pub struct DumpedSecret {
    pub name: String,
    pub arn: String,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    /// (version id, stages, value)
    pub versions: Vec<(String, Vec<String>, String)>,
}

/// Everything a release left on AWS.
#[derive(Debug, Serialize, Deserialize)]
pub struct AwsDump {
    /// Items in DynamoDB's JSON form (`{"S": …}`, `{"N": …}`, …).
    pub items: Vec<Value>,
    pub secrets: Vec<DumpedSecret>,
}

/// Reads every item of `table` and every secret named under `prefix`.
pub async fn dump_aws(table: &str, prefix: &str) -> AwsDump {
    let dynamo = crate::aws::dynamo_client(None);
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = dynamo
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        for item in out.items() {
            items.push(Value::Object(
                item.iter()
                    .map(|(k, v)| (k.clone(), attr_to_json(v)))
                    .collect(),
            ));
        }
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => break,
        }
    }
    items.sort_by_key(|i| (i["pk"].to_string(), i["sk"].to_string()));

    let sm = crate::aws::secrets_client(None);
    let mut secrets = Vec::new();
    let listed = sm.list_secrets().max_results(100).send().await.unwrap();
    for entry in listed.secret_list() {
        let name = entry.name().unwrap_or_default();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let arn = entry.arn().unwrap().to_owned();
        let described = sm.describe_secret().secret_id(&arn).send().await.unwrap();
        let mut versions = Vec::new();
        for (version, stages) in described.version_ids_to_stages().into_iter().flatten() {
            let value = sm
                .get_secret_value()
                .secret_id(&arn)
                .version_id(version)
                .send()
                .await
                .unwrap();
            versions.push((
                version.clone(),
                stages.clone(),
                value.secret_string().unwrap().to_owned(),
            ));
        }
        versions.sort();
        secrets.push(DumpedSecret {
            name: rest.to_owned(),
            arn,
            description: described.description().map(str::to_owned),
            tags: described
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            versions,
        });
    }
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    AwsDump { items, secrets }
}

/// Recreates `dump` in `table` (which must exist) and under `prefix`:
/// secrets with the same names and version ids, items with their secret
/// ARNs changed to the new secrets'.
pub async fn load_aws(dump: &AwsDump, table: &str, prefix: &str) {
    let sm = crate::aws::secrets_client(None);
    let mut arns: HashMap<&str, String> = HashMap::new();
    for secret in &dump.secrets {
        // Oldest stage first, so the stages end where they were.
        let rank = |stages: &[String]| {
            if stages.iter().any(|s| s == "AWSPREVIOUS") {
                0
            } else if stages.iter().any(|s| s == "AWSCURRENT") {
                1
            } else {
                2
            }
        };
        let mut versions: Vec<&(String, Vec<String>, String)> = secret
            .versions
            .iter()
            .filter(|(_, stages, _)| !stages.is_empty())
            .collect();
        versions.sort_by_key(|(_, stages, _)| rank(stages));
        let name = format!("{prefix}{}", secret.name);
        let mut arn = None;
        for (version, stages, value) in versions {
            match &arn {
                None => {
                    let mut create = sm
                        .create_secret()
                        .name(&name)
                        .client_request_token(version)
                        .secret_string(value)
                        .set_description(secret.description.clone());
                    for (k, v) in &secret.tags {
                        create = create.tags(
                            aws_sdk_secretsmanager::types::Tag::builder()
                                .key(k)
                                .value(v)
                                .build(),
                        );
                    }
                    arn = Some(create.send().await.unwrap().arn.unwrap());
                }
                Some(arn) => {
                    let moved: Vec<String> = stages
                        .iter()
                        .filter(|s| *s != "AWSPREVIOUS")
                        .cloned()
                        .collect();
                    sm.put_secret_value()
                        .secret_id(arn)
                        .client_request_token(version)
                        .secret_string(value)
                        .set_version_stages(Some(moved))
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
        arns.insert(secret.arn.as_str(), arn.expect("a secret with a version"));
    }
    let dynamo = crate::aws::dynamo_client(None);
    for item in &dump.items {
        let mut attrs: HashMap<String, AttributeValue> = item
            .as_object()
            .expect("an item")
            .iter()
            .map(|(k, v)| (k.clone(), json_to_attr(v)))
            .collect();
        if let Some(AttributeValue::S(old)) = attrs.get("secretId")
            && let Some(new) = arns.get(old.as_str())
        {
            attrs.insert("secretId".into(), AttributeValue::S(new.clone()));
        }
        dynamo
            .put_item()
            .table_name(table)
            .set_item(Some(attrs))
            .send()
            .await
            .unwrap();
    }
}

fn attr_to_json(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(attr_to_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => {
            let map: Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), attr_to_json(v)))
                .collect();
            json!({ "M": map })
        }
        AttributeValue::Ss(s) => json!({ "SS": s }),
        AttributeValue::Ns(n) => json!({ "NS": n }),
        other => panic!("an attribute type the fixtures do not use: {other:?}"),
    }
}

fn json_to_attr(v: &Value) -> AttributeValue {
    let (kind, value) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("a typed attribute");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    match kind.as_str() {
        "S" => AttributeValue::S(value.as_str().unwrap().to_owned()),
        "N" => AttributeValue::N(value.as_str().unwrap().to_owned()),
        "BOOL" => AttributeValue::Bool(value.as_bool().unwrap()),
        "NULL" => AttributeValue::Null(true),
        "L" => AttributeValue::L(value.as_array().unwrap().iter().map(json_to_attr).collect()),
        "M" => AttributeValue::M(
            value
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
        "SS" => AttributeValue::Ss(strings(value)),
        "NS" => AttributeValue::Ns(strings(value)),
        other => panic!("unknown attribute type {other}"),
    }
}
