//! CEL over arbitrary JSON: an expression (the text before the first NUL byte) is compiled and
//! evaluated, as a value and as a condition, with `input` and `data` taken from the JSON after
//! it. Any outcome is fine except a crash, a hang or unbounded memory.
#![no_main]

use keel_core::expr::{Activation, Expr};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|bytes: &[u8]| {
    let (source, json) = match bytes.iter().position(|&b| b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &b""[..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let Ok(expr) = Expr::compile(source) else {
        return;
    };
    let _ = expr.variables();
    let _ = expr.is_obviously_non_bool();
    let value: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    let (input, data) = match &value {
        Value::Object(members) if members.contains_key("input") || members.contains_key("data") => {
            (
                members.get("input").cloned().unwrap_or(Value::Null),
                members.get("data").cloned().unwrap_or(Value::Null),
            )
        }
        _ => (value.clone(), value.clone()),
    };
    let now = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default();
    let activation = Activation::new(&input, &data, &json!({"id": "case-1"}), now);
    if let Ok(result) = expr.eval(&activation) {
        // A result is plain JSON: it must print and parse back.
        let text = result.to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
    }
    let _ = expr.eval_bool(&activation);
});
