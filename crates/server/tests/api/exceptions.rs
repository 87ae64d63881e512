//! Exceptions end to end through the HTTP API: an `ai` step with no models configured parks
//! its case on an `ai_failed` exception, which is listed with its context and resolved by a
//! person (provide the output, retry, skip, cancel, assign); rejections whose reasons differ
//! only in numbers and ids group into one pattern; roles that may not resolve get 403.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_engine::{Engine, Options, SystemClock};
use keel_server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

const TRIAGE: &str = r#"
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
        - model: small
  - id: route
    switch:
      - when: data.classify.output.label == 'billing'
        goto: billing
      - default: technical
  # Outcomes chosen by the AI are operations; these tests are about exceptions.
  - id: billing
    end: { outcome: billing, trust: { gate: none, reason: "a test of exceptions" } }
  - id: technical
    end: { outcome: technical, trust: { gate: none, reason: "a test of exceptions" } }
"#;

const REFUND: &str = r#"
name: refund
version: "1"
input: { schema: { type: object } }
steps:
  - id: sign_off
    approval:
      title: Refund the customer
      roles: [reviewer]
  - id: refunded
    end: { outcome: refunded }
"#;

struct Desk {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    tokens: BTreeMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

/// A server without models (so `ai` steps raise `ai_failed`) and users with tokens.
async fn desk() -> Desk {
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ..Default::default()
    };
    let engine = Engine::start(store, options, Arc::new(SystemClock))
        .await
        .unwrap();
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    engine.deploy_source(REFUND, "refund.yaml").await.unwrap();
    let mut tokens = BTreeMap::new();
    for (name, role) in [
        ("olga", "operator"),
        ("sid", "specialist"),
        ("rita", "reviewer"),
        ("audrey", "auditor"),
    ] {
        let store = engine.store();
        let roles = vec![role.to_string()];
        assert!(keel_engine::tasks::add_user(store, name, &roles, None, 0)
            .await
            .unwrap());
        let (secret, _) = keel_engine::tokens::create_token(store, name, name, &[], None, 0)
            .await
            .unwrap();
        tokens.insert(name, secret);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    Desk {
        base,
        engine,
        client: reqwest::Client::new(),
        tokens,
        _dir: dir,
    }
}

impl Desk {
    async fn get(&self, who: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who])
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn post(&self, who: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who])
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn submit(&self, workflow: &str, input: Value) -> String {
        let (status, body) = self
            .post("olga", &format!("/v1/workflows/{workflow}/cases"), input)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["case_id"].as_str().unwrap().to_string()
    }

    async fn wait_status(&self, case_id: &str, wanted: &str) -> keel_store::CaseRow {
        for _ in 0..500 {
            let row = self.engine.case(case_id).await.unwrap();
            if row.status == wanted {
                return row;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("case {case_id} never reached {wanted}");
    }

    /// The case's open exceptions as listed by the API.
    async fn open_exceptions(&self, case_id: &str) -> Vec<Value> {
        let (status, list) = self.get("olga", "/v1/exceptions?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["case_id"] == case_id)
            .cloned()
            .collect()
    }

    /// Submits a ticket and waits for its `ai_failed` exception; returns (case id, exception).
    async fn parked_ticket(&self) -> (String, Value) {
        let case_id = self
            .submit("triage", json!({"subject": "my invoice is wrong"}))
            .await;
        self.wait_status(&case_id, "exception").await;
        // Route it now, so that the desk's background pass cannot change it between reads.
        self.engine.run_desk_once().await.unwrap();
        let open = self.open_exceptions(&case_id).await;
        assert_eq!(open.len(), 1, "{open:#?}");
        (case_id, open[0].clone())
    }

    async fn resolve(&self, who: &str, id: &str, body: Value) -> (StatusCode, Value) {
        self.post(who, &format!("/v1/exceptions/{id}/resolution"), body)
            .await
    }

    async fn journal(&self, case_id: &str) -> Vec<(String, Value)> {
        self.engine
            .timeline(case_id)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.kind, serde_json::from_str(&row.data).unwrap()))
            .collect()
    }
}

#[tokio::test]
async fn an_ai_failure_is_listed_with_its_context_and_provided_output_completes_the_case() {
    let desk = desk().await;
    let (case_id, exception) = desk.parked_ticket().await;
    let id = exception["id"].as_str().unwrap().to_string();
    assert_eq!(id, format!("{case_id}.classify.1"));
    assert_eq!(exception["kind"], "ai_failed");
    assert_eq!(exception["workflow"], "triage");
    assert_eq!(exception["step"], "classify");
    assert_eq!(exception["status"], "open");
    assert!(exception["message"].as_str().unwrap().contains("--config"));
    assert_eq!(exception["fingerprint"].as_str().unwrap().len(), 16);
    // The context as it was: the case data and the cascade's attempts.
    assert!(exception["detail"]["data"].is_object(), "{exception:#}");
    assert!(exception["detail"]["cascade"]["attempts"].is_array());
    let (status, shown) = desk.get("sid", &format!("/v1/exceptions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, exception);
    let (status, _) = desk.get("sid", "/v1/exceptions/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An output that fails the step's schema is refused and changes nothing.
    let (status, problem) = desk
        .resolve(
            "sid",
            &id,
            json!({"action": "provide_output", "output": {"label": "spam"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(
        problem["type"],
        "https://keel.dev/problems/invalid-resolution"
    );
    assert_eq!(
        desk.engine.case(&case_id).await.unwrap().status,
        "exception"
    );

    // Assigning keeps it open with an assignee; an unknown user is refused.
    let (status, _) = desk
        .resolve("olga", &id, json!({"action": "assign", "to": "nobody"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, assigned) = desk
        .resolve("olga", &id, json!({"action": "assign", "to": "sid"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{assigned}");
    let (_, shown) = desk.get("sid", &format!("/v1/exceptions/{id}")).await;
    assert_eq!(shown["assignee"], "sid");
    assert_eq!(shown["status"], "open");

    let (status, resolved) = desk
        .resolve(
            "sid",
            &id,
            json!({"action": "provide_output", "output": {"label": "billing"}, "note": "obvious"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["action"], "provide_output");
    let row = desk.wait_status(&case_id, "completed").await;
    let state: Value = serde_json::from_str(&row.state).unwrap();
    assert_eq!(state["outcome"], "billing");
    assert_eq!(state["data"]["classify"]["output"]["label"], "billing");

    let journal = desk.journal(&case_id).await;
    let labelled = journal
        .iter()
        .find(|(kind, _)| kind == "outcome.labelled")
        .expect("a labelled outcome");
    assert_eq!(labelled.1["source"], "exception");
    assert_eq!(labelled.1["corrected"]["label"], "billing");
    assert_eq!(labelled.1["by"], "sid");
    let resolved_entry = journal
        .iter()
        .find(|(kind, _)| kind == "exception.resolved")
        .expect("an exception.resolved entry");
    assert_eq!(resolved_entry.1["note"], "obvious");

    let (_, shown) = desk.get("sid", &format!("/v1/exceptions/{id}")).await;
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["resolved_by"], "sid");
    assert_eq!(shown["resolution"]["action"], "provide_output");
    assert!(shown["resolved_at_ms"].as_i64().unwrap() >= shown["raised_at_ms"].as_i64().unwrap());
    // A resolved exception cannot be resolved again.
    let (status, _) = desk.resolve("sid", &id, json!({"action": "retry"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, open) = desk.get("sid", "/v1/exceptions?status=open").await;
    assert!(open
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["id"] != id.as_str()));
    let (_, resolved_list) = desk
        .get(
            "sid",
            "/v1/exceptions?status=resolved&kind=ai_failed&workflow=triage",
        )
        .await;
    assert_eq!(resolved_list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn retry_runs_the_step_again_and_raises_a_fresh_exception() {
    let desk = desk().await;
    let (case_id, exception) = desk.parked_ticket().await;
    let first = exception["id"].as_str().unwrap().to_string();
    let (status, resolved) = desk
        .resolve("olga", &first, json!({"action": "retry"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    // Still no models: the step runs again and fails again, with a new exception.
    let mut open = Vec::new();
    for _ in 0..500 {
        open = desk.open_exceptions(&case_id).await;
        if !open.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["id"], format!("{case_id}.classify.2"));
    assert_eq!(open[0]["fingerprint"], exception["fingerprint"]);
    let (_, old) = desk.get("olga", &format!("/v1/exceptions/{first}")).await;
    assert_eq!(old["status"], "resolved");
    let kinds: Vec<String> = desk
        .journal(&case_id)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "ai.started").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "exception.raised").count(), 2);
}

#[tokio::test]
async fn skip_jumps_to_the_named_step_and_cancel_fails_the_case() {
    let desk = desk().await;
    let (skipped, exception) = desk.parked_ticket().await;
    let id = exception["id"].as_str().unwrap().to_string();
    let (status, problem) = desk
        .resolve("olga", &id, json!({"action": "skip", "to": "nowhere"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("nowhere"));
    let (status, problem) = desk
        .resolve("olga", &id, json!({"action": "explode"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = desk
        .resolve("olga", &id, json!({"action": "skip", "to": "technical"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let row = desk.wait_status(&skipped, "completed").await;
    let state: Value = serde_json::from_str(&row.state).unwrap();
    assert_eq!(state["outcome"], "technical");

    let (cancelled, exception) = desk.parked_ticket().await;
    let id = exception["id"].as_str().unwrap().to_string();
    let (status, resolved) = desk
        .resolve(
            "sid",
            &id,
            json!({"action": "cancel", "note": "duplicate ticket"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["case_status"], "failed");
    let row = desk.wait_status(&cancelled, "failed").await;
    let state: Value = serde_json::from_str(&row.state).unwrap();
    assert_eq!(state["error"]["kind"], "cancelled");
    let (_, shown) = desk.get("sid", &format!("/v1/exceptions/{id}")).await;
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["resolution"]["note"], "duplicate ticket");
}

#[tokio::test]
async fn roles_that_may_not_resolve_get_403_and_the_refusal_is_journaled() {
    let desk = desk().await;
    let (case_id, exception) = desk.parked_ticket().await;
    let id = exception["id"].as_str().unwrap().to_string();
    for who in ["audrey", "rita"] {
        let (status, problem) = desk.resolve(who, &id, json!({"action": "cancel"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {problem}");
        // Cedar denies it before the engine sees it (no built-in policy lets them).
        assert_eq!(problem["type"], "https://keel.dev/problems/forbidden");
    }
    let response = desk
        .client
        .post(format!("{}/v1/exceptions/{id}/resolution", desk.base))
        .json(&json!({"action": "cancel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        desk.engine.case(&case_id).await.unwrap().status,
        "exception"
    );
    desk.engine.flush_ai_calls().await;
    let refusals: Vec<Value> = desk
        .engine
        .store()
        .journal_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "authz.denied")
        .map(|row| serde_json::from_str(&row.data).unwrap())
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    assert_eq!(refusals[0]["action"], "resolve_exception");
    assert_eq!(refusals[0]["subject"], "audrey");
    let (_, shown) = desk.get("audrey", &format!("/v1/exceptions/{id}")).await;
    assert_eq!(shown["status"], "open");
}

#[tokio::test]
async fn rejections_differing_only_in_numbers_form_one_pattern_that_spikes() {
    let desk = desk().await;
    let reasons = [
        "amount 120.50 exceeds the limit for order 5531",
        "amount 9000 exceeds the limit for order 17",
        "amount 3 exceeds the limit for order 88210",
        "amount 41 exceeds the limit for order 2",
        "amount 77.10 exceeds the limit for order 1234",
    ];
    let mut cases = Vec::new();
    for reason in reasons {
        let case_id = desk.submit("refund", json!({})).await;
        let task_id = loop {
            let (_, tasks) = desk.get("rita", "/v1/tasks").await;
            if let Some(task) = tasks
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["case_id"] == case_id.as_str())
            {
                break task["id"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let (status, body) = desk
            .post(
                "rita",
                &format!("/v1/tasks/{task_id}/decision"),
                json!({"decision": "reject", "reason": reason}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        desk.wait_status(&case_id, "exception").await;
        cases.push(case_id);
    }
    let (status, exceptions) = desk.get("olga", "/v1/exceptions?kind=rejected").await;
    assert_eq!(status, StatusCode::OK);
    let exceptions = exceptions.as_array().unwrap();
    assert_eq!(exceptions.len(), 5);
    let fingerprint = exceptions[0]["fingerprint"].clone();
    assert!(
        exceptions.iter().all(|e| e["fingerprint"] == fingerprint),
        "{exceptions:#?}"
    );
    assert_eq!(
        exceptions[0]["template"],
        "<q> rejected the task: amount <n> exceeds the limit for order <n>"
    );

    // Resolve one so that the pattern shows a resolved count and a median time to resolve.
    let first = exceptions[0]["id"].as_str().unwrap();
    let (status, _) = desk
        .resolve("olga", first, json!({"action": "cancel"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, patterns) = desk.get("olga", "/v1/exceptions/patterns").await;
    assert_eq!(status, StatusCode::OK, "{patterns}");
    let patterns = patterns.as_array().unwrap();
    assert_eq!(patterns.len(), 1, "{patterns:#?}");
    let pattern = &patterns[0];
    assert_eq!(pattern["fingerprint"], fingerprint);
    assert_eq!(pattern["workflow"], "refund");
    assert_eq!(pattern["step"], "sign_off");
    assert_eq!(pattern["kind"], "rejected");
    assert_eq!(pattern["total"], 5);
    assert_eq!(pattern["open"], 4);
    assert_eq!(pattern["resolved"], 1);
    assert!(pattern["median_resolve_ms"].as_i64().unwrap() >= 0);
    let per_day = pattern["per_day"].as_array().unwrap();
    assert_eq!(per_day.len(), 14);
    assert_eq!(per_day[13][1], 5, "today's count: {per_day:?}");
    assert_eq!(pattern["per_week"].as_array().unwrap().len(), 8);
    assert_eq!(pattern["per_week"][7][1], 5);
    assert_eq!(pattern["trend"]["direction"], "rising");
    assert_eq!(pattern["trend"]["last_7_days"], 5);

    // The first exception journaled the new pattern; the fifth of the day a spike; once each.
    let mut new_entries = Vec::new();
    let mut spikes = Vec::new();
    for case_id in &cases {
        for (kind, data) in desk.journal(case_id).await {
            match kind.as_str() {
                "exception.pattern_new" => new_entries.push((case_id.clone(), data)),
                "exception.pattern_spike" => spikes.push((case_id.clone(), data)),
                _ => {}
            }
        }
    }
    assert_eq!(new_entries.len(), 1, "{new_entries:#?}");
    assert_eq!(new_entries[0].0, cases[0]);
    assert_eq!(new_entries[0].1["fingerprint"], fingerprint);
    assert_eq!(spikes.len(), 1, "{spikes:#?}");
    assert_eq!(spikes[0].0, cases[4]);
    assert_eq!(spikes[0].1["today"], 5);
}
