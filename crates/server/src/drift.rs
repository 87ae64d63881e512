//! Drift monitoring: the latest test of every monitored feature, and one feature's history.
//! Reading needs `read_trust` (drift can withdraw trust, so it is read with it).

use axum::extract::State;
use axum::Json;
use keel_engine::drift::FeatureHistory;
use keel_store::DriftResultRow;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DriftQuery {
    /// Only this workflow's features.
    pub workflow: Option<String>,
}

/// The latest drift result of every monitored feature (of one workflow with `?workflow=`).
#[utoipa::path(
    get,
    path = "/v1/drift",
    tag = "drift",
    params(DriftQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Latest result per feature: status (tested, insufficient_data, error), kind, method, parameters, value, threshold, drifted, rows per window, failed rows, the windows", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_results(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<DriftQuery>,
) -> Result<Json<Vec<DriftResultRow>>, Problem> {
    Ok(Json(
        state
            .engine
            .drift_results(query.workflow.as_deref())
            .await?,
    ))
}

/// One feature: its configuration and its last 30 results, newest first.
#[utoipa::path(
    get,
    path = "/v1/drift/{workflow}/{feature}",
    tag = "drift",
    params(("workflow" = String, Path), ("feature" = String, Path)),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The feature's configuration and history", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or feature", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn feature_history(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath((workflow, feature)): ApiPath<(String, String)>,
) -> Result<Json<FeatureHistory>, Problem> {
    match state.engine.drift_history(&workflow, &feature).await? {
        Some(history) => Ok(Json(history)),
        None => Err(Problem::new(
            Kind::NotFound,
            format!("workflow `{workflow}` monitors no feature `{feature}`; GET /v1/drift?workflow={workflow} lists its results"),
        )),
    }
}
