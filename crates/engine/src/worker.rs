//! Running cases: the dispatcher (one task per case, bounded), the case loop (advance the
//! state machine, persist, perform the effect, repeat), the poller that claims runnable cases
//! with leases, the SLA ticker, and HTTP actions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keel_core::case::{self, ActionOutcome, ActionRequest, CaseState, Command, Input};
use keel_store::{CaseRow, CaseWrite, WriteMode, WriteOutcome};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{make_entry, workflow_of, Error, Inner, Result};

/// Sleeps shorter than this stay in the worker with the lease held; longer ones park the
/// case in the database for the poller.
const IN_MEMORY_SLEEP_MS: i64 = 2_000;
/// Extra lease time for an `ai` step's cascade (several models, retries and re-asks).
const AI_LEASE_MS: i64 = 10 * 60_000;
/// Cases claimed per poll.
const CLAIM_BATCH: i64 = 256;
/// SLA breaches handled per tick.
const SLA_BATCH: i64 = 256;
/// Write conflicts one case loop tolerates before leaving the case to the poller.
const MAX_CONFLICTS: u32 = 10;

/// A case to run: its state as of `version`, and what just happened to it.
pub(crate) struct Item {
    pub state: CaseState,
    pub version: i64,
    pub input: Input,
}

/// Runs every item as its own task, at most `max_in_flight` at once.
pub(crate) async fn dispatch(inner: Arc<Inner>, mut rx: mpsc::Receiver<Item>) {
    while let Some(item) = rx.recv().await {
        let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
            return;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let id = item.state.id.clone();
            if let Err(error) = run_case(&inner, item).await {
                tracing::warn!(case = %id, %error, "case loop stopped; the case resumes when its lease expires");
            }
            drop(permit);
        });
    }
}

/// Drives one case until it finishes, parks, or is lost to another writer.
async fn run_case(inner: &Inner, item: Item) -> Result<()> {
    let Item {
        mut state,
        mut version,
        mut input,
    } = item;
    let mut conflicts = 0;
    loop {
        if inner.shutting_down.load(Ordering::Relaxed) && matches!(input, Input::Wake) {
            // Leave it resumable: the lease is released at shutdown.
            return Ok(());
        }
        let definition = workflow_of(inner, &state)?;
        let now = inner.clock.now_ms();
        let phases = inner.trust.phases(&state.workflow);
        let transition = case::advance_with(
            &definition,
            &mut state,
            input.clone(),
            now,
            fastrand::f64(),
            &phases,
        );
        let lease_ms = inner.options.lease.as_millis() as i64;
        let (runnable_at, lease_until) = match &transition.command {
            Command::Execute(request) => {
                (Some(now), Some(now + lease_ms + request.timeout_ms as i64))
            }
            Command::Ai(_) => (Some(now), Some(now + lease_ms + AI_LEASE_MS)),
            Command::Sleep { until_ms } if *until_ms - now < IN_MEMORY_SLEEP_MS => {
                (Some(*until_ms), Some(*until_ms + lease_ms))
            }
            Command::Sleep { until_ms } => (Some(*until_ms), None),
            Command::Stop => (None, None),
        };
        let lease = Lease {
            runnable_at_ms: runnable_at,
            owner: lease_until.map(|_| inner.options.node_id.clone()),
            until_ms: lease_until,
        };
        let write = case_write(&state, &definition, version, lease, &transition.events, now)?;
        match inner.committer.commit(write).await? {
            WriteOutcome::Written { version: written } => {
                version = written;
                inner.journal_written.notify_one();
            }
            WriteOutcome::Conflict => {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    return Err(Error::Contended);
                }
                // Someone else changed the case (a signal, the SLA ticker). Start again from the
                // stored state with the same input, if the case is still ours to run.
                let Some(row) = inner.store.case(&state.id).await? else {
                    return Ok(());
                };
                if !holds_lease(inner, &row, now) {
                    return Ok(());
                }
                state = parse_state(&row)?;
                version = row.version;
                continue;
            }
        }
        input = match transition.command {
            Command::Stop => {
                let _ = inner.finished.send(state.id.clone());
                return Ok(());
            }
            Command::Sleep { until_ms } => {
                if lease_until.is_none() {
                    return Ok(());
                }
                let wait = (until_ms - inner.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Input::Wake
            }
            Command::Execute(request) => {
                let attempt = request.attempt;
                let outcome = execute(&inner.http, &request).await;
                Input::ActionResult { attempt, outcome }
            }
            Command::Ai(request) => {
                let attempt = request.attempt;
                let outcome = run_ai(inner, &definition, &state, request).await;
                Input::AiResult { attempt, outcome }
            }
        };
    }
}

/// Runs an `ai` step's cascade through the configured models.
async fn run_ai(
    inner: &Inner,
    definition: &keel_core::workflow::Workflow,
    state: &CaseState,
    request: case::AiRequest,
) -> case::AiOutcome {
    let spec = case::find_step(definition, &request.step).and_then(|step| match &step.kind {
        keel_core::workflow::StepKind::Ai(ai) => Some(ai),
        _ => None,
    });
    let (Some(spec), Some(runtime)) = (spec, inner.options.ai.as_ref()) else {
        return case::AiOutcome::Failed {
            kind: "ai_failed".to_string(),
            message: "no models are configured: start `keel serve --config keel.toml` with the models this step's route names".to_string(),
            record: serde_json::json!({ "attempts": [] }),
        };
    };
    let context = keel_ai::cascade::StepContext {
        workflow: state.workflow.clone(),
        step: request.step.clone(),
        input: state.input.clone(),
        data: state.data.clone(),
        case: serde_json::json!({"id": state.id, "workflow": state.workflow, "version": state.workflow_version}),
        now: case::millis_to_datetime(inner.clock.now_ms()),
        system: request.system,
        prompt: request.prompt,
    };
    let outcome = runtime.run(spec, &context).await;
    let record = match &outcome {
        case::AiOutcome::Proposed { record, .. } | case::AiOutcome::Failed { record, .. } => record,
    };
    let now_ms = inner.clock.now_ms();
    let calls =
        crate::ailog::rows_of_cascade(record, &state.workflow, &request.step, &state.id, now_ms);
    if !calls.is_empty() {
        inner.ai_log.record(calls, None).await;
    }
    outcome
}

fn holds_lease(inner: &Inner, row: &CaseRow, now: i64) -> bool {
    match (&row.lease_owner, row.lease_until_ms) {
        (Some(owner), Some(until)) => owner == &inner.options.node_id || until < now,
        _ => true,
    }
}

fn row_was_final(row: &CaseRow) -> bool {
    row.status == case::Status::Completed.as_str() || row.status == case::Status::Failed.as_str()
}

/// Where a case row's scheduling columns go with a write.
struct Lease {
    runnable_at_ms: Option<i64>,
    owner: Option<String>,
    until_ms: Option<i64>,
}

/// The write of `state` (read at `expected_version`) with its journal events.
fn case_write(
    state: &CaseState,
    definition: &keel_core::workflow::Workflow,
    expected_version: i64,
    lease: Lease,
    events: &[case::Event],
    now: i64,
) -> Result<CaseWrite> {
    Ok(CaseWrite {
        case_id: state.id.clone(),
        workflow: state.workflow.clone(),
        workflow_version: state.workflow_version,
        mode: WriteMode::Update { expected_version },
        status: state.status.as_str().to_string(),
        current_step: state.step.clone(),
        state: serde_json::to_string(state)
            .map_err(|error| Error::CorruptState(error.to_string()))?,
        runnable_at_ms: lease.runnable_at_ms,
        lease_owner: lease.owner,
        lease_until_ms: lease.until_ms,
        sla_due_ms: state.next_sla_due(definition),
        sla_breached: state.sla_breached,
        now_ms: now,
        entries: events
            .iter()
            .map(|event| make_entry(state, event.kind, event.step.clone(), &event.data, now))
            .collect(),
    })
}

pub(crate) fn parse_state(row: &CaseRow) -> Result<CaseState> {
    serde_json::from_str(&row.state)
        .map_err(|error| Error::CorruptState(format!("case {}: {error}", row.id)))
}

/// Applies an input that arrives from outside a worker (a signal) to a stored case, keeping
/// its lease as it is; a case that becomes runnable is left for the poller (poked by the caller).
pub(crate) async fn apply_external(
    inner: &Inner,
    row: CaseRow,
    input: Input,
) -> Result<WriteOutcome> {
    Ok(apply_external_events(inner, row, input).await?.0)
}

/// Like `apply_external`, also returning the events the input produced.
pub(crate) async fn apply_external_events(
    inner: &Inner,
    row: CaseRow,
    input: Input,
) -> Result<(WriteOutcome, Vec<case::Event>)> {
    let mut state = parse_state(&row)?;
    let definition = workflow_of(inner, &state)?;
    let now = inner.clock.now_ms();
    let phases = inner.trust.phases(&state.workflow);
    let transition = case::advance_with(
        &definition,
        &mut state,
        input,
        now,
        fastrand::f64(),
        &phases,
    );
    let leased_elsewhere =
        matches!((&row.lease_owner, row.lease_until_ms), (Some(_), Some(until)) if until >= now);
    let runnable_at_ms = if leased_elsewhere {
        row.runnable_at_ms
    } else {
        match &transition.command {
            Command::Execute(_) | Command::Ai(_) => Some(now),
            Command::Sleep { until_ms } => Some(*until_ms),
            Command::Stop => None,
        }
    };
    let lease = if leased_elsewhere {
        Lease {
            runnable_at_ms,
            owner: row.lease_owner.clone(),
            until_ms: row.lease_until_ms,
        }
    } else {
        Lease {
            runnable_at_ms,
            owner: None,
            until_ms: None,
        }
    };
    let write = case_write(
        &state,
        &definition,
        row.version,
        lease,
        &transition.events,
        now,
    )?;
    let outcome = inner.committer.commit(write).await?;
    inner.journal_written.notify_one();
    if matches!(outcome, WriteOutcome::Written { .. })
        && transition.command == Command::Stop
        && !row_was_final(&row)
    {
        let _ = inner.finished.send(state.id.clone());
    }
    Ok((outcome, transition.events))
}

/// Claims runnable cases (due timers and retries, expired leases) and hands them to workers.
pub(crate) async fn poll(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.options.poll_interval) => {}
            _ = inner.poke.notified() => {}
        }
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = claim_once(&inner).await {
            tracing::warn!(%error, "claiming runnable cases failed; retrying");
        }
    }
}

async fn claim_once(inner: &Inner) -> Result<usize> {
    let free = inner.work.capacity() as i64;
    if free == 0 {
        return Ok(0);
    }
    let now = inner.clock.now_ms();
    let until = now + inner.options.lease.as_millis() as i64;
    let rows = inner
        .store
        .claim(&inner.options.node_id, now, until, free.min(CLAIM_BATCH))
        .await?;
    let claimed = rows.len();
    for row in rows {
        match parse_state(&row) {
            Ok(state) => {
                let item = Item {
                    state,
                    version: row.version,
                    input: Input::Wake,
                };
                if inner.work.send(item).await.is_err() {
                    return Ok(claimed);
                }
            }
            Err(error) => {
                tracing::error!(case = %row.id, %error, "cannot resume a case with unreadable state")
            }
        }
    }
    Ok(claimed)
}

/// Records SLA breaches as they come due. A breach is journaled and leaves the case flagged
/// `sla_breached`; the case itself goes on.
pub(crate) async fn sla_ticker(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.options.poll_interval.max(Duration::from_millis(250))).await;
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = sla_once(&inner).await {
            tracing::warn!(%error, "SLA check failed; retrying");
        }
    }
}

pub(crate) async fn sla_once(inner: &Inner) -> Result<usize> {
    let now = inner.clock.now_ms();
    let rows = inner.store.sla_due(now, SLA_BATCH).await?;
    let mut recorded = 0;
    for row in rows {
        let mut state = parse_state(&row)?;
        let definition = workflow_of(inner, &state)?;
        let events = state.record_sla_breaches(&definition, now);
        let lease = Lease {
            runnable_at_ms: row.runnable_at_ms,
            owner: row.lease_owner.clone(),
            until_ms: row.lease_until_ms,
        };
        let write = case_write(&state, &definition, row.version, lease, &events, now)?;
        if let WriteOutcome::Written { .. } = inner.committer.commit(write).await? {
            recorded += events.len();
            inner.journal_written.notify_one();
        }
    }
    Ok(recorded)
}

/// Headers that belong to the engine: a workflow header of the same name is dropped.
const ENGINE_HEADERS: &[&str] = &["idempotency-key", "keel-attempt"];

/// Performs one HTTP attempt. Never panics; every failure becomes an `ActionOutcome`.
///
/// Every attempt of a visit carries the visit's `Idempotency-Key` and sends the body bytes
/// rendered at the visit's first attempt; `Keel-Attempt` numbers the attempt (a resume after
/// a crash sends the interrupted attempt's number again).
pub(crate) async fn execute(http: &reqwest::Client, request: &ActionRequest) -> ActionOutcome {
    let method = match reqwest::Method::from_bytes(request.method.as_bytes()) {
        Ok(method) => method,
        Err(error) => return ActionOutcome::Invalid(error.to_string()),
    };
    let mut builder = http
        .request(method, &request.url)
        .timeout(Duration::from_millis(request.timeout_ms))
        .header("Idempotency-Key", &request.idempotency_key)
        .header("Keel-Attempt", request.attempt.to_string());
    let mut content_type = false;
    for (name, value) in &request.headers {
        // The engine's key is the contract (one per case, step and visit); a workflow header
        // cannot replace it or the attempt number.
        if !ENGINE_HEADERS
            .iter()
            .any(|own| name.eq_ignore_ascii_case(own))
        {
            content_type |= name.eq_ignore_ascii_case("content-type");
            builder = builder.header(name, value);
        }
    }
    if let Some(body) = &request.body_json {
        if !content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        builder = builder.body(body.clone());
    }
    let response = match builder.send().await {
        Ok(response) => response,
        Err(error) if error.is_timeout() => return ActionOutcome::Timeout,
        Err(error) if error.is_builder() => return ActionOutcome::Invalid(error.to_string()),
        Err(error) => return ActionOutcome::ConnectionError(error_chain(&error)),
    };
    let status = response.status().as_u16();
    let mut response = response;
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > case::MAX_ACTION_RESPONSE_BYTES {
                    return ActionOutcome::Invalid(format!(
                        "the response body is larger than {} bytes",
                        case::MAX_ACTION_RESPONSE_BYTES
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) if error.is_timeout() => return ActionOutcome::Timeout,
            Err(error) => return ActionOutcome::ConnectionError(error_chain(&error)),
        }
    }
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    ActionOutcome::Response { status, body }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
