//! Wald's sequential probability ratio test (Wald 1945) on a Bernoulli error rate, the
//! automatic demotion rule of DESIGN.md §6.
//!
//! H0: the error rate is p0 (the operation's target error rate); H1: it is p1 > p0 (by
//! default 2·p0, see [`default_alternative`]). Each reviewed decision adds to the log-likelihood
//! ratio ln L1/L0:
//!
//! ```text
//! error:    + ln(p1 / p0)
//! no error: + ln((1 − p1) / (1 − p0))
//! ```
//!
//! and the test stops when the ratio leaves (B, A):
//!
//! ```text
//! A = ln((1 − β) / α)   LLR ≥ A: reject H0, the error rate is too high → demote
//! B = ln(β / (1 − α))   LLR ≤ B: accept H0, the operation is performing at target
//! ```
//!
//! **Restart after acceptance.** Accepting H0 is not a permanent verdict: an operation that
//! was fine for a thousand decisions can still degrade. So on acceptance the ratio resets to 0
//! and a fresh test starts with the next observation (counted in [`Sprt::restarts`]). Without
//! the restart the ratio of a good operation would drift towards −∞ and a later degradation
//! would take ever longer to cross A. Rejection, on the other hand, is sticky: the test stays
//! rejected until [`Sprt::reset`] (a demotion changes the phase, and the next phase starts a new
//! test).
//!
//! α bounds the chance that one test (one restart cycle) rejects an operation truly at p0;
//! with restarts, an operation observed for a long time runs many cycles, so the chance of a
//! false demotion over its lifetime is larger than α (though an operation that is better than
//! p0, as a promoted one should be, drifts to B quickly and rarely comes near A).

use serde::{Deserialize, Serialize};

use crate::Error;

/// What the test concludes after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Inside (B, A): keep observing.
    Continue,
    /// LLR ≥ A: the error rate is above target; demote.
    RejectH0,
    /// LLR ≤ B: performing at target; the test restarted.
    AcceptH0,
}

/// The default alternative error rate for a target p0: 2·p0, capped at (1 + p0)/2 so that it
/// stays strictly between p0 and 1 (the cap applies from p0 = 1/3 up).
pub fn default_alternative(p0: f64) -> f64 {
    (2.0 * p0).min((1.0 + p0) / 2.0)
}

/// The state of one sequential test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sprt {
    p0: f64,
    p1: f64,
    alpha: f64,
    beta: f64,
    upper_bound: f64,
    lower_bound: f64,
    step_error: f64,
    step_correct: f64,
    llr: f64,
    observations: u64,
    errors: u64,
    restarts: u64,
    rejected: bool,
}

/// Everything needed to reproduce a decision, for the journal's evidence snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub p0: f64,
    pub p1: f64,
    pub alpha: f64,
    pub beta: f64,
    /// A = ln((1 − β)/α).
    pub upper_bound: f64,
    /// B = ln(β/(1 − α)).
    pub lower_bound: f64,
    /// The log-likelihood ratio of the current cycle.
    pub llr: f64,
    /// Observations and errors in the current cycle (since the last restart).
    pub observations: u64,
    pub errors: u64,
    /// How many times H0 was accepted and the test restarted.
    pub restarts: u64,
    pub rejected: bool,
}

impl Sprt {
    /// A test of H0: rate = `p0` against H1: rate = `p1` with error probabilities `alpha`
    /// (false demotion) and `beta` (missed degradation). Requires 0 < p0 < p1 < 1 and
    /// 0 < α, β < 0.5.
    pub fn new(p0: f64, p1: f64, alpha: f64, beta: f64) -> Result<Self, Error> {
        crate::check_open("SPRT p0 (target error rate)", p0, 0.0, 1.0, "(0, 1)")?;
        crate::check_open("SPRT p1 (alternative error rate)", p1, p0, 1.0, "(p0, 1)")?;
        crate::check_open("SPRT alpha", alpha, 0.0, 0.5, "(0, 0.5)")?;
        crate::check_open("SPRT beta", beta, 0.0, 0.5, "(0, 0.5)")?;
        Ok(Self {
            p0,
            p1,
            alpha,
            beta,
            upper_bound: ((1.0 - beta) / alpha).ln(),
            lower_bound: (beta / (1.0 - alpha)).ln(),
            step_error: (p1 / p0).ln(),
            step_correct: ((1.0 - p1) / (1.0 - p0)).ln(),
            llr: 0.0,
            observations: 0,
            errors: 0,
            restarts: 0,
            rejected: false,
        })
    }

    /// [`Sprt::new`] with p1 = [`default_alternative`]\(p0).
    pub fn with_default_alternative(p0: f64, alpha: f64, beta: f64) -> Result<Self, Error> {
        Self::new(p0, default_alternative(p0), alpha, beta)
    }

    /// Adds one reviewed decision (`error`: corrected or rejected by the reviewer).
    /// Once rejected, further observations are ignored and `RejectH0` is returned until
    /// [`Sprt::reset`].
    pub fn observe(&mut self, error: bool) -> Decision {
        if self.rejected {
            return Decision::RejectH0;
        }
        self.observations += 1;
        if error {
            self.errors += 1;
            self.llr += self.step_error;
        } else {
            self.llr += self.step_correct;
        }
        if self.llr >= self.upper_bound {
            self.rejected = true;
            Decision::RejectH0
        } else if self.llr <= self.lower_bound {
            self.llr = 0.0;
            self.observations = 0;
            self.errors = 0;
            self.restarts += 1;
            Decision::AcceptH0
        } else {
            Decision::Continue
        }
    }

    /// Starts over (after a demotion): LLR 0, no observations, not rejected.
    pub fn reset(&mut self) {
        self.llr = 0.0;
        self.observations = 0;
        self.errors = 0;
        self.restarts = 0;
        self.rejected = false;
    }

    pub fn llr(&self) -> f64 {
        self.llr
    }

    /// A = ln((1 − β)/α): reject H0 at or above.
    pub fn upper_bound(&self) -> f64 {
        self.upper_bound
    }

    /// B = ln(β/(1 − α)): accept H0 (and restart) at or below.
    pub fn lower_bound(&self) -> f64 {
        self.lower_bound
    }

    pub fn p0(&self) -> f64 {
        self.p0
    }

    pub fn p1(&self) -> f64 {
        self.p1
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn is_rejected(&self) -> bool {
        self.rejected
    }

    /// Expected LLR increment per observation when the true error rate is `rate`.
    pub fn expected_step(&self, rate: f64) -> f64 {
        rate * self.step_error + (1.0 - rate) * self.step_correct
    }

    /// Wald's approximation of the expected number of observations of one test when H1 holds:
    /// `E1[N] ≈ ((1 − β)·A + β·B) / E1[step]`. Ignores overshoot of the bounds.
    pub fn expected_sample_size_h1(&self) -> f64 {
        ((1.0 - self.beta) * self.upper_bound + self.beta * self.lower_bound)
            / self.expected_step(self.p1)
    }

    /// Wald's approximation when H0 holds: `E0[N] ≈ (α·A + (1 − α)·B) / E0[step]`.
    pub fn expected_sample_size_h0(&self) -> f64 {
        (self.alpha * self.upper_bound + (1.0 - self.alpha) * self.lower_bound)
            / self.expected_step(self.p0)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            p0: self.p0,
            p1: self.p1,
            alpha: self.alpha,
            beta: self.beta,
            upper_bound: self.upper_bound,
            lower_bound: self.lower_bound,
            llr: self.llr,
            observations: self.observations,
            errors: self.errors,
            restarts: self.restarts,
            rejected: self.rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated() {
        assert!(Sprt::new(0.05, 0.1, 0.05, 0.05).is_ok());
        assert!(Sprt::new(0.1, 0.05, 0.05, 0.05).is_err());
        assert!(Sprt::new(0.0, 0.1, 0.05, 0.05).is_err());
        assert!(Sprt::new(0.05, 1.0, 0.05, 0.05).is_err());
        assert!(Sprt::new(0.05, 0.1, 0.5, 0.05).is_err());
        assert!(Sprt::new(0.05, 0.1, 0.05, f64::NAN).is_err());
        assert!(default_alternative(0.6) < 1.0 && default_alternative(0.6) > 0.6);
        assert_eq!(default_alternative(0.05), 0.1);
    }

    #[test]
    fn a_run_of_errors_rejects_and_stays_rejected() {
        let mut test = Sprt::new(0.05, 0.1, 0.05, 0.05).unwrap();
        // Each error adds ln 2; A = ln 19 ≈ 2.94, so the fifth error crosses.
        let decisions: Vec<Decision> = (0..5).map(|_| test.observe(true)).collect();
        assert_eq!(decisions[3], Decision::Continue);
        assert_eq!(decisions[4], Decision::RejectH0);
        assert_eq!(test.observe(false), Decision::RejectH0);
        test.reset();
        assert_eq!(test.observe(false), Decision::Continue);
    }

    #[test]
    fn acceptance_restarts_the_test() {
        let mut test = Sprt::new(0.05, 0.1, 0.05, 0.05).unwrap();
        let mut accepted_at = None;
        for index in 0..200 {
            if test.observe(false) == Decision::AcceptH0 {
                accepted_at = Some(index);
                break;
            }
        }
        // ln(0.9/0.95) ≈ −0.0541 per success; B = −ln 19 ≈ −2.944 → the 55th success.
        assert_eq!(accepted_at, Some(54));
        assert_eq!(test.llr(), 0.0);
        assert_eq!(test.restarts(), 1);
    }
}
