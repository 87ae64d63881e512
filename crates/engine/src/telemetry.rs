//! Metrics and traces.
//!
//! **Metrics** ([`Engine::metrics`], rendered by the server at `/metrics`) come in three kinds:
//! gauges counted at scrape time by GROUP BYs that indexes bound (cases, open exceptions and
//! tasks, queue depths, trust phases); counters folded from the two append-only logs with a
//! cursor each (`journal` by `seq`, `ai_calls` by `id`), so that a scrape reads only what was
//! written since the last one and the totals survive restarts (they count the database, not
//! the process); and in-process observations that no table holds (the gateway's own overhead,
//! spans the exporter dropped). A background pass folds every [`FOLD_INTERVAL`] so that a
//! scrape after a quiet hour or a restart does not have to catch up alone; a scrape folds
//! at most [`SCRAPE_PAGES`] pages itself and leaves the rest to the next.
//!
//! **Traces** are OpenTelemetry spans sent over OTLP/HTTP with JSON encoding to
//! `{endpoint}/v1/traces`, off unless an endpoint is configured. One `CLIENT` span per model
//! call (`ai` steps through the cascade's observer, the gateway directly) with the GenAI
//! semantic conventions — cache hits and the local learner's predictions too, marked by
//! `keel.source` (`provider`, `cache`, `learner`; a learner span's operation is `predict`);
//! a case's spans share one trace. Human reviews (`outcome.reviewed` entries, read by the
//! same journal fold) become `gen_ai.evaluation.result` events on a
//! `human_review` span parented to the case's last model-call span. Recording never blocks:
//! spans go into a bounded queue ([`SPAN_QUEUE`]) and are dropped, and counted, when it is
//! full; one exporter task sends batches of at most [`MAX_BATCH`] at least every
//! [`BATCH_INTERVAL`], retrying with backoff, and drops (and counts) a batch it cannot send.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_ai::cascade::ModelCall;
use keel_store::{AiCallRow, CountedEntry};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::{Engine, Inner, Result};

/// Spans waiting for the exporter; when it is full, new spans are dropped and counted.
pub const SPAN_QUEUE: usize = 4_096;
/// Spans per OTLP request at most.
pub const MAX_BATCH: usize = 512;
/// A batch leaves at most this long after its first span arrived.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Requests per batch (the first and its retries); then the batch is dropped and counted.
const EXPORT_ATTEMPTS: u32 = 4;
/// The first retry waits up to this long (full jitter), doubling after each failure.
const EXPORT_BACKOFF: Duration = Duration::from_millis(250);
/// Timeout of one OTLP request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Cases whose trace is remembered, so that their model calls and reviews share it.
const REMEMBERED_TRACES: usize = 10_000;
/// Journal seqs, or `ai_calls` rows, read per fold page.
const FOLD_PAGE: i64 = 20_000;
/// Pages a scrape folds itself at most (per log); the background pass does the rest.
pub const SCRAPE_PAGES: usize = 5;
/// How often the background pass folds new log rows into the counters.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the model-call latency histogram buckets.
pub const AI_LATENCY_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Upper bounds (seconds) of the gateway overhead histogram buckets.
pub const GATEWAY_OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Label value of exceptions the desk has not routed to a queue yet.
pub const UNROUTED: &str = "(unrouted)";

/// Where traces go; `Options::default()` sends none.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// OTLP/HTTP base URL such as `http://collector:4318`; spans are POSTed to
    /// `{endpoint}/v1/traces`. `None`: no traces.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute; empty means `keel`.
    pub service_name: String,
}

/// A histogram with fixed buckets: per-bucket counts (the last is `+Inf`), sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// `bounds.len() + 1` counts, not cumulative.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }
}

/// Everything `/metrics` shows, at one moment. Label tuples are in the order of the metric's
/// labels; rows are sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// (workflow, status, cases).
    pub cases: Vec<(String, String, i64)>,
    /// (workflow, step kind, completed steps).
    pub steps: Vec<(String, String, u64)>,
    /// (queue, kind, open exceptions).
    pub exceptions_open: Vec<(String, String, i64)>,
    /// (workflow, kind, exceptions raised).
    pub exceptions_raised: Vec<(String, String, u64)>,
    /// (workflow, kind, open tasks).
    pub tasks_open: Vec<(String, String, i64)>,
    /// (queue, open exceptions).
    pub queue_depth: Vec<(String, i64)>,
    /// (workflow, SLA breaches).
    pub sla_breaches: Vec<(String, u64)>,
    /// (model, provider, outcome, calls).
    pub ai_calls: Vec<(String, String, String, u64)>,
    /// (model, direction, tokens).
    pub ai_tokens: Vec<(String, &'static str, u64)>,
    /// (model, known cost in USD).
    pub ai_cost_usd: Vec<(String, f64)>,
    /// (model, latency of calls that reached the provider).
    pub ai_latency: Vec<(String, Histogram)>,
    /// Time the gateway spends on a request outside the upstream calls (this process only).
    pub gateway_overhead: Histogram,
    /// (operation, phase); empty before the trust tables exist.
    pub trust_phases: Vec<(String, i64)>,
    /// Spans dropped because the queue was full or the collector refused them (this process).
    pub otlp_dropped_spans: u64,
}

/// A human review of an AI-proposed action, as a trace event.
#[derive(Debug, Clone)]
pub struct Review<'a> {
    pub case_id: &'a str,
    pub workflow: &'a str,
    pub step: &'a str,
    /// `agree`, `corrected` or `rejected`.
    pub verdict: &'a str,
    pub at: SystemTime,
}

/// Counters folded from the journal and `ai_calls`, with the cursors they reached.
#[derive(Debug)]
struct Folded {
    journal_after: i64,
    ai_calls_after: i64,
    /// Reviews at or below this seq happened before this process started: no spans for them.
    reviews_after: Option<i64>,
    steps: BTreeMap<(String, String), u64>,
    exceptions_raised: BTreeMap<(String, String), u64>,
    sla_breaches: BTreeMap<String, u64>,
    ai_calls: BTreeMap<(String, String, String), u64>,
    ai_tokens: BTreeMap<(String, &'static str), u64>,
    ai_cost_nano: BTreeMap<String, i64>,
    ai_latency: BTreeMap<String, Histogram>,
}

/// A case's trace: its id and the last model-call span (reviews are parented to it).
#[derive(Debug, Clone, Copy)]
struct CaseTrace {
    trace_id: u128,
    last_span_id: Option<u64>,
}

/// Remembered traces by case id, oldest forgotten first.
#[derive(Debug, Default)]
struct Traces {
    by_case: HashMap<String, CaseTrace>,
    order: VecDeque<String>,
}

struct Shared {
    /// `None` when traces are off.
    spans: Option<mpsc::Sender<Message>>,
    dropped: AtomicU64,
    gateway_overhead: Mutex<Histogram>,
    folded: tokio::sync::Mutex<Folded>,
    traces: Mutex<Traces>,
}

/// The engine's metrics and trace exporter; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.shared.spans.is_some())
            .finish()
    }
}

enum Message {
    Span(Box<Span>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, PartialEq)]
enum Attribute {
    Text(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// A span event: something that happened at one moment of the span.
#[derive(Debug, Clone)]
struct Event {
    name: &'static str,
    at: SystemTime,
    attributes: Vec<(&'static str, Attribute)>,
}

#[derive(Debug, Clone)]
struct Span {
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    name: String,
    /// OTLP `SpanKind`: 1 internal, 3 client.
    kind: i64,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(&'static str, Attribute)>,
    events: Vec<Event>,
    /// The error type, which makes the span's status ERROR.
    error: Option<String>,
}

impl Telemetry {
    /// Builds the telemetry of one engine and, when an OTLP endpoint is configured, the
    /// exporter task (to be spawned by the caller).
    pub fn new(options: &Options) -> (Telemetry, Option<impl std::future::Future<Output = ()>>) {
        let exporter = options.otlp_endpoint.as_deref().and_then(|endpoint| {
            let http = reqwest::Client::builder()
                .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
                .timeout(EXPORT_TIMEOUT)
                .build();
            match http {
                Ok(http) => Some((endpoint, http)),
                Err(error) => {
                    tracing::error!(%error, "cannot build the OTLP client; traces are off");
                    None
                }
            }
        });
        let (spans, receiver) = match exporter {
            Some(_) => {
                let (tx, rx) = mpsc::channel(SPAN_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let telemetry = Telemetry {
            shared: Arc::new(Shared {
                spans,
                dropped: AtomicU64::new(0),
                gateway_overhead: Mutex::new(Histogram::new(GATEWAY_OVERHEAD_BUCKETS)),
                folded: tokio::sync::Mutex::new(Folded::new()),
                traces: Mutex::new(Traces::default()),
            }),
        };
        let service_name = match options.service_name.as_str() {
            "" => "keel".to_string(),
            name => name.to_string(),
        };
        let task = exporter.zip(receiver).map(|((endpoint, http), receiver)| {
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            tracing::info!(%url, "sending OpenTelemetry traces");
            export(receiver, url, http, service_name, telemetry.shared.clone())
        });
        (telemetry, task)
    }

    /// Whether spans are exported.
    pub fn traces_enabled(&self) -> bool {
        self.shared.spans.is_some()
    }

    /// The observer the AI runtime tells of every model call.
    pub fn observer(&self) -> keel_ai::cascade::CallObserver {
        let telemetry = self.clone();
        Arc::new(move |call| telemetry.model_call(call))
    }

    /// Records one model call as a span (when traces are on). Never blocks.
    pub fn model_call(&self, call: &ModelCall<'_>) {
        if !self.traces_enabled() {
            return;
        }
        let (trace_id, parent) = match call.step {
            Some((case_id, _, _)) => self.trace_of(case_id),
            None => (random_trace_id(), None),
        };
        let span = model_call_span(call, trace_id, parent);
        if let Some((case_id, _, _)) = call.step {
            self.remember(case_id, trace_id, Some(span.span_id));
        }
        self.queue(span);
    }

    /// Records a human review of a case's AI-proposed action as a `gen_ai.evaluation.result`
    /// event (when traces are on), parented to the case's last model-call span if this
    /// process remembers it. Never blocks. The engine calls it for every `outcome.reviewed`
    /// journal entry written while it runs, so callers that journal reviews need not.
    pub fn record_review(&self, review: &Review<'_>) {
        if !self.traces_enabled() {
            return;
        }
        let (trace_id, parent) = self.trace_of(review.case_id);
        let score = if review.verdict == "agree" { 1.0 } else { 0.0 };
        let span = Span {
            trace_id,
            span_id: random_span_id(),
            parent_span_id: parent,
            name: "human_review".into(),
            kind: 1,
            start: review.at,
            end: review.at,
            attributes: vec![
                ("keel.case_id", text(review.case_id)),
                ("keel.workflow", text(review.workflow)),
                ("keel.step", text(review.step)),
            ],
            events: vec![Event {
                name: "gen_ai.evaluation.result",
                at: review.at,
                attributes: vec![
                    ("gen_ai.evaluation.name", text("human_review")),
                    ("gen_ai.evaluation.score.label", text(review.verdict)),
                    ("gen_ai.evaluation.score.value", Attribute::Double(score)),
                ],
            }],
            error: None,
        };
        self.remember(review.case_id, trace_id, parent);
        self.queue(span);
    }

    /// Records the time the gateway spent on one request outside its upstream calls.
    pub fn observe_gateway_overhead(&self, overhead: Duration) {
        if let Ok(mut histogram) = self.shared.gateway_overhead.lock() {
            histogram.observe(overhead.as_secs_f64());
        }
    }

    /// Spans dropped so far (queue full, or a batch the collector never took).
    pub fn dropped_spans(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `within`) until the spans queued so far were sent or given up.
    pub async fn flush(&self, within: Duration) {
        let Some(spans) = &self.shared.spans else {
            return;
        };
        let (reply, done) = oneshot::channel();
        let _ = tokio::time::timeout(within, async {
            if spans.send(Message::Flush(reply)).await.is_ok() {
                let _ = done.await;
            }
        })
        .await;
    }

    fn queue(&self, span: Span) {
        let Some(spans) = &self.shared.spans else {
            return;
        };
        if spans.try_send(Message::Span(Box::new(span))).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The trace of `case_id` (a new one if not remembered) and its last model-call span.
    fn trace_of(&self, case_id: &str) -> (u128, Option<u64>) {
        let known = self
            .shared
            .traces
            .lock()
            .ok()
            .and_then(|traces| traces.by_case.get(case_id).copied());
        match known {
            Some(trace) => (trace.trace_id, trace.last_span_id),
            None => (random_trace_id(), None),
        }
    }

    fn remember(&self, case_id: &str, trace_id: u128, last_span_id: Option<u64>) {
        let Ok(mut traces) = self.shared.traces.lock() else {
            return;
        };
        let trace = CaseTrace {
            trace_id,
            last_span_id,
        };
        if traces.by_case.insert(case_id.to_string(), trace).is_none() {
            traces.order.push_back(case_id.to_string());
            while traces.order.len() > REMEMBERED_TRACES {
                if let Some(oldest) = traces.order.pop_front() {
                    traces.by_case.remove(&oldest);
                }
            }
        }
    }
}

impl Engine {
    /// The engine's metrics and trace exporter.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// Every metric, for `/metrics`: folds what the logs gained since the last call (at most
    /// [`SCRAPE_PAGES`] pages of each), then counts the gauges.
    pub async fn metrics(&self) -> Result<Metrics> {
        let inner = &self.inner;
        let (counters, _) = fold(inner, SCRAPE_PAGES).await?;
        let store = &inner.store;
        let cases = store.cases_per_workflow_and_status().await?;
        let exceptions_open = store
            .open_exceptions_per_queue_and_kind()
            .await?
            .into_iter()
            .map(|(queue, kind, n)| (queue.unwrap_or_else(|| UNROUTED.into()), kind, n))
            .collect();
        let tasks_open = store.open_tasks_per_workflow_and_kind().await?;
        let queue_depth = self
            .queue_depths()
            .await?
            .into_iter()
            .map(|(queue, n)| (queue.unwrap_or_else(|| UNROUTED.into()), n))
            .collect();
        let trust_phases = store.trust_phases().await?;
        let gateway_overhead = self
            .inner
            .telemetry
            .shared
            .gateway_overhead
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| Histogram::new(GATEWAY_OVERHEAD_BUCKETS));
        Ok(Metrics {
            cases,
            exceptions_open,
            tasks_open,
            queue_depth,
            trust_phases,
            gateway_overhead,
            otlp_dropped_spans: inner.telemetry.dropped_spans(),
            ..counters
        })
    }
}

/// Folds new log rows into the counters every [`FOLD_INTERVAL`] (the engine spawns it), one
/// page at a time so that a scrape never waits behind a long catch-up after a restart.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        loop {
            match fold(&inner, 1).await {
                Ok((_, true)) => break,
                Ok((_, false)) => tokio::task::yield_now().await,
                Err(error) => {
                    tracing::warn!(%error, "folding new log rows into metrics failed; retrying");
                    break;
                }
            }
        }
        tokio::time::sleep(FOLD_INTERVAL).await;
    }
}

/// Folds at most `max_pages` pages of each log; returns the counters (gauges empty) and
/// whether both logs were read to their end.
async fn fold(inner: &Inner, max_pages: usize) -> Result<(Metrics, bool)> {
    let store = &inner.store;
    let mut folded = inner.telemetry.shared.folded.lock().await;
    let newest = store.max_journal_seq().await?;
    let reviews_after = *folded.reviews_after.get_or_insert(newest);
    let mut pages = 0;
    while folded.journal_after < newest && pages < max_pages {
        pages += 1;
        let up_to = newest.min(folded.journal_after.saturating_add(FOLD_PAGE));
        for entry in store.counted_entries(folded.journal_after, up_to).await? {
            folded.count_entry(inner, &entry);
            if entry.kind == "outcome.reviewed" && entry.seq > reviews_after {
                inner.telemetry.record_review(&Review {
                    case_id: entry.case_id.as_deref().unwrap_or_default(),
                    workflow: entry.workflow.as_deref().unwrap_or_default(),
                    step: entry.step.as_deref().unwrap_or_default(),
                    verdict: entry.detail.as_deref().unwrap_or_default(),
                    at: SystemTime::now(),
                });
            }
        }
        folded.journal_after = up_to;
    }
    let mut calls_read = false;
    for _ in 0..max_pages {
        let calls = store
            .ai_calls_after(folded.ai_calls_after, FOLD_PAGE)
            .await?;
        for (id, call) in &calls {
            folded.count_call(call);
            folded.ai_calls_after = *id;
        }
        if (calls.len() as i64) < FOLD_PAGE {
            calls_read = true;
            break;
        }
    }
    let caught_up = calls_read && folded.journal_after >= newest;
    Ok((folded.snapshot(), caught_up))
}

impl Folded {
    fn new() -> Folded {
        Folded {
            journal_after: 0,
            ai_calls_after: 0,
            reviews_after: None,
            steps: BTreeMap::new(),
            exceptions_raised: BTreeMap::new(),
            sla_breaches: BTreeMap::new(),
            ai_calls: BTreeMap::new(),
            ai_tokens: BTreeMap::new(),
            ai_cost_nano: BTreeMap::new(),
            ai_latency: BTreeMap::new(),
        }
    }

    /// Counts one journal entry. A step completes with `step.completed` (pure steps; the data
    /// names the kind), `action.completed`, `ai.proposed`, or `task.completed` when the step is
    /// an `approval` (a task on an action only gates it: the action's completion counts).
    fn count_entry(&mut self, inner: &Inner, entry: &CountedEntry) {
        let workflow = entry.workflow.clone().unwrap_or_default();
        let step_kind = match entry.kind.as_str() {
            "step.completed" => entry.detail.clone(),
            "action.completed" => Some("action".to_string()),
            "ai.proposed" => Some("ai".to_string()),
            "task.completed" => approval_step(inner, &workflow, entry.step.as_deref()),
            _ => None,
        };
        if let Some(kind) = step_kind {
            *self.steps.entry((workflow.clone(), kind)).or_default() += 1;
        }
        let exception_kind = match entry.kind.as_str() {
            "exception.raised" => Some(entry.detail.clone().unwrap_or_else(|| "exception".into())),
            "sla.breached" => Some("sla_breach".to_string()),
            _ => None,
        };
        if let Some(kind) = exception_kind {
            *self
                .exceptions_raised
                .entry((workflow.clone(), kind))
                .or_default() += 1;
        }
        if entry.kind == "sla.breached" {
            *self.sla_breaches.entry(workflow).or_default() += 1;
        }
    }

    fn count_call(&mut self, call: &AiCallRow) {
        let outcome = if call.cache_hit {
            "cache_hit".to_string()
        } else {
            call.status.clone()
        };
        *self
            .ai_calls
            .entry((call.model.clone(), call.provider.clone(), outcome))
            .or_default() += 1;
        for (direction, tokens) in [
            ("input", call.input_tokens),
            ("output", call.output_tokens),
            ("cached", call.cached_input_tokens),
        ] {
            *self
                .ai_tokens
                .entry((call.model.clone(), direction))
                .or_default() += tokens.max(0) as u64;
        }
        if let Some(cost) = call.cost_nano {
            *self.ai_cost_nano.entry(call.model.clone()).or_default() += cost;
        }
        // A cache hit never reached the provider; its zero latency would only blur the rest.
        if !call.cache_hit {
            self.ai_latency
                .entry(call.model.clone())
                .or_insert_with(|| Histogram::new(AI_LATENCY_BUCKETS))
                .observe(call.latency_ms.max(0) as f64 / 1e3);
        }
    }

    fn snapshot(&self) -> Metrics {
        let pairs = |map: &BTreeMap<(String, String), u64>| {
            map.iter()
                .map(|((a, b), n)| (a.clone(), b.clone(), *n))
                .collect()
        };
        Metrics {
            cases: Vec::new(),
            steps: pairs(&self.steps),
            exceptions_open: Vec::new(),
            exceptions_raised: pairs(&self.exceptions_raised),
            tasks_open: Vec::new(),
            queue_depth: Vec::new(),
            sla_breaches: self
                .sla_breaches
                .iter()
                .map(|(w, n)| (w.clone(), *n))
                .collect(),
            ai_calls: self
                .ai_calls
                .iter()
                .map(|((m, p, o), n)| (m.clone(), p.clone(), o.clone(), *n))
                .collect(),
            ai_tokens: self
                .ai_tokens
                .iter()
                .map(|((m, d), n)| (m.clone(), *d, *n))
                .collect(),
            ai_cost_usd: self
                .ai_cost_nano
                .iter()
                .map(|(m, nano)| (m.clone(), *nano as f64 / 1e9))
                .collect(),
            ai_latency: self
                .ai_latency
                .iter()
                .map(|(m, h)| (m.clone(), h.clone()))
                .collect(),
            gateway_overhead: Histogram::new(GATEWAY_OVERHEAD_BUCKETS),
            trust_phases: Vec::new(),
            otlp_dropped_spans: 0,
        }
    }
}

/// `Some("approval")` when `step` of the workflow's latest version is an approval step.
fn approval_step(inner: &Inner, workflow: &str, step: Option<&str>) -> Option<String> {
    let (_, definition) = inner.registry.latest(workflow)?;
    let step = keel_core::case::find_step(&definition, step?)?;
    matches!(step.kind, keel_core::workflow::StepKind::Approval(_)).then(|| "approval".into())
}

fn text(value: &str) -> Attribute {
    Attribute::Text(value.to_string())
}

fn random_trace_id() -> u128 {
    fastrand::u128(1..)
}

fn random_span_id() -> u64 {
    fastrand::u64(1..)
}

/// The span of one model call, with the GenAI semantic conventions' attributes.
fn model_call_span(call: &ModelCall<'_>, trace_id: u128, parent: Option<u64>) -> Span {
    use keel_ai::cascade::CallSource;
    // The learner classifies in process; it is not a chat.
    let operation = match call.source {
        CallSource::Learner => "predict",
        CallSource::Provider | CallSource::Cache => "chat",
    };
    let mut attributes = vec![
        ("gen_ai.operation.name", text(operation)),
        ("gen_ai.provider.name", text(call.model.provider.as_str())),
        ("gen_ai.request.model", text(&call.model.model)),
        ("keel.model", text(&call.model.name)),
        ("keel.source", text(call.source.as_str())),
    ];
    if call.source == CallSource::Cache {
        attributes.push(("keel.cache_hit", Attribute::Bool(true)));
    }
    if let Some(temperature) = call.request.and_then(|r| r.temperature) {
        attributes.push(("gen_ai.request.temperature", Attribute::Double(temperature)));
    }
    if let Some(max_tokens) = call.request.and_then(|r| r.max_tokens) {
        attributes.push((
            "gen_ai.request.max_tokens",
            Attribute::Int(i64::from(max_tokens)),
        ));
    }
    let mut error = None;
    match call.outcome {
        Ok((usage, response_model)) => {
            if let Some(model) = response_model {
                attributes.push(("gen_ai.response.model", text(model)));
            }
            if let Some(usage) = usage {
                attributes.push((
                    "gen_ai.usage.input_tokens",
                    Attribute::Int(usage.input_tokens as i64),
                ));
                attributes.push((
                    "gen_ai.usage.output_tokens",
                    Attribute::Int(usage.output_tokens as i64),
                ));
            }
        }
        Err(code) => {
            attributes.push(("error.type", text(code)));
            error = Some(code.to_string());
        }
    }
    if let Some(cost) = call.cost_usd {
        attributes.push(("keel.cost_usd", Attribute::Double(cost)));
    }
    if let Some((case_id, workflow, step)) = call.step {
        attributes.push(("keel.case_id", text(case_id)));
        attributes.push(("keel.workflow", text(workflow)));
        attributes.push(("keel.step", text(step)));
    }
    if let Some(caller) = call.caller {
        attributes.push(("keel.caller", text(caller)));
    }
    Span {
        trace_id,
        span_id: random_span_id(),
        parent_span_id: parent,
        name: format!("{operation} {}", call.model.model),
        kind: 3,
        start: call.started,
        end: call.started + call.latency,
        attributes,
        events: Vec::new(),
        error,
    }
}

fn unix_nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// OTLP/JSON `KeyValue`s: 64-bit integers as decimal strings, as the protobuf JSON mapping says.
fn attributes_json(attributes: &[(&'static str, Attribute)]) -> Vec<Value> {
    attributes
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Attribute::Text(text) => json!({ "stringValue": text }),
                Attribute::Int(int) => json!({ "intValue": int.to_string() }),
                Attribute::Double(double) => json!({ "doubleValue": double }),
                Attribute::Bool(flag) => json!({ "boolValue": flag }),
            };
            json!({ "key": key, "value": value })
        })
        .collect()
}

/// One `ExportTraceServiceRequest` in OTLP/JSON (ids in lowercase hex, times in Unix nanos).
fn request_json(service_name: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut value = json!({
                "traceId": format!("{:032x}", span.trace_id),
                "spanId": format!("{:016x}", span.span_id),
                "name": span.name,
                "kind": span.kind,
                "startTimeUnixNano": unix_nanos(span.start),
                "endTimeUnixNano": unix_nanos(span.end),
                "attributes": attributes_json(&span.attributes),
                "events": span.events.iter().map(|event| json!({
                    "timeUnixNano": unix_nanos(event.at),
                    "name": event.name,
                    "attributes": attributes_json(&event.attributes),
                })).collect::<Vec<_>>(),
                "status": match &span.error {
                    Some(error) => json!({ "code": 2, "message": error }),
                    None => json!({}),
                },
            });
            if let Some(parent) = span.parent_span_id {
                value["parentSpanId"] = json!(format!("{parent:016x}"));
            }
            value
        })
        .collect();
    json!({ "resourceSpans": [{
        "resource": { "attributes": attributes_json(&[("service.name", text(service_name))]) },
        "scopeSpans": [{
            "scope": { "name": "keel", "version": env!("CARGO_PKG_VERSION") },
            "spans": spans,
        }],
    }]})
}

/// The exporter: gathers spans into batches (at most [`MAX_BATCH`], sent at most
/// [`BATCH_INTERVAL`] after the first arrived) and sends each in turn.
async fn export(
    mut receiver: mpsc::Receiver<Message>,
    url: String,
    http: reqwest::Client,
    service_name: String,
    shared: Arc<Shared>,
) {
    let failing = AtomicBool::new(false);
    let mut batch: Vec<Span> = Vec::with_capacity(MAX_BATCH);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let take = |message: Message, batch: &mut Vec<Span>, flushes: &mut Vec<_>| match message {
        Message::Span(span) => batch.push(*span),
        Message::Flush(reply) => flushes.push(reply),
    };
    while let Some(message) = receiver.recv().await {
        take(message, &mut batch, &mut flushes);
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while batch.len() < MAX_BATCH && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(message)) => take(message, &mut batch, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let body = request_json(&service_name, &batch);
            if !send(&http, &url, &body, &failing).await {
                shared
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
        for reply in flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Sends one batch, retrying connection errors, timeouts, 429 and 5xx with full-jitter
/// backoff; returns whether the collector took it. Logs when sending starts and stops failing.
async fn send(http: &reqwest::Client, url: &str, body: &Value, failing: &AtomicBool) -> bool {
    let mut backoff = EXPORT_BACKOFF;
    let mut last_error = String::new();
    for attempt in 1..=EXPORT_ATTEMPTS {
        match http.post(url).json(body).send().await {
            Ok(response) if response.status().is_success() => {
                if failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(%url, "the OTLP collector takes spans again");
                }
                return true;
            }
            Ok(response) => {
                let status = response.status();
                last_error = format!("HTTP {status}");
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                if !retryable {
                    break;
                }
            }
            Err(error) => last_error = error.to_string(),
        }
        if attempt < EXPORT_ATTEMPTS {
            let wait = backoff.mul_f64(fastrand::f64());
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    if !failing.swap(true, Ordering::Relaxed) {
        tracing::warn!(%url, error = %last_error, "the OTLP collector does not take spans; they are dropped (keel_otlp_dropped_spans_total) until it does");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.1, 0.5, 2.0, 3.0] {
            histogram.observe(value);
        }
        assert_eq!(
            histogram.cumulative(),
            vec![(0.1, 2), (1.0, 3), (f64::INFINITY, 5)]
        );
        assert_eq!(histogram.count, 5);
        assert!((histogram.sum - 5.65).abs() < 1e-9);
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let at = UNIX_EPOCH + Duration::from_millis(1_500);
        let span = Span {
            trace_id: 0xabc,
            span_id: 0x12,
            parent_span_id: Some(0x34),
            name: "chat gpt".into(),
            kind: 3,
            start: at,
            end: at + Duration::from_millis(250),
            attributes: vec![
                ("gen_ai.usage.input_tokens", Attribute::Int(10)),
                ("keel.cost_usd", Attribute::Double(0.5)),
            ],
            events: Vec::new(),
            error: Some("timeout".into()),
        };
        let body = request_json("keel", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "00000000000000000000000000000abc");
        assert_eq!(span["spanId"], "0000000000000012");
        assert_eq!(span["parentSpanId"], "0000000000000034");
        assert_eq!(span["startTimeUnixNano"], "1500000000");
        assert_eq!(span["endTimeUnixNano"], "1750000000");
        assert_eq!(
            span["attributes"][0],
            json!({"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}})
        );
        assert_eq!(span["status"], json!({"code": 2, "message": "timeout"}));
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "keel"
        );
    }
}
