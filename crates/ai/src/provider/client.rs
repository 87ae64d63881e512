//! [`ProviderClient`]: calls to one configured model, made resilient.
//!
//! Each call reads the API key from the environment (never stored, never logged), then passes
//! a circuit breaker and a concurrency limit, then makes at most `max_retries + 1` attempts,
//! each bounded by `timeout_ms` and by `max_response_bytes`. Between attempts it waits with
//! exponential backoff and full jitter, or as long as the provider's `Retry-After` says when
//! that is within [`RETRY_AFTER_CAP_MS`]; beyond it the call stops so the caller can fall back
//! to another model instead of waiting. The wire formats themselves are in `openai` and
//! `anthropic`; this module does not look inside bodies except to classify failures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    anthropic, keep_raw, openai, sse, ChatRequest, ChatResponse, Error, ResponseFormat,
    StreamEvent, RAW_KEEP_BYTES,
};
use crate::config::{ModelConfig, ProviderKind};

/// The longest `Retry-After` a call waits out; a longer one ends the call at once.
pub const RETRY_AFTER_CAP_MS: u64 = 60_000;
/// Backoff before the first retry is drawn from `0..=BACKOFF_BASE_MS`, doubling per retry.
pub const BACKOFF_BASE_MS: u64 = 200;
pub const BACKOFF_CAP_MS: u64 = 10_000;

/// Where API keys come from: the name of an environment variable in, its value out.
pub type ApiKeyLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What one call cost in attempts and time, for the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Requests sent (0 when the call was refused before any, e.g. by the breaker).
    pub attempts: u32,
    /// The whole call: waiting for a permit, every attempt and every backoff.
    pub latency_ms: u64,
    /// The HTTP status of the last response received, if any.
    pub last_status: Option<u16>,
}

/// The circuit breaker as the next call would find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Calls are refused until `until`.
    Open {
        until: Instant,
    },
    /// The next call is a probe (or one is in flight): success closes, failure re-opens.
    HalfOpen,
}

/// What follows one attempt.
enum Next<T> {
    Done(Result<T, Error>),
    Wait(u64),
}

/// A client for one model. Cheap to clone: clones share the breaker and the concurrency limit.
#[derive(Clone)]
pub struct ProviderClient {
    config: Arc<ModelConfig>,
    http: reqwest::Client,
    shared: Arc<Shared>,
    backoff: Backoff,
    retry_after_cap_ms: u64,
    api_key_lookup: ApiKeyLookup,
}

struct Shared {
    breaker: Breaker,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ProviderClient")
            .field("model", &self.config.name)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    pub fn new(config: ModelConfig, http: reqwest::Client) -> ProviderClient {
        let breaker = Breaker::new(config.breaker_failures, config.breaker_cooldown_ms);
        let permits = Arc::new(Semaphore::new(
            config.max_concurrency.clamp(1, Semaphore::MAX_PERMITS),
        ));
        ProviderClient {
            config: Arc::new(config),
            http,
            shared: Arc::new(Shared { breaker, permits }),
            backoff: Backoff {
                base_ms: BACKOFF_BASE_MS,
                cap_ms: BACKOFF_CAP_MS,
            },
            retry_after_cap_ms: RETRY_AFTER_CAP_MS,
            api_key_lookup: Arc::new(|name| std::env::var(name).ok()),
        }
    }

    /// Replaces the backoff between retries (tests use a few milliseconds).
    pub fn with_backoff(mut self, base_ms: u64, cap_ms: u64) -> ProviderClient {
        self.backoff = Backoff { base_ms, cap_ms };
        self
    }

    /// Replaces the longest `Retry-After` a call waits out.
    pub fn with_retry_after_cap(mut self, cap_ms: u64) -> ProviderClient {
        self.retry_after_cap_ms = cap_ms;
        self
    }

    /// Replaces where API keys are read from (default: the process environment).
    pub fn with_api_key_lookup(mut self, lookup: ApiKeyLookup) -> ProviderClient {
        self.api_key_lookup = lookup;
        self
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state(Instant::now())
    }

    /// One chat call, with retries. The stats are returned whatever the outcome.
    pub async fn chat(&self, request: &ChatRequest) -> (Result<ChatResponse, Error>, CallStats) {
        let started = Instant::now();
        let mut stats = CallStats::default();
        let result = self.chat_call(request, &mut stats).await;
        stats.latency_ms = millis(started.elapsed());
        if let Err(error) = &result {
            tracing::debug!(model = %self.config.name, code = error.code(), attempts = stats.attempts, "model call failed");
        }
        (result, stats)
    }

    async fn chat_call(
        &self,
        request: &ChatRequest,
        stats: &mut CallStats,
    ) -> Result<ChatResponse, Error> {
        let wire = Wire::of(&self.config)?;
        let prepared = self.prepare(wire, request, false)?;
        let (_permit, ticket) = self.admit().await?;
        let max_attempts = ticket.max_attempts(self.config.max_retries);
        // A plain loop rather than a retry combinator over an async closure: the closure's
        // future is not provably `Send` for every lifetime, which callers that spawn need.
        let result = loop {
            stats.attempts += 1;
            let mut status = None;
            let result = self
                .timed(self.chat_attempt(wire, &prepared, &mut status))
                .await;
            stats.last_status = status.or(stats.last_status);
            match self.after_attempt(result, max_attempts, stats) {
                Next::Done(result) => break result,
                Next::Wait(wait_ms) => tokio::time::sleep(Duration::from_millis(wait_ms)).await,
            }
        };
        ticket.record(&result);
        result
    }

    /// Opens a streamed chat call. Retries happen only until the first bytes of the stream
    /// arrive; after that a failure is the stream's ([`Error::StreamCut`], [`Error::Timeout`]).
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, Error> {
        let started = Instant::now();
        let mut stats = CallStats::default();
        let wire = Wire::of(&self.config)?;
        let prepared = self.prepare(wire, request, true)?;
        let (permit, ticket) = self.admit().await?;
        let max_attempts = ticket.max_attempts(self.config.max_retries);
        let result = loop {
            stats.attempts += 1;
            let mut status = None;
            let result = self
                .timed(self.stream_attempt(&prepared, &mut status))
                .await;
            stats.last_status = status.or(stats.last_status);
            match self.after_attempt(result, max_attempts, &stats) {
                Next::Done(result) => break result,
                Next::Wait(wait_ms) => tokio::time::sleep(Duration::from_millis(wait_ms)).await,
            }
        };
        ticket.record(&result);
        let (response, first_chunk) = result?;
        stats.latency_ms = millis(started.elapsed());
        Ok(ChatStream {
            response: Some(response),
            first_chunk: Some(first_chunk),
            parser: sse::Parser::new(),
            decoder: wire.decoder(),
            pending: VecDeque::new(),
            partial: String::new(),
            raw_start: Vec::new(),
            bytes_read: 0,
            max_bytes: self.config.max_response_bytes,
            idle_timeout_ms: self.config.timeout_ms,
            finished: false,
            open_stats: stats,
            permit: Some(permit),
        })
    }

    /// The key, the URL's headers and the body, built once per call. A missing key fails here,
    /// before any network traffic.
    fn prepare(&self, wire: Wire, request: &ChatRequest, stream: bool) -> Result<Prepared, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        if wire == Wire::Anthropic {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(anthropic::API_VERSION),
            );
        }
        if let Some(key) = self.api_key()? {
            let (name, value) = auth_header(&self.config, &key)?;
            headers.insert(name, value);
        }
        Ok(Prepared {
            url: wire.url(&self.config),
            headers,
            body: Bytes::from(wire.request_body(&self.config, request, stream).to_string()),
        })
    }

    fn api_key(&self) -> Result<Option<String>, Error> {
        let Some(env) = &self.config.api_key_env else {
            return Ok(None);
        };
        match (self.api_key_lookup)(env) {
            Some(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_string())),
            _ => Err(Error::MissingApiKey {
                model: self.config.name.clone(),
                env: env.clone(),
            }),
        }
    }

    /// Passes the breaker and takes a concurrency permit, held until the call ends. An open
    /// breaker refuses before waiting for a permit, and again after, since it may have opened.
    async fn admit(&self) -> Result<(OwnedSemaphorePermit, Ticket<'_>), Error> {
        let breaker = &self.shared.breaker;
        breaker.check(Instant::now(), &self.config)?;
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Connect {
                detail: "the client's concurrency limit was shut down".to_string(),
            })?;
        let admission = breaker.admit(Instant::now(), &self.config)?;
        Ok((permit, Ticket::new(breaker, admission)))
    }

    /// Decides what follows one attempt: its result, or a wait before the next attempt.
    fn after_attempt<T>(
        &self,
        result: Result<T, Failure>,
        max_attempts: u32,
        stats: &CallStats,
    ) -> Next<T> {
        let failure = match result {
            Ok(value) => return Next::Done(Ok(value)),
            Err(failure) => failure,
        };
        if !failure.error.is_retryable() || stats.attempts >= max_attempts {
            return Next::Done(Err(failure.error));
        }
        let wait_ms = match failure.retry_after_ms {
            Some(wait_ms) if wait_ms > self.retry_after_cap_ms => {
                tracing::info!(model = %self.config.name, wait_ms, "the provider asks to wait longer than Keel will; giving up on this model for now");
                return Next::Done(Err(failure.error));
            }
            Some(wait_ms) => wait_ms,
            None => self.backoff.delay_ms(stats.attempts),
        };
        tracing::warn!(model = %self.config.name, attempt = stats.attempts, code = failure.error.code(), error = %failure.error, wait_ms, "model call failed; retrying");
        Next::Wait(wait_ms)
    }

    /// Bounds one attempt by `timeout_ms`.
    async fn timed<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let timeout_ms = self.config.timeout_ms;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(Error::Timeout { timeout_ms })),
        }
    }

    async fn chat_attempt(
        &self,
        wire: Wire,
        prepared: &Prepared,
        status: &mut Option<u16>,
    ) -> Result<ChatResponse, Failure> {
        let mut response = self.send(prepared, status).await?;
        let limit_bytes = self.config.max_response_bytes;
        let body = read_capped(&mut response, limit_bytes)
            .await
            .map_err(|error| Failure::new(transport_error(error)))?;
        match body {
            Body::Complete(body) if body.iter().all(u8::is_ascii_whitespace) => {
                Err(Failure::new(Error::Malformed {
                    detail: "the response body is empty".to_string(),
                    raw: keep_raw(&body),
                }))
            }
            Body::Complete(body) => wire.parse_response(&body).map_err(Failure::new),
            Body::TooLarge(start) => Err(Failure::new(Error::TooLarge {
                limit_bytes,
                raw: keep_raw(&start),
            })),
        }
    }

    /// Sends the request and waits for the first bytes of the stream.
    async fn stream_attempt(
        &self,
        prepared: &Prepared,
        status: &mut Option<u16>,
    ) -> Result<(reqwest::Response, Bytes), Failure> {
        let mut response = self.send(prepared, status).await?;
        match response.chunk().await {
            Ok(Some(first_chunk)) => Ok((response, first_chunk)),
            Ok(None) => Err(Failure::new(Error::StreamCut {
                partial: String::new(),
            })),
            Err(error) => Err(Failure::new(transport_error(error))),
        }
    }

    /// Sends one request; a response that is not 2xx becomes a classified failure.
    async fn send(
        &self,
        prepared: &Prepared,
        status: &mut Option<u16>,
    ) -> Result<reqwest::Response, Failure> {
        let mut response = self
            .http
            .post(&prepared.url)
            .query(&self.config.query)
            .headers(prepared.headers.clone())
            .body(prepared.body.clone())
            .send()
            .await
            .map_err(|error| Failure::new(transport_error(error)))?;
        let code = response.status().as_u16();
        *status = Some(code);
        if response.status().is_success() {
            return Ok(response);
        }
        let retry_after_ms = retry_after_ms(response.headers(), SystemTime::now());
        let raw = match read_capped(&mut response, RAW_KEEP_BYTES).await {
            Ok(Body::Complete(body) | Body::TooLarge(body)) => keep_raw(&body),
            Err(_) => String::new(),
        };
        let error = status_error(&self.config, code, retry_after_ms, raw);
        Err(Failure {
            retry_after_ms: retry_after_ms.filter(|_| error.is_retryable()),
            error,
        })
    }
}

/// A streamed answer. Each [`ChatStream::next`] waits at most `timeout_ms` for more bytes.
/// The concurrency permit is held until the stream ends or is dropped.
pub struct ChatStream {
    response: Option<reqwest::Response>,
    first_chunk: Option<Bytes>,
    parser: sse::Parser,
    decoder: Decoder,
    pending: VecDeque<Result<StreamEvent, Error>>,
    /// The text so far, kept for [`Error::StreamCut`].
    partial: String,
    raw_start: Vec<u8>,
    bytes_read: usize,
    max_bytes: usize,
    idle_timeout_ms: u64,
    finished: bool,
    open_stats: CallStats,
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatStream")
            .field("bytes_read", &self.bytes_read)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// The next event; `None` after [`StreamEvent::Done`] or an error.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, Error>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let chunk = match self.first_chunk.take() {
                Some(chunk) => Ok(Some(chunk)),
                None => self.read_chunk().await,
            };
            match chunk {
                Ok(Some(chunk)) => self.feed(&chunk),
                Ok(None) => self.fail(Error::StreamCut {
                    partial: self.partial.clone(),
                }),
                Err(error) => self.fail(error),
            }
        }
    }

    /// Attempts, time to the first bytes and status of opening the stream.
    pub fn open_stats(&self) -> CallStats {
        self.open_stats
    }

    async fn read_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let Some(response) = self.response.as_mut() else {
            return Ok(None);
        };
        let idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        match tokio::time::timeout(idle_timeout, response.chunk()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(error)) => {
                tracing::debug!(error = %error.without_url(), "a model stream broke");
                Err(Error::StreamCut {
                    partial: self.partial.clone(),
                })
            }
            Err(_) => Err(Error::Timeout {
                timeout_ms: self.idle_timeout_ms,
            }),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.bytes_read += chunk.len();
        let keep = RAW_KEEP_BYTES
            .saturating_sub(self.raw_start.len())
            .min(chunk.len());
        self.raw_start.extend_from_slice(&chunk[..keep]);
        if self.bytes_read > self.max_bytes {
            let raw = keep_raw(&self.raw_start);
            return self.fail(Error::TooLarge {
                limit_bytes: self.max_bytes,
                raw,
            });
        }
        for event in self.parser.push(chunk) {
            match self.decoder.decode(&event) {
                Ok(events) => {
                    for event in events {
                        match &event {
                            StreamEvent::Delta(text) => self.partial.push_str(text),
                            StreamEvent::Done { .. } => self.finish(),
                        }
                        self.pending.push_back(Ok(event));
                    }
                }
                Err(error) => self.fail(error),
            }
            if self.finished {
                return;
            }
        }
    }

    fn fail(&mut self, error: Error) {
        self.pending.push_back(Err(error));
        self.finish();
    }

    /// Ends the stream: closes the connection and gives the permit back.
    fn finish(&mut self) {
        self.finished = true;
        self.response = None;
        self.permit = None;
    }
}

/// The wire formats a [`ProviderClient`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Openai,
    Anthropic,
}

impl Wire {
    fn of(config: &ModelConfig) -> Result<Wire, Error> {
        match config.provider {
            ProviderKind::Openai => Ok(Wire::Openai),
            ProviderKind::Anthropic => Ok(Wire::Anthropic),
            ProviderKind::Local => Err(Error::Unsupported {
                detail: format!(
                    "model `{}` is the local learner, which has no chat API",
                    config.name
                ),
            }),
        }
    }

    fn url(self, config: &ModelConfig) -> String {
        match self {
            Wire::Openai => format!("{}/chat/completions", config.base_url),
            Wire::Anthropic => format!("{}/messages", config.base_url),
        }
    }

    fn request_body(self, config: &ModelConfig, request: &ChatRequest, stream: bool) -> Value {
        match self {
            Wire::Openai => openai::request_body(config, request, stream),
            Wire::Anthropic => anthropic::request_body(config, request, stream),
        }
    }

    fn parse_response(self, body: &[u8]) -> Result<ChatResponse, Error> {
        match self {
            Wire::Openai => openai::parse_response(body),
            Wire::Anthropic => anthropic::parse_response(body),
        }
    }

    fn decoder(self) -> Decoder {
        match self {
            Wire::Openai => Decoder::Openai(openai::StreamDecoder::new()),
            Wire::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::new()),
        }
    }
}

enum Decoder {
    Openai(openai::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
}

impl Decoder {
    fn decode(&mut self, event: &sse::Event) -> Result<Vec<StreamEvent>, Error> {
        match self {
            Decoder::Openai(decoder) => decoder.decode(event),
            Decoder::Anthropic(decoder) => decoder.decode(event),
        }
    }
}

struct Prepared {
    url: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A failed attempt, with how long the provider asked us to wait before the next one.
struct Failure {
    error: Error,
    retry_after_ms: Option<u64>,
}

impl Failure {
    fn new(error: Error) -> Failure {
        Failure {
            error,
            retry_after_ms: None,
        }
    }
}

/// The key's header: `authorization` carries `Bearer KEY`, any other header the bare key.
/// The value is marked sensitive so that it never shows in debug output.
fn auth_header(config: &ModelConfig, key: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let name =
        HeaderName::from_bytes(config.api_key_header.as_bytes()).map_err(|_| Error::Rejected {
            status: 0,
            raw: format!(
                "api_key_header `{}` of model `{}` is not a valid HTTP header name",
                config.api_key_header, config.name
            ),
        })?;
    let value = if name == AUTHORIZATION {
        format!("Bearer {key}")
    } else {
        key.to_string()
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| Error::Unauthorized {
        provider: config.provider.as_str(),
        model: config.name.clone(),
        env: config.api_key_env.clone().unwrap_or_default(),
        status: 0,
        raw: "the key contains characters that cannot be sent in an HTTP header".to_string(),
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Classifies a response that is not 2xx.
fn status_error(
    config: &ModelConfig,
    status: u16,
    retry_after_ms: Option<u64>,
    raw: String,
) -> Error {
    match status {
        401 | 403 => Error::Unauthorized {
            provider: config.provider.as_str(),
            model: config.name.clone(),
            env: config
                .api_key_env
                .clone()
                .unwrap_or_else(|| "(none: set api_key_env in keel.toml)".to_string()),
            status,
            raw,
        },
        // OpenAI answers an exhausted account with 429 too; waiting will not refill it.
        429 if raw.contains("\"insufficient_quota\"") => Error::Rejected { status, raw },
        429 => Error::RateLimited {
            retry_after_ms,
            raw,
        },
        408 | 500..=599 => Error::Server { status, raw },
        _ => Error::Rejected { status, raw },
    }
}

/// Classifies an error reported inside a 200 response (a stream's error event), by the error
/// `type` both providers put in their bodies, with the status each documents for it.
pub(super) fn error_for_body_type(kind: &str, raw: String) -> Error {
    match kind {
        "invalid_request_error" => Error::Rejected { status: 400, raw },
        "authentication_error" => Error::Rejected { status: 401, raw },
        "permission_error" => Error::Rejected { status: 403, raw },
        "not_found_error" => Error::Rejected { status: 404, raw },
        "request_too_large" => Error::Rejected { status: 413, raw },
        "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => Error::RateLimited {
            retry_after_ms: None,
            raw,
        },
        "overloaded_error" => Error::Server { status: 529, raw },
        _ => Error::Server { status: 500, raw },
    }
}

/// The instruction that asks for JSON in the prompt, for formats the provider is not told.
pub(super) fn json_instruction(format: &ResponseFormat) -> Option<String> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some("Respond with a single JSON object and nothing else.".to_string()),
        ResponseFormat::JsonSchema { schema, .. } => Some(format!(
            "Respond with a single JSON value that matches this JSON Schema, and nothing else:\n{schema}"
        )),
    }
}

/// How long the provider asks us to wait: OpenAI's `retry-after-ms`, else `Retry-After` in
/// seconds or as an HTTP date.
fn retry_after_ms(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|value| value.parse::<f64>().ok()) {
        return finite_ms(ms);
    }
    let value = header("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return finite_ms(seconds * 1000.0);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    Some(u64::try_from((date.with_timezone(&chrono::Utc) - now).num_milliseconds()).unwrap_or(0))
}

fn finite_ms(ms: f64) -> Option<u64> {
    (ms.is_finite() && ms >= 0.0).then(|| ms.min(u64::MAX as f64) as u64)
}

fn transport_error(error: reqwest::Error) -> Error {
    let timed_out = error.is_timeout();
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if timed_out {
        // Only a timeout set on the caller's reqwest::Client gets here; ours wraps the attempt.
        detail.push_str(" (a timeout of the HTTP client)");
    }
    Error::Connect { detail }
}

enum Body {
    Complete(Vec<u8>),
    /// Over the limit: the first bytes read.
    TooLarge(Vec<u8>),
}

/// Reads the body as it arrives and stops as soon as it passes `limit_bytes`.
async fn read_capped(
    response: &mut reqwest::Response,
    limit_bytes: usize,
) -> Result<Body, reqwest::Error> {
    let declared_too_large = response
        .content_length()
        .is_some_and(|length| length > limit_bytes as u64);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if declared_too_large && body.len() + chunk.len() >= RAW_KEEP_BYTES.min(limit_bytes) {
            body.extend_from_slice(&chunk);
            return Ok(Body::TooLarge(body));
        }
        if body.len() + chunk.len() > limit_bytes {
            body.extend_from_slice(
                &chunk[..limit_bytes.saturating_sub(body.len()).min(chunk.len())],
            );
            return Ok(Body::TooLarge(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Complete(body))
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    base_ms: u64,
    cap_ms: u64,
}

impl Backoff {
    /// Full jitter: uniform in `0..=min(cap, base * 2^(attempt - 1))`.
    fn delay_ms(self, attempt: u32) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(self.cap_ms);
        fastrand::u64(0..=ceiling)
    }
}

/// A per-client circuit breaker counting consecutive calls that failed by the provider's fault.
struct Breaker {
    state: Mutex<BreakerInner>,
    failures_to_open: u32,
    cooldown: Duration,
}

#[derive(Debug, Clone, Copy)]
enum BreakerInner {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    /// The one call let through a half-open breaker; it makes a single attempt.
    Probe,
}

impl Breaker {
    fn new(failures_to_open: u32, cooldown_ms: u64) -> Breaker {
        Breaker {
            state: Mutex::new(BreakerInner::Closed {
                consecutive_failures: 0,
            }),
            failures_to_open: failures_to_open.max(1),
            cooldown: Duration::from_millis(cooldown_ms),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerInner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            BreakerInner::Closed { .. } => BreakerState::Closed,
            BreakerInner::Open { until } if now < until => BreakerState::Open { until },
            BreakerInner::Open { .. } | BreakerInner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn refusal(&self, config: &ModelConfig, retry_in: Duration) -> Error {
        Error::CircuitOpen {
            model: config.name.clone(),
            retry_in_ms: millis(retry_in),
        }
    }

    /// Refuses if the breaker is open or its probe is in flight; changes nothing.
    fn check(&self, now: Instant, config: &ModelConfig) -> Result<(), Error> {
        match *self.lock() {
            BreakerInner::Open { until } if now < until => Err(self.refusal(config, until - now)),
            BreakerInner::HalfOpen {
                probe_in_flight: true,
            } => Err(self.refusal(config, Duration::from_millis(config.timeout_ms))),
            _ => Ok(()),
        }
    }

    fn admit(&self, now: Instant, config: &ModelConfig) -> Result<Admission, Error> {
        let mut state = self.lock();
        match *state {
            BreakerInner::Closed { .. } => Ok(Admission::Normal),
            BreakerInner::Open { until } if now < until => Err(self.refusal(config, until - now)),
            BreakerInner::Open { .. }
            | BreakerInner::HalfOpen {
                probe_in_flight: false,
            } => {
                *state = BreakerInner::HalfOpen {
                    probe_in_flight: true,
                };
                tracing::info!(model = %config.name, "circuit breaker half-open; sending one probe call");
                Ok(Admission::Probe)
            }
            BreakerInner::HalfOpen {
                probe_in_flight: true,
            } => Err(self.refusal(config, Duration::from_millis(config.timeout_ms))),
        }
    }

    /// `provider_fault`: `Some(true)` when the call failed by the provider's fault, `Some(false)`
    /// when it succeeded, `None` when it failed otherwise (the provider answered, but no).
    fn record(&self, admission: Admission, provider_fault: Option<bool>, now: Instant) {
        let mut state = self.lock();
        let next = match (admission, *state, provider_fault) {
            (Admission::Probe, _, Some(true)) => BreakerInner::Open {
                until: now + self.cooldown,
            },
            (Admission::Probe, _, _) => BreakerInner::Closed {
                consecutive_failures: 0,
            },
            (Admission::Normal, BreakerInner::Closed { .. }, Some(false)) => BreakerInner::Closed {
                consecutive_failures: 0,
            },
            (
                Admission::Normal,
                BreakerInner::Closed {
                    consecutive_failures,
                },
                Some(true),
            ) => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.failures_to_open {
                    tracing::warn!(
                        failures,
                        cooldown_ms = millis(self.cooldown),
                        "circuit breaker opened"
                    );
                    BreakerInner::Open {
                        until: now + self.cooldown,
                    }
                } else {
                    BreakerInner::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            (_, unchanged, _) => unchanged,
        };
        *state = next;
    }

    /// A probe that ended without an outcome (its call was dropped) lets the next call probe.
    fn release_probe(&self) {
        let mut state = self.lock();
        if let BreakerInner::HalfOpen {
            probe_in_flight: true,
        } = *state
        {
            *state = BreakerInner::HalfOpen {
                probe_in_flight: false,
            };
        }
    }
}

/// A call's pass through the breaker; the outcome must be recorded, or dropping releases it.
struct Ticket<'a> {
    breaker: &'a Breaker,
    admission: Admission,
    recorded: bool,
}

impl<'a> Ticket<'a> {
    fn new(breaker: &'a Breaker, admission: Admission) -> Ticket<'a> {
        Ticket {
            breaker,
            admission,
            recorded: false,
        }
    }

    fn max_attempts(&self, max_retries: u32) -> u32 {
        match self.admission {
            Admission::Normal => max_retries.saturating_add(1),
            Admission::Probe => 1,
        }
    }

    fn record<T>(mut self, result: &Result<T, Error>) {
        let provider_fault = match result {
            Ok(_) => Some(false),
            Err(error) if error.counts_against_provider() => Some(true),
            Err(_) => None,
        };
        self.recorded = true;
        self.breaker
            .record(self.admission, provider_fault, Instant::now());
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.admission == Admission::Probe {
            self.breaker.release_probe();
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: ProviderKind::Openai,
            base_url: String::new(),
            model: "m".into(),
            api_key_env: Some("M_KEY".into()),
            api_key_header: "authorization".into(),
            query: Default::default(),
            timeout_ms: 100,
            max_concurrency: 1,
            max_retries: 0,
            breaker_failures: 2,
            breaker_cooldown_ms: 1_000,
            max_response_bytes: 1024,
            structured_output: true,
            logprobs: false,
            prices: Vec::new(),
        }
    }

    #[test]
    fn retry_after_is_read_in_every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        let check = |name: &'static str, value: &'static str, expected: Option<u64>| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert_eq!(retry_after_ms(&headers, now), expected, "{name}: {value}");
        };
        check("retry-after", "1", Some(1000));
        check("retry-after", " 2.5 ", Some(2500));
        check("retry-after", "-1", None);
        check("retry-after", "soon", None);
        check("retry-after-ms", "150", Some(150));
        // 2015-10-21T07:28:00Z is ten seconds after `now`.
        check("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", Some(10_000));
        check("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT", Some(0));
    }

    #[test]
    fn statuses_are_classified() {
        let config = test_config();
        let check = |status: u16, raw: &str, code: &str, retryable: bool| {
            let error = status_error(&config, status, None, raw.to_string());
            assert_eq!(
                (error.code(), error.is_retryable()),
                (code, retryable),
                "{status} {raw}"
            );
        };
        check(400, "", "rejected", false);
        check(401, "", "unauthorized", false);
        check(403, "", "unauthorized", false);
        check(404, "", "rejected", false);
        check(422, "", "rejected", false);
        check(
            429,
            r#"{"error":{"code":"rate_limit_exceeded"}}"#,
            "rate_limited",
            true,
        );
        check(
            429,
            r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
            "rejected",
            false,
        );
        check(500, "", "provider_error", true);
        check(503, "", "provider_error", true);
        check(529, "", "provider_error", true);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let backoff = Backoff {
            base_ms: 200,
            cap_ms: 10_000,
        };
        for _ in 0..200 {
            assert!(backoff.delay_ms(1) <= 200);
            assert!(backoff.delay_ms(3) <= 800);
            assert!(backoff.delay_ms(40) <= 10_000);
        }
    }

    #[test]
    fn the_breaker_opens_half_opens_and_closes() {
        let breaker = Breaker::new(2, 1_000);
        let config = test_config();
        let start = Instant::now();
        for _ in 0..2 {
            let admission = breaker.admit(start, &config).unwrap();
            breaker.record(admission, Some(true), start);
        }
        assert!(matches!(breaker.state(start), BreakerState::Open { .. }));
        assert!(matches!(
            breaker.admit(start, &config),
            Err(Error::CircuitOpen {
                retry_in_ms: 1_000,
                ..
            })
        ));
        let later = start + Duration::from_millis(1_001);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(later, &config).unwrap(), Admission::Probe);
        assert!(
            breaker.admit(later, &config).is_err(),
            "one probe at a time"
        );
        {
            let _dropped = Ticket::new(&breaker, Admission::Probe);
        }
        assert_eq!(
            breaker.admit(later, &config).unwrap(),
            Admission::Probe,
            "a dropped probe frees the slot"
        );
        breaker.record(Admission::Probe, Some(false), later);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }
}
