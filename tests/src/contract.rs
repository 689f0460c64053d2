//! The store contract: what every [`MetadataStore`] and [`SecretStore`]
//! backend must do, written once and run against each backend.
//!
//! A backend's test file calls [`contract_suite!`](crate::contract_suite)
//! with an `async` expression that builds a [`Backend`]; the macro generates
//! one `#[tokio::test]` per case, so failures are reported per case. Every
//! case uses user ids of its own (case name plus a unique suffix), so one
//! backend (a shared table, a shared account) may serve all cases at once.
//! The calling crate needs `tokio` (with `macros` and `rt-multi-thread`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed step is a failed test"
)]

use byok::domain::{
    ApiKey, ApiTokenId, ApiTokenRecord, KeyId, KeyRecord, PersonalKey, SecretRef, Service,
    Settings, UserId, ValidationResult,
};
use byok::resolve::ResolutionPath;
use byok::store::{
    Amount, ApiTokenStore, AuditAction, AuditCursor, AuditEvent, AuditId, AuditStore, BadCursor,
    BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore, BudgetTerms, BudgetUnit, Expected, Hold,
    KeyMark, LedgerOutcome, MetadataStore, RateAction, RateLimitStore, RotationStore, SecretStore,
    StoreError, TenantId, UsageCounts, UsageEntry, UsageRow, UsageStore,
};
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use time::{Duration, OffsetDateTime, UtcOffset};

/// The stores under test, plus whatever must live as long as they do
/// (a temporary directory, a container handle).
pub struct Backend {
    pub meta: Arc<dyn MetadataStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub rate: Arc<dyn RateLimitStore>,
    pub audit: Arc<dyn AuditStore>,
    /// The secret store's staging labels (the same backend as `secrets`).
    pub rotation: Arc<dyn RotationStore>,
    /// The usage ledger (the same backend as `meta`).
    pub usage: Arc<dyn UsageStore>,
    /// Budgets (the same backend as `meta`).
    pub budgets: Arc<dyn BudgetStore>,
    /// The same budgets through a second, independent instance of the
    /// backend (another process's view of the same data).
    pub budgets_elsewhere: Arc<dyn BudgetStore>,
    /// Personal API keys (the same backend as `meta`).
    pub tokens: Arc<dyn ApiTokenStore>,
    pub _guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per contract case. `$make` is an
/// expression of a future resolving to a [`Backend`]; it is evaluated
/// once per case.
#[macro_export]
macro_rules! contract_suite {
    ($make:expr) => {
        $crate::contract_suite!(@cases $make;
            settings_default_then_round_trip,
            load_user_of_unknown_user_is_empty,
            load_user_isolates_users,
            put_key_absent_twice_conflicts,
            put_key_checks_revision,
            delete_key_returns_record_then_none,
            key_record_round_trips_every_field,
            secret_round_trip,
            put_secret_keeps_previous_version,
            get_secret_unknown_is_not_found,
            delete_secret_removes_all_versions,
            secrets_are_independent_per_user_and_service,
            concurrent_put_key_has_one_winner,
            odd_user_ids_are_isolated,
            crash_between_secret_and_metadata_writes_loses_no_key,
            crash_between_metadata_and_secret_deletes_leaves_nothing_dangling,
            deletes_and_stores_from_two_instances_never_dangle,
            rate_limit_allows_limit_then_refuses_until_next_window,
            rate_limit_separates_users_and_windows,
            rate_limit_concurrent_hits_allow_exactly_limit,
            audit_lists_newest_first_in_pages,
            audit_isolates_users,
            audit_refuses_bad_cursors_and_duplicate_ids,
            rate_and_audit_leave_load_user_unchanged,
            rotation_promotes_pending_and_keeps_previous,
            rotation_steps_are_idempotent,
            rotation_discard_keeps_current,
            rotation_stage_needs_a_secret,
            rotation_lists_and_deletes_secrets_by_id,
            scan_keys_pages_through_every_user,
            several_keys_per_service_are_kept_apart,
            usage_aggregates_add_up_per_day_model_and_path,
            usage_concurrent_records_lose_nothing,
            usage_operator_view_has_every_user_and_tenant,
            usage_raw_entries_newest_first_until_they_expire,
            budget_round_trips_with_revisions,
            budget_list_pages_in_order,
            budget_reservations_from_two_instances_never_pass_a_paused_limit,
            budget_periods_roll_and_total_never_resets,
            personal_keys_are_found_by_hash_listed_and_revoked,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let backend: $crate::contract::Backend = $make.await;
                $crate::contract::$case(&backend).await;
            }
        )+
    };
}

/// A user id unique to this case and run.
pub fn unique_user(case: &str) -> UserId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    UserId::new(format!(
        "contract-{case}-{}-{nanos:x}-{n}",
        std::process::id()
    ))
    .expect("valid user id")
}

/// A timestamp with millisecond precision (what every backend must keep).
fn millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .expect("valid nanosecond")
}

/// A plausible record for (user, service) pointing at `secret`, revision 1.
pub fn record(user: &UserId, service: Service, secret: SecretRef) -> KeyRecord {
    let now = byok::domain::now();
    KeyRecord {
        user: user.clone(),
        service,
        id: KeyId::first(),
        priority: 0,
        last_used_at: None,
        cooldown_until: None,
        label: format!("{service} key"),
        masked_key: "sk-...wxyz".to_owned(),
        enabled: true,
        base_url: None,
        created_at: now,
        updated_at: now,
        last_validated_at: None,
        last_validation: None,
        secret,
        revision: 1,
        rotated_at: None,
        pending: None,
        last_rotation: None,
    }
}

fn fake_ref(user: &UserId, service: Service) -> SecretRef {
    SecretRef {
        id: format!("{user}/{service}"),
        version: "v1".to_owned(),
    }
}

fn assert_not_found(result: Result<ApiKey, StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::SecretNotFound)),
        "{what}: expected SecretNotFound, got {result:?}"
    );
}

// ---------------------------------------------------------------- settings

/// Settings default to fallback allowed and round-trip both ways.
pub async fn settings_default_then_round_trip(b: &Backend) {
    let user = unique_user("settings");
    let snap = b.meta.load_user(&user).await.unwrap();
    assert_eq!(snap.settings, Settings::default());
    assert!(snap.settings.allow_gateway_fallback);

    let mut before = Settings::default();
    for allow in [false, true, false] {
        let settings = Settings {
            allow_gateway_fallback: allow,
        };
        let replaced = b.meta.put_settings(&user, settings).await.unwrap();
        assert_eq!(replaced, before, "the write returns what it replaced");
        assert_eq!(b.meta.load_user(&user).await.unwrap().settings, settings);
        before = settings;
    }

    // Another user is unaffected.
    let other = unique_user("settings-other");
    assert_eq!(
        b.meta.load_user(&other).await.unwrap().settings,
        Settings::default()
    );
}

/// A user never seen has default settings and no keys.
pub async fn load_user_of_unknown_user_is_empty(b: &Backend) {
    let user = unique_user("unknown");
    let snap = b.meta.load_user(&user).await.unwrap();
    assert_eq!(snap.settings, Settings::default());
    assert!(snap.keys.is_empty());
    assert_eq!(
        b.meta
            .get_key(&user, Service::OpenAi, &KeyId::first())
            .await
            .unwrap(),
        None
    );
}

// -------------------------------------------------------------------- keys

/// `load_user` returns every key of the user and none of another user.
pub async fn load_user_isolates_users(b: &Backend) {
    let alice = unique_user("isolation-alice");
    let bob = unique_user("isolation-bob");
    let alice_services = [Service::OpenAi, Service::Anthropic, Service::Gateway];
    for svc in alice_services {
        let rec = record(&alice, svc, fake_ref(&alice, svc));
        b.meta.put_key(&rec, Expected::Absent).await.unwrap();
    }
    let mut bob_rec = record(&bob, Service::OpenAi, fake_ref(&bob, Service::OpenAi));
    bob_rec.label = "bob's".to_owned();
    b.meta.put_key(&bob_rec, Expected::Absent).await.unwrap();
    b.meta
        .put_settings(
            &bob,
            Settings {
                allow_gateway_fallback: false,
            },
        )
        .await
        .unwrap();

    let snap = b.meta.load_user(&alice).await.unwrap();
    assert_eq!(snap.settings, Settings::default());
    let mut services: Vec<Service> = snap.keys.iter().map(|k| k.service).collect();
    services.sort();
    let mut want = alice_services.to_vec();
    want.sort();
    assert_eq!(services, want);
    assert!(snap.keys.iter().all(|k| k.user == alice));
    for svc in alice_services {
        assert_eq!(snap.key(svc).map(|k| &k.label), Some(&format!("{svc} key")));
    }

    let snap = b.meta.load_user(&bob).await.unwrap();
    assert!(!snap.settings.allow_gateway_fallback);
    assert_eq!(snap.keys, vec![bob_rec]);

    assert_eq!(
        b.meta
            .get_key(&bob, Service::Gateway, &KeyId::first())
            .await
            .unwrap(),
        None
    );
}

/// Creating twice: the second `Absent` write conflicts and changes nothing.
pub async fn put_key_absent_twice_conflicts(b: &Backend) {
    let user = unique_user("absent-twice");
    let first = record(&user, Service::Groq, fake_ref(&user, Service::Groq));
    b.meta.put_key(&first, Expected::Absent).await.unwrap();

    let mut second = first.clone();
    second.label = "intruder".to_owned();
    second.enabled = false;
    let result = b.meta.put_key(&second, Expected::Absent).await;
    assert!(
        matches!(result, Err(StoreError::Conflict)),
        "expected Conflict, got {result:?}"
    );
    assert_eq!(
        b.meta
            .get_key(&user, Service::Groq, &KeyId::first())
            .await
            .unwrap(),
        Some(first)
    );
}

/// Updates are conditional on the stored revision.
pub async fn put_key_checks_revision(b: &Backend) {
    let user = unique_user("revision");
    let v1 = record(&user, Service::Xai, fake_ref(&user, Service::Xai));
    b.meta.put_key(&v1, Expected::Absent).await.unwrap();

    let mut v2 = v1.clone();
    v2.label = "renamed".to_owned();
    v2.revision = 2;
    v2.updated_at = v1.updated_at + Duration::seconds(5);

    // Updating a record that does not exist conflicts.
    let ghost_user = unique_user("revision-ghost");
    let mut ghost = v2.clone();
    ghost.user = ghost_user.clone();
    let result = b.meta.put_key(&ghost, Expected::Revision(1)).await;
    assert!(
        matches!(result, Err(StoreError::Conflict)),
        "update of missing record: {result:?}"
    );
    assert_eq!(
        b.meta
            .get_key(&ghost_user, Service::Xai, &KeyId::first())
            .await
            .unwrap(),
        None
    );

    // Stale (and future) revisions conflict and change nothing.
    for stale in [0, 2, 7, u64::MAX] {
        let result = b.meta.put_key(&v2, Expected::Revision(stale)).await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "revision {stale}: {result:?}"
        );
        assert_eq!(
            b.meta
                .get_key(&user, Service::Xai, &KeyId::first())
                .await
                .unwrap()
                .as_ref(),
            Some(&v1)
        );
    }

    // The right revision wins.
    b.meta.put_key(&v2, Expected::Revision(1)).await.unwrap();
    assert_eq!(
        b.meta
            .get_key(&user, Service::Xai, &KeyId::first())
            .await
            .unwrap()
            .as_ref(),
        Some(&v2)
    );

    // Now revision 1 is stale.
    let mut v3 = v2.clone();
    v3.revision = 3;
    v3.enabled = false;
    let result = b.meta.put_key(&v3, Expected::Revision(1)).await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    b.meta.put_key(&v3, Expected::Revision(2)).await.unwrap();
    let snap = b.meta.load_user(&user).await.unwrap();
    assert_eq!(snap.keys, vec![v3]);
}

/// Deleting returns the record, then there is none; the slot can be reused.
pub async fn delete_key_returns_record_then_none(b: &Backend) {
    let user = unique_user("delete-key");
    let rec = record(&user, Service::Google, fake_ref(&user, Service::Google));
    let other = record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi));
    b.meta.put_key(&rec, Expected::Absent).await.unwrap();
    b.meta.put_key(&other, Expected::Absent).await.unwrap();

    assert_eq!(
        b.meta
            .delete_key(&user, Service::Google, &KeyId::first())
            .await
            .unwrap(),
        Some(rec.clone())
    );
    assert_eq!(
        b.meta
            .delete_key(&user, Service::Google, &KeyId::first())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        b.meta
            .get_key(&user, Service::Google, &KeyId::first())
            .await
            .unwrap(),
        None
    );
    assert_eq!(b.meta.load_user(&user).await.unwrap().keys, vec![other]);

    // After a delete, the record can be created again.
    b.meta.put_key(&rec, Expected::Absent).await.unwrap();
    assert_eq!(
        b.meta
            .get_key(&user, Service::Google, &KeyId::first())
            .await
            .unwrap(),
        Some(rec)
    );
}

/// Every field of a record round-trips exactly (timestamps to the millisecond).
pub async fn key_record_round_trips_every_field(b: &Backend) {
    let user = unique_user("fields \"quoted\" 'single' ✓");
    let base = millis(OffsetDateTime::now_utc());
    let plus2 = UtcOffset::from_hms(2, 0, 0).expect("offset");
    let full = KeyRecord {
        user: user.clone(),
        service: Service::Gateway,
        id: KeyId::first(),
        priority: 7,
        last_used_at: Some(base),
        cooldown_until: Some(base.to_offset(plus2)),
        label: "Läbel with ünïcode, 'quotes', \"dq\", %_ and ; -- ".to_owned(),
        masked_key: "vck_...9Z9z".to_owned(),
        enabled: false,
        base_url: Some("https://gw.example.com:8443/v1".to_owned()),
        created_at: base - Duration::days(400) + Duration::milliseconds(1),
        updated_at: (base + Duration::milliseconds(999)).to_offset(plus2),
        last_validated_at: Some(base - Duration::milliseconds(123)),
        last_validation: Some(ValidationResult::Unreachable),
        secret: SecretRef {
            id: "arn:aws:secretsmanager:eu-west-1:123:secret:x/y-AbC".to_owned(),
            version: "0123456789abcdef0123456789abcdef".to_owned(),
        },
        revision: 41,
        rotated_at: Some(base - Duration::days(3) + Duration::milliseconds(7)),
        pending: Some(byok::domain::PendingKey {
            version: "fedcba9876543210fedcba9876543210".to_owned(),
            masked_key: "vck_…Q1q1".to_owned(),
            staged_at: base - Duration::milliseconds(55),
            token: Some("00112233445566778899aabbccddeeff".to_owned()),
        }),
        last_rotation: Some(byok::domain::RotationOutcome {
            at: base - Duration::days(3),
            rejected: Some(byok::domain::RotationRejection::InvalidKey),
        }),
    };
    b.meta.put_key(&full, Expected::Absent).await.unwrap();
    let got = b
        .meta
        .get_key(&user, Service::Gateway, &KeyId::first())
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&full));
    let got = got.expect("record");
    assert_eq!(
        got.created_at.unix_timestamp_nanos(),
        full.created_at.unix_timestamp_nanos()
    );
    assert_eq!(
        got.updated_at.unix_timestamp_nanos(),
        full.updated_at.unix_timestamp_nanos()
    );

    // Optional fields empty, other enum values, via load_user too.
    let sparse = KeyRecord {
        user: user.clone(),
        service: Service::Anthropic,
        id: KeyId::first(),
        priority: 0,
        last_used_at: None,
        cooldown_until: None,
        label: String::new(),
        masked_key: "sk-ant-...abcd".to_owned(),
        enabled: true,
        base_url: None,
        created_at: base,
        updated_at: base,
        last_validated_at: None,
        last_validation: None,
        secret: fake_ref(&user, Service::Anthropic),
        revision: 1,
        rotated_at: None,
        pending: None,
        last_rotation: None,
    };
    b.meta.put_key(&sparse, Expected::Absent).await.unwrap();
    let snap = b.meta.load_user(&user).await.unwrap();
    assert_eq!(snap.key(Service::Anthropic), Some(&sparse));
    assert_eq!(snap.key(Service::Gateway), Some(&full));

    // Updating can set and clear every optional field.
    for (i, validation) in [
        Some(ValidationResult::Valid),
        Some(ValidationResult::Invalid),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let mut next = snap.key(Service::Gateway).expect("full").clone();
        let rev = full.revision + i as u64;
        next.revision = rev + 1;
        next.last_validation = validation;
        next.last_validated_at = validation.map(|_| base + Duration::milliseconds(i as i64));
        next.base_url = None;
        next.enabled = i % 2 == 0;
        b.meta
            .put_key(&next, Expected::Revision(rev))
            .await
            .unwrap();
        assert_eq!(
            b.meta
                .get_key(&user, Service::Gateway, &KeyId::first())
                .await
                .unwrap(),
            Some(next)
        );
    }
}

/// Of 8 concurrent writes with the same expectation, exactly one succeeds.
pub async fn concurrent_put_key_has_one_winner(b: &Backend) {
    let user = unique_user("concurrent");

    let outcomes = race(b, &user, Expected::Absent, 1).await;
    let winner = one_winner(&outcomes, "Absent");
    let stored = b
        .meta
        .get_key(&user, Service::OpenRouter, &KeyId::first())
        .await
        .unwrap();
    assert_eq!(stored.map(|r| r.label), Some(format!("writer {winner}")));

    let outcomes = race(b, &user, Expected::Revision(1), 2).await;
    let winner = one_winner(&outcomes, "Revision(1)");
    let stored = b
        .meta
        .get_key(&user, Service::OpenRouter, &KeyId::first())
        .await
        .unwrap()
        .expect("record");
    assert_eq!(stored.label, format!("writer {winner}"));
    assert_eq!(stored.revision, 2);
}

async fn race(
    b: &Backend,
    user: &UserId,
    expected: Expected,
    revision: u64,
) -> Vec<Result<(), StoreError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let meta = Arc::clone(&b.meta);
            let barrier = Arc::clone(&barrier);
            let mut rec = record(
                user,
                Service::OpenRouter,
                fake_ref(user, Service::OpenRouter),
            );
            rec.label = format!("writer {i}");
            rec.revision = revision;
            tokio::spawn(async move {
                barrier.wait().await;
                meta.put_key(&rec, expected).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

fn one_winner(outcomes: &[Result<(), StoreError>], what: &str) -> usize {
    let winners: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{what}: {outcomes:?}");
    for r in outcomes.iter().filter(|r| r.is_err()) {
        assert!(matches!(r, Err(StoreError::Conflict)), "{what}: {r:?}");
    }
    winners[0]
}

// ----------------------------------------------------------------- secrets

/// A stored secret reads back equal; the ref names the secret.
pub async fn secret_round_trip(b: &Backend) {
    let user = unique_user("secret-rt");
    let key = ApiKey::new("sk-proj-ROUNDTRIP-0123456789-äöü-\"'\\");
    let sref = b
        .secrets
        .put_secret(&user, Service::OpenAi, &key, None)
        .await
        .unwrap();
    assert!(!sref.id.is_empty());
    assert!(!sref.version.is_empty());
    assert_eq!(b.secrets.get_secret(&sref).await.unwrap(), key);
    // Reading twice is fine.
    assert_eq!(b.secrets.get_secret(&sref).await.unwrap(), key);
}

/// A put into a secret makes a new version; the new (current) and the
/// previous version both stay readable by their refs. A put without one
/// makes a new secret.
pub async fn put_secret_keeps_previous_version(b: &Backend) {
    let user = unique_user("secret-versions");
    let k1 = ApiKey::new("sk-ant-version-one-aaaaaaaaaaaa");
    let k2 = ApiKey::new("sk-ant-version-two-bbbbbbbbbbbb");
    let k3 = ApiKey::new("sk-ant-version-three-cccccccccc");
    let r1 = b
        .secrets
        .put_secret(&user, Service::Anthropic, &k1, None)
        .await
        .unwrap();
    let r2 = b
        .secrets
        .put_secret(&user, Service::Anthropic, &k2, Some(&r1))
        .await
        .unwrap();
    assert_eq!(r1.id, r2.id, "a version of the same secret");
    assert_ne!(r1.version, r2.version);
    assert_eq!(b.secrets.get_secret(&r2).await.unwrap(), k2);
    assert_eq!(b.secrets.get_secret(&r1).await.unwrap(), k1);

    let r3 = b
        .secrets
        .put_secret(&user, Service::Anthropic, &k3, Some(&r2))
        .await
        .unwrap();
    assert_eq!(r3.id, r1.id);
    assert_ne!(r3.version, r2.version);
    assert_ne!(r3.version, r1.version);
    assert_eq!(b.secrets.get_secret(&r3).await.unwrap(), k3);
    assert_eq!(b.secrets.get_secret(&r2).await.unwrap(), k2);
    // Whether r1 is still readable is up to the backend; if it is, it is k1.
    match b.secrets.get_secret(&r1).await {
        Ok(key) => assert_eq!(key, k1),
        Err(StoreError::SecretNotFound) => {}
        Err(other) => panic!("oldest version: unexpected {other:?}"),
    }

    // Another key of the same user and service: a secret of its own.
    let other = b
        .secrets
        .put_secret(&user, Service::Anthropic, &k1, None)
        .await
        .unwrap();
    assert_ne!(other.id, r1.id, "a new key gets a new secret");
    assert_eq!(b.secrets.get_secret(&r3).await.unwrap(), k3);
}

/// Unknown versions and unknown secrets are `SecretNotFound`.
pub async fn get_secret_unknown_is_not_found(b: &Backend) {
    let user = unique_user("secret-unknown");
    let sref = b
        .secrets
        .put_secret(
            &user,
            Service::Xai,
            &ApiKey::new("xai-known-0123456789"),
            None,
        )
        .await
        .unwrap();
    let wrong_version = SecretRef {
        id: sref.id.clone(),
        version: "00000000000000000000000000000000".to_owned(),
    };
    assert_not_found(
        b.secrets.get_secret(&wrong_version).await,
        "unknown version",
    );
    let other = unique_user("secret-unknown-other");
    assert_not_found(
        b.secrets.get_secret(&fake_ref(&other, Service::Xai)).await,
        "unknown secret",
    );
    // The version id of one secret does not open another secret.
    let foreign = SecretRef {
        id: format!("{other}/{}", Service::Xai),
        version: sref.version.clone(),
    };
    assert_not_found(b.secrets.get_secret(&foreign).await, "foreign version");
}

/// Deleting removes every version; deleting again is fine; a deleted
/// secret takes no new version (it is not brought back), and a new key of
/// the same user and service gets a new secret.
pub async fn delete_secret_removes_all_versions(b: &Backend) {
    let user = unique_user("secret-delete");
    let r1 = b
        .secrets
        .put_secret(
            &user,
            Service::Groq,
            &ApiKey::new("gsk_one_0123456789"),
            None,
        )
        .await
        .unwrap();
    let r2 = b
        .secrets
        .put_secret(
            &user,
            Service::Groq,
            &ApiKey::new("gsk_two_0123456789"),
            Some(&r1),
        )
        .await
        .unwrap();
    b.secrets.delete_secret(&r2).await.unwrap();
    assert_not_found(b.secrets.get_secret(&r1).await, "previous after delete");
    assert_not_found(b.secrets.get_secret(&r2).await, "current after delete");
    b.secrets.delete_secret(&r2).await.unwrap();
    // Never-existing secrets delete fine too.
    b.secrets
        .delete_secret(&fake_ref(&unique_user("secret-delete-none"), Service::Groq))
        .await
        .unwrap();
    let late = b
        .secrets
        .put_secret(
            &user,
            Service::Groq,
            &ApiKey::new("gsk_late_0123456789"),
            Some(&r2),
        )
        .await;
    assert!(
        matches!(late, Err(StoreError::SecretNotFound)),
        "a version into a deleted secret: {late:?}"
    );
    assert_not_found(b.secrets.get_secret(&r1).await, "still deleted");

    let key = ApiKey::new("gsk_three_0123456789");
    let r3 = b
        .secrets
        .put_secret(&user, Service::Groq, &key, None)
        .await
        .unwrap();
    assert_ne!(r3.id, r1.id);
    assert_eq!(b.secrets.get_secret(&r3).await.unwrap(), key);
}

/// Secrets of different users and services do not affect each other.
pub async fn secrets_are_independent_per_user_and_service(b: &Backend) {
    let alice = unique_user("secret-indep-alice");
    let bob = unique_user("secret-indep-bob");
    let cases = [
        (&alice, Service::OpenAi, "sk-alice-openai-000000"),
        (&alice, Service::Anthropic, "sk-ant-alice-anthropic"),
        (&bob, Service::OpenAi, "sk-bob-openai-11111111"),
    ];
    let mut refs = Vec::new();
    for (user, svc, key) in cases {
        refs.push(
            b.secrets
                .put_secret(user, svc, &ApiKey::new(key), None)
                .await
                .unwrap(),
        );
    }
    assert_ne!(refs[0].id, refs[1].id);
    assert_ne!(refs[0].id, refs[2].id);
    for (sref, (_, _, key)) in refs.iter().zip(cases) {
        assert_eq!(b.secrets.get_secret(sref).await.unwrap(), ApiKey::new(key));
    }

    // Replacing and deleting one leaves the others alone.
    let mut latest = refs[0].clone();
    for n in 1..=2 {
        let key = ApiKey::new(format!("sk-alice-new-{n}"));
        latest = b
            .secrets
            .put_secret(&alice, Service::OpenAi, &key, Some(&latest))
            .await
            .unwrap();
    }
    b.secrets.delete_secret(&refs[2]).await.unwrap();
    assert_not_found(b.secrets.get_secret(&refs[2]).await, "bob after delete");
    assert_eq!(
        b.secrets.get_secret(&refs[1]).await.unwrap(),
        ApiKey::new(cases[1].2)
    );
    b.secrets.delete_secret(&refs[1]).await.unwrap();
    assert_not_found(b.secrets.get_secret(&refs[1]).await, "alice anthropic");
    assert_eq!(
        b.secrets.get_secret(&latest).await.unwrap(),
        ApiKey::new("sk-alice-new-2")
    );
}

/// User ids with separators, quotes and non-ASCII text stay separate.
pub async fn odd_user_ids_are_isolated(b: &Backend) {
    let base = unique_user("odd");
    let names = [
        base.to_string(),
        format!("{base}/openai"),
        format!("{base}:openai"),
        format!("{base}/openai/openai"),
        format!("{base} ünï'\"%_*"),
        format!("{base}#{{}}[]\\"),
    ];
    let users: Vec<UserId> = names
        .iter()
        .map(|n| UserId::new(n.clone()).expect("valid user id"))
        .collect();
    let mut refs = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let key = ApiKey::new(format!("sk-odd-user-{i}-0123456789"));
        let sref = b
            .secrets
            .put_secret(user, Service::OpenAi, &key, None)
            .await
            .unwrap();
        let mut rec = record(user, Service::OpenAi, sref.clone());
        rec.label = format!("user {i}");
        b.meta.put_key(&rec, Expected::Absent).await.unwrap();
        refs.push(sref);
    }
    let ids: std::collections::HashSet<_> = refs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), users.len(), "secret ids must differ: {refs:?}");
    for (i, user) in users.iter().enumerate() {
        let snap = b.meta.load_user(user).await.unwrap();
        assert_eq!(snap.keys.len(), 1, "user {i}");
        assert_eq!(snap.keys[0].label, format!("user {i}"));
        assert_eq!(snap.keys[0].user, *user);
        assert_eq!(
            b.secrets.get_secret(&refs[i]).await.unwrap(),
            ApiKey::new(format!("sk-odd-user-{i}-0123456789"))
        );
    }
}

/// Delegates to a real metadata store, except that an armed `put_key` or
/// `delete_key` "crashes": the secret side of the operation has happened,
/// the metadata side has not (for put) or has (for delete), and an error is
/// returned, as if the process died in between.
struct Crashing {
    inner: Arc<dyn MetadataStore>,
    crash_put: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl MetadataStore for Crashing {
    async fn load_user(&self, user: &UserId) -> Result<byok::store::UserSnapshot, StoreError> {
        self.inner.load_user(user).await
    }
    async fn get_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get_key(user, service, id).await
    }
    async fn mark_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mark: KeyMark,
    ) -> Result<(), StoreError> {
        self.inner.mark_key(user, service, id, mark).await
    }
    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError> {
        if self.crash_put.load(Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "simulated crash",
            )));
        }
        self.inner.put_key(record, expected).await
    }
    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.delete_key(user, service, id).await
    }
    async fn put_settings(
        &self,
        user: &UserId,
        settings: byok::domain::Settings,
    ) -> Result<byok::domain::Settings, StoreError> {
        self.inner.put_settings(user, settings).await
    }
    async fn scan_keys(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<byok::store::KeyPage, StoreError> {
        self.inner.scan_keys(after, limit).await
    }
}

/// The primary key of `user`'s `service`, if any.
async fn primary(b: &Backend, user: &UserId, service: Service) -> Option<KeyRecord> {
    b.meta.load_user(user).await.unwrap().key(service).cloned()
}

/// The metadata's secret reference must always open, to the key it named.
async fn assert_metadata_opens(b: &Backend, user: &UserId, service: Service, want: &str) {
    let record = primary(b, user, service).await.expect("record");
    let key = b.secrets.get_secret(&record.secret).await.unwrap();
    assert_eq!(
        key.expose(),
        want,
        "metadata points at the key it was written with"
    );
}

pub async fn crash_between_secret_and_metadata_writes_loses_no_key(b: &Backend) {
    use byok::keys::{KeyService, KeyUpsert};
    let user = unique_user("crash_upsert");
    let crashing = Arc::new(Crashing {
        inner: b.meta.clone(),
        crash_put: std::sync::atomic::AtomicBool::new(false),
    });
    let keys = KeyService::new(crashing.clone(), b.secrets.clone());
    let upsert = |key: &str| KeyUpsert {
        service: Service::OpenAi,
        api_key: ApiKey::new(key),
        base_url: None,
        label: None,
    };
    let first = "sk-proj-crash-first-000000000001";
    keys.upsert(&user, upsert(first), "test").await.unwrap();

    // Two replacements in a row die after the secret write: the stored key
    // keeps serving (its version is still readable), nothing dangles.
    crashing.crash_put.store(true, Ordering::SeqCst);
    for n in 2..=3 {
        let lost = format!("sk-proj-crash-lost-00000000000{n}");
        assert!(keys.upsert(&user, upsert(&lost), "test").await.is_err());
        assert_metadata_opens(b, &user, Service::OpenAi, first).await;
    }

    // The next replacement that completes takes over.
    crashing.crash_put.store(false, Ordering::SeqCst);
    let last = "sk-proj-crash-final-000000000004";
    keys.upsert(&user, upsert(last), "test").await.unwrap();
    assert_metadata_opens(b, &user, Service::OpenAi, last).await;

    // A first write that dies leaves no metadata at all (an unreferenced
    // secret at most), so nothing points at anything missing.
    crashing.crash_put.store(true, Ordering::SeqCst);
    let new_service = KeyUpsert {
        service: Service::Groq,
        api_key: ApiKey::new("gsk_crash0000000000000000001"),
        base_url: None,
        label: None,
    };
    assert!(keys.upsert(&user, new_service, "test").await.is_err());
    assert!(primary(b, &user, Service::Groq).await.is_none());
    let snapshot = b.meta.load_user(&user).await.unwrap();
    for record in &snapshot.keys {
        b.secrets
            .get_secret(&record.secret)
            .await
            .expect("every record opens");
        b.secrets.delete_secret(&record.secret).await.unwrap();
    }
}

/// Two instances (each its own `KeyService`, so no shared turns) delete
/// and store the same key at once, round after round. Whatever order the
/// calls land in, a record that remains opens with the key it was written
/// with: a delete never removes the secret of a key stored beside it.
pub async fn deletes_and_stores_from_two_instances_never_dangle(b: &Backend) {
    use byok::keys::{KeyService, KeyUpsert};
    const ROUNDS: usize = 24;
    let user = unique_user("two-instances");
    let here = KeyService::new(b.meta.clone(), b.secrets.clone());
    let there = KeyService::new(b.meta.clone(), b.secrets.clone());
    let upsert = |key: &str| KeyUpsert {
        service: Service::Groq,
        api_key: ApiKey::new(key),
        base_url: None,
        label: None,
    };
    let (mut kept, mut gone) = (0, 0);
    for round in 0..ROUNDS {
        let before = format!("gsk_two_instances_before_{round:04}");
        here.upsert(&user, upsert(&before), "test").await.unwrap();
        let after = format!("gsk_two_instances_after_{round:04}");
        // Alternate which call starts first.
        let (deleted, stored) = if round % 2 == 0 {
            tokio::join!(
                here.delete(&user, Service::Groq, None, "test"),
                there.upsert(&user, upsert(&after), "test")
            )
        } else {
            let (stored, deleted) = tokio::join!(
                there.upsert(&user, upsert(&after), "test"),
                here.delete(&user, Service::Groq, None, "test")
            );
            (deleted, stored)
        };
        deleted.unwrap();
        stored.unwrap();
        match primary(b, &user, Service::Groq).await {
            Some(record) => {
                let key = b.secrets.get_secret(&record.secret).await;
                assert_eq!(
                    key.map(|k| k.expose().to_owned()).ok().as_deref(),
                    Some(after.as_str()),
                    "round {round}: the remaining record opens with its key"
                );
                kept += 1;
                here.delete(&user, Service::Groq, None, "test")
                    .await
                    .unwrap();
            }
            None => gone += 1,
        }
    }
    assert_eq!(kept + gone, ROUNDS);
    // A store that began beside the delete outlived it (else nothing raced).
    assert!(kept > 0, "{kept} kept, {gone} deleted");
}

pub async fn crash_between_metadata_and_secret_deletes_leaves_nothing_dangling(b: &Backend) {
    let user = unique_user("crash_delete");
    let secret = b
        .secrets
        .put_secret(
            &user,
            Service::Xai,
            &ApiKey::new("xai-crash-delete-0000000001"),
            None,
        )
        .await
        .unwrap();
    b.meta
        .put_key(
            &record(&user, Service::Xai, secret.clone()),
            Expected::Absent,
        )
        .await
        .unwrap();
    // Delete order: metadata first. A crash before the secret delete leaves
    // only an unreferenced secret, which a later delete (or sweep) removes.
    b.meta
        .delete_key(&user, Service::Xai, &KeyId::first())
        .await
        .unwrap();
    assert!(b.meta.load_user(&user).await.unwrap().keys.is_empty());
    b.secrets.delete_secret(&secret).await.unwrap();
}

// ------------------------------------------------------------ rate limits

/// A fixed instant on a minute boundary, so window arithmetic is explicit.
fn minute_boundary() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_020).expect("valid instant")
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

/// `limit` hits pass (remaining counts down), then hits are refused with a
/// retry-after that ends with the window; the next window starts over.
pub async fn rate_limit_allows_limit_then_refuses_until_next_window(b: &Backend) {
    let user = unique_user("rate-basic");
    let base = minute_boundary();
    let action = RateAction::Validate;
    for (i, offset) in [0, 10_000, 20_000].into_iter().enumerate() {
        let d = b
            .rate
            .hit(
                &user,
                action,
                3,
                MINUTE,
                base + Duration::milliseconds(offset),
            )
            .await
            .unwrap();
        assert!(d.allowed, "hit {i}: {d:?}");
        assert_eq!(d.remaining, 2 - i as u32, "hit {i}");
        assert_eq!(d.retry_after, std::time::Duration::ZERO);
        assert_eq!(
            d.reset_after,
            std::time::Duration::from_millis(60_000 - offset as u64)
        );
    }
    for (offset, retry_ms) in [(30_000, 30_000), (59_999, 1)] {
        let d = b
            .rate
            .hit(
                &user,
                action,
                3,
                MINUTE,
                base + Duration::milliseconds(offset),
            )
            .await
            .unwrap();
        assert!(!d.allowed, "at +{offset} ms: {d:?}");
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, std::time::Duration::from_millis(retry_ms));
        assert!(d.retry_after <= MINUTE);
    }

    // The next window allows again, from a full budget.
    let next = base + Duration::seconds(60);
    let d = b.rate.hit(&user, action, 3, MINUTE, next).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 2);
    // A hit in the past window (a late, skewed clock) is still refused there.
    let late = base + Duration::seconds(59);
    let d = b.rate.hit(&user, action, 3, MINUTE, late).await.unwrap();
    assert!(!d.allowed, "{d:?}");

    // A limit of 0 refuses everything.
    let d = b.rate.hit(&user, action, 0, MINUTE, next).await.unwrap();
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.retry_after, MINUTE);
}

/// Counters are per user and per window length: one full counter does not
/// limit another user, nor the same user under another window.
pub async fn rate_limit_separates_users_and_windows(b: &Backend) {
    let alice = unique_user("rate-alice");
    let bob = unique_user("rate-bob");
    let now = minute_boundary() + Duration::seconds(5);
    let action = RateAction::Validate;
    for _ in 0..2 {
        assert!(
            b.rate
                .hit(&alice, action, 2, MINUTE, now)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !b.rate
            .hit(&alice, action, 2, MINUTE, now)
            .await
            .unwrap()
            .allowed
    );

    let d = b.rate.hit(&bob, action, 2, MINUTE, now).await.unwrap();
    assert!(d.allowed, "bob: {d:?}");
    assert_eq!(d.remaining, 1);

    let hour = std::time::Duration::from_secs(3600);
    let d = b.rate.hit(&alice, action, 2, hour, now).await.unwrap();
    assert!(d.allowed, "alice, hourly window: {d:?}");
    assert_eq!(d.remaining, 1);

    // Alice's minute counter is still full, bob's still has one left.
    assert!(
        !b.rate
            .hit(&alice, action, 2, MINUTE, now)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        b.rate
            .hit(&bob, action, 2, MINUTE, now)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !b.rate
            .hit(&bob, action, 2, MINUTE, now)
            .await
            .unwrap()
            .allowed
    );
}

/// 20 concurrent hits against a limit of 5: exactly 5 pass, each with a
/// different `remaining`.
pub async fn rate_limit_concurrent_hits_allow_exactly_limit(b: &Backend) {
    let user = unique_user("rate-concurrent");
    let now = minute_boundary() + Duration::seconds(30);
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let rate = Arc::clone(&b.rate);
            let barrier = Arc::clone(&barrier);
            let user = user.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                rate.hit(&user, RateAction::Validate, 5, MINUTE, now).await
            })
        })
        .collect();
    let mut remaining = Vec::new();
    let mut refused = 0;
    for task in futures_util::future::join_all(tasks).await {
        let d = task.expect("task").unwrap();
        if d.allowed {
            remaining.push(d.remaining);
        } else {
            refused += 1;
            assert_eq!(d.retry_after, std::time::Duration::from_secs(30));
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, vec![0, 1, 2, 3, 4]);
    assert_eq!(refused, 15);
    // And the window stays full.
    let d = b
        .rate
        .hit(&user, RateAction::Validate, 5, MINUTE, now)
        .await
        .unwrap();
    assert!(!d.allowed, "{d:?}");
}

// ------------------------------------------------------------------- audit

/// An event for `user` at `at` with a fresh id.
fn audit_event(user: &UserId, at: OffsetDateTime, action: AuditAction, n: usize) -> AuditEvent {
    AuditEvent {
        id: AuditId::generate(at).unwrap(),
        user: user.clone(),
        at,
        action,
        // Budget changes name no key's service.
        service: (!matches!(action, AuditAction::BudgetSet | AuditAction::BudgetDeleted))
            .then(|| Service::ALL[n % Service::ALL.len()]),
        result: (action == AuditAction::Validated).then(|| "valid".to_owned()),
        key_id: (n.is_multiple_of(2)
            && !matches!(action, AuditAction::BudgetSet | AuditAction::BudgetDeleted))
        .then(|| KeyId::parse("k00000000000000ab").expect("an id")),
        request_id: format!("req-{n}"),
    }
}

/// Appends `count` events for `user`, one second apart except the last two,
/// which share a millisecond; returns them newest first (by id).
async fn append_events(b: &Backend, user: &UserId, count: usize) -> Vec<AuditEvent> {
    let base = millis(OffsetDateTime::now_utc()) - Duration::hours(1);
    let mut events = Vec::new();
    for n in 0..count {
        let at = base + Duration::seconds(n.min(count.saturating_sub(2)) as i64);
        let action = AuditAction::ALL[n % AuditAction::ALL.len()];
        let event = audit_event(user, at, action, n);
        b.audit.append(&event).await.unwrap();
        events.push(event);
    }
    events.sort_by(|a, b| b.id.cmp(&a.id));
    events
}

/// Seven events in pages of three: 3, 3, 1, newest first, every field
/// intact, no cursor after the last page; cursors survive their wire form.
pub async fn audit_lists_newest_first_in_pages(b: &Backend) {
    let user = unique_user("audit-pages");
    let want = append_events(b, &user, 7).await;
    assert!(want.windows(2).all(|w| w[0].at >= w[1].at));

    let mut got = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<AuditCursor> = None;
    loop {
        let page = b.audit.list(&user, cursor.as_ref(), 3).await.unwrap();
        sizes.push(page.events.len());
        got.extend(page.events);
        match page.next_cursor {
            Some(next) => {
                // As an HTTP client would send it back.
                cursor = Some(AuditCursor::parse(&next.to_string()).unwrap());
            }
            None => break,
        }
        assert!(sizes.len() <= 3, "too many pages: {sizes:?}");
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(got, want);

    // Listing is stable: the same page twice, events in the same millisecond included.
    let first = b.audit.list(&user, None, 3).await.unwrap();
    assert_eq!(first, b.audit.list(&user, None, 3).await.unwrap());
    assert_eq!(first.events, want[..3].to_vec());

    // One page holding everything has no cursor.
    let all = b.audit.list(&user, None, 7).await.unwrap();
    assert_eq!(all.events, want);
    assert_eq!(all.next_cursor, None);
    let more = b.audit.list(&user, None, 100).await.unwrap();
    assert_eq!(more.events, want);
    assert_eq!(more.next_cursor, None);
}

/// Each user sees only their own events; an unknown user has none.
pub async fn audit_isolates_users(b: &Backend) {
    let alice = unique_user("audit-alice");
    let bob = unique_user("audit-bob#AUDIT#x");
    let alice_events = append_events(b, &alice, 3).await;
    let bob_events = append_events(b, &bob, 2).await;

    let page = b.audit.list(&alice, None, 10).await.unwrap();
    assert_eq!(page.events, alice_events);
    assert!(page.events.iter().all(|e| e.user == alice));
    let page = b.audit.list(&bob, None, 10).await.unwrap();
    assert_eq!(page.events, bob_events);

    // A cursor from alice's log only positions bob's listing in time.
    let cursor = AuditCursor::after(&alice_events[0].id);
    let page = b.audit.list(&bob, Some(&cursor), 10).await.unwrap();
    assert!(page.events.iter().all(|e| e.user == bob));

    let nobody = unique_user("audit-nobody");
    let page = b.audit.list(&nobody, None, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next_cursor, None);
}

/// Malformed cursors are refused before any store call; a well-formed cursor
/// older than every event gives an empty last page; an id is appended once.
pub async fn audit_refuses_bad_cursors_and_duplicate_ids(b: &Backend) {
    let user = unique_user("audit-cursor");
    let events = append_events(b, &user, 2).await;
    for bad in ["", "%%%", "bm90LWFuLWlk", "MTIz", &"QUFB".repeat(40)] {
        assert_eq!(AuditCursor::parse(bad), Err(BadCursor), "{bad:?}");
    }
    let oldest = AuditCursor::after(&events[1].id);
    let page = b.audit.list(&user, Some(&oldest), 5).await.unwrap();
    assert!(page.events.is_empty(), "{page:?}");
    assert_eq!(page.next_cursor, None);
    let newest = AuditCursor::after(&events[0].id);
    let page = b.audit.list(&user, Some(&newest), 5).await.unwrap();
    assert_eq!(page.events, vec![events[1].clone()]);

    let mut again = events[0].clone();
    again.request_id = "req-intruder".to_owned();
    let result = b.audit.append(&again).await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    let page = b.audit.list(&user, None, 5).await.unwrap();
    assert_eq!(page.events, events);
}

/// Counters and audit events never show up in (or change) what resolution reads.
pub async fn rate_and_audit_leave_load_user_unchanged(b: &Backend) {
    let user = unique_user("rate-audit-snapshot");
    let rec = record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi));
    b.meta.put_key(&rec, Expected::Absent).await.unwrap();
    let settings = Settings {
        allow_gateway_fallback: false,
    };
    b.meta.put_settings(&user, settings).await.unwrap();
    let before = b.meta.load_user(&user).await.unwrap();

    let now = OffsetDateTime::now_utc();
    for _ in 0..3 {
        b.rate
            .hit(&user, RateAction::Validate, 2, MINUTE, now)
            .await
            .unwrap();
    }
    append_events(b, &user, 4).await;

    let after = b.meta.load_user(&user).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.keys, vec![rec]);
    assert_eq!(after.settings, settings);
    assert_eq!(
        b.meta
            .get_key(&user, Service::OpenAi, &KeyId::first())
            .await
            .unwrap(),
        Some(after.keys[0].clone())
    );
}

fn key(text: &str) -> ApiKey {
    ApiKey::new(text)
}

/// A user with a current secret for `service` holding `first`.
async fn with_secret(
    b: &Backend,
    case: &str,
    service: Service,
    first: &str,
) -> (UserId, SecretRef) {
    let user = unique_user(case);
    let current = b
        .secrets
        .put_secret(&user, service, &key(first), None)
        .await
        .unwrap();
    (user, current)
}

pub async fn rotation_promotes_pending_and_keeps_previous(b: &Backend) {
    let (user, current) = with_secret(
        b,
        "rot-promote",
        Service::OpenAi,
        "sk-proj-first-0123456789",
    )
    .await;
    let staged = b
        .rotation
        .stage(&current.id, &key("sk-proj-second-0123456789"))
        .await
        .unwrap();
    assert_eq!(
        staged.id, current.id,
        "a staged key is a version of the same secret"
    );
    let v = b.rotation.describe(&current.id).await.unwrap();
    assert_eq!((v.user.clone(), v.service), (user.clone(), Service::OpenAi));
    assert_eq!(v.current.as_deref(), Some(current.version.as_str()));
    assert_eq!(v.staged.as_deref(), Some(staged.version.as_str()));
    assert_eq!(v.pending, None);
    // The staged key is readable by its version, and serves nothing.
    assert_eq!(
        b.secrets.get_secret(&staged).await.unwrap(),
        key("sk-proj-second-0123456789")
    );

    let token = "0f0e0d0c0b0a09080706050403020100";
    b.rotation
        .put_pending(&current.id, token, &key("sk-proj-second-0123456789"))
        .await
        .unwrap();
    assert_eq!(
        b.rotation.get_pending(&current.id, token).await.unwrap(),
        key("sk-proj-second-0123456789")
    );
    assert_eq!(
        b.rotation
            .describe(&current.id)
            .await
            .unwrap()
            .pending
            .as_deref(),
        Some(token)
    );

    b.rotation.promote(&current.id, token).await.unwrap();
    let v = b.rotation.describe(&current.id).await.unwrap();
    assert_eq!(v.current.as_deref(), Some(token));
    assert_eq!((v.pending, v.staged), (None, None));
    let promoted = SecretRef {
        id: current.id.clone(),
        version: token.to_owned(),
    };
    assert_eq!(
        b.secrets.get_secret(&promoted).await.unwrap(),
        key("sk-proj-second-0123456789")
    );
    // The old current stays readable (previous): in-flight readers never miss.
    assert_eq!(
        b.secrets.get_secret(&current).await.unwrap(),
        key("sk-proj-first-0123456789")
    );
    assert!(matches!(
        b.rotation.get_pending(&current.id, token).await,
        Err(StoreError::SecretNotFound)
    ));
}

pub async fn rotation_steps_are_idempotent(b: &Backend) {
    let (_, current) = with_secret(b, "rot-idem", Service::Groq, "gsk_first_0123456789abc").await;
    b.rotation
        .stage(&current.id, &key("gsk_second_0123456789ab"))
        .await
        .unwrap();
    let token = "aa0e0d0c0b0a09080706050403020100";
    for _ in 0..2 {
        b.rotation
            .put_pending(&current.id, token, &key("gsk_second_0123456789ab"))
            .await
            .unwrap();
    }
    assert_eq!(
        b.rotation.get_pending(&current.id, token).await.unwrap(),
        key("gsk_second_0123456789ab")
    );
    for _ in 0..2 {
        b.rotation.promote(&current.id, token).await.unwrap();
    }
    // A retried create after the promotion changes nothing either.
    b.rotation
        .put_pending(&current.id, token, &key("gsk_second_0123456789ab"))
        .await
        .unwrap();
    let v = b.rotation.describe(&current.id).await.unwrap();
    assert_eq!(v.current.as_deref(), Some(token));
    assert_eq!(
        b.secrets.get_secret(&current).await.unwrap(),
        key("gsk_first_0123456789abc")
    );
}

pub async fn rotation_discard_keeps_current(b: &Backend) {
    let (_, current) = with_secret(b, "rot-discard", Service::Xai, "xai-first-0123456789abc").await;
    b.rotation
        .stage(&current.id, &key("xai-second-0123456789ab"))
        .await
        .unwrap();
    let token = "bb0e0d0c0b0a09080706050403020100";
    b.rotation
        .put_pending(&current.id, token, &key("xai-second-0123456789ab"))
        .await
        .unwrap();
    // A superseded rotation drops only its own version: the staged key stays.
    b.rotation
        .discard(&current.id, Some(token), false)
        .await
        .unwrap();
    let v = b.rotation.describe(&current.id).await.unwrap();
    assert_eq!(v.pending, None);
    assert!(v.staged.is_some(), "the staged key is kept");
    for _ in 0..2 {
        b.rotation
            .discard(&current.id, Some(token), true)
            .await
            .unwrap();
    }
    let v = b.rotation.describe(&current.id).await.unwrap();
    assert_eq!(v.current.as_deref(), Some(current.version.as_str()));
    assert_eq!((v.pending, v.staged), (None, None));
    assert!(b.rotation.get_pending(&current.id, token).await.is_err());
    assert_eq!(
        b.secrets.get_secret(&current).await.unwrap(),
        key("xai-first-0123456789abc")
    );
    // Staging again after a discard works (no stray label blocks it).
    let again = b
        .rotation
        .stage(&current.id, &key("xai-third-0123456789abc"))
        .await
        .unwrap();
    assert_eq!(
        b.rotation.describe(&current.id).await.unwrap().staged,
        Some(again.version)
    );
}

pub async fn rotation_stage_needs_a_secret(b: &Backend) {
    let user = unique_user("rot-nosecret");
    let err = b
        .rotation
        .stage(
            &fake_ref(&user, Service::OpenAi).id,
            &key("sk-proj-orphan-0123456789"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SecretNotFound), "{err:?}");
    assert!(matches!(
        b.rotation.describe("no-such-secret-0123").await,
        Err(StoreError::SecretNotFound)
    ));
}

pub async fn rotation_lists_and_deletes_secrets_by_id(b: &Backend) {
    let (user, current) =
        with_secret(b, "rot-list", Service::Google, "AIzaSy-first-0123456789ab").await;
    let listed = b.rotation.list_secrets().await.unwrap();
    let mine = listed.iter().find(|s| s.id == current.id).expect("listed");
    assert_eq!(mine.owner, Some((user.clone(), Service::Google)));
    assert!(mine.changed_at.is_some());
    b.rotation.delete_by_id(&current.id).await.unwrap();
    b.rotation.delete_by_id(&current.id).await.unwrap();
    assert!(matches!(
        b.secrets.get_secret(&current).await,
        Err(StoreError::SecretNotFound)
    ));
    assert!(
        !b.rotation
            .list_secrets()
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == current.id)
    );
}

/// A service's keys are separate records: each read, written, marked and
/// deleted by its id, all of them in the one snapshot read, in order.
pub async fn several_keys_per_service_are_kept_apart(b: &Backend) {
    let user = unique_user("several-keys");
    let first = record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi));
    let second = KeyRecord {
        id: KeyId::generate().unwrap(),
        priority: 1,
        label: "second".into(),
        ..record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi))
    };
    let third = KeyRecord {
        id: KeyId::generate().unwrap(),
        priority: 0,
        label: "third".into(),
        created_at: first.created_at + Duration::seconds(1),
        ..record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi))
    };
    for rec in [&first, &second, &third] {
        b.meta.put_key(rec, Expected::Absent).await.unwrap();
    }
    // The same id again conflicts; another id of the same service does not.
    assert!(matches!(
        b.meta.put_key(&second, Expected::Absent).await,
        Err(StoreError::Conflict)
    ));
    let snapshot = b.meta.load_user(&user).await.unwrap();
    assert_eq!(snapshot.keys.len(), 3);
    let order: Vec<&KeyId> = snapshot
        .keys_of(Service::OpenAi)
        .iter()
        .map(|k| &k.id)
        .collect();
    assert_eq!(order, [&first.id, &third.id, &second.id]);
    assert_eq!(
        snapshot.key(Service::OpenAi).map(|k| &k.id),
        Some(&first.id)
    );
    assert_eq!(
        b.meta
            .get_key(&user, Service::OpenAi, &second.id)
            .await
            .unwrap()
            .as_ref(),
        Some(&second)
    );

    // Health marks change one record and not its revision; a missing
    // record is no error.
    let at = millis(OffsetDateTime::now_utc());
    let until = at + Duration::seconds(30);
    for mark in [
        KeyMark::Used(at),
        KeyMark::CoolDown(until),
        KeyMark::Refused(at),
    ] {
        b.meta
            .mark_key(&user, Service::OpenAi, &second.id, mark)
            .await
            .unwrap();
    }
    let marked = b
        .meta
        .get_key(&user, Service::OpenAi, &second.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marked.last_used_at, Some(at));
    assert_eq!(marked.cooldown_until, Some(until));
    assert_eq!(marked.last_validation, Some(ValidationResult::Invalid));
    assert_eq!(marked.last_validated_at, Some(at));
    assert_eq!(marked.revision, second.revision);
    assert_eq!(
        b.meta
            .get_key(&user, Service::OpenAi, &first.id)
            .await
            .unwrap()
            .as_ref(),
        Some(&first)
    );
    b.meta
        .mark_key(
            &user,
            Service::OpenAi,
            &KeyId::generate().unwrap(),
            KeyMark::Used(at),
        )
        .await
        .unwrap();
    assert_eq!(b.meta.load_user(&user).await.unwrap().keys.len(), 3);

    // A conditional write of one key leaves the others alone.
    let relabelled = KeyRecord {
        label: "renamed".into(),
        revision: marked.revision + 1,
        ..marked.clone()
    };
    b.meta
        .put_key(&relabelled, Expected::Revision(marked.revision))
        .await
        .unwrap();
    assert_eq!(
        b.meta
            .get_key(&user, Service::OpenAi, &second.id)
            .await
            .unwrap()
            .map(|k| (k.label, k.cooldown_until)),
        Some(("renamed".to_owned(), Some(until)))
    );

    // Deleting one key leaves the others.
    let deleted = b
        .meta
        .delete_key(&user, Service::OpenAi, &third.id)
        .await
        .unwrap();
    assert_eq!(deleted.map(|k| k.id), Some(third.id.clone()));
    let left: Vec<KeyId> = b
        .meta
        .load_user(&user)
        .await
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&first.id) && left.contains(&second.id));
}

pub async fn scan_keys_pages_through_every_user(b: &Backend) {
    let mut mine = std::collections::BTreeSet::new();
    for i in 0..5 {
        let user = unique_user(&format!("scan-{i}"));
        for service in [Service::OpenAi, Service::Anthropic] {
            let rec = record(&user, service, fake_ref(&user, service));
            b.meta.put_key(&rec, Expected::Absent).await.unwrap();
            mine.insert((user.clone(), service, rec.id));
        }
        // A second key of one service.
        let rec = KeyRecord {
            id: KeyId::generate().unwrap(),
            priority: 1,
            ..record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi))
        };
        b.meta.put_key(&rec, Expected::Absent).await.unwrap();
        mine.insert((user.clone(), Service::OpenAi, rec.id));
        b.meta
            .put_settings(&user, Settings::default())
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = b.meta.scan_keys(cursor.as_deref(), 3).await.unwrap();
        pages += 1;
        assert!(page.keys.len() <= 3);
        for k in page.keys {
            assert!(
                seen.insert((k.user.clone(), k.service, k.id.clone())),
                "seen twice: {:?}",
                k.user
            );
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10_000, "scan does not end");
    }
    assert!(mine.is_subset(&seen), "every key record is scanned");
    assert!(pages > 1, "small pages were used");
}

/// A ledger entry of `user` at `at` with the given tokens and cost.
fn usage_entry(
    user: &UserId,
    at: OffsetDateTime,
    model: &str,
    path: ResolutionPath,
    tokens: (u64, u64),
    cost_nanos: Option<u64>,
) -> UsageEntry {
    UsageEntry {
        user: user.clone(),
        tenant: None,
        at: millis(at),
        request_id: format!("req-{}", at.unix_timestamp_nanos()),
        attempt: 0,
        service: Service::OpenAi,
        model: model.to_owned(),
        path,
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        cost_nanos,
        estimated: false,
        outcome: LedgerOutcome::Ok,
        error_code: None,
        stream: true,
        fallback: false,
        time_to_first_byte_ms: Some(12),
        duration_ms: 40,
    }
}

fn utc_day(t: OffsetDateTime) -> time::Date {
    t.to_offset(UtcOffset::UTC).date()
}

/// The rows of `user`, sorted by (day, model, path).
fn rows_of(rows: Vec<UsageRow>, user: &UserId) -> Vec<UsageRow> {
    let mut mine: Vec<UsageRow> = rows.into_iter().filter(|r| &r.user == user).collect();
    mine.sort_by(|a, b| {
        (a.day, &a.model, a.path.as_str(), &a.tenant).cmp(&(
            b.day,
            &b.model,
            b.path.as_str(),
            &b.tenant,
        ))
    });
    mine
}

pub async fn usage_aggregates_add_up_per_day_model_and_path(b: &Backend) {
    let user = unique_user("usage-aggregates");
    let other = unique_user("usage-aggregates-other");
    let rec = record(&user, Service::OpenAi, fake_ref(&user, Service::OpenAi));
    b.meta.put_key(&rec, Expected::Absent).await.unwrap();
    let before = b.meta.load_user(&user).await.unwrap();

    let today = OffsetDateTime::now_utc();
    let yesterday = today - Duration::days(1);
    let long_ago = today - Duration::days(40);
    let team = ResolutionPath::TeamGateway;
    let own = ResolutionPath::UserProvider;
    for entry in [
        usage_entry(&user, today, "openai/gpt-4o-mini", team, (10, 5), Some(100)),
        usage_entry(&user, today, "openai/gpt-4o-mini", team, (20, 7), Some(250)),
        usage_entry(&user, today, "openai/gpt-4o-mini", own, (3, 1), Some(9)),
        usage_entry(&user, today, "mistral/unpriced", team, (4, 4), None),
        usage_entry(
            &user,
            yesterday,
            "openai/gpt-4o-mini",
            team,
            (1, 1),
            Some(2),
        ),
        usage_entry(
            &user,
            long_ago,
            "openai/gpt-4o-mini",
            team,
            (99, 99),
            Some(99),
        ),
        usage_entry(
            &other,
            today,
            "openai/gpt-4o-mini",
            team,
            (1000, 1000),
            Some(1),
        ),
    ] {
        b.usage.record_usage(&entry, None).await.unwrap();
    }
    let mut failed = usage_entry(&user, today, "openai/gpt-4o-mini", team, (0, 0), Some(0));
    failed.outcome = LedgerOutcome::UpstreamError;
    failed.error_code = Some("upstream_unavailable".into());
    failed.time_to_first_byte_ms = None;
    b.usage.record_usage(&failed, None).await.unwrap();
    let mut cut = usage_entry(&user, today, "openai/gpt-4o-mini", team, (6, 2), Some(30));
    cut.outcome = LedgerOutcome::Cancelled;
    cut.estimated = true;
    b.usage.record_usage(&cut, None).await.unwrap();

    let rows = b
        .usage
        .user_usage(&user, utc_day(yesterday), utc_day(today))
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.user == user && r.tenant.is_none()));
    let rows = rows_of(rows, &user);
    let summary: Vec<(time::Date, &str, &str, u64, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.day,
                r.model.as_str(),
                r.path.as_str(),
                r.counts.requests,
                r.counts.prompt_tokens,
                r.counts.completion_tokens,
                r.counts.cost_nanos,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                utc_day(yesterday),
                "openai/gpt-4o-mini",
                "team-gateway",
                1,
                1,
                1,
                2
            ),
            (
                utc_day(today),
                "mistral/unpriced",
                "team-gateway",
                1,
                4,
                4,
                0
            ),
            (
                utc_day(today),
                "openai/gpt-4o-mini",
                "team-gateway",
                4,
                36,
                14,
                380
            ),
            (
                utc_day(today),
                "openai/gpt-4o-mini",
                "user-provider",
                1,
                3,
                1,
                9
            ),
        ]
    );
    let team_today = &rows[2].counts;
    assert_eq!(
        *team_today,
        UsageCounts {
            requests: 4,
            prompt_tokens: 36,
            completion_tokens: 14,
            cost_nanos: 380,
            priced_requests: 4,
            estimated_requests: 1,
            failed_requests: 1,
            cancelled_requests: 1,
            limited_requests: 0,
            ttfb_ms_sum: 36,
            duration_ms_sum: 160,
        }
    );
    assert_eq!(rows[1].counts.priced_requests, 0, "no price: not priced");

    // A range of one day, and a range with nothing in it.
    let only_yesterday = b
        .usage
        .user_usage(&user, utc_day(yesterday), utc_day(yesterday))
        .await
        .unwrap();
    assert_eq!(only_yesterday.len(), 1);
    let nothing = b
        .usage
        .user_usage(
            &user,
            utc_day(today - Duration::days(10)),
            utc_day(today - Duration::days(5)),
        )
        .await
        .unwrap();
    assert!(nothing.is_empty());
    let theirs = b
        .usage
        .user_usage(&other, utc_day(today), utc_day(today))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].counts.prompt_tokens, 1000);

    // The ledger lives outside what resolution reads.
    assert_eq!(b.meta.load_user(&user).await.unwrap(), before);
}

pub async fn usage_concurrent_records_lose_nothing(b: &Backend) {
    let user = unique_user("usage-concurrent");
    let now = OffsetDateTime::now_utc();
    let writes = (0..40u64).map(|i| {
        let usage = b.usage.clone();
        let entry = usage_entry(
            &user,
            now,
            "openai/gpt-4o-mini",
            ResolutionPath::TeamGateway,
            (i, 1),
            Some(i * 10),
        );
        async move { usage.record_usage(&entry, None).await }
    });
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
    let rows = b
        .usage
        .user_usage(&user, utc_day(now), utc_day(now))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let c = rows[0].counts;
    assert_eq!(c.requests, 40);
    assert_eq!(c.prompt_tokens, (0..40).sum::<u64>());
    assert_eq!(c.completion_tokens, 40);
    assert_eq!(c.cost_nanos, (0..40).map(|i| i * 10).sum::<u64>());
    let all = rows_of(
        b.usage.all_usage(utc_day(now), utc_day(now)).await.unwrap(),
        &user,
    );
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].counts, c, "the operator's view adds up the same");
}

pub async fn usage_operator_view_has_every_user_and_tenant(b: &Backend) {
    let alice = unique_user("usage-view-alice");
    let bob = unique_user("usage-view-bob#odd/id");
    let now = OffsetDateTime::now_utc();
    let tenant = TenantId::new("acme:corp#1").unwrap();
    let mut a1 = usage_entry(
        &alice,
        now,
        "openai/gpt-4o",
        ResolutionPath::TeamGateway,
        (5, 5),
        Some(50),
    );
    a1.tenant = Some(tenant.clone());
    let mut a2 = a1.clone();
    a2.prompt_tokens = 7;
    let b1 = usage_entry(
        &bob,
        now,
        "openai/gpt-4o",
        ResolutionPath::UserGateway,
        (1, 2),
        Some(3),
    );
    for e in [&a1, &a2, &b1] {
        b.usage.record_usage(e, None).await.unwrap();
    }
    let all = b.usage.all_usage(utc_day(now), utc_day(now)).await.unwrap();
    let alice_rows = rows_of(all.clone(), &alice);
    assert_eq!(alice_rows.len(), 1);
    assert_eq!(alice_rows[0].tenant.as_ref(), Some(&tenant));
    assert_eq!(alice_rows[0].counts.prompt_tokens, 12);
    assert_eq!(alice_rows[0].counts.requests, 2);
    let bob_rows = rows_of(all, &bob);
    assert_eq!(bob_rows.len(), 1);
    assert_eq!(bob_rows[0].tenant, None);
    assert_eq!(bob_rows[0].path, ResolutionPath::UserGateway);
    assert_eq!(bob_rows[0].counts.completion_tokens, 2);
    // A user's own rows never carry the tenant.
    let mine = b
        .usage
        .user_usage(&alice, utc_day(now), utc_day(now))
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].tenant, None);
    // Days outside the range are not read.
    let tomorrow = utc_day(now + Duration::days(1));
    let later = b.usage.all_usage(tomorrow, tomorrow).await.unwrap();
    assert!(rows_of(later, &alice).is_empty());
}

pub async fn usage_raw_entries_newest_first_until_they_expire(b: &Backend) {
    let user = unique_user("usage-raw");
    let now = OffsetDateTime::now_utc();
    let keep = std::time::Duration::from_secs(86_400);
    let mut first = usage_entry(
        &user,
        now - Duration::seconds(2),
        "openai/gpt-4o",
        ResolutionPath::TeamProvider,
        (3, 4),
        Some(5),
    );
    first.tenant = TenantId::new("t-1");
    first.request_id = "req-first".into();
    let mut second = usage_entry(
        &user,
        now - Duration::seconds(1),
        "openai/gpt-4o",
        ResolutionPath::TeamProvider,
        (0, 0),
        None,
    );
    second.request_id = "req-second".into();
    second.attempt = 1;
    second.fallback = true;
    second.outcome = LedgerOutcome::Limited;
    second.error_code = Some("rate_limited".into());
    second.time_to_first_byte_ms = None;
    second.stream = false;
    let mut expired = usage_entry(
        &user,
        now - Duration::days(3),
        "openai/gpt-4o",
        ResolutionPath::TeamProvider,
        (1, 1),
        Some(1),
    );
    expired.request_id = "req-expired".into();
    for e in [&expired, &first, &second] {
        b.usage.record_usage(e, Some(keep)).await.unwrap();
    }
    // Without retention only the aggregate is written.
    let unkept = usage_entry(
        &user,
        now,
        "openai/gpt-4o",
        ResolutionPath::TeamProvider,
        (1, 1),
        Some(1),
    );
    b.usage.record_usage(&unkept, None).await.unwrap();

    let recent = b.usage.recent_usage(&user, 10).await.unwrap();
    assert_eq!(
        recent,
        vec![second.clone(), first.clone()],
        "newest first, expired gone"
    );
    assert_eq!(b.usage.recent_usage(&user, 1).await.unwrap(), vec![second]);
    let other = unique_user("usage-raw-other");
    assert!(b.usage.recent_usage(&other, 10).await.unwrap().is_empty());
}

fn budget(scope: BudgetScope, terms: BudgetTerms) -> BudgetRecord {
    let now = byok::domain::now();
    BudgetRecord {
        scope,
        period_key: terms.period.key(now),
        terms,
        updated_at: now,
        updated_by: UserId::new("contract-admin").unwrap(),
        used: Amount::ZERO,
        holds: Vec::new(),
        settled: Vec::new(),
        alerted: Vec::new(),
        revision: 1,
    }
}

fn token_terms(limit: u64, pause: bool) -> BudgetTerms {
    BudgetTerms {
        unit: BudgetUnit::Tokens,
        period: BudgetPeriod::Daily,
        limit,
        pause_at_limit: pause,
        alert_thresholds: vec![80, 90, 100],
    }
}

/// A budget service over `b`'s stores, as one instance of the gateway runs it.
fn budget_service(b: &Backend) -> byok::budget::BudgetService {
    byok::budget::BudgetService::new(
        b.budgets.clone(),
        Arc::new(byok::catalog::Catalog::builtin().unwrap()),
        Arc::new(byok::events::LogSink),
        byok::audit::AuditLog::new(b.audit.clone()),
    )
}

pub async fn budget_round_trips_with_revisions(b: &Backend) {
    let user = unique_user("budget-rt");
    let scope = BudgetScope::User(user.clone());
    assert_eq!(b.budgets.get_budget(&scope).await.unwrap(), None);
    let mut record = budget(scope.clone(), token_terms(1_000, true));
    record.used = Amount {
        tokens: 12,
        nanos: 3_400,
    };
    record.holds = vec![Hold {
        id: "h1".into(),
        amount: Amount {
            tokens: 100,
            nanos: 7,
        },
        expires_ms: 1_900_000_000_000,
    }];
    record.alerted = vec![80];
    b.budgets
        .put_budget(&record, Expected::Absent)
        .await
        .unwrap();
    assert!(matches!(
        b.budgets.put_budget(&record, Expected::Absent).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        b.budgets.get_budget(&scope).await.unwrap(),
        Some(record.clone())
    );

    let mut next = record.clone();
    next.revision = 2;
    next.terms.unit = BudgetUnit::Usd;
    next.terms.limit = 5_000_000_000;
    assert!(matches!(
        b.budgets.put_budget(&next, Expected::Revision(7)).await,
        Err(StoreError::Conflict)
    ));
    b.budgets
        .put_budget(&next, Expected::Revision(1))
        .await
        .unwrap();
    assert_eq!(
        b.budgets.get_budget(&scope).await.unwrap(),
        Some(next.clone())
    );

    // A tenant of the same id is another budget.
    let tenant = BudgetScope::Tenant(TenantId::new(user.as_str()).unwrap());
    assert_eq!(b.budgets.get_budget(&tenant).await.unwrap(), None);

    assert_eq!(b.budgets.delete_budget(&scope).await.unwrap(), Some(next));
    assert_eq!(b.budgets.delete_budget(&scope).await.unwrap(), None);
    assert_eq!(b.budgets.get_budget(&scope).await.unwrap(), None);
    // Updating a budget that does not exist changes nothing.
    let change: byok::store::BudgetChange = Arc::new(|r: &mut BudgetRecord| r.used.tokens += 1);
    assert_eq!(b.budgets.update_budget(&scope, change).await.unwrap(), None);
    assert_eq!(b.budgets.get_budget(&scope).await.unwrap(), None);
}

pub async fn budget_list_pages_in_order(b: &Backend) {
    let base = unique_user("budget-list");
    let mine: Vec<BudgetScope> = ["a", "b", "c"]
        .iter()
        .map(|s| BudgetScope::User(UserId::new(format!("{base}-{s}")).unwrap()))
        .collect();
    for scope in &mine {
        b.budgets
            .put_budget(
                &budget(scope.clone(), token_terms(10, false)),
                Expected::Absent,
            )
            .await
            .unwrap();
    }
    // Other cases may share the store: page through everything, keep ours.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut last_key = String::new();
    loop {
        let page = b.budgets.list_budgets(after.as_deref(), 2).await.unwrap();
        assert!(page.budgets.len() <= 2);
        for record in &page.budgets {
            let key = record.scope.sort_key();
            assert!(key > last_key, "sort key order: {key} after {last_key}");
            last_key = key;
            if mine.contains(&record.scope) {
                seen.push(record.scope.clone());
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, mine);
    b.budgets.delete_budget(&mine[1]).await.unwrap();
    let mut left = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.budgets.list_budgets(after.as_deref(), 50).await.unwrap();
        left.extend(
            page.budgets
                .into_iter()
                .map(|r| r.scope)
                .filter(|s| mine.contains(s)),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(left, [mine[0].clone(), mine[2].clone()]);
}

pub async fn budget_reservations_from_two_instances_never_pass_a_paused_limit(b: &Backend) {
    let user = unique_user("budget-race");
    let scope = BudgetScope::User(user.clone());
    b.budgets
        .put_budget(
            &budget(scope.clone(), token_terms(1_000, true)),
            Expected::Absent,
        )
        .await
        .unwrap();
    // Two instances of the gateway, each on its own instance of the store.
    let first = Arc::new(budget_service(b));
    let second = Arc::new(byok::budget::BudgetService::new(
        b.budgets_elsewhere.clone(),
        Arc::new(byok::catalog::Catalog::builtin().unwrap()),
        Arc::new(byok::events::LogSink),
        byok::audit::AuditLog::new(b.audit.clone()),
    ));
    let ask = byok::budget::Ask {
        tokens: 100,
        nanos: Some(1),
    };
    let tries = (0..30).map(|i| {
        let service = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let user = user.clone();
        async move { service.reserve(&user, None, ask).await }
    });
    let results = futures_util::future::join_all(tries).await;
    let granted: Vec<&byok::budget::Reservation> =
        results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(byok::budget::BudgetError::Exceeded(_))))
        .count();
    assert_eq!(granted.len(), 10, "exactly the limit is reserved");
    assert_eq!(refused, 20);
    let stored = b.budgets.get_budget(&scope).await.unwrap().unwrap();
    assert_eq!(stored.reserved().tokens, 1_000);
    assert_eq!(stored.remaining(), 0);

    // Settling below the reservation frees the difference; alerts are claimed once.
    let actual = Amount {
        tokens: 80,
        nanos: 0,
    };
    let settles = granted.iter().enumerate().map(|(i, r)| {
        let service = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        async move { service.settle(&r.holds, actual).await }
    });
    futures_util::future::join_all(settles).await;
    let stored = b.budgets.get_budget(&scope).await.unwrap().unwrap();
    assert_eq!(stored.used.tokens, 800);
    assert_eq!(stored.holds, Vec::new());
    assert_eq!(stored.alerted, [80], "80 % crossed once");
    assert_eq!(stored.remaining(), 200);
}

pub async fn budget_periods_roll_and_total_never_resets(b: &Backend) {
    let service = budget_service(b);
    let used = Amount {
        tokens: 500,
        nanos: 9,
    };
    // A daily budget last counted on another day starts the new day at zero.
    let daily = BudgetScope::User(unique_user("budget-daily"));
    let mut stale = budget(daily.clone(), token_terms(1_000, true));
    stale.period_key = "daily:2020-01-01".into();
    stale.used = used;
    stale.alerted = vec![80];
    stale.holds = vec![Hold {
        id: "old".into(),
        amount: Amount {
            tokens: 300,
            nanos: 0,
        },
        expires_ms: i64::MAX,
    }];
    b.budgets
        .put_budget(&stale, Expected::Absent)
        .await
        .unwrap();
    let now = service.get(&daily).await.unwrap();
    assert_eq!(
        (now.used, now.reserved(), now.alerted.len()),
        (Amount::ZERO, Amount::ZERO, 0)
    );
    assert_eq!(now.period_key, BudgetPeriod::Daily.key(byok::domain::now()));

    // A total budget keeps counting whatever the date.
    let total = BudgetScope::User(unique_user("budget-total"));
    let mut terms = token_terms(1_000, true);
    terms.period = BudgetPeriod::Total;
    let mut kept = budget(total.clone(), terms);
    kept.used = used;
    b.budgets.put_budget(&kept, Expected::Absent).await.unwrap();
    let now = service.get(&total).await.unwrap();
    assert_eq!(now.used, used);
    assert_eq!(now.period_key, "total");

    // An expired reservation no longer counts.
    let expiring = BudgetScope::User(unique_user("budget-expiry"));
    let mut held = budget(expiring.clone(), token_terms(1_000, true));
    held.holds = vec![Hold {
        id: "gone".into(),
        amount: Amount {
            tokens: 900,
            nanos: 0,
        },
        expires_ms: 1,
    }];
    b.budgets.put_budget(&held, Expected::Absent).await.unwrap();
    assert_eq!(service.get(&expiring).await.unwrap().remaining(), 1_000);
}

/// A personal key's record for `user`, made `minutes_ago`.
fn token_record(user: &UserId, name: &str, minutes_ago: i64) -> (ApiTokenRecord, PersonalKey) {
    let key = PersonalKey::generate().unwrap();
    let created = now_ms() - Duration::minutes(minutes_ago);
    let record = ApiTokenRecord {
        id: ApiTokenId::generate().unwrap(),
        user: user.clone(),
        tenant: TenantId::new(format!("tenant-of-{name}")),
        name: name.to_owned(),
        prefix: key.shown_prefix(),
        hash: key.hash(),
        created_at: created,
        expires_at: Some(created + Duration::days(30)),
        last_used_at: None,
    };
    (record, key)
}

/// Now, at the millisecond precision stores keep.
fn now_ms() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap()
}

pub async fn personal_keys_are_found_by_hash_listed_and_revoked(b: &Backend) {
    let user = unique_user("tokens");
    let other = unique_user("tokens-other");
    assert_eq!(b.tokens.list_tokens(&user).await.unwrap(), vec![]);
    let (first, first_key) = token_record(&user, "laptop", 10);
    let (mut second, second_key) = token_record(&user, "ci", 5);
    second.tenant = None;
    second.expires_at = None;
    let (theirs, theirs_key) = token_record(&other, "theirs", 1);
    for record in [&second, &first, &theirs] {
        b.tokens.create_token(record).await.unwrap();
    }
    assert!(matches!(
        b.tokens.create_token(&first).await,
        Err(StoreError::Conflict)
    ));

    // Found by hash, every field intact; listed oldest first, per user.
    assert_eq!(
        b.tokens.find_token(&first_key.hash()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        b.tokens.find_token(&second_key.hash()).await.unwrap(),
        Some(second.clone())
    );
    let unknown = PersonalKey::generate().unwrap();
    assert_eq!(b.tokens.find_token(&unknown.hash()).await.unwrap(), None);
    assert_eq!(
        b.tokens.list_tokens(&user).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        b.tokens.list_tokens(&other).await.unwrap(),
        vec![theirs.clone()]
    );

    // Marked as used: seen by both reads.
    let used = now_ms();
    b.tokens
        .mark_token_used(&user, &first.id, &first.hash, used)
        .await
        .unwrap();
    let found = b
        .tokens
        .find_token(&first_key.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.last_used_at, Some(used));
    assert_eq!(
        b.tokens.list_tokens(&user).await.unwrap()[0].last_used_at,
        Some(used)
    );

    // Another user's id revokes nothing; the owner's revokes at once.
    assert_eq!(
        b.tokens.delete_token(&other, &first.id).await.unwrap(),
        None
    );
    let removed = b.tokens.delete_token(&user, &first.id).await.unwrap();
    assert_eq!(removed.map(|r| r.id), Some(first.id.clone()));
    assert_eq!(b.tokens.find_token(&first_key.hash()).await.unwrap(), None);
    assert_eq!(b.tokens.delete_token(&user, &first.id).await.unwrap(), None);
    assert_eq!(
        b.tokens.list_tokens(&user).await.unwrap(),
        vec![second.clone()]
    );
    // Marking a revoked key does not bring it back.
    b.tokens
        .mark_token_used(&user, &first.id, &first.hash, used)
        .await
        .unwrap();
    assert_eq!(b.tokens.find_token(&first_key.hash()).await.unwrap(), None);
    assert_eq!(b.tokens.list_tokens(&user).await.unwrap().len(), 1);
    assert!(
        b.tokens
            .find_token(&theirs_key.hash())
            .await
            .unwrap()
            .is_some()
    );
    // Personal keys never appear in what resolution reads.
    assert_eq!(b.meta.load_user(&user).await.unwrap().keys, vec![]);
}
