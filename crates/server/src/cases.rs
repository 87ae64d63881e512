//! Cases: submit one (`POST /v1/workflows/{name}/cases`), read one with its timeline, list
//! them newest first with a cursor, and deliver a signal to one.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_core::case::{CaseState, Status};
use keel_engine::rfc3339_ms;
use keel_store::{CaseFilter, CaseRow, JournalRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// Longest `Idempotency-Key` accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Cases per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest `limit` accepted.
pub const MAX_PAGE: i64 = keel_store::MAX_PAGE;

/// What a submission returns; the same body whether the case is new or an earlier one.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedCase {
    pub case_id: String,
    pub workflow: String,
    pub workflow_version: i64,
    /// False when the `Idempotency-Key` matched an earlier case, which is returned instead.
    pub created: bool,
    pub status: String,
}

/// One case with everything known about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaseDetail {
    pub id: String,
    pub workflow: String,
    pub workflow_version: i64,
    /// `running`, `waiting`, `completed` or `failed`.
    pub status: String,
    /// The step the case is at; null once it finished.
    pub current_step: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub input: Value,
    /// Values produced by steps and signals, keyed by name.
    pub data: Value,
    /// The `end` step's outcome, once completed.
    pub outcome: Option<String>,
    /// Why the case failed, if it did.
    pub error: Option<CaseErrorBody>,
    pub sla_breached: bool,
    /// The next SLA deadline not yet breached (RFC 3339).
    pub sla_due_at: Option<String>,
    /// When the case next runs by itself: a timer, a signal timeout or a retry (RFC 3339).
    pub runnable_at: Option<String>,
    /// The case's journal entries, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaseErrorBody {
    /// A stable error kind such as `validation_failed` or `signal_timeout`.
    pub kind: String,
    pub step: Option<String>,
    pub message: String,
    pub details: Value,
}

/// One journal entry of a case.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub seq: i64,
    /// RFC 3339 with milliseconds.
    pub at: String,
    /// Such as `case.created`, `step.completed`, `signal.received`, `case.completed`.
    pub kind: String,
    pub step: Option<String>,
    pub actor: ActorBody,
    /// The entry's data; a string when it is not JSON (erased data).
    pub data: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorBody {
    /// `human`, `ai` or `system`.
    #[serde(rename = "type")]
    pub actor_type: String,
    pub id: String,
}

/// A page of cases, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaseList {
    pub cases: Vec<CaseSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaseSummary {
    pub id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub status: String,
    pub current_step: Option<String>,
    pub sla_breached: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CaseListQuery {
    /// Only cases of this workflow.
    pub workflow: Option<String>,
    /// Only cases in this status: `running`, `waiting`, `completed` or `failed`.
    pub status: Option<String>,
    /// Cases per page, 1 to 1000; default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The signal was recorded; the case consumes it when it waits for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalAccepted {
    pub case_id: String,
    pub signal: String,
}

/// Starts a case of the latest version of a workflow.
#[utoipa::path(
    post,
    path = "/v1/workflows/{name}/cases",
    tag = "cases",
    params(
        ("name" = String, Path, description = "Workflow name"),
        ("Idempotency-Key" = Option<String>, Header, description = "At most 255 characters; a repeated key returns the earlier case"),
    ),
    request_body(content = Value, description = "The case input; it must satisfy the workflow's input schema", content_type = "application/json"),
    responses(
        (status = 201, description = "Case created", body = SubmittedCase, headers(("Location" = String, description = "The case's URL"))),
        (status = 200, description = "The Idempotency-Key matched an earlier case", body = SubmittedCase),
        (status = 400, description = "Malformed JSON or a bad Idempotency-Key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Contended; retrying is safe", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The input fails the schema; every violation is listed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn submit_case(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(workflow): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(input): JsonBody,
) -> Result<Response, Problem> {
    let idempotency_key = idempotency_key(&headers)?;
    let submitted_by = Some(caller.subject);
    let input = input.ok_or_else(|| {
        Problem::new(
            Kind::MalformedJson,
            "the request body is empty; send the case input as JSON",
        )
    })?;
    let submitted = state
        .engine
        .submit_as(&workflow, input, idempotency_key, submitted_by)
        .await?;
    let body = SubmittedCase {
        case_id: submitted.case_id,
        workflow: submitted.workflow,
        workflow_version: submitted.workflow_version,
        created: submitted.created,
        status: submitted.status,
    };
    if !body.created {
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let location = format!("/v1/cases/{}", body.case_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// The `limit` of a listing: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when not given.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::new(
            Kind::InvalidParameter,
            format!("`limit` must be between 1 and {MAX_PAGE}, not {limit}"),
        ));
    }
    Ok(limit)
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        Problem::new(
            Kind::InvalidParameter,
            format!("the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

/// One case: its state, deadlines and timeline.
#[utoipa::path(
    get,
    path = "/v1/cases/{id}",
    tag = "cases",
    params(("id" = String, Path, description = "Case id")),
    responses(
        (status = 200, body = CaseDetail),
        (status = 404, description = "No such case", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_case(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CaseDetail>, Problem> {
    let row = state.engine.case(&id).await?;
    let case_state: CaseState = serde_json::from_str(&row.state).map_err(|error| {
        Problem::internal(&format!("case {id} has unreadable stored state: {error}"))
    })?;
    let timeline = state.engine.timeline(&id).await?;
    Ok(Json(case_detail(row, case_state, &timeline)))
}

fn case_detail(row: CaseRow, case_state: CaseState, timeline: &[JournalRow]) -> CaseDetail {
    CaseDetail {
        id: row.id,
        workflow: row.workflow,
        workflow_version: row.workflow_version,
        status: row.status,
        current_step: row.current_step,
        created_at: rfc3339_ms(row.created_at_ms),
        updated_at: rfc3339_ms(row.updated_at_ms),
        input: case_state.input,
        data: case_state.data,
        outcome: case_state.outcome,
        error: case_state.error.map(|error| CaseErrorBody {
            kind: error.kind,
            step: error.step,
            message: error.message,
            details: error.details,
        }),
        sla_breached: case_state.sla_breached,
        sla_due_at: row.sla_due_ms.map(rfc3339_ms),
        runnable_at: row.runnable_at_ms.map(rfc3339_ms),
        timeline: timeline.iter().map(timeline_entry).collect(),
    }
}

fn timeline_entry(row: &JournalRow) -> TimelineEntry {
    TimelineEntry {
        seq: row.seq,
        at: row.at.clone(),
        kind: row.kind.clone(),
        step: row.step.clone(),
        actor: ActorBody {
            actor_type: row.actor_type.clone(),
            id: row.actor_id.clone(),
        },
        data: serde_json::from_str(&row.data).unwrap_or_else(|_| Value::String(row.data.clone())),
    }
}

/// Cases newest first, filtered, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/cases",
    tag = "cases",
    params(CaseListQuery),
    responses(
        (status = 200, body = CaseList),
        (status = 400, description = "A bad limit, status or cursor", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_cases(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<CaseListQuery>,
) -> Result<Json<CaseList>, Problem> {
    let limit = page_limit(query.limit)?;
    if let Some(status) = &query.status {
        serde_json::from_value::<Status>(Value::String(status.clone())).map_err(|_| {
            Problem::new(
                Kind::InvalidParameter,
                "`status` must be one of running, waiting, completed, failed",
            )
        })?;
    }
    if let Some(cursor) = &query.cursor {
        uuid::Uuid::parse_str(cursor).map_err(|_| {
            Problem::new(
                Kind::InvalidParameter,
                "`cursor` is not one this server gave out; pass `next_cursor` as it is",
            )
        })?;
    }
    // One row more than asked tells whether another page exists. At the largest page the store
    // cannot return the extra row, so a full page then only says there may be more.
    let filter = CaseFilter {
        workflow: query.workflow,
        status: query.status,
        before_id: query.cursor,
        limit: limit + 1,
    };
    let mut rows = state.engine.cases(&filter).await?;
    let more = rows.len() as i64 > limit || (limit == MAX_PAGE && rows.len() as i64 == limit);
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|row| row.id.clone())
    } else {
        None
    };
    let cases = rows.into_iter().map(case_summary).collect();
    Ok(Json(CaseList { cases, next_cursor }))
}

fn case_summary(row: CaseRow) -> CaseSummary {
    CaseSummary {
        id: row.id,
        workflow: row.workflow,
        workflow_version: row.workflow_version,
        status: row.status,
        current_step: row.current_step,
        sla_breached: row.sla_breached,
        created_at: rfc3339_ms(row.created_at_ms),
        updated_at: rfc3339_ms(row.updated_at_ms),
    }
}

/// Delivers a named signal to a case; a case not yet waiting for it keeps it until it does.
#[utoipa::path(
    post,
    path = "/v1/cases/{id}/signals/{name}",
    tag = "cases",
    params(("id" = String, Path, description = "Case id"), ("name" = String, Path, description = "Signal name")),
    request_body(content = Option<Value>, description = "The signal's payload, any JSON; an empty body is null", content_type = "application/json"),
    responses(
        (status = 202, body = SignalAccepted),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such case", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The case has finished (`case-finished`: start a new case), or it was contended (retrying is safe)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Payload too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No `wait` step of the case's workflow version declares this signal (`undeclared-signal`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn signal_case(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath((case_id, signal)): ApiPath<(String, String)>,
    JsonBody(payload): JsonBody,
) -> Result<(StatusCode, Json<SignalAccepted>), Problem> {
    state
        .engine
        .signal(&case_id, &signal, payload.unwrap_or(Value::Null))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalAccepted { case_id, signal }),
    ))
}
