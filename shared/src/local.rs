//! `byok-local`: every route in one process on the embedded store.
//! `byok-local [serve]` runs the server and prints a ready dev token;
//! `byok-local token --sub NAME [--admin] [--tenant ID] [--ttl SECS]` prints a token alone;
//! `byok-local catalog refresh` merges the gateway's public model list into a
//! catalog file; `byok-local master-key rotate` re-seals every stored key
//! under a new master key; `byok-local rotate` runs a staged key's rotation
//! and `byok-local sweep` the key-health sweep (the rotation function's two
//! jobs, on whichever store is configured).

use crate::app::{self, InitError};
use crate::auth::{JwtSecret, issue_token, issue_token_with, now_unix};
use crate::catalog::Catalog;
use crate::config::{Config, StoreKind};
use crate::crypto::MasterKey;
use crate::store::{StoreError, rekey};
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::net::SocketAddr;

/// Where configuration comes from, appended to the help text.
const CONFIGURATION: &str = "configuration comes from the environment: BYOK_LISTEN, BYOK_DATA_DIR, \
BYOK_MASTER_KEY, BYOK_JWT_SECRET, BYOK_STORE, BYOK_CATALOG_FILE, AI_GATEWAY_API_KEY, \
AI_GATEWAY_URL, OPENAI_API_KEY, ... (README, \"Configuration\")";

/// The command line, as `clap` parses it (help text generated from it).
#[derive(Debug, clap::Parser)]
#[command(
    name = "byok-local",
    about = "Every route of the BYOK gateway in one process, on an embedded encrypted store.",
    after_help = CONFIGURATION,
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Run every route on BYOK_LISTEN (default 127.0.0.1:8787); the default.
    Serve,
    /// Print a signed user token.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long, value_parser = user_id)]
        sub: String,
        /// Put the user in the admin group.
        #[arg(long)]
        admin: bool,
        /// The tenant, in the claim BYOK_TENANT_CLAIM names.
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = DEFAULT_TOKEN_TTL_SECS, value_parser = positive_secs)]
        ttl: u64,
    },
    /// The model catalog file.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// The embedded store's master key.
    MasterKey {
        #[command(subcommand)]
        action: MasterKeyAction,
    },
    /// Run the rotation of the key staged with PUT /api/keys/{service}/pending
    /// (create, set, test, finish) and print the key record.
    Rotate {
        /// The key's owner.
        #[arg(long, value_parser = user_id)]
        user: String,
        /// The key's service.
        #[arg(long, value_parser = service_name)]
        service: crate::domain::Service,
    },
    /// Re-validate stale keys, flag keys due for rotation, remove orphaned
    /// secrets; print the report (JSON).
    Sweep,
}

#[derive(Debug, clap::Subcommand)]
enum CatalogAction {
    /// Merge the gateway's public model list into a catalog file, which
    /// BYOK_CATALOG_FILE then serves.
    Refresh {
        /// The model list (default $AI_GATEWAY_URL/models).
        #[arg(long)]
        from: Option<String>,
        /// The catalog file (default $BYOK_CATALOG_FILE).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum MasterKeyAction {
    /// Re-seal every stored key under a new master key (stop the server
    /// first): a new random key replaces $BYOK_DATA_DIR/master.key, or, when
    /// BYOK_MASTER_KEY is set, the new key is BYOK_NEW_MASTER_KEY.
    Rotate,
}

fn user_id(text: &str) -> Result<String, String> {
    crate::domain::UserId::new(text)
        .map(|_| text.to_owned())
        .ok_or_else(|| "a non-empty user id without control characters".to_owned())
}

fn tenant_id(text: &str) -> Result<String, String> {
    crate::domain::TenantId::new(text)
        .map(|_| text.to_owned())
        .ok_or_else(|| "a tenant id of 1 to 128 characters".to_owned())
}

fn positive_secs(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "a positive number of seconds".to_owned())
}

fn service_name(text: &str) -> Result<crate::domain::Service, String> {
    text.parse().map_err(|_| format!("unknown service: {text}"))
}

/// The help text.
pub fn help() -> String {
    <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string()
}

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

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, LocalError> {
    use clap::Parser as _;
    let args: Vec<String> = args.into_iter().collect();
    let argv = std::iter::once("byok-local".to_owned()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => {
            let whole = matches!(
                args.iter().map(String::as_str).collect::<Vec<_>>()[..],
                ["--help" | "-h" | "help"]
            );
            return Ok(if whole {
                Command::Help
            } else {
                Command::HelpOf(err.render().to_string())
            });
        }
        Err(err) => {
            return Err(LocalError::Usage(
                err.render().to_string().trim_end().to_owned(),
            ));
        }
    };
    Ok(match cli.command {
        None | Some(Sub::Serve) => Command::Serve,
        Some(Sub::Token {
            sub,
            admin,
            tenant,
            ttl,
        }) => Command::Token {
            sub,
            admin,
            tenant,
            ttl_secs: ttl,
        },
        Some(Sub::Catalog {
            action: CatalogAction::Refresh { from, out },
        }) => Command::CatalogRefresh { from, out },
        Some(Sub::MasterKey {
            action: MasterKeyAction::Rotate,
        }) => Command::MasterKeyRotate,
        Some(Sub::Rotate { user, service }) => Command::Rotate { user, service },
        Some(Sub::Sweep) => Command::Sweep,
    })
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
        Command::Serve => serve(config, out).await,
        Command::CatalogRefresh { from, out: file } => {
            refresh_catalog(&config, from, file, out).await
        }
        Command::Rotate { user, service } => {
            let state = app::local_state(&config, app::local_jwt_secret(&config)?).await?;
            let user = crate::domain::UserId::new(user)
                .ok_or_else(|| LocalError::Usage("rotate needs --user ID".to_owned()))?;
            let record = state
                .rotation
                .rotate(&user, service)
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
            rotate_master_key(&config, new_key, out).await
        }
    }
}

/// The new master key of `master-key rotate` when the current one is
/// `BYOK_MASTER_KEY` (base64 of 32 bytes).
pub const NEW_MASTER_KEY_ENV: &str = "BYOK_NEW_MASTER_KEY";

/// Re-seals the embedded store's secrets under a new master key (see
/// [`rekey`]) and prints one line: counts and key ids, never a key. With the
/// key in the data directory, the new key is generated into `master.key`;
/// with `BYOK_MASTER_KEY`, it is `new_key` and the operator switches the
/// variable afterwards (running this again with the same two keys is
/// harmless and completes an interrupted run).
async fn rotate_master_key(
    config: &Config,
    new_key: Option<SecretString>,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let failed = |msg: &str| LocalError::MasterKeyRotate(msg.to_owned());
    if config.store != StoreKind::Embedded {
        return Err(failed(
            "only the embedded store (BYOK_STORE=embedded) has a master key",
        ));
    }
    let data_dir = config.data_dir.clone();
    let Some(old) = &config.master_key else {
        if new_key.is_some() {
            return Err(failed(&format!(
                "{NEW_MASTER_KEY_ENV} is only used with BYOK_MASTER_KEY; without it the new key \
                 is generated into the data directory"
            )));
        }
        let done = on_blocking_thread(move || rekey::rotate_key_file(&data_dir)).await?;
        writeln!(
            out,
            "{}; the new key is in {}",
            rotated(done.report, &done.old_key_id, &done.new_key_id),
            config.data_dir.join(crate::crypto::KEY_FILE).display(),
        )?;
        return Ok(());
    };
    let old = MasterKey::from_base64(old.expose_secret()).map_err(InitError::from)?;
    let new = new_key
        .ok_or_else(|| {
            failed(&format!(
                "BYOK_MASTER_KEY is set, so the new key must be given in {NEW_MASTER_KEY_ENV}"
            ))
        })
        .and_then(|b64| {
            MasterKey::from_base64(b64.expose_secret()).map_err(|_| {
                failed(&format!(
                    "{NEW_MASTER_KEY_ENV} is not standard base64 of exactly 32 bytes"
                ))
            })
        })?;
    let (old_id, new_id) = (old.key_id(), new.key_id());
    let report =
        on_blocking_thread(move || rekey::rotate_master_key(&data_dir, &old, &new)).await?;
    writeln!(
        out,
        "{}; now set BYOK_MASTER_KEY to the value of {NEW_MASTER_KEY_ENV} \
         (running this again with the same two keys is harmless)",
        rotated(report, &old_id, &new_id),
    )?;
    Ok(())
}

/// The start of the line `master-key rotate` prints.
fn rotated(report: rekey::RekeyReport, old_id: &str, new_id: &str) -> String {
    format!(
        "master key rotated: {} secrets re-sealed ({} already under the new key), \
         key id {old_id} -> {new_id}",
        report.resealed, report.already_new
    )
}

/// Runs a rotation step on the blocking pool; its error with every cause
/// (none carries key material).
async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, LocalError> {
    fn describe(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(LocalError::MasterKeyRotate(describe(&err))),
        Err(err) => Err(LocalError::MasterKeyRotate(describe(&err))),
    }
}

/// Largest model list accepted from the gateway.
const MODEL_LIST_LIMIT: usize = 16 * 1024 * 1024;

/// Downloads the model list, merges it over the catalog in `file` (else
/// the shipped one), dates it today and replaces `file` atomically.
async fn refresh_catalog(
    config: &Config,
    from: Option<String>,
    file: Option<std::path::PathBuf>,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let file = file
        .or_else(|| config.catalog_file.clone())
        .ok_or_else(|| {
            LocalError::Usage("say where the catalog goes: --out FILE or BYOK_CATALOG_FILE".into())
        })?;
    let url = from.unwrap_or_else(|| {
        format!(
            "{}/models",
            config
                .upstreams
                .base_url(crate::domain::Service::Gateway)
                .trim_end_matches('/')
        )
    });
    let list = download(&url, config).await?;
    let current = match std::fs::read_to_string(&file) {
        Ok(text) => Catalog::from_json(&text)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Catalog::builtin()?,
        Err(err) => return Err(err.into()),
    };
    let before = current.models().len();
    let today = time::OffsetDateTime::now_utc().date();
    let today = format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    let refreshed =
        crate::catalog::refresh_from_gateway_list(&list, &current)?.with_updated(&today)?;
    let text = refreshed.to_json()?;
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)?;
    writeln!(
        out,
        "catalog {}: {} models ({} new), updated {today}, from {url}",
        file.display(),
        refreshed.models().len(),
        refreshed.models().len().saturating_sub(before),
    )?;
    Ok(())
}

async fn download(url: &str, config: &Config) -> Result<String, LocalError> {
    let failed = |reason: String| LocalError::Download {
        url: url.to_owned(),
        reason,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(config.upstream_timeouts.connect)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status().as_u16())));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if body.len() > MODEL_LIST_LIMIT {
        return Err(failed("the list is larger than 16 MiB".into()));
    }
    String::from_utf8(body.to_vec()).map_err(|_| failed("the list is not UTF-8".into()))
}

async fn serve(config: Config, out: &mut dyn Write) -> Result<(), LocalError> {
    let secret = app::local_jwt_secret(&config)?;
    let state = app::local_state(&config, secret.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| LocalError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    write_banner(out, &config, addr, &secret)?;
    tracing::info!(%addr, "byok-local listening");
    // Small SSE events must leave at once: without TCP_NODELAY, Nagle's
    // algorithm holds them until the client's delayed ACK (~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY not set");
        }
    });
    let completions = state.completions.clone();
    axum::serve(listener, crate::http::local_router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Usage of clients that went away is still being written: finish it.
    if !completions.settle_usage(USAGE_SETTLE_LIMIT).await {
        tracing::warn!("some usage records were still being written at exit");
    }
    tracing::info!("byok-local stopped");
    Ok(())
}

fn write_banner(
    out: &mut dyn Write,
    config: &Config,
    addr: SocketAddr,
    secret: &JwtSecret,
) -> std::io::Result<()> {
    let token = issue_token(secret, DEV_USER, false, DEFAULT_TOKEN_TTL_SECS, now_unix());
    let store = match config.store {
        StoreKind::Embedded => format!("embedded, {}", config.data_dir.display()),
        StoreKind::Aws => "aws".to_owned(),
    };
    writeln!(out, "byok-local listening on http://{addr}")?;
    writeln!(out, "store: {store}")?;
    writeln!(
        out,
        "dev token for user \"{DEV_USER}\" (valid 12 h; more: byok-local token --sub NAME):"
    )?;
    writeln!(out, "  export BYOK_TOKEN={token}")?;
    writeln!(out, "try:")?;
    writeln!(
        out,
        "  curl -s -H \"Authorization: Bearer $BYOK_TOKEN\" \"http://{addr}/api/resolve?model=openai/gpt-4o-mini\""
    )?;
    out.flush()
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminated => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}

#[cfg(test)]
mod tests {
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
