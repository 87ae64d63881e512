//! Tasks end to end through the HTTP API, acting as different users: an action that uses an AI
//! proposal waits for people; four-eyes, roles, approval limits and distinct approvers are
//! enforced and every refusal is journaled; corrections become labelled outcomes; rejections
//! raise exceptions or follow `on_reject`.

use std::sync::{Arc, Mutex};

use keel_engine::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::gateway::{keel_toml, start, upstream};

const PAYMENTS: &str = r#"
name: payments
version: "1"
input:
  schema:
    type: object
    required: [amount, answer, callback]
    properties:
      amount: { type: number }
      answer: { type: string }
      callback: { type: string }
steps:
  - id: judge
    ai:
      task: classify
      labels: [pay, hold]
      prompt: "{{ input.answer }}"
      reask: 0
      route:
        - model: primary
          accept_when: "true"
  - id: pay
    action:
      method: POST
      url: "${ input.callback }"
      body: { decision: "${ data.judge.output.label }", amount: "${ input.amount }" }
      approval: { required: 2, roles: [reviewer], limit: "double(input.amount)" }
  - id: done
    end: { outcome: paid }
"#;

const REFUND: &str = r#"
name: refund
version: "1"
input:
  schema: { type: object }
steps:
  - id: sign_off
    approval:
      title: Refund the customer
      roles: [specialist]
      on_reject: refused
  - id: refunded
    end: { outcome: refunded }
  - id: refused
    end: { outcome: refused }
"#;

struct People {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    tokens: std::collections::BTreeMap<&'static str, String>,
    /// (idempotency key, body) of each distinct effect the gated action had.
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    callback: String,
    _dir: tempfile::TempDir,
}

/// A receiver for the gated action's call.
pub(crate) async fn receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let router = axum::Router::new().route(
        "/pay",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    // Like a real payment system, honour the Idempotency-Key: a repeat of a
                    // key already seen is acknowledged without acting again.
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let mut seen = seen.lock().unwrap();
                    if !seen.iter().any(|(k, _)| *k == key) {
                        seen.push((key, body));
                    }
                    axum::Json(json!({"ok": true}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pay", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

async fn people() -> People {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start(&dir, &keel_toml(&upstream.base_url, "")).await;
    engine
        .deploy_source(PAYMENTS, "payments.yaml")
        .await
        .unwrap();
    engine.deploy_source(REFUND, "refund.yaml").await.unwrap();
    let store = engine.store();
    let mut tokens = std::collections::BTreeMap::new();
    for (name, roles, limit) in [
        ("sam", vec!["reviewer", "operator"], Some(100_000.0)),
        ("ann", vec!["reviewer"], Some(10_000.0)),
        ("bob", vec!["reviewer"], Some(10_000.0)),
        ("carl", vec!["reviewer"], Some(100.0)),
        ("opal", vec!["operator"], None),
        ("sue", vec!["specialist"], None),
    ] {
        let roles: Vec<String> = roles.into_iter().map(str::to_string).collect();
        assert!(keel_engine::tasks::add_user(store, name, &roles, limit, 0)
            .await
            .unwrap());
        let (secret, _) = keel_engine::tokens::create_token(store, name, name, &[], None, 0)
            .await
            .unwrap();
        tokens.insert(name, secret);
    }
    let (callback, calls) = receiver().await;
    People {
        base,
        engine,
        client: reqwest::Client::new(),
        tokens,
        calls,
        callback,
        _dir: dir,
    }
}

impl People {
    async fn submit(&self, who: &str, workflow: &str, input: Value) -> String {
        let response = self
            .client
            .post(format!("{}/v1/workflows/{workflow}/cases", self.base))
            .bearer_auth(&self.tokens[who])
            .json(&input)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["case_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits (bounded) for the case's open task.
    async fn task_of(&self, case_id: &str) -> Value {
        for _ in 0..400 {
            let tasks: Vec<Value> = self
                .client
                .get(format!("{}/v1/tasks", self.base))
                .bearer_auth(&self.tokens["ann"])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(task) = tasks.into_iter().find(|t| t["case_id"] == case_id) {
                return task;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no task appeared for case {case_id}");
    }

    async fn decide(&self, who: &str, task_id: &str, decision: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/tasks/{task_id}/decision", self.base))
            .bearer_auth(&self.tokens[who])
            .json(&decision)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn wait_status(&self, case_id: &str, wanted: &str) -> keel_store::CaseRow {
        for _ in 0..400 {
            let row = self.engine.case(case_id).await.unwrap();
            if row.status == wanted {
                return row;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("case {case_id} never reached {wanted}");
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

fn payment(people: &People, amount: f64, label: &str) -> Value {
    json!({"amount": amount, "answer": format!("{{\"label\": \"{label}\"}}"), "callback": people.callback})
}

#[tokio::test]
async fn an_ai_action_waits_for_two_distinct_approvers_within_their_limits() {
    let people = people().await;
    let case_id = people
        .submit("sam", "payments", payment(&people, 500.0, "pay"))
        .await;
    let task = people.task_of(&case_id).await;
    let task_id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["kind"], "action");
    assert_eq!(task["required"], 2);
    assert_eq!(task["amount"], 500.0);
    // The task shows the proposal with its confidence and model, and what the action will do.
    assert_eq!(
        task["detail"]["proposals"]["judge"]["output"]["label"],
        "pay"
    );
    assert_eq!(task["detail"]["proposals"]["judge"]["model"], "primary");
    assert_eq!(task["detail"]["action"]["body"]["decision"], "pay");
    assert_eq!(task["detail"]["submitted_by"], "sam");

    let approve = json!({"decision": "approve"});
    for (who, code) in [
        ("sam", "four_eyes"),
        ("carl", "over_limit"),
        // opal (operator) is stopped by Cedar before the gate: no built-in policy lets
        // operators decide tasks.
        ("opal", "may not `decide_task`"),
    ] {
        let (status, problem) = people.decide(who, &task_id, approve.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(code),
            "{who}: {problem}"
        );
    }
    let (status, first) = people.decide("ann", &task_id, approve.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["result"], "recorded");
    assert_eq!(first["approvals"], 1);
    let (status, again) = people.decide("ann", &task_id, approve.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(again["detail"]
        .as_str()
        .unwrap()
        .contains("duplicate_approver"));
    assert!(
        people.calls.lock().unwrap().is_empty(),
        "the action ran before enough approvals"
    );

    let (status, second) = people.decide("bob", &task_id, approve.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["result"], "approved");
    people.wait_status(&case_id, "completed").await;
    let calls: Vec<Value> = people
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(calls, vec![json!({"decision": "pay", "amount": 500.0})]);

    let journal = people.journal(&case_id).await;
    let refusals: Vec<&str> = journal
        .iter()
        .filter(|(kind, _)| kind == "task.decision_refused")
        .map(|(_, data)| data["code"].as_str().unwrap())
        .collect();
    assert_eq!(refusals, ["four_eyes", "over_limit", "duplicate_approver"]);
    people.engine.flush_ai_calls().await;
    let denied: Vec<Value> = people
        .engine
        .store()
        .journal_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "authz.denied")
        .map(|row| serde_json::from_str(&row.data).unwrap())
        .collect();
    assert_eq!(denied.len(), 1, "opal's attempt is journaled: {denied:?}");
    assert_eq!(denied[0]["subject"], "opal");
    assert_eq!(denied[0]["action"], "decide_task");
    let kinds: Vec<&str> = journal.iter().map(|(kind, _)| kind.as_str()).collect();
    let created = kinds.iter().position(|k| *k == "task.created").unwrap();
    let completed = kinds.iter().position(|k| *k == "task.completed").unwrap();
    let started = kinds.iter().position(|k| *k == "action.started").unwrap();
    assert!(created < completed && completed < started, "{kinds:?}");
    let (status, closed) = people.decide("ann", &task_id, approve).await;
    assert!(
        status == StatusCode::CONFLICT || status == StatusCode::FORBIDDEN,
        "{status} {closed}"
    );
    let listed: Value = people
        .client
        .get(format!("{}/v1/tasks/{task_id}", people.base))
        .bearer_auth(&people.tokens["bob"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["status"], "approved");
    assert_eq!(listed["approvers"], json!(["ann", "bob"]));
}

#[tokio::test]
async fn a_correction_replaces_the_proposal_and_is_journaled_as_a_labelled_outcome() {
    let people = people().await;
    let case_id = people
        .submit("sam", "payments", payment(&people, 50.0, "pay"))
        .await;
    let task_id = people.task_of(&case_id).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, problem) = people
        .decide(
            "ann",
            &task_id,
            json!({"decision": "correct", "output": {"label": "maybe"}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("invalid_correction"),
        "{problem}"
    );
    let (status, _) = people
        .decide(
            "ann",
            &task_id,
            json!({"decision": "correct", "output": {"label": "hold"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, done) = people
        .decide("carl", &task_id, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"], "corrected");
    people.wait_status(&case_id, "completed").await;
    assert_eq!(people.calls.lock().unwrap()[0].1["decision"], "hold");
    let journal = people.journal(&case_id).await;
    let (_, labelled) = journal
        .iter()
        .find(|(kind, _)| kind == "outcome.labelled")
        .unwrap();
    assert_eq!(labelled["proposed"], json!({"label": "pay"}));
    assert_eq!(labelled["corrected"], json!({"label": "hold"}));
    assert_eq!(labelled["by"], "ann");
    assert_eq!(labelled["model"], "primary");
    assert_eq!(labelled["agreed"], false);
}

#[tokio::test]
async fn rejections_raise_an_exception_or_follow_on_reject() {
    let people = people().await;
    let case_id = people
        .submit("sam", "payments", payment(&people, 50.0, "pay"))
        .await;
    let task_id = people.task_of(&case_id).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = people
        .decide("bob", &task_id, json!({"decision": "reject", "reason": ""}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, rejected) = people
        .decide(
            "bob",
            &task_id,
            json!({"decision": "reject", "reason": "vendor is blocked"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rejected["result"], "rejected");
    let row = people.wait_status(&case_id, "exception").await;
    let state: Value = serde_json::from_str(&row.state).unwrap();
    assert_eq!(state["error"]["kind"], "rejected");
    assert!(state["error"]["message"]
        .as_str()
        .unwrap()
        .contains("vendor is blocked"));
    assert!(people.calls.lock().unwrap().is_empty());

    // An explicit approval step with `on_reject`, decided by its role only.
    let case_id = people.submit("sam", "refund", json!({})).await;
    let task = people.task_of(&case_id).await;
    assert_eq!(task["kind"], "approval");
    assert_eq!(task["title"], "Refund the customer");
    let task_id = task["id"].as_str().unwrap().to_string();
    let (status, _) = people
        .decide("ann", &task_id, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "ann is no specialist");
    let (status, problem) = people
        .decide(
            "sue",
            &task_id,
            json!({"decision": "correct", "output": {"x": 1}}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "nothing to correct: {problem}"
    );
    let (status, _) = people
        .decide(
            "sue",
            &task_id,
            json!({"decision": "reject", "reason": "no receipt"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let row = people.wait_status(&case_id, "completed").await;
    let state: Value = serde_json::from_str(&row.state).unwrap();
    assert_eq!(state["outcome"], "refused");
    assert_eq!(state["data"]["sign_off"]["decision"], "rejected");
}

#[tokio::test]
async fn task_endpoints_need_a_valid_token_and_disabled_users_are_refused() {
    let people = people().await;
    let bare = people
        .client
        .get(format!("{}/v1/tasks", people.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = bare.json().await.unwrap();
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("keel token create"));
    let bad = people
        .client
        .get(format!("{}/v1/tasks", people.base))
        .bearer_auth("keel_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    // A submission with a bad token is refused rather than treated as anonymous.
    let submit = people
        .client
        .post(format!("{}/v1/workflows/refund/cases", people.base))
        .bearer_auth("keel_nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), StatusCode::UNAUTHORIZED);
    assert!(
        keel_engine::tasks::disable_user(people.engine.store(), "opal", 0)
            .await
            .unwrap()
    );
    let disabled = people
        .client
        .get(format!("{}/v1/tasks", people.base))
        .bearer_auth(&people.tokens["opal"])
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::UNAUTHORIZED);
    // `mine` lists only what the caller's roles may decide.
    let case_id = people.submit("sam", "refund", json!({})).await;
    people.task_of(&case_id).await;
    let mine: Vec<Value> = people
        .client
        .get(format!("{}/v1/tasks?mine=true", people.base))
        .bearer_auth(&people.tokens["ann"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        mine.iter().all(|t| t["case_id"] != case_id.as_str()),
        "ann is no specialist"
    );
}
