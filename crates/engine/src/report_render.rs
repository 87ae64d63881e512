//! The monthly review as Markdown and as one self-contained HTML file (inline CSS, inline SVG
//! charts, no scripts, no external URLs).
//!
//! The HTML is written by hand rather than with a template engine: the page is small, its
//! structure is fixed, and [`Html`] makes escaping the only way in: markup can only be
//! appended from `&'static str` literals, and everything computed (names, templates, reasons,
//! evidence) goes through [`Html::text`], which escapes it. Numbers are formatted, never
//! interpolated as strings. That keeps askama (and its proc-macro stack) out of the build for
//! one page.

use std::fmt::Write as _;

use crate::report::{
    Cascade, Event, ModelAccuracy, MonthlyReport, OperationReview, WorkflowReview,
};

/// Series colours of the charts (distinguishable, also in grey print).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];
/// Most series drawn per chart (the tables list every operation).
const MAX_SERIES: usize = PALETTE.len();

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1b1b;line-height:1.4}\
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-top:1.4rem}\
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666}\
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem .9rem;min-width:9rem}\
.card b{display:block;font-size:1.3rem}figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}\
pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem;max-height:20rem}\
svg text{font-size:11px;fill:#333}svg .axis{stroke:#999;stroke-width:1}svg .grid{stroke:#eee;stroke-width:1}\
svg .diag{stroke:#aaa;stroke-dasharray:4 3}.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}\
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}";

// ---------------------------------------------------------------------------------- formats

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{:.1}%", v * 100.0))
}

fn money(value: f64) -> String {
    if value.abs() >= 1.0 {
        format!("${value:.2}")
    } else {
        format!("${value:.4}")
    }
}

fn money_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), money)
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "–".to_string(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 120_000 => format!("{:.1} s", ms as f64 / 1e3),
        Some(ms) if ms < 7_200_000 => format!("{:.1} min", ms as f64 / 6e4),
        Some(ms) => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

fn phase(value: Option<i64>) -> String {
    value.map_or_else(|| "–".to_string(), |p| p.to_string())
}

fn interval(low: Option<f64>, high: Option<f64>) -> String {
    match (low, high) {
        (Some(low), Some(high)) => format!("{:.1}–{:.1}%", low * 100.0, high * 100.0),
        _ => "–".to_string(),
    }
}

// ---------------------------------------------------------------------------------- markdown

/// Escapes text for a Markdown table cell or paragraph.
fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '`' | '*' | '_' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn md_row(out: &mut String, cells: &[String]) {
    out.push('|');
    for cell in cells {
        out.push(' ');
        out.push_str(cell);
        out.push_str(" |");
    }
    out.push('\n');
}

fn md_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    md_row(
        out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    md_row(
        out,
        &header.iter().map(|_| "---".to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        md_row(out, row);
    }
    out.push('\n');
}

/// The review as Markdown.
pub fn markdown(report: &MonthlyReport) -> String {
    let mut out = String::new();
    let s = &report.summary;
    let _ = writeln!(
        out,
        "# Monthly operational review — {}\n",
        md(&report.month)
    );
    let _ = writeln!(
        out,
        "Period {} to {} (UTC), figures as of {}, generated {}.\n",
        md(&report.period.from),
        md(&report.period.to),
        md(&report.as_of),
        md(&report.generated_at)
    );
    out.push_str("## Summary\n\n");
    md_table(
        &mut out,
        &[
            "Cases",
            "Completed",
            "Failed",
            "Open",
            "Automation",
            "SLA compliance",
            "Agreement",
            "Cost",
            "Saved",
            "Exceptions",
            "Drift alerts",
            "Promotions",
            "Demotions",
        ],
        &[vec![
            s.cases.to_string(),
            s.completed.to_string(),
            s.failed.to_string(),
            s.open.to_string(),
            pct(s.automation_rate),
            pct(s.sla_compliance),
            pct(s.agreement),
            money(s.cost_usd),
            money_opt(s.saved_usd),
            s.exceptions.to_string(),
            s.drift_alerts.to_string(),
            s.promotions.to_string(),
            s.demotions.to_string(),
        ]],
    );
    out.push_str("## Recommendations\n\n");
    if report.recommendations.is_empty() {
        out.push_str("None this month.\n\n");
    }
    for recommendation in &report.recommendations {
        let _ = writeln!(
            out,
            "- **{}** — {}",
            recommendation.kind,
            md(&recommendation.message)
        );
    }
    if !report.recommendations.is_empty() {
        out.push('\n');
    }
    for workflow in &report.workflows {
        markdown_workflow(&mut out, workflow, &report.costs.cascades);
    }
    markdown_costs(&mut out, report);
    out.push_str("## Methods\n\n");
    for (name, text) in methods(report) {
        let _ = writeln!(out, "- **{name}**: {text}");
    }
    out
}

fn methods(report: &MonthlyReport) -> [(&'static str, &'static str); 8] {
    let m = &report.methods;
    [
        ("Savings", m.savings),
        ("Cost per case", m.cost_per_case),
        ("Projection", m.projection),
        ("Automation", m.automation),
        ("Latency", m.latency),
        ("Accuracy", m.accuracy),
        ("Calibration", m.calibration),
        ("Recommendations", m.recommendations),
    ]
}

fn markdown_workflow(out: &mut String, w: &WorkflowReview, cascades: &[Cascade]) {
    let _ = writeln!(out, "## Workflow {}\n", md(&w.workflow));
    md_table(
        out,
        &[
            "Created",
            "Completed",
            "Failed",
            "Parked",
            "Automation",
            "SLA compliance",
            "Cost",
            "Cost per case",
            "Saved",
            "Case p50",
            "Case p95",
            "AI call p50",
            "AI call p95",
        ],
        &[vec![
            w.volume.created.to_string(),
            w.volume.completed.to_string(),
            w.volume.failed.to_string(),
            w.volume.exception.to_string(),
            format!(
                "{} ({} of {})",
                pct(w.automation.rate),
                w.automation.automated_cases,
                w.automation.gated_cases
            ),
            pct(w.sla.compliance),
            money(w.cost.usd),
            money_opt(w.cost.usd_per_case),
            money_opt(w.cost.saved_usd),
            duration(w.latency.case_duration_ms.p50),
            duration(w.latency.case_duration_ms.p95),
            duration(w.latency.ai_call_ms.p50),
            duration(w.latency.ai_call_ms.p95),
        ]],
    );
    if !w.operations.is_empty() {
        out.push_str("### Operations\n\n");
        let rows: Vec<Vec<String>> = w.operations.iter().map(operation_cells).collect();
        md_table(out, &OPERATION_HEADER, &rows);
        let models: Vec<Vec<String>> = w
            .operations
            .iter()
            .flat_map(|o| o.accuracy_by_model.iter().map(move |m| (o, m)))
            .map(|(o, m)| {
                let ece = o
                    .calibration_by_model
                    .iter()
                    .find(|c| c.model == m.model && m.learner_version.is_none())
                    .map_or_else(|| "–".to_string(), |c| format!("{:.3}", c.ece));
                vec![
                    md(&o.operation),
                    md(&model_name(m)),
                    m.reviews.to_string(),
                    pct(m.agreement),
                    interval(m.wilson_low, m.wilson_high),
                    ece,
                ]
            })
            .collect();
        if !models.is_empty() {
            out.push_str("### Accuracy per model\n\n");
            md_table(
                out,
                &[
                    "Operation",
                    "Model (version)",
                    "Reviews",
                    "Agreement",
                    "95% Wilson",
                    "ECE",
                ],
                &models,
            );
        }
    }
    markdown_events(out, w);
    markdown_change_control(out, w);
    let own: Vec<&Cascade> = cascades
        .iter()
        .filter(|c| c.workflow == w.workflow)
        .collect();
    if !own.is_empty() {
        out.push_str("### Cascades\n\n");
        md_table(
            out,
            &CASCADE_HEADER,
            &own.iter().flat_map(|c| cascade_rows(c)).collect::<Vec<_>>(),
        );
    }
    markdown_exceptions(out, w);
}

/// `local v3` for a learner version, the model's name otherwise.
fn model_name(m: &ModelAccuracy) -> String {
    match m.learner_version {
        Some(version) => format!("{} v{version}", m.model),
        None => m.model.clone(),
    }
}

/// `2 → 3` for a phase change, `v4` for a learner version.
fn event_change(e: &Event) -> String {
    match (e.from_phase, e.to_phase, e.version) {
        (None, None, Some(version)) => format!("v{version}"),
        (None, None, None) => String::new(),
        (from, to, _) => format!("{} → {}", phase(from), phase(to)),
    }
}

/// The event's kind without its prefix, with a demotion's trigger: `demoted (sprt)`.
fn event_kind(e: &Event) -> String {
    let kind = e.kind.replace("trust.", "").replace('.', " ");
    match &e.trigger {
        Some(trigger) => format!("{kind} ({trigger})"),
        None => kind,
    }
}

/// A demotion's retro-review count after its evidence.
fn event_evidence(e: &Event) -> String {
    match e.retro_reviews {
        Some(n) => format!("{}; {n} retro-review tasks opened", e.evidence_text),
        None => e.evidence_text.clone(),
    }
}

const EVENT_HEADER: [&str; 7] = [
    "At", "Subject", "Event", "Change", "By", "Evidence", "Reason",
];

fn event_cells(e: &Event) -> [String; 7] {
    [
        e.at.clone(),
        e.subject.clone(),
        event_kind(e),
        event_change(e),
        e.by.clone(),
        event_evidence(e),
        e.reason.clone().unwrap_or_default(),
    ]
}

fn markdown_events(out: &mut String, w: &WorkflowReview) {
    if w.events.is_empty() {
        return;
    }
    out.push_str("### Events\n\n");
    let rows: Vec<Vec<String>> = w
        .events
        .iter()
        .map(|e| event_cells(e).iter().map(|c| md(c)).collect())
        .collect();
    md_table(out, &EVENT_HEADER, &rows);
}

const CHANGE_HEADER: [&str; 8] = [
    "Version",
    "Deployed",
    "Status",
    "Author",
    "Approved by",
    "Rejected by",
    "Review",
    "Changes",
];

fn change_cells(d: &crate::report::Deployment) -> [String; 8] {
    let decided = |who: &Option<String>| match (who, &d.decided_at) {
        (Some(who), Some(at)) => format!("{who} ({})", at.get(..10).unwrap_or(at)),
        (Some(who), None) => who.clone(),
        (None, _) => "–".to_string(),
    };
    [
        match &d.label {
            Some(label) if *label != d.version_no.to_string() => {
                format!("{} ({label})", d.version_no)
            }
            _ => d.version_no.to_string(),
        },
        d.at.clone(),
        d.status.clone(),
        d.author.clone().unwrap_or_else(|| "–".to_string()),
        if d.rejected_by.is_some() {
            "–".to_string()
        } else {
            decided(&d.approved_by)
        },
        decided(&d.rejected_by),
        d.review
            .clone()
            .unwrap_or_else(|| "not recorded".to_string()),
        if d.changes.is_empty() {
            "–".to_string()
        } else {
            d.changes.join("; ")
        },
    ]
}

fn markdown_change_control(out: &mut String, w: &WorkflowReview) {
    let control = &w.change_control;
    if control.deployments.is_empty() {
        return;
    }
    out.push_str("### Change control\n\n");
    if let Some(note) = &control.unreviewed {
        let _ = writeln!(out, "**{}**\n", md(note));
    }
    let rows: Vec<Vec<String>> = control
        .deployments
        .iter()
        .map(|d| change_cells(d).iter().map(|c| md(c)).collect())
        .collect();
    md_table(out, &CHANGE_HEADER, &rows);
}

const OPERATION_HEADER: [&str; 11] = [
    "Operation",
    "Phase (start → highest → end)",
    "Auto",
    "Task",
    "Reviews",
    "Agreement",
    "95% Wilson",
    "First half",
    "Second half",
    "ECE",
    "Promotion test",
];

/// The engine's promotion test as of the report: `→3: 71.1% ≥ 70.0% over 21 (30d): eligible`.
fn promotion_cell(o: &OperationReview) -> String {
    let Some(p) = &o.promotion else {
        return "–".to_string();
    };
    let low = p
        .wilson_low
        .map_or_else(|| "–".to_string(), |l| format!("{:.1}%", l * 100.0));
    let verdict = if p.eligible {
        "eligible"
    } else if u64::try_from(p.reviews).unwrap_or(0) < p.min_reviews {
        "too few reviews"
    } else {
        "below target"
    };
    format!(
        "→{}: {low} vs {:.1}% over {} ({}): {verdict}",
        p.next_phase,
        p.target * 100.0,
        p.reviews,
        p.window
    )
}

fn operation_cells(o: &OperationReview) -> Vec<String> {
    vec![
        md(&o.operation),
        format!(
            "{} → {} → {}",
            phase(o.phase.at_start),
            phase(o.phase.highest),
            phase(o.phase.at_end)
        ),
        o.decisions.auto.to_string(),
        o.decisions.task.to_string(),
        o.accuracy.reviews.to_string(),
        pct(o.accuracy.agreement),
        interval(o.accuracy.wilson_low, o.accuracy.wilson_high),
        pct(o.first_half.agreement),
        pct(o.second_half.agreement),
        o.calibration
            .as_ref()
            .map_or_else(|| "–".to_string(), |c| format!("{:.3}", c.ece)),
        promotion_cell(o),
    ]
}

const CASCADE_HEADER: [&str; 9] = [
    "Step",
    "Tier",
    "Model",
    "Settled",
    "Share",
    "Acceptance",
    "Per call",
    "Saved",
    "Baseline",
];

fn cascade_rows(c: &Cascade) -> Vec<Vec<String>> {
    c.tiers
        .iter()
        .map(|t| {
            let first = t.tier == 0;
            vec![
                if first {
                    md(&format!("{}/{}", c.workflow, c.step))
                } else {
                    String::new()
                },
                t.tier.to_string(),
                md(&t.model),
                t.settled.to_string(),
                pct(Some(t.share)),
                pct(t.acceptance_rate),
                money_opt(t.usd_per_call),
                if first {
                    money_opt(c.saved_usd)
                } else {
                    String::new()
                },
                if first {
                    format!(
                        "{} ({})",
                        money_opt(c.baseline_usd_per_proposal),
                        c.baseline_method
                    )
                } else {
                    String::new()
                },
            ]
        })
        .collect()
}

fn markdown_exceptions(out: &mut String, w: &WorkflowReview) {
    let e = &w.exceptions;
    let _ = writeln!(
        out,
        "### Exceptions\n\n{} raised, {} resolved, median time to resolve {}.\n",
        e.raised,
        e.resolved,
        duration(e.median_resolve_ms)
    );
    if !e.top_patterns.is_empty() {
        let rows: Vec<Vec<String>> = e
            .top_patterns
            .iter()
            .map(|p| {
                vec![
                    md(&p.template),
                    md(&p.kind),
                    md(p.step.as_deref().unwrap_or("")),
                    p.raised.to_string(),
                    p.resolved.to_string(),
                ]
            })
            .collect();
        md_table(
            out,
            &["Top pattern", "Kind", "Step", "Raised", "Resolved"],
            &rows,
        );
    }
    if !e.new_patterns.is_empty() {
        let rows: Vec<Vec<String>> = e
            .new_patterns
            .iter()
            .map(|p| {
                vec![
                    md(&p.template),
                    md(&p.kind),
                    md(&p.first_seen),
                    p.total.to_string(),
                ]
            })
            .collect();
        md_table(out, &["New pattern", "Kind", "First seen", "Total"], &rows);
    }
    if !w.drift_alerts.is_empty() {
        out.push_str("### Drift alerts\n\n");
        let rows: Vec<Vec<String>> = w
            .drift_alerts
            .iter()
            .map(|d| {
                vec![
                    md(&d.at),
                    md(d.step.as_deref().unwrap_or("")),
                    md(d.feature.as_deref().unwrap_or("")),
                    md(d.method.as_deref().unwrap_or("")),
                    d.value.map_or_else(|| "–".into(), |v| format!("{v:.4}")),
                    d.threshold
                        .map_or_else(|| "–".into(), |v| format!("{v:.4}")),
                ]
            })
            .collect();
        md_table(
            out,
            &["At", "Step", "Feature", "Method", "Value", "Threshold"],
            &rows,
        );
    }
}

fn markdown_costs(out: &mut String, report: &MonthlyReport) {
    let costs = &report.costs;
    let _ = writeln!(
        out,
        "## Costs\n\nKnown spend {} ({} from workflow steps, {} through the gateway) over {} calls; {} calls of unknown cost.\n",
        money(costs.total_usd),
        money(costs.workflow_usd),
        money(costs.gateway_usd),
        costs.calls,
        costs.cost_unknown_calls
    );
    let rows: Vec<Vec<String>> = costs
        .per_model
        .iter()
        .map(|m| {
            vec![
                md(&m.model),
                md(&m.provider),
                m.calls.to_string(),
                m.cache_hits.to_string(),
                m.input_tokens.to_string(),
                m.output_tokens.to_string(),
                money(m.usd),
                money_opt(m.usd_per_call),
            ]
        })
        .collect();
    md_table(
        out,
        &[
            "Model",
            "Provider",
            "Calls",
            "Cache hits",
            "Input tokens",
            "Output tokens",
            "Cost",
            "Per call",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = costs
        .per_operation
        .iter()
        .map(|o| {
            vec![
                md(&o.operation),
                o.calls.to_string(),
                money(o.usd),
                money_opt(o.usd_per_case),
            ]
        })
        .collect();
    if !rows.is_empty() {
        md_table(out, &["Operation", "Calls", "Cost", "Per case"], &rows);
    }
    let b = &costs.budget;
    let _ = writeln!(
        out,
        "Budget {}: {} month to date, {} projected against {} ({}).\n",
        md(&b.month),
        money(b.month_to_date_usd),
        money(b.projected_usd),
        money_opt(b.limit_usd),
        b.status
    );
    let rows: Vec<Vec<String>> = costs
        .per_day
        .iter()
        .map(|d| vec![md(&d.day), d.calls.to_string(), money(d.usd)])
        .collect();
    md_table(out, &["Day", "Calls", "Cost"], &rows);
}

// ---------------------------------------------------------------------------------- html

/// An HTML document under construction. Markup comes only from literals; text is escaped.
struct Html {
    out: String,
}

impl Html {
    fn raw(&mut self, markup: &'static str) -> &mut Html {
        self.out.push_str(markup);
        self
    }

    fn text(&mut self, text: &str) -> &mut Html {
        for c in text.chars() {
            match c {
                '&' => self.out.push_str("&amp;"),
                '<' => self.out.push_str("&lt;"),
                '>' => self.out.push_str("&gt;"),
                '"' => self.out.push_str("&quot;"),
                '\'' => self.out.push_str("&#39;"),
                c => self.out.push(c),
            }
        }
        self
    }

    fn num(&mut self, value: f64) -> &mut Html {
        let value = if value.is_finite() { value } else { 0.0 };
        let _ = write!(self.out, "{value:.1}");
        self
    }

    fn cell(&mut self, text: &str) -> &mut Html {
        self.raw("<td>").text(text).raw("</td>")
    }

    fn number_cell(&mut self, text: &str) -> &mut Html {
        self.raw("<td class=\"n\">").text(text).raw("</td>")
    }

    fn header(&mut self, names: &[&'static str]) -> &mut Html {
        self.raw("<tr>");
        for name in names {
            self.raw("<th>").raw(name).raw("</th>");
        }
        self.raw("</tr>")
    }
}

/// The review as one self-contained HTML file.
pub fn html(report: &MonthlyReport) -> String {
    let mut h = Html {
        out: String::with_capacity(64 * 1024),
    };
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n<title>Keel monthly review ")
        .text(&report.month)
        .raw("</title>\n<style>")
        .raw(STYLE)
        .raw("</style>\n</head>\n<body>\n<h1>Monthly operational review — ")
        .text(&report.month)
        .raw("</h1>\n<p class=\"muted\">Period ")
        .text(&report.period.from)
        .raw(" to ")
        .text(&report.period.to)
        .raw(" (UTC), figures as of ")
        .text(&report.as_of)
        .raw(", generated ")
        .text(&report.generated_at)
        .raw(".</p>\n");
    html_summary(&mut h, report);
    html_charts(&mut h, report);
    html_recommendations(&mut h, report);
    for workflow in &report.workflows {
        html_workflow(&mut h, workflow, &report.costs.cascades);
    }
    html_costs(&mut h, report);
    h.raw("<h2 id=\"methods\">Methods</h2>\n<dl>\n");
    for (name, text) in methods(report) {
        h.raw("<dt>")
            .raw(name)
            .raw("</dt><dd>")
            .text(text)
            .raw("</dd>\n");
    }
    h.raw("</dl>\n</body>\n</html>\n");
    h.out
}

fn html_summary(h: &mut Html, report: &MonthlyReport) {
    let s = &report.summary;
    let cards = [
        ("Cases", s.cases.to_string()),
        ("Completed", s.completed.to_string()),
        ("Automation", pct(s.automation_rate)),
        ("SLA compliance", pct(s.sla_compliance)),
        ("Agreement", pct(s.agreement)),
        ("Cost", money(s.cost_usd)),
        ("Saved by cascades", money_opt(s.saved_usd)),
        ("Exceptions", s.exceptions.to_string()),
        ("Drift alerts", s.drift_alerts.to_string()),
        ("Promotions", s.promotions.to_string()),
        ("Demotions", s.demotions.to_string()),
    ];
    h.raw("<h2 id=\"summary\">Summary</h2>\n<div class=\"cards\">\n");
    for (name, value) in cards {
        h.raw("<div class=\"card\">")
            .raw(name)
            .raw("<b>")
            .text(&value)
            .raw("</b></div>\n");
    }
    h.raw("</div>\n");
}

fn html_recommendations(h: &mut Html, report: &MonthlyReport) {
    h.raw("<h2 id=\"recommendations\">Recommendations</h2>\n");
    if report.recommendations.is_empty() {
        h.raw("<p>None this month.</p>\n");
        return;
    }
    h.raw("<ol>\n");
    for recommendation in &report.recommendations {
        h.raw("<li><b>")
            .text(recommendation.kind)
            .raw("</b> — ")
            .text(&recommendation.message)
            .raw("<details><summary>Evidence</summary><pre>")
            .text(&serde_json::to_string_pretty(&recommendation.evidence).unwrap_or_default())
            .raw("</pre></details></li>\n");
    }
    h.raw("</ol>\n");
}

fn html_workflow(h: &mut Html, w: &WorkflowReview, cascades: &[Cascade]) {
    h.raw("<h2>Workflow ")
        .text(&w.workflow)
        .raw("</h2>\n<table>\n");
    h.header(&[
        "Created",
        "Completed",
        "Failed",
        "Parked",
        "Automation",
        "SLA compliance",
        "Cost",
        "Per case",
        "Saved",
        "Case p50",
        "Case p95",
        "AI call p50",
        "AI call p95",
    ]);
    h.raw("<tr>")
        .number_cell(&w.volume.created.to_string())
        .number_cell(&w.volume.completed.to_string())
        .number_cell(&w.volume.failed.to_string())
        .number_cell(&w.volume.exception.to_string())
        .number_cell(&format!(
            "{} ({} of {})",
            pct(w.automation.rate),
            w.automation.automated_cases,
            w.automation.gated_cases
        ))
        .number_cell(&pct(w.sla.compliance))
        .number_cell(&money(w.cost.usd))
        .number_cell(&money_opt(w.cost.usd_per_case))
        .number_cell(&money_opt(w.cost.saved_usd))
        .number_cell(&duration(w.latency.case_duration_ms.p50))
        .number_cell(&duration(w.latency.case_duration_ms.p95))
        .number_cell(&duration(w.latency.ai_call_ms.p50))
        .number_cell(&duration(w.latency.ai_call_ms.p95))
        .raw("</tr>\n</table>\n");
    if !w.operations.is_empty() {
        h.raw("<h3>Operations</h3>\n<table>\n")
            .header(&OPERATION_HEADER);
        for operation in &w.operations {
            h.raw("<tr>");
            for (index, cell) in operation_cells(operation).iter().enumerate() {
                // The cells were prepared for Markdown; the first one is the escaped name.
                let text = if index == 0 {
                    &operation.operation
                } else {
                    cell
                };
                h.cell(text);
            }
            h.raw("</tr>\n");
        }
        h.raw("</table>\n");
        html_models(h, w);
    }
    html_changes(h, w);
    let own: Vec<&Cascade> = cascades
        .iter()
        .filter(|c| c.workflow == w.workflow)
        .collect();
    if !own.is_empty() {
        h.raw("<h3>Cascades</h3>\n<table>\n")
            .header(&CASCADE_HEADER);
        for cascade in own {
            for (tier, row) in cascade.tiers.iter().zip(cascade_rows(cascade)) {
                h.raw("<tr>");
                let name = format!("{}/{}", cascade.workflow, cascade.step);
                h.cell(if tier.tier == 0 { &name } else { "" })
                    .cell(&row[1])
                    .cell(&tier.model);
                for cell in &row[3..] {
                    h.number_cell(cell);
                }
                h.raw("</tr>\n");
            }
        }
        h.raw("</table>\n");
    }
    html_exceptions(h, w);
}

fn html_changes(h: &mut Html, w: &WorkflowReview) {
    if !w.events.is_empty() {
        h.raw("<h3>Events</h3>\n<table>\n").header(&EVENT_HEADER);
        for event in &w.events {
            h.raw("<tr>");
            for cell in event_cells(event) {
                h.cell(&cell);
            }
            h.raw("</tr>\n");
        }
        h.raw("</table>\n");
    }
    let control = &w.change_control;
    if control.deployments.is_empty() {
        return;
    }
    h.raw("<h3>Change control</h3>\n");
    if let Some(note) = &control.unreviewed {
        h.raw("<p><strong>").text(note).raw("</strong></p>\n");
    }
    h.raw("<table>\n").header(&CHANGE_HEADER);
    for deployment in &control.deployments {
        h.raw("<tr>");
        for cell in change_cells(deployment) {
            h.cell(&cell);
        }
        h.raw("</tr>\n");
    }
    h.raw("</table>\n");
}

fn html_models(h: &mut Html, w: &WorkflowReview) {
    h.raw("<h3>Accuracy per model</h3>\n<table>\n").header(&[
        "Operation",
        "Model (version)",
        "Reviews",
        "Agreement",
        "95% Wilson",
        "ECE",
    ]);
    for operation in &w.operations {
        for model in &operation.accuracy_by_model {
            let ece = operation
                .calibration_by_model
                .iter()
                .find(|c| c.model == model.model && model.learner_version.is_none())
                .map_or_else(|| "–".to_string(), |c| format!("{:.3}", c.ece));
            h.raw("<tr>")
                .cell(&operation.operation)
                .cell(&model_name(model))
                .number_cell(&model.reviews.to_string())
                .number_cell(&pct(model.agreement))
                .number_cell(&interval(model.wilson_low, model.wilson_high))
                .number_cell(&ece)
                .raw("</tr>\n");
        }
    }
    h.raw("</table>\n");
}

fn html_exceptions(h: &mut Html, w: &WorkflowReview) {
    let e = &w.exceptions;
    h.raw("<h3>Exceptions</h3>\n<p>")
        .text(&format!(
            "{} raised, {} resolved, median time to resolve {}.",
            e.raised,
            e.resolved,
            duration(e.median_resolve_ms)
        ))
        .raw("</p>\n");
    if !e.top_patterns.is_empty() {
        h.raw("<table>\n")
            .header(&["Top pattern", "Kind", "Step", "Raised", "Resolved"]);
        for p in &e.top_patterns {
            h.raw("<tr>")
                .cell(&p.template)
                .cell(&p.kind)
                .cell(p.step.as_deref().unwrap_or(""))
                .number_cell(&p.raised.to_string())
                .number_cell(&p.resolved.to_string())
                .raw("</tr>\n");
        }
        h.raw("</table>\n");
    }
    if !e.new_patterns.is_empty() {
        h.raw("<table>\n")
            .header(&["New pattern", "Kind", "First seen", "Total"]);
        for p in &e.new_patterns {
            h.raw("<tr>")
                .cell(&p.template)
                .cell(&p.kind)
                .cell(&p.first_seen)
                .number_cell(&p.total.to_string())
                .raw("</tr>\n");
        }
        h.raw("</table>\n");
    }
    h.raw("<h3>Drift alerts</h3>\n");
    if w.drift_alerts.is_empty() {
        h.raw("<p>None.</p>\n");
        return;
    }
    h.raw("<table>\n")
        .header(&["At", "Step", "Feature", "Method", "Value", "Threshold"]);
    for d in &w.drift_alerts {
        h.raw("<tr>")
            .cell(&d.at)
            .cell(d.step.as_deref().unwrap_or(""))
            .cell(d.feature.as_deref().unwrap_or(""))
            .cell(d.method.as_deref().unwrap_or(""))
            .number_cell(&d.value.map_or_else(|| "–".into(), |v| format!("{v:.4}")))
            .number_cell(
                &d.threshold
                    .map_or_else(|| "–".into(), |v| format!("{v:.4}")),
            )
            .raw("</tr>\n");
    }
    h.raw("</table>\n");
}

fn html_costs(h: &mut Html, report: &MonthlyReport) {
    let costs = &report.costs;
    h.raw("<h2 id=\"costs\">Costs</h2>\n<p>")
        .text(&format!(
            "Known spend {} ({} from workflow steps, {} through the gateway) over {} calls; {} calls of unknown cost. Budget {}: {} month to date, {} projected against {} ({}).",
            money(costs.total_usd),
            money(costs.workflow_usd),
            money(costs.gateway_usd),
            costs.calls,
            costs.cost_unknown_calls,
            costs.budget.month,
            money(costs.budget.month_to_date_usd),
            money(costs.budget.projected_usd),
            money_opt(costs.budget.limit_usd),
            costs.budget.status
        ))
        .raw("</p>\n<table>\n")
        .header(&["Model", "Provider", "Calls", "Cache hits", "Input tokens", "Output tokens", "Cost", "Per call"]);
    for m in &costs.per_model {
        h.raw("<tr>")
            .cell(&m.model)
            .cell(&m.provider)
            .number_cell(&m.calls.to_string())
            .number_cell(&m.cache_hits.to_string())
            .number_cell(&m.input_tokens.to_string())
            .number_cell(&m.output_tokens.to_string())
            .number_cell(&money(m.usd))
            .number_cell(&money_opt(m.usd_per_call))
            .raw("</tr>\n");
    }
    h.raw("</table>\n<table>\n")
        .header(&["Operation", "Calls", "Cost", "Per case"]);
    for o in &costs.per_operation {
        h.raw("<tr>")
            .cell(&o.operation)
            .number_cell(&o.calls.to_string())
            .number_cell(&money(o.usd))
            .number_cell(&money_opt(o.usd_per_case))
            .raw("</tr>\n");
    }
    h.raw("</table>\n<table>\n")
        .header(&["Day", "Calls", "Cost"]);
    for d in &costs.per_day {
        h.raw("<tr>")
            .cell(&d.day)
            .number_cell(&d.calls.to_string())
            .number_cell(&money(d.usd))
            .raw("</tr>\n");
    }
    h.raw("</table>\n");
}

// ---------------------------------------------------------------------------------- charts

/// Plot area of every chart, in SVG user units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 32.0;

/// Maps data coordinates into the plot area.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let span = (self.x.1 - self.x.0).max(f64::EPSILON);
        LEFT + (x - self.x.0) / span * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let span = (self.y.1 - self.y.0).max(f64::EPSILON);
        HEIGHT - BOTTOM - (y - self.y.0) / span * (HEIGHT - TOP - BOTTOM)
    }
}

fn svg_open(h: &mut Html, id: &'static str, title: &'static str) {
    h.raw("<figure>\n<svg id=\"")
        .raw(id)
        .raw("\" viewBox=\"0 0 640 260\" width=\"640\" height=\"260\" role=\"img\" aria-labelledby=\"")
        .raw(id)
        .raw("-title\"><title id=\"")
        .raw(id)
        .raw("-title\">")
        .raw(title)
        .raw("</title>\n");
}

fn svg_close(h: &mut Html, caption: &'static str, legend: &[(String, usize)]) {
    h.raw("</svg>\n<figcaption>")
        .raw(caption)
        .raw("</figcaption>\n");
    if !legend.is_empty() {
        h.raw("<div class=\"legend\">");
        for (name, color) in legend {
            h.raw("<span><i class=\"swatch\" style=\"background:")
                .raw(PALETTE[color % PALETTE.len()])
                .raw("\"></i>")
                .text(name)
                .raw("</span>");
        }
        h.raw("</div>\n");
    }
    h.raw("</figure>\n");
}

fn line(h: &mut Html, class: &'static str, a: (f64, f64), b: (f64, f64)) {
    h.raw("<line class=\"")
        .raw(class)
        .raw("\" x1=\"")
        .num(a.0)
        .raw("\" y1=\"")
        .num(a.1)
        .raw("\" x2=\"")
        .num(b.0)
        .raw("\" y2=\"")
        .num(b.1)
        .raw("\"/>\n");
}

fn label(h: &mut Html, anchor: &'static str, at: (f64, f64), text: &str) {
    h.raw("<text text-anchor=\"")
        .raw(anchor)
        .raw("\" x=\"")
        .num(at.0)
        .raw("\" y=\"")
        .num(at.1)
        .raw("\">")
        .text(text)
        .raw("</text>\n");
}

fn polyline(h: &mut Html, color: usize, points: &[(f64, f64)]) {
    h.raw("<polyline fill=\"none\" stroke-width=\"2\" stroke=\"")
        .raw(PALETTE[color % PALETTE.len()])
        .raw("\" points=\"");
    for (index, (x, y)) in points.iter().enumerate() {
        if index > 0 {
            h.raw(" ");
        }
        h.num(*x).raw(",").num(*y);
    }
    h.raw("\"/>\n");
}

fn dot(h: &mut Html, color: usize, at: (f64, f64)) {
    h.raw("<circle r=\"3\" fill=\"")
        .raw(PALETTE[color % PALETTE.len()])
        .raw("\" cx=\"")
        .num(at.0)
        .raw("\" cy=\"")
        .num(at.1)
        .raw("\"/>\n");
}

/// Axes with `y_ticks` labelled gridlines and day labels along x.
fn axes(h: &mut Html, frame: &Frame, y_ticks: &[(f64, String)], x_ticks: &[(f64, String)]) {
    for (y, text) in y_ticks {
        line(
            h,
            "grid",
            (LEFT, frame.py(*y)),
            (WIDTH - RIGHT, frame.py(*y)),
        );
        label(h, "end", (LEFT - 6.0, frame.py(*y) + 4.0), text);
    }
    for (x, text) in x_ticks {
        label(h, "middle", (frame.px(*x), HEIGHT - BOTTOM + 16.0), text);
    }
    line(
        h,
        "axis",
        (LEFT, HEIGHT - BOTTOM),
        (WIDTH - RIGHT, HEIGHT - BOTTOM),
    );
    line(h, "axis", (LEFT, TOP), (LEFT, HEIGHT - BOTTOM));
}

fn no_data(h: &mut Html) {
    label(
        h,
        "middle",
        (WIDTH / 2.0, HEIGHT / 2.0),
        "no data this month",
    );
}

/// Every operation of the report, in order.
fn operations(report: &MonthlyReport) -> Vec<&OperationReview> {
    report
        .workflows
        .iter()
        .flat_map(|w| &w.operations)
        .collect()
}

/// Day ticks: the 1st, every 7th day, and the last.
fn day_ticks(days: i64) -> Vec<(f64, String)> {
    let mut ticks: Vec<(f64, String)> = (0..days)
        .step_by(7)
        .map(|d| (d as f64 + 0.5, (d + 1).to_string()))
        .collect();
    ticks.push((days as f64 - 0.5, days.to_string()));
    ticks
}

/// Days since the start of the report's period of an RFC 3339 time.
fn day_offset(report: &MonthlyReport, at: &str) -> f64 {
    let parse =
        |text: &str| chrono::DateTime::parse_from_rfc3339(text).map_or(0, |t| t.timestamp_millis());
    (parse(at) - parse(&report.period.from)) as f64 / 86_400_000.0
}

fn html_charts(h: &mut Html, report: &MonthlyReport) {
    h.raw("<h2 id=\"charts\">Charts</h2>\n");
    chart_trust(h, report);
    chart_accuracy(h, report);
    chart_cost(h, report);
    chart_reliability(h, report);
}

fn chart_trust(h: &mut Html, report: &MonthlyReport) {
    let days = report.period.days.max(1) as f64;
    let frame = Frame {
        x: (0.0, days),
        y: (0.5, 4.5),
    };
    svg_open(h, "chart-trust", "Trust phase over time");
    let ticks: Vec<(f64, String)> = (1..=4).map(|p| (p as f64, format!("phase {p}"))).collect();
    axes(h, &frame, &ticks, &day_ticks(report.period.days));
    // The series end at the report's `as of`: a month still running stops at now.
    let end = day_offset(report, &report.as_of).clamp(0.0, days);
    let mut legend = Vec::new();
    for (index, operation) in operations(report).into_iter().take(MAX_SERIES).enumerate() {
        let mut points: Vec<(f64, f64)> = Vec::new();
        let mut current = operation.phase.at_start;
        if let Some(p) = current {
            points.push((0.0, p as f64));
        }
        for change in operation
            .phase
            .changes
            .iter()
            .filter(|c| c.kind != "recommended")
        {
            let x = day_offset(report, &change.at).clamp(0.0, end);
            if let Some(p) = current {
                points.push((x, p as f64));
            }
            current = change.to_phase;
            if let Some(p) = current {
                points.push((x, p as f64));
            }
        }
        if let Some(p) = current {
            points.push((end, p as f64));
        }
        // Offset series slightly so that operations in the same phase stay visible.
        let nudge = index as f64 * 0.04;
        let pixels: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, y)| (frame.px(*x), frame.py(*y + nudge)))
            .collect();
        if !pixels.is_empty() {
            polyline(h, index, &pixels);
            legend.push((operation.operation.clone(), index));
        }
    }
    if legend.is_empty() {
        no_data(h);
    }
    svg_close(
        h,
        "Each operation's phase across the month (day of month on the x axis).",
        &legend,
    );
}

fn chart_accuracy(h: &mut Html, report: &MonthlyReport) {
    let days = report.period.days.max(1) as f64;
    let lowest = operations(report)
        .iter()
        .flat_map(|o| &o.accuracy_by_day)
        .map(|d| d.agreement)
        .fold(1.0_f64, f64::min);
    let floor = (((lowest - 0.05) * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let frame = Frame {
        x: (0.0, days),
        y: (floor, 1.0),
    };
    svg_open(h, "chart-accuracy", "Accuracy over time");
    let ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| floor + (1.0 - floor) * i as f64 / 5.0)
        .map(|v| (v, format!("{:.0}%", v * 100.0)))
        .collect();
    axes(h, &frame, &ticks, &day_ticks(report.period.days));
    let mut legend = Vec::new();
    for (index, operation) in operations(report).into_iter().take(MAX_SERIES).enumerate() {
        let points: Vec<(f64, f64)> = operation
            .accuracy_by_day
            .iter()
            .map(|d| {
                let x = day_offset(report, &format!("{}T12:00:00Z", d.day));
                (frame.px(x), frame.py(d.agreement))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        polyline(h, index, &points);
        for point in &points {
            dot(h, index, *point);
        }
        legend.push((operation.operation.clone(), index));
    }
    if legend.is_empty() {
        no_data(h);
    }
    svg_close(
        h,
        "Daily agreement of reviews with the AI proposal, per operation.",
        &legend,
    );
}

fn chart_cost(h: &mut Html, report: &MonthlyReport) {
    let models: Vec<_> = report.costs.per_model.iter().take(MAX_SERIES).collect();
    let most = models.iter().map(|m| m.usd).fold(0.0_f64, f64::max);
    svg_open(h, "chart-cost", "Cost by model");
    if models.is_empty() || most <= 0.0 {
        no_data(h);
    }
    let row = (HEIGHT - TOP - BOTTOM) / MAX_SERIES as f64;
    let left = 160.0;
    for (index, model) in models.iter().enumerate() {
        let y = TOP + index as f64 * row;
        let width = if most > 0.0 {
            model.usd / most * (WIDTH - left - 120.0)
        } else {
            0.0
        };
        label(h, "end", (left - 8.0, y + row * 0.65), &model.model);
        h.raw("<rect fill=\"")
            .raw(PALETTE[index % PALETTE.len()])
            .raw("\" x=\"")
            .num(left)
            .raw("\" y=\"")
            .num(y + row * 0.15)
            .raw("\" width=\"")
            .num(width.max(1.0))
            .raw("\" height=\"")
            .num(row * 0.7)
            .raw("\"/>\n");
        label(
            h,
            "start",
            (left + width.max(1.0) + 6.0, y + row * 0.65),
            &money(model.usd),
        );
    }
    svg_close(h, "Known spend of the month per model.", &[]);
}

fn chart_reliability(h: &mut Html, report: &MonthlyReport) {
    let frame = Frame {
        x: (0.0, 1.0),
        y: (0.0, 1.0),
    };
    svg_open(h, "chart-reliability", "Reliability diagram");
    let ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| i as f64 / 5.0)
        .map(|v| (v, format!("{:.0}%", v * 100.0)))
        .collect();
    let x_ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| i as f64 / 5.0)
        .map(|v| (v, format!("{v:.1}")))
        .collect();
    axes(h, &frame, &ticks, &x_ticks);
    line(
        h,
        "diag",
        (frame.px(0.0), frame.py(0.0)),
        (frame.px(1.0), frame.py(1.0)),
    );
    let mut legend = Vec::new();
    for (index, operation) in operations(report).into_iter().take(MAX_SERIES).enumerate() {
        let Some(calibration) = &operation.calibration else {
            continue;
        };
        let points: Vec<(f64, f64)> = calibration
            .bins
            .iter()
            .map(|b| (frame.px(b.mean_confidence), frame.py(b.accuracy)))
            .collect();
        polyline(h, index, &points);
        for point in &points {
            dot(h, index, *point);
        }
        legend.push((
            format!("{} (ECE {:.3})", operation.operation, calibration.ece),
            index,
        ));
    }
    if legend.is_empty() {
        no_data(h);
    }
    svg_close(h, "Mean confidence (x) against the share of reviews that agreed (y) in equal-frequency bins; the dashed diagonal is perfect calibration.", &legend);
}
