//! The Keel runtime: deploys workflows, accepts cases, runs them durably, and keeps the ledger.
//!
//! `Engine` is a cheap, cloneable handle. `Engine::start` spawns the services that own their
//! loops: the group committer (one transaction for many cases' writes), the poller (claims
//! runnable cases with leases: due timers, retries, cases whose lease expired after a crash),
//! the SLA ticker, and the sequencer (Merkle tree and signed checkpoints). Cases submitted
//! through this node are leased to it in the same transaction and run at once, without a
//! round trip through the poller.

mod ailog;
pub mod audit;
pub mod authz;
pub mod calibration;
pub mod change;
mod clock;
mod committer;
pub mod desk;
pub mod drift;
pub mod exceptions;
pub mod learn;
pub mod registry;
pub mod report;
pub mod report_render;
pub mod retro;
pub mod sequencer;
pub mod tasks;
pub mod telemetry;
pub mod tokens;
pub mod trust;
pub mod webhooks;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_core::case::{CaseState, Status};
use keel_core::workflow::Workflow;
use keel_store::{
    CaseFilter, CaseRow, CaseWrite, JournalRow, NewEntry, Store, WriteMode, WriteOutcome,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify, Semaphore};

pub use clock::{Clock, ManualClock, SystemClock};
pub use registry::{DeployReport, Registry};

/// Largest case input accepted, in bytes of JSON.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest signal payload accepted, in bytes of JSON.
pub const MAX_SIGNAL_BYTES: usize = 256 * 1024;
/// Longest signal name, in characters (a workflow's names are at most this long).
pub const MAX_SIGNAL_NAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no workflow named `{0}` is deployed; `keel serve --workflows DIR` deploys every *.yaml in DIR")]
    UnknownWorkflow(String),
    #[error("no case with id `{0}`")]
    UnknownCase(String),
    #[error("the input does not match the workflow's input schema ({} violation(s))", .0.len())]
    InvalidInput(Vec<keel_core::schema::Violation>),
    #[error("the {what} is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("the case changed concurrently too many times; retrying is safe")]
    Contended,
    #[error("the engine is shutting down; retry against another node or after restart")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] keel_store::Error),
    #[error("stored case state is unreadable: {0}")]
    CorruptState(String),
    /// The ledger's stored data is damaged or inconsistent (an operator problem).
    #[error("{0}")]
    Ledger(String),
    /// A proof was asked for that cannot exist (a leaf beyond the tree, `from` out of range).
    #[error("{0}")]
    BadProofRequest(String),
    /// No checkpoint at the requested size (or none yet).
    #[error("{0}")]
    NoCheckpoint(String),
    #[error("{0}")]
    Io(String),
    /// A request that can never succeed as given (the message says what to change).
    #[error("{0}")]
    InvalidRequest(String),
    /// A signal to a case that has finished: nothing will ever consume it.
    #[error(
        "case `{case_id}` is {status} and takes no more signals; start a new case to act again"
    )]
    CaseFinished { case_id: String, status: String },
    /// A signal that no `wait` step of the case's workflow version waits for.
    #[error("no `wait` step of workflow `{workflow}` version {version} waits for a signal named `{name}`; {expected}")]
    UndeclaredSignal {
        workflow: String,
        version: i64,
        name: String,
        /// What the workflow does wait for, as a sentence.
        expected: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the engine runs; `Options::default()` is right for one node on SQLite.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's id; persistent per data directory so a restart can take back its leases.
    pub node_id: String,
    /// How long a claimed case stays leased without a write.
    pub lease: Duration,
    /// How often the poller looks for due timers and expired leases.
    pub poll_interval: Duration,
    /// Cases running at once on this node.
    pub max_in_flight: usize,
    /// Writes per group commit.
    pub max_batch: usize,
    /// A checkpoint at least this often while entries arrive.
    pub checkpoint_interval: Duration,
    /// Directory for the ledger key.
    pub data_dir: PathBuf,
    /// The models of `keel.toml`; `None` when no configuration was given (an `ai` step then
    /// raises an `ai_failed` exception saying so).
    pub ai: Option<Arc<keel_ai::cascade::Runtime>>,
    /// Outbound webhooks (`[[webhooks]]` of `keel.toml`); none by default.
    pub webhooks: webhooks::Options,
    /// Queues, routing rules and escalation ladders (`exceptions.yaml`); by default one
    /// queue, `exceptions`, that operators and specialists claim from.
    pub desk: Arc<keel_core::desk::DeskConfig>,
    /// OpenTelemetry traces (off by default).
    pub telemetry: telemetry::Options,
    /// How often every operation's trust evidence is evaluated.
    pub trust_interval: Duration,
    /// How often monitored features are observed and tested for drift.
    pub drift_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_id: "node-local".into(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            max_in_flight: 256,
            max_batch: 1_000,
            checkpoint_interval: Duration::from_secs(1),
            data_dir: PathBuf::from("keel-data"),
            ai: None,
            webhooks: webhooks::Options::default(),
            desk: Arc::new(keel_core::desk::DeskConfig::builtin()),
            telemetry: telemetry::Options::default(),
            trust_interval: Duration::from_secs(10),
            drift_interval: Duration::from_secs(60),
        }
    }
}

/// What `submit` returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    pub case_id: String,
    pub workflow: String,
    pub workflow_version: i64,
    /// False when an earlier submission with the same idempotency key is returned instead.
    pub created: bool,
    pub status: String,
}

pub(crate) struct Inner {
    pub store: Store,
    pub registry: Registry,
    pub clock: Arc<dyn Clock>,
    pub options: Options,
    pub committer: committer::Handle,
    pub ai_log: ailog::Handle,
    pub webhooks: webhooks::Handle,
    /// The engine's copy of each learner it updates online, one lock per learner.
    pub learners: learn::Learners,
    /// `[learning]` of keel.toml: teaching from reviews, the challengers' test.
    pub learning: learn::LearningOptions,
    /// `[change_control] review` of keel.toml: whether a version that changes what decides
    /// waits for a governor (on unless a deployment opts out).
    pub change_review: bool,
    pub tokens: tokens::TokenCache,
    pub telemetry: telemetry::Telemetry,
    /// Every operation's trust phase, as this node knows it.
    pub trust: trust::TrustBook,
    /// When calibrators were last refitted by the background pass.
    pub last_refit_ms: std::sync::atomic::AtomicI64,
    /// Exceptions raised from this time on are still to be checked against operations'
    /// `trust.critical` (`i64::MIN`: not yet this process).
    pub critical_checked_ms: std::sync::atomic::AtomicI64,
    /// Wakes the trust loop's critical-exception check (a committed write raised an
    /// exception), so that `trust.critical` demotes within moments, not at the next pass.
    pub exception_raised: Arc<Notify>,
    /// Each operation's reviews kept between trust passes.
    pub evidence: tokio::sync::Mutex<std::collections::HashMap<String, trust::CachedEvidence>>,
    pub work: mpsc::Sender<worker::Item>,
    pub in_flight: Arc<Semaphore>,
    pub http: reqwest::Client,
    /// Wakes the poller early (a signal made a case runnable).
    pub poke: Notify,
    /// Wakes the sequencer (new journal entries).
    pub journal_written: Notify,
    pub shutting_down: std::sync::atomic::AtomicBool,
    pub signer: keel_ledger::NoteSigner,
    pub origin: String,
    pub sequencer: Arc<tokio::sync::Mutex<sequencer::SequencerState>>,
    /// Case ids as they finish (completed or failed), for benchmarks and tests that wait.
    pub finished: tokio::sync::broadcast::Sender<String>,
}

/// A handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tasks: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Engine {
    /// Builds the engine over an open store and starts its services.
    pub async fn start(store: Store, options: Options, clock: Arc<dyn Clock>) -> Result<Engine> {
        let (signer, origin) = sequencer::load_or_create_key(&store, &options.data_dir).await?;
        let exception_raised = Arc::new(Notify::new());
        let (committer, committer_task) =
            committer::spawn(store.clone(), options.max_batch, exception_raised.clone());
        let (ai_log, ai_log_task) = ailog::spawn(store.clone());
        let (telemetry, exporter) = telemetry::Telemetry::new(&options.telemetry);
        if let Some(runtime) = &options.ai {
            preload_spend(&store, runtime, clock.now_ms()).await?;
            let loaded = learn::load_into_runtime(&store, runtime).await?;
            tracing::info!(learners = loaded, "stored learners loaded");
        }
        let (work_tx, work_rx) = mpsc::channel(options.max_in_flight.max(1));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Io(format!("cannot build the HTTP client: {error}")))?;
        let webhooks = webhooks::start(
            store.clone(),
            clock.clone(),
            options.node_id.clone(),
            options.webhooks.clone(),
        )
        .await?;
        let released = store.release_leases(&options.node_id).await?;
        if released > 0 {
            tracing::info!(
                released,
                "took back leases this node held before it stopped"
            );
        }
        let learning = options
            .ai
            .as_ref()
            .map_or_else(learn::LearningOptions::default, |ai| {
                learn::LearningOptions::from_config(&ai.config().learning)
            });
        let change_review = options
            .ai
            .as_ref()
            .is_none_or(|ai| ai.config().change_control.review);
        let inner = Arc::new(Inner {
            store: store.clone(),
            registry: Registry::load(&store).await?,
            clock,
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            options,
            committer,
            ai_log,
            webhooks,
            learners: learn::Learners::default(),
            learning,
            change_review,
            tokens: tokens::TokenCache::default(),
            telemetry,
            trust: trust::TrustBook::default(),
            last_refit_ms: std::sync::atomic::AtomicI64::new(0),
            critical_checked_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            exception_raised,
            evidence: tokio::sync::Mutex::default(),
            work: work_tx,
            http,
            poke: Notify::new(),
            journal_written: Notify::new(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            signer,
            origin,
            sequencer: Arc::default(),
            finished: tokio::sync::broadcast::channel(65_536).0,
        });
        trust::load(&inner).await?;
        calibration::load(&inner).await?;
        let tasks = vec![
            committer_task,
            ai_log_task,
            tokio::spawn(worker::dispatch(inner.clone(), work_rx)),
            tokio::spawn(worker::poll(inner.clone())),
            tokio::spawn(worker::sla_ticker(inner.clone())),
            tokio::spawn(desk::run(inner.clone())),
            tokio::spawn(trust::run(inner.clone())),
            tokio::spawn(trust::run_critical(inner.clone())),
            tokio::spawn(drift::run(inner.clone())),
            tokio::spawn(sequencer::run(inner.clone())),
            tokio::spawn(telemetry::run(inner.clone())),
        ];
        if let Some(runtime) = &inner.options.ai {
            runtime.observe(inner.telemetry.observer());
        }
        let tasks = tasks
            .into_iter()
            .chain(exporter.map(tokio::spawn))
            .collect();
        Ok(Engine {
            inner,
            tasks: Arc::new(tokio::sync::Mutex::new(tasks)),
        })
    }

    /// Case ids as cases finish on this node. A slow receiver may miss some (it is told it lagged).
    pub fn finished(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.finished.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The ledger's verifier key (`name+keyid+base64`), for auditors.
    pub fn verifier_key(&self) -> String {
        self.inner.signer.verifier_key()
    }

    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Deploys every `*.yaml`/`*.yml` workflow in `dir`; a changed file becomes a new version.
    pub async fn deploy_dir(&self, dir: &Path) -> Result<DeployReport> {
        let report = self
            .inner
            .registry
            .deploy_dir(
                &self.inner.store,
                dir,
                self.now_ms(),
                self.inner.change_review,
            )
            .await?;
        for deployed in &report.deployed {
            if deployed.status == registry::Status::Active {
                trust::on_deploy(&self.inner, &deployed.name, None).await?;
            } else if deployed.status == registry::Status::Pending && deployed.new {
                tracing::warn!(workflow = %deployed.name, version = deployed.version_no,
                    "the version changes what decides and waits for a governor: `keel workflow approve {} {} --reason …`; cases keep running on the version serving now",
                    deployed.name, deployed.version_no);
            }
        }
        Ok(report)
    }

    /// Deploys one workflow from source text (tests, benchmarks): (name, version number).
    /// A version that changes what decides is pending (see [`Engine::deploy`]).
    pub async fn deploy_source(&self, source: &str, file: &str) -> Result<(String, i64)> {
        let deployed = self.deploy(source, file).await?;
        Ok((deployed.name, deployed.version_no))
    }

    /// Deploys one workflow from source text and says how it entered service: `active`, or
    /// `pending` when it changes what decides and the deployment requires review.
    pub async fn deploy(&self, source: &str, file: &str) -> Result<registry::Deployed> {
        let deployed = self
            .inner
            .registry
            .deploy_source(
                &self.inner.store,
                source,
                file,
                self.now_ms(),
                self.inner.change_review,
            )
            .await?;
        if deployed.status == registry::Status::Active {
            trust::on_deploy(&self.inner, &deployed.name, None).await?;
        }
        Ok(deployed)
    }

    /// Validates and records a new case, then starts running it on this node.
    pub async fn submit(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Submitted> {
        self.submit_as(workflow, input, idempotency_key, None).await
    }

    /// Like [`Engine::submit`], recording who submitted (a token's subject): that person may
    /// not approve the case's tasks (four-eyes).
    pub async fn submit_as(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
        submitted_by: Option<String>,
    ) -> Result<Submitted> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        let (version_no, definition) = self
            .inner
            .registry
            .latest(workflow)
            .ok_or_else(|| Error::UnknownWorkflow(workflow.to_string()))?;
        let size = serde_json::to_vec(&input)
            .map(|bytes| bytes.len())
            .unwrap_or(usize::MAX);
        if size > MAX_INPUT_BYTES {
            return Err(Error::TooLarge {
                what: "case input",
                size,
                limit: MAX_INPUT_BYTES,
            });
        }
        definition
            .input_schema
            .validate(&input)
            .map_err(Error::InvalidInput)?;
        if let Some(key) = &idempotency_key {
            if let Some(existing) = self
                .inner
                .store
                .case_by_idempotency_key(workflow, key)
                .await?
            {
                return Ok(submitted_existing(existing));
            }
        }
        let now = self.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let mut state = CaseState::new(id.clone(), &definition, version_no, input, now);
        state.submitted_by = submitted_by;
        // Lease the case to this node in the same transaction if a worker slot is free, so it
        // runs at once; otherwise leave it to the poller.
        let permit = self.inner.work.clone().try_reserve_owned().ok();
        let lease_until = permit
            .as_ref()
            .map(|_| now + self.inner.options.lease.as_millis() as i64);
        let created = self.entry(
            &state,
            "case.created",
            None,
            json!({
                "workflow_version": version_no,
                "workflow_label": definition.version,
                "input": state.input,
                "idempotency_key": idempotency_key,
                "submitted_by": state.submitted_by,
            }),
            now,
        );
        let write = CaseWrite {
            case_id: id.clone(),
            workflow: workflow.to_string(),
            workflow_version: version_no,
            mode: WriteMode::Insert {
                idempotency_key: idempotency_key.clone(),
            },
            status: state.status.as_str().to_string(),
            current_step: state.step.clone(),
            state: serde_json::to_string(&state).map_err(|e| Error::CorruptState(e.to_string()))?,
            runnable_at_ms: Some(now),
            lease_owner: permit.as_ref().map(|_| self.inner.options.node_id.clone()),
            lease_until_ms: lease_until,
            sla_due_ms: state.next_sla_due(&definition),
            sla_breached: false,
            now_ms: now,
            entries: vec![created],
        };
        match self.inner.committer.commit(write).await? {
            WriteOutcome::Written { version } => {
                if let Some(permit) = permit {
                    permit.send(worker::Item {
                        state,
                        version,
                        input: keel_core::case::Input::Wake,
                    });
                }
                Ok(Submitted {
                    case_id: id,
                    workflow: workflow.to_string(),
                    workflow_version: version_no,
                    created: true,
                    status: Status::Running.as_str().to_string(),
                })
            }
            WriteOutcome::Conflict => {
                // Another submission with the same key won the race; return that one.
                let key = idempotency_key.unwrap_or_default();
                let existing = self
                    .inner
                    .store
                    .case_by_idempotency_key(workflow, &key)
                    .await?;
                existing.map(submitted_existing).ok_or(Error::Contended)
            }
        }
    }

    /// Delivers an external signal to a case. A case not yet waiting for it keeps it until it is.
    pub async fn signal(&self, case_id: &str, name: &str, payload: Value) -> Result<()> {
        let size = serde_json::to_vec(&payload)
            .map(|bytes| bytes.len())
            .unwrap_or(usize::MAX);
        if size > MAX_SIGNAL_BYTES {
            return Err(Error::TooLarge {
                what: "signal payload",
                size,
                limit: MAX_SIGNAL_BYTES,
            });
        }
        check_signal_name(name)?;
        for attempt in 0..20 {
            let row = self
                .inner
                .store
                .case(case_id)
                .await?
                .ok_or_else(|| Error::UnknownCase(case_id.to_string()))?;
            if attempt == 0 {
                self.check_signal_declared(&row, name)?;
            }
            let finished = serde_json::from_value::<Status>(Value::String(row.status.clone()))
                .is_ok_and(Status::is_final);
            if finished {
                return Err(Error::CaseFinished {
                    case_id: case_id.to_string(),
                    status: row.status,
                });
            }
            let input = keel_core::case::Input::Signal {
                name: name.to_string(),
                payload: payload.clone(),
            };
            match worker::apply_external(&self.inner, row, input).await? {
                WriteOutcome::Written { .. } => {
                    self.inner.poke.notify_one();
                    return Ok(());
                }
                WriteOutcome::Conflict => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        Err(Error::Contended)
    }

    /// Refuses a signal that no `wait` step of the case's workflow version declares: it would
    /// be journaled forever and never consumed.
    fn check_signal_declared(&self, row: &CaseRow, name: &str) -> Result<()> {
        let Some(workflow) = self
            .inner
            .registry
            .version(&row.workflow, row.workflow_version)
        else {
            // The worker reports a version it cannot load; the signal waits with the case.
            return Ok(());
        };
        let declared: Vec<&str> = workflow
            .steps
            .iter()
            .filter_map(|step| match &step.kind {
                keel_core::workflow::StepKind::Wait(keel_core::workflow::Wait::Signal {
                    name,
                    ..
                }) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        if declared.contains(&name) {
            return Ok(());
        }
        let expected = if declared.is_empty() {
            "it waits for no signal".to_string()
        } else {
            format!("it waits for {}", declared.join(", "))
        };
        Err(Error::UndeclaredSignal {
            workflow: row.workflow.clone(),
            version: row.workflow_version,
            name: name.to_string(),
            expected,
        })
    }

    pub async fn case(&self, id: &str) -> Result<CaseRow> {
        self.inner
            .store
            .case(id)
            .await?
            .ok_or_else(|| Error::UnknownCase(id.to_string()))
    }

    pub async fn timeline(&self, id: &str) -> Result<Vec<JournalRow>> {
        Ok(self.inner.store.timeline(id, 10_000).await?)
    }

    pub async fn cases(&self, filter: &CaseFilter) -> Result<Vec<CaseRow>> {
        Ok(self.inner.store.cases(filter).await?)
    }

    /// A journal entry for `state`'s case, with its data hash.
    pub(crate) fn entry(
        &self,
        state: &CaseState,
        kind: &str,
        step: Option<String>,
        data: Value,
        now_ms: i64,
    ) -> NewEntry {
        make_entry(state, kind, step, &data, now_ms)
    }

    /// Stops taking work, lets in-flight cases reach their next durable point (or leaves them
    /// resumable), flushes the committer and the sequencer, and returns.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let permits = self.inner.options.max_in_flight.max(1) as u32;
        let drained = tokio::time::timeout(
            grace,
            self.inner.in_flight.clone().acquire_many_owned(permits),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown grace period ended with cases in flight; they resume after restart"
            );
        }
        self.inner
            .webhooks
            .shutdown(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        self.inner.ai_log.flush().await;
        self.inner.telemetry.flush(Duration::from_secs(1)).await;
        // One last sequencer pass so the checkpoint covers everything written.
        if let Err(error) = sequencer::sequence_once(&self.inner, true).await {
            tracing::warn!(%error, "final sequencer pass failed; the next start finishes it");
        }
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
        }
        if let Err(error) = self
            .inner
            .store
            .release_leases(&self.inner.options.node_id)
            .await
        {
            tracing::warn!(%error, "could not release leases; they expire on their own");
        }
    }

    /// Records model calls that belong to no case (the gateway's): their `ai_calls` rows and
    /// journal entry are written in the background, in batches, in one transaction. Waits
    /// only when the queue is full.
    pub async fn record_ai_calls(
        &self,
        calls: Vec<keel_store::AiCallRow>,
        entry: Option<NewEntry>,
    ) {
        self.inner.ai_log.record(calls, entry).await;
    }

    /// False when the background queue of model-call records is near its bound (records or
    /// bytes): the gateway then refuses new calls with 503 rather than letting it grow.
    pub fn ai_call_log_has_room(&self) -> bool {
        self.inner.ai_log.has_room()
    }

    /// Like [`Engine::record_ai_calls`], but returns once they are committed.
    pub async fn record_ai_calls_durably(
        &self,
        calls: Vec<keel_store::AiCallRow>,
        entry: Option<NewEntry>,
    ) {
        self.inner.ai_log.record_durably(calls, entry).await;
    }

    /// The caller a presented API token secret stands for, or why it is refused.
    pub async fn authenticate(
        &self,
        secret: &str,
    ) -> Result<std::result::Result<tokens::Caller, tokens::Refusal>> {
        self.inner
            .tokens
            .authenticate(&self.inner.store, secret, self.now_ms())
            .await
    }

    /// Waits until every model call recorded so far is written.
    pub async fn flush_ai_calls(&self) {
        self.inner.ai_log.flush().await;
    }

    /// The AI runtime of `keel.toml`, when one was given.
    pub fn ai(&self) -> Option<&Arc<keel_ai::cascade::Runtime>> {
        self.inner.options.ai.as_ref()
    }

    /// Runs the sequencer now until every journal entry has a leaf and writes a checkpoint.
    pub async fn sequence_now(&self) -> Result<()> {
        sequencer::sequence_once(&self.inner, true).await
    }
}

/// Loads this month's known spend into the budgets, so that limits hold across restarts.
async fn preload_spend(
    store: &Store,
    runtime: &keel_ai::cascade::Runtime,
    now_ms: i64,
) -> Result<()> {
    let today = keel_core::case::millis_to_datetime(now_ms).date_naive();
    let first = today.format("%Y-%m-01").to_string();
    for row in store.ai_spend_since(&first).await? {
        let Ok(date) = chrono::NaiveDate::parse_from_str(&row.day, "%Y-%m-%d") else {
            continue;
        };
        runtime.budgets().preload(
            date,
            row.workflow.as_deref(),
            row.caller.as_deref(),
            row.cost_nano,
        );
    }
    Ok(())
}

fn submitted_existing(row: CaseRow) -> Submitted {
    Submitted {
        case_id: row.id,
        workflow: row.workflow,
        workflow_version: row.workflow_version,
        created: false,
        status: row.status,
    }
}

pub(crate) fn make_entry(
    state: &CaseState,
    kind: &str,
    step: Option<String>,
    data: &Value,
    now_ms: i64,
) -> NewEntry {
    let (data, data_sha256) = canonical_data(data);
    NewEntry {
        at: rfc3339_ms(now_ms),
        kind: kind.to_string(),
        actor_type: "system".into(),
        actor_id: "engine".into(),
        case_id: Some(state.id.clone()),
        workflow: Some(state.workflow.clone()),
        step,
        data,
        data_sha256,
    }
}

/// An entry's data as stored: its RFC 8785 canonical text, and the hex SHA-256 of that text
/// (which equals `keel_ledger::data_sha256` of the value). Storing the canonical bytes lets
/// `audit verify` check the commitment by hashing the stored text, without re-parsing it.
pub fn canonical_data(data: &Value) -> (String, String) {
    use sha2::Digest;
    let canonical = keel_ledger::jcs::canonicalize(data);
    let sha256 = hex::encode(sha2::Sha256::digest(&canonical));
    (String::from_utf8_lossy(&canonical).into_owned(), sha256)
}

/// `2026-11-27T16:36:11.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    keel_core::case::millis_to_datetime(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Looks up the workflow a stored case runs on.
pub(crate) fn workflow_of(inner: &Inner, state: &CaseState) -> Result<Arc<Workflow>> {
    inner
        .registry
        .version(&state.workflow, state.workflow_version)
        .ok_or_else(|| {
            Error::UnknownWorkflow(format!(
                "{} version {}",
                state.workflow, state.workflow_version
            ))
        })
}

/// A signal name as workflows write them: 1 to [`MAX_SIGNAL_NAME_CHARS`] lowercase ASCII
/// letters, digits, `-` and `_`.
pub fn check_signal_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SIGNAL_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        return Ok(());
    }
    Err(Error::InvalidRequest(format!(
        "a signal name is 1 to {MAX_SIGNAL_NAME_CHARS} characters of a-z, 0-9, `-` and `_`, as the workflow's `wait: {{ signal: … }}` writes it"
    )))
}
