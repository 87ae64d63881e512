//! `keel workflow versions NAME | approve NAME VERSION | reject NAME VERSION`, over the HTTP
//! API as the user of `--token` / `KEEL_TOKEN`: change control. A workflow version that
//! changes what decides (an operation's prompt, route, output schema, policy, hard limits or
//! starting phase) deploys as `pending`; cases keep running on the serving version until a
//! governor who is not the version's author approves it here.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ServerArgs;
use crate::people::{request, TokenArg};
use crate::table::{cell, Table};

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Every version of a workflow: status (active, pending, rejected), which one serves,
    /// what changed per operation, the author and who decided.
    Versions {
        name: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve a pending version (a governor with an approver role of every changed
    /// operation, not its author): it serves new cases at once.
    Approve {
        name: String,
        version: i64,
        /// Why, kept in the journal.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reject a pending version: it never runs.
    Reject {
        name: String,
        version: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: WorkflowCommand) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowCommand::Versions {
            name,
            token,
            server,
        } => {
            let body = request(
                reqwest::Method::GET,
                &format!("/v1/workflows/{name}/versions"),
                None,
                &token,
                &server,
            )
            .await?;
            if server.json {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                ">VERSION",
                "STATUS",
                "SERVING",
                "AUTHOR",
                "DECIDED BY",
                "CHANGES",
            ]);
            for version in body.as_array().cloned().unwrap_or_default() {
                table.row([
                    cell(&version["version_no"]),
                    cell(&version["status"]),
                    if version["serving"] == true {
                        "yes"
                    } else {
                        ""
                    }
                    .to_string(),
                    cell(&version["author"]),
                    cell(&version["decided_by"]),
                    describe_changes(&version["changes"]),
                ]);
            }
            table.print();
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Approve {
            name,
            version,
            reason,
            token,
            server,
        } => decide(&name, version, "approve", &reason, &token, &server).await,
        WorkflowCommand::Reject {
            name,
            version,
            reason,
            token,
            server,
        } => decide(&name, version, "reject", &reason, &token, &server).await,
    }
}

async fn decide(
    name: &str,
    version: i64,
    verb: &str,
    reason: &str,
    token: &TokenArg,
    server: &ServerArgs,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/workflows/{name}/versions/{version}/{verb}");
    let decided = request(
        reqwest::Method::POST,
        &path,
        Some(json!({ "reason": reason })),
        token,
        server,
    )
    .await?;
    if server.json {
        println!("{decided}");
    } else {
        println!(
            "{name} version {version}: {} by {} ({})",
            cell(&decided["status"]),
            cell(&decided["by"]),
            describe_changes(&decided["changes"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `refunds/pay: prompt, route; refunds/notify: removed`.
fn describe_changes(changes: &Value) -> String {
    let parts: Vec<String> = changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|change| {
            let what: Vec<&str> = change["what"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("{}: {}", cell(&change["operation"]), what.join(", "))
        })
        .collect();
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join("; ")
    }
}
