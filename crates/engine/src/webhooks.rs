//! Outbound webhooks: events from the journal, signed, POSTed to the endpoints of
//! `[[webhooks]]` in `keel.toml`, retried with backoff, with a delivery log.
//!
//! The journal is the outbox, so no write path changes. A dispatcher keeps one durable cursor
//! per endpoint over the journal; for each entry whose kind the endpoint subscribes to it
//! inserts a `webhook_deliveries` row, and it moves the cursor in the same transaction (a
//! crash neither loses nor duplicates an event). One sender per endpoint delivers due rows, at
//! most `max_concurrency_per_endpoint` at once: 2xx is delivered; anything else is retried
//! after exponential backoff with full jitter until `max_attempts`, when the delivery is
//! `failed` and a `webhook.failed` entry is journaled. Every attempt is a `webhook_attempts`
//! row. A receiver that is down loses nothing: its rows wait, pending, and go out when it
//! answers again. Delivery is at least once (a crash between a 2xx and its record repeats the
//! request) with a stable `keel-webhook-id`, so receivers deduplicate by it; order is not
//! guaranteed (the payload's `seq` orders events).
//!
//! Wake-up: the dispatcher polls the journal every `poll_interval` (200 ms) rather than
//! listening to the engine's `journal_written`: that `Notify` wakes one waiter (the
//! sequencer), and entries also arrive through paths that do not notify (the gateway's log,
//! other nodes). The dispatcher wakes a sender at once when it enqueued something for it.
//!
//! One node sends: the dispatcher holds the `webhooks` lease (as the sequencer holds its
//! own) and senders work only while it is held. The cursor update is guarded by its old value
//! and attempts by the delivery's attempt count, so a lease lost mid-way costs at most a
//! duplicate request, never a lost or double-counted event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use keel_ai::config::WebhookConfig;
use keel_store::{
    JournalRow, NewEntry, Store, WebhookAttemptRow, WebhookDeliveryFilter, WebhookDeliveryRow,
    WEBHOOK_DELIVERED, WEBHOOK_FAILED, WEBHOOK_PENDING,
};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::Clock;

/// Journal entries read per page by the dispatcher.
const JOURNAL_PAGE: i64 = 500;
/// Pages per endpoint per dispatcher pass, so one busy endpoint cannot starve the others.
const PAGES_PER_PASS: usize = 20;
/// A payload larger than this is sent without the entry's data (its hash instead).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Bytes of a failed response's body kept in the delivery log.
const RESPONSE_SNIPPET_BYTES: usize = 256;
/// Characters of an error kept in the delivery log.
const MAX_ERROR_CHARS: usize = 500;
/// How long the `webhooks` lease lasts without renewal.
const LEASE_MS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook `{endpoint}`: the environment variable {variable} (its secret_env) is not set; set it to the secret shared with the receiver, or remove the endpoint from keel.toml")]
    MissingSecret { endpoint: String, variable: String },
    #[error("webhook `{endpoint}`: the environment variable {variable} (its secret_env) is empty; set it to the secret shared with the receiver")]
    EmptySecret { endpoint: String, variable: String },
}

/// A checked endpoint with its secret. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    /// Subscribed event types (journal kinds).
    pub events: Vec<String>,
    pub timeout: Duration,
    pub max_attempts: u32,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint of `config` with the secret given (tests; `from_environment` reads it).
    pub fn new(config: &WebhookConfig, secret: &str) -> Result<Endpoint, Error> {
        if secret.is_empty() {
            return Err(Error::EmptySecret {
                endpoint: config.name.clone(),
                variable: config.secret_env.clone(),
            });
        }
        Ok(Endpoint {
            name: config.name.clone(),
            url: config.url.clone(),
            events: config.events.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_attempts: config.max_attempts.max(1),
            secret: Arc::from(secret.as_bytes()),
        })
    }

    /// Every endpoint of `configs`, each with the secret read from its `secret_env` variable.
    pub fn from_environment(configs: &[WebhookConfig]) -> Result<Vec<Endpoint>, Error> {
        Endpoint::with_secrets(configs, |variable| std::env::var(variable).ok())
    }

    /// Every endpoint of `configs`, with secrets looked up by variable name.
    pub fn with_secrets(
        configs: &[WebhookConfig],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Endpoint>, Error> {
        configs
            .iter()
            .map(|config| {
                let secret = lookup(&config.secret_env).ok_or_else(|| Error::MissingSecret {
                    endpoint: config.name.clone(),
                    variable: config.secret_env.clone(),
                })?;
                Endpoint::new(config, &secret)
            })
            .collect()
    }

    pub fn subscribes(&self, kind: &str) -> bool {
        self.events.iter().any(|event| event == kind)
    }
}

/// How the webhook service runs; the default suits production.
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoints: Vec<Endpoint>,
    /// How often the dispatcher reads new journal entries and senders look for due retries.
    pub poll_interval: Duration,
    /// Backoff before the second attempt (before jitter); doubles per failed attempt.
    pub backoff_base: Duration,
    /// Longest backoff between two attempts.
    pub backoff_cap: Duration,
    /// Requests in flight at once per endpoint.
    pub max_concurrency_per_endpoint: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoints: Vec::new(),
            poll_interval: Duration::from_millis(200),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            max_concurrency_per_endpoint: 8,
        }
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp_s>.<body>")>`, the `keel-signature` header.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Full-jitter backoff after `failed_attempts` failures: uniform in
/// `[0, min(cap, base · 2^(failed_attempts − 1))]`, with `unit_random` in `[0, 1)`.
pub fn backoff_ms(failed_attempts: u32, base: Duration, cap: Duration, unit_random: f64) -> i64 {
    let exponent = failed_attempts.saturating_sub(1).min(40) as i32;
    let ceiling = (base.as_millis() as f64 * 2f64.powi(exponent)).min(cap.as_millis() as f64);
    (ceiling * unit_random.clamp(0.0, 1.0)) as i64
}

/// The request body for `entry`: `{id, type, created_at, seq, data}`, where `data` is the
/// entry's data plus its subject (`case_id`, `workflow`, `step`, `task_id`, `exception_id`,
/// each unless the data has a key of that name). Above `MAX_PAYLOAD_BYTES` the data is
/// replaced by the subject, `truncated: true` and the entry's `data_sha256`.
pub fn payload(delivery_id: &str, entry: &JournalRow) -> String {
    let mut data = match serde_json::from_str::<Value>(&entry.data) {
        Ok(Value::Object(map)) => map,
        Ok(other) => Map::from_iter([("value".to_string(), other)]),
        Err(_) => Map::new(),
    };
    let subject = subject(entry);
    for (key, value) in &subject {
        data.entry(key.clone()).or_insert_with(|| value.clone());
    }
    let body = |data: Map<String, Value>| {
        json!({
            "id": delivery_id,
            "type": entry.kind,
            "created_at": entry.at,
            "seq": entry.seq,
            "data": data,
        })
        .to_string()
    };
    let full = body(data);
    if full.len() <= MAX_PAYLOAD_BYTES {
        return full;
    }
    let mut short = subject;
    short.insert("truncated".into(), Value::Bool(true));
    short.insert(
        "data_sha256".into(),
        Value::String(entry.data_sha256.clone()),
    );
    body(short)
}

fn subject(entry: &JournalRow) -> Map<String, Value> {
    [
        ("case_id", &entry.case_id),
        ("workflow", &entry.workflow),
        ("step", &entry.step),
        ("task_id", &entry.task_id),
        ("exception_id", &entry.exception_id),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_string(), Value::String(value.clone()?))))
    .collect()
}

/// The running service; the engine keeps it to stop it.
pub(crate) struct Handle {
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Handle {
    /// Stops enqueueing and sending; waits up to `grace` for requests in flight to be
    /// recorded, then abandons them (they stay pending and are sent again after restart).
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in self.tasks.lock().await.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("webhook requests still in flight at shutdown; they are sent again after restart");
                task.abort();
            }
        }
    }
}

struct Service {
    store: Store,
    clock: Arc<dyn Clock>,
    node_id: String,
    options: Options,
    http: reqwest::Client,
    /// Whether this node holds the `webhooks` lease.
    leader: AtomicBool,
}

/// Creates the endpoints' cursors (a new endpoint starts at the end of the journal: it gets
/// events from now on, not the history) and spawns the dispatcher and one sender per endpoint.
pub(crate) async fn start(
    store: Store,
    clock: Arc<dyn Clock>,
    node_id: String,
    options: Options,
) -> crate::Result<Handle> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    if !options.endpoints.is_empty() {
        let head = store.journal_head().await?;
        let mut cursors = Vec::with_capacity(options.endpoints.len());
        for endpoint in &options.endpoints {
            let cursor = store
                .webhook_cursor_init(&endpoint.name, head, clock.now_ms())
                .await?;
            tracing::info!(endpoint = %endpoint.name, events = ?endpoint.events, after_seq = cursor, "webhook endpoint configured");
            cursors.push(cursor);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keel-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                crate::Error::Io(format!("cannot build the webhook HTTP client: {error}"))
            })?;
        let service = Arc::new(Service {
            store,
            clock,
            node_id,
            options,
            http,
            leader: AtomicBool::new(false),
        });
        let wakes: Vec<Arc<Notify>> = cursors.iter().map(|_| Arc::default()).collect();
        for (index, wake) in wakes.iter().enumerate() {
            tasks.push(tokio::spawn(send_loop(
                service.clone(),
                index,
                wake.clone(),
                stopped.clone(),
            )));
        }
        tasks.push(tokio::spawn(dispatch_loop(
            service, cursors, wakes, stopped,
        )));
    }
    Ok(Handle {
        stop,
        tasks: tokio::sync::Mutex::new(tasks),
    })
}

/// Holds the lease and turns new journal entries into deliveries, every `poll_interval`.
async fn dispatch_loop(
    service: Arc<Service>,
    mut cursors: Vec<i64>,
    wakes: Vec<Arc<Notify>>,
    mut stopped: watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        let now = service.clock.now_ms();
        let leader = service
            .store
            .acquire_lease("webhooks", &service.node_id, now, now + LEASE_MS)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot renew the webhooks lease; retrying");
                false
            });
        service.leader.store(leader, Ordering::SeqCst);
        if leader {
            for (index, endpoint) in service.options.endpoints.iter().enumerate() {
                match enqueue(&service, endpoint, &mut cursors[index]).await {
                    Ok(0) => {}
                    Ok(_) => wakes[index].notify_one(),
                    Err(error) => {
                        tracing::warn!(endpoint = %endpoint.name, %error, "enqueueing webhook deliveries failed; retrying")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(service.options.poll_interval) => {}
            changed = stopped.changed() => if changed.is_err() { return },
        }
    }
}

/// Moves `endpoint`'s cursor over new journal entries, enqueueing the subscribed ones.
/// Returns how many deliveries were enqueued.
async fn enqueue(service: &Service, endpoint: &Endpoint, cursor: &mut i64) -> crate::Result<usize> {
    let mut enqueued = 0;
    for _ in 0..PAGES_PER_PASS {
        let entries = service.store.journal_after(*cursor, JOURNAL_PAGE).await?;
        let Some(last) = entries.last().map(|entry| entry.seq) else {
            break;
        };
        let now = service.clock.now_ms();
        let deliveries: Vec<WebhookDeliveryRow> = entries
            .iter()
            .filter(|entry| endpoint.subscribes(&entry.kind))
            .map(|entry| new_delivery(&endpoint.name, entry, now))
            .collect();
        let moved = service
            .store
            .enqueue_webhook_deliveries(&endpoint.name, *cursor, last, &deliveries, now)
            .await?;
        if !moved {
            // Another node moved the cursor while it held the lease; continue from there.
            *cursor = service
                .store
                .webhook_cursor_init(&endpoint.name, *cursor, now)
                .await?;
            break;
        }
        *cursor = last;
        enqueued += deliveries.len();
        if (entries.len() as i64) < JOURNAL_PAGE {
            break;
        }
    }
    Ok(enqueued)
}

fn new_delivery(endpoint: &str, entry: &JournalRow, now_ms: i64) -> WebhookDeliveryRow {
    let id = uuid::Uuid::now_v7().to_string();
    WebhookDeliveryRow {
        payload: payload(&id, entry),
        id,
        endpoint: endpoint.to_string(),
        journal_seq: entry.seq,
        event: entry.kind.clone(),
        case_id: entry.case_id.clone(),
        status: WEBHOOK_PENDING.into(),
        attempts: 0,
        next_attempt_at_ms: Some(now_ms),
        last_status_code: None,
        last_error: None,
        created_at_ms: now_ms,
        delivered_at_ms: None,
    }
}

/// Sends `endpoint`'s due deliveries, a bounded number at once, while this node is leader.
async fn send_loop(
    service: Arc<Service>,
    index: usize,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let endpoint = &service.options.endpoints[index];
    let concurrency = service.options.max_concurrency_per_endpoint.max(1);
    let mut running = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    while !*stopped.borrow() {
        if service.leader.load(Ordering::SeqCst) && in_flight.len() < concurrency {
            // Twice the bound: the rows in flight are still pending and may fill half the page.
            let due = service
                .store
                .due_webhook_deliveries(
                    &endpoint.name,
                    service.clock.now_ms(),
                    2 * concurrency as i64,
                )
                .await;
            match due {
                Ok(rows) => {
                    for row in rows {
                        if in_flight.len() >= concurrency {
                            break;
                        }
                        if in_flight.values().any(|id| *id == row.id) {
                            continue;
                        }
                        let id = row.id.clone();
                        let task = running.spawn(attempt(service.clone(), index, row));
                        in_flight.insert(task.id(), id);
                    }
                }
                Err(error) => {
                    tracing::warn!(endpoint = %endpoint.name, %error, "reading due webhook deliveries failed; retrying")
                }
            }
        }
        tokio::select! {
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                in_flight.remove(&id);
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(service.options.poll_interval) => {}
            changed = stopped.changed() => if changed.is_err() { break },
        }
    }
    // Let requests in flight finish and be recorded; `Handle::shutdown` bounds the wait.
    while running.join_next().await.is_some() {}
}

/// One attempt of one delivery, recorded with the delivery's new status.
async fn attempt(service: Arc<Service>, index: usize, row: WebhookDeliveryRow) {
    let endpoint = &service.options.endpoints[index];
    let number = row.attempts + 1;
    let started = Instant::now();
    let (status_code, error) = post(&service.http, endpoint, &row, service.clock.now_ms()).await;
    let now = service.clock.now_ms();
    let record = WebhookAttemptRow {
        delivery_id: row.id.clone(),
        attempt: number,
        at_ms: now,
        status_code,
        error: error.clone(),
        duration_ms: started.elapsed().as_millis() as i64,
    };
    let options = &service.options;
    let (status, next_attempt_at_ms, failed_entry) = match &error {
        None => (WEBHOOK_DELIVERED, None, None),
        Some(_) if number >= i64::from(endpoint.max_attempts) => (
            WEBHOOK_FAILED,
            None,
            Some(failed_entry(&row, number, status_code, now)),
        ),
        Some(_) => {
            let delay = backoff_ms(
                number as u32,
                options.backoff_base,
                options.backoff_cap,
                fastrand::f64(),
            );
            (WEBHOOK_PENDING, Some(now + delay), None)
        }
    };
    let recorded = service
        .store
        .record_webhook_attempt(&record, status, next_attempt_at_ms, failed_entry.as_ref())
        .await;
    match (recorded, &error) {
        (Ok(true), None) => {
            tracing::debug!(endpoint = %endpoint.name, delivery = %row.id, attempt = number, "webhook delivered")
        }
        (Ok(true), Some(error)) if status == WEBHOOK_FAILED => {
            tracing::warn!(endpoint = %endpoint.name, delivery = %row.id, attempts = number, %error, "webhook delivery failed for good")
        }
        (Ok(true), Some(error)) => {
            tracing::debug!(endpoint = %endpoint.name, delivery = %row.id, attempt = number, %error, "webhook attempt failed; retrying later")
        }
        (Ok(false), _) => {
            tracing::debug!(delivery = %row.id, "another node recorded this webhook attempt first")
        }
        (Err(error), _) => {
            tracing::warn!(delivery = %row.id, %error, "cannot record a webhook attempt; it is made again")
        }
    }
}

/// POSTs the delivery; returns the response status (if any) and the error (if not 2xx).
async fn post(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    row: &WebhookDeliveryRow,
    now_ms: i64,
) -> (Option<i64>, Option<String>) {
    let timestamp_s = now_ms.div_euclid(1000);
    let signature = sign(&endpoint.secret, timestamp_s, row.payload.as_bytes());
    let sent = http
        .post(&endpoint.url)
        .timeout(endpoint.timeout)
        .header("content-type", "application/json")
        .header("keel-webhook-id", &row.id)
        .header("keel-webhook-timestamp", timestamp_s.to_string())
        .header("keel-signature", signature)
        .body(row.payload.clone())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return (None, Some(describe(&error, endpoint.timeout))),
    };
    let status = response.status();
    if status.is_success() {
        return (Some(i64::from(status.as_u16())), None);
    }
    let mut snippet = Vec::new();
    while snippet.len() < RESPONSE_SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_SNIPPET_BYTES - snippet.len();
                snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&snippet);
    let error = format!("HTTP {}: {}", status.as_u16(), text.trim());
    (
        Some(i64::from(status.as_u16())),
        Some(truncate(error.trim_end_matches(": "), MAX_ERROR_CHARS)),
    )
}

/// A transport error without the URL (which may carry a token), with its causes.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no response within {} ms", timeout.as_millis());
    }
    let mut text = String::from(if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(&text, MAX_ERROR_CHARS)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The journal entry that says a delivery was given up; the details stay in the delivery
/// log (the receiver's answer is not evidence worth keeping forever).
fn failed_entry(
    row: &WebhookDeliveryRow,
    attempts: i64,
    status_code: Option<i64>,
    now_ms: i64,
) -> NewEntry {
    let (data, data_sha256) = crate::canonical_data(&json!({
        "endpoint": row.endpoint,
        "delivery_id": row.id,
        "event": row.event,
        "journal_seq": row.journal_seq,
        "attempts": attempts,
        "last_status_code": status_code,
    }));
    NewEntry {
        at: crate::rfc3339_ms(now_ms),
        kind: "webhook.failed".into(),
        actor_type: "system".into(),
        actor_id: "webhooks".into(),
        case_id: row.case_id.clone(),
        workflow: None,
        step: None,
        data,
        data_sha256,
    }
}

impl crate::Engine {
    /// The webhook delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        filter: &WebhookDeliveryFilter,
    ) -> crate::Result<Vec<WebhookDeliveryRow>> {
        Ok(self.inner.store.webhook_deliveries(filter).await?)
    }

    /// One delivery.
    pub async fn webhook_delivery(&self, id: &str) -> crate::Result<Option<WebhookDeliveryRow>> {
        Ok(self.inner.store.webhook_delivery(id).await?)
    }

    /// Every attempt of one delivery, in order.
    pub async fn webhook_attempts(
        &self,
        delivery_id: &str,
    ) -> crate::Result<Vec<WebhookAttemptRow>> {
        Ok(self.inner.store.webhook_attempts(delivery_id).await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_and_jitters_below_it() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(600);
        let ceiling = |failed| backoff_ms(failed, base, cap, 1.0);
        assert_eq!(
            [1, 2, 3, 4].map(ceiling),
            [1_000, 2_000, 4_000, 8_000],
            "doubles per failure"
        );
        assert_eq!(ceiling(10), 512_000);
        assert_eq!(ceiling(11), 600_000, "capped at ten minutes");
        assert_eq!(ceiling(50), 600_000, "no overflow at the bound");
        assert_eq!(backoff_ms(3, base, cap, 0.0), 0, "full jitter reaches zero");
        assert_eq!(backoff_ms(3, base, cap, 0.5), 2_000);
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn a_payload_carries_the_subject_and_stays_under_the_bound() {
        let entry = JournalRow {
            seq: 7,
            at: "2026-01-01T00:00:00.000Z".into(),
            kind: "exception.raised".into(),
            actor_type: "system".into(),
            actor_id: "engine".into(),
            case_id: Some("c1".into()),
            workflow: Some("triage".into()),
            step: Some("classify".into()),
            task_id: None,
            exception_id: None,
            data: r#"{"kind":"ai_failed","step":"kept"}"#.into(),
            data_sha256: "ab".into(),
        };
        let body: Value = serde_json::from_str(&payload("d1", &entry)).unwrap();
        assert_eq!(body["id"], "d1");
        assert_eq!(body["type"], "exception.raised");
        assert_eq!(body["seq"], 7);
        assert_eq!(body["data"]["case_id"], "c1");
        assert_eq!(body["data"]["workflow"], "triage");
        assert_eq!(body["data"]["step"], "kept", "the entry's own keys win");
        assert!(body["data"].get("task_id").is_none());

        let big = JournalRow {
            data: json!({ "text": "x".repeat(MAX_PAYLOAD_BYTES) }).to_string(),
            ..entry
        };
        let text = payload("d2", &big);
        assert!(text.len() < 1_024);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["data"]["truncated"], true);
        assert_eq!(body["data"]["data_sha256"], "ab");
        assert_eq!(body["data"]["case_id"], "c1");
    }
}
