//! Fault injection on the key write paths: the key service over the embedded
//! store, wrapped so that its Nth store call fails. Every operation
//! (create, replace, toggle, relabel, delete) runs once with a failure at
//! each of its store calls in turn; afterwards no key is lost, no key
//! record points at a missing secret, and the operation succeeds when tried
//! again. Then 50 concurrent creates, replacements, toggles and deletes of
//! one key end in a state some serial order of them could have produced.
//! Budgets (reserve and settle) and every rotation step get the same
//! treatment; a failed rotation step is retried, as Secrets Manager does.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "helpers outside #[test] functions: a failed step is a failed test"
)]

use async_trait::async_trait;
use byok::completion::UpstreamClient;
use byok::config::UpstreamTimeouts;
use byok::crypto::MasterKey;
use byok::domain::{ApiKey, KeyId, KeyRecord, SecretRef, Service, Settings, UserId};
use byok::keys::{KeyPatch, KeyService, KeyUpsert};
use byok::resolve::{Resolver, TeamCredentials, Upstreams};
use byok::rotation::{RotationService, Step};
use byok::store::embedded::EmbeddedStore;
use byok::store::rotation::{ListedSecret, RotationStore, SecretVersions};
use byok::store::{
    Amount, BudgetChange, BudgetPage, BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, Expected, KeyMark, KeyPage, MetadataStore, SecretStore, StoreError,
    UserSnapshot,
};
use byok::validate::ValidationService;
use byok_tests::upstream::StandIn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The embedded store, failing its `fail_at`-th call (counting from 1; 0:
/// never).
struct Faulty {
    inner: Arc<EmbeddedStore>,
    calls: AtomicUsize,
    fail_at: AtomicUsize,
}

impl Faulty {
    fn new(inner: Arc<EmbeddedStore>) -> Self {
        Self {
            inner,
            calls: AtomicUsize::new(0),
            fail_at: AtomicUsize::new(0),
        }
    }

    /// Counts from zero again and fails call `n` (0: none).
    fn arm(&self, n: usize) {
        self.calls.store(0, Ordering::SeqCst);
        self.fail_at.store(n, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn step(&self) -> Result<(), StoreError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected fault".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl MetadataStore for Faulty {
    async fn load_user(&self, user: &UserId) -> Result<UserSnapshot, StoreError> {
        self.step()?;
        self.inner.load_user(user).await
    }
    async fn get_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.step()?;
        self.inner.get_key(user, service, id).await
    }
    async fn mark_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mark: KeyMark,
    ) -> Result<(), StoreError> {
        self.step()?;
        self.inner.mark_key(user, service, id, mark).await
    }
    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError> {
        self.step()?;
        self.inner.put_key(record, expected).await
    }
    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.step()?;
        self.inner.delete_key(user, service, id).await
    }
    async fn put_settings(
        &self,
        user: &UserId,
        settings: Settings,
    ) -> Result<Settings, StoreError> {
        self.step()?;
        self.inner.put_settings(user, settings).await
    }
    async fn scan_keys(&self, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError> {
        self.step()?;
        self.inner.scan_keys(after, limit).await
    }
}

#[async_trait]
impl SecretStore for Faulty {
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
        into: Option<&SecretRef>,
    ) -> Result<SecretRef, StoreError> {
        self.step()?;
        self.inner.put_secret(user, service, key, into).await
    }
    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
        self.step()?;
        self.inner.get_secret(secret).await
    }
    async fn delete_secret(&self, secret: &SecretRef) -> Result<(), StoreError> {
        self.step()?;
        self.inner.delete_secret(secret).await
    }
}

const OLD_KEY: &str = "gsk_faults0old0000000000000000001";
const NEW_KEY: &str = "gsk_faults0new0000000000000000002";

fn upsert(key: &str) -> KeyUpsert {
    KeyUpsert {
        service: Service::Groq,
        api_key: ApiKey::new(key),
        base_url: None,
        label: None,
    }
}

/// The stored key's value, read straight from the store (no faults); `None`
/// if there is no record. A record whose secret is missing fails the test.
async fn stored_value(store: &EmbeddedStore, user: &UserId) -> Option<String> {
    let snapshot = store.load_user(user).await.unwrap();
    let keys = snapshot.keys_of(Service::Groq);
    assert!(keys.len() <= 1, "one key at most: {keys:?}");
    let record = keys.first().copied()?.clone();
    let secret = store
        .get_secret(&record.secret)
        .await
        .unwrap_or_else(|e| panic!("the record points at a secret that cannot be read: {e}"));
    Some(secret.expose().to_owned())
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Replace,
    Disable,
    Relabel,
    Delete,
}

impl Op {
    /// The key before the operation.
    fn before(self) -> Option<&'static str> {
        match self {
            Op::Create => None,
            _ => Some(OLD_KEY),
        }
    }

    /// What the key may be after the operation, failed or not.
    fn allowed_after(self, failed: bool) -> Vec<Option<&'static str>> {
        match (self, failed) {
            (Op::Create, true) => vec![None, Some(NEW_KEY)],
            (Op::Create | Op::Replace, false) => vec![Some(NEW_KEY)],
            (Op::Replace, true) => vec![Some(OLD_KEY), Some(NEW_KEY)],
            (Op::Disable | Op::Relabel, _) => vec![Some(OLD_KEY)],
            (Op::Delete, true) => vec![Some(OLD_KEY), None],
            (Op::Delete, false) => vec![None],
        }
    }

    async fn run(self, keys: &KeyService, user: &UserId) -> Result<(), byok::keys::KeyError> {
        match self {
            Op::Create | Op::Replace => keys
                .upsert(user, upsert(NEW_KEY), "fault")
                .await
                .map(|_| ()),
            Op::Disable => keys
                .update(
                    user,
                    Service::Groq,
                    None,
                    KeyPatch {
                        enabled: Some(false),
                        label: None,
                        priority: None,
                    },
                    "fault",
                )
                .await
                .map(|_| ()),
            Op::Relabel => keys
                .update(
                    user,
                    Service::Groq,
                    None,
                    KeyPatch {
                        enabled: None,
                        label: Some("renamed".into()),
                        priority: None,
                    },
                    "fault",
                )
                .await
                .map(|_| ()),
            Op::Delete => keys
                .delete(user, Service::Groq, None, "fault")
                .await
                .map(|_| ()),
        }
    }
}

#[tokio::test]
async fn a_failure_at_any_store_call_loses_no_key_and_leaves_no_dangling_record() {
    let mut injected = 0;
    for op in [
        Op::Create,
        Op::Replace,
        Op::Disable,
        Op::Relabel,
        Op::Delete,
    ] {
        // How many store calls the operation makes without faults.
        let calls = {
            let dir = tempfile::tempdir().unwrap();
            let inner = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
            let faulty = Arc::new(Faulty::new(inner));
            let keys = KeyService::new(faulty.clone(), faulty.clone());
            let user = UserId::new("faults").unwrap();
            if let Some(old) = op.before() {
                keys.upsert(&user, upsert(old), "setup").await.unwrap();
            }
            faulty.arm(0);
            op.run(&keys, &user).await.unwrap();
            faulty.calls()
        };
        assert!(calls > 0, "{op:?} makes store calls");
        for n in 1..=calls {
            let dir = tempfile::tempdir().unwrap();
            let inner = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
            let faulty = Arc::new(Faulty::new(inner.clone()));
            let keys = KeyService::new(faulty.clone(), faulty.clone());
            let user = UserId::new("faults").unwrap();
            if let Some(old) = op.before() {
                keys.upsert(&user, upsert(old), "setup").await.unwrap();
            }
            faulty.arm(n);
            let failed = op.run(&keys, &user).await.is_err();
            faulty.arm(0);
            injected += 1;
            let after = stored_value(&inner, &user).await;
            assert!(
                op.allowed_after(failed)
                    .iter()
                    .any(|allowed| allowed.map(str::to_owned) == after),
                "{op:?} with call {n} of {calls} failing (failed: {failed}): key now {after:?}"
            );
            if failed {
                // Tried again without faults, it succeeds (a delete of a
                // key already gone says so).
                let again = op.run(&keys, &user).await;
                let gone = matches!(again, Err(byok::keys::KeyError::NotFound(_)));
                assert!(
                    again.is_ok() || (gone && matches!(op, Op::Delete)),
                    "{op:?}: {again:?}"
                );
                let after = stored_value(&inner, &user).await;
                assert!(
                    op.allowed_after(false)
                        .iter()
                        .any(|allowed| allowed.map(str::to_owned) == after),
                    "{op:?} retried: key now {after:?}"
                );
            }
        }
    }
    println!("faults injected: {injected}, each followed by a consistency check and a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_writes_to_one_key_end_in_a_serial_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
    let keys = Arc::new(KeyService::new(store.clone(), store.clone()));
    let user = UserId::new("racer").unwrap();
    let values: Vec<String> = (0..50)
        .map(|i| format!("gsk_race{i:04}0000000000000000000000"))
        .collect();
    let mut tasks = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let (keys, user, value) = (keys.clone(), user.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            match i % 5 {
                0 | 1 => keys.upsert(&user, upsert(&value), "race").await.map(|_| ()),
                2 => keys
                    .update(
                        &user,
                        Service::Groq,
                        None,
                        KeyPatch {
                            enabled: Some(false),
                            label: None,
                            priority: None,
                        },
                        "race",
                    )
                    .await
                    .map(|_| ()),
                3 => keys
                    .update(
                        &user,
                        Service::Groq,
                        None,
                        KeyPatch {
                            enabled: Some(true),
                            label: None,
                            priority: None,
                        },
                        "race",
                    )
                    .await
                    .map(|_| ()),
                _ => keys
                    .delete(&user, Service::Groq, None, "race")
                    .await
                    .map(|_| ()),
            }
        }));
    }
    for task in tasks {
        // Conflicts and "not found" are answers a serial order gives too.
        let _ = task.await.unwrap();
    }
    // Whatever is left is whole: a record whose secret holds one of the
    // values written, or nothing at all; and a last write still works.
    if let Some(value) = stored_value(&store, &user).await {
        assert!(values.contains(&value), "a value nobody wrote: {value}");
    }
    keys.upsert(&user, upsert(NEW_KEY), "after").await.unwrap();
    assert_eq!(stored_value(&store, &user).await.as_deref(), Some(NEW_KEY));
}

/// The embedded store's budgets, failing the `fail_at`-th budget call.
struct FaultyBudgets {
    inner: Arc<EmbeddedStore>,
    calls: Faulty,
}

#[async_trait]
impl BudgetStore for FaultyBudgets {
    async fn get_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        self.calls.step()?;
        self.inner.get_budget(scope).await
    }
    async fn update_budget(
        &self,
        scope: &BudgetScope,
        change: BudgetChange,
    ) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
        self.calls.step()?;
        self.inner.update_budget(scope, change).await
    }
    async fn put_budget(
        &self,
        record: &BudgetRecord,
        expected: Expected,
    ) -> Result<(), StoreError> {
        self.calls.step()?;
        self.inner.put_budget(record, expected).await
    }
    async fn delete_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        self.calls.step()?;
        self.inner.delete_budget(scope).await
    }
    async fn list_budgets(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<BudgetPage, StoreError> {
        self.calls.step()?;
        self.inner.list_budgets(after, limit).await
    }
}

/// Reserve, then settle, on a user's and a tenant's budget, with a failure
/// at each budget call in turn: a failed reservation leaves no hold behind,
/// a failed settlement leaves the hold to expire and charges nothing, and
/// usage is never charged twice.
#[tokio::test]
async fn a_failure_at_any_budget_call_never_double_charges() {
    use byok::budget::{Ask, BudgetService};
    let user = UserId::new("budgeted").unwrap();
    let tenant = byok::domain::TenantId::new("acme").unwrap();
    let scopes = [
        BudgetScope::User(user.clone()),
        BudgetScope::Tenant(tenant.clone()),
    ];
    let ask = Ask {
        tokens: 1_000,
        nanos: Some(5_000),
    };
    let actual = Amount {
        tokens: 300,
        nanos: 1_500,
    };
    let terms = BudgetTerms {
        unit: BudgetUnit::Tokens,
        period: BudgetPeriod::Monthly,
        limit: 100_000,
        pause_at_limit: true,
        alert_thresholds: vec![80],
    };
    let mut injected = 0;
    // Calls of reserve (n in 1..=2) and of settle (n in 3..=4) when nothing fails.
    for n in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
        let store = Arc::new(FaultyBudgets {
            inner: inner.clone(),
            calls: Faulty::new(inner.clone()),
        });
        let budgets = BudgetService::new(
            store.clone(),
            Arc::new(byok::catalog::Catalog::builtin().unwrap()),
            Arc::new(byok::events::LogSink),
            byok::audit::AuditLog::new(inner.clone()),
        );
        for scope in &scopes {
            budgets
                .put(&user, scope, terms.clone(), "setup")
                .await
                .unwrap();
        }
        store.calls.arm(n);
        injected += 1;
        let reserved = budgets.reserve(&user, Some(&tenant), ask).await;
        let holds = match reserved {
            Ok(reservation) => reservation.holds,
            Err(_) => Vec::new(),
        };
        budgets.settle(&holds, actual).await;
        store.calls.arm(0);
        for scope in &scopes {
            let record = budgets.get(scope).await.unwrap();
            let held: u64 = record.holds.iter().map(|h| h.amount.tokens).sum();
            assert!(
                record.used.tokens == 0 || record.used.tokens == actual.tokens,
                "call {n} failing: {scope} used {} (charged twice?)",
                record.used.tokens
            );
            assert!(
                held == 0 || (held == ask.tokens && record.used.tokens == 0),
                "call {n} failing: {scope} holds {held} with {} used",
                record.used.tokens
            );
        }
    }
    println!("budget faults injected: {injected}");
}

/// The embedded store's staging labels, failing on the shared counter.
struct FaultyRotation {
    inner: Arc<EmbeddedStore>,
    calls: Arc<Faulty>,
}

#[async_trait]
impl RotationStore for FaultyRotation {
    async fn stage(&self, secret_id: &str, key: &ApiKey) -> Result<SecretRef, StoreError> {
        self.calls.step()?;
        self.inner.stage(secret_id, key).await
    }
    async fn describe(&self, secret_id: &str) -> Result<SecretVersions, StoreError> {
        self.calls.step()?;
        self.inner.describe(secret_id).await
    }
    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        key: &ApiKey,
    ) -> Result<(), StoreError> {
        self.calls.step()?;
        self.inner.put_pending(secret_id, token, key).await
    }
    async fn get_pending(&self, secret_id: &str, token: &str) -> Result<ApiKey, StoreError> {
        self.calls.step()?;
        self.inner.get_pending(secret_id, token).await
    }
    async fn promote(&self, secret_id: &str, token: &str) -> Result<(), StoreError> {
        self.calls.step()?;
        self.inner.promote(secret_id, token).await
    }
    async fn discard(
        &self,
        secret_id: &str,
        token: Option<&str>,
        staged: bool,
    ) -> Result<(), StoreError> {
        self.calls.step()?;
        self.inner.discard(secret_id, token, staged).await
    }
    async fn list_secrets(&self) -> Result<Vec<ListedSecret>, StoreError> {
        self.calls.step()?;
        self.inner.list_secrets().await
    }
    async fn delete_by_id(&self, secret_id: &str) -> Result<(), StoreError> {
        self.calls.step()?;
        self.inner.delete_by_id(secret_id).await
    }
}

/// A rotation service over `inner` whose every store call counts on one
/// counter, checking keys against the provider stand-in.
fn rotation_over(
    inner: &Arc<EmbeddedStore>,
    stand_in: &StandIn,
) -> (Arc<RotationService>, Arc<Faulty>) {
    let faulty = Arc::new(Faulty::new(inner.clone()));
    let labels = Arc::new(FaultyRotation {
        inner: inner.clone(),
        calls: faulty.clone(),
    });
    let mut upstreams = Upstreams::default();
    for (var, url) in stand_in.base_url_env() {
        if let Some(service) = Service::ALL.into_iter().find(|s| s.base_url_env() == var) {
            upstreams.set(service, url);
        }
    }
    let resolver = Arc::new(Resolver::new(
        faulty.clone(),
        Arc::new(TeamCredentials::default()),
        Arc::new(upstreams),
    ));
    let audit = byok::audit::AuditLog::new(inner.clone());
    let validation = Arc::new(ValidationService::new(
        resolver,
        faulty.clone(),
        faulty.clone(),
        inner.clone(),
        audit.clone(),
        UpstreamClient::new(&UpstreamTimeouts::default()).unwrap(),
        std::time::Duration::from_secs(5),
        10_000,
    ));
    let rotation = Arc::new(RotationService::new(
        faulty.clone(),
        faulty.clone(),
        labels,
        validation,
        audit,
        Arc::new(byok::events::LogSink),
    ));
    (rotation, faulty)
}

/// A store holding `user`'s key with a replacement staged, and a rotation
/// service over it; the key's record.
async fn staged(
    dir: &std::path::Path,
    stand_in: &StandIn,
    user: &UserId,
) -> (
    Arc<EmbeddedStore>,
    Arc<RotationService>,
    Arc<Faulty>,
    KeyRecord,
) {
    let inner = Arc::new(EmbeddedStore::open(dir, MasterKey::generate()).unwrap());
    let (rotation, faulty) = rotation_over(&inner, stand_in);
    let keys = KeyService::new(inner.clone(), inner.clone());
    keys.upsert(user, upsert(OLD_KEY), "setup").await.unwrap();
    let record = inner
        .load_user(user)
        .await
        .unwrap()
        .key(Service::Groq)
        .cloned()
        .unwrap();
    rotation
        .stage(user, Service::Groq, None, &ApiKey::new(NEW_KEY), "setup")
        .await
        .unwrap();
    (inner, rotation, faulty, record)
}

/// Each rotation step with a failure at each of its store calls, then
/// retried as Secrets Manager retries a failed step: the rotation ends with
/// the staged key current, and at no point does the record point at a
/// secret version that cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_rotation_step_is_recovered_by_retrying_it() {
    const STEPS: [Step; 4] = [Step::Create, Step::Set, Step::Test, Step::Finish];
    let stand_in = StandIn::start().await;
    let user = UserId::new("rotating").unwrap();
    let mut injected = 0;
    for failing in STEPS {
        // Store calls of the failing step when nothing fails.
        let calls = {
            let dir = tempfile::tempdir().unwrap();
            let (_, rotation, faulty, record) = staged(dir.path(), &stand_in, &user).await;
            let mut counted = 0;
            for step in STEPS {
                faulty.arm(0);
                rotation
                    .step(step, &record.secret.id, "token0001")
                    .await
                    .unwrap();
                if step == failing {
                    counted = faulty.calls();
                }
            }
            counted
        };
        for n in 1..=calls {
            let dir = tempfile::tempdir().unwrap();
            let (inner, rotation, faulty, record) = staged(dir.path(), &stand_in, &user).await;
            for step in STEPS {
                faulty.arm(if step == failing { n } else { 0 });
                let first = rotation.step(step, &record.secret.id, "token0001").await;
                faulty.arm(0);
                if step == failing {
                    injected += 1;
                    let now = stored_value(&inner, &user).await;
                    assert!(
                        now.as_deref() == Some(OLD_KEY) || now.as_deref() == Some(NEW_KEY),
                        "{step:?} call {n} failing: key now {now:?}"
                    );
                }
                if first.is_err() {
                    rotation
                        .step(step, &record.secret.id, "token0001")
                        .await
                        .unwrap_or_else(|e| panic!("{step:?} retried after call {n} failed: {e}"));
                }
            }
            assert_eq!(
                stored_value(&inner, &user).await.as_deref(),
                Some(NEW_KEY),
                "{failing:?} call {n} failing, then retried: the staged key is current"
            );
        }
    }
    println!("rotation faults injected: {injected}");
    stand_in.shutdown().await;
}
