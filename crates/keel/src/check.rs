//! `keel check`: every problem in every file, like a compiler; exit 1 on errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use keel_core::workflow::{self, Diagnostic, Severity};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Workflow files or directories (every *.yaml / *.yml inside).
    #[arg(required_unless_present_any = ["config", "exceptions"])]
    pub paths: Vec<PathBuf>,
    /// The models configuration to check (default ./keel.toml when present); also checks that
    /// every model named in an `ai` step's route is declared in it.
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The exception desk file to check (default ./exceptions.yaml when present). A file
    /// named exceptions.yaml among PATHS is checked as a desk file too.
    #[arg(long, env = "KEEL_EXCEPTIONS")]
    pub exceptions: Option<PathBuf>,
    /// Print diagnostics as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also print, for every action and end, which `ai` steps influence it and by which path
    /// (why it is gated), e.g. `classify → route (switch) → delete_mail`.
    #[arg(long)]
    pub explain: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in &args.paths {
        collect(path, &mut files)?;
    }
    let mut all: Vec<Diagnostic> = Vec::new();
    let mut explained: Vec<serde_json::Value> = Vec::new();
    let mut checked = 0;
    let config = match crate::serve::load_config(args.config.as_deref()) {
        Ok(config) => {
            if config.is_some() {
                checked += 1;
            }
            config
        }
        Err(errors) => {
            checked += 1;
            let diagnostics: Vec<Diagnostic> = errors.iter().map(config_diagnostic).collect();
            if !args.json {
                let source = errors
                    .first()
                    .and_then(|e| std::fs::read_to_string(&e.path).ok())
                    .unwrap_or_default();
                for diagnostic in &diagnostics {
                    eprintln!("{}", diagnostic.render(&source));
                }
            }
            all.extend(diagnostics);
            None
        }
    };
    let desk = crate::serve::desk_path(args.exceptions.as_deref());
    let (desk_files, files): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|file| {
        file.file_name()
            .is_some_and(|name| name == "exceptions.yaml")
    });
    for file in desk
        .iter()
        .chain(desk_files.iter().filter(|f| Some(*f) != desk.as_ref()))
    {
        checked += 1;
        let source = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let diagnostics = keel_core::desk::check_str(&source, &file.display().to_string());
        if !args.json {
            for diagnostic in &diagnostics {
                eprintln!("{}", diagnostic.render(&source));
            }
        }
        all.extend(diagnostics);
    }
    for file in &files {
        checked += 1;
        let checked_file = workflow::check_file(file);
        let mut diagnostics = checked_file.diagnostics;
        if let (Some((config_path, config)), Some(parsed)) = (&config, &checked_file.workflow) {
            diagnostics.extend(undeclared_models(file, parsed, config_path, config));
        }
        if let (true, Some(parsed)) = (args.explain, &checked_file.workflow) {
            let operations = explain(parsed);
            if !args.json {
                print!("{}", render_explanation(file, parsed, &operations));
            }
            explained.extend(operations.into_iter().map(|mut operation| {
                operation["file"] = serde_json::json!(file.display().to_string());
                operation
            }));
        }
        if !args.json {
            let source = std::fs::read_to_string(file).unwrap_or_default();
            for diagnostic in &diagnostics {
                eprintln!("{}", diagnostic.render(&source));
            }
        }
        all.extend(diagnostics);
    }
    let errors = all
        .iter()
        .filter(|d| matches!(d.severity, Severity::Error))
        .count();
    let warnings = all.len() - errors;
    if args.json {
        let mut report = serde_json::json!({ "files": checked, "errors": errors, "warnings": warnings, "diagnostics": all });
        if args.explain {
            report["operations"] = serde_json::Value::Array(explained);
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if errors == 0 {
        eprintln!("checked {checked} file(s): no errors, {warnings} warning(s)");
    } else {
        eprintln!("checked {checked} file(s): {errors} error(s), {warnings} warning(s)");
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every action and end of `workflow` with the `ai` steps that influence it, each path, and
/// whether the trust gate holds it (`gated`) or the workflow declared it ungated.
fn explain(workflow: &workflow::Workflow) -> Vec<serde_json::Value> {
    workflow
        .steps
        .iter()
        .filter_map(|step| {
            let parts = step.gate_parts()?;
            let paths: Vec<serde_json::Value> = parts
                .influence
                .iter()
                .map(|i| serde_json::json!({ "ai_step": i.ai_step, "path": i.path, "text": i.describe() }))
                .collect();
            Some(serde_json::json!({
                "workflow": workflow.name, "step": step.id, "kind": step.kind.keyword(),
                "ai_steps": parts.uses_ai, "gated": parts.is_gated(),
                "ungated_reason": parts.trust.ungated, "paths": paths,
            }))
        })
        .collect()
}

/// `explain`'s result for people: one line per action and end, its paths indented below.
fn render_explanation(
    file: &Path,
    workflow: &workflow::Workflow,
    operations: &[serde_json::Value],
) -> String {
    let mut out = format!("{} (workflow `{}`)\n", file.display(), workflow.name);
    let width = operations
        .iter()
        .map(|o| {
            o["step"].as_str().unwrap_or_default().len()
                + o["kind"].as_str().unwrap_or_default().len()
                + 3
        })
        .max()
        .unwrap_or(0);
    for operation in operations {
        let label = format!(
            "{} ({})",
            operation["step"].as_str().unwrap_or_default(),
            operation["kind"].as_str().unwrap_or_default()
        );
        let ai_steps: Vec<&str> = operation["ai_steps"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        let verdict = match (ai_steps.is_empty(), operation["ungated_reason"].as_str()) {
            (true, _) => "not influenced by AI: runs without the gate".to_string(),
            (false, Some(reason)) => format!(
                "influenced by {}, declared ungated: {reason}",
                ai_steps.join(", ")
            ),
            (false, None) => format!("gated: an operation of {}", ai_steps.join(", ")),
        };
        out.push_str(&format!("  {label:<width$}  {verdict}\n"));
        for path in operation["paths"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "      {}\n",
                path["text"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        entries.sort();
        files.extend(entries);
    } else if path.exists() {
        files.push(path.to_path_buf());
    } else {
        anyhow::bail!("{} does not exist", path.display());
    }
    Ok(())
}

/// A `keel.toml` problem as a diagnostic, so that it prints like the workflow ones.
fn config_diagnostic(error: &keel_ai::config::Error) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code: "invalid-config",
        message: error.message.clone(),
        file: error.path.clone(),
        line: error.line,
        column: error.column,
        end_line: error.line,
        end_column: error.column + 1,
        hint: None,
    }
}

/// Every model named in an `ai` step's route that `config` does not declare (as a model or a
/// gateway alias), positioned at the first `model: NAME` in the file.
fn undeclared_models(
    file: &Path,
    workflow: &workflow::Workflow,
    config_path: &Path,
    config: &keel_ai::config::Config,
) -> Vec<Diagnostic> {
    let source = std::fs::read_to_string(file).unwrap_or_default();
    let mut diagnostics = Vec::new();
    for step in &workflow.steps {
        let workflow::StepKind::Ai(ai) = &step.kind else {
            continue;
        };
        for tier in &ai.route {
            if config.models.contains_key(&tier.model)
                || config.gateway.aliases.contains_key(&tier.model)
            {
                continue;
            }
            let (line, column) = position_of(&source, &tier.model);
            let declared: Vec<&str> = config.models.keys().map(String::as_str).collect();
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                code: "unknown-model",
                message: format!(
                    "step `{}` routes to model `{}`, which {} does not declare",
                    step.id,
                    tier.model,
                    config_path.display()
                ),
                file: file.display().to_string(),
                line,
                column,
                end_line: line,
                end_column: column + tier.model.chars().count(),
                hint: Some(if declared.is_empty() {
                    format!("add [models.{}] to {}", tier.model, config_path.display())
                } else {
                    format!("declared models: {}", declared.join(", "))
                }),
            });
        }
    }
    diagnostics
}

/// 1-based line and column of the first `model:` entry naming `name` (else of `name`).
fn position_of(source: &str, name: &str) -> (usize, usize) {
    for (index, line) in source.lines().enumerate() {
        if let Some(at) = line.find("model:") {
            if let Some(offset) = line[at..].find(name) {
                let byte = at + offset;
                return (index + 1, line[..byte].chars().count() + 1);
            }
        }
    }
    (1, 1)
}
