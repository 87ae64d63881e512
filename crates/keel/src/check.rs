//! `keel check`: every problem in every file, like a compiler; exit 1 on errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use keel_core::workflow::{self, Diagnostic, Severity};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Workflow files or directories (every *.yaml / *.yml inside).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print diagnostics as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in &args.paths {
        collect(path, &mut files)?;
    }
    let mut all: Vec<Diagnostic> = Vec::new();
    let mut checked = 0;
    for file in &files {
        checked += 1;
        let diagnostics = workflow::check_file(file).diagnostics;
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
        let report = serde_json::json!({ "files": checked, "errors": errors, "warnings": warnings, "diagnostics": all });
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
