//! Progressive trust: the configuration of one operation (an `action` that uses AI output)
//! and the gate's decision at run time. The decision itself is made in one place,
//! [`crate::gate::decide`]; this module holds what it decides from.
//!
//! ```yaml
//!   - id: pay
//!     action:
//!       url: …                       # reads data.<ai step>: an operation
//!       trust:
//!         phase: 1                   # where a new operation starts (default 1)
//!         policy: "data.classify.confidence >= 0.9 && input.amount < 500"  # phase 2
//!         hard_limits: "input.amount > 10000"   # always a person, in every phase
//!         review_rates: { phase2: 0.10, phase3: 0.20, phase4: 0.02 }   # never zero
//!         promotion:
//!           min_reviews: 50
//!           window: 30d              # or { count: 500 }: the most recent reviews
//!           target_agreement: { phase2: 0.95, phase3: 0.97, phase4: 0.99 }  # to enter
//!         demotion: { target_error_rate: 0.05, alpha: 0.05, beta: 0.2 }
//!         critical: 'exception.kind == "wrong_action"'  # CEL over `exception`: back to phase 1
//!         approvers: [governor]      # who may approve promotions
//!         changed_version_phase: down   # or 1..4: where a changed version restarts
//! ```
//!
//! **Settings that cannot work are refused** ([`TrustConfig::setting_problems`], reported by
//! `keel check` as `trust-settings` with the number that would work):
//!
//! - A promotion target at or below the accuracy the demotion test is built to demote. The
//!   SPRT (`keel_tuning::sprt`) tests the error rate p0 = `target_error_rate` against the
//!   alternative p1 = 2·p0 (capped at (1 + p0)/2): an operation at error rate p0 (accuracy
//!   1 − p0) is kept, one at p1 (accuracy 1 − p1) is demoted with probability 1 − β. So 1 − p1
//!   is the accuracy demotion does not tolerate, and a target at or below it would promote an
//!   operation that the SPRT then demotes for the same accuracy: the phases would flap. (The
//!   default target of 0.95 for phase 2 sits at 1 − p0 of the default p0 = 0.05: promoted
//!   operations are, with 95% confidence, where the SPRT keeps them.)
//! - A `min_reviews` below the reviews that the lowest promotion target needs even when every
//!   review agrees (the Wilson 95% lower bound of n/n is n/(n + z²)): such a floor never binds
//!   and misleads its reader. Without `min_reviews`, the floor is 50 or that number, whichever
//!   is larger, which is what the engine has always effectively required.
//! - A `window: { count: N }` too small to ever hold the reviews a target needs.
//! - Review rates of 0 (or above 1): in phases 3 and 4 every action is automatic and sampled
//!   post-hoc review is the only evidence; at 0 nothing could ever demote the operation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::Expr;
use crate::workflow::parse_duration;

/// The lowest review rate any phase may have: review never stops.
pub const MIN_REVIEW_RATE: f64 = 0.001;

/// Review sampling rates per phase (phase 1 reviews everything before it acts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRates {
    #[serde(default = "rate2")]
    pub phase2: f64,
    #[serde(default = "rate3")]
    pub phase3: f64,
    #[serde(default = "rate4")]
    pub phase4: f64,
}

fn rate2() -> f64 {
    0.10
}
fn rate3() -> f64 {
    0.20
}
fn rate4() -> f64 {
    0.02
}

impl Default for ReviewRates {
    fn default() -> Self {
        ReviewRates {
            phase2: rate2(),
            phase3: rate3(),
            phase4: rate4(),
        }
    }
}

impl ReviewRates {
    /// The rate of `phase` (1 for phase 1: everything is reviewed before it acts).
    pub fn of(&self, phase: u8) -> f64 {
        match phase {
            2 => self.phase2,
            3 => self.phase3,
            4 => self.phase4,
            _ => 1.0,
        }
    }
}

/// Target agreement (Wilson lower bound, 95%) needed to enter each phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default = "target2")]
    pub phase2: f64,
    #[serde(default = "target3")]
    pub phase3: f64,
    #[serde(default = "target4")]
    pub phase4: f64,
}

fn target2() -> f64 {
    0.95
}
fn target3() -> f64 {
    0.97
}
fn target4() -> f64 {
    0.99
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            phase2: target2(),
            phase3: target3(),
            phase4: target4(),
        }
    }
}

impl Targets {
    /// The agreement needed to be promoted into `phase` (2..=4).
    pub fn to_enter(&self, phase: u8) -> Option<f64> {
        match phase {
            2 => Some(self.phase2),
            3 => Some(self.phase3),
            4 => Some(self.phase4),
            _ => None,
        }
    }
}

/// Which reviews promotion looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceWindow {
    /// Reviews of the last so many milliseconds.
    Milliseconds(i64),
    /// The most recent so many reviews.
    Count(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub min_reviews: u64,
    pub window: EvidenceWindow,
    pub target_agreement: Targets,
}

/// The floor of reviews before a promotion when `min_reviews` is not given (raised to what
/// the lowest target needs, [`default_min_reviews`]).
pub const DEFAULT_MIN_REVIEWS: u64 = 50;

impl Default for Promotion {
    fn default() -> Self {
        let target_agreement = Targets::default();
        Promotion {
            min_reviews: default_min_reviews(&target_agreement),
            window: EvidenceWindow::Milliseconds(30 * 86_400_000),
            target_agreement,
        }
    }
}

impl Targets {
    /// The lowest of the three targets, with the phase it is the target of.
    pub fn lowest(&self) -> (u8, f64) {
        [(2, self.phase2), (3, self.phase3), (4, self.phase4)]
            .into_iter()
            .fold((2, self.phase2), |low, (phase, target)| {
                if target < low.1 {
                    (phase, target)
                } else {
                    low
                }
            })
    }

    /// The highest of the three targets, with the phase it is the target of.
    pub fn highest(&self) -> (u8, f64) {
        [(2, self.phase2), (3, self.phase3), (4, self.phase4)]
            .into_iter()
            .fold((2, self.phase2), |high, (phase, target)| {
                if target > high.1 {
                    (phase, target)
                } else {
                    high
                }
            })
    }
}

/// `min_reviews` when it is not given: [`DEFAULT_MIN_REVIEWS`], or the reviews the lowest
/// target needs with every one agreeing if that is more (the Wilson bound would demand them
/// anyway, so this only makes the floor say what is true).
pub fn default_min_reviews(targets: &Targets) -> u64 {
    reviews_to_reach(targets.lowest().1).map_or(DEFAULT_MIN_REVIEWS, |n| n.max(DEFAULT_MIN_REVIEWS))
}

/// The smallest n at which the Wilson 95% lower bound of n agreements in n reviews reaches
/// `target`: no promotion to that target can happen with fewer reviews. `None` for a target
/// outside (0, 1) or one that needs more than `keel_tuning::interval::MAX_REVIEWS_NEEDED`.
pub fn reviews_to_reach(target: f64) -> Option<u64> {
    use keel_tuning::interval::{wilson, MAX_REVIEWS_NEEDED, Z_95};
    if !(target > 0.0 && target < 1.0) {
        return None;
    }
    // n/(n + z²) ≥ target ⇔ n ≥ target·z²/(1 − target): start just below and step up, so
    // that the answer agrees with the interval the engine computes.
    let estimate = (target * Z_95 * Z_95 / (1.0 - target)).floor();
    let start = if estimate.is_finite() && estimate >= 3.0 {
        (estimate as u64).saturating_sub(2)
    } else {
        1
    };
    (start..=MAX_REVIEWS_NEEDED)
        .find(|n| wilson(*n, *n, Z_95).is_ok_and(|interval| interval.low >= target))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demotion {
    #[serde(default = "target_error")]
    pub target_error_rate: f64,
    #[serde(default = "alpha")]
    pub alpha: f64,
    #[serde(default = "beta")]
    pub beta: f64,
}

fn target_error() -> f64 {
    0.05
}
fn alpha() -> f64 {
    0.05
}
fn beta() -> f64 {
    0.2
}

impl Default for Demotion {
    fn default() -> Self {
        Demotion {
            target_error_rate: target_error(),
            alpha: alpha(),
            beta: beta(),
        }
    }
}

/// Where a changed workflow version restarts the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangedVersionPhase {
    /// One phase below the current one (not below 1).
    Down,
    /// This phase, or the current one if that is lower.
    Phase(u8),
}

/// One operation's trust configuration (defaults are the safe ones).
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// The phase a new operation starts in.
    pub phase: u8,
    /// Phase 2's auto-approval condition; without one, phase 2 asks a person every time.
    pub policy: Option<Expr>,
    /// Forces a person in every phase when true.
    pub hard_limits: Option<Expr>,
    /// Which exceptions of the operation (raised at its action step or one of its `ai` steps)
    /// are critical: CEL over `exception` (id, case_id, workflow, step, kind, message,
    /// fingerprint, detail). A critical exception sends the operation back to phase 1 at once.
    /// A post-hoc review that rejects an automatic action is critical whatever this says.
    pub critical: Option<Expr>,
    pub review_rates: ReviewRates,
    pub promotion: Promotion,
    pub demotion: Demotion,
    /// Roles that may approve a promotion.
    pub approvers: Vec<String>,
    pub changed_version_phase: ChangedVersionPhase,
    /// `gate: none` with its `reason`: the author declares in writing that this step runs
    /// without the gate although AI influences it (`keel check` warns; deploys journal it).
    pub ungated: Option<String>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            phase: 1,
            policy: None,
            hard_limits: None,
            critical: None,
            review_rates: ReviewRates::default(),
            promotion: Promotion::default(),
            demotion: Demotion::default(),
            approvers: vec!["governor".to_string()],
            changed_version_phase: ChangedVersionPhase::Down,
            ungated: None,
        }
    }
}

impl TrustConfig {
    /// What change control compares between versions: the policy, the hard limits and the
    /// phase settings (prompts and routes are compared by the caller, from the `ai` steps).
    pub fn fingerprint(&self) -> Value {
        serde_json::json!({
            "policy": self.policy.as_ref().map(Expr::source),
            "hard_limits": self.hard_limits.as_ref().map(Expr::source),
            "phase": self.phase,
        })
    }

    /// Parses the `trust:` block of an action (as JSON); every problem as one message.
    pub fn from_json(value: &Value) -> Result<TrustConfig, String> {
        let Value::Object(fields) = value else {
            return Err("`trust` must be a mapping".into());
        };
        const KNOWN: [&str; 11] = [
            "phase",
            "policy",
            "hard_limits",
            "critical",
            "review_rates",
            "promotion",
            "demotion",
            "approvers",
            "changed_version_phase",
            "gate",
            "reason",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown field `{unknown}` in `trust`; the fields are {}",
                KNOWN.join(", ")
            ));
        }
        let mut config = TrustConfig {
            ungated: ungated_reason(fields)?,
            ..TrustConfig::default()
        };
        if let Some(phase) = fields.get("phase") {
            config.phase = phase_number(phase).ok_or("`trust.phase` is 1, 2, 3 or 4")?;
        }
        let expr = |name: &str| -> Result<Option<Expr>, String> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(source)) => Expr::compile(source)
                    .map(Some)
                    .map_err(|error| format!("`trust.{name}` does not compile: {error}")),
                Some(_) => Err(format!(
                    "`trust.{name}` must be a CEL expression (a string)"
                )),
            }
        };
        config.policy = expr("policy")?;
        config.hard_limits = expr("hard_limits")?;
        config.critical = expr("critical")?;
        if let Some(rates) = fields.get("review_rates") {
            config.review_rates = serde_json::from_value(rates.clone())
                .map_err(|e| format!("`trust.review_rates`: {e}"))?;
            for (phase, rate) in [
                (2, config.review_rates.phase2),
                (3, config.review_rates.phase3),
                (4, config.review_rates.phase4),
            ] {
                if !(MIN_REVIEW_RATE..=1.0).contains(&rate) {
                    return Err(review_rate_problem(phase, rate));
                }
            }
        }
        if let Some(promotion) = fields.get("promotion") {
            config.promotion = promotion_from(promotion)?;
        }
        if let Some(demotion) = fields.get("demotion") {
            config.demotion = serde_json::from_value(demotion.clone())
                .map_err(|e| format!("`trust.demotion`: {e}"))?;
            let d = config.demotion;
            let in_range = |x: f64| x > 0.0 && x < 0.5;
            if ![d.target_error_rate, d.alpha, d.beta]
                .into_iter()
                .all(in_range)
            {
                return Err(
                    "`trust.demotion`: target_error_rate, alpha and beta must each be in (0, 0.5)"
                        .into(),
                );
            }
        }
        if let Some(approvers) = fields.get("approvers") {
            config.approvers = serde_json::from_value(approvers.clone())
                .map_err(|e| format!("`trust.approvers` must be a list of roles: {e}"))?;
            if config.approvers.is_empty() {
                return Err("`trust.approvers` needs at least one role".into());
            }
        }
        if let Some(changed) = fields.get("changed_version_phase") {
            config.changed_version_phase = match changed {
                Value::String(s) if s == "down" => ChangedVersionPhase::Down,
                other => ChangedVersionPhase::Phase(
                    phase_number(other).ok_or("`trust.changed_version_phase` is `down` or 1..4")?,
                ),
            };
        }
        Ok(config)
    }
}

/// Why a review rate outside [`MIN_REVIEW_RATE`, 1] is refused, and what to give instead.
fn review_rate_problem(phase: u8, rate: f64) -> String {
    let why = match phase {
        2 => "phase 2 approves what its policy allows without a person, and sampled review is the only evidence about those actions",
        _ => "in this phase every action is automatic and sampled post-hoc review is the only evidence: at 0 nothing could ever demote the operation",
    };
    let default = ReviewRates::default().of(phase);
    if rate > 1.0 {
        format!("`trust.review_rates.phase{phase}` is {rate}, above 1 (every action); give {MIN_REVIEW_RATE} to 1, e.g. the default {default}")
    } else {
        format!("`trust.review_rates.phase{phase}` is {rate}: {why}; give at least {MIN_REVIEW_RATE} (review never stops), e.g. the default {default}")
    }
}

/// A `trust:` setting that parses but cannot work as intended: where it is (the keys under
/// `trust`), what is wrong and the number that would work.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingProblem {
    /// Keys from `trust` down to the setting, e.g. `["promotion", "min_reviews"]`.
    pub path: Vec<&'static str>,
    pub message: String,
    pub hint: String,
}

/// The accuracy the demotion test is built to demote: 1 − p1, where p1 is the SPRT's
/// alternative error rate (`keel_tuning::sprt::default_alternative` of `target_error_rate`).
pub fn demoted_accuracy(demotion: &Demotion) -> f64 {
    1.0 - keel_tuning::sprt::default_alternative(demotion.target_error_rate)
}

/// A round number strictly above `floor` and below 1: the next hundredth, or thousandth, …
fn round_above(floor: f64) -> f64 {
    let mut step = 0.01;
    for _ in 0..6 {
        let above = ((floor / step + 1e-9).floor() + 1.0) * step;
        if above < 1.0 {
            return (above / step).round() * step;
        }
        step /= 10.0;
    }
    floor
}

impl TrustConfig {
    /// The settings that contradict each other (see the module documentation); empty when
    /// the configuration can work.
    pub fn setting_problems(&self) -> Vec<SettingProblem> {
        let mut problems = self.target_problems();
        problems.extend(self.review_count_problems());
        problems
    }

    /// Promotion targets at or below the accuracy the SPRT demotes.
    fn target_problems(&self) -> Vec<SettingProblem> {
        let demotion = self.demotion;
        let floor = demoted_accuracy(&demotion);
        let targets = self.promotion.target_agreement;
        [(2, "phase2", targets.phase2), (3, "phase3", targets.phase3), (4, "phase4", targets.phase4)]
            .into_iter()
            .filter(|(_, _, target)| *target <= floor + 1e-12)
            .map(|(phase, key, target)| SettingProblem {
                path: vec!["promotion", "target_agreement", key],
                message: format!(
                    "the target to enter phase {phase} is {target}, at or below {floor:.3}, the accuracy the demotion test is built to demote (its alternative error rate {:.3} = 2 × target_error_rate {}): an operation could be promoted for an accuracy the SPRT then demotes it for",
                    1.0 - floor,
                    demotion.target_error_rate
                ),
                hint: format!(
                    "give a target above {floor:.3}, e.g. {}; the SPRT keeps operations at accuracy {:.3} (1 − target_error_rate) and demotes those at {floor:.3}",
                    round_above(floor),
                    1.0 - demotion.target_error_rate
                ),
            })
            .collect()
    }

    /// `min_reviews` and a counted window too small for the targets' Wilson bounds.
    fn review_count_problems(&self) -> Vec<SettingProblem> {
        let promotion = self.promotion;
        let mut problems = Vec::new();
        let (low_phase, low_target) = promotion.target_agreement.lowest();
        if let Some(needed) = reviews_to_reach(low_target) {
            if promotion.min_reviews < needed {
                let n = promotion.min_reviews;
                let bound = keel_tuning::interval::wilson(n, n, keel_tuning::interval::Z_95)
                    .map_or(0.0, |interval| interval.low);
                problems.push(SettingProblem {
                    path: vec!["promotion", "min_reviews"],
                    message: format!(
                        "`min_reviews` is {n}, but even with all {n} reviews agreeing the Wilson 95% lower bound is {bound:.3}, below the lowest promotion target {low_target} (phase {low_phase}): no promotion can happen before {needed} reviews, so this floor never applies"
                    ),
                    hint: format!("set `min_reviews` to at least {needed}"),
                });
            }
        }
        if let EvidenceWindow::Count(count) = promotion.window {
            let (high_phase, high_target) = promotion.target_agreement.highest();
            let needed = reviews_to_reach(high_target)
                .unwrap_or(u64::MAX)
                .max(promotion.min_reviews);
            if count < needed {
                problems.push(SettingProblem {
                    path: vec!["promotion", "window", "count"],
                    message: format!(
                        "the promotion window holds the last {count} reviews, but entering phase {high_phase} (target {high_target}) needs at least {needed} reviews in it even when every one agrees: the operation could never reach phase {high_phase}"
                    ),
                    hint: format!("give `window: {{ count: {needed} }}` or more"),
                });
            }
        }
        problems
    }
}

/// `gate: none` and its non-empty `reason` (`Some`), or neither (`None`).
fn ungated_reason(fields: &serde_json::Map<String, Value>) -> Result<Option<String>, String> {
    let reason = match fields.get("reason") {
        None => None,
        Some(Value::String(text)) => Some(text.trim().to_string()),
        Some(_) => return Err("`trust.reason` must be text".into()),
    };
    match (fields.get("gate"), reason) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("`trust.reason` explains `gate: none`; give both or neither".into()),
        (Some(Value::String(gate)), Some(reason)) if gate == "none" && !reason.is_empty() => {
            Ok(Some(reason))
        }
        (Some(Value::String(gate)), _) if gate == "none" => Err(
            "`trust: { gate: none }` needs a non-empty `reason`: say in writing why this step may run without a person".into(),
        ),
        (Some(_), _) => Err("`trust.gate` can only be `none` (a deliberately ungated step)".into()),
    }
}

fn phase_number(value: &Value) -> Option<u8> {
    value
        .as_u64()
        .filter(|n| (1..=4).contains(n))
        .and_then(|n| u8::try_from(n).ok())
}

fn promotion_from(value: &Value) -> Result<Promotion, String> {
    let Value::Object(fields) = value else {
        return Err("`trust.promotion` must be a mapping".into());
    };
    let mut promotion = Promotion::default();
    for key in fields.keys() {
        if !["min_reviews", "window", "target_agreement"].contains(&key.as_str()) {
            return Err(format!(
                "unknown field `{key}` in `trust.promotion` (min_reviews, window, target_agreement)"
            ));
        }
    }
    if let Some(min) = fields.get("min_reviews") {
        promotion.min_reviews = min
            .as_u64()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or("`trust.promotion.min_reviews` is a whole number from 1 to 1,000,000")?;
    }
    if let Some(window) = fields.get("window") {
        promotion.window = match window {
            Value::String(text) => {
                let ms =
                    parse_duration(text).map_err(|e| format!("`trust.promotion.window`: {e}"))?;
                EvidenceWindow::Milliseconds(i64::try_from(ms.0).unwrap_or(i64::MAX).max(1))
            }
            Value::Object(map) if map.len() == 1 && map.contains_key("count") => {
                EvidenceWindow::Count(
                    map["count"]
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or("`trust.promotion.window.count` is a positive number")?,
                )
            }
            _ => {
                return Err(
                    "`trust.promotion.window` is a duration (`30d`) or `{ count: 500 }`".into(),
                )
            }
        };
    }
    if let Some(targets) = fields.get("target_agreement") {
        promotion.target_agreement = serde_json::from_value(targets.clone())
            .map_err(|e| format!("`trust.promotion.target_agreement`: {e}"))?;
        let t = promotion.target_agreement;
        if [t.phase2, t.phase3, t.phase4]
            .iter()
            .any(|x| !(*x > 0.0 && *x < 1.0))
        {
            return Err("`trust.promotion.target_agreement` values must be in (0, 1)".into());
        }
    }
    if !fields.contains_key("min_reviews") {
        promotion.min_reviews = default_min_reviews(&promotion.target_agreement);
    }
    Ok(promotion)
}

/// The phase of every operation of one workflow as the engine knows it now (step id →
/// phase); operations missing here are at their configured starting phase.
pub type Phases = std::collections::BTreeMap<String, u8>;

/// What the gate decided for one action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateDecision {
    /// `task` (a person approves first) or `auto`.
    pub decision: &'static str,
    /// `phase_1`, `hard_limit`, `policy_false`, `no_policy`, `policy_true`, `phase_3`,
    /// `phase_4`, or `policy_error` / `hard_limit_error` (which fall to a task).
    pub reason: String,
    pub phase: u8,
    /// For `auto`: whether this one is sampled for post-hoc review, and at what rate.
    pub review_sampled: bool,
    pub review_rate: f64,
}

impl GateDecision {
    pub fn needs_task(&self) -> bool {
        self.decision == "task"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_the_safe_ones_and_bad_settings_are_refused() {
        let config = TrustConfig::from_json(&json!({})).unwrap();
        assert_eq!(config.phase, 1);
        assert!(config.policy.is_none());
        assert_eq!(config.review_rates, ReviewRates::default());
        assert_eq!(config.approvers, ["governor"]);
        let config = TrustConfig::from_json(&json!({
            "phase": 2, "policy": "input.amount < 100", "review_rates": {"phase3": 0.5},
            "promotion": {"min_reviews": 20, "window": {"count": 200}, "target_agreement": {"phase2": 0.9}},
            "changed_version_phase": 1
        }))
        .unwrap();
        assert_eq!(config.review_rates.of(3), 0.5);
        assert_eq!(config.review_rates.of(2), 0.10);
        assert_eq!(config.promotion.window, EvidenceWindow::Count(200));
        assert_eq!(config.promotion.target_agreement.to_enter(2), Some(0.9));
        assert_eq!(config.changed_version_phase, ChangedVersionPhase::Phase(1));
        assert!(config.critical.is_none());
        let config =
            TrustConfig::from_json(&json!({"critical": "exception.kind == \"wrong_action\""}))
                .unwrap();
        assert_eq!(
            config.critical.as_ref().map(Expr::source),
            Some("exception.kind == \"wrong_action\"")
        );
        for (bad, needle) in [
            (
                json!({"critical": "exception.kind =="}),
                "`trust.critical` does not compile",
            ),
            (json!({"critical": 3}), "CEL expression"),
            (json!({"review_rates": {"phase4": 0.0}}), "never stops"),
            (json!({"phase": 5}), "1, 2, 3 or 4"),
            (json!({"policy": "input.amount <"}), "does not compile"),
            (json!({"polcy": "true"}), "unknown field `polcy`"),
            (json!({"demotion": {"alpha": 0.7}}), "(0, 0.5)"),
            (json!({"promotion": {"window": "forever"}}), "window"),
        ] {
            let error = TrustConfig::from_json(&bad).unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn reviews_to_reach_is_the_first_n_whose_wilson_bound_of_n_of_n_reaches_the_target() {
        // n/(n + z²) ≥ t ⇔ n ≥ t·z²/(1 − t), z² = 3.8415.
        assert_eq!(reviews_to_reach(0.95), Some(73));
        assert_eq!(reviews_to_reach(0.97), Some(125));
        assert_eq!(reviews_to_reach(0.99), Some(381));
        assert_eq!(reviews_to_reach(0.5), Some(4));
        assert_eq!(reviews_to_reach(0.01), Some(1));
        assert_eq!(reviews_to_reach(1.0), None);
        assert_eq!(reviews_to_reach(f64::NAN), None);
        for target in [0.3, 0.6, 0.9, 0.95, 0.999] {
            let n = reviews_to_reach(target).unwrap();
            let low = |n: u64| {
                keel_tuning::interval::wilson(n, n, keel_tuning::interval::Z_95)
                    .unwrap()
                    .low
            };
            assert!(
                low(n) >= target && (n == 1 || low(n - 1) < target),
                "{target}: {n}"
            );
        }
    }

    #[test]
    fn the_defaults_have_no_setting_problems_and_say_the_floor_they_mean() {
        let config = TrustConfig::from_json(&json!({})).unwrap();
        assert!(config.setting_problems().is_empty());
        assert_eq!(TrustConfig::default().promotion.min_reviews, 73);
        assert_eq!(config.promotion.min_reviews, 73);
        // A lower target keeps the floor of 50; a stricter one raises it to what it needs.
        let lower =
            TrustConfig::from_json(&json!({"promotion": {"target_agreement": {"phase2": 0.92}}}))
                .unwrap();
        assert_eq!(lower.promotion.min_reviews, 50);
        let stricter = TrustConfig::from_json(
            &json!({"promotion": {"target_agreement": {"phase2": 0.98, "phase3": 0.98, "phase4": 0.99}}}),
        )
        .unwrap();
        assert_eq!(stricter.promotion.min_reviews, 189);
        assert!(stricter.setting_problems().is_empty());
    }

    fn problems(trust: Value) -> Vec<(String, String)> {
        TrustConfig::from_json(&trust)
            .unwrap()
            .setting_problems()
            .into_iter()
            .map(|p| (p.path.join("."), format!("{} / {}", p.message, p.hint)))
            .collect()
    }

    #[test]
    fn contradicting_settings_are_problems_that_name_the_number_that_works() {
        // Phase 2's 0.40 is below 0.90, the accuracy the default SPRT (p1 = 0.10) demotes.
        let found = problems(
            json!({"promotion": {"min_reviews": 80, "target_agreement": {"phase2": 0.4}}}),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "promotion.target_agreement.phase2");
        assert!(found[0].1.contains("at or below 0.900"), "{}", found[0].1);
        assert!(found[0].1.contains("e.g. 0.91"), "{}", found[0].1);
        // At the boundary: refused; just above: accepted.
        let at = problems(
            json!({"promotion": {"min_reviews": 80, "target_agreement": {"phase2": 0.9}}}),
        );
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(problems(
            json!({"promotion": {"min_reviews": 80, "target_agreement": {"phase2": 0.91}}})
        )
        .is_empty());
        // A looser demotion test tolerates lower targets (p0 0.3 → p1 0.6 → 0.4 demoted).
        assert!(problems(json!({"promotion": {"min_reviews": 5, "target_agreement": {"phase2": 0.5, "phase3": 0.5, "phase4": 0.5}},
            "demotion": {"target_error_rate": 0.3}})).is_empty());
        // min_reviews 3 cannot reach 0.95 (3/3 has a lower bound of 0.439): 73 can.
        let found = problems(json!({"promotion": {"min_reviews": 3}}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "promotion.min_reviews");
        assert!(
            found[0].1.contains("0.439") && found[0].1.contains("at least 73"),
            "{}",
            found[0].1
        );
        assert!(problems(json!({"promotion": {"min_reviews": 73}})).is_empty());
        // A counted window must hold what the highest target needs (phase 4's 0.99: 381).
        let found = problems(json!({"promotion": {"window": {"count": 200}}}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "promotion.window.count");
        assert!(found[0].1.contains("count: 381"), "{}", found[0].1);
    }

    #[test]
    fn zero_review_rates_are_refused_with_why_and_what_to_give() {
        let error = TrustConfig::from_json(&json!({"review_rates": {"phase3": 0.0}})).unwrap_err();
        assert!(
            error.contains("only evidence") && error.contains("0.001") && error.contains("0.2"),
            "{error}"
        );
        let error = TrustConfig::from_json(&json!({"review_rates": {"phase4": 1.5}})).unwrap_err();
        assert!(error.contains("above 1"), "{error}");
        assert_eq!(round_above(0.9), 0.91);
        assert_eq!(round_above(0.995), 0.996);
    }
}
