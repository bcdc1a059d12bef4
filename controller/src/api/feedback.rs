//! Feedback: ground truth (was the diagnosis right?) and business outcomes
//! (did the user convert?) posted by data pipelines after the fact
//! (DESIGN.md, "Feedback").

use super::extract::{FeedbackCaller, JsonBody};
use super::{ApiResult, AppState, DeploymentName};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use coalmine_client::types::{FeedbackAccepted, FeedbackBatch};

/// A call of 10 000 observations fits, whatever its version names (at most
/// 256 bytes each, escaped, with the rest of an observation's JSON).
pub const FEEDBACK_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[utoipa::path(
    post, path = "/deployments/{name}/feedback", tag = "feedback", params(DeploymentName),
    security(("feedback_token" = []), ("operator_token" = [])),
    request_body = FeedbackBatch,
    responses((status = 202, description = "every observation counted (a call is counted whole or not at all)", body = FeedbackAccepted))
)]
pub(super) async fn post_feedback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    _caller: FeedbackCaller,
    JsonBody(batch): JsonBody<FeedbackBatch>,
) -> ApiResult<(StatusCode, Json<FeedbackAccepted>)> {
    let observations = batch
        .observations
        .iter()
        .map(|o| (o.version.as_str(), o.value.0));
    let accepted = s
        .controller
        .feedback(&name, &batch.metric, observations)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(FeedbackAccepted { accepted })))
}
