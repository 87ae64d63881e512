//! How well a classifier did on labelled examples: accuracy, log-loss, calibration (expected
//! calibration error over fixed confidence bins) and the confusion matrix.

use std::fmt;

use serde::Serialize;

use super::{Learner, Scratch, MIN_PROBABILITY};

/// How well a classifier did on labelled examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub n: u64,
    /// Fraction predicted right; 0 when `n` is 0.
    pub accuracy: f64,
    /// Mean of `-ln p(true label)`, each probability clipped to 1e-15; 0 when `n` is 0.
    pub log_loss: f64,
    /// Expected calibration error: the answers are put in [`CALIBRATION_BINS`] bins of equal
    /// width by their confidence (the probability of the predicted label), and
    /// `ece = Σ n_bin / n × |accuracy_bin − mean confidence_bin|`. 0 is perfectly honest
    /// confidence; 0 when `n` is 0.
    pub ece: f64,
    /// The bins that hold answers, lowest confidence first.
    pub calibration: Vec<CalibrationBin>,
    /// Every label met (true or predicted), sorted.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]`, indexed like `labels`.
    pub confusion: Vec<Vec<u64>>,
}

/// Bins of [`Evaluation::ece`]: `[0, 0.1)`, `[0.1, 0.2)`, … `[0.9, 1]`.
pub const CALIBRATION_BINS: usize = 10;

/// The answers whose confidence fell in `[lower, upper)` (the last bin also holds 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub n: u64,
    /// Mean confidence of the bin's answers.
    pub confidence: f64,
    /// Fraction of them that were right.
    pub accuracy: f64,
}

/// Confidence (probability of the predicted label) and whether the prediction was right, per
/// bin: answers, sum of confidences, right answers.
#[derive(Debug, Clone, Copy, Default)]
struct BinTotals {
    n: u64,
    confidence: f64,
    correct: u64,
}

fn calibration(bins: &[BinTotals; CALIBRATION_BINS], n: u64) -> (f64, Vec<CalibrationBin>) {
    let mut ece = 0.0;
    let mut shown = Vec::new();
    for (index, bin) in bins.iter().enumerate() {
        if bin.n == 0 {
            continue;
        }
        let confidence = bin.confidence / bin.n as f64;
        let accuracy = bin.correct as f64 / bin.n as f64;
        ece += bin.n as f64 / n as f64 * (accuracy - confidence).abs();
        shown.push(CalibrationBin {
            lower: index as f64 / CALIBRATION_BINS as f64,
            upper: (index + 1) as f64 / CALIBRATION_BINS as f64,
            n: bin.n,
            confidence,
            accuracy,
        });
    }
    (ece, shown)
}

impl Evaluation {
    /// Metrics from any classifier's outcomes: each is the true label and the probabilities
    /// the classifier gave; the prediction is the most probable label (on a tie the first
    /// listed), and a true label missing from the list had probability 0.
    pub fn from_outcomes(outcomes: &[(String, Vec<(String, f64)>)]) -> Evaluation {
        let mut labels: Vec<String> = Vec::new();
        for (truth, probabilities) in outcomes {
            labels.push(truth.to_string());
            labels.extend(probabilities.iter().map(|(label, _)| label.clone()));
        }
        labels.sort();
        labels.dedup();
        let index = |label: &str| {
            labels
                .binary_search_by(|known| known.as_str().cmp(label))
                .ok()
        };
        let mut confusion = vec![vec![0u64; labels.len()]; labels.len()];
        let (mut n, mut correct, mut loss) = (0u64, 0u64, 0.0f64);
        let mut bins = [BinTotals::default(); CALIBRATION_BINS];
        for (truth, probabilities) in outcomes {
            let mut best: Option<&(String, f64)> = None;
            for candidate in probabilities {
                if best.is_none_or(|best| candidate.1 > best.1) {
                    best = Some(candidate);
                }
            }
            let truth_probability = probabilities
                .iter()
                .find(|(label, _)| label == truth)
                .map_or(0.0, |(_, probability)| *probability);
            n += 1;
            loss -= truth_probability.max(MIN_PROBABILITY).ln();
            let mut right = false;
            if let (Some(row), Some(column)) =
                (index(truth), best.and_then(|(label, _)| index(label)))
            {
                confusion[row][column] += 1;
                right = row == column;
            }
            correct += u64::from(right);
            // Clamped: a classifier's probabilities are not checked to lie within [0, 1].
            let confidence = best.map_or(0.0, |(_, probability)| probability.clamp(0.0, 1.0));
            let bin = &mut bins
                [((confidence * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)];
            bin.n += 1;
            bin.confidence += confidence;
            bin.correct += u64::from(right);
        }
        let (ece, calibration) = calibration(&bins, n);
        let mean = |total: f64| if n == 0 { 0.0 } else { total / n as f64 };
        Evaluation {
            n,
            accuracy: mean(correct as f64),
            log_loss: mean(loss),
            ece,
            calibration,
            labels,
            confusion,
        }
    }

    /// A plain-text report: the headline numbers, the calibration bins, then the confusion
    /// matrix with true labels as rows and predicted labels as columns.
    pub fn to_table(&self) -> String {
        let corner = "true \\ predicted";
        let first_width = self
            .labels
            .iter()
            .map(String::len)
            .chain([corner.len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(column, label)| {
                let widest_count = self
                    .confusion
                    .iter()
                    .map(|row| row[column].to_string().len())
                    .max();
                label.len().max(widest_count.unwrap_or(0))
            })
            .collect();
        let mut out = format!(
            "examples  {}\naccuracy  {:.4}\nlog loss  {:.4}\nece       {:.4} ({CALIBRATION_BINS} \
             equal-width confidence bins)\n\n",
            self.n, self.accuracy, self.log_loss, self.ece
        );
        if !self.calibration.is_empty() {
            out.push_str("confidence  examples  mean confidence  accuracy\n");
            for bin in &self.calibration {
                out.push_str(&format!(
                    "{:.1}-{:.1}     {:>8}  {:>15.4}  {:>8.4}\n",
                    bin.lower, bin.upper, bin.n, bin.confidence, bin.accuracy
                ));
            }
            out.push('\n');
        }
        out.push_str(&format!("{corner:<first_width$}"));
        for (label, width) in self.labels.iter().zip(&widths) {
            out.push_str(&format!("  {label:>width$}"));
        }
        out.push('\n');
        for (label, row) in self.labels.iter().zip(&self.confusion) {
            out.push_str(&format!("{label:<first_width$}"));
            for (count, width) in row.iter().zip(&widths) {
                out.push_str(&format!("  {count:>width$}"));
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_table())
    }
}

/// Evaluates `learner` on labelled `(text, label)` examples, over every label that the learner
/// knows or the examples name (a label the learner never met scores as in
/// [`Learner::predict_within`]). An untrained learner gets uniform probabilities.
pub fn evaluate(learner: &Learner, examples: &[(String, String)]) -> Evaluation {
    let mut labels: Vec<&str> = learner.classes.iter().map(String::as_str).collect();
    for (_, label) in examples {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    let candidates: Vec<(&str, Option<usize>)> = labels
        .iter()
        .map(|label| (*label, learner.class_index(label)))
        .collect();
    let mut scratch = Scratch::default();
    let outcomes: Vec<(String, Vec<(String, f64)>)> = examples
        .iter()
        .map(|(text, truth)| {
            learner.probabilities_over(&mut scratch, text, &candidates);
            let probabilities = labels
                .iter()
                .zip(&scratch.probabilities)
                .map(|(label, probability)| (label.to_string(), *probability))
                .collect();
            (truth.clone(), probabilities)
        })
        .collect();
    Evaluation::from_outcomes(&outcomes)
}
