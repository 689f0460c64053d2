//! Personal API keys: two items per key, written and removed together in
//! one `TransactWriteItems` (see "Personal API keys" in [`super`]). The
//! item under `APITOKEN#{hash}` is what a request's one `GetItem` finds;
//! the item under `APITOKENS#{user}` is what the owner's list queries.

use super::*;
use crate::domain::{ApiTokenId, ApiTokenRecord, TenantId, TokenHash};
use crate::store::api_tokens::ApiTokenStore;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

/// Sort key of the item found by hash.
const BY_HASH_SK: &str = "APITOKEN";
/// DynamoDB deletes an expired key's items this long after it expired.
const EXPIRED_KEPT_SECS: i64 = 7 * 24 * 3600;

/// The partition key of the item found by a key's hash.
pub fn token_hash_pk(hash: &TokenHash) -> String {
    format!("APITOKEN#{}", hash.to_hex())
}

/// The partition key of a user's list of personal keys.
pub fn token_list_pk(user: &UserId) -> String {
    format!("APITOKENS#{user}")
}

fn token_from_item(item: &Item) -> Result<ApiTokenRecord, StoreError> {
    let a = Attrs {
        item,
        kind: "personal key",
    };
    Ok(ApiTokenRecord {
        id: ApiTokenId::parse(a.string("tokenId")?)
            .ok_or_else(|| corrupt("personal key item attribute tokenId is not a token id"))?,
        user: UserId::new(a.string("userId")?)
            .ok_or_else(|| corrupt("personal key item attribute userId is not a user id"))?,
        tenant: a
            .opt_string("tenantId")?
            .map(|t| {
                TenantId::new(t)
                    .ok_or_else(|| corrupt("personal key item attribute tenantId is not a tenant"))
            })
            .transpose()?,
        name: a.string("name")?.to_owned(),
        prefix: a.string("prefix")?.to_owned(),
        hash: TokenHash::from_hex(a.string("tokenHash")?)
            .ok_or_else(|| corrupt("personal key item attribute tokenHash is not a SHA-256"))?,
        created_at: a.timestamp("createdAt")?,
        expires_at: a.opt_timestamp("expiresAt")?,
        last_used_at: a.opt_timestamp("lastUsedAt")?,
    })
}

/// The attributes both items carry.
fn token_attributes(record: &ApiTokenRecord) -> Result<Item, StoreError> {
    let mut item = HashMap::from([
        ("tokenId".to_owned(), s(record.id.as_str())),
        ("userId".to_owned(), s(record.user.as_str())),
        ("name".to_owned(), s(&record.name)),
        ("prefix".to_owned(), s(&record.prefix)),
        ("tokenHash".to_owned(), s(record.hash.to_hex())),
        ("createdAt".to_owned(), s(ts_to_attr(record.created_at)?)),
    ]);
    if let Some(tenant) = &record.tenant {
        item.insert("tenantId".to_owned(), s(tenant.as_str()));
    }
    if let Some(at) = record.expires_at {
        item.insert("expiresAt".to_owned(), s(ts_to_attr(at)?));
        let ttl = at.unix_timestamp().saturating_add(EXPIRED_KEPT_SECS);
        item.insert(TTL_ATTRIBUTE.to_owned(), AttributeValue::N(ttl.to_string()));
    }
    if let Some(at) = record.last_used_at {
        item.insert("lastUsedAt".to_owned(), s(ts_to_attr(at)?));
    }
    Ok(item)
}

fn built<T>(part: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, StoreError> {
    part.map_err(StoreError::backend)
}

impl DynamoMetadataStore {
    fn token_keys(user: &UserId, id: &ApiTokenId, hash: &TokenHash) -> [Item; 2] {
        [
            HashMap::from([
                (PK.to_owned(), s(token_hash_pk(hash))),
                (SK.to_owned(), s(BY_HASH_SK)),
            ]),
            HashMap::from([
                (PK.to_owned(), s(token_list_pk(user))),
                (SK.to_owned(), s(id.as_str())),
            ]),
        ]
    }

    async fn write_together(
        &self,
        operation: &'static str,
        items: Vec<TransactWriteItem>,
    ) -> Result<bool, StoreError> {
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(backend(operation, err)),
        }
    }
}

#[async_trait]
impl ApiTokenStore for DynamoMetadataStore {
    async fn create_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError> {
        let attributes = token_attributes(record)?;
        let puts = Self::token_keys(&record.user, &record.id, &record.hash).map(|mut key| {
            key.extend(attributes.clone());
            built(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(key))
                    .condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", PK)
                    .build(),
            )
            .map(|put| TransactWriteItem::builder().put(put).build())
        });
        let [a, b] = puts;
        if self
            .write_together("TransactWriteItems (create personal key)", vec![a?, b?])
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn list_tokens(&self, user: &UserId) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut tokens = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(token_list_pk(user)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query", e))?;
            for item in out.items.as_deref().unwrap_or_default() {
                tokens.push(token_from_item(item)?);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn find_token(&self, hash: &TokenHash) -> Result<Option<ApiTokenRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key(PK, s(token_hash_pk(hash)))
            .key(SK, s(BY_HASH_SK))
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        out.item.as_ref().map(token_from_item).transpose()
    }

    async fn delete_token(
        &self,
        user: &UserId,
        id: &ApiTokenId,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key(PK, s(token_list_pk(user)))
            .key(SK, s(id.as_str()))
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        let Some(record) = out.item.as_ref().map(token_from_item).transpose()? else {
            return Ok(None);
        };
        let deletes = Self::token_keys(user, id, &record.hash).map(|key| {
            built(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .build(),
            )
            .map(|delete| TransactWriteItem::builder().delete(delete).build())
        });
        let [a, b] = deletes;
        self.write_together("TransactWriteItems (revoke personal key)", vec![a?, b?])
            .await?;
        Ok(Some(record))
    }

    async fn mark_token_used(
        &self,
        user: &UserId,
        id: &ApiTokenId,
        hash: &TokenHash,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let at = ts_to_attr(at)?;
        let updates = Self::token_keys(user, id, hash).map(|key| {
            built(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .update_expression("SET #used = :at")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#used", "lastUsedAt")
                    .expression_attribute_values(":at", s(at.clone()))
                    .build(),
            )
            .map(|update| TransactWriteItem::builder().update(update).build())
        });
        let [a, b] = updates;
        // A key revoked meanwhile cancels the transaction: nothing to mark.
        self.write_together("TransactWriteItems (personal key used)", vec![a?, b?])
            .await?;
        Ok(())
    }
}
