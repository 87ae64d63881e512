//! Model providers: one request and response shape for every chat API Keel speaks, and the
//! clients that translate it to each wire format (`openai`, `anthropic`).
//!
//! A [`ProviderClient`] owns the resilience of calls to one configured model: the per-attempt
//! timeout, bounded retries with backoff that honour `Retry-After`, a circuit breaker, and a
//! concurrency limit. Everything above it (cascades, budgets, cache, journal) is in `router`.

use serde::Serialize;

pub mod anthropic;
pub mod client;
pub mod openai;
pub mod sse;

pub use client::{ApiKeyLookup, BreakerState, CallStats, ChatStream, ProviderClient};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// What shape the answer must have.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    /// Any JSON object (`response_format: {type: json_object}`).
    JsonObject,
    /// JSON matching `schema`: sent as `response_format: {type: json_schema}` to OpenAI-compatible
    /// providers and as a forced tool call to Anthropic. Keel validates the answer either way.
    JsonSchema {
        name: String,
        schema: serde_json::Value,
        strict: bool,
    },
}

/// One chat request, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub response_format: ResponseFormat,
    /// `Some(n)`: ask for token log-probabilities with `n` alternatives per token (0..=20).
    /// Providers that cannot return them ignore it.
    pub logprobs: Option<u8>,
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// A plain request with one user message.
    pub fn user(content: impl Into<String>) -> ChatRequest {
        ChatRequest {
            messages: vec![Message {
                role: Role::User,
                content: content.into(),
            }],
            temperature: None,
            max_tokens: None,
            response_format: ResponseFormat::Text,
            logprobs: None,
            stop: Vec::new(),
        }
    }
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
}

/// One generated token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub top: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    /// The answer's text. For a JSON answer (including Anthropic's forced tool call) this is the
    /// JSON text.
    pub text: String,
    /// `None` when the response carried no usage block: its cost is then unknown.
    pub usage: Option<Usage>,
    /// Per generated token, when asked for and returned.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub finish_reason: Option<String>,
    /// The model name the provider reported.
    pub response_model: Option<String>,
    /// The provider's response id.
    pub response_id: Option<String>,
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// The stream finished normally.
    Done {
        usage: Option<Usage>,
        finish_reason: Option<String>,
    },
}

/// Why a call to a provider did not produce a usable response. Every variant that came from a
/// response keeps the start of the raw body (at most [`RAW_KEEP_BYTES`]) for the record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "the environment variable {env} is not set; set it to the API key for model `{model}`"
    )]
    MissingApiKey { model: String, env: String },
    #[error("{provider} rejected the API key (HTTP {status}); check that the environment variable {env} holds a valid key for model `{model}`")]
    Unauthorized {
        provider: &'static str,
        model: String,
        env: String,
        status: u16,
        raw: String,
    },
    #[error("rate limited (HTTP 429){}", retry_after_ms.map(|ms| format!("; retry after {ms} ms")).unwrap_or_default())]
    RateLimited {
        retry_after_ms: Option<u64>,
        raw: String,
    },
    #[error("the provider failed (HTTP {status})")]
    Server { status: u16, raw: String },
    #[error("the provider refused the request (HTTP {status}); retrying will not help")]
    Rejected { status: u16, raw: String },
    #[error("no response within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("cannot connect to the provider: {detail}")]
    Connect { detail: String },
    #[error("the response is larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize, raw: String },
    #[error("the response is not in the expected format: {detail}")]
    Malformed { detail: String, raw: String },
    #[error("the stream ended before the answer was complete")]
    StreamCut { partial: String },
    #[error("circuit breaker open for model `{model}` after repeated failures; retry in {retry_in_ms} ms")]
    CircuitOpen { model: String, retry_in_ms: u64 },
    #[error("the local learner cannot serve this request: {detail}")]
    Unsupported { detail: String },
}

/// How much of a raw body an error keeps.
pub const RAW_KEEP_BYTES: usize = 16 * 1024;

impl Error {
    /// Whether another attempt at the same provider may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Connect { .. }
                | Error::StreamCut { .. }
        )
    }

    /// Whether it counts against the circuit breaker (the provider, not the request, is at fault).
    pub fn counts_against_provider(&self) -> bool {
        matches!(
            self,
            Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Connect { .. }
                | Error::RateLimited { .. }
        )
    }

    /// A stable code for the journal and problem documents.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MissingApiKey { .. } => "missing_api_key",
            Error::Unauthorized { .. } => "unauthorized",
            Error::RateLimited { .. } => "rate_limited",
            Error::Server { .. } => "provider_error",
            Error::Rejected { .. } => "rejected",
            Error::Timeout { .. } => "timeout",
            Error::Connect { .. } => "connect",
            Error::TooLarge { .. } => "too_large",
            Error::Malformed { .. } => "malformed",
            Error::StreamCut { .. } => "stream_cut",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::Unsupported { .. } => "unsupported",
        }
    }

    /// The raw response kept with the error, if any.
    pub fn raw(&self) -> Option<&str> {
        match self {
            Error::Unauthorized { raw, .. }
            | Error::RateLimited { raw, .. }
            | Error::Server { raw, .. }
            | Error::Rejected { raw, .. }
            | Error::TooLarge { raw, .. }
            | Error::Malformed { raw, .. } => Some(raw),
            Error::StreamCut { partial } => Some(partial),
            _ => None,
        }
    }
}

/// The first `RAW_KEEP_BYTES` of `body` as text, cut at a character boundary.
pub fn keep_raw(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(RAW_KEEP_BYTES)]);
    text.into_owned()
}
