//! Governors' decisions on pending workflow versions: four eyes on every change to what
//! decides.
//!
//! A version that changes an operation deploys as `pending` (`registry.rs`); here a governor
//! approves or rejects it. Approving needs, for every changed operation, one of its
//! `approvers` roles (the new version's, or the serving version's for an operation the new
//! one removes), a reason, and someone other than the version's `change.author`. A version
//! that names no author cannot be approved (four eyes cannot be checked): the refusal says to
//! add `change: { author }`. Rejecting needs an approver role and a reason (the author may
//! withdraw their own version). Each decision is a journaled act (`workflow.approved`,
//! `workflow.rejected`) with what changed; a refused attempt is journaled as
//! `workflow.decision_refused`. An approved version serves new cases at once and change
//! control moves its changed operations down (`trust::on_deploy`, naming author and approver).

use keel_core::workflow::Workflow;
use serde_json::{json, Value};

use crate::registry::Status;
use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, Engine, Result};

/// Why a decision on a workflow version was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChangeError {
    #[error("no version {version} of workflow `{name}`; `keel workflow list` shows the versions")]
    UnknownVersion { name: String, version: i64 },
    #[error("version {version} of `{name}` is {status}, not pending: only a pending version can be approved or rejected")]
    NotPending {
        name: String,
        version: i64,
        status: String,
    },
    #[error("version {version} of `{name}` is older than version {serving}, which serves now: deploy the change again as a new version")]
    Superseded {
        name: String,
        version: i64,
        serving: i64,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
}

/// A decided version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionDecided {
    pub workflow: String,
    pub version_no: i64,
    /// `active` or `rejected`.
    pub status: String,
    pub by: String,
    pub author: Option<String>,
    pub changes: Value,
}

/// One stored version as the API lists it (without its source).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionView {
    pub workflow: String,
    pub version_no: i64,
    pub label: String,
    pub status: String,
    pub serving: bool,
    pub author: Option<String>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub deployed_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub changes: Value,
}

impl Engine {
    /// Every stored version of `name` (all workflows when `None`), oldest first.
    pub async fn workflow_versions(&self, name: Option<&str>) -> Result<Vec<VersionView>> {
        let rows = self.inner.store.workflow_versions().await?;
        Ok(rows
            .into_iter()
            .filter(|row| name.is_none_or(|n| n == row.name))
            .map(|row| {
                let serving = self
                    .inner
                    .registry
                    .latest(&row.name)
                    .is_some_and(|(v, _)| v == row.version_no);
                VersionView {
                    serving,
                    changes: serde_json::from_str(&row.changes).unwrap_or(Value::Null),
                    workflow: row.name,
                    version_no: row.version_no,
                    label: row.label,
                    status: row.status,
                    author: row.author,
                    decided_by: row.decided_by,
                    decision_reason: row.decision_reason,
                    deployed_at_ms: row.deployed_at_ms,
                    decided_at_ms: row.decided_at_ms,
                }
            })
            .collect())
    }

    /// A governor's approval (`approve`) or rejection of a pending version.
    pub async fn decide_workflow(
        &self,
        name: &str,
        version: i64,
        caller: &Caller,
        approve: bool,
        reason: &str,
    ) -> Result<std::result::Result<VersionDecided, ChangeError>> {
        let inner = &self.inner;
        let row = inner.store.workflow_version(name, version).await?;
        let (Some(row), Some(definition)) = (row, inner.registry.version(name, version)) else {
            return Ok(Err(ChangeError::UnknownVersion {
                name: name.to_string(),
                version,
            }));
        };
        let changes: Value = serde_json::from_str(&row.changes).unwrap_or(Value::Null);
        let check = (|| {
            if row.status != "pending" {
                return Err(ChangeError::NotPending {
                    name: name.to_string(),
                    version,
                    status: row.status.clone(),
                });
            }
            let serving = inner.registry.latest(name);
            if let Some((serving_no, _)) = serving.as_ref().filter(|(v, _)| *v > version) {
                return Err(ChangeError::Superseded {
                    name: name.to_string(),
                    version,
                    serving: *serving_no,
                });
            }
            let roles = approver_roles(
                &definition,
                serving.as_ref().map(|(_, w)| w.as_ref()),
                &changes,
            );
            if let Some(missing) = roles.iter().find(|needed| {
                !caller
                    .roles
                    .iter()
                    .any(|r| needed.contains(r) || r == "admin")
            }) {
                return Err(ChangeError::Forbidden(format!(
                    "deciding on this version needs one of the roles {missing:?} for each changed operation; `{}` has {:?}",
                    caller.subject, caller.roles
                )));
            }
            if reason.trim().is_empty() {
                return Err(ChangeError::Invalid("give a --reason".into()));
            }
            if approve {
                match &row.author {
                    None => {
                        return Err(ChangeError::Forbidden(format!(
                            "version {version} of `{name}` names no author, so four eyes cannot be checked: add `change: {{ author: NAME }}` to the file and deploy it again"
                        )))
                    }
                    Some(author) if *author == caller.subject => {
                        return Err(ChangeError::Forbidden(format!(
                            "`{}` wrote version {version} of `{name}`; another governor must approve it",
                            caller.subject
                        )))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        })();
        let now = inner.clock.now_ms();
        if let Err(error) = check {
            let entry = workflow_entry(
                now,
                "workflow.decision_refused",
                caller,
                name,
                json!({ "workflow": name, "version_no": version, "approve": approve,
                    "reason": error.to_string(), "changes": changes }),
            );
            inner.store.append(&[entry]).await?;
            inner.journal_written.notify_one();
            return Ok(Err(error));
        }
        let status = if approve {
            Status::Active
        } else {
            Status::Rejected
        };
        let kind = if approve {
            "workflow.approved"
        } else {
            "workflow.rejected"
        };
        let entry = workflow_entry(
            now,
            kind,
            caller,
            name,
            json!({ "workflow": name, "version_no": version, "author": row.author,
                "by": caller.subject, "reason": reason, "changes": changes }),
        );
        let took = inner
            .store
            .decide_workflow(
                name,
                version,
                status.as_str(),
                &caller.subject,
                reason,
                now,
                &entry,
            )
            .await?;
        if !took {
            return Ok(Err(ChangeError::NotPending {
                name: name.to_string(),
                version,
                status: "decided".into(),
            }));
        }
        inner.registry.set_status(name, version, status);
        inner.journal_written.notify_one();
        if approve {
            crate::trust::on_deploy(inner, name, Some(&caller.subject)).await?;
        }
        Ok(Ok(VersionDecided {
            workflow: name.to_string(),
            version_no: version,
            status: status.as_str().to_string(),
            by: caller.subject.clone(),
            author: row.author,
            changes,
        }))
    }
}

/// For each changed operation, the roles that may decide on it: its `approvers` in the new
/// version, or in the serving one for an operation the new version removes.
fn approver_roles(new: &Workflow, serving: Option<&Workflow>, changes: &Value) -> Vec<Vec<String>> {
    let approvers = |workflow: &Workflow, operation: &str| {
        let step = operation.rsplit('/').next().unwrap_or_default();
        workflow
            .steps
            .iter()
            .find(|s| s.id == step)
            .and_then(|s| s.operation())
            .map(|op| op.trust.approvers.clone())
    };
    changes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|change| {
            let operation = change["operation"].as_str()?;
            approvers(new, operation)
                .or_else(|| serving.and_then(|w| approvers(w, operation)))
                .or_else(|| Some(vec!["governor".to_string()]))
        })
        .collect()
}

fn workflow_entry(
    now: i64,
    kind: &str,
    caller: &Caller,
    workflow: &str,
    data: Value,
) -> keel_store::NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    keel_store::NewEntry {
        at: rfc3339_ms(now),
        kind: kind.to_string(),
        actor_type: "user".into(),
        actor_id: caller.subject.clone(),
        case_id: None,
        workflow: Some(workflow.to_string()),
        step: None,
        data,
        data_sha256,
    }
}
