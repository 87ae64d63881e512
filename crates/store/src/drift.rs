//! Drift monitoring: per-case feature observations, the journal cursor that feeds them, and
//! the stored results of drift tests.
//!
//! - `drift_observations`: one row per (workflow, feature, case): a number, a category, or
//!   neither (the feature's expression failed on that case). The primary key makes recording
//!   idempotent.
//! - `drift_cursor`: the last journal `seq` the observer has read. Observations and the new
//!   cursor are written in one transaction, guarded by the cursor's old value, so two
//!   observers never record the same page twice and a crash loses nothing.
//! - `drift_results`: every test, with its method, parameters and value, and the feature's
//!   alert state after it (`streak`, `streak_to_ms`, `alerting`). A result and its journal
//!   entry are written in one transaction that first reads the previous result of the
//!   feature; [`alert_transition`] decides: `drift.alert` once `persistence` consecutive
//!   drifted results (each over a current window starting at or after the end of the previous
//!   counted one) are in, `drift.recovered` at the first result without drift after an alert.
//!   Each is journaled once per episode.
//! - Retention: `drift_prune_observations` and `drift_prune_results` delete one workflow's rows
//!   older than a cutoff, feature by feature (each feature's rows are one range of the
//!   existing `(workflow, feature, …)` indexes, so no index is added), at most
//!   [`Store::DRIFT_PRUNE_BATCH_ROWS`] per statement. Each statement is its own transaction,
//!   so a large backlog never holds the write lock for long: the group committer's writes go
//!   in between. A feature's latest result is never deleted: it is what the API shows and
//!   what the next result is compared with to decide whether to alert. The `leases` table
//!   keeps when each workflow was last pruned (`drift-retention/<workflow>`), so the engine
//!   prunes at most once per period whichever node holds the drift lease.

use serde::Serialize;
use serde_json::Value;
use sqlx::{QueryBuilder, Row};

use crate::{
    journal_row, Backend, JournalRow, NewEntry, Result, Store, ENTRIES_PER_INSERT, JOURNAL_COLUMNS,
};

/// The journal kinds the observer reads.
const OBSERVED_KINDS: &str = "'case.created', 'ai.proposed'";
/// Observation rows per INSERT statement (6 parameters each).
const OBSERVATIONS_PER_INSERT: usize = 1_000;
/// Most results returned by one listing.
const MAX_RESULTS: i64 = 10_000;
/// Prune statements one call runs at most (ten million observations); the rest waits for the
/// next call.
const MAX_PRUNE_STATEMENTS: usize = 1_000;

/// The next feature (in name order) after `$2` with observations of workflow `$1`: one seek in
/// the primary key, where `SELECT DISTINCT` would read every row.
const NEXT_OBSERVED_FEATURE: &str =
    "SELECT MIN(feature) FROM drift_observations WHERE workflow = $1 AND feature > $2";
/// One batch of observations of workflow `$1`, feature `$2` older than `$3`, at most `$4`,
/// addressed by physical row id (never changed: observations are not updated). PostgreSQL
/// gets `= ANY(ARRAY(…))`, a TID scan; with `IN (…)` it may hash-join a full table scan.
const PRUNE_OBSERVATIONS_SQLITE: &str = "DELETE FROM drift_observations WHERE rowid IN \
     (SELECT rowid FROM drift_observations WHERE workflow = $1 AND feature = $2 AND at_ms < $3 LIMIT $4)";
const PRUNE_OBSERVATIONS_POSTGRES: &str = "DELETE FROM drift_observations WHERE ctid = ANY(ARRAY\
     (SELECT ctid FROM drift_observations WHERE workflow = $1 AND feature = $2 AND at_ms < $3 LIMIT $4))";
/// The same for results, oldest id first, keeping the feature's latest (its largest id).
const NEXT_RESULT_FEATURE: &str =
    "SELECT MIN(feature) FROM drift_results WHERE workflow = $1 AND feature > $2";
const PRUNE_RESULTS_SQLITE: &str = "DELETE FROM drift_results WHERE id IN \
     (SELECT id FROM drift_results WHERE workflow = $1 AND feature = $2 AND evaluated_at_ms < $3 \
     AND id < (SELECT MAX(id) FROM drift_results WHERE workflow = $1 AND feature = $2) ORDER BY id LIMIT $4)";
const PRUNE_RESULTS_POSTGRES: &str = "DELETE FROM drift_results WHERE id = ANY(ARRAY\
     (SELECT id FROM drift_results WHERE workflow = $1 AND feature = $2 AND evaluated_at_ms < $3 \
     AND id < (SELECT MAX(id) FROM drift_results WHERE workflow = $1 AND feature = $2) ORDER BY id LIMIT $4))";

/// One feature's value for one case.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftObservation {
    pub workflow: String,
    pub feature: String,
    pub case_id: String,
    pub at_ms: i64,
    /// A numeric value, or
    pub value_num: Option<f64>,
    /// a categorical one; neither when the expression failed on the case.
    pub value_cat: Option<String>,
}

/// A feature's alert state after one result (kept on the result row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AlertState {
    /// Consecutive drifted results over new current windows (0 after a result without drift).
    pub streak: i64,
    /// Where the current window of the last result counted in `streak` ended; the next counts
    /// only if its current window starts at or after this.
    pub streak_to_ms: Option<i64>,
    /// Whether the feature has alerted and not yet recovered.
    pub alerting: bool,
}

/// What one result does to a feature's alert state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertTransition {
    pub state: AlertState,
    /// Journal `drift.alert`: the streak just reached `persistence`.
    pub alerted: bool,
    /// Journal `drift.recovered`: the first result without drift after an alert.
    pub recovered: bool,
}

/// The alert state after `result`, from the state after the feature's previous result. A
/// result that did not test (`insufficient_data`, `error`) changes nothing; one that tested
/// without drift ends the streak (and recovers an alerting feature); a drifted one extends the
/// streak if its current window is new (starts at or after where the last counted one ended)
/// and alerts when the streak reaches `persistence` (at least 1).
pub fn alert_transition(
    previous: AlertState,
    result: &DriftResultRow,
    persistence: u32,
) -> AlertTransition {
    let unchanged = AlertTransition {
        state: previous,
        alerted: false,
        recovered: false,
    };
    if result.status != "tested" {
        return unchanged;
    }
    if !result.drifted {
        return AlertTransition {
            state: AlertState::default(),
            alerted: false,
            recovered: previous.alerting,
        };
    }
    let new_window = previous
        .streak_to_ms
        .is_none_or(|to_ms| result.current_from_ms >= to_ms);
    if !new_window {
        return unchanged;
    }
    let streak = previous.streak + 1;
    let alerted = !previous.alerting && streak >= i64::from(persistence.max(1));
    AlertTransition {
        state: AlertState {
            streak,
            streak_to_ms: Some(result.current_to_ms),
            alerting: previous.alerting || alerted,
        },
        alerted,
        recovered: false,
    }
}

/// One stored drift test of one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftResultRow {
    /// Increasing: the latest result of a feature has the largest id.
    pub id: i64,
    pub workflow: String,
    pub feature: String,
    pub evaluated_at_ms: i64,
    /// `tested`, `insufficient_data` (fewer than `min_rows` in a window) or `error` (the test
    /// could not run; `parameters.error` says why).
    pub status: String,
    /// `numeric` or `categorical` (none when neither window had a usable value).
    pub kind: Option<String>,
    /// The test (`ks`, `chi_square`, `z_test`, `wasserstein`, `jensen_shannon`, `psi`).
    pub method: Option<String>,
    /// Method-specific detail (statistic, degrees of freedom, binning, ...).
    pub parameters: Value,
    /// The p-value or the distance.
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub drifted: bool,
    /// Whether this result journaled `drift.alert` (the drift persisted long enough).
    pub alerted: bool,
    /// Whether this result journaled `drift.recovered` (no drift after an alert).
    pub recovered: bool,
    /// The feature's alert state after this result.
    #[serde(flatten)]
    pub alert_state: AlertState,
    /// `time` (the windows are spans of time) or `rows` (row counts; the bounds below are the
    /// times of the oldest and newest rows, the current window ending at the evaluation).
    pub windows: String,
    pub reference_rows: i64,
    pub current_rows: i64,
    /// Observations in either window without a usable value (the expression failed, or the
    /// value was of the other kind).
    pub failed_rows: i64,
    pub reference_from_ms: i64,
    pub current_from_ms: i64,
    pub current_to_ms: i64,
}

const RESULT_COLUMNS: &str = "id, workflow, feature, evaluated_at_ms, status, kind, method, parameters, value, threshold, drifted, alerted, recovered, streak, streak_to_ms, alerting, windows, reference_rows, current_rows, failed_rows, reference_from_ms, current_from_ms, current_to_ms";

fn result_from<R: Row>(row: &R) -> Result<DriftResultRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let parameters: String = row.try_get("parameters")?;
    Ok(DriftResultRow {
        id: row.try_get("id")?,
        workflow: row.try_get("workflow")?,
        feature: row.try_get("feature")?,
        evaluated_at_ms: row.try_get("evaluated_at_ms")?,
        status: row.try_get("status")?,
        kind: row.try_get("kind")?,
        method: row.try_get("method")?,
        parameters: serde_json::from_str(&parameters).unwrap_or(Value::Null),
        value: row.try_get("value")?,
        threshold: row.try_get("threshold")?,
        drifted: row.try_get::<i64, _>("drifted")? != 0,
        alerted: row.try_get::<i64, _>("alerted")? != 0,
        recovered: row.try_get::<i64, _>("recovered")? != 0,
        alert_state: AlertState {
            streak: row.try_get("streak")?,
            streak_to_ms: row.try_get("streak_to_ms")?,
            alerting: row.try_get::<i64, _>("alerting")? != 0,
        },
        windows: row.try_get("windows")?,
        reference_rows: row.try_get("reference_rows")?,
        current_rows: row.try_get("current_rows")?,
        failed_rows: row.try_get("failed_rows")?,
        reference_from_ms: row.try_get("reference_from_ms")?,
        current_from_ms: row.try_get("current_from_ms")?,
        current_to_ms: row.try_get("current_to_ms")?,
    })
}

impl Store {
    /// Most rows one drift prune statement deletes.
    pub const DRIFT_PRUNE_BATCH_ROWS: i64 = 10_000;

    /// The last journal `seq` the drift observer has read.
    pub async fn drift_cursor(&self) -> Result<i64> {
        dispatch_read!(self, |pool| {
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM drift_cursor WHERE name = 'observations'")
                    .fetch_optional(pool)
                    .await?;
            Ok(seq.unwrap_or(0))
        })
    }

    /// Up to `limit` `case.created` and `ai.proposed` entries after `after_seq`, oldest first,
    /// and the cursor to move to once they are recorded (past entries of other kinds too).
    pub async fn drift_journal_page(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<(Vec<JournalRow>, i64)> {
        let sql = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal WHERE seq > $1 AND seq <= $2 \
             AND kind IN ({OBSERVED_KINDS}) ORDER BY seq LIMIT $3"
        );
        let limit = limit.clamp(1, 100_000);
        dispatch_read!(self, |pool| {
            let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM journal")
                .fetch_one(pool)
                .await?;
            let last = last.unwrap_or(0).max(after_seq);
            let rows = sqlx::query(&sql)
                .bind(after_seq)
                .bind(last)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let rows: Vec<JournalRow> = rows.iter().map(journal_row).collect::<Result<_>>()?;
            let next = match rows.last() {
                Some(row) if rows.len() as i64 == limit => row.seq,
                _ => last,
            };
            Ok((rows, next))
        })
    }

    /// Records `observations` and moves the cursor from `from_seq` to `to_seq`, in one
    /// transaction; returns false (recording nothing) when the cursor is no longer at
    /// `from_seq` (another observer recorded this page).
    pub async fn drift_record_observations(
        &self,
        from_seq: i64,
        to_seq: i64,
        observations: &[DriftObservation],
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(
                "UPDATE drift_cursor SET seq = $1 WHERE name = 'observations' AND seq = $2",
            )
            .bind(to_seq)
            .bind(from_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for chunk in observations.chunks(OBSERVATIONS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO drift_observations (workflow, feature, case_id, at_ms, value_num, value_cat) ",
                );
                builder.push_values(chunk, |mut row, o| {
                    row.push_bind(&o.workflow)
                        .push_bind(&o.feature)
                        .push_bind(&o.case_id)
                        .push_bind(o.at_ms)
                        .push_bind(o.value_num)
                        .push_bind(&o.value_cat);
                });
                builder.push(" ON CONFLICT (workflow, feature, case_id) DO NOTHING");
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The newest `limit` observations of a feature with `from_ms <= at_ms < to_ms`, newest
    /// first: (number, category); both `None` for a case the expression failed on.
    pub async fn drift_window(
        &self,
        workflow: &str,
        feature: &str,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<(Option<f64>, Option<String>)>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_as(
                "SELECT value_num, value_cat FROM drift_observations \
                 WHERE workflow = $1 AND feature = $2 AND at_ms >= $3 AND at_ms < $4 \
                 ORDER BY at_ms DESC LIMIT $5",
            )
            .bind(workflow)
            .bind(feature)
            .bind(from_ms)
            .bind(to_ms)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?)
        })
    }

    /// The newest `limit` observations of a feature that have a value (row-count windows),
    /// newest first: (at_ms, number, category). Ties in time are ordered by case id.
    pub async fn drift_newest_values(
        &self,
        workflow: &str,
        feature: &str,
        limit: i64,
    ) -> Result<Vec<(i64, Option<f64>, Option<String>)>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_as(
                "SELECT at_ms, value_num, value_cat FROM drift_observations \
                 WHERE workflow = $1 AND feature = $2 AND (value_num IS NOT NULL OR value_cat IS NOT NULL) \
                 ORDER BY at_ms DESC, case_id DESC LIMIT $3",
            )
            .bind(workflow)
            .bind(feature)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?)
        })
    }

    /// Observations of a feature without a value (the expression failed) with
    /// `from_ms <= at_ms < to_ms`.
    pub async fn drift_failed_count(
        &self,
        workflow: &str,
        feature: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM drift_observations WHERE workflow = $1 AND feature = $2 \
                 AND at_ms >= $3 AND at_ms < $4 AND value_num IS NULL AND value_cat IS NULL",
            )
            .bind(workflow)
            .bind(feature)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_one(pool)
            .await?)
        })
    }

    /// Stores `result` (its `id`, `alerted`, `recovered` and `alert_state` are ignored: they
    /// follow from the feature's previous result by [`alert_transition`]) and appends `alert`
    /// or `recovered` when the transition says so, in the same transaction. Returns the stored
    /// row.
    pub async fn drift_insert_result(
        &self,
        result: &DriftResultRow,
        persistence: u32,
        alert: &NewEntry,
        recovered: &NewEntry,
    ) -> Result<DriftResultRow> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                // The journal's lock: serialises this read-then-write with other alerts.
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let previous: Option<(i64, Option<i64>, i64)> = sqlx::query_as(
                "SELECT streak, streak_to_ms, alerting FROM drift_results WHERE workflow = $1 AND feature = $2 ORDER BY id DESC LIMIT 1",
            )
            .bind(&result.workflow)
            .bind(&result.feature)
            .fetch_optional(&mut *tx)
            .await?;
            let previous =
                previous.map_or(AlertState::default(), |(streak, streak_to_ms, alerting)| {
                    AlertState {
                        streak,
                        streak_to_ms,
                        alerting: alerting != 0,
                    }
                });
            let transition = alert_transition(previous, result, persistence);
            let state = transition.state;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO drift_results (workflow, feature, evaluated_at_ms, status, kind, method, parameters, value, threshold, drifted, alerted, reference_rows, current_rows, failed_rows, reference_from_ms, current_from_ms, current_to_ms, recovered, streak, streak_to_ms, alerting, windows) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) RETURNING id",
            )
            .bind(&result.workflow).bind(&result.feature).bind(result.evaluated_at_ms)
            .bind(&result.status).bind(&result.kind).bind(&result.method)
            .bind(result.parameters.to_string()).bind(result.value).bind(result.threshold)
            .bind(i64::from(result.drifted)).bind(i64::from(transition.alerted))
            .bind(result.reference_rows).bind(result.current_rows).bind(result.failed_rows)
            .bind(result.reference_from_ms).bind(result.current_from_ms).bind(result.current_to_ms)
            .bind(i64::from(transition.recovered)).bind(state.streak).bind(state.streak_to_ms)
            .bind(i64::from(state.alerting)).bind(&result.windows)
            .fetch_one(&mut *tx)
            .await?;
            if transition.alerted {
                let entries = [alert];
                insert_entries!(tx, entries);
            }
            if transition.recovered {
                let entries = [recovered];
                insert_entries!(tx, entries);
            }
            tx.commit().await?;
            Ok(DriftResultRow {
                id,
                alerted: transition.alerted,
                recovered: transition.recovered,
                alert_state: state,
                ..result.clone()
            })
        })
    }

    /// The latest result of every feature (of `workflow`, or of every workflow), by workflow
    /// and feature.
    pub async fn drift_latest(&self, workflow: Option<&str>) -> Result<Vec<DriftResultRow>> {
        let sql = format!(
            "SELECT {RESULT_COLUMNS} FROM drift_results WHERE id IN \
             (SELECT MAX(id) FROM drift_results WHERE ($1 IS NULL OR workflow = $1) GROUP BY workflow, feature) \
             ORDER BY workflow, feature LIMIT $2"
        );
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(workflow)
                .bind(MAX_RESULTS)
                .fetch_all(pool)
                .await?
                .iter()
                .map(result_from)
                .collect()
        })
    }

    /// A feature's newest `limit` results, newest first.
    pub async fn drift_history(
        &self,
        workflow: &str,
        feature: &str,
        limit: i64,
    ) -> Result<Vec<DriftResultRow>> {
        let sql = format!(
            "SELECT {RESULT_COLUMNS} FROM drift_results WHERE workflow = $1 AND feature = $2 \
             ORDER BY id DESC LIMIT $3"
        );
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(workflow)
                .bind(feature)
                .bind(limit.clamp(1, MAX_RESULTS))
                .fetch_all(pool)
                .await?
                .iter()
                .map(result_from)
                .collect()
        })
    }

    /// Takes `workflow`'s retention turn for `owner` until `until_ms` if nobody took it, or the
    /// last turn ended before `now_ms`; unlike [`Store::acquire_lease`], the owner of the
    /// current turn does not get it again. Returns whether `owner` should prune now.
    pub async fn drift_retention_due(
        &self,
        workflow: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        let name = format!("drift-retention/{workflow}");
        dispatch!(self, |pool| {
            let affected = sqlx::query(
                "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                 SET owner = excluded.owner, until_ms = excluded.until_ms WHERE leases.until_ms < $4",
            )
            .bind(&name)
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(affected == 1)
        })
    }

    /// Deletes `workflow`'s observations with `at_ms < before_ms`, in statements of at most
    /// [`Store::DRIFT_PRUNE_BATCH_ROWS`]; returns how many it deleted.
    pub async fn drift_prune_observations(&self, workflow: &str, before_ms: i64) -> Result<u64> {
        let delete = match self.backend {
            Backend::Sqlite { .. } => PRUNE_OBSERVATIONS_SQLITE,
            Backend::Postgres(_) => PRUNE_OBSERVATIONS_POSTGRES,
        };
        self.drift_prune(NEXT_OBSERVED_FEATURE, delete, workflow, before_ms)
            .await
    }

    /// Deletes `workflow`'s results evaluated before `before_ms`, except each feature's latest,
    /// in statements of at most [`Store::DRIFT_PRUNE_BATCH_ROWS`]; returns how many it deleted.
    pub async fn drift_prune_results(&self, workflow: &str, before_ms: i64) -> Result<u64> {
        let delete = match self.backend {
            Backend::Sqlite { .. } => PRUNE_RESULTS_SQLITE,
            Backend::Postgres(_) => PRUNE_RESULTS_POSTGRES,
        };
        self.drift_prune(NEXT_RESULT_FEATURE, delete, workflow, before_ms)
            .await
    }

    /// For each feature `next_feature` finds, runs `delete` until a statement deletes less
    /// than a full batch; at most [`MAX_PRUNE_STATEMENTS`] statements in all.
    async fn drift_prune(
        &self,
        next_feature: &str,
        delete: &str,
        workflow: &str,
        before_ms: i64,
    ) -> Result<u64> {
        let mut deleted = 0;
        let mut statements = 0;
        let mut after = String::new();
        while statements < MAX_PRUNE_STATEMENTS {
            let feature: Option<String> =
                dispatch_read!(self, |pool| sqlx::query_scalar(next_feature)
                    .bind(workflow)
                    .bind(&after)
                    .fetch_one(pool)
                    .await?);
            let Some(feature) = feature else {
                break;
            };
            while statements < MAX_PRUNE_STATEMENTS {
                // One statement per pool checkout: other writers take the connection between.
                let batch = dispatch!(self, |pool| sqlx::query(delete)
                    .bind(workflow)
                    .bind(&feature)
                    .bind(before_ms)
                    .bind(Self::DRIFT_PRUNE_BATCH_ROWS)
                    .execute(pool)
                    .await?
                    .rows_affected());
                statements += 1;
                deleted += batch;
                if batch < Self::DRIFT_PRUNE_BATCH_ROWS as u64 {
                    break;
                }
            }
            after = feature;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn result(
        status: &str,
        drifted: bool,
        current_from_ms: i64,
        current_to_ms: i64,
    ) -> DriftResultRow {
        DriftResultRow {
            id: 0,
            workflow: "w".into(),
            feature: "f".into(),
            evaluated_at_ms: current_to_ms,
            status: status.into(),
            kind: None,
            method: None,
            parameters: Value::Null,
            value: None,
            threshold: None,
            drifted,
            alerted: false,
            recovered: false,
            alert_state: AlertState::default(),
            windows: "rows".into(),
            reference_rows: 0,
            current_rows: 0,
            failed_rows: 0,
            reference_from_ms: 0,
            current_from_ms,
            current_to_ms,
        }
    }

    /// Applies `results` in order with persistence 2; returns (alerted, recovered, streak).
    fn run(results: &[DriftResultRow]) -> Vec<(bool, bool, i64)> {
        let mut state = AlertState::default();
        results
            .iter()
            .map(|r| {
                let transition = alert_transition(state, r, 2);
                state = transition.state;
                (transition.alerted, transition.recovered, state.streak)
            })
            .collect()
    }

    #[test]
    fn an_alert_needs_two_drifted_results_over_new_windows_and_recovers_once() {
        let steps = run(&[
            result("tested", true, 0, 100),             // streak 1: no alert yet
            result("tested", true, 50, 150),            // overlaps the counted window: not counted
            result("insufficient_data", false, 0, 160), // no test: changes nothing
            result("tested", true, 100, 200),           // new window: streak 2, alert
            result("tested", true, 200, 300),           // still drifting: no second alert
            result("tested", false, 300, 400),          // recovered, once
            result("tested", false, 400, 500),
            result("tested", true, 500, 600), // a new episode starts from 1
        ]);
        assert_eq!(
            steps,
            vec![
                (false, false, 1),
                (false, false, 1),
                (false, false, 1),
                (true, false, 2),
                (false, false, 3),
                (false, true, 0),
                (false, false, 0),
                (false, false, 1),
            ]
        );
    }

    #[test]
    fn one_drifted_result_between_clean_ones_never_alerts() {
        let steps = run(&[
            result("tested", true, 0, 100),
            result("tested", false, 100, 200),
            result("tested", true, 200, 300),
            result("tested", false, 300, 400),
        ]);
        assert!(steps
            .iter()
            .all(|(alerted, recovered, _)| !alerted && !recovered));
        // Persistence 1 alerts on the first drifted result.
        let first = alert_transition(AlertState::default(), &result("tested", true, 0, 1), 1);
        assert!(first.alerted && first.state.alerting);
    }
}
