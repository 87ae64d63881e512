//! How well a classifier did on labelled examples: accuracy, log-loss and the confusion matrix.

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
    /// Every label met (true or predicted), sorted.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]`, indexed like `labels`.
    pub confusion: Vec<Vec<u64>>,
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
            if let (Some(row), Some(column)) =
                (index(truth), best.and_then(|(label, _)| index(label)))
            {
                confusion[row][column] += 1;
                correct += u64::from(row == column);
            }
        }
        let mean = |total: f64| if n == 0 { 0.0 } else { total / n as f64 };
        Evaluation {
            n,
            accuracy: mean(correct as f64),
            log_loss: mean(loss),
            labels,
            confusion,
        }
    }

    /// A plain-text report: the headline numbers, then the confusion matrix with true labels
    /// as rows and predicted labels as columns.
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
            "examples  {}\naccuracy  {:.4}\nlog loss  {:.4}\n\n{corner:<first_width$}",
            self.n, self.accuracy, self.log_loss
        );
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
