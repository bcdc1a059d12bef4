//! Request extractors: JSON bodies with clear 400/413 errors, and the bearer
//! token checks.

use super::AppState;
use super::error::ApiError;
use crate::auth::bearer_matches;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// A JSON body; unknown fields are refused by the target types.
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

/// A JSON body that may be left out entirely, or be `null` (then
/// `T::default()`).
#[derive(Debug)]
pub(super) struct OptionalJsonBody<T>(pub T);

async fn bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.body_limit)
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
            }
        })
}

/// Checks a body against its type's schema in the published OpenAPI
/// document, then reads it into the type: what the document says is what
/// the API accepts (a struct as an array, say, is refused).
fn parse<T: DeserializeOwned + ToSchema>(bytes: &[u8], state: &AppState) -> Result<T, ApiError> {
    // Parsed once: checked as a JSON value, then read from that value.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    match state.schemas.get() {
        Some(schemas) => schemas.check(&T::name(), &value)?,
        None => return Err(ApiError::Unavailable("the controller is starting".into())),
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::BadRequest(format!("invalid JSON body: {message}"))
    })
}

/// A required JSON body read from `req`, checked against its schema (what
/// [`JsonBody`] does, for handlers that read the body later).
pub(super) async fn json_body<T: DeserializeOwned + ToSchema>(
    req: Request,
    state: &AppState,
) -> Result<T, ApiError> {
    let bytes = bytes(req, state).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "a JSON request body is required".into(),
        ));
    }
    parse(&bytes, state)
}

impl<T: DeserializeOwned + ToSchema> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, state).await.map(JsonBody)
    }
}

impl<T: DeserializeOwned + ToSchema + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        if serde_json::from_slice::<()>(&bytes).is_ok() {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse(&bytes, state).map(OptionalJsonBody)
    }
}

/// Query parameters; unknown or malformed ones are a 400 saying which.
#[derive(Debug)]
pub(super) struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
        Ok(QueryParams(q))
    }
}

/// An operator, authenticated by the operator token. Its value is the actor
/// name recorded in events.
#[derive(Debug)]
pub(super) struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = &state.tokens.operator {
            let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
            if header.is_none() {
                return Err(ApiError::Unauthorized(
                    "this call changes state and needs `Authorization: Bearer <operator token>`"
                        .into(),
                ));
            }
            if !bearer_matches(token, header) {
                return Err(ApiError::Unauthorized(
                    "the operator token is not valid".into(),
                ));
            }
        }
        Ok(Operator(coalmine_decide::engine::OPERATOR.to_string()))
    }
}

/// A data pipeline posting feedback: the feedback token or the operator
/// token. Open only when neither is configured (`--insecure-dev`: tokens
/// that were not given are not checked). The feedback token opens nothing
/// else.
#[derive(Debug)]
pub(super) struct FeedbackCaller;

impl FromRequestParts<AppState> for FeedbackCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (operator, pipeline) = (&state.tokens.operator, &state.tokens.feedback);
        if operator.is_none() && pipeline.is_none() {
            return Ok(FeedbackCaller);
        }
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        if header.is_none() {
            return Err(ApiError::Unauthorized(
                "feedback needs `Authorization: Bearer <feedback or operator token>`".into(),
            ));
        }
        // Both compared, each in constant time: which one matched is not timed.
        let matches =
            |t: &Option<crate::auth::Secret>| t.as_ref().is_some_and(|t| bearer_matches(t, header));
        if matches(operator) | matches(pipeline) {
            Ok(FeedbackCaller)
        } else {
            Err(ApiError::Unauthorized(
                "the token is neither the feedback token nor the operator token".into(),
            ))
        }
    }
}

/// A proxy, authenticated by the sync token.
#[derive(Debug)]
pub(super) struct SyncCaller;

impl FromRequestParts<AppState> for SyncCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = &state.tokens.sync {
            let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
            if !bearer_matches(token, header) {
                state
                    .controller
                    .metrics()
                    .sync_report(crate::metrics::SyncResult::Unauthorized);
                return Err(ApiError::Unauthorized(
                    "sync needs `Authorization: Bearer <sync token>` with the controller's sync token".into(),
                ));
            }
        }
        Ok(SyncCaller)
    }
}
