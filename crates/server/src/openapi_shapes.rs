//! The request shapes of the OpenAPI document that the handlers' annotations cannot say on
//! their own: the values a parameter may take (the handlers refuse every other with a 400),
//! the variants of the decision and resolution bodies, header limits, and the media types of
//! the monthly report. Each entry states what the handler checks, next to the handler's name.

use serde_json::{json, Value};

/// Applies every shape to `document`.
pub(crate) fn apply(document: &mut Value) {
    for (path, method, name, schema) in parameter_schemas() {
        if let Some(parameter) = parameter(document, path, method, name) {
            parameter["schema"] = schema;
        }
    }
    let signal_name = parameter(document, "/v1/cases/{id}/signals/{name}", "post", "name");
    if let Some(parameter) = signal_name {
        parameter["description"] = json!(
            "A signal name that a `wait` step of the case's workflow version declares (else 422)"
        );
        parameter["schema"] = json!({
            "type": "string", "minLength": 1, "maxLength": keel_engine::MAX_SIGNAL_NAME_CHARS,
            "pattern": "^[a-z0-9_-]+$"
        });
    }
    if let Some(operation) = document.pointer_mut("/paths/~1v1~1tasks~1{id}~1decision/post") {
        operation["requestBody"]["content"]["application/json"]["schema"] = decision_body();
    }
    if let Some(operation) = document.pointer_mut("/paths/~1v1~1exceptions~1{id}~1resolution/post")
    {
        operation["requestBody"]["content"]["application/json"]["schema"] = resolution_body();
    }
    if let Some(operation) = document.pointer_mut("/paths/~1v1~1chat~1completions/post") {
        operation["requestBody"]["content"]["application/json"]["schema"] = chat_request();
        add_openai_error(
            operation,
            "403",
            "The token's user may not `use_gateway` (journaled)",
        );
        add_openai_error(
            operation,
            "413",
            "The body is larger than the server's limit",
        );
        add_openai_error(
            operation,
            "503",
            "At the limit of requests in flight; see Retry-After",
        );
    }
    if let Some(operation) = document.pointer_mut("/paths/~1v1~1models/get") {
        add_openai_error(
            operation,
            "403",
            "The token's user may not `use_gateway` (journaled)",
        );
    }
    if let Some(content) = document
        .pointer_mut("/paths/~1v1~1reports~1monthly/get/responses/200/content")
        .and_then(Value::as_object_mut)
    {
        content.insert(
            "text/markdown".into(),
            json!({"schema": {"type": "string"}}),
        );
        content.insert("text/html".into(), json!({"schema": {"type": "string"}}));
    }
}

/// The parameter `name` of an operation.
fn parameter<'d>(
    document: &'d mut Value,
    path: &str,
    method: &str,
    name: &str,
) -> Option<&'d mut Value> {
    document
        .get_mut("paths")?
        .get_mut(path)?
        .get_mut(method)?
        .get_mut("parameters")?
        .as_array_mut()?
        .iter_mut()
        .find(|parameter| parameter["name"] == name)
}

fn one_of(values: &[&str]) -> Value {
    json!({ "type": "string", "enum": values })
}

/// (path, method, parameter, schema) for parameters the handlers check beyond their type.
fn parameter_schemas() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let month = json!({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"});
    let day = json!({"type": "string", "format": "date"});
    vec![
        // cases::submit_case: 1 to 255 visible ASCII characters.
        (
            "/v1/workflows/{name}/cases",
            "post",
            "Idempotency-Key",
            json!({"type": "string", "minLength": 1, "maxLength": crate::cases::MAX_IDEMPOTENCY_KEY_CHARS, "pattern": "^[!-~]+$"}),
        ),
        // cases::list_cases
        (
            "/v1/cases",
            "get",
            "status",
            one_of(&["running", "waiting", "exception", "completed", "failed"]),
        ),
        (
            "/v1/cases",
            "get",
            "cursor",
            json!({"type": "string", "format": "uuid"}),
        ),
        // tasks::list_tasks
        (
            "/v1/tasks",
            "get",
            "status",
            one_of(&["open", "approved", "corrected", "rejected", "all"]),
        ),
        // exceptions::list_exceptions
        (
            "/v1/exceptions",
            "get",
            "status",
            one_of(&["open", "resolved", "all"]),
        ),
        // trust::list_recommendations
        (
            "/v1/trust/recommendations",
            "get",
            "status",
            one_of(crate::trust::RECOMMENDATION_STATUSES),
        ),
        // webhooks::list_deliveries
        (
            "/v1/webhooks/deliveries",
            "get",
            "status",
            one_of(&["pending", "delivered", "failed"]),
        ),
        // reports::costs and reports::monthly
        ("/v1/reports/costs", "get", "month", month.clone()),
        ("/v1/reports/costs", "get", "from", day.clone()),
        ("/v1/reports/costs", "get", "to", day),
        ("/v1/reports/monthly", "get", "month", month),
        (
            "/v1/reports/monthly",
            "get",
            "format",
            one_of(&["json", "md", "markdown", "html"]),
        ),
    ]
}

/// `tasks::decide_task` parses `keel_core::gate::TaskDecision`, tagged by `decision`.
fn decision_body() -> Value {
    let comment = json!({"type": ["string", "null"]});
    json!({
        "oneOf": [
            {
                "type": "object",
                "required": ["decision"],
                "properties": {"decision": {"const": "approve"}, "comment": comment},
            },
            {
                "type": "object",
                "required": ["decision", "output"],
                "properties": {
                    "decision": {"const": "correct"},
                    "output": {"description": "The corrected output, in the shape of the AI step's output"},
                    "step": {"type": ["string", "null"], "description": "The ai step corrected, when the action uses several"},
                    "comment": comment,
                },
            },
            {
                "type": "object",
                "required": ["decision", "reason"],
                "properties": {
                    "decision": {"const": "reject"},
                    "reason": {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": "\\S"},
                },
            },
        ]
    })
}

/// `exceptions::parse_resolution` parses `keel_core::case::Resolution`, tagged by `action`,
/// with an optional `note`.
fn resolution_body() -> Value {
    let note = json!({"type": ["string", "null"]});
    let variant = |action: &str, required: Value, extra: Value| {
        let mut properties = json!({"action": {"const": action}, "note": note});
        if let (Some(properties), Some(extra)) = (properties.as_object_mut(), extra.as_object()) {
            properties.extend(extra.clone());
        }
        json!({"type": "object", "required": required, "properties": properties})
    };
    let to = |what: &str| json!({"to": {"type": "string", "description": what}});
    json!({
        "oneOf": [
            variant("retry", json!(["action"]), json!({})),
            variant("provide_output", json!(["action", "output"]), json!({"output": {"description": "The step's result"}})),
            variant("skip", json!(["action", "to"]), to("The step to go to")),
            variant("cancel", json!(["action"]), json!({})),
            variant("assign", json!(["action", "to"]), to("The user to give it to")),
            variant("claim", json!(["action"]), json!({})),
            variant("escalate", json!(["action"]), json!({})),
            variant("close", json!(["action"]), json!({})),
        ]
    })
}

/// Adds an answer in OpenAI's error shape unless the operation documents one.
fn add_openai_error(operation: &mut Value, status: &str, description: &str) {
    if let Some(responses) = operation["responses"].as_object_mut() {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": format!("{description} (OpenAI error body)"),
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["message", "type"]}}
                }}}
            })
        });
    }
}

/// What `gateway::parse` accepts: OpenAI's chat-completions request without the fields the
/// gateway refuses (tools, sampling controls it cannot honour); unknown fields are refused.
fn chat_request() -> Value {
    let max_tokens = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX});
    let text_part = json!({
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}
    });
    json!({
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": false,
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A model or alias from GET /v1/models"},
            "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": text_part}]}
                }
            }},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "max_tokens": max_tokens,
            "max_completion_tokens": max_tokens,
            "stop": {"oneOf": [
                {"type": "null"}, {"type": "string"},
                {"type": "array", "maxItems": 4, "items": {"type": "string"}}
            ]},
            "response_format": {"oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
                {"type": "object", "required": ["type", "json_schema"], "properties": {
                    "type": {"const": "json_schema"},
                    "json_schema": {"type": "object", "required": ["schema"], "properties": {
                        "name": {"type": "string"},
                        "strict": {"type": "boolean"},
                        "schema": {"type": "object", "description": "A JSON Schema the answer must satisfy (checked by Keel)",
                            "properties": {"type": {"enum": ["object", "array", "string", "number", "integer", "boolean"]}},
                            "additionalProperties": false}
                    }}
                }}
            ]},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "logprobs": {"type": "boolean"},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "n": {"enum": [1, null]},
            "user": {"type": "string"},
            "metadata": {"type": "object"},
            "store": {"type": "boolean"}
        }
    })
}
