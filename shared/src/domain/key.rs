//! Key records (the metadata kept beside each stored secret), key-format
//! checks per service, and masking for display.

use super::{ApiKey, Service, Timestamp, UserId};

/// A stored key's id among its user's keys of one service: assigned by
/// the server, stable for the key's life, URL-safe (`k` and lowercase hex
/// or digits, at most 32 characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The id of a key stored before keys had ids: each service had one
    /// key, which reads as that service's first key.
    pub const FIRST: &'static str = "k0";

    /// [`Self::FIRST`].
    pub fn first() -> Self {
        Self(Self::FIRST.to_owned())
    }

    /// A new random id (`k` and 16 hex digits).
    pub fn generate() -> std::io::Result<Self> {
        Ok(Self(format!("k{}", crate::crypto::random_hex::<8>()?)))
    }

    /// `raw` if it is a well-formed id.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() >= 2
            && raw.len() <= 32
            && raw.starts_with('k')
            && raw[1..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_first(&self) -> bool {
        self.0 == Self::FIRST
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a user's several keys of one service are used (`BYOK_KEY_STRATEGY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyStrategy {
    /// Always in priority order.
    #[default]
    Priority,
    /// In priority order, taking turns among keys of equal priority.
    RoundRobin,
}

/// Where a key's secret lives: the backend's id for it and the version the
/// metadata points at. The version lets caches key on (id, version).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub id: String,
    pub version: String,
}

/// The outcome of the last check of a key against its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidationResult {
    Valid,
    /// The provider refused it (401/403).
    Invalid,
    /// No answer, a 5xx, a 429 or a timeout: the provider could not tell.
    Unreachable,
    /// The provider answered, but neither accepted nor refused the key
    /// (e.g. 404 for the check's path: a base URL that is not the API's).
    Unverified,
}

impl ValidationResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            ValidationResult::Valid => "valid",
            ValidationResult::Invalid => "invalid",
            ValidationResult::Unreachable => "unreachable",
            ValidationResult::Unverified => "unverified",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Valid,
            Self::Invalid,
            Self::Unreachable,
            Self::Unverified,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The metadata of one stored key: everything but the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub user: UserId,
    pub service: Service,
    pub id: KeyId,
    /// Order among the service's keys: lower is tried first; the lowest is
    /// the service's primary key.
    pub priority: u32,
    pub label: String,
    pub masked_key: String,
    pub enabled: bool,
    /// The user's own base URL (gateway only), already checked.
    pub base_url: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_validated_at: Option<Timestamp>,
    pub last_validation: Option<ValidationResult>,
    pub secret: SecretRef,
    /// Incremented on every write; conditional writes compare it.
    pub revision: u64,
    /// When the key material last changed after creation: a replacement or a
    /// promoted rotation. The key's age counts from here (else `created_at`).
    pub rotated_at: Option<Timestamp>,
    /// A replacement key staged for rotation, not yet promoted or rejected.
    pub pending: Option<PendingKey>,
    /// How the last rotation attempt ended.
    pub last_rotation: Option<RotationOutcome>,
    /// When a completion last used the key (kept coarsely, see the config).
    pub last_used_at: Option<Timestamp>,
    /// The provider rate-limited the key: it is skipped until then.
    pub cooldown_until: Option<Timestamp>,
}

impl KeyRecord {
    /// When the key material in use was set: the last rotation, else creation.
    pub fn keyed_at(&self) -> Timestamp {
        self.rotated_at.unwrap_or(self.created_at)
    }

    /// Whether the key is still cooling down after a rate limit at `now`.
    pub fn cooling_at(&self, now: Timestamp) -> bool {
        self.cooldown_until.is_some_and(|until| until > now)
    }

    /// The order keys of one service are tried in: priority, then age, then id.
    pub fn order(&self) -> (u32, Timestamp, &KeyId) {
        (self.priority, self.created_at, &self.id)
    }
}

/// A staged replacement key: stored as a secret version of its own, served
/// by nothing until a rotation validates and promotes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingKey {
    /// The staged secret version (same secret id as the current one).
    pub version: String,
    pub masked_key: String,
    pub staged_at: Timestamp,
    /// The rotation (Secrets Manager `ClientRequestToken`) that took the
    /// staged key up, once one has.
    pub token: Option<String>,
}

/// Why a rotation did not promote its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationRejection {
    /// The provider refused the new key (401/403).
    InvalidKey,
    /// The user cancelled, replaced or deleted the key meanwhile.
    Cancelled,
    /// Nothing was staged and the provider offers no way to create a key.
    NothingStaged,
}

impl RotationRejection {
    pub const ALL: [Self; 3] = [Self::InvalidKey, Self::Cancelled, Self::NothingStaged];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidKey => "invalid_key",
            Self::Cancelled => "cancelled",
            Self::NothingStaged => "nothing_staged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The end of one rotation attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationOutcome {
    pub at: Timestamp,
    /// `None`: the new key was promoted.
    pub rejected: Option<RotationRejection>,
}

/// Why a key was refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is {len} characters long; keys are {min} to {max}")]
    Length { len: usize, min: usize, max: usize },
    #[error("the key contains whitespace or characters that are not printable ASCII")]
    Characters,
    #[error("{service} keys start with {prefix}")]
    Prefix {
        service: &'static str,
        prefix: &'static str,
    },
    #[error("this looks like a key of {other}, not of {service}")]
    WrongService {
        service: &'static str,
        other: &'static str,
    },
    /// A service whose keys are structured credentials got something else.
    #[error("{service} takes credentials (its fields), not an API key")]
    NeedsCredentials { service: &'static str },
    /// A structured credential with a field out of shape.
    #[error(transparent)]
    Credential(#[from] super::credential::CredentialFieldError),
}

/// Shortest key accepted: short enough for every real key, long enough that
/// a masked key never shows most of it.
pub const KEY_MIN_LEN: usize = 16;
/// Longest key accepted.
pub const KEY_MAX_LEN: usize = 512;

/// Checks that `key` is shaped like a key of `service`. Never echoes the key.
pub fn check_key_format(service: Service, key: &ApiKey) -> Result<(), KeyFormatError> {
    let kind = service.provider().credential;
    if kind != super::CredentialKind::ApiKey {
        return if super::Credential::of_kind(kind, key).is_some() {
            Ok(())
        } else {
            Err(KeyFormatError::NeedsCredentials {
                service: service.as_str(),
            })
        };
    }
    let key = key.expose();
    if key.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if !(KEY_MIN_LEN..=KEY_MAX_LEN).contains(&key.len()) {
        return Err(KeyFormatError::Length {
            len: key.chars().count(),
            min: KEY_MIN_LEN,
            max: KEY_MAX_LEN,
        });
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyFormatError::Characters);
    }
    if let Some(prefix) = service.key_prefix()
        && !key.starts_with(prefix)
    {
        return Err(KeyFormatError::Prefix {
            service: service.as_str(),
            prefix,
        });
    }
    // A longer prefix of another service wins: `sk-` is OpenAI's prefix
    // (and DeepSeek's), but also the start of Anthropic's `sk-ant-`,
    // OpenRouter's `sk-or-` and OpenAI's project keys `sk-proj-`. A service
    // whose keys have no prefix refuses keys with another service's.
    let own = service.key_prefix().unwrap_or("");
    if !service.provider().accepts_base_url {
        let others_prefix = |other: &Service| {
            let p = other.provider();
            p.key_prefix
                .into_iter()
                .chain(p.prefixes_shown.iter().copied())
                .filter(|prefix| {
                    prefix.len() > own.len()
                        && prefix.starts_with(own)
                        && key.starts_with(prefix)
                        && !service.provider().prefixes_shown.contains(prefix)
                })
                .map(str::len)
                .max()
        };
        let other = Service::ALL
            .into_iter()
            .filter(|other| *other != service)
            .filter_map(|other| others_prefix(&other).map(|len| (len, other)))
            .max_by_key(|(len, _)| *len);
        if let Some((_, other)) = other {
            return Err(KeyFormatError::WrongService {
                service: service.as_str(),
                other: other.as_str(),
            });
        }
    }
    Ok(())
}

/// Longest team key accepted (the longest provider keys are ~200 characters).
const TEAM_KEY_MAX_LEN: usize = 1024;

/// A team key the operator configured looks like a credential at all:
/// 8 to 1024 printable ASCII characters, no spaces. Its value is redacted
/// by value wherever upstream text goes, so its shape does not matter
/// beyond this; a value that fails it (an empty file, a pasted JSON
/// document, a newline in the middle) is a configuration mistake.
pub fn is_plausible_team_key(key: &ApiKey) -> bool {
    let key = key.expose();
    (8..=TEAM_KEY_MAX_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Text that holds something shaped like a key of any service: a word
/// starting with a provider's key prefix followed by 8 or more characters,
/// or a run of 20 or more letters and digits mixing both (an opaque
/// credential rather than a name or a date). For fields stored and shown
/// in clear, such as labels.
pub fn looks_like_a_key(text: &str) -> bool {
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')));
    words.into_iter().any(|word| {
        let prefixed = Service::ALL.iter().any(|svc| {
            let p = svc.provider();
            p.key_prefix
                .into_iter()
                .chain(p.prefixes_shown.iter().copied())
                .any(|prefix| word.starts_with(prefix) && word.len() >= prefix.len() + 8)
        });
        prefixed
            || word.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
                run.len() >= 20
                    && run.bytes().any(|b| b.is_ascii_digit())
                    && run.bytes().any(|b| b.is_ascii_alphabetic())
            })
    })
}

/// `sk-proj-…1234`: the longest prefix a provider shows in clear
/// ([`crate::domain::Provider::prefixes_shown`]; else the first 3
/// characters), an ellipsis and the last 4 characters. Keys too short to
/// mask safely show only the prefix.
/// A structured credential shows its own non-secret parts
/// ([`super::Credential::masked`]).
pub fn mask_key(key: &ApiKey) -> String {
    super::Credential::read(key).masked()
}

/// [`mask_key`] of an API key.
pub(crate) fn mask_api_key(key: &ApiKey) -> String {
    let key = key.expose();
    let prefix = Service::ALL
        .iter()
        .flat_map(|svc| svc.provider().prefixes_shown)
        .filter(|p| key.starts_with(*p))
        .max_by_key(|p| p.len())
        .copied()
        .unwrap_or_else(|| key.get(..3).unwrap_or(""));
    let rest = &key[prefix.len()..];
    if rest.len() < 8 || !key.is_ascii() {
        return format!("{prefix}…");
    }
    format!("{prefix}…{}", &key[key.len() - 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_by_known_prefix() {
        let cases = [
            ("sk-proj-abcdefghijklmnop1234", "sk-proj-…1234"),
            ("sk-ant-api03-abcdefghij9876", "sk-ant-…9876"),
            ("sk-or-v1-abcdefghijklmn5555", "sk-or-v1-…5555"),
            ("xai-abcdefghijklmnop0000", "xai-…0000"),
            ("AIzaSyabcdefghijklmnop4321", "AIza…4321"),
            ("gsk_abcdefghijklmnop7777", "gsk_…7777"),
            ("vck_abcdefghijklmnop8888", "vck_…8888"),
            ("sk-abcdefghijklmnopqr2222", "sk-…2222"),
            ("plainkeyvalue-xyz-3333", "pla…3333"),
            ("sk-proj-short", "sk-proj-…"),
        ];
        for (key, masked) in cases {
            assert_eq!(mask_key(&ApiKey::new(key)), masked, "{key}");
        }
    }

    #[test]
    fn key_formats() {
        use KeyFormatError as E;
        let ok = [
            (Service::OpenAi, "sk-proj-abcdefghijklmnop1234"),
            (Service::OpenAi, "sk-abcdefghijklmnopqrstu"),
            (Service::Anthropic, "sk-ant-api03-abcdefghijkl"),
            (Service::Xai, "xai-abcdefghijklmnopqrst"),
            (Service::OpenRouter, "sk-or-v1-abcdefghijklmnop"),
            (Service::Google, "AIzaSyA-abcdefghijklmnopqrstuvwxyz01"),
            (Service::Groq, "gsk_abcdefghijklmnopqrst"),
            (Service::Gateway, "vck_abcdefghijklmnopqrst"),
            (Service::Gateway, "sk-gateway-abcdefghijkl"),
        ];
        for (svc, key) in ok {
            assert_eq!(
                check_key_format(svc, &ApiKey::new(key)),
                Ok(()),
                "{svc} {key}"
            );
        }
        type Check = fn(&KeyFormatError) -> bool;
        let bad: [(Service, &str, Check); 8] = [
            (Service::OpenAi, "", |e| *e == E::Empty),
            (Service::OpenAi, "sk-short", |e| {
                matches!(e, E::Length { .. })
            }),
            (Service::OpenAi, "sk-abc def ghi jkl mno", |e| {
                *e == E::Characters
            }),
            (Service::OpenAi, "pk-abcdefghijklmnopqrst", |e| {
                matches!(e, E::Prefix { .. })
            }),
            (Service::OpenAi, "sk-ant-abcdefghijklmnop", |e| {
                matches!(
                    e,
                    E::WrongService {
                        other: "anthropic",
                        ..
                    }
                )
            }),
            (Service::Anthropic, "sk-abcdefghijklmnopqrst", |e| {
                matches!(e, E::Prefix { .. })
            }),
            (Service::Groq, "gsk_abcdefghijklmnopq\u{e9}", |e| {
                *e == E::Characters
            }),
            (Service::Gateway, "vck_abcdefghijklmnopq\n", |e| {
                *e == E::Characters
            }),
        ];
        for (svc, key, want) in bad {
            let err = check_key_format(svc, &ApiKey::new(key)).expect_err(key);
            assert!(want(&err), "{svc} {key:?}: {err:?}");
            assert!(key.is_empty() || !err.to_string().contains(key));
        }
        let long = format!("sk-{}", "a".repeat(KEY_MAX_LEN));
        assert!(matches!(
            check_key_format(Service::OpenAi, &ApiKey::new(long)),
            Err(E::Length { .. })
        ));
    }

    #[test]
    fn keys_of_one_service_are_refused_for_another_where_prefixes_tell() {
        let svc = |id: &str| id.parse::<Service>().unwrap();
        let check = |id: &str, key: &str| check_key_format(svc(id), &ApiKey::new(key));
        for (id, key) in [
            ("mistral", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
            ("deepseek", "sk-0123456789abcdef0123456789abcdef"),
            (
                "together",
                "tgp_v1_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            ),
            (
                "together",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            ("fireworks", "fw_abcdefghijklmnopqrstuvwx"),
            (
                "perplexity",
                "pplx-abcdefghijklmnopqrstuvwxyz0123456789abcdefghijkl",
            ),
            (
                "cerebras",
                "csk-abcdefghijklmnopqrstuvwxyz0123456789abcdefghijkl",
            ),
            ("cohere", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCd"),
            // OpenAI's own `sk-` still takes a DeepSeek-shaped key.
            ("openai", "sk-0123456789abcdef0123456789abcdef"),
        ] {
            assert_eq!(check(id, key), Ok(()), "{id} {key}");
        }
        for (id, key, other) in [
            ("deepseek", "sk-proj-abcdefghijklmnopqrstu", "openai"),
            ("deepseek", "sk-ant-api03-abcdefghijklmnop", "anthropic"),
            ("deepseek", "sk-or-v1-abcdefghijklmnopqrst", "openrouter"),
            ("mistral", "gsk_abcdefghijklmnopqrstuvwx", "groq"),
            ("mistral", "sk-ant-api03-abcdefghijklmnop", "anthropic"),
            ("cohere", "pplx-abcdefghijklmnopqrstuvwxyz", "perplexity"),
            ("together", "csk-abcdefghijklmnopqrstuvwxyz", "cerebras"),
            ("fireworks", "xai-abcdefghijklmnopqrstuvwx", "xai"),
            ("perplexity", "fw_abcdefghijklmnopqrstuvwxyz", "fireworks"),
            ("cerebras", "AIzaSyA-abcdefghijklmnopqrstuvwxyz01", "google"),
        ] {
            match check(id, key) {
                Err(KeyFormatError::WrongService { other: got, .. }) => {
                    assert_eq!(got, other, "{id} {key}");
                }
                got => panic!("{id} {key}: {got:?}"),
            }
        }
        assert!(matches!(
            check("deepseek", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
            Err(KeyFormatError::Prefix { .. })
        ));
    }
}
