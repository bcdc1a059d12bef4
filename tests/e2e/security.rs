//! What the logs never hold: request payloads, user keys, secrets. (Tokens
//! kept out of the controller's log: `controller.rs`; clients that try to
//! choose the upstream: `filter_split.rs`.)

use anyhow::{Result, ensure};
use coalmine_e2e::{Load, Stack, first_canary_response, plugin, poll, role_counts};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;
/// Stands in for personal data: it goes into bodies, headers, paths and
/// API calls, and must appear in no log line.
const MARKER: &str = "pii-9f3c2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_payload_user_key_or_secret_reaches_a_log() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    let mut p = plugin(LEASE_MS)?;
    p["deployments"][0]["sticky_header"] = json!("x-user-id");
    p["headers"]["tester_override"] =
        json!({"header": "x-coalmine-tester", "secret": format!("{MARKER}-secret-0123")});
    let config = s.envoy_config(LEASE_MS)?.plugin_config(&p)?;
    let envoy = coalmine_e2e::Envoy::start_as(config, "proxy-a").await?;
    s.deployment(json!({"check_interval_seconds": 1})).await?;
    s.start_canary(50.0).await?;

    // User traffic with personal data in the body, the sticky key, a wrong
    // and a right tester override, and a query string.
    let client = reqwest::Client::new();
    for i in 0..50 {
        let mut req = client
            .post(envoy.url(&format!("/predict/heart?patient={MARKER}-{i}")))
            .header("x-user-id", format!("{MARKER}-user-{i}"))
            .json(&json!({"name": format!("{MARKER}-name"), "age": 63, "chol": 233}));
        req = match i % 3 {
            0 => req.header("x-coalmine-tester", format!("canary:{MARKER}-wrong")),
            1 => req.header("x-coalmine-tester", format!("canary:{MARKER}-secret-0123")),
            _ => req,
        };
        req.send().await?;
    }
    let load = Load::start(envoy.url("/predict/heart"), 50);
    first_canary_response(&load, Instant::now()).await?;
    // Operator calls with the marker in refused and accepted bodies, and a
    // sync with a wrong token.
    let c = &s.controller;
    let _ = c
        .call_status(
            "POST",
            "/v1/deployments",
            json!({"name": MARKER, "baseline": {"version": MARKER}}),
        )
        .await?;
    c.call(
        "POST",
        "/v1/deployments/heart-prod/versions",
        json!({"version": "v3", "cluster": "heart-v3", "metadata": {"owner": MARKER}}),
    )
    .await?;
    let _ = c
        .call_status(
            "POST",
            "/v1/deployments/heart-prod/pause",
            json!({"reason": {"x": MARKER}}),
        )
        .await?;
    let sync = client
        .post(c.url("/v1/sync"))
        .bearer_auth(format!("{MARKER}-token"))
        .body(format!("{{\"proxy\": \"{MARKER}\"}}"))
        .send()
        .await?;
    ensure!(sync.status() == 401);
    // Every request reported: the controller counts what Envoy counted.
    drop(load);
    poll("the reports to arrive", Duration::from_secs(20), || async {
        let (b, k) = role_counts(&envoy).await?;
        Ok((k > 0.0 && c.role_counts().await? == (b, k)).then_some(()))
    })
    .await?;

    for (who, log) in [("Envoy", envoy.log()), ("controller", c.log())] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(MARKER)).collect();
        ensure!(
            leaks.is_empty(),
            "{who} logged personal data or a secret:\n{}",
            leaks.join("\n")
        );
        println!(
            "{who}: {} log lines, none with the marker",
            log.lines().count()
        );
    }
    Ok(())
}
