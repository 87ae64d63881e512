//! AI influence: which `ai` steps influence each `action` and `end`, and by which path.
//!
//! The analysis works on the model, never on source text: CEL ASTs (`Expr::ast`) and prompt
//! templates are reduced to the top-level `data` keys they read, and the steps to a control
//! flow graph.
//!
//! - **Data influence.** An `ai` step taints the key it writes (`data.<into>`). A write is
//!   tainted when what it is computed from reads a tainted key: `set` values, a `decide`
//!   table's columns, an action's request (its response may echo it), another `ai` step's
//!   prompt and checks. Taint is tracked per program point (a forward may-analysis over the
//!   graph: a `set` of a literal clears it, a merge unites).
//! - **Control influence.** Post-dominators on the graph (loops included, and an exit edge
//!   for every step that can fail on purpose: a `validate`, an `approval`, a `wait` for a
//!   signal) give control dependence. A branch (`switch`, `validate`) whose condition reads a
//!   tainted key decides its dependents; dependence is transitive (a branch that itself depends
//!   on an AI-decided branch passes the decision on). A key written by a step that depends on
//!   an AI-decided branch is tainted (implicit flow).
//! - **Timing.** A `wait: { until }` that reads a tainted key decides when every step after it
//!   runs; the actions and ends reachable from it are influenced.
//!
//! Sound, never optimistic: a read the analysis cannot resolve to a key (`data[input.field]`,
//! `data` as a whole, a function applied to `data`, an unparsable prompt) reads every key.
//! Step failures that park a case on an exception are not branches: a person decides there.

use std::collections::{BTreeMap, BTreeSet};

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr, LiteralValue};

use super::model::{Influence, JsonTemplate, Step, StepKind, Template, TemplatePart, Wait};
use crate::expr::Expr;

/// Nesting bound of the AST walk; deeper expressions are assumed to read every key.
const MAX_DEPTH: usize = 256;

/// The top-level `data` keys something reads; `all` when it may read any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    pub keys: BTreeSet<String>,
    pub all: bool,
}

impl Reads {
    fn add(&mut self, other: &Reads) {
        self.keys.extend(other.keys.iter().cloned());
        self.all |= other.all;
    }

    fn of_exprs<'e>(exprs: impl IntoIterator<Item = &'e Expr>) -> Reads {
        let mut reads = Reads::default();
        for expr in exprs {
            reads.add(&expr_reads(expr));
        }
        reads
    }
}

/// The `data` keys a CEL expression reads.
pub(crate) fn expr_reads(expr: &Expr) -> Reads {
    let mut reads = Reads::default();
    walk(expr.ast(), &mut Vec::new(), &mut reads, 0);
    reads
}

fn walk(node: &IdedExpr, bound: &mut Vec<String>, reads: &mut Reads, depth: usize) {
    if depth > MAX_DEPTH {
        reads.all = true;
        return;
    }
    let depth = depth + 1;
    let is_data = |node: &IdedExpr, bound: &[String]| matches!(&node.expr, Ast::Ident(name) if name == "data" && !bound.iter().any(|b| b == "data"));
    match &node.expr {
        // `data` used whole: `size(data)`, `data.map(…)`, `f(data)`.
        Ast::Ident(name) => reads.all |= name == "data" && !bound.iter().any(|b| b == name),
        // `data.x` and `has(data.x)`.
        Ast::Select(select) if is_data(&select.operand, bound) => {
            reads.keys.insert(select.field.clone());
        }
        Ast::Select(select) => walk(&select.operand, bound, reads, depth),
        Ast::Call(call) => {
            let keyed = matches!(call.func_name.as_str(), "_[_]" | "_[?_]" | "_?._");
            match (call.args.as_slice(), keyed) {
                // `data["x"]`, `data[?"x"]`, `data.?x`; a computed key reads any key.
                ([target, key], true) if is_data(target, bound) => match string_literal(key) {
                    Some(key) => {
                        reads.keys.insert(key);
                    }
                    None => {
                        reads.all = true;
                        walk(key, bound, reads, depth);
                    }
                },
                // `"x" in data`: whether the key is there.
                ([key, target], false) if call.func_name == "@in" && is_data(target, bound) => {
                    match string_literal(key) {
                        Some(key) => {
                            reads.keys.insert(key);
                        }
                        None => {
                            reads.all = true;
                            walk(key, bound, reads, depth);
                        }
                    }
                }
                _ => {
                    if let Some(target) = &call.target {
                        walk(target, bound, reads, depth);
                    }
                    for arg in &call.args {
                        walk(arg, bound, reads, depth);
                    }
                }
            }
        }
        Ast::Comprehension(comprehension) => {
            walk(&comprehension.iter_range, bound, reads, depth);
            walk(&comprehension.accu_init, bound, reads, depth);
            let before = bound.len();
            bound.push(comprehension.iter_var.clone());
            bound.extend(comprehension.iter_var2.clone());
            bound.push(comprehension.accu_var.clone());
            walk(&comprehension.loop_cond, bound, reads, depth);
            walk(&comprehension.loop_step, bound, reads, depth);
            walk(&comprehension.result, bound, reads, depth);
            bound.truncate(before);
        }
        Ast::List(list) => {
            for element in &list.elements {
                walk(element, bound, reads, depth);
            }
        }
        Ast::Map(map) => map
            .entries
            .iter()
            .for_each(|e| walk_entry(&e.expr, bound, reads, depth)),
        Ast::Struct(structure) => structure
            .entries
            .iter()
            .for_each(|e| walk_entry(&e.expr, bound, reads, depth)),
        Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn walk_entry(entry: &EntryExpr, bound: &mut Vec<String>, reads: &mut Reads, depth: usize) {
    match entry {
        EntryExpr::StructField(field) => walk(&field.value, bound, reads, depth),
        EntryExpr::MapEntry(entry) => {
            walk(&entry.key, bound, reads, depth);
            walk(&entry.value, bound, reads, depth);
        }
    }
}

fn string_literal(node: &IdedExpr) -> Option<String> {
    match &node.expr {
        Ast::Literal(LiteralValue::String(text)) => Some(text.inner().to_string()),
        _ => None,
    }
}

fn template_reads(template: &Template, reads: &mut Reads) {
    for part in &template.parts {
        if let TemplatePart::Hole(expr) = part {
            reads.add(&expr_reads(expr));
        }
    }
}

fn json_reads(template: &JsonTemplate, reads: &mut Reads) {
    match template {
        JsonTemplate::Literal(_) => {}
        JsonTemplate::String(t) => template_reads(t, reads),
        JsonTemplate::Array(items) => items.iter().for_each(|i| json_reads(i, reads)),
        JsonTemplate::Object(fields) => fields.iter().for_each(|(_, v)| json_reads(v, reads)),
    }
}

fn prompt_reads(source: &str) -> Reads {
    match crate::prompt::data_reads(source) {
        Some(keys) => Reads {
            keys: keys.into_iter().collect(),
            all: false,
        },
        None => Reads {
            keys: BTreeSet::new(),
            all: true,
        },
    }
}

/// One write of a step to `data.<key>`.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    reads: Reads,
    /// The value replaces the key on every path through the step (else it may keep it).
    strong: bool,
}

/// What the analysis needs of one step.
#[derive(Debug, Clone, Default)]
struct Flow {
    /// In the order the step performs them.
    writes: Vec<Write>,
    /// The `ai` step's own output key (a source of taint when analysing that step).
    ai_output: Option<String>,
    /// What decides which successor runs (`switch` conditions, `validate` assertions).
    condition: Option<(Reads, &'static str)>,
    /// A `wait: { until }` expression.
    timing: Option<Reads>,
    /// An action's request, by part (`url`, `headers.X`, `body.amount`).
    request: Vec<(String, Reads)>,
}

fn request_parts(step: &Step, action: &super::model::Action) -> Vec<(String, Reads)> {
    let mut parts = Vec::new();
    let mut url = Reads::default();
    template_reads(&action.url, &mut url);
    parts.push((format!("{}.url", step.id), url));
    for (name, header) in &action.headers {
        let mut reads = Reads::default();
        template_reads(header, &mut reads);
        parts.push((format!("{}.headers.{name}", step.id), reads));
    }
    match &action.body {
        Some(JsonTemplate::Object(fields)) => {
            for (name, value) in fields {
                let mut reads = Reads::default();
                json_reads(value, &mut reads);
                parts.push((format!("{}.body.{name}", step.id), reads));
            }
        }
        Some(body) => {
            let mut reads = Reads::default();
            json_reads(body, &mut reads);
            parts.push((format!("{}.body", step.id), reads));
        }
        None => {}
    }
    parts
}

fn flow_of(step: &Step) -> Flow {
    let write = |key: &str, reads: Reads, strong: bool| Write {
        key: key.to_string(),
        reads,
        strong,
    };
    let mut flow = Flow::default();
    match &step.kind {
        StepKind::Validate(validate) => {
            let reads = Reads::of_exprs(validate.assertions.iter().map(|a| &a.expr));
            flow.condition = Some((reads, "validate"));
        }
        StepKind::Switch(switch) => {
            let reads = Reads::of_exprs(switch.cases.iter().map(|c| &c.when));
            flow.condition = Some((reads, "switch"));
        }
        StepKind::Decide(decide) => {
            let reads = Reads::of_exprs(&decide.columns);
            flow.writes.push(write(&decide.into, reads, true));
        }
        StepKind::Set(set) => {
            for (name, expr) in &set.values {
                flow.writes.push(write(name, expr_reads(expr), true));
            }
        }
        StepKind::Action(action) => {
            flow.request = request_parts(step, action);
            let mut echo = Reads::default();
            flow.request.iter().for_each(|(_, r)| echo.add(r));
            flow.writes.push(write(&action.into, echo, true));
        }
        StepKind::Ai(ai) => {
            let mut reads = prompt_reads(&ai.prompt.source);
            if let Some(system) = &ai.system {
                reads.add(&prompt_reads(&system.source));
            }
            reads.add(&Reads::of_exprs(ai.checks.iter().map(|c| &c.expr)));
            reads.add(&Reads::of_exprs(
                ai.route.iter().filter_map(|t| t.accept_when.as_ref()),
            ));
            flow.ai_output = Some(ai.into.clone());
            flow.writes.push(write(&ai.into, reads, true));
        }
        StepKind::Wait(Wait::Until(expr)) => flow.timing = Some(expr_reads(expr)),
        StepKind::Wait(Wait::Signal { into, .. }) => {
            flow.writes.push(write(into, Reads::default(), false));
        }
        StepKind::Wait(Wait::For(_)) | StepKind::End(_) => {}
        StepKind::Approval(approval) => {
            flow.writes
                .push(write(&approval.into, Reads::default(), false));
        }
    }
    flow
}

/// The steps as a graph: node `steps.len()` is the exit.
struct Graph {
    successors: Vec<Vec<usize>>,
}

impl Graph {
    fn new(steps: &[Step]) -> Graph {
        let index: BTreeMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let exit = steps.len();
        let at = |id: &str| index.get(id).copied().unwrap_or(exit);
        let mut successors: Vec<Vec<usize>> = steps
            .iter()
            .map(|step| {
                let mut next: Vec<usize> = step.next.iter().map(|n| at(n)).collect();
                match &step.kind {
                    StepKind::Switch(switch) => {
                        next.extend(switch.cases.iter().map(|c| at(&c.goto)));
                        next.push(at(&switch.default));
                    }
                    StepKind::Validate(_) | StepKind::End(_) => next.push(exit),
                    StepKind::Wait(Wait::Signal { timeout_goto, .. }) => {
                        next.push(timeout_goto.as_deref().map_or(exit, at));
                    }
                    StepKind::Approval(approval) => {
                        next.push(approval.on_reject.as_deref().map_or(exit, at));
                    }
                    _ => {}
                }
                next.sort_unstable();
                next.dedup();
                next
            })
            .collect();
        successors.push(Vec::new());
        let mut graph = Graph { successors };
        // A step that can never reach the exit (a loop without a way out) leaves through the
        // loop guard: give it that edge, so that post-dominance is defined everywhere.
        let reaches = graph.reaching_exit();
        for (node, reaches) in reaches.iter().enumerate().take(exit) {
            if !reaches {
                graph.successors[node].push(exit);
            }
        }
        graph
    }

    fn len(&self) -> usize {
        self.successors.len()
    }

    fn reaching_exit(&self) -> Vec<bool> {
        let exit = self.len() - 1;
        let mut reached = vec![false; self.len()];
        reached[exit] = true;
        let mut changed = true;
        while changed {
            changed = false;
            for node in 0..exit {
                if !reached[node] && self.successors[node].iter().any(|&s| reached[s]) {
                    reached[node] = true;
                    changed = true;
                }
            }
        }
        reached
    }

    /// `post_dominators[n][m]`: every path from `n` to the exit passes through `m`.
    fn post_dominators(&self) -> Vec<Vec<bool>> {
        let n = self.len();
        let exit = n - 1;
        let mut sets = vec![vec![true; n]; n];
        sets[exit] = (0..n).map(|m| m == exit).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for node in (0..exit).rev() {
                let mut set = vec![true; n];
                for &s in &self.successors[node] {
                    for (m, keep) in set.iter_mut().enumerate() {
                        *keep &= sets[s][m];
                    }
                }
                set[node] = true;
                if set != sets[node] {
                    sets[node] = set;
                    changed = true;
                }
            }
        }
        sets
    }

    /// `depends[n]`: the branches `n` is directly control dependent on (Ferrante, Ottenstein
    /// and Warren): `n` post-dominates a successor of the branch but not the branch itself.
    fn control_dependence(&self) -> Vec<Vec<usize>> {
        let pdom = self.post_dominators();
        let n = self.len();
        let mut depends = vec![Vec::new(); n];
        for branch in 0..n {
            if self.successors[branch].len() < 2 {
                continue;
            }
            for (node, depends) in depends.iter_mut().enumerate() {
                let strictly_post_dominates = pdom[branch][node] && node != branch;
                let on_some_edge = self.successors[branch].iter().any(|&s| pdom[s][node]);
                if on_some_edge && !strictly_post_dominates {
                    depends.push(branch);
                }
            }
        }
        depends
    }

    fn reachable_from(&self, start: usize) -> Vec<bool> {
        let mut reached = vec![false; self.len()];
        let mut stack: Vec<usize> = self.successors[start].clone();
        while let Some(node) = stack.pop() {
            if !std::mem::replace(&mut reached[node], true) {
                stack.extend(self.successors[node].iter().copied());
            }
        }
        reached
    }
}

/// Tainted keys at one program point, each with the path that tainted it.
type Taint = BTreeMap<String, Vec<String>>;

/// The shortest path among the tainted keys `reads` reads in `taint`, if any.
fn tainted_read(reads: &Reads, taint: &Taint) -> Option<Vec<String>> {
    let shortest = |paths: &mut dyn Iterator<Item = &Vec<String>>| {
        paths.min_by_key(|path| path.len()).cloned()
    };
    if reads.all {
        return shortest(&mut taint.values());
    }
    shortest(&mut reads.keys.iter().filter_map(|key| taint.get(key)))
}

fn extended(path: &[String], step: String) -> Vec<String> {
    let mut path = path.to_vec();
    path.push(step);
    path
}

/// Everything known about one `ai` step's influence.
struct Analysis<'a> {
    steps: &'a [Step],
    flows: &'a [Flow],
    graph: &'a Graph,
    depends: &'a [Vec<usize>],
    ai_step: String,
    /// Tainted keys on entry to each step.
    entry: Vec<Taint>,
    /// Steps reached only through an AI-decided branch, with the path.
    controlled: Vec<Option<Vec<String>>>,
}

impl Analysis<'_> {
    fn run(&mut self) {
        loop {
            self.propagate();
            if !self.decide_control() {
                return;
            }
        }
    }

    /// What a step's writes leave tainted, given what was tainted on entry.
    fn exit_taint(&self, node: usize) -> Taint {
        let mut taint = self.entry[node].clone();
        let step = &self.steps[node];
        let flow = &self.flows[node];
        for write in &flow.writes {
            let label = format!("{}.{}", step.id, write.key);
            let path = if step.id == self.ai_step && flow.ai_output.as_ref() == Some(&write.key) {
                Some(vec![self.ai_step.clone()])
            } else if let Some(path) = tainted_read(&write.reads, &taint) {
                Some(extended(&path, label))
            } else {
                self.controlled[node]
                    .as_ref()
                    .map(|path| extended(path, label))
            };
            match path {
                Some(path) => {
                    taint.entry(write.key.clone()).or_insert(path);
                }
                None if write.strong => {
                    taint.remove(&write.key);
                }
                None => {}
            }
        }
        taint
    }

    /// Forward may-analysis to a fixpoint. Entry sets only grow, and a key's path, once
    /// found, is kept: the iteration ends.
    fn propagate(&mut self) {
        let exit = self.steps.len();
        let mut work: BTreeSet<usize> = (0..exit).collect();
        while let Some(node) = work.pop_first() {
            let out = self.exit_taint(node);
            for &successor in &self.graph.successors[node] {
                if successor == exit {
                    continue;
                }
                let mut grew = false;
                for (key, path) in &out {
                    if !self.entry[successor].contains_key(key) {
                        self.entry[successor].insert(key.clone(), path.clone());
                        grew = true;
                    }
                }
                if grew {
                    work.insert(successor);
                }
            }
        }
    }

    /// The path by which AI output decides the branch at `node`, if it does.
    fn branch_path(&self, node: usize) -> Option<Vec<String>> {
        let step = self.steps.get(node)?;
        let label = |kind: &str| format!("{} ({kind})", step.id);
        if let Some((reads, kind)) = &self.flows[node].condition {
            if let Some(path) = tainted_read(reads, &self.entry[node]) {
                return Some(extended(&path, label(kind)));
            }
        }
        let kind = self.flows[node]
            .condition
            .as_ref()
            .map_or(step.kind.keyword(), |(_, kind)| kind);
        self.controlled[node]
            .as_ref()
            .map(|path| extended(path, label(kind)))
    }

    /// Marks the steps that depend on an AI-decided branch; whether any mark was added.
    fn decide_control(&mut self) -> bool {
        let mut added = false;
        let mut changed = true;
        while changed {
            changed = false;
            for node in 0..self.steps.len() {
                if self.controlled[node].is_some() {
                    continue;
                }
                let path = self.depends[node]
                    .iter()
                    .find_map(|&branch| self.branch_path(branch));
                if path.is_some() {
                    self.controlled[node] = path;
                    changed = true;
                    added = true;
                }
            }
        }
        added
    }

    /// Every path by which this `ai` step reaches step `node` (an action or an end).
    fn paths_to(&self, node: usize) -> Vec<Vec<String>> {
        let step = &self.steps[node];
        let mut paths = Vec::new();
        for (part, reads) in &self.flows[node].request {
            if let Some(path) = tainted_read(reads, &self.entry[node]) {
                paths.push(extended(&path, part.clone()));
            }
        }
        if let Some(path) = &self.controlled[node] {
            paths.push(extended(path, step.id.clone()));
        }
        for (wait, flow) in self.flows.iter().enumerate() {
            let Some(reads) = &flow.timing else { continue };
            let Some(path) = tainted_read(reads, &self.entry[wait]) else {
                continue;
            };
            if self.graph.reachable_from(wait)[node] {
                let through = format!("{} (wait until)", self.steps[wait].id);
                paths.push(extended(&extended(&path, through), step.id.clone()));
            }
        }
        paths.dedup();
        paths
    }
}

/// Fills `uses_ai` and `influence` of every `action` and `end`.
pub(crate) fn analyse(steps: &mut [Step]) {
    let flows: Vec<Flow> = steps.iter().map(flow_of).collect();
    let graph = Graph::new(steps);
    let depends = graph.control_dependence();
    let sources: Vec<String> = steps
        .iter()
        .filter(|step| matches!(step.kind, StepKind::Ai(_)))
        .map(|step| step.id.clone())
        .collect();
    let mut found: Vec<Vec<Influence>> = vec![Vec::new(); steps.len()];
    for ai_step in sources {
        let mut analysis = Analysis {
            steps,
            flows: &flows,
            graph: &graph,
            depends: &depends,
            ai_step: ai_step.clone(),
            entry: vec![Taint::new(); steps.len()],
            controlled: vec![None; steps.len()],
        };
        analysis.run();
        for (node, found) in found.iter_mut().enumerate() {
            if matches!(steps[node].kind, StepKind::Action(_) | StepKind::End(_)) {
                found.extend(analysis.paths_to(node).into_iter().map(|path| Influence {
                    ai_step: ai_step.clone(),
                    path,
                }));
            }
        }
    }
    for (step, influence) in steps.iter_mut().zip(found) {
        let mut uses_ai: Vec<String> = Vec::new();
        for i in &influence {
            if !uses_ai.contains(&i.ai_step) {
                uses_ai.push(i.ai_step.clone());
            }
        }
        match &mut step.kind {
            StepKind::Action(action) => {
                action.uses_ai = uses_ai;
                action.influence = influence;
            }
            StepKind::End(end) => {
                end.uses_ai = uses_ai;
                end.influence = influence;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "influence_tests.rs"]
mod tests;
