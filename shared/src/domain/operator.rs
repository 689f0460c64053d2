//! What the operator provides at start: the team's own keys and the
//! upstream base URLs. Plain values read by configuration and used by
//! resolution; no I/O.

use super::{ApiKey, Service};
use std::collections::BTreeMap;
use std::fmt;

/// The operator's upstream base URLs, one per service.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    overrides: BTreeMap<Service, String>,
}

impl Upstreams {
    pub fn set(&mut self, service: Service, base_url: String) {
        self.overrides.insert(service, base_url);
    }

    /// The operator's override, else the service's default.
    pub fn base_url(&self, service: Service) -> &str {
        self.overrides
            .get(&service)
            .map_or(service.default_base_url(), String::as_str)
    }
}

/// The operator's own keys: the team gateway key and server provider keys.
/// A key may arrive after start (a team secret that could not be read at
/// cold start and is retried in the background), so the set is shared and
/// changes behind a lock. A function that only tells which path would serve
/// (model discovery) knows which team keys exist without reading them:
/// those are declared, with no key.
#[derive(Default)]
pub struct TeamCredentials {
    keys: std::sync::RwLock<BTreeMap<Service, Option<ApiKey>>>,
}

impl Clone for TeamCredentials {
    fn clone(&self) -> Self {
        Self {
            keys: std::sync::RwLock::new(self.read().clone()),
        }
    }
}

impl TeamCredentials {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Service, Option<ApiKey>>> {
        // A panic while holding the lock cannot leave the map half-written:
        // every write is one insert.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, service: Service, key: ApiKey) {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(service, Some(key));
    }

    /// The operator has a key for `service` that this process does not read.
    pub fn declare(&self, service: Service) {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(service)
            .or_insert(None);
    }

    /// The operator has a key for `service` (read or declared).
    pub fn has(&self, service: Service) -> bool {
        self.read().contains_key(&service)
    }

    /// The key for `service`, if this process read it.
    pub fn get(&self, service: Service) -> Option<ApiKey> {
        self.read().get(&service).cloned().flatten()
    }
}

impl fmt::Debug for TeamCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.read().keys()).finish()
    }
}
