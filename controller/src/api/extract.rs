//! Request extractors: JSON bodies with clear 400/413 errors, and the bearer
//! token checks.

use super::AppState;
use super::error::ApiError;
use crate::auth::{ClientAddr, FAILURE_WINDOW, Failure, bearer_matches, matching};
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

/// Where the access log learns who made a call (filled by the extractor
/// that checked the token).
#[derive(Clone, Debug, Default)]
pub(super) struct AccessSlot(pub std::sync::Arc<std::sync::Mutex<Option<String>>>);

fn note_actor(parts: &Parts, name: &str) {
    if let Some(slot) = parts.extensions.get::<AccessSlot>()
        && let Ok(mut s) = slot.0.lock()
    {
        *s = Some(name.to_string());
    }
}

fn client(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ClientAddr>().map(|a| a.0)
}

/// Refuses at once a client over its limit of wrong tokens.
fn not_limited(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    if state
        .guard
        .limited(client(parts), std::time::Instant::now())
    {
        state.controller.metrics().auth_limited();
        return Err(ApiError::TooManyRequests(format!(
            "too many wrong tokens from this address; try again within {} s",
            FAILURE_WINDOW.as_secs()
        )));
    }
    Ok(())
}

/// A wrong `role` token: counted, logged once per address and window (never
/// the token), limited.
fn wrong_token(parts: &Parts, state: &AppState, role: &'static str) {
    let addr = client(parts);
    state.controller.metrics().auth_failure(role);
    let shown = addr.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    match state.guard.failed(addr, std::time::Instant::now()) {
        Failure::First => tracing::warn!(
            "a wrong {role} token from {shown} ({} {}); more from it in the next {} s are counted, not logged",
            parts.method,
            parts.uri.path(),
            FAILURE_WINDOW.as_secs()
        ),
        Failure::LimitReached => tracing::warn!(
            "{} wrong tokens from {shown} within {} s: its calls are answered 429 until the window ends",
            state.guard.limit(),
            FAILURE_WINDOW.as_secs()
        ),
        Failure::Counted => {}
    }
}

/// An operator, authenticated by an operator token. Its value is the
/// token's name: the actor recorded in events.
#[derive(Debug)]
pub(super) struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = state.tokens.get();
        if tokens.operator.is_empty() {
            note_actor(parts, coalmine_decide::engine::OPERATOR);
            return Ok(Operator(coalmine_decide::engine::OPERATOR.to_string()));
        }
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        if header.is_none() {
            return Err(ApiError::Unauthorized(
                "this call changes state and needs `Authorization: Bearer <operator token>`".into(),
            ));
        }
        not_limited(parts, state)?;
        match matching(&tokens.operator, header) {
            Some(name) => {
                note_actor(parts, name);
                Ok(Operator(name.to_string()))
            }
            None => {
                wrong_token(parts, state, "operator");
                Err(ApiError::Unauthorized(
                    "the operator token is not valid".into(),
                ))
            }
        }
    }
}

/// A data pipeline posting feedback: a feedback token or an operator
/// token (its value: the token's name). Open only when neither is
/// configured (`--insecure-dev`). A feedback token opens nothing else.
#[derive(Debug)]
pub(super) struct FeedbackCaller(#[allow(dead_code)] pub String);

impl FromRequestParts<AppState> for FeedbackCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = state.tokens.get();
        if tokens.operator.is_empty() && tokens.feedback.is_empty() {
            return Ok(FeedbackCaller(
                coalmine_decide::engine::OPERATOR.to_string(),
            ));
        }
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        if header.is_none() {
            return Err(ApiError::Unauthorized(
                "feedback needs `Authorization: Bearer <feedback or operator token>`".into(),
            ));
        }
        not_limited(parts, state)?;
        // Both lists compared whole: which one matched is not timed.
        let by_operator = matching(&tokens.operator, header);
        let by_pipeline = matching(&tokens.feedback, header);
        match by_pipeline.or(by_operator) {
            Some(name) => {
                note_actor(parts, name);
                Ok(FeedbackCaller(name.to_string()))
            }
            None => {
                wrong_token(parts, state, "feedback");
                Err(ApiError::Unauthorized(
                    "the token is neither a feedback token nor an operator token".into(),
                ))
            }
        }
    }
}

/// A proxy, authenticated by a sync token: a proxy's own (its value: the
/// proxy id it may report as) or the shared one (`None`: any proxy id).
#[derive(Debug)]
pub(super) struct SyncCaller(pub Option<String>);

impl FromRequestParts<AppState> for SyncCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = state.tokens.get();
        if tokens.sync_open() {
            return Ok(SyncCaller(None));
        }
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        let refused = || {
            state
                .controller
                .metrics()
                .sync_report(crate::metrics::SyncResult::Unauthorized);
            ApiError::Unauthorized(
                "sync needs `Authorization: Bearer <sync token>` with a sync token of the controller".into(),
            )
        };
        if header.is_none() {
            return Err(refused());
        }
        not_limited(parts, state)?;
        let own = matching(&tokens.sync, header);
        let shared = tokens
            .shared_sync
            .as_ref()
            .is_some_and(|t| bearer_matches(t, header));
        match (own, shared) {
            (Some(proxy), _) => Ok(SyncCaller(Some(proxy.to_string()))),
            (None, true) => Ok(SyncCaller(None)),
            (None, false) => {
                wrong_token(parts, state, "sync");
                Err(refused())
            }
        }
    }
}
