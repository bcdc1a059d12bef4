//! `make demo`: the heart-disease story end to end, on the local stack, in
//! four acts (`acts.rs`):
//!
//! 1. v2 crashes on malformed input: CRITICAL on errors, rolled back;
//! 2. v2.1, the same weights without the crash, on clean patients: fast,
//!    no errors, and wrong: held on what it answers, rolled back on its
//!    accuracy from labels fed back 2 s after the answer;
//! 3. a good retrained v3: first a shadow agreeing with v1, then
//!    20 → 50 → 100 %, promoted, v1 pinned;
//! 4. one call reverts to the pinned v1.
//!
//! Starts the stack (`tools/stack.sh up`: three model servers trained on
//! first use, the controller, Envoy with the filter), prints every act's
//! progress a second at a time and its timeline, and exits 1 unless each
//! timeline is the one expected. Stops the stack unless `--keep`.

mod acts;
mod show;

use acts::{DEPLOYMENT, Stage};
use anyhow::{Context, Result, bail};
use coalmine_client::Client;
use coalmine_client::types::CreateDeployment;
use serde_json::{Value, json};
use show::step;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const CONTROLLER: &str = "http://127.0.0.1:8700";

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

/// A token the stack wrote into `.coalmine/`.
fn token(name: &str) -> Result<String> {
    let path = root().join(".coalmine").join(name);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The demo's policy, as printed before the first act.
fn policy() -> Value {
    json!({
        "check_interval_seconds": 1, "window_seconds": 60, "min_requests": 20,
        "steps": [20, 50, 100], "bake_seconds": 5, "cooldown_seconds": 2,
        "outputs": {"critical": {"max_shift": 1.0}, "degraded": {"max_shift": 0.1}},
        "feedback": {"accuracy": {"better": "higher", "critical_delta": 0.05, "degraded_delta": 0.025}},
        "shadow": {"min_agreement": 0.9, "fields": {"probability": {"min_agreement": 0.5}}}
    })
}

async fn stage() -> Result<Stage> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    step("models: v1 (in production), v2 (a new candidate), v3 (retrained on another split)");
    let mut models = HashMap::new();
    for (v, port) in [("v1", 8501), ("v2", 8502), ("v3", 8503)] {
        let m: Value = http
            .get(format!("http://127.0.0.1:{port}/model"))
            .send()
            .await?
            .json()
            .await?;
        show::model(v, &m);
        models.insert(v, m);
    }
    let api = Client::new(CONTROLLER).operator_token(Some(token("operator-token")?));
    let pipeline = Client::new(CONTROLLER).feedback_token(Some(token("feedback-token")?));
    Ok(Stage {
        api,
        pipeline,
        http,
        patients: Arc::new(coalmine_models_server::patients::load_patients(&root())?),
        models,
        models_admin_token: token("models-admin-token")?,
    })
}

async fn story(keep: bool) -> Result<Vec<String>> {
    let s = stage().await?;
    step("deployment heart-prod: v1 serves /predict/heart; v2 registered with its metadata");
    let policy = serde_json::from_value(policy())?;
    let create = CreateDeployment::new(DEPLOYMENT, "v1", "heart-v1", Some(policy));
    s.api.create_deployment(&create).await?;
    let v2 = &s.models["v2"];
    let register = coalmine_client::types::RegisterVersion {
        version: "v2".into(),
        cluster: "heart-v2".into(),
        metadata: Some(
            json!({"sha256": v2["sha256"], "test_accuracy": v2["test_accuracy"],
                              "data_sha256": v2["training"]["data_sha256"]}),
        ),
    };
    s.api.register_version(DEPLOYMENT, &register).await?;
    println!(
        "    policy: checked every 1 s over a 60 s window; steps 20 → 50 → 100 % with 5 s bakes\n\
         \x20   CRITICAL (rollback): canary errors > baseline + 5 pp, p95 > baseline + 100 ms,\n\
         \x20             or accuracy from labels worse than the baseline's by more than 0.05\n\
         \x20   DEGRADED (hold):     the canary's answers shift from the baseline's by more than 0.10\n\
         \x20             (a new model may answer differently for good reasons: labels decide)\n\
         \x20   SHADOW:              a shadow's predictions must agree with production's on 90 %\n\
         \x20             (its probabilities within 0.05 on 50 %)"
    );
    let mut results = vec![acts::crash(&s).await?];
    results.push(acts::wrong(&s).await?);
    results.push(acts::good(&s).await?);
    results.push(acts::revert(&s).await?);
    if keep {
        step(&format!(
            "the stack keeps running (--keep): curl {CONTROLLER}{} ; stop it with `make down`",
            coalmine_client::paths::deployment(DEPLOYMENT)
        ));
    }
    Ok(results)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let db = root().join(".coalmine/demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    step(
        "starting the local stack: three model servers, the controller, Envoy with the coalmine filter",
    );
    let started = Instant::now();
    stack("up", Some(&db))?;
    let result = story(keep).await;
    if !keep || result.is_err() {
        step("stopping the stack");
        stack("down", None)?;
    }
    let results = result?;
    println!(
        "\n\x1b[1mdemo complete in {:.0} s:\x1b[0m",
        started.elapsed().as_secs_f64()
    );
    for r in results {
        println!("    {r}");
    }
    Ok(())
}
