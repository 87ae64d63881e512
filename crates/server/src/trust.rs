//! Progressive trust: every operation's phase with its evidence, recommendations, and
//! governors' decisions (promote, decline, demote). Reading needs `read_trust`; deciding
//! needs `govern_trust` (governor, admin) and, in the engine, one of the operation's
//! `approvers` roles and not being the author of the workflow version.

use axum::extract::State;
use axum::Json;
use keel_engine::trust::{OperationView, TrustChanged, TrustError};
use keel_store::RecommendationRow;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// Every operation (an action that uses AI output) with its phase and evidence.
#[utoipa::path(
    get,
    path = "/v1/trust",
    tag = "trust",
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Operations: phase, since when, reviews and agreements in the window, Wilson interval, the next phase's target, open recommendation", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_operations(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<Vec<OperationView>>, Problem> {
    Ok(Json(state.engine.trust_operations().await?))
}

/// One operation with its evidence.
#[utoipa::path(
    get,
    path = "/v1/trust/{workflow}/{step}",
    tag = "trust",
    params(("workflow" = String, Path), ("step" = String, Path)),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The operation", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_operation(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
) -> Result<Json<OperationView>, Problem> {
    let operation = format!("{workflow}/{step}");
    match state.engine.trust_operation(&operation).await? {
        Some(view) => Ok(Json(view)),
        None => Err(Problem::new(
            Kind::UnknownOperation,
            format!("no operation `{operation}`; GET /v1/trust lists them"),
        )),
    }
}

/// The statuses a recommendation can have.
pub(crate) const RECOMMENDATION_STATUSES: &[&str] = &["open", "approved", "declined", "stale"];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecommendationQuery {
    /// `open`, `approved`, `declined`, `stale`; all when absent.
    pub status: Option<String>,
}

/// Promotion recommendations with their evidence, newest first.
#[utoipa::path(
    get,
    path = "/v1/trust/recommendations",
    tag = "trust",
    params(RecommendationQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Recommendations", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_recommendations(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<RecommendationQuery>,
) -> Result<Json<Vec<RecommendationRow>>, Problem> {
    if let Some(status) = query.status.as_deref() {
        if !RECOMMENDATION_STATUSES.contains(&status) {
            return Err(Problem::new(
                Kind::InvalidParameter,
                format!("`status` is one of {RECOMMENDATION_STATUSES:?}, not `{status}`; leave it out for all"),
            ));
        }
    }
    Ok(Json(
        state
            .engine
            .trust_recommendations(query.status.as_deref())
            .await?,
    ))
}

/// A governor's decision, as the body of the promote, decline and demote endpoints.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TrustDecisionBody {
    /// Why (required; journaled with the evidence).
    pub reason: String,
    /// For demote: the phase to go to (default one down).
    #[serde(default, deserialize_with = "whole_number")]
    pub to: Option<i64>,
}

/// A whole number, also when written with a fraction (`2.0`): JSON does not tell them apart.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|n| n.fract() == 0.0 && n.abs() <= 9.0e15)
                .map(|n| n as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("`to` must be a whole phase number"))
}

fn parse(body: Option<Value>) -> Result<TrustDecisionBody, Problem> {
    let body = body.ok_or_else(|| {
        Problem::new(
            Kind::MalformedJson,
            "send {\"reason\": \"…\"} (and, to demote further than one phase, \"to\": N)",
        )
    })?;
    serde_json::from_value(body).map_err(|error| {
        Problem::new(
            Kind::InvalidParameter,
            format!("not a trust decision ({error}): send {{\"reason\": \"…\"}}"),
        )
    })
}

fn answer(result: Result<TrustChanged, TrustError>) -> Result<Json<TrustChanged>, Problem> {
    match result {
        Ok(changed) => Ok(Json(changed)),
        Err(TrustError::UnknownOperation(op)) => Err(Problem::new(
            Kind::UnknownOperation,
            format!("no operation `{op}`; GET /v1/trust lists them"),
        )),
        Err(TrustError::Forbidden(message)) => Err(Problem::new(Kind::TrustForbidden, message)),
        Err(TrustError::Invalid(message)) => Err(Problem::new(Kind::InvalidTrustChange, message)),
    }
}

/// Approve the operation's open promotion recommendation (governors; not the version's author).
#[utoipa::path(
    post,
    path = "/v1/trust/{workflow}/{step}/promote",
    tag = "trust",
    params(("workflow" = String, Path), ("step" = String, Path)),
    request_body(content = TrustDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Promoted", body = Value),
        (status = 403, description = "Not an approver, or the version's author (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No open recommendation, or it went stale", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn promote(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<TrustChanged>, Problem> {
    let body = parse(body)?;
    let operation = format!("{workflow}/{step}");
    answer(
        state
            .engine
            .trust_decide(&operation, &caller, true, &body.reason)
            .await?,
    )
}

/// Decline the operation's open promotion recommendation.
#[utoipa::path(
    post,
    path = "/v1/trust/{workflow}/{step}/decline",
    tag = "trust",
    params(("workflow" = String, Path), ("step" = String, Path)),
    request_body(content = TrustDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Declined", body = Value),
        (status = 404, description = "No such operation", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver, or the version's author (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No open recommendation", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn decline(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<TrustChanged>, Problem> {
    let body = parse(body)?;
    let operation = format!("{workflow}/{step}");
    answer(
        state
            .engine
            .trust_decide(&operation, &caller, false, &body.reason)
            .await?,
    )
}

/// Withdraw trust by hand: one phase down, or to `to`.
#[utoipa::path(
    post,
    path = "/v1/trust/{workflow}/{step}/demote",
    tag = "trust",
    params(("workflow" = String, Path), ("step" = String, Path)),
    request_body(content = TrustDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Demoted", body = Value),
        (status = 404, description = "No such operation", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Already in phase 1, or a bad target phase", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn demote(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<TrustChanged>, Problem> {
    let body = parse(body)?;
    let operation = format!("{workflow}/{step}");
    answer(
        state
            .engine
            .trust_demote(&operation, &caller, body.to, &body.reason)
            .await?,
    )
}

/// Accuracy and calibration of one operation: agreement with its Wilson interval overall and
/// per model, ECE and the reliability diagram of each model's raw confidences, the calibrator
/// in use, and (for `classify`) the confusion matrix of proposed against final labels.
#[utoipa::path(
    get,
    path = "/v1/trust/{workflow}/{step}/accuracy",
    tag = "trust",
    params(("workflow" = String, Path), ("step" = String, Path)),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Accuracy and calibration", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn accuracy(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
) -> Result<Json<keel_engine::calibration::Accuracy>, Problem> {
    let operation = format!("{workflow}/{step}");
    match state.engine.accuracy(&operation).await? {
        Some(accuracy) => Ok(Json(accuracy)),
        None => Err(Problem::new(
            Kind::UnknownOperation,
            format!("no operation `{operation}`; GET /v1/trust lists them"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_target_phase_is_a_whole_number_however_it_is_written() {
        for (to, expected) in [
            (json!(2), Some(2)),
            (json!(2.0), Some(2)),
            (json!(null), None),
        ] {
            let body = super::parse(Some(json!({"reason": "r", "to": to}))).ok();
            assert_eq!(body.map(|b| b.to), Some(expected), "{to}");
        }
        assert!(super::parse(Some(json!({"reason": "r", "to": 2.5}))).is_err());
        assert!(super::parse(Some(json!({"reason": "r"}))).is_ok_and(|b| b.to.is_none()));
    }
}
