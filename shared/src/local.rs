//! `byok-local`: every route in one process on the embedded store.
//! `byok-local [serve]` runs the server and prints a ready dev token;
//! `byok-local token --sub NAME [--admin] [--ttl SECS]` prints a token alone;
//! `byok-local catalog refresh` merges the gateway's public model list into a
//! catalog file.

use crate::app::{self, InitError};
use crate::auth::{JwtSecret, issue_token, now_unix};
use crate::catalog::Catalog;
use crate::config::{Config, StoreKind};
use std::io::Write;
use std::net::SocketAddr;

pub const USAGE: &str = "\
usage:
  byok-local [serve]                                 run every route on BYOK_LISTEN (default 127.0.0.1:8787)
  byok-local token --sub NAME [--admin] [--ttl SECS] print a signed user token (default ttl 12 h)
  byok-local catalog refresh [--from URL] [--out FILE]
                                                     merge the gateway's public model list (default
                                                     $AI_GATEWAY_URL/models) into FILE (default
                                                     $BYOK_CATALOG_FILE), which BYOK_CATALOG_FILE serves
  byok-local help                                    this text

configuration comes from the environment: BYOK_LISTEN, BYOK_DATA_DIR, BYOK_MASTER_KEY,
BYOK_JWT_SECRET, BYOK_STORE, BYOK_CATALOG_FILE, AI_GATEWAY_API_KEY, AI_GATEWAY_URL, OPENAI_API_KEY, ...";

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
        ttl_secs: u64,
    },
    /// Download the gateway's model list and merge it into a catalog file.
    CatalogRefresh {
        from: Option<String>,
        out: Option<std::path::PathBuf>,
    },
    Help,
}

/// Why byok-local stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}\n\n{USAGE}")]
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
}

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, LocalError> {
    let mut args = args.into_iter();
    let usage = |msg: &str| LocalError::Usage(msg.to_owned());
    match args.next().as_deref() {
        None | Some("serve") => match args.next() {
            None => Ok(Command::Serve),
            Some(extra) => Err(usage(&format!("unexpected argument: {extra}"))),
        },
        Some("help" | "--help" | "-h") => Ok(Command::Help),
        Some("token") => {
            let (mut sub, mut admin, mut ttl_secs) = (None, false, DEFAULT_TOKEN_TTL_SECS);
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--sub" => sub = Some(args.next().ok_or_else(|| usage("--sub needs a value"))?),
                    "--admin" => admin = true,
                    "--ttl" => {
                        ttl_secs = args
                            .next()
                            .and_then(|v| v.parse().ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| usage("--ttl needs a positive number of seconds"))?;
                    }
                    other => return Err(usage(&format!("unknown option: {other}"))),
                }
            }
            let sub = sub
                .filter(|s| crate::domain::UserId::new(s.as_str()).is_some())
                .ok_or_else(|| usage("token needs --sub NAME (a non-empty user id)"))?;
            Ok(Command::Token {
                sub,
                admin,
                ttl_secs,
            })
        }
        Some("catalog") => {
            if args.next().as_deref() != Some("refresh") {
                return Err(usage("catalog needs a subcommand: refresh"));
            }
            let (mut from, mut out) = (None, None);
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--from" => {
                        from = Some(args.next().ok_or_else(|| usage("--from needs a URL"))?)
                    }
                    "--out" => {
                        out = Some(
                            args.next()
                                .ok_or_else(|| usage("--out needs a file"))?
                                .into(),
                        );
                    }
                    other => return Err(usage(&format!("unknown option: {other}"))),
                }
            }
            Ok(Command::CatalogRefresh { from, out })
        }
        Some(other) => Err(usage(&format!("unknown command: {other}"))),
    }
}

/// Runs `command`, writing what it prints to `out`.
pub async fn run(command: Command, config: Config, out: &mut dyn Write) -> Result<(), LocalError> {
    match command {
        Command::Help => Ok(writeln!(out, "{USAGE}")?),
        Command::Token {
            sub,
            admin,
            ttl_secs,
        } => {
            let secret = app::local_jwt_secret(&config)?;
            Ok(writeln!(
                out,
                "{}",
                issue_token(&secret, &sub, admin, ttl_secs, now_unix())
            )?)
        }
        Command::Serve => serve(config, out).await,
        Command::CatalogRefresh { from, out: file } => {
            refresh_catalog(&config, from, file, out).await
        }
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
    axum::serve(listener, crate::http::local_router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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
            parse(&["token", "--sub", "alice", "--admin", "--ttl", "60"]).unwrap(),
            Command::Token {
                sub: "alice".into(),
                admin: true,
                ttl_secs: 60
            }
        );
        assert_eq!(
            parse(&["token", "--sub", "bob"]).unwrap(),
            Command::Token {
                sub: "bob".into(),
                admin: false,
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
        ] {
            assert!(matches!(parse(bad), Err(LocalError::Usage(_))), "{bad:?}");
        }
    }
}
