//! `GET /v1/workflows`: the deployed workflows, each at its serving version; their versions,
//! and governors' decisions on pending ones (change control: a version that changes what
//! decides waits for a governor who is not its author).

use axum::extract::State;
use axum::Json;
use keel_engine::change::{ChangeError, VersionDecided, VersionView};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::extract::{ApiPath, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// The serving version of one workflow (its newest active one); new cases start on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSummary {
    pub name: String,
    /// The deployment number (1, 2, …); a changed file becomes a new version.
    pub version: i64,
    /// The `version:` label written in the workflow file.
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema a case input must satisfy.
    pub input_schema: Value,
}

/// Lists the deployed workflows.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", responses((status = 200, body = WorkflowList)))]
pub async fn list_workflows(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Json<WorkflowList> {
    let registry = state.engine.registry();
    let workflows = registry
        .list()
        .into_iter()
        .map(|(name, version, label)| {
            let definition = registry.version(&name, version);
            WorkflowSummary {
                description: definition
                    .as_ref()
                    .and_then(|definition| definition.description.clone()),
                input_schema: definition.map_or(Value::Null, |definition| {
                    definition.input_schema.json().clone()
                }),
                name,
                version,
                label,
            }
        })
        .collect();
    Json(WorkflowList { workflows })
}

/// A governor's decision on a pending version: `{"reason": "…"}`.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct VersionDecisionBody {
    /// Why: kept in the journal with the decision (not blank).
    #[schema(min_length = 1, pattern = "\\S")]
    pub reason: String,
}

pub(crate) fn parse_reason(body: Option<Value>) -> Result<String, Problem> {
    let body = body.ok_or_else(|| Problem::new(Kind::MalformedJson, "send {\"reason\": \"…\"}"))?;
    let body: VersionDecisionBody = serde_json::from_value(body).map_err(|error| {
        Problem::new(
            Kind::InvalidParameter,
            format!("not a decision ({error}): send {{\"reason\": \"…\"}}"),
        )
    })?;
    Ok(body.reason)
}

/// Every stored version of a workflow, oldest first: `active` (the newest active one serves
/// new cases), `pending` (it changes what decides and waits for a governor) or `rejected`,
/// with what changed per operation, the author and who decided.
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}/versions",
    tag = "workflows",
    params(("name" = String, Path, description = "Workflow name")),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Versions, oldest first", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_versions(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<VersionView>>, Problem> {
    let versions = state.engine.workflow_versions(Some(&name)).await?;
    if versions.is_empty() {
        return Err(Problem::new(
            Kind::UnknownWorkflow,
            format!("no workflow named `{name}`; GET /v1/workflows lists them"),
        ));
    }
    Ok(Json(versions))
}

/// Approve a pending version (a governor with an approver role of every changed operation,
/// not the version's author): it serves new cases at once, and change control moves its
/// changed operations down.
#[utoipa::path(
    post,
    path = "/v1/workflows/{name}/versions/{version}/approve",
    tag = "workflows",
    params(("name" = String, Path), ("version" = i64, Path)),
    request_body(content = VersionDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Approved: the version serves", body = Value),
        (status = 400, description = "No reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver, or the version's author, or no author named (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The version is not pending, or a newer one serves", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn approve_version(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    JsonBody(body): JsonBody,
) -> Result<Json<VersionDecided>, Problem> {
    let reason = parse_reason(body)?;
    decided(
        state
            .engine
            .decide_workflow(&name, version, &caller, true, &reason)
            .await?,
    )
}

/// Reject a pending version: it never runs.
#[utoipa::path(
    post,
    path = "/v1/workflows/{name}/versions/{version}/reject",
    tag = "workflows",
    params(("name" = String, Path), ("version" = i64, Path)),
    request_body(content = VersionDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Rejected", body = Value),
        (status = 400, description = "No reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The version is not pending", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn reject_version(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    JsonBody(body): JsonBody,
) -> Result<Json<VersionDecided>, Problem> {
    let reason = parse_reason(body)?;
    decided(
        state
            .engine
            .decide_workflow(&name, version, &caller, false, &reason)
            .await?,
    )
}

fn decided(result: Result<VersionDecided, ChangeError>) -> Result<Json<VersionDecided>, Problem> {
    match result {
        Ok(decided) => Ok(Json(decided)),
        Err(error @ ChangeError::UnknownVersion { .. }) => {
            Err(Problem::new(Kind::UnknownVersion, error.to_string()))
        }
        Err(ChangeError::Forbidden(message)) => Err(Problem::new(Kind::TrustForbidden, message)),
        Err(ChangeError::Invalid(message)) => Err(Problem::new(Kind::InvalidParameter, message)),
        Err(error @ (ChangeError::NotPending { .. } | ChangeError::Superseded { .. })) => {
            Err(Problem::new(Kind::VersionConflict, error.to_string()))
        }
    }
}
