//! `keel trust [show OP | recommendations | promote OP | decline OP | demote OP]`, over the
//! HTTP API as the user of `--token` / `KEEL_TOKEN`. OP is `WORKFLOW/STEP`.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ServerArgs;
use crate::people::{request, TokenArg};
use crate::table::{cell, Table};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrustArgs {
    #[command(subcommand)]
    pub command: Option<TrustCommand>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// One operation: phase, reviews and agreements in its window, the Wilson interval, the
    /// next phase's target and any open recommendation with its evidence.
    Show {
        /// WORKFLOW/STEP, e.g. refunds/pay.
        operation: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Accuracy and calibration: agreement with its Wilson interval per model, ECE, the
    /// calibrator in use, and the confusion matrix for classify steps.
    Accuracy {
        operation: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Promotion recommendations (open ones by default).
    Recommendations {
        /// open (default), approved, declined, stale or all.
        #[arg(long, default_value = "open")]
        status: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve the operation's open recommendation (a governor who did not write the version).
    Promote {
        operation: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Decline the operation's open recommendation.
    Decline {
        operation: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Withdraw trust by hand: one phase down, or to --to N.
    Demote {
        operation: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn path_of(operation: &str) -> anyhow::Result<String> {
    match operation.split_once('/') {
        Some((workflow, step))
            if !workflow.is_empty() && !step.is_empty() && !step.contains('/') =>
        {
            Ok(format!("/v1/trust/{workflow}/{step}"))
        }
        _ => {
            bail!("name an operation as WORKFLOW/STEP (e.g. refunds/pay); `keel trust` lists them")
        }
    }
}

pub async fn run(args: TrustArgs) -> anyhow::Result<ExitCode> {
    let Some(command) = args.command else {
        let body = request(
            reqwest::Method::GET,
            "/v1/trust",
            None,
            &args.token,
            &args.server,
        )
        .await?;
        return print_operations(&body, args.server.json);
    };
    match command {
        TrustCommand::Show {
            operation,
            token,
            server,
        } => {
            let body = request(
                reqwest::Method::GET,
                &path_of(&operation)?,
                None,
                &token,
                &server,
            )
            .await?;
            if server.json {
                println!("{body}");
            } else {
                print_operations(&json!([body]), false)?;
                if !body["open_recommendation"].is_null() {
                    println!(
                        "\nopen recommendation:\n{}",
                        serde_json::to_string_pretty(&body["open_recommendation"])?
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Accuracy {
            operation,
            token,
            server,
        } => print_accuracy(&operation, &token, &server).await,
        TrustCommand::Recommendations {
            status,
            token,
            server,
        } => {
            let path = if status == "all" {
                "/v1/trust/recommendations".to_string()
            } else {
                format!("/v1/trust/recommendations?status={status}")
            };
            let body = request(reqwest::Method::GET, &path, None, &token, &server).await?;
            if server.json {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let rows = body.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                eprintln!("no {status} recommendations");
            }
            for row in rows {
                println!(
                    "{}  {}  phase {} → {}  {}  reviews {} agreements {} wilson ≥ {:.3}",
                    text(&row["id"]),
                    text(&row["operation"]),
                    row["from_phase"],
                    row["to_phase"],
                    text(&row["status"]),
                    row["evidence"]["reviews"],
                    row["evidence"]["agreements"],
                    row["evidence"]["wilson"]["low"].as_f64().unwrap_or(0.0),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Promote {
            operation,
            reason,
            token,
            server,
        } => {
            decide(
                &operation,
                "promote",
                json!({"reason": reason}),
                &token,
                &server,
            )
            .await
        }
        TrustCommand::Decline {
            operation,
            reason,
            token,
            server,
        } => {
            decide(
                &operation,
                "decline",
                json!({"reason": reason}),
                &token,
                &server,
            )
            .await
        }
        TrustCommand::Demote {
            operation,
            reason,
            to,
            token,
            server,
        } => {
            decide(
                &operation,
                "demote",
                json!({"reason": reason, "to": to}),
                &token,
                &server,
            )
            .await
        }
    }
}

async fn decide(
    operation: &str,
    verb: &str,
    body: Value,
    token: &TokenArg,
    server: &ServerArgs,
) -> anyhow::Result<ExitCode> {
    let path = format!("{}/{verb}", path_of(operation)?);
    let changed = request(reqwest::Method::POST, &path, Some(body), token, server).await?;
    if server.json {
        println!("{changed}");
    } else {
        println!(
            "{}: {} (phase {} → {})",
            text(&changed["operation"]),
            text(&changed["action"]),
            changed["from_phase"],
            changed["to_phase"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_operations(body: &Value, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = body.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no operations yet (an operation is an action that uses an `ai` step's output)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "OPERATION",
        ">PHASE",
        ">REVIEWS",
        ">AGREE",
        "WILSON 95%",
        ">TARGET",
        "RECOMMENDATION",
    ]);
    for row in rows {
        let target = row["next_target"]
            .as_f64()
            .map_or("-".to_string(), |t| format!("{t:.2}"));
        let recommendation = if row["open_recommendation"].is_null() {
            "-".to_string()
        } else {
            format!("to phase {}", row["open_recommendation"]["to_phase"])
        };
        table.row([
            cell(&row["operation"]),
            cell(&row["phase"]),
            cell(&row["reviews_in_window"]),
            cell(&row["agreements_in_window"]),
            format!(
                "[{:.3}, {:.3}]",
                row["wilson_low"].as_f64().unwrap_or(0.0),
                row["wilson_high"].as_f64().unwrap_or(1.0)
            ),
            target,
            recommendation,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

async fn print_accuracy(
    operation: &str,
    token: &TokenArg,
    server: &ServerArgs,
) -> anyhow::Result<ExitCode> {
    let path = format!("{}/accuracy", path_of(operation)?);
    let body = request(reqwest::Method::GET, &path, None, token, server).await?;
    if server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let interval = |v: &Value| {
        format!(
            "[{:.3}, {:.3}]",
            v["wilson_low"].as_f64().unwrap_or(0.0),
            v["wilson_high"].as_f64().unwrap_or(1.0)
        )
    };
    println!(
        "{}: {} reviews, {} agreed, Wilson 95% {}",
        text(&body["operation"]),
        body["reviews"],
        body["agreements"],
        interval(&body)
    );
    println!();
    let mut table = Table::new(&[
        "MODEL",
        ">REVIEWS",
        ">AGREE",
        "WILSON 95%",
        ">ECE",
        "CALIBRATOR (held-out ECE before → after)",
    ]);
    for model in body["per_model"].as_array().cloned().unwrap_or_default() {
        let calibrator = if model["calibrator"].is_null() {
            "-".to_string()
        } else {
            format!(
                "{} ({:.3} → {:.3})",
                text(&model["calibrator"]["kind"]),
                model["calibrator"]["ece_before"].as_f64().unwrap_or(0.0),
                model["calibrator"]["ece_after"].as_f64().unwrap_or(0.0)
            )
        };
        table.row([
            cell(&model["model"]),
            cell(&model["reviews"]),
            cell(&model["agreements"]),
            interval(&model),
            model["ece"]
                .as_f64()
                .map_or("-".to_string(), |e| format!("{e:.3}")),
            calibrator,
        ]);
    }
    table.print();
    if let Some(table) = confusion_table(&body["confusion"]) {
        println!("\nconfusion (rows: proposed, columns: final):");
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// The confusion matrix as a table: one row per proposed label, one column per final label.
fn confusion_table(confusion: &Value) -> Option<Table> {
    let names: Vec<String> = confusion["labels"].as_array()?.iter().map(cell).collect();
    let headers: Vec<String> = std::iter::once("PROPOSED \\ FINAL".to_string())
        .chain(names.iter().map(|name| format!(">{name}")))
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(&headers);
    let matrix = confusion["matrix"].as_array().cloned().unwrap_or_default();
    for (i, row) in matrix.iter().enumerate() {
        let label = names.get(i).cloned().unwrap_or_default();
        let counts = row.as_array().cloned().unwrap_or_default();
        table.row(std::iter::once(label).chain(counts.iter().map(cell)));
    }
    Some(table)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    /// `[[112,6],[16,118]]` printed as `ham 1126` / `spam 16118` before: cells ran together.
    #[test]
    fn the_confusion_matrix_keeps_its_cells_apart() {
        let confusion = serde_json::json!({
            "labels": ["ham", "spam"], "matrix": [[112, 6], [16, 118]]
        });
        let text = confusion_table(&confusion).unwrap().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "PROPOSED \\ FINAL  ham  spam",
                "ham               112     6",
                "spam               16   118",
            ]
        );
    }
}
