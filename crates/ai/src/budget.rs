//! Spending limits per day and per month, in total and per workflow, enforced atomically:
//! a call reserves an estimate of its cost before it is sent and settles the actual cost after.
//! Concurrent calls can overspend a limit only by what their own estimates missed, never by
//! racing each other, because reserve checks `spent + reserved + estimate <= limit` under one
//! lock for every window the call counts against.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::Datelike;

use crate::config::{BudgetLimits, BudgetsConfig};

const TOTAL: &str = "the total";

fn workflow_scope(workflow: &str) -> String {
    format!("workflow `{workflow}`")
}

fn caller_scope(caller: &str) -> String {
    format!("caller `{caller}`")
}

/// Money in nano-dollars, so sums are exact.
pub type NanoUsd = i64;

pub fn to_nano(usd: f64) -> NanoUsd {
    (usd * 1e9).round() as NanoUsd
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Window {
    Day(String, chrono::NaiveDate),
    Month(String, i32, u32),
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    spent: NanoUsd,
    reserved: NanoUsd,
}

/// Which limit refused a call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {period} budget of {scope} is exhausted: {spent_usd:.6} USD spent and {reserved_usd:.6} USD reserved of {limit_usd:.6} USD")]
pub struct Exhausted {
    pub scope: String,
    pub period: &'static str,
    pub limit_usd: f64,
    pub spent_usd: f64,
    pub reserved_usd: f64,
}

/// A reservation to settle; it holds the windows it counted against.
#[derive(Debug)]
pub struct Reservation {
    windows: Vec<Window>,
    estimate: NanoUsd,
}

#[derive(Debug, Default)]
pub struct Budgets {
    config: BudgetsConfig,
    usage: Mutex<BTreeMap<Window, Usage>>,
}

impl Budgets {
    pub fn new(config: BudgetsConfig) -> Budgets {
        Budgets {
            config,
            usage: Mutex::new(BTreeMap::new()),
        }
    }

    fn scopes(&self, workflow: Option<&str>, caller: Option<&str>) -> Vec<(String, &BudgetLimits)> {
        let mut scopes = vec![(TOTAL.to_string(), &self.config.total)];
        if let Some(workflow) = workflow {
            if let Some(limits) = self.config.workflows.get(workflow) {
                scopes.push((workflow_scope(workflow), limits));
            }
        }
        if let Some(caller) = caller {
            if let Some(limits) = self.config.callers.get(caller) {
                scopes.push((caller_scope(caller), limits));
            }
        }
        scopes
    }

    /// Adds spend recorded before this process started (from the store's `ai_calls`), so that
    /// limits hold across restarts.
    pub fn preload(
        &self,
        date: chrono::NaiveDate,
        workflow: Option<&str>,
        caller: Option<&str>,
        spent: NanoUsd,
    ) {
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut scopes = vec![TOTAL.to_string()];
        scopes.extend(workflow.map(workflow_scope));
        scopes.extend(caller.map(caller_scope));
        for scope in scopes {
            usage
                .entry(Window::Day(scope.clone(), date))
                .or_default()
                .spent += spent;
            usage
                .entry(Window::Month(scope, date.year(), date.month()))
                .or_default()
                .spent += spent;
        }
    }

    /// Reserves `estimate` against every limit that applies on `date` (the total, the workflow's
    /// and the caller's), or refuses.
    pub fn reserve(
        &self,
        workflow: Option<&str>,
        caller: Option<&str>,
        date: chrono::NaiveDate,
        estimate: NanoUsd,
    ) -> Result<Reservation, Exhausted> {
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut windows = Vec::new();
        let mut checks = Vec::new();
        for (scope, limits) in self.scopes(workflow, caller) {
            let day = Window::Day(scope.clone(), date);
            let month = Window::Month(scope.clone(), date.year(), date.month());
            for (window, limit, period) in [
                (day, limits.daily_usd, "daily"),
                (month, limits.monthly_usd, "monthly"),
            ] {
                if let Some(limit) = limit {
                    checks.push((window.clone(), to_nano(limit), scope.clone(), period));
                }
                windows.push(window);
            }
        }
        for (window, limit, scope, period) in &checks {
            let current = usage.get(window).copied().unwrap_or_default();
            if current.spent + current.reserved + estimate > *limit {
                return Err(Exhausted {
                    scope: scope.clone(),
                    period,
                    limit_usd: *limit as f64 / 1e9,
                    spent_usd: current.spent as f64 / 1e9,
                    reserved_usd: current.reserved as f64 / 1e9,
                });
            }
        }
        for window in &windows {
            usage.entry(window.clone()).or_default().reserved += estimate;
        }
        Ok(Reservation { windows, estimate })
    }

    /// Replaces the reservation by the actual cost. An unknown cost is charged at the estimate.
    pub fn settle(&self, reservation: Reservation, actual: Option<NanoUsd>) {
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for window in &reservation.windows {
            let entry = usage.entry(window.clone()).or_default();
            entry.reserved -= reservation.estimate;
            entry.spent += actual.unwrap_or(reservation.estimate);
        }
    }

    /// USD spent in total on `date`'s day (for reports and tests).
    pub fn spent_today(&self, date: chrono::NaiveDate) -> f64 {
        let usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        usage
            .get(&Window::Day(TOTAL.to_string(), date))
            .map_or(0.0, |u| u.spent as f64 / 1e9)
    }
}
