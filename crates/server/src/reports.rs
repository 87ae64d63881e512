//! Reports: the cost analysis and the monthly operational review. Reading needs
//! `read_reports` (admin, operator, governor, auditor). The monthly review comes as JSON,
//! Markdown or one self-contained HTML file.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_engine::report::CostReport;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Authenticated;
use crate::extract::ApiQuery;
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// A whole UTC month, `YYYY-MM` (instead of `from` and `to`).
    pub month: Option<String>,
    /// First UTC day, `YYYY-MM-DD` (default: the first of `to`'s month).
    pub from: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` (default: today).
    pub to: Option<String>,
}

/// Cost per case, operation, model and day; how each cascade settles its proposals and what it
/// saves against sending everything to its last tier; the month's projected spend against
/// the budgets of `keel.toml`.
#[utoipa::path(
    get,
    path = "/v1/reports/costs",
    tag = "reports",
    params(CostQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The cost analysis; `savings_estimator` states how savings are estimated", body = Value),
        (status = 400, description = "A date is not YYYY-MM-DD, or the period is longer than 366 days", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn costs(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<CostQuery>,
) -> Result<Json<CostReport>, Problem> {
    let report = match query.month.as_deref() {
        Some(_) if query.from.is_some() || query.to.is_some() => {
            return Err(Problem::new(
                Kind::InvalidParameter,
                "give either `month` or `from`/`to`, not both",
            ))
        }
        Some(month) => state.engine.cost_report_month(month).await?,
        None => {
            state
                .engine
                .cost_report(query.from.as_deref(), query.to.as_deref())
                .await?
        }
    };
    Ok(Json(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MonthlyQuery {
    /// The UTC month, `YYYY-MM` (default: the current month so far).
    pub month: Option<String>,
    /// `json` (default), `md` or `html`.
    pub format: Option<String>,
}

/// The monthly operational review per workflow: volume and automation, trust phases and their
/// changes with evidence, accuracy with Wilson intervals and calibration, cost and savings,
/// latency, SLA compliance, exceptions, drift alerts and recommendations.
#[utoipa::path(
    get,
    path = "/v1/reports/monthly",
    tag = "reports",
    params(MonthlyQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The review: JSON (application/json), Markdown (text/markdown) or one self-contained HTML file with inline SVG charts (text/html)", body = Value),
        (status = 400, description = "The month is not YYYY-MM or the format is unknown", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn monthly(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<MonthlyQuery>,
) -> Result<Response, Problem> {
    let format = query.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "md" | "markdown" | "html") {
        return Err(Problem::new(
            Kind::InvalidParameter,
            format!("unknown format `{format}`; use json, md or html"),
        ));
    }
    let report = state.engine.monthly_report(query.month.as_deref()).await?;
    Ok(match format {
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            keel_engine::report_render::html(&report),
        )
            .into_response(),
        "md" | "markdown" => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            keel_engine::report_render::markdown(&report),
        )
            .into_response(),
        _ => Json(report).into_response(),
    })
}
