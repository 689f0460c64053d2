//! The audit log: one item per event under `AUDIT#{user}`, listed newest
//! first by one `Query` per page (see "Audit events" in [`super`]).

use super::*;

/// An audit item of `user` as an event.
pub(super) fn audit_from_item(user: &UserId, item: &Item) -> Result<AuditEvent, StoreError> {
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
        key_id: a
            .opt_string("keyId")?
            .map(|id| {
                KeyId::parse(id)
                    .ok_or_else(|| corrupt("audit item attribute keyId is not a key id"))
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
        if let Some(id) = &event.key_id {
            item.insert("keyId".to_owned(), s(id.as_str()));
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
