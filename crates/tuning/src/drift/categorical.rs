//! Tests on counts per category: Pearson's chi-square goodness of fit and the two-proportion
//! Z-test Evidently uses for binary features.

use serde::{Deserialize, Serialize};

use crate::special::{chi_square_sf, normal_two_sided_p};
use crate::{check_finite, Error};

/// scipy's `chisquare` refuses observed and expected totals that differ by more than this
/// relative amount; so does [`chi_square`].
pub const CHI_SQUARE_SUM_TOLERANCE: f64 = 1e-8;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquare {
    /// Σ (observed − expected)² / expected; +∞ when a category expected 0 times occurs.
    pub statistic: f64,
    /// Categories − 1.
    pub dof: u64,
    pub p_value: f64,
}

/// Pearson's chi-square goodness of fit of `observed` counts against `expected` counts, as
/// `scipy.stats.chisquare(observed, expected)`: p = Q((k − 1)/2, statistic/2).
///
/// Needs at least two categories, the same length, finite non-negative values and equal totals
/// (within [`CHI_SQUARE_SUM_TOLERANCE`]). A category with expected 0 and observed > 0 makes the
/// statistic +∞ and p = 0 (numpy's behaviour too); one with both 0 contributes nothing (numpy
/// would give NaN).
pub fn chi_square(observed: &[f64], expected: &[f64]) -> Result<ChiSquare, Error> {
    check_finite("chi-square observed counts", observed)?;
    check_finite("chi-square expected counts", expected)?;
    if observed.len() != expected.len() {
        return Err(Error::Invalid {
            what: "chi-square",
            detail: "observed and expected have different numbers of categories",
        });
    }
    if observed.len() < 2 {
        return Err(Error::Invalid {
            what: "chi-square",
            detail: "at least two categories are needed",
        });
    }
    if observed.iter().chain(expected).any(|value| *value < 0.0) {
        return Err(Error::Invalid {
            what: "chi-square",
            detail: "a count is negative",
        });
    }
    let observed_sum: f64 = observed.iter().sum();
    let expected_sum: f64 = expected.iter().sum();
    let smaller = observed_sum.min(expected_sum);
    if smaller <= 0.0 || (observed_sum - expected_sum).abs() / smaller > CHI_SQUARE_SUM_TOLERANCE {
        return Err(Error::Invalid {
            what: "chi-square",
            detail: "observed and expected totals differ (or are zero); scale expected to the observed total",
        });
    }
    let mut statistic = 0.0;
    for (observed, expected) in observed.iter().zip(expected) {
        if *expected == 0.0 {
            if *observed > 0.0 {
                statistic = f64::INFINITY;
            }
            continue;
        }
        statistic += (observed - expected).powi(2) / expected;
    }
    let dof = observed.len() as u64 - 1;
    Ok(ChiSquare {
        statistic,
        dof,
        p_value: chi_square_sf(statistic, dof as f64),
    })
}

/// Pearson's chi-square test of homogeneity of two samples' counts per category, as
/// `scipy.stats.chi2_contingency([reference, current], correction=False)`: expected counts
/// come from the pooled proportions (row total × column total / grand total), dof = categories
/// − 1. Unlike [`chi_square`] against the reference proportions, this accounts for the
/// reference being a sample too, so its false-alarm rate is the nominal one at any pair of
/// sizes. Categories empty in both samples are left out.
pub fn chi_square_homogeneity(reference: &[u64], current: &[u64]) -> Result<ChiSquare, Error> {
    if reference.len() != current.len() {
        return Err(Error::Invalid {
            what: "chi-square homogeneity",
            detail: "the samples have different numbers of categories",
        });
    }
    let reference_rows: u64 = reference.iter().sum();
    let current_rows: u64 = current.iter().sum();
    if reference_rows == 0 || current_rows == 0 {
        return Err(Error::Empty {
            what: "chi-square homogeneity sample",
        });
    }
    let total = (reference_rows + current_rows) as f64;
    let mut statistic = 0.0;
    let mut categories = 0_u64;
    for (r, c) in reference.iter().zip(current) {
        let pooled = (r + c) as f64;
        if pooled == 0.0 {
            continue;
        }
        categories += 1;
        for (observed, rows) in [(*r, reference_rows), (*c, current_rows)] {
            let expected = rows as f64 * pooled / total;
            statistic += (observed as f64 - expected).powi(2) / expected;
        }
    }
    if categories < 2 {
        // One category in both samples: nothing can have changed.
        return Ok(ChiSquare {
            statistic: 0.0,
            dof: 0,
            p_value: 1.0,
        });
    }
    let dof = categories - 1;
    Ok(ChiSquare {
        statistic,
        dof,
        p_value: chi_square_sf(statistic, dof as f64),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZTest {
    /// (p_reference − p_current) / √(P(1 − P)(1/n_r + 1/n_c)), P the pooled proportion.
    pub z: f64,
    /// Two-sided: P(|Z| ≥ |z|).
    pub p_value: f64,
}

/// Two-proportion Z-test for independent samples (Evidently's `z_stattest.py`):
/// `reference_hits` of `reference_rows` against `current_hits` of `current_rows`.
/// When the pooled proportion is 0 or 1 (both samples hold one and the same value) the samples
/// are identical and p = 1, as in Evidently.
pub fn z_test(
    reference_hits: u64,
    reference_rows: u64,
    current_hits: u64,
    current_rows: u64,
) -> Result<ZTest, Error> {
    if reference_rows == 0 || current_rows == 0 {
        return Err(Error::Empty {
            what: "Z-test sample",
        });
    }
    if reference_hits > reference_rows || current_hits > current_rows {
        return Err(Error::Invalid {
            what: "Z-test",
            detail: "more hits than rows",
        });
    }
    let (n1, n2) = (reference_rows as f64, current_rows as f64);
    let p1 = reference_hits as f64 / n1;
    let p2 = current_hits as f64 / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2);
    if variance <= 0.0 {
        return Ok(ZTest {
            z: 0.0,
            p_value: 1.0,
        });
    }
    let z = (p1 - p2) / variance.sqrt();
    Ok(ZTest {
        z,
        p_value: normal_two_sided_p(z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_fit_has_p_one() {
        let result = chi_square(&[10.0, 20.0, 30.0], &[10.0, 20.0, 30.0]).unwrap();
        assert_eq!(result.statistic, 0.0);
        assert_eq!(result.p_value, 1.0);
        assert_eq!(result.dof, 2);
    }

    #[test]
    fn unexpected_category_is_certain_drift() {
        let result = chi_square(&[10.0, 5.0], &[15.0, 0.0]).unwrap();
        assert!(result.statistic.is_infinite());
        assert_eq!(result.p_value, 0.0);
    }

    #[test]
    fn mismatched_totals_are_refused() {
        assert!(chi_square(&[10.0, 20.0], &[10.0, 21.0]).is_err());
        assert!(chi_square(&[10.0], &[10.0]).is_err());
    }

    #[test]
    fn homogeneity_is_the_contingency_table_test() {
        // scipy.stats.chi2_contingency([[10, 20], [20, 10]], correction=False): expected 15 in
        // every cell, statistic 4 · 25/15, dof 1 — the same as chisquare over the four cells.
        let result = chi_square_homogeneity(&[10, 20], &[20, 10]).unwrap();
        let cells = chi_square(&[10.0, 20.0, 20.0, 10.0], &[15.0; 4]).unwrap();
        assert!((result.statistic - 100.0 / 15.0).abs() < 1e-12);
        assert!((result.statistic - cells.statistic).abs() < 1e-12);
        assert_eq!(result.dof, 1);
        assert!((result.p_value - 0.009_823_2).abs() < 1e-6, "{result:?}");
        // A category empty in both samples is left out; one category is no test.
        let result = chi_square_homogeneity(&[10, 0, 20], &[20, 0, 10]).unwrap();
        assert_eq!(result.dof, 1);
        assert_eq!(
            chi_square_homogeneity(&[5, 0], &[7, 0]).unwrap().p_value,
            1.0
        );
        assert!(chi_square_homogeneity(&[0, 0], &[1, 0]).is_err());
    }

    #[test]
    fn z_test_of_identical_proportions_is_not_significant() {
        let result = z_test(30, 100, 60, 200).unwrap();
        assert_eq!(result.z, 0.0);
        assert_eq!(result.p_value, 1.0);
        assert_eq!(z_test(0, 10, 0, 20).unwrap().p_value, 1.0);
    }
}
