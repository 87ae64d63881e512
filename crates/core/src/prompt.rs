//! Prompt templates (minijinja): checked when a workflow is loaded, rendered from case data
//! when an `ai` step runs.
//!
//! Templates see `input`, `data` and `case`, and nothing else. Undefined values are errors,
//! not empty strings: a prompt that silently lost the invoice text would still get an answer.

use minijinja::{Environment, UndefinedBehavior};

/// The variables a prompt template may use.
pub const PROMPT_VARIABLES: &[&str] = &["input", "data", "case"];
/// Largest rendered prompt; a larger one is a `template_error` (and a sign of a runaway loop).
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// A problem found in a template: a message and, when known, the 1-based line in the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub message: String,
    pub line: Option<usize>,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are not HTML; never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// Checks syntax and that only [`PROMPT_VARIABLES`] are used.
pub fn check(source: &str) -> Vec<TemplateProblem> {
    let env = environment();
    let template = match env.template_from_str(source) {
        Ok(template) => template,
        Err(error) => {
            return vec![TemplateProblem {
                message: error
                    .detail()
                    .map_or_else(|| error.kind().to_string(), str::to_string),
                line: error.line(),
            }]
        }
    };
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !PROMPT_VARIABLES.contains(&name.as_str()))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|name| TemplateProblem {
            message: format!(
                "`{name}` is not a variable prompts can use (they see input, data and case)"
            ),
            line: source
                .lines()
                .position(|line| line.contains(name.as_str()))
                .map(|i| i + 1),
        })
        .collect()
}

/// The top-level `data` keys a prompt template reads (`data.classify…` reads `classify`), or
/// `None` when it reads `data` in a way that names no key (`data[x]`, `for k in data`) or
/// does not parse: then it may read any key.
pub fn data_reads(source: &str) -> Option<Vec<String>> {
    let env = environment();
    let template = env.template_from_str(source).ok()?;
    let mut keys = Vec::new();
    for name in template.undeclared_variables(true) {
        let mut segments = name.split('.');
        if segments.next() != Some("data") {
            continue;
        }
        keys.push(segments.next()?.to_string());
    }
    keys.sort();
    keys.dedup();
    Some(keys)
}

/// Renders `source` with the case's values.
pub fn render(
    source: &str,
    input: &serde_json::Value,
    data: &serde_json::Value,
    case: &serde_json::Value,
) -> Result<String, String> {
    let env = environment();
    let context = minijinja::context! { input => input, data => data, case => case };
    let rendered = env
        .render_str(source, context)
        .map_err(|error| match error.detail() {
            Some(detail) => format!("{}: {detail}", error.kind()),
            None => error.kind().to_string(),
        })?;
    if rendered.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "the rendered prompt is {} bytes, more than the limit of {MAX_RENDERED_BYTES}",
            rendered.len()
        ));
    }
    Ok(rendered)
}

/// SHA-256 (hex) of a template's source, recorded with every call made from it.
pub fn sha256(source: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(source.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_case_values_and_refuses_undefined_ones() {
        let input = json!({"subject": "Refund", "lines": [1, 2]});
        let text = render(
            "Ticket: {{ input.subject }} ({{ input.lines | length }} lines)",
            &input,
            &json!({}),
            &json!({"id": "c1"}),
        )
        .unwrap();
        assert_eq!(text, "Ticket: Refund (2 lines)");
        let error = render("{{ input.nope }}", &input, &json!({}), &json!({})).unwrap_err();
        assert!(error.contains("undefined"), "{error}");
        // No HTML escaping in prompts.
        let text = render(
            "{{ input.s }}",
            &json!({"s": "<a & b>"}),
            &json!({}),
            &json!({}),
        )
        .unwrap();
        assert_eq!(text, "<a & b>");
    }

    #[test]
    fn check_reports_syntax_and_unknown_variables() {
        assert!(
            check("Hello {{ input.name }} {% for x in data.items %}{{ x }}{% endfor %}").is_empty()
        );
        let problems = check("line one\n{{ input.name ");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        let problems = check("{{ inptu.name }}");
        assert!(problems[0].message.contains("`inptu`"), "{problems:?}");
    }
}
