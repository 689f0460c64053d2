//! Fault injection on the key write paths: the key service over the embedded
//! store, wrapped so that its Nth store call fails. Every operation
//! (create, replace, toggle, relabel, delete) runs once with a failure at
//! each of its store calls in turn; afterwards no key is lost, no key
//! record points at a missing secret, and the operation succeeds when tried
//! again. Then 50 concurrent creates, replacements, toggles and deletes of
//! one key end in a state some serial order of them could have produced.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "helpers outside #[test] functions: a failed step is a failed test"
)]

use async_trait::async_trait;
use byok::crypto::MasterKey;
use byok::domain::{ApiKey, KeyRecord, SecretRef, Service, Settings, UserId};
use byok::keys::{KeyPatch, KeyService, KeyUpsert};
use byok::store::embedded::EmbeddedStore;
use byok::store::{
    Amount, BudgetChange, BudgetPage, BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, Expected, KeyPage, MetadataStore, SecretStore, StoreError,
    UserSnapshot,
};
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
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.step()?;
        self.inner.get_key(user, service).await
    }
    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError> {
        self.step()?;
        self.inner.put_key(record, expected).await
    }
    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.step()?;
        self.inner.delete_key(user, service).await
    }
    async fn put_settings(&self, user: &UserId, settings: Settings) -> Result<(), StoreError> {
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
    ) -> Result<SecretRef, StoreError> {
        self.step()?;
        self.inner.put_secret(user, service, key).await
    }
    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
        self.step()?;
        self.inner.get_secret(secret).await
    }
    async fn delete_secret(&self, user: &UserId, service: Service) -> Result<(), StoreError> {
        self.step()?;
        self.inner.delete_secret(user, service).await
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
    let record = store.get_key(user, Service::Groq).await.unwrap()?;
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
                    KeyPatch {
                        enabled: Some(false),
                        label: None,
                    },
                    "fault",
                )
                .await
                .map(|_| ()),
            Op::Relabel => keys
                .update(
                    user,
                    Service::Groq,
                    KeyPatch {
                        enabled: None,
                        label: Some("renamed".into()),
                    },
                    "fault",
                )
                .await
                .map(|_| ()),
            Op::Delete => keys.delete(user, Service::Groq, "fault").await,
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
                        KeyPatch {
                            enabled: Some(false),
                            label: None,
                        },
                        "race",
                    )
                    .await
                    .map(|_| ()),
                3 => keys
                    .update(
                        &user,
                        Service::Groq,
                        KeyPatch {
                            enabled: Some(true),
                            label: None,
                        },
                        "race",
                    )
                    .await
                    .map(|_| ()),
                _ => keys.delete(&user, Service::Groq, "race").await,
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
