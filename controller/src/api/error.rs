//! One error type for every handler: a status and `{error, message}`.

use crate::service::ServiceError;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coalmine_client::types::{ErrorBody, ErrorCode};
use coalmine_decide::engine::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    TooManyRequests(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::TooManyRequests(_) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.status_and_code();
        let body = ErrorBody {
            error,
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(name) => {
                ApiError::NotFound(format!("deployment {name:?} does not exist"))
            }
            ServiceError::Exists(name) => {
                ApiError::Conflict(format!("deployment {name:?} already exists"))
            }
            ServiceError::Refused(Refusal::Invalid(m)) => ApiError::BadRequest(m),
            ServiceError::Refused(Refusal::NotFound(m)) => ApiError::NotFound(m),
            ServiceError::Refused(Refusal::Conflict(m)) => ApiError::Conflict(m),
            ServiceError::BadReport(e) => ApiError::BadRequest(format!("report refused: {e}")),
            ServiceError::Unavailable(m) => ApiError::Unavailable(m),
            ServiceError::Store(e) => {
                // The cause goes to the log, not to the client.
                tracing::error!("store: {e}");
                let message = match e {
                    StoreError::Unavailable(_) => {
                        "the controller's database cannot be written right now; nothing was changed, retry later"
                    }
                    StoreError::Corrupt(_) => {
                        "the controller's stored data could not be read; nothing was changed"
                    }
                    StoreError::TimedOut(_) => {
                        "the controller's database did not answer in time; nothing was changed, retry later"
                    }
                    StoreError::Fenced(_) => {
                        "this controller lost the leader's lease; nothing was changed, retry on the leader"
                    }
                };
                ApiError::Unavailable(message.into())
            }
        }
    }
}
