//! The record of model calls: one `ai_calls` row per call (the projection budgets and cost
//! reports read), plus a journal entry for calls that belong to no case (the gateway's).
//!
//! Writes are batched by one task off the request path, so a gateway response never waits
//! for an fsync. The queue is bounded twice, in records ([`QUEUE`]) and in bytes
//! ([`MAX_QUEUED_BYTES`]). The gateway asks [`Handle::has_room`] before it calls a model and
//! refuses new calls (503) once a quarter of either bound is left, so the calls already in
//! flight still find room; a record that finds the queue full waits for room (back-pressure)
//! rather than being dropped. On shutdown the queue is drained.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keel_store::{AiCallRow, NewEntry, Store};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Records waiting to be written, at most.
const QUEUE: usize = 16_384;
/// Bytes of journal data (and call rows, counted at [`ROW_BYTES`] each) waiting to be written
/// before new gateway calls are refused. Unredacted gateway entries carry the whole prompt, so
/// a count alone would not bound memory.
pub(crate) const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// What one `ai_calls` row is counted as in [`MAX_QUEUED_BYTES`].
const ROW_BYTES: usize = 256;
/// Records per transaction at most.
const MAX_BATCH: usize = 2_000;

#[allow(clippy::large_enum_variant)] // records are moved through once; boxing buys nothing
pub(crate) enum Message {
    /// Replies (when a sender is given) once the records are committed.
    Record(
        Vec<AiCallRow>,
        Option<NewEntry>,
        Option<oneshot::Sender<()>>,
    ),
    /// Replies once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Message>,
    /// Bytes queued and not yet written (see [`MAX_QUEUED_BYTES`]).
    queued_bytes: Arc<AtomicUsize>,
}

/// The bytes a record holds while it waits in the queue.
fn weight(calls: &[AiCallRow], entry: Option<&NewEntry>) -> usize {
    calls.len() * ROW_BYTES + entry.map_or(0, |entry| entry.data.len() + ROW_BYTES)
}

impl Handle {
    /// True while the queue has room for new calls: more than a quarter of its records and of
    /// its bytes free. The rest is kept for the calls already in flight.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > QUEUE / 4
            && self.queued_bytes.load(Ordering::Relaxed) < MAX_QUEUED_BYTES / 4 * 3
    }

    pub async fn record(&self, calls: Vec<AiCallRow>, entry: Option<NewEntry>) {
        self.queued_bytes
            .fetch_add(weight(&calls, entry.as_ref()), Ordering::Relaxed);
        if self
            .tx
            .send(Message::Record(calls, entry, None))
            .await
            .is_err()
        {
            tracing::error!("the model-call log has stopped; a call was not recorded");
        }
    }

    /// Like `record`, but returns only once the records are committed (group commit: every
    /// record queued meanwhile shares the transaction).
    pub async fn record_durably(&self, calls: Vec<AiCallRow>, entry: Option<NewEntry>) {
        self.queued_bytes
            .fetch_add(weight(&calls, entry.as_ref()), Ordering::Relaxed);
        let (reply, wait) = oneshot::channel();
        if self
            .tx
            .send(Message::Record(calls, entry, Some(reply)))
            .await
            .is_err()
        {
            tracing::error!("the model-call log has stopped; a call was not recorded");
            return;
        }
        let _ = wait.await;
    }

    pub async fn flush(&self) {
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(reply)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

pub(crate) fn spawn(store: Store) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let handle = Handle {
        tx,
        queued_bytes: queued_bytes.clone(),
    };
    (handle, tokio::spawn(run(store, rx, queued_bytes)))
}

async fn run(store: Store, mut rx: mpsc::Receiver<Message>, queued_bytes: Arc<AtomicUsize>) {
    let mut calls = Vec::new();
    let mut entries = Vec::new();
    let mut waiting = Vec::new();
    while let Some(message) = rx.recv().await {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Record(more, entry, reply) => {
                    calls.extend(more);
                    entries.extend(entry);
                    waiting.extend(reply);
                }
                Message::Flush(reply) => waiting.push(reply),
            }
            if calls.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        write(&store, &calls, &entries).await;
        let written = weight(&calls, None)
            + entries
                .iter()
                .map(|entry| weight(&[], Some(entry)))
                .sum::<usize>();
        queued_bytes.fetch_sub(written, Ordering::Relaxed);
        calls.clear();
        entries.clear();
        // A burst may have grown the batches to MAX_BATCH records: give that memory back.
        calls.shrink_to(MAX_BATCH / 8);
        entries.shrink_to(MAX_BATCH / 8);
        for reply in waiting.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Writes one batch, retrying a failed transaction a few times before giving up on it loudly.
async fn write(store: &Store, calls: &[AiCallRow], entries: &[NewEntry]) {
    if calls.is_empty() && entries.is_empty() {
        return;
    }
    let mut delay_ms = 50;
    for attempt in 1..=5 {
        match store.record_ai_calls(calls, entries).await {
            Ok(()) => return,
            Err(error) if attempt < 5 => {
                tracing::warn!(%error, attempt, "recording model calls failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                delay_ms *= 4;
            }
            Err(error) => {
                tracing::error!(%error, calls = calls.len(), "recording model calls failed five times; these calls are missing from ai_calls and the journal");
            }
        }
    }
}

/// The `ai_calls` rows of one cascade's record (`{"attempts": [...]}`): one per attempt that
/// reached a provider or the cache. Learner answers and skipped tiers cost nothing and are not
/// model calls.
pub(crate) fn rows_of_cascade(
    record: &Value,
    workflow: &str,
    step: &str,
    case_id: &str,
    now_ms: i64,
) -> Vec<AiCallRow> {
    let day = crate::rfc3339_ms(now_ms)[..10].to_string();
    let Some(attempts) = record.get("attempts").and_then(Value::as_array) else {
        return Vec::new();
    };
    attempts
        .iter()
        .filter(|attempt| {
            let provider = attempt.get("provider").and_then(Value::as_str);
            matches!(provider, Some(p) if p != "local")
                && (attempt.get("attempts").is_some()
                    || attempt.get("cache_hit") == Some(&Value::Bool(true)))
        })
        .map(|attempt| {
            let text = |key: &str| {
                attempt
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let usage = attempt.get("usage");
            let tokens = |key: &str| {
                usage
                    .and_then(|u| u.get(key))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let cache_hit = attempt.get("cache_hit") == Some(&Value::Bool(true));
            AiCallRow {
                at_ms: now_ms,
                day: day.clone(),
                source: "step".into(),
                caller: None,
                workflow: Some(workflow.to_string()),
                step: Some(step.to_string()),
                case_id: Some(case_id.to_string()),
                model: text("model"),
                provider: text("provider"),
                status: attempt
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("ok")
                    .to_string(),
                input_tokens: tokens("input_tokens"),
                output_tokens: tokens("output_tokens"),
                cached_input_tokens: tokens("cached_input_tokens"),
                cost_nano: if attempt.get("error").is_some() {
                    Some(0)
                } else {
                    attempt
                        .get("cost_usd")
                        .and_then(Value::as_f64)
                        .map(keel_ai::budget::to_nano)
                },
                latency_ms: attempt
                    .get("latency_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                cache_hit,
                attempts: attempt.get("attempts").and_then(Value::as_i64).unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    fn handle() -> (Handle, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = Handle {
            tx,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        };
        (handle, rx)
    }

    fn entry(data_bytes: usize) -> NewEntry {
        NewEntry {
            at: "2026-12-07T00:00:00.000Z".into(),
            kind: "ai.call".into(),
            actor_type: "token".into(),
            actor_id: "app".into(),
            case_id: None,
            workflow: None,
            step: None,
            data: "x".repeat(data_bytes),
            data_sha256: String::new(),
        }
    }

    /// With the writer stalled, the queue stops admitting calls while a quarter of it is still
    /// free for the calls in flight, and never holds more than its bound.
    #[tokio::test]
    async fn a_stalled_queue_refuses_new_calls_before_it_is_full() {
        let (handle, rx) = handle();
        let mut admitted = 0;
        while handle.has_room() {
            handle.record(Vec::new(), Some(entry(100))).await;
            admitted += 1;
            assert!(admitted <= QUEUE, "the queue admitted more than its bound");
        }
        assert_eq!(admitted, QUEUE - QUEUE / 4);
        assert_eq!(rx.len(), admitted);
    }

    #[tokio::test]
    async fn queued_bytes_bound_the_queue_and_writing_frees_them() {
        let (handle, mut rx) = handle();
        handle
            .record(Vec::new(), Some(entry(MAX_QUEUED_BYTES)))
            .await;
        assert!(
            !handle.has_room(),
            "one huge entry must fill the byte bound"
        );
        let Some(Message::Record(calls, entry, _)) = rx.recv().await else {
            panic!("the record must be queued");
        };
        let written = weight(&calls, entry.as_ref());
        handle.queued_bytes.fetch_sub(written, Ordering::Relaxed);
        assert!(handle.has_room());
    }
}
