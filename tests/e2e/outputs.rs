//! What the models answer, read at the proxy: a fast, error-free, wrong
//! model rolled back by its outputs and a good retrained one promoted (real
//! model servers, clean patients of the data set); and every kind of answer
//! that cannot be read landing in its class while the user gets it
//! unchanged.

use anyhow::{Context as _, Result, ensure};
use coalmine_e2e::models::Training;
use coalmine_e2e::{
    AnswerServer, ControllerProc, Envoy, EnvoyConfig, EnvoyOptions, Load, ModelServer, answer_body,
    failed_without_advancing, kinds, patients, plugin_reading_outputs, poll, prometheus_value,
};
use serde_json::json;
use std::time::Duration;

const LEASE_MS: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_model_is_rolled_back_by_its_outputs_and_a_retrained_one_is_promoted() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v2 = ModelServer::trained(dir.path(), "v2", Training::UNDERFIT).await?;
    let v3 = ModelServer::trained(dir.path(), "v3", Training::RETRAINED).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .upstream("heart-v3", v3.addr)?
        .controller(&c)?
        .plugin_config(&plugin_reading_outputs(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    // Short bakes: a canary judged by errors and latency alone would be
    // promoted within seconds.
    c.heart_prod(json!({
        "check_interval_seconds": 1, "window_seconds": 60, "min_requests": 20,
        "bake_seconds": 5, "cooldown_seconds": 3, "steps": [20, 50, 100]
    }))
    .await?;
    // Clean patients only: no malformed request, so no model errs.
    let load = Load::cycling(envoy.url("/predict/heart"), 100, patients()?);

    // 1. The underfit v2: fast, no errors, wrong.
    c.start_canary(Some(20.0)).await?;
    let (first, took) = c.canary_ended(Duration::from_secs(60)).await?;
    println!(
        "underfit v2 rolled back {:.1} s after its canary started: {:?}",
        took.as_secs_f64(),
        kinds(&first)
    );
    let failed = failed_without_advancing(&first)?;
    println!("reason: {}", failed.event.reason);
    let n = &failed.event.numbers;
    ensure!(
        failed.event.reason.contains("probability: share of"),
        "not the outputs rule: {}",
        failed.event.reason
    );
    ensure!(
        n["canary"]["errors"] == 0 && n["baseline"]["errors"] == 0,
        "the model erred, so this proves nothing about outputs: {n:?}"
    );
    ensure!(
        n["shift_lower_bound"].as_f64().unwrap_or(0.0) > 0.25,
        "{n:?}"
    );

    // 2. The retrained v3 (split seed 7): promoted, never held.
    let metadata = json!({"split_seed": 7});
    let (second, took) = c
        .promote_new("v3", "heart-v3", metadata, Duration::from_secs(90))
        .await?;
    println!(
        "retrained v3 promoted {:.1} s after its canary started: {:?}",
        took.as_secs_f64(),
        kinds(&second)
    );
    ensure!(
        kinds(&second)
            == [
                "version_registered",
                "canary_started",
                "step_advanced",
                "step_advanced",
                "promoted"
            ],
        "{:?}",
        kinds(&second)
    );
    drop(load);
    Ok(())
}

/// Every kind of answer, how often, and what it must count as.
const CASES: [(&str, usize); 9] = [
    ("json", 20),
    ("chunked", 5),
    ("not_json", 5),
    ("missing", 5),
    ("wrong_kind", 5),
    ("empty", 5),
    ("huge", 3),
    ("huge_chunked", 3),
    ("gzip", 4),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_that_cannot_be_read_land_in_their_class_and_reach_the_user_unchanged() -> Result<()>
{
    let answers = AnswerServer::start().await?;
    let mut config = EnvoyConfig::shipped("envoy.yaml")?;
    let mut plugin = config.shipped_plugin_config()?;
    if let Some(o) = plugin.as_object_mut() {
        o.remove("controller");
    }
    plugin["deployments"][0]["static"]["canary_percent"] = json!(0);
    // A deployment that reads nothing, on the same proxy.
    plugin["deployments"]
        .as_array_mut()
        .context("no deployments")?
        .push(json!({"name": "plain", "match": {"path_prefix": "/plain"},
            "static": {"baseline": {"version": "p1", "cluster": "heart-v1"}}}));
    let config = config
        .upstream("heart-v1", answers.addr)?
        .plugin_config(&plugin)?;
    // One worker: its first sixteen labels are the ones tracked.
    let opts = EnvoyOptions {
        concurrency: 1,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start_with(config, &opts).await?;
    let client = reqwest::Client::new();
    let mut sent = 0;
    for (kind, n) in CASES {
        for i in 0..n {
            let label = if kind == "json" { i as i64 } else { 1 };
            let url = envoy.url(&format!("/predict/heart?body={kind}&label={label}"));
            let resp = client.post(url).json(&json!({"age": 63})).send().await?;
            let status = resp.status();
            let got = resp.bytes().await?;
            let (want, ..) = answer_body(kind, label);
            ensure!(status == 200, "{kind}: {status}");
            ensure!(
                got.as_ref() == want.as_slice(),
                "{kind}: the answer was changed"
            );
            sent += 1;
        }
    }
    for _ in 0..5 {
        let resp = client.get(envoy.url("/plain?body=not_json")).send().await?;
        ensure!(resp.status() == 200);
    }
    let text = poll("every request counted", Duration::from_secs(10), || async {
        let text = envoy.prometheus().await?;
        let v = |deployment, class| {
            prometheus_value(
                &text,
                "coalmine_requests",
                &[
                    ("deployment", deployment),
                    ("role", "baseline"),
                    ("class", class),
                ],
            )
        };
        // Both deployments: counters reach Envoy once a tick, and a tick
        // may fall between the last heart-prod request and the plain ones.
        let heart = v("heart-prod", "2xx") + v("heart-prod", "bad_output");
        let plain = v("plain", "2xx") + v("plain", "bad_output");
        Ok((heart >= sent as f64 && plain >= 5.0).then_some(text))
    })
    .await?;
    let class = |class| {
        prometheus_value(
            &text,
            "coalmine_requests",
            &[
                ("deployment", "heart-prod"),
                ("role", "baseline"),
                ("class", class),
            ],
        )
    };
    let output = |field, value| {
        prometheus_value(
            &text,
            "coalmine_outputs",
            &[
                ("deployment", "heart-prod"),
                ("role", "baseline"),
                ("field", field),
                ("value", value),
            ],
        )
    };
    let skipped = |reason| {
        prometheus_value(
            &text,
            "coalmine_outputs_skipped",
            &[
                ("deployment", "heart-prod"),
                ("role", "baseline"),
                ("reason", reason),
            ],
        )
    };
    println!(
        "2xx {} bad_output {} too_large {} encoded {} other {}",
        class("2xx"),
        class("bad_output"),
        skipped("too_large"),
        skipped("encoded"),
        output("prediction", "other")
    );
    // Read whole: 20 + 5 chunked. Not JSON, missing, wrong kind, empty: bad.
    // Too large (announced or found out) and compressed: skipped, still 2xx.
    ensure!(
        class("bad_output") == 20.0,
        "bad_output {}",
        class("bad_output")
    );
    ensure!(
        class("2xx") == (20 + 5 + 3 + 3 + 4) as f64,
        "2xx {}",
        class("2xx")
    );
    ensure!(skipped("too_large") == 6.0 && skipped("encoded") == 4.0);
    // Twenty labels: the first sixteen tracked, four more as other; the
    // chunked answers (label 1) read whole.
    ensure!(output("prediction", "0") == 1.0 && output("prediction", "15") == 1.0);
    ensure!(
        output("prediction", "1") == 6.0,
        "{}",
        output("prediction", "1")
    );
    ensure!(output("prediction", "other") == 4.0);
    ensure!(output("probability", "08") == 25.0, "0.72 is in [0.7, 0.8)");
    // The deployment without outputs: nothing read, its answers all 2xx.
    let plain = |class| {
        prometheus_value(
            &text,
            "coalmine_requests",
            &[
                ("deployment", "plain"),
                ("role", "baseline"),
                ("class", class),
            ],
        )
    };
    ensure!(plain("2xx") == 5.0 && plain("bad_output") == 0.0);
    ensure!(!text.contains("coalmine_outputs{deployment=\"plain\""));
    let log = envoy.log();
    ensure!(
        !log.contains("panicked")
            && !log.contains("wasm trap")
            && !log.contains("Function: proxy_on"),
        "the filter failed:\n{log}"
    );
    Ok(())
}
