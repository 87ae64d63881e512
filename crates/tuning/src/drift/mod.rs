//! Two-sample drift tests for one feature: is the current sample distributed like the
//! reference sample?
//!
//! [`detect`] has two sets of defaults ([`Defaults`]). The statistics' values are the same in
//! both (scipy's and Evidently's formulas, checked against reference vectors); what differs is
//! which test is chosen and when a value counts as drift.
//!
//! **[`Defaults::Calibrated`]** (Keel's default) holds a stated false-alarm rate,
//! [`FALSE_ALARM_RATE`] (5%), for every method and every pair of window sizes, including a
//! small current window against a large reference:
//!
//! | smaller window | values | test | drift when |
//! |---|---|---|---|
//! | ≤ 1000 rows | numeric, > 5 unique | two-sample Kolmogorov–Smirnov ([`ks_2samp`]) | p ≤ 0.05 |
//! | ≤ 1000 rows | categorical, or numeric ≤ 5 unique; > 2 unique | chi-square test of homogeneity of the two samples' counts ([`chi_square_homogeneity`], scipy's `chi2_contingency`) | p < 0.05 |
//! | ≤ 1000 rows | same, ≤ 2 unique (binary) | two-proportion Z-test ([`z_test`]) | p < 0.05 |
//! | both > 1000 rows | numeric, > 5 unique | Wasserstein distance / max(reference std, 0.001) ([`wasserstein_normalised`]) | ≥ calibrated threshold |
//! | both > 1000 rows | categorical, or numeric ≤ 5 unique | Jensen–Shannon distance, natural log ([`jensen_shannon_distance`]) | ≥ calibrated threshold |
//! | on request | any | PSI with Evidently's binning and empty-bin floor ([`psi`]) | ≥ calibrated threshold |
//!
//! The choice looks at *both* windows: a test with a p-value holds its rate at any size,
//! whereas a distance's sampling noise grows as the smaller window shrinks (Evidently chooses
//! from the reference alone, so 1,500 reference rows against 50 current ones got a distance
//! with a fixed 0.1 threshold, which pure noise exceeds in most windows). The distances have no
//! p-value, so their default threshold is calibrated for the two windows at hand by
//! permutation (see [`permutation`]): the value pure noise exceeds in at most 5% of 199 seeded
//! re-splits of the pooled rows, and never less than Evidently's 0.1, so large windows do not
//! alert on negligible differences. The chi-square test compares both samples (a 2 × k
//! contingency table) instead of testing the current counts against the reference
//! proportions as if those were exact, which under no drift alarms in about 23% of windows of
//! 600 vs 500 rows at "5%". The simulation test in `tests/tuning.rs` measures each method's
//! false-alarm rate over thousands of seeded no-drift windows, and its power.
//!
//! **[`Defaults::Evidently`]** reproduces Evidently's defaults exactly, for comparison: the
//! choice from the reference size alone, fixed thresholds, and chi-square goodness of fit
//! against the reference proportions. Sources: the "Data drift algorithm" page
//! (docs.evidentlyai.com/reference/data-drift-algorithm) and Evidently's code,
//! `src/evidently/legacy/calculations/stattests/registry.py` (`_get_default_stattest`) with
//! the tests in the same directory (`ks_stattest.py`, `chisquare_stattest.py`,
//! `z_stattest.py`, `wasserstein_distance_norm.py`, `jensenshannon.py`, `psi.py`,
//! `utils.py`): tests up to 1000 *reference* rows, distances above, with thresholds 0.05
//! (p-values) and 0.1 (distances).
//!
//! "Unique values" are counted over both samples pooled, as in Evidently. The comparisons
//! (`≤` for KS, `<` for chi-square and Z, `≥` for distances) are Evidently's. The binary case
//! uses the Z-test, as Evidently does. The Jensen–Shannon distance uses the natural
//! logarithm: current Evidently calls `distance.jensenshannon(p, q, base=None)`; some older
//! versions of `jensenshannon.py` passed base 2, which gives values larger by 1/√ln 2 ≈ 1.20.
//! A threshold given in [`Options::threshold`] is used as it is, with no calibration: a fixed
//! effect size for distances, whose false-alarm rate then depends on the window sizes.
//!
//! Unlike Evidently, which drops missing values, NaN or infinite values are an [`Error`] here:
//! the caller decides how to treat missing data. Each sample holds at most
//! [`crate::MAX_VALUES`] values.

mod categorical;
mod distance;
mod kolmogorov;
mod ks;
pub mod permutation;

pub use categorical::{
    chi_square, chi_square_homogeneity, z_test, ChiSquare, ZTest, CHI_SQUARE_SUM_TOLERANCE,
};
pub use distance::{
    binned_proportions, jensen_shannon_distance, psi, psi_from_proportions, wasserstein_distance,
    wasserstein_normalised, Binned, Binning, NormalisedWasserstein, HISTOGRAM_MIN_UNIQUE,
    PSI_EMPTY_BIN_FLOOR, WASSERSTEIN_MIN_NORM,
};
pub use kolmogorov::kstwo_sf;
pub use ks::{ks_2samp, KsResult, PValueMethod, MAX_EXACT_SAMPLE};
pub use permutation::{Calibration, FALSE_ALARM_RATE, PERMUTATIONS};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{check_finite, check_len, Error};

/// Above this many reference rows Evidently switches from tests to distances.
pub const SMALL_REFERENCE_MAX_ROWS: usize = 1000;
/// Keel's default uses a test (with a p-value) while either window has at most this many
/// rows, and a distance only when both have more.
pub const SMALL_WINDOW_MAX_ROWS: usize = 1000;
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
    /// Every method, in the order their names are listed in messages.
    pub const ALL: [Method; 6] = [
        Method::Ks,
        Method::Wasserstein,
        Method::ChiSquare,
        Method::ZTest,
        Method::JensenShannon,
        Method::Psi,
    ];

    /// The one spelling of the method everywhere: configuration, API, journal, CLI.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ks => "ks",
            Method::Wasserstein => "wasserstein",
            Method::ChiSquare => "chi_square",
            Method::ZTest => "z_test",
            Method::JensenShannon => "jensen_shannon",
            Method::Psi => "psi",
        }
    }

    /// The method named `name` (exactly as [`Method::name`] spells it).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.name() == name)
    }

    /// Whether the method's value is a distance (no p-value).
    pub fn is_distance(self) -> bool {
        matches!(
            self,
            Method::Wasserstein | Method::JensenShannon | Method::Psi
        )
    }

    /// Evidently's default threshold for the method (for a distance, also the least a
    /// calibrated threshold can be).
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

/// Which defaults [`detect`] applies (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Defaults {
    /// Keel's: the method from both window sizes, chi-square of homogeneity, distance
    /// thresholds calibrated to a 5% false-alarm rate for the window sizes.
    #[default]
    Calibrated,
    /// Evidently's, exactly: the method from the reference size, fixed thresholds, chi-square
    /// goodness of fit against the reference proportions.
    Evidently,
}

/// Overrides for [`detect`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// Force a method instead of the default choice.
    pub method: Option<Method>,
    /// Override the method's default threshold (must be finite and > 0); used as it is.
    pub threshold: Option<f64>,
    pub defaults: Defaults,
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
    let method = match (options.method, options.defaults) {
        (Some(method), _) => method,
        (None, Defaults::Calibrated) => default_method(reference, current, unique),
        (None, Defaults::Evidently) => evidently_method(reference, unique),
    };
    let (value, mut parameters) = run(method, reference, current, unique, options.defaults)?;
    let threshold = match options.threshold {
        Some(threshold) if threshold.is_finite() && threshold > 0.0 => threshold,
        Some(threshold) => {
            return Err(Error::OutOfRange {
                what: "drift threshold",
                value: threshold,
                range: "(0, ∞)",
            })
        }
        None if options.defaults == Defaults::Calibrated && method.is_distance() => {
            let calibration = calibrate(method, reference, current)?;
            parameters["calibration"] = json!(calibration);
            calibration.threshold()
        }
        None => method.default_threshold(),
    };
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

/// Keel's default choice (see the module table): a test while either window is small.
pub fn default_method(reference: &Values, current: &Values, unique_pooled: usize) -> Method {
    let smaller = reference.len().min(current.len());
    choose(reference, smaller <= SMALL_WINDOW_MAX_ROWS, unique_pooled)
}

/// Evidently's default choice: from the reference size alone.
pub fn evidently_method(reference: &Values, unique_pooled: usize) -> Method {
    choose(
        reference,
        reference.len() <= SMALL_REFERENCE_MAX_ROWS,
        unique_pooled,
    )
}

fn choose(reference: &Values, small: bool, unique_pooled: usize) -> Method {
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

/// The size-aware threshold of a distance method (see [`permutation`]).
fn calibrate(method: Method, reference: &Values, current: &Values) -> Result<Calibration, Error> {
    let floor = method.default_threshold();
    if method == Method::Wasserstein {
        let (reference, current) = numeric_pair(reference, current, "Wasserstein")?;
        let pooled: Vec<f64> = reference.iter().chain(current).copied().collect();
        return permutation::wasserstein(&pooled, reference.len(), floor, WASSERSTEIN_MIN_NORM);
    }
    let binned = binned_proportions(reference, current)?;
    let counts = |proportions: &[f64], rows: usize| -> Vec<u64> {
        proportions
            .iter()
            .map(|share| (share * rows as f64).round() as u64)
            .collect()
    };
    permutation::binned(
        method,
        &counts(&binned.reference, reference.len()),
        &counts(&binned.current, current.len()),
        floor,
    )
}

fn run(
    method: Method,
    reference: &Values,
    current: &Values,
    unique: usize,
    defaults: Defaults,
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
        Method::ChiSquare if defaults == Defaults::Calibrated => {
            let counts = aligned_counts(reference, current)?;
            let result = chi_square_homogeneity(&counts.reference, &counts.current)?;
            Ok((
                result.p_value,
                json!({
                    "test": "homogeneity",
                    "statistic": result.statistic,
                    "dof": result.dof,
                    "categories": counts.reference.len(),
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
                    "test": "goodness_of_fit",
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
        assert_eq!(evidently_method(&numeric(&many), 100), Method::Ks);
        assert_eq!(evidently_method(&numeric(&few), 3), Method::ChiSquare);
        assert_eq!(evidently_method(&numeric(&binary), 2), Method::ZTest);
        assert_eq!(
            evidently_method(&numeric(&large), 2000),
            Method::Wasserstein
        );
        assert_eq!(evidently_method(&numeric(&large), 4), Method::JensenShannon);
    }

    #[test]
    fn default_method_looks_at_both_windows() {
        let many: Vec<f64> = (0..100).map(f64::from).collect();
        let large: Vec<f64> = (0..2000).map(f64::from).collect();
        let (small, large) = (numeric(&many), numeric(&large));
        assert_eq!(default_method(&large, &small, 2000), Method::Ks);
        assert_eq!(default_method(&small, &large, 2000), Method::Ks);
        assert_eq!(default_method(&large, &large, 2000), Method::Wasserstein);
        assert_eq!(default_method(&large, &small, 4), Method::ChiSquare);
        assert_eq!(default_method(&large, &large, 4), Method::JensenShannon);
        assert_eq!(evidently_method(&large, 2000), Method::Wasserstein);
    }

    #[test]
    fn names_are_snake_case_and_match_serde() {
        for method in Method::ALL {
            assert_eq!(
                serde_json::to_value(method).unwrap(),
                serde_json::Value::from(method.name())
            );
            assert_eq!(Method::from_name(method.name()), Some(method));
        }
        assert_eq!(Method::from_name("chisquare"), None);
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
            ..Options::default()
        };
        assert!(detect(&categories, &categories, &forced).is_err());
    }
}
