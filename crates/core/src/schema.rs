//! JSON Schema: compile once at parse time, validate many instances.
//!
//! The draft is detected from `$schema`; without one it is 2020-12. Remote and file `$ref`s
//! are not resolved (core does no IO): such a schema fails to compile.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::Serialize;

/// Upper bound on the violations reported for one instance; the rest are summarised.
pub const MAX_VIOLATIONS: usize = 100;

/// A compiled JSON Schema. Cheap to clone.
#[derive(Clone)]
pub struct Schema {
    json: Arc<serde_json::Value>,
    validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schema").field(&self.json).finish()
    }
}

/// One way an instance fails its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer to the offending part of the instance (`""` for the whole instance).
    pub path: String,
    pub message: String,
}

impl Schema {
    pub fn compile(json: serde_json::Value) -> Result<Schema, String> {
        let validator = jsonschema::validator_for(&json).map_err(|error| error.to_string())?;
        Ok(Schema {
            json: Arc::new(json),
            validator: Arc::new(validator),
        })
    }

    /// Every way `json` violates its draft's meta-schema (up to [`MAX_VIOLATIONS`]), with the
    /// JSON pointer of each problem inside the schema. Empty does not guarantee that
    /// [`Schema::compile`] succeeds (an unresolvable `$ref`, for one, is found only there).
    pub fn meta_violations(json: &serde_json::Value) -> Vec<Violation> {
        let validator = catch_unwind(AssertUnwindSafe(|| jsonschema::meta::validator_for(json)));
        let Ok(Ok(validator)) = validator else {
            return Vec::new();
        };
        validator
            .iter_errors(json)
            .take(MAX_VIOLATIONS)
            .map(|error| Violation {
                path: error.instance_path().as_str().to_string(),
                message: error.to_string(),
            })
            .collect()
    }

    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// Every violation (up to [`MAX_VIOLATIONS`]), not just the first.
    pub fn validate(&self, instance: &serde_json::Value) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        let mut more = 0usize;
        for error in self.validator.iter_errors(instance) {
            if violations.len() < MAX_VIOLATIONS {
                violations.push(Violation {
                    path: error.instance_path().as_str().to_string(),
                    message: error.to_string(),
                });
            } else {
                more += 1;
            }
        }
        if more > 0 {
            violations.push(Violation {
                path: String::new(),
                message: format!("… and {more} more violations"),
            });
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_every_violation_with_its_path() {
        let schema = Schema::compile(json!({
            "type": "object",
            "required": ["amount", "id"],
            "properties": {"amount": {"type": "number"}, "lines": {"type": "array", "items": {"type": "string"}}}
        }))
        .unwrap();
        assert!(schema.validate(&json!({"amount": 1, "id": "x"})).is_ok());
        let violations = schema
            .validate(&json!({"amount": "1", "lines": ["a", 2]}))
            .unwrap_err();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert!(paths.contains(&"/amount"));
        assert!(paths.contains(&"/lines/1"));
        assert!(paths.contains(&""));
    }

    #[test]
    fn invalid_schemas_are_rejected() {
        assert!(Schema::compile(json!({"type": "bogus"})).is_err());
        assert!(Schema::compile(json!({"minimum": "ten"})).is_err());
        assert!(Schema::compile(json!({"$ref": "https://example.com/x.json"})).is_err());
    }

    #[test]
    fn meta_violations_point_into_the_schema() {
        let violations = Schema::meta_violations(
            &json!({"type": "object", "properties": {"a": {"minimum": "x"}}}),
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "/properties/a/minimum");
        assert!(Schema::meta_violations(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn draft_is_detected() {
        // Draft 4 uses boolean exclusiveMaximum; 2020-12 would reject this schema.
        let schema = Schema::compile(json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "maximum": 10, "exclusiveMaximum": true
        }))
        .unwrap();
        assert!(schema.validate(&json!(10)).is_err());
        assert!(schema.validate(&json!(9)).is_ok());
    }
}
