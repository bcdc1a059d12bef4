//! The timeline read newest first, page by page.

use super::*;

#[tokio::test]
async fn events_page_from_the_newest() {
    let app = with_deployment().await;
    for _ in 0..3 {
        let body = json!({"version": format!("v{}", rand_suffix()), "cluster": "c"});
        let (status, _) = call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/versions",
            Some(OP),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let uri = "/v1/deployments/heart-prod/events";
    let (_, all) = call(&app, "GET", uri, None, None).await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    let (_, newest) = call(
        &app,
        "GET",
        &format!("{uri}?order=newest&limit=2"),
        None,
        None,
    )
    .await;
    let page: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, [ids[5], ids[4]]);
    let (_, older) = call(
        &app,
        "GET",
        &format!("{uri}?order=newest&before={}&limit=10", ids[4]),
        None,
        None,
    )
    .await;
    assert_eq!(older.as_array().unwrap().len(), 4);
    assert_eq!(older[0]["id"], ids[3]);
    for bad in ["order=newest&since=1", "before=3", "order=sideways"] {
        let (status, _) = call(&app, "GET", &format!("{uri}?{bad}"), None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(10);
    N.fetch_add(1, Ordering::SeqCst)
}
