//! Micro-benchmarks of the pieces of one proxied request, each on its own,
//! so a change to one shows in its own figure rather than in the noise of
//! `byok-bench`'s end-to-end run: resolution from a user's snapshot, a
//! secret-cache hit, forwarding one SSE event as it came, translating one
//! Anthropic stream event, and building one usage-ledger entry.
//!
//! `cargo bench -p byok --features local --bench hot_path`
#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a failed step should stop the run loudly"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use byok::catalog::Catalog;
use byok::completion::{Outcome, UsageRecord};
use byok::crypto::MasterKey;
use byok::domain::{
    ApiKey, KeyId, KeyRecord, ModelId, SecretRef, Service, Settings, TeamCredentials, Upstreams,
    UserId, now,
};
use byok::providers::anthropic::StreamTranslator;
use byok::providers::openai::{PassThrough, Prepared};
use byok::providers::sse::EventSplitter;
use byok::resolve::{ResolutionPath, resolve};
use byok::store::cache::CachedSecretStore;
use byok::store::embedded::EmbeddedStore;
use byok::store::{SecretStore, UserSnapshot};
use byok::usage::UsageLedger;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn user() -> UserId {
    UserId::new("bench-user").unwrap()
}

/// A stored key of `service`, as the store hands it to resolution.
fn key(service: Service) -> KeyRecord {
    let t = now();
    KeyRecord {
        user: user(),
        service,
        id: KeyId::first(),
        priority: 0,
        label: service.display_name().to_owned(),
        masked_key: "sk-…0001".to_owned(),
        enabled: true,
        base_url: None,
        created_at: t,
        updated_at: t,
        last_validated_at: None,
        last_validation: None,
        secret: SecretRef {
            id: format!("bench-user/{service}/0"),
            version: "v1".to_owned(),
        },
        revision: 1,
        rotated_at: None,
        pending: None,
        last_rotation: None,
        last_used_at: None,
        cooldown_until: None,
    }
}

fn resolution(c: &mut Criterion) {
    let snapshot = UserSnapshot {
        settings: Settings::default(),
        keys: vec![key(Service::OpenAi), key(Service::Anthropic)],
    };
    let team = TeamCredentials::default();
    team.insert(
        Service::Gateway,
        ApiKey::new("vck_bench_team_0000000000000001"),
    );
    let upstreams = Upstreams::default();
    let own = ModelId::parse("openai/gpt-4o-mini").unwrap();
    let teams = ModelId::parse("xai/grok-4").unwrap();
    c.bench_function("resolve: the user's own key", |b| {
        b.iter(|| resolve(black_box(&snapshot), &own, &team, &upstreams).unwrap());
    });
    c.bench_function("resolve: the team gateway", |b| {
        b.iter(|| resolve(black_box(&snapshot), &teams, &team, &upstreams).unwrap());
    });
}

fn secret_cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
    let key = ApiKey::new("sk-proj-bench0000000000000000000000000000000001");
    let secret = runtime
        .block_on(store.put_secret(&user(), Service::OpenAi, &key, None))
        .unwrap();
    let cache = CachedSecretStore::new(store, 64, Duration::from_secs(300));
    // The first read fills the cache; every measured one is a hit.
    runtime.block_on(cache.get_secret(&secret)).unwrap();
    c.bench_function("secret cache: hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { cache.get_secret(black_box(&secret)).await.unwrap() });
    });
}

/// One content chunk of an OpenAI stream, as an upstream writes it.
const OPENAI_EVENT: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there\"},\"finish_reason\":null}]}\n\n";

fn sse_forwarding(c: &mut Criterion) {
    let mut splitter = EventSplitter::new();
    let mut pass = PassThrough::new(Prepared {
        client_wants_usage: false,
    });
    c.bench_function("SSE: split and forward one event", |b| {
        b.iter(|| {
            for event in splitter.push(black_box(OPENAI_EVENT)).unwrap() {
                black_box(pass.on_event(event));
            }
        });
    });
}

fn anthropic_translation(c: &mut Criterion) {
    let mut translator = StreamTranslator::new("anthropic/claude-3-5-haiku-latest", 1, false);
    translator
        .push(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[],"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        )
        .unwrap();
    translator
        .push(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        )
        .unwrap();
    let delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#;
    c.bench_function("Anthropic: translate one text delta", |b| {
        b.iter(|| {
            translator
                .push("content_block_delta", black_box(delta))
                .unwrap()
        });
    });
}

fn ledger_entry(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
    let catalog = Arc::new(Catalog::builtin().unwrap());
    let ledger = UsageLedger::new(store, catalog, Some(Duration::from_secs(86_400)));
    let record = UsageRecord {
        user: user(),
        tenant: None,
        request_id: "9f1c2b3a-0000-4000-8000-000000000001".to_owned(),
        attempt: 0,
        provider: Service::OpenAi,
        path: ResolutionPath::UserProvider,
        model: "openai/gpt-4o-mini".to_owned(),
        fallback: false,
        stream: true,
        outcome: Outcome::Completed,
        prompt_tokens: Some(12),
        completion_tokens: Some(40),
        estimated: false,
        time_to_first_byte: Some(Duration::from_micros(300)),
        duration: Duration::from_micros(900),
        budget_holds: Vec::new(),
    };
    c.bench_function("ledger: build one entry (priced from the catalog)", |b| {
        b.iter_batched(
            || record.clone(),
            |record| ledger.entry(record),
            BatchSize::SmallInput,
        );
    });
}

criterion_group!(
    hot_path,
    resolution,
    secret_cache_hit,
    sse_forwarding,
    anthropic_translation,
    ledger_entry
);
criterion_main!(hot_path);
