//! Tests of the case state machine: workflows are parsed from YAML and driven through
//! `advance` with explicit times and jitter, as the engine would, but without IO.

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// An arbitrary, fixed creation time (2023-11-14T22:13:20Z).
const T0: i64 = 1_700_000_000_000;
const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Parses a workflow whose top level is `top` (after name and version) and whose steps are
/// `steps`. Step failures end the case (`on_failure: fail`) unless `top` says otherwise, so
/// that these tests see each failure's kind directly; `parked_*` tests cover the default.
fn workflow_with(top: &str, steps: &str) -> Workflow {
    let top = if top.contains("on_failure") {
        top.to_string()
    } else {
        format!("on_failure: fail\n{top}")
    };
    let source = format!(
        "name: t\nversion: \"1\"\n{top}input: {{ schema: {{ type: object }} }}\nsteps:\n{steps}"
    );
    match crate::workflow::parse_str(&source, "t.yaml", None) {
        Ok(workflow) => workflow,
        Err(diagnostics) => panic!(
            "{}",
            diagnostics
                .iter()
                .map(|d| d.render(&source))
                .collect::<String>()
        ),
    }
}

fn workflow(steps: &str) -> Workflow {
    workflow_with("", steps)
}

fn start(workflow: &Workflow, input: Value) -> CaseState {
    CaseState::new("c1".to_string(), workflow, 1, input, T0)
}

fn wake(workflow: &Workflow, state: &mut CaseState, now_ms: i64) -> Transition {
    advance(workflow, state, Input::Wake, now_ms, 0.0)
}

fn respond(
    workflow: &Workflow,
    state: &mut CaseState,
    attempt: u32,
    outcome: ActionOutcome,
    now_ms: i64,
) -> Transition {
    advance(
        workflow,
        state,
        Input::ActionResult { attempt, outcome },
        now_ms,
        0.0,
    )
}

fn signal(
    workflow: &Workflow,
    state: &mut CaseState,
    name: &str,
    payload: Value,
    now_ms: i64,
) -> Transition {
    let input = Input::Signal {
        name: name.to_string(),
        payload,
    };
    advance(workflow, state, input, now_ms, 0.0)
}

fn http(status: u16, body: Value) -> ActionOutcome {
    ActionOutcome::Response { status, body }
}

/// The journal of a transition as `kind@step` strings.
fn journal(transition: &Transition) -> Vec<String> {
    transition
        .events
        .iter()
        .map(|event| match &event.step {
            Some(step) => format!("{}@{step}", event.kind),
            None => event.kind.to_string(),
        })
        .collect()
}

fn event<'t>(transition: &'t Transition, kind: &str) -> &'t Event {
    match transition.events.iter().find(|event| event.kind == kind) {
        Some(event) => event,
        None => panic!("no `{kind}` event in {:?}", journal(transition)),
    }
}

fn request(transition: &Transition) -> &ActionRequest {
    match &transition.command {
        Command::Execute(request) => request,
        other => panic!("expected Execute, got {other:?}"),
    }
}

fn error(state: &CaseState) -> &CaseError {
    match &state.error {
        Some(error) => error,
        None => panic!("the case did not fail: {state:?}"),
    }
}

/// One line saying how a case ended up: `completed:<outcome>`, `failed:<kind>` or the
/// status and step, followed by its data.
fn summary(state: &CaseState) -> String {
    let how = match (state.status, &state.outcome, &state.error) {
        (Status::Completed, Some(outcome), _) => format!("completed:{outcome}"),
        (Status::Failed, _, Some(error)) => format!("failed:{}", error.kind),
        (status, _, _) => format!(
            "{}@{}",
            status.as_str(),
            state.step.as_deref().unwrap_or("-")
        ),
    };
    format!("{how} {}", state.data)
}

/// Starts a case of `workflow` with `input`, wakes it once, and compares its summary.
fn check(workflow: &Workflow, input: Value, expect: &str) {
    let mut state = start(workflow, input.clone());
    wake(workflow, &mut state, T0);
    assert_eq!(summary(&state), expect, "input {input}");
}

// ---------------------------------------------------------------------------------------------
// Pure steps and the first effect.

const PAY: &str = r#"  - id: check
    validate:
      assert: ["input.amount > 0"]
  - id: route
    decide:
      columns: ["input.amount > 100"]
      rules:
        - { when: [true], then: { lane: review } }
        - { when: [false], then: { lane: fast } }
  - id: enrich
    set: { total: "input.amount * 2" }
  - id: pay
    action:
      method: POST
      url: "http://127.0.0.1:9000/pay/${input.id}?amount=${input.amount}"
      headers: { X-Tenant: "${input.tenant}", X-Amount: "${input.amount}" }
      body:
        amount: "${input.amount}"
        trusted: "${input.trusted}"
        note: "invoice ${input.id}"
        lines: ["${data.total}", 7, "${data.route}"]
        fixed: { currency: EUR }
      timeout: 5s
      retry: { max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s }
      into: payment
  - id: done
    end: paid
"#;

fn pay_input() -> Value {
    json!({ "id": "inv-1", "amount": 250, "tenant": "acme", "trusted": true })
}

#[test]
fn pure_steps_run_in_one_transition_up_to_the_first_effect() {
    let workflow = workflow(PAY);
    let mut state = start(&workflow, pay_input());
    let transition = wake(&workflow, &mut state, T0 + 7);
    assert_eq!(
        journal(&transition),
        [
            "step.completed@check",
            "step.completed@route",
            "step.completed@enrich",
            "action.started@pay"
        ]
    );
    assert_eq!(
        event(&transition, "action.started").data,
        json!({
            "attempt": 1,
            "visit": 1,
            "idempotency_key": "keel:c1:pay:1",
            "method": "POST",
            "url": "http://127.0.0.1:9000/pay/inv-1?amount=250",
        })
    );
    let headers = vec![
        ("X-Amount".to_string(), "250".to_string()),
        ("X-Tenant".to_string(), "acme".to_string()),
    ];
    let body_json = r#"{"amount":250,"trusted":true,"note":"invoice inv-1","lines":[500,7,{"lane":"review"}],"fixed":{"currency":"EUR"}}"#;
    assert_eq!(
        transition.command,
        Command::Execute(ActionRequest {
            step: "pay".to_string(),
            attempt: 1,
            visit: 1,
            idempotency_key: "keel:c1:pay:1".to_string(),
            method: "POST".to_string(),
            url: "http://127.0.0.1:9000/pay/inv-1?amount=250".to_string(),
            headers: headers.clone(),
            // A string that is exactly one hole keeps the JSON type of its value.
            body: Some(json!({
                "amount": 250,
                "trusted": true,
                "note": "invoice inv-1",
                "lines": [500, 7, { "lane": "review" }],
                "fixed": { "currency": "EUR" },
            })),
            body_json: Some(body_json.to_string()),
            timeout_ms: 5_000,
        })
    );
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.step.as_deref(), Some("pay"));
    assert_eq!(state.step_entered_at_ms, T0 + 7);
    assert_eq!(state.steps_executed, 3);
    assert_eq!(
        state.action,
        Some(ActionProgress {
            attempt: 1,
            visit: 1,
            idempotency_key: "keel:c1:pay:1".to_string(),
            in_flight: true,
            retry_at_ms: None,
            attempts_before: 0,
            request: Some(VisitRequest {
                method: "POST".to_string(),
                url: "http://127.0.0.1:9000/pay/inv-1?amount=250".to_string(),
                headers,
                body: Some(body_json.to_string()),
            }),
        })
    );
    assert_eq!(state.visits, BTreeMap::from([("pay".to_string(), 1)]));
    assert_eq!(idempotency_key("c1", "pay", 1), "keel:c1:pay:1");
}

#[test]
fn a_successful_response_is_stored_and_the_case_moves_on() {
    let workflow = workflow(PAY);
    for status in [200, 201, 204, 299] {
        let mut state = start(&workflow, pay_input());
        wake(&workflow, &mut state, T0);
        let transition = respond(
            &workflow,
            &mut state,
            1,
            http(status, json!({"ok": true})),
            T0 + 50,
        );
        assert_eq!(
            journal(&transition),
            ["action.completed@pay", "case.completed@done"]
        );
        assert_eq!(
            event(&transition, "action.completed").data,
            json!({ "attempt": 1, "status": status, "body": { "ok": true } })
        );
        assert_eq!(transition.command, Command::Stop);
        assert_eq!(state.status, Status::Completed);
        assert_eq!(state.outcome.as_deref(), Some("paid"));
        assert_eq!(state.step, None);
        assert_eq!(state.action, None);
        assert_eq!(
            state.data["payment"],
            json!({ "status": status, "body": { "ok": true } })
        );
        assert_eq!(state.steps_executed, 4);
    }
}

// ---------------------------------------------------------------------------------------------
// Crash resumption and stale results.

#[test]
fn a_wake_after_a_crash_resends_the_same_attempt_with_the_same_key() {
    let workflow = workflow(PAY);
    let mut state = start(&workflow, pay_input());
    let first = wake(&workflow, &mut state, T0);
    // What the engine persisted before performing the effect, read back after a crash.
    let stored = serde_json::to_string(&state).unwrap();
    let mut resumed: CaseState = serde_json::from_str(&stored).unwrap();
    assert_eq!(resumed, state);

    let again = wake(&workflow, &mut resumed, T0 + 30 * SECOND_MS);
    assert_eq!(journal(&again), Vec::<String>::new());
    assert_eq!(request(&again), request(&first));
    assert_eq!(resumed, state);

    // The resent attempt's result is applied as usual.
    respond(
        &workflow,
        &mut resumed,
        1,
        http(200, json!(1)),
        T0 + 31 * SECOND_MS,
    );
    assert_eq!(resumed.status, Status::Completed);
}

#[test]
fn a_result_for_another_attempt_is_ignored() {
    let workflow = workflow(PAY);
    let mut state = start(&workflow, pay_input());
    wake(&workflow, &mut state, T0);
    respond(&workflow, &mut state, 1, http(503, json!(null)), T0 + 10);
    let retry_at = state.action.as_ref().and_then(|a| a.retry_at_ms).unwrap();

    // While waiting for the retry, a late duplicate of attempt 1 changes nothing.
    let before = state.clone();
    let late = respond(&workflow, &mut state, 1, http(200, json!(1)), T0 + 20);
    assert_eq!(journal(&late), Vec::<String>::new());
    assert_eq!(late.command, Command::Sleep { until_ms: retry_at });
    assert_eq!(state, before);

    let second = wake(&workflow, &mut state, retry_at);
    assert_eq!(request(&second).attempt, 2);

    // While attempt 2 is in flight, results for attempts 1 and 3 are ignored: the state is
    // unchanged and the command is what a wake-up gives (the attempt in flight).
    for stale in [1, 3] {
        let before = state.clone();
        let ignored = respond(
            &workflow,
            &mut state,
            stale,
            http(200, json!(1)),
            retry_at + 5,
        );
        assert_eq!(journal(&ignored), Vec::<String>::new(), "attempt {stale}");
        assert_eq!(ignored.command, second.command, "attempt {stale}");
        assert_eq!(state, before, "attempt {stale}");
    }
    respond(&workflow, &mut state, 2, http(200, json!(2)), retry_at + 9);
    assert_eq!(state.data["payment"]["body"], json!(2));
}

#[test]
fn a_result_when_the_case_is_not_at_an_action_is_ignored() {
    let workflow = workflow("  - id: hold\n    wait: { for: 1h }\n  - id: done\n    end: ok\n");
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    let before = state.clone();
    let transition = respond(&workflow, &mut state, 1, http(200, json!(1)), T0 + 1);
    assert_eq!(journal(&transition), Vec::<String>::new());
    assert_eq!(
        transition.command,
        Command::Sleep {
            until_ms: T0 + HOUR_MS
        }
    );
    assert_eq!(state, before);
}

// ---------------------------------------------------------------------------------------------
// Retries.

const FLAKY: &str = r#"  - id: call
    action:
      url: "http://127.0.0.1:9000/x"
      retry: { max_attempts: 5, initial_backoff: 100ms, max_backoff: 300ms }
  - id: done
    end: ok
"#;

fn retryable_outcomes() -> Vec<ActionOutcome> {
    vec![
        http(503, json!("busy")),
        http(500, json!(null)),
        http(502, json!(null)),
        http(429, json!(null)),
        http(408, json!(null)),
        ActionOutcome::Timeout,
        ActionOutcome::ConnectionError("connection refused".to_string()),
    ]
}

#[test]
fn retryable_failures_back_off_exponentially_with_jitter() {
    let workflow = workflow(FLAKY);
    // The backoff before attempt n+1 is min(300, 100 * 2^(n-1)) ms, scaled into [50%, 100%].
    let bases_ms = [100, 200, 300, 300];
    for outcome in retryable_outcomes() {
        for jitter in [0.0, 0.5, 0.999] {
            let mut state = start(&workflow, json!({}));
            let mut now = T0;
            wake(&workflow, &mut state, now);
            for (index, base_ms) in bases_ms.into_iter().enumerate() {
                let attempt = index as u32 + 1;
                let label = format!("{outcome:?} jitter {jitter} attempt {attempt}");
                now += 10;
                let input = Input::ActionResult {
                    attempt,
                    outcome: outcome.clone(),
                };
                let failed = advance(&workflow, &mut state, input, now, jitter);
                assert_eq!(journal(&failed), ["action.attempt_failed@call"], "{label}");
                let retry_at = failed.events[0].data["retry_at_ms"].as_i64().unwrap();
                let delay_ms = retry_at - now;
                assert!(
                    (base_ms / 2..=base_ms).contains(&delay_ms),
                    "{label}: delay {delay_ms}ms"
                );
                if jitter == 0.0 {
                    assert_eq!(delay_ms, base_ms / 2, "{label}");
                }
                assert_eq!(
                    failed.command,
                    Command::Sleep { until_ms: retry_at },
                    "{label}"
                );
                assert_eq!(state.status, Status::Waiting, "{label}");
                assert_eq!(failed.events[0].data["attempt"], json!(attempt), "{label}");

                // Too early: keep sleeping, journal nothing.
                let early = wake(&workflow, &mut state, retry_at - 1);
                assert_eq!(journal(&early), Vec::<String>::new(), "{label}");
                assert_eq!(
                    early.command,
                    Command::Sleep { until_ms: retry_at },
                    "{label}"
                );

                // Due: the next attempt of the same visit, under the visit's key.
                now = retry_at;
                let next = wake(&workflow, &mut state, now);
                assert_eq!(journal(&next), ["action.started@call"], "{label}");
                assert_eq!(request(&next).attempt, attempt + 1, "{label}");
                assert_eq!(request(&next).visit, 1, "{label}");
                assert_eq!(request(&next).idempotency_key, "keel:c1:call:1", "{label}");
                assert_eq!(state.status, Status::Running, "{label}");
            }
            // The fifth attempt is the last.
            let last = respond(&workflow, &mut state, 5, outcome.clone(), now + 10);
            assert_eq!(journal(&last), ["case.failed@call"]);
            assert_eq!(last.command, Command::Stop);
            assert_eq!(state.status, Status::Failed);
            assert_eq!(error(&state).kind, "action_failed");
            assert_eq!(error(&state).step.as_deref(), Some("call"));
            assert_eq!(error(&state).details["attempts"], json!(5));
            assert!(!error(&state).details["last"].is_null());
            assert_eq!(state.action, None);
        }
    }
}

#[test]
fn backoff_is_capped_and_jittered() {
    let workflow = workflow(FLAKY);
    let StepKind::Action(action) = &workflow.steps[0].kind else {
        panic!("the first step is an action")
    };
    let cases = [
        // (attempt, jitter, expected delay in ms)
        (1, 0.0, 50),
        (1, 0.999, 99),
        (1, 1.0, 100),
        (2, 0.0, 100),
        (3, 0.0, 150),
        (3, 0.999, 299),
        (30, 0.999, 299),
        (u32::MAX, 0.0, 150),
        // Out-of-range jitter is clamped.
        (1, -3.0, 50),
        (1, 7.0, 100),
    ];
    for (attempt, jitter, expect) in cases {
        assert_eq!(
            backoff_ms(action, attempt, jitter),
            expect,
            "attempt {attempt} jitter {jitter}"
        );
    }
}

#[test]
fn client_errors_fail_at_once() {
    let workflow = workflow(FLAKY);
    let cases = [
        (http(400, json!({"error": "bad"})), json!(400)),
        (http(401, json!(null)), json!(401)),
        (http(404, json!(null)), json!(404)),
        (http(409, json!(null)), json!(409)),
        (http(422, json!(null)), json!(422)),
        (ActionOutcome::Invalid("bad url".to_string()), Value::Null),
    ];
    for (outcome, status) in cases {
        let mut state = start(&workflow, json!({}));
        wake(&workflow, &mut state, T0);
        let label = format!("{outcome:?}");
        let transition = respond(&workflow, &mut state, 1, outcome, T0 + 5);
        assert_eq!(journal(&transition), ["case.failed@call"], "{label}");
        assert_eq!(transition.command, Command::Stop, "{label}");
        assert_eq!(error(&state).kind, "action_failed", "{label}");
        assert_eq!(error(&state).details["attempt"], json!(1), "{label}");
        assert_eq!(error(&state).details["status"], status, "{label}");
        assert_eq!(state.action, None, "{label}");
        // The failure is final: a wake-up does nothing more.
        let after = wake(&workflow, &mut state, T0 + HOUR_MS);
        assert_eq!(journal(&after), Vec::<String>::new(), "{label}");
        assert_eq!(after.command, Command::Stop, "{label}");
    }
}

#[test]
fn a_response_that_violates_response_schema_fails_the_case() {
    let workflow = workflow(
        r#"  - id: call
    action:
      url: "http://127.0.0.1:9000/x"
      response_schema: { type: object, required: [id], properties: { id: { type: string } } }
  - id: done
    end: ok
"#,
    );
    let cases = [
        (json!({"id": "a"}), "completed:ok"),
        (json!({"id": 7}), "failed:action_response_invalid"),
        (json!([]), "failed:action_response_invalid"),
    ];
    for (body, expect) in cases {
        let mut state = start(&workflow, json!({}));
        wake(&workflow, &mut state, T0);
        respond(&workflow, &mut state, 1, http(200, body.clone()), T0 + 1);
        let how = summary(&state);
        assert!(how.starts_with(expect), "body {body}: {how}");
        if state.status == Status::Failed {
            let details = &error(&state).details;
            assert_eq!(details["status"], json!(200));
            assert_eq!(details["body"], body);
            assert!(!details["violations"].as_array().unwrap().is_empty());
            assert_eq!(state.data.get("call"), None);
        }
    }
}

#[test]
fn a_template_hole_that_fails_fails_the_case() {
    let workflow = workflow(
        "  - id: call\n    action:\n      url: \"http://h/${input.missing}\"\n  - id: done\n    end: ok\n",
    );
    check(&workflow, json!({}), "failed:template_error {}");
}

// ---------------------------------------------------------------------------------------------
// Idempotency: one key per visit of an action step, one request per visit.

/// Three installments: `charge` is visited three times, each time with its own body. The
/// request also carries the time it was rendered at, which a retry must not change.
const INSTALLMENTS: &str = r#"  - id: first
    set: { installment: "1" }
  - id: charge
    action:
      method: POST
      url: "http://127.0.0.1:9000/charges?at=${now}"
      headers: { X-Requested-At: "${now}" }
      body: { installment: "${data.installment}", amount: "${input.amount}", requested_at: "${now}" }
      retry: { max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s }
  - id: more
    switch:
      - when: "data.installment < 3"
        goto: count
      - default: done
  - id: count
    set: { installment: "data.installment + 1" }
    next: charge
  - id: done
    end: paid
"#;

/// The state as the engine stores it and reads it back (after a crash, on another node).
fn reload(state: &CaseState) -> CaseState {
    serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
}

/// Asserts that `sent` are attempts 1, 2, … of one visit: one key, the same request bytes.
fn assert_one_visit(sent: &[ActionRequest], key: &str) {
    let first = &sent[0];
    for (index, request) in sent.iter().enumerate() {
        assert_eq!(request.attempt, index as u32 + 1, "{request:?}");
        assert_eq!(request.idempotency_key, key, "{request:?}");
        assert_eq!(request.visit, first.visit, "{request:?}");
        assert_eq!(
            (
                &request.method,
                &request.url,
                &request.headers,
                &request.body_json
            ),
            (&first.method, &first.url, &first.headers, &first.body_json),
        );
    }
}

#[test]
fn every_retry_and_resume_of_a_visit_sends_its_key_and_its_first_bytes() {
    let wf = workflow(INSTALLMENTS);
    let mut state = start(&wf, json!({ "amount": 100 }));
    let first = request(&wake(&wf, &mut state, T0)).clone();
    assert_eq!(first.idempotency_key, "keel:c1:charge:1");
    let body = first.body_json.clone().unwrap();
    assert!(body.contains("2023-11-14T22:13:20"), "{body}");
    let mut sent = vec![first];
    let mut now = T0;
    for outcome in [ActionOutcome::Timeout, http(503, json!(null))] {
        now += 10 * SECOND_MS;
        let attempt = sent.last().unwrap().attempt;
        respond(&wf, &mut state, attempt, outcome, now);
        // The retry comes due much later, on a node that read the stored state.
        now = state.action.as_ref().unwrap().retry_at_ms.unwrap() + HOUR_MS;
        let mut resumed = reload(&state);
        let next = request(&wake(&wf, &mut resumed, now)).clone();
        // That attempt is interrupted too: the resume sends it again, journals nothing.
        let mut again = reload(&resumed);
        let resent = wake(&wf, &mut again, now + HOUR_MS);
        assert_eq!(journal(&resent), Vec::<String>::new());
        assert_eq!(request(&resent), &next);
        state = again;
        sent.push(next);
    }
    assert_one_visit(&sent, "keel:c1:charge:1");
    let completed = respond(&wf, &mut state, 3, http(200, json!({})), now + 2 * HOUR_MS);
    assert_eq!(
        journal(&completed)[..2],
        ["action.completed@charge", "step.completed@more"]
    );
}

#[test]
fn each_visit_of_an_action_in_a_loop_has_its_own_key_and_body() {
    let wf = workflow(INSTALLMENTS);
    let mut state = start(&wf, json!({ "amount": 100 }));
    let mut now = T0;
    let mut transition = wake(&wf, &mut state, now);
    let mut visits: Vec<Vec<ActionRequest>> = Vec::new();
    let mut started = Vec::new();
    loop {
        started.extend(
            (transition.events.iter())
                .filter(|e| e.kind == "action.started")
                .map(|e| e.data.clone()),
        );
        let Command::Execute(sent) = transition.command.clone() else {
            break;
        };
        if sent.attempt == 1 {
            visits.push(Vec::new());
        }
        visits.last_mut().unwrap().push(sent.clone());
        now += SECOND_MS;
        // The second visit's first attempt fails once: its retry stays in that visit.
        if sent.visit == 2 && sent.attempt == 1 {
            respond(&wf, &mut state, 1, http(503, json!(null)), now);
            now += MINUTE_MS;
            transition = wake(&wf, &mut state, now);
            continue;
        }
        transition = respond(&wf, &mut state, sent.attempt, http(200, json!({})), now);
    }
    assert_eq!(summary(&state).split(' ').next(), Some("completed:paid"));
    assert_eq!(visits.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 1]);
    for (index, visit) in visits.iter().enumerate() {
        let number = index as u32 + 1;
        assert_one_visit(visit, &format!("keel:c1:charge:{number}"));
        assert_eq!(visit[0].visit, number);
        assert_eq!(
            visit[0].body.as_ref().unwrap()["installment"],
            json!(number)
        );
    }
    let journaled: Vec<(Value, Value, Value)> = started
        .iter()
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
            (json!(1), json!(1), json!("keel:c1:charge:1")),
            (json!(2), json!(1), json!("keel:c1:charge:2")),
            (json!(2), json!(2), json!("keel:c1:charge:2")),
            (json!(3), json!(1), json!("keel:c1:charge:3")),
        ]
    );
    assert_eq!(state.visits, BTreeMap::from([("charge".to_string(), 3)]));
}

/// Fails every attempt of the visit in flight with 503 until the case parks; returns the
/// requests sent, from `transition` on.
fn fail_until_parked(
    wf: &Workflow,
    state: &mut CaseState,
    mut transition: Transition,
    now: &mut i64,
) -> Vec<ActionRequest> {
    let mut sent = Vec::new();
    while let Command::Execute(request) = transition.command.clone() {
        sent.push(request.clone());
        *now += SECOND_MS;
        respond(wf, state, request.attempt, http(503, json!(null)), *now);
        *now += MINUTE_MS;
        transition = wake(wf, state, *now);
    }
    assert_eq!(state.status, Status::Exception);
    sent
}

#[test]
fn a_persons_retry_keeps_the_parked_visit_and_a_skip_to_the_step_starts_a_new_one() {
    let wf = workflow_with("on_failure: exception\n", INSTALLMENTS);
    let mut state = start(&wf, json!({ "amount": 100 }));
    let mut now = T0;
    let first = wake(&wf, &mut state, now);
    let mut sent = fail_until_parked(&wf, &mut state, first, &mut now);
    assert_eq!(error(&state).details["attempts"], json!(3));

    // A day later a person retries: the same visit, key and bytes, three more attempts.
    now += 24 * HOUR_MS;
    let retried = resolve_with(&wf, &mut reload(&state), Resolution::Retry, now);
    let retry = resolve_with(&wf, &mut state, Resolution::Retry, now);
    assert_eq!(retry, retried);
    assert_eq!(
        journal(&retry),
        ["exception.resolved@charge", "action.started@charge"]
    );
    sent.extend(fail_until_parked(&wf, &mut state, retry, &mut now));
    assert_eq!(sent.len(), 6);
    assert_one_visit(&sent, "keel:c1:charge:1");
    assert_eq!(error(&state).details["attempts"], json!(6));

    // Skipping to the same step is a new visit: a new key, the request rendered again.
    let skip = Resolution::Skip {
        to: "charge".into(),
    };
    let fresh = request(&resolve_with(&wf, &mut state, skip, now)).clone();
    assert_eq!((fresh.visit, fresh.attempt), (2, 1));
    assert_eq!(fresh.idempotency_key, "keel:c1:charge:2");
    assert_ne!(fresh.body_json, sent[0].body_json);
}

#[test]
fn a_case_stored_before_visits_were_counted_keeps_its_key_and_never_reuses_an_old_one() {
    let wf = workflow(INSTALLMENTS);
    let mut state = start(&wf, json!({ "amount": 100 }));
    wake(&wf, &mut state, T0);
    // The state as the attempt-keyed version stored it with attempt 2 in flight.
    let mut stored = serde_json::to_value(&state).unwrap();
    let fields = stored.as_object_mut().unwrap();
    fields.remove("visits");
    fields.remove("visit_offset");
    fields["action"] =
        json!({ "attempt": 2, "idempotency_key": "keel:c1:charge:2", "in_flight": true });
    let mut legacy: CaseState = serde_json::from_value(stored).unwrap();
    assert_eq!(legacy.visit_offset, LEGACY_VISIT_OFFSET);

    let resumed = request(&wake(&wf, &mut legacy, T0 + MINUTE_MS)).clone();
    assert_eq!((resumed.attempt, resumed.visit), (2, 11));
    assert_eq!(resumed.idempotency_key, "keel:c1:charge:2");
    respond(
        &wf,
        &mut legacy,
        2,
        ActionOutcome::Timeout,
        T0 + 2 * MINUTE_MS,
    );
    let retry = request(&wake(&wf, &mut legacy, T0 + HOUR_MS)).clone();
    assert_eq!((retry.attempt, retry.visit), (3, 11));
    assert_eq!(
        (&retry.idempotency_key, &retry.url, &retry.body_json),
        (&resumed.idempotency_key, &resumed.url, &resumed.body_json)
    );

    // The next visit's key is above every attempt-keyed one (attempts 1 to 10).
    let next = respond(&wf, &mut legacy, 3, http(200, json!({})), T0 + 2 * HOUR_MS);
    assert_eq!(request(&next).idempotency_key, "keel:c1:charge:12");
    assert_eq!(reload(&legacy), legacy);
}

// ---------------------------------------------------------------------------------------------
// validate, decide, switch, set.

#[test]
fn validate_lists_every_violation_in_one_failure() {
    let workflow = workflow(
        r#"  - id: check
    validate:
      schema: { type: object, required: [a, b], properties: { a: { type: integer }, c: { type: string } } }
      assert:
        - { expr: "input.a > 0", message: "a must be positive" }
        - { expr: "input.a < 100", message: "a must be small" }
        - { expr: "input.nothing.deeper == 1", message: "nothing must be one" }
  - id: done
    end: ok
"#,
    );
    let mut state = start(&workflow, json!({ "a": -1, "c": 5 }));
    let transition = wake(&workflow, &mut state, T0);
    assert_eq!(journal(&transition), ["case.failed@check"]);
    let error = error(&state);
    assert_eq!(error.kind, "validation_failed");
    let violations = error.details["violations"].as_array().unwrap();
    // Two from the schema (b missing, c not a string), one false assertion, one that errors.
    assert_eq!(violations.len(), 4, "{violations:#?}");
    let schema_paths: Vec<&str> = violations
        .iter()
        .filter_map(|v| v.get("path").and_then(Value::as_str))
        .collect();
    assert_eq!(schema_paths, ["", "/c"]);
    let assertions: Vec<&str> = violations
        .iter()
        .filter_map(|v| v.get("assert").and_then(Value::as_str))
        .collect();
    assert_eq!(assertions, ["input.a > 0", "input.nothing.deeper == 1"]);
    assert_eq!(violations[2]["message"], json!("a must be positive"));
    let errored = violations[3]["message"].as_str().unwrap();
    assert!(errored.starts_with("nothing must be one: "), "{errored}");
    assert!(
        error.message.contains("4 violation(s)"),
        "{}",
        error.message
    );

    check(
        &workflow,
        json!({ "a": 5, "b": 1, "nothing": { "deeper": 1 } }),
        "completed:ok {}",
    );
}

#[test]
fn decide_first_takes_the_first_matching_rule_or_the_default() {
    let workflow = workflow(
        r#"  - id: route
    decide:
      columns: ["input.a > 10", "input.b"]
      rules:
        - { when: [true, "-"], then: { lane: big } }
        - { when: ["-", true], then: { lane: flagged } }
      default: { lane: none }
  - id: done
    end: ok
"#,
    );
    let cases = [
        (
            json!({"a": 20, "b": false}),
            r#"completed:ok {"route":{"lane":"big"}}"#,
        ),
        (
            json!({"a": 20, "b": true}),
            r#"completed:ok {"route":{"lane":"big"}}"#,
        ),
        (
            json!({"a": 1, "b": true}),
            r#"completed:ok {"route":{"lane":"flagged"}}"#,
        ),
        (
            json!({"a": 1, "b": false}),
            r#"completed:ok {"route":{"lane":"none"}}"#,
        ),
        (json!({"a": 1, "b": "yes"}), "failed:expression_error {}"),
        (json!({"b": true}), "failed:expression_error {}"),
    ];
    for (input, expect) in cases {
        check(&workflow, input, expect);
    }
}

#[test]
fn decide_first_without_a_match_or_default_fails() {
    // With more than 16 columns the checker cannot prove the table complete, so an input that
    // no rule matches reaches the engine.
    let columns = vec!["\"input.a > 0\""; 17].join(", ");
    let dashes = vec!["\"-\""; 16].join(", ");
    let workflow = workflow(&format!(
        "  - id: route\n    decide:\n      columns: [{columns}]\n      rules:\n        - {{ when: [true, {dashes}], then: positive }}\n      into: sign\n  - id: done\n    end: ok\n"
    ));
    check(
        &workflow,
        json!({"a": 1}),
        r#"completed:ok {"sign":"positive"}"#,
    );
    let mut state = start(&workflow, json!({"a": 0}));
    let transition = wake(&workflow, &mut state, T0);
    assert_eq!(journal(&transition), ["case.failed@route"]);
    assert_eq!(error(&state).kind, "no_rule_matched");
    assert_eq!(error(&state).details["columns"], json!(vec![false; 17]));
}

#[test]
fn decide_collect_returns_every_matching_output_in_order() {
    let workflow = workflow(
        r#"  - id: route
    decide:
      hit: collect
      columns: ["input.a > 10", "input.b"]
      rules:
        - { when: [true, "-"], then: 1 }
        - { when: ["-", true], then: { two: 2 } }
        - { when: [true, true], then: three }
        - { when: [false, false], then: 4 }
      into: hits
  - id: done
    end: ok
"#,
    );
    let cases = [
        (
            json!({"a": 20, "b": true}),
            r#"completed:ok {"hits":[1,{"two":2},"three"]}"#,
        ),
        (json!({"a": 20, "b": false}), r#"completed:ok {"hits":[1]}"#),
        (
            json!({"a": 1, "b": true}),
            r#"completed:ok {"hits":[{"two":2}]}"#,
        ),
        (json!({"a": 1, "b": false}), r#"completed:ok {"hits":[4]}"#),
    ];
    for (input, expect) in cases {
        check(&workflow, input, expect);
    }
    let workflow = workflow_with(
        "",
        "  - id: route\n    decide:\n      hit: collect\n      columns: [\"input.a\"]\n      rules:\n        - { when: [true], then: 1 }\n  - id: done\n    end: ok\n",
    );
    check(
        &workflow,
        json!({"a": false}),
        r#"completed:ok {"route":[]}"#,
    );
}

#[test]
fn switch_takes_the_first_true_case_or_the_default() {
    let workflow = workflow(
        r#"  - id: branch
    switch:
      - when: "input.a > 10"
        goto: big
      - when: "input.a > 5"
        goto: middle
      - default: small
  - id: big
    end: big
  - id: middle
    end: middle
  - id: small
    end: small
"#,
    );
    let cases = [
        (json!({"a": 20}), "completed:big {}"),
        (json!({"a": 7}), "completed:middle {}"),
        (json!({"a": 1}), "completed:small {}"),
        (json!({}), "failed:expression_error {}"),
        (json!({"a": "x"}), "failed:expression_error {}"),
    ];
    for (input, expect) in cases {
        check(&workflow, input, expect);
    }

    let mut state = start(&workflow, json!({"a": 7}));
    let transition = wake(&workflow, &mut state, T0);
    assert_eq!(
        event(&transition, "step.completed").data,
        json!({ "kind": "switch", "matched": 1, "goto": "middle" })
    );
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    assert_eq!(error(&state).details, json!({ "expr": "input.a > 10" }));
    assert_eq!(error(&state).step.as_deref(), Some("branch"));
}

#[test]
fn set_values_see_earlier_values_of_the_same_step() {
    let workflow = workflow(
        r#"  - id: calc
    set: { a: "input.x + 1", b: "data.a * 10", c: "string(data.b) + '!'" }
  - id: more
    set: { a: "data.a + data.b" }
  - id: done
    end: ok
"#,
    );
    check(
        &workflow,
        json!({"x": 1}),
        r#"completed:ok {"a":22,"b":20,"c":"20!"}"#,
    );
    check(&workflow, json!({}), "failed:expression_error {}");

    let mut state = start(&workflow, json!({"x": 1}));
    let transition = wake(&workflow, &mut state, T0);
    assert_eq!(
        transition.events[0].data,
        json!({ "kind": "set", "values": { "a": 2, "b": 20, "c": "20!" } })
    );
}

// ---------------------------------------------------------------------------------------------
// wait.

#[test]
fn wait_for_sleeps_until_the_step_was_entered_plus_the_duration() {
    let workflow = workflow(
        r#"  - id: call
    action: { url: "http://127.0.0.1:9000/x" }
  - id: hold
    wait: { for: 2h }
  - id: done
    end: ok
"#,
    );
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    // The wait is entered when the action's result arrives.
    let entered = T0 + 500;
    let due = entered + 2 * HOUR_MS;
    let transition = respond(&workflow, &mut state, 1, http(200, json!(null)), entered);
    assert_eq!(
        journal(&transition),
        ["action.completed@call", "wait.started@hold"]
    );
    assert_eq!(
        event(&transition, "wait.started").data,
        json!({ "until_ms": due, "for": { "timer": true } })
    );
    assert_eq!(transition.command, Command::Sleep { until_ms: due });
    assert_eq!(state.status, Status::Waiting);
    assert_eq!(state.step_entered_at_ms, entered);
    assert_eq!(state.wait_until_ms, Some(due));

    for early in [entered, due - HOUR_MS, due - 1] {
        let again = wake(&workflow, &mut state, early);
        assert_eq!(journal(&again), Vec::<String>::new());
        assert_eq!(again.command, Command::Sleep { until_ms: due });
    }

    let fired = wake(&workflow, &mut state, due + 3);
    assert_eq!(journal(&fired), ["timer.fired@hold", "case.completed@done"]);
    assert_eq!(
        event(&fired, "timer.fired").data,
        json!({ "due_ms": due, "late_ms": 3 })
    );
    assert_eq!(fired.command, Command::Stop);
    assert_eq!(state.wait_until_ms, None);
}

#[test]
fn wait_until_sleeps_until_the_timestamp_from_the_input() {
    let workflow = workflow(
        r#"  - id: hold
    wait: { until: "input.due" }
  - id: done
    end: ok
"#,
    );
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    };
    let cases = [
        (
            json!("2030-01-01T00:00:00Z"),
            Some(at("2030-01-01T00:00:00Z")),
        ),
        (
            json!("2030-01-01T02:00:00+02:00"),
            Some(at("2030-01-01T00:00:00Z")),
        ),
        (json!(T0 + 5), Some(T0 + 5)),
        // A time already past fires at once.
        (json!("2001-01-01T00:00:00Z"), None),
    ];
    for (due, sleep_until) in cases {
        let mut state = start(&workflow, json!({ "due": due }));
        let transition = wake(&workflow, &mut state, T0);
        match sleep_until {
            Some(until_ms) => {
                assert_eq!(transition.command, Command::Sleep { until_ms }, "due {due}");
                assert_eq!(journal(&transition), ["wait.started@hold"], "due {due}");
                wake(&workflow, &mut state, until_ms);
            }
            None => assert_eq!(
                journal(&transition),
                ["timer.fired@hold", "case.completed@done"]
            ),
        }
        assert_eq!(state.status, Status::Completed, "due {due}");
    }
    check(
        &workflow,
        json!({"due": "soon"}),
        "failed:expression_error {}",
    );
    check(&workflow, json!({}), "failed:expression_error {}");
}

#[test]
fn wait_until_accepts_a_cel_timestamp() {
    let workflow = workflow(
        r#"  - id: hold
    wait: { until: "timestamp(input.due) + duration('1h')" }
  - id: done
    end: ok
"#,
    );
    let mut state = start(&workflow, json!({ "due": "2030-01-01T00:00:00Z" }));
    let transition = wake(&workflow, &mut state, T0);
    let due = chrono::DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(transition.command, Command::Sleep { until_ms: due });
}

const APPROVAL: &str = r#"  - id: call
    action: { url: "http://127.0.0.1:9000/x" }
  - id: hold
    wait: { signal: approved, timeout: 1h, into: approval, timeout_goto: expired }
  - id: done
    end: approved
  - id: expired
    end: expired
"#;

#[test]
fn a_signal_that_arrives_early_is_consumed_when_the_case_reaches_the_wait() {
    let workflow = workflow(APPROVAL);
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    let early = signal(
        &workflow,
        &mut state,
        "approved",
        json!({"by": "ann"}),
        T0 + 1,
    );
    assert_eq!(journal(&early), ["signal.received@call"]);
    assert_eq!(
        early.events[0].data,
        json!({ "signal": "approved", "payload": { "by": "ann" } })
    );
    // The action is still in flight: nothing in the future to wait for.
    assert!(matches!(early.command, Command::Sleep { until_ms } if until_ms <= T0 + 1));
    assert_eq!(state.step.as_deref(), Some("call"));
    assert_eq!(state.signals.get("approved"), Some(&json!({"by": "ann"})));

    let done = respond(&workflow, &mut state, 1, http(200, json!(null)), T0 + 2);
    assert_eq!(
        journal(&done),
        [
            "action.completed@call",
            "step.completed@hold",
            "case.completed@done"
        ]
    );
    assert_eq!(state.data["approval"], json!({"by": "ann"}));
    assert!(state.signals.is_empty());
}

#[test]
fn a_signal_wakes_the_wait_for_it_and_only_that_one() {
    let workflow = workflow(APPROVAL);
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    let waiting = respond(&workflow, &mut state, 1, http(200, json!(null)), T0 + 10);
    let due = T0 + 10 + HOUR_MS;
    assert_eq!(
        journal(&waiting),
        ["action.completed@call", "wait.started@hold"]
    );
    assert_eq!(
        event(&waiting, "wait.started").data,
        json!({ "until_ms": due, "for": { "signal": "approved" } })
    );

    let other = signal(&workflow, &mut state, "rejected", json!(1), T0 + 20);
    assert_eq!(journal(&other), ["signal.received@hold"]);
    assert_eq!(other.command, Command::Sleep { until_ms: due });
    assert_eq!(state.status, Status::Waiting);
    assert_eq!(state.step.as_deref(), Some("hold"));
    assert_eq!(state.signals.get("rejected"), Some(&json!(1)));

    let approved = signal(&workflow, &mut state, "approved", json!(true), T0 + 30);
    assert_eq!(
        journal(&approved),
        [
            "signal.received@hold",
            "step.completed@hold",
            "case.completed@done"
        ]
    );
    assert_eq!(state.data["approval"], json!(true));
    // The other signal stays buffered; it was never consumed.
    assert_eq!(state.signals.get("rejected"), Some(&json!(1)));
}

#[test]
fn a_signal_wait_times_out_to_timeout_goto_or_fails() {
    let workflow = workflow(APPROVAL);
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    respond(&workflow, &mut state, 1, http(200, json!(null)), T0);
    let early = wake(&workflow, &mut state, T0 + HOUR_MS - 1);
    assert_eq!(
        early.command,
        Command::Sleep {
            until_ms: T0 + HOUR_MS
        }
    );
    let timed_out = wake(&workflow, &mut state, T0 + HOUR_MS);
    assert_eq!(
        journal(&timed_out),
        ["wait.timed_out@hold", "case.completed@expired"]
    );
    assert_eq!(
        event(&timed_out, "wait.timed_out").data,
        json!({ "signal": "approved", "goto": "expired" })
    );

    let workflow = workflow_with(
        "",
        "  - id: hold\n    wait: { signal: approved, timeout: 1h }\n  - id: done\n    end: ok\n",
    );
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    let failed = wake(&workflow, &mut state, T0 + 2 * HOUR_MS);
    assert_eq!(journal(&failed), ["case.failed@hold"]);
    assert_eq!(failed.command, Command::Stop);
    assert_eq!(error(&state).kind, "signal_timeout");
    assert_eq!(error(&state).details, json!({ "signal": "approved" }));
    assert_eq!(state.wait_until_ms, None);
}

#[test]
fn a_signal_to_a_finished_case_is_ignored() {
    let workflow = workflow(APPROVAL);
    for finish in [Status::Completed, Status::Failed] {
        let mut state = start(&workflow, json!({}));
        wake(&workflow, &mut state, T0);
        let outcome = match finish {
            Status::Completed => http(200, json!(null)),
            _ => http(400, json!(null)),
        };
        respond(&workflow, &mut state, 1, outcome, T0);
        signal(&workflow, &mut state, "approved", json!(1), T0 + 1);
        assert_eq!(state.status, finish);
        let before = state.clone();
        let late = signal(&workflow, &mut state, "approved", json!(2), T0 + 2);
        assert_eq!(journal(&late), ["signal.ignored"]);
        assert_eq!(
            late.events[0].data,
            json!({ "signal": "approved", "reason": "case is finished" })
        );
        assert_eq!(late.command, Command::Stop);
        assert_eq!(state, before);
    }
}

// ---------------------------------------------------------------------------------------------
// The loop guard.

#[test]
fn a_workflow_that_loops_forever_hits_the_loop_guard() {
    let workflow = workflow("  - id: spin\n    set: { n: \"1\" }\n    next: spin\n");
    let mut state = start(&workflow, json!({}));
    let transition = wake(&workflow, &mut state, T0);
    assert_eq!(transition.command, Command::Stop);
    assert_eq!(state.steps_executed, MAX_STEPS_PER_CASE);
    assert_eq!(error(&state).kind, "loop_guard");
    assert_eq!(
        error(&state).details,
        json!({ "limit": MAX_STEPS_PER_CASE })
    );
    assert_eq!(
        transition.events.last().map(|e| e.kind),
        Some("case.failed")
    );
}

#[test]
fn the_loop_guard_counts_steps_across_transitions() {
    let workflow = workflow(
        "  - id: tick\n    wait: { for: 1s }\n  - id: count\n    set: { n: \"1\" }\n    next: tick\n",
    );
    let mut state = start(&workflow, json!({}));
    let mut now = T0;
    let mut transitions = 0;
    while !state.status.is_final() {
        wake(&workflow, &mut state, now);
        now += SECOND_MS;
        transitions += 1;
        assert!(transitions <= MAX_STEPS_PER_CASE, "the guard never fired");
    }
    assert_eq!(error(&state).kind, "loop_guard");
    assert_eq!(state.steps_executed, MAX_STEPS_PER_CASE);
}

#[test]
fn a_loop_of_actions_hits_the_loop_guard() {
    // A successful action moves the case on without passing through `drive`'s guard.
    let workflow = workflow(
        "  - id: poll\n    action: { url: \"http://127.0.0.1:9000/x\" }\n    next: poll\n",
    );
    let mut state = start(&workflow, json!({}));
    let mut transition = wake(&workflow, &mut state, T0);
    let mut results = 0;
    while let Command::Execute(request) = &transition.command {
        let attempt = request.attempt;
        transition = respond(
            &workflow,
            &mut state,
            attempt,
            http(200, json!(results)),
            T0,
        );
        results += 1;
        assert!(results <= MAX_STEPS_PER_CASE + 1, "the guard never fired");
    }
    assert_eq!(transition.command, Command::Stop);
    assert_eq!(error(&state).kind, "loop_guard");
    assert_eq!(state.steps_executed, MAX_STEPS_PER_CASE);
    assert_eq!(state.action, None);
}

// ---------------------------------------------------------------------------------------------
// SLAs.

#[test]
fn sla_deadlines_are_recorded_once_per_case_and_per_step_visit() {
    let workflow = workflow_with(
        "sla: 1h\n",
        r#"  - id: hold
    sla: 10m
    wait: { signal: go, timeout: 1d }
  - id: route
    switch:
      - when: "data.go.again"
        goto: hold
      - default: done
  - id: done
    end: ok
"#,
    );
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    assert_eq!(
        state.deadlines(&workflow),
        (Some(T0 + HOUR_MS), Some(T0 + 10 * MINUTE_MS))
    );
    assert_eq!(state.next_sla_due(&workflow), Some(T0 + 10 * MINUTE_MS));
    assert_eq!(state.record_sla_breaches(&workflow, T0 + 5 * MINUTE_MS), []);
    assert!(!state.sla_breached);

    // The step deadline passes; it is recorded once.
    let now = T0 + 10 * MINUTE_MS;
    let breaches = state.record_sla_breaches(&workflow, now);
    assert_eq!(
        breaches,
        [Event {
            kind: "sla.breached",
            step: Some("hold".to_string()),
            data: json!({ "scope": "step", "deadline_ms": now, "late_ms": 0 }),
        }]
    );
    assert!(state.sla_breached);
    assert_eq!(state.record_sla_breaches(&workflow, now + 1), []);
    assert_eq!(state.next_sla_due(&workflow), Some(T0 + HOUR_MS));

    // A new visit to the same step has a new deadline.
    let entered = T0 + 20 * MINUTE_MS;
    signal(&workflow, &mut state, "go", json!({"again": true}), entered);
    assert_eq!(state.step.as_deref(), Some("hold"));
    assert_eq!(state.step_entered_at_ms, entered);
    assert_eq!(
        state.next_sla_due(&workflow),
        Some(entered + 10 * MINUTE_MS)
    );

    // Both the case and the second visit are late now; each is recorded once.
    let now = T0 + 2 * HOUR_MS;
    let breaches = state.record_sla_breaches(&workflow, now);
    let scopes: Vec<(Value, Value)> = breaches
        .iter()
        .map(|e| (e.data["scope"].clone(), e.data["deadline_ms"].clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            (json!("case"), json!(T0 + HOUR_MS)),
            (json!("step"), json!(entered + 10 * MINUTE_MS)),
        ]
    );
    assert_eq!(breaches[0].data["late_ms"], json!(HOUR_MS));
    assert_eq!(state.record_sla_breaches(&workflow, now + HOUR_MS), []);
    assert_eq!(state.next_sla_due(&workflow), None);
    assert_eq!(state.sla_breaches.len(), 3);
    assert_eq!(
        state.sla_breaches[0],
        SlaBreach {
            step: Some("hold".to_string()),
            entered_at_ms: T0,
            deadline_ms: T0 + 10 * MINUTE_MS,
            recorded_at_ms: T0 + 10 * MINUTE_MS,
        }
    );
    assert_eq!(state.sla_breaches[1].step, None);

    // A breach is not a failure; a finished case has no deadlines.
    signal(&workflow, &mut state, "go", json!({"again": false}), now);
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.deadlines(&workflow), (None, None));
    assert_eq!(state.record_sla_breaches(&workflow, now + 9 * HOUR_MS), []);
}

#[test]
fn a_workflow_without_slas_has_no_deadline() {
    let workflow = workflow("  - id: hold\n    wait: { for: 1h }\n  - id: done\n    end: ok\n");
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    assert_eq!(state.next_sla_due(&workflow), None);
    assert_eq!(
        state.record_sla_breaches(&workflow, T0 + 1_000 * HOUR_MS),
        []
    );
    assert!(!state.sla_breached);
}

// ---------------------------------------------------------------------------------------------
// Properties over random inputs.

/// Reaches every step kind: an action with retries, a signal wait with a timeout that loops
/// back through a timer, a way back to the action, and a pure infinite loop.
const EVERYTHING: &str = r#"  - id: begin
    set: { n: "1" }
  - id: call
    action:
      method: POST
      url: "http://127.0.0.1:9000/x/${input.id}"
      body: { n: "${data.n}" }
      retry: { max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s }
      into: called
  - id: hold
    sla: 5m
    wait: { signal: go, timeout: 10m, into: go, timeout_goto: nap }
  - id: route
    switch:
      - when: "data.go == 'spin'"
        goto: spin
      - when: "data.go == 'again'"
        goto: call
      - default: done
  - id: spin
    set: { n: "data.n + 1" }
    next: spin
  - id: nap
    wait: { for: 1m }
    next: hold
  - id: done
    end: ok
"#;

const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Wake,
    /// A result for the attempt in flight shifted by `offset` (0 most of the time).
    Result {
        offset: i64,
        outcome: ActionOutcome,
    },
    Signal {
        name: &'static str,
        payload: Value,
    },
    Sla,
}

fn outcome_strategy() -> impl Strategy<Value = ActionOutcome> {
    let response = |statuses: Vec<u16>| {
        prop::sample::select(statuses).prop_map(|status| http(status, json!({ "ok": status })))
    };
    // Weighted so that most cases live long enough to reach the wait and the loops.
    prop_oneof![
        6 => response(vec![200, 201]),
        3 => response(vec![408, 429, 500, 503]),
        1 => response(vec![400, 404]),
        1 => Just(ActionOutcome::Timeout),
        1 => Just(ActionOutcome::ConnectionError("reset".to_string())),
        1 => Just(ActionOutcome::Invalid("too large".to_string())),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Wake),
        3 => (prop_oneof![4 => Just(0i64), 1 => -2i64..=2], outcome_strategy())
            .prop_map(|(offset, outcome)| Op::Result { offset, outcome }),
        2 => (
            prop::sample::select(vec!["go", "other"]),
            prop_oneof![
                Just(json!("spin")),
                Just(json!("again")),
                Just(json!("done")),
                Just(json!(7)),
            ],
        )
            .prop_map(|(name, payload)| Op::Signal { name, payload }),
        1 => Just(Op::Sla),
    ]
}

fn delay_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![3 => 0i64..2_000, 1 => 0i64..(15 * MINUTE_MS)]
}

/// Checks what must hold after every transition.
fn check_invariants(before: &CaseState, state: &CaseState, transition: &Transition, now: i64) {
    // A final status comes with Stop, and Stop only with a final status.
    assert_eq!(
        state.status.is_final(),
        transition.command == Command::Stop,
        "{state:?} {transition:?}"
    );
    // A finished case stays as it was.
    if before.status.is_final() {
        assert_eq!(state, before);
        assert!(transition.events.iter().all(|e| e.kind == "signal.ignored"));
    }
    // The journal says when the case finished, once.
    let finishing = transition
        .events
        .iter()
        .filter(|e| e.kind == "case.completed" || e.kind == "case.failed")
        .count();
    let finished_now = state.status.is_final() && !before.status.is_final();
    assert_eq!(finishing, usize::from(finished_now), "{transition:?}");
    assert_eq!(state.status == Status::Failed, state.error.is_some());
    assert!(state.steps_executed <= MAX_STEPS_PER_CASE);
    match &transition.command {
        Command::Execute(request) => {
            let progress = state.action.as_ref().unwrap();
            assert!(progress.in_flight);
            assert_eq!(progress.retry_at_ms, None);
            assert_eq!(progress.attempt, request.attempt);
            assert_eq!(progress.idempotency_key, request.idempotency_key);
            assert!((1..=MAX_ATTEMPTS).contains(&request.attempt));
            assert_eq!(state.step.as_deref(), Some(request.step.as_str()));
            // One key per visit, counted per step.
            assert_eq!(progress.visit, state.visits[&request.step]);
            assert_eq!(request.visit, progress.visit);
            assert_eq!(
                request.idempotency_key,
                idempotency_key(&state.id, &request.step, request.visit)
            );
            assert_eq!(state.status, Status::Running);
        }
        Command::Sleep { until_ms } => match state.status {
            // Parked: on a retry or a wait, until exactly that time.
            Status::Waiting => {
                let parked_until = state
                    .action
                    .as_ref()
                    .and_then(|a| a.retry_at_ms)
                    .or(state.wait_until_ms);
                assert_eq!(parked_until, Some(*until_ms), "{state:?}");
            }
            // Runnable: never parked in the future.
            Status::Running => assert!(*until_ms <= now, "{state:?} {transition:?}"),
            Status::Completed | Status::Failed | Status::Exception => {
                unreachable!("checked above")
            }
        },
        Command::Ai(_) => unreachable!("the generated workflows have no ai steps"),
        Command::Stop => {}
    }
    // Every started attempt is journaled once, and only when it is new.
    for started in transition
        .events
        .iter()
        .filter(|e| e.kind == "action.started")
    {
        let attempt = started.data["attempt"].as_u64().unwrap();
        assert!((1..=u64::from(MAX_ATTEMPTS)).contains(&attempt));
    }
    if let Some(progress) = &state.action {
        assert!((1..=MAX_ATTEMPTS).contains(&progress.attempt));
        assert_ne!(progress.in_flight, progress.retry_at_ms.is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_keep_the_case_consistent(
        steps in prop::collection::vec((delay_strategy(), op_strategy(), 0.0f64..1.0), 1..60),
    ) {
        let workflow = workflow_with("sla: 1h\n", EVERYTHING);
        let mut state = start(&workflow, json!({ "id": "i-1" }));
        let mut now = T0;
        for (delay, op, jitter) in steps {
            now += delay;
            let before = state.clone();
            let input = match op {
                Op::Wake => Input::Wake,
                Op::Result { offset, outcome } => {
                    let current = state.action.as_ref().map_or(1, |a| i64::from(a.attempt));
                    let attempt = u32::try_from((current + offset).max(0)).unwrap();
                    Input::ActionResult { attempt, outcome }
                }
                Op::Signal { name, payload } => Input::Signal { name: name.to_string(), payload },
                Op::Sla => {
                    let breaches = state.record_sla_breaches(&workflow, now);
                    prop_assert!(breaches.iter().all(|e| e.kind == "sla.breached"));
                    prop_assert_eq!(state.sla_breached, !state.sla_breaches.is_empty());
                    // Every deadline that passed is recorded; the next one is in the future.
                    if let Some(due) = state.next_sla_due(&workflow) {
                        prop_assert!(due > now);
                    }
                    prop_assert!(state.sla_breaches.iter().filter(|b| b.step.is_none()).count() <= 1);
                    continue;
                }
            };
            // A copy read back from storage makes exactly the same decision.
            let mut stored: CaseState =
                serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
            prop_assert_eq!(&stored, &state);
            let transition = advance(&workflow, &mut state, input.clone(), now, jitter);
            let replayed = advance(&workflow, &mut stored, input, now, jitter);
            prop_assert_eq!(&replayed, &transition);
            prop_assert_eq!(&stored, &state);
            check_invariants(&before, &state, &transition, now);
        }
    }
}

const AI_STEPS: &str = r#"  - id: triage
    ai:
      task: classify
      labels: [spam, ham]
      system: "You sort mail."
      prompt: |
        Subject: {{ input.subject }}
      checks:
        - expr: output.label != 'spam' || input.subject != 'invoice'
          message: an invoice is never spam
      route:
        - model: learner
          accept_when: confidence >= 0.9
        - model: small
  - id: done
    end: { outcome: triaged }
"#;

#[test]
fn an_ai_step_renders_its_prompt_and_applies_the_proposal() {
    let wf = workflow(AI_STEPS);
    let mut state = start(&wf, json!({"subject": "Win money"}));
    let t = wake(&wf, &mut state, T0);
    let Command::Ai(request) = &t.command else {
        panic!("expected an AI command, got {:?}", t.command)
    };
    assert_eq!(request.prompt, "Subject: Win money\n");
    assert_eq!(request.system.as_deref(), Some("You sort mail."));
    assert_eq!(t.events.last().unwrap().kind, "ai.started");
    let progress = state.action.as_ref().unwrap();
    assert_eq!(
        (progress.visit, progress.idempotency_key.as_str()),
        (1, "keel:c1:triage:1")
    );
    // A crash before the result: waking again re-issues the same attempt without a new event.
    let again = wake(&wf, &mut state, T0 + 5);
    assert!(matches!(&again.command, Command::Ai(r) if r.attempt == 1));
    assert!(again.events.iter().all(|e| e.kind != "ai.started"));

    let outcome = AiOutcome::Proposed {
        output: json!({"label": "spam"}),
        confidence: 0.95,
        confidence_method: "learner".into(),
        model: "learner".into(),
        tier: 0,
        record: json!({"path": ["learner"]}),
    };
    let t = advance(
        &wf,
        &mut state,
        Input::AiResult {
            attempt: 1,
            outcome,
        },
        T0 + 10,
        0.0,
    );
    assert_eq!(t.command, Command::Stop);
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.data["triage"]["output"]["label"], "spam");
    assert_eq!(state.data["triage"]["confidence_method"], "learner");
    assert!(t.events.iter().any(|e| e.kind == "ai.proposed"));
}

#[test]
fn a_failed_cascade_parks_the_case_on_an_exception() {
    let wf = workflow(AI_STEPS);
    let mut state = start(&wf, json!({"subject": "x"}));
    wake(&wf, &mut state, T0);
    let outcome = AiOutcome::Failed {
        kind: "ai_failed".into(),
        message: "no tier accepted".into(),
        record: json!({"attempts": [{"model": "small", "error": "malformed"}]}),
    };
    let t = advance(
        &wf,
        &mut state,
        Input::AiResult {
            attempt: 1,
            outcome,
        },
        T0 + 10,
        0.0,
    );
    assert_eq!(t.command, Command::Stop);
    assert_eq!(state.status, Status::Exception);
    assert!(!state.status.is_final());
    let raised = t
        .events
        .iter()
        .find(|e| e.kind == "exception.raised")
        .unwrap();
    assert_eq!(raised.data["kind"], "ai_failed");
    assert_eq!(raised.data["cascade"]["attempts"][0]["error"], "malformed");
    // A stale or repeated result changes nothing.
    let t = wake(&wf, &mut state, T0 + 20);
    assert_eq!(t.command, Command::Stop);
    assert_eq!(state.status, Status::Exception);
}

#[test]
fn a_prompt_that_cannot_render_fails_the_case_with_a_template_error() {
    let wf = workflow(
        "  - id: a\n    ai:\n      task: generate\n      prompt: \"{{ input.missing.deeper }}\"\n      route: [{model: m}]\n  - id: done\n    end: { outcome: ok }\n",
    );
    let mut state = start(&wf, json!({}));
    wake(&wf, &mut state, T0);
    assert_eq!(state.status, Status::Failed);
    assert_eq!(state.error.as_ref().unwrap().kind, "template_error");
}

#[test]
fn a_task_with_a_due_time_announces_due_soon_then_overdue_and_still_takes_a_decision() {
    const HOUR: i64 = 3_600_000;
    let wf = workflow(
        "  - id: sign_off\n    approval: { roles: [reviewer], due: 10h, escalate_to: [governor] }\n  - id: done\n    end: { outcome: ok }\n",
    );
    let mut state = start(&wf, json!({}));
    let opened = wake(&wf, &mut state, T0);
    assert_eq!(journal(&opened), ["task.created@sign_off"]);
    // Due soon is a fifth of the time before the due time, at most an hour: 9 h in.
    assert_eq!(
        opened.command,
        Command::Sleep {
            until_ms: T0 + 9 * HOUR
        }
    );
    let soon = wake(&wf, &mut state, T0 + 9 * HOUR);
    assert_eq!(journal(&soon), ["task.due_soon@sign_off"]);
    assert_eq!(
        soon.command,
        Command::Sleep {
            until_ms: T0 + 10 * HOUR
        }
    );
    assert!(journal(&wake(&wf, &mut state, T0 + 9 * HOUR + 1)).is_empty());
    let overdue = wake(&wf, &mut state, T0 + 10 * HOUR);
    assert_eq!(
        journal(&overdue),
        ["task.overdue@sign_off", "task.escalated@sign_off"]
    );
    assert_eq!(
        state.task.as_ref().map(|t| t.roles.clone()),
        Some(vec!["reviewer".to_string(), "governor".to_string()])
    );
    assert!(
        journal(&wake(&wf, &mut state, T0 + 11 * HOUR)).is_empty(),
        "announced once"
    );
    let task_id = state
        .task
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_default();
    let decided = advance(
        &wf,
        &mut state,
        Input::TaskDecision {
            task_id,
            decider: crate::gate::Decider {
                user: "gus".into(),
                roles: vec!["governor".into()],
                approval_limit: None,
            },
            decision: crate::gate::TaskDecision::Approve { comment: None },
        },
        T0 + 12 * HOUR,
        0.0,
    );
    assert_eq!(
        journal(&decided),
        [
            "task.approval_recorded@sign_off",
            "task.completed@sign_off",
            "case.completed@done"
        ]
    );
    assert_eq!(state.data["sign_off"]["decision"], "approved");
}

#[test]
fn a_business_time_due_date_skips_the_weekend_on_the_workflow_calendar() {
    let wf = workflow_with(
        "calendar: { time_zone: Europe/Berlin, working_days: [mon, tue, wed, thu, fri], hours: [\"08:00-17:00\"], holidays: [\"2026-12-25\"] }\n",
        "  - id: sign_off\n    approval: { due: { business: 4h } }\n  - id: done\n    end: { outcome: ok }\n",
    );
    // Friday 2026-11-27 16:00 in Berlin (CET, UTC+1) is 15:00 UTC.
    let friday_16 = chrono::DateTime::parse_from_rfc3339("2026-11-27T15:00:00Z")
        .unwrap()
        .timestamp_millis();
    let mut state = CaseState::new("c1".to_string(), &wf, 1, json!({}), friday_16);
    let opened = wake(&wf, &mut state, friday_16);
    let created = event(&opened, "task.created");
    // 1 h on Friday, 3 h on Monday from 08:00: Monday 11:00 Berlin = 10:00 UTC.
    let monday_11 = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(created.data["due_ms"], json!(monday_11));

    let source = "name: t\nversion: \"1\"\ninput: { schema: { type: object } }\nsteps:\n  - id: a\n    approval: { due: { business: 4h } }\n  - id: b\n    end: { outcome: ok }\n";
    let errors = crate::workflow::parse_str(source, "t.yaml", None).unwrap_err();
    assert!(
        errors.iter().any(|d| d.code == "missing-calendar"),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The default `on_failure: exception`: failures park the case for a person.

fn resolve_with(
    workflow: &Workflow,
    state: &mut CaseState,
    resolution: crate::case::Resolution,
    now_ms: i64,
) -> Transition {
    let input = Input::Resolve {
        exception_id: state.exception_id.clone().unwrap_or_default(),
        by: "ops".to_string(),
        resolution,
        note: None,
    };
    advance(workflow, state, input, now_ms, 0.0)
}

#[test]
fn parked_connector_errors_wait_for_a_person_with_their_context_and_retry_runs_the_step_again() {
    let workflow = workflow_with("on_failure: exception\n", FLAKY);
    let mut state = start(&workflow, json!({"order": 7}));
    wake(&workflow, &mut state, T0);
    let transition = respond(
        &workflow,
        &mut state,
        1,
        http(400, json!({"error": "bad"})),
        T0 + 5,
    );
    assert_eq!(journal(&transition), ["exception.raised@call"]);
    assert_eq!(state.status, Status::Exception);
    assert_eq!(state.exception_id.as_deref(), Some("c1.call.1"));
    let raised = &transition.events[0].data;
    assert_eq!(raised["kind"], "action_failed");
    assert_eq!(raised["details"]["status"], 400);
    assert!(raised["data"].is_object(), "{raised}");
    assert_eq!(error(&state).kind, "action_failed");
    // A person retries: the visit's request is sent again as its next attempt.
    let transition = resolve_with(
        &workflow,
        &mut state,
        crate::case::Resolution::Retry,
        T0 + 10,
    );
    assert_eq!(transition.events[0].kind, "exception.resolved");
    assert_eq!(
        request(&transition).attempt,
        2,
        "the action is requested again"
    );
    assert_eq!(state.status, Status::Running);
    let transition = respond(
        &workflow,
        &mut state,
        2,
        http(200, json!({"ok": true})),
        T0 + 20,
    );
    assert!(
        journal(&transition).contains(&"case.completed@done".to_string()),
        "{:?}",
        journal(&transition)
    );
}

#[test]
fn parked_loop_guard_can_be_skipped_with_a_fresh_step_budget_and_cancel_still_fails() {
    let workflow = workflow_with(
        "on_failure: exception\n",
        "  - id: spin\n    set: { n: \"1\" }\n    next: check\n  - id: check\n    switch:\n      - when: \"false\"\n        goto: out\n      - default: spin\n  - id: out\n    end: escaped\n",
    );
    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    assert_eq!(
        (state.status, error(&state).kind.as_str()),
        (Status::Exception, "loop_guard")
    );
    let skip = crate::case::Resolution::Skip { to: "out".into() };
    resolve_with(&workflow, &mut state, skip, T0 + 1);
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.outcome.as_deref(), Some("escaped"));

    let mut state = start(&workflow, json!({}));
    wake(&workflow, &mut state, T0);
    resolve_with(
        &workflow,
        &mut state,
        crate::case::Resolution::Cancel,
        T0 + 1,
    );
    assert_eq!(
        (state.status, error(&state).kind.as_str()),
        (Status::Failed, "cancelled")
    );
}

#[test]
fn on_failure_takes_exception_or_fail_only() {
    let source = "name: t\nversion: \"1\"\non_failure: retry\ninput: { schema: { type: object } }\nsteps:\n  - id: done\n    end: ok\n";
    let diagnostics = crate::workflow::parse_str(source, "t.yaml", None).unwrap_err();
    assert_eq!(
        (diagnostics[0].code, diagnostics[0].line),
        ("invalid-value", 3)
    );
    assert_eq!(
        workflow_with("on_failure: exception\n", "  - id: done\n    end: ok\n").on_failure,
        crate::workflow::OnFailure::Exception
    );
}

// ---------------------------------------------------------------------------------------------
// Progressive trust at the gate.

const OPERATION: &str = r#"  - id: classify
    ai:
      task: classify
      labels: [refund, ignore]
      prompt: "Ticket: {{ input.text }}"
      route:
        - model: small
  - id: pay
    action:
      method: POST
      url: "http://127.0.0.1:9000/refund"
      body: { label: "${data.classify.output.label}", amount: "${input.amount}" }
      trust:
        policy: "data.classify.confidence >= 0.9"
        hard_limits: "input.amount > 1000"
        review_rates: { phase2: 1.0, phase3: 0.001 }
  - id: done
    end: paid
"#;

/// Runs a case of the operation workflow to its gate at `phase`; returns the transition.
fn to_gate(
    amount: i64,
    confidence: f64,
    phase: u8,
    case_id: &str,
) -> (Workflow, CaseState, Transition) {
    let wf = workflow(OPERATION);
    let mut state = CaseState::new(
        case_id.to_string(),
        &wf,
        1,
        json!({"text": "x", "amount": amount}),
        T0,
    );
    let phases: crate::trust::Phases = [("pay".to_string(), phase)].into_iter().collect();
    crate::case::advance_with(&wf, &mut state, Input::Wake, T0, 0.0, &phases);
    let outcome = AiOutcome::Proposed {
        output: json!({"label": "refund"}),
        confidence,
        confidence_method: "learner".into(),
        model: "small".into(),
        tier: 0,
        record: json!({}),
    };
    let t = crate::case::advance_with(
        &wf,
        &mut state,
        Input::AiResult {
            attempt: 1,
            outcome,
        },
        T0 + 1,
        0.0,
        &phases,
    );
    (wf, state, t)
}

#[test]
fn the_gate_asks_a_person_in_phase_1_and_under_hard_limits_and_follows_the_policy_in_phase_2() {
    let cases = [
        // (amount, confidence, phase, decision, reason)
        (10, 0.99, 1, "task", "phase_1"),
        (10, 0.99, 2, "auto", "policy_true"),
        (10, 0.50, 2, "task", "policy_false"),
        (5000, 0.99, 2, "task", "hard_limit"),
        (5000, 0.99, 4, "task", "hard_limit"),
        (10, 0.10, 3, "auto", "phase_3"),
        (10, 0.10, 4, "auto", "phase_4"),
    ];
    for (amount, confidence, phase, decision, reason) in cases {
        let label = format!("amount {amount} confidence {confidence} phase {phase}");
        let (_, state, t) = to_gate(amount, confidence, phase, "c1");
        let gate = event(&t, "trust.gate");
        assert_eq!(gate.data["operation"], "t/pay", "{label}");
        assert_eq!(
            (gate.data["decision"].as_str(), gate.data["reason"].as_str()),
            (Some(decision), Some(reason)),
            "{label}"
        );
        assert_eq!(gate.data["phase"], phase, "{label}");
        if decision == "task" {
            assert_eq!(state.status, Status::Waiting, "{label}");
            assert!(
                t.events
                    .iter()
                    .any(|e| e.kind == "task.created" && e.data["kind"] == "action"),
                "{label}"
            );
        } else {
            assert!(
                matches!(t.command, Command::Execute(_)),
                "{label}: {:?}",
                t.command
            );
        }
    }
}

#[test]
fn auto_approved_actions_are_sampled_for_review_reproducibly_and_only_once_per_visit() {
    // Phase 2 samples at 100% here: every auto-approved action gets a review task that does
    // not hold the case.
    let (wf, mut state, t) = to_gate(10, 0.99, 2, "c1");
    let review = t
        .events
        .iter()
        .find(|e| e.kind == "task.created")
        .expect("a review task");
    assert_eq!(review.data["kind"], "review");
    assert_eq!(review.data["task_id"], "c1.pay.review");
    assert_eq!(review.data["proposals"]["classify"]["confidence"], 0.99);
    assert!(matches!(t.command, Command::Execute(_)));
    // A retryable failure and the retry: the gate does not decide (or sample) again.
    let retry = respond(&wf, &mut state, 1, http(503, json!(null)), T0 + 2);
    let again = wake(&wf, &mut state, T0 + 10_000);
    for transition in [&retry, &again] {
        assert!(transition
            .events
            .iter()
            .all(|e| e.kind != "trust.gate" && e.kind != "task.created"));
    }
    // Phase 3 samples at 0.1%: the same case ids always get the same answer.
    let sampled: Vec<bool> = (0..200)
        .map(|i| {
            let (_, _, t) = to_gate(10, 0.5, 3, &format!("case-{i}"));
            event(&t, "trust.gate").data["review_sampled"]
                .as_bool()
                .unwrap()
        })
        .collect();
    let again: Vec<bool> = (0..200)
        .map(|i| {
            let (_, _, t) = to_gate(10, 0.5, 3, &format!("case-{i}"));
            event(&t, "trust.gate").data["review_sampled"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert_eq!(sampled, again);
    assert!(sampled.iter().filter(|s| **s).count() <= 3, "{sampled:?}");
}

#[test]
fn a_pre_approval_decision_is_journaled_as_evidence_for_the_operation() {
    let (wf, mut state, _) = to_gate(10, 0.5, 1, "c1");
    let task_id = state.task.as_ref().unwrap().id.clone();
    let decided = advance(
        &wf,
        &mut state,
        Input::TaskDecision {
            task_id,
            decider: crate::gate::Decider {
                user: "rita".into(),
                roles: vec!["reviewer".into()],
                approval_limit: None,
            },
            decision: crate::gate::TaskDecision::Correct {
                output: json!({"label": "ignore"}),
                step: None,
                comment: None,
            },
        },
        T0 + 5,
        0.0,
    );
    let reviewed = event(&decided, "outcome.reviewed");
    assert_eq!(reviewed.data["operation"], "t/pay");
    assert_eq!(
        (
            reviewed.data["source"].as_str(),
            reviewed.data["verdict"].as_str()
        ),
        (Some("pre"), Some("corrected"))
    );
    assert_eq!(reviewed.data["model"], "small");
    assert_eq!(reviewed.data["confidence"], 0.5);
    assert_eq!(reviewed.data["phase"], 1);
}
