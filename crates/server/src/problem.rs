//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error the API sends goes through [`Problem`], so clients see one shape with a stable
//! `type` URI per kind of failure. Internal failures are logged here with their full detail and
//! reach the client only as a generic message: database errors and the like are not for callers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Prefix of every problem `type` URI; the slug of a [`Kind`] follows it.
const TYPE_PREFIX: &str = "https://keel.dev/problems/";
/// Seconds a client should wait before retrying against a node that is shutting down.
const SHUTTING_DOWN_RETRY_AFTER_S: u32 = 5;

/// The kinds of failure the API reports; each has a stable `type` URI, title and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The case input does not match the workflow's input schema.
    InvalidInput,
    /// The request body is not JSON.
    MalformedJson,
    /// A path, query or header parameter is missing or out of range.
    InvalidParameter,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnknownWorkflow,
    UnknownCase,
    /// No route matches the path.
    NotFound,
    MethodNotAllowed,
    /// The ledger has no signed checkpoint yet.
    NoCheckpoint,
    /// The case changed concurrently too many times.
    Contended,
    ShuttingDown,
    /// The store cannot be reached (readiness).
    NotReady,
    /// The workflow has no step of that id (learners).
    UnknownStep,
    /// The step has no learner: it is not an `ai` step with `task: classify`.
    NotClassifyStep,
    /// An example's label is not one of the step's labels.
    UnknownLabel,
    /// A batch of labelled examples is empty, too large, or names a case it cannot use.
    InvalidExamples,
    /// No valid API token.
    Unauthenticated,
    /// The token's user may not do this (Cedar denied it).
    Forbidden,
    /// A person's decision was refused (four-eyes, role, limit, distinct approvers).
    DecisionRefused,
    UnknownTask,
    /// The task is already decided.
    TaskClosed,
    UnknownException,
    UnknownOperation,
    /// No such workflow or learner version.
    UnknownVersion,
    /// The version's state does not allow the decision (not pending, superseded, no request).
    VersionConflict,
    TrustForbidden,
    InvalidTrustChange,
    /// The exception is already resolved.
    ExceptionClosed,
    /// The caller's roles may not resolve exceptions.
    ResolutionForbidden,
    /// A resolution that cannot be applied (output fails the schema, unknown step or user).
    InvalidResolution,
    /// A signal to a case that has finished.
    CaseFinished,
    /// A signal no `wait` step of the case's workflow version declares.
    UndeclaredSignal,
    Internal,
}

impl Kind {
    pub fn slug(self) -> &'static str {
        match self {
            Kind::InvalidInput => "invalid-input",
            Kind::MalformedJson => "malformed-json",
            Kind::InvalidParameter => "invalid-parameter",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::UnknownWorkflow => "unknown-workflow",
            Kind::UnknownCase => "unknown-case",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::NoCheckpoint => "no-checkpoint",
            Kind::Contended => "contended",
            Kind::ShuttingDown => "shutting-down",
            Kind::NotReady => "not-ready",
            Kind::UnknownStep => "unknown-step",
            Kind::NotClassifyStep => "not-classify-step",
            Kind::UnknownLabel => "unknown-label",
            Kind::InvalidExamples => "invalid-examples",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Forbidden => "forbidden",
            Kind::DecisionRefused => "decision-refused",
            Kind::UnknownTask => "unknown-task",
            Kind::TaskClosed => "task-closed",
            Kind::UnknownException => "unknown-exception",
            Kind::UnknownOperation => "unknown-operation",
            Kind::UnknownVersion => "unknown-version",
            Kind::VersionConflict => "version-conflict",
            Kind::TrustForbidden => "trust-forbidden",
            Kind::InvalidTrustChange => "invalid-trust-change",
            Kind::ExceptionClosed => "exception-closed",
            Kind::ResolutionForbidden => "resolution-forbidden",
            Kind::InvalidResolution => "invalid-resolution",
            Kind::CaseFinished => "case-finished",
            Kind::UndeclaredSignal => "undeclared-signal",
            Kind::Internal => "internal",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::InvalidInput => "The input does not match the workflow's input schema",
            Kind::MalformedJson => "The request body is not valid JSON",
            Kind::InvalidParameter => "A request parameter is invalid",
            Kind::PayloadTooLarge => "The request body is too large",
            Kind::UnsupportedMediaType => "The request body must be JSON",
            Kind::UnknownWorkflow => "No such workflow",
            Kind::UnknownCase => "No such case",
            Kind::NotFound => "No such resource",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::NoCheckpoint => "No checkpoint yet",
            Kind::Contended => "The case is contended",
            Kind::ShuttingDown => "The server is shutting down",
            Kind::NotReady => "The server is not ready",
            Kind::UnknownStep => "No such step",
            Kind::NotClassifyStep => "The step has no learner",
            Kind::UnknownLabel => "The label is not one of the step's labels",
            Kind::InvalidExamples => "The examples cannot be learnt",
            Kind::Unauthenticated => "A valid API token is required",
            Kind::Forbidden => "Not allowed",
            Kind::DecisionRefused => "The decision is not allowed",
            Kind::UnknownTask => "No such task",
            Kind::TaskClosed => "The task is already decided",
            Kind::UnknownException => "No such exception",
            Kind::UnknownOperation => "No such operation",
            Kind::UnknownVersion => "No such version",
            Kind::VersionConflict => "The version's state does not allow this",
            Kind::TrustForbidden => "Not allowed to change this operation's trust",
            Kind::InvalidTrustChange => "The trust change cannot be made",
            Kind::ExceptionClosed => "The exception is already resolved",
            Kind::ResolutionForbidden => "Your roles may not resolve exceptions",
            Kind::InvalidResolution => "The resolution cannot be applied",
            Kind::CaseFinished => "The case has finished",
            Kind::UndeclaredSignal => "The workflow waits for no such signal",
            Kind::Internal => "Internal error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Kind::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::MalformedJson | Kind::InvalidParameter => StatusCode::BAD_REQUEST,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::UnknownWorkflow | Kind::UnknownCase | Kind::NotFound | Kind::NoCheckpoint => {
                StatusCode::NOT_FOUND
            }
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Contended => StatusCode::CONFLICT,
            Kind::ShuttingDown | Kind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Kind::UnknownStep => StatusCode::NOT_FOUND,
            Kind::NotClassifyStep | Kind::UnknownLabel | Kind::InvalidExamples => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::DecisionRefused => StatusCode::FORBIDDEN,
            Kind::UnknownTask => StatusCode::NOT_FOUND,
            Kind::TaskClosed => StatusCode::CONFLICT,
            Kind::UnknownException => StatusCode::NOT_FOUND,
            Kind::UnknownOperation | Kind::UnknownVersion => StatusCode::NOT_FOUND,
            Kind::VersionConflict => StatusCode::CONFLICT,
            Kind::TrustForbidden => StatusCode::FORBIDDEN,
            Kind::InvalidTrustChange => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::ExceptionClosed => StatusCode::CONFLICT,
            Kind::ResolutionForbidden => StatusCode::FORBIDDEN,
            Kind::InvalidResolution | Kind::UndeclaredSignal => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::CaseFinished => StatusCode::CONFLICT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct Problem {
    kind: Kind,
    detail: String,
    violations: Vec<keel_core::schema::Violation>,
}

/// The wire shape of a problem (RFC 9457), for the OpenAPI document and the serializer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A stable URI naming the kind of problem, e.g. `https://keel.dev/problems/invalid-input`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence, and what to do about it.
    pub detail: String,
    /// Every schema violation of the input (`invalid-input` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<ViolationBody>>,
}

/// One way the input fails the workflow's input schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViolationBody {
    /// JSON pointer into the input (`""` is the whole input).
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            detail: detail.into(),
            violations: Vec::new(),
        }
    }

    /// An internal failure: the detail is logged and the client gets a generic message.
    pub fn internal(error: &dyn std::fmt::Display) -> Problem {
        tracing::error!(%error, "request failed with an internal error");
        Problem::new(
            Kind::Internal,
            "the server failed to handle the request; the cause is in its log. Retrying reads is \
             safe; retry a submission only with the same Idempotency-Key",
        )
    }

    fn body(&self) -> ProblemBody {
        let violations = (self.kind == Kind::InvalidInput).then(|| {
            self.violations
                .iter()
                .map(|violation| ViolationBody {
                    path: violation.path.clone(),
                    message: violation.message.clone(),
                })
                .collect()
        });
        ProblemBody {
            problem_type: format!("{TYPE_PREFIX}{}", self.kind.slug()),
            title: self.kind.title().to_string(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
            violations,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.body()) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot serialize a problem");
                Vec::new()
            }
        };
        let mut response = (self.kind.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if self.kind == Kind::ShuttingDown {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(SHUTTING_DOWN_RETRY_AFTER_S),
            );
        }
        response
    }
}

impl From<keel_engine::Error> for Problem {
    fn from(error: keel_engine::Error) -> Problem {
        use keel_engine::Error;
        let detail = error.to_string();
        match error {
            Error::UnknownWorkflow(_) => Problem::new(Kind::UnknownWorkflow, detail),
            Error::UnknownCase(_) => Problem::new(Kind::UnknownCase, detail),
            Error::InvalidInput(violations) => Problem {
                kind: Kind::InvalidInput,
                detail,
                violations,
            },
            Error::TooLarge { .. } => Problem::new(Kind::PayloadTooLarge, detail),
            Error::Contended => Problem::new(Kind::Contended, detail),
            Error::ShuttingDown => Problem::new(Kind::ShuttingDown, detail),
            Error::BadProofRequest(_) | Error::InvalidRequest(_) => {
                Problem::new(Kind::InvalidParameter, detail)
            }
            Error::NoCheckpoint(_) => Problem::new(Kind::NoCheckpoint, detail),
            Error::CaseFinished { .. } => Problem::new(Kind::CaseFinished, detail),
            Error::UndeclaredSignal { .. } => Problem::new(Kind::UndeclaredSignal, detail),
            Error::Store(_) | Error::CorruptState(_) | Error::Ledger(_) | Error::Io(_) => {
                Problem::internal(&error)
            }
        }
    }
}

/// Replaces a plain-text 413 (from the request-body limit layer, which answers before any
/// handler runs) with a problem, or with OpenAI's error shape on the gateway's routes, so that
/// no error leaves the server in another shape.
pub async fn payload_too_large_in_shape(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    max_body_bytes: usize,
) -> Response {
    let gateway = crate::gateway::PATHS.contains(&request.uri().path());
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/") && value.contains("json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    if gateway {
        return crate::gateway::payload_too_large(max_body_bytes);
    }
    Problem::new(
        Kind::PayloadTooLarge,
        format!("the request body is larger than the limit of {max_body_bytes} bytes"),
    )
    .into_response()
}

/// Fallback for paths no route matches.
pub async fn not_found() -> Problem {
    Problem::new(
        Kind::NotFound,
        "no resource at this path; GET /v1/openapi.json lists every endpoint",
    )
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        Kind::MethodNotAllowed,
        "this path does not accept this method; GET /v1/openapi.json lists every endpoint",
    )
}
