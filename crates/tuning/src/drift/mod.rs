//! Two-sample drift tests for one feature: is the current sample distributed like the
//! reference sample?
//!
//! [`detect`] chooses the test the way Evidently does by default. Sources: the "Data drift
//! algorithm" page (docs.evidentlyai.com/reference/data-drift-algorithm) and Evidently's code,
//! `src/evidently/legacy/calculations/stattests/registry.py` (`_get_default_stattest`) with
//! the tests in the same directory (`ks_stattest.py`, `chisquare_stattest.py`,
//! `z_stattest.py`, `wasserstein_distance_norm.py`, `jensenshannon.py`, `psi.py`,
//! `utils.py`). "Unique values" are counted over both samples pooled, as there:
//!
//! | reference rows | values | test | drift when |
//! |---|---|---|---|
//! | ≤ 1000 | numeric, > 5 unique | two-sample Kolmogorov–Smirnov ([`ks_2samp`]) | p ≤ 0.05 |
//! | ≤ 1000 | categorical, or numeric ≤ 5 unique; > 2 unique | chi-square goodness of fit of current counts against reference proportions ([`chi_square`]) | p < 0.05 |
//! | ≤ 1000 | same, ≤ 2 unique (binary) | two-proportion Z-test ([`z_test`]) | p < 0.05 |
//! | > 1000 | numeric, > 5 unique | Wasserstein distance / max(reference std, 0.001) ([`wasserstein_normalised`]) | ≥ 0.1 |
//! | > 1000 | categorical, or numeric ≤ 5 unique | Jensen–Shannon distance, natural log ([`jensen_shannon_distance`]) | ≥ 0.1 |
//! | on request | any | PSI with Evidently's binning and empty-bin floor ([`psi`]) | ≥ 0.1 |
//!
//! The comparisons (`≤` for KS, `<` for chi-square and Z, `≥` for distances) are Evidently's.
//! The binary case uses the Z-test, as Evidently does, rather than chi-square. The
//! Jensen–Shannon distance uses the natural logarithm: current Evidently calls
//! `distance.jensenshannon(p, q, base=None)`; some older versions of `jensenshannon.py`
//! passed base 2, which gives values larger by 1/√ln 2 ≈ 1.20 (and so flags drift sooner).
//!
//! **Known weakness of the default chi-square, kept for parity with Evidently:** it tests the
//! current counts against the reference *proportions* as if those were exact, but they are
//! estimated from the reference sample. Without any drift the statistic is then about
//! (1 + n_current / n_reference) · χ²(k − 1), so the false-alarm rate at "p < 0.05" is well
//! above 5% when the samples are of similar size (≈ 23% for 600 vs 500 rows and four
//! categories; the simulation test checks this figure), and close to 5% only when the current
//! sample is much smaller than the reference. The Z-test for binary features pools both
//! samples and does not have this problem.
//!
//! Unlike Evidently, which drops missing values, NaN or infinite values are an [`Error`] here:
//! the caller decides how to treat missing data. Each sample holds at most
//! [`crate::MAX_VALUES`] values.

mod categorical;
mod distance;
mod kolmogorov;
mod ks;

pub use categorical::{chi_square, z_test, ChiSquare, ZTest, CHI_SQUARE_SUM_TOLERANCE};
pub use distance::{
    binned_proportions, jensen_shannon_distance, psi, psi_from_proportions, wasserstein_distance,
    wasserstein_normalised, Binned, Binning, NormalisedWasserstein, HISTOGRAM_MIN_UNIQUE,
    PSI_EMPTY_BIN_FLOOR, WASSERSTEIN_MIN_NORM,
};
pub use kolmogorov::kstwo_sf;
pub use ks::{ks_2samp, KsResult, PValueMethod, MAX_EXACT_SAMPLE};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{check_finite, check_len, Error};

/// Above this many reference rows Evidently switches from tests to distances.
pub const SMALL_REFERENCE_MAX_ROWS: usize = 1000;
/// Numeric features with at most this many unique values are treated as categorical.
pub const NUMERIC_AS_CATEGORICAL_MAX_UNIQUE: usize = 5;
/// Features with at most this many unique values are binary (Z-test instead of chi-square).
pub const BINARY_MAX_UNIQUE: usize = 2;

/// The values of one feature in one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "values", rename_all = "snake_case")]
pub enum Values {
    Numeric(Vec<f64>),
    Categorical(Vec<String>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Numeric(values) => values.len(),
            Values::Categorical(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A drift test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sample Kolmogorov–Smirnov p-value (numeric only).
    Ks,
    /// Chi-square goodness-of-fit p-value.
    ChiSquare,
    /// Two-proportion Z-test p-value (at most two unique values).
    ZTest,
    /// Wasserstein distance normalised by the reference standard deviation (numeric only).
    Wasserstein,
    /// Jensen–Shannon distance (natural log).
    JensenShannon,
    /// Population stability index.
    Psi,
}

impl Method {
    /// Evidently's default threshold for the method.
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::Ks | Method::ChiSquare | Method::ZTest => 0.05,
            Method::Wasserstein | Method::JensenShannon | Method::Psi => 0.1,
        }
    }

    /// Whether `value` (a p-value or a distance) signals drift at `threshold`.
    pub fn is_drift(self, value: f64, threshold: f64) -> bool {
        match self {
            Method::Ks => value <= threshold,
            Method::ChiSquare | Method::ZTest => value < threshold,
            Method::Wasserstein | Method::JensenShannon | Method::Psi => value >= threshold,
        }
    }
}

/// Overrides for [`detect`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// Force a method instead of Evidently's choice.
    pub method: Option<Method>,
    /// Override the method's default threshold (must be finite and > 0).
    pub threshold: Option<f64>,
}

/// The outcome of [`detect`], ready to be stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftResult {
    pub method: Method,
    /// Method-specific detail (statistic, degrees of freedom, binning, ...). Infinite values
    /// serialise as null.
    pub parameters: serde_json::Value,
    /// The p-value (KS, chi-square, Z) or the distance (Wasserstein, Jensen–Shannon, PSI).
    pub value: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub reference_rows: usize,
    pub current_rows: usize,
}

/// Tests whether `current` drifted from `reference`; see the module documentation for the
/// choice of test.
pub fn detect(
    reference: &Values,
    current: &Values,
    options: &Options,
) -> Result<DriftResult, Error> {
    check_values(reference, current)?;
    let unique = count_unique(reference, current);
    let method = match options.method {
        Some(method) => method,
        None => default_method(reference, unique),
    };
    let threshold = match options.threshold {
        None => method.default_threshold(),
        Some(threshold) if threshold.is_finite() && threshold > 0.0 => threshold,
        Some(threshold) => {
            return Err(Error::OutOfRange {
                what: "drift threshold",
                value: threshold,
                range: "(0, ∞)",
            })
        }
    };
    let (value, parameters) = run(method, reference, current, unique)?;
    Ok(DriftResult {
        method,
        parameters,
        value,
        threshold,
        drifted: method.is_drift(value, threshold),
        reference_rows: reference.len(),
        current_rows: current.len(),
    })
}

/// Evidently's default choice (see the module table).
pub fn default_method(reference: &Values, unique_pooled: usize) -> Method {
    let small = reference.len() <= SMALL_REFERENCE_MAX_ROWS;
    let continuous = matches!(reference, Values::Numeric(_))
        && unique_pooled > NUMERIC_AS_CATEGORICAL_MAX_UNIQUE;
    match (small, continuous) {
        (true, true) => Method::Ks,
        (true, false) if unique_pooled > BINARY_MAX_UNIQUE => Method::ChiSquare,
        (true, false) => Method::ZTest,
        (false, true) => Method::Wasserstein,
        (false, false) => Method::JensenShannon,
    }
}

fn run(
    method: Method,
    reference: &Values,
    current: &Values,
    unique: usize,
) -> Result<(f64, serde_json::Value), Error> {
    match method {
        Method::Ks => {
            let (reference, current) = numeric_pair(reference, current, "KS")?;
            let result = ks_2samp(reference, current)?;
            Ok((
                result.p_value,
                json!({
                    "statistic": result.statistic,
                    "p_value": result.p_value,
                    "p_value_method": result.p_value_method,
                    "unique_values": unique,
                }),
            ))
        }
        Method::Wasserstein => {
            let (reference, current) = numeric_pair(reference, current, "Wasserstein")?;
            let result = wasserstein_normalised(reference, current)?;
            Ok((
                result.value,
                json!({
                    "distance": result.distance,
                    "reference_std": result.reference_std,
                    "norm": result.norm,
                    "unique_values": unique,
                }),
            ))
        }
        Method::ChiSquare => {
            let counts = aligned_counts(reference, current)?;
            let scale = current.len() as f64 / reference.len() as f64;
            let expected: Vec<f64> = counts.reference.iter().map(|c| *c as f64 * scale).collect();
            let observed: Vec<f64> = counts.current.iter().map(|c| *c as f64).collect();
            if observed.len() < 2 {
                // One category in both samples: nothing can have changed.
                return Ok((1.0, json!({"statistic": 0.0, "dof": 0, "categories": 1})));
            }
            let result = chi_square(&observed, &expected)?;
            Ok((
                result.p_value,
                json!({
                    "statistic": result.statistic,
                    "dof": result.dof,
                    "categories": observed.len(),
                }),
            ))
        }
        Method::ZTest => {
            let counts = aligned_counts(reference, current)?;
            if counts.reference.len() > BINARY_MAX_UNIQUE {
                return Err(Error::Invalid {
                    what: "Z-test",
                    detail: "the feature has more than two unique values; use chi-square",
                });
            }
            // As Evidently: the first value in sort order is 0, the other is 1.
            let first_reference = counts.reference.first().copied().unwrap_or(0);
            let first_current = counts.current.first().copied().unwrap_or(0);
            let result = z_test(
                reference.len() as u64 - first_reference,
                reference.len() as u64,
                current.len() as u64 - first_current,
                current.len() as u64,
            )?;
            Ok((
                result.p_value,
                json!({"z": result.z, "categories": counts.reference.len()}),
            ))
        }
        Method::JensenShannon => {
            let binned = binned_proportions(reference, current)?;
            let value = jensen_shannon_distance(&binned.reference, &binned.current)?;
            Ok((
                value,
                json!({"binning": binned.binning, "bins": binned.reference.len(), "log_base": "e"}),
            ))
        }
        Method::Psi => {
            let (value, binned) = psi(reference, current)?;
            Ok((
                value,
                json!({"binning": binned.binning, "bins": binned.reference.len()}),
            ))
        }
    }
}

fn numeric_pair<'a>(
    reference: &'a Values,
    current: &'a Values,
    method: &'static str,
) -> Result<(&'a [f64], &'a [f64]), Error> {
    match (reference, current) {
        (Values::Numeric(reference), Values::Numeric(current)) => Ok((reference, current)),
        _ => Err(Error::Invalid {
            what: method,
            detail: "this method needs numeric values",
        }),
    }
}

/// Both samples non-empty, bounded, of the same kind, and (numeric) finite.
pub(crate) fn check_values(reference: &Values, current: &Values) -> Result<(), Error> {
    match (reference, current) {
        (Values::Numeric(reference), Values::Numeric(current)) => {
            check_finite("reference sample", reference)?;
            check_finite("current sample", current)
        }
        (Values::Categorical(reference), Values::Categorical(current)) => {
            check_len("reference sample", reference.len())?;
            check_len("current sample", current.len())
        }
        _ => Err(Error::Invalid {
            what: "drift test",
            detail: "reference and current must both be numeric or both categorical",
        }),
    }
}

/// Counts per distinct value (in sort order) over the union of both samples' values.
pub(crate) struct AlignedCounts {
    pub reference: Vec<u64>,
    pub current: Vec<u64>,
}

/// −0.0 and 0.0 are one value (as in pandas); sorting with `total_cmp` would separate them.
fn canonical(value: f64) -> f64 {
    value + 0.0
}

pub(crate) fn aligned_counts(reference: &Values, current: &Values) -> Result<AlignedCounts, Error> {
    match (reference, current) {
        (Values::Numeric(reference), Values::Numeric(current)) => {
            let mut reference: Vec<f64> = reference.iter().map(|v| canonical(*v)).collect();
            let mut current: Vec<f64> = current.iter().map(|v| canonical(*v)).collect();
            reference.sort_by(f64::total_cmp);
            current.sort_by(f64::total_cmp);
            Ok(merge_counts(&reference, &current, |a, b| a.total_cmp(b)))
        }
        (Values::Categorical(reference), Values::Categorical(current)) => {
            let mut reference: Vec<&str> = reference.iter().map(String::as_str).collect();
            let mut current: Vec<&str> = current.iter().map(String::as_str).collect();
            reference.sort_unstable();
            current.sort_unstable();
            Ok(merge_counts(&reference, &current, |a, b| a.cmp(b)))
        }
        _ => Err(Error::Invalid {
            what: "drift test",
            detail: "reference and current must both be numeric or both categorical",
        }),
    }
}

/// Walks two sorted slices and counts each distinct value in both.
fn merge_counts<T>(
    reference: &[T],
    current: &[T],
    compare: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> AlignedCounts {
    use std::cmp::Ordering;
    let mut counts = AlignedCounts {
        reference: Vec::new(),
        current: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < reference.len() || j < current.len() {
        let key = match (reference.get(i), current.get(j)) {
            (Some(a), Some(b)) => match compare(a, b) {
                Ordering::Greater => b,
                _ => a,
            },
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let start = (i, j);
        while i < reference.len() && compare(&reference[i], key) == Ordering::Equal {
            i += 1;
        }
        while j < current.len() && compare(&current[j], key) == Ordering::Equal {
            j += 1;
        }
        counts.reference.push((i - start.0) as u64);
        counts.current.push((j - start.1) as u64);
    }
    counts
}

/// Unique values over both samples pooled.
fn count_unique(reference: &Values, current: &Values) -> usize {
    aligned_counts(reference, current)
        .map(|counts| counts.reference.len())
        .unwrap_or(0)
}

/// Unique values of one numeric sample.
pub(crate) fn count_unique_numeric(values: &[f64]) -> usize {
    let mut sorted: Vec<f64> = values.iter().map(|v| canonical(*v)).collect();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup_by(|a, b| a == b);
    sorted.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(values: &[f64]) -> Values {
        Values::Numeric(values.to_vec())
    }

    #[test]
    fn default_method_follows_evidently() {
        let few: Vec<f64> = (0..100).map(|i| (i % 3) as f64).collect();
        let many: Vec<f64> = (0..100).map(f64::from).collect();
        let large: Vec<f64> = (0..2000).map(f64::from).collect();
        let binary: Vec<f64> = (0..100).map(|i| (i % 2) as f64).collect();
        assert_eq!(default_method(&numeric(&many), 100), Method::Ks);
        assert_eq!(default_method(&numeric(&few), 3), Method::ChiSquare);
        assert_eq!(default_method(&numeric(&binary), 2), Method::ZTest);
        assert_eq!(default_method(&numeric(&large), 2000), Method::Wasserstein);
        assert_eq!(default_method(&numeric(&large), 4), Method::JensenShannon);
    }

    #[test]
    fn negative_zero_is_zero() {
        let counts = aligned_counts(&numeric(&[0.0, -0.0, 1.0]), &numeric(&[-0.0])).unwrap();
        assert_eq!(counts.reference, vec![2, 1]);
        assert_eq!(counts.current, vec![1, 0]);
    }

    #[test]
    fn mixed_kinds_and_forced_numeric_methods_on_categories_are_errors() {
        let categories = Values::Categorical(vec!["a".into(), "b".into()]);
        assert!(detect(&numeric(&[1.0]), &categories, &Options::default()).is_err());
        let forced = Options {
            method: Some(Method::Ks),
            threshold: None,
        };
        assert!(detect(&categories, &categories, &forced).is_err());
    }
}
