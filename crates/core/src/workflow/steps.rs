//! Checking one step: its common fields (`id`, `sla`, `next`) and its kind.

use std::collections::BTreeMap;

use super::diagnostic::Span;
use super::model::{
    Action, Ai, AiTask, Approval, Assertion, Decide, DurationMs, End, Gate, HitPolicy, HttpMethod,
    Prompt, RetryPolicy, Rule, Set, StepKind, Switch, SwitchCase, Template, TemplatePart, Tier,
    Validate, Wait,
};
use super::values::{is_name, list, Checker, Usage};
use super::yaml::{Node, Value};

pub(crate) const KINDS: &[&str] = &[
    "validate", "switch", "decide", "set", "action", "ai", "wait", "approval", "end",
];
const COMMON: &[&str] = &["id", "sla", "next"];
/// Decision tables with more columns are not checked for completeness (2^16 combinations).
const MAX_COVERAGE_COLUMNS: usize = 16;
const MAX_TIMEOUT_MS: u64 = 10 * 60_000;
const MAX_BACKOFF_MS: u64 = 10 * 60_000;

/// A reference to another step, kept for the graph checks.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub step: String,
    pub span: Span,
}

/// One step as far as it could be checked.
#[derive(Debug)]
pub(crate) struct Draft {
    pub id: Option<String>,
    pub id_span: Span,
    /// `None` when the kind is missing or has errors.
    pub kind: Option<StepKind>,
    /// The kind keyword, even when the kind has errors.
    pub keyword: Option<&'static str>,
    pub sla: Option<DurationMs>,
    pub sla_business: bool,
    pub next: Option<Target>,
    /// `goto`, `default` and `timeout_goto` targets.
    pub targets: Vec<Target>,
}

impl Checker<'_> {
    pub fn step(&mut self, node: &Node) -> Draft {
        let mut draft = Draft {
            id: None,
            id_span: node.span,
            kind: None,
            keyword: None,
            sla: None,
            sla_business: false,
            next: None,
            targets: Vec::new(),
        };
        let allowed: Vec<&str> = COMMON.iter().chain(KINDS).copied().collect();
        // Name the step in messages about its fields, when its id is readable.
        let early_label = match raw_field(node, "id").and_then(Node::as_str) {
            Some(id) => format!("step `{id}`"),
            None => "a step".to_string(),
        };
        let Some(fields) = self.fields(node, &early_label, node.span, &allowed, &["id"]) else {
            return draft;
        };
        if let Some(id_node) = fields.get("id") {
            draft.id_span = id_node.span;
            draft.id = self.name(id_node, "step id", "invalid-id");
        }
        let label = match &draft.id {
            Some(id) => format!("step `{id}`"),
            None => "this step".to_string(),
        };
        if let Some((sla, business)) = fields
            .get("sla")
            .and_then(|n| self.sla(n, &format!("`sla` of {label}")))
        {
            draft.sla = Some(sla);
            draft.sla_business = business;
        }
        if let Some(next) = fields.get("next") {
            if let Some(step) = self.string(next, "`next`") {
                draft.next = Some(Target {
                    step,
                    span: next.span,
                });
            }
        }
        let kinds: Vec<&str> = fields.names().filter(|n| KINDS.contains(n)).collect();
        let Some(keyword) = kinds.first().copied() else {
            if misspelled_kind(node) {
                // The unknown-field error already says "did you mean `validate`?".
                return draft;
            }
            self.error(
                "missing-step-kind",
                draft.id_span,
                format!("{label} does not say what it does"),
                format!("add one of {}", list(KINDS)),
            );
            return draft;
        };
        if let Some(second) = kinds.get(1) {
            let span = fields.key_span(second).unwrap_or(node.span);
            self.error(
                "conflicting-fields",
                span,
                format!("{label} has both `{keyword}` and `{second}`; a step does one thing"),
                "split it into two steps".to_string(),
            );
            return draft;
        }
        let keyword = KINDS
            .iter()
            .copied()
            .find(|k| *k == keyword)
            .unwrap_or("end");
        draft.keyword = Some(keyword);
        if matches!(keyword, "end" | "switch") {
            if let Some(span) = fields.key_span("next") {
                let why = if keyword == "end" {
                    "an `end` step finishes the case"
                } else {
                    "a `switch` chooses the next step itself"
                };
                self.error(
                    "next-not-allowed",
                    span,
                    format!("`next` is not allowed on {label}: {why}"),
                    "remove `next`".to_string(),
                );
            }
        }
        let (Some(body), Some(key)) = (fields.get(keyword), fields.key_span(keyword)) else {
            return draft;
        };
        let id = draft.id.clone().unwrap_or_default();
        let errors_before = self.error_count();
        let kind = match keyword {
            "validate" => self.validate(body, key, &label).map(StepKind::Validate),
            "switch" => self
                .switch(body, key, &label, &mut draft.targets)
                .map(StepKind::Switch),
            "decide" => self.decide(body, key, &label, &id).map(StepKind::Decide),
            "set" => self.set(body, &label).map(StepKind::Set),
            "action" => self.action(body, key, &label, &id).map(StepKind::Action),
            "ai" => self.ai(body, key, &label, &id).map(StepKind::Ai),
            "wait" => self
                .wait(body, key, &label, &mut draft.targets)
                .map(StepKind::Wait),
            "approval" => self
                .approval(body, key, &label, &id, &mut draft.targets)
                .map(StepKind::Approval),
            _ => self.end(body, key, &label, &id).map(StepKind::End),
        };
        if self.error_count() == errors_before {
            draft.kind = kind;
        }
        draft
    }

    fn validate(&mut self, node: &Node, key: Span, label: &str) -> Option<Validate> {
        let what = format!("`validate` of {label}");
        let fields = self.fields(node, &what, key, &["schema", "schema_file", "assert"], &[])?;
        let schema = match (fields.get("schema"), fields.get("schema_file")) {
            (Some(_), Some(_)) => {
                self.conflict(
                    &fields.key_span("schema_file"),
                    key,
                    "schema",
                    "schema_file",
                );
                None
            }
            (Some(inline), None) => self.schema(inline),
            (None, Some(file)) => self.schema_file(file),
            (None, None) => None,
        };
        let mut assertions = Vec::new();
        if let Some(items) = fields.get("assert") {
            assertions = self.assertions(items).unwrap_or_default();
        }
        if fields.get("schema").is_none()
            && fields.get("schema_file").is_none()
            && fields.get("assert").is_none()
        {
            self.warning(
                "empty-validate",
                key,
                format!("{what} checks nothing"),
                "add `schema:` or `assert:`, or remove the step".to_string(),
            );
        }
        Some(Validate { schema, assertions })
    }

    pub fn conflict(&mut self, second: &Option<Span>, fallback: Span, first: &str, other: &str) {
        self.error(
            "conflicting-fields",
            second.unwrap_or(fallback),
            format!("`{first}` and `{other}` cannot both be given"),
            format!("keep either `{first}` or `{other}`"),
        );
    }

    fn assertions(&mut self, node: &Node) -> Option<Vec<Assertion>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`assert`", "a list of `{expr, message}`");
            return None;
        };
        let mut assertions = Vec::new();
        for item in items {
            if item.as_str().is_some() {
                if let Some(expr) = self.expr(item, Usage::Condition) {
                    let message = format!("assertion failed: {}", expr.source());
                    assertions.push(Assertion { expr, message });
                }
                continue;
            }
            let Some(fields) = self.fields(
                item,
                "an assertion",
                item.span,
                &["expr", "message"],
                &["expr"],
            ) else {
                continue;
            };
            let expr = fields
                .get("expr")
                .and_then(|n| self.expr(n, Usage::Condition));
            let message = fields
                .get("message")
                .and_then(|n| self.string(n, "`message`"));
            if let Some(expr) = expr {
                let message =
                    message.unwrap_or_else(|| format!("assertion failed: {}", expr.source()));
                assertions.push(Assertion { expr, message });
            }
        }
        Some(assertions)
    }

    fn switch(
        &mut self,
        node: &Node,
        key: Span,
        label: &str,
        targets: &mut Vec<Target>,
    ) -> Option<Switch> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(
                node,
                &format!("`switch` of {label}"),
                "a list of `{when, goto}` ending with `{default}`",
            );
            return None;
        };
        let mut cases = Vec::new();
        let mut default: Option<(String, usize)> = None;
        for (index, item) in items.iter().enumerate() {
            let Some(fields) = self.fields(
                item,
                "a switch case",
                item.span,
                &["when", "goto", "default"],
                &[],
            ) else {
                continue;
            };
            if let Some(target) = fields.get("default") {
                if fields.get("when").is_some() || fields.get("goto").is_some() {
                    self.error(
                        "conflicting-fields",
                        item.span,
                        "a `default` case has no `when` or `goto`".to_string(),
                        "write `- default: <step>` on its own".to_string(),
                    );
                }
                if let Some((_, first)) = &default {
                    self.error(
                        "switch-default",
                        target.span,
                        format!(
                            "{label} has a second `default` (the first is case {})",
                            first + 1
                        ),
                        "keep one `default`, as the last case".to_string(),
                    );
                } else if let Some(step) = self.string(target, "`default`") {
                    targets.push(Target {
                        step: step.clone(),
                        span: target.span,
                    });
                    default = Some((step, index));
                    if index + 1 != items.len() {
                        self.error(
                            "switch-default",
                            fields.key_span("default").unwrap_or(item.span),
                            format!("the `default` of {label} must be its last case"),
                            "cases after `default` are never tried; move `default` to the end"
                                .to_string(),
                        );
                    }
                }
                continue;
            }
            for field in ["when", "goto"] {
                if fields.get(field).is_none() {
                    self.error(
                        "missing-field",
                        item.span,
                        format!("a switch case is missing `{field}`"),
                        "write `- when: <condition>` with `goto: <step>`, or `- default: <step>`"
                            .to_string(),
                    );
                }
            }
            let when = fields
                .get("when")
                .and_then(|n| self.expr(n, Usage::Condition));
            let goto = fields.get("goto").and_then(|n| self.string(n, "`goto`"));
            if let (Some(goto_node), Some(step)) = (fields.get("goto"), &goto) {
                targets.push(Target {
                    step: step.clone(),
                    span: goto_node.span,
                });
            }
            if let (Some(when), Some(goto)) = (when, goto) {
                cases.push(SwitchCase { when, goto });
            }
        }
        let Some((default, _)) = default else {
            self.error(
                "switch-default",
                key,
                format!("{label} has no `default` case"),
                "end the list with `- default: <step>` for when no condition holds".to_string(),
            );
            return None;
        };
        Some(Switch { cases, default })
    }

    fn decide(&mut self, node: &Node, key: Span, label: &str, id: &str) -> Option<Decide> {
        let what = format!("`decide` of {label}");
        let fields = self.fields(
            node,
            &what,
            key,
            &["hit", "columns", "rules", "default", "into"],
            &["columns", "rules"],
        )?;
        let hit = match fields.get("hit") {
            None => Some(HitPolicy::First),
            Some(n) => match n.as_str() {
                Some("first") => Some(HitPolicy::First),
                Some("collect") => Some(HitPolicy::Collect),
                _ => {
                    self.error(
                        "invalid-value",
                        n.span,
                        format!("`hit` must be `first` or `collect`, found {}", describe(n)),
                        "`first`: the first matching rule wins; `collect`: a list of every match"
                            .to_string(),
                    );
                    None
                }
            },
        };
        let columns = fields.get("columns").and_then(|n| self.columns(n));
        let rules = fields
            .get("rules")
            .and_then(|n| self.rules(n, columns.as_ref().map(|c| c.len())));
        let default = match fields.get("default") {
            Some(n) => self.json(n).map(Some),
            None => Some(None),
        };
        let into = match fields.get("into") {
            Some(n) => self.identifier(n, "`into`"),
            None => Some(id.to_string()),
        };
        let (hit, columns, rules, default, into) = (hit?, columns?, rules?, default?, into?);
        if hit == HitPolicy::Collect && default.is_some() {
            self.warning(
                "ignored-field",
                fields.key_span("default").unwrap_or(key),
                "`default` is ignored with `hit: collect` (no match yields `[]`)".to_string(),
                "remove `default`, or use `hit: first`".to_string(),
            );
        }
        if hit == HitPolicy::First && default.is_none() {
            let sources: Vec<&str> = columns.iter().map(|c| c.source()).collect();
            self.coverage(
                &sources,
                &rules,
                fields.key_span("rules").unwrap_or(key),
                label,
            );
        }
        Some(Decide {
            hit,
            columns,
            rules,
            default,
            into,
        })
    }

    fn columns(&mut self, node: &Node) -> Option<Vec<crate::expr::Expr>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`columns`", "a list of CEL conditions");
            return None;
        };
        if items.is_empty() || items.len() > 64 {
            self.error(
                "out-of-range",
                node.span,
                format!(
                    "a decision table needs 1 to 64 columns, found {}",
                    items.len()
                ),
                "each column is a condition such as `input.amount > 1000`".to_string(),
            );
            return None;
        }
        let compiled: Vec<_> = items
            .iter()
            .map(|i| self.expr(i, Usage::Condition))
            .collect();
        compiled.into_iter().collect()
    }

    fn rules(&mut self, node: &Node, columns: Option<usize>) -> Option<Vec<Rule>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`rules`", "a list of `{when, then}`");
            return None;
        };
        let mut rules = Vec::new();
        let mut ok = true;
        for item in items {
            match self.rule(item, columns) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
        ok.then_some(rules)
    }

    fn rule(&mut self, node: &Node, columns: Option<usize>) -> Option<Rule> {
        let fields = self.fields(
            node,
            "a rule",
            node.span,
            &["when", "then"],
            &["when", "then"],
        )?;
        let then = fields.get("then").and_then(|n| self.json(n));
        let when_node = fields.get("when")?;
        let Value::Seq(cells) = &when_node.value else {
            self.wrong_type(
                when_node,
                "`when` of a rule",
                "a list with one cell per column",
            );
            return None;
        };
        let mut when = Vec::new();
        let mut ok = true;
        for cell in cells {
            match &cell.value {
                Value::Bool(b) => when.push(Some(*b)),
                Value::Str(s) if s == "-" => when.push(None),
                _ => {
                    ok = false;
                    self.error(
                        "invalid-cell",
                        cell.span,
                        format!(
                            "a rule cell must be `true`, `false` or `\"-\"`, found {}",
                            describe(cell)
                        ),
                        "`\"-\"` matches either value of its column".to_string(),
                    );
                }
            }
        }
        if let Some(expected) = columns {
            if cells.len() != expected {
                ok = false;
                self.error(
                    "rule-arity",
                    when_node.span,
                    format!(
                        "this rule has {} cells but the table has {expected} columns",
                        cells.len()
                    ),
                    "write one cell per column, `\"-\"` for don't care".to_string(),
                );
            }
        }
        let then = then?;
        ok.then_some(Rule { when, then })
    }

    /// With `hit: first` and no `default`, every combination of column values needs a rule.
    fn coverage(&mut self, columns: &[&str], rules: &[Rule], span: Span, label: &str) {
        let n = columns.len();
        if n > MAX_COVERAGE_COLUMNS {
            self.warning(
                "decide-unchecked",
                span,
                format!(
                    "{label} has {n} columns; completeness is checked up to {MAX_COVERAGE_COLUMNS}"
                ),
                "add a `default:` so no input goes unmatched".to_string(),
            );
            return;
        }
        let uncovered = (0u32..(1u32 << n)).find(|combination| {
            let value = |column: usize| combination & (1 << (n - 1 - column)) == 0;
            !rules.iter().any(|rule| {
                rule.when
                    .iter()
                    .enumerate()
                    .all(|(column, cell)| cell.is_none_or(|b| b == value(column)))
            })
        });
        let Some(combination) = uncovered else {
            return;
        };
        let values: Vec<bool> = (0..n)
            .map(|c| combination & (1 << (n - 1 - c)) == 0)
            .collect();
        let described: Vec<String> = columns
            .iter()
            .zip(&values)
            .map(|(column, value)| format!("`{column}` is {value}"))
            .collect();
        let cells: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.error(
            "decide-not-exhaustive",
            span,
            format!(
                "no rule of {label} matches when {}",
                described.join(" and ")
            ),
            format!("add a rule `when: [{}]` or a `default:`", cells.join(", ")),
        );
    }

    fn set(&mut self, node: &Node, label: &str) -> Option<Set> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(
                node,
                &format!("`set` of {label}"),
                "a mapping of names to CEL expressions",
            );
            return None;
        };
        if entries.is_empty() {
            self.error(
                "empty",
                node.span,
                format!("`set` of {label} sets nothing"),
                "add `name: <CEL expression>`".to_string(),
            );
            return None;
        }
        let mut values = Vec::new();
        for (key, value) in entries {
            let name = self.identifier(key, "a `set` name");
            let expr = self.expr(value, Usage::Value);
            if let (Some(name), Some(expr)) = (name, expr) {
                values.push((name, expr));
            }
        }
        Some(Set { values })
    }

    fn action(&mut self, node: &Node, key: Span, label: &str, id: &str) -> Option<Action> {
        let what = format!("`action` of {label}");
        let allowed = [
            "method",
            "url",
            "headers",
            "body",
            "timeout",
            "retry",
            "response_schema",
            "into",
            "approval",
            "trust",
        ];
        let fields = self.fields(node, &what, key, &allowed, &["url"])?;
        let trust = self.trust_block(&fields, id);
        let gate = self.operation_gate(&fields, key, "`approval` of the action");
        let method = match fields.get("method") {
            None => Some(HttpMethod::Get),
            Some(n) => self.method(n),
        };
        let url = fields.get("url").and_then(|n| self.url(n));
        let headers = match fields.get("headers") {
            None => Some(BTreeMap::new()),
            Some(n) => self.headers(n),
        };
        let body = match fields.get("body") {
            None => Some(None),
            Some(n) => self.json_template(n, "`body`").map(Some),
        };
        let timeout = match fields.get("timeout") {
            None => Some(DurationMs(30_000)),
            Some(n) => self.bounded(n, "`timeout`", 1, MAX_TIMEOUT_MS),
        };
        let retry = match fields.get("retry") {
            None => Some(RetryPolicy::default()),
            Some(n) => self.retry(n, fields.key_span("retry").unwrap_or(key)),
        };
        let response_schema = match fields.get("response_schema") {
            None => Some(None),
            Some(n) => self.schema(n).map(Some),
        };
        let into = match fields.get("into") {
            Some(n) => self.identifier(n, "`into`"),
            None => Some(id.to_string()),
        };
        Some(Action {
            method: method?,
            url: url?,
            headers: headers?,
            body: body?,
            timeout: timeout?,
            retry: retry?,
            response_schema: response_schema?,
            into: into?,
            uses_ai: Vec::new(),
            influence: Vec::new(),
            gate: gate?,
            trust: trust?,
        })
    }

    /// `approval:` of a step: a title, the gate, `into` and `on_reject`.
    fn approval(
        &mut self,
        node: &Node,
        key: Span,
        label: &str,
        id: &str,
        targets: &mut Vec<Target>,
    ) -> Option<Approval> {
        let what = format!("`approval` of {label}");
        let (gate, fields) = self.gate(node, key, &what, &["title", "into", "on_reject"])?;
        let title = match fields.get("title") {
            Some(n) => self.string(n, "`title`"),
            None => Some(format!("Approve step `{id}`")),
        };
        let into = match fields.get("into") {
            Some(n) => self.identifier(n, "`into`"),
            None => Some(id.to_string()),
        };
        let on_reject = match fields.get("on_reject") {
            Some(n) => {
                let step = self.string(n, "`on_reject`")?;
                targets.push(Target {
                    step: step.clone(),
                    span: n.span,
                });
                Some(step)
            }
            None => None,
        };
        Some(Approval {
            title: title?,
            gate,
            into: into?,
            on_reject,
        })
    }

    /// The gate fields (`required`, `roles`, `limit`, `due`) plus `extra` allowed fields.
    fn gate<'n>(
        &mut self,
        node: &'n Node,
        key: Span,
        what: &str,
        extra: &[&str],
    ) -> Option<(Gate, super::values::Fields<'n>)> {
        let mut allowed = vec!["required", "roles", "limit", "due", "escalate_to"];
        allowed.extend_from_slice(extra);
        let fields = self.fields(node, what, key, &allowed, &[])?;
        let required = self.small_count(&fields, "required", 1, 10, 1);
        let roles = match fields.get("roles") {
            None => Some(vec!["reviewer".to_string()]),
            Some(n) => self.role_list(n),
        };
        let escalate_to = match fields.get("escalate_to") {
            None => Some(Vec::new()),
            Some(n) => self.role_list(n),
        };
        if let (Some(span), None) = (fields.key_span("escalate_to"), fields.get("due")) {
            self.error(
                "field-not-applicable",
                span,
                "`escalate_to` takes effect when the task is overdue, and the gate has no `due`"
                    .to_string(),
                "add `due: 4h` (or remove `escalate_to`)".to_string(),
            );
        }
        let limit = match fields.get("limit") {
            None => Some(None),
            Some(n) => self.expr(n, Usage::Value).map(Some),
        };
        let (due, due_business) = match fields.get("due") {
            None => (Some(None), false),
            Some(n) => match &n.value {
                Value::Map(_) => {
                    let due_fields = self.fields(n, "`due`", n.span, &["business"], &["business"]);
                    let due = due_fields
                        .and_then(|f| f.get("business"))
                        .and_then(|b| self.duration(b, "`due.business`"))
                        .map(Some);
                    (due, true)
                }
                _ => (self.duration(n, "`due`").map(Some), false),
            },
        };
        Some((
            Gate {
                required: required?,
                roles: roles?,
                limit: limit?,
                due: due?,
                due_business,
                escalate_to: escalate_to?,
            },
            fields,
        ))
    }

    fn role_list(&mut self, node: &Node) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(
                node,
                "`roles`",
                "a list of role names, e.g. [reviewer, specialist]",
            );
            return None;
        };
        let mut roles = Vec::new();
        for item in items {
            roles.push(self.name(item, "role name", "invalid-name")?);
        }
        if roles.is_empty() {
            self.error(
                "empty",
                node.span,
                "`roles` is empty: nobody could decide".to_string(),
                "list at least one role, e.g. [reviewer]".to_string(),
            );
            return None;
        }
        Some(roles)
    }

    fn ai(&mut self, node: &Node, key: Span, label: &str, id: &str) -> Option<Ai> {
        let what = format!("`ai` of {label}");
        let allowed = [
            "task",
            "labels",
            "system",
            "prompt",
            "output_schema",
            "checks",
            "reask",
            "samples",
            "temperature",
            "max_tokens",
            "route",
            "into",
        ];
        let fields = self.fields(node, &what, key, &allowed, &["task", "prompt", "route"])?;
        let task = self.ai_task(&fields, key, label)?;
        let prompt = fields
            .get("prompt")
            .and_then(|n| self.prompt(n, "`prompt`"));
        let system = match fields.get("system") {
            None => Some(None),
            Some(n) => self.prompt(n, "`system`").map(Some),
        };
        let output_schema = match (&task, fields.get("output_schema")) {
            (AiTask::Classify { labels }, None) => {
                crate::schema::Schema::compile(classify_schema(labels)).ok()
            }
            (AiTask::Classify { .. }, Some(n)) => {
                self.error(
                    "conflicting-fields",
                    n.span,
                    format!(
                        "{label}: a `classify` task's output is `{{label}}`, derived from `labels`"
                    ),
                    "remove `output_schema`, or use `task: extract`".to_string(),
                );
                None
            }
            (AiTask::Extract, None) => {
                self.error(
                    "missing-field",
                    key,
                    format!("{label}: an `extract` task needs `output_schema`"),
                    "add `output_schema:` with the fields to extract".to_string(),
                );
                None
            }
            (AiTask::Generate, None) => crate::schema::Schema::compile(serde_json::json!({
                "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]
            }))
            .ok(),
            (_, Some(n)) => self.schema(n),
        };
        self.extra_variables = &["output"];
        let checks = match fields.get("checks") {
            None => Some(Vec::new()),
            Some(n) => self.assertions(n),
        };
        self.extra_variables = &[];
        let reask = self.small_count(&fields, "reask", 0, 3, 1);
        let samples = self.small_count(&fields, "samples", 1, 9, 1);
        let max_tokens = self.small_count(&fields, "max_tokens", 1, 100_000, 1024);
        let temperature = match fields.get("temperature") {
            None => Some(None),
            Some(n) => match n.scalar_text().and_then(|t| t.parse::<f64>().ok()) {
                Some(t) if (0.0..=2.0).contains(&t) => Some(Some(t)),
                _ => {
                    self.error(
                        "out-of-range",
                        n.span,
                        "`temperature` must be a number from 0 to 2".to_string(),
                        "0 gives repeatable answers (and lets the response cache work)".to_string(),
                    );
                    None
                }
            },
        };
        let route = fields.get("route").and_then(|n| self.route(n));
        let into = match fields.get("into") {
            Some(n) => self.identifier(n, "`into`"),
            None => Some(id.to_string()),
        };
        Some(Ai {
            task,
            system: system?,
            prompt: prompt?,
            output_schema: output_schema?,
            checks: checks?,
            reask: reask?,
            samples: samples?,
            temperature: temperature?,
            max_tokens: max_tokens?,
            route: route?,
            into: into?,
        })
    }

    fn ai_task(
        &mut self,
        fields: &super::values::Fields,
        key: Span,
        label: &str,
    ) -> Option<AiTask> {
        let node = fields.get("task")?;
        let task = match node.as_str() {
            Some("classify") => {
                let Some(labels_node) = fields.get("labels") else {
                    self.error(
                        "missing-field",
                        fields.key_span("task").unwrap_or(key),
                        format!("{label}: a `classify` task needs `labels`"),
                        "add `labels: [billing, technical, …]`".to_string(),
                    );
                    return None;
                };
                let labels = self.labels(labels_node)?;
                AiTask::Classify { labels }
            }
            Some("extract") => AiTask::Extract,
            Some("generate") => AiTask::Generate,
            _ => {
                self.error(
                    "invalid-value",
                    node.span,
                    format!(
                        "`task` must be classify, extract or generate, found {}",
                        describe(node)
                    ),
                    "classify picks a label, extract fills a schema, generate writes text"
                        .to_string(),
                );
                return None;
            }
        };
        if !matches!(task, AiTask::Classify { .. }) {
            if let Some(span) = fields.key_span("labels") {
                self.error(
                    "conflicting-fields",
                    span,
                    format!("{label}: `labels` belongs to `task: classify`"),
                    "remove `labels`, or use `task: classify`".to_string(),
                );
                return None;
            }
        }
        Some(task)
    }

    fn labels(&mut self, node: &Node) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`labels`", "a list of label names");
            return None;
        };
        let mut labels: Vec<String> = Vec::new();
        for item in items {
            let label = self.string(item, "a label")?;
            if label.is_empty() || labels.contains(&label) {
                self.error(
                    "invalid-value",
                    item.span,
                    format!("label `{label}` is empty or listed twice"),
                    "list each label once".to_string(),
                );
                return None;
            }
            labels.push(label);
        }
        if labels.len() < 2 {
            self.error(
                "invalid-value",
                node.span,
                "`labels` needs at least two labels".to_string(),
                "a classification chooses between labels, e.g. `[spam, ham]`".to_string(),
            );
            return None;
        }
        Some(labels)
    }

    fn prompt(&mut self, node: &Node, what: &str) -> Option<Prompt> {
        let source = self.string(node, what)?;
        let problems = crate::prompt::check(&source);
        if problems.is_empty() {
            let sha256 = crate::prompt::sha256(&source);
            return Some(Prompt { source, sha256 });
        }
        for problem in problems {
            // A block scalar's text starts on the line after its `|`: point into the template.
            let span = match problem.line {
                Some(line) if self.is_block(node) => {
                    let at = node.span.line + line;
                    let text = self.source.lines().nth(at - 1).unwrap_or_default();
                    let indent = text.len() - text.trim_start().len();
                    Span::point(at, indent + 1)
                }
                _ => node.span,
            };
            self.error(
                "invalid-template",
                span,
                format!("{what} template: {}", problem.message),
                "prompts are minijinja templates, e.g. `Classify: {{ input.subject }}`".to_string(),
            );
        }
        None
    }

    fn is_block(&self, node: &Node) -> bool {
        let line = self
            .source
            .lines()
            .nth(node.span.line.saturating_sub(1))
            .unwrap_or_default();
        let rest = line
            .get(node.span.column.saturating_sub(1)..)
            .unwrap_or_default();
        rest.starts_with('|') || rest.starts_with('>')
    }

    fn small_count(
        &mut self,
        fields: &super::values::Fields,
        name: &str,
        min: u32,
        max: u32,
        default: u32,
    ) -> Option<u32> {
        let Some(node) = fields.get(name) else {
            return Some(default);
        };
        match node.scalar_text().and_then(|t| t.parse::<u32>().ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    "out-of-range",
                    node.span,
                    format!("`{name}` must be a whole number from {min} to {max}"),
                    format!("the default is {default}"),
                );
                None
            }
        }
    }

    fn route(&mut self, node: &Node) -> Option<Vec<Tier>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`route`", "a list of `{model, accept_when}`");
            return None;
        };
        if items.is_empty() {
            self.error(
                "invalid-value",
                node.span,
                "`route` names no model".to_string(),
                "add at least one tier: `- model: gpt-small`".to_string(),
            );
            return None;
        }
        let mut tiers = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(fields) = self.fields(
                item,
                "a route tier",
                item.span,
                &["model", "accept_when"],
                &["model"],
            ) else {
                ok = false;
                continue;
            };
            let model = fields.get("model").and_then(|n| self.string(n, "`model`"));
            self.extra_variables = &["output", "confidence", "cost", "tier"];
            let accept_when = match fields.get("accept_when") {
                None => Some(None),
                Some(n) => self.expr(n, Usage::Condition).map(Some),
            };
            self.extra_variables = &[];
            match (model, accept_when) {
                (Some(model), Some(accept_when)) => tiers.push(Tier { model, accept_when }),
                _ => ok = false,
            }
        }
        ok.then_some(tiers)
    }

    fn method(&mut self, node: &Node) -> Option<HttpMethod> {
        let methods = [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ];
        let text = node.as_str().unwrap_or_default().to_ascii_uppercase();
        let found = methods.into_iter().find(|m| m.as_str() == text);
        if found.is_none() {
            self.error(
                "invalid-value",
                node.span,
                format!("`method` must be an HTTP method, found {}", describe(node)),
                "use GET, POST, PUT, PATCH or DELETE".to_string(),
            );
        }
        found
    }

    fn url(&mut self, node: &Node) -> Option<Template> {
        let url = self.template(node, "`url`")?;
        let literal_start = match url.parts.first() {
            Some(TemplatePart::Literal(text)) => Some(text.to_ascii_lowercase()),
            // A URL that starts with a hole is checked when the action runs.
            _ => None,
        };
        if let Some(start) = literal_start {
            if !(start.starts_with("http://") || start.starts_with("https://")) {
                self.error(
                    "invalid-url",
                    node.span,
                    format!("the action URL must start with `http://` or `https://`, found `{}`", url.literal_text()),
                    "write the scheme and host literally, e.g. `https://erp.example.com/api/${input.id}`".to_string(),
                );
                return None;
            }
        }
        Some(url)
    }

    fn headers(&mut self, node: &Node) -> Option<BTreeMap<String, Template>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, "`headers`", "a mapping of header names to strings");
            return None;
        };
        let mut headers = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let name = key.as_str().filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
            });
            let template = self.template(value, "a header value");
            match (name, template) {
                (Some(name), Some(template)) => {
                    headers.insert(name.to_string(), template);
                }
                (None, _) => {
                    ok = false;
                    self.error(
                        "invalid-value",
                        key.span,
                        format!("{} is not an HTTP header name", describe(key)),
                        "header names are letters, digits and `-`, e.g. `X-Tenant`".to_string(),
                    );
                }
                _ => ok = false,
            }
        }
        ok.then_some(headers)
    }

    fn bounded(&mut self, node: &Node, what: &str, min_ms: u64, max_ms: u64) -> Option<DurationMs> {
        let duration = self.duration(node, what)?;
        if duration.0 < min_ms || duration.0 > max_ms {
            self.error(
                "out-of-range",
                node.span,
                format!("{what} must be between {min_ms}ms and {}s", max_ms / 1000),
                "for example `30s`".to_string(),
            );
            return None;
        }
        Some(duration)
    }

    fn retry(&mut self, node: &Node, key: Span) -> Option<RetryPolicy> {
        let fields = self.fields(
            node,
            "`retry`",
            key,
            &["max_attempts", "initial_backoff", "max_backoff"],
            &[],
        )?;
        let defaults = RetryPolicy::default();
        let max_attempts = match fields.get("max_attempts") {
            None => Some(defaults.max_attempts),
            Some(n) => match n.value {
                Value::Int(i) if (1..=10).contains(&i) => u32::try_from(i).ok(),
                Value::Int(i) => {
                    self.error(
                        "retry-bounds",
                        n.span,
                        format!("`max_attempts` must be between 1 and 10, found {i}"),
                        "count includes the first attempt; 3 to 5 is typical".to_string(),
                    );
                    None
                }
                _ => {
                    self.wrong_type(n, "`max_attempts`", "an integer");
                    None
                }
            },
        };
        let initial = match fields.get("initial_backoff") {
            None => Some(defaults.initial_backoff),
            Some(n) => self.duration(n, "`initial_backoff`"),
        };
        let max = match fields.get("max_backoff") {
            None => Some(defaults.max_backoff),
            Some(n) => self.duration(n, "`max_backoff`"),
        };
        let (initial_backoff, max_backoff) = (initial?, max?);
        if max_backoff.0 > MAX_BACKOFF_MS {
            self.error(
                "retry-bounds",
                fields.key_span("max_backoff").unwrap_or(key),
                format!("`max_backoff` must be at most {}m", MAX_BACKOFF_MS / 60_000),
                "longer waits belong in a `wait` step".to_string(),
            );
            return None;
        }
        if initial_backoff > max_backoff {
            self.error(
                "retry-bounds",
                fields.key_span("initial_backoff").unwrap_or(key),
                format!(
                    "`initial_backoff` ({}ms) is longer than `max_backoff` ({}ms)",
                    initial_backoff.0, max_backoff.0
                ),
                "make `initial_backoff` at most `max_backoff`".to_string(),
            );
            return None;
        }
        Some(RetryPolicy {
            max_attempts: max_attempts?,
            initial_backoff,
            max_backoff,
        })
    }

    fn wait(
        &mut self,
        node: &Node,
        key: Span,
        label: &str,
        targets: &mut Vec<Target>,
    ) -> Option<Wait> {
        let what = format!("`wait` of {label}");
        let allowed = ["for", "until", "signal", "timeout", "into", "timeout_goto"];
        let fields = self.fields(node, &what, key, &allowed, &[])?;
        let modes: Vec<&str> = fields
            .names()
            .filter(|n| ["for", "until", "signal"].contains(n))
            .collect();
        let Some(mode) = modes.first().copied() else {
            self.error(
                "missing-field",
                key,
                format!("{what} needs one of `for`, `until` or `signal`"),
                "e.g. `wait: { for: 2h }` or `wait: { signal: approved, timeout: 3d }`".to_string(),
            );
            return None;
        };
        if let Some(second) = modes.get(1) {
            self.conflict(&fields.key_span(second), key, mode, second);
            return None;
        }
        if mode != "signal" {
            for extra in ["timeout", "into", "timeout_goto"] {
                if let Some(span) = fields.key_span(extra) {
                    self.error(
                        "field-not-applicable",
                        span,
                        format!("`{extra}` applies only to `wait: {{ signal: … }}`"),
                        format!("remove `{extra}`"),
                    );
                }
            }
        }
        let value = fields.get(mode)?;
        match mode {
            "for" => self.duration(value, "`for`").map(Wait::For),
            "until" => self.expr(value, Usage::Value).map(Wait::Until),
            _ => {
                let name = self.name(value, "signal name", "invalid-name");
                let timeout = match fields.get("timeout") {
                    Some(n) => self.duration(n, "`timeout`"),
                    None => {
                        self.error(
                            "missing-field",
                            key,
                            format!("{what} waits for a signal without a `timeout`"),
                            "add `timeout: 3d` (and `timeout_goto:` to choose where to go then)"
                                .to_string(),
                        );
                        None
                    }
                };
                let into = match fields.get("into") {
                    Some(n) => self.identifier(n, "`into`"),
                    None => name.clone().filter(|n| {
                        self.check_identifier(n, value.span, "the signal name (used as `into`)")
                    }),
                };
                let timeout_goto = match fields.get("timeout_goto") {
                    Some(n) => {
                        let step = self.string(n, "`timeout_goto`")?;
                        targets.push(Target {
                            step: step.clone(),
                            span: n.span,
                        });
                        Some(step)
                    }
                    None => None,
                };
                Some(Wait::Signal {
                    name: name?,
                    timeout: timeout?,
                    into: into?,
                    timeout_goto,
                })
            }
        }
    }

    fn end(&mut self, node: &Node, key: Span, label: &str, id: &str) -> Option<End> {
        let mut end = End {
            outcome: String::new(),
            uses_ai: Vec::new(),
            influence: Vec::new(),
            gate: Gate::default(),
            trust: Box::default(),
        };
        if node.as_str().is_some() {
            end.outcome = self.name(node, "outcome", "invalid-name")?;
            return Some(end);
        }
        let fields = self.fields(
            node,
            &format!("`end` of {label}"),
            key,
            &["outcome", "approval", "trust"],
            &["outcome"],
        )?;
        let outcome = fields
            .get("outcome")
            .and_then(|n| self.name(n, "outcome", "invalid-name"));
        let trust = self.trust_block(&fields, id);
        let gate = self.operation_gate(&fields, key, "`approval` of the end");
        end.outcome = outcome?;
        end.trust = trust?;
        end.gate = gate?;
        Some(end)
    }

    /// `trust:` of an action or end (safe defaults without one). A `gate: none` is remembered
    /// with its position: the parser warns about it once it knows what influences the step.
    fn trust_block(
        &mut self,
        fields: &super::values::Fields,
        id: &str,
    ) -> Option<Box<crate::trust::TrustConfig>> {
        let Some(node) = fields.get("trust") else {
            return Some(Box::default());
        };
        match crate::trust::TrustConfig::from_json(&self.json(node)?) {
            Ok(config) => {
                if config.ungated.is_some() {
                    let span = fields.key_span("trust").unwrap_or(node.span);
                    self.ungated.push((id.to_string(), span));
                }
                let problems = config.setting_problems();
                for problem in &problems {
                    let span = setting_span(node, &problem.path);
                    self.error_unless_stored(
                        "trust-settings",
                        span,
                        format!("step `{id}`: {}", problem.message),
                        problem.hint.clone(),
                    );
                }
                (problems.is_empty() || self.stored).then(|| Box::new(config))
            }
            Err(message) => {
                self.error(
                    "invalid-value",
                    node.span,
                    message,
                    "see the `trust:` format in keel_core::trust".to_string(),
                );
                None
            }
        }
    }

    /// `approval:` of an action or end: who confirms it when the trust gate asks a person.
    fn operation_gate(
        &mut self,
        fields: &super::values::Fields,
        key: Span,
        what: &str,
    ) -> Option<Gate> {
        match fields.get("approval") {
            None => Some(Gate::default()),
            Some(n) => self
                .gate(n, fields.key_span("approval").unwrap_or(key), what, &[])
                .map(|(gate, _)| gate),
        }
    }
}

/// A field of a mapping node before it is checked.
fn raw_field<'n>(node: &'n Node, name: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value),
        _ => None,
    }
}

/// True when a key of the step is a near miss of a kind keyword.
fn misspelled_kind(node: &Node) -> bool {
    let Value::Map(entries) = &node.value else {
        return false;
    };
    entries.iter().any(|(key, _)| {
        key.as_str().is_some_and(|k| {
            !KINDS.contains(&k)
                && !COMMON.contains(&k)
                && super::diagnostic::closest(k, KINDS.iter().copied()).is_some()
        })
    })
}

fn describe(node: &Node) -> String {
    match node.scalar_text() {
        Some(text) if is_name(&text) || text.len() < 30 => format!("`{text}`"),
        _ => node.type_name().to_string(),
    }
}

/// The output schema of a `classify` task: `{"label": one of labels}`.
pub(crate) fn classify_schema(labels: &[String]) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
        "additionalProperties": false
    })
}

/// Where a `trust:` setting is written: the value at `path` under the `trust` node, or the
/// deepest mapping on the way that is written (a default is reported where it would go).
fn setting_span(trust: &Node, path: &[&str]) -> Span {
    let mut node = trust;
    for key in path {
        let Value::Map(entries) = &node.value else {
            break;
        };
        match entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
            Some((_, value)) => node = value,
            None => break,
        }
    }
    node.span
}
