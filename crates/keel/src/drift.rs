//! `keel drift [--workflow W]` and `keel drift show WORKFLOW/FEATURE`, over the HTTP API as
//! the user of `--token` / `KEEL_TOKEN`: the latest drift test of every monitored feature,
//! or one feature's configuration and last 30 results. Each result shows its method (spelled
//! as in the configuration: `ks`, `wasserstein`, `chi_square`, `z_test`, `jensen_shannon`,
//! `psi`), whether it drifted, whether it alerted (`alert`), recovered (`recovered`) or is
//! part of an alert still open (`alerting`), its streak of drifted windows, and both windows'
//! rows and time bounds.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::ServerArgs;
use crate::people::{request, TokenArg};
use crate::table::{cell, Table};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DriftArgs {
    #[command(subcommand)]
    pub command: Option<DriftCommand>,
    /// Only this workflow's features.
    #[arg(long)]
    pub workflow: Option<String>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// One feature: its configuration and its last 30 results, newest first.
    Show {
        /// WORKFLOW/FEATURE, e.g. support/body_length.
        feature: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(args: DriftArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            let path = match &args.workflow {
                Some(workflow) => format!("/v1/drift?workflow={workflow}"),
                None => "/v1/drift".to_string(),
            };
            let body =
                request(reqwest::Method::GET, &path, None, &args.token, &args.server).await?;
            if args.server.json {
                println!("{body}");
            } else {
                print_results(&body, true);
            }
        }
        Some(DriftCommand::Show {
            feature,
            token,
            server,
        }) => {
            let path = match feature.split_once('/') {
                Some((workflow, name)) if !workflow.is_empty() && !name.is_empty() && !name.contains('/') => {
                    format!("/v1/drift/{workflow}/{name}")
                }
                _ => bail!("name a feature as WORKFLOW/FEATURE (e.g. support/body_length); `keel drift` lists them"),
            };
            let body = request(reqwest::Method::GET, &path, None, &token, &server).await?;
            if server.json {
                println!("{body}");
            } else {
                let config = &body["config"];
                let monitor = &body["monitor"];
                if !monitor.is_null() {
                    println!(
                        "windows: reference {}  current {}  min_rows {}  persistence {}  on_drift {}",
                        window_text(&monitor["reference"]),
                        window_text(&monitor["current"]),
                        or_dash(&monitor["min_rows"]),
                        or_dash(&monitor["persistence"]),
                        or_dash(&monitor["on_drift"]),
                    );
                }
                if config.is_null() {
                    println!("{}: no longer monitored", text(&body["feature"]));
                } else {
                    println!(
                        "{}/{}: {}  kind {}  step {}  method {}  threshold {}",
                        text(&body["workflow"]),
                        text(&config["name"]),
                        text(&config["expr"]),
                        or_dash(&config["kind"]),
                        or_dash(&config["step"]),
                        or_dash(&config["method"]),
                        or_dash(&config["threshold"]),
                    );
                }
                print_results(&body["results"], false);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A table: one row per result.
fn print_results(rows: &Value, first_column_is_feature: bool) {
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no drift results yet (a workflow's `monitor:` section lists the features; results appear after the first evaluation)");
        return;
    }
    let first = if first_column_is_feature {
        "FEATURE"
    } else {
        "EVALUATED"
    };
    let mut table = Table::new(&[
        first,
        "METHOD",
        ">VALUE",
        ">THRESHOLD",
        "DRIFTED",
        "ALERT",
        ">STREAK",
        "REFERENCE (ROWS FROM..TO)",
        "CURRENT (ROWS FROM..TO)",
        ">FAILED",
    ]);
    for row in rows {
        let label = if first_column_is_feature {
            format!("{}/{}", text(&row["workflow"]), text(&row["feature"]))
        } else {
            time_text(&row["evaluated_at_ms"])
        };
        let method = match text(&row["status"]) {
            "tested" => text(&row["method"]).to_string(),
            other => other.to_string(),
        };
        let drifted = match (text(&row["status"]), row["drifted"].as_bool()) {
            ("tested", Some(true)) => "yes",
            ("tested", _) => "no",
            _ => "-",
        };
        let alert = if row["alerted"] == true {
            "alert"
        } else if row["recovered"] == true {
            "recovered"
        } else if row["alerting"] == true {
            "alerting"
        } else {
            "-"
        };
        table.row([
            label,
            method,
            number(&row["value"]),
            number(&row["threshold"]),
            drifted.to_string(),
            alert.to_string(),
            cell(&row["streak"]),
            bounds(
                &row["reference_rows"],
                &row["reference_from_ms"],
                &row["current_from_ms"],
            ),
            bounds(
                &row["current_rows"],
                &row["current_from_ms"],
                &row["current_to_ms"],
            ),
            cell(&row["failed_rows"]),
        ]);
    }
    table.print();
}

/// `rows  from..to` of one window.
fn bounds(rows: &Value, from_ms: &Value, to_ms: &Value) -> String {
    format!(
        "{} {}..{}",
        cell(rows),
        time_text(from_ms),
        time_text(to_ms)
    )
}

fn time_text(ms: &Value) -> String {
    ms.as_i64()
        .map(keel_core::case::millis_to_datetime)
        .map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
}

/// A configured window: `{"rows": 200}` → `200 rows`, `{"duration": ms}` → `7d`.
fn window_text(window: &Value) -> String {
    if let Some(rows) = window["rows"].as_u64() {
        return format!("{rows} rows");
    }
    match window["duration"].as_u64() {
        Some(ms) if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        Some(ms) if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        Some(ms) => format!("{ms}ms"),
        None => "-".to_string(),
    }
}

fn number(value: &Value) -> String {
    value.as_f64().map_or("-".to_string(), |x| {
        if x != 0.0 && x.abs() < 1e-4 {
            format!("{x:.2e}")
        } else {
            format!("{x:.4}")
        }
    })
}

fn or_dash(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}
