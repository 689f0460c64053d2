//! The audit log: one row per event, listed newest first in pages.

use super::*;

/// An `audit_events` row (id, at, action, service, result, request_id) of `user`.
fn audit_from_row(user: &UserId, row: &Row<'_>) -> Result<AuditEvent, StoreError> {
    let id = AuditId::parse(&col::<String>(row, 0, "audit_events.id")?)
        .ok_or_else(|| corrupt("audit_events.id is not an audit id"))?;
    let action = AuditAction::parse(&col::<String>(row, 2, "audit_events.action")?)
        .ok_or_else(|| corrupt("audit_events.action is not a known action"))?;
    // An empty service: an event about no key (budgets).
    let service = match col::<String>(row, 3, "audit_events.service")? {
        text if text.is_empty() => None,
        text => Some(
            text.parse::<Service>()
                .map_err(|_| corrupt("audit_events.service names no known service"))?,
        ),
    };
    Ok(AuditEvent {
        id,
        user: user.clone(),
        at: ts_from_text(
            &col::<String>(row, 1, "audit_events.at")?,
            "audit_events.at",
        )?,
        action,
        service,
        key_id: col::<Option<String>>(row, 6, "audit_events.key_id")?
            .map(|id| {
                KeyId::parse(&id).ok_or_else(|| corrupt("audit_events.key_id is not a key id"))
            })
            .transpose()?,
        result: col(row, 4, "audit_events.result")?,
        request_id: col(row, 5, "audit_events.request_id")?,
    })
}

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
        self.run(move |inner| {
            let at = ts_to_text(event.at)?;
            let changed = inner
                .conn()?
                .execute(
                    "INSERT INTO audit_events \
                     (user_id, id, at, action, service, result, request_id, key_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (user_id, id) DO NOTHING",
                    params![
                        event.user.as_str(),
                        event.id.as_str(),
                        at,
                        event.action.as_str(),
                        event.service.map_or("", Service::as_str),
                        event.result,
                        event.request_id,
                        event.key_id.as_ref().map(KeyId::as_str),
                    ],
                )
                .map_err(StoreError::backend)?;
            if changed == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
        .await
    }

    async fn list(
        &self,
        user: &UserId,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let user = user.clone();
        // Ids start with a digit, so "~" sorts after every one of them.
        let before = cursor.map_or_else(|| "~".to_owned(), |c| c.id().as_str().to_owned());
        let limit = audit::page_limit(limit);
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, at, action, service, result, request_id, key_id FROM audit_events \
                     WHERE user_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )
                .map_err(StoreError::backend)?;
            let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let mut rows = stmt
                .query(params![user.as_str(), before, fetch])
                .map_err(StoreError::backend)?;
            let mut events = Vec::with_capacity(limit + 1);
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                events.push(audit_from_row(&user, row)?);
            }
            Ok(audit::into_page(events, limit))
        })
        .await
    }
}
