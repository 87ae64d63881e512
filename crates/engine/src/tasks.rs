//! Tasks (approval steps and gated actions) and the people who decide them.
//!
//! A decision goes to the case as an input; the state machine checks it with
//! `keel_core::gate::check_decision` and either applies it or journals a
//! `task.decision_refused` entry with the reason, in the same transaction either way. So every
//! allow and deny is in the ledger, and a refusal changes nothing else.

use keel_core::case::Input;
use keel_core::gate::{Decider, TaskDecision};
use keel_store::{NewEntry, Store, TaskFilter, TaskRow, UserRow, WriteOutcome};
use serde_json::json;

use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, worker, Engine, Error, Result};

/// What happened to a decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decided {
    pub task_id: String,
    pub case_id: String,
    /// `recorded` (more approvals needed), `approved`, `corrected` or `rejected`.
    pub result: String,
    pub approvals: i64,
    pub required: i64,
}

/// Why a decision was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecisionError {
    #[error("no task with id `{0}`")]
    UnknownTask(String),
    #[error("the task is already {0}")]
    Closed(String),
    /// The gate refused: four-eyes, role, distinct approvers, approval limit, bad correction.
    #[error("{message}")]
    Refused { code: String, message: String },
}

impl Engine {
    /// One task.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        Ok(self.inner.store.task(id).await?)
    }

    /// Tasks, oldest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRow>> {
        Ok(self.inner.store.tasks(filter).await?)
    }

    /// Applies `caller`'s decision to a task.
    pub async fn decide_task(
        &self,
        task_id: &str,
        caller: &Caller,
        decision: TaskDecision,
    ) -> Result<std::result::Result<Decided, DecisionError>> {
        let Some(task) = self.inner.store.task(task_id).await? else {
            return Ok(Err(DecisionError::UnknownTask(task_id.to_string())));
        };
        if task.status != "open" {
            return Ok(Err(DecisionError::Closed(task.status)));
        }
        if task.kind == "review" || task.kind == crate::retro::RETRO_KIND {
            return self.decide_review(&task, caller, &decision).await;
        }
        let decider = Decider {
            user: caller.subject.clone(),
            roles: caller.roles.clone(),
            approval_limit: caller.approval_limit,
        };
        for _ in 0..20 {
            let row = self
                .inner
                .store
                .case(&task.case_id)
                .await?
                .ok_or_else(|| Error::UnknownCase(task.case_id.clone()))?;
            let input = Input::TaskDecision {
                task_id: task_id.to_string(),
                decider: decider.clone(),
                decision: decision.clone(),
            };
            let (outcome, events) = worker::apply_external_events(&self.inner, row, input).await?;
            if outcome == WriteOutcome::Conflict {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            self.inner.poke.notify_one();
            if let Some(refused) = events.iter().find(|e| e.kind == "task.decision_refused") {
                return Ok(Err(DecisionError::Refused {
                    code: refused.data["code"]
                        .as_str()
                        .unwrap_or("refused")
                        .to_string(),
                    message: refused.data["message"]
                        .as_str()
                        .unwrap_or("refused")
                        .to_string(),
                }));
            }
            let recorded = events.iter().find(|e| e.kind == "task.approval_recorded");
            let completed = events.iter().find(|e| e.kind == "task.completed");
            let result = completed
                .and_then(|e| e.data["decision"].as_str())
                .unwrap_or("recorded")
                .to_string();
            let approvals = recorded
                .and_then(|e| e.data["approvals"].as_i64())
                .unwrap_or(task.approvals);
            return Ok(Ok(Decided {
                task_id: task_id.to_string(),
                case_id: task.case_id.clone(),
                result,
                approvals,
                required: task.required,
            }));
        }
        Err(Error::Contended)
    }
}

fn admin_entry(kind: &str, now_ms: i64, data: serde_json::Value) -> NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: rfc3339_ms(now_ms),
        kind: kind.to_string(),
        actor_type: "cli".into(),
        actor_id: std::env::var("USER").unwrap_or_else(|_| "local".into()),
        case_id: None,
        workflow: None,
        step: None,
        data,
        data_sha256,
    }
}

/// Built-in roles.
pub const ROLES: &[&str] = &[
    "admin",
    "operator",
    "reviewer",
    "specialist",
    "governor",
    "auditor",
    "gateway",
];

/// Adds a user; `Ok(false)` when the name is taken.
pub async fn add_user(
    store: &Store,
    name: &str,
    roles: &[String],
    approval_limit: Option<f64>,
    now_ms: i64,
) -> Result<bool> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(Error::InvalidRequest(format!(
            "user name `{name}` is not valid: use 1–64 letters, digits, `-`, `_`, `.` or `@`"
        )));
    }
    if let Some(role) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        return Err(Error::InvalidRequest(format!(
            "unknown role `{role}`; the roles are {}",
            ROLES.join(", ")
        )));
    }
    if approval_limit.is_some_and(|l| !l.is_finite() || l < 0.0) {
        return Err(Error::InvalidRequest(
            "the approval limit must be a number ≥ 0".into(),
        ));
    }
    // A token whose subject names a user acts as that user: an application's live token
    // named like the new user would silently take the user's roles.
    let tokens = store.tokens().await?;
    if store.user(name).await?.is_none()
        && tokens
            .iter()
            .any(|token| token.subject == name && token.revoked_at_ms.is_none())
    {
        return Err(Error::InvalidRequest(format!(
            "an application's token acts as `{name}`, and it would take this user's roles; revoke it first (`keel token revoke {name}`) or pick another user name"
        )));
    }
    let user = UserRow {
        name: name.to_string(),
        display_name: name.to_string(),
        roles: roles.to_vec(),
        approval_limit,
        disabled: false,
        created_at_ms: now_ms,
    };
    let entry = admin_entry(
        "user.added",
        now_ms,
        json!({"user": name, "roles": roles, "approval_limit": approval_limit}),
    );
    Ok(store.add_user(&user, &entry).await?)
}

/// Disables a user: their tokens stop working (within the token cache's few seconds).
pub async fn disable_user(store: &Store, name: &str, now_ms: i64) -> Result<bool> {
    let entry = admin_entry("user.disabled", now_ms, json!({"user": name}));
    Ok(store.disable_user(name, &entry).await?)
}
