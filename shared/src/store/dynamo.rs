//! The DynamoDB metadata store: settings and key records of every user in
//! one table, so resolution reads a user in one `Query`.
//!
//! # Table layout (single-table design)
//! The table has a string partition key `pk` and a string sort key `sk`.
//!
//! | item          | `pk`          | `sk`              | attributes |
//! |---------------|---------------|-------------------|------------|
//! | settings      | `USER#{user}` | `SETTINGS`        | `allowGatewayFallback` (BOOL), `updatedAt` |
//! | key record    | `USER#{user}` | `KEY#{service}`   | `service`, `label`, `maskedKey`, `enabled` (BOOL), `baseUrl`, `createdAt`, `updatedAt`, `lastValidatedAt`, `lastValidation`, `secretId`, `secretVersion`, `revision` (N), `rotatedAt`, `pendingVersion`, `pendingMaskedKey`, `pendingStagedAt`, `pendingToken`, `lastRotationAt`, `lastRotationRejected` |
//! | rate counter  | `RATE#{user}` | `{action}#{window ms}#{window start ms}` | `count` (N), `ttl` (N) |
//! | audit event   | `AUDIT#{user}`| `{audit id}`      | `at`, `action`, `service`, `result`, `requestId` |
//! | usage         | `USAGE#{user}`, `USAGEDAY#{day}#{shard}`, `USAGEREQ#{user}` | see [`usage`] | day aggregates, the operator's per-day view, raw entries (`ttl`) |
//!
//! `{user}` is the user id verbatim (the `USER#` prefix is stripped, never
//! split on, so ids containing `#` are fine) and `{service}` its wire name.
//! Optional attributes (`baseUrl`, `lastValidatedAt`, `lastValidation` and
//! the rotation attributes) are absent when unset, never NULL. Timestamps are RFC 3339 strings in UTC
//! with exactly three fractional digits (`2025-01-02T03:04:05.678Z`), the
//! millisecond precision every store keeps. The secret itself never enters
//! the table: a key record holds only the [`SecretRef`] (`secretId`,
//! `secretVersion`) of its Secrets Manager secret and the masked key.
//!
//! [`MetadataStore::load_user`] is one consistent `Query` of the user's
//! partition restricted to `sk BETWEEN "KEY#" AND "SETTINGS"`. Other item
//! kinds (audit log, usage, rate limits) belong in partitions of their own
//! (`AUDIT#{user}`, `USAGE#{user}`, `RATE#{user}`), so the resolution
//! read never pays for them. Should one ever have to live in a `USER#`
//! partition, its `sk` must sort outside that range (before `KEY#`, like
//! `AUDIT#…`, or after `SETTINGS`, like `USAGE#…`); an item inside the range
//! that is neither settings nor a key record is skipped, not an error.
//! Items that expire carry a number attribute `ttl` (epoch seconds), the
//! table's TTL attribute ([`ensure_table`] enables it).
//!
//! [`MetadataStore::scan_keys`] (operator jobs only) is one consistent
//! `Scan` page filtered to key items; its cursor is the JSON `[pk, sk]` of
//! the last item evaluated.
//!
//! # Rate counters
//! [`RateLimitStore::hit`] is one `UpdateItem` on the window's counter:
//! `ADD count :one` under the condition `attribute_not_exists(count) OR
//! count < :limit`, so concurrent instances never count past the limit; a
//! failed condition is a refused hit, not an error. The window (length and
//! start) is in the sort key, so a new window is a new item and callers with
//! different window lengths never share a counter. `ttl` is the window's end
//! plus [`RATE_TTL_MARGIN_SECS`] (room for clock skew between instances):
//! DynamoDB deletes the item some time after that, never before, so a
//! counter cannot vanish while its window is live. An expired item that
//! DynamoDB has not yet deleted is harmless: no later hit maps to its window.
//!
//! Hits on one counter item from one process are also serialised by an
//! in-process lock. DynamoDB does not need it (a conditional `UpdateItem` on
//! one item is atomic, which is what holds the limit across instances; one
//! Lambda instance serves one request at a time anyway), but the local
//! emulator does: moto 5.2 evaluates the condition and applies the update
//! without a lock, so concurrent requests lose updates and pass the limit.
//! The lock is correct on DynamoDB too and costs nothing there.
//!
//! # Audit events
//! An event is one item under `AUDIT#{user}` whose sort key is its
//! [`AuditId`] (time-ordered text), written with `attribute_not_exists(pk)`.
//! [`AuditStore::list`] is one `Query` with `ScanIndexForward=false`,
//! `sk < :cursor` for later pages and `Limit` one above the page size (the
//! extra item only tells whether a next page exists, so the last page never
//! carries a cursor). Events have no `ttl`: retention is the operator's call.
//!
//! # Semantics
//! Mirrors the embedded store: conditional writes compare `revision`
//! (`attribute_not_exists(pk)` for [`Expected::Absent`]), a failed condition
//! is [`StoreError::Conflict`] and changes nothing, reads are strongly
//! consistent. One difference: [`MetadataStore::delete_key`] is a single
//! `DeleteItem` returning the old item, so an item that cannot be read back
//! is reported as [`StoreError::Corrupt`] after it was already removed (the
//! embedded store leaves it in place).
//!
//! Errors of the AWS SDK become [`StoreError::Backend`] and are logged here
//! with their full context; corrupt items become [`StoreError::Corrupt`]
//! naming the attribute, never its value.

use super::audit::{self, AuditAction, AuditCursor, AuditEvent, AuditId, AuditPage, AuditStore};
use super::ratelimit::{RateAction, RateDecision, RateLimitStore, Window};
use super::{Expected, KeyPage, MetadataStore, StoreError, UserSnapshot};
use crate::domain::{
    self, KeyRecord, PendingKey, RotationOutcome, RotationRejection, SecretRef, Service, Settings,
    Timestamp, UserId, ValidationResult,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;
use time::UtcOffset;
use time::format_description::well_known::Rfc3339;

/// Partition key attribute.
pub const PK: &str = "pk";
/// Sort key attribute.
pub const SK: &str = "sk";
/// The table's TTL attribute (epoch seconds), for item kinds that expire.
pub const TTL_ATTRIBUTE: &str = "ttl";
/// Seconds a rate counter outlives its window before TTL may delete it.
pub const RATE_TTL_MARGIN_SECS: i64 = 300;
/// Sort key of the settings item.
const SETTINGS_SK: &str = "SETTINGS";
/// Sort key prefix of key records.
const KEY_SK_PREFIX: &str = "KEY#";
/// Starts the partition key of every user's settings and key records.
const USER_PK_PREFIX: &str = "USER#";

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(30);

type Item = HashMap<String, AttributeValue>;

mod budget;
mod usage;
pub use usage::DAY_SHARDS;

/// Settings and key records in one DynamoDB table (layout in the module doc).
/// Cloning is cheap and shares the client.
#[derive(Clone, Debug)]
pub struct DynamoMetadataStore {
    client: Client,
    table: String,
    /// Serialise this process's updates of one counter item (rate counters,
    /// usage aggregates), sharded by item key; see "Rate counters" in the
    /// module doc and [`usage`].
    item_locks: Arc<[tokio::sync::Mutex<()>]>,
}

/// Shards of [`DynamoMetadataStore::item_locks`].
const ITEM_LOCK_SHARDS: usize = 64;

impl DynamoMetadataStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            item_locks: (0..ITEM_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The lock serialising this process's updates of item (`pk`, `sk`).
    fn item_lock(&self, pk: &str, sk: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::hash::DefaultHasher::new();
        (pk, sk).hash(&mut hasher);
        let shard = usize::try_from(hasher.finish() % ITEM_LOCK_SHARDS as u64).unwrap_or(0);
        &self.item_locks[shard % self.item_locks.len()]
    }

    /// The table this store reads and writes.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// The partition key of a user's items.
pub fn user_pk(user: &UserId) -> String {
    format!("{USER_PK_PREFIX}{user}")
}

/// The partition key of a user's rate-limit counters.
pub fn rate_pk(user: &UserId) -> String {
    format!("RATE#{user}")
}

/// The partition key of a user's audit events.
pub fn audit_pk(user: &UserId) -> String {
    format!("AUDIT#{user}")
}

/// The sort key of a user's key record for `service`.
pub fn key_sk(service: Service) -> String {
    format!("{KEY_SK_PREFIX}{service}")
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn key_of(user: &UserId, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(user_pk(user))), (SK.to_owned(), s(sk))])
}

/// Logs an SDK error with its full context and wraps it; the context (request
/// ids, service messages) goes to the log only.
fn backend<E>(operation: &'static str, err: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    tracing::warn!(operation, error = %DisplayErrorContext(&err), "DynamoDB call failed");
    StoreError::backend(err)
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// `t` in UTC as `YYYY-MM-DDTHH:MM:SS.mmmZ` (sub-millisecond digits dropped).
fn ts_to_attr(t: Timestamp) -> Result<String, StoreError> {
    let t = t.checked_to_offset(UtcOffset::UTC).ok_or_else(|| {
        StoreError::backend(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "timestamp is out of the storable range",
        ))
    })?;
    if !(0..=9999).contains(&t.year()) {
        return Err(StoreError::backend(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "timestamp year is outside 0000-9999",
        )));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

fn ts_from_attr(text: &str, name: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse(text, &Rfc3339)
        .map_err(|_| corrupt(format!("{name} is not an RFC 3339 timestamp")))
}

/// Reads typed attributes of one item; errors name the attribute, never its value.
struct Attrs<'a> {
    item: &'a Item,
    kind: &'static str,
}

impl<'a> Attrs<'a> {
    fn string(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt_string(name)?
            .ok_or_else(|| corrupt(format!("{} item has no {name}", self.kind)))
    }

    /// Absent (or NULL) is `None`; any type but a string is corrupt.
    fn opt_string(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.as_str())),
            Some(_) => Err(corrupt(format!(
                "{} item attribute {name} is not a string",
                self.kind
            ))),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, StoreError> {
        match self.item.get(name) {
            Some(AttributeValue::Bool(v)) => Ok(*v),
            None => Err(corrupt(format!("{} item has no {name}", self.kind))),
            Some(_) => Err(corrupt(format!(
                "{} item attribute {name} is not a boolean",
                self.kind
            ))),
        }
    }

    fn u64(&self, name: &str) -> Result<u64, StoreError> {
        match self.item.get(name) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
                corrupt(format!(
                    "{} item attribute {name} is not a non-negative integer",
                    self.kind
                ))
            }),
            None => Err(corrupt(format!("{} item has no {name}", self.kind))),
            Some(_) => Err(corrupt(format!(
                "{} item attribute {name} is not a number",
                self.kind
            ))),
        }
    }

    fn timestamp(&self, name: &str) -> Result<Timestamp, StoreError> {
        ts_from_attr(self.string(name)?, name)
    }

    fn opt_timestamp(&self, name: &str) -> Result<Option<Timestamp>, StoreError> {
        self.opt_string(name)?
            .map(|t| ts_from_attr(t, name))
            .transpose()
    }
}

/// A key item of `user` as a record.
fn record_from_item(user: &UserId, item: &Item) -> Result<KeyRecord, StoreError> {
    let a = Attrs { item, kind: "key" };
    let service = a
        .string("service")?
        .parse::<Service>()
        .map_err(|_| corrupt("key item attribute service names no known service"))?;
    if a.string(SK)? != key_sk(service) {
        return Err(corrupt("key item sort key does not match its service"));
    }
    let last_validation = a
        .opt_string("lastValidation")?
        .map(|v| {
            ValidationResult::parse(v)
                .ok_or_else(|| corrupt("key item attribute lastValidation is not a known result"))
        })
        .transpose()?;
    Ok(KeyRecord {
        user: user.clone(),
        service,
        label: a.string("label")?.to_owned(),
        masked_key: a.string("maskedKey")?.to_owned(),
        enabled: a.bool("enabled")?,
        base_url: a.opt_string("baseUrl")?.map(str::to_owned),
        created_at: a.timestamp("createdAt")?,
        updated_at: a.timestamp("updatedAt")?,
        last_validated_at: a.opt_timestamp("lastValidatedAt")?,
        last_validation,
        secret: SecretRef {
            id: a.string("secretId")?.to_owned(),
            version: a.string("secretVersion")?.to_owned(),
        },
        revision: a.u64("revision")?,
        rotated_at: a.opt_timestamp("rotatedAt")?,
        pending: match a.opt_string("pendingVersion")? {
            None => None,
            Some(version) => Some(PendingKey {
                version: version.to_owned(),
                masked_key: a.string("pendingMaskedKey")?.to_owned(),
                staged_at: a.timestamp("pendingStagedAt")?,
                token: a.opt_string("pendingToken")?.map(str::to_owned),
            }),
        },
        last_rotation: match a.opt_timestamp("lastRotationAt")? {
            None => None,
            Some(at) => Some(RotationOutcome {
                at,
                rejected: a
                    .opt_string("lastRotationRejected")?
                    .map(|r| {
                        RotationRejection::parse(r).ok_or_else(|| {
                            corrupt("key item attribute lastRotationRejected is not a known reason")
                        })
                    })
                    .transpose()?,
            }),
        },
    })
}

/// A record as a full item (key attributes included).
fn item_from_record(r: &KeyRecord) -> Result<Item, StoreError> {
    let mut item = key_of(&r.user, key_sk(r.service));
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_owned(), value);
    };
    put("service", s(r.service.as_str()));
    put("label", s(&r.label));
    put("maskedKey", s(&r.masked_key));
    put("enabled", AttributeValue::Bool(r.enabled));
    if let Some(url) = &r.base_url {
        put("baseUrl", s(url));
    }
    put("createdAt", s(ts_to_attr(r.created_at)?));
    put("updatedAt", s(ts_to_attr(r.updated_at)?));
    if let Some(t) = r.last_validated_at {
        put("lastValidatedAt", s(ts_to_attr(t)?));
    }
    if let Some(v) = r.last_validation {
        put("lastValidation", s(v.as_str()));
    }
    put("secretId", s(&r.secret.id));
    put("secretVersion", s(&r.secret.version));
    put("revision", AttributeValue::N(r.revision.to_string()));
    if let Some(t) = r.rotated_at {
        put("rotatedAt", s(ts_to_attr(t)?));
    }
    if let Some(p) = &r.pending {
        put("pendingVersion", s(&p.version));
        put("pendingMaskedKey", s(&p.masked_key));
        put("pendingStagedAt", s(ts_to_attr(p.staged_at)?));
        if let Some(token) = &p.token {
            put("pendingToken", s(token));
        }
    }
    if let Some(o) = &r.last_rotation {
        put("lastRotationAt", s(ts_to_attr(o.at)?));
        if let Some(reason) = o.rejected {
            put("lastRotationRejected", s(reason.as_str()));
        }
    }
    Ok(item)
}

fn settings_from_item(item: &Item) -> Result<Settings, StoreError> {
    let a = Attrs {
        item,
        kind: "settings",
    };
    Ok(Settings {
        allow_gateway_fallback: a.bool("allowGatewayFallback")?,
    })
}

#[async_trait]
impl MetadataStore for DynamoMetadataStore {
    async fn load_user(&self, user: &UserId) -> Result<UserSnapshot, StoreError> {
        let mut snapshot = UserSnapshot::default();
        let mut start: Option<Item> = None;
        loop {
            // One page holds a user's settings and every key (≤ 8 small
            // items); pages are followed anyway, should that ever change.
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :first AND :last")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", s(user_pk(user)))
                .expression_attribute_values(":first", s(KEY_SK_PREFIX))
                .expression_attribute_values(":last", s(SETTINGS_SK))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query", e))?;
            for item in out.items.as_deref().unwrap_or_default() {
                let sk = Attrs { item, kind: "user" }.string(SK)?;
                if sk == SETTINGS_SK {
                    snapshot.settings = settings_from_item(item)?;
                } else if sk.starts_with(KEY_SK_PREFIX) {
                    snapshot.keys.push(record_from_item(user, item)?);
                } else {
                    tracing::debug!("load_user skipped an item of another kind");
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        snapshot.keys.sort_by_key(|k| k.service);
        Ok(snapshot)
    }

    async fn get_key(
        &self,
        user: &UserId,
        service: Service,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(key_of(user, key_sk(service))))
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        out.item
            .map(|item| record_from_item(user, &item))
            .transpose()
    }

    async fn scan_keys(&self, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError> {
        let start = after
            .map(|cursor| {
                let (pk, sk): (String, String) = serde_json::from_str(cursor)
                    .map_err(|_| corrupt("scan cursor is not a [pk, sk] pair"))?;
                Ok::<_, StoreError>(HashMap::from([
                    (PK.to_owned(), s(pk)),
                    (SK.to_owned(), s(sk)),
                ]))
            })
            .transpose()?;
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .filter_expression("begins_with(#pk, :user) AND begins_with(#sk, :key)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":user", s(USER_PK_PREFIX))
            .expression_attribute_values(":key", s(KEY_SK_PREFIX))
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| backend("Scan", e))?;
        let mut page = KeyPage::default();
        for item in out.items.as_deref().unwrap_or_default() {
            let record = Attrs { item, kind: "key" }.string(PK).and_then(|pk| {
                let user = pk
                    .strip_prefix(USER_PK_PREFIX)
                    .and_then(UserId::new)
                    .ok_or_else(|| corrupt("key item partition key names no valid user"))?;
                record_from_item(&user, item)
            });
            match record {
                Ok(record) => page.keys.push(record),
                // One bad item must not stop an operator job over every user.
                Err(err) => tracing::warn!(error = %err, "scan skipped an unreadable key item"),
            }
        }
        if let Some(last) = out.last_evaluated_key.filter(|k| !k.is_empty()) {
            let a = Attrs {
                item: &last,
                kind: "scan position",
            };
            let pair = (a.string(PK)?, a.string(SK)?);
            page.next = Some(serde_json::to_string(&pair).map_err(StoreError::backend)?);
        }
        Ok(page)
    }

    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_record(record)?));
        let request = match expected {
            Expected::Absent => request
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK),
            Expected::Revision(revision) => request
                .condition_expression("#rev = :rev")
                .expression_attribute_names("#rev", "revision")
                .expression_attribute_values(":rev", AttributeValue::N(revision.to_string())),
        };
        conditional_put(request.send().await)
    }

    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(user, key_sk(service))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("DeleteItem", e))?;
        match out.attributes {
            Some(item) if !item.is_empty() => record_from_item(user, &item).map(Some),
            _ => Ok(None),
        }
    }

    async fn put_settings(&self, user: &UserId, settings: Settings) -> Result<(), StoreError> {
        let mut item = key_of(user, SETTINGS_SK.to_owned());
        item.insert(
            "allowGatewayFallback".to_owned(),
            AttributeValue::Bool(settings.allow_gateway_fallback),
        );
        item.insert("updatedAt".to_owned(), s(ts_to_attr(domain::now())?));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend("PutItem", e))?;
        Ok(())
    }
}

#[async_trait]
impl RateLimitStore for DynamoMetadataStore {
    async fn hit(
        &self,
        user: &UserId,
        action: RateAction,
        limit: u32,
        window: Duration,
        now: Timestamp,
    ) -> Result<RateDecision, StoreError> {
        let w = Window::containing(window, now)?;
        if limit == 0 {
            return Ok(w.decision(limit, None));
        }
        let pk = rate_pk(user);
        let sk = format!("{action}#{}#{}", w.len_ms, w.start_ms);
        let _serialised = self.item_lock(&pk, &sk).lock().await;
        let ttl = w
            .end_ms
            .div_euclid(1000)
            .saturating_add(1)
            .saturating_add(RATE_TTL_MARGIN_SECS);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            .update_expression("SET #ttl = :ttl ADD #count :one")
            .condition_expression("attribute_not_exists(#count) OR #count < :limit")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":ttl", AttributeValue::N(ttl.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let count = Attrs {
                    item: &item,
                    kind: "rate counter",
                }
                .u64("count")?;
                Ok(w.decision(limit, Some(count)))
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(w.decision(limit, None))
            }
            Err(err) => Err(backend("UpdateItem", err)),
        }
    }
}

/// An audit item of `user` as an event.
fn audit_from_item(user: &UserId, item: &Item) -> Result<AuditEvent, StoreError> {
    let a = Attrs {
        item,
        kind: "audit",
    };
    Ok(AuditEvent {
        id: AuditId::parse(a.string(SK)?)
            .ok_or_else(|| corrupt("audit item sort key is not an audit id"))?,
        user: user.clone(),
        at: a.timestamp("at")?,
        action: AuditAction::parse(a.string("action")?)
            .ok_or_else(|| corrupt("audit item attribute action is not a known action"))?,
        service: a
            .opt_string("service")?
            .map(|text| {
                text.parse::<Service>()
                    .map_err(|_| corrupt("audit item attribute service names no known service"))
            })
            .transpose()?,
        result: a.opt_string("result")?.map(str::to_owned),
        request_id: a.string("requestId")?.to_owned(),
    })
}

#[async_trait]
impl AuditStore for DynamoMetadataStore {
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut item = HashMap::from([
            (PK.to_owned(), s(audit_pk(&event.user))),
            (SK.to_owned(), s(event.id.as_str())),
            ("at".to_owned(), s(ts_to_attr(event.at)?)),
            ("action".to_owned(), s(event.action.as_str())),
            ("requestId".to_owned(), s(&event.request_id)),
        ]);
        if let Some(service) = event.service {
            item.insert("service".to_owned(), s(service.as_str()));
        }
        if let Some(result) = &event.result {
            item.insert("result".to_owned(), s(result));
        }
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        conditional_put(sent)
    }

    async fn list(
        &self,
        user: &UserId,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let limit = audit::page_limit(limit);
        let mut events = Vec::with_capacity(limit + 1);
        let mut start: Option<Item> = None;
        loop {
            let wanted = i32::try_from(limit + 1 - events.len()).unwrap_or(i32::MAX);
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(false)
                .limit(wanted)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(audit_pk(user)))
                .set_exclusive_start_key(start.take());
            query = match cursor {
                Some(cursor) => query
                    .key_condition_expression("#pk = :pk AND #sk < :before")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":before", s(cursor.id().as_str())),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let out = query.send().await.map_err(|e| backend("Query", e))?;
            for item in out.items.as_deref().unwrap_or_default() {
                events.push(audit_from_item(user, item)?);
            }
            // A page can stop short of `Limit` only at 1 MB; follow it then.
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() && events.len() <= limit => start = Some(key),
                _ => break,
            }
        }
        Ok(audit::into_page(events, limit))
    }
}

/// Creates `table` if it does not exist (on-demand billing, `pk`/`sk`
/// strings), waits until it is `ACTIVE` (polling every 100 ms, at most 30 s)
/// and enables TTL on [`TTL_ATTRIBUTE`]. Safe to call on an existing table and
/// concurrently. Meant for tests and `byok-local` against an emulator; real
/// deployments create the table in the infrastructure template.
pub async fn ensure_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let schema = out
                .table
                .as_ref()
                .map(|t| t.key_schema())
                .unwrap_or_default();
            let has = |name: &str, kind: KeyType| {
                schema
                    .iter()
                    .any(|k| k.attribute_name() == name && *k.key_type() == kind)
            };
            if schema.len() != 2 || !has(PK, KeyType::Hash) || !has(SK, KeyType::Range) {
                return Err(corrupt(format!(
                    "table {table} exists with another key schema than {PK} (hash) and {SK} (range)"
                )));
            }
            true
        }
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(err) => return Err(backend("DescribeTable", err)),
    };

    if !exists {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(StoreError::backend)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(StoreError::backend)
        };
        let created = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(PK)?)
            .attribute_definitions(attribute(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table, "created DynamoDB table"),
            // Created concurrently by someone else: wait for it like for ours.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(err) => return Err(backend("CreateTable", err)),
        }
    }

    wait_until_active(client, table).await?;
    enable_ttl(client, table).await
}

/// Polls `DescribeTable` until the table is `ACTIVE`. (The SDK waiter first
/// polls after 20 s, far too slow against an emulator.)
async fn wait_until_active(client: &Client, table: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| backend("DescribeTable", e))?;
        let status = out.table.as_ref().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("table {table} did not become ACTIVE within {ACTIVE_TIMEOUT:?}"),
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Enables TTL on [`TTL_ATTRIBUTE`] unless it already is (or is being) enabled.
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
    let described = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| backend("DescribeTimeToLive", e))?;
    if let Some(ttl) = described.time_to_live_description() {
        let on = matches!(
            ttl.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if on {
            if ttl.attribute_name() != Some(TTL_ATTRIBUTE) {
                tracing::warn!(
                    table,
                    "TTL is enabled on another attribute than {TTL_ATTRIBUTE}; left unchanged"
                );
            }
            return Ok(());
        }
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(StoreError::backend)?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Enabled concurrently: "TimeToLive is already enabled".
        Err(err)
            if err.as_service_error().is_some_and(|e| {
                e.code() == Some("ValidationException")
                    && e.message().is_some_and(|m| m.contains("already enabled"))
            }) =>
        {
            Ok(())
        }
        Err(err) => Err(backend("UpdateTimeToLive", err)),
    }
}

/// A conditional `PutItem`'s outcome: a failed condition is a [`StoreError::Conflict`].
fn conditional_put(
    sent: Result<
        aws_sdk_dynamodb::operation::put_item::PutItemOutput,
        aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError>,
    >,
) -> Result<(), StoreError> {
    match sent {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Err(StoreError::Conflict)
        }
        Err(err) => Err(backend("PutItem", err)),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text, &Rfc3339).unwrap()
    }

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn record() -> KeyRecord {
        let now = domain::now();
        KeyRecord {
            user: user("u#1"),
            service: Service::Gateway,
            label: "work".into(),
            masked_key: "vck_…abcd".into(),
            enabled: true,
            base_url: Some("https://gw.example.com/v1".into()),
            created_at: now,
            updated_at: now,
            last_validated_at: Some(now),
            last_validation: Some(ValidationResult::Valid),
            secret: SecretRef {
                id: "arn:aws:secretsmanager:us-east-1:1:secret:byok/u/gateway-AbCdEf".into(),
                version: "0123456789abcdef0123456789abcdef".into(),
            },
            revision: u64::MAX,
            rotated_at: None,
            pending: None,
            last_rotation: None,
        }
    }

    #[test]
    fn timestamps_have_milliseconds_in_utc() {
        let t = at("2025-01-02T03:04:05.6+02:00");
        assert_eq!(ts_to_attr(t).unwrap(), "2025-01-02T01:04:05.600Z");
        let t = at("1999-12-31T23:59:59.999999999Z");
        assert_eq!(ts_to_attr(t).unwrap(), "1999-12-31T23:59:59.999Z");
        assert_eq!(
            ts_from_attr("2025-01-02T01:04:05.600Z", "x").unwrap(),
            at("2025-01-02T01:04:05.6Z")
        );
        let bc = Timestamp::UNIX_EPOCH.replace_year(-1).unwrap();
        assert!(ts_to_attr(bc).is_err());
    }

    #[test]
    fn record_round_trips_through_an_item() {
        let rec = record();
        let item = item_from_record(&rec).unwrap();
        assert_eq!(item[PK], s("USER#u#1"));
        assert_eq!(item[SK], s("KEY#gateway"));
        assert_eq!(record_from_item(&rec.user, &item).unwrap(), rec);

        let mut sparse = rec.clone();
        sparse.base_url = None;
        sparse.last_validated_at = None;
        sparse.last_validation = None;
        let item = item_from_record(&sparse).unwrap();
        for absent in ["baseUrl", "lastValidatedAt", "lastValidation"] {
            assert!(!item.contains_key(absent), "{absent}");
        }
        assert_eq!(record_from_item(&rec.user, &item).unwrap(), sparse);
    }

    #[test]
    fn corrupt_items_name_the_attribute_not_the_value() {
        let rec = record();
        let cases: [(&str, AttributeValue, &str); 6] = [
            ("createdAt", s("yesterday-SECRETVALUE"), "createdAt"),
            ("service", s("mistral-SECRETVALUE"), "service"),
            ("enabled", s("SECRETVALUE"), "enabled"),
            ("revision", AttributeValue::N("-1".into()), "revision"),
            ("lastValidation", s("maybe-SECRETVALUE"), "lastValidation"),
            (SK, s("KEY#openai"), "sort key"),
        ];
        for (name, value, want) in cases {
            let mut item = item_from_record(&rec).unwrap();
            item.insert(name.to_owned(), value);
            let err = record_from_item(&rec.user, &item).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StoreError::Corrupt(_)) && msg.contains(want),
                "{name}: {msg}"
            );
            assert!(!msg.contains("SECRETVALUE"), "{msg}");
        }
        let mut item = item_from_record(&rec).unwrap();
        item.remove("label");
        assert!(matches!(
            record_from_item(&rec.user, &item),
            Err(StoreError::Corrupt(m)) if m.contains("label")
        ));
    }
}
