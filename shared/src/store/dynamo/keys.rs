//! Settings and key records: the metadata every request's resolution reads
//! (one `Query` of the user's partition) and the key routes write
//! (conditional on the record's revision); the operator jobs' paged scan.

use super::*;

/// A key item of `user` as a record.
pub(super) fn record_from_item(user: &UserId, item: &Item) -> Result<KeyRecord, StoreError> {
    let a = Attrs { item, kind: "key" };
    let service = a
        .string("service")?
        .parse::<Service>()
        .map_err(|_| corrupt("key item attribute service names no known service"))?;
    let id = match a.opt_string("keyId")? {
        Some(id) => {
            KeyId::parse(id).ok_or_else(|| corrupt("key item attribute keyId is not a key id"))?
        }
        None => KeyId::first(),
    };
    if a.string(SK)? != key_sk(service, &id) {
        return Err(corrupt(
            "key item sort key does not match its service and id",
        ));
    }
    let priority = match a.opt_u64("priority")? {
        Some(p) => {
            u32::try_from(p).map_err(|_| corrupt("key item attribute priority is out of range"))?
        }
        None => 0,
    };
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
        id,
        priority,
        last_used_at: a.opt_timestamp("lastUsedAt")?,
        cooldown_until: a.opt_timestamp("cooldownUntil")?,
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
pub(super) fn item_from_record(r: &KeyRecord) -> Result<Item, StoreError> {
    let mut item = key_of(&r.user, key_sk(r.service, &r.id));
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_owned(), value);
    };
    put("service", s(r.service.as_str()));
    put("keyId", s(r.id.as_str()));
    put("priority", AttributeValue::N(r.priority.to_string()));
    if let Some(t) = r.last_used_at {
        put("lastUsedAt", s(ts_to_attr(t)?));
    }
    if let Some(t) = r.cooldown_until {
        put("cooldownUntil", s(ts_to_attr(t)?));
    }
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

pub(super) fn settings_from_item(item: &Item) -> Result<Settings, StoreError> {
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
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(key_of(user, key_sk(service, id))))
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
        self.put_expecting(item_from_record(record)?, expected)
            .await
    }

    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(user, key_sk(service, id))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("DeleteItem", e))?;
        match out.attributes {
            Some(item) if !item.is_empty() => record_from_item(user, &item).map(Some),
            _ => Ok(None),
        }
    }

    async fn mark_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mark: KeyMark,
    ) -> Result<(), StoreError> {
        let (update, at) = match mark {
            KeyMark::Used(at) => ("SET lastUsedAt = :at", at),
            KeyMark::CoolDown(until) => ("SET cooldownUntil = :at", until),
            KeyMark::Refused(at) => ("SET lastValidation = :invalid, lastValidatedAt = :at", at),
        };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(user, key_sk(service, id))))
            .update_expression(update)
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":at", s(ts_to_attr(at)?));
        if matches!(mark, KeyMark::Refused(_)) {
            request = request.expression_attribute_values(
                ":invalid",
                s(crate::domain::ValidationResult::Invalid.as_str()),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to mark.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(backend("UpdateItem", err)),
        }
    }

    async fn put_settings(
        &self,
        user: &UserId,
        settings: Settings,
    ) -> Result<Settings, StoreError> {
        let mut item = key_of(user, SETTINGS_SK.to_owned());
        item.insert(
            "allowGatewayFallback".to_owned(),
            AttributeValue::Bool(settings.allow_gateway_fallback),
        );
        item.insert("updatedAt".to_owned(), s(ts_to_attr(domain::now())?));
        // The item it replaces comes back with the write (no read).
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("PutItem", e))?;
        out.attributes()
            .map_or(Ok(Settings::default()), settings_from_item)
    }
}
