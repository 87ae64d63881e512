//! `keel exceptions [patterns|queues]` and `keel exception show|resolve|assign|claim|escalate
//! ID`, over the HTTP API
//! as the user whose token is given with `--token` or `KEEL_TOKEN`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ServerArgs;
use crate::people::{request, TokenArg};
use crate::table::{cell, Table};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExceptionsArgs {
    #[command(subcommand)]
    pub command: Option<ExceptionsCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Subcommand, Debug)]
pub enum ExceptionsCommand {
    /// Exceptions grouped by fingerprint: counts, trend, median time to resolve.
    Patterns {
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The desk's queues: members, assignment, SLA, escalation ladder and open count.
    Queues {
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// open (default), resolved or all.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub workflow: Option<String>,
    /// e.g. ai_failed, rejected, sla_breach.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this queue's, most urgent first.
    #[arg(long)]
    pub queue: Option<String>,
    /// Your work: assigned to you, or unassigned in a queue you work, most urgent first.
    #[arg(long)]
    pub mine: bool,
    /// Only those assigned to this user.
    #[arg(long)]
    pub assignee: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum ExceptionCommand {
    /// The exception with its context: case data and attempts as they were.
    Show {
        id: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume or end the case: exactly one of --retry, --output JSON, --skip-to STEP, --cancel.
    Resolve {
        id: String,
        /// Run the step again (a fresh attempt).
        #[arg(long, group = "action")]
        retry: bool,
        /// Use this JSON as the step's output (checked against its schema), e.g. '{"label":"billing"}'.
        #[arg(long, group = "action")]
        output: Option<String>,
        /// Go to this step instead.
        #[arg(long, group = "action")]
        skip_to: Option<String>,
        /// End the case as failed (kind `cancelled`).
        #[arg(long, group = "action")]
        cancel: bool,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take the exception yourself (you must work its queue); refused if someone has it.
    Claim {
        id: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Close an exception that does not hold its case (an SLA breach, a remediated wrong
    /// action), saying what was done.
    Close {
        id: String,
        #[arg(long)]
        note: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Move the exception up its queue's escalation ladder now.
    Escalate {
        id: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Give the exception to a user (reassign).
    Assign {
        id: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn exceptions(args: ExceptionsArgs) -> anyhow::Result<ExitCode> {
    if let Some(ExceptionsCommand::Patterns { token, server }) = args.command {
        let body = request(
            reqwest::Method::GET,
            "/v1/exceptions/patterns",
            None,
            &token,
            &server,
        )
        .await?;
        return print_patterns(&body, server.json);
    }
    if let Some(ExceptionsCommand::Queues { token, server }) = args.command {
        let body = request(reqwest::Method::GET, "/v1/queues", None, &token, &server).await?;
        return print_queues(&body, server.json);
    }
    let args = args.list;
    let mut path = format!("/v1/exceptions?limit={}", args.limit);
    for (name, value) in [
        ("status", &args.status),
        ("workflow", &args.workflow),
        ("kind", &args.kind),
        ("queue", &args.queue),
        ("assignee", &args.assignee),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={value}"));
        }
    }
    if args.mine {
        path.push_str("&mine=true");
    }
    let body = request(reqwest::Method::GET, &path, None, &args.token, &args.server).await?;
    if args.server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = body.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no exceptions");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID", "KIND", "STATUS", "QUEUE", "PRIO", ">LVL", "ASSIGNEE", "MESSAGE",
    ]);
    for row in rows {
        table.row([
            cell(&row["id"]),
            cell(&row["kind"]),
            cell(&row["status"]),
            cell(&row["queue"]),
            cell(&row["priority"]),
            cell(&row["level"]),
            cell(&row["assignee"]),
            cell(&row["message"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn print_patterns(body: &Value, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = body.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no exceptions yet");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "FINGERPRINT",
        ">TOTAL",
        ">OPEN",
        ">MEDIAN",
        "TREND (7d)",
        "WORKFLOW/STEP",
        "TEMPLATE",
    ]);
    for row in rows {
        let median = row["median_resolve_ms"]
            .as_i64()
            .map_or("-".to_string(), |ms| format!("{}s", ms / 1000));
        let trend = format!(
            "{} {}→{}",
            text(&row["trend"]["direction"]),
            row["trend"]["previous_7_days"],
            row["trend"]["last_7_days"]
        );
        table.row([
            cell(&row["fingerprint"]),
            cell(&row["total"]),
            cell(&row["open"]),
            median,
            trend,
            format!("{}/{}", cell(&row["workflow"]), cell(&row["step"])),
            cell(&row["template"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn print_queues(body: &Value, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["QUEUE", ">OPEN", "ASSIGN", "SLA", "MEMBERS", "ESCALATION"]);
    for queue in body.as_array().cloned().unwrap_or_default() {
        let list = |value: &Value| {
            value
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| i.as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let ladder: Vec<String> = queue["escalation"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|level| format!("{} → {}", text(&level["after"]), text(&level["to"])))
            .collect();
        table.row([
            cell(&queue["name"]),
            cell(&queue["open"]),
            cell(&queue["assign"]),
            cell(&queue["sla"]),
            list(&queue["members"]),
            if ladder.is_empty() {
                "-".to_string()
            } else {
                ladder.join("; ")
            },
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

pub async fn exception(command: ExceptionCommand) -> anyhow::Result<ExitCode> {
    let (id, body, token, server) = match command {
        ExceptionCommand::Show { id, token, server } => {
            let row = request(
                reqwest::Method::GET,
                &format!("/v1/exceptions/{id}"),
                None,
                &token,
                &server,
            )
            .await?;
            if server.json {
                println!("{row}");
            } else {
                println!("{}", serde_json::to_string_pretty(&row)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ExceptionCommand::Resolve {
            id,
            retry,
            output,
            skip_to,
            cancel,
            note,
            token,
            server,
        } => {
            let body = match (retry, output, skip_to, cancel) {
                (true, None, None, false) => json!({"action": "retry", "note": note}),
                (false, Some(output), None, false) => {
                    let output: Value = serde_json::from_str(&output)
                        .context("--output must be JSON, e.g. '{\"label\": \"billing\"}'")?;
                    json!({"action": "provide_output", "output": output, "note": note})
                }
                (false, None, Some(step), false) => {
                    json!({"action": "skip", "to": step, "note": note})
                }
                (false, None, None, true) => json!({"action": "cancel", "note": note}),
                _ => bail!("give exactly one of --retry, --output JSON, --skip-to STEP, --cancel"),
            };
            (id, body, token, server)
        }
        ExceptionCommand::Claim {
            id,
            note,
            token,
            server,
        } => (id, json!({"action": "claim", "note": note}), token, server),
        ExceptionCommand::Close {
            id,
            note,
            token,
            server,
        } => (id, json!({"action": "close", "note": note}), token, server),
        ExceptionCommand::Escalate {
            id,
            note,
            token,
            server,
        } => (
            id,
            json!({"action": "escalate", "note": note}),
            token,
            server,
        ),
        ExceptionCommand::Assign {
            id,
            to,
            note,
            token,
            server,
        } => (
            id,
            json!({"action": "assign", "to": to, "note": note}),
            token,
            server,
        ),
    };
    let resolved = request(
        reqwest::Method::POST,
        &format!("/v1/exceptions/{id}/resolution"),
        Some(body),
        &token,
        &server,
    )
    .await?;
    if server.json {
        println!("{resolved}");
    } else {
        println!(
            "{id}: {} (case {} is {})",
            text(&resolved["action"]),
            text(&resolved["case_id"]),
            text(&resolved["case_status"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
