//! The exception desk's writes: routing, escalation, SLA misses and assignment of exceptions.
//!
//! Each is one transaction: a conditional update of the `exceptions` row (it must still be
//! open, and still be where the desk saw it: unrouted, at the same ladder level, …) and, only
//! when that update took, the journal entry that records it. Two desks racing over the same
//! exception (two nodes, or a resolution landing meanwhile) therefore journal one change, and
//! a desk that crashes between reading and writing leaves nothing half done.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row};

use crate::exceptions::{exception_from, EXCEPTION_COLUMNS};
use crate::{Backend, ExceptionRow, NewEntry, Result, Store, ENTRIES_PER_INSERT, MAX_PAGE};

/// One desk change to an open exception.
#[derive(Debug, Clone, PartialEq)]
pub enum DeskChange {
    /// Placed in a queue (only if not routed yet).
    Routed {
        queue: String,
        priority: String,
        priority_rank: i64,
        routed_by: String,
        due_ms: Option<i64>,
        next_escalation_ms: Option<i64>,
    },
    /// Moved one ladder level up (only if still at `from_level`).
    Escalated {
        from_level: i64,
        queue: String,
        escalated_to: String,
        next_escalation_ms: Option<i64>,
        due_ms: Option<i64>,
        /// Escalating to another queue leaves the exception unassigned.
        clear_assignee: bool,
    },
    /// Its queue's SLA passed (only once).
    SlaMissed,
    /// Closed by a person (an exception that does not hold its case).
    Closed {
        by: String,
        at_ms: i64,
        resolution: String,
    },
    /// Given to a user (only while open; `expected_assignee` guards a claim against a race:
    /// `Some(None)` means "only if unassigned").
    Assigned {
        to: String,
        at_ms: i64,
        expected_assignee: Option<Option<String>>,
        /// Round-robin assignments move the queue's cursor.
        cursor_queue: Option<String>,
    },
}

impl Store {
    /// Applies `change` to exception `id` and, if it took, appends `entry`; returns whether
    /// it took.
    pub async fn desk_write(
        &self,
        id: &str,
        change: &DeskChange,
        entry: &NewEntry,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            if let Backend::Postgres(_) = self.backend {
                sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                    .execute(&mut *tx)
                    .await?;
            }
            let affected = match change {
                DeskChange::Routed { queue, priority, priority_rank, routed_by, due_ms, next_escalation_ms } => {
                    sqlx::query("UPDATE exceptions SET queue = $1, ladder_queue = $1, priority = $2, priority_rank = $3, routed_by = $4, due_ms = $5, next_escalation_ms = $6 WHERE id = $7 AND status = 'open' AND queue IS NULL")
                        .bind(queue).bind(priority).bind(priority_rank).bind(routed_by)
                        .bind(due_ms).bind(next_escalation_ms).bind(id)
                        .execute(&mut *tx).await?.rows_affected()
                }
                DeskChange::Escalated { from_level, queue, escalated_to, next_escalation_ms, due_ms, clear_assignee } => {
                    sqlx::query("UPDATE exceptions SET level = level + 1, queue = $1, escalated_to = $2, next_escalation_ms = $3, due_ms = COALESCE($4, due_ms), \
                                 assignee = CASE WHEN $5 = 1 THEN NULL ELSE assignee END, assigned_at_ms = CASE WHEN $5 = 1 THEN NULL ELSE assigned_at_ms END \
                                 WHERE id = $6 AND status = 'open' AND level = $7")
                        .bind(queue).bind(escalated_to).bind(next_escalation_ms).bind(due_ms)
                        .bind(i64::from(*clear_assignee)).bind(id).bind(from_level)
                        .execute(&mut *tx).await?.rows_affected()
                }
                DeskChange::Closed { by, at_ms, resolution } => {
                    sqlx::query("UPDATE exceptions SET status = 'resolved', resolved_at_ms = $1, resolved_by = $2, resolution = $3 WHERE id = $4 AND status = 'open'")
                        .bind(at_ms).bind(by).bind(resolution).bind(id)
                        .execute(&mut *tx).await?.rows_affected()
                }
                DeskChange::SlaMissed => {
                    sqlx::query("UPDATE exceptions SET sla_missed = 1 WHERE id = $1 AND status = 'open' AND sla_missed = 0")
                        .bind(id)
                        .execute(&mut *tx).await?.rows_affected()
                }
                DeskChange::Assigned { to, at_ms, expected_assignee, cursor_queue } => {
                    let affected = match expected_assignee {
                        None => sqlx::query("UPDATE exceptions SET assignee = $1, assigned_at_ms = $2 WHERE id = $3 AND status = 'open'")
                            .bind(to).bind(at_ms).bind(id)
                            .execute(&mut *tx).await?.rows_affected(),
                        Some(None) => sqlx::query("UPDATE exceptions SET assignee = $1, assigned_at_ms = $2 WHERE id = $3 AND status = 'open' AND assignee IS NULL")
                            .bind(to).bind(at_ms).bind(id)
                            .execute(&mut *tx).await?.rows_affected(),
                        Some(Some(current)) => sqlx::query("UPDATE exceptions SET assignee = $1, assigned_at_ms = $2 WHERE id = $3 AND status = 'open' AND assignee = $4")
                            .bind(to).bind(at_ms).bind(id).bind(current)
                            .execute(&mut *tx).await?.rows_affected(),
                    };
                    if let (1, Some(queue)) = (affected, cursor_queue) {
                        sqlx::query("INSERT INTO queue_cursors (queue, last_user) VALUES ($1, $2) ON CONFLICT (queue) DO UPDATE SET last_user = $2")
                            .bind(queue).bind(to)
                            .execute(&mut *tx).await?;
                    }
                    affected
                }
            };
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

    /// Open exceptions not routed yet, oldest first.
    pub async fn exceptions_unrouted(&self, limit: i64) -> Result<Vec<ExceptionRow>> {
        let sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE status = 'open' AND queue IS NULL ORDER BY raised_at_ms, id LIMIT $1"
        );
        self.desk_rows(&sql, None, limit).await
    }

    /// Open exceptions whose next ladder level is due by `now_ms`.
    pub async fn exceptions_escalation_due(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<ExceptionRow>> {
        let sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE status = 'open' AND next_escalation_ms <= $2 ORDER BY next_escalation_ms, id LIMIT $1"
        );
        self.desk_rows(&sql, Some(now_ms), limit).await
    }

    /// Open exceptions whose queue SLA passed by `now_ms` and is not recorded as missed.
    pub async fn exceptions_sla_due(&self, now_ms: i64, limit: i64) -> Result<Vec<ExceptionRow>> {
        let sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE status = 'open' AND sla_missed = 0 AND due_ms <= $2 ORDER BY due_ms, id LIMIT $1"
        );
        self.desk_rows(&sql, Some(now_ms), limit).await
    }

    async fn desk_rows(
        &self,
        sql: &str,
        now_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ExceptionRow>> {
        dispatch_read!(self, |pool| {
            let mut query = sqlx::query(sql).bind(limit.clamp(1, MAX_PAGE));
            if let Some(now_ms) = now_ms {
                query = query.bind(now_ms);
            }
            query
                .fetch_all(pool)
                .await?
                .iter()
                .map(exception_from)
                .collect()
        })
    }

    /// Open exceptions assigned per user (for least-loaded assignment).
    pub async fn open_exception_load(&self) -> Result<HashMap<String, i64>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT assignee, COUNT(*) AS n FROM exceptions WHERE status = 'open' AND assignee IS NOT NULL GROUP BY assignee")
                .fetch_all(pool)
                .await?;
            let mut load = HashMap::new();
            for row in rows {
                load.insert(
                    row.try_get::<String, _>("assignee")?,
                    row.try_get::<i64, _>("n")?,
                );
            }
            Ok(load)
        })
    }

    /// The user a round-robin queue assigned last.
    pub async fn queue_cursor(&self, queue: &str) -> Result<Option<String>> {
        dispatch_read!(self, |pool| {
            Ok(
                sqlx::query_scalar("SELECT last_user FROM queue_cursors WHERE queue = $1")
                    .bind(queue)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// Open exceptions per queue (unrouted ones under `None`), for queue depth.
    pub async fn open_exceptions_per_queue(&self) -> Result<Vec<(Option<String>, i64)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query("SELECT queue, COUNT(*) AS n FROM exceptions WHERE status = 'open' GROUP BY queue ORDER BY queue")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("queue")?, row.try_get("n")?)))
                .collect()
        })
    }
}
