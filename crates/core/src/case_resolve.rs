//! Resolving a case's exception: what a person may do with a case parked in `exception`.
//!
//! A resolution is an input like any other (`Input::Resolve`), checked and applied here under
//! the case's optimistic version, so two people resolving the same exception cannot both win.
//! Every resolution journals `exception.resolved` (which the store projects onto the
//! `exceptions` table); a resolution that cannot be applied journals
//! `exception.resolution_refused` with a stable code and changes nothing else. Who may resolve
//! (roles) is the engine's check; this module checks what the resolution does to the case.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{find_step, set_data, ActionProgress, CaseState, Command, Run, Status};
use crate::workflow::StepKind;

/// What a person does about an open exception.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resolution {
    /// Try the step the case is at again. An action whose visit already sent its request goes
    /// on as the *same* visit: the same `Idempotency-Key`, the same request bytes, the attempt
    /// number counting on, and `retry.max_attempts` more attempts; the downstream may have
    /// applied an earlier attempt, and the key lets it answer without acting twice. (To send a
    /// new request under a new key, `skip` to the same step: that is a new visit.) Any other
    /// step is entered again as a new visit.
    Retry,
    /// Use `output` as the step's result (checked against the step's schema), then go on.
    ProvideOutput { output: Value },
    /// Go to step `to` instead.
    Skip { to: String },
    /// End the case `failed` with kind `cancelled`.
    Cancel,
    /// Give the exception to user `to`; the case does not move (a desk action).
    Assign { to: String },
    /// Take the exception for oneself (a desk action).
    Claim,
    /// Move it up its queue's escalation ladder now (a desk action).
    Escalate,
    /// Close an exception that does not hold its case (an SLA breach, a wrong action already
    /// remediated), with a note saying what was done (a desk action).
    Close,
}

impl Resolution {
    pub fn keyword(&self) -> &'static str {
        match self {
            Resolution::Retry => "retry",
            Resolution::ProvideOutput { .. } => "provide_output",
            Resolution::Skip { .. } => "skip",
            Resolution::Cancel => "cancel",
            Resolution::Assign { .. } => "assign",
            Resolution::Claim => "claim",
            Resolution::Escalate => "escalate",
            Resolution::Close => "close",
        }
    }

    /// Whether the exception desk applies it (the case is not an input to it).
    pub fn is_desk_action(&self) -> bool {
        matches!(
            self,
            Resolution::Assign { .. }
                | Resolution::Claim
                | Resolution::Escalate
                | Resolution::Close
        )
    }
}

/// Numbers and records a new exception of the case; returns its id (`<case>.<step>.<n>`).
pub(super) fn open_exception(state: &mut CaseState) -> String {
    state.exceptions_raised += 1;
    let id = format!(
        "{}.{}.{}",
        state.id,
        state.step.as_deref().unwrap_or("case"),
        state.exceptions_raised
    );
    state.exception_id = Some(id.clone());
    id
}

impl Run<'_> {
    /// Applies a resolution; returns a command if the case stops here, `None` to drive on.
    pub(super) fn resolve(
        &mut self,
        state: &mut CaseState,
        exception_id: &str,
        by: &str,
        resolution: Resolution,
        note: Option<String>,
    ) -> Option<Command> {
        let step_id = state.step.clone();
        let open = state.status == Status::Exception
            && state.exception_id.as_deref() == Some(exception_id);
        if !open {
            let message = "the case is not parked on this exception".to_string();
            return Some(self.refuse(state, exception_id, by, "exception_not_open", message));
        }
        if let Err(message) = self.check_resolution(state, &resolution) {
            return Some(self.refuse(state, exception_id, by, "invalid_resolution", message));
        }
        let mut data = json!({ "exception_id": exception_id, "by": by, "note": note });
        if let (Value::Object(fields), Value::Object(action)) = (
            &mut data,
            serde_json::to_value(&resolution).unwrap_or(Value::Null),
        ) {
            fields.extend(action);
        }
        self.emit("exception.resolved", step_id.clone(), data);
        state.exception_id = None;
        state.error = None;
        // A person chose how to go on: the loop guard counts afresh from here.
        state.steps_executed = 0;
        let current = step_id.unwrap_or_default();
        match resolution {
            Resolution::Retry => self.retry(state, current),
            Resolution::Skip { to } => self.goto(state, to),
            Resolution::Cancel => {
                let message = format!("`{by}` cancelled the case while resolving {exception_id}");
                let details = json!({ "exception_id": exception_id, "note": note });
                Some(self.fail(state, "cancelled", message, details))
            }
            Resolution::ProvideOutput { output } => {
                let step = find_step(self.workflow, &current)?;
                let next = step.next.clone().unwrap_or_default();
                match &step.kind {
                    StepKind::Ai(ai) => {
                        self.emit(
                            "outcome.labelled",
                            Some(current.clone()),
                            json!({ "exception_id": exception_id, "by": by, "source": "exception",
                                "model": null, "confidence": null, "confidence_method": null,
                                "proposed": null, "corrected": output, "agreed": false }),
                        );
                        let proposal = json!({ "output": output, "confidence": 1.0,
                            "confidence_method": "person", "model": null, "tier": null, "provided_by": by });
                        set_data(state, &ai.into, proposal);
                    }
                    StepKind::Action(action) => {
                        set_data(
                            state,
                            &action.into,
                            json!({ "status": null, "body": output, "provided_by": by }),
                        );
                    }
                    _ => {}
                }
                self.goto(state, next)
            }
            Resolution::Assign { .. }
            | Resolution::Claim
            | Resolution::Escalate
            | Resolution::Close => Some(Command::Stop),
        }
    }

    /// A person's retry: the parked visit of an action that sent its request goes on (see
    /// [`Resolution::Retry`]); anything else enters the step again.
    fn retry(&mut self, state: &mut CaseState, step: String) -> Option<Command> {
        match state.action.take() {
            Some(progress) if progress.request.is_some() => {
                state.action = Some(ActionProgress {
                    attempts_before: progress.attempt,
                    in_flight: false,
                    retry_at_ms: None,
                    ..progress
                });
                state.status = Status::Running;
                None
            }
            _ => self.goto(state, step),
        }
    }

    /// Why `resolution` cannot be applied to the case as it is, if it cannot.
    fn check_resolution(&self, state: &CaseState, resolution: &Resolution) -> Result<(), String> {
        match resolution {
            Resolution::Retry | Resolution::Cancel => Ok(()),
            Resolution::Assign { .. }
            | Resolution::Claim
            | Resolution::Escalate
            | Resolution::Close => Err(
                "assign, claim and escalate are the exception desk's; the case is not changed by them"
                    .to_string(),
            ),
            Resolution::Skip { to } => match find_step(self.workflow, to) {
                Some(_) => Ok(()),
                None => Err(format!(
                    "the workflow has no step `{to}`; name one of its step ids"
                )),
            },
            Resolution::ProvideOutput { output } => {
                let step_id = state.step.as_deref().unwrap_or_default();
                let schema = match find_step(self.workflow, step_id).map(|s| &s.kind) {
                    Some(StepKind::Ai(ai)) => Some(&ai.output_schema),
                    Some(StepKind::Action(action)) => action.response_schema.as_ref(),
                    _ => {
                        return Err(format!(
                            "step `{step_id}` produces no output to provide; retry, skip or cancel"
                        ))
                    }
                };
                match schema.map(|schema| schema.validate(output)) {
                    Some(Err(violations)) => {
                        let problems: Vec<String> = violations
                            .iter()
                            .map(|v| format!("{} {}", v.path, v.message))
                            .collect();
                        Err(format!(
                            "the output does not match the step's schema: {}",
                            problems.join("; ")
                        ))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn refuse(
        &mut self,
        state: &CaseState,
        exception_id: &str,
        by: &str,
        code: &str,
        message: String,
    ) -> Command {
        self.emit(
            "exception.resolution_refused",
            state.step.clone(),
            json!({ "exception_id": exception_id, "by": by, "code": code, "message": message }),
        );
        super::current_command(state)
    }
}
