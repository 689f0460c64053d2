//! `byok-local master-key rotate`: re-sealing every stored key under a new
//! master key, off the async runtime.

use super::*;

/// The new master key of `master-key rotate` when the current one is
/// `BYOK_MASTER_KEY` (base64 of 32 bytes).
pub const NEW_MASTER_KEY_ENV: &str = "BYOK_NEW_MASTER_KEY";

/// Re-seals the embedded store's secrets under a new master key (see
/// [`rekey`]) and prints one line: counts and key ids, never a key. With the
/// key in the data directory, the new key is generated into `master.key`;
/// with `BYOK_MASTER_KEY`, it is `new_key` and the operator switches the
/// variable afterwards (running this again with the same two keys is
/// harmless and completes an interrupted run).
pub(super) async fn rotate_master_key(
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
