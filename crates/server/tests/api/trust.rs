//! Progressive trust end to end through the HTTP API: an operation starts in phase 1, earns a
//! promotion recommendation from reviewed decisions, is promoted by a governor who did not
//! write the version; phase 2 follows its policy and hard limits and samples auto-approved
//! actions for review; a post-hoc rejection raises a `wrong_action` exception and withdraws
//! trust at once; the SPRT demotes on a run of corrections; a changed version restarts lower.

use std::collections::BTreeMap;

use keel_engine::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::gateway::{keel_toml, start_with, upstream};

fn refunds(version: &str, start_phase: u8, policy: &str) -> String {
    format!(
        r#"
name: refunds
version: "{version}"
change: {{ author: gail, reference: CHG-{version} }}
input:
  schema:
    type: object
    required: [amount, answer, callback]
    properties:
      amount: {{ type: number }}
      answer: {{ type: string }}
      callback: {{ type: string }}
steps:
  - id: judge
    ai:
      task: classify
      labels: [pay, hold]
      prompt: "{{{{ input.answer }}}}"
      reask: 0
      route:
        - model: primary
          accept_when: "true"
  - id: pay
    action:
      method: POST
      url: "${{ input.callback }}"
      body: {{ decision: "${{ data.judge.output.label }}", amount: "${{ input.amount }}" }}
      approval: {{ roles: [reviewer] }}
      trust:
        phase: {start_phase}
        policy: "{policy}"
        hard_limits: "input.amount > 5000"
        review_rates: {{ phase2: 1.0, phase3: 1.0, phase4: 0.5 }}
        promotion: {{ min_reviews: 5, window: 30d, target_agreement: {{ phase2: 0.5, phase3: 0.5, phase4: 0.5 }} }}
        demotion: {{ target_error_rate: 0.3, alpha: 0.05, beta: 0.25 }}
  - id: done
    end: {{ outcome: paid }}
"#
    )
}

/// `refunds` version 1 at phase 3 (policy `input.amount < 100`) with `trust.critical: condition`.
fn refunds_critical(condition: &str) -> String {
    let demotion = "        demotion: { target_error_rate: 0.3, alpha: 0.05, beta: 0.25 }\n";
    let source = refunds("1", 3, "input.amount < 100");
    assert!(source.contains(demotion));
    source.replace(
        demotion,
        &format!("{demotion}        critical: '{condition}'\n"),
    )
}

struct Trust {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    tokens: BTreeMap<&'static str, String>,
    callback: String,
    _dir: tempfile::TempDir,
}

async fn trust(source: &str) -> Trust {
    trust_with(source, |_| {}).await
}

async fn trust_with(source: &str, tweak: impl FnOnce(&mut keel_engine::Options)) -> Trust {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start_with(&dir, &keel_toml(&upstream.base_url, ""), tweak).await;
    let store = engine.store();
    let mut tokens = BTreeMap::new();
    for (name, role) in [
        ("ann", "reviewer"),
        ("bob", "reviewer"),
        ("gail", "governor"),
        ("gus", "governor"),
        ("opal", "operator"),
    ] {
        let roles = vec![role.to_string()];
        assert!(keel_engine::tasks::add_user(store, name, &roles, None, 0)
            .await
            .unwrap());
        let (secret, _) = keel_engine::tokens::create_token(store, name, name, &[], None, 0)
            .await
            .unwrap();
        tokens.insert(name, secret);
    }
    let (callback, _) = crate::tasks::receiver().await;
    let t = Trust {
        base,
        engine,
        client: reqwest::Client::new(),
        tokens,
        callback,
        _dir: dir,
    };
    t.deploy(source).await;
    t
}

impl Trust {
    /// Deploys a version; one that waits for a governor (it starts above phase 1, or changes
    /// an operation) is approved by gus, who did not write it.
    async fn deploy(&self, source: &str) -> keel_engine::registry::Deployed {
        let deployed = self.engine.deploy(source, "refunds.yaml").await.unwrap();
        if deployed.status == keel_engine::registry::Status::Pending {
            let (status, body) = self
                .call(
                    "gus",
                    reqwest::Method::POST,
                    &format!(
                        "/v1/workflows/refunds/versions/{}/approve",
                        deployed.version_no
                    ),
                    Some(json!({"reason": "reviewed"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        deployed
    }

    async fn call(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who]);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn operation(&self) -> Value {
        let (status, body) = self
            .call("ann", reqwest::Method::GET, "/v1/trust/refunds/pay", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn submit(&self, amount: f64) -> String {
        let input =
            json!({"amount": amount, "answer": "{\"label\": \"pay\"}", "callback": self.callback});
        let (status, body) = self
            .call(
                "opal",
                reqwest::Method::POST,
                "/v1/workflows/refunds/cases",
                Some(input),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["case_id"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) for an open task of `kind` for the case.
    async fn task(&self, case_id: &str, kind: &str) -> Value {
        for _ in 0..500 {
            let (_, tasks) = self
                .call("ann", reqwest::Method::GET, "/v1/tasks?limit=1000", None)
                .await;
            if let Some(task) = tasks
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["case_id"] == case_id && t["kind"] == kind)
            {
                return task.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no {kind} task for case {case_id}");
    }

    async fn decide(&self, who: &str, task_id: &str, decision: Value) -> Value {
        let (status, body) = self
            .call(
                who,
                reqwest::Method::POST,
                &format!("/v1/tasks/{task_id}/decision"),
                Some(decision),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn wait_status(&self, case_id: &str, wanted: &str) {
        for _ in 0..500 {
            if self.engine.case(case_id).await.unwrap().status == wanted {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("case {case_id} never reached {wanted}");
    }

    async fn kinds(&self, case_id: &str) -> Vec<(String, Value)> {
        self.engine
            .timeline(case_id)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.kind, serde_json::from_str(&row.data).unwrap()))
            .collect()
    }

    async fn trust_entries(&self, kind: &str) -> Vec<Value> {
        self.engine
            .store()
            .journal_after(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn trust_is_earned_from_reviews_approved_by_another_governor_and_withdrawn_on_a_wrong_action()
{
    let t = trust(&refunds("1", 1, "input.amount < 100")).await;
    let op = t.operation().await;
    assert_eq!(
        (op["operation"].as_str(), op["phase"].as_i64()),
        (Some("refunds/pay"), Some(1))
    );
    assert_eq!(t.trust_entries("trust.initialised").await.len(), 1);

    // Phase 1: every action waits; six approvals are six agreeing reviews.
    for _ in 0..6 {
        let case_id = t.submit(50.0).await;
        let task = t.task(&case_id, "action").await;
        t.decide(
            "ann",
            task["id"].as_str().unwrap(),
            json!({"decision": "approve"}),
        )
        .await;
        t.wait_status(&case_id, "completed").await;
        let gate = t
            .kinds(&case_id)
            .await
            .into_iter()
            .find(|(k, _)| k == "trust.gate")
            .unwrap()
            .1;
        assert_eq!(
            (gate["decision"].as_str(), gate["reason"].as_str()),
            (Some("task"), Some("phase_1"))
        );
    }
    let op = t.operation().await;
    assert_eq!(
        (
            op["reviews_in_window"].as_u64(),
            op["agreements_in_window"].as_u64()
        ),
        (Some(6), Some(6))
    );
    // Wilson lower bound of 6/6 at 95% is 0.61 ≥ the 0.5 target, with ≥ 5 reviews.
    assert!(op["wilson_low"].as_f64().unwrap() > 0.6, "{op:#}");
    let (status, _) = t
        .call(
            "gus",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/promote",
            Some(json!({"reason": "early"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no recommendation yet: promotion is earned"
    );
    let pass = t.engine.evaluate_trust_once().await.unwrap();
    assert_eq!(pass.recommended, ["refunds/pay"]);
    assert_eq!(
        t.engine
            .evaluate_trust_once()
            .await
            .unwrap()
            .recommended
            .len(),
        0,
        "one open recommendation at a time"
    );
    let (_, recommendations) = t
        .call(
            "gus",
            reqwest::Method::GET,
            "/v1/trust/recommendations?status=open",
            None,
        )
        .await;
    assert_eq!(recommendations[0]["to_phase"], 2);
    assert_eq!(recommendations[0]["evidence"]["reviews"], 6);

    // The author of the version may not promote it; a reviewer may not govern at all.
    let body = Some(json!({"reason": "6 of 6 agreed"}));
    let (status, problem) = t
        .call(
            "gail",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/promote",
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("wrote this version"));
    let (status, _) = t
        .call(
            "ann",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/promote",
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(t.trust_entries("trust.refused").await.len(), 1);
    let (status, promoted) = t
        .call(
            "gus",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/promote",
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{promoted}");
    assert_eq!(promoted["to_phase"], 2);
    let entry = &t.trust_entries("trust.promoted").await[0];
    assert_eq!(entry["by"], "gus");
    assert_eq!(entry["evidence"]["reviews"], 6);
    assert_eq!(t.operation().await["phase"], 2);

    // Phase 2: the policy holds → automatic, sampled for review (100% here), no task holds it.
    let auto = t.submit(50.0).await;
    t.wait_status(&auto, "completed").await;
    let review = t.task(&auto, "review").await;
    // The policy does not hold → a person; a hard limit → a person.
    for (amount, reason) in [(500.0, "policy_false"), (6000.0, "hard_limit")] {
        let case_id = t.submit(amount).await;
        t.task(&case_id, "action").await;
        let gate = t
            .kinds(&case_id)
            .await
            .into_iter()
            .find(|(k, _)| k == "trust.gate")
            .unwrap()
            .1;
        assert_eq!(
            (gate["phase"].as_i64(), gate["reason"].as_str()),
            (Some(2), Some(reason))
        );
    }

    // The post-hoc review finds the automatic action wrong: evidence, an exception for
    // remediation, and trust withdrawn at once (critical).
    let decided = t
        .decide(
            "bob",
            review["id"].as_str().unwrap(),
            json!({"decision": "reject", "reason": "should have been held"}),
        )
        .await;
    assert_eq!(decided["result"], "rejected");
    let reviewed = t
        .kinds(&auto)
        .await
        .into_iter()
        .filter(|(k, _)| k == "outcome.reviewed")
        .map(|(_, d)| d)
        .collect::<Vec<_>>();
    assert_eq!(reviewed.len(), 1);
    assert_eq!(
        (
            reviewed[0]["source"].as_str(),
            reviewed[0]["verdict"].as_str()
        ),
        (Some("post"), Some("rejected"))
    );
    let (_, exceptions) = t
        .call(
            "opal",
            reqwest::Method::GET,
            "/v1/exceptions?kind=wrong_action",
            None,
        )
        .await;
    assert_eq!(exceptions.as_array().unwrap().len(), 1, "{exceptions:#}");
    assert_eq!(exceptions[0]["case_id"], auto.as_str());
    assert_eq!(t.operation().await["phase"], 1);
    let demoted = &t.trust_entries("trust.demoted").await[0];
    assert_eq!(
        (demoted["trigger"].as_str(), demoted["to_phase"].as_i64()),
        (Some("critical_exception"), Some(1))
    );
    // A decided review cannot be decided again.
    let (status, _) = t
        .call(
            "ann",
            reqwest::Method::POST,
            &format!("/v1/tasks/{}/decision", review["id"].as_str().unwrap()),
            Some(json!({"decision": "approve"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_sprt_demotes_on_a_run_of_corrections_and_a_governor_can_demote_by_hand() {
    // Starting in phase 3: every action is automatic, and every one is reviewed (rate 1.0).
    let t = trust(&refunds("1", 3, "input.amount < 100")).await;
    assert_eq!(t.operation().await["phase"], 3);
    let mut reviews = Vec::new();
    for _ in 0..4 {
        let case_id = t.submit(500.0).await;
        t.wait_status(&case_id, "completed").await;
        reviews.push(t.task(&case_id, "review").await);
    }
    // Each review corrects the action: four errors in a row against a 30% target error rate
    // (H1 60%, α 5%, β 25%): each adds ln 2 to the log-likelihood ratio, which passes
    // ln(0.75/0.05) = 2.71 at the fourth (3 ln 2 = 2.08 does not).
    for (i, review) in reviews.iter().enumerate() {
        t.decide(
            "ann",
            review["id"].as_str().unwrap(),
            json!({"decision": "correct", "output": {"label": "hold"}}),
        )
        .await;
        let pass = t.engine.evaluate_trust_once().await.unwrap();
        if i < 3 {
            assert!(pass.demoted.is_empty(), "demoted after {} errors", i + 1);
        } else {
            assert_eq!(pass.demoted, ["refunds/pay"]);
        }
    }
    assert_eq!(t.operation().await["phase"], 2);
    let demoted = &t.trust_entries("trust.demoted").await[0];
    assert_eq!(demoted["trigger"], "sprt");
    assert!(
        demoted["evidence"]["sprt"]["llr"].as_f64().unwrap()
            >= demoted["evidence"]["sprt"]["upper_bound"].as_f64().unwrap(),
        "{demoted:#}"
    );
    // Corrections are wrong actions too: each raised an exception for remediation.
    let (_, exceptions) = t
        .call(
            "opal",
            reqwest::Method::GET,
            "/v1/exceptions?kind=wrong_action",
            None,
        )
        .await;
    assert_eq!(exceptions.as_array().unwrap().len(), 4);

    // By hand: a governor demotes with a reason; a reviewer may not.
    let body = Some(json!({"reason": "vendor fraud wave"}));
    let (status, _) = t
        .call(
            "ann",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/demote",
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, changed) = t
        .call(
            "gail",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/demote",
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["from_phase"].as_i64(), changed["to_phase"].as_i64()),
        (Some(2), Some(1))
    );
    let (status, _) = t
        .call(
            "gail",
            reqwest::Method::POST,
            "/v1/trust/refunds/pay/demote",
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "phase 1 is the floor"
    );
}

#[tokio::test]
async fn a_changed_version_restarts_the_operation_one_phase_down_recording_author_and_approver() {
    let t = trust(&refunds("1", 3, "input.amount < 100")).await;
    assert_eq!(t.operation().await["phase"], 3);
    // The same configuration under a new label changes nothing.
    let same = t.deploy(&refunds("2", 3, "input.amount < 100")).await;
    assert_eq!(
        same.status,
        keel_engine::registry::Status::Active,
        "no approval needed"
    );
    assert_eq!(t.operation().await["phase"], 3);
    assert!(t.trust_entries("trust.demoted").await.is_empty());
    // A changed policy waits for a governor (gus approves in `deploy`); then one phase down,
    // with who wrote and who approved the version.
    let changed = t.deploy(&refunds("3", 3, "input.amount < 200")).await;
    assert_eq!(changed.status, keel_engine::registry::Status::Pending);
    assert_eq!(
        changed.changes,
        [json!({"operation": "refunds/pay", "what": ["policy"]})]
    );
    assert_eq!(t.operation().await["phase"], 2);
    let entry = &t.trust_entries("trust.demoted").await[0];
    assert_eq!(entry["trigger"], "change");
    assert_eq!(
        (entry["author"].as_str(), entry["approved_by"].as_str()),
        (Some("gail"), Some("gus"))
    );
    assert_eq!(entry["reference"], "CHG-3");
    assert_ne!(entry["config_sha256"], entry["previous_config_sha256"]);
}

#[tokio::test]
async fn reviews_measure_accuracy_and_fit_a_calibrator_that_later_proposals_carry() {
    let t = trust(&refunds("1", 1, "data.judge.confidence >= 0.7")).await;
    // The mock model gives no log-probabilities: raw confidence is 0 (method `none`). 60
    // reviews: 48 agree, 12 correct the label, so the raw confidence is badly calibrated.
    for i in 0..60 {
        let case_id = t.submit(50.0).await;
        let task = t.task(&case_id, "action").await;
        let decision = if i % 5 == 4 {
            json!({"decision": "correct", "output": {"label": "hold"}})
        } else {
            json!({"decision": "approve"})
        };
        t.decide("ann", task["id"].as_str().unwrap(), decision)
            .await;
        t.wait_status(&case_id, "completed").await;
    }
    let (status, accuracy) = t
        .call(
            "ann",
            reqwest::Method::GET,
            "/v1/trust/refunds/pay/accuracy",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accuracy}");
    assert_eq!(
        (
            accuracy["reviews"].as_u64(),
            accuracy["agreements"].as_u64()
        ),
        (Some(60), Some(48))
    );
    let model = &accuracy["per_model"][0];
    assert_eq!(model["model"], "primary");
    // All 60 raw confidences are 0 while 80% were right: ECE 0.8.
    assert!(
        (model["ece"].as_f64().unwrap() - 0.8).abs() < 1e-9,
        "{model:#}"
    );
    assert_eq!(accuracy["confusion"]["labels"], json!(["hold", "pay"]));
    assert_eq!(accuracy["confusion"]["matrix"], json!([[0, 0], [12, 48]]));

    // The trust pass fits a calibrator, kept because it beats the raw values on held-out reviews.
    let pass = t.engine.evaluate_trust_once().await.unwrap();
    assert_eq!(pass.calibrators_fitted, 1);
    let (_, accuracy) = t
        .call(
            "ann",
            reqwest::Method::GET,
            "/v1/trust/refunds/pay/accuracy",
            None,
        )
        .await;
    let calibrator = &accuracy["per_model"][0]["calibrator"];
    assert_ne!(calibrator["kind"], "none", "{calibrator:#}");
    assert!(calibrator["ece_after"].as_f64().unwrap() < calibrator["ece_before"].as_f64().unwrap());
    // A new proposal carries the calibrated confidence (≈ 0.8) with the raw one beside it.
    let case_id = t.submit(50.0).await;
    t.task(&case_id, "action").await;
    let state: Value = serde_json::from_str(&t.engine.case(&case_id).await.unwrap().state).unwrap();
    let proposal = &state["data"]["judge"];
    assert_eq!(proposal["raw_confidence"], 0.0, "{proposal:#}");
    assert_eq!(proposal["calibrator"], calibrator["kind"]);
    let calibrated = proposal["confidence"].as_f64().unwrap();
    assert!(
        (0.6..=0.95).contains(&calibrated),
        "calibrated confidence {calibrated}: {calibrator:#}"
    );
    assert_eq!(t.trust_entries("calibration.fitted").await.len(), 1);
}

#[tokio::test]
async fn a_critical_exception_sends_the_operation_back_to_phase_one_at_once() {
    // `trust.critical` makes a corrected post-hoc review critical (by default only a rejected
    // one is): one correction, not the SPRT's four, withdraws trust entirely.
    let source = refunds_critical(
        r#"exception.kind == "wrong_action" && exception.detail.verdict == "corrected""#,
    );
    let t = trust(&source).await;
    assert_eq!(t.operation().await["phase"], 3);
    let mut reviews = Vec::new();
    for _ in 0..2 {
        let case_id = t.submit(500.0).await;
        t.wait_status(&case_id, "completed").await;
        reviews.push(t.task(&case_id, "review").await);
    }
    // An agreeing review raises no exception: nothing changes.
    t.decide(
        "ann",
        reviews[0]["id"].as_str().unwrap(),
        json!({"decision": "approve"}),
    )
    .await;
    let pass = t.engine.evaluate_trust_once().await.unwrap();
    assert!(pass.demoted.is_empty(), "{pass:?}");
    assert_eq!(t.operation().await["phase"], 3);
    // One correction: a `wrong_action` exception whose verdict the condition names. The
    // decision itself checks it: the operation is back in phase 1 before any pass runs.
    t.decide(
        "ann",
        reviews[1]["id"].as_str().unwrap(),
        json!({"decision": "correct", "output": {"label": "hold"}}),
    )
    .await;
    assert_eq!(t.operation().await["phase"], 1);
    let pass = t.engine.evaluate_trust_once().await.unwrap();
    assert!(pass.demoted.is_empty(), "{pass:?}");
    let demoted = t.trust_entries("trust.demoted").await;
    assert_eq!(demoted.len(), 1, "{demoted:#?}");
    assert_eq!(demoted[0]["trigger"], "critical_exception");
    assert_eq!(demoted[0]["evidence"]["kind"], "wrong_action");
    assert_eq!(
        demoted[0]["evidence"]["exception_id"],
        format!("{}.wrong", reviews[1]["id"].as_str().unwrap())
    );
    // The next pass sees the same exception again (it re-reads a margin) but it was raised
    // before the phase change: no second demotion.
    let pass = t.engine.evaluate_trust_once().await.unwrap();
    assert!(pass.demoted.is_empty(), "{pass:?}");
    assert_eq!(t.trust_entries("trust.demoted").await.len(), 1);
}

#[tokio::test]
async fn an_exception_a_case_raises_is_checked_against_trust_critical_without_waiting_for_a_pass() {
    // The model answers garbage for one case: its `judge` step (an `ai` step of the operation)
    // raises an exception through the case's own write. `trust.critical` names that step; the
    // periodic pass is an hour away, so only the committer's wake-up can demote in time.
    let source = refunds_critical(r#"exception.step == "judge""#);
    let t = trust_with(&source, |options| {
        options.trust_interval = std::time::Duration::from_secs(3_600);
    })
    .await;
    assert_eq!(t.operation().await["phase"], 3);
    // A good case first: no exception, no change.
    let good = t.submit(500.0).await;
    t.wait_status(&good, "completed").await;
    let input = json!({"amount": 20.0, "answer": "not a label at all", "callback": t.callback});
    let (status, body) = t
        .call(
            "opal",
            reqwest::Method::POST,
            "/v1/workflows/refunds/cases",
            Some(input),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bad = body["case_id"].as_str().unwrap().to_string();
    // Bounded wait (not a timing assertion): the wake-up demotes in well under a second; the
    // hour-long pass never would within this test.
    let mut phase = Value::Null;
    for _ in 0..1_000 {
        phase = t.operation().await["phase"].clone();
        if phase == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(phase, 1, "the critical exception did not demote");
    let demoted = t.trust_entries("trust.demoted").await;
    assert_eq!(demoted.len(), 1, "{demoted:#?}");
    assert_eq!(demoted[0]["trigger"], "critical_exception");
    assert_eq!(demoted[0]["evidence"]["case_id"], bad);
    assert_eq!(demoted[0]["evidence"]["step"], "judge");
    // The exception is the case's, open in the queue with its context.
    let kinds = t.kinds(&bad).await;
    assert!(
        kinds.iter().any(|(kind, _)| kind == "exception.raised"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn calibrators_keep_refitting_once_a_model_has_more_reviews_than_a_fit_uses() {
    // A fit uses the newest 50,000 reviews; what triggers a refit is reviews that arrived
    // since, counted over all of them, so a busy model's calibrator never freezes.
    let t = trust(&refunds("1", 1, "true")).await;
    let store = t.engine.store();
    let mut next = 0i64;
    let mut reviews = |n: i64| {
        let rows: Vec<keel_store::TrustOutcomeRow> = (next..next + n)
            .map(|i| {
                // Confidence 0.9, right 60% of the time: raw confidence is miscalibrated.
                let agree = i % 5 < 3;
                keel_store::TrustOutcomeRow {
                    operation: "refunds/pay".into(),
                    case_id: format!("c{i}"),
                    task_id: format!("t{i}"),
                    at_ms: 1_000 + i,
                    source: "pre".into(),
                    verdict: if agree { "agree" } else { "corrected" }.into(),
                    phase: 1,
                    model: Some("primary".into()),
                    confidence: Some(if i % 2 == 0 { 0.9 } else { 0.8 }),
                    cost_usd: None,
                    ai_step: Some("refunds/judge".into()),
                    proposed_label: None,
                    final_label: None,
                }
            })
            .collect();
        next += n;
        rows
    };
    store.insert_trust_outcomes(&reviews(50_100)).await.unwrap();
    assert_eq!(t.engine.refit_calibrators_once().await.unwrap(), 1);
    let first = store.calibrators().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].pairs, first[0].reviews_seen), (50_000, 50_100));
    // Fewer new reviews than a refit waits for: nothing.
    store.insert_trust_outcomes(&reviews(10)).await.unwrap();
    assert_eq!(t.engine.refit_calibrators_once().await.unwrap(), 0);
    // Enough new ones (25 since the fit): refitted, on the newest 50,000.
    store.insert_trust_outcomes(&reviews(15)).await.unwrap();
    assert_eq!(t.engine.refit_calibrators_once().await.unwrap(), 1);
    let second = store.calibrators().await.unwrap();
    assert_eq!((second[0].pairs, second[0].reviews_seen), (50_000, 50_125));
    assert_eq!(t.trust_entries("calibration.fitted").await.len(), 2);
}

#[tokio::test]
async fn a_version_that_ungates_an_operation_or_names_no_author_cannot_slip_through() {
    let t = trust(&refunds("1", 1, "input.amount < 100")).await;
    // Declaring the action ungated removes an operation: that is a change to what decides.
    let ungated = refunds("2", 1, "input.amount < 100").replace(
        "      approval: { roles: [reviewer] }\n      trust:\n        phase: 1\n",
        "      approval: { roles: [reviewer] }\n      trust:\n        gate: none\n        reason: \"a test of change control\"\n        phase: 1\n",
    );
    assert_ne!(
        ungated,
        refunds("2", 1, "input.amount < 100"),
        "the test edits the file"
    );
    let deployed = t.engine.deploy(&ungated, "refunds.yaml").await.unwrap();
    assert_eq!(deployed.status, keel_engine::registry::Status::Pending);
    assert_eq!(
        deployed.changes,
        [json!({"operation": "refunds/pay", "what": ["removed"]})]
    );
    // New cases still run the gated version.
    let case_id = t.submit(50.0).await;
    t.task(&case_id, "action").await;
    assert_eq!(t.engine.case(&case_id).await.unwrap().workflow_version, 1);
    // A version that names no author cannot be approved: four eyes cannot be checked.
    let anonymous = refunds("3", 1, "input.amount < 150")
        .replace("change: { author: gail, reference: CHG-3 }\n", "");
    assert!(
        !anonymous.contains("change:"),
        "the test removes the change record"
    );
    let deployed = t.engine.deploy(&anonymous, "refunds.yaml").await.unwrap();
    assert_eq!(deployed.status, keel_engine::registry::Status::Pending);
    let (status, body) = t
        .call(
            "gus",
            reqwest::Method::POST,
            &format!(
                "/v1/workflows/refunds/versions/{}/approve",
                deployed.version_no
            ),
            Some(json!({"reason": "looks fine"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("names no author"),
        "{body}"
    );
    // A reviewer is no governor.
    let (status, _) = t
        .call(
            "ann",
            reqwest::Method::POST,
            "/v1/workflows/refunds/versions/2/approve",
            Some(json!({"reason": "looks fine"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Approving the older pending version once it is decided is a conflict, not a change.
    let (status, _) = t
        .call(
            "gus",
            reqwest::Method::POST,
            "/v1/workflows/refunds/versions/2/reject",
            Some(json!({"reason": "keep the gate"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = t
        .call(
            "gus",
            reqwest::Method::POST,
            "/v1/workflows/refunds/versions/2/approve",
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let refused = t.trust_entries("workflow.decision_refused").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
}
