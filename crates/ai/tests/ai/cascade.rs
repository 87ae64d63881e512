//! The cascade end to end: a real learner as tier 0 and a local server speaking the OpenAI wire
//! format as the next tiers; schema and check failures, re-asks, `accept_when`, costs, and the
//! exception when no tier is accepted.

use std::sync::{Arc, Mutex};

use keel_ai::cascade::{Runtime, StepContext};
use keel_ai::config::Config;
use keel_ai::learner::Learner;
use keel_core::case::AiOutcome;
use keel_core::workflow::{Ai, StepKind};
use serde_json::{json, Value};

use crate::providers::{json_reply, mock, openai_completion, Mock};

fn ai_step(body: &str) -> Ai {
    let source = format!(
        "name: mail\nversion: \"1\"\ninput: {{ schema: {{ type: object }} }}\nsteps:\n  - id: triage\n    ai:\n{body}  - id: done\n    end: {{ outcome: ok }}\n"
    );
    let workflow = keel_core::workflow::parse_str(&source, "mail.yaml", None).unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter().map(|d| d.render(&source)).collect::<String>()
        )
    });
    match &workflow.steps[0].kind {
        StepKind::Ai(ai) => ai.clone(),
        _ => unreachable!(),
    }
}

const CLASSIFY: &str = "      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      checks:\n        - expr: \"!(input.text.contains('invoice') && output.label == 'spam')\"\n          message: an invoice from a customer is never spam\n      route:\n        - model: learner\n          accept_when: confidence >= 0.9\n        - model: small\n        - model: big\n";

fn runtime(mock: &Mock) -> Runtime {
    let toml = format!(
        "[models.learner]\nprovider = \"local\"\n\n[models.small]\nprovider = \"openai\"\nbase_url = \"{0}\"\nmodel = \"gpt-4o-mini\"\nmax_retries = 0\nbreaker_failures = 1000\n[models.small.price]\ninput = 0.15\noutput = 0.60\n\n[models.big]\nprovider = \"openai\"\nbase_url = \"{0}\"\nmodel = \"gpt-4o\"\nmax_retries = 0\nbreaker_failures = 1000\n[models.big.price]\ninput = 2.5\noutput = 10\n",
        mock.base_url
    );
    let config = Config::parse("keel.toml", &toml).unwrap();
    Runtime::new(config, reqwest::Client::new())
}

fn context(text: &str) -> StepContext {
    StepContext {
        workflow: "mail".into(),
        step: "triage".into(),
        input: json!({"text": text}),
        data: json!({}),
        case: json!({"id": "c1"}),
        now: chrono::Utc::now(),
        system: None,
        prompt: text.to_string(),
    }
}

/// A mock that answers each request with the next of `answers` (by the request's model) and
/// keeps the bodies it received.
async fn scripted(answers: Vec<(&'static str, Value)>) -> (Mock, Arc<Mutex<Vec<Value>>>) {
    let answers = Arc::new(Mutex::new(answers));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (answers2, seen2) = (answers.clone(), seen.clone());
    let mock = mock(move |_, received| {
        let (answers, seen) = (answers2.clone(), seen2.clone());
        async move {
            seen.lock().unwrap().push(received.body.clone());
            let mut answers = answers.lock().unwrap();
            if answers.is_empty() {
                return json_reply(500, json!({"error": {"message": "no more answers", "type": "server_error", "param": null, "code": null}}));
            }
            let (_, body) = answers.remove(0);
            json_reply(200, body)
        }
    })
    .await;
    (mock, seen)
}

fn spam_examples(file: &str) -> Vec<(String, String)> {
    let path = format!("{}/../../examples/data/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["text"].as_str().unwrap().to_string(),
                v["label"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_untrained_learner_hands_over_and_the_model_answer_is_costed() {
    let (mock, seen) = scripted(vec![(
        "small",
        openai_completion("{\"label\":\"ham\"}", true),
    )])
    .await;
    let runtime = runtime(&mock);
    let outcome = runtime
        .run(&ai_step(CLASSIFY), &context("lunch on friday?"))
        .await;
    let AiOutcome::Proposed {
        output,
        model,
        tier,
        record,
        confidence_method,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(output, json!({"label": "ham"}));
    assert_eq!((model.as_str(), tier), ("small", 1));
    assert_eq!(confidence_method, "none", "no logprobs in this response");
    assert_eq!(record["attempts"][0]["error"], "untrained");
    // 19 input and 10 output tokens at $0.15 / $0.60 per million.
    let cost = record["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (19.0 * 0.15 + 10.0 * 0.60) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    assert_eq!(record["cost_known"], true);
    // The schema was requested as structured output.
    let body = &seen.lock().unwrap()[0];
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"],
        json!(["spam", "ham"])
    );
}

#[tokio::test]
async fn a_trained_learner_settles_easy_cases_without_a_call() {
    let (mock, _) = scripted(vec![]).await;
    let runtime = runtime(&mock);
    let mut learner = Learner::default();
    learner
        .update_batch(&spam_examples("spam-sample.jsonl"))
        .unwrap();
    runtime.set_learner("mail", "triage", learner);
    let holdout = spam_examples("spam-holdout.jsonl");
    let (mut at_tier_0, mut correct) = (0, 0);
    for (text, label) in holdout.iter().take(40) {
        let ctx = context(text);
        if let AiOutcome::Proposed {
            output,
            tier: 0,
            confidence,
            ..
        } = runtime.run(&ai_step(CLASSIFY), &ctx).await
        {
            assert!(confidence >= 0.9);
            at_tier_0 += 1;
            correct += usize::from(output["label"] == label.as_str());
        }
    }
    assert!(
        correct >= 20,
        "the learner settled only {correct} of 40 cases correctly"
    );
    assert!(
        correct * 10 >= at_tier_0 * 9,
        "{correct} of {at_tier_0} settled cases were right"
    );
    // Only the cases the learner was unsure of reached the models (one call to each tier: the
    // mock has no answers, so both fail).
    assert_eq!(
        mock.hits(),
        2 * (40 - at_tier_0),
        "confident learner answers cost no model call"
    );
}

#[tokio::test]
async fn garbage_is_re_asked_with_the_reason_then_the_next_tier_runs() {
    let (mock, seen) = scripted(vec![
        ("small", openai_completion("Sure! It is spam.", true)),
        ("small", openai_completion("{\"label\":\"maybe\"}", true)),
        ("big", openai_completion("{\"label\":\"spam\"}", false)),
    ])
    .await;
    let runtime = runtime(&mock);
    let outcome = runtime
        .run(&ai_step(CLASSIFY), &context("WIN MONEY NOW"))
        .await;
    let AiOutcome::Proposed {
        output,
        model,
        record,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((output, model.as_str()), (json!({"label": "spam"}), "big"));
    let attempts = record["attempts"].as_array().unwrap();
    assert!(
        attempts[1]["problems"][0]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{attempts:?}"
    );
    assert!(
        attempts[2]["problems"][0]
            .as_str()
            .unwrap()
            .contains("label"),
        "{attempts:?}"
    );
    // The re-ask told the model what was wrong.
    let reask = &seen.lock().unwrap()[1];
    let last = reask["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last.contains("not acceptable") && last.contains("not JSON"),
        "{last}"
    );
    // The last tier reported no usage: its cost is unknown, never guessed.
    assert_eq!(record["cost_known"], false);
}

#[tokio::test]
async fn when_no_tier_is_accepted_the_case_gets_an_exception_with_every_attempt() {
    let (mock, _) = scripted(vec![
        ("small", openai_completion("{\"label\":\"spam\"}", true)),
        ("small", openai_completion("{\"label\":\"spam\"}", true)),
        ("big", openai_completion("", true)),
    ])
    .await;
    let runtime = runtime(&mock);
    let outcome = runtime
        .run(&ai_step(CLASSIFY), &context("invoice 42 attached"))
        .await;
    let AiOutcome::Failed { kind, record, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(kind, "ai_failed");
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    assert_eq!(
        attempts[1]["problems"][0],
        "an invoice from a customer is never spam"
    );
    assert_eq!(
        attempts[3]["problems"][0], "the answer is empty",
        "{:?}",
        attempts[3]
    );
    assert_eq!(
        attempts[4]["error"], "provider_error",
        "the mock has no more answers"
    );
    assert_eq!(record["path"], json!(["learner", "small", "big"]));
}

/// Against a real local model (llama.cpp's server with SmolLM2-135M, started by
/// `scripts/local-llm.sh start`), when `KEEL_LOCAL_LLM_URL` is set. The model is weak: whatever
/// it answers, Keel either proposes a valid label that passed every check, or raises an
/// exception with every attempt and raw answer kept. Nothing is accepted unchecked.
#[tokio::test]
async fn a_real_local_model_is_held_to_the_schema_and_the_checks() {
    let Ok(base_url) = std::env::var("KEEL_LOCAL_LLM_URL") else {
        eprintln!("KEEL_LOCAL_LLM_URL is not set; skipping the real-model path (scripts/local-llm.sh start)");
        return;
    };
    let toml = format!(
        "[models.smol]\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"smollm2-135m-instruct\"\ntimeout_s = 120\nmax_retries = 1\n"
    );
    let runtime = Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    );
    let step = ai_step(
        "      task: classify\n      labels: [spam, ham]\n      prompt: \"Is this email spam or ham?\\n\\n{{ input.text }}\"\n      max_tokens: 40\n      checks:\n        - expr: \"!(input.text.contains('invoice') && output.label == 'spam')\"\n          message: an invoice from a customer is never spam\n      route:\n        - model: smol\n          accept_when: confidence >= 0.0\n",
    );
    let emails = spam_examples("spam-holdout.jsonl");
    let mut texts: Vec<String> = emails
        .iter()
        .take(4)
        .map(|(text, _)| text.chars().take(600).collect())
        .collect();
    texts.push("Please find attached invoice 2291 for October. Regards, ACME accounts".to_string());
    for text in texts {
        match runtime.run(&step, &context(&text)).await {
            AiOutcome::Proposed {
                output,
                confidence,
                confidence_method,
                record,
                ..
            } => {
                let label = output["label"].as_str().unwrap();
                assert!(label == "spam" || label == "ham", "{output}");
                assert!(
                    !(text.contains("invoice") && label == "spam"),
                    "the check was bypassed"
                );
                assert!((0.0..=1.0).contains(&confidence));
                assert!(
                    ["logprob_label", "logprob_mean"].contains(&confidence_method.as_str()),
                    "{confidence_method}"
                );
                assert!(record["attempts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a["usage"].is_object()));
            }
            AiOutcome::Failed { kind, record, .. } => {
                assert_eq!(kind, "ai_failed");
                let attempts = record["attempts"].as_array().unwrap();
                assert!(!attempts.is_empty());
                assert!(
                    attempts
                        .iter()
                        .all(|a| a["problems"].as_array().is_some_and(|p| !p.is_empty())
                            || a["error"].is_string()),
                    "{attempts:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn redaction_keeps_response_text_out_of_the_record_and_keeps_its_hash() {
    let (mock, _) = scripted(vec![("small", openai_completion("not json at all", true))]).await;
    let toml = format!(
        "[journal]\nredact_text = true\n[models.small]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n",
        mock.base_url
    );
    let runtime = Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    );
    let step = ai_step("      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      reask: 0\n      route:\n        - model: small\n");
    let outcome = runtime.run(&step, &context("secret customer text")).await;
    let AiOutcome::Failed { record, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let text = record.to_string();
    assert!(!text.contains("not json at all"), "{text}");
    assert_eq!(
        record["attempts"][0]["response_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

/// 50 calls at once against a daily budget that covers only some of them: reservations are
/// atomic, so no more calls reach the provider than the budget admits, the spend stays within
/// the limit, and every refused case ends in a `budget_exhausted` exception, never a silent skip.
#[tokio::test]
async fn fifty_concurrent_calls_cannot_overspend_the_budget() {
    let mock = mock(|_, _| async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        json_reply(200, openai_completion("{\"label\":\"ham\"}", true))
    })
    .await;
    let step = ai_step("      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      max_tokens: 100\n      route:\n        - model: small\n");
    // Each call reserves (its characters / 3 + 16 input tokens + 100 output tokens) at $1 per
    // million; the limit admits 10 of those estimates.
    let text = "hello";
    let system_chars =
        "Answer with only a JSON object {\"label\": …} where label is one of: spam, ham.".len();
    let estimate_tokens = ((system_chars + text.len()) / 3 + 16 + 100) as f64;
    let limit = estimate_tokens * 10.0 / 1e6;
    let toml = format!(
        "[budgets.total]\ndaily_usd = {limit}\n[models.small]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\nmax_concurrency = 64\n[models.small.price]\ninput = 1\noutput = 1\n",
        mock.base_url
    );
    let runtime = Arc::new(Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (runtime, step) = (runtime.clone(), step.clone());
        tasks.push(tokio::spawn(async move {
            runtime.run(&step, &context(text)).await
        }));
    }
    let (mut proposed, mut exhausted) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            AiOutcome::Proposed { .. } => proposed += 1,
            AiOutcome::Failed { kind, .. } => {
                assert_eq!(kind, "budget_exhausted");
                exhausted += 1;
            }
        }
    }
    assert_eq!(proposed + exhausted, 50);
    assert_eq!(
        mock.hits(),
        proposed,
        "every admitted call reached the provider once"
    );
    assert!(
        proposed <= 10,
        "{proposed} calls were admitted; the budget covers 10 estimates"
    );
    assert!(proposed >= 1, "the budget admits calls while it lasts");
    let spent = runtime
        .budgets()
        .spent_today(chrono::Utc::now().date_naive());
    assert!(spent <= limit, "spent {spent} of {limit}");
    assert!(
        (spent - proposed as f64 * 29.0 / 1e6).abs() < 1e-12,
        "settled at the actual cost: {spent}"
    );
}

#[tokio::test]
async fn an_exhausted_budget_falls_to_a_cheaper_tier() {
    let (mock, _) = scripted(vec![]).await;
    let toml = format!(
        "[budgets.workflows.mail]\ndaily_usd = 0\n[models.learner]\nprovider = \"local\"\n[models.small]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n[models.small.price]\ninput = 1\noutput = 1\n",
        mock.base_url
    );
    let runtime = Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    );
    let mut learner = Learner::default();
    learner
        .update_batch(&spam_examples("spam-sample.jsonl"))
        .unwrap();
    runtime.set_learner("mail", "triage", learner);
    let step = ai_step("      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      route:\n        - model: small\n        - model: learner\n");
    let outcome = runtime
        .run(&step, &context("cheap viagra, win money now!!!"))
        .await;
    let AiOutcome::Proposed { model, record, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(model, "learner");
    assert_eq!(record["attempts"][0]["error"], "budget_exhausted");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn a_repeated_request_at_temperature_0_is_served_from_the_cache() {
    let (mock, _) = scripted(vec![(
        "small",
        openai_completion("{\"label\":\"ham\"}", true),
    )])
    .await;
    let toml = format!(
        "[models.small]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n[models.small.price]\ninput = 1\noutput = 1\n",
        mock.base_url
    );
    let runtime = Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    );
    let step = ai_step("      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      route:\n        - model: small\n");
    for round in 0..3 {
        let outcome = runtime.run(&step, &context("see you at lunch")).await;
        let AiOutcome::Proposed { output, record, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(output["label"], "ham");
        assert_eq!(record["attempts"][0]["cache_hit"], round > 0, "{record}");
    }
    assert_eq!(mock.hits(), 1, "one call, then the cache");
    // A different request is not a hit.
    let outcome = runtime.run(&step, &context("another text")).await;
    assert!(
        matches!(outcome, AiOutcome::Failed { .. }),
        "the mock has no more answers"
    );
    assert_eq!(mock.hits(), 2);
}

/// A classify step with `samples: 3` (and whatever `extra` adds to the step) routed to `route`.
fn sampled_step(extra: &str, route: &str) -> Ai {
    ai_step(&format!(
        "      task: classify\n      labels: [spam, ham]\n      prompt: \"{{{{ input.text }}}}\"\n      samples: 3\n      max_tokens: 100\n{extra}      route:\n{route}"
    ))
}

fn labelled(label: &str) -> Value {
    openai_completion(&format!("{{\"label\":\"{label}\"}}"), true)
}

/// The cost of one `openai_completion` (19 input and 10 output tokens) on the `small` model.
const SMALL_CALL_USD: f64 = (19.0 * 0.15 + 10.0 * 0.60) / 1e6;

#[tokio::test]
async fn without_logprobs_confidence_is_agreement_across_k_samples() {
    // (the three answers, the proposal, how many of the 3 agree with it, its attempt)
    let cases = [
        (["spam", "spam", "ham"], "spam", 2, 0),
        (["ham", "spam", "spam"], "spam", 2, 1),
        // A tie goes to the first answer; an invalid answer counts as disagreeing.
        (["spam", "ham", "maybe"], "spam", 1, 0),
    ];
    for (answers, proposal, agree, proposal_attempt) in cases {
        let (mock, seen) = scripted(answers.iter().map(|a| ("small", labelled(a))).collect()).await;
        let runtime = runtime(&mock);
        let step = sampled_step("", "        - model: small\n");
        let outcome = runtime.run(&step, &context("lunch on friday?")).await;
        let AiOutcome::Proposed {
            output,
            confidence,
            confidence_method,
            record,
            ..
        } = outcome
        else {
            panic!("{answers:?}: {outcome:?}")
        };
        assert_eq!(output, json!({"label": proposal}), "{answers:?}");
        assert!(
            (confidence - f64::from(agree) / 3.0).abs() < 1e-12,
            "{answers:?}: {confidence}"
        );
        assert_eq!(confidence_method, "agreement");
        assert_eq!(mock.hits(), 3, "{answers:?}: two extra samples were drawn");
        let attempts = record["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{attempts:?}");
        for (index, attempt) in attempts.iter().enumerate() {
            assert_eq!(attempt["sample"], index, "{attempt}");
            assert_eq!(attempt["cost_usd"], SMALL_CALL_USD, "{attempt}");
            assert_eq!(attempt["usage"]["input_tokens"], 19, "{attempt}");
            assert_eq!(attempt["cache_hit"], false, "{attempt}");
            assert!(attempt["response"].is_string(), "{attempt}");
            assert_eq!(
                attempt["accepted"] == true,
                index == proposal_attempt,
                "{attempt}"
            );
        }
        let cost = record["cost_usd"].as_f64().unwrap();
        assert!((cost - 3.0 * SMALL_CALL_USD).abs() < 1e-15, "{cost}");
        let accepted = &attempts[proposal_attempt];
        assert_eq!(accepted["confidence_method"], "agreement");
        assert_eq!(accepted["agreement"]["k"], 3);
        assert_eq!(accepted["agreement"]["agree"], agree);
        let expected_answers = match answers {
            ["spam", "ham", "maybe"] => json!({"spam": 1, "ham": 1}),
            _ => json!({answers[0]: if answers[0] == proposal { 2 } else { 1 },
                        answers[2]: if answers[2] == proposal { 2 } else { 1 }}),
        };
        assert_eq!(accepted["agreement"]["answers"], expected_answers);
        if answers[2] == "maybe" {
            assert!(
                attempts[2]["problems"][0]
                    .as_str()
                    .unwrap()
                    .contains("label"),
                "{attempts:?}"
            );
        }
        // The first answer at the step's temperature (0); the extra samples at 0.7 so that
        // they can differ.
        let temperatures: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|body| body["temperature"].clone())
            .collect();
        assert_eq!(temperatures, vec![json!(0.0), json!(0.7), json!(0.7)]);
    }
}

#[tokio::test]
async fn accept_when_sees_the_agreement_confidence() {
    let route =
        "        - model: small\n          accept_when: confidence >= 0.9\n        - model: big\n";
    // Unanimous: accepted at the first tier.
    let (mock, _) = scripted(vec![
        ("small", labelled("spam")),
        ("small", labelled("spam")),
        ("small", labelled("spam")),
    ])
    .await;
    let outcome = runtime(&mock)
        .run(&sampled_step("", route), &context("WIN MONEY NOW"))
        .await;
    let AiOutcome::Proposed {
        model, confidence, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((model.as_str(), confidence), ("small", 1.0));
    assert_eq!(mock.hits(), 3);
    // Disagreeing (2 of 3): not accepted, and the next tier (which samples too) answers.
    let (mock, _) = scripted(vec![
        ("small", labelled("spam")),
        ("small", labelled("ham")),
        ("small", labelled("spam")),
        ("big", labelled("ham")),
        ("big", labelled("ham")),
        ("big", labelled("ham")),
    ])
    .await;
    let outcome = runtime(&mock)
        .run(&sampled_step("", route), &context("WIN MONEY NOW"))
        .await;
    let AiOutcome::Proposed {
        output,
        model,
        tier,
        confidence,
        record,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (output, model.as_str(), tier, confidence),
        (json!({"label": "ham"}), "big", 1, 1.0)
    );
    assert_eq!(mock.hits(), 6);
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["accepted"], false, "{attempts:?}");
    assert_eq!(attempts[0]["agreement"]["agree"], 2, "{attempts:?}");
    // With only the disagreeing tier, the case gets an exception.
    let (mock, _) = scripted(vec![
        ("small", labelled("spam")),
        ("small", labelled("ham")),
        ("small", labelled("spam")),
    ])
    .await;
    let route = "        - model: small\n          accept_when: confidence >= 0.9\n";
    let outcome = runtime(&mock)
        .run(&sampled_step("", route), &context("WIN MONEY NOW"))
        .await;
    let AiOutcome::Failed { kind, record, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(kind, "ai_failed");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 3, "{record}");
}

#[tokio::test]
async fn a_provider_returning_logprobs_is_not_sampled() {
    let mut answer = labelled("spam");
    answer["choices"][0]["logprobs"] = json!({
        "content": [
            {"token": "{\"label\":\"", "logprob": -0.01, "bytes": null, "top_logprobs": []},
            {"token": "spam", "logprob": -0.2, "bytes": null, "top_logprobs": []},
            {"token": "\"}", "logprob": -0.001, "bytes": null, "top_logprobs": []}
        ],
        "refusal": null
    });
    let (mock, seen) = scripted(vec![
        ("small", answer),
        ("small", labelled("ham")),
        ("small", labelled("ham")),
        ("small", labelled("ham")),
    ])
    .await;
    let runtime = runtime(&mock);
    let step = sampled_step("", "        - model: small\n");
    let outcome = runtime.run(&step, &context("WIN MONEY NOW")).await;
    let AiOutcome::Proposed {
        output,
        confidence,
        confidence_method,
        record,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(output, json!({"label": "spam"}));
    assert_eq!(confidence_method, "logprob_label");
    assert!((confidence - (-0.2f64).exp()).abs() < 1e-12, "{confidence}");
    assert_eq!(mock.hits(), 1, "log-probabilities make samples unnecessary");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0]["logprobs"], true);
    // The same step, answered without log-probabilities, is sampled.
    let outcome = runtime.run(&step, &context("see you at lunch")).await;
    let AiOutcome::Proposed {
        confidence_method, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(confidence_method, "agreement");
    assert_eq!(mock.hits(), 4);
}

/// The budget admits the first answer and one sample: sampling stops at the first refusal,
/// nothing is overspent, and the samples never drawn count as disagreeing (2 of k = 4).
#[tokio::test]
async fn a_budget_that_admits_two_calls_stops_sampling_without_overspending() {
    let mock = mock(|_, _| async { json_reply(200, labelled("spam")) }).await;
    // Each call reserves (its characters / 3 + 16 input tokens + 100 output tokens) at $1 per
    // million and settles at 29 tokens: the limit admits a first call and a second, not a third.
    let text = "hello";
    let system_chars =
        "Answer with only a JSON object {\"label\": …} where label is one of: spam, ham.".len();
    let estimate_tokens = ((system_chars + text.len()) / 3 + 16 + 100) as f64;
    let limit = (29.0 + estimate_tokens + 10.0) / 1e6;
    let toml = format!(
        "[budgets.total]\ndaily_usd = {limit}\n[models.small]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n[models.small.price]\ninput = 1\noutput = 1\n",
        mock.base_url
    );
    let runtime = Runtime::new(
        Config::parse("keel.toml", &toml).unwrap(),
        reqwest::Client::new(),
    );
    let step = ai_step("      task: classify\n      labels: [spam, ham]\n      prompt: \"{{ input.text }}\"\n      samples: 4\n      max_tokens: 100\n      route:\n        - model: small\n");
    let outcome = runtime.run(&step, &context(text)).await;
    let AiOutcome::Proposed {
        output,
        confidence,
        confidence_method,
        record,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(output, json!({"label": "spam"}));
    assert_eq!(confidence_method, "agreement");
    assert!((confidence - 2.0 / 4.0).abs() < 1e-12, "{confidence}");
    assert_eq!(
        mock.hits(),
        2,
        "the third call was refused before it was sent"
    );
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        3,
        "the first refusal stops sampling: {attempts:?}"
    );
    assert_eq!(attempts[2]["sample"], 2);
    assert_eq!(attempts[2]["error"], "budget_exhausted");
    assert_eq!(attempts[0]["agreement"]["drawn"], 2);
    let spent = runtime
        .budgets()
        .spent_today(chrono::Utc::now().date_naive());
    assert!(spent <= limit, "spent {spent} of {limit}");
    assert!((spent - 2.0 * 29.0 / 1e6).abs() < 1e-12, "{spent}");
    let cost = record["cost_usd"].as_f64().unwrap();
    assert!((cost - 2.0 * 29.0 / 1e6).abs() < 1e-12, "{cost}");
}
