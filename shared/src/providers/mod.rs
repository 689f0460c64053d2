//! Upstream provider adapters: one module per wire format. Most services
//! speak the OpenAI chat-completions format; Anthropic's Messages API is
//! translated, and Bedrock's Converse API is bridged through that
//! translation.

pub mod anthropic;
pub mod bedrock;
pub mod openai;
pub mod raw_object;
pub mod sse;

/// Tokens an upstream reported for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}
