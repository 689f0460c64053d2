//! Rate counters: one conditional `ADD` on the window's counter item (see
//! "Rate counters" in the module doc of [`super`]).

use super::*;

#[async_trait]
impl RateLimitStore for DynamoMetadataStore {
    async fn hit(
        &self,
        user: &UserId,
        action: RateAction,
        limit: u32,
        window: Duration,
        now: Timestamp,
    ) -> Result<RateDecision, StoreError> {
        let w = Window::containing(window, now)?;
        if limit == 0 {
            return Ok(w.decision(limit, None));
        }
        let pk = rate_pk(user);
        let sk = format!("{action}#{}#{}", w.len_ms, w.start_ms);
        let _serialised = self.item_lock(&pk, &sk).lock().await;
        let ttl = w
            .end_ms
            .div_euclid(1000)
            .saturating_add(1)
            .saturating_add(RATE_TTL_MARGIN_SECS);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            .update_expression("SET #ttl = :ttl ADD #count :one")
            .condition_expression("attribute_not_exists(#count) OR #count < :limit")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":ttl", AttributeValue::N(ttl.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let count = Attrs {
                    item: &item,
                    kind: "rate counter",
                }
                .u64("count")?;
                Ok(w.decision(limit, Some(count)))
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(w.decision(limit, None))
            }
            Err(err) => Err(backend("UpdateItem", err)),
        }
    }
}
