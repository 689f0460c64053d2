//! Events operators subscribe to: key health (`key.invalid`,
//! `key.rotation_due`, `key.rotated`, `key.rotation_failed`) and budget
//! alerts (`budget.threshold`).
//!
//! Rotation, the sweep and the budgets hand events to an [`EventSink`]: on
//! AWS, [`EventBridgeSink`] puts them on the stack's event bus (source
//! [`EVENT_SOURCE`], detail type the event name, detail the event's JSON);
//! locally [`JsonLinesSink`] appends them to a file, and [`LogSink`] writes
//! them to the log. A key event names the user, the service and the masked
//! key, never the key. Publishing never fails the work that produced the
//! event: a sink that cannot deliver logs the loss. [`WebhookSink`] also
//! POSTs budget alerts to the operator's URL, signed (see its doc).

use crate::domain::{KeyId, Service, Timestamp, UserId};
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
    /// No completion used the key for the configured time.
    Stale,
}

impl KeyEventKind {
    /// The event name (EventBridge detail type).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "key.invalid",
            Self::RotationDue => "key.rotation_due",
            Self::Rotated => "key.rotated",
            Self::RotationFailed => "key.rotation_failed",
            Self::Stale => "key.stale",
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
    /// Which of the user's keys of the service.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_key_id")]
    pub key_id: Option<KeyId>,
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

fn opt_key_id<S: serde::Serializer>(id: &Option<KeyId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(id.as_str()),
        None => s.serialize_none(),
    }
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
    /// A `kind` event about `record` (its user, service, id and masked key)
    /// at `at`, with no reason and no key date; set those where they apply.
    pub fn about(kind: KeyEventKind, record: &crate::domain::KeyRecord, at: Timestamp) -> Self {
        Self {
            kind,
            user: record.user.clone(),
            service: record.service,
            key_id: Some(record.id.clone()),
            masked_key: record.masked_key.clone(),
            at,
            reason: None,
            keyed_at: None,
        }
    }

    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The name of a budget alert (EventBridge detail type, `event` field).
pub const BUDGET_THRESHOLD: &str = "budget.threshold";

/// A budget's usage crossed one of its alert thresholds: raised once per
/// budget, period and threshold. Amounts are in the budget's unit (`type`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetEvent {
    /// Always [`BUDGET_THRESHOLD`].
    pub event: &'static str,
    /// The budget's type: `tokens` or `usd`.
    #[serde(rename = "type")]
    pub unit: &'static str,
    /// `user` or `tenant`.
    pub scope: &'static str,
    pub id: String,
    /// `daily`, `weekly`, `monthly` or `total`.
    pub period: &'static str,
    /// The period's first day (UTC, `YYYY-MM-DD`); `null` for `total`.
    pub period_start: Option<String>,
    /// Percent of the limit.
    pub threshold: u8,
    pub used: serde_json::Number,
    pub limit: serde_json::Number,
    #[serde(serialize_with = "instant")]
    pub at: Timestamp,
}

/// Any event.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Key(KeyEvent),
    Budget(BudgetEvent),
}

impl Event {
    /// The event name (EventBridge detail type).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Key(e) => e.kind.as_str(),
            Self::Budget(_) => BUDGET_THRESHOLD,
        }
    }

    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        match self {
            Self::Key(e) => e.to_json(),
            Self::Budget(e) => serde_json::to_string(e).unwrap_or_default(),
        }
    }
}

impl From<KeyEvent> for Event {
    fn from(e: KeyEvent) -> Self {
        Self::Key(e)
    }
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers `events`; failures are logged, never returned.
    async fn publish(&self, events: &[Event]);
}

/// Writes events to the log only.
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait]
impl EventSink for LogSink {
    async fn publish(&self, events: &[Event]) {
        for event in events {
            tracing::info!(event = event.name(), detail = %event.to_json(), "event");
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

    fn append(&self, events: &[Event]) -> std::io::Result<()> {
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
    async fn publish(&self, events: &[Event]) {
        LogSink.publish(events).await;
        if events.is_empty() {
            return;
        }
        if let Err(err) = self.append(events) {
            tracing::warn!(path = %self.path.display(), error = %err, "events not written");
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
    async fn publish(&self, events: &[Event]) {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        LogSink.publish(events).await;
        for batch in events.chunks(PUT_EVENTS_BATCH) {
            let entries = batch.iter().map(|event| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(EVENT_SOURCE)
                    .detail_type(event.name())
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
                    "some events were not accepted by EventBridge"
                ),
                Err(err) => tracing::warn!(
                    error = %aws_sdk_eventbridge::error::DisplayErrorContext(&err),
                    "events not delivered to EventBridge"
                ),
            }
        }
    }
}

/// RFC 3339 text of `t` (for reports).
pub fn rfc3339(t: Timestamp) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Budget alerts also POSTed to the operator's webhook
/// (`BYOK_ALERT_WEBHOOK_URL`): the body is the event's JSON, signed in
/// `x-byok-signature: t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`
/// with `BYOK_ALERT_WEBHOOK_SECRET` (receivers recompute it and refuse old
/// `t`s). Each delivery runs as a task of its own, retried with backoff on
/// a failed connection, a 429 or a 5xx, so it never holds up a completion.
/// Every event still goes to the wrapped sink first.
pub struct WebhookSink {
    inner: std::sync::Arc<dyn EventSink>,
    url: String,
    secret: Option<WebhookSecret>,
    client: reqwest::Client,
}

/// The webhook's signing secret; never printed.
pub struct WebhookSecret(secrecy::SecretString);

impl WebhookSecret {
    pub fn new(secret: String) -> Self {
        Self(secret.into())
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// Delivery attempts of one alert, and the wait before the second.
const WEBHOOK_ATTEMPTS: u32 = 4;
const WEBHOOK_FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(250);
const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl WebhookSink {
    pub fn new(
        inner: std::sync::Arc<dyn EventSink>,
        url: String,
        secret: Option<WebhookSecret>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            inner,
            url,
            secret,
            client,
        })
    }

    /// `x-byok-signature` of `body` at Unix second `t`.
    pub fn signature(secret: &str, t: i64, body: &str) -> String {
        use hmac::Mac as _;
        let Ok(mut mac) =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
        else {
            return String::new();
        };
        mac.update(format!("{t}.{body}").as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("t={t},v1={hex}")
    }

    fn deliver(&self, event: &Event) {
        let body = event.to_json();
        let t = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.secret.as_ref().map(|secret| {
            Self::signature(secrecy::ExposeSecret::expose_secret(&secret.0), t, &body)
        });
        let (client, url, name) = (self.client.clone(), self.url.clone(), event.name());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(event = name, "alert webhook not called: no runtime");
            return;
        };
        runtime.spawn(async move {
            let mut wait = WEBHOOK_FIRST_RETRY;
            for attempt in 1..=WEBHOOK_ATTEMPTS {
                let mut request = client
                    .post(&url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(signature) = &signature {
                    request = request.header("x-byok-signature", signature);
                }
                let retry = match request.send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        let status = r.status();
                        tracing::warn!(event = name, attempt, status = status.as_u16(), "alert webhook refused the event");
                        status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS
                    }
                    Err(err) => {
                        tracing::warn!(event = name, attempt, error = %err, "alert webhook not reached");
                        true
                    }
                };
                if !retry || attempt == WEBHOOK_ATTEMPTS {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            tracing::error!(event = name, "alert webhook delivery given up");
        });
    }
}

#[async_trait]
impl EventSink for WebhookSink {
    async fn publish(&self, events: &[Event]) {
        self.inner.publish(events).await;
        for event in events.iter().filter(|e| matches!(e, Event::Budget(_))) {
            self.deliver(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn budget_event() -> Event {
        Event::Budget(BudgetEvent {
            event: BUDGET_THRESHOLD,
            unit: "tokens",
            scope: "user",
            id: "alice".into(),
            period: "daily",
            period_start: Some("2026-12-02".into()),
            threshold: 80,
            used: 800.into(),
            limit: 1000.into(),
            at: crate::domain::now(),
        })
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // Computed independently (Python's hmac module).
        assert_eq!(
            WebhookSink::signature("Jefe", 1_700_000_000, "what do ya want for nothing?"),
            "t=1700000000,v1=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
    }

    /// A receiver that refuses the first `failures` deliveries with `refusal`.
    async fn receiver(
        failures: usize,
        refusal: http::StatusCode,
    ) -> (
        String,
        Arc<AtomicUsize>,
        Arc<std::sync::Mutex<Vec<(String, String)>>>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let (c, s) = (c.clone(), s.clone());
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let signature = headers
                        .get("x-byok-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if let Ok(mut seen) = s.lock() {
                        seen.push((signature, body));
                    }
                    if n < failures {
                        refusal
                    } else {
                        http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, calls, seen)
    }

    #[tokio::test]
    async fn alerts_are_retried_until_delivered_and_signed() {
        let (url, calls, seen) = receiver(2, http::StatusCode::SERVICE_UNAVAILABLE).await;
        let sink = WebhookSink::new(
            Arc::new(LogSink),
            url,
            Some(WebhookSecret::new("whsec-test".into())),
        )
        .unwrap();
        let key_event = Event::Key(KeyEvent {
            kind: KeyEventKind::Rotated,
            user: UserId::new("alice").unwrap(),
            service: Service::OpenAi,
            key_id: None,
            masked_key: "sk-…0001".into(),
            at: crate::domain::now(),
            reason: None,
            keyed_at: None,
        });
        sink.publish(&[key_event, budget_event()]).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two 503s, then delivered, then no more"
        );
        let seen = seen.lock().unwrap().clone();
        for (signature, body) in &seen {
            let t: i64 = signature
                .strip_prefix("t=")
                .and_then(|rest| rest.split(',').next())
                .and_then(|t| t.parse().ok())
                .unwrap();
            assert_eq!(signature, &WebhookSink::signature("whsec-test", t, body));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                json["event"], "budget.threshold",
                "only budget alerts: {body}"
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        // A 4xx other than 429: the receiver will not take it; no retry.
        let (url, calls, seen) = receiver(usize::MAX, http::StatusCode::BAD_REQUEST).await;
        let sink = WebhookSink::new(Arc::new(LogSink), url, None).unwrap();
        sink.publish(&[budget_event()]).await;
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "", "no secret, no signature header");
    }
}
