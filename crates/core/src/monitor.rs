//! `monitor:` — drift monitoring of one workflow: features computed per case from its input
//! and from its `ai` steps' accepted proposals, compared between a reference window and the
//! current one by the engine (`keel_tuning::drift` chooses the test).
//!
//! ```yaml
//! monitor:
//!   reference: { days: 28 }          # the reference window, ending where the current one
//!                                    # starts (default 28 days; or `{ hours: N }`, or `28d`)
//!   current: { days: 7 }             # the current window, ending now (default 7 days)
//!   min_rows: 100                    # fewer rows in either window: no test (default 100)
//!   persistence: 2                   # drifted results in a row, each over new data,
//!                                    # before `drift.alert` (default 2; 1 to 10)
//!   retention: 90d                   # how long observations are kept; at least reference
//!                                    # + current (default: see below; or `{ days: N }`)
//!   on_drift: alert                  # or `demote`: also withdraw trust one phase from
//!                                    # every operation of the workflow
//!   features:                        # 1 to 50; names [a-z0-9_]+, unique
//!     - { name: body_length, expr: "size(input.body)" }           # over `input` at creation
//!     - { name: sender_domain, expr: "input.sender_domain", kind: categorical }
//!     - { name: label, expr: "output.label", step: classify }     # over an `ai` step's
//!     - { name: confidence, expr: "confidence", step: classify }  # accepted proposal
//!       # optional: method: ks|wasserstein|chi_square|z_test|jensen_shannon|psi, threshold: 0.1
//! ```
//!
//! **Row-count windows** give a first result as soon as the rows are there, instead of after
//! the 7 days of the default current window: `reference: { rows: 200 }` and
//! `current: { rows: 50 }` compare a feature's newest 50 values with the 200 before them
//! (both windows count rows, or both count time). Cases on which the feature's expression
//! failed are not values and do not count. `min_rows` then defaults to the smaller window (at
//! most 100), so the first test runs once 50 + 50 values are in, and `retention` defaults to
//! [`ROW_WINDOW_RETENTION_MS`] (90 days): rows older than that are gone, so a feature that
//! sees fewer values than both windows in that time needs a longer `retention`.
//!
//! **Persistence.** One drifted result is not an alert: a feature alerts (journals
//! `drift.alert` and, with `on_drift: demote`, demotes) only when `persistence` consecutive
//! results drifted, each one's current window starting at or after the end of the previous
//! counted one, so that each is a new look at new data rather than the same rows evaluated
//! again a minute later. A result with no drift ends the run (and journals `drift.recovered`
//! if the feature had alerted); a result that could not test (too few rows, an error) neither
//! extends nor ends it.
//!
//! A feature's kind is inferred from its first value (number → numeric, string or bool →
//! categorical) unless `kind:` says. Method names are written one way everywhere
//! (configuration, API, journal, CLI): `keel_tuning::drift::Method::name`.
//!
//! Retention: the engine deletes observations older than `retention`. By default that is both
//! windows and as much again, but at least 7 days more than the windows
//! ([`default_retention`]: 70 days for the default windows), so a new version may widen a
//! window without starting from nothing. Results are kept [`RESULT_RETENTION_MS`] (400 days:
//! a year of monthly reviews), or `retention` when that is longer; the store never deletes a
//! feature's latest result.
//!
//! This module parses the section and turns one expression result into an [`Observation`];
//! storing observations, testing windows and pruning are the engine's business.

use keel_tuning::drift::Method;
use serde::Serialize;

use crate::expr::{Activation, Expr};
use crate::workflow::diagnostic::{closest, Span};
use crate::workflow::parser::{Checker, Usage};
use crate::workflow::yaml::{Node, Value};
use crate::workflow::{DurationMs, Step, StepKind};

/// Most features one monitor may list.
pub const MAX_FEATURES: usize = 50;
/// Longest feature name, in characters.
pub const MAX_FEATURE_NAME_CHARS: usize = 64;
/// Longest categorical value kept; longer values are cut (on a character boundary).
pub const MAX_CATEGORY_CHARS: usize = 256;
/// Bounds of `min_rows`.
pub const MIN_ROWS_RANGE: (u64, u64) = (1, 100_000);
/// Default `min_rows` (and, for row windows, its most).
pub const DEFAULT_MIN_ROWS: u64 = 100;
/// Bounds of a row-count window (the engine reads at most 100,000 rows per window).
pub const ROW_WINDOW_RANGE: (u64, u64) = (10, 100_000);
/// Default `retention` with row-count windows: 90 days.
pub const ROW_WINDOW_RETENTION_MS: u64 = 90 * DAY_MS;
/// Bounds of `persistence`, and its default.
pub const PERSISTENCE_RANGE: (u32, u32) = (1, 10);
pub const DEFAULT_PERSISTENCE: u32 = 2;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Bounds of either window: one hour to 366 days.
pub const WINDOW_RANGE_MS: (u64, u64) = (HOUR_MS, 366 * DAY_MS);
/// Longest `retention`: ten years.
pub const MAX_RETENTION_MS: u64 = 3_660 * DAY_MS;
/// Least time the default retention keeps observations beyond both windows.
pub const MIN_RETENTION_MARGIN_MS: u64 = 7 * DAY_MS;
/// How long results are kept at least: a year of monthly reviews, and a month to spare.
pub const RESULT_RETENTION_MS: u64 = 400 * DAY_MS;

const FIELDS: &[&str] = &[
    "reference",
    "current",
    "min_rows",
    "persistence",
    "retention",
    "on_drift",
    "features",
];
const FEATURE_FIELDS: &[&str] = &["name", "expr", "kind", "step", "method", "threshold"];

/// A checked `monitor:` section.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Length of the reference window, which ends where the current one starts.
    pub reference: WindowLength,
    /// Length of the current window, which ends now. Of the same kind as `reference`.
    pub current: WindowLength,
    /// Fewer rows than this in either window: the feature is not tested.
    pub min_rows: u64,
    /// Consecutive drifted results (each over a new current window) before an alert.
    pub persistence: u32,
    /// How long observations are kept; at least `reference + current`, what an evaluation
    /// reads back.
    pub retention: DurationMs,
    pub on_drift: OnDrift,
    /// 1 to [`MAX_FEATURES`], names unique.
    pub features: Vec<Feature>,
}

/// How long a window is: a time span, or a number of the feature's newest values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowLength {
    Duration(DurationMs),
    Rows(u64),
}

impl WindowLength {
    pub fn rows(self) -> Option<u64> {
        match self {
            WindowLength::Rows(rows) => Some(rows),
            WindowLength::Duration(_) => None,
        }
    }

    pub fn duration(self) -> Option<DurationMs> {
        match self {
            WindowLength::Duration(duration) => Some(duration),
            WindowLength::Rows(_) => None,
        }
    }
}

/// What a drift alert does besides being journaled (and so reaching webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    Alert,
    /// Also move every operation of the workflow above phase 1 down one phase.
    Demote,
}

/// One monitored feature.
#[derive(Debug, Clone)]
pub struct Feature {
    /// `[a-z0-9_]+`, unique within the monitor.
    pub name: String,
    /// Over `input` (and `case`, `now`) at creation; with `step`, also `output`, `confidence`
    /// and `data` of the `ai` step's accepted proposal.
    pub expr: Expr,
    /// `None`: inferred from the first value.
    pub kind: Option<FeatureKind>,
    /// The `ai` step whose proposals this feature reads; `None`: the case input.
    pub step: Option<String>,
    /// `None`: chosen as Evidently does.
    pub method: Option<Method>,
    /// `None`: the method's default.
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

impl FeatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Categorical => "categorical",
        }
    }
}

/// One feature's value for one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Numeric(f64),
    Categorical(String),
    /// The expression failed, or its value has no kind (null, a list, a map), or the wrong
    /// one for the feature's declared kind.
    Failed(String),
}

/// What retention deletes at one time: rows strictly older than these, in milliseconds since
/// the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cutoffs {
    pub observations_before_ms: i64,
    pub results_before_ms: i64,
}

/// Both windows of one evaluation, in milliseconds since the epoch: reference is
/// `[reference_from_ms, current_from_ms)`, current is `[current_from_ms, current_to_ms]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Windows {
    pub reference_from_ms: i64,
    pub current_from_ms: i64,
    pub current_to_ms: i64,
}

impl Monitor {
    /// The time windows of an evaluation at `now_ms`; `None` for row-count windows, whose
    /// bounds are the times of the rows they hold.
    pub fn windows(&self, now_ms: i64) -> Option<Windows> {
        let (reference, current) = self.reference.duration().zip(self.current.duration())?;
        let current = i64::try_from(current.0).unwrap_or(i64::MAX);
        let reference = i64::try_from(reference.0).unwrap_or(i64::MAX);
        let current_from_ms = now_ms.saturating_sub(current);
        Some(Windows {
            reference_from_ms: current_from_ms.saturating_sub(reference),
            current_from_ms,
            current_to_ms: now_ms,
        })
    }

    /// Both windows' row counts, when they are row-count windows.
    pub fn row_windows(&self) -> Option<(u64, u64)> {
        self.reference.rows().zip(self.current.rows())
    }

    /// How long results are kept: [`RESULT_RETENTION_MS`], or `retention` when longer, so no
    /// result is deleted before the observations it was computed from.
    pub fn results_retention(&self) -> DurationMs {
        DurationMs(self.retention.0.max(RESULT_RETENTION_MS))
    }

    /// What retention deletes at `now_ms`. The observation cutoff is never after the start of
    /// the reference window, because `retention` is at least both windows.
    pub fn retention_cutoffs(&self, now_ms: i64) -> Cutoffs {
        let before =
            |kept: DurationMs| now_ms.saturating_sub(i64::try_from(kept.0).unwrap_or(i64::MAX));
        Cutoffs {
            observations_before_ms: before(self.retention),
            results_before_ms: before(self.results_retention()),
        }
    }

    /// Features evaluated over the input when a case is created.
    pub fn input_features(&self) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(|f| f.step.is_none())
    }

    /// Features evaluated when `step`'s proposal lands.
    pub fn step_features<'m>(&'m self, step: &'m str) -> impl Iterator<Item = &'m Feature> {
        self.features
            .iter()
            .filter(move |f| f.step.as_deref() == Some(step))
    }
}

impl Feature {
    /// Evaluates the feature; `activation` holds `input`, `data`, `case`, `now` and, for a
    /// step feature, `output` and `confidence`.
    pub fn observe(&self, activation: &Activation) -> Observation {
        match self.expr.eval(activation) {
            Ok(value) => self.classify(&value),
            Err(error) => Observation::Failed(error.message),
        }
    }

    /// Whether the expression reads the case (`input`, `data`, `case`) besides the proposal.
    pub fn reads_case(&self) -> bool {
        self.expr
            .variables()
            .iter()
            .any(|v| matches!(v.as_str(), "input" | "data" | "case"))
    }

    fn classify(&self, value: &serde_json::Value) -> Observation {
        use serde_json::Value as Json;
        match (value, self.kind) {
            (Json::Number(n), Some(FeatureKind::Categorical)) => {
                Observation::Categorical(n.to_string())
            }
            (Json::Number(n), _) => match n.as_f64().filter(|x| x.is_finite()) {
                Some(x) => Observation::Numeric(x),
                None => Observation::Failed(format!("{n} is not a finite number")),
            },
            (Json::Bool(b), Some(FeatureKind::Numeric)) => {
                Observation::Numeric(if *b { 1.0 } else { 0.0 })
            }
            (Json::Bool(b), _) => Observation::Categorical(b.to_string()),
            (Json::String(_), Some(FeatureKind::Numeric)) => {
                Observation::Failed("a string where the feature is numeric".to_string())
            }
            (Json::String(s), _) => {
                Observation::Categorical(s.chars().take(MAX_CATEGORY_CHARS).collect())
            }
            (Json::Null, _) => Observation::Failed("the value is null".to_string()),
            (Json::Array(_) | Json::Object(_), _) => Observation::Failed(
                "a list or map; a feature must be a number, a string or a bool".to_string(),
            ),
        }
    }
}

/// The retention of a monitor without `retention:`: both windows, and as much again but at
/// least [`MIN_RETENTION_MARGIN_MS`] (70 days for the default 28 + 7), so a new version can
/// widen a window without starting from nothing.
pub fn default_retention(reference: DurationMs, current: DurationMs) -> DurationMs {
    let windows = reference.0.saturating_add(current.0);
    DurationMs(windows.saturating_add(windows.max(MIN_RETENTION_MARGIN_MS)))
}

/// The `min_rows` of a monitor without one: 100, or the smaller row window if less.
pub fn default_min_rows(reference: WindowLength, current: WindowLength) -> u64 {
    match (reference.rows(), current.rows()) {
        (Some(reference), Some(current)) => reference.min(current).min(DEFAULT_MIN_ROWS),
        _ => DEFAULT_MIN_ROWS,
    }
}

/// `duration` as a workflow file writes it, largest unit first (`35d`, `1d12h`, `90s`).
fn duration_text(duration: DurationMs) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("d", DAY_MS),
        ("h", HOUR_MS),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = duration.0;
    let mut text = String::new();
    for (unit, unit_ms) in UNITS {
        if rest >= unit_ms {
            text.push_str(&format!("{}{unit}", rest / unit_ms));
            rest %= unit_ms;
        }
    }
    if text.is_empty() {
        text.push_str("0ms");
    }
    text
}

/// Whether `name` is a feature name: `[a-z0-9_]+`, at most [`MAX_FEATURE_NAME_CHARS`].
pub fn is_feature_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_FEATURE_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The name a method is written with, everywhere (`chi_square`, `jensen_shannon`, ...).
pub fn method_name(method: Method) -> &'static str {
    method.name()
}

fn is_p_value(method: Method) -> bool {
    matches!(method, Method::Ks | Method::ChiSquare | Method::ZTest)
}

impl Checker<'_> {
    /// `monitor:`; `steps` (when they parsed) are where `step:` must point.
    pub(crate) fn monitor(
        &mut self,
        node: &Node,
        key: Span,
        steps: Option<&[Step]>,
    ) -> Option<Monitor> {
        let fields = self.fields(node, "`monitor`", key, FIELDS, &["features"])?;
        let errors = self.error_count();
        let reference = match fields.get("reference") {
            Some(n) => self.window(n, "`monitor.reference`"),
            None => Some(WindowLength::Duration(DurationMs(28 * DAY_MS))),
        };
        let current = match fields.get("current") {
            Some(n) => self.window(n, "`monitor.current`"),
            None => Some(WindowLength::Duration(DurationMs(7 * DAY_MS))),
        };
        let windows = match (reference, current) {
            (Some(reference), Some(current)) => self.same_kind(node, reference, current),
            _ => None,
        };
        let min_rows = match (fields.get("min_rows"), windows) {
            (Some(n), _) => self.min_rows(n, windows),
            (None, Some((reference, current))) => Some(default_min_rows(reference, current)),
            (None, None) => None,
        };
        let persistence = match fields.get("persistence") {
            Some(n) => self.persistence(n),
            None => Some(DEFAULT_PERSISTENCE),
        };
        let retention = match (fields.get("retention"), windows) {
            (Some(n), _) => self.retention(n, windows),
            (None, Some((WindowLength::Duration(reference), WindowLength::Duration(current)))) => {
                Some(default_retention(reference, current))
            }
            (None, Some(_)) => Some(DurationMs(ROW_WINDOW_RETENTION_MS)),
            (None, None) => None,
        };
        let on_drift = match fields.get("on_drift") {
            None => Some(OnDrift::Alert),
            Some(n) => match n.as_str() {
                Some("alert") => Some(OnDrift::Alert),
                Some("demote") => Some(OnDrift::Demote),
                _ => {
                    self.error(
                        "invalid-value",
                        n.span,
                        "`monitor.on_drift` is `alert` or `demote`".to_string(),
                        "`alert` journals `drift.alert` (and sends it to webhooks); `demote` also withdraws trust one phase from the workflow's operations".to_string(),
                    );
                    None
                }
            },
        };
        let features = fields.get("features").and_then(|n| self.features(n, steps));
        let (reference, current) = windows?;
        let monitor = Monitor {
            reference,
            current,
            min_rows: min_rows?,
            persistence: persistence?,
            retention: retention?,
            on_drift: on_drift?,
            features: features?,
        };
        (self.error_count() == errors).then_some(monitor)
    }

    /// `{ rows: N }`, or `{ days: N }`, `{ hours: N }` or a duration such as `28d`, from one
    /// hour to 366 days.
    fn window(&mut self, node: &Node, what: &str) -> Option<WindowLength> {
        if let Value::Map(entries) = &node.value {
            if entries.iter().any(|(key, _)| key.as_str() == Some("rows")) {
                return self.row_window(node, what).map(WindowLength::Rows);
            }
        }
        let duration = self.length(node, what)?;
        let (low, high) = WINDOW_RANGE_MS;
        if duration.0 < low || duration.0 > high {
            self.error(
                "out-of-range",
                node.span,
                format!("{what} is outside 1 hour to 366 days"),
                "a window is `{ days: 1 }` to `{ days: 366 }`, `{ hours: N }`, or a row count such as `{ rows: 200 }`".to_string(),
            );
            return None;
        }
        Some(WindowLength::Duration(duration))
    }

    /// `{ rows: N }`, N within [`ROW_WINDOW_RANGE`].
    fn row_window(&mut self, node: &Node, what: &str) -> Option<u64> {
        let fields = self.fields(node, what, node.span, &["rows"], &["rows"])?;
        let rows = fields.get("rows")?;
        let (low, high) = ROW_WINDOW_RANGE;
        match rows.value {
            Value::Int(n) if (low as i64..=high as i64).contains(&n) => u64::try_from(n).ok(),
            Value::Int(n) => {
                self.error(
                    "out-of-range",
                    rows.span,
                    format!("{what} of {n} rows is outside {low}..={high}"),
                    "e.g. `reference: { rows: 200 }` and `current: { rows: 50 }`".to_string(),
                );
                None
            }
            _ => {
                self.wrong_type(rows, what, "a whole number of rows");
                None
            }
        }
    }

    /// Both windows count rows, or both count time.
    fn same_kind(
        &mut self,
        node: &Node,
        reference: WindowLength,
        current: WindowLength,
    ) -> Option<(WindowLength, WindowLength)> {
        if reference.rows().is_some() == current.rows().is_some() {
            return Some((reference, current));
        }
        self.error(
            "invalid-value",
            node.span,
            "`monitor.reference` and `monitor.current` must both be row counts or both be durations".to_string(),
            "e.g. `reference: { rows: 200 }` with `current: { rows: 50 }`, or `reference: { days: 28 }` with `current: { days: 7 }`".to_string(),
        );
        None
    }

    fn persistence(&mut self, node: &Node) -> Option<u32> {
        let (low, high) = PERSISTENCE_RANGE;
        match node.value {
            Value::Int(n) if (i64::from(low)..=i64::from(high)).contains(&n) => {
                u32::try_from(n).ok()
            }
            Value::Int(_) => {
                self.error(
                    "out-of-range",
                    node.span,
                    format!("`monitor.persistence` is outside {low}..={high}"),
                    format!("the number of consecutive drifted results before an alert; {DEFAULT_PERSISTENCE} is the default, 1 alerts on the first"),
                );
                None
            }
            _ => {
                self.wrong_type(node, "`monitor.persistence`", "a whole number");
                None
            }
        }
    }

    /// `monitor.retention`: a length no shorter than both windows (`windows`, when they
    /// parsed), since an evaluation reads both back, and at most [`MAX_RETENTION_MS`].
    fn retention(
        &mut self,
        node: &Node,
        windows: Option<(WindowLength, WindowLength)>,
    ) -> Option<DurationMs> {
        let what = "`monitor.retention`";
        let retention = self.length(node, what)?;
        if retention.0 > MAX_RETENTION_MS {
            self.error(
                "out-of-range",
                node.span,
                format!("{what} is longer than {} days", MAX_RETENTION_MS / DAY_MS),
                "observations are kept at most ten years, e.g. `{ days: 365 }`".to_string(),
            );
            return None;
        }
        let (reference, current) = windows?;
        let (Some(reference), Some(current)) = (reference.duration(), current.duration()) else {
            // Row windows: any retention up to the most; rows older than it are not read.
            return Some(retention);
        };
        let minimum = DurationMs(reference.0.saturating_add(current.0));
        if retention < minimum {
            self.error(
                "out-of-range",
                node.span,
                format!(
                    "{what} {} is shorter than the two windows: the minimum is {} (reference {} + current {})",
                    duration_text(retention),
                    duration_text(minimum),
                    duration_text(reference),
                    duration_text(current),
                ),
                format!(
                    "observations older than `retention` are deleted, and every evaluation reads both windows back; write at least `{}`, or leave `retention` out for the default, {}",
                    duration_text(minimum),
                    duration_text(default_retention(reference, current)),
                ),
            );
            return None;
        }
        Some(retention)
    }

    /// `{ days: N }`, `{ hours: N }` or a duration such as `28d`.
    fn length(&mut self, node: &Node, what: &str) -> Option<DurationMs> {
        Some(match &node.value {
            Value::Map(_) => {
                let fields = self.fields(node, what, node.span, &["days", "hours"], &[])?;
                let (unit_ms, count) = match (fields.get("days"), fields.get("hours")) {
                    (Some(days), None) => (DAY_MS, days),
                    (None, Some(hours)) => (HOUR_MS, hours),
                    _ => {
                        self.error(
                            "invalid-value",
                            node.span,
                            format!("{what} needs exactly one of `days` or `hours`"),
                            "e.g. `{ days: 28 }`".to_string(),
                        );
                        return None;
                    }
                };
                match count.value {
                    Value::Int(n) if n > 0 => {
                        DurationMs(u64::try_from(n).ok()?.saturating_mul(unit_ms))
                    }
                    _ => {
                        self.wrong_type(count, what, "a positive whole number");
                        return None;
                    }
                }
            }
            _ => self.duration(node, what)?,
        })
    }

    fn min_rows(
        &mut self,
        node: &Node,
        windows: Option<(WindowLength, WindowLength)>,
    ) -> Option<u64> {
        let (low, high) = MIN_ROWS_RANGE;
        let min_rows = match node.value {
            Value::Int(n) if (low as i64..=high as i64).contains(&n) => u64::try_from(n).ok()?,
            Value::Int(_) => {
                self.error(
                    "out-of-range",
                    node.span,
                    format!("`monitor.min_rows` is outside {low}..={high}"),
                    "below this many rows in either window a feature is not tested; 100 is the default".to_string(),
                );
                return None;
            }
            _ => {
                self.wrong_type(node, "`monitor.min_rows`", "a whole number");
                return None;
            }
        };
        let smaller = windows.and_then(|(reference, current)| reference.rows().zip(current.rows()));
        if let Some(smaller) = smaller.map(|(reference, current)| reference.min(current)) {
            if min_rows > smaller {
                self.error(
                    "out-of-range",
                    node.span,
                    format!("`monitor.min_rows` {min_rows} is more than the smaller row window ({smaller} rows), so no feature would ever be tested"),
                    format!("write at most `min_rows: {smaller}`, or leave it out for the default ({})", smaller.min(DEFAULT_MIN_ROWS)),
                );
                return None;
            }
        }
        Some(min_rows)
    }

    fn features(&mut self, node: &Node, steps: Option<&[Step]>) -> Option<Vec<Feature>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`monitor.features`", "a list of features");
            return None;
        };
        if items.is_empty() {
            self.error(
                "empty",
                node.span,
                "`monitor.features` is empty".to_string(),
                "add e.g. `- { name: amount, expr: \"input.amount\" }`".to_string(),
            );
            return None;
        }
        if items.len() > MAX_FEATURES {
            self.error(
                "out-of-range",
                node.span,
                format!("{} features; the limit is {MAX_FEATURES}", items.len()),
                "monitor the features that matter; split the rest into another workflow's monitor"
                    .to_string(),
            );
            return None;
        }
        let mut features: Vec<Feature> = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut ok = true;
        for item in items {
            match self.feature(item, steps, &mut seen) {
                Some(feature) => features.push(feature),
                None => ok = false,
            }
        }
        ok.then_some(features)
    }

    fn feature(
        &mut self,
        item: &Node,
        steps: Option<&[Step]>,
        seen: &mut Vec<(String, usize)>,
    ) -> Option<Feature> {
        let fields = self.fields(
            item,
            "a monitor feature",
            item.span,
            FEATURE_FIELDS,
            &["name", "expr"],
        )?;
        let name = fields.get("name").and_then(|n| self.feature_name(n, seen));
        let step = match fields.get("step") {
            None => Some(None),
            Some(n) => self.monitored_step(n, steps).map(Some),
        };
        let kind = match fields.get("kind") {
            None => Some(None),
            Some(n) => match n.as_str() {
                Some("numeric") => Some(Some(FeatureKind::Numeric)),
                Some("categorical") => Some(Some(FeatureKind::Categorical)),
                _ => {
                    self.error(
                        "invalid-value",
                        n.span,
                        "`kind` is `numeric` or `categorical`".to_string(),
                        "leave it out to infer the kind from the first value".to_string(),
                    );
                    None
                }
            },
        };
        let expr = fields
            .get("expr")
            .and_then(|n| self.feature_expr(n, fields.get("step").is_some()));
        let method = match fields.get("method") {
            None => Some(None),
            Some(n) => self.method_of(n, kind.flatten()).map(Some),
        };
        let threshold = match fields.get("threshold") {
            None => Some(None),
            Some(n) => self.threshold(n, method.flatten()).map(Some),
        };
        Some(Feature {
            name: name?,
            expr: expr?,
            kind: kind?,
            step: step?,
            method: method?,
            threshold: threshold?,
        })
    }

    fn feature_name(&mut self, node: &Node, seen: &mut Vec<(String, usize)>) -> Option<String> {
        let name = self.string(node, "a feature `name`")?;
        if !is_feature_name(&name) {
            self.error(
                "invalid-name",
                node.span,
                format!("feature name `{name}` is not valid: use 1 to {MAX_FEATURE_NAME_CHARS} lowercase letters, digits or `_`"),
                "e.g. `body_length`".to_string(),
            );
            return None;
        }
        if let Some((_, line)) = seen.iter().find(|(other, _)| *other == name) {
            self.error(
                "invalid-value",
                node.span,
                format!("feature `{name}` is defined twice (first on line {line})"),
                "give every feature its own name".to_string(),
            );
            return None;
        }
        seen.push((name.clone(), node.span.line));
        Some(name)
    }

    fn monitored_step(&mut self, node: &Node, steps: Option<&[Step]>) -> Option<String> {
        let id = self.string(node, "a feature's `step`")?;
        let Some(steps) = steps else {
            return Some(id);
        };
        match steps.iter().find(|step| step.id == id) {
            Some(Step {
                kind: StepKind::Ai(_),
                ..
            }) => Some(id),
            Some(step) => {
                self.error(
                    "invalid-value",
                    node.span,
                    format!("step `{id}` is not an `ai` step (it is `{}`); a feature's `step` must name an `ai` step", step.kind.keyword()),
                    "leave `step` out to read the case input when the case is created".to_string(),
                );
                None
            }
            None => {
                let ai_steps: Vec<&str> = steps
                    .iter()
                    .filter(|s| matches!(s.kind, StepKind::Ai(_)))
                    .map(|s| s.id.as_str())
                    .collect();
                let hint = match closest(&id, ai_steps.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None if ai_steps.is_empty() => "this workflow has no `ai` step".to_string(),
                    None => format!("`ai` steps: {}", ai_steps.join(", ")),
                };
                self.error(
                    "unknown-step",
                    node.span,
                    format!("no step `{id}` in this workflow"),
                    hint,
                );
                None
            }
        }
    }

    fn feature_expr(&mut self, node: &Node, has_step: bool) -> Option<Expr> {
        self.extra_variables = &["output", "confidence"];
        let expr = self.expr(node, Usage::Value);
        self.extra_variables = &[];
        let expr = expr?;
        if !has_step {
            if let Some(variable) = expr
                .variables()
                .into_iter()
                .find(|v| v == "output" || v == "confidence")
            {
                self.error(
                    "unknown-variable",
                    node.span,
                    format!("`{variable}` is only known to a feature with `step:`"),
                    "add `step: <ai step id>` to read that step's accepted proposal".to_string(),
                );
                return None;
            }
        }
        Some(expr)
    }

    fn method_of(&mut self, node: &Node, kind: Option<FeatureKind>) -> Option<Method> {
        let text = self.string(node, "`method`")?;
        let Some(method) = Method::from_name(&text) else {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            let hint = match closest(&text, names.iter().copied()) {
                Some(near) => format!("did you mean `{near}`? methods: {}", names.join(", ")),
                None => format!("methods: {}", names.join(", ")),
            };
            self.error(
                "invalid-value",
                node.span,
                format!("unknown drift method `{text}`"),
                hint,
            );
            return None;
        };
        if kind == Some(FeatureKind::Categorical)
            && matches!(method, Method::Ks | Method::Wasserstein)
        {
            self.error(
                "invalid-value",
                node.span,
                format!("`{text}` needs numeric values, and this feature is categorical"),
                "use chi_square, z_test, jensen_shannon or psi for categories".to_string(),
            );
            return None;
        }
        Some(method)
    }

    fn threshold(&mut self, node: &Node, method: Option<Method>) -> Option<f64> {
        let value = match node.value {
            Value::Int(n) => n as f64,
            Value::Float(x) => x,
            _ => {
                self.wrong_type(node, "`threshold`", "a number");
                return None;
            }
        };
        let p_value = method.is_none_or(is_p_value);
        let fits = value.is_finite() && value > 0.0 && (!p_value || value < 1.0) && value <= 100.0;
        if !fits {
            let (range, hint) = if p_value {
                ("(0, 1)", "a p-value threshold such as 0.05; without `method` the default test may be a p-value")
            } else {
                ("(0, 100]", "a distance threshold such as 0.1")
            };
            self.error(
                "out-of-range",
                node.span,
                format!("`threshold` {value} is outside {range}"),
                hint.to_string(),
            );
            return None;
        }
        Some(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::workflow::check_str;

    const HEAD: &str = "name: t\nversion: \"1\"\ninput: { schema: { type: object } }\nsteps:\n  - id: judge\n    ai:\n      task: classify\n      labels: [a, b]\n      prompt: \"{{ input.text }}\"\n      route:\n        - model: small\n  - id: done\n    end: done\n";

    fn check(monitor: &str) -> Result<Monitor, Vec<(usize, &'static str, String)>> {
        let source = format!("{HEAD}monitor:\n{monitor}");
        let checked = check_str(&source, "t.yaml", None);
        match checked.workflow {
            Some(workflow) => Ok(workflow.monitor.unwrap()),
            None => Err(checked
                .diagnostics
                .into_iter()
                .map(|d| (d.line, d.code, d.message))
                .collect()),
        }
    }

    #[test]
    fn defaults_and_kinds() {
        let monitor = check("  features:\n    - { name: body_length, expr: \"size(input.text)\" }\n    - { name: label, expr: output.label, step: judge, method: chi_square, threshold: 0.01 }\n").unwrap();
        assert_eq!(
            monitor.reference,
            WindowLength::Duration(DurationMs(28 * DAY_MS))
        );
        assert_eq!(
            monitor.current,
            WindowLength::Duration(DurationMs(7 * DAY_MS))
        );
        assert_eq!(monitor.min_rows, 100);
        assert_eq!(monitor.persistence, 2);
        assert_eq!(monitor.on_drift, OnDrift::Alert);
        assert_eq!(monitor.input_features().count(), 1);
        assert_eq!(monitor.step_features("judge").count(), 1);
        assert_eq!(monitor.features[1].method, Some(Method::ChiSquare));
        let windows = monitor.windows(100 * DAY_MS as i64).unwrap();
        assert_eq!(windows.current_from_ms, 93 * DAY_MS as i64);
        assert_eq!(windows.reference_from_ms, 65 * DAY_MS as i64);
    }

    #[test]
    fn windows_in_hours_and_durations() {
        let monitor = check("  reference: 14d\n  current: { hours: 12 }\n  min_rows: 5\n  on_drift: demote\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(
            monitor.reference,
            WindowLength::Duration(DurationMs(14 * DAY_MS))
        );
        assert_eq!(
            monitor.current,
            WindowLength::Duration(DurationMs(12 * HOUR_MS))
        );
        assert_eq!(monitor.on_drift, OnDrift::Demote);
    }

    #[test]
    fn retention_defaults_to_both_windows_and_as_much_again_and_must_cover_them() {
        let defaults = check("  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(
            defaults.retention,
            DurationMs(70 * DAY_MS),
            "2 × (28d + 7d)"
        );
        assert_eq!(defaults.results_retention(), DurationMs(400 * DAY_MS));
        let short = check("  reference: { hours: 12 }\n  current: { hours: 12 }\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(
            short.retention,
            DurationMs(8 * DAY_MS),
            "both windows (1d) and at least 7 days more"
        );

        let set = check("  retention: 90d\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(set.retention, DurationMs(90 * DAY_MS));
        let exact = check("  reference: 20d\n  current: { hours: 36 }\n  retention: 21d12h\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(exact.retention, DurationMs(21 * DAY_MS + 12 * HOUR_MS));
        let long = check("  retention: { days: 800 }\n  features: [{ name: n, expr: input.n }]\n")
            .unwrap();
        assert_eq!(long.results_retention(), DurationMs(800 * DAY_MS));

        // The cutoffs at some time: observations never before the reference window starts.
        let now_ms = 1_000 * DAY_MS as i64;
        let cutoffs = set.retention_cutoffs(now_ms);
        assert_eq!(cutoffs.observations_before_ms, now_ms - 90 * DAY_MS as i64);
        assert_eq!(cutoffs.results_before_ms, now_ms - 400 * DAY_MS as i64);
        assert!(cutoffs.observations_before_ms <= set.windows(now_ms).unwrap().reference_from_ms);
        let cutoffs = exact.retention_cutoffs(now_ms);
        assert_eq!(
            cutoffs.observations_before_ms,
            exact.windows(now_ms).unwrap().reference_from_ms,
            "retention equal to both windows keeps exactly the reference window's start"
        );

        let problems = check("  reference: { days: 28 }\n  current: 7d\n  retention: 30d\n  features: [{ name: n, expr: input.n }]\n").unwrap_err();
        assert_eq!(
            problems,
            vec![(
                17,
                "out-of-range",
                "`monitor.retention` 30d is shorter than the two windows: the minimum is 35d (reference 28d + current 7d)".to_string()
            )]
        );
        let problems = check("  current: { hours: 12 }\n  retention: { hours: 30 }\n  features: [{ name: n, expr: input.n }]\n").unwrap_err();
        assert_eq!(
            problems,
            vec![(
                16,
                "out-of-range",
                "`monitor.retention` 1d6h is shorter than the two windows: the minimum is 28d12h (reference 28d + current 12h)".to_string()
            )]
        );
    }

    #[test]
    fn problems_point_at_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "  features:\n    - { name: a, expr: input.a, method: kss }\n",
                16,
                "invalid-value",
            ),
            (
                "  features:\n    - { name: a, expr: input.a }\n    - { name: a, expr: input.b }\n",
                17,
                "invalid-value",
            ),
            (
                "  features:\n    - { name: a, expr: input.a, step: done }\n",
                16,
                "invalid-value",
            ),
            (
                "  features:\n    - { name: a, expr: input.a, step: judg }\n",
                16,
                "unknown-step",
            ),
            (
                "  features:\n    - { name: a, expr: output.label }\n",
                16,
                "unknown-variable",
            ),
            (
                "  features:\n    - { name: A, expr: input.a }\n",
                16,
                "invalid-name",
            ),
            (
                "  features:\n    - { name: a, expr: \"input.a +\" }\n",
                16,
                "invalid-expression",
            ),
            (
                "  features:\n    - { name: a, expr: input.a, threshold: 1.5 }\n",
                16,
                "out-of-range",
            ),
            (
                "  features:\n    - { name: a, expr: input.a, kind: categorical, method: ks }\n",
                16,
                "invalid-value",
            ),
            (
                "  current: { days: 0 }\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "wrong-type",
            ),
            (
                "  reference: { days: 400 }\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "out-of-range",
            ),
            (
                "  min_rows: 0\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "out-of-range",
            ),
            (
                "  on_drift: page\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "invalid-value",
            ),
            (
                "  persistence: 0\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "out-of-range",
            ),
            (
                "  current: { rows: 5 }\n  reference: { rows: 50 }\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "out-of-range",
            ),
            (
                "  retention: { days: 4000 }\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "out-of-range",
            ),
            (
                "  retention: 90\n  features: [{ name: a, expr: input.a }]\n",
                15,
                "invalid-duration",
            ),
            ("  features: []\n", 15, "empty"),
            ("  feature: []\n", 15, "unknown-field"),
        ];
        for (monitor, line, code) in cases {
            let problems = check(monitor).unwrap_err();
            assert!(
                problems.iter().any(|(l, c, _)| l == line && c == code),
                "{monitor}: {problems:?}"
            );
        }
    }

    #[test]
    fn row_windows_persistence_and_method_names() {
        let rows = check("  reference: { rows: 200 }\n  current: { rows: 50 }\n  persistence: 3\n  features: [{ name: n, expr: input.n, method: jensen_shannon }]\n").unwrap();
        assert_eq!(rows.row_windows(), Some((200, 50)));
        assert_eq!(rows.windows(0), None);
        assert_eq!(rows.min_rows, 50, "the smaller window");
        assert_eq!(rows.persistence, 3);
        assert_eq!(rows.retention, DurationMs(ROW_WINDOW_RETENTION_MS));
        assert_eq!(rows.features[0].method, Some(Method::JensenShannon));
        let large = check("  reference: { rows: 5000 }\n  current: { rows: 1000 }\n  min_rows: 300\n  retention: 30d\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(
            (large.min_rows, large.retention),
            (300, DurationMs(30 * DAY_MS))
        );
        let default = check("  reference: { rows: 5000 }\n  current: { rows: 1000 }\n  features: [{ name: n, expr: input.n }]\n").unwrap();
        assert_eq!(default.min_rows, 100);

        let problems = check("  reference: { rows: 200 }\n  current: { days: 7 }\n  features: [{ name: n, expr: input.n }]\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].2.contains("both be row counts"), "{problems:?}");
        let problems = check("  reference: { rows: 200 }\n  current: { rows: 50 }\n  min_rows: 60\n  features: [{ name: n, expr: input.n }]\n").unwrap_err();
        assert_eq!(problems[0].0, 17);
        assert!(
            problems[0].2.contains("smaller row window (50 rows)"),
            "{problems:?}"
        );
        // One spelling of each method; the others are refused with the valid names.
        let problems =
            check("  features: [{ name: n, expr: input.n, method: chisquare }]\n").unwrap_err();
        assert_eq!(problems[0].2, "unknown drift method `chisquare`");
        let checked = check_str(&format!("{HEAD}monitor:\n  features: [{{ name: n, expr: input.n, method: jensenshannon }}]\n"), "t.yaml", None);
        let hint = checked.diagnostics[0].hint.clone().unwrap_or_default();
        assert!(
            hint.contains("ks, wasserstein, chi_square, z_test, jensen_shannon, psi"),
            "{hint}"
        );
    }

    #[test]
    fn at_most_fifty_features() {
        let many: String = (0..51)
            .map(|i| format!("    - {{ name: f{i}, expr: input.a }}\n"))
            .collect();
        let problems = check(&format!("  features:\n{many}")).unwrap_err();
        assert!(problems.iter().any(|(_, code, _)| *code == "out-of-range"));
    }

    #[test]
    fn observations_take_the_kind_of_their_value() {
        let monitor = check("  features:\n    - { name: n, expr: input.n }\n    - { name: c, expr: input.n, kind: categorical }\n    - { name: b, expr: input.flag, kind: numeric }\n").unwrap();
        let activation = |input: serde_json::Value| {
            Activation::new(
                &input,
                &serde_json::json!({}),
                &serde_json::json!({}),
                chrono::DateTime::UNIX_EPOCH,
            )
        };
        let seen = activation(serde_json::json!({"n": 3, "flag": true}));
        assert_eq!(
            monitor.features[0].observe(&seen),
            Observation::Numeric(3.0)
        );
        assert_eq!(
            monitor.features[1].observe(&seen),
            Observation::Categorical("3".into())
        );
        assert_eq!(
            monitor.features[2].observe(&seen),
            Observation::Numeric(1.0)
        );
        let text = activation(serde_json::json!({"n": "x"}));
        assert_eq!(
            monitor.features[0].observe(&text),
            Observation::Categorical("x".into())
        );
        assert!(matches!(
            monitor.features[2].observe(&text),
            Observation::Failed(_)
        ));
        let null = activation(serde_json::json!({"n": null}));
        assert!(matches!(
            monitor.features[0].observe(&null),
            Observation::Failed(_)
        ));
    }
}
