//! Diagnostics: what `keel check` prints, with stable codes and compiler-like rendering.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A region of the source: 1-based lines and columns (columns count characters); the end is
/// exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Span {
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

impl Span {
    pub fn point(line: usize, column: usize) -> Span {
        Span {
            line,
            column,
            end_line: line,
            end_column: column + 1,
        }
    }
}

/// One problem found in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable identifier of the kind of problem, e.g. `unknown-field`.
    pub code: &'static str,
    pub message: String,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub end_line: usize,
    /// Exclusive.
    pub end_column: usize,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(
        severity: Severity,
        code: &'static str,
        file: &str,
        span: Span,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            code,
            message,
            file: file.to_string(),
            line: span.line,
            column: span.column,
            end_line: span.end_line,
            end_column: span.end_column,
            hint,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders like a compiler:
    ///
    /// ```text
    /// error[unknown-field]: unknown field `nxt` in step `pay`
    ///   --> invoice.yaml:12:5
    ///    |
    /// 12 |     nxt: done
    ///    |     ^^^
    ///    = hint: did you mean `next`?
    /// ```
    pub fn render(&self, source: &str) -> String {
        let gutter = self.line.max(1).to_string().len();
        let pad = " ".repeat(gutter);
        let mut out = format!(
            "{}[{}]: {}\n{pad}--> {}:{}:{}\n",
            self.severity.as_str(),
            self.code,
            self.message,
            self.file,
            self.line,
            self.column
        );
        let text = if self.line >= 1 {
            source.lines().nth(self.line - 1)
        } else {
            None
        };
        if let Some(text) = text {
            let text = text.trim_end();
            let prefix: String = text
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let available = text
                .chars()
                .count()
                .saturating_sub(self.column.saturating_sub(1));
            let wanted = if self.end_line == self.line && self.end_column > self.column {
                self.end_column - self.column
            } else {
                available
            };
            let carets = "^".repeat(wanted.min(available).max(1));
            out.push_str(&format!(
                "{pad} |\n{} | {text}\n{pad} | {prefix}{carets}\n",
                self.line
            ));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {hint}\n"));
        }
        out
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current[j + 1] = (previous[j] + cost)
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The closest candidate within a small edit distance, for "did you mean" hints.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let source = "steps:\n  - id: pay\n    nxt: done\n";
        let d = Diagnostic::new(
            Severity::Error,
            "unknown-field",
            "w.yaml",
            Span {
                line: 3,
                column: 5,
                end_line: 3,
                end_column: 8,
            },
            "unknown field `nxt`".to_string(),
            Some("did you mean `next`?".to_string()),
        );
        assert_eq!(
            d.render(source),
            "error[unknown-field]: unknown field `nxt`\n --> w.yaml:3:5\n  |\n3 |     nxt: done\n  |     ^^^\n  = hint: did you mean `next`?\n"
        );
    }

    #[test]
    fn suggests_close_names() {
        assert_eq!(closest("nxt", ["next", "id", "sla"]), Some("next"));
        assert_eq!(closest("actoin", ["action", "switch"]), Some("action"));
        assert_eq!(closest("zzzzzz", ["action", "switch"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
