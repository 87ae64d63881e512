//! Bearer tokens on the Keel API (problem JSON errors); the gateway has its own OpenAI-shaped
//! errors over the same lookup. The guard authenticates a request once and hands the caller to
//! the handler through the request's extensions ([`Authenticated`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use keel_engine::tokens::{Caller, Refusal};
use keel_engine::Engine;

use crate::problem::{Kind, Problem};

/// What to tell a caller whose token was refused.
pub(crate) fn refusal_message(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Unknown => {
            "the token is not a Keel token; create one with `keel token create --name APP`"
        }
        Refusal::Revoked => "the token was revoked; create a new one with `keel token create`",
        Refusal::Expired => "the token has expired; create a new one with `keel token create`",
        Refusal::Disabled => "the user this token acts for is disabled",
    }
}

/// The bearer secret of `headers`, if an Authorization header is present.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, Problem>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty());
    Some(secret.ok_or_else(|| {
        Problem::new(
            Kind::Unauthenticated,
            "the Authorization header must be `Bearer <token>`",
        )
    }))
}

/// The caller of a request that must carry a token.
pub(crate) async fn required(engine: &Engine, headers: &HeaderMap) -> Result<Caller, Problem> {
    match optional(engine, headers).await? {
        Some(caller) => Ok(caller),
        None => Err(Problem::new(
            Kind::Unauthenticated,
            "send `Authorization: Bearer <token>` with a token from `keel token create --user NAME`",
        )),
    }
}

/// The caller, when the request carries a token (a bad token is still an error).
pub(crate) async fn optional(
    engine: &Engine,
    headers: &HeaderMap,
) -> Result<Option<Caller>, Problem> {
    let Some(secret) = bearer(headers) else {
        return Ok(None);
    };
    match engine.authenticate(secret?).await {
        Ok(Ok(caller)) => Ok(Some(caller)),
        Ok(Err(refusal)) => Err(Problem::new(
            Kind::Unauthenticated,
            refusal_message(refusal),
        )),
        Err(error) => Err(Problem::internal(&error)),
    }
}

/// The caller the guard authenticated, taken from the request's extensions. A handler that
/// takes it cannot run without a caller: if the guard did not run, the request is refused.
pub(crate) struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(Authenticated(caller.clone())),
            None => {
                tracing::error!(path = %parts.uri.path(), "a handler that needs a caller ran without the guard");
                Err(Problem::new(
                    Kind::Unauthenticated,
                    "send `Authorization: Bearer <token>` with a token from `keel token create --user NAME`",
                ))
            }
        }
    }
}
