//! Drift monitoring at run time, for every workflow whose latest version has a `monitor:`.
//!
//! - **Observations.** The case hot path is untouched: a pass reads the journal after a
//!   durable cursor (`case.created` and `ai.proposed` entries only), evaluates the monitor's
//!   features (input features over the created case's input, step features over the `ai`
//!   step's accepted proposal as `output` and `confidence`) and stores one row per feature per
//!   case, with the cursor, in one transaction. An expression that fails on a case stores a
//!   row without a value: it counts as a failure in the results. Observations start when a
//!   monitor is deployed; entries read before that are not revisited.
//! - **Evaluation** (every `drift_interval` on the holder of the `drift-monitor` lease, and
//!   `Engine::evaluate_drift_once`): per feature, with time windows the newest 100,000 rows of
//!   the reference window (`[now − current − reference, now − current)`) and of the current
//!   one (`[now − current, now]`); with row windows (`{ rows: N }`) the feature's newest
//!   `current` values and the `reference` values before them. Both go to
//!   `keel_tuning::drift::detect` with its calibrated defaults (the test chosen from both
//!   windows' sizes, a 5% false-alarm rate at any sizes) unless the feature names a method or
//!   threshold. Every result is stored; fewer than `min_rows` rows in either window is
//!   `insufficient_data`, never drift.
//! - **Alerts.** A feature alerts once `monitor.persistence` (default 2) consecutive results
//!   drifted, each over a current window that starts at or after the end of the previous
//!   counted one (`keel_store::alert_transition`): `drift.alert` (a workflow-level entry, actor
//!   `system`/`drift-monitor`) is journaled in the same transaction as the result, so webhooks
//!   subscribed to it receive it. With `on_drift: demote`, every operation of the workflow
//!   above phase 1 then moves down one phase (`trust.demoted`, trigger `drift`, the alerting
//!   results as evidence); a single drifted window never demotes. The first result without
//!   drift after an alert journals `drift.recovered`, once.
//! - **Retention.** After its evaluation, at most once per [`RETENTION_PERIOD_MS`] of the
//!   engine clock (the turn is kept in the store, so it holds across nodes and restarts), a
//!   workflow's observations older than `monitor.retention` and its results older than the
//!   results retention are deleted in bounded batches; each feature's latest result stays.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keel_core::case::{millis_to_datetime, CaseState};
use keel_core::expr::Activation;
use keel_core::monitor::{
    Feature, FeatureKind, Monitor, Observation, OnDrift, WindowLength, Windows,
};
use keel_core::workflow::Workflow;
use keel_store::{DriftObservation, DriftResultRow, JournalRow, NewEntry};
use keel_tuning::drift::Method;
use keel_tuning::drift::{detect, Options as DriftOptions, Values};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{canonical_data, rfc3339_ms, Engine, Error, Inner, Result};

/// The actor of drift entries (`drift.alert`, and `trust.demoted` with trigger `drift`).
pub const DRIFT_ACTOR: &str = "drift-monitor";
/// Newest rows read per window per feature.
pub const MAX_WINDOW_ROWS: i64 = 100_000;
/// Results per feature returned as its history.
pub const HISTORY_RESULTS: i64 = 30;
/// Journal entries read per page, and pages per pass (the rest waits for the next pass).
const PAGE_ENTRIES: i64 = 5_000;
const MAX_PAGES_PER_PASS: usize = 200;
/// The lease that picks the one node that evaluates.
const LEASE: &str = "drift-monitor";
/// Least time between two prunings of one workflow's observations and results.
pub const RETENTION_PERIOD_MS: i64 = 3_600_000;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DriftPass {
    /// Monitored workflows.
    pub workflows: usize,
    /// `case.created` and `ai.proposed` entries read.
    pub entries_read: usize,
    /// Observations stored with a value.
    pub observations: usize,
    /// Observations whose expression failed (or gave no usable value).
    pub expression_failures: usize,
    pub features_evaluated: usize,
    /// `workflow/feature` of every new alert.
    pub alerts: Vec<String>,
    /// `workflow/feature` of every feature that recovered from an alert.
    pub recovered: Vec<String>,
    /// Operations demoted by those alerts.
    pub demoted: Vec<String>,
    /// Observations and results deleted by retention.
    pub pruned_observations: u64,
    pub pruned_results: u64,
}

/// A feature as configured, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureConfig {
    pub name: String,
    pub expr: String,
    pub kind: Option<FeatureKind>,
    pub step: Option<String>,
    pub method: Option<String>,
    pub threshold: Option<f64>,
}

impl FeatureConfig {
    fn of(feature: &Feature) -> FeatureConfig {
        FeatureConfig {
            name: feature.name.clone(),
            expr: feature.expr.source().to_string(),
            kind: feature.kind,
            step: feature.step.clone(),
            method: feature.method.map(method_name),
            threshold: feature.threshold,
        }
    }
}

/// A monitor's windows and alert settings, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorConfig {
    /// `{"duration": ms}` or `{"rows": n}`.
    pub reference: WindowLength,
    pub current: WindowLength,
    pub min_rows: u64,
    pub persistence: u32,
    pub on_drift: OnDrift,
}

impl MonitorConfig {
    fn of(monitor: &Monitor) -> MonitorConfig {
        MonitorConfig {
            reference: monitor.reference,
            current: monitor.current,
            min_rows: monitor.min_rows,
            persistence: monitor.persistence,
            on_drift: monitor.on_drift,
        }
    }
}

/// One feature's configuration and its newest results.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureHistory {
    pub workflow: String,
    pub feature: String,
    /// The latest version's monitor (`None` when it has none).
    pub monitor: Option<MonitorConfig>,
    /// `None` when the latest version no longer monitors the feature.
    pub config: Option<FeatureConfig>,
    /// Newest first, at most [`HISTORY_RESULTS`].
    pub results: Vec<DriftResultRow>,
}

fn method_name(method: Method) -> String {
    method.name().to_string()
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let interval = inner.options.drift_interval.max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(interval).await;
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let now = inner.clock.now_ms();
        let hold_ms = i64::try_from(interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        match inner
            .store
            .acquire_lease(
                LEASE,
                &inner.options.node_id,
                now,
                now.saturating_add(hold_ms),
            )
            .await
        {
            Ok(true) => {
                if let Err(error) = evaluate(&inner).await {
                    tracing::warn!(%error, "drift evaluation failed; retrying next interval");
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot take the drift-monitor lease"),
        }
    }
}

/// Every workflow whose latest version has a monitor.
fn monitored(inner: &Inner) -> Vec<(String, Arc<Workflow>)> {
    inner
        .registry
        .list()
        .into_iter()
        .filter_map(|(name, _, _)| inner.registry.latest(&name).map(|(_, w)| (name, w)))
        .filter(|(_, workflow)| workflow.monitor.is_some())
        .collect()
}

pub(crate) async fn evaluate(inner: &Inner) -> Result<DriftPass> {
    let monitored = monitored(inner);
    let mut pass = DriftPass {
        workflows: monitored.len(),
        ..DriftPass::default()
    };
    observe(inner, &monitored, &mut pass).await?;
    let now = inner.clock.now_ms();
    for (name, workflow) in &monitored {
        let Some(monitor) = &workflow.monitor else {
            continue;
        };
        let mut alerted = Vec::new();
        for feature in &monitor.features {
            let result = evaluate_feature(inner, name, monitor, feature, now).await?;
            let alert = drift_entry("drift.alert", monitor, &result);
            let recovered = drift_entry("drift.recovered", monitor, &result);
            let stored = inner
                .store
                .drift_insert_result(&result, monitor.persistence, &alert, &recovered)
                .await?;
            pass.features_evaluated += 1;
            if stored.recovered {
                tracing::info!(workflow = %name, feature = %feature.name, "drift recovered");
                pass.recovered.push(format!("{name}/{}", feature.name));
            }
            if stored.alerted {
                tracing::warn!(workflow = %name, feature = %feature.name, method = ?stored.method, value = ?stored.value, streak = stored.alert_state.streak, "drift alert");
                pass.alerts.push(format!("{name}/{}", feature.name));
                alerted.push(stored);
            }
        }
        if !alerted.is_empty() && monitor.on_drift == OnDrift::Demote {
            demote_workflow(inner, name, &alerted, &mut pass).await?;
        }
        prune(inner, name, monitor, now, &mut pass).await?;
    }
    // A workflow whose latest version dropped its monitor collects nothing more; what it
    // collected ages out under the retention of the last version that monitored it.
    for (name, _, _) in inner.registry.list() {
        if monitored.iter().any(|(m, _)| *m == name) {
            continue;
        }
        if let Some((_, workflow)) = inner.registry.latest_monitored(&name) {
            if let Some(monitor) = &workflow.monitor {
                prune(inner, &name, monitor, now, &mut pass).await?;
            }
        }
    }
    if !pass.alerts.is_empty() || !pass.recovered.is_empty() {
        inner.journal_written.notify_one();
    }
    Ok(pass)
}

/// Reads one feature's windows at `now` and tests them.
async fn evaluate_feature(
    inner: &Inner,
    workflow: &str,
    monitor: &Monitor,
    feature: &Feature,
    now: i64,
) -> Result<DriftResultRow> {
    if let Some(windows) = monitor.windows(now) {
        let reference = inner
            .store
            .drift_window(
                workflow,
                &feature.name,
                windows.reference_from_ms,
                windows.current_from_ms,
                MAX_WINDOW_ROWS,
            )
            .await?;
        let current = inner
            .store
            .drift_window(
                workflow,
                &feature.name,
                windows.current_from_ms,
                windows.current_to_ms.saturating_add(1),
                MAX_WINDOW_ROWS,
            )
            .await?;
        let mut result = assess(workflow, monitor, feature, windows, &reference, &current);
        result.windows = "time".to_string();
        return Ok(result);
    }
    let (reference_rows, current_rows) = monitor.row_windows().unwrap_or((0, 0));
    let limit = i64::try_from(reference_rows.saturating_add(current_rows))
        .unwrap_or(i64::MAX)
        .min(2 * MAX_WINDOW_ROWS);
    let newest = inner
        .store
        .drift_newest_values(workflow, &feature.name, limit)
        .await?;
    let (windows, current, reference) = split_rows(&newest, current_rows, now);
    let failed = inner
        .store
        .drift_failed_count(
            workflow,
            &feature.name,
            windows.reference_from_ms,
            now.saturating_add(1),
        )
        .await?;
    let mut result = assess(workflow, monitor, feature, windows, &reference, &current);
    result.failed_rows += failed;
    result.windows = "rows".to_string();
    Ok(result)
}

/// Row windows: the newest `current_rows` of `newest` (newest first) are the current window,
/// the rest the reference. The bounds are the times of the oldest row of each (the current
/// window ends at `now`); with no rows at all both start at `now`.
fn split_rows(
    newest: &[(i64, Option<f64>, Option<String>)],
    current_rows: u64,
    now: i64,
) -> (Windows, Vec<Row>, Vec<Row>) {
    let split = usize::try_from(current_rows)
        .unwrap_or(usize::MAX)
        .min(newest.len());
    let (current, reference) = newest.split_at(split);
    let rows = |part: &[(i64, Option<f64>, Option<String>)]| -> Vec<Row> {
        part.iter()
            .map(|(_, number, category)| (*number, category.clone()))
            .collect()
    };
    let oldest = |part: &[(i64, Option<f64>, Option<String>)]| part.last().map(|(at, _, _)| *at);
    let current_from_ms = oldest(current).unwrap_or(now);
    let windows = Windows {
        reference_from_ms: oldest(reference).unwrap_or(current_from_ms),
        current_from_ms,
        current_to_ms: now,
    };
    (windows, rows(current), rows(reference))
}

/// Deletes `workflow`'s rows past retention, if its turn is due at `now` (once per
/// [`RETENTION_PERIOD_MS`]). Runs after the evaluation, which therefore never waits for it.
async fn prune(
    inner: &Inner,
    workflow: &str,
    monitor: &Monitor,
    now: i64,
    pass: &mut DriftPass,
) -> Result<()> {
    let due = inner
        .store
        .drift_retention_due(
            workflow,
            &inner.options.node_id,
            now,
            now.saturating_add(RETENTION_PERIOD_MS),
        )
        .await?;
    if !due {
        return Ok(());
    }
    let cutoffs = monitor.retention_cutoffs(now);
    let observations = inner
        .store
        .drift_prune_observations(workflow, cutoffs.observations_before_ms)
        .await?;
    let results = inner
        .store
        .drift_prune_results(workflow, cutoffs.results_before_ms)
        .await?;
    tracing::info!(
        %workflow,
        observations,
        results,
        observations_before = %rfc3339_ms(cutoffs.observations_before_ms),
        results_before = %rfc3339_ms(cutoffs.results_before_ms),
        "drift retention pruned rows"
    );
    pass.pruned_observations += observations;
    pass.pruned_results += results;
    Ok(())
}

// ------------------------------------------------------------------------------ observations

/// Reads the journal after the cursor, page by page, and records observations.
async fn observe(
    inner: &Inner,
    monitored: &[(String, Arc<Workflow>)],
    pass: &mut DriftPass,
) -> Result<()> {
    let monitors: HashMap<&str, &Monitor> = monitored
        .iter()
        .filter_map(|(name, w)| w.monitor.as_ref().map(|m| (name.as_str(), m)))
        .collect();
    for _ in 0..MAX_PAGES_PER_PASS {
        let cursor = inner.store.drift_cursor().await?;
        let (rows, next) = inner.store.drift_journal_page(cursor, PAGE_ENTRIES).await?;
        if next == cursor {
            return Ok(());
        }
        let mut observations = Vec::new();
        for row in &rows {
            observations.extend(observe_entry(inner, &monitors, row).await?);
        }
        if !inner
            .store
            .drift_record_observations(cursor, next, &observations)
            .await?
        {
            // Another pass recorded this page; it goes on from there.
            return Ok(());
        }
        pass.entries_read += rows.len();
        let failures = observations
            .iter()
            .filter(|o| o.value_num.is_none() && o.value_cat.is_none())
            .count();
        pass.expression_failures += failures;
        pass.observations += observations.len() - failures;
    }
    tracing::info!("the drift observer has more journal to read; it continues next pass");
    Ok(())
}

/// The observations one journal entry gives (none for workflows without a monitor).
async fn observe_entry(
    inner: &Inner,
    monitors: &HashMap<&str, &Monitor>,
    row: &JournalRow,
) -> Result<Vec<DriftObservation>> {
    let (Some(workflow), Some(case_id)) = (row.workflow.as_deref(), row.case_id.as_deref()) else {
        return Ok(Vec::new());
    };
    let Some(monitor) = monitors.get(workflow) else {
        return Ok(Vec::new());
    };
    let at_ms = chrono::DateTime::parse_from_rfc3339(&row.at).map_or(0, |t| t.timestamp_millis());
    let data: Value = serde_json::from_str(&row.data).unwrap_or(Value::Null);
    let case = json!({"id": case_id, "workflow": workflow, "version": data["workflow_version"], "created_at_ms": at_ms});
    let seen = Seen {
        workflow,
        case_id,
        at_ms,
    };
    match (row.kind.as_str(), row.step.as_deref()) {
        ("case.created", _) => {
            let features: Vec<&Feature> = monitor.input_features().collect();
            Ok(seen.observe(&features, &data["input"], &json!({}), &case, None))
        }
        ("ai.proposed", Some(step)) => {
            let features: Vec<&Feature> = monitor.step_features(step).collect();
            if features.is_empty() {
                return Ok(Vec::new());
            }
            let state = if features.iter().any(|f| f.reads_case()) {
                case_state(inner, case_id).await?
            } else {
                None
            };
            let (input, case_data, case) = match &state {
                Some(state) => (
                    state.input.clone(),
                    state.data.clone(),
                    json!({"id": state.id, "workflow": state.workflow, "version": state.workflow_version, "created_at_ms": state.created_at_ms}),
                ),
                None => (
                    Value::Null,
                    json!({}),
                    json!({"id": case_id, "workflow": workflow}),
                ),
            };
            Ok(seen.observe(
                &features,
                &input,
                &case_data,
                &case,
                Some(&data["proposal"]),
            ))
        }
        _ => Ok(Vec::new()),
    }
}

/// The case's stored state, if it can be read.
async fn case_state(inner: &Inner, case_id: &str) -> Result<Option<CaseState>> {
    Ok(inner
        .store
        .case(case_id)
        .await?
        .and_then(|row| serde_json::from_str(&row.state).ok()))
}

/// Which case an entry is about, and when.
struct Seen<'a> {
    workflow: &'a str,
    case_id: &'a str,
    at_ms: i64,
}

impl Seen<'_> {
    /// Evaluates `features`; `proposal` (an `ai.proposed` entry's) provides `output` and
    /// `confidence`. Synchronous: the CEL activation never lives across an await.
    fn observe(
        &self,
        features: &[&Feature],
        input: &Value,
        data: &Value,
        case: &Value,
        proposal: Option<&Value>,
    ) -> Vec<DriftObservation> {
        if features.is_empty() {
            return Vec::new();
        }
        let mut activation = Activation::new(input, data, case, millis_to_datetime(self.at_ms));
        if let Some(proposal) = proposal {
            activation.set("output", &proposal["output"]);
            activation.set("confidence", &proposal["confidence"]);
        }
        features
            .iter()
            .map(|feature| {
                let (value_num, value_cat) = match feature.observe(&activation) {
                    Observation::Numeric(x) => (Some(x), None),
                    Observation::Categorical(text) => (None, Some(text)),
                    Observation::Failed(reason) => {
                        tracing::debug!(workflow = self.workflow, feature = %feature.name, case = self.case_id, %reason, "drift feature failed on a case");
                        (None, None)
                    }
                };
                DriftObservation {
                    workflow: self.workflow.to_string(),
                    feature: feature.name.clone(),
                    case_id: self.case_id.to_string(),
                    at_ms: self.at_ms,
                    value_num,
                    value_cat,
                }
            })
            .collect()
    }
}

// -------------------------------------------------------------------------------- evaluation

type Row = (Option<f64>, Option<String>);

/// The kind of the first (oldest) usable row: rows come newest first.
fn infer_kind(reference: &[Row], current: &[Row]) -> Option<FeatureKind> {
    reference
        .iter()
        .rev()
        .chain(current.iter().rev())
        .find_map(|row| match row {
            (Some(_), _) => Some(FeatureKind::Numeric),
            (None, Some(_)) => Some(FeatureKind::Categorical),
            (None, None) => None,
        })
}

/// The sample of `kind` in `rows`, and how many rows had no usable value.
fn sample(kind: FeatureKind, rows: &[Row]) -> (Values, i64) {
    let mut failed = 0;
    match kind {
        FeatureKind::Numeric => {
            let mut values = Vec::with_capacity(rows.len());
            for row in rows {
                match row {
                    (Some(x), _) if x.is_finite() => values.push(*x),
                    _ => failed += 1,
                }
            }
            (Values::Numeric(values), failed)
        }
        FeatureKind::Categorical => {
            let mut values = Vec::with_capacity(rows.len());
            for row in rows {
                match row {
                    (_, Some(text)) => values.push(text.clone()),
                    (Some(x), None) => values.push(x.to_string()),
                    (None, None) => failed += 1,
                }
            }
            (Values::Categorical(values), failed)
        }
    }
}

/// Tests one feature over its two windows (pure: the rows are read by the caller).
fn assess(
    workflow: &str,
    monitor: &Monitor,
    feature: &Feature,
    windows: Windows,
    reference: &[Row],
    current: &[Row],
) -> DriftResultRow {
    let kind = feature.kind.or_else(|| infer_kind(reference, current));
    let mut row = DriftResultRow {
        id: 0,
        workflow: workflow.to_string(),
        feature: feature.name.clone(),
        evaluated_at_ms: windows.current_to_ms,
        status: "insufficient_data".to_string(),
        kind: kind.map(|k| k.as_str().to_string()),
        method: feature.method.map(method_name),
        parameters: json!({}),
        value: None,
        threshold: feature.threshold,
        drifted: false,
        alerted: false,
        recovered: false,
        alert_state: Default::default(),
        windows: "time".to_string(),
        reference_rows: 0,
        current_rows: 0,
        failed_rows: (reference.len() + current.len()) as i64,
        reference_from_ms: windows.reference_from_ms,
        current_from_ms: windows.current_from_ms,
        current_to_ms: windows.current_to_ms,
    };
    let min_rows = monitor.min_rows;
    let Some(kind) = kind else {
        row.parameters =
            json!({"reason": "no usable value in either window", "min_rows": min_rows});
        return row;
    };
    let (reference, reference_failed) = sample(kind, reference);
    let (current, current_failed) = sample(kind, current);
    row.reference_rows = reference.len() as i64;
    row.current_rows = current.len() as i64;
    row.failed_rows = reference_failed + current_failed;
    if (reference.len() as u64) < min_rows || (current.len() as u64) < min_rows {
        row.parameters = json!({
            "reason": format!("fewer than {min_rows} rows in a window: no test"),
            "min_rows": min_rows,
        });
        return row;
    }
    let options = DriftOptions {
        method: feature.method,
        threshold: feature.threshold,
        ..DriftOptions::default()
    };
    match detect(&reference, &current, &options) {
        Ok(result) => {
            row.status = "tested".to_string();
            row.method = Some(method_name(result.method));
            row.parameters = result.parameters;
            row.value = Some(result.value).filter(|v| v.is_finite());
            row.threshold = Some(result.threshold);
            row.drifted = result.drifted;
        }
        Err(error) => {
            row.status = "error".to_string();
            row.parameters = json!({"error": error.to_string()});
        }
    }
    row
}

/// The `drift.alert` or `drift.recovered` entry for `result` (appended only if the store's
/// alert transition says so).
fn drift_entry(kind: &str, monitor: &Monitor, result: &DriftResultRow) -> NewEntry {
    let (data, data_sha256) = canonical_data(&json!({
        "workflow": result.workflow,
        "feature": result.feature,
        "kind": result.kind,
        "method": result.method,
        "parameters": result.parameters,
        "value": result.value,
        "threshold": result.threshold,
        "drifted": result.drifted,
        "on_drift": monitor.on_drift,
        "persistence": monitor.persistence,
        "windows": result.windows,
        "reference": {
            "from": rfc3339_ms(result.reference_from_ms),
            "to": rfc3339_ms(result.current_from_ms),
            "rows": result.reference_rows,
        },
        "current": {
            "from": rfc3339_ms(result.current_from_ms),
            "to": rfc3339_ms(result.current_to_ms),
            "rows": result.current_rows,
        },
        "failed_rows": result.failed_rows,
    }));
    NewEntry {
        at: rfc3339_ms(result.evaluated_at_ms),
        kind: kind.to_string(),
        actor_type: "system".to_string(),
        actor_id: DRIFT_ACTOR.to_string(),
        case_id: None,
        workflow: Some(result.workflow.clone()),
        step: None,
        data,
        data_sha256,
    }
}

/// `on_drift: demote`: every operation of `workflow` above phase 1 goes down one phase.
async fn demote_workflow(
    inner: &Inner,
    workflow: &str,
    alerts: &[DriftResultRow],
    pass: &mut DriftPass,
) -> Result<()> {
    let features: Vec<&str> = alerts.iter().map(|a| a.feature.as_str()).collect();
    let reason = format!("drift in {}", features.join(", "));
    let evidence = json!({ "drift": alerts });
    for row in inner.store.trust_operations().await? {
        if row.workflow != workflow || row.phase <= 1 {
            continue;
        }
        let to = row.phase - 1;
        let took = crate::trust::demote(
            inner,
            &row,
            to,
            "drift",
            DRIFT_ACTOR,
            "system",
            &reason,
            evidence.clone(),
        )
        .await?;
        if took {
            pass.demoted.push(row.operation.clone());
        }
    }
    Ok(())
}

impl Engine {
    /// One observation and evaluation pass now (tests move a `ManualClock` instead of waiting
    /// for `drift_interval`).
    pub async fn evaluate_drift_once(&self) -> Result<DriftPass> {
        evaluate(&self.inner).await
    }

    /// The latest result of every monitored feature, of `workflow` or of all workflows.
    pub async fn drift_results(&self, workflow: Option<&str>) -> Result<Vec<DriftResultRow>> {
        if let Some(name) = workflow {
            if self.inner.registry.latest(name).is_none() {
                return Err(Error::UnknownWorkflow(name.to_string()));
            }
        }
        Ok(self.inner.store.drift_latest(workflow).await?)
    }

    /// One feature's configuration and its newest results; `None` if the workflow neither
    /// monitors the feature nor has results for it.
    pub async fn drift_history(
        &self,
        workflow: &str,
        feature: &str,
    ) -> Result<Option<FeatureHistory>> {
        let Some((_, definition)) = self.inner.registry.latest(workflow) else {
            return Err(Error::UnknownWorkflow(workflow.to_string()));
        };
        let config = definition
            .monitor
            .as_ref()
            .and_then(|m| m.features.iter().find(|f| f.name == feature))
            .map(FeatureConfig::of);
        let results = self
            .inner
            .store
            .drift_history(workflow, feature, HISTORY_RESULTS)
            .await?;
        if config.is_none() && results.is_empty() {
            return Ok(None);
        }
        Ok(Some(FeatureHistory {
            workflow: workflow.to_string(),
            feature: feature.to_string(),
            monitor: definition.monitor.as_ref().map(MonitorConfig::of),
            config,
            results,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_first_usable_row_sets_the_kind_and_the_rest_are_counted() {
        let reference: Vec<Row> = vec![(None, Some("a".into())), (Some(1.0), None), (None, None)];
        assert_eq!(infer_kind(&reference, &[]), Some(FeatureKind::Numeric));
        let (values, failed) = sample(FeatureKind::Numeric, &reference);
        assert_eq!((values.len(), failed), (1, 2));
        let (values, failed) = sample(FeatureKind::Categorical, &reference);
        assert_eq!(values, Values::Categorical(vec!["a".into(), "1".into()]));
        assert_eq!(failed, 1);
        assert_eq!(infer_kind(&[(None, None)], &[]), None);
    }
}
