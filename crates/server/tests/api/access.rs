//! Access that cannot fail open and a document clients can trust: every route of the router and
//! every operation of the OpenAPI document has an access rule; the guard answers 401 for each
//! guarded route without a token and 405 (with `Allow`) for a method no route declares; the
//! sandbox is off unless asked for; meaningless signals and page sizes are refused; the
//! gateway's 405 and 413 keep OpenAI's error shape.

use std::collections::BTreeSet;

use keel_server::{Access, ServerOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{expect_problem, spawn_app, spawn_app_with};

/// A concrete path for a route: each `{param}` becomes `x`, a `{*rest}` becomes `index.html`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            s if s.starts_with("{*") => "index.html",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn with_sandbox() -> ServerOptions {
    ServerOptions {
        sandbox: true,
        ..ServerOptions::default()
    }
}

/// Every operation of the OpenAPI document is a declared route with an access rule; every
/// guarded route of the document says so (security, 401, 403); every declared route is either
/// in the document or one of the documentation and sandbox pages.
#[tokio::test]
async fn every_route_and_every_documented_operation_has_an_access_rule() {
    let app = spawn_app_with(with_sandbox()).await;
    let table = keel_server::route_table(&with_sandbox());
    let document: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let route = table
                .iter()
                .find(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method))
                .unwrap_or_else(|| panic!("{method} {path} is documented but has no access rule"));
            if let Some(rule) = route.access.rule() {
                assert!(!rule.action.is_empty(), "{method} {path}");
                assert!(
                    operation["security"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s.get("keel_token").is_some())),
                    "{method} {path} needs a token but declares no security scheme"
                );
                for status in ["401", "403"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
    for route in &table {
        let key = (route.method.to_string(), route.path.to_string());
        let undocumented_by_design =
            route.path.starts_with("/docs") || route.path.starts_with("/sandbox/");
        assert!(
            documented.contains(&key) || undocumented_by_design,
            "{} {} is served but not documented",
            route.method,
            route.path
        );
        if let Access::Public { why } = route.access {
            assert!(
                why.len() > 20,
                "{} {}: say why it is public",
                route.method,
                route.path
            );
        }
    }
    assert!(table.len() >= 40, "{} routes", table.len());
}

/// Walks every declared route without a token: a guarded route answers a 401 problem before
/// any handler runs; a public one answers from its handler; another method answers 405 with
/// the route's methods in `Allow`.
#[tokio::test]
async fn the_guard_stands_before_every_route_of_the_router() {
    let app = spawn_app_with(with_sandbox()).await;
    let anonymous = reqwest::Client::new();
    for route in keel_server::route_table(&with_sandbox()) {
        let url = format!("{}{}", app.base, concrete(route.path));
        let response = anonymous
            .request(route.method.clone(), &url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let label = format!("{} {}", route.method, route.path);
        match route.access {
            Access::Token(_) | Access::ScrapeTokenOr(_) => {
                expect_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
            }
            Access::Public { .. }
                if route.path == "/v1/chat/completions" || route.path == "/v1/models" =>
            {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{label}: the gateway checks its own token"
                );
                let body: Value = response.json().await.unwrap();
                assert!(body["error"]["message"].is_string(), "{label}: {body}");
            }
            Access::Public { .. } => {
                assert!(
                    status.is_success() || status.is_redirection(),
                    "{label}: {status}"
                );
            }
        }
        let response = anonymous.delete(&url).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE {}",
            route.path
        );
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(
            allow.contains(route.method.as_str()),
            "DELETE {}: Allow: {allow}",
            route.path
        );
    }
}

#[tokio::test]
async fn the_sandbox_is_off_unless_asked_for() {
    let app = spawn_app().await;
    let anonymous = reqwest::Client::new();
    let booking = anonymous
        .post(format!("{}/sandbox/erp/invoices/INV-1/bookings", app.base))
        .json(&json!({"net": 1}))
        .send()
        .await
        .unwrap();
    expect_problem(booking, StatusCode::NOT_FOUND, "not-found").await;
    let requests = anonymous
        .get(format!("{}/sandbox/requests", app.base))
        .send()
        .await
        .unwrap();
    expect_problem(requests, StatusCode::NOT_FOUND, "not-found").await;
    assert!(!ServerOptions::default().sandbox);
    assert!(keel_server::route_table(&ServerOptions::default())
        .iter()
        .all(|route| !route.path.starts_with("/sandbox")));

    let app = spawn_app_with(with_sandbox()).await;
    let booking = anonymous
        .post(format!("{}/sandbox/erp/invoices/INV-1/bookings", app.base))
        .json(&json!({"net": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(booking.status(), StatusCode::OK);
}

/// A signal that nothing will consume is refused and leaves no journal entry: to a finished
/// case (409), undeclared by the workflow (422), a name no workflow can declare (400).
#[tokio::test]
async fn signals_that_mean_nothing_are_refused_and_not_journaled() {
    let app = spawn_app().await;
    let id = app.submit(&json!({"id": "s-1", "amount": 1})).await;
    app.case_until(&id, |case| case["status"] == "waiting")
        .await;

    let undeclared = app
        .post_json(&format!("/v1/cases/{id}/signals/ping"), &json!({}))
        .await;
    let problem = expect_problem(
        undeclared,
        StatusCode::UNPROCESSABLE_ENTITY,
        "undeclared-signal",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("approved"),
        "the detail names the signals the workflow waits for: {problem}"
    );
    let control = "bad%01name".to_string();
    let long = "a".repeat(65);
    let huge = "a".repeat(60_000);
    for name in [
        control.as_str(),
        "Approved",
        "a b",
        long.as_str(),
        huge.as_str(),
    ] {
        let response = app
            .post_json(&format!("/v1/cases/{id}/signals/{name}"), &json!({}))
            .await;
        expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
    }

    let accepted = app
        .post_json(
            &format!("/v1/cases/{id}/signals/approved"),
            &json!({"by": "ada"}),
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    app.case_until(&id, |case| case["status"] == "completed")
        .await;
    let finished = app
        .post_json(&format!("/v1/cases/{id}/signals/approved"), &json!({}))
        .await;
    let problem = expect_problem(finished, StatusCode::CONFLICT, "case-finished").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("new case"),
        "{problem}"
    );

    let timeline: Vec<String> = app
        .engine
        .timeline(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert!(
        !timeline.iter().any(|kind| kind == "signal.ignored"),
        "{timeline:?}"
    );
    assert_eq!(
        timeline
            .iter()
            .filter(|kind| *kind == "signal.received")
            .count(),
        1,
        "only the signal the case waited for is journaled: {timeline:?}"
    );
}

#[tokio::test]
async fn page_sizes_out_of_range_are_refused_on_every_listing() {
    let app = spawn_app().await;
    for listing in ["/v1/tasks", "/v1/exceptions", "/v1/cases"] {
        for limit in ["0", "-1", "5000", "1001"] {
            let response = app.get(&format!("{listing}?limit={limit}")).await;
            let problem =
                expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
            assert!(
                problem["detail"].as_str().unwrap().contains("1000"),
                "{listing}: {problem}"
            );
        }
        for limit in ["1", "1000"] {
            let response = app.get(&format!("{listing}?limit={limit}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{listing}?limit={limit}");
        }
    }
}

#[tokio::test]
async fn the_gateway_answers_405_and_413_in_openai_shape() {
    let app = spawn_app_with(ServerOptions {
        max_body_bytes: 1024,
        ..ServerOptions::default()
    })
    .await;
    let wrong_method = app.get("/v1/chat/completions").await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let big = "x".repeat(4096);
    let too_large = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    // The rest of the API keeps its problem JSON.
    let too_large = app
        .post_json(
            "/v1/workflows/approval/cases",
            &json!({"id": big, "amount": 1}),
        )
        .await;
    expect_problem(
        too_large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    )
    .await;
}

/// Query parameters are in the query; bounds, enums, body variants, header limits and media
/// types are stated.
#[test]
fn the_document_states_parameters_as_the_server_reads_them() {
    let document = keel_server::openapi_document(&ServerOptions::default());
    let parameters = |path: &str| {
        document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .clone()
    };
    for path in [
        "/v1/tasks",
        "/v1/exceptions",
        "/v1/cases",
        "/v1/webhooks/deliveries",
    ] {
        for parameter in parameters(path) {
            assert_eq!(parameter["in"], "query", "{path}: {parameter}");
            assert_ne!(parameter["required"], true, "{path}: {parameter}");
        }
        let limit = parameters(path)
            .into_iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["minimum"], 1, "{path}");
        assert_eq!(limit["schema"]["maximum"], 1000, "{path}");
    }
    let decision = &document["paths"]["/v1/tasks/{id}/decision"]["post"];
    let variants: Vec<&Value> = decision["requestBody"]["content"]["application/json"]["schema"]
        ["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["properties"]["decision"]["const"])
        .collect();
    assert_eq!(
        variants,
        [&json!("approve"), &json!("correct"), &json!("reject")]
    );
    for status in ["400", "401", "403", "404", "409", "413", "415"] {
        assert!(
            decision["responses"][status].is_object(),
            "decision: {status}"
        );
    }
    let monthly = &document["paths"]["/v1/reports/monthly"]["get"]["responses"]["200"]["content"];
    for media in ["application/json", "text/markdown", "text/html"] {
        assert!(monthly[media].is_object(), "{media}");
    }
    let submit = &document["paths"]["/v1/workflows/{name}/cases"]["post"];
    let key = submit["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(key["in"], "header");
    assert_eq!(key["schema"]["maxLength"], 255);
}
