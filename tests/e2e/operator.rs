//! Operator experience: the `coalmine` CLI against the real controller
//! (the dashboard is `dashboard.rs`, webhooks `webhooks.rs`).

use anyhow::{Context, Result, ensure};
use coalmine_e2e::{ControllerProc, OPERATOR_TOKEN, package_bin, poll};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// Runs `coalmine` against the controller with `args`.
fn cli(c: &ControllerProc, token: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut cmd = std::process::Command::new(package_bin("coalmine")?);
    cmd.args(c.cli_args())
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

    // The reverted v2 is barred until an operator lifts the bar, with a reason.
    let unbar = ["versions", "unbar", "heart-prod", "v2"];
    let no_reason = cli(&c, t, &unbar)?;
    ensure!(
        no_reason.status.code() == Some(2)
            && String::from_utf8_lossy(&no_reason.stderr).contains("--reason <REASON>"),
        "{no_reason:?}"
    );
    let reason = ["--reason", "retrained on clean data"];
    let versions = ok(&cli(&c, t, &[&unbar[..], &reason].concat())?)?;
    ensure!(versions.contains("registered"), "{versions}");
    fails(
        &cli(&c, t, &[&unbar[..], &reason].concat())?,
        6,
        "not barred",
    )?;
    let events = json_of(&cli(&c, None, &["-o", "json", "events", "heart-prod"])?)?;
    let last = events
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    ensure!(
        last["kind"] == "version_unbarred"
            && last["reason"]
                .as_str()
                .is_some_and(|r| r.contains("retrained")),
        "{last}"
    );

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
        .args(c.cli_args())
        .args(["watch", "heart-prod", "--interval", "0.2"])
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
