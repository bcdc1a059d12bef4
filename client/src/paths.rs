//! Every path of the controller's API, in one place. The typed client
//! builds its requests from these; tests that send something the typed
//! calls cannot (a malformed body, no token) use them too.

/// The deployments collection.
pub const DEPLOYMENTS: &str = "/v1/deployments";
/// The proxies' call (the filter's plugin configuration defaults to it).
pub const SYNC: &str = coalmine_protocol::sync::SYNC_PATH;
/// The OpenAPI document of the whole API.
pub const OPENAPI: &str = "/v1/openapi.json";
pub const HEALTHZ: &str = "/healthz";
/// 200 when every change is stored and evaluations run, else 503.
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const DASHBOARD: &str = "/";

/// One deployment.
pub fn deployment(name: &str) -> String {
    format!("{DEPLOYMENTS}/{name}")
}

/// A deployment's sub-resource: `versions`, `canary`, `shadow`, `traffic`,
/// `pause`, `resume`, `promote`, `rollback`, `unbar`, `health`, `policy`,
/// `feedback`.
pub fn of(name: &str, what: &str) -> String {
    format!("{DEPLOYMENTS}/{name}/{what}")
}

/// A deployment's events after `since` (an event id), at most `limit`.
pub fn events(name: &str, since: Option<i64>, limit: Option<u32>) -> String {
    let mut query = Vec::new();
    if let Some(s) = since {
        query.push(format!("since={s}"));
    }
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    with_query(of(name, "events"), &query)
}

/// A deployment's newest events (below the event id `before`), newest
/// first, at most `limit`.
pub fn latest_events(name: &str, before: Option<i64>, limit: Option<u32>) -> String {
    let mut query = vec!["order=newest".to_string()];
    if let Some(b) = before {
        query.push(format!("before={b}"));
    }
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    with_query(of(name, "events"), &query)
}

/// A deployment's history samples after `since` (ms since the epoch).
pub fn history(name: &str, since: Option<u64>) -> String {
    let query: Vec<String> = since.map(|s| format!("since={s}")).into_iter().collect();
    with_query(of(name, "history"), &query)
}

/// The sync call, held up to `wait_ms` (0: answered at once).
pub fn sync(wait_ms: u64) -> String {
    coalmine_protocol::sync::sync_path(SYNC, wait_ms)
}

fn with_query(path: String, query: &[String]) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(deployment("heart-prod"), "/v1/deployments/heart-prod");
        assert_eq!(of("d", "canary"), "/v1/deployments/d/canary");
        assert_eq!(events("d", None, None), "/v1/deployments/d/events");
        assert_eq!(
            events("d", Some(7), Some(10)),
            "/v1/deployments/d/events?since=7&limit=10"
        );
        assert_eq!(history("d", Some(5)), "/v1/deployments/d/history?since=5");
        assert_eq!(sync(0), "/v1/sync");
        assert_eq!(sync(900), "/v1/sync?wait_ms=900");
    }
}
