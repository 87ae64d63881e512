//! The sandbox: stand-ins for the downstream systems the bundled example workflows call (an
//! ERP and a helpdesk), so that `keel serve` runs them end to end on a fresh machine. They
//! behave like well-mannered real systems: a repeated `Idempotency-Key` returns the first
//! answer without acting again. They keep the last requests in memory for inspection at
//! `GET /sandbox/requests`. They answer without a token, so they are served only when asked
//! for (`keel serve --sandbox`, `ServerOptions::sandbox`), never by default.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Requests remembered (oldest dropped first).
const MAX_REMEMBERED: usize = 1_000;

#[derive(Default)]
struct Memory {
    answers: HashMap<String, Value>,
    order: VecDeque<String>,
    requests: VecDeque<Value>,
    next_id: u64,
}

type Shared = Arc<Mutex<Memory>>;

/// Every route of [`router`], for the route table.
pub(crate) const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/sandbox/erp/invoices/{invoice}/bookings"),
    (Method::POST, "/sandbox/helpdesk/queues/{queue}/tickets"),
    (Method::GET, "/sandbox/requests"),
];

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/sandbox/erp/invoices/{invoice}/bookings",
            post(book_invoice),
        )
        .route(
            "/sandbox/helpdesk/queues/{queue}/tickets",
            post(open_ticket),
        )
        .route("/sandbox/requests", get(requests))
        .with_state(Shared::default())
}

fn answer(
    memory: &Shared,
    headers: &HeaderMap,
    request: Value,
    make: impl FnOnce(u64) -> Value,
) -> Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Ok(mut memory) = memory.lock() else {
        return Json(json!({ "error": "sandbox unavailable" }));
    };
    if let Some(previous) = key.as_ref().and_then(|key| memory.answers.get(key)) {
        return Json(previous.clone());
    }
    memory.next_id += 1;
    let response = make(memory.next_id);
    memory
        .requests
        .push_back(json!({ "idempotency_key": key, "request": request, "response": response }));
    if memory.requests.len() > MAX_REMEMBERED {
        memory.requests.pop_front();
    }
    if let Some(key) = key {
        memory.answers.insert(key.clone(), response.clone());
        memory.order.push_back(key);
        if memory.order.len() > MAX_REMEMBERED {
            if let Some(old) = memory.order.pop_front() {
                memory.answers.remove(&old);
            }
        }
    }
    Json(response)
}

async fn book_invoice(
    State(memory): State<Shared>,
    Path(invoice): Path<String>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Json<Value> {
    let request = json!({ "system": "erp", "invoice": invoice, "body": body.0 });
    answer(
        &memory,
        &headers,
        request,
        |n| json!({ "booking_id": format!("BK-{n:06}"), "invoice": invoice, "status": "booked" }),
    )
}

async fn open_ticket(
    State(memory): State<Shared>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Json<Value> {
    let request = json!({ "system": "helpdesk", "queue": queue, "body": body.0 });
    answer(
        &memory,
        &headers,
        request,
        |n| json!({ "ticket_id": format!("HD-{n:06}"), "queue": queue, "status": "open" }),
    )
}

async fn requests(State(memory): State<Shared>) -> Json<Value> {
    let requests: Vec<Value> = memory
        .lock()
        .map(|m| m.requests.iter().cloned().collect())
        .unwrap_or_default();
    Json(json!({ "requests": requests }))
}
