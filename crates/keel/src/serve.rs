//! `keel serve`: opens the store, deploys the workflows directory, starts the engine and the
//! HTTP API, and shuts down gracefully on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use keel_engine::{Engine, Options, SystemClock};

use crate::DataArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Directory of workflow files (*.yaml) to deploy at start.
    #[arg(long, env = "KEEL_WORKFLOWS", default_value = "workflows")]
    pub workflows: PathBuf,
    /// Address to listen on. Keep it on loopback until authentication is configured.
    #[arg(long, env = "KEEL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a claimed case stays leased to this node without progress.
    #[arg(long, default_value_t = 30)]
    pub lease_s: u64,
    /// Cases running at once on this node.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Serve the sandbox stand-ins for the example workflows' ERP and helpdesk under
    /// /sandbox/ on the API port. They answer without a token, so they are off unless asked for.
    #[arg(long)]
    pub sandbox: bool,
    /// The default (no sandbox); kept so that older scripts still start.
    #[arg(long, hide = true, conflicts_with = "sandbox")]
    pub no_sandbox: bool,
    /// Seconds to let in-flight steps finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_s: u64,
    /// The models configuration (keel.toml). Default ./keel.toml; without it, `ai` steps
    /// raise exceptions until models are configured. The latest stored version of every
    /// learner is loaded at start (old DATA_DIR/learners/WORKFLOW/STEP.bin files are imported
    /// into the database first).
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A Cedar policy file added to the built-in roles (e.g. four-eyes or approval rules),
    /// validated against the shipped schema at start; a `forbid` there overrides any permit.
    #[arg(long, env = "KEEL_POLICIES")]
    pub policies: Option<PathBuf>,
    /// The exception desk: queues, routing rules, SLAs and escalation ladders (see
    /// examples/exceptions.yaml). Default ./exceptions.yaml when present; without one, every
    /// exception goes to the queue `exceptions`, claimed by operators and specialists.
    #[arg(long, env = "KEEL_EXCEPTIONS")]
    pub exceptions: Option<PathBuf>,
    /// Send OpenTelemetry traces (a span per model call, review events) over OTLP/HTTP with
    /// JSON to ENDPOINT/v1/traces, e.g. http://localhost:4318. Off by default.
    #[arg(long, env = "KEEL_OTLP_ENDPOINT", value_name = "ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The environment variable holding a scrape token: a request bearing it may read
    /// /metrics without a user token (for Prometheus).
    #[arg(long, value_name = "VAR")]
    pub metrics_token_env: Option<String>,
}

/// Opens the store and the engine the way every command that runs cases does.
pub async fn start_engine(
    data: &DataArgs,
    lease: Duration,
    max_in_flight: usize,
    ai: Option<Arc<keel_ai::cascade::Runtime>>,
    webhooks: Vec<keel_engine::webhooks::Endpoint>,
    desk: Arc<keel_core::desk::DeskConfig>,
    telemetry: keel_engine::telemetry::Options,
) -> anyhow::Result<(Engine, Option<std::fs::File>)> {
    std::fs::create_dir_all(&data.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            data.data_dir.display()
        )
    })?;
    let url = data.database_url();
    let lock = if url.starts_with("postgres") {
        None
    } else {
        Some(lock_data_dir(&data.data_dir)?)
    };
    let store = keel_store::Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))?;
    if ai
        .as_ref()
        .is_some_and(|runtime| !runtime.config().change_control.review)
    {
        tracing::warn!("[change_control] review = \"off\" in keel.toml: workflow versions that change what decides go live without a governor's approval (the monthly review says so)");
    }
    let options = Options {
        node_id: node_id(&data.data_dir)?,
        lease,
        max_in_flight,
        data_dir: data.data_dir.clone(),
        ai,
        webhooks: keel_engine::webhooks::Options {
            endpoints: webhooks,
            ..keel_engine::webhooks::Options::default()
        },
        desk,
        telemetry,
        ..Options::default()
    };
    let engine = Engine::start(store, options, Arc::new(SystemClock)).await?;
    Ok((engine, lock))
}

/// One `keel serve` per SQLite data directory: a second one would fight over leases.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("keel.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another keel process is using {}; stop it, or give this one its own --data-dir",
            dir.display()
        );
    }
    Ok(file)
}

/// The node id kept in the data directory, created on first start.
fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("node-{}", uuid::Uuid::now_v7());
            std::fs::write(&path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

/// The models configuration for `serve` and `check`: the explicit path (which must load), or
/// `./keel.toml` when present. `Ok(None)` when no configuration is in use; `Err` carries every
/// problem as `path:line:col: message`.
pub fn load_config(
    explicit: Option<&Path>,
) -> Result<Option<(PathBuf, keel_ai::config::Config)>, Vec<keel_ai::config::Error>> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let default = PathBuf::from("keel.toml");
            if !default.exists() {
                return Ok(None);
            }
            default
        }
    };
    keel_ai::config::Config::load(&path).map(|config| Some((path, config)))
}

/// The desk file in use: the explicit path, or `./exceptions.yaml` when present.
pub fn desk_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let default = PathBuf::from("exceptions.yaml");
            default.exists().then_some(default)
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let extra_policies = match &args.policies {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(source) => Some((path.display().to_string(), source)),
            Err(error) => {
                eprintln!("cannot read the policy file {}: {error}", path.display());
                return Ok(ExitCode::from(2));
            }
        },
    };
    let authorizer = match keel_engine::authz::Authorizer::with_policies(
        extra_policies
            .as_ref()
            .map(|(file, source)| (file.as_str(), source.as_str())),
    ) {
        Ok(authorizer) => std::sync::Arc::new(authorizer),
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("keel serve: fix the policy errors above");
            return Ok(ExitCode::from(2));
        }
    };
    let config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!("keel serve: fix the configuration errors above");
            return Ok(ExitCode::from(2));
        }
    };
    // Webhook secrets are read from the environment now, so a missing one stops the start.
    let webhooks = match &config {
        Some((_, config)) => {
            match keel_engine::webhooks::Endpoint::from_environment(&config.webhooks) {
                Ok(endpoints) => endpoints,
                Err(error) => {
                    eprintln!("{error}");
                    eprintln!("keel serve: fix the webhook configuration above");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => Vec::new(),
    };
    let runtime = match config {
        Some((path, config)) => {
            tracing::info!(config = %path.display(), models = config.models.len(), "models configured");
            let runtime = Arc::new(keel_ai::cascade::Runtime::new(config, provider_http()?));
            Some(runtime)
        }
        None => {
            tracing::warn!("no keel.toml: `ai` steps will raise exceptions until models are configured (pass --config PATH); stored learners are not loaded");
            None
        }
    };
    // Like webhook secrets, the scrape token is read now, so a missing one stops the start.
    let metrics_token = match &args.metrics_token_env {
        None => None,
        Some(variable) => match std::env::var(variable) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
            _ => {
                eprintln!("keel serve: --metrics-token-env {variable}: the variable is not set or empty; set it to the secret Prometheus sends");
                return Ok(ExitCode::from(2));
            }
        },
    };
    let telemetry = keel_engine::telemetry::Options {
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
        ..keel_engine::telemetry::Options::default()
    };
    let desk_path = desk_path(args.exceptions.as_deref());
    let desk = match keel_engine::desk::load_config(desk_path.as_deref()) {
        Ok(desk) => {
            if let Some(path) = &desk_path {
                tracing::info!(file = %path.display(), queues = desk.queues().len(), "exception desk configured");
            }
            Arc::new(desk)
        }
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!(
                "keel serve: fix the exception desk file above (`keel check` reports the same)"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let (engine, _lock) = start_engine(
        &args.data,
        Duration::from_secs(args.lease_s),
        args.max_in_flight,
        runtime,
        webhooks,
        desk,
        telemetry,
    )
    .await?;
    import_learner_files(&engine, &args.data.data_dir).await;
    if args.workflows.is_dir() {
        deploy(&engine, &args.workflows).await?;
        tokio::spawn(redeploy_on_sighup(engine.clone(), args.workflows.clone()));
    } else {
        tracing::warn!(dir = %args.workflows.display(), "no workflows directory; pass --workflows DIR");
    }
    // Challengers stored while no server ran (`keel learner train`) are tested now, not at
    // the first trust pass.
    match engine.test_challengers().await {
        Ok(tested) => {
            for evaluation in tested {
                tracing::info!(workflow = %evaluation.workflow, step = %evaluation.step,
                    version = evaluation.version, result = %evaluation.result, "learner challenger tested");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "testing learner challengers failed; the trust pass retries")
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another keel running? pick another with --listen",
                args.listen
            )
        })?;
    let address = listener.local_addr()?;
    eprintln!(
        "keel is serving on http://{address} (API docs: http://{address}/docs; data: {})",
        args.data.database_url()
    );
    let data_flags = match &args.data.database {
        Some(url) => format!("--database {url}"),
        None => format!("--data-dir {}", args.data.data_dir.display()),
    };
    if engine
        .store()
        .users()
        .await
        .map(|u| u.is_empty())
        .unwrap_or(false)
    {
        eprintln!("every API call needs a token; create the first admin and their token with:");
        eprintln!("  keel user add admin --roles admin {data_flags}");
        eprintln!(
            "  export KEEL_TOKEN=$(keel token create --name admin --user admin {data_flags})"
        );
    }
    eprintln!(
        "submit a case:  keel submit ticket-routing examples/ticket.json   (then: keel cases)"
    );
    if args.sandbox {
        eprintln!("the sandbox (/sandbox/…) answers without a token: keep this server off shared networks");
    } else {
        eprintln!("the bundled workflows call the sandbox's ERP and helpdesk: start with --sandbox to run them end to end");
    }
    let shutdown = shutdown_signal();
    let options = keel_server::ServerOptions {
        sandbox: args.sandbox,
        authorizer: Some(authorizer),
        metrics_token,
        ..keel_server::ServerOptions::default()
    };
    keel_server::serve(listener, engine.clone(), options, shutdown).await?;
    tracing::info!("HTTP stopped; finishing in-flight steps");
    engine
        .shutdown(Duration::from_secs(args.shutdown_grace_s))
        .await;
    engine.store().close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Imports old DATA_DIR/learners/WORKFLOW/STEP.bin files whose learners have no stored version
/// yet, as challengers: like every new version they serve only after their test (run once the
/// workflows are deployed).
async fn import_learner_files(engine: &Engine, data_dir: &Path) {
    let actor = keel_engine::learn::Actor {
        actor_type: "system".into(),
        actor_id: "serve".into(),
    };
    for (workflow, step, _) in crate::learner::import_files(engine.store(), data_dir, &actor).await
    {
        tracing::info!(%workflow, %step, "learner file imported as a challenger");
    }
}

/// Deploys every workflow file in `dir`: changed files become new versions.
async fn deploy(engine: &Engine, dir: &Path) -> anyhow::Result<()> {
    let report = engine.deploy_dir(dir).await?;
    for deployed in &report.deployed {
        let state = if deployed.new {
            "deployed"
        } else {
            "unchanged"
        };
        let (name, version) = (&deployed.name, deployed.version_no);
        if deployed.status == keel_engine::registry::Status::Pending {
            tracing::warn!(workflow = %name, version, changes = %serde_json::Value::Array(deployed.changes.clone()),
                "{state}, pending: it changes what decides; cases keep running on the serving version until a governor who is not its author runs `keel workflow approve {name} {version} --reason …`");
        } else {
            tracing::info!(workflow = %name, version, status = deployed.status.as_str(), "{state}");
        }
    }
    for (file, diagnostics) in &report.rejected {
        eprintln!("{diagnostics}");
        tracing::error!(%file, "not deployed: fix the errors above (keel check {file})");
    }
    Ok(())
}

/// `kill -HUP <pid>` redeploys the workflows directory without a restart; running cases stay
/// on the version they started with.
async fn redeploy_on_sighup(engine: Engine, dir: PathBuf) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!(dir = %dir.display(), "SIGHUP: redeploying workflows");
        if let Err(error) = deploy(&engine, &dir).await {
            tracing::error!(error = %format!("{error:#}"), "redeploy failed; the previous versions stay in force");
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Most idle connections kept open to one model provider once a burst is over.
const PROVIDER_IDLE_CONNECTIONS_PER_HOST: usize = 64;
/// How long an idle provider connection is kept.
const PROVIDER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The HTTP client for model providers. Its pool is bounded: after a burst of a thousand
/// concurrent calls, an unbounded pool kept every connection and its buffers for 90 s, which
/// held the gateway's memory up long after the load had gone.
fn provider_http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(PROVIDER_IDLE_CONNECTIONS_PER_HOST)
        .pool_idle_timeout(PROVIDER_IDLE_TIMEOUT)
        .build()
        .context("cannot build the HTTP client for model providers")
}
