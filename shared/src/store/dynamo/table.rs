//! Creating the table (local emulator runs only) with its key schema and
//! TTL attribute, and waiting until it is active.

use super::*;

/// Creates `table` if it does not exist (on-demand billing, `pk`/`sk`
/// strings), waits until it is `ACTIVE` (polling every 100 ms, at most 30 s)
/// and enables TTL on [`TTL_ATTRIBUTE`]. Safe to call on an existing table and
/// concurrently. Meant for tests and `byok-local` against an emulator; real
/// deployments create the table in the infrastructure template.
pub async fn ensure_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let schema = out
                .table
                .as_ref()
                .map(|t| t.key_schema())
                .unwrap_or_default();
            let has = |name: &str, kind: KeyType| {
                schema
                    .iter()
                    .any(|k| k.attribute_name() == name && *k.key_type() == kind)
            };
            if schema.len() != 2 || !has(PK, KeyType::Hash) || !has(SK, KeyType::Range) {
                return Err(corrupt(format!(
                    "table {table} exists with another key schema than {PK} (hash) and {SK} (range)"
                )));
            }
            true
        }
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(err) => return Err(backend("DescribeTable", err)),
    };

    if !exists {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(StoreError::backend)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(StoreError::backend)
        };
        let created = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(PK)?)
            .attribute_definitions(attribute(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table, "created DynamoDB table"),
            // Created concurrently by someone else: wait for it like for ours.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(err) => return Err(backend("CreateTable", err)),
        }
    }

    wait_until_active(client, table).await?;
    enable_ttl(client, table).await
}

/// Polls `DescribeTable` until the table is `ACTIVE`. (The SDK waiter first
/// polls after 20 s, far too slow against an emulator.)
async fn wait_until_active(client: &Client, table: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| backend("DescribeTable", e))?;
        let status = out.table.as_ref().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("table {table} did not become ACTIVE within {ACTIVE_TIMEOUT:?}"),
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Enables TTL on [`TTL_ATTRIBUTE`] unless it already is (or is being) enabled.
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
    let described = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| backend("DescribeTimeToLive", e))?;
    if let Some(ttl) = described.time_to_live_description() {
        let on = matches!(
            ttl.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if on {
            if ttl.attribute_name() != Some(TTL_ATTRIBUTE) {
                tracing::warn!(
                    table,
                    "TTL is enabled on another attribute than {TTL_ATTRIBUTE}; left unchanged"
                );
            }
            return Ok(());
        }
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(StoreError::backend)?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Enabled concurrently: "TimeToLive is already enabled".
        Err(err)
            if err.as_service_error().is_some_and(|e| {
                e.code() == Some("ValidationException")
                    && e.message().is_some_and(|m| m.contains("already enabled"))
            }) =>
        {
            Ok(())
        }
        Err(err) => Err(backend("UpdateTimeToLive", err)),
    }
}
