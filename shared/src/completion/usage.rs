//! Usage of every completion request: tokens, provider, model, path and
//! timings, handed to a [`UsageSink`]. The sink is awaited before a response
//! (or stream) ends, so on Lambda the write completes inside the invocation.

use crate::domain::{Service, UserId};
use crate::resolve::ResolutionPath;
use async_trait::async_trait;
use std::time::Duration;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered in full.
    Completed,
    /// The upstream failed (before or after the first byte); the code is the
    /// one the client saw.
    Failed(&'static str),
    /// The client went away before the end; the upstream call was cancelled.
    Cancelled,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed(code) => code,
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One upstream attempt of one request. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub user: UserId,
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
    /// From receiving the request to the upstream's first body byte.
    pub time_to_first_byte: Option<Duration>,
    /// From receiving the request to the end of the response.
    pub duration: Duration,
}

/// Where usage records go. Implementations must not fail the request: they
/// log their own errors.
#[async_trait]
pub trait UsageSink: Send + Sync {
    async fn record(&self, record: UsageRecord);
}

/// Writes each record as one structured log event (target `byok::usage`),
/// which CloudWatch (on Lambda) or the terminal (byok-local) keeps.
#[derive(Debug, Default)]
pub struct LogUsageSink;

#[async_trait]
impl UsageSink for LogUsageSink {
    async fn record(&self, r: UsageRecord) {
        tracing::info!(
            target: "byok::usage",
            user = %r.user,
            provider = r.provider.as_str(),
            path = r.path.as_str(),
            model = r.model.as_str(),
            fallback = r.fallback,
            stream = r.stream,
            outcome = r.outcome.as_str(),
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            ttfb_ms = r.time_to_first_byte.map(|d| d.as_secs_f64() * 1e3),
            duration_ms = r.duration.as_secs_f64() * 1e3,
            "usage"
        );
    }
}
