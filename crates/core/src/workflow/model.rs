//! The workflow model: what a checked workflow file means, independent of YAML.
//!
//! Values of these types are produced only by `workflow::parse` after every check passed, so
//! the engine can rely on their invariants: step ids are unique, every `goto` names a step,
//! every expression compiled, every schema is valid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::expr::Expr;
use crate::schema::Schema;

/// A checked workflow, one file's worth.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// `name:` — lowercase letters, digits, `-` and `_`; the unit of versioning.
    pub name: String,
    /// `version:` as written by the author (free text such as `"3"` or `"2026-11-27"`).
    pub version: String,
    /// `description:` if any.
    pub description: Option<String>,
    /// The input JSON Schema (inline, or loaded from the relative file named by `input: {schema_file: …}`).
    pub input_schema: Schema,
    /// Workflow-level deadline, counted from case creation.
    pub sla: Option<DurationMs>,
    /// `sla: { business: 2d }`: the deadline counts working time on `calendar`.
    pub sla_business: bool,
    /// `calendar:` — the business calendar that `due: { business: … }` counts in.
    pub calendar: Option<crate::calendar::Calendar>,
    /// `on_failure:` — what a step failure does to the case.
    pub on_failure: OnFailure,
    /// `change:` — who wrote this version and who approved it (change control).
    pub change: Option<ChangeRecord>,
    /// Steps in file order; execution starts at `steps[0]`.
    pub steps: Vec<Step>,
    /// `monitor:` — features whose drift between a reference and a current window is watched.
    pub monitor: Option<crate::monitor::Monitor>,
    /// SHA-256 (hex) of the file's bytes: two deployments of the same bytes are the same version.
    pub source_sha256: String,
}

/// `change: { author: ana, reference: CHG-1234 }`: recorded with the version and with every
/// trust reset it causes. The author may not approve the version (a version that changes what
/// decides waits for a governor's approval in Keel, never in the file) nor its operations'
/// promotions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRecord {
    pub author: String,
    #[serde(default)]
    pub reference: Option<String>,
}

/// What a step failure (a connector error after its retries, a failed validation, an
/// expression error, a signal timeout, the loop guard) does to the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Park the case on an exception for a person (retry, provide the output, skip, cancel).
    #[default]
    Exception,
    /// End the case `failed` at once (for flows where nobody would act on it).
    Fail,
}

/// Milliseconds; parsed from `500ms`, `30s`, `5m`, `2h`, `1d` and combinations like `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DurationMs(pub u64);

#[derive(Debug, Clone)]
pub struct Step {
    /// Unique within the workflow: `[a-z0-9_-]+`.
    pub id: String,
    pub kind: StepKind,
    /// Step-level deadline, counted from when the step was entered.
    pub sla: Option<DurationMs>,
    /// `sla: { business: 1h }`: the deadline counts working time on the workflow's calendar.
    pub sla_business: bool,
    /// Where to go after this step: `next:` if written, else the following step in file order.
    /// `None` only for `end` and `switch` (which carry their own targets).
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Validate(Validate),
    Switch(Switch),
    Decide(Decide),
    Set(Set),
    Action(Action),
    Ai(Ai),
    Wait(Wait),
    Approval(Approval),
    End(End),
}

impl StepKind {
    /// The YAML keyword of this kind, for messages and the journal.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Validate(_) => "validate",
            StepKind::Switch(_) => "switch",
            StepKind::Decide(_) => "decide",
            StepKind::Set(_) => "set",
            StepKind::Action(_) => "action",
            StepKind::Ai(_) => "ai",
            StepKind::Wait(_) => "wait",
            StepKind::Approval(_) => "approval",
            StepKind::End(_) => "end",
        }
    }
}

/// `validate:` — the case data must satisfy a JSON Schema (over `input`) and CEL assertions.
#[derive(Debug, Clone)]
pub struct Validate {
    pub schema: Option<Schema>,
    pub assertions: Vec<Assertion>,
}

#[derive(Debug, Clone)]
pub struct Assertion {
    /// Must evaluate to a bool; `false` fails the assertion.
    pub expr: Expr,
    pub message: String,
}

/// `switch:` — the first `when` that evaluates to true decides the next step.
#[derive(Debug, Clone)]
pub struct Switch {
    pub cases: Vec<SwitchCase>,
    /// Required.
    pub default: String,
}

#[derive(Debug, Clone)]
pub struct SwitchCase {
    pub when: Expr,
    pub goto: String,
}

/// `decide:` — a decision table. Columns are CEL conditions; each rule has one cell per column
/// (`true`, `false` or `"-"` for either) and an output object.
#[derive(Debug, Clone)]
pub struct Decide {
    pub hit: HitPolicy,
    pub columns: Vec<Expr>,
    pub rules: Vec<Rule>,
    /// Output when no rule matches (policy `first`); with `collect` no match yields `[]`.
    pub default: Option<serde_json::Value>,
    /// The result is stored at `data.<into>`.
    pub into: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HitPolicy {
    First,
    Collect,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// One per column: `Some(b)` must equal the column's value, `None` (`"-"`) matches either.
    pub when: Vec<Option<bool>>,
    pub then: serde_json::Value,
}

/// `set:` — named values computed by CEL, stored at `data.<name>` in order (later ones see earlier ones).
#[derive(Debug, Clone)]
pub struct Set {
    pub values: Vec<(String, Expr)>,
}

/// `action:` — an HTTP call to another system.
#[derive(Debug, Clone)]
pub struct Action {
    pub method: HttpMethod,
    /// A template: literal text with `${ cel }` holes.
    pub url: Template,
    pub headers: BTreeMap<String, Template>,
    /// A JSON value in which every string is a template; a string that is exactly one hole
    /// (`"${ input.amount }"`) takes the expression's JSON value, not its text.
    pub body: Option<JsonTemplate>,
    pub timeout: DurationMs,
    pub retry: RetryPolicy,
    /// Checked against the response body (JSON) when present.
    pub response_schema: Option<Schema>,
    /// The response `{status, body}` is stored at `data.<into>`; defaults to the step id.
    pub into: String,
    /// The `ai` steps whose output influences this action, by data or by control, in step
    /// order (`workflow::influence`). Such an action is an operation: it waits for the
    /// oversight its trust level demands (`crate::gate`), unless `trust.gate: none`.
    pub uses_ai: Vec<String>,
    /// How each of `uses_ai` reaches the action (one entry per distinct path).
    pub influence: Vec<Influence>,
    /// How a person approves it when gated (`approval:` on the action; defaults otherwise).
    pub gate: Gate,
    /// Progressive trust of this operation (`trust:` on the action; safe defaults otherwise).
    pub trust: Box<crate::trust::TrustConfig>,
}

/// Who must approve, how many, and by when: on an `approval` step or a gated `action`.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Approvals from distinct people needed (1..=10, default 1).
    pub required: u32,
    /// Roles allowed to decide (default `reviewer`); `admin` may always decide.
    pub roles: Vec<String>,
    /// CEL giving the amount at stake; an approver's approval limit must be at least this.
    pub limit: Option<Expr>,
    /// The task falls due this long after it is created (default none).
    pub due: Option<DurationMs>,
    /// `due: { business: 4h }`: `due` counts working time on the workflow's `calendar`.
    pub due_business: bool,
    /// Roles that may also decide once the task is overdue (`escalate_to: [governor]`).
    pub escalate_to: Vec<String>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            required: 1,
            roles: vec!["reviewer".to_string()],
            limit: None,
            due: None,
            due_business: false,
            escalate_to: Vec::new(),
        }
    }
}

/// `approval:` — an explicit human gate: a task that people approve or reject.
#[derive(Debug, Clone)]
pub struct Approval {
    /// What the reviewer is asked, shown on the task.
    pub title: String,
    pub gate: Gate,
    /// The decision `{decision, by, reason}` is stored at `data.<into>`; default the step id.
    pub into: String,
    /// Where a rejection goes; without it a rejection raises a `rejected` exception.
    pub on_reject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// Bounded retries with exponential backoff and full jitter on timeouts, connection errors and 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1..=10, default 3.
    pub max_attempts: u32,
    /// Default 200ms.
    pub initial_backoff: DurationMs,
    /// Default 10s.
    pub max_backoff: DurationMs,
}

/// A string with `${ cel }` holes, compiled.
#[derive(Debug, Clone)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone)]
pub enum TemplatePart {
    Literal(String),
    Hole(Expr),
}

/// A JSON value whose strings are templates.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    Literal(serde_json::Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

/// `ai:` — a model task behind deterministic validation: the prompt is rendered from case data,
/// the answer must match `output_schema` and pass every check, and the `route` is a cascade of
/// models tried in order until one answer is accepted. The accepted proposal is stored at
/// `data.<into>` as `{output, confidence, confidence_method, model, tier}`.
#[derive(Debug, Clone)]
pub struct Ai {
    pub task: AiTask,
    /// A minijinja template for the system message, if any.
    pub system: Option<Prompt>,
    /// A minijinja template for the user message; sees `input`, `data` and `case`.
    pub prompt: Prompt,
    /// The JSON Schema every answer must match. For `classify` it is derived from the labels
    /// (`{"label": one of labels}`); for `generate` without one, the answer is `{"text": …}`.
    pub output_schema: Schema,
    /// CEL conditions over `output` (and `input`, `data`, `case`, `now`); each must be true.
    pub checks: Vec<Assertion>,
    /// How many times one model is asked again, told what was wrong, after an answer fails the
    /// schema or a check (0..=3, default 1).
    pub reask: u32,
    /// k > 1: when a model returns no log-probabilities, ask it k − 1 more times and use the
    /// agreement of the k answers as the confidence (1..=9, default 1). The extra samples run
    /// at this temperature, or at 0.7 when it is 0 or unset, and are never cached.
    pub samples: u32,
    /// Default 0 (and then the response cache applies to the first answer).
    pub temperature: Option<f64>,
    pub max_tokens: u32,
    /// The cascade, cheapest first. Non-empty.
    pub route: Vec<Tier>,
    pub into: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AiTask {
    Classify { labels: Vec<String> },
    Extract,
    Generate,
}

impl AiTask {
    pub fn keyword(&self) -> &'static str {
        match self {
            AiTask::Classify { .. } => "classify",
            AiTask::Extract => "extract",
            AiTask::Generate => "generate",
        }
    }
}

/// A prompt template: its source, checked by `keel check`, and the SHA-256 (hex) of the source
/// that the journal records with every call.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub source: String,
    pub sha256: String,
}

/// One tier of a cascade.
#[derive(Debug, Clone)]
pub struct Tier {
    /// A model declared in `keel.toml`.
    pub model: String,
    /// CEL over `confidence`, `output`, `cost` (USD spent on this step so far), `tier` and the
    /// case variables; absent means any valid answer is accepted.
    pub accept_when: Option<Expr>,
}

/// `wait:` — a durable timer or an external signal.
#[derive(Debug, Clone)]
pub enum Wait {
    /// `for: 2h` — fires that long after the step was entered.
    For(DurationMs),
    /// `until: <cel>` — a CEL expression that yields a timestamp (or an RFC 3339 string).
    Until(Expr),
    /// `signal: name` with a required `timeout:`; the signal's JSON payload is stored at
    /// `data.<into>` (default: the signal name). On timeout the case goes to `timeout_goto`
    /// if given, else it fails with a `signal_timeout` error.
    Signal {
        name: String,
        timeout: DurationMs,
        into: String,
        timeout_goto: Option<String>,
    },
}

/// `end:` — the case finishes with this outcome. An `end` that AI output decides (reached
/// only through a branch an `ai` step influences) is an operation like an action: a person
/// confirms the outcome in phase 1.
#[derive(Debug, Clone)]
pub struct End {
    pub outcome: String,
    /// The `ai` steps that decide whether the case ends here (`workflow::influence`).
    pub uses_ai: Vec<String>,
    /// How each of `uses_ai` reaches this end.
    pub influence: Vec<Influence>,
    /// Who confirms the outcome when it is gated (`approval:` on the end).
    pub gate: Gate,
    /// Progressive trust of this operation (`trust:` on the end).
    pub trust: Box<crate::trust::TrustConfig>,
}

/// One way an `ai` step's output reaches an operation: the chain of steps it flows through,
/// e.g. `["classify", "copy.verdict", "act_copy.body"]` (data) or `["classify",
/// "route (switch)", "delete_mail"]` (control).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Influence {
    pub ai_step: String,
    pub path: Vec<String>,
}

impl Influence {
    /// The path as one line: `classify → copy.verdict → act_copy.body`.
    pub fn describe(&self) -> String {
        self.path.join(" → ")
    }
}

/// What the trust gate works from at an `action` or `end` step.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'s> {
    pub uses_ai: &'s [String],
    pub influence: &'s [Influence],
    pub gate: &'s Gate,
    pub trust: &'s crate::trust::TrustConfig,
}

impl Operation<'_> {
    /// AI influences the step and it is not declared ungated (`trust: { gate: none }`).
    pub fn is_gated(&self) -> bool {
        !self.uses_ai.is_empty() && self.trust.ungated.is_none()
    }
}

impl Step {
    /// The gate's parts of an `action` or `end`, whether or not AI influences it.
    pub fn gate_parts(&self) -> Option<Operation<'_>> {
        match &self.kind {
            StepKind::Action(action) => Some(Operation {
                uses_ai: &action.uses_ai,
                influence: &action.influence,
                gate: &action.gate,
                trust: &action.trust,
            }),
            StepKind::End(end) => Some(Operation {
                uses_ai: &end.uses_ai,
                influence: &end.influence,
                gate: &end.gate,
                trust: &end.trust,
            }),
            _ => None,
        }
    }

    /// The step as an operation under progressive trust, if it is one.
    pub fn operation(&self) -> Option<Operation<'_>> {
        self.gate_parts().filter(Operation::is_gated)
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, 200ms initial backoff, 10s maximum.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: DurationMs(200),
            max_backoff: DurationMs(10_000),
        }
    }
}
