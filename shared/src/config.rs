//! Configuration, read once at start from the environment with the variable
//! names operators rely on. `Config::from_env` is the only place that reads
//! `std::env`; everything else receives a `Config`.

use crate::domain::{KeyStrategy, ModelId, Service};
use crate::domain::{TeamCredentials, Upstreams};
pub use crate::upstream::UpstreamTimeouts;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which storage backend serves keys and settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// One local SQLite file with sealed secrets (byok-local's default).
    Embedded,
    /// DynamoDB metadata and Secrets Manager secrets (the default on Lambda).
    Aws,
}

/// Where the console sends a user to sign in (`BYOK_OIDC_AUTHORIZATION_URL`,
/// `BYOK_OIDC_TOKEN_URL`, `BYOK_OIDC_CLIENT_ID`, `BYOK_OIDC_SCOPE`): an
/// OIDC issuer's endpoints and the console's public client id (no secret:
/// the browser proves the exchange with PKCE).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleOidc {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    pub scope: String,
}

impl ConsoleOidc {
    fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let auth = get("BYOK_OIDC_AUTHORIZATION_URL");
        let token = get("BYOK_OIDC_TOKEN_URL");
        let client = get("BYOK_OIDC_CLIENT_ID");
        let (auth, token, client_id) = match (auth, token, client) {
            (None, None, None) => return Ok(None),
            (Some(a), Some(t), Some(c)) if !c.trim().is_empty() => (a, t, c.trim().to_owned()),
            _ => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_OIDC_CLIENT_ID",
                    expected: "BYOK_OIDC_AUTHORIZATION_URL, BYOK_OIDC_TOKEN_URL and BYOK_OIDC_CLIENT_ID set together",
                });
            }
        };
        let endpoint = |name: &'static str, value: String| -> Result<String, ConfigError> {
            let value = value.trim().to_owned();
            if secure_or_loopback(&value) {
                Ok(value)
            } else {
                Err(ConfigError::Invalid {
                    name,
                    expected: "an https URL (or http on this machine)",
                })
            }
        };
        Ok(Some(Self {
            authorization_endpoint: endpoint("BYOK_OIDC_AUTHORIZATION_URL", auth)?,
            token_endpoint: endpoint("BYOK_OIDC_TOKEN_URL", token)?,
            client_id,
            scope: get("BYOK_OIDC_SCOPE").unwrap_or_else(|| "openid".to_owned()),
        }))
    }
}

/// An https URL with a host, or plain http to this machine.
fn secure_or_loopback(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| match u.scheme() {
        "https" => u.host().is_some(),
        "http" => matches!(
            u.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        ),
        _ => false,
    })
}

/// Everything the binaries need to know, parsed and checked.
#[derive(Debug)]
pub struct Config {
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// Base64 of the 32-byte master key; else one is generated into `data_dir`.
    pub master_key: Option<SecretString>,
    pub listen: SocketAddr,
    /// byok-local's console may hand its page a token for the dev user
    /// (only while listening on loopback; `BYOK_CONSOLE_DEV_SESSION`,
    /// default on).
    pub console_dev_session: bool,
    /// The console's sign-in through an OIDC issuer (authorization code
    /// with PKCE), when `BYOK_OIDC_*` is set.
    pub console_oidc: Option<ConsoleOidc>,
    /// How byok-local treats slow, idle and numerous clients.
    pub connections: ConnectionLimits,
    /// HS256 secret that signs user tokens (byok-local: generated if unset).
    pub jwt_secret: Option<SecretString>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// An identity provider's JWKS: RS256/ES256 tokens signed by its keys
    /// are accepted (`BYOK_JWKS_URL`; https, or http on a loopback host).
    pub jwks_url: Option<String>,
    /// Tokens expiring further away than this are refused (`BYOK_JWT_MAX_TTL_SECS`).
    pub jwt_max_ttl_secs: Option<u64>,
    /// The claim listing the caller's groups or roles, `admin` among them
    /// granting admin (`BYOK_ADMIN_CLAIM`, a dotted path such as
    /// `realm_access.roles`); unset: `cognito:groups` or `groups`.
    pub admin_claim: Option<String>,
    pub validate_per_minute: u32,
    /// Completions per user per minute on team paths
    /// (`BYOK_TEAM_REQUESTS_PER_MINUTE`, default 60; `0`: no limit).
    pub team_requests_per_minute: Option<u32>,
    /// Completions per user per minute on any path
    /// (`BYOK_REQUESTS_PER_MINUTE`; unset or `0`: no limit).
    pub requests_per_minute: Option<u32>,
    /// How long raw usage entries are kept (`BYOK_USAGE_RETENTION_DAYS`,
    /// default 30; `0`: only the day aggregates are kept).
    pub usage_retention: Option<Duration>,
    /// The token claim naming the caller's tenant (`BYOK_TENANT_CLAIM`).
    pub tenant_claim: Option<String>,
    /// Browser origins allowed to call the API (`BYOK_CORS_ORIGINS`);
    /// `None`: no CORS headers at all.
    pub cors: Option<CorsPolicy>,
    /// Tokens a budget reserves for the answer of a request that names no
    /// `max_tokens` (`BYOK_DEFAULT_RESERVE_TOKENS`, default 4096).
    pub default_reserve_tokens: u64,
    /// How long an unsettled budget reservation counts
    /// (`BYOK_RESERVATION_TTL_SECS`, default 900).
    pub reservation_ttl: Duration,
    /// Where budget alerts are POSTed (`BYOK_ALERT_WEBHOOK_URL`), and the
    /// secret that signs them (`BYOK_ALERT_WEBHOOK_SECRET`).
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_secret: Option<SecretString>,
    /// On AWS, the Secrets Manager secret holding the webhook's signing
    /// secret (`BYOK_ALERT_WEBHOOK_SECRET_ARN`), read at cold start.
    pub alert_webhook_secret_arn: Option<String>,
    /// How long a key check waits on its provider (`BYOK_VALIDATE_TIMEOUT_SECS`).
    pub validate_timeout: Duration,
    pub table_name: Option<String>,
    pub secret_prefix: String,
    /// KMS key that encrypts new secrets (Secrets Manager); else the account default.
    pub kms_key_id: Option<String>,
    /// Days a deleted secret can be recovered; 0 deletes at once.
    pub secret_recovery_days: u32,
    /// Create the DynamoDB table if missing (local emulator runs; never on Lambda).
    pub create_table: bool,
    /// Operator secrets holding team keys, by service (Secrets Manager ARNs).
    pub team_secret_arns: BTreeMap<Service, String>,
    pub secret_cache_ttl: Duration,
    pub secret_cache_capacity: usize,
    pub upstreams: Upstreams,
    pub team: TeamCredentials,
    /// Models tried, in order, when the requested one fails before its first
    /// byte (`BYOK_FALLBACK_MODELS`, comma-separated).
    pub fallback_models: Vec<ModelId>,
    /// Upstream timeouts: connect, first byte, idle between chunks.
    pub upstream_timeouts: UpstreamTimeouts,
    /// A model catalog file served instead of the shipped one
    /// (`BYOK_CATALOG_FILE`; `byok-local catalog refresh` writes it).
    pub catalog_file: Option<PathBuf>,
    pub rotation: RotationConfig,
    /// Several keys per service (`BYOK_MAX_KEYS_PER_SERVICE`,
    /// `BYOK_KEY_STRATEGY`, `BYOK_LAST_USED_GRANULARITY_SECS`,
    /// `BYOK_TEAM_FALLBACK_ON_USER_KEY_FAILURE`).
    pub keys: KeysConfig,
    /// Where Google service accounts are exchanged for access tokens
    /// (`BYOK_GCP_TOKEN_URL`; Google's endpoint unless the operator
    /// overrides it, for tests). Accounts naming another are refused.
    pub gcp_token_url: String,
    /// The team path serves `bedrock/*` with the process's own AWS
    /// credentials (the default chain: a Lambda function's role) in this
    /// region (`BYOK_TEAM_BEDROCK=role`, `BYOK_TEAM_BEDROCK_REGION`).
    pub team_bedrock_region: Option<String>,
}

/// How several keys of one service are kept and tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysConfig {
    pub max_per_service: usize,
    pub strategy: KeyStrategy,
    pub last_used_granularity: Duration,
    /// After every user key of the resolved service failed, the team
    /// credential is tried (with the user's consent). Off by default.
    pub team_fallback_on_user_key_failure: bool,
    /// User-provider paths go through the team gateway, the user's key in
    /// the request (`BYOK_ROUTE_USER_KEYS_VIA_GATEWAY`). Off by default.
    pub user_keys_via_gateway: bool,
    /// Personal API keys a user may hold at once (`BYOK_MAX_API_TOKENS`).
    pub max_api_tokens: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            max_per_service: 5,
            strategy: KeyStrategy::Priority,
            last_used_granularity: Duration::from_secs(300),
            team_fallback_on_user_key_failure: false,
            user_keys_via_gateway: false,
            max_api_tokens: crate::tokens::DEFAULT_MAX_PER_USER,
        }
    }
}

/// Key rotation and the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// The rotation function Secrets Manager invokes (`BYOK_ROTATION_FUNCTION_ARN`);
    /// unset: rotations run in this process.
    pub function_arn: Option<String>,
    /// The EventBridge bus key events go to (`BYOK_EVENT_BUS_NAME`).
    pub event_bus: Option<String>,
    /// A file key events are appended to as JSON lines (`BYOK_EVENTS_FILE`).
    pub events_file: Option<PathBuf>,
    /// `BYOK_REVALIDATE_AFTER_HOURS`, `BYOK_ROTATION_AGE_DAYS`,
    /// `BYOK_ORPHAN_GRACE_MINUTES` (fractions allowed).
    pub sweep: SweepPolicy,
}

/// What the sweep checks and how old is too old.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepPolicy {
    /// Keys last validated longer ago than this (or never) are checked.
    pub revalidate_after: Duration,
    /// Keys whose material is older than this raise `key.rotation_due`.
    pub rotation_age: Duration,
    /// Unreferenced secrets unchanged for this long are removed.
    pub orphan_grace: Duration,
    /// Provider checks in flight at once.
    pub concurrency: usize,
    /// Keys unused for this long raise `key.stale` (`BYOK_STALE_AFTER_DAYS`).
    pub stale_after: Duration,
}

impl Default for SweepPolicy {
    fn default() -> Self {
        Self {
            revalidate_after: Duration::from_secs(24 * 3600),
            rotation_age: Duration::from_secs(90 * 24 * 3600),
            orphan_grace: Duration::from_secs(3600),
            concurrency: 4,
            stale_after: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Which browser origins may call the API (CORS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Normalised origins (`scheme://host[:port]`); empty: any origin (`*`).
    pub origins: Vec<String>,
    /// Browsers may send credentials (cookies) along (`BYOK_CORS_ALLOW_CREDENTIALS`).
    pub allow_credentials: bool,
}

impl CorsPolicy {
    /// Parses `BYOK_CORS_ORIGINS`: `*`, or a comma list of origins.
    pub fn parse(list: &str, allow_credentials: bool) -> Result<Self, ConfigError> {
        let invalid = ConfigError::Invalid {
            name: "BYOK_CORS_ORIGINS",
            expected: "`*` or a comma list of origins like https://app.example.com \
                       (`*` is refused with BYOK_CORS_ALLOW_CREDENTIALS=true)",
        };
        let items: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items == ["*"] {
            if allow_credentials {
                return Err(invalid);
            }
            return Ok(Self {
                origins: Vec::new(),
                allow_credentials,
            });
        }
        let mut origins = Vec::with_capacity(items.len());
        for item in items {
            let url = url::Url::parse(item).map_err(|_| invalid.clone())?;
            let origin = url.origin();
            let plain = matches!(url.scheme(), "http" | "https")
                && origin.is_tuple()
                && url.username().is_empty()
                && url.password().is_none()
                && matches!(url.path(), "" | "/")
                && url.query().is_none()
                && url.fragment().is_none();
            if !plain {
                return Err(invalid);
            }
            origins.push(origin.ascii_serialization());
        }
        if origins.is_empty() {
            return Err(invalid);
        }
        Ok(Self {
            origins,
            allow_credentials,
        })
    }
}

/// A variable held a value that cannot be used.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be one of {expected}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
    },
    #[error("{name} is not a valid absolute URL")]
    BadUrl { name: &'static str },
    #[error("{name} {problem}")]
    BadTeamKey {
        name: &'static str,
        problem: crate::domain::TeamCredentialError,
    },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// byok-local's bounds on clients, so slow or idle ones cannot hold the
/// server: how long a request head may take (the same bound closes a
/// kept-alive connection that sends no next request within it: the idle
/// timeout), how long a whole request body may take, and how many
/// connections are served at once (more wait in the listen backlog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `BYOK_HEADER_TIMEOUT_SECS` (default 10): a request head, and the
    /// wait for the next request on a kept-alive connection.
    pub header_timeout: Duration,
    /// `BYOK_BODY_TIMEOUT_SECS` (default 30).
    pub body_timeout: Duration,
    /// `BYOK_MAX_CONNECTIONS` (default 1024).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}
/// Tokens a budget reserves for the answer when a request names no `max_tokens`.
pub const DEFAULT_RESERVE_TOKENS: u64 = 4_096;
/// How long an unsettled budget reservation counts.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(900);
pub const DEFAULT_DATA_DIR: &str = ".byok";
pub const DEFAULT_SECRET_PREFIX: &str = "byok/";
pub const DEFAULT_VALIDATE_PER_MINUTE: u32 = 5;
pub const DEFAULT_VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SECRET_RECOVERY_DAYS: u32 = 7;
pub const DEFAULT_TEAM_REQUESTS_PER_MINUTE: u32 = 60;
pub const DEFAULT_USAGE_RETENTION_DAYS: u64 = 30;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let on_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();

        let store = match get("BYOK_STORE").as_deref() {
            None if on_lambda => StoreKind::Aws,
            None | Some("embedded") => StoreKind::Embedded,
            Some("aws") => StoreKind::Aws,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_STORE",
                    expected: "embedded, aws",
                });
            }
        };
        let listen = get("BYOK_LISTEN")
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned())
            .parse()
            .map_err(|_| ConfigError::Invalid {
                name: "BYOK_LISTEN",
                expected: "an address like 127.0.0.1:8787",
            })?;
        let validate_per_minute = match get("BYOK_VALIDATE_PER_MINUTE") {
            None => DEFAULT_VALIDATE_PER_MINUTE,
            Some(v) => v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ConfigError::Invalid {
                    name: "BYOK_VALIDATE_PER_MINUTE",
                    expected: "a positive whole number",
                })?,
        };

        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                    name,
                    expected: "a whole number",
                }),
            }
        };
        let per_minute = |name: &'static str, default: u32| -> Result<Option<u32>, ConfigError> {
            let n = match get(name) {
                None => default,
                Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                    name,
                    expected: "a whole number (0: no limit)",
                })?,
            };
            Ok((n > 0).then_some(n))
        };
        let team_requests_per_minute = per_minute(
            "BYOK_TEAM_REQUESTS_PER_MINUTE",
            DEFAULT_TEAM_REQUESTS_PER_MINUTE,
        )?;
        let requests_per_minute = per_minute("BYOK_REQUESTS_PER_MINUTE", 0)?;
        let retention_days = number("BYOK_USAGE_RETENTION_DAYS", DEFAULT_USAGE_RETENTION_DAYS)?;
        if retention_days > 3650 {
            return Err(ConfigError::Invalid {
                name: "BYOK_USAGE_RETENTION_DAYS",
                expected: "a number of days from 0 to 3650",
            });
        }
        let usage_retention =
            (retention_days > 0).then(|| Duration::from_secs(retention_days * 86_400));
        let default_reserve_tokens = number("BYOK_DEFAULT_RESERVE_TOKENS", DEFAULT_RESERVE_TOKENS)?;
        if default_reserve_tokens > 10_000_000 {
            return Err(ConfigError::Invalid {
                name: "BYOK_DEFAULT_RESERVE_TOKENS",
                expected: "a number of tokens from 0 to 10000000",
            });
        }
        let reservation_ttl = Duration::from_secs(
            Some(number(
                "BYOK_RESERVATION_TTL_SECS",
                DEFAULT_RESERVATION_TTL.as_secs(),
            )?)
            .filter(|s| (1..=86_400).contains(s))
            .ok_or(ConfigError::Invalid {
                name: "BYOK_RESERVATION_TTL_SECS",
                expected: "a number of seconds from 1 to 86400",
            })?,
        );
        let jwks_url = get("BYOK_JWKS_URL").map(|u| u.trim().to_owned());
        if let Some(url) = &jwks_url {
            // Plain http only to this machine (a local identity provider, tests).
            if !secure_or_loopback(url) {
                return Err(ConfigError::Invalid {
                    name: "BYOK_JWKS_URL",
                    expected: "an https URL (http only on localhost)",
                });
            }
        }
        let jwt_max_ttl_secs = match get("BYOK_JWT_MAX_TTL_SECS") {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or(
                ConfigError::Invalid {
                    name: "BYOK_JWT_MAX_TTL_SECS",
                    expected: "a positive whole number of seconds",
                },
            )?),
        };
        let console_oidc = ConsoleOidc::from_vars(&get)?;
        let console_dev_session = match get("BYOK_CONSOLE_DEV_SESSION").as_deref() {
            None | Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_CONSOLE_DEV_SESSION",
                    expected: "true or false",
                });
            }
        };
        let allow_credentials = match get("BYOK_CORS_ALLOW_CREDENTIALS").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_CORS_ALLOW_CREDENTIALS",
                    expected: "true or false",
                });
            }
        };
        let cors = get("BYOK_CORS_ORIGINS")
            .map(|list| CorsPolicy::parse(&list, allow_credentials))
            .transpose()?;
        let alert_webhook_url = get("BYOK_ALERT_WEBHOOK_URL").map(|u| u.trim().to_owned());
        if let Some(url) = &alert_webhook_url {
            let ok = url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
            if !ok {
                return Err(ConfigError::Invalid {
                    name: "BYOK_ALERT_WEBHOOK_URL",
                    expected: "an http(s) URL",
                });
            }
        }
        let secret_recovery_days = u32::try_from(number(
            "BYOK_SECRET_RECOVERY_DAYS",
            DEFAULT_SECRET_RECOVERY_DAYS.into(),
        )?)
        .ok()
        .filter(|d| *d == 0 || (7..=30).contains(d))
        .ok_or(ConfigError::Invalid {
            name: "BYOK_SECRET_RECOVERY_DAYS",
            expected: "0 (delete at once) or 7 to 30",
        })?;
        let secret_cache_ttl = Duration::from_secs(number(
            "BYOK_SECRET_CACHE_TTL_SECS",
            crate::store::cache::DEFAULT_TTL.as_secs(),
        )?);
        let secret_cache_capacity = usize::try_from(number(
            "BYOK_SECRET_CACHE_SIZE",
            crate::store::cache::DEFAULT_CAPACITY as u64,
        )?)
        .unwrap_or(crate::store::cache::DEFAULT_CAPACITY);
        let create_table = match get("BYOK_CREATE_TABLE").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_CREATE_TABLE",
                    expected: "true or false",
                });
            }
        };

        let seconds = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or(ConfigError::Invalid {
                        name,
                        expected: "a number of seconds above 0 (fractions allowed)",
                    }),
            }
        };
        let limits = ConnectionLimits::default();
        let connections = ConnectionLimits {
            header_timeout: seconds("BYOK_HEADER_TIMEOUT_SECS", limits.header_timeout)?,
            body_timeout: seconds("BYOK_BODY_TIMEOUT_SECS", limits.body_timeout)?,
            max_connections: match number("BYOK_MAX_CONNECTIONS", 1024)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "BYOK_MAX_CONNECTIONS",
                        expected: "a whole number above 0",
                    });
                }
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
        };
        let validate_timeout = seconds("BYOK_VALIDATE_TIMEOUT_SECS", DEFAULT_VALIDATE_TIMEOUT)?;
        let defaults = UpstreamTimeouts::default();
        let upstream_timeouts = UpstreamTimeouts {
            connect: seconds("BYOK_UPSTREAM_CONNECT_TIMEOUT_SECS", defaults.connect)?,
            first_byte: seconds("BYOK_UPSTREAM_FIRST_BYTE_TIMEOUT_SECS", defaults.first_byte)?,
            idle: seconds("BYOK_UPSTREAM_IDLE_TIMEOUT_SECS", defaults.idle)?,
        };
        let fallback_models = match get("BYOK_FALLBACK_MODELS") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(ModelId::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| ConfigError::Invalid {
                    name: "BYOK_FALLBACK_MODELS",
                    expected: "comma-separated model ids (provider/model)",
                })?,
        };

        let span = |name: &'static str, unit_secs: f64, default: Duration| match get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0 && *n * unit_secs <= 1e10)
                .map(|n| Duration::from_secs_f64(n * unit_secs))
                .ok_or(ConfigError::Invalid {
                    name,
                    expected: "a number of at least 0 (fractions allowed)",
                }),
        };
        let sweep_defaults = SweepPolicy::default();
        let rotation = RotationConfig {
            function_arn: get("BYOK_ROTATION_FUNCTION_ARN"),
            event_bus: get("BYOK_EVENT_BUS_NAME"),
            events_file: get("BYOK_EVENTS_FILE").map(PathBuf::from),
            sweep: SweepPolicy {
                revalidate_after: span(
                    "BYOK_REVALIDATE_AFTER_HOURS",
                    3600.0,
                    sweep_defaults.revalidate_after,
                )?,
                rotation_age: span(
                    "BYOK_ROTATION_AGE_DAYS",
                    86_400.0,
                    sweep_defaults.rotation_age,
                )?,
                orphan_grace: span(
                    "BYOK_ORPHAN_GRACE_MINUTES",
                    60.0,
                    sweep_defaults.orphan_grace,
                )?,
                concurrency: sweep_defaults.concurrency,
                stale_after: span(
                    "BYOK_STALE_AFTER_DAYS",
                    86_400.0,
                    sweep_defaults.stale_after,
                )?,
            },
        };
        let key_defaults = KeysConfig::default();
        let keys = KeysConfig {
            max_per_service: usize::try_from(number(
                "BYOK_MAX_KEYS_PER_SERVICE",
                key_defaults.max_per_service as u64,
            )?)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or(ConfigError::Invalid {
                name: "BYOK_MAX_KEYS_PER_SERVICE",
                expected: "a whole number from 1 to 100",
            })?,
            max_api_tokens: usize::try_from(number(
                "BYOK_MAX_API_TOKENS",
                key_defaults.max_api_tokens as u64,
            )?)
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or(ConfigError::Invalid {
                name: "BYOK_MAX_API_TOKENS",
                expected: "a whole number from 1 to 1000",
            })?,
            strategy: match get("BYOK_KEY_STRATEGY").as_deref().map(str::trim) {
                None | Some("priority") => KeyStrategy::Priority,
                Some("round_robin") => KeyStrategy::RoundRobin,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "BYOK_KEY_STRATEGY",
                        expected: "priority or round_robin",
                    });
                }
            },
            last_used_granularity: Duration::from_secs(number(
                "BYOK_LAST_USED_GRANULARITY_SECS",
                key_defaults.last_used_granularity.as_secs(),
            )?),
            team_fallback_on_user_key_failure: match get("BYOK_TEAM_FALLBACK_ON_USER_KEY_FAILURE")
                .as_deref()
            {
                None | Some("false" | "0") => false,
                Some("true" | "1") => true,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "BYOK_TEAM_FALLBACK_ON_USER_KEY_FAILURE",
                        expected: "true or false",
                    });
                }
            },
            user_keys_via_gateway: match get("BYOK_ROUTE_USER_KEYS_VIA_GATEWAY").as_deref() {
                None | Some("false" | "0") => false,
                Some("true" | "1") => true,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "BYOK_ROUTE_USER_KEYS_VIA_GATEWAY",
                        expected: "true or false",
                    });
                }
            },
        };

        let mut upstreams = Upstreams::default();
        let team = TeamCredentials::default();
        let mut team_secret_arns = BTreeMap::new();
        let mut team_values = Vec::new();
        for service in Service::ALL {
            let var = service.base_url_env();
            if let Some(url) = get(var) {
                let url = url.trim().trim_end_matches('/').to_owned();
                if url::Url::parse(&url).is_err() {
                    return Err(ConfigError::BadUrl { name: var });
                }
                upstreams.set(service, url);
            }
            if let Some(value) = get(service.team_key_env()) {
                // Read below, once the token endpoint is known.
                team_values.push((service, zeroize::Zeroizing::new(value)));
            }
            if let Some(arn) = get(service.team_secret_env()) {
                team_secret_arns.insert(service, arn.trim().to_owned());
            }
        }

        let gcp_token_url = match get("BYOK_GCP_TOKEN_URL") {
            None => crate::domain::GCP_TOKEN_URL.to_owned(),
            Some(url) => {
                let url = url.trim().to_owned();
                if url::Url::parse(&url).is_err() {
                    return Err(ConfigError::BadUrl {
                        name: "BYOK_GCP_TOKEN_URL",
                    });
                }
                url
            }
        };

        for (service, value) in team_values {
            let key = crate::domain::team_credential(
                service.provider().credential,
                &value,
                &gcp_token_url,
            )
            .map_err(|problem| ConfigError::BadTeamKey {
                name: service.team_key_env(),
                problem,
            })?;
            team.insert(service, key);
        }

        let team_bedrock_region = match get("BYOK_TEAM_BEDROCK").as_deref().map(str::trim) {
            None | Some("" | "disabled") => None,
            Some("role") => {
                let region = get("BYOK_TEAM_BEDROCK_REGION").unwrap_or_default();
                let region = region.trim();
                if !crate::domain::AwsCredentials::is_region(region) {
                    return Err(ConfigError::Invalid {
                        name: "BYOK_TEAM_BEDROCK_REGION",
                        expected: "an AWS region such as us-east-1 (with BYOK_TEAM_BEDROCK=role)",
                    });
                }
                Some(region.to_owned())
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "BYOK_TEAM_BEDROCK",
                    expected: "role, or unset",
                });
            }
        };

        Ok(Self {
            team_bedrock_region,
            gcp_token_url,
            store,
            data_dir: get("BYOK_DATA_DIR").map_or_else(|| DEFAULT_DATA_DIR.into(), PathBuf::from),
            master_key: get("BYOK_MASTER_KEY").map(SecretString::from),
            listen,
            console_dev_session,
            console_oidc,
            connections,
            jwt_secret: get("BYOK_JWT_SECRET").map(SecretString::from),
            jwt_issuer: get("BYOK_JWT_ISSUER"),
            jwt_audience: get("BYOK_JWT_AUDIENCE"),
            jwks_url,
            jwt_max_ttl_secs,
            admin_claim: get("BYOK_ADMIN_CLAIM").map(|c| c.trim().to_owned()),
            validate_per_minute,
            team_requests_per_minute,
            requests_per_minute,
            usage_retention,
            tenant_claim: get("BYOK_TENANT_CLAIM").map(|c| c.trim().to_owned()),
            cors,
            default_reserve_tokens,
            reservation_ttl,
            alert_webhook_url,
            alert_webhook_secret: get("BYOK_ALERT_WEBHOOK_SECRET").map(SecretString::from),
            alert_webhook_secret_arn: get("BYOK_ALERT_WEBHOOK_SECRET_ARN")
                .map(|a| a.trim().to_owned()),
            validate_timeout,
            table_name: get("BYOK_TABLE_NAME"),
            secret_prefix: get("BYOK_SECRET_PREFIX")
                .unwrap_or_else(|| DEFAULT_SECRET_PREFIX.to_owned()),
            kms_key_id: get("BYOK_KMS_KEY_ID"),
            secret_recovery_days,
            create_table,
            team_secret_arns,
            secret_cache_ttl,
            secret_cache_capacity,
            upstreams,
            team,
            fallback_models,
            upstream_timeouts,
            catalog_file: get("BYOK_CATALOG_FILE").map(PathBuf::from),
            rotation,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_consoles_oidc_sign_in_needs_all_three_and_safe_urls() {
        assert_eq!(config(&[]).unwrap().console_oidc, None);
        assert!(config(&[]).unwrap().console_dev_session);
        assert!(config(&[("BYOK_OIDC_CLIENT_ID", "abc")]).is_err());
        let set = |auth: &'static str| {
            config(&[
                ("BYOK_OIDC_AUTHORIZATION_URL", auth),
                ("BYOK_OIDC_TOKEN_URL", "https://id.example.com/oauth2/token"),
                ("BYOK_OIDC_CLIENT_ID", "abc"),
            ])
        };
        let oidc = set("https://id.example.com/oauth2/authorize")
            .unwrap()
            .console_oidc
            .unwrap();
        assert_eq!(oidc.scope, "openid");
        assert_eq!(oidc.client_id, "abc");
        assert!(set("http://127.0.0.1:9000/authorize").is_ok());
        assert!(set("http://id.example.com/authorize").is_err());
        assert!(set("javascript:alert(1)").is_err());
        assert!(config(&[("BYOK_CONSOLE_DEV_SESSION", "maybe")]).is_err());
        assert!(
            !config(&[("BYOK_CONSOLE_DEV_SESSION", "false")])
                .unwrap()
                .console_dev_session
        );
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.store, StoreKind::Embedded);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(".byok"));
        assert_eq!(c.validate_per_minute, 5);
        assert_eq!(c.secret_prefix, "byok/");
        assert_eq!(
            c.upstreams.base_url(Service::OpenAi),
            "https://api.openai.com/v1"
        );
        assert!(!c.team.has(Service::Gateway));
        assert_eq!(
            config(&[("AWS_LAMBDA_FUNCTION_NAME", "keys")])
                .unwrap()
                .store,
            StoreKind::Aws
        );
    }

    #[test]
    fn a_team_key_that_cannot_be_a_key_is_refused_naming_only_the_variable() {
        for bad in [
            "short",
            "team key with spaces",
            "vck_tab\tinside0000",
            "\u{e9}t\u{e9}0000000000",
        ] {
            let err = config(&[("AI_GATEWAY_API_KEY", bad)]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("AI_GATEWAY_API_KEY"), "{text}");
            assert!(!text.contains(bad.trim()), "{text}");
        }
        assert!(config(&[("AI_GATEWAY_API_KEY", "team:CANARY:gateway:secret")]).is_ok());
    }

    #[test]
    fn reads_the_documented_names() {
        let c = config(&[
            ("BYOK_STORE", "aws"),
            ("BYOK_LISTEN", "127.0.0.1:0"),
            ("BYOK_DATA_DIR", "/tmp/x"),
            ("BYOK_VALIDATE_PER_MINUTE", "9"),
            ("BYOK_OPENAI_BASE_URL", "http://127.0.0.1:9000/v1/"),
            ("AI_GATEWAY_URL", "http://127.0.0.1:9001/v1"),
            ("AI_GATEWAY_API_KEY", "vck_team_0123456789abcdef"),
            ("OPENROUTER_API_KEY", "sk-or-v1-team0123456789"),
            ("GROQ_API_KEY", "  "),
            (
                "BYOK_TEAM_GATEWAY_SECRET_ARN",
                "arn:aws:secretsmanager:us-east-1:1:secret:team-gw",
            ),
            ("BYOK_SECRET_RECOVERY_DAYS", "0"),
            ("BYOK_KMS_KEY_ID", "alias/byok-dev"),
            ("BYOK_CREATE_TABLE", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.team_secret_arns
                .get(&Service::Gateway)
                .map(String::as_str),
            Some("arn:aws:secretsmanager:us-east-1:1:secret:team-gw")
        );
        assert_eq!(c.secret_recovery_days, 0);
        assert_eq!(c.kms_key_id.as_deref(), Some("alias/byok-dev"));
        assert!(c.create_table);
        assert_eq!(c.store, StoreKind::Aws);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.validate_per_minute, 9);
        assert_eq!(
            c.upstreams.base_url(Service::OpenAi),
            "http://127.0.0.1:9000/v1"
        );
        assert_eq!(
            c.upstreams.base_url(Service::Gateway),
            "http://127.0.0.1:9001/v1"
        );
        assert!(c.team.has(Service::Gateway));
        assert!(c.team.has(Service::OpenRouter));
        assert!(!c.team.has(Service::Groq));
        assert!(!format!("{c:?}").contains("team0123456789"));
    }

    #[test]
    fn refuses_bad_values() {
        assert!(config(&[("BYOK_STORE", "s3")]).is_err());
        assert!(config(&[("BYOK_LISTEN", "nowhere")]).is_err());
        assert!(config(&[("BYOK_VALIDATE_PER_MINUTE", "0")]).is_err());
        assert!(config(&[("BYOK_ANTHROPIC_BASE_URL", "not a url")]).is_err());
        assert!(config(&[("BYOK_SECRET_RECOVERY_DAYS", "3")]).is_err());
        assert!(config(&[("BYOK_CREATE_TABLE", "maybe")]).is_err());
        assert!(config(&[("BYOK_SECRET_CACHE_TTL_SECS", "-1")]).is_err());
        assert!(config(&[("BYOK_UPSTREAM_IDLE_TIMEOUT_SECS", "0")]).is_err());
        assert!(config(&[("BYOK_UPSTREAM_CONNECT_TIMEOUT_SECS", "soon")]).is_err());
        assert!(config(&[("BYOK_FALLBACK_MODELS", "openai/gpt-4o,llama-3")]).is_err());
    }

    #[test]
    fn completion_settings() {
        let c = config(&[]).unwrap();
        assert!(c.fallback_models.is_empty());
        assert_eq!(c.upstream_timeouts, UpstreamTimeouts::default());
        assert_eq!(c.upstream_timeouts.connect, Duration::from_secs(10));
        let c = config(&[
            (
                "BYOK_FALLBACK_MODELS",
                " openai/gpt-4o-mini, claude-3-5-haiku-latest ,",
            ),
            ("BYOK_UPSTREAM_FIRST_BYTE_TIMEOUT_SECS", "0.5"),
            ("BYOK_UPSTREAM_IDLE_TIMEOUT_SECS", "30"),
        ])
        .unwrap();
        let ids: Vec<String> = c.fallback_models.iter().map(ModelId::canonical).collect();
        assert_eq!(
            ids,
            ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]
        );
        assert_eq!(c.upstream_timeouts.first_byte, Duration::from_millis(500));
        assert_eq!(c.upstream_timeouts.idle, Duration::from_secs(30));
        assert_eq!(c.validate_timeout, DEFAULT_VALIDATE_TIMEOUT);
        let c = config(&[("BYOK_VALIDATE_TIMEOUT_SECS", "0.25")]).unwrap();
        assert_eq!(c.validate_timeout, Duration::from_millis(250));
        assert!(config(&[("BYOK_VALIDATE_TIMEOUT_SECS", "0")]).is_err());
    }

    #[test]
    fn cors_origins_are_origins() {
        let c = config(&[(
            "BYOK_CORS_ORIGINS",
            "https://App.Example.com, http://localhost:5173/",
        )])
        .unwrap();
        let cors = c.cors.unwrap();
        assert_eq!(
            cors.origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert!(!cors.allow_credentials);
        let any = config(&[("BYOK_CORS_ORIGINS", "*")]).unwrap().cors.unwrap();
        assert!(any.origins.is_empty());
        assert!(
            config(&[
                ("BYOK_CORS_ORIGINS", "*"),
                ("BYOK_CORS_ALLOW_CREDENTIALS", "true")
            ])
            .is_err(),
            "`*` with credentials"
        );
        let with = config(&[
            ("BYOK_CORS_ORIGINS", "https://app.example.com"),
            ("BYOK_CORS_ALLOW_CREDENTIALS", "true"),
        ])
        .unwrap();
        assert!(with.cors.unwrap().allow_credentials);
    }

    #[test]
    fn usage_and_limit_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(c.team_requests_per_minute, Some(60));
        assert_eq!(c.requests_per_minute, None);
        assert_eq!(c.usage_retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.tenant_claim, None);
        let c = config(&[
            ("BYOK_TEAM_REQUESTS_PER_MINUTE", "0"),
            ("BYOK_REQUESTS_PER_MINUTE", "100"),
            ("BYOK_USAGE_RETENTION_DAYS", "0"),
            ("BYOK_TENANT_CLAIM", "custom:tenant_id"),
        ])
        .unwrap();
        assert_eq!(c.team_requests_per_minute, None);
        assert_eq!(c.requests_per_minute, Some(100));
        assert_eq!(c.usage_retention, None);
        assert_eq!(c.tenant_claim.as_deref(), Some("custom:tenant_id"));
        assert_eq!(c.cors, None);
        assert_eq!(c.default_reserve_tokens, 4_096);
        assert_eq!(c.reservation_ttl, Duration::from_secs(900));
        let c = config(&[
            ("BYOK_DEFAULT_RESERVE_TOKENS", "512"),
            ("BYOK_RESERVATION_TTL_SECS", "2"),
            ("BYOK_ALERT_WEBHOOK_URL", "https://hooks.example.com/budget"),
        ])
        .unwrap();
        assert_eq!(c.default_reserve_tokens, 512);
        assert_eq!(c.reservation_ttl, Duration::from_secs(2));
        assert!(c.alert_webhook_url.is_some());
        for (name, bad) in [
            ("BYOK_TEAM_REQUESTS_PER_MINUTE", "-1"),
            ("BYOK_REQUESTS_PER_MINUTE", "many"),
            ("BYOK_USAGE_RETENTION_DAYS", "99999"),
            ("BYOK_RESERVATION_TTL_SECS", "0"),
            ("BYOK_DEFAULT_RESERVE_TOKENS", "lots"),
            ("BYOK_ALERT_WEBHOOK_URL", "ftp://x"),
            ("BYOK_CORS_ORIGINS", "https://app.example.com/path"),
            ("BYOK_CORS_ORIGINS", "app.example.com"),
            ("BYOK_CORS_ORIGINS", "ftp://files.example.com"),
            ("BYOK_CORS_ALLOW_CREDENTIALS", "maybe"),
            ("BYOK_JWKS_URL", "http://idp.example.com/jwks.json"),
            ("BYOK_JWKS_URL", "not a url"),
            ("BYOK_JWT_MAX_TTL_SECS", "0"),
            ("BYOK_TEAM_BEDROCK", "yes"),
            ("BYOK_TEAM_BEDROCK", "role"),
            ("BYOK_GCP_TOKEN_URL", "not a url"),
        ] {
            assert!(config(&[(name, bad)]).is_err(), "{name}={bad}");
        }
        // role needs a plain region: it becomes part of a host name.
        let bad_region = [
            ("BYOK_TEAM_BEDROCK", "role"),
            ("BYOK_TEAM_BEDROCK_REGION", "us-east-1.evil.example"),
        ];
        assert!(config(&bad_region).is_err());
        let good = config(&[
            ("BYOK_TEAM_BEDROCK", "role"),
            ("BYOK_TEAM_BEDROCK_REGION", "eu-west-1"),
        ])
        .unwrap();
        assert_eq!(good.team_bedrock_region.as_deref(), Some("eu-west-1"));
        assert_eq!(config(&[]).unwrap().team_bedrock_region, None);
    }

    #[test]
    fn rotation_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(c.rotation.sweep, SweepPolicy::default());
        assert_eq!(
            c.rotation.sweep.rotation_age,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            (
                c.rotation.function_arn.as_deref(),
                c.rotation.event_bus.as_deref()
            ),
            (None, None)
        );
        let c = config(&[
            ("BYOK_ROTATION_AGE_DAYS", "0.5"),
            ("BYOK_REVALIDATE_AFTER_HOURS", "0"),
            ("BYOK_ORPHAN_GRACE_MINUTES", "2"),
            ("BYOK_EVENT_BUS_NAME", "keys-bus"),
            (
                "BYOK_ROTATION_FUNCTION_ARN",
                "arn:aws:lambda:us-east-1:1:function:rotation",
            ),
        ])
        .unwrap();
        assert_eq!(c.rotation.sweep.rotation_age, Duration::from_secs(43_200));
        assert_eq!(c.rotation.sweep.revalidate_after, Duration::ZERO);
        assert_eq!(c.rotation.sweep.orphan_grace, Duration::from_secs(120));
        assert_eq!(c.rotation.event_bus.as_deref(), Some("keys-bus"));
        assert!(c.rotation.function_arn.is_some());
        for bad in ["-1", "soon", "NaN", "1e300"] {
            assert!(config(&[("BYOK_ROTATION_AGE_DAYS", bad)]).is_err(), "{bad}");
        }
    }
}
