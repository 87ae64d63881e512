//! Whole-workflow checks over the steps: unique ids, existing targets, where each step goes
//! next, steps that fall off the end and steps never reached from the first.

use std::collections::{BTreeMap, VecDeque};

use super::diagnostic::closest;
use super::model::{Step, StepKind, Wait};
use super::steps::{Draft, Target};
use super::values::Checker;

impl Checker<'_> {
    /// Resolves `next` for every step and returns the steps when all of them are sound.
    pub fn link(&mut self, drafts: Vec<Draft>) -> Option<Vec<Step>> {
        let errors_before = self.error_count();
        let index = self.unique_ids(&drafts);
        let known: Vec<&str> = index.keys().map(String::as_str).collect();
        for draft in &drafts {
            for target in draft.next.iter().chain(&draft.targets) {
                self.check_target(target, &known);
            }
        }
        let mut nexts: Vec<Option<String>> = Vec::with_capacity(drafts.len());
        for (position, draft) in drafts.iter().enumerate() {
            let next = match (&draft.next, draft.keyword) {
                (Some(explicit), _) => Some(explicit.step.clone()),
                (None, Some("end" | "switch") | None) => None,
                (None, Some(keyword)) => match drafts.get(position + 1) {
                    Some(following) => following.id.clone(),
                    None => {
                        let id = draft.id.as_deref().unwrap_or("?");
                        self.error(
                            "falls-off-end",
                            draft.id_span,
                            format!("step `{id}` ({keyword}) is the last step but does not end the case"),
                            "add `next: <step>`, or follow it with an `end` step".to_string(),
                        );
                        None
                    }
                },
            };
            nexts.push(next);
        }
        // Broken ids or targets make the graph unknown: unreachable errors would be noise.
        let graph_sound = self.error_count() == errors_before;
        if graph_sound && drafts.iter().all(|d| d.keyword.is_some() && d.id.is_some()) {
            self.reachability(&drafts, &nexts, &index);
        }
        let mut steps = Vec::with_capacity(drafts.len());
        for (draft, next) in drafts.into_iter().zip(nexts) {
            steps.push(Step {
                id: draft.id?,
                kind: draft.kind?,
                sla: draft.sla,
                sla_business: draft.sla_business,
                next,
            });
        }
        Some(steps)
    }

    /// First occurrence of each id → its position; reports later duplicates.
    fn unique_ids(&mut self, drafts: &[Draft]) -> BTreeMap<String, usize> {
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (position, draft) in drafts.iter().enumerate() {
            let Some(id) = &draft.id else { continue };
            match index.get(id) {
                Some(&first) => {
                    let line = drafts[first].id_span.line;
                    self.error(
                        "duplicate-step-id",
                        draft.id_span,
                        format!("step id `{id}` is already used by the step on line {line}"),
                        "step ids must be unique; rename one of them".to_string(),
                    );
                }
                None => {
                    index.insert(id.clone(), position);
                }
            }
        }
        index
    }

    fn check_target(&mut self, target: &Target, known: &[&str]) {
        if known.contains(&target.step.as_str()) {
            return;
        }
        let hint = match closest(&target.step, known.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("steps are: {}", super::values::list(known)),
        };
        self.error(
            "unknown-step",
            target.span,
            format!("there is no step `{}`", target.step),
            hint,
        );
    }

    fn reachability(
        &mut self,
        drafts: &[Draft],
        nexts: &[Option<String>],
        index: &BTreeMap<String, usize>,
    ) {
        let mut reached = vec![false; drafts.len()];
        let mut queue = VecDeque::from([0usize]);
        while let Some(position) = queue.pop_front() {
            if reached[position] {
                continue;
            }
            reached[position] = true;
            let draft = &drafts[position];
            let mut successors: Vec<&str> = draft.targets.iter().map(|t| t.step.as_str()).collect();
            if let Some(next) = &nexts[position] {
                successors.push(next);
            }
            // A switch whose cases failed to check still counts its targets (in `targets`).
            if let Some(StepKind::Wait(Wait::Signal {
                timeout_goto: Some(goto),
                ..
            })) = &draft.kind
            {
                successors.push(goto);
            }
            for successor in successors {
                if let Some(&target) = index.get(successor) {
                    if !reached[target] {
                        queue.push_back(target);
                    }
                }
            }
        }
        let first = drafts.first().and_then(|d| d.id.as_deref()).unwrap_or("?");
        for (draft, reached) in drafts.iter().zip(reached) {
            if !reached {
                let id = draft.id.as_deref().unwrap_or("?");
                self.error(
                    "unreachable-step",
                    draft.id_span,
                    format!("step `{id}` is never reached from the first step `{first}`"),
                    format!("point a `next`, `goto` or `default` at `{id}`, or remove it"),
                );
            }
        }
    }
}
