//! Each visit of an action happens once, whatever the retries: the engine against a
//! downstream that behaves like a real payment API (`payment_api.rs`), with the failures that
//! make a naive client charge twice (a timeout or a 503 after the charge was applied) and the
//! loop that makes a naive key lose charges (one step visited three times).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::payment_api::{Mode, PaymentApi};
use super::{real_time, state, Harness};

/// One charge. The body carries the time it was rendered at, so a request rendered again
/// for a retry would differ in its bytes (and the payment API would refuse it with 422).
const CHARGE: &str = r#"
name: charge
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
      timeout: 1s
      retry: { max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms }
      into: charge
  - id: done
    end: { outcome: charged }
"#;

/// Three installments of one plan: the `charge` step is visited three times, with three bodies.
const INSTALLMENTS: &str = r#"
name: installments
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
  - id: plan
    set: { installment: "1" }
  - id: charge
    action:
      method: POST
      url: "${input.api}"
      body: { customer: "${input.customer}", amount: "${input.amount}", installment: "${data.installment}" }
      timeout: 1s
      retry: { max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms }
      into: charge
  - id: more
    switch:
      - when: "data.installment < 3"
        goto: count
      - default: done
  - id: count
    set: { installment: "data.installment + 1" }
    next: charge
  - id: done
    end: { outcome: paid }
"#;

/// Deploys `source`, submits one case against `api` and waits (bounded) until it settles.
async fn run_case(h: &Harness, source: &str, api: &PaymentApi) -> (String, Value) {
    let name = if source.contains("name: charge") {
        "charge"
    } else {
        "installments"
    };
    h.engine.deploy_source(source, "w.yaml").await.unwrap();
    let input = json!({ "api": api.url, "customer": "cus_42", "amount": 1250 });
    let id = h.engine.submit(name, input, None).await.unwrap().case_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = h.engine.case(&id).await.unwrap();
        if ["completed", "failed", "exception"].contains(&row.status.as_str()) {
            return (id, state(&row));
        }
        assert!(
            Instant::now() < deadline,
            "case {id} never settled: {}",
            row.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The data of the case's `action.started` entries, in order.
async fn started(h: &Harness, id: &str) -> Vec<Value> {
    let timeline = h.engine.timeline(id).await.unwrap();
    timeline
        .into_iter()
        .filter(|entry| entry.kind == "action.started")
        .map(|entry| serde_json::from_str(&entry.data).unwrap())
        .collect()
}

/// Asserts that the API applied one charge and was sent the same request twice under the
/// case's first key (attempts 1 and 2), the second answered with the stored charge.
async fn assert_charged_once(h: &Harness, id: &str, state: &Value, api: &PaymentApi, first: u16) {
    assert_eq!(state["status"], "completed", "{state}");
    let key = format!("keel:{id}:charge:1");
    let effects = api.effects();
    assert_eq!(
        effects.len(),
        1,
        "charged {} times: {effects:?}",
        effects.len()
    );
    assert_eq!(effects[0].key, key);
    let received = api.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().all(|r| r.key == key), "{received:?}");
    assert_eq!(received[0].body_sha256, received[1].body_sha256);
    let answers: Vec<(Option<u32>, u16)> = received.iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(answers, [(Some(1), first), (Some(2), 200)]);
    assert_eq!(state["data"]["charge"]["body"]["id"], "ch_1");
    assert_eq!(state["data"]["charge"]["body"]["replayed"], true);
    let journaled: Vec<(Value, Value, Value)> = (started(h, id).await.iter())
        .map(|d| {
            (
                d["visit"].clone(),
                d["attempt"].clone(),
                d["idempotency_key"].clone(),
            )
        })
        .collect();
    assert_eq!(
        journaled,
        [
            (json!(1), json!(1), json!(key)),
            (json!(1), json!(2), json!(key))
        ]
    );
}

#[tokio::test]
async fn a_charge_that_times_out_after_it_was_applied_is_applied_once() {
    let h = real_time().await;
    // The API applies the charge, then answers after 2.5 s; the action waits 1 s.
    let api = PaymentApi::start(Mode::AnswerLate(Duration::from_millis(2_500))).await;
    let (id, state) = run_case(&h, CHARGE, &api).await;
    assert_charged_once(&h, &id, &state, &api, 200).await;
}

#[tokio::test]
async fn a_charge_answered_503_after_it_was_applied_is_applied_once() {
    let h = real_time().await;
    let api = PaymentApi::start(Mode::Unavailable).await;
    let (id, state) = run_case(&h, CHARGE, &api).await;
    assert_charged_once(&h, &id, &state, &api, 503).await;
}

#[tokio::test]
async fn three_visits_of_a_charge_in_a_loop_are_three_charges_under_three_keys() {
    let h = real_time().await;
    let api = PaymentApi::start(Mode::Prompt).await;
    let (id, state) = run_case(&h, INSTALLMENTS, &api).await;
    assert_eq!(state["status"], "completed", "{state}");
    assert_eq!(state["outcome"], "paid");
    let charged: Vec<(String, Value)> = (api.effects().into_iter())
        .map(|effect| (effect.key, effect.body["installment"].clone()))
        .collect();
    let expected: Vec<(String, Value)> = (1..=3)
        .map(|n| (format!("keel:{id}:charge:{n}"), json!(n)))
        .collect();
    assert_eq!(charged, expected);
    let visits: Vec<Value> = (started(&h, &id).await.iter())
        .map(|d| d["visit"].clone())
        .collect();
    assert_eq!(visits, [json!(1), json!(2), json!(3)]);
}
