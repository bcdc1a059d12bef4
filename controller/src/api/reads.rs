//! What operators and Prometheus read: health, the event log, history,
//! liveness, `/metrics` and the dashboard.

use super::extract::QueryParams;
use super::{ApiError, ApiResult, AppState, DeploymentName};
use crate::clock::Millis;
use crate::service::Controller;
use crate::store::StoredEvent;
use axum::Json;
use axum::extract::{Path, State};
use coalmine_client::types::Sample;
use coalmine_decide::verdict::Health;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::IntoParams;

#[utoipa::path(
    get, path = "/deployments/{name}/health", tag = "health", params(DeploymentName),
    responses((status = 200, description = "the current verdict and both roles' numbers", body = Health))
)]
pub(super) async fn health(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Health>> {
    Ok(Json(s.controller.health(&name).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Oldest first, after this event id (the default order).
    #[serde(default)]
    since: Option<i64>,
    /// `newest`: the newest first, below `before` if given (the latest
    /// page, then older ones).
    #[serde(default)]
    order: Option<EventOrder>,
    /// With `order=newest`: only events with an id below this.
    #[serde(default)]
    before: Option<i64>,
    /// At most this many events (default 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<u32>,
}

/// Which end of the event log a page starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum EventOrder {
    #[default]
    Oldest,
    Newest,
}

#[utoipa::path(
    get, path = "/deployments/{name}/events", tag = "health", params(DeploymentName, EventsQuery),
    responses((status = 200, description = "the event log, oldest first (or newest first with order=newest)", body = Vec<StoredEvent>))
)]
pub(super) async fn events(
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 10000, got {limit}"
        )));
    }
    let order = q.order.unwrap_or_default();
    let events = match order {
        EventOrder::Oldest if q.before.is_some() => {
            return Err(ApiError::BadRequest(
                "before goes with order=newest; oldest first pages with since".into(),
            ));
        }
        EventOrder::Newest if q.since.is_some() => {
            return Err(ApiError::BadRequest(
                "since goes with the default order (oldest first); newest first pages with before"
                    .into(),
            ));
        }
        EventOrder::Oldest => {
            s.controller
                .events(&name, q.since.unwrap_or(0), limit)
                .await?
        }
        EventOrder::Newest => s.controller.latest_events(&name, q.before, limit).await?,
    };
    Ok(Json(events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    since: Option<Millis>,
}

#[utoipa::path(
    get, path = "/deployments/{name}/history", tag = "health", params(DeploymentName, HistoryQuery),
    responses((status = 200, description = "one sample a second, oldest first", body = Vec<Sample>))
)]
pub(super) async fn history(
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<Json<Vec<Sample>>> {
    Ok(Json(
        s.controller.history(&name, q.since.unwrap_or(0)).await?,
    ))
}

#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the controller is up", body = Object, example = json!({"status": "ok"})))
)]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "every change is stored and evaluations run", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "not to be relied on: a follower (another replica leads), changes wait for the database, or evaluations stalled", body = Object, example = json!({"status": "unready", "reason": "1 change(s) are in effect but not stored: the database cannot be written"}))
    )
)]
pub(super) async fn readyz(
    State(c): State<Arc<Controller>>,
) -> (axum::http::StatusCode, Json<Value>) {
    match c.readiness() {
        Ok(()) => (axum::http::StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "reason": reason})),
        ),
    }
}

/// The dashboard: a page, its script and its styles, embedded in the
/// binary (no build step). The script and the styles are files of their
/// own so that the page's policy can allow only the controller's own.
const DASHBOARD: &str = include_str!("../../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../dashboard/dashboard.css");

/// What the dashboard may load and do: its script, styles and API calls
/// from the controller only (no inline script or style, no eval), nothing
/// else fetched, never framed, no `<base>`, no forms sent.
pub(super) const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// One of the dashboard's files with its type and the headers that keep
/// it from being framed, sniffed as another type, or naming itself to
/// others (`Referer`); revalidated, so an upgrade's page gets its script.
fn dashboard_file(
    content_type: &'static str,
    body: &'static str,
) -> impl axum::response::IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[utoipa::path(
    get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the dashboard's page (its script and styles at /dashboard.js and /dashboard.css)", content_type = "text/html; charset=utf-8", body = String,
        headers(
            ("Content-Security-Policy" = String, description = "scripts, styles and calls from the controller only; never framed"),
            ("X-Frame-Options" = String, description = "DENY"),
            ("X-Content-Type-Options" = String, description = "nosniff"),
            ("Referrer-Policy" = String, description = "no-referrer")
        )))
)]
pub(super) async fn dashboard() -> impl axum::response::IntoResponse {
    dashboard_file("text/html; charset=utf-8", DASHBOARD)
}

#[utoipa::path(
    get, path = "/dashboard.js", tag = "dashboard",
    responses((status = 200, description = "the dashboard's script", content_type = "text/javascript; charset=utf-8", body = String))
)]
pub(super) async fn dashboard_js() -> impl axum::response::IntoResponse {
    dashboard_file("text/javascript; charset=utf-8", DASHBOARD_JS)
}

#[utoipa::path(
    get, path = "/dashboard.css", tag = "dashboard",
    responses((status = 200, description = "the dashboard's styles", content_type = "text/css; charset=utf-8", body = String))
)]
pub(super) async fn dashboard_css() -> impl axum::response::IntoResponse {
    dashboard_file("text/css; charset=utf-8", DASHBOARD_CSS)
}

#[utoipa::path(
    get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus metrics (text exposition format 0.0.4)", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub(super) async fn metrics(State(c): State<Arc<Controller>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics().encode(),
    )
}
