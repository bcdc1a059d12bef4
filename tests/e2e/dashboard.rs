//! The dashboard in a real headless Chromium: both roles' live numbers, the
//! charts, the output mix and feedback, a rollback on click (confirmed, with
//! the operator token; refused without it), and every series the shipped
//! Grafana dashboard queries.

use anyhow::{Context, Result, ensure};
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, FeedbackValue};
use coalmine_e2e::{
    Browser, ControllerProc, Envoy, EnvoyConfig, Load, OPERATOR_TOKEN, SYNC_TOKEN, Upstream, poll,
    workspace_root,
};
use fantoccini::Locator;
use serde_json::{Value, json};
use std::time::Duration;

/// Clicks the element with `id`, found again if the page redrew it
/// between finding and clicking (a stale element).
async fn click(b: &fantoccini::Client, id: &str) -> Result<()> {
    poll("a button to click", Duration::from_secs(5), || async {
        let Ok(button) = b.find(Locator::Id(id)).await else {
            return Ok(None);
        };
        Ok(button.click().await.ok().map(|_| ()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_both_roles_and_rolls_back_on_click() -> Result<()> {
    let c = ControllerProc::start(30_000).await?;
    let (v1, v2) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
    );
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?;
    plugin["controller"]["token"] = json!(SYNC_TOKEN);
    let envoy = Envoy::start(
        EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)?
            .upstream("coalmine_controller", c.addr)?
            .plugin_config(&plugin)?,
    )
    .await?;
    c.heart_prod(json!({"check_interval_seconds": 1, "min_requests": 10}))
        .await?;
    c.start_canary(Some(30.0)).await?;
    let _load = Load::start(envoy.url("/predict/heart"), 80);

    let artifacts = workspace_root().join("target/e2e-artifacts");
    let browser = Browser::start().await?;
    let b = &browser.client;
    b.goto(&c.url("/")).await?;
    b.execute(
        "localStorage.setItem('coalmine.token', arguments[0])",
        vec![json!(OPERATOR_TOKEN)],
    )
    .await?;
    b.wait()
        .for_element(Locator::Css("#deployments tr[data-name='heart-prod']"))
        .await?;
    browser
        .screenshot(&artifacts.join("dashboard-overview.png"))
        .await?;
    b.goto(&c.url("/#/deployments/heart-prod")).await?;
    b.refresh().await?;
    // Both roles' live numbers appear.
    let numbers = poll(
        "both roles' numbers on the page",
        Duration::from_secs(20),
        || async {
            // The page redraws every second: an element found may be
            // gone by the time it is read (stale); that is "not yet".
            let text =
                |id: &'static str| async move { b.find(Locator::Id(id)).await?.text().await };
            let (Ok(base), Ok(canary)) = (
                text("baseline-requests").await,
                text("canary-requests").await,
            ) else {
                return Ok(None);
            };
            let n = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
            Ok((n(&base) > 0 && n(&canary) > 0).then_some((base, canary)))
        },
    )
    .await?;
    println!(
        "dashboard: baseline {} requests, canary {} requests",
        numbers.0, numbers.1
    );
    poll(
        "the charts to draw lines",
        Duration::from_secs(20),
        || async {
            let Ok(line) = b.find(Locator::Css("svg polyline")).await else {
                return Ok(None);
            };
            let Ok(Some(points)) = line.attr("points").await else {
                return Ok(None);
            };
            Ok((points.split_whitespace().count() >= 5).then_some(()))
        },
    )
    .await?;
    // Each role's output mix per field, as bars (the upstreams answer like
    // a model, and the shipped configuration reads the answers).
    poll("the output mix charts", Duration::from_secs(20), || async {
        let Ok(chart) = b.find(Locator::Css("#outputs-probability")).await else {
            return Ok(None);
        };
        let Ok(bars) = chart.find_all(Locator::Css("rect")).await.map(|r| r.len()) else {
            return Ok(None);
        };
        let prediction = b.find(Locator::Css("#outputs-prediction")).await.is_ok();
        Ok((bars >= 2 && prediction).then_some(()))
    })
    .await?;
    // What clients report back, per metric and role, with its count.
    let labels = |version: &str, ones: usize, n: usize| {
        (0..n)
            .map(|i| FeedbackObservation {
                version: version.into(),
                value: FeedbackValue(i < ones),
            })
            .collect::<Vec<_>>()
    };
    let mut observations = labels("v1", 34, 40);
    observations.extend(labels("v2", 12, 20));
    let batch = FeedbackBatch {
        metric: "accuracy".into(),
        observations,
    };
    c.client().feedback("heart-prod", &batch).await?;
    let shown = poll("the feedback table", Duration::from_secs(20), || async {
        let text = |id: &'static str| async move { b.find(Locator::Id(id)).await?.text().await };
        let (Ok(base), Ok(canary)) = (
            text("feedback-accuracy-baseline").await,
            text("feedback-accuracy-canary").await,
        ) else {
            return Ok(None);
        };
        Ok(
            (base.contains("0.850 of 40") && canary.contains("0.600 of 20"))
                .then_some((base, canary)),
        )
    })
    .await?;
    println!(
        "dashboard feedback: baseline {}, canary {}",
        shown.0, shown.1
    );
    let before = artifacts.join("dashboard-canary.png");
    browser.screenshot(&before).await?;

    click(b, "rollback").await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.contains("Roll back canary v2"),
        "confirmation asked {question:?}"
    );
    b.accept_alert().await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#events tr[data-kind='rolled_back']"))
        .await?;
    let after = artifacts.join("dashboard-rolled-back.png");
    browser.screenshot(&after).await?;
    println!("screenshots: {} and {}", before.display(), after.display());
    let events = c.client().events("heart-prod", None, None).await?;
    let rolled = events
        .iter()
        .find(|e| e.event.kind.as_str() == "rolled_back")
        .map(|e| e.event.clone())
        .context("no rolled_back event")?;
    ensure!(
        rolled.actor == "operator" && rolled.reason.contains("dashboard"),
        "{rolled:?}"
    );

    // Without the token, the page's actions are refused.
    b.execute(
        "localStorage.removeItem('coalmine.token'); document.getElementById('token').value = ''",
        vec![],
    )
    .await?;
    click(b, "rollback").await?;
    b.accept_alert().await?;
    let message = b.find(Locator::Id("message")).await?.text().await?;
    ensure!(message.contains("operator token"), "{message}");

    // The controller's metrics, and every series the shipped Grafana
    // dashboard queries exists on the controller or on Envoy.
    let metrics = c.metrics_text().await?;
    for want in [
        "coalmine_controller_canary_share_percent{deployment=\"heart-prod\"} 0.0",
        "coalmine_controller_rollbacks_total{deployment=\"heart-prod\",actor=\"operator\"} 1",
        "coalmine_controller_verdict{deployment=\"heart-prod\",verdict=\"INSUFFICIENT_DATA\"} 1",
        "coalmine_controller_sync_reports_total{result=\"accepted\"}",
        "coalmine_controller_evaluation_duration_seconds_count",
        "coalmine_controller_feedback_observations{deployment=\"heart-prod\",metric=\"accuracy\",role=\"baseline\"} 40",
        "coalmine_controller_feedback_rate{deployment=\"heart-prod\",metric=\"accuracy\",role=\"baseline\"} 0.85",
        "coalmine_controller_feedback_newest_age_seconds{deployment=\"heart-prod\",metric=\"accuracy\",role=\"baseline\"}",
        "coalmine_controller_feedback_received_total{deployment=\"heart-prod\",metric=\"accuracy\"} 60",
    ] {
        ensure!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    let envoy_stats = envoy.prometheus().await?;
    let grafana: Value = serde_json::from_str(&std::fs::read_to_string(
        workspace_root().join("deploy/grafana/coalmine.json"),
    )?)?;
    let mut exprs = Vec::new();
    collect_exprs(&grafana, &mut exprs);
    ensure!(exprs.len() >= 6, "{} queries", exprs.len());
    for expr in exprs {
        for name in metric_names(&expr) {
            let base = name.trim_end_matches("_bucket");
            ensure!(
                metrics.contains(base) || envoy_stats.contains(base),
                "the Grafana query {expr:?} uses {name}, which neither the controller nor Envoy exposes"
            );
        }
    }
    Ok(())
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `coalmine_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("coalmine_"))
        .map(str::to_string)
        .collect()
}
