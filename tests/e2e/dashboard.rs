//! The dashboard in a real headless Chromium: both roles' live numbers, the
//! charts, the output mix and feedback, a shadow started and stopped from its
//! panel (its version, share, agreement and requests shown meanwhile), a
//! rollback on click (confirmed, with the operator token; refused without
//! it), and every series the shipped Grafana dashboard queries. And the page
//! under its Content-Security-Policy: never framed, no violation while it
//! runs, the token kept for the tab only, a pause that asks first.

use anyhow::{Context, Result, ensure};
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, FeedbackValue, RegisterVersion};
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

/// The text of the element with `id`; none while it is missing or the
/// page redraws it (a stale element).
async fn text(b: &fantoccini::Client, id: &str) -> Option<String> {
    b.find(Locator::Id(id)).await.ok()?.text().await.ok()
}

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
            .upstream("coalmine_controller", c.addr)?
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

/// Every violation of the page's policy, from now on and (buffered) since
/// the page loaded, gathered in `window.violations`.
const WATCH_VIOLATIONS: &str = r#"
window.violations = [];
const note = (directive, blocked, sample) => window.violations.push({ directive, blocked, sample });
document.addEventListener("securitypolicyviolation",
  (e) => note(e.effectiveDirective, e.blockedURI, e.sample));
new ReportingObserver((reports) => reports.forEach((r) =>
  note(r.body.effectiveDirective, r.body.blockedURL, r.body.sample)),
  { types: ["csp-violation"], buffered: true }).observe();
"#;

/// The policy's violations seen so far, each once (an event and a report
/// may name the same).
async fn violations(b: &fantoccini::Client) -> Result<Vec<Value>> {
    let seen = b.execute("return window.violations", vec![]).await?;
    let mut seen = seen.as_array().cloned().unwrap_or_default();
    seen.dedup();
    Ok(seen)
}

/// What the page keeps under the token's key: (sessionStorage, localStorage).
async fn stored_token(b: &fantoccini::Client) -> Result<(Value, Value)> {
    let v = b
        .execute(
            "return [sessionStorage.getItem('coalmine.token'), localStorage.getItem('coalmine.token')]",
            vec![],
        )
        .await?;
    Ok((v[0].clone(), v[1].clone()))
}

/// Whether heart-prod's canary is paused, as the controller has it.
async fn paused(c: &ControllerProc) -> Result<bool> {
    let d = c.client().deployment("heart-prod").await?;
    Ok(d.canary.context("no canary")?.paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_keeps_to_its_policy_and_asks_before_a_pause() -> Result<()> {
    let c = ControllerProc::start(30_000).await?;
    c.heart_prod(json!({"check_interval_seconds": 1})).await?;
    c.start_canary(Some(20.0)).await?;

    // The page, its script and its styles: each with its type, a policy
    // that allows only the controller's own and no frame around it.
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let r = http.get(c.url(path)).send().await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let csp = header("content-security-policy");
        println!("{path}: Content-Security-Policy: {csp}");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            ensure!(csp.contains(directive), "{path}: {csp:?} lacks {directive}");
        }
        ensure!(!csp.contains("unsafe-"), "{path}: {csp:?}");
        ensure!(header("x-frame-options") == "DENY", "{path}");
        ensure!(header("x-content-type-options") == "nosniff", "{path}");
        ensure!(header("referrer-policy") == "no-referrer", "{path}");
        ensure!(
            header("content-type").starts_with(content_type),
            "{path}: {}",
            header("content-type")
        );
    }
    // Nor is any other answer to be framed or sniffed.
    let r = http.get(c.url("/healthz")).send().await?;
    ensure!(
        r.headers()
            .get("x-frame-options")
            .is_some_and(|v| v == "DENY")
    );
    ensure!(
        r.headers()
            .get("x-content-type-options")
            .is_some_and(|v| v == "nosniff")
    );

    let browser = Browser::start().await?;
    let b = &browser.client;
    // A token an older page left in localStorage is removed on load.
    b.goto(&c.url("/")).await?;
    b.execute(
        "localStorage.setItem('coalmine.token', arguments[0])",
        vec![json!(OPERATOR_TOKEN)],
    )
    .await?;
    b.refresh().await?;
    b.execute(WATCH_VIOLATIONS, vec![]).await?;
    // The scripts ran: the deployments are drawn.
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#deployments tr[data-name='heart-prod']"))
        .await?;
    ensure!(
        stored_token(b).await? == (Value::Null, Value::Null),
        "after loading: {:?}",
        stored_token(b).await?
    );
    let field = b.find(Locator::Id("token")).await?;
    ensure!(field.prop("value").await?.as_deref() == Some(""));
    // Typed in, the token is kept for this tab only, and in no URL.
    field.send_keys(OPERATOR_TOKEN).await?;
    ensure!(
        stored_token(b).await? == (json!(OPERATOR_TOKEN), Value::Null),
        "after typing: {:?}",
        stored_token(b).await?
    );
    // Into the deployment's page (the same document: the listener stays).
    b.execute("location.hash = '#/deployments/heart-prod'", vec![])
        .await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#pause:not([disabled])"))
        .await?;
    ensure!(!b.current_url().await?.as_str().contains(OPERATOR_TOKEN));

    // Pause asks, naming the deployment and the change; cancelled, the
    // canary goes on.
    click(b, "pause").await?;
    let question = b.get_alert_text().await?;
    println!("pause asked: {question}");
    ensure!(
        question.contains("Pause heart-prod: canary v2 at 20 % stays there"),
        "{question:?}"
    );
    b.dismiss_alert().await?;
    let message = poll("the cancellation said", Duration::from_secs(5), || async {
        Ok(text(b, "message").await.filter(|m| m.contains("Cancelled")))
    })
    .await?;
    println!("after cancelling: {message}");
    ensure!(!paused(&c).await?, "paused though cancelled");
    let events = c.client().events("heart-prod", None, None).await?;
    ensure!(
        events.iter().all(|e| e.event.kind.as_str() != "paused"),
        "a paused event though cancelled"
    );
    // Accepted, it pauses, by the operator.
    click(b, "pause").await?;
    let question = b.get_alert_text().await?;
    ensure!(question.contains("Pause heart-prod"), "{question:?}");
    b.accept_alert().await?;
    poll("the canary paused", Duration::from_secs(10), || async {
        Ok(paused(&c).await?.then_some(()))
    })
    .await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#resume:not([disabled])"))
        .await?;
    // Resume asks too; cancelled, the canary stays paused.
    click(b, "resume").await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.contains("Resume heart-prod: canary v2 at 20 %"),
        "{question:?}"
    );
    b.dismiss_alert().await?;
    ensure!(paused(&c).await?, "resumed though cancelled");
    // A few redraws later, still no violation of the policy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = violations(b).await?;
    ensure!(seen.is_empty(), "the policy was violated: {seen:?}");
    let shot = workspace_root().join("target/e2e-artifacts/dashboard-paused.png");
    browser.screenshot(&shot).await?;

    // The watch itself works: an inline script is refused, and seen.
    b.execute(
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.body.appendChild(s)",
        vec![],
    )
    .await?;
    let seen = poll(
        "the inline script's violation",
        Duration::from_secs(5),
        || async {
            let seen = violations(b).await?;
            Ok((!seen.is_empty()).then_some(seen))
        },
    )
    .await?;
    println!("an inline script, refused: {seen:?}");
    ensure!(
        seen.iter().all(|v| v["directive"]
            .as_str()
            .is_some_and(|d| d.starts_with("script-src"))),
        "{seen:?}"
    );
    let ran = b
        .execute("return window.inlineRan === true", vec![])
        .await?;
    ensure!(ran == json!(false), "the inline script ran");

    // The token survives a reload of the tab, but a new tab starts without it.
    b.refresh().await?;
    b.wait().for_element(Locator::Id("pause")).await?;
    let kept = b.find(Locator::Id("token")).await?.prop("value").await?;
    ensure!(kept.as_deref() == Some(OPERATOR_TOKEN), "{kept:?}");
    let tab = b.new_window(true).await?;
    b.switch_to_window(tab.handle).await?;
    b.goto(&c.url("/")).await?;
    b.wait()
        .for_element(Locator::Css("#deployments tr[data-name='heart-prod']"))
        .await?;
    let fresh = b.find(Locator::Id("token")).await?.prop("value").await?;
    ensure!(fresh.as_deref() == Some(""), "a new tab has {fresh:?}");
    ensure!(stored_token(b).await? == (Value::Null, Value::Null));
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
