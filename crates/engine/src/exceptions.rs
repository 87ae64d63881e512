//! Exceptions: cases parked for a person, SLA breaches, their patterns, and resolutions.
//!
//! A resolution goes to the case as an input (`Input::Resolve`); the state machine applies it
//! or journals `exception.resolution_refused`, in the same transaction either way. Who may
//! resolve is checked here, before the case is touched: one of [`RESOLVER_ROLES`]. A refusal
//! on role is journaled too (`exception.resolution_refused`, code `role_not_allowed`), so
//! every allow and deny is in the ledger.

use keel_core::case::{Input, Resolution};
use keel_store::{ExceptionFilter, ExceptionRow, NewEntry, PatternRow, WriteOutcome};
use serde_json::json;

use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, worker, Engine, Error, Result};

/// Roles that may resolve or assign exceptions.
pub const RESOLVER_ROLES: &[&str] = &["operator", "specialist", "admin"];
/// Longest note kept with a resolution.
pub const MAX_NOTE_CHARS: usize = 4_000;

/// What a resolution did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Resolved {
    pub exception_id: String,
    pub case_id: String,
    /// The action taken: retry, provide_output, skip, cancel or assign.
    pub action: String,
    /// The case's status after the resolution.
    pub case_status: String,
}

/// Why a resolution was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolutionError {
    #[error("no exception with id `{0}`")]
    UnknownException(String),
    #[error("the exception is already {0}")]
    Closed(String),
    /// The caller's roles may not resolve exceptions.
    #[error("{0}")]
    Forbidden(String),
    /// The resolution cannot be applied (bad output, unknown step, unknown user, …).
    #[error("{message}")]
    Invalid { code: String, message: String },
}

impl Engine {
    /// One exception.
    pub async fn exception(&self, id: &str) -> Result<Option<ExceptionRow>> {
        Ok(self.inner.store.exception(id).await?)
    }

    /// Exceptions, oldest first.
    pub async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<ExceptionRow>> {
        Ok(self.inner.store.exceptions(filter).await?)
    }

    /// Every fingerprint's counts, days, weeks, time to resolve and trend, as of now.
    pub async fn exception_patterns(&self) -> Result<Vec<PatternRow>> {
        let now = self.inner.clock.now_ms();
        Ok(self.inner.store.exception_patterns(now).await?)
    }

    /// Applies `caller`'s resolution of an open exception.
    pub async fn resolve_exception(
        &self,
        exception_id: &str,
        caller: &Caller,
        resolution: Resolution,
        note: Option<String>,
    ) -> Result<std::result::Result<Resolved, ResolutionError>> {
        let Some(exception) = self.inner.store.exception(exception_id).await? else {
            return Ok(Err(ResolutionError::UnknownException(
                exception_id.to_string(),
            )));
        };
        let resolver = caller
            .roles
            .iter()
            .any(|role| RESOLVER_ROLES.contains(&role.as_str()));
        if !resolver && !crate::desk::works_on(&self.inner.options.desk, &exception, caller) {
            let message = format!(
                "resolving exceptions needs one of the roles {RESOLVER_ROLES:?} or membership of the exception's queue; `{}` has {:?}",
                caller.subject, caller.roles
            );
            self.journal_role_refusal(&exception, caller, &message)
                .await?;
            return Ok(Err(ResolutionError::Forbidden(message)));
        }
        if exception.status != "open" {
            return Ok(Err(ResolutionError::Closed(exception.status)));
        }
        if note
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
        {
            return Err(Error::InvalidRequest(format!(
                "a note is at most {MAX_NOTE_CHARS} characters"
            )));
        }
        if let Resolution::Assign { to } = &resolution {
            if self
                .inner
                .store
                .user(to)
                .await?
                .is_none_or(|user| user.disabled)
            {
                return Ok(Err(ResolutionError::Invalid {
                    code: "unknown_user".into(),
                    message: format!("no active user named `{to}`; add one with `keel user add`"),
                }));
            }
        }
        if resolution.is_desk_action() {
            return self
                .desk_action(&exception, caller, &resolution, note)
                .await;
        }
        if exception.kind == "sla_breach" {
            return Ok(Err(ResolutionError::Invalid {
                code: "not_resumable".into(),
                message:
                    "an SLA breach does not park its case; it can be assigned, claimed or escalated"
                        .into(),
            }));
        }
        self.apply_resolution(&exception, caller, resolution, note)
            .await
    }

    async fn apply_resolution(
        &self,
        exception: &ExceptionRow,
        caller: &Caller,
        resolution: Resolution,
        note: Option<String>,
    ) -> Result<std::result::Result<Resolved, ResolutionError>> {
        let action = resolution.keyword().to_string();
        for _ in 0..20 {
            let row = self
                .inner
                .store
                .case(&exception.case_id)
                .await?
                .ok_or_else(|| Error::UnknownCase(exception.case_id.clone()))?;
            let input = Input::Resolve {
                exception_id: exception.id.clone(),
                by: caller.subject.clone(),
                resolution: resolution.clone(),
                note: note.clone(),
            };
            let (outcome, events) = worker::apply_external_events(&self.inner, row, input).await?;
            if outcome == WriteOutcome::Conflict {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            self.inner.poke.notify_one();
            let applied = events
                .iter()
                .any(|e| e.kind == "exception.resolved" || e.kind == "exception.assigned");
            if !applied {
                let refused = events
                    .iter()
                    .find(|e| e.kind == "exception.resolution_refused");
                let text = |key: &str, default: &str| {
                    refused
                        .and_then(|e| e.data[key].as_str())
                        .unwrap_or(default)
                        .to_string()
                };
                return Ok(Err(ResolutionError::Invalid {
                    code: text("code", "exception_not_open"),
                    message: text("message", "the case is not parked on this exception"),
                }));
            }
            let case_status = self
                .inner
                .store
                .case(&exception.case_id)
                .await?
                .map(|row| row.status)
                .unwrap_or_default();
            return Ok(Ok(Resolved {
                exception_id: exception.id.clone(),
                case_id: exception.case_id.clone(),
                action,
                case_status,
            }));
        }
        Err(Error::Contended)
    }

    /// Journals a resolution refused for the caller's roles (the case is not touched).
    async fn journal_role_refusal(
        &self,
        exception: &ExceptionRow,
        caller: &Caller,
        message: &str,
    ) -> Result<()> {
        let data = json!({ "exception_id": exception.id, "by": caller.subject,
            "roles": caller.roles, "code": "role_not_allowed", "message": message });
        let (data, data_sha256) = canonical_data(&data);
        let entry = NewEntry {
            at: rfc3339_ms(self.inner.clock.now_ms()),
            kind: "exception.resolution_refused".into(),
            actor_type: "user".into(),
            actor_id: caller.subject.clone(),
            case_id: Some(exception.case_id.clone()),
            workflow: Some(exception.workflow.clone()),
            step: exception.step.clone(),
            data,
            data_sha256,
        };
        self.inner.store.append(&[entry]).await?;
        self.inner.journal_written.notify_one();
        Ok(())
    }
}
