//! Budgets in DynamoDB: one item per budget, in a partition of its own so
//! busy budgets do not share write capacity, plus one entry in the
//! `BUDGETS` partition for the operator's paged list (a `Query`, never a
//! `Scan`).
//!
//! | item         | `pk`                   | `sk`           |
//! |--------------|------------------------|----------------|
//! | budget       | `BUDGET#{kind}#{id}`   | `BUDGET`       |
//! | list entry   | `BUDGETS`              | `{kind}#{id}`  |
//!
//! A write is a `PutItem` conditional on the item's `revision` (or on its
//! absence), so concurrent changes from any number of instances serialise
//! on the one item; an update reads, changes and writes, and reads again
//! on a conflict. This process's updates of one item also queue on an
//! in-process lock (as counters do), so they do not conflict with each other. A new budget's list entry is written after the budget;
//! a deleted budget's after it is removed (a list skips entries whose budget
//! is gone).

use super::super::Expected;
use super::super::budget::{
    Amount, BudgetChange, BudgetPage, BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, holds_text, parse_holds, parse_percents, percents_text,
    update_by_revision,
};
use super::{
    Attrs, DynamoMetadataStore, Item, PK, SK, StoreError, backend, corrupt, s, ts_to_attr,
};
use crate::domain::UserId;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use futures_util::StreamExt as _;
use std::collections::HashMap;

const BUDGET_SK: &str = "BUDGET";
const LIST_PK: &str = "BUDGETS";

fn budget_key(scope: &BudgetScope) -> Item {
    HashMap::from([
        (PK.to_owned(), s(format!("BUDGET#{}", scope.sort_key()))),
        (SK.to_owned(), s(BUDGET_SK)),
    ])
}

fn list_key(scope: &BudgetScope) -> Item {
    HashMap::from([
        (PK.to_owned(), s(LIST_PK)),
        (SK.to_owned(), s(scope.sort_key())),
    ])
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn item_of(r: &BudgetRecord) -> Result<Item, StoreError> {
    let mut item = budget_key(&r.scope);
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_owned(), value);
    };
    put("scope", s(r.scope.sort_key()));
    put("unit", s(r.terms.unit.as_str()));
    put("period", s(r.terms.period.as_str()));
    put("limit", n(r.terms.limit));
    put("pauseAtLimit", AttributeValue::Bool(r.terms.pause_at_limit));
    put(
        "alertThresholds",
        s(percents_text(&r.terms.alert_thresholds)),
    );
    put("updatedAt", s(ts_to_attr(r.updated_at)?));
    put("updatedBy", s(r.updated_by.as_str()));
    put("periodKey", s(&r.period_key));
    put("usedTokens", n(r.used.tokens));
    put("usedNanos", n(r.used.nanos));
    put("holds", s(holds_text(&r.holds, &r.settled)));
    put("alerted", s(percents_text(&r.alerted)));
    put("revision", n(r.revision));
    Ok(item)
}

pub(super) fn record_of(item: &Item) -> Result<BudgetRecord, StoreError> {
    let a = Attrs {
        item,
        kind: "budget",
    };
    let (holds, settled) = parse_holds(a.string("holds")?)?;
    Ok(BudgetRecord {
        scope: BudgetScope::from_sort_key(a.string("scope")?)
            .ok_or_else(|| corrupt("budget item attribute scope names no scope"))?,
        terms: BudgetTerms {
            unit: BudgetUnit::parse(a.string("unit")?)
                .ok_or_else(|| corrupt("budget item attribute unit is not a unit"))?,
            period: BudgetPeriod::parse(a.string("period")?)
                .ok_or_else(|| corrupt("budget item attribute period is not a period"))?,
            limit: a.u64("limit")?,
            pause_at_limit: a.bool("pauseAtLimit")?,
            alert_thresholds: parse_percents(a.string("alertThresholds")?)?,
        },
        updated_at: a.timestamp("updatedAt")?,
        updated_by: UserId::new(a.string("updatedBy")?)
            .ok_or_else(|| corrupt("budget item attribute updatedBy is not a user id"))?,
        period_key: a.string("periodKey")?.to_owned(),
        used: Amount {
            tokens: a.u64("usedTokens")?,
            nanos: a.u64("usedNanos")?,
        },
        holds,
        settled,
        alerted: parse_percents(a.string("alerted")?)?,
        revision: a.u64("revision")?,
    })
}

/// Budgets read at once while listing a page.
const READ_CONCURRENCY: usize = 8;

#[async_trait]
impl BudgetStore for DynamoMetadataStore {
    async fn get_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(budget_key(scope)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        out.item.as_ref().map(record_of).transpose()
    }

    async fn update_budget(
        &self,
        scope: &BudgetScope,
        change: BudgetChange,
    ) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
        // This process's updates of one budget queue here rather than race
        // each other into conflicts; other instances' are caught by the revision.
        let pk = format!("BUDGET#{}", scope.sort_key());
        let _serialised = self.item_lock(&pk, BUDGET_SK).lock().await;
        update_by_revision(self, scope, &change).await
    }

    async fn put_budget(
        &self,
        record: &BudgetRecord,
        expected: Expected,
    ) -> Result<(), StoreError> {
        self.put_expecting(item_of(record)?, expected).await?;
        if expected == Expected::Absent {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(list_key(&record.scope)))
                .send()
                .await
                .map_err(|e| backend("PutItem", e))?;
        }
        Ok(())
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(budget_key(scope)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("DeleteItem", e))?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(list_key(scope)))
            .send()
            .await
            .map_err(|e| backend("DeleteItem", e))?;
        match out.attributes {
            Some(item) if !item.is_empty() => record_of(&item).map(Some),
            _ => Ok(None),
        }
    }

    async fn list_budgets(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<BudgetPage, StoreError> {
        let mut scopes = Vec::new();
        let mut start: Option<Item> =
            after.map(|key| HashMap::from([(PK.to_owned(), s(LIST_PK)), (SK.to_owned(), s(key))]));
        let mut more = true;
        while more && scopes.len() <= limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(LIST_PK))
                .limit(i32::try_from(limit + 1 - scopes.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query", e))?;
            for item in out.items() {
                let a = Attrs {
                    item,
                    kind: "budget list",
                };
                scopes.push(
                    BudgetScope::from_sort_key(a.string(SK)?)
                        .ok_or_else(|| corrupt("budget list entry names no scope"))?,
                );
            }
            start = out.last_evaluated_key;
            more = start.is_some();
        }
        let next = (scopes.len() > limit).then(|| {
            scopes.truncate(limit);
            scopes.last().map(BudgetScope::sort_key)
        });
        let reads = scopes
            .into_iter()
            .map(|scope| async move { self.get_budget(&scope).await });
        let read: Vec<Result<Option<BudgetRecord>, StoreError>> = futures_util::stream::iter(reads)
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut budgets = Vec::with_capacity(read.len());
        for record in read {
            budgets.extend(record?);
        }
        Ok(BudgetPage {
            budgets,
            next: next.flatten(),
        })
    }
}
