//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the store answers),
//! for load balancers and orchestrators.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok` (alive) or `ready`.
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

/// The process can reach its store and take requests.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, body = HealthBody),
        (status = 503, description = "The store cannot be reached", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthBody>, Problem> {
    // One row by primary key on the read pool: proves the store answers without the full
    // scan a count would cost on a large journal at every probe.
    let newest_case = keel_store::CaseFilter {
        limit: 1,
        ..Default::default()
    };
    match state.engine.store().cases(&newest_case).await {
        Ok(_) => Ok(Json(HealthBody { status: "ready" })),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed: the store does not answer");
            Err(Problem::new(
                Kind::NotReady,
                "the store does not answer; retry later",
            ))
        }
    }
}
