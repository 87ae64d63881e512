//! `keel bench report`: the monthly operational review over a month of N cases (default
//! 1,000,000; floor: under 30 s).
//!
//! The month is generated straight into a temporary SQLite database with
//! `Store::bulk_load` (one transaction per ~50,000 rows, the next batch generated while the
//! last one is written): per case its journal (`case.created`, `ai.proposed` with the cascade
//! record, `trust.gate`, tasks and `outcome.reviewed` where a person decided or a review was
//! sampled, the action, the end), its model calls, review outcomes, exceptions with real
//! fingerprints and SLA breaches, plus the operations' trust history and a few drift alerts.
//! Two workflows: `refunds` (route small → large, phase 1 promoted to 2 on day 12) and
//! `triage` (route learner → small → large, phase 2 demoted to 1 on day 20, accuracy falling
//! in the second half). No engine runs, so no background pass competes with the report.
//! Then the report is built (timed) and rendered as HTML and Markdown (timed apart), with the
//! peak RSS of the report alone (VmHWM reset through /proc/self/clear_refs where allowed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use keel_store::{
    AiCallRow, BulkCase, BulkException, BulkOutcome, BulkPattern, BulkRows, NewEntry, PhaseChange,
    Store,
};

use crate::bench::{progress, Figures};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Cases in the month.
    #[arg(long, default_value_t = 1_000_000)]
    pub cases: usize,
    /// Keep the generated database at URL (a SQLite path, or postgres://… of an existing,
    /// empty database); when it already holds the month, reuse it (measure the report again
    /// without generating). Default: a temporary SQLite file.
    #[arg(long)]
    pub database: Option<String>,
    /// Also write the rendered review here (`.html`, `.md` or `.json` by extension).
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The benchmark's month and its bounds.
const MONTH: &str = "2026-10";
const MONTH_FROM_MS: i64 = 1_790_812_800_000; // 2026-10-01T00:00:00Z
const MONTH_DAYS: i64 = 31;
const DAY_MS: i64 = 86_400_000;
/// Rows per bulk transaction.
const ROWS_PER_BATCH: usize = 50_000;
const FLOOR_S: f64 = 30.0;
/// Stands in for a real data hash: the report never reads it, the row size stays realistic.
const FAKE_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const REFUNDS: &str = r#"
name: refunds
version: "1"
input: { schema: { type: object } }
steps:
  - id: judge
    ai:
      task: classify
      labels: [pay, hold]
      prompt: "{{ input.text }}"
      route:
        - model: small
          accept_when: "confidence >= 0.8"
        - model: large
  - id: pay
    action:
      method: POST
      url: "https://payments.example/refunds"
      body: { decision: "${ data.judge.output.label }" }
      approval: { roles: [reviewer] }
      trust: { phase: 1, policy: "double(input.amount) < 100.0", promotion: { min_reviews: 100, window: 30d } }
  - id: done
    end: paid
"#;

const TRIAGE: &str = r#"
name: triage
version: "1"
input: { schema: { type: object } }
steps:
  - id: route
    ai:
      task: classify
      labels: [billing, tech, sales]
      prompt: "{{ input.text }}"
      route:
        - model: learner
          accept_when: "confidence >= 0.9"
        - model: small
          accept_when: "confidence >= 0.8"
        - model: large
  - id: assign
    action:
      method: POST
      url: "https://desk.example/assign"
      body: { queue: "${ data.route.output.label }" }
      trust: { phase: 2, policy: "true" }
  - id: done
    end: assigned
"#;

const KEEL_TOML: &str = r#"
[models.small]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "small"
[models.small.price]
input = 0.15
output = 0.60
effective = "2026-01-01"

[models.large]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "large"
[models.large.price]
input = 2.50
output = 10.00
effective = "2026-01-01"

[models.learner]
provider = "local"

[budgets.total]
monthly_usd = 1500.0

[budgets.workflows.refunds]
monthly_usd = 900.0
"#;

/// What was generated.
#[derive(Debug, Default)]
struct Counts {
    entries: usize,
    calls: usize,
    outcomes: usize,
    exceptions: usize,
}

/// One model call of a cascade, as generated.
struct Call {
    tier: usize,
    model: &'static str,
    cost_usd: f64,
    input_tokens: i64,
    output_tokens: i64,
    latency_ms: i64,
    cache_hit: bool,
}

struct Generator {
    rng: fastrand::Rng,
    cases: usize,
    patterns: HashMap<String, BulkPattern>,
    counts: Counts,
}

fn entry(
    at_ms: i64,
    kind: &str,
    case_id: &str,
    workflow: &str,
    step: Option<&str>,
    data: String,
) -> NewEntry {
    NewEntry {
        at: keel_engine::rfc3339_ms(at_ms),
        kind: kind.to_string(),
        actor_type: "system".into(),
        actor_id: "engine".into(),
        case_id: Some(case_id.to_string()),
        workflow: Some(workflow.to_string()),
        step: step.map(str::to_string),
        data,
        data_sha256: FAKE_SHA256.into(),
    }
}

impl Generator {
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.rng.f64()).ln()
    }

    /// The cascade of one case: the calls made and the tier that settled it.
    fn cascade(&mut self, refunds: bool) -> (Vec<Call>, usize) {
        let draw = self.rng.f64();
        let (settled, models): (usize, &[(usize, &'static str)]) = if refunds {
            if draw < 0.85 {
                (0, &[(0, "small")])
            } else {
                (1, &[(0, "small"), (1, "large")])
            }
        } else if draw < 0.60 {
            (0, &[])
        } else if draw < 0.61 {
            (1, &[(1, "small")])
        } else {
            (2, &[(1, "small"), (2, "large")])
        };
        let calls = models
            .iter()
            .map(|&(tier, model)| {
                let input_tokens = 600 + self.rng.i64(0..400);
                let output_tokens = 8 + self.rng.i64(0..24);
                let (price_in, price_out, base, mean) = match model {
                    "small" => (0.15, 0.60, 200.0, 300.0),
                    _ => (2.50, 10.00, 600.0, 900.0),
                };
                let cache_hit = model == "small" && self.rng.f64() < 0.02;
                let cost_usd = if cache_hit {
                    0.0
                } else {
                    (input_tokens as f64 * price_in + output_tokens as f64 * price_out) / 1e6
                };
                let latency_ms = if cache_hit {
                    1
                } else {
                    (base + self.exponential(mean)) as i64
                };
                Call {
                    tier,
                    model,
                    cost_usd,
                    input_tokens,
                    output_tokens,
                    latency_ms,
                    cache_hit,
                }
            })
            .collect();
        (calls, settled)
    }

    /// Generates case `i` into `rows`.
    fn case(&mut self, i: usize, rows: &mut BulkRows) {
        let refunds = i % 5 < 3;
        let (workflow, ai_step, action) = if refunds {
            ("refunds", "judge", "pay")
        } else {
            ("triage", "route", "assign")
        };
        let operation = format!("{workflow}/{action}");
        let id = format!("01990000-0000-7000-8000-{i:012x}");
        let span = MONTH_DAYS * DAY_MS;
        let created = MONTH_FROM_MS + (i as i64 * span) / self.cases.max(1) as i64;
        let day = (created - MONTH_FROM_MS) as f64 / DAY_MS as f64;
        let amount = (self.rng.f64() * 200.0 * 100.0).round() / 100.0;
        let text = format!("Customer {} writes about order {}: the parcel arrived damaged and they ask what happens next.", self.rng.u32(1000..99999), self.rng.u32(100000..999999));
        let mut at = created;
        let mut push =
            |rows: &mut BulkRows, at: i64, kind: &str, step: Option<&str>, data: String| {
                rows.entries
                    .push(entry(at, kind, &id, workflow, step, data));
            };
        push(
            rows,
            at,
            "case.created",
            None,
            format!(r#"{{"input":{{"amount":{amount},"text":"{text}"}},"workflow_version":1}}"#),
        );
        let (calls, tier) = self.cascade(refunds);
        let confidence = 0.55 + 0.45 * self.rng.f64().sqrt();
        let labels: &[&str] = if refunds {
            &["pay", "hold"]
        } else {
            &["billing", "tech", "sales"]
        };
        let label = labels[self.rng.usize(0..labels.len())];
        let tier_model = if refunds {
            ["small", "large"][tier]
        } else {
            ["learner", "small", "large"][tier]
        };
        let mut attempts = Vec::new();
        let mut cascade_cost = 0.0;
        if !refunds {
            attempts.push(format!(r#"{{"accepted":{},"confidence":{confidence:.4},"confidence_method":"learner","cost_usd":0.0,"latency_us":85,"model":"learner","output":{{"label":"{label}"}},"problems":[],"provider":"local","tier":0}}"#, tier == 0));
        }
        for call in &calls {
            at += call.latency_ms;
            cascade_cost += call.cost_usd;
            attempts.push(format!(
                r#"{{"accepted":{},"attempts":1,"cache_hit":{},"confidence":{confidence:.4},"confidence_method":"logprob_label","cost_usd":{},"latency_ms":{},"model":"{}","output":{{"label":"{label}"}},"problems":[],"provider":"openai","tier":{},"usage":{{"cached_input_tokens":0,"input_tokens":{},"output_tokens":{}}}}}"#,
                call.tier == tier, call.cache_hit, call.cost_usd, call.latency_ms, call.model, call.tier, call.input_tokens, call.output_tokens
            ));
            rows.calls.push(AiCallRow {
                at_ms: at,
                day: keel_engine::rfc3339_ms(at)[..10].to_string(),
                source: "step".into(),
                caller: None,
                workflow: Some(workflow.into()),
                step: Some(ai_step.into()),
                case_id: Some(id.clone()),
                model: call.model.into(),
                provider: "openai".into(),
                status: "ok".into(),
                input_tokens: call.input_tokens,
                output_tokens: call.output_tokens,
                cached_input_tokens: 0,
                cost_nano: Some((call.cost_usd * 1e9).round() as i64),
                latency_ms: call.latency_ms,
                cache_hit: call.cache_hit,
                attempts: 1,
            });
        }
        push(
            rows,
            at,
            "ai.proposed",
            Some(ai_step),
            format!(
                r#"{{"attempt":1,"cascade":{{"attempts":[{}],"cost_known":true,"cost_usd":{cascade_cost},"path":["{tier_model}"]}},"proposal":{{"confidence":{confidence:.4},"confidence_method":"logprob_label","cost_usd":{cascade_cost},"model":"{tier_model}","output":{{"label":"{label}"}},"tier":{tier}}}}}"#,
                attempts.join(",")
            ),
        );
        // Phases: refunds/pay 1 until day 12, then 2; triage/assign 2 until day 20, then 1.
        let phase = match (refunds, day) {
            (true, d) if d < 12.0 => 1,
            (true, _) => 2,
            (false, d) if d < 20.0 => 2,
            (false, _) => 1,
        };
        let auto = phase == 2 && (!refunds || amount < 100.0);
        let sampled = auto && self.rng.f64() < 0.10;
        push(
            rows,
            at,
            "trust.gate",
            Some(action),
            format!(
                r#"{{"decision":"{}","operation":"{operation}","phase":{phase},"reason":"{}","review_rate":0.1,"review_sampled":{sampled}}}"#,
                if auto { "auto" } else { "task" },
                if auto {
                    "the policy holds"
                } else if phase == 1 {
                    "phase 1: every action waits for a person"
                } else {
                    "the policy does not hold"
                }
            ),
        );
        let agree_rate = match (refunds, day) {
            (true, _) => 0.97,
            (false, d) if d < 15.5 => 0.96,
            (false, _) => 0.88,
        };
        let mut duration = 1_000.0 + self.exponential(4_000.0);
        if !auto {
            let task_id = format!("{id}.{action}.1");
            let decided = at + (self.exponential(45.0 * 60_000.0) as i64).max(30_000);
            let agreed = self.rng.f64() < agree_rate;
            let verdict = if agreed {
                "agree"
            } else if self.rng.bool() {
                "corrected"
            } else {
                "rejected"
            };
            push(
                rows,
                at,
                "task.created",
                Some(action),
                format!(
                    r#"{{"action":{{"method":"POST"}},"kind":"action","operation":"{operation}","required":1,"roles":["reviewer"],"task_id":"{task_id}","title":"Approve the action `{action}`"}}"#
                ),
            );
            push(
                rows,
                decided,
                "task.completed",
                Some(action),
                format!(
                    r#"{{"by":"reviewer-{}","decision":"{verdict}","task_id":"{task_id}"}}"#,
                    self.rng.u8(0..20)
                ),
            );
            self.outcome(
                rows, &id, workflow, &operation, &task_id, decided, "pre", verdict, phase,
                tier_model, confidence, agreed,
            );
            duration = (decided - created) as f64 + 500.0;
        }
        if sampled {
            let task_id = format!("{id}.{action}.review");
            let reviewed = at + (self.exponential(6.0 * 3_600_000.0) as i64).max(60_000);
            let agreed = self.rng.f64() < agree_rate;
            let verdict = if agreed { "agree" } else { "corrected" };
            push(
                rows,
                at,
                "task.created",
                Some(action),
                format!(
                    r#"{{"kind":"review","operation":"{operation}","phase":{phase},"required":1,"task_id":"{task_id}"}}"#
                ),
            );
            self.outcome(
                rows, &id, workflow, &operation, &task_id, reviewed, "post", verdict, phase,
                tier_model, confidence, agreed,
            );
        }
        let end = created + duration as i64;
        push(
            rows,
            end - 300,
            "action.started",
            Some(action),
            format!(r#"{{"attempt":1,"idempotency_key":"{id}.{action}.1","method":"POST"}}"#),
        );
        push(
            rows,
            end - 100,
            "action.completed",
            Some(action),
            r#"{"status":200}"#.to_string(),
        );
        let sla_breached = end - created > 4 * 3_600_000;
        if sla_breached {
            push(
                rows,
                created + 4 * 3_600_000,
                "sla.breached",
                None,
                format!(
                    r#"{{"deadline_ms":{},"scope":"case"}}"#,
                    created + 4 * 3_600_000
                ),
            );
        }
        let status = self.ending(rows, &id, workflow, action, end, &mut push);
        rows.cases.push(BulkCase {
            id: id.clone(),
            workflow: workflow.into(),
            workflow_version: 1,
            status: status.into(),
            state: format!(
                r#"{{"data":{{"{ai_step}":{{"label":"{label}"}}}},"status":"{status}"}}"#
            ),
            sla_breached,
            created_at_ms: created,
            updated_at_ms: end,
        });
    }

    #[allow(clippy::too_many_arguments)] // one review's fields, each named at the call
    fn outcome(
        &mut self,
        rows: &mut BulkRows,
        case_id: &str,
        workflow: &str,
        operation: &str,
        task_id: &str,
        at: i64,
        source: &str,
        verdict: &str,
        phase: i64,
        model: &str,
        confidence: f64,
        agreed: bool,
    ) {
        // Disagreements come with lower confidence on average (a calibrated-ish model).
        let confidence = if agreed { confidence } else { confidence * 0.8 };
        rows.entries.push(entry(at, "outcome.reviewed", case_id, workflow, operation.split('/').nth(1), format!(
            r#"{{"by":["reviewer"],"confidence":{confidence:.4},"model":"{model}","operation":"{operation}","phase":{phase},"source":"{source}","task_id":"{task_id}","verdict":"{verdict}"}}"#
        )));
        rows.outcomes.push(BulkOutcome {
            operation: operation.to_string(),
            case_id: case_id.to_string(),
            task_id: task_id.to_string(),
            at_ms: at,
            source: source.to_string(),
            verdict: verdict.to_string(),
            phase,
            model: Some(model.to_string()),
            confidence: Some(confidence),
        });
        self.counts.outcomes += 1;
    }

    /// How the case ends: mostly completed, some parked on an exception, a few failed.
    fn ending(
        &mut self,
        rows: &mut BulkRows,
        id: &str,
        workflow: &str,
        step: &str,
        end: i64,
        push: &mut impl FnMut(&mut BulkRows, i64, &str, Option<&str>, String),
    ) -> &'static str {
        let draw = self.rng.f64();
        if draw < 0.005 {
            push(
                rows,
                end,
                "case.failed",
                None,
                r#"{"error":{"kind":"cancelled"}}"#.to_string(),
            );
            return "failed";
        }
        if draw >= 0.025 {
            push(
                rows,
                end,
                "case.completed",
                None,
                r#"{"outcome":"done"}"#.to_string(),
            );
            return "completed";
        }
        let kind = [
            "action_failed",
            "action_response_invalid",
            "expression_error",
        ][self.rng.usize(0..3)];
        let message = match kind {
            "action_failed" => format!(
                "POST https://desk.example/{} answered {} after {} attempts",
                self.rng.u32(1..40),
                [500, 502, 503, 429][self.rng.usize(0..4)],
                self.rng.u8(1..5)
            ),
            "action_response_invalid" => format!(
                "the response is missing required field `ticket_{}`",
                self.rng.u8(0..8)
            ),
            _ => format!("no such key: customer_{}", self.rng.u8(0..6)),
        };
        let fingerprint = keel_core::fingerprint::fingerprint(workflow, Some(step), kind, &message);
        let exception_id = format!("{id}.{step}.1");
        let resolved = (self.rng.f64() < 0.75)
            .then(|| end + (self.exponential(3.0 * 3_600_000.0) as i64).max(60_000));
        push(
            rows,
            end,
            "exception.raised",
            Some(step),
            format!(r#"{{"exception_id":"{exception_id}","kind":"{kind}","message":"{message}"}}"#),
        );
        let pattern = self
            .patterns
            .entry(fingerprint.id.clone())
            .or_insert_with(|| BulkPattern {
                fingerprint: fingerprint.id.clone(),
                workflow: workflow.to_string(),
                step: Some(step.to_string()),
                kind: kind.to_string(),
                template: fingerprint.template.clone(),
                first_seen_ms: end,
                last_seen_ms: end,
                total: 0,
            });
        pattern.total += 1;
        pattern.last_seen_ms = pattern.last_seen_ms.max(end);
        rows.exceptions.push(BulkException {
            id: exception_id.clone(),
            case_id: id.to_string(),
            workflow: workflow.to_string(),
            step: Some(step.to_string()),
            kind: kind.to_string(),
            message,
            fingerprint: fingerprint.id,
            template: fingerprint.template,
            raised_at_ms: end,
            resolved_at_ms: resolved,
        });
        self.counts.exceptions += 1;
        match resolved {
            Some(at) => {
                push(
                    rows,
                    at,
                    "exception.resolved",
                    Some(step),
                    format!(r#"{{"action":"retry","by":"opal","exception_id":"{exception_id}"}}"#),
                );
                push(
                    rows,
                    at + 800,
                    "case.completed",
                    None,
                    r#"{"outcome":"done"}"#.to_string(),
                );
                "completed"
            }
            None => "exception",
        }
    }
}

/// The operations' trust history (before and during the month) and a few drift alerts.
async fn trust_history(store: &Store) -> anyhow::Result<()> {
    let day = |d: f64| MONTH_FROM_MS + (d * DAY_MS as f64) as i64;
    let changes = [
        (
            "refunds",
            "pay",
            None,
            1,
            day(-40.0),
            "trust.initialised",
            false,
        ),
        (
            "triage",
            "assign",
            None,
            2,
            day(-40.0),
            "trust.initialised",
            false,
        ),
        (
            "refunds",
            "pay",
            Some(1),
            2,
            day(12.0),
            "trust.promoted",
            true,
        ),
        (
            "triage",
            "assign",
            Some(2),
            1,
            day(20.0),
            "trust.demoted",
            false,
        ),
    ];
    for (workflow, step, expected, phase, at_ms, kind, promoted) in changes {
        let operation = format!("{workflow}/{step}");
        let data = match kind {
            "trust.initialised" => {
                format!(r#"{{"operation":"{operation}","phase":{phase},"version":1}}"#)
            }
            "trust.promoted" => format!(
                r#"{{"by":"gus","evidence":{{"agreements":1930,"reviews":1985,"wilson_low":0.962}},"from_phase":1,"operation":"{operation}","reason":"steady agreement","to_phase":{phase}}}"#
            ),
            _ => format!(
                r#"{{"evidence":{{"errors":41,"llr":3.2,"outcomes":380}},"from_phase":2,"operation":"{operation}","reason":"the SPRT rejected the target error rate","to_phase":{phase},"trigger":"sprt"}}"#
            ),
        };
        let mut e = entry(at_ms, kind, "", workflow, Some(step), data);
        e.case_id = None;
        let change = PhaseChange {
            operation,
            workflow: workflow.into(),
            step: step.into(),
            expected,
            phase,
            at_ms,
            promoted,
            workflow_version: Some(1),
            config_sha256: None,
        };
        if !store.trust_set_phase(&change, &e).await? {
            bail!("could not set up the trust history");
        }
    }
    let mut alerts = Vec::new();
    for (index, d) in [18.5, 22.0, 27.25].into_iter().enumerate() {
        let mut e = entry(
            day(d),
            "drift.alert",
            "",
            "triage",
            None,
            format!(
                r#"{{"feature":"size(input.text)","method":"wasserstein","threshold":0.1,"value":{}}}"#,
                0.15 + index as f64 * 0.05
            ),
        );
        e.case_id = None;
        alerts.push(e);
    }
    store.append(&alerts).await?;
    Ok(())
}

/// Generates the month into `store`; returns what it wrote.
async fn generate(store: &Store, cases: usize) -> anyhow::Result<Counts> {
    trust_history(store).await?;
    let bar = progress(cases as u64, "cases");
    let mut generator = Generator {
        rng: fastrand::Rng::with_seed(20261001),
        cases,
        patterns: HashMap::new(),
        counts: Counts::default(),
    };
    let mut writing: Option<tokio::task::JoinHandle<keel_store::Result<()>>> = None;
    let mut rows = BulkRows::default();
    for i in 0..cases {
        generator.case(i, &mut rows);
        let last = i + 1 == cases;
        if rows.len() >= ROWS_PER_BATCH || last {
            if last {
                rows.patterns = generator.patterns.values().cloned().collect();
            }
            generator.counts.entries += rows.entries.len();
            generator.counts.calls += rows.calls.len();
            if let Some(previous) = writing.take() {
                previous.await??;
            }
            let batch = std::mem::take(&mut rows);
            let store = store.clone();
            writing = Some(tokio::spawn(async move { store.bulk_load(&batch).await }));
            bar.set_position(i as u64 + 1);
        }
    }
    if let Some(previous) = writing.take() {
        previous.await??;
    }
    bar.finish_and_clear();
    Ok(generator.counts)
}

/// VmHWM and VmRSS of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub async fn bench_report(args: &ReportArgs) -> anyhow::Result<Figures> {
    if args.cases == 0 {
        bail!("--cases must be positive");
    }
    let dir = tempfile::tempdir()?;
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| dir.path().join("keel.sqlite").display().to_string());
    let store = Store::open(&url).await?;
    let (window, _) = keel_engine::report::month_window(MONTH)?;
    let reuse = !store.report_cases(window).await?.is_empty();
    let started = Instant::now();
    let counts = if reuse {
        eprintln!("reusing the month in {url} (not generating)");
        Counts::default()
    } else {
        generate(&store, args.cases).await?
    };
    let generate_s = started.elapsed().as_secs_f64();
    let (generate_peak_kib, _) = memory_kib();
    let mut workflows = BTreeMap::new();
    for (source, file) in [(REFUNDS, "refunds.yaml"), (TRIAGE, "triage.yaml")] {
        let workflow = keel_core::workflow::parse_str(source, file, None)
            .map_err(|d| anyhow::anyhow!("bench workflow {file} does not parse: {d:?}"))?;
        workflows.insert(workflow.name.clone(), Arc::new(workflow));
    }
    let config = keel_ai::config::Config::parse("keel.toml", KEEL_TOML)
        .map_err(|e| anyhow::anyhow!("bench keel.toml: {e:?}"))?;
    let sources = keel_engine::report::Sources {
        store: &store,
        workflows,
        config: Some(&config),
        now_ms: MONTH_FROM_MS + (MONTH_DAYS + 1) * DAY_MS,
    };
    // Peak RSS of the report alone: "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let report = sources.monthly_report(Some(MONTH)).await?;
    let report_s = started.elapsed().as_secs_f64();
    let (report_peak_kib, rss_kib) = memory_kib();
    let started = Instant::now();
    let html = keel_engine::report_render::html(&report);
    let markdown = keel_engine::report_render::markdown(&report);
    let json = serde_json::to_string(&report).context("serialising the report")?;
    let render_s = started.elapsed().as_secs_f64();
    if let Some(output) = &args.output {
        let text = match output.extension().and_then(|e| e.to_str()) {
            Some("md") => &markdown,
            Some("json") => &json,
            _ => &html,
        };
        std::fs::write(output, text)
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    let database_bytes = std::fs::metadata(&url).map_or(0, |m| m.len());
    store.close().await;
    let backend = if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let mut figures = Figures {
        title: format!(
            "keel bench report: the monthly review of {MONTH} over {} cases ({backend})",
            report.summary.cases
        ),
        rows: Vec::new(),
    };
    figures.add("cases", report.summary.cases, "");
    figures.add("reused_database", reuse, "");
    if !reuse {
        figures.add("journal_entries", counts.entries as u64, "");
        figures.add("ai_calls", counts.calls as u64, "");
        figures.add("review_outcomes", counts.outcomes as u64, "");
        figures.add("exceptions", counts.exceptions as u64, "");
        figures.add("generate_s", generate_s, "s");
    }
    figures.add(
        "database_mib",
        database_bytes as f64 / 1_048_576.0,
        "MiB (SQLite file; 0 for PostgreSQL)",
    );
    figures.add("report_s", report_s, "s");
    figures.add("render_s", render_s, "s (HTML, Markdown and JSON)");
    figures.add("floor_s", FLOOR_S, "s");
    figures.add("within_floor", report_s + render_s < FLOOR_S, "");
    figures.add(
        "report_peak_rss_mib",
        report_peak_kib as f64 / 1024.0,
        if reset {
            "MiB (VmHWM, reset before the report)"
        } else {
            "MiB (VmHWM of the whole run: reset refused)"
        },
    );
    figures.add(
        "before_report_peak_rss_mib",
        generate_peak_kib as f64 / 1024.0,
        "MiB (VmHWM before the report)",
    );
    figures.add("rss_after_report_mib", rss_kib as f64 / 1024.0, "MiB");
    figures.add("html_kib", html.len() as f64 / 1024.0, "KiB");
    figures.add("markdown_kib", markdown.len() as f64 / 1024.0, "KiB");
    figures.add("json_kib", json.len() as f64 / 1024.0, "KiB");
    figures.add("recommendations", report.recommendations.len() as u64, "");
    Ok(figures)
}
