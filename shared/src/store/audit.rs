//! The audit log (SPEC §8): every key change and validation is an event
//! saying who did what to which service, when, and with what result. Never
//! the secret: an event has no field that could hold a key or part of one
//! (`result` is a short status code such as `valid`).
//!
//! This module holds the event types, the event id and the page cursor both
//! backends share; [`super::embedded`] and [`super::dynamo`] implement
//! [`AuditStore`].
//!
//! # Ids and cursors
//! An [`AuditId`] is `{unix millis, 13 digits}-{16 random hex digits}`:
//! fixed width, so ids sort as text in time order, and unique (two events in
//! the same millisecond get different random parts and still a total,
//! stable order). Listing is newest first; an [`AuditCursor`] names the last
//! id of a page and travels as unpadded URL-safe base64 of that id. Parsing
//! one ([`AuditCursor::parse`]) is where a malformed cursor is refused, before
//! any store is asked, so callers map [`BadCursor`] to a 400 and the stores
//! only ever see well-formed positions.

use super::StoreError;
use crate::domain::{KeyId, Service, Timestamp, UserId};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt;

/// Most events one [`AuditStore::list`] call returns; larger limits are capped.
pub const MAX_PAGE: usize = 100;

/// What happened to a user's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Added,
    Replaced,
    Updated,
    Enabled,
    Disabled,
    Deleted,
    Validated,
    Rotated,
    /// An admin set a budget's terms (the budget in `result`).
    BudgetSet,
    /// An admin deleted a budget (the budget in `result`).
    BudgetDeleted,
    /// The user made a personal API key (`token:{id}` in `result`).
    TokenCreated,
    /// The user revoked a personal API key (`token:{id}` in `result`).
    TokenRevoked,
    /// The user changed their consent to team fallback
    /// (`allowGatewayFallback=true` or `=false` in `result`).
    ConsentChanged,
}

impl AuditAction {
    pub const ALL: [Self; 13] = [
        Self::Added,
        Self::Replaced,
        Self::Updated,
        Self::Enabled,
        Self::Disabled,
        Self::Deleted,
        Self::Validated,
        Self::Rotated,
        Self::BudgetSet,
        Self::BudgetDeleted,
        Self::TokenCreated,
        Self::TokenRevoked,
        Self::ConsentChanged,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Replaced => "replaced",
            Self::Updated => "updated",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Deleted => "deleted",
            Self::Validated => "validated",
            Self::Rotated => "rotated",
            Self::BudgetSet => "budget_set",
            Self::BudgetDeleted => "budget_deleted",
            Self::TokenCreated => "token_created",
            Self::TokenRevoked => "token_revoked",
            Self::ConsentChanged => "consent_changed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unique, time-ordered event id (format in the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditId(String);

/// Digits of the millisecond part (enough until the year 2286).
const MILLIS_DIGITS: usize = 13;
/// Hex digits of the random part.
const RANDOM_DIGITS: usize = 16;
const ID_LEN: usize = MILLIS_DIGITS + 1 + RANDOM_DIGITS;

impl AuditId {
    /// A new id for an event at `at` (clamped to 1970..2286).
    pub fn generate(at: Timestamp) -> std::io::Result<Self> {
        let millis = at
            .unix_timestamp_nanos()
            .div_euclid(1_000_000)
            .clamp(0, 9_999_999_999_999);
        let random = crate::crypto::random_hex::<{ RANDOM_DIGITS / 2 }>()?;
        Ok(Self(format!("{millis:013}-{random}")))
    }

    /// An id in the stored format, or `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let ok = bytes.len() == ID_LEN
            && bytes[..MILLIS_DIGITS].iter().all(u8::is_ascii_digit)
            && bytes[MILLIS_DIGITS] == b'-'
            && bytes[MILLIS_DIGITS + 1..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One audit log entry. Deliberately without any field for key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditId,
    /// Whose key it was (the verified caller).
    pub user: UserId,
    /// When, to the millisecond.
    pub at: Timestamp,
    pub action: AuditAction,
    /// The key's service; `None` for events about no key (budgets).
    pub service: Option<Service>,
    /// Which of the service's keys; `None` for events about no single key
    /// (and for events recorded before keys had ids).
    pub key_id: Option<KeyId>,
    /// A short status code (e.g. a validation result: `valid`, `invalid`),
    /// never free text from a provider and never key material.
    pub result: Option<String>,
    /// The request that caused it, for correlation with logs.
    pub request_id: String,
}

impl AuditEvent {
    /// An event happening now, with a fresh id.
    pub fn new(
        user: UserId,
        action: AuditAction,
        service: Option<Service>,
        result: Option<String>,
        request_id: impl Into<String>,
    ) -> std::io::Result<Self> {
        let at = crate::domain::now();
        Ok(Self {
            id: AuditId::generate(at)?,
            user,
            at,
            action,
            service,
            key_id: None,
            result,
            request_id: request_id.into(),
        })
    }
}

/// One page of a user's events, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<AuditCursor>,
}

/// A position in a user's log: the next page holds events older than it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCursor(AuditId);

/// A cursor that is not one this gateway handed out (a client error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed pagination cursor")]
pub struct BadCursor;

impl AuditCursor {
    /// The cursor after the event `id`.
    pub fn after(id: &AuditId) -> Self {
        Self(id.clone())
    }

    /// Reads a cursor in its wire form (see [`fmt::Display`]).
    pub fn parse(text: &str) -> Result<Self, BadCursor> {
        if text.len() > 64 {
            return Err(BadCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| BadCursor)?;
        let id = std::str::from_utf8(&bytes).map_err(|_| BadCursor)?;
        AuditId::parse(id).map(Self).ok_or(BadCursor)
    }

    /// The id the next page starts after (exclusive).
    pub fn id(&self) -> &AuditId {
        &self.0
    }
}

impl std::str::FromStr for AuditCursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, BadCursor> {
        Self::parse(s)
    }
}

/// The wire form: unpadded URL-safe base64 of the id (opaque to clients).
impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0.as_str()))
    }
}

/// The audit log of every user.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one event. Appending an id that already exists for the user
    /// is [`StoreError::Conflict`] and changes nothing.
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// The user's events newest first, at most `limit` (capped at
    /// [`MAX_PAGE`], at least 1), starting after `cursor` (from the previous
    /// page's `next_cursor`).
    async fn list(
        &self,
        user: &UserId,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError>;
}

/// `limit` within 1..=[`MAX_PAGE`].
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

/// Splits `fetched` (newest first, up to `limit + 1` events) into a page:
/// an event beyond `limit` only proves there is a next page.
pub(crate) fn into_page(mut fetched: Vec<AuditEvent>, limit: usize) -> AuditPage {
    let more = fetched.len() > limit;
    fetched.truncate(limit);
    let next_cursor = if more {
        fetched.last().map(|e| AuditCursor::after(&e.id))
    } else {
        None
    };
    AuditPage {
        events: fetched,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn ids_sort_by_time_and_parse_back() {
        let t1 = Timestamp::parse("2025-01-02T03:04:05.678Z", &Rfc3339).unwrap();
        let a = AuditId::generate(t1).unwrap();
        let b = AuditId::generate(t1 + time::Duration::milliseconds(1)).unwrap();
        assert!(a < b);
        assert!(a.as_str().starts_with("1735787045678-"), "{a}");
        assert_eq!(AuditId::parse(a.as_str()), Some(a.clone()));
        for bad in ["", "1735787045678", "1735787045678-0123456789abcdeF", "x"] {
            assert_eq!(AuditId::parse(bad), None, "{bad}");
        }
        let early = AuditId::generate(Timestamp::UNIX_EPOCH - time::Duration::days(1)).unwrap();
        assert!(early.as_str().starts_with("0000000000000-"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let id = AuditId::generate(crate::domain::now()).unwrap();
        let cursor = AuditCursor::after(&id);
        let wire = cursor.to_string();
        assert!(!wire.contains(id.as_str()));
        assert_eq!(AuditCursor::parse(&wire), Ok(cursor));
        let not_an_id = URL_SAFE_NO_PAD.encode("USER#someone");
        for bad in ["", "!!!", "not base64?", &not_an_id, &"A".repeat(200)] {
            assert_eq!(AuditCursor::parse(bad), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn action_names() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::Validated.as_str(), "validated");
    }
}
