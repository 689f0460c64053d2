//! `byok-local serve`: every route on one listener, a start banner with a
//! ready token, and a graceful stop that waits for pending usage writes.

use super::*;

pub(super) async fn serve(config: Config, out: &mut dyn Write) -> Result<(), LocalError> {
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
    let completions = state.completions.clone();
    let session = (config.console_dev_session && addr.ip().is_loopback()).then(|| secret.clone());
    super::connections::serve(
        listener,
        crate::http::local_router_with(
            state,
            super::console::router(session, config.console_oidc.clone()),
        ),
        config.connections,
        shutdown_signal(),
    )
    .await;
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
    writeln!(out, "console: http://{addr}/")?;
    writeln!(out, "store: {store}")?;
    writeln!(
        out,
        "dev token for user \"{DEV_USER}\" (valid 12 h; more: byok-local token --sub NAME):"
    )?;
    writeln!(out, "  export BYOK_TOKEN={token}")?;
    writeln!(out, "try:")?;
    writeln!(
        out,
        "  curl -sS -w '\\n%{{http_code}}\\n' -H \"Authorization: Bearer $BYOK_TOKEN\" \"http://{addr}/api/resolve?model=openai/gpt-4o-mini\""
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
