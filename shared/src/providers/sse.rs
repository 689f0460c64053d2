//! Server-sent events framing: splits an upstream byte stream into whole
//! events without copying or re-encoding their bytes, so pass-through
//! chunks reach the client exactly as the upstream sent them.

use bytes::{Bytes, BytesMut};

/// One complete event: its raw bytes (terminator included) and where its
/// `event:` name and `data:` lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The event as received, including the blank line that ended it.
    pub raw: Bytes,
}

impl RawEvent {
    /// The `event:` field, if any.
    pub fn name(&self) -> Option<&str> {
        self.fields().find_map(|(k, v)| (k == "event").then_some(v))
    }

    /// The `data:` lines joined with `\n`, as the SSE spec defines.
    pub fn data(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.fields() {
            if k == "data" {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(v);
            }
        }
        out
    }

    /// True for an event with no data and no name (comments, keep-alives).
    pub fn is_comment_only(&self) -> bool {
        self.fields().next().is_none()
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        std::str::from_utf8(&self.raw)
            .unwrap_or("")
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with(':'))
            .map(|line| match line.split_once(':') {
                Some((k, v)) => (k, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            })
    }
}

/// Accumulates bytes and yields whole events. Accepts `\n\n`, `\r\n\r\n`
/// and `\r\r` terminators.
#[derive(Debug, Default)]
pub struct EventSplitter {
    buffer: BytesMut,
}

/// Longest event accepted before the stream is considered broken.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// The upstream sent an event larger than [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upstream event exceeded {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl EventSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `chunk` and returns every event it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<RawEvent>, EventTooLarge> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = terminator_end(&self.buffer) {
            let raw = self.buffer.split_to(end).freeze();
            events.push(RawEvent { raw });
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// Bytes of an unfinished event still held (the stream ended mid-event if non-empty).
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// The index just past the first event terminator in `buf`, if any.
fn terminator_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\r' if buf[i..].starts_with(b"\r\n\r\n") => return Some(i + 4),
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunk_boundaries_without_changing_bytes() {
        let stream = b"data: {\"a\":1}\n\nevent: message_start\ndata: {\"b\":2}\n\n: ping\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut s = EventSplitter::new();
            let mut events = s.push(&stream[..split]).unwrap();
            events.extend(s.push(&stream[split..]).unwrap());
            assert_eq!(events.len(), 4, "split at {split}");
            let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(joined, stream, "bytes unchanged");
            assert_eq!(events[0].data(), "{\"a\":1}");
            assert_eq!(events[1].name(), Some("message_start"));
            assert!(events[2].is_comment_only());
            assert_eq!(events[3].data(), "[DONE]");
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn crlf_and_multiline_data() {
        let mut s = EventSplitter::new();
        let events = s.push(b"data: one\r\ndata: two\r\n\r\ndata: x").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data(), "one\ntwo");
        assert_eq!(s.pending(), 7);
    }

    #[test]
    fn refuses_unbounded_events() {
        let mut s = EventSplitter::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(s.push(&big), Err(EventTooLarge));
    }
}
