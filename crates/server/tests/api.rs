//! The HTTP API end to end: a real server on port 0 over a real engine and SQLite file, driven
//! with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failure report.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::{Engine, Options, SystemClock};
use keel_server::ServerOptions;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// validate → set → wait for the `approved` signal → end.
const APPROVAL_WORKFLOW: &str = r#"
name: approval
version: "1"
description: Approve an amount once a person says so.
input:
  schema:
    type: object
    required: [id, amount]
    additionalProperties: false
    properties:
      id: { type: string }
      amount: { type: number, minimum: 0 }
steps:
  - id: check
    validate:
      assert:
        - { expr: "double(input.amount) < 1000000.0", message: "amount is too large" }
  - id: enrich
    set: { total: "double(input.amount) * 2.0" }
  - id: wait_for_approval
    wait: { signal: approved, timeout: 1h, into: approval }
  - id: done
    end: { outcome: approved }
"#;

/// Every documented path; the OpenAPI document must list each.
const PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/workflows",
    "/v1/workflows/{name}/cases",
    "/v1/workflows/{name}/versions",
    "/v1/workflows/{name}/versions/{version}/approve",
    "/v1/workflows/{name}/versions/{version}/reject",
    "/v1/learners/{workflow}/{step}/versions",
    "/v1/learners/{workflow}/{step}/versions/{version}/force",
    "/v1/learners/{workflow}/{step}/versions/{version}/approve",
    "/v1/learners/{workflow}/{step}/versions/{version}/reject",
    "/v1/cases",
    "/v1/cases/{id}",
    "/v1/cases/{id}/signals/{name}",
    "/v1/audit/checkpoint",
    "/v1/audit/proof/inclusion",
    "/v1/audit/proof/consistency",
    "/v1/learners",
    "/v1/learners/{workflow}/{step}/examples",
    "/v1/tasks",
    "/v1/tasks/{id}",
    "/v1/tasks/{id}/decision",
    "/v1/exceptions",
    "/v1/exceptions/patterns",
    "/v1/exceptions/{id}",
    "/v1/exceptions/{id}/resolution",
    "/v1/queues",
    "/v1/drift",
    "/v1/drift/{workflow}/{feature}",
    "/v1/trust",
    "/v1/trust/recommendations",
    "/v1/trust/{workflow}/{step}",
    "/v1/trust/{workflow}/{step}/accuracy",
    "/v1/trust/{workflow}/{step}/promote",
    "/v1/webhooks/deliveries",
    "/v1/webhooks/deliveries/{id}",
    "/v1/trust/{workflow}/{step}/decline",
    "/v1/trust/{workflow}/{step}/demote",
    "/v1/reports/costs",
    "/v1/reports/monthly",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/openapi.json",
    "/metrics",
];

struct TestApp {
    base: String,
    client: reqwest::Client,
    engine: Engine,
    _dir: tempfile::TempDir,
}

async fn spawn_app() -> TestApp {
    spawn_app_with(ServerOptions::default()).await
}

async fn spawn_app_with(options: ServerOptions) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("keel.db");
    let store = keel_store::Store::open(database.to_str().unwrap())
        .await
        .unwrap();
    let engine_options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ..Default::default()
    };
    let engine = Engine::start(store, engine_options, Arc::new(SystemClock))
        .await
        .unwrap();
    engine
        .deploy_source(APPROVAL_WORKFLOW, "approval.yaml")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        options,
        std::future::pending(),
    ));
    TestApp {
        base,
        client: client_as(&engine, "admin", &["admin"]).await,
        engine,
        _dir: dir,
    }
}

/// A user with `roles` and an HTTP client that sends their token.
async fn client_as(engine: &Engine, name: &str, roles: &[&str]) -> reqwest::Client {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    keel_engine::tasks::add_user(engine.store(), name, &roles, None, 0)
        .await
        .unwrap();
    let (secret, _) = keel_engine::tokens::create_token(engine.store(), name, name, &[], None, 0)
        .await
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {secret}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl TestApp {
    async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, input: &Value) -> String {
        let response = self.post_json("/v1/workflows/approval/cases", input).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["case_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Polls the case until `done` holds for it, for at most ten seconds.
    async fn case_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let case: Value = self
                .get(&format!("/v1/cases/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if done(&case) {
                return case;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "case never reached the state: {case:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asserts that `response` is a problem of type `slug` with `status`, and returns its body.
async fn expect_problem(response: Response, status: StatusCode, slug: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        format!("https://keel.dev/problems/{slug}"),
        "{problem:#}"
    );
    assert_eq!(problem["status"], status.as_u16());
    assert!(
        problem["title"].is_string() && problem["detail"].is_string(),
        "{problem:#}"
    );
    problem
}

#[tokio::test]
async fn health_readiness_and_workflows() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/healthz").await.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(
        app.get("/readyz").await.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    let workflows: Value = app.get("/v1/workflows").await.json().await.unwrap();
    let workflows = workflows["workflows"].as_array().unwrap();
    assert_eq!(workflows.len(), 1);
    assert_eq!(workflows[0]["name"], "approval");
    assert_eq!(workflows[0]["version"], 1);
    assert_eq!(workflows[0]["label"], "1");
    assert_eq!(
        workflows[0]["input_schema"]["required"],
        json!(["id", "amount"])
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_case() {
    let app = spawn_app().await;
    let url = format!("{}/v1/workflows/approval/cases", app.base);
    let input = json!({"id": "inv-1", "amount": 10});
    let first = app
        .client
        .post(&url)
        .header("Idempotency-Key", "order-1")
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["created"], true);
    assert_eq!(
        location,
        format!("/v1/cases/{}", first["case_id"].as_str().unwrap())
    );

    let second = app
        .client
        .post(&url)
        .header("Idempotency-Key", "order-1")
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["created"], false);
    assert_eq!(second["case_id"], first["case_id"]);

    let listed: Value = app.get("/v1/cases").await.json().await.unwrap();
    assert_eq!(listed["cases"].as_array().unwrap().len(), 1);
    assert_eq!(listed["cases"][0]["id"], first["case_id"]);

    let too_long = "k".repeat(256);
    let response = app
        .client
        .post(&url)
        .header("Idempotency-Key", too_long)
        .json(&input)
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
}

#[tokio::test]
async fn invalid_input_lists_every_violation() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/workflows/approval/cases",
            &json!({"amount": "ten", "extra": true}),
        )
        .await;
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    let violations = problem["violations"].as_array().unwrap();
    // Missing `id`, `amount` not a number, `extra` not allowed.
    assert_eq!(violations.len(), 3, "{problem:#}");
    assert!(violations
        .iter()
        .all(|v| v["path"].is_string() && v["message"].is_string()));
    assert!(
        violations.iter().any(|v| v["path"] == "/amount"),
        "{problem:#}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/v1/workflows/approval/cases", app.base))
        .header("content-type", "application/json")
        .body("{\"id\": \"x\", ")
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "malformed-json").await;

    let response = app
        .client
        .post(format!("{}/v1/workflows/approval/cases", app.base))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    // Over the server's body limit: refused before any handler runs.
    let app = spawn_app_with(ServerOptions {
        max_body_bytes: 16 * 1024,
        ..ServerOptions::default()
    })
    .await;
    let input = json!({"id": "x".repeat(20 * 1024), "amount": 1});
    let response = app.post_json("/v1/workflows/approval/cases", &input).await;
    let problem =
        expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("16384"),
        "{problem:#}"
    );

    // Within the server's limit but over the engine's limit on case inputs.
    let app = spawn_app().await;
    let input = json!({"id": "x".repeat(keel_engine::MAX_INPUT_BYTES), "amount": 1});
    let response = app.post_json("/v1/workflows/approval/cases", &input).await;
    expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
}

#[tokio::test]
async fn unknown_things_are_404_problems() {
    let app = spawn_app().await;
    let response = app.post_json("/v1/workflows/nope/cases", &json!({})).await;
    expect_problem(response, StatusCode::NOT_FOUND, "unknown-workflow").await;
    let response = app
        .get("/v1/cases/0190b7c4-0000-7000-8000-000000000000")
        .await;
    expect_problem(response, StatusCode::NOT_FOUND, "unknown-case").await;
    let response = app
        .post_json(
            "/v1/cases/0190b7c4-0000-7000-8000-000000000000/signals/approved",
            &json!(true),
        )
        .await;
    expect_problem(response, StatusCode::NOT_FOUND, "unknown-case").await;
    expect_problem(
        app.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let response = app
        .client
        .delete(format!("{}/v1/cases", app.base))
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn cases_page_newest_first_with_a_cursor() {
    let app = spawn_app().await;
    let mut submitted = Vec::new();
    for index in 0..7 {
        submitted.push(
            app.submit(&json!({"id": format!("inv-{index}"), "amount": index}))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/cases?workflow=approval&limit=3&cursor={cursor}"),
            None => "/v1/cases?workflow=approval&limit=3".to_string(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        pages += 1;
        seen.extend(
            page["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|case| case["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    submitted.reverse();
    assert_eq!(
        seen, submitted,
        "pages are newest first, without duplicates or gaps"
    );

    let other: Value = app
        .get("/v1/cases?workflow=other")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["cases"], json!([]));
    assert!(other.get("next_cursor").is_none());

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "status=sleeping",
        "cursor=not-a-cursor",
    ] {
        let response = app.get(&format!("/v1/cases?{bad}")).await;
        expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
    }
}

#[tokio::test]
async fn a_signal_completes_a_waiting_case() {
    let app = spawn_app().await;
    let id = app.submit(&json!({"id": "inv-9", "amount": 21})).await;
    let waiting = app
        .case_until(&id, |case| case["status"] == "waiting")
        .await;
    assert_eq!(waiting["current_step"], "wait_for_approval");
    assert_eq!(waiting["data"]["total"], json!(42.0));
    assert!(
        waiting["runnable_at"].is_string(),
        "the signal timeout is a deadline: {waiting:#}"
    );

    let response = app
        .post_json(
            &format!("/v1/cases/{id}/signals/approved"),
            &json!({"by": "ada"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"case_id": id, "signal": "approved"})
    );

    let completed = app
        .case_until(&id, |case| case["status"] == "completed")
        .await;
    assert_eq!(completed["outcome"], "approved");
    assert_eq!(completed["data"]["approval"], json!({"by": "ada"}));
    assert_eq!(completed["input"], json!({"id": "inv-9", "amount": 21}));
    assert!(completed["error"].is_null());
    let kinds: Vec<&str> = completed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"case.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"case.completed"), "{kinds:?}");
    let created = &completed["timeline"][0];
    assert_eq!(
        created["data"]["input"],
        json!({"id": "inv-9", "amount": 21})
    );
    assert_eq!(created["actor"], json!({"type": "system", "id": "engine"}));

    // A finished case takes no more signals (an empty body would be a null payload).
    let response = app
        .client
        .post(format!("{}/v1/cases/{id}/signals/approved", app.base))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::CONFLICT, "case-finished").await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_path_and_docs_render() {
    let app = spawn_app().await;
    let document: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let listed: BTreeSet<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = PATHS.iter().copied().collect();
    assert_eq!(listed, expected);
    assert!(document["components"]["schemas"]["ProblemBody"].is_object());
    // Every reference resolves: generated clients fail on a dangling `$ref`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "dangling reference {target}"
        );
    }
    assert!(document["components"]["schemas"]["CaseDetail"].is_object());
    assert!(
        document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            ["text/plain; version=0.0.4"]
            .is_object(),
        "{}",
        document["paths"]["/metrics"]
    );
    assert!(document["components"]["securitySchemes"]["metrics_token"].is_object());

    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn checkpoints_and_proofs_check_offline() {
    let app = spawn_app().await;
    expect_problem(
        app.get("/v1/audit/checkpoint").await,
        StatusCode::NOT_FOUND,
        "no-checkpoint",
    )
    .await;
    expect_problem(
        app.get("/v1/audit/proof/inclusion?index=0").await,
        StatusCode::NOT_FOUND,
        "no-checkpoint",
    )
    .await;

    app.submit(&json!({"id": "inv-1", "amount": 1})).await;
    app.submit(&json!({"id": "inv-2", "amount": 2})).await;
    app.engine.sequence_now().await.unwrap();

    let checkpoint: Value = app.get("/v1/audit/checkpoint").await.json().await.unwrap();
    let verifier_key = checkpoint["verifier_key"].as_str().unwrap();
    assert_eq!(verifier_key, app.engine.verifier_key());
    let tree_size = checkpoint["tree_size"].as_u64().unwrap();
    assert!(tree_size >= 2, "{checkpoint:#}");
    let signed =
        keel_ledger::verify_checkpoint(checkpoint["note"].as_str().unwrap(), verifier_key).unwrap();
    assert_eq!(signed.size, tree_size);
    assert_eq!(
        hex::encode(signed.root),
        checkpoint["root"].as_str().unwrap()
    );

    for index in [0, tree_size - 1] {
        let response = app
            .get(&format!(
                "/v1/audit/proof/inclusion?index={index}&size={tree_size}"
            ))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let document: keel_ledger::ProofDocument = response.json().await.unwrap();
        document.check(verifier_key).unwrap();
    }
    let response = app
        .get(&format!(
            "/v1/audit/proof/consistency?from=1&to={tree_size}"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: keel_ledger::ProofDocument = response.json().await.unwrap();
    document.check(verifier_key).unwrap();
    // From the empty tree: an empty proof whose old root is the empty root, as other RFC 6962
    // verifiers expect.
    let response = app.get("/v1/audit/proof/consistency?from=0").await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: keel_ledger::ProofDocument = response.json().await.unwrap();
    document.check(verifier_key).unwrap();
    let json = serde_json::to_value(&document).unwrap();
    assert_eq!(json["proof"], json!([]));
    assert_eq!(json["from_root"], hex::encode(keel_ledger::empty_root()));

    for bad in ["inclusion?index=-1", "inclusion"] {
        let response = app.get(&format!("/v1/audit/proof/{bad}")).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    // Beyond the checkpoint: not (yet) in the ledger.
    for beyond in [
        format!("inclusion?index={tree_size}"),
        format!("consistency?from={}", tree_size + 1),
    ] {
        let response = app.get(&format!("/v1/audit/proof/{beyond}")).await;
        let problem = expect_problem(response, StatusCode::NOT_FOUND, "not-found").await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    let no_such_size = format!("/v1/audit/proof/inclusion?index=0&size={}", tree_size + 100);
    expect_problem(
        app.get(&no_such_size).await,
        StatusCode::NOT_FOUND,
        "no-checkpoint",
    )
    .await;
}

#[tokio::test]
async fn the_sandbox_honours_idempotency_keys() {
    let app = spawn_app_with(ServerOptions {
        sandbox: true,
        ..ServerOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/sandbox/erp/invoices/INV-1/bookings", app.base);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = client
            .post(&url)
            .header("Idempotency-Key", "k-1")
            .json(&json!({"net": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(
        answers[0], answers[1],
        "a repeated key returns the first answer"
    );
    assert!(answers[0]["booking_id"]
        .as_str()
        .unwrap()
        .starts_with("BK-"));
    let other = client
        .post(&url)
        .header("Idempotency-Key", "k-2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(
        other.json::<Value>().await.unwrap()["booking_id"],
        answers[0]["booking_id"]
    );
    let seen: Value = client
        .get(format!("{}/sandbox/requests", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["requests"].as_array().unwrap().len(),
        2,
        "the repeat did not act again"
    );
}

#[path = "api/access.rs"]
mod access;
#[path = "api/desk.rs"]
mod desk;
#[path = "api/drift.rs"]
mod drift;
#[path = "api/exceptions.rs"]
mod exceptions;
#[path = "api/gateway.rs"]
mod gateway;
#[path = "api/influence.rs"]
mod influence;
#[path = "api/metrics.rs"]
mod metrics;
#[path = "api/reports.rs"]
mod reports;
#[path = "api/tasks.rs"]
mod tasks;
#[path = "api/trust.rs"]
mod trust;
#[path = "api/trust_loop.rs"]
mod trust_loop;
#[path = "api/webhooks.rs"]
mod webhooks;

/// One `classify` step answered by the built-in learner only, then a switch on its label.
const TRIAGE_WORKFLOW: &str = r#"
name: triage
version: "1"
input: { schema: { type: object, required: [subject], properties: { subject: { type: string } } } }
steps:
  - id: classify
    ai:
      task: classify
      labels: [billing, technical]
      prompt: "Ticket: {{ input.subject }}"
      route:
        - model: learner
  - id: route
    switch:
      - when: data.classify.output.label == 'billing'
        goto: billing
      - default: technical
  # The outcomes are operations of `classify` (a switch on its label picks them); these tests
  # are about the learner, so the workflow declares them ungated.
  - id: billing
    end: { outcome: billing, trust: { gate: none, reason: "a test of the learner" } }
  - id: technical
    end: { outcome: technical, trust: { gate: none, reason: "a test of the learner" } }
"#;

/// A server whose engine has an AI runtime with the built-in learner as its only model.
async fn spawn_learning_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let config =
        // These tests are about storing and swapping versions: every version serves at once.
        // The challengers' test is shown in `trust_loop`.
        keel_ai::config::Config::parse(
            "keel.toml",
            "[models.learner]\nprovider = \"local\"\n[learning]\nchallenger_test = \"off\"\n",
        )
        .unwrap();
    let engine_options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ai: Some(Arc::new(keel_ai::cascade::Runtime::new(
            config,
            reqwest::Client::new(),
        ))),
        ..Default::default()
    };
    let engine = Engine::start(store, engine_options, Arc::new(SystemClock))
        .await
        .unwrap();
    engine
        .deploy_source(TRIAGE_WORKFLOW, "triage.yaml")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    TestApp {
        base,
        client: client_as(&engine, "admin", &["admin"]).await,
        engine,
        _dir: dir,
    }
}

fn examples(pairs: &[(&str, &str)]) -> Value {
    let examples: Vec<Value> = pairs
        .iter()
        .map(|(text, label)| json!({"text": text, "label": label}))
        .collect();
    json!({ "examples": examples })
}

const TICKETS: &[(&str, &str)] = &[
    ("Ticket: refund my invoice", "billing"),
    ("Ticket: I was charged twice on my invoice", "billing"),
    ("Ticket: update the card on my invoice", "billing"),
    ("Ticket: the app crashes on start", "technical"),
    ("Ticket: login page shows an error", "technical"),
    ("Ticket: the server returns error 500", "technical"),
];

impl TestApp {
    /// Submits a triage case and waits until it leaves `running`; returns the case.
    async fn triage(&self, subject: &str) -> Value {
        let response = self
            .post_json("/v1/workflows/triage/cases", &json!({ "subject": subject }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let id = response.json::<Value>().await.unwrap()["case_id"]
            .as_str()
            .unwrap()
            .to_string();
        self.case_until(&id, |case| {
            ["completed", "failed", "exception"].contains(&case["status"].as_str().unwrap_or(""))
        })
        .await
    }
}

#[tokio::test]
async fn posted_examples_raise_the_version_and_change_predictions() {
    let app = spawn_learning_app().await;
    let untrained = app.triage("my subscription renewal").await;
    assert_eq!(untrained["status"], "exception", "{untrained:#}");

    let response = app
        .post_json("/v1/learners/triage/classify/examples", &examples(TICKETS))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"version": 1, "examples": 6, "status": "serving"})
    );
    let before = app.triage("my subscription renewal").await;
    assert_eq!(before["outcome"], "technical", "{before:#}");

    // Teach the phrase through the case that asked about it: its rendered prompt is the text.
    let case_id = untrained["id"].as_str().unwrap();
    let mut taught = vec![json!({"case_id": case_id, "label": "billing"})];
    taught.extend(
        (0..4).map(|_| json!({"text": "Ticket: my subscription renewal", "label": "billing"})),
    );
    let response = app
        .post_json(
            "/v1/learners/triage/classify/examples",
            &json!({ "examples": taught }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"version": 2, "examples": 11, "status": "serving"})
    );
    let after = app.triage("my subscription renewal").await;
    assert_eq!(after["outcome"], "billing", "{after:#}");

    let listed: Value = app.get("/v1/learners").await.json().await.unwrap();
    let learners = listed["learners"].as_array().unwrap();
    assert_eq!(learners.len(), 1, "{listed:#}");
    assert_eq!(learners[0]["workflow"], "triage");
    assert_eq!(learners[0]["step"], "classify");
    assert_eq!(learners[0]["version"], 2);
    assert_eq!(learners[0]["examples"], 11);
    assert_eq!(learners[0]["source"], "api");
    assert!(learners[0]["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn concurrent_example_batches_both_survive() {
    let app = spawn_learning_app().await;
    let url = format!("{}/v1/learners/triage/classify/examples", app.base);
    let batches = [examples(&TICKETS[..2]), examples(&TICKETS[2..])];
    let mut requests = Vec::new();
    for _ in 0..3 {
        for batch in &batches {
            requests.push(app.client.post(&url).json(batch).send());
        }
    }
    let mut versions = Vec::new();
    for response in futures_join_all(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        versions.push(
            response.json::<Value>().await.unwrap()["version"]
                .as_i64()
                .unwrap(),
        );
    }
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    let listed: Value = app.get("/v1/learners").await.json().await.unwrap();
    assert_eq!(listed["learners"][0]["version"], 6);
    assert_eq!(listed["learners"][0]["examples"], 3 * TICKETS.len());
}

/// Runs every future at once (spawned, so the requests really overlap) and collects the results.
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn bad_example_batches_are_problems() {
    let app = spawn_learning_app().await;
    let one = examples(&[("Ticket: refund", "billing")]);
    let parked = app.triage("no learner yet").await;
    let parked_id = parked["id"].as_str().unwrap();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v1/learners/nope/classify/examples",
            one.clone(),
            StatusCode::NOT_FOUND,
            "unknown-workflow",
        ),
        (
            "/v1/learners/triage/nope/examples",
            one.clone(),
            StatusCode::NOT_FOUND,
            "unknown-step",
        ),
        (
            "/v1/learners/triage/route/examples",
            one.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-classify-step",
        ),
        (
            "/v1/learners/triage/classify/examples",
            examples(&[("Ticket: refund", "sales")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-label",
        ),
        (
            "/v1/learners/triage/classify/examples",
            json!({"examples": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-examples",
        ),
        (
            "/v1/learners/triage/classify/examples",
            json!({"examples": [{"text": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-examples",
        ),
        (
            "/v1/learners/triage/classify/examples",
            json!({"examples": [{"text": "x", "case_id": "y", "label": "billing"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-examples",
        ),
        (
            "/v1/learners/triage/classify/examples",
            json!({"examples": [{"case_id": "no-such-case", "label": "billing"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-examples",
        ),
        (
            "/v1/learners/triage/route/examples",
            json!({"examples": [{"case_id": parked_id, "label": "billing"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-classify-step",
        ),
    ];
    for (path, body, status, slug) in cases {
        let response = app.post_json(path, &body).await;
        expect_problem(response, status, slug).await;
    }
    let oversized = vec![json!({"text": "x", "label": "billing"}); 1_001];
    let response = app
        .post_json(
            "/v1/learners/triage/classify/examples",
            &json!({ "examples": oversized }),
        )
        .await;
    let problem = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-examples",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1000"),
        "{problem:#}"
    );
    let malformed = app
        .client
        .post(format!("{}/v1/learners/triage/classify/examples", app.base))
        .header("content-type", "application/json")
        .body("{\"examples\": [")
        .send()
        .await
        .unwrap();
    expect_problem(malformed, StatusCode::BAD_REQUEST, "malformed-json").await;

    let listed: Value = app.get("/v1/learners").await.json().await.unwrap();
    assert_eq!(listed, json!({"learners": []}), "nothing was stored");
}

/// Every guarded endpoint against every built-in role: allowed roles never get 401 or 403,
/// the others get 403; no token gets 401 everywhere; health and the OpenAPI document are open.
#[tokio::test]
async fn the_authorization_matrix_holds_for_every_endpoint_and_role() {
    let app = spawn_app().await;
    let roles = [
        "admin",
        "operator",
        "reviewer",
        "specialist",
        "governor",
        "auditor",
        "gateway",
    ];
    let reads = [
        "admin",
        "operator",
        "reviewer",
        "specialist",
        "governor",
        "auditor",
    ];
    let endpoints: Vec<(&str, String, Option<Value>, Vec<&str>)> = vec![
        ("GET", "/v1/workflows".into(), None, reads.to_vec()),
        (
            "POST",
            "/v1/workflows/approval/cases".into(),
            Some(json!({"id": "m", "amount": 1})),
            vec!["admin", "operator"],
        ),
        ("GET", "/v1/cases".into(), None, reads.to_vec()),
        ("GET", "/v1/cases/nope".into(), None, reads.to_vec()),
        (
            "POST",
            "/v1/cases/nope/signals/approved".into(),
            Some(json!({})),
            vec!["admin", "operator"],
        ),
        ("GET", "/v1/tasks".into(), None, reads.to_vec()),
        ("GET", "/v1/tasks/nope".into(), None, reads.to_vec()),
        (
            "POST",
            "/v1/tasks/nope/decision".into(),
            Some(json!({"decision": "approve"})),
            vec!["admin", "reviewer", "specialist", "governor"],
        ),
        ("GET", "/v1/exceptions".into(), None, reads.to_vec()),
        (
            "GET",
            "/v1/exceptions/patterns".into(),
            None,
            reads.to_vec(),
        ),
        ("GET", "/v1/exceptions/nope".into(), None, reads.to_vec()),
        ("GET", "/v1/queues".into(), None, reads.to_vec()),
        ("GET", "/v1/drift".into(), None, reads.to_vec()),
        (
            "GET",
            "/v1/drift/approval/nope".into(),
            None,
            reads.to_vec(),
        ),
        ("GET", "/v1/trust".into(), None, reads.to_vec()),
        (
            "GET",
            "/v1/trust/recommendations".into(),
            None,
            reads.to_vec(),
        ),
        (
            "GET",
            "/v1/trust/approval/nope".into(),
            None,
            reads.to_vec(),
        ),
        (
            "POST",
            "/v1/trust/approval/nope/promote".into(),
            Some(json!({"reason": "r"})),
            vec!["admin", "governor"],
        ),
        (
            "POST",
            "/v1/trust/approval/nope/demote".into(),
            Some(json!({"reason": "r"})),
            vec!["admin", "governor"],
        ),
        (
            "POST",
            "/v1/exceptions/nope/resolution".into(),
            Some(json!({"action": "cancel"})),
            vec!["admin", "operator", "specialist"],
        ),
        (
            "GET",
            "/v1/webhooks/deliveries".into(),
            None,
            vec!["admin", "operator", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/webhooks/deliveries/nope".into(),
            None,
            vec!["admin", "operator", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/audit/checkpoint".into(),
            None,
            vec!["admin", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/audit/proof/inclusion?index=0".into(),
            None,
            vec!["admin", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/audit/proof/consistency?from=1&to=1".into(),
            None,
            vec!["admin", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/learners".into(),
            None,
            vec!["admin", "operator", "specialist", "governor", "auditor"],
        ),
        (
            "POST",
            "/v1/learners/approval/nope/examples".into(),
            Some(json!({"examples": []})),
            vec!["admin", "operator", "specialist"],
        ),
        (
            "GET",
            "/v1/reports/costs".into(),
            None,
            vec!["admin", "operator", "governor", "auditor"],
        ),
        (
            "GET",
            "/v1/reports/monthly".into(),
            None,
            vec!["admin", "operator", "governor", "auditor"],
        ),
        ("GET", "/v1/models".into(), None, vec!["admin", "gateway"]),
        (
            "GET",
            "/metrics".into(),
            None,
            vec!["admin", "governor", "auditor"],
        ),
    ];
    let mut clients = Vec::new();
    for role in roles {
        clients.push((
            role,
            client_as(&app.engine, &format!("{role}-user"), &[role]).await,
        ));
    }
    let anonymous = reqwest::Client::new();
    for (method, path, body, allowed) in &endpoints {
        let url = format!("{}{path}", app.base);
        let send = |client: &reqwest::Client| {
            let request = match *method {
                "POST" => client
                    .post(&url)
                    .json(body.as_ref().unwrap_or(&Value::Null)),
                _ => client.get(&url),
            };
            request.send()
        };
        let status = send(&anonymous).await.unwrap().status();
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        for (role, client) in &clients {
            let status = send(client).await.unwrap().status();
            if allowed.contains(role) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} as {role}: {status}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {role}");
            }
        }
    }
    for open in ["/healthz", "/readyz", "/v1/openapi.json"] {
        let status = anonymous
            .get(format!("{}{open}", app.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{open}");
    }
    // Denies are journaled with the deciding policies (none: default deny); so are allows of
    // sensitive actions, with the policy that allowed them.
    app.engine.flush_ai_calls().await;
    let rows = app.engine.store().journal_after(0, 10_000).await.unwrap();
    let denied = rows.iter().filter(|r| r.kind == "authz.denied").count();
    let allowed: Vec<Value> = rows
        .iter()
        .filter(|r| r.kind == "authz.allowed")
        .map(|r| serde_json::from_str(&r.data).unwrap())
        .collect();
    assert!(denied > 20, "{denied} denies journaled");
    assert!(
        allowed
            .iter()
            .any(|a| a["action"] == "decide_task" && a["policies"] == json!(["role-reviewer"])),
        "{allowed:?}"
    );
}
