//! The DynamoDB metadata store: settings and key records of every user in
//! one table, so resolution reads a user in one `Query`.
//!
//! # Table layout (single-table design)
//! The table has a string partition key `pk` and a string sort key `sk`.
//!
//! | item          | `pk`          | `sk`              | attributes |
//! |---------------|---------------|-------------------|------------|
//! | settings      | `USER#{user}` | `SETTINGS`        | `allowGatewayFallback` (BOOL), `updatedAt` |
//! | key record    | `USER#{user}` | `KEY#{service}` (the first key, `k0`), `KEY#{service}#{id}` | `service`, `keyId`, `priority` (N), `label`, `maskedKey`, `enabled` (BOOL), `baseUrl`, `createdAt`, `updatedAt`, `lastValidatedAt`, `lastValidation`, `secretId`, `secretVersion`, `revision` (N), `rotatedAt`, `pendingVersion`, `pendingMaskedKey`, `pendingStagedAt`, `pendingToken`, `lastRotationAt`, `lastRotationRejected`, `lastUsedAt`, `cooldownUntil` |
//! | rate counter  | `RATE#{user}` | `{action}#{window ms}#{window start ms}` | `count` (N), `ttl` (N) |
//! | audit event   | `AUDIT#{user}`| `{audit id}`      | `at`, `action`, `service`, `result`, `requestId` |
//! | personal key  | `APITOKEN#{sha256 hex}` | `APITOKEN` | `tokenId`, `userId`, `tenantId`, `name`, `prefix`, `tokenHash`, `createdAt`, `expiresAt`, `lastUsedAt`, `ttl` (7 days after `expiresAt`) |
//! | personal key (owner's list) | `APITOKENS#{user}` | `{token id}` | the same attributes |
//! | usage         | `USAGE#{user}`, `USAGEDAY#{day}#{shard}`, `USAGEREQ#{user}` | see [`usage`] | day aggregates, the operator's per-day view, raw entries (`ttl`) |
//!
//! `{user}` is the user id verbatim (the `USER#` prefix is stripped, never
//! split on, so ids containing `#` are fine) and `{service}` its wire name.
//! Optional attributes (`baseUrl`, `lastValidatedAt`, `lastValidation`, the
//! rotation and health attributes) are absent when unset, never NULL. Key
//! items written before keys had ids have no `keyId` or `priority`: they
//! read as their service's first key (`k0`, priority 0), unchanged. Timestamps are RFC 3339 strings in UTC
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
//! # Personal API keys
//! Each key is two items with the same attributes, written by one
//! `TransactWriteItems` (both `attribute_not_exists`) and removed by one:
//! the item found by the key's SHA-256 (a request presenting the key costs
//! one consistent `GetItem`) and the owner's list item (listing is one
//! `Query`). A use updates `lastUsedAt` on both in one transaction
//! conditional on both existing, so a key revoked meanwhile stays revoked.
//! The key itself is never stored.
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
use super::{Expected, KeyMark, KeyPage, MetadataStore, StoreError, UserSnapshot};
use crate::domain::{
    self, KeyId, KeyRecord, PendingKey, RotationOutcome, RotationRejection, SecretRef, Service,
    Settings, Timestamp, UserId, ValidationResult,
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

mod api_tokens;
mod audit_log;
mod budget;
mod keys;
mod ratelimit;
mod table;
mod usage;
pub use table::ensure_table;
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

/// The sort key of a user's key record `id` of `service`: `KEY#{service}`
/// for the service's first key (as every key was stored before keys had
/// ids), `KEY#{service}#{id}` for the others.
pub fn key_sk(service: Service, id: &KeyId) -> String {
    if id.is_first() {
        format!("{KEY_SK_PREFIX}{service}")
    } else {
        format!("{KEY_SK_PREFIX}{service}#{id}")
    }
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

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(_) => self.u64(name).map(Some),
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

impl DynamoMetadataStore {
    /// Puts `item` if the stored item matches `expected`: absent, or with
    /// that `revision`; else [`StoreError::Conflict`] and nothing changes.
    async fn put_expecting(&self, item: Item, expected: Expected) -> Result<(), StoreError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
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
/// Runs every item decoder on `item`, for the property tests
/// (`crate::fuzz`): any shape may fail to decode, none may panic.
#[cfg(test)]
pub(crate) fn decode_any(item: &Item) {
    let user = UserId::new("fuzz").unwrap_or_else(|| unreachable!("a valid id"));
    let _ = keys::record_from_item(&user, item);
    let _ = keys::settings_from_item(item);
    let _ = audit_log::audit_from_item(&user, item);
    let _ = usage::row_from_item(item, Some(&user));
    let _ = usage::row_from_item(item, None);
    let _ = usage::entry_from_item(&user, item);
    let _ = budget::record_of(item);
}

#[cfg(test)]
mod tests {
    use super::keys::{item_from_record, record_from_item};
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
            id: KeyId::parse("k0123456789abcdef").unwrap(),
            priority: 2,
            last_used_at: Some(now),
            cooldown_until: None,
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
        assert_eq!(item[SK], s("KEY#gateway#k0123456789abcdef"));
        assert_eq!(record_from_item(&rec.user, &item).unwrap(), rec);

        // The first key (every key stored before keys had ids) keeps its
        // sort key; an item without keyId or priority reads as it.
        let first = KeyRecord {
            id: KeyId::first(),
            priority: 0,
            ..rec.clone()
        };
        let mut item = item_from_record(&first).unwrap();
        assert_eq!(item[SK], s("KEY#gateway"));
        item.remove("keyId");
        item.remove("priority");
        assert_eq!(record_from_item(&rec.user, &item).unwrap(), first);
        // A keyId that disagrees with the sort key is refused.
        item.insert("keyId".into(), s("k00000000000000ff"));
        assert!(record_from_item(&rec.user, &item).is_err());

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
