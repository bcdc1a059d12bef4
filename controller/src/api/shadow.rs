//! The shadow: a version that gets a copy of a share of the baseline's
//! requests and never answers a user (DESIGN.md, "Shadow"). Starting it
//! again changes its version or share; a canary of its version stops it.

use super::deployments::run;
use super::extract::{JsonBody, Operator};
use super::{ApiResult, AppState, DeploymentName};
use axum::Json;
use axum::extract::{Path, State};
use coalmine_client::types::{DeploymentView, StartShadow};
use coalmine_decide::engine::Command;

#[utoipa::path(
    post, path = "/deployments/{name}/shadow", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body = StartShadow,
    responses((status = 200, description = "the deployment with its shadow (started, or changed to this version and share)", body = DeploymentView))
)]
pub(super) async fn start_shadow(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(b): JsonBody<StartShadow>,
) -> ApiResult<Json<DeploymentView>> {
    let cmd = Command::StartShadow {
        version: b.version,
        percent: b.percent,
    };
    run(&s, &name, cmd, &actor).await
}

#[utoipa::path(
    delete, path = "/deployments/{name}/shadow", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    responses((status = 200, description = "the deployment, its shadow stopped", body = DeploymentView))
)]
pub(super) async fn stop_shadow(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::StopShadow, &actor).await
}
