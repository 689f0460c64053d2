//! Data written by earlier releases is read by this one with every key
//! intact and usable: each fixture under `tests/fixtures/releases/` (a data
//! directory, and a dump of a DynamoDB table with its Secrets Manager
//! secrets, written by `examples/release_fixtures.rs` at that release) is
//! opened by today's byok-local; every stored key is listed as it was
//! saved, and every enabled key (and a disabled one once enabled) reaches
//! the upstream as exactly the key that was stored.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::http::Api;
use byok_tests::release_fixture::{AwsDump, ExpectedKey, load_aws};
use byok_tests::stores::{Mode, start_with};
use byok_tests::upstream::StandIn;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

fn releases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/releases");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    assert!(
        !found.is_empty(),
        "no release fixtures in {}",
        dir.display()
    );
    found
}

fn expected(release: &Path) -> Vec<ExpectedKey> {
    serde_json::from_slice(&std::fs::read(release.join("keys.json")).unwrap()).unwrap()
}

/// A model each service serves, for a completion through its key.
fn model_of(service: &str) -> &'static str {
    match service {
        "openai" => "openai/gpt-4o-mini",
        "anthropic" => "anthropic/claude-3-5-haiku-20241022",
        "groq" => "groq/llama-3.1-8b-instant",
        other => panic!("no model for {other}"),
    }
}

/// The fixture's data directory, copied where byok-local may own it
/// (private modes, as it requires).
fn copy_data_dir(release: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(release.join("embedded")).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        std::fs::copy(&path, &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

async fn reads_every_release(mode: Mode) {
    for release in releases() {
        let keys = expected(&release);
        let stand_in = StandIn::start().await;
        stand_in.accept_keys(keys.iter().map(|k| k.api_key.clone()));
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        if mode == Mode::Embedded {
            copy_data_dir(&release, &data);
        }
        let (server, env) = start_with(mode, &stand_in, &data, &[]);
        if mode == Mode::Aws {
            let var = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
            let dump: AwsDump =
                serde_json::from_slice(&std::fs::read(release.join("aws.json")).unwrap()).unwrap();
            load_aws(&dump, &var("BYOK_TABLE_NAME"), &var("BYOK_SECRET_PREFIX")).await;
        }
        let name = release.file_name().unwrap().to_string_lossy().into_owned();
        for key in &keys {
            let api = Api::new(&server.base, Some(&server.token(&key.user, false)));
            let listed = api.get("/api/keys").await;
            assert_eq!(listed.status.as_u16(), 200, "{name}: {}", listed.text);
            let body: Value = serde_json::from_str(&listed.text).unwrap();
            let record = body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["service"] == key.service.as_str())
                .unwrap_or_else(|| panic!("{name}: {} {} listed: {body}", key.user, key.service));
            assert_eq!(record["label"], key.label.as_str(), "{name}: {record}");
            assert_eq!(record["enabled"], key.enabled, "{name}: {record}");
            let masked = record["maskedKey"].as_str().unwrap();
            let tail = &key.api_key[key.api_key.len() - 4..];
            assert!(masked.ends_with(tail), "{name}: {masked}");
            assert_eq!(
                record.get("pending").is_some_and(|p| !p.is_null()),
                key.pending.is_some(),
                "{name}: {record}"
            );
            if !key.enabled {
                let enabled = api
                    .patch(
                        &format!("/api/keys/{}", key.service),
                        json!({"enabled": true}),
                    )
                    .await;
                assert!(enabled.status.is_success(), "{name}: {}", enabled.text);
            }
            let before = stand_in.requests().len();
            let answer = api
                .post(
                    "/v1/chat/completions",
                    json!({"model": model_of(&key.service), "messages": [{"role": "user", "content": "hi"}]}),
                )
                .await;
            assert_eq!(answer.status.as_u16(), 200, "{name}: {}", answer.text);
            let sent: Vec<String> = stand_in.requests()[before..]
                .iter()
                .map(|r| r.key.clone())
                .collect();
            assert_eq!(
                sent,
                vec![key.api_key.clone()],
                "{name}: {} {}",
                key.user,
                key.service
            );
        }
        drop(server);
        stand_in.shutdown().await;
    }
}

byok_tests::on_every_store!(reads_every_release);
