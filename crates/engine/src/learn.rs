//! The local learners' life in the store: every update batch (a `keel learner train` run, a
//! batch posted to the API, a person's label for a case) becomes a new stored version with a
//! journal entry in the same transaction, and the AI runtime answers with the latest one.
//!
//! The engine keeps its own copy of each learner it updates (the runtime's copy is private to
//! it) and serialises the updates of one learner with a mutex, so two concurrent batches are
//! applied one after the other and neither is lost. Before each update the copy is compared
//! with the latest stored version and reloaded when something else (a `keel learner train`
//! run) stored a newer one.

use std::collections::HashMap;
use std::sync::Arc;

use keel_ai::learner::Learner;
use keel_core::case::CaseState;
use keel_core::workflow::{AiTask, StepKind};
use keel_store::{NewEntry, Store};
use serde_json::{json, Value};

use crate::{canonical_data, rfc3339_ms, Engine};

/// Examples accepted in one batch; a larger batch is refused (split it).
pub const MAX_EXAMPLES_PER_BATCH: usize = 1_000;

/// Why a batch was not learnt. Nothing was stored when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no workflow named `{0}` is deployed; `keel serve --workflows DIR` deploys every *.yaml in DIR")]
    UnknownWorkflow(String),
    #[error("workflow `{workflow}` has no step `{step}`")]
    UnknownStep { workflow: String, step: String },
    #[error("step `{step}` of workflow `{workflow}` is {what}; only `ai` steps with `task: classify` have a learner")]
    NotClassify {
        workflow: String,
        step: String,
        what: String,
    },
    #[error("label `{label}` is not one of the labels of `{workflow}/{step}` ({}); correct the example or add the label to the workflow", .labels.join(", "))]
    UnknownLabel {
        workflow: String,
        step: String,
        label: String,
        labels: Vec<String>,
    },
    #[error("the batch holds no examples; send at least one")]
    EmptyBatch,
    #[error(
        "the batch holds {count} examples; the limit is {limit}: split it into smaller batches"
    )]
    TooManyExamples { count: usize, limit: usize },
    #[error("no case with id `{0}`")]
    UnknownCase(String),
    #[error("case `{case_id}` runs workflow `{actual}`, not `{expected}`")]
    CaseOfOtherWorkflow {
        case_id: String,
        expected: String,
        actual: String,
    },
    #[error("case `{case_id}` has no rendered prompt for step `{step}`: the step has not run for this case (or the case ran before prompts were kept), so there is no text to learn from")]
    NoPrompt { case_id: String, step: String },
    /// The learner refused the batch (a label too long, too many labels).
    #[error(transparent)]
    Learner(#[from] keel_ai::learner::Error),
    /// A stored version does not load: an operator problem.
    #[error("stored learner `{workflow}/{step}` version {version} does not load: {source}; train it again with `keel learner train`")]
    CorruptModel {
        workflow: String,
        step: String,
        version: i64,
        source: keel_ai::learner::Error,
    },
    #[error("stored case state is unreadable: {0}")]
    CorruptState(String),
    #[error(transparent)]
    Store(#[from] keel_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One labelled example as a client sends it: a text, or a case whose rendered prompt is the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Example {
    Text { text: String, label: String },
    Case { case_id: String, label: String },
}

/// What an update stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Learned {
    /// The new stored version (1, 2, …).
    pub version: i64,
    /// Examples the learner has learnt from over its whole life.
    pub examples: u64,
}

/// The latest stored version of a learner, without its model bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LearnerSummary {
    pub workflow: String,
    pub step: String,
    pub version: i64,
    pub examples: i64,
    /// What the version was learnt from: `file`, `cli:FILE`, `api`, `case:ID`.
    pub source: String,
    pub created_at_ms: i64,
}

/// Who stores a version, for its journal entry.
#[derive(Debug, Clone)]
pub struct Actor {
    pub actor_type: String,
    pub actor_id: String,
}

impl Actor {
    fn engine() -> Actor {
        Actor {
            actor_type: "system".into(),
            actor_id: "engine".into(),
        }
    }
}

/// A learner version about to be stored.
pub struct NewVersion<'a> {
    pub workflow: &'a str,
    pub step: &'a str,
    pub learner: &'a Learner,
    /// The journal entry's kind: `learner.trained`, `learner.updated`, `learner.imported`.
    pub kind: &'a str,
    pub source: &'a str,
    /// Examples in this batch.
    pub batch: usize,
    /// More fields for the journal entry's data (such as the training-set accuracy).
    pub extra: Value,
    pub actor: Actor,
    pub now_ms: i64,
}

/// Stores `new.learner` as the next version of its learner with its journal entry, in one
/// transaction; returns the version.
pub async fn save_version(store: &Store, new: NewVersion<'_>) -> Result<i64> {
    let model = new.learner.to_bytes();
    let model_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&model))
    };
    let examples = i64::try_from(new.learner.examples_seen()).unwrap_or(i64::MAX);
    let announce = |version: i64| {
        let mut data = json!({
            "workflow": new.workflow,
            "step": new.step,
            "version": version,
            "examples": examples,
            "batch": new.batch,
            "source": new.source,
            "classes": new.learner.classes(),
            "model_sha256": model_sha256,
            "model_bytes": model.len(),
        });
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), &new.extra) {
            data.extend(extra.clone());
        }
        learner_entry(&new, &data)
    };
    Ok(store
        .save_learner(
            new.workflow,
            new.step,
            &model,
            examples,
            new.source,
            new.now_ms,
            &announce,
        )
        .await?)
}

fn learner_entry(new: &NewVersion<'_>, data: &Value) -> NewEntry {
    let (data, data_sha256) = canonical_data(data);
    NewEntry {
        at: rfc3339_ms(new.now_ms),
        kind: new.kind.to_string(),
        actor_type: new.actor.actor_type.clone(),
        actor_id: new.actor.actor_id.clone(),
        case_id: None,
        workflow: Some(new.workflow.to_string()),
        step: Some(new.step.to_string()),
        data,
        data_sha256,
    }
}

/// The latest stored version of `workflow/step` and its learner, if any is stored.
pub async fn latest(store: &Store, workflow: &str, step: &str) -> Result<Option<(i64, Learner)>> {
    let row = store
        .latest_learners()
        .await?
        .into_iter()
        .find(|row| row.workflow == workflow && row.step == step);
    let Some(row) = row else {
        return Ok(None);
    };
    let learner = Learner::from_bytes(&row.model).map_err(|source| Error::CorruptModel {
        workflow: workflow.to_string(),
        step: step.to_string(),
        version: row.version,
        source,
    })?;
    Ok(Some((row.version, learner)))
}

/// Loads the latest stored version of every learner into `runtime`; returns how many loaded.
/// A version that does not load is logged and skipped: its step falls through to the next tier.
pub async fn load_into_runtime(
    store: &Store,
    runtime: &keel_ai::cascade::Runtime,
) -> keel_store::Result<usize> {
    let mut loaded = 0;
    for row in store.latest_learners().await? {
        match Learner::from_bytes(&row.model) {
            Ok(learner) => {
                tracing::info!(workflow = %row.workflow, step = %row.step, version = row.version, examples = row.examples, "learner loaded");
                runtime.set_learner(&row.workflow, &row.step, learner);
                loaded += 1;
            }
            Err(error) => tracing::error!(
                workflow = %row.workflow, step = %row.step, version = row.version, %error,
                "stored learner does not load; its tier is skipped until it is trained again"
            ),
        }
    }
    Ok(loaded)
}

/// The engine's copy of each learner it updated, one lock per `workflow/step`.
#[derive(Default)]
pub(crate) struct Learners {
    slots: std::sync::Mutex<HashMap<(String, String), Slot>>,
}

/// One learner's lock and the engine's copy of it (`None` until first used).
type Slot = Arc<tokio::sync::Mutex<Option<Current>>>;

/// A learner as stored at `version`.
struct Current {
    version: i64,
    learner: Learner,
}

impl Learners {
    fn slot(&self, workflow: &str, step: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((workflow.to_string(), step.to_string()))
            .or_default()
            .clone()
    }
}

impl Engine {
    /// Learns one batch of labelled texts for the `classify` step `workflow/step`: applies it to
    /// the current learner (a new one when none is stored), stores the result as a new version
    /// with a `learner.updated` journal entry, and makes the AI runtime answer with it.
    /// Batches for the same learner are applied one after the other.
    pub async fn learn(
        &self,
        workflow: &str,
        step: &str,
        examples: Vec<(String, String)>,
        source: &str,
    ) -> Result<Learned> {
        let labels = self.classify_labels(workflow, step)?;
        check_batch(workflow, step, &labels, &examples)?;
        self.apply(workflow, step, &examples, source).await
    }

    /// [`Engine::learn`] for examples that are texts or cases (whose rendered prompts are the
    /// texts). Everything is checked before anything is learnt.
    pub async fn learn_examples(
        &self,
        workflow: &str,
        step: &str,
        examples: Vec<Example>,
        source: &str,
    ) -> Result<Learned> {
        let labels = self.classify_labels(workflow, step)?;
        if examples.len() > MAX_EXAMPLES_PER_BATCH {
            return Err(Error::TooManyExamples {
                count: examples.len(),
                limit: MAX_EXAMPLES_PER_BATCH,
            });
        }
        let mut texts = Vec::with_capacity(examples.len());
        for example in examples {
            match example {
                Example::Text { text, label } => texts.push((text, label)),
                Example::Case { case_id, label } => {
                    let (case_workflow, prompt) = self.case_prompt(&case_id, step).await?;
                    if case_workflow != workflow {
                        return Err(Error::CaseOfOtherWorkflow {
                            case_id,
                            expected: workflow.to_string(),
                            actual: case_workflow,
                        });
                    }
                    texts.push((prompt, label));
                }
            }
        }
        check_batch(workflow, step, &labels, &texts)?;
        self.apply(workflow, step, &texts, source).await
    }

    /// Learns the labelled outcome of a case: the text is the prompt its `step` rendered, the
    /// label what a person decided. Source `case:ID`.
    pub async fn learn_from_case(&self, case_id: &str, step: &str, label: &str) -> Result<Learned> {
        let (workflow, prompt) = self.case_prompt(case_id, step).await?;
        let source = format!("case:{case_id}");
        self.learn(&workflow, step, vec![(prompt, label.to_string())], &source)
            .await
    }

    /// The workflow of a case and the prompt its `ai` step `step` last rendered.
    pub async fn case_prompt(&self, case_id: &str, step: &str) -> Result<(String, String)> {
        let row = self
            .inner
            .store
            .case(case_id)
            .await?
            .ok_or_else(|| Error::UnknownCase(case_id.to_string()))?;
        let state: CaseState = serde_json::from_str(&row.state)
            .map_err(|error| Error::CorruptState(format!("case {case_id}: {error}")))?;
        match state.ai_prompts.get(step) {
            Some(prompt) => Ok((state.workflow, prompt.clone())),
            None => Err(Error::NoPrompt {
                case_id: case_id.to_string(),
                step: step.to_string(),
            }),
        }
    }

    /// The latest stored version of every learner.
    pub async fn learners(&self) -> Result<Vec<LearnerSummary>> {
        Ok(self
            .inner
            .store
            .latest_learners()
            .await?
            .into_iter()
            .map(|row| LearnerSummary {
                workflow: row.workflow,
                step: row.step,
                version: row.version,
                examples: row.examples,
                source: row.source,
                created_at_ms: row.created_at_ms,
            })
            .collect())
    }

    /// The labels of the `classify` step `workflow/step` in the workflow's latest version.
    pub fn classify_labels(&self, workflow: &str, step: &str) -> Result<Vec<String>> {
        let (_, definition) = self
            .inner
            .registry
            .latest(workflow)
            .ok_or_else(|| Error::UnknownWorkflow(workflow.to_string()))?;
        let found =
            keel_core::case::find_step(&definition, step).ok_or_else(|| Error::UnknownStep {
                workflow: workflow.to_string(),
                step: step.to_string(),
            })?;
        let what = match &found.kind {
            StepKind::Ai(ai) => match &ai.task {
                AiTask::Classify { labels } => return Ok(labels.clone()),
                other => format!("an `ai` step with `task: {}`", other.keyword()),
            },
            other => format!("a `{}` step", other.keyword()),
        };
        Err(Error::NotClassify {
            workflow: workflow.to_string(),
            step: step.to_string(),
            what,
        })
    }

    /// Applies a checked batch under the learner's lock, stores it and swaps it in.
    async fn apply(
        &self,
        workflow: &str,
        step: &str,
        examples: &[(String, String)],
        source: &str,
    ) -> Result<Learned> {
        let store = &self.inner.store;
        let slot = self.inner.learners.slot(workflow, step);
        let mut copy = slot.lock().await;
        let stored = store
            .learner_versions(workflow, step)
            .await?
            .first()
            .map(|row| row.version);
        if copy.as_ref().map(|c| c.version) != stored {
            *copy = latest(store, workflow, step)
                .await?
                .map(|(version, learner)| Current { version, learner });
        }
        let mut learner = copy
            .as_ref()
            .map_or_else(Learner::default, |c| c.learner.clone());
        learner.update_batch(examples)?;
        let version = save_version(
            store,
            NewVersion {
                workflow,
                step,
                learner: &learner,
                kind: "learner.updated",
                source,
                batch: examples.len(),
                extra: Value::Null,
                actor: Actor::engine(),
                now_ms: self.now_ms(),
            },
        )
        .await?;
        self.inner.journal_written.notify_one();
        let learned = Learned {
            version,
            examples: learner.examples_seen(),
        };
        if let Some(runtime) = &self.inner.options.ai {
            runtime.set_learner(workflow, step, learner.clone());
        }
        *copy = Some(Current { version, learner });
        Ok(learned)
    }
}

/// Bounds and labels of a batch of texts, before anything is learnt.
fn check_batch(
    workflow: &str,
    step: &str,
    labels: &[String],
    examples: &[(String, String)],
) -> Result<()> {
    if examples.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if examples.len() > MAX_EXAMPLES_PER_BATCH {
        return Err(Error::TooManyExamples {
            count: examples.len(),
            limit: MAX_EXAMPLES_PER_BATCH,
        });
    }
    if let Some((_, label)) = examples.iter().find(|(_, label)| !labels.contains(label)) {
        return Err(Error::UnknownLabel {
            workflow: workflow.to_string(),
            step: step.to_string(),
            label: label.clone(),
            labels: labels.to_vec(),
        });
    }
    Ok(())
}
