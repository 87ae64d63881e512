//! Calibration of a model's stated confidence against how often it is right.
//!
//! - [`expected_calibration_error`]: ECE over equal-frequency (equal-mass) bins, with the
//!   reliability-diagram data per bin.
//! - [`Isotonic`] and [`Platt`]: two calibrators, serialisable so that the engine can store one
//!   and [`Calibrator::apply`] it to later confidences.
//! - [`fit_best`]: fits both on a seeded split and keeps one only if it lowers the ECE on the
//!   held-out part.
//!
//! Bounds: at most [`crate::MAX_VALUES`] pairs, confidences finite in [0, 1], at most
//! [`MAX_BINS`] bins.

use serde::{Deserialize, Serialize};

use crate::random::SplitMix64;
use crate::{check_len, Error};

/// The number of bins [`fit_best`] uses, and the usual choice.
pub const DEFAULT_BINS: usize = 10;
/// The most bins [`expected_calibration_error`] accepts.
pub const MAX_BINS: usize = 1000;
/// [`fit_best`] needs at least this many pairs on each side of the split.
pub const MIN_PAIRS_PER_SIDE: usize = 10;
/// Platt scaling works on logit(confidence); confidences are clamped to
/// [ε, 1 − ε] first so that 0 and 1 have finite logits.
pub const PLATT_LOGIT_EPSILON: f64 = 1e-6;
/// Newton iterations for Platt scaling (it converges in well under 20 on real data).
pub const PLATT_MAX_ITERATIONS: usize = 100;

/// One reviewed prediction: the model's confidence and whether it was right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub confidence: f64,
    pub correct: bool,
}

/// One bin of the reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub count: usize,
    pub mean_confidence: f64,
    /// Fraction correct.
    pub accuracy: f64,
    pub min_confidence: f64,
    pub max_confidence: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ece {
    /// Σ (count_b / n) · |accuracy_b − mean_confidence_b|.
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

fn check_pairs(what: &'static str, pairs: &[Pair]) -> Result<(), Error> {
    check_len(what, pairs.len())?;
    match pairs
        .iter()
        .position(|pair| !(pair.confidence.is_finite() && (0.0..=1.0).contains(&pair.confidence)))
    {
        Some(index) => Err(Error::OutOfRange {
            what: "confidence",
            value: pairs[index].confidence,
            range: "[0, 1]",
        }),
        None => Ok(()),
    }
}

/// Expected calibration error with `bins` equal-frequency bins.
///
/// The pairs are sorted by confidence with a **stable** sort (equal confidences keep their input
/// order) and cut into `bins` consecutive groups whose sizes differ by at most one: with
/// n = q·bins + r, the first r groups hold q + 1 pairs and the rest q (numpy's `array_split`).
/// Unlike `array_split`, a cut never splits a run of equal confidences: it moves forward to
/// the end of the run (bins with ties hold more, and later bins may be empty and are skipped);
/// which is the point of equal-frequency bins. With fewer pairs than bins, the empty bins are
/// left out.
pub fn expected_calibration_error(pairs: &[Pair], bins: usize) -> Result<Ece, Error> {
    check_pairs("calibration pairs", pairs)?;
    if bins == 0 || bins > MAX_BINS {
        return Err(Error::OutOfRange {
            what: "calibration bins",
            value: bins as f64,
            range: "1..=1000",
        });
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.confidence.total_cmp(&b.confidence));
    let total = sorted.len();
    let (base, remainder) = (total / bins, total % bins);
    let mut start = 0;
    let mut ece = 0.0;
    let mut reliability = Vec::with_capacity(bins.min(total));
    let mut cut = 0;
    for bin in 0..bins {
        cut += base + usize::from(bin < remainder);
        // A bin ends where the equal-frequency cut falls, moved forward past any run of equal
        // confidences: the same confidence never straddles two bins (splitting ties would
        // measure the noise of the split, not calibration).
        let mut end = cut.max(start).min(total);
        while end > start && end < total && sorted[end].confidence == sorted[end - 1].confidence {
            end += 1;
        }
        if end <= start {
            continue;
        }
        let group = &sorted[start..end];
        start = end;
        let count = group.len() as f64;
        let mean_confidence = group.iter().map(|pair| pair.confidence).sum::<f64>() / count;
        let accuracy = group.iter().filter(|pair| pair.correct).count() as f64 / count;
        ece += count / total as f64 * (accuracy - mean_confidence).abs();
        reliability.push(ReliabilityBin {
            count: group.len(),
            mean_confidence,
            accuracy,
            min_confidence: group.first().map_or(0.0, |pair| pair.confidence),
            max_confidence: group.last().map_or(0.0, |pair| pair.confidence),
        });
    }
    Ok(Ece {
        ece,
        bins: reliability,
    })
}

/// Isotonic regression of correctness on confidence by pool-adjacent-violators: a
/// non-decreasing step function. Block k covers confidences from `thresholds[k]` up to the next
/// threshold and maps them to `values[k]`; there is no interpolation between blocks. Below the
/// first threshold the first value applies, above the last the last (clamped to the fitted
/// range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IsotonicData")]
pub struct Isotonic {
    thresholds: Vec<f64>,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct IsotonicData {
    thresholds: Vec<f64>,
    values: Vec<f64>,
}

impl TryFrom<IsotonicData> for Isotonic {
    type Error = Error;

    fn try_from(data: IsotonicData) -> Result<Self, Error> {
        let invalid = |detail| Error::Invalid {
            what: "isotonic calibrator",
            detail,
        };
        check_len("isotonic thresholds", data.thresholds.len())?;
        if data.thresholds.len() != data.values.len() {
            return Err(invalid("thresholds and values differ in length"));
        }
        if !data.thresholds.iter().all(|t| t.is_finite())
            || !data.thresholds.windows(2).all(|w| w[0] < w[1])
        {
            return Err(invalid("thresholds must be finite and strictly increasing"));
        }
        if !data.values.iter().all(|v| (0.0..=1.0).contains(v))
            || !data.values.windows(2).all(|w| w[0] <= w[1])
        {
            return Err(invalid("values must lie in [0, 1] and not decrease"));
        }
        Ok(Self {
            thresholds: data.thresholds,
            values: data.values,
        })
    }
}

impl Isotonic {
    /// Fits on `pairs` (confidence → 1 if correct, 0 if not). Equal confidences are pooled
    /// first, so each distinct confidence gets one value.
    pub fn fit(pairs: &[Pair]) -> Result<Self, Error> {
        check_pairs("isotonic training pairs", pairs)?;
        let mut sorted = pairs.to_vec();
        sorted.sort_by(|a, b| a.confidence.total_cmp(&b.confidence));
        // Points: (confidence, sum of outcomes, weight), one per distinct confidence.
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        for pair in &sorted {
            let outcome = if pair.correct { 1.0 } else { 0.0 };
            match points.last_mut() {
                Some(last) if last.0 == pair.confidence => {
                    last.1 += outcome;
                    last.2 += 1.0;
                }
                _ => points.push((pair.confidence, outcome, 1.0)),
            }
        }
        // Pool adjacent violators: blocks keep the first confidence they cover.
        let mut blocks: Vec<(f64, f64, f64)> = Vec::with_capacity(points.len());
        for point in points {
            let mut block = point;
            while let Some(previous) = blocks.last() {
                if previous.1 / previous.2 <= block.1 / block.2 {
                    break;
                }
                block = (previous.0, previous.1 + block.1, previous.2 + block.2);
                blocks.pop();
            }
            blocks.push(block);
        }
        Ok(Self {
            thresholds: blocks.iter().map(|block| block.0).collect(),
            values: blocks.iter().map(|block| block.1 / block.2).collect(),
        })
    }

    pub fn apply(&self, confidence: f64) -> f64 {
        let index = self
            .thresholds
            .partition_point(|threshold| *threshold <= confidence)
            .saturating_sub(1);
        self.values.get(index).copied().unwrap_or(confidence)
    }

    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }
}

/// Platt scaling on the logit of the confidence: calibrated = σ(a·logit(c) + b), with
/// c clamped to [[`PLATT_LOGIT_EPSILON`], 1 − ε]. On the logit scale a = 1, b = 0 is the
/// identity, which is where the fit starts.
///
/// Fitted by Newton's method with backtracking line search on the cross-entropy against
/// Platt's smoothed targets (N₊ + 1)/(N₊ + 2) for correct and 1/(N₋ + 2) for incorrect
/// predictions (Platt 1999; the safeguarded Newton of Lin, Lin & Weng 2007).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

fn logit(confidence: f64) -> f64 {
    let c = confidence.clamp(PLATT_LOGIT_EPSILON, 1.0 - PLATT_LOGIT_EPSILON);
    (c / (1.0 - c)).ln()
}

/// ln(1 + e^z) without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Smoothed targets and features for Platt's fit.
struct PlattData {
    features: Vec<f64>,
    targets: Vec<f64>,
}

impl PlattData {
    fn new(pairs: &[Pair]) -> Self {
        let positives = pairs.iter().filter(|pair| pair.correct).count() as f64;
        let negatives = pairs.len() as f64 - positives;
        let high = (positives + 1.0) / (positives + 2.0);
        let low = 1.0 / (negatives + 2.0);
        Self {
            features: pairs.iter().map(|pair| logit(pair.confidence)).collect(),
            targets: pairs
                .iter()
                .map(|pair| if pair.correct { high } else { low })
                .collect(),
        }
    }

    /// Cross-entropy Σ t·softplus(−z) + (1 − t)·softplus(z), z = a·f + b.
    fn loss(&self, a: f64, b: f64) -> f64 {
        self.features
            .iter()
            .zip(&self.targets)
            .map(|(f, t)| {
                let z = a * f + b;
                t * softplus(-z) + (1.0 - t) * softplus(z)
            })
            .sum()
    }

    /// Gradient and Hessian of the loss.
    fn derivatives(&self, a: f64, b: f64) -> ([f64; 2], [f64; 3]) {
        let mut gradient = [0.0; 2];
        let mut hessian = [0.0; 3]; // [aa, ab, bb]
        for (f, t) in self.features.iter().zip(&self.targets) {
            let q = sigmoid(a * f + b);
            let residual = q - t;
            let weight = q * (1.0 - q);
            gradient[0] += residual * f;
            gradient[1] += residual;
            hessian[0] += weight * f * f;
            hessian[1] += weight * f;
            hessian[2] += weight;
        }
        (gradient, hessian)
    }
}

impl Platt {
    pub fn fit(pairs: &[Pair]) -> Result<Self, Error> {
        check_pairs("Platt training pairs", pairs)?;
        let data = PlattData::new(pairs);
        let (mut a, mut b) = (1.0, 0.0);
        let mut loss = data.loss(a, b);
        for _ in 0..PLATT_MAX_ITERATIONS {
            let (gradient, hessian) = data.derivatives(a, b);
            if gradient[0].abs() < 1e-12 * pairs.len() as f64
                && gradient[1].abs() < 1e-12 * pairs.len() as f64
            {
                break;
            }
            // Solve (H + σI) d = −g; σ keeps H invertible when all features are equal.
            let ridge = 1e-12;
            let (haa, hab, hbb) = (hessian[0] + ridge, hessian[1], hessian[2] + ridge);
            let determinant = haa * hbb - hab * hab;
            if !(determinant.is_finite() && determinant > 0.0) {
                break;
            }
            let step_a = -(hbb * gradient[0] - hab * gradient[1]) / determinant;
            let step_b = -(-hab * gradient[0] + haa * gradient[1]) / determinant;
            let slope = gradient[0] * step_a + gradient[1] * step_b;
            // −slope is the squared Newton decrement: twice the most a full step could still
            // gain. Once that is at rounding level the fit is done; searching on would only
            // halve the step until it underflows, evaluating the loss each time.
            if slope.is_nan() || slope >= 0.0 || -slope <= 1e-13 * (1.0 + loss) {
                break;
            }
            let mut length = 1.0;
            let mut improved = false;
            while length >= 1e-10 {
                let (next_a, next_b) = (a + length * step_a, b + length * step_b);
                let next_loss = data.loss(next_a, next_b);
                if next_loss <= loss + 1e-4 * length * slope {
                    (a, b, loss) = (next_a, next_b, next_loss);
                    improved = true;
                    break;
                }
                length /= 2.0;
            }
            if !improved {
                break;
            }
        }
        Ok(Self { a, b })
    }

    pub fn apply(&self, confidence: f64) -> f64 {
        sigmoid(self.a * logit(confidence) + self.b)
    }
}

/// A stored calibration: none, isotonic or Platt. Serialises with a `kind` tag
/// (`"none"`, `"isotonic"`, `"platt"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Calibrator {
    /// Confidences are used as they are.
    #[serde(rename = "none")]
    Identity,
    Isotonic(Isotonic),
    Platt(Platt),
}

impl Calibrator {
    /// The calibrated confidence. Non-finite input is returned unchanged (callers validate
    /// confidences before use).
    pub fn apply(&self, confidence: f64) -> f64 {
        match self {
            Calibrator::Identity => confidence,
            Calibrator::Isotonic(isotonic) => isotonic.apply(confidence),
            Calibrator::Platt(platt) => platt.apply(confidence),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Calibrator::Identity => "none",
            Calibrator::Isotonic(_) => "isotonic",
            Calibrator::Platt(_) => "platt",
        }
    }
}

/// What [`fit_best`] chose and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// ECE of the raw confidences on the held-out pairs.
    pub ece_before: f64,
    /// ECE of the chosen calibrator on the held-out pairs (= `ece_before` for none).
    pub ece_after: f64,
    pub ece_isotonic: f64,
    pub ece_platt: f64,
    pub training_pairs: usize,
    pub holdout_pairs: usize,
    pub calibrator: Calibrator,
}

impl Choice {
    /// `"none"`, `"isotonic"` or `"platt"`.
    pub fn kind(&self) -> &'static str {
        self.calibrator.kind()
    }
}

/// Splits `pairs` deterministically (a SplitMix64 shuffle seeded with `seed`; the first
/// round(n · `holdout_fraction`) shuffled pairs are held out), fits isotonic and Platt
/// calibrators on the rest, and measures ECE ([`DEFAULT_BINS`] bins, fewer if the hold-out is
/// smaller) on the held-out pairs. The calibrator with the lower held-out ECE is chosen if it is
/// strictly lower than the raw ECE; on a tie between the two, Platt (two parameters) wins. The
/// chosen calibrator is the one fitted on the training part, so `ece_after` describes exactly
/// what is returned.
///
/// Errors when either side would hold fewer than [`MIN_PAIRS_PER_SIDE`] pairs, or on invalid
/// pairs or fraction.
pub fn fit_best(pairs: &[Pair], holdout_fraction: f64, seed: u64) -> Result<Choice, Error> {
    check_pairs("calibration pairs", pairs)?;
    crate::check_open("holdout fraction", holdout_fraction, 0.0, 1.0, "(0, 1)")?;
    let holdout_count = (pairs.len() as f64 * holdout_fraction).round() as usize;
    if holdout_count < MIN_PAIRS_PER_SIDE || pairs.len() - holdout_count < MIN_PAIRS_PER_SIDE {
        return Err(Error::Invalid {
            what: "calibration",
            detail:
                "too few pairs: each side of the split needs at least 10; keep the raw confidences",
        });
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let holdout: Vec<Pair> = order[..holdout_count].iter().map(|i| pairs[*i]).collect();
    let training: Vec<Pair> = order[holdout_count..].iter().map(|i| pairs[*i]).collect();

    let isotonic = Calibrator::Isotonic(Isotonic::fit(&training)?);
    let platt = Calibrator::Platt(Platt::fit(&training)?);
    let bins = DEFAULT_BINS.min(holdout.len());
    let ece_of = |calibrator: &Calibrator| -> Result<f64, Error> {
        let calibrated: Vec<Pair> = holdout
            .iter()
            .map(|pair| Pair {
                confidence: calibrator.apply(pair.confidence).clamp(0.0, 1.0),
                correct: pair.correct,
            })
            .collect();
        Ok(expected_calibration_error(&calibrated, bins)?.ece)
    };
    let ece_before = ece_of(&Calibrator::Identity)?;
    let ece_isotonic = ece_of(&isotonic)?;
    let ece_platt = ece_of(&platt)?;
    let (best, ece_best) = if ece_platt <= ece_isotonic {
        (platt, ece_platt)
    } else {
        (isotonic, ece_isotonic)
    };
    let (calibrator, ece_after) = if ece_best < ece_before {
        (best, ece_best)
    } else {
        (Calibrator::Identity, ece_before)
    };
    Ok(Choice {
        ece_before,
        ece_after,
        ece_isotonic,
        ece_platt,
        training_pairs: training.len(),
        holdout_pairs: holdout.len(),
        calibrator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(confidence: f64, correct: bool) -> Pair {
        Pair {
            confidence,
            correct,
        }
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        let pairs = [
            pair(0.5, true),
            pair(0.5, false),
            pair(1.0, true),
            pair(1.0, true),
        ];
        let result = expected_calibration_error(&pairs, 2).unwrap();
        assert_eq!(result.ece, 0.0);
        assert_eq!(result.bins.len(), 2);
        assert_eq!(result.bins[0].accuracy, 0.5);
    }

    #[test]
    fn isotonic_is_monotone_and_clamps() {
        let pairs = [
            pair(0.1, false),
            pair(0.2, true),
            pair(0.3, false),
            pair(0.4, true),
            pair(0.9, true),
        ];
        let isotonic = Isotonic::fit(&pairs).unwrap();
        assert!(isotonic.values().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(isotonic.apply(0.0), 0.0);
        assert_eq!(isotonic.apply(1.0), 1.0);
        // 0.2 (1) and 0.3 (0) violate monotonicity and pool to 0.5.
        assert_eq!(isotonic.apply(0.25), 0.5);
    }

    #[test]
    fn isotonic_deserialisation_validates() {
        let bad = r#"{"thresholds":[0.5,0.2],"values":[0.1,0.2]}"#;
        assert!(serde_json::from_str::<Isotonic>(bad).is_err());
        let good = r#"{"thresholds":[0.2,0.5],"values":[0.1,0.2]}"#;
        assert!(serde_json::from_str::<Isotonic>(good).is_ok());
    }

    #[test]
    fn overconfident_model_is_pulled_down_by_platt() {
        // Says 0.9, is right half the time.
        let pairs: Vec<Pair> = (0..200).map(|i| pair(0.9, i % 2 == 0)).collect();
        let platt = Platt::fit(&pairs).unwrap();
        assert!((platt.apply(0.9) - 0.5).abs() < 0.01);
    }

    #[test]
    fn too_few_pairs_is_an_error() {
        let pairs: Vec<Pair> = (0..15).map(|i| pair(0.8, i % 3 != 0)).collect();
        assert!(fit_best(&pairs, 0.3, 1).is_err());
    }
}
