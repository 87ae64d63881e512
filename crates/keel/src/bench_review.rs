//! `keel bench review`: tasks created and decided through the HTTP API by concurrent reviewers.
//! An in-process `keel` (engine, SQLite, HTTP server on port 0) runs a workflow whose one
//! approval step makes a task per case; cases are submitted over HTTP, then reviewers (each
//! with their own user and token) list the open tasks and approve them concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use keel_engine::{Engine, Options, SystemClock};
use keel_store::{Store, TaskFilter};
use serde_json::{json, Value};

use crate::bench::{percentile, progress, Figures};

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// Tasks to create and decide.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Reviewers deciding at once, each as a different user.
    #[arg(long, default_value_t = 20)]
    pub reviewers: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

const REVIEW_WORKFLOW: &str = r#"
name: review-bench
version: "1"
input:
  schema:
    type: object
    required: [amount]
    properties: { amount: { type: number } }
steps:
  - id: sign_off
    approval:
      title: Approve the payment
      roles: [reviewer]
      limit: "double(input.amount)"
  - id: done
    end: { outcome: approved }
"#;

pub async fn bench_review(args: &ReviewArgs) -> anyhow::Result<Figures> {
    if args.tasks == 0 || args.reviewers == 0 {
        bail!("--tasks and --reviewers must be positive");
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("keel.sqlite").display().to_string()).await?;
    let options = Options {
        node_id: "bench".into(),
        data_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    let engine = Engine::start(store.clone(), options, Arc::new(SystemClock)).await?;
    engine
        .deploy_source(REVIEW_WORKFLOW, "review-bench.yaml")
        .await?;
    let (submitter, _) = keel_engine::tokens::create_token(
        &store,
        "submitter",
        "submitter",
        &["operator".into()],
        None,
        0,
    )
    .await?;
    let mut reviewer_tokens = Vec::new();
    for i in 0..args.reviewers {
        let name = format!("reviewer-{i}");
        keel_engine::tasks::add_user(&store, &name, &["reviewer".into()], Some(1e9), 0).await?;
        let (secret, _) =
            keel_engine::tokens::create_token(&store, &name, &name, &[], None, 0).await?;
        reviewer_tokens.push(secret);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server_engine = engine.clone();
    tokio::spawn(async move {
        keel_server::serve(
            listener,
            server_engine,
            keel_server::ServerOptions::default(),
            std::future::pending(),
        )
        .await
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;

    // Create: submit every case over HTTP (64 at once), then wait for every task to be open.
    let created_started = Instant::now();
    let bar = progress(args.tasks as u64, "cases submitted");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..64 {
        let (client, base, token, next, bar, total) = (
            client.clone(),
            base.clone(),
            submitter.clone(),
            next.clone(),
            bar.clone(),
            args.tasks,
        );
        submitters.push(tokio::spawn(async move {
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return errors;
                }
                let ok = client
                    .post(format!("{base}/v1/workflows/review-bench/cases"))
                    .bearer_auth(&token)
                    .json(&json!({"amount": (i % 5_000) as f64}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                errors += usize::from(!ok);
                bar.inc(1);
            }
        }));
    }
    let mut submit_errors = 0;
    for task in submitters {
        submit_errors += task.await.unwrap_or(1);
    }
    bar.finish_and_clear();
    let open = wait_for_open_tasks(&store, args.tasks).await?;
    let created_s = created_started.elapsed().as_secs_f64();

    // Decide: reviewers share the open tasks and approve them concurrently.
    let queue: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(std::sync::Mutex::new(open));
    let bar = progress(args.tasks as u64, "decisions");
    let decide_started = Instant::now();
    let mut reviewers = Vec::new();
    for token in reviewer_tokens {
        let (client, base, queue, bar) = (client.clone(), base.clone(), queue.clone(), bar.clone());
        reviewers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0usize;
            loop {
                let Some(id) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return (latencies_us, errors);
                };
                let started = Instant::now();
                let response = client
                    .post(format!("{base}/v1/tasks/{id}/decision"))
                    .bearer_auth(&token)
                    .json(&json!({"decision": "approve"}))
                    .send()
                    .await;
                let ok = match response {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        ok && body["result"] == "approved"
                    }
                    Err(_) => false,
                };
                latencies_us.push(started.elapsed().as_micros() as u64);
                errors += usize::from(!ok);
                bar.inc(1);
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut decision_errors = 0;
    for reviewer in reviewers {
        let (mut mine, errors) = reviewer.await.unwrap_or_default();
        latencies.append(&mut mine);
        decision_errors += errors;
    }
    let decide_s = decide_started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    latencies.sort_unstable();
    let approved = store
        .tasks(&TaskFilter {
            status: Some("approved".into()),
            limit: keel_store::MAX_PAGE,
            ..TaskFilter::default()
        })
        .await?
        .len();
    engine.shutdown(Duration::from_secs(10)).await;

    let mut figures = Figures {
        title: format!(
            "keel bench review: {} tasks created and decided through the HTTP API by {} reviewers (SQLite)",
            args.tasks, args.reviewers
        ),
        rows: Vec::new(),
    };
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    figures.add("tasks", args.tasks as u64, "");
    figures.add(
        "created_per_s",
        (args.tasks as f64 / created_s).round(),
        "tasks/s",
    );
    figures.add("submit_errors", submit_errors as u64, "");
    figures.add(
        "decisions_per_s",
        (latencies.len() as f64 / decide_s).round(),
        "decisions/s",
    );
    figures.add("decision_p50_ms", ms(percentile(&latencies, 0.50)), "ms");
    figures.add("decision_p99_ms", ms(percentile(&latencies, 0.99)), "ms");
    figures.add(
        "decision_max_ms",
        ms(latencies.last().copied().unwrap_or(0)),
        "ms",
    );
    figures.add("decision_errors", decision_errors as u64, "");
    figures.add(
        "approved_tasks_sampled",
        approved as u64,
        "(first page, ≤ 1,000)",
    );
    Ok(figures)
}

/// The ids of the open tasks once there are `expected` of them (bounded wait).
async fn wait_for_open_tasks(store: &Store, expected: usize) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ids = store.open_task_ids(expected as i64).await?;
        if ids.len() >= expected {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} tasks opened within 5 minutes",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
