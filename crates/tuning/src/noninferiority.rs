//! Is a challenger model at least as accurate as the serving one, within a margin? A paired
//! non-inferiority test on the same evaluation set: each example is scored right or wrong for
//! both models, and only the discordant pairs carry information.
//!
//! With `b` examples only the challenger got right, `c` only the serving model got right, and
//! `n` examples in all, the difference in accuracy is `d = (b − c) / n` with the Wald variance
//! of a paired difference, `((b + c) / n − d²) / n`. The one-sided bounds at level `1 − α` are
//! `d ∓ z₁₋α · sd`. The challenger is **non-inferior** when the lower bound is above
//! `−margin` (with probability about `1 − α` it is at most `margin` less accurate),
//! **inferior** when the upper bound is below `−margin` (it is worse by more than the margin,
//! with the same confidence), and the test is **inconclusive** otherwise: more evidence is
//! needed.

use serde::Serialize;

/// The stated test, for records and reports.
pub const TEST_NAME: &str = "paired non-inferiority (Wald, one-sided)";

/// What the evidence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NonInferior,
    Inferior,
    Inconclusive,
}

/// The result of a test, with everything needed to recompute it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NonInferiority {
    pub n: u64,
    /// Examples only the challenger got right.
    pub challenger_only: u64,
    /// Examples only the serving model got right.
    pub serving_only: u64,
    pub challenger_accuracy: f64,
    pub serving_accuracy: f64,
    /// `challenger_accuracy − serving_accuracy`.
    pub difference: f64,
    /// The lower confidence bound of the difference.
    pub lower_bound: f64,
    /// The upper confidence bound of the difference.
    pub upper_bound: f64,
    pub margin: f64,
    pub alpha: f64,
    pub non_inferior: bool,
    pub verdict: Verdict,
}

/// Why a test cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("the evaluation set is empty")]
    Empty,
    #[error("margin {0} is not in [0, 1)")]
    Margin(f64),
    #[error("alpha {0} is not in (0, 0.5)")]
    Alpha(f64),
}

/// Tests `pairs` of (challenger right, serving right) on the same examples.
pub fn test(
    pairs: impl IntoIterator<Item = (bool, bool)>,
    margin: f64,
    alpha: f64,
) -> Result<NonInferiority, Error> {
    if !(0.0..1.0).contains(&margin) {
        return Err(Error::Margin(margin));
    }
    if !(alpha > 0.0 && alpha < 0.5) {
        return Err(Error::Alpha(alpha));
    }
    let (mut n, mut b, mut c, mut challenger_right, mut serving_right) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (challenger, serving) in pairs {
        n += 1;
        challenger_right += u64::from(challenger);
        serving_right += u64::from(serving);
        match (challenger, serving) {
            (true, false) => b += 1,
            (false, true) => c += 1,
            _ => {}
        }
    }
    if n == 0 {
        return Err(Error::Empty);
    }
    let nf = n as f64;
    let difference = (b as f64 - c as f64) / nf;
    let variance = (((b + c) as f64 / nf) - difference * difference).max(0.0) / nf;
    let z = normal_quantile(1.0 - alpha);
    let lower_bound = difference - z * variance.sqrt();
    let upper_bound = difference + z * variance.sqrt();
    let verdict = if lower_bound > -margin {
        Verdict::NonInferior
    } else if upper_bound < -margin {
        Verdict::Inferior
    } else {
        Verdict::Inconclusive
    };
    Ok(NonInferiority {
        n,
        challenger_only: b,
        serving_only: c,
        challenger_accuracy: challenger_right as f64 / nf,
        serving_accuracy: serving_right as f64 / nf,
        difference,
        lower_bound,
        upper_bound,
        margin,
        alpha,
        non_inferior: verdict == Verdict::NonInferior,
        verdict,
    })
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let low = 0.024_25;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_the_tables() {
        assert!((normal_quantile(0.95) - 1.644_853_627).abs() < 1e-6);
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-6);
        assert!((normal_quantile(0.001) + 3.090_232_306).abs() < 1e-6);
    }

    #[test]
    fn a_poisoned_challenger_fails_and_an_equal_one_passes() {
        // 200 examples: the serving model right on 190; the poisoned one on 4.
        let poisoned = (0..200).map(|i| (i < 4, i < 190));
        let result = test(poisoned, 0.02, 0.05).unwrap();
        assert_eq!(result.verdict, Verdict::Inferior, "{result:?}");
        assert!(result.difference < -0.9);
        // The same predictions: no discordant pair.
        let same = (0..200).map(|i| (i < 190, i < 190));
        let result = test(same, 0.02, 0.05).unwrap();
        assert!(result.non_inferior, "{result:?}");
        // Two discordant pairs either way in 40: cannot tell yet.
        let few = (0..40).map(|i| (i != 0 && i != 1, i != 2 && i != 3));
        assert_eq!(
            test(few, 0.02, 0.05).unwrap().verdict,
            Verdict::Inconclusive
        );
        // Better on 10 more examples: passes.
        let better = (0..200).map(|i| (i < 195, i < 185));
        assert!(test(better, 0.02, 0.05).unwrap().non_inferior);
        // Worse by 10 points on 400: inferior beyond a 2-point margin.
        let worse = (0..400).map(|i| (i < 340, i < 380));
        assert_eq!(test(worse, 0.02, 0.05).unwrap().verdict, Verdict::Inferior);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(test(std::iter::empty(), 0.02, 0.05), Err(Error::Empty));
        assert_eq!(test([(true, true)], 1.5, 0.05), Err(Error::Margin(1.5)));
        assert_eq!(test([(true, true)], 0.02, 0.0), Err(Error::Alpha(0.0)));
    }
}
