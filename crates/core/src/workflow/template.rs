//! String templates: literal text with `${ cel }` holes. `$${` writes a literal `${`.
//!
//! The end of a hole is the first `}` outside CEL string literals and outside nested braces,
//! so `${ {'a': 1}['a'] }` and `${ input.note + '}' }` both work.

use crate::expr::Expr;

use super::model::{Template, TemplatePart};

/// A piece of a template before its holes are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawPart {
    Literal(String),
    /// The expression text and its byte offset in the template.
    Hole(String, usize),
}

/// A template that does not split into text and holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitError {
    pub message: String,
    /// Byte offset of the problem in the template.
    pub offset: usize,
    pub code: &'static str,
}

pub(crate) fn split(text: &str) -> Result<Vec<RawPart>, SplitError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(escaped) = after.strip_prefix("$${") {
            literal.push_str("${");
            offset += dollar + 3;
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let hole_start = offset + dollar;
            let Some(length) = hole_length(body) else {
                return Err(SplitError {
                    message: "`${` is never closed by a `}`".to_string(),
                    offset: hole_start,
                    code: "unclosed-hole",
                });
            };
            if body[..length].trim().is_empty() {
                return Err(SplitError {
                    message: "`${}` holds no expression".to_string(),
                    offset: hole_start,
                    code: "invalid-template",
                });
            }
            if !literal.is_empty() {
                parts.push(RawPart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(RawPart::Hole(body[..length].to_string(), hole_start + 2));
            offset = hole_start + 2 + length + 1;
            rest = &body[length + 1..];
        } else {
            literal.push('$');
            offset += dollar + 1;
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(RawPart::Literal(literal));
    }
    Ok(parts)
}

/// Byte length of a hole's body up to (not including) its closing `}`.
fn hole_length(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (index, c) in body.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Builds the model's template from parts whose holes compiled.
pub(crate) fn assemble(parts: Vec<RawPart>, compiled: Vec<Expr>) -> Template {
    let mut holes = compiled.into_iter();
    let parts = parts
        .into_iter()
        .filter_map(|part| match part {
            RawPart::Literal(text) => Some(TemplatePart::Literal(text)),
            RawPart::Hole(..) => holes.next().map(TemplatePart::Hole),
        })
        .collect();
    Template { parts }
}

impl Template {
    /// The literal text with every hole removed (what the URL check looks at).
    pub fn literal_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Literal(text) => Some(text.as_str()),
                TemplatePart::Hole(_) => None,
            })
            .collect()
    }

    /// True when the template is exactly one hole: its value keeps its JSON type.
    pub fn single_hole(&self) -> Option<&Expr> {
        match self.parts.as_slice() {
            [TemplatePart::Hole(expr)] => Some(expr),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn hole(text: &str, at: usize) -> RawPart {
        RawPart::Hole(text.to_string(), at)
    }

    fn lit(text: &str) -> RawPart {
        RawPart::Literal(text.to_string())
    }

    #[test]
    fn splits_text_and_holes() {
        assert_eq!(split("plain").unwrap(), vec![lit("plain")]);
        assert_eq!(
            split("http://x/${input.id}/y").unwrap(),
            vec![lit("http://x/"), hole("input.id", 11), lit("/y")]
        );
        assert_eq!(
            split("${ a }${b}").unwrap(),
            vec![hole(" a ", 2), hole("b", 8)]
        );
        assert_eq!(split("$5 and $${x}").unwrap(), vec![lit("$5 and ${x}")]);
        assert_eq!(
            split("${ {'a': '}'}['a'] }!").unwrap(),
            vec![hole(" {'a': '}'}['a'] ", 2), lit("!")]
        );
    }

    #[test]
    fn reports_unclosed_and_empty_holes() {
        let error = split("abc ${input.id").unwrap_err();
        assert_eq!((error.code, error.offset), ("unclosed-hole", 4));
        assert_eq!(split("${  }").unwrap_err().code, "invalid-template");
        assert_eq!(split("${'}").unwrap_err().code, "unclosed-hole");
    }
}
