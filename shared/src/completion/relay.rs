//! The streamed answer: reads the upstream body chunk by chunk, turns it into
//! OpenAI SSE bytes (passed through untouched, or translated from
//! Anthropic), and ends with `data: [DONE]` either way. A failure after the
//! first byte becomes a final error event. Usage is recorded before the
//! stream ends; if the client goes away first, dropping the relay drops the
//! upstream response (cancelling the call) and records the cancellation.

use super::estimate::StreamedText;
use super::split_keys::SplitKeyGuard;
use super::usage::{Outcome, UsageMeter};
use crate::domain::Service;
use crate::providers::Usage;
use crate::providers::anthropic::{StreamTranslator, TranslateError};
use crate::providers::openai::PassThrough;
use crate::providers::sse::{EventSplitter, RawEvent};
use crate::upstream::{KeyScrubber, UpstreamError, UpstreamErrorKind, redact_known};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use std::time::Duration;

/// The upstream body, as reqwest hands it out.
pub(crate) type UpstreamBody = BoxStream<'static, Result<Bytes, reqwest::Error>>;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// How long to wait for the upstream to close after its last event, so its
/// connection goes back to the pool instead of being torn down.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// Turns upstream SSE bytes into the client's OpenAI SSE bytes.
pub(crate) struct Decoder {
    wire: Wire,
    /// Catches a key spelled out across the events produced.
    guard: SplitKeyGuard,
}

enum Wire {
    /// OpenAI-compatible upstreams: events forwarded as they came.
    PassThrough {
        split: EventSplitter,
        pass: PassThrough,
    },
    /// Anthropic Messages events translated to chat-completion chunks.
    Anthropic {
        split: EventSplitter,
        translator: Box<StreamTranslator>,
        done: bool,
    },
    /// Anthropic Messages events forwarded as they came (`/v1/messages`);
    /// the translator only follows them, for usage and the end.
    AnthropicRaw {
        split: EventSplitter,
        translator: Box<StreamTranslator>,
        done: bool,
    },
    /// Bedrock ConverseStream frames, bridged to Anthropic events and
    /// translated to chat-completion chunks.
    Bedrock {
        frames: crate::providers::bedrock::ConverseFrames,
        bridge: crate::providers::bedrock::ConverseStreamBridge,
        translator: Box<StreamTranslator>,
        done: bool,
        /// Bedrock frames need no SSE splitting; kept for the shared path.
        split: EventSplitter,
    },
}

/// What one upstream chunk produced.
pub(crate) struct Decoded {
    pub bytes: Bytes,
    /// The upstream's final event has passed.
    pub done: bool,
}

impl Decoder {
    pub(crate) fn pass_through(pass: PassThrough) -> Self {
        Self {
            wire: Wire::PassThrough {
                split: EventSplitter::new(),
                pass,
            },
            guard: SplitKeyGuard::default(),
        }
    }

    pub(crate) fn anthropic(translator: StreamTranslator) -> Self {
        Self {
            wire: Wire::Anthropic {
                split: EventSplitter::new(),
                translator: Box::new(translator),
                done: false,
            },
            guard: SplitKeyGuard::default(),
        }
    }

    /// Bedrock ConverseStream frames translated to chunks; `request_id`
    /// names the message (Converse streams carry no id).
    pub(crate) fn bedrock(translator: StreamTranslator, request_id: &str) -> Self {
        Self {
            wire: Wire::Bedrock {
                frames: crate::providers::bedrock::ConverseFrames::new(),
                bridge: crate::providers::bedrock::ConverseStreamBridge::new(request_id),
                translator: Box::new(translator),
                done: false,
                split: EventSplitter::new(),
            },
            guard: SplitKeyGuard::default(),
        }
    }

    /// Anthropic Messages events passed through untouched (`/v1/messages`).
    pub(crate) fn anthropic_raw(translator: StreamTranslator) -> Self {
        Self {
            wire: Wire::AnthropicRaw {
                split: EventSplitter::new(),
                translator: Box::new(translator),
                done: false,
            },
            guard: SplitKeyGuard::default(),
        }
    }

    /// The last event of a stream that failed after its first byte, in the
    /// stream's own format.
    pub(crate) fn error_event(&self, code: &str, message: &str) -> Bytes {
        match &self.wire {
            Wire::AnthropicRaw { .. } => anthropic_error_event(code, message),
            _ => error_event(code, message),
        }
    }

    /// Watches the produced text for the forms of `scrubber`'s keys split
    /// across events.
    pub(crate) fn guard_keys(&mut self, scrubber: &KeyScrubber) {
        self.guard = SplitKeyGuard::new(scrubber);
    }

    /// Events held back while their text might be the start of a key,
    /// when the stream fails before it could tell.
    pub(crate) fn release_held(&mut self) -> Bytes {
        self.guard.finish()
    }

    /// Feeds one upstream chunk. Bytes produced before a failure are kept
    /// in `Err`'s first field so the client still receives them.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        scrubber: &KeyScrubber,
    ) -> Result<Decoded, (Bytes, UpstreamError)> {
        if let Wire::Bedrock { .. } = self.wire {
            return self.feed_frames(chunk, scrubber);
        }
        let events = self
            .splitter()
            .push(chunk)
            .map_err(|e| (Bytes::new(), broken(&e)))?;
        self.decode(events, scrubber)
    }

    /// Bedrock: the frames `chunk` completes, through the bridge and the
    /// translator, to chunks.
    fn feed_frames(
        &mut self,
        chunk: &[u8],
        scrubber: &KeyScrubber,
    ) -> Result<Decoded, (Bytes, UpstreamError)> {
        let guard = &mut self.guard;
        let Wire::Bedrock {
            frames,
            bridge,
            translator,
            done,
            ..
        } = &mut self.wire
        else {
            return Ok(Decoded {
                bytes: Bytes::new(),
                done: false,
            });
        };
        let mut out = BytesMut::new();
        let events = match frames.push(chunk) {
            Ok(events) => events,
            Err(err) => return Err((out.freeze(), translate_error(&err, scrubber))),
        };
        for (kind, payload) in events {
            for (name, data) in bridge.events(&kind, &payload) {
                let finished = name == "message_stop";
                let data = data.to_string();
                translate_into(&mut out, translator, guard, name, &data, finished, scrubber)?;
                if finished {
                    *done = true;
                    return Ok(Decoded {
                        bytes: out.freeze(),
                        done: true,
                    });
                }
            }
        }
        Ok(Decoded {
            bytes: out.freeze(),
            done: *done,
        })
    }

    /// The upstream closed its stream: decodes a last event that was
    /// waiting only to see whether a `\n` followed its final `\r`.
    pub(crate) fn finish(
        &mut self,
        scrubber: &KeyScrubber,
    ) -> Result<Decoded, (Bytes, UpstreamError)> {
        let events = self.splitter().finish().into_iter().collect();
        self.decode(events, scrubber)
    }

    fn splitter(&mut self) -> &mut EventSplitter {
        match &mut self.wire {
            Wire::PassThrough { split, .. }
            | Wire::Anthropic { split, .. }
            | Wire::AnthropicRaw { split, .. }
            | Wire::Bedrock { split, .. } => split,
        }
    }

    fn decode(
        &mut self,
        events: Vec<RawEvent>,
        scrubber: &KeyScrubber,
    ) -> Result<Decoded, (Bytes, UpstreamError)> {
        let guard = &mut self.guard;
        match &mut self.wire {
            Wire::PassThrough { pass, .. } => {
                // One event (the common case) is forwarded as its own buffer.
                if events.len() == 1 && !pass.finished() {
                    let bytes = events
                        .into_iter()
                        .next()
                        .and_then(|ev| pass.on_event(ev))
                        .map(|bytes| guard.push(bytes))
                        .unwrap_or_default();
                    let done = pass.finished();
                    if done {
                        return Ok(Decoded {
                            bytes: concat(bytes, guard.finish()),
                            done,
                        });
                    }
                    return Ok(Decoded { bytes, done });
                }
                let mut out = BytesMut::new();
                for event in events {
                    if let Some(bytes) = pass.on_event(event) {
                        out.extend_from_slice(&guard.push(bytes));
                    }
                }
                if pass.finished() {
                    out.extend_from_slice(&guard.finish());
                }
                Ok(Decoded {
                    bytes: out.freeze(),
                    done: pass.finished(),
                })
            }
            Wire::AnthropicRaw {
                translator, done, ..
            } => {
                let mut out = BytesMut::new();
                for event in events {
                    if event.is_comment_only() {
                        out.extend_from_slice(&event.raw);
                        continue;
                    }
                    let finished = is_message_stop(&event);
                    let name = event.name().unwrap_or_default().to_owned();
                    if let Err(err) = translator.push(&name, &event.data()) {
                        return Err((out.freeze(), translate_error(&err, scrubber)));
                    }
                    out.extend_from_slice(&event.raw);
                    if finished {
                        *done = true;
                        break;
                    }
                }
                Ok(Decoded {
                    bytes: out.freeze(),
                    done: *done,
                })
            }
            // Bedrock bytes never reach the SSE splitter (`feed_frames`).
            Wire::Bedrock { .. } => Ok(Decoded {
                bytes: Bytes::new(),
                done: false,
            }),
            Wire::Anthropic {
                translator, done, ..
            } => {
                let mut out = BytesMut::new();
                for event in events {
                    if event.is_comment_only() {
                        continue;
                    }
                    let finished = is_message_stop(&event);
                    let name = event.name().unwrap_or_default().to_owned();
                    let data = event.data();
                    translate_into(
                        &mut out, translator, guard, &name, &data, finished, scrubber,
                    )?;
                    if finished {
                        *done = true;
                        break;
                    }
                }
                Ok(Decoded {
                    bytes: out.freeze(),
                    done: *done,
                })
            }
        }
    }

    /// Prompt tokens the upstream reported before its final usage (Anthropic's
    /// `message_start`), for estimating an interrupted stream.
    pub(crate) fn known_prompt_tokens(&self) -> Option<u64> {
        match &self.wire {
            Wire::PassThrough { .. } => None,
            Wire::Anthropic { translator, .. }
            | Wire::AnthropicRaw { translator, .. }
            | Wire::Bedrock { translator, .. } => translator.prompt_tokens_so_far(),
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        match &self.wire {
            Wire::PassThrough { pass, .. } => pass.usage(),
            Wire::Anthropic { translator, .. }
            | Wire::AnthropicRaw { translator, .. }
            | Wire::Bedrock { translator, .. } => {
                translator
                    .usage()
                    .map(|(prompt_tokens, completion_tokens)| Usage {
                        prompt_tokens,
                        completion_tokens,
                    })
            }
        }
    }
}

/// Feeds one Anthropic-format event (Anthropic's own, or Bedrock's bridged)
/// to `translator` and appends the OpenAI chunks it makes to `out` through
/// the split-key guard; the event that ends the stream (`finished`) also
/// releases the guard's held text and `[DONE]`. On a translation error the
/// held text goes first and the error comes back with everything so far.
fn translate_into(
    out: &mut BytesMut,
    translator: &mut StreamTranslator,
    guard: &mut SplitKeyGuard,
    name: &str,
    data: &str,
    finished: bool,
    scrubber: &KeyScrubber,
) -> Result<(), (Bytes, UpstreamError)> {
    match translator.push(name, data) {
        Ok(chunks) => {
            for chunk in chunks {
                out.extend_from_slice(&guard.push(data_event(&chunk)));
            }
        }
        Err(err) => {
            out.extend_from_slice(&guard.finish());
            return Err((
                std::mem::take(out).freeze(),
                translate_error(&err, scrubber),
            ));
        }
    }
    if finished {
        out.extend_from_slice(&guard.finish());
        out.extend_from_slice(DONE);
    }
    Ok(())
}

/// One chunk as an SSE `data:` event.
fn data_event(chunk: &str) -> Bytes {
    let mut event = BytesMut::with_capacity(chunk.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(chunk.as_bytes());
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

/// `first` then `second`, copying only when both have bytes.
fn concat(first: Bytes, second: Bytes) -> Bytes {
    match (first.is_empty(), second.is_empty()) {
        (_, true) => first,
        (true, false) => second,
        (false, false) => {
            let mut both = BytesMut::with_capacity(first.len() + second.len());
            both.extend_from_slice(&first);
            both.extend_from_slice(&second);
            both.freeze()
        }
    }
}

fn is_message_stop(event: &RawEvent) -> bool {
    match event.name() {
        Some(name) => name == "message_stop",
        None => event.data().contains("\"message_stop\""),
    }
}

fn broken(err: &dyn std::error::Error) -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Unavailable,
        format!("the upstream stream is malformed: {err}"),
    )
}

/// An Anthropic stream error, in our terms (its message without the call's
/// credentials, and redacted).
pub(crate) fn translate_error(err: &TranslateError, scrubber: &KeyScrubber) -> UpstreamError {
    match err {
        TranslateError::Upstream { kind, message } => {
            let kind_of = match kind.as_str() {
                "authentication_error"
                | "permission_error"
                | "accessDeniedException"
                | "unrecognizedClientException" => UpstreamErrorKind::Auth,
                "rate_limit_error" | "throttlingException" => UpstreamErrorKind::RateLimited,
                "invalid_request_error"
                | "not_found_error"
                | "request_too_large"
                | "validationException"
                | "resourceNotFoundException" => {
                    UpstreamErrorKind::Rejected(http::StatusCode::BAD_REQUEST)
                }
                _ => UpstreamErrorKind::Unavailable,
            };
            UpstreamError::new(
                kind_of,
                format!(
                    "anthropic reported {}: {}",
                    redact_known(kind, scrubber),
                    redact_known(message, scrubber)
                ),
            )
        }
        other => UpstreamError::new(
            UpstreamErrorKind::Unavailable,
            format!("anthropic sent an unreadable stream ({other})"),
        ),
    }
}

/// Anthropic's `error` event, for a `/v1/messages` stream that failed after
/// its first byte.
pub(crate) fn anthropic_error_event(code: &str, message: &str) -> Bytes {
    let event = serde_json::json!({
        "type": "error",
        "error": { "type": code, "message": message },
    });
    Bytes::from(format!("event: error\ndata: {event}\n\n"))
}

/// The final SSE error event (then `[DONE]`) for a failure after the first byte.
pub(crate) fn error_event(code: &str, message: &str) -> Bytes {
    let event = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut out = BytesMut::with_capacity(128);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(event.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out.extend_from_slice(DONE);
    out.freeze()
}

enum Phase {
    Streaming,
    Draining,
    Finishing(Outcome),
    Done,
}

/// One streamed answer in progress.
pub(crate) struct Relay {
    upstream: UpstreamBody,
    decoder: Decoder,
    service: Service,
    idle: Duration,
    queued: Option<Bytes>,
    phase: Phase,
    meter: Option<UsageMeter>,
    /// The text sent to the client so far (for estimates).
    streamed: StreamedText,
    /// Removes the call's credentials from everything sent on.
    scrubber: KeyScrubber,
}

impl Relay {
    /// A relay whose first upstream chunk was already decoded into `first`.
    pub(crate) fn new(
        upstream: UpstreamBody,
        decoder: Decoder,
        first: Decoded,
        service: Service,
        idle: Duration,
        meter: UsageMeter,
        scrubber: KeyScrubber,
    ) -> Self {
        let phase = if first.done {
            Phase::Draining
        } else {
            Phase::Streaming
        };
        Self {
            upstream,
            decoder,
            service,
            idle,
            queued: (!first.bytes.is_empty()).then_some(first.bytes),
            phase,
            meter: Some(meter),
            streamed: StreamedText::default(),
            scrubber,
        }
    }

    /// The client's body as a stream of byte chunks.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Bytes> {
        futures_util::stream::unfold(self, |mut relay| async move {
            relay.next_bytes().await.map(|bytes| (bytes, relay))
        })
        .boxed()
    }

    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.queued.take() {
                // Whole events only: a key an upstream split across
                // chunks is whole here.
                let bytes = self.scrubber.scrub_bytes(bytes);
                self.streamed.feed(&bytes);
                return Some(bytes);
            }
            match self.phase {
                Phase::Streaming => self.pull().await,
                Phase::Draining => {
                    let _ = tokio::time::timeout(DRAIN_WAIT, async {
                        while self.upstream.next().await.is_some() {}
                    })
                    .await;
                    self.phase = Phase::Finishing(Outcome::Completed);
                }
                Phase::Finishing(outcome) => {
                    self.phase = Phase::Done;
                    if let Some(meter) = self.meter.take() {
                        let known = self.decoder.known_prompt_tokens();
                        meter
                            .finish(outcome, self.decoder.usage(), &self.streamed, known)
                            .await;
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    /// Reads one upstream chunk and queues what it produced.
    async fn pull(&mut self) {
        // `ended`: the upstream closed the stream (its last event may
        // still complete then).
        let (read, ended) = match tokio::time::timeout(self.idle, self.upstream.next()).await {
            Ok(Some(Ok(chunk))) => (Ok(self.decoder.feed(&chunk, &self.scrubber)), false),
            Ok(None) => (Ok(self.decoder.finish(&self.scrubber)), true),
            Ok(Some(Err(err))) => (
                Err(UpstreamError::from_transport(self.service, &err)),
                false,
            ),
            Err(_) => (
                Err(UpstreamError::timed_out(self.service, self.idle)),
                false,
            ),
        };
        let failure = match read {
            Ok(decoded) => match decoded {
                Ok(decoded) if decoded.done || !ended => {
                    if decoded.done {
                        self.phase = Phase::Draining;
                    }
                    if !decoded.bytes.is_empty() {
                        self.queued = Some(decoded.bytes);
                    }
                    return;
                }
                Ok(decoded) => {
                    if !decoded.bytes.is_empty() {
                        self.queued = Some(decoded.bytes);
                    }
                    UpstreamError::new(
                        UpstreamErrorKind::Unavailable,
                        format!("{} ended the stream early", self.service.as_str()),
                    )
                }
                Err((before, err)) => {
                    if !before.is_empty() {
                        self.queued = Some(before);
                    }
                    err
                }
            },
            Err(err) => err,
        };
        let code = failure.kind.code();
        tracing::warn!(provider = self.service.as_str(), code, error = %failure, "stream failed after the first byte");
        let before = concat(
            self.queued.take().unwrap_or_default(),
            self.decoder.release_held(),
        );
        let event = self.decoder.error_event(code, &failure.message);
        self.queued = Some(concat(before, event));
        self.phase = Phase::Finishing(Outcome::Failed(code));
    }
}

impl Drop for Relay {
    /// The client went away before the end: the upstream body is dropped
    /// with `self` (closing its connection), and the cancellation recorded.
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            let known = self.decoder.known_prompt_tokens();
            // Nothing awaits the write: the task is counted for shutdown.
            let _ = meter.finish_spawned(
                Outcome::Cancelled,
                self.decoder.usage(),
                self.streamed,
                known,
            );
        }
    }
}
