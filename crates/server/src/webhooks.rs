//! The outbound-webhook delivery log: what Keel sent to each receiver, whether it arrived, and
//! every attempt. Reading needs `read_webhooks` (admin, operator, governor, auditor): payloads
//! carry case data.

use axum::extract::State;
use axum::Json;
use keel_store::{WebhookAttemptRow, WebhookDeliveryFilter, WebhookDeliveryRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::IntoParams;

use crate::auth::Authenticated;
use crate::extract::{ApiPath, ApiQuery};
use crate::problem::{Kind, Problem, ProblemBody};
use crate::AppState;

/// Statuses a delivery can have.
const STATUSES: &[&str] = &["pending", "delivered", "failed"];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only this endpoint (its `name` in keel.toml).
    pub endpoint: Option<String>,
    /// Only `pending`, `delivered` or `failed` deliveries.
    pub status: Option<String>,
    /// At most this many, 1 to 1,000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Deliveries older than this delivery id: pass the last id of a page for the next one.
    pub before: Option<String>,
}

/// One delivery as the API shows it: the payload as JSON, times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct Delivery {
    /// Stable across retries: the `keel-webhook-id` header receivers saw.
    id: String,
    endpoint: String,
    /// The journal entry the delivery announces.
    journal_seq: i64,
    event: String,
    case_id: Option<String>,
    /// The exact body sent, parsed (the stored text when it is not JSON).
    payload: Value,
    /// `pending`, `delivered` or `failed`.
    status: String,
    attempts: i64,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
    /// When the next attempt is due; none once the delivery is final.
    next_attempt_at: Option<String>,
}

impl From<WebhookDeliveryRow> for Delivery {
    fn from(row: WebhookDeliveryRow) -> Delivery {
        let payload =
            serde_json::from_str(&row.payload).unwrap_or_else(|_| Value::String(row.payload));
        Delivery {
            id: row.id,
            endpoint: row.endpoint,
            journal_seq: row.journal_seq,
            event: row.event,
            case_id: row.case_id,
            payload,
            status: row.status,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            created_at: keel_engine::rfc3339_ms(row.created_at_ms),
            delivered_at: row.delivered_at_ms.map(keel_engine::rfc3339_ms),
            next_attempt_at: row.next_attempt_at_ms.map(keel_engine::rfc3339_ms),
        }
    }
}

/// One delivery with every attempt, in order.
#[derive(Debug, Serialize)]
pub struct DeliveryWithAttempts {
    delivery: Delivery,
    attempts: Vec<WebhookAttemptRow>,
}

/// The delivery log, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    params(DeliveriesQuery),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "Deliveries, newest first: id (the `keel-webhook-id` receivers saw), endpoint, event, case, payload, status, attempts, last status code or error, times", body = Value),
        (status = 400, description = "A bad status or limit", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The role may not read webhooks", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Vec<Delivery>>, Problem> {
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(Problem::new(
                Kind::InvalidParameter,
                format!("`status` is one of {STATUSES:?}, not `{status}`"),
            ));
        }
    }
    let limit = crate::cases::page_limit(query.limit)?;
    let filter = WebhookDeliveryFilter {
        endpoint: query.endpoint,
        status: query.status,
        before_id: query.before,
        limit,
    };
    let rows = state.engine.webhook_deliveries(&filter).await?;
    Ok(Json(rows.into_iter().map(Delivery::from).collect()))
}

/// One delivery and every attempt at it.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The delivery id (the `keel-webhook-id` header)")),
    security(("keel_token" = [])),
    responses(
        (status = 200, description = "`delivery` and its `attempts`: attempt number, time, the receiver's status code, the error, duration", body = Value),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The role may not read webhooks", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_delivery(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeliveryWithAttempts>, Problem> {
    let Some(row) = state.engine.webhook_delivery(&id).await? else {
        return Err(Problem::new(
            Kind::NotFound,
            format!("no webhook delivery `{id}`; GET /v1/webhooks/deliveries lists them"),
        ));
    };
    let attempts = state.engine.webhook_attempts(&id).await?;
    Ok(Json(DeliveryWithAttempts {
        delivery: row.into(),
        attempts,
    }))
}
