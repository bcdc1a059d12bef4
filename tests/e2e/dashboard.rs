//! The dashboard in a real headless Chromium: both roles' live numbers, the
//! charts, the output mix and feedback, a shadow started and stopped from its
//! panel (its version, share, agreement and requests shown meanwhile), a
//! rollback on click (confirmed, with the operator token; refused without
//! it), the rolled-back version unbarred with a reason, and every series the shipped Grafana dashboard queries. The page
//! under its Content-Security-Policy is `dashboard_policy.rs`.

use anyhow::{Context, Result, ensure};
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, FeedbackValue, RegisterVersion};
use coalmine_e2e::{
    Browser, ControllerProc, Envoy, EnvoyConfig, Load, OPERATOR_TOKEN, SYNC_TOKEN, Upstream, click,
    element_text as text, poll, workspace_root,
};
use fantoccini::Locator;
use serde_json::{Value, json};
use std::time::Duration;

/// heart-prod's health, as the controller's JSON.
async fn health(c: &ControllerProc) -> Result<Value> {
    Ok(serde_json::to_value(
        c.client().health("heart-prod").await?,
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_both_roles_and_rolls_back_on_click() -> Result<()> {
    let c = ControllerProc::start(30_000).await?;
    let (v1, v2, v3) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
        Upstream::start("heart-v3").await?,
    );
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?;
    plugin["controller"]["token"] = json!(SYNC_TOKEN);
    let envoy = Envoy::start(
        EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)?
            .upstream("heart-v3", v3.addr)?
            .controller(&c)?
            .plugin_config(&plugin)?,
    )
    .await?;
    c.heart_prod(json!({"check_interval_seconds": 1, "min_requests": 10}))
        .await?;
    c.start_canary(Some(30.0)).await?;
    // v3, which the shadow panel offers (neither baseline nor canary).
    let register = RegisterVersion {
        version: "v3".into(),
        cluster: "heart-v3".into(),
        metadata: None,
    };
    c.client().register_version("heart-prod", &register).await?;
    let _load = Load::start(envoy.url("/predict/heart"), 80);

    let artifacts = workspace_root().join("target/e2e-artifacts");
    let browser = Browser::start().await?;
    let b = &browser.client;
    b.goto(&c.url("/")).await?;
    b.execute(
        "sessionStorage.setItem('coalmine.token', arguments[0])",
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
    // The planned ramp, the share set at the start (off the default
    // 20 → 50 → 100 % plan) marked where it falls.
    let ramp = poll("the planned ramp", Duration::from_secs(10), || async {
        Ok(text(b, "ramp").await.filter(|t| t.contains(" → ")))
    })
    .await?;
    ensure!(
        ramp.contains("ramp 20 → 30 (by hand) → 50 → 100 % · 60 s each"),
        "{ramp}"
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

    // A shadow of v3 on half of the baseline's requests, started from the
    // panel's controls after a confirmation. The page redraws every second
    // (not while an input has the focus): a redraw between typing and
    // clicking would start another share, so the question is read first.
    let question = poll(
        "the shadow's start to ask for confirmation",
        Duration::from_secs(20),
        || async {
            let Ok(percent) = b.find(Locator::Id("shadow-percent")).await else {
                return Ok(None);
            };
            if percent.clear().await.is_err() || percent.send_keys("50").await.is_err() {
                return Ok(None);
            }
            let Ok(start) = b.find(Locator::Id("shadow-start")).await else {
                return Ok(None);
            };
            if start.click().await.is_err() {
                return Ok(None);
            }
            // A disabled button (v3 not offered yet) asks nothing.
            let Ok(question) = b.get_alert_text().await else {
                return Ok(None);
            };
            if question.contains(
                "Start a shadow on heart-prod: copy 50 % of its baseline v1's requests to v3",
            ) {
                b.accept_alert().await?;
                Ok(Some(question))
            } else {
                b.dismiss_alert().await?;
                Ok(None)
            }
        },
    )
    .await?;
    println!("dashboard asked: {question}");
    // The panel: the shadow's version and share, every field agreeing
    // (each upstream answers alike), its requests and its verdict.
    let requests = poll(
        "the shadow panel's numbers",
        Duration::from_secs(60),
        || async {
            let (
                Some(section),
                Some(share),
                Some(requests),
                Some(prediction),
                Some(probability),
                Some(verdict),
            ) = (
                text(b, "shadow").await,
                text(b, "shadow-percent-now").await,
                text(b, "shadow-requests").await,
                text(b, "shadow-agreement-prediction").await,
                text(b, "shadow-agreement-probability").await,
                text(b, "shadow-verdict").await,
            )
            else {
                return Ok(None);
            };
            let requests = requests.trim().parse::<u64>().unwrap_or(0);
            let shown = section.contains("shadow v3 (heart-v3)")
                && share.trim() == "50 %"
                && requests > 0
                && prediction.trim() == "100.00 %"
                && probability.trim() == "100.00 %"
                && verdict.trim() == "AGREES";
            Ok(shown.then_some(requests))
        },
    )
    .await?;
    println!(
        "dashboard shadow: v3 at 50 %, {} requests, agreement 100 %",
        requests
    );
    let h = health(&c).await?;
    let s = &h["shadow"];
    ensure!(
        s["version"] == "v3" && s["percent"] == 50.0 && s["errors"] == 0,
        "health's shadow: {s}"
    );
    ensure!(
        s["requests"].as_u64().unwrap_or(0) >= requests,
        "health counts fewer shadow requests than the page showed: {s}"
    );
    let fields = s["fields"].as_array().context("the shadow's fields")?;
    for name in ["prediction", "probability"] {
        let f = fields
            .iter()
            .find(|f| f["field"] == name)
            .with_context(|| format!("no {name} in {s}"))?;
        ensure!(
            f["agreement"] == 1.0
                && f["compared"].as_u64().unwrap_or(0) > 0
                && f["agreed"] == f["compared"],
            "{name}: {f}"
        );
    }
    b.execute("document.getElementById('shadow').scrollIntoView()", vec![])
        .await?;
    let shadowed = artifacts.join("dashboard-shadow.png");
    browser.screenshot(&shadowed).await?;
    println!("screenshot: {}", shadowed.display());
    b.execute("window.scrollTo(0, 0)", vec![]).await?;

    // Stopping it from the panel asks first, then the shadow is gone.
    click(b, "shadow-stop").await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.contains("Stop the shadow of heart-prod: v3 at 50 % → no shadow?"),
        "confirmation asked {question:?}"
    );
    b.accept_alert().await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#events tr[data-kind='shadow_stopped']"))
        .await?;
    poll(
        "the panel without a shadow",
        Duration::from_secs(10),
        || async {
            let Some(section) = text(b, "shadow").await else {
                return Ok(None);
            };
            Ok(section.contains("No shadow").then_some(()))
        },
    )
    .await?;
    let h = health(&c).await?;
    ensure!(
        h["shadow"].is_null(),
        "a shadow after the stop: {}",
        h["shadow"]
    );
    let events = c.client().events("heart-prod", None, None).await?;
    let of = |kind: &str| {
        events
            .iter()
            .find(|e| e.event.kind.as_str() == kind)
            .map(|e| e.event.clone())
            .with_context(|| format!("no {kind} event"))
    };
    let (started, stopped) = (of("shadow_started")?, of("shadow_stopped")?);
    ensure!(
        started.actor == "operator"
            && started.numbers.get("percent").and_then(Value::as_f64) == Some(50.0),
        "{started:?}"
    );
    ensure!(
        stopped.actor == "operator"
            && stopped.numbers.get("version") == Some(&json!("v3"))
            && stopped.numbers.get("cause") == Some(&json!("operator")),
        "{stopped:?}"
    );

    click(b, "rollback").await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.starts_with("Roll back heart-prod: canary v2 at ")
            && question.ends_with(" % → 0 %, marked unhealthy?"),
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

    // v2, rolled back, is barred: its row offers to lift the bar, asking
    // why first, then what changes.
    click(b, "unbar-v2").await?;
    let why = b.get_alert_text().await?;
    ensure!(
        why.starts_with("Why may v2 be tried again on heart-prod?"),
        "asked {why:?}"
    );
    b.send_alert_text("retrained on the fixed labels").await?;
    b.accept_alert().await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.starts_with("Lift the bar on v2 of heart-prod: registered and healthy again"),
        "confirmation asked {question:?}"
    );
    b.accept_alert().await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#events tr[data-kind='version_unbarred']"))
        .await?;
    let events = c.client().events("heart-prod", None, None).await?;
    let unbarred = events
        .iter()
        .find(|e| e.event.kind.as_str() == "version_unbarred")
        .map(|e| e.event.clone())
        .context("no version_unbarred event")?;
    ensure!(
        unbarred.actor == "operator" && unbarred.reason.contains("retrained on the fixed labels"),
        "{unbarred:?}"
    );
    let versions = c.client().versions("heart-prod").await?;
    let v2 = versions
        .iter()
        .find(|v| v.version == "v2")
        .context("no v2")?;
    ensure!(
        v2.healthy && v2.state.as_str() == "registered",
        "v2 after the unbar: {v2:?}"
    );
    println!("dashboard: v2 unbarred with a reason");

    // Without the token, the page says so and asks nothing.
    b.execute(
        "sessionStorage.removeItem('coalmine.token'); document.getElementById('token').value = ''",
        vec![],
    )
    .await?;
    click(b, "rollback").await?;
    ensure!(
        b.get_alert_text().await.is_err(),
        "a question without a token"
    );
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
