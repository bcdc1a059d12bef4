//! `make demo` (standalone stage): a real Envoy with the coalmine filter in
//! front of two upstreams on loopback, live traffic, the split it produced and
//! the labelled metrics Envoy exposes for Prometheus.

use anyhow::Result;
use coalmine_e2e::{Envoy, EnvoyConfig, Upstream, prometheus_value};
use std::io::Write;
use std::time::{Duration, Instant};

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    step("starting two model upstreams on loopback (heart-v1 baseline, heart-v2 canary)");
    let (v1, v2) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
    );
    println!("    heart-v1 on {}, heart-v2 on {}", v1.addr, v2.addr);

    step("starting Envoy 1.40 with the coalmine filter (envoy/envoy.yaml, canary at 20 %)");
    let mut config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?;
    let standalone = config.standalone_plugin_config()?;
    let config = config.plugin_config(&standalone)?;
    let envoy = Envoy::start(config).await?;
    println!(
        "    listener {}   admin {}",
        envoy.url(""),
        envoy.admin_url("")
    );

    let total = 2000u32;
    step(&format!("sending {total} requests to /predict/heart"));
    let client = reqwest::Client::new();
    let url = envoy.url("/predict/heart");
    let (mut baseline, mut canary) = (0u32, 0u32);
    let started = Instant::now();
    for i in 1..=total {
        let resp = client.get(&url).send().await?;
        match resp
            .headers()
            .get("x-coalmine-role")
            .and_then(|v| v.to_str().ok())
        {
            Some("canary") => canary += 1,
            _ => baseline += 1,
        }
        if i % 100 == 0 || i == total {
            print!(
                "\r    {i:>5}/{total}  baseline {baseline:>5}  canary {canary:>5}  ({:.1} % canary)",
                f64::from(canary) / f64::from(i) * 100.0
            );
            std::io::stdout().flush()?;
        }
        // A steady trickle, so the progress is visible: 2000 requests ≈ 4 s.
        tokio::time::sleep(Duration::from_micros(1500)).await;
    }
    println!(
        "\n    done in {:.1} s; every response says which model served it (x-coalmine-role, x-coalmine-version)",
        started.elapsed().as_secs_f64()
    );

    step("what Envoy reports on its admin endpoint (/stats/prometheus), as Prometheus scrapes it");
    let text = envoy.prometheus().await?;
    for line in text.lines().filter(|l| {
        (l.starts_with("coalmine_requests{") && l.contains("2xx"))
            || l.starts_with("coalmine_canary_share_bps")
    }) {
        println!("    {line}");
    }
    let envoy_canary = prometheus_value(
        &text,
        "coalmine_requests",
        &[
            ("deployment", "heart-prod"),
            ("role", "canary"),
            ("class", "2xx"),
        ],
    );
    println!(
        "    the filter counted {envoy_canary} canary requests; the client saw {canary}; upstream heart-v2 served {}",
        v2.seen().len()
    );

    step("stopping the stack");
    drop(envoy);
    println!("    done. Next: the controller judges the canary and rolls it back by itself.");
    Ok(())
}
