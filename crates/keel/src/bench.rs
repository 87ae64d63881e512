//! `keel bench engine|ledger|learner|gateway`: measured figures, as a table or one JSON object (`--json`).
//! Nothing here asserts a timing; the numbers are for people and for the issue notes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_engine::{Engine, Options, SystemClock};
use keel_ledger::{Actor, Envelope, MemoryTree, Subject};
use keel_store::{NewEntry, Store};
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The reference workflow (validate → decide → switch → set → action → end) for N cases.
    Engine(EngineArgs),
    /// Journal appends, full verification and inclusion proofs at N entries.
    Ledger(LedgerArgs),
    /// The built-in learner on one thread: predictions/s and updates/s against the floors,
    /// and accuracy, log-loss and calibration (ECE) on every fifth example after training on
    /// the others.
    Learner(LearnerArgs),
    /// The latency the gateway adds to /v1/chat/completions (Keel minus direct) at fixed
    /// request rates, the highest rate sustained and RSS; `--litellm` measures LiteLLM too.
    Gateway(crate::bench_gateway::GatewayArgs),
    /// Tasks created and decided through the API by concurrent reviewers: decisions/s and
    /// decision latency.
    Review(crate::bench_review::ReviewArgs),
    /// One trust evaluation pass over N operations with M reviewed outcomes each (the
    /// statistics alone and the engine's whole pass on SQLite; floor < 1 s), then the monthly
    /// review over a generated month (`--report-cases`, default 1,000,000; floor < 30 s).
    Trust(crate::bench_trust::TrustArgs),
    /// The monthly operational review over a generated month of N cases (default 1,000,000):
    /// report time against the 30 s floor, and peak RSS.
    Report(crate::bench_report::ReportArgs),
}

#[derive(Args, Debug)]
pub struct LearnerArgs {
    /// Labelled texts, one {"text", "label"} object per line. Default
    /// examples/data/spam-sample.jsonl, or synthetic ~1 KB texts when that file is absent.
    #[arg(long)]
    pub jsonl: Option<std::path::PathBuf>,
    /// Seconds for each phase (learning, then predicting).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Number of cases.
    #[arg(long, default_value_t = 20_000)]
    pub cases: usize,
    /// Cases submitted at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Cases running at once in the engine.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// A PostgreSQL server URL; the benchmark creates (and drops) a fresh database on it.
    /// Default: a fresh SQLite file in a temporary directory.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LedgerArgs {
    /// Number of journal entries.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Entries per append transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Inclusion proofs to time.
    #[arg(long, default_value_t = 1_000)]
    pub proofs: usize,
    /// A PostgreSQL server URL (fresh database created and dropped); default SQLite in a temp dir.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    let (figures, json) = match command {
        BenchCommand::Engine(args) => (bench_engine(&args).await?, args.json),
        BenchCommand::Ledger(args) => (bench_ledger(&args).await?, args.json),
        BenchCommand::Learner(args) => return bench_learner(&args),
        BenchCommand::Gateway(args) => {
            (crate::bench_gateway::bench_gateway(&args).await?, args.json)
        }
        BenchCommand::Review(args) => (crate::bench_review::bench_review(&args).await?, args.json),
        BenchCommand::Trust(args) => (crate::bench_trust::bench_trust(&args).await?, args.json),
        BenchCommand::Report(args) => (crate::bench_report::bench_report(&args).await?, args.json),
    };
    print_figures(&figures, json);
    Ok(ExitCode::SUCCESS)
}

/// Ordered (name, value, unit) rows.
pub(crate) struct Figures {
    pub(crate) title: String,
    pub(crate) rows: Vec<(String, Value, String)>,
}

impl Figures {
    pub(crate) fn add(&mut self, name: &str, value: impl Into<Value>, unit: &str) {
        self.rows
            .push((name.to_string(), value.into(), unit.to_string()));
    }
}

fn print_figures(figures: &Figures, json: bool) {
    if json {
        let mut object = serde_json::Map::new();
        object.insert("benchmark".into(), json!(figures.title));
        for (name, value, _) in &figures.rows {
            object.insert(name.clone(), value.clone());
        }
        println!("{}", Value::Object(object));
        return;
    }
    println!("{}", figures.title);
    for (name, value, unit) in &figures.rows {
        let shown = match value {
            Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("  {name:<32} {shown:>16} {unit}");
    }
}

/// A database for one benchmark run: a temp SQLite file, or a fresh PostgreSQL database.
struct BenchDatabase {
    url: String,
    _dir: tempfile::TempDir,
    postgres_admin: Option<(String, String)>,
}

impl BenchDatabase {
    async fn create(postgres: Option<&str>) -> anyhow::Result<BenchDatabase> {
        let dir = tempfile::tempdir()?;
        let Some(admin_url) = postgres else {
            let url = dir.path().join("bench.sqlite").display().to_string();
            return Ok(BenchDatabase {
                url,
                _dir: dir,
                postgres_admin: None,
            });
        };
        let name = format!("keel_bench_{}", std::process::id());
        let admin = sqlx_admin(
            admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await;
        admin.and(sqlx_admin(admin_url, &format!("CREATE DATABASE {name}")).await)?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(BenchDatabase {
            url: format!("{base}/{name}"),
            _dir: dir,
            postgres_admin: Some((admin_url.to_string(), name)),
        })
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().to_path_buf()
    }

    async fn size_bytes(&self, store: &Store) -> u64 {
        if let Some((_, name)) = &self.postgres_admin {
            return store.postgres_database_size(name).await.unwrap_or(0);
        }
        ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", self.url)).ok())
            .map(|m| m.len())
            .sum()
    }

    async fn drop_database(&self) {
        if let Some((admin, name)) = &self.postgres_admin {
            let _ = sqlx_admin(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    }
}

/// Runs one administrative statement (CREATE/DROP DATABASE) with a fixed, generated name.
async fn sqlx_admin(url: &str, statement: &str) -> anyhow::Result<()> {
    Store::admin_execute(url, statement)
        .await
        .with_context(|| format!("`{statement}` failed on {url}"))
}

/// The downstream system of the reference workflow: answers every action, counts keys.
async fn spawn_downstream() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/act",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({ "accepted": true, "reference": "R-1" }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{address}/act"), hits))
}

fn bench_input(i: usize, callback: &str) -> Value {
    json!({
        "id": format!("INV-{i:07}"),
        // Below the review threshold, so that every case takes the whole path including the action.
        "amount": (i % 1_000) as f64 + 0.5,
        "vendor_trusted": !i.is_multiple_of(3),
        "callback": callback,
    })
}

async fn bench_engine(args: &EngineArgs) -> anyhow::Result<Figures> {
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    let store = Store::open(&database.url).await?;
    let options = Options {
        node_id: "bench".into(),
        max_in_flight: args.max_in_flight,
        data_dir: database.data_dir(),
        ..Options::default()
    };
    let engine = Engine::start(store.clone(), options, Arc::new(SystemClock)).await?;
    engine
        .deploy_source(keel_core::workflow::BENCH_WORKFLOW_YAML, "bench.yaml")
        .await?;
    let (callback, hits) = spawn_downstream().await?;

    let submitted_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut finished = engine.finished();
    let total = args.cases;
    let bar = progress(total as u64, "cases");
    let collector = {
        let submitted_at = submitted_at.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity(total);
            let mut pending: Vec<String> = Vec::new();
            while latencies_us.len() < total {
                let id = match tokio::time::timeout(Duration::from_secs(60), finished.recv()).await
                {
                    Ok(Ok(id)) => id,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    _ => break,
                };
                pending.push(id);
                let Ok(map) = submitted_at.lock() else { break };
                pending.retain(|id| match map.get(id) {
                    Some(start) => {
                        latencies_us.push(start.elapsed().as_micros() as u64);
                        bar.inc(1);
                        false
                    }
                    None => true,
                });
            }
            latencies_us
        })
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (engine, next, callback, submitted_at) = (
            engine.clone(),
            next.clone(),
            callback.clone(),
            submitted_at.clone(),
        );
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let begin = Instant::now();
                let submitted = engine
                    .submit("bench-reference", bench_input(i, &callback), None)
                    .await?;
                if let Ok(mut map) = submitted_at.lock() {
                    map.insert(submitted.case_id, begin);
                }
            }
        });
    }
    while let Some(result) = submitters.join_next().await {
        result??;
    }
    let submit_s = started.elapsed().as_secs_f64();
    let mut latencies = collector.await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    engine.sequence_now().await?;
    let entries = store.journal_count().await?;
    let counts = store.case_counts().await?;
    let completed = counts
        .iter()
        .find(|(status, _)| status == "completed")
        .map_or(0, |(_, n)| *n);
    let size = database.size_bytes(&store).await;
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    database.drop_database().await;

    latencies.sort_unstable();
    let mut figures = Figures {
        title: format!("keel bench engine ({} backend)", store.backend_name()),
        rows: Vec::new(),
    };
    figures.add("backend", store.backend_name(), "");
    figures.add("cases", total as u64, "");
    figures.add("cases_completed", completed, "");
    figures.add("actions_received", hits.load(Ordering::Relaxed), "");
    figures.add("concurrency", args.concurrency as u64, "submitters");
    figures.add("elapsed_s", elapsed_s, "s");
    figures.add("submit_phase_s", submit_s, "s");
    figures.add("cases_per_s", completed as f64 / elapsed_s, "cases/s");
    figures.add("journal_entries", entries, "");
    figures.add(
        "journal_entries_per_s",
        entries as f64 / elapsed_s,
        "entries/s",
    );
    figures.add(
        "latency_p50_ms",
        percentile(&latencies, 0.50) as f64 / 1000.0,
        "ms (submit to complete)",
    );
    figures.add(
        "latency_p99_ms",
        percentile(&latencies, 0.99) as f64 / 1000.0,
        "ms (submit to complete)",
    );
    figures.add("peak_rss_mib", peak_rss_kib() as f64 / 1024.0, "MiB");
    figures.add(
        "database_bytes_per_case",
        size / (total.max(1) as u64),
        "bytes",
    );
    Ok(figures)
}

pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Peak resident set size of this process (VmHWM), in KiB; 0 where /proc is missing.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|kib| kib.parse().ok())
                })
        })
        .unwrap_or(0)
}

pub(crate) fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template =
        format!("{{spinner}} {{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn bench_entry(i: usize) -> NewEntry {
    let data = json!({ "step": "route", "output": { "approver": "clerk", "amount": i, "note": "benchmark entry" } });
    let (data, data_sha256) = keel_engine::canonical_data(&data);
    NewEntry {
        at: keel_engine::rfc3339_ms(1_764_000_000_000 + i as i64),
        kind: "step.completed".into(),
        actor_type: "system".into(),
        actor_id: "bench".into(),
        case_id: Some(format!("case-{:08}", i / 8)),
        workflow: Some("bench-reference".into()),
        step: Some("route".into()),
        data_sha256,
        data,
    }
}

async fn bench_ledger(args: &LedgerArgs) -> anyhow::Result<Figures> {
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    let store = Store::open(&database.url).await?;
    let total = args.entries;

    // 1. Appends: journal rows in batched transactions, as the group committer writes them.
    let bar = progress(total as u64, "entries appended");
    let mut append_s = 0.0;
    let mut start = 0;
    while start < total {
        let end = (start + args.batch.max(1)).min(total);
        let batch: Vec<NewEntry> = (start..end).map(bench_entry).collect();
        let began = Instant::now();
        store.append(&batch).await?;
        append_s += began.elapsed().as_secs_f64();
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();

    // 2. Sequencing: leaf hashes, tree nodes, a signed checkpoint.
    let options = Options {
        node_id: "bench".into(),
        data_dir: database.data_dir(),
        ..Options::default()
    };
    let began = Instant::now();
    let engine = Engine::start(store.clone(), options, Arc::new(SystemClock)).await?;
    engine.sequence_now().await?;
    let sequence_s = began.elapsed().as_secs_f64();

    // 3. Full verification from the database: every data hash, leaf hash, the tree, checkpoints.
    let key = engine.verifier_key();
    let bar = progress(total as u64, "entries verified");
    let began = Instant::now();
    let report = keel_engine::audit::verify(&store, &key, &mut |done, all| {
        bar.set_length(all);
        bar.set_position(done);
    })
    .await?;
    let verify_s = began.elapsed().as_secs_f64();
    bar.finish_and_clear();
    anyhow::ensure!(
        report.ok,
        "verification failed on untouched data: {:?}",
        report.findings.first()
    );

    // 4. Recomputation alone, in memory: envelope → leaf hash → tree (what verify costs without the database).
    let envelopes: Vec<Envelope> = (0..total)
        .map(|i| {
            let entry = bench_entry(i);
            Envelope {
                seq: i as i64 + 1,
                at: entry.at,
                kind: entry.kind,
                actor: Actor {
                    actor_type: entry.actor_type,
                    id: entry.actor_id,
                },
                subject: Subject {
                    case: entry.case_id,
                    workflow: entry.workflow,
                    step: entry.step,
                    ..Subject::default()
                },
                data_sha256: entry.data_sha256,
            }
        })
        .collect();
    let began = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = envelopes.len().div_ceil(threads).max(1);
    let leaves: Vec<keel_ledger::Hash> = std::thread::scope(|scope| {
        let handles: Vec<_> = envelopes
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(Envelope::leaf_hash).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    let mut tree = MemoryTree::new();
    for leaf in leaves {
        tree.push(leaf);
    }
    let memory_verify_s = began.elapsed().as_secs_f64();

    // 5. Inclusion proofs against the latest checkpoint, from the database.
    let mut proof_us = Vec::with_capacity(args.proofs);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..args.proofs {
        let index = rng.u64(0..total as u64);
        let began = Instant::now();
        let document = keel_engine::audit::inclusion(&store, index, None).await?;
        proof_us.push(began.elapsed().as_micros() as u64);
        if proof_us.len() == 1 {
            document
                .check(&key)
                .map_err(|error| anyhow::anyhow!("a served proof does not verify: {error}"))?;
        }
    }
    proof_us.sort_unstable();
    let began = Instant::now();
    let memory_proofs = 10_000u64;
    for i in 0..memory_proofs {
        let _ = keel_ledger::inclusion_proof(i * 97 % total as u64, total as u64, &tree);
    }
    let memory_proof_us = began.elapsed().as_secs_f64() * 1e6 / memory_proofs as f64;

    let size = database.size_bytes(&store).await;
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    database.drop_database().await;

    let mut figures = Figures {
        title: format!("keel bench ledger ({} backend)", store.backend_name()),
        rows: Vec::new(),
    };
    figures.add("backend", store.backend_name(), "");
    figures.add("entries", total as u64, "");
    figures.add(
        "append_per_s",
        total as f64 / append_s,
        "entries/s (batches of --batch)",
    );
    figures.add(
        "sequence_per_s",
        total as f64 / sequence_s,
        "entries/s (leaf + tree + checkpoint)",
    );
    figures.add(
        "verify_db_per_s",
        total as f64 / verify_s,
        "entries/s (read + data hash + leaf + tree + checkpoints)",
    );
    figures.add(
        "verify_memory_per_s",
        total as f64 / memory_verify_s,
        "entries/s (leaf hashes on all cores + tree, no IO)",
    );
    figures.add(
        "proof_db_p50_ms",
        percentile(&proof_us, 0.5) as f64 / 1000.0,
        "ms (inclusion proof from the database)",
    );
    figures.add(
        "proof_db_p99_ms",
        percentile(&proof_us, 0.99) as f64 / 1000.0,
        "ms",
    );
    figures.add(
        "proof_memory_us",
        memory_proof_us,
        "µs (inclusion proof, in memory)",
    );
    figures.add(
        "database_bytes_per_entry",
        size / total.max(1) as u64,
        "bytes",
    );
    figures.add("peak_rss_mib", peak_rss_kib() as f64 / 1024.0, "MiB");
    Ok(figures)
}

/// Floors the learner must beat on one thread (issue targets).
const PREDICTIONS_FLOOR: f64 = 50_000.0;
const UPDATES_FLOOR: f64 = 10_000.0;

fn bench_learner(args: &LearnerArgs) -> anyhow::Result<ExitCode> {
    let default = std::path::Path::new("examples/data/spam-sample.jsonl");
    let (examples, source) = match &args.jsonl {
        Some(path) => (
            crate::learner::read_examples(path)?,
            path.display().to_string(),
        ),
        None if default.exists() => (
            crate::learner::read_examples(default)?,
            default.display().to_string(),
        ),
        None => (synthetic_examples(), "synthetic ~1 KB texts".to_string()),
    };
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        anyhow::bail!("--seconds must be a positive number");
    }
    let limits = keel_ai::learner::BenchLimits {
        max_duration: Duration::from_secs_f64(args.seconds),
        ..keel_ai::learner::BenchLimits::default()
    };
    let report = keel_ai::learner::bench(
        &examples,
        keel_ai::learner::LearnerOptions::default(),
        limits,
    )?;
    let meets =
        report.predictions_per_s >= PREDICTIONS_FLOOR && report.updates_per_s >= UPDATES_FLOOR;
    if args.json {
        let mut object = serde_json::to_value(&report)?;
        if let Value::Object(map) = &mut object {
            map.insert("benchmark".into(), json!("learner"));
            map.insert("source".into(), json!(source));
            map.insert("predictions_per_s_floor".into(), json!(PREDICTIONS_FLOOR));
            map.insert("updates_per_s_floor".into(), json!(UPDATES_FLOOR));
            map.insert("meets_floors".into(), json!(meets));
        }
        println!("{object}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "learner (one thread, {} examples from {source}, {} classes)",
        report.examples, report.classes
    );
    println!("  {:<24} {:>16} {:>16}", "figure", "measured", "floor");
    let rows = [
        (
            "predictions/s",
            format!("{:.0}", report.predictions_per_s),
            format!("{PREDICTIONS_FLOOR:.0}"),
        ),
        (
            "updates/s",
            format!("{:.0}", report.updates_per_s),
            format!("{UPDATES_FLOOR:.0}"),
        ),
        (
            "mean text bytes",
            format!("{:.0}", report.mean_text_bytes),
            "-".to_string(),
        ),
        (
            "model bytes",
            report.model_bytes.to_string(),
            "-".to_string(),
        ),
        (
            "test examples",
            report.test_examples.to_string(),
            "-".to_string(),
        ),
        (
            "test accuracy",
            format!("{:.4}", report.test_accuracy),
            "-".to_string(),
        ),
        (
            "test log loss",
            format!("{:.4}", report.test_log_loss),
            "-".to_string(),
        ),
        (
            "test ECE (10 bins)",
            format!("{:.4}", report.test_ece),
            "-".to_string(),
        ),
        (
            "temperature",
            format!("{:.3}", report.temperature),
            "-".to_string(),
        ),
    ];
    for (name, measured, floor) in rows {
        println!("  {name:<24} {measured:>16} {floor:>16}");
    }
    println!("  floors {}", if meets { "met" } else { "NOT met" });
    Ok(ExitCode::SUCCESS)
}

/// Synthetic labelled texts of about 1 KB each, two classes, deterministic.
fn synthetic_examples() -> Vec<(String, String)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let words = [
        [
            "invoice", "payment", "meeting", "report", "schedule", "project", "review", "budget",
        ],
        [
            "winner", "free", "credit", "offer", "click", "prize", "cheap", "urgent",
        ],
    ];
    (0..400)
        .map(|i| {
            let class = i % 2;
            let mut text = String::with_capacity(1100);
            while text.len() < 1000 {
                let pool = if rng.u8(0..10) < 7 { class } else { 1 - class };
                text.push_str(words[pool][rng.usize(0..8)]);
                text.push(' ');
            }
            (text, if class == 0 { "ham" } else { "spam" }.to_string())
        })
        .collect()
}
