//! The AWS backends on the request path, counted call by call against the
//! local AWS API emulator: one DynamoDB round trip per resolution, zero
//! Secrets Manager calls for a warm secret, no stale key after replacement,
//! and team keys read from Secrets Manager ARNs at start. The same holds for
//! whole completions through the completion service, against the provider
//! stand-in. The usage ledger is read without a Scan: a user's month is one
//! Query, the operator's view a Query per day and shard.

use byok::completion::{
    CompletionBody, CompletionService, Outcome, RequestContext, UpstreamClient, UsageRecord,
    UsageSink,
};
use byok::config::Config;
use byok::config::UpstreamTimeouts;
use byok::domain::{ApiKey, Service, UserId};
use byok::keys::{KeyService, KeyUpsert};
use byok::resolve::{CredentialSource, Resolver, TeamCredentials, Upstreams};
use byok::store::SecretStore;
use byok::store::cache::CachedSecretStore;
use byok::store::dynamo::{DynamoMetadataStore, ensure_table};
use byok::store::secrets_manager::{SecretDeletion, SecretsManagerOptions, SecretsManagerStore};
use byok_tests::aws::{CallCounter, dynamo_client, secrets_client, unique_name};
use byok_tests::upstream::{StandIn, Upstream};
use futures_util::StreamExt as _;
use std::sync::{Arc, Mutex};
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

/// A team gateway secret holding `value`, and a configuration naming it
/// (AWS store on a new table); the secret's ARN, to delete it.
#[expect(
    clippy::unwrap_used,
    reason = "test setup: a failed step stops the test"
)]
async fn team_gateway_secret(value: &str, label: &str) -> (Config, String) {
    let arn = secrets_client(None)
        .create_secret()
        .name(unique_name(label))
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let table = unique_name(label);
    let config = config_of(&[
        ("BYOK_STORE", "aws"),
        ("BYOK_TABLE_NAME", table.as_str()),
        ("BYOK_CREATE_TABLE", "true"),
        ("BYOK_TEAM_GATEWAY_SECRET_ARN", arn.as_str()),
    ]);
    (config, arn)
}

/// Deletes a secret at once (no recovery window).
#[expect(
    clippy::unwrap_used,
    reason = "test cleanup: a failed step stops the test"
)]
async fn delete_secret(id: &str) {
    secrets_client(None)
        .delete_secret()
        .secret_id(id)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
}

/// The configuration these variables (and no others) give.
#[expect(
    clippy::unwrap_used,
    reason = "test setup: a failed step stops the test"
)]
fn config_of(vars: &[(&str, &str)]) -> Config {
    Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap()
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
        .upsert(&user, upsert(Service::OpenAi, first), "test")
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
        cache.get_secret(&secret.secret).await.unwrap()
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
        .upsert(&user, upsert(Service::OpenAi, second), "test")
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

    writer
        .delete(&user, Service::OpenAi, None, "test")
        .await
        .unwrap();
}

#[tokio::test]
async fn team_keys_come_from_secrets_manager_arns_at_start() {
    let (config, arn) =
        team_gateway_secret(r#"{"apiKey":"vck_teamfromsecret000000000001"}"#, "team").await;
    let stores = byok::app::open_stores(&config).await.unwrap();
    assert_eq!(
        stores
            .team
            .get(Service::Gateway)
            .as_ref()
            .map(ApiKey::expose),
        Some("vck_teamfromsecret000000000001")
    );
    let state = byok::app::state(&config, stores, None).unwrap();
    let user = UserId::new("team-user").unwrap();
    let r = state.resolver.resolve(&user, "gpt-4o").await.unwrap();
    assert_eq!(r.path.as_str(), "team-gateway");
    delete_secret(&arn).await;
}

/// Each Lambda function opens only what its routes use: the validate and
/// completion functions read the team secrets, the models function only
/// learns which team keys exist (no read), the keys, settings and rotation
/// functions ignore them.
#[tokio::test]
async fn only_the_functions_that_call_upstream_with_team_keys_read_them() {
    use byok::app::Function;
    let (config, arn) =
        team_gateway_secret("vck_teamperfunction0000000000001", "per-function").await;
    let user = UserId::new("per-function-user").unwrap();
    for (function, knows, reads) in [
        (Function::Completion, true, true),
        (Function::Validate, true, true),
        (Function::Models, true, false),
        (Function::Keys, false, false),
        (Function::Settings, false, false),
        (Function::Rotation, false, false),
    ] {
        let stores = byok::app::open_stores_for(&config, function).await.unwrap();
        assert_eq!(stores.team.has(Service::Gateway), knows, "{function:?}");
        assert_eq!(
            stores.team.get(Service::Gateway).is_some(),
            reads,
            "{function:?}"
        );
        let state = byok::app::state(&config, stores, None).unwrap();
        let resolved = state.resolver.resolve(&user, "gpt-4o").await;
        assert_eq!(
            resolved.map(|r| r.path.as_str()).ok(),
            knows.then_some("team-gateway"),
            "{function:?}"
        );
    }
    delete_secret(&arn).await;
}

/// A team secret that cannot be read at start does not stop the process:
/// it serves without that team key (`no_credential`) and picks the key up
/// once the secret can be read, retrying in the background.
#[tokio::test]
async fn an_unreadable_team_secret_is_retried_not_fatal() {
    let sm = secrets_client(None);
    let name = unique_name("team-later");
    let table = unique_name("team-later");
    let vars = [
        ("BYOK_STORE", "aws"),
        ("BYOK_TABLE_NAME", table.as_str()),
        ("BYOK_CREATE_TABLE", "true"),
        // Not there yet (a name: GetSecretValue takes names as well as ARNs).
        ("BYOK_TEAM_GATEWAY_SECRET_ARN", name.as_str()),
    ];
    let config = config_of(&vars);
    let started = std::time::Instant::now();
    let stores = byok::app::open_stores(&config).await.unwrap();
    assert!(stores.team.get(Service::Gateway).is_none());
    let state = byok::app::state(&config, stores, None).unwrap();
    let user = UserId::new("team-later-user").unwrap();
    let refused = state.resolver.resolve(&user, "gpt-4o").await;
    assert!(
        matches!(refused, Err(byok::resolve::ResolveError::NoCredential)),
        "{refused:?}"
    );

    sm.create_secret()
        .name(&name)
        .secret_string("vck_teamlater00000000000000000001")
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let served = loop {
        match state.resolver.resolve(&user, "gpt-4o").await {
            Ok(r) => break r,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(err) => panic!("the team key never arrived: {err}"),
        }
    };
    assert_eq!(served.path.as_str(), "team-gateway");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "retried with backoff"
    );
    delete_secret(&name).await;
}

/// Keeps every usage record, for assertions.
#[derive(Default)]
struct KeptUsage(Mutex<Vec<UsageRecord>>);

#[async_trait::async_trait]
impl UsageSink for KeptUsage {
    async fn record(&self, record: UsageRecord) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record);
    }
}

/// A stand-in answering with usage (8, 3), a new table and secret prefix
/// named after `name`, and a user whose OpenAI `key` is stored there
/// (through uncounted clients): (stand-in, table, prefix, writer, user).
#[expect(
    clippy::unwrap_used,
    reason = "test setup: a failed step stops the test"
)]
async fn one_stored_key(name: &str, key: &str) -> (StandIn, String, String, KeyService, UserId) {
    let stand_in = StandIn::start().await;
    stand_in.set_usage(Some((8, 3)));
    let table = unique_name(name);
    let prefix = format!("{}/", unique_name(name));
    ensure_table(&dynamo_client(None), &table).await.unwrap();
    let writer = KeyService::new(
        Arc::new(DynamoMetadataStore::new(dynamo_client(None), table.clone())),
        Arc::new(secrets_store(None, &prefix)),
    );
    let user = UserId::new(unique_name("user")).unwrap();
    writer
        .upsert(&user, upsert(Service::OpenAi, key), "test")
        .await
        .unwrap();
    (stand_in, table, prefix, writer, user)
}

/// One streamed completion of `body`, read to its `[DONE]`.
#[expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test step: a failed step stops the test"
)]
async fn stream_one(service: &CompletionService, ctx: &RequestContext, body: &str) {
    let completion = service.complete(ctx, body.as_bytes()).await.unwrap();
    let CompletionBody::Stream(stream) = completion.body else {
        panic!("a stream was asked for");
    };
    let bytes: Vec<u8> = stream
        .flat_map(|b| futures_util::stream::iter(b.to_vec()))
        .collect()
        .await;
    assert!(
        String::from_utf8(bytes)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
}

/// Waits until `user`'s key has its first use recorded: written once, off
/// the request's path (read through an uncounted client).
#[expect(
    clippy::unwrap_used,
    reason = "test step: a failed step stops the test"
)]
async fn first_use_recorded(writer: &KeyService, user: &UserId) {
    for _ in 0..200 {
        let keys = writer.list(user).await.unwrap();
        if keys.first().is_some_and(|k| k.last_used_at.is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn warm_completions_make_one_query_and_no_secret_calls() {
    let key = "sk-proj-hotcompletion-0000000001";
    let (stand_in, table, prefix, writer, user) = one_stored_key("hot-completion", key).await;

    let dynamo_calls = CallCounter::default();
    let secret_calls = CallCounter::default();
    let mut upstreams = Upstreams::default();
    upstreams.set(Service::OpenAi, stand_in.base_for(Upstream::OpenAi));
    let resolver = Arc::new(Resolver::new(
        Arc::new(DynamoMetadataStore::new(
            dynamo_client(Some(dynamo_calls.clone())),
            table,
        )),
        Arc::new(TeamCredentials::default()),
        Arc::new(upstreams),
    ));
    let secrets = Arc::new(CachedSecretStore::new(
        Arc::new(secrets_store(Some(secret_calls.clone()), &prefix)),
        64,
        Duration::from_secs(300),
    ));
    let usage = Arc::new(KeptUsage::default());
    let timeouts = UpstreamTimeouts::default();
    let service = CompletionService::new(
        resolver,
        secrets,
        UpstreamClient::new(&timeouts).unwrap(),
        Vec::new(),
        usage.clone(),
        timeouts,
    );
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "hi"}]
    })
    .to_string();

    let ctx = RequestContext::user(user.clone());
    for n in 1..=10 {
        stream_one(&service, &ctx, &body).await;
        if n == 1 {
            first_use_recorded(&writer, &user).await;
        }
        assert_eq!(
            dynamo_calls.total(),
            n + 1,
            "one DynamoDB read per completion, and the first use written once"
        );
        assert_eq!(dynamo_calls.count("Query"), n);
        assert_eq!(dynamo_calls.count("UpdateItem"), 1);
        assert_eq!(secret_calls.total(), 1, "only the cold secret read");
    }
    assert!(stand_in.requests().iter().all(|r| r.key == key));

    let records = usage.0.lock().unwrap().clone();
    assert_eq!(
        records.len(),
        10,
        "one usage record per completion, written before the stream ended"
    );
    for r in &records {
        assert_eq!(r.outcome, Outcome::Completed);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(8), Some(3)));
        assert_eq!(r.provider, Service::OpenAi);
        assert_eq!(r.path.as_str(), "user-provider");
        assert_eq!(r.model, "openai/gpt-4o-mini");
        assert!(r.stream);
        let ttfb = r.time_to_first_byte.unwrap();
        assert!(ttfb <= r.duration);
    }
    writer
        .delete(&user, Service::OpenAi, None, "test")
        .await
        .unwrap();
    stand_in.shutdown().await;
}

/// What a warm completion costs on AWS with the usage ledger and a request
/// limit on (as deployed), counted per call: on a user's own key, one
/// `Query` (resolution), one `UpdateItem` for the limiter, two for the
/// ledger's day aggregates and one `PutItem` for its raw entry; no Secrets
/// Manager call.
#[tokio::test]
async fn a_warm_completion_makes_one_read_and_four_writes() {
    let key = "sk-proj-hotledger-00000000000001";
    let (stand_in, table, prefix, writer, user) = one_stored_key("hot-ledger", key).await;

    let dynamo_calls = CallCounter::default();
    let secret_calls = CallCounter::default();
    let store = Arc::new(DynamoMetadataStore::new(
        dynamo_client(Some(dynamo_calls.clone())),
        table,
    ));
    let mut upstreams = Upstreams::default();
    upstreams.set(Service::OpenAi, stand_in.base_for(Upstream::OpenAi));
    let resolver = Arc::new(Resolver::new(
        store.clone(),
        Arc::new(TeamCredentials::default()),
        Arc::new(upstreams),
    ));
    let secrets = Arc::new(CachedSecretStore::new(
        Arc::new(secrets_store(Some(secret_calls.clone()), &prefix)),
        64,
        Duration::from_secs(300),
    ));
    let catalog = Arc::new(byok::catalog::Catalog::builtin().unwrap());
    let ledger =
        byok::usage::UsageLedger::new(store.clone(), catalog, Some(Duration::from_secs(86_400)));
    let timeouts = UpstreamTimeouts::default();
    let service = CompletionService::new(
        resolver,
        secrets,
        UpstreamClient::new(&timeouts).unwrap(),
        Vec::new(),
        Arc::new(ledger),
        timeouts,
    )
    .with_limits(byok::completion::RequestLimits::new(
        store,
        Some(1000),
        Some(1000),
    ));
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "hi"}]
    })
    .to_string();
    let ctx = RequestContext::user(user.clone());
    // Cold: the secret is read and the key's first use written.
    stream_one(&service, &ctx, &body).await;
    first_use_recorded(&writer, &user).await;
    dynamo_calls.reset();
    secret_calls.reset();
    for n in 1..=5 {
        // The ledger is written before the stream ends.
        stream_one(&service, &ctx, &body).await;
        let calls = dynamo_calls.snapshot();
        assert_eq!(calls.get("Query").copied(), Some(n), "{calls:?}");
        assert_eq!(calls.get("UpdateItem").copied(), Some(3 * n), "{calls:?}");
        assert_eq!(calls.get("PutItem").copied(), Some(n), "{calls:?}");
        assert_eq!(dynamo_calls.total(), 5 * n, "{calls:?}");
        assert_eq!(secret_calls.total(), 0);
    }
    writer
        .delete(&user, Service::OpenAi, None, "test")
        .await
        .unwrap();
    stand_in.shutdown().await;
}

/// A ledger entry for `user` today.
fn ledger_entry(user: &UserId, request: u32) -> byok::store::UsageEntry {
    byok::store::UsageEntry {
        user: user.clone(),
        tenant: None,
        at: byok::domain::now(),
        request_id: format!("req-{request}"),
        attempt: 0,
        service: Service::Gateway,
        model: "openai/gpt-4o-mini".to_owned(),
        path: byok::resolve::ResolutionPath::TeamGateway,
        prompt_tokens: 10,
        completion_tokens: 2,
        cost_nanos: Some(3),
        estimated: false,
        outcome: byok::store::LedgerOutcome::Ok,
        error_code: None,
        stream: true,
        fallback: false,
        time_to_first_byte_ms: Some(5),
        duration_ms: 20,
    }
}

#[tokio::test]
async fn the_ledger_is_read_by_query_never_scan() {
    use byok::store::UsageStore;
    let table = unique_name("ledger-calls");
    ensure_table(&dynamo_client(None), &table).await.unwrap();
    let calls = CallCounter::default();
    let store = DynamoMetadataStore::new(dynamo_client(Some(calls.clone())), table);
    let users: Vec<UserId> = (0..5)
        .map(|i| UserId::new(unique_name(&format!("ledger-user-{i}"))).unwrap())
        .collect();
    for (i, user) in users.iter().enumerate() {
        let request = u32::try_from(i).unwrap();
        store
            .record_usage(
                &ledger_entry(user, request),
                Some(Duration::from_secs(86_400)),
            )
            .await
            .unwrap();
    }
    // Each entry: two aggregate updates and one raw entry.
    assert_eq!(calls.count("UpdateItem"), 2 * users.len());
    assert_eq!(calls.count("PutItem"), users.len());
    calls.reset();

    let today = byok::domain::now().to_offset(time::UtcOffset::UTC).date();
    let month_ago = today - time::Duration::days(29);
    let mine = store.user_usage(&users[0], month_ago, today).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        calls.snapshot(),
        [("Query".to_owned(), 1)].into(),
        "a month: one Query"
    );
    calls.reset();

    let all = store.all_usage(month_ago, today).await.unwrap();
    for user in &users {
        assert!(
            all.iter().any(|r| &r.user == user),
            "{user} in the operator view"
        );
    }
    let days = 30;
    assert_eq!(calls.count("Scan"), 0, "never a Scan");
    assert_eq!(
        calls.count("Query"),
        days * usize::try_from(byok::store::dynamo::DAY_SHARDS).unwrap(),
        "one Query per day and shard"
    );
    assert_eq!(calls.total(), calls.count("Query"));
}
