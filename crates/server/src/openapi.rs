//! The OpenAPI 3.1 document (`GET /v1/openapi.json`), generated from the handlers' annotations,
//! which the Swagger UI at `/docs` renders.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

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
        cases::submit_case,
        cases::list_cases,
        cases::get_case,
        cases::signal_case,
        audit::checkpoint,
        audit::inclusion_proof,
        audit::consistency_proof,
        learners::list_learners,
        learners::add_examples,
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
pub fn document_bytes() -> Bytes {
    match ApiDoc::openapi().to_json() {
        Ok(json) => Bytes::from(json),
        Err(error) => {
            tracing::error!(%error, "cannot serialize the OpenAPI document; serving an empty one");
            Bytes::from_static(b"{}")
        }
    }
}
