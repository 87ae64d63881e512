//! Running an `ai` step: the cascade of tiers, each answer validated against the output schema
//! and the step's CEL checks, a bounded re-ask that tells the model what was wrong, confidence
//! with its method, `accept_when`, and a record of every attempt with tokens, cost and latency.
//!
//! Nothing here is accepted unchecked: an answer is either valid and accepted by its tier, or
//! the next tier runs, or the step ends in `AiOutcome::Failed` (an exception for a person).
//!
//! Confidence is in [0, 1] and recorded with its method, raw, so that it can be recalibrated
//! later: `learner` (the local learner's probability), `logprob_label` / `logprob_mean` (token
//! log-probabilities, when the provider returns them), `agreement` (with `samples: k > 1` and no
//! log-probabilities: k - 1 more answers are drawn and confidence is the share of the k that agree
//! with the majority answer), else `none` (0).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use keel_core::case::AiOutcome;
use keel_core::expr::Activation;
use keel_core::workflow::{Ai, AiTask};
use serde_json::{json, Value};

use crate::budget::{to_nano, Budgets};
use crate::cache::Cache;
use crate::config::{Config, ModelConfig, ProviderKind};
use crate::learner::Learner;
use crate::provider::{
    ChatRequest, ChatResponse, Message, ProviderClient, ResponseFormat, Role, Usage,
};

/// The case values an `ai` step's checks and `accept_when` see, and the rendered prompts.
pub struct StepContext {
    pub workflow: String,
    pub step: String,
    pub input: Value,
    pub data: Value,
    pub case: Value,
    pub now: chrono::DateTime<chrono::Utc>,
    pub system: Option<String>,
    pub prompt: String,
}

/// The temperature of the extra samples drawn for agreement when the step's temperature is 0 or
/// unset: at 0 a model repeats its first answer and agreement would say nothing. A step with a
/// temperature above 0 samples at its own temperature.
pub const SAMPLING_TEMPERATURE: f64 = 0.7;

/// A valid answer of one tier, with its confidence and where in the record it was given.
struct Answer {
    output: Value,
    confidence: f64,
    method: &'static str,
    /// The index in the record's attempts of the call that gave `output` (marked `accepted`).
    attempt: usize,
}

/// What every model call of one tier shares.
struct TierCall<'a> {
    ai: &'a Ai,
    context: &'a StepContext,
    model: &'a ModelConfig,
    client: &'a ProviderClient,
    tier: usize,
}

/// Why a call gave no response; either way its attempt is already in the record.
enum NoResponse {
    BudgetRefused,
    Failed,
}

/// Where a tier's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSource {
    /// A request to the model's provider.
    Provider,
    /// The response cache answered; no request was sent and nothing was billed.
    Cache,
    /// Keel's built-in learner (`provider = "local"`) predicted, in process.
    Learner,
}

impl CallSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CallSource::Provider => "provider",
            CallSource::Cache => "cache",
            CallSource::Learner => "learner",
        }
    }
}

/// One model call as it ended, for observers (the engine's OpenTelemetry spans): a request
/// to a provider, a cache hit, or a prediction of the local learner.
pub struct ModelCall<'a> {
    pub model: &'a ModelConfig,
    /// The chat request (`None` for the learner, which reads the rendered prompt).
    pub request: Option<&'a ChatRequest>,
    pub source: CallSource,
    /// The usage and the model the provider reported, or the error code.
    pub outcome: Result<(Option<Usage>, Option<&'a str>), &'a str>,
    pub started: std::time::SystemTime,
    pub latency: std::time::Duration,
    pub cost_usd: Option<f64>,
    /// `(case id, workflow, step)` for a workflow step; `None` for the gateway.
    pub step: Option<(&'a str, &'a str, &'a str)>,
    /// The gateway's caller.
    pub caller: Option<&'a str>,
}

/// Told of every model call an `ai` step makes (see [`Runtime::observe`]); must not block.
pub type CallObserver = Arc<dyn Fn(&ModelCall<'_>) + Send + Sync>;

/// The AI layer at run time: one client per configured model and the local learners.
pub struct Runtime {
    config: Config,
    clients: BTreeMap<String, ProviderClient>,
    /// By `workflow/step`.
    /// Each step's serving learner and its stored version (0: not from the store).
    learners: RwLock<BTreeMap<String, (Arc<Learner>, i64)>>,
    budgets: Budgets,
    cache: Cache,
    /// Fitted confidence calibrators by (`workflow/step`, model): where one exists, the
    /// calibrated confidence is what `accept_when` (and then trust policies) see.
    calibrators: RwLock<BTreeMap<(String, String), keel_tuning::calibration::Calibrator>>,
    observer: RwLock<Option<CallObserver>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("models", &self.clients.keys())
            .finish()
    }
}

impl Runtime {
    /// Installs (or with `None` removes) the calibrator of `model` on `workflow/step`. An
    /// identity calibrator (the raw confidence was better) is not installed.
    pub fn set_calibrator(
        &self,
        ai_step: &str,
        model: &str,
        calibrator: Option<keel_tuning::calibration::Calibrator>,
    ) {
        if let Ok(mut map) = self.calibrators.write() {
            let key = (ai_step.to_string(), model.to_string());
            match calibrator.filter(|c| c.kind() != "none") {
                Some(calibrator) => {
                    map.insert(key, calibrator);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
    }

    fn calibrator(
        &self,
        workflow: &str,
        step: &str,
        model: &str,
    ) -> Option<keel_tuning::calibration::Calibrator> {
        let map = self.calibrators.read().ok()?;
        map.get(&(format!("{workflow}/{step}"), model.to_string()))
            .cloned()
    }

    pub fn new(config: Config, http: reqwest::Client) -> Runtime {
        let clients = config
            .models
            .iter()
            .filter(|(_, model)| model.provider != ProviderKind::Local)
            .map(|(name, model)| {
                (
                    name.clone(),
                    ProviderClient::new(model.clone(), http.clone()),
                )
            })
            .collect();
        Runtime {
            budgets: Budgets::new(config.budgets.clone()),
            cache: Cache::new(config.cache.clone()),
            calibrators: RwLock::new(BTreeMap::new()),
            config,
            clients,
            learners: RwLock::new(BTreeMap::new()),
            observer: RwLock::new(None),
        }
    }

    /// Replaces the observer told of every model call (the engine sets one at start).
    pub fn observe(&self, observer: CallObserver) {
        if let Ok(mut slot) = self.observer.write() {
            *slot = Some(observer);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// The response cache (the gateway shares it with workflow steps).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The client of a configured remote model (`None` for unknown or `local` models).
    pub fn client(&self, model: &str) -> Option<&ProviderClient> {
        self.clients.get(model)
    }

    /// Replaces the learner of `workflow/step` (after training or loading from the store).
    pub fn set_learner(&self, workflow: &str, step: &str, learner: Learner) {
        self.set_learner_version(workflow, step, learner, 0);
    }

    /// Makes stored `version` the serving learner of `workflow/step`: its proposals carry
    /// `learner_version`, so reviews are counted per version.
    pub fn set_learner_version(&self, workflow: &str, step: &str, learner: Learner, version: i64) {
        if let Ok(mut learners) = self.learners.write() {
            learners.insert(learner_key(workflow, step), (Arc::new(learner), version));
        }
    }

    /// The serving learner of `workflow/step` and its stored version.
    pub fn learner_version(&self, workflow: &str, step: &str) -> Option<(Arc<Learner>, i64)> {
        self.learners
            .read()
            .ok()?
            .get(&learner_key(workflow, step))
            .cloned()
    }

    /// Runs the cascade of `ai` for one case.
    pub async fn run(&self, ai: &Ai, context: &StepContext) -> AiOutcome {
        let mut attempts: Vec<Value> = Vec::new();
        let mut path: Vec<String> = Vec::new();
        let mut cost_usd = 0.0;
        let mut cost_known = true;
        // Set when a budget refused a tier: only cheaper tiers may run after it.
        let mut budget_ceiling: Option<f64> = None;
        for (tier_index, tier) in ai.route.iter().enumerate() {
            if let (Some(ceiling), Ok(model)) = (budget_ceiling, self.config.model(&tier.model)) {
                if unit_price(model) >= ceiling {
                    attempts.push(json!({"tier": tier_index, "model": tier.model, "skipped": "not cheaper than a tier the budget refused"}));
                    continue;
                }
            }
            path.push(tier.model.clone());
            let Ok(model) = self.config.model(&tier.model) else {
                attempts.push(
                    json!({"tier": tier_index, "model": tier.model, "error": "unknown_model",
                    "message": format!("model `{}` is not declared in keel.toml", tier.model)}),
                );
                continue;
            };
            let answer = match model.provider {
                ProviderKind::Local => {
                    self.ask_learner(ai, context, model, &mut attempts, tier_index)
                }
                _ => {
                    self.ask_model(
                        ai,
                        context,
                        model,
                        &mut attempts,
                        tier_index,
                        &mut cost_usd,
                        &mut cost_known,
                    )
                    .await
                }
            };
            let Some(answer) = answer else {
                if attempts
                    .last()
                    .is_some_and(|a| a["error"] == "budget_exhausted")
                {
                    budget_ceiling =
                        Some(budget_ceiling.unwrap_or(f64::MAX).min(unit_price(model)));
                }
                continue;
            };
            let raw_confidence = answer.confidence;
            let calibrator = self.calibrator(&context.workflow, &context.step, &tier.model);
            let confidence = calibrator
                .as_ref()
                .map_or(raw_confidence, |c| c.apply(raw_confidence).clamp(0.0, 1.0));
            let accepted = match &tier.accept_when {
                None => Ok(true),
                Some(expr) => {
                    let mut activation = activation(context);
                    activation.set("output", &answer.output);
                    activation.set("confidence", &json!(confidence));
                    activation.set("raw_confidence", &json!(raw_confidence));
                    activation.set("cost", &json!(cost_usd));
                    activation.set("tier", &json!(tier_index as i64));
                    expr.eval_bool(&activation).map_err(|e| e.to_string())
                }
            };
            if let Some(attempt) = attempts.get_mut(answer.attempt) {
                attempt["accepted"] = json!(accepted.as_ref().is_ok_and(|a| *a));
                if let Err(error) = &accepted {
                    attempt["accept_when_error"] = json!(error);
                }
            }
            if let (Some(calibrator), Some(attempt)) =
                (&calibrator, attempts.get_mut(answer.attempt))
            {
                attempt["calibrated_confidence"] = json!(confidence);
                attempt["calibrator"] = json!(calibrator.kind());
            }
            if accepted == Ok(true) {
                let learner_version = attempts
                    .get(answer.attempt)
                    .and_then(|a| a.get("learner_version"))
                    .cloned();
                let mut record = record(&path, attempts, cost_usd, cost_known);
                if let Some(version) = learner_version.filter(|v| v.as_i64() > Some(0)) {
                    record["learner_version"] = version;
                }
                if let Some(calibrator) = &calibrator {
                    record["raw_confidence"] = json!(raw_confidence);
                    record["calibrator"] = json!(calibrator.kind());
                }
                return AiOutcome::Proposed {
                    output: answer.output,
                    confidence,
                    confidence_method: answer.method.to_string(),
                    model: tier.model.clone(),
                    tier: tier_index,
                    record,
                };
            }
        }
        let message = format!(
            "no tier of the route ({}) gave an accepted answer",
            ai.route
                .iter()
                .map(|t| t.model.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
        let (kind, message) = match budget_ceiling {
            Some(_) => (
                "budget_exhausted",
                format!("{message}: the budget refused a tier and no cheaper one was accepted"),
            ),
            None => ("ai_failed", message),
        };
        AiOutcome::Failed {
            kind: kind.to_string(),
            message,
            record: record(&path, attempts, cost_usd, cost_known),
        }
    }

    /// Tells the observer, if any, of one call.
    fn tell(&self, call: &ModelCall<'_>) {
        if let Some(observer) = self.observer.read().ok().and_then(|o| o.clone()) {
            observer(call);
        }
    }

    fn ask_learner(
        &self,
        ai: &Ai,
        context: &StepContext,
        model: &ModelConfig,
        attempts: &mut Vec<Value>,
        tier: usize,
    ) -> Option<Answer> {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let AiTask::Classify { labels } = &ai.task else {
            attempts.push(json!({"tier": tier, "model": model.name, "provider": "local", "error": "unsupported",
                "message": "the local learner only serves classify tasks"}));
            return None;
        };
        let serving = self.learner_version(&context.workflow, &context.step);
        let version = serving.as_ref().map_or(0, |(_, v)| *v);
        let prediction =
            serving.and_then(|(learner, _)| learner.predict_within(&context.prompt, labels));
        self.tell(&ModelCall {
            model,
            request: None,
            source: CallSource::Learner,
            outcome: match prediction {
                Some(_) => Ok((None, None)),
                None => Err("untrained"),
            },
            started: started_at,
            latency: started.elapsed(),
            cost_usd: Some(0.0),
            step: step_of(context),
            caller: None,
        });
        let Some(prediction) = prediction else {
            attempts.push(json!({"tier": tier, "model": model.name, "provider": "local", "error": "untrained",
                "message": "the learner has not seen enough labelled examples yet", "cost_usd": 0.0}));
            return None;
        };
        let output = json!({"label": prediction.label});
        let latency_us = started.elapsed().as_micros() as u64;
        let problems = self.problems(ai, context, &output);
        let attempt = attempts.len();
        attempts.push(
            json!({"tier": tier, "model": model.name, "provider": "local", "output": output,
            "confidence": prediction.probability, "confidence_method": "learner", "cost_usd": 0.0,
            "latency_us": latency_us, "problems": problems, "learner_version": version}),
        );
        problems.is_empty().then_some(Answer {
            output,
            confidence: prediction.probability,
            method: "learner",
            attempt,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn ask_model(
        &self,
        ai: &Ai,
        context: &StepContext,
        model: &ModelConfig,
        attempts: &mut Vec<Value>,
        tier: usize,
        cost_usd: &mut f64,
        cost_known: &mut bool,
    ) -> Option<Answer> {
        let call = TierCall {
            ai,
            context,
            model,
            client: self.clients.get(&model.name)?,
            tier,
        };
        let mut request = chat_request(ai, context, model);
        let now_ms = context.now.timestamp_millis();
        for ask in 0..=ai.reask {
            let cache_key = self.cache.key(&model.name, &request);
            if let Some(response) = cache_key
                .as_ref()
                .and_then(|key| self.cache.get(key, now_ms))
            {
                self.tell(&ModelCall {
                    model,
                    request: Some(&request),
                    source: CallSource::Cache,
                    // Nothing was used or billed: the usage belongs to the call that was cached.
                    outcome: Ok((None, response.response_model.as_deref())),
                    started: std::time::SystemTime::now(),
                    latency: std::time::Duration::ZERO,
                    cost_usd: Some(0.0),
                    step: step_of(context),
                    caller: None,
                });
                let attempt = json!({"tier": tier, "model": model.name, "provider": model.provider.as_str(),
                    "ask": ask, "cache_hit": true, "cost_usd": 0.0, "request_sha256": request_sha256(&request)});
                if let Ok(output) = self.judge(ai, context, &response.text) {
                    let first = accept(ai, &response, output, attempt, attempts);
                    return Some(
                        self.agree(&call, &request, first, attempts, cost_usd, cost_known)
                            .await,
                    );
                }
            }
            let attempt = json!({"tier": tier, "model": model.name, "ask": ask});
            let sent = self
                .send(&call, &request, attempt, attempts, cost_usd, cost_known)
                .await;
            let Ok((response, mut attempt)) = sent else {
                return None;
            };
            let problems = match self.judge(ai, context, &response.text) {
                Ok(output) => {
                    attempt["problems"] = json!([]);
                    if let Some(key) = cache_key {
                        // Only answers that passed every check are worth serving again.
                        self.cache.put(key, response.clone(), now_ms);
                    }
                    let first = accept(ai, &response, output, attempt, attempts);
                    return Some(
                        self.agree(&call, &request, first, attempts, cost_usd, cost_known)
                            .await,
                    );
                }
                Err(problems) => problems,
            };
            attempt["problems"] = json!(problems);
            attempts.push(attempt);
            // Tell the model what was wrong and ask again (bounded by `reask`).
            request.messages.push(Message {
                role: Role::Assistant,
                content: response.text.clone(),
            });
            request.messages.push(Message {
                role: Role::User,
                content: format!(
                    "That answer is not acceptable: {}. Answer again with only a JSON object that matches this schema: {}",
                    problems.join("; "),
                    ai.output_schema.json()
                ),
            });
        }
        None
    }

    /// Sends one request under a budget reservation and records the call in `attempt`: retries,
    /// latency, usage, cost (added to the cascade's) and the response, or only its hash under
    /// redaction. When the budget refuses the call or the provider fails, the attempt is pushed
    /// to `attempts` and the reason returned.
    async fn send(
        &self,
        call: &TierCall<'_>,
        request: &ChatRequest,
        mut attempt: Value,
        attempts: &mut Vec<Value>,
        cost_usd: &mut f64,
        cost_known: &mut bool,
    ) -> Result<(ChatResponse, Value), NoResponse> {
        let (model, date) = (call.model, call.context.now.date_naive());
        let estimate = to_nano(estimate_cost(model, request, date));
        let workflow = Some(call.context.workflow.as_str());
        let reservation = match self.budgets.reserve(workflow, None, date, estimate) {
            Ok(reservation) => reservation,
            Err(exhausted) => {
                attempt["error"] = json!("budget_exhausted");
                attempt["message"] = json!(exhausted.to_string());
                attempts.push(attempt);
                return Err(NoResponse::BudgetRefused);
            }
        };
        let started = std::time::SystemTime::now();
        let (result, stats) = call.client.chat(request).await;
        let cost = match &result {
            Ok(response) => cost_of(model, response.usage, date),
            Err(_) => Some(0.0),
        };
        self.budgets.settle(reservation, cost.map(to_nano));
        self.tell(&ModelCall {
            model,
            request: Some(request),
            source: CallSource::Provider,
            outcome: match &result {
                Ok(response) => Ok((response.usage, response.response_model.as_deref())),
                Err(error) => Err(error.code()),
            },
            started,
            latency: std::time::Duration::from_millis(stats.latency_ms),
            cost_usd: cost,
            step: step_of(call.context),
            caller: None,
        });
        attempt["provider"] = json!(model.provider.as_str());
        attempt["attempts"] = json!(stats.attempts);
        attempt["latency_ms"] = json!(stats.latency_ms);
        attempt["request_sha256"] = json!(request_sha256(request));
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                attempt["error"] = json!(error.code());
                attempt["message"] = json!(error.to_string());
                match error.raw() {
                    Some(raw) if self.config.journal.redact_text => {
                        attempt["raw_sha256"] = json!(sha256_hex(raw.as_bytes()));
                    }
                    Some(raw) => attempt["raw"] = json!(raw),
                    None => {}
                }
                attempts.push(attempt);
                return Err(NoResponse::Failed);
            }
        };
        match cost {
            Some(cost) => *cost_usd += cost,
            None => *cost_known = false,
        }
        attempt["usage"] = json!(response.usage);
        attempt["cost_usd"] = json!(cost);
        if self.config.journal.redact_text {
            attempt["response_sha256"] = json!(sha256_hex(response.text.as_bytes()));
        } else {
            attempt["response"] = json!(response.text);
        }
        attempt["cache_hit"] = json!(false);
        Ok((response, attempt))
    }

    /// When the tier's first valid answer has no confidence of its own (no log-probabilities)
    /// and the step asks for `samples: k > 1`, draws k - 1 more answers to the same request and
    /// returns the majority answer (ties go to the one given first) with confidence = the share
    /// of the k samples that agree with it. Invalid answers, failed calls and samples the budget
    /// refused (which stops sampling) count as disagreeing. Samples are fresh calls at
    /// `SAMPLING_TEMPERATURE` unless the step sets a temperature above 0, never served from the
    /// cache and never cached.
    async fn agree(
        &self,
        call: &TierCall<'_>,
        request: &ChatRequest,
        first: Answer,
        attempts: &mut Vec<Value>,
        cost_usd: &mut f64,
        cost_known: &mut bool,
    ) -> Answer {
        let k = call.ai.samples;
        if k <= 1 || first.method != "none" {
            return first;
        }
        let mut request = request.clone();
        if request.temperature.unwrap_or(0.0) == 0.0 {
            request.temperature = Some(SAMPLING_TEMPERATURE);
        }
        if let Some(attempt) = attempts.get_mut(first.attempt) {
            attempt["sample"] = json!(0);
        }
        // Each valid sample's output and the index of its attempt in the record.
        let mut valid = vec![(first.output, first.attempt)];
        let mut drawn = 1;
        for sample in 1..k {
            let attempt = json!({"tier": call.tier, "model": call.model.name, "sample": sample});
            let sent = self
                .send(call, &request, attempt, attempts, cost_usd, cost_known)
                .await;
            drawn += u32::from(!matches!(sent, Err(NoResponse::BudgetRefused)));
            let (response, mut attempt) = match sent {
                Ok(sent) => sent,
                Err(NoResponse::BudgetRefused) => break,
                Err(NoResponse::Failed) => continue,
            };
            match self.judge(call.ai, call.context, &response.text) {
                Ok(output) => {
                    attempt["problems"] = json!([]);
                    attempt["output"] = output.clone();
                    valid.push((output, attempts.len()));
                }
                Err(problems) => attempt["problems"] = json!(problems),
            }
            attempts.push(attempt);
        }
        let keys: Vec<String> = valid
            .iter()
            .map(|(output, _)| normalised_answer(&call.ai.task, output))
            .collect();
        let counts = answer_counts(&keys);
        let (proposal, agree) = majority(&counts);
        let position = keys.iter().position(|key| key == proposal).unwrap_or(0);
        let (output, attempt) = valid.swap_remove(position);
        let confidence = f64::from(agree) / f64::from(k);
        let answers: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(key, count)| (key.to_string(), json!(count)))
            .collect();
        if let Some(record) = attempts.get_mut(attempt) {
            record["confidence"] = json!(confidence);
            record["confidence_method"] = json!("agreement");
            record["agreement"] = json!({"k": k, "drawn": drawn, "agree": agree,
                "answers": answers, "temperature": request.temperature});
        }
        Answer {
            output,
            confidence,
            method: "agreement",
            attempt,
        }
    }

    /// The answer in `text` when it parses and has no problems, else its problems.
    fn judge(&self, ai: &Ai, context: &StepContext, text: &str) -> Result<Value, Vec<String>> {
        let output = parse_answer(ai, text).map_err(|problem| vec![problem])?;
        let problems = self.problems(ai, context, &output);
        if problems.is_empty() {
            Ok(output)
        } else {
            Err(problems)
        }
    }

    /// Schema violations and failed checks of one output, as messages for the model and the record.
    fn problems(&self, ai: &Ai, context: &StepContext, output: &Value) -> Vec<String> {
        if let Err(violations) = ai.output_schema.validate(output) {
            return violations
                .into_iter()
                .map(|v| {
                    format!(
                        "{} {}",
                        if v.path.is_empty() {
                            "the answer"
                        } else {
                            &v.path
                        },
                        v.message
                    )
                })
                .collect();
        }
        let mut activation = activation(context);
        activation.set("output", output);
        let mut problems = Vec::new();
        for check in &ai.checks {
            match check.expr.eval_bool(&activation) {
                Ok(true) => {}
                Ok(false) => problems.push(check.message.clone()),
                Err(error) => problems.push(format!("{} ({error})", check.message)),
            }
        }
        problems
    }
}

/// Records a valid answer with its confidence and returns it for `accept_when`.
fn accept(
    ai: &Ai,
    response: &ChatResponse,
    output: Value,
    mut attempt: Value,
    attempts: &mut Vec<Value>,
) -> Answer {
    let (confidence, method) = confidence(ai, response, &output);
    attempt["output"] = output.clone();
    attempt["confidence"] = json!(confidence);
    attempt["confidence_method"] = json!(method);
    attempts.push(attempt);
    Answer {
        output,
        confidence,
        method,
        attempt: attempts.len() - 1,
    }
}

/// What two samples must share to agree: the label of a `classify` answer, otherwise the whole
/// output as canonical JSON (object keys sorted), so that key order does not matter.
fn normalised_answer(task: &AiTask, output: &Value) -> String {
    match (task, output.get("label").and_then(Value::as_str)) {
        (AiTask::Classify { .. }, Some(label)) => label.to_string(),
        _ => canonical_json(output).to_string(),
    }
}

fn canonical_json(value: &Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.clone(), canonical_json(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical_json).collect()),
        other => other.clone(),
    }
}

/// Each distinct answer with how many samples gave it, in order of first appearance.
fn answer_counts(keys: &[String]) -> Vec<(&str, u32)> {
    let mut counts: Vec<(&str, u32)> = Vec::new();
    for key in keys {
        match counts.iter_mut().find(|(seen, _)| *seen == key.as_str()) {
            Some((_, count)) => *count += 1,
            None => counts.push((key, 1)),
        }
    }
    counts
}

/// The most frequent answer and its count; a tie goes to the answer that appeared first.
fn majority<'a>(counts: &[(&'a str, u32)]) -> (&'a str, u32) {
    let mut best = ("", 0);
    for &(key, count) in counts {
        if count > best.1 {
            best = (key, count);
        }
    }
    best
}

fn learner_key(workflow: &str, step: &str) -> String {
    format!("{workflow}/{step}")
}

fn activation(context: &StepContext) -> Activation {
    Activation::new(&context.input, &context.data, &context.case, context.now)
}

fn record(path: &[String], attempts: Vec<Value>, cost_usd: f64, cost_known: bool) -> Value {
    json!({"path": path, "attempts": attempts, "cost_usd": cost_usd, "cost_known": cost_known})
}

fn chat_request(ai: &Ai, context: &StepContext, model: &ModelConfig) -> ChatRequest {
    let mut messages = Vec::new();
    let instruction = match &ai.task {
        AiTask::Classify { labels } => format!(
            "Answer with only a JSON object {{\"label\": …}} where label is one of: {}.",
            labels.join(", ")
        ),
        AiTask::Extract | AiTask::Generate => format!(
            "Answer with only a JSON object that matches this JSON Schema: {}",
            ai.output_schema.json()
        ),
    };
    let system = match &context.system {
        Some(system) => format!("{system}\n\n{instruction}"),
        None => instruction,
    };
    messages.push(Message {
        role: Role::System,
        content: system,
    });
    messages.push(Message {
        role: Role::User,
        content: context.prompt.clone(),
    });
    ChatRequest {
        messages,
        temperature: Some(ai.temperature.unwrap_or(0.0)),
        max_tokens: Some(ai.max_tokens),
        response_format: ResponseFormat::JsonSchema {
            name: "answer".to_string(),
            schema: ai.output_schema.json().clone(),
            strict: false,
        },
        // One alternative per token: some servers (llama.cpp) return no log-probabilities for 0.
        logprobs: model.logprobs.then_some(1),
        stop: Vec::new(),
    }
}

pub fn request_sha256(request: &ChatRequest) -> String {
    sha256_hex(&serde_json::to_vec(request).unwrap_or_default())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Parses the answer text as JSON (tolerating a Markdown code fence around it).
fn parse_answer(ai: &Ai, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed)
        .trim();
    if unfenced.is_empty() {
        return Err("the answer is empty".to_string());
    }
    match serde_json::from_str::<Value>(unfenced) {
        Ok(value) => Ok(value),
        Err(_) if matches!(ai.task, AiTask::Generate) => Ok(json!({"text": text})),
        Err(error) => Err(format!("the answer is not JSON ({error})")),
    }
}

/// An upper estimate of a call's cost, reserved against budgets before it is sent: the request's
/// characters as input tokens (a token is at least one character) and `max_tokens` of output.
pub fn estimate_cost(model: &ModelConfig, request: &ChatRequest, date: chrono::NaiveDate) -> f64 {
    let input_chars: usize = request.messages.iter().map(|m| m.content.len()).sum();
    let usage = Usage {
        input_tokens: input_chars as u64 / 3 + 16,
        output_tokens: u64::from(request.max_tokens.unwrap_or(1024)),
        cached_input_tokens: 0,
    };
    cost_of(model, Some(usage), date).unwrap_or(0.0)
}

/// A model's price per token for ordering tiers by cost (input plus output, per million).
fn unit_price(model: &ModelConfig) -> f64 {
    if model.provider == ProviderKind::Local {
        return 0.0;
    }
    model
        .prices
        .first()
        .map_or(f64::MAX, |p| p.input_per_million + p.output_per_million)
}

/// USD for `usage` at the price in force on `date`; `None` (unknown) without usage or price.
pub fn cost_of(model: &ModelConfig, usage: Option<Usage>, date: chrono::NaiveDate) -> Option<f64> {
    if model.provider == ProviderKind::Local {
        return Some(0.0);
    }
    let usage = usage?;
    let price = model.price_on(date)?;
    let uncached = usage.input_tokens.saturating_sub(usage.cached_input_tokens) as f64;
    Some(
        (uncached * price.input_per_million
            + usage.cached_input_tokens as f64 * price.cached_input_per_million
            + usage.output_tokens as f64 * price.output_per_million)
            / 1_000_000.0,
    )
}

/// Confidence from token log-probabilities when the provider returned them: for `classify`
/// the probability of the tokens that spell the chosen label, otherwise the geometric mean
/// token probability. Without log-probabilities: 0 with method `none`.
pub fn confidence(ai: &Ai, response: &ChatResponse, output: &Value) -> (f64, &'static str) {
    let Some(tokens) = response.logprobs.as_ref().filter(|t| !t.is_empty()) else {
        return (0.0, "none");
    };
    if let (AiTask::Classify { .. }, Some(label)) =
        (&ai.task, output.get("label").and_then(Value::as_str))
    {
        let mut text = String::new();
        let mut spans = Vec::with_capacity(tokens.len());
        for token in tokens {
            let start = text.len();
            text.push_str(&token.token);
            spans.push((start, text.len(), token.logprob));
        }
        let quoted = format!("\"{label}\"");
        if let Some(at) = text.find(&quoted) {
            let (from, to) = (at + 1, at + 1 + label.len());
            let sum: f64 = spans
                .iter()
                .filter(|(start, end, _)| *start < to && *end > from)
                .map(|(_, _, logprob)| logprob)
                .sum();
            return (sum.exp().clamp(0.0, 1.0), "logprob_label");
        }
    }
    let mean = tokens.iter().map(|t| t.logprob).sum::<f64>() / tokens.len() as f64;
    (mean.exp().clamp(0.0, 1.0), "logprob_mean")
}

/// `Runtime::run` is spawned by the engine, so its future must be `Send`.
#[allow(dead_code)]
fn run_is_send(runtime: &Runtime, ai: &Ai, context: &StepContext) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&runtime.run(ai, context));
}

/// `(case id, workflow, step)` of a step's call, for observers.
fn step_of(context: &StepContext) -> Option<(&str, &str, &str)> {
    context.case["id"]
        .as_str()
        .map(|id| (id, context.workflow.as_str(), context.step.as_str()))
}
