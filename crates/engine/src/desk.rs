//! The exception desk: routes every open exception to a queue by the rules of
//! `exceptions.yaml`, assigns it where the queue says so (round-robin or least-loaded),
//! escalates it along its queue's ladder when each level's time comes, and records a missed
//! queue SLA. Claim, assign and escalate-now by people go through here too.
//!
//! Timers are durable: the due instants live on the exception rows (`next_escalation_ms`,
//! `due_ms`), and each pass reads the rows due by the engine's clock, so a restart loses no
//! escalation and a test moves the clock instead of sleeping. Every change is one
//! transaction: a conditional update plus its journal entry (`exception.routed`,
//! `exception.assigned`, `exception.escalated`, `exception.sla_missed`); see
//! `keel_store::DeskChange`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keel_core::desk::{Assignment, DeskConfig, Queue, Target};
use keel_store::{DeskChange, ExceptionRow, NewEntry};
use serde_json::{json, Value};

use crate::exceptions::{ResolutionError, Resolved};
use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, Engine, Inner, Result};

/// Rows read per kind of work per pass.
const DESK_BATCH: i64 = 500;
/// The actor of the desk's own journal entries.
pub const DESK_ACTOR: &str = "exception-desk";

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeskPass {
    pub routed: usize,
    pub assigned: usize,
    pub escalated: usize,
    pub sla_missed: usize,
}

pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.options.poll_interval.max(Duration::from_millis(250))).await;
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = pass(&inner).await {
            tracing::warn!(%error, "exception desk pass failed; retrying");
        }
    }
}

/// One pass: route, then escalate, then record missed SLAs, each for what is due now.
pub(crate) async fn pass(inner: &Inner) -> Result<DeskPass> {
    let mut done = DeskPass::default();
    let desk = inner.options.desk.clone();
    for row in inner.store.exceptions_unrouted(DESK_BATCH).await? {
        if let Some(queue) = route(inner, &desk, &row).await? {
            done.routed += 1;
            if let Some(queue) = desk.queue(&queue) {
                done.assigned += usize::from(auto_assign(inner, &row.id, queue).await?);
            }
        }
    }
    let now = inner.clock.now_ms();
    for row in inner
        .store
        .exceptions_escalation_due(now, DESK_BATCH)
        .await?
    {
        if escalate(inner, &desk, &row, "timer", DESK_ACTOR, None)
            .await?
            .is_some()
        {
            done.escalated += 1;
        }
    }
    for row in inner.store.exceptions_sla_due(now, DESK_BATCH).await? {
        let due_ms = row.due_ms.unwrap_or(now);
        let data = json!({ "exception_id": row.id, "queue": row.queue, "due_ms": due_ms,
            "late_ms": now - due_ms, "assignee": row.assignee, "level": row.level });
        let entry = desk_entry(
            inner,
            &row,
            "exception.sla_missed",
            DESK_ACTOR,
            "system",
            data,
        );
        if inner
            .store
            .desk_write(&row.id, &DeskChange::SlaMissed, &entry)
            .await?
        {
            done.sla_missed += 1;
        }
    }
    if done != DeskPass::default() {
        inner.journal_written.notify_one();
    }
    Ok(done)
}

fn now_utc(inner: &Inner) -> chrono::DateTime<chrono::Utc> {
    keel_core::case::millis_to_datetime(inner.clock.now_ms())
}

/// What routing rules see as `exception`.
fn exception_json(row: &ExceptionRow) -> Value {
    json!({ "id": row.id, "case_id": row.case_id, "workflow": row.workflow, "step": row.step,
        "kind": row.kind, "message": row.message, "fingerprint": row.fingerprint })
}

/// Routes `row`; returns its queue if this pass routed it.
async fn route(inner: &Inner, desk: &DeskConfig, row: &ExceptionRow) -> Result<Option<String>> {
    let routing = desk.route(&exception_json(row), now_utc(inner));
    let queue = desk.queue(&routing.queue);
    let due_ms = queue.and_then(|q| q.due_ms(row.raised_at_ms));
    let next_escalation_ms = queue.and_then(|q| q.escalation_ms(0, row.raised_at_ms));
    for error in &routing.rule_errors {
        tracing::warn!(exception = %row.id, %error, "a routing rule failed to evaluate and was skipped");
    }
    let data = json!({ "exception_id": row.id, "queue": routing.queue,
        "priority": routing.priority.as_str(), "rule": routing.rule,
        "rule_errors": routing.rule_errors, "due_ms": due_ms,
        "next_escalation_ms": next_escalation_ms, "desk": desk.source_sha256 });
    let change = DeskChange::Routed {
        queue: routing.queue.clone(),
        priority: routing.priority.as_str().to_string(),
        priority_rank: routing.priority.rank(),
        routed_by: routing.rule.clone(),
        due_ms,
        next_escalation_ms,
    };
    let entry = desk_entry(inner, row, "exception.routed", DESK_ACTOR, "system", data);
    let took = inner.store.desk_write(&row.id, &change, &entry).await?;
    Ok(took.then_some(routing.queue))
}

/// Active users who work `queue`, in name order.
async fn members(inner: &Inner, queue: &Queue) -> Result<Vec<String>> {
    let mut names: Vec<String> = inner
        .store
        .users()
        .await?
        .into_iter()
        .filter(|user| !user.disabled && queue.has_member(&user.name, &user.roles))
        .map(|user| user.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Gives an unassigned exception to a member of `queue` if the queue assigns; returns
/// whether it did. A queue without active members leaves it for claiming (and says so).
async fn auto_assign(inner: &Inner, id: &str, queue: &Queue) -> Result<bool> {
    if queue.assign == Assignment::Claim {
        return Ok(false);
    }
    let candidates = members(inner, queue).await?;
    let chosen = match queue.assign {
        Assignment::Claim => None,
        Assignment::RoundRobin => {
            let last = inner.store.queue_cursor(&queue.name).await?;
            let after = last.as_deref().unwrap_or("");
            candidates
                .iter()
                .find(|name| name.as_str() > after)
                .or_else(|| candidates.first())
                .cloned()
        }
        Assignment::LeastLoaded => {
            let load = inner.store.open_exception_load().await?;
            candidates
                .iter()
                .min_by_key(|name| (load.get(name.as_str()).copied().unwrap_or(0), name.as_str()))
                .cloned()
        }
    };
    let Some(to) = chosen else {
        tracing::warn!(queue = %queue.name, exception = %id, "the queue has no active members to assign to; it waits to be claimed");
        return Ok(false);
    };
    let Some(row) = inner.store.exception(id).await? else {
        return Ok(false);
    };
    let now = inner.clock.now_ms();
    let data = json!({ "exception_id": id, "by": DESK_ACTOR, "to": to, "queue": queue.name,
        "strategy": queue.assign.as_str(), "note": null });
    let change = DeskChange::Assigned {
        to: to.clone(),
        at_ms: now,
        expected_assignee: Some(None),
        cursor_queue: (queue.assign == Assignment::RoundRobin).then(|| queue.name.clone()),
    };
    let entry = desk_entry(
        inner,
        &row,
        "exception.assigned",
        DESK_ACTOR,
        "system",
        data,
    );
    Ok(inner.store.desk_write(id, &change, &entry).await?)
}

/// Moves `row` one level up its ladder; returns the new level, or `None` if it had moved
/// already or has no level left.
async fn escalate(
    inner: &Inner,
    desk: &DeskConfig,
    row: &ExceptionRow,
    reason: &str,
    by: &str,
    note: Option<&str>,
) -> Result<Option<i64>> {
    let ladder_queue = row
        .ladder_queue
        .as_deref()
        .or(row.queue.as_deref())
        .and_then(|name| desk.queue(name));
    let Some(home) = ladder_queue else {
        tracing::warn!(exception = %row.id, "its queue is no longer configured; it cannot escalate");
        return Ok(None);
    };
    let index = usize::try_from(row.level).unwrap_or(usize::MAX);
    let Some(level) = home.escalation.get(index) else {
        return Ok(None);
    };
    let current = row.queue.clone().unwrap_or_else(|| home.name.clone());
    let (queue, clear_assignee) = match &level.to {
        Target::Queue(name) => (name.clone(), name != &current),
        Target::Role(_) => (current, false),
    };
    let next_escalation_ms = home.escalation_ms(index + 1, row.raised_at_ms);
    let data = json!({ "exception_id": row.id, "level": row.level + 1, "to": level.to.label(),
        "queue": queue, "from_queue": row.queue, "reason": reason, "by": by, "note": note,
        "next_escalation_ms": next_escalation_ms });
    let change = DeskChange::Escalated {
        from_level: row.level,
        queue: queue.clone(),
        escalated_to: level.to.label(),
        next_escalation_ms,
        due_ms: None,
        clear_assignee,
    };
    let actor_type = if by == DESK_ACTOR { "system" } else { "user" };
    let entry = desk_entry(inner, row, "exception.escalated", by, actor_type, data);
    if !inner.store.desk_write(&row.id, &change, &entry).await? {
        return Ok(None);
    }
    if clear_assignee {
        if let Some(target) = desk.queue(&queue) {
            auto_assign(inner, &row.id, target).await?;
        }
    }
    Ok(Some(row.level + 1))
}

fn desk_entry(
    inner: &Inner,
    row: &ExceptionRow,
    kind: &str,
    actor_id: &str,
    actor_type: &str,
    data: Value,
) -> NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: rfc3339_ms(inner.clock.now_ms()),
        kind: kind.to_string(),
        actor_type: actor_type.to_string(),
        actor_id: actor_id.to_string(),
        case_id: Some(row.case_id.clone()),
        workflow: Some(row.workflow.clone()),
        step: row.step.clone(),
        data,
        data_sha256,
    }
}

/// Whether `caller` works the queue `row` is in (as a member, or by the role it was
/// escalated to).
pub(crate) fn works_on(desk: &DeskConfig, row: &ExceptionRow, caller: &Caller) -> bool {
    let in_queue = row
        .queue
        .as_deref()
        .and_then(|name| desk.queue(name))
        .is_some_and(|queue| queue.has_member(&caller.subject, &caller.roles));
    let by_role = row
        .escalated_to
        .as_deref()
        .and_then(|to| to.strip_prefix("role:"))
        .is_some_and(|role| caller.roles.iter().any(|r| r == role));
    in_queue || by_role
}

impl Engine {
    /// Runs one exception-desk pass now (tests drive it with a manual clock).
    pub async fn run_desk_once(&self) -> Result<DeskPass> {
        pass(&self.inner).await
    }

    /// Open exceptions per queue (unrouted ones under `None`).
    pub async fn queue_depths(&self) -> Result<Vec<(Option<String>, i64)>> {
        Ok(self.inner.store.open_exceptions_per_queue().await?)
    }

    /// The desk configuration in force.
    pub fn desk(&self) -> &DeskConfig {
        &self.inner.options.desk
    }

    /// Queues a user works: by name or by one of `roles`.
    pub fn queues_of(&self, user: &str, roles: &[String]) -> Vec<String> {
        self.inner
            .options
            .desk
            .queues()
            .iter()
            .filter(|queue| queue.has_member(user, roles))
            .map(|queue| queue.name.clone())
            .collect()
    }

    /// Applies a desk action (assign, claim, escalate) by `caller` to an open exception.
    pub(crate) async fn desk_action(
        &self,
        row: &ExceptionRow,
        caller: &Caller,
        action: &keel_core::case::Resolution,
        note: Option<String>,
    ) -> Result<std::result::Result<Resolved, ResolutionError>> {
        use keel_core::case::Resolution;
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let (to, expected, strategy) = match action {
            Resolution::Close => {
                let parks_case = inner
                    .store
                    .case(&row.case_id)
                    .await?
                    .and_then(|case| serde_json::from_str::<serde_json::Value>(&case.state).ok())
                    .is_some_and(|state| state["exception_id"] == row.id.as_str());
                if parks_case {
                    return Ok(Err(ResolutionError::Invalid {
                        code: "holds_its_case".into(),
                        message: "this exception holds its case: retry, provide the output, skip or cancel instead".into(),
                    }));
                }
                if note.as_deref().is_none_or(|n| n.trim().is_empty()) {
                    return Ok(Err(ResolutionError::Invalid {
                        code: "note_required".into(),
                        message: "closing needs a note saying what was done (e.g. the refund was reversed)".into(),
                    }));
                }
                let data = json!({ "exception_id": row.id, "by": caller.subject, "action": "close", "note": note });
                let change = DeskChange::Closed {
                    by: caller.subject.clone(),
                    at_ms: now,
                    resolution: data.to_string(),
                };
                let entry = desk_entry(
                    inner,
                    row,
                    "exception.resolved",
                    &caller.subject,
                    "user",
                    data,
                );
                if !inner.store.desk_write(&row.id, &change, &entry).await? {
                    return Ok(Err(ResolutionError::Closed("resolved".into())));
                }
                inner.journal_written.notify_one();
                return Ok(Ok(self.resolved(row, "close").await?));
            }
            Resolution::Escalate => {
                let escalated = escalate(
                    inner,
                    &inner.options.desk,
                    row,
                    "manual",
                    &caller.subject,
                    note.as_deref(),
                )
                .await?;
                return match escalated {
                    Some(_) => Ok(Ok(self.resolved(row, "escalate").await?)),
                    None => Ok(Err(ResolutionError::Invalid {
                        code: "no_escalation_level".into(),
                        message: format!(
                            "exception {} has no further escalation level in its queue's ladder (level {} reached)",
                            row.id, row.level
                        ),
                    })),
                };
            }
            Resolution::Claim => (caller.subject.clone(), Some(None), "claim"),
            Resolution::Assign { to } => (to.clone(), None, "assign"),
            _ => {
                return Ok(Err(ResolutionError::Invalid {
                    code: "not_a_desk_action".into(),
                    message: "only assign, claim and escalate are desk actions".into(),
                }))
            }
        };
        let data = json!({ "exception_id": row.id, "by": caller.subject, "to": to,
            "queue": row.queue, "strategy": strategy, "note": note });
        let change = DeskChange::Assigned {
            to,
            at_ms: now,
            expected_assignee: expected,
            cursor_queue: None,
        };
        let entry = desk_entry(
            inner,
            row,
            "exception.assigned",
            &caller.subject,
            "user",
            data,
        );
        if inner.store.desk_write(&row.id, &change, &entry).await? {
            inner.journal_written.notify_one();
            return Ok(Ok(self.resolved(row, strategy).await?));
        }
        let current = inner.store.exception(&row.id).await?;
        Ok(Err(match current {
            Some(now_row) if now_row.status != "open" => ResolutionError::Closed(now_row.status),
            Some(now_row) => ResolutionError::Invalid {
                code: "already_assigned".into(),
                message: format!(
                    "exception {} is already assigned to `{}`; ask an operator to reassign it",
                    row.id,
                    now_row.assignee.unwrap_or_default()
                ),
            },
            None => ResolutionError::UnknownException(row.id.clone()),
        }))
    }

    async fn resolved(&self, row: &ExceptionRow, action: &str) -> Result<Resolved> {
        let case_status = self
            .inner
            .store
            .case(&row.case_id)
            .await?
            .map(|case| case.status)
            .unwrap_or_default();
        Ok(Resolved {
            exception_id: row.id.clone(),
            case_id: row.case_id.clone(),
            action: action.to_string(),
            case_status,
        })
    }
}

/// Loads `exceptions.yaml`, or the built-in desk when `path` is `None`.
pub fn load_config(path: Option<&std::path::Path>) -> std::result::Result<DeskConfig, String> {
    let Some(path) = path else {
        return Ok(DeskConfig::builtin());
    };
    let source = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let file = path.display().to_string();
    DeskConfig::parse(&source, &file).map_err(|diagnostics| {
        diagnostics
            .iter()
            .map(|d| d.render(&source))
            .collect::<Vec<_>>()
            .join("\n")
    })
}
