//! The REST API against its own OpenAPI document: schemathesis (from
//! `.venv`) generates requests from `/v1/openapi.json` — valid ones, and ones
//! that break the schema on purpose — and sends them to a real controller.
//! The run fails on any 5xx, on a response that breaks the documented schema
//! or status codes, on bad input that is accepted, and on a secured call that
//! works without its token. It runs over plain HTTP, and over HTTPS against
//! a controller serving TLS with a certificate of the test's own CA.

use anyhow::{Context, Result, ensure};
use coalmine_client::paths;
use coalmine_e2e::{ControllerProc, FEEDBACK_TOKEN, OPERATOR_TOKEN, SYNC_TOKEN, workspace_root};
use serde_json::json;
use std::process::Stdio;

/// Per operation, in the fuzzing and stateful phases; the coverage phase
/// adds its own boundary cases.
const EXAMPLES: &str = "100";
/// Fixed, so a failure reproduces; `COALMINE_SCHEMATHESIS_SEED` explores.
const SEED: &str = "20261123";

/// Over HTTPS, fewer: the contract is the same, what is new is the
/// transport under every call.
const TLS_EXAMPLES: &str = "25";

/// schemathesis sends thousands of calls with wrong tokens from one address
/// and wants each answered 401 (its `ignored_auth` check); past the default
/// limit (20 in 10 s) they are rightly answered 429. The limit itself is
/// `wrong_tokens.rs`'s to test; here it is raised out of the way.
const NO_LIMIT: [&str; 2] = ["--wrong-tokens-per-window", "1000000"];

#[tokio::test(flavor = "multi_thread")]
async fn the_api_keeps_its_openapi_contract() -> Result<()> {
    let controller = ControllerProc::start_plain(30_000, &NO_LIMIT).await?;
    let generated = keeps_its_contract(&controller, EXAMPLES).await?;
    ensure!(generated >= 1000, "only {generated} test cases ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_keeps_its_openapi_contract_over_tls() -> Result<()> {
    let controller = ControllerProc::start_tls(30_000, &NO_LIMIT).await?;
    ensure!(controller.url("").starts_with("https://"));
    let generated = keeps_its_contract(&controller, TLS_EXAMPLES).await?;
    ensure!(generated >= 1000, "only {generated} test cases ran");
    let metrics = controller.metrics_text().await?;
    ensure!(
        !metrics.contains("coalmine_controller_tls_handshake_failures_total"),
        "a handshake of schemathesis failed:\n{metrics}"
    );
    Ok(())
}

/// Runs schemathesis against `controller` (over HTTPS trusting its CA when
/// it serves TLS) with `examples` per operation; fails on any problem it
/// finds. Returns how many test cases it generated.
async fn keeps_its_contract(controller: &ControllerProc, examples: &str) -> Result<u64> {
    // The deployment schemathesis.toml names in every path.
    controller.heart_prod(json!({})).await?;
    let root = workspace_root();
    let dir = root.join("tests/schemathesis");
    let seed = std::env::var("COALMINE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let mut command = tokio::process::Command::new(root.join(".venv/bin/schemathesis"));
    command
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(controller.url(paths::OPENAPI))
        .args(["--url", &controller.url("")])
        // Everything but positive_data_acceptance: the controller checks more
        // than a schema can say (a canary's version must be registered,
        // steps must rise, 2.0 is not an integer count), so some
        // schema-valid requests are rightly refused.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--max-examples",
            examples,
            "--seed",
            &seed,
            "--workers",
            "2",
        ])
        .args(["--generation-database", "none"])
        .env("PYTHONPATH", &dir)
        .env("COALMINE_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("COALMINE_SYNC_TOKEN", SYNC_TOKEN)
        .env("COALMINE_FEEDBACK_TOKEN", FEEDBACK_TOKEN)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    if let Some(ca) = controller.ca_file() {
        // The schema and every call are checked against the test's CA.
        command.arg("--tls-verify").arg(ca);
    }
    let output = command
        .output()
        .await
        .context("running schemathesis from .venv (make setup installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    println!("{}", summary.join("\n"));
    ensure!(
        output.status.success(),
        "schemathesis found problems (seed {seed}):\n{stdout}\n{stderr}\ncontroller log:\n{}",
        controller.log()
    );
    let generated = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated")?.0.parse::<u64>().ok())
        .context("schemathesis printed no test case count")?;
    println!("schemathesis: {generated} test cases, no failures");
    ensure!(
        !controller.log().contains("panicked"),
        "the controller panicked:\n{}",
        controller.log()
    );
    // Still serving after all of it.
    controller.client().healthz().await?;
    Ok(generated)
}
