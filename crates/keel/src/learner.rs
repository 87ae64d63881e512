//! `keel learner train|eval`: trains the built-in learner of one `ai` step from labelled JSONL
//! and measures it. Models live in DATA_DIR/learners/WORKFLOW/STEP.bin; a running `keel serve`
//! loads them at start (restart it to pick up a newly trained model).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_ai::learner::{evaluate, Learner};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum LearnerCommand {
    /// Train (or keep training) the learner of WORKFLOW's STEP from a JSONL file of
    /// {"text": ..., "label": ...} lines; writes DATA_DIR/learners/WORKFLOW/STEP.bin.
    /// A running `keel serve` loads learner files at start: restart it to use the new model.
    Train(TrainArgs),
    /// Evaluate the trained learner of WORKFLOW's STEP on a labelled JSONL file: accuracy,
    /// log-loss and the confusion matrix.
    Eval(EvalArgs),
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
    /// Data directory holding learners/WORKFLOW/STEP.bin.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "keel-data")]
    pub data_dir: PathBuf,
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
    /// Data directory holding learners/WORKFLOW/STEP.bin.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "keel-data")]
    pub data_dir: PathBuf,
    /// Print the evaluation as one JSON object.
    #[arg(long)]
    pub json: bool,
}

const BATCH: usize = 100;

pub fn run(command: LearnerCommand) -> anyhow::Result<ExitCode> {
    match command {
        LearnerCommand::Train(args) => train(&args),
        LearnerCommand::Eval(args) => eval(&args),
    }
}

/// Where the learner of `workflow/step` is stored.
pub fn learner_path(data_dir: &Path, workflow: &str, step: &str) -> anyhow::Result<PathBuf> {
    for (what, name) in [("workflow", workflow), ("step", step)] {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            bail!("invalid {what} name `{name}`: use letters, digits, `-` and `_`");
        }
    }
    Ok(data_dir
        .join("learners")
        .join(workflow)
        .join(format!("{step}.bin")))
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

fn train(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let path = learner_path(&args.data_dir, &args.workflow, &args.step)?;
    let examples = read_examples(&args.jsonl)?;
    if examples.is_empty() {
        bail!("{} holds no examples", args.jsonl.display());
    }
    let mut learner = match std::fs::read(&path) {
        Ok(bytes) => Learner::from_bytes(&bytes)
            .with_context(|| format!("cannot load {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Learner::default(),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let bar = if std::io::stderr().is_terminal() && !args.json {
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
    for batch in examples.chunks(BATCH) {
        learner.update_batch(batch)?;
        if let Some(bar) = &bar {
            bar.inc(batch.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    write_atomically(&path, &learner.to_bytes())?;
    if args.json {
        let report = json!({
            "path": path.display().to_string(),
            "version": learner.version(),
            "examples_seen": learner.examples_seen(),
            "trained_now": examples.len(),
            "classes": learner.classes(),
        });
        println!("{report}");
    } else {
        println!("wrote {}", path.display());
        println!("version        {}", learner.version());
        println!("examples seen  {}", learner.examples_seen());
        println!("classes        {}", learner.classes().join(", "));
        eprintln!(
            "a running `keel serve` loads learner files at start: restart it to use this model"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("the learner path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut temp, bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let path = learner_path(&args.data_dir, &args.workflow, &args.step)?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "no trained learner for {}/{} at {}; run `keel learner train {} {} --jsonl FILE` first",
            args.workflow,
            args.step,
            path.display(),
            args.workflow,
            args.step
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let learner =
        Learner::from_bytes(&bytes).with_context(|| format!("cannot load {}", path.display()))?;
    let examples = read_examples(&args.jsonl)?;
    let evaluation = evaluate(&learner, &examples);
    if args.json {
        println!("{}", serde_json::to_string(&evaluation)?);
    } else {
        print!("{}", evaluation.to_table());
    }
    Ok(ExitCode::SUCCESS)
}
