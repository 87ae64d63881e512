//! The case state machine: `advance(workflow, state, input, now) -> Transition`.
//!
//! A case is one run of one workflow version. The engine owns IO and time; this module owns
//! every decision. Given the current state and what just happened (a wake-up, an action's
//! result, a signal) it runs every pure step it can reach, changes the state, and returns the
//! journal events to write plus the single effect the engine must perform next. The engine
//! must persist the events and the new state in one transaction *before* performing the
//! effect, so that a crash after the effect started is resumed with the same idempotency key.
//!
//! An action's key names the *visit* of its step (`keel:{case}:{step}:{visit}`), not the
//! attempt: every retry and every resume of a visit sends the request rendered at the visit's
//! first attempt, byte for byte, under the same key, with the attempt number in its own
//! header. A step entered again (a loop) is a new visit with a new key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::expr::{Activation, EvalError, Expr};
use crate::workflow::{
    Action, Ai, Decide, HitPolicy, JsonTemplate, Step, StepKind, Template, TemplatePart, Wait,
    Workflow,
};

/// Failures that end the case even under `on_failure: exception`: a person's cancellation,
/// and the engine's own inconsistencies (nothing a person could resolve).
const NEVER_PARKED: &[&str] = &["cancelled", "internal"];

/// The loop guard: a case that executes more steps than this fails with `loop_guard`.
pub const MAX_STEPS_PER_CASE: u32 = 1_000;
/// Largest response body kept in case data; larger bodies fail the action.
pub const MAX_ACTION_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Runnable now.
    Running,
    /// Parked on a timer, a signal, or an action's retry backoff.
    Waiting,
    Completed,
    Failed,
    /// Parked on an exception (e.g. `ai_failed`) that a person must resolve.
    Exception,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Exception => "exception",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// Everything the state machine needs to continue a case; stored as JSON in the cases table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseState {
    pub id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub status: Status,
    pub created_at_ms: i64,
    pub input: Value,
    /// Values produced by steps (`set`, `decide`, `action`, signals), keyed by name.
    pub data: Value,
    /// The step the case is at; `None` once completed (a failed case keeps the step it failed at).
    pub step: Option<String>,
    pub step_entered_at_ms: i64,
    pub steps_executed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionProgress>,
    /// When the current `wait` step fires or times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until_ms: Option<i64>,
    /// Signals received and not yet consumed by a `wait` step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signals: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CaseError>,
    /// Set by the SLA ticker; visible condition picked up by the exception layer.
    #[serde(default)]
    pub sla_breached: bool,
    /// Every SLA breach recorded for this case, so that each deadline is journaled once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sla_breaches: Vec<SlaBreach>,
    /// The rendered prompt each `ai` step of this case last sent, by step id: the exact text a
    /// learner learns from when a person labels the outcome. Kept in the state, never in the
    /// journal, so that `journal.redact_text` keeps prompt text out of the ledger.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ai_prompts: BTreeMap<String, String>,
    /// The open task of the step the case is at (an approval or a gated action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<crate::gate::TaskProgress>,
    /// Who submitted the case (the API token's subject), for the four-eyes rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The id of the exception the case is parked on (status `exception`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<String>,
    /// How many exceptions the case has raised; numbers their ids.
    #[serde(default)]
    pub exceptions_raised: u32,
    /// The trust gate's decision for the operation at the current step (this visit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateRecord>,
    /// How many visits of each action and `ai` step the case has started, by step id: the
    /// number in each visit's idempotency key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub visits: BTreeMap<String, u32>,
    /// Added to every visit number of the case: 0 for new cases. A state stored before visits
    /// were counted loads with [`LEGACY_VISIT_OFFSET`], so that no key of its later visits
    /// equals a key its earlier requests carried (`keel:{case}:{step}:{attempt}`).
    #[serde(default = "legacy_visit_offset")]
    pub visit_offset: u32,
}

/// The visit offset of a case stored before visits were counted: its requests were keyed by
/// attempt, and an action makes at most 10 attempts, so visits numbered from 11 are new keys.
pub const LEGACY_VISIT_OFFSET: u32 = 10;

fn legacy_visit_offset() -> u32 {
    LEGACY_VISIT_OFFSET
}

/// What the gate decided at the current step: kept so that retries and wake-ups of the same
/// visit neither decide again nor sample a second review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub step: String,
    /// `task` or `auto`.
    pub decision: String,
    pub phase: u8,
    pub reason: String,
    pub review_sampled: bool,
}

/// One recorded SLA breach: of the whole case (`step` is `None`) or of one visit to a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaBreach {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// When the step was entered (tells two visits to the same step apart).
    pub entered_at_ms: i64,
    pub deadline_ms: i64,
    pub recorded_at_ms: i64,
}

/// Progress of the visit of the `action` (or `ai`) step the case is at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionProgress {
    /// The attempt in flight or last made (1, 2, …); it counts on across a person's retry.
    pub attempt: u32,
    /// Which visit of the step this is (1, 2, … per step per case, plus the case's
    /// `visit_offset`); 0 in a state stored before visits were counted.
    #[serde(default)]
    pub visit: u32,
    /// The visit's key, sent with every attempt and every resume of the visit.
    pub idempotency_key: String,
    /// The attempt was journaled as started and has no recorded result yet.
    pub in_flight: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    /// Attempts of this visit before the current round: a person's `retry` of a parked visit
    /// grants `retry.max_attempts` more attempts of the same visit (same key, same request).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_before: u32,
    /// The request of an action's visit, rendered at its first attempt; `None` for `ai` steps
    /// and in states stored before requests were kept (those render again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<VisitRequest>,
}

/// The request of one visit of an action step, rendered once at the visit's first attempt and
/// kept in the case state, so that every retry and every resume of the visit sends the same
/// method, URL, headers and body bytes, whatever the clock or the case data say by then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body exactly as sent: JSON text, serialized once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Why a case failed: a stable kind, the step, a message for people, and details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseError {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// What just happened to the case.
#[derive(Debug, Clone)]
pub enum Input {
    /// Run whatever is runnable (after creation, a timer, a lease takeover).
    Wake,
    /// The result of the action attempt that `Command::Execute` asked for.
    ActionResult {
        attempt: u32,
        outcome: ActionOutcome,
    },
    /// An external signal by name.
    Signal { name: String, payload: Value },
    /// The result of the `ai` step attempt that `Command::Ai` asked for.
    AiResult { attempt: u32, outcome: AiOutcome },
    /// A person's decision on the case's open task.
    TaskDecision {
        task_id: String,
        decider: crate::gate::Decider,
        decision: crate::gate::TaskDecision,
    },
    /// A person's resolution of the exception the case is parked on (`case_resolve.rs`).
    Resolve {
        exception_id: String,
        by: String,
        resolution: Resolution,
        note: Option<String>,
    },
}

/// What an `ai` step's cascade came to. Built by the AI layer, applied here.
#[derive(Debug, Clone, PartialEq)]
pub enum AiOutcome {
    /// A tier's answer passed the schema and every check and was accepted.
    Proposed {
        output: Value,
        /// In [0, 1].
        confidence: f64,
        /// How `confidence` was measured: `learner`, `logprob_label`, `logprob_mean`,
        /// `agreement`, or `none` (then it is 0).
        confidence_method: String,
        model: String,
        /// Index in the route.
        tier: usize,
        /// The cascade path, attempts, tokens and cost, for the journal.
        record: Value,
    },
    /// No tier was accepted (`ai_failed`) or the budget ran out (`budget_exhausted`): the case
    /// parks on an exception with every attempt kept.
    Failed {
        kind: String,
        message: String,
        record: Value,
    },
}

#[derive(Debug, Clone)]
pub enum ActionOutcome {
    /// An HTTP response; `body` is the parsed JSON or, if not JSON, a string.
    Response {
        status: u16,
        body: Value,
    },
    Timeout,
    ConnectionError(String),
    /// The request could not be sent at all (bad URL, body too large); not retried.
    Invalid(String),
}

/// One journal event produced by a transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub step: Option<String>,
    pub data: Value,
}

/// The one effect the engine must perform after persisting the transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Execute(ActionRequest),
    /// Run the current `ai` step's cascade with this rendered prompt.
    Ai(AiRequest),
    /// Nothing to do before this time (timer, signal timeout, retry backoff); a signal may wake it earlier.
    Sleep {
        until_ms: i64,
    },
    /// The case is finished.
    Stop,
}

/// One attempt of an action: what the engine sends. The engine adds `Idempotency-Key:
/// {idempotency_key}` and `Keel-Attempt: {attempt}`; a workflow header cannot replace either.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRequest {
    pub step: String,
    pub attempt: u32,
    /// The visit of the step this attempt belongs to (0 for a preview that is not sent).
    pub visit: u32,
    pub idempotency_key: String,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body as a JSON value, for people (task previews); `body_json` is what is sent.
    pub body: Option<Value>,
    /// The body's bytes as sent (JSON text), the same for every attempt of the visit.
    pub body_json: Option<String>,
    pub timeout_ms: u64,
}

/// One attempt at an `ai` step: the prompts rendered from the case data at that point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AiRequest {
    pub step: String,
    pub attempt: u32,
    pub system: Option<String>,
    pub prompt: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub events: Vec<Event>,
    pub command: Command,
}

impl CaseState {
    /// A new case at the workflow's first step. The caller validated `input` against the schema.
    pub fn new(
        id: String,
        workflow: &Workflow,
        workflow_version: i64,
        input: Value,
        now_ms: i64,
    ) -> CaseState {
        CaseState {
            id,
            workflow: workflow.name.clone(),
            workflow_version,
            status: Status::Running,
            created_at_ms: now_ms,
            input,
            data: Value::Object(Map::new()),
            step: workflow.steps.first().map(|step| step.id.clone()),
            step_entered_at_ms: now_ms,
            steps_executed: 0,
            action: None,
            wait_until_ms: None,
            signals: BTreeMap::new(),
            outcome: None,
            error: None,
            sla_breached: false,
            sla_breaches: Vec::new(),
            ai_prompts: BTreeMap::new(),
            task: None,
            submitted_by: None,
            exception_id: None,
            exceptions_raised: 0,
            gate: None,
            visits: BTreeMap::new(),
            visit_offset: 0,
        }
    }

    /// Starts the next visit of `step`; returns its number.
    fn next_visit(&mut self, step: &str) -> u32 {
        let count = self.visits.entry(step.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        count.saturating_add(self.visit_offset)
    }

    /// The earliest SLA deadline not yet recorded as breached, if any.
    pub fn next_sla_due(&self, workflow: &Workflow) -> Option<i64> {
        let (case_deadline, step_deadline) = self.deadlines(workflow);
        let case_deadline =
            case_deadline.filter(|_| !self.sla_breaches.iter().any(|b| b.step.is_none()));
        let step_deadline = step_deadline.filter(|_| {
            !self
                .sla_breaches
                .iter()
                .any(|b| b.step == self.step && b.entered_at_ms == self.step_entered_at_ms)
        });
        match (case_deadline, step_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records every deadline that has passed by `now_ms` and was not recorded before; returns
    /// one `sla.breached` event per new breach. The case keeps running: a breach is a visible
    /// condition for people, not a failure.
    pub fn record_sla_breaches(&mut self, workflow: &Workflow, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let (case_deadline, step_deadline) = self.deadlines(workflow);
        if let Some(deadline) = case_deadline.filter(|d| *d <= now_ms) {
            if !self.sla_breaches.iter().any(|b| b.step.is_none()) {
                self.sla_breaches.push(SlaBreach {
                    step: None,
                    entered_at_ms: self.created_at_ms,
                    deadline_ms: deadline,
                    recorded_at_ms: now_ms,
                });
                events.push(Event {
                    kind: "sla.breached",
                    step: self.step.clone(),
                    data: json!({ "scope": "case", "deadline_ms": deadline, "late_ms": now_ms - deadline }),
                });
            }
        }
        if let Some(deadline) = step_deadline.filter(|d| *d <= now_ms) {
            let recorded = self
                .sla_breaches
                .iter()
                .any(|b| b.step == self.step && b.entered_at_ms == self.step_entered_at_ms);
            if !recorded {
                self.sla_breaches.push(SlaBreach {
                    step: self.step.clone(),
                    entered_at_ms: self.step_entered_at_ms,
                    deadline_ms: deadline,
                    recorded_at_ms: now_ms,
                });
                events.push(Event {
                    kind: "sla.breached",
                    step: self.step.clone(),
                    data: json!({ "scope": "step", "deadline_ms": deadline, "late_ms": now_ms - deadline }),
                });
            }
        }
        if !events.is_empty() {
            self.sla_breached = true;
        }
        events
    }

    /// The case's workflow-level and current-step SLA deadlines (ms since the epoch).
    pub fn deadlines(&self, workflow: &Workflow) -> (Option<i64>, Option<i64>) {
        if self.status.is_final() {
            return (None, None);
        }
        let case_deadline = workflow
            .sla
            .map(|sla| deadline(workflow, self.created_at_ms, sla, workflow.sla_business));
        let step_deadline = self
            .step
            .as_deref()
            .and_then(|id| find_step(workflow, id))
            .and_then(|step| step.sla.map(|sla| (sla, step.sla_business)))
            .map(|(sla, business)| deadline(workflow, self.step_entered_at_ms, sla, business));
        (case_deadline, step_deadline)
    }
}

/// `sla` after `from_ms`: working time on the workflow's calendar when `business`. A
/// calendar that cannot place it (beyond its horizon) falls back to elapsed time, so a
/// deadline is never lost.
fn deadline(
    workflow: &Workflow,
    from_ms: i64,
    sla: crate::workflow::DurationMs,
    business: bool,
) -> i64 {
    let elapsed = from_ms.saturating_add(sla.0 as i64);
    match (&workflow.calendar, business) {
        (Some(calendar), true) => calendar
            .add_business(
                millis_to_datetime(from_ms),
                std::time::Duration::from_millis(sla.0),
            )
            .map_or(elapsed, |at| at.timestamp_millis()),
        _ => elapsed,
    }
}

/// The deterministic idempotency key of one visit of one action step of one case: the same
/// for every attempt and every resume of that visit, different for every visit.
pub fn idempotency_key(case_id: &str, step: &str, visit: u32) -> String {
    format!("keel:{case_id}:{step}:{visit}")
}

pub fn find_step<'w>(workflow: &'w Workflow, id: &str) -> Option<&'w Step> {
    workflow.steps.iter().find(|step| step.id == id)
}

/// Advances a case as far as it can go without an effect. `jitter` in [0, 1) is supplied by
/// the caller (the core has no randomness) and scales retry backoff ("full jitter" between
/// half and all of the exponential delay).
pub fn advance(
    workflow: &Workflow,
    state: &mut CaseState,
    input: Input,
    now_ms: i64,
    jitter: f64,
) -> Transition {
    advance_with(
        workflow,
        state,
        input,
        now_ms,
        jitter,
        &crate::trust::Phases::new(),
    )
}

/// [`advance`] with the current trust phase of each operation (step id → phase); operations
/// not in `phases` are at the phase their `trust:` configuration starts in.
pub fn advance_with(
    workflow: &Workflow,
    state: &mut CaseState,
    input: Input,
    now_ms: i64,
    jitter: f64,
    phases: &crate::trust::Phases,
) -> Transition {
    let mut run = Run {
        workflow,
        events: Vec::new(),
        now_ms,
        jitter,
        phases,
    };
    if state.status.is_final() {
        if let Input::Signal { name, .. } = &input {
            run.emit(
                "signal.ignored",
                None,
                json!({ "signal": name, "reason": "case is finished" }),
            );
        }
        return run.finish(Command::Stop);
    }
    match input {
        Input::Wake => {}
        Input::Signal { name, payload } => {
            run.emit(
                "signal.received",
                state.step.clone(),
                json!({ "signal": name, "payload": payload }),
            );
            state.signals.insert(name.clone(), payload);
            if !waiting_for_signal(workflow, state, &name) {
                let command = current_command(state);
                return run.finish(command);
            }
        }
        Input::ActionResult { attempt, outcome } => {
            if let Some(command) = run.action_result(state, attempt, outcome) {
                return run.finish(command);
            }
        }
        Input::AiResult { attempt, outcome } => {
            if let Some(command) = run.ai_result(state, attempt, outcome) {
                return run.finish(command);
            }
        }
        Input::TaskDecision {
            task_id,
            decider,
            decision,
        } => {
            if let Some(command) = run.task_decision(state, &task_id, decider, decision) {
                return run.finish(command);
            }
        }
        Input::Resolve {
            exception_id,
            by,
            resolution,
            note,
        } => {
            if let Some(command) = run.resolve(state, &exception_id, &by, resolution, note) {
                return run.finish(command);
            }
        }
    }
    let command = run.drive(state);
    run.finish(command)
}

fn waiting_for_signal(workflow: &Workflow, state: &CaseState, name: &str) -> bool {
    let Some(step) = state.step.as_deref().and_then(|id| find_step(workflow, id)) else {
        return false;
    };
    matches!(&step.kind, StepKind::Wait(Wait::Signal { name: wanted, .. }) if wanted == name)
}

/// What a case parked without new input should keep doing.
fn current_command(state: &CaseState) -> Command {
    if state.status.is_final() || state.status == Status::Exception {
        return Command::Stop;
    }
    // Parked on a person: nothing to run until a decision or the task's next deadline.
    if let Some(task) = state.task.as_ref().filter(|task| !task.approved) {
        return match task.due_ms {
            Some(due) if !task.overdue_recorded => Command::Sleep { until_ms: due },
            _ => Command::Stop,
        };
    }
    match (&state.action, state.wait_until_ms) {
        (
            Some(ActionProgress {
                retry_at_ms: Some(at),
                ..
            }),
            _,
        ) => Command::Sleep { until_ms: *at },
        (_, Some(at)) => Command::Sleep { until_ms: at },
        _ => Command::Sleep {
            until_ms: state.step_entered_at_ms,
        },
    }
}

struct Run<'w> {
    workflow: &'w Workflow,
    events: Vec<Event>,
    now_ms: i64,
    jitter: f64,
    /// The trust phase of each operation of the workflow, as the engine knows it now.
    phases: &'w crate::trust::Phases,
}

/// The result of executing one step: go on to a step, or stop with a command.
#[allow(clippy::large_enum_variant)] // a value returned once per step, never stored
enum Flow {
    Goto(String),
    Stop(Command),
}

impl<'w> Run<'w> {
    fn emit(&mut self, kind: &'static str, step: Option<String>, data: Value) {
        self.events.push(Event { kind, step, data });
    }

    fn finish(self, command: Command) -> Transition {
        Transition {
            events: self.events,
            command,
        }
    }

    fn fail(
        &mut self,
        state: &mut CaseState,
        kind: &str,
        message: String,
        details: Value,
    ) -> Command {
        let parks = self.workflow.on_failure == crate::workflow::OnFailure::Exception
            && !NEVER_PARKED.contains(&kind);
        if parks {
            return self.park(state, kind, message, details);
        }
        let error = CaseError {
            kind: kind.to_string(),
            step: state.step.clone(),
            message,
            details,
        };
        self.emit(
            "case.failed",
            state.step.clone(),
            serde_json::to_value(&error).unwrap_or(Value::Null),
        );
        state.status = Status::Failed;
        state.error = Some(error);
        state.action = None;
        state.wait_until_ms = None;
        Command::Stop
    }

    /// Parks the case on a new exception of `kind` for a person, with the context as it is.
    fn park(
        &mut self,
        state: &mut CaseState,
        kind: &str,
        message: String,
        details: Value,
    ) -> Command {
        let exception_id = resolve::open_exception(state);
        self.emit(
            "exception.raised",
            state.step.clone(),
            json!({ "exception_id": exception_id, "kind": kind, "message": message,
                "details": details, "data": state.data, "steps_executed": state.steps_executed }),
        );
        state.error = Some(CaseError {
            kind: kind.to_string(),
            step: state.step.clone(),
            message,
            details,
        });
        state.status = Status::Exception;
        // An action's visit that sent its request is kept (not in flight): a person's retry
        // goes on with the same key and bytes, since the downstream may have applied it.
        state.action = state
            .action
            .take()
            .filter(|progress| progress.request.is_some())
            .map(|progress| ActionProgress {
                in_flight: false,
                retry_at_ms: None,
                ..progress
            });
        state.wait_until_ms = None;
        Command::Stop
    }

    /// Runs steps until one needs an effect or the case finishes.
    fn drive(&mut self, state: &mut CaseState) -> Command {
        loop {
            if state.status.is_final() || state.status == Status::Exception {
                return Command::Stop;
            }
            let Some(step_id) = state.step.clone() else {
                return self.fail(
                    state,
                    "internal",
                    "case has no current step".into(),
                    Value::Null,
                );
            };
            let Some(step) = find_step(self.workflow, &step_id) else {
                let message = format!("step `{step_id}` does not exist in workflow version");
                return self.fail(state, "internal", message, Value::Null);
            };
            let flow = self.execute(state, step);
            match flow {
                Flow::Stop(command) => return command,
                Flow::Goto(next) => {
                    if let Some(command) = self.goto(state, next) {
                        return command;
                    }
                }
            }
        }
    }

    /// Moves the case to `next`, unless it has executed too many steps (the loop guard).
    /// Every way of leaving a step goes through here, so that no loop escapes the guard.
    fn goto(&mut self, state: &mut CaseState, next: String) -> Option<Command> {
        if state.steps_executed >= MAX_STEPS_PER_CASE {
            let message = format!(
                "the case executed {MAX_STEPS_PER_CASE} steps, the limit; the workflow probably loops"
            );
            return Some(self.fail(
                state,
                "loop_guard",
                message,
                json!({ "limit": MAX_STEPS_PER_CASE }),
            ));
        }
        state.steps_executed += 1;
        state.step = Some(next);
        state.step_entered_at_ms = self.now_ms;
        state.status = Status::Running;
        state.action = None;
        state.wait_until_ms = None;
        state.task = None;
        state.gate = None;
        None
    }

    fn activation(&self, state: &CaseState) -> Activation {
        let case = json!({
            "id": state.id,
            "workflow": state.workflow,
            "version": state.workflow_version,
            "created_at_ms": state.created_at_ms,
        });
        Activation::new(
            &state.input,
            &state.data,
            &case,
            millis_to_datetime(self.now_ms),
        )
    }

    fn execute(&mut self, state: &mut CaseState, step: &Step) -> Flow {
        let id = Some(step.id.clone());
        let next = step.next.clone().unwrap_or_default();
        match &step.kind {
            StepKind::Validate(validate) => {
                let mut violations = Vec::new();
                if let Some(schema) = &validate.schema {
                    if let Err(found) = schema.validate(&state.input) {
                        violations.extend(
                            found
                                .into_iter()
                                .map(|v| json!({"path": v.path, "message": v.message})),
                        );
                    }
                }
                let act = self.activation(state);
                for assertion in &validate.assertions {
                    match assertion.expr.eval_bool(&act) {
                        Ok(true) => {}
                        Ok(false) => violations.push(json!({ "assert": assertion.expr.source(), "message": assertion.message })),
                        Err(error) => violations.push(json!({
                            "assert": assertion.expr.source(),
                            "message": format!("{}: {error}", assertion.message),
                        })),
                    }
                }
                if !violations.is_empty() {
                    let message = format!("validation failed: {} violation(s)", violations.len());
                    return Flow::Stop(self.fail(
                        state,
                        "validation_failed",
                        message,
                        json!({ "violations": violations }),
                    ));
                }
                self.emit("step.completed", id, json!({ "kind": "validate" }));
                Flow::Goto(next)
            }
            StepKind::Switch(switch) => {
                let act = self.activation(state);
                let mut target = None;
                for (index, case) in switch.cases.iter().enumerate() {
                    match case.when.eval_bool(&act) {
                        Ok(true) => {
                            target = Some((case.goto.clone(), json!(index)));
                            break;
                        }
                        Ok(false) => {}
                        Err(error) => {
                            return Flow::Stop(self.expression_failed(state, &case.when, error))
                        }
                    }
                }
                let (goto, matched) =
                    target.unwrap_or_else(|| (switch.default.clone(), json!("default")));
                self.emit(
                    "step.completed",
                    id,
                    json!({ "kind": "switch", "matched": matched, "goto": goto }),
                );
                Flow::Goto(goto)
            }
            StepKind::Decide(decide) => match self.decide(state, decide) {
                Ok(output) => {
                    self.emit(
                        "step.completed",
                        id,
                        json!({ "kind": "decide", "into": decide.into, "output": output }),
                    );
                    set_data(state, &decide.into, output);
                    Flow::Goto(next)
                }
                Err(command) => Flow::Stop(command),
            },
            StepKind::Set(set) => {
                let mut act = self.activation(state);
                let mut values = Map::new();
                for (name, expr) in &set.values {
                    match expr.eval(&act) {
                        Ok(value) => {
                            values.insert(name.clone(), value.clone());
                            set_data(state, name, value);
                            act.set_data(&state.data);
                        }
                        Err(error) => {
                            return Flow::Stop(self.expression_failed(state, expr, error))
                        }
                    }
                }
                self.emit(
                    "step.completed",
                    id,
                    json!({ "kind": "set", "values": values }),
                );
                Flow::Goto(next)
            }
            StepKind::Action(action) => match self.hold_for_gate(state, step) {
                Some(flow) => flow,
                None => self.action(state, step, action),
            },
            StepKind::Approval(approval) => self.open_task(
                state,
                step,
                &approval.gate,
                "approval",
                approval.title.clone(),
                Vec::new(),
                Value::Null,
            ),
            StepKind::Ai(ai) => self.ai(state, step, ai),
            StepKind::Wait(wait) => self.wait(state, step, wait),
            StepKind::End(end) => {
                if let Some(flow) = self.hold_for_gate(state, step) {
                    return flow;
                }
                state.task = None;
                state.gate = None;
                state.status = Status::Completed;
                state.outcome = Some(end.outcome.clone());
                state.step = None;
                self.emit("case.completed", id, json!({ "outcome": end.outcome }));
                Flow::Stop(Command::Stop)
            }
        }
    }

    fn expression_failed(
        &mut self,
        state: &mut CaseState,
        expr: &Expr,
        error: EvalError,
    ) -> Command {
        let message = format!("expression `{}` failed: {error}", expr.source());
        self.fail(
            state,
            "expression_error",
            message,
            json!({ "expr": expr.source() }),
        )
    }

    #[allow(clippy::result_large_err)] // the error is the rare stop command, built once
    fn decide(&mut self, state: &mut CaseState, decide: &Decide) -> Result<Value, Command> {
        let act = self.activation(state);
        let mut columns = Vec::with_capacity(decide.columns.len());
        for column in &decide.columns {
            match column.eval_bool(&act) {
                Ok(value) => columns.push(value),
                Err(error) => return Err(self.expression_failed(state, column, error)),
            }
        }
        let mut hits = decide.rules.iter().filter(|rule| {
            rule.when
                .iter()
                .zip(&columns)
                .all(|(cell, value)| cell.is_none_or(|want| want == *value))
        });
        match decide.hit {
            HitPolicy::First => match (hits.next(), &decide.default) {
                (Some(rule), _) => Ok(rule.then.clone()),
                (None, Some(default)) => Ok(default.clone()),
                (None, None) => {
                    let message = format!("no rule of the decision table matched columns {columns:?} and it has no default");
                    Err(self.fail(
                        state,
                        "no_rule_matched",
                        message,
                        json!({ "columns": columns }),
                    ))
                }
            },
            HitPolicy::Collect => Ok(Value::Array(hits.map(|rule| rule.then.clone()).collect())),
        }
    }

    /// Runs the visit of an action step: its first attempt (a new visit: a new key, the
    /// request rendered once and kept), a due retry, or the resume of an attempt that a crash
    /// or a lost lease interrupted. Retries and resumes send the kept request under the key.
    fn action(&mut self, state: &mut CaseState, step: &Step, action: &Action) -> Flow {
        let Some(progress) = state.action.clone() else {
            return self.start_visit(state, step, action);
        };
        if let Some(retry_at) = progress.retry_at_ms.filter(|at| *at > self.now_ms) {
            return Flow::Stop(Command::Sleep { until_ms: retry_at });
        }
        let (mut progress, request) = match self.kept_request(state, step, action, progress) {
            Ok(kept) => kept,
            Err(command) => return Flow::Stop(command),
        };
        if progress.in_flight {
            // Started but no result recorded: the same attempt again, journaled once.
            let command = command_of(step, action, &progress, &request);
            progress.request = Some(request);
            state.action = Some(progress);
            return Flow::Stop(Command::Execute(command));
        }
        progress.attempt = progress.attempt.saturating_add(1);
        progress.in_flight = true;
        progress.retry_at_ms = None;
        self.start_attempt(state, step, action, progress, request)
    }

    /// Starts a new visit of an action step: the next visit number, its key, its request.
    fn start_visit(&mut self, state: &mut CaseState, step: &Step, action: &Action) -> Flow {
        let visit = state.next_visit(&step.id);
        let request = match render_visit(&self.activation(state), action) {
            Ok(request) => request,
            Err(message) => {
                return Flow::Stop(self.fail(state, "template_error", message, Value::Null))
            }
        };
        let progress = ActionProgress {
            attempt: 1,
            visit,
            idempotency_key: idempotency_key(&state.id, &step.id, visit),
            in_flight: true,
            retry_at_ms: None,
            attempts_before: 0,
            request: None,
        };
        self.start_attempt(state, step, action, progress, request)
    }

    /// Journals `action.started` for `progress.attempt` (with the visit and its key) and asks
    /// the engine to send it.
    fn start_attempt(
        &mut self,
        state: &mut CaseState,
        step: &Step,
        action: &Action,
        mut progress: ActionProgress,
        request: VisitRequest,
    ) -> Flow {
        let command = command_of(step, action, &progress, &request);
        self.emit(
            "action.started",
            Some(step.id.clone()),
            json!({ "attempt": progress.attempt, "visit": progress.visit,
                "idempotency_key": progress.idempotency_key, "method": command.method,
                "url": command.url }),
        );
        progress.request = Some(request);
        state.action = Some(progress);
        state.status = Status::Running;
        Flow::Stop(Command::Execute(command))
    }

    /// The visit's kept request, taken out of `progress`. A progress stored before visits
    /// were counted keeps the key its attempts were sent with, and gets a visit number and
    /// its request rendered now, once, for the rest of the visit.
    #[allow(clippy::result_large_err)] // the error is the rare stop command, built once
    fn kept_request(
        &mut self,
        state: &mut CaseState,
        step: &Step,
        action: &Action,
        mut progress: ActionProgress,
    ) -> Result<(ActionProgress, VisitRequest), Command> {
        if progress.visit == 0 {
            progress.visit = state.next_visit(&step.id);
        }
        let request = match progress.request.take() {
            Some(request) => request,
            None => match render_visit(&self.activation(state), action) {
                Ok(request) => request,
                Err(message) => {
                    return Err(self.fail(state, "template_error", message, Value::Null))
                }
            },
        };
        Ok((progress, request))
    }

    /// Starts (or, after a crash, restarts) the cascade of an `ai` step.
    fn ai(&mut self, state: &mut CaseState, step: &Step, ai: &Ai) -> Flow {
        let restart = state
            .action
            .as_ref()
            .filter(|p| p.in_flight)
            .map(|p| p.attempt);
        let attempt = restart.unwrap_or(1);
        let case =
            json!({"id": state.id, "workflow": state.workflow, "version": state.workflow_version});
        let render = |source: &str| crate::prompt::render(source, &state.input, &state.data, &case);
        let system = match ai.system.as_ref().map(|p| render(&p.source)).transpose() {
            Ok(system) => system,
            Err(message) => {
                let message = format!(
                    "the system prompt of `{}` did not render: {message}",
                    step.id
                );
                return Flow::Stop(self.fail(state, "template_error", message, Value::Null));
            }
        };
        let prompt = match render(&ai.prompt.source) {
            Ok(prompt) => prompt,
            Err(message) => {
                let message = format!("the prompt of `{}` did not render: {message}", step.id);
                return Flow::Stop(self.fail(state, "template_error", message, Value::Null));
            }
        };
        if restart.is_none() {
            let models: Vec<&str> = ai.route.iter().map(|t| t.model.as_str()).collect();
            self.emit(
                "ai.started",
                Some(step.id.clone()),
                json!({
                    "attempt": attempt,
                    "task": ai.task.keyword(),
                    "prompt_template_sha256": ai.prompt.sha256,
                    "route": models,
                }),
            );
            let visit = state.next_visit(&step.id);
            state.action = Some(ActionProgress {
                attempt,
                visit,
                idempotency_key: idempotency_key(&state.id, &step.id, visit),
                in_flight: true,
                retry_at_ms: None,
                attempts_before: 0,
                request: None,
            });
        }
        state.status = Status::Running;
        state.ai_prompts.insert(step.id.clone(), prompt.clone());
        Flow::Stop(Command::Ai(AiRequest {
            step: step.id.clone(),
            attempt,
            system,
            prompt,
        }))
    }

    /// Applies a cascade's outcome; returns a command if the case stops here.
    fn ai_result(
        &mut self,
        state: &mut CaseState,
        attempt: u32,
        outcome: AiOutcome,
    ) -> Option<Command> {
        let step_id = state.step.clone()?;
        let step = find_step(self.workflow, &step_id)?;
        let StepKind::Ai(ai) = &step.kind else {
            return Some(current_command(state));
        };
        state
            .action
            .as_ref()
            .filter(|p| p.in_flight && p.attempt == attempt)?;
        let id = Some(step_id.clone());
        match outcome {
            AiOutcome::Proposed {
                output,
                confidence,
                confidence_method,
                model,
                tier,
                record,
            } => {
                let mut proposal = json!({
                    "output": output,
                    "confidence": confidence,
                    "confidence_method": confidence_method,
                    "model": model,
                    "tier": tier,
                });
                if let Some(version) = record.get("learner_version") {
                    // Which stored learner version proposed it: accuracy is counted per version.
                    proposal["learner_version"] = version.clone();
                }
                // What the step's calls cost (null when a provider gave no usage): evidence
                // for trust ties each review to it.
                if let Value::Object(fields) = &mut proposal {
                    let known = record["cost_known"].as_bool().unwrap_or(false);
                    let cost = if known {
                        record["cost_usd"].clone()
                    } else {
                        Value::Null
                    };
                    fields.insert("cost_usd".into(), cost);
                }
                // A calibrated confidence keeps the raw one beside it (the calibrators are
                // fitted on raw confidences, and the journal keeps both).
                if let (Some(raw), Value::Object(fields)) =
                    (record.get("raw_confidence"), &mut proposal)
                {
                    fields.insert("raw_confidence".into(), raw.clone());
                    fields.insert("calibrator".into(), record["calibrator"].clone());
                }
                self.emit(
                    "ai.proposed",
                    id,
                    json!({ "attempt": attempt, "proposal": proposal, "cascade": record }),
                );
                set_data(state, &ai.into, proposal);
                let next = step.next.clone().unwrap_or_default();
                self.goto(state, next)
            }
            AiOutcome::Failed {
                kind,
                message,
                record,
            } => {
                let error = CaseError {
                    kind: kind.clone(),
                    step: id.clone(),
                    message: message.clone(),
                    details: record.clone(),
                };
                let exception_id = resolve::open_exception(state);
                self.emit(
                    "exception.raised",
                    id,
                    json!({ "exception_id": exception_id, "kind": kind, "message": message, "attempt": attempt, "cascade": record, "data": state.data }),
                );
                state.status = Status::Exception;
                state.error = Some(error);
                state.action = None;
                Some(Command::Stop)
            }
        }
    }

    /// Applies an action result; returns a command if the case stops here, `None` to drive on.
    fn action_result(
        &mut self,
        state: &mut CaseState,
        attempt: u32,
        outcome: ActionOutcome,
    ) -> Option<Command> {
        let workflow = self.workflow;
        let step_id = state.step.clone()?;
        let step = find_step(workflow, &step_id)?;
        let StepKind::Action(action) = &step.kind else {
            return Some(current_command(state));
        };
        let current = state
            .action
            .as_ref()
            .filter(|p| p.in_flight && p.attempt == attempt)?
            .clone();
        let id = Some(step_id.clone());
        let retryable_error = match outcome {
            ActionOutcome::Response { status, body } if (200..300).contains(&status) => {
                if let Some(schema) = &action.response_schema {
                    if let Err(violations) = schema.validate(&body) {
                        let message =
                            format!("the response of `{step_id}` does not match response_schema");
                        let details =
                            json!({ "status": status, "body": body, "violations": violations });
                        return Some(self.fail(state, "action_response_invalid", message, details));
                    }
                }
                let result = json!({ "status": status, "body": body });
                self.emit(
                    "action.completed",
                    id,
                    json!({ "attempt": attempt, "status": status, "body": body }),
                );
                set_data(state, &action.into, result);
                let next = step.next.clone().unwrap_or_default();
                return self.goto(state, next);
            }
            ActionOutcome::Response { status, body }
                if status >= 500 || status == 429 || status == 408 =>
            {
                json!({ "status": status, "body": body })
            }
            ActionOutcome::Response { status, body } => {
                let message = format!("`{step_id}` got HTTP {status}, which is not retried");
                return Some(self.fail(
                    state,
                    "action_failed",
                    message,
                    json!({ "status": status, "body": body, "attempt": attempt }),
                ));
            }
            ActionOutcome::Timeout => json!({ "error": "timeout" }),
            ActionOutcome::ConnectionError(error) => {
                json!({ "error": "connection", "message": error })
            }
            ActionOutcome::Invalid(error) => {
                let message = format!("`{step_id}` could not be sent: {error}");
                return Some(self.fail(
                    state,
                    "action_failed",
                    message,
                    json!({ "attempt": attempt }),
                ));
            }
        };
        // A person's retry of a parked visit starts a new round of attempts (same visit).
        let attempt_of_round = attempt.saturating_sub(current.attempts_before);
        if attempt_of_round >= action.retry.max_attempts {
            let message = format!("`{step_id}` failed after {attempt} attempt(s)");
            let details = json!({ "attempts": attempt, "last": retryable_error });
            return Some(self.fail(state, "action_failed", message, details));
        }
        let retry_at = self
            .now_ms
            .saturating_add(backoff_ms(action, attempt_of_round, self.jitter) as i64);
        self.emit(
            "action.attempt_failed",
            id,
            json!({ "attempt": attempt, "error": retryable_error, "retry_at_ms": retry_at }),
        );
        state.action = Some(ActionProgress {
            in_flight: false,
            retry_at_ms: Some(retry_at),
            ..current
        });
        state.status = Status::Waiting;
        Some(Command::Sleep { until_ms: retry_at })
    }

    /// Opens the task of an approval step or a gated action, or keeps waiting on it.
    #[allow(clippy::too_many_arguments)] // one task's parts, each named at the two call sites
    fn open_task(
        &mut self,
        state: &mut CaseState,
        step: &Step,
        gate: &crate::workflow::Gate,
        kind: &str,
        title: String,
        ai_steps: Vec<String>,
        preview: Value,
    ) -> Flow {
        if let Some(task) = state.task.as_mut().filter(|t| t.step == step.id) {
            let due = task.due_ms;
            let soon = due.map(|due| crate::gate::due_soon_ms(state.step_entered_at_ms, due));
            if let (Some(due), Some(soon)) = (due, soon) {
                if self.now_ms >= soon && self.now_ms < due && !task.due_soon_recorded {
                    task.due_soon_recorded = true;
                    let id = task.id.clone();
                    self.emit(
                        "task.due_soon",
                        Some(step.id.clone()),
                        json!({ "task_id": id, "due_ms": due }),
                    );
                }
            }
            if let Some(due) = due.filter(|due| self.now_ms >= *due) {
                if !task.overdue_recorded {
                    task.overdue_recorded = true;
                    let id = task.id.clone();
                    self.emit(
                        "task.overdue",
                        Some(step.id.clone()),
                        json!({ "task_id": id, "due_ms": due }),
                    );
                    let added: Vec<String> = gate
                        .escalate_to
                        .iter()
                        .filter(|role| !task.roles.contains(role))
                        .cloned()
                        .collect();
                    if !added.is_empty() {
                        task.roles.extend(added.iter().cloned());
                        let roles = task.roles.clone();
                        self.emit(
                            "task.escalated",
                            Some(step.id.clone()),
                            json!({ "task_id": id, "added_roles": added, "roles": roles }),
                        );
                    }
                }
                state.status = Status::Waiting;
                return Flow::Stop(Command::Stop);
            }
            state.status = Status::Waiting;
            let wake = match (soon, due) {
                (Some(soon), _) if self.now_ms < soon => Some(soon),
                (_, due) => due,
            };
            return Flow::Stop(wake.map_or(Command::Stop, |until_ms| Command::Sleep { until_ms }));
        }
        let amount = match &gate.limit {
            None => None,
            Some(expr) => match expr.eval(&self.activation(state)) {
                Ok(value) => match value.as_f64() {
                    Some(amount) => Some(amount),
                    None => {
                        let message = format!(
                            "the approval `limit` expression `{}` gave {value}, not a number",
                            expr.source()
                        );
                        return Flow::Stop(self.fail(
                            state,
                            "expression_error",
                            message,
                            Value::Null,
                        ));
                    }
                },
                Err(error) => return Flow::Stop(self.expression_failed(state, expr, error)),
            },
        };
        let due_ms = match (gate.due, &self.workflow.calendar) {
            (None, _) => None,
            (Some(due), Some(calendar)) if gate.due_business => {
                let start = millis_to_datetime(self.now_ms);
                match calendar.add_business(start, std::time::Duration::from_millis(due.0)) {
                    Ok(at) => Some(at.timestamp_millis()),
                    Err(error) => {
                        let message =
                            format!("cannot count the task's business-time due date: {error}");
                        return Flow::Stop(self.fail(
                            state,
                            "calendar_error",
                            message,
                            Value::Null,
                        ));
                    }
                }
            }
            (Some(due), _) => Some(self.now_ms.saturating_add(due.0 as i64)),
        };
        let task = crate::gate::TaskProgress {
            id: format!("{}.{}.{}", state.id, step.id, state.steps_executed),
            step: step.id.clone(),
            kind: kind.to_string(),
            required: gate.required,
            roles: gate.roles.clone(),
            amount,
            due_ms,
            ai_steps,
            approvals: Vec::new(),
            approved: false,
            overdue_recorded: false,
            due_soon_recorded: false,
        };
        let proposals: serde_json::Map<String, Value> = task
            .ai_steps
            .iter()
            .filter_map(|ai_step| {
                let into = match find_step(self.workflow, ai_step).map(|s| &s.kind) {
                    Some(StepKind::Ai(ai)) => ai.into.clone(),
                    _ => return None,
                };
                Some((
                    ai_step.clone(),
                    state.data.get(&into).cloned().unwrap_or(Value::Null),
                ))
            })
            .collect();
        self.emit(
            "task.created",
            Some(step.id.clone()),
            json!({
                "task_id": task.id, "kind": kind, "title": title, "required": task.required,
                "roles": task.roles, "amount": amount, "due_ms": due_ms,
                "proposals": proposals, "action": preview, "submitted_by": state.submitted_by,
            }),
        );
        state.task = Some(task);
        state.status = Status::Waiting;
        let wake = due_ms.map(|due| crate::gate::due_soon_ms(self.now_ms, due));
        Flow::Stop(wake.map_or(Command::Stop, |until_ms| Command::Sleep { until_ms }))
    }

    /// Holds the case at an operation (an action or `end` that AI influences) while the gate
    /// wants a person: opens the task, or keeps waiting on it. `None` when it may go ahead: it
    /// is no operation, its task was approved, or the gate let it run.
    fn hold_for_gate(&mut self, state: &mut CaseState, step: &Step) -> Option<Flow> {
        let operation = step.operation()?;
        let this_step = |t: &crate::gate::TaskProgress| t.step == step.id;
        if state
            .task
            .as_ref()
            .is_some_and(|t| this_step(t) && t.approved)
        {
            return None;
        }
        let task_open = state.task.as_ref().is_some_and(this_step);
        if !task_open && !self.gate(state, step, operation) {
            return None;
        }
        let preview = self.preview(state, step);
        let (kind, title) = match &step.kind {
            StepKind::End(end) => (
                "outcome",
                format!(
                    "Confirm the outcome `{}` decided with AI output",
                    end.outcome
                ),
            ),
            _ => (
                "action",
                format!("Approve action `{}` using AI output", step.id),
            ),
        };
        Some(self.open_task(
            state,
            step,
            operation.gate,
            kind,
            title,
            operation.uses_ai.to_vec(),
            preview,
        ))
    }

    /// What a person sees of an operation: the rendered request of an action, the outcome
    /// of an `end`.
    fn preview(&self, state: &CaseState, step: &Step) -> Value {
        match &step.kind {
            StepKind::Action(action) => {
                match render_request(&self.activation(state), step, action, 0, String::new()) {
                    Ok(request) => {
                        json!({"method": request.method, "url": request.url, "body": request.body})
                    }
                    Err(message) => json!({"unrenderable": message}),
                }
            }
            StepKind::End(end) => json!({"outcome": end.outcome}),
            _ => Value::Null,
        }
    }

    /// Runs the trust gate for an operation once per visit; returns whether it waits for a
    /// person. An automatic one that is sampled opens a review task that does not hold the
    /// case (`task.created`, kind `review`), decided later as evidence.
    fn gate(
        &mut self,
        state: &mut CaseState,
        step: &Step,
        operation: crate::workflow::Operation<'_>,
    ) -> bool {
        if let Some(record) = state.gate.as_ref().filter(|g| g.step == step.id) {
            return record.decision == "task";
        }
        let phase = self
            .phases
            .get(&step.id)
            .copied()
            .unwrap_or(operation.trust.phase);
        let decision = crate::gate::decide(
            operation.trust,
            phase,
            &self.activation(state),
            &state.id,
            &step.id,
        );
        let name = format!("{}/{}", self.workflow.name, step.id);
        let mut gate_data = json!({ "operation": name, "phase": phase, "decision": decision.decision,
            "reason": decision.reason, "review_sampled": decision.review_sampled,
            "review_rate": decision.review_rate });
        if !decision.needs_task() {
            // What an automatic decision let through, as it was at the gate: a demotion turns
            // the unreviewed ones into retro-review tasks from this record.
            gate_data["proposals"] = Value::Object(self.proposals(state, operation.uses_ai));
            gate_data["action"] = self.preview(state, step);
            gate_data["ai_steps"] = json!(operation.uses_ai);
            gate_data["roles"] = json!(operation.gate.roles);
            gate_data["submitted_by"] = json!(state.submitted_by);
        }
        self.emit("trust.gate", Some(step.id.clone()), gate_data);
        state.gate = Some(GateRecord {
            step: step.id.clone(),
            decision: decision.decision.to_string(),
            phase,
            reason: decision.reason.clone(),
            review_sampled: decision.review_sampled,
        });
        if decision.needs_task() {
            return true;
        }
        if decision.review_sampled {
            let proposals = self.proposals(state, operation.uses_ai);
            let preview = self.preview(state, step);
            let what = match &step.kind {
                StepKind::End(_) => "outcome",
                _ => "action",
            };
            self.emit(
                "task.created",
                Some(step.id.clone()),
                json!({
                    "task_id": format!("{}.{}.review", state.id, step.id), "kind": "review",
                    "title": format!("Review the automatic {what} `{}` (phase {phase})", step.id),
                    "required": 1, "roles": operation.gate.roles, "amount": null, "due_ms": null,
                    "proposals": proposals, "action": preview, "submitted_by": state.submitted_by,
                    "operation": name, "phase": phase, "ai_steps": operation.uses_ai,
                }),
            );
        }
        false
    }

    /// The current proposal of each of `ai_steps` (`data.<into>`), by step id.
    fn proposals(&self, state: &CaseState, ai_steps: &[String]) -> serde_json::Map<String, Value> {
        ai_steps
            .iter()
            .filter_map(|ai_step| {
                let into = match find_step(self.workflow, ai_step).map(|s| &s.kind) {
                    Some(StepKind::Ai(ai)) => ai.into.clone(),
                    _ => return None,
                };
                Some((
                    ai_step.clone(),
                    state.data.get(&into).cloned().unwrap_or(Value::Null),
                ))
            })
            .collect()
    }

    /// Journals a pre-approval review of an operation as evidence (`outcome.reviewed`).
    fn review_outcome(
        &mut self,
        state: &CaseState,
        task: &crate::gate::TaskProgress,
        verdict: &str,
        by: &[&str],
    ) {
        if task.kind == "approval" || task.ai_steps.is_empty() {
            return;
        }
        let proposals = self.proposals(state, &task.ai_steps);
        let first = proposals.values().next().cloned().unwrap_or(Value::Null);
        let proposed = first.get("proposed_output").unwrap_or(&first["output"]);
        let proposed_label = proposed["label"].as_str().map(str::to_string);
        let final_label = if verdict == "rejected" {
            Some("rejected".to_string())
        } else {
            first["output"]["label"].as_str().map(str::to_string)
        };
        let raw_confidence = first
            .get("raw_confidence")
            .unwrap_or(&first["confidence"])
            .clone();
        let ai_step = task
            .ai_steps
            .first()
            .map(|step| format!("{}/{step}", self.workflow.name));
        let phase = state
            .gate
            .as_ref()
            .filter(|g| g.step == task.step)
            .map_or(1, |g| g.phase);
        self.emit(
            "outcome.reviewed",
            Some(task.step.clone()),
            json!({ "operation": format!("{}/{}", self.workflow.name, task.step),
                "task_id": task.id, "source": "pre", "verdict": verdict, "phase": phase,
                "by": by, "model": first["model"], "confidence": raw_confidence,
                "confidence_method": first["confidence_method"], "cost_usd": first["cost_usd"],
                "ai_step": ai_step, "proposed_label": proposed_label, "final_label": final_label,
                "learner_version": first.get("learner_version") }),
        );
    }

    /// Applies a person's decision on the open task; `None` to drive on.
    fn task_decision(
        &mut self,
        state: &mut CaseState,
        task_id: &str,
        decider: crate::gate::Decider,
        decision: crate::gate::TaskDecision,
    ) -> Option<Command> {
        use crate::gate::TaskDecision;
        let step_id = state.step.clone();
        let Some(task) = state.task.clone().filter(|t| t.id == task_id) else {
            self.emit(
                "task.decision_refused",
                step_id,
                json!({ "task_id": task_id, "by": decider.user, "decision": decision.keyword(),
                    "code": "task_not_open", "message": "the case has no open task with this id" }),
            );
            return Some(current_command(state));
        };
        let refusal =
            crate::gate::check_decision(&task, &decider, &decision, state.submitted_by.as_deref())
                .err()
                .or_else(|| self.correction_problem(state, &task, &decision));
        if let Some(refusal) = refusal {
            self.emit(
                "task.decision_refused",
                step_id,
                json!({ "task_id": task_id, "by": decider.user, "roles": decider.roles,
                    "decision": decision.keyword(), "code": refusal.code, "message": refusal.message }),
            );
            return Some(current_command(state));
        }
        let step = find_step(self.workflow, &task.step)?;
        match decision {
            TaskDecision::Reject { reason } => {
                self.emit(
                    "task.completed",
                    step_id.clone(),
                    json!({ "task_id": task_id, "decision": "rejected", "by": [decider.user], "reason": reason }),
                );
                self.review_outcome(state, &task, "rejected", &[decider.user.as_str()]);
                if let StepKind::Approval(approval) = &step.kind {
                    set_data(
                        state,
                        &approval.into,
                        json!({"decision": "rejected", "by": [decider.user], "reason": reason}),
                    );
                    if let Some(target) = approval.on_reject.clone() {
                        return self.goto(state, target);
                    }
                }
                let message = format!("`{}` rejected the task: {reason}", decider.user);
                let exception_id = resolve::open_exception(state);
                self.emit(
                    "exception.raised",
                    step_id.clone(),
                    json!({ "exception_id": exception_id, "kind": "rejected", "message": message, "task_id": task_id, "data": state.data }),
                );
                state.status = Status::Exception;
                state.error = Some(CaseError {
                    kind: "rejected".into(),
                    step: step_id,
                    message,
                    details: json!({ "task_id": task_id, "reason": reason }),
                });
                Some(Command::Stop)
            }
            TaskDecision::Approve { .. } | TaskDecision::Correct { .. } => {
                let keyword = decision.keyword();
                if let TaskDecision::Correct {
                    output,
                    step: ai_step,
                    ..
                } = &decision
                {
                    self.apply_correction(
                        state,
                        &task,
                        ai_step.as_deref(),
                        output.clone(),
                        &decider.user,
                    );
                }
                let mut task = task;
                task.approvals.push(crate::gate::TaskApproval {
                    by: decider.user.clone(),
                    at_ms: self.now_ms,
                    decision: keyword.to_string(),
                });
                self.emit(
                    "task.approval_recorded",
                    step_id.clone(),
                    json!({ "task_id": task_id, "by": decider.user, "decision": keyword,
                        "approvals": task.approvals.len(), "required": task.required }),
                );
                if (task.approvals.len() as u32) < task.required {
                    let due = task.due_ms;
                    state.task = Some(task);
                    return Some(due.map_or(Command::Stop, |until_ms| Command::Sleep { until_ms }));
                }
                let by: Vec<&str> = task.approvals.iter().map(|a| a.by.as_str()).collect();
                let corrected = task.approvals.iter().any(|a| a.decision == "correct");
                let outcome = if corrected { "corrected" } else { "approved" };
                self.emit(
                    "task.completed",
                    step_id,
                    json!({ "task_id": task_id, "decision": outcome, "by": by }),
                );
                let verdict = if corrected { "corrected" } else { "agree" };
                self.review_outcome(state, &task, verdict, &by);
                if let StepKind::Approval(approval) = &step.kind {
                    set_data(
                        state,
                        &approval.into,
                        json!({"decision": outcome, "by": by}),
                    );
                    let next = step.next.clone().unwrap_or_default();
                    return self.goto(state, next);
                }
                task.approved = true;
                state.task = Some(task);
                None
            }
        }
    }

    /// Why a correction cannot be applied (no AI proposal, an ambiguous or unknown step, an
    /// output that fails the step's schema or checks), if it cannot.
    fn correction_problem(
        &self,
        state: &CaseState,
        task: &crate::gate::TaskProgress,
        decision: &crate::gate::TaskDecision,
    ) -> Option<crate::gate::Refusal> {
        let crate::gate::TaskDecision::Correct { output, step, .. } = decision else {
            return None;
        };
        let refuse = |message: String| {
            Some(crate::gate::Refusal {
                code: "invalid_correction",
                message,
            })
        };
        let ai_step = match (step, task.ai_steps.as_slice()) {
            (Some(step), steps) if steps.contains(step) => step.clone(),
            (Some(step), _) => {
                return refuse(format!("the task does not use a proposal of step `{step}`"))
            }
            (None, [only]) => only.clone(),
            (None, []) => {
                return refuse("there is no AI proposal to correct; approve or reject".into())
            }
            (None, _) => {
                return refuse(format!(
                    "name the step whose proposal you correct: one of {:?}",
                    task.ai_steps
                ))
            }
        };
        let Some(StepKind::Ai(ai)) = find_step(self.workflow, &ai_step).map(|s| &s.kind) else {
            return refuse(format!("step `{ai_step}` is not an `ai` step"));
        };
        if let Err(violations) = ai.output_schema.validate(output) {
            let problems: Vec<String> = violations
                .iter()
                .map(|v| format!("{} {}", v.path, v.message))
                .collect();
            return refuse(format!(
                "the corrected output does not match the step's schema: {}",
                problems.join("; ")
            ));
        }
        let mut activation = self.activation(state);
        activation.set("output", output);
        for check in &ai.checks {
            match check.expr.eval_bool(&activation) {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(format!(
                        "the corrected output fails a check: {}",
                        check.message
                    ))
                }
                Err(error) => return refuse(format!("a check could not be evaluated: {error}")),
            }
        }
        None
    }

    /// Replaces the proposal's output by the corrected one and journals the labelled outcome.
    fn apply_correction(
        &mut self,
        state: &mut CaseState,
        task: &crate::gate::TaskProgress,
        ai_step: Option<&str>,
        output: Value,
        by: &str,
    ) {
        let Some(ai_step) = ai_step
            .map(str::to_string)
            .or_else(|| task.ai_steps.first().cloned())
        else {
            return;
        };
        let Some(StepKind::Ai(ai)) = find_step(self.workflow, &ai_step).map(|s| &s.kind) else {
            return;
        };
        let mut proposal = state.data.get(&ai.into).cloned().unwrap_or(Value::Null);
        let proposed = proposal.get("output").cloned().unwrap_or(Value::Null);
        self.emit(
            "outcome.labelled",
            Some(ai_step.clone()),
            json!({ "task_id": task.id, "by": by, "source": "correction",
                "model": proposal.get("model"), "confidence": proposal.get("confidence"),
                "confidence_method": proposal.get("confidence_method"),
                "proposed": proposed, "corrected": output, "agreed": proposed == output }),
        );
        if let Value::Object(fields) = &mut proposal {
            fields.insert("output".into(), output);
            fields.insert("proposed_output".into(), proposed);
            fields.insert("corrected_by".into(), json!(by));
        }
        set_data(state, &ai.into, proposal);
    }

    fn wait(&mut self, state: &mut CaseState, step: &Step, wait: &Wait) -> Flow {
        let id = Some(step.id.clone());
        let next = step.next.clone().unwrap_or_default();
        let due = match (wait, state.wait_until_ms) {
            (_, Some(due)) => due,
            (Wait::For(duration), None) => {
                state.step_entered_at_ms.saturating_add(duration.0 as i64)
            }
            (Wait::Signal { timeout, .. }, None) => {
                state.step_entered_at_ms.saturating_add(timeout.0 as i64)
            }
            (Wait::Until(expr), None) => match expr
                .eval(&self.activation(state))
                .map(|v| parse_timestamp_ms(&v))
            {
                Ok(Some(due)) => due,
                Ok(None) => {
                    let message = format!(
                        "`until` expression `{}` did not give a timestamp",
                        expr.source()
                    );
                    return Flow::Stop(self.fail(state, "expression_error", message, Value::Null));
                }
                Err(error) => return Flow::Stop(self.expression_failed(state, expr, error)),
            },
        };
        if let Wait::Signal {
            name,
            into,
            timeout_goto,
            ..
        } = wait
        {
            if let Some(payload) = state.signals.remove(name) {
                self.emit(
                    "step.completed",
                    id,
                    json!({ "kind": "wait", "signal": name }),
                );
                set_data(state, into, payload);
                return Flow::Goto(next);
            }
            if self.now_ms >= due {
                return match timeout_goto {
                    Some(target) => {
                        self.emit(
                            "wait.timed_out",
                            id,
                            json!({ "signal": name, "goto": target }),
                        );
                        Flow::Goto(target.clone())
                    }
                    None => {
                        let message = format!("signal `{name}` did not arrive before the timeout");
                        Flow::Stop(self.fail(
                            state,
                            "signal_timeout",
                            message,
                            json!({ "signal": name }),
                        ))
                    }
                };
            }
        } else if self.now_ms >= due {
            self.emit(
                "timer.fired",
                id,
                json!({ "due_ms": due, "late_ms": self.now_ms - due }),
            );
            return Flow::Goto(next);
        }
        if state.wait_until_ms.is_none() {
            let on = match wait {
                Wait::Signal { name, .. } => json!({ "signal": name }),
                _ => json!({ "timer": true }),
            };
            self.emit("wait.started", id, json!({ "until_ms": due, "for": on }));
            state.wait_until_ms = Some(due);
        }
        state.status = Status::Waiting;
        Flow::Stop(Command::Sleep { until_ms: due })
    }
}

/// Exponential backoff for the retry after `attempt`, scaled into [50%, 100%] by `jitter`.
pub fn backoff_ms(action: &Action, attempt: u32, jitter: f64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(20);
    let base = action
        .retry
        .initial_backoff
        .0
        .saturating_mul(1u64 << exponent);
    let capped = base.min(action.retry.max_backoff.0);
    let jitter = jitter.clamp(0.0, 1.0);
    (capped as f64 * (0.5 + 0.5 * jitter)) as u64
}

fn set_data(state: &mut CaseState, name: &str, value: Value) {
    if !state.data.is_object() {
        state.data = Value::Object(Map::new());
    }
    if let Value::Object(map) = &mut state.data {
        map.insert(name.to_string(), value);
    }
}

/// Renders an action's request for display (a task's preview): nothing is kept or sent.
fn render_request(
    act: &Activation,
    step: &Step,
    action: &Action,
    attempt: u32,
    key: String,
) -> Result<ActionRequest, String> {
    let (url, headers, body) = render_parts(act, action)?;
    Ok(ActionRequest {
        step: step.id.clone(),
        attempt,
        visit: 0,
        idempotency_key: key,
        method: action.method.as_str().to_string(),
        url,
        headers,
        body_json: body.as_ref().map(serialize_body).transpose()?,
        body,
        timeout_ms: action.timeout.0,
    })
}

/// Renders the request of a new visit, once: the body is serialized here, and these bytes
/// are what every attempt of the visit sends.
fn render_visit(act: &Activation, action: &Action) -> Result<VisitRequest, String> {
    let (url, headers, body) = render_parts(act, action)?;
    Ok(VisitRequest {
        method: action.method.as_str().to_string(),
        url,
        headers,
        body: body.as_ref().map(serialize_body).transpose()?,
    })
}

/// An action's URL, headers and body, rendered.
type RenderedParts = (String, Vec<(String, String)>, Option<Value>);

/// The URL, headers and body of an action rendered from the case as it is now.
fn render_parts(act: &Activation, action: &Action) -> Result<RenderedParts, String> {
    let url = render_template(act, &action.url)?;
    let mut headers = Vec::with_capacity(action.headers.len());
    for (name, template) in &action.headers {
        headers.push((name.clone(), render_template(act, template)?));
    }
    let body = match &action.body {
        Some(template) => Some(render_json(act, template)?),
        None => None,
    };
    Ok((url, headers, body))
}

fn serialize_body(body: &Value) -> Result<String, String> {
    serde_json::to_string(body)
        .map_err(|error| format!("the body could not be serialized: {error}"))
}

/// The attempt `progress.attempt` of the visit whose kept request is `request`.
fn command_of(
    step: &Step,
    action: &Action,
    progress: &ActionProgress,
    request: &VisitRequest,
) -> ActionRequest {
    ActionRequest {
        step: step.id.clone(),
        attempt: progress.attempt,
        visit: progress.visit,
        idempotency_key: progress.idempotency_key.clone(),
        method: request.method.clone(),
        url: request.url.clone(),
        headers: request.headers.clone(),
        body: request
            .body
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
        body_json: request.body.clone(),
        timeout_ms: action.timeout.0,
    }
}

fn render_template(act: &Activation, template: &Template) -> Result<String, String> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Hole(expr) => match expr.eval(act) {
                Ok(Value::String(text)) => out.push_str(&text),
                Ok(other) => out.push_str(&other.to_string()),
                Err(error) => {
                    return Err(format!(
                        "template hole `${{{}}}` failed: {error}",
                        expr.source()
                    ))
                }
            },
        }
    }
    Ok(out)
}

fn render_json(act: &Activation, template: &JsonTemplate) -> Result<Value, String> {
    Ok(match template {
        JsonTemplate::Literal(value) => value.clone(),
        JsonTemplate::String(template) => match template.parts.as_slice() {
            [TemplatePart::Hole(expr)] => expr.eval(act).map_err(|error| {
                format!("template hole `${{{}}}` failed: {error}", expr.source())
            })?,
            _ => Value::String(render_template(act, template)?),
        },
        JsonTemplate::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_json(act, item))
                .collect::<Result<_, _>>()?,
        ),
        JsonTemplate::Object(fields) => {
            let mut map = Map::new();
            for (name, field) in fields {
                map.insert(name.clone(), render_json(act, field)?);
            }
            Value::Object(map)
        }
    })
}

/// Milliseconds since the epoch from a JSON timestamp: an RFC 3339 string or a number of ms.
fn parse_timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis()),
        Value::Number(number) => number.as_i64(),
        _ => None,
    }
}

pub fn millis_to_datetime(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[path = "case_resolve.rs"]
mod resolve;
pub use resolve::Resolution;

#[cfg(test)]
#[path = "case_tests.rs"]
mod tests;
