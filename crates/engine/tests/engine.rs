//! Engine tests against real parts: a real SQLite file (and PostgreSQL when
//! KEEL_TEST_DATABASE_URL is set), a real HTTP server on port 0 as the downstream system, and
//! an injectable clock instead of sleeps for timers and SLAs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use keel_engine::{Engine, ManualClock, Options};
use keel_store::Store;
use serde_json::{json, Value};

const START_MS: i64 = 1_790_000_000_000;

#[path = "engine/idempotency.rs"]
mod idempotency;
#[path = "engine/payment_api.rs"]
mod payment_api;

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

/// An engine on a fresh SQLite file with a manual clock (timers and SLAs move only when the
/// test says so).
async fn harness() -> Harness {
    harness_with(None).await
}

/// An engine on the wall clock, for retry backoff that must pass in real time.
async fn real_time() -> Harness {
    harness_with(Some(Arc::new(keel_engine::SystemClock))).await
}

async fn harness_with(clock_override: Option<Arc<dyn keel_engine::Clock>>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine_clock: Arc<dyn keel_engine::Clock> = clock_override.unwrap_or_else(|| clock.clone());
    let options = Options {
        node_id: "test-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    let engine = Engine::start(store, options, engine_clock).await.unwrap();
    Harness {
        engine,
        clock,
        _dir: dir,
    }
}

/// Waits (bounded) until the case reaches one of `statuses`; returns the row.
async fn wait_status(engine: &Engine, id: &str, statuses: &[&str]) -> keel_store::CaseRow {
    for _ in 0..500 {
        let row = engine.case(id).await.unwrap();
        if statuses.contains(&row.status.as_str()) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let row = engine.case(id).await.unwrap();
    panic!(
        "case {id} stayed {} (wanted {statuses:?}); state {}",
        row.status, row.state
    );
}

/// Waits (bounded) until the case is at `step`; the caller asserts what it needs afterwards.
async fn wait_step(engine: &Engine, id: &str, step: &str) {
    for _ in 0..300 {
        if engine.case(id).await.unwrap().current_step.as_deref() == Some(step) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deploys WAITING, submits one case and waits until it is parked on its first timer.
async fn waiting_case(h: &Harness) -> String {
    h.engine
        .deploy_source(WAITING, "waiting.yaml")
        .await
        .unwrap();
    let id = h
        .engine
        .submit("waiting", json!({}), None)
        .await
        .unwrap()
        .case_id;
    wait_status(&h.engine, &id, &["waiting"]).await;
    id
}

async fn kinds(engine: &Engine, id: &str) -> Vec<String> {
    engine
        .timeline(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn state(row: &keel_store::CaseRow) -> Value {
    serde_json::from_str(&row.state).unwrap()
}

/// A downstream system that fails the first `failures` calls with 503, then answers 200,
/// recording every Idempotency-Key it saw.
async fn downstream(failures: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = keys.clone();
    let app = axum::Router::new().route(
        "/act",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let (seen, calls) = (seen.clone(), calls.clone());
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                seen.lock().unwrap().push(key);
                if calls.fetch_add(1, Ordering::SeqCst) < failures {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({ "error": "busy" })),
                    );
                }
                (
                    StatusCode::OK,
                    axum::Json(json!({ "accepted": true, "echo": body.0 })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/act"), keys)
}

const ROUTING: &str = r#"
name: routing
version: "1"
input:
  schema:
    type: object
    required: [amount, callback]
    properties:
      amount: { type: number, minimum: 0 }
      callback: { type: string }
steps:
  - id: check
    validate:
      assert:
        - { expr: "input.amount < 1000000", message: "amount is implausibly large" }
  - id: table
    decide:
      hit: first
      columns: ["input.amount > 1000"]
      rules:
        - { when: [true], then: { level: "manager" } }
      default: { level: "clerk" }
      into: approval
  - id: branch
    switch:
      - when: "data.approval.level == 'manager'"
        goto: notify
      - default: compute
  - id: compute
    set:
      fee: "double(input.amount) * 0.01"
    next: notify
  - id: notify
    action:
      method: POST
      url: "${input.callback}"
      body: { amount: "${input.amount}", level: "${data.approval.level}" }
      timeout: 2s
      retry: { max_attempts: 4, initial_backoff: 10ms, max_backoff: 50ms }
      into: receipt
  - id: done
    end: { outcome: routed }
"#;

#[tokio::test]
async fn a_case_runs_every_step_kind_and_completes() {
    let h = real_time().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let (callback, keys) = downstream(0).await;
    let submitted = h
        .engine
        .submit(
            "routing",
            json!({ "amount": 50, "callback": callback }),
            None,
        )
        .await
        .unwrap();
    let row = wait_status(&h.engine, &submitted.case_id, &["completed", "failed"]).await;
    assert_eq!(row.status, "completed", "{}", row.state);
    let state = state(&row);
    assert_eq!(state["outcome"], "routed");
    assert_eq!(state["data"]["approval"]["level"], "clerk");
    assert_eq!(state["data"]["fee"], json!(0.5));
    assert_eq!(state["data"]["receipt"]["status"], 200);
    assert_eq!(
        state["data"]["receipt"]["body"]["echo"],
        json!({ "amount": 50, "level": "clerk" })
    );
    assert_eq!(
        keys.lock().unwrap().clone(),
        vec![format!("keel:{}:notify:1", submitted.case_id)]
    );
    let kinds = kinds(&h.engine, &submitted.case_id).await;
    assert_eq!(
        kinds,
        [
            "case.created",
            "step.completed",
            "step.completed",
            "step.completed",
            "step.completed",
            "action.started",
            "action.completed",
            "case.completed"
        ]
    );
}

#[tokio::test]
async fn retries_keep_the_visits_key_and_stop_at_the_bound() {
    let h = real_time().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let (callback, keys) = downstream(2).await;
    let submitted = h
        .engine
        .submit(
            "routing",
            json!({ "amount": 5000, "callback": callback }),
            None,
        )
        .await
        .unwrap();
    let row = wait_status(&h.engine, &submitted.case_id, &["completed", "failed"]).await;
    assert_eq!(row.status, "completed", "{}", row.state);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![format!("keel:{}:notify:1", submitted.case_id); 3]
    );
    let kinds = kinds(&h.engine, &submitted.case_id).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "action.attempt_failed")
            .count(),
        2
    );

    let (always_down, keys) = downstream(usize::MAX).await;
    let failing = h
        .engine
        .submit(
            "routing",
            json!({ "amount": 5, "callback": always_down }),
            None,
        )
        .await
        .unwrap();
    let row = wait_status(
        &h.engine,
        &failing.case_id,
        &["completed", "failed", "exception"],
    )
    .await;
    assert_eq!(row.status, "exception");
    assert_eq!(state(&row)["error"]["kind"], "action_failed");
    assert_eq!(keys.lock().unwrap().len(), 4, "max_attempts is 4");
}

#[tokio::test]
async fn a_connection_error_is_retried_then_fails_into_a_visible_state() {
    let h = real_time().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/act", listener.local_addr().unwrap());
    drop(listener);
    let submitted = h
        .engine
        .submit("routing", json!({ "amount": 5, "callback": closed }), None)
        .await
        .unwrap();
    // The default `on_failure: exception`: parked for a person, never silently failed.
    let row = wait_status(
        &h.engine,
        &submitted.case_id,
        &["completed", "failed", "exception"],
    )
    .await;
    assert_eq!(row.status, "exception");
    let error = &state(&row)["error"];
    assert_eq!(error["kind"], "action_failed");
    assert_eq!(error["details"]["attempts"], 4);
    assert_eq!(error["details"]["last"]["error"], "connection");
    let exception = h
        .engine
        .exception(&format!("{}.notify.1", submitted.case_id))
        .await
        .unwrap()
        .expect("an open exception for the failed connector");
    assert_eq!(
        (exception.kind.as_str(), exception.status.as_str()),
        ("action_failed", "open")
    );
    assert_eq!(exception.detail["details"]["attempts"], 4);
}

#[tokio::test]
async fn invalid_input_is_rejected_with_every_violation_and_nothing_is_stored() {
    let h = harness().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let error = h
        .engine
        .submit("routing", json!({ "amount": -1 }), None)
        .await
        .unwrap_err();
    match error {
        keel_engine::Error::InvalidInput(violations) => {
            assert_eq!(violations.len(), 2, "{violations:?}")
        }
        other => panic!("expected InvalidInput, got {other}"),
    }
    let cases = h
        .engine
        .cases(&keel_store::CaseFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(cases.is_empty());
    assert!(matches!(
        h.engine.submit("nope", json!({}), None).await,
        Err(keel_engine::Error::UnknownWorkflow(_))
    ));
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_case() {
    let h = real_time().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let (callback, _) = downstream(0).await;
    let input = json!({ "amount": 1, "callback": callback });
    let mut ids = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (engine, input) = (h.engine.clone(), input.clone());
        tasks.spawn(async move {
            engine
                .submit("routing", input, Some("order-42".into()))
                .await
                .unwrap()
        });
    }
    while let Some(done) = tasks.join_next().await {
        ids.push(done.unwrap());
    }
    assert_eq!(ids.iter().filter(|s| s.created).count(), 1);
    assert!(ids.iter().all(|s| s.case_id == ids[0].case_id));
    let cases = h
        .engine
        .cases(&keel_store::CaseFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cases.len(), 1);
}

const WAITING: &str = r#"
name: waiting
version: "1"
sla: 1h
input:
  schema: { type: object }
steps:
  - id: hold
    wait: { for: 2h }
  - id: approval
    sla: 30m
    wait: { signal: approved, timeout: 1d, into: decision, timeout_goto: expired }
  - id: done
    end: { outcome: approved }
  - id: expired
    end: { outcome: expired }
"#;

#[tokio::test]
async fn timers_fire_late_never_early_and_signals_resume_the_case() {
    let h = harness().await;
    let id = waiting_case(&h).await;
    h.clock.advance_ms(2 * 3_600_000 - 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let row = h.engine.case(&id).await.unwrap();
    assert_eq!(row.current_step.as_deref(), Some("hold"), "fired early");
    h.clock.advance_ms(1);
    wait_step(&h.engine, &id, "approval").await;
    assert_eq!(
        h.engine.case(&id).await.unwrap().current_step.as_deref(),
        Some("approval")
    );
    h.engine
        .signal(&id, "approved", json!({ "by": "ana" }))
        .await
        .unwrap();
    let row = wait_status(&h.engine, &id, &["completed"]).await;
    let state = state(&row);
    assert_eq!(state["outcome"], "approved");
    assert_eq!(state["data"]["decision"], json!({ "by": "ana" }));
    let kinds = kinds(&h.engine, &id).await;
    assert!(kinds.contains(&"timer.fired".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"signal.received".to_string()), "{kinds:?}");
}

#[tokio::test]
async fn a_signal_timeout_takes_the_timeout_branch() {
    let h = harness().await;
    let id = waiting_case(&h).await;
    h.clock.advance_ms(2 * 3_600_000);
    wait_step(&h.engine, &id, "approval").await;
    h.clock.advance_ms(24 * 3_600_000);
    let row = wait_status(&h.engine, &id, &["completed"]).await;
    assert_eq!(state(&row)["outcome"], "expired");
}

#[tokio::test]
async fn sla_breaches_are_journaled_once_and_leave_the_case_flagged() {
    let h = harness().await;
    let id = waiting_case(&h).await;
    h.clock.advance_ms(3_600_000 + 1);
    let mut breached = false;
    for _ in 0..300 {
        let row = h.engine.case(&id).await.unwrap();
        if row.sla_breached {
            breached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(breached, "the case-level SLA of 1h was not recorded");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let kinds = kinds(&h.engine, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "sla.breached").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        h.engine.case(&id).await.unwrap().status,
        "waiting",
        "a breach does not stop the case"
    );
}

#[tokio::test]
async fn running_cases_stay_on_their_version_when_a_new_one_is_deployed() {
    let h = harness().await;
    let (_, first) = h
        .engine
        .deploy_source(WAITING, "waiting.yaml")
        .await
        .unwrap();
    let id = h
        .engine
        .submit("waiting", json!({}), None)
        .await
        .unwrap()
        .case_id;
    wait_status(&h.engine, &id, &["waiting"]).await;
    let changed = WAITING.replace("outcome: approved", "outcome: approved-v2");
    let (_, second) = h
        .engine
        .deploy_source(&changed, "waiting.yaml")
        .await
        .unwrap();
    assert_eq!(second, first + 1);
    let (_, again) = h
        .engine
        .deploy_source(&changed, "waiting.yaml")
        .await
        .unwrap();
    assert_eq!(again, second, "the same bytes are the same version");
    let deployed: Vec<_> = h
        .engine
        .store()
        .journal_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.kind == "workflow.deployed")
        .collect();
    assert_eq!(
        deployed.len(),
        2,
        "each new version is journaled, an unchanged file is not"
    );
    let newer = h.engine.submit("waiting", json!({}), None).await.unwrap();
    assert_eq!(newer.workflow_version, second);
    h.clock.advance_ms(2 * 3_600_000);
    for case in [&id, &newer.case_id] {
        wait_step(&h.engine, case, "approval").await;
        h.engine
            .signal(case, "approved", json!(true))
            .await
            .unwrap();
    }
    assert_eq!(
        state(&wait_status(&h.engine, &id, &["completed"]).await)["outcome"],
        "approved"
    );
    assert_eq!(
        state(&wait_status(&h.engine, &newer.case_id, &["completed"]).await)["outcome"],
        "approved-v2"
    );
}

const LOOPING: &str = r#"
name: looping
version: "1"
input:
  schema: { type: object }
steps:
  - id: spin
    set: { n: "has(data.n) ? data.n + 1 : 1" }
  - id: again
    switch:
      - when: "true"
        goto: spin
      - default: done
  - id: done
    end: { outcome: never }
"#;

#[tokio::test]
async fn the_loop_guard_stops_a_case_that_never_ends() {
    let h = harness().await;
    h.engine
        .deploy_source(LOOPING, "looping.yaml")
        .await
        .unwrap();
    let id = h
        .engine
        .submit("looping", json!({}), None)
        .await
        .unwrap()
        .case_id;
    let row = wait_status(&h.engine, &id, &["exception"]).await;
    assert_eq!(state(&row)["error"]["kind"], "loop_guard");
}

#[tokio::test]
async fn the_ledger_checkpoints_and_proves_what_the_engine_wrote() {
    let h = real_time().await;
    h.engine
        .deploy_source(ROUTING, "routing.yaml")
        .await
        .unwrap();
    let (callback, _) = downstream(0).await;
    for amount in 0..20 {
        let id = h
            .engine
            .submit(
                "routing",
                json!({ "amount": amount, "callback": callback }),
                None,
            )
            .await
            .unwrap()
            .case_id;
        wait_status(&h.engine, &id, &["completed"]).await;
    }
    h.engine.sequence_now().await.unwrap();
    let store = h.engine.store();
    let key = h.engine.verifier_key();
    let report = keel_engine::audit::verify(store, &key, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.ok, "{:?}", report.findings);
    assert_eq!(report.leaves as i64, report.journal_entries);
    assert!(report.checkpoints_verified >= 1);
    let size = report.leaves;
    for index in [0, size / 2, size - 1] {
        let document = keel_engine::audit::inclusion(store, index, None)
            .await
            .unwrap();
        document.check(&key).unwrap();
    }
    for from in [0, 3] {
        let document = keel_engine::audit::consistency(store, from, None)
            .await
            .unwrap();
        document.check(&key).unwrap();
    }
    // The triggers refuse changes to the ledger tables.
    for sql in [
        "UPDATE journal SET kind = 'x' WHERE seq = 1",
        "DELETE FROM journal WHERE seq = 1",
        "DELETE FROM ledger_leaves",
        "UPDATE checkpoints SET note = ''",
    ] {
        let error = store.execute_raw(sql).await.unwrap_err();
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
}

#[tokio::test]
async fn cases_run_and_the_ledger_verifies_on_postgres() {
    let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") else {
        eprintln!("cases_run_and_the_ledger_verifies_on_postgres: skipped (set KEEL_TEST_DATABASE_URL to run it)");
        return;
    };
    let name = format!("keel_engine_{}", std::process::id());
    Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
    Store::admin_execute(&admin, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0.to_string();
    let store = Store::open(&format!("{base}/{name}")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        node_id: "pg-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    let engine = Engine::start(store.clone(), options, Arc::new(keel_engine::SystemClock))
        .await
        .unwrap();
    engine.deploy_source(ROUTING, "routing.yaml").await.unwrap();
    let (callback, keys) = downstream(3).await;
    let mut ids = Vec::new();
    for amount in 0..30 {
        ids.push(
            engine
                .submit(
                    "routing",
                    json!({ "amount": amount * 100, "callback": callback }),
                    None,
                )
                .await
                .unwrap()
                .case_id,
        );
    }
    for id in &ids {
        assert_eq!(
            wait_status(&engine, id, &["completed", "failed"])
                .await
                .status,
            "completed"
        );
    }
    assert_eq!(
        keys.lock().unwrap().len(),
        33,
        "30 cases, three of them retried once"
    );
    engine.sequence_now().await.unwrap();
    let report = keel_engine::audit::verify(&store, &engine.verifier_key(), &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.ok, "{:?}", report.findings);
    assert_eq!(report.leaves as i64, report.journal_entries);
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn timers_that_came_due_while_stopped_fire_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("keel.sqlite").display().to_string();
    let clock = Arc::new(ManualClock::new(START_MS));
    let options = Options {
        node_id: "restart-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    let store = Store::open(&url).await.unwrap();
    let engine = Engine::start(store.clone(), options.clone(), clock.clone())
        .await
        .unwrap();
    engine.deploy_source(WAITING, "waiting.yaml").await.unwrap();
    let id = engine
        .submit("waiting", json!({}), None)
        .await
        .unwrap()
        .case_id;
    wait_status(&engine, &id, &["waiting"]).await;
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;

    // While nothing runs, the timer comes due.
    clock.advance_ms(3 * 3_600_000);
    let store = Store::open(&url).await.unwrap();
    let engine = Engine::start(store, options, clock.clone()).await.unwrap();
    wait_step(&engine, &id, "approval").await;
    let row = engine.case(&id).await.unwrap();
    assert_eq!(
        row.current_step.as_deref(),
        Some("approval"),
        "the timer fired after restart"
    );
    let timeline = engine.timeline(&id).await.unwrap();
    let fired = timeline.iter().find(|e| e.kind == "timer.fired").unwrap();
    let late: Value = serde_json::from_str(&fired.data).unwrap();
    assert_eq!(
        late["late_ms"],
        json!(3_600_000),
        "fired late (one hour after due), never early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_spans_many_pages_and_finds_a_change_deep_inside() {
    let h = real_time().await;
    let store = h.engine.store();
    let total = 60_123;
    let entries: Vec<keel_store::NewEntry> = (0..total)
        .map(|i| {
            let (data, data_sha256) = keel_engine::canonical_data(&json!({ "n": i }));
            keel_store::NewEntry {
                at: keel_engine::rfc3339_ms(START_MS + i),
                kind: "test.entry".into(),
                actor_type: "system".into(),
                actor_id: "test".into(),
                case_id: None,
                workflow: None,
                step: None,
                data,
                data_sha256,
            }
        })
        .collect();
    for chunk in entries.chunks(10_000) {
        store.append(chunk).await.unwrap();
    }
    h.engine.sequence_now().await.unwrap();
    let key = h.engine.verifier_key();
    let report = keel_engine::audit::verify(store, &key, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.ok, "{:?}", report.findings);
    assert_eq!(report.leaves, total as u64);
    store
        .tamper_sqlite("UPDATE journal SET data = '{\"n\":-1}' WHERE seq = 55001")
        .await
        .unwrap();
    let report = keel_engine::audit::verify(store, &key, &mut |_, _| {})
        .await
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.findings[0].leaf_index, 55_000);
    assert_eq!(report.leaves, total as u64, "every page was read");
}

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
  # Outcomes chosen by the AI are operations; these tests are about the cascade.
  - id: billing
    end: { outcome: billing, trust: { gate: none, reason: "a test of the cascade" } }
  - id: technical
    end: { outcome: technical, trust: { gate: none, reason: "a test of the cascade" } }
"#;

/// A local server speaking the OpenAI chat-completions wire format that answers `label`.
async fn openai_upstream(label: &'static str) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1741569952,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                    "message": {"role": "assistant", "content": format!("{{\"label\":\"{label}\"}}"), "refusal": null}}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/v1")
}

async fn engine_with_models(toml: Option<String>) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    let ai = toml.map(|toml| {
        let config = keel_ai::config::Config::parse("keel.toml", &toml).unwrap();
        Arc::new(keel_ai::cascade::Runtime::new(
            config,
            reqwest::Client::new(),
        ))
    });
    let options = Options {
        node_id: "test-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ai,
        ..Options::default()
    };
    let engine = Engine::start(store, options, Arc::new(keel_engine::SystemClock))
        .await
        .unwrap();
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    (engine, dir)
}

#[tokio::test]
async fn an_ai_step_calls_the_model_and_the_workflow_branches_on_its_answer() {
    let base_url = openai_upstream("billing").await;
    let toml = format!("[models.small]\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"gpt-4o-mini\"\n[models.small.price]\ninput = 0.15\noutput = 0.6\n");
    let (engine, _dir) = engine_with_models(Some(toml)).await;
    let submitted = engine
        .submit("triage", json!({"subject": "refund my invoice"}), None)
        .await
        .unwrap();
    let row = wait_status(
        &engine,
        &submitted.case_id,
        &["completed", "failed", "exception"],
    )
    .await;
    assert_eq!(row.status, "completed", "{}", row.state);
    let state = state(&row);
    assert_eq!(state["outcome"], "billing");
    assert_eq!(state["data"]["classify"]["model"], "small");
    let kinds = kinds(&engine, &submitted.case_id).await;
    assert!(
        kinds.contains(&"ai.started".to_string()) && kinds.contains(&"ai.proposed".to_string()),
        "{kinds:?}"
    );
    let timeline = engine
        .store()
        .timeline(&submitted.case_id, 100)
        .await
        .unwrap();
    let proposed = timeline.iter().find(|e| e.kind == "ai.proposed").unwrap();
    let data: Value = serde_json::from_str(&proposed.data).unwrap();
    assert_eq!(data["cascade"]["attempts"][0]["usage"]["input_tokens"], 30);
    assert!(data["cascade"]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn without_models_an_ai_step_parks_the_case_on_an_exception() {
    let (engine, _dir) = engine_with_models(None).await;
    let submitted = engine
        .submit("triage", json!({"subject": "x"}), None)
        .await
        .unwrap();
    let row = wait_status(
        &engine,
        &submitted.case_id,
        &["completed", "failed", "exception"],
    )
    .await;
    assert_eq!(row.status, "exception", "{}", row.state);
    let state = state(&row);
    assert_eq!(state["error"]["kind"], "ai_failed");
    assert!(state["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--config"));
    assert!(kinds(&engine, &submitted.case_id)
        .await
        .contains(&"exception.raised".to_string()));
}

/// TRIAGE with `small` as the built-in learner: no model but the local one.
/// The learner as the only model. These tests are about how versions are stored and swapped
/// in, so every version serves at once (`challenger_test = "off"`); the challengers' test is
/// shown end to end in the API's `trust_loop` test.
fn local_learner_toml() -> Option<String> {
    Some(
        "[models.small]\nprovider = \"local\"\n[learning]\nchallenger_test = \"off\"\n".to_string(),
    )
}

fn labelled(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(text, label)| (text.to_string(), label.to_string()))
        .collect()
}

const BILLING_AND_TECHNICAL: &[(&str, &str)] = &[
    ("Ticket: refund my invoice", "billing"),
    ("Ticket: I was charged twice on my invoice", "billing"),
    ("Ticket: update the card on my invoice", "billing"),
    ("Ticket: the app crashes on start", "technical"),
    ("Ticket: login page shows an error", "technical"),
    ("Ticket: the server returns error 500", "technical"),
];

async fn outcome_of(engine: &Engine, subject: &str) -> keel_store::CaseRow {
    let id = engine
        .submit("triage", json!({ "subject": subject }), None)
        .await
        .unwrap()
        .case_id;
    wait_status(engine, &id, &["completed", "failed", "exception"]).await
}

async fn journal_of_kind(engine: &Engine, kind: &str) -> Vec<Value> {
    engine
        .store()
        .journal_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == kind)
        .map(|row| serde_json::from_str(&row.data).unwrap())
        .collect()
}

#[tokio::test]
async fn online_learning_stores_a_version_per_batch_and_the_cascade_answers_with_it() {
    let (engine, dir) = engine_with_models(local_learner_toml()).await;
    let untrained = outcome_of(&engine, "refund my invoice").await;
    assert_eq!(untrained.status, "exception", "{}", untrained.state);

    let learned = engine
        .learn(
            "triage",
            "classify",
            labelled(BILLING_AND_TECHNICAL),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(learned.version, 1);
    assert_eq!(learned.examples, 6);
    let billing = outcome_of(&engine, "refund my invoice").await;
    assert_eq!(billing.status, "completed", "{}", billing.state);
    assert_eq!(state(&billing)["outcome"], "billing");
    assert_eq!(
        state(&billing)["data"]["classify"]["confidence_method"],
        "learner"
    );

    // A new phrase, taught often enough, changes the answer.
    let phrase = "Ticket: my subscription renewal";
    assert_eq!(
        state(&outcome_of(&engine, "my subscription renewal").await)["outcome"],
        "technical"
    );
    let teach: Vec<(String, String)> = (0..5)
        .map(|_| (phrase.to_string(), "billing".to_string()))
        .collect();
    let learned = engine
        .learn("triage", "classify", teach, "test")
        .await
        .unwrap();
    assert_eq!((learned.version, learned.examples), (2, 11));
    assert_eq!(
        state(&outcome_of(&engine, "my subscription renewal").await)["outcome"],
        "billing"
    );

    let versions = engine
        .store()
        .learner_versions("triage", "classify")
        .await
        .unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.examples))
            .collect::<Vec<_>>(),
        [(2, 11), (1, 6)]
    );
    let entries = journal_of_kind(&engine, "learner.challenger").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["version"], 2);
    assert_eq!(entries[1]["batch"], 5);
    assert_eq!(entries[1]["model_sha256"].as_str().unwrap().len(), 64);

    // A restarted engine answers with the stored learner.
    engine.shutdown(Duration::from_secs(5)).await;
    engine.store().close().await;
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    let config =
        keel_ai::config::Config::parse("keel.toml", &local_learner_toml().unwrap()).unwrap();
    let options = Options {
        node_id: "test-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ai: Some(Arc::new(keel_ai::cascade::Runtime::new(
            config,
            reqwest::Client::new(),
        ))),
        ..Options::default()
    };
    let engine = Engine::start(store, options, Arc::new(keel_engine::SystemClock))
        .await
        .unwrap();
    let again = outcome_of(&engine, "my subscription renewal").await;
    assert_eq!(again.status, "completed", "{}", again.state);
    assert_eq!(state(&again)["outcome"], "billing");
}

#[tokio::test]
async fn concurrent_batches_for_one_learner_are_both_kept() {
    let (engine, _dir) = engine_with_models(local_learner_toml()).await;
    let first = labelled(&BILLING_AND_TECHNICAL[..2]);
    let second = labelled(&BILLING_AND_TECHNICAL[2..]);
    let mut tasks = Vec::new();
    for round in 0..4 {
        for batch in [&first, &second] {
            let engine = engine.clone();
            let batch = batch.clone();
            tasks.push(tokio::spawn(async move {
                engine
                    .learn("triage", "classify", batch, &format!("round {round}"))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<i64>>());
    let latest = engine.learners().await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!((latest[0].version, latest[0].examples), (8, 4 * 6));
}

#[tokio::test]
async fn a_case_outcome_teaches_the_learner_with_the_prompt_it_rendered() {
    let (engine, _dir) = engine_with_models(local_learner_toml()).await;
    let parked = outcome_of(&engine, "the export button is missing").await;
    assert_eq!(parked.status, "exception", "{}", parked.state);
    assert_eq!(
        state(&parked)["ai_prompts"]["classify"],
        "Ticket: the export button is missing"
    );
    let journal = engine.store().journal_after(0, 1_000).await.unwrap();
    assert!(
        journal
            .iter()
            .all(|row| !row.data.contains("Ticket: the export")),
        "the rendered prompt stays out of the journal"
    );

    engine
        .learn(
            "triage",
            "classify",
            labelled(BILLING_AND_TECHNICAL),
            "test",
        )
        .await
        .unwrap();
    let learned = engine
        .learn_from_case(&parked.id, "classify", "technical")
        .await
        .unwrap();
    assert_eq!((learned.version, learned.examples), (2, 7));
    let versions = engine
        .store()
        .learner_versions("triage", "classify")
        .await
        .unwrap();
    assert_eq!(versions[0].source, format!("case:{}", parked.id));

    let no_prompt = engine.learn_from_case(&parked.id, "route", "billing").await;
    assert!(
        matches!(no_prompt, Err(keel_engine::learn::Error::NoPrompt { .. })),
        "{no_prompt:?}"
    );
    let unknown = engine
        .learn_from_case("no-such-case", "classify", "billing")
        .await;
    assert!(
        matches!(unknown, Err(keel_engine::learn::Error::UnknownCase(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn learning_refuses_what_it_cannot_use_and_stores_nothing() {
    use keel_engine::learn::Error;
    let (engine, _dir) = engine_with_models(local_learner_toml()).await;
    let one = || labelled(&[("Ticket: refund", "billing")]);
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Result<_, Error>, Check)> = vec![
        (engine.learn("nope", "classify", one(), "t").await, |e| {
            matches!(e, Error::UnknownWorkflow(_))
        }),
        (engine.learn("triage", "nope", one(), "t").await, |e| {
            matches!(e, Error::UnknownStep { .. })
        }),
        (engine.learn("triage", "route", one(), "t").await, |e| {
            matches!(e, Error::NotClassify { .. })
        }),
        (
            engine
                .learn("triage", "classify", labelled(&[("x", "sales")]), "t")
                .await,
            |e| matches!(e, Error::UnknownLabel { label, .. } if label == "sales"),
        ),
        (
            engine.learn("triage", "classify", Vec::new(), "t").await,
            |e| matches!(e, Error::EmptyBatch),
        ),
        (
            engine
                .learn(
                    "triage",
                    "classify",
                    vec![("x".to_string(), "billing".to_string()); 1_001],
                    "t",
                )
                .await,
            |e| matches!(e, Error::TooManyExamples { .. }),
        ),
    ];
    for (result, expected) in cases {
        let error = result.unwrap_err();
        assert!(expected(&error), "{error:?}");
    }
    assert!(engine.learners().await.unwrap().is_empty());
    assert!(journal_of_kind(&engine, "learner.challenger")
        .await
        .is_empty());
}

#[tokio::test]
async fn learner_versions_and_concurrent_batches_on_postgres() {
    let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") else {
        eprintln!("learner_versions_and_concurrent_batches_on_postgres: skipped (set KEEL_TEST_DATABASE_URL to run it)");
        return;
    };
    let name = format!("keel_learn_{}", std::process::id());
    Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
    Store::admin_execute(&admin, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0.to_string();
    let store = Store::open(&format!("{base}/{name}")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        keel_ai::config::Config::parse("keel.toml", &local_learner_toml().unwrap()).unwrap();
    let options = Options {
        node_id: "pg-node".into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.path().to_path_buf(),
        ai: Some(Arc::new(keel_ai::cascade::Runtime::new(
            config,
            reqwest::Client::new(),
        ))),
        ..Options::default()
    };
    let engine = Engine::start(store.clone(), options, Arc::new(keel_engine::SystemClock))
        .await
        .unwrap();
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    let tasks: Vec<_> = [&BILLING_AND_TECHNICAL[..3], &BILLING_AND_TECHNICAL[3..]]
        .into_iter()
        .map(|batch| {
            let engine = engine.clone();
            let batch = labelled(batch);
            tokio::spawn(async move { engine.learn("triage", "classify", batch, "pg").await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let latest = engine.learners().await.unwrap();
    assert_eq!((latest[0].version, latest[0].examples), (2, 6));
    let billing = outcome_of(&engine, "refund my invoice").await;
    assert_eq!(state(&billing)["outcome"], "billing", "{}", billing.state);
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn tokens_authenticate_until_revoked_or_expired_and_revocation_reaches_the_cache() {
    use keel_engine::tokens::{create_token, revoke_token, Refusal};
    let h = harness().await;
    let store = h.engine.store();
    let (secret, row) = create_token(
        store,
        "billing",
        "svc-billing",
        &["gateway".into()],
        None,
        START_MS,
    )
    .await
    .unwrap();
    assert!(secret.starts_with("keel_") && secret.len() > 40);
    let caller = h.engine.authenticate(&secret).await.unwrap().unwrap();
    assert_eq!(caller.name, "billing");
    assert_eq!(caller.token_id, row.id);
    assert_eq!(caller.roles, ["gateway"]);
    // Only the hash is stored.
    let stored = store.tokens().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].sha256, secret);
    assert_eq!(
        h.engine.authenticate("keel_unknown").await.unwrap(),
        Err(Refusal::Unknown)
    );
    // Revoked: the cached entry is trusted until it goes stale, then the refresh refuses it.
    assert_eq!(revoke_token(store, "billing", START_MS).await.unwrap(), 1);
    assert!(h.engine.authenticate(&secret).await.unwrap().is_ok());
    h.clock.advance_ms(keel_engine::tokens::CACHE_TTL_MS + 1);
    assert_eq!(
        h.engine.authenticate(&secret).await.unwrap(),
        Err(Refusal::Revoked)
    );
    // Expiry needs no refresh.
    let (short, _) = create_token(store, "short", "x", &[], Some(START_MS + 60_000), START_MS)
        .await
        .unwrap();
    assert!(h.engine.authenticate(&short).await.unwrap().is_ok());
    h.clock.advance_ms(61_000);
    assert_eq!(
        h.engine.authenticate(&short).await.unwrap(),
        Err(Refusal::Expired)
    );
    // Bad names are refused before anything is stored.
    assert!(create_token(store, "has space", "x", &[], None, START_MS)
        .await
        .is_err());
}

// ---------------------------------------------------------------- webhooks

const WEBHOOK_SECRET: &str = "whsec-test-4f1c";

/// One request a webhook receiver saw, and the status it answered.
#[derive(Clone, Debug)]
struct ReceivedWebhook {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
    answered: u16,
}

/// A webhook receiver that answers every request with a status the test can change, and
/// deduplicates by `keel-webhook-id` as receivers are told to: a repeated id is acknowledged
/// but not accepted again.
#[derive(Clone)]
struct WebhookReceiver {
    status: Arc<std::sync::atomic::AtomicU16>,
    requests: Arc<Mutex<Vec<ReceivedWebhook>>>,
    accepted: Arc<Mutex<Vec<String>>>,
}

impl WebhookReceiver {
    fn new(status: u16) -> WebhookReceiver {
        WebhookReceiver {
            status: Arc::new(std::sync::atomic::AtomicU16::new(status)),
            requests: Arc::default(),
            accepted: Arc::default(),
        }
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let receiver = receiver.clone();
                async move { receiver.receive(&headers, body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    fn receive(&self, headers: &HeaderMap, body: String) -> StatusCode {
        let status = self.status.load(Ordering::SeqCst);
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let id = header("keel-webhook-id");
        if status == 200 {
            let mut accepted = self.accepted.lock().unwrap();
            if !accepted.contains(&id) {
                accepted.push(id.clone());
            }
        }
        self.requests.lock().unwrap().push(ReceivedWebhook {
            id,
            timestamp: header("keel-webhook-timestamp"),
            signature: header("keel-signature"),
            content_type: header("content-type"),
            body,
            answered: status,
        });
        StatusCode::from_u16(status).unwrap()
    }

    fn requests(&self) -> Vec<ReceivedWebhook> {
        self.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }
}

/// A receiver on a fresh port answering `status`; returns its URL.
async fn webhook_receiver(status: u16) -> (String, WebhookReceiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = WebhookReceiver::new(status);
    receiver.serve(listener);
    (url, receiver)
}

/// The endpoints of a `keel.toml` text, through the real parser, with the test secret.
fn webhook_endpoints(toml: &str) -> Vec<keel_engine::webhooks::Endpoint> {
    let config = keel_ai::config::Config::parse("keel.toml", toml).unwrap();
    keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |variable| {
        (variable == "KEEL_TEST_WEBHOOK_SECRET").then(|| WEBHOOK_SECRET.to_string())
    })
    .unwrap()
}

fn webhook_toml(name: &str, url: &str, events: &str, max_attempts: u32) -> String {
    format!(
        "[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_env = \"KEEL_TEST_WEBHOOK_SECRET\"\n\
         events = {events}\ntimeout_s = 2\nmax_attempts = {max_attempts}\n"
    )
}

/// An engine on the wall clock over the SQLite file in `dir`, with fast webhook retries.
async fn webhook_engine(
    dir: &std::path::Path,
    endpoints: Vec<keel_engine::webhooks::Endpoint>,
) -> Engine {
    let url = dir.join("keel.sqlite").display().to_string();
    webhook_engine_on(&url, dir, "webhook-node", endpoints).await
}

async fn webhook_engine_on(
    url: &str,
    dir: &std::path::Path,
    node_id: &str,
    endpoints: Vec<keel_engine::webhooks::Endpoint>,
) -> Engine {
    let store = Store::open(url).await.unwrap();
    let options = Options {
        node_id: node_id.into(),
        poll_interval: Duration::from_millis(20),
        data_dir: dir.to_path_buf(),
        webhooks: keel_engine::webhooks::Options {
            endpoints,
            poll_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(80),
            ..keel_engine::webhooks::Options::default()
        },
        ..Options::default()
    };
    Engine::start(store, options, Arc::new(keel_engine::SystemClock))
        .await
        .unwrap()
}

/// Journals one entry of `kind` for case `case-N`, as any part of Keel would.
async fn journal_event(store: &Store, kind: &str, n: i64) {
    let (data, data_sha256) = keel_engine::canonical_data(&json!({ "n": n }));
    store
        .append(&[keel_store::NewEntry {
            at: keel_engine::rfc3339_ms(chrono_now_ms()),
            kind: kind.into(),
            actor_type: "system".into(),
            actor_id: "test".into(),
            case_id: Some(format!("case-{n}")),
            workflow: Some("wf".into()),
            step: Some("review".into()),
            data,
            data_sha256,
        }])
        .await
        .unwrap();
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits (bounded, 10 s) until `done` holds for the endpoint's delivery log.
async fn wait_deliveries(
    engine: &Engine,
    endpoint: &str,
    what: &str,
    done: impl Fn(&[keel_store::WebhookDeliveryRow]) -> bool,
) -> Vec<keel_store::WebhookDeliveryRow> {
    let filter = keel_store::WebhookDeliveryFilter {
        endpoint: Some(endpoint.into()),
        limit: 1_000,
        ..Default::default()
    };
    let mut rows = Vec::new();
    for _ in 0..1_000 {
        rows = engine.webhook_deliveries(&filter).await.unwrap();
        if done(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("webhook deliveries never reached `{what}`: {rows:#?}");
}

/// Waits (bounded, 10 s) until `done` holds.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// The `keel-signature` a receiver expects, computed here independently of the engine.
fn expected_signature(timestamp: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_webhook_for_a_raised_exception_is_delivered_once_signed_over_timestamp_and_body() {
    let (url, receiver) = webhook_receiver(200).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = webhook_endpoints(&webhook_toml("ops", &url, "[\"exception.raised\"]", 12));
    let engine = webhook_engine(dir.path(), endpoints).await;
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    // No models configured: the `ai` step parks the case on an exception.
    let case_id = engine
        .submit("triage", json!({"subject": "x"}), None)
        .await
        .unwrap()
        .case_id;
    wait_status(&engine, &case_id, &["exception"]).await;
    let rows = wait_deliveries(&engine, "ops", "one delivered", |rows| {
        rows.len() == 1 && rows[0].status == "delivered"
    })
    .await;
    // Give a duplicate a chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = &requests[0];
    let row = &rows[0];
    assert_eq!(request.id, row.id);
    assert_eq!(request.content_type, "application/json");
    assert_eq!(
        request.signature,
        expected_signature(&request.timestamp, &request.body),
        "the signature verifies with the shared secret"
    );
    let sent_at_s: i64 = request.timestamp.parse().unwrap();
    assert!(
        (chrono_now_ms() / 1000 - sent_at_s).abs() <= 60,
        "the timestamp is the time of sending: {sent_at_s}"
    );
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["id"], row.id.as_str());
    assert_eq!(body["type"], "exception.raised");
    assert_eq!(body["seq"], row.journal_seq);
    assert_eq!(body["data"]["case_id"], case_id.as_str());
    assert_eq!(body["data"]["workflow"], "triage");
    assert_eq!(body["data"]["step"], "classify");
    assert_eq!(body["data"]["kind"], "ai_failed");
    assert_eq!(request.body, row.payload, "the body is the stored payload");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_status_code, Some(200));
    assert_eq!(row.case_id.as_deref(), Some(case_id.as_str()));
    let attempts = engine.webhook_attempts(&row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(attempts[0].error, None);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_webhook_receiver_goes_down_and_comes_back_and_nothing_is_lost() {
    // A port with nothing listening: connections are refused.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}/hook");
    let dir = tempfile::tempdir().unwrap();
    let endpoints = webhook_endpoints(&webhook_toml("ops", &url, "[\"*\"]", 50));
    let engine = webhook_engine(dir.path(), endpoints).await;
    let kinds = [
        "task.created",
        "task.due_soon",
        "exception.raised",
        "exception.escalated",
        "sla.breached",
    ];
    for (n, kind) in kinds.iter().enumerate() {
        journal_event(engine.store(), kind, n as i64).await;
    }
    wait_deliveries(&engine, "ops", "every delivery refused twice", |rows| {
        rows.len() == 5
            && rows
                .iter()
                .all(|r| r.attempts >= 2 && r.status == "pending")
    })
    .await;

    // It comes back, overloaded: it answers 503 until every delivery has been tried.
    let receiver = WebhookReceiver::new(503);
    receiver.serve(tokio::net::TcpListener::bind(address).await.unwrap());
    wait_for("every delivery answered 503 at least once", || {
        let ids: std::collections::HashSet<String> =
            receiver.requests().into_iter().map(|r| r.id).collect();
        ids.len() == 5
    })
    .await;
    receiver.status.store(200, Ordering::SeqCst);
    let rows = wait_deliveries(&engine, "ops", "all delivered", |rows| {
        rows.len() == 5 && rows.iter().all(|r| r.status == "delivered")
    })
    .await;

    let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut accepted = receiver.accepted();
    ids.sort();
    accepted.sort();
    assert_eq!(accepted, ids, "each delivery accepted exactly once");
    let requests = receiver.requests();
    let answered_ok: Vec<&ReceivedWebhook> =
        requests.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(answered_ok.len(), 5, "no delivery repeated after its 2xx");
    let mut types: Vec<String> = answered_ok
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(r.signature, expected_signature(&r.timestamp, &r.body));
            body["type"].as_str().unwrap().to_string()
        })
        .collect();
    types.sort();
    let mut expected_types: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    expected_types.sort();
    assert_eq!(types, expected_types);
    for r in &requests {
        assert!(ids.contains(&r.id), "the same ids on every attempt");
    }
    // The delivery log shows the failed attempts: refused, then 503, then 200.
    for row in &rows {
        let attempts = engine.webhook_attempts(&row.id).await.unwrap();
        assert_eq!(attempts.len() as i64, row.attempts);
        assert!(row.attempts >= 4, "{attempts:#?}");
        assert!(attempts[0].status_code.is_none());
        assert!(
            attempts[0]
                .error
                .as_deref()
                .unwrap()
                .starts_with("cannot connect"),
            "{attempts:#?}"
        );
        assert!(attempts.iter().any(|a| a.status_code == Some(503)
            && a.error
                .as_deref()
                .is_some_and(|e| e.starts_with("HTTP 503"))));
        let last = attempts.last().unwrap();
        assert_eq!((last.status_code, last.error.as_deref()), (Some(200), None));
        assert_eq!(row.delivered_at_ms, Some(last.at_ms));
        assert!(attempts.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_webhook_that_never_recovers_fails_after_max_attempts_with_a_journal_entry() {
    let (url, receiver) = webhook_receiver(500).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = webhook_endpoints(&webhook_toml("ops", &url, "[\"sla.breached\"]", 3));
    let engine = webhook_engine(dir.path(), endpoints).await;
    journal_event(engine.store(), "sla.breached", 7).await;
    let rows = wait_deliveries(&engine, "ops", "failed", |rows| {
        rows.len() == 1 && rows[0].status == "failed"
    })
    .await;
    let row = &rows[0];
    assert_eq!(row.attempts, 3);
    assert_eq!(row.next_attempt_at_ms, None);
    assert_eq!(row.delivered_at_ms, None);
    assert_eq!(row.last_status_code, Some(500));
    let attempts = engine.webhook_attempts(&row.id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.status_code == Some(500)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        3,
        "no attempt after the last: {requests:#?}"
    );
    assert!(requests.iter().all(|r| r.id == row.id));

    let failed: Vec<keel_store::JournalRow> = engine
        .store()
        .journal_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "webhook.failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].case_id.as_deref(), Some("case-7"));
    let data: Value = serde_json::from_str(&failed[0].data).unwrap();
    assert_eq!(data["endpoint"], "ops");
    assert_eq!(data["delivery_id"], row.id.as_str());
    assert_eq!(data["event"], "sla.breached");
    assert_eq!(data["attempts"], 3);
    assert_eq!(data["last_status_code"], 500);
    assert!(
        !failed[0].data.contains(WEBHOOK_SECRET),
        "the secret is never journaled"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_webhook_gets_only_the_events_it_subscribes_to_and_only_from_its_start() {
    let (breaches_url, breaches) = webhook_receiver(200).await;
    let (tasks_url, tasks) = webhook_receiver(200).await;
    let dir = tempfile::tempdir().unwrap();
    {
        // Journaled before the endpoints existed: history is not replayed to them.
        let store = Store::open(&dir.path().join("keel.sqlite").display().to_string())
            .await
            .unwrap();
        journal_event(&store, "sla.breached", 0).await;
        store.close().await;
    }
    let toml = webhook_toml("breaches", &breaches_url, "[\"sla.breached\"]", 12)
        + &webhook_toml(
            "tasks",
            &tasks_url,
            "[\"task.created\", \"task.due_soon\"]",
            12,
        );
    let engine = webhook_engine(dir.path(), webhook_endpoints(&toml)).await;
    for (n, kind) in [
        "exception.raised",
        "task.created",
        "case.created",
        "sla.breached",
        "exception.escalated",
        "task.due_soon",
    ]
    .iter()
    .enumerate()
    {
        journal_event(engine.store(), kind, 1 + n as i64).await;
    }
    wait_deliveries(&engine, "breaches", "one delivered", |rows| {
        rows.len() == 1 && rows[0].status == "delivered"
    })
    .await;
    wait_deliveries(&engine, "tasks", "two delivered", |rows| {
        rows.len() == 2 && rows.iter().all(|r| r.status == "delivered")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let types = |receiver: &WebhookReceiver| -> Vec<(String, String)> {
        let mut types: Vec<(String, String)> = receiver
            .requests()
            .iter()
            .map(|r| {
                let body: Value = serde_json::from_str(&r.body).unwrap();
                (
                    body["type"].as_str().unwrap().to_string(),
                    body["data"]["case_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        types.sort();
        types
    };
    assert_eq!(
        types(&breaches),
        [("sla.breached".to_string(), "case-4".to_string())]
    );
    assert_eq!(
        types(&tasks),
        [
            ("task.created".to_string(), "case-2".to_string()),
            ("task.due_soon".to_string(), "case-6".to_string())
        ]
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn webhook_deliveries_enqueued_or_journaled_before_a_restart_are_delivered_after_it() {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = |url: &str| webhook_toml("ops", url, "[\"exception.raised\"]", 50);
    let engine = webhook_engine(
        dir.path(),
        webhook_endpoints(&toml(&format!("http://{down}/hook"))),
    )
    .await;
    for n in 0..3 {
        journal_event(engine.store(), "exception.raised", n).await;
    }
    let before = wait_deliveries(&engine, "ops", "three enqueued and tried", |rows| {
        rows.len() == 3 && rows.iter().all(|r| r.attempts >= 1)
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
    engine.store().close().await;

    // While Keel is stopped, two more events are journaled (another process, say).
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    for n in 3..5 {
        journal_event(&store, "exception.raised", n).await;
    }
    store.close().await;

    // The receiver moved; the restarted engine sends the same deliveries there.
    let (url, receiver) = webhook_receiver(200).await;
    let engine = webhook_engine(dir.path(), webhook_endpoints(&toml(&url))).await;
    let rows = wait_deliveries(&engine, "ops", "five delivered", |rows| {
        rows.len() == 5 && rows.iter().all(|r| r.status == "delivered")
    })
    .await;
    for row in &before {
        assert!(
            rows.iter().any(|r| r.id == row.id),
            "the delivery enqueued before the restart kept its id"
        );
    }
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.journal_seq).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 5, "one delivery per event");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 5, "{requests:#?}");
    assert_eq!(receiver.accepted().len(), 5);
    let mut cases: Vec<String> = requests
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["data"]["case_id"].as_str().unwrap().to_string()
        })
        .collect();
    cases.sort();
    assert_eq!(cases, ["case-0", "case-1", "case-2", "case-3", "case-4"]);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn webhook_configuration_errors_name_the_line_or_the_missing_variable() {
    let check = |toml: &str, expect: &str, line: usize| {
        let errors = keel_ai::config::Config::parse("keel.toml", toml).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains(expect) && e.line == line),
            "wanted `{expect}` on line {line}: {errors:#?}"
        );
    };
    let base = "[[webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example.com/keel\"\nsecret_env = \"KEEL_WEBHOOK_SECRET_OPS\"\n";
    check(
        &format!("{base}events = [\"exception.raised\", \"task.creatd\"]\n"),
        "`task.creatd` is not a webhook event",
        5,
    );
    check(
        &format!("{base}events = [\"*\"]\nmax_attempts = 0\n"),
        "give 1 to 50",
        2,
    );
    check(
        &format!("{base}events = [\"*\"]\nmax_attempts = 51\n"),
        "give 1 to 50",
        2,
    );
    check(
        &format!("{base}events = []\n"),
        "subscribes to no events",
        2,
    );
    check(
        &format!("{base}events = [\"*\"]\nsecret = \"hunter2\"\n"),
        "unknown field `secret`",
        6,
    );
    check(
        "[[webhooks]]\nname = \"ops\"\nurl = \"ftp://x\"\nsecret_env = \"S\"\nevents = [\"*\"]\n",
        "must start with http:// or https://",
        3,
    );
    check(
        &format!("{base}events = [\"*\"]\n{base}events = [\"*\"]\n"),
        "names two [[webhooks]]",
        2,
    );

    // `*` is every event; timeout and attempts have defaults.
    let config =
        keel_ai::config::Config::parse("keel.toml", &format!("{base}events = [\"*\"]\n")).unwrap();
    let webhook = &config.webhooks[0];
    assert_eq!(webhook.events.len(), keel_ai::config::WEBHOOK_EVENTS.len());
    assert_eq!((webhook.timeout_ms, webhook.max_attempts), (10_000, 12));

    // The secret comes from the environment at start; a missing variable is named.
    let error = keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("KEEL_WEBHOOK_SECRET_OPS") && error.contains("not set"),
        "{error}"
    );
    let error =
        keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |_| Some(String::new()))
            .unwrap_err()
            .to_string();
    assert!(error.contains("is empty"), "{error}");
    let endpoints = keel_engine::webhooks::Endpoint::with_secrets(&config.webhooks, |_| {
        Some(WEBHOOK_SECRET.into())
    })
    .unwrap();
    assert!(
        !format!("{endpoints:?}").contains(WEBHOOK_SECRET),
        "Debug never shows the secret"
    );
}

#[tokio::test]
async fn two_nodes_on_postgres_deliver_every_webhook_once() {
    let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") else {
        eprintln!("two_nodes_on_postgres_deliver_every_webhook_once: skipped (set KEEL_TEST_DATABASE_URL to run it)");
        return;
    };
    let name = format!("keel_webhooks_{}", std::process::id());
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    Store::admin_execute(&admin, &drop).await.unwrap();
    Store::admin_execute(&admin, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let (hook, receiver) = webhook_receiver(503).await;
    let endpoints = || webhook_endpoints(&webhook_toml("ops", &hook, "[\"*\"]", 50));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node_a = webhook_engine_on(&url, dir_a.path(), "node-a", endpoints()).await;
    let node_b = webhook_engine_on(&url, dir_b.path(), "node-b", endpoints()).await;
    for n in 0..20 {
        let node = if n % 2 == 0 { &node_a } else { &node_b };
        journal_event(node.store(), "exception.raised", n).await;
    }
    wait_for("some deliveries refused with 503", || {
        receiver.requests().len() >= 10
    })
    .await;
    receiver.status.store(200, Ordering::SeqCst);
    let rows = wait_deliveries(&node_b, "ops", "twenty delivered", |rows| {
        rows.len() == 20 && rows.iter().all(|r| r.status == "delivered")
    })
    .await;
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.journal_seq).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 20, "one delivery per event across both nodes");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.accepted().len(), 20);
    let answered_ok = receiver
        .requests()
        .iter()
        .filter(|r| r.answered == 200)
        .count();
    assert_eq!(answered_ok, 20, "no delivery repeated after its 2xx");
    node_a.shutdown(Duration::from_secs(5)).await;
    node_b.shutdown(Duration::from_secs(5)).await;
    node_a.store().close().await;
    node_b.store().close().await;
    Store::admin_execute(&admin, &drop).await.unwrap();
}
