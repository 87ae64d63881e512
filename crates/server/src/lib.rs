//! Keel's HTTP API: the only crate that knows HTTP.
//!
//! [`router`] builds the axum application over a running [`Engine`]; [`serve`] runs it on a
//! listener until a shutdown future resolves. Handlers are thin: they parse the request, call
//! one engine method and shape the answer. Every error leaves as an RFC 9457 problem
//! ([`problem`]); the OpenAPI document at `/v1/openapi.json` describes every endpoint and the
//! Swagger UI at `/docs` renders it.

mod audit;
mod auth;
mod cases;
mod connections;
mod drift;
mod exceptions;
mod extract;
mod gateway;
mod guard;
mod health;
mod learners;
mod metrics;
mod openapi;
mod problem;
mod reports;
mod sandbox;
mod tasks;
mod trust;
mod webhooks;
mod workflows;

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::routing::{get, post};
use axum::Router;
use keel_engine::Engine;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa_swagger_ui::SwaggerUi;

pub use gateway::parse_chat_request;
pub use openapi::ApiDoc;

/// How the HTTP server behaves; `ServerOptions::default()` suits most deployments.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body accepted, in bytes; larger bodies get a 413 problem.
    pub max_body_bytes: usize,
    /// Serve the sandbox stand-ins for the example workflows' downstream systems under `/sandbox/`.
    pub sandbox: bool,
    /// Cedar policies (built-in roles plus the deployment's); `None` is the built-in roles.
    pub authorizer: Option<std::sync::Arc<keel_engine::authz::Authorizer>>,
    /// A secret that may read `/metrics` without a user token (Prometheus scrapers).
    pub metrics_token: Option<String>,
    /// Connections open at once, at most; a connection beyond it is answered 503 with
    /// `Retry-After` and closed. Each open connection holds buffers, so this bounds memory.
    pub max_connections: usize,
}

/// Default of [`ServerOptions::max_connections`].
pub const MAX_CONNECTIONS: usize = 1024;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 2 * 1024 * 1024,
            sandbox: true,
            authorizer: None,
            metrics_token: None,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    /// The OpenAPI document, serialized once.
    pub openapi_json: Bytes,
    /// Gateway chat requests in flight (`[gateway] max_in_flight`); beyond it, 503 at once.
    pub gateway_permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Body bytes the gateway buffers at once, in KiB ([`gateway::MAX_BUFFERED_BODY_BYTES`]).
    pub gateway_body_budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// `ServerOptions::max_body_bytes`.
    pub max_body_bytes: usize,
    /// Who may do what (Cedar); `None` only if the built-in policies failed to load (then
    /// every guarded request is denied).
    pub authorizer: Option<std::sync::Arc<keel_engine::authz::Authorizer>>,
    /// `ServerOptions::metrics_token`.
    pub metrics_token: Option<std::sync::Arc<str>>,
}

/// The whole API over `engine`.
pub fn router(engine: Engine, options: ServerOptions) -> Router {
    let gateway_in_flight = engine
        .ai()
        .map_or(keel_ai::config::GATEWAY_MAX_IN_FLIGHT, |runtime| {
            runtime.config().gateway.max_in_flight
        });
    let state = AppState {
        engine,
        openapi_json: openapi::document_bytes(),
        gateway_permits: std::sync::Arc::new(tokio::sync::Semaphore::new(gateway_in_flight)),
        gateway_body_budget: std::sync::Arc::new(tokio::sync::Semaphore::new(
            gateway::MAX_BUFFERED_BODY_BYTES / gateway::BODY_BUDGET_UNIT_BYTES,
        )),
        max_body_bytes: options.max_body_bytes,
        authorizer: options.authorizer.clone().or_else(|| {
            match keel_engine::authz::Authorizer::built_in() {
                Ok(authorizer) => Some(std::sync::Arc::new(authorizer)),
                Err(errors) => {
                    tracing::error!(
                        ?errors,
                        "the built-in Cedar policies do not load; denying every guarded request"
                    );
                    None
                }
            }
        }),
        metrics_token: options.metrics_token.as_deref().map(std::sync::Arc::from),
    };
    let max_body_bytes = options.max_body_bytes;
    let sandbox = if options.sandbox {
        sandbox::router()
    } else {
        Router::new()
    };
    let guarded = Router::new()
        .route("/v1/workflows", get(workflows::list_workflows))
        .route("/v1/workflows/{name}/cases", post(cases::submit_case))
        .route("/v1/cases", get(cases::list_cases))
        .route("/v1/cases/{id}", get(cases::get_case))
        .route("/v1/cases/{id}/signals/{name}", post(cases::signal_case))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit::inclusion_proof))
        .route("/v1/audit/proof/consistency", get(audit::consistency_proof))
        .route("/v1/tasks", get(tasks::list_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/decision", post(tasks::decide_task))
        .route("/v1/exceptions", get(exceptions::list_exceptions))
        .route("/v1/queues", get(exceptions::list_queues))
        .route("/v1/drift", get(drift::list_results))
        .route(
            "/v1/drift/{workflow}/{feature}",
            get(drift::feature_history),
        )
        .route("/v1/trust", get(trust::list_operations))
        .route(
            "/v1/trust/recommendations",
            get(trust::list_recommendations),
        )
        .route("/v1/trust/{workflow}/{step}", get(trust::get_operation))
        .route("/v1/trust/{workflow}/{step}/accuracy", get(trust::accuracy))
        .route("/v1/trust/{workflow}/{step}/promote", post(trust::promote))
        .route("/v1/trust/{workflow}/{step}/decline", post(trust::decline))
        .route("/v1/trust/{workflow}/{step}/demote", post(trust::demote))
        .route(
            "/v1/exceptions/patterns",
            get(exceptions::exception_patterns),
        )
        .route("/v1/exceptions/{id}", get(exceptions::get_exception))
        .route(
            "/v1/exceptions/{id}/resolution",
            post(exceptions::resolve_exception),
        )
        .route("/v1/reports/costs", get(reports::costs))
        .route("/v1/reports/monthly", get(reports::monthly))
        .route("/v1/webhooks/deliveries", get(webhooks::list_deliveries))
        .route("/v1/webhooks/deliveries/{id}", get(webhooks::get_delivery))
        .route("/v1/learners", get(learners::list_learners))
        .route(
            "/v1/learners/{workflow}/{step}/examples",
            post(learners::add_examples),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ));
    let metrics = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::scrape_token_or_guard,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(guarded)
        .merge(metrics)
        .route("/v1/chat/completions", post(gateway::chat_completions))
        .route("/v1/models", get(gateway::models))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/v1/openapi.json")))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .with_state(state)
        .merge(sandbox)
        // The tower-http limit covers every way a body is read; axum's own default limit
        // would only duplicate it with a different number.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(axum::middleware::map_response(move |response| async move {
            problem::payload_too_large_as_problem(response, max_body_bytes)
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                )
                .on_failure(DefaultOnFailure::new().level(Level::ERROR)),
        )
}

/// One span per request, named by its route so that logs group by endpoint.
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        route,
    )
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving the HTTP API");
    }
    let listener = connections::LimitedListener::new(listener, options.max_connections);
    axum::serve(listener, router(engine, options))
        .with_graceful_shutdown(shutdown)
        .await
}
