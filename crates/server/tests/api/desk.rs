//! The exception desk end to end through the HTTP API: routing rules place exceptions in
//! queues with a priority, queues assign round-robin or least-loaded or let people claim,
//! ladders escalate on the engine's clock (moved by the test, never slept on), missed queue
//! SLAs are recorded, and the timers survive a restart because they live in the database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_core::desk::DeskConfig;
use keel_engine::{Engine, ManualClock, Options};
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
  - id: done
    end: { outcome: done }
"#;

/// Friday 2026-11-27 10:00 UTC.
const START_MS: i64 = 1_795_773_600_000;
const HOUR_MS: i64 = 3_600_000;

const LADDER: &str = r#"
queues:
  - name: ai-review
    members: [specialist, "user:olga"]
    assign: round_robin
    sla: 3h
    escalation:
      - { after: 2h, to: leads }
      - { after: 8h, to: "role:admin" }
  - name: leads
    members: ["user:lena"]
    assign: least_loaded
  - name: general
    members: [operator]
rules:
  - when: 'exception.kind == "budget_exhausted"'
    queue: general
  - when: 'exception.kind == "ai_failed" && exception.workflow == "triage"'
    queue: ai-review
    priority: high
default: { queue: general }
"#;

const CLAIMING: &str = r#"
queues:
  - name: triage
    members: [operator, specialist]
    escalation:
      - { after: 1h, to: seniors }
  - name: seniors
    members: ["user:sid"]
rules: []
default: { queue: triage, priority: low }
"#;

struct Desk {
    base: String,
    engine: Engine,
    clock: Arc<ManualClock>,
    client: reqwest::Client,
    tokens: BTreeMap<&'static str, String>,
    dir: tempfile::TempDir,
}

const USERS: &[(&str, &str)] = &[
    ("olga", "operator"),
    ("lena", "operator"),
    ("sam", "specialist"),
    ("sid", "specialist"),
    ("ada", "admin"),
    ("rita", "reviewer"),
];

async fn start_engine(dir: &std::path::Path, clock: Arc<ManualClock>, yaml: &str) -> Engine {
    let store = keel_store::Store::open(dir.join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let options = Options {
        data_dir: dir.to_path_buf(),
        node_id: "test-node".into(),
        desk: Arc::new(DeskConfig::parse(yaml, "exceptions.yaml").unwrap()),
        ..Default::default()
    };
    Engine::start(store, options, clock).await.unwrap()
}

async fn desk(yaml: &str) -> Desk {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine = start_engine(dir.path(), clock.clone(), yaml).await;
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    let mut tokens = BTreeMap::new();
    for (name, role) in USERS {
        let store = engine.store();
        let roles = vec![role.to_string()];
        assert!(keel_engine::tasks::add_user(store, name, &roles, None, 0)
            .await
            .unwrap());
        let (secret, _) = keel_engine::tokens::create_token(store, name, name, &[], None, 0)
            .await
            .unwrap();
        tokens.insert(*name, secret);
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
        clock,
        client: reqwest::Client::new(),
        tokens,
        dir,
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

    /// Submits `n` tickets and waits until each is parked on its `ai_failed` exception.
    async fn park(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let (status, body) = self
                .post(
                    "olga",
                    "/v1/workflows/triage/cases",
                    json!({"subject": format!("ticket {i}")}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let case_id = body["case_id"].as_str().unwrap().to_string();
            for _ in 0..500 {
                if self.engine.case(&case_id).await.unwrap().status == "exception" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            ids.push(format!("{case_id}.classify.1"));
        }
        ids
    }

    async fn exception(&self, id: &str) -> Value {
        let (status, body) = self.get("ada", &format!("/v1/exceptions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn act(&self, who: &str, id: &str, body: Value) -> (StatusCode, Value) {
        self.post(who, &format!("/v1/exceptions/{id}/resolution"), body)
            .await
    }

    /// Moves the engine's clock to `START_MS + ms` and runs one desk pass.
    async fn at(&self, ms: i64) -> keel_engine::desk::DeskPass {
        let now = self.clock.now_ms();
        self.clock.advance_ms(START_MS + ms - now);
        self.engine.run_desk_once().await.unwrap()
    }

    async fn journal_kinds(&self, id: &str) -> Vec<(String, Value)> {
        let case_id = id.split(".classify").next().unwrap();
        self.engine
            .timeline(case_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind.starts_with("exception."))
            .map(|row| (row.kind, serde_json::from_str(&row.data).unwrap()))
            .collect()
    }

    fn ids(list: &Value) -> BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }
}

use keel_engine::Clock;

#[tokio::test]
async fn exceptions_are_routed_assigned_round_robin_and_escalate_through_two_levels_on_the_clock() {
    let desk = desk(LADDER).await;
    let ids = desk.park(3).await;
    let pass = desk.at(0).await;
    assert_eq!((pass.routed, pass.assigned), (3, 3), "{pass:?}");

    // Routed by the second rule (the first does not match), with its priority and timers.
    let mut assignees = Vec::new();
    for id in &ids {
        let row = desk.exception(id).await;
        assert_eq!(row["queue"], "ai-review", "{row:#}");
        assert_eq!(row["priority"], "high");
        assert!(
            row["routed_by"].as_str().unwrap().starts_with("rule 2 "),
            "{row:#}"
        );
        let raised = row["raised_at_ms"].as_i64().unwrap();
        assert_eq!(row["due_ms"], raised + 3 * HOUR_MS);
        assert_eq!(row["next_escalation_ms"], raised + 2 * HOUR_MS);
        assert_eq!(row["level"], 0);
        assignees.push(row["assignee"].as_str().unwrap().to_string());
    }
    // Round-robin over the queue's active members (olga by name, sam and sid by role), in
    // name order: three exceptions, three different people.
    let distinct: BTreeSet<&String> = assignees.iter().collect();
    assert_eq!(distinct.len(), 3, "{assignees:?}");
    assert_eq!(
        distinct.into_iter().cloned().collect::<Vec<_>>(),
        vec!["olga", "sam", "sid"]
    );

    // "Mine" is what is assigned to me; the queue listing is most urgent first.
    let sams = ids[assignees.iter().position(|a| a == "sam").unwrap()].clone();
    let (_, mine) = desk.get("sam", "/v1/exceptions?mine=true").await;
    assert_eq!(Desk::ids(&mine), BTreeSet::from([sams.clone()]));
    let (_, queue) = desk.get("lena", "/v1/exceptions?queue=ai-review").await;
    assert_eq!(Desk::ids(&queue).len(), 3);
    let (_, queues) = desk.get("rita", "/v1/queues").await;
    let review = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "ai-review")
        .unwrap();
    assert_eq!(review["open"], 3);
    assert_eq!(review["assign"], "round_robin");
    assert_eq!(review["escalation"][1]["to"], "role:admin");

    // One minute before the first level: nothing moves.
    let pass = desk.at(2 * HOUR_MS - 60_000).await;
    assert_eq!(pass.escalated, 0);
    // The first level: to the queue `leads`, whose only member gets them all (least-loaded).
    let pass = desk.at(2 * HOUR_MS).await;
    assert_eq!(pass.escalated, 3, "{pass:?}");
    for id in &ids {
        let row = desk.exception(id).await;
        assert_eq!(row["level"], 1, "{row:#}");
        assert_eq!(row["queue"], "leads");
        assert_eq!(row["escalated_to"], "queue:leads");
        assert_eq!(row["assignee"], "lena");
        assert_eq!(
            row["next_escalation_ms"],
            row["raised_at_ms"].as_i64().unwrap() + 8 * HOUR_MS
        );
    }
    let (_, mine) = desk.get("sam", "/v1/exceptions?mine=true").await;
    assert!(Desk::ids(&mine).is_empty(), "{mine:#}");

    // The queue SLA (3h) passes: recorded once per exception.
    assert_eq!(desk.at(3 * HOUR_MS).await.sla_missed, 3);
    assert_eq!(desk.at(3 * HOUR_MS + 1).await.sla_missed, 0);
    assert_eq!(desk.exception(&ids[0]).await["sla_missed"], true);

    // The second level: to the role admin; the assignee keeps it, and admins see it as theirs.
    assert_eq!(desk.at(8 * HOUR_MS).await.escalated, 3);
    let row = desk.exception(&ids[0]).await;
    assert_eq!(
        (row["level"].as_i64(), row["escalated_to"].as_str()),
        (Some(2), Some("role:admin"))
    );
    assert_eq!(row["assignee"], "lena");
    assert!(row["next_escalation_ms"].is_null());
    let (_, mine) = desk.get("ada", "/v1/exceptions?mine=true").await;
    assert_eq!(Desk::ids(&mine).len(), 3);
    // The ladder is done: time passing does nothing more, and escalating by hand is refused.
    assert_eq!(desk.at(100 * HOUR_MS).await.escalated, 0);
    let (status, problem) = desk
        .act("ada", &ids[0], json!({"action": "escalate"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("no further escalation level"));

    // The journal tells the story in order, each change once.
    let kinds: Vec<String> = desk
        .journal_kinds(&ids[0])
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "exception.raised",
            "exception.pattern_new",
            "exception.routed",
            "exception.assigned",
            "exception.escalated",
            "exception.assigned",
            "exception.sla_missed",
            "exception.escalated",
        ]
    );
    let escalations: Vec<Value> = desk
        .journal_kinds(&ids[0])
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "exception.escalated")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(escalations[0]["reason"], "timer");
    assert_eq!(escalations[0]["to"], "queue:leads");
    assert_eq!(escalations[1]["level"], 2);
}

#[tokio::test]
async fn people_claim_from_a_queue_and_escalate_by_hand() {
    let desk = desk(CLAIMING).await;
    let ids = desk.park(1).await;
    let id = &ids[0];
    let pass = desk.at(0).await;
    assert_eq!((pass.routed, pass.assigned), (1, 0));
    let row = desk.exception(id).await;
    assert_eq!(
        (row["queue"].as_str(), row["priority"].as_str()),
        (Some("triage"), Some("low"))
    );
    assert!(row["assignee"].is_null());
    // Unassigned in a queue I work: mine (for every member), not for others.
    let (_, mine) = desk.get("sam", "/v1/exceptions?mine=true").await;
    assert!(Desk::ids(&mine).contains(id));

    let (status, claimed) = desk.act("olga", id, json!({"action": "claim"})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["action"], "claim");
    assert_eq!(desk.exception(id).await["assignee"], "olga");
    // A second claim loses, and says who has it.
    let (status, problem) = desk.act("sam", id, json!({"action": "claim"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("olga"),
        "{problem}"
    );
    // Reviewers do not work exceptions (Cedar refuses them before the desk).
    let (status, _) = desk.act("rita", id, json!({"action": "claim"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, mine) = desk.get("sam", "/v1/exceptions?mine=true").await;
    assert!(!Desk::ids(&mine).contains(id));

    // Escalating by hand moves it to the next queue now, unassigned there.
    let (status, escalated) = desk
        .act(
            "olga",
            id,
            json!({"action": "escalate", "note": "needs a senior"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{escalated}");
    let row = desk.exception(id).await;
    assert_eq!(
        (row["queue"].as_str(), row["level"].as_i64()),
        (Some("seniors"), Some(1))
    );
    assert!(row["assignee"].is_null());
    let entry = desk
        .journal_kinds(id)
        .await
        .into_iter()
        .find(|(kind, _)| kind == "exception.escalated")
        .unwrap()
        .1;
    assert_eq!(
        (entry["reason"].as_str(), entry["by"].as_str()),
        (Some("manual"), Some("olga"))
    );
    assert_eq!(entry["note"], "needs a senior");
    // sid works `seniors` by name and may now claim it; the timer has nothing left to do.
    let (status, _) = desk.act("sid", id, json!({"action": "claim"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(desk.at(5 * HOUR_MS).await.escalated, 0);
    // An exception that holds its case is not closed by hand: the case must move.
    let (status, problem) = desk
        .act("sid", id, json!({"action": "close", "note": "done"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("holds its case"));
    // The case is still parked; the desk never touched it.
    let case_id = id.split(".classify").next().unwrap();
    assert_eq!(desk.engine.case(case_id).await.unwrap().status, "exception");
}

#[tokio::test]
async fn escalation_timers_survive_a_restart() {
    let desk = desk(CLAIMING).await;
    let ids = desk.park(2).await;
    assert_eq!(desk.at(0).await.routed, 2);
    desk.engine
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    // A new engine on the same database, after the first level fell due while it was down.
    let clock = Arc::new(ManualClock::new(START_MS + 90 * 60_000));
    let engine = start_engine(desk.dir.path(), clock, CLAIMING).await;
    let pass = engine.run_desk_once().await.unwrap();
    assert_eq!((pass.routed, pass.escalated), (0, 2), "{pass:?}");
    for id in &ids {
        let row = engine.exception(id).await.unwrap().unwrap();
        assert_eq!((row.queue.as_deref(), row.level), (Some("seniors"), 1));
    }
    engine.shutdown(std::time::Duration::from_secs(1)).await;
}

const CALENDAR_REFUND: &str = r#"
name: refund-cal
version: "1"
calendar:
  time_zone: Europe/Berlin
  working_days: [mon, tue, wed, thu, fri]
  hours: ["09:00-17:00"]
  holidays: ["2026-03-30"]
sla: { business: 4h }
input: { schema: { type: object } }
steps:
  - id: sign_off
    sla: { business: 10h }
    approval:
      title: Refund the customer
      roles: [reviewer]
      due: { business: 4h }
  - id: done
    end: refunded
"#;

/// Friday 2026-03-27 15:00 in Berlin (CET, UTC+1). Two working hours remain that Friday;
/// Monday the 30th is a holiday; clocks go forward on Sunday the 29th, so Tuesday is CEST.
const FRIDAY_15_BERLIN_MS: i64 = 1_774_620_000_000;
/// Tuesday 2026-03-31 11:00 CEST: 2h on Friday + 2h on Tuesday.
const TUESDAY_11_BERLIN_MS: i64 = 1_774_947_600_000;
/// Tuesday 2026-03-31 17:00 CEST: 2h on Friday + 8h on Tuesday.
const TUESDAY_17_BERLIN_MS: i64 = 1_774_969_200_000;

#[tokio::test]
async fn business_deadlines_skip_a_weekend_a_holiday_and_keep_office_hours_across_daylight_saving()
{
    let desk = desk(CLAIMING).await;
    desk.clock.advance_ms(FRIDAY_15_BERLIN_MS - START_MS);
    desk.engine
        .deploy_source(CALENDAR_REFUND, "refund-cal.yaml")
        .await
        .unwrap();
    let (status, body) = desk
        .post("olga", "/v1/workflows/refund-cal/cases", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let case_id = body["case_id"].as_str().unwrap().to_string();
    let mut task = Value::Null;
    for _ in 0..500 {
        let (_, tasks) = desk.get("rita", "/v1/tasks?workflow=refund-cal").await;
        if let Some(first) = tasks.as_array().and_then(|t| t.first()) {
            task = first.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The task's `due: { business: 4h }` and the workflow's `sla: { business: 4h }`.
    assert_eq!(task["due_at_ms"], TUESDAY_11_BERLIN_MS, "{task:#}");
    let (_, case) = desk.get("olga", &format!("/v1/cases/{case_id}")).await;
    assert_eq!(
        case["sla_due_at"], "2026-03-31T09:00:00.000Z",
        "the earlier of the case SLA (Tue 11:00 CEST) and the step SLA (Tue 17:00 CEST): {case:#}"
    );
    // The engine's clock reaches the case deadline: the breach is recorded and, being an
    // exception of kind `sla_breach`, routed to a queue like any other.
    desk.clock
        .advance_ms(TUESDAY_11_BERLIN_MS - FRIDAY_15_BERLIN_MS);
    let mut breaches = Vec::new();
    for _ in 0..500 {
        let (_, list) = desk.get("olga", "/v1/exceptions?kind=sla_breach").await;
        breaches = list.as_array().unwrap().clone();
        if !breaches.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(breaches.len(), 1, "{breaches:#?}");
    assert_eq!(breaches[0]["case_id"], case_id.as_str());
    assert_eq!(breaches[0]["detail"]["deadline_ms"], TUESDAY_11_BERLIN_MS);
    desk.engine.run_desk_once().await.unwrap();
    // The breach does not hold the case: it is closed with a note on what was done.
    let breach_id = breaches[0]["id"].as_str().unwrap();
    let (status, _) = desk
        .act("olga", breach_id, json!({"action": "close"}))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a note is required"
    );
    let (status, closed) = desk
        .act(
            "olga",
            breach_id,
            json!({"action": "close", "note": "customer called and was refunded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    let row = desk.exception(breach_id).await;
    assert_eq!(
        (row["status"].as_str(), row["resolved_by"].as_str()),
        (Some("resolved"), Some("olga"))
    );
    assert_eq!(
        row["resolution"]["note"],
        "customer called and was refunded"
    );
    let (status, _) = desk
        .act(
            "olga",
            breach_id,
            json!({"action": "close", "note": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, case) = desk.get("olga", &format!("/v1/cases/{case_id}")).await;
    assert_eq!(case["sla_breached"], true);
    assert_eq!(
        case["sla_due_at"],
        serde_json::to_value(keel_engine::rfc3339_ms(TUESDAY_17_BERLIN_MS)).unwrap(),
        "the step's own business-time SLA is next"
    );
}
