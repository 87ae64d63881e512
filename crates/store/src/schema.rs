//! Migrations, one list per backend. Same tables and columns on both; only types and the
//! append-only triggers differ. Applied in order inside a transaction; each is recorded in
//! `keel_migrations` so a start-up on an existing database applies only what is new.

/// (version, SQL) for SQLite.
pub const SQLITE: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE workflows (
    name TEXT NOT NULL,
    version_no INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    deployed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version_no)
);
CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    current_step TEXT,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    runnable_at_ms INTEGER,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    sla_due_ms INTEGER,
    sla_breached INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX cases_idempotency ON cases (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX cases_runnable ON cases (runnable_at_ms) WHERE runnable_at_ms IS NOT NULL;
CREATE INDEX cases_sla ON cases (sla_due_ms) WHERE sla_due_ms IS NOT NULL;
CREATE INDEX cases_list ON cases (workflow, status, id);
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    case_id TEXT,
    workflow TEXT,
    step TEXT,
    task_id TEXT,
    exception_id TEXT,
    data TEXT NOT NULL,
    data_sha256 TEXT NOT NULL
);
CREATE INDEX journal_case ON journal (case_id, seq);
CREATE TABLE ledger_leaves (leaf_index INTEGER PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, leaf_hash BLOB NOT NULL);
CREATE TABLE ledger_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE checkpoints (tree_size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms INTEGER NOT NULL);
CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal BEGIN SELECT RAISE(ABORT, 'keel: journal is append-only'); END;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal BEGIN SELECT RAISE(ABORT, 'keel: journal is append-only'); END;
CREATE TRIGGER leaves_no_update BEFORE UPDATE ON ledger_leaves BEGIN SELECT RAISE(ABORT, 'keel: ledger_leaves is append-only'); END;
CREATE TRIGGER leaves_no_delete BEFORE DELETE ON ledger_leaves BEGIN SELECT RAISE(ABORT, 'keel: ledger_leaves is append-only'); END;
CREATE TRIGGER nodes_no_update BEFORE UPDATE ON ledger_nodes BEGIN SELECT RAISE(ABORT, 'keel: ledger_nodes is append-only'); END;
CREATE TRIGGER nodes_no_delete BEFORE DELETE ON ledger_nodes BEGIN SELECT RAISE(ABORT, 'keel: ledger_nodes is append-only'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints BEGIN SELECT RAISE(ABORT, 'keel: checkpoints is append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints BEGIN SELECT RAISE(ABORT, 'keel: checkpoints is append-only'); END;
"#,
    ),
    (
        2,
        r#"
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE TABLE ai_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    day TEXT NOT NULL,
    source TEXT NOT NULL,
    caller TEXT,
    workflow TEXT,
    step TEXT,
    case_id TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cost_nano INTEGER,
    latency_ms INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE INDEX ai_calls_day ON ai_calls (day);
CREATE TABLE learners (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    version INTEGER NOT NULL,
    model BLOB NOT NULL,
    examples INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (workflow, step, version)
);
CREATE TRIGGER learners_no_update BEFORE UPDATE ON learners BEGIN SELECT RAISE(ABORT, 'keel: learners is append-only'); END;
"#,
    ),
    (
        4,
        r#"
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    after_seq INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    journal_seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    case_id TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at_ms INTEGER,
    last_status_code INTEGER,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    UNIQUE (endpoint, journal_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint, status, id);
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    roles TEXT NOT NULL,
    required INTEGER NOT NULL,
    approvals INTEGER NOT NULL,
    approvers TEXT NOT NULL,
    amount DOUBLE PRECISION,
    due_at_ms INTEGER,
    overdue INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    decided_at_ms INTEGER,
    decision TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX tasks_open ON tasks (status, created_at_ms);
CREATE INDEX tasks_case ON tasks (case_id);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,
    approval_limit DOUBLE PRECISION,
    disabled INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE exceptions (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,
    status TEXT NOT NULL,
    raised_at_ms INTEGER NOT NULL,
    resolved_at_ms INTEGER,
    resolution TEXT,
    resolved_by TEXT,
    assignee TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX exceptions_list ON exceptions (status, raised_at_ms);
CREATE INDEX exceptions_fingerprint ON exceptions (fingerprint, raised_at_ms);
CREATE INDEX exceptions_case ON exceptions (case_id);
CREATE TABLE exception_patterns (
    fingerprint TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT,
    kind TEXT NOT NULL,
    template TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    total INTEGER NOT NULL,
    spike_day INTEGER
);
"#,
    ),
    (
        6,
        r#"
ALTER TABLE exceptions ADD COLUMN queue TEXT;
ALTER TABLE exceptions ADD COLUMN priority TEXT;
ALTER TABLE exceptions ADD COLUMN priority_rank INTEGER;
ALTER TABLE exceptions ADD COLUMN routed_by TEXT;
ALTER TABLE exceptions ADD COLUMN ladder_queue TEXT;
ALTER TABLE exceptions ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE exceptions ADD COLUMN escalated_to TEXT;
ALTER TABLE exceptions ADD COLUMN next_escalation_ms INTEGER;
ALTER TABLE exceptions ADD COLUMN due_ms INTEGER;
ALTER TABLE exceptions ADD COLUMN sla_missed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE exceptions ADD COLUMN assigned_at_ms INTEGER;
CREATE INDEX exceptions_queue ON exceptions (status, queue, priority_rank);
CREATE INDEX exceptions_escalation ON exceptions (status, next_escalation_ms);
CREATE INDEX exceptions_due ON exceptions (status, sla_missed, due_ms);
CREATE INDEX exceptions_assignee ON exceptions (status, assignee);
CREATE TABLE queue_cursors (
    queue TEXT PRIMARY KEY,
    last_user TEXT NOT NULL
);
"#,
    ),
    (
        7,
        r#"
CREATE TABLE trust_operations (
    operation TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    phase INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    promoted_at_ms INTEGER,
    workflow_version INTEGER,
    config_sha256 TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE trust_outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    case_id TEXT NOT NULL,
    task_id TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    verdict TEXT NOT NULL,
    phase INTEGER NOT NULL,
    model TEXT,
    confidence REAL,
    cost_usd REAL,
    ai_step TEXT,
    proposed_label TEXT,
    final_label TEXT
);
CREATE INDEX trust_outcomes_operation ON trust_outcomes (operation, at_ms, verdict);
CREATE INDEX trust_outcomes_operation_id ON trust_outcomes (operation, id);
CREATE INDEX trust_outcomes_model ON trust_outcomes (ai_step, model, confidence, verdict);
CREATE TABLE calibrators (
    ai_step TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    calibrator TEXT NOT NULL,
    ece_before REAL NOT NULL,
    ece_after REAL NOT NULL,
    pairs INTEGER NOT NULL,
    fitted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (ai_step, model)
);
CREATE TABLE trust_recommendations (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    from_phase INTEGER NOT NULL,
    to_phase INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    decided_at_ms INTEGER,
    decided_by TEXT,
    evidence TEXT NOT NULL
);
CREATE INDEX trust_recommendations_operation ON trust_recommendations (operation, status);
"#,
    ),
    (
        8,
        r#"
CREATE TABLE drift_observations (
    workflow TEXT NOT NULL,
    feature TEXT NOT NULL,
    case_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    value_num REAL,
    value_cat TEXT,
    PRIMARY KEY (workflow, feature, case_id)
);
CREATE INDEX drift_observations_window ON drift_observations (workflow, feature, at_ms);
CREATE TABLE drift_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
INSERT INTO drift_cursor (name, seq) VALUES ('observations', 0);
CREATE TABLE drift_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    feature TEXT NOT NULL,
    evaluated_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    kind TEXT,
    method TEXT,
    parameters TEXT NOT NULL,
    value REAL,
    threshold REAL,
    drifted INTEGER NOT NULL,
    alerted INTEGER NOT NULL,
    reference_rows INTEGER NOT NULL,
    current_rows INTEGER NOT NULL,
    failed_rows INTEGER NOT NULL,
    reference_from_ms INTEGER NOT NULL,
    current_from_ms INTEGER NOT NULL,
    current_to_ms INTEGER NOT NULL
);
CREATE INDEX drift_results_feature ON drift_results (workflow, feature, id);
"#,
    ),
    (
        9,
        r#"
CREATE INDEX journal_kind_at ON journal (kind, at);
CREATE INDEX cases_created ON cases (created_at_ms, workflow, status, sla_breached, updated_at_ms);
CREATE INDEX trust_outcomes_at ON trust_outcomes (at_ms);
CREATE INDEX exceptions_raised ON exceptions (raised_at_ms);
"#,
    ),
    (
        10,
        r#"
ALTER TABLE calibrators ADD COLUMN reviews_seen INTEGER NOT NULL DEFAULT 0;
CREATE INDEX trust_outcomes_model_id ON trust_outcomes (ai_step, model, id);
"#,
    ),
    (
        11,
        r#"
ALTER TABLE drift_results ADD COLUMN windows TEXT NOT NULL DEFAULT 'time';
ALTER TABLE drift_results ADD COLUMN streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE drift_results ADD COLUMN streak_to_ms INTEGER;
ALTER TABLE drift_results ADD COLUMN alerting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE drift_results ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;
UPDATE drift_results SET streak = drifted, alerting = drifted,
    streak_to_ms = CASE WHEN drifted = 1 THEN current_to_ms END;
DROP INDEX drift_observations_window;
CREATE INDEX drift_observations_newest ON drift_observations (workflow, feature, at_ms, case_id);
"#,
    ),
    (
        12,
        r#"
ALTER TABLE workflows ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE workflows ADD COLUMN author TEXT;
ALTER TABLE workflows ADD COLUMN decided_by TEXT;
ALTER TABLE workflows ADD COLUMN decision_reason TEXT;
ALTER TABLE workflows ADD COLUMN decided_at_ms INTEGER;
ALTER TABLE workflows ADD COLUMN changes TEXT NOT NULL DEFAULT '[]';
CREATE TABLE learner_states (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    requested_by TEXT,
    evidence TEXT NOT NULL DEFAULT '{}',
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (workflow, step, version)
);
INSERT INTO learner_states (workflow, step, version, status, updated_at_ms)
    SELECT l.workflow, l.step, l.version,
           CASE WHEN l.version = (SELECT MAX(m.version) FROM learners m WHERE m.workflow = l.workflow AND m.step = l.step) THEN 'serving' ELSE 'retired' END,
           l.created_at_ms
    FROM learners l;
CREATE TABLE learner_trained (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    PRIMARY KEY (workflow, step, text_sha256)
);
"#,
    ),
];

/// (version, SQL) for PostgreSQL.
pub const POSTGRES: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE workflows (
    name TEXT NOT NULL,
    version_no BIGINT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    deployed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version_no)
);
CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    workflow_version BIGINT NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    current_step TEXT,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    runnable_at_ms BIGINT,
    lease_owner TEXT,
    lease_until_ms BIGINT,
    sla_due_ms BIGINT,
    sla_breached BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX cases_idempotency ON cases (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX cases_runnable ON cases (runnable_at_ms) WHERE runnable_at_ms IS NOT NULL;
CREATE INDEX cases_sla ON cases (sla_due_ms) WHERE sla_due_ms IS NOT NULL;
CREATE INDEX cases_list ON cases (workflow, status, id);
CREATE TABLE journal (
    seq BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    case_id TEXT,
    workflow TEXT,
    step TEXT,
    task_id TEXT,
    exception_id TEXT,
    data TEXT NOT NULL,
    data_sha256 TEXT NOT NULL
);
CREATE INDEX journal_case ON journal (case_id, seq);
CREATE TABLE ledger_leaves (leaf_index BIGINT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, leaf_hash BYTEA NOT NULL);
CREATE TABLE ledger_nodes (level BIGINT NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE checkpoints (tree_size BIGINT PRIMARY KEY, root BYTEA NOT NULL, note TEXT NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms BIGINT NOT NULL);
CREATE FUNCTION keel_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keel: % is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal FOR EACH ROW EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal FOR EACH STATEMENT EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER leaves_append_only BEFORE UPDATE OR DELETE ON ledger_leaves FOR EACH ROW EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER leaves_no_truncate BEFORE TRUNCATE ON ledger_leaves FOR EACH STATEMENT EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER nodes_append_only BEFORE UPDATE OR DELETE ON ledger_nodes FOR EACH ROW EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON ledger_nodes FOR EACH STATEMENT EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints FOR EACH ROW EXECUTE FUNCTION keel_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints FOR EACH STATEMENT EXECUTE FUNCTION keel_append_only();
"#,
    ),
    (
        2,
        r#"
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
CREATE TABLE ai_calls (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    day TEXT NOT NULL,
    source TEXT NOT NULL,
    caller TEXT,
    workflow TEXT,
    step TEXT,
    case_id TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cost_nano BIGINT,
    latency_ms BIGINT NOT NULL,
    cache_hit BIGINT NOT NULL,
    attempts BIGINT NOT NULL
);
CREATE INDEX ai_calls_day ON ai_calls (day);
CREATE TABLE learners (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    version BIGINT NOT NULL,
    model BYTEA NOT NULL,
    examples BIGINT NOT NULL,
    source TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (workflow, step, version)
);
CREATE TRIGGER learners_append_only BEFORE UPDATE ON learners FOR EACH ROW EXECUTE FUNCTION keel_append_only();
"#,
    ),
    (
        4,
        r#"
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    after_seq BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    journal_seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    case_id TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at_ms BIGINT,
    last_status_code BIGINT,
    last_error TEXT,
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    UNIQUE (endpoint, journal_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint, status, id);
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    roles TEXT NOT NULL,
    required BIGINT NOT NULL,
    approvals BIGINT NOT NULL,
    approvers TEXT NOT NULL,
    amount DOUBLE PRECISION,
    due_at_ms BIGINT,
    overdue BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    decided_at_ms BIGINT,
    decision TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX tasks_open ON tasks (status, created_at_ms);
CREATE INDEX tasks_case ON tasks (case_id);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,
    approval_limit DOUBLE PRECISION,
    disabled BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE exceptions (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    template TEXT NOT NULL,
    status TEXT NOT NULL,
    raised_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT,
    resolution TEXT,
    resolved_by TEXT,
    assignee TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX exceptions_list ON exceptions (status, raised_at_ms);
CREATE INDEX exceptions_fingerprint ON exceptions (fingerprint, raised_at_ms);
CREATE INDEX exceptions_case ON exceptions (case_id);
CREATE TABLE exception_patterns (
    fingerprint TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT,
    kind TEXT NOT NULL,
    template TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    total BIGINT NOT NULL,
    spike_day BIGINT
);
"#,
    ),
    (
        6,
        r#"
ALTER TABLE exceptions ADD COLUMN queue TEXT;
ALTER TABLE exceptions ADD COLUMN priority TEXT;
ALTER TABLE exceptions ADD COLUMN priority_rank BIGINT;
ALTER TABLE exceptions ADD COLUMN routed_by TEXT;
ALTER TABLE exceptions ADD COLUMN ladder_queue TEXT;
ALTER TABLE exceptions ADD COLUMN level BIGINT NOT NULL DEFAULT 0;
ALTER TABLE exceptions ADD COLUMN escalated_to TEXT;
ALTER TABLE exceptions ADD COLUMN next_escalation_ms BIGINT;
ALTER TABLE exceptions ADD COLUMN due_ms BIGINT;
ALTER TABLE exceptions ADD COLUMN sla_missed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE exceptions ADD COLUMN assigned_at_ms BIGINT;
CREATE INDEX exceptions_queue ON exceptions (status, queue, priority_rank);
CREATE INDEX exceptions_escalation ON exceptions (status, next_escalation_ms);
CREATE INDEX exceptions_due ON exceptions (status, sla_missed, due_ms);
CREATE INDEX exceptions_assignee ON exceptions (status, assignee);
CREATE TABLE queue_cursors (
    queue TEXT PRIMARY KEY,
    last_user TEXT NOT NULL
);
"#,
    ),
    (
        7,
        r#"
CREATE TABLE trust_operations (
    operation TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    phase BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    promoted_at_ms BIGINT,
    workflow_version BIGINT,
    config_sha256 TEXT,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE trust_outcomes (
    id BIGSERIAL PRIMARY KEY,
    operation TEXT NOT NULL,
    case_id TEXT NOT NULL,
    task_id TEXT NOT NULL UNIQUE,
    at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    verdict TEXT NOT NULL,
    phase BIGINT NOT NULL,
    model TEXT,
    confidence DOUBLE PRECISION,
    cost_usd DOUBLE PRECISION,
    ai_step TEXT,
    proposed_label TEXT,
    final_label TEXT
);
CREATE INDEX trust_outcomes_operation ON trust_outcomes (operation, at_ms, verdict);
CREATE INDEX trust_outcomes_operation_id ON trust_outcomes (operation, id);
CREATE INDEX trust_outcomes_model ON trust_outcomes (ai_step, model, confidence, verdict);
CREATE TABLE calibrators (
    ai_step TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    calibrator TEXT NOT NULL,
    ece_before DOUBLE PRECISION NOT NULL,
    ece_after DOUBLE PRECISION NOT NULL,
    pairs BIGINT NOT NULL,
    fitted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ai_step, model)
);
CREATE TABLE trust_recommendations (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    from_phase BIGINT NOT NULL,
    to_phase BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    decided_at_ms BIGINT,
    decided_by TEXT,
    evidence TEXT NOT NULL
);
CREATE INDEX trust_recommendations_operation ON trust_recommendations (operation, status);
"#,
    ),
    (
        8,
        r#"
CREATE TABLE drift_observations (
    workflow TEXT NOT NULL,
    feature TEXT NOT NULL,
    case_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    value_num DOUBLE PRECISION,
    value_cat TEXT,
    PRIMARY KEY (workflow, feature, case_id)
);
CREATE INDEX drift_observations_window ON drift_observations (workflow, feature, at_ms);
CREATE TABLE drift_cursor (name TEXT PRIMARY KEY, seq BIGINT NOT NULL);
INSERT INTO drift_cursor (name, seq) VALUES ('observations', 0);
CREATE TABLE drift_results (
    id BIGSERIAL PRIMARY KEY,
    workflow TEXT NOT NULL,
    feature TEXT NOT NULL,
    evaluated_at_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT,
    method TEXT,
    parameters TEXT NOT NULL,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    drifted BIGINT NOT NULL,
    alerted BIGINT NOT NULL,
    reference_rows BIGINT NOT NULL,
    current_rows BIGINT NOT NULL,
    failed_rows BIGINT NOT NULL,
    reference_from_ms BIGINT NOT NULL,
    current_from_ms BIGINT NOT NULL,
    current_to_ms BIGINT NOT NULL
);
CREATE INDEX drift_results_feature ON drift_results (workflow, feature, id);
"#,
    ),
    (
        9,
        r#"
CREATE INDEX journal_kind_at ON journal (kind, at);
CREATE INDEX cases_created ON cases (created_at_ms, workflow, status, sla_breached, updated_at_ms);
CREATE INDEX trust_outcomes_at ON trust_outcomes (at_ms);
CREATE INDEX exceptions_raised ON exceptions (raised_at_ms);
"#,
    ),
    (
        10,
        r#"
ALTER TABLE calibrators ADD COLUMN reviews_seen BIGINT NOT NULL DEFAULT 0;
CREATE INDEX trust_outcomes_model_id ON trust_outcomes (ai_step, model, id);
"#,
    ),
    (
        11,
        r#"
ALTER TABLE drift_results ADD COLUMN windows TEXT NOT NULL DEFAULT 'time';
ALTER TABLE drift_results ADD COLUMN streak BIGINT NOT NULL DEFAULT 0;
ALTER TABLE drift_results ADD COLUMN streak_to_ms BIGINT;
ALTER TABLE drift_results ADD COLUMN alerting BIGINT NOT NULL DEFAULT 0;
ALTER TABLE drift_results ADD COLUMN recovered BIGINT NOT NULL DEFAULT 0;
UPDATE drift_results SET streak = drifted, alerting = drifted,
    streak_to_ms = CASE WHEN drifted = 1 THEN current_to_ms END;
DROP INDEX drift_observations_window;
CREATE INDEX drift_observations_newest ON drift_observations (workflow, feature, at_ms, case_id);
"#,
    ),
    (
        12,
        r#"
ALTER TABLE workflows ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE workflows ADD COLUMN author TEXT;
ALTER TABLE workflows ADD COLUMN decided_by TEXT;
ALTER TABLE workflows ADD COLUMN decision_reason TEXT;
ALTER TABLE workflows ADD COLUMN decided_at_ms BIGINT;
ALTER TABLE workflows ADD COLUMN changes TEXT NOT NULL DEFAULT '[]';
CREATE TABLE learner_states (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    requested_by TEXT,
    evidence TEXT NOT NULL DEFAULT '{}',
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (workflow, step, version)
);
INSERT INTO learner_states (workflow, step, version, status, updated_at_ms)
    SELECT l.workflow, l.step, l.version,
           CASE WHEN l.version = (SELECT MAX(m.version) FROM learners m WHERE m.workflow = l.workflow AND m.step = l.step) THEN 'serving' ELSE 'retired' END,
           l.created_at_ms
    FROM learners l;
CREATE TABLE learner_trained (
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    PRIMARY KEY (workflow, step, text_sha256)
);
"#,
    ),
];
