//! API tokens: created once with their secret shown to the creator, stored as a SHA-256 hash,
//! revocable. The gateway identifies its callers by them (and issue 4's access control will
//! identify every API caller by them).
//!
//! A secret is `keel_` followed by 43 base64url characters (32 random bytes). Lookups by the
//! hash of the presented secret are cached for a few seconds so that the hot path does not read
//! the database on every request; a revocation therefore takes effect within [`CACHE_TTL_MS`].

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use keel_store::{NewEntry, Store, TokenRow};
use sha2::Digest;

use crate::{canonical_data, rfc3339_ms, Error, Result};

/// How long a successful lookup is trusted before the database is asked again.
pub const CACHE_TTL_MS: i64 = 5_000;
/// Largest number of cached lookups.
const CACHE_MAX: usize = 10_000;

/// Who made a request, as established by its token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Caller {
    pub token_id: String,
    /// The caller name budgets and the journal use.
    pub name: String,
    pub subject: String,
    pub roles: Vec<String>,
    /// From the user the token acts for (`keel user add --approval-limit`).
    pub approval_limit: Option<f64>,
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
    /// The user the token acts for is disabled.
    Disabled,
}

/// The SHA-256 (hex) under which a secret is stored.
pub fn token_sha256(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Creates a token for `name`; returns the secret (shown once, never stored) and the row.
pub async fn create_token(
    store: &Store,
    name: &str,
    subject: &str,
    roles: &[String],
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<(String, TokenRow)> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::InvalidRequest(format!(
            "token name `{name}` is not valid: use 1–64 letters, digits, `-`, `_` or `.`"
        )));
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| Error::Io(format!("no randomness for a token: {error}")))?;
    let secret = format!(
        "keel_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let row = TokenRow {
        id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
        name: name.to_string(),
        subject: subject.to_string(),
        roles: roles.join(","),
        sha256: token_sha256(&secret),
        created_at_ms: now_ms,
        expires_at_ms,
        revoked_at_ms: None,
    };
    let entry = token_entry(
        "token.created",
        now_ms,
        serde_json::json!({"token_id": row.id, "name": row.name, "subject": row.subject,
            "roles": roles, "expires_at_ms": expires_at_ms}),
    );
    store.create_token(&row, &entry).await?;
    Ok((secret, row))
}

/// Revokes every live token whose id or name is `id_or_name`; returns how many.
pub async fn revoke_token(store: &Store, id_or_name: &str, now_ms: i64) -> Result<u64> {
    let entry = token_entry(
        "token.revoked",
        now_ms,
        serde_json::json!({"token": id_or_name}),
    );
    Ok(store.revoke_token(id_or_name, now_ms, &entry).await?)
}

fn token_entry(kind: &str, now_ms: i64, data: serde_json::Value) -> NewEntry {
    let (data, data_sha256) = canonical_data(&data);
    NewEntry {
        at: rfc3339_ms(now_ms),
        kind: kind.to_string(),
        actor_type: "cli".into(),
        actor_id: std::env::var("USER").unwrap_or_else(|_| "local".into()),
        case_id: None,
        workflow: None,
        step: None,
        data,
        data_sha256,
    }
}

/// Cached token lookups by secret hash.
///
/// When an entry goes stale, the first request to notice refreshes it from the database while
/// the others keep using the stale row for the few milliseconds that takes: one read per token
/// per [`CACHE_TTL_MS`], never a stampede of reads when a busy token's entry expires.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    fetched_ms: i64,
    row: TokenRow,
    user: Option<keel_store::UserRow>,
    refreshing: bool,
}

impl TokenCache {
    pub async fn authenticate(
        &self,
        store: &Store,
        secret: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<Caller, Refusal>> {
        let sha = token_sha256(secret);
        let cached = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get_mut(&sha) {
                Some(entry) if now_ms - entry.fetched_ms < CACHE_TTL_MS || entry.refreshing => {
                    Some((entry.row.clone(), entry.user.clone()))
                }
                Some(entry) => {
                    entry.refreshing = true;
                    None
                }
                None => None,
            }
        };
        let (row, user) = match cached {
            Some(cached) => cached,
            None => {
                let found = match store.token_by_hash(&sha).await {
                    Ok(Some(row)) => match store.user(&row.subject).await {
                        Ok(user) => Ok(Some((row, user))),
                        Err(error) => Err(error),
                    },
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                };
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                let (row, user) = match found {
                    Ok(Some(found)) => found,
                    Ok(None) => {
                        entries.remove(&sha);
                        return Ok(Err(Refusal::Unknown));
                    }
                    Err(error) => {
                        if let Some(entry) = entries.get_mut(&sha) {
                            entry.refreshing = false;
                        }
                        return Err(error.into());
                    }
                };
                if entries.len() >= CACHE_MAX {
                    entries.clear();
                }
                entries.insert(
                    sha,
                    Cached {
                        fetched_ms: now_ms,
                        row: row.clone(),
                        user: user.clone(),
                        refreshing: false,
                    },
                );
                (row, user)
            }
        };
        if user.as_ref().is_some_and(|u| u.disabled) {
            return Ok(Err(Refusal::Disabled));
        }
        if row.revoked_at_ms.is_some() {
            return Ok(Err(Refusal::Revoked));
        }
        if row.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
            return Ok(Err(Refusal::Expired));
        }
        // A token that acts for a user has that user's roles and limit.
        let (roles, approval_limit) = match user {
            Some(user) => (user.roles, user.approval_limit),
            None => (
                row.roles
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
                    .collect(),
                None,
            ),
        };
        Ok(Ok(Caller {
            token_id: row.id,
            name: row.name,
            subject: row.subject,
            roles,
            approval_limit,
        }))
    }
}
