//! Usage of every completion attempt: tokens, provider, model, path, who
//! paid and timings, handed to a [`UsageSink`] (the ledger, in production).
//! The sink is awaited before a response (or stream) ends, so on Lambda the
//! write completes inside the invocation and never before the first byte.
//! An attempt whose answer was cut short without a usage event is recorded
//! with estimated tokens ([`super::estimate`]), never at zero.

use super::estimate::StreamedText;
use crate::budget::HoldRef;
use crate::domain::{Service, UserId};
use crate::providers::Usage;
use crate::resolve::ResolutionPath;
use crate::store::TenantId;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered in full.
    Completed,
    /// The upstream failed (before or after the first byte); the code is the
    /// one the client saw.
    Failed(&'static str),
    /// The client went away before the end; the upstream call was cancelled.
    Cancelled,
    /// A request limit refused it before any upstream call.
    Limited,
    /// A budget refused it before any upstream call.
    OverBudget,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed(code) => code,
            Outcome::Cancelled => "cancelled",
            Outcome::Limited => "limited",
            Outcome::OverBudget => "budget_exceeded",
        }
    }
}

/// Who made a request, as the ledger attributes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub user: UserId,
    /// The caller's tenant, when `BYOK_TENANT_CLAIM` names one.
    pub tenant: Option<TenantId>,
    /// The request's id (`x-request-id`).
    pub request_id: String,
}

impl RequestContext {
    /// A caller with no tenant and a fresh request id.
    pub fn user(user: UserId) -> Self {
        Self {
            user,
            tenant: None,
            request_id: crate::crypto::random_hex::<16>().unwrap_or_default(),
        }
    }
}

/// One upstream attempt of one request. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub user: UserId,
    pub tenant: Option<TenantId>,
    pub request_id: String,
    /// 0 for the requested model, then 1, 2, … along the fallback chain.
    pub attempt: u32,
    pub provider: Service,
    pub path: ResolutionPath,
    /// Canonical `provider/model` that served (or was tried).
    pub model: String,
    /// True when this model came from the operator's fallback chain.
    pub fallback: bool,
    pub stream: bool,
    pub outcome: Outcome,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// The token counts are estimates: the upstream reported none.
    pub estimated: bool,
    /// From receiving the request to the upstream's first body byte.
    pub time_to_first_byte: Option<Duration>,
    /// From receiving the request to the end of the response.
    pub duration: Duration,
    /// Budget reservations this attempt settles when it is recorded.
    pub budget_holds: Vec<HoldRef>,
}

/// Where usage records go. Implementations must not fail the request: they
/// log their own errors.
#[async_trait]
pub trait UsageSink: Send + Sync {
    /// Records the attempt and settles its budget holds.
    async fn record(&self, record: UsageRecord);

    /// Gives back the holds of an attempt that asked nothing of the upstream.
    async fn release(&self, holds: Vec<HoldRef>) {
        let _ = holds;
    }

    /// Returns once every record handed over so far is stored.
    async fn flush(&self) {}
}

/// Writes each record as one structured log event (target `byok::usage`),
/// which CloudWatch (on Lambda) or the terminal (byok-local) keeps.
#[derive(Debug, Default)]
pub struct LogUsageSink;

#[async_trait]
impl UsageSink for LogUsageSink {
    async fn record(&self, r: UsageRecord) {
        log_record(&r);
    }
}

/// The `byok::usage` log event of one record.
pub fn log_record(r: &UsageRecord) {
    tracing::info!(
        target: "byok::usage",
        user = %r.user,
        tenant = r.tenant.as_ref().map(TenantId::as_str),
        request_id = r.request_id.as_str(),
        attempt = r.attempt,
        provider = r.provider.as_str(),
        path = r.path.as_str(),
        model = r.model.as_str(),
        fallback = r.fallback,
        stream = r.stream,
        outcome = r.outcome.as_str(),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        estimated = r.estimated,
        ttfb_ms = r.time_to_first_byte.map(|d| d.as_secs_f64() * 1e3),
        duration_ms = r.duration.as_secs_f64() * 1e3,
        "usage"
    );
}

/// Usage writes that run as tasks of their own (a client went away, so
/// nothing awaits them), counted so a shutdown can wait for them.
#[derive(Clone, Default)]
pub(crate) struct PendingWrites(Arc<PendingInner>);

#[derive(Default)]
struct PendingInner {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl PendingWrites {
    /// Runs `write` as a task, counted until it ends. Without a runtime
    /// (a process shutting down) the record still reaches the log.
    pub(crate) fn spawn(
        &self,
        write: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        use std::sync::atomic::Ordering;
        self.0.count.fetch_add(1, Ordering::SeqCst);
        let pending = self.clone();
        Some(runtime.spawn(async move {
            write.await;
            if pending.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                pending.0.idle.notify_waiters();
            }
        }))
    }

    /// Waits until no write is running, at most `limit`; true if none is.
    pub(crate) async fn settle(&self, limit: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let wait = async {
            loop {
                let idle = self.0.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.0.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Follows one attempt and hands its record to the sink when it ends. A
/// meter dropped unfinished (the client went away) records a cancellation.
pub(crate) struct UsageMeter {
    sink: Arc<dyn UsageSink>,
    pending: PendingWrites,
    pub(crate) started: Instant,
    pub(crate) first_byte: Option<Duration>,
    /// The request's estimated prompt tokens, for answers without usage.
    prompt_estimate: u64,
    record: Option<UsageRecord>,
}

impl UsageMeter {
    pub(crate) fn new(
        sink: Arc<dyn UsageSink>,
        pending: PendingWrites,
        started: Instant,
        prompt_estimate: u64,
        record: UsageRecord,
    ) -> Self {
        Self {
            sink,
            pending,
            started,
            first_byte: None,
            prompt_estimate,
            record: Some(record),
        }
    }

    /// Records the attempt's end. `usage` is what the upstream reported;
    /// without it, an attempt that got an answer is estimated from `streamed`
    /// (the text sent on) and `known_prompt` (a prompt count the upstream gave
    /// before it stopped).
    ///
    /// The write runs as a counted task of its own, awaited here: a caller
    /// dropped meanwhile (a client that closes on `[DONE]` drops the body
    /// stream awaiting this) never cancels it half-written, and a body that
    /// waits for it ends only once it is written (a Lambda is not frozen
    /// with the write in flight).
    pub(crate) async fn finish(
        self,
        outcome: Outcome,
        usage: Option<Usage>,
        streamed: &StreamedText,
        known_prompt: Option<u64>,
    ) {
        if let Some(write) = self.finish_spawned(outcome, usage, *streamed, known_prompt) {
            let _ = write.await;
        }
    }

    fn take_record(
        &mut self,
        outcome: Outcome,
        usage: Option<Usage>,
        streamed: &StreamedText,
        known_prompt: Option<u64>,
    ) -> Option<UsageRecord> {
        let mut record = self.record.take()?;
        record.outcome = outcome;
        match usage {
            Some(u) => {
                record.prompt_tokens = Some(u.prompt_tokens);
                record.completion_tokens = Some(u.completion_tokens);
            }
            None if self.first_byte.is_some() => {
                record.prompt_tokens = Some(known_prompt.unwrap_or(self.prompt_estimate));
                record.completion_tokens = Some(streamed.tokens());
                record.estimated = true;
            }
            None => {}
        }
        record.time_to_first_byte = self.first_byte;
        record.duration = self.started.elapsed();
        Some(record)
    }

    /// Budget reservations to settle with this attempt.
    pub(crate) fn hold(&mut self, holds: Vec<HoldRef>) {
        if let Some(record) = self.record.as_mut() {
            record.budget_holds = holds;
        }
    }

    /// Drops the attempt without a record: nothing was asked of the upstream
    /// (the request failed on our side first). Its budget holds are given back.
    pub(crate) fn abandon(mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        if !record.budget_holds.is_empty() {
            let sink = self.sink.clone();
            self.pending
                .spawn(async move { sink.release(record.budget_holds).await });
        }
    }

    /// Writes `record` from a task of its own (counted in `pending`);
    /// outside a runtime (a process shutting down) it reaches the log alone.
    fn spawn_record(&self, record: UsageRecord) -> Option<tokio::task::JoinHandle<()>> {
        if tokio::runtime::Handle::try_current().is_err() {
            log_record(&record);
            return None;
        }
        let sink = self.sink.clone();
        self.pending.spawn(async move { sink.record(record).await })
    }

    /// Finishes the attempt in a counted task of its own, for callers that
    /// cannot await it here (a destructor) or want to send first; the handle
    /// ends when the record is written.
    pub(crate) fn finish_spawned(
        mut self,
        outcome: Outcome,
        usage: Option<Usage>,
        streamed: StreamedText,
        known_prompt: Option<u64>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let record = self.take_record(outcome, usage, &streamed, known_prompt)?;
        self.spawn_record(record)
    }
}

impl Drop for UsageMeter {
    /// The attempt was abandoned before its answer (the client went away
    /// while the upstream was still being asked): record the cancellation.
    fn drop(&mut self) {
        if self.record.is_some() {
            let streamed = StreamedText::default();
            if let Some(record) = self.take_record(Outcome::Cancelled, None, &streamed, None) {
                let _ = self.spawn_record(record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger whose write takes a while, like a DynamoDB round trip.
    struct SlowSink(Arc<std::sync::Mutex<Vec<UsageRecord>>>);

    #[async_trait]
    impl UsageSink for SlowSink {
        async fn record(&self, record: UsageRecord) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record);
        }
    }

    fn record() -> UsageRecord {
        UsageRecord {
            user: UserId::new("ulla").unwrap_or_else(|| unreachable!()),
            tenant: None,
            request_id: "r1".into(),
            attempt: 0,
            provider: Service::OpenAi,
            path: ResolutionPath::UserProvider,
            model: "openai/gpt-4o-mini".into(),
            fallback: false,
            stream: true,
            outcome: Outcome::Completed,
            prompt_tokens: None,
            completion_tokens: None,
            estimated: false,
            time_to_first_byte: None,
            duration: Duration::ZERO,
            budget_holds: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_finish_dropped_half_way_still_writes_its_record() {
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let pending = PendingWrites::default();
        let meter = UsageMeter::new(
            Arc::new(SlowSink(written.clone())),
            pending.clone(),
            Instant::now(),
            3,
            record(),
        );
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 4,
        };
        // The caller (a client's body stream) goes away mid-write.
        let streamed = StreamedText::default();
        let finish = meter.finish(Outcome::Completed, Some(usage), &streamed, None);
        let cut = tokio::time::timeout(Duration::from_millis(5), finish).await;
        assert!(cut.is_err(), "the write was still running");
        assert!(pending.settle(Duration::from_secs(5)).await);
        let written = written.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(written.len(), 1, "written once, whole");
        assert_eq!(written[0].prompt_tokens, Some(2));
        assert_eq!(written[0].outcome, Outcome::Completed);
    }

    #[tokio::test]
    async fn settle_waits_for_running_writes() {
        let pending = PendingWrites::default();
        assert!(
            pending.settle(Duration::from_millis(10)).await,
            "nothing running"
        );
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        pending.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(
            !pending.settle(Duration::from_millis(5)).await,
            "still running"
        );
        assert!(pending.settle(Duration::from_secs(5)).await);
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }
}
