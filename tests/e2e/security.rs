//! What the logs never hold: request payloads, user keys, secrets. (Tokens
//! kept out of the controller's log: `controller.rs`; clients that try to
//! choose the upstream: `filter_split.rs`.)

use anyhow::{Result, ensure};
use coalmine_client::types::RegisterVersion;
use coalmine_client::{Auth, Method, paths};
use coalmine_e2e::{Load, Stack, first_canary_response, plugin, poll, role_counts};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;
/// Stands in for personal data: it goes into bodies, headers, paths and
/// API calls, and must appear in no log line.
const MARKER: &str = "pii-9f3c2e";
/// Harmless, and known to reach each log: the filter logs the controller's
/// cluster when it is configured, and the controller logs a registered
/// version's cluster. Finding it proves the logs searched are the ones the
/// processes wrote, and not empty.
const HARMLESS: &str = "harmless-4d2b";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_payload_user_key_or_secret_reaches_a_log() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    let mut p = plugin(LEASE_MS)?;
    p["deployments"][0]["sticky_header"] = json!("x-user-id");
    p["headers"]["tester_override"] =
        json!({"header": "x-coalmine-tester", "secret": format!("{MARKER}-secret-0123")});
    let controller_cluster = format!("coalmine-controller-{HARMLESS}");
    p["controller"]["cluster"] = json!(controller_cluster);
    let config = s
        .envoy_config(LEASE_MS)?
        .rename_cluster("coalmine_controller", &controller_cluster)?
        .plugin_config(&p)?;
    let envoy = coalmine_e2e::Envoy::start_as(config, "proxy-a").await?;
    s.deployment(json!({"check_interval_seconds": 1})).await?;
    s.start_canary(50.0).await?;

    // User traffic with personal data in the body, the sticky key, a wrong
    // and a right tester override, and a query string.
    let client = s.controller.http()?;
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
    let api = c.client();
    let refused = json!({"name": MARKER, "baseline": {"version": MARKER}});
    let _ = api
        .send_json(
            Method::POST,
            paths::DEPLOYMENTS,
            Some(&refused),
            Auth::Operator,
        )
        .await?;
    api.register_version(
        "heart-prod",
        &RegisterVersion {
            version: "v3".into(),
            cluster: format!("heart-v3-{HARMLESS}"),
            metadata: Some(json!({"owner": MARKER})),
        },
    )
    .await?;
    let _ = api
        .send_json(
            Method::POST,
            &paths::of("heart-prod", "pause"),
            Some(&json!({"reason": {"x": MARKER}})),
            Auth::Operator,
        )
        .await?;
    let sync = client
        .post(c.url(paths::SYNC))
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
        ensure!(
            log.contains(HARMLESS),
            "{who}'s log does not hold what it is known to log ({HARMLESS}); it cannot prove anything:\n{log}"
        );
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
