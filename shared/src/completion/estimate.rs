//! Token estimates for attempts the upstream reported no usage for (a
//! client that went away mid-stream, an upstream that cut the stream or
//! sent no usage event): so no attempt that streamed anything is ever
//! recorded at zero tokens. Estimates are flagged as such in the ledger.
//!
//! The rule is cheap and conservative: about four characters per token, and
//! at least one token per streamed piece of text (OpenAI-compatible streams
//! send roughly one token per chunk). Prompts count the UTF-8 bytes of their
//! messages' text (no walk over the text itself on the request path) plus a
//! few tokens of framing per message.

/// Characters per token assumed by the estimate.
const CHARS_PER_TOKEN: u64 = 4;

/// Framing tokens assumed per message (role, separators).
const TOKENS_PER_MESSAGE: u64 = 3;

/// The estimated prompt tokens of a chat request whose `messages` hold
/// `text_bytes` UTF-8 bytes of strings (message text, content parts, tool
/// call arguments: [`crate::providers::raw_object::JsonStats`]) in
/// `messages` messages.
pub(crate) fn prompt_tokens(text_bytes: u64, messages: u64) -> u64 {
    let framing = TOKENS_PER_MESSAGE.saturating_mul(messages);
    text_bytes.div_ceil(CHARS_PER_TOKEN).saturating_add(framing)
}

/// Follows the OpenAI-shaped bytes sent to a client and counts the text of
/// their `content` and `arguments` strings, without parsing the JSON.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamedText {
    /// Characters of text seen (escape sequences count as one).
    chars: u64,
    /// Non-empty text strings seen.
    pieces: u64,
}

impl StreamedText {
    /// Counts the text in `bytes` (whole SSE events or a whole JSON body).
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for field in [&*CONTENT, &*ARGUMENTS] {
            let mut rest = bytes;
            while let Some(at) = field.find(rest) {
                rest = &rest[at + field.needle().len()..];
                let Some(start) = string_start(rest) else {
                    continue;
                };
                let (chars, len) = string_chars(&rest[start..]);
                if chars > 0 {
                    self.chars += chars;
                    self.pieces += 1;
                }
                rest = &rest[start + len..];
            }
        }
    }

    /// The estimated tokens of the text seen.
    pub(crate) fn tokens(&self) -> u64 {
        self.pieces.max(self.chars.div_ceil(CHARS_PER_TOKEN))
    }
}

/// Where the string value after a key starts (`: "`), if it is a string.
fn string_start(after_key: &[u8]) -> Option<usize> {
    let mut i = 0;
    while after_key.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if after_key.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while after_key.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    (after_key.get(i) == Some(&b'"')).then_some(i + 1)
}

/// Characters of the JSON string starting at `s` (after its opening quote)
/// and the bytes it spans including the closing quote.
fn string_chars(s: &[u8]) -> (u64, usize) {
    let mut chars = 0u64;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return (chars, i + 1),
            b'\\' => {
                // `\uXXXX` or a two-byte escape: one character either way.
                i += if s.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                chars += 1;
            }
            b => {
                // Count characters, not UTF-8 continuation bytes.
                if b & 0xC0 != 0x80 {
                    chars += 1;
                }
                i += 1;
            }
        }
    }
    (chars, s.len())
}

/// The keys whose string values are streamed text, as prebuilt searchers.
static CONTENT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"content\""));
static ARGUMENTS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"arguments\""));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_streamed_text_pieces_and_characters() {
        let mut text = StreamedText::default();
        text.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
        );
        text.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\": \"lo \\\"w\\u00e9rld\\\"\"}}]}\n\n",
        );
        text.feed(b"data: {\"choices\":[{\"delta\":{\"content\":null}}]}\n\ndata: [DONE]\n\n");
        assert_eq!(text.pieces, 2);
        assert_eq!(text.chars, 3 + 10);
        assert_eq!(text.tokens(), 4);

        let mut tool = StreamedText::default();
        tool.feed(
            br#"{"tool_calls":[{"function":{"name":"f","arguments":"{\"city\":\"Paris\"}"}}]}"#,
        );
        assert_eq!(tool.pieces, 1);
        assert_eq!(tool.tokens(), 4);

        let mut many_small = StreamedText::default();
        for _ in 0..10 {
            many_small.feed(b"{\"content\":\"a\"}");
        }
        assert_eq!(many_small.tokens(), 10, "at least one token per piece");
        assert_eq!(StreamedText::default().tokens(), 0);
    }

    #[test]
    fn estimates_prompts_from_message_text() {
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}
        ]);
        let stats = crate::providers::raw_object::JsonStats::of(&messages.to_string()).unwrap();
        // Strings: "system", "Be brief.", "user", "text", "Say hello." = 33 chars.
        assert_eq!(
            prompt_tokens(stats.string_bytes, stats.array_len.unwrap()),
            33u64.div_ceil(4) + 6
        );
        assert_eq!(prompt_tokens(0, 0), 0);
    }
}
