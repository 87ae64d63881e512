//! End-to-end tests of the `keel` binary: real processes, real SQLite files, a real
//! downstream HTTP server, SIGKILL at random moments.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{json, Value};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// The payment API double of the engine's tests, shared so that both test the same contract.
#[path = "../../engine/tests/engine/payment_api.rs"]
mod payment_api;

const CRASH_WORKFLOW: &str = r#"
name: payout
version: "1"
input:
  schema:
    type: object
    required: [n, callback]
    properties:
      n: { type: integer }
      callback: { type: string }
steps:
  - id: check
    validate:
      assert:
        - { expr: "input.n >= 0", message: "n must not be negative" }
  - id: compute
    set: { amount: "input.n * 10" }
  - id: pay
    action:
      method: POST
      url: "${input.callback}"
      body: { case: "${case.id}", amount: "${data.amount}" }
      timeout: 5s
      retry: { max_attempts: 5, initial_backoff: 50ms, max_backoff: 500ms }
      into: payment
  - id: done
    end: { outcome: paid }
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    base: String,
}

fn start_server(data: &Path, workflows: &Path) -> Server {
    let port = free_port();
    let child = Command::new(KEEL)
        .args(["serve", "--lease-s", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .arg("--workflows")
        .arg(workflows)
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Headers carrying a fresh admin's token for the data directory `data` (made with the CLI,
/// as an operator would: every API call needs a token).
fn admin_headers(data: &Path) -> reqwest::header::HeaderMap {
    let data = data.to_str().unwrap();
    let (code, _, err) = keel(&[
        "user",
        "add",
        "admin",
        "--roles",
        "admin",
        "--data-dir",
        data,
    ]);
    assert!(code == 0 || err.contains("already exists"), "{err}");
    let (code, out, err) = keel(&[
        "token",
        "create",
        "--name",
        "admin",
        "--user",
        "admin",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 0, "{err}");
    let token: Value = serde_json::from_str(&out).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token["token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    headers
}

fn admin_client(data: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(admin_headers(data))
        .build()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{}/readyz", server.base)).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keel serve did not become ready");
}

fn terminate(mut server: Server) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.child.kill();
    panic!("keel serve did not stop on SIGTERM within 30 s");
}

/// A downstream system that honours Idempotency-Key: the first request with a key acts and
/// stores the response; a repeat returns the stored response without acting again.
#[derive(Default)]
struct Ledger {
    acted: HashMap<String, u32>,
    cases_acted: HashMap<String, u32>,
}

async fn honouring_downstream() -> (String, Arc<Mutex<Ledger>>) {
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let shared = ledger.clone();
    let app = axum::Router::new().route(
        "/pay",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let shared = shared.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let mut ledger = shared.lock().unwrap();
                if !ledger.acted.contains_key(&key) {
                    ledger.acted.insert(key.clone(), 1);
                    let case = body.0["case"].as_str().unwrap_or("").to_string();
                    *ledger.cases_acted.entry(case).or_default() += 1;
                }
                axum::Json(json!({ "paid": true, "key": key }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/pay"), ledger)
}

fn workflows_dir(dir: &Path, source: &str) -> PathBuf {
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("payout.yaml"), source).unwrap();
    workflows
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn keel(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(KEEL)
        .args(args)
        .env("KEEL_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_cases_survive_sigkill_and_act_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let workflows = workflows_dir(dir.path(), CRASH_WORKFLOW);
    let (callback, downstream) = honouring_downstream().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(admin_headers(&data))
        .build()
        .unwrap();
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut rng = fastrand::Rng::with_seed(0x6b65656c);
    let rounds = if std::env::var("RUN_SLOW_TESTS").is_ok() {
        6
    } else {
        3
    };
    let mut n = 0;
    for _ in 0..rounds {
        let mut server = start_server(&data, &workflows);
        wait_ready(&client, &server).await;
        let kill_after = Duration::from_millis(rng.u64(30..400));
        let started = Instant::now();
        let mut submissions = tokio::task::JoinSet::new();
        while started.elapsed() < kill_after {
            for _ in 0..8 {
                n += 1;
                let request = client
                    .post(format!("{}/v1/workflows/payout/cases", server.base))
                    .json(&json!({ "n": n, "callback": callback }));
                submissions.spawn(async move { request.send().await });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        while let Some(done) = submissions.join_next().await {
            if let Ok(Ok(response)) = done {
                if response.status().as_u16() == 201 {
                    if let Ok(body) = response.json::<Value>().await {
                        acknowledged.insert(body["case_id"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert!(
        acknowledged.len() > 20,
        "too few cases acknowledged to mean anything: {}",
        acknowledged.len()
    );

    // Restart once more and let everything finish.
    let server = start_server(&data, &workflows);
    wait_ready(&client, &server).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<String> = acknowledged.iter().cloned().collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in pending {
            let body: Value = get_json(&client, format!("{}/v1/cases/{id}", server.base)).await;
            match body["status"].as_str() {
                Some("completed") => {}
                Some("failed") => panic!("case {id} failed: {body}"),
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        pending.is_empty(),
        "{} acknowledged case(s) never completed: {:?}",
        pending.len(),
        &pending[..pending.len().min(5)]
    );
    terminate(server);

    let ledger = downstream.lock().unwrap();
    for id in &acknowledged {
        assert_eq!(
            ledger.cases_acted.get(id).copied(),
            Some(1),
            "case {id} acted {:?} times",
            ledger.cases_acted.get(id)
        );
    }
    assert!(ledger.acted.values().all(|count| *count == 1));

    let (code, stdout, stderr) = keel(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        code, 0,
        "audit verify failed after crashes: {stdout} {stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["leaves"], report["journal_entries"],
        "graceful stop sequences everything"
    );
}

/// One charge whose body carries the time it was rendered at: a resume that rendered the
/// request again would send other bytes under the same key (refused with 422).
const HELD_CHARGE: &str = r#"
name: payout
version: "1"
input:
  schema:
    type: object
    required: [api, customer, amount]
    properties:
      api: { type: string }
      customer: { type: string }
      amount: { type: integer }
steps:
  - id: charge
    action:
      method: POST
      url: "${input.api}"
      body: { customer: "${input.customer}", amount: "${input.amount}", requested_at: "${now}" }
      timeout: 60s
      into: charge
  - id: done
    end: { outcome: charged }
"#;

/// Polls the case until it leaves `running` and `waiting` (bounded: 30 s).
async fn settled_case(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = get_json(client, format!("{}/v1/cases/{id}", server.base)).await;
        if !["running", "waiting"].contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(Instant::now() < deadline, "case {id} never settled: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_in_flight_at_sigkill_is_resent_with_its_key_and_bytes_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let workflows = workflows_dir(dir.path(), HELD_CHARGE);
    // The API applies the first charge and holds its answer until the caller goes away.
    let api = payment_api::PaymentApi::start(payment_api::Mode::Hold).await;
    let client = admin_client(&data);
    let mut server = start_server(&data, &workflows);
    wait_ready(&client, &server).await;
    let input = json!({ "api": api.url, "customer": "cus_42", "amount": 1250 });
    let response = client
        .post(format!("{}/v1/workflows/payout/cases", server.base))
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["case_id"].as_str().unwrap().to_string();
    api.first_effect().await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // Restarted on the same data directory, Keel resumes the attempt it was making.
    let server = start_server(&data, &workflows);
    wait_ready(&client, &server).await;
    let case = settled_case(&client, &server, &id).await;
    terminate(server);
    assert_eq!(case["status"], "completed", "{case}");
    let effects = api.effects();
    assert_eq!(
        effects.len(),
        1,
        "charged {} times: {effects:?}",
        effects.len()
    );
    let received = api.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let key = format!("keel:{id}:charge:1");
    assert!(received.iter().all(|r| r.key == key), "{received:?}");
    assert_eq!(received[0].body_sha256, received[1].body_sha256);
    // The same attempt, resumed: held open the first time, the stored answer the second.
    let answers: Vec<(Option<u32>, u16)> = received.iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(answers, [(Some(1), 0), (Some(1), 200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_leaf_that_was_tampered_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let workflows = workflows_dir(dir.path(), CRASH_WORKFLOW);
    let (callback, _) = honouring_downstream().await;
    let client = admin_client(&data);
    let server = start_server(&data, &workflows);
    wait_ready(&client, &server).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let response = client
            .post(format!("{}/v1/workflows/payout/cases", server.base))
            .json(&json!({ "n": n, "callback": callback }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        ids.push(
            response.json::<Value>().await.unwrap()["case_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        for _ in 0..300 {
            let body: Value = get_json(&client, format!("{}/v1/cases/{id}", server.base)).await;
            if body["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The sequencer checkpoints within a second of new entries.
    let mut checkpoint = Value::Null;
    for _ in 0..100 {
        checkpoint = get_json(&client, format!("{}/v1/audit/checkpoint", server.base)).await;
        if checkpoint["tree_size"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        checkpoint["tree_size"].as_u64().unwrap_or(0) >= 10,
        "no checkpoint: {checkpoint}"
    );
    // An offline inclusion proof, as an auditor would check it.
    let proof_file = dir.path().join("proof.json");
    let proof = client
        .get(format!("{}/v1/audit/proof/inclusion?index=3", server.base))
        .send()
        .await
        .unwrap();
    std::fs::write(&proof_file, proof.text().await.unwrap()).unwrap();
    terminate(server);
    let key = checkpoint["verifier_key"].as_str().unwrap();
    let (code, stdout, _) = keel(&[
        "audit",
        "check-proof",
        proof_file.to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_eq!(code, 0, "{stdout}");

    let data_dir = data.to_str().unwrap();
    let (code, stdout, stderr) = keel(&["audit", "verify", "--data-dir", data_dir]);
    assert_eq!(code, 0, "clean ledger must verify: {stdout} {stderr}");

    let store = keel_store::Store::open(&data.join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    store
        .tamper_sqlite("UPDATE journal SET data = '{\"amount\":1000000}' WHERE seq = 7")
        .await
        .unwrap();
    store.close().await;
    let (code, stdout, _) = keel(&["audit", "verify", "--data-dir", data_dir, "--json"]);
    assert_eq!(code, 1, "tampering must fail verification: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["findings"][0]["seq"], 7);
    assert_eq!(report["findings"][0]["leaf_index"], 6);
    assert!(report["findings"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("data was changed"));
    let (code, stdout, _) = keel(&["audit", "verify", "--data-dir", data_dir]);
    assert_eq!(code, 1);
    assert!(stdout.contains("first bad leaf: 6"), "{stdout}");

    // The proof checked before still checks: it commits to the leaf, not to the data.
    let mut tampered: Value =
        serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
    tampered["leaf_index"] = json!(2);
    std::fs::write(&proof_file, tampered.to_string()).unwrap();
    let (code, _, _) = keel(&[
        "audit",
        "check-proof",
        proof_file.to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_eq!(code, 1, "a proof for another index must not verify");
}

#[test]
fn check_reports_errors_with_positions_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        CRASH_WORKFLOW
            .replace("goto", "x")
            .replace("  - id: done\n    end: { outcome: paid }\n", ""),
    )
    .unwrap();
    let (code, _, stderr) = keel(&["check", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("broken.yaml:"), "{stderr}");
    let (code, stdout, _) = keel(&["check", "--json", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() >= 1);
    assert!(report["diagnostics"][0]["line"].as_u64().unwrap() > 0);

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, CRASH_WORKFLOW).unwrap();
    let (code, _, stderr) = keel(&["check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
    let (code, _, stderr) = keel(&["check", examples.to_str().unwrap()]);
    assert_eq!(code, 0, "the bundled workflows must check: {stderr}");
}

#[test]
fn check_explain_prints_why_each_action_and_end_is_gated() {
    let triage = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows/email-triage.yaml");
    let (code, stdout, stderr) = keel(&["check", "--explain", triage.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("quarantine (end)  gated: an operation of classify\n      classify → route (switch) → quarantine\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("classify → route (switch) → deliver"),
        "{stdout}"
    );
    let (code, stdout, _) = keel(&["check", "--json", "--explain", triage.to_str().unwrap()]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let operations = report["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 2, "{report:#}");
    assert_eq!(operations[0]["step"], "quarantine");
    assert_eq!(operations[0]["gated"], true);
    assert_eq!(operations[0]["ai_steps"], serde_json::json!(["classify"]));
    assert_eq!(
        operations[0]["paths"][0]["path"],
        serde_json::json!(["classify", "route (switch)", "quarantine"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_deploys_a_changed_workflow_as_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let workflows = workflows_dir(dir.path(), CRASH_WORKFLOW);
    let client = admin_client(&data);
    let server = start_server(&data, &workflows);
    wait_ready(&client, &server).await;
    let version = |body: &Value| body["workflows"][0]["version"].as_i64().unwrap();
    let before: Value = get_json(&client, format!("{}/v1/workflows", server.base)).await;
    assert_eq!(version(&before), 1);
    std::fs::write(
        workflows.join("payout.yaml"),
        CRASH_WORKFLOW.replace("outcome: paid", "outcome: paid-out"),
    )
    .unwrap();
    let _ = Command::new("kill")
        .arg("-HUP")
        .arg(server.child.id().to_string())
        .status();
    let mut after = before.clone();
    for _ in 0..100 {
        after = get_json(&client, format!("{}/v1/workflows", server.base)).await;
        if version(&after) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version(&after), 2, "{after}");
    terminate(server);
}

#[test]
fn learner_train_then_eval_on_the_spam_sample() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data");
    let sample = examples.join("spam-sample.jsonl");
    let holdout = examples.join("spam-holdout.jsonl");

    let (code, _, stderr) = keel(&[
        "learner",
        "eval",
        "mail",
        "triage",
        "--jsonl",
        holdout.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("keel learner train"), "{stderr}");

    let (code, stdout, stderr) = keel(&[
        "learner",
        "train",
        "mail",
        "triage",
        "--jsonl",
        sample.to_str().unwrap(),
        "--data-dir",
        data,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let trained: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(trained["examples_seen"], 400);
    assert_eq!(trained["version"], 1, "{trained}");
    assert!(dir.path().join("data/keel.sqlite").exists());

    let (code, stdout, stderr) = keel(&[
        "learner",
        "eval",
        "mail",
        "triage",
        "--jsonl",
        holdout.to_str().unwrap(),
        "--data-dir",
        data,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let evaluation: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        evaluation["accuracy"].as_f64().unwrap() >= 0.9,
        "{evaluation}"
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"a\", \"label\": \"b\"}\n{\"text\": 1}\n").unwrap();
    let (code, _, stderr) = keel(&[
        "learner",
        "train",
        "mail",
        "triage",
        "--jsonl",
        bad.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("bad.jsonl:2"), "{stderr}");
}

#[test]
fn check_config_reports_positions_and_undeclared_models() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("keel.toml");
    std::fs::write(
        &broken,
        "[models.small]\nprovider = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\n\n[models.big\n",
    )
    .unwrap();
    let (code, _, stderr) = keel(&["check", "--config", broken.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("keel.toml:6:"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[models.small]\nprovider = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let workflow = dir.path().join("ai.yaml");
    std::fs::write(
        &workflow,
        "name: t\nversion: \"1\"\ninput: { schema: { type: object } }\nsteps:\n  - id: x\n    ai:\n      task: generate\n      prompt: \"hi\"\n      route:\n        - model: small\n        - model: huge\n  - id: e\n    end: { outcome: ok }\n",
    )
    .unwrap();
    let (code, _, stderr) = keel(&[
        "check",
        "--config",
        good.to_str().unwrap(),
        workflow.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("`huge`") && stderr.contains("ai.yaml:11:"),
        "{stderr}"
    );
    assert!(!stderr.contains("`small`,"), "{stderr}");

    let (code, stdout, _) = keel(&[
        "check",
        "--json",
        "--config",
        good.to_str().unwrap(),
        workflow.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["diagnostics"][0]["code"], "unknown-model");

    let (code, _, stderr) = keel(&["serve", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("keel.toml:6:"), "{stderr}");
}

fn spam_data() -> (PathBuf, PathBuf) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data");
    (
        examples.join("spam-sample.jsonl"),
        examples.join("spam-holdout.jsonl"),
    )
}

/// `keel learner …` with `--data-dir data` and `--json`; asserts success, returns the JSON.
fn learner_json(args: &[&str], data: &Path) -> Value {
    let mut all: Vec<&str> = vec!["learner"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", data.to_str().unwrap(), "--json"]);
    let (code, stdout, stderr) = keel(&all);
    assert_eq!(code, 0, "{all:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

async fn learner_journal(data: &Path) -> Vec<(String, Value)> {
    let store = keel_store::Store::open(data.join("keel.sqlite").to_str().unwrap())
        .await
        .unwrap();
    let rows = store.journal_after(0, 1_000).await.unwrap();
    store.close().await;
    rows.into_iter()
        .filter(|row| row.kind.starts_with("learner."))
        .map(|row| (row.kind, serde_json::from_str(&row.data).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_training_runs_are_stored_versions_with_journal_entries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sample, holdout) = spam_data();
    let sample = sample.to_str().unwrap();

    let first = learner_json(&["train", "mail", "triage", "--jsonl", sample], &data);
    assert_eq!(
        (first["version"].clone(), first["examples_seen"].clone()),
        (json!(1), json!(400))
    );
    let second = learner_json(&["train", "mail", "triage", "--jsonl", sample], &data);
    assert_eq!(second["version"], 2, "{second}");
    assert_eq!(second["previous_version"], 1, "{second}");
    assert_eq!(second["examples_seen"], 800, "{second}");
    assert!(!data.join("learners").exists(), "no learner files any more");

    let listed = learner_json(&["versions", "mail", "triage"], &data);
    let versions = listed["versions"].as_array().unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (
                v["version"].as_i64().unwrap(),
                v["examples"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(2, 800), (1, 400)]
    );
    assert_eq!(versions[0]["source"], "cli:spam-sample.jsonl");
    let (code, table, _) = keel(&[
        "learner",
        "versions",
        "mail",
        "triage",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        table.contains("cli:spam-sample.jsonl") && table.lines().count() == 3,
        "{table}"
    );

    let journal = learner_journal(&data).await;
    assert_eq!(journal.len(), 2, "{journal:?}");
    for (index, (kind, entry)) in journal.iter().enumerate() {
        assert_eq!(kind, "learner.challenger");
        assert_eq!(entry["workflow"], "mail");
        assert_eq!(entry["step"], "triage");
        assert_eq!(entry["version"], index as i64 + 1);
        assert_eq!(entry["source"], "cli:spam-sample.jsonl");
        assert!(
            entry["training_accuracy"].as_f64().unwrap() > 0.9,
            "{entry}"
        );
    }
    let store = keel_store::Store::open(data.join("keel.sqlite").to_str().unwrap())
        .await
        .unwrap();
    let latest = store.latest_learners().await.unwrap();
    store.close().await;
    assert_eq!(
        journal[1].1["model_sha256"],
        keel_ai::cascade::sha256_hex(&latest[0].model)
    );

    // Eval reads the latest stored version.
    let evaluation = learner_json(
        &[
            "eval",
            "mail",
            "triage",
            "--jsonl",
            holdout.to_str().unwrap(),
        ],
        &data,
    );
    assert_eq!(evaluation["version"], 2);
    assert!(
        evaluation["accuracy"].as_f64().unwrap() >= 0.9,
        "{evaluation}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_learner_file_is_imported_once_and_training_continues_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sample, holdout) = spam_data();
    let mut old = keel_ai::learner::Learner::default();
    old.update_batch(&[
        ("cheap pills now".to_string(), "spam".to_string()),
        ("meeting notes attached".to_string(), "ham".to_string()),
    ])
    .unwrap();
    std::fs::create_dir_all(data.join("learners/mail")).unwrap();
    std::fs::write(data.join("learners/mail/legacy.bin"), old.to_bytes()).unwrap();

    for _ in 0..2 {
        let evaluation = learner_json(
            &[
                "eval",
                "mail",
                "legacy",
                "--jsonl",
                holdout.to_str().unwrap(),
            ],
            &data,
        );
        assert_eq!(evaluation["version"], 1, "{evaluation}");
    }
    let listed = learner_json(&["versions", "mail", "legacy"], &data);
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["versions"][0]["source"], "file");
    assert_eq!(listed["versions"][0]["examples"], 2);

    let trained = learner_json(
        &[
            "train",
            "mail",
            "legacy",
            "--jsonl",
            sample.to_str().unwrap(),
        ],
        &data,
    );
    assert_eq!(trained["version"], 2, "{trained}");
    assert_eq!(trained["examples_seen"], 402, "{trained}");
    let kinds: Vec<String> = learner_journal(&data)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(kinds, ["learner.imported", "learner.challenger"]);
}

const MAIL_WORKFLOW: &str = r#"
name: mail
version: "1"
input: { schema: { type: object, required: [text], properties: { text: { type: string } } } }
steps:
  - id: triage
    ai:
      task: classify
      labels: [spam, ham]
      prompt: "{{ input.text }}"
      route:
        - model: learner
  - id: decide
    switch:
      - when: data.triage.output.label == 'spam'
        goto: junk
      - default: inbox
  # Outcomes chosen by the AI are operations; this test is about the learner.
  - id: junk
    end: { outcome: junk, trust: { gate: none, reason: "a test of the learner" } }
  - id: inbox
    end: { outcome: inbox, trust: { gate: none, reason: "a test of the learner" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_with_the_learner_that_train_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sample, holdout) = spam_data();
    learner_json(
        &[
            "train",
            "mail",
            "triage",
            "--jsonl",
            sample.to_str().unwrap(),
        ],
        &data,
    );
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("mail.yaml"), MAIL_WORKFLOW).unwrap();
    let config = dir.path().join("keel.toml");
    // One person trying Keel: a trained version serves without the challengers' test (which
    // needs reviewed outcomes; the API's `trust_loop` test shows it).
    std::fs::write(
        &config,
        "[models.learner]\nprovider = \"local\"\n[learning]\nchallenger_test = \"off\"\n",
    )
    .unwrap();
    // An old learner file: `serve` imports it into the store at start.
    let mut old = keel_ai::learner::Learner::default();
    old.update_batch(&[("a".to_string(), "x".to_string())])
        .unwrap();
    std::fs::create_dir_all(data.join("learners/mail")).unwrap();
    std::fs::write(data.join("learners/mail/legacy.bin"), old.to_bytes()).unwrap();

    let port = free_port();
    let server = Server {
        child: Command::new(KEEL)
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--workflows")
            .arg(&workflows)
            .arg("--config")
            .arg(&config)
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = admin_client(&data);
    wait_ready(&client, &server).await;

    let learners = get_json(&client, format!("{}/v1/learners", server.base)).await;
    let listed: Vec<(&str, &str, i64, &str)> = learners["learners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["workflow"].as_str().unwrap(),
                l["step"].as_str().unwrap(),
                l["version"].as_i64().unwrap(),
                l["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("mail", "legacy", 1, "file"),
            ("mail", "triage", 1, "cli:spam-sample.jsonl")
        ]
    );
    let holdout = std::fs::read_to_string(holdout).unwrap();
    let mut checked = HashSet::new();
    for line in holdout.lines() {
        let example: Value = serde_json::from_str(line).unwrap();
        let label = example["label"].as_str().unwrap().to_string();
        if !checked.insert(label.clone()) {
            continue;
        }
        let submitted: Value = client
            .post(format!("{}/v1/workflows/mail/cases", server.base))
            .json(&json!({"text": example["text"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = submitted["case_id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let case = loop {
            let case = get_json(&client, format!("{}/v1/cases/{id}", server.base)).await;
            if case["status"] != "running" || Instant::now() > deadline {
                break case;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(case["status"], "completed", "{case:#}");
        let expected = if label == "spam" { "junk" } else { "inbox" };
        assert_eq!(case["outcome"], expected, "{case:#}");
        assert_eq!(case["data"]["triage"]["confidence_method"], "learner");
    }
    assert_eq!(checked.len(), 2);
    terminate(server);
}

#[test]
fn users_and_tokens_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, _, err) = keel(&[
        "user",
        "add",
        "ann",
        "--roles",
        "reviewer",
        "--approval-limit",
        "5000",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("keel token create"),
        "says what to do next: {err}"
    );
    let (code, _, err) = keel(&[
        "user",
        "add",
        "ann",
        "--roles",
        "reviewer",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 1, "a second `ann` is refused: {err}");
    let (code, _, err) = keel(&[
        "user",
        "add",
        "zed",
        "--roles",
        "wizard",
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown role `wizard`"), "{err}");
    let (code, out, _) = keel(&["user", "list", "--json", "--data-dir", data]);
    assert_eq!(code, 0);
    let users: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["name"], "ann");
    assert_eq!(users[0]["approval_limit"], 5000.0);
    let (code, out, err) = keel(&[
        "token",
        "create",
        "--name",
        "ann-laptop",
        "--user",
        "ann",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 0, "{err}");
    let token: Value = serde_json::from_str(&out).unwrap();
    assert!(token["token"].as_str().unwrap().starts_with("keel_"));
    let (code, _, err) = keel(&[
        "token",
        "create",
        "--name",
        "x",
        "--user",
        "nobody",
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("keel user add nobody"), "{err}");
    let (code, out, _) = keel(&["token", "list", "--json", "--data-dir", data]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(token["token"].as_str().unwrap()),
        "secrets are never listed"
    );
    // A user's token shows the user's roles (the server's truth), not the `gateway` default.
    assert_eq!(token["kind"], "user");
    assert_eq!(token["roles"], serde_json::json!(["reviewer"]));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["name"], "ann-laptop");
    assert_eq!(listed[0]["kind"], "user");
    assert_eq!(listed[0]["roles"], serde_json::json!(["reviewer"]));
    let (code, out, err) = keel(&[
        "token",
        "create",
        "--name",
        "billing",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 0, "{err}");
    let app: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(app["kind"], "application");
    assert_eq!(app["roles"], serde_json::json!(["gateway"]));
    // An application's token named like a user would act as that user: refused both ways.
    let (code, _, err) = keel(&[
        "token",
        "create",
        "--name",
        "ann",
        "--roles",
        "admin",
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--user ann"), "{err}");
    let (code, _, err) = keel(&[
        "user",
        "add",
        "billing",
        "--roles",
        "admin",
        "--data-dir",
        data,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("keel token revoke billing"), "{err}");
    let (code, _, _) = keel(&[
        "token",
        "create",
        "--name",
        "x",
        "--user",
        "ann",
        "--roles",
        "admin",
        "--data-dir",
        data,
    ]);
    assert_ne!(
        code, 0,
        "a user's token takes the user's roles, not --roles"
    );
    let (code, out, _) = keel(&["token", "list", "--data-dir", data]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    let roles_at = lines[0].find("ROLES").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|line| line[roles_at..].starts_with("gateway")
                || line[roles_at..].starts_with("reviewer")),
        "{out}"
    );
    // Every client command takes --token and names KEEL_TOKEN in its help.
    for command in [
        &["submit"][..],
        &["cases"],
        &["case", "show"],
        &["tasks"],
        &["trust"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, out, _) = keel(&args);
        assert_eq!(code, 0);
        assert!(
            out.contains("--token") && out.contains("KEEL_TOKEN"),
            "{command:?}: {out}"
        );
    }
    let (code, _, _) = keel(&["user", "disable", "ann", "--data-dir", data]);
    assert_eq!(code, 0);
    let (code, _, _) = keel(&["token", "revoke", "ann-laptop", "--data-dir", data]);
    assert_eq!(code, 0);
    let (code, _, err) = keel(&["tasks"]);
    assert_ne!(code, 0);
    assert!(err.contains("KEEL_TOKEN"), "{err}");
}
