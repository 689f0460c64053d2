//! The DynamoDB usage ledger: each entry is one `UpdateItem … ADD` on the
//! user's day aggregate and one on the operator's per-day view (run
//! concurrently), plus a `PutItem` of the raw entry with a `ttl` when raw
//! entries are kept.
//!
//! | item              | `pk`                       | `sk` |
//! |-------------------|----------------------------|------|
//! | user aggregate    | `USAGE#{user}`             | `{day}#{path}#{service}#{model}` |
//! | operator view     | `USAGEDAY#{day}#{shard}`   | `{path}#{service}#{len}:{tenant}#{len}:{user}#{model}` |
//! | raw entry         | `USAGEREQ#{user}`          | `{at ms, 13 digits}#{attempt, 4 digits}#{request id}` |
//!
//! Days and paths have fixed shapes and services contain no `#`, so each
//! sort key is unambiguous (tenant and user are length-prefixed, the model
//! comes last). Aggregates carry their parts as attributes too (`day`,
//! `service`, `model`, `path`, `user`, `tenant`) and the counters of
//! [`UsageCounts::FIELDS`]. A user's range of days is one `Query` with
//! `sk BETWEEN "{from}" AND "{to}~"`. The operator's view of one day is
//! spread over [`DAY_SHARDS`] partitions (by a hash of the user), so a busy
//! day's writes are not bound by one partition's write capacity; reading a
//! day queries each shard. Nothing is ever scanned.
//!
//! Like rate counters, updates of one item from this process are
//! serialised by an in-process lock: DynamoDB applies `ADD` atomically, but
//! the local emulator loses concurrent updates of one item without it.

use super::super::usage::{
    LedgerOutcome, TenantId, UsageCounts, UsageEntry, UsageRow, UsageStore, day_text, epoch_ms,
    parse_day,
};
use super::{
    Attrs, DynamoMetadataStore, Item, PK, SK, StoreError, TTL_ATTRIBUTE, backend, corrupt, s,
};
use crate::domain::ResolutionPath;
use crate::domain::{Service, UserId};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::time::Duration;
use time::Date;

/// Partitions the operator's view of one day is spread over.
pub const DAY_SHARDS: u64 = 4;

/// Operator-view queries in flight at once.
const READ_CONCURRENCY: usize = 8;

fn user_usage_pk(user: &UserId) -> String {
    format!("USAGE#{user}")
}

fn day_pk(day: Date, shard: u64) -> String {
    format!("USAGEDAY#{}#{shard}", day_text(day))
}

fn request_pk(user: &UserId) -> String {
    format!("USAGEREQ#{user}")
}

fn shard_of(user: &UserId) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    user.as_str().hash(&mut hasher);
    hasher.finish() % DAY_SHARDS
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl DynamoMetadataStore {
    /// One `UpdateItem` adding `counts` to the item (`pk`, `sk`), setting
    /// its descriptive attributes.
    async fn add_usage(
        &self,
        pk: String,
        sk: String,
        parts: Vec<(&'static str, String)>,
        counts: &UsageCounts,
    ) -> Result<(), StoreError> {
        let _serialised = self.item_lock(&pk, &sk).lock().await;
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk));
        let mut sets = Vec::with_capacity(parts.len());
        for (i, (name, value)) in parts.into_iter().enumerate() {
            sets.push(format!("#p{i} = :p{i}"));
            update = update
                .expression_attribute_names(format!("#p{i}"), name)
                .expression_attribute_values(format!(":p{i}"), s(value));
        }
        let mut adds = Vec::with_capacity(UsageCounts::FIELDS.len());
        for (i, (name, value)) in UsageCounts::FIELDS.iter().zip(counts.values()).enumerate() {
            adds.push(format!("#c{i} :c{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), *name)
                .expression_attribute_values(format!(":c{i}"), n(value));
        }
        update
            .update_expression(format!("SET {} ADD {}", sets.join(", "), adds.join(", ")))
            .send()
            .await
            .map_err(|e| backend("UpdateItem", e))?;
        Ok(())
    }

    /// Every item of a `Query` on partition `pk`, optionally with
    /// `sk BETWEEN lo AND hi`, following pages.
    async fn query_all(
        &self,
        pk: String,
        range: Option<(String, String)>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk.clone()))
                .set_exclusive_start_key(start.take());
            query = match &range {
                Some((lo, hi)) => query
                    .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":lo", s(lo.clone()))
                    .expression_attribute_values(":hi", s(hi.clone())),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let out = query.send().await.map_err(|e| backend("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(items)
    }
}

/// An aggregate item as a row; `user` when the item does not name one.
pub(super) fn row_from_item(item: &Item, user: Option<&UserId>) -> Result<UsageRow, StoreError> {
    let a = Attrs {
        item,
        kind: "usage",
    };
    let user = match user {
        Some(user) => user.clone(),
        None => UserId::new(a.string("user")?)
            .ok_or_else(|| corrupt("usage item attribute user is not a user id"))?,
    };
    let mut values = [0u64; 11];
    for (value, name) in values.iter_mut().zip(UsageCounts::FIELDS) {
        *value = a.u64(name)?;
    }
    Ok(UsageRow {
        day: parse_day(a.string("day")?)
            .ok_or_else(|| corrupt("usage item attribute day is not a day"))?,
        user,
        tenant: a.opt_string("tenant")?.and_then(TenantId::new),
        service: a
            .string("service")?
            .parse::<Service>()
            .map_err(|_| corrupt("usage item attribute service names no known service"))?,
        model: a.string("model")?.to_owned(),
        path: ResolutionPath::parse(a.string("path")?)
            .ok_or_else(|| corrupt("usage item attribute path names no path"))?,
        counts: UsageCounts::from_values(values),
    })
}

/// A raw entry item as an entry.
pub(super) fn entry_from_item(user: &UserId, item: &Item) -> Result<UsageEntry, StoreError> {
    let a = Attrs {
        item,
        kind: "usage request",
    };
    let opt_u64 = |name: &str| item.contains_key(name).then(|| a.u64(name)).transpose();
    let at_ms = i128::from(a.u64("atMs")?);
    Ok(UsageEntry {
        user: user.clone(),
        tenant: a.opt_string("tenant")?.and_then(TenantId::new),
        at: time::OffsetDateTime::from_unix_timestamp_nanos(at_ms * 1_000_000)
            .map_err(|_| corrupt("usage request item attribute atMs is out of range"))?,
        request_id: a.string("requestId")?.to_owned(),
        attempt: u32::try_from(a.u64("attempt")?)
            .map_err(|_| corrupt("usage request item attribute attempt is out of range"))?,
        service: a
            .string("service")?
            .parse::<Service>()
            .map_err(|_| corrupt("usage request item attribute service names no known service"))?,
        model: a.string("model")?.to_owned(),
        path: ResolutionPath::parse(a.string("path")?)
            .ok_or_else(|| corrupt("usage request item attribute path names no path"))?,
        prompt_tokens: a.u64("promptTokens")?,
        completion_tokens: a.u64("completionTokens")?,
        cost_nanos: opt_u64("costNanos")?,
        estimated: a.bool("estimated")?,
        outcome: LedgerOutcome::parse(a.string("outcome")?)
            .ok_or_else(|| corrupt("usage request item attribute outcome is not an outcome"))?,
        error_code: a.opt_string("errorCode")?.map(str::to_owned),
        stream: a.bool("stream")?,
        fallback: a.bool("fallback")?,
        time_to_first_byte_ms: opt_u64("ttfbMs")?,
        duration_ms: a.u64("durationMs")?,
    })
}

/// A variable part of a sort key, length-prefixed so the key stays unambiguous.
fn sized(part: &str) -> String {
    format!("{}:{part}", part.len())
}

#[async_trait]
impl UsageStore for DynamoMetadataStore {
    async fn record_usage(
        &self,
        entry: &UsageEntry,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        let day = entry.day();
        let day_str = day_text(day);
        let counts = entry.counts();
        let tenant = entry.tenant.as_ref().map_or("", TenantId::as_str);
        let common = vec![
            ("day", day_str.clone()),
            ("service", entry.service.as_str().to_owned()),
            ("model", entry.model.clone()),
            ("path", entry.path.as_str().to_owned()),
        ];
        let user_item = self.add_usage(
            user_usage_pk(&entry.user),
            format!(
                "{day_str}#{}#{}#{}",
                entry.path.as_str(),
                entry.service.as_str(),
                entry.model
            ),
            common.clone(),
            &counts,
        );
        let mut day_parts = common;
        day_parts.push(("user", entry.user.as_str().to_owned()));
        if let Some(tenant) = &entry.tenant {
            day_parts.push(("tenant", tenant.as_str().to_owned()));
        }
        let day_item = self.add_usage(
            day_pk(day, shard_of(&entry.user)),
            format!(
                "{}#{}#{}#{}#{}",
                entry.path.as_str(),
                entry.service.as_str(),
                sized(tenant),
                sized(entry.user.as_str()),
                entry.model
            ),
            day_parts,
            &counts,
        );
        let raw = async {
            let Some(retention) = retention else {
                return Ok(());
            };
            let at_ms = epoch_ms(entry.at);
            let ttl = at_ms
                .div_euclid(1000)
                .saturating_add(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX));
            let mut item: Item = HashMap::from([
                (PK.to_owned(), s(request_pk(&entry.user))),
                (
                    SK.to_owned(),
                    s(format!(
                        "{at_ms:013}#{:04}#{}",
                        entry.attempt, entry.request_id
                    )),
                ),
                ("atMs".to_owned(), n(u64::try_from(at_ms).unwrap_or(0))),
                ("requestId".to_owned(), s(entry.request_id.clone())),
                ("attempt".to_owned(), n(u64::from(entry.attempt))),
                ("service".to_owned(), s(entry.service.as_str())),
                ("model".to_owned(), s(entry.model.clone())),
                ("path".to_owned(), s(entry.path.as_str())),
                ("promptTokens".to_owned(), n(entry.prompt_tokens)),
                ("completionTokens".to_owned(), n(entry.completion_tokens)),
                (
                    "estimated".to_owned(),
                    AttributeValue::Bool(entry.estimated),
                ),
                ("outcome".to_owned(), s(entry.outcome.as_str())),
                ("stream".to_owned(), AttributeValue::Bool(entry.stream)),
                ("fallback".to_owned(), AttributeValue::Bool(entry.fallback)),
                ("durationMs".to_owned(), n(entry.duration_ms)),
                (TTL_ATTRIBUTE.to_owned(), AttributeValue::N(ttl.to_string())),
            ]);
            if let Some(tenant) = &entry.tenant {
                item.insert("tenant".to_owned(), s(tenant.as_str()));
            }
            if let Some(cost) = entry.cost_nanos {
                item.insert("costNanos".to_owned(), n(cost));
            }
            if let Some(code) = &entry.error_code {
                item.insert("errorCode".to_owned(), s(code.clone()));
            }
            if let Some(ttfb) = entry.time_to_first_byte_ms {
                item.insert("ttfbMs".to_owned(), n(ttfb));
            }
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(|e| backend("PutItem", e))?;
            Ok::<_, StoreError>(())
        };
        let (a, b, c) = tokio::join!(user_item, day_item, raw);
        a.and(b).and(c)
    }

    async fn user_usage(
        &self,
        user: &UserId,
        from: Date,
        to: Date,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let items = self
            .query_all(
                user_usage_pk(user),
                Some((day_text(from), format!("{}~", day_text(to)))),
            )
            .await?;
        items.iter().map(|i| row_from_item(i, Some(user))).collect()
    }

    async fn all_usage(&self, from: Date, to: Date) -> Result<Vec<UsageRow>, StoreError> {
        let mut partitions = Vec::new();
        let mut day = from;
        while day <= to {
            for shard in 0..DAY_SHARDS {
                partitions.push(day_pk(day, shard));
            }
            match day.next_day() {
                Some(next) => day = next,
                None => break,
            }
        }
        let pages: Vec<Result<Vec<Item>, StoreError>> = futures_util::stream::iter(partitions)
            .map(|pk| self.query_all(pk, None))
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut rows = Vec::new();
        for page in pages {
            for item in page? {
                rows.push(row_from_item(&item, None)?);
            }
        }
        Ok(rows)
    }

    async fn recent_usage(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<UsageEntry>, StoreError> {
        let now_secs = crate::domain::now().unix_timestamp();
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .scan_index_forward(false)
            .key_condition_expression("#pk = :pk")
            // TTL deletion lags: expired entries are filtered out here.
            .filter_expression("#ttl > :now")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":pk", s(request_pk(user)))
            .expression_attribute_values(":now", AttributeValue::N(now_secs.to_string()))
            .limit(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| backend("Query", e))?;
        out.items
            .unwrap_or_default()
            .iter()
            .take(limit)
            .map(|item| entry_from_item(user, item))
            .collect()
    }
}
