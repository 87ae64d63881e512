//! Provider clients against real local HTTP servers (port 0) that speak the OpenAI and
//! Anthropic wire formats with bodies shaped like the real APIs': request translation, response
//! parsing, retries, `Retry-After`, the circuit breaker, timeouts, size limits, streams and the
//! concurrency limit.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use keel_ai::config::{ModelConfig, ProviderKind};
use keel_ai::provider::client::BreakerState;
use keel_ai::provider::{
    ChatRequest, ChatResponse, Error, Message, ProviderClient, ResponseFormat, Role, StreamEvent,
    Usage, RAW_KEEP_BYTES,
};
use serde_json::{json, Value};

const KEY_ENV: &str = "KEEL_TEST_PROVIDER_KEY";
const KEY: &str = "sk-test-9f8e7d6c5b4a3210secret";

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    path: String,
    query: String,
    headers: HeaderMap,
    pub(crate) body: Value,
}

/// A local server; `hits` counts requests, `max_in_flight` the most handled at once.
pub(crate) struct Mock {
    pub(crate) base_url: String,
    hits: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Mock {
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request was received")
    }
}

/// Serves every path with `handler(hit_index, request)`.
pub(crate) async fn mock<F, Fut>(handler: F) -> Mock
where
    F: Fn(usize, Received) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let state = (
        hits.clone(),
        in_flight,
        max_in_flight.clone(),
        received.clone(),
    );
    let router = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let (hits, in_flight, max_in_flight, received) = state.clone();
        let handler = handler.clone();
        async move {
            let request = Received {
                path: uri.path().to_string(),
                query: uri.query().unwrap_or("").to_string(),
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            received.lock().unwrap().push(request.clone());
            let index = hits.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            let response = handler(index, request).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Mock {
        base_url: format!("http://{address}/v1"),
        hits,
        max_in_flight,
        received,
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).unwrap()
}

pub(crate) fn json_reply(status: u16, body: Value) -> Response {
    reply(
        status,
        &[("content-type", "application/json")],
        body.to_string(),
    )
}

/// A streamed body: each piece a few milliseconds after the last; `cut` ends it with a broken
/// connection instead of a clean end.
fn streamed(pieces: Vec<String>, cut: bool) -> Response {
    let pieces = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<Bytes, std::io::Error>(Bytes::from(piece))
    });
    let end = futures_util::stream::iter(cut.then_some(())).then(|()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut"))
    });
    reply(
        200,
        &[("content-type", "text/event-stream")],
        Body::from_stream(pieces.chain(end)),
    )
}

fn config(provider: ProviderKind, mock: &Mock) -> ModelConfig {
    ModelConfig {
        name: "test-model".to_string(),
        provider,
        base_url: mock.base_url.clone(),
        model: match provider {
            ProviderKind::Anthropic => "claude-sonnet-4-5".to_string(),
            _ => "gpt-4o-mini".to_string(),
        },
        api_key_env: Some(KEY_ENV.to_string()),
        api_key_header: match provider {
            ProviderKind::Anthropic => "x-api-key".to_string(),
            _ => "authorization".to_string(),
        },
        query: Default::default(),
        timeout_ms: 5_000,
        max_concurrency: 16,
        max_retries: 2,
        breaker_failures: 5,
        breaker_cooldown_ms: 30_000,
        max_response_bytes: 4 << 20,
        structured_output: true,
        logprobs: true,
        prices: Vec::new(),
    }
}

fn client(config: ModelConfig) -> ProviderClient {
    ProviderClient::new(config, reqwest::Client::new())
        .with_backoff(1, 5)
        .with_api_key_lookup(Arc::new(|name| (name == KEY_ENV).then(|| KEY.to_string())))
}

pub(crate) fn openai_completion(content: &str, usage: bool) -> Value {
    let mut body = json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306"
    });
    if !usage {
        body.as_object_mut().unwrap().remove("usage");
    }
    body
}

fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn openai_server_error() -> Response {
    json_reply(
        500,
        openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
    )
}

fn anthropic_message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": 412,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 2048,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 38,
            "service_tier": "standard"
        }
    })
}

fn classify_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message {
                role: Role::System,
                content: "You label support emails.".to_string(),
            },
            Message {
                role: Role::User,
                content: "Invoice 4411 is overdue.".to_string(),
            },
        ],
        temperature: Some(0.0),
        max_tokens: Some(50),
        response_format: ResponseFormat::JsonSchema {
            name: "label".to_string(),
            schema: json!({
                "type": "object",
                "properties": {"label": {"type": "string", "enum": ["billing", "spam"]}, "confidence": {"type": "number"}},
                "required": ["label", "confidence"],
                "additionalProperties": false
            }),
            strict: true,
        },
        logprobs: Some(2),
        stop: vec!["\n\n".to_string()],
    }
}

#[tokio::test]
async fn openai_success_with_usage_and_logprobs() {
    let server = mock(|_, _| async {
        let mut body = openai_completion("billing", true);
        body["choices"][0]["logprobs"] = json!({
            "content": [{
                "token": "billing", "logprob": -0.0012, "bytes": [98, 105, 108, 108, 105, 110, 103],
                "top_logprobs": [
                    {"token": "billing", "logprob": -0.0012, "bytes": [98, 105, 108, 108, 105, 110, 103]},
                    {"token": "spam", "logprob": -6.93, "bytes": [115, 112, 97, 109]}
                ]
            }],
            "refusal": null
        });
        body["usage"]["prompt_tokens_details"]["cached_tokens"] = json!(12);
        json_reply(200, body)
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest {
            logprobs: Some(2),
            ..ChatRequest::user("Label: invoice overdue")
        })
        .await;
    let response = result.unwrap();
    assert_eq!(response.text, "billing");
    assert_eq!(
        response.usage,
        Some(Usage {
            input_tokens: 19,
            output_tokens: 10,
            cached_input_tokens: 12
        })
    );
    let logprobs = response.logprobs.unwrap();
    assert_eq!(logprobs[0].token, "billing");
    assert_eq!(logprobs[0].top[1], ("spam".to_string(), -6.93));
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        response.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(
        response.response_id.as_deref(),
        Some("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT")
    );
    assert_eq!((stats.attempts, stats.last_status), (1, Some(200)));

    let received = server.last();
    assert_eq!(received.path, "/v1/chat/completions");
    assert_eq!(received.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(received.body["logprobs"], json!(true));
    assert_eq!(received.body["top_logprobs"], json!(2));
}

#[tokio::test]
async fn a_response_without_usage_has_unknown_usage() {
    let server = mock(|_, _| async { json_reply(200, openai_completion("hello", false)) }).await;
    let (result, _) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    let response = result.unwrap();
    assert_eq!(response.text, "hello");
    assert_eq!(
        response.usage, None,
        "a missing usage block is unknown, never guessed"
    );
    assert_eq!(response.logprobs, None);
}

#[tokio::test]
async fn the_openai_request_body_is_what_the_api_expects() {
    let server = mock(|_, _| async {
        json_reply(
            200,
            openai_completion(r#"{"label":"billing","confidence":0.9}"#, true),
        )
    })
    .await;
    let (result, _) = client(config(ProviderKind::Openai, &server))
        .chat(&classify_request())
        .await;
    result.unwrap();
    let request = classify_request();
    let ResponseFormat::JsonSchema { schema, .. } = &request.response_format else {
        unreachable!()
    };
    assert_eq!(
        server.last().body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You label support emails."},
                {"role": "user", "content": "Invoice 4411 is overdue."}
            ],
            "temperature": 0.0,
            "max_tokens": 50,
            "stop": ["\n\n"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "label", "schema": schema, "strict": true}
            },
            "logprobs": true,
            "top_logprobs": 2
        })
    );

    // Without structured output or logprobs support, the schema goes into the system prompt.
    let mut plain = config(ProviderKind::Openai, &server);
    plain.structured_output = false;
    plain.logprobs = false;
    client(plain).chat(&classify_request()).await.0.unwrap();
    let body = server.last().body;
    assert!(
        body.get("response_format").is_none() && body.get("logprobs").is_none(),
        "{body}"
    );
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with("You label support emails.\n\nRespond with a single JSON value"),
        "{system}"
    );
}

#[tokio::test]
async fn an_azure_style_key_header_and_query_are_sent() {
    let server = mock(|_, _| async { json_reply(200, openai_completion("ok", true)) }).await;
    let mut azure = config(ProviderKind::Openai, &server);
    azure.api_key_header = "api-key".to_string();
    azure
        .query
        .insert("api-version".to_string(), "2024-10-21".to_string());
    client(azure)
        .chat(&ChatRequest::user("hi"))
        .await
        .0
        .unwrap();
    let received = server.last();
    assert_eq!(received.headers["api-key"], KEY);
    assert!(received.headers.get("authorization").is_none());
    assert_eq!(received.query, "api-version=2024-10-21");
}

#[tokio::test]
async fn anthropic_forced_tool_use_round_trip() {
    let server = mock(|_, _| async {
        json_reply(
            200,
            anthropic_message(
                json!([{
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "respond",
                    "input": {"label": "billing", "confidence": 0.93}
                }]),
                "tool_use",
            ),
        )
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Anthropic, &server))
        .chat(&classify_request())
        .await;
    let response = result.unwrap();
    let answer: Value = serde_json::from_str(&response.text).unwrap();
    assert_eq!(answer, json!({"label": "billing", "confidence": 0.93}));
    assert_eq!(
        response.usage,
        Some(Usage {
            input_tokens: 412 + 2048,
            output_tokens: 38,
            cached_input_tokens: 2048
        })
    );
    assert_eq!(response.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(stats.attempts, 1);

    let received = server.last();
    assert_eq!(received.path, "/v1/messages");
    assert_eq!(received.headers["x-api-key"], KEY);
    assert_eq!(received.headers["anthropic-version"], "2023-06-01");
    assert_eq!(received.headers["content-type"], "application/json");
    let body = received.body;
    assert_eq!(body["system"], "You label support emails.");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Invoice 4411 is overdue."}])
    );
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["stop_sequences"], json!(["\n\n"]));
    assert_eq!(body["tools"][0]["name"], "respond");
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["label", "confidence"])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "respond"})
    );
    assert!(
        body.get("logprobs").is_none() && body.get("response_format").is_none(),
        "{body}"
    );
}

#[tokio::test]
async fn anthropic_text_and_json_object_instruction() {
    let server = mock(|_, _| async {
        json_reply(
            200,
            anthropic_message(
                json!([{"type": "text", "text": "{\"ok\": true}"}]),
                "end_turn",
            ),
        )
    })
    .await;
    let request = ChatRequest {
        response_format: ResponseFormat::JsonObject,
        ..ChatRequest::user("Is it ok?")
    };
    let response = client(config(ProviderKind::Anthropic, &server))
        .chat(&request)
        .await
        .0
        .unwrap();
    assert_eq!(response.text, "{\"ok\": true}");
    let body = server.last().body;
    assert_eq!(body["max_tokens"], 1024, "Anthropic requires max_tokens");
    assert_eq!(
        body["system"],
        "Respond with a single JSON object and nothing else."
    );
    assert!(body.get("tools").is_none());
}

#[tokio::test]
async fn rate_limited_with_retry_after_waits_then_succeeds() {
    let server = mock(|hit, _| async move {
        if hit == 0 {
            let body = openai_error(
                "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
                "requests",
                Some("rate_limit_exceeded"),
            );
            reply(429, &[("content-type", "application/json"), ("retry-after", "1")], body.to_string())
        } else {
            json_reply(200, openai_completion("ok", true))
        }
    })
    .await;
    let started = Instant::now();
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    assert_eq!(result.unwrap().text, "ok");
    assert_eq!((stats.attempts, stats.last_status), (2, Some(200)));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
    assert!(stats.latency_ms >= 900, "{stats:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_ends_the_call_at_once() {
    let server = mock(|_, _| async {
        reply(
            429,
            &[("retry-after", "120")],
            openai_error(
                "Rate limit reached",
                "requests",
                Some("rate_limit_exceeded"),
            )
            .to_string(),
        )
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    match result {
        Err(Error::RateLimited {
            retry_after_ms,
            raw,
        }) => {
            assert_eq!(retry_after_ms, Some(120_000));
            assert!(raw.contains("rate_limit_exceeded"), "{raw}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((stats.attempts, server.hits()), (1, 1));
}

#[tokio::test]
async fn a_server_error_is_retried_then_succeeds() {
    let server = mock(|hit, _| async move {
        if hit == 0 {
            openai_server_error()
        } else {
            json_reply(200, openai_completion("ok", true))
        }
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    assert_eq!(result.unwrap().text, "ok");
    assert_eq!(stats.attempts, 2);
}

#[tokio::test]
async fn anthropic_overloaded_is_retried() {
    let server = mock(|hit, _| async move {
        if hit == 0 {
            json_reply(
                529,
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
            )
        } else {
            json_reply(200, anthropic_message(json!([{"type": "text", "text": "Hi"}]), "end_turn"))
        }
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Anthropic, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    assert_eq!(result.unwrap().text, "Hi");
    assert_eq!(stats.attempts, 2);
}

#[tokio::test]
async fn a_server_error_forever_fails_after_every_retry() {
    let server = mock(|_, _| async { openai_server_error() }).await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    match result {
        Err(Error::Server { status: 500, raw }) => assert!(raw.contains("server_error"), "{raw}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (stats.attempts, stats.last_status, server.hits()),
        (3, Some(500), 3)
    );
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let server = mock(|_, _| async {
        json_reply(
            400,
            openai_error(
                "Invalid schema for response_format 'label'.",
                "invalid_request_error",
                None,
            ),
        )
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    assert!(
        matches!(result, Err(Error::Rejected { status: 400, .. })),
        "{result:?}"
    );
    assert_eq!(stats.attempts, 1);
}

#[tokio::test]
async fn the_breaker_opens_rejects_without_calling_then_half_opens() {
    // Hits 0..4 fail: three calls open the breaker, and the first probe fails too.
    let server = mock(|hit, _| async move {
        if hit < 4 {
            openai_server_error()
        } else {
            json_reply(200, openai_completion("ok", true))
        }
    })
    .await;
    let mut settings = config(ProviderKind::Openai, &server);
    settings.max_retries = 0;
    settings.breaker_failures = 3;
    settings.breaker_cooldown_ms = 300;
    let client = client(settings);
    for _ in 0..3 {
        assert!(matches!(
            client.chat(&ChatRequest::user("hi")).await.0,
            Err(Error::Server { .. })
        ));
    }
    assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
    let (result, stats) = client.chat(&ChatRequest::user("hi")).await;
    match result {
        Err(Error::CircuitOpen { model, retry_in_ms }) => {
            assert_eq!(model, "test-model");
            assert!(retry_in_ms <= 300, "{retry_in_ms}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (stats.attempts, server.hits()),
        (0, 3),
        "refused without a network call"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    let (probe, stats) = client.chat(&ChatRequest::user("hi")).await;
    assert!(matches!(probe, Err(Error::Server { .. })), "{probe:?}");
    assert_eq!(
        (stats.attempts, server.hits()),
        (1, 4),
        "the probe is one attempt"
    );
    assert!(
        matches!(client.breaker_state(), BreakerState::Open { .. }),
        "a failed probe re-opens"
    );
    assert!(matches!(
        client.chat(&ChatRequest::user("hi")).await.0,
        Err(Error::CircuitOpen { .. })
    ));
    assert_eq!(server.hits(), 4);

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        client.chat(&ChatRequest::user("hi")).await.0.unwrap().text,
        "ok"
    );
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed,
        "a successful probe closes"
    );
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn unauthorized_names_the_variable_and_never_the_key() {
    let server = mock(|_, _| async {
        json_reply(
            401,
            openai_error(
                "Incorrect API key provided: sk-test-****************cret. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
        )
    })
    .await;
    let (result, stats) = client(config(ProviderKind::Openai, &server))
        .chat(&ChatRequest::user("hi"))
        .await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, Error::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(KEY_ENV) && message.contains("check"),
        "{message}"
    );
    assert!(
        !message.contains(KEY) && !format!("{error:?}").contains(KEY),
        "{error:?}"
    );
    assert_eq!(stats.attempts, 1, "a bad key is not retried");
}

#[tokio::test]
async fn a_missing_key_fails_before_any_request() {
    let server = mock(|_, _| async { json_reply(200, openai_completion("ok", true)) }).await;
    let client = ProviderClient::new(
        config(ProviderKind::Openai, &server),
        reqwest::Client::new(),
    )
    .with_api_key_lookup(Arc::new(|_| None));
    let (result, stats) = client.chat(&ChatRequest::user("hi")).await;
    match result {
        Err(error @ Error::MissingApiKey { .. }) => {
            assert!(error.to_string().contains(KEY_ENV), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((stats.attempts, server.hits()), (0, 0));
    assert!(matches!(
        client.chat_stream(&ChatRequest::user("hi")).await,
        Err(Error::MissingApiKey { .. })
    ));
}

#[tokio::test]
async fn a_slow_server_times_out_instead_of_hanging() {
    let server = mock(|_, _| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        json_reply(200, openai_completion("late", true))
    })
    .await;
    let mut settings = config(ProviderKind::Openai, &server);
    settings.timeout_ms = 200;
    settings.max_retries = 1;
    let started = Instant::now();
    let (result, stats) = client(settings).chat(&ChatRequest::user("hi")).await;
    assert_eq!(result.unwrap_err(), Error::Timeout { timeout_ms: 200 });
    assert_eq!(stats.attempts, 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_and_empty_bodies_are_malformed() {
    let server = mock(|hit, _| async move {
        match hit {
            0 => reply(
                200,
                &[("content-type", "application/json")],
                "{\"id\": \"chatcmpl-1\", \"choices\": [tru",
            ),
            _ => reply(200, &[("content-type", "application/json")], ""),
        }
    })
    .await;
    let client = client(config(ProviderKind::Openai, &server));
    let (result, stats) = client.chat(&ChatRequest::user("hi")).await;
    match result {
        Err(Error::Malformed { raw, .. }) => {
            assert_eq!(raw, "{\"id\": \"chatcmpl-1\", \"choices\": [tru")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stats.attempts, 1);
    let (result, _) = client.chat(&ChatRequest::user("hi")).await;
    match result {
        Err(Error::Malformed { detail, .. }) => assert!(detail.contains("empty"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_huge_body_is_too_large() {
    let server = mock(|_, _| async {
        let mut body =
            String::from("{\"id\":\"chatcmpl-1\",\"choices\":[{\"message\":{\"content\":\"");
        body.push_str(&"x".repeat(10 << 20));
        body.push_str("\"}}]}");
        reply(200, &[("content-type", "application/json")], body)
    })
    .await;
    let mut settings = config(ProviderKind::Openai, &server);
    settings.max_response_bytes = 1 << 20;
    let (result, stats) = client(settings).chat(&ChatRequest::user("hi")).await;
    match result {
        Err(Error::TooLarge { limit_bytes, raw }) => {
            assert_eq!(limit_bytes, 1 << 20);
            assert!(
                raw.starts_with("{\"id\":\"chatcmpl-1\"") && raw.len() <= RAW_KEEP_BYTES,
                "{}",
                raw.len()
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stats.attempts, 1);
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let server = Mock {
        base_url: format!("http://{address}/v1"),
        hits: Default::default(),
        max_in_flight: Default::default(),
        received: Default::default(),
    };
    let mut settings = config(ProviderKind::Openai, &server);
    settings.max_retries = 1;
    let (result, stats) = client(settings).chat(&ChatRequest::user("hi")).await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
    assert_eq!((stats.attempts, stats.last_status), (2, None));
}

fn openai_chunk(delta: Value, finish_reason: Value) -> String {
    let chunk = json!({
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        "usage": null
    });
    format!("data: {chunk}\n\n")
}

fn openai_stream_pieces() -> Vec<String> {
    vec![
        openai_chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        openai_chunk(json!({"content": "Hello"}), Value::Null),
        openai_chunk(json!({"content": ", world"}), Value::Null),
        openai_chunk(json!({}), json!("stop")),
        format!(
            "data: {}\n\n",
            json!({
                "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1741569952,
                "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb", "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}
            })
        ),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// Reads a stream to its end: the text, the final event, and the error if it ended in one.
async fn drain(
    stream: &mut keel_ai::provider::ChatStream,
) -> (String, Option<StreamEvent>, Option<Error>) {
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Delta(delta)) => text.push_str(&delta),
            Ok(done @ StreamEvent::Done { .. }) => {
                assert!(stream.next().await.is_none(), "nothing after Done");
                return (text, Some(done), None);
            }
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (text, None, Some(error));
            }
        }
    }
    panic!("the stream ended without Done or an error")
}

#[tokio::test]
async fn openai_stream_assembles_text_and_usage() {
    let server = mock(|_, _| async {
        // Split mid-event so the parser sees partial lines.
        let whole: String = openai_stream_pieces().concat();
        let pieces = whole
            .as_bytes()
            .chunks(37)
            .map(|piece| String::from_utf8(piece.to_vec()).unwrap())
            .collect();
        streamed(pieces, false)
    })
    .await;
    let mut stream = client(config(ProviderKind::Openai, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (text, done, error) = drain(&mut stream).await;
    assert_eq!(error, None);
    assert_eq!(text, "Hello, world");
    assert_eq!(
        done,
        Some(StreamEvent::Done {
            usage: Some(Usage {
                input_tokens: 9,
                output_tokens: 3,
                cached_input_tokens: 0
            }),
            finish_reason: Some("stop".to_string())
        })
    );
    assert_eq!(stream.open_stats().attempts, 1);
    let body = server.last().body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(server.last().headers["accept"], "text/event-stream");
}

fn anthropic_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn anthropic_stream_pieces() -> Vec<String> {
    vec![
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [],
                "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 1}
            }}),
        ),
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic_event("ping", json!({"type": "ping"})),
        anthropic_event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        anthropic_event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
        ),
        anthropic_event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        anthropic_event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        ),
        anthropic_event("message_stop", json!({"type": "message_stop"})),
    ]
}

#[tokio::test]
async fn anthropic_stream_assembles_text_and_usage() {
    let server = mock(|_, _| async { streamed(anthropic_stream_pieces(), false) }).await;
    let mut stream = client(config(ProviderKind::Anthropic, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (text, done, error) = drain(&mut stream).await;
    assert_eq!(error, None);
    assert_eq!(text, "Hello!");
    assert_eq!(
        done,
        Some(StreamEvent::Done {
            usage: Some(Usage {
                input_tokens: 125,
                output_tokens: 15,
                cached_input_tokens: 100
            }),
            finish_reason: Some("end_turn".to_string())
        })
    );
    assert_eq!(server.last().body["stream"], true);
}

#[tokio::test]
async fn a_stream_cut_midway_is_stream_cut_with_the_partial_text() {
    let server = mock(|_, _| async { streamed(openai_stream_pieces()[..3].to_vec(), true) }).await;
    let mut stream = client(config(ProviderKind::Openai, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (text, done, error) = drain(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(done, None);
    assert_eq!(
        error,
        Some(Error::StreamCut {
            partial: "Hello, world".to_string()
        })
    );

    // A clean end of the body before `message_stop` is a cut too.
    let server =
        mock(|_, _| async { streamed(anthropic_stream_pieces()[..4].to_vec(), false) }).await;
    let mut stream = client(config(ProviderKind::Anthropic, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (_, _, error) = drain(&mut stream).await;
    assert_eq!(
        error,
        Some(Error::StreamCut {
            partial: "Hello".to_string()
        })
    );
}

#[tokio::test]
async fn an_anthropic_error_event_ends_the_stream() {
    let server = mock(|_, _| async {
        let mut pieces = anthropic_stream_pieces()[..4].to_vec();
        pieces.push(anthropic_event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        streamed(pieces, false)
    })
    .await;
    let mut stream = client(config(ProviderKind::Anthropic, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (text, _, error) = drain(&mut stream).await;
    assert_eq!(text, "Hello");
    assert!(
        matches!(error, Some(Error::Server { status: 529, .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_stream_is_retried_only_before_its_first_byte() {
    let server = mock(|hit, _| async move {
        if hit == 0 {
            openai_server_error()
        } else {
            streamed(openai_stream_pieces(), false)
        }
    })
    .await;
    let mut stream = client(config(ProviderKind::Openai, &server))
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    assert_eq!(stream.open_stats().attempts, 2);
    assert_eq!(drain(&mut stream).await.0, "Hello, world");
}

#[tokio::test]
async fn a_stalled_stream_times_out() {
    let server = mock(|_, _| async {
        let first = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(
            openai_stream_pieces()[1].clone(),
        ))]);
        let stall = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<Bytes, std::io::Error>(Bytes::from("data: [DONE]\n\n"))
        });
        reply(
            200,
            &[("content-type", "text/event-stream")],
            Body::from_stream(first.chain(stall)),
        )
    })
    .await;
    let mut settings = config(ProviderKind::Openai, &server);
    settings.timeout_ms = 300;
    let started = Instant::now();
    let mut stream = client(settings)
        .chat_stream(&ChatRequest::user("hi"))
        .await
        .unwrap();
    let (text, _, error) = drain(&mut stream).await;
    assert_eq!(text, "Hello");
    assert_eq!(error, Some(Error::Timeout { timeout_ms: 300 }));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_concurrency_limit_is_respected() {
    let server = mock(|_, _| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        json_reply(200, openai_completion("ok", true))
    })
    .await;
    let mut settings = config(ProviderKind::Openai, &server);
    settings.max_concurrency = 2;
    let client = client(settings);
    let request = ChatRequest::user("hi");
    let calls = (0..6).map(|_| {
        let client = client.clone();
        let request = request.clone();
        async move { client.chat(&request).await }
    });
    let results: Vec<(Result<ChatResponse, Error>, _)> =
        futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|(result, _)| result.is_ok()));
    assert_eq!(server.hits(), 6);
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
}
