//! `keel user add|list|disable` (on the database directly, like `keel token`) and
//! `keel tasks`, `keel task show|approve|correct|reject` (over the HTTP API, as the user whose
//! token is given with `--token` or `KEEL_TOKEN`).

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{call, http, problem_text, ServerArgs};
use crate::table::{cell, Table};
use crate::token::{now_ms, open};
use crate::DataArgs;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user with roles and an approval limit, then give them a token:
    ///   keel user add ann --roles reviewer --approval-limit 10000
    ///   keel token create --name ann-laptop --user ann
    Add(UserAddArgs),
    /// List users.
    List(UserListArgs),
    /// Disable a user: their tokens stop working within seconds.
    Disable(UserDisableArgs),
}

#[derive(Args, Debug)]
pub struct UserAddArgs {
    /// The user's name (what the journal records as the actor).
    pub name: String,
    /// Roles, comma-separated: admin, operator, reviewer, specialist, governor, auditor.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// The largest amount this user may approve where a gate has a `limit`.
    #[arg(long)]
    pub approval_limit: Option<f64>,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UserListArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UserDisableArgs {
    pub name: String,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArg {
    /// Your API token (from `keel token create --user YOU`).
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Only tasks your roles may decide.
    #[arg(long)]
    pub mine: bool,
    /// open (default), approved, corrected, rejected or all.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only tasks the roles working this exception-desk queue may decide (`keel exceptions queues`).
    #[arg(long)]
    pub queue: Option<String>,
    /// Only tasks of this kind: approval, action, outcome, review (post-hoc) or retro_review
    /// (what a demoted operation did on its own since its last good evidence; newest first).
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// What the task is about: the AI proposal, its confidence, the action, who decided.
    Show {
        id: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve as proposed.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve with the AI output replaced (a labelled outcome), e.g. --output '{"label":"ham"}'.
    Correct {
        id: String,
        #[arg(long)]
        output: String,
        /// The `ai` step whose proposal you correct, when the action uses several.
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reject with a reason.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn user(command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Add(args) => {
            let store = open(&args.data).await?;
            let added = keel_engine::tasks::add_user(
                &store,
                &args.name,
                &args.roles,
                args.approval_limit,
                now_ms(),
            )
            .await?;
            store.close().await;
            if args.json {
                println!("{}", json!({"user": args.name, "added": added}));
            } else if added {
                eprintln!(
                    "added user `{}`; give them a token: keel token create --name {}-token --user {}",
                    args.name, args.name, args.name
                );
            } else {
                eprintln!("a user named `{}` already exists", args.name);
            }
            Ok(if added {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        UserCommand::List(args) => {
            let store = open(&args.data).await?;
            let users = store.users().await?;
            store.close().await;
            if args.json {
                println!("{}", serde_json::to_string(&users)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&["NAME", "ROLES", ">APPROVAL LIMIT", "STATE"]);
            for user in users {
                table.row([
                    user.name,
                    user.roles.join(","),
                    user.approval_limit.map_or("-".into(), |l| l.to_string()),
                    (if user.disabled { "disabled" } else { "active" }).to_string(),
                ]);
            }
            table.print();
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Disable(args) => {
            let store = open(&args.data).await?;
            let changed = keel_engine::tasks::disable_user(&store, &args.name, now_ms()).await?;
            store.close().await;
            if changed {
                eprintln!(
                    "disabled `{}`; their tokens stop working within seconds",
                    args.name
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no active user named `{}`", args.name);
                Ok(ExitCode::from(1))
            }
        }
    }
}

fn token(arg: &TokenArg) -> anyhow::Result<&str> {
    match arg.token.as_deref() {
        Some(token) if !token.is_empty() => Ok(token),
        _ => bail!("this command acts as you: pass --token or set KEEL_TOKEN (create one with `keel token create --name NAME --user YOU`)"),
    }
}

pub(crate) async fn request(
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    token_arg: &TokenArg,
    server: &ServerArgs,
) -> anyhow::Result<Value> {
    token(token_arg)?;
    let mut builder = http(token_arg)?.request(
        method,
        format!("{}{path}", server.server.trim_end_matches('/')),
    );
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let (status, body) = call(builder, &server.server).await?;
    if !(200..300).contains(&status) {
        bail!("{} (HTTP {status})", problem_text(&body));
    }
    Ok(body)
}

pub async fn tasks(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/tasks?limit={}&mine={}", args.limit, args.mine);
    if let Some(status) = &args.status {
        path.push_str(&format!("&status={status}"));
    }
    if let Some(workflow) = &args.workflow {
        path.push_str(&format!("&workflow={workflow}"));
    }
    if let Some(queue) = &args.queue {
        path.push_str(&format!("&queue={queue}"));
    }
    if let Some(kind) = &args.kind {
        path.push_str(&format!("&kind={kind}"));
    }
    let body = request(reqwest::Method::GET, &path, None, &args.token, &args.server).await?;
    if args.server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = body.as_array().cloned().unwrap_or_default();
    if tasks.is_empty() {
        eprintln!("no tasks");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "KIND", "STATUS", ">APPROVALS", "TITLE"]);
    for task in tasks {
        table.row([
            cell(&task["id"]),
            cell(&task["kind"]),
            cell(&task["status"]),
            format!("{}/{}", task["approvals"], task["required"]),
            cell(&task["title"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

pub async fn task(command: TaskCommand) -> anyhow::Result<ExitCode> {
    let (id, body, token_arg, server) = match command {
        TaskCommand::Show { id, token, server } => {
            let task = request(
                reqwest::Method::GET,
                &format!("/v1/tasks/{id}"),
                None,
                &token,
                &server,
            )
            .await?;
            if server.json {
                println!("{task}");
            } else {
                println!("{}", serde_json::to_string_pretty(&task)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        TaskCommand::Approve {
            id,
            comment,
            token,
            server,
        } => (
            id,
            json!({"decision": "approve", "comment": comment}),
            token,
            server,
        ),
        TaskCommand::Correct {
            id,
            output,
            step,
            token,
            server,
        } => {
            let output: Value = serde_json::from_str(&output)
                .context("--output must be JSON, e.g. '{\"label\": \"ham\"}'")?;
            (
                id,
                json!({"decision": "correct", "output": output, "step": step}),
                token,
                server,
            )
        }
        TaskCommand::Reject {
            id,
            reason,
            token,
            server,
        } => (
            id,
            json!({"decision": "reject", "reason": reason}),
            token,
            server,
        ),
    };
    let decided = request(
        reqwest::Method::POST,
        &format!("/v1/tasks/{id}/decision"),
        Some(body),
        &token_arg,
        &server,
    )
    .await?;
    if server.json {
        println!("{decided}");
    } else {
        println!(
            "{}: {} ({}/{} approvals)",
            id,
            decided["result"].as_str().unwrap_or_default(),
            decided["approvals"],
            decided["required"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
