//! Amazon Bedrock's Converse API, bridged through the Anthropic translation:
//! an OpenAI chat request becomes an Anthropic Messages request
//! ([`super::anthropic::to_messages_request`]), which this module turns
//! into a Converse request; Converse answers and ConverseStream events
//! become the Anthropic message and events the Anthropic translators
//! already turn into OpenAI completions and chunks. The two APIs share
//! their model of a conversation (roles, content blocks, tool use and
//! results, stop reasons), so the bridge is a renaming, and every OpenAI
//! feature the Anthropic path supports works here the same way.
//!
//! ConverseStream answers in AWS's event-stream framing, read by
//! [`ConverseFrames`]. Not yet used by a provider: the Bedrock service
//! (its credentials and SigV4 signing are in place) comes with it.

use serde_json::{Map, Value, json};

use super::anthropic::TranslateError;

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::InvalidRequest(message.into())
}

/// The Converse request for an Anthropic Messages request (as
/// [`super::anthropic::to_messages_request`] writes it). The model is not
/// in it: Bedrock takes it in the URL (`/model/{modelId}/converse`).
pub fn to_converse_request(messages_request: &Value) -> Result<Value, TranslateError> {
    let req = messages_request
        .as_object()
        .ok_or_else(|| invalid("the request body must be a JSON object"))?;
    let mut out = Map::new();
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages must be an array"))?;
    let messages: Result<Vec<Value>, TranslateError> = messages.iter().map(message).collect();
    out.insert("messages".into(), Value::Array(messages?));
    if let Some(system) = req.get("system").and_then(Value::as_str) {
        out.insert("system".into(), json!([{ "text": system }]));
    }
    let mut inference = Map::new();
    for (from, to) in [
        ("max_tokens", "maxTokens"),
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("stop_sequences", "stopSequences"),
    ] {
        if let Some(value) = req.get(from) {
            inference.insert(to.into(), value.clone());
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let specs: Vec<Value> = tools
            .iter()
            .map(|tool| {
                let mut spec = Map::new();
                spec.insert("name".into(), tool.get("name").cloned().unwrap_or_default());
                if let Some(description) = tool.get("description") {
                    spec.insert("description".into(), description.clone());
                }
                let schema = tool
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                spec.insert("inputSchema".into(), json!({ "json": schema }));
                json!({ "toolSpec": spec })
            })
            .collect();
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(specs));
        match req
            .get("tool_choice")
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
        {
            None => {}
            Some("auto") => {
                config.insert("toolChoice".into(), json!({"auto": {}}));
            }
            Some("any") => {
                config.insert("toolChoice".into(), json!({"any": {}}));
            }
            Some("tool") => {
                let name = messages_request
                    .pointer("/tool_choice/name")
                    .cloned()
                    .unwrap_or_default();
                config.insert("toolChoice".into(), json!({"tool": {"name": name}}));
            }
            // `none`: Converse has no such choice; sending no tools is the same.
            Some("none") => {
                return Ok(without_tools(out));
            }
            Some(other) => return Err(invalid(format!("tool_choice {other} is not supported"))),
        }
        out.insert("toolConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn without_tools(mut out: Map<String, Value>) -> Value {
    out.remove("toolConfig");
    Value::Object(out)
}

/// One Anthropic message as a Converse message.
fn message(message: &Value) -> Result<Value, TranslateError> {
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("every message needs a role"))?;
    let blocks: Vec<Value> = match message.get("content") {
        Some(Value::String(text)) => vec![json!({ "text": text })],
        Some(Value::Array(blocks)) => blocks.iter().map(content_block).collect::<Result<_, _>>()?,
        _ => return Err(invalid("message content must be text or blocks")),
    };
    Ok(json!({ "role": role, "content": blocks }))
}

fn content_block(block: &Value) -> Result<Value, TranslateError> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({ "text": block.get("text").cloned().unwrap_or_default() })),
        Some("image") => {
            let source = block.get("source").unwrap_or(&Value::Null);
            if source.get("type").and_then(Value::as_str) != Some("base64") {
                return Err(invalid("Bedrock takes images as data URLs only"));
            }
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let format = media.strip_prefix("image/").unwrap_or(media);
            let format = if format == "jpg" { "jpeg" } else { format };
            Ok(json!({
                "image": {"format": format, "source": {"bytes": source.get("data").cloned().unwrap_or_default()}}
            }))
        }
        Some("tool_use") => Ok(json!({
            "toolUse": {
                "toolUseId": block.get("id").cloned().unwrap_or_default(),
                "name": block.get("name").cloned().unwrap_or_default(),
                "input": block.get("input").cloned().unwrap_or_else(|| json!({})),
            }
        })),
        Some("tool_result") => {
            let content = match block.get("content") {
                Some(Value::String(text)) => json!([{ "text": text }]),
                Some(Value::Array(parts)) => Value::Array(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text"))
                        .map(|text| json!({ "text": text }))
                        .collect(),
                ),
                _ => json!([]),
            };
            Ok(json!({
                "toolResult": {
                    "toolUseId": block.get("tool_use_id").cloned().unwrap_or_default(),
                    "content": content,
                }
            }))
        }
        _ => Err(invalid(
            "a message holds a content block Bedrock does not take",
        )),
    }
}

/// A Converse answer as the Anthropic message it corresponds to (the input
/// of [`super::anthropic::from_messages_response`]). `request_id` names
/// the message (Converse answers have no id of their own).
pub fn to_messages_response(converse: &Value, request_id: &str) -> Value {
    let content: Vec<Value> = converse
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| {
                    if let Some(text) = block.get("text") {
                        Some(json!({"type": "text", "text": text}))
                    } else {
                        block.get("toolUse").map(|tool| {
                            json!({
                                "type": "tool_use",
                                "id": tool.get("toolUseId").cloned().unwrap_or_default(),
                                "name": tool.get("name").cloned().unwrap_or_default(),
                                "input": tool.get("input").cloned().unwrap_or_else(|| json!({})),
                            })
                        })
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": format!("msg_{request_id}"),
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": converse.get("stopReason").cloned().unwrap_or(Value::Null),
        "usage": usage(converse.get("usage")),
    })
}

fn usage(converse_usage: Option<&Value>) -> Value {
    let count = |name: &str| {
        converse_usage
            .and_then(|u| u.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    json!({
        "input_tokens": count("inputTokens"),
        "output_tokens": count("outputTokens"),
        "cache_read_input_tokens": count("cacheReadInputTokens"),
        "cache_creation_input_tokens": count("cacheWriteInputTokens"),
    })
}

/// Follows one ConverseStream: each event (its `:event-type` and JSON
/// payload) becomes the Anthropic events (name, data) it corresponds to.
/// Converse ends with `messageStop` (the stop reason) and then `metadata`
/// (the usage); Anthropic says both in `message_delta` before
/// `message_stop`, so the stop reason waits for the usage.
#[derive(Debug, Default)]
pub struct ConverseStreamBridge {
    id: String,
    /// Content blocks already opened (Converse opens text blocks implicitly).
    open: std::collections::BTreeSet<u64>,
    stop_reason: Option<Value>,
}

impl ConverseStreamBridge {
    /// A bridge for one stream; `request_id` names the message.
    pub fn new(request_id: &str) -> Self {
        Self {
            id: format!("msg_{request_id}"),
            ..Self::default()
        }
    }

    /// The Anthropic events for one Converse event; an exception event is
    /// an Anthropic `error` event.
    pub fn events(&mut self, event_type: &str, payload: &Value) -> Vec<(&'static str, Value)> {
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match event_type {
            "messageStart" => vec![(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "content": [],
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            )],
            "contentBlockStart" => {
                self.open.insert(index);
                let block = match payload.pointer("/start/toolUse") {
                    Some(tool) => json!({
                        "type": "tool_use",
                        "id": tool.get("toolUseId").cloned().unwrap_or_default(),
                        "name": tool.get("name").cloned().unwrap_or_default(),
                        "input": {},
                    }),
                    None => json!({"type": "text", "text": ""}),
                };
                vec![(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": block}),
                )]
            }
            "contentBlockDelta" => {
                let mut out = Vec::new();
                if self.open.insert(index) {
                    out.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}}),
                    ));
                }
                let delta = if let Some(text) = payload.pointer("/delta/text") {
                    json!({"type": "text_delta", "text": text})
                } else if let Some(input) = payload.pointer("/delta/toolUse/input") {
                    json!({"type": "input_json_delta", "partial_json": input})
                } else {
                    return out;
                };
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
                out
            }
            "contentBlockStop" => {
                self.open.remove(&index);
                vec![(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                )]
            }
            "messageStop" => {
                self.stop_reason = payload.get("stopReason").cloned();
                Vec::new()
            }
            "metadata" => vec![
                (
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": self.stop_reason.take().unwrap_or(Value::Null)},
                           "usage": usage(payload.get("usage"))}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
            exception => vec![(
                "error",
                json!({"type": "error", "error": {
                    "type": exception,
                    "message": payload.get("message").cloned().unwrap_or_default(),
                }}),
            )],
        }
    }
}

/// Largest event-stream frame read (a ConverseStream event is small; this
/// bounds what a misbehaving upstream can make the process buffer).
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Reads ConverseStream's answer, AWS event-stream frames, as its bytes
/// arrive (split anywhere): each complete frame becomes its event type
/// (`:event-type`, or `:exception-type` for an exception) and JSON payload,
/// the input of [`ConverseStreamBridge::events`]. Frames are checked by
/// their CRCs (the SDK's own codec).
#[derive(Debug, Default)]
pub struct ConverseFrames {
    decoder: aws_smithy_eventstream::frame::MessageFrameDecoder,
    buffer: bytes::BytesMut,
}

impl ConverseFrames {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<(String, Value)>, TranslateError> {
        use aws_smithy_eventstream::frame::DecodedFrame;
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            let frame = self
                .decoder
                .decode_frame(&mut self.buffer)
                .map_err(|e| TranslateError::Malformed(format!("event-stream frame: {e}")))?;
            let message = match frame {
                DecodedFrame::Complete(message) => message,
                DecodedFrame::Incomplete => break,
            };
            let header = |name: &str| {
                message
                    .headers()
                    .iter()
                    .find(|h| h.name().as_str() == name)
                    .and_then(|h| h.value().as_string().ok())
                    .map(|v| v.as_str().to_owned())
            };
            let kind = match header(":message-type").as_deref() {
                Some("exception") => header(":exception-type"),
                Some("error") => header(":error-code"),
                _ => header(":event-type"),
            }
            .unwrap_or_default();
            let payload: Value = if message.payload().is_empty() {
                json!({})
            } else {
                serde_json::from_slice(message.payload()).map_err(|_| {
                    TranslateError::Malformed(format!("the {kind} event is not JSON"))
                })?
            };
            events.push((kind, payload));
        }
        if self.buffer.len() > MAX_FRAME_BYTES {
            return Err(TranslateError::Malformed(
                "an event-stream frame is larger than 4 MiB".to_owned(),
            ));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::super::anthropic::{StreamTranslator, from_messages_response, to_messages_request};
    use super::*;

    fn converse_of(openai: Value) -> Value {
        let messages = to_messages_request(&openai, "anthropic.claude-3-5-haiku", false).unwrap();
        to_converse_request(&messages).unwrap()
    }

    #[test]
    fn requests_become_converse_requests() {
        let converse = converse_of(json!({
            "model": "bedrock/anthropic.claude-3-5-haiku",
            "max_tokens": 64, "temperature": 0.2, "stop": ["END"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto"
        }));
        assert_eq!(converse["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            converse["inferenceConfig"],
            json!({"maxTokens": 64, "temperature": 0.2, "stopSequences": ["END"]})
        );
        assert_eq!(
            converse["messages"][0],
            json!({"role": "user", "content": [{"text": "Weather in Paris?"}]})
        );
        assert_eq!(
            converse["messages"][1]["content"][0]["toolUse"],
            json!({"toolUseId": "call_1", "name": "weather", "input": {"city": "Paris"}})
        );
        assert_eq!(
            converse["messages"][2]["content"][0]["toolResult"],
            json!({"toolUseId": "call_1", "content": [{"text": "Sunny"}]})
        );
        assert_eq!(
            converse["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"],
            json!({"type": "string"})
        );
        assert_eq!(converse["toolConfig"]["toolChoice"], json!({"auto": {}}));
        assert!(converse.get("model").is_none() && converse.get("stream").is_none());
    }

    #[test]
    fn answers_become_openai_completions() {
        let converse = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19}
        });
        let message = to_messages_response(&converse, "req1");
        let openai = from_messages_response(&message, "bedrock/anthropic.claude", 1_750_000_000);
        assert_eq!(openai["choices"][0]["message"]["content"], "Checking.");
        assert_eq!(openai["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            openai["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "weather"
        );
        assert_eq!(openai["usage"]["prompt_tokens"], 12);
        assert_eq!(openai["usage"]["completion_tokens"], 7);
    }

    #[test]
    fn stream_events_become_openai_chunks_with_usage() {
        let mut bridge = ConverseStreamBridge::new("req2");
        let mut translator = StreamTranslator::new("bedrock/x", 1_750_000_000, true);
        let events = [
            ("messageStart", json!({"role": "assistant"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "t1", "name": "weather"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1,
                "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1,
                "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 1})),
            ("messageStop", json!({"stopReason": "tool_use"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 9, "outputTokens": 4, "totalTokens": 13}}),
            ),
        ];
        let mut chunks = Vec::new();
        for (kind, payload) in events {
            for (name, data) in bridge.events(kind, &payload) {
                chunks.extend(translator.push(name, &data.to_string()).unwrap());
            }
        }
        let chunks: Vec<Value> = chunks
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "Hello");
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(arguments, "{\"city\":\"Paris\"}");
        assert!(
            chunks
                .iter()
                .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls")))
        );
        assert_eq!(translator.usage(), Some((9, 4)));
        // An exception is an error event.
        let error = bridge.events("throttlingException", &json!({"message": "slow down"}));
        assert_eq!(error[0].0, "error");
        assert!(
            translator
                .push(error[0].0, &error[0].1.to_string())
                .is_err()
        );
    }

    /// One ConverseStream frame as Bedrock writes it.
    fn frame(kind: &str, payload: &Value) -> Vec<u8> {
        use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
        let exception = kind.ends_with("Exception");
        let mut message = Message::new(payload.to_string().into_bytes())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String((if exception { "exception" } else { "event" }).into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let name = if exception {
            ":exception-type"
        } else {
            ":event-type"
        };
        message = message.add_header(Header::new(
            name,
            HeaderValue::String(kind.to_owned().into()),
        ));
        let mut bytes = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn frames_split_anywhere_give_the_same_events() {
        let events = [
            ("messageStart", json!({"role": "assistant"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            ),
            ("messageStop", json!({"stopReason": "end_turn"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 3, "outputTokens": 1}}),
            ),
            (
                "throttlingException",
                json!({"message": "Too many requests"}),
            ),
        ];
        let stream: Vec<u8> = events.iter().flat_map(|(k, p)| frame(k, p)).collect();
        for piece in [1, 3, 7, 64, stream.len()] {
            let mut frames = ConverseFrames::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                got.extend(frames.push(chunk).unwrap());
            }
            let want: Vec<(String, Value)> = events
                .iter()
                .map(|(k, p)| ((*k).to_owned(), p.clone()))
                .collect();
            assert_eq!(got, want, "pieces of {piece}");
        }
        // A damaged frame is refused, not misread.
        let mut broken = frame("messageStart", &json!({}));
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        assert!(ConverseFrames::new().push(&broken).is_err());
    }
}
