//! `keel learner train|eval|versions|force|approve|reject`: trains the built-in learner of one
//! `ai` step from labelled JSONL, measures it, and lists its versions. Models live in the
//! database, one version per training run or update batch, each announced in the journal and
//! a challenger until a running `keel serve` shows it non-inferior to the serving version;
//! the server also learns from labelled examples (`POST /v1/learners/{workflow}/{step}/examples`)
//! and from people's reviews.
//!
//! Learners used to be files, DATA_DIR/learners/WORKFLOW/STEP.bin: such a file is imported once
//! as version 1 (source `file`) when no version of its learner is stored yet.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_ai::learner::{evaluate, Learner, Training};
use keel_engine::learn::{self, Actor, NewVersion};
use keel_store::Store;
use serde_json::json;

use crate::table::Table;
use crate::DataArgs;

#[derive(Subcommand, Debug)]
pub enum LearnerCommand {
    /// Train (or keep training) the learner of WORKFLOW's STEP from a JSONL file of
    /// {"text": ..., "label": ...} lines. Continues from the newest version that did not fail
    /// its test, fits the temperature of its confidence on one example in ten (held out by a
    /// hash of the text, then learnt too), and stores the result as the next version, a
    /// challenger (journal entry `learner.challenger`): a running `keel serve` tests it
    /// against the serving version on reviewed outcomes it did not train on and serves it only
    /// if it is non-inferior.
    Train(TrainArgs),
    /// Evaluate the latest stored version of WORKFLOW's STEP learner on a labelled JSONL file:
    /// accuracy, log-loss, expected calibration error (10 equal-width confidence bins) with
    /// the bins, and the confusion matrix.
    Eval(EvalArgs),
    /// List the stored versions of WORKFLOW's STEP learner, newest first, with their status:
    /// challenger (waits for its test), serving, retired, failed (kept, never served).
    Versions(VersionsArgs),
    /// Ask to serve VERSION without its test (an operator, over the API): it serves only
    /// when a governor who did not ask approves (`keel learner approve`).
    Force(crate::learner_change::ForceArgs),
    /// Approve a request to serve a version without its test (a governor who did not ask).
    Approve(crate::learner_change::ForceArgs),
    /// Reject a request to serve a version without its test.
    Reject(crate::learner_change::ForceArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The workflow name.
    pub workflow: String,
    /// The `ai` step id.
    pub step: String,
    /// Labelled examples: one {"text": ..., "label": ...} object per line.
    #[arg(long)]
    pub jsonl: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The workflow name.
    pub workflow: String,
    /// The `ai` step id.
    pub step: String,
    /// Labelled examples: one {"text": ..., "label": ...} object per line.
    #[arg(long)]
    pub jsonl: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the evaluation as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VersionsArgs {
    /// The workflow name.
    pub workflow: String,
    /// The `ai` step id.
    pub step: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Show at most this many versions (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: LearnerCommand) -> anyhow::Result<ExitCode> {
    match command {
        LearnerCommand::Train(args) => train(&args).await,
        LearnerCommand::Eval(args) => eval(&args).await,
        LearnerCommand::Versions(args) => versions(&args).await,
        LearnerCommand::Force(args) => crate::learner_change::run("force", &args).await,
        LearnerCommand::Approve(args) => crate::learner_change::run("approve", &args).await,
        LearnerCommand::Reject(args) => crate::learner_change::run("reject", &args).await,
    }
}

/// Where a learner was stored before learners moved into the database.
pub fn learner_path(data_dir: &Path, workflow: &str, step: &str) -> anyhow::Result<PathBuf> {
    check_names(workflow, step)?;
    Ok(data_dir
        .join("learners")
        .join(workflow)
        .join(format!("{step}.bin")))
}

fn check_names(workflow: &str, step: &str) -> anyhow::Result<()> {
    for (what, name) in [("workflow", workflow), ("step", step)] {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            bail!("invalid {what} name `{name}`: use letters, digits, `-` and `_`");
        }
    }
    Ok(())
}

/// Reads `{"text", "label"}` lines; blank lines are skipped.
pub fn read_examples(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut examples = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{number}: not a JSON object", path.display()))?;
        let text = value.get("text").and_then(|v| v.as_str());
        let label = value.get("label").and_then(|v| v.as_str());
        match (text, label) {
            (Some(text), Some(label)) => examples.push((text.to_string(), label.to_string())),
            _ => bail!(
                "{}:{number}: each line must be {{\"text\": string, \"label\": string}}",
                path.display()
            ),
        }
    }
    Ok(examples)
}

/// Opens the database of `data`; creates it (and the data directory) only when `create`.
async fn open_store(data: &DataArgs, create: bool) -> anyhow::Result<Store> {
    let url = data.database_url();
    if !url.starts_with("postgres") {
        if create {
            std::fs::create_dir_all(&data.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    data.data_dir.display()
                )
            })?;
        } else if !Path::new(&url).exists() {
            bail!("no database at {url}; train a learner first (`keel learner train`) or pass --data-dir / --database");
        }
    }
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))
}

fn cli_actor() -> Actor {
    Actor {
        actor_type: "cli".into(),
        actor_id: std::env::var("USER").unwrap_or_else(|_| "local".into()),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Imports DATA_DIR/learners/WORKFLOW/STEP.bin as the first stored version of its learner when
/// the file exists and no version is stored; returns the stored version and learner if it did.
pub async fn import_file(
    store: &Store,
    data_dir: &Path,
    workflow: &str,
    step: &str,
    actor: Actor,
) -> anyhow::Result<Option<(i64, Learner)>> {
    let path = learner_path(data_dir, workflow, step)?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    if !store.learner_versions(workflow, step).await?.is_empty() {
        return Ok(None);
    }
    let learner =
        Learner::from_bytes(&bytes).with_context(|| format!("cannot load {}", path.display()))?;
    // A file dropped into the data directory is a change like any other: a challenger,
    // tested before it serves.
    let version = learn::save_version(
        store,
        NewVersion {
            workflow,
            step,
            learner: &learner,
            kind: "learner.imported",
            source: "file",
            batch: 0,
            extra: json!({"file": path.display().to_string()}),
            actor,
            now_ms: now_ms(),
            texts: Vec::new(),
            status: "challenger",
            cursor: None,
        },
    )
    .await?
    .context("the learner was stored meanwhile")?;
    tracing::info!(file = %path.display(), workflow, step, version, "learner file imported into the store");
    Ok(Some((version, learner)))
}

/// Imports every DATA_DIR/learners/WORKFLOW/STEP.bin whose learner has no stored version yet
/// (see [`import_file`]); returns what was imported. A file that does not import is logged.
pub async fn import_files(
    store: &Store,
    data_dir: &Path,
    actor: &Actor,
) -> Vec<(String, String, Learner)> {
    let mut imported = Vec::new();
    let Ok(workflows) = std::fs::read_dir(data_dir.join("learners")) else {
        return imported;
    };
    for workflow in workflows.filter_map(Result::ok) {
        let Ok(steps) = std::fs::read_dir(workflow.path()) else {
            continue;
        };
        let workflow = workflow.file_name().to_string_lossy().into_owned();
        for step in steps.filter_map(Result::ok) {
            let path = step.path();
            if path.extension().and_then(|e| e.to_str()) != Some("bin") {
                continue;
            }
            let Some(step) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match import_file(store, data_dir, &workflow, step, actor.clone()).await {
                Ok(Some((_, learner))) => {
                    imported.push((workflow.clone(), step.to_string(), learner))
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(file = %path.display(), error = %format!("{error:#}"), "learner file not imported")
                }
            }
        }
    }
    imported
}

/// The latest stored version of `workflow/step` (after importing an old file if there is one).
async fn latest_learner(
    store: &Store,
    data: &DataArgs,
    workflow: &str,
    step: &str,
) -> anyhow::Result<Option<(i64, Learner)>> {
    check_names(workflow, step)?;
    import_file(store, &data.data_dir, workflow, step, cli_actor()).await?;
    Ok(learn::latest(store, workflow, step).await?)
}

async fn train(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    check_names(&args.workflow, &args.step)?;
    let examples = read_examples(&args.jsonl)?;
    if examples.is_empty() {
        bail!("{} holds no examples", args.jsonl.display());
    }
    let store = open_store(&args.data, true).await?;
    let previous = latest_learner(&store, &args.data, &args.workflow, &args.step).await?;
    let previous_version = previous.as_ref().map(|(version, _)| *version);
    let mut learner = previous.map_or_else(Learner::default, |(_, learner)| learner);
    let training = fit(&mut learner, &examples, !args.json)?;
    let accuracy = evaluate(&learner, &examples).accuracy;
    let source = format!(
        "cli:{}",
        args.jsonl.file_name().map_or_else(
            || args.jsonl.display().to_string(),
            |name| name.to_string_lossy().into_owned()
        )
    );
    let version = learn::save_version(
        &store,
        NewVersion {
            workflow: &args.workflow,
            step: &args.step,
            learner: &learner,
            kind: "learner.challenger",
            source: &source,
            batch: examples.len(),
            extra: json!({
                "training_accuracy": accuracy,
                "temperature": training.temperature,
                "held_out": training.held_out,
                "built_on": previous_version,
            }),
            actor: cli_actor(),
            now_ms: now_ms(),
            texts: examples.iter().map(|(text, _)| text.as_str()).collect(),
            status: "challenger",
            cursor: None,
        },
    )
    .await?
    .context("the learner was stored meanwhile")?;
    store.close().await;
    if args.json {
        let report = json!({
            "workflow": args.workflow,
            "step": args.step,
            "version": version,
            "previous_version": previous_version,
            "examples_seen": learner.examples_seen(),
            "trained_now": examples.len(),
            "classes": learner.classes(),
            "training_accuracy": accuracy,
            "temperature": training.temperature,
            "held_out": training.held_out,
            "held_out_log_loss_before": training.held_out_log_loss_before,
            "held_out_log_loss_after": training.held_out_log_loss_after,
            "database": args.data.database_url(),
        });
        println!("{report}");
    } else {
        println!(
            "stored {}/{} version {version} in {}",
            args.workflow,
            args.step,
            args.data.database_url()
        );
        println!("examples seen      {}", learner.examples_seen());
        println!("classes            {}", learner.classes().join(", "));
        println!("training accuracy  {accuracy:.4}");
        println!("temperature        {}", describe_temperature(&training));
        eprintln!(
            "stored as a challenger: a running `keel serve` tests it against the serving version on reviewed outcomes it did not train on, and serves it only if it is non-inferior (`keel learner versions` shows the result)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The fitted temperature and what it was fitted on, for people.
fn describe_temperature(training: &Training) -> String {
    match (
        training.held_out_log_loss_before,
        training.held_out_log_loss_after,
    ) {
        (Some(before), Some(after)) => format!(
            "{:.3}, fitted on {} held-out examples (their log loss {before:.4} -> {after:.4})",
            training.temperature, training.held_out
        ),
        _ => format!(
            "{:.3}, from online updates (not fitted: fewer than {} examples held out, or \
             fewer than two labels)",
            training.temperature,
            keel_ai::learner::MIN_HELD_OUT
        ),
    }
}

/// Trains and calibrates `learner` on `examples` ([`Learner::train`]), with a progress bar on
/// a terminal.
fn fit(
    learner: &mut Learner,
    examples: &[(String, String)],
    show: bool,
) -> anyhow::Result<Training> {
    let bar = if std::io::stderr().is_terminal() && show {
        let bar = ProgressBar::new(examples.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} examples ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let training = learner.train(examples, |done| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(training)
}

async fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    check_names(&args.workflow, &args.step)?;
    let examples = read_examples(&args.jsonl)?;
    // An old learner file is imported into a new database rather than refused.
    let old_file = learner_path(&args.data.data_dir, &args.workflow, &args.step)?.exists();
    let store = open_store(&args.data, old_file).await.with_context(|| {
        format!(
            "no trained learner for {}/{}; run `keel learner train {} {} --jsonl FILE` first",
            args.workflow, args.step, args.workflow, args.step
        )
    })?;
    let latest = latest_learner(&store, &args.data, &args.workflow, &args.step).await?;
    store.close().await;
    let Some((version, learner)) = latest else {
        bail!(
            "no trained learner for {}/{} in {}; run `keel learner train {} {} --jsonl FILE` first",
            args.workflow,
            args.step,
            args.data.database_url(),
            args.workflow,
            args.step
        );
    };
    let evaluation = evaluate(&learner, &examples);
    if args.json {
        let mut report = serde_json::to_value(&evaluation)?;
        report["version"] = json!(version);
        report["temperature"] = json!(learner.temperature());
        println!("{report}");
    } else {
        println!(
            "{}/{} version {version}, temperature {:.3}",
            args.workflow,
            args.step,
            learner.temperature()
        );
        print!("{}", evaluation.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

async fn versions(args: &VersionsArgs) -> anyhow::Result<ExitCode> {
    check_names(&args.workflow, &args.step)?;
    let store = open_store(&args.data, false).await?;
    let mut rows = store.learner_versions(&args.workflow, &args.step).await?;
    store.close().await;
    rows.truncate(usize::from(args.limit));
    if args.json {
        let versions: Vec<_> = rows
            .iter()
            .map(|row| {
                json!({
                    "version": row.version,
                    "status": row.status,
                    "requested_by": row.requested_by,
                    "evidence": serde_json::from_str::<serde_json::Value>(&row.evidence).unwrap_or_default(),
                    "examples": row.examples,
                    "source": row.source,
                    "created_at": keel_engine::rfc3339_ms(row.created_at_ms),
                })
            })
            .collect();
        let report = json!({"workflow": args.workflow, "step": args.step, "versions": versions});
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!(
            "no stored versions of {}/{}; `keel learner train {} {} --jsonl FILE` stores the first",
            args.workflow, args.step, args.workflow, args.step
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[">VERSION", "STATUS", ">EXAMPLES", "CREATED AT", "SOURCE"]);
    for row in &rows {
        let status = match &row.requested_by {
            Some(by) => format!("{} (force asked by {by})", row.status),
            None => row.status.clone(),
        };
        table.row([
            row.version.to_string(),
            status,
            row.examples.to_string(),
            keel_engine::rfc3339_ms(row.created_at_ms),
            row.source.clone(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
