//! Progressive trust at run time: each operation's phase (the `TrustBook` every case run
//! reads), change control at deploy, the evaluation that recommends promotions and demotes
//! on evidence, governors' decisions, and post-hoc reviews.
//!
//! - **Phases** live in `trust_operations`; this node keeps a copy (`TrustBook`) that every
//!   change made here updates at once and every evaluation pass reloads (other nodes).
//! - **Change control**: deploying a version whose operation changed (its policy, hard
//!   limits or starting phase, or the prompt, system prompt, route or labels of an `ai` step it
//!   uses) moves the operation to its `changed_version_phase` (default one phase down), with a
//!   `trust.demoted` entry (trigger `change`) naming the version's author and approver.
//! - **Evaluation** (every `trust_interval`, and `Engine::evaluate_trust_once`): per operation,
//!   the reviews in the promotion window and those since the last promotion go to
//!   `keel_tuning::trust::evaluate`; a promotion becomes an open recommendation with its
//!   evidence (`trust.recommended`), a demotion happens at once (`trust.demoted`, trigger
//!   `sprt`).
//! - **Critical exceptions** (`trust.critical`) are checked in every pass, and also as soon as
//!   the committer commits an exception (it wakes `run_critical`) or a post-hoc review is
//!   corrected: demotion to phase 1 does not wait for the next pass.
//! - **Governors** approve or decline a recommendation (not the author of the version), or
//!   demote by hand; each is a journaled event carrying the evidence.
//! - **Post-hoc reviews** of auto-approved actions are tasks of kind `review` that do not
//!   hold a case: deciding one records `outcome.reviewed` (source `post`); a corrected or
//!   rejected action raises a `wrong_action` exception for remediation, and a rejected one is
//!   critical: the operation goes back to phase 1 at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_core::gate::TaskDecision;
use keel_core::trust::{ChangedVersionPhase, EvidenceWindow, Phases, TrustConfig};
use keel_core::workflow::{StepKind, Workflow};
use keel_store::{NewEntry, PhaseChange, RecommendationRow, TrustOperationRow};
use serde_json::{json, Value};

use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, Engine, Error, Inner, Result};

/// Most outcomes read per operation per evaluation.
const MAX_OUTCOMES: i64 = 1_000_000;
/// Calibrators are refitted at most this often by the background pass.
const REFIT_INTERVAL_MS: i64 = 5 * 60_000;
/// The actor of the evaluator's own entries.
pub const TRUST_ACTOR: &str = "trust-evaluator";

/// This node's copy of every operation's phase: workflow → (step → phase).
#[derive(Debug, Default)]
pub(crate) struct TrustBook {
    phases: RwLock<HashMap<String, Phases>>,
}

impl TrustBook {
    pub(crate) fn phases(&self, workflow: &str) -> Phases {
        self.phases
            .read()
            .map(|map| map.get(workflow).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn set(&self, workflow: &str, step: &str, phase: i64) {
        if let Ok(mut map) = self.phases.write() {
            let phase = u8::try_from(phase.clamp(1, 4)).unwrap_or(1);
            map.entry(workflow.to_string())
                .or_default()
                .insert(step.to_string(), phase);
        }
    }

    fn replace(&self, rows: &[TrustOperationRow]) {
        let mut fresh: HashMap<String, Phases> = HashMap::new();
        for row in rows {
            let phase = u8::try_from(row.phase.clamp(1, 4)).unwrap_or(1);
            fresh
                .entry(row.workflow.clone())
                .or_default()
                .insert(row.step.clone(), phase);
        }
        if let Ok(mut map) = self.phases.write() {
            *map = fresh;
        }
    }
}

pub(crate) async fn load(inner: &Inner) -> Result<()> {
    let rows = inner.store.trust_operations().await?;
    inner.trust.replace(&rows);
    Ok(())
}

/// What one evaluation pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrustPass {
    pub operations: usize,
    pub outcomes_read: usize,
    pub recommended: Vec<String>,
    pub demoted: Vec<String>,
    pub calibrators_fitted: usize,
}

/// One operation as shown by `keel trust`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OperationView {
    #[serde(flatten)]
    pub row: TrustOperationRow,
    pub reviews_in_window: u64,
    pub agreements_in_window: u64,
    pub wilson_low: f64,
    pub wilson_high: f64,
    /// The agreement needed to enter the next phase (none in phase 4).
    pub next_target: Option<f64>,
    pub min_reviews: u64,
    pub open_recommendation: Option<RecommendationRow>,
}

/// How long the loop lets a burst of raised exceptions gather before it checks them.
const CRITICAL_DEBOUNCE: Duration = Duration::from_millis(50);

pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.options.trust_interval.max(Duration::from_millis(250))).await;
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = evaluate(&inner).await {
            tracing::warn!(%error, "trust evaluation failed; retrying");
        }
        // People's decisions teach the learners; challengers are tested.
        let engine = Engine {
            inner: inner.clone(),
            tasks: Arc::default(),
        };
        if let Err(error) = engine.learn_once().await {
            tracing::warn!(%error, "learning from reviews failed; retrying");
        }
        // Calibrators change slowly; refitting looks over every review, so at most every
        // `REFIT_INTERVAL_MS`.
        let now = inner.clock.now_ms();
        let last = inner.last_refit_ms.load(Ordering::Relaxed);
        if now - last >= REFIT_INTERVAL_MS {
            inner.last_refit_ms.store(now, Ordering::Relaxed);
            if let Err(error) = crate::calibration::refit(&inner).await {
                tracing::warn!(%error, "calibrator refit failed; retrying later");
            }
        }
    }
}

/// Checks `trust.critical` whenever a committed write raised an exception, in its own task so
/// that a long evaluation pass or calibrator refit never delays a demotion. Running beside a
/// pass's own check is safe: only exceptions raised after an operation's last phase change
/// count, and a phase change applies only from the phase it was decided in.
pub(crate) async fn run_critical(inner: Arc<Inner>) {
    loop {
        inner.exception_raised.notified().await;
        // Let a burst gather: one check reads all of it.
        tokio::time::sleep(CRITICAL_DEBOUNCE).await;
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = check_critical(&inner).await {
            tracing::warn!(%error, "critical-exception check failed; the next pass retries");
        }
    }
}

/// The critical-exception check alone, outside a full pass: demotes (to phase 1) every
/// operation with a `trust.critical` exception not yet seen. Returns the operations demoted.
pub(crate) async fn check_critical(inner: &Inner) -> Result<Vec<String>> {
    let rows = inner.store.trust_operations().await?;
    let now = inner.clock.now_ms();
    let demoted = critical_exceptions(inner, &rows, now).await?;
    if !demoted.is_empty() {
        inner.trust.replace(&inner.store.trust_operations().await?);
    }
    Ok(demoted)
}

/// The operations of `workflow`: its actions and ends that AI output influences (and that
/// are not declared ungated), with their configuration.
fn operations(workflow: &Workflow) -> Vec<(String, &TrustConfig, Vec<String>)> {
    workflow
        .steps
        .iter()
        .filter_map(|step| {
            let operation = step.operation()?;
            Some((step.id.clone(), operation.trust, operation.uses_ai.to_vec()))
        })
        .collect()
}

fn trust_config<'w>(workflow: &'w Workflow, step: &str) -> Option<&'w TrustConfig> {
    workflow
        .steps
        .iter()
        .find(|s| s.id == step)
        .and_then(|s| s.gate_parts())
        .map(|parts| parts.trust)
}

/// SHA-256 of what change control compares for one operation.
fn config_sha256(workflow: &Workflow, config: &TrustConfig, ai_steps: &[String]) -> String {
    let ai: Vec<Value> = ai_steps
        .iter()
        .filter_map(|id| workflow.steps.iter().find(|s| &s.id == id))
        .filter_map(|step| match &step.kind {
            StepKind::Ai(ai) => Some(json!({
                "step": step.id, "task": ai.task.keyword(), "prompt": ai.prompt.sha256,
                "system": ai.system.as_ref().map(|p| p.sha256.clone()),
                "route": ai.route.iter().map(|t| json!([t.model, t.accept_when.as_ref().map(|e| e.source())])).collect::<Vec<_>>(),
                "output_schema": ai.output_schema.json().to_string(),
            })),
            _ => None,
        })
        .collect();
    let (_, sha) = canonical_data(&json!({ "trust": config.fingerprint(), "ai": ai }));
    sha
}

/// The parts of one operation that change control compares, by name: what a change to it
/// is called in `workflow.deployed` and `workflow.approved`.
fn operation_parts(
    workflow: &Workflow,
    config: &TrustConfig,
    ai_steps: &[String],
) -> std::collections::BTreeMap<&'static str, Value> {
    let mut parts = std::collections::BTreeMap::new();
    let fingerprint = config.fingerprint();
    parts.insert("policy", fingerprint["policy"].clone());
    parts.insert("hard_limits", fingerprint["hard_limits"].clone());
    parts.insert("starting_phase", fingerprint["phase"].clone());
    parts.insert(
        "trust_settings",
        json!({
            "review_rates": serde_json::to_value(config.review_rates).unwrap_or(Value::Null),
            "promotion": serde_json::to_value(config.promotion).unwrap_or(Value::Null),
            "demotion": serde_json::to_value(config.demotion).unwrap_or(Value::Null),
            "approvers": config.approvers,
            "critical": config.critical.as_ref().map(|e| e.source()),
        }),
    );
    let mut prompt = Vec::new();
    let mut system = Vec::new();
    let mut route = Vec::new();
    let mut output = Vec::new();
    for step in ai_steps
        .iter()
        .filter_map(|id| workflow.steps.iter().find(|s| &s.id == id))
    {
        if let StepKind::Ai(ai) = &step.kind {
            prompt.push(json!([step.id, ai.prompt.sha256]));
            system.push(json!([
                step.id,
                ai.system.as_ref().map(|p| p.sha256.clone())
            ]));
            route.push(json!([
                step.id,
                ai.route
                    .iter()
                    .map(|t| json!([t.model, t.accept_when.as_ref().map(|e| e.source())]))
                    .collect::<Vec<_>>()
            ]));
            output.push(json!([
                step.id,
                ai.task.keyword(),
                ai.output_schema.json().to_string()
            ]));
        }
    }
    parts.insert("ai_steps", json!(ai_steps));
    parts.insert("prompt", json!(prompt));
    parts.insert("system_prompt", json!(system));
    parts.insert("route", json!(route));
    parts.insert("output_schema", json!(output));
    parts
}

/// What a new version changes in what decides, per operation, against the version serving
/// now (`None`: the first version): `[{operation, what: [part, …]}]`. An operation that is
/// new counts only when it starts above phase 1 (a person approves everything in phase 1);
/// one that is no longer an operation (ungated, or no longer using AI) counts as `removed`.
pub(crate) fn operation_changes(serving: Option<&Workflow>, new: &Workflow) -> Vec<Value> {
    let old_ops: HashMap<String, (&TrustConfig, Vec<String>)> = serving
        .map(|w| {
            operations(w)
                .into_iter()
                .map(|(step, config, ai)| (step, (config, ai)))
                .collect()
        })
        .unwrap_or_default();
    let mut changes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (step, config, ai_steps) in operations(new) {
        let operation = format!("{}/{step}", new.name);
        let new_parts = operation_parts(new, config, &ai_steps);
        let what: Vec<&str> = match (serving, old_ops.get(&step)) {
            (Some(old_workflow), Some((old_config, old_ai))) => {
                let old_parts = operation_parts(old_workflow, old_config, old_ai);
                new_parts
                    .iter()
                    .filter(|(part, value)| old_parts.get(*part) != Some(value))
                    .map(|(part, _)| *part)
                    .collect()
            }
            _ if config.phase > 1 => vec!["new_operation_above_phase_1"],
            _ => Vec::new(),
        };
        seen.insert(step.clone());
        if !what.is_empty() {
            changes.push(json!({ "operation": operation, "what": what }));
        }
    }
    if let Some(old_workflow) = serving {
        for step in old_ops.keys().filter(|step| !seen.contains(*step)) {
            changes.push(json!({ "operation": format!("{}/{step}", old_workflow.name), "what": ["removed"] }));
        }
    }
    changes.sort_by(|a, b| a["operation"].as_str().cmp(&b["operation"].as_str()));
    changes
}

fn entry(
    inner: &Inner,
    kind: &str,
    actor_type: &str,
    actor_id: &str,
    workflow: &str,
    step: &str,
    data: Value,
) -> NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: rfc3339_ms(inner.clock.now_ms()),
        kind: kind.to_string(),
        actor_type: actor_type.to_string(),
        actor_id: actor_id.to_string(),
        case_id: None,
        workflow: Some(workflow.to_string()),
        step: Some(step.to_string()),
        data,
        data_sha256,
    }
}

/// Change control for the latest version of `name`: creates new operations at their
/// starting phase and moves changed ones to their `changed_version_phase`.
/// `approver` is the governor who approved the version in Keel (`None`: it needed no
/// approval, or the deployment does not require review).
pub(crate) async fn on_deploy(inner: &Inner, name: &str, approver: Option<&str>) -> Result<()> {
    let Some((version, workflow)) = inner.registry.latest(name) else {
        return Ok(());
    };
    let now = inner.clock.now_ms();
    for (step, config, ai_steps) in operations(&workflow) {
        let operation = format!("{name}/{step}");
        let sha = config_sha256(&workflow, config, &ai_steps);
        let existing = inner.store.trust_operation(&operation).await?;
        let author = workflow.change.as_ref().map(|c| c.author.clone());
        let approver = approver.map(str::to_string);
        let reference = workflow.change.as_ref().and_then(|c| c.reference.clone());
        match existing {
            None => {
                let change = PhaseChange {
                    operation: operation.clone(),
                    workflow: name.to_string(),
                    step: step.clone(),
                    expected: None,
                    phase: i64::from(config.phase),
                    at_ms: now,
                    promoted: false,
                    workflow_version: Some(version),
                    config_sha256: Some(sha.clone()),
                };
                let data = json!({ "operation": operation, "phase": config.phase, "version": version,
                    "config_sha256": sha, "author": author, "approved_by": approver, "reference": reference });
                let e = entry(
                    inner,
                    "trust.initialised",
                    "system",
                    TRUST_ACTOR,
                    name,
                    &step,
                    data,
                );
                if inner.store.trust_set_phase(&change, &e).await? {
                    inner.trust.set(name, &step, i64::from(config.phase));
                }
            }
            Some(row) if row.config_sha256.as_deref() == Some(sha.as_str()) => {
                inner
                    .store
                    .trust_note_version(&operation, version, &sha)
                    .await?;
            }
            Some(row) => {
                let to = match config.changed_version_phase {
                    ChangedVersionPhase::Down => (row.phase - 1).max(1),
                    ChangedVersionPhase::Phase(p) => i64::from(p).min(row.phase),
                };
                let change = PhaseChange {
                    operation: operation.clone(),
                    workflow: name.to_string(),
                    step: step.clone(),
                    expected: Some(row.phase),
                    phase: to,
                    at_ms: now,
                    promoted: false,
                    workflow_version: Some(version),
                    config_sha256: Some(sha.clone()),
                };
                let data = json!({ "operation": operation, "from_phase": row.phase, "to_phase": to,
                    "trigger": "change", "version": version, "previous_version": row.workflow_version,
                    "config_sha256": sha, "previous_config_sha256": row.config_sha256,
                    "author": author, "approved_by": approver, "reference": reference,
                    "reason": "a new version changed the operation's prompt, route, policy or hard limits" });
                let e = entry(
                    inner,
                    "trust.demoted",
                    "system",
                    TRUST_ACTOR,
                    name,
                    &step,
                    data,
                );
                if inner.store.trust_set_phase(&change, &e).await? {
                    inner.trust.set(name, &step, to);
                }
            }
        }
    }
    inner.journal_written.notify_one();
    Ok(())
}

/// One operation's reviews as this node keeps them between passes: in time order from
/// `from_ms` on, and the last review id read.
#[derive(Debug, Default)]
pub(crate) struct CachedEvidence {
    from_ms: i64,
    last_id: i64,
    outcomes: Vec<keel_tuning::trust::Outcome>,
}

/// Brings the operation's cached reviews up to date from `from_ms` on: only those written
/// since the last pass are read (reviews are append-only and numbered in commit order: every
/// writer holds the journal's lock on PostgreSQL, and SQLite has one writer).
async fn refresh_evidence(
    inner: &Inner,
    entry: &mut CachedEvidence,
    operation: &str,
    from_ms: i64,
) -> Result<()> {
    if from_ms < entry.from_ms || entry.last_id == 0 {
        // Older evidence is needed than is kept (or nothing is): read it all again.
        *entry = CachedEvidence {
            from_ms,
            last_id: 0,
            outcomes: Vec::new(),
        };
    }
    let fresh = inner
        .store
        .trust_evidence_after(operation, entry.last_id, from_ms)
        .await?;
    let mut sorted = true;
    for (id, at_ms, agreed) in fresh {
        entry.last_id = entry.last_id.max(id);
        sorted &= entry.outcomes.last().is_none_or(|last| last.at_ms <= at_ms);
        entry
            .outcomes
            .push(keel_tuning::trust::Outcome { at_ms, agreed });
    }
    if !sorted {
        entry.outcomes.sort_by_key(|o| o.at_ms);
    }
    let keep = entry.outcomes.partition_point(|o| o.at_ms < from_ms);
    entry.outcomes.drain(..keep);
    entry.from_ms = from_ms;
    if entry.last_id == 0 {
        // Nothing recorded yet: mark the read so the next pass does not start over.
        entry.last_id = -1;
    }
    Ok(())
}

/// Calls `f` with the reviews in the promotion window and those since the last promotion (or
/// phase change), as the statistics see them. With a time window both are suffixes of the
/// operation's cached reviews, so nothing is copied; a count window is read from the store.
async fn with_evidence<R>(
    inner: &Inner,
    row: &TrustOperationRow,
    config: &TrustConfig,
    now: i64,
    f: impl FnOnce(&[keel_tuning::trust::Outcome], &[keel_tuning::trust::Outcome]) -> R,
) -> Result<R> {
    let since = row.promoted_at_ms.unwrap_or(row.since_ms).max(row.since_ms);
    let outcome = |(at_ms, agreed): (i64, bool)| keel_tuning::trust::Outcome { at_ms, agreed };
    match config.promotion.window {
        EvidenceWindow::Milliseconds(ms) => {
            let window_start = now.saturating_sub(ms);
            let mut cache = inner.evidence.lock().await;
            let entry = cache.entry(row.operation.clone()).or_default();
            refresh_evidence(inner, entry, &row.operation, window_start.min(since)).await?;
            let all = &entry.outcomes;
            let window = &all[all.partition_point(|o| o.at_ms < window_start)..];
            let since_rows = &all[all.partition_point(|o| o.at_ms < since)..];
            Ok(f(window, since_rows))
        }
        EvidenceWindow::Count(n) => {
            let newest = i64::try_from(n).unwrap_or(MAX_OUTCOMES);
            let window: Vec<_> = inner
                .store
                .trust_evidence(&row.operation, 0, i64::MAX, Some(newest))
                .await?
                .into_iter()
                .map(outcome)
                .collect();
            let since_rows: Vec<_> = inner
                .store
                .trust_evidence(&row.operation, since, i64::MAX, None)
                .await?
                .into_iter()
                .map(outcome)
                .collect();
            Ok(f(&window, &since_rows))
        }
    }
}

fn criteria(config: &TrustConfig, phase: i64) -> Result<keel_tuning::trust::PhaseCriteria> {
    let target = config
        .promotion
        .target_agreement
        .to_enter(u8::try_from(phase + 1).unwrap_or(4))
        .unwrap_or(config.promotion.target_agreement.phase4);
    let window = match config.promotion.window {
        EvidenceWindow::Milliseconds(ms) => keel_tuning::trust::Window::Milliseconds(ms),
        EvidenceWindow::Count(n) => keel_tuning::trust::Window::Count(n),
    };
    keel_tuning::trust::PhaseCriteria::new(config.promotion.min_reviews, target, window)
        .map_err(|e| Error::InvalidRequest(format!("promotion criteria: {e}")))
}

fn demotion(config: &TrustConfig) -> Result<keel_tuning::trust::DemotionParams> {
    let d = config.demotion;
    keel_tuning::trust::DemotionParams::new(d.target_error_rate, None, d.alpha, d.beta)
        .map_err(|e| Error::InvalidRequest(format!("demotion parameters: {e}")))
}

/// One evaluation pass over every operation.
pub(crate) async fn evaluate(inner: &Inner) -> Result<TrustPass> {
    let mut rows = inner.store.trust_operations().await?;
    inner.trust.replace(&rows);
    let now = inner.clock.now_ms();
    let mut pass = TrustPass {
        demoted: critical_exceptions(inner, &rows, now).await?,
        ..TrustPass::default()
    };
    if !pass.demoted.is_empty() {
        rows = inner.store.trust_operations().await?;
        inner.trust.replace(&rows);
    }
    // One read for every open recommendation, so that a pass does not ask the writer about
    // each operation that already has one.
    let open: std::collections::HashSet<String> = inner
        .store
        .trust_recommendations(Some("open"), None)
        .await?
        .into_iter()
        .filter(|r| {
            rows.iter()
                .any(|row| row.operation == r.operation && row.phase == r.from_phase)
        })
        .map(|r| r.operation)
        .collect();
    for row in rows.iter().cloned() {
        let Some((_, workflow)) = inner.registry.latest(&row.workflow) else {
            continue;
        };
        let Some(config) = trust_config(&workflow, &row.step) else {
            continue;
        };
        pass.operations += 1;
        let phase =
            keel_tuning::trust::Phase::new(u8::try_from(row.phase.clamp(1, 4)).unwrap_or(1))
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let (criteria, demotion) = (criteria(config, row.phase)?, demotion(config)?);
        let (read, evaluation) = with_evidence(inner, &row, config, now, |window, since| {
            (
                window.len().max(since.len()),
                keel_tuning::trust::evaluate(phase, now, window, since, &criteria, &demotion),
            )
        })
        .await?;
        pass.outcomes_read += read;
        let evaluation = evaluation.map_err(|e| {
            Error::InvalidRequest(format!("trust evaluation of {}: {e}", row.operation))
        })?;
        if let Some(evidence) = evaluation.demote.filter(|_| row.phase > 1) {
            let evidence = serde_json::to_value(evidence).unwrap_or(Value::Null);
            if demote(
                inner,
                &row,
                row.phase - 1,
                "sprt",
                TRUST_ACTOR,
                "system",
                "the sequential test rejected the target error rate",
                evidence,
            )
            .await?
            {
                pass.demoted.push(row.operation.clone());
            }
            continue;
        }
        if let Some(evidence) = evaluation
            .recommend_promotion
            .filter(|_| row.phase < 4 && !open.contains(&row.operation))
        {
            let evidence = serde_json::to_value(evidence).unwrap_or(Value::Null);
            let recommendation = RecommendationRow {
                id: format!(
                    "{}.{}.{}",
                    row.operation.replace('/', "."),
                    row.phase + 1,
                    now
                ),
                operation: row.operation.clone(),
                from_phase: row.phase,
                to_phase: row.phase + 1,
                status: "open".into(),
                created_at_ms: now,
                decided_at_ms: None,
                decided_by: None,
                evidence: evidence.clone(),
            };
            let data = json!({ "operation": row.operation, "recommendation_id": recommendation.id,
                "from_phase": row.phase, "to_phase": row.phase + 1, "evidence": evidence });
            let e = entry(
                inner,
                "trust.recommended",
                "system",
                TRUST_ACTOR,
                &row.workflow,
                &row.step,
                data,
            );
            if inner.store.trust_recommend(&recommendation, &e).await? {
                pass.recommended.push(row.operation.clone());
            }
        }
    }
    if !pass.recommended.is_empty() || !pass.demoted.is_empty() {
        inner.journal_written.notify_one();
    }
    Ok(pass)
}

/// Exceptions read per page by the critical-exception check.
const CRITICAL_PAGE: i64 = 5_000;
/// Exceptions are re-read this far back on each pass: one committed late, with an earlier
/// raise time, is still seen (demotion is idempotent: only exceptions raised after the
/// operation's last phase change count).
const CRITICAL_OVERLAP_MS: i64 = 60_000;

/// Demotes to phase 1 every operation above it with a critical exception (`trust.critical`)
/// raised since its last phase change, at its action step or one of its `ai` steps. Reads
/// only exceptions raised since the last pass (after a start: since the oldest phase change
/// of an operation that has a `critical` condition).
async fn critical_exceptions(
    inner: &Inner,
    rows: &[TrustOperationRow],
    now: i64,
) -> Result<Vec<String>> {
    let mut watched = Vec::new();
    for row in rows.iter().filter(|r| r.phase > 1) {
        let Some((_, workflow)) = inner.registry.latest(&row.workflow) else {
            continue;
        };
        let Some(critical) = trust_config(&workflow, &row.step).and_then(|c| c.critical.clone())
        else {
            continue;
        };
        let steps: Vec<String> = operations(&workflow)
            .into_iter()
            .find(|(step, _, _)| *step == row.step)
            .map(|(_, _, ai_steps)| ai_steps)
            .unwrap_or_default();
        watched.push((row, critical, steps));
    }
    let checked = inner.critical_checked_ms.load(Ordering::Relaxed);
    if watched.is_empty() {
        inner
            .critical_checked_ms
            .store(now.max(checked), Ordering::Relaxed);
        return Ok(Vec::new());
    }
    let oldest_change = watched
        .iter()
        .map(|(r, _, _)| r.since_ms)
        .min()
        .unwrap_or(now);
    let mut from = if checked == i64::MIN {
        oldest_change
    } else {
        oldest_change.max(checked.saturating_sub(CRITICAL_OVERLAP_MS))
    };
    let mut demoted = Vec::new();
    let utc = keel_core::case::millis_to_datetime(now);
    loop {
        let page = inner
            .store
            .exceptions_raised_since(from, CRITICAL_PAGE)
            .await?;
        for exception in &page {
            let Some(step) = exception.step.as_deref() else {
                continue;
            };
            for (row, critical, ai_steps) in &watched {
                let ours = exception.workflow == row.workflow
                    && (step == row.step || ai_steps.iter().any(|s| s == step));
                if !ours
                    || exception.raised_at_ms < row.since_ms
                    || demoted.contains(&row.operation)
                {
                    continue;
                }
                let value = json!({ "id": exception.id, "case_id": exception.case_id,
                    "workflow": exception.workflow, "step": exception.step, "kind": exception.kind,
                    "message": exception.message, "fingerprint": exception.fingerprint,
                    "detail": exception.detail });
                let mut activation =
                    keel_core::expr::Activation::new(&Value::Null, &Value::Null, &Value::Null, utc);
                activation.set("exception", &value);
                match critical.eval_bool(&activation) {
                    Ok(true) => {
                        let reason = format!(
                            "exception {} ({}) is critical by the operation's `trust.critical`: {}",
                            exception.id,
                            exception.kind,
                            critical.source()
                        );
                        let evidence = json!({ "exception_id": exception.id, "kind": exception.kind,
                            "case_id": exception.case_id, "step": exception.step,
                            "condition": critical.source() });
                        if demote(
                            inner,
                            row,
                            1,
                            "critical_exception",
                            TRUST_ACTOR,
                            "system",
                            &reason,
                            evidence,
                        )
                        .await?
                        {
                            demoted.push(row.operation.clone());
                        }
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(operation = %row.operation,
                        exception = %exception.id, error = %error.message,
                        "`trust.critical` failed to evaluate; the exception is not treated as critical"),
                }
            }
        }
        let full = page.len() as i64 >= CRITICAL_PAGE;
        match page.last() {
            // A full page of one millisecond would never advance: move past it.
            Some(last) if full => {
                from = if last.raised_at_ms > from {
                    last.raised_at_ms
                } else {
                    from + 1
                }
            }
            _ => break,
        }
    }
    inner
        .critical_checked_ms
        .store(now.max(checked), Ordering::Relaxed);
    Ok(demoted)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn demote(
    inner: &Inner,
    row: &TrustOperationRow,
    to: i64,
    trigger: &str,
    actor_id: &str,
    actor_type: &str,
    reason: &str,
    evidence: Value,
) -> Result<bool> {
    let retro = crate::retro::plan(inner, row).await?;
    let change = PhaseChange {
        operation: row.operation.clone(),
        workflow: row.workflow.clone(),
        step: row.step.clone(),
        expected: Some(row.phase),
        phase: to,
        at_ms: inner.clock.now_ms(),
        promoted: false,
        workflow_version: None,
        config_sha256: None,
    };
    let opened = retro.entries.len();
    let data = json!({ "operation": row.operation, "from_phase": row.phase, "to_phase": to,
        "trigger": trigger, "by": actor_id, "reason": reason, "evidence": evidence,
        "retro_reviews": opened, "retro_reviews_not_opened": retro.found - opened,
        "since": rfc3339_ms(retro.since_ms) });
    let e = entry(
        inner,
        "trust.demoted",
        actor_type,
        actor_id,
        &row.workflow,
        &row.step,
        data,
    );
    let mut entries = Vec::with_capacity(1 + opened);
    entries.push(e);
    entries.extend(retro.entries);
    let took = inner.store.trust_set_phase_with(&change, &entries).await?;
    if took {
        inner.trust.set(&row.workflow, &row.step, to);
        tracing::warn!(operation = %row.operation, from = row.phase, to, trigger, retro_reviews = opened, "trust withdrawn");
    }
    Ok(took)
}

/// Why a governor's trust action was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustError {
    #[error("no operation `{0}`; `keel trust` lists them (WORKFLOW/STEP)")]
    UnknownOperation(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a governor's action did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrustChanged {
    pub operation: String,
    pub from_phase: i64,
    pub to_phase: i64,
    pub action: String,
}

impl Engine {
    /// Runs one trust evaluation pass now, and refits calibrators.
    pub async fn evaluate_trust_once(&self) -> Result<TrustPass> {
        let mut pass = evaluate(&self.inner).await?;
        pass.calibrators_fitted = crate::calibration::refit(&self.inner).await?;
        Ok(pass)
    }

    /// Runs one trust evaluation pass now, without refitting calibrators.
    pub async fn evaluate_trust_only(&self) -> Result<TrustPass> {
        evaluate(&self.inner).await
    }

    /// Every operation with its evidence in the current window.
    pub async fn trust_operations(&self) -> Result<Vec<OperationView>> {
        let rows = self.inner.store.trust_operations().await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(view) = self.operation_view(row).await? {
                views.push(view);
            }
        }
        Ok(views)
    }

    /// One operation with its evidence.
    pub async fn trust_operation(&self, operation: &str) -> Result<Option<OperationView>> {
        match self.inner.store.trust_operation(operation).await? {
            Some(row) => self.operation_view(row).await,
            None => Ok(None),
        }
    }

    async fn operation_view(&self, row: TrustOperationRow) -> Result<Option<OperationView>> {
        let Some((_, workflow)) = self.inner.registry.latest(&row.workflow) else {
            return Ok(None);
        };
        let Some(config) = trust_config(&workflow, &row.step) else {
            return Ok(None);
        };
        let now = self.inner.clock.now_ms();
        let (reviews, agreements) = with_evidence(&self.inner, &row, config, now, |window, _| {
            (
                window.len() as u64,
                window.iter().filter(|o| o.agreed).count() as u64,
            )
        })
        .await?;
        let interval =
            keel_tuning::interval::wilson(agreements, reviews, keel_tuning::interval::Z_95)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let open = self
            .inner
            .store
            .trust_recommendations(Some("open"), Some(&row.operation))
            .await?
            .into_iter()
            .next();
        let next_target = (row.phase < 4)
            .then(|| {
                config
                    .promotion
                    .target_agreement
                    .to_enter(u8::try_from(row.phase + 1).unwrap_or(4))
            })
            .flatten();
        Ok(Some(OperationView {
            reviews_in_window: reviews,
            agreements_in_window: agreements,
            wilson_low: interval.low,
            wilson_high: interval.high,
            next_target,
            min_reviews: config.promotion.min_reviews,
            open_recommendation: open,
            row,
        }))
    }

    /// Recommendations, newest first.
    pub async fn trust_recommendations(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<RecommendationRow>> {
        Ok(self.inner.store.trust_recommendations(status, None).await?)
    }

    /// A governor approves (`approve = true`) or declines the operation's open
    /// recommendation.
    pub async fn trust_decide(
        &self,
        operation: &str,
        caller: &Caller,
        approve: bool,
        reason: &str,
    ) -> Result<std::result::Result<TrustChanged, TrustError>> {
        let inner = &self.inner;
        let Some(row) = inner.store.trust_operation(operation).await? else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        let Some((version, workflow)) = inner.registry.latest(&row.workflow) else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        let Some(config) = trust_config(&workflow, &row.step) else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        if let Err(refusal) = check_governor(config, &workflow, caller, reason) {
            self.journal_refusal(
                &row,
                caller,
                if approve { "promote" } else { "decline" },
                &refusal,
            )
            .await?;
            return Ok(Err(refusal));
        }
        let Some(recommendation) = inner
            .store
            .trust_recommendations(Some("open"), Some(operation))
            .await?
            .into_iter()
            .next()
        else {
            return Ok(Err(TrustError::Invalid(format!(
                "`{operation}` has no open recommendation: promotion is earned from evidence (`keel trust show {operation}` shows how far it is)"
            ))));
        };
        if recommendation.from_phase != row.phase {
            return Ok(Err(TrustError::Invalid(
                "the recommendation is stale: the phase moved since".into(),
            )));
        }
        let now = inner.clock.now_ms();
        let status = if approve { "approved" } else { "declined" };
        let closing = entry(
            inner,
            "trust.recommendation_closed",
            "user",
            &caller.subject,
            &row.workflow,
            &row.step,
            json!({ "operation": operation, "recommendation_id": recommendation.id, "status": status, "by": caller.subject, "reason": reason }),
        );
        if !inner
            .store
            .trust_close_recommendation(&recommendation.id, status, &caller.subject, now, &closing)
            .await?
        {
            return Ok(Err(TrustError::Invalid(
                "the recommendation was decided meanwhile".into(),
            )));
        }
        if !approve {
            inner.journal_written.notify_one();
            return Ok(Ok(TrustChanged {
                operation: operation.into(),
                from_phase: row.phase,
                to_phase: row.phase,
                action: "declined".into(),
            }));
        }
        let change = PhaseChange {
            operation: operation.to_string(),
            workflow: row.workflow.clone(),
            step: row.step.clone(),
            expected: Some(row.phase),
            phase: recommendation.to_phase,
            at_ms: now,
            promoted: true,
            workflow_version: Some(version),
            config_sha256: None,
        };
        let data = json!({ "operation": operation, "from_phase": row.phase, "to_phase": recommendation.to_phase,
            "by": caller.subject, "reason": reason, "recommendation_id": recommendation.id,
            "evidence": recommendation.evidence, "version": version,
            "author": workflow.change.as_ref().map(|c| c.author.clone()) });
        let e = entry(
            inner,
            "trust.promoted",
            "user",
            &caller.subject,
            &row.workflow,
            &row.step,
            data,
        );
        if !inner.store.trust_set_phase(&change, &e).await? {
            return Ok(Err(TrustError::Invalid(
                "the phase moved meanwhile; look again".into(),
            )));
        }
        inner
            .trust
            .set(&row.workflow, &row.step, recommendation.to_phase);
        inner.journal_written.notify_one();
        Ok(Ok(TrustChanged {
            operation: operation.into(),
            from_phase: row.phase,
            to_phase: recommendation.to_phase,
            action: "promoted".into(),
        }))
    }

    /// A governor withdraws trust by hand (to `to`, default one phase down).
    pub async fn trust_demote(
        &self,
        operation: &str,
        caller: &Caller,
        to: Option<i64>,
        reason: &str,
    ) -> Result<std::result::Result<TrustChanged, TrustError>> {
        let inner = &self.inner;
        let Some(row) = inner.store.trust_operation(operation).await? else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        let Some((_, workflow)) = inner.registry.latest(&row.workflow) else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        let Some(config) = trust_config(&workflow, &row.step) else {
            return Ok(Err(TrustError::UnknownOperation(operation.to_string())));
        };
        if !caller
            .roles
            .iter()
            .any(|r| config.approvers.contains(r) || r == "admin")
        {
            let refusal = TrustError::Forbidden(format!(
                "demoting needs one of the roles {:?} (or admin); `{}` has {:?}",
                config.approvers, caller.subject, caller.roles
            ));
            self.journal_refusal(&row, caller, "demote", &refusal)
                .await?;
            return Ok(Err(refusal));
        }
        if reason.trim().is_empty() {
            return Ok(Err(TrustError::Invalid("give a --reason".into())));
        }
        let to = to.unwrap_or(row.phase - 1);
        if !(1..row.phase).contains(&to) {
            return Ok(Err(TrustError::Invalid(format!(
                "`{operation}` is in phase {}; demote it to a phase from 1 to {}",
                row.phase,
                row.phase - 1
            ))));
        }
        if demote(
            inner,
            &row,
            to,
            "manual",
            &caller.subject,
            "user",
            reason,
            Value::Null,
        )
        .await?
        {
            inner.journal_written.notify_one();
            Ok(Ok(TrustChanged {
                operation: operation.into(),
                from_phase: row.phase,
                to_phase: to,
                action: "demoted".into(),
            }))
        } else {
            Ok(Err(TrustError::Invalid(
                "the phase moved meanwhile; look again".into(),
            )))
        }
    }

    async fn journal_refusal(
        &self,
        row: &TrustOperationRow,
        caller: &Caller,
        action: &str,
        refusal: &TrustError,
    ) -> Result<()> {
        let e = entry(
            &self.inner,
            "trust.refused",
            "user",
            &caller.subject,
            &row.workflow,
            &row.step,
            json!({ "operation": row.operation, "action": action, "by": caller.subject, "roles": caller.roles, "message": refusal.to_string() }),
        );
        self.inner.store.append(&[e]).await?;
        self.inner.journal_written.notify_one();
        Ok(())
    }

    /// Decides a post-hoc review task (kind `review`) as evidence; see the module docs.
    pub(crate) async fn decide_review(
        &self,
        task: &keel_store::TaskRow,
        caller: &Caller,
        decision: &TaskDecision,
    ) -> Result<std::result::Result<crate::tasks::Decided, crate::tasks::DecisionError>> {
        use crate::tasks::{Decided, DecisionError};
        let inner = &self.inner;
        if !caller
            .roles
            .iter()
            .any(|r| task.roles.contains(r) || r == "admin")
        {
            return Ok(Err(DecisionError::Refused {
                code: "role_not_allowed".into(),
                message: format!(
                    "reviewing needs one of the roles {:?}; `{}` has {:?}",
                    task.roles, caller.subject, caller.roles
                ),
            }));
        }
        let (verdict, decision_word) = match decision {
            TaskDecision::Approve { .. } => ("agree", "approved"),
            TaskDecision::Correct { .. } => ("corrected", "corrected"),
            TaskDecision::Reject { .. } => ("rejected", "rejected"),
        };
        let operation = task.detail["operation"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let phase = task.detail["phase"].as_i64().unwrap_or(1);
        let first = task.detail["proposals"]
            .as_object()
            .and_then(|p| p.values().next().cloned())
            .unwrap_or(Value::Null);
        let now = inner.clock.now_ms();
        let proposed_label = first["output"]["label"].as_str().map(str::to_string);
        let final_label = match decision {
            TaskDecision::Approve { .. } => proposed_label.clone(),
            TaskDecision::Correct { output, .. } => output["label"].as_str().map(str::to_string),
            TaskDecision::Reject { .. } => Some("rejected".to_string()),
        };
        let ai_step = task.detail["ai_steps"]
            .as_array()
            .and_then(|steps| steps.first())
            .and_then(Value::as_str)
            .map(|step| format!("{}/{step}", task.workflow));
        let raw_confidence = first
            .get("raw_confidence")
            .unwrap_or(&first["confidence"])
            .clone();
        let case_entry = |kind: &str, data: Value| {
            let (data, data_sha256) = canonical_data(&data);
            NewEntry {
                at: rfc3339_ms(now),
                kind: kind.to_string(),
                actor_type: "user".into(),
                actor_id: caller.subject.clone(),
                case_id: Some(task.case_id.clone()),
                workflow: Some(task.workflow.clone()),
                step: Some(task.step.clone()),
                data,
                data_sha256,
            }
        };
        // A retro review looks at an action taken before a demotion; a post-hoc one at an
        // action sampled when it was taken.
        let review_source = if task.kind == crate::retro::RETRO_KIND {
            "retro"
        } else {
            "post"
        };
        let note = match decision {
            TaskDecision::Approve { comment } | TaskDecision::Correct { comment, .. } => {
                comment.clone()
            }
            TaskDecision::Reject { reason } => Some(reason.clone()),
        };
        let mut entries = vec![
            case_entry(
                "task.completed",
                json!({ "task_id": task.id, "decision": decision_word, "by": [caller.subject], "note": note }),
            ),
            case_entry(
                "outcome.reviewed",
                json!({ "operation": operation, "task_id": task.id, "source": review_source,
                "verdict": verdict, "phase": phase, "by": [caller.subject], "model": first["model"],
                "confidence": raw_confidence, "confidence_method": first["confidence_method"],
                "cost_usd": first["cost_usd"], "ai_step": ai_step, "proposed_label": proposed_label,
                "final_label": final_label, "learner_version": first.get("learner_version") }),
            ),
        ];
        if let TaskDecision::Correct { output, .. } = decision {
            entries.push(case_entry(
                "outcome.labelled",
                json!({ "task_id": task.id, "by": caller.subject,
                "source": "review", "model": first["model"], "confidence": first["confidence"],
                "confidence_method": first["confidence_method"], "proposed": first["output"],
                "corrected": output, "agreed": false }),
            ));
        }
        if verdict != "agree" {
            let message = format!(
                "a post-hoc review by `{}` found the automatic action `{}` wrong ({verdict}): remediate the action already taken",
                caller.subject, task.step
            );
            entries.push(case_entry("exception.raised", json!({ "exception_id": format!("{}.wrong", task.id),
                "kind": "wrong_action", "message": message, "task_id": task.id, "operation": operation,
                "verdict": verdict, "note": note, "proposal": first, "action": task.detail["action"],
                "correction": match decision { TaskDecision::Correct { output, .. } => output.clone(), _ => Value::Null } })));
        }
        if !inner.store.complete_review(&task.id, &entries).await? {
            return Ok(Err(DecisionError::Closed("decided".into())));
        }
        inner.journal_written.notify_one();
        if verdict == "corrected" {
            // The `wrong_action` exception just raised may be critical by `trust.critical`:
            // check now, so that the decision's answer already reflects the demotion.
            check_critical(inner).await?;
        }
        if verdict == "rejected" {
            if let Some(row) = inner
                .store
                .trust_operation(&operation)
                .await?
                .filter(|r| r.phase > 1)
            {
                demote(
                    inner,
                    &row,
                    1,
                    "critical_exception",
                    TRUST_ACTOR,
                    "system",
                    "a post-hoc review rejected an action the operation took on its own",
                    json!({ "task_id": task.id, "exception_id": format!("{}.wrong", task.id) }),
                )
                .await?;
            }
        }
        Ok(Ok(Decided {
            task_id: task.id.clone(),
            case_id: task.case_id.clone(),
            result: decision_word.to_string(),
            approvals: 1,
            required: 1,
        }))
    }
}

/// A promotion decision needs an approver role, a reason, and someone other than the
/// version's author.
fn check_governor(
    config: &TrustConfig,
    workflow: &Workflow,
    caller: &Caller,
    reason: &str,
) -> std::result::Result<(), TrustError> {
    if !caller.roles.iter().any(|r| config.approvers.contains(r)) {
        return Err(TrustError::Forbidden(format!(
            "deciding promotions needs one of the roles {:?}; `{}` has {:?}",
            config.approvers, caller.subject, caller.roles
        )));
    }
    if workflow
        .change
        .as_ref()
        .is_some_and(|c| c.author == caller.subject)
    {
        return Err(TrustError::Forbidden(format!(
            "`{}` wrote this version of `{}`; another governor must decide its promotions",
            caller.subject, workflow.name
        )));
    }
    if reason.trim().is_empty() {
        return Err(TrustError::Invalid("give a --reason".into()));
    }
    Ok(())
}
