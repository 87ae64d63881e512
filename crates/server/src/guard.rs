//! Every `/v1` endpoint except the gateway's (which answers in OpenAI's error shape) and the
//! OpenAPI document passes here: a token is required, and Cedar decides whether its user may
//! take the endpoint's action. Every deny, and every allow of a sensitive action, is journaled
//! with the ids of the policies that decided it.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_engine::authz::SENSITIVE;
use keel_engine::tokens::Caller;
use keel_engine::{canonical_data, rfc3339_ms, Engine};
use keel_store::NewEntry;
use serde_json::json;

use crate::problem::{Kind, Problem};
use crate::AppState;

/// The action and resource (`kind`, `id`) of a request, from its route and path.
pub(crate) fn action_of(
    method: &Method,
    route: &str,
    path: &str,
) -> (&'static str, &'static str, String) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segment = |i: usize| segments.get(i).copied().unwrap_or_default().to_string();
    let post = method == Method::POST;
    match route {
        "/v1/workflows" => ("read_workflows", "System", "keel".into()),
        "/v1/workflows/{name}/cases" => ("submit_case", "Workflow", segment(2)),
        "/v1/cases" => ("list_cases", "System", "keel".into()),
        "/v1/cases/{id}" => ("read_case", "Case", segment(2)),
        "/v1/cases/{id}/signals/{name}" => ("signal_case", "Case", segment(2)),
        "/v1/tasks" => ("read_tasks", "System", "keel".into()),
        "/v1/tasks/{id}" => ("read_tasks", "Task", segment(2)),
        "/v1/tasks/{id}/decision" => ("decide_task", "Task", segment(2)),
        "/v1/exceptions/{id}/resolution" => ("resolve_exception", "Case", segment(2)),
        r if r.starts_with("/v1/exceptions") || r == "/v1/queues" => {
            ("read_exceptions", "System", "keel".into())
        }
        r if r.starts_with("/v1/audit") || r == "/metrics" => {
            ("read_audit", "System", "keel".into())
        }
        r if r.starts_with("/v1/trust") && post => ("govern_trust", "Workflow", segment(2)),
        r if r.starts_with("/v1/trust") => ("read_trust", "System", "keel".into()),
        r if r.starts_with("/v1/drift") => ("read_trust", "System", "keel".into()),
        r if r.starts_with("/v1/reports") => ("read_reports", "System", "keel".into()),
        r if r.starts_with("/v1/webhooks") => ("read_webhooks", "System", "keel".into()),
        "/v1/learners/{workflow}/{step}/examples" => ("teach_learner", "Workflow", segment(2)),
        r if r.starts_with("/v1/learners") && !post => ("read_learners", "System", "keel".into()),
        _ => ("read_workflows", "System", "keel".into()),
    }
}

/// Journals an authorization decision (in the background, batched).
pub(crate) async fn journal(
    engine: &Engine,
    caller: &Caller,
    action: &str,
    resource: &str,
    verdict: &keel_engine::authz::Verdict,
) {
    let kind = if verdict.allowed {
        "authz.allowed"
    } else {
        "authz.denied"
    };
    let (data, data_sha256) = canonical_data(&json!({
        "subject": caller.subject, "token_id": caller.token_id, "roles": caller.roles,
        "action": action, "resource": resource, "policies": verdict.policies,
        "errors": verdict.errors,
    }));
    let entry = NewEntry {
        at: rfc3339_ms(engine.now_ms()),
        kind: kind.into(),
        actor_type: "user".into(),
        actor_id: caller.subject.clone(),
        case_id: None,
        workflow: None,
        step: None,
        data,
        data_sha256,
    };
    engine.record_ai_calls(Vec::new(), Some(entry)).await;
}

pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let caller = match crate::auth::required(&state.engine, request.headers()).await {
        Ok(caller) => caller,
        Err(problem) => return problem.into_response(),
    };
    let (action, kind, id) = action_of(request.method(), &route, request.uri().path());
    let resource = format!("Keel::{kind}::\"{id}\"");
    let verdict = match &state.authorizer {
        Some(authorizer) => authorizer.decide(&caller, action, kind, &id),
        None => keel_engine::authz::Verdict {
            allowed: false,
            policies: Vec::new(),
            errors: vec!["no policies loaded".into()],
        },
    };
    if !verdict.allowed {
        journal(&state.engine, &caller, action, &resource, &verdict).await;
        return Problem::new(
            Kind::Forbidden,
            format!(
                "`{}` (roles {:?}) may not `{action}` {resource}; ask an admin for a role that allows it",
                caller.subject, caller.roles
            ),
        )
        .into_response();
    }
    if SENSITIVE.contains(&action) {
        journal(&state.engine, &caller, action, &resource, &verdict).await;
    }
    next.run(request).await
}
