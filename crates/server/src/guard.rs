//! Every request passes here, before any handler: the route table ([`crate::routes`]) says
//! who may reach the route. A public route passes; a guarded one needs a token whose user
//! Cedar allows the route's action on its resource, and the caller then travels to the handler
//! in the request's extensions (authenticated once). A route missing from the table is denied
//! to everyone (fail closed). Every deny, and every allow of a sensitive action, is journaled
//! with the ids of the policies that decided it.

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_engine::authz::SENSITIVE;
use keel_engine::tokens::Caller;
use keel_engine::{canonical_data, rfc3339_ms, Engine};
use keel_store::NewEntry;
use serde_json::json;

use crate::problem::{Kind, Problem};
use crate::routes::{Access, Lookup, Rule};
use crate::AppState;

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
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string())
    else {
        // No route matched: only the not-found fallback would answer.
        return crate::problem::not_found().await.into_response();
    };
    match state.routes.lookup(request.method(), &route) {
        Lookup::Declared(Access::Public { .. }) => next.run(request).await,
        Lookup::Declared(Access::ScrapeTokenOr(rule)) => {
            if crate::metrics::presents_scrape_token(&state, request.headers()) {
                next.run(request).await
            } else {
                authorize(&state, *rule, request, next).await
            }
        }
        Lookup::Declared(Access::Token(rule)) => authorize(&state, *rule, request, next).await,
        Lookup::OtherMethods(methods) => method_not_allowed(&route, &methods),
        Lookup::Undeclared => {
            tracing::error!(%route, method = %request.method(), "a route without an access rule was requested; denied");
            Problem::new(
                Kind::Forbidden,
                "this route has no access rule, so it is denied to everyone; this is a defect of the server: report it",
            )
            .into_response()
        }
    }
}

/// A 405 naming the methods the route takes (in OpenAI's shape on the gateway's routes).
fn method_not_allowed(route: &str, methods: &[Method]) -> Response {
    let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let allow = allow.join(", ");
    if crate::gateway::PATHS.contains(&route) {
        return crate::gateway::method_not_allowed(&allow);
    }
    let mut response = Problem::new(
        Kind::MethodNotAllowed,
        format!("this path takes {allow}; GET /v1/openapi.json lists every endpoint"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Authenticates the request, asks Cedar about `rule`, and runs the handler with the caller in
/// the request's extensions, or answers 401/403.
async fn authorize(state: &AppState, rule: Rule, request: Request, next: Next) -> Response {
    let caller = match crate::auth::required(&state.engine, request.headers()).await {
        Ok(caller) => caller,
        Err(problem) => return problem.into_response(),
    };
    let (mut parts, body) = request.into_parts();
    let id = match resource_id(&mut parts, rule).await {
        Ok(id) => id,
        Err(problem) => return problem.into_response(),
    };
    let (action, kind) = (rule.action, rule.kind);
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
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// The id of the rule's resource: `keel` for the system, else the (decoded) path parameter.
async fn resource_id(
    parts: &mut axum::http::request::Parts,
    rule: Rule,
) -> Result<String, Problem> {
    let Some(param) = rule.id_param else {
        return Ok("keel".into());
    };
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|rejection| Problem::new(Kind::InvalidParameter, rejection.body_text()))?;
    params
        .iter()
        .find(|(name, _)| *name == param)
        .map(|(_, value)| value.to_string())
        .ok_or_else(|| {
            tracing::error!(param, action = rule.action, "the access rule names a path parameter the route does not have");
            Problem::new(
                Kind::Forbidden,
                "this route's access rule is broken, so it is denied to everyone; this is a defect of the server: report it",
            )
        })
}
