//! The influence analysis as a table: small workflows and, for every action and end, the
//! paths by which AI output reaches it (none for a step that must not be gated).

#![allow(clippy::unwrap_used, clippy::panic)]

use crate::workflow::{parse_str, StepKind};

const HEADER: &str = "name: t\nversion: \"1\"\ninput: { schema: { type: object } }\nsteps:\n";

/// An `ai` step `classify` (labels spam, ham) writing `data.classify`.
const CLASSIFY: &str = "  - id: classify\n    ai: { task: classify, labels: [spam, ham], prompt: \"{{ input.text }}\", route: [{ model: m }] }\n";

/// Checks that the influence of every action and end of `steps` is `expected`: (step id,
/// every path), steps in file order; a step with no paths is not influenced.
fn check(steps: &str, expected: &[(&str, &[&str])]) {
    let source = format!("{HEADER}{steps}");
    let workflow = match parse_str(&source, "t.yaml", None) {
        Ok(workflow) => workflow,
        Err(diagnostics) => panic!(
            "{}",
            diagnostics
                .iter()
                .map(|d| d.render(&source))
                .collect::<String>()
        ),
    };
    let found: Vec<(String, Vec<String>)> = workflow
        .steps
        .iter()
        .filter_map(|step| {
            let parts = step.gate_parts()?;
            let paths = parts.influence.iter().map(|i| i.describe()).collect();
            Some((step.id.clone(), paths))
        })
        .collect();
    let expected: Vec<(String, Vec<String>)> = expected
        .iter()
        .map(|(id, paths)| {
            (
                id.to_string(),
                paths.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(found, expected, "\n{steps}");
    for step in &workflow.steps {
        let (uses_ai, influence) = match &step.kind {
            StepKind::Action(a) => (&a.uses_ai, &a.influence),
            StepKind::End(e) => (&e.uses_ai, &e.influence),
            _ => continue,
        };
        for i in influence {
            assert!(
                uses_ai.contains(&i.ai_step),
                "{} lists {}",
                step.id,
                i.ai_step
            );
        }
        assert_eq!(uses_ai.is_empty(), influence.is_empty());
    }
}

/// An action posting `body` (a flow mapping) to a fixed URL.
fn post(id: &str, body: &str) -> String {
    format!("  - id: {id}\n    action: {{ method: POST, url: \"http://h/x\", body: {body} }}\n")
}

#[test]
fn data_read_directly_by_path_index_and_whole() {
    check(
        &format!(
            "{CLASSIFY}{}{}{}{}  - id: done\n    end: ok\n",
            post("direct", "{ l: \"${data.classify.output.label}\" }"),
            post("indexed", "{ l: \"${data['classify']['output'].label}\" }"),
            post("whole", "{ n: \"${size(data)}\" }"),
            post("plain", "{ n: \"${input.n}\" }"),
        ),
        &[
            ("direct", &["classify → direct.body.l"]),
            ("indexed", &["classify → indexed.body.l"]),
            ("whole", &["classify → whole.body.n"]),
            // Its response `data.whole` echoes AI output, but `plain` reads only the input.
            ("plain", &[]),
            ("done", &[]),
        ],
    );
}

#[test]
fn copies_through_set_decide_macros_has_and_dynamic_keys() {
    check(
        &format!(
            "{CLASSIFY}  - id: copy\n    set: {{ verdict: \"data.classify.output.label\" }}\n{}  - id: table\n    decide:\n      columns: [\"data.classify.output.label == 'spam'\"]\n      rules: [{{ when: [true], then: {{ act: delete }} }}]\n      default: {{ act: keep }}\n      into: plan\n{}  - id: mark\n    set: {{ any: \"['spam'].exists(l, l == data.classify.output.label)\", seen: \"has(data.classify.output)\", picked: \"data[input.field]\" }}\n{}{}{}  - id: done\n    end: ok\n",
            post("act_copy", "{ v: \"${data.verdict}\" }"),
            post("act_table", "{ a: \"${data.plan.act}\" }"),
            post("act_any", "{ a: \"${data.any}\" }"),
            post("act_seen", "{ s: \"${data.seen}\" }"),
            post("act_picked", "{ p: \"${data.picked}\" }"),
        ),
        &[
            ("act_copy", &["classify → copy.verdict → act_copy.body.v"]),
            ("act_table", &["classify → table.plan → act_table.body.a"]),
            ("act_any", &["classify → mark.any → act_any.body.a"]),
            ("act_seen", &["classify → mark.seen → act_seen.body.s"]),
            ("act_picked", &["classify → mark.picked → act_picked.body.p"]),
            ("done", &[]),
        ],
    );
}

#[test]
fn a_later_write_of_a_literal_clears_the_copy() {
    check(
        &format!(
            "{CLASSIFY}  - id: copy\n    set: {{ verdict: \"data.classify.output.label\" }}\n  - id: reset\n    set: {{ verdict: \"'keep'\" }}\n{}  - id: done\n    end: ok\n",
            post("act", "{ v: \"${data.verdict}\" }"),
        ),
        &[("act", &[]), ("done", &[])],
    );
}

#[test]
fn responses_echo_what_their_request_sent() {
    check(
        &format!(
            "{CLASSIFY}{}{}  - id: done\n    end: ok\n",
            post("first", "{ l: \"${data.classify.output.label}\" }"),
            post("second", "{ id: \"${data.first.body.id}\" }"),
        ),
        &[
            ("first", &["classify → first.body.l"]),
            ("second", &["classify → first.first → second.body.id"]),
            ("done", &[]),
        ],
    );
}

#[test]
fn a_branch_chosen_by_the_ai_decides_its_actions_and_ends() {
    check(
        &format!(
            "  - id: before\n    action: {{ url: \"http://h/${{input.id}}\" }}\n{CLASSIFY}  - id: route\n    switch:\n      - when: data.classify.output.label == 'spam'\n        goto: delete_mail\n      - default: keep\n{}    next: after\n  - id: keep\n    set: {{ kept: \"true\" }}\n  - id: after\n    action: {{ url: \"http://h/log/${{input.id}}\" }}\n  - id: done\n    end: ok\n",
            post("delete_mail", "{ id: \"${input.id}\" }"),
        ),
        &[
            // Before the AI, and after the branches join: deterministic, never gated.
            ("before", &[]),
            ("delete_mail", &["classify → route (switch) → delete_mail"]),
            ("after", &[]),
            ("done", &[]),
        ],
    );
}

#[test]
fn ends_reached_through_the_ai_branch_are_influenced() {
    check(
        &format!(
            "{CLASSIFY}  - id: route\n    switch:\n      - when: data.classify.output.label == 'spam'\n        goto: quarantine\n      - default: deliver\n  - id: quarantine\n    end: quarantined\n  - id: deliver\n    end: delivered\n"
        ),
        &[
            ("quarantine", &["classify → route (switch) → quarantine"]),
            ("deliver", &["classify → route (switch) → deliver"]),
        ],
    );
}

#[test]
fn nested_branches_pass_the_decision_on() {
    check(
        &format!(
            "{CLASSIFY}  - id: route\n    switch:\n      - when: data.classify.output.label == 'spam'\n        goto: size\n      - default: done\n  - id: size\n    switch:\n      - when: input.n > 10\n        goto: big\n      - default: small\n{}    next: done\n{}    next: done\n  - id: done\n    end: ok\n",
            post("big", "{ n: \"${input.n}\" }"),
            post("small", "{ n: \"${input.n}\" }"),
        ),
        &[
            ("big", &["classify → route (switch) → size (switch) → big"]),
            ("small", &["classify → route (switch) → size (switch) → small"]),
            ("done", &[]),
        ],
    );
}

#[test]
fn a_loop_back_into_the_ai_branch() {
    check(
        &format!(
            "{CLASSIFY}  - id: route\n    switch:\n      - when: data.classify.output.label == 'spam'\n        goto: nudge\n      - default: done\n{}    next: route\n  - id: done\n    end: ok\n",
            post("nudge", "{ id: \"${input.id}\" }"),
        ),
        &[
            ("nudge", &["classify → route (switch) → nudge"]),
            // Every way out of the loop ends here: the AI does not choose this outcome.
            ("done", &[]),
        ],
    );
}

#[test]
fn a_loop_that_asks_the_ai_again() {
    check(
        &format!(
            "  - id: start\n    set: {{ round: \"0\" }}\n{CLASSIFY}  - id: count\n    set: {{ round: \"data.round + 1\" }}\n  - id: again\n    switch:\n      - when: data.round < 3\n        goto: classify\n      - default: report\n{}  - id: done\n    end: ok\n",
            post("report", "{ rounds: \"${data.round}\" }"),
        ),
        &[("report", &[]), ("done", &[])],
    );
}

#[test]
fn implicit_flow_through_sets_in_ai_branches() {
    check(
        &format!(
            "{CLASSIFY}  - id: route\n    switch:\n      - when: data.classify.output.label == 'spam'\n        goto: mark_delete\n      - default: mark_keep\n  - id: mark_delete\n    set: {{ verdict: \"'delete'\" }}\n    next: act\n  - id: mark_keep\n    set: {{ verdict: \"'keep'\" }}\n{}  - id: done\n    end: ok\n",
            post("act", "{ v: \"${data.verdict}\" }"),
        ),
        &[
            ("act", &["classify → route (switch) → mark_delete.verdict → act.body.v"]),
            ("done", &[]),
        ],
    );
}

#[test]
fn validate_wait_and_chained_ai_steps() {
    let second = "  - id: summarise\n    ai: { task: generate, prompt: \"{{ data.classify.output.label }}\", route: [{ model: m }] }\n";
    check(
        &format!(
            "{CLASSIFY}  - id: check\n    validate: {{ assert: [\"data.classify.output.label != 'spam'\"] }}\n{}  - id: hold\n    wait: {{ until: \"now + duration(data.classify.output.label == 'spam' ? '1h' : '2h')\" }}\n{}{second}{}  - id: done\n    end: ok\n",
            post("after_check", "{ id: \"${input.id}\" }"),
            post("after_hold", "{ id: \"${input.id}\" }"),
            post("summary", "{ s: \"${data.summarise.output.text}\" }"),
        ),
        &[
            ("after_check", &["classify → check (validate) → after_check"]),
            (
                "after_hold",
                &[
                    "classify → check (validate) → after_hold",
                    "classify → hold (wait until) → after_hold",
                ],
            ),
            (
                "summary",
                &[
                    "classify → summarise.summarise → summary.body.s",
                    "classify → check (validate) → summary",
                    "classify → hold (wait until) → summary",
                    "summarise → summary.body.s",
                ],
            ),
            (
                "done",
                &[
                    "classify → check (validate) → done",
                    "classify → hold (wait until) → done",
                ],
            ),
        ],
    );
}

#[test]
fn gate_none_needs_a_reason_and_is_a_warning() {
    let codes = |trust: &str| -> Vec<(&'static str, crate::workflow::Severity)> {
        let source = format!(
            "{HEADER}{CLASSIFY}  - id: act\n    action: {{ url: \"http://h/${{data.classify.output.label}}\", trust: {trust} }}\n  - id: plain\n    action: {{ url: \"http://h/x\", trust: {{ gate: none, reason: why }} }}\n  - id: done\n    end: ok\n"
        );
        crate::workflow::check_str(&source, "t.yaml", None)
            .diagnostics
            .iter()
            .map(|d| (d.code, d.severity))
            .collect()
    };
    use crate::workflow::Severity::{Error, Warning};
    assert_eq!(
        codes("{ gate: none, reason: \"the label only names a folder\" }"),
        [("ungated-operation", Warning), ("ignored-field", Warning)]
    );
    assert_eq!(codes("{ gate: none }"), [("invalid-value", Error)]);
    assert_eq!(
        codes("{ gate: none, reason: \"  \" }"),
        [("invalid-value", Error)]
    );
    assert_eq!(
        codes("{ gate: person, reason: x }"),
        [("invalid-value", Error)]
    );
}
