//! The REST API (DESIGN.md, "Controller REST API").
//!
//! Reads are open; calls that change state need the operator token; the
//! proxies' sync call needs the sync token; feedback takes the feedback
//! token (which opens nothing else) or the operator token. Every error is
//! `{error, message}` with a 4xx (or 503 when the database cannot be
//! written). The request and answer types are `coalmine_client::types`,
//! so the typed client and this server share them.
//!
//! - `deployments`: deployments, versions, the rollout and the policy;
//! - `shadow`: start, change and stop a deployment's shadow;
//! - `reads`: health, events, history, `/metrics`, the dashboard;
//! - `sync`: the proxies' call;
//! - `feedback`: labels and outcomes from data pipelines;
//! - `extract`, `schemas`, `error`: bodies checked against the published
//!   OpenAPI document, tokens, and the one error type.

mod deployments;
mod error;
mod extract;
mod feedback;
mod reads;
mod schemas;
mod shadow;
mod sync;

pub use error::ApiError;
pub use feedback::FEEDBACK_BODY_LIMIT;

use crate::auth::{AuthGuard, LiveTokens, Tokens};
use crate::service::Controller;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use axum::{Json, Router};
use coalmine_client::types::ErrorBody;
use schemas::BodySchemas;
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Operator request bodies are small; sync reports may carry many histograms.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const SYNC_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub tokens: Arc<LiveTokens>,
    guard: Arc<AuthGuard>,
    body_limit: usize,
    schemas: Arc<OnceLock<BodySchemas>>,
}

/// The whole API, with these tokens for good.
pub fn router(controller: Arc<Controller>, tokens: Tokens) -> Router {
    router_live(controller, Arc::new(LiveTokens::new(tokens)))
}

/// The whole API, with the tokens in force in `tokens` (replaced on
/// reload).
pub fn router_live(controller: Arc<Controller>, tokens: Arc<LiveTokens>) -> Router {
    let guard = Arc::new(AuthGuard::new(controller.wrong_tokens_per_window()));
    // Filled from the document once the routes have made it.
    let schemas = Arc::new(OnceLock::new());
    let operator = AppState {
        controller: controller.clone(),
        tokens: tokens.clone(),
        guard: guard.clone(),
        body_limit: BODY_LIMIT,
        schemas: schemas.clone(),
    };
    let metrics_state = controller.clone();
    let pipelines = AppState {
        controller: controller.clone(),
        tokens: tokens.clone(),
        guard: guard.clone(),
        body_limit: feedback::FEEDBACK_BODY_LIMIT,
        schemas: schemas.clone(),
    };
    let proxies = AppState {
        controller,
        tokens,
        guard,
        body_limit: SYNC_BODY_LIMIT,
        schemas,
    };
    let (router, doc) =
        routes(operator, pipelines, proxies.clone(), metrics_state).split_for_parts();
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
        // Nothing the controller answers is to be framed or read as
        // another type than it says (the dashboard sets more).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

fn routes(
    operator: AppState,
    pipelines: AppState,
    proxies: AppState,
    metrics_state: Arc<Controller>,
) -> OpenApiRouter {
    use deployments::*;
    use reads::*;
    let v1 = OpenApiRouter::new()
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment))
        .routes(routes!(list_versions, register_version))
        .routes(routes!(unbar_version))
        .routes(routes!(start_canary))
        .routes(routes!(shadow::start_shadow, shadow::stop_shadow))
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
    let feedback_routes = OpenApiRouter::new()
        .routes(routes!(feedback::post_feedback))
        .layer(DefaultBodyLimit::max(feedback::FEEDBACK_BODY_LIMIT))
        .with_state(pipelines);
    let sync_routes = OpenApiRouter::new()
        .routes(routes!(sync::sync))
        .layer(DefaultBodyLimit::max(SYNC_BODY_LIMIT))
        .with_state(proxies);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(dashboard_js))
        .routes(routes!(dashboard_css))
        .routes(routes!(metrics).with_state(metrics_state.clone()))
        .routes(routes!(readyz).with_state(metrics_state.clone()))
        .routes(routes!(healthz))
        .nest(
            "/v1",
            v1.merge(feedback_routes)
                .merge(sync_routes)
                .layer(axum::middleware::from_fn_with_state(
                    metrics_state.clone(),
                    leader_only,
                ))
                .layer(axum::middleware::from_fn(access_log)),
        )
}

/// One line for every call that changes something (not the proxies'
/// syncs): who (the token's name), what, and the answer's status.
async fn access_log(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    if method == axum::http::Method::GET
        || method == axum::http::Method::HEAD
        || request.uri().path().ends_with("/sync")
    {
        return next.run(request).await;
    }
    // The path as the client sent it (this router is nested under /v1).
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_string(),
            |u| u.path().to_string(),
        );
    let slot = extract::AccessSlot::default();
    request.extensions_mut().insert(slot.clone());
    let client = request
        .extensions()
        .get::<crate::auth::ClientAddr>()
        .map(|a| a.0.to_string());
    let response = next.run(request).await;
    let actor = slot.0.lock().ok().and_then(|a| a.clone());
    tracing::info!(
        target: "coalmine_controller::access",
        actor = actor.as_deref().unwrap_or("-"),
        client = client.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        "{method} {path}"
    );
    response
}

/// Only the leader answers the API: a follower's state in memory is not
/// current, and only the leader may change it. Followers answer 503 naming
/// the leader (health checks and the Kubernetes Service send callers to
/// the leader, by `/readyz`).
async fn leader_only(
    axum::extract::State(c): axum::extract::State<Arc<Controller>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match c.follower_reason() {
        None => next.run(request).await,
        Some(reason) => {
            if request.uri().path().ends_with("/sync") {
                c.metrics()
                    .sync_report(crate::metrics::SyncResult::Follower);
            }
            ApiError::Unavailable(reason).into_response()
        }
    }
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
        components.add_security_scheme(
            FEEDBACK_TOKEN,
            bearer("the data pipelines' feedback token (--feedback-token): feedback only"),
        );
    }
}

const OPERATOR_TOKEN: &str = "operator_token";
const SYNC_TOKEN: &str = "sync_token";
const FEEDBACK_TOKEN: &str = "feedback_token";

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
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            // Neither the proxies' call nor feedback depends on the
            // deployment's state.
            let counted = path == "/v1/sync" || path.ends_with("/feedback");
            let mut errors = vec![(400, "the request is malformed; nothing was changed")];
            if secured {
                errors.push((401, "the token is missing or wrong"));
                errors.push((
                    429,
                    "too many wrong tokens from this address: try again after the window",
                ));
            }
            if path.contains("{name}") {
                errors.push((404, "no such deployment (or version)"));
            }
            if secured && !counted {
                errors.push((409, "the deployment's state does not allow this now"));
            }
            if op.request_body.is_some() {
                errors.push((413, "the request body is larger than the limit"));
            }
            errors.push((
                503,
                "the controller's database cannot be used right now, or this replica does not lead (the message names the leader)",
            ));
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

type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests;
