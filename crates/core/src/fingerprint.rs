//! Exception fingerprints: exceptions that differ only in the data they mention (amounts, ids,
//! emails, URLs, timestamps, quoted values) share one fingerprint, so that a queue can group
//! them and a person can resolve a whole group at once.
//!
//! [`normalize_message`] turns a message into a template; [`fingerprint`] hashes the template
//! with the workflow, step and kind. The scanner is written by hand (no regex crate): one pass,
//! left to right; at each position the first rule that matches, in this order, replaces the
//! whole match with its placeholder:
//!
//! 1. timestamps and dates (RFC 3339 / ISO 8601: `2026-03-29`, `2026-03-29T10:00:00.5+02:00`,
//!    `2026-03-29 10:00`, and a time of day with seconds, `10:00:00`) → `<ts>`
//! 2. URLs (`scheme://…` up to whitespace, a quote, `<`, `>` or `\`; trailing `.,;:!?)]}` are
//!    left out) → `<url>`
//! 3. emails (`local@domain.tld`) → `<email>`
//! 4. UUIDs, and hex ids of at least 8 hex digits with at least one digit and one letter
//!    → `<id>`
//! 5. quoted values (`'…'`, `"…"`, `` `…` ``, `‘…’`, `“…”`) → `<q>`; a double-quoted string
//!    followed directly by `:` is a JSON key and is kept as it is
//! 6. numbers (`42`, `-3.5`, `1,250.00`, `1e-9`, `10.0.0.1`) → `<n>`; a unit written after a
//!    number stays (`30000ms` → `<n>ms`), and so do digits inside a word (`sha256`, `v2`).
//!
//! Rules 1–5 and a number's first digit only start where a word starts (not after a letter or
//! digit; a number also not after `.`, so `v1.2` stays), and rules 1, 3 and 4 only end where a
//! word ends, so `deadbeef1x` or a number inside `abc123` are not masked. A quote opens only
//! where a word starts and closes only before a character that is not a letter or digit, so
//! the apostrophe in `can't` opens nothing. JSON pointer segments that are words stay
//! (`/amount`), numeric ones are masked (`/lines/3` → `/lines/<n>`).
//!
//! Whitespace runs become one space; only the first [`MAX_MESSAGE_BYTES`] of a message are
//! read, and a template is at most [`MAX_MESSAGE_BYTES`] long (cut at a space).
//! `normalize_message(normalize_message(m)) == normalize_message(m)`: placeholders start with
//! `<`, which no rule accepts as the end of a match, and decisions look at the text already
//! written rather than the input, so a second pass sees the same boundaries as the first.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of a message that are read; the rest is ignored. Also the longest template.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Hex characters of a fingerprint id (64 bits of SHA-256).
pub const FINGERPRINT_ID_CHARS: usize = 16;

/// What groups exceptions: `id` is the first [`FINGERPRINT_ID_CHARS`] hex characters of the
/// SHA-256 of workflow, step, kind and template joined with NUL bytes; `template` is the
/// normalised message, to show people what the group has in common.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub id: String,
    pub template: String,
}

/// The fingerprint of an exception raised by `workflow` at `step` (`None` for the case as a
/// whole, hashed as an empty step name) of kind `kind` with `message`.
pub fn fingerprint(workflow: &str, step: Option<&str>, kind: &str, message: &str) -> Fingerprint {
    let template = normalize_message(message);
    let mut hasher = Sha256::new();
    let parts = [workflow, step.unwrap_or(""), kind, template.as_str()];
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    let mut id = hex::encode(hasher.finalize());
    id.truncate(FINGERPRINT_ID_CHARS);
    Fingerprint { id, template }
}

/// `message` with its data masked; see the module documentation for the rules.
pub fn normalize_message(message: &str) -> String {
    let read = prefix(message, MAX_MESSAGE_BYTES);
    let collapsed = read.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = collapsed.chars().collect();
    let mut scanner = Scanner {
        chars: &chars,
        output: String::with_capacity(collapsed.len()),
        closers: [None; QUOTES.len()],
    };
    scanner.run();
    let mut template = scanner.output;
    if template.len() > MAX_MESSAGE_BYTES {
        let cut = prefix(&template, MAX_MESSAGE_BYTES);
        let end = cut.rfind(' ').unwrap_or(cut.len());
        template.truncate(end);
    }
    template
}

/// The longest prefix of `text` of at most `max_bytes` that ends on a character boundary.
fn prefix(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Opening and closing characters of the quotes that rule 5 masks.
const QUOTES: [(char, char); 5] = [
    ('\'', '\''),
    ('"', '"'),
    ('`', '`'),
    ('\u{2018}', '\u{2019}'),
    ('\u{201C}', '\u{201D}'),
];

/// Characters before which a sign starts a number (`x = -5`, `(-5`), unlike `a-5` or `10-20`.
const BEFORE_SIGN: [char; 7] = [' ', '(', '[', '{', '=', ':', ','];

struct Scanner<'a> {
    chars: &'a [char],
    output: String,
    /// Per quote kind: the last search for a closing quote (searched from, found at), so that
    /// openers without a closer cost one scan in total, not one each.
    closers: [Option<(usize, Option<usize>)>; QUOTES.len()],
}

/// What replaces a match.
enum Replacement {
    Placeholder(&'static str),
    /// The match is copied as it is (a JSON key).
    Verbatim,
}

impl Scanner<'_> {
    fn run(&mut self) {
        let mut position = 0;
        while position < self.chars.len() {
            if let Some((end, replacement)) = self.token_at(position) {
                match replacement {
                    Replacement::Placeholder(placeholder) => self.output.push_str(placeholder),
                    Replacement::Verbatim => self.output.extend(&self.chars[position..end]),
                }
                position = end;
            } else if self.chars[position].is_alphanumeric() {
                let end = word_end(self.chars, position);
                self.output.extend(&self.chars[position..end]);
                position = end;
            } else {
                self.output.push(self.chars[position]);
                position += 1;
            }
        }
    }

    /// The rule that matches at `start`, in the documented order, and where its match ends.
    fn token_at(&mut self, start: usize) -> Option<(usize, Replacement)> {
        let chars = self.chars;
        let previous = self.output.chars().next_back();
        let word_start = !previous.is_some_and(char::is_alphanumeric);
        let first = chars[start];
        let placeholder =
            |end: Option<usize>, text| end.map(|end| (end, Replacement::Placeholder(text)));
        if word_start && first.is_alphanumeric() {
            let found = placeholder(timestamp_end(chars, start), "<ts>")
                .or_else(|| placeholder(url_end(chars, start), "<url>"))
                .or_else(|| placeholder(email_end(chars, start), "<email>"))
                .or_else(|| placeholder(uuid_end(chars, start), "<id>"))
                .or_else(|| placeholder(hex_id_end(chars, start), "<id>"));
            if found.is_some() {
                return found;
            }
        }
        if word_start {
            if let Some(quoted) = self.quoted_end(start) {
                return Some(quoted);
            }
        }
        let digit_start = word_start && previous != Some('.') && first.is_ascii_digit();
        let sign_start = matches!(first, '+' | '-')
            && is_digit(chars.get(start + 1))
            && previous.is_none_or(|previous| BEFORE_SIGN.contains(&previous));
        if digit_start || sign_start {
            return placeholder(Some(number_end(chars, start)), "<n>");
        }
        None
    }

    /// A quoted value opening at `start`: its end (after the closing quote) and replacement.
    fn quoted_end(&mut self, start: usize) -> Option<(usize, Replacement)> {
        let kind = QUOTES
            .iter()
            .position(|(open, _)| *open == self.chars[start])?;
        let close = self.closing_quote(kind, start + 1)?;
        let end = close + 1;
        if QUOTES[kind].0 == '"' && self.chars.get(end) == Some(&':') {
            return Some((end, Replacement::Verbatim));
        }
        Some((end, Replacement::Placeholder("<q>")))
    }

    /// The first closing quote of `kind` at or after `from`: not escaped with `\`, and not
    /// followed by a letter, digit or `<`.
    fn closing_quote(&mut self, kind: usize, from: usize) -> Option<usize> {
        if let Some((searched_from, found)) = self.closers[kind] {
            if searched_from <= from {
                match found {
                    None => return None,
                    Some(found) if found >= from => return Some(found),
                    Some(_) => {}
                }
            }
        }
        let chars = self.chars;
        let close = QUOTES[kind].1;
        let found = (from..chars.len()).find(|&index| {
            chars[index] == close
                && (index == 0 || chars[index - 1] != '\\')
                && !blocks(chars.get(index + 1))
        });
        self.closers[kind] = Some((from, found));
        found
    }
}

/// Whether a match may not end before `next`: a letter or digit would make it part of a
/// longer word, and `<` starts a placeholder that stood for one.
fn blocks(next: Option<&char>) -> bool {
    next.is_some_and(|next| next.is_alphanumeric() || *next == '<')
}

fn is_digit(character: Option<&char>) -> bool {
    character.is_some_and(char::is_ascii_digit)
}

fn word_end(chars: &[char], start: usize) -> usize {
    (start..chars.len())
        .find(|&index| !chars[index].is_alphanumeric())
        .unwrap_or(chars.len())
}

fn digits_end(chars: &[char], start: usize) -> usize {
    (start..chars.len())
        .find(|&index| !chars[index].is_ascii_digit())
        .unwrap_or(chars.len())
}

/// Whether exactly `count` digits start at `start` (more may follow).
fn digits_at(chars: &[char], start: usize, count: usize) -> bool {
    (start..start + count).all(|index| is_digit(chars.get(index)))
}

/// The value of the two digits at `start` (checked by the caller).
fn two_digits(chars: &[char], start: usize) -> u32 {
    let digit = |index: usize| chars[index].to_digit(10).unwrap_or(0);
    digit(start) * 10 + digit(start + 1)
}

fn timestamp_end(chars: &[char], start: usize) -> Option<usize> {
    let end = match date_end(chars, start) {
        Some(date) => {
            let separator = chars.get(date).copied();
            let time = matches!(separator, Some('T' | 't' | ' '))
                .then(|| clock_end(chars, date + 1, false))
                .flatten();
            time.map_or(date, |time| zone_end(chars, time))
        }
        None => zone_end(chars, clock_end(chars, start, true)?),
    };
    (!blocks(chars.get(end))).then_some(end)
}

/// `YYYY-MM-DD`.
fn date_end(chars: &[char], start: usize) -> Option<usize> {
    let shape = digits_at(chars, start, 4)
        && chars.get(start + 4) == Some(&'-')
        && digits_at(chars, start + 5, 2)
        && chars.get(start + 7) == Some(&'-')
        && digits_at(chars, start + 8, 2);
    let month = shape.then(|| two_digits(chars, start + 5))?;
    let day = two_digits(chars, start + 8);
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(start + 10)
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff`.
fn clock_end(chars: &[char], start: usize, seconds_required: bool) -> Option<usize> {
    let shape = digits_at(chars, start, 2)
        && chars.get(start + 2) == Some(&':')
        && digits_at(chars, start + 3, 2);
    let hour = shape.then(|| two_digits(chars, start))?;
    if hour > 24 || two_digits(chars, start + 3) > 59 {
        return None;
    }
    let mut end = start + 5;
    if chars.get(end) == Some(&':') && digits_at(chars, end + 1, 2) {
        end += 3;
        if matches!(chars.get(end), Some('.' | ',')) && is_digit(chars.get(end + 1)) {
            end = digits_end(chars, end + 1);
        }
    } else if seconds_required {
        return None;
    }
    Some(end)
}

/// A zone designator after a time: `Z`, `+02:00`, `+0200` or `+02`; `start` if none.
fn zone_end(chars: &[char], start: usize) -> usize {
    match chars.get(start) {
        Some('Z' | 'z') => start + 1,
        Some('+' | '-') if digits_at(chars, start + 1, 2) => {
            let minutes = start + 3;
            if chars.get(minutes) == Some(&':') && digits_at(chars, minutes + 1, 2) {
                minutes + 3
            } else if digits_at(chars, minutes, 2) {
                minutes + 2
            } else {
                minutes
            }
        }
        _ => start,
    }
}

fn url_end(chars: &[char], start: usize) -> Option<usize> {
    if !chars[start].is_ascii_alphabetic() {
        return None;
    }
    let scheme_end = (start..chars.len())
        .find(|&index| {
            !(chars[index].is_ascii_alphanumeric() || matches!(chars[index], '+' | '.' | '-'))
        })
        .unwrap_or(chars.len());
    let separator = chars.get(scheme_end..scheme_end + 3)?;
    if separator != [':', '/', '/'] {
        return None;
    }
    let rest = scheme_end + 3;
    let stops = |character: char| {
        character.is_whitespace()
            || matches!(character, '<' | '>' | '\\')
            || QUOTES
                .iter()
                .any(|(open, close)| character == *open || character == *close)
    };
    let mut end = (rest..chars.len())
        .find(|&index| stops(chars[index]))
        .unwrap_or(chars.len());
    while end > rest
        && matches!(
            chars[end - 1],
            '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}'
        )
    {
        end -= 1;
    }
    (end > rest).then_some(end)
}

fn email_end(chars: &[char], start: usize) -> Option<usize> {
    let is_local = |character: char| {
        character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '%' | '+' | '-')
    };
    let at = (start..chars.len())
        .find(|&index| !is_local(chars[index]))
        .filter(|&index| index > start && chars[index] == '@')?;
    let is_domain =
        |character: char| character.is_ascii_alphanumeric() || matches!(character, '.' | '-');
    let domain_start = at + 1;
    let run_end = (domain_start..chars.len())
        .find(|&index| !is_domain(chars[index]))
        .unwrap_or(chars.len());
    if blocks(chars.get(run_end)) {
        return None;
    }
    let mut end = run_end;
    while end > domain_start && matches!(chars[end - 1], '.' | '-') {
        end -= 1;
    }
    let domain: String = chars[domain_start..end].iter().collect();
    let labels: Vec<&str> = domain.split('.').collect();
    let top_level = labels.last()?;
    let valid = labels.len() >= 2
        && labels.iter().all(|label| !label.is_empty())
        && top_level.len() >= 2
        && top_level.bytes().all(|byte| byte.is_ascii_alphabetic());
    valid.then_some(end)
}

/// `8-4-4-4-12` hex digits.
fn uuid_end(chars: &[char], start: usize) -> Option<usize> {
    let mut index = start;
    for (group, length) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if group > 0 {
            if chars.get(index) != Some(&'-') {
                return None;
            }
            index += 1;
        }
        let hex =
            (index..index + length).all(|at| chars.get(at).is_some_and(char::is_ascii_hexdigit));
        if !hex {
            return None;
        }
        index += length;
    }
    (!blocks(chars.get(index))).then_some(index)
}

/// At least 8 hex digits, with a digit and a letter among them (so neither `deadbeef` nor a
/// plain number), as a whole word.
fn hex_id_end(chars: &[char], start: usize) -> Option<usize> {
    let end = (start..chars.len())
        .find(|&index| !chars[index].is_ascii_hexdigit())
        .unwrap_or(chars.len());
    let run = &chars[start..end];
    let valid = run.len() >= 8
        && run.iter().any(char::is_ascii_digit)
        && run.iter().any(char::is_ascii_alphabetic)
        && !blocks(chars.get(end));
    valid.then_some(end)
}

/// A number starting at `start` (a sign or a digit, checked by the caller): digits, `,`
/// thousands groups, `.` fractions (repeated, so versions and IPv4 addresses count as one
/// number) and an exponent.
fn number_end(chars: &[char], start: usize) -> usize {
    let first_digit = if chars[start].is_ascii_digit() {
        start
    } else {
        start + 1
    };
    let mut end = digits_end(chars, first_digit);
    loop {
        let next = chars.get(end).copied();
        if next == Some(',') && digits_at(chars, end + 1, 3) && !is_digit(chars.get(end + 4)) {
            end += 4;
        } else if next == Some('.') && is_digit(chars.get(end + 1)) {
            end = digits_end(chars, end + 1);
        } else {
            break;
        }
    }
    if matches!(chars.get(end), Some('e' | 'E')) {
        let sign = usize::from(matches!(chars.get(end + 1), Some('+' | '-')));
        let exponent = end + 1 + sign;
        if is_digit(chars.get(exponent)) {
            end = digits_end(chars, exponent);
        }
    }
    end
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(message: &str, template: &str) {
        assert_eq!(
            normalize_message(message),
            template,
            "normalising {message:?}"
        );
    }

    #[test]
    fn real_messages_become_templates() {
        check(
            "HTTP 500 from https://erp.example.com/api/v2/invoices/INV-2024-0042?expand=lines: Internal Server Error",
            "HTTP <n> from <url>: Internal Server Error",
        );
        check(
            "schema violation at /amount: -12.50 is less than the minimum of 0",
            "schema violation at /amount: <n> is less than the minimum of <n>",
        );
        check(
            "schema violation at /lines/3/quantity: \"three\" is not of type \"integer\"",
            "schema violation at /lines/<n>/quantity: <q> is not of type <q>",
        );
        check(
            "budget exhausted: daily limit USD 50.00 reached (spent USD 1,250.75 on 2026-03-29)",
            "budget exhausted: daily limit USD <n> reached (spent USD <n> on <ts>)",
        );
        check("timeout after 30000 ms", "timeout after <n> ms");
        check(
            "request timed out after 30000ms (attempt 3/5)",
            "request timed out after <n>ms (attempt <n>/<n>)",
        );
        check(
            "customer jane.doe+billing@example.co.uk not found in tenant 3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f",
            "customer <email> not found in tenant <id>",
        );
        check(
            "duplicate invoice 'INV-2024-0042' (idempotency key 9f86d081884c7d65) at 2026-03-29T10:15:30.123+02:00",
            "duplicate invoice <q> (idempotency key <id>) at <ts>",
        );
        check(
            "CEL error in `input.amount > limit`: no such key: limit",
            "CEL error in <q>: no such key: limit",
        );
        check(
            "model gpt-4o-mini refused: rate limit, retry after 2.5s (x-request-id: req_8f3k2)",
            "model gpt-<n>o-mini refused: rate limit, retry after <n>s (x-request-id: req_<n>f3k2)",
        );
        check(
            "can't reach the ledger at postgres://keel@10.0.0.5:5432/keel; the user's password was rejected",
            "can't reach the ledger at <url>; the user's password was rejected",
        );
        check(
            "response body {\"error\":{\"code\":402,\"message\":\"Payment Required\"}}",
            "response body {\"error\":{\"code\":<n>,\"message\":<q>}}",
        );
        check(
            "connection reset by 10.0.0.5 after\n\n  12:03:55 (sha256 v1.2 utf8)",
            "connection reset by <n> after <ts> (sha256 v1.2 utf8)",
        );
        check(
            "balance 1e-9 below x = -5 and 10-20",
            "balance <n> below x = <n> and <n>-<n>",
        );
        check(
            "deadbeef and deadbeef1x and abc123 and 0xff",
            "deadbeef and deadbeef1x and abc123 and <n>xff",
        );
    }

    #[test]
    fn messages_that_differ_only_in_data_share_a_fingerprint() {
        let pairs = [
            (
                "payment of EUR 1,200.00 for order 4711 failed at 2026-01-05T09:00:00Z",
                "payment of EUR 37.5 for order 12 failed at 2027-11-30T23:59:59.999-05:00",
            ),
            (
                "GET https://api.example.com/v1/customers/42 returned 503",
                "GET http://localhost:8080/health returned 502",
            ),
            (
                "no account for ann@example.com (trace 0af7651916cd43dd8448eb211c80319c)",
                "no account for bob.smith@mail.example.org (trace 4bf92f3577b34da6a3ce929d0e0e4736)",
            ),
            ("unknown currency 'XTS'", "unknown currency \"ABCDEF\""),
        ];
        for (first, second) in pairs {
            let first = fingerprint("invoice", Some("pay"), "action_failed", first);
            let second = fingerprint("invoice", Some("pay"), "action_failed", second);
            assert_eq!(first, second);
            assert_eq!(first.id.len(), FINGERPRINT_ID_CHARS);
        }
    }

    #[test]
    fn different_wording_or_context_gives_a_different_fingerprint() {
        let base = fingerprint(
            "invoice",
            Some("pay"),
            "action_failed",
            "card declined for 5 EUR",
        );
        let others = [
            fingerprint(
                "invoice",
                Some("pay"),
                "action_failed",
                "card expired for 5 EUR",
            ),
            fingerprint(
                "invoice",
                Some("ship"),
                "action_failed",
                "card declined for 5 EUR",
            ),
            fingerprint("invoice", None, "action_failed", "card declined for 5 EUR"),
            fingerprint(
                "refund",
                Some("pay"),
                "action_failed",
                "card declined for 5 EUR",
            ),
            fingerprint(
                "invoice",
                Some("pay"),
                "ai_failed",
                "card declined for 5 EUR",
            ),
        ];
        for other in others {
            assert_ne!(base.id, other.id, "{other:?}");
        }
        // The parts are separated, so moving text from one to the next changes the id.
        let joined = fingerprint("ab", Some("c"), "kind", "m");
        let moved = fingerprint("a", Some("bc"), "kind", "m");
        assert_ne!(joined.id, moved.id);
    }

    #[test]
    fn the_id_is_the_start_of_the_sha256_of_the_parts() {
        let found = fingerprint("w", Some("s"), "k", "x 5");
        let expected = hex::encode(Sha256::digest(b"w\0s\0k\0x <n>"));
        assert_eq!(found.id, expected[..FINGERPRINT_ID_CHARS]);
        assert_eq!(found.template, "x <n>");
    }

    #[test]
    fn long_messages_are_bounded() {
        let long = "7 ".repeat(10_000);
        let template = normalize_message(&long);
        assert!(template.len() <= MAX_MESSAGE_BYTES, "{}", template.len());
        assert!(template.ends_with("<n>"));
        assert_eq!(normalize_message(&template), template);
        let wide = "é".repeat(5_000);
        assert!(normalize_message(&wide).len() <= MAX_MESSAGE_BYTES);
    }

    /// Pieces that put the rules next to each other in awkward ways.
    fn fragment() -> impl Strategy<Value = String> {
        let pieces = [
            " ",
            "  ",
            "\n",
            "a",
            "Z",
            "é",
            "5",
            "42",
            "-",
            "+",
            ".",
            ",",
            ":",
            "/",
            "@",
            "'",
            "\"",
            "`",
            "\u{2019}",
            "\\",
            "<",
            ">",
            "(",
            ")",
            "=",
            "e",
            "x",
            "_",
            "2026-03-29",
            "T10:00:00",
            "10:00:00",
            "Z",
            "+02:00",
            "https://",
            "http://x.io/a",
            "bob",
            "@b.com",
            "example.org",
            "deadbeef",
            "0af76519",
            "3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f",
            "1,250",
            ".75",
            "ms",
            "<n>",
            "<q>",
            "can't",
            "\"key\":",
            "a@b.com-5",
            "'abc'deadbeef1",
            "http://x\\'",
            "1e",
            "9f86d081884c7d65",
            "\u{201C}",
            "\u{201D}",
            "%",
            "?",
            "#",
            "0x",
        ];
        proptest::sample::select(pieces.to_vec()).prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn normalising_twice_changes_nothing(pieces in proptest::collection::vec(fragment(), 0..64)) {
            let message = pieces.concat();
            let once = normalize_message(&message);
            prop_assert_eq!(normalize_message(&once), once.clone(), "message {:?}", message);
        }

        #[test]
        fn normalising_arbitrary_text_is_idempotent_and_bounded(message in any::<String>()) {
            let once = normalize_message(&message);
            prop_assert!(once.len() <= MAX_MESSAGE_BYTES);
            prop_assert_eq!(normalize_message(&once), once);
        }
    }
}
