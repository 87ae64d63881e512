//! The webhook delivery log through the API: a case's connector refuses, the case parks on an
//! exception, and its `exception.raised` goes to a receiver that fails once and then accepts; the
//! log shows the delivery delivered after two attempts, with both attempts and the payload;
//! filters, paging and bad parameters; who may read it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::{Engine, Options, SystemClock};
use keel_server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Its one action is refused (422), so each case parks on an `exception.raised`.
fn ping(reject_url: &str) -> String {
    format!(
        r#"
name: ping
version: "1"
input:
  schema:
    type: object
    required: [n]
    properties:
      n: {{ type: integer }}
steps:
  - id: notify
    action: {{ method: POST, url: "{reject_url}", body: {{ n: "${{ input.n }}" }} }}
  - id: done
    end: done
"#
    )
}

/// A webhook receiver (`/hook`) that answers 500 to its first request and 200 afterwards, and
/// a connector (`/reject`) that refuses everything. Returns the base URL.
async fn flaky_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let router = axum::Router::new()
        .route(
            "/reject",
            axum::routing::post(|| async { StatusCode::UNPROCESSABLE_ENTITY }),
        )
        .route(
            "/hook",
            axum::routing::post(move || {
                let seen = seen.clone();
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, hits)
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> (StatusCode, Value) {
    let response = client.get(format!("{base}{path}")).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_delivery_log_shows_each_delivery_and_every_attempt() {
    let (receiver, hits) = flaky_receiver().await;
    let toml = format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"{receiver}/hook\"\nsecret_env = \"KEEL_TEST_HOOK_SECRET\"\nevents = [\"exception.raised\"]\nmax_attempts = 3\n"
    );
    let config = keel_ai::config::Config::parse("keel.toml", &toml).unwrap();
    let endpoints =
        keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |_| Some("s3cret".into()))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        webhooks: keel_engine::webhooks::Options {
            endpoints,
            poll_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::start(store, options, Arc::new(SystemClock))
        .await
        .unwrap();
    engine
        .deploy_source(&ping(&format!("{receiver}/reject")), "ping.yaml")
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
    let auditor = crate::client_as(&engine, "aud", &["auditor"]).await;
    let reviewer = crate::client_as(&engine, "rev", &["reviewer"]).await;

    let case_id = engine
        .submit("ping", json!({"n": 1}), None)
        .await
        .unwrap()
        .case_id;
    // Bounded wait for the retry to land.
    let mut deliveries = Value::Null;
    for _ in 0..1_000 {
        let (status, body) = get(&auditor, &base, "/v1/webhooks/deliveries").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body[0]["status"] == "delivered" {
            deliveries = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = deliveries
        .as_array()
        .expect("the delivery was never delivered");
    assert_eq!(list.len(), 1, "{deliveries:#}");
    let delivery = &list[0];
    assert_eq!(delivery["endpoint"], "ops");
    assert_eq!(delivery["event"], "exception.raised");
    assert_eq!(delivery["case_id"], case_id);
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["last_status_code"], 200);
    assert!(delivery["delivered_at"].is_string(), "{delivery:#}");
    assert!(delivery["next_attempt_at"].is_null(), "{delivery:#}");
    // The payload is the JSON the receiver got, not a string of it.
    assert_eq!(
        delivery["payload"]["type"], "exception.raised",
        "{delivery:#}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let id = delivery["id"].as_str().unwrap();
    let (status, one) = get(&auditor, &base, &format!("/v1/webhooks/deliveries/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["delivery"]["id"], id);
    let attempts: Vec<(i64, i64)> = one["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, 500), (2, 200)]);

    // Filters and paging.
    let (_, failed) = get(&auditor, &base, "/v1/webhooks/deliveries?status=failed").await;
    assert_eq!(failed, json!([]));
    let (_, other) = get(&auditor, &base, "/v1/webhooks/deliveries?endpoint=crm").await;
    assert_eq!(other, json!([]));
    let (_, older) = get(
        &auditor,
        &base,
        &format!("/v1/webhooks/deliveries?before={id}"),
    )
    .await;
    assert_eq!(older, json!([]));

    // Bad parameters and unknown ids are problems that say what to do.
    for path in [
        "/v1/webhooks/deliveries?status=lost",
        "/v1/webhooks/deliveries?limit=0",
        "/v1/webhooks/deliveries?limit=1001",
    ] {
        let (status, problem) = get(&auditor, &base, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert_eq!(
            problem["type"], "https://keel.dev/problems/invalid-parameter",
            "{path}"
        );
    }
    let (status, problem) = get(&auditor, &base, "/v1/webhooks/deliveries/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("GET /v1/webhooks/deliveries"),
        "{problem}"
    );
    // Payloads carry case data: reviewers may not read the log.
    let (status, _) = get(&reviewer, &base, "/v1/webhooks/deliveries").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
