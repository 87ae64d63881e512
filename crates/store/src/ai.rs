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
    /// `challenger` (stored, not serving until shown non-inferior), `serving`, `retired`
    /// (served before), `failed` (a challenger that failed its test: kept, never served).
    pub status: String,
    /// An operator asked to serve this version without the test; a governor decides.
    pub requested_by: Option<String>,
    /// The last evaluation (JSON).
    pub evidence: String,
}

/// A learner version about to be stored: the model and how it came about.
pub struct NewLearner<'a> {
    pub workflow: &'a str,
    pub step: &'a str,
    pub model: &'a [u8],
    pub examples: i64,
    pub source: &'a str,
    pub now_ms: i64,
    /// `challenger` (the rule) or `serving` (nothing serves yet and no test can run: never
    /// used for a learner with a serving version).
    pub status: &'a str,
    /// SHA-256 (hex) of each text of the batch: evaluations leave them out.
    pub trained: &'a [String],
    /// A `meta` cursor moved in the same transaction: (key, expected old value, new value).
    pub cursor: Option<(&'a str, Option<&'a str>, &'a str)>,
}

/// A learner version's change of status, with its journal entry.
pub struct LearnerStatusChange<'a> {
    pub workflow: &'a str,
    pub step: &'a str,
    pub version: i64,
    /// The status it must have now.
    pub expected: &'a str,
    pub status: &'a str,
    pub evidence: &'a str,
    pub now_ms: i64,
}

const LEARNER_COLUMNS: &str = "l.workflow, l.step, l.version, l.examples, l.source, l.created_at_ms, \
    COALESCE(s.status, 'serving') AS status, s.requested_by, COALESCE(s.evidence, '{}') AS evidence";

const LEARNER_JOIN: &str = "learners l LEFT JOIN learner_states s ON s.workflow = l.workflow AND s.step = l.step AND s.version = l.version";

/// A [`LearnerRow`] from a row of [`LEARNER_COLUMNS`] (plus `model` when selected).
macro_rules! learner_row {
    ($row:expr, $model:expr) => {{
        let row = $row;
        Ok::<_, crate::Error>(LearnerRow {
            workflow: row.try_get("workflow")?,
            step: row.try_get("step")?,
            version: row.try_get("version")?,
            model: if $model {
                row.try_get("model")?
            } else {
                Vec::new()
            },
            examples: row.try_get("examples")?,
            source: row.try_get("source")?,
            created_at_ms: row.try_get("created_at_ms")?,
            status: row.try_get("status")?,
            requested_by: row.try_get("requested_by")?,
            evidence: row.try_get("evidence")?,
        })
    }};
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

    /// Stores a new version of a learner (one more than the latest) with its status, the
    /// hashes of the texts it learnt, an optional cursor move and its journal entry
    /// `announce(version)`, in one transaction; returns the version. `Ok(None)`: the cursor
    /// had moved (another node stored this batch), nothing was written.
    pub async fn save_learner(
        &self,
        new: &NewLearner<'_>,
        announce: &(dyn Fn(i64) -> NewEntry + Sync),
    ) -> Result<Option<i64>> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((key, old, value)) = new.cursor {
                let moved = match old {
                    None => sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                        .bind(key).bind(value).execute(&mut *tx).await?.rows_affected(),
                    Some(old) => sqlx::query("UPDATE meta SET value = $1 WHERE key = $2 AND value = $3")
                        .bind(value).bind(key).bind(old).execute(&mut *tx).await?.rows_affected(),
                };
                if moved != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            let latest: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM learners WHERE workflow = $1 AND step = $2",
            )
            .bind(new.workflow)
            .bind(new.step)
            .fetch_one(&mut *tx)
            .await?;
            let version = latest.unwrap_or(0) + 1;
            sqlx::query("INSERT INTO learners (workflow, step, version, model, examples, source, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(new.workflow)
                .bind(new.step)
                .bind(version)
                .bind(new.model)
                .bind(new.examples)
                .bind(new.source)
                .bind(new.now_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO learner_states (workflow, step, version, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5)")
                .bind(new.workflow)
                .bind(new.step)
                .bind(version)
                .bind(new.status)
                .bind(new.now_ms)
                .execute(&mut *tx)
                .await?;
            for chunk in new.trained.chunks(1_000) {
                let mut builder =
                    QueryBuilder::new("INSERT INTO learner_trained (workflow, step, text_sha256) ");
                builder.push_values(chunk, |mut row, sha| {
                    row.push_bind(new.workflow)
                        .push_bind(new.step)
                        .push_bind(sha);
                });
                builder.push(" ON CONFLICT DO NOTHING");
                builder.build().execute(&mut *tx).await?;
            }
            let entry = announce(version);
            insert_entries!(tx, std::slice::from_ref(&entry));
            tx.commit().await?;
            Ok(Some(version))
        })
    }

    /// Moves a learner version from `change.expected` to `change.status` with `entry`; when
    /// the new status is `serving`, the version serving before becomes `retired` and a force
    /// request is cleared. Returns whether it took (false: the status had moved).
    pub async fn set_learner_status(
        &self,
        change: &LearnerStatusChange<'_>,
        entry: &NewEntry,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let affected = sqlx::query(
                "UPDATE learner_states SET status = $1, evidence = $2, updated_at_ms = $3, \
                 requested_by = CASE WHEN $1 = 'serving' THEN NULL ELSE requested_by END \
                 WHERE workflow = $4 AND step = $5 AND version = $6 AND status = $7",
            )
            .bind(change.status)
            .bind(change.evidence)
            .bind(change.now_ms)
            .bind(change.workflow)
            .bind(change.step)
            .bind(change.version)
            .bind(change.expected)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            if change.status == "serving" {
                sqlx::query(
                    "UPDATE learner_states SET status = 'retired', updated_at_ms = $1 \
                     WHERE workflow = $2 AND step = $3 AND status = 'serving' AND version <> $4",
                )
                .bind(change.now_ms)
                .bind(change.workflow)
                .bind(change.step)
                .bind(change.version)
                .execute(&mut *tx)
                .await?;
            }
            insert_entries!(tx, std::slice::from_ref(entry));
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records (`Some(by)`) or clears (`None`) a request to serve a version without its test,
    /// with `entry`. Returns whether it took: a request needs none to be open already.
    pub async fn set_learner_request(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
        by: Option<&str>,
        entry: &NewEntry,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let guard = if by.is_some() {
                "requested_by IS NULL AND status <> 'serving'"
            } else {
                "requested_by IS NOT NULL"
            };
            let affected = sqlx::query(&format!(
                "UPDATE learner_states SET requested_by = $1 WHERE workflow = $2 AND step = $3 AND version = $4 AND {guard}"
            ))
            .bind(by)
            .bind(workflow)
            .bind(step)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_entries!(tx, std::slice::from_ref(entry));
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The newest version of every learner, whatever its status (with its model).
    pub async fn latest_learners(&self) -> Result<Vec<LearnerRow>> {
        self.learners_where("l.version = (SELECT MAX(m.version) FROM learners m WHERE m.workflow = l.workflow AND m.step = l.step)")
            .await
    }

    /// The serving version of every learner (with its model).
    pub async fn serving_learners(&self) -> Result<Vec<LearnerRow>> {
        self.learners_where("COALESCE(s.status, 'serving') = 'serving'")
            .await
    }

    /// Every learner with a challenger waiting for its test: (workflow, step).
    pub async fn learners_with_challengers(&self) -> Result<Vec<(String, String)>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_as(
                "SELECT DISTINCT workflow, step FROM learner_states WHERE status = 'challenger' ORDER BY workflow, step",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    async fn learners_where(&self, condition: &str) -> Result<Vec<LearnerRow>> {
        let sql = format!(
            "SELECT {LEARNER_COLUMNS}, l.model FROM {LEARNER_JOIN} WHERE {condition} ORDER BY l.workflow, l.step, l.version"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(|row| learner_row!(row, true)).collect()
        })
    }

    /// One stored version with its model.
    pub async fn learner_model(
        &self,
        workflow: &str,
        step: &str,
        version: i64,
    ) -> Result<Option<LearnerRow>> {
        let sql = format!(
            "SELECT {LEARNER_COLUMNS}, l.model FROM {LEARNER_JOIN} WHERE l.workflow = $1 AND l.step = $2 AND l.version = $3"
        );
        dispatch_read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(workflow)
                .bind(step)
                .bind(version)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(|row| learner_row!(row, true)).transpose()
        })
    }

    /// Every stored version of one learner, newest first, without the model bytes.
    pub async fn learner_versions(&self, workflow: &str, step: &str) -> Result<Vec<LearnerRow>> {
        let sql = format!(
            "SELECT {LEARNER_COLUMNS} FROM {LEARNER_JOIN} WHERE l.workflow = $1 AND l.step = $2 ORDER BY l.version DESC"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(workflow)
                .bind(step)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| learner_row!(row, false)).collect()
        })
    }

    /// The hashes of every text a learner has been trained on.
    pub async fn learner_trained(&self, workflow: &str, step: &str) -> Result<Vec<String>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT text_sha256 FROM learner_trained WHERE workflow = $1 AND step = $2",
            )
            .bind(workflow)
            .bind(step)
            .fetch_all(pool)
            .await?)
        })
    }

    /// People's verdicts on the proposals of `ai_step` (`workflow/step`) with a final label:
    /// (id, case id, final label), in id order after `after_id`, at most `limit`. Agreements and
    /// corrections only: a rejection says the action was wrong, not which label was right.
    pub async fn labelled_outcomes(
        &self,
        ai_step: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_as(
                "SELECT id, case_id, final_label FROM trust_outcomes WHERE ai_step = $1 AND id > $2 \
                 AND final_label IS NOT NULL AND verdict IN ('agree', 'corrected') ORDER BY id LIMIT $3",
            )
            .bind(ai_step)
            .bind(after_id)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?)
        })
    }

    /// The newest `limit` labelled outcomes of `ai_step`, newest first (an evaluation set).
    pub async fn newest_labelled_outcomes(
        &self,
        ai_step: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_as(
                "SELECT id, case_id, final_label FROM trust_outcomes WHERE ai_step = $1 \
                 AND final_label IS NOT NULL AND verdict IN ('agree', 'corrected') ORDER BY id DESC LIMIT $2",
            )
            .bind(ai_step)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?)
        })
    }
}
