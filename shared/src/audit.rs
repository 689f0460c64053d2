//! The audit log as the services use it: recording an event never fails
//! the operation that caused it (a failed write is logged, not surfaced),
//! and reading a page checks the client's cursor and limit before the store
//! is asked. No HTTP types here.

use crate::domain::{KeyId, Service, UserId};
use crate::store::{AuditAction, AuditCursor, AuditEvent, AuditPage, AuditStore, StoreError};
use std::sync::Arc;

/// Events per page when the client gives no limit.
pub const DEFAULT_PAGE: usize = 20;

/// Why a page of the log could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cursor is not one this gateway handed out")]
    BadCursor,
    #[error("limit must be a whole number from 1 to {max}", max = crate::store::audit::MAX_PAGE)]
    BadLimit,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Appends to and reads the per-user audit log.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }

    /// Records `action` on `service` for `user`. Never fails: a failed write
    /// is logged (without any key material: events have none).
    pub async fn record(
        &self,
        user: &UserId,
        action: AuditAction,
        service: Service,
        result: Option<&str>,
        request_id: &str,
    ) {
        self.append(user, action, Some(service), None, result, request_id)
            .await;
    }

    /// Records `action` on one key (`id`) of `service` for `user`.
    pub async fn record_key(
        &self,
        user: &UserId,
        action: AuditAction,
        service: Service,
        id: &KeyId,
        result: Option<&str>,
        request_id: &str,
    ) {
        self.append(user, action, Some(service), Some(id), result, request_id)
            .await;
    }

    /// Records a budget change by `admin`; `budget` names the budget
    /// (`user:{id}` or `tenant:{id}`) as the event's result.
    pub async fn record_budget(
        &self,
        admin: &UserId,
        action: AuditAction,
        budget: &str,
        request_id: &str,
    ) {
        self.append(admin, action, None, None, Some(budget), request_id)
            .await;
    }

    /// Records that `user` turned team fallback on or off.
    pub async fn record_consent(&self, user: &UserId, allowed: bool, request_id: &str) {
        let result = format!("allowGatewayFallback={allowed}");
        self.append(
            user,
            AuditAction::ConsentChanged,
            None,
            None,
            Some(&result),
            request_id,
        )
        .await;
    }

    /// Records `action` on `user`'s personal API key `id`.
    pub async fn record_token(
        &self,
        user: &UserId,
        action: AuditAction,
        id: &crate::domain::ApiTokenId,
        request_id: &str,
    ) {
        let result = format!("token:{id}");
        self.append(user, action, None, None, Some(&result), request_id)
            .await;
    }

    async fn append(
        &self,
        user: &UserId,
        action: AuditAction,
        service: Option<Service>,
        key_id: Option<&KeyId>,
        result: Option<&str>,
        request_id: &str,
    ) {
        let event = match AuditEvent::new(
            user.clone(),
            action,
            service,
            result.map(str::to_owned),
            request_id,
        ) {
            Ok(event) => AuditEvent {
                key_id: key_id.cloned(),
                ..event
            },
            Err(err) => {
                tracing::error!(%action, service = service.map(Service::as_str), error = %err, "audit event not created");
                return;
            }
        };
        if let Err(err) = self.store.append(&event).await {
            tracing::error!(%action, service = service.map(Service::as_str), error = %err, "audit event not written");
        }
    }

    /// A page of `user`'s events, newest first. `cursor` and `limit` are the
    /// client's raw values; `limit` defaults to [`DEFAULT_PAGE`].
    pub async fn list(
        &self,
        user: &UserId,
        cursor: Option<&str>,
        limit: Option<&str>,
    ) -> Result<AuditPage, AuditError> {
        let cursor = cursor
            .map(AuditCursor::parse)
            .transpose()
            .map_err(|_| AuditError::BadCursor)?;
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=crate::store::audit::MAX_PAGE).contains(n))
                .ok_or(AuditError::BadLimit)?,
        };
        Ok(self.store.list(user, cursor.as_ref(), limit).await?)
    }
}
