//! CEL expressions: compile once at parse time, evaluate many times against an [`Activation`].
//!
//! Expressions see four variables ([`VARIABLES`]): `input` (the case input), `data` (values the
//! steps computed so far), `case` (case metadata such as its id) and `now` (a CEL timestamp,
//! passed in by the caller: this module never reads a clock).
//!
//! JSON → CEL: integers become `int` (`uint` beyond `i64::MAX`), other numbers `double`, objects
//! maps with string keys. CEL → JSON: timestamps become RFC 3339 strings (`Z` for UTC),
//! durations strings such as `"3600s"`, map keys are stringified and sorted so results are
//! deterministic, `bytes` and non-finite doubles are evaluation errors.
//!
//! Numbers: the cel crate compares `int`, `uint` and `double` across types for `==`, `!=`, `<`,
//! `<=`, `>`, `>=` (so `input.amount > 10000` works whether the JSON held `10000` or `10000.0`),
//! but arithmetic does not mix them: `input.count * 1.5` fails with "no such overload" when
//! `count` is an integer — write `double(input.count) * 1.5`.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

/// The variables an expression may reference at the top level.
pub const VARIABLES: &[&str] = &["input", "data", "case", "now"];

/// Upper bound on an expression's source length, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// Nesting bound for JSON converted into or out of CEL; deeper values are an evaluation error.
const MAX_DEPTH: usize = 128;

/// A compiled CEL expression. Cheap to clone.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

/// An expression that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    /// Byte offset within the expression's source where the problem is, when the parser knows.
    pub offset: Option<usize>,
}

/// An expression that failed at run time (missing key, no such overload, wrong result type …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

impl EvalError {
    fn new(message: impl Into<String>) -> EvalError {
        EvalError {
            message: message.into(),
        }
    }
}

impl Expr {
    /// Parses `source` as CEL.
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(ExprError {
                message: format!(
                    "expression is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                    source.len()
                ),
                offset: None,
            });
        }
        if source.trim().is_empty() {
            return Err(ExprError {
                message: "expression is empty".to_string(),
                offset: None,
            });
        }
        // The parser is generated code; a panic in it must not take the caller down.
        let compiled = catch_unwind(AssertUnwindSafe(|| Program::compile(source)));
        match compiled {
            Ok(Ok(program)) => Ok(Expr {
                source: Arc::from(source),
                program: Arc::new(program),
            }),
            Ok(Err(errors)) => Err(first_parse_error(source, &errors)),
            Err(_) => Err(ExprError {
                message: "the CEL parser failed on this expression".to_string(),
                offset: None,
            }),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed expression (macros expanded), for static analysis such as
    /// `workflow::influence`.
    pub(crate) fn ast(&self) -> &IdedExpr {
        self.program.expression()
    }

    /// Top-level identifiers the expression references (sorted, without duplicates), excluding
    /// variables bound by comprehensions such as `all(x, …)`.
    pub fn variables(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut bound = Vec::new();
        collect_variables(self.program.expression(), &mut bound, &mut found, 0);
        found.sort();
        found.dedup();
        found
    }

    /// True when the expression is certainly not a bool (a non-bool literal, a list or map
    /// literal, or arithmetic at the top). Used by the checker for conditions.
    pub fn is_obviously_non_bool(&self) -> bool {
        match &self.program.expression().expr {
            Ast::Literal(LiteralValue::Boolean(_)) => false,
            Ast::Literal(_) | Ast::List(_) | Ast::Map(_) | Ast::Struct(_) => true,
            Ast::Call(call) => matches!(
                call.func_name.as_str(),
                "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "-_"
            ),
            _ => false,
        }
    }

    pub fn eval(&self, activation: &Activation) -> Result<serde_json::Value, EvalError> {
        let value = self.eval_cel(activation)?;
        cel_to_json(&value, 0)
    }

    pub fn eval_bool(&self, activation: &Activation) -> Result<bool, EvalError> {
        match self.eval_cel(activation)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::new(format!(
                "expected a bool, got {}",
                describe(&other)
            ))),
        }
    }

    fn eval_cel(&self, activation: &Activation) -> Result<Value, EvalError> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.program.execute(&activation.context)
        }));
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(EvalError::new(error.to_string())),
            Err(_) => Err(EvalError::new(
                "the CEL interpreter failed on this expression",
            )),
        }
    }
}

fn first_parse_error(source: &str, errors: &cel::ParseErrors) -> ExprError {
    let Some(first) = errors.errors.first() else {
        return ExprError {
            message: "expression does not parse".to_string(),
            offset: None,
        };
    };
    ExprError {
        message: first.msg.clone(),
        offset: byte_offset(source, first.pos),
    }
}

/// Turns the parser's (1-based line, 1-based column in chars) into a byte offset.
fn byte_offset(source: &str, (line, column): (isize, isize)) -> Option<usize> {
    if line < 1 || column < 1 {
        return None;
    }
    let mut offset = 0;
    for (index, text) in source.split_inclusive('\n').enumerate() {
        if index + 1 == line as usize {
            let within = text
                .char_indices()
                .nth(column as usize - 1)
                .map_or(text.len(), |(i, _)| i);
            return Some(offset + within);
        }
        offset += text.len();
    }
    Some(source.len())
}

fn collect_variables(
    node: &IdedExpr,
    bound: &mut Vec<String>,
    found: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let depth = depth + 1;
    match &node.expr {
        Ast::Ident(name) => {
            if !name.starts_with('@') && !bound.iter().any(|b| b == name) {
                found.push(name.clone());
            }
        }
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                collect_variables(target, bound, found, depth);
            }
            for arg in &call.args {
                collect_variables(arg, bound, found, depth);
            }
        }
        Ast::Comprehension(comp) => {
            collect_variables(&comp.iter_range, bound, found, depth);
            collect_variables(&comp.accu_init, bound, found, depth);
            let before = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(second) = &comp.iter_var2 {
                bound.push(second.clone());
            }
            bound.push(comp.accu_var.clone());
            collect_variables(&comp.loop_cond, bound, found, depth);
            collect_variables(&comp.loop_step, bound, found, depth);
            collect_variables(&comp.result, bound, found, depth);
            bound.truncate(before);
        }
        Ast::List(list) => {
            for element in &list.elements {
                collect_variables(element, bound, found, depth);
            }
        }
        Ast::Map(map) => {
            for entry in &map.entries {
                collect_entry(&entry.expr, bound, found, depth);
            }
        }
        Ast::Struct(structure) => {
            for entry in &structure.entries {
                collect_entry(&entry.expr, bound, found, depth);
            }
        }
        Ast::Select(select) => collect_variables(&select.operand, bound, found, depth),
        Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn collect_entry(
    entry: &EntryExpr,
    bound: &mut Vec<String>,
    found: &mut Vec<String>,
    depth: usize,
) {
    match entry {
        EntryExpr::StructField(field) => collect_variables(&field.value, bound, found, depth),
        EntryExpr::MapEntry(entry) => {
            collect_variables(&entry.key, bound, found, depth);
            collect_variables(&entry.value, bound, found, depth);
        }
    }
}

/// The variables an expression sees. Build once, evaluate many; `set_data` replaces `data`
/// after a step changed it.
pub struct Activation {
    context: Context<'static, 'static>,
}

impl fmt::Debug for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Activation { .. }")
    }
}

fn standard_env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

impl Activation {
    pub fn new(
        input: &serde_json::Value,
        data: &serde_json::Value,
        case: &serde_json::Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Activation {
        let mut context = Context::with_env(standard_env());
        context.add_variable_from_value("input", json_to_cel(input, 0));
        context.add_variable_from_value("data", json_to_cel(data, 0));
        context.add_variable_from_value("case", json_to_cel(case, 0));
        context.add_variable_from_value("now", Value::Timestamp(now.fixed_offset()));
        Activation { context }
    }

    /// Adds or replaces a variable, such as `output` and `confidence` for an `ai` step's
    /// checks and `accept_when`.
    pub fn set(&mut self, name: &str, value: &serde_json::Value) {
        self.context
            .add_variable_from_value(name.to_string(), json_to_cel(value, 0));
    }

    pub fn set_data(&mut self, data: &serde_json::Value) {
        self.context
            .add_variable_from_value("data", json_to_cel(data, 0));
    }
}

/// JSON → CEL. Values nested deeper than [`MAX_DEPTH`] become `null`.
pub fn json_to_cel(value: &serde_json::Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(
            items.iter().map(|v| json_to_cel(v, depth + 1)).collect(),
        )),
        serde_json::Value::Object(object) => {
            let map: HashMap<Key, Value> = object
                .iter()
                .map(|(k, v)| (Key::from(k.as_str()), json_to_cel(v, depth + 1)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// CEL → JSON; see the module documentation for the mapping.
pub fn cel_to_json(value: &Value, depth: usize) -> Result<serde_json::Value, EvalError> {
    if depth > MAX_DEPTH {
        return Err(EvalError::new("result is nested too deeply"));
    }
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| EvalError::new(format!("result {f} is not a finite number")))?,
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::List(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| cel_to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(map) => {
            let mut entries: Vec<(String, &Value)> =
                map.map.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut object = serde_json::Map::new();
            for (key, v) in entries {
                object.insert(key, cel_to_json(v, depth + 1)?);
            }
            serde_json::Value::Object(object)
        }
        Value::Timestamp(t) => serde_json::Value::String(
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        Value::Duration(d) => serde_json::Value::String(duration_text(d)),
        other => {
            return Err(EvalError::new(format!(
                "a {} cannot be represented in JSON",
                describe(other)
            )))
        }
    })
}

fn key_text(key: &Key) -> String {
    match key {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// CEL's canonical duration text: seconds with up to nine fractional digits, e.g. `"1.5s"`.
fn duration_text(duration: &chrono::Duration) -> String {
    let sign = if *duration < chrono::Duration::zero() {
        "-"
    } else {
        ""
    };
    let abs = duration.abs();
    let seconds = abs.num_seconds();
    let nanos = (abs - chrono::Duration::seconds(seconds))
        .num_nanoseconds()
        .unwrap_or(0);
    if nanos == 0 {
        format!("{sign}{seconds}s")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{sign}{seconds}.{}s", fraction.trim_end_matches('0'))
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::UInt(u) => format!("uint {u}"),
        Value::Float(f) => format!("double {f}"),
        Value::String(s) => format!("string {:?}", truncate(s, 40)),
        Value::List(items) => format!("a list of {} items", items.len()),
        Value::Map(map) => format!("a map of {} entries", map.map.len()),
        Value::Timestamp(_) => "a timestamp".to_string(),
        Value::Duration(_) => "a duration".to_string(),
        Value::Bytes(_) => "bytes".to_string(),
        _ => "a value of an unsupported type".to_string(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let head: String = text.chars().take(max_chars).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn eval(source: &str, input: serde_json::Value) -> Result<serde_json::Value, EvalError> {
        let act = Activation::new(
            &input,
            &json!({"routing": {"approver": "auto"}}),
            &json!({"id": "c1"}),
            now(),
        );
        Expr::compile(source).unwrap().eval(&act)
    }

    #[test]
    fn evaluates_against_variables() {
        assert_eq!(
            eval("input.amount > 10", json!({"amount": 11})).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval("data.routing.approver", json!({})).unwrap(),
            json!("auto")
        );
        assert_eq!(eval("case.id + '!'", json!({})).unwrap(), json!("c1!"));
    }

    #[test]
    fn numbers_compare_across_types() {
        assert_eq!(
            eval("input.a == 1.0", json!({"a": 1})).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval("input.a > 10000", json!({"a": 10000.5})).unwrap(),
            json!(true)
        );
        assert_eq!(eval("input.a < 1", json!({"a": 0.5})).unwrap(), json!(true));
        assert_eq!(
            eval("input.a", json!({"a": u64::MAX})).unwrap(),
            json!(u64::MAX)
        );
        assert_eq!(
            eval("input.a * 1.2", json!({"a": 10.0})).unwrap(),
            json!(12.0)
        );
        // Documented limit: arithmetic does not mix int and double.
        assert!(eval("input.a * 1.5", json!({"a": 2})).is_err());
        assert_eq!(
            eval("double(input.a) * 1.5", json!({"a": 2})).unwrap(),
            json!(3.0)
        );
    }

    #[test]
    fn timestamps_and_durations() {
        assert_eq!(
            eval("now", json!({})).unwrap(),
            json!("2026-01-02T03:04:05Z")
        );
        assert_eq!(
            eval(
                "timestamp(input.due) + duration('2h')",
                json!({"due": "2026-01-01T00:00:00Z"})
            )
            .unwrap(),
            json!("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            eval("now > timestamp('2020-01-01T00:00:00Z')", json!({})).unwrap(),
            json!(true)
        );
        assert_eq!(eval("duration('1h')", json!({})).unwrap(), json!("3600s"));
        assert_eq!(
            eval("duration('1500ms')", json!({})).unwrap(),
            json!("1.5s")
        );
    }

    #[test]
    fn maps_come_back_with_sorted_string_keys() {
        assert_eq!(
            eval("{2: 'b', 1: 'a'}", json!({})).unwrap(),
            json!({"1": "a", "2": "b"})
        );
        assert_eq!(
            eval("{'z': 1, 'a': [true, null]}", json!({}))
                .unwrap()
                .to_string(),
            r#"{"a":[true,null],"z":1}"#
        );
    }

    #[test]
    fn eval_bool_rejects_non_bool() {
        let act = Activation::new(&json!({"a": 1}), &json!({}), &json!({}), now());
        let err = Expr::compile("input.a")
            .unwrap()
            .eval_bool(&act)
            .unwrap_err();
        assert_eq!(err.message, "expected a bool, got int 1");
    }

    #[test]
    fn set_data_replaces_data() {
        let mut act = Activation::new(&json!({}), &json!({"x": 1}), &json!({}), now());
        let expr = Expr::compile("data.x").unwrap();
        assert_eq!(expr.eval(&act).unwrap(), json!(1));
        act.set_data(&json!({"x": 2}));
        assert_eq!(expr.eval(&act).unwrap(), json!(2));
    }

    #[test]
    fn errors_do_not_panic() {
        assert!(eval("input.missing.deeper", json!({})).is_err());
        assert!(eval("1 / 0", json!({})).is_err());
        assert!(eval("b'abc'", json!({})).is_err());
        assert!(eval("0.0 / 0.0", json!({})).is_err());
    }

    #[test]
    fn compile_errors_carry_an_offset() {
        let err = Expr::compile("input.amount >").unwrap_err();
        assert!(err.offset.is_some(), "{err:?}");
        let err = Expr::compile("a &&\n  (b").unwrap_err();
        assert!(err.offset.unwrap() > 4, "{err:?}");
        assert!(Expr::compile("   ").is_err());
    }

    #[test]
    fn variables_exclude_comprehension_bindings() {
        let expr = Expr::compile("input.items.all(i, i.price > 0) && data.x == y").unwrap();
        assert_eq!(expr.variables(), vec!["data", "input", "y"]);
        let expr = Expr::compile("size(input.a.map(x, x * 2)) > 1 && now > now").unwrap();
        assert_eq!(expr.variables(), vec!["input", "now"]);
    }

    #[test]
    fn obviously_non_bool() {
        assert!(Expr::compile("input.a + 1")
            .unwrap()
            .is_obviously_non_bool());
        assert!(Expr::compile("'yes'").unwrap().is_obviously_non_bool());
        assert!(!Expr::compile("input.a").unwrap().is_obviously_non_bool());
        assert!(!Expr::compile("true").unwrap().is_obviously_non_bool());
    }

    #[test]
    fn expr_and_activation_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Expr>();
        assert_send_sync::<Activation>();
    }

    proptest::proptest! {
        #[test]
        fn compile_never_panics(source in "\\PC{0,40}") {
            let _ = Expr::compile(&source);
        }
    }
}
