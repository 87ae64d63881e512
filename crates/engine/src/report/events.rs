//! What happened in the month, in words: trust phase changes, learner versions and workflow
//! changes, read from the journal entries their producers write (`trust.*` by the trust
//! pass, `learner.*` by the learner, `workflow.*` by the registry, `outcome.reviewed` by a
//! case). Every entry shape the review reads is read here and only here, and every newer
//! field is optional: older entries without it still make a report.
//!
//! Evidence is told as a sentence (`SPRT: 5 wrong of 23 reviews since promotion …`); the
//! JSON object stays beside it for readers of the JSON report.

use std::collections::BTreeMap;

use keel_store::JournalRow;
use serde::Serialize;
use serde_json::Value;

/// The learner's journal kinds the review tells.
pub(super) const LEARNER_KINDS: [&str; 3] =
    ["learner.challenger", "learner.promoted", "learner.failed"];

/// A trust or learner event of the month.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: String,
    /// The journal kind: `trust.promoted`, `trust.demoted`, `trust.recommended`,
    /// `trust.initialised`, `learner.challenger`, `learner.promoted` or `learner.failed`.
    pub kind: String,
    /// The operation (`workflow/step`) or the learner's `workflow/step`.
    pub subject: String,
    pub from_phase: Option<i64>,
    pub to_phase: Option<i64>,
    /// For demotions: `sprt`, `drift`, `critical_exception`, `manual` or `change`.
    pub trigger: Option<String>,
    /// The learner version concerned.
    pub version: Option<i64>,
    pub by: String,
    pub reason: Option<String>,
    /// The evidence as a sentence.
    pub evidence_text: String,
    /// Demotions: how many retro-review tasks the demotion opened.
    pub retro_reviews: Option<i64>,
    /// Demotions: the time of the last good evidence.
    pub since: Option<String>,
    /// The evidence as journaled.
    pub evidence: Value,
}

fn data_of(entry: &JournalRow) -> Value {
    serde_json::from_str(&entry.data).unwrap_or(Value::Null)
}

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The phase a `trust.*` entry moves to (`initialised` names it `phase`).
pub(super) fn trust_to_phase(kind: &str, data: &Value) -> Option<i64> {
    if kind == "trust.initialised" {
        data["phase"].as_i64()
    } else {
        data["to_phase"].as_i64()
    }
}

/// A `trust.initialised|recommended|promoted|demoted` entry as an event.
pub(super) fn trust_event(entry: &JournalRow) -> Option<Event> {
    let data = data_of(entry);
    let subject = text(&data, "operation")?;
    let evidence = data.get("evidence").cloned().unwrap_or(Value::Null);
    let trigger = text(&data, "trigger");
    Some(Event {
        at: entry.at.clone(),
        kind: entry.kind.clone(),
        subject,
        from_phase: data["from_phase"].as_i64(),
        to_phase: trust_to_phase(&entry.kind, &data),
        evidence_text: trust_evidence_text(&entry.kind, trigger.as_deref(), &evidence),
        trigger,
        version: None,
        by: text(&data, "by").unwrap_or_else(|| entry.actor_id.clone()),
        reason: text(&data, "reason"),
        retro_reviews: data["retro_reviews"].as_i64(),
        since: text(&data, "since"),
        evidence,
    })
}

/// A `learner.challenger|promoted|failed` entry as an event.
pub(super) fn learner_event(entry: &JournalRow) -> Option<Event> {
    let data = data_of(entry);
    let workflow = text(&data, "workflow").or_else(|| entry.workflow.clone())?;
    let step = text(&data, "step").or_else(|| entry.step.clone())?;
    let evidence = data.get("evidence").cloned().unwrap_or(Value::Null);
    let version = data["version"].as_i64();
    Some(Event {
        at: entry.at.clone(),
        kind: entry.kind.clone(),
        subject: format!("{workflow}/{step}"),
        from_phase: None,
        to_phase: None,
        trigger: None,
        version,
        by: text(&data, "approved_by").unwrap_or_else(|| entry.actor_id.clone()),
        reason: text(&data, "reason"),
        evidence_text: learner_evidence_text(&entry.kind, version, &data),
        retro_reviews: None,
        since: None,
        evidence,
    })
}

/// The workflow an event belongs to (its subject's first part).
pub(super) fn event_workflow(event: &Event) -> &str {
    event
        .subject
        .split_once('/')
        .map_or(event.subject.as_str(), |(workflow, _)| workflow)
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64().filter(|x| x.is_finite())
}

fn count(value: &Value) -> Option<i64> {
    value.as_i64()
}

/// `0.901` style: three decimals, for rates and bounds.
fn rate(value: f64) -> String {
    format!("{value:.3}")
}

fn trust_evidence_text(kind: &str, trigger: Option<&str>, evidence: &Value) -> String {
    match (kind, trigger) {
        ("trust.demoted", Some("sprt")) => sprt_text(evidence),
        ("trust.promoted" | "trust.recommended", _) => {
            wilson_text(evidence).unwrap_or_else(|| plain_text(evidence))
        }
        ("trust.demoted", Some("critical_exception")) => {
            let mut out = format!(
                "critical exception {}",
                evidence["kind"].as_str().unwrap_or("(kind not recorded)")
            );
            if let Some(case) = evidence["case_id"].as_str() {
                out.push_str(&format!(" in case {case}"));
            }
            if let Some(step) = evidence["step"].as_str() {
                out.push_str(&format!(" at step {step}"));
            }
            out
        }
        _ => plain_text(evidence),
    }
}

/// `SPRT: 5 wrong of 23 reviews since promotion: error rate ≥ 0.100 rather than 0.050 (α 0.05, β 0.2)`.
fn sprt_text(evidence: &Value) -> String {
    let sprt = &evidence["sprt"];
    let (Some(errors), Some(observations)) = (count(&sprt["errors"]), count(&sprt["observations"]))
    else {
        return plain_text(evidence);
    };
    let since = count(&evidence["sprt_reviews"]);
    let restarts = count(&sprt["restarts"]).unwrap_or(0);
    let scope = match since {
        Some(total) if restarts > 0 && total != observations => {
            format!("in its last test ({total} reviews since promotion)")
        }
        _ => "since promotion".to_string(),
    };
    let mut out = format!("SPRT: {errors} wrong of {observations} reviews {scope}");
    if let (Some(p0), Some(p1)) = (number(&sprt["p0"]), number(&sprt["p1"])) {
        out.push_str(&format!(
            ": error rate ≥ {} rather than {}",
            rate(p1),
            rate(p0)
        ));
    }
    if let (Some(alpha), Some(beta)) = (number(&sprt["alpha"]), number(&sprt["beta"])) {
        out.push_str(&format!(" (α {alpha}, β {beta})"));
    }
    out
}

/// `Wilson bound 0.901 ≥ 0.900 over 141 reviews (136 agreed)`, from the tuning crate's
/// evidence (`wilson.low`, `target_agreement`, `reviews`, `agreements`) or the short form
/// (`wilson_low`, `target`).
fn wilson_text(evidence: &Value) -> Option<String> {
    let low = number(&evidence["wilson"]["low"]).or_else(|| number(&evidence["wilson_low"]))?;
    let reviews = count(&evidence["reviews"])?;
    let target = number(&evidence["target_agreement"]).or_else(|| number(&evidence["target"]));
    let mut out = format!("Wilson bound {}", rate(low));
    if let Some(target) = target {
        out.push_str(if low >= target { " ≥ " } else { " < " });
        out.push_str(&rate(target));
    }
    out.push_str(&format!(" over {reviews} reviews"));
    if let Some(agreed) = count(&evidence["agreements"]).or_else(|| count(&evidence["agreed"])) {
        out.push_str(&format!(" ({agreed} agreed)"));
    }
    Some(out)
}

fn learner_evidence_text(kind: &str, version: Option<i64>, data: &Value) -> String {
    let version = version.map_or_else(|| "a new version".to_string(), |v| format!("v{v}"));
    match kind {
        "learner.challenger" => {
            let mut out = format!("{version} stored as challenger");
            if let Some(source) = data["source"].as_str() {
                out.push_str(&format!(" from {source}"));
            }
            if let Some(examples) = count(&data["examples"]) {
                out.push_str(&format!(" ({examples} examples)"));
            }
            out
        }
        "learner.promoted" if data["forced"].as_bool() == Some(true) => format!(
            "{version} serves without passing the test: forced, approved by {}",
            data["approved_by"].as_str().unwrap_or("(not recorded)")
        ),
        "learner.promoted" => {
            let previous = count(&data["previous_version"])
                .map_or_else(String::new, |p| format!(", replacing v{p}"));
            format!(
                "{version} serves{previous}: {}",
                non_inferiority_text(&data["evidence"], true)
            )
        }
        "learner.failed" => format!(
            "{version} kept, not served: {}",
            non_inferiority_text(&data["evidence"], false)
        ),
        _ => plain_text(data),
    }
}

/// `paired non-inferiority over 200 cases: challenger 0.810 vs serving 0.930, difference
/// −0.120, lower bound −0.170 < −0.020 (α 0.05)`.
fn non_inferiority_text(evidence: &Value, passed: bool) -> String {
    let test = evidence["test"].as_str().unwrap_or("non-inferiority test");
    let mut out = test.to_string();
    if let Some(n) = count(&evidence["n"]) {
        out.push_str(&format!(" over {n} cases"));
    }
    if let (Some(challenger), Some(serving)) = (
        number(&evidence["challenger_accuracy"]),
        number(&evidence["serving_accuracy"]),
    ) {
        out.push_str(&format!(
            ": challenger {} vs serving {}",
            rate(challenger),
            rate(serving)
        ));
    }
    if let Some(difference) = number(&evidence["difference"]) {
        out.push_str(&format!(", difference {}", signed(difference)));
    }
    if let Some(bound) = number(&evidence["lower_bound"]) {
        out.push_str(&format!(", lower bound {}", signed(bound)));
        if let Some(margin) = number(&evidence["margin"]) {
            out.push_str(if passed { " ≥ " } else { " < " });
            out.push_str(&signed(-margin));
        }
    }
    if let Some(alpha) = number(&evidence["alpha"]) {
        out.push_str(&format!(" (α {alpha})"));
    }
    out
}

fn signed(value: f64) -> String {
    if value < 0.0 {
        format!("−{}", rate(-value))
    } else {
        format!("+{}", rate(value))
    }
}

/// Any JSON object as `key value, key value` (nested objects flattened with dots), for
/// evidence of a shape this module does not know.
pub(super) fn plain_text(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (key, inner) in fields {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, inner, out);
                }
            }
            Value::Null => {}
            Value::String(text) => out.push(format!("{prefix} {text}")),
            other => out.push(format!("{prefix} {other}")),
        }
    }
    let mut parts = Vec::new();
    walk("", value, &mut parts);
    parts.join(", ").trim().to_string()
}

// ------------------------------------------------------------------------------- outcomes

/// The learner version an `outcome.reviewed` entry's proposal came from, with its operation,
/// model and verdict; `None` for proposals of other models or older entries.
pub(super) fn learner_review(entry: &JournalRow) -> Option<(String, String, i64, String)> {
    let data = data_of(entry);
    Some((
        text(&data, "operation")?,
        text(&data, "model").unwrap_or_default(),
        data["learner_version"].as_i64()?,
        text(&data, "verdict")?,
    ))
}

// ------------------------------------------------------------------------------- changes

/// A workflow version deployed in the month and what change control made of it.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub at: String,
    pub version_no: i64,
    pub label: Option<String>,
    /// `active` or `pending` as deployed (absent in older entries: active).
    pub status: String,
    /// `required` or `off` (absent in older entries: not recorded).
    pub review: Option<String>,
    pub author: Option<String>,
    /// Who approved it: a `workflow.approved` entry, else the version's `change.approved_by`.
    pub approved_by: Option<String>,
    pub rejected_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    /// What changed, per operation: `pay: prompt, policy`.
    pub changes: Vec<String>,
}

/// The month's change control of one workflow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangeControl {
    pub deployments: Vec<Deployment>,
    /// Set when a version went live without review: says so in plain words.
    pub unreviewed: Option<String>,
}

/// The sentence for versions that went live unreviewed.
pub const UNREVIEWED: &str = "changes were not reviewed: change control is off in keel.toml";

/// The (workflow, version number) a `workflow.deployed` entry announces.
pub(super) fn deployed_version(entry: &JournalRow) -> Option<(String, i64)> {
    let data = data_of(entry);
    Some((text(&data, "workflow")?, data["version_no"].as_i64()?))
}

/// `changes: [{operation, what: [...]}]` as `operation: a, b` lines.
fn changes_text(data: &Value) -> Vec<String> {
    data["changes"]
        .as_array()
        .map(|changes| {
            changes
                .iter()
                .map(|change| {
                    let what: Vec<String> = change["what"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|item| {
                                    item.as_str()
                                        .map_or_else(|| item.to_string(), str::to_string)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "{}: {}",
                        change["operation"].as_str().unwrap_or("(workflow)"),
                        what.join(", ")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The change control of `workflow` from its `workflow.deployed` entries of the month and
/// the `workflow.approved|rejected` entries (of the month and after, up to the report), with
/// each version's `change:` block (`authors`: version number → (author, approved_by)).
pub(super) fn change_control(
    workflow: &str,
    deployed: &[JournalRow],
    decisions: &[JournalRow],
    authors: &BTreeMap<(String, i64), (String, Option<String>)>,
) -> ChangeControl {
    let mut out = ChangeControl::default();
    for entry in deployed {
        let data = data_of(entry);
        if text(&data, "workflow").as_deref() != Some(workflow) {
            continue;
        }
        let Some(version_no) = data["version_no"].as_i64() else {
            continue;
        };
        let written = authors.get(&(workflow.to_string(), version_no));
        let mut deployment = Deployment {
            at: entry.at.clone(),
            version_no,
            label: text(&data, "label"),
            status: text(&data, "status").unwrap_or_else(|| "active".to_string()),
            review: text(&data, "review"),
            author: written.map(|(author, _)| author.clone()),
            approved_by: written.and_then(|(_, approver)| approver.clone()),
            rejected_by: None,
            decided_at: None,
            decision_reason: None,
            changes: changes_text(&data),
        };
        for decision in decisions {
            let data = data_of(decision);
            if text(&data, "workflow").as_deref() != Some(workflow)
                || data["version_no"].as_i64() != Some(version_no)
            {
                continue;
            }
            if let Some(author) = text(&data, "author") {
                deployment.author = Some(author);
            }
            let by = text(&data, "by").or_else(|| Some(decision.actor_id.clone()));
            if decision.kind == "workflow.approved" {
                deployment.approved_by = by;
                deployment.status = "active".to_string();
            } else {
                deployment.rejected_by = by;
                deployment.status = "rejected".to_string();
            }
            deployment.decided_at = Some(decision.at.clone());
            deployment.decision_reason = text(&data, "reason");
        }
        if deployment.review.as_deref() == Some("off") {
            out.unreviewed = Some(UNREVIEWED.to_string());
        }
        out.deployments.push(deployment);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn sprt_evidence_reads_as_a_sentence() {
        let evidence = json!({"sprt_reviews": 23, "sprt": {"errors": 5, "observations": 23,
            "p0": 0.05, "p1": 0.1, "alpha": 0.05, "beta": 0.2, "restarts": 0}});
        assert_eq!(
            trust_evidence_text("trust.demoted", Some("sprt"), &evidence),
            "SPRT: 5 wrong of 23 reviews since promotion: error rate ≥ 0.100 rather than 0.050 (α 0.05, β 0.2)"
        );
    }

    #[test]
    fn wilson_evidence_reads_as_a_sentence_in_both_shapes() {
        let long = json!({"wilson": {"low": 0.9012, "high": 0.97}, "target_agreement": 0.9,
            "reviews": 141, "agreements": 136});
        assert_eq!(
            trust_evidence_text("trust.promoted", None, &long),
            "Wilson bound 0.901 ≥ 0.900 over 141 reviews (136 agreed)"
        );
        let short = json!({"reviews": 14, "agreements": 13, "wilson_low": 0.685});
        assert_eq!(
            trust_evidence_text("trust.promoted", None, &short),
            "Wilson bound 0.685 over 14 reviews (13 agreed)"
        );
        assert_eq!(
            trust_evidence_text(
                "trust.demoted",
                Some("manual"),
                &json!({"n": 2, "note": "x"})
            ),
            "n 2, note x"
        );
    }

    #[test]
    fn a_failed_challenger_reads_as_kept_not_served() {
        let data = json!({"version": 4, "evidence": {"test": "paired non-inferiority",
            "margin": 0.02, "alpha": 0.05, "n": 200, "challenger_accuracy": 0.81,
            "serving_accuracy": 0.93, "difference": -0.12, "lower_bound": -0.17}});
        assert_eq!(
            learner_evidence_text("learner.failed", Some(4), &data),
            "v4 kept, not served: paired non-inferiority over 200 cases: challenger 0.810 vs serving 0.930, difference −0.120, lower bound −0.170 < −0.020 (α 0.05)"
        );
    }
}
