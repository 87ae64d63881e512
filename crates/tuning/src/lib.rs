//! Pure statistics for progressive trust and operational tuning (DESIGN.md §6).
//!
//! Everything here is a function of its arguments: no IO, no clock, no global state, no
//! randomness other than seeded generators passed in. The engine and the store decide when to
//! call these functions and where to keep the results; this crate only computes.
//!
//! - [`interval`]: Wilson score interval for an agreement rate, and how many reviews a
//!   promotion needs.
//! - [`sprt`]: Wald's sequential probability ratio test on the error rate, for demotion.
//! - [`drift`]: two-sample drift tests chosen the way Evidently chooses them by default.
//! - [`calibration`]: expected calibration error and isotonic / Platt calibrators.
//! - [`trust`]: the evaluator that turns one operation's reviews into a promotion
//!   recommendation or a demotion, with a JSON evidence snapshot.
//! - [`special`]: the special functions the tests need (log-gamma, incomplete gamma).
//! - [`random`]: a small seeded generator (SplitMix64) and a stable string hash.
//!
//! Every input is bounded (see [`MAX_VALUES`]); bad input (empty, NaN, out of range) is an
//! [`Error`], never a panic.

pub mod calibration;
pub mod drift;
pub mod interval;
pub mod noninferiority;
pub mod random;
pub mod special;
pub mod sprt;
pub mod trust;

/// The most values any one sample may hold (a drift sample, a calibration set, a list of
/// outcomes). Larger inputs are refused with [`Error::TooLarge`]; sample them down first.
pub const MAX_VALUES: usize = 1_000_000;

/// What went wrong with the input of a computation. None of these is worth retrying with the
/// same input: each message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A sample or list that must hold at least one value is empty.
    #[error("{what} is empty; supply at least one value")]
    Empty { what: &'static str },
    /// A value is NaN or infinite.
    #[error("{what} holds NaN or an infinite value at index {index}; remove or impute it first")]
    NotFinite { what: &'static str, index: usize },
    /// More values than [`MAX_VALUES`] (or a smaller, stated limit).
    #[error("{what} holds {count} values, more than the limit of {limit}; sample it down")]
    TooLarge {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// A parameter is outside its allowed range.
    #[error("{what} = {value} is outside its allowed range {range}")]
    OutOfRange {
        what: &'static str,
        value: f64,
        range: &'static str,
    },
    /// The inputs do not fit together (different lengths, a method that does not apply to the
    /// kind of values, outcomes out of order, ...).
    #[error("{what}: {detail}")]
    Invalid {
        what: &'static str,
        detail: &'static str,
    },
    /// A target that can never be reached with the given parameters.
    #[error("{what} cannot be reached: {detail}")]
    Unreachable {
        what: &'static str,
        detail: &'static str,
    },
}

/// Checks that `values` is non-empty, at most [`MAX_VALUES`] long and holds only finite
/// numbers.
pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), Error> {
    check_len(what, values.len())?;
    match values.iter().position(|value| !value.is_finite()) {
        Some(index) => Err(Error::NotFinite { what, index }),
        None => Ok(()),
    }
}

/// Checks that a length is between 1 and [`MAX_VALUES`].
pub(crate) fn check_len(what: &'static str, count: usize) -> Result<(), Error> {
    if count == 0 {
        return Err(Error::Empty { what });
    }
    if count > MAX_VALUES {
        return Err(Error::TooLarge {
            what,
            count,
            limit: MAX_VALUES,
        });
    }
    Ok(())
}

/// Checks `low < value < high` (both ends open) and that `value` is not NaN.
pub(crate) fn check_open(
    what: &'static str,
    value: f64,
    low: f64,
    high: f64,
    range: &'static str,
) -> Result<f64, Error> {
    if value > low && value < high {
        Ok(value)
    } else {
        Err(Error::OutOfRange { what, value, range })
    }
}
