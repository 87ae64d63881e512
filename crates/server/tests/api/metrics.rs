//! `/metrics` and OpenTelemetry traces end to end: real cases through a real server, the
//! exposition parsed and checked against what was done; spans received by a local OTLP/HTTP
//! collector; a collector that is down costs spans, never cases.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use keel_engine::{Engine, Options, SystemClock};
use keel_server::ServerOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::gateway::{keel_toml, upstream};

/// validate → set → end: completes at once.
const QUICK: &str = r#"
name: quick
version: "1"
input:
  schema: { type: object }
steps:
  - id: check
    validate:
      assert:
        - { expr: "true", message: "never" }
  - id: enrich
    set: { doubled: "2" }
  - id: done
    end: { outcome: ok }
"#;

/// A validation that always fails: the case parks on a `validation_failed` exception.
const STRICT: &str = r#"
name: strict
version: "1"
input:
  schema: { type: object }
steps:
  - id: check
    validate:
      assert:
        - { expr: "false", message: "always refused" }
  - id: done
    end: { outcome: ok }
"#;

/// An approval step: an open task.
const REFUND: &str = r#"
name: refund
version: "1"
input:
  schema: { type: object }
steps:
  - id: sign_off
    approval:
      title: Refund the customer
      roles: [specialist]
  - id: done
    end: { outcome: refunded }
"#;

/// Waits for a signal past its 200 ms SLA: one breach.
const SLOW: &str = r#"
name: slow
version: "1"
sla: 200ms
input:
  schema: { type: object }
steps:
  - id: hold
    wait: { signal: go, timeout: 1h, into: go }
  - id: done
    end: { outcome: ok }
"#;

/// An `ai` step (the upstream echoes the prompt, which is the answer) and an action that uses
/// its output: an operation under progressive trust, so a reviewer approves it first.
const TRIAGE: &str = r#"
name: triage
version: "1"
input:
  schema:
    type: object
    required: [answer, callback]
    properties:
      answer: { type: string }
      callback: { type: string }
steps:
  - id: classify
    ai:
      task: classify
      labels: [spam, ham]
      prompt: "{{ input.answer }}"
      temperature: 0
      reask: 0
      route:
        - model: primary
          accept_when: "true"
  - id: pay
    action:
      method: POST
      url: "${ input.callback }"
      body: { label: "${ data.classify.output.label }" }
      approval: { roles: [reviewer] }
  - id: done
    end: { outcome: done }
"#;

/// One parsed exposition: every sample with its labels.
#[derive(Debug)]
struct Exposition {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

/// Parses the text exposition format strictly: every line is `# HELP`, `# TYPE` or
/// `name{labels} value`; a family's HELP and TYPE come before its samples, which are
/// contiguous; histogram buckets are cumulative and end with `+Inf` equal to `_count`.
fn parse(text: &str) -> Exposition {
    let mut samples = Vec::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name), "{line}");
            assert!(helped.insert(name.to_string()), "second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
            if let Some(previous) = current.replace(name.to_string()) {
                finished.insert(previous);
            }
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (name, labels, value) = sample(line);
        let family = if types.contains_key(&name) {
            name.clone()
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
            assert_eq!(
                types.get(base).map(String::as_str),
                Some("histogram"),
                "{line}"
            );
            base.to_string()
        };
        assert_eq!(
            current.as_deref(),
            Some(family.as_str()),
            "samples not contiguous: {line}"
        );
        assert!(!finished.contains(&family), "{line}");
        if types[&family] == "counter" {
            assert!(name.ends_with("_total"), "{line}");
            assert!(value >= 0.0, "{line}");
        }
        samples.push((name, labels, value));
    }
    let exposition = Exposition { samples, types };
    exposition.check_histograms();
    exposition
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{a="x",b="y"} value` (labels optional).
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = &line[..name_end];
    assert!(valid_name(name), "{line}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).unwrap();
            if after[start..].starts_with('}') {
                rest = &after[start + 1..];
                break;
            }
            let equals = after[start..].find('=').unwrap() + start;
            let label = &after[start..equals];
            assert!(valid_name(label) && !label.starts_with("__"), "{line}");
            while chars.peek().is_some_and(|(i, _)| *i <= equals) {
                chars.next();
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value").1 {
                    '\\' => match chars.next().unwrap().1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw line feed in {line}"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(label.to_string(), value).is_none(), "{line}");
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => {
                    let end = chars.peek().map_or(after.len(), |(i, _)| *i);
                    rest = &after[end..];
                    break;
                }
                other => panic!("expected , or }} after a label, got {other:?}: {line}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    assert!(!value.contains(' '), "no timestamps: {line}");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    (name.to_string(), labels, value)
}

impl Exposition {
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for (name, labels, value) in &self.samples {
                if *name != format!("{family}_bucket") {
                    continue;
                }
                let mut rest = labels.clone();
                let le = rest.remove("le").expect("a bucket has le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.entry(rest).or_default().push((le, *value));
            }
            for (labels, buckets) in series {
                for pair in buckets.windows(2) {
                    assert!(pair[0].0 < pair[1].0, "{family}: le increases");
                    assert!(pair[0].1 <= pair[1].1, "{family}: buckets are cumulative");
                }
                let last = buckets.last().unwrap();
                assert_eq!(last.0, f64::INFINITY, "{family}: ends with +Inf");
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.value(&format!("{family}_count"), &pairs);
                assert_eq!(
                    Some(last.1),
                    count,
                    "{family}{labels:?}: +Inf equals _count"
                );
                assert!(self.value(&format!("{family}_sum"), &pairs).is_some());
            }
        }
    }

    /// The sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// The sum of the samples whose labels include these.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }
}

async fn scrape(client: &reqwest::Client, base: &str) -> Exposition {
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&response.text().await.unwrap())
}

/// Scrapes until `done` holds, for at most ten seconds.
async fn scrape_until(
    client: &reqwest::Client,
    base: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let started = Instant::now();
    loop {
        let exposition = scrape(client, base).await;
        if done(&exposition) {
            return exposition;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the metrics never showed it: {exposition:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_test_parser_rejects_what_the_format_forbids() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\"} 2\n";
    assert_eq!(parse(good).value("a_total", &[("x", "q\"\n")]), Some(2.0));
    for bad in [
        "a_total 2\n",
        "# TYPE a_total counter\na_total 2\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn metrics_need_a_token_and_count_what_the_cases_did() {
    let app = super::spawn_app().await;
    for (source, file) in [
        (QUICK, "quick.yaml"),
        (STRICT, "strict.yaml"),
        (REFUND, "refund.yaml"),
        (SLOW, "slow.yaml"),
    ] {
        app.engine.deploy_source(source, file).await.unwrap();
    }
    let mut quick = Vec::new();
    for _ in 0..3 {
        let response = app.post_json("/v1/workflows/quick/cases", &json!({})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        quick.push(
            response.json::<Value>().await.unwrap()["case_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for workflow in ["strict", "refund", "slow"] {
        let response = app
            .post_json(&format!("/v1/workflows/{workflow}/cases"), &json!({}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    for id in &quick {
        app.case_until(id, |case| case["status"] == "completed")
            .await;
    }

    let url = format!("{}/metrics", app.base);
    let anonymous = reqwest::Client::new();
    let status = anonymous.get(&url).send().await.unwrap().status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let reviewer = super::client_as(&app.engine, "rita", &["reviewer"]).await;
    let status = reviewer.get(&url).send().await.unwrap().status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let auditor = super::client_as(&app.engine, "audrey", &["auditor"]).await;
    assert_eq!(
        auditor.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    let metrics = scrape_until(&app.client, &app.base, |m| {
        m.value("keel_sla_breaches_total", &[("workflow", "slow")]) == Some(1.0)
            && m.sum("keel_tasks_open", &[("workflow", "refund")]) == 1.0
            && m.sum("keel_exceptions_open", &[]) == 2.0
            && m.sum("keel_queue_depth", &[]) == 2.0
    })
    .await;
    let cases = |workflow: &str, status: &str| {
        metrics.value("keel_cases", &[("workflow", workflow), ("status", status)])
    };
    assert_eq!(cases("quick", "completed"), Some(3.0));
    assert_eq!(cases("strict", "exception"), Some(1.0));
    assert_eq!(cases("refund", "waiting"), Some(1.0));
    assert_eq!(metrics.sum("keel_cases", &[("workflow", "slow")]), 1.0);
    let steps =
        |kind: &str| metrics.value("keel_steps_total", &[("workflow", "quick"), ("kind", kind)]);
    assert_eq!(steps("validate"), Some(3.0));
    assert_eq!(steps("set"), Some(3.0));
    assert_eq!(
        metrics.sum("keel_steps_total", &[("workflow", "strict")]),
        0.0
    );
    let raised = |workflow: &str, kind: &str| {
        metrics.value(
            "keel_exceptions_raised_total",
            &[("workflow", workflow), ("kind", kind)],
        )
    };
    assert_eq!(raised("strict", "validation_failed"), Some(1.0));
    assert_eq!(raised("slow", "sla_breach"), Some(1.0));
    assert_eq!(
        metrics.sum("keel_exceptions_open", &[("kind", "validation_failed")]),
        1.0
    );
    assert_eq!(
        metrics.sum("keel_exceptions_open", &[("kind", "sla_breach")]),
        1.0
    );
    let task_kinds: Vec<&BTreeMap<String, String>> = metrics
        .samples
        .iter()
        .filter(|(name, _, _)| name == "keel_tasks_open")
        .map(|(_, labels, _)| labels)
        .collect();
    assert_eq!(task_kinds.len(), 1, "{task_kinds:?}");
    // No model calls and no gateway requests: the families are there, without samples (the
    // overhead histogram has its buckets at zero).
    assert_eq!(metrics.sum("keel_ai_calls_total", &[]), 0.0);
    assert_eq!(
        metrics.value("keel_gateway_overhead_seconds_count", &[]),
        Some(0.0)
    );
    assert_eq!(
        metrics.value("keel_otlp_dropped_spans_total", &[]),
        Some(0.0)
    );
    for family in [
        "keel_cases",
        "keel_steps_total",
        "keel_exceptions_open",
        "keel_exceptions_raised_total",
        "keel_tasks_open",
        "keel_queue_depth",
        "keel_sla_breaches_total",
        "keel_ai_calls_total",
        "keel_ai_tokens_total",
        "keel_ai_cost_usd_total",
        "keel_ai_call_latency_seconds",
        "keel_gateway_overhead_seconds",
        "keel_trust_phase",
        "keel_otlp_dropped_spans_total",
    ] {
        assert!(metrics.types.contains_key(family), "{family} is declared");
    }

    // Counters are folded from the journal once: a second scrape counts nothing twice.
    let again = scrape(&app.client, &app.base).await;
    assert_eq!(
        again.value(
            "keel_steps_total",
            &[("workflow", "quick"), ("kind", "set")]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_scrape_token_reads_metrics_without_a_user() {
    let app = super::spawn_app_with(ServerOptions {
        metrics_token: Some("scrape-secret-1234".into()),
        ..ServerOptions::default()
    })
    .await;
    let url = format!("{}/metrics", app.base);
    let client = reqwest::Client::new();
    let response = client
        .get(&url)
        .bearer_auth("scrape-secret-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    parse(&response.text().await.unwrap());
    for wrong in ["scrape-secret-1235", "scrape-secret-123"] {
        let status = client
            .get(&url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // The scrape token is good for /metrics only.
    let status = client
        .get(format!("{}/v1/cases", app.base))
        .bearer_auth("scrape-secret-1234")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A local OTLP/HTTP collector: the JSON bodies it received.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                assert_eq!(headers["content-type"], "application/json");
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (endpoint, received)
}

/// Every span the collector received, with its attributes flattened to JSON values.
fn spans(received: &Mutex<Vec<Value>>) -> Vec<Value> {
    let mut spans = Vec::new();
    for request in received.lock().unwrap().iter() {
        for resource in request["resourceSpans"].as_array().unwrap() {
            assert_eq!(
                resource["resource"]["attributes"][0],
                json!({"key": "service.name", "value": {"stringValue": "keel"}})
            );
            for scope in resource["scopeSpans"].as_array().unwrap() {
                spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    spans
}

/// An attribute's value (`stringValue`, `intValue` as a string, or `doubleValue`).
fn attribute(attributes: &Value, key: &str) -> Option<Value> {
    attributes
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"].as_object()?.values().next().cloned())
}

/// A Keel with the models of `keel_toml` over the test upstream, sending traces to `endpoint`.
async fn start_traced(dir: &tempfile::TempDir, endpoint: &str) -> (Engine, String) {
    let upstream = upstream().await;
    let config =
        keel_ai::config::Config::parse("keel.toml", &keel_toml(&upstream.base_url, "")).unwrap();
    let runtime = keel_ai::cascade::Runtime::new(config, reqwest::Client::new());
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ai: Some(Arc::new(runtime)),
        telemetry: keel_engine::telemetry::Options {
            otlp_endpoint: Some(endpoint.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::start(store, options, Arc::new(SystemClock))
        .await
        .unwrap();
    engine.deploy_source(TRIAGE, "triage.yaml").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    (engine, base)
}

async fn waits_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn model_calls_and_reviews_become_gen_ai_spans_and_metrics() {
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start_traced(&dir, &endpoint).await;
    let admin = super::client_as(&engine, "ada", &["admin"]).await;
    let reviewer = super::client_as(&engine, "rita", &["reviewer"]).await;
    let (callback, calls) = crate::tasks::receiver().await;

    let response = admin
        .post(format!("{base}/v1/workflows/triage/cases"))
        .json(&json!({"answer": "{\"label\": \"spam\"}", "callback": callback}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let case_id = response.json::<Value>().await.unwrap()["case_id"]
        .as_str()
        .unwrap()
        .to_string();
    let task_id = waits_for("the review task", async || {
        let tasks: Vec<Value> = reviewer
            .get(format!("{base}/v1/tasks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tasks
            .into_iter()
            .find(|t| t["case_id"] == case_id.as_str())
            .map(|t| t["id"].as_str().unwrap().to_string())
    })
    .await;
    let decided = reviewer
        .post(format!("{base}/v1/tasks/{task_id}/decision"))
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert!(decided.status().is_success(), "{:?}", decided.text().await);
    waits_for("the case to complete", async || {
        (engine.case(&case_id).await.unwrap().status == "completed").then_some(())
    })
    .await;
    assert_eq!(calls.lock().unwrap().len(), 1);

    // A gateway request: one more model call span, and one overhead observation.
    let (gateway_token, _) = keel_engine::tokens::create_token(
        engine.store(),
        "app",
        "app",
        &["gateway".to_string()],
        None,
        engine.now_ms(),
    )
    .await
    .unwrap();
    let chat = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&gateway_token)
        .json(&json!({"model": "primary", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), StatusCode::OK);

    // The scrape folds the journal, which turns the review into its event.
    engine.flush_ai_calls().await;
    let metrics = scrape_until(&admin, &base, |m| m.sum("keel_ai_calls_total", &[]) == 2.0).await;
    let ai = &[
        ("model", "primary"),
        ("provider", "openai"),
        ("outcome", "ok"),
    ];
    assert_eq!(metrics.value("keel_ai_calls_total", ai), Some(2.0));
    let tokens = |direction: &str| {
        metrics.value(
            "keel_ai_tokens_total",
            &[("model", "primary"), ("direction", direction)],
        )
    };
    assert_eq!(tokens("input"), Some(20.0));
    assert_eq!(tokens("output"), Some(10.0));
    assert_eq!(tokens("cached"), Some(0.0));
    // 15 tokens at 1000 USD per million, twice.
    let cost = metrics
        .value("keel_ai_cost_usd_total", &[("model", "primary")])
        .unwrap();
    assert!((cost - 0.03).abs() < 1e-9, "{cost}");
    assert_eq!(
        metrics.value(
            "keel_ai_call_latency_seconds_count",
            &[("model", "primary")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metrics.value("keel_gateway_overhead_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "keel_steps_total",
            &[("workflow", "triage"), ("kind", "ai")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "keel_steps_total",
            &[("workflow", "triage"), ("kind", "action")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("keel_trust_phase", &[("operation", "triage/pay")]),
        Some(1.0)
    );

    let all = waits_for("three spans at the collector", async || {
        let all = spans(&received);
        (all.len() >= 3).then_some(all)
    })
    .await;
    let step_span = all
        .iter()
        .find(|s| {
            attribute(&s["attributes"], "keel.case_id") == Some(json!(case_id)) && s["kind"] == 3
        })
        .expect("the ai step's span");
    assert_eq!(step_span["name"], "chat echo");
    let step = |key: &str| attribute(&step_span["attributes"], key);
    assert_eq!(step("gen_ai.operation.name"), Some(json!("chat")));
    assert_eq!(step("gen_ai.provider.name"), Some(json!("openai")));
    assert_eq!(step("gen_ai.request.model"), Some(json!("echo")));
    assert_eq!(step("gen_ai.response.model"), Some(json!("echo")));
    assert_eq!(step("gen_ai.usage.input_tokens"), Some(json!("10")));
    assert_eq!(step("gen_ai.usage.output_tokens"), Some(json!("5")));
    assert_eq!(step("gen_ai.request.temperature"), Some(json!(0.0)));
    assert_eq!(step("keel.workflow"), Some(json!("triage")));
    assert_eq!(step("keel.step"), Some(json!("classify")));
    assert_eq!(step("keel.cost_usd"), Some(json!(0.015)));
    assert_eq!(step("error.type"), None);
    assert_eq!(step_span["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(step_span["spanId"].as_str().unwrap().len(), 16);
    let start: u128 = step_span["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = step_span["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(start > 1_600_000_000_000_000_000 && end >= start);

    let review = all
        .iter()
        .find(|s| s["name"] == "human_review")
        .expect("the review's span");
    assert_eq!(
        review["traceId"], step_span["traceId"],
        "one trace per case"
    );
    assert_eq!(review["parentSpanId"], step_span["spanId"]);
    let event = &review["events"][0];
    assert_eq!(event["name"], "gen_ai.evaluation.result");
    let evaluation = |key: &str| attribute(&event["attributes"], key);
    assert_eq!(
        evaluation("gen_ai.evaluation.name"),
        Some(json!("human_review"))
    );
    assert_eq!(
        evaluation("gen_ai.evaluation.score.label"),
        Some(json!("agree"))
    );
    assert_eq!(
        evaluation("gen_ai.evaluation.score.value"),
        Some(json!(1.0))
    );

    let gateway_span = all
        .iter()
        .find(|s| attribute(&s["attributes"], "keel.caller") == Some(json!("app")))
        .expect("the gateway call's span");
    assert_eq!(
        attribute(&gateway_span["attributes"], "gen_ai.request.temperature"),
        Some(json!(0.5))
    );
    assert_eq!(
        attribute(&gateway_span["attributes"], "gen_ai.usage.output_tokens"),
        Some(json!("5"))
    );
}

#[tokio::test]
async fn a_failed_model_call_carries_its_error_type() {
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start_traced(&dir, &endpoint).await;
    let (gateway_token, _) = keel_engine::tokens::create_token(
        engine.store(),
        "app",
        "app",
        &["gateway".to_string()],
        None,
        engine.now_ms(),
    )
    .await
    .unwrap();
    let chat = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&gateway_token)
        .json(&json!({"model": "broken", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), StatusCode::BAD_GATEWAY);
    let span = waits_for("the failed call's span", async || {
        spans(&received).into_iter().next()
    })
    .await;
    assert_eq!(
        attribute(&span["attributes"], "gen_ai.request.model"),
        Some(json!("fail"))
    );
    let error = attribute(&span["attributes"], "error.type").expect("error.type");
    assert_eq!(span["status"]["code"], 2);
    assert_eq!(span["status"]["message"], error);
    assert_eq!(
        attribute(&span["attributes"], "gen_ai.usage.input_tokens"),
        None
    );
}

#[tokio::test]
async fn a_collector_that_is_down_loses_spans_but_never_a_case() {
    // A port nothing listens on: every export fails at once.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start_traced(&dir, &endpoint).await;
    let admin = super::client_as(&engine, "ada", &["admin"]).await;
    let started = Instant::now();
    let response = admin
        .post(format!("{base}/v1/workflows/triage/cases"))
        .json(&json!({"answer": "{\"label\": \"ham\"}", "callback": "http://127.0.0.1:9/never"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let case_id = response.json::<Value>().await.unwrap()["case_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The case goes on to its review task while the span is still being retried.
    waits_for("the case to wait for its review", async || {
        (engine.case(&case_id).await.unwrap().status == "waiting").then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = scrape_until(&admin, &base, |m| {
        m.value("keel_otlp_dropped_spans_total", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(metrics.sum("keel_ai_calls_total", &[]), 1.0);
    // Shutting down waits at most a second for the exporter.
    let stopping = Instant::now();
    engine.shutdown(Duration::from_secs(5)).await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

/// `cases` cases (100,000 with `RUN_SLOW_TESTS`, else 5,000; `KEEL_METRICS_CASES` overrides)
/// written straight to the store with three journal entries each, one exception per hundred
/// and a model call per ten; prints how long scrapes take once the counters caught up.
#[tokio::test]
async fn a_scrape_stays_cheap_on_a_large_store() {
    let cases: usize = match std::env::var("KEEL_METRICS_CASES") {
        Ok(n) => n.parse().unwrap(),
        Err(_) if std::env::var("RUN_SLOW_TESTS").is_ok() => 100_000,
        Err(_) => 5_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::Store::open(dir.path().join("keel.db").to_str().unwrap())
        .await
        .unwrap();
    let filled = Instant::now();
    fill(&store, cases).await;
    let filled = filled.elapsed();
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        node_id: "test-node".into(),
        ..Default::default()
    };
    let engine = Engine::start(store, options, Arc::new(SystemClock))
        .await
        .unwrap();
    // Leave the machine to the scrapes: sequence the ledger first.
    engine.sequence_now().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keel_server::serve(
        listener,
        engine.clone(),
        ServerOptions::default(),
        std::future::pending(),
    ));
    let admin = super::client_as(&engine, "ada", &["admin"]).await;
    let caught_up = Instant::now();
    let expected = cases as f64;
    let metrics = scrape_until(&admin, &base, |m| {
        m.sum("keel_steps_total", &[]) == expected
            && m.sum("keel_ai_calls_total", &[]) == expected / 10.0
    })
    .await;
    let caught_up = caught_up.elapsed();
    assert_eq!(metrics.sum("keel_cases", &[]), expected);
    assert_eq!(
        metrics.sum("keel_exceptions_raised_total", &[]),
        expected / 100.0
    );
    assert_eq!(metrics.sum("keel_exceptions_open", &[]), expected / 100.0);
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let response = admin.get(format!("{base}/metrics")).send().await.unwrap();
        let text = response.text().await.unwrap();
        times.push(started.elapsed());
        parse(&text);
    }
    times.sort();
    eprintln!(
        "{cases} cases, {} journal rows: filled in {filled:.1?}, counters caught up in {caught_up:.1?}; scrape median {:.1?}, max {:.1?}",
        cases * 3 + cases / 100,
        times[times.len() / 2],
        times[times.len() - 1],
    );
}

/// Writes `cases` finished cases (one in a hundred parked on an exception) and their entries.
async fn fill(store: &keel_store::Store, cases: usize) {
    let entry = |case: &str, workflow: &str, kind: &str, data: Value| {
        let (data, data_sha256) = keel_engine::canonical_data(&data);
        keel_store::NewEntry {
            at: "2026-11-27T10:00:00.000Z".into(),
            kind: kind.into(),
            actor_type: "system".into(),
            actor_id: "engine".into(),
            case_id: Some(case.into()),
            workflow: Some(workflow.into()),
            step: Some("check".into()),
            data,
            data_sha256,
        }
    };
    for batch in 0..cases.div_ceil(1_000) {
        let mut writes = Vec::new();
        let mut calls = Vec::new();
        for i in batch * 1_000..((batch + 1) * 1_000).min(cases) {
            let id = format!("case-{i:08}");
            let workflow = format!("workflow-{}", i % 8);
            let mut entries = vec![
                entry(&id, &workflow, "case.created", json!({"input": {"i": i}})),
                entry(
                    &id,
                    &workflow,
                    "step.completed",
                    json!({"kind": "validate"}),
                ),
            ];
            let status = if i % 100 == 0 {
                entries.push(entry(&id, &workflow, "exception.raised", json!({"exception_id": format!("{id}.check.1"), "kind": "ai_failed", "message": "no tier answered"})));
                "exception"
            } else {
                entries.push(entry(&id, &workflow, "case.completed", json!({})));
                "completed"
            };
            writes.push(keel_store::CaseWrite {
                case_id: id.clone(),
                workflow,
                workflow_version: 1,
                mode: keel_store::WriteMode::Insert {
                    idempotency_key: None,
                },
                status: status.into(),
                current_step: None,
                state: json!({"id": id, "data": {"i": i}}).to_string(),
                runnable_at_ms: None,
                lease_owner: None,
                lease_until_ms: None,
                sla_due_ms: None,
                sla_breached: false,
                now_ms: 1_790_000_000_000,
                entries,
            });
            if i % 10 == 0 {
                calls.push(keel_store::AiCallRow {
                    at_ms: 1_790_000_000_000,
                    day: "2026-09-21".into(),
                    source: "step".into(),
                    model: format!("model-{}", i % 3),
                    provider: "openai".into(),
                    status: "ok".into(),
                    input_tokens: 100,
                    output_tokens: 10,
                    cost_nano: Some(1_000),
                    latency_ms: (i % 2_000) as i64,
                    attempts: 1,
                    ..Default::default()
                });
            }
        }
        store.commit(&writes).await.unwrap();
        store.record_ai_calls(&calls, &[]).await.unwrap();
    }
}

/// A learner tier and the response cache answer without a provider request; they are spans
/// too, marked by `keel.source`, so a trace shows every tier a case went through.
#[tokio::test]
async fn cache_hits_and_learner_predictions_are_spans_too() {
    const CACHED: &str = r#"
name: cached
version: "1"
input:
  schema:
    type: object
    required: [answer]
    properties:
      answer: { type: string }
steps:
  - id: classify
    ai:
      task: classify
      labels: [spam, ham]
      prompt: "{{ input.answer }}"
      temperature: 0
      reask: 0
      route:
        - model: learner
        - model: primary
          accept_when: "true"
  - id: done
    end: { outcome: done }
"#;
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, base) = start_traced(&dir, &endpoint).await;
    engine.deploy_source(CACHED, "cached.yaml").await.unwrap();
    let admin = super::client_as(&engine, "ada", &["admin"]).await;
    let mut cases = Vec::new();
    // The same input twice: the second is answered from the cache.
    for _ in 0..2 {
        let response = admin
            .post(format!("{base}/v1/workflows/cached/cases"))
            .json(&json!({"answer": "{\"label\": \"ham\"}"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let case_id = response.json::<Value>().await.unwrap()["case_id"]
            .as_str()
            .unwrap()
            .to_string();
        waits_for("the case to complete", async || {
            (engine.case(&case_id).await.unwrap().status == "completed").then_some(())
        })
        .await;
        cases.push(case_id);
    }
    let of_case = |all: &[Value], case_id: &str| -> Vec<Value> {
        all.iter()
            .filter(|s| attribute(&s["attributes"], "keel.case_id") == Some(json!(case_id)))
            .cloned()
            .collect()
    };
    let all = waits_for("four spans of the two cases", async || {
        let all = spans(&received);
        (of_case(&all, &cases[0]).len() + of_case(&all, &cases[1]).len() >= 4).then_some(all)
    })
    .await;
    let source = |span: &Value| attribute(&span["attributes"], "keel.source");
    for case_id in &cases {
        let learner = of_case(&all, case_id)
            .into_iter()
            .find(|s| source(s) == Some(json!("learner")))
            .expect("the learner's span");
        assert_eq!(learner["name"], "predict learner");
        let attr = |key: &str| attribute(&learner["attributes"], key);
        assert_eq!(attr("gen_ai.operation.name"), Some(json!("predict")));
        assert_eq!(attr("gen_ai.provider.name"), Some(json!("local")));
        assert_eq!(attr("error.type"), Some(json!("untrained")));
        assert_eq!(learner["status"]["code"], 2, "{learner:#}");
    }
    let first = of_case(&all, &cases[0]);
    let second = of_case(&all, &cases[1]);
    let provider = first
        .iter()
        .find(|s| source(s) == Some(json!("provider")))
        .expect("the first case asks the provider");
    assert_eq!(
        attribute(&provider["attributes"], "gen_ai.usage.input_tokens"),
        Some(json!("10"))
    );
    assert!(
        !second.iter().any(|s| source(s) == Some(json!("provider"))),
        "the second case sends no request: {second:#?}"
    );
    let hit = second
        .iter()
        .find(|s| source(s) == Some(json!("cache")))
        .expect("the cache hit's span");
    let attr = |key: &str| attribute(&hit["attributes"], key);
    assert_eq!(hit["name"], "chat echo");
    assert_eq!(attr("keel.cache_hit"), Some(json!(true)));
    assert_eq!(attr("keel.cost_usd"), Some(json!(0.0)));
    assert_eq!(attr("gen_ai.usage.input_tokens"), None, "nothing was used");
    assert_eq!(attr("gen_ai.request.temperature"), Some(json!(0.0)));
    assert_eq!(hit["traceId"], second[0]["traceId"], "one trace per case");
}
