//! AI influence end to end through the HTTP API: in phase 1, every shape by which an `ai`
//! step's output reaches an effect (copied by `set`, through a decision table, by a `switch`
//! that picks an action reading only the input, by a `switch` that picks the case's outcome)
//! opens a task, and a real downstream server receives nothing until a person approves; then
//! exactly the expected request. `keel trust` lists each of them as an operation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keel_engine::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::gateway::{keel_toml, start, upstream};

/// The common head of every shape: the `primary` test model echoes the prompt, so the input's
/// `answer` is the AI's answer.
fn shape(name: &str, rest: &str) -> String {
    format!(
        r#"
name: {name}
version: "1"
input:
  schema:
    type: object
    required: [answer, callback, mail_id]
    properties:
      answer: {{ type: string }}
      callback: {{ type: string }}
      mail_id: {{ type: string }}
steps:
  - id: classify
    ai:
      task: classify
      labels: [spam, ham]
      prompt: "{{{{ input.answer }}}}"
      reask: 0
      route:
        - model: primary
          accept_when: "true"
{rest}"#
    )
}

/// (workflow, its steps after `classify`, the gated step, the request expected after approval
/// (`None`: the outcome is gated and nothing is sent), the outcome).
fn shapes() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<Value>,
    &'static str,
)> {
    vec![
        (
            "copy-verdict",
            r#"  - id: copy
    set: { verdict: "data.classify.output.label" }
  - id: act_copy
    action: { method: POST, url: "${ input.callback }", body: { verdict: "${ data.verdict }" } }
  - id: done
    end: done
"#,
            "act_copy",
            Some(json!({"verdict": "spam"})),
            "done",
        ),
        (
            "decide-table",
            r#"  - id: table
    decide:
      columns: ["data.classify.output.label == 'spam'"]
      rules: [{ when: [true], then: { folder: junk } }]
      default: { folder: inbox }
      into: plan
  - id: act_table
    action: { method: POST, url: "${ input.callback }", body: { folder: "${ data.plan.folder }" } }
  - id: done
    end: done
"#,
            "act_table",
            Some(json!({"folder": "junk"})),
            "done",
        ),
        (
            "switch-input",
            r#"  - id: route
    switch:
      - when: "data.classify.output.label == 'spam'"
        goto: delete_mail
      - default: done
  - id: delete_mail
    action: { method: POST, url: "${ input.callback }", body: { delete: "${ input.mail_id }" } }
  - id: done
    end: done
"#,
            "delete_mail",
            Some(json!({"delete": "M-7"})),
            "done",
        ),
        (
            "ai-end",
            r#"  - id: route
    switch:
      - when: "data.classify.output.label == 'spam'"
        goto: quarantine
      - default: deliver
  - id: quarantine
    end: quarantined
  - id: deliver
    end: delivered
"#,
            "quarantine",
            None,
            "quarantined",
        ),
    ]
}

/// Every request a downstream system received: (path, body), with no deduplication.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn downstream() -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let router = axum::Router::new().fallback(
        move |uri: axum::http::Uri, axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((uri.path().to_string(), body));
                axum::Json(json!({"ok": true}))
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mail", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

struct Setup {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    tokens: BTreeMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start(&dir, &keel_toml(&upstream.base_url, "")).await;
    for (name, rest, ..) in shapes() {
        let source = shape(name, rest);
        engine
            .deploy_source(&source, &format!("{name}.yaml"))
            .await
            .unwrap();
    }
    let mut tokens = BTreeMap::new();
    for (name, role) in [("opal", "operator"), ("ann", "reviewer")] {
        let roles = vec![role.to_string()];
        keel_engine::tasks::add_user(engine.store(), name, &roles, None, 0)
            .await
            .unwrap();
        let (secret, _) =
            keel_engine::tokens::create_token(engine.store(), name, name, &[], None, 0)
                .await
                .unwrap();
        tokens.insert(name, secret);
    }
    Setup {
        base,
        engine,
        client: reqwest::Client::new(),
        tokens,
        _dir: dir,
    }
}

impl Setup {
    async fn call(&self, who: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.client.post(url).json(&body),
            None => self.client.get(url),
        };
        let response = request.bearer_auth(&self.tokens[who]).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits (bounded) until the case is in `status`; returns it.
    async fn case_in(&self, case_id: &str, status: &str) -> Value {
        for _ in 0..500 {
            let (_, case) = self
                .call("ann", &format!("/v1/cases/{case_id}"), None)
                .await;
            if case["status"] == status {
                return case;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("case {case_id} never reached {status}");
    }

    /// The case's open task, once the case waits on it.
    async fn open_task(&self, case_id: &str) -> Value {
        self.case_in(case_id, "waiting").await;
        let (status, tasks) = self.call("ann", "/v1/tasks?status=open", None).await;
        assert_eq!(status, StatusCode::OK, "{tasks}");
        let mine: Vec<&Value> = tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["case_id"] == case_id)
            .collect();
        assert_eq!(mine.len(), 1, "one open task for {case_id}: {tasks:#}");
        mine[0].clone()
    }
}

#[tokio::test]
async fn every_shape_of_ai_influence_waits_for_a_person_in_phase_1() {
    let app = setup().await;
    for (workflow, _, gated, expected, outcome) in shapes() {
        let (callback, received) = downstream().await;
        let input =
            json!({"answer": "{\"label\": \"spam\"}", "callback": callback, "mail_id": "M-7"});
        let (status, created) = app
            .call(
                "opal",
                &format!("/v1/workflows/{workflow}/cases"),
                Some(input),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let case_id = created["case_id"].as_str().unwrap().to_string();

        let task = app.open_task(&case_id).await;
        assert_eq!(task["step"], gated, "{workflow}: {task:#}");
        let kind = if expected.is_some() {
            "action"
        } else {
            "outcome"
        };
        assert_eq!(task["kind"], kind, "{workflow}: {task:#}");
        assert_eq!(
            task["detail"]["proposals"]["classify"]["output"]["label"], "spam",
            "{workflow}: the task shows the AI proposal: {task:#}"
        );
        assert!(
            received.lock().unwrap().is_empty(),
            "{workflow}: the downstream system was called before approval"
        );
        let case = app.case_in(&case_id, "waiting").await;
        assert!(case["outcome"].is_null(), "{workflow}: {case:#}");

        let task_id = task["id"].as_str().unwrap();
        let (status, body) = app
            .call(
                "ann",
                &format!("/v1/tasks/{task_id}/decision"),
                Some(json!({"decision": "approve"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{workflow}: {body}");
        let case = app.case_in(&case_id, "completed").await;
        assert_eq!(case["outcome"], outcome, "{workflow}: {case:#}");
        let sent: Vec<Value> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(sent, expected.into_iter().collect::<Vec<_>>(), "{workflow}");
    }

    // `keel trust` lists each gated step as an operation of `classify`, in phase 1.
    let (status, operations) = app.call("ann", "/v1/trust", None).await;
    assert_eq!(status, StatusCode::OK, "{operations}");
    let mut listed: Vec<String> = operations
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["phase"], 1, "{o}");
            o["operation"].as_str().unwrap().to_string()
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "ai-end/deliver",
            "ai-end/quarantine",
            "copy-verdict/act_copy",
            "decide-table/act_table",
            "switch-input/delete_mail",
        ]
    );
}

#[tokio::test]
async fn a_rejected_outcome_raises_an_exception_and_a_reviewed_one_is_evidence() {
    let app = setup().await;
    let (callback, received) = downstream().await;
    let mut reviewed = 0;
    for decision in ["reject", "approve"] {
        let input =
            json!({"answer": "{\"label\": \"ham\"}", "callback": callback, "mail_id": "M-8"});
        let (_, created) = app
            .call("opal", "/v1/workflows/ai-end/cases", Some(input))
            .await;
        let case_id = created["case_id"].as_str().unwrap().to_string();
        let task = app.open_task(&case_id).await;
        assert_eq!(task["step"], "deliver");
        let body = match decision {
            "reject" => json!({"decision": "reject", "reason": "this is spam"}),
            _ => json!({"decision": "approve"}),
        };
        let (status, answer) = app
            .call(
                "ann",
                &format!("/v1/tasks/{}/decision", task["id"].as_str().unwrap()),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let wanted = if decision == "reject" {
            "exception"
        } else {
            "completed"
        };
        let case = app.case_in(&case_id, wanted).await;
        if decision == "reject" {
            assert!(case["outcome"].is_null(), "{case:#}");
        } else {
            assert_eq!(case["outcome"], "delivered");
        }
        reviewed += 1;
    }
    assert!(received.lock().unwrap().is_empty());
    // Both decisions are evidence for the operation `ai-end/deliver`.
    let rows = app.engine.store().journal_after(0, 10_000).await.unwrap();
    let verdicts: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == "outcome.reviewed")
        .map(|r| serde_json::from_str::<Value>(&r.data).unwrap())
        .filter(|d| d["operation"] == "ai-end/deliver")
        .map(|d| d["verdict"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(verdicts.len(), reviewed);
    assert_eq!(verdicts, ["rejected", "agree"]);
}

#[tokio::test]
async fn a_step_declared_ungated_runs_alone_and_the_deployment_journals_why() {
    let app = setup().await;
    let rest = shapes()[0].1.replace(
        "body: { verdict: \"${ data.verdict }\" } }",
        "body: { verdict: \"${ data.verdict }\" }, trust: { gate: none, reason: \"the verdict only tags the mail\" } }",
    );
    assert!(rest.contains("gate: none"));
    let source = shape("copy-ungated", &rest);
    app.engine
        .deploy_source(&source, "copy-ungated.yaml")
        .await
        .unwrap();
    let (callback, received) = downstream().await;
    let input = json!({"answer": "{\"label\": \"spam\"}", "callback": callback, "mail_id": "M-9"});
    let (_, created) = app
        .call("opal", "/v1/workflows/copy-ungated/cases", Some(input))
        .await;
    let case_id = created["case_id"].as_str().unwrap().to_string();
    app.case_in(&case_id, "completed").await;
    let sent: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(sent, [json!({"verdict": "spam"})]);
    let rows = app.engine.store().journal_after(0, 10_000).await.unwrap();
    let deployed: Value = rows
        .iter()
        .filter(|r| r.kind == "workflow.deployed")
        .map(|r| serde_json::from_str::<Value>(&r.data).unwrap())
        .find(|d| d["workflow"] == "copy-ungated")
        .unwrap();
    assert_eq!(
        deployed["ungated"],
        json!([{ "step": "act_copy", "kind": "action", "reason": "the verdict only tags the mail",
            "ai_steps": ["classify"], "paths": ["classify → copy.verdict → act_copy.body.verdict"] }]),
        "{deployed:#}"
    );
    let (_, operations) = app.call("ann", "/v1/trust", None).await;
    assert!(
        !operations.to_string().contains("copy-ungated"),
        "an ungated step is no operation: {operations}"
    );
}
