//! The OpenAI Chat Completions wire format (`POST {base_url}/chat/completions`), also spoken by
//! Azure OpenAI, vLLM, llama.cpp's server and Ollama.
//!
//! Pure translation: [`request_body`] turns a [`ChatRequest`] into the JSON body,
//! [`parse_response`] turns a response body into a [`ChatResponse`], and [`StreamDecoder`]
//! turns server-sent events into [`StreamEvent`]s. HTTP, keys and retries live in `client`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{error_for_body_type, json_instruction};
use super::{
    sse, ChatRequest, ChatResponse, Error, ResponseFormat, Role, StreamEvent, TokenLogprob, Usage,
};
use crate::config::ModelConfig;

/// OpenAI allows at most 20 alternatives per token.
const TOP_LOGPROBS_MAX: u8 = 20;

/// The JSON body for `request`. `stream` asks for server-sent events with a final usage chunk;
/// log-probabilities are only asked for outside streams (a [`StreamEvent`] cannot carry them).
pub fn request_body(config: &ModelConfig, request: &ChatRequest, stream: bool) -> Value {
    let mut body = json!({
        "model": config.model,
        "messages": messages(config, request),
    });
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if config.structured_output {
        match &request.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => body["response_format"] = json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": strict},
                });
            }
        }
    }
    if let (Some(alternatives), true, false) = (request.logprobs, config.logprobs, stream) {
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(alternatives.min(TOP_LOGPROBS_MAX));
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The messages as sent. A JSON instruction is added to the system prompt when the provider
/// cannot be told the format (`structured_output = false`), and for `json_object`, which
/// OpenAI refuses unless some message mentions JSON.
fn messages(config: &ModelConfig, request: &ChatRequest) -> Vec<Value> {
    let mut messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| json!({"role": message.role, "content": message.content}))
        .collect();
    let mentions_json = request
        .messages
        .iter()
        .any(|message| message.content.to_ascii_lowercase().contains("json"));
    let needs_instruction = match request.response_format {
        ResponseFormat::Text => false,
        ResponseFormat::JsonObject => !config.structured_output || !mentions_json,
        ResponseFormat::JsonSchema { .. } => !config.structured_output,
    };
    let Some(instruction) =
        json_instruction(&request.response_format).filter(|_| needs_instruction)
    else {
        return messages;
    };
    match request.messages.first() {
        Some(first) if first.role == Role::System => {
            messages[0]["content"] = json!(format!("{}\n\n{instruction}", first.content));
        }
        _ => messages.insert(0, json!({"role": "system", "content": instruction})),
    }
    messages
}

#[derive(Debug, Deserialize)]
struct Completion {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    logprobs: Option<ChoiceLogprobs>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceLogprobs {
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct WireTokenLogprob {
    token: String,
    logprob: f64,
    #[serde(default)]
    top_logprobs: Vec<WireAlternative>,
}

#[derive(Debug, Deserialize)]
struct WireAlternative {
    token: String,
    logprob: f64,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptTokensDetails {
    cached_tokens: Option<u64>,
}

impl WireUsage {
    /// OpenAI's `prompt_tokens` already include the cached ones.
    fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
            cached_input_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// A `chat.completion` object. A refusal is [`Error::Rejected`]; a missing answer is
/// [`Error::Malformed`]; a missing `usage` block is `usage: None` (the cost is then unknown).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, Error> {
    let malformed = |detail: String| Error::Malformed {
        detail,
        raw: super::keep_raw(body),
    };
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("not a chat completion: {error}")))?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(malformed("the completion has no choices".to_string()));
    };
    let Some(message) = choice.message else {
        return Err(malformed("choices[0] has no message".to_string()));
    };
    let text = match (message.content, message.refusal) {
        (_, Some(refusal)) if !refusal.is_empty() => {
            tracing::debug!(refusal_chars = refusal.len(), "the model refused to answer");
            return Err(Error::Rejected {
                status: 200,
                raw: super::keep_raw(body),
            });
        }
        (Some(content), _) => content,
        (None, _) => {
            return Err(malformed(format!(
                "choices[0].message.content is null (finish_reason: {})",
                choice.finish_reason.as_deref().unwrap_or("none")
            )))
        }
    };
    let logprobs = choice
        .logprobs
        .and_then(|logprobs| logprobs.content)
        .map(|tokens| {
            tokens
                .into_iter()
                .map(|token| TokenLogprob {
                    token: token.token,
                    logprob: token.logprob,
                    top: token
                        .top_logprobs
                        .into_iter()
                        .map(|alternative| (alternative.token, alternative.logprob))
                        .collect(),
                })
                .collect()
        });
    Ok(ChatResponse {
        text,
        usage: completion.usage.as_ref().map(WireUsage::to_usage),
        logprobs,
        finish_reason: choice.finish_reason,
        response_model: completion.model,
        response_id: completion.id,
    })
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    delta: Option<ChunkDelta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    refusal: Option<String>,
}

/// Turns `chat.completion.chunk` events into stream events; `data: [DONE]` ends the stream.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: Option<Usage>,
    finish_reason: Option<String>,
    saw_content: bool,
    refusal: String,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    pub fn decode(&mut self, event: &sse::Event) -> Result<Vec<StreamEvent>, Error> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return self.done();
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|error| Error::Malformed {
            detail: format!("a stream chunk is not JSON: {error}"),
            raw: super::keep_raw(data.as_bytes()),
        })?;
        if let Some(error) = chunk.error {
            let kind = error
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("server_error");
            return Err(error_for_body_type(kind, super::keep_raw(data.as_bytes())));
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.to_usage());
        }
        let mut events = Vec::new();
        for choice in chunk.choices.into_iter().take(1) {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(refusal) = delta.refusal {
                self.refusal.push_str(&refusal);
            }
            if let Some(content) = delta.content.filter(|content| !content.is_empty()) {
                self.saw_content = true;
                events.push(StreamEvent::Delta(content));
            }
        }
        Ok(events)
    }

    fn done(&mut self) -> Result<Vec<StreamEvent>, Error> {
        if !self.refusal.is_empty() && !self.saw_content {
            return Err(Error::Rejected {
                status: 200,
                raw: super::keep_raw(self.refusal.as_bytes()),
            });
        }
        Ok(vec![StreamEvent::Done {
            usage: self.usage,
            finish_reason: self.finish_reason.take(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> sse::Event {
        sse::Event {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn a_refusal_is_rejected_and_a_null_content_is_malformed() {
        let refusal = br#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        assert!(matches!(
            parse_response(refusal),
            Err(Error::Rejected { status: 200, .. })
        ));
        let null = br#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"length"}]}"#;
        let error = parse_response(null).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("content is null (finish_reason: length)"),
            "{error}"
        );
    }

    #[test]
    fn stream_chunks_become_deltas_then_done_with_usage() {
        let mut decoder = StreamDecoder::new();
        let first = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
        assert_eq!(decoder.decode(&event(first)).unwrap(), vec![]);
        let text = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#;
        assert_eq!(
            decoder.decode(&event(text)).unwrap(),
            vec![StreamEvent::Delta("Hi".into())]
        );
        let stop = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
        assert_eq!(decoder.decode(&event(stop)).unwrap(), vec![]);
        let usage = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;
        assert_eq!(decoder.decode(&event(usage)).unwrap(), vec![]);
        assert_eq!(
            decoder.decode(&event("[DONE]")).unwrap(),
            vec![StreamEvent::Done {
                usage: Some(Usage {
                    input_tokens: 9,
                    output_tokens: 1,
                    cached_input_tokens: 0
                }),
                finish_reason: Some("stop".into())
            }]
        );
    }

    #[test]
    fn an_error_inside_a_stream_is_classified() {
        let mut decoder = StreamDecoder::new();
        let error = decoder
            .decode(&event(r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#))
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
    }
}
