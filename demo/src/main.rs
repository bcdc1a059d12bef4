//! `make demo`: the heart-disease story end to end, on the local stack.
//!
//! Starts the stack (`tools/stack.sh up`: models trained on first use, two
//! model servers, the controller, Envoy with the filter), puts v2 on a 20 %
//! canary behind v1, sends live predictions built from real rows of the data
//! set (some malformed, which the fragile v2 answers with 500s), shows the
//! split and the health check as they happen, the automatic rollback, and
//! the timeline. Exits 1 if the timeline is not the one expected; stops the
//! stack unless `--keep`.

use anyhow::{Context, Result, bail};
use coalmine_client::types::{CreateDeployment, RegisterVersion, StartCanary};
use coalmine_client::{Client, paths};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONTROLLER: &str = "http://127.0.0.1:8700";
const ENVOY: &str = "http://127.0.0.1:10000";
const RPS: u32 = 200;
/// One request in this many is malformed (a field missing or mistyped).
const MALFORMED_EVERY: usize = 5;

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// The repository root (the demo runs the stack from there).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn stack(action: &str, db: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new(root().join("tools/stack.sh"));
    cmd.arg(action).current_dir(root());
    if let Some(db) = db {
        cmd.env("COALMINE_DB", db);
    }
    let status = cmd.status().context("running tools/stack.sh")?;
    if !status.success() {
        bail!("tools/stack.sh {action} failed");
    }
    Ok(())
}

/// A malformed variant of a request: a field missing or of the wrong type.
fn malform(mut row: Value, i: usize) -> Value {
    if let Some(o) = row.as_object_mut() {
        if i.is_multiple_of(2) {
            o.remove("max_HR");
        } else {
            o.insert("age".into(), json!("sixty-three"));
        }
    }
    row
}

#[derive(Default, Debug)]
struct Tally {
    by_role: HashMap<String, u64>,
    errors_by_role: HashMap<String, u64>,
    client_errors: u64,
    sent: u64,
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1} %", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1} ms"))
}

async fn story(keep: bool) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    step("models: v1 (the production model) and v2 (a new candidate)");
    let mut models = HashMap::new();
    for (v, port) in [("v1", 8501), ("v2", 8502)] {
        let m: Value = client
            .get(format!("http://127.0.0.1:{port}/model"))
            .send()
            .await?
            .json()
            .await?;
        println!(
            "    {v}: test accuracy {:.3} on {} held-out patients ({} rows with missing values left out), sha256 {}…",
            m["test_accuracy"].as_f64().unwrap_or_default(),
            m["training"]["test_rows"],
            m["training"]["rows_dropped_missing"],
            &m["sha256"].as_str().unwrap_or_default()[..12]
        );
        models.insert(v, m);
    }

    let token = std::fs::read_to_string(root().join(".coalmine/operator-token"))?
        .trim()
        .to_string();
    let api = Client::new(CONTROLLER).operator_token(Some(token));
    step("deployment heart-prod: v1 serves /predict/heart; v2 registered with its metadata");
    let policy = serde_json::from_value(
        json!({"check_interval_seconds": 1, "window_seconds": 60, "min_requests": 20}),
    )?;
    api.create_deployment(&CreateDeployment::new(
        "heart-prod",
        "v1",
        "heart-v1",
        Some(policy),
    ))
    .await?;
    let v2 = &models["v2"];
    api.register_version(
        "heart-prod",
        &RegisterVersion {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            metadata: Some(json!({
                "sha256": v2["sha256"], "test_accuracy": v2["test_accuracy"], "data_sha256": v2["training"]["data_sha256"]})),
        },
    )
    .await?;
    println!(
        "    policy: check every 1 s over a 60 s window; CRITICAL if canary errors > baseline + 5 pp or p95 > baseline + 100 ms"
    );

    step(&format!(
        "canary: v2 gets 20 % of live traffic ({RPS} predictions/s from real patients, 1 in {MALFORMED_EVERY} malformed)"
    ));
    let patients = Arc::new(coalmine_models_server::patients::load_requests(&root())?);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let traffic = {
        let (client, patients, tally) = (client.clone(), patients.clone(), tally.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / RPS);
            for i in 0usize.. {
                tick.tick().await;
                let row = patients[i % patients.len()].clone();
                let body = if i % MALFORMED_EVERY == MALFORMED_EVERY - 1 {
                    malform(row, i)
                } else {
                    row
                };
                let (client, tally) = (client.clone(), tally.clone());
                tokio::spawn(async move {
                    let Ok(resp) = client
                        .post(format!("{ENVOY}/predict/heart"))
                        .json(&body)
                        .send()
                        .await
                    else {
                        return;
                    };
                    let role = resp
                        .headers()
                        .get("x-coalmine-role")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string();
                    if let Ok(mut t) = tally.lock() {
                        t.sent += 1;
                        *t.by_role.entry(role.clone()).or_default() += 1;
                        if resp.status().is_server_error() {
                            *t.errors_by_role.entry(role).or_default() += 1;
                        } else if resp.status().is_client_error() {
                            t.client_errors += 1;
                        }
                    }
                });
            }
        })
    };
    let start = StartCanary {
        version: "v2".into(),
        percent: Some(20.0),
        ..StartCanary::default()
    };
    api.start_canary("heart-prod", &start).await?;

    let mut rolled_back_at = None;
    while started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d = api.deployment("heart-prod").await?;
        let (line, done) = {
            let t = tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
            let (b, c) = (get(&t.by_role, "baseline"), get(&t.by_role, "canary"));
            let share = if b + c > 0 {
                c as f64 / (b + c) as f64 * 100.0
            } else {
                0.0
            };
            let line = format!(
                "    t={:>4.1}s  sent {:>5}  baseline {:>5} ({} 5xx)  canary {:>4} ({} 5xx)  = {share:>4.1} % canary   split {:>4} %   verdict {}",
                started.elapsed().as_secs_f64(),
                t.sent,
                b,
                get(&t.errors_by_role, "baseline"),
                c,
                get(&t.errors_by_role, "canary"),
                d.canary_percent,
                d.health.verdict.as_str(),
            );
            (line, d.canary.is_none() && c > 0)
        };
        println!("{line}");
        std::io::stdout().flush()?;
        if done && rolled_back_at.is_none() {
            rolled_back_at = Some(started.elapsed());
        }
        if let Some(at) = rolled_back_at
            && started.elapsed() >= at + Duration::from_secs(3)
        {
            break;
        }
    }
    traffic.abort();
    let Some(at) = rolled_back_at else {
        bail!("the canary was not rolled back within 40 s");
    };

    let events = api.events("heart-prod", None, None).await?;
    if let Some(failed) = events
        .iter()
        .find(|e| e.event.kind.as_str() == "health_check_failed")
    {
        let n = &failed.event.numbers;
        step("health check: CRITICAL");
        println!(
            "    baseline: {} requests, error rate {}, p95 {}\n    canary:   {} requests, error rate {}, p95 {}",
            n["baseline"]["requests"],
            pct(&n["baseline"]["error_rate"]),
            ms(&n["baseline"]["p95_ms"]),
            n["canary"]["requests"],
            pct(&n["canary"]["error_rate"]),
            ms(&n["canary"]["p95_ms"]),
        );
        println!("    reason: {}", failed.event.reason);
    }
    step(&format!(
        "automatic rollback {:.1} s after the canary started; v2 is marked unhealthy, v1 serves everything",
        at.as_secs_f64()
    ));
    for v in api.versions("heart-prod").await? {
        println!(
            "    {}  state {:<11} healthy {:<5} pinned {}",
            v.version,
            v.state.as_str(),
            v.healthy,
            v.pinned
        );
    }

    step(&format!(
        "the timeline (GET {})",
        paths::events("heart-prod", None, None)
    ));
    let t0 = events.first().map_or(0, |e| e.at);
    println!("    {:>7}  {:<24} {:<9} reason", "t", "event", "actor");
    for e in &events {
        let reason: String = e.event.reason.chars().take(110).collect();
        println!(
            "    {:>6.2}s  {:<24} {:<9} {reason}",
            e.at.saturating_sub(t0) as f64 / 1000.0,
            e.event.kind.as_str(),
            e.event.actor
        );
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
    let expected = [
        "canary_started",
        "health_check_failed",
        "auto_rollback_triggered",
        "rolled_back",
    ];
    let story: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| expected.contains(k))
        .collect();
    if story != expected {
        bail!("unexpected timeline: {kinds:?}");
    }
    if keep {
        step(&format!(
            "the stack keeps running (--keep): curl {CONTROLLER}{} ; stop it with `make down`",
            paths::deployment("heart-prod")
        ));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let db = root().join(".coalmine/demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    step(
        "starting the local stack: two model servers, the controller, Envoy with the coalmine filter",
    );
    stack("up", Some(&db))?;
    let result = story(keep).await;
    if !keep || result.is_err() {
        step("stopping the stack");
        stack("down", None)?;
    }
    match result {
        Ok(()) => {
            println!("\ndemo complete: the bad canary was caught and rolled back automatically.");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
