//! The progressive-trust evaluator for one operation (DESIGN.md §6): from its reviewed
//! outcomes, recommend a promotion (Wilson lower bound of the agreement rate at or above the
//! phase's target, with at least the minimum number of reviews in the window) or demand a
//! demotion (SPRT rejects the target error rate), with an evidence snapshot for the journal.
//!
//! [`evaluate`] is pure and allocation-free apart from its result: one pass over the window
//! and one over the outcomes since the last promotion, so 1,000 operations × 10,000 outcomes
//! cost about 2·10⁷ cheap steps. Drift alerts, critical exceptions and manual demotions are
//! decided elsewhere; this module covers the statistical rules only.
//!
//! [`sample_review`] decides reproducibly whether an auto-approved case is sampled for review.

use serde::{Deserialize, Serialize};

use crate::interval::{wilson, Interval, Z_95};
use crate::random::{stable_hash, unit_interval};
use crate::sprt::{self, Sprt};
use crate::{Error, MAX_VALUES};

/// Sampling never goes below this rate, whatever is configured: phase 4 is "never zero".
pub const MIN_SAMPLE_RATE: f64 = 0.001;
/// DESIGN.md §6: post-hoc review sample in phase 3.
pub const DEFAULT_REVIEW_RATE_PHASE_3: f64 = 0.20;
/// DESIGN.md §6: audit sample in phase 4.
pub const DEFAULT_REVIEW_RATE_PHASE_4: f64 = 0.02;

/// A trust phase, 1 (full oversight) to 4 (earned trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Phase(u8);

impl Phase {
    pub const FULL_OVERSIGHT: Phase = Phase(1);
    pub const POLICY_BASED: Phase = Phase(2);
    pub const SUPERVISED_AUTONOMY: Phase = Phase(3);
    pub const EARNED_TRUST: Phase = Phase(4);

    pub fn new(number: u8) -> Result<Self, Error> {
        if (1..=4).contains(&number) {
            Ok(Phase(number))
        } else {
            Err(Error::OutOfRange {
                what: "trust phase",
                value: f64::from(number),
                range: "1..=4",
            })
        }
    }

    pub fn number(self) -> u8 {
        self.0
    }

    /// The phase above, if any (phase 4 cannot be promoted).
    pub fn next(self) -> Option<Phase> {
        (self.0 < 4).then(|| Phase(self.0 + 1))
    }

    /// The phase below, if any (phase 1 cannot be demoted).
    pub fn previous(self) -> Option<Phase> {
        (self.0 > 1).then(|| Phase(self.0 - 1))
    }
}

impl TryFrom<u8> for Phase {
    type Error = Error;
    fn try_from(number: u8) -> Result<Self, Error> {
        Phase::new(number)
    }
}

impl From<Phase> for u8 {
    fn from(phase: Phase) -> u8 {
        phase.0
    }
}

/// One human review of one AI-proposed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// When the review was recorded (Unix milliseconds).
    pub at_ms: i64,
    /// True when the reviewer agreed as proposed; false when they corrected or rejected it.
    pub agreed: bool,
}

/// Which reviews count towards promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Reviews recorded after `now_ms − milliseconds`.
    Milliseconds(i64),
    /// The most recent `count` reviews.
    Count(u64),
}

/// Promotion criteria of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PhaseCriteriaData")]
pub struct PhaseCriteria {
    min_reviews: u64,
    target_agreement: f64,
    window: Window,
}

#[derive(Deserialize)]
struct PhaseCriteriaData {
    min_reviews: u64,
    target_agreement: f64,
    window: Window,
}

impl TryFrom<PhaseCriteriaData> for PhaseCriteria {
    type Error = Error;
    fn try_from(data: PhaseCriteriaData) -> Result<Self, Error> {
        PhaseCriteria::new(data.min_reviews, data.target_agreement, data.window)
    }
}

impl PhaseCriteria {
    /// `min_reviews` ≥ 1; `target_agreement` in (0, 1); a window of at least 1 ms or 1 review.
    pub fn new(min_reviews: u64, target_agreement: f64, window: Window) -> Result<Self, Error> {
        if min_reviews == 0 {
            return Err(Error::OutOfRange {
                what: "minimum reviews",
                value: 0.0,
                range: "1..",
            });
        }
        crate::check_open("target agreement", target_agreement, 0.0, 1.0, "(0, 1)")?;
        let window_ok = match window {
            Window::Milliseconds(milliseconds) => milliseconds > 0,
            Window::Count(count) => count > 0,
        };
        if !window_ok {
            return Err(Error::Invalid {
                what: "promotion window",
                detail: "the window must cover at least 1 ms or 1 review",
            });
        }
        Ok(Self {
            min_reviews,
            target_agreement,
            window,
        })
    }

    pub fn min_reviews(&self) -> u64 {
        self.min_reviews
    }

    pub fn target_agreement(&self) -> f64 {
        self.target_agreement
    }

    pub fn window(&self) -> Window {
        self.window
    }
}

/// Parameters of the demotion SPRT; validated by building the test once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DemotionData")]
pub struct DemotionParams {
    target_error_rate: f64,
    alternative_error_rate: Option<f64>,
    alpha: f64,
    beta: f64,
}

#[derive(Deserialize)]
struct DemotionData {
    target_error_rate: f64,
    #[serde(default)]
    alternative_error_rate: Option<f64>,
    alpha: f64,
    beta: f64,
}

impl TryFrom<DemotionData> for DemotionParams {
    type Error = Error;
    fn try_from(data: DemotionData) -> Result<Self, Error> {
        DemotionParams::new(
            data.target_error_rate,
            data.alternative_error_rate,
            data.alpha,
            data.beta,
        )
    }
}

impl DemotionParams {
    /// `alternative_error_rate` None means [`sprt::default_alternative`] (2 × target).
    pub fn new(
        target_error_rate: f64,
        alternative_error_rate: Option<f64>,
        alpha: f64,
        beta: f64,
    ) -> Result<Self, Error> {
        let params = Self {
            target_error_rate,
            alternative_error_rate,
            alpha,
            beta,
        };
        params.sprt()?;
        Ok(params)
    }

    /// A fresh test with these parameters.
    pub fn sprt(&self) -> Result<Sprt, Error> {
        let alternative = self
            .alternative_error_rate
            .unwrap_or_else(|| sprt::default_alternative(self.target_error_rate));
        Sprt::new(self.target_error_rate, alternative, self.alpha, self.beta)
    }
}

/// Why an evidence snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Enough reviews in the window and the Wilson lower bound reached the target.
    WilsonLowerBoundReachedTarget,
    /// The SPRT rejected the target error rate.
    SprtRejectedTargetErrorRate,
}

/// Everything that justified a phase change, to be stored as JSON in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub reason: Reason,
    pub from_phase: Phase,
    pub to_phase: Phase,
    /// When the evaluation ran, as passed in.
    pub now_ms: i64,
    pub window: Window,
    /// Reviews and agreements inside the window.
    pub reviews: u64,
    pub agreements: u64,
    /// Times of the first and last review inside the window.
    pub window_first_at_ms: Option<i64>,
    pub window_last_at_ms: Option<i64>,
    pub min_reviews: u64,
    pub target_agreement: f64,
    /// Critical value of the Wilson interval (95% two-sided).
    pub z: f64,
    pub wilson: Interval,
    /// Reviews since the last promotion that the SPRT read, and its state after them.
    pub sprt_reviews: u64,
    pub sprt: sprt::Snapshot,
    /// The review at which the SPRT rejected, if it did.
    pub sprt_rejected_at_ms: Option<i64>,
}

/// The result of [`evaluate`]: at most one of the two is set (a demotion suppresses a
/// promotion recommendation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub recommend_promotion: Option<Evidence>,
    pub demote: Option<Evidence>,
}

fn check_outcomes(what: &'static str, outcomes: &[Outcome]) -> Result<(), Error> {
    if outcomes.len() > MAX_VALUES {
        return Err(Error::TooLarge {
            what,
            count: outcomes.len(),
            limit: MAX_VALUES,
        });
    }
    if !outcomes.is_sorted_by_key(|outcome| outcome.at_ms) {
        return Err(Error::Invalid {
            what,
            detail: "outcomes must be ordered by at_ms, oldest first",
        });
    }
    Ok(())
}

/// Evaluates one operation in `phase` at `now_ms`.
///
/// - `outcomes_in_window`: the reviews that may count towards promotion, oldest first. The
///   criteria's window is applied again here (so passing a superset is harmless): the last
///   `count` reviews, or those with `at_ms > now_ms − milliseconds`. Whether reviews from
///   before the last phase change may count is the caller's choice of slice.
/// - `since_last_promotion`: every review since the operation entered its current phase,
///   oldest first; the SPRT reads them in order (restarting after each acceptance) and stops
///   at the first rejection.
///
/// Promotion is recommended when the phase is below 4, the window holds at least
/// `min_reviews` reviews, the Wilson 95% lower bound of their agreement rate is at least
/// `target_agreement`, and there is no demotion. Demotion (one phase down) is demanded when
/// the phase is above 1 and the SPRT rejected the target error rate.
///
/// Errors when a slice is longer than [`MAX_VALUES`] or not ordered by time.
pub fn evaluate(
    phase: Phase,
    now_ms: i64,
    outcomes_in_window: &[Outcome],
    since_last_promotion: &[Outcome],
    criteria: &PhaseCriteria,
    demotion: &DemotionParams,
) -> Result<Evaluation, Error> {
    check_outcomes("outcomes in window", outcomes_in_window)?;
    check_outcomes("outcomes since last promotion", since_last_promotion)?;

    let window = match criteria.window {
        Window::Count(count) => {
            let keep = usize::try_from(count).unwrap_or(usize::MAX);
            &outcomes_in_window[outcomes_in_window.len().saturating_sub(keep)..]
        }
        Window::Milliseconds(milliseconds) => {
            let start = now_ms.saturating_sub(milliseconds);
            let first = outcomes_in_window.partition_point(|outcome| outcome.at_ms <= start);
            &outcomes_in_window[first..]
        }
    };
    let reviews = window.len() as u64;
    let agreements = window.iter().filter(|outcome| outcome.agreed).count() as u64;
    let interval = wilson(agreements, reviews, Z_95)?;

    let mut test = demotion.sprt()?;
    let mut sprt_reviews = 0_u64;
    let mut sprt_rejected_at_ms = None;
    for outcome in since_last_promotion {
        sprt_reviews += 1;
        if test.observe(!outcome.agreed) == sprt::Decision::RejectH0 {
            sprt_rejected_at_ms = Some(outcome.at_ms);
            break;
        }
    }

    let evidence = |reason, to_phase| Evidence {
        reason,
        from_phase: phase,
        to_phase,
        now_ms,
        window: criteria.window,
        reviews,
        agreements,
        window_first_at_ms: window.first().map(|outcome| outcome.at_ms),
        window_last_at_ms: window.last().map(|outcome| outcome.at_ms),
        min_reviews: criteria.min_reviews,
        target_agreement: criteria.target_agreement,
        z: Z_95,
        wilson: interval,
        sprt_reviews,
        sprt: test.snapshot(),
        sprt_rejected_at_ms,
    };

    let demote = match (test.is_rejected(), phase.previous()) {
        (true, Some(lower)) => Some(evidence(Reason::SprtRejectedTargetErrorRate, lower)),
        _ => None,
    };
    let promotable = reviews >= criteria.min_reviews && interval.low >= criteria.target_agreement;
    let recommend_promotion = match (demote.is_none() && promotable, phase.next()) {
        (true, Some(higher)) => Some(evidence(Reason::WilsonLowerBoundReachedTarget, higher)),
        _ => None,
    };
    Ok(Evaluation {
        recommend_promotion,
        demote,
    })
}

/// Whether the case identified by `seed_text` is sampled for review at `rate`.
///
/// Reproducible: the decision is a pure function of the text (FNV-1a + SplitMix64 finaliser,
/// [`stable_hash`], mapped to [0, 1)) compared with the rate, so the same case id gives the
/// same answer on every run, machine and release. Include the operation in the text (e.g.
/// `"{operation}:{case_id}"`) so that operations do not all sample the same cases.
///
/// The rate is clamped to [[`MIN_SAMPLE_RATE`], 1]: sampling is never zero. A NaN rate samples
/// everything (the safe side of a configuration error).
pub fn sample_review(seed_text: &str, rate: f64) -> bool {
    let rate = if rate.is_nan() {
        1.0
    } else {
        rate.clamp(MIN_SAMPLE_RATE, 1.0)
    };
    unit_interval(stable_hash(seed_text)) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_bounded() {
        assert!(Phase::new(0).is_err());
        assert!(Phase::new(5).is_err());
        assert_eq!(Phase::EARNED_TRUST.next(), None);
        assert_eq!(Phase::FULL_OVERSIGHT.previous(), None);
        assert!(serde_json::from_str::<Phase>("7").is_err());
        assert_eq!(
            serde_json::from_str::<Phase>("2").unwrap(),
            Phase::POLICY_BASED
        );
    }

    #[test]
    fn criteria_are_validated_on_deserialisation() {
        let bad = r#"{"min_reviews":50,"target_agreement":1.5,"window":{"count":100}}"#;
        assert!(serde_json::from_str::<PhaseCriteria>(bad).is_err());
        let good = r#"{"min_reviews":50,"target_agreement":0.95,"window":{"milliseconds":1000}}"#;
        assert!(serde_json::from_str::<PhaseCriteria>(good).is_ok());
        let bad = r#"{"target_error_rate":0.05,"alpha":0.6,"beta":0.05}"#;
        assert!(serde_json::from_str::<DemotionParams>(bad).is_err());
    }

    #[test]
    fn unordered_outcomes_are_refused() {
        let outcomes = [
            Outcome {
                at_ms: 2,
                agreed: true,
            },
            Outcome {
                at_ms: 1,
                agreed: true,
            },
        ];
        let criteria = PhaseCriteria::new(1, 0.5, Window::Count(10)).unwrap();
        let demotion = DemotionParams::new(0.05, None, 0.05, 0.05).unwrap();
        let result = evaluate(Phase::POLICY_BASED, 3, &outcomes, &[], &criteria, &demotion);
        assert!(result.is_err());
    }

    #[test]
    fn sampling_never_reaches_zero() {
        let sampled = (0..100_000)
            .filter(|i| sample_review(&format!("case-{i}"), 0.0))
            .count();
        // Rate clamps to 0.001: expect ~100 (binomial sd ≈ 10).
        assert!((50..=150).contains(&sampled), "{sampled}");
        assert!(sample_review("anything", f64::NAN));
    }
}
