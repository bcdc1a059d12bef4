//! The REST API (DESIGN.md, "Controller REST API").
//!
//! Reads are open; calls that change state need the operator token;
//! `/v1/sync` needs the sync token. Every error is `{error, message}` with a
//! 4xx (or 503 when the database cannot be written).

mod error;
mod extract;

pub use error::ApiError;

use crate::auth::Tokens;
use crate::engine::{Canary, Command, Deployment, Millis, Version};
use crate::policy::Policy;
use crate::service::{Controller, Health, Sample, now_ms};
use crate::store::StoredEvent;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use coalmine_protocol::sync::{MAX_WAIT_MS, SyncRequest, SyncResponse};
use coalmine_protocol::{Bps, Target};
use extract::{JsonBody, Operator, OptionalJsonBody, SyncCaller};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

/// Operator request bodies are small; sync reports may carry many histograms.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const SYNC_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub tokens: Arc<Tokens>,
    body_limit: usize,
}

/// The whole API.
pub fn router(controller: Arc<Controller>, tokens: Tokens) -> Router {
    let tokens = Arc::new(tokens);
    let operator = AppState {
        controller: controller.clone(),
        tokens: tokens.clone(),
        body_limit: BODY_LIMIT,
    };
    let metrics_state = controller.clone();
    let proxies = AppState {
        controller,
        tokens,
        body_limit: SYNC_BODY_LIMIT,
    };
    let v1 = Router::new()
        .route(
            "/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route("/deployments/{name}", get(get_deployment))
        .route(
            "/deployments/{name}/versions",
            get(list_versions).post(register_version),
        )
        .route("/deployments/{name}/canary", post(start_canary))
        .route("/deployments/{name}/traffic", put(set_traffic))
        .route("/deployments/{name}/pause", post(pause))
        .route("/deployments/{name}/resume", post(resume))
        .route("/deployments/{name}/promote", post(promote))
        .route("/deployments/{name}/rollback", post(rollback))
        .route("/deployments/{name}/health", get(health))
        .route("/deployments/{name}/events", get(events))
        .route("/deployments/{name}/history", get(history))
        .route(
            "/deployments/{name}/policy",
            get(get_policy).put(set_policy),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(operator);
    let sync_routes = Router::new()
        .route("/sync", post(sync))
        .layer(DefaultBodyLimit::max(SYNC_BODY_LIMIT))
        .with_state(proxies);
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics).with_state(metrics_state))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .nest("/v1", v1.merge(sync_routes))
        .fallback(|| async {
            ApiError::NotFound("no such endpoint; see DESIGN.md for the API".into())
        })
}

// ---- views ------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct CanaryView {
    pub version: String,
    pub cluster: String,
    pub percent: f64,
    pub steps: Vec<f64>,
    pub next_step_percent: Option<f64>,
    pub bake_seconds: u64,
    pub started_at: Millis,
    pub step_since: Millis,
    pub paused: bool,
}

#[derive(Debug, Serialize)]
pub struct DeploymentView {
    pub name: String,
    /// `stable`, `canary`, `paused` or `cooldown`.
    pub state: &'static str,
    pub baseline: Target,
    pub canary: Option<CanaryView>,
    pub canary_percent: f64,
    pub pinned: Option<Target>,
    pub cooldown_until: Option<Millis>,
    pub versions_in_play: Vec<String>,
    pub epoch: u64,
    pub policy: Policy,
    pub health: Health,
}

fn canary_view(c: &Canary) -> CanaryView {
    CanaryView {
        version: c.target.version.clone(),
        cluster: c.target.cluster.clone(),
        percent: c.bps.as_percent(),
        steps: c.steps.iter().map(|s| s.as_percent()).collect(),
        next_step_percent: c.next_step().map(Bps::as_percent),
        bake_seconds: c.bake_seconds,
        started_at: c.started_at,
        step_since: c.step_since,
        paused: c.paused,
    }
}

async fn view(state: &AppState, d: &Deployment) -> DeploymentView {
    let now = now_ms();
    let phase = match &d.canary {
        Some(c) if c.paused => "paused",
        Some(_) => "canary",
        None if d.cooldown_until.is_some_and(|t| t > now) => "cooldown",
        None => "stable",
    };
    let mut in_play = vec![d.baseline.version.clone()];
    in_play.extend(d.canary.as_ref().map(|c| c.target.version.clone()));
    DeploymentView {
        name: d.name.clone(),
        state: phase,
        baseline: d.baseline.clone(),
        canary: d.canary.as_ref().map(canary_view),
        canary_percent: d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent()),
        pinned: d.pinned.clone(),
        cooldown_until: d.cooldown_until.filter(|&t| t > now),
        versions_in_play: in_play,
        epoch: state.controller.epoch().await,
        policy: d.policy.clone(),
        health: state.controller.health_of(d, now),
    }
}

// ---- handlers ---------------------------------------------------------------

type ApiResult<T> = Result<T, ApiError>;

async fn list_deployments(State(s): State<AppState>) -> Json<Vec<DeploymentView>> {
    let mut out = Vec::new();
    for d in s.controller.deployments().await {
        out.push(view(&s, &d).await);
    }
    Json(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDeployment {
    name: String,
    baseline: Target,
    #[serde(default)]
    policy: Option<Policy>,
}

async fn create_deployment(
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

async fn get_deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    let d = s.controller.deployment(&name).await?;
    Ok(Json(view(&s, &d).await))
}

async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    Ok(Json(s.controller.deployment(&name).await?.versions))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterVersion {
    version: String,
    cluster: String,
    #[serde(default)]
    metadata: Option<Value>,
}

/// Metadata (artifact digest, offline accuracy …) is kept, within reason.
const METADATA_LIMIT: usize = 16 * 1024;

async fn register_version(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartCanary {
    version: String,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    steps: Option<Vec<f64>>,
    #[serde(default)]
    bake_seconds: Option<u64>,
}

async fn run(
    s: &AppState,
    name: &str,
    cmd: Command,
    actor: &str,
) -> ApiResult<Json<DeploymentView>> {
    let d = s.controller.command(name, cmd, actor).await?;
    Ok(Json(view(s, &d).await))
}

async fn start_canary(
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
    };
    run(&s, &name, cmd, &actor).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTraffic {
    canary_percent: f64,
}

async fn set_traffic(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(b): JsonBody<SetTraffic>,
) -> ApiResult<Json<DeploymentView>> {
    if !(0.0..=100.0).contains(&b.canary_percent) {
        return Err(ApiError::BadRequest(format!(
            "canary_percent must be between 0 and 100, got {}",
            b.canary_percent
        )));
    }
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn pause(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Pause { reason: b.reason }, &actor).await
}

async fn resume(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Resume { reason: b.reason }, &actor).await
}

async fn promote(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Promote { reason: b.reason }, &actor).await
}

async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Rollback { reason: b.reason }, &actor).await
}

async fn health(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Health>> {
    Ok(Json(s.controller.health(&name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

async fn events(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        s.controller
            .events(&name, q.since.unwrap_or(0), limit)
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    since: Option<Millis>,
}

async fn history(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Sample>>> {
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    Ok(Json(
        s.controller.history(&name, q.since.unwrap_or(0)).await?,
    ))
}

/// The dashboard: one self-contained page, embedded in the binary.
const DASHBOARD: &str = include_str!("../dashboard/index.html");

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(DASHBOARD)
}

async fn metrics(State(c): State<Arc<Controller>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics().encode(),
    )
}

async fn get_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Policy>> {
    Ok(Json(s.controller.deployment(&name).await?.policy))
}

async fn set_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(policy): JsonBody<Policy>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::SetPolicy { policy }, &actor).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    /// Hold the answer up to this long while the caller's table is current.
    #[serde(default)]
    wait_ms: u64,
}

async fn sync(
    State(s): State<AppState>,
    _caller: SyncCaller,
    query: Result<Query<SyncQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> ApiResult<Json<SyncResponse>> {
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    if q.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, got {}",
            q.wait_ms
        )));
    }
    let wait = std::time::Duration::from_millis(q.wait_ms);
    Ok(Json(s.controller.sync_held(&req, now_ms(), wait).await?))
}

#[cfg(test)]
mod tests;
