//! The OpenAI-compatible gateway end to end: a real Keel server on port 0 in front of a local
//! upstream that speaks OpenAI's chat-completions wire format (bodies shaped like the real
//! API's), with tokens, aliases and fallback, schema validation, streaming, budgets, the cache,
//! the journal and `ai_calls`. The official `openai` Python package drives it in one test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response as AxumResponse};
use keel_engine::{Engine, Options, SystemClock};
use keel_server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Requests the upstream received, by upstream model name.
#[derive(Clone, Default)]
pub(crate) struct Upstream {
    pub(crate) base_url: String,
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306"
    })
}

fn sse(model: &str, pieces: &[&str], usage: bool, cut: bool) -> AxumResponse {
    let mut events = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1741569952,
            "model": model, "system_fingerprint": "fp_06737a9306",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    events.push(chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ));
    for piece in pieces {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    let mut body: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if cut {
        let stream = futures_util::stream::iter(
            body.into_iter()
                .map(|piece| Ok::<Bytes, std::io::Error>(Bytes::from(piece))),
        )
        .chain(futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut"))
        }));
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    body.push(format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
    if usage {
        let last = json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1741569952,
            "model": model, "system_fingerprint": "fp_06737a9306", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 0}}});
        body.push(format!("data: {last}\n\n"));
    }
    body.push("data: [DONE]\n\n".into());
    ([("content-type", "text/event-stream")], body.concat()).into_response()
}

use futures_util::StreamExt;

/// An OpenAI-compatible upstream whose behaviour is chosen by the request's `model`:
/// `echo` repeats the last user message, `json-good` / `json-bad` answer JSON that passes /
/// fails the tests' schema, `fail` answers HTTP 500, `cut` streams two pieces then breaks.
pub(crate) async fn upstream() -> Upstream {
    let state = Upstream::default();
    let shared = state.clone();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let shared = shared.clone();
            async move {
                shared.hits.fetch_add(1, Ordering::SeqCst);
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                shared.bodies.lock().unwrap().push(body.clone());
                let model = body["model"].as_str().unwrap_or_default().to_string();
                let stream = body["stream"].as_bool().unwrap_or(false);
                let usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
                let last_user = body["messages"]
                    .as_array()
                    .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or_default()
                    .to_string();
                if model == "slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let content = match model.as_str() {
                    "echo" | "slow" => last_user,
                    "json-good" => r#"{"label": "spam", "score": 0.9}"#.to_string(),
                    "json-bad" => r#"{"label": 42}"#.to_string(),
                    "fail" => {
                        return (
                            AxumStatus::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}})),
                        )
                            .into_response()
                    }
                    "cut" => return sse(&model, &["par", "tial"], false, true),
                    _ => String::new(),
                };
                if stream {
                    let words: Vec<String> = content
                        .split_inclusive(' ')
                        .map(str::to_string)
                        .collect();
                    let words: Vec<&str> = words.iter().map(String::as_str).collect();
                    sse(&model, &words, usage, false)
                } else {
                    axum::Json(completion(&model, &content)).into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Upstream { base_url, ..state }
}

pub(crate) fn keel_toml(upstream: &str, extra: &str) -> String {
    let mut toml = String::new();
    for (name, model) in [
        ("primary", "echo"),
        ("broken", "fail"),
        ("json-good", "json-good"),
        ("json-bad", "json-bad"),
        ("cutter", "cut"),
        ("slowpoke", "slow"),
    ] {
        toml.push_str(&format!(
            "[models.{name}]\nprovider = \"openai\"\nbase_url = \"{upstream}\"\nmodel = \"{model}\"\nmax_retries = 0\nbreaker_failures = 1000\n[models.{name}.price]\ninput = 1000\noutput = 1000\neffective = \"2020-01-01\"\n\n"
        ));
    }
    toml.push_str("[models.learner]\nprovider = \"local\"\n\n");
    toml.push_str("[gateway.aliases]\nsmart = [\"broken\", \"primary\"]\nstructured = [\"json-bad\", \"json-good\"]\nonly-bad = [\"json-bad\"]\n\n");
    toml.push_str(extra);
    toml
}

struct Gateway {
    base: String,
    client: reqwest::Client,
    engine: Engine,
    token: String,
    upstream: Upstream,
    dir: Arc<tempfile::TempDir>,
}

async fn gateway(extra_toml: &str) -> Gateway {
    let upstream = upstream().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let toml = keel_toml(&upstream.base_url, extra_toml);
    let (engine, base) = start(&dir, &toml).await;
    let (token, _) = keel_engine::tokens::create_token(
        engine.store(),
        "app",
        "app",
        &["gateway".to_string()],
        None,
        engine.now_ms(),
    )
    .await
    .unwrap();
    Gateway {
        base,
        client: reqwest::Client::new(),
        engine,
        token,
        upstream,
        dir,
    }
}

pub(crate) async fn start(dir: &tempfile::TempDir, toml: &str) -> (Engine, String) {
    start_with(dir, toml, |_| {}).await
}

/// As [`start`], with `tweak` applied to the engine's options.
pub(crate) async fn start_with(
    dir: &tempfile::TempDir,
    toml: &str,
    tweak: impl FnOnce(&mut Options),
) -> (Engine, String) {
    let config = keel_ai::config::Config::parse("keel.toml", toml).unwrap();
    let runtime = keel_ai::cascade::Runtime::new(config, reqwest::Client::new());
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let mut options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ai: Some(Arc::new(runtime)),
        ..Default::default()
    };
    tweak(&mut options);
    let engine = Engine::start(store, options, Arc::new(SystemClock))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    (engine, base)
}

impl Gateway {
    async fn chat(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The `ai.call` journal entries so far, oldest first.
    async fn calls(&self) -> Vec<Value> {
        self.engine.flush_ai_calls().await;
        self.engine
            .store()
            .journal_after(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "ai.call")
            .map(|row| serde_json::from_str(&row.data).unwrap())
            .collect()
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}])
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body["error"].clone())
}

#[tokio::test]
async fn a_chat_completion_is_proxied_costed_and_journaled() {
    let gateway = gateway("").await;
    let response = gateway
        .chat(json!({"model": "primary", "messages": user("hello there"), "max_tokens": 10}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-keel-model"], "primary");
    assert_eq!(response.headers()["x-keel-cache"], "miss");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["content"], "hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["total_tokens"], 15);
    // The upstream got the configured model name and the messages.
    let sent = gateway.upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "echo");
    assert_eq!(sent["messages"][1]["content"], "hello there");

    let calls = gateway.calls().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["caller"], "app");
    assert_eq!(call["model"], "primary");
    assert_eq!(call["status"], "ok");
    assert_eq!(call["response"], "hello there");
    assert_eq!(call["messages"][1]["content"], "hello there");
    assert_eq!(call["usage"]["input_tokens"], 10);
    // 15 tokens at 1,000 USD per million.
    assert!(
        (call["cost_usd"].as_f64().unwrap() - 0.015).abs() < 1e-9,
        "{call}"
    );
    assert_eq!(call["request_sha256"].as_str().unwrap().len(), 64);
    let rows = gateway.engine.store().ai_calls(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].source, "gateway");
    assert_eq!(rows[0].caller.as_deref(), Some("app"));
    assert_eq!(rows[0].cost_nano, Some(15_000_000));
    assert_eq!(rows[0].input_tokens, 10);
}

#[tokio::test]
async fn callers_need_a_live_keel_token() {
    let gateway = gateway("").await;
    let url = format!("{}/v1/chat/completions", gateway.base);
    let body = json!({"model": "primary", "messages": user("hi")});
    let none = gateway.client.post(&url).json(&body).send().await.unwrap();
    let (status, error) = error_of(none).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "invalid_api_key");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("keel token create"));

    let wrong = gateway
        .client
        .post(&url)
        .bearer_auth("keel_not-a-real-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let store = gateway.engine.store();
    let (secret, _) = keel_engine::tokens::create_token(store, "old", "old", &[], None, 0)
        .await
        .unwrap();
    assert_eq!(
        keel_engine::tokens::revoke_token(store, "old", 1)
            .await
            .unwrap(),
        1
    );
    let revoked = gateway
        .client
        .post(&url)
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(revoked).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error["message"].as_str().unwrap().contains("revoked"));
    let models = gateway
        .client
        .get(format!("{}/v1/models", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
    // Nothing reached the upstream.
    assert_eq!(gateway.upstream.hits(), 0);
    // Token creation and revocation are journaled, secrets are not.
    let kinds: Vec<String> = store
        .journal_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind.starts_with("token."))
        .map(|row| {
            assert!(!row.data.contains(&secret));
            row.kind
        })
        .collect();
    assert_eq!(kinds, ["token.created", "token.created", "token.revoked"]);
}

#[tokio::test]
async fn models_lists_remote_models_and_aliases() {
    let gateway = gateway("").await;
    let response = gateway
        .client
        .get(format!("{}/v1/models", gateway.base))
        .bearer_auth(&gateway.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["primary", "broken", "smart", "structured"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(
        !ids.contains(&"learner"),
        "the local learner cannot serve chat: {ids:?}"
    );
}

#[tokio::test]
async fn an_alias_falls_back_to_the_next_model_and_journals_both() {
    let gateway = gateway("").await;
    let response = gateway
        .chat(json!({"model": "smart", "messages": user("fallback please")}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-keel-model"], "primary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "fallback please");
    let calls = gateway.calls().await;
    assert_eq!(calls.len(), 1);
    let attempts = calls[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["model"], "broken");
    assert_eq!(attempts[0]["error"], "provider_error");
    assert_eq!(attempts[1]["model"], "primary");
    let rows = gateway.engine.store().ai_calls(10).await.unwrap();
    let statuses: Vec<&str> = rows.iter().rev().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["provider_error", "ok"]);

    // Only failures: a 502 in OpenAI's error shape, and still journaled.
    let response = gateway
        .chat(json!({"model": "broken", "messages": user("x")}))
        .await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error["code"], "provider_error");
    let calls = gateway.calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["status"], "provider_error");
    assert_eq!(calls[1]["model"], Value::Null);
}

fn label_schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "triage", "strict": true, "schema": {
        "type": "object", "required": ["label", "score"], "additionalProperties": false,
        "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}, "score": {"type": "number"}}}}})
}

#[tokio::test]
async fn response_format_schemas_are_validated_by_keel() {
    let gateway = gateway("").await;
    // The first model answers JSON that fails the schema; the alias falls to the second.
    let response = gateway
        .chat(json!({"model": "structured", "messages": user("classify"), "response_format": label_schema()}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-keel-model"], "json-good");
    let body: Value = response.json().await.unwrap();
    let answer: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(answer["label"], "spam");
    // The schema went upstream as structured output.
    let sent = gateway.upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["response_format"]["type"], "json_schema");

    // Only a model that fails the schema: the caller never sees its answer.
    let response = gateway
        .chat(json!({"model": "only-bad", "messages": user("classify"), "response_format": label_schema()}))
        .await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error["code"], "invalid_response");
    assert!(
        error["message"].as_str().unwrap().contains("/label"),
        "{error}"
    );
    let calls = gateway.calls().await;
    let last = calls.last().unwrap();
    assert_eq!(last["status"], "invalid_response");
    assert_eq!(last["attempts"][0]["response"], r#"{"label": 42}"#);

    // json_object: any JSON object passes; the echo of plain text does not.
    let response = gateway
        .chat(json!({"model": "primary", "messages": user("not json"), "response_format": {"type": "json_object"}}))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let response = gateway
        .chat(json!({"model": "primary", "messages": user(r#"{"ok": true}"#), "response_format": {"type": "json_object"}}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A schema that is not a schema is the caller's error.
    let response = gateway
        .chat(json!({"model": "primary", "messages": user("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}}))
        .await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "response_format");
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn streams_are_forwarded_as_openai_chunks_with_usage() {
    let gateway = gateway("").await;
    let response = gateway
        .chat(
            json!({"model": "smart", "messages": user("one two three"), "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events = events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|c| c["delta"]["content"].as_str())
        })
        .collect();
    assert_eq!(content, "one two three");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert!(chunks.iter().any(|c| c["choices"]
        .get(0)
        .is_some_and(|c| c["finish_reason"] == "stop")));
    let calls = gateway.calls().await;
    assert_eq!(calls[0]["stream"], true);
    assert_eq!(calls[0]["response"], "one two three");
    assert!((calls[0]["cost_usd"].as_f64().unwrap() - 0.015).abs() < 1e-9);
    // The failing first model of the alias was passed over before any byte was sent.
    assert_eq!(calls[0]["attempts"][0]["model"], "broken");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_is_journaled() {
    let gateway = gateway("").await;
    let response = gateway
        .chat(json!({"model": "cutter", "messages": user("x"), "stream": true}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let events = events(&text);
    assert_ne!(events.last().unwrap(), "[DONE]", "{text}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_cut", "{last}");
    let calls = gateway.calls().await;
    assert_eq!(calls[0]["status"], "stream_cut");
    assert_eq!(calls[0]["response"], "partial");
    assert_eq!(calls[0]["cost_known"], false);
}

#[tokio::test]
async fn a_structured_stream_is_validated_before_it_is_sent() {
    let gateway = gateway("").await;
    let response = gateway
        .chat(json!({"model": "structured", "messages": user("x"), "stream": true, "response_format": label_schema()}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let events = events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let answer: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(answer["label"], "spam");
    let response = gateway
        .chat(json!({"model": "only-bad", "messages": user("x"), "stream": true, "response_format": label_schema()}))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn caller_budgets_hold_and_survive_a_restart() {
    let extra = "[budgets.callers.app]\ndaily_usd = 0.05\n";
    let gateway = gateway(extra).await;
    // Each call costs 0.015 USD and reserves about 0.031 USD before it is sent.
    let body = json!({"model": "primary", "messages": user("hello"), "max_tokens": 10});
    assert_eq!(gateway.chat(body.clone()).await.status(), StatusCode::OK);
    assert_eq!(gateway.chat(body.clone()).await.status(), StatusCode::OK);
    let (status, error) = error_of(gateway.chat(body.clone()).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["code"], "budget_exhausted");
    assert!(
        error["message"].as_str().unwrap().contains("caller `app`"),
        "{error}"
    );
    assert_eq!(gateway.upstream.hits(), 2);
    let calls = gateway.calls().await;
    assert_eq!(calls.last().unwrap()["status"], "budget_exhausted");

    // Another caller has no limit of its own.
    let (other, _) = keel_engine::tokens::create_token(
        gateway.engine.store(),
        "other",
        "other",
        &["gateway".to_string()],
        None,
        0,
    )
    .await
    .unwrap();
    let response = gateway
        .client
        .post(format!("{}/v1/chat/completions", gateway.base))
        .bearer_auth(&other)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A restarted server starts from the recorded spend, not from zero.
    gateway.engine.shutdown(Duration::from_secs(5)).await;
    let (engine, base) = start(&gateway.dir, &keel_toml(&gateway.upstream.base_url, extra)).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&gateway.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gateway.upstream.hits(), 3);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn identical_requests_at_temperature_zero_are_served_from_the_cache() {
    let gateway = gateway("").await;
    let body = json!({"model": "primary", "messages": user("cache me"), "temperature": 0});
    let first = gateway.chat(body.clone()).await;
    assert_eq!(first.headers()["x-keel-cache"], "miss");
    let second = gateway.chat(body.clone()).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["x-keel-cache"], "hit");
    let answer: Value = second.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "cache me");
    assert_eq!(gateway.upstream.hits(), 1);
    // Not at a higher temperature.
    let third = gateway
        .chat(json!({"model": "primary", "messages": user("cache me"), "temperature": 0.7}))
        .await;
    assert_eq!(third.headers()["x-keel-cache"], "miss");
    assert_eq!(gateway.upstream.hits(), 2);
    let calls = gateway.calls().await;
    assert_eq!(calls[1]["attempts"][0]["cache_hit"], true);
    assert_eq!(calls[1]["cost_usd"], 0.0);
}

#[tokio::test]
async fn redaction_keeps_prompt_and_response_text_out_of_the_journal() {
    let gateway = gateway("[journal]\nredact_text = true\n").await;
    let response = gateway
        .chat(json!({"model": "primary", "messages": user("my secret account 12345")}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    gateway.engine.flush_ai_calls().await;
    let rows = gateway.engine.store().journal_after(0, 100).await.unwrap();
    let call = rows.iter().find(|row| row.kind == "ai.call").unwrap();
    assert!(!call.data.contains("12345"), "{}", call.data);
    let data: Value = serde_json::from_str(&call.data).unwrap();
    assert_eq!(data["response_sha256"].as_str().unwrap().len(), 64);
    assert!(data.get("messages").is_none());
}

#[tokio::test]
async fn malformed_and_unsupported_requests_get_clear_openai_errors() {
    let gateway = gateway("").await;
    let cases = [
        (
            json!({"messages": user("x")}),
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            json!({"model": "primary"}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"model": "primary", "messages": []}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"model": "nope", "messages": user("x")}),
            StatusCode::NOT_FOUND,
            "GET /v1/models",
        ),
        (
            json!({"model": "learner", "messages": user("x")}),
            StatusCode::BAD_REQUEST,
            "learner",
        ),
        (
            json!({"model": "primary", "messages": user("x"), "frobnicate": 1}),
            StatusCode::BAD_REQUEST,
            "frobnicate",
        ),
        (
            json!({"model": "primary", "messages": user("x"), "tools": [{"type": "function"}]}),
            StatusCode::BAD_REQUEST,
            "tools",
        ),
        (
            json!({"model": "primary", "messages": user("x"), "n": 2}),
            StatusCode::BAD_REQUEST,
            "`n`",
        ),
        (
            json!({"model": "primary", "messages": user("x"), "temperature": 7}),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            json!({"model": "primary", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            StatusCode::BAD_REQUEST,
            "image_url",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, error) = error_of(gateway.chat(body.clone()).await).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    let not_json = gateway
        .client
        .post(format!("{}/v1/chat/completions", gateway.base))
        .bearer_auth(&gateway.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    // Text parts are joined; that is a valid request.
    let parts = gateway
        .chat(json!({"model": "primary", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}))
        .await;
    assert_eq!(parts.status(), StatusCode::OK);
    assert_eq!(gateway.upstream.hits(), 1);
}

/// The official `openai` Python package as the client: plain, streaming and structured output.
/// Runs when `KEEL_PYTHON` (or `python3`) can import `openai`; CI installs it and sets
/// `KEEL_REQUIRE_OPENAI_PYTHON=1`, which turns a missing package into a failure.
#[tokio::test]
async fn the_official_openai_python_client_works_against_the_gateway() {
    let python = std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let available = std::process::Command::new(&python)
        .args(["-c", "import openai, pydantic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var("KEEL_REQUIRE_OPENAI_PYTHON").is_err(),
            "KEEL_REQUIRE_OPENAI_PYTHON is set but {python} cannot import openai and pydantic"
        );
        eprintln!("skipped: {python} cannot import openai; `pip install openai pydantic` or set KEEL_PYTHON");
        return;
    }
    let gateway = gateway("").await;
    let script = r#"
import json, sys
import openai
from pydantic import BaseModel
from typing import Literal

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
out = {}
out["models"] = sorted(m.id for m in client.models.list())
r = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hello from python"}])
out["plain"] = r.choices[0].message.content
out["plain_usage"] = r.usage.total_tokens
chunks = client.chat.completions.create(model="primary", messages=[{"role": "user", "content": "streamed words here"}],
                                        stream=True, stream_options={"include_usage": True})
text, usage = "", None
for chunk in chunks:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.completion_tokens
out["stream"] = text
out["stream_usage"] = usage

class Triage(BaseModel):
    label: Literal["spam", "ham"]
    score: float

parsed = client.beta.chat.completions.parse(model="structured", messages=[{"role": "user", "content": "classify"}],
                                            response_format=Triage)
out["parsed"] = parsed.choices[0].message.parsed.model_dump()
try:
    client.chat.completions.create(model="only-bad", messages=[{"role": "user", "content": "x"}],
                                   response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": Triage.model_json_schema()}})
    out["bad"] = "accepted"
except openai.APIStatusError as e:
    out["bad"] = [e.status_code, e.body.get("code") if isinstance(e.body, dict) else None]
try:
    openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="keel_wrong", max_retries=0).models.list()
    out["auth"] = "accepted"
except openai.AuthenticationError as e:
    out["auth"] = e.status_code
print(json.dumps(out))
"#;
    let base = gateway.base.clone();
    let token = gateway.token.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .args(["-c", script, &base, &token])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        out["models"].as_array().unwrap().contains(&json!("smart")),
        "{out}"
    );
    assert_eq!(out["plain"], "hello from python");
    assert_eq!(out["plain_usage"], 15);
    assert_eq!(out["stream"], "streamed words here");
    assert_eq!(out["stream_usage"], 5);
    assert_eq!(out["parsed"], json!({"label": "spam", "score": 0.9}));
    assert_eq!(out["bad"], json!([502, "invalid_response"]));
    assert_eq!(out["auth"], 401);
    let calls = gateway.calls().await;
    assert_eq!(calls.len(), 4, "{calls:?}");
}

#[tokio::test]
async fn beyond_max_in_flight_the_gateway_sheds_load_with_503_and_retry_after() {
    let gateway = gateway("[gateway]\nmax_in_flight = 1\n").await;
    let body = json!({"model": "slowpoke", "messages": user("take your time")});
    let (first, second) = tokio::join!(gateway.chat(body.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gateway.chat(body.clone()).await
    });
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "1");
    let (_, error) = error_of(second).await;
    assert_eq!(error["code"], "overloaded");
    // The permit comes back when the first call ends.
    assert_eq!(gateway.chat(body).await.status(), StatusCode::OK);
    assert_eq!(gateway.upstream.hits(), 2);
}
