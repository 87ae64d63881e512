//! `keel`: the command line. Parses arguments and wires the libraries together; behaviour
//! lives in the libraries. Data that users pipe goes to stdout, everything else to stderr.

mod allocator;
mod audit;
mod bench;
mod bench_gateway;
mod bench_report;
mod bench_review;
mod bench_trust;
mod check;
mod client;
mod drift;
mod exceptions;
mod learner;
mod learner_change;
mod people;
mod report;
mod serve;
mod table;
mod token;
mod trust;
mod webhooks;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc malloc: the engine allocates from many threads at once, and
/// glibc's arenas spent a third of the engine benchmark's CPU time in malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel runs business workflows durably, calls AI only where judgment is needed, and keeps
/// every decision in a tamper-evident ledger.
///
/// Start here:   keel serve                         (API + workers on ./workflows, data in ./keel-data)
///               keel submit ticket-routing examples/ticket.json
///               keel cases
///               keel audit verify
#[derive(Parser)]
#[command(name = "keel", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Log filter, e.g. `info`, `keel=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "KEEL_LOG", default_value = "info")]
    log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the workers in one process.
    Serve(serve::ServeArgs),
    /// Check workflow files like a compiler: every problem with file:line:column.
    Check(check::CheckArgs),
    /// Submit a case (one JSON file) or many (a JSONL file, one case per line).
    Submit(client::SubmitArgs),
    /// List cases, newest first.
    Cases(client::CasesArgs),
    /// Show one case (`keel case show ID`).
    Case {
        #[command(subcommand)]
        command: client::CaseCommand,
    },
    /// Verify the ledger, print proofs, check proofs offline.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Train, evaluate and list the stored versions of the built-in learner of an `ai` step
    /// (`keel learner train|eval|versions`). A running `keel serve` loads the latest stored
    /// versions at start and learns online from labelled examples posted to its API.
    Learner {
        #[command(subcommand)]
        command: learner::LearnerCommand,
    },
    /// Change control: a workflow's versions, and governors' approval or rejection of a
    /// pending one (`keel workflow versions|approve|reject`).
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// Users with roles and approval limits (`keel user add|list|disable`).
    User {
        #[command(subcommand)]
        command: people::UserCommand,
    },
    /// Tasks waiting for people (approval steps, actions that use AI output).
    Tasks(people::TasksArgs),
    /// Show or decide one task (`keel task show|approve|correct|reject ID`).
    Task {
        #[command(subcommand)]
        command: people::TaskCommand,
    },
    /// Exceptions waiting for people, and their patterns (`keel exceptions [patterns]`).
    Exceptions(exceptions::ExceptionsArgs),
    /// Show, resolve or assign one exception (`keel exception show|resolve|assign ID`).
    Exception {
        #[command(subcommand)]
        command: exceptions::ExceptionCommand,
    },
    /// Progressive trust: operations, their phases and evidence; governors promote, decline
    /// and demote (`keel trust [show|recommendations|promote|decline|demote]`).
    Trust(trust::TrustArgs),
    /// Drift of monitored features: the latest test of each, or one feature's history
    /// (`keel drift [--workflow W] | keel drift show WORKFLOW/FEATURE`).
    Drift(drift::DriftArgs),
    /// Reports over the HTTP API: the cost analysis and the monthly operational review
    /// (`keel report costs [--month M] | keel report monthly --month M --format html|md|json`).
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
    },
    /// API tokens for the gateway and the API (`keel token create|list|revoke`).
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// The outbound-webhook delivery log (`keel webhooks deliveries|attempts`).
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Measure throughput and latency; prints a table, or one JSON object with --json.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// Where the data lives; shared by every command that opens the database directly.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory: the SQLite file, the ledger key, the node id.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "keel-data")]
    pub data_dir: PathBuf,
    /// Database URL: a SQLite path (default: DATA_DIR/keel.sqlite) or postgres://user@host/db.
    #[arg(long, env = "KEEL_DATABASE_URL")]
    pub database: Option<String>,
}

impl DataArgs {
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keel.sqlite").display().to_string())
    }
}

fn main() -> ExitCode {
    allocator::configure();
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Check(args) => check::run(args),
            Command::Submit(args) => client::submit(args).await,
            Command::Cases(args) => client::cases(args).await,
            Command::Case { command } => client::case(command).await,
            Command::Audit { command } => audit::run(command).await,
            Command::Learner { command } => learner::run(command).await,
            Command::Token { command } => token::run(command).await,
            Command::Workflow { command } => workflow::run(command).await,
            Command::User { command } => people::user(command).await,
            Command::Tasks(args) => people::tasks(args).await,
            Command::Task { command } => people::task(command).await,
            Command::Exceptions(args) => exceptions::exceptions(args).await,
            Command::Exception { command } => exceptions::exception(command).await,
            Command::Webhooks { command } => webhooks::run(command).await,
            Command::Trust(args) => trust::run(args).await,
            Command::Drift(args) => drift::run(args).await,
            Command::Report { command } => report::run(command).await,
            Command::Bench { command } => bench::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
