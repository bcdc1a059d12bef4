//! The proxies' call: each filter worker's report in, the split table and
//! its lease out, held until the table changes (DESIGN.md, the sync
//! protocol).

use super::extract::{QueryParams, SyncCaller, json_body};
use super::{ApiError, ApiResult, AppState};
use axum::Json;
use axum::extract::{Request, State};
use coalmine_protocol::sync::{MAX_WAIT_MS, SyncRequest, SyncResponse};
use serde::Deserialize;
use tokio::sync::Semaphore;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SyncQuery {
    /// Hold the answer up to this long while the caller's table is current.
    #[serde(default)]
    #[param(maximum = 60_000)]
    wait_ms: u64,
}

/// Sync bodies read and counted at once (each up to 4 MiB); more wait
/// their turn, so a burst of large reports cannot take the controller's
/// memory. Held calls wait for the table without a slot.
const SYNC_SLOTS: usize = 4;
static SLOTS: Semaphore = Semaphore::const_new(SYNC_SLOTS);

#[utoipa::path(
    post, path = "/sync", tag = "proxies", params(SyncQuery), security(("sync_token" = [])),
    request_body = SyncRequest,
    responses((status = 200, description = "the split table and its lease", body = SyncResponse))
)]
pub(super) async fn sync(
    State(s): State<AppState>,
    SyncCaller(bound): SyncCaller,
    QueryParams(q): QueryParams<SyncQuery>,
    body: Request,
) -> ApiResult<Json<SyncResponse>> {
    if q.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, got {}",
            q.wait_ms
        )));
    }
    let slot = SLOTS
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the controller is stopping".into()))?;
    let req: SyncRequest = json_body(body, &s).await?;
    // A proxy's own token reports for that proxy alone.
    if let Some(proxy) = bound
        && proxy != req.proxy
    {
        s.controller
            .metrics()
            .sync_report(crate::metrics::SyncResult::Forged);
        tracing::warn!(
            "proxy {proxy:?}'s sync token used to report as {:?}: refused",
            req.proxy
        );
        return Err(ApiError::Unauthorized(format!(
            "this sync token belongs to proxy {proxy:?}; it cannot report as {:?}",
            req.proxy
        )));
    }
    let wait = std::time::Duration::from_millis(q.wait_ms);
    Ok(Json(s.controller.sync_held(&req, wait, slot).await?))
}
