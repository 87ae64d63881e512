//! Tasks: what people must decide (approval steps and actions that use AI output), listed,
//! shown and decided through the API. Every endpoint needs a token; a decision acts as the
//! token's user, with that user's roles and approval limit.

use axum::extract::State;
use axum::Json;
use keel_core::gate::TaskDecision;
use keel_engine::tasks::{Decided, DecisionError};
use keel_store::{TaskFilter, TaskRow};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// The kinds of task.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Approval,
    Action,
    Outcome,
    Review,
    RetroReview,
}

impl TaskKind {
    fn as_str(self) -> &'static str {
        match self {
            TaskKind::Approval => "approval",
            TaskKind::Action => "action",
            TaskKind::Outcome => "outcome",
            TaskKind::Review => "review",
            TaskKind::RetroReview => "retro_review",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// `open` (default), `approved`, `corrected`, `rejected`, or `all`.
    pub status: Option<String>,
    pub workflow: Option<String>,
    /// Only tasks the caller's roles may decide.
    #[serde(default)]
    pub mine: bool,
    /// Only tasks that the roles working this exception-desk queue may decide.
    pub queue: Option<String>,
    /// Only tasks of this kind: `approval`, `action` (an AI-influenced action), `outcome`,
    /// `review` (post-hoc) or `retro_review` (actions a demoted operation took on its own;
    /// listed most recent first).
    #[param(inline)]
    pub kind: Option<TaskKind>,
    /// At most this many (default 50, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The tasks, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(TaskQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Tasks, oldest first", body = Value),
        (status = 404, description = "No queue of that name", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<Vec<TaskRow>>, Problem> {
    let limit = crate::cases::page_limit(query.limit)?;
    let status = match query.status.as_deref() {
        None => Some("open".to_string()),
        Some("all") => None,
        Some(s @ ("open" | "approved" | "corrected" | "rejected")) => Some(s.to_string()),
        Some(other) => {
            return Err(Problem::new(
                Kind::InvalidParameter,
                format!(
                    "`status` {other:?} is not one of open, approved, corrected, rejected, all"
                ),
            ))
        }
    };
    let queue_roles = match &query.queue {
        None => None,
        Some(name) => {
            let Some(queue) = state.engine.desk().queue(name) else {
                let known: Vec<&str> = state
                    .engine
                    .desk()
                    .queues()
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect();
                return Err(Problem::new(
                    Kind::NotFound,
                    format!("no queue named `{name}`; the queues are {known:?} (GET /v1/queues)"),
                ));
            };
            Some(
                queue
                    .members
                    .iter()
                    .filter_map(|m| match m {
                        keel_core::desk::Member::Role(role) => Some(role.clone()),
                        keel_core::desk::Member::User(_) => None,
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let roles = match (query.mine.then_some(caller.roles), queue_roles) {
        (Some(mine), Some(queue)) => Some(mine.into_iter().filter(|r| queue.contains(r)).collect()),
        (mine, queue) => mine.or(queue),
    };
    let kind = query.kind.map(|k| k.as_str().to_string());
    let filter = TaskFilter {
        status,
        workflow: query.workflow,
        roles,
        newest_first: kind.as_deref() == Some(keel_engine::retro::RETRO_KIND),
        kind,
        limit,
    };
    Ok(Json(state.engine.tasks(&filter).await?))
}

/// One task with what it is about: the AI proposals, the action it gates, who decided.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The task", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_task(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TaskRow>, Problem> {
    match state.engine.task(&id).await? {
        Some(task) => Ok(Json(task)),
        None => Err(Problem::new(
            Kind::UnknownTask,
            format!("no task with id `{id}`"),
        )),
    }
}

/// A decision, as the body of `POST /v1/tasks/{id}/decision`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; the handler parses `TaskDecision` itself
pub struct DecisionBody {
    /// `approve`, `correct` (with `output`, and `step` when the action uses several AI steps)
    /// or `reject` (with `reason`).
    pub decision: String,
    pub output: Option<Value>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub comment: Option<String>,
}

/// Approve, correct or reject a task as the token's user.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/decision",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body(content = DecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Recorded; `result` is recorded (more approvals needed), approved, corrected or rejected", body = Value),
        (status = 400, description = "Malformed decision", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Refused: four-eyes, role, approval limit, repeated approver, invalid correction (journaled)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already decided", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn decide_task(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Decided>, Problem> {
    let body = body.ok_or_else(|| {
        Problem::new(
            Kind::MalformedJson,
            "send the decision as JSON, e.g. {\"decision\": \"approve\"}",
        )
    })?;
    let decision: TaskDecision = serde_json::from_value(body).map_err(|error| {
        Problem::new(
            Kind::InvalidParameter,
            format!("not a decision ({error}): send {{\"decision\": \"approve\"}}, {{\"decision\": \"correct\", \"output\": …}} or {{\"decision\": \"reject\", \"reason\": \"…\"}}"),
        )
    })?;
    if let TaskDecision::Reject { reason } = &decision {
        if reason.trim().is_empty() || reason.len() > 4_000 {
            return Err(Problem::new(
                Kind::InvalidParameter,
                "a rejection needs a `reason` of 1 to 4,000 characters",
            ));
        }
    }
    match state.engine.decide_task(&id, &caller, decision).await? {
        Ok(decided) => Ok(Json(decided)),
        Err(DecisionError::UnknownTask(id)) => Err(Problem::new(
            Kind::UnknownTask,
            format!("no task with id `{id}`"),
        )),
        Err(DecisionError::Closed(status)) => Err(Problem::new(
            Kind::TaskClosed,
            format!("the task is already {status}"),
        )),
        Err(DecisionError::Refused { code, message }) => Err(Problem::new(
            Kind::DecisionRefused,
            format!("{message} [{code}]"),
        )),
    }
}
