//! A version-aware cache of decrypted secrets in the function's memory.
//!
//! Entries are keyed by secret id **and** version id, both taken from the
//! key's metadata. A warm request therefore makes no call to the secret
//! backend, and a replaced or rotated key is never served stale: the
//! metadata names a new version, which is simply a different cache key.
//! Entries expire after a TTL (bounding how long a deleted key's value stays
//! in memory) and the cache holds at most `capacity` entries.

use super::{SecretStore, StoreError};
use crate::domain::{ApiKey, SecretRef, Service, UserId};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default number of cached secrets per process.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default lifetime of a cached secret.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

struct Entry {
    key: ApiKey,
    stored_at: Instant,
}

/// A [`SecretStore`] that remembers what it read, by (id, version).
pub struct CachedSecretStore {
    inner: Arc<dyn SecretStore>,
    entries: Mutex<HashMap<SecretRef, Entry>>,
    capacity: usize,
    ttl: Duration,
}

impl CachedSecretStore {
    pub fn new(inner: Arc<dyn SecretStore>, capacity: usize, ttl: Duration) -> Self {
        Self {
            inner,
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The map, even if a panic poisoned the lock: entries are always whole.
    fn entries(&self) -> MutexGuard<'_, HashMap<SecretRef, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, secret: SecretRef, key: ApiKey) {
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&secret) {
            entries.retain(|_, e| now.duration_since(e.stored_at) < self.ttl);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.stored_at)
                    .map(|(r, _)| r.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            secret,
            Entry {
                key,
                stored_at: now,
            },
        );
    }

    /// How many secrets are cached now.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SecretStore for CachedSecretStore {
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
        into: Option<&SecretRef>,
    ) -> Result<SecretRef, StoreError> {
        let secret = self.inner.put_secret(user, service, key, into).await?;
        self.remember(secret.clone(), key.clone());
        Ok(secret)
    }

    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
        if let Some(entry) = self.entries().get(secret)
            && entry.stored_at.elapsed() < self.ttl
        {
            return Ok(entry.key.clone());
        }
        let key = self.inner.get_secret(secret).await?;
        self.remember(secret.clone(), key.clone());
        Ok(key)
    }

    /// Deletes through. Cached versions of the secret are not looked up here:
    /// the metadata naming them is removed first, so nothing asks for them
    /// again, and they expire with the TTL.
    async fn delete_secret(&self, secret: &SecretRef) -> Result<(), StoreError> {
        self.inner.delete_secret(secret).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts reads; every (id, version) holds the key `sk-{id}-{version}-…`.
    #[derive(Default)]
    struct Counting {
        gets: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl SecretStore for Counting {
        async fn put_secret(
            &self,
            user: &UserId,
            service: Service,
            _key: &ApiKey,
            _into: Option<&SecretRef>,
        ) -> Result<SecretRef, StoreError> {
            Ok(SecretRef {
                id: format!("{user}/{service}"),
                version: "v-new".into(),
            })
        }
        async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::SecretNotFound);
            }
            Ok(ApiKey::new(format!(
                "sk-{}-{}-0000000000",
                secret.id, secret.version
            )))
        }
        async fn delete_secret(&self, _: &SecretRef) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn sref(id: &str, version: &str) -> SecretRef {
        SecretRef {
            id: id.into(),
            version: version.into(),
        }
    }

    #[tokio::test]
    async fn warm_reads_make_no_backend_call_and_new_versions_are_never_stale() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSecretStore::new(inner.clone(), 16, DEFAULT_TTL);
        let v1 = sref("a", "v1");
        let first = cache.get_secret(&v1).await.unwrap();
        for _ in 0..10 {
            assert_eq!(cache.get_secret(&v1).await.unwrap(), first);
        }
        assert_eq!(
            inner.gets.load(Ordering::SeqCst),
            1,
            "warm repeats hit the cache"
        );

        let v2 = sref("a", "v2");
        let second = cache.get_secret(&v2).await.unwrap();
        assert_ne!(second, first, "a new version is read, not served from v1");
        assert_eq!(inner.gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_put_primes_the_cache_with_its_own_version() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSecretStore::new(inner.clone(), 16, DEFAULT_TTL);
        let user = UserId::new("u").unwrap();
        let key = ApiKey::new("sk-proj-primed00000000000000");
        let secret = cache
            .put_secret(&user, Service::OpenAi, &key, None)
            .await
            .unwrap();
        assert_eq!(cache.get_secret(&secret).await.unwrap(), key);
        assert_eq!(inner.gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn entries_expire_and_errors_are_not_cached() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSecretStore::new(inner.clone(), 16, Duration::from_millis(30));
        let v1 = sref("a", "v1");
        cache.get_secret(&v1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        cache.get_secret(&v1).await.unwrap();
        assert_eq!(
            inner.gets.load(Ordering::SeqCst),
            2,
            "expired entries are read again"
        );

        inner.fail.store(true, Ordering::SeqCst);
        let gone = sref("b", "v1");
        assert!(cache.get_secret(&gone).await.is_err());
        assert!(cache.get_secret(&gone).await.is_err());
        assert_eq!(
            inner.gets.load(Ordering::SeqCst),
            4,
            "failures are retried, not cached"
        );
    }

    #[tokio::test]
    async fn capacity_is_bounded() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSecretStore::new(inner.clone(), 3, DEFAULT_TTL);
        for i in 0..10 {
            cache
                .get_secret(&sref(&format!("id{i}"), "v"))
                .await
                .unwrap();
            assert!(cache.len() <= 3);
        }
        // The most recent entry survived eviction.
        let before = inner.gets.load(Ordering::SeqCst);
        cache.get_secret(&sref("id9", "v")).await.unwrap();
        assert_eq!(inner.gets.load(Ordering::SeqCst), before);
    }
}
