//! Accuracy and calibration from reviewed outcomes, per operation and per model.
//!
//! Every review (`trust_outcomes`) pairs a proposal's raw confidence with whether the reviewer
//! agreed. Per (`ai` step, model) with at least [`MIN_PAIRS`] such pairs, each trust
//! evaluation pass refits when [`REFIT_EVERY`] new reviews arrived: isotonic and Platt
//! calibrators are fitted on a seeded split and the one with the lower held-out ECE is kept
//! only if it beats the raw confidences (`keel_tuning::calibration::fit_best`). The choice is
//! stored (`calibrators`), journaled (`calibration.fitted`) and installed in the AI runtime,
//! where `accept_when` (and through the proposal's `confidence`, trust policies) see the
//! calibrated value; the raw one stays beside it in the proposal and the journal, and
//! calibrators are always fitted on raw values.

use std::collections::BTreeMap;

use keel_store::{CalibratorRow, TrustOutcomeRow};
use keel_tuning::calibration::{expected_calibration_error, fit_best, Calibrator, Pair};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{canonical_data, rfc3339_ms, Engine, Error, Inner, Result};

/// Fewest reviewed pairs before a calibrator is fitted.
pub const MIN_PAIRS: i64 = 50;
/// Refit after this many new reviews.
pub const REFIT_EVERY: i64 = 25;
/// Most recent reviews a calibrator is fitted on.
pub const MAX_PAIRS: i64 = 50_000;
/// Share of pairs held out to judge a calibrator.
pub const HOLDOUT_FRACTION: f64 = 0.3;
/// Bins of reliability diagrams.
pub const BINS: usize = 10;

fn pairs(rows: &[TrustOutcomeRow]) -> Vec<Pair> {
    rows.iter()
        .filter_map(|row| {
            let confidence = row.confidence?;
            (confidence.is_finite() && (0.0..=1.0).contains(&confidence)).then_some(Pair {
                confidence,
                correct: row.verdict == "agree",
            })
        })
        .collect()
}

/// Loads the stored calibrators into the AI runtime (at start).
pub(crate) async fn load(inner: &Inner) -> Result<()> {
    let Some(runtime) = &inner.options.ai else {
        return Ok(());
    };
    for row in inner.store.calibrators().await? {
        if let Ok(calibrator) = serde_json::from_value::<Calibrator>(row.calibrator.clone()) {
            runtime.set_calibrator(&row.ai_step, &row.model, Some(calibrator));
        }
    }
    Ok(())
}

/// Refits the calibrators that have enough new reviews; returns how many were fitted.
pub(crate) async fn refit(inner: &Inner) -> Result<usize> {
    let stored: BTreeMap<(String, String), CalibratorRow> = inner
        .store
        .calibrators()
        .await?
        .into_iter()
        .map(|row| ((row.ai_step.clone(), row.model.clone()), row))
        .collect();
    let mut fitted = 0;
    for (ai_step, model, count) in inner.store.calibration_keys().await? {
        // Reviews counted at the last fit; a row from before that was recorded has only the
        // pairs it used, which undercounts and so refits once.
        let last = stored
            .get(&(ai_step.clone(), model.clone()))
            .map_or(0, |r| {
                if r.reviews_seen > 0 {
                    r.reviews_seen
                } else {
                    r.pairs
                }
            });
        if count < MIN_PAIRS || (last > 0 && count - last < REFIT_EVERY) {
            continue;
        }
        let pairs: Vec<Pair> = inner
            .store
            .calibration_pairs(&ai_step, &model, MAX_PAIRS)
            .await?
            .into_iter()
            .filter(|(confidence, _)| confidence.is_finite() && (0.0..=1.0).contains(confidence))
            .map(|(confidence, correct)| Pair {
                confidence,
                correct,
            })
            .collect();
        let seed = keel_tuning::random::stable_hash(&format!("{ai_step}/{model}"));
        let choice = match fit_best(&pairs, HOLDOUT_FRACTION, seed) {
            Ok(choice) => choice,
            Err(error) => {
                tracing::debug!(%ai_step, %model, %error, "no calibrator fitted");
                continue;
            }
        };
        let now = inner.clock.now_ms();
        let row = CalibratorRow {
            ai_step: ai_step.clone(),
            model: model.clone(),
            kind: choice.kind().to_string(),
            calibrator: serde_json::to_value(&choice.calibrator).unwrap_or(Value::Null),
            ece_before: choice.ece_before,
            ece_after: choice.ece_after,
            pairs: i64::try_from(pairs.len()).unwrap_or(i64::MAX),
            fitted_at_ms: now,
            reviews_seen: count,
        };
        let data = json!({ "ai_step": ai_step, "model": model, "kind": row.kind,
            "ece_before": choice.ece_before, "ece_after": choice.ece_after,
            "ece_isotonic": choice.ece_isotonic, "ece_platt": choice.ece_platt,
            "training_pairs": choice.training_pairs, "holdout_pairs": choice.holdout_pairs });
        let (data, data_sha256) = canonical_data(&data);
        let (workflow, step) = ai_step.split_once('/').unwrap_or((ai_step.as_str(), ""));
        let entry = keel_store::NewEntry {
            at: rfc3339_ms(now),
            kind: "calibration.fitted".into(),
            actor_type: "system".into(),
            actor_id: crate::trust::TRUST_ACTOR.into(),
            case_id: None,
            workflow: Some(workflow.to_string()),
            step: Some(step.to_string()),
            data,
            data_sha256,
        };
        inner.store.save_calibrator(&row, &entry).await?;
        if let Some(runtime) = &inner.options.ai {
            runtime.set_calibrator(&ai_step, &model, Some(choice.calibrator));
        }
        fitted += 1;
    }
    Ok(fitted)
}

/// Accuracy of one model on one operation.
#[derive(Debug, Clone, Serialize)]
pub struct ModelAccuracy {
    pub model: String,
    pub reviews: u64,
    pub agreements: u64,
    pub agreement_rate: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
    /// ECE of the raw confidences with equal-frequency bins, and the reliability diagram.
    pub ece: Option<f64>,
    pub reliability: Vec<keel_tuning::calibration::ReliabilityBin>,
    /// The calibrator in use for this model on the operation's `ai` step, if any.
    pub calibrator: Option<CalibratorRow>,
}

/// A confusion matrix of proposed labels (rows) against the labels that stood after review
/// (columns; `rejected` when the action was rejected).
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// Accuracy and calibration of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub operation: String,
    pub reviews: u64,
    pub agreements: u64,
    pub wilson_low: f64,
    pub wilson_high: f64,
    pub per_model: Vec<ModelAccuracy>,
    /// For `classify` steps (when labels were recorded).
    pub confusion: Option<Confusion>,
}

fn wilson(agreements: u64, reviews: u64) -> Result<(f64, f64)> {
    let interval = keel_tuning::interval::wilson(agreements, reviews, keel_tuning::interval::Z_95)
        .map_err(|e| Error::InvalidRequest(e.to_string()))?;
    Ok((interval.low, interval.high))
}

fn confusion(rows: &[TrustOutcomeRow]) -> Option<Confusion> {
    let labelled: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r.proposed_label.as_deref()?, r.final_label.as_deref()?)))
        .collect();
    if labelled.is_empty() {
        return None;
    }
    let mut labels: Vec<String> = labelled
        .iter()
        .flat_map(|(a, b)| [a.to_string(), b.to_string()])
        .collect();
    labels.sort();
    labels.dedup();
    let index = |label: &str| labels.iter().position(|l| l == label).unwrap_or(0);
    let mut matrix = vec![vec![0u64; labels.len()]; labels.len()];
    for (proposed, final_label) in &labelled {
        matrix[index(proposed)][index(final_label)] += 1;
    }
    Some(Confusion { labels, matrix })
}

impl Engine {
    /// Refits calibrators now (tests; the trust pass does it too).
    pub async fn refit_calibrators_once(&self) -> Result<usize> {
        refit(&self.inner).await
    }

    /// Accuracy, calibration and the confusion matrix of one operation over its promotion
    /// window.
    pub async fn accuracy(&self, operation: &str) -> Result<Option<Accuracy>> {
        let Some(row) = self.inner.store.trust_operation(operation).await? else {
            return Ok(None);
        };
        let rows = self
            .inner
            .store
            .trust_outcomes(operation, 0, MAX_PAIRS)
            .await?;
        let calibrators = self.inner.store.calibrators().await?;
        let mut by_model: BTreeMap<String, Vec<TrustOutcomeRow>> = BTreeMap::new();
        for outcome in &rows {
            by_model
                .entry(outcome.model.clone().unwrap_or_else(|| "unknown".into()))
                .or_default()
                .push(outcome.clone());
        }
        let mut per_model = Vec::new();
        for (model, outcomes) in by_model {
            let reviews = outcomes.len() as u64;
            let agreements = outcomes.iter().filter(|o| o.verdict == "agree").count() as u64;
            let (low, high) = wilson(agreements, reviews)?;
            let pairs = pairs(&outcomes);
            let ece = (!pairs.is_empty())
                .then(|| expected_calibration_error(&pairs, BINS.min(pairs.len())).ok())
                .flatten();
            let ai_step = outcomes.iter().find_map(|o| o.ai_step.clone());
            per_model.push(ModelAccuracy {
                calibrator: calibrators
                    .iter()
                    .find(|c| Some(&c.ai_step) == ai_step.as_ref() && c.model == model)
                    .cloned(),
                model,
                reviews,
                agreements,
                agreement_rate: if reviews == 0 {
                    0.0
                } else {
                    agreements as f64 / reviews as f64
                },
                wilson_low: low,
                wilson_high: high,
                ece: ece.as_ref().map(|e| e.ece),
                reliability: ece.map(|e| e.bins).unwrap_or_default(),
            });
        }
        let reviews = rows.len() as u64;
        let agreements = rows.iter().filter(|o| o.verdict == "agree").count() as u64;
        let (low, high) = wilson(agreements, reviews)?;
        Ok(Some(Accuracy {
            operation: row.operation,
            reviews,
            agreements,
            wilson_low: low,
            wilson_high: high,
            per_model,
            confusion: confusion(&rows),
        }))
    }
}
