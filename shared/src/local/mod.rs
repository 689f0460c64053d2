//! `byok-local`: every route in one process on the embedded store.
//! `byok-local [serve]` runs the server and prints a ready dev token;
//! `byok-local token --sub NAME [--admin] [--tenant ID] [--ttl SECS]` prints a token alone;
//! `byok-local catalog refresh` merges the gateway's public model list into a
//! catalog file; `byok-local master-key rotate` re-seals every stored key
//! under a new master key; `byok-local rotate` runs a staged key's rotation
//! and `byok-local sweep` the key-health sweep (the rotation function's two
//! jobs, on whichever store is configured).

mod catalog;
mod cli;
mod connections;
mod console;
mod master_key;
mod serve;
mod stand_in;

pub use cli::{help, parse_args};
pub use master_key::NEW_MASTER_KEY_ENV;

use crate::app::{self, InitError};
use crate::auth::{JwtSecret, issue_token, issue_token_with, now_unix};
use crate::catalog::Catalog;
use crate::config::{Config, StoreKind};
use crate::crypto::MasterKey;
use crate::store::{StoreError, rekey};
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::net::SocketAddr;

/// How long a stopping byok-local waits for usage writes nothing awaits.
const USAGE_SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default lifetime of printed tokens.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 12 * 3600;
/// The user the start banner prints a token for.
pub const DEV_USER: &str = "dev";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    Token {
        sub: String,
        admin: bool,
        tenant: Option<String>,
        ttl_secs: u64,
    },
    /// Download the gateway's model list and merge it into a catalog file.
    CatalogRefresh {
        from: Option<String>,
        out: Option<std::path::PathBuf>,
    },
    /// Re-seal every secret of the embedded store under a new master key.
    MasterKeyRotate,
    /// Run the rotation of a staged key now.
    Rotate {
        user: String,
        service: crate::domain::Service,
    },
    /// Run the key-health sweep once.
    Sweep,
    /// Serve the development stand-in upstream.
    StandIn {
        port: u16,
        pace_ms: u64,
    },
    /// The whole help text.
    Help,
    /// A subcommand's help text, as `clap` renders it.
    HelpOf(String),
}

/// Why byok-local stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A command line `clap` refused (its message names the problem and
    /// how to get help).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("model catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("cannot download the model list from {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("rotation: {0}")]
    Rotation(String),
    #[error("master-key rotate: {0}")]
    MasterKeyRotate(String),
}

/// Runs `command`, writing what it prints to `out`.
pub async fn run(command: Command, config: Config, out: &mut dyn Write) -> Result<(), LocalError> {
    match command {
        Command::Help => Ok(writeln!(out, "{}", help())?),
        Command::HelpOf(text) => Ok(write!(out, "{text}")?),
        Command::Token {
            sub,
            admin,
            tenant,
            ttl_secs,
        } => {
            let secret = app::local_jwt_secret(&config)?;
            let mut extra = serde_json::Map::new();
            if let Some(tenant) = tenant {
                let claim = config.tenant_claim.clone().ok_or_else(|| {
                    LocalError::Usage("--tenant needs BYOK_TENANT_CLAIM to name the claim".into())
                })?;
                extra.insert(claim, serde_json::Value::from(tenant));
            }
            Ok(writeln!(
                out,
                "{}",
                issue_token_with(&secret, &sub, admin, extra, ttl_secs, now_unix())
            )?)
        }
        Command::Serve => serve::serve(config, out).await,
        Command::StandIn { port, pace_ms } => {
            stand_in::run(port, std::time::Duration::from_millis(pace_ms), out).await
        }
        Command::CatalogRefresh { from, out: file } => {
            catalog::refresh_catalog(&config, from, file, out).await
        }
        Command::Rotate { user, service } => {
            let state = app::local_state(&config, app::local_jwt_secret(&config)?).await?;
            let user = crate::domain::UserId::new(user)
                .ok_or_else(|| LocalError::Usage("rotate needs --user ID".to_owned()))?;
            let record = state
                .rotation
                .rotate(&user, service, None)
                .await
                .map_err(|err| LocalError::Rotation(err.to_string()))?;
            let view = crate::http::key_record_json(&record, config.rotation.sweep.rotation_age);
            Ok(writeln!(out, "{view}")?)
        }
        Command::Sweep => {
            let state = app::local_state(&config, app::local_jwt_secret(&config)?).await?;
            let report = state
                .rotation
                .sweep(config.rotation.sweep)
                .await
                .map_err(|err| LocalError::Rotation(err.to_string()))?;
            let json = serde_json::to_string(&report).map_err(std::io::Error::other)?;
            Ok(writeln!(out, "{json}")?)
        }
        Command::MasterKeyRotate => {
            let new_key = std::env::var(NEW_MASTER_KEY_ENV)
                .ok()
                .map(SecretString::from);
            master_key::rotate_master_key(&config, new_key, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::master_key::rotate_master_key;
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, LocalError> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn command_line() {
        assert_eq!(
            parse(&[
                "catalog",
                "refresh",
                "--from",
                "http://127.0.0.1:1/v1/models",
                "--out",
                "m.json"
            ])
            .unwrap(),
            Command::CatalogRefresh {
                from: Some("http://127.0.0.1:1/v1/models".into()),
                out: Some("m.json".into())
            }
        );
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(parse(&["serve"]).unwrap(), Command::Serve);
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
        assert_eq!(
            parse(&["master-key", "rotate"]).unwrap(),
            Command::MasterKeyRotate
        );
        assert_eq!(
            parse(&["token", "--sub", "alice", "--admin", "--ttl", "60"]).unwrap(),
            Command::Token {
                sub: "alice".into(),
                admin: true,
                tenant: None,
                ttl_secs: 60
            }
        );
        assert_eq!(
            parse(&["token", "--sub", "bob"]).unwrap(),
            Command::Token {
                sub: "bob".into(),
                admin: false,
                tenant: None,
                ttl_secs: DEFAULT_TOKEN_TTL_SECS
            }
        );
        for bad in [
            &["token"][..],
            &["token", "--sub"],
            &["token", "--sub", ""],
            &["token", "--sub", "a", "--ttl", "0"],
            &["token", "--x"],
            &["frobnicate"],
            &["serve", "now"],
            &["catalog"],
            &["catalog", "refresh", "--out"],
            &["catalog", "refresh", "--x"],
            &["master-key"],
            &["master-key", "spin"],
            &["master-key", "rotate", "now"],
        ] {
            assert!(matches!(parse(bad), Err(LocalError::Usage(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn master_key_rotate_prints_ids_never_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap().to_owned();
        let config = |vars: &[(&str, &str)]| {
            Config::from_lookup(|name| {
                (name == "BYOK_DATA_DIR").then(|| dir.clone()).or_else(|| {
                    vars.iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| (*v).to_owned())
                })
            })
            .unwrap()
        };
        let rotate = async |vars: &[(&str, &str)], new: Option<&str>| {
            let mut out = Vec::new();
            let new = new.map(|k| SecretString::from(k.to_owned()));
            let result = rotate_master_key(&config(vars), new, &mut out).await;
            (result, String::from_utf8(out).unwrap())
        };
        let (old, new) = (
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
        );

        let (result, _) = rotate(&[("BYOK_STORE", "aws")], None).await;
        assert!(
            matches!(result, Err(LocalError::MasterKeyRotate(_))),
            "{result:?}"
        );

        // The key in the data directory: a new one is generated into the file.
        let before = MasterKey::load_or_create(tmp.path()).unwrap().key_id();
        let (result, printed) = rotate(&[], None).await;
        result.unwrap();
        let file = std::fs::read_to_string(tmp.path().join(crate::crypto::KEY_FILE)).unwrap();
        let after = MasterKey::from_base64(&file).unwrap().key_id();
        assert_ne!(before, after);
        assert!(
            printed.contains(&format!("{before} -> {after}")),
            "{printed}"
        );
        assert!(!printed.contains(file.trim()), "{printed}");
        let (result, _) = rotate(&[], Some(new)).await;
        assert!(
            matches!(result, Err(LocalError::MasterKeyRotate(_))),
            "{result:?}"
        );

        // BYOK_MASTER_KEY: the new key must come from BYOK_NEW_MASTER_KEY.
        let env = [("BYOK_MASTER_KEY", old)];
        for missing_or_bad in [None, Some("c2VjcmV0LWlucHV0")] {
            let (result, printed) = rotate(&env, missing_or_bad).await;
            let err = result.unwrap_err().to_string();
            assert!(err.contains(NEW_MASTER_KEY_ENV), "{err}");
            assert!(!err.contains("c2VjcmV0") && printed.is_empty(), "{err}");
        }
        let (result, printed) = rotate(&env, Some(new)).await;
        result.unwrap();
        assert!(printed.contains("set BYOK_MASTER_KEY"), "{printed}");
        assert!(
            !printed.contains(old) && !printed.contains(new),
            "{printed}"
        );
    }
}
