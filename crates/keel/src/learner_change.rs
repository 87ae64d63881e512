//! `keel learner force|approve|reject WORKFLOW STEP VERSION --reason …`, over the HTTP API as
//! the user of `--token` / `KEEL_TOKEN`: serving a learner version without its
//! non-inferiority test is a change that one person asks for and another approves.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::client::ServerArgs;
use crate::people::{request, TokenArg};
use crate::table::cell;

#[derive(Args, Debug)]
pub struct ForceArgs {
    /// The workflow name.
    pub workflow: String,
    /// The `ai` step id.
    pub step: String,
    /// The stored version (`keel learner versions`).
    pub version: i64,
    /// Why, kept in the journal.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(verb: &str, args: &ForceArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/v1/learners/{}/{}/versions/{}/{verb}",
        args.workflow, args.step, args.version
    );
    let body = request(
        reqwest::Method::POST,
        &path,
        Some(json!({ "reason": args.reason })),
        &args.token,
        &args.server,
    )
    .await?;
    if args.server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let what = match verb {
        "force" => "asked to serve without its test; a governor who did not ask decides (`keel learner approve|reject`)",
        "approve" => "serves now (forced, approved)",
        _ => "request rejected; the version keeps its status",
    };
    println!(
        "{}/{} version {}: {what} ({})",
        args.workflow,
        args.step,
        args.version,
        cell(&body["reason"])
    );
    Ok(ExitCode::SUCCESS)
}
