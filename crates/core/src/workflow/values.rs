//! The checker's building blocks: mappings with known fields, names, durations, expressions,
//! templates, JSON values and schemas — each reports its own problems with a position.

use std::path::Path;

use crate::expr::{Expr, VARIABLES};
use crate::schema::Schema;

use super::diagnostic::{closest, Diagnostic, Severity, Span};
use super::duration::parse_duration;
use super::model::{DurationMs, JsonTemplate, Template, TemplatePart};
use super::template::{self, RawPart};
use super::yaml::{Node, Value};

/// Upper bound on a schema file's size.
pub(crate) const MAX_SCHEMA_FILE_BYTES: u64 = 1 << 20;
/// Upper bound on names, ids and identifiers.
const MAX_NAME_CHARS: usize = 64;

/// Collects diagnostics while walking one workflow file.
pub(crate) struct Checker<'a> {
    pub file: &'a str,
    pub source: &'a str,
    pub base_dir: Option<&'a Path>,
    pub diagnostics: Vec<Diagnostic>,
    /// Variables expressions may use besides [`VARIABLES`], while checking one field (an `ai`
    /// step's `checks` see `output`; `accept_when` also sees `confidence`, `cost`, `tier`).
    pub extra_variables: &'static [&'static str],
    /// Steps declared `trust: { gate: none }`, with the position of their `trust` key.
    pub ungated: Vec<(String, Span)>,
    /// Parsing a version stored before today's rules ([`super::parse_stored`]): rules added
    /// since (trust settings that cannot work, `change.approved_by`) must not strand the
    /// cases that run it.
    pub stored: bool,
}

/// How an expression's value is used: conditions must be bools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    Condition,
    Value,
}

/// The known fields of one mapping, with their key nodes for positions.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(key, _, _)| *key == name)
            .map(|(_, _, value)| *value)
    }

    pub fn key_span(&self, name: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|(key, _, _)| *key == name)
            .map(|(_, key, _)| key.span)
    }

    /// Names present, in file order.
    pub fn names(&self) -> impl Iterator<Item = &'n str> + '_ {
        self.entries.iter().map(|(key, _, _)| *key)
    }
}

pub(crate) fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_NAME_CHARS
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub(crate) fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.len() <= MAX_NAME_CHARS
}

pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Checker<'a> {
    pub fn error(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        hint: impl Into<Option<String>>,
    ) {
        self.diagnostics.push(Diagnostic::new(
            Severity::Error,
            code,
            self.file,
            span,
            message,
            hint.into(),
        ));
    }

    pub fn warning(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        hint: impl Into<Option<String>>,
    ) {
        self.diagnostics.push(Diagnostic::new(
            Severity::Warning,
            code,
            self.file,
            span,
            message,
            hint.into(),
        ));
    }

    /// An error for a new version; a warning when loading a stored one that was accepted
    /// under the rules of its day (see `parse_stored`).
    pub fn error_unless_stored(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        hint: impl Into<Option<String>>,
    ) {
        if self.stored {
            self.warning(code, span, message, hint);
        } else {
            self.error(code, span, message, hint);
        }
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        let hint = if expected.starts_with("a list") {
            "write a list as `[a, b]` or as `- item` lines".to_string()
        } else if expected.starts_with("a mapping") {
            "write a mapping as `{ key: value }` or as indented `key: value` lines".to_string()
        } else if expected.contains("string") {
            "put the text in quotes: \"…\"".to_string()
        } else {
            format!("expected {expected}")
        };
        self.error(
            "wrong-type",
            node.span,
            format!("{what} must be {expected}, found {}", node.type_name()),
            hint,
        );
    }

    /// Checks that `node` is a mapping whose keys are all in `allowed` and include `required`.
    /// `owner` is where a missing field is reported (usually the key that holds the mapping).
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        owner: Span,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                "wrong-type",
                node.span,
                format!("{what} must be a mapping, found {}", node.type_name()),
                Some(format!("expected fields: {}", list(allowed))),
            );
            return None;
        };
        let mut fields = Fields {
            entries: Vec::new(),
        };
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.wrong_type(key, &format!("a key in {what}"), "a string");
                continue;
            };
            if allowed.contains(&name) {
                fields.entries.push((name, key, value));
                continue;
            }
            let hint = match closest(name, allowed.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("expected one of: {}", list(allowed)),
            };
            self.error(
                "unknown-field",
                key.span,
                format!("unknown field `{name}` in {what}"),
                hint,
            );
        }
        for field in required {
            if fields.get(field).is_none() {
                self.error(
                    "missing-field",
                    owner,
                    format!("{what} is missing the required field `{field}`"),
                    format!("add `{field}: …`"),
                );
            }
        }
        Some(fields)
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(text) => Some(text.to_string()),
            None => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    /// A lowercase name (`[a-z0-9_-]+`): workflow names, signal names, outcomes.
    pub fn name(&mut self, node: &Node, what: &str, code: &'static str) -> Option<String> {
        let text = self.string(node, what)?;
        if is_name(&text) {
            return Some(text);
        }
        let suggestion: String = text
            .to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        self.error(
            code,
            node.span,
            format!("{what} `{text}` is not valid: use 1 to {MAX_NAME_CHARS} lowercase letters, digits, `-` or `_`"),
            format!("for example `{}`", suggestion.trim_matches('-')),
        );
        None
    }

    /// An identifier usable as `data.<name>` in CEL.
    pub fn identifier(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = self.string(node, what)?;
        self.check_identifier(&text, node.span, what)
            .then_some(text)
    }

    pub fn check_identifier(&mut self, text: &str, span: Span, what: &str) -> bool {
        if is_identifier(text) {
            return true;
        }
        let suggestion: String = text
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.error(
            "invalid-identifier",
            span,
            format!("{what} `{text}` is not an identifier: it is read as `data.{text}` in CEL"),
            format!("use letters, digits and `_`, not starting with a digit, e.g. `{suggestion}`"),
        );
        false
    }

    /// An SLA: a duration (`4h`), or working time on the workflow's calendar
    /// (`{ business: 4h }`); the flag says which.
    pub fn sla(&mut self, node: &Node, what: &str) -> Option<(DurationMs, bool)> {
        match &node.value {
            Value::Map(_) => {
                let fields = self.fields(node, what, node.span, &["business"], &["business"])?;
                let business = fields.get("business")?;
                self.duration(business, &format!("{what}.business"))
                    .map(|d| (d, true))
            }
            _ => self.duration(node, what).map(|d| (d, false)),
        }
    }

    pub fn duration(&mut self, node: &Node, what: &str) -> Option<DurationMs> {
        let text = match &node.value {
            Value::Str(text) => text.clone(),
            Value::Int(_) | Value::Float(_) => String::new(),
            _ => {
                self.wrong_type(node, what, "a duration such as `30s`");
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(duration) => Some(duration),
            Err(message) => {
                let message = if text.is_empty() {
                    format!("{what} needs a unit")
                } else {
                    format!("{what}: {message}")
                };
                self.error(
                    "invalid-duration",
                    node.span,
                    message,
                    "write a number and a unit (`ms`, `s`, `m`, `h`, `d`), e.g. `30s` or `1h30m`"
                        .to_string(),
                );
                None
            }
        }
    }

    /// Maps a byte range inside a scalar's text to the source, when the scalar is written on
    /// one line without escapes; otherwise the whole scalar.
    pub fn locate(&self, node: &Node, text: &str, offset: Option<usize>, length: usize) -> Span {
        let (Some(offset), true) = (offset, node.span.end_line == node.span.line) else {
            return node.span;
        };
        let (Some(before), Some(after)) = (text.get(..offset), text.get(offset..)) else {
            return node.span;
        };
        let Some(line) = self.source.lines().nth(node.span.line.saturating_sub(1)) else {
            return node.span;
        };
        let rest: String = line
            .chars()
            .skip(node.span.column.saturating_sub(1))
            .collect();
        let skip = if rest.starts_with(text) {
            0
        } else if (rest.starts_with('"') || rest.starts_with('\'')) && rest[1..].starts_with(text) {
            1
        } else {
            return node.span;
        };
        let column = node.span.column + skip + before.chars().count();
        let width = after.chars().take(length.max(1)).count().max(1);
        Span {
            line: node.span.line,
            column,
            end_line: node.span.line,
            end_column: column + width,
        }
    }

    /// A CEL expression written as a scalar.
    pub fn expr(&mut self, node: &Node, usage: Usage) -> Option<Expr> {
        let Some(text) = node.scalar_text() else {
            self.wrong_type(node, "an expression", "a CEL expression in a string");
            return None;
        };
        self.expr_in(node, &text, 0, text.len(), usage)
    }

    /// Compiles `text[start..end]` as CEL; positions are reported within `node`.
    fn expr_in(
        &mut self,
        node: &Node,
        text: &str,
        start: usize,
        end: usize,
        usage: Usage,
    ) -> Option<Expr> {
        let source = text.get(start..end).unwrap_or_default();
        let expr = match Expr::compile(source) {
            Ok(expr) => expr,
            Err(error) => {
                let at = error.offset.map(|o| start + o.min(source.len()));
                let span = self.locate(
                    node,
                    text,
                    at.or(Some(start)),
                    if at.is_some() { 1 } else { source.len() },
                );
                let position = match error.offset {
                    Some(o) => format!(
                        " (at character {} of `{}`)",
                        source.get(..o).unwrap_or(source).chars().count() + 1,
                        source.trim()
                    ),
                    None => String::new(),
                };
                self.error(
                    "invalid-expression",
                    span,
                    format!(
                        "CEL expression does not parse: {}{position}",
                        tidy_parse_message(&error.message)
                    ),
                    "CEL looks like `input.amount > 100 && data.routing.approver == 'cfo'`"
                        .to_string(),
                );
                return None;
            }
        };
        let mut ok = true;
        for variable in expr.variables() {
            if VARIABLES.contains(&variable.as_str())
                || self.extra_variables.contains(&variable.as_str())
            {
                continue;
            }
            ok = false;
            let offset = find_word(source, &variable).map(|o| start + o);
            let span = self.locate(node, text, offset, variable.len());
            let hint = if source.trim() == variable {
                format!("expressions can use {}; to write the text `{variable}`, quote it: \"'{variable}'\"", list(VARIABLES))
            } else {
                format!(
                    "expressions can use {}; did you mean `input.{variable}`?",
                    list(VARIABLES)
                )
            };
            self.error(
                "unknown-variable",
                span,
                format!("`{variable}` is not a variable expressions can use"),
                hint,
            );
        }
        if usage == Usage::Condition && expr.is_obviously_non_bool() {
            ok = false;
            let span = self.locate(node, text, Some(start), source.len());
            self.error(
                "not-bool",
                span,
                format!("this condition is never a bool: `{}`", source.trim()),
                "a condition must evaluate to true or false, e.g. `input.amount > 0`".to_string(),
            );
        }
        ok.then_some(expr)
    }

    /// A string with `${ cel }` holes.
    pub fn template(&mut self, node: &Node, what: &str) -> Option<Template> {
        let Some(text) = node.scalar_text() else {
            self.wrong_type(node, what, "a string");
            return None;
        };
        let parts = match template::split(&text) {
            Ok(parts) => parts,
            Err(error) => {
                let span = self.locate(node, &text, Some(error.offset), 2);
                self.error(
                    error.code,
                    span,
                    format!("{what}: {}", error.message),
                    "holes look like `${input.id}`; write `$${` for a literal `${`".to_string(),
                );
                return None;
            }
        };
        let mut compiled = Vec::new();
        let mut ok = true;
        for part in &parts {
            if let RawPart::Hole(source, offset) = part {
                match self.expr_in(node, &text, *offset, offset + source.len(), Usage::Value) {
                    Some(expr) => compiled.push(expr),
                    None => ok = false,
                }
            }
        }
        ok.then(|| template::assemble(parts, compiled))
    }

    /// A JSON value whose strings are templates; parts without holes stay literal JSON.
    pub fn json_template(&mut self, node: &Node, what: &str) -> Option<JsonTemplate> {
        match &node.value {
            Value::Str(_) => {
                let template = self.template(node, what)?;
                Some(match template.parts.as_slice() {
                    [] => JsonTemplate::Literal(serde_json::Value::String(String::new())),
                    [TemplatePart::Literal(text)] => {
                        JsonTemplate::Literal(serde_json::Value::String(text.clone()))
                    }
                    _ => JsonTemplate::String(template),
                })
            }
            Value::Seq(items) => {
                let items: Vec<Option<JsonTemplate>> = items
                    .iter()
                    .map(|item| self.json_template(item, what))
                    .collect();
                let items: Vec<JsonTemplate> = items.into_iter().collect::<Option<_>>()?;
                if items.iter().all(|i| matches!(i, JsonTemplate::Literal(_))) {
                    let values = items
                        .into_iter()
                        .filter_map(|i| match i {
                            JsonTemplate::Literal(v) => Some(v),
                            _ => None,
                        })
                        .collect();
                    return Some(JsonTemplate::Literal(serde_json::Value::Array(values)));
                }
                Some(JsonTemplate::Array(items))
            }
            Value::Map(entries) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (key, value) in entries {
                    let key = self.json_key(key);
                    let value = self.json_template(value, what);
                    match (key, value) {
                        (Some(k), Some(v)) => out.push((k, v)),
                        _ => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                if out
                    .iter()
                    .all(|(_, v)| matches!(v, JsonTemplate::Literal(_)))
                {
                    let mut object = serde_json::Map::new();
                    for (k, v) in out {
                        if let JsonTemplate::Literal(v) = v {
                            object.insert(k, v);
                        }
                    }
                    return Some(JsonTemplate::Literal(serde_json::Value::Object(object)));
                }
                Some(JsonTemplate::Object(out))
            }
            _ => self.json(node).map(JsonTemplate::Literal),
        }
    }

    fn json_key(&mut self, key: &Node) -> Option<String> {
        match &key.value {
            Value::Seq(_) | Value::Map(_) => {
                self.wrong_type(key, "a JSON object key", "a string");
                None
            }
            Value::Null => Some("null".to_string()),
            _ => key.scalar_text(),
        }
    }

    /// Plain JSON from YAML (schemas, decision outputs).
    pub fn json(&mut self, node: &Node) -> Option<serde_json::Value> {
        Some(match &node.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => serde_json::Value::Number(n),
                None => {
                    self.wrong_type(node, "a JSON number", "finite");
                    return None;
                }
            },
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                let items: Vec<Option<serde_json::Value>> =
                    items.iter().map(|i| self.json(i)).collect();
                serde_json::Value::Array(items.into_iter().collect::<Option<_>>()?)
            }
            Value::Map(entries) => {
                let mut object = serde_json::Map::new();
                let mut ok = true;
                for (key, value) in entries {
                    match (self.json_key(key), self.json(value)) {
                        (Some(k), Some(v)) => {
                            object.insert(k, v);
                        }
                        _ => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                serde_json::Value::Object(object)
            }
        })
    }

    /// An inline JSON Schema; meta-schema violations point at the offending YAML node.
    pub fn schema(&mut self, node: &Node) -> Option<Schema> {
        let json = self.json(node)?;
        let violations = Schema::meta_violations(&json);
        if !violations.is_empty() {
            for violation in violations {
                let at = node_at_pointer(node, &violation.path);
                let span = at.span;
                self.error(
                    "invalid-schema",
                    span,
                    format!("invalid JSON Schema: {}", violation.message),
                    "see https://json-schema.org/understanding-json-schema/ (draft 2020-12 unless `$schema` says otherwise)".to_string(),
                );
            }
            return None;
        }
        match Schema::compile(json) {
            Ok(schema) => Some(schema),
            Err(message) => {
                self.error(
                    "invalid-schema",
                    node.span,
                    format!("invalid JSON Schema: {message}"),
                    "see https://json-schema.org/understanding-json-schema/ (draft 2020-12 unless `$schema` says otherwise)".to_string(),
                );
                None
            }
        }
    }

    /// A JSON Schema read from a file relative to the workflow file.
    pub fn schema_file(&mut self, node: &Node) -> Option<Schema> {
        let relative = self.string(node, "`schema_file`")?;
        let text = match self.read_relative(&relative) {
            Ok(text) => text,
            Err(reason) => {
                self.error(
                    "schema-file",
                    node.span,
                    format!("cannot read schema file `{relative}`: {reason}"),
                    "the path is relative to the folder of the workflow file".to_string(),
                );
                return None;
            }
        };
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(json) => json,
            Err(error) => {
                self.error(
                    "invalid-schema",
                    node.span,
                    format!("schema file `{relative}` is not JSON: {error}"),
                    "a schema file holds one JSON document".to_string(),
                );
                return None;
            }
        };
        let problem = match Schema::meta_violations(&json).into_iter().next() {
            Some(violation) => Err(format!("{} (at `{}`)", violation.message, violation.path)),
            None => Schema::compile(json),
        };
        match problem {
            Ok(schema) => Some(schema),
            Err(message) => {
                self.error(
                    "invalid-schema",
                    node.span,
                    format!("schema file `{relative}` is not a valid JSON Schema: {message}"),
                    "see https://json-schema.org/understanding-json-schema/".to_string(),
                );
                None
            }
        }
    }

    fn read_relative(&self, relative: &str) -> Result<String, String> {
        let path = Path::new(relative);
        if path.is_absolute() {
            return Err("the path must be relative".to_string());
        }
        let Some(base) = self.base_dir else {
            return Err(
                "this workflow was not read from a file, so relative paths have no folder"
                    .to_string(),
            );
        };
        let full = base.join(path);
        let metadata = std::fs::metadata(&full).map_err(|e| error_text(&e))?;
        if metadata.len() > MAX_SCHEMA_FILE_BYTES {
            return Err(format!("it is larger than {MAX_SCHEMA_FILE_BYTES} bytes"));
        }
        std::fs::read_to_string(&full).map_err(|e| error_text(&e))
    }
}

/// The parser's messages list every token it expected; keep the part a person needs.
fn tidy_parse_message(message: &str) -> String {
    let message = message.strip_prefix("Syntax error: ").unwrap_or(message);
    if message.contains("'<EOF>'") {
        return "the expression ends too early".to_string();
    }
    match message.find(" expecting {") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}

fn error_text(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        _ => error.to_string(),
    }
}

/// The deepest node along a JSON pointer (`/properties/amount/type`).
fn node_at_pointer<'n>(root: &'n Node, pointer: &str) -> &'n Node {
    let mut node = root;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let child = match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(key, _)| key.scalar_text().as_deref() == Some(segment.as_str()))
                .map(|(_, value)| value),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match child {
            Some(child) => node = child,
            None => break,
        }
    }
    node
}

/// Byte offset of `word` as a whole identifier in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident)
    })
}
