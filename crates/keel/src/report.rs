//! `keel report costs|monthly`, over the HTTP API as the user of `--token` / `KEEL_TOKEN`
//! (the `read_reports` action: admin, operator, governor, auditor). The server builds the
//! reports, since it knows the deployed routes and `keel.toml`'s prices and budgets.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{http, problem_text, ServerArgs};
use crate::people::TokenArg;
use crate::table::{cell, Table};

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Cost per case, operation, model and day; how each cascade settles its proposals and
    /// what it saves against its last tier; projected monthly spend against the budget.
    Costs(CostsArgs),
    /// The monthly operational review: volume and automation, trust, accuracy and
    /// calibration, cost and savings, latency, SLAs, exceptions, drift, recommendations.
    Monthly(MonthlyArgs),
}

#[derive(Args, Debug)]
pub struct CostsArgs {
    /// A whole UTC month, YYYY-MM (instead of --from/--to).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,
    /// First UTC day, YYYY-MM-DD (default: the first of the month).
    #[arg(long)]
    pub from: Option<String>,
    /// Last UTC day, inclusive, YYYY-MM-DD (default: today).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Json,
    Md,
    Html,
}

#[derive(Args, Debug)]
pub struct MonthlyArgs {
    /// The UTC month, YYYY-MM (default: this month so far).
    #[arg(long)]
    pub month: Option<String>,
    /// json, md (Markdown) or html (one self-contained file with SVG charts).
    #[arg(long, value_enum, default_value = "md")]
    pub format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(command: ReportCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReportCommand::Costs(args) => costs(args).await,
        ReportCommand::Monthly(args) => monthly(args).await,
    }
}

/// GETs `path` and returns the body as text, or the problem as an error.
async fn fetch(path: &str, token: &TokenArg, server: &ServerArgs) -> anyhow::Result<String> {
    let base = server.server.trim_end_matches('/');
    let request = http(token)?.get(format!("{base}{path}"));
    let response = request.send().await.with_context(|| {
        format!("cannot reach keel at {base}; start it with `keel serve` or point --server / KEEL_SERVER at it")
    })?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        bail!("{} (HTTP {})", problem_text(&problem), status.as_u16());
    }
    Ok(body)
}

async fn costs(args: CostsArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(month) = &args.month {
        query.push(format!("month={month}"));
    }
    if let Some(from) = &args.from {
        query.push(format!("from={from}"));
    }
    if let Some(to) = &args.to {
        query.push(format!("to={to}"));
    }
    let path = format!("/v1/reports/costs?{}", query.join("&"));
    let body = fetch(&path, &args.token, &args.server).await?;
    if args.server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let report: Value = serde_json::from_str(&body)?;
    print_costs(&report);
    Ok(ExitCode::SUCCESS)
}

fn usd(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_string(), |v| format!("${v:.4}"))
}

fn pct(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// Each cascade's tiers, then what each cascade saved against always calling its last tier.
fn print_cascades(report: &Value) {
    let mut tiers = Table::new(&[
        "CASCADE", ">TIER", "MODEL", ">SETTLED", ">SHARE", ">ACCEPTS",
    ]);
    let mut savings = Table::new(&["CASCADE", ">SAVED", ">NET", ">BASELINE/PROPOSAL", "METHOD"]);
    for cascade in report["cascades"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", cell(&cascade["workflow"]), cell(&cascade["step"]));
        for tier in cascade["tiers"].as_array().into_iter().flatten() {
            tiers.row([
                name.clone(),
                cell(&tier["tier"]),
                cell(&tier["model"]),
                cell(&tier["settled"]),
                pct(&tier["share"]),
                pct(&tier["acceptance_rate"]),
            ]);
        }
        savings.row([
            name,
            usd(&cascade["saved_usd"]),
            usd(&cascade["net_saved_usd"]),
            usd(&cascade["baseline_usd_per_proposal"]),
            cell(&cascade["baseline_method"]),
        ]);
    }
    println!();
    tiers.print();
    println!();
    savings.print();
}

fn print_costs(report: &Value) {
    println!(
        "{} to {}: {} known ({} steps, {} gateway), {} calls, {} of unknown cost",
        report["period"]["from"].as_str().unwrap_or(""),
        report["period"]["to"].as_str().unwrap_or(""),
        usd(&report["total_usd"]),
        usd(&report["workflow_usd"]),
        usd(&report["gateway_usd"]),
        report["calls"],
        report["cost_unknown_calls"],
    );
    println!();
    let mut models = Table::new(&["MODEL", ">CALLS", ">COST", ">PER CALL"]);
    for model in report["per_model"].as_array().into_iter().flatten() {
        models.row([
            cell(&model["model"]),
            cell(&model["calls"]),
            usd(&model["usd"]),
            usd(&model["usd_per_call"]),
        ]);
    }
    models.print();
    println!();
    let mut workflows = Table::new(&["WORKFLOW", ">CASES", ">COST", ">PER CASE"]);
    for workflow in report["per_workflow"].as_array().into_iter().flatten() {
        workflows.row([
            cell(&workflow["workflow"]),
            cell(&workflow["cases"]),
            usd(&workflow["usd"]),
            usd(&workflow["usd_per_case"]),
        ]);
    }
    workflows.print();
    print_cascades(report);
    let budget = &report["budget"];
    println!(
        "\nbudget {}: {} month to date, {} projected, limit {} ({})",
        budget["month"].as_str().unwrap_or(""),
        usd(&budget["month_to_date_usd"]),
        usd(&budget["projected_usd"]),
        usd(&budget["limit_usd"]),
        budget["status"].as_str().unwrap_or("")
    );
    eprintln!(
        "\nsavings: {}",
        report["savings_estimator"].as_str().unwrap_or("")
    );
}

async fn monthly(args: MonthlyArgs) -> anyhow::Result<ExitCode> {
    let format = match args.format {
        Format::Json => "json",
        Format::Md => "md",
        Format::Html => "html",
    };
    let mut path = format!("/v1/reports/monthly?format={format}");
    if let Some(month) = &args.month {
        path.push_str(&format!("&month={month}"));
    }
    let body = fetch(&path, &args.token, &args.server).await?;
    match &args.output {
        Some(file) => {
            std::fs::write(file, &body)
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!("wrote {} ({} bytes)", file.display(), body.len());
        }
        None => println!("{body}"),
    }
    Ok(ExitCode::SUCCESS)
}
