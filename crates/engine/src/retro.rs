//! What a demotion leaves behind: the automatic actions an operation took since its last good
//! evidence that no person reviewed, turned into retro-review tasks so the team can find and
//! undo the damage.
//!
//! **Last good evidence.** Among the actions the operation took on its own since it entered the
//! phase it is demoted from (its `trust.gate` entries with decision `auto`), the reviewed ones
//! are evidence: find the earliest action a review found wrong (corrected or rejected); the last
//! good evidence is the latest action before it that a review agreed with. With no wrong review
//! (a demotion by drift, by hand or by a critical exception), it is the latest agreed action.
//! With no agreed action at all, it is the moment the operation entered the phase: every
//! automatic action of the phase is suspect. Every automatic action after that point that has
//! no review and no open post-hoc review task becomes a task of kind `retro_review` (the
//! `retro-review` queue: listed most recent first), carrying the proposal and the rendered
//! request as the gate recorded them. At most [`MAX_RETRO_TASKS`] are opened by one demotion;
//! the demotion entry names how many were opened and how many more there were.
//!
//! Deciding a retro-review task is a post-hoc review (`outcome.reviewed`, source `retro`): a
//! wrong verdict raises a `wrong_action` exception for remediation.

use std::collections::{HashMap, HashSet};

use keel_store::{NewEntry, TrustOperationRow};
use serde_json::{json, Value};

use crate::{canonical_data, rfc3339_ms, Inner, Result};

/// At most this many retro-review tasks per demotion; the rest are counted in the entry.
pub const MAX_RETRO_TASKS: usize = 10_000;
/// At most this many gate decisions are read per demotion.
const MAX_GATES: i64 = 200_000;
/// The task kind of a retro review.
pub const RETRO_KIND: &str = "retro_review";

/// The retro-review tasks a demotion opens, and what the demotion entry says about them.
#[derive(Debug, Default)]
pub(crate) struct Retro {
    /// `task.created` entries, one per unreviewed automatic action, newest first.
    pub entries: Vec<NewEntry>,
    /// Unreviewed automatic actions found (opened + over the cap).
    pub found: usize,
    /// The last good evidence: the gate time after which actions are suspect.
    pub since_ms: i64,
}

/// One automatic gate decision of the operation.
struct Gate {
    seq: i64,
    case_id: String,
    at_ms: i64,
    data: Value,
}

/// The retro-review tasks for demoting `row` (read before the phase changes).
pub(crate) async fn plan(inner: &Inner, row: &TrustOperationRow) -> Result<Retro> {
    let from_ms = row.since_ms;
    let gates: Vec<Gate> = inner
        .store
        .gate_entries_since(&row.workflow, &row.step, &rfc3339_ms(from_ms), MAX_GATES)
        .await?
        .into_iter()
        .filter_map(|(seq, case_id, at, data)| {
            let data: Value = serde_json::from_str(&data).ok()?;
            (data["decision"] == "auto").then(|| Gate {
                seq,
                case_id,
                at_ms: chrono::DateTime::parse_from_rfc3339(&at)
                    .map_or(from_ms, |t| t.timestamp_millis()),
                data,
            })
        })
        .collect();
    if gates.is_empty() {
        return Ok(Retro {
            since_ms: from_ms,
            ..Retro::default()
        });
    }
    // Reviews of the operation's actions: a review comes after its action, so read from the
    // phase's start.
    let reviews = inner
        .store
        .trust_outcomes(&row.operation, from_ms, 1_000_000)
        .await?;
    let mut verdicts: HashMap<&str, bool> = HashMap::new();
    for review in &reviews {
        let good = review.verdict == "agree";
        // A case reviewed more than once counts as wrong if any review found it wrong.
        let entry = verdicts.entry(review.case_id.as_str()).or_insert(good);
        *entry = *entry && good;
    }
    let first_wrong = gates
        .iter()
        .filter(|g| verdicts.get(g.case_id.as_str()) == Some(&false))
        .map(|g| g.at_ms)
        .min();
    let since_ms = gates
        .iter()
        .filter(|g| verdicts.get(g.case_id.as_str()) == Some(&true))
        .filter(|g| first_wrong.is_none_or(|wrong| g.at_ms < wrong))
        .map(|g| g.at_ms)
        .max()
        .unwrap_or(from_ms);
    let reviewed: HashSet<&str> = verdicts.keys().copied().collect();
    let mut suspects = Vec::new();
    for gate in gates.iter().rev() {
        if gate.at_ms < since_ms || reviewed.contains(gate.case_id.as_str()) {
            continue;
        }
        if gate.data["review_sampled"] == true {
            let sampled = format!("{}.{}.review", gate.case_id, row.step);
            if inner
                .store
                .task(&sampled)
                .await?
                .is_some_and(|t| t.status == "open")
            {
                continue; // a person will review it anyway
            }
        }
        suspects.push(gate);
    }
    let found = suspects.len();
    let now = inner.clock.now_ms();
    let entries = suspects
        .into_iter()
        .take(MAX_RETRO_TASKS)
        .map(|gate| task_entry(row, gate, now))
        .collect();
    Ok(Retro {
        entries,
        found,
        since_ms,
    })
}

fn task_entry(row: &TrustOperationRow, gate: &Gate, now: i64) -> NewEntry {
    let data = json!({
        "task_id": format!("{}.{}.retro.{}", gate.case_id, row.step, gate.seq),
        "kind": RETRO_KIND,
        "queue": "retro-review",
        "title": format!("Retro-review the automatic action `{}` taken in phase {} before the demotion", row.step, gate.data["phase"]),
        "required": 1,
        "roles": gate.data["roles"],
        "amount": null,
        "due_ms": null,
        "proposals": gate.data["proposals"],
        "action": gate.data["action"],
        "acted_at": rfc3339_ms(gate.at_ms),
        "submitted_by": gate.data["submitted_by"],
        "operation": row.operation,
        "phase": gate.data["phase"],
        "ai_steps": gate.data["ai_steps"],
        "retro": true,
    });
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: rfc3339_ms(now),
        kind: "task.created".into(),
        actor_type: "system".into(),
        actor_id: crate::trust::TRUST_ACTOR.into(),
        case_id: Some(gate.case_id.clone()),
        workflow: Some(row.workflow.clone()),
        step: Some(row.step.clone()),
        data,
        data_sha256,
    }
}
