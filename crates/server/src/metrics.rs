//! `GET /metrics`: the engine's [`Metrics`] in the Prometheus text exposition format 0.0.4,
//! written by hand (a few families do not need a client library).
//!
//! The route is guarded like `/v1`: a Keel token whose user may `read_audit` (admin,
//! governor, auditor). A deployment may also give a scrape token (`keel serve
//! --metrics-token-env VAR`): a request bearing exactly that secret reads `/metrics` without
//! a user, so Prometheus needs no Keel account.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_engine::telemetry::{Histogram, Metrics};

use crate::problem::Problem;
use crate::AppState;

/// The exposition format's content type.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request bears exactly the deployment's scrape token (`keel serve
/// --metrics-token-env VAR`); the route table lets such a request read `/metrics` without a
/// user token.
pub(crate) fn presents_scrape_token(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = state.metrics_token.as_deref() else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|presented| same_secret(presented, token))
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// Prometheus metrics.
///
/// The text exposition format 0.0.4: cases, steps, exceptions, tasks, queue depth, SLA
/// breaches, model calls, tokens, cost and latency by model, gateway overhead and the trust
/// phase of each operation. Counts read from the database are the whole deployment's (scrape
/// one node); latency histograms and gateway overhead are this node's.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    security(("keel_token" = []), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Metric families in the Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No valid token", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token's user may not read_audit (admin, governor, auditor may)", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match state.engine.metrics().await {
        Ok(metrics) => {
            let mut response = (StatusCode::OK, render(&metrics)).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(error) => Problem::internal(&error).into_response(),
    }
}

/// When a gateway model call started, for its span and the gateway's overhead.
pub(crate) struct CallTimer {
    at: std::time::SystemTime,
    started: std::time::Instant,
}

impl CallTimer {
    pub(crate) fn start() -> CallTimer {
        CallTimer {
            at: std::time::SystemTime::now(),
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records the call, which ended now, as a span (when traces are on).
    pub(crate) fn observe(
        &self,
        engine: &keel_engine::Engine,
        model: &keel_ai::config::ModelConfig,
        request: &keel_ai::provider::ChatRequest,
        caller: &str,
        outcome: Result<(Option<keel_ai::provider::Usage>, Option<&str>), &str>,
        cost_usd: Option<f64>,
    ) {
        engine.telemetry().model_call(&keel_ai::cascade::ModelCall {
            model,
            request: Some(request),
            source: keel_ai::cascade::CallSource::Provider,
            outcome,
            started: self.at,
            latency: self.started.elapsed(),
            cost_usd,
            step: None,
            caller: Some(caller),
        });
    }
}

/// The whole exposition.
pub(crate) fn render(metrics: &Metrics) -> String {
    let mut out = Exposition::default();
    out.family("keel_cases", "gauge", "Cases by workflow and status.");
    for (workflow, status, n) in &metrics.cases {
        out.sample(
            "keel_cases",
            &[("workflow", workflow), ("status", status)],
            *n as f64,
        );
    }
    out.family(
        "keel_steps_total",
        "counter",
        "Steps completed, by workflow and step kind.",
    );
    for (workflow, kind, n) in &metrics.steps {
        out.sample(
            "keel_steps_total",
            &[("workflow", workflow), ("kind", kind)],
            *n as f64,
        );
    }
    out.family(
        "keel_exceptions_open",
        "gauge",
        "Open exceptions by queue and kind.",
    );
    for (queue, kind, n) in &metrics.exceptions_open {
        out.sample(
            "keel_exceptions_open",
            &[("queue", queue), ("kind", kind)],
            *n as f64,
        );
    }
    out.family(
        "keel_exceptions_raised_total",
        "counter",
        "Exceptions raised (SLA breaches included), by workflow and kind.",
    );
    for (workflow, kind, n) in &metrics.exceptions_raised {
        out.sample(
            "keel_exceptions_raised_total",
            &[("workflow", workflow), ("kind", kind)],
            *n as f64,
        );
    }
    out.family(
        "keel_tasks_open",
        "gauge",
        "Open tasks by workflow and kind.",
    );
    for (workflow, kind, n) in &metrics.tasks_open {
        out.sample(
            "keel_tasks_open",
            &[("workflow", workflow), ("kind", kind)],
            *n as f64,
        );
    }
    out.family(
        "keel_queue_depth",
        "gauge",
        "Open exceptions per desk queue.",
    );
    for (queue, n) in &metrics.queue_depth {
        out.sample("keel_queue_depth", &[("queue", queue)], *n as f64);
    }
    out.family(
        "keel_sla_breaches_total",
        "counter",
        "Workflow and step SLA breaches, by workflow.",
    );
    for (workflow, n) in &metrics.sla_breaches {
        out.sample(
            "keel_sla_breaches_total",
            &[("workflow", workflow)],
            *n as f64,
        );
    }
    render_ai(&mut out, metrics);
    out.family("keel_gateway_overhead_seconds", "histogram", "Time the gateway spends on a non-streamed request outside its upstream calls (this process).");
    out.histogram(
        "keel_gateway_overhead_seconds",
        &[],
        &metrics.gateway_overhead,
    );
    out.family(
        "keel_trust_phase",
        "gauge",
        "Progressive-trust phase (1-4) of each operation.",
    );
    for (operation, phase) in &metrics.trust_phases {
        out.sample(
            "keel_trust_phase",
            &[("operation", operation)],
            *phase as f64,
        );
    }
    out.family("keel_otlp_dropped_spans_total", "counter", "Trace spans dropped because the export queue was full or the collector did not take them (this process).");
    out.sample(
        "keel_otlp_dropped_spans_total",
        &[],
        metrics.otlp_dropped_spans as f64,
    );
    out.text
}

fn render_ai(out: &mut Exposition, metrics: &Metrics) {
    out.family(
        "keel_ai_calls_total",
        "counter",
        "Model calls by model, provider and outcome (ok, cache_hit or an error code).",
    );
    for (model, provider, outcome, n) in &metrics.ai_calls {
        let labels = [
            ("model", model.as_str()),
            ("provider", provider),
            ("outcome", outcome),
        ];
        out.sample("keel_ai_calls_total", &labels, *n as f64);
    }
    out.family(
        "keel_ai_tokens_total",
        "counter",
        "Model tokens by model and direction (input counts cached input too).",
    );
    for (model, direction, n) in &metrics.ai_tokens {
        out.sample(
            "keel_ai_tokens_total",
            &[("model", model), ("direction", direction)],
            *n as f64,
        );
    }
    out.family(
        "keel_ai_cost_usd_total",
        "counter",
        "Known cost of model calls in US dollars, by model.",
    );
    for (model, usd) in &metrics.ai_cost_usd {
        out.sample("keel_ai_cost_usd_total", &[("model", model)], *usd);
    }
    out.family(
        "keel_ai_call_latency_seconds",
        "histogram",
        "Latency of model calls that reached the provider (retries included), by model.",
    );
    for (model, histogram) in &metrics.ai_latency {
        out.histogram(
            "keel_ai_call_latency_seconds",
            &[("model", model)],
            histogram,
        );
    }
}

/// Text in the exposition format.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.cumulative() {
            let le = number(bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count as f64);
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as Prometheus does.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_numbers_are_written_as_the_format_says() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Line\none.");
        out.sample("x_total", &[("a", "q\"")], 2.0);
        assert_eq!(
            out.text,
            "# HELP x_total Line\\none.\n# TYPE x_total counter\nx_total{a=\"q\\\"\"} 2\n"
        );
    }

    #[test]
    fn same_secret_compares_whole_secrets() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
