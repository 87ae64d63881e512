//! The one table renderer of the CLI: every listing command builds a [`Table`] and prints it,
//! so columns are sized from the data (a value wider than its header widens the column instead
//! of pushing the rest of the row out of line) and text from the server cannot move the cursor
//! or clear the terminal (control characters are shown escaped).

use std::fmt::Write as _;

/// How a column's cells line up: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table of text cells with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

/// Space between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers; a header that starts with `>` is right-aligned
    /// (the `>` is not shown), as numbers are.
    pub fn new(headers: &[&str]) -> Self {
        let columns = headers
            .iter()
            .map(|header| match header.strip_prefix('>') {
                Some(rest) => (rest.to_string(), Align::Right),
                None => (header.to_string(), Align::Left),
            })
            .collect();
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty and extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(|cell| printable(cell.as_ref()))
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// The table as lines of text; no line ends in spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                let header = width(&self.columns[i].0);
                let cells = self.rows.iter().map(|row| width(&row[i]));
                cells.fold(header, usize::max)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<&str> = self.columns.iter().map(|(h, _)| h.as_str()).collect();
        self.line(&mut out, &header, &widths);
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            self.line(&mut out, &cells, &widths);
        }
        out
    }

    fn line(&self, out: &mut String, cells: &[&str], widths: &[usize]) {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            let pad = widths[i].saturating_sub(width(cell));
            match self.columns[i].1 {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Display width of a cell: one column per character (the CLI's data is ASCII-heavy; wide
/// characters may still misalign by their extra width, never by a whole value).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// The cell as it may be shown on a terminal: control characters (newlines, escapes) escaped.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value as a cell: strings without quotes, null as `-`, anything else as JSON.
pub fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    #[test]
    fn columns_grow_to_the_widest_value_and_numbers_align_right() {
        let mut table = Table::new(&["NAME", ">COUNT", "NOTE"]);
        table.row(["a-much-longer-name-than-the-header", "7", "x"]);
        table.row(["b", "12345678", ""]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME                                   COUNT  NOTE",
                "a-much-longer-name-than-the-header         7  x",
                "b                                   12345678",
            ]
        );
    }

    #[test]
    fn every_row_has_its_columns_at_the_same_offsets() {
        let mut table = Table::new(&["ID", "ROLES", "STATE"]);
        table.row(["tok_1", "admin,operator,governor,auditor", "active"]);
        table.row(["tok_22", "gateway", "revoked"]);
        let text = table.render();
        let offsets: Vec<usize> = text
            .lines()
            .map(|l| {
                l.find("STATE")
                    .or_else(|| l.find("active"))
                    .or_else(|| l.find("revoked"))
                    .unwrap()
            })
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn control_characters_are_escaped_and_short_rows_padded() {
        let mut table = Table::new(&["A", "B"]);
        table.row(["line\nbreak\u{1b}[2J"]);
        let text = table.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("line\\nbreak\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn cells_from_json() {
        assert_eq!(cell(&serde_json::json!(null)), "-");
        assert_eq!(cell(&serde_json::json!("x")), "x");
        assert_eq!(cell(&serde_json::json!(1.5)), "1.5");
    }
}
