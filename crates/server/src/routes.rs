//! The route table: every route of the server is declared here together with who may reach
//! it, so that a route cannot exist without an access rule.
//!
//! [`Routes`] registers a handler and its [`Access`] in one call; the guard ([`crate::guard`])
//! looks every request up in the resulting table. A request whose route is not in the table is
//! denied (fail closed), so a route added to the router some other way answers 403 to everyone
//! until it is declared here. Routes that need no Keel token are declared [`Access::Public`]
//! with the reason, in the same table.

use std::collections::BTreeMap;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;

use crate::AppState;

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No Keel token is checked by the guard; the reason says why that is right.
    Public { why: &'static str },
    /// A Keel token whose user Cedar allows `rule.action` on the rule's resource.
    Token(Rule),
    /// [`Access::Token`], or exactly the deployment's scrape secret (`/metrics`).
    ScrapeTokenOr(Rule),
}

/// A Cedar action and the resource it is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The Cedar action, e.g. `read_case`.
    pub action: &'static str,
    /// The Cedar entity type of the resource: `System`, `Workflow`, `Case` or `Task`.
    pub kind: &'static str,
    /// The path parameter that holds the resource's id; `None` is the system (`keel`).
    pub id_param: Option<&'static str>,
}

impl Access {
    /// The action on the whole system (listings and reports).
    pub const fn system(action: &'static str) -> Access {
        Access::Token(Rule {
            action,
            kind: "System",
            id_param: None,
        })
    }

    /// The action on the `kind` whose id is the path parameter `param`.
    pub const fn on(action: &'static str, kind: &'static str, param: &'static str) -> Access {
        Access::Token(Rule {
            action,
            kind,
            id_param: Some(param),
        })
    }

    /// No token checked by the guard, for the stated reason.
    pub const fn public(why: &'static str) -> Access {
        Access::Public { why }
    }

    /// The Cedar rule, if the route has one.
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Access::Public { .. } => None,
            Access::Token(rule) | Access::ScrapeTokenOr(rule) => Some(rule),
        }
    }
}

/// One declared route: a method on a path (axum's syntax, e.g. `/v1/cases/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// The declared routes by path, each with its methods.
#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    by_path: BTreeMap<&'static str, Vec<(Method, Access)>>,
}

/// What the table says about a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'t> {
    Declared(&'t Access),
    /// The path is declared, not for this method: these methods are.
    OtherMethods(Vec<Method>),
    /// Nothing is declared for this path.
    Undeclared,
}

impl Table {
    /// The rule for `method` on the route `path` (HEAD is answered as GET).
    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Some(methods) = self.by_path.get(path) else {
            return Lookup::Undeclared;
        };
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        match methods.iter().find(|(declared, _)| declared == wanted) {
            Some((_, access)) => Lookup::Declared(access),
            None => Lookup::OtherMethods(methods.iter().map(|(m, _)| m.clone()).collect()),
        }
    }

    fn insert(&mut self, method: Method, path: &'static str, access: Access) {
        self.by_path.entry(path).or_default().push((method, access));
    }

    /// Every declared route.
    pub(crate) fn routes(&self) -> Vec<DeclaredRoute> {
        self.by_path
            .iter()
            .flat_map(|(path, methods)| {
                methods.iter().map(|(method, access)| DeclaredRoute {
                    method: method.clone(),
                    path,
                    access: *access,
                })
            })
            .collect()
    }
}

/// A router under construction and the table of what it serves.
pub(crate) struct Routes {
    router: Router<AppState>,
    table: Table,
}

impl Routes {
    pub(crate) fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Table::default(),
        }
    }

    /// `GET path` answered by `handler`, reachable as `access` says.
    pub(crate) fn get<H, T>(self, path: &'static str, handler: H, access: Access) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::GET, MethodFilter::GET, path, handler, access)
    }

    /// `POST path` answered by `handler`, reachable as `access` says.
    pub(crate) fn post<H, T>(self, path: &'static str, handler: H, access: Access) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::POST, MethodFilter::POST, path, handler, access)
    }

    fn add<H, T>(
        mut self,
        method: Method,
        filter: MethodFilter,
        path: &'static str,
        handler: H,
        access: Access,
    ) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.table.insert(method, path, access);
        self.router = self.router.route(path, on(filter, handler));
        self
    }

    /// Merges a router that serves `routes` (each `GET` or `POST` on a path), all public for
    /// the reason `why` (the Swagger UI's pages, the sandbox).
    pub(crate) fn merge_public(
        mut self,
        router: Router<AppState>,
        routes: &[(Method, &'static str)],
        why: &'static str,
    ) -> Routes {
        for (method, path) in routes {
            self.table.insert(method.clone(), path, Access::public(why));
        }
        self.router = self.router.merge(router);
        self
    }

    pub(crate) fn into_parts(self) -> (Router<AppState>, Table) {
        (self.router, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_answers_declared_other_methods_and_undeclared() {
        let mut table = Table::default();
        table.insert(Method::GET, "/v1/cases", Access::system("list_cases"));
        assert_eq!(
            table.lookup(&Method::GET, "/v1/cases"),
            Lookup::Declared(&Access::system("list_cases"))
        );
        assert_eq!(
            table.lookup(&Method::HEAD, "/v1/cases"),
            Lookup::Declared(&Access::system("list_cases")),
            "HEAD is a GET without the body"
        );
        assert_eq!(
            table.lookup(&Method::DELETE, "/v1/cases"),
            Lookup::OtherMethods(vec![Method::GET])
        );
        assert_eq!(table.lookup(&Method::GET, "/v1/new"), Lookup::Undeclared);
    }
}
