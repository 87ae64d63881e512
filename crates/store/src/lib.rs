//! Persistence for Keel: one `Store` over SQLite (the embedded default) and PostgreSQL.
//!
//! Both backends share the same tables and, wherever the dialects agree, the same SQL (`$N`
//! parameters work in both); each method is written once and expanded per backend by the
//! `dispatch!` macro. Only this crate knows SQL. Writes that change a case go through
//! `commit`, which applies many cases' changes and their journal entries in one transaction
//! (group commit) with optimistic concurrency per case.

mod schema;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

/// Largest number of journal rows in one INSERT statement (SQLite allows 32,766 parameters).
const ENTRIES_PER_INSERT: usize = 2_000;
/// Largest number of ledger nodes in one INSERT statement.
const NODES_PER_INSERT: usize = 5_000;
/// Upper bound on any page a caller may ask for.
pub const MAX_PAGE: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unsupported database URL `{0}`: give a file path or sqlite://PATH for SQLite, or postgres://USER@HOST/DB for PostgreSQL")]
    Url(String),
    #[error("the stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
enum Backend {
    /// One connection writes (SQLite has one writer anyway); a pool reads beside it (WAL).
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres(PgPool),
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// Runs `$body` with `$pool` bound to the backend's writer pool.
macro_rules! dispatch {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { write: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's reader pool.
macro_rules! dispatch_read {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { read: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Appends journal rows inside the transaction `$tx`, in chunks that respect parameter limits.
macro_rules! insert_entries {
    ($tx:ident, $entries:expr) => {
        for chunk in $entries.chunks(ENTRIES_PER_INSERT) {
            let mut builder = QueryBuilder::new(
                "INSERT INTO journal (at, kind, actor_type, actor_id, case_id, workflow, step, data, data_sha256) ",
            );
            builder.push_values(chunk, |mut row, entry| {
                row.push_bind(&entry.at)
                    .push_bind(&entry.kind)
                    .push_bind(&entry.actor_type)
                    .push_bind(&entry.actor_id)
                    .push_bind(&entry.case_id)
                    .push_bind(&entry.workflow)
                    .push_bind(&entry.step)
                    .push_bind(&entry.data)
                    .push_bind(&entry.data_sha256);
            });
            builder.build().execute(&mut *$tx).await?;
        }
    };
}

/// Applies `tasks` projection changes inside the transaction `$tx`.
macro_rules! apply_task_changes {
    ($tx:ident, $changes:expr) => {
        for change in $changes {
            match change {
                tasks::TaskChange::Created(task) => {
                    sqlx::query("INSERT INTO tasks (id, case_id, workflow, step, kind, status, title, roles, required, approvals, approvers, amount, due_at_ms, overdue, created_at_ms, decided_at_ms, detail) VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, 0, '', $9, $10, 0, $11, NULL, $12) ON CONFLICT (id) DO NOTHING")
                        .bind(&task.id)
                        .bind(&task.case_id)
                        .bind(&task.workflow)
                        .bind(&task.step)
                        .bind(&task.kind)
                        .bind(&task.title)
                        .bind(task.roles.join(","))
                        .bind(task.required)
                        .bind(task.amount)
                        .bind(task.due_at_ms)
                        .bind(task.created_at_ms)
                        .bind(task.detail.to_string())
                        .execute(&mut *$tx)
                        .await?;
                }
                tasks::TaskChange::Approval { id, by } => {
                    sqlx::query("UPDATE tasks SET approvals = approvals + 1, approvers = CASE WHEN approvers = '' THEN $1 ELSE approvers || ',' || $1 END WHERE id = $2")
                        .bind(&by)
                        .bind(&id)
                        .execute(&mut *$tx)
                        .await?;
                }
                tasks::TaskChange::Completed { id, decision, at_ms } => {
                    sqlx::query("UPDATE tasks SET status = $1, decision = $1, decided_at_ms = $2 WHERE id = $3")
                        .bind(&decision)
                        .bind(at_ms)
                        .bind(&id)
                        .execute(&mut *$tx)
                        .await?;
                }
                tasks::TaskChange::Escalated { id, roles } => {
                    sqlx::query("UPDATE tasks SET roles = $1 WHERE id = $2")
                        .bind(roles.join(","))
                        .bind(&id)
                        .execute(&mut *$tx)
                        .await?;
                }
                tasks::TaskChange::Overdue { id } => {
                    sqlx::query("UPDATE tasks SET overdue = 1 WHERE id = $1")
                        .bind(&id)
                        .execute(&mut *$tx)
                        .await?;
                }
            }
        }
    };
}

// Declared here, after the macros it uses and before `commit`, which uses its macro.
#[macro_use]
mod exceptions;
pub use exceptions::{ExceptionFilter, ExceptionRow, Mine, PatternRow, Trend};
mod desk;
pub use desk::DeskChange;
#[macro_use]
mod trust;
pub use trust::{
    CalibratorRow, PhaseChange, RecommendationRow, TrustOperationRow, TrustOutcomeRow,
};

/// A deployed workflow version.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub name: String,
    pub version_no: i64,
    pub label: String,
    pub source: String,
    pub source_sha256: String,
    pub file: String,
    pub deployed_at_ms: i64,
    /// `active` (new cases may run it), `pending` (waits for a governor's approval: it
    /// changes what decides), `rejected` (never runs).
    pub status: String,
    /// Who wrote the version (`change.author`), when it names one.
    pub author: Option<String>,
    /// The governor who approved or rejected it, with the reason and the time.
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub decided_at_ms: Option<i64>,
    /// What changed for each operation against the version serving when it was deployed
    /// (JSON array of `{operation, what}`).
    pub changes: String,
}

/// How a new workflow version enters service.
#[derive(Debug, Clone)]
pub struct NewWorkflowVersion<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub source: &'a str,
    pub sha256: &'a str,
    pub file: &'a str,
    pub now_ms: i64,
    /// `active` or `pending`.
    pub status: &'a str,
    pub author: Option<&'a str>,
    /// JSON array of `{operation, what}`.
    pub changes: &'a str,
}

/// One journal entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub at: String,
    pub kind: String,
    pub actor_type: String,
    pub actor_id: String,
    pub case_id: Option<String>,
    pub workflow: Option<String>,
    pub step: Option<String>,
    pub data: String,
    pub data_sha256: String,
}

/// A stored journal entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JournalRow {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor_type: String,
    pub actor_id: String,
    pub case_id: Option<String>,
    pub workflow: Option<String>,
    pub step: Option<String>,
    pub task_id: Option<String>,
    pub exception_id: Option<String>,
    pub data: String,
    pub data_sha256: String,
}

impl JournalRow {
    /// The ledger envelope this row commits to.
    pub fn envelope(&self) -> keel_ledger::Envelope {
        keel_ledger::Envelope {
            seq: self.seq,
            at: self.at.clone(),
            kind: self.kind.clone(),
            actor: keel_ledger::Actor {
                actor_type: self.actor_type.clone(),
                id: self.actor_id.clone(),
            },
            subject: keel_ledger::Subject {
                case: self.case_id.clone(),
                workflow: self.workflow.clone(),
                step: self.step.clone(),
                task: self.task_id.clone(),
                exception: self.exception_id.clone(),
            },
            data_sha256: self.data_sha256.clone(),
        }
    }
}

/// How a case row is written.
#[derive(Debug, Clone)]
pub enum WriteMode {
    /// A new case; conflicts if the id or the (workflow, idempotency key) pair exists.
    Insert { idempotency_key: Option<String> },
    /// An existing case at exactly this version.
    Update { expected_version: i64 },
}

/// The new state of one case and the journal entries that explain it.
#[derive(Debug, Clone)]
pub struct CaseWrite {
    pub case_id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub mode: WriteMode,
    pub status: String,
    pub current_step: Option<String>,
    pub state: String,
    pub runnable_at_ms: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub sla_due_ms: Option<i64>,
    pub sla_breached: bool,
    pub now_ms: i64,
    pub entries: Vec<NewEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the case row is now at this version.
    Written { version: i64 },
    /// Not written: the case changed under us (update) or already exists (insert).
    Conflict,
}

/// A case row as a worker needs it.
#[derive(Debug, Clone)]
pub struct CaseRow {
    pub id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub status: String,
    pub current_step: Option<String>,
    pub state: String,
    pub version: i64,
    pub runnable_at_ms: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub sla_due_ms: Option<i64>,
    pub sla_breached: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub workflow: Option<String>,
    pub status: Option<String>,
    /// Return cases with ids strictly below this one (ids are time-ordered UUIDv7).
    pub before_id: Option<String>,
    pub limit: i64,
}

/// A checkpoint row.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub tree_size: i64,
    pub root: Vec<u8>,
    pub note: String,
    pub at_ms: i64,
}

/// A sequenced leaf with its journal entry.
#[derive(Debug, Clone)]
pub struct LeafRow {
    pub leaf_index: i64,
    pub leaf_hash: Vec<u8>,
    pub entry: JournalRow,
}

const CASE_COLUMNS: &str =
    "id, workflow, workflow_version, status, current_step, state, version, runnable_at_ms, \
     lease_owner, lease_until_ms, sla_due_ms, sla_breached, created_at_ms, updated_at_ms";
const JOURNAL_COLUMNS: &str =
    "seq, at, kind, actor_type, actor_id, case_id, workflow, step, task_id, exception_id, data, data_sha256";

fn case_row<R: Row>(row: &R) -> Result<CaseRow>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(CaseRow {
        id: row.try_get("id")?,
        workflow: row.try_get("workflow")?,
        workflow_version: row.try_get("workflow_version")?,
        status: row.try_get("status")?,
        current_step: row.try_get("current_step")?,
        state: row.try_get("state")?,
        version: row.try_get("version")?,
        runnable_at_ms: row.try_get("runnable_at_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        sla_due_ms: row.try_get("sla_due_ms")?,
        sla_breached: row.try_get::<i64, _>("sla_breached")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn journal_row<R: Row>(row: &R) -> Result<JournalRow>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(JournalRow {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor_type: row.try_get("actor_type")?,
        actor_id: row.try_get("actor_id")?,
        case_id: row.try_get("case_id")?,
        workflow: row.try_get("workflow")?,
        step: row.try_get("step")?,
        task_id: row.try_get("task_id")?,
        exception_id: row.try_get("exception_id")?,
        data: row.try_get("data")?,
        data_sha256: row.try_get("data_sha256")?,
    })
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`: a file path or
    /// `sqlite://PATH` for SQLite, `postgres://…` for PostgreSQL.
    pub async fn open(url: &str) -> Result<Store> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Store {
                backend: Backend::Postgres(pool),
            }
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if path.contains("://") {
                return Err(Error::Url(url.to_string()));
            }
            let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(|_| Error::Url(url.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-65536");
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            let read = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.read_only(true))
                .await;
            // A read-only pool cannot open a file that does not exist yet; the writer created it.
            let read = match read {
                Ok(pool) => pool,
                Err(_) => {
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(options_read(path)?)
                        .await?
                }
            };
            Store {
                backend: Backend::Sqlite { write, read },
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<()> {
        let migrations = match self.backend {
            Backend::Sqlite { .. } => schema::SQLITE,
            Backend::Postgres(_) => schema::POSTGRES,
        };
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                // Two nodes starting at once must not both migrate.
                sqlx::query("SELECT pg_advisory_xact_lock(7316)")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::raw_sql("CREATE TABLE IF NOT EXISTS keel_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)")
                .execute(&mut *tx)
                .await?;
            let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM keel_migrations")
                .fetch_all(&mut *tx)
                .await?;
            for (version, sql) in migrations {
                if applied.contains(version) {
                    continue;
                }
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO keel_migrations (version, applied_at_ms) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(0_i64)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    // ---------------------------------------------------------------- meta

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        dispatch!(self, |pool| {
            Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Sets `key` to `value` unless it is already set; returns the value in force.
    pub async fn meta_init(&self, key: &str, value: &str) -> Result<String> {
        dispatch!(self, |pool| {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value)
            .execute(pool)
            .await?;
            let value: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_one(pool)
                .await?;
            Ok(value)
        })
    }

    // ---------------------------------------------------------------- workflows

    /// Records a workflow version unless the latest version of `name` has the same source hash,
    /// together with the journal entry `announce(version_no)` in the same transaction.
    /// Returns the version number in force and whether it is new.
    pub async fn deploy_workflow(
        &self,
        new: &NewWorkflowVersion<'_>,
        announce: &(dyn Fn(i64) -> NewEntry + Sync),
    ) -> Result<(i64, bool)> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let latest: Option<(i64, String)> = sqlx::query_as(
                "SELECT version_no, source_sha256 FROM workflows WHERE name = $1 ORDER BY version_no DESC LIMIT 1",
            )
            .bind(new.name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((version_no, latest_sha)) = &latest {
                if latest_sha == new.sha256 {
                    return Ok((*version_no, false));
                }
            }
            let version_no = latest.map_or(1, |(version_no, _)| version_no + 1);
            sqlx::query(
                "INSERT INTO workflows (name, version_no, label, source, source_sha256, file, deployed_at_ms, status, author, changes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(new.name)
            .bind(version_no)
            .bind(new.label)
            .bind(new.source)
            .bind(new.sha256)
            .bind(new.file)
            .bind(new.now_ms)
            .bind(new.status)
            .bind(new.author)
            .bind(new.changes)
            .execute(&mut *tx)
            .await?;
            let entries = [announce(version_no)];
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok((version_no, true))
        })
    }

    /// A governor's decision on a pending version: `status` becomes `active` or `rejected`
    /// if the version is still pending, with `entry` in the same transaction. Returns whether
    /// it took (false: the version is not pending any more).
    #[allow(clippy::too_many_arguments)] // one decision's columns, each named at the call
    pub async fn decide_workflow(
        &self,
        name: &str,
        version_no: i64,
        status: &str,
        by: &str,
        reason: &str,
        at_ms: i64,
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
                "UPDATE workflows SET status = $1, decided_by = $2, decision_reason = $3, decided_at_ms = $4 \
                 WHERE name = $5 AND version_no = $6 AND status = 'pending'",
            )
            .bind(status)
            .bind(by)
            .bind(reason)
            .bind(at_ms)
            .bind(name)
            .bind(version_no)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            let entries = [entry];
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Every deployed version, oldest first.
    pub async fn workflow_versions(&self) -> Result<Vec<WorkflowRow>> {
        self.workflow_rows("", None).await
    }

    /// One deployed version.
    pub async fn workflow_version(
        &self,
        name: &str,
        version_no: i64,
    ) -> Result<Option<WorkflowRow>> {
        Ok(self
            .workflow_rows(
                "WHERE name = $1 AND version_no = $2",
                Some((name, version_no)),
            )
            .await?
            .pop())
    }

    async fn workflow_rows(
        &self,
        condition: &str,
        key: Option<(&str, i64)>,
    ) -> Result<Vec<WorkflowRow>> {
        let sql = format!(
            "SELECT name, version_no, label, source, source_sha256, file, deployed_at_ms, status, author, \
             decided_by, decision_reason, decided_at_ms, changes FROM workflows {condition} ORDER BY name, version_no"
        );
        dispatch_read!(self, |pool| {
            let mut query = sqlx::query(&sql);
            if let Some((name, version_no)) = key {
                query = query.bind(name).bind(version_no);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(WorkflowRow {
                        name: row.try_get(0)?,
                        version_no: row.try_get(1)?,
                        label: row.try_get(2)?,
                        source: row.try_get(3)?,
                        source_sha256: row.try_get(4)?,
                        file: row.try_get(5)?,
                        deployed_at_ms: row.try_get(6)?,
                        status: row.try_get(7)?,
                        author: row.try_get(8)?,
                        decided_by: row.try_get(9)?,
                        decision_reason: row.try_get(10)?,
                        decided_at_ms: row.try_get(11)?,
                        changes: row.try_get(12)?,
                    })
                })
                .collect()
        })
    }

    // ---------------------------------------------------------------- cases

    /// Applies many case writes in one transaction; each gets its own outcome. A case whose
    /// version moved (or whose insert conflicts) is skipped with its entries; the rest commit.
    pub async fn commit(&self, writes: &[CaseWrite]) -> Result<Vec<WriteOutcome>> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut entries: Vec<&NewEntry> = Vec::new();
            for write in writes {
                let affected = match &write.mode {
                    WriteMode::Insert { idempotency_key } => sqlx::query(
                        "INSERT INTO cases (id, workflow, workflow_version, idempotency_key, status, current_step, state, version, \
                         runnable_at_ms, lease_owner, lease_until_ms, sla_due_ms, sla_breached, created_at_ms, updated_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12, $13, $13) ON CONFLICT DO NOTHING",
                    )
                    .bind(&write.case_id)
                    .bind(&write.workflow)
                    .bind(write.workflow_version)
                    .bind(idempotency_key)
                    .bind(&write.status)
                    .bind(&write.current_step)
                    .bind(&write.state)
                    .bind(write.runnable_at_ms)
                    .bind(&write.lease_owner)
                    .bind(write.lease_until_ms)
                    .bind(write.sla_due_ms)
                    .bind(i64::from(write.sla_breached))
                    .bind(write.now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                    WriteMode::Update { expected_version } => sqlx::query(
                        "UPDATE cases SET status = $1, current_step = $2, state = $3, version = version + 1, runnable_at_ms = $4, \
                         lease_owner = $5, lease_until_ms = $6, sla_due_ms = $7, sla_breached = $8, updated_at_ms = $9 \
                         WHERE id = $10 AND version = $11",
                    )
                    .bind(&write.status)
                    .bind(&write.current_step)
                    .bind(&write.state)
                    .bind(write.runnable_at_ms)
                    .bind(&write.lease_owner)
                    .bind(write.lease_until_ms)
                    .bind(write.sla_due_ms)
                    .bind(i64::from(write.sla_breached))
                    .bind(write.now_ms)
                    .bind(&write.case_id)
                    .bind(*expected_version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                };
                if affected == 1 {
                    let version = match &write.mode {
                        WriteMode::Insert { .. } => 1,
                        WriteMode::Update { expected_version } => expected_version + 1,
                    };
                    outcomes.push(WriteOutcome::Written { version });
                    entries.extend(write.entries.iter());
                } else {
                    outcomes.push(WriteOutcome::Conflict);
                }
            }
            if let Backend::Postgres(_) = self.backend {
                // Serialise journal appends so that sequence numbers commit in order and the
                // sequencer can never skip an entry that commits late.
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            insert_entries!(tx, entries);
            apply_task_changes!(tx, tasks::task_changes(entries.iter().copied()));
            apply_exception_changes!(tx, exceptions::exception_changes(entries.iter().copied()));
            apply_trust_outcomes!(tx, trust::outcome_rows(entries.iter().copied()));
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    /// Appends journal entries that belong to no case change (system events, benchmarks).
    pub async fn append(&self, entries: &[NewEntry]) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            insert_entries!(tx, entries);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Leases up to `limit` runnable cases (due, and unleased or with an expired lease) to `owner`.
    pub async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<CaseRow>> {
        let sql = match self.backend {
            Backend::Sqlite { .. } => format!(
                "UPDATE cases SET lease_owner = $1, lease_until_ms = $2 WHERE id IN (SELECT id FROM cases \
                 WHERE runnable_at_ms <= $3 AND (lease_until_ms IS NULL OR lease_until_ms < $3) \
                 ORDER BY runnable_at_ms LIMIT $4) RETURNING {CASE_COLUMNS}"
            ),
            Backend::Postgres(_) => format!(
                "UPDATE cases SET lease_owner = $1, lease_until_ms = $2 WHERE id IN (SELECT id FROM cases \
                 WHERE runnable_at_ms <= $3 AND (lease_until_ms IS NULL OR lease_until_ms < $3) \
                 ORDER BY runnable_at_ms LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {CASE_COLUMNS}"
            ),
        };
        dispatch!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(owner)
                .bind(lease_until_ms)
                .bind(now_ms)
                .bind(limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?;
            rows.iter().map(case_row).collect()
        })
    }

    /// Extends the lease of cases `owner` holds.
    pub async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease_until_ms: i64,
    ) -> Result<()> {
        dispatch!(self, |pool| {
            for chunk in ids.chunks(500) {
                let mut builder = QueryBuilder::new("UPDATE cases SET lease_until_ms = ");
                builder
                    .push_bind(lease_until_ms)
                    .push(" WHERE lease_owner = ")
                    .push_bind(owner)
                    .push(" AND id IN (");
                let mut separated = builder.separated(", ");
                for id in chunk {
                    separated.push_bind(id);
                }
                separated.push_unseparated(")");
                builder.build().execute(pool).await?;
            }
            Ok(())
        })
    }

    /// Drops every lease `owner` holds (start-up of a node that reuses its id, or shutdown).
    pub async fn release_leases(&self, owner: &str) -> Result<u64> {
        dispatch!(self, |pool| {
            Ok(sqlx::query(
                "UPDATE cases SET lease_owner = NULL, lease_until_ms = NULL WHERE lease_owner = $1",
            )
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }

    pub async fn case(&self, id: &str) -> Result<Option<CaseRow>> {
        let sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = $1");
        dispatch_read!(self, |pool| {
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(case_row).transpose()
        })
    }

    pub async fn case_by_idempotency_key(
        &self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<CaseRow>> {
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE workflow = $1 AND idempotency_key = $2"
        );
        dispatch_read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(workflow)
                .bind(key)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(case_row).transpose()
        })
    }

    /// Cases newest first, filtered; page with `before_id` set to the last id of the previous page.
    pub async fn cases(&self, filter: &CaseFilter) -> Result<Vec<CaseRow>> {
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE ($1 IS NULL OR workflow = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(&filter.workflow)
                .bind(&filter.status)
                .bind(&filter.before_id)
                .bind(filter.limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?;
            rows.iter().map(case_row).collect()
        })
    }

    /// Number of cases per status.
    pub async fn case_counts(&self) -> Result<Vec<(String, i64)>> {
        dispatch_read!(self, |pool| {
            Ok(
                sqlx::query_as(
                    "SELECT status, COUNT(*) FROM cases GROUP BY status ORDER BY status",
                )
                .fetch_all(pool)
                .await?,
            )
        })
    }

    /// Cases whose next SLA deadline has passed.
    pub async fn sla_due(&self, now_ms: i64, limit: i64) -> Result<Vec<CaseRow>> {
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE sla_due_ms <= $1 ORDER BY sla_due_ms LIMIT $2"
        );
        dispatch!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(now_ms)
                .bind(limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?;
            rows.iter().map(case_row).collect()
        })
    }

    /// The earliest time any case becomes runnable, if any.
    pub async fn next_runnable_at(&self) -> Result<Option<i64>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT MIN(runnable_at_ms) FROM cases WHERE runnable_at_ms IS NOT NULL",
            )
            .fetch_one(pool)
            .await?)
        })
    }

    /// The journal entries of one case, in order.
    pub async fn timeline(&self, case_id: &str, limit: i64) -> Result<Vec<JournalRow>> {
        let sql = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal WHERE case_id = $1 ORDER BY seq LIMIT $2"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(case_id)
                .bind(limit.clamp(1, 10 * MAX_PAGE))
                .fetch_all(pool)
                .await?;
            rows.iter().map(journal_row).collect()
        })
    }

    // ---------------------------------------------------------------- ledger

    /// Journal entries with `seq > after_seq`, oldest first.
    pub async fn journal_after(&self, after_seq: i64, limit: i64) -> Result<Vec<JournalRow>> {
        let sql =
            format!("SELECT {JOURNAL_COLUMNS} FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2");
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(journal_row).collect()
        })
    }

    /// (tree size, seq of the last sequenced entry).
    pub async fn tree_state(&self) -> Result<(u64, i64)> {
        dispatch!(self, |pool| {
            let row: (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT MAX(leaf_index), MAX(seq) FROM ledger_leaves")
                    .fetch_one(pool)
                    .await?;
            let size = row.0.map_or(0, |index| index as u64 + 1);
            Ok((size, row.1.unwrap_or(0)))
        })
    }

    /// Appends sequenced leaves and the perfect-subtree nodes they completed (level ≥ 1).
    pub async fn append_tree(
        &self,
        leaves: &[(i64, i64, Vec<u8>)],
        nodes: &[(i64, i64, Vec<u8>)],
    ) -> Result<()> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in leaves.chunks(NODES_PER_INSERT) {
                let mut builder =
                    QueryBuilder::new("INSERT INTO ledger_leaves (leaf_index, seq, leaf_hash) ");
                builder.push_values(chunk, |mut row, (index, seq, hash)| {
                    row.push_bind(*index).push_bind(*seq).push_bind(hash);
                });
                builder.build().execute(&mut *tx).await?;
            }
            for chunk in nodes.chunks(NODES_PER_INSERT) {
                let mut builder = QueryBuilder::new("INSERT INTO ledger_nodes (level, idx, hash) ");
                builder.push_values(chunk, |mut row, (level, index, hash)| {
                    row.push_bind(*level).push_bind(*index).push_bind(hash);
                });
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Hashes of the given perfect-subtree nodes; level 0 reads leaves. Missing ones are
    /// absent. Two queries whatever the number of nodes (a proof needs a few dozen).
    pub async fn tree_nodes(&self, wanted: &[(u8, u64)]) -> Result<Vec<((u8, u64), Vec<u8>)>> {
        let leaves: Vec<i64> = wanted
            .iter()
            .filter(|(level, _)| *level == 0)
            .map(|(_, index)| *index as i64)
            .collect();
        let nodes: Vec<(i64, i64)> = wanted
            .iter()
            .filter(|(level, _)| *level > 0)
            .map(|(level, index)| (i64::from(*level), *index as i64))
            .collect();
        // Leaves and interior nodes are read at the same time, on two connections.
        let (leaf_rows, node_rows) = dispatch_read!(self, |pool| {
            let leaf_rows = async {
                let mut found = Vec::new();
                for chunk in leaves.chunks(NODES_PER_INSERT) {
                    let mut builder = QueryBuilder::new(
                        "SELECT leaf_index, leaf_hash FROM ledger_leaves WHERE leaf_index IN (",
                    );
                    let mut list = builder.separated(", ");
                    for index in chunk {
                        list.push_bind(*index);
                    }
                    list.push_unseparated(")");
                    let rows: Vec<(i64, Vec<u8>)> =
                        builder.build_query_as().fetch_all(pool).await?;
                    found.extend(
                        rows.into_iter()
                            .map(|(index, hash)| ((0u8, index as u64), hash)),
                    );
                }
                Ok::<_, Error>(found)
            };
            let node_rows = async {
                let mut found = Vec::new();
                for chunk in nodes.chunks(NODES_PER_INSERT / 2) {
                    let mut builder = QueryBuilder::new(
                        "SELECT level, idx, hash FROM ledger_nodes WHERE (level, idx) IN (VALUES ",
                    );
                    let mut list = builder.separated(", ");
                    for (level, index) in chunk {
                        list.push("(");
                        list.push_bind_unseparated(*level);
                        list.push_unseparated(", ");
                        list.push_bind_unseparated(*index);
                        list.push_unseparated(")");
                    }
                    builder.push(")");
                    let rows: Vec<(i64, i64, Vec<u8>)> =
                        builder.build_query_as().fetch_all(pool).await?;
                    found.extend(
                        rows.into_iter()
                            .map(|(level, index, hash)| ((level as u8, index as u64), hash)),
                    );
                }
                Ok::<_, Error>(found)
            };
            tokio::join!(leaf_rows, node_rows)
        });
        let mut found = leaf_rows?;
        found.extend(node_rows?);
        Ok(found)
    }

    /// Leaves with their entries, by leaf index from `from_index`, for verification and export.
    pub async fn leaves(&self, from_index: i64, limit: i64) -> Result<Vec<LeafRow>> {
        let sql = "SELECT l.leaf_index, l.leaf_hash, j.seq, j.at, j.kind, j.actor_type, j.actor_id, j.case_id, j.workflow, \
                   j.step, j.task_id, j.exception_id, j.data, j.data_sha256 \
                   FROM ledger_leaves l LEFT JOIN journal j ON j.seq = l.seq WHERE l.leaf_index >= $1 ORDER BY l.leaf_index LIMIT $2";
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(from_index)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut leaves = Vec::with_capacity(rows.len());
            for row in &rows {
                let leaf_index: i64 = row.try_get("leaf_index")?;
                let seq: Option<i64> = row.try_get("seq")?;
                if seq.is_none() {
                    return Err(Error::Corrupt(format!(
                        "leaf {leaf_index} points at a journal entry that does not exist"
                    )));
                }
                leaves.push(LeafRow {
                    leaf_index,
                    leaf_hash: row.try_get("leaf_hash")?,
                    entry: journal_row(row)?,
                });
            }
            Ok(leaves)
        })
    }

    /// The same rows as `leaves`, packed by the database into one JSON array per call. Bulk
    /// readers (verification, export) use this: the driver then moves one value per page
    /// instead of one message per row, which was the bottleneck of reading a large ledger.
    pub async fn leaves_packed(&self, from_index: i64, limit: i64) -> Result<Vec<LeafRow>> {
        let sql = match self.backend {
            Backend::Sqlite { .. } => {
                "SELECT json_group_array(json_array(leaf_index, hex(leaf_hash), seq, at, kind, actor_type, actor_id, case_id, \
                 workflow, step, task_id, exception_id, data, data_sha256)) FROM (SELECT l.leaf_index, l.leaf_hash, j.seq, j.at, \
                 j.kind, j.actor_type, j.actor_id, j.case_id, j.workflow, j.step, j.task_id, j.exception_id, j.data, j.data_sha256 \
                 FROM ledger_leaves l LEFT JOIN journal j ON j.seq = l.seq WHERE l.leaf_index >= $1 ORDER BY l.leaf_index LIMIT $2)"
            }
            Backend::Postgres(_) => {
                "SELECT COALESCE(json_agg(json_build_array(leaf_index, encode(leaf_hash, 'hex'), seq, at, kind, actor_type, actor_id, \
                 case_id, workflow, step, task_id, exception_id, data, data_sha256) ORDER BY leaf_index), '[]')::text FROM \
                 (SELECT l.leaf_index, l.leaf_hash, j.seq, j.at, j.kind, j.actor_type, j.actor_id, j.case_id, j.workflow, j.step, \
                 j.task_id, j.exception_id, j.data, j.data_sha256 FROM ledger_leaves l LEFT JOIN journal j ON j.seq = l.seq \
                 WHERE l.leaf_index >= $1 ORDER BY l.leaf_index LIMIT $2) page"
            }
        };
        let packed: Option<String> = dispatch_read!(self, |pool| sqlx::query_scalar(sql)
            .bind(from_index)
            .bind(limit)
            .fetch_one(pool)
            .await?);
        // Columns of a page row; all optional so that a leaf without its entry is reported
        // as such rather than as unreadable JSON.
        type Packed = (
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Packed> = match packed.as_deref() {
            None | Some("") => Vec::new(),
            Some(text) => serde_json::from_str(text)
                .map_err(|error| Error::Corrupt(format!("unreadable ledger page: {error}")))?,
        };
        let mut leaves = Vec::with_capacity(rows.len());
        for (
            leaf_index,
            hash_hex,
            seq,
            at,
            kind,
            actor_type,
            actor_id,
            case_id,
            workflow,
            step,
            task_id,
            exception_id,
            data,
            data_sha256,
        ) in rows
        {
            let Some(seq) = seq else {
                return Err(Error::Corrupt(format!(
                    "leaf {leaf_index} points at a journal entry that does not exist"
                )));
            };
            let leaf_hash = hex::decode(&hash_hex)
                .map_err(|_| Error::Corrupt(format!("leaf {leaf_index} has a malformed hash")))?;
            let entry = JournalRow {
                seq,
                at: at.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                actor_type: actor_type.unwrap_or_default(),
                actor_id: actor_id.unwrap_or_default(),
                case_id,
                workflow,
                step,
                task_id,
                exception_id,
                data: data.unwrap_or_default(),
                data_sha256: data_sha256.unwrap_or_default(),
            };
            leaves.push(LeafRow {
                leaf_index,
                leaf_hash,
                entry,
            });
        }
        Ok(leaves)
    }

    pub async fn journal_count(&self) -> Result<i64> {
        dispatch_read!(self, |pool| Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM journal"
        )
        .fetch_one(pool)
        .await?))
    }

    pub async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> Result<()> {
        dispatch!(self, |pool| {
            sqlx::query("INSERT INTO checkpoints (tree_size, root, note, at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(checkpoint.tree_size)
                .bind(&checkpoint.root)
                .bind(&checkpoint.note)
                .bind(checkpoint.at_ms)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>> {
        self.checkpoint_where("ORDER BY tree_size DESC LIMIT 1", None)
            .await
    }

    /// The checkpoint for exactly `tree_size`, if one was written.
    pub async fn checkpoint(&self, tree_size: i64) -> Result<Option<CheckpointRow>> {
        self.checkpoint_where("WHERE tree_size = $1", Some(tree_size))
            .await
    }

    /// One checkpoint selected by a fixed `clause` (never built from data), with an optional size bound to `$1`.
    async fn checkpoint_where(
        &self,
        clause: &str,
        tree_size: Option<i64>,
    ) -> Result<Option<CheckpointRow>> {
        let sql = format!("SELECT tree_size, root, note, at_ms FROM checkpoints {clause}");
        dispatch_read!(self, |pool| {
            let mut query = sqlx::query_as::<_, (i64, Vec<u8>, String, i64)>(&sql);
            if let Some(size) = tree_size {
                query = query.bind(size);
            }
            let row = query.fetch_optional(pool).await?;
            Ok(row.map(|(tree_size, root, note, at_ms)| CheckpointRow {
                tree_size,
                root,
                note,
                at_ms,
            }))
        })
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        dispatch_read!(self, |pool| {
            let rows: Vec<(i64, Vec<u8>, String, i64)> = sqlx::query_as(
                "SELECT tree_size, root, note, at_ms FROM checkpoints ORDER BY tree_size",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(tree_size, root, note, at_ms)| CheckpointRow {
                    tree_size,
                    root,
                    note,
                    at_ms,
                })
                .collect())
        })
    }

    // ---------------------------------------------------------------- leader leases

    /// Takes or renews the named lease for `owner` until `until_ms` if it is free, expired or
    /// already `owner`'s. Returns whether `owner` holds it now.
    pub async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let affected = sqlx::query(
                "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                 SET owner = excluded.owner, until_ms = excluded.until_ms WHERE leases.owner = excluded.owner OR leases.until_ms < $4",
            )
            .bind(name)
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(affected == 1)
        })
    }

    /// Tampering, for tests only: runs `sql` with the append-only triggers dropped and restored
    /// (SQLite). Exists so that tests can prove `audit verify` catches what triggers cannot.
    #[doc(hidden)]
    pub async fn tamper_sqlite(&self, sql: &str) -> Result<()> {
        let Backend::Sqlite { write, .. } = &self.backend else {
            return Err(Error::Corrupt(
                "tampering helper supports SQLite only".into(),
            ));
        };
        let mut tx = write.begin().await?;
        sqlx::raw_sql("DROP TRIGGER journal_no_update")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::raw_sql(
            "CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal BEGIN SELECT RAISE(ABORT, 'keel: journal is append-only'); END;",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs raw SQL (tests: prove the triggers reject UPDATE and DELETE).
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        dispatch!(self, |pool| Ok(sqlx::raw_sql(sql)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Runs one administrative statement (CREATE/DROP DATABASE) on a PostgreSQL server.
    /// The statement is fixed by the caller, never built from user input.
    pub async fn admin_execute(url: &str, statement: &str) -> Result<()> {
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::raw_sql(statement).execute(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// Size of a PostgreSQL database in bytes.
    pub async fn postgres_database_size(&self, name: &str) -> Result<u64> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(0);
        };
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size($1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
        Ok(size as u64)
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { write, read } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

fn options_read(path: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|_| Error::Url(path.to_string()))?
        .busy_timeout(Duration::from_secs(30)))
}

mod ai;
mod drift;
pub use drift::{alert_transition, AlertState, AlertTransition, DriftObservation, DriftResultRow};
mod report;
pub use report::{
    BulkCase, BulkException, BulkOutcome, BulkPattern, BulkRows, CallSummaryRow, CaseCountRow,
    ConfidenceGroup, ExceptionCountRow, GateRow, GatedCasesRow, HistogramRow, LatencyRow,
    NewPatternRow, ProposalRow, ReportWindow, ReviewCountRow,
};
mod metrics;
pub use metrics::CountedEntry;
mod tasks;
pub use ai::{AiCallRow, LearnerRow, LearnerStatusChange, NewLearner, SpendRow, TokenRow};
pub use tasks::{TaskFilter, TaskRow, UserRow};
mod webhooks;
pub use webhooks::{
    WebhookAttemptRow, WebhookDeliveryFilter, WebhookDeliveryRow, WEBHOOK_DELIVERED,
    WEBHOOK_FAILED, WEBHOOK_PENDING,
};
