//! Authorization with Cedar: the built-in roles (`policies/roles.cedar`) plus a deployment's own
//! policies, all validated against the shipped schema (`policies/keel.cedarschema`) at start.
//!
//! A request is (principal `Keel::User::"<subject>"` in its `Keel::Role`s, action, resource).
//! The answer names the policies that decided it (their `@id`), for the journal.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet,
    Request, Schema, ValidationMode, Validator,
};

use crate::tokens::Caller;

/// The schema every policy is validated against.
pub const SCHEMA: &str = include_str!("../policies/keel.cedarschema");
/// The built-in role policies.
pub const BUILT_IN_POLICIES: &str = include_str!("../policies/roles.cedar");

/// The actions the API checks, one per kind of request.
pub const ACTIONS: &[&str] = &[
    "read_workflows",
    "list_cases",
    "read_case",
    "read_tasks",
    "read_exceptions",
    "read_audit",
    "read_learners",
    "submit_case",
    "signal_case",
    "decide_task",
    "resolve_exception",
    "teach_learner",
    "use_gateway",
    "read_trust",
    "govern_trust",
    "read_reports",
    "read_webhooks",
];

/// Actions whose allows are journaled too (every deny is).
pub const SENSITIVE: &[&str] = &[
    "signal_case",
    "decide_task",
    "resolve_exception",
    "teach_learner",
    "govern_trust",
];

/// One authorization answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The `@id`s (or Cedar ids) of the policies that decided; empty on a default deny.
    pub policies: Vec<String>,
    /// Evaluation errors, if any (a policy that errors does not apply).
    pub errors: Vec<String>,
}

/// Policies and schema, checked.
pub struct Authorizer {
    schema: Schema,
    policies: PolicySet,
    cedar: CedarAuthorizer,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("policies", &self.policies.policies().count())
            .finish()
    }
}

impl Authorizer {
    /// The built-in roles only.
    pub fn built_in() -> Result<Authorizer, Vec<String>> {
        Authorizer::with_policies(None)
    }

    /// The built-in roles plus `extra` (file name, Cedar source), validated strictly against
    /// the schema. Every problem is returned, each with the file it is in.
    pub fn with_policies(extra: Option<(&str, &str)>) -> Result<Authorizer, Vec<String>> {
        let schema = match Schema::from_cedarschema_str(SCHEMA) {
            Ok((schema, _)) => schema,
            Err(error) => {
                return Err(vec![format!(
                    "the shipped Cedar schema is invalid: {error}"
                )])
            }
        };
        let mut policies = PolicySet::from_str(BUILT_IN_POLICIES)
            .map_err(|error| vec![format!("built-in policies: {error}")])?;
        if let Some((file, source)) = extra {
            let more = PolicySet::from_str(source)
                .map_err(|error| vec![format!("{file}: not valid Cedar: {error}")])?;
            policies
                .merge(&more, true)
                .map_err(|error| vec![format!("{file}: {error}")])?;
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let file = extra.map_or("built-in policies", |(file, _)| file);
            return Err(result
                .validation_errors()
                .map(|error| format!("{file}: {error} (the schema is `keel.cedarschema`: entity types User, Role, Workflow, Case, Task, Queue, System; actions {})", ACTIONS.join(", ")))
                .collect());
        }
        Ok(Authorizer {
            schema,
            policies,
            cedar: CedarAuthorizer::new(),
        })
    }

    /// May `caller` take `action` on the resource `Keel::<kind>::"<id>"`?
    pub fn decide(&self, caller: &Caller, action: &str, kind: &str, id: &str) -> Verdict {
        let deny = |error: String| Verdict {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        };
        let Ok(principal) = uid("User", &caller.subject) else {
            return deny("the caller's name cannot be a Cedar id".into());
        };
        let (Ok(action_uid), Ok(resource)) = (uid("Action", action), uid(kind, id)) else {
            return deny(format!("unknown action `{action}` or resource `{kind}`"));
        };
        let parents: HashSet<EntityUid> = caller
            .roles
            .iter()
            .filter_map(|role| uid("Role", role).ok())
            .collect();
        let roles: Vec<Entity> = parents
            .iter()
            .map(|role| Entity::new_no_attrs(role.clone(), HashSet::new()))
            .collect();
        let user = Entity::new_no_attrs(principal.clone(), parents);
        let entities =
            match Entities::from_entities(roles.into_iter().chain([user]), Some(&self.schema)) {
                Ok(entities) => entities,
                Err(error) => return deny(format!("entities: {error}")),
            };
        let request = match Request::new(
            principal,
            action_uid,
            resource,
            Context::empty(),
            Some(&self.schema),
        ) {
            Ok(request) => request,
            Err(error) => return deny(format!("request: {error}")),
        };
        let response = self
            .cedar
            .is_authorized(&request, &self.policies, &entities);
        let policies = response
            .diagnostics()
            .reason()
            .map(|id| {
                self.policies
                    .annotation(id, "id")
                    .map_or_else(|| id.to_string(), str::to_string)
            })
            .collect();
        Verdict {
            allowed: response.decision() == Decision::Allow,
            policies,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        }
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
    EntityUid::from_str(&format!("Keel::{kind}::\"{escaped}\"")).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caller(roles: &[&str]) -> Caller {
        Caller {
            token_id: "t".into(),
            name: "n".into(),
            subject: "ann".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            approval_limit: None,
        }
    }

    #[test]
    fn built_in_roles_allow_what_they_list_and_name_the_policy() {
        let authz = Authorizer::built_in().unwrap();
        let verdict = authz.decide(&caller(&["reviewer"]), "decide_task", "Task", "t1");
        assert!(verdict.allowed);
        assert_eq!(verdict.policies, ["role-reviewer"]);
        let verdict = authz.decide(&caller(&["reviewer"]), "submit_case", "Workflow", "w");
        assert!(!verdict.allowed);
        assert!(verdict.policies.is_empty());
        assert!(
            authz
                .decide(&caller(&["admin"]), "read_audit", "System", "keel")
                .allowed
        );
        assert!(!authz.decide(&caller(&[]), "read_case", "Case", "c").allowed);
    }

    #[test]
    fn deployment_policies_are_validated_and_forbid_overrides() {
        let forbid = r#"@id("no-refunds-by-operators")
forbid (principal in Keel::Role::"operator", action == Keel::Action::"submit_case", resource == Keel::Workflow::"refund");"#;
        let authz = Authorizer::with_policies(Some(("site.cedar", forbid))).unwrap();
        let verdict = authz.decide(&caller(&["operator"]), "submit_case", "Workflow", "refund");
        assert!(!verdict.allowed);
        assert_eq!(verdict.policies, ["no-refunds-by-operators"]);
        assert!(
            authz
                .decide(&caller(&["operator"]), "submit_case", "Workflow", "other")
                .allowed
        );
        let bad = r#"permit (principal, action == Keel::Action::"launch_rockets", resource);"#;
        let errors = Authorizer::with_policies(Some(("site.cedar", bad))).unwrap_err();
        assert!(errors[0].starts_with("site.cedar:"), "{errors:?}");
        let garbage = Authorizer::with_policies(Some(("site.cedar", "permit ("))).unwrap_err();
        assert!(garbage[0].contains("not valid Cedar"), "{garbage:?}");
    }
}
