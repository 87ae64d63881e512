//! Extractors whose rejections are problems, so that axum's plain-text errors never reach a
//! client: a JSON body of any shape, query strings and path parameters.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::{Kind, Problem};

/// A request body parsed as JSON of any shape; `None` when the body is empty.
///
/// A `Content-Type` is optional, but when one is sent it must be JSON (`application/json` or
/// any `+json` type).
pub struct JsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            if !is_json_media_type(content_type.to_str().unwrap_or_default()) {
                return Err(Problem::new(
                    Kind::UnsupportedMediaType,
                    "send the body as JSON with `Content-Type: application/json`",
                ));
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        Kind::PayloadTooLarge,
                        "the request body is larger than the server accepts",
                    )
                } else {
                    Problem::new(
                        Kind::MalformedJson,
                        format!("cannot read the request body: {}", rejection.body_text()),
                    )
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        serde_json::from_slice(&bytes)
            .map(|value| JsonBody(Some(value)))
            .map_err(|error| {
                Problem::new(
                    Kind::MalformedJson,
                    format!(
                        "the request body is not valid JSON: {error}; fix it and send it again"
                    ),
                )
            })
    }
}

fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `Query<T>` with a problem as its rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| Problem::new(Kind::InvalidParameter, rejection.body_text()))
    }
}

/// `Path<T>` with a problem as its rejection.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| Problem::new(Kind::InvalidParameter, rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn json_media_types_are_recognised() {
        for (content_type, expected) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("", false),
        ] {
            assert_eq!(is_json_media_type(content_type), expected, "{content_type}");
        }
    }
}
