//! `keel token create|list|revoke`: API tokens for the gateway (and, from issue 4, every API
//! caller). Works on the database directly, so it runs beside a live `keel serve`; a revoked
//! token stops working within a few seconds (the server caches lookups briefly).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_store::{Store, TokenRow, UserRow};
use serde_json::{json, Value};

use crate::table::{cell, Table};
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
    /// approval limit, as they are at each request. Without it the token is an application's,
    /// with --roles.
    #[arg(long)]
    pub user: Option<String>,
    /// An application token's roles, comma-separated (default: gateway). Not with --user: a
    /// user's token has the user's roles (`keel user list`).
    #[arg(long, value_delimiter = ',', conflicts_with = "user")]
    pub roles: Option<Vec<String>>,
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

/// A token as the server treats it (`keel_engine::tokens` authenticates the same way): when
/// its subject names a user, it is that user's token with the user's current roles (refused
/// while the user is disabled); otherwise it is an application's, with its own roles.
fn view(token: &TokenRow, user: Option<&UserRow>, now_ms: i64) -> Value {
    let (kind, roles) = match user {
        Some(user) => ("user", user.roles.clone()),
        None => (
            "application",
            token
                .roles
                .split(',')
                .filter(|role| !role.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    };
    let state = if token.revoked_at_ms.is_some() {
        "revoked"
    } else if token.expires_at_ms.is_some_and(|at| at <= now_ms) {
        "expired"
    } else if user.is_some_and(|user| user.disabled) {
        "user disabled"
    } else {
        "active"
    };
    json!({
        "id": token.id, "name": token.name, "kind": kind, "subject": token.subject,
        "roles": roles, "state": state, "created_at_ms": token.created_at_ms,
        "created_at": keel_engine::rfc3339_ms(token.created_at_ms),
        "expires_at_ms": token.expires_at_ms, "revoked_at_ms": token.revoked_at_ms,
    })
}

pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => {
            let store = open(&args.data).await?;
            let now = now_ms();
            let expires = args
                .expires_in_days
                .map(|days| now + i64::from(days) * 86_400_000);
            let (subject, roles, effective_roles) = match &args.user {
                Some(user) => match store.user(user).await? {
                    Some(found) if !found.disabled => (user.clone(), Vec::new(), found.roles),
                    Some(_) => anyhow::bail!("user `{user}` is disabled"),
                    None => anyhow::bail!("no user named `{user}`; add one with `keel user add {user} --roles reviewer`"),
                },
                None => {
                    // The server takes a token whose subject names a user as that user's: an
                    // application token must not share a user's name.
                    if store.user(&args.name).await?.is_some() {
                        anyhow::bail!(
                            "`{}` is a user's name, and a token named after a user acts as that user; for their token pass --user {}, for an application's pick another --name",
                            args.name, args.name
                        );
                    }
                    let roles = args.roles.clone().unwrap_or_else(|| vec!["gateway".into()]);
                    (args.name.clone(), roles.clone(), roles)
                }
            };
            let (secret, row) = keel_engine::tokens::create_token(
                &store, &args.name, &subject, &roles, expires, now,
            )
            .await?;
            if args.json {
                let kind = if args.user.is_some() {
                    "user"
                } else {
                    "application"
                };
                println!(
                    "{}",
                    json!({"id": row.id, "name": row.name, "kind": kind, "subject": row.subject,
                        "roles": effective_roles, "expires_at_ms": row.expires_at_ms, "token": secret})
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
            let users: HashMap<String, UserRow> = store
                .users()
                .await?
                .into_iter()
                .map(|user| (user.name.clone(), user))
                .collect();
            store.close().await;
            let views: Vec<Value> = tokens
                .iter()
                .map(|token| view(token, users.get(&token.subject), now_ms()))
                .collect();
            if args.json {
                println!("{}", Value::Array(views));
                return Ok(ExitCode::SUCCESS);
            }
            if views.is_empty() {
                eprintln!("no tokens yet; create one with `keel token create --name APP`");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                "ID", "NAME", "KIND", "ACTS FOR", "ROLES", "STATE", "CREATED",
            ]);
            for token in &views {
                let roles: Vec<String> = token["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(cell)
                    .collect();
                table.row([
                    cell(&token["id"]),
                    cell(&token["name"]),
                    cell(&token["kind"]),
                    cell(&token["subject"]),
                    roles.join(","),
                    cell(&token["state"]),
                    cell(&token["created_at"]),
                ]);
            }
            table.print();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    fn token(subject: &str, roles: &str) -> TokenRow {
        TokenRow {
            id: "tok_1".into(),
            name: "t".into(),
            subject: subject.into(),
            roles: roles.into(),
            sha256: String::new(),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
        }
    }

    /// A user's token is shown with the user's roles, never the `gateway` stored with it.
    #[test]
    fn a_users_token_shows_the_users_roles() {
        let user = UserRow {
            name: "ann".into(),
            display_name: "ann".into(),
            roles: vec!["reviewer".into(), "auditor".into()],
            approval_limit: None,
            disabled: false,
            created_at_ms: 0,
        };
        let shown = view(&token("ann", "gateway"), Some(&user), 1);
        assert_eq!(shown["kind"], "user");
        assert_eq!(shown["roles"], json!(["reviewer", "auditor"]));
        assert_eq!(shown["state"], "active");
        let disabled = UserRow {
            disabled: true,
            ..user
        };
        assert_eq!(
            view(&token("ann", "gateway"), Some(&disabled), 1)["state"],
            "user disabled"
        );
        let app = view(&token("billing", "gateway,operator"), None, 1);
        assert_eq!(app["kind"], "application");
        assert_eq!(app["roles"], json!(["gateway", "operator"]));
    }
}
