//! Credentials as a secret type: an API key never prints, serialises or
//! debug-formats in clear; the clear value is read at one call site per use.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A provider or gateway API key.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }

    /// The clear key, for the outgoing header or the encrypt call only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(*****)")
    }
}

impl PartialEq for ApiKey {
    /// Equality in constant time over the bytes (`subtle`), so comparisons
    /// leak no prefix.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl Eq for ApiKey {}

impl<'de> serde::Deserialize<'de> for ApiKey {
    /// Request bodies carry keys as strings; they become secret at once.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = ApiKey::new("sk-canary-0123456789abcdef");
        let printed = format!("{key:?} {:?}", Some(&key));
        assert!(!printed.contains("canary"), "{printed}");
    }
}

/// What a service's stored credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// One API key string.
    ApiKey,
    /// A Google Cloud service account (Vertex AI): exchanged for short-lived
    /// access tokens, never sent upstream itself.
    GcpServiceAccount,
    /// An AWS access key (Amazon Bedrock): signs each request (SigV4),
    /// never sent upstream itself.
    AwsAccessKey,
}

impl CredentialKind {
    /// A structured credential of this kind read from `doc` and turned into
    /// its stored form (one JSON secret); `None` for an API key, which has
    /// no document.
    pub fn stored_from(
        self,
        doc: &CredentialDocument,
        token_url: &str,
    ) -> Option<Result<ApiKey, CredentialFieldError>> {
        match self {
            CredentialKind::ApiKey => None,
            CredentialKind::GcpServiceAccount => {
                Some(GcpServiceAccount::from_document(doc, token_url).map(|a| a.to_secret()))
            }
            CredentialKind::AwsAccessKey => {
                Some(AwsCredentials::from_document(doc).map(|a| a.to_secret()))
            }
        }
    }
}

/// Why an operator's team credential was refused (never its value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TeamCredentialError {
    #[error("does not look like a key: 8 to 1024 printable characters without spaces")]
    NotAKey,
    #[error(
        "is not a JSON credential document (a service account key file plus location; an AWS access key with region)"
    )]
    NotADocument,
    #[error("{0}")]
    Field(CredentialFieldError),
}

/// An operator's team credential for a service of `kind`, as configured (a
/// variable's value or a team secret's): an API key as it is, or for a
/// structured kind a JSON document of the same fields users upload (a
/// Google service-account key file plus `location`; an AWS access key with
/// `region`), checked the same way and kept in its stored form.
pub fn team_credential(
    kind: CredentialKind,
    value: &str,
    token_url: &str,
) -> Result<ApiKey, TeamCredentialError> {
    if kind == CredentialKind::ApiKey {
        let key = ApiKey::new(value.trim());
        return if super::is_plausible_team_key(&key) {
            Ok(key)
        } else {
            Err(TeamCredentialError::NotAKey)
        };
    }
    let doc: CredentialDocument =
        serde_json::from_str(value).map_err(|_| TeamCredentialError::NotADocument)?;
    kind.stored_from(&doc, token_url)
        .unwrap_or(Err(field_error("credentials", "is not expected")))
        .map_err(TeamCredentialError::Field)
}

/// The token endpoint every Google service account is exchanged at. A
/// credential naming another (`token_uri`) is refused, so no URL a user
/// chose is ever fetched; only the operator may point it elsewhere
/// (`BYOK_GCP_TOKEN_URL`, for tests).
pub const GCP_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// A structured credential as it arrives in a request body (`credentials`):
/// a JSON object that holds secrets, so its `Debug` shows only field names.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct CredentialDocument(serde_json::Map<String, serde_json::Value>);

impl CredentialDocument {
    /// The first of `names` the document has, as text: absent or `null` is
    /// `None`; any other type is an error naming the field (its first name).
    fn text(&self, names: &[&'static str]) -> Result<Option<&str>, CredentialFieldError> {
        for name in names {
            match self.0.get(*name) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => return Ok(Some(s.as_str())),
                Some(_) => return Err(field_error(names[0], "must be a string")),
            }
        }
        Ok(None)
    }
}

impl fmt::Debug for CredentialDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a structured credential was refused: the field, and what is wrong
/// with it (never its value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("credentials.{field}: {problem}")]
pub struct CredentialFieldError {
    pub field: &'static str,
    pub problem: &'static str,
}

fn field_error(field: &'static str, problem: &'static str) -> CredentialFieldError {
    CredentialFieldError { field, problem }
}

/// A Google Cloud service account and where to call Vertex AI with it.
/// The private key is a secret; the rest is shown in key views.
#[derive(Clone)]
pub struct GcpServiceAccount {
    pub project: String,
    pub location: String,
    pub client_email: String,
    pub private_key_id: Option<String>,
    private_key: SecretString,
}

/// The stored form's `type`.
const GCP_STORED_TYPE: &str = "gcp_service_account";

impl GcpServiceAccount {
    /// Reads an uploaded credential: our own field names
    /// (`project`, `location`, `clientEmail`, `privateKey`, `privateKeyId`)
    /// or a Google service-account key file's as they are (`project_id`,
    /// `client_email`, `private_key`, `private_key_id`, `token_uri`, …),
    /// plus `location`. A `token_uri` other than `token_url` is refused.
    pub fn from_document(
        doc: &CredentialDocument,
        token_url: &str,
    ) -> Result<Self, CredentialFieldError> {
        let account = Self::read(doc, token_url)?;
        account.check_private_key()?;
        Ok(account)
    }

    /// The fields of `doc`, each within its shape; the private key is not
    /// parsed (see [`Self::check_private_key`]).
    fn read(doc: &CredentialDocument, token_url: &str) -> Result<Self, CredentialFieldError> {
        let text = |names: &[&'static str]| doc.text(names);
        if let Some(kind) = text(&["type"])?
            && kind != "service_account"
            && kind != GCP_STORED_TYPE
        {
            return Err(field_error("type", "must be service_account"));
        }
        if let Some(uri) = text(&["token_uri", "tokenUri"])?
            && uri.trim_end_matches('/') != token_url.trim_end_matches('/')
        {
            return Err(field_error(
                "token_uri",
                "must be Google's token endpoint (https://oauth2.googleapis.com/token)",
            ));
        }
        let project = text(&["project", "project_id"])?
            .ok_or_else(|| field_error("project", "is required (project_id in a key file)"))?;
        let location = text(&["location"])?.ok_or_else(|| {
            field_error(
                "location",
                "is required (a Vertex AI region such as us-central1, or global)",
            )
        })?;
        let client_email = text(&["clientEmail", "client_email"])?
            .ok_or_else(|| field_error("clientEmail", "is required"))?;
        let private_key = text(&["privateKey", "private_key"])?
            .ok_or_else(|| field_error("privateKey", "is required"))?;
        let private_key_id = text(&["privateKeyId", "private_key_id"])?;
        let account = Self {
            project: project.to_owned(),
            location: location.to_owned(),
            client_email: client_email.to_owned(),
            private_key_id: private_key_id.map(str::to_owned),
            private_key: SecretString::from(private_key.to_owned()),
        };
        account.check()?;
        Ok(account)
    }

    /// Every field within the shapes Google gives them; these values go into
    /// a URL's host and path, so nothing else is let through.
    fn check(&self) -> Result<(), CredentialFieldError> {
        let p = self.project.as_bytes();
        let project_ok = (6..=30).contains(&p.len())
            && p[0].is_ascii_lowercase()
            && p.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !self.project.ends_with('-');
        if !project_ok {
            return Err(field_error(
                "project",
                "is not a Google Cloud project id (6-30 lowercase letters, digits and hyphens)",
            ));
        }
        let location_ok = self.location == "global"
            || (self.location.len() <= 32
                && self.location.split('-').count() >= 2
                && self.location.split('-').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                }));
        if !location_ok {
            return Err(field_error(
                "location",
                "is not a Vertex AI location (such as us-central1 or global)",
            ));
        }
        let email_ok = self.client_email.len() <= 256
            && self
                .client_email
                .split_once('@')
                .is_some_and(|(name, domain)| !name.is_empty() && domain.contains('.'))
            && self.client_email.bytes().all(|b| b.is_ascii_graphic());
        if !email_ok {
            return Err(field_error(
                "clientEmail",
                "is not a service account's email",
            ));
        }
        if self
            .private_key_id
            .as_ref()
            .is_some_and(|id| id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(field_error(
                "privateKeyId",
                "is not a key id (letters and digits)",
            ));
        }
        Ok(())
    }

    /// The private key parses as an RSA key (PEM): checked when a credential
    /// arrives, not each time a stored one is read back (every call), where
    /// signing parses it anyway and a key that does not parse is refused.
    fn check_private_key(&self) -> Result<(), CredentialFieldError> {
        jsonwebtoken::EncodingKey::from_rsa_pem(self.private_key.expose_secret().as_bytes())
            .map(|_| ())
            .map_err(|_| {
                field_error(
                    "privateKey",
                    "is not an RSA private key in PEM (-----BEGIN PRIVATE KEY-----)",
                )
            })
    }

    /// The private key, to sign the token request only.
    pub fn private_key_pem(&self) -> &str {
        self.private_key.expose_secret()
    }

    /// The stored form: one JSON secret.
    pub fn to_secret(&self) -> ApiKey {
        let stored = serde_json::json!({
            "type": GCP_STORED_TYPE,
            "project": self.project,
            "location": self.location,
            "clientEmail": self.client_email,
            "privateKeyId": self.private_key_id,
            "privateKey": self.private_key.expose_secret(),
        });
        ApiKey::new(stored.to_string())
    }

    /// The stored form read back; `None` if `secret` is not one.
    pub fn from_secret(secret: &ApiKey) -> Option<Self> {
        Self::from_stored(&stored_document(secret, GCP_STORED_TYPE)?)
    }

    /// A stored document of [`GCP_STORED_TYPE`]: stored values were checked
    /// on the way in (the private key too); the fields that go into URLs
    /// are checked again, cheaply.
    fn from_stored(doc: &CredentialDocument) -> Option<Self> {
        Self::read(doc, GCP_TOKEN_URL).ok()
    }

    /// What key views show: the account, project and location, no secret.
    pub fn masked(&self) -> String {
        format!(
            "{} ({}, {})",
            self.client_email, self.project, self.location
        )
    }
}

impl fmt::Debug for GcpServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpServiceAccount")
            .field("project", &self.project)
            .field("location", &self.location)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

/// AWS credentials for Amazon Bedrock: an access key (and a session token
/// for temporary credentials) and the region to call. The secret access key
/// and the session token are secrets; key views show the access key id
/// masked, and the region.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    pub region: String,
}

/// The stored form's `type`.
const AWS_STORED_TYPE: &str = "aws_access_key";

impl AwsCredentials {
    /// Reads an uploaded credential: `accessKeyId`, `secretAccessKey`,
    /// `sessionToken?`, `region` (the AWS CLI's `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token` are accepted too).
    pub fn from_document(doc: &CredentialDocument) -> Result<Self, CredentialFieldError> {
        let text = |names: &[&'static str]| doc.text(names);
        if let Some(kind) = text(&["type"])?
            && kind != AWS_STORED_TYPE
        {
            return Err(field_error("type", "is not an AWS access key"));
        }
        let access_key_id = text(&["accessKeyId", "aws_access_key_id"])?
            .ok_or_else(|| field_error("accessKeyId", "is required"))?;
        let secret = text(&["secretAccessKey", "aws_secret_access_key"])?
            .ok_or_else(|| field_error("secretAccessKey", "is required"))?;
        let token = text(&["sessionToken", "aws_session_token"])?;
        let region = text(&["region"])?.ok_or_else(|| {
            field_error("region", "is required (the Bedrock region, e.g. us-east-1)")
        })?;
        let id_ok = (16..=128).contains(&access_key_id.len())
            && access_key_id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !id_ok {
            return Err(field_error(
                "accessKeyId",
                "is not an access key id (16-128 uppercase letters and digits, e.g. AKIA…)",
            ));
        }
        let printable = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !printable(secret, 128) || secret.len() < 16 {
            return Err(field_error(
                "secretAccessKey",
                "is not a secret access key (16-128 printable characters)",
            ));
        }
        if token.is_some_and(|t| !printable(t, 4096)) {
            return Err(field_error(
                "sessionToken",
                "is not a session token (printable, at most 4096 characters)",
            ));
        }
        if !Self::is_region(region) {
            return Err(field_error(
                "region",
                "is not an AWS region (such as us-east-1)",
            ));
        }
        Ok(Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: SecretString::from(secret.to_owned()),
            session_token: token.map(|t| SecretString::from(t.to_owned())),
            region: region.to_owned(),
        })
    }

    /// Whether `region` is an AWS region id (`us-east-1`, `us-gov-west-1`):
    /// it becomes part of a host name, so nothing else is let through.
    pub fn is_region(region: &str) -> bool {
        let parts: Vec<&str> = region.split('-').collect();
        (3..=4).contains(&parts.len())
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts[parts.len() - 1].parse::<u8>().is_ok()
    }

    /// Credentials the process holds itself (its role's, from the default
    /// chain), for `region`; `None` for a region that is not one.
    pub fn from_parts(
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
        region: &str,
    ) -> Option<Self> {
        Self::is_region(region).then(|| Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: SecretString::from(secret_access_key.to_owned()),
            session_token: session_token.map(|t| SecretString::from(t.to_owned())),
            region: region.to_owned(),
        })
    }

    /// The secret access key, for signing only.
    pub fn secret_access_key(&self) -> &str {
        self.secret_access_key.expose_secret()
    }

    /// The session token of temporary credentials, sent with each request.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(|t| t.expose_secret())
    }

    /// The stored form: one JSON secret.
    pub fn to_secret(&self) -> ApiKey {
        let stored = serde_json::json!({
            "type": AWS_STORED_TYPE,
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key.expose_secret(),
            "sessionToken": self.session_token(),
            "region": self.region,
        });
        ApiKey::new(stored.to_string())
    }

    /// The stored form read back; `None` if `secret` is not one.
    pub fn from_secret(secret: &ApiKey) -> Option<Self> {
        Self::from_document(&stored_document(secret, AWS_STORED_TYPE)?).ok()
    }

    /// What key views show: `AKIA…WXYZ (us-east-1)`.
    pub fn masked(&self) -> String {
        let id = &self.access_key_id;
        format!("{}…{} ({})", &id[..4], &id[id.len() - 4..], self.region)
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.masked())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod structured_tests {
    use super::*;

    /// A throwaway RSA key, PEM.
    pub(crate) fn pem() -> String {
        use aws_lc_rs::encoding::AsDer as _;
        use base64::Engine as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    fn doc(value: serde_json::Value) -> CredentialDocument {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn team_credentials_are_read_by_their_services_kind() {
        // An API key as it is, if it can be one.
        assert_eq!(
            team_credential(
                CredentialKind::ApiKey,
                " vck_team_0123456789 ",
                GCP_TOKEN_URL
            ),
            Ok(ApiKey::new("vck_team_0123456789"))
        );
        assert_eq!(
            team_credential(CredentialKind::ApiKey, "{\"a\": 1}", GCP_TOKEN_URL),
            Err(TeamCredentialError::NotAKey)
        );
        // A service account: the key file plus location, in its stored form.
        let key = pem();
        let file = serde_json::json!({
            "type": "service_account", "project_id": "acme-prod-1",
            "private_key": key, "client_email": "team@acme-prod-1.iam.gserviceaccount.com",
            "token_uri": GCP_TOKEN_URL, "location": "europe-west4"
        });
        let stored = team_credential(
            CredentialKind::GcpServiceAccount,
            &file.to_string(),
            GCP_TOKEN_URL,
        )
        .unwrap();
        let account = GcpServiceAccount::from_secret(&stored).unwrap();
        assert_eq!(account.location, "europe-west4");
        assert_eq!(account.private_key_pem(), key);
        // Refused with the field, never the value.
        let mut elsewhere = file.clone();
        elsewhere["token_uri"] = serde_json::json!("https://evil.example/token");
        let refused = team_credential(
            CredentialKind::GcpServiceAccount,
            &elsewhere.to_string(),
            GCP_TOKEN_URL,
        )
        .unwrap_err();
        assert!(refused.to_string().contains("token_uri"), "{refused}");
        assert!(!refused.to_string().contains("evil"), "{refused}");
        assert_eq!(
            team_credential(CredentialKind::GcpServiceAccount, &key, GCP_TOKEN_URL),
            Err(TeamCredentialError::NotADocument)
        );
        // An AWS access key with its region.
        let aws = serde_json::json!({
            "accessKeyId": "AKIATEAMSTATIC000001",
            "secretAccessKey": "teamStaticSecret000000000000000001",
            "region": "us-west-2"
        });
        let stored = team_credential(
            CredentialKind::AwsAccessKey,
            &aws.to_string(),
            GCP_TOKEN_URL,
        )
        .unwrap();
        assert_eq!(
            AwsCredentials::from_secret(&stored).unwrap().region,
            "us-west-2"
        );
        let refused = team_credential(
            CredentialKind::AwsAccessKey,
            r#"{"accessKeyId": "AKIATEAMSTATIC000001"}"#,
            GCP_TOKEN_URL,
        )
        .unwrap_err();
        assert!(refused.to_string().contains("secretAccessKey"), "{refused}");
    }

    #[test]
    fn a_key_file_is_accepted_as_it_is_and_round_trips() {
        let key = pem();
        let file = doc(serde_json::json!({
            "type": "service_account", "project_id": "acme-prod-1", "private_key_id": "abc123",
            "private_key": key, "client_email": "byok@acme-prod-1.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
            "location": "us-central1"
        }));
        let account = GcpServiceAccount::from_document(&file, GCP_TOKEN_URL).unwrap();
        let stored = account.to_secret();
        let back = GcpServiceAccount::from_secret(&stored).unwrap();
        assert_eq!(back.project, "acme-prod-1");
        assert_eq!(back.location, "us-central1");
        assert_eq!(back.private_key_pem(), key);
        assert_eq!(
            back.masked(),
            "byok@acme-prod-1.iam.gserviceaccount.com (acme-prod-1, us-central1)"
        );
        let printed = format!("{back:?} {file:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(GcpServiceAccount::from_secret(&ApiKey::new("sk-not-json-000000")).is_none());
    }

    #[test]
    fn bad_fields_are_named_and_never_echoed() {
        let key = pem();
        let good = serde_json::json!({
            "project": "acme-prod-1", "location": "europe-west4",
            "clientEmail": "sa@acme-prod-1.iam.gserviceaccount.com", "privateKey": key,
        });
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            GcpServiceAccount::from_document(&doc(v), GCP_TOKEN_URL)
        };
        assert!(with("location", serde_json::json!("global")).is_ok());
        for (field, value, named) in [
            ("token_uri", "https://evil.example/token", "token_uri"),
            ("project", "Acme", "project"),
            ("location", "us-central1.evil.com/x#", "location"),
            ("location", "evil", "location"),
            ("clientEmail", "not-an-email", "clientEmail"),
            (
                "privateKey",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                "privateKey",
            ),
            ("type", "authorized_user", "type"),
        ] {
            let err = with(field, serde_json::json!(value)).unwrap_err();
            assert_eq!(err.field, named, "{field}={value}");
            assert!(!err.to_string().contains(value), "{err}");
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("location");
        assert_eq!(
            GcpServiceAccount::from_document(&doc(missing), GCP_TOKEN_URL)
                .unwrap_err()
                .field,
            "location"
        );
        // The operator's token endpoint (tests) is the one accepted then.
        let mut local = good.clone();
        local["token_uri"] = serde_json::json!("http://127.0.0.1:9/token");
        assert!(GcpServiceAccount::from_document(&doc(local), "http://127.0.0.1:9/token").is_ok());
    }

    #[test]
    fn aws_credentials_are_checked_stored_and_masked() {
        let given = doc(serde_json::json!({
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "region": "eu-central-1"
        }));
        let creds = AwsCredentials::from_document(&given).unwrap();
        let back = AwsCredentials::from_secret(&creds.to_secret()).unwrap();
        assert_eq!(
            back.secret_access_key(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(back.session_token(), None);
        assert_eq!(back.masked(), "AKIA…MPLE (eu-central-1)");
        let printed = format!("{back:?} {given:?}");
        assert!(!printed.contains("wJalr"), "{printed}");
        // The AWS CLI's names, with a session token.
        let cli = doc(serde_json::json!({
            "aws_access_key_id": "ASIAIOSFODNN7EXAMPLE",
            "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_session_token": "IQoJb3JpZ2luX2VjEXAMPLE",
            "region": "us-gov-west-1"
        }));
        let temporary = AwsCredentials::from_document(&cli).unwrap();
        assert_eq!(temporary.session_token(), Some("IQoJb3JpZ2luX2VjEXAMPLE"));
        let good = serde_json::json!({
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "region": "us-east-1"
        });
        for (field, value) in [
            ("accessKeyId", "akia-lowercase-000000"),
            ("secretAccessKey", "short"),
            ("region", "us-east-1.evil.example"),
            ("region", "useast1"),
            ("sessionToken", "has space inside"),
        ] {
            let mut v = good.clone();
            v[field] = serde_json::json!(value);
            let err = AwsCredentials::from_document(&doc(v)).unwrap_err();
            assert_eq!(err.field, field, "{field}={value}");
            assert!(!err.to_string().contains(value), "{err}");
        }
        assert!(
            AwsCredentials::from_secret(
                &GcpServiceAccount::from_document(
                    &doc(
                        serde_json::json!({"project": "acme-prod-1", "location": "global",
                "clientEmail": "sa@acme-prod-1.iam.gserviceaccount.com", "privateKey": pem()})
                    ),
                    GCP_TOKEN_URL
                )
                .unwrap()
                .to_secret()
            )
            .is_none()
        );
    }
}

/// What a stored key is, read back: the closed set of credentials. Every
/// one is kept as one secret string: an API key as it is, a structured
/// credential as JSON tagged with its `type` (`to_secret`).
#[derive(Clone, Debug)]
pub enum Credential {
    ApiKey(ApiKey),
    Aws(AwsCredentials),
    GcpServiceAccount(GcpServiceAccount),
}

/// A stored secret's JSON document, if it is one (parsed once), with its
/// `type` tag.
fn stored_json(stored: &ApiKey) -> Option<(CredentialDocument, String)> {
    let text = stored.expose();
    if !text.starts_with('{') {
        return None;
    }
    let doc: CredentialDocument = serde_json::from_str(text).ok()?;
    let kind = doc.0.get("type")?.as_str()?.to_owned();
    Some((doc, kind))
}

/// A stored secret's document if it is tagged `kind`.
fn stored_document(stored: &ApiKey, kind: &str) -> Option<CredentialDocument> {
    stored_json(stored)
        .filter(|(_, tag)| tag == kind)
        .map(|(doc, _)| doc)
}

impl Credential {
    /// A stored secret read as what it is: a structured credential by its
    /// `type` tag (the JSON parsed once), anything else an API key.
    pub fn read(stored: &ApiKey) -> Self {
        let structured = stored_json(stored).and_then(|(doc, kind)| match kind.as_str() {
            GCP_STORED_TYPE => {
                GcpServiceAccount::from_stored(&doc).map(Credential::GcpServiceAccount)
            }
            AWS_STORED_TYPE => AwsCredentials::from_document(&doc)
                .ok()
                .map(Credential::Aws),
            _ => None,
        });
        structured.unwrap_or_else(|| Credential::ApiKey(stored.clone()))
    }

    /// A stored secret read as a credential of `kind`; `None` if it is not one.
    pub fn of_kind(kind: CredentialKind, stored: &ApiKey) -> Option<Self> {
        let credential = Self::read(stored);
        (credential.kind() == kind).then_some(credential)
    }

    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::ApiKey(_) => CredentialKind::ApiKey,
            Credential::Aws(_) => CredentialKind::AwsAccessKey,
            Credential::GcpServiceAccount(_) => CredentialKind::GcpServiceAccount,
        }
    }

    /// What key views show: no secret part.
    pub fn masked(&self) -> String {
        match self {
            Credential::ApiKey(key) => super::key::mask_api_key(key),
            Credential::Aws(aws) => aws.masked(),
            Credential::GcpServiceAccount(account) => account.masked(),
        }
    }

    /// Each secret part on its own (the API key; the private key; the
    /// secret access key and session token), to scrub wherever upstream
    /// text goes.
    pub fn secret_parts(&self) -> Vec<ApiKey> {
        match self {
            Credential::ApiKey(key) => vec![key.clone()],
            Credential::Aws(aws) => std::iter::once(ApiKey::new(aws.secret_access_key()))
                .chain(aws.session_token().map(ApiKey::new))
                .collect(),
            Credential::GcpServiceAccount(account) => {
                vec![ApiKey::new(account.private_key_pem())]
            }
        }
    }
}

/// Every secret text a stored credential holds, to scrub wherever upstream
/// text goes: the stored value itself and each of its secret parts.
pub fn credential_secret_parts(stored: &ApiKey) -> Vec<ApiKey> {
    let mut parts = vec![stored.clone()];
    match Credential::read(stored) {
        Credential::ApiKey(_) => {}
        structured => parts.extend(structured.secret_parts()),
    }
    parts
}
