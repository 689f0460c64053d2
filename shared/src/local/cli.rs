//! The command line, parsed by `clap` (the help text is generated from it).

use super::*;

/// Where configuration comes from, appended to the help text.
const CONFIGURATION: &str = "configuration comes from the environment: BYOK_LISTEN, BYOK_DATA_DIR, \
BYOK_MASTER_KEY, BYOK_JWT_SECRET, BYOK_STORE, BYOK_CATALOG_FILE, AI_GATEWAY_API_KEY, \
AI_GATEWAY_URL, OPENAI_API_KEY, ... (docs/configuration.md)";

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
    /// A development stand-in for the providers on 127.0.0.1: speaks the
    /// OpenAI and Anthropic wire formats, echoes the last user message
    /// (streamed word by word, with usage) and accepts any key of the
    /// right shape, so a first completion needs no account. Not a model.
    StandIn {
        /// The loopback port.
        #[arg(long, default_value_t = super::stand_in::DEFAULT_STAND_IN_PORT)]
        port: u16,
        /// Milliseconds between streamed words.
        #[arg(long, default_value_t = 40)]
        pace_ms: u64,
    },
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
        Some(Sub::StandIn { port, pace_ms }) => Command::StandIn { port, pace_ms },
    })
}
