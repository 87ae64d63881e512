//! One store test-suite, run against both backends: a fresh SQLite file always, and a fresh
//! PostgreSQL database when KEEL_TEST_DATABASE_URL is set (CI sets it). Without it the
//! PostgreSQL half prints that it was skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_store::{
    CaseFilter, CaseWrite, DriftObservation, DriftResultRow, NewEntry, Store, WriteMode,
    WriteOutcome,
};

/// Databases under test: (label, store, cleanup).
struct Backend {
    label: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl Backend {
    async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.postgres {
            Store::admin_execute(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await
            .unwrap();
        }
    }
}

async fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("keel.sqlite").display().to_string())
        .await
        .unwrap();
    let mut list = vec![Backend {
        label: "sqlite",
        store: sqlite,
        _dir: Some(dir),
        postgres: None,
    }];
    match std::env::var("KEEL_TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
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
            let base = admin
                .rsplit_once('/')
                .map(|(base, _)| base.to_string())
                .unwrap();
            let store = Store::open(&format!("{base}/{name}")).await.unwrap();
            list.push(Backend {
                label: "postgres",
                store,
                _dir: None,
                postgres: Some((admin, name)),
            });
        }
        _ => eprintln!("{test}: PostgreSQL part skipped (set KEEL_TEST_DATABASE_URL to run it)"),
    }
    list
}

fn entry(case: &str, kind: &str) -> NewEntry {
    NewEntry {
        at: "2026-11-27T10:00:00.000Z".into(),
        kind: kind.into(),
        actor_type: "system".into(),
        actor_id: "test".into(),
        case_id: Some(case.into()),
        workflow: Some("wf".into()),
        step: None,
        data: "{}".into(),
        data_sha256: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".into(),
    }
}

fn insert(
    id: &str,
    key: Option<&str>,
    lease: Option<(&str, i64)>,
    runnable_at: Option<i64>,
) -> CaseWrite {
    CaseWrite {
        case_id: id.into(),
        workflow: "wf".into(),
        workflow_version: 1,
        mode: WriteMode::Insert {
            idempotency_key: key.map(String::from),
        },
        status: "running".into(),
        current_step: Some("a".into()),
        state: "{}".into(),
        runnable_at_ms: runnable_at,
        lease_owner: lease.map(|(owner, _)| owner.to_string()),
        lease_until_ms: lease.map(|(_, until)| until),
        sla_due_ms: None,
        sla_breached: false,
        now_ms: 1_000,
        entries: vec![entry(id, "case.created")],
    }
}

fn update(id: &str, expected_version: i64, status: &str) -> CaseWrite {
    CaseWrite {
        mode: WriteMode::Update { expected_version },
        status: status.into(),
        entries: vec![entry(id, "step.completed"), entry(id, "case.completed")],
        ..insert(id, None, None, None)
    }
}

fn version(
    label: &'static str,
    source: &'static str,
    sha256: &'static str,
    now_ms: i64,
) -> keel_store::NewWorkflowVersion<'static> {
    keel_store::NewWorkflowVersion {
        name: "wf",
        label,
        source,
        sha256,
        file: "wf.yaml",
        now_ms,
        status: "active",
        author: None,
        changes: "[]",
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_workflow_versions_count_up() {
    for backend in backends("migrate").await {
        let store = &backend.store;
        assert_eq!(
            store
                .deploy_workflow(&version("1", "a", "sha-a", 1), &|_| entry(
                    "-",
                    "workflow.deployed"
                ))
                .await
                .unwrap(),
            (1, true),
            "{}",
            backend.label
        );
        assert_eq!(
            store
                .deploy_workflow(&version("1", "a", "sha-a", 2), &|_| entry(
                    "-",
                    "workflow.deployed"
                ))
                .await
                .unwrap(),
            (1, false)
        );
        assert_eq!(
            store
                .deploy_workflow(&version("2", "b", "sha-b", 3), &|_| entry(
                    "-",
                    "workflow.deployed"
                ))
                .await
                .unwrap(),
            (2, true)
        );
        assert_eq!(store.workflow_versions().await.unwrap().len(), 2);
        assert_eq!(store.meta_init("k", "first").await.unwrap(), "first");
        assert_eq!(store.meta_init("k", "second").await.unwrap(), "first");
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn group_commit_applies_each_write_or_reports_its_conflict() {
    for backend in backends("commit").await {
        let store = &backend.store;
        let outcomes = store
            .commit(&[
                insert("c1", Some("k1"), None, None),
                insert("c2", Some("k1"), None, None),
                insert("c3", None, None, None),
            ])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                WriteOutcome::Written { version: 1 },
                WriteOutcome::Conflict,
                WriteOutcome::Written { version: 1 }
            ],
            "{}",
            backend.label
        );
        assert_eq!(
            store.journal_count().await.unwrap(),
            2,
            "the conflicting write's entries are not kept"
        );
        let outcomes = store
            .commit(&[update("c1", 1, "completed"), update("c3", 7, "completed")])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [WriteOutcome::Written { version: 2 }, WriteOutcome::Conflict]
        );
        assert_eq!(store.journal_count().await.unwrap(), 4);
        assert_eq!(store.case("c1").await.unwrap().unwrap().status, "completed");
        assert_eq!(
            store
                .case_by_idempotency_key("wf", "k1")
                .await
                .unwrap()
                .unwrap()
                .id,
            "c1"
        );
        let timeline = store.timeline("c1", 100).await.unwrap();
        assert_eq!(
            timeline.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["case.created", "step.completed", "case.completed"]
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn leases_give_each_case_to_one_owner_until_they_expire() {
    for backend in backends("leases").await {
        let store = &backend.store;
        let writes: Vec<_> = (0..10)
            .map(|i| insert(&format!("case-{i:02}"), None, None, Some(100)))
            .collect();
        store.commit(&writes).await.unwrap();
        store
            .commit(&[
                insert("future", None, None, Some(10_000)),
                insert("held", None, Some(("other", 5_000)), Some(100)),
            ])
            .await
            .unwrap();
        let first = store.claim("node-a", 1_000, 2_000, 6).await.unwrap();
        let second = store.claim("node-b", 1_000, 2_000, 100).await.unwrap();
        assert_eq!(first.len(), 6, "{}", backend.label);
        assert_eq!(
            second.len(),
            4,
            "the future case and the held lease are not claimable"
        );
        let mut all: Vec<_> = first
            .iter()
            .chain(&second)
            .map(|row| row.id.clone())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10, "no case went to two owners");
        assert!(store
            .claim("node-c", 1_500, 2_500, 100)
            .await
            .unwrap()
            .is_empty());
        let taken_over = store.claim("node-c", 5_001, 9_000, 100).await.unwrap();
        assert_eq!(
            taken_over.len(),
            11,
            "expired leases (and the other node's) are claimable again"
        );
        assert_eq!(store.release_leases("node-c").await.unwrap(), 11);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_case() {
    for backend in backends("race").await {
        let store = backend.store.clone();
        let writes: Vec<_> = (0..200)
            .map(|i| insert(&format!("r-{i:03}"), None, None, Some(1)))
            .collect();
        store.commit(&writes).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let rows = store
                        .claim(&format!("w{worker}"), 10, 100_000, 7)
                        .await
                        .unwrap();
                    if rows.is_empty() {
                        return mine;
                    }
                    mine.extend(rows.into_iter().map(|row| row.id));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap());
        }
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!((total, all.len()), (200, 200), "{}", backend.label);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn ledger_tables_reject_update_and_delete() {
    for backend in backends("triggers").await {
        let store = &backend.store;
        store
            .append(&[entry("x", "a"), entry("x", "b")])
            .await
            .unwrap();
        store
            .append_tree(&[(0, 1, vec![0; 32])], &[])
            .await
            .unwrap();
        for sql in [
            "UPDATE journal SET kind = 'changed'",
            "DELETE FROM journal",
            "UPDATE ledger_leaves SET leaf_hash = leaf_hash",
            "DELETE FROM ledger_leaves",
        ] {
            let error = store.execute_raw(sql).await.unwrap_err();
            assert!(
                error.to_string().contains("append-only"),
                "{}: {sql}: {error}",
                backend.label
            );
        }
        assert_eq!(store.journal_count().await.unwrap(), 2);
        if backend.label == "postgres" {
            let error = store.execute_raw("TRUNCATE journal").await.unwrap_err();
            assert!(error.to_string().contains("append-only"), "{error}");
        }
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn case_listing_pages_by_cursor_without_gaps_or_repeats() {
    for backend in backends("paging").await {
        let store = &backend.store;
        let writes: Vec<_> = (0..25)
            .map(|i| insert(&format!("p-{i:03}"), None, None, None))
            .collect();
        store.commit(&writes).await.unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .cases(&CaseFilter {
                    workflow: Some("wf".into()),
                    status: None,
                    before_id: cursor.clone(),
                    limit: 10,
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|row| row.id.clone());
            seen.extend(page.into_iter().map(|row| row.id));
        }
        let expected: Vec<_> = (0..25).rev().map(|i| format!("p-{i:03}")).collect();
        assert_eq!(seen, expected, "{}", backend.label);
        let none = store
            .cases(&CaseFilter {
                status: Some("completed".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        backend.cleanup().await;
    }
}

fn data_entry(case: &str, kind: &str, step: &str, data: serde_json::Value) -> NewEntry {
    let text = data.to_string();
    NewEntry {
        step: Some(step.into()),
        data: text,
        ..entry(case, kind)
    }
}

#[tokio::test]
async fn task_and_exception_projections_follow_the_journal_on_both_backends() {
    use serde_json::json;
    for backend in backends("projections").await {
        let store = &backend.store;
        let label = backend.label;
        let mut write = insert("c1", None, None, None);
        write.entries.push(data_entry(
            "c1",
            "task.created",
            "pay",
            json!({
            "task_id": "c1.pay.1", "kind": "action", "title": "Approve", "required": 2,
            "roles": ["reviewer"], "amount": 250.5, "due_ms": 5_000}),
        ));
        store.commit(&[write]).await.unwrap();
        let mut second = update("c1", 1, "waiting");
        second.entries = vec![
            data_entry(
                "c1",
                "task.approval_recorded",
                "pay",
                json!({"task_id": "c1.pay.1", "by": "ann"}),
            ),
            data_entry(
                "c1",
                "task.escalated",
                "pay",
                json!({"task_id": "c1.pay.1", "roles": ["reviewer", "governor"]}),
            ),
            data_entry(
                "c1",
                "task.approval_recorded",
                "pay",
                json!({"task_id": "c1.pay.1", "by": "bob"}),
            ),
            data_entry(
                "c1",
                "task.completed",
                "pay",
                json!({"task_id": "c1.pay.1", "decision": "approved"}),
            ),
            data_entry(
                "c1",
                "exception.raised",
                "pay",
                json!({
                "exception_id": "c1.pay.1", "kind": "action_failed", "message": "HTTP 500 from https://erp.example/pay/42"}),
            ),
        ];
        store.commit(&[second]).await.unwrap();
        let task = store.task("c1.pay.1").await.unwrap().unwrap();
        assert_eq!(task.status, "approved", "{label}");
        assert_eq!(task.approvals, 2, "{label}");
        assert_eq!(task.approvers, ["ann", "bob"], "{label}");
        assert_eq!(task.roles, ["reviewer", "governor"], "{label}");
        assert_eq!(task.amount, Some(250.5), "{label}");
        let exception = store.exception("c1.pay.1").await.unwrap().unwrap();
        assert_eq!(exception.kind, "action_failed", "{label}");
        assert_eq!(exception.status, "open", "{label}");
        assert!(
            exception.template.contains("<url>"),
            "{label}: {}",
            exception.template
        );
        let patterns = store.exception_patterns(1_800_000_000_000).await.unwrap();
        assert_eq!(patterns.len(), 1, "{label}");
        assert_eq!(patterns[0].total, 1, "{label}");
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn desk_writes_are_conditional_and_journaled_once_on_both_backends() {
    use keel_store::{DeskChange, ExceptionFilter, Mine};
    use serde_json::json;
    for backend in backends("desk").await {
        let store = &backend.store;
        let label = backend.label;
        let mut write = insert("c1", None, None, None);
        write.entries.push(data_entry(
            "c1",
            "exception.raised",
            "pay",
            json!({"exception_id": "c1.pay.1", "kind": "action_failed", "message": "HTTP 500"}),
        ));
        store.commit(&[write]).await.unwrap();
        assert_eq!(
            store.exceptions_unrouted(10).await.unwrap().len(),
            1,
            "{label}"
        );
        let routed = DeskChange::Routed {
            queue: "ops".into(),
            priority: "high".into(),
            priority_rank: 2,
            routed_by: "default".into(),
            due_ms: Some(5_000),
            next_escalation_ms: Some(1_000),
        };
        let journal_before = store.journal_count().await.unwrap();
        let entry = || entry("c1", "exception.desk");
        assert!(
            store
                .desk_write("c1.pay.1", &routed, &entry())
                .await
                .unwrap(),
            "{label}"
        );
        // A second routing (another node's pass) does not take, and journals nothing.
        assert!(
            !store
                .desk_write("c1.pay.1", &routed, &entry())
                .await
                .unwrap(),
            "{label}"
        );
        assert_eq!(
            store.journal_count().await.unwrap(),
            journal_before + 1,
            "{label}"
        );
        assert!(
            store.exceptions_unrouted(10).await.unwrap().is_empty(),
            "{label}"
        );
        assert!(store
            .exceptions_escalation_due(999, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .exceptions_escalation_due(1_000, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        let claim = |to: &str| DeskChange::Assigned {
            to: to.into(),
            at_ms: 10,
            expected_assignee: Some(None),
            cursor_queue: Some("ops".into()),
        };
        assert!(store
            .desk_write("c1.pay.1", &claim("ann"), &entry())
            .await
            .unwrap());
        assert!(!store
            .desk_write("c1.pay.1", &claim("bob"), &entry())
            .await
            .unwrap());
        assert_eq!(
            store.queue_cursor("ops").await.unwrap().as_deref(),
            Some("ann")
        );
        assert_eq!(
            store.open_exception_load().await.unwrap()["ann"],
            1,
            "{label}"
        );

        let escalate = |from_level| DeskChange::Escalated {
            from_level,
            queue: "leads".into(),
            escalated_to: "queue:leads".into(),
            next_escalation_ms: None,
            due_ms: None,
            clear_assignee: true,
        };
        assert!(store
            .desk_write("c1.pay.1", &escalate(0), &entry())
            .await
            .unwrap());
        assert!(!store
            .desk_write("c1.pay.1", &escalate(0), &entry())
            .await
            .unwrap());
        let row = store.exception("c1.pay.1").await.unwrap().unwrap();
        assert_eq!(
            (row.level, row.queue.as_deref()),
            (1, Some("leads")),
            "{label}"
        );
        assert_eq!(row.ladder_queue.as_deref(), Some("ops"), "{label}");
        assert_eq!((row.assignee, row.assigned_at_ms), (None, None), "{label}");
        assert!(store
            .exceptions_escalation_due(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty());

        assert_eq!(store.exceptions_sla_due(5_000, 10).await.unwrap().len(), 1);
        assert!(store
            .desk_write("c1.pay.1", &DeskChange::SlaMissed, &entry())
            .await
            .unwrap());
        assert!(!store
            .desk_write("c1.pay.1", &DeskChange::SlaMissed, &entry())
            .await
            .unwrap());
        assert!(store
            .exceptions_sla_due(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty());

        // "Mine" for a member of `leads` (unassigned there) and for nobody else.
        let mine = |queues: Vec<String>| ExceptionFilter {
            mine: Some(Mine {
                user: "cat".into(),
                queues,
                roles: vec![],
            }),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            store
                .exceptions(&mine(vec!["leads".into()]))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .exceptions(&mine(vec!["ops".into()]))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.open_exceptions_per_queue().await.unwrap(),
            vec![(Some("leads".to_string()), 1)],
            "{label}"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn trust_evidence_is_read_packed_in_order_on_both_backends() {
    use keel_store::TrustOutcomeRow;
    for backend in backends("evidence").await {
        let store = &backend.store;
        let label = backend.label;
        let row = |i: i64, verdict: &str| TrustOutcomeRow {
            operation: "w/pay".into(),
            case_id: format!("c{i}"),
            task_id: format!("t{i}"),
            at_ms: 1_000 + i,
            source: "pre".into(),
            verdict: verdict.into(),
            phase: 1,
            model: Some("m".into()),
            confidence: Some(0.5),
            cost_usd: None,
            ai_step: Some("w/judge".into()),
            proposed_label: None,
            final_label: None,
        };
        // Inserted out of time order: read back in time order.
        let rows = vec![
            row(3, "agree"),
            row(1, "corrected"),
            row(2, "agree"),
            row(4, "rejected"),
        ];
        store.insert_trust_outcomes(&rows).await.unwrap();
        let all = store
            .trust_evidence("w/pay", 0, i64::MAX, None)
            .await
            .unwrap();
        assert_eq!(
            all,
            vec![(1001, false), (1002, true), (1003, true), (1004, false)],
            "{label}"
        );
        let since = store
            .trust_evidence("w/pay", 1003, i64::MAX, None)
            .await
            .unwrap();
        assert_eq!(since, vec![(1003, true), (1004, false)], "{label}");
        let newest = store
            .trust_evidence("w/pay", 0, i64::MAX, Some(2))
            .await
            .unwrap();
        assert_eq!(newest, vec![(1003, true), (1004, false)], "{label}");
        // As of an earlier time: the window ends before `until` (exclusive), and the newest
        // are the newest before it.
        let until = store
            .trust_evidence("w/pay", 1002, 1004, None)
            .await
            .unwrap();
        assert_eq!(until, vec![(1002, true), (1003, true)], "{label}");
        let newest_until = store
            .trust_evidence("w/pay", 0, 1003, Some(1))
            .await
            .unwrap();
        assert_eq!(newest_until, vec![(1002, true)], "{label}");
        assert!(
            store
                .trust_evidence("other", 0, i64::MAX, None)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        // Incremental reads: by id, from a time on.
        let all = store.trust_evidence_after("w/pay", 0, 0).await.unwrap();
        assert_eq!(all.len(), 4, "{label}");
        let last_id = all.iter().map(|(id, _, _)| *id).max().unwrap();
        assert!(store
            .trust_evidence_after("w/pay", last_id, 0)
            .await
            .unwrap()
            .is_empty());
        store
            .insert_trust_outcomes(&[row(5, "agree")])
            .await
            .unwrap();
        let fresh = store
            .trust_evidence_after("w/pay", last_id, 0)
            .await
            .unwrap();
        let fresh: Vec<(i64, bool)> = fresh.iter().map(|(_, at, agreed)| (*at, *agreed)).collect();
        assert_eq!(fresh, vec![(1005, true)], "{label}");
        let pairs = store.calibration_pairs("w/judge", "m", 3).await.unwrap();
        assert_eq!(pairs.len(), 3, "{label}");
        assert!(
            pairs.iter().all(|(c, _)| (*c - 0.5).abs() < 1e-12),
            "{label}: {pairs:?}"
        );
        backend.cleanup().await;
    }
}

fn observation(workflow: &str, feature: &str, case: usize, at_ms: i64) -> DriftObservation {
    DriftObservation {
        workflow: workflow.into(),
        feature: feature.into(),
        case_id: format!("case-{case}"),
        at_ms,
        value_num: Some(case as f64),
        value_cat: None,
    }
}

fn drift_result(workflow: &str, feature: &str, evaluated_at_ms: i64) -> DriftResultRow {
    DriftResultRow {
        id: 0,
        workflow: workflow.into(),
        feature: feature.into(),
        evaluated_at_ms,
        status: "insufficient_data".into(),
        kind: None,
        method: None,
        parameters: serde_json::json!({}),
        value: None,
        threshold: None,
        drifted: false,
        alerted: false,
        recovered: false,
        alert_state: Default::default(),
        windows: "time".into(),
        reference_rows: 0,
        current_rows: 0,
        failed_rows: 0,
        reference_from_ms: 0,
        current_from_ms: 0,
        current_to_ms: evaluated_at_ms,
    }
}

#[tokio::test]
async fn drift_retention_deletes_old_rows_in_batches_and_keeps_the_rest_on_both_backends() {
    for backend in backends("drift_prune").await {
        let (store, label) = (&backend.store, backend.label);
        let batch = Store::DRIFT_PRUNE_BATCH_ROWS as usize;
        let cutoff = 1_000_000_i64;
        // Feature `a`: two and a half batches before the cutoff, then 100 from it on (the
        // first exactly at it); feature `b`: 10 and 10; another workflow: 50 old ones.
        let old_a = batch * 5 / 2;
        let mut rows = Vec::new();
        rows.extend((0..old_a).map(|i| observation("wf", "a", i, cutoff - 1 - (i % 1_000) as i64)));
        rows.extend((0..100).map(|i| observation("wf", "a", old_a + i, cutoff + i as i64)));
        rows.extend((0..20).map(|i| observation("wf", "b", i, cutoff - 10 + i as i64)));
        rows.extend((0..50).map(|i| observation("other", "a", i, i as i64)));
        assert!(store.drift_record_observations(0, 1, &rows).await.unwrap());
        let count = |workflow: &'static str, feature: &'static str, from_ms: i64, to_ms: i64| async move {
            store
                .drift_window(workflow, feature, from_ms, to_ms, 100_000)
                .await
                .unwrap()
                .len()
        };
        assert_eq!(count("wf", "a", 0, cutoff).await, old_a, "{label}");

        let deleted = store.drift_prune_observations("wf", cutoff).await.unwrap();
        assert_eq!(
            deleted,
            old_a as u64 + 10,
            "{label}: every row before the cutoff"
        );
        assert_eq!(count("wf", "a", 0, cutoff).await, 0, "{label}");
        assert_eq!(count("wf", "b", 0, cutoff).await, 0, "{label}");
        assert_eq!(count("wf", "a", cutoff, i64::MAX).await, 100, "{label}");
        assert_eq!(
            count("wf", "a", cutoff, cutoff + 1).await,
            1,
            "{label}: kept at the cutoff"
        );
        assert_eq!(count("wf", "b", cutoff, i64::MAX).await, 10, "{label}");
        assert_eq!(
            count("other", "a", 0, i64::MAX).await,
            50,
            "{label}: other workflows untouched"
        );
        assert_eq!(
            store.drift_prune_observations("wf", cutoff).await.unwrap(),
            0,
            "{label}"
        );

        // Results: `a` has three old and one new, `b` only old ones; `b`'s latest stays, as does
        // every result of the other workflow.
        let alert = entry("-", "drift.alert");
        for (workflow, feature, at) in [
            ("wf", "a", 10),
            ("wf", "b", 10),
            ("wf", "a", 20),
            ("other", "a", 20),
            ("wf", "b", 20),
            ("wf", "a", 30),
            ("wf", "a", cutoff),
        ] {
            store
                .drift_insert_result(&drift_result(workflow, feature, at), 2, &alert, &alert)
                .await
                .unwrap();
        }
        let deleted = store.drift_prune_results("wf", cutoff).await.unwrap();
        assert_eq!(deleted, 4, "{label}: a at 10, 20, 30 and b at 10");
        let evaluated = |workflow: &'static str, feature: &'static str| async move {
            store
                .drift_history(workflow, feature, 100)
                .await
                .unwrap()
                .iter()
                .map(|r| r.evaluated_at_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(evaluated("wf", "a").await, vec![cutoff], "{label}");
        assert_eq!(
            evaluated("wf", "b").await,
            vec![20],
            "{label}: the latest is kept"
        );
        assert_eq!(evaluated("other", "a").await, vec![20], "{label}");
        let latest = store.drift_latest(Some("wf")).await.unwrap();
        assert_eq!(latest.len(), 2, "{label}: {latest:?}");
        assert_eq!(
            store.drift_prune_results("wf", cutoff).await.unwrap(),
            0,
            "{label}"
        );

        // One retention turn per workflow per period, whoever asks (the same node too).
        let hour = 3_600_000;
        assert!(
            store
                .drift_retention_due("wf", "n1", 0, hour)
                .await
                .unwrap(),
            "{label}"
        );
        assert!(
            !store
                .drift_retention_due("wf", "n1", 1, 1 + hour)
                .await
                .unwrap(),
            "{label}"
        );
        assert!(
            !store
                .drift_retention_due("wf", "n2", hour, 2 * hour)
                .await
                .unwrap(),
            "{label}"
        );
        assert!(
            store
                .drift_retention_due("other", "n1", 1, 1 + hour)
                .await
                .unwrap(),
            "{label}"
        );
        assert!(
            store
                .drift_retention_due("wf", "n2", hour + 1, 2 * hour + 1)
                .await
                .unwrap(),
            "{label}"
        );
        backend.cleanup().await;
    }
}
