//! The OpenAI-compatible wire format (openai, xai, groq, openrouter, google's
//! OpenAI endpoint, the gateway): the request is forwarded with its model id
//! rewritten, and the SSE stream is passed through event by event, bytes
//! untouched, except that usage the gateway asked for on its own account is
//! read and kept from a client that did not ask for it.

use super::Usage;
use super::raw_object::RawObject;
use super::sse::RawEvent;
use bytes::Bytes;
use serde_json::Value;

/// What the request rewrite decided, for the stream that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub client_wants_usage: bool,
}

/// Rewrites a client's chat request for the upstream: the model id it
/// expects and, for streams, `stream_options.include_usage` so usage can be
/// recorded. Every other field passes untouched.
pub fn prepare_request(body: &mut RawObject, upstream_model: &str, stream: bool) -> Prepared {
    body.set("model", Value::from(upstream_model).to_string());
    // Its fields stay unparsed: only `include_usage` is read or added.
    type Options = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;
    let options: Option<Options> = body.get::<Options>("stream_options").and_then(Result::ok);
    let client_wants_usage = options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .is_some_and(|v| v.get() == "true");
    if stream && !client_wants_usage {
        let mut options = options.unwrap_or_default();
        if let Ok(yes) = serde_json::value::RawValue::from_string("true".to_owned()) {
            options.insert("include_usage".into(), yes);
        }
        if let Ok(json) = serde_json::to_string(&options) {
            body.set("stream_options", json);
        }
    }
    Prepared { client_wants_usage }
}

/// Puts the user's `key` into the body as the Vercel AI Gateway's
/// request-scoped BYOK option, `providerOptions.gateway.byok.{slug}:
/// [{apiKey}]` (or the credential's own shape for AWS keys and service
/// accounts), with `only: [slug]` so the gateway serves the model through
/// that provider alone: `anthropic/claude-3.5-haiku` asked with a Bedrock
/// credential must not go to Anthropic on the gateway's credentials. The
/// client's own `providerOptions.gateway` is replaced whole: its routing
/// options (fallback models, provider order) could otherwise send the
/// request to the gateway's own credentials, on the team's account. Other
/// `providerOptions` entries pass unchanged.
pub fn add_gateway_byok(
    body: &mut RawObject,
    slug: &str,
    key: &crate::domain::ApiKey,
) -> Result<(), &'static str> {
    let mut options = match body.get::<serde_json::Map<String, Value>>("providerOptions") {
        None => serde_json::Map::new(),
        Some(Ok(map)) => map,
        Some(Err(_)) => return Err("providerOptions must be an object"),
    };
    // The credential in the gateway's shape for it: an API key, a Google
    // service account's project, location and key, or an AWS access key.
    let credential = match crate::domain::Credential::read(key) {
        crate::domain::Credential::GcpServiceAccount(account) => serde_json::json!({
            "project": account.project,
            "location": account.location,
            "googleCredentials": {
                "privateKey": account.private_key_pem(),
                "clientEmail": account.client_email,
            },
        }),
        crate::domain::Credential::Aws(aws) => {
            let mut credential = serde_json::json!({
                "accessKeyId": aws.access_key_id,
                "secretAccessKey": aws.secret_access_key(),
                "region": aws.region,
            });
            if let Some(token) = aws.session_token() {
                credential["sessionToken"] = Value::from(token);
            }
            credential
        }
        crate::domain::Credential::ApiKey(key) => serde_json::json!({ "apiKey": key.expose() }),
    };
    let gateway = serde_json::json!({ "byok": { slug: [credential] }, "only": [slug] });
    options.insert("gateway".to_owned(), gateway);
    let json =
        serde_json::to_string(&options).map_err(|_| "providerOptions could not be written")?;
    body.set("providerOptions", json);
    Ok(())
}

/// Reads token counts from a non-streamed `chat.completion`.
pub fn usage_of_response(body: &Value) -> Option<Usage> {
    usage_from(body.get("usage")?)
}

fn usage_from(usage: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        // Absent on embeddings, which produce no tokens.
        completion_tokens: usage
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// Follows one upstream stream: forwards events as they came, records usage.
#[derive(Debug)]
pub struct PassThrough {
    prepared: Prepared,
    usage: Option<Usage>,
    done: bool,
}

impl PassThrough {
    pub fn new(prepared: Prepared) -> Self {
        Self {
            prepared,
            usage: None,
            done: false,
        }
    }

    /// The bytes to send the client for `event`, or `None` to drop it (the
    /// usage chunk the client did not ask for).
    pub fn on_event(&mut self, event: RawEvent) -> Option<Bytes> {
        let raw = &event.raw[..];
        if contains(raw, b"[DONE]") && event.data().trim() == "[DONE]" {
            self.done = true;
            return Some(event.raw);
        }
        // Only a chunk with a usage object is parsed; every other chunk is
        // forwarded as the upstream wrote it.
        if contains(raw, b"\"usage\":{") || contains(raw, b"\"usage\": {") {
            let parsed: Option<Value> = serde_json::from_str(&event.data()).ok();
            if let Some(chunk) = parsed {
                if let Some(usage) = chunk.get("usage").and_then(usage_from) {
                    self.usage = Some(usage);
                }
                let only_usage = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if only_usage && !self.prepared.client_wants_usage {
                    return None;
                }
            }
        }
        if !self.prepared.client_wants_usage && contains(raw, b"\"usage\":null") {
            return Some(remove_null_usage(raw));
        }
        Some(event.raw)
    }

    /// Usage the upstream reported, once its usage chunk has passed.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// True once `data: [DONE]` has passed.
    pub fn finished(&self) -> bool {
        self.done
    }
}

/// Drops the `"usage":null` member OpenAI adds to every chunk once
/// `include_usage` is on, so the client sees what it would have without it.
fn remove_null_usage(raw: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(raw);
    Bytes::from(
        text.replace(",\"usage\":null", "")
            .replace("\"usage\":null,", ""),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::EventSplitter;
    use serde_json::json;

    fn object(v: Value) -> RawObject {
        RawObject::parse(Bytes::from(v.to_string())).expect("an object")
    }

    fn field(body: &RawObject, key: &str) -> Value {
        body.get(key).map_or(Value::Null, |v| v.expect("JSON"))
    }

    #[test]
    fn rewrites_the_model_and_asks_for_usage_keeping_other_fields() {
        let mut body = object(
            json!({"model": "gpt-4o", "stream": true, "x_unknown": {"a": 1}, "messages": []}),
        );
        let p = prepare_request(&mut body, "openai/gpt-4o", true);
        assert!(!p.client_wants_usage);
        assert_eq!(field(&body, "model"), "openai/gpt-4o");
        assert_eq!(
            field(&body, "stream_options"),
            json!({"include_usage": true})
        );
        assert_eq!(field(&body, "x_unknown"), json!({"a": 1}));

        let mut asked = object(
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert!(prepare_request(&mut asked, "m", true).client_wants_usage);

        let mut plain = object(json!({"model": "m"}));
        prepare_request(&mut plain, "m2", false);
        assert!(plain.raw("stream_options").is_none());
    }

    fn run(stream: &str, wants: bool) -> (String, Option<Usage>) {
        let mut split = EventSplitter::new();
        let mut pass = PassThrough::new(Prepared {
            client_wants_usage: wants,
        });
        let mut out = Vec::new();
        for ev in split.push(stream.as_bytes()).unwrap() {
            if let Some(b) = pass.on_event(ev) {
                out.extend_from_slice(&b);
            }
        }
        assert!(pass.finished());
        (String::from_utf8(out).unwrap(), pass.usage())
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn usage_is_recorded_and_hidden_from_a_client_that_did_not_ask() {
        let (out, usage) = run(STREAM, false);
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2
            })
        );
        assert_eq!(
            out,
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn a_client_that_asked_gets_the_stream_byte_for_byte() {
        let (out, usage) = run(STREAM, true);
        assert_eq!(out, STREAM);
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(7));
    }

    #[test]
    fn the_gateway_byok_option_replaces_the_clients_gateway_options_only() {
        let key = crate::domain::ApiKey::new("sk-proj-user-0123456789");
        let mut body = object(json!({
            "model": "m",
            "providerOptions": {
                "gateway": {"models": ["anthropic/claude-opus-4"], "byok": {"xai": [{"apiKey": "x"}]}},
                "openai": {"reasoningEffort": "low"}
            }
        }));
        add_gateway_byok(&mut body, "openai", &key).unwrap();
        assert_eq!(
            field(&body, "providerOptions"),
            json!({
                "gateway": {
                    "byok": {"openai": [{"apiKey": "sk-proj-user-0123456789"}]},
                    "only": ["openai"]
                },
                "openai": {"reasoningEffort": "low"}
            })
        );
        let mut plain = object(json!({"model": "m"}));
        add_gateway_byok(&mut plain, "anthropic", &key).unwrap();
        assert_eq!(
            field(&plain, "providerOptions")["gateway"]["byok"]["anthropic"][0]["apiKey"],
            "sk-proj-user-0123456789"
        );
        let mut odd = object(json!({"model": "m", "providerOptions": [1]}));
        assert!(add_gateway_byok(&mut odd, "openai", &key).is_err());
    }

    #[test]
    fn response_usage() {
        let body = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        assert_eq!(
            usage_of_response(&body),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(usage_of_response(&json!({})), None);
    }
}
