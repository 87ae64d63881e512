//! Commands that talk to a running `keel serve` over its HTTP API: `submit`, `cases`, `case show`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::people::TokenArg;
use crate::table::{cell, Table};

/// Cases submitted at once from a JSONL file.
const SUBMIT_CONCURRENCY: usize = 16;
/// Longest JSONL line accepted (the server's own limit is larger).
const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of a running `keel serve`.
    #[arg(long, env = "KEEL_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Workflow name (see GET /v1/workflows).
    pub workflow: String,
    /// A JSON file with one case input.
    pub file: Option<PathBuf>,
    /// A JSONL file: one case input per line. Bad lines are reported and skipped.
    #[arg(long, conflicts_with = "file")]
    pub jsonl: Option<PathBuf>,
    /// Idempotency key for a single case: repeating the submission returns the same case.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// With --jsonl: take each case's idempotency key from this top-level field.
    #[arg(long)]
    pub key_field: Option<String>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct CasesArgs {
    #[arg(long)]
    pub workflow: Option<String>,
    /// running, waiting, completed or failed.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue after a previous page (its `next_cursor`).
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum CaseCommand {
    /// Status, data and the timeline of journal entries.
    Show {
        id: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// The HTTP client for a running `keel serve`, sending the token of `--token` / `KEEL_TOKEN`
/// (every API call needs one; `keel token create --name NAME --user YOU` makes one).
pub(crate) fn http(token: &TokenArg) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token holds characters a header cannot carry; copy it again from `keel token create`")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()?)
}

/// Sends a request and turns problem JSON into a readable error.
pub(crate) async fn call(
    request: reqwest::RequestBuilder,
    server: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await.with_context(|| {
        format!("cannot reach keel at {server}; start it with `keel serve` or point --server / KEEL_SERVER at it")
    })?;
    let status = response.status().as_u16();
    let mut body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 401 {
        if let Some(problem) = body.as_object_mut() {
            let detail = problem_text(&Value::Object(problem.clone()));
            problem.insert(
                "detail".into(),
                Value::String(format!("{detail}; pass --token or set KEEL_TOKEN (create one with `keel token create --name NAME --user YOU`)")),
            );
        }
    }
    Ok((status, body))
}

pub(crate) fn problem_text(body: &Value) -> String {
    let mut text = body["detail"]
        .as_str()
        .or(body["title"].as_str())
        .unwrap_or("request failed")
        .to_string();
    if let Some(violations) = body["violations"].as_array() {
        for violation in violations {
            text.push_str(&format!(
                "\n  - {}: {}",
                violation["path"].as_str().unwrap_or(""),
                violation["message"].as_str().unwrap_or("")
            ));
        }
    }
    text
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = http(&args.token)?;
    let url = format!(
        "{}/v1/workflows/{}/cases",
        args.server.server.trim_end_matches('/'),
        args.workflow
    );
    if let Some(path) = &args.jsonl {
        return submit_jsonl(&client, &url, path, &args).await;
    }
    let Some(path) = &args.file else {
        bail!("give a JSON file, or --jsonl FILE for many cases")
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let input: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let mut request = client.post(&url).json(&input);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let (status, body) = call(request, &args.server.server).await?;
    if !(200..300).contains(&status) {
        bail!("HTTP {status}: {}", problem_text(&body));
    }
    if args.server.json {
        println!("{body}");
    } else {
        let verb = if body["created"].as_bool() == Some(false) {
            "already submitted as"
        } else {
            "submitted"
        };
        println!("{}", body["case_id"].as_str().unwrap_or(""));
        eprintln!(
            "{verb} case {} ({} v{})",
            body["case_id"].as_str().unwrap_or("?"),
            args.workflow,
            body["workflow_version"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit_jsonl(
    client: &reqwest::Client,
    url: &str,
    path: &PathBuf,
    args: &SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let lines: Vec<(usize, std::io::Result<String>)> = std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .collect();
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} cases ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let (mut created, mut existing) = (0usize, 0usize);
    let mut pending = tokio::task::JoinSet::new();
    for (number, line) in lines {
        let line = match line {
            Ok(line) if line.trim().is_empty() => {
                bar.inc(1);
                continue;
            }
            Ok(line) if line.len() > MAX_LINE_BYTES => {
                rejected.push((
                    number,
                    format!("line is longer than {MAX_LINE_BYTES} bytes"),
                ));
                bar.inc(1);
                continue;
            }
            Ok(line) => line,
            Err(error) => {
                rejected.push((number, format!("unreadable: {error}")));
                bar.inc(1);
                continue;
            }
        };
        let input: Value = match serde_json::from_str(&line) {
            Ok(input) => input,
            Err(error) => {
                rejected.push((number, format!("not JSON: {error}")));
                bar.inc(1);
                continue;
            }
        };
        let mut request = client.post(url).json(&input);
        if let Some(field) = &args.key_field {
            match input.get(field) {
                Some(Value::String(key)) => {
                    request = request.header("Idempotency-Key", key.as_str())
                }
                Some(other) => request = request.header("Idempotency-Key", other.to_string()),
                None => {
                    rejected.push((
                        number,
                        format!("has no `{field}` field for the idempotency key"),
                    ));
                    bar.inc(1);
                    continue;
                }
            }
        }
        while pending.len() >= SUBMIT_CONCURRENCY {
            if let Some(done) = pending.join_next().await {
                tally(done, &mut created, &mut existing, &mut rejected, &bar);
            }
        }
        let server = args.server.server.clone();
        pending.spawn(async move { (number, call(request, &server).await) });
    }
    while let Some(done) = pending.join_next().await {
        tally(done, &mut created, &mut existing, &mut rejected, &bar);
    }
    bar.finish_and_clear();
    rejected.sort();
    for (number, reason) in &rejected {
        eprintln!("{}:{number}: {reason}", path.display());
    }
    let summary = serde_json::json!({ "created": created, "already_submitted": existing, "rejected": rejected.len() });
    if args.server.json {
        println!("{summary}");
    } else {
        eprintln!(
            "submitted {created} new case(s), {existing} already submitted, {} line(s) rejected",
            rejected.len()
        );
    }
    Ok(if rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

type Done = Result<(usize, anyhow::Result<(u16, Value)>), tokio::task::JoinError>;

fn tally(
    done: Done,
    created: &mut usize,
    existing: &mut usize,
    rejected: &mut Vec<(usize, String)>,
    bar: &ProgressBar,
) {
    bar.inc(1);
    match done {
        Ok((_, Ok((status, body)))) if (200..300).contains(&status) => {
            if body["created"].as_bool() == Some(false) {
                *existing += 1;
            } else {
                *created += 1;
            }
        }
        Ok((number, Ok((status, body)))) => {
            rejected.push((number, format!("HTTP {status}: {}", problem_text(&body))))
        }
        Ok((number, Err(error))) => rejected.push((number, format!("{error:#}"))),
        Err(error) => rejected.push((0, format!("internal: {error}"))),
    }
}

pub async fn cases(args: CasesArgs) -> anyhow::Result<ExitCode> {
    let client = http(&args.token)?;
    let mut request = client
        .get(format!(
            "{}/v1/cases",
            args.server.server.trim_end_matches('/')
        ))
        .query(&[("limit", args.limit.to_string())]);
    for (name, value) in [
        ("workflow", &args.workflow),
        ("status", &args.status),
        ("cursor", &args.cursor),
    ] {
        if let Some(value) = value {
            request = request.query(&[(name, value)]);
        }
    }
    let (status, body) = call(request, &args.server.server).await?;
    if status != 200 {
        bail!("HTTP {status}: {}", problem_text(&body));
    }
    if args.server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "WORKFLOW", ">VER", "STATUS", "STEP", "UPDATED"]);
    for case in body["cases"].as_array().into_iter().flatten() {
        table.row([
            cell(&case["id"]),
            cell(&case["workflow"]),
            cell(&case["workflow_version"]),
            cell(&case["status"]),
            cell(&case["current_step"]),
            cell(&case["updated_at"]),
        ]);
    }
    table.print();
    if let Some(cursor) = body["next_cursor"].as_str() {
        eprintln!("more: keel cases --cursor {cursor}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn case(command: CaseCommand) -> anyhow::Result<ExitCode> {
    let CaseCommand::Show { id, token, server } = command;
    let client = http(&token)?;
    let request = client.get(format!(
        "{}/v1/cases/{id}",
        server.server.trim_end_matches('/')
    ));
    let (status, body) = call(request, &server.server).await?;
    if status != 200 {
        bail!("HTTP {status}: {}", problem_text(&body));
    }
    if server.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("case      {}", body["id"].as_str().unwrap_or(""));
    println!(
        "workflow  {} v{}",
        body["workflow"].as_str().unwrap_or(""),
        body["workflow_version"]
    );
    println!("status    {}", body["status"].as_str().unwrap_or(""));
    if let Some(step) = body["current_step"].as_str() {
        println!("step      {step}");
    }
    if let Some(outcome) = body["outcome"].as_str() {
        println!("outcome   {outcome}");
    }
    if !body["error"].is_null() {
        println!("error     {}", body["error"]);
    }
    if body["sla_breached"].as_bool() == Some(true) {
        println!("sla       BREACHED");
    }
    println!();
    let mut table = Table::new(&[">SEQ", "AT", "EVENT", "STEP", "DETAIL"]);
    for entry in body["timeline"].as_array().into_iter().flatten() {
        let mut detail = entry["data"].to_string();
        if detail.len() > 80 {
            let mut cut = 77;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push_str("...");
        }
        table.row([
            cell(&entry["seq"]),
            cell(&entry["at"]),
            cell(&entry["kind"]),
            cell(&entry["step"]),
            detail,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
