//! Deployed workflow versions, parsed once and shared. A running case stays on the version
//! it started with; new cases take the latest version of a name.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use keel_core::workflow::{self, Diagnostic, Workflow};
use keel_store::Store;

use crate::{Error, Result};

#[derive(Default)]
pub struct Registry {
    versions: RwLock<BTreeMap<(String, i64), Arc<Workflow>>>,
}

/// What `deploy_dir` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeployReport {
    /// (name, version number, new?) per deployed file.
    pub deployed: Vec<(String, i64, bool)>,
    /// Files that did not pass `keel check`, with their rendered diagnostics.
    pub rejected: Vec<(String, String)>,
}

impl Registry {
    /// Loads and parses every stored version.
    pub async fn load(store: &Store) -> Result<Registry> {
        let registry = Registry::default();
        for row in store.workflow_versions().await? {
            let base = Path::new(&row.file).parent().map(Path::to_path_buf);
            match workflow::parse_str(&row.source, &row.file, base.as_deref()) {
                Ok(definition) => registry.insert(row.name, row.version_no, definition),
                Err(diagnostics) => tracing::warn!(
                    workflow = %row.name,
                    version = row.version_no,
                    errors = diagnostics.len(),
                    "a stored workflow version no longer parses; its cases cannot continue"
                ),
            }
        }
        Ok(registry)
    }

    fn insert(&self, name: String, version_no: i64, definition: Workflow) {
        if let Ok(mut versions) = self.versions.write() {
            versions.insert((name, version_no), Arc::new(definition));
        }
    }

    pub fn version(&self, name: &str, version_no: i64) -> Option<Arc<Workflow>> {
        self.versions
            .read()
            .ok()?
            .get(&(name.to_string(), version_no))
            .cloned()
    }

    /// The newest version of `name`.
    pub fn latest(&self, name: &str) -> Option<(i64, Arc<Workflow>)> {
        let versions = self.versions.read().ok()?;
        versions
            .range((name.to_string(), i64::MIN)..=(name.to_string(), i64::MAX))
            .next_back()
            .map(|((_, version_no), definition)| (*version_no, definition.clone()))
    }

    /// The newest version of `name` that has a `monitor:` section.
    pub fn latest_monitored(&self, name: &str) -> Option<(i64, Arc<Workflow>)> {
        let versions = self.versions.read().ok()?;
        versions
            .range((name.to_string(), i64::MIN)..=(name.to_string(), i64::MAX))
            .rev()
            .find(|(_, definition)| definition.monitor.is_some())
            .map(|((_, version_no), definition)| (*version_no, definition.clone()))
    }

    /// (name, latest version number, label) of every workflow.
    pub fn list(&self) -> Vec<(String, i64, String)> {
        let Ok(versions) = self.versions.read() else {
            return Vec::new();
        };
        let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for ((name, version_no), definition) in versions.iter() {
            latest.insert(name.clone(), (*version_no, definition.version.clone()));
        }
        latest
            .into_iter()
            .map(|(name, (version_no, label))| (name, version_no, label))
            .collect()
    }

    pub async fn deploy_dir(&self, store: &Store, dir: &Path, now_ms: i64) -> Result<DeployReport> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|error| {
                Error::Io(format!(
                    "cannot read the workflows directory {}: {error}",
                    dir.display()
                ))
            })?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                )
            })
            .collect();
        files.sort();
        let mut report = DeployReport::default();
        for path in files {
            let source = std::fs::read_to_string(&path)
                .map_err(|error| Error::Io(format!("cannot read {}: {error}", path.display())))?;
            let file = path.display().to_string();
            match workflow::parse_file(&path) {
                Ok(definition) => {
                    let (name, version_no, new) = self
                        .record(store, definition, &source, &file, now_ms)
                        .await?;
                    report.deployed.push((name, version_no, new));
                }
                Err(diagnostics) => report
                    .rejected
                    .push((file, render_all(&diagnostics, &source))),
            }
        }
        Ok(report)
    }

    pub async fn deploy_source(
        &self,
        store: &Store,
        source: &str,
        file: &str,
        now_ms: i64,
    ) -> Result<(String, i64)> {
        let definition = workflow::parse_str(source, file, None).map_err(|diagnostics| {
            Error::Io(format!(
                "the workflow does not check:\n{}",
                render_all(&diagnostics, source)
            ))
        })?;
        let (name, version_no, _) = self.record(store, definition, source, file, now_ms).await?;
        Ok((name, version_no))
    }

    async fn record(
        &self,
        store: &Store,
        definition: Workflow,
        source: &str,
        file: &str,
        now_ms: i64,
    ) -> Result<(String, i64, bool)> {
        let name = definition.name.clone();
        let ungated = ungated_operations(&definition);
        let announce = |version_no: i64| {
            let mut data = serde_json::json!({
                "workflow": name,
                "version_no": version_no,
                "label": definition.version,
                "source_sha256": definition.source_sha256,
                "file": file,
            });
            if !ungated.is_empty() {
                data["ungated"] = serde_json::Value::Array(ungated.clone());
            }
            let (data, data_sha256) = crate::canonical_data(&data);
            keel_store::NewEntry {
                at: crate::rfc3339_ms(now_ms),
                kind: "workflow.deployed".into(),
                actor_type: "system".into(),
                actor_id: "deployer".into(),
                case_id: None,
                workflow: Some(name.clone()),
                step: None,
                data,
                data_sha256,
            }
        };
        let (version_no, new) = store
            .deploy_workflow(
                &name,
                &definition.version,
                source,
                &definition.source_sha256,
                file,
                now_ms,
                &announce,
            )
            .await?;
        self.insert(name.clone(), version_no, definition);
        Ok((name, version_no, new))
    }
}

pub fn render_all(diagnostics: &[Diagnostic], source: &str) -> String {
    diagnostics
        .iter()
        .map(|d| d.render(source))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The change record's list of steps that AI influences and that the version declares
/// ungated (`trust: { gate: none, reason }`): each with its reason and influence paths.
fn ungated_operations(workflow: &Workflow) -> Vec<serde_json::Value> {
    workflow
        .steps
        .iter()
        .filter_map(|step| {
            let parts = step.gate_parts()?;
            let reason = parts.trust.ungated.as_ref()?;
            if parts.uses_ai.is_empty() {
                return None;
            }
            let paths: Vec<String> = parts.influence.iter().map(|i| i.describe()).collect();
            Some(
                serde_json::json!({ "step": step.id, "kind": step.kind.keyword(),
                "reason": reason, "ai_steps": parts.uses_ai, "paths": paths }),
            )
        })
        .collect()
}
