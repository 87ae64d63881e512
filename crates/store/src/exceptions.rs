//! Exceptions and their patterns.
//!
//! `exceptions` is a projection of the journal, like `tasks`: `commit` updates it from the
//! `exception.raised`, `exception.assigned`, `exception.resolved` and `sla.breached` entries it
//! writes, in the same transaction. An SLA breach is an exception of kind `sla_breach` that does
//! not park its case. Every exception has a fingerprint (`keel_core::fingerprint`: workflow,
//! step, kind and the message with its data masked); `exception_patterns` counts them per
//! fingerprint, and the same transaction journals `exception.pattern_new` for a fingerprint's
//! first exception and `exception.pattern_spike` (once per fingerprint per UTC day) when
//! today's count passes [`SPIKE_FACTOR`] × the daily average of the seven days before and is
//! at least [`SPIKE_MIN_COUNT`].

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{Backend, NewEntry, Result, Store, MAX_PAGE};

/// A fingerprint spikes when today's count exceeds this many times its recent daily average.
pub const SPIKE_FACTOR: f64 = 3.0;
/// ... and today's count is at least this.
pub const SPIKE_MIN_COUNT: i64 = 5;
/// Days of daily counts in a pattern report (and twice this for the trend).
pub const PATTERN_DAYS: i64 = 14;
/// ISO weeks of weekly counts in a pattern report.
pub const PATTERN_WEEKS: i64 = 8;
/// Most exception rows read to build one pattern report (counts and resolution times).
const PATTERN_ROWS: i64 = 200_000;
const DAY_MS: i64 = 86_400_000;

/// One exception as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExceptionRow {
    pub id: String,
    pub case_id: String,
    pub workflow: String,
    pub step: Option<String>,
    /// `ai_failed`, `budget_exhausted`, `rejected`, `sla_breach`, …
    pub kind: String,
    pub message: String,
    pub fingerprint: String,
    pub template: String,
    /// `open` or `resolved`.
    pub status: String,
    pub raised_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    /// The `exception.resolved` entry's data: action, note, output or target step.
    pub resolution: Option<Value>,
    pub resolved_by: Option<String>,
    pub assignee: Option<String>,
    /// The raising entry's data: the context as it was (case data, attempts).
    pub detail: Value,
    /// The queue the exception desk routed it to (`None` until routed).
    pub queue: Option<String>,
    /// `low`, `normal`, `high` or `urgent` (set with the queue).
    pub priority: Option<String>,
    /// The rule that chose the queue (`rule 2 (when …)` or `default`).
    pub routed_by: Option<String>,
    /// The queue whose escalation ladder it follows (the one it was routed to).
    pub ladder_queue: Option<String>,
    /// Escalation levels passed so far (0: none).
    pub level: i64,
    /// Where the last escalation sent it: `queue:NAME` or `role:NAME`.
    pub escalated_to: Option<String>,
    /// When the next ladder level fires, if there is one.
    pub next_escalation_ms: Option<i64>,
    /// The queue's SLA deadline, if the queue has an SLA.
    pub due_ms: Option<i64>,
    /// Whether the queue's SLA deadline passed while it was open.
    pub sla_missed: bool,
    pub assigned_at_ms: Option<i64>,
}

/// Which exceptions to list.
#[derive(Debug, Clone, Default)]
pub struct ExceptionFilter {
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub kind: Option<String>,
    pub fingerprint: Option<String>,
    pub queue: Option<String>,
    pub assignee: Option<String>,
    /// "Mine": assigned to this user, unassigned in one of these queues, or escalated to one
    /// of these roles.
    pub mine: Option<Mine>,
    pub limit: i64,
}

/// What makes an exception someone's (see [`ExceptionFilter::mine`]).
#[derive(Debug, Clone, Default)]
pub struct Mine {
    pub user: String,
    pub queues: Vec<String>,
    pub roles: Vec<String>,
}

/// One fingerprint's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatternRow {
    pub fingerprint: String,
    pub workflow: String,
    pub step: Option<String>,
    pub kind: String,
    pub template: String,
    pub total: i64,
    pub open: i64,
    pub resolved: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The last [`PATTERN_DAYS`] UTC days, oldest first (`YYYY-MM-DD`, count).
    pub per_day: Vec<(String, i64)>,
    /// The last [`PATTERN_WEEKS`] ISO weeks, oldest first (`YYYY-Www`, count).
    pub per_week: Vec<(String, i64)>,
    pub median_resolve_ms: Option<i64>,
    pub trend: Trend,
}

/// The last seven days against the seven before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// `rising` (≥ 1.25×), `falling` (≤ 0.8×) or `flat`.
    pub direction: String,
    pub last_7_days: i64,
    pub previous_7_days: i64,
    /// last / previous; `None` when the previous week had none.
    pub ratio: Option<f64>,
}

/// One change to the `exceptions` projection, read from a journal entry.
pub(crate) enum ExceptionChange {
    Raised(Box<ExceptionRow>),
    Assigned {
        id: String,
        to: String,
    },
    Resolved {
        id: String,
        at_ms: i64,
        by: String,
        resolution: Value,
    },
}

fn entry_ms(entry: &NewEntry) -> i64 {
    at_ms(&entry.at)
}

/// Milliseconds of an RFC 3339 time (0 if it does not parse).
pub(crate) fn at_ms(at: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(at).map_or(0, |t| t.timestamp_millis())
}

/// The projection changes of `entries`, in order, each with its entry's time (RFC 3339).
pub(crate) fn exception_changes<'e>(
    entries: impl Iterator<Item = &'e NewEntry>,
) -> Vec<(ExceptionChange, String)> {
    let mut changes = Vec::new();
    for entry in entries {
        let kind = entry.kind.as_str();
        if !kind.starts_with("exception.") && kind != "sla.breached" {
            continue;
        }
        let Ok(data) = serde_json::from_str::<Value>(&entry.data) else {
            continue;
        };
        let text = |key: &str| data[key].as_str().unwrap_or_default().to_string();
        let change = match kind {
            "exception.raised" | "sla.breached" => {
                ExceptionChange::Raised(Box::new(raised(entry, &data)))
            }
            "exception.assigned" => ExceptionChange::Assigned {
                id: text("exception_id"),
                to: text("to"),
            },
            "exception.resolved" => ExceptionChange::Resolved {
                id: text("exception_id"),
                at_ms: entry_ms(entry),
                by: text("by"),
                resolution: data.clone(),
            },
            _ => continue,
        };
        changes.push((change, entry.at.clone()));
    }
    changes
}

/// The exception an `exception.raised` or `sla.breached` entry records.
fn raised(entry: &NewEntry, data: &Value) -> ExceptionRow {
    let case_id = entry.case_id.clone().unwrap_or_default();
    let workflow = entry.workflow.clone().unwrap_or_default();
    let at_ms = entry_ms(entry);
    let (id, kind, message, fingerprint_step) = if entry.kind == "sla.breached" {
        let step_scope = data["scope"] == "step";
        let scope = match (&entry.step, step_scope) {
            (Some(step), true) => step.clone(),
            _ => "case".to_string(),
        };
        let deadline = data["deadline_ms"].as_i64().unwrap_or(at_ms);
        let message = if step_scope {
            format!("step `{scope}` missed its SLA deadline")
        } else {
            "the case missed its SLA deadline".to_string()
        };
        let id = format!("{case_id}.sla.{scope}.{deadline}");
        let step = step_scope.then(|| scope.clone());
        (id, "sla_breach".to_string(), message, step)
    } else {
        let id = match data["exception_id"].as_str() {
            Some(id) => id.to_string(),
            None => format!(
                "{case_id}.{}.{at_ms}",
                entry.step.as_deref().unwrap_or("case")
            ),
        };
        let kind = data["kind"].as_str().unwrap_or("exception").to_string();
        let message = data["message"].as_str().unwrap_or_default().to_string();
        (id, kind, message, entry.step.clone())
    };
    let fingerprint = keel_core::fingerprint::fingerprint(
        &workflow,
        fingerprint_step.as_deref(),
        &kind,
        &message,
    );
    ExceptionRow {
        id,
        case_id,
        workflow,
        step: entry.step.clone(),
        kind,
        message,
        fingerprint: fingerprint.id,
        template: fingerprint.template,
        status: "open".into(),
        raised_at_ms: at_ms,
        resolved_at_ms: None,
        resolution: None,
        resolved_by: None,
        assignee: None,
        detail: data.clone(),
        queue: None,
        priority: None,
        routed_by: None,
        ladder_queue: None,
        level: 0,
        escalated_to: None,
        next_escalation_ms: None,
        due_ms: None,
        sla_missed: false,
        assigned_at_ms: None,
    }
}

/// Whether `today` exceptions of one fingerprint, after `previous_7_days` in the seven days
/// before, is a spike.
pub(crate) fn is_spike(today: i64, previous_7_days: i64) -> bool {
    today >= SPIKE_MIN_COUNT && today as f64 > SPIKE_FACTOR * previous_7_days as f64 / 7.0
}

/// The UTC day number of `ms`.
pub(crate) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

pub(crate) fn day_start_ms(day: i64) -> i64 {
    day * DAY_MS
}

/// A journal entry about a pattern, for the case whose exception made it.
pub(crate) fn pattern_entry(
    kind: &str,
    exception: &ExceptionRow,
    at: &str,
    extra: Value,
) -> NewEntry {
    let mut data = json!({
        "fingerprint": exception.fingerprint,
        "template": exception.template,
        "kind": exception.kind,
        "exception_id": exception.id,
    });
    if let (Value::Object(fields), Value::Object(more)) = (&mut data, extra) {
        fields.extend(more);
    }
    let canonical = keel_ledger::jcs::canonicalize(&data);
    let data_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&canonical))
    };
    NewEntry {
        at: at.to_string(),
        kind: kind.to_string(),
        actor_type: "system".into(),
        actor_id: "engine".into(),
        case_id: Some(exception.case_id.clone()),
        workflow: Some(exception.workflow.clone()),
        step: exception.step.clone(),
        data: String::from_utf8_lossy(&canonical).into_owned(),
        data_sha256,
    }
}

/// Applies `exceptions` projection changes inside the transaction `$tx`, then appends the
/// pattern entries they cause (`exception.pattern_new`, `exception.pattern_spike`).
macro_rules! apply_exception_changes {
    ($tx:ident, $entries:expr) => {
        let mut pattern_entries: Vec<NewEntry> = Vec::new();
        for (change, at) in $entries {
            match change {
                $crate::exceptions::ExceptionChange::Raised(row) => {
                    let inserted = sqlx::query("INSERT INTO exceptions (id, case_id, workflow, step, kind, message, fingerprint, template, status, raised_at_ms, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', $9, $10) ON CONFLICT (id) DO NOTHING")
                        .bind(&row.id).bind(&row.case_id).bind(&row.workflow).bind(&row.step)
                        .bind(&row.kind).bind(&row.message).bind(&row.fingerprint).bind(&row.template)
                        .bind(row.raised_at_ms).bind(row.detail.to_string())
                        .execute(&mut *$tx).await?.rows_affected();
                    if inserted == 0 {
                        continue;
                    }
                    let known: Option<Option<i64>> = sqlx::query_scalar("SELECT spike_day FROM exception_patterns WHERE fingerprint = $1")
                        .bind(&row.fingerprint).fetch_optional(&mut *$tx).await?;
                    match known {
                        None => {
                            sqlx::query("INSERT INTO exception_patterns (fingerprint, workflow, step, kind, template, first_seen_ms, last_seen_ms, total, spike_day) VALUES ($1, $2, $3, $4, $5, $6, $6, 1, NULL)")
                                .bind(&row.fingerprint).bind(&row.workflow).bind(&row.step).bind(&row.kind)
                                .bind(&row.template).bind(row.raised_at_ms)
                                .execute(&mut *$tx).await?;
                            pattern_entries.push($crate::exceptions::pattern_entry("exception.pattern_new", &row, &at, serde_json::json!({})));
                        }
                        Some(spike_day) => {
                            sqlx::query("UPDATE exception_patterns SET total = total + 1, last_seen_ms = $1 WHERE fingerprint = $2")
                                .bind(row.raised_at_ms).bind(&row.fingerprint)
                                .execute(&mut *$tx).await?;
                            let today = $crate::exceptions::day_of(row.raised_at_ms);
                            let today_start = $crate::exceptions::day_start_ms(today);
                            let (count_today, previous): (i64, i64) = sqlx::query_as("SELECT COALESCE(SUM(CASE WHEN raised_at_ms >= $2 THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN raised_at_ms < $2 THEN 1 ELSE 0 END), 0) FROM exceptions WHERE fingerprint = $1 AND raised_at_ms >= $3 AND raised_at_ms < $4")
                                .bind(&row.fingerprint).bind(today_start)
                                .bind($crate::exceptions::day_start_ms(today - 7))
                                .bind($crate::exceptions::day_start_ms(today + 1))
                                .fetch_one(&mut *$tx).await?;
                            if spike_day != Some(today) && $crate::exceptions::is_spike(count_today, previous) {
                                sqlx::query("UPDATE exception_patterns SET spike_day = $1 WHERE fingerprint = $2")
                                    .bind(today).bind(&row.fingerprint)
                                    .execute(&mut *$tx).await?;
                                let extra = serde_json::json!({"today": count_today, "previous_7_days": previous, "factor": $crate::exceptions::SPIKE_FACTOR});
                                pattern_entries.push($crate::exceptions::pattern_entry("exception.pattern_spike", &row, &at, extra));
                            }
                        }
                    }
                }
                $crate::exceptions::ExceptionChange::Assigned { id, to } => {
                    sqlx::query("UPDATE exceptions SET assignee = $1, assigned_at_ms = $2 WHERE id = $3")
                        .bind(&to).bind($crate::exceptions::at_ms(&at)).bind(&id)
                        .execute(&mut *$tx).await?;
                }
                $crate::exceptions::ExceptionChange::Resolved { id, at_ms, by, resolution } => {
                    sqlx::query("UPDATE exceptions SET status = 'resolved', resolved_at_ms = $1, resolved_by = $2, resolution = $3 WHERE id = $4 AND status = 'open'")
                        .bind(at_ms).bind(&by).bind(resolution.to_string()).bind(&id)
                        .execute(&mut *$tx).await?;
                }
            }
        }
        insert_entries!($tx, pattern_entries);
    };
}

pub(crate) fn exception_from<R: Row>(row: &R) -> Result<ExceptionRow>
where
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let detail: String = row.try_get("detail")?;
    let resolution: Option<String> = row.try_get("resolution")?;
    Ok(ExceptionRow {
        id: row.try_get("id")?,
        case_id: row.try_get("case_id")?,
        workflow: row.try_get("workflow")?,
        step: row.try_get("step")?,
        kind: row.try_get("kind")?,
        message: row.try_get("message")?,
        fingerprint: row.try_get("fingerprint")?,
        template: row.try_get("template")?,
        status: row.try_get("status")?,
        raised_at_ms: row.try_get("raised_at_ms")?,
        resolved_at_ms: row.try_get("resolved_at_ms")?,
        resolution: resolution.and_then(|text| serde_json::from_str(&text).ok()),
        resolved_by: row.try_get("resolved_by")?,
        assignee: row.try_get("assignee")?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        routed_by: row.try_get("routed_by")?,
        ladder_queue: row.try_get("ladder_queue")?,
        level: row.try_get("level")?,
        escalated_to: row.try_get("escalated_to")?,
        next_escalation_ms: row.try_get("next_escalation_ms")?,
        due_ms: row.try_get("due_ms")?,
        sla_missed: row.try_get::<i64, _>("sla_missed")? != 0,
        assigned_at_ms: row.try_get("assigned_at_ms")?,
    })
}

pub(crate) const EXCEPTION_COLUMNS: &str = "id, case_id, workflow, step, kind, message, fingerprint, template, status, raised_at_ms, resolved_at_ms, resolution, resolved_by, assignee, detail, queue, priority, routed_by, ladder_queue, level, escalated_to, next_escalation_ms, due_ms, sla_missed, assigned_at_ms";

/// One fingerprint's counts from the `exception_patterns` and `exceptions` tables.
struct PatternCounts {
    fingerprint: String,
    workflow: String,
    step: Option<String>,
    kind: String,
    template: String,
    total: i64,
    open: i64,
    first_seen_ms: i64,
    last_seen_ms: i64,
}

impl Store {
    /// One exception by id.
    pub async fn exception(&self, id: &str) -> Result<Option<ExceptionRow>> {
        let sql = format!("SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE id = $1");
        dispatch_read!(self, |pool| {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(exception_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Exceptions raised at or after `from_ms`, oldest first, at most `limit`: what the trust
    /// pass reads to find critical exceptions of operations.
    pub async fn exceptions_raised_since(
        &self,
        from_ms: i64,
        limit: i64,
    ) -> Result<Vec<ExceptionRow>> {
        let sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE raised_at_ms >= $1 ORDER BY raised_at_ms, id LIMIT $2"
        );
        dispatch_read!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(from_ms)
                .bind(limit.max(1))
                .fetch_all(pool)
                .await?;
            rows.iter().map(exception_from).collect()
        })
    }

    /// Exceptions, filtered; oldest first, or most urgent first and then oldest when listing
    /// a queue or someone's work; at most `limit` (capped at [`MAX_PAGE`]).
    pub async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<ExceptionRow>> {
        let mut sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR workflow = $2) \
             AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR fingerprint = $4) AND ($5 IS NULL OR queue = $5) \
             AND ($6 IS NULL OR assignee = $6)"
        );
        let mut binds: Vec<String> = Vec::new();
        if let Some(mine) = &filter.mine {
            binds.push(mine.user.clone());
            sql.push_str(&format!(" AND (assignee = ${}", 6 + binds.len()));
            let mut queues = Vec::new();
            for queue in &mine.queues {
                binds.push(queue.clone());
                queues.push(format!("queue = ${}", 6 + binds.len()));
            }
            if !queues.is_empty() {
                sql.push_str(&format!(
                    " OR (assignee IS NULL AND ({}))",
                    queues.join(" OR ")
                ));
            }
            for role in &mine.roles {
                binds.push(format!("role:{role}"));
                sql.push_str(&format!(" OR escalated_to = ${}", 6 + binds.len()));
            }
            sql.push(')');
        }
        let ordered = filter.queue.is_some() || filter.mine.is_some();
        sql.push_str(if ordered {
            " ORDER BY COALESCE(priority_rank, 1) DESC, raised_at_ms, id"
        } else {
            " ORDER BY raised_at_ms, id"
        });
        sql.push_str(&format!(" LIMIT ${}", 7 + binds.len()));
        dispatch_read!(self, |pool| {
            let mut query = sqlx::query(&sql)
                .bind(&filter.status)
                .bind(&filter.workflow)
                .bind(&filter.kind)
                .bind(&filter.fingerprint)
                .bind(&filter.queue)
                .bind(&filter.assignee);
            for value in &binds {
                query = query.bind(value);
            }
            query
                .bind(filter.limit.clamp(1, MAX_PAGE))
                .fetch_all(pool)
                .await?
                .iter()
                .map(exception_from)
                .collect()
        })
    }

    /// Every fingerprint's history as of `now_ms`, the most frequent first (at most
    /// [`MAX_PAGE`] fingerprints). Totals come from SQL; day, week and median figures are
    /// computed here over at most `PATTERN_ROWS` recent rows.
    pub async fn exception_patterns(&self, now_ms: i64) -> Result<Vec<PatternRow>> {
        let since_ms = now_ms - (PATTERN_WEEKS * 7 + 7) * DAY_MS;
        let (counts, raised, resolve_times) = dispatch_read!(self, |pool| {
            let counts = sqlx::query(
                "SELECT p.fingerprint, p.workflow, p.step, p.kind, p.template, p.total, p.first_seen_ms, p.last_seen_ms, \
                 (SELECT COUNT(*) FROM exceptions e WHERE e.fingerprint = p.fingerprint AND e.status = 'open') AS open_count \
                 FROM exception_patterns p ORDER BY p.total DESC, p.fingerprint LIMIT $1",
            )
            .bind(MAX_PAGE)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(PatternCounts {
                    fingerprint: row.try_get("fingerprint")?,
                    workflow: row.try_get("workflow")?,
                    step: row.try_get("step")?,
                    kind: row.try_get("kind")?,
                    template: row.try_get("template")?,
                    total: row.try_get("total")?,
                    open: row.try_get("open_count")?,
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    last_seen_ms: row.try_get("last_seen_ms")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            let raised: Vec<(String, i64)> = sqlx::query_as(
                "SELECT fingerprint, raised_at_ms FROM exceptions WHERE raised_at_ms >= $1 ORDER BY raised_at_ms DESC LIMIT $2",
            )
            .bind(since_ms)
            .bind(PATTERN_ROWS)
            .fetch_all(pool)
            .await?;
            let resolve_times: Vec<(String, i64)> = sqlx::query_as(
                "SELECT fingerprint, resolved_at_ms - raised_at_ms FROM exceptions WHERE status = 'resolved' AND resolved_at_ms IS NOT NULL ORDER BY resolved_at_ms DESC LIMIT $1",
            )
            .bind(PATTERN_ROWS)
            .fetch_all(pool)
            .await?;
            Ok::<_, crate::Error>((counts, raised, resolve_times))
        })?;
        let mut raised_by_fingerprint: HashMap<String, Vec<i64>> = HashMap::new();
        for (fingerprint, at_ms) in raised {
            raised_by_fingerprint
                .entry(fingerprint)
                .or_default()
                .push(at_ms);
        }
        let mut resolve_by_fingerprint: HashMap<String, Vec<i64>> = HashMap::new();
        for (fingerprint, ms) in resolve_times {
            resolve_by_fingerprint
                .entry(fingerprint)
                .or_default()
                .push(ms);
        }
        Ok(counts
            .into_iter()
            .map(|counts| {
                let times = raised_by_fingerprint
                    .remove(&counts.fingerprint)
                    .unwrap_or_default();
                let mut durations = resolve_by_fingerprint
                    .remove(&counts.fingerprint)
                    .unwrap_or_default();
                pattern_row(counts, &times, &mut durations, now_ms)
            })
            .collect())
    }
}

fn pattern_row(
    counts: PatternCounts,
    raised_ms: &[i64],
    resolve_ms: &mut [i64],
    now_ms: i64,
) -> PatternRow {
    let today = day_of(now_ms);
    let per_day_count = |day: i64| raised_ms.iter().filter(|at| day_of(**at) == day).count() as i64;
    let per_day = (0..PATTERN_DAYS)
        .rev()
        .map(|back| (day_label(today - back), per_day_count(today - back)))
        .collect();
    let mut per_week: Vec<(String, i64)> = Vec::new();
    for back in (0..PATTERN_WEEKS).rev() {
        let label = week_label(now_ms - back * 7 * DAY_MS);
        let count = raised_ms
            .iter()
            .filter(|at| week_label(**at) == label)
            .count() as i64;
        per_week.push((label, count));
    }
    let window = |from: i64, to: i64| (from..=to).map(per_day_count).sum::<i64>();
    let last_7_days = window(today - 6, today);
    let previous_7_days = window(today - 13, today - 7);
    PatternRow {
        fingerprint: counts.fingerprint,
        workflow: counts.workflow,
        step: counts.step,
        kind: counts.kind,
        template: counts.template,
        total: counts.total,
        open: counts.open,
        resolved: counts.total - counts.open,
        first_seen_ms: counts.first_seen_ms,
        last_seen_ms: counts.last_seen_ms,
        per_day,
        per_week,
        median_resolve_ms: median(resolve_ms),
        trend: trend(last_7_days, previous_7_days),
    }
}

pub(crate) fn trend(last_7_days: i64, previous_7_days: i64) -> Trend {
    let ratio = (previous_7_days > 0).then(|| last_7_days as f64 / previous_7_days as f64);
    let direction = match ratio {
        Some(r) if r >= 1.25 => "rising",
        Some(r) if r <= 0.8 => "falling",
        Some(_) => "flat",
        None if last_7_days > 0 => "rising",
        None => "flat",
    };
    Trend {
        direction: direction.to_string(),
        last_7_days,
        previous_7_days,
        ratio,
    }
}

pub(crate) fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2
    } else {
        values[middle]
    })
}

fn day_label(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day_start_ms(day))
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn week_label(ms: i64) -> String {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            let week = t.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_need_the_factor_and_the_minimum() {
        for (today, previous, expect) in [
            (5, 0, true),
            (4, 0, false),
            (5, 7, true),   // 5 > 3 × 1
            (6, 14, false), // 6 = 3 × 2
            (7, 14, true),
            (20, 70, false), // 20 < 3 × 10
        ] {
            assert_eq!(
                is_spike(today, previous),
                expect,
                "{today} after {previous}"
            );
        }
    }

    #[test]
    fn trends_compare_the_last_week_with_the_one_before() {
        for (last, previous, direction) in [
            (0, 0, "flat"),
            (3, 0, "rising"),
            (10, 8, "rising"),
            (9, 8, "flat"),
            (4, 5, "falling"),
        ] {
            assert_eq!(
                trend(last, previous).direction,
                direction,
                "{last} vs {previous}"
            );
        }
        assert_eq!(trend(10, 8).ratio, Some(1.25));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
    }

    #[test]
    fn days_and_iso_weeks_are_labelled_in_utc() {
        // 2026-01-01T12:00:00Z is a Thursday in ISO week 2026-W01.
        let ms = 1_767_268_800_000;
        assert_eq!(day_label(day_of(ms)), "2026-01-01");
        assert_eq!(week_label(ms), "2026-W01");
        assert_eq!(week_label(ms - 7 * DAY_MS), "2025-W52");
    }
}

#[cfg(test)]
mod projection_tests {
    use super::*;

    fn entry(kind: &str, step: &str, data: Value) -> NewEntry {
        NewEntry {
            at: "2026-01-01T12:00:00.000Z".into(),
            kind: kind.into(),
            actor_type: "system".into(),
            actor_id: "engine".into(),
            case_id: Some("c1".into()),
            workflow: Some("w".into()),
            step: Some(step.into()),
            data: data.to_string(),
            data_sha256: String::new(),
        }
    }

    #[test]
    fn sla_breaches_are_open_exceptions_of_kind_sla_breach() {
        let entries = [
            entry(
                "sla.breached",
                "review",
                json!({"scope": "step", "deadline_ms": 42, "late_ms": 1}),
            ),
            entry(
                "sla.breached",
                "review",
                json!({"scope": "case", "deadline_ms": 43, "late_ms": 1}),
            ),
            entry("step.completed", "review", json!({})),
        ];
        let changes = exception_changes(entries.iter());
        let rows: Vec<&ExceptionRow> = changes
            .iter()
            .filter_map(|(change, _)| match change {
                ExceptionChange::Raised(row) => Some(row.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "c1.sla.review.42");
        assert_eq!(rows[0].kind, "sla_breach");
        assert_eq!(rows[0].status, "open");
        assert_eq!(rows[0].message, "step `review` missed its SLA deadline");
        assert_eq!(rows[0].raised_at_ms, 1_767_268_800_000);
        assert_eq!(rows[1].id, "c1.sla.case.43");
        assert_ne!(rows[0].fingerprint, rows[1].fingerprint);
    }

    #[test]
    fn raised_resolved_and_assigned_entries_become_changes() {
        let entries = [
            entry(
                "exception.raised",
                "s",
                json!({"exception_id": "c1.s.1", "kind": "ai_failed", "message": "order 12 failed"}),
            ),
            entry(
                "exception.raised",
                "s",
                json!({"exception_id": "c1.s.2", "kind": "ai_failed", "message": "order 9 failed"}),
            ),
            entry(
                "exception.assigned",
                "s",
                json!({"exception_id": "c1.s.1", "to": "ann"}),
            ),
            entry(
                "exception.resolved",
                "s",
                json!({"exception_id": "c1.s.1", "by": "ann", "action": "retry"}),
            ),
        ];
        let changes = exception_changes(entries.iter());
        assert_eq!(changes.len(), 4);
        let fingerprints: Vec<String> = changes
            .iter()
            .filter_map(|(change, _)| match change {
                ExceptionChange::Raised(row) => Some(row.fingerprint.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(fingerprints[0], fingerprints[1]);
        assert!(
            matches!(&changes[2].0, ExceptionChange::Assigned { id, to } if id == "c1.s.1" && to == "ann")
        );
        assert!(matches!(&changes[3].0, ExceptionChange::Resolved { by, .. } if by == "ann"));
    }
}
