//! Tasks and users.
//!
//! `tasks` is a projection of the journal: `commit` updates it from the `task.*` entries it
//! writes, in the same transaction, so the task list can never disagree with the journal (and
//! a rebuild can replay it). The case state holds the authoritative open task; this table is
//! for listing and lookup by id.

use serde_json::Value;
use sqlx::{QueryBuilder, Row};

use crate::{Backend, NewEntry, Result, Store, ENTRIES_PER_INSERT, MAX_PAGE};

/// One task as listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRow {
    pub id: String,
    pub case_id: String,
    pub workflow: String,
    pub step: String,
    /// `approval` or `action`.
    pub kind: String,
    /// `open`, `approved`, `corrected` or `rejected`.
    pub status: String,
    pub title: String,
    pub roles: Vec<String>,
    pub required: i64,
    pub approvals: i64,
    pub approvers: Vec<String>,
    pub amount: Option<f64>,
    pub due_at_ms: Option<i64>,
    pub overdue: bool,
    pub created_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    /// The `task.created` entry's data: proposals, the action preview, who submitted.
    pub detail: Value,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<String>,
    pub workflow: Option<String>,
    /// Only tasks one of these roles may decide (`admin` sees all).
    pub roles: Option<Vec<String>>,
    /// Only tasks of this kind (`approval`, `review`, `retro_review`, …).
    pub kind: Option<String>,
    /// Most recent first: for a retro-review queue, by demotion and then by when the action
    /// was taken (`detail.acted_at`), newest first.
    pub newest_first: bool,
    pub limit: i64,
}

/// A user: roles and an approval limit, referred to by API tokens' subject.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UserRow {
    pub name: String,
    pub display_name: String,
    pub roles: Vec<String>,
    pub approval_limit: Option<f64>,
    pub disabled: bool,
    pub created_at_ms: i64,
}

/// One change to the `tasks` projection, read from a journal entry.
pub(crate) enum TaskChange {
    Created(Box<TaskRow>),
    Approval {
        id: String,
        by: String,
    },
    Completed {
        id: String,
        decision: String,
        at_ms: i64,
    },
    Overdue {
        id: String,
    },
    Escalated {
        id: String,
        roles: Vec<String>,
    },
}

fn entry_ms(entry: &NewEntry) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&entry.at).map_or(0, |t| t.timestamp_millis())
}

/// The projection changes of `entries`, in order.
pub(crate) fn task_changes<'e>(entries: impl Iterator<Item = &'e NewEntry>) -> Vec<TaskChange> {
    let mut changes = Vec::new();
    for entry in entries {
        if !entry.kind.starts_with("task.") {
            continue;
        }
        let Ok(data) = serde_json::from_str::<Value>(&entry.data) else {
            continue;
        };
        let id = data["task_id"].as_str().unwrap_or_default().to_string();
        let text = |key: &str| data[key].as_str().unwrap_or_default().to_string();
        match entry.kind.as_str() {
            "task.created" => changes.push(TaskChange::Created(Box::new(TaskRow {
                id,
                case_id: entry.case_id.clone().unwrap_or_default(),
                workflow: entry.workflow.clone().unwrap_or_default(),
                step: entry.step.clone().unwrap_or_default(),
                kind: text("kind"),
                status: "open".into(),
                title: text("title"),
                roles: data["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                required: data["required"].as_i64().unwrap_or(1),
                approvals: 0,
                approvers: Vec::new(),
                amount: data["amount"].as_f64(),
                due_at_ms: data["due_ms"].as_i64(),
                overdue: false,
                created_at_ms: entry_ms(entry),
                decided_at_ms: None,
                detail: data.clone(),
            }))),
            "task.approval_recorded" => changes.push(TaskChange::Approval { id, by: text("by") }),
            "task.completed" => changes.push(TaskChange::Completed {
                id,
                decision: text("decision"),
                at_ms: entry_ms(entry),
            }),
            "task.overdue" => changes.push(TaskChange::Overdue { id }),
            "task.escalated" => changes.push(TaskChange::Escalated {
                id,
                roles: data["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            _ => {}
        }
    }
    changes
}

fn task_from<R: Row>(row: &R) -> Result<TaskRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let split = |text: String| -> Vec<String> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let detail: String = row.try_get("detail")?;
    Ok(TaskRow {
        id: row.try_get("id")?,
        case_id: row.try_get("case_id")?,
        workflow: row.try_get("workflow")?,
        step: row.try_get("step")?,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        title: row.try_get("title")?,
        roles: split(row.try_get("roles")?),
        required: row.try_get("required")?,
        approvals: row.try_get("approvals")?,
        approvers: split(row.try_get("approvers")?),
        amount: row.try_get("amount")?,
        due_at_ms: row.try_get("due_at_ms")?,
        overdue: row.try_get::<i64, _>("overdue")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
    })
}

const TASK_COLUMNS: &str = "id, case_id, workflow, step, kind, status, title, roles, required, approvals, approvers, amount, due_at_ms, overdue, created_at_ms, decided_at_ms, detail";

fn user_from<R: Row>(row: &R) -> Result<UserRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let roles: String = row.try_get("roles")?;
    Ok(UserRow {
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        approval_limit: row.try_get("approval_limit")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl Store {
    /// One task by id.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        dispatch_read!(self, |pool| {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(task_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Tasks, oldest first (a queue), filtered; at most `limit` (capped at [`MAX_PAGE`]).
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRow>> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let order = if filter.newest_first {
            "created_at_ms DESC, id DESC"
        } else {
            "created_at_ms, id"
        };
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR workflow = $2) \
             AND ($3 IS NULL OR kind = $3) ORDER BY {order} LIMIT $4"
        );
        // Role filtering happens after the read: roles are a short list per task; so does the
        // order within one demotion's retro reviews (one `created_at_ms`).
        let over_fetch = if filter.roles.is_some() || filter.newest_first {
            MAX_PAGE * 5
        } else {
            limit
        };
        let mut rows: Vec<TaskRow> = dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(&filter.status)
                .bind(&filter.workflow)
                .bind(&filter.kind)
                .bind(over_fetch)
                .fetch_all(pool)
                .await?
                .iter()
                .map(task_from)
                .collect::<Result<Vec<_>>>()
        })?;
        if filter.newest_first {
            rows.sort_by(|a, b| {
                let acted = |t: &TaskRow| {
                    t.detail["acted_at"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                (b.created_at_ms, acted(b), &b.id).cmp(&(a.created_at_ms, acted(a), &a.id))
            });
        }
        Ok(rows
            .into_iter()
            .filter(|task| match &filter.roles {
                None => true,
                Some(roles) => roles
                    .iter()
                    .any(|role| role == "admin" || task.roles.contains(role)),
            })
            .take(limit as usize)
            .collect())
    }

    /// The ids of up to `limit` open tasks, oldest first (benchmarks and bulk tools).
    pub async fn open_task_ids(&self, limit: i64) -> Result<Vec<String>> {
        dispatch_read!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT id FROM tasks WHERE status = 'open' ORDER BY created_at_ms, id LIMIT $1",
            )
            .bind(limit.max(0))
            .fetch_all(pool)
            .await?)
        })
    }

    // ---------------------------------------------------------------- users

    /// Adds a user (or replaces a disabled one's settings) with its journal entry.
    pub async fn add_user(&self, user: &UserRow, entry: &NewEntry) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query("INSERT INTO users (name, display_name, roles, approval_limit, disabled, created_at_ms) VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (name) DO NOTHING")
                .bind(&user.name)
                .bind(&user.display_name)
                .bind(user.roles.join(","))
                .bind(user.approval_limit)
                .bind(user.created_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 1 {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, std::slice::from_ref(entry));
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        dispatch_read!(self, |pool| {
            match sqlx::query("SELECT name, display_name, roles, approval_limit, disabled, created_at_ms FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Ok(Some(user_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        dispatch_read!(self, |pool| {
            sqlx::query("SELECT name, display_name, roles, approval_limit, disabled, created_at_ms FROM users ORDER BY name")
                .fetch_all(pool)
                .await?
                .iter()
                .map(user_from)
                .collect()
        })
    }

    /// Disables a user (their tokens stop working); returns whether one was changed.
    pub async fn disable_user(&self, name: &str, entry: &NewEntry) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let changed =
                sqlx::query("UPDATE users SET disabled = 1 WHERE name = $1 AND disabled = 0")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if changed == 1 {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, std::slice::from_ref(entry));
            }
            tx.commit().await?;
            Ok(changed == 1)
        })
    }
}
