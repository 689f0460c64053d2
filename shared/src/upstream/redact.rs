//! Redaction of upstream error messages: providers quote keys back ("Incorrect
//! API key provided: sk-proj-…"), so anything key-shaped is replaced before
//! a message reaches the client or the log.

/// Longest upstream message passed on, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

/// What replaces a key-shaped token.
pub(crate) const REDACTED: &str = "[redacted]";

/// Prefixes of the keys the gateway handles (and of common bearer tokens).
const KEY_PREFIXES: [&str; 8] = [
    "sk-", "sk_", "xai-", "AIza", "gsk_", "vck_", "Bearer", "eyJ",
];

/// `text` with every key-shaped token replaced by [`REDACTED`], cut to
/// [`MAX_MESSAGE_CHARS`]. A token is key-shaped if it starts with a known key
/// prefix, or is 20+ characters of letters, digits, `-`/`_` mixing letters
/// and digits (an opaque credential rather than a word).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS + 16));
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            out.push_str(if is_key_shaped(token) {
                REDACTED
            } else {
                token
            });
            token.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '=' | '+' | '/') {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut token, &mut out);
    truncate(out.trim())
}

fn is_key_shaped(token: &str) -> bool {
    let token = token.trim_end_matches(['.', '*', '/']);
    if token.len() >= 8 && KEY_PREFIXES.iter().any(|p| token.starts_with(p)) {
        return true;
    }
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = token.bytes().any(|b| b.is_ascii_alphabetic());
    token.len() >= 20 && has_digit && has_alpha && !token.contains('/')
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shaped_tokens_are_replaced_and_words_kept() {
        let cases = [
            (
                "Incorrect API key provided: sk-proj-LEAKCANARY0000000000000001. You can find your API key at https://platform.openai.com/account/api-keys.",
                "Incorrect API key provided: [redacted] You can find your API key at https://platform.openai.com/account/api-keys.",
            ),
            ("invalid x-api-key", "invalid x-api-key"),
            ("key AIzaSyA-canary-123456 is bad", "key [redacted] is bad"),
            ("token vck_abc1234567 denied", "token [redacted] denied"),
            (
                "opaque 9f8e7d6c5b4a39281706f5e4d3c2b1a0 here",
                "opaque [redacted] here",
            ),
            (
                "Rate limit reached for gpt-4o-mini in organization org-123",
                "Rate limit reached for gpt-4o-mini in organization org-123",
            ),
            ("sk-ant-api03-abc_DEF-0123456789", "[redacted]"),
            ("line\nbreak", "line break"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "word ".repeat(200);
        let out = redact(&long);
        assert!(out.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(out.ends_with('…'));
    }
}
