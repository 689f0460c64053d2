//! Test support for the AWS backends: SDK clients pointed at the local AWS
//! emulator (moto_server) that `infra/scripts/test.sh` starts, an
//! interceptor counting SDK calls per operation, and unique names for
//! per-test tables and secret prefixes.
//!
//! Tests that need the emulator fail (never skip) when
//! `BYOK_TEST_AWS_ENDPOINT` is unset: a skipped store test would pass
//! silently in CI.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed step is a failed test"
)]

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The variable naming the emulator's endpoint.
pub const ENDPOINT_VAR: &str = "BYOK_TEST_AWS_ENDPOINT";
/// The region every test client uses.
pub const REGION: &str = "us-east-1";

/// The emulator's endpoint, e.g. `http://127.0.0.1:5000`.
///
/// # Panics
/// If `BYOK_TEST_AWS_ENDPOINT` is unset or empty: the AWS tests must run,
/// not be skipped.
pub fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "{ENDPOINT_VAR} is not set: the AWS store tests need a local AWS emulator. \
             Run ./infra/scripts/test.sh, which starts moto_server and sets it \
             (or start moto_server yourself and export {ENDPOINT_VAR}=http://127.0.0.1:PORT)."
        ),
    }
}

fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "byok-tests")
}

/// Shared SDK configuration pointed at the emulator, with static test
/// credentials and region `us-east-1`.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(credentials())
        .load()
        .await
}

/// Counts SDK operations by name (`Query`, `GetSecretValue`, ...). Clones
/// share the counts; install one on a client with [`dynamo_client`] or
/// [`secrets_client`]. Counts executions (one per client call, whatever
/// the retries), taken before the request is serialised.
#[derive(Clone, Debug, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl CallCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls of operation `op` (e.g. `"Query"`) so far.
    pub fn count(&self, op: &str) -> usize {
        self.lock().get(op).copied().unwrap_or(0)
    }

    /// Calls of every operation so far.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// Every operation called so far, with its count.
    pub fn snapshot(&self) -> HashMap<String, usize> {
        self.lock().clone()
    }

    /// Forgets every count, e.g. after a test's setup.
    pub fn reset(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    // Not `read_before_execution`: client interceptors see that hook before
    // the operation's configuration (with its `Metadata`) is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg
            .load::<Metadata>()
            .map_or("<unknown>", Metadata::name)
            .to_owned();
        *self.lock().entry(op).or_default() += 1;
        Ok(())
    }
}

/// A DynamoDB client for the emulator, counting calls in `counter` if given.
pub fn dynamo_client(counter: Option<CallCounter>) -> aws_sdk_dynamodb::Client {
    let mut builder = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(credentials());
    if let Some(counter) = counter {
        builder = builder.interceptor(counter);
    }
    aws_sdk_dynamodb::Client::from_conf(builder.build())
}

/// A Secrets Manager client for the emulator, counting calls in `counter` if given.
pub fn secrets_client(counter: Option<CallCounter>) -> aws_sdk_secretsmanager::Client {
    let mut builder = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(credentials());
    if let Some(counter) = counter {
        builder = builder.interceptor(counter);
    }
    aws_sdk_secretsmanager::Client::from_conf(builder.build())
}

/// `{prefix}-{16 random hex digits}`: a name no other test or run uses,
/// valid as a DynamoDB table name and inside a secret name when `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; mixing in the time, the
    // process id and a counter makes every call differ.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}-{:016x}", hasher.finish())
}
