//! `keel webhooks deliveries|attempts`: the outbound-webhook delivery log. Reads the database
//! directly, so it runs beside a live `keel serve`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_store::{Store, WebhookDeliveryFilter};

use crate::table::Table;
use crate::DataArgs;

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// List deliveries, newest first: endpoint, event, status, attempts, last result.
    ///
    /// Example:  keel webhooks deliveries --status failed
    Deliveries(DeliveriesArgs),
    /// Every attempt of one delivery: when, the receiver's status, the error.
    Attempts(AttemptsArgs),
}

#[derive(Args, Debug)]
pub struct DeliveriesArgs {
    /// Only this endpoint (its `name` in keel.toml).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only `pending`, `delivered` or `failed` deliveries.
    #[arg(long, value_parser = ["pending", "delivered", "failed"])]
    pub status: Option<String>,
    /// At most this many (1..=1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,
    /// Deliveries older than this delivery id (the next page).
    #[arg(long)]
    pub before: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print a JSON array (with each payload).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AttemptsArgs {
    /// The delivery id (the `keel-webhook-id` header receivers saw).
    pub delivery_id: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

async fn open(data: &DataArgs) -> anyhow::Result<Store> {
    if data.database.is_none() && !data.data_dir.is_dir() {
        anyhow::bail!(
            "no data directory at {}; pass the one `keel serve` uses with --data-dir",
            data.data_dir.display()
        );
    }
    let url = data.database_url();
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database at {url}"))
}

pub async fn run(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    match command {
        WebhooksCommand::Deliveries(args) => deliveries(args).await,
        WebhooksCommand::Attempts(args) => attempts(args).await,
    }
}

async fn deliveries(args: DeliveriesArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.data).await?;
    let filter = WebhookDeliveryFilter {
        endpoint: args.endpoint,
        status: args.status,
        before_id: args.before,
        limit: args.limit,
    };
    let rows = store.webhook_deliveries(&filter).await?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!(
            "no webhook deliveries match; endpoints are configured under [[webhooks]] in keel.toml"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID",
        "ENDPOINT",
        "EVENT",
        "STATUS",
        ">ATTEMPTS",
        "CREATED",
        "LAST RESULT",
    ]);
    for row in rows {
        let last = match (&row.last_error, row.last_status_code) {
            (Some(error), _) => error.clone(),
            (None, Some(code)) => format!("HTTP {code}"),
            (None, None) => "-".into(),
        };
        table.row([
            row.id,
            row.endpoint,
            row.event,
            row.status,
            row.attempts.to_string(),
            keel_engine::rfc3339_ms(row.created_at_ms),
            last.replace('\n', " "),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn attempts(args: AttemptsArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.data).await?;
    let rows = store.webhook_attempts(&args.delivery_id).await?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!(
            "no attempts recorded for delivery `{}`; `keel webhooks deliveries` lists ids",
            args.delivery_id
        );
        return Ok(ExitCode::from(1));
    }
    let mut table = Table::new(&[">ATTEMPT", "AT", ">STATUS", ">DURATION_MS", "ERROR"]);
    for row in rows {
        table.row([
            row.attempt.to_string(),
            keel_engine::rfc3339_ms(row.at_ms),
            row.status_code
                .map_or_else(|| "-".to_string(), |code| code.to_string()),
            row.duration_ms.to_string(),
            row.error.as_deref().unwrap_or("-").replace('\n', " "),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
