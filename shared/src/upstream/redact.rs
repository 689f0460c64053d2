//! Redaction of upstream text: providers quote keys back ("Incorrect API
//! key provided: sk-proj-…"). The exact credentials of the call are removed
//! from everything an upstream sends (error messages, whole bodies, stream
//! events: [`KeyScrubber`]); error messages also lose anything key-shaped
//! ([`redact`]) before they reach the client or the log.

use crate::domain::ApiKey;

/// Longest upstream message passed on, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

/// What replaces a key-shaped token.
pub(crate) const REDACTED: &str = "[redacted]";

/// Prefixes of the keys the gateway handles (and of common bearer tokens).
const KEY_PREFIXES: [&str; 8] = [
    "sk-", "sk_", "xai-", "AIza", "gsk_", "vck_", "Bearer", "eyJ",
];

/// The exact credentials sent upstream for one call, in every form an
/// upstream might echo them: as sent, base64 (standard and URL-safe: some
/// services decode and re-encode; the unpadded form is searched, which
/// finds the padded one too), percent-encoded and
/// JSON-escaped. Whatever the key's shape, its value is known here, so
/// nothing depends on it looking like a key. The forms are zeroized on drop.
#[derive(Default)]
pub struct KeyScrubber {
    forms: Vec<zeroize::Zeroizing<Vec<u8>>>,
}

/// Shortest form searched for: a shorter "key" would match ordinary text.
const MIN_SCRUBBED_LEN: usize = 8;

impl KeyScrubber {
    /// A scrubber for `keys` (the credentials of one upstream call).
    pub fn new<'k>(keys: impl IntoIterator<Item = &'k ApiKey>) -> Self {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let mut forms: Vec<zeroize::Zeroizing<Vec<u8>>> = Vec::new();
        let mut add = |form: Vec<u8>| {
            let form = zeroize::Zeroizing::new(form);
            if form.len() >= MIN_SCRUBBED_LEN && !forms.contains(&form) {
                forms.push(form);
            }
        };
        for key in keys {
            let raw = key.expose().as_bytes();
            add(raw.to_vec());
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                add(engine.encode(raw).into_bytes());
            }
            add(percent_encoded(raw));
            if let Ok(json) = serde_json::to_string(key.expose()) {
                add(json.as_bytes()[1..json.len() - 1].to_vec());
            }
        }
        // Longest first: a form that contains another is replaced whole.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Self { forms }
    }

    /// Every form searched for, longest first.
    pub(crate) fn forms(&self) -> impl Iterator<Item = &[u8]> {
        self.forms.iter().map(|f| f.as_slice())
    }

    fn contains_any(&self, haystack: &[u8]) -> bool {
        self.forms
            .iter()
            .any(|f| memchr::memmem::find(haystack, f.as_slice()).is_some())
    }

    /// `bytes` with every form replaced by [`REDACTED`]; the same buffer,
    /// uncopied, when none occurs (the common case).
    pub fn scrub_bytes(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        if !self.contains_any(&bytes) {
            return bytes;
        }
        let mut out = bytes.to_vec();
        for form in &self.forms {
            out = replace_all(&out, form.as_slice());
        }
        bytes::Bytes::from(out)
    }

    /// `text` with every form replaced by [`REDACTED`].
    pub fn scrub_text<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        if !self.contains_any(text.as_bytes()) {
            return std::borrow::Cow::Borrowed(text);
        }
        let scrubbed = self.scrub_bytes(bytes::Bytes::copy_from_slice(text.as_bytes()));
        std::borrow::Cow::Owned(String::from_utf8_lossy(&scrubbed).into_owned())
    }
}

impl std::fmt::Debug for KeyScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyScrubber({} forms)", self.forms.len())
    }
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(REDACTED.as_bytes());
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Every byte but unreserved ASCII as `%XX` (RFC 3986).
fn percent_encoded(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// [`redact`] after removing the exact credentials of `scrubber`, so a key
/// of any shape is gone before the cut to [`MAX_MESSAGE_CHARS`].
pub fn redact_known(text: &str, scrubber: &KeyScrubber) -> String {
    redact(&scrubber.scrub_text(text))
}

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
