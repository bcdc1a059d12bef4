//! Deployments, their versions, the rollout (canary, traffic, pause,
//! resume, promote, rollback) and the policy. Each change answers the
//! deployment as `view` shows it (the shadow's calls too, `shadow.rs`).

use super::extract::{JsonBody, Operator, OptionalJsonBody};
use super::{ApiError, ApiResult, AppState, DeploymentName};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use coalmine_client::types::{
    CanaryView, CreateDeployment, DeploymentView, Phase, ReasonBody, RegisterVersion, SetTraffic,
    ShadowView, StartCanary, UnbarVersion,
};
use coalmine_decide::engine::{Canary, Command, Deployment, Shadow, Version};
use coalmine_decide::policy::Policy;
use coalmine_protocol::Bps;
use serde_json::json;

fn canary_view(c: &Canary) -> CanaryView {
    CanaryView {
        version: c.target.version.clone(),
        cluster: c.target.cluster.clone(),
        percent: c.bps.as_percent(),
        steps: c.steps.iter().map(|s| s.as_percent()).collect(),
        step_index: c
            .steps
            .iter()
            .position(|s| *s == c.bps)
            .and_then(|i| u32::try_from(i).ok()),
        next_step_percent: c.next_step().map(Bps::as_percent),
        bake_seconds: c.bake_seconds,
        started_at: c.started_at,
        step_since: c.step_since,
        paused: c.paused,
    }
}

fn shadow_view(s: &Shadow) -> ShadowView {
    ShadowView {
        version: s.target.version.clone(),
        cluster: s.target.cluster.clone(),
        percent: s.bps.as_percent(),
        started_at: s.started_at,
    }
}

async fn view(state: &AppState, d: &Deployment) -> DeploymentView {
    let now = state.controller.now();
    let phase = match &d.canary {
        Some(c) if c.paused => Phase::Paused,
        Some(_) => Phase::Canary,
        None if d.cooldown_until.is_some_and(|t| t > now) => Phase::Cooldown,
        None => Phase::Stable,
    };
    let mut in_play = vec![d.baseline.version.clone()];
    in_play.extend(d.canary.as_ref().map(|c| c.target.version.clone()));
    in_play.extend(d.shadow.as_ref().map(|s| s.target.version.clone()));
    DeploymentView {
        name: d.name.clone(),
        state: phase,
        baseline: d.baseline.clone(),
        canary: d.canary.as_ref().map(canary_view),
        canary_percent: d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent()),
        shadow: d.shadow.as_ref().map(shadow_view),
        pinned: d.pinned.clone(),
        cooldown_until: d.cooldown_until.filter(|&t| t > now),
        versions_in_play: in_play,
        epoch: state.controller.epoch().await,
        policy: d.policy.clone(),
        health: state.controller.health_of(d),
    }
}

// ---- handlers ---------------------------------------------------------------

#[utoipa::path(
    get, path = "/deployments", tag = "deployments",
    responses((status = 200, description = "every deployment, by name", body = Vec<DeploymentView>))
)]
pub(super) async fn list_deployments(State(s): State<AppState>) -> Json<Vec<DeploymentView>> {
    let mut out = Vec::new();
    for d in s.controller.deployments().await {
        out.push(view(&s, &d).await);
    }
    Json(out)
}

#[utoipa::path(
    post, path = "/deployments", tag = "deployments", security(("operator_token" = [])),
    request_body = CreateDeployment,
    responses((status = 201, description = "the deployment, created", body = DeploymentView))
)]
pub(super) async fn create_deployment(
    State(s): State<AppState>,
    Operator(actor): Operator,
    JsonBody(body): JsonBody<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let d = s
        .controller
        .create(
            &body.name,
            body.baseline,
            body.policy.unwrap_or_default(),
            &actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(&s, &d).await)))
}

#[utoipa::path(
    get, path = "/deployments/{name}", tag = "deployments", params(DeploymentName),
    responses((status = 200, description = "the deployment", body = DeploymentView))
)]
pub(super) async fn get_deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    let d = s.controller.deployment(&name).await?;
    Ok(Json(view(&s, &d).await))
}

#[utoipa::path(
    get, path = "/deployments/{name}/versions", tag = "versions", params(DeploymentName),
    responses((status = 200, description = "the version registry", body = Vec<Version>))
)]
pub(super) async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    Ok(Json(s.controller.deployment(&name).await?.versions))
}

/// Metadata (artifact digest, offline accuracy …) is kept, within reason.
const METADATA_LIMIT: usize = 16 * 1024;

#[utoipa::path(
    post, path = "/deployments/{name}/versions", tag = "versions", params(DeploymentName), security(("operator_token" = [])),
    request_body = RegisterVersion,
    responses((status = 201, description = "the version, registered", body = Version))
)]
pub(super) async fn register_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(body): JsonBody<RegisterVersion>,
) -> ApiResult<(StatusCode, Json<Version>)> {
    let metadata = body.metadata.unwrap_or_else(|| json!({}));
    if metadata.to_string().len() > METADATA_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "metadata is larger than {METADATA_LIMIT} bytes"
        )));
    }
    let version = body.version.clone();
    let cmd = Command::RegisterVersion {
        version: body.version,
        cluster: body.cluster,
        metadata,
    };
    let d = s.controller.command(&name, cmd, &actor).await?;
    let v = d
        .version(&version)
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("the version was not recorded".into()))?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(
    post, path = "/deployments/{name}/unbar", tag = "versions", params(DeploymentName), security(("operator_token" = [])),
    request_body = UnbarVersion,
    responses((status = 200, description = "the version, registered and healthy again; the deployment's cooldown is kept", body = Version))
)]
pub(super) async fn unbar_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(body): JsonBody<UnbarVersion>,
) -> ApiResult<Json<Version>> {
    let version = body.version.clone();
    let cmd = Command::UnbarVersion {
        version: body.version,
        reason: body.reason,
    };
    let d = s.controller.command(&name, cmd, &actor).await?;
    let v = d
        .version(&version)
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("the version was not recorded".into()))?;
    Ok(Json(v))
}

pub(super) async fn run(
    s: &AppState,
    name: &str,
    cmd: Command,
    actor: &str,
) -> ApiResult<Json<DeploymentView>> {
    let d = s.controller.command(name, cmd, actor).await?;
    Ok(Json(view(s, &d).await))
}

#[utoipa::path(
    post, path = "/deployments/{name}/canary", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body = StartCanary,
    responses((status = 200, description = "the deployment with its canary", body = DeploymentView))
)]
pub(super) async fn start_canary(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(b): JsonBody<StartCanary>,
) -> ApiResult<Json<DeploymentView>> {
    let cmd = Command::StartCanary {
        version: b.version,
        percent: b.percent,
        steps: b.steps,
        bake_seconds: b.bake_seconds,
        schedule: b.schedule,
    };
    run(&s, &name, cmd, &actor).await
}

#[utoipa::path(
    put, path = "/deployments/{name}/traffic", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body = SetTraffic,
    responses((status = 200, description = "the deployment at its new split", body = DeploymentView))
)]
pub(super) async fn set_traffic(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(b): JsonBody<SetTraffic>,
) -> ApiResult<Json<DeploymentView>> {
    run(
        &s,
        &name,
        Command::SetTraffic {
            percent: b.canary_percent,
        },
        &actor,
    )
    .await
}

#[utoipa::path(
    post, path = "/deployments/{name}/pause", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "the deployment, paused", body = DeploymentView))
)]
pub(super) async fn pause(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Pause { reason: b.reason }, &actor).await
}

#[utoipa::path(
    post, path = "/deployments/{name}/resume", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "the deployment, resumed", body = DeploymentView))
)]
pub(super) async fn resume(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Resume { reason: b.reason }, &actor).await
}

#[utoipa::path(
    post, path = "/deployments/{name}/promote", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "the deployment, promoted", body = DeploymentView))
)]
pub(super) async fn promote(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Promote { reason: b.reason }, &actor).await
}

#[utoipa::path(
    post, path = "/deployments/{name}/rollback", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "the deployment, rolled back", body = DeploymentView))
)]
pub(super) async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Rollback { reason: b.reason }, &actor).await
}

#[utoipa::path(
    get, path = "/deployments/{name}/policy", tag = "policy", params(DeploymentName),
    responses((status = 200, description = "the deployment's policy", body = Policy))
)]
pub(super) async fn get_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Policy>> {
    Ok(Json(s.controller.deployment(&name).await?.policy))
}

#[utoipa::path(
    put, path = "/deployments/{name}/policy", tag = "policy", params(DeploymentName), security(("operator_token" = [])),
    request_body = Policy,
    responses((status = 200, description = "the deployment with its new policy", body = DeploymentView))
)]
pub(super) async fn set_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(policy): JsonBody<Policy>,
) -> ApiResult<Json<DeploymentView>> {
    run(
        &s,
        &name,
        Command::SetPolicy {
            policy: Box::new(policy),
        },
        &actor,
    )
    .await
}
