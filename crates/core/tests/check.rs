//! The checker end to end: every broken workflow under `tests/broken/` renders its diagnostics
//! into a snapshot and reports the code its first line announces (`# expect: <code>`); every
//! example under `/workflows` and the benchmark workflow check clean.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use keel_core::workflow::{self, check_file, check_str, Severity};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn broken_workflows_render_their_diagnostics() {
    let dir = manifest_dir().join("tests/broken");
    let files = yaml_files(&dir);
    assert!(files.len() >= 15, "only {} broken workflows", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let expected = source
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: <code>`"))
            .trim()
            .to_string();
        let checked = check_str(&source, &format!("broken/{name}.yaml"), Some(&dir));
        let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
        if !codes.contains(&expected.as_str()) {
            failures.push(format!("{name}: expected `{expected}`, got {codes:?}"));
        }
        if checked.workflow.is_some() {
            failures.push(format!("{name}: parsed despite errors"));
        }
        for code in &codes {
            assert!(
                workflow::CODES.contains(code),
                "{name}: code `{code}` is not in CODES"
            );
        }
        let rendered: String = checked
            .diagnostics
            .iter()
            .map(|d| d.render(&source))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(name, rendered);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn example_workflows_check_clean() {
    let dir = manifest_dir().join("../../workflows");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 2,
        "no example workflows in {}",
        dir.display()
    );
    for path in files {
        let checked = check_file(&path);
        let rendered: Vec<String> = checked
            .diagnostics
            .iter()
            .map(|d| d.render(&std::fs::read_to_string(&path).unwrap()))
            .collect();
        assert!(
            checked.diagnostics.is_empty(),
            "{}:\n{}",
            path.display(),
            rendered.join("\n")
        );
        let workflow = checked.workflow.unwrap();
        assert_eq!(workflow.source_sha256.len(), 64);
        assert!(
            workflow.steps.len() >= 4,
            "the examples show more than a toy"
        );
    }
}

#[test]
fn bench_workflow_checks_clean() {
    let checked = check_str(workflow::BENCH_WORKFLOW_YAML, "bench_workflow.yaml", None);
    let rendered: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| d.render(workflow::BENCH_WORKFLOW_YAML))
        .collect();
    assert!(checked.diagnostics.is_empty(), "{}", rendered.join("\n"));
    let workflow = checked.workflow.unwrap();
    let kinds: Vec<&str> = workflow.steps.iter().map(|s| s.kind.keyword()).collect();
    assert_eq!(
        kinds,
        ["validate", "decide", "switch", "set", "action", "end", "end"]
    );
}

#[test]
fn warnings_do_not_fail_parsing() {
    let source = r#"
name: only-warnings
version: "1"
input: { schema: { type: object } }
steps:
  - id: noop
    validate: {}
  - id: tags
    decide:
      hit: collect
      columns: ["true"]
      rules:
        - { when: [true], then: a }
      default: b
  - id: done
    end: ok
"#;
    let checked = check_str(source, "warnings.yaml", None);
    assert!(checked.workflow.is_some(), "{:?}", checked.diagnostics);
    let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["empty-validate", "ignored-field"]);
    assert!(checked
        .diagnostics
        .iter()
        .all(|d| d.severity == Severity::Warning));
    assert!(workflow::parse_str(source, "warnings.yaml", None).is_ok());
}
