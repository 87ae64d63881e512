//! Progressive trust: each operation's phase, the review outcomes that are its evidence, and
//! promotion recommendations.
//!
//! `trust_outcomes` is a projection of `outcome.reviewed` entries, written in the same
//! transaction as the entry (in `commit` for pre-approval decisions, in [`Store::complete_review`]
//! for post-hoc reviews). Phase changes and recommendations are conditional writes with their
//! journal entry in one transaction, like the exception desk's: a phase moves only from the
//! phase the caller saw, a recommendation is decided once.

use serde::Serialize;
use serde_json::Value;
use sqlx::{QueryBuilder, Row};

use crate::{tasks, Backend, NewEntry, Result, Store, ENTRIES_PER_INSERT, MAX_PAGE};

/// One operation's current phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustOperationRow {
    /// `workflow/step`.
    pub operation: String,
    pub workflow: String,
    pub step: String,
    pub phase: i64,
    /// When it entered this phase.
    pub since_ms: i64,
    /// When it was last promoted (the SPRT counts outcomes from here).
    pub promoted_at_ms: Option<i64>,
    pub workflow_version: Option<i64>,
    /// Fingerprint of the version's trust-relevant configuration (prompts, routes, policy,
    /// hard limits), for change control.
    pub config_sha256: Option<String>,
    pub updated_at_ms: i64,
}

/// One review of an AI-proposed action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustOutcomeRow {
    pub operation: String,
    pub case_id: String,
    pub task_id: String,
    pub at_ms: i64,
    /// `pre` (decided before the action) or `post` (a sampled review after it).
    pub source: String,
    /// `agree`, `corrected` or `rejected`.
    pub verdict: String,
    pub phase: i64,
    pub model: Option<String>,
    /// The proposal's raw (uncalibrated) confidence.
    pub confidence: Option<f64>,
    pub cost_usd: Option<f64>,
    /// `workflow/step` of the `ai` step whose proposal was reviewed.
    pub ai_step: Option<String>,
    /// For `classify`: the proposed label and the label that stood after the review
    /// (`rejected` when the action was rejected).
    pub proposed_label: Option<String>,
    pub final_label: Option<String>,
}

/// A fitted confidence calibrator of one model on one `ai` step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibratorRow {
    pub ai_step: String,
    pub model: String,
    /// `none` (the raw confidence was better on held-out reviews), `isotonic` or `platt`.
    pub kind: String,
    pub calibrator: Value,
    pub ece_before: f64,
    pub ece_after: f64,
    /// Pairs the calibrator was fitted and judged on (at most the newest 50,000).
    pub pairs: i64,
    pub fitted_at_ms: i64,
    /// Reviews with a confidence for this step and model when it was fitted (0: fitted before
    /// this was recorded); the next refit waits for enough newer ones.
    pub reviews_seen: i64,
}

/// A promotion the system recommends, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecommendationRow {
    pub id: String,
    pub operation: String,
    pub from_phase: i64,
    pub to_phase: i64,
    /// `open`, `approved`, `declined` or `stale` (the phase moved meanwhile).
    pub status: String,
    pub created_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub evidence: Value,
}

/// A phase change: from `expected` (`None`: the operation is new) to `phase`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseChange {
    pub operation: String,
    pub workflow: String,
    pub step: String,
    pub expected: Option<i64>,
    pub phase: i64,
    pub at_ms: i64,
    /// Promotions restart the SPRT's count.
    pub promoted: bool,
    pub workflow_version: Option<i64>,
    pub config_sha256: Option<String>,
}

/// The `trust_outcomes` rows that `outcome.reviewed` entries record.
pub(crate) fn outcome_rows<'e>(
    entries: impl Iterator<Item = &'e NewEntry>,
) -> Vec<TrustOutcomeRow> {
    entries
        .filter(|entry| entry.kind == "outcome.reviewed")
        .filter_map(|entry| {
            let data: Value = serde_json::from_str(&entry.data).ok()?;
            Some(TrustOutcomeRow {
                operation: data["operation"].as_str()?.to_string(),
                case_id: entry.case_id.clone().unwrap_or_default(),
                task_id: data["task_id"].as_str()?.to_string(),
                at_ms: crate::exceptions::at_ms(&entry.at),
                source: data["source"].as_str().unwrap_or("pre").to_string(),
                verdict: data["verdict"].as_str()?.to_string(),
                phase: data["phase"].as_i64().unwrap_or(1),
                model: data["model"].as_str().map(str::to_string),
                confidence: data["confidence"].as_f64(),
                cost_usd: data["cost_usd"].as_f64(),
                ai_step: data["ai_step"].as_str().map(str::to_string),
                proposed_label: data["proposed_label"].as_str().map(str::to_string),
                final_label: data["final_label"].as_str().map(str::to_string),
            })
        })
        .collect()
}

/// Inserts `trust_outcomes` rows inside the transaction `$tx`.
macro_rules! apply_trust_outcomes {
    ($tx:ident, $rows:expr) => {
        for row in $rows {
            sqlx::query("INSERT INTO trust_outcomes (operation, case_id, task_id, at_ms, source, verdict, phase, model, confidence, cost_usd, ai_step, proposed_label, final_label) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (task_id) DO NOTHING")
                .bind(&row.operation).bind(&row.case_id).bind(&row.task_id).bind(row.at_ms)
                .bind(&row.source).bind(&row.verdict).bind(row.phase).bind(&row.model)
                .bind(row.confidence).bind(row.cost_usd)
                .bind(&row.ai_step).bind(&row.proposed_label).bind(&row.final_label)
                .execute(&mut *$tx).await?;
        }
    };
}

const OUTCOME_COLUMNS: &str = "operation, case_id, task_id, at_ms, source, verdict, phase, model, confidence, cost_usd, ai_step, proposed_label, final_label";

fn outcome_from<R: Row>(row: &R) -> Result<TrustOutcomeRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TrustOutcomeRow {
        operation: row.try_get("operation")?,
        case_id: row.try_get("case_id")?,
        task_id: row.try_get("task_id")?,
        at_ms: row.try_get("at_ms")?,
        source: row.try_get("source")?,
        verdict: row.try_get("verdict")?,
        phase: row.try_get("phase")?,
        model: row.try_get("model")?,
        confidence: row.try_get("confidence")?,
        cost_usd: row.try_get("cost_usd")?,
        ai_step: row.try_get("ai_step")?,
        proposed_label: row.try_get("proposed_label")?,
        final_label: row.try_get("final_label")?,
    })
}

const OPERATION_COLUMNS: &str = "operation, workflow, step, phase, since_ms, promoted_at_ms, workflow_version, config_sha256, updated_at_ms";

fn operation_from<R: Row>(row: &R) -> Result<TrustOperationRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TrustOperationRow {
        operation: row.try_get("operation")?,
        workflow: row.try_get("workflow")?,
        step: row.try_get("step")?,
        phase: row.try_get("phase")?,
        since_ms: row.try_get("since_ms")?,
        promoted_at_ms: row.try_get("promoted_at_ms")?,
        workflow_version: row.try_get("workflow_version")?,
        config_sha256: row.try_get("config_sha256")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn recommendation_from<R: Row>(row: &R) -> Result<RecommendationRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let evidence: String = row.try_get("evidence")?;
    Ok(RecommendationRow {
        id: row.try_get("id")?,
        operation: row.try_get("operation")?,
        from_phase: row.try_get("from_phase")?,
        to_phase: row.try_get("to_phase")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at_ms")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decided_by: row.try_get("decided_by")?,
        evidence: serde_json::from_str(&evidence).unwrap_or(Value::Null),
    })
}

const RECOMMENDATION_COLUMNS: &str = "id, operation, from_phase, to_phase, status, created_at_ms, decided_at_ms, decided_by, evidence";

/// Appends `entries` inside the transaction `$tx` with every projection they drive.
macro_rules! append_projected {
    ($tx:ident, $entries:expr) => {
        let entries: Vec<&NewEntry> = $entries;
        insert_entries!($tx, entries);
        apply_task_changes!($tx, tasks::task_changes(entries.iter().copied()));
        apply_exception_changes!(
            $tx,
            crate::exceptions::exception_changes(entries.iter().copied())
        );
        apply_trust_outcomes!($tx, outcome_rows(entries.iter().copied()));
    };
}

impl Store {
    /// Every operation's phase.
    pub async fn trust_operations(&self) -> Result<Vec<TrustOperationRow>> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM trust_operations ORDER BY operation");
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(operation_from)
                .collect()
        })
    }

    pub async fn trust_operation(&self, operation: &str) -> Result<Option<TrustOperationRow>> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM trust_operations WHERE operation = $1");
        dispatch_read!(self, |pool| {
            match sqlx::query(&sql)
                .bind(operation)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Ok(Some(operation_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Moves an operation's phase (or creates it) if it is still at `change.expected`, and
    /// appends `entry`; any open recommendation for it goes `stale`. Returns whether it took.
    pub async fn trust_set_phase(&self, change: &PhaseChange, entry: &NewEntry) -> Result<bool> {
        self.trust_set_phase_with(change, std::slice::from_ref(entry))
            .await
    }

    /// [`Store::trust_set_phase`] with several entries: the phase change's own entry first,
    /// then what it opens (retro-review `task.created` entries, projected into `tasks` in the
    /// same transaction). Nothing is written unless the phase change takes.
    pub async fn trust_set_phase_with(
        &self,
        change: &PhaseChange,
        entries: &[NewEntry],
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let affected = match change.expected {
                None => sqlx::query("INSERT INTO trust_operations (operation, workflow, step, phase, since_ms, promoted_at_ms, workflow_version, config_sha256, updated_at_ms) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $5) ON CONFLICT (operation) DO NOTHING")
                    .bind(&change.operation).bind(&change.workflow).bind(&change.step).bind(change.phase)
                    .bind(change.at_ms).bind(change.workflow_version).bind(&change.config_sha256)
                    .execute(&mut *tx).await?.rows_affected(),
                Some(expected) => sqlx::query("UPDATE trust_operations SET phase = $1, since_ms = $2, updated_at_ms = $2, \
                        promoted_at_ms = CASE WHEN $3 = 1 THEN $2 ELSE promoted_at_ms END, \
                        workflow_version = COALESCE($4, workflow_version), config_sha256 = COALESCE($5, config_sha256) \
                        WHERE operation = $6 AND phase = $7")
                    .bind(change.phase).bind(change.at_ms).bind(i64::from(change.promoted))
                    .bind(change.workflow_version).bind(&change.config_sha256)
                    .bind(&change.operation).bind(expected)
                    .execute(&mut *tx).await?.rows_affected(),
            };
            if affected != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("UPDATE trust_recommendations SET status = 'stale' WHERE operation = $1 AND status = 'open' AND from_phase <> $2")
                .bind(&change.operation).bind(change.phase)
                .execute(&mut *tx).await?;
            insert_entries!(tx, entries);
            apply_task_changes!(tx, crate::tasks::task_changes(entries.iter()));
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records the version and configuration an operation runs under now (no phase change).
    pub async fn trust_note_version(
        &self,
        operation: &str,
        version: i64,
        config_sha256: &str,
    ) -> Result<()> {
        dispatch!(self, |pool| {
            sqlx::query("UPDATE trust_operations SET workflow_version = $1, config_sha256 = $2 WHERE operation = $3")
                .bind(version).bind(config_sha256).bind(operation)
                .execute(pool).await?;
            Ok(())
        })
    }

    /// An operation's outcomes recorded at or after `since_ms`, oldest first, at most the
    /// newest `limit` of them.
    pub async fn trust_outcomes(
        &self,
        operation: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<TrustOutcomeRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&format!(
                "SELECT {OUTCOME_COLUMNS} FROM trust_outcomes \
                 WHERE operation = $1 AND at_ms >= $2 ORDER BY at_ms DESC, id DESC LIMIT $3"
            ))
            .bind(operation)
            .bind(since_ms)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?;
            rows.iter().rev().map(outcome_from).collect()
        })
    }

    /// The `trust.gate` entries of `workflow/step` at or after `from_at` (RFC 3339, as the
    /// journal writes it), oldest first, at most `limit`: (seq, case id, at, data).
    pub async fn gate_entries_since(
        &self,
        workflow: &str,
        step: &str,
        from_at: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String)>> {
        dispatch_read!(self, |pool| {
            let rows: Vec<(i64, Option<String>, String, String)> = sqlx::query_as(
                "SELECT seq, case_id, at, data FROM journal WHERE kind = 'trust.gate' \
                 AND at >= $1 AND workflow = $2 AND step = $3 ORDER BY seq LIMIT $4",
            )
            .bind(from_at)
            .bind(workflow)
            .bind(step)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(seq, case_id, at, data)| Some((seq, case_id?, at, data)))
                .collect())
        })
    }

    /// Inserts an open recommendation unless the operation has one open already; appends
    /// `entry` if it did.
    pub async fn trust_recommend(&self, row: &RecommendationRow, entry: &NewEntry) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trust_recommendations WHERE operation = $1 AND status = 'open'")
                .bind(&row.operation).fetch_one(&mut *tx).await?;
            if open > 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("INSERT INTO trust_recommendations (id, operation, from_phase, to_phase, status, created_at_ms, evidence) VALUES ($1, $2, $3, $4, 'open', $5, $6)")
                .bind(&row.id).bind(&row.operation).bind(row.from_phase).bind(row.to_phase)
                .bind(row.created_at_ms).bind(row.evidence.to_string())
                .execute(&mut *tx).await?;
            let entries = [entry];
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Recommendations, newest first; only `status` ones when given.
    pub async fn trust_recommendations(
        &self,
        status: Option<&str>,
        operation: Option<&str>,
    ) -> Result<Vec<RecommendationRow>> {
        let sql = format!("SELECT {RECOMMENDATION_COLUMNS} FROM trust_recommendations WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR operation = $2) ORDER BY created_at_ms DESC, id LIMIT $3");
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(status)
                .bind(operation)
                .bind(MAX_PAGE)
                .fetch_all(pool)
                .await?
                .iter()
                .map(recommendation_from)
                .collect()
        })
    }

    /// Closes an open recommendation as `status` (declined, approved) with `entry`.
    pub async fn trust_close_recommendation(
        &self,
        id: &str,
        status: &str,
        by: &str,
        at_ms: i64,
        entry: &NewEntry,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let affected = sqlx::query("UPDATE trust_recommendations SET status = $1, decided_by = $2, decided_at_ms = $3 WHERE id = $4 AND status = 'open'")
                .bind(status).bind(by).bind(at_ms).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if affected != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            let entries = [entry];
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Decides a post-hoc review task: if the task is still open, appends `entries` (its
    /// `task.completed`, the `outcome.reviewed`, an `exception.raised` for a wrong action)
    /// with the projections they drive. Returns whether it took.
    pub async fn complete_review(&self, task_id: &str, entries: &[NewEntry]) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let open: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE id = $1 AND status = 'open'")
                    .bind(task_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if open != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            append_projected!(tx, entries.iter().collect());
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The (ai step, model) pairs that have reviewed outcomes with a confidence.
    pub async fn calibration_keys(&self) -> Result<Vec<(String, String, i64)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT ai_step, model, COUNT(*) AS n FROM trust_outcomes WHERE ai_step IS NOT NULL AND model IS NOT NULL AND confidence IS NOT NULL GROUP BY ai_step, model ORDER BY ai_step, model")
                .fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("ai_step")?,
                        row.try_get("model")?,
                        row.try_get("n")?,
                    ))
                })
                .collect()
        })
    }

    /// Stores a fitted calibrator (replacing the previous one) with its journal entry.
    pub async fn save_calibrator(&self, row: &CalibratorRow, entry: &NewEntry) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO calibrators (ai_step, model, kind, calibrator, ece_before, ece_after, pairs, fitted_at_ms, reviews_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (ai_step, model) DO UPDATE SET kind = $3, calibrator = $4, ece_before = $5, ece_after = $6, pairs = $7, fitted_at_ms = $8, reviews_seen = $9")
                .bind(&row.ai_step).bind(&row.model).bind(&row.kind).bind(row.calibrator.to_string())
                .bind(row.ece_before).bind(row.ece_after).bind(row.pairs).bind(row.fitted_at_ms)
                .bind(row.reviews_seen)
                .execute(&mut *tx).await?;
            let entries = [entry];
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every stored calibrator.
    pub async fn calibrators(&self) -> Result<Vec<CalibratorRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT ai_step, model, kind, calibrator, ece_before, ece_after, pairs, fitted_at_ms, reviews_seen FROM calibrators ORDER BY ai_step, model")
                .fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let text: String = row.try_get("calibrator")?;
                    Ok(CalibratorRow {
                        ai_step: row.try_get("ai_step")?,
                        model: row.try_get("model")?,
                        kind: row.try_get("kind")?,
                        calibrator: serde_json::from_str(&text).unwrap_or(Value::Null),
                        ece_before: row.try_get("ece_before")?,
                        ece_after: row.try_get("ece_after")?,
                        pairs: row.try_get("pairs")?,
                        fitted_at_ms: row.try_get("fitted_at_ms")?,
                        reviews_seen: row.try_get("reviews_seen")?,
                    })
                })
                .collect()
        })
    }

    /// Inserts review outcomes directly, in one transaction (benchmarks and imports; the
    /// engine records them from `outcome.reviewed` entries).
    pub async fn insert_trust_outcomes(&self, rows: &[TrustOutcomeRow]) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(2_000) {
                let mut builder = QueryBuilder::new("INSERT INTO trust_outcomes (operation, case_id, task_id, at_ms, source, verdict, phase, model, confidence, cost_usd, ai_step, proposed_label, final_label) ");
                builder.push_values(chunk, |mut b, row| {
                    b.push_bind(&row.operation)
                        .push_bind(&row.case_id)
                        .push_bind(&row.task_id)
                        .push_bind(row.at_ms)
                        .push_bind(&row.source)
                        .push_bind(&row.verdict)
                        .push_bind(row.phase)
                        .push_bind(&row.model)
                        .push_bind(row.confidence)
                        .push_bind(row.cost_usd)
                        .push_bind(&row.ai_step)
                        .push_bind(&row.proposed_label)
                        .push_bind(&row.final_label);
                });
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// An operation's reviews at or after `since_ms` and before `until_ms` as (time, agreed),
    /// oldest first; with `newest`, only the newest so many of those. The database packs them into one string: for
    /// evaluation passes over millions of reviews the driver's per-row cost, not the database,
    /// would dominate.
    pub async fn trust_evidence(
        &self,
        operation: &str,
        since_ms: i64,
        until_ms: i64,
        newest: Option<i64>,
    ) -> Result<Vec<(i64, bool)>> {
        let limit = newest.unwrap_or(i64::MAX).max(1);
        let filter = "SELECT id FROM trust_outcomes WHERE operation = $1 AND at_ms >= $2 AND at_ms < $4 ORDER BY at_ms DESC, id DESC LIMIT $3";
        let packed: Option<String> = match self.backend {
            Backend::Sqlite { ref read, .. } => {
                let sql = format!("SELECT group_concat(at_ms || ':' || (CASE WHEN verdict = 'agree' THEN 1 ELSE 0 END), ',' ORDER BY at_ms, id) FROM trust_outcomes WHERE operation = $1 AND at_ms >= $2 AND at_ms < $4{}",
                    if newest.is_some() { format!(" AND id IN ({filter})") } else { " AND $3 > 0".to_string() });
                sqlx::query_scalar(&sql)
                    .bind(operation)
                    .bind(since_ms)
                    .bind(limit)
                    .bind(until_ms)
                    .fetch_one(read)
                    .await?
            }
            Backend::Postgres(ref pool) => {
                let sql = format!("SELECT string_agg(at_ms::text || ':' || (CASE WHEN verdict = 'agree' THEN '1' ELSE '0' END), ',' ORDER BY at_ms, id) FROM trust_outcomes WHERE operation = $1 AND at_ms >= $2 AND at_ms < $4{}",
                    if newest.is_some() { format!(" AND id IN ({filter})") } else { " AND $3 > 0".to_string() });
                sqlx::query_scalar(&sql)
                    .bind(operation)
                    .bind(since_ms)
                    .bind(limit)
                    .bind(until_ms)
                    .fetch_one(pool)
                    .await?
            }
        };
        let Some(packed) = packed else {
            return Ok(Vec::new());
        };
        Ok(packed
            .split(',')
            .filter_map(|item| {
                let (at, agreed) = item.split_once(':')?;
                Some((at.parse().ok()?, agreed == "1"))
            })
            .collect())
    }

    /// An operation's reviews with `id > after_id` and `at_ms >= since_ms` as (id, time,
    /// agreed), in id order, packed like [`Store::trust_evidence`]: what an evaluator that
    /// keeps the evidence in memory reads on each pass.
    pub async fn trust_evidence_after(
        &self,
        operation: &str,
        after_id: i64,
        since_ms: i64,
    ) -> Result<Vec<(i64, i64, bool)>> {
        let packed: Option<String> = match self.backend {
            Backend::Sqlite { ref read, .. } => {
                // By (operation, id): only the new rows are visited. Left to itself SQLite picks the
                // (operation, at_ms) index and walks the whole window of every operation.
                sqlx::query_scalar("SELECT group_concat(id || ':' || at_ms || ':' || (CASE WHEN verdict = 'agree' THEN 1 ELSE 0 END), ',' ORDER BY id) FROM trust_outcomes INDEXED BY trust_outcomes_operation_id WHERE operation = $1 AND id > $2 AND at_ms >= $3")
                    .bind(operation).bind(after_id).bind(since_ms).fetch_one(read).await?
            }
            Backend::Postgres(ref pool) => {
                sqlx::query_scalar("SELECT string_agg(id::text || ':' || at_ms::text || ':' || (CASE WHEN verdict = 'agree' THEN '1' ELSE '0' END), ',' ORDER BY id) FROM trust_outcomes WHERE operation = $1 AND id > $2 AND at_ms >= $3")
                    .bind(operation).bind(after_id).bind(since_ms).fetch_one(pool).await?
            }
        };
        let Some(packed) = packed else {
            return Ok(Vec::new());
        };
        Ok(packed
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(':');
                let id = parts.next()?.parse().ok()?;
                let at = parts.next()?.parse().ok()?;
                Some((id, at, parts.next()? == "1"))
            })
            .collect())
    }

    /// Reviewed (raw confidence, agreed) pairs of one model on one `ai` step, the newest
    /// `limit`, packed.
    pub async fn calibration_pairs(
        &self,
        ai_step: &str,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(f64, bool)>> {
        let packed: Option<String> = match self.backend {
            Backend::Sqlite { ref read, .. } => {
                sqlx::query_scalar("SELECT group_concat(confidence || ':' || (CASE WHEN verdict = 'agree' THEN 1 ELSE 0 END), ',') FROM (SELECT confidence, verdict FROM trust_outcomes WHERE ai_step = $1 AND model = $2 AND confidence IS NOT NULL ORDER BY id DESC LIMIT $3)")
                    .bind(ai_step).bind(model).bind(limit.max(1)).fetch_one(read).await?
            }
            Backend::Postgres(ref pool) => {
                sqlx::query_scalar("SELECT string_agg(confidence::text || ':' || (CASE WHEN verdict = 'agree' THEN '1' ELSE '0' END), ',') FROM (SELECT confidence, verdict FROM trust_outcomes WHERE ai_step = $1 AND model = $2 AND confidence IS NOT NULL ORDER BY id DESC LIMIT $3) AS newest")
                    .bind(ai_step).bind(model).bind(limit.max(1)).fetch_one(pool).await?
            }
        };
        let Some(packed) = packed else {
            return Ok(Vec::new());
        };
        Ok(packed
            .split(',')
            .filter_map(|item| {
                let (confidence, agreed) = item.split_once(':')?;
                Some((confidence.parse().ok()?, agreed == "1"))
            })
            .collect())
    }
}
