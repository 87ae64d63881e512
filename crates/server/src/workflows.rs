//! `GET /v1/workflows`: the deployed workflows, each at its latest version.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// The latest deployed version of one workflow; new cases start on it.
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
