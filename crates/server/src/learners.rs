//! Learners: list the latest version of each (`GET /v1/learners`) and teach one a batch of
//! labelled examples (`POST /v1/learners/{workflow}/{step}/examples`), which stores a new
//! version and makes the running cascade answer with it at once.

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
    /// 1, 2, …: one per training run or update batch.
    pub version: i64,
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
    _caller: Authenticated,
    ApiPath((workflow, step)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Learned>, Problem> {
    let examples = parse_examples(body)?;
    let learned = state
        .engine
        .learn_examples(&workflow, &step, examples, "api")
        .await
        .map_err(problem)?;
    Ok(Json(Learned {
        version: learned.version,
        examples: learned.examples,
    }))
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
        Error::CorruptModel { .. } | Error::CorruptState(_) | Error::Store(_) => {
            Problem::internal(&error)
        }
    }
}
