//! Key-health events operators subscribe to: `key.invalid`,
//! `key.rotation_due`, `key.rotated` and `key.rotation_failed`.
//!
//! Rotation and the sweep hand events to an [`EventSink`]: on AWS,
//! [`EventBridgeSink`] puts them on the stack's event bus (source
//! [`EVENT_SOURCE`], detail type the event name, detail the JSON of
//! [`KeyEvent`]); locally [`JsonLinesSink`] appends them to a file, and
//! [`LogSink`] writes them to the log. An event names the user, the service
//! and the masked key, never the key. Publishing never fails the work that
//! produced the event: a sink that cannot deliver logs the loss.

use crate::domain::{Service, Timestamp, UserId};
use async_trait::async_trait;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;

/// The EventBridge `Source` of every event.
pub const EVENT_SOURCE: &str = "byok.keys";
/// Most entries one `PutEvents` call takes.
const PUT_EVENTS_BATCH: usize = 10;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyEventKind {
    /// The provider refused the stored key.
    Invalid,
    /// The key is older than the rotation age.
    RotationDue,
    /// A staged key was tested and promoted.
    Rotated,
    /// A rotation ended without promoting its key.
    RotationFailed,
}

impl KeyEventKind {
    /// The event name (EventBridge detail type).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "key.invalid",
            Self::RotationDue => "key.rotation_due",
            Self::Rotated => "key.rotated",
            Self::RotationFailed => "key.rotation_failed",
        }
    }
}

/// One event; serialised as the EventBridge detail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyEvent {
    #[serde(rename = "type", serialize_with = "kind_name")]
    pub kind: KeyEventKind,
    #[serde(serialize_with = "user_text")]
    pub user: UserId,
    #[serde(serialize_with = "service_name")]
    pub service: Service,
    pub masked_key: String,
    #[serde(serialize_with = "instant")]
    pub at: Timestamp,
    /// Why, for `key.invalid` and `key.rotation_failed` (a short code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For `key.rotation_due`: when the key in use was set.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_instant"
    )]
    pub keyed_at: Option<Timestamp>,
}

fn kind_name<S: serde::Serializer>(kind: &KeyEventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

fn instant<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn opt_instant<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => instant(t, s),
        None => s.serialize_none(),
    }
}

fn user_text<S: serde::Serializer>(user: &UserId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(user.as_str())
}

fn service_name<S: serde::Serializer>(service: &Service, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(service.as_str())
}

impl KeyEvent {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers `events`; failures are logged, never returned.
    async fn publish(&self, events: &[KeyEvent]);
}

/// Writes events to the log only.
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait]
impl EventSink for LogSink {
    async fn publish(&self, events: &[KeyEvent]) {
        for event in events {
            tracing::info!(event = event.kind.as_str(), detail = %event.to_json(), "key event");
        }
    }
}

/// Appends events as JSON lines to a file (and to the log).
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    lock: Mutex<()>,
}

impl JsonLinesSink {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    fn append(&self, events: &[KeyEvent]) -> std::io::Result<()> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| std::io::Error::other("lock poisoned"))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut text = String::new();
        for event in events {
            text.push_str(&event.to_json());
            text.push('\n');
        }
        file.write_all(text.as_bytes())
    }
}

#[async_trait]
impl EventSink for JsonLinesSink {
    async fn publish(&self, events: &[KeyEvent]) {
        LogSink.publish(events).await;
        if events.is_empty() {
            return;
        }
        if let Err(err) = self.append(events) {
            tracing::warn!(path = %self.path.display(), error = %err, "key events not written");
        }
    }
}

/// Puts events on an EventBridge bus.
#[derive(Clone, Debug)]
pub struct EventBridgeSink {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeSink {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventSink for EventBridgeSink {
    async fn publish(&self, events: &[KeyEvent]) {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        LogSink.publish(events).await;
        for batch in events.chunks(PUT_EVENTS_BATCH) {
            let entries = batch.iter().map(|event| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(EVENT_SOURCE)
                    .detail_type(event.kind.as_str())
                    .detail(event.to_json())
                    .build()
            });
            match self
                .client
                .put_events()
                .set_entries(Some(entries.collect()))
                .send()
                .await
            {
                Ok(out) if out.failed_entry_count() == 0 => {}
                Ok(out) => tracing::warn!(
                    failed = out.failed_entry_count(),
                    "some key events were not accepted by EventBridge"
                ),
                Err(err) => tracing::warn!(
                    error = %aws_sdk_eventbridge::error::DisplayErrorContext(&err),
                    "key events not delivered to EventBridge"
                ),
            }
        }
    }
}

/// RFC 3339 text of `t` (for reports).
pub fn rfc3339(t: Timestamp) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
