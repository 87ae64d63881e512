//! Size-aware default thresholds for the distance methods (Wasserstein, Jensen–Shannon, PSI),
//! which have no p-value: the no-drift distribution of the distance *for these two windows*
//! is estimated by permutation, and the threshold is the value that distance exceeds in at
//! most [`FALSE_ALARM_RATE`] of the permutations.
//!
//! Under no drift the reference and the current rows come from one distribution, so every
//! split of the pooled rows into a "reference" of `n_r` rows and a "current" of `n_c` rows is
//! as likely as the observed one. [`PERMUTATIONS`] random splits (SplitMix64 with the fixed
//! [`SEED`], so a result can be recomputed exactly) give distances T₁…T_B; the observed
//! distance T is drift when the permutation p-value (1 + #{Tᵢ ≥ T}) / (B + 1) is at most the
//! false-alarm rate, that is when T is greater than the (B − k)-th smallest Tᵢ with
//! k = ⌊rate·(B + 1)⌋ − 1 (the 10th largest of 199). That value, moved up one ulp so that the
//! usual `value ≥ threshold` comparison applies, is the threshold; it is never below the
//! method's fixed effect-size threshold (Evidently's 0.1), so large windows do not alert on
//! differences too small to matter.
//!
//! Binned methods keep the bins of the pooled rows (a permutation does not change them), so a
//! permutation only redistributes the pooled count of each bin: O(min(n_r, n_c) + bins).
//! Wasserstein walks the sorted pooled values once per permutation: O(n_r + n_c). Above
//! [`MAX_CALIBRATION_ROWS`] pooled rows the permutations run on a random subsample of the
//! pooled rows with both windows scaled down in proportion, and the quantile is rescaled to
//! the real sizes by the distance's large-sample rate (distance ∝ n_eff^(−1/2) for Wasserstein
//! and Jensen–Shannon, PSI ∝ n_eff^(−1), n_eff = n_r·n_c / (n_r + n_c)); at those sizes the
//! effect-size floor decides almost always.

use serde::{Deserialize, Serialize};

use super::distance::{jensen_shannon_distance, psi_from_proportions};
use super::Method;
use crate::random::{mix64, SplitMix64};
use crate::Error;

/// Permutations per calibration: with a 5% rate the threshold is the 10th largest of 199.
pub const PERMUTATIONS: usize = 199;
/// The share of no-drift windows allowed to alert.
pub const FALSE_ALARM_RATE: f64 = 0.05;
/// The seed of every calibration ("keeldrif"), mixed with a hash of the pooled rows (which
/// does not depend on how they are split between the windows): the same windows always give
/// the same threshold, and different windows get different permutations. One fixed set of
/// permutations for every window would make every window's rate err the same way (by about
/// ±1.5 points with 199 permutations); drawn afresh per pooled sample, the errors average out
/// and the rate over many windows is the nominal one.
pub const SEED: u64 = 0x6B65_656C_6472_6966;
/// Most pooled rows permuted; larger windows are calibrated on a subsample (see the module).
pub const MAX_CALIBRATION_ROWS: usize = 20_000;

/// How a default distance threshold was derived, stored with the result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The no-drift quantile of the distance at these window sizes.
    pub null_quantile: f64,
    /// The method's fixed effect-size threshold, the least the threshold can be.
    pub floor: f64,
    pub permutations: usize,
    pub false_alarm_rate: f64,
    /// Pooled rows the permutations ran on (all of them, or the subsample).
    pub calibration_rows: usize,
}

impl Calibration {
    /// The threshold to compare with `value ≥ threshold`: just above the quantile, or the floor.
    pub fn threshold(&self) -> f64 {
        self.null_quantile.next_up().max(self.floor)
    }
}

/// The index, in ascending order, of the permutation quantile (see the module).
fn quantile_index(permutations: usize) -> usize {
    let allowed = ((FALSE_ALARM_RATE * (permutations + 1) as f64).floor() as usize).max(1);
    permutations.saturating_sub(allowed)
}

fn quantile(mut distances: Vec<f64>) -> f64 {
    distances.sort_by(f64::total_cmp);
    let index = quantile_index(distances.len());
    distances.get(index).copied().unwrap_or(0.0)
}

fn effective_size(reference_rows: usize, current_rows: usize) -> f64 {
    let (r, c) = (reference_rows as f64, current_rows as f64);
    r * c / (r + c)
}

/// Sizes scaled to at most [`MAX_CALIBRATION_ROWS`] pooled rows (each window at least 1).
fn scaled_sizes(reference_rows: usize, current_rows: usize) -> (usize, usize) {
    let total = reference_rows + current_rows;
    if total <= MAX_CALIBRATION_ROWS {
        return (reference_rows, current_rows);
    }
    let scale = |rows: usize| {
        ((rows as f64 * MAX_CALIBRATION_ROWS as f64 / total as f64).round() as usize).max(1)
    };
    (scale(reference_rows), scale(current_rows))
}

/// Multiplies a quantile at the scaled sizes back to the real ones.
fn rescale(method: Method, quantile: f64, scaled: (usize, usize), real: (usize, usize)) -> f64 {
    if scaled == real {
        return quantile;
    }
    let ratio = effective_size(scaled.0, scaled.1) / effective_size(real.0, real.1);
    match method {
        Method::Psi => quantile * ratio,
        _ => quantile * ratio.sqrt(),
    }
}

/// Puts a random `count` of `items` at its front (partial Fisher–Yates). Every call draws a
/// uniform subset whatever order `items` was left in by the previous one.
fn draw_front<T>(rng: &mut SplitMix64, items: &mut [T], count: usize) {
    let len = items.len();
    for position in 0..count.min(len) {
        let chosen = position + rng.below((len - position) as u64) as usize;
        items.swap(position, chosen);
    }
}

/// The threshold for Wasserstein / max(reference std, floor_norm) over `pooled` (both windows'
/// values), `reference_rows` of which are the reference.
pub(crate) fn wasserstein(
    pooled: &[f64],
    reference_rows: usize,
    floor: f64,
    min_norm: f64,
) -> Result<Calibration, Error> {
    let current_rows = pooled.len().saturating_sub(reference_rows);
    check_sizes(reference_rows, current_rows)?;
    // A sum of mixed bits: the same whatever the order of the rows.
    let hash = pooled.iter().fold(0_u64, |hash, value| {
        hash.wrapping_add(mix64((value + 0.0).to_bits()))
    });
    let mut rng = SplitMix64::new(mix64(SEED ^ hash));
    let (scaled_reference, scaled_current) = scaled_sizes(reference_rows, current_rows);
    let mut values = pooled.to_vec();
    draw_front(&mut rng, &mut values, scaled_reference + scaled_current);
    values.truncate(scaled_reference + scaled_current);
    values.sort_by(f64::total_cmp);
    // Centred, so that the one-pass variance below loses no precision on large offsets.
    let centre = values.iter().sum::<f64>() / values.len() as f64;
    for value in &mut values {
        *value -= centre;
    }
    let total: f64 = values.iter().sum();
    let total_squares: f64 = values.iter().map(|v| v * v).sum();
    let mut positions: Vec<usize> = (0..values.len()).collect();
    let mut in_current = vec![false; values.len()];
    let mut distances = Vec::with_capacity(PERMUTATIONS);
    for _ in 0..PERMUTATIONS {
        draw_front(&mut rng, &mut positions, scaled_current);
        let (mut current_sum, mut current_squares) = (0.0, 0.0);
        for &position in &positions[..scaled_current] {
            in_current[position] = true;
            current_sum += values[position];
            current_squares += values[position] * values[position];
        }
        let distance = permuted_wasserstein(&values, &in_current, scaled_reference, scaled_current);
        let reference_mean = (total - current_sum) / scaled_reference as f64;
        let reference_variance = ((total_squares - current_squares) / scaled_reference as f64
            - reference_mean * reference_mean)
            .max(0.0);
        distances.push(distance / reference_variance.sqrt().max(min_norm));
        for &position in &positions[..scaled_current] {
            in_current[position] = false;
        }
    }
    let scaled = (scaled_reference, scaled_current);
    Ok(Calibration {
        null_quantile: rescale(
            Method::Wasserstein,
            quantile(distances),
            scaled,
            (reference_rows, current_rows),
        ),
        floor,
        permutations: PERMUTATIONS,
        false_alarm_rate: FALSE_ALARM_RATE,
        calibration_rows: scaled_reference + scaled_current,
    })
}

/// ∫ |F_reference − F_current| over sorted `values` split by `in_current`.
fn permuted_wasserstein(
    values: &[f64],
    in_current: &[bool],
    reference_rows: usize,
    current_rows: usize,
) -> f64 {
    let (reference_step, current_step) = (1.0 / reference_rows as f64, 1.0 / current_rows as f64);
    let (mut reference_cdf, mut current_cdf) = (0.0, 0.0);
    let mut total = 0.0;
    for (index, pair) in values.windows(2).enumerate() {
        if in_current[index] {
            current_cdf += current_step;
        } else {
            reference_cdf += reference_step;
        }
        total += (reference_cdf - current_cdf).abs() * (pair[1] - pair[0]);
    }
    total
}

/// The threshold for Jensen–Shannon or PSI over fixed bins holding `reference_counts` and
/// `current_counts` rows.
pub(crate) fn binned(
    method: Method,
    reference_counts: &[u64],
    current_counts: &[u64],
    floor: f64,
) -> Result<Calibration, Error> {
    let reference_rows = reference_counts.iter().sum::<u64>() as usize;
    let current_rows = current_counts.iter().sum::<u64>() as usize;
    check_sizes(reference_rows, current_rows)?;
    let hash = reference_counts
        .iter()
        .zip(current_counts)
        .fold(0_u64, |hash, (r, c)| mix64(hash ^ (r + c)));
    let mut rng = SplitMix64::new(mix64(SEED ^ hash));
    // One bin label per pooled row.
    let mut labels: Vec<u32> = Vec::with_capacity(reference_rows + current_rows);
    for (bin, (r, c)) in reference_counts.iter().zip(current_counts).enumerate() {
        let bin = u32::try_from(bin).map_err(|_| Error::TooLarge {
            what: "drift bins",
            count: bin,
            limit: u32::MAX as usize,
        })?;
        labels.extend(std::iter::repeat_n(bin, (r + c) as usize));
    }
    let (scaled_reference, scaled_current) = scaled_sizes(reference_rows, current_rows);
    draw_front(&mut rng, &mut labels, scaled_reference + scaled_current);
    labels.truncate(scaled_reference + scaled_current);
    let bins = reference_counts.len();
    let mut pooled_counts = vec![0_u64; bins];
    for label in &labels {
        pooled_counts[*label as usize] += 1;
    }
    // The smaller side is drawn; the other holds the rest of each bin.
    let current_is_smaller = scaled_current <= scaled_reference;
    let drawn = scaled_current.min(scaled_reference);
    let mut drawn_counts = vec![0_u64; bins];
    let mut reference = vec![0.0; bins];
    let mut current = vec![0.0; bins];
    let mut distances = Vec::with_capacity(PERMUTATIONS);
    for _ in 0..PERMUTATIONS {
        draw_front(&mut rng, &mut labels, drawn);
        drawn_counts.iter_mut().for_each(|count| *count = 0);
        for label in &labels[..drawn] {
            drawn_counts[*label as usize] += 1;
        }
        for bin in 0..bins {
            let (in_current, in_reference) = if current_is_smaller {
                (drawn_counts[bin], pooled_counts[bin] - drawn_counts[bin])
            } else {
                (pooled_counts[bin] - drawn_counts[bin], drawn_counts[bin])
            };
            reference[bin] = in_reference as f64 / scaled_reference as f64;
            current[bin] = in_current as f64 / scaled_current as f64;
        }
        distances.push(binned_distance(method, &reference, &current)?);
    }
    let scaled = (scaled_reference, scaled_current);
    Ok(Calibration {
        null_quantile: rescale(
            method,
            quantile(distances),
            scaled,
            (reference_rows, current_rows),
        ),
        floor,
        permutations: PERMUTATIONS,
        false_alarm_rate: FALSE_ALARM_RATE,
        calibration_rows: scaled_reference + scaled_current,
    })
}

fn binned_distance(method: Method, reference: &[f64], current: &[f64]) -> Result<f64, Error> {
    match method {
        Method::Psi => psi_from_proportions(reference, current),
        _ => jensen_shannon_distance(reference, current),
    }
}

fn check_sizes(reference_rows: usize, current_rows: usize) -> Result<(), Error> {
    if reference_rows == 0 || current_rows == 0 {
        return Err(Error::Empty {
            what: "drift calibration window",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_is_the_tenth_largest_of_199() {
        assert_eq!(quantile_index(199), 189);
        let distances: Vec<f64> = (0..199).map(f64::from).collect();
        assert_eq!(quantile(distances), 189.0);
        assert_eq!(quantile_index(19), 18);
    }

    #[test]
    fn identical_bins_give_the_floor_and_are_deterministic() {
        let calibration = binned(Method::JensenShannon, &[100, 0], &[50, 0], 0.1).unwrap();
        assert_eq!(calibration.null_quantile, 0.0);
        assert_eq!(calibration.threshold(), 0.1);
        let first = binned(Method::Psi, &[40, 30, 20, 10], &[12, 9, 6, 3], 0.1).unwrap();
        let again = binned(Method::Psi, &[40, 30, 20, 10], &[12, 9, 6, 3], 0.1).unwrap();
        assert_eq!(first, again);
        assert!(first.threshold() > 0.1, "{first:?}");
    }

    #[test]
    fn large_windows_are_calibrated_on_a_subsample() {
        assert_eq!(scaled_sizes(1_500, 300), (1_500, 300));
        assert_eq!(scaled_sizes(90_000, 10_000), (18_000, 2_000));
        let values: Vec<f64> = (0..30_000).map(|i| f64::from(i % 1_000)).collect();
        let calibration = wasserstein(&values, 20_000, 0.1, 0.001).unwrap();
        assert_eq!(calibration.calibration_rows, MAX_CALIBRATION_ROWS);
        assert!(calibration.null_quantile > 0.0 && calibration.null_quantile < 0.1);
    }
}
