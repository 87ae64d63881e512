//! A downstream system that behaves like a real payment API towards `Idempotency-Key`, for
//! the tests of Keel's effect guarantee (the engine's tests and the `keel` binary's crash
//! tests share this file).
//!
//! The first request with a key applies its effect (a charge) and stores the answer together
//! with the SHA-256 of the request body. A later request with the same key and the same body
//! gets the stored answer again (marked `"replayed": true`) and applies nothing; the same key
//! with a different body is refused with 422, as payment APIs refuse a key reused with other
//! parameters. A request without a key is refused with 400. The request that applies the
//! first effect can be made to fail *after* applying it: answered late, answered 503, or held
//! open.

#![allow(dead_code)] // Each test binary uses the part it needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// What happens to the request that applies the first effect (every other one is answered at
/// once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Apply the effect and answer at once.
    Prompt,
    /// Apply the effect, then answer only after this delay (longer than the caller waits).
    AnswerLate(Duration),
    /// Apply the effect, then answer 503, as a proxy that lost the answer would.
    Unavailable,
    /// Apply the effect and never answer: the connection stays open until the caller dies.
    Hold,
}

/// One effect the API applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub key: String,
    pub body: Value,
}

/// One request the API received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub key: String,
    /// The `Keel-Attempt` header, if any.
    pub attempt: Option<u32>,
    pub body_sha256: String,
    /// What it was (or, answering late, will be) answered; 0 for a request held open.
    pub status: u16,
}

#[derive(Default)]
struct Ledger {
    /// key → (SHA-256 of the request body, the stored answer).
    stored: HashMap<String, (String, Value)>,
    effects: Vec<Effect>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct PaymentApi {
    /// Where to POST charges.
    pub url: String,
    ledger: Arc<Mutex<Ledger>>,
    applied: Arc<tokio::sync::Notify>,
}

impl PaymentApi {
    /// Starts the API on a port of its own, on the current runtime.
    pub async fn start(mode: Mode) -> PaymentApi {
        let api = PaymentApi {
            url: String::new(),
            ledger: Arc::default(),
            applied: Arc::default(),
        };
        let handler_api = api.clone();
        let app = axum::Router::new().route(
            "/charges",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let api = handler_api.clone();
                async move { api.charge(mode, &headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        PaymentApi {
            url: format!("http://{address}/charges"),
            ..api
        }
    }

    /// The effects applied so far.
    pub fn effects(&self) -> Vec<Effect> {
        self.ledger.lock().unwrap().effects.clone()
    }

    /// The requests received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.ledger.lock().unwrap().received.clone()
    }

    /// Waits until the first effect was applied (bounded: panics after 30 s).
    pub async fn first_effect(&self) {
        let notified = self.applied.notified();
        if !self.effects().is_empty() {
            return;
        }
        tokio::time::timeout(Duration::from_secs(30), notified)
            .await
            .expect("the payment API received no charge within 30 s");
    }

    async fn charge(&self, mode: Mode, headers: &HeaderMap, body: &[u8]) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let key = header("idempotency-key").unwrap_or_default().to_string();
        let attempt = header("keel-attempt").and_then(|v| v.parse().ok());
        let (status, answer, applied_first) = self.answer(mode, key, attempt, body);
        if applied_first {
            self.applied.notify_waiters();
            match mode {
                Mode::Prompt => {}
                Mode::AnswerLate(delay) => tokio::time::sleep(delay).await,
                Mode::Unavailable => {
                    let busy = json!({ "error": "upstream unavailable" });
                    return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(busy)).into_response();
                }
                Mode::Hold => std::future::pending::<()>().await,
            }
        }
        (status, axum::Json(answer)).into_response()
    }

    /// Decides and records one request: its answer, and whether it applied the first effect.
    fn answer(
        &self,
        mode: Mode,
        key: String,
        attempt: Option<u32>,
        body: &[u8],
    ) -> (StatusCode, Value, bool) {
        let body_sha256 = keel_core::prompt::sha256(&String::from_utf8_lossy(body));
        let mut ledger = self.ledger.lock().unwrap();
        let effects_before = ledger.effects.len();
        let (status, answer) = ledger.decide(&key, &body_sha256, body);
        let applied_first = effects_before == 0 && ledger.effects.len() == 1;
        let answered = match (applied_first, mode) {
            (true, Mode::Unavailable) => 503,
            (true, Mode::Hold) => 0,
            _ => status.as_u16(),
        };
        ledger.received.push(Received {
            key,
            attempt,
            body_sha256,
            status: answered,
        });
        (status, answer, applied_first)
    }
}

impl Ledger {
    /// What a payment API answers to `key` with this body, applying the effect if it is new.
    fn decide(&mut self, key: &str, body_sha256: &str, body: &[u8]) -> (StatusCode, Value) {
        if key.is_empty() {
            let missing = json!({ "error": "an Idempotency-Key header is required" });
            return (StatusCode::BAD_REQUEST, missing);
        }
        if let Some((stored_sha256, stored)) = self.stored.get(key) {
            if stored_sha256 != body_sha256 {
                let reused = json!({ "error": "Idempotency-Key reused with different parameters" });
                return (StatusCode::UNPROCESSABLE_ENTITY, reused);
            }
            let mut replay = stored.clone();
            replay["replayed"] = json!(true);
            return (StatusCode::OK, replay);
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let charge = json!({
            "id": format!("ch_{}", self.effects.len() + 1),
            "amount": body["amount"],
            "replayed": false,
        });
        self.stored
            .insert(key.to_string(), (body_sha256.to_string(), charge.clone()));
        self.effects.push(Effect {
            key: key.to_string(),
            body,
        });
        (StatusCode::OK, charge)
    }
}
