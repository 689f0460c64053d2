//! Anthropic Messages API ⇄ OpenAI Chat Completions translation.
//!
//! The gateway serves an OpenAI-compatible `POST /v1/chat/completions`; when
//! the upstream is Anthropic, the request goes through
//! [`to_messages_request`], a non-streaming response comes back through
//! [`from_messages_response`], and a stream through a [`StreamTranslator`]
//! fed one Anthropic SSE event at a time. Pure translation: no HTTP, no I/O.
//!
//! The OpenAI side is open-ended (clients send fields this module does not
//! know), so it is read as [`serde_json::Value`]; unknown fields are ignored.
//! Fields Anthropic cannot honour are rejected with
//! [`TranslateError::Unsupported`] only when ignoring them would change the
//! result (`n > 1`, `logprobs: true`, a JSON `response_format`, audio,
//! legacy `functions`).
//!
//! Errors name fields (`messages[2].tool_calls[0].function.arguments`) and
//! never repeat request content.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// `max_tokens` sent upstream when the request sets neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Why a request, response or stream event could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The OpenAI request is not well-formed (the message names the field).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request uses a feature Anthropic has no equivalent for.
    #[error("not supported for this model: {0}")]
    Unsupported(&'static str),
    /// Anthropic reported an error (an SSE `error` event).
    #[error("upstream error ({kind}): {message}")]
    Upstream { kind: String, message: String },
    /// Anthropic sent something this module cannot read.
    #[error("malformed upstream response: {0}")]
    Malformed(String),
}

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::InvalidRequest(message.into())
}

// ---------------------------------------------------------------------------
// Request: OpenAI chat completion → Anthropic Messages
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat completion request into an Anthropic Messages
/// request for `upstream_model`, with `stream` as given.
///
/// - `system`/`developer` messages, wherever they are, are joined (blank line
///   between messages) into the top-level `system` string;
/// - `user`/`assistant` content becomes content blocks (empty text is
///   dropped), consecutive turns of the same role are merged, and in a user
///   turn `tool_result` blocks come first;
/// - assistant `tool_calls` become `tool_use` blocks, `tool` messages become
///   `tool_result` blocks of a user turn (tool call ids are reduced to the
///   characters Anthropic accepts, `[A-Za-z0-9_-]`, the same way on both
///   sides);
/// - `max_completion_tokens`, else `max_tokens`, else [`DEFAULT_MAX_TOKENS`];
///   `temperature`/`top_p` as given; `stop` → `stop_sequences`; `tools`,
///   `tool_choice`, `parallel_tool_calls: false` →
///   `disable_parallel_tool_use`; `user` (else `safety_identifier`) →
///   `metadata.user_id`.
pub fn to_messages_request(
    openai: &Value,
    upstream_model: &str,
    stream: bool,
) -> Result<Value, TranslateError> {
    let req = openai
        .as_object()
        .ok_or_else(|| invalid("the request body must be a JSON object"))?;
    reject_unsupported(req)?;

    let (system, messages) = translate_messages(req.get("messages"))?;
    let tools = translate_tools(req.get("tools"))?;
    let tool_choice = translate_tool_choice(
        req.get("tool_choice"),
        req.get("parallel_tool_calls"),
        !tools.is_empty(),
    )?;

    let mut out = Map::new();
    out.insert("model".into(), Value::from(upstream_model));
    out.insert("max_tokens".into(), Value::from(max_tokens(req)?));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    for field in ["temperature", "top_p"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(number @ Value::Number(_)) => {
                out.insert(field.into(), number.clone());
            }
            Some(_) => return Err(invalid(format!("{field} must be a number"))),
        }
    }
    if let Some(stops) = stop_sequences(req.get("stop"))? {
        out.insert("stop_sequences".into(), stops);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        out.insert("tool_choice".into(), choice);
    }
    if let Some(user) = user_id(req)? {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    out.insert("stream".into(), Value::Bool(stream));
    Ok(Value::Object(out))
}

/// `stream_options.include_usage` of an OpenAI request (the argument of
/// [`StreamTranslator::new`]).
pub fn stream_include_usage(openai: &Value) -> bool {
    openai
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Rejects the fields that would change the result if silently ignored.
fn reject_unsupported(req: &Map<String, Value>) -> Result<(), TranslateError> {
    let present = |field: &str| req.get(field).is_some_and(|v| !v.is_null());
    if req
        .get("n")
        .and_then(Value::as_f64)
        .is_some_and(|n| n > 1.0)
    {
        return Err(TranslateError::Unsupported("n"));
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::Unsupported("logprobs"));
    }
    if present("response_format")
        && req.get("response_format").and_then(|f| f.get("type")) != Some(&json!("text"))
    {
        return Err(TranslateError::Unsupported("response_format"));
    }
    if present("audio")
        || req
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m == "audio"))
    {
        return Err(TranslateError::Unsupported("audio"));
    }
    if req
        .get("functions")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
        || present("function_call")
    {
        return Err(TranslateError::Unsupported("functions"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// The joined system prompt and the alternating Anthropic messages.
fn translate_messages(messages: Option<&Value>) -> Result<(String, Vec<Value>), TranslateError> {
    let messages = messages
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = system_text(message.get("content"), i)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => (Role::User, user_blocks(message.get("content"), i)?),
            "assistant" => (Role::Assistant, assistant_blocks(message, i)?),
            "tool" => (Role::User, vec![tool_result(message, i)?]),
            "function" => return Err(TranslateError::Unsupported("functions")),
            _ => return Err(invalid(format!("messages[{i}].role is not supported"))),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "messages must include a user or assistant message with content",
        ));
    }
    let messages = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Anthropic wants a user turn's tool results before anything else
            // (stable: the order within each group is kept).
            blocks.sort_by_key(|b| b.get("type") != Some(&json!("tool_result")));
            json!({ "role": role.as_str(), "content": blocks })
        })
        .collect();
    Ok((system.join("\n\n"), messages))
}

/// The `content` of an OpenAI message: absent/`null`, a string, or parts.
enum Content<'a> {
    Empty,
    Text(&'a str),
    Parts(&'a [Value]),
}

fn content(content: Option<&Value>, i: usize) -> Result<Content<'_>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Content::Empty),
        Some(Value::String(text)) => Ok(Content::Text(text)),
        Some(Value::Array(parts)) => Ok(Content::Parts(parts)),
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array"
        ))),
    }
}

fn part_type(part: &Value, i: usize, j: usize) -> Result<&str, TranslateError> {
    part.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].type must be a string")))
}

fn part_text<'a>(
    part: &'a Value,
    field: &str,
    i: usize,
    j: usize,
) -> Result<&'a str, TranslateError> {
    part.get(field).and_then(Value::as_str).ok_or_else(|| {
        invalid(format!(
            "messages[{i}].content[{j}].{field} must be a string"
        ))
    })
}

/// A text block, or `None` for empty text (Anthropic rejects empty blocks).
/// A `cache_control` on the part is kept.
fn text_block(text: &str, part: Option<&Value>) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let mut block = Map::new();
    block.insert("type".into(), json!("text"));
    block.insert("text".into(), json!(text));
    if let Some(cache) = part
        .and_then(|p| p.get("cache_control"))
        .filter(|c| c.is_object())
    {
        block.insert("cache_control".into(), cache.clone());
    }
    Some(Value::Object(block))
}

fn system_text(value: Option<&Value>, i: usize) -> Result<String, TranslateError> {
    match content(value, i)? {
        Content::Empty => Ok(String::new()),
        Content::Text(text) => Ok(text.to_owned()),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                if part_type(part, i, j)? != "text" {
                    return Err(invalid(format!(
                        "messages[{i}].content[{j}] must be a text part"
                    )));
                }
                let text = part_text(part, "text", i, j)?;
                if !text.is_empty() {
                    texts.push(text);
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

fn user_blocks(value: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    match content(value, i)? {
        Content::Empty => Ok(Vec::new()),
        Content::Text(text) => Ok(text_block(text, None).into_iter().collect()),
        Content::Parts(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part_type(part, i, j)? {
                    "text" => blocks.extend(text_block(part_text(part, "text", i, j)?, Some(part))),
                    "image_url" => blocks.push(image_block(part, i, j)?),
                    "input_audio" => return Err(TranslateError::Unsupported("input_audio")),
                    "file" => return Err(TranslateError::Unsupported("file")),
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}].type is not supported"
                        )));
                    }
                }
            }
            Ok(blocks)
        }
    }
}

/// An `image_url` part (`data:` URL → base64 source, http(s) → URL source).
fn image_block(part: &Value, i: usize, j: usize) -> Result<Value, TranslateError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|image| image.get("url").or(Some(image)))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(format!(
                "messages[{i}].content[{j}].image_url.url must be a string"
            ))
        })?;
    if let Some(data_url) = url.strip_prefix("data:") {
        let not_base64 = || {
            invalid(format!(
                "messages[{i}].content[{j}].image_url.url must be a base64 data URL"
            ))
        };
        let (meta, data) = data_url.split_once(',').ok_or_else(not_base64)?;
        let media_type = meta
            .strip_suffix(";base64")
            .and_then(|m| m.split(';').next())
            .filter(|m| !m.is_empty())
            .ok_or_else(not_base64)?;
        if data.is_empty() {
            return Err(not_base64());
        }
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(invalid(format!(
        "messages[{i}].content[{j}].image_url.url must be a data: or http(s) URL"
    )))
}

fn assistant_blocks(message: &Value, i: usize) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    match content(message.get("content"), i)? {
        Content::Empty => {}
        Content::Text(text) => blocks.extend(text_block(text, None)),
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match part_type(part, i, j)? {
                    "text" => part_text(part, "text", i, j)?,
                    "refusal" => part_text(part, "refusal", i, j)?,
                    _ => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}].type is not supported"
                        )));
                    }
                };
                blocks.extend(text_block(text, Some(part)));
            }
        }
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (k, call) in calls.iter().enumerate() {
                blocks.push(tool_use_block(call, i, k)?);
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "messages[{i}].tool_calls must be an array"
            )));
        }
    }
    Ok(blocks)
}

fn tool_use_block(call: &Value, i: usize, k: usize) -> Result<Value, TranslateError> {
    let at = format!("messages[{i}].tool_calls[{k}]");
    if call.get("type").is_some_and(|t| t != "function") {
        return Err(TranslateError::Unsupported("non-function tool calls"));
    }
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.id must be a string")))?;
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.function.name must be a string")))?;
    let input = match function.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(arguments)) if arguments.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(arguments)) => serde_json::from_str(arguments)
            .map_err(|_| invalid(format!("{at}.function.arguments is not valid JSON")))?,
        // Some clients send the arguments already parsed.
        Some(other) => other.clone(),
    };
    if !input.is_object() {
        return Err(invalid(format!(
            "{at}.function.arguments must be a JSON object"
        )));
    }
    Ok(json!({
        "type": "tool_use",
        "id": tool_id(id, &at)?,
        "name": name,
        "input": input,
    }))
}

fn tool_result(message: &Value, i: usize) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id must be a string")))?;
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert(
        "tool_use_id".into(),
        json!(tool_id(id, &format!("messages[{i}]"))?),
    );
    match content(message.get("content"), i)? {
        Content::Empty | Content::Text("") => {}
        Content::Text(text) => {
            block.insert("content".into(), json!(text));
        }
        Content::Parts(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                if part_type(part, i, j)? != "text" {
                    return Err(invalid(format!(
                        "messages[{i}].content[{j}] must be a text part"
                    )));
                }
                blocks.extend(text_block(part_text(part, "text", i, j)?, Some(part)));
            }
            if !blocks.is_empty() {
                block.insert("content".into(), Value::Array(blocks));
            }
        }
    }
    Ok(Value::Object(block))
}

/// A tool call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`): other
/// characters become `_`, deterministically, so a `tool_use` and its
/// `tool_result` still match.
fn tool_id(id: &str, at: &str) -> Result<String, TranslateError> {
    if id.is_empty() {
        return Err(invalid(format!("{at}: tool call id must not be empty")));
    }
    Ok(id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect())
}

fn max_tokens(req: &Map<String, Value>) -> Result<u64, TranslateError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                return value
                    .as_u64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(format!("{field} must be a positive integer")));
            }
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let stops: Vec<Value> = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(stop)) => vec![json!(stop)],
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => stops.clone(),
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    };
    let stops: Vec<Value> = stops.into_iter().filter(|s| s != "").collect();
    Ok((!stops.is_empty()).then_some(Value::Array(stops)))
}

fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid("tools must be an array")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (k, tool) in tools.iter().enumerate() {
        if tool.get("type").is_some_and(|t| t != "function") {
            return Err(TranslateError::Unsupported("non-function tools"));
        }
        let function = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| invalid(format!("tools[{k}].function must be an object")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tools[{k}].function.name must be a string")))?;
        let mut schema = match function.get("parameters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(schema)) => schema.clone(),
            Some(_) => {
                return Err(invalid(format!(
                    "tools[{k}].function.parameters must be an object"
                )));
            }
        };
        // Anthropic requires an object schema; OpenAI allows it implied.
        schema.entry("type").or_insert_with(|| json!("object"));
        if schema.get("type") == Some(&json!("object")) {
            schema.entry("properties").or_insert_with(|| json!({}));
        }
        let mut out_tool = Map::new();
        out_tool.insert("name".into(), json!(name));
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            out_tool.insert("description".into(), json!(description));
        }
        out_tool.insert("input_schema".into(), Value::Object(schema));
        out.push(Value::Object(out_tool));
    }
    Ok(out)
}

/// `tool_choice` (+ `parallel_tool_calls: false`) → Anthropic `tool_choice`;
/// nothing when there are no tools.
fn translate_tool_choice(
    choice: Option<&Value>,
    parallel: Option<&Value>,
    has_tools: bool,
) -> Result<Option<Value>, TranslateError> {
    let unsupported =
        || invalid("tool_choice must be \"auto\", \"none\", \"required\" or a function");
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Some(json!({ "type": "auto" })),
            "none" => Some(json!({ "type": "none" })),
            "required" => Some(json!({ "type": "any" })),
            _ => return Err(unsupported()),
        },
        Some(choice @ Value::Object(_)) if choice.get("type") == Some(&json!("function")) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name must be a string"))?;
            Some(json!({ "type": "tool", "name": name }))
        }
        Some(_) => return Err(unsupported()),
    };
    if !has_tools {
        return match choice {
            Some(c) if c["type"] == "any" || c["type"] == "tool" => {
                Err(invalid("tool_choice requires tools"))
            }
            _ => Ok(None),
        };
    }
    let disable_parallel = parallel.and_then(Value::as_bool) == Some(false);
    let choice = match choice {
        Some(choice) => choice,
        None if disable_parallel => json!({ "type": "auto" }),
        None => return Ok(None),
    };
    match choice {
        Value::Object(mut choice)
            if disable_parallel && choice.get("type") != Some(&json!("none")) =>
        {
            choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            Ok(Some(Value::Object(choice)))
        }
        choice => Ok(Some(choice)),
    }
}

fn user_id(req: &Map<String, Value>) -> Result<Option<&str>, TranslateError> {
    for field in ["user", "safety_identifier"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) if id.is_empty() => {}
            Some(Value::String(id)) => return Ok(Some(id)),
            Some(_) => return Err(invalid(format!("{field} must be a string"))),
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Response: Anthropic message → OpenAI chat completion
// ---------------------------------------------------------------------------

/// Token counts of an Anthropic `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Usage {
    /// Overwrites the counts present in `usage` (Anthropic's counts are
    /// cumulative, so the latest wins).
    fn update(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ];
        for (field, slot) in fields {
            if let Some(n) = usage.get(field).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    /// Every input token, cached or not, as OpenAI counts prompt tokens.
    fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    fn to_openai(self) -> Value {
        let prompt = self.prompt();
        let mut usage = Map::new();
        usage.insert("prompt_tokens".into(), json!(prompt));
        usage.insert("completion_tokens".into(), json!(self.output));
        usage.insert(
            "total_tokens".into(),
            json!(prompt.saturating_add(self.output)),
        );
        if self.cache_read > 0 {
            usage.insert(
                "prompt_tokens_details".into(),
                json!({ "cached_tokens": self.cache_read }),
            );
        }
        Value::Object(usage)
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        // end_turn, stop_sequence, pause_turn and anything newer.
        Some(_) => json!("stop"),
    }
}

fn completion_id(message_id: &str) -> String {
    format!("chatcmpl-{message_id}")
}

/// Translates a non-streaming Anthropic Messages response into an OpenAI
/// `chat.completion` for `model` (the name the client asked for).
///
/// Text blocks are concatenated into `message.content` (`null` when there is
/// only tool use); `tool_use` blocks become `tool_calls` with compact JSON
/// `arguments`; thinking and server-tool blocks are dropped. The id is
/// `chatcmpl-<message id>`, as in streams. Lenient: missing fields become
/// empty values rather than errors.
/// Token counts of a non-streamed Messages answer (`usage.input_tokens`,
/// `usage.output_tokens`).
/// Cached input tokens count as prompt tokens, as OpenAI counts them.
pub fn usage_of_response(message: &Value) -> Option<super::Usage> {
    let counts = message.get("usage")?;
    counts.get("input_tokens")?.as_u64()?;
    let mut usage = Usage::default();
    usage.update(Some(counts));
    Some(super::Usage {
        prompt_tokens: usage.prompt(),
        completion_tokens: usage.output,
    })
}

pub fn from_messages_response(anthropic: &Value, model: &str, created: i64) -> Value {
    let str_of = |v: &Value, field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let blocks = anthropic.get("content").and_then(Value::as_array);
    for block in blocks.into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": str_of(block, "id"),
                "type": "function",
                "function": {
                    "name": str_of(block, "name"),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut usage = Usage::default();
    usage.update(anthropic.get("usage"));
    json!({
        "id": completion_id(&str_of(anthropic, "id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(anthropic.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage.to_openai(),
    })
}

// ---------------------------------------------------------------------------
// Streams: Anthropic SSE events → OpenAI chat.completion.chunk objects
// ---------------------------------------------------------------------------

/// Translates one Anthropic Messages stream into OpenAI
/// `chat.completion.chunk` objects, one SSE event at a time.
///
/// The caller parses the SSE framing, calls [`push`](Self::push) with each
/// event's name and data, writes every returned string as `data: <chunk>`,
/// and ends with `data: [DONE]`. With `include_usage`, every chunk carries
/// `"usage": null` and `message_stop` adds a final chunk with `choices: []`
/// and the usage, as OpenAI does.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    created: i64,
    include_usage: bool,
    /// `chatcmpl-<message id>`, known from `message_start`.
    id: Option<String>,
    usage: Usage,
    /// Whether `message_delta` arrived (final output tokens known).
    usage_final: bool,
    /// Anthropic content block index → OpenAI tool call index.
    tool_calls: BTreeMap<u64, usize>,
}

impl StreamTranslator {
    /// A translator for one stream; `model` and `created` go into every chunk.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self {
            model: model.to_owned(),
            created,
            include_usage,
            id: None,
            usage: Usage::default(),
            usage_final: false,
            tool_calls: BTreeMap::new(),
        }
    }

    /// `(prompt_tokens, completion_tokens)`, once `message_delta` has given
    /// the final output count; prompt tokens include cache reads and writes.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage_final
            .then(|| (self.usage.prompt(), self.usage.output))
    }

    /// The prompt tokens `message_start` reported, before the stream ended
    /// (`None` until then): exact input counts for an interrupted stream.
    pub fn prompt_tokens_so_far(&self) -> Option<u64> {
        Some(self.usage.prompt()).filter(|n| *n > 0)
    }

    /// Translates one Anthropic SSE event (`event_name` may be empty: the
    /// data's `type` is used then) into zero or more chunk JSON strings.
    /// An `error` event becomes [`TranslateError::Upstream`]; unknown events
    /// are ignored, as Anthropic asks.
    pub fn push(&mut self, event_name: &str, data: &str) -> Result<Vec<String>, TranslateError> {
        if event_name == "ping" {
            return Ok(Vec::new());
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|_| TranslateError::Malformed("stream event data is not JSON".into()))?;
        let name = if event_name.is_empty() {
            event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
        } else {
            event_name
        };
        match name {
            "message_start" => self.message_start(&event),
            "content_block_start" => self.content_block_start(&event),
            "content_block_delta" => self.content_block_delta(&event),
            "message_delta" => {
                self.usage.update(event.get("usage"));
                self.usage_final = true;
                let stop_reason = event.pointer("/delta/stop_reason").and_then(Value::as_str);
                Ok(vec![self.chunk(json!({}), finish_reason(stop_reason))?])
            }
            "message_stop" => {
                if !self.include_usage {
                    return Ok(Vec::new());
                }
                let mut chunk = self.envelope()?;
                chunk.insert("choices".into(), json!([]));
                chunk.insert("usage".into(), self.usage.to_openai());
                Ok(vec![Value::Object(chunk).to_string()])
            }
            "error" => {
                let error = event.get("error");
                let field = |f: &str, default: &str| {
                    error
                        .and_then(|e| e.get(f))
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_owned()
                };
                Err(TranslateError::Upstream {
                    kind: field("type", "api_error"),
                    message: field("message", "upstream error"),
                })
            }
            // ping, content_block_stop, and event types added later.
            _ => Ok(Vec::new()),
        }
    }

    fn message_start(&mut self, event: &Value) -> Result<Vec<String>, TranslateError> {
        let message = event.get("message");
        let id = message
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::Malformed("message_start without message.id".into()))?;
        self.id = Some(completion_id(id));
        self.usage.update(message.and_then(|m| m.get("usage")));
        Ok(vec![self.chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
        )?])
    }

    fn content_block_start(&mut self, event: &Value) -> Result<Vec<String>, TranslateError> {
        let index = block_index(event)?;
        let Some(block) = event.get("content_block") else {
            return Err(TranslateError::Malformed(
                "content_block_start without content_block".into(),
            ));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let tool_index = self.tool_calls.len();
                self.tool_calls.insert(index, tool_index);
                let field = |f: &str| block.get(f).and_then(Value::as_str).unwrap_or_default();
                let delta = json!({ "tool_calls": [{
                    "index": tool_index,
                    "id": field("id"),
                    "type": "function",
                    "function": { "name": field("name"), "arguments": "" },
                }]});
                Ok(vec![self.chunk(delta, Value::Null)?])
            }
            Some("text") => match block.get("text").and_then(Value::as_str) {
                Some(text) if !text.is_empty() => {
                    Ok(vec![self.chunk(json!({ "content": text }), Value::Null)?])
                }
                _ => Ok(Vec::new()),
            },
            // thinking, redacted_thinking, server tools: not part of OpenAI output.
            _ => Ok(Vec::new()),
        }
    }

    fn content_block_delta(&mut self, event: &Value) -> Result<Vec<String>, TranslateError> {
        let index = block_index(event)?;
        let delta = event.get("delta");
        let field = |f: &str| delta.and_then(|d| d.get(f)).and_then(Value::as_str);
        match field("type") {
            Some("text_delta") => match field("text") {
                Some(text) if !text.is_empty() => {
                    Ok(vec![self.chunk(json!({ "content": text }), Value::Null)?])
                }
                _ => Ok(Vec::new()),
            },
            Some("input_json_delta") => {
                let Some(&tool_index) = self.tool_calls.get(&index) else {
                    return Err(TranslateError::Malformed(
                        "input_json_delta for a block that is not tool_use".into(),
                    ));
                };
                match field("partial_json") {
                    Some(json) if !json.is_empty() => {
                        let delta = json!({ "tool_calls": [{
                            "index": tool_index,
                            "function": { "arguments": json },
                        }]});
                        Ok(vec![self.chunk(delta, Value::Null)?])
                    }
                    _ => Ok(Vec::new()),
                }
            }
            // thinking_delta, signature_delta, citations_delta, …
            _ => Ok(Vec::new()),
        }
    }

    /// The fields every chunk carries.
    fn envelope(&self) -> Result<Map<String, Value>, TranslateError> {
        let id = self
            .id
            .as_deref()
            .ok_or_else(|| TranslateError::Malformed("stream event before message_start".into()))?;
        let mut chunk = Map::new();
        chunk.insert("id".into(), json!(id));
        chunk.insert("object".into(), json!("chat.completion.chunk"));
        chunk.insert("created".into(), json!(self.created));
        chunk.insert("model".into(), json!(self.model));
        Ok(chunk)
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> Result<String, TranslateError> {
        let mut chunk = self.envelope()?;
        chunk.insert(
            "choices".into(),
            json!([{ "index": 0, "delta": delta, "finish_reason": finish_reason }]),
        );
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        Ok(Value::Object(chunk).to_string())
    }
}

fn block_index(event: &Value) -> Result<u64, TranslateError> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| TranslateError::Malformed("content block event without index".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        match to_messages_request(&request, "claude-sonnet-4-5", false) {
            Ok(v) => v,
            Err(e) => panic!("translation failed: {e}"),
        }
    }

    fn translate_err(request: Value) -> TranslateError {
        match to_messages_request(&request, "claude-sonnet-4-5", false) {
            Ok(v) => panic!("expected an error, got {v}"),
            Err(e) => e,
        }
    }

    fn text(t: &str) -> Value {
        json!({ "type": "text", "text": t })
    }

    #[test]
    fn maps_system_user_assistant_with_defaults() {
        let out = to_messages_request(
            &json!({
                "model": "anthropic/claude-sonnet-4.5",
                "messages": [
                    { "role": "system", "content": "Be terse." },
                    { "role": "developer", "content": [
                        { "type": "text", "text": "Answer in English." },
                        { "type": "text", "text": "No lists." },
                    ]},
                    { "role": "user", "content": "Hi" },
                    { "role": "assistant", "content": "Hello." },
                    { "role": "system", "content": "Late rule." },
                    { "role": "user", "content": [{ "type": "text", "text": "Again" }] },
                ],
                "temperature": 0.2,
                "top_p": 0.9,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.1,
                "seed": 7,
                "stream_options": { "include_usage": true },
                "response_format": { "type": "text" },
                "n": 1,
                "logprobs": false,
                "some_future_field": { "x": 1 },
            }),
            "claude-sonnet-4-5",
            true,
        );
        assert_eq!(
            out,
            Ok(json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "system": "Be terse.\n\nAnswer in English.\nNo lists.\n\nLate rule.",
                "messages": [
                    { "role": "user", "content": [text("Hi")] },
                    { "role": "assistant", "content": [text("Hello.")] },
                    { "role": "user", "content": [text("Again")] },
                ],
                "temperature": 0.2,
                "top_p": 0.9,
                "stream": true,
            }))
        );
    }

    #[test]
    fn merges_consecutive_same_role_and_drops_empty() {
        let out = translate(json!({
            "messages": [
                { "role": "user", "content": "a" },
                { "role": "user", "content": [
                    { "type": "text", "text": "b", "cache_control": { "type": "ephemeral" } },
                    { "type": "text", "text": "" },
                ]},
                { "role": "assistant", "content": "" },
                { "role": "user", "content": "c" },
                { "role": "assistant", "content": "d" },
                { "role": "assistant", "content": [{ "type": "refusal", "refusal": "e" }] },
            ],
        }));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [
                    text("a"),
                    { "type": "text", "text": "b", "cache_control": { "type": "ephemeral" } },
                    text("c"),
                ]},
                { "role": "assistant", "content": [text("d"), text("e")] },
            ])
        );
        assert_eq!(out["stream"], json!(false));
        assert!(out.get("system").is_none());
    }

    #[test]
    fn max_tokens_table() {
        let cases = [
            (json!({}), Ok(4096)),
            (json!({ "max_tokens": null }), Ok(4096)),
            (json!({ "max_tokens": 100 }), Ok(100)),
            (
                json!({ "max_completion_tokens": 200, "max_tokens": 100 }),
                Ok(200),
            ),
            (
                json!({ "max_tokens": 0 }),
                Err("max_tokens must be a positive integer"),
            ),
            (
                json!({ "max_completion_tokens": "9" }),
                Err("max_completion_tokens must be a positive integer"),
            ),
        ];
        for (extra, expected) in cases {
            let mut request = json!({ "messages": [{ "role": "user", "content": "x" }] });
            if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
                r.extend(e.clone());
            }
            let got = to_messages_request(&request, "m", false).map(|r| r["max_tokens"].clone());
            let expected = expected
                .map(|n| json!(n))
                .map_err(|e| TranslateError::InvalidRequest(e.to_owned()));
            assert_eq!(got, expected, "{extra}");
        }
    }

    #[test]
    fn stop_sequences_table() {
        let cases = [
            (json!(null), Ok(None)),
            (json!("END"), Ok(Some(json!(["END"])))),
            (json!(["a", "b"]), Ok(Some(json!(["a", "b"])))),
            (json!([]), Ok(None)),
            (json!(""), Ok(None)),
            (json!([1]), Err(())),
            (json!({ "x": 1 }), Err(())),
        ];
        for (stop, expected) in cases {
            let request = json!({ "messages": [{ "role": "user", "content": "x" }], "stop": stop });
            let got = to_messages_request(&request, "m", false)
                .map(|r| r.get("stop_sequences").cloned())
                .map_err(|_| ());
            assert_eq!(got, expected, "{stop}");
        }
    }

    #[test]
    fn tools_and_tool_choice_table() {
        let weather = json!({ "type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
            "strict": true,
        }});
        let bare = json!({ "type": "function", "function": { "name": "now" } });
        let expected_tools = json!([
            { "name": "get_weather", "description": "Weather for a city",
              "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } },
            { "name": "now", "input_schema": { "type": "object", "properties": {} } },
        ]);
        let cases: [(Value, Value, Option<Value>); 7] = [
            (json!(null), json!(null), None),
            (json!("auto"), json!(null), Some(json!({ "type": "auto" }))),
            (json!("none"), json!(null), Some(json!({ "type": "none" }))),
            (
                json!("required"),
                json!(null),
                Some(json!({ "type": "any" })),
            ),
            (
                json!({ "type": "function", "function": { "name": "now" } }),
                json!(true),
                Some(json!({ "type": "tool", "name": "now" })),
            ),
            (
                json!("required"),
                json!(false),
                Some(json!({ "type": "any", "disable_parallel_tool_use": true })),
            ),
            (
                json!(null),
                json!(false),
                Some(json!({ "type": "auto", "disable_parallel_tool_use": true })),
            ),
        ];
        for (choice, parallel, expected) in cases {
            let out = translate(json!({
                "messages": [{ "role": "user", "content": "x" }],
                "tools": [weather, bare],
                "tool_choice": choice,
                "parallel_tool_calls": parallel,
            }));
            assert_eq!(out["tools"], expected_tools);
            assert_eq!(
                out.get("tool_choice"),
                expected.as_ref(),
                "{choice} {parallel}"
            );
        }

        // Without tools: auto/none vanish, forcing a tool is an error.
        let no_tools = |choice: Value| {
            to_messages_request(
                &json!({ "messages": [{ "role": "user", "content": "x" }], "tool_choice": choice }),
                "m",
                false,
            )
        };
        assert!(
            no_tools(json!("none"))
                .is_ok_and(|r| r.get("tool_choice").is_none() && r.get("tools").is_none())
        );
        assert_eq!(
            no_tools(json!("required")),
            Err(TranslateError::InvalidRequest(
                "tool_choice requires tools".into()
            ))
        );
        assert!(matches!(
            no_tools(json!("sometimes")),
            Err(TranslateError::InvalidRequest(_))
        ));
        assert_eq!(
            translate_err(json!({
                "messages": [{ "role": "user", "content": "x" }],
                "tools": [{ "type": "custom", "custom": { "name": "x" } }],
            })),
            TranslateError::Unsupported("non-function tools")
        );
    }

    #[test]
    fn tool_call_round_trip() {
        let out = translate(json!({
            "messages": [
                { "role": "user", "content": "Weather in Paris and Rome?" },
                { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "call_1", "type": "function",
                      "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } },
                    { "id": "functions.get_weather:1", "type": "function",
                      "function": { "name": "get_weather", "arguments": "" } },
                ]},
                { "role": "tool", "tool_call_id": "call_1", "content": "18C" },
                { "role": "tool", "tool_call_id": "functions.get_weather:1",
                  "content": [{ "type": "text", "text": "21C" }] },
                { "role": "user", "content": "Thanks" },
                { "role": "assistant", "content": "Paris 18C, Rome 21C." },
            ],
        }));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [text("Weather in Paris and Rome?")] },
                { "role": "assistant", "content": [
                    { "type": "tool_use", "id": "call_1", "name": "get_weather", "input": { "city": "Paris" } },
                    { "type": "tool_use", "id": "functions_get_weather_1", "name": "get_weather", "input": {} },
                ]},
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "18C" },
                    { "type": "tool_result", "tool_use_id": "functions_get_weather_1", "content": [text("21C")] },
                    text("Thanks"),
                ]},
                { "role": "assistant", "content": [text("Paris 18C, Rome 21C.")] },
            ])
        );
    }

    #[test]
    fn tool_results_go_first_in_a_user_turn() {
        let out = translate(json!({
            "messages": [
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                ]},
                { "role": "user", "content": "interjection" },
                { "role": "tool", "tool_call_id": "c", "content": "" },
            ],
        }));
        assert_eq!(
            out["messages"][1],
            json!({ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "c" },
                text("interjection"),
            ]})
        );
    }

    #[test]
    fn invalid_tool_arguments_name_the_field_not_the_content() {
        let err = translate_err(json!({
            "messages": [
                { "role": "user", "content": "x" },
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "{\"secret\": " } },
                ]},
            ],
        }));
        assert_eq!(
            err,
            TranslateError::InvalidRequest(
                "messages[1].tool_calls[0].function.arguments is not valid JSON".into()
            )
        );
        assert!(!err.to_string().contains("secret"));

        let err = translate_err(json!({
            "messages": [
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "[1]" } },
                ]},
            ],
        }));
        assert_eq!(
            err,
            TranslateError::InvalidRequest(
                "messages[0].tool_calls[0].function.arguments must be a JSON object".into()
            )
        );
        let err = translate_err(json!({
            "messages": [{ "role": "tool", "content": "x" }],
        }));
        assert_eq!(
            err,
            TranslateError::InvalidRequest("messages[0].tool_call_id must be a string".into())
        );
    }

    #[test]
    fn images_table() {
        let part = |url: &str| json!({ "type": "image_url", "image_url": { "url": url, "detail": "high" } });
        let cases = [
            (
                part("data:image/png;base64,iVBORw0KGgo="),
                Ok(
                    json!({ "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } }),
                ),
            ),
            (
                part("https://example.com/cat.jpg"),
                Ok(
                    json!({ "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } }),
                ),
            ),
            (
                json!({ "type": "image_url", "image_url": "HTTP://example.com/a.gif" }),
                Ok(
                    json!({ "type": "image", "source": { "type": "url", "url": "HTTP://example.com/a.gif" } }),
                ),
            ),
            (
                part("data:image/png,rawbytes"),
                Err("messages[0].content[1].image_url.url must be a base64 data URL"),
            ),
            (
                part("data:;base64,AAAA"),
                Err("messages[0].content[1].image_url.url must be a base64 data URL"),
            ),
            (
                part("ftp://example.com/a.png"),
                Err("messages[0].content[1].image_url.url must be a data: or http(s) URL"),
            ),
            (
                json!({ "type": "image_url", "image_url": {} }),
                Err("messages[0].content[1].image_url.url must be a string"),
            ),
        ];
        for (image, expected) in cases {
            let request = json!({ "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "What is this?" },
                image,
            ]}]});
            let got = to_messages_request(&request, "m", false);
            let expected = expected
                .map(|block| json!([{ "role": "user", "content": [text("What is this?"), block] }]))
                .map_err(|e| TranslateError::InvalidRequest(e.to_owned()));
            assert_eq!(got.map(|r| r["messages"].clone()), expected, "{image}");
        }
    }

    #[test]
    fn unsupported_and_invalid_table() {
        let user = json!([{ "role": "user", "content": "x" }]);
        let cases = [
            (
                json!({ "messages": user, "n": 2 }),
                TranslateError::Unsupported("n"),
            ),
            (
                json!({ "messages": user, "logprobs": true }),
                TranslateError::Unsupported("logprobs"),
            ),
            (
                json!({ "messages": user, "response_format": { "type": "json_object" } }),
                TranslateError::Unsupported("response_format"),
            ),
            (
                json!({ "messages": user, "modalities": ["text", "audio"] }),
                TranslateError::Unsupported("audio"),
            ),
            (
                json!({ "messages": user, "functions": [{ "name": "f" }] }),
                TranslateError::Unsupported("functions"),
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "input_audio", "input_audio": {} }] }] }),
                TranslateError::Unsupported("input_audio"),
            ),
            (
                json!([]),
                TranslateError::InvalidRequest("the request body must be a JSON object".into()),
            ),
            (
                json!({}),
                TranslateError::InvalidRequest("messages must be an array".into()),
            ),
            (
                json!({ "messages": [{ "role": "system", "content": "only system" }] }),
                TranslateError::InvalidRequest(
                    "messages must include a user or assistant message with content".into(),
                ),
            ),
            (
                json!({ "messages": [{ "role": "wizard", "content": "x" }] }),
                TranslateError::InvalidRequest("messages[0].role is not supported".into()),
            ),
            (
                json!({ "messages": [{ "role": "user", "content": 5 }] }),
                TranslateError::InvalidRequest(
                    "messages[0].content must be a string or an array".into(),
                ),
            ),
            (
                json!({ "messages": user, "temperature": "hot" }),
                TranslateError::InvalidRequest("temperature must be a number".into()),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(
                to_messages_request(&request, "m", false),
                Err(expected),
                "{request}"
            );
        }
    }

    #[test]
    fn user_becomes_metadata_user_id() {
        let out =
            translate(json!({ "messages": [{ "role": "user", "content": "x" }], "user": "u-42" }));
        assert_eq!(out["metadata"], json!({ "user_id": "u-42" }));
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "x" }],
            "safety_identifier": "s-1",
        }));
        assert_eq!(out["metadata"], json!({ "user_id": "s-1" }));
        let out =
            translate(json!({ "messages": [{ "role": "user", "content": "x" }], "user": "" }));
        assert!(out.get("metadata").is_none());
    }

    #[test]
    fn include_usage_flag() {
        assert!(stream_include_usage(
            &json!({ "stream_options": { "include_usage": true } })
        ));
        assert!(!stream_include_usage(&json!({ "stream_options": {} })));
        assert!(!stream_include_usage(&json!({})));
    }

    // ---- responses

    #[test]
    fn response_with_text_and_tool_calls() {
        let anthropic = json!({
            "id": "msg_01ABC",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                { "type": "thinking", "thinking": "hmm", "signature": "sig" },
                { "type": "text", "text": "Let me check " },
                { "type": "text", "text": "the weather." },
                { "type": "tool_use", "id": "toolu_01", "name": "get_weather",
                  "input": { "city": "Paris", "units": ["c"] } },
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 100,
                "cache_creation_input_tokens": 20,
                "cache_read_input_tokens": 30,
                "output_tokens": 40,
            },
        });
        assert_eq!(
            from_messages_response(&anthropic, "anthropic/claude-sonnet-4.5", 1_700_000_000),
            json!({
                "id": "chatcmpl-msg_01ABC",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "anthropic/claude-sonnet-4.5",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Let me check the weather.",
                        "tool_calls": [{
                            "id": "toolu_01",
                            "type": "function",
                            "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\",\"units\":[\"c\"]}" },
                        }],
                    },
                    "finish_reason": "tool_calls",
                }],
                "usage": {
                    "prompt_tokens": 150,
                    "completion_tokens": 40,
                    "total_tokens": 190,
                    "prompt_tokens_details": { "cached_tokens": 30 },
                },
            })
        );
    }

    #[test]
    fn response_only_tool_use_has_null_content() {
        let anthropic = json!({
            "id": "msg_2",
            "content": [{ "type": "tool_use", "id": "toolu_2", "name": "now", "input": {} }],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 5, "output_tokens": 3 },
        });
        let out = from_messages_response(&anthropic, "m", 1);
        assert_eq!(
            out["choices"][0]["message"],
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{ "id": "toolu_2", "type": "function", "function": { "name": "now", "arguments": "{}" } }],
            })
        );
        assert_eq!(
            out["usage"],
            json!({ "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8 })
        );
    }

    #[test]
    fn finish_reason_table() {
        let cases = [
            ("end_turn", json!("stop")),
            ("stop_sequence", json!("stop")),
            ("pause_turn", json!("stop")),
            ("max_tokens", json!("length")),
            ("tool_use", json!("tool_calls")),
            ("refusal", json!("content_filter")),
        ];
        for (stop_reason, expected) in cases {
            let anthropic = json!({
                "id": "msg", "content": [{ "type": "text", "text": "hi" }],
                "stop_reason": stop_reason, "usage": { "input_tokens": 1, "output_tokens": 1 },
            });
            let out = from_messages_response(&anthropic, "m", 0);
            assert_eq!(
                out["choices"][0]["finish_reason"], expected,
                "{stop_reason}"
            );
            assert_eq!(out["choices"][0]["message"]["content"], json!("hi"));
        }
    }

    // ---- streams

    /// A recorded-style stream: text, then a tool_use with partial JSON.
    const STREAM: &[(&str, &str)] = &[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_01XYZ","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":2}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let me"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" check."}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x","name":"get_weather","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"Paris\"}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];

    fn run(translator: &mut StreamTranslator, events: &[(&str, &str)]) -> Vec<Value> {
        let mut chunks = Vec::new();
        for (name, data) in events {
            match translator.push(name, data) {
                Ok(out) => {
                    chunks.extend(out.iter().map(|c| match serde_json::from_str::<Value>(c) {
                        Ok(v) => v,
                        Err(e) => panic!("chunk is not JSON: {e}"),
                    }))
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
        chunks
    }

    fn expected_chunks(include_usage: bool) -> Vec<Value> {
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({
                "id": "chatcmpl-msg_01XYZ",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "anthropic/claude-sonnet-4.5",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut chunks = vec![
            chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
            chunk(json!({ "content": "Okay, let me" }), Value::Null),
            chunk(json!({ "content": " check." }), Value::Null),
            chunk(
                json!({ "tool_calls": [{ "index": 0, "id": "toolu_01T1x", "type": "function",
                                         "function": { "name": "get_weather", "arguments": "" } }] }),
                Value::Null,
            ),
            chunk(
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"location\":" } }] }),
                Value::Null,
            ),
            chunk(
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": " \"Paris\"}" } }] }),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ];
        if include_usage {
            chunks.push(json!({
                "id": "chatcmpl-msg_01XYZ",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "anthropic/claude-sonnet-4.5",
                "choices": [],
                "usage": {
                    "prompt_tokens": 482,
                    "completion_tokens": 89,
                    "total_tokens": 571,
                    "prompt_tokens_details": { "cached_tokens": 10 },
                },
            }));
        }
        chunks
    }

    #[test]
    fn full_stream_without_usage() {
        let mut t = StreamTranslator::new("anthropic/claude-sonnet-4.5", 1_700_000_000, false);
        assert_eq!(run(&mut t, STREAM), expected_chunks(false));
        assert_eq!(t.usage(), Some((482, 89)));
    }

    #[test]
    fn full_stream_with_usage() {
        let mut t = StreamTranslator::new("anthropic/claude-sonnet-4.5", 1_700_000_000, true);
        assert_eq!(run(&mut t, STREAM), expected_chunks(true));
        assert_eq!(t.usage(), Some((482, 89)));
    }

    #[test]
    fn usage_only_after_message_delta() {
        let mut t = StreamTranslator::new("m", 0, false);
        run(&mut t, &STREAM[..11]);
        assert_eq!(t.usage(), None);
        run(&mut t, &STREAM[11..12]);
        assert_eq!(t.usage(), Some((482, 89)));
    }

    #[test]
    fn second_tool_block_gets_next_index_and_event_name_may_be_empty() {
        let mut t = StreamTranslator::new("m", 0, false);
        let chunks = run(
            &mut t,
            &[
                (
                    "",
                    r#"{"type":"message_start","message":{"id":"msg_9","usage":{"input_tokens":1,"output_tokens":1}}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hidden"}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"a","input":{}}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"t2","name":"b","input":{}}}"#,
                ),
                (
                    "",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
                ),
                ("some_future_event", r#"{"type":"some_future_event"}"#),
            ],
        );
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas.len(), 4);
        assert_eq!(deltas[1]["tool_calls"][0]["index"], json!(0));
        assert_eq!(deltas[1]["tool_calls"][0]["id"], json!("t1"));
        assert_eq!(deltas[2]["tool_calls"][0]["index"], json!(1));
        assert_eq!(
            deltas[3],
            &json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "{}" } }] })
        );
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn error_event_becomes_upstream_error() {
        let mut t = StreamTranslator::new("m", 0, false);
        run(&mut t, &STREAM[..4]);
        assert_eq!(
            t.push(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Err(TranslateError::Upstream {
                kind: "overloaded_error".into(),
                message: "Overloaded".into(),
            })
        );
        assert_eq!(
            t.push("error", r#"{"type":"error"}"#),
            Err(TranslateError::Upstream {
                kind: "api_error".into(),
                message: "upstream error".into(),
            })
        );
    }

    #[test]
    fn malformed_stream_events() {
        let mut t = StreamTranslator::new("m", 0, false);
        let cases = [
            ("message_start", "not json", "stream event data is not JSON"),
            (
                "message_start",
                r#"{"type":"message_start","message":{}}"#,
                "message_start without message.id",
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
                "stream event before message_start",
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta"}"#,
                "content block event without index",
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
                "input_json_delta for a block that is not tool_use",
            ),
        ];
        for (name, data, expected) in cases {
            assert_eq!(
                t.push(name, data),
                Err(TranslateError::Malformed(expected.into())),
                "{data}"
            );
        }
        assert_eq!(t.push("ping", "{}"), Ok(Vec::new()));
    }
}
