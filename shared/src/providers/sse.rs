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
        let data: Vec<&str> = self
            .fields()
            .filter_map(|(k, v)| (k == "data").then_some(v))
            .collect();
        data.join("\n")
    }

    /// True for an event with no data and no name (comments, keep-alives).
    pub fn is_comment_only(&self) -> bool {
        self.fields().next().is_none()
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        lines(std::str::from_utf8(&self.raw).unwrap_or(""))
            .filter(|line| !line.is_empty() && !line.starts_with(':'))
            .map(|line| match line.split_once(':') {
                Some((k, v)) => (k, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            })
    }
}

/// The lines of `text`, each ended by `\r\n`, `\n` or `\r` (the SSE spec's
/// three line endings, mixed freely).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(at) = rest.find(['\r', '\n']) else {
            return Some(std::mem::take(&mut rest));
        };
        let line = &rest[..at];
        let ending = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + ending..];
        Some(line)
    })
}

/// Accumulates bytes and yields whole events: an event ends at a blank
/// line, lines end with `\r\n`, `\n` or `\r`. Each byte is looked at once,
/// however the stream is cut into chunks.
#[derive(Debug)]
pub struct EventSplitter {
    buffer: BytesMut,
    /// Bytes of `buffer` already looked at (no event ends before this).
    scanned: usize,
    /// The byte before `scanned` ended a line (or the event has not begun).
    at_line_start: bool,
    /// The byte before `scanned` was a `\r`: a `\n` next belongs to it.
    after_cr: bool,
    /// That `\r` made a blank line: the event ends with it (and with the
    /// `\n` after it, if one comes).
    cr_ends_event: bool,
}

impl Default for EventSplitter {
    fn default() -> Self {
        Self {
            buffer: BytesMut::new(),
            scanned: 0,
            at_line_start: true,
            after_cr: false,
            cr_ends_event: false,
        }
    }
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
        while let Some(end) = self.next_event_end() {
            let raw = self.buffer.split_to(end).freeze();
            events.push(RawEvent { raw });
            *self = Self {
                buffer: std::mem::take(&mut self.buffer),
                ..Self::default()
            };
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

    /// The stream ended: an event whose last line ended with a lone `\r`
    /// (which waited for a possible `\n`) is complete.
    pub fn finish(&mut self) -> Option<RawEvent> {
        (self.after_cr && self.cr_ends_event && self.scanned == self.buffer.len()).then(|| {
            let raw = self.buffer.split().freeze();
            *self = Self::default();
            RawEvent { raw }
        })
    }

    /// Scans the bytes not looked at yet; the index just past the first
    /// event's end, if it has arrived.
    fn next_event_end(&mut self) -> Option<usize> {
        while self.scanned < self.buffer.len() {
            let i = self.scanned;
            let byte = self.buffer[i];
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    // `\r\n`: one line ending, already counted at the `\r`.
                    self.scanned += 1;
                    if self.cr_ends_event {
                        return Some(i + 1);
                    }
                    continue;
                }
                if self.cr_ends_event {
                    return Some(i);
                }
            }
            self.scanned += 1;
            match byte {
                b'\n' if self.at_line_start => return Some(i + 1),
                b'\n' => self.at_line_start = true,
                b'\r' => {
                    self.after_cr = true;
                    self.cr_ends_event = self.at_line_start;
                    self.at_line_start = true;
                }
                _ => self.at_line_start = false,
            }
        }
        None
    }
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
    fn cr_only_and_mixed_line_endings() {
        let stream = b"data: a\rdata: b\r\revent: x\ndata: c\n\r\ndata: d\r\n\ndata: e\r\r";
        for split in 0..=stream.len() {
            let mut s = EventSplitter::new();
            let mut events = s.push(&stream[..split]).unwrap();
            events.extend(s.push(&stream[split..]).unwrap());
            events.extend(s.finish());
            let seen: Vec<(Option<&str>, String)> =
                events.iter().map(|e| (e.name(), e.data())).collect();
            assert_eq!(
                seen,
                [
                    (None, "a\nb".to_owned()),
                    (Some("x"), "c".to_owned()),
                    (None, "d".to_owned()),
                    (None, "e".to_owned()),
                ],
                "split at {split}"
            );
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn a_lone_cr_at_the_end_waits_for_a_possible_lf() {
        let mut s = EventSplitter::new();
        assert!(s.push(b"data: a\r\r").unwrap().is_empty());
        let events = s.push(b"\ndata: b\n\n").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(&events[0].raw[..], b"data: a\r\r\n");
        assert_eq!(events[1].data(), "b");
        assert!(s.finish().is_none());
    }

    #[test]
    fn a_stream_that_ends_mid_event_is_not_finished() {
        let mut s = EventSplitter::new();
        assert!(s.push(b"data: a\r").unwrap().is_empty());
        assert!(s.finish().is_none());
        assert_eq!(s.pending(), 8);
    }

    proptest::proptest! {
        /// However a stream of events is cut into chunks, and whichever
        /// line endings it uses, the same events come out, bytes unchanged.
        #[test]
        fn any_split_gives_the_same_events(
            events in proptest::collection::vec(
                (
                    proptest::option::of("[a-z_]{1,8}"),
                    proptest::collection::vec("[ -~]{0,12}", 1..4),
                    proptest::collection::vec(0..3usize, 6),
                ),
                1..6,
            ),
            cuts in proptest::collection::vec(0..400usize, 0..12),
        ) {
            const ENDINGS: [&str; 3] = ["\n", "\r\n", "\r"];
            let mut stream = String::new();
            let mut expected = Vec::new();
            for (name, data, endings) in &events {
                let mut ending = endings.iter().map(|i| ENDINGS[*i]).cycle();
                if let Some(name) = name {
                    stream.push_str(&format!("event: {name}{}", ending.next().unwrap_or("\n")));
                }
                for line in data {
                    stream.push_str(&format!("data: {line}{}", ending.next().unwrap_or("\n")));
                }
                // A blank `\n` right after a `\r` would make one `\r\n` ending.
                let blank = ending.next().unwrap_or("\n");
                let blank = if stream.ends_with('\r') && blank == "\n" { "\r\n" } else { blank };
                stream.push_str(blank);
                expected.push((name.clone(), data.join("\n")));
            }
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = EventSplitter::new();
            let mut seen = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                seen.extend(s.push(&bytes[from..cut]).unwrap());
                from = cut;
            }
            seen.extend(s.finish());
            let joined: Vec<u8> = seen.iter().flat_map(|e| e.raw.to_vec()).collect();
            proptest::prop_assert_eq!(&joined[..], bytes);
            let got: Vec<(Option<String>, String)> =
                seen.iter().map(|e| (e.name().map(str::to_owned), e.data())).collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn refuses_unbounded_events() {
        let mut s = EventSplitter::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(s.push(&big), Err(EventTooLarge));
    }
}
