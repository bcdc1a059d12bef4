//! The REST API (DESIGN.md, "Controller REST API").
//!
//! Reads are open; calls that change state need the operator token;
//! `/v1/sync` needs the sync token. Every error is `{error, message}` with a
//! 4xx (or 503 when the database cannot be written).

mod error;
mod extract;
mod schemas;

pub use error::{ApiError, ErrorBody, ErrorCode};

use crate::auth::Tokens;
use crate::engine::{Canary, Command, Deployment, Millis, Version};
use crate::policy::Policy;
use crate::service::{Controller, Health, Sample, now_ms};
use crate::store::StoredEvent;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use coalmine_protocol::sync::{MAX_WAIT_MS, SyncRequest, SyncResponse};
use coalmine_protocol::{Bps, Target};
use extract::{JsonBody, Operator, OptionalJsonBody, SyncCaller};
use schemas::BodySchemas;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Operator request bodies are small; sync reports may carry many histograms.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const SYNC_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub tokens: Arc<Tokens>,
    body_limit: usize,
    schemas: Arc<OnceLock<BodySchemas>>,
}

/// The whole API.
pub fn router(controller: Arc<Controller>, tokens: Tokens) -> Router {
    let tokens = Arc::new(tokens);
    // Filled from the document once the routes have made it.
    let schemas = Arc::new(OnceLock::new());
    let operator = AppState {
        controller: controller.clone(),
        tokens: tokens.clone(),
        body_limit: BODY_LIMIT,
        schemas: schemas.clone(),
    };
    let metrics_state = controller.clone();
    let proxies = AppState {
        controller,
        tokens,
        body_limit: SYNC_BODY_LIMIT,
        schemas,
    };
    let (router, doc) = routes(operator, proxies.clone(), metrics_state).split_for_parts();
    let doc = Arc::new(finish(doc));
    // Only unset here, where `proxies.schemas` was just made.
    let _ = proxies.schemas.set(BodySchemas::new(&doc));
    router
        .route(
            "/v1/openapi.json",
            get(move || std::future::ready(Json(doc.clone()))),
        )
        .fallback(|| async {
            ApiError::NotFound("no such endpoint; see /v1/openapi.json for the API".into())
        })
}

fn routes(operator: AppState, proxies: AppState, metrics_state: Arc<Controller>) -> OpenApiRouter {
    let v1 = OpenApiRouter::new()
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment))
        .routes(routes!(list_versions, register_version))
        .routes(routes!(start_canary))
        .routes(routes!(set_traffic))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(promote))
        .routes(routes!(rollback))
        .routes(routes!(health))
        .routes(routes!(events))
        .routes(routes!(history))
        .routes(routes!(get_policy, set_policy))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(operator);
    let sync_routes = OpenApiRouter::new()
        .routes(routes!(sync))
        .layer(DefaultBodyLimit::max(SYNC_BODY_LIMIT))
        .with_state(proxies);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(metrics).with_state(metrics_state))
        .routes(routes!(healthz))
        .nest("/v1", v1.merge(sync_routes))
}

fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    document_errors(&mut doc);
    doc
}

/// The OpenAPI document: paths come from the handlers below, schemas from
/// the types they take and return.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "coalmine controller",
        description = "Canary rollout and rollback for ML models: deployments, versions, \
                       traffic, health, events, policy, and the proxies' sync call."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerTokens)
)]
pub struct ApiDoc;

/// The operator token (calls that change state) and the sync token (proxies).
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            OPERATOR_TOKEN,
            bearer("the operator token (--operator-token): calls that change state"),
        );
        components
            .add_security_scheme(SYNC_TOKEN, bearer("the proxies' sync token (--sync-token)"));
    }
}

const OPERATOR_TOKEN: &str = "operator_token";
const SYNC_TOKEN: &str = "sync_token";

/// Adds the error answers every operation can give, each `{error, message}`:
/// 400 for bad input, 401 without the right token, 404 for an unknown
/// deployment, 409 for a change the deployment's state refuses, 413 for an
/// oversized body and 503 when the database cannot be used.
fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let schema = ErrorBody::name();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for op in [&mut item.get, &mut item.put, &mut item.post]
            .into_iter()
            .flatten()
        {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let sync = path == "/v1/sync";
            let mut errors = vec![(400, "the request is malformed; nothing was changed")];
            if secured {
                errors.push((401, "the token is missing or wrong"));
            }
            if path.contains("{name}") {
                errors.push((404, "no such deployment (or version)"));
            }
            if secured && !sync {
                errors.push((409, "the deployment's state does not allow this now"));
            }
            if op.request_body.is_some() {
                errors.push((413, "the request body is larger than the limit"));
            }
            if secured || path.ends_with("/events") {
                errors.push((503, "the controller's database cannot be used right now"));
            }
            for (status, description) in errors {
                let response = ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(schema.as_ref())))
                            .build(),
                    )
                    .build();
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(response.into());
            }
        }
    }
}

/// A deployment's name, in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct DeploymentName {
    /// The deployment's name.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    name: String,
}

// ---- views ------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
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

/// Where a deployment is in its rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stable,
    Canary,
    Paused,
    Cooldown,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    pub name: String,
    pub state: Phase,
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
        Some(c) if c.paused => Phase::Paused,
        Some(_) => Phase::Canary,
        None if d.cooldown_until.is_some_and(|t| t > now) => Phase::Cooldown,
        None => Phase::Stable,
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

#[utoipa::path(
    get, path = "/deployments", tag = "deployments",
    responses((status = 200, description = "every deployment, by name", body = Vec<DeploymentView>))
)]
async fn list_deployments(State(s): State<AppState>) -> Json<Vec<DeploymentView>> {
    let mut out = Vec::new();
    for d in s.controller.deployments().await {
        out.push(view(&s, &d).await);
    }
    Json(out)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDeployment {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    name: String,
    baseline: Target,
    #[serde(default)]
    policy: Option<Policy>,
}

#[utoipa::path(
    post, path = "/deployments", tag = "deployments", security(("operator_token" = [])),
    request_body = CreateDeployment,
    responses((status = 201, description = "the deployment, created", body = DeploymentView))
)]
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

#[utoipa::path(
    get, path = "/deployments/{name}", tag = "deployments", params(DeploymentName),
    responses((status = 200, description = "the deployment", body = DeploymentView))
)]
async fn get_deployment(
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
async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    Ok(Json(s.controller.deployment(&name).await?.versions))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterVersion {
    version: String,
    cluster: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// Metadata (artifact digest, offline accuracy …) is kept, within reason.
const METADATA_LIMIT: usize = 16 * 1024;

#[utoipa::path(
    post, path = "/deployments/{name}/versions", tag = "versions", params(DeploymentName), security(("operator_token" = [])),
    request_body = RegisterVersion,
    responses((status = 201, description = "the version, registered", body = Version))
)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartCanary {
    version: String,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
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

#[utoipa::path(
    post, path = "/deployments/{name}/canary", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body = StartCanary,
    responses((status = 200, description = "the deployment with its canary", body = DeploymentView))
)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetTraffic {
    #[schema(minimum = 0, maximum = 100)]
    canary_percent: f64,
}

#[utoipa::path(
    put, path = "/deployments/{name}/traffic", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body = SetTraffic,
    responses((status = 200, description = "the deployment at its new split", body = DeploymentView))
)]
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

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(
    post, path = "/deployments/{name}/pause", tag = "rollout", params(DeploymentName), security(("operator_token" = [])),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "the deployment, paused", body = DeploymentView))
)]
async fn pause(
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
async fn resume(
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
async fn promote(
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
async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    OptionalJsonBody(b): OptionalJsonBody<ReasonBody>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::Rollback { reason: b.reason }, &actor).await
}

#[utoipa::path(
    get, path = "/deployments/{name}/health", tag = "health", params(DeploymentName),
    responses((status = 200, description = "the current verdict and both roles' numbers", body = Health))
)]
async fn health(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Health>> {
    Ok(Json(s.controller.health(&name).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    #[serde(default)]
    since: Option<i64>,
    /// At most this many events (default 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/deployments/{name}/events", tag = "health", params(DeploymentName, EventsQuery),
    responses((status = 200, description = "the event log, oldest first", body = Vec<StoredEvent>))
)]
async fn events(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 10000, got {limit}"
        )));
    }
    Ok(Json(
        s.controller
            .events(&name, q.since.unwrap_or(0), limit)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    #[serde(default)]
    since: Option<Millis>,
}

#[utoipa::path(
    get, path = "/deployments/{name}/history", tag = "health", params(DeploymentName, HistoryQuery),
    responses((status = 200, description = "one sample a second, oldest first", body = Vec<Sample>))
)]
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

#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the controller is up", body = Object, example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The dashboard: one self-contained page, embedded in the binary.
const DASHBOARD: &str = include_str!("../dashboard/index.html");

#[utoipa::path(
    get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the dashboard", content_type = "text/html", body = String))
)]
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(DASHBOARD)
}

#[utoipa::path(
    get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
async fn metrics(State(c): State<Arc<Controller>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics().encode(),
    )
}

#[utoipa::path(
    get, path = "/deployments/{name}/policy", tag = "policy", params(DeploymentName),
    responses((status = 200, description = "the deployment's policy", body = Policy))
)]
async fn get_policy(
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
async fn set_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Operator(actor): Operator,
    JsonBody(policy): JsonBody<Policy>,
) -> ApiResult<Json<DeploymentView>> {
    run(&s, &name, Command::SetPolicy { policy }, &actor).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SyncQuery {
    /// Hold the answer up to this long while the caller's table is current.
    #[serde(default)]
    #[param(maximum = 60_000)]
    wait_ms: u64,
}

#[utoipa::path(
    post, path = "/sync", tag = "proxies", params(SyncQuery), security(("sync_token" = [])),
    request_body = SyncRequest,
    responses((status = 200, description = "the split table and its lease", body = SyncResponse))
)]
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
