//! The trust loop end to end, played by a scripted team through the HTTP API on a real
//! server with the built-in learner: an operator (opal), a reviewer (ann), the workflow's
//! author (gail, also a governor) and another governor (gus).
//!
//! 1. The learner's first version is a challenger with nothing to be tested on; opal asks to
//!    serve it anyway, gail (who did not ask) approves. opal cannot approve her own request.
//! 2. Phase 1: ann decides every proposal from the true labels; her decisions teach the
//!    learner in batches (challengers that pass the non-inferiority test and serve), until it
//!    is as accurate as a learner trained on every label. gus promotes (gail, the author, may
//!    not).
//! 3. Phase 2, then phase 3, on sampled post-hoc reviews.
//! 4. opal posts 200 wrong labels: the update is a challenger, fails its test, never serves;
//!    the operation stays in phase 3 and keeps answering right.
//! 5. The input stream drifts (billing words now mean a technical fault): sampled reviews
//!    correct the actions, the SPRT demotes, and every automatic action since the last good
//!    evidence that nobody reviewed becomes a retro-review task; the demotion names how many.
//! 6. A new workflow version that changes the prompt waits for a governor: cases keep running
//!    on the old one; the author cannot approve it; gus approves and change control moves the
//!    operation down; a rejected version never runs.
//!
//! The number of human decisions each step took is printed (`--nocapture`).

use std::collections::{BTreeMap, HashMap, HashSet};

use keel_engine::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::gateway::{keel_toml, start_with, upstream};

const BILLING: &[&str] = &[
    "invoice",
    "refund",
    "charge",
    "payment",
    "card",
    "billing",
    "paid",
    "price",
    "receipt",
    "subscription",
    "vat",
    "bank",
];
const TECHNICAL: &[&str] = &[
    "crash", "error", "login", "server", "bug", "timeout", "install", "update", "password",
    "screen", "sync", "offline",
];
const FILLER: &[&str] = &[
    "please",
    "help",
    "my",
    "the",
    "account",
    "today",
    "again",
    "since",
    "yesterday",
    "team",
    "hello",
    "thanks",
    "urgent",
    "issue",
    "problem",
    "still",
    "with",
    "for",
    "our",
    "office",
];

/// A small seeded generator (xorshift64*), so every run sees the same tickets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

/// A ticket and its true label: three words of its class, four shared ones, and one word of
/// the other class in one ticket of eight.
fn ticket(rng: &mut Rng) -> (String, &'static str) {
    let billing = rng.chance(0.5);
    let (own, other, label) = if billing {
        (BILLING, TECHNICAL, "billing")
    } else {
        (TECHNICAL, BILLING, "technical")
    };
    let mut words: Vec<&str> = (0..3).map(|_| rng.pick(own)).collect();
    words.extend((0..4).map(|_| rng.pick(FILLER)));
    if rng.chance(0.125) {
        words.push(rng.pick(other));
    }
    for i in (1..words.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        words.swap(i, j);
    }
    (words.join(" "), label)
}

/// After the drift: tickets full of billing words that are technical faults.
fn drifted(rng: &mut Rng) -> (String, &'static str) {
    let mut words: Vec<&str> = (0..3).map(|_| rng.pick(BILLING)).collect();
    words.extend((0..3).map(|_| rng.pick(FILLER)));
    (words.join(" "), "technical")
}

fn workflow(version: &str, prompt: &str) -> String {
    format!(
        r#"
name: mail
version: "{version}"
change: {{ author: gail, reference: CHG-{version} }}
input:
  schema:
    type: object
    required: [text, callback]
    properties:
      text: {{ type: string }}
      callback: {{ type: string }}
steps:
  - id: triage
    ai:
      task: classify
      labels: [billing, technical]
      prompt: "{prompt}"
      reask: 0
      route:
        - model: learner
          accept_when: "true"
  - id: route
    action:
      method: POST
      url: "${{ input.callback }}"
      body: {{ queue: "${{ data.triage.output.label }}" }}
      approval: {{ roles: [reviewer] }}
      trust:
        phase: 1
        policy: "true"
        approvers: [governor]
        review_rates: {{ phase2: 0.5, phase3: 0.3, phase4: 0.05 }}
        promotion: {{ min_reviews: 40, window: 30d, target_agreement: {{ phase2: 0.85, phase3: 0.85, phase4: 0.9 }} }}
        demotion: {{ target_error_rate: 0.1, alpha: 0.05, beta: 0.2 }}
  - id: done
    end: {{ outcome: routed }}
"#
    )
}

struct Team {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    tokens: BTreeMap<&'static str, String>,
    callback: String,
    /// Case id → true label.
    truth: HashMap<String, &'static str>,
    /// Case id → the text submitted.
    texts: HashMap<String, String>,
    /// Human decisions per step of the script.
    decisions: Vec<(&'static str, usize)>,
    _dir: tempfile::TempDir,
}

impl Team {
    async fn call(
        &self,
        who: &str,
        method: Method,
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

    async fn ok(&self, who: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(who, method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn submit(&mut self, text: String, label: &'static str) -> Value {
        let input = json!({ "text": text, "callback": self.callback });
        let (status, body) = self
            .call(
                "opal",
                Method::POST,
                "/v1/workflows/mail/cases",
                Some(input),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["case_id"].as_str().unwrap().to_string();
        self.truth.insert(id.clone(), label);
        self.texts.insert(id, text);
        body
    }

    /// Waits until no case is running (each has completed, failed or waits for a person).
    async fn settle(&self) {
        for _ in 0..2_000 {
            let running = self
                .truth
                .keys()
                .map(|id| self.engine.case(id))
                .collect::<Vec<_>>();
            let mut busy = false;
            for case in running {
                let status = case.await.unwrap().status;
                if status == "running" {
                    busy = true;
                    break;
                }
            }
            if !busy {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("cases never settled");
    }

    async fn open_tasks(&self, kind: &str) -> Vec<Value> {
        let body = self
            .ok(
                "ann",
                Method::GET,
                &format!("/v1/tasks?kind={kind}&limit=1000"),
                None,
            )
            .await;
        body.as_array().unwrap().clone()
    }

    /// ann decides every open task of `kind` from the true labels; returns how many.
    async fn review_all(&self, kind: &str) -> usize {
        let tasks = self.open_tasks(kind).await;
        for task in &tasks {
            let case_id = task["case_id"].as_str().unwrap();
            let truth = self.truth[case_id];
            let proposed = task["detail"]["proposals"]["triage"]["output"]["label"]
                .as_str()
                .unwrap_or_default();
            let decision = if proposed == truth {
                json!({"decision": "approve"})
            } else {
                json!({"decision": "correct", "output": {"label": truth}})
            };
            self.ok(
                "ann",
                Method::POST,
                &format!("/v1/tasks/{}/decision", task["id"].as_str().unwrap()),
                Some(decision),
            )
            .await;
        }
        tasks.len()
    }

    async fn phase(&self) -> i64 {
        self.ok("ann", Method::GET, "/v1/trust/mail/route", None)
            .await["phase"]
            .as_i64()
            .unwrap()
    }

    async fn entries(&self, kind: &str) -> Vec<(String, Value)> {
        self.engine
            .store()
            .journal_after(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.actor_id, serde_json::from_str(&e.data).unwrap()))
            .collect()
    }

    /// Accuracy of the serving learner on `set`.
    async fn serving_accuracy(&self, set: &[(String, &str)]) -> (i64, f64) {
        let rows = self.engine.store().serving_learners().await.unwrap();
        let row = rows
            .iter()
            .find(|r| r.workflow == "mail")
            .expect("a serving learner");
        let learner = keel_ai::learner::Learner::from_bytes(&row.model).unwrap();
        (row.version, accuracy(&learner, set))
    }

    /// Promotes the open recommendation: the author is refused, gus approves.
    async fn promote(&mut self, step: &'static str) {
        self.engine.evaluate_trust_once().await.unwrap();
        let open = self
            .ok(
                "ann",
                Method::GET,
                "/v1/trust/recommendations?status=open",
                None,
            )
            .await;
        let operation = self
            .ok("ann", Method::GET, "/v1/trust/mail/route", None)
            .await;
        assert!(
            open.as_array()
                .unwrap()
                .iter()
                .any(|r| r["operation"] == "mail/route"),
            "{step}: a recommendation: {operation:#}"
        );
        let (status, refused) = self
            .call(
                "gail",
                Method::POST,
                "/v1/trust/mail/route/promote",
                Some(json!({"reason": "mine"})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the author may not promote: {refused}"
        );
        self.ok(
            "gus",
            Method::POST,
            "/v1/trust/mail/route/promote",
            Some(json!({"reason": "the evidence holds"})),
        )
        .await;
        self.decisions.push((step, 2));
    }
}

fn accuracy(learner: &keel_ai::learner::Learner, set: &[(String, &str)]) -> f64 {
    let labels = ["billing".to_string(), "technical".to_string()];
    let right = set
        .iter()
        .filter(|(text, label)| {
            learner
                .predict_within(text, &labels)
                .is_some_and(|p| p.label == *label)
        })
        .count();
    right as f64 / set.len() as f64
}

async fn team() -> Team {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = keel_toml(
        &upstream.base_url,
        "[learning]\nbatch = 20\nholdout = 5\nmin_evaluation = 20\n",
    );
    let (engine, base) = start_with(&dir, &toml, |options| {
        // Passes are driven by the test.
        options.trust_interval = std::time::Duration::from_secs(3_600);
    })
    .await;
    let store = engine.store();
    let mut tokens = BTreeMap::new();
    for (name, role) in [
        ("ann", "reviewer"),
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
    Team {
        base,
        engine,
        client: reqwest::Client::new(),
        tokens,
        callback,
        truth: HashMap::new(),
        texts: HashMap::new(),
        decisions: Vec::new(),
        _dir: dir,
    }
}

#[tokio::test]
async fn the_trust_loop_holds_from_first_version_to_demotion_and_change_control() {
    let mut t = team().await;
    let deployed = t
        .engine
        .deploy(&workflow("1", "{{ input.text }}"), "mail.yaml")
        .await
        .unwrap();
    assert_eq!(
        deployed.status.as_str(),
        "active",
        "a first version at phase 1 needs no approval"
    );
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let test_set: Vec<(String, &str)> = (0..400).map(|_| ticket(&mut rng)).collect();

    // 1. The first version: a challenger with nothing to be tested on.
    let seed: Vec<(String, &str)> = (0..6).map(|_| ticket(&mut rng)).collect();
    let examples: Vec<Value> = seed
        .iter()
        .map(|(text, label)| json!({"text": text, "label": label}))
        .collect();
    let learned = t
        .ok(
            "opal",
            Method::POST,
            "/v1/learners/mail/triage/examples",
            Some(json!({"examples": examples})),
        )
        .await;
    assert_eq!(learned["status"], "challenger", "{learned}");
    let challenger = t.entries("learner.challenger").await;
    assert_eq!(
        challenger[0].0, "opal",
        "the actor of a learner entry is who caused it"
    );
    let (status, body) = t
        .call(
            "gus",
            Method::POST,
            "/v1/learners/mail/triage/versions/1/approve",
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing asked yet: {body}");
    t.ok(
        "opal",
        Method::POST,
        "/v1/learners/mail/triage/versions/1/force",
        Some(json!({"reason": "bootstrap from six labelled tickets"})),
    )
    .await;
    let (status, body) = t
        .call(
            "opal",
            Method::POST,
            "/v1/learners/mail/triage/versions/1/approve",
            Some(json!({"reason": "mine"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an operator cannot approve: {body}"
    );
    t.ok(
        "gail",
        Method::POST,
        "/v1/learners/mail/triage/versions/1/approve",
        Some(json!({"reason": "a first version in phase 1: every answer is reviewed"})),
    )
    .await;
    t.decisions
        .push(("1. first learner version (ask + approve)", 2));
    let (first_version, first_accuracy) = t.serving_accuracy(&test_set).await;
    assert_eq!(first_version, 1);

    // 2. Phase 1: every proposal is decided by ann; her decisions teach.
    let mut all_labelled: Vec<(String, String)> = seed
        .iter()
        .map(|(t, l)| (t.clone(), l.to_string()))
        .collect();
    let mut reviewed = 0;
    for _ in 0..14 {
        for _ in 0..20 {
            let (text, label) = ticket(&mut rng);
            all_labelled.push((text.clone(), label.to_string()));
            t.submit(text, label).await;
        }
        t.settle().await;
        reviewed += t.review_all("action").await;
        t.settle().await;
        t.engine.learn_once().await.unwrap();
    }
    t.decisions.push(("2. phase 1 reviews", reviewed));
    let promoted = t.entries("learner.promoted").await;
    assert!(
        promoted.len() >= 2,
        "reviews became served versions: {promoted:?}"
    );
    let from_reviews: Vec<_> = t
        .entries("learner.challenger")
        .await
        .into_iter()
        .filter(|(_, d)| {
            d["source"]
                .as_str()
                .unwrap_or_default()
                .starts_with("reviews:")
        })
        .collect();
    assert!(
        from_reviews.len() >= 4,
        "batches of reviews: {}",
        from_reviews.len()
    );
    let (served, taught_accuracy) = t.serving_accuracy(&test_set).await;
    let mut everything = keel_ai::learner::Learner::default();
    everything.update_batch(&all_labelled).unwrap();
    let full_accuracy = accuracy(&everything, &test_set);
    let failed = t.entries("learner.failed").await.len();
    eprintln!("learner: v1 {first_accuracy:.3}; after reviews v{served} {taught_accuracy:.3} ({} challengers from reviews, {failed} failed); trained on every label {full_accuracy:.3}", from_reviews.len());
    assert!(
        taught_accuracy > first_accuracy,
        "{taught_accuracy} > {first_accuracy}"
    );
    assert!(
        taught_accuracy >= full_accuracy - 0.02,
        "taught by reviews {taught_accuracy:.3} vs trained on every label {full_accuracy:.3}"
    );
    t.promote("2. promotion to phase 2 (refused author + governor)")
        .await;
    assert_eq!(t.phase().await, 2);

    // 3. Phase 2 → 3 on sampled post-hoc reviews.
    let mut reviewed = 0;
    for _ in 0..10 {
        for _ in 0..20 {
            let (text, label) = ticket(&mut rng);
            t.submit(text, label).await;
        }
        t.settle().await;
        reviewed += t.review_all("review").await;
        if !t
            .engine
            .evaluate_trust_only()
            .await
            .unwrap()
            .recommended
            .is_empty()
        {
            break;
        }
    }
    t.decisions.push(("3. phase 2 post-hoc reviews", reviewed));
    t.promote("3. promotion to phase 3").await;
    assert_eq!(t.phase().await, 3);

    // 4. A poisoned update: 200 wrong labels. It is a challenger and fails its test.
    let (before_version, before_accuracy) = t.serving_accuracy(&test_set).await;
    let poison: Vec<Value> = (0..200)
        .map(|_| {
            let (text, label) = ticket(&mut rng);
            let wrong = if label == "billing" {
                "technical"
            } else {
                "billing"
            };
            json!({"text": text, "label": wrong})
        })
        .collect();
    let learned = t
        .ok(
            "opal",
            Method::POST,
            "/v1/learners/mail/triage/examples",
            Some(json!({"examples": poison})),
        )
        .await;
    assert_eq!(learned["status"], "failed", "{learned}");
    let failed = t.entries("learner.failed").await;
    let evidence = &failed.last().unwrap().1["evidence"];
    assert!(
        evidence["challenger_accuracy"].as_f64().unwrap() < 0.5,
        "{evidence}"
    );
    assert!(
        evidence["test"]
            .as_str()
            .unwrap()
            .starts_with("paired non-inferiority"),
        "{evidence}"
    );
    let (after_version, after_accuracy) = t.serving_accuracy(&test_set).await;
    assert_eq!(
        (after_version, after_accuracy),
        (before_version, before_accuracy),
        "the poisoned version never serves"
    );
    assert_eq!(
        t.phase().await,
        3,
        "a failed challenger changes nothing the operation does"
    );
    t.decisions.push(("4. poisoned update", 0));

    // Phase 3 works: sampled reviews agree (the last good evidence is among them).
    let mut reviewed = 0;
    for _ in 0..20 {
        let (text, label) = ticket(&mut rng);
        t.submit(text, label).await;
    }
    t.settle().await;
    reviewed += t.review_all("review").await;
    assert_eq!(t.phase().await, 3);
    t.decisions.push(("4. phase 3 post-hoc reviews", reviewed));

    // 5. Drift: billing words now mean a technical fault. Reviews correct; the SPRT demotes.
    let mut reviewed = 0;
    let mut demoted = false;
    for _ in 0..10 {
        for _ in 0..10 {
            let (text, label) = drifted(&mut rng);
            t.submit(text, label).await;
        }
        t.settle().await;
        reviewed += t.review_all("review").await;
        let _ = t.engine.evaluate_trust_only().await.unwrap();
        if t.phase().await < 3 {
            demoted = true;
            break;
        }
    }
    assert!(demoted, "the evidence turned and trust was withdrawn");
    t.decisions.push((
        "5. drifted stream: post-hoc reviews until the demotion",
        reviewed,
    ));
    let demotion = t
        .entries("trust.demoted")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["trigger"] == "sprt" || d["trigger"] == "critical_exception")
        .expect("a demotion on evidence");
    let retro = t.open_tasks("retro_review").await;
    assert!(!retro.is_empty(), "unreviewed automatic actions are listed");
    eprintln!(
        "demotion ({}, phase {} → {}): {} retro-review tasks since {}",
        demotion["trigger"],
        demotion["from_phase"],
        demotion["to_phase"],
        retro.len(),
        demotion["since"]
    );
    assert_eq!(
        demotion["retro_reviews"].as_u64().unwrap() as usize,
        retro.len(),
        "{demotion}"
    );
    let reviewed_cases: HashSet<String> = t
        .entries("outcome.reviewed")
        .await
        .into_iter()
        .filter_map(|(_, d)| {
            d["task_id"]
                .as_str()
                .map(|id| id.split('.').next().unwrap().to_string())
        })
        .collect();
    let since = demotion["since"].as_str().unwrap().to_string();
    let mut previous_acted = String::from("9999");
    for task in &retro {
        let case_id = task["case_id"].as_str().unwrap();
        assert!(
            !reviewed_cases.contains(case_id),
            "a reviewed action is not retro-reviewed: {task}"
        );
        let acted = task["detail"]["acted_at"].as_str().unwrap().to_string();
        assert!(
            acted >= since,
            "after the last good evidence: {acted} < {since}"
        );
        assert!(acted <= previous_acted, "most recent first");
        previous_acted = acted;
        assert!(
            task["detail"]["action"]["url"].as_str().is_some(),
            "the rendered request: {task}"
        );
        assert_eq!(
            task["detail"]["action"]["body"]["queue"],
            task["detail"]["proposals"]["triage"]["output"]["label"]
        );
    }
    // Every unreviewed automatic action after the last good evidence is in the queue.
    let gates = t.entries("trust.gate").await;
    let expected: HashSet<String> = t
        .engine
        .store()
        .journal_after(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "trust.gate" && e.at >= since)
        .filter(|e| serde_json::from_str::<Value>(&e.data).unwrap()["decision"] == "auto")
        .filter_map(|e| e.case_id)
        .filter(|id| !reviewed_cases.contains(id))
        .collect();
    assert!(gates.len() > expected.len());
    let listed: HashSet<String> = retro
        .iter()
        .map(|t| t["case_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected);
    // A retro review that finds the action wrong raises `wrong_action` for remediation.
    let first = &retro[0];
    let case_id = first["case_id"].as_str().unwrap();
    t.ok(
        "ann",
        Method::POST,
        &format!("/v1/tasks/{}/decision", first["id"].as_str().unwrap()),
        Some(json!({"decision": "correct", "output": {"label": t.truth[case_id]}})),
    )
    .await;
    let retro_review = t
        .entries("outcome.reviewed")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["source"] == "retro")
        .expect("a retro review is evidence");
    assert_eq!(retro_review["verdict"], "corrected");
    let raised = t.entries("exception.raised").await;
    assert!(raised
        .iter()
        .any(|(_, d)| d["kind"] == "wrong_action" && d["task_id"] == first["id"]));
    t.decisions.push(("5. one retro review", 1));

    // 6. Change control: a changed prompt waits for a governor who is not its author.
    let phase_before = t.phase().await;
    let pending = t
        .engine
        .deploy(&workflow("2", "Ticket: {{ input.text }}"), "mail.yaml")
        .await
        .unwrap();
    assert_eq!(pending.status.as_str(), "pending");
    assert_eq!(pending.changes[0]["operation"], "mail/route");
    assert!(pending.changes[0]["what"]
        .as_array()
        .unwrap()
        .contains(&json!("prompt")));
    let (text, label) = ticket(&mut rng);
    let submitted = t.submit(text, label).await;
    assert_eq!(
        submitted["workflow_version"], 1,
        "cases keep running on the serving version"
    );
    let (status, body) = t
        .call(
            "gail",
            Method::POST,
            "/v1/workflows/mail/versions/2/approve",
            Some(json!({"reason": "mine"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the author cannot approve: {body}"
    );
    let refusals = t.entries("workflow.decision_refused").await;
    assert_eq!(refusals.len(), 1);
    let approved = t
        .ok(
            "gus",
            Method::POST,
            "/v1/workflows/mail/versions/2/approve",
            Some(json!({"reason": "reviewed the prompt change"})),
        )
        .await;
    assert_eq!(approved["status"], "active");
    let (text, label) = ticket(&mut rng);
    let submitted = t.submit(text, label).await;
    assert_eq!(submitted["workflow_version"], 2);
    let change = t
        .entries("trust.demoted")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["trigger"] == "change")
        .expect("change control moved the operation");
    assert_eq!(
        (change["author"].as_str(), change["approved_by"].as_str()),
        (Some("gail"), Some("gus"))
    );
    assert_eq!(t.phase().await, (phase_before - 1).max(1));
    let rejected_version = t
        .engine
        .deploy(&workflow("3", "Mail: {{ input.text }}"), "mail.yaml")
        .await
        .unwrap();
    assert_eq!(rejected_version.status.as_str(), "pending");
    t.ok(
        "gus",
        Method::POST,
        "/v1/workflows/mail/versions/3/reject",
        Some(json!({"reason": "not needed"})),
    )
    .await;
    let (text, label) = ticket(&mut rng);
    assert_eq!(
        t.submit(text, label).await["workflow_version"],
        2,
        "a rejected version never runs"
    );
    let versions = t
        .ok("ann", Method::GET, "/v1/workflows/mail/versions", None)
        .await;
    let statuses: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "active", "rejected"]);
    t.decisions
        .push(("6. change control (refused author, approve, reject)", 3));

    // 7. The monthly review tells what happened.
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let review = t
        .ok(
            "gus",
            Method::GET,
            &format!("/v1/reports/monthly?month={month}"),
            None,
        )
        .await;
    let mail = review["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workflow"] == "mail")
        .expect("the workflow is reviewed");
    let operation = &mail["operations"][0];
    assert_eq!(
        operation["phase"]["highest"], 3,
        "the highest phase reached: {:#}",
        operation["phase"]
    );
    let kinds: Vec<&str> = mail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "trust.promoted",
        "trust.demoted",
        "learner.failed",
        "learner.promoted",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let investigate = review["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "investigate_demotion" && r["evidence"]["trigger"] != "change")
        .expect("investigate the demotion");
    assert_eq!(
        investigate["evidence"]["retro_reviews"],
        demotion["retro_reviews"]
    );
    let versions: HashSet<i64> = operation["accuracy_by_model"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["learner_version"].as_i64())
        .collect();
    assert!(
        versions.len() >= 2,
        "accuracy per learner version: {versions:?}"
    );

    eprintln!("human decisions per step:");
    for (step, count) in &t.decisions {
        eprintln!("  {step:<60} {count:>4}");
    }
}
