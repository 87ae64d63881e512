//! The exception desk's configuration (`exceptions.yaml`): queues, the rules that route
//! exceptions to them, and each queue's SLA and escalation ladder.
//!
//! ```yaml
//! calendars:                         # optional; business calendars queues may count in
//!   london: { time_zone: Europe/London, working_days: [mon, tue, wed, thu, fri],
//!             hours: ["09:00-17:00"], holidays: ["2026-12-25"] }
//! queues:                            # required, non-empty
//!   - name: ai-review                # [a-z0-9_-]+, unique
//!     members: [reviewer, "user:ana"]  # roles by name, users as `user:NAME`
//!     skills: [invoices]             # optional; rules may ask for skills instead of a queue
//!     sla: 4h                        # optional; or { business: 4h } on `calendar`
//!     calendar: london               # needed by any `business` delay of this queue
//!     assign: round_robin            # claim (default: people claim), round_robin, least_loaded
//!     escalation:                    # optional ladder; `after` counts from when it was raised
//!       - { after: 2h, to: finance-leads }       # another queue …
//!       - { after: { business: 8h }, to: "role:admin" }   # … or a role
//! rules:                             # ordered; the first whose `when` holds routes
//!   - when: 'exception.kind == "ai_failed" && exception.workflow == "invoice-approval"'
//!     queue: ai-review               # or `skills: [invoices]`: the first queue with them all
//!     priority: high                 # low, normal (default), high, urgent
//! default: { queue: ai-review, priority: normal }   # required: where unmatched ones go
//! ```
//!
//! In `when`, `exception` is `{id, case_id, workflow, step, kind, message, fingerprint}`.
//! A rule whose `when` fails to evaluate is skipped and the failure is reported with the
//! routing, so a bad rule never strands an exception.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::calendar::{Calendar, CalendarSpec};
use crate::expr::{Activation, Expr};
use crate::workflow::yaml::{self, Node};
use crate::workflow::{parse_duration, Diagnostic, Severity};

/// Largest desk file read.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Bounds on the configuration's size.
pub const MAX_QUEUES: usize = 200;
pub const MAX_RULES: usize = 500;
pub const MAX_LADDER_LEVELS: usize = 10;
pub const MAX_MEMBERS: usize = 500;

/// How urgent an exception is; ordered, `Urgent` highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// 0 (low) … 3 (urgent), for ordering in SQL.
    pub fn rank(self) -> i64 {
        self as i64
    }
}

/// Who works a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    User(String),
    Role(String),
}

/// How exceptions entering a queue get an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Nobody is assigned; members claim.
    Claim,
    /// The next member after the one assigned last, in name order.
    RoundRobin,
    /// The member with the fewest open exceptions assigned.
    LeastLoaded,
}

impl Assignment {
    pub fn as_str(self) -> &'static str {
        match self {
            Assignment::Claim => "claim",
            Assignment::RoundRobin => "round_robin",
            Assignment::LeastLoaded => "least_loaded",
        }
    }
}

/// A delay in wall-clock time or in working time on a calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delay {
    Elapsed(u64),
    /// Milliseconds of working time on the queue's calendar.
    Business(u64),
}

/// Where one escalation level sends the exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Queue(String),
    Role(String),
}

impl Target {
    /// `queue:NAME` or `role:NAME`, as stored and journaled.
    pub fn label(&self) -> String {
        match self {
            Target::Queue(name) => format!("queue:{name}"),
            Target::Role(name) => format!("role:{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub after: Delay,
    pub to: Target,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub members: Vec<Member>,
    pub skills: Vec<String>,
    pub sla: Option<Delay>,
    pub calendar: Option<Calendar>,
    pub assign: Assignment,
    pub escalation: Vec<Level>,
}

impl Queue {
    /// Whether a user with `roles` works this queue.
    pub fn has_member(&self, user: &str, roles: &[String]) -> bool {
        self.members.iter().any(|member| match member {
            Member::User(name) => name == user,
            Member::Role(role) => roles.iter().any(|r| r == role),
        })
    }

    /// The instant `delay` after `from_ms` (working time on this queue's calendar for a
    /// business delay); `None` when the calendar cannot place it (beyond its horizon).
    pub fn after(&self, delay: &Delay, from_ms: i64) -> Option<i64> {
        match delay {
            Delay::Elapsed(ms) => Some(from_ms.saturating_add(i64::try_from(*ms).ok()?)),
            Delay::Business(ms) => {
                let calendar = self.calendar.as_ref()?;
                let start = Utc.timestamp_millis_opt(from_ms).single()?;
                calendar
                    .add_business(start, Duration::from_millis(*ms))
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }

    /// When an exception raised at `raised_ms` is due (the queue's SLA), if it has one.
    pub fn due_ms(&self, raised_ms: i64) -> Option<i64> {
        self.after(self.sla.as_ref()?, raised_ms)
    }

    /// When ladder level `level` (0-based) fires for an exception raised at `raised_ms`.
    pub fn escalation_ms(&self, level: usize, raised_ms: i64) -> Option<i64> {
        self.after(&self.escalation.get(level)?.after, raised_ms)
    }
}

#[derive(Debug, Clone)]
enum Destination {
    Queue(String),
    Skills(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    when: Expr,
    destination: Destination,
    pub priority: Priority,
    /// 1-based position in `rules`, for the record.
    pub number: usize,
}

/// Where an exception goes and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routing {
    pub queue: String,
    pub priority: Priority,
    /// `rule N (when …)` or `default`.
    pub rule: String,
    /// Rules skipped because their `when` failed to evaluate.
    pub rule_errors: Vec<String>,
}

/// A checked desk configuration.
#[derive(Debug, Clone)]
pub struct DeskConfig {
    queues: Vec<Queue>,
    rules: Vec<Rule>,
    default_queue: String,
    default_priority: Priority,
    /// SHA-256 of the file (or `builtin`).
    pub source_sha256: String,
}

/// The queue every exception goes to without an `exceptions.yaml`.
pub const BUILTIN_QUEUE: &str = "exceptions";

impl DeskConfig {
    /// The configuration without a file: one queue, `exceptions`, worked by operators and
    /// specialists, who claim; no SLA and no ladder.
    pub fn builtin() -> DeskConfig {
        DeskConfig {
            queues: vec![Queue {
                name: BUILTIN_QUEUE.to_string(),
                members: vec![
                    Member::Role("operator".into()),
                    Member::Role("specialist".into()),
                ],
                skills: Vec::new(),
                sla: None,
                calendar: None,
                assign: Assignment::Claim,
                escalation: Vec::new(),
            }],
            rules: Vec::new(),
            default_queue: BUILTIN_QUEUE.to_string(),
            default_priority: Priority::Normal,
            source_sha256: "builtin".to_string(),
        }
    }

    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Routes one exception (`{id, case_id, workflow, step, kind, message, fingerprint}`).
    pub fn route(&self, exception: &Value, now: DateTime<Utc>) -> Routing {
        let mut activation = Activation::new(&Value::Null, &Value::Null, &Value::Null, now);
        activation.set("exception", exception);
        let mut rule_errors = Vec::new();
        for rule in &self.rules {
            match rule.when.eval_bool(&activation) {
                Ok(true) => {
                    let queue = match &rule.destination {
                        Destination::Queue(name) => Some(name.clone()),
                        Destination::Skills(skills) => self
                            .queues
                            .iter()
                            .find(|q| skills.iter().all(|s| q.skills.contains(s)))
                            .map(|q| q.name.clone()),
                    };
                    if let Some(queue) = queue {
                        return Routing {
                            queue,
                            priority: rule.priority,
                            rule: format!("rule {} (when {})", rule.number, rule.when.source()),
                            rule_errors,
                        };
                    }
                }
                Ok(false) => {}
                Err(error) => rule_errors.push(format!("rule {}: {error}", rule.number)),
            }
        }
        Routing {
            queue: self.default_queue.clone(),
            priority: self.default_priority,
            rule: "default".to_string(),
            rule_errors,
        }
    }

    /// Parses and checks `exceptions.yaml`; every problem comes back with its position.
    pub fn parse(source: &str, file: &str) -> Result<DeskConfig, Vec<Diagnostic>> {
        let mut checker = Checker {
            file,
            diagnostics: Vec::new(),
        };
        let config = checker.config(source);
        match config {
            Some(config) if checker.diagnostics.is_empty() => Ok(config),
            _ => Err(checker.diagnostics),
        }
    }
}

/// Checks a desk file without building it (for `keel check`).
pub fn check_str(source: &str, file: &str) -> Vec<Diagnostic> {
    DeskConfig::parse(source, file).err().unwrap_or_default()
}

// ------------------------------------------------------------------------------ checking

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueSpec {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    skills: Vec<String>,
    sla: Option<Value>,
    calendar: Option<String>,
    #[serde(default = "default_assign")]
    assign: Assignment,
    #[serde(default)]
    escalation: Vec<LevelSpec>,
}

fn default_assign() -> Assignment {
    Assignment::Claim
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelSpec {
    after: Value,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    when: String,
    queue: Option<String>,
    #[serde(default)]
    skills: Vec<String>,
    #[serde(default = "normal")]
    priority: Priority,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultSpec {
    queue: String,
    #[serde(default = "normal")]
    priority: Priority,
}

fn normal() -> Priority {
    Priority::Normal
}

struct Checker<'f> {
    file: &'f str,
    diagnostics: Vec<Diagnostic>,
}

const TOP_KEYS: [&str; 4] = ["calendars", "queues", "rules", "default"];

impl Checker<'_> {
    fn error(&mut self, code: &'static str, node: &Node, message: String, hint: &str) {
        let hint = (!hint.is_empty()).then(|| hint.to_string());
        self.diagnostics.push(Diagnostic::new(
            Severity::Error,
            code,
            self.file,
            node.span,
            message,
            hint,
        ));
    }

    fn config(&mut self, source: &str) -> Option<DeskConfig> {
        use sha2::Digest;
        if source.len() > MAX_FILE_BYTES {
            self.diagnostics.push(Diagnostic::new(
                Severity::Error,
                "file-too-large",
                self.file,
                crate::workflow::diagnostic::Span::point(1, 1),
                format!(
                    "the file is {} bytes; the limit is {MAX_FILE_BYTES}",
                    source.len()
                ),
                None,
            ));
            return None;
        }
        let root = match yaml::load(source) {
            Ok(root) => root,
            Err(error) => {
                self.diagnostics.push(Diagnostic::new(
                    Severity::Error,
                    "invalid-yaml",
                    self.file,
                    error.span,
                    error.message,
                    None,
                ));
                return None;
            }
        };
        let yaml::Value::Map(entries) = &root.value else {
            self.error(
                "wrong-type",
                &root,
                format!(
                    "the desk file must be a mapping, found {}",
                    root.type_name()
                ),
                "start with `queues:`, `rules:` and `default:`",
            );
            return None;
        };
        let mut fields: HashMap<String, &Node> = HashMap::new();
        for (key, value) in entries {
            let name = key.scalar_text().unwrap_or_default();
            if !TOP_KEYS.contains(&name.as_str()) {
                self.error(
                    "unknown-field",
                    key,
                    format!("unknown field `{name}`"),
                    "the fields are `calendars`, `queues`, `rules` and `default`",
                );
                continue;
            }
            fields.insert(name, value);
        }
        let calendars = fields
            .get("calendars")
            .map(|node| self.calendars(node))
            .unwrap_or_default();
        let queues = match fields.get("queues") {
            Some(node) => self.queues(node, &calendars),
            None => {
                self.error(
                    "missing-field",
                    &root,
                    "missing `queues`".into(),
                    "add `queues: [{ name: triage, members: [operator] }]`",
                );
                Vec::new()
            }
        };
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        let rules = fields
            .get("rules")
            .map(|node| self.rules(node, &queues))
            .unwrap_or_default();
        let default = match fields.get("default") {
            Some(node) => self.default(node, &names),
            None => {
                self.error(
                    "missing-field",
                    &root,
                    "missing `default`: the queue for exceptions no rule matches".into(),
                    "add `default: { queue: NAME }`",
                );
                None
            }
        };
        self.check_ladders(&queues, fields.get("queues").copied());
        let (default_queue, default_priority) = default?;
        Some(DeskConfig {
            queues,
            rules,
            default_queue,
            default_priority,
            source_sha256: hex::encode(sha2::Sha256::digest(source.as_bytes())),
        })
    }

    fn typed<T: serde::de::DeserializeOwned>(&mut self, node: &Node, what: &str) -> Option<T> {
        let json = node_json(node);
        match serde_json::from_value(json) {
            Ok(value) => Some(value),
            Err(error) => {
                self.error(
                    "invalid-field",
                    node,
                    format!("{what}: {error}"),
                    "see the format at the top of `keel_core::desk` or examples/exceptions.yaml",
                );
                None
            }
        }
    }

    fn calendars(&mut self, node: &Node) -> BTreeMap<String, Calendar> {
        let mut out = BTreeMap::new();
        let yaml::Value::Map(entries) = &node.value else {
            self.error(
                "wrong-type",
                node,
                "`calendars` must map names to calendars".into(),
                "",
            );
            return out;
        };
        for (key, value) in entries {
            let name = key.scalar_text().unwrap_or_default();
            let Some(spec) = self.typed::<CalendarSpec>(value, &format!("calendar `{name}`"))
            else {
                continue;
            };
            match Calendar::from_spec(&name, &spec) {
                Ok(calendar) => {
                    out.insert(name, calendar);
                }
                Err(error) => self.error(
                    "invalid-calendar",
                    value,
                    format!("calendar `{name}`: {error}"),
                    "give an IANA time zone, working days, `HH:MM-HH:MM` hours and `YYYY-MM-DD` holidays",
                ),
            }
        }
        out
    }

    fn queues(&mut self, node: &Node, calendars: &BTreeMap<String, Calendar>) -> Vec<Queue> {
        let yaml::Value::Seq(items) = &node.value else {
            self.error("wrong-type", node, "`queues` must be a list".into(), "");
            return Vec::new();
        };
        if items.is_empty() || items.len() > MAX_QUEUES {
            self.error(
                "invalid-field",
                node,
                format!("`queues` needs 1 to {MAX_QUEUES} queues"),
                "",
            );
        }
        let mut queues: Vec<Queue> = Vec::new();
        for item in items.iter().take(MAX_QUEUES) {
            let Some(spec) = self.typed::<QueueSpec>(item, "a queue") else {
                continue;
            };
            if !valid_name(&spec.name) {
                self.error(
                    "invalid-name",
                    item,
                    format!("queue name `{}` must match [a-z0-9_-]+", spec.name),
                    "",
                );
            }
            if queues.iter().any(|q| q.name == spec.name) {
                self.error(
                    "duplicate-queue",
                    item,
                    format!("queue `{}` is declared twice", spec.name),
                    "",
                );
            }
            if let Some(queue) = self.queue(item, spec, calendars) {
                queues.push(queue);
            }
        }
        queues
    }

    fn queue(
        &mut self,
        node: &Node,
        spec: QueueSpec,
        calendars: &BTreeMap<String, Calendar>,
    ) -> Option<Queue> {
        let name = spec.name.clone();
        if spec.members.is_empty() || spec.members.len() > MAX_MEMBERS {
            self.error(
                "invalid-field",
                node,
                format!("queue `{name}` needs 1 to {MAX_MEMBERS} members"),
                "list roles (`reviewer`) and users (`user:ana`)",
            );
        }
        let members = spec
            .members
            .iter()
            .map(|m| match m.strip_prefix("user:") {
                Some(user) => Member::User(user.to_string()),
                None => Member::Role(m.strip_prefix("role:").unwrap_or(m).to_string()),
            })
            .collect();
        let calendar = match &spec.calendar {
            Some(calendar_name) => match calendars.get(calendar_name) {
                Some(calendar) => Some(calendar.clone()),
                None => {
                    let known: Vec<&str> = calendars.keys().map(String::as_str).collect();
                    self.error(
                        "unknown-calendar",
                        node,
                        format!("queue `{name}` names calendar `{calendar_name}`, which `calendars` does not declare"),
                        &format!("declared calendars: {known:?}"),
                    );
                    None
                }
            },
            None => None,
        };
        let what = format!("queue `{name}`");
        let sla = match &spec.sla {
            Some(value) => Some(self.delay(node, value, &format!("{what} `sla`"))?),
            None => None,
        };
        if spec.escalation.len() > MAX_LADDER_LEVELS {
            self.error(
                "invalid-field",
                node,
                format!("{what} has more than {MAX_LADDER_LEVELS} escalation levels"),
                "",
            );
        }
        let mut escalation = Vec::new();
        for (i, level) in spec.escalation.iter().enumerate() {
            let after = self.delay(node, &level.after, &format!("{what} escalation {}", i + 1))?;
            let to = match level.to.strip_prefix("role:") {
                Some(role) => Target::Role(role.to_string()),
                None => Target::Queue(level.to.strip_prefix("queue:").unwrap_or(&level.to).into()),
            };
            escalation.push(Level { after, to });
        }
        let business = sla.iter().chain(escalation.iter().map(|l| &l.after));
        if calendar.is_none()
            && spec.calendar.is_none()
            && business
                .into_iter()
                .any(|d| matches!(d, Delay::Business(_)))
        {
            self.error(
                "missing-calendar",
                node,
                format!("{what} counts a delay in business time but names no `calendar`"),
                "add `calendar: NAME` and declare it under `calendars:`",
            );
        }
        Some(Queue {
            name,
            members,
            skills: spec.skills,
            sla,
            calendar,
            assign: spec.assign,
            escalation,
        })
    }

    /// `2h`, or `{ business: 4h }`.
    fn delay(&mut self, node: &Node, value: &Value, what: &str) -> Option<Delay> {
        let (text, business) = match value {
            Value::String(text) => (text.as_str(), false),
            Value::Object(map) if map.len() == 1 && map["business"].is_string() => {
                (map["business"].as_str().unwrap_or_default(), true)
            }
            _ => {
                self.error(
                    "invalid-duration",
                    node,
                    format!("{what} must be a duration such as `2h` or `{{ business: 4h }}`"),
                    "",
                );
                return None;
            }
        };
        match parse_duration(text) {
            Ok(ms) if ms.0 > 0 => Some(if business {
                Delay::Business(ms.0)
            } else {
                Delay::Elapsed(ms.0)
            }),
            Ok(_) => {
                self.error(
                    "invalid-duration",
                    node,
                    format!("{what} must be longer than zero"),
                    "",
                );
                None
            }
            Err(message) => {
                self.error("invalid-duration", node, format!("{what}: {message}"), "");
                None
            }
        }
    }

    fn rules(&mut self, node: &Node, queues: &[Queue]) -> Vec<Rule> {
        let yaml::Value::Seq(items) = &node.value else {
            self.error("wrong-type", node, "`rules` must be a list".into(), "");
            return Vec::new();
        };
        if items.len() > MAX_RULES {
            self.error(
                "invalid-field",
                node,
                format!("at most {MAX_RULES} rules"),
                "",
            );
        }
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        let mut rules = Vec::new();
        for (i, item) in items.iter().take(MAX_RULES).enumerate() {
            let Some(spec) = self.typed::<RuleSpec>(item, &format!("rule {}", i + 1)) else {
                continue;
            };
            let when = match Expr::compile(&spec.when) {
                Ok(expr) => expr,
                Err(error) => {
                    self.error(
                        "invalid-expression",
                        item,
                        format!("rule {}: `when` does not compile: {error}", i + 1),
                        "`when` is CEL over `exception` (kind, workflow, step, message, …)",
                    );
                    continue;
                }
            };
            let destination = match (spec.queue, spec.skills.is_empty()) {
                (Some(queue), true) => {
                    if !names.contains(&queue.as_str()) {
                        self.error(
                            "unknown-queue",
                            item,
                            format!(
                                "rule {} routes to queue `{queue}`, which is not declared",
                                i + 1
                            ),
                            &format!("declared queues: {names:?}"),
                        );
                        continue;
                    }
                    Destination::Queue(queue)
                }
                (None, false) => {
                    if !queues
                        .iter()
                        .any(|q| spec.skills.iter().all(|s| q.skills.contains(s)))
                    {
                        self.error(
                            "unknown-skill",
                            item,
                            format!(
                                "rule {}: no queue has all of the skills {:?}",
                                i + 1,
                                spec.skills
                            ),
                            "add the skills to a queue's `skills`",
                        );
                        continue;
                    }
                    Destination::Skills(spec.skills)
                }
                _ => {
                    self.error(
                        "invalid-field",
                        item,
                        format!("rule {} needs exactly one of `queue` and `skills`", i + 1),
                        "",
                    );
                    continue;
                }
            };
            rules.push(Rule {
                when,
                destination,
                priority: spec.priority,
                number: i + 1,
            });
        }
        rules
    }

    fn default(&mut self, node: &Node, names: &[&str]) -> Option<(String, Priority)> {
        let spec = self.typed::<DefaultSpec>(node, "`default`")?;
        if !names.contains(&spec.queue.as_str()) {
            self.error(
                "unknown-queue",
                node,
                format!(
                    "`default` names queue `{}`, which is not declared",
                    spec.queue
                ),
                &format!("declared queues: {names:?}"),
            );
            return None;
        }
        Some((spec.queue, spec.priority))
    }

    /// Every ladder target names a declared queue.
    fn check_ladders(&mut self, queues: &[Queue], node: Option<&Node>) {
        let Some(node) = node else { return };
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        for queue in queues {
            for level in &queue.escalation {
                if let Target::Queue(target) = &level.to {
                    if !names.contains(&target.as_str()) {
                        self.error(
                            "unknown-queue",
                            node,
                            format!(
                                "queue `{}` escalates to queue `{target}`, which is not declared",
                                queue.name
                            ),
                            "escalate to a declared queue or to `role:NAME`",
                        );
                    }
                }
            }
            let mut last = 0u64;
            for (i, level) in queue.escalation.iter().enumerate() {
                let (Delay::Elapsed(ms) | Delay::Business(ms)) = level.after;
                if ms <= last && i > 0 {
                    self.error(
                        "invalid-ladder",
                        node,
                        format!(
                            "queue `{}`: escalation level {} must come later than level {i}",
                            queue.name,
                            i + 1
                        ),
                        "`after` counts from when the exception was raised, so each level's is longer",
                    );
                }
                last = ms;
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Plain JSON from a YAML node (non-finite floats become null).
fn node_json(node: &Node) -> Value {
    match &node.value {
        yaml::Value::Null => Value::Null,
        yaml::Value::Bool(b) => json!(b),
        yaml::Value::Int(i) => json!(i),
        yaml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        yaml::Value::Str(s) => json!(s),
        yaml::Value::Seq(items) => Value::Array(items.iter().map(node_json).collect()),
        yaml::Value::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or_default(), node_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
calendars:
  london: { time_zone: Europe/London, working_days: [mon, tue, wed, thu, fri], hours: ["09:00-17:00"] }
queues:
  - name: ai-review
    members: [reviewer, "user:ana"]
    skills: [invoices]
    sla: { business: 4h }
    calendar: london
    assign: round_robin
    escalation:
      - { after: 2h, to: leads }
      - { after: 8h, to: "role:admin" }
  - name: leads
    members: [operator]
rules:
  - when: 'exception.kind == "ai_failed"'
    queue: ai-review
    priority: high
  - when: 'exception.message.contains("vendor")'
    skills: [invoices]
  - when: 'exception.nope.deeper == 1'
    queue: leads
default: { queue: leads }
"#;

    fn route(config: &DeskConfig, kind: &str, message: &str) -> Routing {
        config.route(
            &json!({"kind": kind, "message": message, "workflow": "w"}),
            Utc::now(),
        )
    }

    #[test]
    fn routes_by_the_first_matching_rule_and_falls_back_to_the_default() {
        let config = DeskConfig::parse(SAMPLE, "exceptions.yaml").unwrap();
        let first = route(&config, "ai_failed", "x");
        assert_eq!(
            (first.queue.as_str(), first.priority),
            ("ai-review", Priority::High)
        );
        let by_skill = route(&config, "connector", "vendor down");
        assert_eq!(by_skill.queue, "ai-review");
        assert_eq!(by_skill.priority, Priority::Normal);
        let fallback = route(&config, "connector", "timeout");
        assert_eq!(
            (fallback.queue.as_str(), fallback.rule.as_str()),
            ("leads", "default")
        );
        // The third rule cannot evaluate (no such field): skipped and reported, not fatal.
        assert_eq!(fallback.rule_errors.len(), 1, "{:?}", fallback.rule_errors);
    }

    #[test]
    fn ladders_and_slas_count_in_the_queues_time() {
        let config = DeskConfig::parse(SAMPLE, "exceptions.yaml").unwrap();
        let queue = config.queue("ai-review").unwrap();
        // Friday 2026-11-27 16:00 London (UTC+0): 4 business hours → Monday 12:00.
        let raised = Utc
            .with_ymd_and_hms(2026, 11, 27, 16, 0, 0)
            .unwrap()
            .timestamp_millis();
        let due = Utc
            .with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(queue.due_ms(raised), Some(due));
        assert_eq!(queue.escalation_ms(0, raised), Some(raised + 2 * 3_600_000));
        assert_eq!(queue.escalation_ms(1, raised), Some(raised + 8 * 3_600_000));
        assert_eq!(queue.escalation_ms(2, raised), None);
        assert!(queue.has_member("ana", &[]));
        assert!(queue.has_member("bob", &["reviewer".into()]));
        assert!(!queue.has_member("bob", &["operator".into()]));
    }

    #[test]
    fn problems_are_reported_with_positions() {
        let bad = "queues:\n  - name: a\n    members: [x]\n    escalation:\n      - { after: 2h, to: nowhere }\n    sla: { business: 1h }\nrules:\n  - when: 'exception.kind =='\n    queue: a\n  - when: 'true'\n    queue: b\ndefault: { queue: a }\nextra: 1\n";
        let diagnostics = DeskConfig::parse(bad, "e.yaml").unwrap_err();
        let codes: Vec<&str> = diagnostics.iter().map(|d| d.code).collect();
        for code in [
            "unknown-field",
            "invalid-expression",
            "unknown-queue",
            "missing-calendar",
        ] {
            assert!(codes.contains(&code), "{code} missing from {codes:?}");
        }
        let unknown = diagnostics
            .iter()
            .find(|d| d.code == "unknown-field")
            .unwrap();
        assert_eq!(unknown.line, 13);
        assert_eq!(check_str("queues: [", "e.yaml")[0].code, "invalid-yaml");
    }
}
