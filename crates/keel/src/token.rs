//! `keel token create|list|revoke`: API tokens for the gateway (and, from issue 4, every API
//! caller). Works on the database directly, so it runs beside a live `keel serve`; a revoked
//! token stops working within a few seconds (the server caches lookups briefly).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_store::Store;
use serde_json::json;

use crate::DataArgs;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret once; only its SHA-256 is stored.
    ///
    /// Example:  keel token create --name billing-app
    ///           export OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=keel_…
    Create(CreateArgs),
    /// List tokens (never their secrets), newest first.
    List(ListArgs),
    /// Revoke every live token with this id or name.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The caller name: budgets (`[budgets.callers.NAME]`) and the journal use it.
    #[arg(long)]
    pub name: String,
    /// The user this token acts for (`keel user add`): it then has that user's roles and
    /// approval limit. Without it the token is a service token with --roles.
    #[arg(long)]
    pub user: Option<String>,
    /// Roles, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "gateway")]
    pub roles: Vec<String>,
    /// Expire after this many days.
    #[arg(long)]
    pub expires_in_days: Option<u32>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's id (tok_…) or name.
    pub token: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Opens (creating the data directory if needed) the database of `data`, for commands that
/// work on it directly.
pub(crate) async fn open(data: &DataArgs) -> anyhow::Result<Store> {
    if data.database.is_none() {
        std::fs::create_dir_all(&data.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                data.data_dir.display()
            )
        })?;
    }
    let url = data.database_url();
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database at {url}"))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => {
            let store = open(&args.data).await?;
            let now = now_ms();
            let expires = args
                .expires_in_days
                .map(|days| now + i64::from(days) * 86_400_000);
            if let Some(user) = &args.user {
                match store.user(user).await? {
                    Some(found) if !found.disabled => {}
                    Some(_) => anyhow::bail!("user `{user}` is disabled"),
                    None => anyhow::bail!("no user named `{user}`; add one with `keel user add {user} --roles reviewer`"),
                }
            }
            let subject = args.user.clone().unwrap_or_else(|| args.name.clone());
            let (secret, row) = keel_engine::tokens::create_token(
                &store,
                &args.name,
                &subject,
                &args.roles,
                expires,
                now,
            )
            .await?;
            if args.json {
                println!(
                    "{}",
                    json!({"id": row.id, "name": row.name, "subject": row.subject,
                        "roles": args.roles, "expires_at_ms": row.expires_at_ms, "token": secret})
                );
            } else {
                eprintln!(
                    "created token {} for `{}`; this is the only time its secret is shown:",
                    row.id, row.name
                );
                println!("{secret}");
                eprintln!("use it as a bearer token, e.g. OPENAI_API_KEY={secret} with OPENAI_BASE_URL=http://HOST:PORT/v1");
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List(args) => {
            let store = open(&args.data).await?;
            let tokens = store.tokens().await?;
            store.close().await;
            if args.json {
                println!("{}", serde_json::to_string(&tokens)?);
                return Ok(ExitCode::SUCCESS);
            }
            if tokens.is_empty() {
                eprintln!("no tokens yet; create one with `keel token create --name APP`");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32}  {:<20}  {:<20}  {:<10}  CREATED",
                "ID", "NAME", "ROLES", "STATE"
            );
            for token in tokens {
                let state = if token.revoked_at_ms.is_some() {
                    "revoked"
                } else if token.expires_at_ms.is_some_and(|at| at <= now_ms()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<32}  {:<20}  {:<20}  {:<10}  {}",
                    token.id,
                    token.name,
                    token.roles,
                    state,
                    keel_engine::rfc3339_ms(token.created_at_ms)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke(args) => {
            let store = open(&args.data).await?;
            let revoked = keel_engine::tokens::revoke_token(&store, &args.token, now_ms()).await?;
            store.close().await;
            if args.json {
                println!("{}", json!({"token": args.token, "revoked": revoked}));
            } else if revoked == 0 {
                eprintln!(
                    "no live token has the id or name `{}`; `keel token list` shows them",
                    args.token
                );
            } else {
                eprintln!(
                    "revoked {revoked} token(s) named or numbered `{}`",
                    args.token
                );
            }
            Ok(if revoked == 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
