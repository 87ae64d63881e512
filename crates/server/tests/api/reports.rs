//! Reports through the HTTP API over a deterministic month: November 2026 of one workflow,
//! written through the store's real write paths (`commit` with its projections, model-call
//! rows, a trust phase change, a drift alert) at fixed times, read by an engine on a
//! `ManualClock`. Snapshots cover the JSON and Markdown reviews and the cost report; the
//! HTML review is checked as one well-formed, self-contained file with its four charts and
//! every user string escaped; the roles that may read reports get them, the others 403.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::{canonical_data, Engine, ManualClock, Options};
use keel_server::ServerOptions;
use keel_store::{AiCallRow, CaseWrite, NewEntry, PhaseChange, WriteMode};
use reqwest::StatusCode;
use serde_json::{json, Value};

const REFUNDS: &str = r#"
name: refunds
version: "1"
change: { author: gail }
input: { schema: { type: object } }
steps:
  - id: judge
    ai:
      task: classify
      labels: [pay, hold]
      prompt: "{{ input.text }}"
      route:
        - model: small
          accept_when: "confidence >= 0.8"
        - model: large
  - id: pay
    action:
      method: POST
      url: "http://127.0.0.1:9/refunds"
      body: { decision: "${ data.judge.output.label }" }
      approval: { roles: [reviewer] }
      trust: { phase: 1, policy: "true", promotion: { min_reviews: 10, window: 30d, target_agreement: { phase2: 0.6, phase3: 0.7, phase4: 0.9 } }, demotion: { target_error_rate: 0.25 } }
  - id: done
    end: paid
"#;

const KEEL_TOML: &str = r#"
[models.small]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "small"
[models.small.price]
input = 0.5
output = 1.5
effective = "2026-01-01"

[models.large]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "large"
[models.large.price]
input = 10.0
output = 30.0
effective = "2026-01-01"

[budgets.total]
monthly_usd = 0.01

[budgets.workflows.refunds]
monthly_usd = 0.5
"#;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// 2026-10-20T10:00:00Z: the workflow is deployed (its operation starts in phase 1).
const DEPLOYED_MS: i64 = 1_792_490_400_000;
/// 2026-11-01T00:00:00Z.
const NOVEMBER_MS: i64 = 1_793_491_200_000;
/// 2026-12-02T00:00:00Z: when the reports are asked for.
const ASKED_MS: i64 = 1_796_169_600_000;
/// A governor's reason with markup in it: the HTML must show it, not run it.
const HOSTILE_REASON: &str = "<script>alert('x')</script> & \"steady\"";

struct Reports {
    base: String,
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn at(ms: i64) -> String {
    keel_engine::rfc3339_ms(ms)
}

fn entry(ms: i64, kind: &str, case: Option<&str>, step: Option<&str>, data: Value) -> NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: at(ms),
        kind: kind.into(),
        actor_type: "system".into(),
        actor_id: "engine".into(),
        case_id: case.map(str::to_string),
        workflow: Some("refunds".into()),
        step: step.map(str::to_string),
        data,
        data_sha256,
    }
}

fn call(ms: i64, case: &str, model: &str, nano: i64, latency_ms: i64) -> AiCallRow {
    AiCallRow {
        at_ms: ms,
        day: at(ms)[..10].to_string(),
        source: "step".into(),
        workflow: Some("refunds".into()),
        step: Some("judge".into()),
        case_id: Some(case.into()),
        model: model.into(),
        provider: "openai".into(),
        status: "ok".into(),
        input_tokens: 1_000,
        output_tokens: 20,
        cost_nano: Some(nano),
        latency_ms,
        attempts: 1,
        ..AiCallRow::default()
    }
}

/// Case `i` (0..24), created on November `i + 1` at 10:00: its insert with every journal
/// entry, its final update, and its model calls.
fn month_case(i: i64) -> (CaseWrite, CaseWrite, Vec<AiCallRow>) {
    let id = format!("case-{i:02}");
    let created = NOVEMBER_MS + i * DAY_MS + 10 * HOUR_MS;
    let tier = if i % 4 == 3 { 1 } else { 0 };
    let (model, confidence) = if tier == 0 {
        ("small", 0.9)
    } else {
        ("large", 0.7 + i as f64 / 100.0)
    };
    let mut calls = vec![call(created + 400, &id, "small", 100_000, 400 + 10 * i)];
    if tier == 1 {
        calls.push(call(
            created + 1_400,
            &id,
            "large",
            2_000_000 + 10_000 * i,
            900 + 10 * i,
        ));
    }
    let cost: i64 = calls.iter().filter_map(|c| c.cost_nano).sum();
    let proposed = created + 2_000;
    let phase = if created < NOVEMBER_MS + 14 * DAY_MS {
        1
    } else {
        2
    };
    let auto = phase == 2 && i % 2 == 0;
    let sampled = auto && i % 4 == 0;
    let c = Some(id.as_str());
    let mut entries = vec![
        entry(
            created,
            "case.created",
            c,
            None,
            json!({"input": {"text": format!("refund request {i}")}}),
        ),
        entry(
            proposed,
            "ai.proposed",
            c,
            Some("judge"),
            json!({"attempt": 1,
            "cascade": {"attempts": [], "cost_known": true, "cost_usd": cost as f64 / 1e9, "path": ["small", model]},
            "proposal": {"confidence": confidence, "model": model, "output": {"label": "pay"}, "tier": tier}}),
        ),
        entry(
            proposed,
            "trust.gate",
            c,
            Some("pay"),
            json!({"operation": "refunds/pay", "phase": phase,
            "decision": if auto { "auto" } else { "task" }, "reason": "test", "review_sampled": sampled, "review_rate": 0.5}),
        ),
    ];
    let verdict = match i {
        5 | 17 => "corrected",
        22 => "rejected",
        _ => "agree",
    };
    let mut end = created + 5_000 + 100 * i;
    if !auto {
        let task = format!("{id}.pay.1");
        end = created + 30 * 60_000 + i * 60_000;
        entries.push(entry(proposed, "task.created", c, Some("pay"), json!({"task_id": task, "kind": "action", "title": "Approve", "required": 1, "roles": ["reviewer"]})));
        entries.push(entry(
            end - 1_000,
            "task.completed",
            c,
            Some("pay"),
            json!({"task_id": task, "decision": "approve"}),
        ));
        entries.push(entry(end - 1_000, "outcome.reviewed", c, Some("pay"), json!({"operation": "refunds/pay",
            "task_id": task, "source": "pre", "verdict": verdict, "phase": phase, "model": model, "confidence": confidence})));
    }
    if sampled {
        let task = format!("{id}.pay.review");
        entries.push(entry(end + 2 * HOUR_MS, "outcome.reviewed", c, Some("pay"), json!({"operation": "refunds/pay",
            "task_id": task, "source": "post", "verdict": verdict, "phase": phase, "model": model, "confidence": confidence})));
    }
    let status = match i {
        7 => "failed",
        20 => "exception",
        _ => "completed",
    };
    if i == 10 || i == 20 {
        let exception = format!("{id}.pay.1");
        entries.push(entry(
            end,
            "exception.raised",
            c,
            Some("pay"),
            json!({"exception_id": exception, "kind": "action_failed",
            "message": format!("POST https://pay.example/r/{i} answered 503 after 3 attempts")}),
        ));
        if i == 10 {
            entries.push(entry(
                end + 2 * HOUR_MS,
                "exception.resolved",
                c,
                Some("pay"),
                json!({"exception_id": exception, "action": "retry", "by": "opal"}),
            ));
            end += 2 * HOUR_MS + 1_000;
        }
    }
    if i == 3 {
        entries.push(entry(
            created + 4 * HOUR_MS,
            "sla.breached",
            c,
            None,
            json!({"scope": "case", "deadline_ms": created + 4 * HOUR_MS}),
        ));
    }
    entries.push(entry(
        end,
        if status == "failed" {
            "case.failed"
        } else {
            "case.completed"
        },
        c,
        None,
        json!({}),
    ));
    let insert = CaseWrite {
        case_id: id.clone(),
        workflow: "refunds".into(),
        workflow_version: 1,
        mode: WriteMode::Insert {
            idempotency_key: None,
        },
        status: "running".into(),
        current_step: None,
        state: "{}".into(),
        runnable_at_ms: None,
        lease_owner: None,
        lease_until_ms: None,
        sla_due_ms: None,
        sla_breached: false,
        now_ms: created,
        entries,
    };
    let update = CaseWrite {
        mode: WriteMode::Update {
            expected_version: 1,
        },
        status: status.into(),
        sla_breached: i == 3,
        now_ms: end,
        entries: Vec::new(),
        ..insert.clone()
    };
    (insert, update, calls)
}

/// The engine and API over November 2026, asked on December 2.
async fn reports() -> Reports {
    reports_on(None).await
}

/// The same month on the store at `url` (a fresh SQLite file when `None`).
async fn reports_on(url: Option<&str>) -> Reports {
    let dir = tempfile::tempdir().unwrap();
    let config = keel_ai::config::Config::parse("keel.toml", KEEL_TOML).unwrap();
    let runtime = keel_ai::cascade::Runtime::new(config, reqwest::Client::new());
    let sqlite = dir.path().join("keel.db").display().to_string();
    let store = keel_store::Store::open(url.unwrap_or(&sqlite))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(DEPLOYED_MS));
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ai: Some(Arc::new(runtime)),
        trust_interval: Duration::from_secs(3_600),
        drift_interval: Duration::from_secs(3_600),
        ..Default::default()
    };
    let engine = Engine::start(store.clone(), options, clock.clone())
        .await
        .unwrap();
    engine.deploy_source(REFUNDS, "refunds.yaml").await.unwrap();
    for i in 0..24 {
        let (insert, update, calls) = month_case(i);
        store.commit(&[insert]).await.unwrap();
        store.commit(&[update]).await.unwrap();
        store.record_ai_calls(&calls, &[]).await.unwrap();
    }
    let gateway = AiCallRow {
        source: "gateway".into(),
        caller: Some("app".into()),
        workflow: None,
        step: None,
        case_id: None,
        ..call(NOVEMBER_MS + 2 * DAY_MS, "", "small", 50_000, 300)
    };
    let unknown = AiCallRow {
        cost_nano: None,
        ..gateway.clone()
    };
    store
        .record_ai_calls(&[gateway, unknown], &[])
        .await
        .unwrap();
    let promoted = NOVEMBER_MS + 14 * DAY_MS;
    let change = PhaseChange {
        operation: "refunds/pay".into(),
        workflow: "refunds".into(),
        step: "pay".into(),
        expected: Some(1),
        phase: 2,
        at_ms: promoted,
        promoted: true,
        workflow_version: Some(1),
        config_sha256: None,
    };
    let mut promotion = entry(
        promoted,
        "trust.promoted",
        None,
        Some("pay"),
        json!({"operation": "refunds/pay",
        "from_phase": 1, "to_phase": 2, "by": "gus", "reason": HOSTILE_REASON,
        "evidence": {"reviews": 14, "agreements": 13, "wilson_low": 0.685}}),
    );
    promotion.actor_type = "user".into();
    promotion.actor_id = "gus".into();
    assert!(store.trust_set_phase(&change, &promotion).await.unwrap());
    let drift = entry(
        NOVEMBER_MS + 19 * DAY_MS,
        "drift.alert",
        None,
        None,
        json!({"feature": "amount <b>", "method": "ks", "value": 0.31, "threshold": 0.05}),
    );
    store.append(&[drift]).await.unwrap();
    clock.advance_ms(ASKED_MS - DEPLOYED_MS);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    Reports {
        base,
        engine,
        _dir: dir,
    }
}

impl Reports {
    async fn get_as(&self, role: &str, path: &str) -> reqwest::Response {
        let client = crate::client_as(&self.engine, &format!("{role}-user"), &[role]).await;
        client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_monthly_review_as_json_matches_its_snapshot_and_shape() {
    let app = reports().await;
    let response = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let report: Value = response.json().await.unwrap();
    check_shape(&report);
    // Figures worked out by hand from the data set.
    let workflow = &report["workflows"][0];
    assert_eq!(workflow["volume"]["created"], 24);
    assert_eq!(workflow["sla"]["breached"], 1);
    let operation = &workflow["operations"][0];
    assert_eq!(operation["phase"]["at_start"], 1);
    assert_eq!(operation["phase"]["at_end"], 2);
    assert_eq!(
        operation["decisions"],
        json!({"auto": 5, "task": 19, "sampled_for_review": 2})
    );
    let cascade = &report["costs"]["cascades"][0];
    assert_eq!(cascade["tiers"][0]["settled"], 18);
    assert_eq!(cascade["tiers"][1]["settled"], 6);
    assert_eq!(cascade["baseline_method"], "observed");
    // Phase 2 now; 19 of 21 reviews agreed: Wilson lower bound 71.1% ≥ phase 3's 70%.
    let promote = &report["recommendations"][0];
    assert_eq!(
        (promote["kind"].as_str(), promote["subject"].as_str()),
        (Some("promote"), Some("refunds/pay"))
    );
    assert_eq!(promote["evidence"]["reviews"], 21);
    insta::assert_json_snapshot!("monthly_review", report);
}

/// Required keys and their JSON types, for every element of every list.
fn check_shape(report: &Value) {
    fn has(value: &Value, path: &str, keys: &[(&str, &str)]) {
        for (key, kind) in keys {
            let field = &value[*key];
            let ok = match *kind {
                "string" => field.is_string(),
                "number" => field.is_number(),
                "integer" => field.is_i64() || field.is_u64(),
                "array" => field.is_array(),
                "object" => field.is_object(),
                "number?" => field.is_number() || field.is_null(),
                "integer?" => field.is_i64() || field.is_null(),
                _ => false,
            };
            assert!(ok, "{path}.{key} should be {kind}: {field}");
        }
    }
    has(
        report,
        "$",
        &[
            ("month", "string"),
            ("period", "object"),
            ("generated_at", "string"),
            ("summary", "object"),
            ("workflows", "array"),
            ("recommendations", "array"),
            ("costs", "object"),
            ("methods", "object"),
        ],
    );
    has(
        &report["summary"],
        "summary",
        &[
            ("cases", "integer"),
            ("automation_rate", "number?"),
            ("sla_compliance", "number?"),
            ("cost_usd", "number"),
            ("saved_usd", "number?"),
            ("agreement", "number?"),
        ],
    );
    for (w, workflow) in report["workflows"].as_array().unwrap().iter().enumerate() {
        let path = format!("workflows[{w}]");
        has(
            workflow,
            &path,
            &[
                ("workflow", "string"),
                ("volume", "object"),
                ("automation", "object"),
                ("operations", "array"),
                ("cost", "object"),
                ("latency", "object"),
                ("sla", "object"),
                ("exceptions", "object"),
                ("drift_alerts", "array"),
            ],
        );
        has(
            &workflow["latency"]["case_duration_ms"],
            &path,
            &[
                ("count", "integer"),
                ("p50", "integer?"),
                ("p95", "integer?"),
            ],
        );
        for operation in workflow["operations"].as_array().unwrap() {
            has(
                operation,
                &path,
                &[
                    ("operation", "string"),
                    ("phase", "object"),
                    ("accuracy", "object"),
                    ("accuracy_by_model", "array"),
                    ("accuracy_by_day", "array"),
                    ("calibration_by_model", "array"),
                ],
            );
            has(
                &operation["accuracy"],
                &path,
                &[
                    ("reviews", "integer"),
                    ("agreement", "number?"),
                    ("wilson_low", "number?"),
                    ("wilson_high", "number?"),
                ],
            );
            let calibration = &operation["calibration"];
            has(
                calibration,
                &path,
                &[("ece", "number"), ("pairs", "integer"), ("bins", "array")],
            );
            for bin in calibration["bins"].as_array().unwrap() {
                has(
                    bin,
                    &path,
                    &[
                        ("count", "integer"),
                        ("mean_confidence", "number"),
                        ("accuracy", "number"),
                    ],
                );
            }
            for change in operation["phase"]["changes"].as_array().unwrap() {
                has(
                    change,
                    &path,
                    &[
                        ("at", "string"),
                        ("kind", "string"),
                        ("by", "string"),
                        ("to_phase", "integer?"),
                    ],
                );
            }
        }
    }
    for recommendation in report["recommendations"].as_array().unwrap() {
        has(
            recommendation,
            "recommendations[]",
            &[
                ("kind", "string"),
                ("workflow", "string"),
                ("subject", "string"),
                ("message", "string"),
            ],
        );
    }
    let costs = &report["costs"];
    has(
        costs,
        "costs",
        &[
            ("total_usd", "number"),
            ("per_day", "array"),
            ("per_model", "array"),
            ("per_workflow", "array"),
            ("per_operation", "array"),
            ("cascades", "array"),
            ("savings_estimator", "string"),
            ("budget", "object"),
        ],
    );
    for cascade in costs["cascades"].as_array().unwrap() {
        has(
            cascade,
            "cascades[]",
            &[
                ("workflow", "string"),
                ("step", "string"),
                ("route", "array"),
                ("tiers", "array"),
                ("saved_usd", "number?"),
                ("net_saved_usd", "number?"),
                ("baseline_method", "string"),
            ],
        );
        for tier in cascade["tiers"].as_array().unwrap() {
            has(
                tier,
                "tiers[]",
                &[
                    ("tier", "integer"),
                    ("model", "string"),
                    ("settled", "integer"),
                    ("share", "number"),
                    ("reached", "integer"),
                ],
            );
        }
    }
    has(
        &costs["budget"],
        "budget",
        &[
            ("month", "string"),
            ("month_to_date_usd", "number"),
            ("projected_usd", "number"),
            ("status", "string"),
        ],
    );
}

#[tokio::test]
async fn the_monthly_review_as_markdown_matches_its_snapshot() {
    let app = reports().await;
    let response = app
        .get_as("governor", "/v1/reports/monthly?month=2026-11&format=md")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    let markdown = response.text().await.unwrap();
    assert!(!markdown.contains("<script"), "markup is escaped");
    insta::assert_snapshot!("monthly_review_markdown", markdown);
}

#[tokio::test]
async fn the_cost_report_matches_its_snapshot_and_states_its_estimator() {
    let app = reports().await;
    let response = app
        .get_as(
            "operator",
            "/v1/reports/costs?from=2026-11-01&to=2026-11-30",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    let by_month: Value = app
        .get_as("operator", "/v1/reports/costs?month=2026-11")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report, by_month, "a month is its first to last day");
    // 18 proposals settled at tier 0 for 0.0001 USD each, against the mean observed cost of a
    // large call (2,000,000 + 10,000 × i nano-USD for i = 3, 7, …, 23: mean 0.00213).
    let cascade = &report["cascades"][0];
    let baseline = cascade["baseline_usd_per_proposal"].as_f64().unwrap();
    assert!((baseline - 0.00213).abs() < 1e-12, "{baseline}");
    let saved = cascade["saved_usd"].as_f64().unwrap();
    assert!((saved - 18.0 * (0.00213 - 0.0001)).abs() < 1e-9, "{saved}");
    assert!(report["savings_estimator"]
        .as_str()
        .unwrap()
        .contains("last tier"));
    assert_eq!(report["budget"]["status"], "over", "{:#}", report["budget"]);
    assert_eq!(report["cost_unknown_calls"], 1);
    insta::assert_json_snapshot!("cost_report", report);
}

#[tokio::test]
async fn bad_report_parameters_are_problems() {
    let app = reports().await;
    for path in [
        "/v1/reports/monthly?month=2026-13",
        "/v1/reports/monthly?month=november",
        "/v1/reports/monthly?month=2026-11&format=pdf",
        "/v1/reports/costs?from=2026-11-05&to=2026-11-01",
        "/v1/reports/costs?from=2020-01-01&to=2026-11-01",
        "/v1/reports/costs?month=2026-11&from=2026-11-01",
        "/v1/reports/costs?from=yesterday",
    ] {
        let response = app.get_as("admin", path).await;
        crate::expect_problem(response, StatusCode::BAD_REQUEST, "invalid-parameter").await;
    }
}

#[tokio::test]
async fn reports_are_for_admins_operators_governors_and_auditors() {
    let app = reports().await;
    for role in ["admin", "operator", "governor", "auditor"] {
        for path in ["/v1/reports/costs", "/v1/reports/monthly?format=html"] {
            assert_eq!(
                app.get_as(role, path).await.status(),
                StatusCode::OK,
                "{role} {path}"
            );
        }
    }
    for role in ["reviewer", "specialist", "gateway"] {
        assert_eq!(
            app.get_as(role, "/v1/reports/monthly").await.status(),
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let anonymous = reqwest::get(format!("{}/v1/reports/costs", app.base))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_html_review_is_one_well_formed_file_with_four_charts() {
    let app = reports().await;
    let response = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11&format=html")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let html = response.text().await.unwrap();
    well_formed(&html);
    assert_eq!(html.matches("<html").count(), 1);
    assert!(html.starts_with("<!DOCTYPE html>"));
    for needle in [
        "src=", "href=", "http://", "https://", "<script", "<link", "@import", "url(",
    ] {
        assert!(
            !html.contains(needle),
            "the page refers outside itself or runs code: {needle}"
        );
    }
    assert_eq!(html.matches("<svg").count(), 4);
    for title in [
        "Trust phase over time",
        "Accuracy over time",
        "Cost by model",
        "Reliability diagram",
    ] {
        assert!(
            html.contains(&format!("-title\">{title}</title>")),
            "chart {title}"
        );
    }
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;steady&quot;"),
        "the reason is shown escaped"
    );
    assert!(
        html.contains("amount &lt;b&gt;"),
        "the drift feature is escaped"
    );
    assert!(html.contains("<polyline"), "the charts have series");
}

/// Tags balance (void elements excepted), attributes are quoted, and no raw `<` or `&`
/// appears in text.
fn well_formed(html: &str) {
    const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        for (index, _) in text.match_indices('&') {
            let entity = &text[index..text.len().min(index + 8)];
            assert!(entity.contains(';'), "bare & in text near {entity:?}");
        }
        let close = rest[open..]
            .find('>')
            .map(|c| open + c)
            .expect("unclosed <");
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('!') {
            continue;
        }
        assert!(!tag.contains('<'), "a < inside a tag: {tag}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().unwrap_or_default();
            assert_eq!(open, name.trim(), "</{name}> closes <{open}>");
            continue;
        }
        let name = tag
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        stack.push(name);
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}

/// The reports are computed by the database's aggregates: PostgreSQL must give the very same
/// reports as SQLite for the same month (the SQLite ones are pinned by the snapshots above).
#[tokio::test]
async fn postgresql_gives_the_same_reports_as_sqlite() {
    let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") else {
        eprintln!("postgresql_gives_the_same_reports_as_sqlite: skipped (set KEEL_TEST_DATABASE_URL to run it)");
        return;
    };
    let name = format!("keel_reports_{}", std::process::id());
    keel_store::Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
    keel_store::Store::admin_execute(&admin, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0.to_string();
    let postgres = reports_on(Some(&format!("{base}/{name}"))).await;
    let sqlite = reports().await;
    for path in [
        "/v1/reports/monthly?month=2026-11",
        "/v1/reports/monthly?month=2026-11&format=md",
        "/v1/reports/costs?month=2026-11",
        "/v1/reports/costs?from=2026-11-03&to=2026-11-20",
    ] {
        let on_sqlite = sqlite.get_as("auditor", path).await;
        let on_postgres = postgres.get_as("auditor", path).await;
        assert_eq!(on_sqlite.status(), StatusCode::OK, "{path}");
        assert_eq!(on_postgres.status(), StatusCode::OK, "{path}");
        let (a, b) = (
            on_sqlite.text().await.unwrap(),
            on_postgres.text().await.unwrap(),
        );
        assert!(
            a.len() > 500,
            "{path}: a real report, not an empty one: {a}"
        );
        if path.contains("format=md") {
            assert_eq!(a, b, "{path}");
        } else {
            let (a, b): (Value, Value) = (
                serde_json::from_str(&a).unwrap(),
                serde_json::from_str(&b).unwrap(),
            );
            assert_eq!(
                first_difference(&a, &b, String::new()),
                None,
                "{path}: SQLite, then PostgreSQL"
            );
        }
    }
    postgres.engine.shutdown(Duration::from_secs(2)).await;
    keel_store::Store::admin_execute(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
}

/// The JSON pointer of the first place `a` and `b` differ, with both values there (numbers
/// equal to nine significant digits are the same).
fn first_difference(a: &Value, b: &Value, at: String) -> Option<(String, Value, Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (left, right) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                first_difference(left, right, format!("{at}/{key}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (left, right))| first_difference(left, right, format!("{at}/{i}"))),
        // Sums of floating-point costs depend on the order the database adds them in.
        (Value::Number(x), Value::Number(y))
            if (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()
                <= 1e-12_f64.max(1e-9 * x.as_f64().unwrap().abs()) =>
        {
            None
        }
        _ if a == b => None,
        _ => Some((at, a.clone(), b.clone())),
    }
}

/// Promotion eligibility in a report is the engine's test over the operation's window, not
/// the month's reviews: on December 2 the December review has no reviews of its own, yet
/// the 30-day window still holds November's, as the engine would see them now.
#[tokio::test]
async fn promotion_standing_uses_the_operations_window_as_of_the_report() {
    let app = reports().await;
    let november: Value = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11")
        .await
        .json()
        .await
        .unwrap();
    let december: Value = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-12")
        .await
        .json()
        .await
        .unwrap();
    let standing = |report: &Value| {
        report["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["operations"].as_array().unwrap().iter())
            .find(|o| o["operation"] == "refunds/pay")
            .cloned()
            .unwrap_or_else(|| panic!("no refunds/pay in {report:#}"))
    };
    let (nov, dec) = (standing(&november), standing(&december));
    assert_eq!(nov["promotion"]["as_of"], "2026-12-01T00:00:00.000Z");
    assert_eq!(nov["promotion"]["reviews"], 21);
    assert_eq!(dec["accuracy"]["reviews"], 0, "no reviews in December");
    assert_eq!(dec["promotion"]["as_of"], "2026-12-02T00:00:00.000Z");
    let in_window = dec["promotion"]["reviews"].as_i64().unwrap();
    // The window (Nov 2 – Dec 2) drops what Nov 1 had, and keeps the rest.
    assert!((1..=21).contains(&in_window), "{dec:#}");
    assert_eq!(
        dec["promotion"]["eligible"],
        dec["promotion"]["wilson_low"].as_f64().unwrap() >= 0.7 && in_window >= 10
    );
}

// ------------------------------------------------------------------ a month of trust events

/// November 2026 of `refunds/pay` with everything the review must tell: a promotion to 2 and
/// one to 3, a learner challenger that failed its non-inferiority test (a poisoned update, kept
/// and not served), an SPRT demotion 3 → 2 and a drift demotion 2 → 1 with their retro-review
/// counts, reviews of two models (the local learner's tagged with its version, older ones not)
/// and change control: one version approved, one rejected, one live unreviewed.
async fn eventful_month() -> Reports {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("keel.db").display().to_string();
    let store = keel_store::Store::open(&sqlite).await.unwrap();
    let clock = Arc::new(ManualClock::new(DEPLOYED_MS));
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        trust_interval: Duration::from_secs(3_600),
        drift_interval: Duration::from_secs(3_600),
        ..Default::default()
    };
    let engine = Engine::start(store.clone(), options, clock.clone())
        .await
        .unwrap();
    engine.deploy_source(REFUNDS, "refunds.yaml").await.unwrap();
    let day = |d: i64| NOVEMBER_MS + (d - 1) * DAY_MS + 9 * HOUR_MS;
    // Reviewed outcomes: (day, model, learner version, verdict).
    let outcomes: [(i64, &str, Option<i64>, &str); 12] = [
        (2, "local", None, "agree"),
        (2, "local", None, "corrected"),
        (4, "local", Some(1), "agree"),
        (5, "local", Some(1), "agree"),
        (6, "local", Some(1), "agree"),
        (9, "local", Some(1), "agree"),
        (14, "local", Some(1), "corrected"),
        (14, "local", Some(1), "rejected"),
        (16, "small", None, "agree"),
        (17, "small", None, "agree"),
        (18, "small", None, "agree"),
        (21, "small", None, "corrected"),
    ];
    for (i, (d, model, version, verdict)) in outcomes.into_iter().enumerate() {
        let id = format!("case-{i:02}");
        let c = Some(id.as_str());
        let mut reviewed = json!({"operation": "refunds/pay", "task_id": format!("{id}.pay.1"),
            "source": "pre", "verdict": verdict, "phase": 1, "model": model, "confidence": 0.9});
        if let Some(version) = version {
            reviewed["learner_version"] = json!(version);
        }
        let created = day(d);
        let insert = CaseWrite {
            case_id: id.clone(),
            workflow: "refunds".into(),
            workflow_version: 1,
            mode: WriteMode::Insert {
                idempotency_key: None,
            },
            status: "completed".into(),
            current_step: None,
            state: "{}".into(),
            runnable_at_ms: None,
            lease_owner: None,
            lease_until_ms: None,
            sla_due_ms: None,
            sla_breached: false,
            now_ms: created,
            entries: vec![
                entry(
                    created,
                    "case.created",
                    c,
                    None,
                    json!({"input": {"text": "refund"}}),
                ),
                entry(
                    created + 60_000,
                    "outcome.reviewed",
                    c,
                    Some("pay"),
                    reviewed,
                ),
                entry(created + 61_000, "case.completed", c, None, json!({})),
            ],
        };
        store.commit(&[insert]).await.unwrap();
    }
    let moves = [
        (
            3,
            1,
            2,
            "trust.promoted",
            "gus",
            json!({"operation": "refunds/pay", "from_phase": 1, "to_phase": 2, "by": "gus",
            "reason": "steady for a month",
            "evidence": {"reviews": 30, "agreements": 29, "wilson": {"low": 0.833, "high": 0.994, "point": 0.967}, "target_agreement": 0.6}}),
        ),
        (
            8,
            2,
            3,
            "trust.promoted",
            "gus",
            json!({"operation": "refunds/pay", "from_phase": 2, "to_phase": 3, "by": "gus",
            "reason": "phase 2 went well",
            "evidence": {"reviews": 45, "agreements": 44, "wilson": {"low": 0.885, "high": 0.996, "point": 0.978}, "target_agreement": 0.7}}),
        ),
        (
            15,
            3,
            2,
            "trust.demoted",
            "engine",
            json!({"operation": "refunds/pay", "from_phase": 3, "to_phase": 2, "by": "engine",
            "trigger": "sprt", "reason": "the SPRT rejected the target error rate", "retro_reviews": 7, "since": "2026-11-14T09:01:00.000Z",
            "evidence": {"sprt_reviews": 23, "sprt": {"p0": 0.25, "p1": 0.5, "alpha": 0.05, "beta": 0.2, "errors": 13,
                "observations": 23, "restarts": 0, "llr": 2.9, "upper_bound": 2.77, "lower_bound": -1.56, "rejected": true}}}),
        ),
        (
            20,
            2,
            1,
            "trust.demoted",
            "engine",
            json!({"operation": "refunds/pay", "from_phase": 2, "to_phase": 1, "by": "engine",
            "trigger": "drift", "reason": "input drift on amount", "retro_reviews": 3, "since": "2026-11-19T00:00:00.000Z",
            "evidence": {"feature": "amount", "method": "ks", "value": 0.31, "threshold": 0.05}}),
        ),
    ];
    for (d, from, to, kind, by, data) in moves {
        let change = PhaseChange {
            operation: "refunds/pay".into(),
            workflow: "refunds".into(),
            step: "pay".into(),
            expected: Some(from),
            phase: to,
            at_ms: day(d),
            promoted: kind == "trust.promoted",
            workflow_version: Some(1),
            config_sha256: None,
        };
        let mut journaled = entry(day(d), kind, None, Some("pay"), data);
        journaled.actor_type = if by == "engine" { "system" } else { "user" }.into();
        journaled.actor_id = by.into();
        assert!(store.trust_set_phase(&change, &journaled).await.unwrap());
    }
    let learner = |d: i64, kind: &str, actor: &str, data: Value| {
        let mut e = entry(day(d), kind, None, Some("judge"), data);
        e.actor_type = "user".into();
        e.actor_id = actor.into();
        e
    };
    let non_inferiority = json!({"test": "paired non-inferiority", "margin": 0.02, "alpha": 0.05, "n": 200,
        "challenger_accuracy": 0.81, "serving_accuracy": 0.93, "difference": -0.12, "lower_bound": -0.17});
    let deployed = |d: i64, version: i64, status: &str, review: &str, what: &str| {
        let mut e = entry(
            day(d),
            "workflow.deployed",
            None,
            None,
            json!({"workflow": "refunds", "version_no": version,
            "label": version.to_string(), "source_sha256": "0".repeat(64), "file": "refunds.yaml",
            "status": status, "review": review, "changes": [{"operation": "refunds/pay", "what": [what]}]}),
        );
        e.actor_id = "deployer".into();
        e
    };
    let decided = |d: i64, kind: &str, version: i64, reason: &str| {
        let mut e = entry(
            day(d),
            kind,
            None,
            None,
            json!({"workflow": "refunds", "version_no": version,
            "author": "gail", "by": "gus", "reason": reason}),
        );
        e.actor_type = "user".into();
        e.actor_id = "gus".into();
        e
    };
    store
        .append(&[
            deployed(10, 2, "pending", "required", "prompt"),
            decided(11, "workflow.approved", 2, "prompt reviewed"),
            learner(
                12,
                "learner.challenger",
                "ann",
                json!({"workflow": "refunds", "step": "judge", "version": 2,
                "source": "reviews", "examples": 120}),
            ),
            learner(
                13,
                "learner.failed",
                "engine",
                json!({"workflow": "refunds", "step": "judge", "version": 2,
                "evidence": non_inferiority}),
            ),
            deployed(22, 3, "pending", "required", "policy"),
            decided(
                23,
                "workflow.rejected",
                3,
                "the policy lets everything through",
            ),
            deployed(27, 4, "active", "off", "hard_limits"),
        ])
        .await
        .unwrap();
    clock.advance_ms(ASKED_MS - DEPLOYED_MS);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    Reports {
        base,
        engine,
        _dir: dir,
    }
}

#[tokio::test]
async fn the_monthly_review_tells_promotions_a_poisoning_demotions_and_changes() {
    let app = eventful_month().await;
    let report: Value = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11")
        .await
        .json()
        .await
        .unwrap();
    check_shape(&report);
    let workflow = &report["workflows"][0];
    let operation = &workflow["operations"][0];
    // 1 → 3 → 1: the phase it reached is not hidden by where it ended.
    assert_eq!(
        (
            &operation["phase"]["at_start"],
            &operation["phase"]["highest"],
            &operation["phase"]["at_end"]
        ),
        (&json!(1), &json!(3), &json!(1))
    );
    assert_eq!(report["summary"]["promotions"], 2);
    assert_eq!(report["summary"]["demotions"], 2);
    // Learner versions are not mixed: local v1 apart from untagged local reviews.
    let by_model: Vec<(String, Value, i64)> = operation["accuracy_by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_string(),
                m["learner_version"].clone(),
                m["reviews"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_model,
        [
            ("local".to_string(), Value::Null, 2),
            ("local".to_string(), json!(1), 6),
            ("small".to_string(), Value::Null, 4)
        ]
    );
    let kinds: Vec<&str> = workflow["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "trust.promoted",
            "trust.promoted",
            "learner.challenger",
            "learner.failed",
            "trust.demoted",
            "trust.demoted"
        ]
    );
    let investigate: Vec<&Value> = report["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "investigate_demotion")
        .collect();
    assert_eq!(investigate.len(), 2);
    assert!(investigate[0]["message"]
        .as_str()
        .unwrap()
        .contains("7 retro-review tasks"));
    let control = &workflow["change_control"];
    assert_eq!(control["deployments"].as_array().unwrap().len(), 3);
    assert_eq!(
        control["unreviewed"],
        "changes were not reviewed: change control is off in keel.toml"
    );
    insta::assert_json_snapshot!("monthly_review_events", report);

    let markdown = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11&format=md")
        .await
        .text()
        .await
        .unwrap();
    assert!(!markdown.contains("None this month"), "{markdown}");
    assert!(
        !markdown.contains("{\""),
        "evidence is told, not JSON: {markdown}"
    );
    insta::assert_snapshot!("monthly_review_events_markdown", markdown);

    let html = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11&format=html")
        .await
        .text()
        .await
        .unwrap();
    well_formed(&html);
    for needle in [
        "SPRT: 13 wrong of 23 reviews since promotion: error rate ≥ 0.500 rather than 0.250",
        "Wilson bound 0.885 ≥ 0.700 over 45 reviews (44 agreed)",
        "v2 kept, not served: paired non-inferiority over 200 cases",
        "1 → 3 → 1",
        "local v1",
        "changes were not reviewed: change control is off in keel.toml",
        "Investigate the demotion of",
        "<h3>Change control</h3>",
    ] {
        assert!(html.contains(needle), "the HTML review shows {needle:?}");
    }
}

/// The review of a month still running stops at now: its `as of` is now, and the trust
/// chart's series end there rather than at the month's last day.
#[tokio::test]
async fn the_review_of_the_current_month_stops_at_now() {
    let app = reports().await;
    let december: Value = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-12")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(december["as_of"], "2026-12-02T00:00:00.000Z");
    let november: Value = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-11")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(november["as_of"], "2026-12-01T00:00:00.000Z");
    let html = app
        .get_as("auditor", "/v1/reports/monthly?month=2026-12&format=html")
        .await
        .text()
        .await
        .unwrap();
    let trust_chart = &html[html.find("chart-trust").unwrap()..];
    let trust_chart = &trust_chart[..trust_chart.find("</svg>").unwrap()];
    let points = trust_chart
        .split("points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no series in {trust_chart}"));
    let last_x: f64 = points
        .split_whitespace()
        .last()
        .and_then(|p| p.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let first_x: f64 = points
        .split_whitespace()
        .next()
        .and_then(|p| p.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    // One day of 31: the series spans about a 31st of the axis, not all of it.
    assert!(last_x - first_x < 60.0, "{points}");
}
