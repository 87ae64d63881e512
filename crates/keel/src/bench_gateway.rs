//! `keel bench gateway`: the latency Keel's gateway adds to `/v1/chat/completions`.
//!
//! A mock upstream speaking OpenAI's wire format runs in this process; a real `keel serve`
//! runs as a child process (its own data directory, SQLite, journaling on) in front of it.
//! At each rate the same open-loop load goes first straight to the upstream and then through
//! Keel; the overhead at a percentile is Keel's latency minus the direct latency at that
//! percentile. With `--litellm` the LiteLLM proxy (bench/peers/litellm) is measured the same
//! way in the same run. Nothing here asserts a timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Request rates to measure, per second.
    #[arg(long, value_delimiter = ',', default_value = "200,1000,2000")]
    pub rates: Vec<u32>,
    /// Seconds of load per rate and target (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// After the fixed rates, keep doubling the rate while Keel sustains it, to find the
    /// highest rate sustained (at least 95% of the offered rate, under 0.1% errors).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub find_max: bool,
    /// Also measure the LiteLLM proxy (pinned 1.80.0, started by bench/peers/litellm/run.sh;
    /// the first run installs it into a cached venv, about 90 s).
    #[arg(long)]
    pub litellm: bool,
    /// Run Keel with `[gateway] durable_journal = true`: each call is answered only after its
    /// journal entry is committed.
    #[arg(long)]
    pub durable_journal: bool,
    /// Milliseconds the mock upstream waits before answering.
    #[arg(long, default_value_t = 0)]
    pub upstream_delay_ms: u64,
    /// Seconds to wait after the overload stage (the search for the highest rate) before
    /// reading Keel's resident memory again: memory freed after a load should return to the OS.
    #[arg(long, default_value_t = 60)]
    pub settle_seconds: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one phase of load measured.
#[derive(Debug, Clone)]
struct Phase {
    /// Latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
    sent: usize,
    errors: usize,
    achieved_rps: f64,
}

impl Phase {
    fn pct(&self, q: f64) -> f64 {
        crate::bench::percentile(&self.latencies_us, q) as f64 / 1000.0
    }

    fn sustained(&self, rate: u32) -> bool {
        self.achieved_rps >= 0.95 * f64::from(rate)
            && (self.errors as f64) <= 0.001 * self.sent as f64
    }
}

const QUANTILES: [(&str, f64); 3] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)];

fn request_body() -> Value {
    json!({
        "model": "mock",
        "messages": [
            {"role": "system", "content": "Classify the email as spam or ham. Answer with JSON."},
            {"role": "user", "content": "Subject: invoice 4411 overdue\n\nDear customer, your invoice 4411 for 1,250.00 EUR is overdue. Please pay by Friday."}
        ],
        "max_tokens": 16
    })
}

/// The mock upstream: a fixed chat completion (or stream) shaped like OpenAI's.
async fn spawn_upstream(delay_ms: u64) -> anyhow::Result<SocketAddr> {
    let completion = Bytes::from(
        json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1741569952,
            "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"label\": \"ham\"}", "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 6, "total_tokens": 48,
                "prompt_tokens_details": {"cached_tokens": 0}},
            "system_fingerprint": "fp_bench"
        })
        .to_string(),
    );
    let handler = move || {
        let completion = completion.clone();
        async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            ([("content-type", "application/json")], completion)
        }
    };
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(handler.clone()))
        .route("/chat/completions", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(address)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A child process killed when dropped.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

impl Child {
    fn pid(&self) -> Option<u32> {
        self.0.id()
    }
}

/// Samples the resident set size of `pid` every 100 ms until the returned sender is dropped or
/// used; the task's result is the highest VmRSS seen, in KiB.
fn sample_rss(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut highest = 0;
        loop {
            highest = highest.max(rss_kib(pid).1);
            tokio::select! {
                _ = &mut stopped => return highest.max(rss_kib(pid).1),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    (stop, sampler)
}

/// (peak, current) resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn wait_ready(client: &reqwest::Client, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer within {} s", timeout.as_secs())
}

/// Starts `keel serve` in front of the upstream; returns the child, its base URL, a token and
/// the data directory.
async fn start_keel(
    upstream: SocketAddr,
    dir: &Path,
    durable_journal: bool,
) -> anyhow::Result<(Child, String, String)> {
    let data = dir.join("data");
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&workflows)?;
    let config = dir.join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "[models.mock]\nprovider = \"openai\"\nbase_url = \"http://{upstream}/v1\"\nmodel = \"mock\"\nmax_concurrency = 4096\nmax_retries = 0\ntimeout_s = 30\n[models.mock.price]\ninput = 0.15\noutput = 0.60\neffective = \"2024-07-18\"\n\n[cache]\nenabled = false\n\n[gateway]\ndurable_journal = {durable_journal}\n"
        ),
    )?;
    let store = keel_store::Store::open(&data.join("keel.sqlite").display().to_string()).await?;
    let (token, _) =
        keel_engine::tokens::create_token(&store, "bench", "bench", &["gateway".into()], None, 0)
            .await?;
    store.close().await;
    let port = free_port()?;
    let exe = std::env::current_exe().context("cannot find the keel executable")?;
    let child = tokio::process::Command::new(exe)
        .args(["--log", "warn", "serve", "--no-sandbox", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--workflows")
        .arg(&workflows)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start keel serve")?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(
        &reqwest::Client::new(),
        &format!("{base}/readyz"),
        Duration::from_secs(30),
    )
    .await?;
    Ok((Child(child), base, token))
}

/// Starts the LiteLLM proxy in front of the upstream.
async fn start_litellm(upstream: SocketAddr) -> anyhow::Result<(Child, String)> {
    let script = PathBuf::from("bench/peers/litellm/run.sh");
    if !script.exists() {
        bail!("bench/peers/litellm/run.sh not found: run `keel bench gateway --litellm` from the repository root");
    }
    let port = free_port()?;
    let child = tokio::process::Command::new("bash")
        .arg(&script)
        .env("UPSTREAM_PORT", upstream.port().to_string())
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .context("cannot start the LiteLLM proxy")?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(
        &reqwest::Client::new(),
        &format!("{base}/health/liveliness"),
        Duration::from_secs(600),
    )
    .await
    .context("LiteLLM did not start")?;
    Ok((Child(child), base))
}

/// Open-loop load: requests start on schedule at `rate` per second for `seconds`, whether or
/// not earlier ones have finished.
async fn load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Bytes,
    rate: u32,
    seconds: f64,
    bar: Option<&indicatif::ProgressBar>,
) -> Phase {
    let total = (f64::from(rate) * seconds).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match request.send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    ok && response.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            (sent.elapsed().as_micros() as u64, ok)
        }));
        if let Some(bar) = bar {
            bar.inc(1);
        }
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok((latency, true)) => latencies.push(latency),
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Phase {
        achieved_rps: latencies.len() as f64 / elapsed,
        latencies_us: latencies,
        sent: total,
        errors,
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(8192)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Direct and proxied phases at one rate.
async fn measure(
    target: &str,
    proxied_url: &str,
    token: Option<&str>,
    direct_url: &str,
    rate: u32,
    seconds: f64,
) -> anyhow::Result<(Phase, Phase)> {
    let body = Bytes::from(request_body().to_string());
    let direct_client = client()?;
    let proxied_client = client()?;
    let bar = crate::bench::progress(
        (f64::from(rate) * (seconds * 2.0 + 2.0)) as u64,
        &format!("requests ({target} at {rate}/s)"),
    );
    // Warm-up: open connections on both paths.
    let warm = seconds.min(1.0);
    load(
        &direct_client,
        direct_url,
        None,
        &body,
        rate,
        warm,
        Some(&bar),
    )
    .await;
    load(
        &proxied_client,
        proxied_url,
        token,
        &body,
        rate,
        warm,
        Some(&bar),
    )
    .await;
    let direct = load(
        &direct_client,
        direct_url,
        None,
        &body,
        rate,
        seconds,
        Some(&bar),
    )
    .await;
    let proxied = load(
        &proxied_client,
        proxied_url,
        token,
        &body,
        rate,
        seconds,
        Some(&bar),
    )
    .await;
    bar.finish_and_clear();
    Ok((direct, proxied))
}

fn add_rate_rows(
    figures: &mut crate::bench::Figures,
    prefix: &str,
    rate: u32,
    direct: &Phase,
    proxied: &Phase,
) {
    for (name, q) in QUANTILES {
        figures.add(
            &format!("{prefix}_{rate}_overhead_{name}_ms"),
            round3(proxied.pct(q) - direct.pct(q)),
            "ms",
        );
    }
    figures.add(
        &format!("{prefix}_{rate}_latency_p50_ms"),
        round3(proxied.pct(0.5)),
        "ms",
    );
    figures.add(
        &format!("{prefix}_{rate}_latency_p99_ms"),
        round3(proxied.pct(0.99)),
        "ms",
    );
    figures.add(
        &format!("{prefix}_{rate}_direct_p99_ms"),
        round3(direct.pct(0.99)),
        "ms",
    );
    figures.add(
        &format!("{prefix}_{rate}_achieved_rps"),
        round3(proxied.achieved_rps),
        "req/s",
    );
    figures.add(
        &format!("{prefix}_{rate}_errors"),
        proxied.errors as u64,
        "",
    );
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub async fn bench_gateway(args: &GatewayArgs) -> anyhow::Result<crate::bench::Figures> {
    if args.rates.is_empty() || args.rates.contains(&0) {
        bail!("--rates needs positive request rates, e.g. --rates 200,1000,2000");
    }
    let upstream = spawn_upstream(args.upstream_delay_ms).await?;
    let direct_url = format!("http://{upstream}/v1/chat/completions");
    let dir = tempfile::tempdir()?;
    let (keel, keel_base, token) = start_keel(upstream, dir.path(), args.durable_journal).await?;
    let keel_url = format!("{keel_base}/v1/chat/completions");
    let mut figures = crate::bench::Figures {
        title: format!(
            "keel bench gateway: /v1/chat/completions overhead over a local mock upstream ({} s per rate, journal {}, SQLite)",
            args.seconds,
            if args.durable_journal { "durable (answer after commit)" } else { "written in the background" }
        ),
        rows: Vec::new(),
    };
    let mut keel_results = Vec::new();
    let mut highest = 0;
    let mut served_ok = 0usize;
    for &rate in &args.rates {
        let (direct, proxied) = measure(
            "keel",
            &keel_url,
            Some(&token),
            &direct_url,
            rate,
            args.seconds,
        )
        .await?;
        if proxied.sustained(rate) {
            highest = highest.max(rate);
        }
        served_ok += proxied.latencies_us.len();
        add_rate_rows(&mut figures, "keel", rate, &direct, &proxied);
        keel_results.push((rate, direct, proxied));
    }
    let (fixed_peak_kib, _) = keel.pid().map(rss_kib).unwrap_or((0, 0));
    figures.add(
        "keel_peak_rss_mib_at_fixed_rates",
        round3(fixed_peak_kib as f64 / 1024.0),
        "MiB",
    );
    // The overload stage: the search for the highest rate ends at a rate Keel cannot sustain.
    let sampler = keel.pid().map(sample_rss);
    if args.find_max {
        let mut rate = args.rates.iter().copied().max().unwrap_or(1000) * 2;
        while rate <= 64_000 {
            let (_, proxied) = measure(
                "keel",
                &keel_url,
                Some(&token),
                &direct_url,
                rate,
                args.seconds.min(3.0),
            )
            .await?;
            served_ok += proxied.latencies_us.len();
            if !proxied.sustained(rate) {
                break;
            }
            highest = highest.max(rate);
            rate *= 2;
        }
    }
    figures.add("keel_highest_rate_sustained", highest, "req/s");
    let overload_peak_kib = match sampler {
        Some((stop, sampler)) => {
            let _ = stop.send(());
            sampler.await.unwrap_or(0)
        }
        None => 0,
    };
    let (peak_kib, current_kib) = keel.pid().map(rss_kib).unwrap_or((0, 0));
    figures.add(
        "keel_rss_peak_mib_during_overload",
        round3(overload_peak_kib as f64 / 1024.0),
        "MiB",
    );
    figures.add(
        "keel_peak_rss_mib_overall",
        round3(peak_kib as f64 / 1024.0),
        "MiB",
    );
    figures.add(
        "keel_rss_after_mib",
        round3(current_kib as f64 / 1024.0),
        "MiB",
    );
    if args.settle_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        let (_, settled_kib) = keel.pid().map(rss_kib).unwrap_or((0, 0));
        figures.add(
            &format!("keel_rss_mib_{}s_after_overload", args.settle_seconds),
            round3(settled_kib as f64 / 1024.0),
            "MiB",
        );
    }
    // Stop Keel (SIGKILL: what was acknowledged must already be recorded or queued) and
    // count what reached the journal.
    drop(keel);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store =
        keel_store::Store::open(&dir.path().join("data/keel.sqlite").display().to_string()).await?;
    let journaled = store.journal_count().await.unwrap_or_default();
    store.close().await;
    figures.add("keel_requests_answered", served_ok as u64, "");
    figures.add("keel_journal_entries", journaled as u64, "");

    if args.litellm {
        let (litellm, litellm_base) = start_litellm(upstream).await?;
        let litellm_url = format!("{litellm_base}/v1/chat/completions");
        for (rate, _, keel_phase) in &keel_results {
            let (direct, proxied) = measure(
                "litellm",
                &litellm_url,
                None,
                &direct_url,
                *rate,
                args.seconds,
            )
            .await?;
            add_rate_rows(&mut figures, "litellm", *rate, &direct, &proxied);
            let keel_p50 = keel_phase.pct(0.5);
            let keel_p99 = keel_phase.pct(0.99);
            figures.add(
                &format!("litellm_over_keel_{rate}_latency_p50_ratio"),
                round3(proxied.pct(0.5) / keel_p50.max(1e-3)),
                "×",
            );
            figures.add(
                &format!("litellm_over_keel_{rate}_latency_p99_ratio"),
                round3(proxied.pct(0.99) / keel_p99.max(1e-3)),
                "×",
            );
        }
        let (peak_kib, _) = litellm.pid().map(rss_kib).unwrap_or((0, 0));
        figures.add(
            "litellm_peak_rss_mib",
            round3(peak_kib as f64 / 1024.0),
            "MiB",
        );
        drop(litellm);
    }
    Ok(figures)
}
