//! The cost analysis and the monthly operational review.
//!
//! Both are read-only views assembled from the store's aggregates (`keel_store` `report_*`:
//! projections and journal reads bounded by kind and time, never a whole-journal scan) and
//! from what this node knows: the latest deployed version of each workflow (routes, the `ai`
//! steps each operation uses, promotion targets) and `keel.toml` (prices and budgets). Every
//! figure that is an estimate says how it was estimated in [`Methods`]; the report carries
//! those texts so that a reader of the JSON, the Markdown or the HTML sees the same caveats.
//!
//! Everything below the two `Engine` methods is a pure function of the loaded facts, so the
//! shape of a report is decided in one place and the renderers (`report_render`) only lay it
//! out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, TimeZone};
use keel_core::workflow::{StepKind, Workflow};
use keel_store::{
    CallSummaryRow, CaseCountRow, ConfidenceGroup, ExceptionCountRow, GateRow, GatedCasesRow,
    HistogramRow, JournalRow, LatencyRow, NewPatternRow, ProposalRow, RecommendationRow,
    ReportWindow, ReviewCountRow, TrustOperationRow,
};
use serde::Serialize;
use serde_json::Value;

use keel_store::Store;

use crate::{rfc3339_ms, Engine, Error, Result};

mod events;

pub use events::{ChangeControl, Deployment, Event, UNREVIEWED};

const DAY_MS: i64 = 86_400_000;
/// The longest period a cost report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;
/// Bins of the reliability diagram (equal-frequency).
pub const CALIBRATION_BINS: usize = 10;
/// A tier that accepts less than this share of what reaches it is worth dropping…
pub const DROP_TIER_BELOW: f64 = 0.05;
/// …once at least this many proposals reached it.
pub const DROP_TIER_MIN_REACHED: i64 = 20;
/// Accuracy is falling when the second half of the month agrees this much less than the first…
pub const FALLING_BY: f64 = 0.05;
/// …with at least this many reviews in each half.
pub const FALLING_MIN_REVIEWS: i64 = 30;
/// Patterns listed per workflow.
pub const TOP_PATTERNS: usize = 5;
/// Most journal entries read per kind for the trust history and drift alerts.
const MAX_EVENTS: i64 = 100_000;
/// Most new exception patterns listed.
const MAX_NEW_PATTERNS: i64 = 1_000;

/// How each estimated figure is computed.
#[derive(Debug, Clone, Serialize)]
pub struct Methods {
    pub savings: &'static str,
    pub cost_per_case: &'static str,
    pub projection: &'static str,
    pub automation: &'static str,
    pub latency: &'static str,
    pub accuracy: &'static str,
    pub calibration: &'static str,
    pub recommendations: &'static str,
}

pub const METHODS: Methods = Methods {
    savings: "For each `ai` step, B is the estimated cost of answering one proposal with the last tier of its route directly: the mean cost of a successful, uncached last-tier call of that step in the period, or, when the last tier was not called in the period, the last tier's price in force on the period's last day times the step's mean input and output tokens per successful call. C is what a proposal's cascade actually cost (every attempt of every tier it tried, from its `ai.proposed` entry). saved_usd sums B − C over the proposals settled before the last tier; net_saved_usd sums B − C over every proposal, which also charges the cascade for the earlier tiers that proposals settled at the last tier tried first. Failed cascades are not counted; when B is unknown (no calls and no price) the savings are null. A tier's model is the one that settled most of its proposals in the period (the latest route's model when none did); the proposals that reached a tier are those settled at it or a later tier plus the failed cascades.",
    cost_per_case: "The known cost of a workflow's model calls in the period divided by the cases of that workflow created in the period; calls whose cost is unknown count as zero and are counted separately.",
    projection: "Linear: month-to-date known spend divided by the elapsed share of the month (by time, UTC); for a past month the projection is the actual spend.",
    automation: "A case counts as gated when a `trust.gate` decision was journaled for it in the period, and as automated when every such decision was `auto` (no person before acting; sampled post-hoc reviews do not count as a person).",
    latency: "Case duration is the time from creation to the last update of cases created in the period that completed or failed; durations of 10 s and more are rounded down to the second. Model-call latency covers calls that reached a provider (cache hits excluded). Percentiles are nearest-rank.",
    accuracy: "Agreement is the share of reviews (pre-approval decisions and post-hoc reviews) whose verdict was `agree`, with a 95% Wilson score interval.",
    calibration: "Expected calibration error over 10 equal-frequency bins of the reviewed proposals' raw confidence against whether the reviewer agreed.",
    recommendations: "Promote: an open recommendation, or the engine's own promotion test as of the month's end (now, for this month): the Wilson lower bound (95%) of the agreement over the operation's configured window at or above the next phase's target, with at least the operation's minimum reviews. Drop a tier: it accepted under 5% of the proposals that reached it (at least 20 reached it). Reorder tiers: a later tier costs less per call than an earlier one. Falling accuracy: agreement in the second half of the month more than 5 points below the first, with at least 30 reviews in each half.",
};

// ---------------------------------------------------------------------------------- shapes

/// The period a report covers: `[from, to)`.
#[derive(Debug, Clone, Serialize)]
pub struct Period {
    pub from: String,
    pub to: String,
    pub days: i64,
}

/// The cost analysis (`GET /v1/reports/costs`, part of the monthly review).
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub period: Period,
    /// Known spend in the period, USD (workflow steps and the gateway).
    pub total_usd: f64,
    pub workflow_usd: f64,
    pub gateway_usd: f64,
    pub calls: i64,
    pub cache_hits: i64,
    pub cost_unknown_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub per_day: Vec<DayCost>,
    pub per_model: Vec<ModelCost>,
    pub per_workflow: Vec<WorkflowCost>,
    pub per_operation: Vec<OperationCost>,
    pub cascades: Vec<Cascade>,
    pub saved_usd: Option<f64>,
    pub net_saved_usd: Option<f64>,
    pub savings_estimator: &'static str,
    pub budget: BudgetProjection,
}

#[derive(Debug, Clone, Serialize)]
pub struct DayCost {
    pub day: String,
    pub usd: f64,
    pub calls: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCost {
    pub model: String,
    pub provider: String,
    pub calls: i64,
    pub cache_hits: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub usd: f64,
    pub cost_unknown_calls: i64,
    /// Mean cost of a successful uncached call.
    pub usd_per_call: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowCost {
    pub workflow: String,
    pub usd: f64,
    pub calls: i64,
    pub cases: i64,
    pub usd_per_case: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationCost {
    pub operation: String,
    pub workflow: String,
    /// The `ai` steps whose calls the operation's cost sums.
    pub ai_steps: Vec<String>,
    pub usd: f64,
    pub calls: i64,
    pub usd_per_case: Option<f64>,
}

/// How one `ai` step's cascade settled its proposals.
#[derive(Debug, Clone, Serialize)]
pub struct Cascade {
    pub workflow: String,
    pub step: String,
    /// The models of the latest version's route, cheapest first.
    pub route: Vec<String>,
    pub proposals: i64,
    /// Cascades that ended in an exception (no tier accepted).
    pub failed: i64,
    pub cost_unknown_proposals: i64,
    pub actual_usd: f64,
    pub tiers: Vec<TierShare>,
    /// B of the savings estimator, per proposal.
    pub baseline_usd_per_proposal: Option<f64>,
    /// `observed`, `price` or `unknown`.
    pub baseline_method: &'static str,
    pub saved_usd: Option<f64>,
    pub net_saved_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierShare {
    pub tier: usize,
    pub model: String,
    pub settled: i64,
    /// Of all proposals of the step.
    pub share: f64,
    /// Proposals settled at this tier or later, plus failed cascades.
    pub reached: i64,
    /// settled / reached.
    pub acceptance_rate: Option<f64>,
    /// What the cascades of the proposals settled here cost.
    pub usd: f64,
    /// The cost of one call of this tier's model for this step (observed, else priced).
    pub usd_per_call: Option<f64>,
}

/// Month-to-date spend against `[budgets]` monthly limits.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetProjection {
    pub month: String,
    pub month_to_date_usd: f64,
    /// Share of the month elapsed (0 to 1).
    pub elapsed: f64,
    pub projected_usd: f64,
    pub limit_usd: Option<f64>,
    pub projected_share_of_limit: Option<f64>,
    /// `no_budget`, `within` or `over`.
    pub status: &'static str,
    pub workflows: Vec<WorkflowBudget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowBudget {
    pub workflow: String,
    pub month_to_date_usd: f64,
    pub projected_usd: f64,
    pub limit_usd: Option<f64>,
    pub projected_share_of_limit: Option<f64>,
    pub status: &'static str,
}

/// The monthly operational review (`keel report monthly`, `GET /v1/reports/monthly`).
#[derive(Debug, Clone, Serialize)]
pub struct MonthlyReport {
    /// `YYYY-MM`.
    pub month: String,
    pub period: Period,
    pub generated_at: String,
    /// The moment the figures describe: the month's end, or now for the current month.
    /// Charts stop here.
    pub as_of: String,
    pub summary: Summary,
    pub workflows: Vec<WorkflowReview>,
    pub recommendations: Vec<Recommendation>,
    pub costs: CostReport,
    pub methods: Methods,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cases: i64,
    pub completed: i64,
    pub failed: i64,
    /// Created in the month and not finished (running, waiting or parked on an exception).
    pub open: i64,
    pub gated_cases: i64,
    pub automated_cases: i64,
    pub automation_rate: Option<f64>,
    pub sla_compliance: Option<f64>,
    pub cost_usd: f64,
    pub saved_usd: Option<f64>,
    pub reviews: i64,
    pub agreement: Option<f64>,
    pub exceptions: i64,
    pub drift_alerts: usize,
    pub promotions: usize,
    pub demotions: usize,
    pub recommendations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReview {
    pub workflow: String,
    pub volume: Volume,
    pub automation: Automation,
    pub operations: Vec<OperationReview>,
    pub cost: WorkflowCostSummary,
    pub latency: Latency,
    pub sla: Sla,
    pub exceptions: ExceptionSummary,
    pub drift_alerts: Vec<DriftAlert>,
    /// Trust and learner events of the month, oldest first, evidence in words.
    pub events: Vec<Event>,
    /// Versions deployed in the month, who wrote and who approved or rejected them.
    pub change_control: ChangeControl,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Volume {
    pub created: i64,
    pub completed: i64,
    pub failed: i64,
    pub exception: i64,
    pub running: i64,
    pub waiting: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Automation {
    pub gated_cases: i64,
    pub automated_cases: i64,
    pub rate: Option<f64>,
    pub auto_decisions: i64,
    pub task_decisions: i64,
    pub sampled_for_review: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationReview {
    pub operation: String,
    pub step: String,
    pub ai_steps: Vec<String>,
    pub phase: PhaseHistory,
    pub decisions: Decisions,
    pub accuracy: Accuracy,
    pub accuracy_by_model: Vec<ModelAccuracy>,
    pub accuracy_by_day: Vec<DayAccuracy>,
    pub first_half: Agreement,
    pub second_half: Agreement,
    pub calibration: Option<Calibration>,
    pub calibration_by_model: Vec<ModelCalibration>,
    /// Where the operation stands against its promotion criteria at the end of the month (or
    /// now, for this month): the engine's own test over the configured window.
    pub promotion: Option<PromotionStanding>,
}

/// The promotion test the engine runs, as of one moment: the Wilson lower bound (95%) of the
/// agreement over the operation's configured window against the next phase's target.
#[derive(Debug, Clone, Serialize)]
pub struct PromotionStanding {
    pub as_of: String,
    pub phase: i64,
    pub next_phase: i64,
    pub target: f64,
    pub min_reviews: u64,
    /// `30d` style (milliseconds as days, hours or minutes) or `last N reviews`.
    pub window: String,
    pub reviews: i64,
    pub agreed: i64,
    pub wilson_low: Option<f64>,
    pub eligible: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseHistory {
    /// The phase in force when the month began (`None`: the operation did not exist yet).
    pub at_start: Option<i64>,
    /// The highest phase the operation was in at any moment of the month.
    pub highest: Option<i64>,
    pub at_end: Option<i64>,
    /// The phase now.
    pub current: Option<i64>,
    pub changes: Vec<PhaseEvent>,
}

/// A trust event of the month with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseEvent {
    pub at: String,
    /// `initialised`, `recommended`, `promoted` or `demoted`.
    pub kind: String,
    pub from_phase: Option<i64>,
    pub to_phase: Option<i64>,
    pub trigger: Option<String>,
    pub by: String,
    pub reason: Option<String>,
    /// The evidence as a sentence.
    pub evidence_text: String,
    /// Demotions: how many retro-review tasks the demotion opened.
    pub retro_reviews: Option<i64>,
    pub evidence: Value,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Decisions {
    pub auto: i64,
    pub task: i64,
    pub sampled_for_review: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Accuracy {
    pub reviews: i64,
    pub agreed: i64,
    pub corrected: i64,
    pub rejected: i64,
    pub pre_approval: i64,
    pub post_hoc: i64,
    pub agreement: Option<f64>,
    pub wilson_low: Option<f64>,
    pub wilson_high: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelAccuracy {
    pub model: String,
    /// The local learner's version when the proposals came from one (`None`: another model,
    /// or reviews recorded before versions were).
    pub learner_version: Option<i64>,
    pub reviews: i64,
    pub agreed: i64,
    pub agreement: Option<f64>,
    pub wilson_low: Option<f64>,
    pub wilson_high: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DayAccuracy {
    pub day: String,
    pub reviews: i64,
    pub agreed: i64,
    pub agreement: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    pub reviews: i64,
    pub agreed: i64,
    pub agreement: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub pairs: usize,
    pub ece: f64,
    pub bins: Vec<keel_tuning::calibration::ReliabilityBin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCalibration {
    pub model: String,
    pub pairs: usize,
    pub ece: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowCostSummary {
    pub usd: f64,
    pub calls: i64,
    pub usd_per_case: Option<f64>,
    pub saved_usd: Option<f64>,
    pub net_saved_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: i64,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub case_duration_ms: Percentiles,
    pub ai_call_ms: Percentiles,
    pub ai_call_ms_by_model: Vec<ModelLatency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelLatency {
    pub model: String,
    #[serde(flatten)]
    pub latency_ms: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sla {
    pub cases: i64,
    pub breached: i64,
    pub compliance: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExceptionSummary {
    pub raised: i64,
    pub resolved: i64,
    pub median_resolve_ms: Option<i64>,
    pub top_patterns: Vec<PatternCount>,
    pub new_patterns: Vec<NewPattern>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatternCount {
    pub fingerprint: String,
    pub step: Option<String>,
    pub kind: String,
    pub template: String,
    pub raised: i64,
    pub resolved: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewPattern {
    pub fingerprint: String,
    pub step: Option<String>,
    pub kind: String,
    pub template: String,
    pub first_seen: String,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftAlert {
    pub at: String,
    pub step: Option<String>,
    pub feature: Option<String>,
    pub method: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// The entry's data as journaled.
    pub data: Value,
}

/// Something to do, with the figures that suggest it.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// `investigate_demotion`, `promote`, `drop_tier`, `reorder_tiers` or `accuracy_falling`.
    pub kind: &'static str,
    pub workflow: String,
    /// The operation or `ai` step concerned (`workflow/step`).
    pub subject: String,
    pub message: String,
    pub evidence: Value,
}

// ---------------------------------------------------------------------------------- periods

/// `[from, to)` of the UTC month `YYYY-MM`, and its label.
pub fn month_window(month: &str) -> Result<(ReportWindow, String)> {
    let invalid = || {
        Error::InvalidRequest(format!(
            "`{month}` is not a month; give it as YYYY-MM, e.g. 2026-11"
        ))
    };
    let (year, number) = month.split_once('-').ok_or_else(invalid)?;
    let year: i32 = year.parse().map_err(|_| invalid())?;
    let number: u32 = number.parse().map_err(|_| invalid())?;
    let first = NaiveDate::from_ymd_opt(year, number, 1).ok_or_else(invalid)?;
    let next = if number == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, number + 1, 1)
    }
    .ok_or_else(invalid)?;
    Ok((
        ReportWindow {
            from_ms: midnight_ms(first),
            to_ms: midnight_ms(next),
        },
        format!("{year:04}-{number:02}"),
    ))
}

/// The month that contains `ms`, as `YYYY-MM`.
pub fn month_of(ms: i64) -> String {
    let date = keel_core::case::millis_to_datetime(ms).date_naive();
    format!("{:04}-{:02}", date.year(), date.month())
}

/// `[from, to]` as UTC dates (`YYYY-MM-DD`, both inclusive); by default the month to date.
pub fn range_window(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<ReportWindow> {
    let today = keel_core::case::millis_to_datetime(now_ms).date_naive();
    let parse = |text: &str, what: &str| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            Error::InvalidRequest(format!(
                "`{what}={text}` is not a date; give it as YYYY-MM-DD"
            ))
        })
    };
    let to = match to {
        Some(text) => parse(text, "to")?,
        None => today,
    };
    let from = match from {
        Some(text) => parse(text, "from")?,
        None => to.with_day(1).unwrap_or(to),
    };
    let window = ReportWindow {
        from_ms: midnight_ms(from),
        to_ms: midnight_ms(to) + DAY_MS,
    };
    if window.to_ms <= window.from_ms {
        return Err(Error::InvalidRequest(format!(
            "`from` ({from}) is after `to` ({to})"
        )));
    }
    if window.to_ms - window.from_ms > MAX_PERIOD_DAYS * DAY_MS {
        return Err(Error::InvalidRequest(format!(
            "a cost report covers at most {MAX_PERIOD_DAYS} days; narrow `from`/`to`"
        )));
    }
    Ok(window)
}

fn midnight_ms(date: NaiveDate) -> i64 {
    chrono::Utc
        .from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
        .timestamp_millis()
}

fn day_label(day: i64) -> String {
    rfc3339_ms(day * DAY_MS)[..10].to_string()
}

fn period(window: ReportWindow) -> Period {
    Period {
        from: rfc3339_ms(window.from_ms),
        to: rfc3339_ms(window.to_ms),
        days: (window.to_ms - window.from_ms + DAY_MS - 1) / DAY_MS,
    }
}

// ---------------------------------------------------------------------------------- engine

/// What a report is built from: the store, the latest version of each workflow (routes, the
/// `ai` steps of each operation, promotion targets), `keel.toml` (prices, budgets) and the
/// time. [`Engine::report_sources`] gives a running node's; benchmarks build their own.
pub struct Sources<'a> {
    pub store: &'a Store,
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    pub config: Option<&'a keel_ai::config::Config>,
    pub now_ms: i64,
}

/// The store's aggregates for one window.
struct CostFacts {
    calls: Vec<CallSummaryRow>,
    proposals: Vec<ProposalRow>,
    cases: Vec<CaseCountRow>,
    exceptions: Vec<ExceptionCountRow>,
    month: String,
    month_window: ReportWindow,
    month_calls: Vec<CallSummaryRow>,
}

impl Engine {
    /// This node's report sources.
    pub fn report_sources(&self) -> Sources<'_> {
        let registry = &self.inner.registry;
        let workflows = registry
            .list()
            .into_iter()
            .filter_map(|(name, _, _)| registry.latest(&name).map(|(_, w)| (name, w)))
            .collect();
        Sources {
            store: &self.inner.store,
            workflows,
            config: self.inner.options.ai.as_deref().map(|ai| ai.config()),
            now_ms: self.now_ms(),
        }
    }

    /// The cost analysis of the UTC days `from..=to` (default: this month to date).
    pub async fn cost_report(&self, from: Option<&str>, to: Option<&str>) -> Result<CostReport> {
        self.report_sources().cost_report(from, to).await
    }

    /// The cost analysis of the UTC month `YYYY-MM`.
    pub async fn cost_report_month(&self, month: &str) -> Result<CostReport> {
        self.report_sources().cost_report_month(month).await
    }

    /// The operational review of the UTC month `YYYY-MM` (default: this month so far).
    pub async fn monthly_report(&self, month: Option<&str>) -> Result<MonthlyReport> {
        self.report_sources().monthly_report(month).await
    }
}

impl Sources<'_> {
    async fn cost_facts(&self, window: ReportWindow, month: &str) -> Result<CostFacts> {
        let store = self.store;
        let (month_window, month) = month_window(month)?;
        let proposals = store.report_proposals(window).await?;
        let calls = store.report_ai_calls(window).await?;
        let cases = store.report_cases(window).await?;
        let exceptions = store.report_exceptions(window).await?;
        let month_calls = if month_window == window {
            calls.clone()
        } else {
            store.report_ai_calls(month_window).await?
        };
        Ok(CostFacts {
            calls,
            proposals,
            cases,
            exceptions,
            month,
            month_window,
            month_calls,
        })
    }

    /// The cost analysis of the UTC days `from..=to` (default: this month to date).
    pub async fn cost_report(&self, from: Option<&str>, to: Option<&str>) -> Result<CostReport> {
        let window = range_window(from, to, self.now_ms)?;
        let facts = self.cost_facts(window, &month_of(window.to_ms - 1)).await?;
        Ok(build_costs(self, window, &facts))
    }

    /// The cost analysis of the UTC month `YYYY-MM`.
    pub async fn cost_report_month(&self, month: &str) -> Result<CostReport> {
        let (window, month) = month_window(month)?;
        let facts = self.cost_facts(window, &month).await?;
        Ok(build_costs(self, window, &facts))
    }

    /// Each operation's reviews in its promotion window (of the latest version's `trust:`
    /// config) as of `as_of_ms`: what the engine's evaluation pass would see at that moment.
    async fn promotion_windows(
        &self,
        operations: &[TrustOperationRow],
        as_of_ms: i64,
    ) -> Result<BTreeMap<String, WindowEvidence>> {
        let mut out = BTreeMap::new();
        for row in operations {
            let Some(config) = trust_config_of(self, &row.workflow, &row.step) else {
                continue;
            };
            let evidence = match config.promotion.window {
                keel_core::trust::EvidenceWindow::Milliseconds(ms) => {
                    self.store
                        .trust_evidence(&row.operation, as_of_ms.saturating_sub(ms), as_of_ms, None)
                        .await?
                }
                keel_core::trust::EvidenceWindow::Count(n) => {
                    let newest = i64::try_from(n).unwrap_or(i64::MAX);
                    self.store
                        .trust_evidence(&row.operation, 0, as_of_ms, Some(newest))
                        .await?
                }
            };
            out.insert(
                row.operation.clone(),
                WindowEvidence {
                    reviews: evidence.len() as i64,
                    agreed: evidence.iter().filter(|(_, agreed)| *agreed).count() as i64,
                },
            );
        }
        Ok(out)
    }

    /// `trust.initialised|promoted|demoted` up to the window's end (the phase at its start
    /// needs the history before it) and `trust.recommended` in it, in journal order.
    async fn trust_events(&self, window: ReportWindow) -> Result<Vec<JournalRow>> {
        let store = self.store;
        let initialised = store
            .report_entries("trust.initialised", 0, window.to_ms, MAX_EVENTS)
            .await?;
        let promoted = store
            .report_entries("trust.promoted", 0, window.to_ms, MAX_EVENTS)
            .await?;
        let demoted = store
            .report_entries("trust.demoted", 0, window.to_ms, MAX_EVENTS)
            .await?;
        let recommended = store
            .report_entries(
                "trust.recommended",
                window.from_ms,
                window.to_ms,
                MAX_EVENTS,
            )
            .await?;
        let mut events: Vec<JournalRow> = [initialised, promoted, demoted, recommended]
            .into_iter()
            .flatten()
            .collect();
        events.sort_by(|a, b| (&a.at, a.seq).cmp(&(&b.at, b.seq)));
        Ok(events)
    }

    /// The learner's events of the window, oldest first.
    async fn learner_events(&self, window: ReportWindow) -> Result<Vec<JournalRow>> {
        let mut events = Vec::new();
        for kind in events::LEARNER_KINDS {
            events.extend(
                self.store
                    .report_entries(kind, window.from_ms, window.to_ms, MAX_EVENTS)
                    .await?,
            );
        }
        events.sort_by(|a, b| (&a.at, a.seq).cmp(&(&b.at, b.seq)));
        Ok(events)
    }

    /// Versions deployed in the window, the approvals and rejections of versions from the
    /// window's start up to now (a version deployed on the 31st may be approved on the 1st),
    /// and who wrote and approved each deployed version by its `change:` block.
    async fn change_facts(&self, window: ReportWindow) -> Result<ChangeFacts> {
        let store = self.store;
        let deployed = store
            .report_entries(
                "workflow.deployed",
                window.from_ms,
                window.to_ms,
                MAX_EVENTS,
            )
            .await?;
        let until_ms = self.now_ms.max(window.to_ms).saturating_add(1);
        let mut decisions = Vec::new();
        for kind in ["workflow.approved", "workflow.rejected"] {
            decisions.extend(
                store
                    .report_entries(kind, window.from_ms, until_ms, MAX_EVENTS)
                    .await?,
            );
        }
        decisions.sort_by(|a, b| (&a.at, a.seq).cmp(&(&b.at, b.seq)));
        let mut authors = BTreeMap::new();
        let wanted: BTreeSet<(String, i64)> = deployed
            .iter()
            .filter_map(events::deployed_version)
            .collect();
        for (name, version_no) in wanted {
            let Some(row) = store.workflow_version(&name, version_no).await? else {
                continue;
            };
            // The author as stored with the version (`change.author`); the approver only from
            // a governor's decision in Keel.
            if let Some(author) = row.author {
                let approver = row.decided_by.filter(|_| row.status == "active");
                authors.insert((name, version_no), (author, approver));
            }
        }
        Ok(ChangeFacts {
            deployed,
            decisions,
            authors,
        })
    }

    /// The operational review of the UTC month `YYYY-MM` (default: this month so far).
    pub async fn monthly_report(&self, month: Option<&str>) -> Result<MonthlyReport> {
        let month = month.map_or_else(|| month_of(self.now_ms), str::to_string);
        let (window, month) = month_window(&month)?;
        let store = self.store;
        // One query at a time: side by side, the two journal passes slowed each other down
        // several times over (28 s each instead of 4 s for a million cases on two cores).
        let costs = self.cost_facts(window, &month).await?;
        let (gates, gated_cases) = store.report_gates(window).await?;
        let (reviews, confidences) = store.report_outcomes(window).await?;
        let latency = store.report_ai_latency(window).await?;
        let trust_events = self.trust_events(window).await?;
        let resolve_times = store.report_resolve_times(window).await?;
        let new_patterns = store.report_new_patterns(window, MAX_NEW_PATTERNS).await?;
        let drift = store
            .report_entries("drift.alert", window.from_ms, window.to_ms, MAX_EVENTS)
            .await?;
        let operations = store.trust_operations().await?;
        let open = store.trust_recommendations(Some("open"), None).await?;
        let as_of_ms = self.now_ms.min(window.to_ms);
        let promotion_windows = self.promotion_windows(&operations, as_of_ms).await?;
        let learner_events = self.learner_events(window).await?;
        let learner_reviews = store
            .report_entries_containing(
                "outcome.reviewed",
                "\"learner_version\"",
                window.from_ms,
                window.to_ms,
                MAX_EVENTS,
            )
            .await?
            .iter()
            .filter_map(events::learner_review)
            .collect();
        let changes = self.change_facts(window).await?;
        let facts = MonthFacts {
            learner_events,
            learner_reviews,
            changes,
            costs,
            gates,
            gated_cases,
            latency,
            reviews,
            confidences,
            resolve_times,
            new_patterns,
            trust_events,
            drift,
            operations,
            open_recommendations: open,
            promotion_windows,
            as_of_ms,
        };
        Ok(build_monthly(self, window, &month, &facts))
    }
}

// ---------------------------------------------------------------------------------- costs

fn usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Cases created in the window per workflow.
fn cases_per_workflow(cases: &[CaseCountRow]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for row in cases {
        *out.entry(row.workflow.clone()).or_insert(0) += row.cases;
    }
    out
}

/// Every operation of the latest versions: (workflow, action or end step, its `ai` steps).
fn operations_of(sources: &Sources<'_>) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (name, workflow) in &sources.workflows {
        for step in &workflow.steps {
            if let Some(operation) = step.operation() {
                out.push((name.clone(), step.id.clone(), operation.uses_ai.to_vec()));
            }
        }
    }
    out
}

fn build_costs(sources: &Sources<'_>, window: ReportWindow, facts: &CostFacts) -> CostReport {
    let calls = &facts.calls;
    let cases = cases_per_workflow(&facts.cases);
    let sum = |f: fn(&CallSummaryRow) -> i64| calls.iter().map(f).sum::<i64>();
    let step_nano: i64 = calls
        .iter()
        .filter(|c| c.source == "step")
        .map(|c| c.cost_nano)
        .sum();
    let cascades = cascades(sources, window, facts);
    let saved = sum_known(cascades.iter().map(|c| c.saved_usd));
    let net_saved = sum_known(cascades.iter().map(|c| c.net_saved_usd));
    CostReport {
        period: period(window),
        total_usd: usd(sum(|c| c.cost_nano)),
        workflow_usd: usd(step_nano),
        gateway_usd: usd(sum(|c| c.cost_nano) - step_nano),
        calls: sum(|c| c.calls),
        cache_hits: sum(|c| c.cache_hits),
        cost_unknown_calls: sum(|c| c.cost_unknown),
        input_tokens: sum(|c| c.input_tokens),
        output_tokens: sum(|c| c.output_tokens),
        per_day: per_day(window, calls),
        per_model: per_model(calls),
        per_workflow: per_workflow(calls, &cases),
        per_operation: per_operation(sources, calls, &cases),
        cascades,
        saved_usd: saved,
        net_saved_usd: net_saved,
        savings_estimator: METHODS.savings,
        budget: budget(
            sources.config.map(|c| &c.budgets),
            sources.now_ms,
            &facts.month,
            facts.month_window,
            &facts.month_calls,
        ),
    }
}

/// The sum of the known values; `None` when none is known.
fn sum_known(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |total, value| Some(total.unwrap_or(0.0) + value))
}

fn per_day(window: ReportWindow, calls: &[CallSummaryRow]) -> Vec<DayCost> {
    let mut days: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut day = window.from_ms.div_euclid(DAY_MS);
    while day * DAY_MS < window.to_ms {
        days.insert(day_label(day), (0, 0));
        day += 1;
    }
    for call in calls {
        let entry = days.entry(call.day.clone()).or_insert((0, 0));
        entry.0 += call.cost_nano;
        entry.1 += call.calls;
    }
    days.into_iter()
        .map(|(day, (nano, calls))| DayCost {
            day,
            usd: usd(nano),
            calls,
        })
        .collect()
}

fn per_model(calls: &[CallSummaryRow]) -> Vec<ModelCost> {
    let mut models: BTreeMap<&str, (ModelCost, i64, i64)> = BTreeMap::new();
    for call in calls {
        let (model, billed_calls, billed_nano) =
            models.entry(call.model.as_str()).or_insert_with(|| {
                (
                    ModelCost {
                        model: call.model.clone(),
                        provider: call.provider.clone(),
                        calls: 0,
                        cache_hits: 0,
                        input_tokens: 0,
                        output_tokens: 0,
                        usd: 0.0,
                        cost_unknown_calls: 0,
                        usd_per_call: None,
                    },
                    0,
                    0,
                )
            });
        model.calls += call.calls;
        model.cache_hits += call.cache_hits;
        model.input_tokens += call.input_tokens;
        model.output_tokens += call.output_tokens;
        model.cost_unknown_calls += call.cost_unknown;
        *billed_calls += call.billed_calls;
        *billed_nano += call.billed_cost_nano;
        model.usd += usd(call.cost_nano);
    }
    models
        .into_values()
        .map(|(mut model, billed_calls, billed_nano)| {
            model.usd_per_call = ratio(billed_nano, billed_calls).map(|nano| nano / 1e9);
            model
        })
        .collect()
}

fn per_workflow(calls: &[CallSummaryRow], cases: &BTreeMap<String, i64>) -> Vec<WorkflowCost> {
    let mut workflows: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for name in cases.keys() {
        workflows.insert(name.clone(), (0, 0));
    }
    for call in calls.iter().filter(|c| c.source == "step") {
        let name = call.workflow.clone().unwrap_or_default();
        let entry = workflows.entry(name).or_insert((0, 0));
        entry.0 += call.cost_nano;
        entry.1 += call.calls;
    }
    workflows
        .into_iter()
        .map(|(workflow, (nano, calls))| {
            let count = cases.get(&workflow).copied().unwrap_or(0);
            WorkflowCost {
                usd: usd(nano),
                calls,
                cases: count,
                usd_per_case: ratio(nano, count).map(|nano| nano / 1e9),
                workflow,
            }
        })
        .collect()
}

fn per_operation(
    sources: &Sources<'_>,
    calls: &[CallSummaryRow],
    cases: &BTreeMap<String, i64>,
) -> Vec<OperationCost> {
    operations_of(sources)
        .into_iter()
        .map(|(workflow, step, ai_steps)| {
            let (nano, count) = calls
                .iter()
                .filter(|c| c.source == "step" && c.workflow.as_deref() == Some(&workflow))
                .filter(|c| c.step.as_ref().is_some_and(|s| ai_steps.contains(s)))
                .fold((0, 0), |(nano, count), c| {
                    (nano + c.cost_nano, count + c.calls)
                });
            let workflow_cases = cases.get(&workflow).copied().unwrap_or(0);
            OperationCost {
                operation: format!("{workflow}/{step}"),
                usd: usd(nano),
                calls: count,
                usd_per_case: ratio(nano, workflow_cases).map(|nano| nano / 1e9),
                workflow,
                ai_steps,
            }
        })
        .collect()
}

/// The route of `workflow/step` in its latest version.
fn route_of(sources: &Sources<'_>, workflow: &str, step: &str) -> Vec<String> {
    sources
        .workflows
        .get(workflow)
        .and_then(|w| w.steps.iter().find(|s| s.id == step))
        .and_then(|s| match &s.kind {
            StepKind::Ai(ai) => Some(ai.route.iter().map(|t| t.model.clone()).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What one call of `model` costs for a step: observed (successful, uncached, known cost),
/// else its price on `date` × the step's mean tokens per successful call; a local model is free.
fn unit_cost(
    sources: &Sources<'_>,
    step_calls: &[&CallSummaryRow],
    model: &str,
    date: NaiveDate,
) -> (Option<f64>, &'static str) {
    let (billed_calls, billed_nano) = step_calls
        .iter()
        .filter(|c| c.model == model)
        .fold((0, 0), |(n, nano), c| {
            (n + c.billed_calls, nano + c.billed_cost_nano)
        });
    if billed_calls > 0 {
        return (
            Some(billed_nano as f64 / billed_calls as f64 / 1e9),
            "observed",
        );
    }
    let Some(config) = sources.config.and_then(|c| c.models.get(model)) else {
        return (None, "unknown");
    };
    if config.provider == keel_ai::config::ProviderKind::Local {
        return (Some(0.0), "price");
    }
    let ok_calls: i64 = step_calls.iter().map(|c| c.ok_calls).sum();
    let (Some(price), true) = (config.price_on(date), ok_calls > 0) else {
        return (None, "unknown");
    };
    let input = step_calls.iter().map(|c| c.input_tokens).sum::<i64>() as f64 / ok_calls as f64;
    let output = step_calls.iter().map(|c| c.output_tokens).sum::<i64>() as f64 / ok_calls as f64;
    let cost = (input * price.input_per_million + output * price.output_per_million) / 1e6;
    (Some(cost), "price")
}

fn cascades(sources: &Sources<'_>, window: ReportWindow, facts: &CostFacts) -> Vec<Cascade> {
    let mut steps: BTreeSet<(String, String)> = facts
        .proposals
        .iter()
        .map(|p| (p.workflow.clone(), p.step.clone()))
        .collect();
    for (name, workflow) in &sources.workflows {
        for step in &workflow.steps {
            if matches!(step.kind, StepKind::Ai(_))
                && facts.calls.iter().any(|c| {
                    c.workflow.as_deref() == Some(name) && c.step.as_deref() == Some(&step.id)
                })
            {
                steps.insert((name.clone(), step.id.clone()));
            }
        }
    }
    let last_day = keel_core::case::millis_to_datetime(window.to_ms - 1).date_naive();
    steps
        .into_iter()
        .map(|(workflow, step)| cascade(sources, facts, last_day, workflow, step))
        .collect()
}

fn cascade(
    sources: &Sources<'_>,
    facts: &CostFacts,
    last_day: NaiveDate,
    workflow: String,
    step: String,
) -> Cascade {
    let route = route_of(sources, &workflow, &step);
    let proposals: Vec<&ProposalRow> = facts
        .proposals
        .iter()
        .filter(|p| p.workflow == workflow && p.step == step)
        .collect();
    let step_calls: Vec<&CallSummaryRow> = facts
        .calls
        .iter()
        .filter(|c| c.source == "step")
        .filter(|c| c.workflow.as_deref() == Some(&workflow) && c.step.as_deref() == Some(&step))
        .collect();
    let failed: i64 = facts
        .exceptions
        .iter()
        .filter(|e| e.workflow == workflow && e.step.as_deref() == Some(&step))
        .filter(|e| e.kind == "ai_failed" || e.kind == "budget_exhausted")
        .map(|e| e.raised)
        .sum();
    let seen_tiers = proposals
        .iter()
        .map(|p| usize::try_from(p.tier + 1).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let tier_count = route.len().max(seen_tiers);
    let total: i64 = proposals.iter().map(|p| p.proposals).sum();
    let mut tiers = Vec::with_capacity(tier_count);
    for tier in 0..tier_count {
        let here: Vec<&&ProposalRow> = proposals
            .iter()
            .filter(|p| usize::try_from(p.tier).ok() == Some(tier))
            .collect();
        // The model that settled most of this tier's proposals in the period (what ran, even
        // if the route changed since); the latest route's model when none settled here.
        let mut by_model: BTreeMap<&str, i64> = BTreeMap::new();
        for p in &here {
            *by_model.entry(p.model.as_str()).or_insert(0) += p.proposals;
        }
        let model = by_model
            .iter()
            .max_by_key(|(model, count)| (**count, std::cmp::Reverse(**model)))
            .map(|(model, _)| (*model).to_string())
            .or_else(|| route.get(tier).cloned())
            .unwrap_or_default();
        let settled: i64 = here.iter().map(|p| p.proposals).sum();
        let reached: i64 = proposals
            .iter()
            .filter(|p| usize::try_from(p.tier).is_ok_and(|t| t >= tier))
            .map(|p| p.proposals)
            .sum::<i64>()
            + failed;
        tiers.push(TierShare {
            tier,
            usd_per_call: unit_cost(sources, &step_calls, &model, last_day).0,
            model,
            settled,
            share: ratio(settled, total).unwrap_or(0.0),
            reached,
            acceptance_rate: ratio(settled, reached),
            usd: here.iter().map(|p| p.cost_usd).sum(),
        });
    }
    let (baseline, method) = match tiers.last() {
        Some(last) => unit_cost(sources, &step_calls, &last.model, last_day),
        None => (None, "unknown"),
    };
    let last_tier = tier_count.saturating_sub(1);
    let saving = |t: &TierShare| baseline.map(|b| t.settled as f64 * b - t.usd);
    let saved = baseline.map(|_| {
        tiers
            .iter()
            .filter(|t| t.tier < last_tier)
            .filter_map(saving)
            .sum::<f64>()
    });
    let net = baseline.map(|_| tiers.iter().filter_map(saving).sum::<f64>());
    Cascade {
        route,
        proposals: total,
        failed,
        cost_unknown_proposals: proposals.iter().map(|p| p.cost_unknown).sum(),
        actual_usd: proposals.iter().map(|p| p.cost_usd).sum(),
        tiers,
        baseline_usd_per_proposal: baseline,
        baseline_method: method,
        saved_usd: saved,
        net_saved_usd: net,
        workflow,
        step,
    }
}

fn budget(
    budgets: Option<&keel_ai::config::BudgetsConfig>,
    now_ms: i64,
    month: &str,
    window: ReportWindow,
    calls: &[CallSummaryRow],
) -> BudgetProjection {
    let span = (window.to_ms - window.from_ms).max(1) as f64;
    let elapsed = (now_ms.clamp(window.from_ms, window.to_ms) - window.from_ms) as f64 / span;
    let project = |nano: i64| {
        if elapsed > 0.0 {
            usd(nano) / elapsed
        } else {
            0.0
        }
    };
    let judge = |projected: f64, limit: Option<f64>| match limit {
        None => (None, "no_budget"),
        Some(limit) => (
            (limit > 0.0).then(|| projected / limit),
            if projected > limit { "over" } else { "within" },
        ),
    };
    let total_nano: i64 = calls.iter().map(|c| c.cost_nano).sum();
    let limit = budgets.and_then(|b| b.total.monthly_usd);
    let (share, status) = judge(project(total_nano), limit);
    let mut spend: BTreeMap<String, i64> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.source == "step") {
        *spend
            .entry(call.workflow.clone().unwrap_or_default())
            .or_insert(0) += call.cost_nano;
    }
    for name in budgets.map(|b| b.workflows.keys()).into_iter().flatten() {
        spend.entry(name.clone()).or_insert(0);
    }
    let workflows = spend
        .into_iter()
        .map(|(workflow, nano)| {
            let limit = budgets
                .and_then(|b| b.workflows.get(&workflow))
                .and_then(|l| l.monthly_usd);
            let (share, status) = judge(project(nano), limit);
            WorkflowBudget {
                workflow,
                month_to_date_usd: usd(nano),
                projected_usd: project(nano),
                limit_usd: limit,
                projected_share_of_limit: share,
                status,
            }
        })
        .collect();
    BudgetProjection {
        month: month.to_string(),
        month_to_date_usd: usd(total_nano),
        elapsed,
        projected_usd: project(total_nano),
        limit_usd: limit,
        projected_share_of_limit: share,
        status,
        workflows,
    }
}

// ---------------------------------------------------------------------------------- monthly

/// Everything the monthly review reads beyond the cost facts.
struct MonthFacts {
    costs: CostFacts,
    gates: Vec<GateRow>,
    gated_cases: Vec<GatedCasesRow>,
    latency: Vec<LatencyRow>,
    reviews: Vec<ReviewCountRow>,
    confidences: Vec<ConfidenceGroup>,
    resolve_times: Vec<HistogramRow>,
    new_patterns: Vec<NewPatternRow>,
    /// `trust.initialised|promoted|demoted` up to the month's end, `trust.recommended` in it;
    /// in journal order.
    trust_events: Vec<JournalRow>,
    drift: Vec<JournalRow>,
    operations: Vec<TrustOperationRow>,
    open_recommendations: Vec<RecommendationRow>,
    /// Each operation's reviews in its promotion window as of `as_of_ms`.
    promotion_windows: BTreeMap<String, WindowEvidence>,
    as_of_ms: i64,
    /// `learner.*` entries of the month, oldest first.
    learner_events: Vec<JournalRow>,
    /// Reviewed outcomes of learner proposals: (operation, model, learner version, verdict).
    learner_reviews: Vec<(String, String, i64, String)>,
    changes: ChangeFacts,
}

/// What change control did in the month.
struct ChangeFacts {
    deployed: Vec<JournalRow>,
    decisions: Vec<JournalRow>,
    /// (workflow, version) → (author, approved_by) from the version's `change:` block.
    authors: BTreeMap<(String, i64), (String, Option<String>)>,
}

/// (reviews, agreed) in an operation's promotion window.
#[derive(Debug, Clone, Copy, Default)]
struct WindowEvidence {
    reviews: i64,
    agreed: i64,
}

fn build_monthly(
    sources: &Sources<'_>,
    window: ReportWindow,
    month: &str,
    facts: &MonthFacts,
) -> MonthlyReport {
    let costs = build_costs(sources, window, &facts.costs);
    let names = workflow_names(facts);
    let workflows: Vec<WorkflowReview> = names
        .iter()
        .map(|name| workflow_review(sources, window, facts, &costs, name))
        .collect();
    let mut recommendations = Vec::new();
    for review in &workflows {
        recommendations.extend(demotions(review));
    }
    for review in &workflows {
        recommendations.extend(promotions(facts, review));
        recommendations.extend(falling_accuracy(review));
    }
    for cascade in &costs.cascades {
        recommendations.extend(tier_changes(cascade));
    }
    MonthlyReport {
        month: month.to_string(),
        period: period(window),
        generated_at: rfc3339_ms(sources.now_ms),
        as_of: rfc3339_ms(facts.as_of_ms),
        summary: summary(&workflows, &costs, recommendations.len()),
        workflows,
        recommendations,
        costs,
        methods: METHODS,
    }
}

/// Workflows with anything to report, or deployed.
fn workflow_names(facts: &MonthFacts) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = facts
        .costs
        .cases
        .iter()
        .map(|c| c.workflow.clone())
        .collect();
    names.extend(facts.gates.iter().map(|g| g.workflow.clone()));
    names.extend(facts.operations.iter().map(|o| o.workflow.clone()));
    names.extend(facts.costs.exceptions.iter().map(|e| e.workflow.clone()));
    names.extend(
        facts
            .changes
            .deployed
            .iter()
            .filter_map(events::deployed_version)
            .map(|(workflow, _)| workflow),
    );
    names.extend(
        facts
            .costs
            .calls
            .iter()
            .filter(|c| c.source == "step")
            .filter_map(|c| c.workflow.clone()),
    );
    names.remove("");
    names
}

fn summary(workflows: &[WorkflowReview], costs: &CostReport, recommendations: usize) -> Summary {
    let total = |f: fn(&WorkflowReview) -> i64| workflows.iter().map(f).sum::<i64>();
    let cases = total(|w| w.volume.created);
    let completed = total(|w| w.volume.completed);
    let failed = total(|w| w.volume.failed);
    let gated = total(|w| w.automation.gated_cases);
    let automated = total(|w| w.automation.automated_cases);
    let breached = total(|w| w.sla.breached);
    let reviews = workflows
        .iter()
        .flat_map(|w| &w.operations)
        .map(|o| o.accuracy.reviews)
        .sum();
    let agreed = workflows
        .iter()
        .flat_map(|w| &w.operations)
        .map(|o| o.accuracy.agreed)
        .sum();
    Summary {
        cases,
        completed,
        failed,
        open: cases - completed - failed,
        gated_cases: gated,
        automated_cases: automated,
        automation_rate: ratio(automated, gated),
        sla_compliance: ratio(cases - breached, cases),
        cost_usd: costs.total_usd,
        saved_usd: costs.saved_usd,
        reviews,
        agreement: ratio(agreed, reviews),
        exceptions: total(|w| w.exceptions.raised),
        drift_alerts: workflows.iter().map(|w| w.drift_alerts.len()).sum(),
        promotions: events_of(workflows, "trust.promoted"),
        demotions: events_of(workflows, "trust.demoted"),
        recommendations,
    }
}

fn events_of(workflows: &[WorkflowReview], kind: &str) -> usize {
    workflows
        .iter()
        .flat_map(|w| &w.events)
        .filter(|e| e.kind == kind)
        .count()
}

/// The trust events of the month (`trust.initialised` left out: it is where an operation
/// starts, not something that happened to it) and the learner's, of one workflow.
fn month_events(facts: &MonthFacts, window: ReportWindow, name: &str) -> Vec<Event> {
    let from = rfc3339_ms(window.from_ms);
    let mut out: Vec<Event> = facts
        .trust_events
        .iter()
        .filter(|e| e.at >= from && e.kind != "trust.initialised")
        .filter_map(events::trust_event)
        .chain(
            facts
                .learner_events
                .iter()
                .filter_map(events::learner_event),
        )
        .filter(|e| events::event_workflow(e) == name)
        .collect();
    out.sort_by(|a, b| a.at.cmp(&b.at));
    out
}

fn workflow_review(
    sources: &Sources<'_>,
    window: ReportWindow,
    facts: &MonthFacts,
    costs: &CostReport,
    name: &str,
) -> WorkflowReview {
    let mut volume = Volume::default();
    let mut sla = Sla::default();
    for row in facts.costs.cases.iter().filter(|c| c.workflow == name) {
        volume.created += row.cases;
        sla.cases += row.cases;
        sla.breached += row.sla_breached;
        match row.status.as_str() {
            "completed" => volume.completed += row.cases,
            "failed" => volume.failed += row.cases,
            "exception" => volume.exception += row.cases,
            "waiting" => volume.waiting += row.cases,
            _ => volume.running += row.cases,
        }
    }
    sla.compliance = ratio(sla.cases - sla.breached, sla.cases);
    let cost = costs.per_workflow.iter().find(|c| c.workflow == name);
    let cascades = costs.cascades.iter().filter(|c| c.workflow == name);
    WorkflowReview {
        workflow: name.to_string(),
        volume,
        automation: automation(facts, name),
        operations: operation_reviews(sources, window, facts, name),
        cost: WorkflowCostSummary {
            usd: cost.map_or(0.0, |c| c.usd),
            calls: cost.map_or(0, |c| c.calls),
            usd_per_case: cost.and_then(|c| c.usd_per_case),
            saved_usd: sum_known(cascades.clone().map(|c| c.saved_usd)),
            net_saved_usd: sum_known(cascades.map(|c| c.net_saved_usd)),
        },
        latency: latency(facts, name),
        sla,
        exceptions: exception_summary(facts, name),
        drift_alerts: drift_alerts(&facts.drift, name),
        events: month_events(facts, window, name),
        change_control: events::change_control(
            name,
            &facts.changes.deployed,
            &facts.changes.decisions,
            &facts.changes.authors,
        ),
    }
}

fn automation(facts: &MonthFacts, name: &str) -> Automation {
    let mut automation = Automation::default();
    if let Some(row) = facts.gated_cases.iter().find(|g| g.workflow == name) {
        automation.gated_cases = row.cases;
        automation.automated_cases = row.automated;
    }
    for gate in facts.gates.iter().filter(|g| g.workflow == name) {
        match gate.decision.as_str() {
            "auto" => automation.auto_decisions += gate.count,
            _ => automation.task_decisions += gate.count,
        }
        if gate.review_sampled {
            automation.sampled_for_review += gate.count;
        }
    }
    automation.rate = ratio(automation.automated_cases, automation.gated_cases);
    automation
}

/// Nearest-rank percentiles of a histogram.
fn percentiles(mut bars: Vec<(i64, i64)>) -> Percentiles {
    bars.sort_unstable();
    let count: i64 = bars.iter().map(|(_, n)| n).sum();
    let at = |q: f64| {
        let rank = ((q * count as f64).ceil() as i64).max(1);
        let mut seen = 0;
        bars.iter().find_map(|(value, n)| {
            seen += n;
            (seen >= rank).then_some(*value)
        })
    };
    Percentiles {
        count,
        p50: at(0.5),
        p95: at(0.95),
    }
}

fn latency(facts: &MonthFacts, name: &str) -> Latency {
    let calls: Vec<&LatencyRow> = facts
        .latency
        .iter()
        .filter(|l| l.workflow.as_deref() == Some(name))
        .collect();
    let models: BTreeSet<&str> = calls.iter().map(|l| l.model.as_str()).collect();
    Latency {
        case_duration_ms: percentiles(
            facts
                .costs
                .cases
                .iter()
                .filter(|c| c.workflow == name && (c.status == "completed" || c.status == "failed"))
                .map(|c| (c.duration_ms, c.cases))
                .collect(),
        ),
        ai_call_ms: percentiles(calls.iter().map(|l| (l.latency_ms, l.count)).collect()),
        ai_call_ms_by_model: models
            .into_iter()
            .map(|model| ModelLatency {
                model: model.to_string(),
                latency_ms: percentiles(
                    calls
                        .iter()
                        .filter(|l| l.model == model)
                        .map(|l| (l.latency_ms, l.count))
                        .collect(),
                ),
            })
            .collect(),
    }
}

fn exception_summary(facts: &MonthFacts, name: &str) -> ExceptionSummary {
    let mut rows: Vec<&ExceptionCountRow> = facts
        .costs
        .exceptions
        .iter()
        .filter(|e| e.workflow == name)
        .collect();
    rows.sort_by(|a, b| {
        b.raised
            .cmp(&a.raised)
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
    let resolve: Vec<(i64, i64)> = facts
        .resolve_times
        .iter()
        .filter(|r| r.group == name)
        .map(|r| (r.value, r.count))
        .collect();
    ExceptionSummary {
        raised: rows.iter().map(|e| e.raised).sum(),
        resolved: rows.iter().map(|e| e.resolved).sum(),
        median_resolve_ms: percentiles(resolve).p50,
        top_patterns: rows
            .iter()
            .take(TOP_PATTERNS)
            .map(|e| PatternCount {
                fingerprint: e.fingerprint.clone(),
                step: e.step.clone(),
                kind: e.kind.clone(),
                template: e.template.clone(),
                raised: e.raised,
                resolved: e.resolved,
            })
            .collect(),
        new_patterns: facts
            .new_patterns
            .iter()
            .filter(|p| p.workflow == name)
            .map(|p| NewPattern {
                fingerprint: p.fingerprint.clone(),
                step: p.step.clone(),
                kind: p.kind.clone(),
                template: p.template.clone(),
                first_seen: rfc3339_ms(p.first_seen_ms),
                total: p.total,
            })
            .collect(),
    }
}

fn drift_alerts(entries: &[JournalRow], name: &str) -> Vec<DriftAlert> {
    entries
        .iter()
        .filter(|e| e.workflow.as_deref() == Some(name))
        .map(|entry| {
            let data: Value = serde_json::from_str(&entry.data).unwrap_or(Value::Null);
            let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_string);
            let number = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| data.get(*k).and_then(Value::as_f64))
            };
            DriftAlert {
                at: entry.at.clone(),
                step: entry.step.clone(),
                feature: text("feature"),
                method: text("method"),
                value: number(&["value", "statistic", "score"]),
                threshold: number(&["threshold"]),
                data,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------- operations

fn operation_reviews(
    sources: &Sources<'_>,
    window: ReportWindow,
    facts: &MonthFacts,
    name: &str,
) -> Vec<OperationReview> {
    let prefix = format!("{name}/");
    let mut operations: BTreeSet<String> = facts
        .operations
        .iter()
        .filter(|o| o.workflow == name)
        .map(|o| o.operation.clone())
        .collect();
    operations.extend(
        facts
            .gates
            .iter()
            .filter(|g| g.workflow == name)
            .map(|g| g.operation.clone()),
    );
    operations.extend(
        facts
            .reviews
            .iter()
            .filter(|r| r.operation.starts_with(&prefix))
            .map(|r| r.operation.clone()),
    );
    operations
        .into_iter()
        .map(|operation| operation_review(sources, window, facts, name, operation))
        .collect()
}

fn operation_review(
    sources: &Sources<'_>,
    window: ReportWindow,
    facts: &MonthFacts,
    workflow: &str,
    operation: String,
) -> OperationReview {
    let step = operation
        .split_once('/')
        .map_or(operation.as_str(), |(_, s)| s)
        .to_string();
    let ai_steps = operations_of(sources)
        .into_iter()
        .find(|(w, s, _)| w == workflow && *s == step)
        .map(|(_, _, ai)| ai)
        .unwrap_or_default();
    let mut decisions = Decisions::default();
    for gate in facts.gates.iter().filter(|g| g.operation == operation) {
        match gate.decision.as_str() {
            "auto" => decisions.auto += gate.count,
            _ => decisions.task += gate.count,
        }
        if gate.review_sampled {
            decisions.sampled_for_review += gate.count;
        }
    }
    let reviews: Vec<&ReviewCountRow> = facts
        .reviews
        .iter()
        .filter(|r| r.operation == operation)
        .collect();
    let middle_day = (window.from_ms + (window.to_ms - window.from_ms) / 2).div_euclid(DAY_MS);
    let half = |first: bool| {
        agreement(
            reviews
                .iter()
                .filter(|r| (r.day < middle_day) == first)
                .copied(),
        )
    };
    let current = facts
        .operations
        .iter()
        .find(|o| o.operation == operation)
        .map(|o| o.phase);
    let phase = phase_history(&facts.trust_events, window, &operation, current);
    OperationReview {
        promotion: promotion_standing(sources, facts, workflow, &step, &operation, &phase),
        phase,
        decisions,
        accuracy: accuracy(&reviews),
        accuracy_by_model: accuracy_by_model(&reviews, &facts.learner_reviews, &operation),
        accuracy_by_day: accuracy_by_day(&reviews),
        first_half: half(true),
        second_half: half(false),
        calibration: calibration(&facts.confidences, &operation),
        calibration_by_model: calibration_by_model(&facts.confidences, &operation),
        operation,
        step,
        ai_steps,
    }
}

/// The latest version's `trust:` config of one operation.
fn trust_config_of<'s>(
    sources: &'s Sources<'_>,
    workflow: &str,
    step: &str,
) -> Option<&'s keel_core::trust::TrustConfig> {
    sources
        .workflows
        .get(workflow)
        .and_then(|w| w.steps.iter().find(|s| s.id == step))
        .and_then(|s| s.gate_parts())
        .map(|parts| parts.trust)
}

fn window_text(window: keel_core::trust::EvidenceWindow) -> String {
    match window {
        keel_core::trust::EvidenceWindow::Count(n) => format!("last {n} reviews"),
        keel_core::trust::EvidenceWindow::Milliseconds(ms) => {
            for (unit, size) in [("d", DAY_MS), ("h", 3_600_000), ("m", 60_000)] {
                if ms % size == 0 {
                    return format!("{}{unit}", ms / size);
                }
            }
            format!("{ms}ms")
        }
    }
}

fn promotion_standing(
    sources: &Sources<'_>,
    facts: &MonthFacts,
    workflow: &str,
    step: &str,
    operation: &str,
    phase: &PhaseHistory,
) -> Option<PromotionStanding> {
    let config = trust_config_of(sources, workflow, step)?;
    // The phase at the moment of the test: now for this month, the month's end for a past one.
    let current = if facts.as_of_ms < sources.now_ms {
        phase.at_end.or(phase.current)
    } else {
        phase.current.or(phase.at_end)
    }?;
    let next_phase = current + 1;
    let target = config
        .promotion
        .target_agreement
        .to_enter(u8::try_from(next_phase).ok()?)?;
    let evidence = facts
        .promotion_windows
        .get(operation)
        .copied()
        .unwrap_or_default();
    let (low, _) = wilson(evidence.agreed, evidence.reviews);
    let enough = u64::try_from(evidence.reviews).unwrap_or(0) >= config.promotion.min_reviews;
    Some(PromotionStanding {
        as_of: rfc3339_ms(facts.as_of_ms),
        phase: current,
        next_phase,
        target,
        min_reviews: config.promotion.min_reviews,
        window: window_text(config.promotion.window),
        reviews: evidence.reviews,
        agreed: evidence.agreed,
        wilson_low: low,
        eligible: enough && low.is_some_and(|low| low >= target),
    })
}

fn wilson(agreed: i64, reviews: i64) -> (Option<f64>, Option<f64>) {
    let (Ok(agreed), Ok(reviews)) = (u64::try_from(agreed), u64::try_from(reviews)) else {
        return (None, None);
    };
    if reviews == 0 {
        return (None, None);
    }
    match keel_tuning::interval::wilson(agreed, reviews, keel_tuning::interval::Z_95) {
        Ok(interval) => (Some(interval.low), Some(interval.high)),
        Err(_) => (None, None),
    }
}

fn accuracy(reviews: &[&ReviewCountRow]) -> Accuracy {
    let mut accuracy = Accuracy::default();
    for row in reviews {
        accuracy.reviews += row.count;
        match row.verdict.as_str() {
            "agree" => accuracy.agreed += row.count,
            "corrected" => accuracy.corrected += row.count,
            _ => accuracy.rejected += row.count,
        }
        match row.source.as_str() {
            "post" => accuracy.post_hoc += row.count,
            _ => accuracy.pre_approval += row.count,
        }
    }
    accuracy.agreement = ratio(accuracy.agreed, accuracy.reviews);
    (accuracy.wilson_low, accuracy.wilson_high) = wilson(accuracy.agreed, accuracy.reviews);
    accuracy
}

fn agreement<'r>(rows: impl Iterator<Item = &'r ReviewCountRow>) -> Agreement {
    let mut out = Agreement::default();
    for row in rows {
        out.reviews += row.count;
        if row.verdict == "agree" {
            out.agreed += row.count;
        }
    }
    out.agreement = ratio(out.agreed, out.reviews);
    out
}

/// Accuracy per model and, for a local learner, per learner version: the learner's reviews
/// (from the journal's `outcome.reviewed` entries that name a version) are split off their
/// model's count, so two versions of a learner are never mixed in one figure.
fn accuracy_by_model(
    reviews: &[&ReviewCountRow],
    learner_reviews: &[(String, String, i64, String)],
    operation: &str,
) -> Vec<ModelAccuracy> {
    let models: BTreeSet<&str> = reviews.iter().map(|r| r.model.as_str()).collect();
    let mut out = Vec::new();
    for model in models {
        let counts = agreement(reviews.iter().filter(|r| r.model == model).copied());
        // (version → (reviews, agreed)) of this model's learner reviews.
        let mut versions: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (_, _, version, verdict) in learner_reviews
            .iter()
            .filter(|(op, m, _, _)| op == operation && m == model)
        {
            let entry = versions.entry(*version).or_default();
            entry.0 += 1;
            entry.1 += i64::from(verdict == "agree");
        }
        let split_reviews: i64 = versions.values().map(|(n, _)| n).sum();
        let split_agreed: i64 = versions.values().map(|(_, a)| a).sum();
        let rest = (
            (counts.reviews - split_reviews).max(0),
            (counts.agreed - split_agreed).max(0),
        );
        let name = if model.is_empty() { "(none)" } else { model };
        if rest.0 > 0 || versions.is_empty() {
            out.push(model_accuracy(name, None, rest.0, rest.1.min(rest.0)));
        }
        for (version, (n, agreed)) in versions {
            out.push(model_accuracy(name, Some(version), n, agreed));
        }
    }
    out
}

fn model_accuracy(model: &str, version: Option<i64>, reviews: i64, agreed: i64) -> ModelAccuracy {
    let (low, high) = wilson(agreed, reviews);
    ModelAccuracy {
        model: model.to_string(),
        learner_version: version,
        reviews,
        agreed,
        agreement: ratio(agreed, reviews),
        wilson_low: low,
        wilson_high: high,
    }
}

fn accuracy_by_day(reviews: &[&ReviewCountRow]) -> Vec<DayAccuracy> {
    let days: BTreeSet<i64> = reviews.iter().map(|r| r.day).collect();
    days.into_iter()
        .map(|day| {
            let counts = agreement(reviews.iter().filter(|r| r.day == day).copied());
            DayAccuracy {
                day: day_label(day),
                reviews: counts.reviews,
                agreed: counts.agreed,
                agreement: counts.agreement.unwrap_or(0.0),
            }
        })
        .collect()
}

/// Pairs in [0, 1], thinned evenly to the calibration bound.
fn pairs<'g>(
    groups: impl Iterator<Item = &'g ConfidenceGroup>,
) -> Vec<keel_tuning::calibration::Pair> {
    let all: Vec<keel_tuning::calibration::Pair> = groups
        .flat_map(|g| g.pairs.iter())
        .filter(|(c, _)| c.is_finite() && (0.0..=1.0).contains(c))
        .map(|(confidence, correct)| keel_tuning::calibration::Pair {
            confidence: *confidence,
            correct: *correct,
        })
        .collect();
    let step = all.len().div_ceil(keel_tuning::MAX_VALUES).max(1);
    all.into_iter().step_by(step).collect()
}

fn calibration(groups: &[ConfidenceGroup], operation: &str) -> Option<Calibration> {
    let pairs = pairs(groups.iter().filter(|g| g.operation == operation));
    let ece =
        keel_tuning::calibration::expected_calibration_error(&pairs, CALIBRATION_BINS).ok()?;
    Some(Calibration {
        pairs: pairs.len(),
        ece: ece.ece,
        bins: ece.bins,
    })
}

fn calibration_by_model(groups: &[ConfidenceGroup], operation: &str) -> Vec<ModelCalibration> {
    let models: BTreeSet<&str> = groups
        .iter()
        .filter(|g| g.operation == operation)
        .map(|g| g.model.as_str())
        .collect();
    models
        .into_iter()
        .filter_map(|model| {
            let pairs = pairs(
                groups
                    .iter()
                    .filter(|g| g.operation == operation && g.model == model),
            );
            let ece =
                keel_tuning::calibration::expected_calibration_error(&pairs, CALIBRATION_BINS)
                    .ok()?;
            Some(ModelCalibration {
                model: if model.is_empty() { "(none)" } else { model }.to_string(),
                pairs: pairs.len(),
                ece: ece.ece,
            })
        })
        .collect()
}

fn phase_history(
    events: &[JournalRow],
    window: ReportWindow,
    operation: &str,
    current: Option<i64>,
) -> PhaseHistory {
    let from = rfc3339_ms(window.from_ms);
    let mut history = PhaseHistory {
        current,
        ..PhaseHistory::default()
    };
    for entry in events {
        let Some(event) = events::trust_event(entry) else {
            continue;
        };
        if event.subject != operation {
            continue;
        }
        let moves = event.kind != "trust.recommended";
        if entry.at < from {
            if moves {
                history.at_start = event.to_phase;
            }
            continue;
        }
        if moves {
            history.at_end = event.to_phase;
            history.highest = history.highest.max(event.to_phase);
        }
        history.changes.push(PhaseEvent {
            at: event.at,
            kind: event.kind.trim_start_matches("trust.").to_string(),
            from_phase: event.from_phase,
            to_phase: event.to_phase,
            trigger: event.trigger,
            by: event.by,
            reason: event.reason,
            evidence_text: event.evidence_text,
            retro_reviews: event.retro_reviews,
            evidence: event.evidence,
        });
    }
    if history.at_end.is_none() {
        history.at_end = history.at_start;
    }
    history.highest = history.highest.max(history.at_start).max(history.at_end);
    history
}

// ---------------------------------------------------------------------------------- advice

/// One `investigate_demotion` per demotion of the month: what demoted it, and the
/// retro-review tasks it opened over the automatic decisions since the last good evidence.
fn demotions(review: &WorkflowReview) -> Vec<Recommendation> {
    review
        .events
        .iter()
        .filter(|e| e.kind == "trust.demoted")
        .map(|event| {
            let phases = format!(
                "from phase {} to {}",
                event.from_phase.map_or_else(|| "?".to_string(), |p| p.to_string()),
                event.to_phase.map_or_else(|| "?".to_string(), |p| p.to_string())
            );
            let retro = match (event.retro_reviews, event.since.as_deref()) {
                (Some(n), Some(since)) => format!(
                    "{n} retro-review task{} re-check its automatic decisions since {since}; work through them",
                    if n == 1 { "" } else { "s" }
                ),
                (Some(n), None) => format!(
                    "{n} retro-review task{} re-check its automatic decisions; work through them",
                    if n == 1 { "" } else { "s" }
                ),
                _ => "no retro-review count was recorded: check its automatic decisions since its last good evidence".to_string(),
            };
            Recommendation {
                kind: "investigate_demotion",
                workflow: review.workflow.clone(),
                subject: event.subject.clone(),
                message: format!(
                    "Investigate the demotion of `{}` {phases} on {} ({}; {}): {retro}, and find the cause before it is promoted again.",
                    event.subject,
                    event.at.get(..10).unwrap_or(&event.at),
                    event.trigger.as_deref().unwrap_or("trigger not recorded"),
                    event.evidence_text,
                ),
                evidence: serde_json::json!({ "at": event.at, "from_phase": event.from_phase,
                    "to_phase": event.to_phase, "trigger": event.trigger, "by": event.by,
                    "retro_reviews": event.retro_reviews, "since": event.since,
                    "evidence": event.evidence }),
            }
        })
        .collect()
}

fn promotions(facts: &MonthFacts, review: &WorkflowReview) -> Vec<Recommendation> {
    let mut out = Vec::new();
    for operation in &review.operations {
        let open = facts
            .open_recommendations
            .iter()
            .find(|r| r.operation == operation.operation);
        if let Some(open) = open {
            out.push(Recommendation {
                kind: "promote",
                workflow: review.workflow.clone(),
                subject: operation.operation.clone(),
                message: format!(
                    "`{}` has an open recommendation from phase {} to {}: a governor who did not write the version can approve it (`keel trust promote {} --reason …`).",
                    operation.operation, open.from_phase, open.to_phase, operation.operation
                ),
                evidence: serde_json::json!({ "recommendation_id": open.id, "evidence": open.evidence }),
            });
            continue;
        }
        let Some(standing) = operation.promotion.as_ref().filter(|s| s.eligible) else {
            continue;
        };
        let low = standing.wilson_low.unwrap_or(0.0);
        out.push(Recommendation {
            kind: "promote",
            workflow: review.workflow.clone(),
            subject: operation.operation.clone(),
            message: format!(
                "`{}` is eligible for phase {}: over its window ({}) the agreement has a Wilson lower bound of {:.1}% over {} reviews, at or above the target of {:.1}%; the engine's next pass will open a recommendation.",
                operation.operation, standing.next_phase, standing.window, low * 100.0, standing.reviews, standing.target * 100.0
            ),
            evidence: serde_json::json!({ "phase": standing.phase, "window": standing.window,
                "as_of": standing.as_of, "reviews": standing.reviews, "agreed": standing.agreed,
                "wilson_low": low, "target": standing.target, "min_reviews": standing.min_reviews }),
        });
    }
    out
}

fn falling_accuracy(review: &WorkflowReview) -> Vec<Recommendation> {
    review
        .operations
        .iter()
        .filter_map(|operation| {
            let (first, second) = (&operation.first_half, &operation.second_half);
            let (Some(before), Some(after)) = (first.agreement, second.agreement) else {
                return None;
            };
            let enough = first.reviews >= FALLING_MIN_REVIEWS && second.reviews >= FALLING_MIN_REVIEWS;
            (enough && before - after > FALLING_BY).then(|| Recommendation {
                kind: "accuracy_falling",
                workflow: review.workflow.clone(),
                subject: operation.operation.clone(),
                message: format!(
                    "Agreement on `{}` fell from {:.1}% to {:.1}% between the halves of the month; review the prompt of {} and recent inputs.",
                    operation.operation,
                    before * 100.0,
                    after * 100.0,
                    if operation.ai_steps.is_empty() {
                        "its ai step".to_string()
                    } else {
                        operation.ai_steps.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                    }
                ),
                evidence: serde_json::json!({ "first_half": first.clone(), "second_half": second.clone() }),
            })
        })
        .collect()
}

fn tier_changes(cascade: &Cascade) -> Vec<Recommendation> {
    let subject = format!("{}/{}", cascade.workflow, cascade.step);
    let mut out = Vec::new();
    let last = cascade.tiers.len().saturating_sub(1);
    for tier in cascade.tiers.iter().filter(|t| t.tier < last) {
        let Some(rate) = tier.acceptance_rate else {
            continue;
        };
        if tier.reached >= DROP_TIER_MIN_REACHED && rate < DROP_TIER_BELOW {
            out.push(Recommendation {
                kind: "drop_tier",
                workflow: cascade.workflow.clone(),
                subject: subject.clone(),
                message: format!(
                    "Tier {} (`{}`) of `{subject}` accepted {:.1}% of the {} proposals that reached it; dropping it saves its calls and latency.",
                    tier.tier, tier.model, rate * 100.0, tier.reached
                ),
                evidence: serde_json::json!({ "tier": tier.tier, "model": tier.model, "reached": tier.reached, "settled": tier.settled, "acceptance_rate": rate }),
            });
        }
    }
    for (index, earlier) in cascade.tiers.iter().enumerate() {
        let later = cascade.tiers.iter().skip(index + 1).find(|later| {
            matches!((earlier.usd_per_call, later.usd_per_call), (Some(a), Some(b)) if b < a)
        });
        if let Some(later) = later {
            out.push(Recommendation {
                kind: "reorder_tiers",
                workflow: cascade.workflow.clone(),
                subject: subject.clone(),
                message: format!(
                    "Tier {} (`{}`, ${:.6} per call) of `{subject}` is cheaper than tier {} (`{}`, ${:.6} per call) before it; try the cheaper model first.",
                    later.tier, later.model, later.usd_per_call.unwrap_or(0.0),
                    earlier.tier, earlier.model, earlier.usd_per_call.unwrap_or(0.0)
                ),
                evidence: serde_json::json!({ "earlier": { "tier": earlier.tier, "model": earlier.model, "usd_per_call": earlier.usd_per_call },
                    "later": { "tier": later.tier, "model": later.model, "usd_per_call": later.usd_per_call } }),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn review(model: &str, verdict: &str, count: i64) -> ReviewCountRow {
        ReviewCountRow {
            operation: "refunds/pay".into(),
            model: model.into(),
            day: 20_400,
            source: "pre".into(),
            verdict: verdict.into(),
            count,
        }
    }

    #[test]
    fn learner_versions_are_split_off_their_model() {
        let rows = [
            review("local", "agree", 5),
            review("local", "corrected", 2),
            review("small", "agree", 3),
        ];
        let rows: Vec<&ReviewCountRow> = rows.iter().collect();
        let tagged = |version: i64, verdict: &str| {
            (
                "refunds/pay".to_string(),
                "local".to_string(),
                version,
                verdict.to_string(),
            )
        };
        let learner = [
            tagged(1, "agree"),
            tagged(1, "agree"),
            tagged(2, "corrected"),
            tagged(2, "agree"),
        ];
        let out: Vec<(String, Option<i64>, i64, i64)> =
            accuracy_by_model(&rows, &learner, "refunds/pay")
                .into_iter()
                .map(|m| (m.model, m.learner_version, m.reviews, m.agreed))
                .collect();
        assert_eq!(
            out,
            [
                ("local".to_string(), None, 3, 2),
                ("local".to_string(), Some(1), 2, 2),
                ("local".to_string(), Some(2), 2, 1),
                ("small".to_string(), None, 3, 3),
            ]
        );
    }

    fn trust_entry(seq: i64, at: &str, kind: &str, data: Value) -> JournalRow {
        JournalRow {
            seq,
            at: at.into(),
            kind: kind.into(),
            actor_type: "system".into(),
            actor_id: "engine".into(),
            case_id: None,
            workflow: Some("refunds".into()),
            step: Some("pay".into()),
            task_id: None,
            exception_id: None,
            data: data.to_string(),
            data_sha256: String::new(),
        }
    }

    #[test]
    fn the_phase_history_keeps_the_highest_phase_of_the_month() {
        let (window, _) = month_window("2026-11").unwrap();
        let op = "refunds/pay";
        let entries = [
            trust_entry(
                1,
                "2026-10-01T00:00:00.000Z",
                "trust.initialised",
                serde_json::json!({"operation": op, "phase": 1}),
            ),
            trust_entry(
                2,
                "2026-11-03T00:00:00.000Z",
                "trust.promoted",
                serde_json::json!({"operation": op, "from_phase": 1, "to_phase": 3}),
            ),
            trust_entry(
                3,
                "2026-11-09T00:00:00.000Z",
                "trust.demoted",
                serde_json::json!({"operation": op, "from_phase": 3, "to_phase": 1,
                "trigger": "critical_exception", "retro_reviews": 4, "evidence": {"kind": "wrong_action", "case_id": "c-1"}}),
            ),
        ];
        let history = phase_history(&entries, window, op, Some(1));
        assert_eq!(
            (history.at_start, history.highest, history.at_end),
            (Some(1), Some(3), Some(1))
        );
        assert_eq!(history.changes.len(), 2);
        assert_eq!(
            history.changes[1].evidence_text,
            "critical exception wrong_action in case c-1"
        );
        assert_eq!(history.changes[1].retro_reviews, Some(4));
    }

    #[test]
    fn months_and_ranges_are_utc_days() {
        let (window, label) = month_window("2026-12").unwrap();
        assert_eq!(label, "2026-12");
        assert_eq!(rfc3339_ms(window.from_ms), "2026-12-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(window.to_ms), "2027-01-01T00:00:00.000Z");
        assert!(month_window("2026-13").is_err());
        assert!(month_window("november").is_err());
        let now = month_window("2026-11").unwrap().0.from_ms + 5 * DAY_MS + 1;
        let range = range_window(None, None, now).unwrap();
        assert_eq!(rfc3339_ms(range.from_ms), "2026-11-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(range.to_ms), "2026-11-07T00:00:00.000Z");
        assert!(range_window(Some("2026-11-05"), Some("2026-11-01"), now).is_err());
        assert!(range_window(Some("2020-01-01"), Some("2026-11-01"), now).is_err());
    }

    fn call(workflow: &str, nano: i64) -> CallSummaryRow {
        CallSummaryRow {
            day: "2026-11-03".into(),
            source: "step".into(),
            workflow: Some(workflow.into()),
            step: Some("judge".into()),
            model: "small".into(),
            provider: "openai".into(),
            calls: 1,
            ok_calls: 1,
            cache_hits: 0,
            cost_unknown: 0,
            cost_nano: nano,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            billed_calls: 1,
            billed_cost_nano: nano,
        }
    }

    #[test]
    fn month_to_date_spend_projects_linearly_against_the_budgets() {
        let (window, month) = month_window("2026-11").unwrap();
        let mut budgets = keel_ai::config::BudgetsConfig::default();
        budgets.total.monthly_usd = Some(10.0);
        budgets.workflows.insert(
            "refunds".into(),
            keel_ai::config::BudgetLimits {
                daily_usd: None,
                monthly_usd: Some(2.0),
            },
        );
        // A quarter of the month gone (7.5 of 30 days), 3 USD spent: 12 USD projected.
        let now = window.from_ms + 7 * DAY_MS + DAY_MS / 2;
        let calls = [
            call("refunds", 1_000_000_000),
            call("triage", 2_000_000_000),
        ];
        let projection = budget(Some(&budgets), now, &month, window, &calls);
        assert!((projection.elapsed - 0.25).abs() < 1e-12);
        assert!((projection.projected_usd - 12.0).abs() < 1e-9);
        assert_eq!(projection.status, "over");
        let refunds = &projection.workflows[0];
        assert_eq!(
            (refunds.workflow.as_str(), refunds.status),
            ("refunds", "over")
        );
        assert!((refunds.projected_usd - 4.0).abs() < 1e-9);
        let triage = &projection.workflows[1];
        assert_eq!(
            (triage.workflow.as_str(), triage.status),
            ("triage", "no_budget")
        );
        // A month that has not begun projects nothing; one that is over projects what it spent.
        let before = budget(Some(&budgets), window.from_ms - 1, &month, window, &calls);
        assert_eq!((before.elapsed, before.projected_usd), (0.0, 0.0));
        let after = budget(None, window.to_ms + DAY_MS, &month, window, &calls);
        assert!((after.projected_usd - 3.0).abs() < 1e-9);
        assert_eq!(after.status, "no_budget");
    }

    fn tier(
        tier: usize,
        model: &str,
        settled: i64,
        reached: i64,
        usd_per_call: Option<f64>,
    ) -> TierShare {
        TierShare {
            tier,
            model: model.into(),
            settled,
            share: 0.0,
            reached,
            acceptance_rate: ratio(settled, reached),
            usd: 0.0,
            usd_per_call,
        }
    }

    #[test]
    fn tiers_that_rarely_accept_or_cost_more_than_later_ones_are_flagged() {
        let cascade = Cascade {
            workflow: "triage".into(),
            step: "route".into(),
            route: vec!["mid".into(), "cheap".into(), "large".into()],
            proposals: 1000,
            failed: 0,
            cost_unknown_proposals: 0,
            actual_usd: 0.0,
            tiers: vec![
                tier(0, "mid", 30, 1000, Some(0.001)),
                tier(1, "cheap", 500, 970, Some(0.0001)),
                tier(2, "large", 470, 470, Some(0.002)),
            ],
            baseline_usd_per_proposal: Some(0.002),
            baseline_method: "observed",
            saved_usd: None,
            net_saved_usd: None,
        };
        let kinds: Vec<(&str, String)> = tier_changes(&cascade)
            .into_iter()
            .map(|r| (r.kind, r.evidence.to_string()))
            .collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert_eq!(kinds[0].0, "drop_tier");
        assert!(kinds[0].1.contains("\"model\":\"mid\""), "{kinds:?}");
        assert_eq!(kinds[1].0, "reorder_tiers");
        assert!(
            kinds[1]
                .1
                .contains("\"later\":{\"tier\":1,\"model\":\"cheap\""),
            "{kinds:?}"
        );
        // The last tier is never dropped, and too few proposals say nothing.
        let mut small = cascade.clone();
        small.tiers[0].reached = DROP_TIER_MIN_REACHED - 1;
        small.tiers[1].usd_per_call = Some(0.0015);
        assert!(tier_changes(&small).is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = percentiles(vec![(30, 1), (10, 1), (20, 1), (40, 1)]);
        assert_eq!((p.count, p.p50, p.p95), (4, Some(20), Some(40)));
        let p = percentiles(vec![(5, 95), (1000, 5)]);
        assert_eq!((p.p50, p.p95), (Some(5), Some(5)));
        assert_eq!(percentiles(Vec::new()).p50, None);
    }
}
