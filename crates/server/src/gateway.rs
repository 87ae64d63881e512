//! The drop-in gateway: `POST /v1/chat/completions` (plain and SSE streaming) and
//! `GET /v1/models` in the OpenAI wire format, so that an application points its base URL at
//! Keel and gets model aliases with fallback, response caching, cost tracking, budgets per
//! caller, JSON-schema validation of `response_format`, and a journal entry per call.
//!
//! Callers authenticate with a Keel API token (`Authorization: Bearer keel_…`, created by
//! `keel token create`); the token's name is the caller that budgets and the journal see.
//! Errors use OpenAI's error body (`{"error": {"message", "type", "param", "code"}}`) so that
//! OpenAI client libraries raise their usual exceptions.
//!
//! A request names a model declared in `keel.toml` or an alias (`[gateway.aliases]`) that lists
//! models in order. Each model is tried in turn: a budget refusal, a provider failure or an
//! answer that fails the requested schema hands over to the next; when none succeeds the caller
//! gets the last error with every attempt journaled.
//!
//! Streaming: a plain stream is forwarded chunk by chunk as it arrives. A stream that asks for
//! `response_format` `json_object` or `json_schema` is held back until the complete answer has
//! been validated (an answer that fails must never reach the caller), then sent as SSE chunks.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_ai::budget::to_nano;
use keel_ai::cascade::{cost_of, estimate_cost, request_sha256, sha256_hex, Runtime};
use keel_ai::config::{ModelConfig, ProviderKind};
use keel_ai::provider::{
    ChatRequest, ChatResponse, Message, ResponseFormat, Role, StreamEvent, TokenLogprob, Usage,
};
use keel_core::schema::Schema;
use keel_engine::tokens::{Caller, Refusal};
use keel_engine::{canonical_data, rfc3339_ms, Engine};
use keel_store::{AiCallRow, NewEntry};
use serde_json::{json, Value};

use crate::metrics::CallTimer;
use crate::AppState;

/// Fields of a chat-completions request the gateway understands.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "response_format",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "n",
    "user",
    "metadata",
    "store",
];

/// Fields OpenAI accepts that the gateway does not support yet: refused by name rather than
/// silently ignored.
const UNSUPPORTED_FIELDS: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "reasoning_effort",
    "service_tier",
];

/// An error in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct GatewayError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
}

impl GatewayError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> GatewayError {
        GatewayError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code: "invalid_request",
            param,
        }
    }

    fn unsupported(field: &str) -> GatewayError {
        GatewayError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "`{field}` is not supported by the Keel gateway yet; remove it from the request"
            ),
            kind: "invalid_request_error",
            code: "unsupported_parameter",
            param: None,
        }
    }

    fn auth(message: impl Into<String>) -> GatewayError {
        GatewayError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            code: "invalid_api_key",
            param: None,
        }
    }

    fn internal() -> GatewayError {
        GatewayError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error; the server log has the details".into(),
            kind: "server_error",
            code: "internal",
            param: None,
        }
    }

    /// 503 `overloaded`; the response carries `Retry-After`.
    fn overloaded(reason: &str) -> GatewayError {
        GatewayError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("{reason}; nothing was done, retry after a second"),
            kind: "server_error",
            code: "overloaded",
            param: None,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// The gateway's routes: the errors the server answers on them before a gateway handler runs
/// (405 for a wrong method, 413 for a body over the limit) take OpenAI's shape too.
pub(crate) const PATHS: &[&str] = &["/v1/chat/completions", "/v1/models"];

/// A 405 in OpenAI's shape, with the `Allow` header.
pub(crate) fn method_not_allowed(allow: &str) -> Response {
    let mut response = GatewayError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("this endpoint takes {allow}"),
        kind: "invalid_request_error",
        code: "method_not_allowed",
        param: None,
    }
    .into_response();
    if let Ok(value) = HeaderValue::from_str(allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// A 413 in OpenAI's shape.
pub(crate) fn payload_too_large(max_body_bytes: usize) -> Response {
    GatewayError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the request body is larger than the limit of {max_body_bytes} bytes; send a shorter conversation"),
        kind: "invalid_request_error",
        code: "request_too_large",
        param: None,
    }
    .into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keel\""),
            );
        }
        if self.code == "overloaded" {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The models and aliases a caller may name (OpenAI's model list).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "gateway",
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "`{object: list, data: [{id, object: model, created, owned_by}]}`", body = serde_json::Value),
        (status = 401, description = "Missing, unknown, revoked or expired token (OpenAI error body)", body = serde_json::Value),
    )
)]
pub(crate) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(error) = authorize(&state, &headers).await {
        return error.into_response();
    }
    let mut data = Vec::new();
    if let Some(runtime) = state.engine.ai() {
        let config = runtime.config();
        for (name, model) in &config.models {
            if model.provider != ProviderKind::Local {
                data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": model.provider.as_str()}));
            }
        }
        for alias in config.gateway.aliases.keys() {
            data.push(json!({"id": alias, "object": "model", "created": 0, "owned_by": "keel"}));
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The caller, if its token is live and Cedar lets it `use_gateway`.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    let caller = authenticate(&state.engine, headers).await?;
    let verdict = match &state.authorizer {
        Some(authorizer) => authorizer.decide(&caller, "use_gateway", "System", "keel"),
        None => keel_engine::authz::Verdict {
            allowed: false,
            policies: Vec::new(),
            errors: vec!["no policies loaded".into()],
        },
    };
    if verdict.allowed {
        return Ok(caller);
    }
    crate::guard::journal(
        &state.engine,
        &caller,
        "use_gateway",
        "Keel::System::\"keel\"",
        &verdict,
    )
    .await;
    Err(GatewayError {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "`{}` may not use the gateway: give the token the `gateway` role (keel token create --roles gateway)",
            caller.name
        ),
        kind: "invalid_request_error",
        code: "permission_denied",
        param: None,
    })
}

async fn authenticate(engine: &Engine, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(GatewayError::auth(
            "no API key: send `Authorization: Bearer <token>` with a token from `keel token create`",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    if secret.is_empty() {
        return Err(GatewayError::auth(
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    match engine.authenticate(secret).await {
        Ok(Ok(caller)) => Ok(caller),
        Ok(Err(Refusal::Unknown)) => Err(GatewayError::auth(
            "the API key is not a Keel token; create one with `keel token create --name APP`",
        )),
        Ok(Err(Refusal::Revoked)) => Err(GatewayError::auth(
            "the API key was revoked; create a new one with `keel token create`",
        )),
        Ok(Err(refusal @ (Refusal::Expired | Refusal::Disabled))) => {
            Err(GatewayError::auth(crate::auth::refusal_message(refusal)))
        }
        Err(error) => {
            tracing::error!(%error, "token lookup failed");
            Err(GatewayError::internal())
        }
    }
}

/// A parsed chat-completions request.
struct Parsed {
    requested_model: String,
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
    /// What the answer must be, checked by Keel whatever the provider did.
    check: AnswerCheck,
    logprobs: bool,
}

enum AnswerCheck {
    None,
    JsonObject,
    Schema(Box<Schema>),
}

/// Parses a chat-completions body exactly as `POST /v1/chat/completions` does, without serving
/// it, then checks `answer` against the request's `response_format`: the problems found (empty
/// when it passes), or the status and OpenAI error body the caller would get. Pure; it is the
/// entry point of the gateway's fuzz target (`fuzz/fuzz_targets/gateway_request.rs`).
pub fn parse_chat_request(body: &[u8], answer: &str) -> Result<Vec<String>, (u16, Value)> {
    let parsed = parse(body).map_err(|error| (error.status.as_u16(), error.body()))?;
    Ok(problems(&parsed.check, answer))
}

fn parse(body: &[u8]) -> Result<Parsed, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        GatewayError::invalid(format!("the request body is not valid JSON: {error}"), None)
    })?;
    let Value::Object(fields) = value else {
        return Err(GatewayError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    };
    for key in fields.keys() {
        if UNSUPPORTED_FIELDS.contains(&key.as_str()) {
            if fields.get(key).is_some_and(|v| !v.is_null()) {
                return Err(GatewayError::unsupported(key));
            }
        } else if !KNOWN_FIELDS.contains(&key.as_str()) {
            return Err(GatewayError::invalid(
                format!("unrecognized request argument supplied: {key}"),
                None,
            ));
        }
    }
    let requested_model = match fields.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => {
            return Err(GatewayError::invalid(
                "`model` is required: a model or alias from GET /v1/models",
                Some("model"),
            ))
        }
    };
    let messages = parse_messages(fields.get("messages"))?;
    let temperature = match fields.get("temperature") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => {
                return Err(GatewayError::invalid(
                    "`temperature` must be a number from 0 to 2",
                    Some("temperature"),
                ))
            }
        },
    };
    let max_tokens = match fields
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| fields.get("max_tokens").filter(|v| !v.is_null()))
    {
        None => None,
        Some(value) => match whole_number(value) {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Some(n as u32),
            _ => {
                return Err(GatewayError::invalid(
                    "`max_tokens` must be a positive integer",
                    Some("max_tokens"),
                ))
            }
        },
    };
    let stop = match fields.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
            items
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "`stop` must be a string or an array of at most 4 strings",
                Some("stop"),
            ))
        }
    };
    if let Some(n) = fields.get("n").filter(|v| !v.is_null()) {
        if whole_number(n) != Some(1) {
            return Err(GatewayError::invalid(
                "the Keel gateway answers one choice per request: `n` must be 1",
                Some("n"),
            ));
        }
    }
    let (response_format, check) = parse_response_format(fields.get("response_format"))?;
    let stream = fields
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = fields
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let logprobs = fields
        .get("logprobs")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let top_logprobs = match fields.get("top_logprobs") {
        None | Some(Value::Null) => 0,
        Some(value) => match whole_number(value) {
            Some(n) if n <= 20 => n as u8,
            _ => {
                return Err(GatewayError::invalid(
                    "`top_logprobs` must be an integer from 0 to 20",
                    Some("top_logprobs"),
                ))
            }
        },
    };
    Ok(Parsed {
        requested_model,
        request: ChatRequest {
            messages,
            temperature,
            max_tokens,
            response_format,
            logprobs: logprobs.then_some(top_logprobs),
            stop,
        },
        stream,
        include_usage,
        check,
        logprobs,
    })
}

/// A non-negative whole number, also when written with a fraction (`5.0`): JSON does not tell
/// them apart, and neither do OpenAI's clients.
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|n| n.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(n))
            .map(|n| n as u64)
    })
}

fn parse_messages(value: Option<&Value>) -> Result<Vec<Message>, GatewayError> {
    let Some(Value::Array(items)) = value else {
        return Err(GatewayError::invalid(
            "`messages` is required: an array of {role, content}",
            Some("messages"),
        ));
    };
    if items.is_empty() {
        return Err(GatewayError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let role = match item.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other @ ("tool" | "function")) => {
                return Err(GatewayError::unsupported(&format!(
                    "messages[{index}].role `{other}`"
                )))
            }
            _ => {
                return Err(GatewayError::invalid(
                    format!("messages[{index}].role must be system, developer, user or assistant"),
                    Some("messages"),
                ))
            }
        };
        let content = match item.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(piece)) => text.push_str(piece),
                        (Some(kind), _) => {
                            return Err(GatewayError::unsupported(&format!(
                                "messages[{index}].content part of type `{kind}`"
                            )))
                        }
                        _ => {
                            return Err(GatewayError::invalid(
                                format!("messages[{index}].content parts must be {{\"type\": \"text\", \"text\": …}}"),
                                Some("messages"),
                            ))
                        }
                    }
                }
                text
            }
            _ => {
                return Err(GatewayError::invalid(
                    format!("messages[{index}].content must be a string or an array of text parts"),
                    Some("messages"),
                ))
            }
        };
        messages.push(Message { role, content });
    }
    Ok(messages)
}

fn parse_response_format(
    value: Option<&Value>,
) -> Result<(ResponseFormat, AnswerCheck), GatewayError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok((ResponseFormat::Text, AnswerCheck::None));
    };
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok((ResponseFormat::Text, AnswerCheck::None)),
        Some("json_object") => Ok((ResponseFormat::JsonObject, AnswerCheck::JsonObject)),
        Some("json_schema") => {
            let spec = value.get("json_schema");
            let name = spec
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_string();
            let Some(schema) = spec.and_then(|s| s.get("schema")).filter(|s| s.is_object()) else {
                return Err(GatewayError::invalid(
                    "`response_format.json_schema.schema` must be a JSON Schema object",
                    Some("response_format"),
                ));
            };
            let compiled = Schema::compile(schema.clone()).map_err(|error| {
                GatewayError::invalid(
                    format!(
                        "`response_format.json_schema.schema` is not a valid JSON Schema: {error}"
                    ),
                    Some("response_format"),
                )
            })?;
            let strict = spec
                .and_then(|s| s.get("strict"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok((
                ResponseFormat::JsonSchema {
                    name,
                    schema: schema.clone(),
                    strict,
                },
                AnswerCheck::Schema(Box::new(compiled)),
            ))
        }
        _ => Err(GatewayError::invalid(
            "`response_format.type` must be text, json_object or json_schema",
            Some("response_format"),
        )),
    }
}

/// The problems of `text` under `check`; empty when it passes.
fn problems(check: &AnswerCheck, text: &str) -> Vec<String> {
    match check {
        AnswerCheck::None => Vec::new(),
        AnswerCheck::JsonObject => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(_)) => Vec::new(),
            Ok(_) => vec!["the answer is JSON but not an object".into()],
            Err(error) => vec![format!("the answer is not JSON ({error})")],
        },
        AnswerCheck::Schema(schema) => match serde_json::from_str::<Value>(text) {
            Ok(value) => match schema.validate(&value) {
                Ok(()) => Vec::new(),
                Err(violations) => violations
                    .into_iter()
                    .map(|v| {
                        if v.path.is_empty() {
                            v.message
                        } else {
                            format!("{}: {}", v.path, v.message)
                        }
                    })
                    .collect(),
            },
            Err(error) => vec![format!("the answer is not JSON ({error})")],
        },
    }
}

/// How a request ended, for its journal entry.
struct End<'a> {
    served: Option<&'a str>,
    status: &'a str,
    response: Option<&'a str>,
    usage: Option<Usage>,
}

impl End<'_> {
    fn failed(status: &str) -> End<'_> {
        End {
            served: None,
            status,
            response: None,
            usage: None,
        }
    }
}

/// What one request did, for its journal entry and `ai_calls` rows.
struct Log {
    caller: Caller,
    requested_model: String,
    stream: bool,
    request_sha256: String,
    started: Instant,
    started_ms: i64,
    attempts: Vec<Value>,
    calls: Vec<AiCallRow>,
    cost_nano: i64,
    cost_known: bool,
    /// Time spent waiting for upstream calls; the rest of `started.elapsed()` is overhead.
    upstream: std::time::Duration,
    /// A forwarded stream: its time is the stream's, so no overhead is observed.
    forwarded: bool,
}

impl Log {
    fn call_row(&self, model: &ModelConfig) -> AiCallRow {
        AiCallRow {
            at_ms: self.started_ms,
            day: rfc3339_ms(self.started_ms)[..10].to_string(),
            source: "gateway".into(),
            caller: Some(self.caller.name.clone()),
            model: model.name.clone(),
            provider: model.provider.as_str().into(),
            status: "ok".into(),
            ..AiCallRow::default()
        }
    }

    fn add_cost(&mut self, cost: Option<f64>) {
        match cost {
            Some(cost) => self.cost_nano += to_nano(cost),
            None => self.cost_known = false,
        }
    }

    /// Writes the journal entry and the call rows (durably or in the background, as
    /// `[gateway] durable_journal` says).
    async fn finish(self, engine: &Engine, runtime: &Runtime, request: &ChatRequest, end: End<'_>) {
        let End {
            served,
            status,
            response,
            usage,
        } = end;
        let redact = runtime.config().journal.redact_text;
        let mut data = json!({
            "caller": self.caller.name,
            "token_id": self.caller.token_id,
            "requested_model": self.requested_model,
            "model": served,
            "stream": self.stream,
            "status": status,
            "request_sha256": self.request_sha256,
            "usage": usage,
            "cost_usd": self.cost_known.then(|| self.cost_nano as f64 / 1e9),
            "cost_known": self.cost_known,
            "latency_ms": self.started.elapsed().as_secs_f64() * 1e3,
            "attempts": self.attempts,
        });
        if redact {
            data["response_sha256"] = json!(response.map(|r| sha256_hex(r.as_bytes())));
        } else {
            data["messages"] = json!(request.messages);
            data["response"] = json!(response);
        }
        let (data, data_sha256) = canonical_data(&data);
        let entry = NewEntry {
            at: rfc3339_ms(self.started_ms),
            kind: "ai.call".into(),
            actor_type: "token".into(),
            actor_id: self.caller.name.clone(),
            case_id: None,
            workflow: None,
            step: None,
            data,
            data_sha256,
        };
        if runtime.config().gateway.durable_journal {
            engine
                .record_ai_calls_durably(self.calls, Some(entry))
                .await;
        } else {
            engine.record_ai_calls(self.calls, Some(entry)).await;
        }
        if !self.forwarded {
            let overhead = self.started.elapsed().saturating_sub(self.upstream);
            engine.telemetry().observe_gateway_overhead(overhead);
        }
    }
}

/// OpenAI-compatible chat completions: aliases with fallback, Keel's validation of
/// `response_format`, the response cache, caller budgets and an `ai.call` journal entry per
/// call. `stream: true` answers with server-sent events in OpenAI's chunk format.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "gateway",
    security(("keel_token" = [])),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "OpenAI's chat-completions request: model, messages, temperature, max_tokens or max_completion_tokens, stop, response_format, stream, stream_options, logprobs, top_logprobs, n (1), user, metadata, store"),
    responses(
        (status = 200, description = "`chat.completion`, or `text/event-stream` of `chat.completion.chunk` ending in `[DONE]`; headers x-keel-model, x-keel-cost-usd, x-keel-cache", body = serde_json::Value),
        (status = 400, description = "Invalid or unsupported request (OpenAI error body)", body = serde_json::Value),
        (status = 401, description = "Missing, unknown, revoked or expired token", body = serde_json::Value),
        (status = 404, description = "Unknown model or alias", body = serde_json::Value),
        (status = 429, description = "The caller's or the total budget is exhausted (`budget_exhausted`)", body = serde_json::Value),
        (status = 502, description = "Every model failed, or answered outside `response_format` (`invalid_response`)", body = serde_json::Value),
    )
)]
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // Admission comes before the body is read, so that an overload costs no buffered bodies.
    let permit = match admit(&state, &headers) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let caller = match authorize(&state, &headers).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(),
    };
    let parsed = match parse(&body) {
        Ok(parsed) => parsed,
        Err(error) => return error.into_response(),
    };
    let Some(runtime) = state.engine.ai().cloned() else {
        return GatewayError {
            status: StatusCode::NOT_FOUND,
            message: "no models are configured: start `keel serve --config keel.toml` with [models.NAME] entries".into(),
            kind: "invalid_request_error",
            code: "model_not_found",
            param: Some("model"),
        }
        .into_response();
    };
    let route = match resolve(&runtime, &parsed.requested_model) {
        Ok(route) => route,
        Err(error) => return error.into_response(),
    };
    let started_ms = state.engine.now_ms();
    let log = Log {
        caller,
        requested_model: parsed.requested_model.clone(),
        stream: parsed.stream,
        request_sha256: request_sha256(&parsed.request),
        started: Instant::now(),
        started_ms,
        attempts: Vec::new(),
        calls: Vec::new(),
        cost_nano: 0,
        cost_known: true,
        upstream: std::time::Duration::ZERO,
        forwarded: false,
    };
    if parsed.stream && matches!(parsed.check, AnswerCheck::None) {
        forward_stream(state.engine.clone(), runtime, parsed, route, log, permit).await
    } else {
        let response = complete(state.engine.clone(), runtime, parsed, route, log).await;
        drop(permit);
        response
    }
}

/// Bytes of request bodies the gateway holds at once over all its requests in flight. A
/// request reserves its `Content-Length` (the largest body allowed when it sends none) before
/// its body is read and keeps it until it is answered; beyond the bound, 503 at once.
pub(crate) const MAX_BUFFERED_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Units of the body budget semaphore ([`crate::AppState::gateway_body_budget`]).
pub(crate) const BODY_BUDGET_UNIT_BYTES: usize = 1024;

/// A request's place in the gateway: one of `[gateway] max_in_flight`, and its body's share
/// of [`MAX_BUFFERED_BODY_BYTES`]. Both are given back when it is dropped.
pub(crate) struct Admission {
    _in_flight: tokio::sync::OwnedSemaphorePermit,
    _body: tokio::sync::OwnedSemaphorePermit,
}

/// Admits a request or refuses it with 503 `overloaded` and `Retry-After`: at the limit of
/// requests in flight, of buffered body bytes, or when the journal queue is near its bound.
fn admit(state: &AppState, headers: &HeaderMap) -> Result<Admission, GatewayError> {
    let Ok(in_flight) = state.gateway_permits.clone().try_acquire_owned() else {
        return Err(GatewayError::overloaded(
            "the gateway is at its limit of requests in flight ([gateway] max_in_flight)",
        ));
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(state.max_body_bytes);
    // A body over the limit is refused with 413 when it is read; it reserves only the limit.
    let units = declared
        .min(state.max_body_bytes)
        .div_ceil(BODY_BUDGET_UNIT_BYTES)
        .clamp(1, MAX_BUFFERED_BODY_BYTES / BODY_BUDGET_UNIT_BYTES);
    let body = u32::try_from(units).ok().and_then(|units| {
        state
            .gateway_body_budget
            .clone()
            .try_acquire_many_owned(units)
            .ok()
    });
    let Some(body) = body else {
        return Err(GatewayError::overloaded(
            "the gateway holds as many request bodies as it buffers at once",
        ));
    };
    if !state.engine.ai_call_log_has_room() {
        return Err(GatewayError::overloaded(
            "the journal of gateway calls is behind (its queue is near its bound)",
        ));
    }
    Ok(Admission {
        _in_flight: in_flight,
        _body: body,
    })
}

/// The models a requested name stands for, in fallback order.
fn resolve(runtime: &Runtime, requested: &str) -> Result<Vec<ModelConfig>, GatewayError> {
    let config = runtime.config();
    let names: Vec<String> = match config.gateway.aliases.get(requested) {
        Some(models) => models.clone(),
        None if config.models.contains_key(requested) => vec![requested.to_string()],
        None => {
            return Err(GatewayError {
                status: StatusCode::NOT_FOUND,
                message: format!("the model `{requested}` does not exist: name a model declared in keel.toml or an alias of [gateway.aliases]; GET /v1/models lists them"),
                kind: "invalid_request_error",
                code: "model_not_found",
                param: Some("model"),
            })
        }
    };
    let models: Vec<ModelConfig> = names
        .iter()
        .filter_map(|name| config.models.get(name))
        .filter(|model| model.provider != ProviderKind::Local)
        .cloned()
        .collect();
    if models.is_empty() {
        return Err(GatewayError::invalid(
            format!(
                "`{requested}` names only the built-in learner, which serves `ai` steps, not chat"
            ),
            Some("model"),
        ));
    }
    Ok(models)
}

/// How the last failed model failed, for the status the caller gets.
enum Failure {
    Budget(String),
    Provider(String, &'static str),
    Invalid(String),
}

impl Failure {
    fn into_error(self) -> GatewayError {
        match self {
            Failure::Budget(message) => GatewayError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "insufficient_quota",
                code: "budget_exhausted",
                param: None,
            },
            Failure::Provider(message, code) => GatewayError {
                status: StatusCode::BAD_GATEWAY,
                message,
                kind: "upstream_error",
                code,
                param: None,
            },
            Failure::Invalid(message) => GatewayError {
                status: StatusCode::BAD_GATEWAY,
                message,
                kind: "upstream_error",
                code: "invalid_response",
                param: Some("response_format"),
            },
        }
    }
}

/// A complete (non-forwarded) answer: plain requests, and streams held back for validation.
async fn complete(
    engine: Engine,
    runtime: std::sync::Arc<Runtime>,
    parsed: Parsed,
    route: Vec<ModelConfig>,
    mut log: Log,
) -> Response {
    let date = rfc3339_date(log.started_ms);
    let mut failure = Failure::Provider("no model could be tried".into(), "no_model");
    for model in &route {
        let Some(client) = runtime.client(&model.name) else {
            continue;
        };
        let cache_key = runtime.cache().key(&model.name, &parsed.request);
        if let Some(response) = cache_key
            .as_ref()
            .and_then(|key| runtime.cache().get(key, log.started_ms))
        {
            log.attempts.push(json!({"model": model.name, "provider": model.provider.as_str(), "cache_hit": true, "cost_usd": 0.0}));
            let mut row = log.call_row(model);
            row.cache_hit = true;
            row.cost_nano = Some(0);
            log.calls.push(row);
            return answer(engine, &runtime, parsed, model, response, true, log).await;
        }
        let estimate = to_nano(estimate_cost(model, &parsed.request, date));
        let reservation = match runtime.budgets().reserve(
            None,
            Some(&log.caller.name),
            date,
            estimate,
        ) {
            Ok(reservation) => reservation,
            Err(exhausted) => {
                log.attempts.push(json!({"model": model.name, "error": "budget_exhausted", "message": exhausted.to_string()}));
                failure = Failure::Budget(exhausted.to_string());
                continue;
            }
        };
        let timer = CallTimer::start();
        let (result, stats) = client.chat(&parsed.request).await;
        log.upstream += timer.elapsed();
        let cost = match &result {
            Ok(response) => cost_of(model, response.usage, date),
            Err(_) => Some(0.0),
        };
        runtime.budgets().settle(reservation, cost.map(to_nano));
        log.add_cost(cost);
        let outcome = match &result {
            Ok(response) => Ok((response.usage, response.response_model.as_deref())),
            Err(error) => Err(error.code()),
        };
        timer.observe(
            &engine,
            model,
            &parsed.request,
            &log.caller.name,
            outcome,
            cost,
        );
        let mut row = log.call_row(model);
        row.attempts = i64::from(stats.attempts);
        row.latency_ms = stats.latency_ms as i64;
        row.cost_nano = cost.map(to_nano);
        let mut attempt = json!({"model": model.name, "provider": model.provider.as_str(),
            "attempts": stats.attempts, "latency_ms": stats.latency_ms, "cache_hit": false});
        match result {
            Err(error) => {
                row.status = error.code().into();
                attempt["error"] = json!(error.code());
                attempt["message"] = json!(error.to_string());
                log.calls.push(row);
                log.attempts.push(attempt);
                failure = Failure::Provider(
                    format!("model `{}` failed: {error}", model.name),
                    error.code(),
                );
            }
            Ok(response) => {
                fill_usage(&mut row, response.usage);
                attempt["usage"] = json!(response.usage);
                attempt["cost_usd"] = json!(cost);
                let found = problems(&parsed.check, &response.text);
                if found.is_empty() {
                    log.calls.push(row);
                    log.attempts.push(attempt);
                    if let Some(key) = cache_key {
                        runtime.cache().put(key, response.clone(), log.started_ms);
                    }
                    return answer(engine, &runtime, parsed, model, response, false, log).await;
                }
                row.status = "invalid_response".into();
                attempt["error"] = json!("invalid_response");
                attempt["problems"] = json!(found);
                if runtime.config().journal.redact_text {
                    attempt["response_sha256"] = json!(sha256_hex(response.text.as_bytes()));
                } else {
                    attempt["response"] = json!(response.text);
                }
                log.calls.push(row);
                log.attempts.push(attempt);
                failure = Failure::Invalid(format!(
                    "model `{}` answered but the answer does not match response_format: {}",
                    model.name,
                    found.join("; ")
                ));
            }
        }
    }
    let error = failure.into_error();
    let code = error.code;
    log.finish(&engine, &runtime, &parsed.request, End::failed(code))
        .await;
    error.into_response()
}

fn fill_usage(row: &mut AiCallRow, usage: Option<Usage>) {
    if let Some(usage) = usage {
        row.input_tokens = usage.input_tokens as i64;
        row.output_tokens = usage.output_tokens as i64;
        row.cached_input_tokens = usage.cached_input_tokens as i64;
    }
}

fn rfc3339_date(ms: i64) -> chrono::NaiveDate {
    keel_core::case::millis_to_datetime(ms).date_naive()
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::now_v7().simple())
}

fn usage_json(usage: Option<Usage>) -> Value {
    match usage {
        Some(usage) => json!({
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        }),
        None => Value::Null,
    }
}

fn logprobs_json(logprobs: Option<&[TokenLogprob]>) -> Value {
    match logprobs {
        Some(tokens) => json!({"content": tokens.iter().map(|t| json!({
            "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(),
            "top_logprobs": t.top.iter().map(|(token, logprob)| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(), "refusal": null}),
        None => Value::Null,
    }
}

fn keel_headers(response: &mut Response, model: &str, cost: Option<f64>, cache_hit: bool) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert("x-keel-model", value);
    }
    if let Some(cost) = cost {
        if let Ok(value) = HeaderValue::from_str(&format!("{cost:.9}")) {
            headers.insert("x-keel-cost-usd", value);
        }
    }
    headers.insert(
        "x-keel-cache",
        HeaderValue::from_static(if cache_hit { "hit" } else { "miss" }),
    );
}

/// Sends an accepted answer, as JSON or as a (held-back) SSE stream, and logs the call.
async fn answer(
    engine: Engine,
    runtime: &Runtime,
    parsed: Parsed,
    model: &ModelConfig,
    response: ChatResponse,
    cache_hit: bool,
    log: Log,
) -> Response {
    let id = completion_id();
    let created = log.started_ms / 1000;
    let cost = log.cost_known.then(|| log.cost_nano as f64 / 1e9);
    let finish_reason = response
        .finish_reason
        .clone()
        .unwrap_or_else(|| "stop".into());
    let mut http = if parsed.stream {
        let mut body = String::new();
        let chunk = |delta: Value, finish: Value, usage: Option<Value>| {
            let mut chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                "model": model.name, "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            if let Some(usage) = usage {
                chunk["usage"] = usage;
            }
            chunk
        };
        let usage_field = parsed.include_usage.then_some(Value::Null);
        for event in [
            chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                usage_field.clone(),
            ),
            chunk(
                json!({"content": response.text}),
                Value::Null,
                usage_field.clone(),
            ),
            chunk(json!({}), json!(finish_reason), usage_field),
        ] {
            body.push_str(&format!("data: {event}\n\n"));
        }
        if parsed.include_usage {
            let last = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                "model": model.name, "system_fingerprint": null, "choices": [], "usage": usage_json(response.usage)});
            body.push_str(&format!("data: {last}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        sse_response(Body::from(body))
    } else {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model.name,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": response.text, "refusal": null},
                "logprobs": if parsed.logprobs { logprobs_json(response.logprobs.as_deref()) } else { Value::Null },
                "finish_reason": finish_reason,
            }],
            "usage": usage_json(response.usage),
        });
        axum::Json(body).into_response()
    };
    keel_headers(&mut http, &model.name, cost, cache_hit);
    let end = End {
        served: Some(&model.name),
        status: "ok",
        response: Some(&response.text),
        usage: response.usage,
    };
    log.finish(&engine, runtime, &parsed.request, end).await;
    http
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A plain stream, forwarded as it arrives. Fallback to the next model happens only before
/// the first bytes; after that a failure ends the stream with an error event.
async fn forward_stream(
    engine: Engine,
    runtime: std::sync::Arc<Runtime>,
    parsed: Parsed,
    route: Vec<ModelConfig>,
    mut log: Log,
    permit: Admission,
) -> Response {
    let date = rfc3339_date(log.started_ms);
    let mut failure = Failure::Provider("no model could be tried".into(), "no_model");
    let mut permit = Some(permit);
    log.forwarded = true;
    for model in route {
        let Some(client) = runtime.client(&model.name) else {
            continue;
        };
        let estimate = to_nano(estimate_cost(&model, &parsed.request, date));
        let reservation = match runtime.budgets().reserve(
            None,
            Some(&log.caller.name),
            date,
            estimate,
        ) {
            Ok(reservation) => reservation,
            Err(exhausted) => {
                log.attempts.push(json!({"model": model.name, "error": "budget_exhausted", "message": exhausted.to_string()}));
                failure = Failure::Budget(exhausted.to_string());
                continue;
            }
        };
        let timer = CallTimer::start();
        let mut stream = match client.chat_stream(&parsed.request).await {
            Ok(stream) => stream,
            Err(error) => {
                let (request, caller) = (&parsed.request, &log.caller.name);
                timer.observe(
                    &engine,
                    &model,
                    request,
                    caller,
                    Err(error.code()),
                    Some(0.0),
                );
                runtime.budgets().settle(reservation, Some(0));
                let mut row = log.call_row(&model);
                row.status = error.code().into();
                row.cost_nano = Some(0);
                log.calls.push(row);
                log.attempts.push(
                    json!({"model": model.name, "provider": model.provider.as_str(),
                    "error": error.code(), "message": error.to_string()}),
                );
                failure = Failure::Provider(
                    format!("model `{}` failed: {error}", model.name),
                    error.code(),
                );
                continue;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
        let id = completion_id();
        let created = log.started_ms / 1000;
        let include_usage = parsed.include_usage;
        let engine = engine.clone();
        let runtime = runtime.clone();
        let request = parsed.request;
        let served = model.name.clone();
        // The permit is held until the stream ends.
        let permit = permit.take();
        tokio::spawn(async move {
            let _permit = permit;
            let open = stream.open_stats();
            let chunk = |delta: Value, finish: Value| {
                let mut chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model.name, "system_fingerprint": null,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
                if include_usage {
                    chunk["usage"] = Value::Null;
                }
                Bytes::from(format!("data: {chunk}\n\n"))
            };
            let mut text = String::new();
            let mut client_gone = tx
                .send(Ok(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )))
                .await
                .is_err();
            let mut outcome: Result<(Option<Usage>, Option<String>), keel_ai::provider::Error> =
                Err(keel_ai::provider::Error::StreamCut {
                    partial: String::new(),
                });
            while !client_gone {
                match stream.next().await {
                    Some(Ok(StreamEvent::Delta(delta))) => {
                        text.push_str(&delta);
                        client_gone = tx
                            .send(Ok(chunk(json!({"content": delta}), Value::Null)))
                            .await
                            .is_err();
                    }
                    Some(Ok(StreamEvent::Done {
                        usage,
                        finish_reason,
                    })) => {
                        outcome = Ok((usage, finish_reason));
                        break;
                    }
                    Some(Err(error)) => {
                        outcome = Err(error);
                        break;
                    }
                    None => break,
                }
            }
            let mut row = log.call_row(&model);
            row.attempts = i64::from(open.attempts);
            row.latency_ms = log.started.elapsed().as_millis() as i64;
            let status = match (&outcome, client_gone) {
                (_, true) => "client_disconnected".to_string(),
                (Ok(_), false) => "ok".to_string(),
                (Err(error), false) => error.code().to_string(),
            };
            let usage = outcome.as_ref().ok().and_then(|(usage, _)| *usage);
            // A cut or abandoned stream may have cost tokens that no usage block reports.
            let cost = match &outcome {
                Ok((usage, _)) => cost_of(&model, *usage, date),
                Err(_) => None,
            };
            runtime.budgets().settle(reservation, cost.map(to_nano));
            log.add_cost(cost);
            let call_outcome = match status.as_str() {
                "ok" => Ok((usage, None)),
                failed => Err(failed),
            };
            timer.observe(
                &engine,
                &model,
                &request,
                &log.caller.name,
                call_outcome,
                cost,
            );
            row.cost_nano = cost.map(to_nano);
            row.status = status.clone();
            fill_usage(&mut row, usage);
            log.calls.push(row);
            log.attempts.push(
                json!({"model": model.name, "provider": model.provider.as_str(),
                "attempts": open.attempts, "status": status, "usage": usage, "cost_usd": cost}),
            );
            // Journaled before the stream's end is sent, so that (with a durable journal) a
            // caller that saw `[DONE]` can rely on the entry.
            let end = End {
                served: Some(&model.name),
                status: &status,
                response: Some(&text),
                usage,
            };
            log.finish(&engine, &runtime, &request, end).await;
            if !client_gone {
                match &outcome {
                    Ok((usage, finish_reason)) => {
                        let finish = finish_reason.clone().unwrap_or_else(|| "stop".into());
                        let _ = tx.send(Ok(chunk(json!({}), json!(finish)))).await;
                        if include_usage {
                            let last = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                "model": model.name, "system_fingerprint": null, "choices": [], "usage": usage_json(*usage)});
                            let _ = tx.send(Ok(Bytes::from(format!("data: {last}\n\n")))).await;
                        }
                        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                    }
                    Err(error) => {
                        let event = json!({"error": {"message": format!("model `{}` failed mid-stream: {error}", model.name),
                            "type": "upstream_error", "param": null, "code": error.code()}});
                        let _ = tx.send(Ok(Bytes::from(format!("data: {event}\n\n")))).await;
                    }
                }
            }
            drop(tx);
        });
        let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let mut response = sse_response(body);
        keel_headers(&mut response, &served, None, false);
        return response;
    }
    let error = failure.into_error();
    let code = error.code;
    log.finish(&engine, &runtime, &parsed.request, End::failed(code))
        .await;
    error.into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    /// Every bound of the gateway (requests in flight, buffered bodies, the journal queue)
    /// refuses with this answer: what OpenAI clients retry on.
    #[test]
    fn an_overload_is_a_503_in_openai_shape_with_retry_after() {
        let error = GatewayError::overloaded("the journal of gateway calls is behind");
        let body = error.body();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "overloaded");
        assert!(body["error"]["param"].is_null());
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the journal of gateway calls is behind; nothing was done"));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
