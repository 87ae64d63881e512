//! The trust gate: the one place that decides whether an AI-proposed action waits for a person,
//! and whether a person may decide a task ([`decide`] over the operation's phase, policy and
//! hard limits); nothing else in Keel makes this decision.

use serde::{Deserialize, Serialize};

use crate::trust::{GateDecision, TrustConfig};
use crate::workflow::Action;

/// Whether an action is an operation under progressive trust: AI output influences it (by data
/// or control, `workflow::influence`) and it is not declared ungated (`trust.gate: none`).
pub fn is_operation(action: &Action) -> bool {
    !action.uses_ai.is_empty() && action.trust.ungated.is_none()
}

/// The gate: whether an operation (an action or an `end`, configured by `trust`) at `phase` waits for a person or runs, and if it
/// runs, whether it is sampled for post-hoc review. Hard limits force a person in every
/// phase; phase 1 always asks; phase 2 runs only where the policy holds; phases 3 and 4 run.
/// An expression that fails to evaluate falls to a person. Sampling is reproducible: a hash
/// of the case id and step (`keel_tuning::trust::sample_review`), at the phase's rate.
pub fn decide(
    trust: &TrustConfig,
    phase: u8,
    activation: &crate::expr::Activation,
    case_id: &str,
    step_id: &str,
) -> GateDecision {
    let task = |reason: &str| GateDecision {
        decision: "task",
        reason: reason.to_string(),
        phase,
        review_sampled: false,
        review_rate: 1.0,
    };
    if let Some(limits) = &trust.hard_limits {
        match limits.eval_bool(activation) {
            Ok(true) => return task("hard_limit"),
            Ok(false) => {}
            Err(_) => return task("hard_limit_error"),
        }
    }
    let reason = match phase {
        0 | 1 => return task("phase_1"),
        2 => match &trust.policy {
            None => return task("no_policy"),
            Some(policy) => match policy.eval_bool(activation) {
                Ok(true) => "policy_true",
                Ok(false) => return task("policy_false"),
                Err(_) => return task("policy_error"),
            },
        },
        3 => "phase_3",
        _ => "phase_4",
    };
    let rate = trust.review_rates.of(phase);
    GateDecision {
        decision: "auto",
        reason: reason.to_string(),
        phase,
        review_sampled: keel_tuning::trust::sample_review(&format!("{case_id}/{step_id}"), rate),
        review_rate: rate,
    }
}

/// Who is deciding a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decider {
    pub user: String,
    pub roles: Vec<String>,
    /// The largest amount this person may approve; `None` is no limit granted (an amount-bound
    /// gate then refuses their approval).
    pub approval_limit: Option<f64>,
}

/// What a person decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum TaskDecision {
    /// Approve as proposed.
    Approve {
        #[serde(default)]
        comment: Option<String>,
    },
    /// Approve with the AI output replaced by `output` (a labelled outcome).
    Correct {
        output: serde_json::Value,
        /// The `ai` step whose proposal is corrected, when the action uses several.
        #[serde(default)]
        step: Option<String>,
        #[serde(default)]
        comment: Option<String>,
    },
    Reject {
        reason: String,
    },
}

impl TaskDecision {
    pub fn keyword(&self) -> &'static str {
        match self {
            TaskDecision::Approve { .. } => "approve",
            TaskDecision::Correct { .. } => "correct",
            TaskDecision::Reject { .. } => "reject",
        }
    }
}

/// An open task of a case (at most one: the step the case is at).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub id: String,
    pub step: String,
    /// `approval` (an approval step) or `action` (a gated action).
    pub kind: String,
    pub required: u32,
    pub roles: Vec<String>,
    /// The amount at stake (the gate's `limit` expression), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    /// The `ai` steps whose proposals the task is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ai_steps: Vec<String>,
    #[serde(default)]
    pub approvals: Vec<TaskApproval>,
    /// Enough approvals: the gated action may run.
    #[serde(default)]
    pub approved: bool,
    #[serde(default)]
    pub overdue_recorded: bool,
    #[serde(default)]
    pub due_soon_recorded: bool,
}

/// When a task with a due time counts as due soon: a fifth of its time before, at most an hour.
pub fn due_soon_ms(created_ms: i64, due_ms: i64) -> i64 {
    let warning = ((due_ms - created_ms) / 5).clamp(0, 3_600_000);
    due_ms - warning
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskApproval {
    pub by: String,
    pub at_ms: i64,
    pub decision: String,
}

/// Why a decision was refused: a stable code and a message for the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// Checks that `decider` may take `decision` on `task`. Pure: the same inputs always give the
/// same answer, so the engine can check before and the state machine again when applying.
pub fn check_decision(
    task: &TaskProgress,
    decider: &Decider,
    decision: &TaskDecision,
    submitted_by: Option<&str>,
) -> Result<(), Refusal> {
    if task.approved {
        return Err(Refusal {
            code: "task_closed",
            message: "the task already has every approval it needs".into(),
        });
    }
    let allowed = decider
        .roles
        .iter()
        .any(|role| role == "admin" || task.roles.contains(role));
    if !allowed {
        return Err(Refusal {
            code: "role_not_allowed",
            message: format!(
                "deciding this task needs one of the roles {:?}; `{}` has {:?}",
                task.roles, decider.user, decider.roles
            ),
        });
    }
    if matches!(decision, TaskDecision::Reject { .. }) {
        return Ok(());
    }
    if submitted_by == Some(decider.user.as_str()) {
        return Err(Refusal {
            code: "four_eyes",
            message: format!(
                "`{}` submitted this case and cannot approve it (four-eyes rule)",
                decider.user
            ),
        });
    }
    if task.approvals.iter().any(|a| a.by == decider.user) {
        return Err(Refusal {
            code: "duplicate_approver",
            message: format!(
                "`{}` already approved this task; it needs {} approvals from distinct people",
                decider.user, task.required
            ),
        });
    }
    if let Some(amount) = task.amount {
        match decider.approval_limit {
            Some(limit) if limit >= amount => {}
            Some(limit) => {
                return Err(Refusal {
                    code: "over_limit",
                    message: format!(
                        "the amount {amount} is over `{}`'s approval limit of {limit}",
                        decider.user
                    ),
                })
            }
            None => {
                return Err(Refusal {
                    code: "over_limit",
                    message: format!(
                        "the amount {amount} needs an approval limit, and `{}` has none",
                        decider.user
                    ),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(amount: Option<f64>) -> TaskProgress {
        TaskProgress {
            id: "t".into(),
            step: "pay".into(),
            kind: "action".into(),
            required: 2,
            roles: vec!["reviewer".into()],
            amount,
            due_ms: None,
            ai_steps: vec![],
            approvals: vec![],
            approved: false,
            overdue_recorded: false,
            due_soon_recorded: false,
        }
    }

    fn who(user: &str, roles: &[&str], limit: Option<f64>) -> Decider {
        Decider {
            user: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            approval_limit: limit,
        }
    }

    const APPROVE: TaskDecision = TaskDecision::Approve { comment: None };

    #[test]
    fn decisions_follow_roles_four_eyes_distinctness_and_limits() {
        let t = task(Some(500.0));
        let code = |d: &Decider, by: Option<&str>| {
            check_decision(&t, d, &APPROVE, by).err().map(|r| r.code)
        };
        assert_eq!(
            code(&who("ann", &["reviewer"], Some(1000.0)), Some("bob")),
            None
        );
        assert_eq!(
            code(&who("ann", &["operator"], Some(1000.0)), None),
            Some("role_not_allowed")
        );
        assert_eq!(code(&who("ann", &["admin"], Some(1000.0)), None), None);
        assert_eq!(
            code(&who("bob", &["reviewer"], Some(1000.0)), Some("bob")),
            Some("four_eyes")
        );
        assert_eq!(
            code(&who("ann", &["reviewer"], Some(100.0)), None),
            Some("over_limit")
        );
        assert_eq!(
            code(&who("ann", &["reviewer"], None), None),
            Some("over_limit")
        );
        let mut once = task(None);
        once.approvals.push(TaskApproval {
            by: "ann".into(),
            at_ms: 0,
            decision: "approve".into(),
        });
        assert_eq!(
            check_decision(&once, &who("ann", &["reviewer"], None), &APPROVE, None)
                .unwrap_err()
                .code,
            "duplicate_approver"
        );
        // Rejecting needs the role only.
        let reject = TaskDecision::Reject {
            reason: "no".into(),
        };
        assert!(check_decision(&t, &who("bob", &["reviewer"], None), &reject, Some("bob")).is_ok());
    }
}
