//! `keel.toml`: the models Keel may call, their prices, budgets, the response cache, the
//! gateway's aliases and what the journal keeps of prompts and responses.
//!
//! Parsing checks everything that can be checked without a network: provider names, URLs,
//! environment-variable names (their values are read at call time and never stored), price
//! dates, alias targets. Errors carry the file's line and column.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A checked `keel.toml`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// By name, as workflows and the gateway refer to them.
    pub models: BTreeMap<String, ModelConfig>,
    pub budgets: BudgetsConfig,
    pub cache: CacheConfig,
    pub journal: JournalConfig,
    pub gateway: GatewayConfig,
    /// Outbound webhooks (`[[webhooks]]`), in file order.
    pub webhooks: Vec<WebhookConfig>,
    /// `[change_control]`: whether a version that changes what decides waits for a governor.
    pub change_control: ChangeControlConfig,
    /// `[learning]`: how learners learn from people's decisions and test challengers.
    pub learning: LearningConfig,
}

/// `[change_control] review = "required" | "off"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeControlConfig {
    /// `true` (default): a workflow version that changes an operation waits for a governor
    /// who is not its author. `false` only for a deployment with no governor (one person
    /// trying Keel); the monthly review then says that changes were not reviewed.
    pub review: bool,
}

impl Default for ChangeControlConfig {
    fn default() -> Self {
        ChangeControlConfig { review: true }
    }
}

/// `[learning]`: see `keel_engine::learn::LearningOptions` for what each value does.
#[derive(Debug, Clone, PartialEq)]
pub struct LearningConfig {
    pub from_reviews: bool,
    /// `WORKFLOW/STEP` of steps that do not learn from reviews (`[learning.steps."W/S"]
    /// from_reviews = false`).
    pub from_reviews_off: std::collections::BTreeSet<String>,
    pub batch: usize,
    pub holdout: u64,
    pub margin: f64,
    pub alpha: f64,
    pub min_evaluation: usize,
    /// `challenger_test = "on"` (default) or `"off"`.
    pub challenger_test: bool,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            from_reviews: true,
            from_reviews_off: std::collections::BTreeSet::new(),
            batch: 20,
            holdout: 5,
            margin: 0.02,
            alpha: 0.05,
            min_evaluation: 30,
            challenger_test: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat-completions API: OpenAI, Azure-style base URLs, vLLM,
    /// llama.cpp's server, Ollama.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Keel's built-in learner (`classify` only, no network, no cost).
    Local,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Local => "local",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The key under `[models]`.
    pub name: String,
    pub provider: ProviderKind,
    /// e.g. `https://api.openai.com/v1`; requests go to `{base_url}/chat/completions`
    /// (OpenAI) or `{base_url}/messages` (Anthropic). Empty for `local`.
    pub base_url: String,
    /// The provider's model name, sent in the request body.
    pub model: String,
    /// Name of the environment variable holding the API key; `None` sends no key (local servers).
    pub api_key_env: Option<String>,
    /// Header the key goes in: `authorization` (as `Bearer …`, the default for OpenAI),
    /// `x-api-key` (the default for Anthropic) or e.g. `api-key` for Azure.
    pub api_key_header: String,
    /// Extra query parameters, e.g. `api-version` for Azure.
    pub query: BTreeMap<String, String>,
    /// Whole-request timeout per attempt.
    pub timeout_ms: u64,
    /// Calls in flight at once to this model; more wait their turn.
    pub max_concurrency: usize,
    /// Retries after the first attempt on 429, 5xx, timeouts and connection errors (0..=5).
    pub max_retries: u32,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects calls before letting one probe through.
    pub breaker_cooldown_ms: u64,
    /// Responses larger than this are rejected (the first bytes are kept for the record).
    pub max_response_bytes: usize,
    /// Whether the provider accepts `response_format: json_schema` (OpenAI) / forced tool use
    /// (Anthropic). When false, Keel asks for JSON in the prompt and still validates.
    pub structured_output: bool,
    /// Whether to ask for token log-probabilities (OpenAI-compatible only).
    pub logprobs: bool,
    /// Prices, newest `effective` first. Empty means the model's cost is unknown.
    pub prices: Vec<Price>,
}

/// USD per million tokens, from `effective` (inclusive, UTC date) on.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub effective: chrono::NaiveDate,
    pub input_per_million: f64,
    pub output_per_million: f64,
    pub cached_input_per_million: f64,
}

impl ModelConfig {
    /// The price in force on `date`, if any.
    pub fn price_on(&self, date: chrono::NaiveDate) -> Option<&Price> {
        self.prices.iter().find(|price| price.effective <= date)
    }
}

/// Limits in USD; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetLimits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct BudgetsConfig {
    /// Over every call Keel makes (workflows and gateway together).
    pub total: BudgetLimits,
    /// Per workflow name.
    pub workflows: BTreeMap<String, BudgetLimits>,
    /// Per gateway caller (API token name).
    pub callers: BTreeMap<String, BudgetLimits>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl_ms: u64,
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_ms: 3_600_000,
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JournalConfig {
    /// Keep prompt and response text out of the journal; their SHA-256 hashes are kept.
    pub redact_text: bool,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Alias → ordered models; the gateway tries them in order (fallback).
    pub aliases: BTreeMap<String, Vec<String>>,
    /// `true`: answer a call only once its journal entry is committed (fsync), which adds the
    /// commit's latency (milliseconds) to every call. `false` (default): answer first and write
    /// the entry in the background within milliseconds; a graceful stop drains the queue, but
    /// a crash (SIGKILL, power loss) can lose the entries of calls answered in its last moments.
    pub durable_journal: bool,
    /// Chat requests in flight at once (1..=100,000; default 4,096). Beyond it the gateway
    /// answers 503 with `Retry-After` at once instead of queueing without bound.
    pub max_in_flight: usize,
}

/// Default of [`GatewayConfig::max_in_flight`].
pub const GATEWAY_MAX_IN_FLIGHT: usize = 4_096;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            aliases: BTreeMap::new(),
            durable_journal: false,
            max_in_flight: GATEWAY_MAX_IN_FLIGHT,
        }
    }
}

/// The events a webhook may subscribe to: journal entry kinds.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "task.created",
    "task.due_soon",
    "task.overdue",
    "exception.raised",
    "exception.routed",
    "exception.assigned",
    "exception.escalated",
    "exception.sla_missed",
    "sla.breached",
    "drift.alert",
];

/// One `[[webhooks]]` endpoint. The secret itself is not here: only the name of the
/// environment variable that holds it, read when the engine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Unique; the delivery log and the journal refer to the endpoint by it.
    pub name: String,
    pub url: String,
    /// Name of the environment variable holding the HMAC secret.
    pub secret_env: String,
    /// Subscribed events, each one of [`WEBHOOK_EVENTS`] (`"*"` in the file means all).
    pub events: Vec<String>,
    /// Whole-request timeout per attempt (default 10 s).
    pub timeout_ms: u64,
    /// Attempts before a delivery is given up as failed (1..=50, default 12).
    pub max_attempts: u32,
}

/// A problem in `keel.toml`, with its position when known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct Error {
    pub path: String,
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<Error>> {
        let source = std::fs::read_to_string(path).map_err(|error| {
            vec![Error {
                path: path.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration: {error}"),
            }]
        })?;
        Config::parse(&path.display().to_string(), &source)
    }

    /// Checks `source` (the contents of `path`); returns every problem found.
    pub fn parse(path: &str, source: &str) -> Result<Config, Vec<Error>> {
        let raw: raw::File = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(error) => {
                let (line, column) = error
                    .span()
                    .map(|span| line_column(source, span.start))
                    .unwrap_or((0, 0));
                return Err(vec![Error {
                    path: path.to_string(),
                    line,
                    column,
                    message: error.message().to_string(),
                }]);
            }
        };
        let mut errors = Vec::new();
        let mut config = Config::default();
        for (name, model) in raw.models {
            match check_model(&name, model) {
                Ok(model) => {
                    config.models.insert(name, model);
                }
                Err(message) => errors.push(message),
            }
        }
        config.budgets = check_budgets(raw.budgets, &mut errors);
        if let Some(cache) = raw.cache {
            config.cache = CacheConfig {
                enabled: cache.enabled.unwrap_or(true),
                ttl_ms: cache.ttl_s.unwrap_or(3_600).saturating_mul(1000),
                max_entries: cache.max_entries.unwrap_or(10_000).clamp(1, 10_000_000),
            };
        }
        config.journal.redact_text = raw.journal.and_then(|j| j.redact_text).unwrap_or(false);
        let (aliases, durable_journal, max_in_flight) = raw
            .gateway
            .map(|g| (g.aliases, g.durable_journal, g.max_in_flight))
            .unwrap_or_default();
        config.gateway.durable_journal = durable_journal.unwrap_or(false);
        match max_in_flight {
            None => {}
            Some(n) if (1..=100_000).contains(&n) => config.gateway.max_in_flight = n,
            Some(n) => errors.push(format!(
                "[gateway] max_in_flight is {n}; it must be from 1 to 100000 (default {GATEWAY_MAX_IN_FLIGHT})"
            )),
        }
        for (alias, targets) in aliases {
            if targets.is_empty() {
                errors.push(format!("gateway alias `{alias}` names no model"));
            }
            for target in &targets {
                if !config.models.contains_key(target) {
                    errors.push(format!(
                        "gateway alias `{alias}` names model `{target}`, which is not under [models]"
                    ));
                }
            }
            config.gateway.aliases.insert(alias, targets);
        }
        config.webhooks = check_webhooks(raw.webhooks, &mut errors);
        if let Some(change) = raw.change_control {
            match change.review.as_deref() {
                None | Some("required") => {}
                Some("off") => config.change_control.review = false,
                Some(other) => errors.push(format!(
                    "[change_control] review is {other:?}; it is \"required\" (the default) or \"off\""
                )),
            }
        }
        if let Some(learning) = raw.learning {
            config.learning = check_learning(learning, &mut errors);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors
                .into_iter()
                .map(|message| {
                    let (line, column) = locate(source, &message);
                    Error {
                        path: path.to_string(),
                        line,
                        column,
                        message,
                    }
                })
                .collect())
        }
    }

    /// The model named `name`, or an error listing the declared ones.
    pub fn model(&self, name: &str) -> Result<&ModelConfig, String> {
        self.models.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
            format!(
                "no model `{name}` in keel.toml (declared: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

fn check_model(name: &str, raw: raw::Model) -> Result<ModelConfig, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "model name `{name}`: use letters, digits, `-`, `_`, `.` or `:`"
        ));
    }
    let base_url = raw
        .base_url
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    if raw.provider != ProviderKind::Local {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(format!(
                "[models.{name}] base_url must start with http:// or https:// (got `{base_url}`)"
            ));
        }
        if raw.model.as_deref().unwrap_or("").is_empty() {
            return Err(format!(
                "[models.{name}] needs `model`, the provider's model name"
            ));
        }
    }
    if let Some(env) = &raw.api_key_env {
        if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "[models.{name}] api_key_env names an environment variable (e.g. OPENAI_API_KEY), not a key; got `{}`",
                if env.len() > 12 { "<hidden>" } else { env }
            ));
        }
    }
    let mut prices = Vec::new();
    for raw_price in raw.price.into_iter().chain(raw.prices) {
        let effective = match &raw_price.effective {
            Some(date) => chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| {
                format!("[models.{name}] price effective date `{date}` is not YYYY-MM-DD")
            })?,
            None => chrono::NaiveDate::MIN,
        };
        for (what, value) in [
            ("input", raw_price.input),
            ("output", raw_price.output),
            ("cached_input", raw_price.cached_input.unwrap_or(0.0)),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!(
                    "[models.{name}] price `{what}` must be a non-negative number of USD per million tokens"
                ));
            }
        }
        prices.push(Price {
            effective,
            input_per_million: raw_price.input,
            output_per_million: raw_price.output,
            cached_input_per_million: raw_price.cached_input.unwrap_or(raw_price.input),
        });
    }
    prices.sort_by_key(|price| std::cmp::Reverse(price.effective));
    let default_header = match raw.provider {
        ProviderKind::Anthropic => "x-api-key",
        _ => "authorization",
    };
    Ok(ModelConfig {
        name: name.to_string(),
        provider: raw.provider,
        base_url,
        model: raw.model.unwrap_or_else(|| name.to_string()),
        api_key_env: raw.api_key_env,
        api_key_header: raw
            .api_key_header
            .unwrap_or_else(|| default_header.to_string())
            .to_ascii_lowercase(),
        query: raw.query,
        timeout_ms: raw
            .timeout_s
            .unwrap_or(60.0)
            .clamp(0.01, 3_600.0)
            .mul_add(1000.0, 0.0) as u64,
        max_concurrency: raw.max_concurrency.unwrap_or(16).clamp(1, 4096),
        max_retries: raw.max_retries.unwrap_or(2).min(5),
        breaker_failures: raw.breaker_failures.unwrap_or(5).clamp(1, 1000),
        breaker_cooldown_ms: raw
            .breaker_cooldown_s
            .unwrap_or(30.0)
            .clamp(0.01, 3_600.0)
            .mul_add(1000.0, 0.0) as u64,
        max_response_bytes: raw
            .max_response_bytes
            .unwrap_or(4 << 20)
            .clamp(1024, 64 << 20),
        structured_output: raw.structured_output.unwrap_or(true),
        logprobs: raw.logprobs.unwrap_or(raw.provider == ProviderKind::Openai),
        prices,
    })
}

fn check_budgets(raw: Option<raw::Budgets>, errors: &mut Vec<String>) -> BudgetsConfig {
    let Some(raw) = raw else {
        return BudgetsConfig::default();
    };
    let mut check = |scope: &str, limits: raw::Limits| -> BudgetLimits {
        for value in [limits.daily_usd, limits.monthly_usd].into_iter().flatten() {
            if !(value.is_finite() && value >= 0.0) {
                errors.push(format!(
                    "budget for {scope} must be a non-negative USD amount"
                ));
            }
        }
        BudgetLimits {
            daily_usd: limits.daily_usd,
            monthly_usd: limits.monthly_usd,
        }
    };
    let total = check("the total", raw.total);
    let workflows = raw
        .workflows
        .into_iter()
        .map(|(name, limits)| {
            let limits = check(&format!("workflow `{name}`"), limits);
            (name, limits)
        })
        .collect();
    let callers = raw
        .callers
        .into_iter()
        .map(|(name, limits)| {
            let limits = check(&format!("caller `{name}`"), limits);
            (name, limits)
        })
        .collect();
    BudgetsConfig {
        total,
        workflows,
        callers,
    }
}

fn check_learning(raw: raw::Learning, errors: &mut Vec<String>) -> LearningConfig {
    let mut config = LearningConfig::default();
    if let Some(on) = raw.from_reviews {
        config.from_reviews = on;
    }
    match raw.batch {
        None => {}
        Some(n) if (1..=1_000).contains(&n) => config.batch = n,
        Some(n) => errors.push(format!(
            "[learning] batch is {n}; it must be from 1 to 1000 (default 20)"
        )),
    }
    match raw.holdout {
        None => {}
        Some(n) if (2..=100).contains(&n) => config.holdout = n,
        Some(n) => errors.push(format!("[learning] holdout is {n}; it must be from 2 to 100 (one reviewed case in `holdout` is kept for tests; default 5)")),
    }
    match raw.margin {
        None => {}
        Some(m) if (0.0..0.5).contains(&m) => config.margin = m,
        Some(m) => errors.push(format!(
            "[learning] margin is {m}; it must be at least 0 and below 0.5 (default 0.02)"
        )),
    }
    match raw.alpha {
        None => {}
        Some(a) if a > 0.0 && a <= 0.2 => config.alpha = a,
        Some(a) => errors.push(format!(
            "[learning] alpha is {a}; it must be above 0 and at most 0.2 (default 0.05)"
        )),
    }
    match raw.min_evaluation {
        None => {}
        Some(n) if (10..=100_000).contains(&n) => config.min_evaluation = n,
        Some(n) => errors.push(format!(
            "[learning] min_evaluation is {n}; it must be from 10 to 100000 (default 30)"
        )),
    }
    match raw.challenger_test.as_deref() {
        None | Some("on") => {}
        Some("off") => config.challenger_test = false,
        Some(other) => errors.push(format!(
            "[learning] challenger_test is {other:?}; it is \"on\" (the default) or \"off\""
        )),
    }
    for (key, step) in raw.steps {
        if key.split('/').count() != 2 {
            errors.push(format!(
                "[learning.steps.\"{key}\"]: name a step as \"WORKFLOW/STEP\""
            ));
        } else if step.from_reviews == Some(false) {
            config.from_reviews_off.insert(key);
        }
    }
    config
}

fn check_webhooks(raw: Vec<raw::Webhook>, errors: &mut Vec<String>) -> Vec<WebhookConfig> {
    let mut checked: Vec<WebhookConfig> = Vec::new();
    for webhook in raw {
        let name = webhook.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.push(format!(
                "`{name}` is not a webhook name: use letters, digits, `-`, `_` or `.`"
            ));
            continue;
        }
        if checked.iter().any(|other| other.name == name) {
            errors.push(format!(
                "`{name}` names two [[webhooks]]; names must be unique"
            ));
            continue;
        }
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            errors.push(format!(
                "`{}` is not a webhook url: it must start with http:// or https:// (webhook {name})",
                webhook.url
            ));
        }
        let env = &webhook.secret_env;
        if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(format!(
                "`{}` is not an environment variable name: webhook {name}'s secret_env names the variable that holds the secret (e.g. KEEL_WEBHOOK_SECRET_OPS), not the secret",
                if env.len() > 12 { "<hidden>" } else { env }
            ));
        }
        let mut events = Vec::new();
        for event in &webhook.events {
            if event == "*" {
                events.extend(WEBHOOK_EVENTS.iter().map(|known| known.to_string()));
            } else if WEBHOOK_EVENTS.contains(&event.as_str()) {
                events.push(event.clone());
            } else {
                errors.push(format!(
                    "`{event}` is not a webhook event (webhook {name}); known: {}, or \"*\" for all",
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        events.sort();
        events.dedup();
        if webhook.events.is_empty() {
            errors.push(format!(
                "`{name}` subscribes to no events: list some in `events`, or \"*\" for all"
            ));
        }
        let timeout_s = webhook.timeout_s.unwrap_or(10.0);
        if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= 300.0) {
            errors.push(format!(
                "`{name}` has timeout_s = {timeout_s}; give seconds in (0, 300]"
            ));
        }
        let max_attempts = webhook.max_attempts.unwrap_or(12);
        if !(1..=50).contains(&max_attempts) {
            errors.push(format!(
                "`{name}` has max_attempts = {max_attempts}; give 1 to 50"
            ));
        }
        checked.push(WebhookConfig {
            name,
            url: webhook.url,
            secret_env: webhook.secret_env,
            events,
            timeout_ms: (timeout_s.clamp(0.001, 300.0) * 1000.0) as u64,
            max_attempts,
        });
    }
    checked
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Best-effort position for a semantic error: the `[models.NAME]` or alias it mentions.
fn locate(source: &str, message: &str) -> (usize, usize) {
    let mentioned = message
        .split(['`', '[', ']'])
        .filter(|part| !part.is_empty() && !part.contains(' '))
        .collect::<Vec<_>>();
    for needle in mentioned {
        if let Some(offset) = source.find(needle) {
            return line_column(source, offset);
        }
    }
    (0, 0)
}

/// The file as written; `Config::parse` turns it into checked values.
mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::ProviderKind;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub models: BTreeMap<String, Model>,
        pub budgets: Option<Budgets>,
        pub cache: Option<Cache>,
        pub journal: Option<Journal>,
        pub gateway: Option<Gateway>,
        #[serde(default)]
        pub webhooks: Vec<Webhook>,
        pub change_control: Option<ChangeControl>,
        pub learning: Option<Learning>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ChangeControl {
        pub review: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Learning {
        pub from_reviews: Option<bool>,
        pub batch: Option<usize>,
        pub holdout: Option<u64>,
        pub margin: Option<f64>,
        pub alpha: Option<f64>,
        pub min_evaluation: Option<usize>,
        pub challenger_test: Option<String>,
        #[serde(default)]
        pub steps: BTreeMap<String, LearningStep>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LearningStep {
        pub from_reviews: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Model {
        pub provider: ProviderKind,
        pub base_url: Option<String>,
        pub model: Option<String>,
        pub api_key_env: Option<String>,
        pub api_key_header: Option<String>,
        #[serde(default)]
        pub query: BTreeMap<String, String>,
        pub timeout_s: Option<f64>,
        pub max_concurrency: Option<usize>,
        pub max_retries: Option<u32>,
        pub breaker_failures: Option<u32>,
        pub breaker_cooldown_s: Option<f64>,
        pub max_response_bytes: Option<usize>,
        pub structured_output: Option<bool>,
        pub logprobs: Option<bool>,
        /// One price (`[models.x.price]`) …
        pub price: Option<Price>,
        /// … or several with effective dates (`[[models.x.prices]]`).
        #[serde(default)]
        pub prices: Vec<Price>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Price {
        pub input: f64,
        pub output: f64,
        pub cached_input: Option<f64>,
        pub effective: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub daily_usd: Option<f64>,
        pub monthly_usd: Option<f64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Budgets {
        #[serde(default)]
        pub total: Limits,
        #[serde(default)]
        pub workflows: BTreeMap<String, Limits>,
        #[serde(default)]
        pub callers: BTreeMap<String, Limits>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cache {
        pub enabled: Option<bool>,
        pub ttl_s: Option<u64>,
        pub max_entries: Option<usize>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Journal {
        pub redact_text: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Webhook {
        pub name: String,
        pub url: String,
        pub secret_env: String,
        pub events: Vec<String>,
        pub timeout_s: Option<f64>,
        pub max_attempts: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Gateway {
        #[serde(default)]
        pub aliases: BTreeMap<String, Vec<String>>,
        pub durable_journal: Option<bool>,
        pub max_in_flight: Option<usize>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_control_and_learning_parse_and_bad_values_are_refused() {
        let config = Config::parse("keel.toml", "").unwrap();
        assert!(config.change_control.review, "review is on by default");
        assert_eq!(config.learning, LearningConfig::default());
        let config = Config::parse(
            "keel.toml",
            "[change_control]\nreview = \"off\"\n[learning]\nbatch = 50\nholdout = 4\nmargin = 0.01\nalpha = 0.01\nmin_evaluation = 100\nchallenger_test = \"off\"\n[learning.steps.\"mail/triage\"]\nfrom_reviews = false\n",
        )
        .unwrap();
        assert!(!config.change_control.review);
        assert_eq!(
            (
                config.learning.batch,
                config.learning.holdout,
                config.learning.min_evaluation
            ),
            (50, 4, 100)
        );
        assert!(!config.learning.challenger_test);
        assert!(config.learning.from_reviews_off.contains("mail/triage"));
        for (toml, words) in [
            ("[change_control]\nreview = \"maybe\"\n", "\"required\""),
            ("[learning]\nbatch = 0\n", "from 1 to 1000"),
            ("[learning]\nholdout = 1\n", "from 2 to 100"),
            ("[learning]\nmargin = 0.7\n", "below 0.5"),
            ("[learning]\nalpha = 0.5\n", "at most 0.2"),
            ("[learning]\nmin_evaluation = 3\n", "from 10"),
            ("[learning]\nchallenger_test = \"no\"\n", "\"on\""),
            (
                "[learning.steps.\"triage\"]\nfrom_reviews = false\n",
                "WORKFLOW/STEP",
            ),
            ("[learning]\nbatchsize = 3\n", "unknown field"),
        ] {
            let errors = Config::parse("keel.toml", toml).unwrap_err();
            assert!(
                errors.iter().any(|e| e.message.contains(words)),
                "{toml}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_full_file_parses() {
        let config = Config::parse(
            "keel.toml",
            r#"
[models.small]
provider = "openai"
base_url = "http://127.0.0.1:9/v1/"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
timeout_s = 5
[[models.small.prices]]
input = 0.15
output = 0.60
cached_input = 0.075
effective = "2026-01-01"
[[models.small.prices]]
input = 0.30
output = 1.20
effective = "2025-01-01"

[models.learner]
provider = "local"

[budgets.total]
daily_usd = 10
[budgets.workflows.triage]
monthly_usd = 100

[gateway.aliases]
fast = ["small"]
"#,
        )
        .unwrap();
        let small = &config.models["small"];
        assert_eq!(small.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(small.timeout_ms, 5_000);
        assert_eq!(small.api_key_header, "authorization");
        let date = |s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            small
                .price_on(date("2026-03-01"))
                .unwrap()
                .input_per_million,
            0.15
        );
        assert_eq!(
            small
                .price_on(date("2025-06-01"))
                .unwrap()
                .input_per_million,
            0.30
        );
        assert!(small.price_on(date("2024-06-01")).is_none());
        assert_eq!(config.budgets.total.daily_usd, Some(10.0));
        assert_eq!(config.budgets.workflows["triage"].monthly_usd, Some(100.0));
        assert_eq!(config.gateway.aliases["fast"], vec!["small".to_string()]);
        assert_eq!(config.models["learner"].provider, ProviderKind::Local);
    }

    #[test]
    fn problems_are_reported_with_positions() {
        let errors = Config::parse(
            "keel.toml",
            "[models.a]\nprovider = \"openai\"\nbase_url = \"ftp://x\"\nmodel = \"m\"\n\n[gateway.aliases]\nfast = [\"nope\"]\n",
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("base_url must start with http")),
            "{text:?}"
        );
        assert!(text.iter().any(|e| e.contains("`nope`")), "{text:?}");

        let errors = Config::parse("keel.toml", "[models.a]\nprovider = \"gpt\"\n").unwrap_err();
        assert_eq!(errors[0].line, 2, "{errors:?}");
        assert!(errors[0].message.contains("unknown variant"), "{errors:?}");

        let errors =
            Config::parse("keel.toml", "[models.a]\nprovider = \"openai\"\nbase_url=\"http://x\"\nmodel=\"m\"\napi_key_env = \"sk-live-1234567890abcdef\"\n")
                .unwrap_err();
        assert!(
            errors[0].message.contains("<hidden>"),
            "a key pasted by mistake is not echoed: {errors:?}"
        );
    }
}
