//! Wrong tokens on the real controller: counted by role, logged once per
//! address and window (never the token), and limited per address, at the
//! default limit and at the one `--wrong-tokens-per-window` sets.

use anyhow::{Result, ensure};
use coalmine_client::Client;
use coalmine_client::types::RegisterVersion;
use coalmine_e2e::{ControllerProc, poll, prometheus_value};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;

/// An operator client presenting a wrong token.
fn wrong_operator(c: &ControllerProc) -> Result<Client> {
    Ok(c.bare_client()?
        .operator_token(Some("not-the-operator-token".to_string())))
}

/// The call every test makes with a wrong token (and then the right one).
fn v3() -> RegisterVersion {
    RegisterVersion {
        version: "v3".into(),
        cluster: "heart-v3".into(),
        metadata: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_tokens_are_counted_logged_once_and_limited() -> Result<()> {
    let c = ControllerProc::start(LEASE_MS).await?;
    c.heart_prod(json!({})).await?;
    let wrong = wrong_operator(&c)?;
    let v = v3();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let status = wrong
            .register_version("heart-prod", &v)
            .await
            .err()
            .and_then(|e| e.status());
        statuses.push(status.unwrap_or(0));
    }
    let took = started.elapsed();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("100 wrong tokens in {took:?}: {unauthorized} × 401, then {limited} × 429");
    ensure!(unauthorized == 20 && limited == 80, "{statuses:?}");
    ensure!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    // The right token from the same address waits for the window too.
    let right = c.client().register_version("heart-prod", &v).await.err();
    ensure!(
        right.and_then(|e| e.status()) == Some(429),
        "the limited address got through"
    );
    let metrics = c.metrics_text().await?;
    let failures = prometheus_value(
        &metrics,
        "coalmine_controller_auth_failures_total",
        &[("role", "operator")],
    );
    let rate_limited =
        prometheus_value(&metrics, "coalmine_controller_auth_rate_limited_total", &[]);
    ensure!(
        failures == 20.0 && rate_limited == 81.0,
        "{failures} {rate_limited}"
    );
    let log = c.log();
    ensure!(
        log.matches("a wrong operator token from 127.0.0.1").count() == 1,
        "{log}"
    );
    ensure!(
        log.matches("20 wrong tokens from 127.0.0.1").count() == 1,
        "{log}"
    );
    ensure!(
        !log.contains("not-the-operator-token"),
        "the wrong token in the log"
    );
    // After the window, the right token works again.
    poll("the window to end", Duration::from_secs(15), || async {
        Ok(c.client().register_version("heart-prod", &v).await.ok())
    })
    .await?;
    Ok(())
}

/// `--wrong-tokens-per-window` sets the limit: with 3, the fourth call from
/// the address is answered 429, the right token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_of_wrong_tokens_is_the_one_configured() -> Result<()> {
    let c = ControllerProc::start_with(LEASE_MS, &["--wrong-tokens-per-window", "3"]).await?;
    c.heart_prod(json!({})).await?;
    let wrong = wrong_operator(&c)?;
    let v = v3();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let status = wrong.register_version("heart-prod", &v).await.err();
        statuses.push(status.and_then(|e| e.status()).unwrap_or(0));
    }
    ensure!(statuses == [401, 401, 401, 429], "{statuses:?}");
    let right = c.client().register_version("heart-prod", &v).await.err();
    ensure!(
        right.and_then(|e| e.status()) == Some(429),
        "the limited address got through"
    );
    ensure!(
        c.log().matches("3 wrong tokens from 127.0.0.1").count() == 1,
        "{}",
        c.log()
    );
    Ok(())
}
