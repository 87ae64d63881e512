//! Exceptions: cases parked for a person and SLA breaches, listed, shown, grouped into
//! patterns by fingerprint, and resolved through the API. Every endpoint needs a token; a
//! resolution acts as the token's user and needs the role operator, specialist or admin.

use axum::extract::State;
use axum::Json;
use keel_core::case::Resolution;
use keel_engine::exceptions::{ResolutionError, Resolved};
use keel_store::{ExceptionFilter, ExceptionRow, PatternRow};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExceptionQuery {
    /// `open` (default), `resolved`, or `all`.
    pub status: Option<String>,
    pub workflow: Option<String>,
    /// e.g. `ai_failed`, `rejected`, `sla_breach`.
    pub kind: Option<String>,
    /// Only exceptions with this fingerprint (see `/v1/exceptions/patterns`).
    pub fingerprint: Option<String>,
    /// Only this queue's, most urgent first.
    pub queue: Option<String>,
    /// Only those assigned to this user.
    pub assignee: Option<String>,
    /// `true`: the caller's work, most urgent first: assigned to them, or unassigned in a
    /// queue they work or escalated to one of their roles.
    #[serde(default)]
    pub mine: bool,
    /// At most this many (default 50, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The exceptions, oldest first.
#[utoipa::path(
    get,
    path = "/v1/exceptions",
    tag = "exceptions",
    params(ExceptionQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Exceptions, oldest first", body = Value),
        (status = 400, description = "Bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_exceptions(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ExceptionQuery>,
) -> Result<Json<Vec<ExceptionRow>>, Problem> {
    let limit = crate::cases::page_limit(query.limit)?;
    let status = match query.status.as_deref() {
        None => Some("open".to_string()),
        Some("all") => None,
        Some(s @ ("open" | "resolved")) => Some(s.to_string()),
        Some(other) => {
            return Err(Problem::new(
                Kind::InvalidParameter,
                format!("`status` {other:?} is not one of open, resolved, all"),
            ))
        }
    };
    let filter = ExceptionFilter {
        status,
        workflow: query.workflow,
        kind: query.kind,
        fingerprint: query.fingerprint,
        queue: query.queue,
        assignee: query.assignee,
        mine: query.mine.then(|| keel_store::Mine {
            queues: state.engine.queues_of(&caller.subject, &caller.roles),
            user: caller.subject.clone(),
            roles: caller.roles.clone(),
        }),
        limit,
    };
    Ok(Json(state.engine.exceptions(&filter).await?))
}

/// Exceptions grouped by fingerprint: counts per day and ISO week, open and resolved, median
/// time to resolve, and the trend of the last seven days against the seven before.
#[utoipa::path(
    get,
    path = "/v1/exceptions/patterns",
    tag = "exceptions",
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Patterns, the most frequent first", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn exception_patterns(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<Vec<PatternRow>>, Problem> {
    Ok(Json(state.engine.exception_patterns().await?))
}

/// One exception with its context: the case data and attempts as they were when it was raised.
#[utoipa::path(
    get,
    path = "/v1/exceptions/{id}",
    tag = "exceptions",
    params(("id" = String, Path, description = "Exception id")),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The exception", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such exception", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_exception(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ExceptionRow>, Problem> {
    match state.engine.exception(&id).await? {
        Some(exception) => Ok(Json(exception)),
        None => Err(Problem::new(
            Kind::UnknownException,
            format!("no exception with id `{id}`"),
        )),
    }
}

/// A resolution, as the body of `POST /v1/exceptions/{id}/resolution`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; the handler parses `Resolution` itself
pub struct ResolutionBody {
    /// `retry`, `provide_output` (with `output`), `skip` (with `to`: a step id), `cancel`,
    /// `assign` (with `to`: a user), `claim` (take it yourself), `escalate` (up its
    /// queue's ladder now) or `close` (with a `note`; only exceptions that do not hold their
    /// case, such as SLA breaches and remediated wrong actions).
    pub action: String,
    pub output: Option<Value>,
    pub to: Option<String>,
    pub note: Option<String>,
}

/// Resolve (or assign) an exception as the token's user: the case resumes or ends durably.
#[utoipa::path(
    post,
    path = "/v1/exceptions/{id}/resolution",
    tag = "exceptions",
    params(("id" = String, Path, description = "Exception id")),
    request_body(content = ResolutionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Applied; `case_status` is the case's status after it", body = Value),
        (status = 400, description = "Malformed resolution", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller's roles may not resolve exceptions (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such exception", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already resolved", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Cannot be applied: output fails the schema, unknown step or user (journaled)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn resolve_exception(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Resolved>, Problem> {
    let (resolution, note) = parse_resolution(body)?;
    match state
        .engine
        .resolve_exception(&id, &caller, resolution, note)
        .await?
    {
        Ok(resolved) => Ok(Json(resolved)),
        Err(ResolutionError::UnknownException(id)) => Err(Problem::new(
            Kind::UnknownException,
            format!("no exception with id `{id}`"),
        )),
        Err(ResolutionError::Closed(status)) => Err(Problem::new(
            Kind::ExceptionClosed,
            format!("the exception is already {status}"),
        )),
        Err(ResolutionError::Forbidden(message)) => {
            Err(Problem::new(Kind::ResolutionForbidden, message))
        }
        Err(ResolutionError::Invalid { code, message }) => Err(Problem::new(
            Kind::InvalidResolution,
            format!("{message} [{code}]"),
        )),
    }
}

const RESOLUTION_HELP: &str = "send {\"action\": \"retry\"}, {\"action\": \"provide_output\", \"output\": …}, {\"action\": \"skip\", \"to\": \"STEP\"}, {\"action\": \"cancel\"} {\"action\": \"assign\", \"to\": \"USER\"}, {\"action\": \"claim\"} or {\"action\": \"escalate\"}, each with an optional \"note\"";

fn parse_resolution(body: Option<Value>) -> Result<(Resolution, Option<String>), Problem> {
    let Some(Value::Object(mut fields)) = body else {
        return Err(Problem::new(
            Kind::MalformedJson,
            format!("send the resolution as a JSON object: {RESOLUTION_HELP}"),
        ));
    };
    let note = match fields.remove("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(note)) => Some(note),
        Some(_) => {
            return Err(Problem::new(
                Kind::InvalidParameter,
                "`note` must be a string",
            ))
        }
    };
    let resolution: Resolution =
        serde_json::from_value(Value::Object(fields)).map_err(|error| {
            Problem::new(
                Kind::InvalidParameter,
                format!("not a resolution ({error}): {RESOLUTION_HELP}"),
            )
        })?;
    Ok((resolution, note))
}

/// One queue of the exception desk as listed.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Roles by name, users as `user:NAME`.
    pub members: Vec<String>,
    pub skills: Vec<String>,
    /// `claim`, `round_robin` or `least_loaded`.
    pub assign: String,
    /// e.g. `4h` or `4h business`.
    pub sla: Option<String>,
    pub calendar: Option<String>,
    /// Each level: after how long (from when the exception was raised) and where to.
    pub escalation: Vec<Value>,
    /// Open exceptions in the queue now.
    pub open: i64,
}

/// The exception desk's queues with their members, SLA, ladder and depth.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "exceptions",
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Queues, as configured, with open counts", body = Vec<QueueView>),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_queues(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<Vec<QueueView>>, Problem> {
    let depth = state.engine.queue_depths().await?;
    let delay = |d: &keel_core::desk::Delay| match d {
        keel_core::desk::Delay::Elapsed(ms) => humanize_ms(*ms),
        keel_core::desk::Delay::Business(ms) => format!("{} business", humanize_ms(*ms)),
    };
    let views = state
        .engine
        .desk()
        .queues()
        .iter()
        .map(|queue| QueueView {
            name: queue.name.clone(),
            members: queue
                .members
                .iter()
                .map(|m| match m {
                    keel_core::desk::Member::User(u) => format!("user:{u}"),
                    keel_core::desk::Member::Role(r) => r.clone(),
                })
                .collect(),
            skills: queue.skills.clone(),
            assign: queue.assign.as_str().to_string(),
            sla: queue.sla.as_ref().map(delay),
            calendar: queue.calendar.as_ref().map(|c| c.name().to_string()),
            escalation: queue
                .escalation
                .iter()
                .map(|level| serde_json::json!({"after": delay(&level.after), "to": level.to.label()}))
                .collect(),
            open: depth
                .iter()
                .find(|(name, _)| name.as_deref() == Some(queue.name.as_str()))
                .map_or(0, |(_, n)| *n),
        })
        .collect();
    Ok(Json(views))
}

/// `90m` → `1h30m`.
fn humanize_ms(ms: u64) -> String {
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}
