//! Drift monitoring end to end: cases are placed in the reference and the current window by
//! moving a `ManualClock` (never by sleeping), observations come from the journal, results
//! are read through the API, an alert is journaled once per start of drift, reaches a webhook
//! subscribed to `drift.alert`, and with `on_drift: demote` withdraws trust one phase.
//! Retention deletes old observations at most once an hour and keeps the latest results.
//! An alert needs the drift to persist over two new windows (`persistence`), so a single
//! drifted window neither alerts nor demotes; a feature that alerted and stops drifting
//! journals `drift.recovered` once. Row-count windows give a first result from the first
//! few hundred cases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::{Clock, Engine, ManualClock, Options};
use keel_server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::gateway::{keel_toml, upstream};

/// Friday 2026-11-27 10:00 UTC.
const START_MS: i64 = 1_795_773_600_000;
const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

/// Input features only: a number, a category, and one that fails on cases without a note.
fn intake(name: &str, min_rows: u32) -> String {
    format!(
        r#"
name: {name}
version: "1"
input:
  schema:
    type: object
    required: [amount, channel]
    properties:
      amount: {{ type: number }}
      channel: {{ type: string }}
      note: {{ type: string }}
monitor:
  reference: {{ days: 28 }}
  current: {{ days: 7 }}
  min_rows: {min_rows}
  features:
    - {{ name: amount, expr: "input.amount" }}
    - {{ name: channel, expr: "input.channel" }}
    - {{ name: note_length, expr: "size(input.note)" }}
steps:
  - id: done
    end: done
"#
    )
}

/// An `ai` step (the mock's `primary` echoes the prompt) read by an action at phase 3.
const REFUNDS: &str = r#"
name: refunds
version: "1"
change: { author: gail }
input:
  schema:
    type: object
    required: [amount, answer, callback]
    properties:
      amount: { type: number }
      answer: { type: string }
      callback: { type: string }
monitor:
  min_rows: 50
  on_drift: demote
  features:
    - { name: amount, expr: "input.amount" }
    - { name: label, expr: "output.label", step: judge }
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
      trust: { phase: 3 }
  - id: done
    end: { outcome: paid }
"#;

/// SplitMix64 with Box–Muller: seeded, so every run sees the same samples.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        ((mean + sd * z) * 100.0).round() / 100.0
    }
}

struct Monitored {
    base: String,
    engine: Engine,
    clock: Arc<ManualClock>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn monitored(
    ai: Option<Arc<keel_ai::cascade::Runtime>>,
    webhooks: Vec<keel_engine::webhooks::Endpoint>,
) -> Monitored {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        // Passes run only through `evaluate_drift_once`: a background pass on a slow machine
        // would add results and take retention's turn.
        drift_interval: Duration::from_secs(3_600),
        ai,
        webhooks: keel_engine::webhooks::Options {
            endpoints: webhooks,
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::start(store, options, clock.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    let client = crate::client_as(&engine, "rita", &["reviewer"]).await;
    Monitored {
        base,
        engine,
        clock,
        client,
        _dir: dir,
    }
}

impl Monitored {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The latest result of each feature of `workflow`, by feature name.
    async fn latest(&self, workflow: &str) -> std::collections::BTreeMap<String, Value> {
        let (status, body) = self.get(&format!("/v1/drift?workflow={workflow}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|row| (row["feature"].as_str().unwrap().to_string(), row.clone()))
            .collect()
    }

    async fn entries(&self, kind: &str) -> Vec<Value> {
        self.engine
            .store()
            .journal_after(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == kind)
            .map(|row| serde_json::from_str(&row.data).unwrap())
            .collect()
    }

    async fn submit_all(&self, workflow: &str, inputs: Vec<Value>) -> Vec<String> {
        let mut ids = Vec::new();
        for input in inputs {
            ids.push(
                self.engine
                    .submit(workflow, input, None)
                    .await
                    .unwrap()
                    .case_id,
            );
        }
        ids
    }

    /// Waits (bounded) until every case has completed.
    async fn completed(&self, ids: &[String]) {
        for id in ids {
            let mut status = String::new();
            for _ in 0..1_000 {
                status = self.engine.case(id).await.unwrap().status;
                if status == "completed" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(status, "completed", "case {id}");
        }
    }
}

/// `n` intake inputs: amounts from `amount(i)`, channels from `channel(i)`, a note on two
/// cases in three (so a third of `note_length` fails).
fn intake_inputs(
    n: usize,
    mut amount: impl FnMut(usize) -> f64,
    channel: impl Fn(usize) -> &'static str,
) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut input = json!({"amount": amount(i), "channel": channel(i)});
            if i % 3 != 0 {
                input["note"] = json!("x".repeat(i % 10 + 1));
            }
            input
        })
        .collect()
}

fn balanced(i: usize) -> &'static str {
    ["web", "email", "phone"][i % 3]
}

#[tokio::test]
async fn windows_from_one_distribution_raise_no_alert() {
    let m = monitored(None, Vec::new()).await;
    m.engine
        .deploy_source(&intake("intake", 100), "intake.yaml")
        .await
        .unwrap();
    let mut rng = Rng(20_261_127);
    let reference = intake_inputs(300, |_| rng.normal(100.0, 15.0), balanced);
    m.submit_all("intake", reference).await;
    m.clock.advance_ms(10 * DAY_MS);
    let current = intake_inputs(300, |_| rng.normal(100.0, 15.0), balanced);
    m.submit_all("intake", current).await;

    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(pass.workflows, 1);
    assert_eq!(pass.entries_read, 600, "{pass:?}");
    assert_eq!(pass.observations, 600 * 3 - 200, "{pass:?}");
    assert_eq!(
        pass.expression_failures, 200,
        "a third of the cases have no note"
    );
    assert_eq!(pass.features_evaluated, 3);
    assert!(pass.alerts.is_empty(), "{pass:?}");
    assert!(m.entries("drift.alert").await.is_empty());

    let latest = m.latest("intake").await;
    let amount = &latest["amount"];
    assert_eq!(amount["status"], "tested", "{amount:#}");
    assert_eq!(amount["kind"], "numeric");
    assert_eq!(
        amount["method"], "ks",
        "fewer than 1,000 reference rows: KS"
    );
    assert_eq!(
        (
            amount["reference_rows"].as_i64(),
            amount["current_rows"].as_i64()
        ),
        (Some(300), Some(300))
    );
    assert!(amount["value"].as_f64().unwrap() > 0.05, "{amount:#}");
    assert_eq!(amount["threshold"].as_f64(), Some(0.05));
    assert_eq!(amount["drifted"], false);
    assert!(amount["parameters"]["statistic"].is_number(), "{amount:#}");
    assert_eq!(
        amount["current_from_ms"].as_i64().unwrap() - amount["reference_from_ms"].as_i64().unwrap(),
        28 * DAY_MS
    );
    let channel = &latest["channel"];
    assert_eq!(
        (channel["kind"].as_str(), channel["method"].as_str()),
        (Some("categorical"), Some("chi_square"))
    );
    assert_eq!(channel["drifted"], false);
    let note = &latest["note_length"];
    assert_eq!(
        (
            note["reference_rows"].as_i64(),
            note["failed_rows"].as_i64()
        ),
        (Some(200), Some(200))
    );
    assert_eq!(note["drifted"], false);
}

#[tokio::test]
async fn an_input_shift_alerts_once_reaches_the_webhook_and_demotes_the_workflows_operation() {
    let upstream = upstream().await;
    let (hook_url, hooks) = hook_receiver().await;
    let toml = keel_toml(
        &upstream.base_url,
        // The operation starts in phase 3; with no governor in this test, change control is
        // off (a first version above phase 1 would otherwise wait for approval).
        &format!("[change_control]\nreview = \"off\"\n[[webhooks]]\nname = \"ops\"\nurl = \"{hook_url}\"\nsecret_env = \"KEEL_TEST_DRIFT_SECRET\"\nevents = [\"drift.alert\"]\n"),
    );
    let config = keel_ai::config::Config::parse("keel.toml", &toml).unwrap();
    let endpoints =
        keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |_| Some("s3cret".into()))
            .unwrap();
    let runtime = keel_ai::cascade::Runtime::new(config, reqwest::Client::new());
    let m = monitored(Some(Arc::new(runtime)), endpoints).await;
    m.engine
        .deploy_source(REFUNDS, "refunds.yaml")
        .await
        .unwrap();
    let phase = |m: &Monitored| {
        let store = m.engine.store().clone();
        async move {
            store
                .trust_operation("refunds/pay")
                .await
                .unwrap()
                .unwrap()
                .phase
        }
    };
    assert_eq!(phase(&m).await, 3);
    let (callback, _) = crate::tasks::receiver().await;
    let mut rng = Rng(7);
    let mut inputs = |mean: f64| -> Vec<Value> {
        (0..100)
            .map(|_| json!({"amount": rng.normal(mean, 15.0), "answer": "{\"label\": \"pay\"}", "callback": callback}))
            .collect()
    };
    let reference = inputs(100.0);
    let current = inputs(160.0); // four standard deviations up
    let ids = m.submit_all("refunds", reference).await;
    m.completed(&ids).await;
    m.clock.advance_ms(10 * DAY_MS);
    let ids = m.submit_all("refunds", current).await;
    m.completed(&ids).await;

    // One drifted window is not an alert: nothing is journaled and trust stays.
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert!(
        pass.alerts.is_empty() && pass.demoted.is_empty(),
        "{pass:?}"
    );
    assert_eq!(phase(&m).await, 3, "a single drifted window never demotes");
    assert!(m.entries("drift.alert").await.is_empty());
    let first = &m.latest("refunds").await["amount"];
    assert_eq!(
        (
            first["drifted"].as_bool(),
            first["alerted"].as_bool(),
            first["streak"].as_i64()
        ),
        (Some(true), Some(false), Some(1)),
        "{first:#}"
    );

    // Evaluated again a minute later, the windows hold the same rows: not a second look.
    m.clock.advance_ms(MINUTE_MS);
    let again = m.engine.evaluate_drift_once().await.unwrap();
    assert!(again.alerts.is_empty(), "{again:?}");
    assert_eq!(phase(&m).await, 3);

    // A week on, a new current window (new cases only) drifts too: the drift persisted.
    m.clock.advance_ms(8 * DAY_MS);
    let ids = m.submit_all("refunds", inputs(160.0)).await;
    m.completed(&ids).await;
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(pass.alerts, vec!["refunds/amount".to_string()], "{pass:?}");
    assert_eq!(pass.demoted, vec!["refunds/pay".to_string()]);
    assert_eq!(phase(&m).await, 2);

    let alerts = m.entries("drift.alert").await;
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(
        (alert["workflow"].as_str(), alert["feature"].as_str()),
        (Some("refunds"), Some("amount"))
    );
    assert_eq!(
        (alert["method"].as_str(), alert["threshold"].as_f64()),
        (Some("ks"), Some(0.05))
    );
    assert!(alert["value"].as_f64().unwrap() < 0.001, "{alert:#}");
    assert_eq!(
        (
            alert["reference"]["rows"].as_i64(),
            alert["current"]["rows"].as_i64()
        ),
        (Some(200), Some(100)),
        "the reference now holds the first shifted week too"
    );
    assert_eq!(
        (alert["on_drift"].as_str(), alert["persistence"].as_i64()),
        (Some("demote"), Some(2))
    );
    assert_eq!(alert["windows"], "time");
    let demoted = m.entries("trust.demoted").await;
    assert_eq!(demoted.len(), 1);
    assert_eq!(
        (
            demoted[0]["trigger"].as_str(),
            demoted[0]["from_phase"].as_i64(),
            demoted[0]["to_phase"].as_i64(),
            demoted[0]["by"].as_str()
        ),
        (Some("drift"), Some(3), Some(2), Some("drift-monitor"))
    );
    assert_eq!(demoted[0]["evidence"]["drift"][0]["feature"], "amount");

    // The AI output feature is observed from `ai.proposed`: every label is `pay`.
    let latest = m.latest("refunds").await;
    let label = &latest["label"];
    assert_eq!(
        (label["status"].as_str(), label["kind"].as_str()),
        (Some("tested"), Some("categorical")),
        "{label:#}"
    );
    assert_eq!(
        (
            label["reference_rows"].as_i64(),
            label["current_rows"].as_i64()
        ),
        (Some(200), Some(100))
    );
    assert_eq!(label["drifted"], false);
    assert!(
        latest["amount"]["parameters"]["p_value_method"].is_string(),
        "{:#}",
        latest["amount"]
    );

    // Still drifting: stored again, but no second alert and no second demotion.
    let again = m.engine.evaluate_drift_once().await.unwrap();
    assert!(
        again.alerts.is_empty() && again.demoted.is_empty(),
        "{again:?}"
    );
    assert_eq!(m.entries("drift.alert").await.len(), 1);
    assert_eq!(phase(&m).await, 2);
    let (status, history) = m.get("/v1/drift/refunds/amount").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["config"]["expr"], "input.amount");
    assert_eq!(history["monitor"]["persistence"], 2);
    assert_eq!(history["monitor"]["current"]["duration"], 7 * DAY_MS);
    let results = history["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let flags: Vec<(bool, bool, i64)> = results
        .iter()
        .map(|r| {
            (
                r["drifted"].as_bool().unwrap(),
                r["alerted"].as_bool().unwrap(),
                r["streak"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            (true, false, 2),
            (true, true, 2),
            (true, false, 1),
            (true, false, 1)
        ],
        "newest first"
    );
    assert!(results[0]["id"].as_i64() > results[1]["id"].as_i64());
    assert_eq!(results[0]["alerting"], true);

    // The alert reached the webhook subscribed to `drift.alert`.
    for _ in 0..500 {
        if !hooks.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = hooks.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["type"], "drift.alert");
}

#[tokio::test]
async fn a_categorical_shift_is_detected_and_too_few_rows_are_not_tested() {
    let m = monitored(None, Vec::new()).await;
    // `persistence: 1`: the first drifted result alerts.
    let eager = intake("intake", 100).replace("  min_rows:", "  persistence: 1\n  min_rows:");
    m.engine.deploy_source(&eager, "intake.yaml").await.unwrap();
    m.engine
        .deploy_source(&intake("sparse", 100), "sparse.yaml")
        .await
        .unwrap();
    let amount = |i: usize| 100.0 + (i % 30) as f64;
    let skewed = |i: usize| if i % 5 < 3 { "email" } else { balanced(i) };
    m.submit_all("intake", intake_inputs(150, amount, balanced))
        .await;
    m.submit_all("sparse", intake_inputs(40, amount, balanced))
        .await;
    m.clock.advance_ms(10 * DAY_MS);
    m.submit_all("intake", intake_inputs(150, amount, skewed))
        .await;
    m.submit_all("sparse", intake_inputs(40, amount, skewed))
        .await;

    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(pass.alerts, vec!["intake/channel".to_string()], "{pass:?}");
    assert!(pass.demoted.is_empty(), "on_drift defaults to alert");
    let intake = m.latest("intake").await;
    let channel = &intake["channel"];
    assert_eq!(
        (channel["method"].as_str(), channel["drifted"].as_bool()),
        (Some("chi_square"), Some(true)),
        "{channel:#}"
    );
    assert!(channel["value"].as_f64().unwrap() < 0.001);
    assert_eq!(channel["parameters"]["categories"], 3);
    assert_eq!(intake["amount"]["drifted"], false);

    let sparse = m.latest("sparse").await;
    for (feature, row) in &sparse {
        assert_eq!(row["status"], "insufficient_data", "{feature}: {row:#}");
        assert_eq!(row["drifted"], false);
        assert!(row["method"].is_null() && row["value"].is_null(), "{row:#}");
        assert_eq!(row["parameters"]["min_rows"], 100);
    }
    assert_eq!(sparse["amount"]["reference_rows"], 40);
    assert_eq!(sparse["channel"]["current_rows"], 40);
    let alerts = m.entries("drift.alert").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["feature"], "channel");

    let (status, all) = m.get("/v1/drift").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all.as_array().unwrap().len(),
        6,
        "three features of two workflows"
    );
    let (status, body) = m.get("/v1/drift/intake/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "https://keel.dev/problems/not-found");
    let (status, body) = m.get("/v1/drift?workflow=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "https://keel.dev/problems/unknown-workflow");
}

/// Row-count windows: the newest 50 values against the 200 before them.
const ROW_WINDOWS: &str = r#"
name: rowwin
version: "1"
input:
  schema:
    type: object
    required: [amount]
    properties:
      amount: { type: number }
monitor:
  reference: { rows: 200 }
  current: { rows: 50 }
  features:
    - { name: amount, expr: "input.amount" }
steps:
  - id: done
    end: done
"#;

#[tokio::test]
async fn row_windows_give_a_first_result_at_once_and_drift_alerts_after_persisting_then_recovers() {
    let m = monitored(None, Vec::new()).await;
    m.engine
        .deploy_source(ROW_WINDOWS, "rowwin.yaml")
        .await
        .unwrap();
    let mut rng = Rng(41);
    let mut batch = |n: usize, mean: f64| -> Vec<Value> {
        (0..n)
            .map(|_| json!({"amount": rng.normal(mean, 15.0)}))
            .collect()
    };
    // 250 cases in a few minutes: a first result, no days of waiting.
    m.submit_all("rowwin", batch(200, 100.0)).await;
    m.clock.advance_ms(MINUTE_MS);
    m.submit_all("rowwin", batch(50, 100.0)).await;
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert!(pass.alerts.is_empty(), "{pass:?}");
    let first = &m.latest("rowwin").await["amount"];
    assert_eq!(
        (
            first["status"].as_str(),
            first["windows"].as_str(),
            first["method"].as_str(),
            first["drifted"].as_bool()
        ),
        (Some("tested"), Some("rows"), Some("ks"), Some(false)),
        "{first:#}"
    );
    assert_eq!(
        (
            first["reference_rows"].as_i64(),
            first["current_rows"].as_i64()
        ),
        (Some(200), Some(50))
    );
    assert_eq!(
        first["current_from_ms"].as_i64(),
        Some(START_MS + MINUTE_MS),
        "the current window starts at its oldest row"
    );
    assert_eq!(first["reference_from_ms"].as_i64(), Some(START_MS));

    // 50 shifted values: drifted, but one window is not an alert.
    m.submit_all("rowwin", batch(50, 160.0)).await;
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert!(pass.alerts.is_empty(), "{pass:?}");
    let shifted = &m.latest("rowwin").await["amount"];
    assert_eq!(
        (shifted["drifted"].as_bool(), shifted["streak"].as_i64()),
        (Some(true), Some(1)),
        "{shifted:#}"
    );
    // The same rows evaluated again do not count as a second window.
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert!(pass.alerts.is_empty(), "{pass:?}");
    assert_eq!(m.latest("rowwin").await["amount"]["streak"], 1);
    assert!(m.entries("drift.alert").await.is_empty());

    // 50 more shifted values: a second, new window drifts: one alert.
    m.submit_all("rowwin", batch(50, 160.0)).await;
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(pass.alerts, vec!["rowwin/amount".to_string()], "{pass:?}");
    let alerts = m.entries("drift.alert").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0]["windows"].as_str(), alerts[0]["method"].as_str()),
        (Some("rows"), Some("ks"))
    );
    assert_eq!(alerts[0]["current"]["rows"], 50);

    // Back to normal (250 values, so both windows hold only them): recovered, once.
    m.submit_all("rowwin", batch(250, 100.0)).await;
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(
        pass.recovered,
        vec!["rowwin/amount".to_string()],
        "{pass:?}"
    );
    m.clock.advance_ms(MINUTE_MS);
    let pass = m.engine.evaluate_drift_once().await.unwrap();
    assert!(
        pass.recovered.is_empty() && pass.alerts.is_empty(),
        "{pass:?}"
    );
    let recovered = m.entries("drift.recovered").await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(
        (
            recovered[0]["feature"].as_str(),
            recovered[0]["drifted"].as_bool()
        ),
        (Some("amount"), Some(false))
    );
    let (status, history) = m.get("/v1/drift/rowwin/amount").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["monitor"]["current"]["rows"], 50);
    let results = history["results"].as_array().unwrap();
    assert_eq!(
        (
            results[1]["recovered"].as_bool(),
            results[1]["alerting"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(m.entries("drift.alert").await.len(), 1);
}

#[tokio::test]
async fn retention_deletes_old_observations_at_most_hourly_and_keeps_the_latest_results() {
    let m = monitored(None, Vec::new()).await;
    let source = intake("kept", 10).replace("  min_rows:", "  retention: 40d\n  min_rows:");
    m.engine.deploy_source(&source, "kept.yaml").await.unwrap();
    let store = m.engine.store().clone();
    let amounts = |from_ms: i64, to_ms: i64| {
        let store = store.clone();
        async move {
            store
                .drift_window("kept", "amount", from_ms, to_ms, 100_000)
                .await
                .unwrap()
                .len()
        }
    };
    let amount = |i: usize| 100.0 + (i % 30) as f64;
    // Batch A now, batch B ten days later: 30 cases each, three observations per case.
    m.submit_all("kept", intake_inputs(30, amount, balanced))
        .await;
    m.clock.advance_ms(10 * DAY_MS);
    let batch_b_ms = m.clock.now_ms();
    m.submit_all("kept", intake_inputs(30, amount, balanced))
        .await;
    let first = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(first.entries_read, 60, "{first:?}");
    assert_eq!((first.pruned_observations, first.pruned_results), (0, 0));

    // Half an hour before batch B is 40 days old: batch A goes, B stays.
    m.clock.advance_ms(40 * DAY_MS - 30 * MINUTE_MS);
    let second = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(
        (second.pruned_observations, second.pruned_results),
        (90, 0),
        "batch A's rows, failed ones too"
    );
    assert_eq!(amounts(0, batch_b_ms).await, 0);
    assert_eq!(amounts(batch_b_ms, i64::MAX).await, 30);

    // A minute after B is 40 days old, but within the hour of the last pruning: kept.
    m.clock.advance_ms(31 * MINUTE_MS);
    let third = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(third.pruned_observations, 0, "{third:?}");
    assert_eq!(amounts(batch_b_ms, i64::MAX).await, 30);

    // An hour after the last pruning: batch B goes.
    m.clock.advance_ms(30 * MINUTE_MS);
    let fourth = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(fourth.pruned_observations, 90, "{fourth:?}");
    assert_eq!(amounts(0, i64::MAX).await, 0);

    // 401 days on, the four passes' results (three features each) are past the 400 days
    // results are kept; this pass's results stay readable.
    m.clock.advance_ms(401 * DAY_MS);
    let fifth = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(
        (fifth.pruned_observations, fifth.pruned_results),
        (0, 12),
        "{fifth:?}"
    );
    let now_ms = m.clock.now_ms();
    let latest = m.latest("kept").await;
    assert_eq!(latest.len(), 3, "{latest:#?}");
    for (feature, row) in &latest {
        assert_eq!(
            row["evaluated_at_ms"].as_i64(),
            Some(now_ms),
            "{feature}: {row:#}"
        );
        assert_eq!(
            row["status"], "insufficient_data",
            "{feature}: no rows left"
        );
    }
    let (status, history) = m.get("/v1/drift/kept/amount").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(
        history["results"].as_array().unwrap().len(),
        1,
        "{history:#}"
    );
}

#[tokio::test]
async fn a_workflow_that_drops_its_monitor_still_ages_out_what_it_collected() {
    let m = monitored(None, Vec::new()).await;
    let source = intake("kept", 10).replace("  min_rows:", "  retention: 40d\n  min_rows:");
    m.engine.deploy_source(&source, "kept.yaml").await.unwrap();
    let store = m.engine.store().clone();
    m.submit_all("kept", intake_inputs(30, |i| 100.0 + i as f64, balanced))
        .await;
    let first = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(first.entries_read, 30, "{first:?}");
    // Version 2 has no `monitor:`; the engine stops observing and evaluating it.
    let start = source.find("monitor:").unwrap();
    let end = source.find("steps:").unwrap();
    let unmonitored = format!("{}{}", &source[..start], &source[end..])
        .replace("version: \"1\"", "version: \"2\"");
    assert!(!unmonitored.contains("monitor"));
    m.engine
        .deploy_source(&unmonitored, "kept.yaml")
        .await
        .unwrap();
    m.clock.advance_ms(39 * DAY_MS);
    let kept = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(
        (kept.workflows, kept.pruned_observations),
        (0, 0),
        "{kept:?}"
    );
    assert_eq!(
        store
            .drift_window("kept", "amount", 0, i64::MAX, 100_000)
            .await
            .unwrap()
            .len(),
        30
    );
    // Past version 1's 40 days (and an hour after the last turn): every observation goes.
    m.clock.advance_ms(2 * DAY_MS);
    let pruned = m.engine.evaluate_drift_once().await.unwrap();
    assert_eq!(pruned.pruned_observations, 90, "{pruned:?}");
    assert!(store
        .drift_window("kept", "amount", 0, i64::MAX, 100_000)
        .await
        .unwrap()
        .is_empty());
    // Each feature's latest result stays readable.
    assert_eq!(m.latest("kept").await.len(), 3);
}

#[test]
fn monitor_problems_are_diagnostics_on_their_line() {
    let source = r#"name: bad
version: "1"
input: { schema: { type: object } }
monitor:
  features:
    - { name: amount, expr: "input.amount", method: kolmogorov }
    - { name: amount, expr: "input.total" }
    - { name: label, expr: "output.label", step: notify }
steps:
  - id: notify
    action: { method: POST, url: "http://127.0.0.1:9/x" }
  - id: done
    end: done
"#;
    let checked = keel_core::workflow::check_str(source, "bad.yaml", None);
    assert!(checked.workflow.is_none());
    let found: Vec<(usize, &str, &str)> = checked
        .diagnostics
        .iter()
        .map(|d| (d.line, d.code, d.message.as_str()))
        .collect();
    let expect = [
        (6, "invalid-value", "unknown drift method `kolmogorov`"),
        (7, "invalid-value", "feature `amount` is defined twice (first on line 6)"),
        (8, "invalid-value", "step `notify` is not an `ai` step (it is `action`); a feature's `step` must name an `ai` step"),
    ];
    for (line, code, message) in expect {
        assert!(
            found.contains(&(line, code, message)),
            "missing {line} {code} {message}: {found:#?}"
        );
    }
    assert_eq!(found.len(), 3, "{found:#?}");
}

/// A webhook receiver that keeps every body it is sent.
async fn hook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body);
                StatusCode::OK.as_u16().to_string()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, bodies)
}
