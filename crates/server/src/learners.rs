//! Learners: list the newest version of each (`GET /v1/learners`) and every version of one;
//! teach one a batch of labelled examples (`POST /v1/learners/{workflow}/{step}/examples`),
//! which stores a *challenger* that serves only once shown non-inferior to the serving
//! version on reviewed outcomes; and ask to serve a version without its test (an operator),
//! which a governor who did not ask approves or rejects.

use axum::extract::State;
use axum::Json;
use keel_engine::learn::{self, Example, MAX_EXAMPLES_PER_BATCH};
use keel_engine::rfc3339_ms;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::extract::{ApiPath, JsonBody};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// The latest stored version of every learner.
#[derive(Debug, Serialize, ToSchema)]
pub struct LearnerList {
    pub learners: Vec<LearnerSummary>,
}

/// The latest stored version of one learner.
#[derive(Debug, Serialize, ToSchema)]
pub struct LearnerSummary {
    pub workflow: String,
    /// The `classify` step the learner answers for.
    pub step: String,
    /// 1, 2, …: one per training run or update batch (the newest).
    pub version: i64,
    /// The newest version's status: `challenger`, `serving`, `retired` or `failed`.
    pub status: String,
    /// The version the cascade answers with (none until one passes its test).
    pub serving_version: Option<i64>,
    /// Examples learnt from over the learner's whole life.
    pub examples: i64,
    /// What the version was learnt from: `file`, `cli:FILE`, `api`, `case:ID`.
    pub source: String,
    /// RFC 3339 with milliseconds.
    pub created_at: String,
}

/// A batch of labelled examples; each has a `text`, or a `case_id` whose rendered prompt for
/// this step is the text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExamplesRequest {
    /// 1 to 1000 examples.
    pub examples: Vec<ExampleBody>,
}

/// `{"text", "label"}` or `{"case_id", "label"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExampleBody {
    Text(TextExample),
    Case(CaseExample),
}

/// A text and its label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextExample {
    pub text: String,
    /// One of the step's labels.
    pub label: String,
}

/// A case whose rendered prompt for this step is the text, and its label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseExample {
    pub case_id: String,
    /// One of the step's labels.
    pub label: String,
}

/// The version the batch was stored as.
#[derive(Debug, Serialize, ToSchema)]
pub struct Learned {
    pub version: i64,
    /// Examples learnt from over the learner's whole life, this batch included.
    pub examples: u64,
    /// After its test: `serving`, `failed` (kept, never served) or `challenger` (it waits for
    /// enough reviewed outcomes to be tested).
    pub status: String,
}

/// Lists the latest stored version of every learner.
#[utoipa::path(
    get,
    path = "/v1/learners",
    tag = "learners",
    responses((status = 200, body = LearnerList))
)]
pub async fn list_learners(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<LearnerList>, Problem> {
    let learners = state
        .engine
        .learners()
        .await
        .map_err(problem)?
        .into_iter()
        .map(|row| LearnerSummary {
            workflow: row.workflow,
            step: row.step,
            version: row.version,
            status: row.status,
            serving_version: row.serving_version,
            examples: row.examples,
            source: row.source,
            created_at: rfc3339_ms(row.created_at_ms),
        })
        .collect();
    Ok(Json(LearnerList { learners }))
}

/// Teaches the learner of a `classify` step a batch of labelled examples: stores a new version
/// (journal entry `learner.updated`) and uses it for the next cases at once.
#[utoipa::path(
    post,
    path = "/v1/learners/{workflow}/{step}/examples",
    tag = "learners",
    params(
        ("workflow" = String, Path, description = "Workflow name"),
        ("step" = String, Path, description = "The `classify` step's id"),
    ),
    request_body(content = ExamplesRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Learnt and stored", body = Learned),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or step", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a classify step, an unknown label, or an empty, oversized or unusable batch", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn add_examples(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Learned>, Problem> {
    let examples = parse_examples(body)?;
    let learned = state
        .engine
        .learn_examples(
            &workflow,
            &step,
            examples,
            "api",
            learn::Actor::caller(&caller),
        )
        .await
        .map_err(problem)?;
    Ok(Json(Learned {
        version: learned.version,
        examples: learned.examples,
        status: learned.status,
    }))
}

/// One stored version (no model bytes).
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: i64,
    /// `challenger`, `serving`, `retired` or `failed`.
    pub status: String,
    pub examples: i64,
    pub source: String,
    pub created_at: String,
    /// Who asked to serve it without its test (a governor decides).
    pub requested_by: Option<String>,
    /// The last test: its name, margin, α, n, both accuracies, the difference and its bound.
    pub evidence: Value,
}

/// Every stored version of one learner, newest first, with its status and last test.
#[utoipa::path(
    get,
    path = "/v1/learners/{workflow}/{step}/versions",
    tag = "learners",
    params(("workflow" = String, Path), ("step" = String, Path)),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Versions, newest first", body = [VersionSummary]),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such learner", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_versions(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
) -> Result<Json<Vec<VersionSummary>>, Problem> {
    let rows = state
        .engine
        .learner_versions(&workflow, &step)
        .await
        .map_err(problem)?;
    if rows.is_empty() {
        return Err(Problem::new(
            Kind::UnknownVersion,
            format!(
                "learner `{workflow}/{step}` has no stored version; GET /v1/learners lists them"
            ),
        ));
    }
    Ok(Json(
        rows.into_iter()
            .map(|row| VersionSummary {
                version: row.version,
                status: row.status,
                examples: row.examples,
                source: row.source,
                created_at: rfc3339_ms(row.created_at_ms),
                requested_by: row.requested_by,
                evidence: serde_json::from_str(&row.evidence).unwrap_or(Value::Null),
            })
            .collect(),
    ))
}

/// Ask to serve a version without its test (operator): it serves only when a governor who
/// did not ask approves.
#[utoipa::path(
    post,
    path = "/v1/learners/{workflow}/{step}/versions/{version}/force",
    tag = "learners",
    params(("workflow" = String, Path), ("step" = String, Path), ("version" = i64, Path)),
    request_body(content = crate::workflows::VersionDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Requested: waits for a governor", body = Value),
        (status = 400, description = "No reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The version serves already or has a request open", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn force_version(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step, version)): ApiPath<(String, String, i64)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Problem> {
    let reason = crate::workflows::parse_reason(body)?;
    forced(
        state
            .engine
            .learner_force(&workflow, &step, version, &caller, &reason)
            .await
            .map_err(problem)?,
    )
}

/// Approve a request to serve a version without its test (a governor who did not ask).
#[utoipa::path(
    post,
    path = "/v1/learners/{workflow}/{step}/versions/{version}/approve",
    tag = "learners",
    params(("workflow" = String, Path), ("step" = String, Path), ("version" = i64, Path)),
    request_body(content = crate::workflows::VersionDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "The version serves", body = Value),
        (status = 400, description = "No reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "No request is open, or the version changed meanwhile", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver, or the one who asked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn approve_version(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step, version)): ApiPath<(String, String, i64)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Problem> {
    let reason = crate::workflows::parse_reason(body)?;
    forced(
        state
            .engine
            .learner_decide_force(&workflow, &step, version, &caller, true, &reason)
            .await
            .map_err(problem)?,
    )
}

/// Reject a request to serve a version without its test.
#[utoipa::path(
    post,
    path = "/v1/learners/{workflow}/{step}/versions/{version}/reject",
    tag = "learners",
    params(("workflow" = String, Path), ("step" = String, Path), ("version" = i64, Path)),
    request_body(content = crate::workflows::VersionDecisionBody, content_type = "application/json"),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Rejected: the version keeps its status", body = Value),
        (status = 400, description = "No reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "No request is open, or the version changed meanwhile", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn reject_version(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((workflow, step, version)): ApiPath<(String, String, i64)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Problem> {
    let reason = crate::workflows::parse_reason(body)?;
    forced(
        state
            .engine
            .learner_decide_force(&workflow, &step, version, &caller, false, &reason)
            .await
            .map_err(problem)?,
    )
}

fn forced(result: Result<Value, learn::ForceError>) -> Result<Json<Value>, Problem> {
    match result {
        Ok(value) => Ok(Json(value)),
        Err(error @ learn::ForceError::UnknownVersion { .. }) => {
            Err(Problem::new(Kind::UnknownVersion, error.to_string()))
        }
        Err(learn::ForceError::Forbidden(message)) => {
            Err(Problem::new(Kind::TrustForbidden, message))
        }
        Err(learn::ForceError::Invalid(message)) => {
            Err(Problem::new(Kind::InvalidParameter, message))
        }
        Err(learn::ForceError::Conflict(message)) => {
            Err(Problem::new(Kind::VersionConflict, message))
        }
    }
}

fn parse_examples(body: Option<Value>) -> Result<Vec<Example>, Problem> {
    let body = body.ok_or_else(|| {
        Problem::new(
            Kind::MalformedJson,
            "the request body is empty; send {\"examples\": [{\"text\": …, \"label\": …}]}",
        )
    })?;
    let request: ExamplesRequest = serde_json::from_value(body).map_err(|error| {
        Problem::new(
            Kind::InvalidExamples,
            format!("the body must be {{\"examples\": [{{\"text\": string, \"label\": string}} or {{\"case_id\": string, \"label\": string}}, …]}} with at most {MAX_EXAMPLES_PER_BATCH} examples: {error}"),
        )
    })?;
    Ok(request
        .examples
        .into_iter()
        .map(|example| match example {
            ExampleBody::Text(TextExample { text, label }) => Example::Text { text, label },
            ExampleBody::Case(CaseExample { case_id, label }) => Example::Case { case_id, label },
        })
        .collect())
}

fn problem(error: learn::Error) -> Problem {
    use learn::Error;
    let detail = error.to_string();
    match error {
        Error::UnknownWorkflow(_) => Problem::new(Kind::UnknownWorkflow, detail),
        Error::UnknownStep { .. } => Problem::new(Kind::UnknownStep, detail),
        Error::NotClassify { .. } => Problem::new(Kind::NotClassifyStep, detail),
        Error::UnknownLabel { .. } | Error::Learner(_) => Problem::new(Kind::UnknownLabel, detail),
        Error::EmptyBatch
        | Error::TooManyExamples { .. }
        | Error::UnknownCase(_)
        | Error::CaseOfOtherWorkflow { .. }
        | Error::NoPrompt { .. } => Problem::new(Kind::InvalidExamples, detail),
        Error::CorruptModel { .. } | Error::CorruptState(_) | Error::Store(_) | Error::Moved => {
            Problem::internal(&error)
        }
    }
}
