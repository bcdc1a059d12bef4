//! Operator experience: the `coalmine` CLI, the dashboard in a real headless
//! Chromium, webhooks, and the controller's Prometheus metrics.

use anyhow::{Context, Result, ensure};
use coalmine_client::Action;
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, FeedbackValue};
use coalmine_e2e::{
    Browser, ControllerProc, Envoy, EnvoyConfig, Load, OPERATOR_TOKEN, Receiver, SYNC_TOKEN,
    Upstream, package_bin, poll, workspace_root,
};
use fantoccini::Locator;
use serde_json::{Value, json};
use std::process::Output;
use std::time::{Duration, Instant};

/// Runs `coalmine` against the controller with `args`.
fn cli(c: &ControllerProc, token: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut cmd = std::process::Command::new(package_bin("coalmine")?);
    cmd.arg("--url")
        .arg(c.url(""))
        .args(args)
        .env_remove("COALMINE_TOKEN")
        .env_remove("COALMINE_URL");
    // Run where no .coalmine/operator-token can be picked up by accident.
    cmd.current_dir(std::env::temp_dir());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    Ok(cmd.output()?)
}

fn ok(out: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Fails with `code`, saying one sentence on stderr that contains `says`.
fn fails(out: &Output, code: i32, says: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code),
        "exit {:?}, wanted {code}: {stderr}",
        out.status.code()
    );
    ensure!(
        stderr.starts_with("coalmine: ") && stderr.contains(says),
        "stderr {stderr:?} should say {says:?}"
    );
    ensure!(
        stderr.trim_end().lines().count() == 1,
        "not one sentence: {stderr:?}"
    );
    ensure!(out.stdout.is_empty(), "nothing on stdout on failure");
    Ok(())
}

fn json_of(out: &Output) -> Result<Value> {
    serde_json::from_str(&ok(out)?).context("-o json output does not parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_canary_and_reports_errors_clearly() -> Result<()> {
    let c = ControllerProc::start(30_000).await?;
    let t = Some(OPERATOR_TOKEN);
    let create = [
        "deployments",
        "create",
        "heart-prod",
        "--baseline-version",
        "v1",
        "--baseline-cluster",
        "heart-v1",
    ];
    let out = ok(&cli(
        &c,
        t,
        &[
            &create[..],
            &["--policy", r#"{"check_interval_seconds": 1}"#],
        ]
        .concat(),
    )?)?;
    ensure!(
        out.contains("deployment heart-prod") && out.contains("INSUFFICIENT_DATA"),
        "{out}"
    );
    ok(&cli(
        &c,
        t,
        &[
            "versions",
            "register",
            "heart-prod",
            "v2",
            "--cluster",
            "heart-v2",
            "--metadata",
            r#"{"test_accuracy": 0.53}"#,
        ],
    )?)?;
    let versions = ok(&cli(&c, t, &["versions", "list", "heart-prod"])?)?;
    ensure!(
        versions.contains("★ last known good") && versions.contains("0.53"),
        "{versions}"
    );
    let out = ok(&cli(
        &c,
        t,
        &[
            "canary",
            "start",
            "heart-prod",
            "v2",
            "--percent",
            "10",
            "--steps",
            "10,50,100",
        ],
    )?)?;
    ensure!(out.contains("v2 @ 10 %"), "{out}");
    ensure!(ok(&cli(&c, t, &["traffic", "set", "heart-prod", "30"])?)?.contains("v2 @ 30 %"));
    ensure!(
        ok(&cli(
            &c,
            t,
            &["pause", "heart-prod", "--reason", "checking"]
        )?)?
        .contains("(paused)")
    );
    ok(&cli(&c, t, &["resume", "heart-prod"])?)?;
    let status = ok(&cli(&c, None, &["status", "heart-prod"])?)?;
    for want in [
        "baseline",
        "canary",
        "requests",
        "error rate",
        "p95",
        "verdict",
        "recommendation",
    ] {
        ensure!(status.contains(want), "status lacks {want:?}:\n{status}");
    }
    println!("coalmine status heart-prod:\n{status}");
    ensure!(ok(&cli(&c, None, &["deployments", "list"])?)?.contains("heart-prod"));
    ensure!(ok(&cli(&c, None, &["deployments", "show", "heart-prod"])?)?.contains("v2 @ 30 %"));

    // -o json parses, for reads and for changes.
    for args in [
        &["deployments", "list"][..],
        &["deployments", "show", "heart-prod"],
        &["versions", "list", "heart-prod"],
        &["status", "heart-prod"],
        &["events", "heart-prod"],
    ] {
        json_of(&cli(&c, None, &[&["-o", "json"], args].concat())?)?;
    }
    let d = json_of(&cli(
        &c,
        t,
        &[
            "-o",
            "json",
            "promote",
            "heart-prod",
            "--reason",
            "looks good",
        ],
    )?)?;
    ensure!(
        d["baseline"]["version"] == "v2" && d["pinned"]["version"] == "v1",
        "{d}"
    );
    ensure!(ok(&cli(&c, t, &["rollback", "heart-prod"])?)?.contains("baseline   v1"));
    let events = json_of(&cli(&c, None, &["-o", "json", "events", "heart-prod"])?)?;
    let kinds: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    ensure!(
        kinds.ends_with(&[
            "canary_started",
            "traffic_changed",
            "paused",
            "resumed",
            "promoted",
            "reverted_to_pinned"
        ]),
        "{kinds:?}"
    );
    let since = events[events.as_array().map_or(1, Vec::len) - 2]["id"]
        .as_i64()
        .unwrap_or(0)
        .to_string();
    let table = ok(&cli(
        &c,
        None,
        &["events", "heart-prod", "--since", &since],
    )?)?;
    ensure!(
        table.contains("reverted_to_pinned") && !table.contains("promoted "),
        "{table}"
    );
    ensure!(ok(&cli(&c, None, &["completions", "bash"])?)?.contains("coalmine"));
    watch_redraws_until_interrupted(&c).await?;

    // Each error class: one sentence, its own exit code.
    fails(
        &cli(&c, t, &["status", "ghost"])?,
        5,
        "\"ghost\" does not exist",
    )?;
    fails(
        &cli(&c, Some("wrong"), &["pause", "heart-prod"])?,
        4,
        "refused the token",
    )?;
    fails(
        &cli(&c, None, &["pause", "heart-prod"])?,
        4,
        "no operator token",
    )?;
    fails(
        &cli(&c, t, &["pause", "heart-prod"])?,
        6,
        "no canary in progress",
    )?;
    fails(
        &cli(&c, t, &["traffic", "set", "heart-prod", "150"])?,
        2,
        "greater than the maximum of 100",
    )?;
    fails(
        &cli(&c, t, &[&create[..], &["--policy", "{nope"]].concat())?,
        2,
        "--policy is not valid JSON",
    )?;
    let dead = std::process::Command::new(package_bin("coalmine")?)
        .args(["--url", "http://127.0.0.1:9", "deployments", "list"])
        .output()?;
    fails(
        &dead,
        3,
        "cannot reach the controller at http://127.0.0.1:9",
    )?;
    Ok(())
}

/// `coalmine watch` clears the screen and redraws until Ctrl-C (SIGINT).
async fn watch_redraws_until_interrupted(c: &ControllerProc) -> Result<()> {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let mut child = std::process::Command::new(package_bin("coalmine")?)
        .args([
            "--url",
            &c.url(""),
            "watch",
            "heart-prod",
            "--interval",
            "0.2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let redraws = || {
        seen.lock()
            .map(|s| s.matches("\x1b[2J").count())
            .unwrap_or(0)
    };
    poll("watch to redraw twice", Duration::from_secs(10), || {
        let n = redraws();
        async move { Ok((n >= 2).then_some(())) }
    })
    .await?;
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let status = poll("watch to stop on Ctrl-C", Duration::from_secs(10), || {
        let r = child.try_wait().map_err(anyhow::Error::from);
        async move { r }
    })
    .await?;
    let _ = reader.join();
    ensure!(status.success(), "watch exited with {status}");
    let out = seen.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(
        out.contains("verdict") && out.contains("baseline   v1"),
        "{out}"
    );
    Ok(())
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_retried_and_never_block() -> Result<()> {
    let flaky = Receiver::start(1, false).await?; // the first delivery fails
    let dead = Receiver::start(0, true).await?; // never answers
    let c = ControllerProc::start_with(
        30_000,
        &[
            "--webhook",
            &flaky.url(),
            "--webhook",
            &dead.url(),
            "--public-url",
            "http://coalmine.example:8700",
        ],
    )
    .await?;
    c.heart_prod(json!({})).await?;
    c.start_canary(None).await?;
    // With one receiver hanging, changes still answer at once.
    let t = Instant::now();
    c.client()
        .act("heart-prod", Action::Rollback, Some("bad outputs".into()))
        .await?;
    c.client().deployment("heart-prod").await?;
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "the API waited on a webhook: {:?}",
        t.elapsed()
    );

    let delivered = poll("the retried delivery", Duration::from_secs(15), || {
        let attempts = flaky.attempts();
        async move { Ok((attempts.len() >= 2).then_some(attempts)) }
    })
    .await?;
    ensure!(
        delivered[0] == delivered[1],
        "a retry sends the same payload"
    );
    let p = &delivered[1];
    ensure!(
        p["deployment"] == "heart-prod" && p["event"] == "rolled_back",
        "{p}"
    );
    ensure!(
        p["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("bad outputs"),
        "{p}"
    );
    ensure!(
        p["numbers"]["version"] == "v2" && p["numbers"]["from_percent"] == 20.0,
        "{p}"
    );
    ensure!(
        p["link"] == "http://coalmine.example:8700/#/deployments/heart-prod",
        "{p}"
    );
    ensure!(p["actor"] == "operator", "{p}");
    // canary_started and the registrations are not notified.
    ensure!(flaky.attempts().iter().all(|a| a["event"] == "rolled_back"));
    ensure!(
        dead.attempts().len() == 1,
        "the hanging receiver got its delivery attempt"
    );
    let metrics = c.metrics_text().await?;
    ensure!(
        metrics.contains("coalmine_controller_webhook_deliveries_total{result=\"retried\"} 1"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("coalmine_controller_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    Ok(())
}
