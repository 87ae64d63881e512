//! Two-sample Kolmogorov–Smirnov test, two-sided, matching `scipy.stats.ks_2samp` with
//! `method="auto"` (scipy 1.17, `scipy/stats/_stats_py.py`):
//!
//! - the statistic D = max |F₁(x) − F₂(x)| over all observed x (ties handled by counting
//!   values ≤ x, as scipy's `searchsorted(side="right")` does);
//! - **exact** p-value when max(n₁, n₂) ≤ 10 000: D is rounded to a multiple of
//!   1/lcm(n₁, n₂) and P(D ≥ d) counted over lattice paths, by the closed alternating sum for
//!   n₁ = n₂ and by Hodges' (1958) inside method in Viehmann's (2021, arXiv:2102.08037)
//!   numerically stable form otherwise — the algorithms scipy uses;
//! - **asymptotic** p-value otherwise (or if the exact computation leaves [0, 1]): the finite-n
//!   two-sided Kolmogorov distribution P(D_n ≥ d) with n = round(n₁n₂/(n₁ + n₂)), scipy's
//!   `kstwo.sf` (see [`super::kolmogorov`]).
//!
//! The exact p-value assumes continuous data; with ties it is conservative, as in scipy.

use serde::{Deserialize, Serialize};

use super::kolmogorov::kstwo_sf;
use crate::{check_finite, Error};

/// Up to this sample size (the larger of the two) the p-value is exact (scipy's `MAX_AUTO_N`).
pub const MAX_EXACT_SAMPLE: usize = 10_000;

/// How the p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PValueMethod {
    Exact,
    Asymptotic,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// D, the largest distance between the two empirical CDFs.
    pub statistic: f64,
    pub p_value: f64,
    pub p_value_method: PValueMethod,
}

/// The two-sided two-sample KS test of `first` against `second`. Errors on empty samples,
/// NaN or infinite values, or more than [`crate::MAX_VALUES`] values.
pub fn ks_2samp(first: &[f64], second: &[f64]) -> Result<KsResult, Error> {
    check_finite("first KS sample", first)?;
    check_finite("second KS sample", second)?;
    let mut first = first.to_vec();
    let mut second = second.to_vec();
    first.sort_by(f64::total_cmp);
    second.sort_by(f64::total_cmp);
    Ok(ks_2samp_sorted(&first, &second))
}

/// [`ks_2samp`] on samples already sorted ascending, finite and non-empty.
pub(crate) fn ks_2samp_sorted(first: &[f64], second: &[f64]) -> KsResult {
    let statistic = statistic_sorted(first, second);
    let n1 = first.len() as u64;
    let n2 = second.len() as u64;
    if first.len().max(second.len()) <= MAX_EXACT_SAMPLE {
        let divisor = gcd(n1, n2);
        let lcm = (n1 / divisor) * n2;
        let steps = (statistic * lcm as f64).round_ties_even() as u64;
        let rounded = steps as f64 / lcm as f64;
        let p_value = if steps == 0 {
            1.0
        } else if n1 == n2 {
            probability_outside_square(n1, steps)
        } else {
            probability_outside_band(n1, n2, divisor, steps)
        };
        if (0.0..=1.0).contains(&p_value) {
            return KsResult {
                statistic: rounded,
                p_value,
                p_value_method: PValueMethod::Exact,
            };
        }
        return asymptotic(n1, n2, rounded);
    }
    asymptotic(n1, n2, statistic)
}

fn asymptotic(n1: u64, n2: u64, statistic: f64) -> KsResult {
    let (larger, smaller) = if n1 >= n2 { (n1, n2) } else { (n2, n1) };
    let (larger, smaller) = (larger as f64, smaller as f64);
    let effective = (larger * smaller / (larger + smaller))
        .round_ties_even()
        .max(1.0) as u64;
    KsResult {
        statistic,
        p_value: kstwo_sf(effective, statistic).clamp(0.0, 1.0),
        p_value_method: PValueMethod::Asymptotic,
    }
}

/// max_x |F₁(x) − F₂(x)| for sorted samples, evaluated after each distinct value.
fn statistic_sorted(first: &[f64], second: &[f64]) -> f64 {
    let n1 = first.len() as f64;
    let n2 = second.len() as f64;
    let (mut i, mut j) = (0, 0);
    let mut largest: f64 = 0.0;
    while i < first.len() && j < second.len() {
        let value = if first[i] <= second[j] {
            first[i]
        } else {
            second[j]
        };
        while i < first.len() && first[i] <= value {
            i += 1;
        }
        while j < second.len() && second[j] <= value {
            j += 1;
        }
        largest = largest.max((i as f64 / n1 - j as f64 / n2).abs());
    }
    // Past the end of one sample, the difference only shrinks; the loop has seen the maximum
    // except for the point where one sample ends, which is covered inside the loop.
    largest
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// P(D_{n,n} ≥ h/n) = 2 Σ_{k≥1} (−1)^{k+1} C(2n, n − kh) / C(2n, n), evaluated as a nested
/// product (Horner form) so that the alternating sum does not cancel.
fn probability_outside_square(n: u64, h: u64) -> f64 {
    // Signed: n − kh − j goes negative for the largest k, where the factor 0 that precedes
    // it has already zeroed the term.
    let (n, h) = (n as i64, h as i64);
    let mut probability = 0.0;
    let mut k = n / h;
    loop {
        let mut term = 1.0;
        for j in 0..h {
            term = (n - k * h - j) as f64 * term / (n + k * h + j + 1) as f64;
        }
        probability = term * (1.0 - probability);
        if k == 0 {
            break;
        }
        k -= 1;
    }
    2.0 * probability
}

/// The fraction of lattice paths from (0, 0) to (m, n) that leave the band
/// |x/m − y/n| < h/lcm(m, n), computed column by column directly as a probability
/// (Viehmann's recursion for 1 − p in Hodges' inside method), keeping only the window of rows
/// inside the band.
fn probability_outside_band(m: u64, n: u64, divisor: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let m_reduced = m / divisor as i64;
    let n_reduced = n / divisor as i64;
    let ceil_div = |numerator: i64| -> i64 { -((-numerator).div_euclid(m_reduced)) };

    let mut min_j: i64 = 0;
    let mut max_j: i64 = ceil_div(h).min(n + 1);
    let mut current_length = max_j - min_j;
    let length = (2 * max_j + 2).min(n + 1).max(1) as usize;
    let mut column = vec![1.0_f64; length];
    for entry in column.iter_mut().take(max_j.max(0) as usize) {
        *entry = 0.0;
    }
    for i in 1..=m {
        let last_min_j = min_j;
        let last_length = current_length;
        min_j = ((n_reduced * i - h).div_euclid(m_reduced) + 1)
            .max(0)
            .min(n);
        max_j = ceil_div(n_reduced * i + h).min(n + 1);
        if max_j <= min_j {
            return 1.0;
        }
        let shift = (min_j - last_min_j) as usize;
        let mut value = if min_j == 0 { 0.0 } else { 1.0 };
        let (row_f, width) = (i as f64, (max_j - min_j) as usize);
        for offset in 0..width {
            let j = (offset as i64 + min_j) as f64;
            let previous = column.get(offset + shift).copied().unwrap_or(1.0);
            value = (previous * row_f + value * j) / (row_f + j);
            if let Some(slot) = column.get_mut(offset) {
                *slot = value;
            }
        }
        current_length = max_j - min_j;
        if last_length > current_length {
            let start = current_length as usize;
            let end = (start + (last_length - current_length) as usize).min(column.len());
            for entry in column.iter_mut().take(end).skip(start) {
                *entry = 1.0;
            }
        }
    }
    column
        .get((max_j - min_j - 1).max(0) as usize)
        .copied()
        .unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_have_zero_statistic_and_p_one() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0];
        let result = ks_2samp(&values, &values).unwrap();
        assert_eq!(result.statistic, 0.0);
        assert_eq!(result.p_value, 1.0);
    }

    #[test]
    fn separated_samples_have_statistic_one() {
        let result = ks_2samp(&[1.0, 2.0, 3.0], &[10.0, 11.0, 12.0, 13.0]).unwrap();
        assert_eq!(result.statistic, 1.0);
        // All C(7,3) = 35 orderings equally likely; two are this extreme: p = 2/35.
        assert!((result.p_value - 2.0 / 35.0).abs() < 1e-15);
    }

    #[test]
    fn empty_and_nan_are_errors() {
        assert!(ks_2samp(&[], &[1.0]).is_err());
        assert!(ks_2samp(&[1.0, f64::NAN], &[1.0]).is_err());
    }
}
