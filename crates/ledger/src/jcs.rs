//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! One JSON value has exactly one canonical byte form: no whitespace, object members sorted by
//! the UTF-16 code units of their names, numbers formatted the way ECMAScript's
//! `Number.prototype.toString` does (through `ryu-js`), strings with the minimal escaping of
//! `JSON.stringify`. Leaf hashes and `data_sha256` are computed over these bytes, so any change
//! here changes every hash in every ledger: the tests pin the RFC's examples.
//!
//! The writers are generic over [`Sink`] so that the entry envelope can be streamed straight
//! into SHA-256 without an intermediate buffer.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Where canonical bytes go: a buffer or a running hash.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// Returns the RFC 8785 canonical form of `value`.
pub fn canonicalize(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

/// Appends the RFC 8785 canonical form of `value` to `out` (reuse `out` to avoid allocating).
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    write_value(out, value);
}

pub(crate) fn write_value<S: Sink>(out: &mut S, value: &Value) {
    match value {
        Value::Null => out.put(b"null"),
        Value::Bool(true) => out.put(b"true"),
        Value::Bool(false) => out.put(b"false"),
        Value::Number(number) => write_json_number(out, number),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.put(b"[");
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.put(b",");
                }
                write_value(out, item);
            }
            out.put(b"]");
        }
        Value::Object(members) => write_object(out, members),
    }
}

fn write_object<S: Sink>(out: &mut S, members: &Map<String, Value>) {
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    sorted.sort_by(|(left, _), (right, _)| compare_utf16(left, right));
    out.put(b"{");
    for (position, (name, member)) in sorted.into_iter().enumerate() {
        if position > 0 {
            out.put(b",");
        }
        write_string(out, name);
        out.put(b":");
        write_value(out, member);
    }
    out.put(b"}");
}

/// Orders member names by their UTF-16 code units, as RFC 8785 §3.2.3 requires.
fn compare_utf16(left: &str, right: &str) -> std::cmp::Ordering {
    // UTF-8 byte order equals code point order, which equals UTF-16 order for ASCII.
    if left.is_ascii() && right.is_ascii() {
        return left.cmp(right);
    }
    left.encode_utf16().cmp(right.encode_utf16())
}

fn write_json_number<S: Sink>(out: &mut S, number: &Number) {
    // Without serde_json's `arbitrary_precision` every number converts; JSON numbers are IEEE
    // doubles for JCS, so large integers round exactly as JavaScript would round them.
    match number.as_f64() {
        Some(float) if float.is_finite() => write_number(out, float),
        _ => out.put(number.to_string().as_bytes()),
    }
}

/// Writes a finite double in ECMAScript `Number.prototype.toString` form (`-0` becomes `0`).
pub(crate) fn write_number<S: Sink>(out: &mut S, float: f64) {
    if float == 0.0 {
        out.put(b"0");
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    out.put(buffer.format_finite(float).as_bytes());
}

/// Writes an integer exactly as [`write_number`] would write `integer as f64`.
pub(crate) fn write_integer<S: Sink>(out: &mut S, integer: i64) {
    const EXACT_LIMIT: u64 = 1 << 53;
    if integer.unsigned_abs() > EXACT_LIMIT {
        #[allow(clippy::cast_precision_loss)] // JCS numbers are doubles: rounding is the rule.
        write_number(out, integer as f64);
        return;
    }
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = integer.unsigned_abs();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if integer < 0 {
        out.put(b"-");
    }
    out.put(&digits[start..]);
}

/// Writes a JSON string with RFC 8785 §3.2.2.2 escaping: `"` and `\` escaped, control
/// characters as `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else verbatim UTF-8.
pub(crate) fn write_string<S: Sink>(out: &mut S, text: &str) {
    out.put(b"\"");
    let bytes = text.as_bytes();
    let mut run_start = 0;
    for (position, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.put(&bytes[run_start..position]);
        run_start = position + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let unicode = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0x0f)],
            ];
            out.put(&unicode);
        } else {
            out.put(escape);
        }
    }
    out.put(&bytes[run_start..]);
    out.put(b"\"");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: &str, expected: &str) {
        let value: Value = serde_json::from_str(input).unwrap();
        let actual = String::from_utf8(canonicalize(&value)).unwrap();
        assert_eq!(actual, expected, "input: {input}");
    }

    #[test]
    fn numbers_use_ecmascript_formatting() {
        check("1e21", "1e+21");
        check("1E21", "1e+21");
        check("1e20", "100000000000000000000");
        check("1e-7", "1e-7");
        check("0.000001", "0.000001");
        check("-0", "0");
        check("-0.0", "0");
        check("0.0", "0");
        check("4.50", "4.5");
        check("333333333.33333329", "333333333.3333333");
        check("2e-3", "0.002");
        check("1.0", "1");
        check("-1.5", "-1.5");
        check("9007199254740993", "9007199254740992");
        check("18446744073709551615", "18446744073709552000");
        check("-9223372036854775808", "-9223372036854776000");
        check("5e-324", "5e-324");
        check("1.7976931348623157e308", "1.7976931348623157e+308");
        check("0.1", "0.1");
        check("123456789012345680000", "123456789012345680000");
    }

    #[test]
    fn integers_match_the_double_path() {
        for integer in [
            0,
            1,
            -1,
            42,
            (1 << 53) - 1,
            1 << 53,
            (1 << 53) + 1,
            -(1 << 53) - 1,
            i64::MAX,
            i64::MIN,
            1_000_000_000_000_000_000,
        ] {
            let mut direct = Vec::new();
            write_integer(&mut direct, integer);
            assert_eq!(direct, canonicalize(&json!(integer)), "{integer}");
        }
    }

    #[test]
    fn rfc8785_section_3_2_2_example() {
        // The example of RFC 8785 §3.2.2 (numbers, escapes, literals).
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        check(
            input,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#,
        );
    }

    #[test]
    fn rfc8785_section_3_2_3_sorting_example() {
        // RFC 8785 §3.2.3: members sorted by UTF-16 code units, not by UTF-8 bytes.
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        let canonical = String::from_utf8(canonicalize(&value)).unwrap();
        let expected_order = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ];
        let mut last = 0;
        for name in expected_order {
            let position = canonical.find(name).unwrap();
            assert!(position >= last, "{name} out of order in {canonical}");
            last = position;
        }
        assert!(canonical.starts_with(r#"{"\r":"Carriage Return","1":"One","#));
    }

    #[test]
    fn control_characters_are_escaped() {
        check(
            r#""\u0000\u0001\u0008\u0009\u000a\u000b\u000c\u000d\u001f\u007f""#,
            "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\u{7f}\"",
        );
        check(r#""\u2028 é 😀""#, "\"\u{2028} é 😀\"");
        check(r#""a/b""#, r#""a/b""#);
    }

    #[test]
    fn nested_structures_have_no_whitespace() {
        check(
            r#" { "b" : [ 1 , { "d" : {}, "c" : [] } ], "a" : "x" } "#,
            r#"{"a":"x","b":[1,{"c":[],"d":{}}]}"#,
        );
        check("[]", "[]");
        check("{}", "{}");
    }
}
