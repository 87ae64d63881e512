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
mod openapi_shapes;
mod problem;
mod reports;
mod routes;
mod sandbox;
mod tasks;
mod trust;
mod webhooks;
mod workflows;

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::Method;
use axum::Router;
use keel_engine::Engine;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa_swagger_ui::SwaggerUi;

pub use gateway::parse_chat_request;
pub use openapi::ApiDoc;
pub use routes::{Access, DeclaredRoute, Rule};

/// How the HTTP server behaves; `ServerOptions::default()` suits most deployments.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body accepted, in bytes; larger bodies get a 413 problem.
    pub max_body_bytes: usize,
    /// Serve the sandbox stand-ins for the example workflows' downstream systems under
    /// `/sandbox/` (they answer without a token, so they are off unless asked for).
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
            sandbox: false,
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
    /// Who may reach each route (the guard's table).
    pub routes: std::sync::Arc<routes::Table>,
}

/// The whole API over `engine`.
pub fn router(engine: Engine, options: ServerOptions) -> Router {
    let gateway_in_flight = engine
        .ai()
        .map_or(keel_ai::config::GATEWAY_MAX_IN_FLIGHT, |runtime| {
            runtime.config().gateway.max_in_flight
        });
    let (routes, table) = declare(&options).into_parts();
    let state = AppState {
        engine,
        openapi_json: openapi::document_bytes(&table.routes()),
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
        routes: std::sync::Arc::new(table),
    };
    let max_body_bytes = options.max_body_bytes;
    routes
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        // The guard wraps every route, however it was added: a route missing from the table
        // is denied to everyone.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .with_state(state)
        // The tower-http limit covers every way a body is read; axum's own default limit
        // would only duplicate it with a different number.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: axum::middleware::Next| {
                problem::payload_too_large_in_shape(request, next, max_body_bytes)
            },
        ))
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

/// Every route the server has with options `options`, and who may reach it: the table the
/// guard enforces (for tests and documentation).
pub fn route_table(options: &ServerOptions) -> Vec<DeclaredRoute> {
    declare(options).into_parts().1.routes()
}

/// The OpenAPI document the server serves at `/v1/openapi.json`.
pub fn openapi_document(options: &ServerOptions) -> serde_json::Value {
    openapi::document(&route_table(options))
}

/// Why the gateway is not behind the guard.
const GATEWAY_AUTHENTICATES_ITSELF: &str = "the gateway authenticates its token and asks Cedar for `use_gateway` itself, so that its errors keep OpenAI's shape";

/// The route table: each route with its handler and its access rule.
#[rustfmt::skip] // one route per line: a table
fn declare(options: &ServerOptions) -> routes::Routes {
    let routes = routes::Routes::new()
        .get("/healthz", health::healthz, Access::public("liveness probes carry no token"))
        .get("/readyz", health::readyz, Access::public("readiness probes carry no token"))
        .get("/v1/openapi.json", openapi::openapi_json, Access::public("clients read the API document before they have a token"))
        .post("/v1/chat/completions", gateway::chat_completions, Access::public(GATEWAY_AUTHENTICATES_ITSELF))
        .get("/v1/models", gateway::models, Access::public(GATEWAY_AUTHENTICATES_ITSELF))
        .get("/metrics", metrics::metrics, Access::ScrapeTokenOr(Rule { action: "read_audit", kind: "System", id_param: None }))
        .merge_public(
            SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/v1/openapi.json")).into(),
            &[(Method::GET, "/docs"), (Method::GET, "/docs/"), (Method::GET, "/docs/{*rest}")],
            "the documentation pages render the public API document",
        );
    let routes = v1_routes(routes);
    if options.sandbox {
        routes.merge_public(sandbox::router(), sandbox::ROUTES, "the sandbox stands in for the example workflows' downstream systems; it is served only with `keel serve --sandbox`")
    } else {
        routes
    }
}

/// The `/v1` endpoints, each with its Cedar action and resource.
#[rustfmt::skip] // one route per line: a table
fn v1_routes(routes: routes::Routes) -> routes::Routes {
    use Access as A;
    routes
        .get("/v1/workflows", workflows::list_workflows, A::system("read_workflows"))
        .post("/v1/workflows/{name}/cases", cases::submit_case, A::on("submit_case", "Workflow", "name"))
        .get("/v1/workflows/{name}/versions", workflows::list_versions, A::on("read_workflows", "Workflow", "name"))
        .post("/v1/workflows/{name}/versions/{version}/approve", workflows::approve_version, A::on("govern_trust", "Workflow", "name"))
        .post("/v1/workflows/{name}/versions/{version}/reject", workflows::reject_version, A::on("govern_trust", "Workflow", "name"))
        .get("/v1/cases", cases::list_cases, A::system("list_cases"))
        .get("/v1/cases/{id}", cases::get_case, A::on("read_case", "Case", "id"))
        .post("/v1/cases/{id}/signals/{name}", cases::signal_case, A::on("signal_case", "Case", "id"))
        .get("/v1/audit/checkpoint", audit::checkpoint, A::system("read_audit"))
        .get("/v1/audit/proof/inclusion", audit::inclusion_proof, A::system("read_audit"))
        .get("/v1/audit/proof/consistency", audit::consistency_proof, A::system("read_audit"))
        .get("/v1/tasks", tasks::list_tasks, A::system("read_tasks"))
        .get("/v1/tasks/{id}", tasks::get_task, A::on("read_tasks", "Task", "id"))
        .post("/v1/tasks/{id}/decision", tasks::decide_task, A::on("decide_task", "Task", "id"))
        .get("/v1/exceptions", exceptions::list_exceptions, A::system("read_exceptions"))
        .get("/v1/exceptions/patterns", exceptions::exception_patterns, A::system("read_exceptions"))
        .get("/v1/exceptions/{id}", exceptions::get_exception, A::system("read_exceptions"))
        // The resource is the exception (Cedar knows it as a `Case` resource by its id).
        .post("/v1/exceptions/{id}/resolution", exceptions::resolve_exception, A::on("resolve_exception", "Case", "id"))
        .get("/v1/queues", exceptions::list_queues, A::system("read_exceptions"))
        .get("/v1/drift", drift::list_results, A::system("read_trust"))
        .get("/v1/drift/{workflow}/{feature}", drift::feature_history, A::system("read_trust"))
        .get("/v1/trust", trust::list_operations, A::system("read_trust"))
        .get("/v1/trust/recommendations", trust::list_recommendations, A::system("read_trust"))
        .get("/v1/trust/{workflow}/{step}", trust::get_operation, A::system("read_trust"))
        .get("/v1/trust/{workflow}/{step}/accuracy", trust::accuracy, A::system("read_trust"))
        .post("/v1/trust/{workflow}/{step}/promote", trust::promote, A::on("govern_trust", "Workflow", "workflow"))
        .post("/v1/trust/{workflow}/{step}/decline", trust::decline, A::on("govern_trust", "Workflow", "workflow"))
        .post("/v1/trust/{workflow}/{step}/demote", trust::demote, A::on("govern_trust", "Workflow", "workflow"))
        .get("/v1/reports/costs", reports::costs, A::system("read_reports"))
        .get("/v1/reports/monthly", reports::monthly, A::system("read_reports"))
        .get("/v1/webhooks/deliveries", webhooks::list_deliveries, A::system("read_webhooks"))
        .get("/v1/webhooks/deliveries/{id}", webhooks::get_delivery, A::system("read_webhooks"))
        .get("/v1/learners", learners::list_learners, A::system("read_learners"))
        .post("/v1/learners/{workflow}/{step}/examples", learners::add_examples, A::on("teach_learner", "Workflow", "workflow"))
        .get("/v1/learners/{workflow}/{step}/versions", learners::list_versions, A::system("read_learners"))
        .post("/v1/learners/{workflow}/{step}/versions/{version}/force", learners::force_version, A::on("teach_learner", "Workflow", "workflow"))
        .post("/v1/learners/{workflow}/{step}/versions/{version}/approve", learners::approve_version, A::on("govern_trust", "Workflow", "workflow"))
        .post("/v1/learners/{workflow}/{step}/versions/{version}/reject", learners::reject_version, A::on("govern_trust", "Workflow", "workflow"))
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
