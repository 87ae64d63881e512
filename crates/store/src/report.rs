//! Aggregates for the cost analysis and the monthly operational review.
//!
//! Every query is bounded by a time window and aggregates in the database: a month of a busy
//! deployment is millions of rows, and the driver's per-row cost, not the database, is what
//! makes reading them slow. Distributions (case durations, model-call latencies, times to
//! resolve) come back as histograms of (value, count), so percentiles are exact without
//! shipping every row; case durations of 10 s and more and times to resolve are rounded down
//! to the second first. The journal is read only by kind and time (index `journal_kind_at`,
//! migration 9); the three queries that look into entry data have one text per backend
//! (SQLite `json_extract`, PostgreSQL `jsonb`), like the claim query.
//!
//! [`Store::bulk_load`] writes synthetic rows as given, for the report benchmark.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row};

use crate::{journal_row, AiCallRow, Backend, JournalRow, NewEntry, Result, Store};
use crate::{ENTRIES_PER_INSERT, JOURNAL_COLUMNS};

/// Durations below this many milliseconds keep millisecond resolution in histograms; longer
/// ones are rounded down to the second.
pub const EXACT_BELOW_MS: i64 = 10_000;
/// Most confidence/verdict pairs read per (operation, model) for calibration; more are
/// sampled by keeping every k-th (the bound of `keel_tuning`'s calibration).
pub const MAX_PAIRS_PER_GROUP: usize = 1_000_000;
/// Rows per page when reading review outcomes.
const OUTCOMES_PAGE: i64 = 50_000;
const DAY_MS: i64 = 86_400_000;
/// Rows per multi-row INSERT in [`Store::bulk_load`] (at most 11 columns: 22,000 parameters).
const BULK_ROWS_PER_INSERT: usize = 2_000;

/// A half-open time window `[from_ms, to_ms)`. Model calls are selected by their UTC day, so
/// callers pass windows that start and end at UTC midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportWindow {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl ReportWindow {
    fn start_at(&self) -> String {
        rfc3339(self.from_ms)
    }

    fn end_at(&self) -> String {
        rfc3339(self.to_ms)
    }

    fn start_day(&self) -> String {
        rfc3339(self.from_ms)[..10].to_string()
    }

    fn end_day(&self) -> String {
        rfc3339(self.to_ms)[..10].to_string()
    }
}

/// The journal's time format (`2026-11-27T16:36:11.123Z`), which sorts as text.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Cases created in the window, per workflow, status and duration (from creation to the
/// last update, rounded as [`EXACT_BELOW_MS`] says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseCountRow {
    pub workflow: String,
    pub status: String,
    pub duration_ms: i64,
    pub cases: i64,
    /// Of those, how many missed their SLA.
    pub sla_breached: i64,
}

/// One bar of a histogram: `count` values equal to `value` in `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramRow {
    pub group: String,
    pub value: i64,
    pub count: i64,
}

/// `trust.gate` decisions in the window, per operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRow {
    pub workflow: String,
    pub operation: String,
    /// `task` or `auto`.
    pub decision: String,
    pub review_sampled: bool,
    pub count: i64,
}

/// Cases with at least one gate decision in the window, and how many of them never needed a
/// person before acting (every gate decided `auto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatedCasesRow {
    pub workflow: String,
    pub cases: i64,
    pub automated: i64,
}

/// `ai.proposed` entries in the window, per `ai` step and the tier that settled them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalRow {
    pub workflow: String,
    pub step: String,
    pub tier: i64,
    pub model: String,
    pub proposals: i64,
    /// What the whole cascade spent on these proposals (every attempt, every tier).
    pub cost_usd: f64,
    /// Proposals whose cost is only partly known (a response without usage or price).
    pub cost_unknown: i64,
}

/// Model calls in the window, summed per day, source, step and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummaryRow {
    pub day: String,
    /// `step` or `gateway`.
    pub source: String,
    pub workflow: Option<String>,
    pub step: Option<String>,
    pub model: String,
    pub provider: String,
    pub calls: i64,
    /// Calls with status `ok`.
    pub ok_calls: i64,
    pub cache_hits: i64,
    /// Calls whose cost is unknown.
    pub cost_unknown: i64,
    /// Known cost, nano-USD.
    pub cost_nano: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    /// Successful calls that reached the provider with a known cost, and their cost: what
    /// one call of this model costs, for the cascade's savings estimate.
    pub billed_calls: i64,
    pub billed_cost_nano: i64,
}

/// Model-call latencies (cache hits excluded): `count` calls took `latency_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyRow {
    pub workflow: Option<String>,
    pub model: String,
    pub latency_ms: i64,
    pub count: i64,
}

/// Review outcomes in the window, per operation, model, UTC day, source and verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewCountRow {
    pub operation: String,
    /// Empty when the outcome named no model.
    pub model: String,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    /// `pre` or `post`.
    pub source: String,
    /// `agree`, `corrected` or `rejected`.
    pub verdict: String,
    pub count: i64,
}

/// Reviewed confidences of one operation and model, oldest first: (confidence, agreed).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfidenceGroup {
    pub operation: String,
    pub model: String,
    pub pairs: Vec<(f64, bool)>,
    /// Pairs seen; more than `pairs.len()` when the group was thinned to
    /// [`MAX_PAIRS_PER_GROUP`].
    pub seen: u64,
}

/// Exceptions raised in the window, per fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionCountRow {
    pub workflow: String,
    pub step: Option<String>,
    pub kind: String,
    pub fingerprint: String,
    pub template: String,
    pub raised: i64,
    pub resolved: i64,
}

/// A fingerprint first seen in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPatternRow {
    pub fingerprint: String,
    pub workflow: String,
    pub step: Option<String>,
    pub kind: String,
    pub template: String,
    pub first_seen_ms: i64,
    /// All-time count.
    pub total: i64,
}

/// A case row for [`Store::bulk_load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkCase {
    pub id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub status: String,
    pub state: String,
    pub sla_breached: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A `trust_outcomes` row for [`Store::bulk_load`].
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOutcome {
    pub operation: String,
    pub case_id: String,
    pub task_id: String,
    pub at_ms: i64,
    pub source: String,
    pub verdict: String,
    pub phase: i64,
    pub model: Option<String>,
    pub confidence: Option<f64>,
}

/// An `exceptions` row for [`Store::bulk_load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkException {
    pub id: String,
    pub case_id: String,
    pub workflow: String,
    pub step: Option<String>,
    pub kind: String,
    pub message: String,
    pub fingerprint: String,
    pub template: String,
    pub raised_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

/// An `exception_patterns` row for [`Store::bulk_load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPattern {
    pub fingerprint: String,
    pub workflow: String,
    pub step: Option<String>,
    pub kind: String,
    pub template: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub total: i64,
}

/// Synthetic rows written as given by [`Store::bulk_load`], in one transaction.
#[derive(Debug, Clone, Default)]
pub struct BulkRows {
    pub cases: Vec<BulkCase>,
    pub entries: Vec<NewEntry>,
    pub calls: Vec<AiCallRow>,
    pub outcomes: Vec<BulkOutcome>,
    pub exceptions: Vec<BulkException>,
    pub patterns: Vec<BulkPattern>,
}

impl BulkRows {
    /// Rows of every kind held.
    pub fn len(&self) -> usize {
        self.cases.len()
            + self.entries.len()
            + self.calls.len()
            + self.outcomes.len()
            + self.exceptions.len()
            + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const SQLITE_GATES: &str =
    "WITH g AS MATERIALIZED (SELECT COALESCE(workflow, '') AS workflow, case_id, \
     COALESCE(json_extract(data, '$.operation'), '') AS operation, \
     COALESCE(json_extract(data, '$.decision'), '') AS decision, \
     CAST(COALESCE(json_extract(data, '$.review_sampled'), 0) AS BIGINT) AS sampled \
     FROM journal WHERE kind = 'trust.gate' AND at >= $1 AND at < $2) ";
const POSTGRES_GATES: &str = "WITH g AS MATERIALIZED (SELECT workflow, case_id, \
     COALESCE(d->>'operation', '') AS operation, COALESCE(d->>'decision', '') AS decision, \
     CAST(CASE WHEN d->>'review_sampled' = 'true' THEN 1 ELSE 0 END AS BIGINT) AS sampled \
     FROM (SELECT COALESCE(workflow, '') AS workflow, case_id, data::jsonb AS d FROM journal \
     WHERE kind = 'trust.gate' AND at >= $1 AND at < $2) j) ";
/// Both aggregates of the gate rows `g` in one pass over the journal: part 0 per operation,
/// part 1 per workflow (cases, and those whose every decision was `auto`).
const GATE_PARTS: &str = "SELECT CAST(0 AS BIGINT) AS part, workflow, operation, decision, sampled, \
     CAST(COUNT(*) AS BIGINT) AS n, CAST(0 AS BIGINT) AS automated \
     FROM g GROUP BY workflow, operation, decision, sampled \
     UNION ALL SELECT CAST(1 AS BIGINT) AS part, workflow, '' AS operation, '' AS decision, CAST(0 AS BIGINT) AS sampled, \
     CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(CASE WHEN tasks = 0 THEN 1 ELSE 0 END) AS BIGINT) AS automated \
     FROM (SELECT workflow, case_id, SUM(CASE WHEN decision = 'task' THEN 1 ELSE 0 END) AS tasks \
     FROM g GROUP BY workflow, case_id) c GROUP BY workflow";
// Materialized first: grouping directly on the JSON expressions made SQLite evaluate them
// again while sorting (6.2 s instead of 3.8 s for a million proposals).
const SQLITE_PROPOSALS: &str = "WITH p AS MATERIALIZED (SELECT COALESCE(workflow, '') AS workflow, \
     COALESCE(step, '') AS step, \
     CAST(COALESCE(json_extract(data, '$.proposal.tier'), 0) AS BIGINT) AS tier, \
     COALESCE(json_extract(data, '$.proposal.model'), '') AS model, \
     json_extract(data, '$.cascade.cost_usd') AS cost, \
     CASE WHEN json_extract(data, '$.cascade.cost_known') = 0 THEN 1 ELSE 0 END AS unknown \
     FROM journal WHERE kind = 'ai.proposed' AND at >= $1 AND at < $2) \
     SELECT workflow, step, tier, model, CAST(COUNT(*) AS BIGINT) AS proposals, \
     CAST(TOTAL(cost) AS DOUBLE PRECISION) AS cost_usd, CAST(SUM(unknown) AS BIGINT) AS cost_unknown \
     FROM p GROUP BY 1, 2, 3, 4";
const POSTGRES_PROPOSALS: &str = "WITH p AS MATERIALIZED (SELECT workflow, step, \
     CAST(COALESCE(d->'proposal'->>'tier', '0') AS BIGINT) AS tier, \
     COALESCE(d->'proposal'->>'model', '') AS model, \
     CAST(d->'cascade'->>'cost_usd' AS DOUBLE PRECISION) AS cost, \
     CASE WHEN d->'cascade'->>'cost_known' = 'false' THEN 1 ELSE 0 END AS unknown \
     FROM (SELECT COALESCE(workflow, '') AS workflow, COALESCE(step, '') AS step, data::jsonb AS d \
     FROM journal WHERE kind = 'ai.proposed' AND at >= $1 AND at < $2) j) \
     SELECT workflow, step, tier, model, CAST(COUNT(*) AS BIGINT) AS proposals, \
     CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) AS cost_usd, CAST(SUM(unknown) AS BIGINT) AS cost_unknown \
     FROM p GROUP BY 1, 2, 3, 4";

impl Store {
    /// Cases created in `window`, per workflow, status and duration, with their SLA breaches
    /// (one pass over the `cases_created` index).
    pub async fn report_cases(&self, window: ReportWindow) -> Result<Vec<CaseCountRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, status, CAST(CASE WHEN d < $3 THEN d ELSE d / 1000 * 1000 END AS BIGINT) AS bucket, \
                 CAST(COUNT(*) AS BIGINT) AS cases, CAST(SUM(sla_breached) AS BIGINT) AS breached FROM \
                 (SELECT workflow, status, sla_breached, updated_at_ms - created_at_ms AS d FROM cases \
                 WHERE created_at_ms >= $1 AND created_at_ms < $2) c GROUP BY 1, 2, 3",
            )
            .bind(window.from_ms)
            .bind(window.to_ms)
            .bind(EXACT_BELOW_MS)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(CaseCountRow {
                        workflow: row.try_get("workflow")?,
                        status: row.try_get("status")?,
                        duration_ms: row.try_get("bucket")?,
                        cases: row.try_get("cases")?,
                        sla_breached: row.try_get("breached")?,
                    })
                })
                .collect()
        })
    }

    /// Gate decisions in `window` per operation, and per workflow the cases they concern and
    /// how many of those never waited for a person.
    pub async fn report_gates(
        &self,
        window: ReportWindow,
    ) -> Result<(Vec<GateRow>, Vec<GatedCasesRow>)> {
        let sql = match self.backend {
            Backend::Sqlite { .. } => format!("{SQLITE_GATES}{GATE_PARTS}"),
            Backend::Postgres(_) => format!("{POSTGRES_GATES}{GATE_PARTS}"),
        };
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(window.start_at())
                .bind(window.end_at())
                .fetch_all(pool)
                .await?;
            let mut gates = Vec::new();
            let mut cases = Vec::new();
            for row in &rows {
                let workflow: String = row.try_get("workflow")?;
                let count: i64 = row.try_get("n")?;
                if row.try_get::<i64, _>("part")? == 0 {
                    gates.push(GateRow {
                        workflow,
                        operation: row.try_get("operation")?,
                        decision: row.try_get("decision")?,
                        review_sampled: row.try_get::<i64, _>("sampled")? != 0,
                        count,
                    });
                } else {
                    cases.push(GatedCasesRow {
                        workflow,
                        cases: count,
                        automated: row.try_get("automated")?,
                    });
                }
            }
            Ok((gates, cases))
        })
    }

    /// `ai.proposed` entries in `window` per step, settling tier and model, with the cost of
    /// their cascades.
    pub async fn report_proposals(&self, window: ReportWindow) -> Result<Vec<ProposalRow>> {
        let sql = match self.backend {
            Backend::Sqlite { .. } => SQLITE_PROPOSALS,
            Backend::Postgres(_) => POSTGRES_PROPOSALS,
        };
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(window.start_at())
                .bind(window.end_at())
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(ProposalRow {
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        tier: row.try_get("tier")?,
                        model: row.try_get("model")?,
                        proposals: row.try_get("proposals")?,
                        cost_usd: row.try_get("cost_usd")?,
                        cost_unknown: row.try_get("cost_unknown")?,
                    })
                })
                .collect()
        })
    }

    /// Model calls of the UTC days in `window`, summed per day, source, step and model.
    pub async fn report_ai_calls(&self, window: ReportWindow) -> Result<Vec<CallSummaryRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT day, source, workflow, step, model, provider, \
                 CAST(COUNT(*) AS BIGINT) AS calls, \
                 CAST(SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS BIGINT) AS ok_calls, \
                 CAST(SUM(cache_hit) AS BIGINT) AS cache_hits, \
                 CAST(SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS cost_unknown, \
                 CAST(COALESCE(SUM(cost_nano), 0) AS BIGINT) AS cost_nano, \
                 CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
                 CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
                 CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens, \
                 CAST(SUM(CASE WHEN status = 'ok' AND cache_hit = 0 AND cost_nano IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS billed_calls, \
                 CAST(COALESCE(SUM(CASE WHEN status = 'ok' AND cache_hit = 0 THEN cost_nano ELSE 0 END), 0) AS BIGINT) AS billed_cost_nano \
                 FROM ai_calls WHERE day >= $1 AND day < $2 \
                 GROUP BY day, source, workflow, step, model, provider",
            )
            .bind(window.start_day())
            .bind(window.end_day())
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(CallSummaryRow {
                        day: row.try_get("day")?,
                        source: row.try_get("source")?,
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        model: row.try_get("model")?,
                        provider: row.try_get("provider")?,
                        calls: row.try_get("calls")?,
                        ok_calls: row.try_get("ok_calls")?,
                        cache_hits: row.try_get("cache_hits")?,
                        cost_unknown: row.try_get("cost_unknown")?,
                        cost_nano: row.try_get("cost_nano")?,
                        input_tokens: row.try_get("input_tokens")?,
                        output_tokens: row.try_get("output_tokens")?,
                        cached_input_tokens: row.try_get("cached_input_tokens")?,
                        billed_calls: row.try_get("billed_calls")?,
                        billed_cost_nano: row.try_get("billed_cost_nano")?,
                    })
                })
                .collect()
        })
    }

    /// Latencies of the model calls of the UTC days in `window` that reached a provider.
    pub async fn report_ai_latency(&self, window: ReportWindow) -> Result<Vec<LatencyRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, model, latency_ms, CAST(COUNT(*) AS BIGINT) AS n FROM ai_calls \
                 WHERE day >= $1 AND day < $2 AND cache_hit = 0 GROUP BY workflow, model, latency_ms",
            )
            .bind(window.start_day())
            .bind(window.end_day())
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(LatencyRow {
                        workflow: row.try_get("workflow")?,
                        model: row.try_get("model")?,
                        latency_ms: row.try_get("latency_ms")?,
                        count: row.try_get("n")?,
                    })
                })
                .collect()
        })
    }

    /// Review outcomes recorded in `window` in one pass: counted per operation, model, day,
    /// source and verdict, and the confidences that came with them per operation and model.
    /// Read in pages by id between the window's first and last outcome (outcomes are
    /// recorded in time order), so no page sorts the month.
    pub async fn report_outcomes(
        &self,
        window: ReportWindow,
    ) -> Result<(Vec<ReviewCountRow>, Vec<ConfidenceGroup>)> {
        let (first, last): (Option<i64>, Option<i64>) = dispatch_read!(self, |pool| {
            let row = sqlx::query(
                "SELECT MIN(id) AS first, MAX(id) AS last FROM trust_outcomes WHERE at_ms >= $1 AND at_ms < $2",
            )
            .bind(window.from_ms)
            .bind(window.to_ms)
            .fetch_one(pool)
            .await?;
            (row.try_get("first")?, row.try_get("last")?)
        });
        let mut outcomes = Outcomes::default();
        let (Some(first), Some(last)) = (first, last) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut after_id = first - 1;
        loop {
            let read = dispatch_read!(self, |pool| {
                let rows = sqlx::query(
                    "SELECT id, operation, COALESCE(model, '') AS model, at_ms, source, verdict, confidence \
                     FROM trust_outcomes WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
                )
                .bind(after_id)
                .bind(last)
                .bind(OUTCOMES_PAGE)
                .fetch_all(pool)
                .await?;
                let mut read = 0_i64;
                for row in &rows {
                    after_id = row.try_get("id")?;
                    read += 1;
                    let at_ms: i64 = row.try_get("at_ms")?;
                    if at_ms < window.from_ms || at_ms >= window.to_ms {
                        continue;
                    }
                    outcomes.add(
                        row.try_get("operation")?,
                        row.try_get("model")?,
                        at_ms.div_euclid(DAY_MS),
                        row.try_get("source")?,
                        row.try_get("verdict")?,
                        row.try_get("confidence")?,
                    );
                }
                read
            });
            if read < OUTCOMES_PAGE {
                break;
            }
        }
        Ok(outcomes.finish())
    }

    /// Exceptions raised in `window`, per fingerprint, with how many are resolved.
    pub async fn report_exceptions(&self, window: ReportWindow) -> Result<Vec<ExceptionCountRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, step, kind, fingerprint, template, CAST(COUNT(*) AS BIGINT) AS raised, \
                 CAST(SUM(CASE WHEN status = 'resolved' THEN 1 ELSE 0 END) AS BIGINT) AS resolved \
                 FROM exceptions WHERE raised_at_ms >= $1 AND raised_at_ms < $2 \
                 GROUP BY workflow, step, kind, fingerprint, template",
            )
            .bind(window.from_ms)
            .bind(window.to_ms)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(ExceptionCountRow {
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        kind: row.try_get("kind")?,
                        fingerprint: row.try_get("fingerprint")?,
                        template: row.try_get("template")?,
                        raised: row.try_get("raised")?,
                        resolved: row.try_get("resolved")?,
                    })
                })
                .collect()
        })
    }

    /// Times to resolve (milliseconds, rounded down to the second) of the exceptions raised in
    /// `window` that are resolved, per workflow.
    pub async fn report_resolve_times(&self, window: ReportWindow) -> Result<Vec<HistogramRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, CAST((resolved_at_ms - raised_at_ms) / 1000 * 1000 AS BIGINT) AS bucket, \
                 CAST(COUNT(*) AS BIGINT) AS n FROM exceptions \
                 WHERE raised_at_ms >= $1 AND raised_at_ms < $2 AND resolved_at_ms IS NOT NULL GROUP BY 1, 2",
            )
            .bind(window.from_ms)
            .bind(window.to_ms)
            .fetch_all(pool)
            .await?;
            histogram(&rows)
        })
    }

    /// Fingerprints first seen in `window`, oldest first, at most `limit`.
    pub async fn report_new_patterns(
        &self,
        window: ReportWindow,
        limit: i64,
    ) -> Result<Vec<NewPatternRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT fingerprint, workflow, step, kind, template, first_seen_ms, total FROM exception_patterns \
                 WHERE first_seen_ms >= $1 AND first_seen_ms < $2 ORDER BY first_seen_ms, fingerprint LIMIT $3",
            )
            .bind(window.from_ms)
            .bind(window.to_ms)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(NewPatternRow {
                        fingerprint: row.try_get("fingerprint")?,
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        kind: row.try_get("kind")?,
                        template: row.try_get("template")?,
                        first_seen_ms: row.try_get("first_seen_ms")?,
                        total: row.try_get("total")?,
                    })
                })
                .collect()
        })
    }

    /// Journal entries of `kind` recorded in `[from_ms, to_ms)`, oldest first, at most `limit`.
    pub async fn report_entries(
        &self,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<JournalRow>> {
        let sql = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal WHERE kind = $1 AND at >= $2 AND at < $3 \
             ORDER BY at, seq LIMIT $4"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(kind)
                .bind(rfc3339(from_ms))
                .bind(rfc3339(to_ms))
                .bind(limit.max(1))
                .fetch_all(pool)
                .await?;
            rows.iter().map(journal_row).collect()
        })
    }

    /// Journal entries of `kind` recorded in `[from_ms, to_ms)` whose data contains `needle`
    /// (a plain substring, e.g. `"learner_version"` with its quotes), oldest first, at most
    /// `limit`. For fields that only some entries of a kind carry: the few that do are read
    /// without parsing the rest.
    pub async fn report_entries_containing(
        &self,
        kind: &str,
        needle: &str,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<JournalRow>> {
        // The same substring test in each dialect (PostgreSQL's `data` is TEXT as well).
        let position = match &self.backend {
            Backend::Sqlite { .. } => "INSTR(data, $4)",
            Backend::Postgres(_) => "STRPOS(data, $4)",
        };
        let sql = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal WHERE kind = $1 AND at >= $2 AND at < $3 \
             AND {position} > 0 ORDER BY at, seq LIMIT $5"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(kind)
                .bind(rfc3339(from_ms))
                .bind(rfc3339(to_ms))
                .bind(needle)
                .bind(limit.max(1))
                .fetch_all(pool)
                .await?;
            rows.iter().map(journal_row).collect()
        })
    }

    /// Writes `rows` as given in one transaction: no projections, no pattern events, no
    /// ledger leaves (the sequencer adds those later if an engine runs). For benchmarks that
    /// need a large, realistic database quickly; never for real cases.
    pub async fn bulk_load(&self, rows: &BulkRows) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in rows.cases.chunks(BULK_ROWS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO cases (id, workflow, workflow_version, status, state, version, sla_breached, created_at_ms, updated_at_ms) ",
                );
                builder.push_values(chunk, |mut row, case| {
                    row.push_bind(&case.id)
                        .push_bind(&case.workflow)
                        .push_bind(case.workflow_version)
                        .push_bind(&case.status)
                        .push_bind(&case.state)
                        .push_bind(1_i64)
                        .push_bind(i64::from(case.sla_breached))
                        .push_bind(case.created_at_ms)
                        .push_bind(case.updated_at_ms);
                });
                builder.build().execute(&mut *tx).await?;
            }
            if !rows.entries.is_empty() {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, rows.entries);
            }
            for chunk in rows.calls.chunks(BULK_ROWS_PER_INSERT / 2) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO ai_calls (at_ms, day, source, caller, workflow, step, case_id, model, provider, status, input_tokens, output_tokens, cached_input_tokens, cost_nano, latency_ms, cache_hit, attempts) ",
                );
                builder.push_values(chunk, |mut row, call| {
                    row.push_bind(call.at_ms)
                        .push_bind(&call.day)
                        .push_bind(&call.source)
                        .push_bind(&call.caller)
                        .push_bind(&call.workflow)
                        .push_bind(&call.step)
                        .push_bind(&call.case_id)
                        .push_bind(&call.model)
                        .push_bind(&call.provider)
                        .push_bind(&call.status)
                        .push_bind(call.input_tokens)
                        .push_bind(call.output_tokens)
                        .push_bind(call.cached_input_tokens)
                        .push_bind(call.cost_nano)
                        .push_bind(call.latency_ms)
                        .push_bind(i64::from(call.cache_hit))
                        .push_bind(call.attempts);
                });
                builder.build().execute(&mut *tx).await?;
            }
            for chunk in rows.outcomes.chunks(BULK_ROWS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO trust_outcomes (operation, case_id, task_id, at_ms, source, verdict, phase, model, confidence) ",
                );
                builder.push_values(chunk, |mut row, outcome| {
                    row.push_bind(&outcome.operation)
                        .push_bind(&outcome.case_id)
                        .push_bind(&outcome.task_id)
                        .push_bind(outcome.at_ms)
                        .push_bind(&outcome.source)
                        .push_bind(&outcome.verdict)
                        .push_bind(outcome.phase)
                        .push_bind(&outcome.model)
                        .push_bind(outcome.confidence);
                });
                builder.build().execute(&mut *tx).await?;
            }
            for chunk in rows.exceptions.chunks(BULK_ROWS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO exceptions (id, case_id, workflow, step, kind, message, fingerprint, template, status, raised_at_ms, resolved_at_ms, detail) ",
                );
                builder.push_values(chunk, |mut row, exception| {
                    let status = if exception.resolved_at_ms.is_some() {
                        "resolved"
                    } else {
                        "open"
                    };
                    row.push_bind(&exception.id)
                        .push_bind(&exception.case_id)
                        .push_bind(&exception.workflow)
                        .push_bind(&exception.step)
                        .push_bind(&exception.kind)
                        .push_bind(&exception.message)
                        .push_bind(&exception.fingerprint)
                        .push_bind(&exception.template)
                        .push_bind(status)
                        .push_bind(exception.raised_at_ms)
                        .push_bind(exception.resolved_at_ms)
                        .push_bind("{}");
                });
                builder.build().execute(&mut *tx).await?;
            }
            for chunk in rows.patterns.chunks(BULK_ROWS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO exception_patterns (fingerprint, workflow, step, kind, template, first_seen_ms, last_seen_ms, total) ",
                );
                builder.push_values(chunk, |mut row, pattern| {
                    row.push_bind(&pattern.fingerprint)
                        .push_bind(&pattern.workflow)
                        .push_bind(&pattern.step)
                        .push_bind(&pattern.kind)
                        .push_bind(&pattern.template)
                        .push_bind(pattern.first_seen_ms)
                        .push_bind(pattern.last_seen_ms)
                        .push_bind(pattern.total);
                });
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// Reads (`workflow`, `bucket`, `n`) rows as a histogram.
fn histogram<R: Row>(rows: &[R]) -> Result<Vec<HistogramRow>>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|row| {
            Ok(HistogramRow {
                group: row.try_get("workflow")?,
                value: row.try_get("bucket")?,
                count: row.try_get("n")?,
            })
        })
        .collect()
}

/// (day, source, verdict), the last two as indexes into [`Outcomes::words`].
type OutcomeKey = (i64, usize, usize);

/// Accumulates review outcomes per (operation, model) without a string per row.
#[derive(Default)]
struct Outcomes {
    index: HashMap<String, HashMap<String, usize>>,
    groups: Vec<(ConfidenceGroup, HashMap<OutcomeKey, i64>)>,
    /// Sources and verdicts seen (a handful), by their index in the keys.
    words: Vec<String>,
}

impl Outcomes {
    fn add(
        &mut self,
        operation: &str,
        model: &str,
        day: i64,
        source: &str,
        verdict: &str,
        confidence: Option<f64>,
    ) {
        let at = match self.index.get(operation).and_then(|m| m.get(model)) {
            Some(at) => *at,
            None => {
                self.groups.push((
                    ConfidenceGroup {
                        operation: operation.to_string(),
                        model: model.to_string(),
                        pairs: Vec::new(),
                        seen: 0,
                    },
                    HashMap::new(),
                ));
                let at = self.groups.len() - 1;
                self.index
                    .entry(operation.to_string())
                    .or_default()
                    .insert(model.to_string(), at);
                at
            }
        };
        let Some((group, counts)) = self.groups.get_mut(at) else {
            return;
        };
        let key = (
            day,
            word(&mut self.words, source),
            word(&mut self.words, verdict),
        );
        *counts.entry(key).or_insert(0) += 1;
        if let Some(confidence) = confidence {
            group.seen += 1;
            if group.pairs.len() < MAX_PAIRS_PER_GROUP {
                group.pairs.push((confidence, verdict == "agree"));
            }
        }
    }

    fn finish(self) -> (Vec<ReviewCountRow>, Vec<ConfidenceGroup>) {
        let mut counts = Vec::new();
        let mut groups = Vec::new();
        for (group, by_key) in self.groups {
            for ((day, source, verdict), count) in by_key {
                counts.push(ReviewCountRow {
                    operation: group.operation.clone(),
                    model: group.model.clone(),
                    day,
                    source: self.words.get(source).cloned().unwrap_or_default(),
                    verdict: self.words.get(verdict).cloned().unwrap_or_default(),
                    count,
                });
            }
            groups.push(group);
        }
        counts.sort_by(|a, b| {
            (&a.operation, &a.model, a.day, &a.source, &a.verdict).cmp(&(
                &b.operation,
                &b.model,
                b.day,
                &b.source,
                &b.verdict,
            ))
        });
        groups.sort_by(|a, b| (&a.operation, &a.model).cmp(&(&b.operation, &b.model)));
        (counts, groups)
    }
}

/// The index of `text` in `words`, added if new.
fn word(words: &mut Vec<String>, text: &str) -> usize {
    match words.iter().position(|w| w == text) {
        Some(index) => index,
        None => {
            words.push(text.to_string());
            words.len() - 1
        }
    }
}
