//! Deployed workflow versions, parsed once and shared. A running case stays on the version
//! it started with; new cases take the latest *active* version of a name.
//!
//! Change control lives here: a version that changes what decides — an operation's prompt,
//! system prompt, route, labels, output schema, trust policy, hard limits or starting phase,
//! an operation that is new above phase 1, or one that stops being gated — deploys as
//! `pending` when the deployment requires review (the default): cases keep running on the
//! version serving before it until a governor who is not its author approves it
//! (`Engine::decide_workflow`); a rejected version never runs. What changed, per operation,
//! is stored with the version and journaled in `workflow.deployed`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use keel_core::workflow::{self, Diagnostic, Workflow};
use keel_store::Store;

use crate::{Error, Result};

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// New cases may run it (the newest active version serves).
    Active,
    /// It changes what decides and waits for a governor's approval.
    Pending,
    /// A governor rejected it: it never runs.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Pending => "pending",
            Status::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "pending" => Status::Pending,
            "rejected" => Status::Rejected,
            _ => Status::Active,
        }
    }
}

#[derive(Clone)]
struct Version {
    definition: Arc<Workflow>,
    status: Status,
}

#[derive(Default)]
pub struct Registry {
    versions: RwLock<BTreeMap<(String, i64), Version>>,
}

/// What `deploy_dir` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeployReport {
    /// Each deployed file's version.
    pub deployed: Vec<Deployed>,
    /// Files that did not pass `keel check`, with their rendered diagnostics.
    pub rejected: Vec<(String, String)>,
}

/// One deployed version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub name: String,
    pub version_no: i64,
    /// False when the file was already the latest version.
    pub new: bool,
    pub status: Status,
    /// What changed per operation against the serving version (`{operation, what}`).
    pub changes: Vec<serde_json::Value>,
}

impl Registry {
    /// Loads and parses every stored version.
    pub async fn load(store: &Store) -> Result<Registry> {
        let registry = Registry::default();
        for row in store.workflow_versions().await? {
            let base = Path::new(&row.file).parent().map(Path::to_path_buf);
            match workflow::parse_stored(&row.source, &row.file, base.as_deref()) {
                Ok(definition) => registry.insert(
                    row.name,
                    row.version_no,
                    definition,
                    Status::parse(&row.status),
                ),
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

    fn insert(&self, name: String, version_no: i64, definition: Workflow, status: Status) {
        if let Ok(mut versions) = self.versions.write() {
            versions.insert(
                (name, version_no),
                Version {
                    definition: Arc::new(definition),
                    status,
                },
            );
        }
    }

    /// Records a governor's decision on this node's copy.
    pub(crate) fn set_status(&self, name: &str, version_no: i64, status: Status) {
        if let Ok(mut versions) = self.versions.write() {
            if let Some(version) = versions.get_mut(&(name.to_string(), version_no)) {
                version.status = status;
            }
        }
    }

    /// Any stored version, whatever its status (a running case's own version).
    pub fn version(&self, name: &str, version_no: i64) -> Option<Arc<Workflow>> {
        self.versions
            .read()
            .ok()?
            .get(&(name.to_string(), version_no))
            .map(|v| v.definition.clone())
    }

    /// A version's status.
    pub fn status(&self, name: &str, version_no: i64) -> Option<Status> {
        self.versions
            .read()
            .ok()?
            .get(&(name.to_string(), version_no))
            .map(|v| v.status)
    }

    /// The version serving new cases: the newest active one.
    pub fn latest(&self, name: &str) -> Option<(i64, Arc<Workflow>)> {
        let versions = self.versions.read().ok()?;
        versions
            .range((name.to_string(), i64::MIN)..=(name.to_string(), i64::MAX))
            .rev()
            .find(|(_, v)| v.status == Status::Active)
            .map(|((_, version_no), v)| (*version_no, v.definition.clone()))
    }

    /// The newest version of `name`, whatever its status.
    pub fn newest(&self, name: &str) -> Option<(i64, Arc<Workflow>, Status)> {
        let versions = self.versions.read().ok()?;
        versions
            .range((name.to_string(), i64::MIN)..=(name.to_string(), i64::MAX))
            .next_back()
            .map(|((_, version_no), v)| (*version_no, v.definition.clone(), v.status))
    }

    /// The newest active version of `name` that has a `monitor:` section.
    pub fn latest_monitored(&self, name: &str) -> Option<(i64, Arc<Workflow>)> {
        let versions = self.versions.read().ok()?;
        versions
            .range((name.to_string(), i64::MIN)..=(name.to_string(), i64::MAX))
            .rev()
            .filter(|(_, v)| v.status == Status::Active)
            .find(|(_, v)| v.definition.monitor.is_some())
            .map(|((_, version_no), v)| (*version_no, v.definition.clone()))
    }

    /// (name, serving version number, label) of every workflow with an active version.
    pub fn list(&self) -> Vec<(String, i64, String)> {
        let Ok(versions) = self.versions.read() else {
            return Vec::new();
        };
        let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for ((name, version_no), v) in versions.iter() {
            if v.status == Status::Active {
                latest.insert(name.clone(), (*version_no, v.definition.version.clone()));
            }
        }
        latest
            .into_iter()
            .map(|(name, (version_no, label))| (name, version_no, label))
            .collect()
    }

    /// Every pending version: (name, version number).
    pub fn pending(&self) -> Vec<(String, i64)> {
        let Ok(versions) = self.versions.read() else {
            return Vec::new();
        };
        versions
            .iter()
            .filter(|(_, v)| v.status == Status::Pending)
            .map(|((name, version_no), _)| (name.clone(), *version_no))
            .collect()
    }

    pub async fn deploy_dir(
        &self,
        store: &Store,
        dir: &Path,
        now_ms: i64,
        review: bool,
    ) -> Result<DeployReport> {
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
                    let deployed = self
                        .record(store, definition, &source, &file, now_ms, review)
                        .await?;
                    report.deployed.push(deployed);
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
        review: bool,
    ) -> Result<Deployed> {
        let definition = workflow::parse_str(source, file, None).map_err(|diagnostics| {
            Error::Io(format!(
                "the workflow does not check:\n{}",
                render_all(&diagnostics, source)
            ))
        })?;
        self.record(store, definition, source, file, now_ms, review)
            .await
    }

    async fn record(
        &self,
        store: &Store,
        definition: Workflow,
        source: &str,
        file: &str,
        now_ms: i64,
        review: bool,
    ) -> Result<Deployed> {
        let name = definition.name.clone();
        let ungated = ungated_operations(&definition);
        let serving = self.latest(&name);
        let changes =
            crate::trust::operation_changes(serving.as_ref().map(|(_, w)| w.as_ref()), &definition);
        let status = if review && !changes.is_empty() {
            Status::Pending
        } else {
            Status::Active
        };
        let author = definition.change.as_ref().map(|c| c.author.clone());
        let announce = |version_no: i64| {
            let mut data = serde_json::json!({
                "workflow": name,
                "version_no": version_no,
                "label": definition.version,
                "source_sha256": definition.source_sha256,
                "file": file,
                "status": status.as_str(),
                "review": if review { "required" } else { "off" },
                "changes": changes,
                "author": author,
                "serving_version": serving.as_ref().map(|(v, _)| *v),
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
        let changes_text = serde_json::Value::Array(changes.clone()).to_string();
        let (version_no, new) = store
            .deploy_workflow(
                &keel_store::NewWorkflowVersion {
                    name: &name,
                    label: &definition.version,
                    source,
                    sha256: &definition.source_sha256,
                    file,
                    now_ms,
                    status: status.as_str(),
                    author: author.as_deref(),
                    changes: &changes_text,
                },
                &announce,
            )
            .await?;
        if !new {
            // The file is the newest stored version already: it keeps the status it has.
            let status = self.status(&name, version_no).unwrap_or(status);
            return Ok(Deployed {
                name,
                version_no,
                new,
                status,
                changes: Vec::new(),
            });
        }
        self.insert(name.clone(), version_no, definition, status);
        Ok(Deployed {
            name,
            version_no,
            new,
            status,
            changes,
        })
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
