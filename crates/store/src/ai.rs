//! The AI layer's tables: API tokens (the gateway's callers), one row per model call (the
//! projection budgets and cost reports read; the journal holds the same facts), and the local
//! learners' versions.

use sqlx::{QueryBuilder, Row};

use crate::{Backend, NewEntry, Result, Store, ENTRIES_PER_INSERT};

/// An API token as stored: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub id: String,
    /// The caller name budgets and the journal use.
    pub name: String,
    /// Who the token acts for (a user or a service).
    pub subject: String,
    /// Comma-separated roles.
    pub roles: String,
    #[serde(skip)]
    pub sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// One model call, from a workflow step or the gateway.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AiCallRow {
    pub at_ms: i64,
    /// UTC date, `YYYY-MM-DD`.
    pub day: String,
    /// `step` or `gateway`.
    pub source: String,
    pub caller: Option<String>,
    pub workflow: Option<String>,
    pub step: Option<String>,
    pub case_id: Option<String>,
    pub model: String,
    pub provider: String,
    /// `ok` or an error code.
    pub status: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    /// Nano-USD; `None` when the cost is unknown (no usage or no price).
    pub cost_nano: Option<i64>,
    pub latency_ms: i64,
    pub cache_hit: bool,
    pub attempts: i64,
}

/// Known spend, summed per day, workflow and caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    pub day: String,
    pub workflow: Option<String>,
    pub caller: Option<String>,
    pub cost_nano: i64,
}

/// One stored version of a learner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnerRow {
    pub workflow: String,
    pub step: String,
    pub version: i64,
    pub model: Vec<u8>,
    pub examples: i64,
    pub source: String,
    pub created_at_ms: i64,
}

/// Rows per INSERT for `ai_calls` (17 columns; SQLite allows 32,766 parameters).
const CALLS_PER_INSERT: usize = 1_000;

fn token_from<R: Row>(row: &R) -> Result<TokenRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        subject: row.try_get("subject")?,
        roles: row.try_get("roles")?,
        sha256: row.try_get("sha256")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
    })
}

const TOKEN_COLUMNS: &str =
    "id, name, subject, roles, sha256, created_at_ms, expires_at_ms, revoked_at_ms";

impl Store {
    // ---------------------------------------------------------------- tokens

    /// Stores a new token together with its journal entry.
    pub async fn create_token(&self, token: &TokenRow, entry: &NewEntry) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO api_tokens (id, name, subject, roles, sha256, created_at_ms, expires_at_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&token.id)
                .bind(&token.name)
                .bind(&token.subject)
                .bind(&token.roles)
                .bind(&token.sha256)
                .bind(token.created_at_ms)
                .bind(token.expires_at_ms)
                .bind(token.revoked_at_ms)
                .execute(&mut *tx)
                .await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            insert_entries!(tx, std::slice::from_ref(entry));
            tx.commit().await?;
            Ok(())
        })
    }

    /// The token whose secret hashes to `sha256`, revoked or not.
    pub async fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRow>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = $1");
        dispatch_read!(self, |pool| {
            match sqlx::query(&sql).bind(sha256).fetch_optional(pool).await? {
                Some(row) => Ok(Some(token_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Every token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at_ms DESC, id DESC");
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(token_from)
                .collect()
        })
    }

    /// Revokes the live tokens whose id or name is `id_or_name`; returns how many, and journals
    /// `entry` in the same transaction when there was one.
    pub async fn revoke_token(
        &self,
        id_or_name: &str,
        now_ms: i64,
        entry: &NewEntry,
    ) -> Result<u64> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let revoked = sqlx::query("UPDATE api_tokens SET revoked_at_ms = $1 WHERE (id = $2 OR name = $2) AND revoked_at_ms IS NULL")
                .bind(now_ms)
                .bind(id_or_name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if revoked > 0 {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, std::slice::from_ref(entry));
            }
            tx.commit().await?;
            Ok(revoked)
        })
    }

    // ---------------------------------------------------------------- model calls

    /// Records model calls and their journal entries in one transaction.
    pub async fn record_ai_calls(&self, calls: &[AiCallRow], entries: &[NewEntry]) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in calls.chunks(CALLS_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO ai_calls (at_ms, day, source, caller, workflow, step, case_id, model, provider, status, input_tokens, output_tokens, cached_input_tokens, cost_nano, latency_ms, cache_hit, attempts) ",
                );
                builder.push_values(chunk, |mut row, call| {
                    row.push_bind(call.at_ms)
                        .push_bind(&call.day)
                        .push_bind(&call.source)
                        .push_bind(&call.caller)
                        .push_bind(&call.workflow)
                        .push_bind(&call.step)
                        .push_bind(&call.case_id)
                        .push_bind(&call.model)
                        .push_bind(&call.provider)
                        .push_bind(&call.status)
                        .push_bind(call.input_tokens)
                        .push_bind(call.output_tokens)
                        .push_bind(call.cached_input_tokens)
                        .push_bind(call.cost_nano)
                        .push_bind(call.latency_ms)
                        .push_bind(i64::from(call.cache_hit))
                        .push_bind(call.attempts);
                });
                builder.build().execute(&mut *tx).await?;
            }
            if !entries.is_empty() {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, entries);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Known spend from `from_day` (inclusive, `YYYY-MM-DD`) on, summed per day, workflow and
    /// caller. Budgets start from it after a restart.
    pub async fn ai_spend_since(&self, from_day: &str) -> Result<Vec<SpendRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT day, workflow, caller, SUM(cost_nano) AS cost FROM ai_calls WHERE day >= $1 AND cost_nano IS NOT NULL GROUP BY day, workflow, caller ORDER BY day")
                .bind(from_day)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(SpendRow {
                        day: row.try_get("day")?,
                        workflow: row.try_get("workflow")?,
                        caller: row.try_get("caller")?,
                        cost_nano: row.try_get::<Option<i64>, _>("cost")?.unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    /// Model calls, newest first, at most `limit` (capped at [`crate::MAX_PAGE`]).
    pub async fn ai_calls(&self, limit: i64) -> Result<Vec<AiCallRow>> {
        let limit = limit.clamp(1, crate::MAX_PAGE);
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT at_ms, day, source, caller, workflow, step, case_id, model, provider, status, input_tokens, output_tokens, cached_input_tokens, cost_nano, latency_ms, cache_hit, attempts FROM ai_calls ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AiCallRow {
                        at_ms: row.try_get("at_ms")?,
                        day: row.try_get("day")?,
                        source: row.try_get("source")?,
                        caller: row.try_get("caller")?,
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        case_id: row.try_get("case_id")?,
                        model: row.try_get("model")?,
                        provider: row.try_get("provider")?,
                        status: row.try_get("status")?,
                        input_tokens: row.try_get("input_tokens")?,
                        output_tokens: row.try_get("output_tokens")?,
                        cached_input_tokens: row.try_get("cached_input_tokens")?,
                        cost_nano: row.try_get("cost_nano")?,
                        latency_ms: row.try_get("latency_ms")?,
                        cache_hit: row.try_get::<i64, _>("cache_hit")? != 0,
                        attempts: row.try_get("attempts")?,
                    })
                })
                .collect()
        })
    }

    // ---------------------------------------------------------------- learners

    /// Stores a new version of a learner (one more than the latest) with its journal entry
    /// `announce(version)`; returns the version.
    #[allow(clippy::too_many_arguments)] // one version's columns, each named at the call
    pub async fn save_learner(
        &self,
        workflow: &str,
        step: &str,
        model: &[u8],
        examples: i64,
        source: &str,
        now_ms: i64,
        announce: &(dyn Fn(i64) -> NewEntry + Sync),
    ) -> Result<i64> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let latest: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM learners WHERE workflow = $1 AND step = $2",
            )
            .bind(workflow)
            .bind(step)
            .fetch_one(&mut *tx)
            .await?;
            let version = latest.unwrap_or(0) + 1;
            sqlx::query("INSERT INTO learners (workflow, step, version, model, examples, source, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(workflow)
                .bind(step)
                .bind(version)
                .bind(model)
                .bind(examples)
                .bind(source)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            let entry = announce(version);
            insert_entries!(tx, std::slice::from_ref(&entry));
            tx.commit().await?;
            Ok(version)
        })
    }

    /// The latest version of every learner.
    pub async fn latest_learners(&self) -> Result<Vec<LearnerRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT l.workflow, l.step, l.version, l.model, l.examples, l.source, l.created_at_ms FROM learners l JOIN (SELECT workflow, step, MAX(version) AS version FROM learners GROUP BY workflow, step) m ON l.workflow = m.workflow AND l.step = m.step AND l.version = m.version ORDER BY l.workflow, l.step")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(LearnerRow {
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        version: row.try_get("version")?,
                        model: row.try_get("model")?,
                        examples: row.try_get("examples")?,
                        source: row.try_get("source")?,
                        created_at_ms: row.try_get("created_at_ms")?,
                    })
                })
                .collect()
        })
    }

    /// Every stored version of one learner, newest first, without the model bytes.
    pub async fn learner_versions(&self, workflow: &str, step: &str) -> Result<Vec<LearnerRow>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT workflow, step, version, examples, source, created_at_ms FROM learners WHERE workflow = $1 AND step = $2 ORDER BY version DESC")
                .bind(workflow)
                .bind(step)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(LearnerRow {
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        version: row.try_get("version")?,
                        model: Vec::new(),
                        examples: row.try_get("examples")?,
                        source: row.try_get("source")?,
                        created_at_ms: row.try_get("created_at_ms")?,
                    })
                })
                .collect()
        })
    }
}
