//! Ground truth after the fact: real model servers behind Envoy (outputs
//! not read, so only labels can tell a wrong model), real patients, and one
//! answer in ten labelled from the patient's record and posted 2 s later
//! with the feedback-only token. The underfit model (accuracy ≈ 0.60 against
//! 0.85) is rolled back on accuracy and never promoted; the retrained one is
//! promoted. Every bad feedback call is refused with its status, and nothing
//! of it counted; the CLI posts JSON lines.

use anyhow::{Context as _, Result, ensure};
use coalmine_client::types::StartCanary;
use coalmine_client::{Action, Auth, paths};
use coalmine_demo::{Labels, Plan, Traffic};
use coalmine_e2e::models::Training;
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, FEEDBACK_TOKEN, ModelServer, SYNC_TOKEN,
    failed_without_advancing, kinds, package_bin, poll, prometheus_value, without_outputs,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LEASE_MS: u64 = 30_000;

/// Observations of accuracy counted so far, by the controller's metrics.
async fn received(c: &ControllerProc) -> Result<f64> {
    let text = c.metrics_text().await?;
    Ok(prometheus_value(
        &text,
        "coalmine_controller_feedback_received_total",
        &[("deployment", "heart-prod"), ("metric", "accuracy")],
    ))
}

/// A feedback call with `token` and `body`, as sent: (status, answer).
async fn post(c: &ControllerProc, token: &str, body: &Value) -> Result<(u16, Value)> {
    let client = c.bare_client()?.feedback_token(Some(token.into()));
    Ok(client
        .send_json(
            Method::POST,
            &paths::of("heart-prod", "feedback"),
            Some(body),
            Auth::Feedback,
        )
        .await?)
}

/// A feedback call whose body stops halfway through its declared length.
async fn truncated(c: &ControllerProc) -> Result<(u16, String)> {
    let body =
        json!({"metric": "accuracy", "observations": [{"version": "v1", "value": 1}]}).to_string();
    let mut stream = c.connect().await?;
    let head = format!(
        "POST /v1/deployments/heart-prod/feedback HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {FEEDBACK_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        c.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body.as_bytes()[..body.len() / 2]).await?;
    stream.shutdown().await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await??;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, answer))
}

/// Every bad call refused with its status; nothing of any of them counted.
async fn refusals(c: &ControllerProc) -> Result<()> {
    let one = |version: &str, value: Value| json!({"version": version, "value": value});
    let batch = |obs: Vec<Value>| json!({"metric": "accuracy", "observations": obs});
    let many: Vec<Value> = (0..10_001).map(|_| one("v1", json!(1))).collect();
    let cases = [
        (
            "wrong token",
            "not-the-token",
            batch(vec![one("v1", json!(1))]),
            401,
        ),
        (
            "unknown version",
            FEEDBACK_TOKEN,
            batch(vec![one("v1", json!(1)), one("v9", json!(0))]),
            400,
        ),
        (
            "a value of 2",
            FEEDBACK_TOKEN,
            batch(vec![one("v1", json!(1)), one("v2", json!(2))]),
            400,
        ),
        ("10 001 observations", FEEDBACK_TOKEN, batch(many), 400),
    ];
    for (what, token, body, status) in cases {
        let (got, answer) = post(c, token, &body).await?;
        println!("{what}: {got} {}", answer["message"]);
        ensure!(got == status, "{what}: {got} {answer}, not {status}");
    }
    let (status, answer) = truncated(c).await?;
    println!(
        "a truncated body: {}",
        answer.lines().last().unwrap_or_default()
    );
    ensure!(status == 400, "a truncated body: {answer}");
    // The feedback token opens no other call.
    let other = c.bare_client()?.operator_token(Some(FEEDBACK_TOKEN.into()));
    for action in [Action::Rollback, Action::Pause] {
        let e = other
            .act("heart-prod", action, None)
            .await
            .err()
            .context("accepted")?;
        ensure!(
            e.status() == Some(401),
            "{action:?} with the feedback token: {e}"
        );
    }
    let start = StartCanary {
        version: "v2".into(),
        ..StartCanary::default()
    };
    let e = other
        .start_canary("heart-prod", &start)
        .await
        .err()
        .context("accepted")?;
    ensure!(
        e.status() == Some(401),
        "a canary with the feedback token: {e}"
    );
    ensure!(received(c).await? == 0.0, "refused feedback was counted");
    let h = c.client().health("heart-prod").await?;
    let counted = h.baseline.feedback.get("accuracy").map(|f| f.observations);
    ensure!(
        counted == Some(0),
        "refused feedback was counted: {:?}",
        h.baseline.feedback
    );
    Ok(())
}

/// `coalmine feedback` reads JSON lines from stdin; a bad line stops it
/// with exit code 2, naming the line, after what came before was posted.
fn cli(c: &ControllerProc, lines: &str) -> Result<std::process::Output> {
    let mut child = Command::new(package_bin("coalmine")?)
        .args(c.cli_args())
        .args(["feedback", "heart-prod", "--metric", "accuracy"])
        .env("COALMINE_FEEDBACK_TOKEN", FEEDBACK_TOKEN)
        .env_remove("COALMINE_TOKEN")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(lines.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_less_accurate_model_is_rolled_back_on_its_labels_and_a_good_one_promoted() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v2 = ModelServer::trained(dir.path(), "v2", Training::UNDERFIT).await?;
    let v3 = ModelServer::trained(dir.path(), "v3", Training::RETRAINED).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let mut config = EnvoyConfig::shipped("envoy.yaml")?;
    let mut plugin = without_outputs(config.shipped_plugin_config()?);
    plugin["controller"]["token"] = json!(SYNC_TOKEN);
    config = config
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .upstream("heart-v3", v3.addr)?
        .controller(&c)?
        .plugin_config(&plugin)?;
    let envoy = Envoy::start(config).await?;
    c.heart_prod(json!({
        "check_interval_seconds": 1, "window_seconds": 60, "min_requests": 20,
        "bake_seconds": 5, "cooldown_seconds": 2, "steps": [20, 50, 100]
    }))
    .await?;

    refusals(&c).await?;
    let out = cli(
        &c,
        "{\"version\": \"v1\", \"value\": 1}\n\n{\"version\": \"v1\", \"value\": true}\n",
    )?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.contains("2 observations of accuracy accepted"),
        "{out:?}"
    );
    let out = cli(
        &c,
        "{\"version\": \"v1\", \"value\": 0}\n{\"version\": \"v1\", \"valu\": 1}\n",
    )?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && said.contains("line 2:"),
        "{out:?}"
    );
    // The good line before the bad one is posted; the run can resume after it.
    ensure!(
        said.contains("1 observations accepted, every line through 1 counted"),
        "{said}"
    );
    ensure!(
        received(&c).await? == 3.0,
        "the CLI's observations were not counted once"
    );

    // Live predictions from real patients; one answer in ten labelled 2 s later.
    let patients = Arc::new(coalmine_models_server::patients::load_patients(
        &coalmine_e2e::workspace_root(),
    )?);
    let plan = Plan {
        url: envoy.url("/predict/heart"),
        rps: 200,
        malformed_every: None,
    };
    let labels = Labels {
        api: c.client().clone(),
        deployment: "heart-prod".into(),
        metric: "accuracy".into(),
        every: 10,
        delay: Duration::from_secs(2),
    };
    let traffic = Traffic::start(plan, patients, Some(labels));

    // Production is labelled before the canary starts: with fewer than
    // `min_samples` (30) labels on the baseline nothing waits for the
    // canary's, and on a slow machine v2 could bake and step before its own
    // labels arrive.
    poll("a labelled baseline", Duration::from_secs(60), || async {
        let h = c.client().health("heart-prod").await?;
        let labelled = h
            .baseline
            .feedback
            .get("accuracy")
            .map_or(0, |f| f.observations);
        Ok((labelled >= 60).then_some(()))
    })
    .await?;

    // 1. The underfit v2: fast, no errors, wrong; only its labels say so.
    c.start_canary(Some(20.0)).await?;
    let (first, took) = c.canary_ended(Duration::from_secs(120)).await?;
    println!(
        "v2 rolled back {:.1} s after its canary started: {:?}",
        took.as_secs_f64(),
        kinds(&first)
    );
    let failed = failed_without_advancing(&first)?;
    println!("reason: {}", failed.event.reason);
    ensure!(
        failed.event.reason.starts_with("accuracy:"),
        "not the accuracy rule: {}",
        failed.event.reason
    );
    let n = &failed.event.numbers;
    ensure!(
        n["canary"]["errors"] == 0,
        "v2 erred, so this proves nothing about labels: {n:?}"
    );
    let rate = |role: &str| n[role]["feedback"]["accuracy"]["rate"].as_f64();
    let (c_acc, b_acc) = (
        rate("canary").unwrap_or(1.0),
        rate("baseline").unwrap_or(0.0),
    );
    ensure!(
        c_acc < 0.75 && b_acc > 0.8,
        "canary {c_acc}, baseline {b_acc}"
    );

    // 2. The retrained v3: promoted, with its labels flowing.
    let metadata = json!({"split_seed": 7});
    let (second, took) = c
        .promote_new("v3", "heart-v3", metadata, Duration::from_secs(120))
        .await?;
    println!(
        "v3 promoted {:.1} s after its canary started: {:?}",
        took.as_secs_f64(),
        kinds(&second)
    );
    ensure!(
        !kinds(&second)
            .iter()
            .any(|k| ["health_check_failed", "rolled_back"].contains(k)),
        "{:?}",
        kinds(&second)
    );
    let promoted = second
        .iter()
        .find(|e| e.event.kind.as_str() == "promoted")
        .context("no promoted event")?;
    let labelled = promoted.event.numbers["canary"]["feedback"]["accuracy"]["observations"]
        .as_u64()
        .unwrap_or(0);
    ensure!(labelled >= 30, "promoted on {labelled} labels");
    let t = traffic.tally();
    println!(
        "labels posted by version (labels, right): {:?}",
        t.labels_by_version
    );
    ensure!(
        t.labels_refused == 0,
        "labels refused: {:?}",
        t.last_refusal
    );
    ensure!(
        received(&c).await? as u64 == 3 + t.labels_by_version.values().map(|(n, _)| n).sum::<u64>(),
        "the controller counted other than what was posted"
    );
    Ok(())
}
