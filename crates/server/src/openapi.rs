//! The OpenAPI 3.1 document (`GET /v1/openapi.json`), generated from the handlers' annotations,
//! which the Swagger UI at `/docs` renders.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::problem::PROBLEM_CONTENT_TYPE;
use crate::routes::{Access, DeclaredRoute};

use crate::{audit, cases, drift, health, problem, workflows, AppState};
use crate::{exceptions, gateway, learners, metrics, reports, tasks, trust, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel API",
        description = "Deterministic workflows with a tamper-evident ledger. Every error is RFC 9457 problem JSON."
    ),
    paths(
        health::healthz,
        health::readyz,
        workflows::list_workflows,
        workflows::list_versions,
        workflows::approve_version,
        workflows::reject_version,
        cases::submit_case,
        cases::list_cases,
        cases::get_case,
        cases::signal_case,
        audit::checkpoint,
        audit::inclusion_proof,
        audit::consistency_proof,
        learners::list_learners,
        learners::add_examples,
        learners::list_versions,
        learners::force_version,
        learners::approve_version,
        learners::reject_version,
        tasks::list_tasks,
        tasks::get_task,
        tasks::decide_task,
        exceptions::list_exceptions,
        exceptions::exception_patterns,
        exceptions::get_exception,
        exceptions::resolve_exception,
        exceptions::list_queues,
        drift::list_results,
        drift::feature_history,
        trust::list_operations,
        trust::list_recommendations,
        trust::get_operation,
        trust::accuracy,
        trust::promote,
        trust::decline,
        trust::demote,
        reports::costs,
        reports::monthly,
        webhooks::list_deliveries,
        webhooks::get_delivery,
        gateway::chat_completions,
        gateway::models,
        metrics::metrics,
        openapi_json,
    ),
    modifiers(&TokenAuth),
    components(schemas(problem::ProblemBody, problem::ViolationBody)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "workflows", description = "Deployed workflows"),
        (name = "cases", description = "Cases: submit, read, list, signal"),
        (name = "audit", description = "Signed checkpoints and Merkle proofs"),
        (name = "learners", description = "Local learners: stored versions and online learning from labelled examples"),
        (name = "tasks", description = "Human decisions: approval steps and actions that use AI output"),
        (name = "exceptions", description = "Cases parked for a person and SLA breaches: queues, patterns by fingerprint, resolutions"),
        (name = "trust", description = "Progressive trust: operations, evidence, promotion recommendations, governors' decisions"),
        (name = "drift", description = "Drift monitoring: per-feature tests of a reference window against the current one"),
        (name = "reports", description = "Cost analysis and the monthly operational review (JSON, Markdown, self-contained HTML)"),
        (name = "webhooks", description = "The outbound-webhook delivery log: each delivery and every attempt"),
        (name = "gateway", description = "OpenAI-compatible gateway: point an OpenAI client's base URL at /v1 with a Keel token as its API key"),
        (name = "meta", description = "This document and the Prometheus metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme of the gateway endpoints.
struct TokenAuth;

impl utoipa::Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "keel_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from `keel token create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The scrape secret given to `keel serve --metrics-token-env VAR` (only /metrics)",
                    ))
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json,
    )
}

/// The document serialized once, at start-up.
pub fn document_bytes(routes: &[DeclaredRoute]) -> Bytes {
    match serde_json::to_vec(&document(routes)) {
        Ok(json) => Bytes::from(json),
        Err(error) => {
            tracing::error!(%error, "cannot serialize the OpenAPI document; serving an empty one");
            Bytes::from_static(b"{}")
        }
    }
}

/// The OpenAPI document: the handlers' annotations, with each operation's security and
/// 401/403 answers taken from the route table (so the document cannot disagree with the guard),
/// the answers every operation of its kind can give, and the request shapes the handlers parse.
pub fn document(routes: &[DeclaredRoute]) -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot build the OpenAPI document");
        json!({})
    });
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let access = routes
                    .iter()
                    .find(|route| {
                        route.path == path && route.method.as_str().eq_ignore_ascii_case(method)
                    })
                    .map(|route| route.access);
                refine_operation(operation, access);
            }
        }
    }
    crate::openapi_shapes::apply(&mut document);
    document
}

/// Security and the answers the guard and the extractors give, for one operation.
fn refine_operation(operation: &mut Value, access: Option<Access>) {
    let gateway = operation["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|tag| tag == "gateway"));
    match access {
        Some(Access::Token(rule)) => {
            operation["security"] = json!([{ "keel_token": [] }]);
            add_problem(
                operation,
                "401",
                "No token, or a token that is unknown, revoked or expired",
            );
            add_problem(
                operation,
                "403",
                &format!("The token's user may not `{}` (journaled)", rule.action),
            );
        }
        Some(Access::ScrapeTokenOr(rule)) => {
            operation["security"] = json!([{ "keel_token": [] }, { "metrics_token": [] }]);
            add_problem(
                operation,
                "401",
                "No token, or a token that is unknown, revoked or expired",
            );
            add_problem(
                operation,
                "403",
                &format!("The token's user may not `{}` (journaled)", rule.action),
            );
        }
        Some(Access::Public { .. }) | None => {}
    }
    if gateway {
        return;
    }
    let has_parameters = operation["parameters"]
        .as_array()
        .is_some_and(|parameters| !parameters.is_empty());
    let has_body = operation.get("requestBody").is_some();
    if has_parameters || has_body {
        add_problem(
            operation,
            "400",
            "A malformed parameter or body; `detail` says which and how to fix it",
        );
    }
    if has_body {
        add_problem(
            operation,
            "413",
            "The body is larger than the server's limit",
        );
        add_problem(
            operation,
            "415",
            "The body is not JSON (`Content-Type: application/json`)",
        );
    }
}

/// Adds a problem answer with `status` unless the operation documents one.
fn add_problem(operation: &mut Value, status: &str, description: &str) {
    let Some(responses) = operation
        .as_object_mut()
        .map(|operation| operation.entry("responses").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    responses.entry(status).or_insert_with(|| {
        json!({
            "description": description,
            "content": { PROBLEM_CONTENT_TYPE: { "schema": { "$ref": "#/components/schemas/ProblemBody" } } }
        })
    });
}
