//! The workflow parser and checker: YAML text in, a [`Workflow`] or every problem out.
//!
//! # The format
//!
//! ```yaml
//! name: invoice-approval           # required; [a-z0-9_-]+
//! version: "3"                     # required; free text (numbers are taken as written)
//! description: Approve invoices    # optional
//! sla: 2d                          # optional; deadline from case creation
//! change: { author: ana, reference: CHG-1234 }   # optional; approval is given in Keel
//! on_failure: exception            # default: a failed step parks the case on an exception
//!                                  # for a person; `fail` ends the case `failed` instead
//! input:                           # required: the input JSON Schema, inline …
//!   schema: { type: object, required: [amount], properties: { amount: { type: number } } }
//! # … or  input: { schema_file: schemas/invoice.json }   (relative to the workflow file)
//! steps:                           # required, non-empty; execution starts at the first
//!   - id: check                    # required; [a-z0-9_-]+, unique
//!     sla: 1h                      # optional on every step; deadline from entering it
//!     next: route                  # optional on every step except `switch` and `end`;
//!                                  # default: the following step
//!     validate:                    # JSON Schema over `input` (`schema` or `schema_file`)
//!       schema: {…}                # and/or CEL assertions (a bare string is an assertion too)
//!       assert:
//!         - { expr: "input.amount > 0", message: "amount must be positive" }
//!   - id: route
//!     decide:                      # a decision table
//!       hit: first                 # default; or `collect` (a list of every matching output)
//!       columns: ["input.amount > 10000", "input.vendor.trusted"]
//!       rules:                     # cells: true, false or "-" (either)
//!         - { when: [true, "-"], then: { approver: cfo } }
//!         - { when: [false, true], then: { approver: auto } }
//!       default: { approver: clerk }   # with `first` and no default, rules must cover
//!       into: routing              # every combination; `into` defaults to the step id
//!   - id: branch
//!     switch:                      # first true `when` wins; `default` is required and last
//!       - when: "data.routing.approver == 'auto'"
//!         goto: pay
//!       - default: review
//!   - id: enrich
//!     set: { total: "input.amount * 1.2", currency: "'EUR'" }   # CEL, in order
//!   - id: pay
//!     action:
//!       method: POST               # GET (default), POST, PUT, PATCH, DELETE
//!       url: "http://127.0.0.1:9000/payments/${input.id}"   # `${ cel }` holes
//!       headers: { X-Tenant: "${input.tenant}" }
//!       body: { amount: "${input.amount}", note: "invoice ${input.id}" }
//!       timeout: 10s               # default 30s, at most 10m
//!       retry: { max_attempts: 5, initial_backoff: 200ms, max_backoff: 10s }  # defaults 3, 200ms, 10s
//!       response_schema: {…}
//!       into: payment              # default: the step id
//!   - id: hold
//!     wait: { for: 2h }            # or { until: "timestamp(input.due_at)" }
//!                                  # or { signal: approved, timeout: 3d, into: approval, timeout_goto: done }
//!   - id: sign_off
//!     approval:                    # a task for people (actions that read an `ai` step's
//!       title: Approve the refund  #   output are gated the same way; their own `approval:`)
//!       required: 2                # distinct approvers (default 1)
//!       roles: [reviewer]          # default [reviewer]; admin may always decide
//!       limit: "double(input.amount)"  # approvers need an approval limit at least this
//!       due: 8h                    # or { business: 4h } on the workflow's `calendar:`
//!       on_reject: refused         # default: a rejection raises a `rejected` exception
//!   - id: done
//!     end: { outcome: paid }       # or just `end: paid`
//! ```
//!
//! `calendar: { time_zone: Europe/Berlin, working_days: [mon, tue, wed, thu, fri],
//! hours: ["09:00-17:00"], holidays: ["2026-12-25"] }` at the top level sets the business
//! calendar. `monitor:` lists features whose drift is watched (see [`crate::monitor`]).
//!
//! A body string that is exactly one hole (`"${input.amount}"`) keeps the JSON type of its
//! value. Durations: `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`. Expressions may use `input`,
//! `data`, `case` and `now`.
//!
//! Every problem is reported, not just the first, each with a stable code (see
//! [`CODES`]); warnings never make parsing fail.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::diagnostic::{Diagnostic, Span};
use super::model::{OnFailure, Workflow};
use super::steps::Draft;
pub(crate) use super::values::{Checker, Usage};
use super::yaml::{self, Node, Value};

/// Upper bound on a workflow file's size.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Upper bound on the number of steps.
pub const MAX_STEPS: usize = 500;

/// Every diagnostic code the checker emits.
pub const CODES: &[&str] = &[
    "io",
    "file-too-large",
    "yaml-syntax",
    "unknown-field",
    "missing-field",
    "wrong-type",
    "conflicting-fields",
    "invalid-name",
    "invalid-id",
    "invalid-identifier",
    "invalid-value",
    "invalid-duration",
    "out-of-range",
    "empty",
    "missing-step-kind",
    "next-not-allowed",
    "duplicate-step-id",
    "unknown-step",
    "unreachable-step",
    "falls-off-end",
    "switch-default",
    "invalid-expression",
    "unknown-variable",
    "not-bool",
    "invalid-schema",
    "schema-file",
    "decide-not-exhaustive",
    "decide-unchecked",
    "rule-arity",
    "invalid-cell",
    "ignored-field",
    "empty-validate",
    "retry-bounds",
    "invalid-url",
    "unclosed-hole",
    "invalid-template",
    "field-not-applicable",
    "invalid-calendar",
    "missing-calendar",
    "ungated-operation",
    "trust-settings",
    "change-approval",
];

const TOP_FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "sla",
    "calendar",
    "on_failure",
    "change",
    "input",
    "steps",
    "monitor",
];

/// The result of checking a workflow: the workflow when there is no error, and every
/// diagnostic (warnings included) sorted by position.
#[derive(Debug, Clone)]
pub struct Checked {
    pub workflow: Option<Workflow>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads `path` and the schema files it names (relative to its folder) and checks it.
pub fn check_file(path: &Path) -> Checked {
    let file = path.display().to_string();
    let failed = |message: String| Checked {
        workflow: None,
        diagnostics: vec![Diagnostic::new(
            super::diagnostic::Severity::Error,
            "io",
            &file,
            Span::point(1, 1),
            message,
            None,
        )],
    };
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() > MAX_FILE_BYTES as u64 => {
            return failed(format!("the file is larger than {MAX_FILE_BYTES} bytes"))
        }
        Ok(_) => {}
        Err(error) => return failed(format!("cannot read the workflow file: {error}")),
    }
    let source = match std::fs::read_to_string(path) {
        Ok(source) => source,
        Err(error) => return failed(format!("cannot read the workflow file: {error}")),
    };
    check_str(&source, &file, path.parent())
}

/// Checks workflow text; `base_dir` is where relative schema files are looked up.
pub fn check_str(source: &str, file: &str, base_dir: Option<&Path>) -> Checked {
    check(source, file, base_dir, false)
}

/// Parses a version stored by an earlier deployment. The rules a new version must pass have
/// grown (trust settings that cannot work are refused; `change.approved_by` is no longer
/// written in the file); a version already stored was accepted under the rules of its day
/// and cases may still run on it, so those two findings are warnings here, not errors.
pub fn parse_stored(
    source: &str,
    file: &str,
    base_dir: Option<&Path>,
) -> Result<Workflow, Vec<Diagnostic>> {
    into_result(check(source, file, base_dir, true))
}

fn check(source: &str, file: &str, base_dir: Option<&Path>, stored: bool) -> Checked {
    let mut checker = Checker {
        file,
        source,
        base_dir,
        diagnostics: Vec::new(),
        extra_variables: &[],
        ungated: Vec::new(),
        stored,
    };
    let workflow = checker.workflow();
    let mut diagnostics = checker.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let failed = diagnostics.iter().any(Diagnostic::is_error);
    Checked {
        workflow: if failed { None } else { workflow },
        diagnostics,
    }
}

/// Reads and checks a workflow file; warnings are dropped (use [`check_file`] to see them).
pub fn parse_file(path: &Path) -> Result<Workflow, Vec<Diagnostic>> {
    into_result(check_file(path))
}

/// Checks workflow text; warnings are dropped (use [`check_str`] to see them).
pub fn parse_str(
    source: &str,
    file: &str,
    base_dir: Option<&Path>,
) -> Result<Workflow, Vec<Diagnostic>> {
    into_result(check_str(source, file, base_dir))
}

fn into_result(checked: Checked) -> Result<Workflow, Vec<Diagnostic>> {
    match checked.workflow {
        Some(workflow) => Ok(workflow),
        None => Err(checked.diagnostics),
    }
}

impl Checker<'_> {
    fn workflow(&mut self) -> Option<Workflow> {
        if self.source.len() > MAX_FILE_BYTES {
            self.error(
                "file-too-large",
                Span::point(1, 1),
                format!(
                    "the file is {} bytes; the limit is {MAX_FILE_BYTES}",
                    self.source.len()
                ),
                "split the workflow, or move schemas to `schema_file`s".to_string(),
            );
            return None;
        }
        let root = match yaml::load(self.source) {
            Ok(root) => root,
            Err(error) => {
                let hint = if error.message.contains("duplicated key") {
                    "a key may appear only once in a mapping; remove or rename one"
                } else if error.message.contains("empty") {
                    "a workflow needs at least `name`, `version`, `input` and `steps`"
                } else {
                    "check indentation, quotes and brackets around here"
                };
                self.error(
                    "yaml-syntax",
                    error.span,
                    format!("invalid YAML: {}", error.message),
                    hint.to_string(),
                );
                return None;
            }
        };
        let fields = self.fields(
            &root,
            "the workflow",
            root.span,
            TOP_FIELDS,
            &["name", "version", "input", "steps"],
        )?;
        let name = fields
            .get("name")
            .and_then(|n| self.name(n, "workflow name", "invalid-name"));
        let version = fields.get("version").and_then(|n| self.version(n));
        let description = match fields.get("description") {
            Some(n) => self.string(n, "`description`").map(Some),
            None => Some(None),
        };
        let (sla, sla_business) = match fields.get("sla") {
            Some(n) => match self.sla(n, "`sla`") {
                Some((sla, business)) => (Some(Some(sla)), business),
                None => (None, false),
            },
            None => (Some(None), false),
        };
        let input_schema = match (fields.get("input"), fields.key_span("input")) {
            (Some(n), Some(key)) => self.input(n, key),
            _ => None,
        };
        let calendar = match fields.get("calendar") {
            None => Some(None),
            Some(n) => self
                .calendar(n, name.as_deref().unwrap_or("workflow"))
                .map(Some),
        };
        let on_failure = match fields.get("on_failure") {
            None => Some(OnFailure::Exception),
            Some(n) => match n.as_str() {
                Some("exception") => Some(OnFailure::Exception),
                Some("fail") => Some(OnFailure::Fail),
                _ => {
                    self.error(
                        "invalid-value",
                        n.span,
                        "`on_failure` is `exception` or `fail`".to_string(),
                        "`exception` (the default) parks a failed case for a person; `fail` ends it".to_string(),
                    );
                    None
                }
            },
        };
        let change = match fields.get("change") {
            None => Some(None),
            Some(n) if self.json(n).is_some_and(|v| v.get("approved_by").is_some()) => {
                self.error_unless_stored(
                    "change-approval",
                    n.span,
                    "`change.approved_by` cannot be written by the version's author".to_string(),
                    "remove it: a version that changes what decides waits for a governor who is not its author, who approves it in Keel (`keel workflow approve NAME VERSION --reason …`)".to_string(),
                );
                // A stored version keeps its author; the self-written approval is dropped.
                self.json(n)
                    .filter(|_| self.stored)
                    .and_then(|mut v| {
                        v.as_object_mut()?.remove("approved_by");
                        serde_json::from_value::<super::model::ChangeRecord>(v).ok()
                    })
                    .map(Some)
            }
            Some(n) => match self
                .json(n)
                .map(serde_json::from_value::<super::model::ChangeRecord>)
            {
                Some(Ok(record)) if !record.author.trim().is_empty() => Some(Some(record)),
                Some(Ok(_)) => {
                    self.error(
                        "invalid-value",
                        n.span,
                        "`change.author` is empty".to_string(),
                        "name the person who wrote this version".to_string(),
                    );
                    None
                }
                Some(Err(error)) => {
                    self.error(
                        "invalid-value",
                        n.span,
                        format!("`change` is not a change record: {error}"),
                        "write `change: { author: ana, reference: CHG-1234 }`".to_string(),
                    );
                    None
                }
                None => None,
            },
        };
        let steps = fields
            .get("steps")
            .and_then(|n| self.steps(n))
            .map(|mut steps| {
                super::influence::analyse(&mut steps);
                self.warn_ungated(&steps);
                steps
            });
        if let (Some(None), Some(steps), Some(span)) = (&calendar, &steps, fields.key_span("steps"))
        {
            if sla_business {
                self.error(
                    "missing-calendar",
                    span,
                    "the workflow's `sla` counts business time, but the workflow has no `calendar:`".to_string(),
                    "add e.g. `calendar: { time_zone: Europe/Berlin, working_days: [mon, tue, wed, thu, fri], hours: [\"09:00-17:00\"] }`".to_string(),
                );
            } else if let Some(step) = steps.iter().find(|step| business_due(step)) {
                self.error(
                    "missing-calendar",
                    span,
                    format!(
                        "step `{}` counts a deadline (`due` or `sla`) in business time, but the workflow has no `calendar:`",
                        step.id
                    ),
                    "add e.g. `calendar: { time_zone: Europe/Berlin, working_days: [mon, tue, wed, thu, fri], hours: [\"09:00-17:00\"] }`".to_string(),
                );
            }
        }
        let monitor = match (fields.get("monitor"), fields.key_span("monitor")) {
            (Some(n), Some(key)) => self.monitor(n, key, steps.as_deref()).map(Some),
            _ => Some(None),
        };
        Some(Workflow {
            name: name?,
            version: version?,
            description: description?,
            input_schema: input_schema?,
            sla: sla?,
            sla_business,
            calendar: calendar?,
            on_failure: on_failure?,
            change: change?,
            steps: steps?,
            monitor: monitor?,
            source_sha256: hex::encode(Sha256::digest(self.source.as_bytes())),
        })
    }

    /// `calendar:` — a business calendar (see `crate::calendar::CalendarSpec`).
    fn calendar(&mut self, node: &Node, name: &str) -> Option<crate::calendar::Calendar> {
        let json = self.json(node)?;
        let spec: crate::calendar::CalendarSpec = match serde_json::from_value(json) {
            Ok(spec) => spec,
            Err(error) => {
                self.error(
                    "invalid-calendar",
                    node.span,
                    format!("`calendar` is not a calendar: {error}"),
                    "write `calendar: { time_zone: Europe/Berlin, working_days: [mon, tue, wed, thu, fri], hours: [\"09:00-17:00\"], holidays: [\"2026-12-25\"] }`".to_string(),
                );
                return None;
            }
        };
        match crate::calendar::Calendar::from_spec(name, &spec) {
            Ok(calendar) => Some(calendar),
            Err(error) => {
                self.error(
                    "invalid-calendar",
                    node.span,
                    format!("`calendar`: {error}"),
                    "give an IANA time zone, working days, `HH:MM-HH:MM` hours and `YYYY-MM-DD` holidays".to_string(),
                );
                None
            }
        }
    }

    fn version(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(text) if !text.trim().is_empty() => Some(text.clone()),
            // Numbers are taken as written (`1.10` stays `1.10`).
            Value::Int(_) | Value::Float(_) => Some(self.raw_text(node)),
            _ => {
                self.wrong_type(node, "`version`", "a non-empty string such as \"3\"");
                None
            }
        }
    }

    fn raw_text(&self, node: &Node) -> String {
        let span = node.span;
        let text = self
            .source
            .lines()
            .nth(span.line.saturating_sub(1))
            .map(|line| {
                line.chars()
                    .skip(span.column.saturating_sub(1))
                    .take(span.end_column.saturating_sub(span.column))
                    .collect::<String>()
            })
            .unwrap_or_default();
        if text.trim().is_empty() {
            node.scalar_text().unwrap_or_default()
        } else {
            text.trim().to_string()
        }
    }

    fn input(&mut self, node: &Node, key: Span) -> Option<crate::schema::Schema> {
        let fields = self.fields(node, "`input`", key, &["schema", "schema_file"], &[])?;
        match (fields.get("schema"), fields.get("schema_file")) {
            (Some(inline), None) => self.schema(inline),
            (None, Some(file)) => self.schema_file(file),
            (Some(_), Some(_)) => {
                self.conflict(
                    &fields.key_span("schema_file"),
                    key,
                    "schema",
                    "schema_file",
                );
                None
            }
            (None, None) => {
                self.error(
                    "missing-field",
                    key,
                    "`input` needs `schema` or `schema_file`".to_string(),
                    "e.g. `input: { schema: { type: object } }`".to_string(),
                );
                None
            }
        }
    }

    /// A warning for every `trust: { gate: none }`: AI influences the step and it runs without
    /// a person (with the written reason), or nothing influences it and the declaration is moot.
    fn warn_ungated(&mut self, steps: &[super::model::Step]) {
        for (id, span) in std::mem::take(&mut self.ungated) {
            let Some(parts) = steps
                .iter()
                .find(|s| s.id == id)
                .and_then(|s| s.gate_parts())
            else {
                continue;
            };
            let reason = parts.trust.ungated.clone().unwrap_or_default();
            match parts.influence.first() {
                Some(influence) => self.warning(
                    "ungated-operation",
                    span,
                    format!(
                        "step `{id}` is influenced by AI ({}) and runs without the trust gate: {reason}",
                        influence.describe()
                    ),
                    "every deployment journals this; remove `gate: none` to have people oversee it"
                        .to_string(),
                ),
                None => self.warning(
                    "ignored-field",
                    span,
                    format!("`gate: none` on step `{id}`, which no `ai` step influences"),
                    "the step never waits for a person anyway; remove `gate` and `reason`"
                        .to_string(),
                ),
            }
        }
    }

    fn steps(&mut self, node: &Node) -> Option<Vec<super::model::Step>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`steps`", "a list of steps");
            return None;
        };
        if items.is_empty() {
            self.error(
                "empty",
                node.span,
                "`steps` is empty".to_string(),
                "add at least an `end` step".to_string(),
            );
            return None;
        }
        if items.len() > MAX_STEPS {
            self.error(
                "out-of-range",
                node.span,
                format!("{} steps; the limit is {MAX_STEPS}", items.len()),
                "split the workflow".to_string(),
            );
            return None;
        }
        let drafts: Vec<Draft> = items.iter().map(|item| self.step(item)).collect();
        self.link(drafts)
    }
}

/// Whether a step's gate counts `due` in business time.
fn business_due(step: &super::model::Step) -> bool {
    if step.sla_business {
        return true;
    }
    match &step.kind {
        super::model::StepKind::Approval(approval) => approval.gate.due_business,
        super::model::StepKind::Action(action) => action.gate.due_business,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::workflow::model::{
        HitPolicy, HttpMethod, JsonTemplate, StepKind, TemplatePart, Wait,
    };
    use crate::workflow::DurationMs;

    const HEADER: &str = "name: t\nversion: \"1\"\ninput: { schema: { type: object } }\nsteps:\n";

    fn parse(steps: &str) -> Workflow {
        let source = format!("{HEADER}{steps}");
        match parse_str(&source, "t.yaml", None) {
            Ok(workflow) => workflow,
            Err(diagnostics) => panic!(
                "{}",
                diagnostics
                    .iter()
                    .map(|d| d.render(&source))
                    .collect::<String>()
            ),
        }
    }

    fn codes(steps: &str) -> Vec<&'static str> {
        let source = format!("{HEADER}{steps}");
        check_str(&source, "t.yaml", None)
            .diagnostics
            .iter()
            .map(|d| d.code)
            .collect()
    }

    #[test]
    fn ai_steps() {
        let wf = parse("  - id: x\n    ai:\n      task: extract\n      prompt: \"Invoice: {{ input.text }}\"\n      output_schema: { type: object, properties: { total: { type: number } }, required: [total] }\n      checks: [\"output.total > 0\"]\n      reask: 2\n      route:\n        - model: small\n          accept_when: confidence > 0.8 && cost < 0.01\n        - model: big\n  - id: e\n    end: { outcome: ok }\n");
        let StepKind::Ai(ai) = &wf.steps[0].kind else {
            panic!()
        };
        assert_eq!(ai.task, crate::workflow::AiTask::Extract);
        assert_eq!(ai.reask, 2);
        assert_eq!(ai.samples, 1);
        assert_eq!(ai.route.len(), 2);
        assert_eq!(ai.into, "x");
        assert_eq!(ai.prompt.sha256.len(), 64);
        let end = "  - id: e\n    end: { outcome: ok }\n";
        // classify needs labels; extract needs a schema; a bad template and a bad variable.
        assert!(codes(&format!(
            "  - id: x\n    ai: {{ task: classify, prompt: p, route: [{{model: m}}] }}\n{end}"
        ))
        .contains(&"missing-field"));
        assert!(codes(&format!(
            "  - id: x\n    ai: {{ task: extract, prompt: p, route: [{{model: m}}] }}\n{end}"
        ))
        .contains(&"missing-field"));
        assert!(codes(&format!("  - id: x\n    ai: {{ task: generate, prompt: \"{{{{ input.a \", route: [{{model: m}}] }}\n{end}")).contains(&"invalid-template"));
        assert!(codes(&format!("  - id: x\n    ai: {{ task: generate, prompt: \"{{{{ secrets.key }}}}\", route: [{{model: m}}] }}\n{end}")).contains(&"invalid-template"));
        assert!(codes(&format!("  - id: x\n    ai: {{ task: generate, prompt: p, route: [{{model: m, accept_when: \"confidnce > 0.5\"}}] }}\n{end}")).contains(&"unknown-variable"));
        assert!(codes(&format!(
            "  - id: x\n    ai: {{ task: generate, prompt: p, route: [] }}\n{end}"
        ))
        .contains(&"invalid-value"));
        assert!(codes(&format!("  - id: x\n    ai: {{ task: generate, prompt: p, reask: 9, route: [{{model: m}}] }}\n{end}")).contains(&"out-of-range"));
        // `output` is a variable in checks only.
        assert!(codes(&format!(
            "  - id: x\n    validate: {{ assert: [\"output.a > 1\"] }}\n{end}"
        ))
        .contains(&"unknown-variable"));
    }

    #[test]
    fn a_stored_version_accepted_under_older_rules_still_loads() {
        let source = r#"
name: old
version: "1"
change: { author: ana, approved_by: ana, reference: CHG-1 }
input: { schema: { type: object } }
steps:
  - id: judge
    ai: { task: classify, labels: [a, b], prompt: "{{ input.x }}", route: [{ model: m }] }
  - id: act
    action:
      method: POST
      url: "https://example.com/${data.judge.output.label}"
      trust: { phase: 1, promotion: { min_reviews: 3, target_agreement: { phase2: 0.4 } } }
  - id: done
    end: ok
"#;
        let fresh = check_str(source, "old.yaml", None);
        assert!(fresh.workflow.is_none(), "a new version is refused");
        let codes: Vec<&str> = fresh.diagnostics.iter().map(|d| d.code).collect();
        assert!(
            codes.contains(&"change-approval") && codes.contains(&"trust-settings"),
            "{codes:?}"
        );
        let stored = parse_stored(source, "old.yaml", None).expect("a stored version loads");
        let change = stored.change.expect("its change record");
        assert_eq!(
            change.author, "ana",
            "the author is kept, the self-written approval dropped"
        );
        // Anything else that is wrong still refuses a stored version.
        assert!(parse_stored(&source.replace("steps:", "stepz:"), "old.yaml", None).is_err());
    }

    #[test]
    fn top_level_fields_and_hash() {
        let source = "name: inv\nversion: 1.10\ndescription: d\nsla: 2d\ninput: { schema: { type: object } }\nsteps:\n  - id: done\n    end: ok\n";
        let workflow = parse_str(source, "t.yaml", None).unwrap();
        assert_eq!(workflow.name, "inv");
        assert_eq!(workflow.version, "1.10");
        assert_eq!(workflow.description.as_deref(), Some("d"));
        assert_eq!(workflow.sla, Some(DurationMs(172_800_000)));
        assert_eq!(
            workflow.source_sha256,
            hex::encode(Sha256::digest(source.as_bytes()))
        );
        assert!(workflow
            .input_schema
            .validate(&serde_json::json!({}))
            .is_ok());
    }

    #[test]
    fn next_defaults_to_the_following_step() {
        let workflow = parse(
            "  - id: a\n    set: { x: \"1\" }\n  - id: b\n    wait: { for: 2h }\n    next: d\n  - id: c\n    end: no\n  - id: d\n    switch:\n      - when: \"data.x == 1\"\n        goto: c\n      - default: c\n",
        );
        let nexts: Vec<Option<&str>> = workflow.steps.iter().map(|s| s.next.as_deref()).collect();
        assert_eq!(nexts, [Some("b"), Some("d"), None, None]);
        let StepKind::Switch(switch) = &workflow.steps[3].kind else {
            panic!()
        };
        assert_eq!(switch.default, "c");
        assert_eq!(switch.cases[0].goto, "c");
        let StepKind::Wait(Wait::For(duration)) = &workflow.steps[1].kind else {
            panic!()
        };
        assert_eq!(*duration, DurationMs(7_200_000));
    }

    #[test]
    fn action_defaults_and_templates() {
        let workflow = parse(
            "  - id: pay\n    action:\n      url: \"http://h/p/${input.id}\"\n      body: { n: \"${input.amount}\", note: \"invoice ${input.id}\", fixed: [1, \"a\"] }\n  - id: done\n    end: ok\n",
        );
        let StepKind::Action(action) = &workflow.steps[0].kind else {
            panic!()
        };
        assert_eq!(action.method, HttpMethod::Get);
        assert_eq!(action.timeout, DurationMs(30_000));
        assert_eq!(action.retry, crate::workflow::RetryPolicy::default());
        assert_eq!(action.retry.max_attempts, 3);
        assert_eq!(action.into, "pay");
        assert_eq!(action.url.literal_text(), "http://h/p/");
        assert!(matches!(action.url.parts[1], TemplatePart::Hole(_)));
        let Some(JsonTemplate::Object(fields)) = &action.body else {
            panic!("{:?}", action.body)
        };
        assert!(matches!(&fields[0].1, JsonTemplate::String(t) if t.single_hole().is_some()));
        assert!(matches!(&fields[1].1, JsonTemplate::String(t) if t.single_hole().is_none()));
        assert!(
            matches!(&fields[2].1, JsonTemplate::Literal(v) if v == &serde_json::json!([1, "a"]))
        );
    }

    #[test]
    fn action_settings() {
        let workflow = parse(
            "  - id: pay\n    action:\n      method: put\n      url: https://h/x\n      headers: { X-Tenant: \"${input.t}\" }\n      timeout: 10s\n      retry: { max_attempts: 5, initial_backoff: 1s, max_backoff: 20s }\n      response_schema: { type: object }\n      into: payment\n    next: done\n  - id: done\n    end: ok\n",
        );
        let StepKind::Action(action) = &workflow.steps[0].kind else {
            panic!()
        };
        assert_eq!(action.method, HttpMethod::Put);
        assert_eq!(action.timeout, DurationMs(10_000));
        assert_eq!(action.retry.max_attempts, 5);
        assert_eq!(action.retry.initial_backoff, DurationMs(1_000));
        assert_eq!(action.retry.max_backoff, DurationMs(20_000));
        assert!(action.response_schema.is_some());
        assert_eq!(action.into, "payment");
        assert!(action.headers.contains_key("X-Tenant"));
    }

    #[test]
    fn decide_tables() {
        let workflow = parse(
            "  - id: route\n    decide:\n      columns: [\"input.a > 1\", \"input.b\"]\n      rules:\n        - { when: [true, \"-\"], then: { x: 1 } }\n        - { when: [false, true], then: { x: 2 } }\n      default: { x: 3 }\n  - id: done\n    end: ok\n",
        );
        let StepKind::Decide(decide) = &workflow.steps[0].kind else {
            panic!()
        };
        assert_eq!(decide.hit, HitPolicy::First);
        assert_eq!(decide.into, "route");
        assert_eq!(decide.rules[0].when, vec![Some(true), None]);
        assert_eq!(decide.default, Some(serde_json::json!({"x": 3})));
        // Without the default, [false, false] is not covered.
        assert_eq!(
            codes("  - id: route\n    decide:\n      columns: [\"input.a > 1\", \"input.b\"]\n      rules:\n        - { when: [true, \"-\"], then: 1 }\n        - { when: [false, true], then: 2 }\n  - id: done\n    end: ok\n"),
            ["decide-not-exhaustive"]
        );
        // Covering every combination needs no default.
        assert!(codes("  - id: route\n    decide:\n      columns: [\"input.a\"]\n      rules:\n        - { when: [true], then: 1 }\n        - { when: [false], then: 2 }\n  - id: done\n    end: ok\n").is_empty());
    }

    #[test]
    fn wait_signal_defaults_into_to_the_signal_name() {
        let workflow = parse(
            "  - id: hold\n    wait: { signal: approved, timeout: 3d, timeout_goto: done }\n  - id: until\n    wait: { until: \"timestamp(input.due) + duration('2h')\" }\n  - id: done\n    end: { outcome: paid }\n",
        );
        let StepKind::Wait(Wait::Signal {
            name,
            timeout,
            into,
            timeout_goto,
        }) = &workflow.steps[0].kind
        else {
            panic!()
        };
        assert_eq!((name.as_str(), into.as_str()), ("approved", "approved"));
        assert_eq!(*timeout, DurationMs(259_200_000));
        assert_eq!(timeout_goto.as_deref(), Some("done"));
        let StepKind::End(end) = &workflow.steps[2].kind else {
            panic!()
        };
        assert_eq!(end.outcome, "paid");
    }

    #[test]
    fn validate_and_set() {
        let workflow = parse(
            "  - id: check\n    validate:\n      schema: { required: [a] }\n      assert:\n        - \"input.a > 0\"\n        - { expr: \"input.a < 9\", message: too big }\n  - id: calc\n    set: { total: \"input.a * 2\", label: \"'x'\" }\n  - id: done\n    end: ok\n",
        );
        let StepKind::Validate(validate) = &workflow.steps[0].kind else {
            panic!()
        };
        assert!(validate.schema.is_some());
        assert_eq!(validate.assertions.len(), 2);
        assert_eq!(
            validate.assertions[0].message,
            "assertion failed: input.a > 0"
        );
        assert_eq!(validate.assertions[1].message, "too big");
        let StepKind::Set(set) = &workflow.steps[1].kind else {
            panic!()
        };
        let names: Vec<&str> = set.values.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["total", "label"]);
    }

    #[test]
    fn collects_every_error_in_one_run() {
        let found = codes(
            "  - id: a\n    set: { x: \"nope\" }\n    nxt: b\n  - id: a\n    wait: { for: soon }\n",
        );
        assert!(found.contains(&"unknown-variable"), "{found:?}");
        assert!(found.contains(&"unknown-field"), "{found:?}");
        assert!(found.contains(&"duplicate-step-id"), "{found:?}");
        assert!(found.contains(&"invalid-duration"), "{found:?}");
    }

    #[test]
    fn expression_errors_point_inside_the_string() {
        let source = format!(
            "{HEADER}  - id: a\n    set: {{ x: \"input.a + foo\" }}\n  - id: done\n    end: ok\n"
        );
        let diagnostics = check_str(&source, "t.yaml", None).diagnostics;
        assert_eq!(diagnostics.len(), 1);
        let d = &diagnostics[0];
        assert_eq!(
            (d.code, d.line, d.column, d.end_column),
            ("unknown-variable", 6, 26, 29)
        );
    }

    #[test]
    fn schema_files_need_a_folder() {
        let source = "name: t\nversion: \"1\"\ninput: { schema_file: x.json }\nsteps:\n  - id: done\n    end: ok\n";
        let diagnostics = parse_str(source, "t.yaml", None).unwrap_err();
        assert_eq!(diagnostics[0].code, "schema-file");
    }

    #[test]
    fn errors_in_the_schema_point_at_the_yaml_node() {
        let source = "name: t\nversion: \"1\"\ninput:\n  schema:\n    type: object\n    properties:\n      a: { type: numbr }\nsteps:\n  - id: done\n    end: ok\n";
        let diagnostics = parse_str(source, "t.yaml", None).unwrap_err();
        assert_eq!(
            (diagnostics[0].code, diagnostics[0].line),
            ("invalid-schema", 7)
        );
    }

    #[test]
    fn limits() {
        let huge = "#".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(
            check_str(&huge, "t.yaml", None).diagnostics[0].code,
            "file-too-large"
        );
        let deep = format!("a: {}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            check_str(&deep, "t.yaml", None).diagnostics[0].code,
            "yaml-syntax"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        #[test]
        fn never_panics_on_arbitrary_text(source in "\\PC{0,200}") {
            let _ = check_str(&source, "t.yaml", None);
        }

        #[test]
        fn never_panics_on_damaged_workflows(cut in 0usize..2000, insert in "[\\-:{}\\[\\]\"'$ a-z\\n]{0,5}") {
            let source = crate::workflow::BENCH_WORKFLOW_YAML;
            let mut cut = cut.min(source.len());
            while !source.is_char_boundary(cut) {
                cut -= 1;
            }
            let damaged = format!("{}{insert}{}", &source[..cut], &source[cut..]);
            let checked = check_str(&damaged, "t.yaml", None);
            for d in &checked.diagnostics {
                let _ = d.render(&damaged);
            }
        }
    }
}
