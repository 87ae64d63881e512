//! Wilson score interval for a binomial proportion (Wilson 1927), used for the agreement rate
//! of an operation's reviews: promotion needs the lower bound at or above the target
//! (DESIGN.md §6).
//!
//! For `s` successes in `n` trials, p̂ = s/n and critical value z:
//!
//! ```text
//! centre = (p̂ + z²/2n) / (1 + z²/n)
//! half   = z √(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n)
//! [low, high] = [centre − half, centre + half], clamped to [0, 1]
//! ```
//!
//! This is statsmodels' `proportion_confint(method="wilson")`; the reference vectors check it.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Two-sided 95% critical value of the standard normal, Φ⁻¹(0.975).
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The largest number of reviews [`reviews_needed`] will consider before giving up.
pub const MAX_REVIEWS_NEEDED: u64 = 10_000_000;

/// A confidence interval for a proportion, with the observed proportion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    /// The observed proportion s/n (0 when n = 0, where the interval is [0, 1]).
    pub point: f64,
}

/// Wilson score interval for `successes` out of `n` at critical value `z`.
///
/// `n = 0` gives [0, 1] (nothing is known). Errors when `successes > n` or `z` is not a finite
/// non-negative number.
pub fn wilson(successes: u64, n: u64, z: f64) -> Result<Interval, Error> {
    if !(z.is_finite() && z >= 0.0) {
        return Err(Error::OutOfRange {
            what: "Wilson critical value z",
            value: z,
            range: "[0, ∞)",
        });
    }
    if successes > n {
        return Err(Error::Invalid {
            what: "Wilson interval",
            detail: "more successes than trials",
        });
    }
    if n == 0 {
        return Ok(Interval {
            low: 0.0,
            high: 1.0,
            point: 0.0,
        });
    }
    let trials = n as f64;
    let proportion = successes as f64 / trials;
    let z_squared = z * z;
    let denominator = 1.0 + z_squared / trials;
    let centre = (proportion + z_squared / (2.0 * trials)) / denominator;
    let half_width = z
        * (proportion * (1.0 - proportion) / trials + z_squared / (4.0 * trials * trials)).sqrt()
        / denominator;
    Ok(Interval {
        low: (centre - half_width).clamp(0.0, 1.0),
        high: (centre + half_width).clamp(0.0, 1.0),
        point: proportion,
    })
}

/// The smallest n such that the Wilson lower bound of round(p_true·n) successes in n trials
/// reaches `target`: how many reviews a model that is right with probability `p_true`
/// typically needs before it can be promoted (ignoring the phase's minimum review count).
///
/// The lower bound is not monotone in n (rounding), so this scans n = 1, 2, ... up to
/// [`MAX_REVIEWS_NEEDED`]. Errors when `p_true ≤ target` (the bound tends to p_true and never
/// reaches the target), when either is outside (0, 1), or when the cap is reached.
pub fn reviews_needed(p_true: f64, target: f64, z: f64) -> Result<u64, Error> {
    if !(p_true > 0.0 && p_true <= 1.0) {
        return Err(Error::OutOfRange {
            what: "true agreement rate",
            value: p_true,
            range: "(0, 1]",
        });
    }
    crate::check_open("target agreement rate", target, 0.0, 1.0, "(0, 1)")?;
    if p_true <= target {
        return Err(Error::Unreachable {
            what: "promotion target",
            detail: "the true agreement rate is not above the target",
        });
    }
    for n in 1..=MAX_REVIEWS_NEEDED {
        let successes = (p_true * n as f64).round() as u64;
        if wilson(successes.min(n), n, z)?.low >= target {
            return Ok(n);
        }
    }
    Err(Error::Unreachable {
        what: "promotion target",
        detail: "more reviews than MAX_REVIEWS_NEEDED would be needed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_trials_means_nothing_is_known() {
        let interval = wilson(0, 0, Z_95).unwrap();
        assert_eq!((interval.low, interval.high), (0.0, 1.0));
    }

    #[test]
    fn interval_contains_the_point_and_narrows_with_n() {
        let small = wilson(9, 10, Z_95).unwrap();
        let large = wilson(900, 1000, Z_95).unwrap();
        assert!(small.low < 0.9 && 0.9 < small.high);
        assert!(large.high - large.low < small.high - small.low);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(wilson(11, 10, Z_95).is_err());
        assert!(wilson(1, 10, f64::NAN).is_err());
        assert!(reviews_needed(0.9, 0.95, Z_95).is_err());
        assert!(reviews_needed(f64::NAN, 0.95, Z_95).is_err());
    }
}
