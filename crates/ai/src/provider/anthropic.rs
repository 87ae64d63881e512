//! Anthropic's Messages API wire format (`POST {base_url}/messages`).
//!
//! Pure translation, like `openai`: system messages go to the top-level `system` field,
//! `max_tokens` is always sent (Anthropic requires it), and a JSON-schema answer is asked for
//! as a forced call of a tool named `respond` whose input is the answer. HTTP, keys and retries
//! live in `client`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{error_for_body_type, json_instruction};
use super::{sse, ChatRequest, ChatResponse, Error, ResponseFormat, Role, StreamEvent, Usage};
use crate::config::ModelConfig;

/// The API version Keel speaks, sent as `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic requires `max_tokens`; this is sent when the request does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The forced tool whose input is a JSON-schema answer.
pub const RESPOND_TOOL: &str = "respond";

/// The JSON body for `request`.
pub fn request_body(config: &ModelConfig, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|message| message.role != Role::System)
        .map(|message| json!({"role": message.role, "content": message.content}))
        .collect();
    let mut body = json!({
        "model": config.model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    let forced_tool = match &request.response_format {
        ResponseFormat::JsonSchema { name, schema, .. } if config.structured_output => {
            Some(json!({
                "name": RESPOND_TOOL,
                "description": format!("Give the answer as structured data matching the schema `{name}`."),
                "input_schema": schema,
            }))
        }
        _ => None,
    };
    if let Some(system) = system_prompt(request, forced_tool.is_none()) {
        body["system"] = json!(system);
    }
    if let Some(tool) = forced_tool {
        body["tools"] = json!([tool]);
        body["tool_choice"] = json!({"type": "tool", "name": RESPOND_TOOL});
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if !request.stop.is_empty() {
        body["stop_sequences"] = json!(request.stop);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// Every system message, joined, plus the JSON instruction when the format is not enforced
/// by a forced tool.
fn system_prompt(request: &ChatRequest, instruct_json: bool) -> Option<String> {
    let mut parts: Vec<String> = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System)
        .map(|message| message.content.clone())
        .collect();
    if instruct_json {
        parts.extend(json_instruction(&request.response_format));
    }
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        input: Value,
    },
    /// Thinking, redacted thinking, server tools: not part of the answer.
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Anthropic's `input_tokens` exclude cache reads and cache writes; Keel's include both.
    fn to_usage(&self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0) + cache_read + cache_creation,
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: cache_read,
        }
    }
}

/// A `message` object. The forced tool's input, when present, is the answer (as JSON text);
/// otherwise the text blocks are. A `refusal` stop is [`Error::Rejected`].
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, Error> {
    let malformed = |detail: String| Error::Malformed {
        detail,
        raw: super::keep_raw(body),
    };
    let message: WireMessage = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("not a message: {error}")))?;
    if message.stop_reason.as_deref() == Some("refusal") {
        return Err(Error::Rejected {
            status: 200,
            raw: super::keep_raw(body),
        });
    }
    let mut text: Option<String> = None;
    let mut tool_input: Option<String> = None;
    for block in message.content {
        match block {
            Block::Text { text: part } => text.get_or_insert_with(String::new).push_str(&part),
            Block::ToolUse { name, input } if name == RESPOND_TOOL => {
                tool_input = Some(input.to_string())
            }
            Block::ToolUse { .. } | Block::Other => {}
        }
    }
    let Some(text) = tool_input.or(text) else {
        return Err(malformed(format!(
            "the message has neither text nor a `{RESPOND_TOOL}` tool call (stop_reason: {})",
            message.stop_reason.as_deref().unwrap_or("none")
        )));
    };
    Ok(ChatResponse {
        text,
        usage: message.usage.as_ref().map(WireUsage::to_usage),
        logprobs: None,
        finish_reason: message.stop_reason,
        response_model: message.model,
        response_id: message.id,
    })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockDelta {
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    /// `ping`, `content_block_start`, `content_block_stop`.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum BlockDelta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    /// Thinking and signature deltas.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: String,
}

/// Turns Messages API stream events into stream events; `message_stop` ends the stream.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: Option<WireUsage>,
    stop_reason: Option<String>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    pub fn decode(&mut self, event: &sse::Event) -> Result<Vec<StreamEvent>, Error> {
        let raw = || super::keep_raw(event.data.as_bytes());
        let wire: WireEvent =
            serde_json::from_str(&event.data).map_err(|error| Error::Malformed {
                detail: format!("a stream event is not a Messages API event: {error}"),
                raw: raw(),
            })?;
        match wire {
            WireEvent::MessageStart { message } => self.usage = message.usage,
            WireEvent::ContentBlockDelta { delta } => match delta {
                BlockDelta::Text { text } | BlockDelta::InputJson { partial_json: text }
                    if !text.is_empty() =>
                {
                    return Ok(vec![StreamEvent::Delta(text)]);
                }
                _ => {}
            },
            WireEvent::MessageDelta { delta, usage } => {
                self.stop_reason = delta.stop_reason.or(self.stop_reason.take());
                if let Some(update) = usage {
                    self.merge_usage(update);
                }
            }
            WireEvent::MessageStop => return self.done(raw),
            WireEvent::Error { error } => return Err(error_for_body_type(&error.kind, raw())),
            WireEvent::Other => {}
        }
        Ok(Vec::new())
    }

    /// `message_delta` usage counts are cumulative; fields it leaves out keep their values.
    fn merge_usage(&mut self, update: WireUsage) {
        let usage = self.usage.get_or_insert_with(WireUsage::default);
        usage.output_tokens = update.output_tokens.or(usage.output_tokens);
        usage.input_tokens = update.input_tokens.or(usage.input_tokens);
        usage.cache_read_input_tokens = update
            .cache_read_input_tokens
            .or(usage.cache_read_input_tokens);
        usage.cache_creation_input_tokens = update
            .cache_creation_input_tokens
            .or(usage.cache_creation_input_tokens);
    }

    fn done(&mut self, raw: impl Fn() -> String) -> Result<Vec<StreamEvent>, Error> {
        if self.stop_reason.as_deref() == Some("refusal") {
            return Err(Error::Rejected {
                status: 200,
                raw: raw(),
            });
        }
        Ok(vec![StreamEvent::Done {
            usage: self.usage.as_ref().map(WireUsage::to_usage),
            finish_reason: self.stop_reason.take(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> sse::Event {
        sse::Event {
            event: Some(name.to_string()),
            data: data.to_string(),
        }
    }

    #[test]
    fn cache_reads_and_writes_count_as_input() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"...","signature":"s"},{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":3}}"#;
        let response = parse_response(body).unwrap();
        assert_eq!(response.text, "Hi");
        assert_eq!(
            response.usage,
            Some(Usage {
                input_tokens: 115,
                output_tokens: 3,
                cached_input_tokens: 100
            })
        );
    }

    #[test]
    fn stream_events_become_deltas_then_done() {
        let mut decoder = StreamDecoder::new();
        let start = r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#;
        assert!(decoder
            .decode(&event("message_start", start))
            .unwrap()
            .is_empty());
        assert!(decoder
            .decode(&event("ping", r#"{"type": "ping"}"#))
            .unwrap()
            .is_empty());
        let delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#;
        assert_eq!(
            decoder
                .decode(&event("content_block_delta", delta))
                .unwrap(),
            vec![StreamEvent::Delta("Hello".into())]
        );
        let message_delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#;
        assert!(decoder
            .decode(&event("message_delta", message_delta))
            .unwrap()
            .is_empty());
        assert_eq!(
            decoder
                .decode(&event("message_stop", r#"{"type":"message_stop"}"#))
                .unwrap(),
            vec![StreamEvent::Done {
                usage: Some(Usage {
                    input_tokens: 25,
                    output_tokens: 15,
                    cached_input_tokens: 0
                }),
                finish_reason: Some("end_turn".into())
            }]
        );
    }

    #[test]
    fn an_overloaded_error_event_is_retryable() {
        let mut decoder = StreamDecoder::new();
        let error = decoder
            .decode(&event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap_err();
        assert!(
            matches!(error, Error::Server { status: 529, .. }),
            "{error:?}"
        );
    }
}
