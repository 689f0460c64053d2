//! Domain types of the gateway: services, credentials, key records, settings,
//! model ids and user base URLs. Nothing here knows about storage backends,
//! HTTP or Lambda.

pub mod api_token;
pub mod base_url;
pub mod credential;
pub mod key;
pub mod model;
pub mod operator;
pub mod path;
pub mod provider;
pub mod service;
pub mod settings;

pub use api_token::{ApiTokenId, ApiTokenRecord, PersonalKey, TokenHash};
pub use base_url::{BaseUrlError, UserBaseUrl};
pub use credential::{
    ApiKey, AwsCredentials, Credential, CredentialDocument, CredentialFieldError, CredentialKind,
    GCP_TOKEN_URL, GcpServiceAccount, TeamCredentialError, credential_secret_parts,
    team_credential,
};
pub use key::{
    KeyFormatError, KeyId, KeyRecord, KeyStrategy, PendingKey, RotationOutcome, RotationRejection,
    SecretRef, ValidationResult, is_plausible_team_key, looks_like_a_key, mask_key,
};
pub use model::{ModelError, ModelId};
pub use operator::{TeamCredentials, Upstreams};
pub use path::ResolutionPath;
pub use provider::Provider;
pub use service::{Service, WireApi};
pub use settings::Settings;

use std::fmt;

/// The verified identity of a caller: the token's `sub`, never a body field.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Longest user id accepted; Cognito subs are 36 characters.
    pub const MAX_LEN: usize = 256;

    /// Accepts a non-empty id of at most [`Self::MAX_LEN`] bytes with no control characters.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let ok = !id.is_empty() && id.len() <= Self::MAX_LEN && !id.chars().any(char::is_control);
        ok.then_some(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest tenant id kept; longer claim values are not attributed.
pub const TENANT_MAX_LEN: usize = 128;

/// A tenant (organisation) usage is attributed to, from a token claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Accepts 1 to [`TENANT_MAX_LEN`] bytes with no control characters.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let ok = !id.is_empty() && id.len() <= TENANT_MAX_LEN && !id.chars().any(char::is_control);
        ok.then_some(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UTC instant, stored and serialised as RFC 3339 text.
pub type Timestamp = time::OffsetDateTime;

/// Now, truncated to milliseconds so stored and returned values agree.
pub fn now() -> Timestamp {
    let t = time::OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}
