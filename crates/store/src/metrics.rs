//! The reads behind `/metrics`. Two kinds, both cheap at any size:
//!
//! - gauges counted at scrape time, each a GROUP BY that an index bounds: every case through
//!   the covering index `cases_list (workflow, status, id)`; only *open* exceptions and tasks
//!   (`exceptions_queue`, `tasks_open` lead with `status`); the few rows of `trust_operations`;
//! - pages of the two append-only logs, `journal` (by `seq`) and `ai_calls` (by `id`), which
//!   the engine folds into counters with a cursor, so that a scrape reads only what is new.

use sqlx::Row;

use crate::{AiCallRow, Backend, Result, Store};

/// Journal kinds that metrics count.
const COUNTED_KINDS: &str = "'step.completed', 'action.completed', 'ai.proposed', 'task.completed', 'exception.raised', 'sla.breached', 'outcome.reviewed'";

/// Most rows of `trust_operations` read per scrape (there is one per operation).
const MAX_TRUST_OPERATIONS: i64 = 10_000;

/// A journal entry that a counter counts, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedEntry {
    pub seq: i64,
    pub kind: String,
    pub case_id: Option<String>,
    pub workflow: Option<String>,
    pub step: Option<String>,
    /// `data.kind` of `step.completed` (the step kind) and `exception.raised` (the
    /// exception kind), `data.verdict` of `outcome.reviewed`; `None` for other kinds.
    pub detail: Option<String>,
}

impl Store {
    /// Cases per (workflow, status).
    pub async fn cases_per_workflow_and_status(&self) -> Result<Vec<(String, String, i64)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, status, COUNT(*) AS n FROM cases GROUP BY workflow, status ORDER BY workflow, status",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("workflow")?,
                        row.try_get("status")?,
                        row.try_get("n")?,
                    ))
                })
                .collect()
        })
    }

    /// Open exceptions per (queue, kind); the queue is `None` until the desk routes them.
    pub async fn open_exceptions_per_queue_and_kind(
        &self,
    ) -> Result<Vec<(Option<String>, String, i64)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT queue, kind, COUNT(*) AS n FROM exceptions WHERE status = 'open' GROUP BY queue, kind ORDER BY queue, kind",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("queue")?,
                        row.try_get("kind")?,
                        row.try_get("n")?,
                    ))
                })
                .collect()
        })
    }

    /// Open tasks per (workflow, kind).
    pub async fn open_tasks_per_workflow_and_kind(&self) -> Result<Vec<(String, String, i64)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow, kind, COUNT(*) AS n FROM tasks WHERE status = 'open' GROUP BY workflow, kind ORDER BY workflow, kind",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("workflow")?,
                        row.try_get("kind")?,
                        row.try_get("n")?,
                    ))
                })
                .collect()
        })
    }

    /// The phase of every operation under progressive trust, from `trust_operations`; empty
    /// when that table does not exist (a database from before the migration that adds it).
    pub async fn trust_phases(&self) -> Result<Vec<(String, i64)>> {
        let exists: i64 = match &self.backend {
            Backend::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'trust_operations'")
                    .fetch_one(read)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'trust_operations'")
                    .fetch_one(pool)
                    .await?
            }
        };
        if exists == 0 {
            return Ok(Vec::new());
        }
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT operation, phase FROM trust_operations ORDER BY operation LIMIT $1",
            )
            .bind(MAX_TRUST_OPERATIONS)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("operation")?, row.try_get("phase")?)))
                .collect()
        })
    }

    /// The highest journal `seq` (0 when empty). Entries commit in `seq` order (one writer on
    /// SQLite, an advisory lock on PostgreSQL), so everything at or below it is visible.
    pub async fn max_journal_seq(&self) -> Result<i64> {
        dispatch_read!(self, |pool| {
            let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM journal")
                .fetch_one(pool)
                .await?;
            Ok(max.unwrap_or(0))
        })
    }

    /// The counted entries with `after_seq < seq <= up_to_seq`, oldest first. The range, not
    /// a LIMIT, bounds the work: uncounted kinds in it are skipped by the primary key range.
    pub async fn counted_entries(
        &self,
        after_seq: i64,
        up_to_seq: i64,
    ) -> Result<Vec<CountedEntry>> {
        // One field is read from the data, and only for the kinds that need it.
        let (kind, verdict) = match &self.backend {
            Backend::Sqlite { .. } => (
                "json_extract(data, '$.kind')",
                "json_extract(data, '$.verdict')",
            ),
            Backend::Postgres(_) => ("(data::json ->> 'kind')", "(data::json ->> 'verdict')"),
        };
        let sql = format!(
            "SELECT seq, kind, case_id, workflow, step, CASE WHEN kind IN ('step.completed', 'exception.raised') THEN {kind} \
             WHEN kind = 'outcome.reviewed' THEN {verdict} END AS detail \
             FROM journal WHERE seq > $1 AND seq <= $2 AND kind IN ({COUNTED_KINDS}) ORDER BY seq"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(after_seq)
                .bind(up_to_seq)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(CountedEntry {
                        seq: row.try_get("seq")?,
                        kind: row.try_get("kind")?,
                        case_id: row.try_get("case_id")?,
                        workflow: row.try_get("workflow")?,
                        step: row.try_get("step")?,
                        detail: row.try_get("detail")?,
                    })
                })
                .collect()
        })
    }

    /// Model calls with `id > after_id`, oldest first, at most `limit`, each with its id. Only
    /// the columns metrics fold are filled.
    pub async fn ai_calls_after(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, AiCallRow)>> {
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, model, provider, status, input_tokens, output_tokens, cached_input_tokens, cost_nano, latency_ms, cache_hit \
                 FROM ai_calls WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after_id)
            .bind(limit.max(1))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let call = AiCallRow {
                        model: row.try_get("model")?,
                        provider: row.try_get("provider")?,
                        status: row.try_get("status")?,
                        input_tokens: row.try_get("input_tokens")?,
                        output_tokens: row.try_get("output_tokens")?,
                        cached_input_tokens: row.try_get("cached_input_tokens")?,
                        cost_nano: row.try_get("cost_nano")?,
                        latency_ms: row.try_get("latency_ms")?,
                        cache_hit: row.try_get::<i64, _>("cache_hit")? != 0,
                        ..AiCallRow::default()
                    };
                    Ok((row.try_get("id")?, call))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failure report.

    use super::*;
    use crate::{CaseWrite, NewEntry, WriteMode};

    /// A fresh SQLite store, and a fresh PostgreSQL one when `KEEL_TEST_DATABASE_URL` is set.
    async fn stores(test: &str) -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&dir.path().join("keel.db").display().to_string())
            .await
            .unwrap();
        let mut stores = vec![(sqlite, Some(dir))];
        if let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") {
            let name = format!("keel_store_{test}_{}", std::process::id());
            Store::admin_execute(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await
            .unwrap();
            Store::admin_execute(&admin, &format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            stores.push((Store::open(&format!("{base}/{name}")).await.unwrap(), None));
        }
        stores
    }

    async fn execute(store: &Store, sql: &str) {
        dispatch!(store, |pool| {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        })
    }

    fn entry(case: &str, workflow: &str, kind: &str, data: serde_json::Value) -> NewEntry {
        let data = data.to_string();
        NewEntry {
            at: "2026-11-27T10:00:00.000Z".into(),
            kind: kind.into(),
            actor_type: "system".into(),
            actor_id: "test".into(),
            case_id: Some(case.into()),
            workflow: Some(workflow.into()),
            step: Some("s".into()),
            data_sha256: String::new(),
            data,
        }
    }

    fn case(id: &str, workflow: &str, status: &str, entries: Vec<NewEntry>) -> CaseWrite {
        CaseWrite {
            case_id: id.into(),
            workflow: workflow.into(),
            workflow_version: 1,
            mode: WriteMode::Insert {
                idempotency_key: None,
            },
            status: status.into(),
            current_step: None,
            state: "{}".into(),
            runnable_at_ms: None,
            lease_owner: None,
            lease_until_ms: None,
            sla_due_ms: None,
            sla_breached: false,
            now_ms: 1,
            entries,
        }
    }

    #[tokio::test]
    async fn metric_reads_count_and_a_missing_trust_table_reads_as_none() {
        use serde_json::json;
        for (store, _dir) in stores("metric_reads").await {
            let raised = json!({"exception_id": "c3.s.1", "kind": "ai_failed", "message": "no"});
            store
                .commit(&[
                    case(
                        "c1",
                        "a",
                        "completed",
                        vec![entry(
                            "c1",
                            "a",
                            "step.completed",
                            json!({"kind": "validate"}),
                        )],
                    ),
                    case(
                        "c2",
                        "a",
                        "completed",
                        vec![entry("c2", "a", "case.completed", json!({}))],
                    ),
                    case(
                        "c3",
                        "b",
                        "exception",
                        vec![entry("c3", "b", "exception.raised", raised)],
                    ),
                ])
                .await
                .unwrap();
            assert_eq!(
                store.cases_per_workflow_and_status().await.unwrap(),
                vec![
                    ("a".into(), "completed".into(), 2),
                    ("b".into(), "exception".into(), 1)
                ]
            );
            assert_eq!(
                store.open_exceptions_per_queue_and_kind().await.unwrap(),
                vec![(None, "ai_failed".into(), 1)]
            );
            assert!(store
                .open_tasks_per_workflow_and_kind()
                .await
                .unwrap()
                .is_empty());
            let newest = store.max_journal_seq().await.unwrap();
            // The exception's fingerprint is new: `exception.pattern_new` follows it.
            assert_eq!(newest, 4);
            let counted = store.counted_entries(0, newest).await.unwrap();
            let seen: Vec<(&str, Option<&str>)> = counted
                .iter()
                .map(|e| (e.kind.as_str(), e.detail.as_deref()))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("step.completed", Some("validate")),
                    ("exception.raised", Some("ai_failed"))
                ]
            );
            assert!(store.counted_entries(1, 2).await.unwrap().is_empty());

            let call = AiCallRow {
                day: "2026-11-27".into(),
                source: "step".into(),
                model: "m".into(),
                provider: "openai".into(),
                status: "ok".into(),
                input_tokens: 10,
                cost_nano: Some(5),
                ..AiCallRow::default()
            };
            store
                .record_ai_calls(&[call.clone(), call], &[])
                .await
                .unwrap();
            let calls = store.ai_calls_after(0, 10).await.unwrap();
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0].1.input_tokens, 10);
            assert_eq!(store.ai_calls_after(calls[0].0, 10).await.unwrap().len(), 1);

            assert!(store.trust_phases().await.unwrap().is_empty());
            execute(&store, "INSERT INTO trust_operations (operation, workflow, step, phase, since_ms, updated_at_ms) VALUES ('a/pay', 'a', 'pay', 2, 0, 0)").await;
            assert_eq!(
                store.trust_phases().await.unwrap(),
                vec![("a/pay".into(), 2)]
            );
            // A database from before the trust tables: no samples, no error.
            execute(&store, "DROP TABLE trust_operations").await;
            assert!(store.trust_phases().await.unwrap().is_empty());
            store.close().await;
        }
        if let Ok(admin) = std::env::var("KEEL_TEST_DATABASE_URL") {
            let name = format!("keel_store_metric_reads_{}", std::process::id());
            Store::admin_execute(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await
            .unwrap();
        }
    }
}
