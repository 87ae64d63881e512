//! Distances between two distributions: Wasserstein (earth mover's) for numeric samples, and
//! Jensen–Shannon and PSI over binned proportions, with Evidently's binning.

use serde::{Deserialize, Serialize};

use super::Values;
use crate::{check_finite, Error};

/// Evidently divides the Wasserstein distance by the reference's standard deviation, but never
/// by less than this (`wasserstein_distance_norm.py`: `max(np.std(reference_data), 0.001)`),
/// so a constant reference gives distance / 0.001 instead of a division by zero.
pub const WASSERSTEIN_MIN_NORM: f64 = 0.001;

/// PSI replaces an empty bin's proportion by this floor (or, when some bin is already smaller
/// than it, by that smallest proportion / 10⁶), as Evidently's `get_binned_data` does.
pub const PSI_EMPTY_BIN_FLOOR: f64 = 0.0001;

/// Numeric features with more distinct reference values than this are binned into a
/// histogram; others are compared value by value (Evidently's `get_binned_data`).
pub const HISTOGRAM_MIN_UNIQUE: usize = 20;

/// The first Wasserstein distance between two 1-D samples with equal weights, as
/// `scipy.stats.wasserstein_distance`: ∫ |F_u(x) − F_v(x)| dx over the merged sorted values.
pub fn wasserstein_distance(u: &[f64], v: &[f64]) -> Result<f64, Error> {
    check_finite("first Wasserstein sample", u)?;
    check_finite("second Wasserstein sample", v)?;
    let mut u = u.to_vec();
    let mut v = v.to_vec();
    u.sort_by(f64::total_cmp);
    v.sort_by(f64::total_cmp);
    Ok(wasserstein_sorted(&u, &v))
}

pub(crate) fn wasserstein_sorted(u: &[f64], v: &[f64]) -> f64 {
    let (n_u, n_v) = (u.len() as f64, v.len() as f64);
    let (mut i, mut j) = (0_usize, 0_usize);
    let mut total = 0.0;
    // Walk the merged values; between consecutive merged values x_k < x_{k+1} both CDFs are
    // constant (counts of values ≤ x_k).
    let mut current = match (u.first(), v.first()) {
        (Some(a), Some(b)) => a.min(*b),
        _ => return 0.0,
    };
    loop {
        while i < u.len() && u[i] <= current {
            i += 1;
        }
        while j < v.len() && v[j] <= current {
            j += 1;
        }
        let next = match (u.get(i), v.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        total += (i as f64 / n_u - j as f64 / n_v).abs() * (next - current);
        current = next;
    }
    total
}

/// Population standard deviation (numpy's `np.std`, ddof = 0), two-pass.
pub(crate) fn population_std(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let count = values.len() as f64;
    let mean = values.iter().sum::<f64>() / count;
    let squares: f64 = values.iter().map(|value| (value - mean).powi(2)).sum();
    (squares / count).sqrt()
}

/// The Wasserstein distance divided by max(std(reference), [`WASSERSTEIN_MIN_NORM`]), the
/// drift score Evidently uses for large numeric samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormalisedWasserstein {
    pub distance: f64,
    pub reference_std: f64,
    /// The divisor actually used.
    pub norm: f64,
    pub value: f64,
}

pub fn wasserstein_normalised(
    reference: &[f64],
    current: &[f64],
) -> Result<NormalisedWasserstein, Error> {
    let distance = wasserstein_distance(reference, current)?;
    let reference_std = population_std(reference);
    let norm = reference_std.max(WASSERSTEIN_MIN_NORM);
    Ok(NormalisedWasserstein {
        distance,
        reference_std,
        norm,
        value: distance / norm,
    })
}

fn check_distribution(what: &'static str, values: &[f64]) -> Result<f64, Error> {
    check_finite(what, values)?;
    if values.iter().any(|value| *value < 0.0) {
        return Err(Error::Invalid {
            what,
            detail: "a proportion or count is negative",
        });
    }
    let sum: f64 = values.iter().sum();
    if sum <= 0.0 {
        return Err(Error::Invalid {
            what,
            detail: "all proportions are zero",
        });
    }
    Ok(sum)
}

/// x·ln(x/y) with scipy's `rel_entr` conventions: 0 when x = 0, +∞ when y = 0 < x.
fn relative_entropy(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else if y == 0.0 {
        f64::INFINITY
    } else {
        x * (x / y).ln()
    }
}

/// Jensen–Shannon distance (the square root of the divergence), natural logarithm, as
/// `scipy.spatial.distance.jensenshannon(p, q)`: both vectors are first normalised to sum 1.
/// Ranges over [0, √ln 2].
pub fn jensen_shannon_distance(p: &[f64], q: &[f64]) -> Result<f64, Error> {
    let p_sum = check_distribution("Jensen-Shannon p", p)?;
    let q_sum = check_distribution("Jensen-Shannon q", q)?;
    if p.len() != q.len() {
        return Err(Error::Invalid {
            what: "Jensen-Shannon distance",
            detail: "p and q have different lengths",
        });
    }
    let (mut left, mut right) = (0.0, 0.0);
    for (p_value, q_value) in p.iter().zip(q) {
        let (p_value, q_value) = (p_value / p_sum, q_value / q_sum);
        let middle = (p_value + q_value) / 2.0;
        left += relative_entropy(p_value, middle);
        right += relative_entropy(q_value, middle);
    }
    Ok(((left + right) / 2.0).max(0.0).sqrt())
}

/// Replaces zeros by Evidently's floor: the smallest non-zero proportion / 10⁶ if that is at
/// most [`PSI_EMPTY_BIN_FLOOR`], else the floor itself.
fn fill_zeroes(proportions: &mut [f64]) {
    let smallest = proportions
        .iter()
        .copied()
        .filter(|value| *value != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return;
    }
    let fill = if smallest <= PSI_EMPTY_BIN_FLOOR {
        smallest / 1e6
    } else {
        PSI_EMPTY_BIN_FLOOR
    };
    for value in proportions.iter_mut().filter(|value| **value == 0.0) {
        *value = fill;
    }
}

/// Population stability index Σ (r − c)·ln(r / c) over proportions, after replacing empty
/// bins as Evidently does ([`PSI_EMPTY_BIN_FLOOR`]). The inputs are proportions per bin in the
/// same bin order (they need not sum exactly to 1).
pub fn psi_from_proportions(reference: &[f64], current: &[f64]) -> Result<f64, Error> {
    check_distribution("PSI reference proportions", reference)?;
    check_distribution("PSI current proportions", current)?;
    if reference.len() != current.len() {
        return Err(Error::Invalid {
            what: "PSI",
            detail: "reference and current have different numbers of bins",
        });
    }
    let mut reference = reference.to_vec();
    let mut current = current.to_vec();
    fill_zeroes(&mut reference);
    fill_zeroes(&mut current);
    Ok(reference
        .iter()
        .zip(&current)
        .map(|(r, c)| (r - c) * (r / c).ln())
        .sum())
}

/// How values were put into bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binning {
    /// Equal-width histogram over the pooled values with Sturges' number of bins
    /// (`np.histogram_bin_edges(pooled, bins="sturges")`).
    Sturges,
    /// One bin per distinct value (category) seen in either sample.
    Categories,
}

/// Proportions of the reference and the current sample in the same bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binned {
    pub binning: Binning,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
}

/// Evidently's `get_binned_data` without the zero filling: numeric values with more than
/// [`HISTOGRAM_MIN_UNIQUE`] distinct reference values go into a Sturges histogram over both
/// samples pooled; everything else is counted per distinct value. (Evidently's `n_bins`
/// argument, 30, is not used by that function, so there is none here.)
pub fn binned_proportions(reference: &Values, current: &Values) -> Result<Binned, Error> {
    super::check_values(reference, current)?;
    if let (Values::Numeric(reference), Values::Numeric(current)) = (reference, current) {
        if super::count_unique_numeric(reference) > HISTOGRAM_MIN_UNIQUE {
            return Ok(sturges_histogram(reference, current));
        }
    }
    let counts = super::aligned_counts(reference, current)?;
    let reference_rows = reference.len() as f64;
    let current_rows = current.len() as f64;
    Ok(Binned {
        binning: Binning::Categories,
        reference: counts
            .reference
            .iter()
            .map(|count| *count as f64 / reference_rows)
            .collect(),
        current: counts
            .current
            .iter()
            .map(|count| *count as f64 / current_rows)
            .collect(),
    })
}

/// `np.histogram_bin_edges(pooled, "sturges")` then `np.histogram` of each sample, reproducing
/// numpy's arithmetic: width = range / (log₂ N + 1), bins = ⌈range / width⌉, edges
/// `start + i·(range / bins)` with the last edge exactly the maximum; bins are [e_i, e_{i+1})
/// except the last, which is closed.
fn sturges_histogram(reference: &[f64], current: &[f64]) -> Binned {
    let pooled = reference.iter().chain(current);
    let minimum = pooled.clone().copied().fold(f64::INFINITY, f64::min);
    let maximum = pooled.copied().fold(f64::NEG_INFINITY, f64::max);
    let (first, last) = if minimum == maximum {
        (minimum - 0.5, maximum + 0.5)
    } else {
        (minimum, maximum)
    };
    let total = (reference.len() + current.len()) as f64;
    let width = (maximum - minimum) / (total.log2() + 1.0);
    let bins = if width > 0.0 {
        ((last - first) / width).ceil().max(1.0) as usize
    } else {
        1
    };
    let step = (last - first) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + first).collect();
    if let Some(end) = edges.last_mut() {
        *end = last;
    }
    Binned {
        binning: Binning::Sturges,
        reference: histogram(reference, &edges),
        current: histogram(current, &edges),
    }
}

fn histogram(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let count = sorted.len() as f64;
    let below = |edge: f64| sorted.partition_point(|value| *value < edge);
    let at_most = |edge: f64| sorted.partition_point(|value| *value <= edge);
    let bins = edges.len().saturating_sub(1);
    (0..bins)
        .map(|bin| {
            let start = below(edges[bin]);
            let end = if bin + 1 == bins {
                at_most(edges[bin + 1])
            } else {
                below(edges[bin + 1])
            };
            (end - start) as f64 / count
        })
        .collect()
}

/// PSI of two samples with Evidently's binning ([`binned_proportions`]) and empty-bin floor.
pub fn psi(reference: &Values, current: &Values) -> Result<(f64, Binned), Error> {
    let binned = binned_proportions(reference, current)?;
    let value = psi_from_proportions(&binned.reference, &binned.current)?;
    Ok((value, binned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasserstein_of_a_shift_is_the_shift() {
        let u = [0.0, 1.0, 2.0, 3.0];
        let v = [0.5, 1.5, 2.5, 3.5];
        assert!((wasserstein_distance(&u, &v).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(wasserstein_distance(&u, &u).unwrap(), 0.0);
    }

    #[test]
    fn jensen_shannon_is_symmetric_and_bounded() {
        let p = [0.2, 0.8, 0.0];
        let q = [0.0, 0.1, 0.9];
        let forward = jensen_shannon_distance(&p, &q).unwrap();
        let backward = jensen_shannon_distance(&q, &p).unwrap();
        assert!((forward - backward).abs() < 1e-15);
        assert!(forward <= std::f64::consts::LN_2.sqrt());
        let disjoint = jensen_shannon_distance(&[1.0, 0.0], &[0.0, 1.0]).unwrap();
        assert!((disjoint - std::f64::consts::LN_2.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn psi_is_zero_for_equal_proportions() {
        assert_eq!(psi_from_proportions(&[0.5, 0.5], &[0.5, 0.5]).unwrap(), 0.0);
        assert!(psi_from_proportions(&[0.5, -0.5], &[0.5, 0.5]).is_err());
    }
}
