//! `byok-local`: every route in one process on the embedded store.
//! `byok-local [serve]` runs the server and prints a ready dev token;
//! `byok-local token --sub NAME [--admin] [--ttl SECS]` prints a token alone.

use crate::app::{self, InitError};
use crate::auth::{JwtSecret, issue_token, now_unix};
use crate::config::{Config, StoreKind};
use std::io::Write;
use std::net::SocketAddr;

pub const USAGE: &str = "\
usage:
  byok-local [serve]                                 run every route on BYOK_LISTEN (default 127.0.0.1:8787)
  byok-local token --sub NAME [--admin] [--ttl SECS] print a signed user token (default ttl 12 h)
  byok-local help                                    this text

configuration comes from the environment: BYOK_LISTEN, BYOK_DATA_DIR, BYOK_MASTER_KEY,
BYOK_JWT_SECRET, BYOK_STORE, AI_GATEWAY_API_KEY, AI_GATEWAY_URL, OPENAI_API_KEY, ...";

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
    }
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
        ] {
            assert!(matches!(parse(bad), Err(LocalError::Usage(_))), "{bad:?}");
        }
    }
}
