//! A small positioned YAML tree built from saphyr's marked nodes: every node knows its line
//! and column, mapping keys included, so diagnostics can point at what the author wrote.

use std::panic::{catch_unwind, AssertUnwindSafe};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::diagnostic::Span;

/// Nesting bound; deeper documents are rejected rather than risking the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub value: Value,
    /// Where the node starts and ends (for collections written over several lines, only the
    /// first character).
    pub span: Span,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a scalar as a string: strings as they are, numbers and bools printed.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }
}

/// A document that does not load: where and why.
#[derive(Debug)]
pub(crate) struct LoadError {
    pub span: Span,
    pub message: String,
}

pub(crate) fn load(source: &str) -> Result<Node, LoadError> {
    let loaded = catch_unwind(AssertUnwindSafe(|| MarkedYaml::load_from_str(source)));
    let documents = match loaded {
        Ok(Ok(documents)) => documents,
        Ok(Err(error)) => {
            let mark = error.marker();
            return Err(LoadError {
                span: Span::point(mark.line().max(1), mark.col() + 1),
                message: error.info().to_string(),
            });
        }
        Err(_) => {
            return Err(LoadError {
                span: Span::point(1, 1),
                message: "the YAML parser failed on this file".to_string(),
            })
        }
    };
    let mut documents = documents.into_iter();
    let Some(first) = documents.next() else {
        return Err(LoadError {
            span: Span::point(1, 1),
            message: "the file is empty".to_string(),
        });
    };
    if let Some(second) = documents.next() {
        return Err(LoadError {
            span: span_of(&second),
            message: "a workflow file holds one YAML document, this is a second one".to_string(),
        });
    }
    if matches!(first.data, YamlData::BadValue) {
        return Err(LoadError {
            span: Span::point(1, 1),
            message: "the file is empty".to_string(),
        });
    }
    convert(&first, 0)
}

fn span_of(node: &MarkedYaml<'_>) -> Span {
    let start = node.span.start;
    let end = node.span.end;
    let line = start.line().max(1);
    let column = start.col() + 1;
    let collection = matches!(node.data, YamlData::Sequence(_) | YamlData::Mapping(_));
    if end.line() == start.line() && end.col() > start.col() && !(collection && end.index() == 0) {
        Span {
            line,
            column,
            end_line: line,
            end_column: end.col() + 1,
        }
    } else {
        Span::point(line, column)
    }
}

fn convert(node: &MarkedYaml<'_>, depth: usize) -> Result<Node, LoadError> {
    let span = span_of(node);
    if depth > MAX_DEPTH {
        return Err(LoadError {
            span,
            message: format!("nested more than {MAX_DEPTH} levels deep"),
        });
    }
    let value = match &node.data {
        YamlData::Value(scalar) => match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::Int(*i),
            Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
            Scalar::String(s) => Value::Str(s.to_string()),
        },
        YamlData::Representation(text, _, _) => Value::Str(text.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|item| convert(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((convert(k, depth + 1)?, convert(v, depth + 1)?)))
                .collect::<Result<_, LoadError>>()?,
        ),
        YamlData::Tagged(_, inner) => return convert(inner, depth + 1),
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(LoadError {
                span,
                message: "this value cannot be read (bad tag or unresolved alias)".to_string(),
            })
        }
    };
    Ok(Node { value, span })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let node = load("a: 1\nb:\n  - 'x y'\n  - {c: true}\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        assert_eq!(
            entries[1].0.span,
            Span {
                line: 2,
                column: 1,
                end_line: 2,
                end_column: 2
            }
        );
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(items[0].span.line, 3);
        assert_eq!(items[0].span.column, 5);
        assert_eq!(items[0].as_str(), Some("x y"));
        assert_eq!(items[1].span.column, 5);
    }

    #[test]
    fn reports_syntax_errors_with_a_position() {
        let error = load("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.span.line >= 1, "{error:?}");
        assert!(load("").is_err());
        assert!(load("a: 1\n---\nb: 2\n").is_err());
        assert!(load("a: 1\na: 2\n").is_err());
    }
}
