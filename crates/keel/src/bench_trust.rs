//! `keel bench trust`: one trust evaluation pass over many operations with many reviewed
//! outcomes each. Measured twice: the statistics alone (`keel_tuning::trust::evaluate` over
//! outcomes in memory), and the engine's whole pass on a SQLite store (reading each
//! operation's window and since-promotion outcomes, evaluating, and the calibration check).
//! Then, unless `--report-cases 0`, the monthly operational review over a generated month
//! (`keel bench report`'s measurement), its figures prefixed `report_`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use keel_engine::{Engine, Options, SystemClock};
use keel_store::{Store, TrustOutcomeRow};

use crate::bench::{progress, Figures};

#[derive(Args, Debug)]
pub struct TrustArgs {
    /// Operations to evaluate (10 per workflow).
    #[arg(long, default_value_t = 1_000)]
    pub operations: usize,
    /// Reviewed outcomes per operation.
    #[arg(long, default_value_t = 10_000)]
    pub outcomes: usize,
    /// Cases in the month of the monthly-report part (the same measurement as
    /// `keel bench report`); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub report_cases: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

const OPERATIONS_PER_WORKFLOW: usize = 10;
const DAY_MS: i64 = 86_400_000;

/// A workflow whose `ai` step's output is read by ten actions: ten operations.
fn workflow(index: usize) -> String {
    let mut steps = String::from(
        "  - id: judge\n    ai:\n      task: classify\n      labels: [pay, hold]\n      prompt: \"{{ input.text }}\"\n      route:\n        - model: small\n",
    );
    for op in 0..OPERATIONS_PER_WORKFLOW {
        steps.push_str(&format!(
            "  - id: act{op}\n    action:\n      method: POST\n      url: \"http://127.0.0.1:9/x\"\n      body: {{ label: \"${{data.judge.output.label}}\" }}\n      trust: {{ phase: 2, promotion: {{ min_reviews: 73, window: 30d }} }}\n"
        ));
    }
    steps.push_str("  - id: done\n    end: ok\n");
    format!(
        "name: bench-trust-{index}\nversion: \"1\"\ninput: {{ schema: {{ type: object }} }}\nsteps:\n{steps}"
    )
}

/// Outcomes of one operation: `n` reviews over the last 20 days, 98% agreeing (seeded).
fn outcomes(
    operation: &str,
    ai_step: &str,
    n: usize,
    now_ms: i64,
    seed: u64,
) -> Vec<TrustOutcomeRow> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let span = 20 * DAY_MS;
    (0..n)
        .map(|i| {
            let agreed = next() % 100 < 98;
            let confidence = 0.5 + (next() % 500) as f64 / 1000.0;
            TrustOutcomeRow {
                operation: operation.to_string(),
                case_id: format!("{operation}-{i}"),
                task_id: format!("{operation}-{i}.review"),
                at_ms: now_ms - span + (i as i64 * span) / n.max(1) as i64,
                source: "post".into(),
                verdict: if agreed { "agree" } else { "corrected" }.into(),
                phase: 2,
                model: Some("small".into()),
                confidence: Some(confidence),
                cost_usd: Some(0.0004),
                ai_step: Some(ai_step.to_string()),
                proposed_label: Some("pay".into()),
                final_label: Some(if agreed { "pay" } else { "hold" }.into()),
            }
        })
        .collect()
}

pub async fn bench_trust(args: &TrustArgs) -> anyhow::Result<Figures> {
    if args.operations == 0 || args.outcomes == 0 {
        bail!("--operations and --outcomes must be positive");
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string()).await?;
    // A bench deployment has no governor: its operations start in phase 2 without waiting
    // for an approval (the documented opt-out of change control).
    let config = keel_ai::config::Config::parse("bench", "[change_control]\nreview = \"off\"\n")
        .map_err(|errors| anyhow::anyhow!("bench configuration: {errors:?}"))?;
    let options = Options {
        node_id: "bench".into(),
        data_dir: dir.path().to_path_buf(),
        ai: Some(Arc::new(keel_ai::cascade::Runtime::new(
            config,
            reqwest::Client::new(),
        ))),
        // The bench runs the pass itself.
        trust_interval: std::time::Duration::from_secs(86_400),
        ..Options::default()
    };
    let engine = Engine::start(store.clone(), options, Arc::new(SystemClock)).await?;
    let workflows = args.operations.div_ceil(OPERATIONS_PER_WORKFLOW);
    for index in 0..workflows {
        engine
            .deploy_source(&workflow(index), &format!("bench-trust-{index}.yaml"))
            .await?;
    }
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let total = (args.operations * args.outcomes) as u64;
    let bar = progress(total, "outcomes");
    let started = Instant::now();
    let mut in_memory = Vec::with_capacity(args.operations);
    for op in 0..args.operations {
        let workflow = format!("bench-trust-{}", op / OPERATIONS_PER_WORKFLOW);
        let operation = format!("{workflow}/act{}", op % OPERATIONS_PER_WORKFLOW);
        let rows = outcomes(
            &operation,
            &format!("{workflow}/judge"),
            args.outcomes,
            now_ms,
            op as u64,
        );
        store.insert_trust_outcomes(&rows).await?;
        in_memory.push(
            rows.iter()
                .map(|r| keel_tuning::trust::Outcome {
                    at_ms: r.at_ms,
                    agreed: r.verdict == "agree",
                })
                .collect::<Vec<_>>(),
        );
        bar.inc(args.outcomes as u64);
    }
    bar.finish_and_clear();
    let load_s = started.elapsed().as_secs_f64();

    // The statistics alone: every operation's window and SPRT, in memory.
    let criteria = keel_tuning::trust::PhaseCriteria::new(
        50,
        0.97,
        keel_tuning::trust::Window::Milliseconds(30 * DAY_MS),
    )?;
    let demotion = keel_tuning::trust::DemotionParams::new(0.05, None, 0.05, 0.2)?;
    let phase = keel_tuning::trust::Phase::new(2)?;
    let started = Instant::now();
    let mut recommended = 0;
    for outcomes in &in_memory {
        let evaluation =
            keel_tuning::trust::evaluate(phase, now_ms, outcomes, outcomes, &criteria, &demotion)?;
        recommended += usize::from(evaluation.recommend_promotion.is_some());
    }
    let statistics_s = started.elapsed().as_secs_f64();

    // The engine's pass: reads from SQLite, evaluates, journals recommendations, fits
    // calibrators (the first pass), then a steady-state pass.
    let started = Instant::now();
    let mut first = engine.evaluate_trust_only().await?;
    let first_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    first.calibrators_fitted = engine.refit_calibrators_once().await?;
    let fit_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let second = engine.evaluate_trust_only().await?;
    let second_s = started.elapsed().as_secs_f64();
    engine.shutdown(std::time::Duration::from_secs(2)).await;

    let mut figures = Figures {
        title: format!(
            "keel bench trust: one evaluation pass over {} operations with {} reviewed outcomes each (SQLite)",
            args.operations, args.outcomes
        ),
        rows: Vec::new(),
    };
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    figures.add("operations", args.operations as u64, "");
    figures.add("outcomes", total, "");
    figures.add("load_s", round(load_s), "s");
    figures.add("statistics_pass_s", round(statistics_s), "s (floor: < 1 s)");
    figures.add("statistics_recommended", recommended as u64, "operations");
    figures.add(
        "engine_first_pass_s",
        round(first_s),
        "s (after a start: reads every operation's reviews)",
    );
    figures.add(
        "engine_calibrator_fit_s",
        round(fit_s),
        "s (every (ai step, model), newest 50,000 reviews each)",
    );
    figures.add(
        "engine_first_pass_outcomes_read",
        first.outcomes_read as u64,
        "",
    );
    figures.add(
        "engine_recommended",
        first.recommended.len() as u64,
        "operations",
    );
    figures.add(
        "engine_calibrators_fitted",
        first.calibrators_fitted as u64,
        "",
    );
    figures.add(
        "engine_steady_pass_s",
        round(second_s),
        "s (evaluation only; calibrators refit at most every 5 min; floor: < 1 s)",
    );
    figures.add(
        "engine_steady_pass_outcomes_read",
        second.outcomes_read as u64,
        "",
    );
    if args.report_cases > 0 {
        let report = crate::bench_report::bench_report(&crate::bench_report::ReportArgs {
            cases: args.report_cases,
            database: None,
            output: None,
            json: args.json,
        })
        .await?;
        figures.title.push_str(&format!(
            "; then the monthly review over {} cases",
            args.report_cases
        ));
        for (name, value, unit) in report.rows {
            let name = if name.starts_with("report_") {
                name
            } else {
                format!("report_{name}")
            };
            figures.rows.push((name, value, unit));
        }
    }
    Ok(figures)
}
