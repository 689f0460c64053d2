//! Keys spelled out across several stream events. A model that repeats a
//! key streams it a few characters per chunk (`"sk-"`, `"proj-"`, `"Ab12"`,
//! …), so no single event holds it and per-event scrubbing cannot see it.
//! [`SplitKeyGuard`] follows the text of every delta field of the outgoing
//! chat-completion chunks and, while the text so far ends in the start of a
//! known key form, holds events back; when a whole form completes, the held
//! events are rewritten with the form replaced by `[redacted]`, and when the
//! text diverges they go out untouched. Matching is incremental (one
//! Knuth–Morris–Pratt state per form and text field), so each byte of text
//! is looked at once.
//!
//! A held run starts once [`HOLD_FROM`] characters of a form have been
//! seen: at most that many leading characters of a key (its public prefix,
//! such as `sk-`) can go out before the rest is caught. Events are held
//! only while the text keeps matching, so a clean stream waits on nothing.

use crate::providers::sse::RawEvent;
use crate::upstream::{KeyScrubber, REDACTED};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// Characters of a key form seen at the end of the text before events are
/// held back (the ones before may already have gone out).
const HOLD_FROM: usize = 4;

/// A stream that ends in the middle of a key form: the part seen is
/// redacted if it is at least this long.
const PARTIAL_REDACTED_FROM: usize = 8;

/// One text field of the chunks: the same field of the same choice (or tool
/// call) across events is one continuous text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Content,
    Reasoning,
    ReasoningContent,
    Refusal,
    ToolArguments(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Channel {
    choice: u64,
    field: Field,
}

/// A key form and its KMP failure table.
struct Pattern {
    bytes: zeroize::Zeroizing<Vec<u8>>,
    fail: Vec<usize>,
}

impl Pattern {
    fn new(bytes: &[u8]) -> Self {
        let mut fail = vec![0; bytes.len()];
        let mut k = 0;
        for i in 1..bytes.len() {
            while k > 0 && bytes.get(i) != bytes.get(k) {
                k = fail.get(k - 1).copied().unwrap_or(0);
            }
            if bytes.get(i) == bytes.get(k) {
                k += 1;
            }
            if let Some(slot) = fail.get_mut(i) {
                *slot = k;
            }
        }
        Self {
            bytes: zeroize::Zeroizing::new(bytes.to_vec()),
            fail,
        }
    }

    /// The matched length after `byte`, from `state`.
    fn step(&self, mut state: usize, byte: u8) -> usize {
        loop {
            if self.bytes.get(state) == Some(&byte) {
                return state + 1;
            }
            if state == 0 {
                return 0;
            }
            state = self.fail.get(state - 1).copied().unwrap_or(0);
        }
    }
}

/// Where one channel's text stands.
struct ChannelState {
    channel: Channel,
    /// Bytes of text seen so far.
    seen: u64,
    /// Per pattern: how many of its bytes end the text.
    matched: Vec<usize>,
}

/// A stretch of a channel's text, in bytes from its start.
#[derive(Debug, Clone, Copy)]
struct Span {
    channel: Channel,
    start: u64,
    end: u64,
}

struct Held {
    bytes: Bytes,
    /// The text this event added, per channel.
    pieces: Vec<Span>,
}

/// Catches the call's keys when a stream spells them out across events.
#[derive(Default)]
pub(crate) struct SplitKeyGuard {
    patterns: Vec<Pattern>,
    channels: Vec<ChannelState>,
    held: Vec<Held>,
    /// Key forms found in the held text, to remove.
    found: Vec<Span>,
}

impl SplitKeyGuard {
    /// A guard for the forms `scrubber` removes from whole events.
    pub(crate) fn new(scrubber: &KeyScrubber) -> Self {
        Self {
            patterns: scrubber.forms().map(Pattern::new).collect(),
            ..Self::default()
        }
    }

    /// Takes one outgoing event and returns what may be sent now: nothing
    /// while it is held, else it and every event held before it (the same
    /// buffer, uncopied, when nothing was held or found).
    pub(crate) fn push(&mut self, event: Bytes) -> Bytes {
        if self.patterns.is_empty() {
            return event;
        }
        let mut pieces = Vec::new();
        for_each_delta_text(&event, |channel, text| {
            pieces.push(self.scan(channel, text.as_bytes()));
        });
        if pieces.is_empty() && self.held.is_empty() {
            return event;
        }
        self.held.push(Held {
            bytes: event,
            pieces,
        });
        if self.must_hold() {
            return Bytes::new();
        }
        self.release()
    }

    /// The stream ended: everything held, with a key form cut off at the
    /// end redacted too if enough of it was seen.
    pub(crate) fn finish(&mut self) -> Bytes {
        for state in &mut self.channels {
            let partial = state.matched.iter().copied().max().unwrap_or(0);
            if partial >= PARTIAL_REDACTED_FROM {
                self.found.push(Span {
                    channel: state.channel,
                    start: state.seen - partial as u64,
                    end: state.seen,
                });
            }
            state.matched.iter_mut().for_each(|m| *m = 0);
        }
        self.release()
    }

    /// Runs `text` (the next piece of `channel`) through every pattern,
    /// noting whole forms found; returns the span it covers.
    fn scan(&mut self, channel: Channel, text: &[u8]) -> Span {
        let index = match self.channels.iter().position(|c| c.channel == channel) {
            Some(index) => index,
            None => {
                self.channels.push(ChannelState {
                    channel,
                    seen: 0,
                    matched: vec![0; self.patterns.len()],
                });
                self.channels.len() - 1
            }
        };
        let Some(state) = self.channels.get_mut(index) else {
            return Span {
                channel,
                start: 0,
                end: 0,
            };
        };
        let start = state.seen;
        for &byte in text {
            state.seen += 1;
            let mut whole = None;
            for (pattern, matched) in self.patterns.iter().zip(state.matched.iter_mut()) {
                *matched = pattern.step(*matched, byte);
                if *matched == pattern.bytes.len() {
                    whole = Some(pattern.bytes.len().max(whole.unwrap_or(0)));
                }
            }
            if let Some(len) = whole {
                self.found.push(Span {
                    channel,
                    start: state.seen - len as u64,
                    end: state.seen,
                });
                // The form is gone: matching starts afresh after it.
                state.matched.iter_mut().for_each(|m| *m = 0);
            }
        }
        Span {
            channel,
            start,
            end: state.seen,
        }
    }

    fn must_hold(&self) -> bool {
        self.channels.iter().any(|state| {
            self.patterns
                .iter()
                .zip(&state.matched)
                .any(|(pattern, &m)| m > 0 && m >= HOLD_FROM.min(pattern.bytes.len()))
        })
    }

    fn release(&mut self) -> Bytes {
        let found = std::mem::take(&mut self.found);
        let held = std::mem::take(&mut self.held);
        if held.len() == 1 && found.is_empty() {
            return held.into_iter().next().map(|h| h.bytes).unwrap_or_default();
        }
        // A form whose start already went out (before the hold began) is
        // marked where the held text starts.
        let found: Vec<Span> = found
            .into_iter()
            .map(|mut f| {
                let held_from = held
                    .iter()
                    .flat_map(|h| &h.pieces)
                    .filter(|p| p.channel == f.channel)
                    .map(|p| p.start)
                    .min();
                if let Some(from) = held_from {
                    f.start = f.start.max(from);
                }
                f
            })
            .collect();
        let mut out = BytesMut::new();
        for event in held {
            let hits: Vec<&Span> = found
                .iter()
                .filter(|f| event.pieces.iter().any(|p| overlaps(p, f)))
                .collect();
            if hits.is_empty() {
                out.extend_from_slice(&event.bytes);
            } else {
                out.extend_from_slice(&rewrite(&event, &hits));
            }
        }
        out.freeze()
    }
}

fn overlaps(piece: &Span, found: &Span) -> bool {
    piece.channel == found.channel && found.start < piece.end && piece.start < found.end
}

/// The text fields an outgoing chunk adds to, as the client will read them.
fn for_each_delta_text(event: &[u8], mut each: impl FnMut(Channel, &str)) {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(default, borrow)]
        choices: Vec<Choice<'a>>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(default)]
        index: u64,
        #[serde(default, borrow)]
        delta: Option<Delta<'a>>,
    }
    #[derive(Deserialize)]
    struct Delta<'a> {
        #[serde(default, borrow)]
        content: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        reasoning: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        reasoning_content: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        refusal: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        tool_calls: Option<Vec<ToolCall<'a>>>,
    }
    #[derive(Deserialize)]
    struct ToolCall<'a> {
        #[serde(default)]
        index: u64,
        #[serde(default, borrow)]
        function: Option<Function<'a>>,
    }
    #[derive(Deserialize)]
    struct Function<'a> {
        #[serde(default, borrow)]
        arguments: Option<Cow<'a, str>>,
    }

    if memchr::memmem::find(event, b"\"delta\"").is_none() {
        return;
    }
    // The gateway's own events are one `data:` line: read in place.
    let single = event
        .strip_prefix(b"data: ")
        .map(|rest| rest.trim_ascii_end())
        .filter(|data| !data.contains(&b'\n') && !data.contains(&b'\r'));
    let owned;
    let data: &[u8] = match single {
        Some(data) => data,
        None => {
            owned = RawEvent {
                raw: Bytes::copy_from_slice(event),
            }
            .data();
            owned.as_bytes()
        }
    };
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return;
    };
    for choice in chunk.choices {
        let Some(delta) = choice.delta else { continue };
        let channel = |field| Channel {
            choice: choice.index,
            field,
        };
        let fields = [
            (Field::Content, delta.content),
            (Field::Reasoning, delta.reasoning),
            (Field::ReasoningContent, delta.reasoning_content),
            (Field::Refusal, delta.refusal),
        ];
        for (field, text) in fields {
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                each(channel(field), &text);
            }
        }
        for call in delta.tool_calls.unwrap_or_default() {
            let arguments = call.function.and_then(|f| f.arguments);
            if let Some(text) = arguments.filter(|t| !t.is_empty()) {
                each(channel(Field::ToolArguments(call.index)), &text);
            }
        }
    }
}

/// `event` re-encoded with the stretches of `found` cut out of its text
/// (a `[redacted]` where a stretch starts).
fn rewrite(event: &Held, found: &[&Span]) -> Bytes {
    let data = RawEvent {
        raw: event.bytes.clone(),
    }
    .data();
    let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
        // Unreadable now but read before: nothing of it goes out.
        return Bytes::new();
    };
    for piece in &event.pieces {
        let Some(text) = field_mut(&mut chunk, piece.channel) else {
            continue;
        };
        let bytes = text.as_bytes();
        let mut kept = Vec::with_capacity(bytes.len());
        for (offset, &byte) in bytes.iter().enumerate() {
            let at = piece.start + offset as u64;
            match found
                .iter()
                .find(|f| f.channel == piece.channel && f.start <= at && at < f.end)
            {
                Some(f) if f.start == at => kept.extend_from_slice(REDACTED.as_bytes()),
                Some(_) => {}
                None => kept.push(byte),
            }
        }
        *text = String::from_utf8_lossy(&kept).into_owned();
    }
    let mut out = BytesMut::with_capacity(data.len() + 16);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(chunk.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// The string of `channel` in a parsed chunk.
fn field_mut(chunk: &mut Value, channel: Channel) -> Option<&mut String> {
    let choice = chunk
        .get_mut("choices")?
        .as_array_mut()?
        .iter_mut()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == channel.choice)?;
    let delta = choice.get_mut("delta")?;
    let value = match channel.field {
        Field::Content => delta.get_mut("content")?,
        Field::Reasoning => delta.get_mut("reasoning")?,
        Field::ReasoningContent => delta.get_mut("reasoning_content")?,
        Field::Refusal => delta.get_mut("refusal")?,
        Field::ToolArguments(index) => delta
            .get_mut("tool_calls")?
            .as_array_mut()?
            .iter_mut()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == index)?
            .get_mut("function")?
            .get_mut("arguments")?,
    };
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ApiKey;
    use proptest::prelude::*;
    use serde_json::json;

    const KEY: &str = "team:CANARY:gateway:secret-0042";

    fn guard() -> SplitKeyGuard {
        let key = ApiKey::new(KEY.to_owned());
        SplitKeyGuard::new(&KeyScrubber::new([&key]))
    }

    fn content_event(text: &str) -> Bytes {
        let chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {"content": text}}]});
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    /// The client's view: every event's content, joined, and the events.
    fn run(guard: &mut SplitKeyGuard, events: &[Bytes]) -> (String, Vec<Bytes>) {
        let mut out = Vec::new();
        for event in events {
            let sent = guard.push(event.clone());
            if !sent.is_empty() {
                out.push(sent);
            }
        }
        let rest = guard.finish();
        if !rest.is_empty() {
            out.push(rest);
        }
        let mut text = String::new();
        for bytes in &out {
            for part in bytes
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"data: "))
            {
                let chunk: Value = serde_json::from_slice(&part[6..]).unwrap();
                if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(t);
                }
            }
        }
        (text, out)
    }

    /// `seen` is `before`, at most the key's first few characters,
    /// `[redacted]` and `after`.
    fn assert_redacted(seen: &str, before: &str, after: &str) {
        let middle = seen
            .strip_prefix(before)
            .and_then(|s| s.strip_suffix(after))
            .and_then(|s| s.strip_suffix("[redacted]"))
            .unwrap_or_else(|| panic!("{seen}"));
        assert!(
            middle.len() < HOLD_FROM && KEY.starts_with(middle),
            "{seen}"
        );
    }

    fn pieces(text: &str, cuts: &[usize]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
        bounds.extend([0, chars.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        bounds
            .windows(2)
            .map(|w| chars[w[0]..w[1]].iter().collect())
            .collect()
    }

    #[test]
    fn a_key_split_across_events_is_redacted() {
        let text = format!("Your key is {KEY}, keep it safe.");
        let events: Vec<Bytes> = pieces(&text, &[5, 14, 18, 22, 30, 33])
            .iter()
            .map(|p| content_event(p))
            .collect();
        let (seen, _) = run(&mut guard(), &events);
        assert_redacted(&seen, "Your key is ", ", keep it safe.");
    }

    #[test]
    fn clean_streams_go_out_untouched_and_unheld() {
        let mut guard = guard();
        for word in ["Hello", " tea", " time", "!"] {
            let event = content_event(word);
            let sent = guard.push(event.clone());
            assert_eq!(sent, event, "{word}: sent as it came, at once");
        }
        assert!(guard.finish().is_empty());
    }

    #[test]
    fn a_stream_cut_inside_a_key_redacts_what_it_saw() {
        let events: Vec<Bytes> = ["ok ", "team:CAN", "ARY:gat"]
            .iter()
            .map(|p| content_event(p))
            .collect();
        let (seen, _) = run(&mut guard(), &events);
        assert_redacted(&seen, "ok ", "");
    }

    #[test]
    fn tool_arguments_and_other_choices_are_followed_apart() {
        let mut guard = guard();
        let half = KEY.len() / 2;
        let events = [
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": format!("{{\"k\":\"{}", &KEY[..half])}}]}}]}),
            json!({"choices": [{"index": 1, "delta": {"content": "unrelated"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": format!("{}\"}}", &KEY[half..])}}]}}]}),
        ];
        let mut out = BytesMut::new();
        for event in events {
            out.extend_from_slice(&guard.push(Bytes::from(format!("data: {event}\n\n"))));
        }
        out.extend_from_slice(&guard.finish());
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(!text.contains(&KEY[4..]), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        assert!(text.contains("unrelated"), "{text}");
    }

    proptest! {
        /// Wherever the stream cuts the text, the key never reaches the
        /// client beyond its first few characters, and the rest of the
        /// text arrives unchanged.
        #[test]
        fn any_split_is_caught(cuts in proptest::collection::vec(0usize..80, 0..24), before in "[a-z ]{0,12}", after in "[a-z ]{0,12}") {
            let text = format!("{before}{KEY}{after}");
            let events: Vec<Bytes> = pieces(&text, &cuts).iter().map(|p| content_event(p)).collect();
            let (seen, out) = run(&mut guard(), &events);
            for bytes in &out {
                prop_assert!(memchr::memmem::find(bytes, &KEY.as_bytes()[HOLD_FROM - 1..]).is_none());
            }
            assert_redacted(&seen, &before, &after);
        }
    }
}
