//! The AWS backends on the request path, counted call by call against the
//! local AWS API emulator: one DynamoDB round trip per resolution, zero
//! Secrets Manager calls for a warm secret, no stale key after replacement,
//! and team keys read from Secrets Manager ARNs at start.

use byok::config::Config;
use byok::domain::{ApiKey, Service, UserId};
use byok::keys::{KeyService, KeyUpsert};
use byok::resolve::{CredentialSource, Resolver, TeamCredentials, Upstreams};
use byok::store::SecretStore;
use byok::store::cache::CachedSecretStore;
use byok::store::dynamo::{DynamoMetadataStore, ensure_table};
use byok::store::secrets_manager::{SecretDeletion, SecretsManagerOptions, SecretsManagerStore};
use byok_tests::aws::{CallCounter, dynamo_client, secrets_client, unique_name};
use std::sync::Arc;
use std::time::Duration;

fn secrets_store(counter: Option<CallCounter>, prefix: &str) -> SecretsManagerStore {
    SecretsManagerStore::new(
        secrets_client(counter),
        SecretsManagerOptions {
            prefix: prefix.to_owned(),
            kms_key_id: None,
            deletion: SecretDeletion::Force,
        },
    )
}

fn upsert(service: Service, key: &str) -> KeyUpsert {
    KeyUpsert {
        service,
        api_key: ApiKey::new(key),
        base_url: None,
        label: None,
    }
}

#[tokio::test]
async fn warm_requests_make_one_query_and_no_secret_calls_and_never_serve_a_stale_key() {
    let table = unique_name("hot-path");
    let prefix = format!("{}/", unique_name("hot-path"));
    ensure_table(&dynamo_client(None), &table).await.unwrap();

    // The keys function (its own process on Lambda): uncounted clients.
    let writer = KeyService::new(
        Arc::new(DynamoMetadataStore::new(dynamo_client(None), table.clone())),
        Arc::new(secrets_store(None, &prefix)),
    );
    let user = UserId::new(unique_name("user")).unwrap();
    let first = "sk-proj-hotpath-first-000000001";
    writer
        .upsert(&user, upsert(Service::OpenAi, first))
        .await
        .unwrap();

    // A reading function: counted clients, the version-aware cache.
    let dynamo_calls = CallCounter::default();
    let secret_calls = CallCounter::default();
    let resolver = Resolver::new(
        Arc::new(DynamoMetadataStore::new(
            dynamo_client(Some(dynamo_calls.clone())),
            table,
        )),
        Arc::new(TeamCredentials::default()),
        Arc::new(Upstreams::default()),
    );
    let cache = CachedSecretStore::new(
        Arc::new(secrets_store(Some(secret_calls.clone()), &prefix)),
        64,
        Duration::from_secs(300),
    );
    let serve = || async {
        let r = resolver.resolve(&user, "gpt-4o-mini").await.unwrap();
        let CredentialSource::User(secret) = r.credential else {
            panic!("a user key serves: {r:?}");
        };
        cache.get_secret(&secret).await.unwrap()
    };

    assert_eq!(serve().await.expose(), first);
    assert_eq!(dynamo_calls.total(), 1, "one round trip per resolution");
    assert_eq!(dynamo_calls.count("Query"), 1);
    assert_eq!(secret_calls.count("GetSecretValue"), 1, "the cold read");

    for n in 2..=20 {
        assert_eq!(serve().await.expose(), first);
        assert_eq!(
            dynamo_calls.total(),
            n,
            "still one DynamoDB call per request"
        );
    }
    assert_eq!(
        secret_calls.total(),
        1,
        "warm requests make zero Secrets Manager calls"
    );

    // Replaced elsewhere: the very next request uses the new key.
    let second = "sk-proj-hotpath-second-00000002";
    writer
        .upsert(&user, upsert(Service::OpenAi, second))
        .await
        .unwrap();
    assert_eq!(
        serve().await.expose(),
        second,
        "no stale window after replacement"
    );
    assert_eq!(secret_calls.count("GetSecretValue"), 2);
    assert_eq!(serve().await.expose(), second);
    assert_eq!(secret_calls.total(), 2, "and warm again");

    writer.delete(&user, Service::OpenAi).await.unwrap();
}

#[tokio::test]
async fn team_keys_come_from_secrets_manager_arns_at_start() {
    let sm = secrets_client(None);
    let name = unique_name("team-gateway");
    let arn = sm
        .create_secret()
        .name(&name)
        .secret_string(r#"{"apiKey":"vck_teamfromsecret000000000001"}"#)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let table = unique_name("team");
    let vars = [
        ("BYOK_STORE", "aws"),
        ("BYOK_TABLE_NAME", table.as_str()),
        ("BYOK_CREATE_TABLE", "true"),
        ("BYOK_TEAM_GATEWAY_SECRET_ARN", arn.as_str()),
    ];
    let config = Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let stores = byok::app::open_stores(&config).await.unwrap();
    assert_eq!(
        stores.team.get(Service::Gateway).map(ApiKey::expose),
        Some("vck_teamfromsecret000000000001")
    );
    let state = byok::app::state(&config, stores, None).unwrap();
    let user = UserId::new("team-user").unwrap();
    let r = state.resolver.resolve(&user, "gpt-4o").await.unwrap();
    assert_eq!(r.path.as_str(), "team-gateway");
    sm.delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
}
