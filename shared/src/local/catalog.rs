//! `byok-local catalog refresh`: the gateway's public model list merged
//! into the catalog file the server then serves.

use super::*;

/// Largest model list accepted from the gateway.
const MODEL_LIST_LIMIT: usize = 16 * 1024 * 1024;

/// Downloads the model list, merges it over the catalog in `file` (else
/// the shipped one), dates it today and replaces `file` atomically.
pub(super) async fn refresh_catalog(
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
