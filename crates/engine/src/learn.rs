//! The local learners' life in the store. Every update batch — a `keel learner train` run, a
//! batch posted to the API, a person's label for a case, or a batch of people's review
//! decisions — becomes a new stored version with a journal entry in the same transaction. A
//! new version is a **challenger**: it serves no case until it is evaluated on the step's
//! reviewed outcomes that no version of the learner trained on and shown non-inferior to the
//! serving version (`keel_tuning::noninferiority`: paired, margin and α from
//! [`LearningOptions`]); then it is promoted (`learner.promoted`, evidence attached) and the AI
//! runtime answers with it. A challenger that fails is kept, never served (`learner.failed`),
//! and the next batch builds on the serving version instead. A challenger waits while fewer
//! than `min_evaluation` reviewed outcomes exist. An operator may force a version only as a
//! change a governor approves (`learner.force_requested`, then `learner.promoted` with
//! `forced` or `learner.force_rejected`).
//!
//! **People's decisions teach**: each pass (the trust evaluator's, or
//! [`Engine::learn_once`]) reads the step's reviewed outcomes (agreements and corrections with
//! a final label) after a durable cursor (`meta` key `learn-from-reviews/WORKFLOW/STEP`,
//! moved in the transaction that stores the batch) and, once `batch` of them are teachable,
//! learns them as one challenger. One reviewed case in `holdout` (chosen by a hash of the case
//! id, so every node agrees) is never taught: those cases are the evaluation set that keeps
//! growing as people work. A per-step switch turns teaching off.
//!
//! The engine keeps its own copy of each learner's newest non-failed version (the lineage new
//! batches build on) and serialises the updates of one learner with a mutex, so two
//! concurrent batches are applied one after the other and neither is lost. Before each update
//! the copy is compared with the store and reloaded when something else (another node, a
//! `keel learner train` run) stored a newer version.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use keel_ai::learner::Learner;
use keel_core::case::CaseState;
use keel_core::workflow::{AiTask, StepKind};
use keel_store::{LearnerStatusChange, NewEntry, NewLearner, Store};
use keel_tuning::noninferiority;
use serde_json::{json, Value};

use crate::tokens::Caller;
use crate::{canonical_data, rfc3339_ms, Engine, Inner};

/// How learners learn from people's decisions and how a challenger is tested: `[learning]` of
/// `keel.toml` (the defaults without one).
#[derive(Debug, Clone, PartialEq)]
pub struct LearningOptions {
    /// People's approvals and corrections of `classify` proposals teach the step's learner.
    pub from_reviews: bool,
    /// Steps (`WORKFLOW/STEP`) that do not learn from reviews whatever `from_reviews` says.
    pub from_reviews_off: BTreeSet<String>,
    /// Teachable reviewed outcomes per batch (each batch is one challenger).
    pub batch: usize,
    /// One reviewed case in this many is kept for evaluation and never taught.
    pub holdout: u64,
    /// A challenger may be at most this much less accurate than the serving version.
    pub margin: f64,
    /// The test's error rate: the chance of promoting a challenger worse than the margin.
    pub alpha: f64,
    /// Reviewed outcomes a challenger needs before it is tested (it waits until then).
    pub min_evaluation: usize,
    /// At most this many (the newest) reviewed outcomes are used in a test.
    pub max_evaluation: usize,
    /// `false` only where a deployment opts out (one person trying Keel): every version
    /// serves at once, and its entry says the test was off.
    pub test: bool,
}

impl LearningOptions {
    /// From `[learning]` of keel.toml.
    pub fn from_config(config: &keel_ai::config::LearningConfig) -> LearningOptions {
        LearningOptions {
            from_reviews: config.from_reviews,
            from_reviews_off: config.from_reviews_off.clone(),
            batch: config.batch,
            holdout: config.holdout,
            margin: config.margin,
            alpha: config.alpha,
            min_evaluation: config.min_evaluation,
            test: config.challenger_test,
            ..LearningOptions::default()
        }
    }
}

impl Default for LearningOptions {
    fn default() -> Self {
        LearningOptions {
            from_reviews: true,
            from_reviews_off: BTreeSet::new(),
            batch: 20,
            holdout: 5,
            margin: 0.02,
            alpha: 0.05,
            min_evaluation: 30,
            max_evaluation: 2_000,
            test: true,
        }
    }
}

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
    /// Another node stored the same batch of reviews first.
    #[error("another node learnt this batch first")]
    Moved,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One labelled example as a client sends it: a text, or a case whose rendered prompt is the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Example {
    Text { text: String, label: String },
    Case { case_id: String, label: String },
}

/// What an update stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Learned {
    /// The new stored version (1, 2, …).
    pub version: i64,
    /// Examples the learner has learnt from over its whole life.
    pub examples: u64,
    /// Where the version stands after its test: `serving`, `failed`, or `challenger` (it
    /// waits for enough reviewed outcomes).
    pub status: String,
}

/// The latest stored version of a learner, without its model bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LearnerSummary {
    pub workflow: String,
    pub step: String,
    /// The newest stored version and its status.
    pub version: i64,
    pub status: String,
    /// The version the AI runtime answers with (`None`: none serves yet).
    pub serving_version: Option<i64>,
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

    /// The learning pass: tests of challengers, batches taught from reviews.
    fn learning() -> Actor {
        Actor {
            actor_type: "system".into(),
            actor_id: "learning".into(),
        }
    }

    /// The person or token behind an API call.
    pub fn caller(caller: &Caller) -> Actor {
        Actor {
            actor_type: "user".into(),
            actor_id: caller.subject.clone(),
        }
    }
}

/// A learner version about to be stored.
pub struct NewVersion<'a> {
    pub workflow: &'a str,
    pub step: &'a str,
    pub learner: &'a Learner,
    /// The journal entry's kind: `learner.challenger` (the rule), `learner.imported`.
    pub kind: &'a str,
    pub source: &'a str,
    /// Examples in this batch.
    pub batch: usize,
    /// More fields for the journal entry's data (such as the training-set accuracy).
    pub extra: Value,
    pub actor: Actor,
    pub now_ms: i64,
    /// The texts of the batch: their hashes are stored, so evaluations leave them out.
    pub texts: Vec<&'a str>,
    /// `challenger`, or `serving` where the test is off.
    pub status: &'a str,
    /// A `meta` cursor moved in the same transaction: (key, old value, new value).
    pub cursor: Option<(String, Option<String>, String)>,
}

/// SHA-256 (hex) of a text, as `learner_trained` keeps it.
fn text_sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Stores `new.learner` as the next version of its learner with its journal entry, in one
/// transaction; returns the version (`None`: the cursor had moved, nothing was stored).
pub async fn save_version(store: &Store, new: NewVersion<'_>) -> Result<Option<i64>> {
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
            "status": new.status,
            "classes": new.learner.classes(),
            "model_sha256": model_sha256,
            "model_bytes": model.len(),
        });
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), &new.extra) {
            data.extend(extra.clone());
        }
        learner_entry(&new, &data)
    };
    let trained: Vec<String> = new.texts.iter().map(|t| text_sha256(t)).collect();
    let cursor = new
        .cursor
        .as_ref()
        .map(|(key, old, value)| (key.as_str(), old.as_deref(), value.as_str()));
    Ok(store
        .save_learner(
            &NewLearner {
                workflow: new.workflow,
                step: new.step,
                model: &model,
                examples,
                source: new.source,
                now_ms: new.now_ms,
                status: new.status,
                trained: &trained,
                cursor,
            },
            &announce,
        )
        .await?)
}

fn learner_entry(new: &NewVersion<'_>, data: &Value) -> NewEntry {
    plain_entry(
        new.now_ms,
        new.kind,
        &new.actor,
        new.workflow,
        new.step,
        data,
    )
}

fn plain_entry(
    now_ms: i64,
    kind: &str,
    actor: &Actor,
    workflow: &str,
    step: &str,
    data: &Value,
) -> NewEntry {
    let (data, data_sha256) = canonical_data(data);
    NewEntry {
        at: rfc3339_ms(now_ms),
        kind: kind.to_string(),
        actor_type: actor.actor_type.clone(),
        actor_id: actor.actor_id.clone(),
        case_id: None,
        workflow: Some(workflow.to_string()),
        step: Some(step.to_string()),
        data,
        data_sha256,
    }
}

fn load(row: &keel_store::LearnerRow) -> Result<Learner> {
    Learner::from_bytes(&row.model).map_err(|source| Error::CorruptModel {
        workflow: row.workflow.clone(),
        step: row.step.clone(),
        version: row.version,
        source,
    })
}

/// The newest stored version of `workflow/step` that did not fail its test, and its learner:
/// what the next batch builds on.
pub async fn latest(store: &Store, workflow: &str, step: &str) -> Result<Option<(i64, Learner)>> {
    let Some(version) = store
        .learner_versions(workflow, step)
        .await?
        .into_iter()
        .find(|row| row.status != "failed")
        .map(|row| row.version)
    else {
        return Ok(None);
    };
    match store.learner_model(workflow, step, version).await? {
        Some(row) => Ok(Some((version, load(&row)?))),
        None => Ok(None),
    }
}

/// Loads the serving version of every learner into `runtime`; returns how many loaded.
/// A version that does not load is logged and skipped: its step falls through to the next tier.
pub async fn load_into_runtime(
    store: &Store,
    runtime: &keel_ai::cascade::Runtime,
) -> keel_store::Result<usize> {
    let mut loaded = 0;
    for row in store.serving_learners().await? {
        match Learner::from_bytes(&row.model) {
            Ok(learner) => {
                tracing::info!(workflow = %row.workflow, step = %row.step, version = row.version, examples = row.examples, "learner loaded");
                runtime.set_learner_version(&row.workflow, &row.step, learner, row.version);
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
    /// Per learner, what its last test waited on: (newest challenger, newest reviewed
    /// outcome). While neither changes, a waiting challenger is not tested again, so a pass
    /// does not re-read the evaluation set's cases for nothing.
    waited: std::sync::Mutex<HashMap<(String, String), (i64, i64)>>,
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

/// What testing one challenger did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub workflow: String,
    pub step: String,
    pub version: i64,
    /// `promoted`, `failed`, or `waiting` (too few reviewed outcomes yet).
    pub result: String,
    pub evidence: Value,
}

/// Why a force request or a governor's decision on it was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForceError {
    #[error(
        "learner `{workflow}/{step}` has no version {version}; `keel learner versions` lists them"
    )]
    UnknownVersion {
        workflow: String,
        step: String,
        version: i64,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    /// The version's state does not allow it (it serves already, a request is open or none
    /// is, it changed meanwhile).
    #[error("{0}")]
    Conflict(String),
}

/// Whether case `case_id` is kept for evaluation (never taught from reviews).
pub fn is_holdout(case_id: &str, holdout: u64) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(case_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    holdout > 0 && u64::from_be_bytes(first) % holdout == 0
}

impl Engine {
    /// Learns one batch of labelled texts for the `classify` step `workflow/step`: applies it to
    /// the newest non-failed version (a new learner when none is stored), stores the result as
    /// a challenger with a `learner.challenger` entry, and tests it at once (see the module
    /// docs). Batches for the same learner are applied one after the other.
    pub async fn learn(
        &self,
        workflow: &str,
        step: &str,
        examples: Vec<(String, String)>,
        source: &str,
    ) -> Result<Learned> {
        let labels = self.classify_labels(workflow, step)?;
        check_batch(workflow, step, &labels, &examples)?;
        self.apply(workflow, step, &examples, source, Actor::engine(), None)
            .await
    }

    /// [`Engine::learn`] for examples that are texts or cases (whose rendered prompts are the
    /// texts), on behalf of `actor`. Everything is checked before anything is learnt.
    pub async fn learn_examples(
        &self,
        workflow: &str,
        step: &str,
        examples: Vec<Example>,
        source: &str,
        actor: Actor,
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
        self.apply(workflow, step, &texts, source, actor, None)
            .await
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

    /// The newest stored version of every learner, with the version serving now.
    pub async fn learners(&self) -> Result<Vec<LearnerSummary>> {
        let serving: HashMap<(String, String), i64> = self
            .inner
            .store
            .serving_learners()
            .await?
            .into_iter()
            .map(|row| ((row.workflow, row.step), row.version))
            .collect();
        Ok(self
            .inner
            .store
            .latest_learners()
            .await?
            .into_iter()
            .map(|row| LearnerSummary {
                serving_version: serving
                    .get(&(row.workflow.clone(), row.step.clone()))
                    .copied(),
                workflow: row.workflow,
                step: row.step,
                version: row.version,
                status: row.status,
                examples: row.examples,
                source: row.source,
                created_at_ms: row.created_at_ms,
            })
            .collect())
    }

    /// Every stored version of one learner, newest first (no model bytes).
    pub async fn learner_versions(
        &self,
        workflow: &str,
        step: &str,
    ) -> Result<Vec<keel_store::LearnerRow>> {
        Ok(self.inner.store.learner_versions(workflow, step).await?)
    }

    /// The labels of the `classify` step `workflow/step` in the workflow's serving version.
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

    /// One learning pass now: people's reviews become challengers where enough are
    /// teachable, then every waiting challenger is tested.
    pub async fn learn_once(&self) -> Result<Vec<Evaluation>> {
        learn_from_reviews(self).await?;
        self.test_challengers().await
    }

    /// Tests every challenger that waits (oldest first per learner).
    pub async fn test_challengers(&self) -> Result<Vec<Evaluation>> {
        let mut done = Vec::new();
        for (workflow, step) in self.inner.store.learners_with_challengers().await? {
            done.extend(self.test_learner(&workflow, &step).await?);
        }
        Ok(done)
    }

    /// Tests the challengers of one learner under the learner's lock, newest first: the
    /// newest holds every batch before it, so when it passes, the older challengers are
    /// superseded (`retired`); when it fails, the next newest is tested; an inconclusive test
    /// waits for more reviewed outcomes.
    async fn test_learner(&self, workflow: &str, step: &str) -> Result<Vec<Evaluation>> {
        let slot = self.inner.learners.slot(workflow, step);
        let _guard = slot.lock().await;
        let mut done = Vec::new();
        let mut challengers: Vec<i64> = self
            .inner
            .store
            .learner_versions(workflow, step)
            .await?
            .into_iter()
            .filter(|row| row.status == "challenger")
            .map(|row| row.version)
            .collect();
        challengers.sort_unstable_by(|a, b| b.cmp(a));
        let Ok(labels) = self.classify_labels(workflow, step) else {
            return Ok(done); // the workflow no longer has this step: nothing to test against
        };
        let Some(&newest) = challengers.first() else {
            return Ok(done);
        };
        let newest_outcome = self
            .inner
            .store
            .newest_labelled_outcomes(&format!("{workflow}/{step}"), 1)
            .await?
            .first()
            .map_or(0, |(id, _, _)| *id);
        let key = (workflow.to_string(), step.to_string());
        let waited = |learners: &Learners| {
            learners
                .waited
                .lock()
                .map(|w| w.get(&key).copied())
                .unwrap_or(None)
        };
        if waited(&self.inner.learners) == Some((newest, newest_outcome)) {
            return Ok(done); // nothing new to test on since the last test waited
        }
        let mut set: Option<Vec<(String, String)>> = None;
        let mut remaining = challengers.into_iter();
        for version in remaining.by_ref() {
            if set.is_none() {
                set = Some(self.evaluation_set(workflow, step).await?);
            }
            let examples = set.as_deref().unwrap_or_default();
            let evaluation = self
                .test_one(workflow, step, version, &labels, examples)
                .await?;
            let result = evaluation.result.clone();
            done.push(evaluation);
            match result.as_str() {
                "failed" => continue,
                "promoted" => break,
                _ => {
                    // Waiting: the older ones would wait for the same outcomes.
                    if let Ok(mut w) = self.inner.learners.waited.lock() {
                        w.insert(key, (newest, newest_outcome));
                    }
                    return Ok(done);
                }
            }
        }
        // Older challengers than a promoted one are superseded: the promoted one holds them.
        if done.last().is_some_and(|e| e.result == "promoted") {
            let newer = done.last().map_or(0, |e| e.version);
            for version in remaining {
                self.settle_challenger(
                    workflow,
                    step,
                    version,
                    ("retired", "learner.superseded"),
                    json!({ "by_version": newer }),
                    &json!({ "superseded_by": newer }),
                    None,
                )
                .await?;
            }
        }
        Ok(done)
    }

    /// The step's reviewed outcomes that no version trained on: (text, label), newest first.
    async fn evaluation_set(&self, workflow: &str, step: &str) -> Result<Vec<(String, String)>> {
        let options = &self.inner.learning;
        let trained: HashSet<String> = self
            .inner
            .store
            .learner_trained(workflow, step)
            .await?
            .into_iter()
            .collect();
        let rows = self
            .inner
            .store
            .newest_labelled_outcomes(
                &format!("{workflow}/{step}"),
                i64::try_from(options.max_evaluation * 2).unwrap_or(i64::MAX),
            )
            .await?;
        let mut seen = HashSet::new();
        let mut set = Vec::new();
        for (_, case_id, label) in rows {
            if set.len() >= options.max_evaluation || !seen.insert(case_id.clone()) {
                continue;
            }
            let Ok((_, text)) = self.case_prompt(&case_id, step).await else {
                continue;
            };
            if !trained.contains(&text_sha256(&text)) {
                set.push((text, label));
            }
        }
        Ok(set)
    }

    async fn test_one(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        labels: &[String],
        examples: &[(String, String)],
    ) -> Result<Evaluation> {
        let options = &self.inner.learning;
        let store = &self.inner.store;
        let evaluation = |result: &str, evidence: Value| Evaluation {
            workflow: workflow.to_string(),
            step: step.to_string(),
            version,
            result: result.to_string(),
            evidence,
        };
        if !options.test {
            // The deployment opted out (`challenger_test = "off"`): the newest version serves.
            return self
                .promote_untested(workflow, step, version, evaluation)
                .await;
        }
        if examples.len() < options.min_evaluation {
            return Ok(evaluation(
                "waiting",
                json!({ "reviewed_outcomes": examples.len(), "needed": options.min_evaluation }),
            ));
        }
        let Some(row) = store.learner_model(workflow, step, version).await? else {
            return Ok(evaluation("waiting", json!({ "missing": version })));
        };
        let challenger = load(&row)?;
        let serving_row = store
            .serving_learners()
            .await?
            .into_iter()
            .find(|r| r.workflow == workflow && r.step == step);
        let serving = serving_row.as_ref().map(load).transpose()?;
        let right = |learner: Option<&Learner>, text: &str, label: &str| {
            learner
                .and_then(|l| l.predict_within(text, labels))
                .is_some_and(|p| p.label == label)
        };
        let pairs: Vec<(bool, bool)> = examples
            .iter()
            .map(|(text, label)| {
                (
                    right(Some(&challenger), text, label),
                    right(serving.as_ref(), text, label),
                )
            })
            .collect();
        let result = noninferiority::test(pairs, options.margin, options.alpha)
            .map_err(|e| Error::CorruptState(format!("learning options: {e}")))?;
        let evidence = json!({
            "test": noninferiority::TEST_NAME, "margin": result.margin, "alpha": result.alpha,
            "n": result.n, "challenger_accuracy": result.challenger_accuracy,
            "serving_accuracy": result.serving_accuracy, "difference": result.difference,
            "lower_bound": result.lower_bound, "upper_bound": result.upper_bound,
            "challenger_only": result.challenger_only, "serving_only": result.serving_only,
            "verdict": result.verdict,
        });
        // Inconclusive: wait for more reviewed outcomes, unless the set is as large as it
        // gets (then a challenger that cannot show it is non-inferior fails).
        let full = examples.len() >= options.max_evaluation;
        if result.verdict == noninferiority::Verdict::Inconclusive && !full {
            return Ok(evaluation("waiting", evidence));
        }
        let previous = serving_row.as_ref().map(|r| r.version);
        let (status, kind, word) = if result.non_inferior {
            ("serving", "learner.promoted", "promoted")
        } else {
            ("failed", "learner.failed", "failed")
        };
        let took = self
            .settle_challenger(
                workflow,
                step,
                version,
                (status, kind),
                json!({ "previous_version": previous }),
                &evidence,
                result.non_inferior.then_some(challenger),
            )
            .await?;
        if took {
            tracing::info!(
                workflow,
                step,
                version,
                result = word,
                n = result.n,
                difference = result.difference,
                lower_bound = result.lower_bound,
                "learner challenger tested"
            );
        }
        Ok(evaluation(word, evidence))
    }

    /// Serves `version` without a test, where the deployment turned the test off.
    async fn promote_untested(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        evaluation: impl Fn(&str, Value) -> Evaluation,
    ) -> Result<Evaluation> {
        let Some(row) = self
            .inner
            .store
            .learner_model(workflow, step, version)
            .await?
        else {
            return Ok(evaluation("waiting", json!({ "missing": version })));
        };
        let evidence = json!({ "test": "off" });
        self.settle_challenger(
            workflow,
            step,
            version,
            ("serving", "learner.promoted"),
            json!({}),
            &evidence,
            Some(load(&row)?),
        )
        .await?;
        Ok(evaluation("promoted", evidence))
    }

    /// Moves challenger `version` to `status` (its stored evidence `evidence`) with the
    /// learning pass's entry `kind` (`data` plus the version, and the evidence of a test);
    /// `serving` is the learner to answer with when the version now serves. Returns whether it took (false: it was no longer a challenger).
    #[allow(clippy::too_many_arguments)] // one decision's parts, each named at the call
    async fn settle_challenger(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        (status, kind): (&str, &str),
        mut data: Value,
        evidence: &Value,
        serving: Option<Learner>,
    ) -> Result<bool> {
        let now = self.now_ms();
        if let Value::Object(fields) = &mut data {
            fields.insert("workflow".into(), json!(workflow));
            fields.insert("step".into(), json!(step));
            fields.insert("version".into(), json!(version));
            if status != "retired" {
                fields.insert("evidence".into(), evidence.clone());
            }
        }
        let entry = plain_entry(now, kind, &Actor::learning(), workflow, step, &data);
        let took = self
            .inner
            .store
            .set_learner_status(
                &LearnerStatusChange {
                    workflow,
                    step,
                    version,
                    expected: "challenger",
                    status,
                    evidence: &evidence.to_string(),
                    now_ms: now,
                },
                &entry,
            )
            .await?;
        if took {
            self.inner.journal_written.notify_one();
            if let Some(learner) = serving {
                self.serve(workflow, step, version, learner);
            }
        }
        Ok(took)
    }

    /// Makes `learner` (stored `version`) the one the AI runtime answers with.
    fn serve(&self, workflow: &str, step: &str, version: i64, learner: Learner) {
        if let Some(runtime) = &self.inner.options.ai {
            runtime.set_learner_version(workflow, step, learner, version);
        }
    }

    /// An operator's request to serve `version` without its test: recorded, and served only
    /// when a governor who is not the requester approves it.
    pub async fn learner_force(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        caller: &Caller,
        reason: &str,
    ) -> Result<std::result::Result<Value, ForceError>> {
        let row = match self.stored_version(workflow, step, version).await? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        if !caller
            .roles
            .iter()
            .any(|r| matches!(r.as_str(), "operator" | "admin" | "governor"))
        {
            return Ok(Err(ForceError::Forbidden(format!(
                "asking to serve a learner version needs the role operator, governor or admin; `{}` has {:?}",
                caller.subject, caller.roles
            ))));
        }
        if reason.trim().is_empty() {
            return Ok(Err(ForceError::Invalid("give a --reason".into())));
        }
        if row.status == "serving" {
            return Ok(Err(ForceError::Conflict(format!(
                "version {version} serves already"
            ))));
        }
        if row.requested_by.is_some() {
            return Ok(Err(ForceError::Conflict(format!(
                "version {version} has a request open already; a governor approves or rejects it"
            ))));
        }
        let data = json!({ "workflow": workflow, "step": step, "version": version,
            "status": row.status, "by": caller.subject, "reason": reason });
        let entry = plain_entry(
            self.now_ms(),
            "learner.force_requested",
            &Actor::caller(caller),
            workflow,
            step,
            &data,
        );
        let took = self
            .inner
            .store
            .set_learner_request(workflow, step, version, Some(&caller.subject), &entry)
            .await?;
        if !took {
            return Ok(Err(ForceError::Conflict(format!(
                "version {version} changed meanwhile; look again with `keel learner versions`"
            ))));
        }
        self.inner.journal_written.notify_one();
        Ok(Ok(data))
    }

    /// A governor's decision on a request to serve `version` without its test.
    pub async fn learner_decide_force(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        caller: &Caller,
        approve: bool,
        reason: &str,
    ) -> Result<std::result::Result<Value, ForceError>> {
        let slot = self.inner.learners.slot(workflow, step);
        let _guard = slot.lock().await;
        let row = match self.stored_version(workflow, step, version).await? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        let Some(requested_by) = row.requested_by.clone() else {
            return Ok(Err(ForceError::Conflict(format!(
                "nobody asked to serve version {version}: `keel learner force` asks first"
            ))));
        };
        let approvers = self.step_approvers(workflow, step);
        if !caller
            .roles
            .iter()
            .any(|r| approvers.contains(r) || r == "admin")
        {
            return Ok(Err(ForceError::Forbidden(format!(
                "deciding on a learner version needs one of the roles {approvers:?} (the approvers of the operations this step decides); `{}` has {:?}",
                caller.subject, caller.roles
            ))));
        }
        if approve && requested_by == caller.subject {
            return Ok(Err(ForceError::Forbidden(format!(
                "`{}` asked for this version; another governor must approve it",
                caller.subject
            ))));
        }
        if reason.trim().is_empty() {
            return Ok(Err(ForceError::Invalid("give a --reason".into())));
        }
        let now = self.now_ms();
        let actor = Actor::caller(caller);
        if !approve {
            let data = json!({ "workflow": workflow, "step": step, "version": version,
                "requested_by": requested_by, "by": caller.subject, "reason": reason });
            let entry = plain_entry(now, "learner.force_rejected", &actor, workflow, step, &data);
            self.inner
                .store
                .set_learner_request(workflow, step, version, None, &entry)
                .await?;
            self.inner.journal_written.notify_one();
            return Ok(Ok(data));
        }
        let previous = self
            .inner
            .store
            .serving_learners()
            .await?
            .into_iter()
            .find(|r| r.workflow == workflow && r.step == step)
            .map(|r| r.version);
        let evidence = json!({ "forced": true, "requested_by": requested_by,
            "approved_by": caller.subject, "reason": reason, "previous_status": row.status });
        let data = json!({ "workflow": workflow, "step": step, "version": version,
            "previous_version": previous, "forced": true, "requested_by": requested_by,
            "approved_by": caller.subject, "reason": reason, "evidence": evidence });
        let entry = plain_entry(now, "learner.promoted", &actor, workflow, step, &data);
        let took = self
            .inner
            .store
            .set_learner_status(
                &LearnerStatusChange {
                    workflow,
                    step,
                    version,
                    expected: &row.status,
                    status: "serving",
                    evidence: &evidence.to_string(),
                    now_ms: now,
                },
                &entry,
            )
            .await?;
        if !took {
            return Ok(Err(ForceError::Conflict(format!(
                "version {version} changed meanwhile; look again with `keel learner versions`"
            ))));
        }
        self.inner.journal_written.notify_one();
        self.serve(workflow, step, version, load(&row)?);
        Ok(Ok(data))
    }

    /// One stored version with its model, or the refusal that names it unknown.
    async fn stored_version(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
    ) -> Result<std::result::Result<keel_store::LearnerRow, ForceError>> {
        Ok(self
            .inner
            .store
            .learner_model(workflow, step, version)
            .await?
            .ok_or_else(|| ForceError::UnknownVersion {
                workflow: workflow.to_string(),
                step: step.to_string(),
                version,
            }))
    }

    /// The approver roles of the operations that `workflow/step` (an `ai` step) influences.
    fn step_approvers(&self, workflow: &str, step: &str) -> Vec<String> {
        let mut roles: Vec<String> = self
            .inner
            .registry
            .latest(workflow)
            .map(|(_, definition)| {
                definition
                    .steps
                    .iter()
                    .filter_map(|s| s.operation())
                    .filter(|op| op.uses_ai.iter().any(|a| a == step))
                    .flat_map(|op| op.trust.approvers.clone())
                    .collect()
            })
            .unwrap_or_default();
        if roles.is_empty() {
            roles.push("governor".into());
        }
        roles.sort();
        roles.dedup();
        roles
    }

    /// Applies a checked batch under the learner's lock, stores it as a challenger (or as the
    /// serving version where the test is off) and tests it.
    async fn apply(
        &self,
        workflow: &str,
        step: &str,
        examples: &[(String, String)],
        source: &str,
        actor: Actor,
        cursor: Option<(String, Option<String>, String)>,
    ) -> Result<Learned> {
        let store = &self.inner.store;
        let test = self.inner.learning.test;
        let learned = {
            let slot = self.inner.learners.slot(workflow, step);
            let mut copy = slot.lock().await;
            let base = store
                .learner_versions(workflow, step)
                .await?
                .into_iter()
                .find(|row| row.status != "failed")
                .map(|row| row.version);
            if copy.as_ref().map(|c| c.version) != base {
                *copy = latest(store, workflow, step)
                    .await?
                    .map(|(version, learner)| Current { version, learner });
            }
            let mut learner = copy
                .as_ref()
                .map_or_else(Learner::default, |c| c.learner.clone());
            learner.update_batch(examples)?;
            let status = if test { "challenger" } else { "serving" };
            let Some(version) = save_version(
                store,
                NewVersion {
                    workflow,
                    step,
                    learner: &learner,
                    kind: "learner.challenger",
                    source,
                    batch: examples.len(),
                    extra: if test {
                        json!({ "built_on": copy.as_ref().map(|c| c.version) })
                    } else {
                        json!({ "built_on": copy.as_ref().map(|c| c.version), "test": "off" })
                    },
                    actor,
                    now_ms: self.now_ms(),
                    texts: examples.iter().map(|(t, _)| t.as_str()).collect(),
                    status,
                    cursor,
                },
            )
            .await?
            else {
                return Err(Error::Moved);
            };
            self.inner.journal_written.notify_one();
            if !test {
                self.serve(workflow, step, version, learner.clone());
            }
            let examples_seen = learner.examples_seen();
            *copy = Some(Current { version, learner });
            Learned {
                version,
                examples: examples_seen,
                status: status.to_string(),
            }
        };
        if !test {
            return Ok(learned);
        }
        let status = self
            .test_learner(workflow, step)
            .await?
            .into_iter()
            .find(|e| e.version == learned.version)
            .map_or_else(
                || "challenger".to_string(),
                |e| match e.result.as_str() {
                    "promoted" => "serving".to_string(),
                    "failed" => "failed".to_string(),
                    _ => "challenger".to_string(),
                },
            );
        Ok(Learned { status, ..learned })
    }
}

/// The `classify` steps that may learn from reviews: (workflow, step), for steps whose route
/// has a local learner tier.
fn teachable_steps(inner: &Inner) -> Vec<(String, String)> {
    let options = &inner.learning;
    let Some(runtime) = &inner.options.ai else {
        return Vec::new();
    };
    if !options.from_reviews {
        return Vec::new();
    }
    let mut steps = Vec::new();
    for (name, _, _) in inner.registry.list() {
        let Some((_, definition)) = inner.registry.latest(&name) else {
            continue;
        };
        for step in &definition.steps {
            let StepKind::Ai(ai) = &step.kind else {
                continue;
            };
            let local = ai.route.iter().any(|tier| {
                runtime
                    .config()
                    .model(&tier.model)
                    .is_ok_and(|m| m.provider == keel_ai::config::ProviderKind::Local)
            });
            let key = format!("{name}/{}", step.id);
            if matches!(ai.task, AiTask::Classify { .. })
                && local
                && !options.from_reviews_off.contains(&key)
            {
                steps.push((name.clone(), step.id.clone()));
            }
        }
    }
    steps
}

/// People's reviewed outcomes become challengers, one batch at a time per step.
async fn learn_from_reviews(engine: &Engine) -> Result<()> {
    let inner = &engine.inner;
    let options = inner.learning.clone();
    for (workflow, step) in teachable_steps(inner) {
        let key = format!("learn-from-reviews/{workflow}/{step}");
        loop {
            let old = inner.store.meta(&key).await?;
            let after: i64 = old.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            let rows = inner
                .store
                .labelled_outcomes(
                    &format!("{workflow}/{step}"),
                    after,
                    MAX_EXAMPLES_PER_BATCH as i64,
                )
                .await?;
            let mut seen = HashSet::new();
            let mut batch = Vec::new();
            let mut last = after;
            let mut cases = Vec::new();
            for (id, case_id, label) in rows {
                if batch.len() >= options.batch {
                    break;
                }
                last = id;
                if is_holdout(&case_id, options.holdout) || !seen.insert(case_id.clone()) {
                    continue;
                }
                let Ok((_, text)) = engine.case_prompt(&case_id, &step).await else {
                    continue;
                };
                cases.push(case_id);
                batch.push((text, label));
            }
            if batch.len() < options.batch.max(1) {
                break; // wait for more decisions; the cursor stays
            }
            let Ok(labels) = engine.classify_labels(&workflow, &step) else {
                break;
            };
            batch.retain(|(_, label)| labels.contains(label));
            if batch.is_empty() {
                break;
            }
            let source = format!("reviews:{}..{last}", after + 1);
            let cursor = Some((key.clone(), old, last.to_string()));
            match engine
                .apply(
                    &workflow,
                    &step,
                    &batch,
                    &source,
                    Actor {
                        actor_type: "system".into(),
                        actor_id: "learning-from-reviews".into(),
                    },
                    cursor,
                )
                .await
            {
                Ok(learned) => tracing::info!(workflow, step, version = learned.version,
                    examples = batch.len(), status = %learned.status, "people's decisions taught the learner"),
                Err(Error::Moved) => break, // another node took this batch
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
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
