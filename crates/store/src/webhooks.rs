//! The outbound-webhook outbox: a cursor over the journal per endpoint, one delivery row per
//! (endpoint, journal entry) with its status and retry schedule, and one row per attempt.
//!
//! Enqueueing advances the cursor in the same transaction as the inserts, guarded by the
//! cursor's previous value, so a crash or a second node can neither lose nor duplicate an
//! event. Every attempt's result is written together with the delivery's new status (and, when
//! the delivery gives up, its `webhook.failed` journal entry).

use sqlx::{QueryBuilder, Row};

use crate::{Backend, NewEntry, Result, Store, ENTRIES_PER_INSERT, MAX_PAGE};

/// A delivery waits for its next attempt.
pub const WEBHOOK_PENDING: &str = "pending";
/// The receiver answered 2xx.
pub const WEBHOOK_DELIVERED: &str = "delivered";
/// Every allowed attempt failed; a `webhook.failed` entry is in the journal.
pub const WEBHOOK_FAILED: &str = "failed";

/// One event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookDeliveryRow {
    /// Stable across retries (the `keel-webhook-id` header), so receivers can deduplicate.
    pub id: String,
    pub endpoint: String,
    /// The journal entry this delivery announces.
    pub journal_seq: i64,
    /// The event type (the journal entry's kind), e.g. `exception.raised`.
    pub event: String,
    pub case_id: Option<String>,
    /// The exact request body, JSON.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due; `None` once the delivery is final.
    pub next_attempt_at_ms: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// One attempt of one delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookAttemptRow {
    pub delivery_id: String,
    /// 1-based.
    pub attempt: i64,
    pub at_ms: i64,
    /// The receiver's HTTP status; `None` when no response came (connection error, timeout).
    pub status_code: Option<i64>,
    /// Why the attempt failed; `None` when it succeeded.
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct WebhookDeliveryFilter {
    pub endpoint: Option<String>,
    pub status: Option<String>,
    /// Deliveries with ids strictly below this one (ids are time-ordered UUIDv7).
    pub before_id: Option<String>,
    pub limit: i64,
}

/// Delivery rows per INSERT (10 columns; SQLite allows 32,766 parameters).
const DELIVERIES_PER_INSERT: usize = 1_000;

const DELIVERY_COLUMNS: &str =
    "id, endpoint, journal_seq, event, case_id, payload, status, attempts, next_attempt_at_ms, \
     last_status_code, last_error, created_at_ms, delivered_at_ms";

fn delivery_from<R: Row>(row: &R) -> Result<WebhookDeliveryRow>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WebhookDeliveryRow {
        id: row.try_get("id")?,
        endpoint: row.try_get("endpoint")?,
        journal_seq: row.try_get("journal_seq")?,
        event: row.try_get("event")?,
        case_id: row.try_get("case_id")?,
        payload: row.try_get("payload")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at_ms: row.try_get("created_at_ms")?,
        delivered_at_ms: row.try_get("delivered_at_ms")?,
    })
}

impl Store {
    /// The highest journal sequence number written so far (0 for an empty journal).
    pub async fn journal_head(&self) -> Result<i64> {
        dispatch!(self, |pool| {
            let head: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM journal")
                .fetch_one(pool)
                .await?;
            Ok(head.unwrap_or(0))
        })
    }

    /// Creates `endpoint`'s cursor at `after_seq` unless it exists; returns the cursor in force.
    pub async fn webhook_cursor_init(
        &self,
        endpoint: &str,
        after_seq: i64,
        now_ms: i64,
    ) -> Result<i64> {
        dispatch!(self, |pool| {
            sqlx::query(
                "INSERT INTO webhook_cursors (endpoint, after_seq, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (endpoint) DO NOTHING",
            )
            .bind(endpoint)
            .bind(after_seq)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(
                sqlx::query_scalar("SELECT after_seq FROM webhook_cursors WHERE endpoint = $1")
                    .bind(endpoint)
                    .fetch_one(pool)
                    .await?,
            )
        })
    }

    /// Inserts `deliveries` and moves `endpoint`'s cursor from `expected_seq` to `new_seq` in
    /// one transaction. Returns false, and writes nothing, when the cursor was not at
    /// `expected_seq` (another node enqueued first).
    pub async fn enqueue_webhook_deliveries(
        &self,
        endpoint: &str,
        expected_seq: i64,
        new_seq: i64,
        deliveries: &[WebhookDeliveryRow],
        now_ms: i64,
    ) -> Result<bool> {
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(
                "UPDATE webhook_cursors SET after_seq = $1, updated_at_ms = $2 WHERE endpoint = $3 AND after_seq = $4",
            )
            .bind(new_seq)
            .bind(now_ms)
            .bind(endpoint)
            .bind(expected_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for chunk in deliveries.chunks(DELIVERIES_PER_INSERT) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO webhook_deliveries (id, endpoint, journal_seq, event, case_id, payload, status, attempts, \
                     next_attempt_at_ms, created_at_ms) ",
                );
                builder.push_values(chunk, |mut row, delivery| {
                    row.push_bind(&delivery.id)
                        .push_bind(&delivery.endpoint)
                        .push_bind(delivery.journal_seq)
                        .push_bind(&delivery.event)
                        .push_bind(&delivery.case_id)
                        .push_bind(&delivery.payload)
                        .push_bind(&delivery.status)
                        .push_bind(delivery.attempts)
                        .push_bind(delivery.next_attempt_at_ms)
                        .push_bind(delivery.created_at_ms);
                });
                builder.push(" ON CONFLICT (endpoint, journal_seq) DO NOTHING");
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Pending deliveries of `endpoint` whose next attempt is due, earliest first.
    pub async fn due_webhook_deliveries(
        &self,
        endpoint: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<WebhookDeliveryRow>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint = $1 AND status = 'pending' \
             AND next_attempt_at_ms <= $2 ORDER BY next_attempt_at_ms, id LIMIT $3"
        );
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(endpoint)
                .bind(now_ms)
                .bind(limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?
                .iter()
                .map(delivery_from)
                .collect()
        })
    }

    /// Records one attempt and the delivery's new `status` (with `next_attempt_at_ms` when it
    /// stays pending), plus `failed_entry` in the journal when it gives up; one transaction.
    /// Returns false, and writes nothing, when the delivery is no longer pending at attempt
    /// `attempt.attempt - 1` (another node recorded this attempt first).
    pub async fn record_webhook_attempt(
        &self,
        attempt: &WebhookAttemptRow,
        status: &str,
        next_attempt_at_ms: Option<i64>,
        failed_entry: Option<&NewEntry>,
    ) -> Result<bool> {
        let delivered_at_ms = (status == WEBHOOK_DELIVERED).then_some(attempt.at_ms);
        dispatch!(self, |pool| {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at_ms = $3, last_status_code = $4, \
                 last_error = $5, delivered_at_ms = $6 WHERE id = $7 AND status = 'pending' AND attempts = $8",
            )
            .bind(status)
            .bind(attempt.attempt)
            .bind(next_attempt_at_ms)
            .bind(attempt.status_code)
            .bind(&attempt.error)
            .bind(delivered_at_ms)
            .bind(&attempt.delivery_id)
            .bind(attempt.attempt - 1)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at_ms, status_code, error, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&attempt.delivery_id)
            .bind(attempt.attempt)
            .bind(attempt.at_ms)
            .bind(attempt.status_code)
            .bind(&attempt.error)
            .bind(attempt.duration_ms)
            .execute(&mut *tx)
            .await?;
            if let Some(entry) = failed_entry {
                if let Backend::Postgres(_) = self.backend {
                    sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                        .execute(&mut *tx)
                        .await?;
                }
                insert_entries!(tx, std::slice::from_ref(entry));
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The delivery log, newest first; page with `before_id` set to the last id of a page.
    pub async fn webhook_deliveries(
        &self,
        filter: &WebhookDeliveryFilter,
    ) -> Result<Vec<WebhookDeliveryRow>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE ($1 IS NULL OR endpoint = $1) \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(&filter.endpoint)
                .bind(&filter.status)
                .bind(&filter.before_id)
                .bind(filter.limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?
                .iter()
                .map(delivery_from)
                .collect()
        })
    }

    /// One delivery.
    pub async fn webhook_delivery(&self, id: &str) -> Result<Option<WebhookDeliveryRow>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        dispatch_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(delivery_from)
                .transpose()
        })
    }

    /// Every attempt of one delivery, in order.
    pub async fn webhook_attempts(&self, delivery_id: &str) -> Result<Vec<WebhookAttemptRow>> {
        dispatch_read!(self, |pool| {
            // attempt, at_ms, status_code, error, duration_ms
            type Attempt = (i64, i64, Option<i64>, Option<String>, i64);
            let rows: Vec<Attempt> = sqlx::query_as(
                "SELECT attempt, at_ms, status_code, error, duration_ms FROM webhook_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(delivery_id)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(attempt, at_ms, status_code, error, duration_ms)| WebhookAttemptRow {
                        delivery_id: delivery_id.to_string(),
                        attempt,
                        at_ms,
                        status_code,
                        error,
                        duration_ms,
                    },
                )
                .collect())
        })
    }
}
